//! `provisioner admin ...`: the operator CLI on the admin API.
//!
//! Connection settings come from flags, else `PROVISIONER_ADMIN_*` environment variables,
//! else a client file (`--client-config`, default `~/.config/provisioner/admin.yaml`;
//! [`connect`]). Output is a table, or the reply as JSON with `--json` ([`render`]). Exit
//! codes are stable for scripts; see [`Exit`].
//!
//! One module per group of commands: [`status`] (status, members), [`members`] (add-member,
//! promote, remove-member), [`control`] (drain, undrain, rebalance, pause, resume),
//! [`reprovision`], [`ledger`] (ledger list, show, export; revoke) and [`store`] (snapshot,
//! backup). `ledger import` is [`super::import_file`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use proto::grpc::admin as pb;
use proto::grpc::admin::admin_client::AdminClient;
use tonic::transport::Channel;
use tonic::Code;

mod connect;
mod control;
mod ledger;
mod members;
mod render;
mod reprovision;
mod status;
mod store;

pub(super) use render::{Outcome, Render};

/// The admin API's client, as every command uses it.
pub(super) type Client = AdminClient<Channel>;

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
    pub(super) fn selector(&self, identities: Vec<String>, all: bool) -> pb::Selector {
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

/// Runs the command: one call (or stream) to the admin API, its reply printed once.
async fn execute(a: AdminArgs) -> Result<Exit, Failure> {
    let mut client = connect::connect(&a).await?;
    let c = &mut client;
    let json = a.json;
    let outcome = match a.command {
        AdminCmd::Status => status::status(c, false).await?,
        AdminCmd::Members => status::status(c, true).await?,
        AdminCmd::AddMember {
            id,
            name,
            raft_addr,
            admin_addr,
        } => members::add(c, id, name, raft_addr, admin_addr).await?,
        AdminCmd::Promote { id } => members::promote(c, id).await?,
        AdminCmd::RemoveMember { id, force } => members::remove(c, id, force).await?,
        AdminCmd::Drain { member, wait } => control::drain(c, member, true, wait, json).await?,
        AdminCmd::Undrain { member } => control::drain(c, member, false, None, json).await?,
        AdminCmd::Rebalance => control::rebalance(c).await?,
        AdminCmd::Pause => control::pause(c, true).await?,
        AdminCmd::Resume => control::pause(c, false).await?,
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
            reprovision::run(c, req, json).await?
        }
        AdminCmd::Ledger { command } => match command {
            LedgerCmd::List {
                select,
                owner,
                page_size,
                page_token,
            } => ledger::list(c, select, owner, page_size, page_token).await?,
            LedgerCmd::Show { identity } => ledger::show(c, identity).await?,
            LedgerCmd::Export { select, out } => ledger::export(c, select, out).await?,
            LedgerCmd::Import {
                file,
                batch,
                parallel,
            } => super::import_file::run(c, &file, batch, parallel, json).await?,
        },
        AdminCmd::Snapshot => store::snapshot(c).await?,
        AdminCmd::Backup { name } => store::backup(c, name).await?,
        AdminCmd::Revoke { identity, reason } => ledger::revoke(c, identity, reason).await?,
    };
    outcome.print(json)
}

#[cfg(test)]
mod pinned;
