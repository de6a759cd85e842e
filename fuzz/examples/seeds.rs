//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/seed-*`: valid
//! records, segments, snapshots, configs and requests made with the node's own encoders, so a
//! run starts from inputs that reach deep into each decoder. Run it from `fuzz/` with
//! `cargo run --example seeds`; the committed corpora were grown from these and then minimized
//! (docs/security.md, "Fuzzing").

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

use flashledger_fuzz::join_parts;
use flashledger_proto::v1 as pb;
use ledger::applied::AppliedStore;
use ledger::applied::AppliedStoreError;
use ledger::applied::FileSnapshots;
use ledger::applied::ShardImage;
use ledger::applied::SnapshotBackend;
use ledger::applied::StreamWriter;
use ledger::raft::network::ShippedMark;
use ledger::raft::network::SnapshotChunk;
use ledger::state_machine::command::CommandBody;
use ledger::state_machine::command::LedgerSettings;
use ledger::state_machine::command::LogCommand;
use ledger::state_machine::command::Operation;
use ledger::state_machine::command::SaleRules;
use ledger::state_machine::keys::HashKey;
use ledger::storage::record;
use ledger::storage::record::Record;
use ledger::types::Entry;
use ledger::types::LogId;
use ledger::types::SnapshotMeta;
use ledger::types::StoredMembership;
use ledger::types::TypeConfig;
use ledger::types::Vote;
use openraft::Membership;
use openraft::entry::RaftEntry;
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let targets: [(&str, Vec<Vec<u8>>); 5] = [
        ("wal_record", wal_records()?),
        ("wal_segment", wal_segments()?),
        ("snapshot", snapshots()?),
        ("config", configs()),
        ("wire_requests", requests()?),
    ];
    for (target, seeds) in targets {
        let directory = corpus.join(target);
        std::fs::create_dir_all(&directory)?;
        for (number, seed) in seeds.iter().enumerate() {
            std::fs::write(directory.join(format!("seed-{number:02}")), seed)?;
        }
        println!("{target}: {} seeds", seeds.len());
    }
    Ok(())
}

fn log_id(term: u64, index: u64) -> LogId {
    openraft::testing::log_id::<TypeConfig>(term, 1, index)
}

fn operations() -> Vec<Operation> {
    let rules = SaleRules {
        start_ms: 0,
        end_ms: 0,
        per_user_limit: 2,
        default_ttl_ms: 60_000,
    };
    vec![
        Operation::PutSku {
            sku: b"sneaker-42".to_vec(),
            total: 100,
            rules,
        },
        Operation::Reserve {
            sku: b"sneaker-42".to_vec(),
            qty: 2,
            user: "alice".into(),
            order_id: "o-1".into(),
            ttl_ms: 60_000,
            first_attempt_ms: 1_000,
        },
        Operation::Confirm {
            sku: b"sneaker-42".to_vec(),
            order_id: "o-1".into(),
            first_attempt_ms: 1_000,
        },
        Operation::Purchase {
            sku: b"sneaker-42".to_vec(),
            qty: 1,
            user: "bob".into(),
            order_id: "o-2".into(),
            first_attempt_ms: 1_000,
        },
        Operation::Reserve {
            sku: b"sneaker-42".to_vec(),
            qty: 1,
            user: "carol".into(),
            order_id: "o-3".into(),
            ttl_ms: 0,
            first_attempt_ms: 1_000,
        },
        Operation::Cancel {
            sku: b"sneaker-42".to_vec(),
            order_id: "o-4".into(),
            first_attempt_ms: 1_000,
        },
        Operation::Restock {
            sku: b"sneaker-42".to_vec(),
            delta: 50,
        },
    ]
}

fn settings() -> LedgerSettings {
    LedgerSettings {
        hash_key: HashKey([7, 11]),
        ..LedgerSettings::default()
    }
}

/// One entry of each kind the log holds.
fn entries(first: u64) -> Vec<Entry> {
    let command = |body| LogCommand {
        timestamp_ms: 1_000,
        body,
    };
    let membership = Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], []);
    vec![
        Entry::new_blank(log_id(1, first)),
        Entry::new_membership(log_id(1, first + 1), membership),
        Entry::new_normal(log_id(1, first + 2), command(CommandBody::Configure(settings()))),
        Entry::new_normal(log_id(1, first + 3), command(CommandBody::Batch(operations()))),
        Entry::new_normal(log_id(1, first + 4), command(CommandBody::Expire)),
        Entry::new_normal(
            log_id(1, first + 5),
            command(CommandBody::Shipped {
                below_seq: 1,
                shipper: 2,
            }),
        ),
    ]
}

fn records() -> Vec<Record> {
    vec![
        Record::SaveVote {
            shard: 1,
            vote: Vote::new(1, 1),
        },
        Record::Append {
            shard: 1,
            entries: entries(1),
        },
        Record::SaveCommitted {
            shard: 1,
            committed: Some(log_id(1, 4)),
        },
        Record::Append {
            shard: 2,
            entries: entries(10),
        },
        Record::TruncateAfter {
            shard: 1,
            last_kept: Some(log_id(1, 5)),
        },
        Record::Purge {
            shard: 1,
            upto: log_id(1, 2),
        },
        Record::TruncateAfter {
            shard: 2,
            last_kept: None,
        },
    ]
}

/// Each record as a frame, and as the payload behind its frame header.
fn wal_records() -> Result<Vec<Vec<u8>>, record::DecodeError> {
    let mut seeds = Vec::new();
    for each in records() {
        let frame = record::encode(&each)?;
        seeds.push(frame[record::FRAME_HEADER_BYTES..].to_vec());
        seeds.push(frame);
    }
    Ok(seeds)
}

/// Two segments of records: whole, torn in the middle of the last record, and without headers
/// (for flag bit 0, which adds them).
fn wal_segments() -> Result<Vec<Vec<u8>>, record::DecodeError> {
    let records = records();
    let mut segments = [record::segment_header(1).to_vec(), record::segment_header(2).to_vec()];
    for (position, each) in records.iter().enumerate() {
        segments[usize::from(position >= 4)].extend(record::encode(each)?);
    }
    let [first, second] = &segments;
    let header = record::SEGMENT_HEADER_BYTES;
    let torn = &second[..second.len() - 5];
    Ok(vec![
        [&[0u8][..], &join_parts(&[first, second])].concat(),
        [&[0u8][..], &join_parts(&[first, torn])].concat(),
        [&[1u8][..], &join_parts(&[&first[header..], &second[header..]])].concat(),
        [&[3u8][..], &join_parts(&[&first[header..]])].concat(),
    ])
}

/// A shard image with SKUs, orders, holders, a live reservation and order events.
fn image() -> ShardImage {
    let mut image = ShardImage::default();
    let bodies = [
        CommandBody::Configure(settings()),
        CommandBody::Batch(operations()),
        CommandBody::Shipped {
            below_seq: 1,
            shipper: 2,
        },
    ];
    for (index, body) in (1..).zip(bodies) {
        let command = LogCommand {
            timestamp_ms: 1_000,
            body,
        };
        image.ledger.apply(index, &command).expect("the invariant holds");
        image.meta.applied = Some(log_id(1, index));
    }
    let membership = Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], []);
    image.meta.membership = StoredMembership::new(Some(log_id(1, 1)), membership);
    image
}

fn snapshot_meta(image: &ShardImage) -> SnapshotMeta {
    SnapshotMeta {
        last_log_id: image.meta.applied,
        last_membership: image.meta.membership.clone(),
    }
}

/// Mode 0: an encoded image; mode 1: a checkpoint (manifest, no previous, its chunk); mode 2: a
/// snapshot file.
fn snapshots() -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let image = image();
    let encoded = bincode::serialize(&image.frozen())?;
    let recorder = Arc::new(Recorder::default());
    AppliedStore::new(recorder.clone()).save_image(&snapshot_meta(&image), &image.frozen())?;
    let saved = recorder.saved.lock().expect("recorder");
    let mut checkpoint: Vec<&[u8]> = vec![&saved.latest, &[]];
    checkpoint.extend(saved.chunks.iter().map(Vec::as_slice));
    let directory = tempfile::tempdir()?;
    FileSnapshots::open(directory.path(), 1)?.save(&[b"a snapshot's payload"])?;
    let file = std::fs::read(directory.path().join("shard-1.snap"))?;
    Ok(vec![
        [&[0u8][..], &encoded].concat(),
        [&[1u8][..], &join_parts(&checkpoint)].concat(),
        [&[2u8][..], &file].concat(),
    ])
}

/// What a checkpoint wrote, in order.
#[derive(Default)]
struct Recorder {
    saved: Mutex<Saved>,
}

#[derive(Default)]
struct Saved {
    latest: Vec<u8>,
    chunks: Vec<Vec<u8>>,
}

impl SnapshotBackend for Recorder {
    fn save_streamed(&self, _length: u64, write: &mut StreamWriter<'_>) -> Result<(), AppliedStoreError> {
        let mut bytes = Vec::new();
        write(&mut bytes).map_err(|e| AppliedStoreError::Backend(e.to_string()))?;
        self.saved.lock().expect("recorder").latest = bytes;
        Ok(())
    }

    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(None)
    }

    fn load_previous(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(None)
    }

    fn save_chunk(&self, _id: u64, bytes: &[u8]) -> Result<(), AppliedStoreError> {
        self.saved.lock().expect("recorder").chunks.push(bytes.to_vec());
        Ok(())
    }

    fn load_chunk(&self, _id: u64) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(None)
    }

    fn keep_chunks(&self, _keep: &BTreeSet<u64>) -> Result<(), AppliedStoreError> {
        Ok(())
    }
}

/// The repository's cluster.toml, and smaller configs that use every section.
fn configs() -> Vec<Vec<u8>> {
    let cluster = include_str!("../../cluster.toml");
    let small = r#"
[[nodes]]
id = 1
addr = "127.0.0.1:7101"
data_dir = "data/1"

[[shards]]
id = 1
replicas = [1]

[security]
insecure = true
"#;
    let sharded = r#"
[[nodes]]
id = 1
addr = "a:1"
data_dir = "d1"
cert_file = "n1.pem"
key_file = "n1.key"

[[nodes]]
id = 2
addr = "b:2"
data_dir = "d2"
cert_file = "n2.pem"
key_file = "n2.key"

[[nodes]]
id = 3
addr = "c:3"
data_dir = "d3"
cert_file = "n3.pem"
key_file = "n3.key"

[[shards]]
id = 7
start = ""
end = "g"
replicas = [1, 2, 3]

[[shards]]
id = 8
start = "g"
end = "t"
replicas = [2]

[[shards]]
id = 9
start = "t"
replicas = [1, 2, 3]

[[postgres]]
url = "postgresql://postgres@127.0.0.1:5432/orders_0"

[security]
ca_file = "ca.pem"
tokens_file = "tokens.toml"
"#;
    [cluster, small, sharded]
        .iter()
        .map(|text| text.as_bytes().to_vec())
        .collect()
}

/// One request of each kind, valid, with its kind byte.
fn requests() -> Result<Vec<Vec<u8>>, Box<dyn std::error::Error>> {
    let route = Some(pb::RouteEpoch { epoch: 1 });
    let reserve = pb::ReserveRequest {
        sku: b"sneaker-42".to_vec().into(),
        qty: 2,
        user: "alice".into(),
        order_id: "o-1".into(),
        ttl_ms: 60_000,
        first_attempt_ms: 1_700_000_000_000,
        route,
    };
    let confirm = pb::ConfirmRequest {
        sku: b"sneaker-42".to_vec().into(),
        order_id: "o-1".into(),
        first_attempt_ms: 1_700_000_000_000,
        route,
    };
    let cancel = pb::CancelRequest {
        sku: b"sneaker-42".to_vec().into(),
        order_id: "o-1".into(),
        first_attempt_ms: 1_700_000_000_000,
        route,
    };
    let purchase = pb::PurchaseRequest {
        sku: b"sneaker-42".to_vec().into(),
        qty: 1,
        user: "bob".into(),
        order_id: "o-2".into(),
        first_attempt_ms: 1_700_000_000_000,
        route,
    };
    let put_sku = pb::PutSkuRequest {
        sku: b"sneaker-42".to_vec().into(),
        total: 100,
        rules: Some(pb::SaleRules {
            start_ms: 1,
            end_ms: 2_000_000_000_000,
            per_user_limit: 2,
            default_ttl_ms: 60_000,
        }),
        route,
    };
    let restock = pb::RestockRequest {
        sku: b"sneaker-42".to_vec().into(),
        delta: -5,
        route,
    };
    use pb::write_op::Op;
    let ops = [
        Op::Reserve(reserve.clone()),
        Op::Confirm(confirm.clone()),
        Op::Cancel(cancel.clone()),
        Op::Purchase(purchase.clone()),
        Op::PutSku(put_sku.clone()),
        Op::Restock(restock.clone()),
    ];
    let batch = pb::BatchRequest {
        ops: ops.into_iter().map(|op| pb::WriteOp { op: Some(op) }).collect(),
    };
    let get_stock = pb::GetStockRequest {
        sku: b"sneaker-42".to_vec().into(),
        consistency: pb::Consistency::Stale as i32,
        max_lag_entries: 100,
    };
    let watch = pb::WatchRequest {
        start: b"a".to_vec().into(),
        end: b"z".to_vec().into(),
        from_index: 7,
        progress_interval_ms: 250,
    };
    let raft = |payload: Vec<u8>| {
        pb::RaftRequest {
            shard_id: 1,
            payload: payload.into(),
        }
        .encode_to_vec()
    };
    let image = image();
    let append = openraft::raft::AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(1, 1),
        prev_log_id: Some(log_id(1, 3)),
        entries: entries(4),
        leader_commit: Some(log_id(1, 3)),
    };
    let vote = openraft::raft::VoteRequest::<TypeConfig>::new(Vote::new(2, 2), Some(log_id(1, 9)));
    let chunk = SnapshotChunk {
        vote: Vote::new_committed(1, 1),
        meta: snapshot_meta(&image),
        offset: 0,
        total: 16,
        data: vec![0; 16],
    };
    let mark = ShippedMark {
        below_seq: 30,
        shipper: 2,
    };
    let messages: Vec<(u8, Vec<u8>)> = vec![
        (0, reserve.encode_to_vec()),
        (1, confirm.encode_to_vec()),
        (2, cancel.encode_to_vec()),
        (3, purchase.encode_to_vec()),
        (4, put_sku.encode_to_vec()),
        (5, restock.encode_to_vec()),
        (6, batch.encode_to_vec()),
        (7, get_stock.encode_to_vec()),
        (8, watch.encode_to_vec()),
        (9, pb::ShardMapRequest {}.encode_to_vec()),
        (10, pb::StatusRequest {}.encode_to_vec()),
        (11, raft(bincode::serialize(&append)?)),
        (12, raft(bincode::serialize(&vote)?)),
        (13, raft(bincode::serialize(&chunk)?)),
        (14, raft(bincode::serialize(&mark)?)),
    ];
    Ok(messages
        .into_iter()
        .map(|(kind, message)| [&[kind][..], &message].concat())
        .collect())
}
