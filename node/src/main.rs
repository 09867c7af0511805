//! The `provisioner` command: `run` a provisioner, manage its CA, or operate a running
//! cluster (`admin`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use node::admin::cli::AdminArgs;
use node::ca::{self, KeyType};
use node::config::{parse_duration, Config};
use node::service::{Provisioner, ServiceError};

/// mimalloc: allocation was a tenth of the CPU profile with glibc malloc (see benches/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "provisioner",
    version,
    about = "Provisions Choria Servers waiting in provisioning mode"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the provisioner
    Run {
        /// Configuration file (upstream choria-provisioner.yaml keys plus our sections);
        /// default /etc/choria-provisioner/provisioner.yaml, or upstream's
        /// choria-provisioner.yaml there
        #[arg(long, short, env = "PROVISIONER_CONFIG")]
        config: Option<PathBuf>,
        /// Write the process id to this file while running (as upstream's --pid)
        #[arg(long, value_name = "FILE")]
        pid: Option<PathBuf>,
    },
    /// Manage the built-in certificate authority
    Ca {
        #[command(subcommand)]
        command: CaCmd,
    },
    /// Check configuration files
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// Operate a running cluster through any member's admin API
    Admin(AdminArgs),
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (roff), one per command, as the package installs them
    #[command(hide = true)]
    Man {
        /// Directory to write them to
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Check a configuration and the files it names; print every problem at once. Exits 0
    /// when it would start, 2 when not
    Check {
        /// Configuration file; default as for `run`
        file: Option<PathBuf>,
        /// Only check the file itself, not the files it names (when checking it away from the
        /// host it is for)
        #[arg(long)]
        no_files: bool,
        /// Check it as the host with this identity reads it (a cluster file shared by members)
        #[arg(long)]
        identity: Option<String>,
    },
}

#[derive(Subcommand)]
enum CaCmd {
    /// Create a new CA: DIR/ca.pem and DIR/ca.key (mode 0600)
    Init {
        /// Directory to write the CA into
        #[arg(long)]
        dir: PathBuf,
        /// Common name of the CA certificate
        #[arg(long, default_value = "Choria Provisioner CA")]
        cn: String,
        #[arg(long, value_enum, default_value = "ecdsa-p256")]
        key_type: KeyType,
        /// How long the CA is valid, e.g. 10y
        #[arg(long, default_value = "10y")]
        validity: String,
        /// Replace an existing CA in DIR
        #[arg(long)]
        force: bool,
    },
    /// Issue a cluster member's certificate for mutual TLS between members
    IssueMember {
        /// Directory of the cluster CA (made with `ca init`)
        #[arg(long)]
        dir: PathBuf,
        /// The member's name (its `cluster.members` name)
        #[arg(long)]
        name: String,
        /// Where to write NAME.pem and NAME.key
        #[arg(long)]
        out: PathBuf,
        /// More DNS names for the certificate
        #[arg(long)]
        dns: Vec<String>,
        /// IP addresses for the certificate
        #[arg(long)]
        ip: Vec<std::net::IpAddr>,
        /// Validity, e.g. 1y
        #[arg(long, default_value = "1y")]
        validity: String,
    },
    /// Make (or show) the ed25519 Organization Issuer key that signs server JWTs: DIR/issuer.seed
    /// (hex, mode 0600) and DIR/issuer.pub (PEM); prints the public key in hex
    Issuer {
        /// Directory for the issuer's files; an existing seed there is kept
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue an operator's client certificate for the admin API
    IssueAdmin {
        /// Directory of the admin CA (made with `ca init`)
        #[arg(long)]
        dir: PathBuf,
        /// The operator's name (certificate common name), shown in ledger history
        #[arg(long)]
        name: String,
        /// Where to write NAME.pem and NAME.key
        #[arg(long)]
        out: PathBuf,
        /// Validity, e.g. 90d
        #[arg(long, default_value = "90d")]
        validity: String,
    },
}

fn main() -> ExitCode {
    // before the runtime's threads touch much memory; see node::memory
    node::memory::no_transparent_huge_pages();
    node::memory::keep_freed_memory_a_while();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Ca { command } => ca_command(command),
        Cmd::Config {
            command:
                ConfigCmd::Check {
                    file,
                    no_files,
                    identity,
                },
        } => match node::config::location::given_or_default(file) {
            Ok(found) => {
                if let Some(other) = &found.not_read {
                    println!("note: {} is not read", other.display());
                }
                check_config(&found.path, identity.as_deref(), !no_files)
            }
            Err(e) => usage(&e.to_string()),
        },
        Cmd::Admin(args) => node::admin::cli::run(args),
        Cmd::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "provisioner",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Cmd::Man { dir } => {
            let mut cmd = Cli::command();
            // names every subcommand `provisioner-<name>`, as the pages refer to each other
            cmd.build();
            match write_man_pages(&cmd, &dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("man: {}: {e}", dir.display());
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run { config, pid } => run(config, pid),
    }
}

/// `provisioner ca ...`: make the CA or the issuer, or issue a member's or admin's certificate.
fn ca_command(command: CaCmd) -> ExitCode {
    match command {
        CaCmd::Init {
            dir,
            cn,
            key_type,
            validity,
            force,
        } => {
            let validity = match parse_duration(&validity) {
                Ok(v) => v,
                Err(e) => return usage(&format!("--validity: {e}")),
            };
            report(
                "ca init",
                "CA",
                ca::init(&dir, &cn, key_type, validity, force),
            )
        }
        CaCmd::IssueMember {
            dir,
            name,
            out,
            dns,
            ip,
            validity,
        } => issue("member", &dir, &name, &out, &validity, |c| {
            c.issue_member(&name, &dns, &ip)
        }),
        CaCmd::IssueAdmin {
            dir,
            name,
            out,
            validity,
        } => issue("admin", &dir, &name, &out, &validity, |c| {
            c.issue_admin(&name)
        }),
        CaCmd::Issuer { dir } => match node::orgissuer::init_issuer(&dir) {
            Ok((issuer, created)) => {
                let what = if created { "new" } else { "existing" };
                println!(
                    "issuer seed:       {} ({what})",
                    dir.join(node::orgissuer::SEED_FILE).display()
                );
                println!(
                    "issuer public key: {}",
                    dir.join(node::orgissuer::PUBLIC_FILE).display()
                );
                println!("public key (hex):  {}", issuer.public_hex());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ca issuer: {e}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Loads the CA in `dir`, issues a certificate with `make` and writes it to `out` as NAME.pem
/// and NAME.key (0600).
fn issue(
    what: &str,
    dir: &std::path::Path,
    name: &str,
    out: &std::path::Path,
    validity: &str,
    make: impl FnOnce(&ca::Ca) -> Result<(String, String), ca::CaError>,
) -> ExitCode {
    let validity = match parse_duration(validity) {
        Ok(v) => v,
        Err(e) => return usage(&format!("--validity: {e}")),
    };
    let issued = ca::Ca::load(&dir.join(ca::CERT_FILE), &dir.join(ca::KEY_FILE), validity)
        .and_then(|c| make(&c))
        .and_then(|(cert, key)| ca::write_member(out, name, &cert, &key));
    report(&format!("ca issue-{what}"), what, issued)
}

/// `cmd`'s page and those of its visible subcommands, `<name>.1` in `dir`.
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    for sub in cmd
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        write_man_pages(sub, dir)?;
    }
    Ok(())
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("{msg}");
    ExitCode::from(2)
}

/// Prints the files a `ca` command wrote, or its error.
fn report(cmd: &str, what: &str, result: Result<(PathBuf, PathBuf), ca::CaError>) -> ExitCode {
    match result {
        Ok((cert, key)) => {
            println!("{what} certificate: {}", cert.display());
            println!("{what} key:         {}", key.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `config check`: every problem on its own line, then a one-line summary.
fn check_config(path: &std::path::Path, identity: Option<&str>, files: bool) -> ExitCode {
    let (config, mut problems) = match Config::load_as(path, identity) {
        Ok(c) => (Some(c), Vec::new()),
        Err(e) => (None, e.problems().iter().map(|p| p.to_string()).collect()),
    };
    if let (Some(c), true) = (&config, files) {
        problems.extend(c.check_files().iter().map(|p| p.to_string()));
    }
    for p in &problems {
        println!("error: {p}");
    }
    for w in config.iter().flat_map(|c| &c.warnings) {
        println!("warning: {w}");
    }
    match config {
        Some(c) if problems.is_empty() => {
            println!("{}: ok ({})", path.display(), summary(&c));
            ExitCode::SUCCESS
        }
        _ => {
            let n = problems.len();
            let s = if n == 1 { "" } else { "s" };
            println!("{}: {n} problem{s}", path.display());
            ExitCode::from(2)
        }
    }
}

/// What a good configuration runs as, in a few words.
fn summary(c: &Config) -> String {
    let role = match &c.cluster {
        Some(cl) => format!(
            "member {} (id {}) of a {}-member cluster",
            c.identity,
            cl.id,
            cl.members.len()
        ),
        None => format!("single provisioner {}", c.identity),
    };
    let enrollment = if c.features.pki {
        "x509 enrollment"
    } else if c.features.ed25519 {
        "ed25519 enrollment"
    } else {
        "no enrollment"
    };
    let logic = if c.builtin_helper.is_some() {
        "built-in helper".to_string()
    } else {
        format!("helper {}", c.helper.join(" "))
    };
    format!("{role}, {enrollment}, {logic}")
}

fn run(path: Option<PathBuf>, pid: Option<PathBuf>) -> ExitCode {
    let (path, not_read) = match node::config::location::given_or_default(path) {
        Ok(found) => (found.path, found.not_read),
        Err(e) => return usage(&e.to_string()),
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            for p in e.problems() {
                eprintln!("configuration error: {p}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // listened for before the pid file and the first log line, which tell a supervisor the
    // process is up: a SIGTERM from then on is a clean stop, never the default kill
    let mut signals = {
        let _in_runtime = runtime.enter();
        StopSignals::listen()
    };
    // written before the first log line; removed when this function returns, however the
    // provisioner stops
    let _pid = match &pid {
        None => None,
        Some(file) => match node::pidfile::PidFile::write(file) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("--pid {}: {e}", file.display());
                return ExitCode::FAILURE;
            }
        },
    };
    if let Err(e) = node::logging::init(
        &config.loglevel,
        config.log_format,
        config.logfile.as_deref(),
    ) {
        eprintln!("logging: {e}");
        return ExitCode::from(2);
    }
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    if let Some(other) = not_read {
        tracing::info!(config = %path.display(), "{} is not read", other.display());
    }
    runtime.block_on(async move {
        // a stop asked for while starting is carried out once started
        let start = Provisioner::start(config, None, None);
        tokio::pin!(start);
        let mut stop_asked = false;
        let started = loop {
            tokio::select! {
                started = &mut start => break started,
                _ = signals.recv(), if !stop_asked => stop_asked = true,
            }
        };
        let provisioner = match started {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("cannot start: {e}");
                return match e {
                    ServiceError::Ledger { .. } => ExitCode::from(EXIT_STORAGE),
                    _ => ExitCode::FAILURE,
                };
            }
        };
        if !stop_asked {
            tokio::select! {
                _ = signals.recv() => {}
                reason = provisioner.failed() => {
                    // systemd restarts it (Restart=on-failure); a disk that is still full stops
                    // it again, visibly, rather than leaving a member that claims with a dead log
                    tracing::error!(%reason, "the ledger can no longer be written (is the disk under data_dir full or read-only?); stopping");
                    eprintln!("stopping: the ledger can no longer be written: {reason}");
                    return ExitCode::from(EXIT_STORAGE);
                }
            }
        }
        tracing::info!("shutting down");
        provisioner.stop().await;
        ExitCode::SUCCESS
    })
}

/// Exit status when the ledger cannot be written: sysexits' EX_IOERR.
const EXIT_STORAGE: u8 = 74;

/// SIGTERM (systemd's stop) and SIGINT, registered when made: a signal that comes before
/// anyone waits is kept, not lost to the default action.
struct StopSignals {
    term: Option<tokio::signal::unix::Signal>,
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Needs a tokio runtime entered.
    fn listen() -> StopSignals {
        use tokio::signal::unix::{signal, SignalKind};
        StopSignals {
            term: signal(SignalKind::terminate()).ok(),
            int: signal(SignalKind::interrupt()).ok(),
        }
    }

    /// Until either signal comes (never, if neither could be registered).
    async fn recv(&mut self) {
        async fn one(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = one(&mut self.term) => {}
            _ = one(&mut self.int) => {}
        }
    }
}
