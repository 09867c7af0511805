//! How provisioning one server ended: what the work queue acts on (try again later, soon,
//! first, or not at all).

/// How provisioning one server ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Configured and restarting into its configuration.
    Provisioned,
    /// Not worked on: enrolled already.
    Skipped(String),
    /// Claimed by another member until the given time (Unix ms).
    Busy(u64),
    /// The helper deferred it; try again later.
    Deferred(String),
    /// A step failed; try again later.
    Failed(String),
    /// This member stopped the flow before its next call to the server went out, for a reason
    /// of its own (fenced: no heartbeat committed lately). Not the server's failure: it starts
    /// again first, once the member may.
    Interrupted(String),
    /// Shut down on the helper's request.
    Shutdown,
    /// Asked to update to this version; it comes back to provisioning mode afterwards.
    Upgrading(String),
}
