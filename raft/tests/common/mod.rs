//! What the in-process group tests share: free addresses, a cluster CA issuing member
//! certificates, starting members and waiting for a leader.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test; not every test uses every helper"
)]

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use raft::member::{MemberConfig, RaftMember, RaftSettings};
use raft::network::Tls;
use raft::types::Member;

pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn settings() -> RaftSettings {
    RaftSettings {
        heartbeat_ms: 100,
        election_min_ms: 400,
        election_max_ms: 800,
        snapshot_every: 50,
        snapshot_chunk_bytes: 4 * 1024,
        keep_logs: 0,
        // a short linger, so the busy path runs in every group test
        commit_linger_ms: 5,
    }
}

/// A cluster CA and a certificate per member name, as `provisioner ca` makes them.
pub struct Pki {
    ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "cluster CA");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        Pki {
            ca: p.self_signed(&ca_key).unwrap(),
            issuer: rcgen::Issuer::new(p, ca_key),
        }
    }

    pub fn tls(&self, name: &str) -> Tls {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Tls {
            ca_pem: self.ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A member with no configured member list (anyone the CA certified may join).
pub async fn start(id: u64, me: &Member, dir: &std::path::Path, pki: &Pki) -> Arc<RaftMember> {
    start_listed(id, me, dir, pki, &BTreeMap::new()).await
}

/// A member whose configuration lists `configured`.
pub async fn start_listed(
    id: u64,
    me: &Member,
    dir: &std::path::Path,
    pki: &Pki,
    configured: &BTreeMap<u64, Member>,
) -> Arc<RaftMember> {
    Arc::new(
        RaftMember::start(MemberConfig {
            id,
            me: me.clone(),
            listen: Some(me.raft_addr.parse().unwrap()),
            data_dir: dir.join(format!("m{id}")),
            settings: settings(),
            tls: Some(pki.tls(&me.name)),
            source_ip: None,
            configured: configured.clone(),
            max_clock_skew_ms: 2_000,
        })
        .await
        .unwrap(),
    )
}

pub async fn wait_leader(members: &[Arc<RaftMember>]) -> u64 {
    for _ in 0..100 {
        if let Some((id, _)) = members[0].leader() {
            if members.iter().all(|m| m.leader().map(|l| l.0) == Some(id)) {
                return id;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader elected");
}
