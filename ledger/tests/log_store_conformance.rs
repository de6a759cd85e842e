//! openraft's log-store conformance suite run against [`ShardLogStore`] over a real
//! [`FileBackend`] in a temporary directory, so the fdatasync path is the one tested.
//!
//! The suite also needs a state machine; this file defines a minimal one (applied log id,
//! membership, snapshot as bytes). TODO(lead): switch to `crate::raft::state_store`'s real
//! state machine once it lands, so the suite covers both.

use std::io;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::Mutex;

use futures::Stream;
use futures::TryStreamExt;
use ledger::raft::types::LogId;
use ledger::raft::types::SnapshotMeta;
use ledger::raft::types::StoredMembership;
use ledger::raft::types::TypeConfig;
use ledger::state_machine::command::CommandReply;
use ledger::storage::FileBackend;
use ledger::storage::ShardLogStore;
use ledger::storage::Wal;
use ledger::storage::WalOptions;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::StorageError;
use openraft::alias::SnapshotOf;
use openraft::storage::EntryResponder;
use openraft::storage::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;

#[derive(Debug, Default)]
struct TestStateMachineData {
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<(SnapshotMeta, Vec<u8>)>,
}

/// Just enough of a state machine for the suite: it tracks what was applied, not the ledger.
#[derive(Debug, Clone, Default)]
struct TestStateMachine {
    data: Arc<Mutex<TestStateMachineData>>,
}

impl TestStateMachine {
    fn data(&self) -> std::sync::MutexGuard<'_, TestStateMachineData> {
        self.data.lock().expect("test state machine lock")
    }
}

fn encode_applied(data: &TestStateMachineData) -> io::Result<Vec<u8>> {
    bincode::serialize(&(data.applied, &data.membership)).map_err(io::Error::other)
}

impl RaftSnapshotBuilder<TypeConfig> for TestStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>, io::Error> {
        let mut data = self.data();
        let bytes = encode_applied(&data)?;
        let meta = SnapshotMeta {
            last_log_id: data.applied,
            last_membership: data.membership.clone(),
        };
        data.snapshot = Some((meta.clone(), bytes.clone()));
        Ok(SnapshotOf::<TypeConfig, _> {
            meta,
            snapshot: Cursor::new(bytes),
        })
    }
}

impl RaftStateMachine<TypeConfig> for TestStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let data = self.data();
        Ok((data.applied, data.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            {
                let mut data = self.data();
                data.applied = Some(entry.log_id);
                if let EntryPayload::Membership(membership) = &entry.payload {
                    data.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
                }
            }
            if let Some(responder) = responder {
                responder.send(CommandReply::default());
            }
        }
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.clone())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Cursor<Vec<u8>>) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let (applied, membership): (Option<LogId>, StoredMembership) =
            bincode::deserialize(&bytes).map_err(io::Error::other)?;
        let mut data = self.data();
        data.applied = applied;
        data.membership = membership;
        data.snapshot = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<TypeConfig, Cursor<Vec<u8>>>>, io::Error> {
        let data = self.data();
        Ok(data.snapshot.as_ref().map(|(meta, bytes)| SnapshotOf::<TypeConfig, _> {
            meta: meta.clone(),
            snapshot: Cursor::new(bytes.clone()),
        }))
    }
}

/// Each build gets a fresh directory; the guard keeps it alive for the test's duration.
struct FileWalBuilder;

impl StoreBuilder<TypeConfig, ShardLogStore, TestStateMachine, tempfile::TempDir> for FileWalBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, ShardLogStore, TestStateMachine), StorageError<TypeConfig>> {
        let io_error = |e: io::Error| StorageError::read(TypeConfig::err_from_error(&e));
        let directory = tempfile::tempdir().map_err(io_error)?;
        let backend = FileBackend::open(directory.path()).map_err(io_error)?;
        let wal = Wal::open(backend, WalOptions::default()).map_err(|e| io_error(e.into()))?;
        Ok((directory, wal.log_store(1), TestStateMachine::default()))
    }
}

#[test]
fn shard_log_store_passes_the_openraft_suite_over_files() -> Result<(), StorageError<TypeConfig>> {
    TypeConfig::run(async { Suite::test_all(FileWalBuilder).await })
}
