//! The demo: a real `nats-server`, a new CA, a simulated fleet waiting in provisioning mode and
//! a provisioner taking it to "configured with a signed certificate". Fleet size comes from
//! `DEMO_SERVERS` (default 500). Ends with `provisioned <n>/<m> servers in <s> s (<rate>/min)`.

use std::process::ExitCode;
use std::time::Duration;

use cluster_tests::{
    init_ca, FleetOptions, FleetProcess, Nats, ProvisionerOptions, ProvisionerProcess,
};

fn main() -> ExitCode {
    let servers: usize = match std::env::var("DEMO_SERVERS") {
        Ok(v) => match v.parse() {
            Ok(n) if n > 0 => n,
            _ => {
                eprintln!("DEMO_SERVERS must be a positive number, got {v:?}");
                return ExitCode::from(2);
            }
        },
        Err(_) => 500,
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
    let provisioner = ProvisionerProcess::start(
        dir.path(),
        &nats,
        &ca,
        &fleet.signer_pub,
        &ProvisionerOptions {
            token: "demo-token".into(),
            workers: 64,
            ..Default::default()
        },
    );
    eprintln!(
        "demo: provisioner started (metrics on http://127.0.0.1:{}/metrics)",
        provisioner.monitor_port
    );
    let summary = fleet.finish(Duration::from_secs(900));
    let ok = summary["provisioned"] == summary["servers"] && summary["timed_out"] == false;
    drop(provisioner);
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
