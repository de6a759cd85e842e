//! The node's write-ahead log: one segmented, CRC-checked log shared by every shard on the node,
//! with group commit (everything queued while an fdatasync is in flight is written together and
//! covered by one following fdatasync).
//!
//! Invariants:
//! - A shard's records reach the disk in the order its log store issued them.
//! - An append's `IOFlushed` callback, and a `save_vote` return, happen only after an fdatasync
//!   that covers the record. After a failed write or fdatasync the WAL refuses every further
//!   write (a failed fdatasync cannot be retried safely: the kernel may have dropped the pages).
//! - Recovery never applies a record that failed its length or CRC check. Only the tail of the
//!   last segment may be bad (a crash mid-write); it is cut off. Anything bad earlier is an error,
//!   and so is a bad record in the last segment that valid records follow (a torn write is the
//!   end of the log, never its middle): the node refuses to start and nothing is cut.
//! - Segments are deleted oldest-first and only while no live (unpurged, not truncated) entry
//!   lives in them. Each new segment opens with a checkpoint of every shard's vote, committed
//!   and purge point, so an older segment never holds the only copy of them.
//! - The bytes queued but not yet written are bounded by `WalOptions::pending_bytes_max`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tokio::sync::oneshot;

use crate::metrics::instruments::WalInstruments;
use crate::storage::backend::SegmentId;
use crate::storage::backend::WalBackend;
use crate::storage::log_store::ShardLogStore;
use crate::storage::record;
use crate::storage::record::Record;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::ShardId;
use crate::types::TypeConfig;
use crate::types::Vote;

/// Bounds of the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment is closed and a new one started once it holds this many bytes (it may exceed
    /// it by one batch). Smaller segments free disk sooner after purges.
    pub segment_bytes_max: u64,
    /// Bytes queued for writing; appends wait (back-pressure) beyond it.
    pub pending_bytes_max: usize,
}

impl Default for WalOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 * 1024 * 1024,
            pending_bytes_max: 32 * 1024 * 1024,
        }
    }
}

impl WalOptions {
    pub fn validate(&self) -> Result<(), WalError> {
        if self.segment_bytes_max < record::SEGMENT_HEADER_BYTES as u64 * 2 {
            return Err(WalError::InvalidOptions(
                "segment_bytes_max is smaller than two segment headers",
            ));
        }
        // Admission counts bytes as semaphore permits, which are u32 per acquisition.
        if self.pending_bytes_max == 0 || self.pending_bytes_max > u32::MAX as usize {
            return Err(WalError::InvalidOptions("pending_bytes_max must be in 1..=u32::MAX"));
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL I/O: {0}")]
    Io(#[from] io::Error),
    #[error("segment {segment} has a bad header")]
    BadHeader { segment: SegmentId },
    #[error(
        "segment {segment} was written in WAL format {found}; this build reads format {expected}: restore this \
         replica from another one, or start it from an empty data directory"
    )]
    UnsupportedVersion {
        segment: SegmentId,
        found: u8,
        expected: u8,
    },
    #[error("corrupt record in segment {segment} at offset {offset} (not the tail of the last segment)")]
    Corrupt { segment: SegmentId, offset: usize },
    #[error(
        "corrupt record in segment {segment} at offset {offset} ({reason}), followed by valid records \
         from offset {valid_from}: this is corruption, not a torn write; nothing was cut"
    )]
    CorruptBeforeValid {
        segment: SegmentId,
        offset: usize,
        valid_from: usize,
        reason: String,
    },
    #[error("record in segment {segment} at offset {offset} passed its checksum but does not decode: {reason}")]
    Decode {
        segment: SegmentId,
        offset: usize,
        reason: String,
    },
    #[error("record in segment {segment} at offset {offset} breaks the log: {reason}")]
    Replay {
        segment: SegmentId,
        offset: usize,
        reason: String,
    },
    #[error("encoding a record: {0}")]
    Encode(String),
    #[error("invalid WAL option: {0}")]
    InvalidOptions(&'static str),
    #[error("the WAL failed earlier and refuses writes: {0}")]
    Failed(String),
    #[error("the WAL log is broken: {0}")]
    Invariant(String),
    #[error("the WAL is closed")]
    Closed,
}

impl From<WalError> for io::Error {
    fn from(error: WalError) -> io::Error {
        match error {
            WalError::Io(error) => error,
            other => io::Error::other(other),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a panic in the middle of a WAL update: a bug, never a state to use.
    mutex.lock().expect("WAL lock poisoned")
}

/// One shard's log as readers see it: every entry appended and not truncated or purged,
/// whether or not it is durable yet (openraft requires appended entries to be readable at once).
#[derive(Debug, Default, Clone)]
pub(crate) struct ShardState {
    pub(crate) entries: BTreeMap<u64, Entry>,
    pub(crate) vote: Option<Vote>,
    pub(crate) committed: Option<LogId>,
    pub(crate) last_purged: Option<LogId>,
}

impl ShardState {
    /// Entries replace whatever the log had at their index and after; they must be consecutive
    /// and must not leave a hole after the current last entry.
    pub(crate) fn append(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(first) = entries.first().map(|e| e.index()) else {
            return Ok(());
        };
        check_consecutive(&entries)?;
        if let Some(last) = self.entries.keys().next_back()
            && first > last.saturating_add(1)
        {
            return Err(format!("append at {first} leaves a hole after {last}"));
        }
        self.entries.split_off(&first);
        self.entries.extend(entries.into_iter().map(|e| (e.index(), e)));
        Ok(())
    }

    pub(crate) fn truncate_after(&mut self, last_kept: Option<LogId>) {
        match last_kept.map(|log_id| log_id.index().checked_add(1)) {
            None => self.entries.clear(),
            Some(Some(first_dropped)) => drop(self.entries.split_off(&first_dropped)),
            // Kept up to the last index there can be: nothing is after it.
            Some(None) => {}
        }
    }

    /// Forgets the entries up to `upto` and returns them (freeing a few hundred thousand
    /// operations takes long enough that the caller should not do it under the shard's lock).
    pub(crate) fn purge(&mut self, upto: LogId) -> BTreeMap<u64, Entry> {
        if self.last_purged.is_none_or(|purged| purged < upto) {
            self.last_purged = Some(upto);
        }
        let kept = match upto.index().checked_add(1) {
            Some(first_kept) => self.entries.split_off(&first_kept),
            None => BTreeMap::new(),
        };
        std::mem::replace(&mut self.entries, kept)
    }

    fn apply(&mut self, record: Record) -> Result<(), String> {
        match record {
            Record::Append { entries, .. } => self.append(entries)?,
            Record::TruncateAfter { last_kept, .. } => self.truncate_after(last_kept),
            Record::Purge { upto, .. } => drop(self.purge(upto)),
            Record::SaveVote { vote, .. } => self.vote = Some(vote),
            Record::SaveCommitted { committed, .. } => self.committed = committed,
        }
        Ok(())
    }
}

fn check_consecutive(entries: &[Entry]) -> Result<(), String> {
    for pair in entries.windows(2) {
        if pair[0].index().checked_add(1) != Some(pair[1].index()) {
            return Err(format!(
                "entries not consecutive: {} then {}",
                pair[0].index(),
                pair[1].index()
            ));
        }
    }
    Ok(())
}

/// What a queued record changes, as far as segment bookkeeping is concerned.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// An append with no entries: nothing written, but its callback still waits for the next
    /// fdatasync (so it is ordered after earlier writes).
    Nothing,
    Append {
        shard: ShardId,
        first: u64,
        last: u64,
    },
    TruncateAfter {
        shard: ShardId,
        last_kept: Option<LogId>,
    },
    Purge {
        shard: ShardId,
        upto: LogId,
    },
    SaveVote {
        shard: ShardId,
        vote: Vote,
    },
    SaveCommitted {
        shard: ShardId,
        committed: Option<LogId>,
    },
}

impl Effect {
    fn of(record: &Record) -> Effect {
        match record {
            Record::Append { shard, entries } => match (entries.first(), entries.last()) {
                (Some(first), Some(last)) => Effect::Append {
                    shard: *shard,
                    first: first.index(),
                    last: last.index(),
                },
                _ => Effect::Nothing,
            },
            Record::TruncateAfter { shard, last_kept } => Effect::TruncateAfter {
                shard: *shard,
                last_kept: *last_kept,
            },
            Record::Purge { shard, upto } => Effect::Purge {
                shard: *shard,
                upto: *upto,
            },
            Record::SaveVote { shard, vote } => Effect::SaveVote {
                shard: *shard,
                vote: *vote,
            },
            Record::SaveCommitted { shard, committed } => Effect::SaveCommitted {
                shard: *shard,
                committed: *committed,
            },
        }
    }
}

/// Who to tell once a record is durable.
pub(crate) enum Completion {
    None,
    Flushed(IOFlushed<TypeConfig>),
    Notify(oneshot::Sender<Result<(), io::Error>>),
}

impl Completion {
    fn complete(self, result: Result<(), String>) {
        let to_io = |r: &Result<(), String>| r.clone().map_err(io::Error::other);
        match self {
            Completion::None => {}
            Completion::Flushed(callback) => callback.io_completed(to_io(&result)),
            // The waiter may have given up (its task was dropped); nothing to tell then.
            Completion::Notify(sender) => drop(sender.send(to_io(&result))),
        }
    }
}

/// A record waiting for the writer.
pub(crate) struct Pending {
    bytes: Vec<u8>,
    effect: Effect,
    completion: Completion,
    /// Holds this record's share of `pending_bytes_max` until it is durable.
    _admission: OwnedSemaphorePermit,
}

/// The writer's durable view of one shard: just enough to decide which segments are needed.
#[derive(Debug, Default)]
struct DurableShard {
    /// Live entries as runs `first -> (last, segment)`. Segments grow with the index within a
    /// shard (an entry is written after the one before it), so the first run names the oldest
    /// segment this shard needs.
    runs: BTreeMap<u64, (u64, SegmentId)>,
    vote: Option<Vote>,
    committed: Option<Option<LogId>>,
    last_purged: Option<LogId>,
}

impl DurableShard {
    fn truncate_from(&mut self, index: u64) {
        self.runs.split_off(&index);
        if let Some((_, (last, _))) = self.runs.iter_mut().next_back()
            && *last >= index
        {
            *last = index.saturating_sub(1);
        }
    }

    fn purge_through(&mut self, index: u64) {
        let Some(next) = index.checked_add(1) else {
            self.runs.clear();
            return;
        };
        let kept = self.runs.split_off(&next);
        let straddling = self.runs.iter().next_back().map(|(_, run)| *run);
        self.runs = kept;
        if let Some((last, segment)) = straddling
            && last >= next
        {
            self.runs.insert(next, (last, segment));
        }
    }

    fn apply(&mut self, effect: &Effect, segment: SegmentId) {
        match effect {
            Effect::Nothing => {}
            Effect::Append { first, last, .. } => {
                self.truncate_from(*first);
                self.runs.insert(*first, (*last, segment));
            }
            Effect::TruncateAfter { last_kept, .. } => match last_kept.map(|l| l.index().checked_add(1)) {
                None => self.truncate_from(0),
                Some(Some(first_dropped)) => self.truncate_from(first_dropped),
                Some(None) => {}
            },
            Effect::Purge { upto, .. } => {
                if self.last_purged.is_none_or(|purged| purged < *upto) {
                    self.last_purged = Some(*upto);
                }
                self.purge_through(upto.index());
            }
            Effect::SaveVote { vote, .. } => self.vote = Some(*vote),
            Effect::SaveCommitted { committed, .. } => self.committed = Some(*committed),
        }
    }

    /// Records that restore this shard's vote, committed and purge point.
    fn checkpoint(&self, shard: ShardId) -> Vec<Record> {
        let mut records = Vec::new();
        if let Some(vote) = self.vote {
            records.push(Record::SaveVote { shard, vote });
        }
        if let Some(committed) = self.committed {
            records.push(Record::SaveCommitted { shard, committed });
        }
        if let Some(upto) = self.last_purged {
            records.push(Record::Purge { shard, upto });
        }
        records
    }
}

fn effect_shard(effect: &Effect) -> Option<ShardId> {
    match effect {
        Effect::Nothing => None,
        Effect::Append { shard, .. }
        | Effect::TruncateAfter { shard, .. }
        | Effect::Purge { shard, .. }
        | Effect::SaveVote { shard, .. }
        | Effect::SaveCommitted { shard, .. } => Some(*shard),
    }
}

/// The single writer: owns the active segment and the durable bookkeeping.
struct Writer {
    backend: Arc<dyn WalBackend>,
    segment_bytes_max: u64,
    /// Every segment on disk, ascending.
    segments: BTreeSet<SegmentId>,
    active: SegmentId,
    active_bytes: u64,
    shards: BTreeMap<ShardId, DurableShard>,
}

impl Writer {
    fn apply(&mut self, effect: &Effect, segment: SegmentId) {
        if let Some(shard) = effect_shard(effect) {
            self.shards.entry(shard).or_default().apply(effect, segment);
        }
    }

    /// Start segment `segment` with its header and a checkpoint of every shard, durably.
    fn start_segment(&mut self, segment: SegmentId) -> Result<(), WalError> {
        let mut bytes = record::segment_header(segment).to_vec();
        for (shard, durable) in &self.shards {
            for checkpoint in durable.checkpoint(*shard) {
                bytes.extend(record::encode(&checkpoint).map_err(|e| WalError::Encode(e.to_string()))?);
            }
        }
        self.backend.create_segment(segment)?;
        self.segments.insert(segment);
        self.backend.append(segment, &bytes)?;
        self.backend.sync(segment)?;
        self.active = segment;
        self.active_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Write a batch as one write and cover it with one fdatasync; records the fdatasync's
    /// latency and bytes in `instruments`.
    fn write_batch(&mut self, batch: &[Pending], instruments: &WalInstruments) -> Result<(), WalError> {
        if self.active_bytes >= self.segment_bytes_max {
            self.start_segment(self.active + 1)?;
        }
        let mut buffer = Vec::with_capacity(batch.iter().map(|p| p.bytes.len()).sum());
        for pending in batch {
            buffer.extend_from_slice(&pending.bytes);
        }
        if !buffer.is_empty() {
            self.backend.append(self.active, &buffer)?;
        }
        let sync_started = std::time::Instant::now();
        self.backend.sync(self.active)?;
        instruments
            .fdatasync_duration
            .observe(sync_started.elapsed().as_secs_f64());
        instruments.fdatasync_bytes.observe(buffer.len() as f64);
        self.active_bytes += buffer.len() as u64;
        let active = self.active;
        for pending in batch {
            self.apply(&pending.effect, active);
        }
        Ok(())
    }

    /// Delete, oldest first, the segments no live entry needs. Their metadata is repeated in
    /// the active segment's checkpoint, and their truncations can only hit entries in segments
    /// older still, which are gone.
    fn delete_obsolete_segments(&mut self) -> Result<usize, WalError> {
        let oldest_needed = self
            .shards
            .values()
            .filter_map(|shard| shard.runs.values().next().map(|(_, segment)| *segment))
            .min()
            .unwrap_or(self.active)
            .min(self.active);
        let obsolete: Vec<SegmentId> = self.segments.range(..oldest_needed).copied().collect();
        for segment in &obsolete {
            self.backend.delete_segment(*segment)?;
            self.segments.remove(segment);
        }
        Ok(obsolete.len())
    }
}

/// Counters for measurement and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    /// fdatasyncs covering batches (segment starts excluded).
    pub syncs: u64,
    pub records: u64,
    pub bytes_written: u64,
    pub segments_deleted: u64,
}

#[derive(Default)]
struct Counters {
    syncs: AtomicU64,
    records: AtomicU64,
    bytes_written: AtomicU64,
    segments_deleted: AtomicU64,
}

#[derive(Default)]
struct Queue {
    items: Vec<Pending>,
    /// Records ever queued; a batch taken now covers every record up to this count.
    queued_total: u64,
    closed: bool,
    /// Set by the first failed write or fdatasync; every later write is refused with it.
    failure: Option<String>,
}

/// What the submitting tasks and the writer share.
struct Shared {
    queue: Mutex<Queue>,
    #[cfg(not(madsim))]
    wakeup: std::sync::Condvar,
    writer: Mutex<Writer>,
    counters: Counters,
    /// fdatasync latency and size, for /metrics.
    instruments: WalInstruments,
    /// How many of the records ever queued are durable. Read by `Wal::wait_durable`.
    durable_total: AtomicU64,
    /// Under madsim: a delayed group commit is already scheduled (see `Wal::schedule_flush`).
    #[cfg(madsim)]
    flush_scheduled: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn enqueue(&self, pending: Pending) -> Result<(), WalError> {
        let mut queue = lock(&self.queue);
        if let Some(failure) = &queue.failure {
            return Err(WalError::Failed(failure.clone()));
        }
        if queue.closed {
            return Err(WalError::Closed);
        }
        queue.items.push(pending);
        queue.queued_total += 1;
        #[cfg(not(madsim))]
        self.wakeup.notify_one();
        Ok(())
    }

    /// Write, sync and complete one batch, which covers the first `through` records ever
    /// queued; on failure fail the whole WAL.
    fn flush(&self, batch: Vec<Pending>, through: u64) {
        let mut writer = lock(&self.writer);
        let result = writer.write_batch(&batch, &self.instruments).map_err(|e| e.to_string());
        let result = result.and_then(|()| self.after_sync(&mut writer, &batch));
        drop(writer);
        if let Err(failure) = &result {
            tracing::error!(%failure, "WAL write failed; refusing further writes");
            let mut queue = lock(&self.queue);
            queue.failure.get_or_insert_with(|| failure.clone());
        }
        // Durable before anyone hears so: a caller woken by its completion that then asks for a
        // barrier must find nothing pending (it synced again when the mark came second; the
        // storage test caught it under load).
        if result.is_ok() {
            self.durable_total.fetch_max(through, Ordering::SeqCst);
        }
        for pending in batch {
            pending.completion.complete(result.clone());
        }
    }

    /// Takes everything queued, with the count of records it brings the WAL up to.
    fn take_queued(queue: &mut Queue) -> (Vec<Pending>, u64) {
        (std::mem::take(&mut queue.items), queue.queued_total)
    }

    fn after_sync(&self, writer: &mut Writer, batch: &[Pending]) -> Result<(), String> {
        let bytes: usize = batch.iter().map(|p| p.bytes.len()).sum();
        self.counters.syncs.fetch_add(1, Ordering::Relaxed);
        self.counters.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.counters.bytes_written.fetch_add(bytes as u64, Ordering::Relaxed);
        let deleted = writer.delete_obsolete_segments().map_err(|e| e.to_string())?;
        self.counters
            .segments_deleted
            .fetch_add(deleted as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Take everything queued (the group of a group commit); `None` once closed and drained.
    #[cfg(not(madsim))]
    fn next_batch(&self) -> Option<(Vec<Pending>, u64)> {
        let mut queue = lock(&self.queue);
        loop {
            if !queue.items.is_empty() {
                return Some(Self::take_queued(&mut queue));
            }
            if queue.closed {
                return None;
            }
            queue = self.wakeup.wait(queue).expect("WAL lock poisoned");
        }
    }

    /// Under madsim there is no flusher thread: `Wal::schedule_flush` calls this to write and
    /// sync everything queued as one group.
    #[cfg(madsim)]
    fn flush_queued(&self) {
        let (batch, through) = Self::take_queued(&mut lock(&self.queue));
        if !batch.is_empty() {
            self.flush(batch, through);
        }
    }
}

/// The node's WAL. Shards get their openraft log store from [`Wal::log_store`].
pub struct Wal {
    shared: Arc<Shared>,
    admission: Arc<Semaphore>,
    pending_bytes_max: usize,
    shards: Mutex<BTreeMap<ShardId, Arc<Mutex<ShardState>>>>,
    /// The thread that writes and fdatasyncs, so the blocking call never stalls the runtime.
    #[cfg(not(madsim))]
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Wal {
    /// Replay every segment, cut a torn tail, start a fresh segment and start the writer.
    pub fn open(backend: impl WalBackend, options: WalOptions) -> Result<Arc<Wal>, WalError> {
        options.validate()?;
        let backend: Arc<dyn WalBackend> = Arc::new(backend);
        let mut writer = Writer {
            backend: backend.clone(),
            segment_bytes_max: options.segment_bytes_max,
            segments: BTreeSet::new(),
            active: 0,
            active_bytes: 0,
            shards: BTreeMap::new(),
        };
        let states = replay(&mut writer)?;
        let next_segment = writer.segments.last().map_or(1, |last| last + 1);
        writer.start_segment(next_segment)?;
        writer.delete_obsolete_segments()?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            #[cfg(not(madsim))]
            wakeup: std::sync::Condvar::new(),
            writer: Mutex::new(writer),
            counters: Counters::default(),
            instruments: WalInstruments::default(),
            durable_total: AtomicU64::new(0),
            #[cfg(madsim)]
            flush_scheduled: std::sync::atomic::AtomicBool::new(false),
        });
        let shards = states
            .into_iter()
            .map(|(shard, state)| (shard, Arc::new(Mutex::new(state))))
            .collect();
        Ok(Arc::new(Wal {
            #[cfg(not(madsim))]
            flusher: Mutex::new(Some(spawn_flusher(shared.clone())?)),
            shared,
            admission: Arc::new(Semaphore::new(options.pending_bytes_max)),
            pending_bytes_max: options.pending_bytes_max,
            shards: Mutex::new(shards),
        }))
    }

    /// The openraft log store of one shard. Call it once per shard: two stores of the same
    /// shard would interleave their writes.
    pub fn log_store(self: &Arc<Self>, shard: ShardId) -> ShardLogStore {
        let state = lock(&self.shards).entry(shard).or_default().clone();
        ShardLogStore::new(self.clone(), shard, state)
    }

    /// Every shard with anything in the log.
    pub fn shards(&self) -> Vec<ShardId> {
        lock(&self.shards).keys().copied().collect()
    }

    /// The fdatasync histograms (shared: what the writer records, a scrape reads).
    pub fn instruments(&self) -> WalInstruments {
        self.shared.instruments.clone()
    }

    pub fn stats(&self) -> WalStats {
        let counters = &self.shared.counters;
        WalStats {
            syncs: counters.syncs.load(Ordering::Relaxed),
            records: counters.records.load(Ordering::Relaxed),
            bytes_written: counters.bytes_written.load(Ordering::Relaxed),
            segments_deleted: counters.segments_deleted.load(Ordering::Relaxed),
        }
    }

    /// Segments on disk, ascending.
    pub fn segments(&self) -> Vec<SegmentId> {
        lock(&self.shared.writer).segments.iter().copied().collect()
    }

    /// Wait for room in the pending queue for a record of `len` bytes. A record larger than the
    /// whole bound takes all of it (it is never refused for size here).
    pub(crate) async fn admit(&self, len: usize) -> Result<OwnedSemaphorePermit, WalError> {
        let permits = u32::try_from(len.clamp(1, self.pending_bytes_max)).unwrap_or(u32::MAX);
        self.admission
            .clone()
            .acquire_many_owned(permits)
            .await
            .map_err(|_| WalError::Closed)
    }

    /// Queue an encoded record. The caller has already admitted it and updated the visible state.
    pub(crate) fn submit(
        &self,
        bytes: Vec<u8>,
        effect: Effect,
        completion: Completion,
        admission: OwnedSemaphorePermit,
    ) -> Result<(), WalError> {
        #[cfg(madsim)]
        let completion = if crate::simulation::planted(crate::simulation::PlantedBug::AckBeforeDurable) {
            completion.complete(Ok(()));
            Completion::None
        } else {
            completion
        };
        self.shared.enqueue(Pending {
            bytes,
            effect,
            completion,
            _admission: admission,
        })?;
        #[cfg(madsim)]
        self.schedule_flush();
        Ok(())
    }

    /// Under madsim there is no flusher thread. With an instant simulated disk the submitting
    /// task writes and syncs inline; with a slow one a task sleeps the disk's latency and then
    /// commits everything queued meanwhile as one group, so a node killed before that loses
    /// exactly the records nobody was told were durable.
    #[cfg(madsim)]
    fn schedule_flush(&self) {
        let latency = lock(&self.shared.writer).backend.simulated_sync_latency();
        if latency.is_zero() {
            self.shared.flush_queued();
            return;
        }
        if self.shared.flush_scheduled.swap(true, Ordering::SeqCst) {
            return;
        }
        let shared = self.shared.clone();
        tokio::spawn(async move {
            tokio::time::sleep(latency).await;
            shared.flush_scheduled.store(false, Ordering::SeqCst);
            shared.flush_queued();
        });
    }

    /// Encode `record`, admit it and queue it; returns the receiver told when it is durable.
    pub(crate) async fn write_and_notify(
        &self,
        record: &Record,
    ) -> Result<oneshot::Receiver<Result<(), io::Error>>, WalError> {
        let bytes = record::encode(record).map_err(|e| WalError::Encode(e.to_string()))?;
        let admission = self.admit(bytes.len()).await?;
        let (sender, receiver) = oneshot::channel();
        self.submit(bytes, Effect::of(record), Completion::Notify(sender), admission)?;
        Ok(receiver)
    }

    /// Wait until everything queued so far is durable (a barrier, e.g. before reporting a purge).
    pub async fn sync(&self) -> Result<(), WalError> {
        let admission = self.admit(0).await?;
        let (sender, receiver) = oneshot::channel();
        self.submit(Vec::new(), Effect::Nothing, Completion::Notify(sender), admission)?;
        receiver.await.map_err(|_| WalError::Closed)?.map_err(WalError::Io)
    }

    /// Wait until every record queued before this call is durable. Unlike [`Wal::sync`] it
    /// costs nothing when they are durable already (the usual case); otherwise it is a `sync`,
    /// whose empty record joins the group commit already due.
    pub async fn wait_durable(&self) -> Result<(), WalError> {
        let target = lock(&self.shared.queue).queued_total;
        if self.shared.durable_total.load(Ordering::SeqCst) >= target {
            return Ok(());
        }
        self.sync().await
    }

    /// Encode `record`, admit it and queue it without waiting for durability.
    pub(crate) async fn write(&self, record: &Record) -> Result<(), WalError> {
        let bytes = record::encode(record).map_err(|e| WalError::Encode(e.to_string()))?;
        let admission = self.admit(bytes.len()).await?;
        self.submit(bytes, Effect::of(record), Completion::None, admission)
    }
}

#[cfg(not(madsim))]
fn spawn_flusher(shared: Arc<Shared>) -> Result<std::thread::JoinHandle<()>, WalError> {
    let thread = std::thread::Builder::new().name("wal-flusher".into()).spawn(move || {
        while let Some((batch, through)) = shared.next_batch() {
            shared.flush(batch, through);
        }
    })?;
    Ok(thread)
}

impl Drop for Wal {
    /// Write what is queued, then stop the flusher (joined, so a reopen sees every write).
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        #[cfg(not(madsim))]
        {
            self.shared.wakeup.notify_all();
            if let Some(thread) = lock(&self.flusher).take()
                && thread.join().is_err()
            {
                tracing::error!("WAL flusher thread panicked");
            }
        }
    }
}

/// Replay every segment into per-shard state and the writer's bookkeeping.
fn replay(writer: &mut Writer) -> Result<BTreeMap<ShardId, ShardState>, WalError> {
    let mut states: BTreeMap<ShardId, ShardState> = BTreeMap::new();
    let segments = writer.backend.list_segments()?;
    for (position, segment) in segments.iter().enumerate() {
        let is_last = position + 1 == segments.len();
        if replay_segment(writer, &mut states, *segment, is_last)? {
            writer.segments.insert(*segment);
        }
    }
    Ok(states)
}

/// Replay one segment; returns false if it was a torn, empty last segment and was removed.
fn replay_segment(
    writer: &mut Writer,
    states: &mut BTreeMap<ShardId, ShardState>,
    segment: SegmentId,
    is_last: bool,
) -> Result<bool, WalError> {
    let bytes = writer.backend.read_segment(segment)?;
    if !record::header_is_valid(&bytes, segment) {
        let header = record::segment_header(segment);
        if is_last && header.starts_with(&bytes) {
            // Created but its header never became durable: it holds nothing.
            writer.backend.delete_segment(segment)?;
            return Ok(false);
        }
        if let Some(found) = record::header_version(&bytes).filter(|found| *found != record::FORMAT_VERSION) {
            return Err(WalError::UnsupportedVersion {
                segment,
                found,
                expected: record::FORMAT_VERSION,
            });
        }
        return Err(WalError::BadHeader { segment });
    }
    let mut offset = record::SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let (payload, used) = match record::check_frame(&bytes[offset..]) {
            Ok(frame) => frame,
            Err(reason) if is_last => {
                if let Some(valid_from) = valid_run_after(&bytes, offset) {
                    return Err(WalError::CorruptBeforeValid {
                        segment,
                        offset,
                        valid_from,
                        reason: reason.to_string(),
                    });
                }
                tracing::warn!(segment, offset, %reason, "cutting the torn tail of the WAL");
                writer.backend.truncate_segment(segment, offset as u64)?;
                break;
            }
            Err(_) => return Err(WalError::Corrupt { segment, offset }),
        };
        let record = record::decode_payload(payload).map_err(|e| WalError::Decode {
            segment,
            offset,
            reason: e.to_string(),
        })?;
        apply_replayed(writer, states, record, segment).map_err(|reason| WalError::Replay {
            segment,
            offset,
            reason,
        })?;
        offset += used;
    }
    Ok(true)
}

/// Where a run of valid records starts after the bad record at `bad`, if one does: the proof
/// that `bad` is corruption in the middle of the log, not the torn last write of a crash (a torn
/// write leaves a prefix of that write, maybe followed by bytes that never held data).
///
/// Every offset after `bad` is tried, since the corrupted field may be the bad record's own
/// length. A run starting inside the extent the bad record claims must reach the end of the
/// segment exactly: the bytes of a torn record can be anything a client sent, including the
/// shape of a record, but a run forged in them cannot know where the tear falls. A run starting
/// after a complete bad record may end in a torn record of its own (corruption, then a crash).
fn valid_run_after(bytes: &[u8], bad: usize) -> Option<usize> {
    let claimed_end = record::claimed_frame_bytes(&bytes[bad..])
        .map(|claimed| bad.saturating_add(claimed))
        .filter(|end| *end <= bytes.len());
    let mut runs = Runs {
        bytes,
        ends: BTreeMap::new(),
    };
    (bad + 1..bytes.len()).find(|&start| {
        if !record::may_be_frame(&bytes[start..]) {
            return false;
        }
        match runs.end_of_run_from(start) {
            Some(RunEnd::AtSegmentEnd) => true,
            Some(RunEnd::Torn) => claimed_end.is_some_and(|end| start >= end),
            Some(RunEnd::Broken) | None => false,
        }
    })
}

/// How a run of valid records (one following another) ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunEnd {
    /// Exactly at the end of the segment.
    AtSegmentEnd,
    /// With a record that runs past the end of the segment.
    Torn,
    /// With a record that fails its checks within the segment.
    Broken,
}

/// The runs of records in one segment's bytes, each walked once: a run through a record ends
/// where the run from that record ends, so the search stays linear in the segment's size.
struct Runs<'a> {
    bytes: &'a [u8],
    /// How the run from each valid record walked so far ends.
    ends: BTreeMap<usize, RunEnd>,
}

impl Runs<'_> {
    /// How the run of records from `start` ends; `None` if no valid record starts there.
    fn end_of_run_from(&mut self, start: usize) -> Option<RunEnd> {
        let mut walked = Vec::new();
        let mut offset = start;
        let end = loop {
            if let Some(known) = self.ends.get(&offset) {
                break *known;
            }
            if offset == self.bytes.len() {
                break RunEnd::AtSegmentEnd;
            }
            match record::check_frame(&self.bytes[offset..]) {
                Ok((payload, used)) if record::decode_payload(payload).is_ok() => {
                    walked.push(offset);
                    offset += used;
                }
                Err(record::DecodeError::Torn) => break RunEnd::Torn,
                _ => break RunEnd::Broken,
            }
        };
        if walked.is_empty() && !self.ends.contains_key(&start) {
            return None;
        }
        for record_at in walked {
            self.ends.insert(record_at, end);
        }
        Some(end)
    }
}

fn apply_replayed(
    writer: &mut Writer,
    states: &mut BTreeMap<ShardId, ShardState>,
    record: Record,
    segment: SegmentId,
) -> Result<(), String> {
    let effect = Effect::of(&record);
    writer.apply(&effect, segment);
    let shard = match &record {
        Record::Append { shard, .. }
        | Record::TruncateAfter { shard, .. }
        | Record::Purge { shard, .. }
        | Record::SaveVote { shard, .. }
        | Record::SaveCommitted { shard, .. } => *shard,
    };
    states.entry(shard).or_default().apply(record)
}
