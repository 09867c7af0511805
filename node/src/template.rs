//! Compiled-in user logic from the configuration (`builtin_helper`): every server gets the
//! same configuration, with `{identity}`, `{ssldir}` (from its CSR reply, default
//! `/etc/choria/ssl`) and `{ed25519_directory}` filled in. For fleets whose configuration
//! differs only by those, it saves a helper process per server.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Deserialize;
use thiserror::Error;

use crate::helper::{HelperError, HelperRequest, HelperResponse, UserLogic};

/// The `builtin_helper` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuiltinHelper {
    /// Configuration written to every server, with placeholders.
    pub configuration: BTreeMap<String, String>,
    /// Action policies (file name to content) sent to every server.
    #[serde(default)]
    pub action_policies: BTreeMap<String, String>,
}

/// What makes a `builtin_helper` section unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BuiltinHelperError {
    #[error("configuration is empty")]
    Empty,
    /// Servers would restart into provisioning mode and be provisioned again, for ever.
    #[error("configuration must set plugin.choria.server.provision to \"false\", or servers come back to provisioning mode after their restart")]
    StaysInProvisioningMode,
}

impl BuiltinHelper {
    /// Refuses a configuration that would bring servers back to provisioning mode.
    pub fn check(&self) -> Result<(), BuiltinHelperError> {
        if self.configuration.is_empty() {
            return Err(BuiltinHelperError::Empty);
        }
        match self
            .configuration
            .get("plugin.choria.server.provision")
            .map(String::as_str)
        {
            Some("false") => Ok(()),
            _ => Err(BuiltinHelperError::StaysInProvisioningMode),
        }
    }
}

#[async_trait]
impl UserLogic for BuiltinHelper {
    async fn decide(&self, req: &HelperRequest) -> Result<HelperResponse, HelperError> {
        let ssldir = req
            .csr
            .as_ref()
            .map(|c| c.ssldir.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("/etc/choria/ssl");
        let ed_dir = req
            .ed25519_pubkey
            .as_ref()
            .map(|k| k.directory.as_str())
            .unwrap_or_default();
        let fill = |v: &String| {
            v.replace("{identity}", &req.identity)
                .replace("{ssldir}", ssldir)
                .replace("{ed25519_directory}", ed_dir)
        };
        Ok(HelperResponse {
            msg: "configured by builtin_helper".into(),
            configuration: self
                .configuration
                .iter()
                .map(|(k, v)| (k.clone(), fill(v)))
                .collect(),
            action_policies: self.action_policies.clone(),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn placeholders_are_filled_per_server() {
        let mut configuration = BTreeMap::new();
        configuration.insert("identity".into(), "{identity}".into());
        configuration.insert("plugin.choria.server.provision".into(), "false".into());
        configuration.insert(
            "plugin.security.file.certificate".into(),
            "{ssldir}/certificate.pem".into(),
        );
        let h = BuiltinHelper {
            configuration,
            ..Default::default()
        };
        h.check().unwrap();
        let req = HelperRequest {
            identity: "n1.example.net".into(),
            csr: None,
            ed25519_pubkey: None,
            inventory: "{}".into(),
            jwt: None,
            enrolled_before: None,
        };
        let out = h.decide(&req).await.unwrap();
        assert_eq!(out.configuration["identity"], "n1.example.net");
        assert_eq!(
            out.configuration["plugin.security.file.certificate"],
            "/etc/choria/ssl/certificate.pem"
        );
        let mut bad = h.clone();
        bad.configuration.remove("plugin.choria.server.provision");
        assert_eq!(
            bad.check(),
            Err(BuiltinHelperError::StaysInProvisioningMode)
        );
        assert_eq!(
            BuiltinHelper::default().check(),
            Err(BuiltinHelperError::Empty)
        );
    }
}
