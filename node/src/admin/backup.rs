//! Online backups of a member: a RocksDB checkpoint of its store (Raft log, vote and ledger)
//! under `data_dir/backups/NAME`, made while the member keeps running, then opened once to
//! read what it holds, so a backup that cannot be read is an error at once and not at restore.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::member::RaftMember;
use raft::store::Store;
use tonic::Status;

use crate::clock::now_ms;

/// What a backup holds, as written to `NAME/backup.json` and returned to the operator.
#[derive(Debug, serde::Serialize)]
pub struct Manifest {
    pub member: String,
    pub member_id: u64,
    pub made_at_ms: u64,
    pub last_applied: u64,
    pub records: u64,
    pub bytes: u64,
}

/// A name for a backup directory: letters, digits, `.`, `_`, `-`; not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn default_name() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "backup-{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Makes the backup `name` (default `backup-<UTC time>`) of `member` under `data_dir/backups`.
pub async fn make(
    member: Arc<RaftMember>,
    data_dir: PathBuf,
    name: String,
) -> Result<(PathBuf, Manifest), Status> {
    let name = if name.is_empty() {
        default_name()
    } else {
        name
    };
    if !valid_name(&name) {
        return Err(Status::invalid_argument(format!(
            "{name:?} is not a backup name: letters, digits, '.', '_' and '-', not starting with '.'"
        )));
    }
    let dir = data_dir.join("backups").join(&name);
    if dir.exists() {
        return Err(Status::already_exists(format!("{} exists", dir.display())));
    }
    // checkpoints flush and hard-link files: blocking work, off the async threads
    let store_dir = dir.join("raft");
    let (m, d, top) = (member.clone(), store_dir.clone(), dir.clone());
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&top)
            .map_err(|e| Status::internal(format!("{}: {e}", top.display())))?;
        m.checkpoint(&d)
            .map_err(|e| Status::internal(format!("checkpoint: {e}")))
    })
    .await
    .map_err(|e| Status::internal(format!("backup task: {e}")))??;

    // the copy, opened as a store, says what it holds
    let (last_applied, records) = {
        let copy = Store::open(&store_dir)
            .map_err(|e| Status::internal(format!("the backup does not open as a store: {e}")))?;
        let sm = copy.state().await;
        (
            sm.last_applied.map(|l| l.index).unwrap_or(0),
            sm.ledger.len() as u64,
        )
    };
    let manifest = Manifest {
        member: member.me.name.clone(),
        member_id: member.id,
        made_at_ms: now_ms(),
        last_applied,
        records,
        bytes: size(&store_dir),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Status::internal(format!("manifest: {e}")))?;
    std::fs::write(dir.join("backup.json"), json)
        .map_err(|e| Status::internal(format!("manifest: {e}")))?;
    Ok((dir, manifest))
}

/// Bytes in the files under `dir` and its directories (the log's segments are in `log/`).
fn size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.path(), e.metadata().ok()?)))
        .map(|(path, m)| if m.is_dir() { size(&path) } else { m.len() })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::valid_name;

    #[test]
    fn backup_names_stay_in_the_backups_directory() {
        for ok in ["backup-20261126T120000Z", "before-upgrade.1", "a_b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "../etc",
            "a b",
            &"x".repeat(101),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
