//! [`ShardStateMachine`]: openraft's state machine for one shard — applies committed entries
//! to the in-memory [`LedgerState`], builds, saves and installs snapshots (the only applied
//! state on disk, see `crate::applied`), and publishes stock changes to Watch subscribers.
//!
//! The state is shared with the gRPC layer through [`ShardView`] (reads take a read lock; apply
//! takes the write lock once per batch of entries). If the ledger invariant ever breaks, the view
//! is marked halted, apply returns an error (openraft then stops this shard's Raft node), and
//! status reports it: a replica never continues from a broken ledger.

use std::io;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use futures::Stream;
use futures::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::entry::RaftEntry;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use tokio::sync::broadcast;

use crate::applied::AppliedStore;
use crate::applied::AppliedStoreError;
use crate::applied::ShardImage;
use crate::applied::StoredSnapshot;
use crate::applied::decode_image;
use crate::applied::encode_image;
use crate::raft::types::LogId;
use crate::raft::types::ShardId;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;
use crate::raft::types::TypeConfig;
use crate::state_machine::command::CommandBody;
use crate::state_machine::command::CommandReply;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Sku;
use crate::state_machine::state::Changes;
use crate::state_machine::state::InvariantViolation;
use crate::state_machine::state::StockCounts;

/// How many stock changes a slow Watch subscriber may lag before it is cut off (it resumes
/// from the last index it saw).
pub const WATCH_BUFFER_CHANGES_MAX: usize = 8192;

/// One SKU's counts after an applied entry, as Watch streams them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    pub sku: Sku,
    pub counts: StockCounts,
    pub log_index: u64,
}

/// The applied state of one shard as the rest of the node sees it.
pub struct ShardView {
    pub shard_id: ShardId,
    state: RwLock<ShardImage>,
    halted: Mutex<Option<InvariantViolation>>,
    changes: broadcast::Sender<StockChange>,
    /// Operations applied since the state the latest snapshot was taken from (see
    /// `node::trigger_snapshots`). Changed only under the state lock.
    ops_since_snapshot: AtomicU64,
}

impl ShardView {
    fn new(shard_id: ShardId, image: ShardImage) -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER_CHANGES_MAX);
        ShardView {
            shard_id,
            state: RwLock::new(image),
            halted: Mutex::new(None),
            changes,
            ops_since_snapshot: AtomicU64::new(0),
        }
    }

    /// Runs `read` against the current applied state.
    pub fn read<T>(&self, read: impl FnOnce(&ShardImage) -> T) -> T {
        let guard = self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        read(&guard)
    }

    /// The applied log index (0 before anything was applied).
    pub fn applied_index(&self) -> u64 {
        self.read(|image| image.meta.applied.map(|id| id.index).unwrap_or(0))
    }

    /// Operations applied since the latest snapshot's state.
    pub fn ops_since_snapshot(&self) -> u64 {
        self.ops_since_snapshot.load(Ordering::Relaxed)
    }

    /// The invariant violation that stopped this replica, if any.
    pub fn halted(&self) -> Option<InvariantViolation> {
        self.halted.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Live stock changes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StockChange> {
        self.changes.subscribe()
    }

    fn publish(&self, image: &ShardImage, changes: &Changes, log_index: u64) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        for sku in &changes.skus {
            if let Some(counts) = image.ledger.stock(sku) {
                // A send error only means every subscriber left meanwhile.
                let _ = self.changes.send(StockChange {
                    sku: sku.clone(),
                    counts,
                    log_index,
                });
            }
        }
    }
}

/// openraft's handle on one shard's state machine. Cheap to clone (it is also the snapshot
/// builder).
#[derive(Clone)]
pub struct ShardStateMachine {
    view: Arc<ShardView>,
    store: AppliedStore,
    /// The node's WAL, durable up to a snapshot before the snapshot is saved.
    log: Option<Arc<crate::storage::wal::Wal>>,
}

impl ShardStateMachine {
    /// Starts from the shard's latest snapshot in `store` (or the empty state).
    pub fn open(shard_id: ShardId, store: AppliedStore) -> Result<Self, io::Error> {
        let image = store.load()?;
        Ok(ShardStateMachine {
            view: Arc::new(ShardView::new(shard_id, image)),
            store,
            log: None,
        })
    }

    /// Makes a snapshot wait until `wal` holds every entry it covers durably before it is
    /// saved. openraft may apply a committed entry whose local append is still queued; saved
    /// applied state ahead of the local log would, after a crash, leave a log whose tail
    /// conflicts with what was applied, and the node could not start (found by the simulator,
    /// seeds 5403 and 9239, when applied state was persisted on every apply).
    pub fn with_log_barrier(mut self, wal: Arc<crate::storage::wal::Wal>) -> Self {
        self.log = Some(wal);
        self
    }

    pub fn view(&self) -> Arc<ShardView> {
        self.view.clone()
    }

    fn halt(&self, violation: InvariantViolation) -> io::Error {
        tracing::error!(shard = self.view.shard_id, %violation, "LEDGER INVARIANT VIOLATED: this replica stops applying");
        *self.view.halted.lock().unwrap_or_else(|p| p.into_inner()) = Some(violation.clone());
        io::Error::other(violation.to_string())
    }
}

impl RaftStateMachine<TypeConfig> for ShardStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(self
            .view
            .read(|image| (image.meta.applied, image.meta.membership.clone())))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(shard = self.view.shard_id))]
    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        if let Some(violation) = self.view.halted() {
            return Err(io::Error::other(violation.to_string()));
        }
        let mut all_changes = Changes::default();
        let mut replies = Vec::new();
        let mut last_index = 0;
        let mut applied_ops = 0u64;
        // Drain the stream first: the state lock must not be held across an await.
        let mut batch = Vec::new();
        while let Some(entry_and_responder) = entries.try_next().await? {
            batch.push(entry_and_responder);
        }
        {
            let mut image = self.view.state.write().unwrap_or_else(|p| p.into_inner());
            for (entry, responder) in batch {
                let log_id = entry.log_id();
                applied_ops += match &entry.payload {
                    EntryPayload::Normal(LogCommand {
                        body: CommandBody::Batch(operations),
                        ..
                    }) => operations.len().max(1) as u64,
                    _ => 1,
                };
                let reply = match entry.payload {
                    EntryPayload::Blank => CommandReply::default(),
                    EntryPayload::Normal(ref command) => {
                        let (outcomes, changes) = image
                            .ledger
                            .apply(log_id.index, command)
                            .map_err(|violation| self.halt(violation))?;
                        all_changes.merge(changes);
                        CommandReply { outcomes }
                    }
                    EntryPayload::Membership(ref membership) => {
                        image.meta.membership = StoredMembership::new(Some(log_id), membership.clone());
                        CommandReply::default()
                    }
                };
                image.meta.applied = Some(log_id);
                last_index = log_id.index;
                if let Some(responder) = responder {
                    replies.push((responder, reply));
                }
            }
            self.view.ops_since_snapshot.fetch_add(applied_ops, Ordering::Relaxed);
            self.view.publish(&image, &all_changes, last_index);
        }
        // Answer after the lock is released; the entries are already durable in the Raft log.
        for (responder, reply) in replies {
            responder.send(reply);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Self::SnapshotData) -> Result<(), io::Error> {
        let data = snapshot.into_inner();
        let image = decode_image(&data)?;
        image.ledger.check_all().map_err(|violation| self.halt(violation))?;
        let store = self.store.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        run_blocking(move || store.save_snapshot(&stored)).await?;
        tracing::info!(shard = self.view.shard_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        let mut state = self.view.state.write().unwrap_or_else(|p| p.into_inner());
        *state = image;
        self.view.ops_since_snapshot.store(0, Ordering::Relaxed);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>>, io::Error> {
        Ok(self.store.load_snapshot()?.map(|stored| openraft::Snapshot {
            meta: stored.meta,
            snapshot: Cursor::new(stored.data),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(
        &mut self,
    ) -> Result<openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>, io::Error> {
        // Apply waits only for this copy (it holds the write lock per batch); encoding and
        // writing the snapshot happen on a blocking thread while the shard keeps applying.
        let (image, ops_covered) = self
            .view
            .read(|image| (image.clone(), self.view.ops_since_snapshot.swap(0, Ordering::Relaxed)));
        let meta = SnapshotMeta {
            last_log_id: image.meta.applied,
            last_membership: image.meta.membership.clone(),
        };
        // The log may be purged up to this snapshot once this returns: it must be durable.
        let store = self.store.clone();
        let snapshot_meta = meta.clone();
        let log = self.log.clone();
        let saved = async move {
            if let Some(log) = log {
                log.wait_durable().await.map_err(io::Error::from)?;
            }
            run_blocking(move || {
                let stored = StoredSnapshot {
                    meta: snapshot_meta,
                    data: encode_image(&image)?,
                };
                store.save_snapshot(&stored)?;
                Ok(stored.data)
            })
            .await
        };
        let data = match saved.await {
            Ok(data) => data,
            Err(error) => {
                // Not saved: the operations it covered still count toward the next one.
                self.view.ops_since_snapshot.fetch_add(ops_covered, Ordering::Relaxed);
                return Err(error);
            }
        };
        tracing::info!(shard = self.view.shard_id, last_log_id = ?meta.last_log_id, bytes = data.len(), "built snapshot");
        Ok(openraft::Snapshot {
            meta,
            snapshot: Cursor::new(data),
        })
    }
}

/// Runs blocking snapshot work (encoding, file writes, fdatasync) off the async workers. The
/// simulator runs it inline: its disk is memory and its scheduler must stay deterministic.
async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, AppliedStoreError> + Send + 'static,
) -> Result<T, io::Error> {
    #[cfg(not(madsim))]
    let result = tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io::Error::other(format!("snapshot task: {e}")))?;
    #[cfg(madsim)]
    let result = work();
    result.map_err(io::Error::from)
}
