//! openraft's log-store conformance suite run against [`ShardLogStore`] over a real
//! [`FileBackend`] in a temporary directory, so the fdatasync path is the one tested.
//!
//! The suite also drives the state machine: it is the real one, [`ShardStateMachine`] saving its
//! snapshots as files in the same temporary directory, so the suite covers both halves of a
//! replica's storage.

#![cfg(not(madsim))]

use std::io;
use std::sync::Arc;

use ledger::applied::AppliedStore;
use ledger::applied::FileSnapshots;
use ledger::raft::state_store::ShardLog;
use ledger::raft::state_store::ShardStateMachine;
use ledger::storage::FileBackend;
use ledger::storage::ShardLogStore;
use ledger::storage::Wal;
use ledger::storage::WalOptions;
use ledger::types::TypeConfig;
use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;

struct FileWalBuilder;

impl StoreBuilder<TypeConfig, ShardLogStore, ShardStateMachine, tempfile::TempDir> for FileWalBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, ShardLogStore, ShardStateMachine), StorageError<TypeConfig>> {
        let io_error = |e: io::Error| StorageError::read(TypeConfig::err_from_error(&e));
        let directory = tempfile::tempdir().map_err(io_error)?;
        let backend = FileBackend::open(directory.path()).map_err(io_error)?;
        let wal = Wal::open(backend, WalOptions::default()).map_err(|e| io_error(e.into()))?;
        let snapshots = FileSnapshots::open(&directory.path().join("snapshots"), 1).map_err(|e| io_error(e.into()))?;
        let log_store = wal.log_store(1);
        let log = ShardLog { wal };
        let state_machine =
            ShardStateMachine::open(1, AppliedStore::new(Arc::new(snapshots)), log).map_err(io_error)?;
        Ok((directory, log_store, state_machine))
    }
}

#[test]
fn shard_log_store_passes_the_openraft_suite_over_files() -> Result<(), StorageError<TypeConfig>> {
    TypeConfig::run(async { Suite::test_all(FileWalBuilder).await })
}
