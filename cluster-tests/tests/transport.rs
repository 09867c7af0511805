//! Transport security as production brokers run it: a nats-server that takes TLS only, the
//! provisioner connecting with `nats.tls`, and servers whose provisioning JWT says `chs: true`
//! connecting over TLS checked against the broker's CA. A plaintext client and a client that
//! trusts another CA are refused. (Member-to-member and admin gRPC refusals of plaintext and
//! wrong-CA peers are in raft/tests/group.rs and tests/admin.rs.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is a failed test"
)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use cluster_tests::{
    broker_pki, init_ca, FleetOptions, FleetProcess, Nats, ProvisionerOptions, ProvisionerProcess,
};

/// Speaks the NATS protocol in plaintext to a TLS-only broker; returns what it answered.
fn plaintext_connect(port: u16, user: &str, password: &str) -> String {
    let sock = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut reader = BufReader::new(sock.try_clone().expect("clone"));
    let mut info = String::new();
    reader.read_line(&mut info).ok();
    let mut w = sock;
    let connect = serde_json::json!({"verbose": true, "user": user, "pass": password});
    let _ = write!(w, "CONNECT {connect}\r\nPING\r\n");
    let mut answer = String::new();
    let _ = reader.read_line(&mut answer);
    format!("{}{}", info.trim(), answer.trim())
}

#[test]
fn a_tls_broker_carries_provisioning_and_refuses_plaintext_and_other_cas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let tls = broker_pki(d);
    let nats = Nats::start_tls(d, &tls);
    let ca = init_ca(d);

    // a plaintext client learns that TLS is required and gets no further
    let answer = plaintext_connect(nats.port, "provisioner", &nats.creds.provisioner);
    assert!(answer.contains("\"tls_required\":true"), "{answer}");
    assert!(
        !answer.contains("PONG"),
        "a plaintext client was let in: {answer}"
    );
    // a TLS client that trusts another CA (the provisioning CA here) is refused
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let wrong_ca = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(10),
            async_nats::ConnectOptions::with_user_and_password(
                "provisioner".into(),
                nats.creds.provisioner.clone(),
            )
            .require_tls(true)
            .add_root_certificates(ca.0.clone())
            .connect(nats.url.clone()),
        )
        .await
    });
    assert!(
        !matches!(wrong_ca, Ok(Ok(_))),
        "a client trusting another CA connected"
    );
    // and one that trusts the broker's CA is let in
    let right_ca = rt.block_on(async {
        async_nats::ConnectOptions::with_user_and_password(
            "provisioner".into(),
            nats.creds.provisioner.clone(),
        )
        .require_tls(true)
        .add_root_certificates(tls.ca.clone())
        .connect(nats.url.clone())
        .await
    });
    assert!(right_ca.is_ok(), "{:?}", right_ca.err());

    // servers whose JWT says chs: true and the provisioner, both over TLS
    let fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: 30,
            timeout_secs: 120,
            extra: vec!["--nats-ca".into(), tls.ca.display().to_string()],
            ..Default::default()
        },
        false,
    );
    let mut prov = ProvisionerProcess::start(
        d,
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions {
            nats_tls_ca: Some(tls.ca.clone()),
            ..Default::default()
        },
    );
    let summary = fleet.finish(Duration::from_secs(180));
    assert!(prov.proc.is_running(), "the provisioner died");
    assert_eq!(summary["provisioned"], 30, "{summary}");
    assert_eq!(summary["verified"], 30, "{summary}");
}

/// The provisioner without `nats.tls` cannot reach a TLS-only broker: it keeps retrying
/// (and says why) instead of provisioning in clear.
#[test]
fn a_provisioner_without_the_brokers_ca_provisions_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let tls = broker_pki(d);
    let nats = Nats::start_tls(d, &tls);
    let ca = init_ca(d);
    let fleet = FleetProcess::start(
        d,
        &nats,
        &ca.0,
        &FleetOptions {
            servers: 5,
            timeout_secs: 15,
            extra: vec!["--nats-ca".into(), tls.ca.display().to_string()],
            ..Default::default()
        },
        false,
    );
    let _prov = ProvisionerProcess::start(
        d,
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions::default(),
    );
    let summary = fleet.finish(Duration::from_secs(60));
    assert_eq!(summary["provisioned"], 0, "{summary}");
    let log = std::fs::read_to_string(d.join("prov1.example.net.log")).unwrap_or_default();
    assert!(
        log.lines()
            .any(|l| l.contains("cannot connect to the broker")
                && (l.to_lowercase().contains("tls") || l.contains("certificate"))),
        "no word on TLS in the provisioner's log: {}",
        log.lines().rev().take(5).collect::<Vec<_>>().join("\n")
    );
}
