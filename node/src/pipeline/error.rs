//! Why a flow stopped: one error type for the whole pipeline, with a variant per step that
//! keeps the step's own error as its source. [`StepError::reason`] names it for
//! `choria_provisioner_step_errors`, [`StepError::rejected`] says when the server's input
//! failed a check (`choria_provisioner_rejected`), and its text is what the ledger records
//! as the release's reason, so it reads as the step's own message.

use thiserror::Error;

use super::configure::ConfigureError;
use super::decide::DecideError;
use super::enroll::EnrollError;
use super::inventory::InventoryError;
use super::jwt::FetchJwtError;
use super::lease::LeaseError;
use super::upgrade::UpgradeError;
use crate::csr::CsrError;
use crate::orgissuer::IssuerError;
use crate::rpc::RpcError;

#[derive(Debug, Error)]
pub enum StepError {
    #[error(transparent)]
    Jwt(#[from] FetchJwtError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// Asking the server for its ed25519 key, or checking its proof.
    #[error(transparent)]
    Ed25519Key(IssuerError),
    #[error("provisioning is paused")]
    Paused,
    #[error(transparent)]
    Decide(#[from] DecideError),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// The shutdown the helper asked for.
    #[error(transparent)]
    Shutdown(RpcError),
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error(transparent)]
    Configure(#[from] ConfigureError),
}

impl StepError {
    /// The label of `choria_provisioner_step_errors`.
    pub fn reason(&self) -> &'static str {
        match self {
            StepError::Jwt(_) => "jwt",
            StepError::Inventory(_) => "inventory",
            StepError::Csr(_) => "csr",
            StepError::Ed25519Key(_) => "ed25519_key",
            StepError::Paused => "paused",
            StepError::Decide(DecideError::Failed(_)) => "helper",
            StepError::Decide(_) => "helper_output",
            StepError::Upgrade(_) => "upgrade",
            StepError::Shutdown(_) => "shutdown",
            StepError::Enroll(e) => e.reason(),
            StepError::Lease(e) => e.reason(),
            StepError::Configure(e) => e.reason(),
        }
    }

    /// The label of `choria_provisioner_rejected` when what the server (or the helper, for a
    /// certificate) sent failed a check.
    pub fn rejected(&self) -> Option<&'static str> {
        match self {
            StepError::Jwt(FetchJwtError::Invalid(_)) => Some("jwt"),
            StepError::Ed25519Key(IssuerError::BadProof | IssuerError::Reply(_)) => Some("ed25519"),
            StepError::Csr(e) => Some(e.reason()),
            StepError::Enroll(EnrollError::HelperCertificate(h)) => Some(h.reason()),
            _ => None,
        }
    }

    /// Stopped by this member's own fence, not by the server: started again first.
    pub fn interrupted(&self) -> bool {
        matches!(self, StepError::Lease(LeaseError::Fenced(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_is_the_steps_own_and_the_reason_names_the_step() {
        let e = StepError::from(LeaseError::Fenced("configure"));
        assert_eq!(
            e.to_string(),
            "fenced (no heartbeat committed lately) before configure; not sent"
        );
        assert_eq!(e.reason(), "fenced");
        assert!(e.interrupted());
        let e = StepError::from(DecideError::EmptyConfiguration);
        assert_eq!(e.to_string(), "helper returned an empty configuration");
        assert_eq!((e.reason(), e.rejected()), ("helper_output", None));
        let e = StepError::from(CsrError::Empty);
        assert_eq!(e.rejected(), Some(CsrError::Empty.reason()));
        assert!(!e.interrupted());
    }

    #[test]
    fn the_cause_is_kept_as_the_source() {
        use std::error::Error;
        let e = StepError::from(DecideError::Failed(crate::helper::HelperError::Empty));
        assert_eq!(e.to_string(), "helper failed: helper wrote nothing");
        assert!(e
            .source()
            .is_some_and(|s| s.to_string() == "helper wrote nothing"));
        assert_eq!(e.reason(), "helper");
        let e = StepError::Ed25519Key(IssuerError::BadProof);
        assert_eq!(e.rejected(), Some("ed25519"));
    }
}
