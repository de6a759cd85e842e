//! Fuzz target: the snapshot and checkpoint decoders (`ledger/src/applied/`).
//!
//! The first byte picks what the rest is:
//! - 0: an encoded `ShardImage`, as a lagging replica receives it (`applied::decode_image`);
//! - 1: a checkpoint as a node loads it at start (`AppliedStore::load`), then sends it to a
//!   lagging replica (`load_snapshot`): parts (`flashledger_fuzz::split_parts`) that are the
//!   latest manifest record, the previous one (an empty part: none), then the order chunks,
//!   handed out in the order they are asked for (from the first again for each manifest),
//!   whatever id the manifest names;
//! - 2: a snapshot file (magic, length, CRC, payload) read by `FileSnapshots::load`.
//!
//! Checked: nothing panics, hangs or allocates past what the input could describe; a state
//! that loads holds the ledger invariant for every SKU (`LedgerState::check_all`) and encodes to
//! an image that decodes to the same state; a node that started from a checkpoint sends a
//! lagging replica the state it started from.

#![no_main]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use flashledger_fuzz::split_parts;
use ledger::applied;
use ledger::applied::AppliedStore;
use ledger::applied::AppliedStoreError;
use ledger::applied::FileSnapshots;
use ledger::applied::ShardImage;
use ledger::applied::SnapshotBackend;
use ledger::applied::StreamWriter;
use ledger::state_machine::command::CommandBody;
use ledger::state_machine::command::LogCommand;
use ledger::state_machine::command::Operation;
use ledger::state_machine::limits;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOCATOR: flashledger_fuzz::LimitedAllocator = flashledger_fuzz::LimitedAllocator;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(image) = applied::decode_image(rest) {
                check_loaded(&image);
            }
        }
        1 => load_checkpoint(rest),
        _ => load_file(rest),
    }
});

/// A loaded state keeps the invariant, survives its own encoding, and can be run from.
fn check_loaded(image: &ShardImage) {
    image.ledger.check_all().expect("a loaded snapshot holds the invariant");
    let encoded = bincode::serialize(&image.frozen()).expect("a loaded state encodes");
    let again = applied::decode_image(&encoded).expect("an encoded state decodes");
    assert_eq!(again.ledger, image.ledger);
    assert_eq!(again.meta.applied, image.meta.applied);
    run_from(image);
}

/// Applies what follows any snapshot (a purchase, its confirmation and cancellation, every
/// reservation expiring, every event shipped) to a loaded state. The state machine may stop on
/// a broken invariant (`Err`: the replica halts, by design); it must not panic.
fn run_from(image: &ShardImage) {
    let mut ledger = image.ledger.clone();
    let now = ledger.clock_ms.max(1);
    let later = now.saturating_add(limits::TTL_MS_MAX).saturating_add(1);
    let sku = ledger.skus.keys().next().cloned().unwrap_or_else(|| b"x".to_vec());
    let order = |first_attempt_ms| Operation::Purchase {
        sku: sku.clone(),
        qty: 1,
        user: "u".into(),
        order_id: "o".into(),
        first_attempt_ms,
    };
    let bodies = [
        CommandBody::Batch(vec![
            order(now),
            Operation::Reserve {
                sku: sku.clone(),
                qty: 1,
                user: "v".into(),
                order_id: "r".into(),
                ttl_ms: 0,
                first_attempt_ms: now,
            },
            Operation::Confirm {
                sku: sku.clone(),
                order_id: "o".into(),
                first_attempt_ms: now,
            },
            Operation::Cancel {
                sku: sku.clone(),
                order_id: "r".into(),
                first_attempt_ms: now,
            },
            Operation::Restock {
                sku: sku.clone(),
                delta: -1,
            },
        ]),
        CommandBody::Expire,
        CommandBody::Shipped {
            below_seq: ledger.next_event_seq,
            shipper: 1,
        },
    ];
    let first_index = image.meta.applied.map_or(0, |id| id.index).saturating_add(1);
    for (offset, body) in (0..).zip(bodies) {
        let command = LogCommand {
            timestamp_ms: if matches!(body, CommandBody::Batch(_)) {
                now
            } else {
                later
            },
            body,
        };
        if ledger.apply(first_index.saturating_add(offset), &command).is_err() {
            return;
        }
    }
}

fn load_checkpoint(rest: &[u8]) {
    let parts = split_parts(rest);
    let part = |at: usize| parts.get(at).filter(|part| !part.is_empty()).map(|part| part.to_vec());
    let backend = Arc::new(FuzzSnapshots {
        latest: part(0),
        previous: part(1),
        chunks: parts.iter().skip(2).map(|part| part.to_vec()).collect(),
        next_chunk: AtomicUsize::new(0),
    });
    let store = AppliedStore::new(backend);
    // A node starts from `load` (`ShardStateMachine::open`) and only then sends snapshots.
    let Ok(image) = store.load() else {
        return;
    };
    check_loaded(&image);
    if image.meta.applied.is_none() && image.ledger == ShardImage::default().ledger {
        return; // nothing stored, or a stored empty state: nothing to compare
    }
    let snapshot = store
        .load_snapshot()
        .expect("a checkpoint that loaded loads again")
        .expect("a checkpoint that loaded is there");
    let sent = applied::decode_image(&snapshot.data).expect("what a started node sends decodes");
    assert_eq!(sent.ledger, image.ledger);
    assert_eq!(sent.meta.applied, image.meta.applied);
}

fn load_file(rest: &[u8]) {
    static DIRECTORY: OnceLock<tempfile::TempDir> = OnceLock::new();
    let directory = DIRECTORY.get_or_init(|| tempfile::tempdir().expect("tempdir")).path();
    std::fs::write(directory.join("shard-1.snap"), rest).expect("write");
    let snapshots = FileSnapshots::open(directory, 1).expect("open");
    if let Ok(Some(payload)) = snapshots.load() {
        // Magic (8), length (8), CRC (4), then exactly the payload.
        assert_eq!(payload.len() + 20, rest.len(), "a payload is framed");
    }
}

/// A checkpoint store that serves what the input holds.
struct FuzzSnapshots {
    latest: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
    /// Served to `load_chunk` in order, whatever id it asks for (ids the fuzzer would not
    /// guess), from the first again after each manifest is read.
    chunks: Vec<Vec<u8>>,
    next_chunk: AtomicUsize,
}

impl SnapshotBackend for FuzzSnapshots {
    fn save_streamed(&self, _length: u64, _write: &mut StreamWriter<'_>) -> Result<(), AppliedStoreError> {
        Err(AppliedStoreError::Backend("read-only".into()))
    }

    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        self.next_chunk.store(0, Ordering::Relaxed);
        Ok(self.latest.clone())
    }

    fn load_previous(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        self.next_chunk.store(0, Ordering::Relaxed);
        Ok(self.previous.clone())
    }

    fn save_chunk(&self, _id: u64, _bytes: &[u8]) -> Result<(), AppliedStoreError> {
        Err(AppliedStoreError::Backend("read-only".into()))
    }

    fn load_chunk(&self, _id: u64) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self
            .chunks
            .get(self.next_chunk.fetch_add(1, Ordering::Relaxed))
            .cloned())
    }

    fn keep_chunks(&self, _keep: &BTreeSet<u64>) -> Result<(), AppliedStoreError> {
        Ok(())
    }
}
