//! Fuzz target: WAL recovery (`Wal::open`, `ledger/src/storage/wal.rs`) over segments the
//! fuzzer writes to a simulated disk (`MemoryBackend`).
//!
//! Input: a flags byte, then up to four segments as parts (`flashledger_fuzz::split_parts`),
//! given ids 1, 2, ... Flag bit 0 puts a valid header before each segment's bytes; bit 1 makes
//! every record's CRC match (`fix_record_checksums`), so that the decoder and the replay are
//! reached; with both clear the bytes are taken as they are (torn tails, corruption).
//!
//! Checked: recovery never panics or hangs; a recovery that fails changed nothing on the disk
//! (a corrupt WAL is refused, never cut); one that succeeds leaves a disk that recovers again to
//! the same logs, votes, committed and purge points (what it cut, deleted and checkpointed lost
//! nothing it had replayed).

#![no_main]

use std::collections::BTreeMap;

use flashledger_fuzz::fix_record_checksums;
use flashledger_fuzz::split_parts;
use futures::executor::block_on;
use ledger::storage::MemoryBackend;
use ledger::storage::Wal;
use ledger::storage::WalBackend;
use ledger::storage::WalOptions;
use ledger::storage::record;
use ledger::types::Entry;
use ledger::types::LogId;
use ledger::types::ShardId;
use ledger::types::Vote;
use libfuzzer_sys::fuzz_target;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;

#[global_allocator]
static ALLOCATOR: flashledger_fuzz::LimitedAllocator = flashledger_fuzz::LimitedAllocator;

const SEGMENTS_MAX: usize = 4;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let disk = MemoryBackend::new();
    for (position, part) in split_parts(rest).into_iter().take(SEGMENTS_MAX).enumerate() {
        let segment = position as u64 + 1;
        let mut bytes = Vec::new();
        if flags & 1 != 0 {
            bytes.extend_from_slice(&record::segment_header(segment));
        }
        bytes.extend_from_slice(part);
        if flags & 2 != 0 {
            fix_record_checksums(&mut bytes);
        }
        disk.create_segment(segment).expect("create");
        disk.append(segment, &bytes).expect("append");
        disk.sync(segment).expect("sync");
    }
    let before = contents(&disk);
    let options = WalOptions {
        // Small segments, so that recovery's new segment and deletions are exercised too.
        segment_bytes_max: 256,
        ..WalOptions::default()
    };
    let recovered = match Wal::open(disk.clone(), options.clone()) {
        Ok(wal) => logs(&wal),
        Err(_) => {
            assert_eq!(contents(&disk), before, "a failed recovery changed the disk");
            return;
        }
    };
    let wal = Wal::open(disk.clone(), options).expect("a recovered WAL recovers again");
    assert_eq!(logs(&wal), recovered, "recovering twice gives another log");
});

/// Every segment's bytes.
fn contents(disk: &MemoryBackend) -> BTreeMap<u64, Vec<u8>> {
    let segments = disk.list_segments().expect("list");
    segments
        .into_iter()
        .map(|segment| (segment, disk.read_segment(segment).expect("read")))
        .collect()
}

/// What openraft would read of one shard after recovery.
#[derive(Debug, PartialEq)]
struct ShardLog {
    last_purged: Option<LogId>,
    last: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    entries: Vec<Entry>,
}

impl ShardLog {
    fn is_empty(&self) -> bool {
        self.last_purged.is_none() && self.vote.is_none() && self.committed.is_none() && self.entries.is_empty()
    }
}

/// Every shard that holds anything (a shard whose records left nothing is not written again).
fn logs(wal: &std::sync::Arc<Wal>) -> BTreeMap<ShardId, ShardLog> {
    let mut logs = BTreeMap::new();
    for shard in wal.shards() {
        let mut store = wal.log_store(shard);
        let log = block_on(async {
            let state = store.get_log_state().await.expect("log state");
            ShardLog {
                last_purged: state.last_purged_log_id,
                last: state.last_log_id,
                vote: store.read_vote().await.expect("vote"),
                committed: store.read_committed().await.expect("committed"),
                entries: store.try_get_log_entries(..).await.expect("entries"),
            }
        });
        if !log.is_empty() {
            logs.insert(shard, log);
        }
    }
    logs
}
