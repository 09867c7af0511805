//! Failure injection: a share of the fleet misbehaves in one chosen way, so tests can show
//! that a misbehaving server is refused or retried without affecting the others.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Answers discovery but never answers an RPC request.
    Timeout,
    /// Answers every RPC request with bytes that are not a Choria reply.
    Garbage,
    /// Sends a CSR the provisioner must refuse (wrong common name, denied name, a broken
    /// signature, or a request to be a CA, in turn).
    BadCsr,
    /// Holds a provisioning JWT signed by a key the provisioner does not trust.
    BadJwt,
    /// Answers every RPC request as another server would (another `senderid`).
    WrongSender,
    /// Sends its previous reply (an old request id) before each real one: a replay.
    Replay,
    /// Carries out `restart` without answering it, as a server that goes before its reply
    /// does.
    SilentRestart,
}

/// Shares of the fleet (0.0 to 1.0) given each fault.
#[derive(Debug, Clone, Copy, Default)]
pub struct FaultShares {
    pub timeout: f64,
    pub garbage: f64,
    pub bad_csr: f64,
    pub bad_jwt: f64,
    pub wrong_sender: f64,
    pub replay: f64,
    pub silent_restart: f64,
}

impl FaultShares {
    /// The fault of server `index` of `total`: the first servers get faults, in the order
    /// timeout, garbage, bad CSR, bad JWT, wrong sender, replay, silent restart, each for its
    /// share of the fleet.
    pub fn assign(&self, index: usize, total: usize) -> Option<Fault> {
        let mut start = 0usize;
        for (share, fault) in [
            (self.timeout, Fault::Timeout),
            (self.garbage, Fault::Garbage),
            (self.bad_csr, Fault::BadCsr),
            (self.bad_jwt, Fault::BadJwt),
            (self.wrong_sender, Fault::WrongSender),
            (self.replay, Fault::Replay),
            (self.silent_restart, Fault::SilentRestart),
        ] {
            let n = (share.clamp(0.0, 1.0) * total as f64).round() as usize;
            if index >= start && index < start + n {
                return Some(fault);
            }
            start += n;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_assigned_in_order() {
        let s = FaultShares {
            timeout: 0.1,
            garbage: 0.1,
            bad_csr: 0.0,
            bad_jwt: 0.2,
            wrong_sender: 0.1,
            replay: 0.1,
            silent_restart: 0.1,
        };
        let faults: Vec<_> = (0..10).map(|i| s.assign(i, 10)).collect();
        assert_eq!(faults[4], Some(Fault::WrongSender));
        assert_eq!(faults[5], Some(Fault::Replay));
        assert_eq!(faults[0], Some(Fault::Timeout));
        assert_eq!(faults[1], Some(Fault::Garbage));
        assert_eq!(faults[2], Some(Fault::BadJwt));
        assert_eq!(faults[3], Some(Fault::BadJwt));
        assert_eq!(faults[6], Some(Fault::SilentRestart));
        assert_eq!(faults[7], None);
    }
}
