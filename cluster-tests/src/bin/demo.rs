//! The demo: a real `nats-server`, a new CA, a simulated fleet waiting in provisioning mode and
//! a cluster of provisioners (Raft over gRPC on loopback) taking it to "configured with a signed
//! certificate". Fleet size comes from `DEMO_SERVERS` (default 500), the number of members from
//! `DEMO_MEMBERS` (default 3; 1 runs a single provisioner without Raft). Ends with
//! `provisioned <n>/<m> servers in <s> s (<rate>/min)`.
//!
//! A cluster serves the admin API over mTLS; the demo makes an operator certificate and prints
//! how to point `provisioner admin` at it. `DEMO_HOLD=<seconds>` keeps the cluster and the
//! (then provisioned) fleet running that long after the run, to try the admin commands, for
//! example `provisioner admin reprovision --regex '^sim-0000'`.

use std::process::ExitCode;
use std::time::Duration;

use cluster_tests::{
    admin_pki, cluster_pki, init_ca, start_members, ClusterOptions, FleetOptions, FleetProcess,
    Nats, ProvisionerOptions,
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
    let hold = match std::env::var("DEMO_HOLD") {
        Ok(v) => match v.parse::<u64>() {
            Ok(n) => Some(Duration::from_secs(n)),
            Err(_) => {
                eprintln!("DEMO_HOLD must be a number of seconds, got {v:?}");
                return ExitCode::from(2);
            }
        },
        Err(_) => None,
    };
    eprintln!("demo: work directory {} (logs there)", dir.path().display());

    let nats = Nats::start(dir.path());
    eprintln!("demo: nats-server listening on {}", nats.url);
    let ca = init_ca(dir.path());
    eprintln!("demo: CA created at {}", ca.0.display());

    let mut fleet = FleetProcess::start(
        dir.path(),
        &nats,
        &ca.0,
        &FleetOptions {
            servers,
            key_type: std::env::var("DEMO_KEY_TYPE").unwrap_or_else(|_| "p256".into()),
            token: "demo-token".into(),
            // held fleets stay up as provisioned servers, in the broker's choria account
            extra: if hold.is_some() {
                vec![
                    "--stay".into(),
                    "--production-user".into(),
                    "choria".into(),
                    "--production-password".into(),
                    nats.creds.choria.clone(),
                ]
            } else {
                vec![]
            },
            ..Default::default()
        },
        true,
    );
    let specs = ClusterOptions::members(members);
    let tls_dir = (members > 1).then(|| cluster_pki(dir.path(), &specs));
    let operator = tls_dir
        .as_ref()
        .map(|pki| admin_pki(dir.path(), pki, "demo-operator"));
    let admin_extra = format!(
        "  reprovision:\n    servers: [\"{}\"]\n    user: choria\n    password: \"{}\"\n",
        nats.url, nats.creds.choria
    );
    let provisioners = start_members(
        dir.path(),
        &nats,
        &ca,
        &fleet.signer_pub,
        members,
        &ProvisionerOptions {
            token: "demo-token".into(),
            workers: 64,
            ..Default::default()
        },
        operator
            .as_ref()
            .map(|o| (o.admin_ca.clone(), admin_extra.clone())),
    );
    for p in &provisioners {
        eprintln!(
            "demo: provisioner {} started (http://127.0.0.1:{}/metrics and /status)",
            p.config.display(),
            p.monitor_port
        );
    }
    if let (Some(op), Some(first)) = (&operator, specs.first()) {
        eprintln!("demo: admin API on every member; for example:");
        eprintln!(
            "  export PROVISIONER_ADMIN_ENDPOINT=127.0.0.1:{} PROVISIONER_ADMIN_SERVER_NAME={} \\\n    PROVISIONER_ADMIN_CA={} \\\n    PROVISIONER_ADMIN_CERT={} PROVISIONER_ADMIN_KEY={}",
            first.admin_port,
            first.name,
            op.cluster_ca.display(),
            op.cert.display(),
            op.key.display()
        );
        eprintln!("  provisioner admin status");
    }
    let summary = match hold {
        Some(_) => fleet.wait_summary(Duration::from_secs(900)),
        None => fleet.finish(Duration::from_secs(900)),
    };
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
    if let Some(h) = hold {
        eprintln!("demo: holding the cluster and fleet for {} s", h.as_secs());
        std::thread::sleep(h);
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
