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
use std::sync::atomic::AtomicBool;
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
use crate::applied::FrozenImage;
use crate::applied::ShardImage;
use crate::applied::decode_image;
use crate::metrics::instruments::ShardInstruments;
use crate::state_machine::command::CommandBody;
use crate::state_machine::command::CommandReply;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Outcome;
use crate::state_machine::command::Sku;
use crate::state_machine::state::Changes;
use crate::state_machine::state::InvariantViolation;
use crate::state_machine::state::StockCounts;
use crate::storage::wal::Wal;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::ShardId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;
use crate::types::TypeConfig;

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
    /// `node::tasks::trigger_snapshots`). Changed only under the state lock.
    ops_since_snapshot: AtomicU64,
    /// `LedgerState::records` of the latest snapshot's state (or of the state loaded at start).
    snapshot_records: AtomicU64,
    /// Set by the snapshot trigger when a snapshot is badly overdue: then it is built at normal
    /// CPU priority.
    snapshot_overdue: AtomicBool,
    /// Held while a snapshot is built or installed: a snapshot is built from the latest one, which
    /// must not be replaced meanwhile.
    snapshot_lock: tokio::sync::Mutex<()>,
    /// What this replica applied and snapshotted, for /metrics.
    pub instruments: ShardInstruments,
    /// Operations applied per SKU since the placement scheduler last took them (see
    /// [`ShardView::take_load`]); counted only once it asked, on the meta leader.
    load: Mutex<Option<AppliedLoad>>,
    /// Whether `load` counts: checked without the lock, so that applying pays nothing while
    /// no scheduler asks (the default).
    counting_load: AtomicBool,
}

/// How long a replica counts its load per SKU without the scheduler taking it.
const LOAD_UNCLAIMED: std::time::Duration = std::time::Duration::from_secs(60);

/// Operations a replica applied, per SKU, since a moment.
#[derive(Debug)]
pub struct AppliedLoad {
    pub since: tokio::time::Instant,
    pub ops: u64,
    pub by_sku: std::collections::HashMap<Sku, u64>,
}

impl AppliedLoad {
    fn new() -> Self {
        AppliedLoad {
            since: tokio::time::Instant::now(),
            ops: 0,
            by_sku: std::collections::HashMap::new(),
        }
    }
}

impl ShardView {
    fn new(shard_id: ShardId, image: ShardImage) -> Self {
        let (changes, _) = broadcast::channel(WATCH_BUFFER_CHANGES_MAX);
        let snapshot_records = AtomicU64::new(image.ledger.records());
        ShardView {
            snapshot_records,
            snapshot_overdue: AtomicBool::new(false),
            snapshot_lock: tokio::sync::Mutex::new(()),
            shard_id,
            state: RwLock::new(image),
            halted: Mutex::new(None),
            changes,
            ops_since_snapshot: AtomicU64::new(0),
            instruments: ShardInstruments::default(),
            load: Mutex::new(None),
            counting_load: AtomicBool::new(false),
        }
    }

    /// What this replica applied since the last call (per SKU, and in all), and starts counting
    /// again; the first call starts the counting and returns `None`. Every replica applies the
    /// same operations, so any replica's count is the shard's load. Only the placement
    /// scheduler calls it, so replicas elsewhere never pay for the counting.
    pub fn take_load(&self) -> Option<AppliedLoad> {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        self.counting_load.store(true, Ordering::Relaxed);
        load.replace(AppliedLoad::new())
    }

    /// Counts `entries`' operations per SKU, if the scheduler asked for counts.
    fn count_load<'a>(&self, entries: impl Iterator<Item = &'a Entry>) {
        if !self.counting_load.load(Ordering::Relaxed) {
            return;
        }
        let mut counting = self.load.lock().unwrap_or_else(|p| p.into_inner());
        // Nobody took the counts for a minute (this node no longer leads the meta group, or
        // the scheduler was switched off): stop paying for them.
        if counting
            .as_ref()
            .is_some_and(|load| load.since.elapsed() > LOAD_UNCLAIMED)
        {
            *counting = None;
            self.counting_load.store(false, Ordering::Relaxed);
        }
        let Some(load) = counting.as_mut() else { return };
        for entry in entries {
            let EntryPayload::Normal(LogCommand {
                body: CommandBody::Batch(operations),
                ..
            }) = &entry.payload
            else {
                continue;
            };
            load.ops += operations.len() as u64;
            for operation in operations {
                match load.by_sku.get_mut(operation.sku()) {
                    Some(count) => *count += 1,
                    None => {
                        load.by_sku.insert(operation.sku().to_vec(), 1);
                    }
                }
            }
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

    /// Marks the next snapshot as badly overdue (or no longer): a machine that never idles would
    /// starve a background builder while the log it would let go of grows in memory.
    pub fn set_snapshot_overdue(&self, overdue: bool) {
        self.snapshot_overdue.store(overdue, Ordering::Relaxed);
    }

    /// Records the latest snapshot held (see `LedgerState::records`).
    pub fn snapshot_records(&self) -> u64 {
        self.snapshot_records.load(Ordering::Relaxed)
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

/// The shard's Raft log as its state machine uses it.
#[derive(Clone)]
pub struct ShardLog {
    /// The node's WAL. A snapshot is saved only once the WAL durably holds every entry it
    /// covers: openraft may apply a committed entry whose local append is still queued, and a
    /// saved state ahead of the local log would, after a crash, leave a log whose tail conflicts
    /// with what was applied (found by the simulator, seeds 5403 and 9239).
    pub wal: Arc<Wal>,
}

/// Where a `Split` entry puts the half that leaves: the new shard's first snapshot on this node.
pub trait SplitSeeder: Send + Sync + 'static {
    /// Saves `image` as `new_shard`'s snapshot, durably, unless this node already has state for
    /// `new_shard` (it runs or ran a replica of it, or a replay of the same split seeded it
    /// before a restart): that state is newer, or comes from the new group's own leader.
    /// Returns whether it saved.
    fn seed(&self, new_shard: ShardId, meta: &SnapshotMeta, image: &FrozenImage) -> Result<bool, String>;
}

/// openraft's handle on one shard's state machine. Cheap to clone (it is also the snapshot
/// builder).
#[derive(Clone)]
pub struct ShardStateMachine {
    view: Arc<ShardView>,
    store: AppliedStore,
    log: ShardLog,
    /// Where split-off halves go; without one, a `Split` entry stops the shard (it would lose
    /// the half that leaves).
    seeder: Option<Arc<dyn SplitSeeder>>,
}

impl ShardStateMachine {
    /// Starts from the shard's latest snapshot in `store` (or the empty state); `log` is the
    /// shard's Raft log.
    pub fn open(shard_id: ShardId, store: AppliedStore, log: ShardLog) -> Result<Self, io::Error> {
        let image = store.load()?;
        Ok(ShardStateMachine {
            view: Arc::new(ShardView::new(shard_id, image)),
            store,
            log,
            seeder: None,
        })
    }

    /// This state machine, seeding the new shards its `Split` entries create through `seeder`.
    pub fn with_split_seeder(mut self, seeder: Arc<dyn SplitSeeder>) -> Self {
        self.seeder = Some(seeder);
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
        self.view.count_load(batch.iter().map(|(entry, _)| entry));
        // A split's new half is written to disk after the state lock is released (it may be
        // large; reads and the lease must not wait for it), but before this returns and before
        // any snapshot can fork the narrowed state: a snapshot after the split lets the log,
        // and so the split entry, be purged, and the half must be durable by then.
        let views = self.view.clone();
        let _no_snapshot_meanwhile = match batch.iter().any(|(entry, _)| split_in(entry).is_some()) {
            true => Some(views.snapshot_lock.lock().await),
            false => None,
        };
        let mut seeds = Vec::new();
        {
            let mut image = self.view.state.write().unwrap_or_else(|p| p.into_inner());
            for (entry, responder) in batch {
                let ops = operations_in(&entry);
                applied_ops += ops;
                let (reply, changes) = match split_in(&entry) {
                    Some((at, new_shard)) => {
                        let (reply, seed) = self.split(&mut image, &entry, at, new_shard)?;
                        seeds.extend(seed);
                        (reply, Changes::default())
                    }
                    None => apply_entry(&mut image, &entry).map_err(|violation| self.halt(violation))?,
                };
                self.view.instruments.applied_entry(ops);
                all_changes.merge(changes);
                last_index = entry.log_id().index;
                if let Some(responder) = responder {
                    replies.push((responder, reply));
                }
            }
            self.view.ops_since_snapshot.fetch_add(applied_ops, Ordering::Relaxed);
            self.view.publish(&image, &all_changes, last_index);
        }
        for seed in seeds {
            self.seed_half(seed).await?;
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
        let view = self.view.clone();
        let _no_build_meanwhile = view.snapshot_lock.lock().await;
        let data = snapshot.into_inner();
        let image = decode_image(&data)?;
        image.ledger.check_all().map_err(|violation| self.halt(violation))?;
        drop(data);
        let store = self.store.clone();
        // The checkpoint shares the chunks of `image`, which becomes the live state: the next
        // checkpoint writes only what changes after this.
        let (frozen, meta_owned) = (image.frozen(), meta.clone());
        run_blocking(SnapshotPriority::Normal, move || store.save_image(&meta_owned, &frozen)).await?;
        tracing::info!(shard = self.view.shard_id, last_log_id = ?meta.last_log_id, "installed snapshot");
        let mut state = self.view.state.write().unwrap_or_else(|p| p.into_inner());
        self.view
            .snapshot_records
            .store(image.ledger.records(), Ordering::Relaxed);
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
        let view = self.view.clone();
        let _only_one = view.snapshot_lock.lock().await;
        let started = tokio::time::Instant::now();
        // A fork of the live state: the order records are shared chunks, so taking it under the
        // read lock costs a list of chunk pointers plus the small parts, not a copy of the
        // orders; writes go on meanwhile and copy a chunk only when they change a record of one
        // the fork still holds. Encoding and saving run on a thread of their own.
        let (frozen, ops_covered) =
            view.read(|image| (image.frozen(), view.ops_since_snapshot.swap(0, Ordering::Relaxed)));
        let fork_us = started.elapsed().as_micros() as u64;
        let priority = if view.snapshot_overdue.load(Ordering::Relaxed) {
            SnapshotPriority::Normal
        } else {
            SnapshotPriority::Background
        };
        let store = self.store.clone();
        let wal = self.log.wal.clone();
        let built = async move {
            // The log may be purged up to this snapshot once it is saved: it must be durable.
            wal.wait_durable().await.map_err(io::Error::from)?;
            run_blocking(priority, move || {
                let meta = SnapshotMeta {
                    last_log_id: frozen.meta.applied,
                    last_membership: frozen.meta.membership.clone(),
                };
                let bytes = store.save_image(&meta, &frozen)?;
                Ok((meta, frozen.records(), bytes))
            })
            .await
        };
        let built = match built.await {
            Ok(built) => built,
            Err(error) => {
                // Not saved: the operations it covered still count toward the next one.
                view.ops_since_snapshot.fetch_add(ops_covered, Ordering::Relaxed);
                return Err(error);
            }
        };
        let (meta, records, bytes) = built;
        view.snapshot_records.store(records, Ordering::Relaxed);
        view.instruments.snapshot_built(bytes, started.elapsed());
        tracing::info!(shard = view.shard_id, last_log_id = ?meta.last_log_id, bytes, records, fork_us,
            total_ms = started.elapsed().as_millis() as u64, "built snapshot");
        // The image went straight into the store, never into one buffer. openraft uses only the
        // metadata of a snapshot it had built, and reads the bytes back with
        // `get_current_snapshot` when a lagging replica needs them: no copy is kept here.
        Ok(openraft::Snapshot {
            meta,
            snapshot: Cursor::new(Vec::new()),
        })
    }
}

impl ShardStateMachine {
    /// Applies a `Split` entry: `image` keeps the SKUs below `at`, and the rest becomes
    /// `new_shard`'s first snapshot on this node (through the seeder, before the split is
    /// visible: a snapshot of the narrowed image, after which the log no longer holds this
    /// entry, can only be built once the other half is durable). The new group's first log id
    /// is this entry's index at term 0 under the lowest voter, the same on every replica;
    /// its members are this shard's voters. A split proposed again for a shard already split
    /// off answers `Ok` and changes nothing; a split point outside the range is `Rejected`.
    fn split(
        &self,
        image: &mut ShardImage,
        entry: &Entry,
        at: &[u8],
        new_shard: ShardId,
    ) -> Result<(CommandReply, Option<SplitHalf>), io::Error> {
        use openraft::vote::RaftLeaderIdExt;
        let log_id = entry.log_id();
        let answer = |outcome: Outcome| CommandReply {
            outcomes: vec![outcome],
        };
        let mut half_to_seed = None;
        let reply = if image.bounds.split_off.iter().any(|(id, _)| *id == new_shard) {
            answer(Outcome::Ok)
        } else if let Some(into) = image.bounds.frozen_into {
            answer(Outcome::Rejected {
                reason: format!("the shard is frozen for a merge into shard {into}"),
            })
        } else if !image.bounds.splits_at(at) {
            answer(Outcome::Rejected {
                reason: format!(
                    "{:?} does not split this shard's range (it must lie strictly inside it)",
                    String::from_utf8_lossy(at)
                ),
            })
        } else {
            if self.seeder.is_none() {
                return Err(io::Error::other(
                    "a split entry on a replica that cannot seed the new shard",
                ));
            }
            let mut left = image.ledger.clone();
            match left.split_off(at) {
                Err(reason) => answer(Outcome::Rejected { reason }),
                Ok(right) => {
                    let membership = image.meta.membership.membership();
                    let voters: std::collections::BTreeSet<_> = membership.voter_ids().collect();
                    let nodes: std::collections::BTreeMap<_, _> = membership
                        .nodes()
                        .filter(|(id, _)| voters.contains(id))
                        .map(|(id, node)| (*id, node.clone()))
                        .collect();
                    let first_voter = voters.iter().copied().min().unwrap_or_default();
                    let first = LogId::new(
                        <TypeConfig as openraft::RaftTypeConfig>::LeaderId::new_committed(0, first_voter),
                        log_id.index,
                    );
                    let new_membership = openraft::Membership::new(vec![voters], nodes)
                        .map_err(|e| io::Error::other(format!("split membership: {e}")))?;
                    let half = ShardImage {
                        meta: crate::applied::AppliedMeta {
                            applied: Some(first),
                            membership: StoredMembership::new(Some(first), new_membership),
                        },
                        ledger: right,
                        map: Default::default(),
                        bounds: crate::applied::ShardBounds {
                            start: at.to_vec(),
                            end: image.bounds.end.clone(),
                            epoch: 1,
                            ..Default::default()
                        },
                    };
                    let meta = SnapshotMeta {
                        last_log_id: half.meta.applied,
                        last_membership: half.meta.membership.clone(),
                    };
                    tracing::info!(shard = self.view.shard_id, new_shard, at = %String::from_utf8_lossy(at),
                        index = log_id.index, "split the shard");
                    half_to_seed = Some(SplitHalf {
                        new_shard,
                        meta,
                        image: half.frozen(),
                    });
                    image.ledger = left;
                    #[cfg(madsim)]
                    let keep_range = crate::simulation::planted(crate::simulation::PlantedBug::SplitKeepsRange);
                    #[cfg(not(madsim))]
                    let keep_range = false;
                    if !keep_range {
                        image.bounds.end = Some(at.to_vec());
                        image.bounds.epoch += 1;
                    }
                    image.bounds.split_off.push((new_shard, at.to_vec()));
                    answer(Outcome::Ok)
                }
            }
        };
        image.meta.applied = Some(log_id);
        Ok((reply, half_to_seed))
    }

    /// Writes a split-off half as its shard's first snapshot, on a thread of its own.
    async fn seed_half(&self, half: SplitHalf) -> Result<(), io::Error> {
        let seeder = self
            .seeder
            .clone()
            .ok_or_else(|| io::Error::other("a split entry on a replica that cannot seed the new shard"))?;
        let started = tokio::time::Instant::now();
        let new_shard = half.new_shard;
        let seeded = run_blocking(SnapshotPriority::Normal, move || {
            seeder
                .seed(half.new_shard, &half.meta, &half.image)
                .map_err(|e| AppliedStoreError::Backend(format!("seeding shard {}: {e}", half.new_shard)))
        })
        .await?;
        tracing::info!(
            shard = self.view.shard_id,
            new_shard,
            seeded,
            ms = started.elapsed().as_millis() as u64,
            "the split-off half is on disk"
        );
        Ok(())
    }
}

/// A split-off half, to be written as its new shard's first snapshot.
struct SplitHalf {
    new_shard: ShardId,
    meta: SnapshotMeta,
    image: FrozenImage,
}

/// The split point and new shard of a `Split` entry.
fn split_in(entry: &Entry) -> Option<(&[u8], ShardId)> {
    match &entry.payload {
        EntryPayload::Normal(LogCommand {
            body: CommandBody::Split { at, new_shard },
            ..
        }) => Some((at, *new_shard)),
        _ => None,
    }
}

/// Applies one committed entry to `image`.
fn apply_entry(image: &mut ShardImage, entry: &Entry) -> Result<(CommandReply, Changes), InvariantViolation> {
    let log_id = entry.log_id();
    let one = |outcome: Outcome| CommandReply {
        outcomes: vec![outcome],
    };
    let applied = match &entry.payload {
        EntryPayload::Blank => (CommandReply::default(), Changes::default()),
        EntryPayload::Normal(LogCommand {
            body: CommandBody::Meta(command),
            ..
        }) => {
            let outcome = match image.map.apply(command) {
                Ok(()) => Outcome::Ok,
                Err(reason) => Outcome::Rejected { reason },
            };
            let reply = CommandReply {
                outcomes: vec![outcome],
            };
            (reply, Changes::default())
        }
        EntryPayload::Normal(LogCommand {
            body: CommandBody::Freeze { into },
            ..
        }) => (one(image.freeze_for_merge(*into)), Changes::default()),
        EntryPayload::Normal(LogCommand {
            body: CommandBody::Thaw { into },
            ..
        }) => (one(image.thaw(*into)), Changes::default()),
        // A shard frozen for a merge applies nothing more: its state as it is now is what the
        // shard it merges into takes. Operations are sent to the wrong shard; the rest refused.
        EntryPayload::Normal(LogCommand { body, .. })
            if image.bounds.frozen_into.is_some() && !crate::applied::frozen_shard_serves() =>
        {
            let epoch = image.bounds.epoch;
            let outcomes = match body {
                CommandBody::Batch(operations) => vec![Outcome::WrongShard { epoch }; operations.len()],
                _ => vec![Outcome::Rejected {
                    reason: "the shard is frozen for a merge".into(),
                }],
            };
            (CommandReply { outcomes }, Changes::default())
        }
        EntryPayload::Normal(LogCommand {
            body:
                CommandBody::Merge {
                    right,
                    right_start,
                    right_end,
                    state,
                },
            ..
        }) => {
            let outcome = image.merge(*right, right_start, right_end, state);
            if outcome == Outcome::Ok {
                tracing::info!(
                    right,
                    epoch = image.bounds.epoch,
                    index = log_id.index,
                    "merged a shard in"
                );
            }
            (one(outcome), Changes::default())
        }
        // Operations for SKUs a split moved away are refused, the whole batch alike, before
        // anything changes: the other half sells those units now.
        EntryPayload::Normal(LogCommand {
            body: CommandBody::Batch(operations),
            ..
        }) if operations
            .iter()
            .any(|operation| !image.bounds.contains(operation.sku())) =>
        {
            let epoch = image.bounds.epoch;
            let reply = CommandReply {
                outcomes: vec![Outcome::WrongShard { epoch }; operations.len()],
            };
            (reply, Changes::default())
        }
        EntryPayload::Normal(command) => {
            let (outcomes, changes) = image.ledger.apply(log_id.index, command)?;
            (CommandReply { outcomes }, changes)
        }
        EntryPayload::Membership(membership) => {
            image.meta.membership = StoredMembership::new(Some(log_id), membership.clone());
            (CommandReply::default(), Changes::default())
        }
    };
    image.meta.applied = Some(log_id);
    Ok(applied)
}

/// Operations an entry carries, as snapshots count them: N for a batch of N, 1 for anything else.
fn operations_in(entry: &Entry) -> u64 {
    match &entry.payload {
        EntryPayload::Normal(LogCommand {
            body: CommandBody::Batch(operations),
            ..
        }) => operations.len().max(1) as u64,
        _ => 1,
    }
}

/// How urgently blocking snapshot work should get a core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SnapshotPriority {
    /// Only when nothing else wants the core (a snapshot that is merely due).
    Background,
    /// Like the node's own threads: an installed snapshot a lagging replica waits for, or a
    /// snapshot so overdue (see `ShardView::set_snapshot_overdue`) that the log it would let go
    /// of is piling up in memory because the machine never idles.
    Normal,
}

/// Runs blocking snapshot work (encoding, file writes, fdatasync) off the async
/// workers, on a thread of its own, by default at the lowest CPU priority: every replica builds
/// its snapshot at about the same log index, and on a small machine three builders at normal
/// priority took the cores from the write path (throughput fell by half for the second they
/// ran). The simulator runs it inline: its disk is memory and its scheduler must stay
/// deterministic.
pub(crate) async fn run_blocking<T: Send + 'static>(
    priority: SnapshotPriority,
    work: impl FnOnce() -> Result<T, AppliedStoreError> + Send + 'static,
) -> Result<T, io::Error> {
    #[cfg(not(madsim))]
    let result = {
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || {
                if priority == SnapshotPriority::Background {
                    lower_this_threads_priority();
                }
                // The receiver is gone only if the build was abandoned; nothing to tell.
                let _ = done.send(work());
            })
            .map_err(|e| io::Error::other(format!("snapshot thread: {e}")))?;
        result
            .await
            .map_err(|_| io::Error::other("snapshot thread ended without a result"))?
    };
    #[cfg(madsim)]
    let result = {
        let _ = priority;
        work()
    };
    result.map_err(io::Error::from)
}

/// Puts the calling thread in Linux's `SCHED_IDLE` class: it runs only on a core nothing else
/// wants, and yields it the moment a node thread wakes. At nice 10 the builders still pushed the
/// p99 of an open-loop run at half the peak rate to 150–430 ms while they ran; idle-class, the
/// service benchmark's worst latency fell from 230–520 ms to 45 ms, and a snapshot still completes
/// in 2–4 s with the machine saturated (there are always idle moments between fdatasyncs).
#[cfg(not(madsim))]
fn lower_this_threads_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a syscall on the calling thread (pid 0) with a pointer to a live local.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        // Only a scheduling preference: the snapshot is built either way.
        tracing::debug!(error = %io::Error::last_os_error(), "could not lower the snapshot thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use futures::stream;
    use openraft::storage::IOFlushed;
    use openraft::storage::RaftLogStorage;
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::applied::MemorySnapshots;
    use crate::state_machine::command::LedgerSettings;
    use crate::state_machine::command::Operation;
    use crate::state_machine::command::SaleRules;
    use crate::state_machine::keys::HashKey;
    use crate::storage::MemoryBackend;
    use crate::storage::ShardLogStore;
    use crate::storage::WalOptions;

    fn entry(index: u64, body: CommandBody) -> Entry {
        Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(LogCommand {
                timestamp_ms: 1_000 + index,
                body,
            }),
        }
    }

    /// Entries `first..first + count`: reservations (some cancelled, some confirmed, some left to
    /// expire, and expiries), purchases by repeat buyers under a per-user limit, and replays of earlier ids.
    fn traffic(first: u64, count: u64) -> Vec<Entry> {
        (first..first + count)
            .map(|index| {
                if index % 10 == 9 {
                    return entry(index, CommandBody::Expire);
                }
                let user = format!("u{}", index % 5);
                let sku = if index % 2 == 0 {
                    b"apple".to_vec()
                } else {
                    b"pear".to_vec()
                };
                let first_attempt_ms = 1_000 + index;
                let operation = match index % 4 {
                    0 => Operation::Reserve {
                        sku,
                        qty: 1,
                        user,
                        order_id: format!("r{index}"),
                        ttl_ms: 20,
                        first_attempt_ms,
                    },
                    1 => Operation::Cancel {
                        sku: b"apple".to_vec(),
                        order_id: format!("r{}", index - 1),
                        first_attempt_ms,
                    },
                    2 => Operation::Purchase {
                        sku,
                        qty: 2,
                        user,
                        order_id: format!("p{}", index % 30),
                        first_attempt_ms,
                    },
                    _ => Operation::Confirm {
                        sku: b"apple".to_vec(),
                        order_id: format!("r{}", index - 3),
                        first_attempt_ms,
                    },
                };
                entry(index, CommandBody::Batch(vec![operation]))
            })
            .collect()
    }

    async fn append(log: &mut ShardLogStore, entries: Vec<Entry>) {
        let (sender, receiver) = TypeConfig::oneshot();
        log.append(entries, IOFlushed::signal(sender)).await.expect("appends");
        receiver.await.expect("callback").expect("durable");
    }

    /// A replica: its state machine over its own log and snapshot store.
    fn replica() -> (ShardStateMachine, ShardLogStore, AppliedStore) {
        let wal = crate::storage::Wal::open(MemoryBackend::default(), WalOptions::default()).expect("WAL opens");
        let log = wal.log_store(1);
        let store = AppliedStore::new(Arc::new(MemorySnapshots::default()));
        let machine = ShardStateMachine::open(1, store.clone(), ShardLog { wal }).expect("opens");
        (machine, log, store)
    }

    #[test]
    fn snapshots_fork_the_live_state_and_are_byte_identical_on_every_replica() {
        TypeConfig::run(async {
            let rules = SaleRules {
                per_user_limit: 40,
                ..SaleRules::default()
            };
            let put = |sku: &[u8]| Operation::PutSku {
                sku: sku.to_vec(),
                total: 1_000,
                rules,
            };
            let settings = LedgerSettings {
                hash_key: HashKey([11, 22]),
                ..LedgerSettings::default()
            };
            let mut entries = vec![
                entry(0, CommandBody::Configure(settings)),
                entry(1, CommandBody::Batch(vec![put(b"apple"), put(b"pear")])),
            ];
            entries.extend(traffic(2, 300));
            let mut replicas: Vec<_> = (0..3).map(|_| replica()).collect();
            let mut snapshots = Vec::new();
            for (machine, log, _) in &mut replicas {
                append(log, entries.clone()).await;
                let stream = stream::iter(entries.clone().into_iter().map(|entry| Ok((entry, None))));
                machine.apply(stream).await.expect("applies");
                machine.build_snapshot().await.expect("builds");
                let stored = machine
                    .get_current_snapshot()
                    .await
                    .expect("reads")
                    .expect("a snapshot");
                snapshots.push(stored.snapshot.into_inner());
            }
            assert!(
                snapshots.iter().all(|bytes| *bytes == snapshots[0]),
                "replicas encode the same bytes"
            );

            tracing::info!("--- a fork does not see writes applied after it");
            let (machine, log, store) = &mut replicas[0];
            let (forked, at_fork) = machine.view().read(|image| (image.frozen(), image.ledger.clone()));
            let more = traffic(302, 100);
            append(log, more.clone()).await;
            machine
                .apply(stream::iter(more.into_iter().map(|entry| Ok((entry, None)))))
                .await
                .expect("applies");
            let decoded = decode_image(&crate::applied::encode_image(&forked).expect("encodes")).expect("decodes");
            assert_eq!(decoded.ledger, at_fork);
            assert_ne!(machine.view().read(|image| image.ledger.clone()), at_fork);

            tracing::info!("--- a restart starts from the saved snapshot");
            let saved = store.load().expect("loads");
            let (restarted, ..) = (ShardStateMachine::open(
                1,
                store.clone(),
                ShardLog {
                    wal: crate::storage::Wal::open(MemoryBackend::default(), WalOptions::default()).expect("WAL opens"),
                },
            )
            .expect("opens"),);
            assert_eq!(restarted.view().read(|image| image.ledger.clone()), saved.ledger);
            assert_eq!(saved.meta.applied.map(|id| id.index), Some(301));
        });
    }

    /// Seeds split halves into in-memory stores, remembering which shards it seeded.
    #[derive(Default)]
    struct MemorySeeder {
        stores: Mutex<std::collections::BTreeMap<ShardId, AppliedStore>>,
    }

    impl SplitSeeder for MemorySeeder {
        fn seed(&self, new_shard: ShardId, meta: &SnapshotMeta, image: &FrozenImage) -> Result<bool, String> {
            let mut stores = self.stores.lock().expect("lock");
            if stores.contains_key(&new_shard) {
                return Ok(false);
            }
            let store = AppliedStore::new(Arc::new(MemorySnapshots::default()));
            store.save_image(meta, image).map_err(|e| e.to_string())?;
            stores.insert(new_shard, store);
            Ok(true)
        }
    }

    #[test]
    fn a_split_entry_cuts_the_state_seeds_the_new_shard_once_and_refuses_what_left() {
        TypeConfig::run(async {
            let seeder = Arc::new(MemorySeeder::default());
            let (machine, mut log, _) = replica();
            let mut machine = machine.with_split_seeder(seeder.clone());
            let nodes: std::collections::BTreeMap<u64, openraft::BasicNode> = (1..=3)
                .map(|id| (id, openraft::BasicNode::new(format!("127.0.0.1:{id}"))))
                .collect();
            let membership = openraft::Membership::new(vec![std::collections::BTreeSet::from([1, 2, 3])], nodes)
                .expect("a membership");
            let put = |sku: &[u8]| Operation::PutSku {
                sku: sku.to_vec(),
                total: 1_000,
                rules: SaleRules::default(),
            };
            let mut entries = vec![
                Entry {
                    log_id: openraft::testing::log_id::<TypeConfig>(1, 1, 0),
                    payload: EntryPayload::Membership(membership),
                },
                entry(
                    1,
                    CommandBody::Configure(LedgerSettings {
                        hash_key: HashKey([3, 4]),
                        ..LedgerSettings::default()
                    }),
                ),
                entry(2, CommandBody::Batch(vec![put(b"apple"), put(b"pear")])),
            ];
            entries.extend(traffic(3, 60));
            let split = |index| {
                entry(
                    index,
                    CommandBody::Split {
                        at: b"b".to_vec(),
                        new_shard: 7,
                    },
                )
            };
            entries.push(split(63));
            // Routed by an old map: pear is no longer this shard's.
            let late = |index, sku: &[u8]| {
                entry(
                    index,
                    CommandBody::Batch(vec![Operation::Purchase {
                        sku: sku.to_vec(),
                        qty: 1,
                        user: "u".into(),
                        order_id: format!("late{index}"),
                        first_attempt_ms: 1_000 + index,
                    }]),
                )
            };
            entries.push(late(64, b"pear"));
            entries.push(split(65));
            entries.push(entry(
                66,
                CommandBody::Split {
                    at: b"zebra".to_vec(),
                    new_shard: 8,
                },
            ));
            append(&mut log, entries.clone()).await;
            let whole = {
                let mut image = ShardImage::default();
                for entry in &entries[..63] {
                    apply_entry(&mut image, entry).expect("applies");
                }
                image.ledger
            };
            let stream = stream::iter(entries.clone().into_iter().map(|entry| Ok((entry, None))));
            machine.apply(stream).await.expect("applies");
            // What each of the later entries answered, replayed on a copy of the split state.
            let mut image = machine.view().read(|image| image.clone());
            let (late_reply, _) = apply_entry(&mut image, &entries[64]).expect("applies");
            assert_eq!(late_reply.outcomes, vec![Outcome::WrongShard { epoch: 2 }]);
            let (again, seed) = machine.split(&mut image, &entries[65], b"b", 7).expect("applies");
            assert_eq!(again.outcomes, vec![Outcome::Ok], "a split already made answers done");
            assert!(seed.is_none(), "and seeds nothing");
            let (outside, seed) = machine.split(&mut image, &entries[66], b"zebra", 8).expect("applies");
            assert!(
                matches!(outside.outcomes[..], [Outcome::Rejected { .. }]),
                "{outside:?}"
            );
            assert!(seed.is_none());

            let (bounds, left) = machine
                .view()
                .read(|image| (image.bounds.clone(), image.ledger.clone()));
            assert_eq!(bounds.end, Some(b"b".to_vec()), "the range ends at the split");
            assert_eq!(
                bounds.epoch, 2,
                "one split, one bump: the second split of 7 changed nothing"
            );
            assert_eq!(bounds.split_off, vec![(7, b"b".to_vec())]);
            let stores = seeder.stores.lock().expect("lock");
            assert_eq!(
                stores.keys().copied().collect::<Vec<_>>(),
                vec![7],
                "seeded once, and not 8"
            );
            let right = stores[&7].load().expect("the half loads");
            assert_eq!(right.bounds.start, b"b".to_vec());
            assert_eq!(right.bounds.end, None);
            assert_eq!(right.meta.applied.map(|id| id.index), Some(63));
            assert_eq!(
                right.meta.membership.membership().voter_ids().collect::<Vec<_>>(),
                vec![1, 2, 3]
            );
            let mut expected_left = whole.clone();
            let expected_right = expected_left.split_off(b"b").expect("splits");
            assert_eq!(
                left.digest(),
                expected_left.digest(),
                "the left half, and the late pear changed nothing"
            );
            assert_eq!(right.ledger.digest(), expected_right.digest());
            assert!(left.stock(b"pear").is_none() && right.ledger.stock(b"pear").is_some());

            tracing::info!("--- the right half freezes, then merges back into the left");
            let (mut left_image, mut right_image) = (machine.view().read(|image| image.clone()), right);
            let at = |index| openraft::testing::log_id::<TypeConfig>(1, 1, index);
            let on_right = |image: &mut ShardImage, index: u64, body: CommandBody| {
                let mut entry = entry(index, body);
                entry.log_id = at(index);
                apply_entry(image, &entry).expect("applies").0.outcomes
            };
            assert_eq!(
                on_right(&mut right_image, 64, CommandBody::Freeze { into: 1 }),
                vec![Outcome::Ok]
            );
            assert_eq!(right_image.bounds.epoch, 1, "the epoch is the map's: a freeze keeps it");
            let frozen_digest = right_image.ledger.digest();
            let buy_pear = CommandBody::Batch(vec![Operation::Purchase {
                sku: b"pear".to_vec(),
                qty: 1,
                user: "u".into(),
                order_id: "after-freeze".into(),
                first_attempt_ms: 5_000,
            }]);
            assert_eq!(
                on_right(&mut right_image, 65, buy_pear.clone()),
                vec![Outcome::WrongShard { epoch: 1 }]
            );
            assert!(matches!(
                on_right(&mut right_image, 66, CommandBody::Expire)[..],
                [Outcome::Rejected { .. }]
            ));
            assert!(matches!(
                on_right(&mut right_image, 67, CommandBody::Freeze { into: 9 })[..],
                [Outcome::Rejected { .. }]
            ));
            assert_eq!(
                on_right(&mut right_image, 68, CommandBody::Freeze { into: 1 }),
                vec![Outcome::Ok]
            );
            assert_eq!(
                right_image.ledger.digest(),
                frozen_digest,
                "a frozen shard applies nothing"
            );
            assert_eq!(right_image.bounds.epoch, 1);

            let state = bincode::serialize(&right_image.ledger.frozen()).expect("encodes");
            let merge = |start: &[u8], state: &[u8]| CommandBody::Merge {
                right: 7,
                right_start: start.to_vec(),
                right_end: Vec::new(),
                state: state.to_vec(),
            };
            let before = left_image.ledger.digest();
            for (start, bytes) in [(&b"c"[..], &state[..]), (&b"b"[..], &state[3..])] {
                assert!(matches!(
                    on_right(&mut left_image, 70, merge(start, bytes))[..],
                    [Outcome::Rejected { .. }]
                ));
                assert_eq!(left_image.ledger.digest(), before, "a refused merge changes nothing");
                assert_eq!(left_image.bounds.epoch, 2);
            }
            assert_eq!(on_right(&mut left_image, 71, merge(b"b", &state)), vec![Outcome::Ok]);
            assert_eq!(left_image.bounds.end, None, "the range ends where the right one did");
            assert_eq!(left_image.bounds.epoch, 3);
            assert_eq!(left_image.bounds.merged, vec![7]);
            for sku in [&b"apple"[..], b"pear"] {
                assert_eq!(
                    left_image.ledger.stock(sku),
                    whole.stock(sku),
                    "{sku:?} as before the split"
                );
            }
            left_image.ledger.check_all().expect("the invariant holds");
            let merged = left_image.ledger.digest();
            assert_eq!(on_right(&mut left_image, 72, merge(b"b", &state)), vec![Outcome::Ok]);
            assert_eq!(left_image.ledger.digest(), merged, "a merge made again changes nothing");
            assert_eq!(left_image.bounds.epoch, 3);
            let bought = on_right(&mut left_image, 73, buy_pear);
            assert_eq!(
                bought,
                vec![Outcome::Confirmed],
                "the merged shard sells the right half's skus"
            );

            tracing::info!("--- a thaw (the merge was refused) makes the right half serve again");
            assert_eq!(
                on_right(&mut right_image, 69, CommandBody::Thaw { into: 1 }),
                vec![Outcome::Ok]
            );
            assert_eq!(
                right_image.bounds.epoch, 1,
                "as the map has it: the merge never happened"
            );
            assert!(right_image.bounds.contains(b"pear"));
        });
    }
}
