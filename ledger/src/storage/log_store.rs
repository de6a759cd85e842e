//! openraft's log storage for one shard, over the node's shared [`Wal`].
//!
//! Invariants:
//! - Appended entries are readable as soon as `append` returns; its `IOFlushed` callback fires
//!   only once an fdatasync covers them.
//! - `save_vote` returns only once the vote is durable, and readers see a vote only then.
//! - `truncate_after`, `purge` and `save_committed` are queued in order behind earlier writes
//!   and made durable by the next fdatasync. Losing one in a crash returns the log to a state
//!   it durably had before, which Raft tolerates (the next append's callback covers them).
//! - The store is the only writer of its shard; readers are clones of it.

use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;

use openraft::OptionalSend;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::LogState;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;

use crate::storage::record;
use crate::storage::record::Record;
use crate::storage::wal::Completion;
use crate::storage::wal::Effect;
use crate::storage::wal::ShardState;
use crate::storage::wal::Wal;
use crate::storage::wal::WalError;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::ShardId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Frees `value` off the caller's thread: purged log entries are hundreds of thousands of small
/// allocations, and the Raft core that purges would stall for tens of milliseconds. The simulator
/// frees inline (no real threads there).
fn drop_elsewhere<T: Send + 'static>(value: T) {
    // If no thread can be had, the failed spawn drops the value right here: freed either way.
    #[cfg(not(madsim))]
    let _ = std::thread::Builder::new()
        .name("log-purge".into())
        .spawn(move || drop(value));
    #[cfg(madsim)]
    drop(value);
}

/// One shard's Raft log and vote. Cloning gives a reader of the same log.
#[derive(Clone)]
pub struct ShardLogStore {
    wal: Arc<Wal>,
    shard: ShardId,
    state: Arc<Mutex<ShardState>>,
}

fn lock(state: &Mutex<ShardState>) -> MutexGuard<'_, ShardState> {
    // A poisoned lock means a panic mid-update of the log: a bug, never a state to continue from.
    state.lock().expect("shard log lock poisoned")
}

impl ShardLogStore {
    pub(crate) fn new(wal: Arc<Wal>, shard: ShardId, state: Arc<Mutex<ShardState>>) -> Self {
        Self { wal, shard, state }
    }

    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

impl RaftLogReader<TypeConfig> for ShardLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        Ok(lock(&self.state)
            .entries
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(lock(&self.state).vote)
    }
}

impl RaftLogStorage<TypeConfig> for ShardLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = lock(&self.state);
        let last_log_id = state
            .entries
            .values()
            .next_back()
            .map(|entry| entry.log_id())
            .or(state.last_purged);
        Ok(LogState {
            last_purged_log_id: state.last_purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let durable = self
            .wal
            .write_and_notify(&Record::SaveVote {
                shard: self.shard,
                vote: *vote,
            })
            .await?;
        durable.await.map_err(|_| io::Error::from(WalError::Closed))??;
        lock(&self.state).vote = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        self.wal
            .write(&Record::SaveCommitted {
                shard: self.shard,
                committed,
            })
            .await?;
        lock(&self.state).committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(lock(&self.state).committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let (bytes, effect) = match (entries.first(), entries.last()) {
            (Some(first), Some(last)) => {
                let bytes = record::encode_append(self.shard, &entries)
                    .map_err(|e| io::Error::from(WalError::Encode(e.to_string())))?;
                (
                    bytes,
                    Effect::Append {
                        shard: self.shard,
                        first: first.index(),
                        last: last.index(),
                    },
                )
            }
            // Nothing to write, but the callback must still follow every earlier write.
            _ => (Vec::new(), Effect::Nothing),
        };
        let admission = self.wal.admit(bytes.len()).await?;
        lock(&self.state)
            .append(entries)
            .map_err(|reason| io::Error::from(WalError::Invariant(reason)))?;
        self.wal
            .submit(bytes, effect, Completion::Flushed(callback), admission)?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        self.wal
            .write(&Record::TruncateAfter {
                shard: self.shard,
                last_kept: last_log_id,
            })
            .await?;
        lock(&self.state).truncate_after(last_log_id);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        self.wal
            .write(&Record::Purge {
                shard: self.shard,
                upto: log_id,
            })
            .await?;
        let purged = lock(&self.state).purge(log_id);
        drop_elsewhere(purged);
        Ok(())
    }
}
