//! Tests of the WAL and the shard log store over the simulated disk: durability across
//! crashes, torn tails, truncation and purge across reopen, segment deletion, many shards, and
//! a proptest of random operation sequences against a `BTreeMap` model.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::type_config::TypeConfigExt;
use proptest::prelude::*;

use crate::storage::MemoryBackend;
use crate::storage::ShardLogStore;
use crate::storage::Wal;
use crate::storage::WalError;
use crate::storage::WalOptions;
use crate::storage::record;
use crate::storage::record::Record;
use crate::types::Entry;
use crate::types::LogId;
use crate::types::ShardId;
use crate::types::TypeConfig;
use crate::types::Vote;

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry::new_blank(log_id(term, index))
}

fn blanks(term: u64, indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
    indexes.map(|index| blank(term, index)).collect()
}

fn open(disk: &MemoryBackend) -> Arc<Wal> {
    open_with(disk, WalOptions::default())
}

fn open_with(disk: &MemoryBackend, options: WalOptions) -> Arc<Wal> {
    Wal::open(disk.clone(), options).expect("WAL opens")
}

/// Append and wait for the `IOFlushed` callback, returning what it reported.
async fn append(store: &mut ShardLogStore, entries: Vec<Entry>) -> io::Result<()> {
    let (sender, receiver) = TypeConfig::oneshot();
    store.append(entries, IOFlushed::signal(sender)).await?;
    receiver.await.map_err(|_| io::Error::other("callback dropped"))?
}

async fn indexes(store: &mut ShardLogStore) -> Vec<(u64, u64)> {
    let entries = store.try_get_log_entries(..).await.expect("reads");
    entries.iter().map(|e| (e.log_id().leader_id.term, e.index())).collect()
}

#[test]
fn append_then_read_back_after_reopen() {
    TypeConfig::run(async {
        let disk = MemoryBackend::new();
        let wal = open(&disk);
        let mut store = wal.log_store(1);
        append(&mut store, blanks(1, 1..=10)).await.expect("append");
        assert_eq!(store.try_get_log_entries(3..5).await.expect("reads"), blanks(1, 3..=4));
        drop((store, wal));
        disk.crash();

        let wal = open(&disk);
        let mut store = wal.log_store(1);
        assert_eq!(store.try_get_log_entries(..).await.expect("reads"), blanks(1, 1..=10));
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id, Some(log_id(1, 10)));
        assert_eq!(state.last_purged_log_id, None);
    });
}

#[test]
fn a_crash_loses_only_writes_whose_callback_never_succeeded() {
    TypeConfig::run(async {
        let disk = MemoryBackend::new();
        let wal = open(&disk);
        let mut store = wal.log_store(1);
        append(&mut store, blanks(1, 1..=5)).await.expect("durable append");

        disk.set_fail_syncs(true);
        let failed = append(&mut store, blanks(1, 6..=6)).await;
        assert!(failed.is_err(), "a failed fdatasync is reported through the callback");
        let refused = append(&mut store, blanks(1, 7..=7)).await;
        assert!(refused.is_err(), "a WAL whose fdatasync failed refuses later writes");
        drop((store, wal));
        disk.crash();
        disk.set_fail_syncs(false);

        let wal = open(&disk);
        let mut store = wal.log_store(1);
        assert_eq!(store.try_get_log_entries(..).await.expect("reads"), blanks(1, 1..=5));
    });
}

/// Write entries 1..=5 as five records of shard 1 and close the WAL; returns the segment.
fn five_records(disk: &MemoryBackend) -> u64 {
    TypeConfig::run(async {
        let wal = open(disk);
        let mut store = wal.log_store(1);
        for index in 1..=5 {
            append(&mut store, blanks(1, index..=index)).await.expect("append");
        }
        *wal.segments().last().expect("a segment")
    })
}

fn entries_after_reopen(disk: &MemoryBackend) -> Vec<Entry> {
    TypeConfig::run(async {
        let wal = open(disk);
        let mut store = wal.log_store(1);
        store.try_get_log_entries(..).await.expect("reads")
    })
}

#[test]
fn a_torn_last_record_is_cut_and_everything_before_survives() {
    use crate::storage::WalBackend;
    for cut_bytes in [1, 5, 9, 20] {
        let disk = MemoryBackend::new();
        let segment = five_records(&disk);
        let len = disk.segment_len(segment).expect("segment exists");
        disk.truncate_segment(segment, (len - cut_bytes) as u64)
            .expect("truncates");
        assert_eq!(entries_after_reopen(&disk), blanks(1, 1..=4), "cut {cut_bytes} bytes");
        // The cut is durable: a second reopen sees the same log.
        assert_eq!(entries_after_reopen(&disk), blanks(1, 1..=4));
    }
}

#[test]
fn a_flipped_byte_in_the_last_record_is_cut() {
    for from_end in [1, 10, 30] {
        let disk = MemoryBackend::new();
        let segment = five_records(&disk);
        let len = disk.segment_len(segment).expect("segment exists");
        disk.flip_byte(segment, len - from_end).expect("flips");
        assert_eq!(
            entries_after_reopen(&disk),
            blanks(1, 1..=4),
            "flip at end - {from_end}"
        );
    }
}

#[test]
fn a_last_segment_with_a_torn_header_is_removed() {
    use crate::storage::WalBackend;
    let disk = MemoryBackend::new();
    let segment = five_records(&disk);
    let next = segment + 10;
    disk.create_segment(next).expect("creates");
    disk.append(next, &record::segment_header(next)[..5]).expect("appends");
    disk.sync(next).expect("syncs");
    assert_eq!(entries_after_reopen(&disk), blanks(1, 1..=5));
    assert!(disk.segment_len(next).is_none(), "the headerless segment is gone");
}

#[test]
fn corruption_in_an_older_segment_is_an_error() {
    let disk = MemoryBackend::new();
    let segment = five_records(&disk);
    // Reopening starts a newer segment, so `segment` is no longer the last one.
    assert_eq!(entries_after_reopen(&disk), blanks(1, 1..=5));
    disk.flip_byte(segment, record::SEGMENT_HEADER_BYTES + 12)
        .expect("flips");
    match Wal::open(disk.clone(), WalOptions::default()) {
        Err(WalError::Corrupt { segment: bad, offset }) => {
            assert_eq!((bad, offset), (segment, record::SEGMENT_HEADER_BYTES));
        }
        other => panic!("expected Corrupt, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn a_segment_of_another_format_version_is_refused_naming_both_versions() {
    let disk = MemoryBackend::new();
    let segment = five_records(&disk);
    // Another version byte, as a segment an older build wrote has: refused, never cut or
    // removed as a torn header.
    disk.flip_byte(segment, 4).expect("flips");
    match Wal::open(disk.clone(), WalOptions::default()) {
        Err(WalError::UnsupportedVersion {
            segment: bad,
            found,
            expected,
        }) => {
            assert_eq!((bad, expected), (segment, record::FORMAT_VERSION));
            assert_ne!(found, record::FORMAT_VERSION);
        }
        other => panic!("expected UnsupportedVersion, got {:?}", other.map(|_| ())),
    }
    assert!(disk.segment_len(segment).is_some(), "nothing was deleted");
}

/// The offset of every record of `segment`, in order (every record must be valid).
fn record_offsets(disk: &MemoryBackend, segment: u64) -> Vec<usize> {
    use crate::storage::WalBackend;
    let bytes = disk.read_segment(segment).expect("reads");
    let mut offsets = Vec::new();
    let mut offset = record::SEGMENT_HEADER_BYTES;
    while offset < bytes.len() {
        let (_, used) = record::check_frame(&bytes[offset..]).expect("a valid record");
        offsets.push(offset);
        offset += used;
    }
    offsets
}

/// Opening must fail with `CorruptBeforeValid` at `offset`, valid records from `valid_from`,
/// and leave the segment byte for byte as it was (the evidence is kept, nothing is cut).
fn assert_refused_uncut(disk: &MemoryBackend, segment: u64, offset: usize, valid_from: usize, case: &str) {
    use crate::storage::WalBackend;
    let before = disk.read_segment(segment).expect("reads");
    for attempt in 0..2 {
        match Wal::open(disk.clone(), WalOptions::default()) {
            Err(error @ WalError::CorruptBeforeValid { .. }) => {
                let WalError::CorruptBeforeValid {
                    segment: bad_segment,
                    offset: bad_offset,
                    valid_from: found,
                    ..
                } = &error
                else {
                    unreachable!()
                };
                assert_eq!(
                    (*bad_segment, *bad_offset, *found),
                    (segment, offset, valid_from),
                    "{case}"
                );
                let message = error.to_string();
                assert!(
                    message.contains(&format!("segment {segment} at offset {offset}")),
                    "{case}: {message}"
                );
            }
            other => panic!(
                "{case}, attempt {attempt}: expected CorruptBeforeValid, got {:?}",
                other.map(|_| ())
            ),
        }
        assert_eq!(
            disk.read_segment(segment).expect("reads"),
            before,
            "{case}: nothing is cut"
        );
        assert_eq!(
            disk.list_segments().expect("lists"),
            vec![segment],
            "{case}: no segment is started"
        );
    }
}

#[test]
fn a_bad_record_followed_by_valid_ones_in_the_last_segment_refuses_to_open_and_cuts_nothing() {
    // Byte positions within a record: the length (low and high byte: a length that overruns
    // the next record, and one past the end of the segment), the CRC, the kind, the body.
    let positions = [
        (0, "length low byte"),
        (3, "length high byte"),
        (5, "crc"),
        (8, "kind"),
        (20, "body"),
    ];
    for bad in 0..4 {
        for (position, what) in positions {
            let disk = MemoryBackend::new();
            let segment = five_records(&disk);
            let offsets = record_offsets(&disk, segment);
            assert_eq!(offsets.len(), 5);
            disk.flip_byte(segment, offsets[bad] + position).expect("flips");
            let case = format!("record {bad}, {what}");
            assert_refused_uncut(&disk, segment, offsets[bad], offsets[bad + 1], &case);
        }
    }
}

#[test]
fn a_bad_record_then_valid_ones_then_a_torn_write_is_still_corruption() {
    use crate::storage::WalBackend;
    let disk = MemoryBackend::new();
    let segment = five_records(&disk);
    let offsets = record_offsets(&disk, segment);
    disk.flip_byte(segment, offsets[1] + 20).expect("flips");
    let len = disk.segment_len(segment).expect("segment exists");
    disk.truncate_segment(segment, (len - 5) as u64).expect("truncates");
    assert_refused_uncut(&disk, segment, offsets[1], offsets[2], "then a torn last record");
}

#[test]
fn a_zeroed_record_followed_by_valid_ones_is_corruption() {
    use crate::storage::WalBackend;
    let disk = MemoryBackend::new();
    let segment = five_records(&disk);
    let offsets = record_offsets(&disk, segment);
    let mut bytes = disk.read_segment(segment).expect("reads");
    bytes[offsets[2]..offsets[3]].fill(0);
    disk.truncate_segment(segment, 0).expect("truncates");
    disk.append(segment, &bytes).expect("appends");
    disk.sync(segment).expect("syncs");
    assert_refused_uncut(&disk, segment, offsets[2], offsets[3], "record 2 zeroed");
}

#[test]
fn a_last_record_followed_by_bytes_that_never_held_data_is_cut() {
    use crate::storage::WalBackend;
    // The file grew but the write never reached the disk: zeros (or a garbled copy) after it.
    for tail in [vec![0u8; 4096], vec![0xa5u8; 100]] {
        let disk = MemoryBackend::new();
        let segment = five_records(&disk);
        let offsets = record_offsets(&disk, segment);
        disk.flip_byte(segment, offsets[4] + 20).expect("flips");
        disk.append(segment, &tail).expect("appends");
        disk.sync(segment).expect("syncs");
        assert_eq!(
            entries_after_reopen(&disk),
            blanks(1, 1..=4),
            "tail of {} bytes",
            tail.len()
        );
    }
}

/// Entries 1..=5 in one segment, then entry 6, whose SKU holds a valid frame (a client can put
/// any bytes in a SKU), in a newer one; returns that segment, the frame and where it is.
fn a_record_holding_a_forged_frame(disk: &MemoryBackend) -> (u64, Vec<u8>, usize) {
    use crate::state_machine::command::CommandBody;
    use crate::state_machine::command::LogCommand;
    use crate::state_machine::command::Operation;
    use crate::state_machine::command::SaleRules;
    use crate::storage::WalBackend;
    let forged = record::encode(&Record::SaveVote {
        shard: 1,
        vote: Vote::new(9, 9),
    })
    .expect("encodes");
    five_records(disk);
    TypeConfig::run(async {
        let wal = open(disk);
        let mut store = wal.log_store(1);
        let entry = Entry {
            log_id: log_id(1, 6),
            payload: openraft::EntryPayload::Normal(LogCommand {
                timestamp_ms: 1,
                body: CommandBody::Batch(vec![Operation::PutSku {
                    sku: [forged.clone(), vec![0x5a; 40]].concat(),
                    total: 1,
                    rules: SaleRules::default(),
                }]),
            }),
        };
        append(&mut store, vec![entry]).await.expect("append");
    });
    let segment = *disk.list_segments().expect("lists").last().expect("a segment");
    let bytes = disk.read_segment(segment).expect("reads");
    let forged_at = bytes
        .windows(forged.len())
        .position(|window| window == forged.as_slice())
        .expect("the forged frame is in the log");
    (segment, forged, forged_at)
}

#[test]
fn a_torn_record_holding_the_shape_of_a_record_is_still_cut() {
    use crate::storage::WalBackend;
    // A crash tears the record after the forged frame: what is left of the record is not a
    // valid record following a bad one, so the tail is cut as any torn tail.
    for kept_after_forged in [1, 8, 20] {
        let disk = MemoryBackend::new();
        let (segment, forged, forged_at) = a_record_holding_a_forged_frame(&disk);
        disk.truncate_segment(segment, (forged_at + forged.len() + kept_after_forged) as u64)
            .expect("truncates");
        assert_eq!(
            entries_after_reopen(&disk),
            blanks(1, 1..=5),
            "{kept_after_forged} bytes kept after the forged frame"
        );
    }
}

#[test]
fn truncate_purge_vote_and_committed_survive_reopen() {
    TypeConfig::run(async {
        let disk = MemoryBackend::new();
        let wal = open(&disk);
        let mut store = wal.log_store(7);
        append(&mut store, blanks(1, 1..=10)).await.expect("append");
        store.truncate_after(Some(log_id(1, 6))).await.expect("truncate");
        store.purge(log_id(1, 3)).await.expect("purge");
        store.save_committed(Some(log_id(1, 5))).await.expect("committed");
        store.save_vote(&Vote::new(2, 1)).await.expect("vote");
        append(&mut store, blanks(2, 7..=8)).await.expect("append");
        drop((store, wal));
        disk.crash();

        let wal = open(&disk);
        let mut store = wal.log_store(7);
        assert_eq!(indexes(&mut store).await, vec![(1, 4), (1, 5), (1, 6), (2, 7), (2, 8)]);
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
        assert_eq!(state.last_log_id, Some(log_id(2, 8)));
        assert_eq!(store.read_vote().await.expect("vote"), Some(Vote::new(2, 1)));
        assert_eq!(store.read_committed().await.expect("committed"), Some(log_id(1, 5)));
    });
}

/// Found by the `wal_segment` fuzz target (docs/security.md, "Fuzzing"): a record naming the
/// last log index there is, u64::MAX, overflowed `index + 1` in replay (a panic with overflow
/// checks; without them a truncation after it dropped the whole log and a purge of it kept
/// everything). Truncating after it keeps everything, purging it purges everything.
#[test]
fn records_at_the_last_log_index_replay_without_overflow() {
    use crate::storage::WalBackend;
    let last = u64::MAX;
    let mut segment = record::segment_header(1).to_vec();
    for each in [
        Record::Append {
            shard: 1,
            entries: blanks(1, last - 1..=last),
        },
        Record::TruncateAfter {
            shard: 1,
            last_kept: Some(log_id(1, last)),
        },
        Record::Append {
            shard: 2,
            entries: blanks(1, last - 1..=last),
        },
        Record::Purge {
            shard: 2,
            upto: log_id(1, last),
        },
    ] {
        segment.extend(record::encode(&each).expect("encodes"));
    }
    let disk = MemoryBackend::new();
    disk.create_segment(1).expect("creates");
    disk.append(1, &segment).expect("appends");
    disk.sync(1).expect("syncs");
    for _reopen in 0..2 {
        TypeConfig::run(async {
            let wal = open(&disk);
            let mut kept = wal.log_store(1);
            assert_eq!(indexes(&mut kept).await, vec![(1, last - 1), (1, last)]);
            let mut purged = wal.log_store(2);
            assert_eq!(indexes(&mut purged).await, vec![]);
            let state = purged.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, Some(log_id(1, last)));
        });
    }
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes_max: 512,
        ..WalOptions::default()
    }
}

#[test]
fn segments_are_deleted_once_every_shard_purged_them() {
    TypeConfig::run(async {
        let disk = MemoryBackend::new();
        let wal = open_with(&disk, small_segments());
        let mut one = wal.log_store(1);
        let mut two = wal.log_store(2);
        for index in 1..=40 {
            append(&mut one, blanks(1, index..=index)).await.expect("append");
            append(&mut two, blanks(1, index..=index)).await.expect("append");
        }
        let before = wal.segments().len();
        assert!(before > 4, "small segments rotate: {before}");

        one.purge(log_id(1, 40)).await.expect("purge");
        wal.sync().await.expect("sync");
        assert_eq!(wal.stats().segments_deleted, 0, "shard 2 still needs every segment");

        two.save_vote(&Vote::new(3, 2)).await.expect("vote");
        two.purge(log_id(1, 39)).await.expect("purge");
        wal.sync().await.expect("sync");
        let after = wal.segments().len();
        assert!(after < before, "purged segments deleted: {before} -> {after}");
        assert!(wal.stats().segments_deleted > 0);
        drop((one, two, wal));
        disk.crash();

        let wal = open_with(&disk, small_segments());
        let mut one = wal.log_store(1);
        let mut two = wal.log_store(2);
        let state = one.get_log_state().await.expect("state");
        assert_eq!(
            (state.last_purged_log_id, state.last_log_id),
            (Some(log_id(1, 40)), Some(log_id(1, 40)))
        );
        assert_eq!(indexes(&mut two).await, vec![(1, 40)]);
        assert_eq!(two.read_vote().await.expect("vote"), Some(Vote::new(3, 2)));
    });
}

#[test]
fn many_shards_interleaved_share_fdatasyncs() {
    TypeConfig::run(async {
        let disk = MemoryBackend::new();
        let wal = open_with(&disk, small_segments());
        let shards: Vec<ShardId> = (1..=8).collect();
        let writers = shards.iter().map(|shard| {
            let mut store = wal.log_store(*shard);
            async move {
                for index in 1..=25 {
                    append(&mut store, blanks(*shard, index..=index)).await.expect("append");
                }
            }
        });
        futures::future::join_all(writers).await;
        let stats = wal.stats();
        assert_eq!(stats.records, 8 * 25);
        assert!(stats.syncs <= stats.records);
        drop(wal);
        disk.crash();

        let wal = open_with(&disk, small_segments());
        for shard in shards {
            let mut store = wal.log_store(shard);
            assert_eq!(
                store.try_get_log_entries(..).await.expect("reads"),
                blanks(shard, 1..=25)
            );
        }
    });
}

/// One step of the random sequences; `pick` chooses among what is valid at that point.
#[derive(Debug, Clone)]
enum Step {
    Append {
        shard: ShardId,
        count: u64,
        back: u64,
    },
    TruncateAfter {
        shard: ShardId,
        pick: u64,
    },
    Purge {
        shard: ShardId,
        pick: u64,
    },
    SaveVote {
        shard: ShardId,
    },
    /// An append whose fdatasync fails, then a crash that keeps `pick` of the unsynced bytes.
    FailedAppendThenCrash {
        shard: ShardId,
        pick: usize,
    },
    CrashAndReopen,
}

fn step() -> impl Strategy<Value = Step> {
    let shard = 0..3u64;
    prop_oneof![
        4 => (shard.clone(), 1..4u64, 0..3u64).prop_map(|(shard, count, back)| Step::Append { shard, count, back }),
        1 => (shard.clone(), any::<u64>()).prop_map(|(shard, pick)| Step::TruncateAfter { shard, pick }),
        1 => (shard.clone(), any::<u64>()).prop_map(|(shard, pick)| Step::Purge { shard, pick }),
        1 => shard.clone().prop_map(|shard| Step::SaveVote { shard }),
        1 => (shard, any::<usize>()).prop_map(|(shard, pick)| Step::FailedAppendThenCrash { shard, pick }),
        1 => Just(Step::CrashAndReopen),
    ]
}

/// What a shard's durable log must be.
#[derive(Debug, Default, Clone, PartialEq)]
struct ModelShard {
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    term: u64,
}

impl ModelShard {
    fn next_index(&self) -> u64 {
        self.entries
            .keys()
            .next_back()
            .map_or(self.last_purged.map_or(1, |p| p.index() + 1), |last| last + 1)
    }

    fn floor(&self) -> u64 {
        self.last_purged.map_or(1, |p| p.index() + 1)
    }
}

struct Harness {
    disk: MemoryBackend,
    wal: Arc<Wal>,
    stores: BTreeMap<ShardId, ShardLogStore>,
    model: BTreeMap<ShardId, ModelShard>,
}

impl Harness {
    fn new() -> Self {
        let disk = MemoryBackend::new();
        let wal = open_with(&disk, small_segments());
        Self {
            disk,
            wal,
            stores: BTreeMap::new(),
            model: BTreeMap::new(),
        }
    }

    fn store(&mut self, shard: ShardId) -> &mut ShardLogStore {
        self.stores.entry(shard).or_insert_with(|| self.wal.log_store(shard))
    }

    fn reopen(&mut self) {
        self.stores.clear();
        self.wal = open_with(&self.disk, small_segments());
    }

    async fn run(&mut self, step: Step) {
        match step {
            Step::Append { shard, count, back } => {
                let model = self.model.entry(shard).or_default();
                model.term += u64::from(back > 0);
                let start = model.next_index().saturating_sub(back).max(model.floor());
                let entries = blanks(model.term.max(1), start..=start + count - 1);
                model.entries.split_off(&start);
                model.entries.extend(entries.iter().map(|e| (e.index(), e.clone())));
                append(self.store(shard), entries).await.expect("append");
            }
            Step::TruncateAfter { shard, pick } => {
                let model = self.model.entry(shard).or_default();
                let Some(last) = model.entries.keys().next_back().copied() else {
                    return;
                };
                let keep = model.floor() - 1 + pick % (last - model.floor() + 2);
                let last_kept = if keep == 0 {
                    None
                } else {
                    model.entries.get(&keep).map(|e| e.log_id())
                };
                let Some(last_kept) = last_kept.or(model.last_purged) else {
                    return;
                };
                model.entries.split_off(&(last_kept.index() + 1));
                self.store(shard)
                    .truncate_after(Some(last_kept))
                    .await
                    .expect("truncate");
                self.wal.sync().await.expect("sync");
            }
            Step::Purge { shard, pick } => {
                let model = self.model.entry(shard).or_default();
                let (Some(first), Some(last)) = (
                    model.entries.keys().next().copied(),
                    model.entries.keys().next_back().copied(),
                ) else {
                    return;
                };
                let upto = model.entries[&(first + pick % (last - first + 1))].log_id();
                model.entries = model.entries.split_off(&(upto.index() + 1));
                model.last_purged = Some(upto);
                self.store(shard).purge(upto).await.expect("purge");
                self.wal.sync().await.expect("sync");
            }
            Step::SaveVote { shard } => {
                let model = self.model.entry(shard).or_default();
                model.term += 1;
                let vote = Vote::new(model.term, 1);
                model.vote = Some(vote);
                self.store(shard).save_vote(&vote).await.expect("vote");
            }
            Step::FailedAppendThenCrash { shard, pick } => {
                let next = self.model.get(&shard).map_or(1, ModelShard::next_index);
                self.disk.set_fail_syncs(true);
                let result = append(self.store(shard), blanks(99, next..=next)).await;
                assert!(result.is_err(), "append over a failing disk reports failure");
                self.stores.clear();
                self.wal = open_after_crash(&self.disk, pick);
            }
            Step::CrashAndReopen => {
                self.stores.clear();
                self.wal = open_after_crash(&self.disk, 0);
            }
        }
    }

    async fn check(&mut self) {
        for (shard, model) in self.model.clone() {
            let store = self.store(shard);
            let entries = store.try_get_log_entries(..).await.expect("reads");
            assert_eq!(
                entries,
                model.entries.values().cloned().collect::<Vec<_>>(),
                "shard {shard}"
            );
            let state = store.get_log_state().await.expect("state");
            assert_eq!(state.last_purged_log_id, model.last_purged, "shard {shard}");
            assert_eq!(store.read_vote().await.expect("vote"), model.vote, "shard {shard}");
        }
    }
}

/// Drop-equivalent of a power cut: the WAL was failed (nothing more gets synced), then keep
/// fewer unsynced bytes than one record, so the failed append is torn, never whole.
fn open_after_crash(disk: &MemoryBackend, pick: usize) -> Arc<Wal> {
    let unsynced = disk.unsynced_bytes();
    let kept = if unsynced == 0 { 0 } else { pick % unsynced };
    disk.crash_keeping_unsynced_bytes(kept);
    disk.set_fail_syncs(false);
    open_with(disk, small_segments())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_a_btreemap_model(steps in proptest::collection::vec(step(), 1..60)) {
        TypeConfig::run(async {
            let mut harness = Harness::new();
            for step in steps {
                harness.run(step).await;
                harness.check().await;
            }
            harness.reopen();
            harness.check().await;
        });
    }
}

#[test]
fn wait_durable_waits_for_what_was_queued_and_costs_no_sync_when_it_is_durable() {
    TypeConfig::run(async {
        let disk = MemoryBackend::new();
        let wal = open(&disk);
        let mut store = wal.log_store(1);
        append(&mut store, blanks(1, 1..=3)).await.expect("durable append");
        let syncs = disk.sync_count();
        wal.wait_durable().await.expect("nothing pending");
        assert_eq!(disk.sync_count(), syncs, "a barrier over durable records must not sync");

        wal.write(&record::Record::SaveCommitted {
            shard: 1,
            committed: Some(log_id(1, 3)),
        })
        .await
        .expect("queued");
        wal.wait_durable().await.expect("durable");
        assert_eq!(
            disk.unsynced_bytes(),
            0,
            "the queued record is synced when the barrier returns"
        );
        assert!(disk.sync_count() > syncs);

        disk.set_fail_syncs(true);
        let failed = append(&mut store, blanks(1, 4..=4)).await;
        assert!(failed.is_err());
        let barrier = wal.wait_durable().await;
        assert!(matches!(barrier, Err(WalError::Failed(_))), "{barrier:?}");
    });
}
