//! openraft's two storage halves over one [`Store`]: the log and vote ([`LogStore`]) and the
//! ledger state machine with its snapshots ([`StateMachineStore`]).
//!
//! openraft 0.9 drives them separately (its v2 storage API): the log from Raft's core, the
//! state machine from a worker of its own, so a synced log append no longer waits for an apply
//! to end or the other way round, as both did behind the one lock of the v1 `Adaptor`. Both
//! halves share the RocksDB instance and the entries kept in memory; what each call does is
//! written once, in [`Store`].

#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, LogId, OptionalSend, RaftLogReader, SnapshotMeta, StorageError, StoredMembership, Vote,
};

use crate::snapshot_file::SnapshotFile;
use crate::store::Store;
use crate::types::{BatchResult, Member, NodeId, TypeConfig};

type StoreResult<T> = Result<T, StorageError<NodeId>>;

/// The Raft log and vote of a member.
#[derive(Clone)]
pub struct LogStore(Arc<Store>);

/// The ledger state machine of a member, and its snapshots.
#[derive(Clone)]
pub struct StateMachineStore(Arc<Store>);

/// The two halves openraft is started with, over `store`.
pub fn split(store: Arc<Store>) -> (LogStore, StateMachineStore) {
    (LogStore(store.clone()), StateMachineStore(store))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        self.0.log_entries(range)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        self.0.get_log_state()
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        self.0.save_vote(vote)
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.0.read_vote()
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // the append is synced before it returns: flushed as soon as it is readable
        self.0.append_to_log(entries)?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.0.delete_conflict_logs_since(log_id)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        self.0.purge_logs_upto(log_id)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Arc<Store>;

    async fn applied_state(
        &mut self,
    ) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        self.0.last_applied_state().await
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<BatchResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        self.0.apply_to_state_machine(&entries).await
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.0.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<SnapshotFile>> {
        self.0.begin_receiving_snapshot()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<SnapshotFile>,
    ) -> StoreResult<()> {
        self.0.install_snapshot(meta, snapshot).await
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        self.0.get_current_snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(&self) -> StoreResult<(tempfile::TempDir, LogStore, StateMachineStore)> {
            let dir = tempfile::tempdir().map_err(|e| {
                StorageError::from(openraft::StorageIOError::write_logs(
                    openraft::AnyError::new(&e),
                ))
            })?;
            let (log, sm) = split(Store::open(dir.path())?);
            Ok((dir, log, sm))
        }
    }

    /// openraft's own conformance suite for storage implementations, on the two halves
    /// openraft is started with.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
