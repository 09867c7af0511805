//! `fleet-sim`: run a fleet of simulated Choria Servers in provisioning mode against a broker
//! and report how many got provisioned, how fast, and whether their certificates verify.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fleet::faults::FaultShares;
use fleet::fleet::{Fleet, FleetConfig};
use fleet::keys::KeyType;
use fleet::signer::JwtSigner;

/// mimalloc: allocation was a tenth of the CPU profile with glibc malloc (see benches/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "fleet-sim",
    version,
    about = "Simulated Choria Servers waiting in provisioning mode"
)]
struct Args {
    /// Number of servers
    #[arg(long, default_value_t = 100)]
    servers: usize,
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    #[arg(long, default_value = "server")]
    user: String,
    #[arg(long, env = "FLEET_NATS_PASSWORD", default_value = "")]
    password: String,
    /// Provisioning token the servers are built with
    #[arg(long, default_value = "")]
    token: String,
    /// Key servers make on gencsr (upstream: rsa2048)
    #[arg(long, value_enum, default_value = "rsa2048")]
    key_type: KeyType,
    /// Keys made before the run and shared round-robin; 0 makes a fresh key per gencsr
    #[arg(long, default_value_t = 0)]
    key_pool: usize,
    /// PKCS#8 PEM RSA key signing the servers' provisioning JWTs (made up when absent)
    #[arg(long)]
    jwt_signer_key: Option<PathBuf>,
    /// Sign provisioning JWTs with EdDSA using this ed25519 seed (hex), as Organization
    /// Issuer networks do, instead of an RSA key
    #[arg(long, conflicts_with = "jwt_signer_key")]
    jwt_signer_seed: Option<String>,
    /// Write the JWT signer's public key here (the provisioner's jwt_verify_cert)
    #[arg(long)]
    write_signer_pub: Option<PathBuf>,
    /// Share of servers that never answer RPCs
    #[arg(long, default_value_t = 0.0)]
    fail_timeout: f64,
    /// Share of servers that answer garbage
    #[arg(long, default_value_t = 0.0)]
    fail_garbage: f64,
    /// Share of servers that send bad CSRs
    #[arg(long, default_value_t = 0.0)]
    fail_bad_csr: f64,
    /// Share of servers whose provisioning JWT is signed by an untrusted key
    #[arg(long, default_value_t = 0.0)]
    fail_bad_jwt: f64,
    /// Share of servers that answer RPCs under another server's identity
    #[arg(long, default_value_t = 0.0)]
    fail_wrong_sender: f64,
    /// Share of servers that send their previous reply again before each real one
    #[arg(long, default_value_t = 0.0)]
    fail_replay: f64,
    /// Share of servers that restart when asked without answering (their reply lost)
    #[arg(long, default_value_t = 0.0)]
    fail_silent_restart: f64,
    #[arg(long, default_value = "sim")]
    prefix: String,
    #[arg(long, default_value = "example.net")]
    domain: String,
    /// Give up this many seconds after the first provisioning request
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Write the summary as JSON here
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Servers accept only this CA certificate (PEM file) in configure
    #[arg(long)]
    expect_ca: Option<PathBuf>,
    /// The broker's CA (PEM file): provisioning JWTs say `chs: true` and servers connect
    /// over TLS checked against it
    #[arg(long)]
    nats_ca: Option<PathBuf>,
    /// Write this file once every server is connected and waiting
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Keep servers running after provisioning, as provisioned servers in their main
    /// collective, until the process is stopped (for reprovisioning)
    #[arg(long)]
    stay: bool,
    /// Write what happens to each server as JSON lines (provisioned, reprovisioning...),
    /// and its first request and any request for an action it was asked before (repeated)
    #[arg(long)]
    events: Option<PathBuf>,
    /// User provisioned servers connect as (their production account); default: they keep
    /// the provisioning connection
    #[arg(long)]
    production_user: Option<String>,
    #[arg(long, env = "FLEET_PRODUCTION_PASSWORD", default_value = "")]
    production_password: String,
    /// Share of servers that fall back to provisioning mode by themselves after their first
    /// provisioning (needs --stay)
    #[arg(long, default_value_t = 0.0)]
    fall_back: f64,
    /// Seconds after provisioning when those servers fall back
    #[arg(long, default_value_t = 10)]
    fall_back_after: u64,
    /// Organization Issuer public key (hex) servers verify server JWTs with
    #[arg(long)]
    expect_issuer: Option<String>,
    /// Servers speak Choria protocol v2 (Organization Issuer networks); with
    /// --expect-issuer they also verify every request's caller JWT and signature
    #[arg(long)]
    protocol_v2: bool,
    /// Share of servers that may update their Choria version while provisioning
    /// (`upgradable` in their inventory)
    #[arg(long, default_value_t = 0.0)]
    upgradable: f64,
    /// The release repository upgradable servers can update from
    #[arg(long)]
    upgrade_repository: Option<String>,
    /// Servers arrive at this many per second (connect, then announce themselves with a
    /// startup event) instead of all waiting from the start
    #[arg(long)]
    arrival_rate: Option<f64>,
    /// With --arrival-rate: arrivals begin once this file exists
    #[arg(long, requires = "arrival_rate")]
    arrive_after: Option<PathBuf>,
}

fn main() -> ExitCode {
    // mimalloc's arenas ask for transparent huge pages and give freed memory back in small
    // pieces; each piece touched again faulted in a whole 2 MiB page the kernel zeroed first,
    // a quarter of the simulator's CPU. Off for this process (best effort).
    // SAFETY: PR_SET_THP_DISABLE takes no pointers; it sets one flag of this process
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    let args = Args::parse();
    if args.fall_back > 0.0 && !args.stay {
        eprintln!("--fall-back needs --stay (servers must keep running to fall back)");
        return ExitCode::from(2);
    }
    if args
        .arrival_rate
        .is_some_and(|r| !(r > 0.0 && r.is_finite()))
    {
        eprintln!("--arrival-rate is a positive number of servers per second");
        return ExitCode::from(2);
    }
    if !(0.0..=1.0).contains(&args.fall_back) {
        eprintln!("--fall-back is a share between 0 and 1");
        return ExitCode::from(2);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<ExitCode, String> {
    let signer = match (&args.jwt_signer_key, &args.jwt_signer_seed) {
        (Some(p), _) => JwtSigner::from_pem(
            &std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?,
        )?,
        (None, Some(h)) => JwtSigner::from_ed25519_seed(
            &hex::decode(h)
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| "--jwt-signer-seed is not a hex ed25519 seed".to_string())?,
        )?,
        (None, None) => JwtSigner::generate()?,
    };
    if let Some(p) = &args.write_signer_pub {
        std::fs::write(p, signer.public_pem()).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    let cfg = FleetConfig {
        servers: args.servers,
        nats_url: args.nats.clone(),
        user: args.user.clone(),
        password: args.password.clone(),
        token: args.token.clone(),
        key_type: args.key_type,
        key_pool: args.key_pool,
        faults: FaultShares {
            timeout: args.fail_timeout,
            garbage: args.fail_garbage,
            bad_csr: args.fail_bad_csr,
            bad_jwt: args.fail_bad_jwt,
            wrong_sender: args.fail_wrong_sender,
            replay: args.fail_replay,
            silent_restart: args.fail_silent_restart,
        },
        prefix: args.prefix.clone(),
        domain: args.domain.clone(),
        expect_ca: match &args.expect_ca {
            Some(p) => {
                Some(std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display()))?)
            }
            None => None,
        },
        stay: args.stay,
        events: args.events.clone(),
        nats_ca: args.nats_ca.clone(),
        expect_issuer: match &args.expect_issuer {
            Some(h) => Some(
                hex::decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| format!("--expect-issuer {h:?} is not a hex ed25519 key"))?,
            ),
            None => None,
        },
        protocol_v2: args.protocol_v2,
        upgradable: args.upgradable,
        upgrade_repository: args.upgrade_repository.clone(),
        arrival_rate: args.arrival_rate,
        arrive_after: args.arrive_after.clone(),
        fall_back: args.fall_back,
        fall_back_after: Duration::from_secs(args.fall_back_after),
        production: args
            .production_user
            .clone()
            .map(|u| (u, args.production_password.clone())),
        ..Default::default()
    };
    let key_note = if args.key_pool == 0 {
        format!("{:?} keys, fresh per gencsr", args.key_type)
    } else {
        format!("{:?} keys from a pool of {}", args.key_type, args.key_pool)
    };
    let mut fleet = Fleet::start(&cfg, &signer).await?;
    match args.arrival_rate {
        Some(r) => eprintln!(
            "fleet ready: {} servers connected, arriving at {r}/s ({key_note})",
            args.servers
        ),
        None => eprintln!(
            "fleet ready: {} servers waiting in provisioning mode ({key_note})",
            args.servers
        ),
    }
    if let Some(p) = &args.ready_file {
        std::fs::write(p, "ready\n").map_err(|e| format!("{}: {e}", p.display()))?;
    }

    let bar = if std::io::stderr().is_terminal() {
        let b = indicatif::ProgressBar::new(args.servers as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} provisioned {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(b)
    } else {
        None
    };
    let mut last_print = 0.0f64;
    let mut summary = fleet
        .wait(
            Duration::from_secs(args.timeout),
            |(done, healthy, secs)| match &bar {
                Some(b) => {
                    b.set_length(healthy as u64);
                    b.set_position(done as u64);
                }
                None if secs - last_print >= 5.0 || done == healthy => {
                    last_print = secs;
                    eprintln!("progress: {done}/{healthy} provisioned after {secs:.1} s");
                }
                None => {}
            },
        )
        .await;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    summary.sim_usage = fleet::usage::own();
    if let Some(p) = &args.summary {
        let json = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
        std::fs::write(p, json).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    eprintln!(
        "verified certificates: {}/{}; latency p50 {} ms, p99 {} ms (until restart accepted), {} ms p99 until back up; {key_note}",
        summary.verified,
        summary.provisioned,
        summary.latency_p50_ms,
        summary.latency_p99_ms,
        summary.ready_p99_ms
    );
    println!("{}", summary.line());
    let ok = !summary.timed_out
        && summary.provisioned + summary.shutdowns == summary.healthy
        && summary.faulty_provisioned == 0
        && summary.ddl_violations == 0;
    if args.stay {
        eprintln!("servers stay up as provisioned servers; stop with SIGTERM");
        tokio::select! {
            _ = fleet.watch() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
