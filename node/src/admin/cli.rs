//! `provisioner admin ...`: the operator CLI on the admin API.
//!
//! Connection settings come from flags, else `PROVISIONER_ADMIN_*` environment variables,
//! else a client file (`--client-config`, default `~/.config/provisioner/admin.yaml`).
//! Output is a table, or the reply as JSON with `--json`. Exit codes are stable for scripts;
//! see [`Exit`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use proto::grpc::admin as pb;
use proto::grpc::admin::admin_client::AdminClient;
use serde::Deserialize;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

/// Exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// The cluster refused or failed the call (not found, failed precondition, internal).
    Failed = 1,
    /// Bad command line or arguments the server called invalid.
    Usage = 2,
    /// The call ran but not for every server (reprovision with errors or no answers).
    Partial = 3,
    /// No valid client certificate, or it was refused.
    Unauthenticated = 4,
    /// The member could not be reached, or the cluster has no leader.
    Unavailable = 5,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Admin API address of any member, e.g. https://prov1:7101
    #[arg(long, env = "PROVISIONER_ADMIN_ENDPOINT")]
    pub endpoint: Option<String>,
    /// CA that signed the members' certificates
    #[arg(long, env = "PROVISIONER_ADMIN_CA")]
    pub ca: Option<PathBuf>,
    /// Operator certificate (`provisioner ca issue-admin`)
    #[arg(long, env = "PROVISIONER_ADMIN_CERT")]
    pub cert: Option<PathBuf>,
    /// Operator key
    #[arg(long, env = "PROVISIONER_ADMIN_KEY")]
    pub key: Option<PathBuf>,
    /// Name the member's certificate must carry; default: the endpoint's host
    #[arg(long, env = "PROVISIONER_ADMIN_SERVER_NAME")]
    pub server_name: Option<String>,
    /// YAML file with endpoint, ca, cert, key, server_name
    #[arg(long, env = "PROVISIONER_ADMIN_CONFIG")]
    pub client_config: Option<PathBuf>,
    /// Print replies as JSON
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a call after this many seconds
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: AdminCmd,
}

#[derive(Debug, Subcommand)]
pub enum AdminCmd {
    /// Cluster status: leader, members, their work, ledger counts
    Status,
    /// Members only
    Members,
    /// Add a learner (it catches up, then `promote` makes it a voter)
    AddMember {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        name: String,
        #[arg(long)]
        raft_addr: String,
        #[arg(long, default_value = "")]
        admin_addr: String,
    },
    /// Make a learner a voter
    Promote { id: u64 },
    /// Remove a member; refused when it would cost the quorum, unless --force
    RemoveMember {
        id: u64,
        #[arg(long)]
        force: bool,
    },
    /// Stop a member taking new servers; its share moves to the others
    Drain {
        member: String,
        /// Return once it holds no server (its flows ended; safe to stop), or fail after
        /// this long (e.g. 60s)
        #[arg(long, value_parser = crate::config::parse_duration)]
        wait: Option<std::time::Duration>,
    },
    /// Let a drained member take servers again
    Undrain { member: String },
    /// Release claims of gone or draining members and make every member rediscover
    Rebalance,
    /// Pause provisioning on every member
    Pause,
    /// Resume provisioning
    Resume,
    /// Send servers back to provisioning mode
    Reprovision {
        /// Identities to reprovision
        identities: Vec<String>,
        #[command(flatten)]
        select: SelectArgs,
        /// Every enrolled or revoked server
        #[arg(long)]
        all: bool,
        /// Servers asked at a time
        #[arg(long, default_value_t = 50)]
        batch: u32,
        /// Requests per second at most
        #[arg(long, default_value_t = 100)]
        rate: u32,
        /// Seconds to wait for each server
        #[arg(long, default_value_t = 10)]
        wait: u32,
        /// Show which servers would be asked; ask none
        #[arg(long)]
        dry_run: bool,
    },
    /// Query the enrollment ledger
    Ledger {
        #[command(subcommand)]
        command: LedgerCmd,
    },
    /// Build a snapshot of the answering member's ledger now
    Snapshot,
    /// Revoke a server's current credential (the CRL is rewritten)
    Revoke {
        identity: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Copy the answering member's store (log, vote, ledger) to data_dir/backups/NAME on its
    /// host, while it runs (docs/operations.md: backup and restore)
    Backup {
        /// Directory name; default backup-<UTC time>
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Debug, Args, Default, Clone)]
pub struct SelectArgs {
    /// Regular expression over identities
    #[arg(long)]
    pub regex: Option<String>,
    /// name=value fact kept in the ledger (repeat; all must match)
    #[arg(long)]
    pub fact: Vec<String>,
    /// Only records in this state (repeat)
    #[arg(long)]
    pub state: Vec<String>,
    /// Only servers whose current credential expires within this long (30d, 2W): the ones
    /// to renew before they break
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub expiring_within: Option<std::time::Duration>,
}

impl SelectArgs {
    fn selector(&self, identities: Vec<String>, all: bool) -> pb::Selector {
        pb::Selector {
            identities,
            identity_regex: self.regex.clone().unwrap_or_default(),
            facts: self.fact.clone(),
            all,
            states: self.state.clone(),
            expiring_within_seconds: self.expiring_within.map_or(0, |d| d.as_secs().max(1)),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// List records
    List {
        #[command(flatten)]
        select: SelectArgs,
        /// Only servers claimed by this member
        #[arg(long, default_value = "")]
        owner: String,
        #[arg(long, default_value_t = 100)]
        page_size: u32,
        /// Continue after this identity (a previous page's next token)
        #[arg(long, default_value = "")]
        page_token: String,
    },
    /// One record with its history and earlier credentials
    Show { identity: String },
    /// Every matching record as JSON lines
    Export {
        #[command(flatten)]
        select: SelectArgs,
        /// Write to this file instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Record servers enrolled elsewhere (JSON lines, as `export` writes) as enrolled
    Import {
        file: PathBuf,
        /// Servers per call (at most 1000)
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Calls in flight
        #[arg(long, default_value_t = 4)]
        parallel: usize,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientFile {
    endpoint: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

/// A failure with the exit code it maps to.
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub(super) fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure {
            exit,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Failure {
        let exit = match s.code() {
            Code::InvalidArgument => Exit::Usage,
            Code::Unauthenticated | Code::PermissionDenied => Exit::Unauthenticated,
            // tonic reports its own client timeout as CANCELLED
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => Exit::Unavailable,
            _ => Exit::Failed,
        };
        if s.code() == Code::Cancelled && s.message().contains("Timeout expired") {
            return Failure::new(
                exit,
                "DEADLINE_EXCEEDED: no answer within --timeout; the cluster may still carry \
                 the call out (check with status)",
            );
        }
        Failure::new(
            exit,
            format!("{}: {}", super::code_name(s.code()), s.message()),
        )
    }
}

/// Runs an admin command; prints its output and returns the exit code.
pub fn run(args: AdminArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start runtime: {e}");
            return Exit::Failed.into();
        }
    };
    match runtime.block_on(execute(args)) {
        Ok(exit) => exit.into(),
        Err(f) => {
            eprintln!("{}", f.message);
            f.exit.into()
        }
    }
}

async fn connect(a: &AdminArgs) -> Result<AdminClient<Channel>, Failure> {
    let file = match a.client_config.clone().or_else(default_client_file) {
        Some(p) if p.exists() || a.client_config.is_some() => read_client_file(&p)?,
        _ => ClientFile::default(),
    };
    let need = |v: Option<PathBuf>, what: &str| {
        v.ok_or_else(|| {
            Failure::new(
                Exit::Usage,
                format!(
                    "--{what} (or PROVISIONER_ADMIN_{}) is required",
                    what.to_uppercase()
                ),
            )
        })
    };
    let endpoint = a.endpoint.clone().or(file.endpoint).ok_or_else(|| {
        Failure::new(
            Exit::Usage,
            "--endpoint (or PROVISIONER_ADMIN_ENDPOINT) is required",
        )
    })?;
    let url = if endpoint.contains("://") {
        endpoint.clone()
    } else {
        format!("https://{endpoint}")
    };
    let read = |p: &Path| {
        std::fs::read_to_string(p)
            .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", p.display())))
    };
    let ca = read(&need(a.ca.clone().or(file.ca), "ca")?)?;
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    // without a certificate the call goes out anyway and the server says why it refuses
    match (a.cert.clone().or(file.cert), a.key.clone().or(file.key)) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(read(&cert)?, read(&key)?));
        }
        (None, None) => {}
        _ => return Err(Failure::new(Exit::Usage, "--cert and --key go together")),
    }
    let server_name = a.server_name.clone().or(file.server_name).or_else(|| {
        url.split("://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .map(|hostport| match hostport.rsplit_once(':') {
                Some((h, _)) => h.trim_matches(['[', ']']).to_string(),
                None => hostport.to_string(),
            })
    });
    if let Some(n) = server_name {
        tls = tls.domain_name(n);
    }
    let channel = Endpoint::from_shared(url.clone())
        .map_err(|e| Failure::new(Exit::Usage, format!("--endpoint {endpoint:?}: {e}")))?
        .tls_config(tls)
        .map_err(|e| Failure::new(Exit::Usage, format!("tls: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(a.timeout))
        .connect()
        .await
        .map_err(|e| {
            let mut msg = format!("cannot connect to {endpoint}: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            Failure::new(Exit::Unavailable, msg)
        })?;
    Ok(AdminClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}

fn read_client_file(p: &Path) -> Result<ClientFile, Failure> {
    let bad = |e: String| Failure::new(Exit::Usage, format!("{}: {e}", p.display()));
    let text = std::fs::read_to_string(p).map_err(|e| bad(e.to_string()))?;
    yaml_serde::from_str(&text).map_err(|e| bad(e.to_string()))
}

fn default_client_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/provisioner/admin.yaml"))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let text = serde_json::to_string_pretty(v)
        .map_err(|e| Failure::new(Exit::Failed, format!("cannot print: {e}")))?;
    println!("{text}");
    Ok(())
}

fn ms_to_time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    rfc3339(time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).ok())
        .unwrap_or_else(|| ms.to_string())
}

fn rfc3339(t: Option<time::OffsetDateTime>) -> Option<String> {
    t?.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_BORDERS_ONLY);
    t.set_header(header.iter().copied());
    t
}

async fn execute(a: AdminArgs) -> Result<Exit, Failure> {
    let mut client = connect(&a).await?;
    let json = a.json;
    let members_only = matches!(a.command, AdminCmd::Members);
    let drain = matches!(a.command, AdminCmd::Drain { .. });
    let drain_wait = match &a.command {
        AdminCmd::Drain { wait, .. } => *wait,
        _ => None,
    };
    let pause = matches!(a.command, AdminCmd::Pause);
    match a.command {
        AdminCmd::Status | AdminCmd::Members => {
            let s = client.status(pb::StatusRequest {}).await?.into_inner();
            if json {
                print_json(&s)?;
                return Ok(Exit::Ok);
            }
            if !members_only {
                println!(
                    "cluster {}  leader {} (id {})  term {}  paused {}  answered by {} (v{})",
                    s.cluster,
                    if s.leader.is_empty() { "-" } else { &s.leader },
                    s.leader_id,
                    s.term,
                    s.paused,
                    s.answered_by,
                    s.version
                );
            }
            // status shows the work, members how to reach each member
            let mut t = if members_only {
                table(&[
                    "ID",
                    "NAME",
                    "ROLE",
                    "VOTER",
                    "HEALTHY",
                    "TERM",
                    "APPLIED",
                    "RAFT ADDR",
                    "ADMIN ADDR",
                    "ERROR",
                ])
            } else {
                table(&[
                    "ID",
                    "NAME",
                    "ROLE",
                    "VOTER",
                    "HEALTHY",
                    "LIVE",
                    "DRAINING",
                    "PAUSED",
                    "APPLIED",
                    "OWNED",
                    "QUEUED",
                    "IN FLIGHT",
                    "RETRY",
                ])
            };
            for m in &s.members {
                let mut row = vec![
                    m.id.to_string(),
                    m.name.clone(),
                    m.role.clone(),
                    yes(m.voter),
                    yes(m.healthy),
                ];
                if members_only {
                    row.extend([
                        m.term.to_string(),
                        m.last_applied.to_string(),
                        m.raft_addr.clone(),
                        m.admin_addr.clone(),
                        m.error.clone(),
                    ]);
                } else {
                    row.extend([
                        yes(m.live),
                        if m.drained {
                            "done".to_string()
                        } else {
                            yes(m.draining)
                        },
                        yes(m.paused),
                        m.last_applied.to_string(),
                        m.owned.to_string(),
                        m.queued.to_string(),
                        m.in_flight.to_string(),
                        m.waiting_retry.to_string(),
                    ]);
                }
                t.add_row(row);
            }
            println!("{t}");
            if !members_only {
                let mut states: Vec<_> = s.ledger_by_state.iter().collect();
                states.sort();
                let line: Vec<String> = states.iter().map(|(k, v)| format!("{k} {v}")).collect();
                println!(
                    "ledger: {} records ({}); {} revoked credentials",
                    s.ledger_records,
                    line.join(", "),
                    s.revoked_credentials
                );
                let digests: std::collections::BTreeSet<&str> = s
                    .members
                    .iter()
                    .filter(|m| !m.ledger_digest.is_empty())
                    .map(|m| m.ledger_digest.as_str())
                    .collect();
                if digests.len() > 1 {
                    println!("note: members' ledgers differ right now (replication in progress or a member behind)");
                }
            }
        }
        AdminCmd::AddMember {
            id,
            name,
            raft_addr,
            admin_addr,
        } => {
            let r = client
                .add_member(pb::AddMemberRequest {
                    id,
                    name,
                    raft_addr,
                    admin_addr,
                })
                .await?
                .into_inner();
            membership(&r, json)?;
        }
        AdminCmd::Promote { id } => {
            let r = client
                .promote(pb::PromoteRequest { id })
                .await?
                .into_inner();
            membership(&r, json)?;
        }
        AdminCmd::RemoveMember { id, force } => {
            let r = client
                .remove_member(pb::RemoveMemberRequest { id, force })
                .await?
                .into_inner();
            membership(&r, json)?;
        }
        AdminCmd::Drain { member, .. } | AdminCmd::Undrain { member } => {
            let r = client
                .drain(pb::DrainRequest {
                    member: member.clone(),
                    drain,
                })
                .await?
                .into_inner();
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{member} {}; draining now: {}",
                    if drain {
                        "drains"
                    } else {
                        "takes servers again"
                    },
                    if r.draining.is_empty() {
                        "none".to_string()
                    } else {
                        r.draining.join(", ")
                    }
                );
            }
            if let Some(limit) = drain_wait {
                return wait_drained(&mut client, &member, limit, json).await;
            }
        }
        AdminCmd::Rebalance => {
            let r = client
                .rebalance(pb::RebalanceRequest {})
                .await?
                .into_inner();
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "released {} claims; live members: {}",
                    r.released,
                    r.live_members.join(", ")
                );
            }
        }
        AdminCmd::Pause | AdminCmd::Resume => {
            let r = client
                .set_paused(pb::PauseRequest { paused: pause })
                .await?
                .into_inner();
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "provisioning {}",
                    if r.paused { "paused" } else { "running" }
                );
            }
        }
        AdminCmd::Reprovision {
            identities,
            select,
            all,
            batch,
            rate,
            wait,
            dry_run,
        } => {
            let req = pb::ReprovisionRequest {
                selector: Some(select.selector(identities, all)),
                batch_size: batch,
                rate_per_second: rate,
                timeout_seconds: wait,
                dry_run,
            };
            return reprovision(&mut client, req, json).await;
        }
        AdminCmd::Ledger {
            command:
                LedgerCmd::List {
                    select,
                    owner,
                    page_size,
                    page_token,
                },
        } => {
            let r = client
                .list_ledger(pb::ListLedgerRequest {
                    selector: Some(select.selector(vec![], false)),
                    page_size,
                    page_token,
                    owner,
                })
                .await?
                .into_inner();
            if json {
                print_json(&r)?;
                return Ok(Exit::Ok);
            }
            let mut t = table(&[
                "IDENTITY",
                "STATE",
                "OWNER",
                "ATTEMPTS",
                "SERIAL",
                "ISSUED BY",
                "UPDATED",
                "LAST ERROR",
            ]);
            for rec in &r.records {
                t.add_row(vec![
                    rec.identity.clone(),
                    rec.state.clone(),
                    rec.owner.clone(),
                    rec.attempts.to_string(),
                    rec.credential
                        .as_ref()
                        .map(|c| c.serial.clone())
                        .unwrap_or_default(),
                    rec.credential
                        .as_ref()
                        .map(|c| c.issued_by.clone())
                        .unwrap_or_default(),
                    ms_to_time(rec.updated_ms),
                    rec.last_error.clone(),
                ]);
            }
            println!("{t}");
            println!(
                "{} of {} matching records{}",
                r.records.len(),
                r.matched,
                if r.next_page_token.is_empty() {
                    String::new()
                } else {
                    format!("; next page: --page-token {}", r.next_page_token)
                }
            );
        }
        AdminCmd::Ledger {
            command: LedgerCmd::Show { identity },
        } => {
            let r = client
                .get_record(pb::GetRecordRequest { identity })
                .await?
                .into_inner();
            if json {
                print_json(&r)?;
                return Ok(Exit::Ok);
            }
            show_record(&r);
        }
        AdminCmd::Ledger {
            command: LedgerCmd::Export { select, out },
        } => {
            let mut stream = client
                .export_ledger(pb::ExportLedgerRequest {
                    selector: Some(select.selector(vec![], false)),
                })
                .await?
                .into_inner();
            let mut sink: Box<dyn Write> = match &out {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", p.display())))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut n = 0u64;
            while let Some(line) = stream.message().await? {
                writeln!(sink, "{}", line.json)
                    .map_err(|e| Failure::new(Exit::Failed, format!("write: {e}")))?;
                n += 1;
            }
            sink.flush()
                .map_err(|e| Failure::new(Exit::Failed, format!("write: {e}")))?;
            if let Some(p) = out {
                eprintln!("exported {n} records to {}", p.display());
            }
        }
        AdminCmd::Ledger {
            command:
                LedgerCmd::Import {
                    file,
                    batch,
                    parallel,
                },
        } => return super::import_file::run(&mut client, &file, batch, parallel, json).await,
        AdminCmd::Snapshot => {
            let r = client.snapshot(pb::SnapshotRequest {}).await?.into_inner();
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "{} built a snapshot at log index {}: {} records, {} bytes, {} ms",
                    r.member, r.index, r.records, r.bytes, r.took_ms
                );
            }
        }
        AdminCmd::Backup { name } => {
            let r = client
                .backup(pb::BackupRequest { name })
                .await?
                .into_inner();
            if json {
                print_json(&r)?;
            } else {
                println!(
                    "backup of {} in {} on its host: ledger at log index {}, {} records, {} bytes",
                    r.member, r.path, r.last_applied, r.records, r.bytes
                );
            }
        }
        AdminCmd::Revoke { identity, reason } => {
            let r = client
                .revoke(pb::RevokeRequest {
                    identity: identity.clone(),
                    reason,
                })
                .await?
                .into_inner();
            if json {
                print_json(&r)?;
            } else {
                println!("revoked {identity}'s credential, serial {}", r.serial);
            }
        }
    }
    Ok(Exit::Ok)
}

/// Polls `status` until `member` is drained (its flows ended, it starts none), for at most
/// `limit`: what an operator waits for before stopping it.
async fn wait_drained(
    client: &mut AdminClient<Channel>,
    member: &str,
    limit: std::time::Duration,
    json: bool,
) -> Result<Exit, Failure> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        let s = client.status(pb::StatusRequest {}).await?.into_inner();
        let Some(m) = s.members.iter().find(|m| m.name == member) else {
            eprintln!("{member} is not in the status reply");
            return Ok(Exit::Failed);
        };
        if m.drained {
            if !json {
                println!("{member} drained: it holds no server");
            }
            return Ok(Exit::Ok);
        }
        if tokio::time::Instant::now() >= until {
            eprintln!(
                "{member} not drained after {limit:?}: it holds {} servers ({} in flight)",
                m.owned, m.in_flight
            );
            return Ok(Exit::Failed);
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn membership(r: &pb::MembershipReply, json: bool) -> Result<(), Failure> {
    if json {
        return print_json(r);
    }
    println!("{}", r.message);
    println!("voters: {:?}  learners: {:?}", r.voters, r.learners);
    Ok(())
}

fn show_record(r: &pb::Record) {
    println!("identity:      {}", r.identity);
    println!("state:         {}", r.state);
    if !r.owner.is_empty() {
        println!(
            "owner:         {} (lease until {})",
            r.owner,
            ms_to_time(r.lease_until_ms)
        );
    }
    println!("attempts:      {}", r.attempts);
    if let Some(c) = &r.credential {
        println!("serial:        {}", c.serial);
        println!("fingerprint:   {}", c.fingerprint);
        let exp = rfc3339(time::OffsetDateTime::from_unix_timestamp(c.not_after).ok())
            .unwrap_or_default();
        println!("expires:       {exp}");
        println!(
            "issued by:     {} at {}",
            c.issued_by,
            ms_to_time(c.issued_at_ms)
        );
    }
    if !r.last_error.is_empty() {
        println!("last error:    {}", r.last_error);
    }
    println!("first seen:    {}", ms_to_time(r.first_seen_ms));
    if !r.facts.is_empty() {
        let mut facts: Vec<_> = r.facts.iter().collect();
        facts.sort();
        let f: Vec<String> = facts.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("facts:         {}", f.join(" "));
    }
    if !r.revoked.is_empty() {
        let mut t = table(&["REVOKED SERIAL", "AT", "BY", "REASON"]);
        for v in &r.revoked {
            t.add_row(vec![
                v.serial.clone(),
                ms_to_time(v.revoked_at_ms),
                v.revoked_by.clone(),
                v.reason.clone(),
            ]);
        }
        println!("{t}");
    }
    let mut t = table(&["AT", "MEMBER", "EVENT"]);
    for h in &r.history {
        t.add_row(vec![ms_to_time(h.at_ms), h.member.clone(), h.event.clone()]);
    }
    println!("{t}");
}

async fn reprovision(
    client: &mut AdminClient<Channel>,
    req: pb::ReprovisionRequest,
    json: bool,
) -> Result<Exit, Failure> {
    let mut stream = client.reprovision(req).await?.into_inner();
    let bar = indicatif::ProgressBar::new(0);
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} reprovision [{bar:40}] {pos}/{len} {per_sec} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    }
    let mut results = Vec::new();
    while let Some(p) = stream.message().await? {
        bar.set_length(p.total);
        bar.set_position(p.done);
        if p.result != "ok" && p.result != "planned" {
            bar.set_message(format!("{} {}", p.identity, p.result));
        }
        results.push(p);
    }
    bar.finish_and_clear();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for r in &results {
        *counts.entry(r.result.clone()).or_default() += 1;
    }
    if json {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            results: &'a [pb::ReprovisionProgress],
            counts: &'a std::collections::BTreeMap<String, usize>,
        }
        print_json(&Out {
            results: &results,
            counts: &counts,
        })?;
    } else {
        let mut t = table(&["IDENTITY", "RESULT", "MESSAGE"]);
        results.sort_by(|a, b| a.identity.cmp(&b.identity));
        for r in &results {
            t.add_row(vec![
                r.identity.clone(),
                r.result.clone(),
                r.message.clone(),
            ]);
        }
        println!("{t}");
        let line: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{} servers: {}", results.len(), line.join(", "));
    }
    let failed = results
        .iter()
        .any(|r| r.result != "ok" && r.result != "planned");
    Ok(if failed { Exit::Partial } else { Exit::Ok })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_files_that_are_not_the_expected_yaml_are_usage_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("admin.yaml");
        for bad in [
            "endpoint: [unclosed",
            "nonsense_key: 1\n",
            "\u{0}\u{1}garbage",
            "- a\n- b\n",
        ] {
            std::fs::write(&p, bad).unwrap();
            let Err(err) = read_client_file(&p) else {
                panic!("garbage accepted: {bad:?}");
            };
            assert_eq!(err.exit, Exit::Usage, "{bad:?}");
            assert!(err.message.contains("admin.yaml"), "{}", err.message);
        }
        assert!(read_client_file(&dir.path().join("missing.yaml")).is_err());
        std::fs::write(&p, "endpoint: 10.0.0.1:7101\nca: /c/ca.pem\n").unwrap();
        let Ok(ok) = read_client_file(&p) else {
            panic!("a valid file was refused");
        };
        assert_eq!(ok.endpoint.as_deref(), Some("10.0.0.1:7101"));
    }
}
