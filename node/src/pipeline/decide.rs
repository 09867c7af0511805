//! Step 5: ask user logic ([`crate::helper`]) what to do with the server: defer it, shut it
//! down, or configure it (and maybe update it first). The helper sees the inventory, the
//! server's new key or CSR, its verified JWT claims and what the ledger knew of an earlier
//! enrollment; its answer is untrusted input like the server's.

use std::time::Instant;

use thiserror::Error;

use crate::helper::{HelperError, HelperRequest, HelperResponse, UserLogic};
use crate::metrics::Metrics;

/// What the helper decided.
pub enum Decision {
    /// Not now; the reason.
    Defer(String),
    /// Shut the server down; the helper's message.
    Shutdown(String),
    /// Configure it as the response says (its configuration is not empty).
    Configure(Box<HelperResponse>),
}

#[derive(Debug, Error)]
pub enum DecideError {
    #[error("helper failed: {0}")]
    Failed(#[source] HelperError),
    #[error("helper returned an empty configuration")]
    EmptyConfiguration,
}

/// Asks `logic` about the server in `request`, timed in `choria_provisioner_helper_time`; a
/// failed or empty answer counts in `choria_provisioner_helper_errors`.
pub async fn ask(
    logic: &dyn UserLogic,
    metrics: &Metrics,
    request: &HelperRequest,
) -> Result<Decision, DecideError> {
    let started = Instant::now();
    let decision = logic.decide(request).await;
    metrics
        .helper_time
        .with_label_values(&[metrics.site()])
        .observe(started.elapsed().as_secs_f64());
    let decision = decision.map_err(|e| {
        metrics.inc(&metrics.helper_errors);
        DecideError::Failed(e)
    })?;
    if decision.defer {
        return Ok(Decision::Defer(if decision.msg.is_empty() {
            "deferred by helper".into()
        } else {
            decision.msg
        }));
    }
    if decision.shutdown {
        return Ok(Decision::Shutdown(decision.msg));
    }
    if decision.configuration.is_empty() {
        metrics.inc(&metrics.helper_errors);
        return Err(DecideError::EmptyConfiguration);
    }
    Ok(Decision::Configure(Box::new(decision)))
}
