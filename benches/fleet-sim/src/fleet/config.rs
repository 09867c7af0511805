//! What a fleet is made of: its size, the broker and credentials its servers use, the keys,
//! faults and protocol they have, and how they arrive; and the one claim of a provisioning
//! JWT a server reads before it connects.

use std::time::Duration;

use crate::faults::FaultShares;
use crate::keys::KeyType;

pub struct FleetConfig {
    pub servers: usize,
    pub nats_url: String,
    pub user: String,
    pub password: String,
    /// Provisioning token servers are built with ("" for none).
    pub token: String,
    pub key_type: KeyType,
    pub key_pool: usize,
    pub faults: FaultShares,
    /// Identities are `<prefix>-<index>.<domain>`.
    pub prefix: String,
    pub domain: String,
    pub version: String,
    /// Connections opened at once while starting.
    pub connect_concurrency: usize,
    /// When set, servers accept only this CA (PEM) in `configure`.
    pub expect_ca: Option<String>,
    /// Servers keep running after provisioning, answering in their main collective.
    pub stay: bool,
    /// JSON lines of what happens to each server (provisioned, reprovisioning).
    pub events: Option<std::path::PathBuf>,
    /// Credentials provisioned servers use on the broker (user, password); `None` keeps the
    /// provisioning connection.
    pub production: Option<(String, String)>,
    /// Share of servers (the first ones) that fall back to provisioning mode on their own
    /// `fall_back_after` after their first provisioning; needs `stay`.
    pub fall_back: f64,
    pub fall_back_after: Duration,
    /// Organization Issuer public key servers check server JWTs against.
    pub expect_issuer: Option<[u8; 32]>,
    /// Servers speak protocol v2 (their provisioning JWT says `v2`), as in Organization
    /// Issuer networks.
    pub protocol_v2: bool,
    /// Share of servers that may update their version while provisioning.
    pub upgradable: f64,
    /// The release repository upgradable servers can update from.
    pub upgrade_repository: Option<String>,
    /// Servers arrive (connect, subscribe, announce) at this many per second instead of
    /// all waiting from the start.
    pub arrival_rate: Option<f64>,
    /// Arrivals begin once this file exists (the harness writes it when the provisioners
    /// are ready), so no server arrives before anyone listens.
    pub arrive_after: Option<std::path::PathBuf>,
    /// The broker's CA: provisioning JWTs say `chs: true`, and servers whose JWT says so
    /// connect over TLS checked against it.
    pub nats_ca: Option<std::path::PathBuf>,
}

/// The `chs` claim of a provisioning JWT: whether the server provisions over TLS. Read as a
/// server reads its own token, without checking the signature.
pub fn jwt_secure(jwt: &str) -> bool {
    use base64::Engine;
    jwt.split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|c| c["chs"].as_bool())
        .unwrap_or(false)
}

impl FleetConfig {
    /// The protocol the servers speak.
    pub fn protocol(&self) -> proto::wire::Version {
        if self.protocol_v2 {
            proto::wire::Version::V2
        } else {
            proto::wire::Version::V1
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig {
            servers: 10,
            nats_url: "nats://127.0.0.1:4222".into(),
            user: "server".into(),
            password: String::new(),
            token: String::new(),
            key_type: KeyType::P256,
            key_pool: 0,
            faults: FaultShares::default(),
            prefix: "sim".into(),
            domain: "example.net".into(),
            version: "0.29.4".into(),
            connect_concurrency: 32,
            expect_ca: None,
            stay: false,
            events: None,
            production: None,
            fall_back: 0.0,
            fall_back_after: Duration::from_secs(10),
            expect_issuer: None,
            protocol_v2: false,
            upgradable: 0.0,
            upgrade_repository: None,
            arrival_rate: None,
            nats_ca: None,
            arrive_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::jwt_secure;
    use crate::signer::JwtSigner;

    #[test]
    fn the_chs_claim_is_read_and_garbage_means_plaintext() {
        let signer = JwtSigner::from_ed25519_seed(&[5u8; 32]).unwrap();
        let secure = signer
            .provisioning_jwt("t", "nats://b:4222", false, true)
            .unwrap();
        let plain = signer
            .provisioning_jwt("t", "nats://b:4222", false, false)
            .unwrap();
        assert!(jwt_secure(&secure));
        assert!(!jwt_secure(&plain));
        for garbage in ["", "a", "a.%%%.c", "a.e30.c", "a.bnVsbA.c"] {
            assert!(!jwt_secure(garbage), "{garbage}");
        }
    }
}
