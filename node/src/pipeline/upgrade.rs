//! Step 5b (feature `upgrades`): the helper asked for version `to`. An upgradable server at
//! another version gets `choria_provision#release_update` from `upgrades_repository` and
//! comes back to provisioning mode with the new version, to be provisioned then. A server at
//! that version already is provisioned as is. A failed update is an error, or with
//! `upgrades_optional` a warning and the server is provisioned as is, as upstream.

use proto::action::ReleaseUpdate;
use proto::agents::{InventoryReply, ReleaseUpdateRequest};
use thiserror::Error;

use crate::context::Services;
use crate::rpc::RpcError;

/// Why the server could not be updated.
#[derive(Debug, Error)]
pub enum CannotUpgrade {
    #[error("upgrades_repository is not configured")]
    NoRepository,
    #[error("the inventory has no version")]
    NoVersion,
    #[error("the server does not support upgrades")]
    NotUpgradable,
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

#[derive(Debug, Error)]
#[error("upgrade to {to} failed: {cause}")]
pub struct UpgradeError {
    pub to: String,
    #[source]
    pub cause: CannotUpgrade,
}

/// The update that started: the server leaves to update from `from` to `to`.
pub struct Upgrading {
    pub from: String,
    pub to: String,
}

/// Updates the server to `to` when it should be; `None`: provision it as it is.
pub async fn upgrade(
    svc: &Services,
    identity: &str,
    inventory: &InventoryReply,
    to: &str,
) -> Result<Option<Upgrading>, UpgradeError> {
    let cfg = &svc.config;
    let result = |r: &str| {
        svc.metrics
            .upgrades
            .with_label_values(&[svc.metrics.site(), r])
            .inc();
    };
    if !cfg.features.upgrades {
        tracing::warn!(
            identity,
            version = to,
            "helper asked for an upgrade but the upgrades feature is off; provisioning as is"
        );
        return Ok(None);
    }
    let from = inventory.version.trim();
    let attempt = async {
        if cfg.upgrades_repository.is_empty() {
            return Err(CannotUpgrade::NoRepository);
        }
        if from.is_empty() {
            return Err(CannotUpgrade::NoVersion);
        }
        if !inventory.upgradable {
            return Err(CannotUpgrade::NotUpgradable);
        }
        if same_version(from, to) {
            return Ok(false);
        }
        tracing::warn!(identity, from, to, "updating the server's version");
        let req = ReleaseUpdateRequest {
            token: svc.agents.token(),
            repository: cfg.upgrades_repository.clone(),
            version: to.to_string(),
        };
        svc.agents.call::<ReleaseUpdate>(identity, &req).await?;
        Ok(true)
    };
    match attempt.await {
        Ok(true) => {
            result("started");
            Ok(Some(Upgrading {
                from: from.to_string(),
                to: to.to_string(),
            }))
        }
        Ok(false) => {
            result("current");
            Ok(None)
        }
        Err(e) if cfg.upgrades_optional => {
            result("skipped");
            tracing::warn!(identity, to, error = %e, "could not upgrade; upgrades are optional, provisioning as is");
            Ok(None)
        }
        Err(cause) => {
            result("failed");
            Err(UpgradeError {
                to: to.to_string(),
                cause,
            })
        }
    }
}

/// Versions compare equal without a leading `v` and surrounding space (`v0.29.4` is `0.29.4`).
fn same_version(a: &str, b: &str) -> bool {
    let norm = |s: &str| s.trim().trim_start_matches('v').to_string();
    norm(a) == norm(b)
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare_without_a_leading_v() {
        assert!(super::same_version("0.29.4", "v0.29.4"));
        assert!(super::same_version(" 0.29.4", "0.29.4 "));
        assert!(!super::same_version("0.29.4", "0.30.0"));
    }
}
