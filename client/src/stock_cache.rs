//! [`StockCache`]: the counts of one SKU range kept up to date from the ledger's own Watch
//! stream, for product pages (the CDN/Redis layer of a classic flash-sale stack, except that it
//! can only ever show committed values).
//!
//! A background task holds one Watch stream with progress marks
//! ([`crate::Client::watch_events`]). Changes are held aside until the mark that covers them
//! arrives; a mark `P` means every change in range at or below `P` has been received, so once
//! the held changes at or below `P` are applied (per SKU the newest wins) **every count the cache
//! serves is that SKU's committed state at the cache's index `P`** — never a mixture, never a
//! value from past the index it states (what [`Staleness::index`] reports).
//!
//! When the stream ends, fails or stays silent past `stale_after` (a hung node), the task opens
//! another one from the cache's index, through the client's routing (leader, else the other
//! replicas), so a killed node or a leader change costs a reconnect, not a reload. Meanwhile
//! [`StockCache::get`] keeps answering from the last synced values with their growing
//! [`Staleness::age`] and `live == false`, and [`StockCache::read`] falls back to a stale read
//! from any replica when that one is newer.
//!
//! Bounded: the cache holds the range's SKUs only, at most `skus_max` of them (a range with more
//! stops the cache with an error rather than growing without bound), and changes held aside are
//! one per SKU. The range must lie within one shard; a split of that shard is not followed (the
//! cache keeps serving its last values and reports the stream down).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::{Client, ClientError, Consistency, StockChange, WatchEvent, WatchProgress};

/// Bounds and timings of a [`StockCache`].
#[derive(Debug, Clone)]
pub struct StockCacheOptions {
    /// How often the node sends a progress mark while nothing changes (it also sends one after
    /// every burst of changes).
    pub progress_interval_ms: u64,
    /// A stream silent this long counts as down: it is dropped and another one opened, and
    /// [`StockCache::read`] falls back to a stale read. At least twice `progress_interval_ms`.
    pub stale_after_ms: u64,
    /// First wait before reopening a failed stream; doubles up to `reconnect_backoff_ms_max`.
    pub reconnect_backoff_ms_initial: u64,
    pub reconnect_backoff_ms_max: u64,
    /// Most SKUs the cache holds; past it the cache stops with an error (bounded memory).
    pub skus_max: usize,
}

impl Default for StockCacheOptions {
    fn default() -> Self {
        StockCacheOptions {
            progress_interval_ms: 100,
            stale_after_ms: 1_000,
            reconnect_backoff_ms_initial: 50,
            reconnect_backoff_ms_max: 1_000,
            skus_max: 100_000,
        }
    }
}

impl StockCacheOptions {
    /// Rejects options no cache could run under, naming the field.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |field: &str, why: &str| Err(ClientError::Config(format!("stock cache {field}: {why}")));
        if self.progress_interval_ms == 0 || self.progress_interval_ms > 60_000 {
            return bad("progress_interval_ms", "must be in 1..=60000");
        }
        if self.stale_after_ms < 2 * self.progress_interval_ms {
            return bad("stale_after_ms", "must be at least twice progress_interval_ms");
        }
        if self.reconnect_backoff_ms_initial == 0 || self.reconnect_backoff_ms_max < self.reconnect_backoff_ms_initial {
            return bad(
                "reconnect_backoff_ms_initial",
                "must be positive and at most reconnect_backoff_ms_max",
            );
        }
        if self.skus_max == 0 {
            return bad("skus_max", "must be positive");
        }
        Ok(())
    }
}

/// How fresh a cached answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staleness {
    /// The shard log index the counts are the committed state at.
    pub index: u64,
    /// The leader's time stamped on the entry at `index` (ms since the Unix epoch; 0 unknown).
    pub log_time_ms: u64,
    /// How long since the cache last heard from a live stream (a change or a progress mark);
    /// `None` for an answer from a stale read, whose serving replica's delay is unknown.
    pub age: Option<Duration>,
    /// A stream is open and has spoken within `stale_after_ms`.
    pub live: bool,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSource {
    /// The cache's own synced values.
    Cache,
    /// A stale read from some replica, because the stream was down and the replica was ahead.
    StaleRead,
}

/// A SKU's counts as the cache serves them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedStock {
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    pub staleness: Staleness,
    pub source: CacheSource,
}

/// One SKU's counts and the index they were received at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    total: i64,
    available: i64,
    reserved: i64,
    sold: i64,
    /// The index of the change (or current-state read) these counts came with.
    received_at: u64,
}

impl Counts {
    fn of(change: &StockChange) -> Counts {
        Counts {
            total: change.total,
            available: change.available,
            reserved: change.reserved,
            sold: change.sold,
            received_at: change.log_index,
        }
    }
}

/// What the background task maintains and the handles read.
#[derive(Debug, Default)]
struct CacheState {
    /// Every SKU's committed state at `index`.
    synced: BTreeMap<Vec<u8>, Counts>,
    /// Changes received past the last mark, newest per SKU; applied by the mark covering them.
    held: BTreeMap<Vec<u8>, Counts>,
    /// 0 until the first mark.
    index: u64,
    log_time_ms: u64,
    /// When a live stream last spoke.
    last_heard: Option<Instant>,
    /// A stream is open now.
    connected: bool,
    /// Streams opened after the first.
    reconnects: u64,
    /// Why the last stream ended or could not be opened.
    last_error: Option<String>,
    /// Set when the cache gave up for good (range too large).
    failed: Option<String>,
}

impl CacheState {
    /// A change, held aside until a mark covers it, unless the cache already has it or newer.
    fn receive_change(&mut self, change: &StockChange) {
        let known = |counts: Option<&Counts>| counts.map_or(0, |counts| counts.received_at);
        let newest = known(self.synced.get(&change.sku)).max(known(self.held.get(&change.sku)));
        if change.log_index > newest {
            self.held.insert(change.sku.clone(), Counts::of(change));
        }
    }

    /// A mark: the held changes at or below it become the synced state at its index.
    fn receive_progress(&mut self, progress: &WatchProgress, skus_max: usize) {
        let covered: Vec<Vec<u8>> = self
            .held
            .iter()
            .filter(|(_, counts)| counts.received_at <= progress.log_index)
            .map(|(sku, _)| sku.clone())
            .collect();
        for sku in covered {
            if let Some(counts) = self.held.remove(&sku) {
                let newer = self
                    .synced
                    .get(&sku)
                    .is_none_or(|synced| counts.received_at > synced.received_at);
                if newer {
                    self.synced.insert(sku, counts);
                }
            }
        }
        if self.synced.len() + self.held.len() > skus_max {
            self.failed = Some(format!(
                "the watched range holds more than skus_max = {skus_max} SKUs; watch a narrower range"
            ));
        }
        // A replica behind the cache (after a reconnect) may mark an older index: the cache
        // stays at its own, which its values still are the state at.
        if progress.log_index >= self.index {
            self.index = progress.log_index;
            self.log_time_ms = progress.log_time_ms;
        }
    }

    fn staleness(&self, now: Instant, stale_after: Duration) -> Staleness {
        let age = self.last_heard.map(|heard| now.saturating_duration_since(heard));
        Staleness {
            index: self.index,
            log_time_ms: self.log_time_ms,
            age,
            live: self.connected && age.is_some_and(|age| age <= stale_after),
        }
    }
}

/// What the handles share with the background task.
#[derive(Debug)]
struct Shared {
    state: Mutex<CacheState>,
    options: StockCacheOptions,
    start: Vec<u8>,
    end: Vec<u8>,
    /// The shard the range lies in: marks and changes of other shards on the node are ignored.
    shard_id: u64,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn stale_after(&self) -> Duration {
        Duration::from_millis(self.options.stale_after_ms)
    }
}

/// Stops the background task when the last handle goes.
#[derive(Debug)]
struct TaskGuard(tokio::task::JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A live cache of the counts of SKUs in `[start, end)`. Cheap to clone; all clones share one
/// stream and one map, and the stream closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct StockCache {
    shared: Arc<Shared>,
    client: Client,
    _task: Arc<TaskGuard>,
}

/// Counters of a cache's stream, for dashboards and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockCacheStatus {
    pub staleness: Staleness,
    /// SKUs with synced counts.
    pub skus: usize,
    /// Streams opened after the first.
    pub reconnects: u64,
    /// Why the last stream ended, or could not be opened.
    pub last_error: Option<String>,
    /// Why the cache stopped for good, if it did.
    pub failed: Option<String>,
}

impl StockCache {
    /// Starts a cache of `[start, end)` (empty `end`: to the end of the shard) fed by `client`.
    /// The range must lie within one shard. Returns at once; [`StockCache::wait_synced`] waits
    /// for the first mark.
    pub fn start(
        client: &Client,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        options: StockCacheOptions,
    ) -> Result<StockCache, ClientError> {
        options.validate()?;
        let (start, end) = (start.as_ref().to_vec(), end.as_ref().to_vec());
        let map = client.shard_map();
        let shard = map.shard_for(&start).ok_or_else(|| {
            ClientError::InvalidArgument(format!("no shard covers {:?}", String::from_utf8_lossy(&start)))
        })?;
        let crosses = !shard.end.is_empty() && (end.is_empty() || end > shard.end);
        if crosses || (!end.is_empty() && end <= start) {
            return Err(ClientError::InvalidArgument(format!(
                "stock cache range must be non-empty and lie within one shard (shard {} ends at {:?})",
                shard.shard_id,
                String::from_utf8_lossy(&shard.end)
            )));
        }
        // Empty `end` in a bounded shard: the rest of the shard.
        let end = if end.is_empty() { shard.end.clone() } else { end };
        let shared = Arc::new(Shared {
            state: Mutex::new(CacheState::default()),
            options,
            start,
            end,
            shard_id: shard.shard_id,
        });
        let task = tokio::spawn(follow(client.clone(), shared.clone()));
        Ok(StockCache {
            shared,
            client: client.clone(),
            _task: Arc::new(TaskGuard(task)),
        })
    }

    /// The counts of `sku` from the cache (never a network call): `None` when the SKU is not in
    /// the range, was not on sale at the cache's index, or the cache has not synced yet. While
    /// the stream is down this keeps answering with the last synced values, `live == false`.
    pub fn get(&self, sku: impl AsRef<[u8]>) -> Option<CachedStock> {
        let now = Instant::now();
        let state = self.shared.state();
        if state.index == 0 {
            return None;
        }
        let counts = state.synced.get(sku.as_ref())?;
        Some(CachedStock {
            total: counts.total,
            available: counts.available,
            reserved: counts.reserved,
            sold: counts.sold,
            staleness: state.staleness(now, self.shared.stale_after()),
            source: CacheSource::Cache,
        })
    }

    /// [`StockCache::get`], falling back to a stale read from any replica when the stream has
    /// been down past `stale_after_ms` (or never synced) and that replica is ahead of the cache.
    /// Errors only when neither the cache nor any replica can answer.
    pub async fn read(&self, sku: impl AsRef<[u8]>) -> Result<Option<CachedStock>, ClientError> {
        let sku = sku.as_ref();
        if !self.covers(sku) {
            return Err(ClientError::InvalidArgument(format!(
                "sku {:?} is outside the cached range",
                String::from_utf8_lossy(sku)
            )));
        }
        let status = self.status();
        if status.staleness.live && status.staleness.index > 0 {
            return Ok(self.get(sku));
        }
        let cached = self.get(sku);
        let read = self
            .client
            .get_stock(
                sku,
                Consistency::Stale {
                    max_lag_entries: u64::MAX,
                },
            )
            .await;
        match read {
            Ok(Some(stock)) if stock.log_index > status.staleness.index => Ok(Some(CachedStock {
                total: stock.total,
                available: stock.available,
                reserved: stock.reserved,
                sold: stock.sold,
                staleness: Staleness {
                    index: stock.log_index,
                    log_time_ms: 0,
                    age: None,
                    live: false,
                },
                source: CacheSource::StaleRead,
            })),
            Ok(None) if status.staleness.index == 0 => Ok(None),
            Ok(_) => Ok(cached),
            Err(error) if status.staleness.index == 0 => Err(error),
            Err(_) => Ok(cached),
        }
    }

    /// The cache's index, age and stream counters.
    pub fn status(&self) -> StockCacheStatus {
        let now = Instant::now();
        let state = self.shared.state();
        StockCacheStatus {
            staleness: state.staleness(now, self.shared.stale_after()),
            skus: state.synced.len(),
            reconnects: state.reconnects,
            last_error: state.last_error.clone(),
            failed: state.failed.clone(),
        }
    }

    /// Waits until the cache is synced at `index` or later (0: synced at all), up to `within`;
    /// returns the status it saw last.
    pub async fn wait_synced(&self, index: u64, within: Duration) -> Result<StockCacheStatus, ClientError> {
        let deadline = Instant::now() + within;
        loop {
            let status = self.status();
            if let Some(failed) = &status.failed {
                return Err(ClientError::Config(failed.clone()));
            }
            if status.staleness.index > 0 && status.staleness.index >= index {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { attempts: 0 });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn covers(&self, sku: &[u8]) -> bool {
        sku >= self.shared.start.as_slice() && (self.shared.end.is_empty() || sku < self.shared.end.as_slice())
    }
}

/// The background task: keeps one stream open from the cache's index, forever (until the last
/// handle drops it, or the range proves too large).
async fn follow(client: Client, shared: Arc<Shared>) {
    let options = shared.options.clone();
    let progress_interval = Duration::from_millis(options.progress_interval_ms);
    let mut backoff = Duration::from_millis(options.reconnect_backoff_ms_initial);
    let mut opened_before = false;
    loop {
        let from_index = shared.state().index;
        match client
            .watch_events(&shared.start, &shared.end, from_index, progress_interval)
            .await
        {
            Ok(mut events) => {
                {
                    let mut state = shared.state();
                    state.connected = true;
                    state.held.clear();
                    if opened_before {
                        state.reconnects += 1;
                    }
                }
                opened_before = true;
                let ended = consume(&mut events, &shared).await;
                let mut state = shared.state();
                state.connected = false;
                if state.failed.is_some() {
                    return;
                }
                if ended.heard_any {
                    backoff = Duration::from_millis(options.reconnect_backoff_ms_initial);
                }
                state.last_error = Some(ended.why);
            }
            Err(error) => shared.state().last_error = Some(error.to_string()),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_millis(options.reconnect_backoff_ms_max));
    }
}

/// Why a stream was left.
struct StreamEnded {
    why: String,
    /// It delivered something (a working stream: reconnect without growing the backoff).
    heard_any: bool,
}

/// Applies one stream's events until it ends, fails, or says nothing of the cached shard for
/// `stale_after_ms` (a hung node, or a replica that lost touch with its leader: other shards'
/// marks on the same stream do not count).
async fn consume(events: &mut crate::WatchEvents, shared: &Shared) -> StreamEnded {
    let mut heard_any = false;
    let mut last_heard = Instant::now();
    loop {
        let remaining = shared.stale_after().saturating_sub(last_heard.elapsed());
        let why = match tokio::time::timeout(remaining, events.next_event()).await {
            Err(_) => format!(
                "no word of shard {} for {} ms",
                shared.shard_id, shared.options.stale_after_ms
            ),
            Ok(None) => "stream ended".to_string(),
            Ok(Some(Err(error))) => error.to_string(),
            Ok(Some(Ok(event))) => {
                let mut state = shared.state();
                let heard = match event {
                    WatchEvent::Change(change) if change.shard_id == shared.shard_id => {
                        state.receive_change(&change);
                        true
                    }
                    WatchEvent::Progress(progress) if progress.shard_id == shared.shard_id => {
                        state.receive_progress(&progress, shared.options.skus_max);
                        true
                    }
                    // Another shard on the same node: its indexes count in another log.
                    WatchEvent::Change(_) | WatchEvent::Progress(_) => false,
                };
                if heard {
                    heard_any = true;
                    last_heard = Instant::now();
                    state.last_heard = Some(last_heard);
                }
                match &state.failed {
                    Some(failed) => failed.clone(),
                    None => continue,
                }
            }
        };
        return StreamEnded { why, heard_any };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(sku: &str, sold: i64, log_index: u64) -> StockChange {
        StockChange {
            sku: sku.as_bytes().to_vec(),
            total: 10,
            available: 10 - sold,
            reserved: 0,
            sold,
            log_index,
            shard_id: 1,
        }
    }

    fn mark(log_index: u64) -> WatchProgress {
        WatchProgress {
            shard_id: 1,
            log_index,
            log_time_ms: 1_000 + log_index,
        }
    }

    fn sold(state: &CacheState, sku: &str) -> Option<i64> {
        state.synced.get(sku.as_bytes()).map(|counts| counts.sold)
    }

    #[test]
    fn changes_wait_for_the_mark_that_covers_them() {
        let mut state = CacheState::default();
        state.receive_change(&change("a", 1, 5));
        assert_eq!(sold(&state, "a"), None, "not served before a mark covers it");
        state.receive_change(&change("a", 2, 7));
        state.receive_progress(&mark(6), 10);
        assert_eq!(
            (sold(&state, "a"), state.index),
            (None, 6),
            "only the newest change is held, and it is past 6"
        );
        state.receive_progress(&mark(7), 10);
        assert_eq!((sold(&state, "a"), state.index, state.log_time_ms), (Some(2), 7, 1_007));
    }

    #[test]
    fn an_older_value_never_replaces_a_newer_one() {
        let mut state = CacheState::default();
        state.receive_change(&change("a", 3, 9));
        state.receive_progress(&mark(9), 10);
        // A replica behind the cache (a reconnect) sends its current state and an older mark.
        state.receive_change(&change("a", 1, 4));
        state.receive_progress(&mark(4), 10);
        assert_eq!((sold(&state, "a"), state.index), (Some(3), 9));
    }

    #[test]
    fn a_range_past_the_bound_stops_the_cache() {
        let mut state = CacheState::default();
        for (n, sku) in ["a", "b", "c"].into_iter().enumerate() {
            state.receive_change(&change(sku, 0, n as u64 + 1));
        }
        state.receive_progress(&mark(3), 2);
        assert!(state.failed.as_deref().is_some_and(|why| why.contains("skus_max")));
    }

    #[test]
    fn options_name_the_bad_field() {
        let options = StockCacheOptions {
            stale_after_ms: 100,
            ..StockCacheOptions::default()
        };
        let error = options.validate().unwrap_err();
        assert!(error.to_string().contains("stale_after_ms"), "{error}");
        assert!(StockCacheOptions::default().validate().is_ok());
    }
}
