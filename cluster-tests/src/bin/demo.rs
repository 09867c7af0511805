//! The demo: a real `nats-server`, a new CA, a simulated fleet waiting in provisioning mode and
//! a cluster of provisioners (Raft over gRPC on loopback) taking it to "configured with a signed
//! certificate". Fleet size comes from `DEMO_SERVERS` (default 500), the number of members from
//! `DEMO_MEMBERS` (default 3; 1 runs a single provisioner without Raft). Ends with
//! `provisioned <n>/<m> servers in <s> s (<rate>/min)`.

use std::process::ExitCode;
use std::time::Duration;

use cluster_tests::{
    cluster_pki, init_ca, ClusterOptions, FleetOptions, FleetProcess, Nats, ProvisionerOptions,
    ProvisionerProcess,
};

fn positive_env(name: &str, default: usize) -> Result<usize, String> {
    match std::env::var(name) {
        Ok(v) => match v.parse() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{name} must be a positive number, got {v:?}")),
        },
        Err(_) => Ok(default),
    }
}

fn main() -> ExitCode {
    let (servers, members) = match (
        positive_env("DEMO_SERVERS", 500),
        positive_env("DEMO_MEMBERS", 3),
    ) {
        (Ok(s), Ok(m)) => (s, m as u64),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let dir = match tempfile::Builder::new()
        .prefix("provisioner-demo-")
        .tempdir()
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot create a work directory: {e}");
            return ExitCode::FAILURE;
        }
    };
    let keep = std::env::var("DEMO_KEEP").is_ok();
    eprintln!("demo: work directory {} (logs there)", dir.path().display());

    let nats = Nats::start(dir.path());
    eprintln!("demo: nats-server listening on {}", nats.url);
    let ca = init_ca(dir.path());
    eprintln!("demo: CA created at {}", ca.0.display());

    let fleet = FleetProcess::start(
        dir.path(),
        &nats,
        &ca.0,
        &FleetOptions {
            servers,
            key_type: std::env::var("DEMO_KEY_TYPE").unwrap_or_else(|_| "p256".into()),
            token: "demo-token".into(),
            ..Default::default()
        },
        true,
    );
    let specs = ClusterOptions::members(members);
    let tls_dir = (members > 1).then(|| cluster_pki(dir.path(), &specs));
    let provisioners: Vec<ProvisionerProcess> = specs
        .iter()
        .map(|spec| {
            ProvisionerProcess::start(
                dir.path(),
                &nats,
                &ca,
                &fleet.signer_pub,
                &ProvisionerOptions {
                    identity: spec.name.clone(),
                    token: "demo-token".into(),
                    workers: 64,
                    cluster: (members > 1).then(|| ClusterOptions {
                        id: spec.id,
                        members: specs.clone(),
                        claim_lease: "30s".into(),
                        tls_dir: tls_dir.clone(),
                    }),
                    ..Default::default()
                },
            )
        })
        .collect();
    for p in &provisioners {
        eprintln!(
            "demo: provisioner {} started (http://127.0.0.1:{}/metrics and /status)",
            p.config.display(),
            p.monitor_port
        );
    }
    let summary = fleet.finish(Duration::from_secs(900));
    let ok = summary["provisioned"] == summary["servers"] && summary["timed_out"] == false;
    if members > 1 {
        for p in &provisioners {
            let s = p.status();
            eprintln!(
                "demo: {} enrolled {} servers; ledger digest {}",
                s["member"].as_str().unwrap_or("?"),
                s["ledger"]["enrolled_by"][s["member"].as_str().unwrap_or("")],
                s["ledger"]["digest"].as_str().unwrap_or("?")
            );
        }
    }
    drop(provisioners);
    if members > 1 {
        // the fleet printed it already; end with it after the members' lines too
        println!(
            "provisioned {}/{} servers in {:.1} s ({:.0}/min)",
            summary["provisioned"],
            summary["servers"],
            summary["seconds"].as_f64().unwrap_or(0.0),
            summary["rate_per_minute"].as_f64().unwrap_or(0.0)
        );
    }
    if keep {
        let kept = dir.keep();
        eprintln!("demo: kept {}", kept.display());
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("demo: not every server was provisioned: {summary}");
        ExitCode::FAILURE
    }
}
