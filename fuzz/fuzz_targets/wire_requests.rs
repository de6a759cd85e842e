//! Fuzz target: every request a node receives, from its bytes on the wire to what the node acts
//! on: the protobuf message decoded by prost, then converted and validated by
//! `ledger/src/server/convert.rs` (the Inventory writes), or, for the internal Raft service,
//! its bincode payload decoded by `raft_service::decode`.
//!
//! The first byte picks the request; the rest is the message. Checked: nothing panics, hangs
//! or allocates past the message's size; a refused write names its field; an accepted write is
//! one the state machine accepts too (it re-validates everything it applies and answers a
//! defective operation `Rejected`), and applying it keeps the ledger invariant; a Raft payload
//! that decodes encodes to bytes that decode again to the same encoding.

#![no_main]

use flashledger_proto::v1 as pb;
use ledger::config::ServerSection;
use ledger::raft::network::ShippedMark;
use ledger::raft::network::SnapshotChunk;
use ledger::server::convert;
use ledger::server::raft_service;
use ledger::state_machine::command::CommandBody;
use ledger::state_machine::command::LogCommand;
use ledger::state_machine::command::Operation;
use ledger::state_machine::command::Outcome;
use ledger::state_machine::command::SaleRules;
use ledger::state_machine::state::LedgerState;
use ledger::types::TypeConfig;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[global_allocator]
static ALLOCATOR: flashledger_fuzz::LimitedAllocator = flashledger_fuzz::LimitedAllocator;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, message)) = data.split_first() else {
        return;
    };
    match kind % 15 {
        0 => write(pb::ReserveRequest::decode(message).map(convert::reserve)),
        1 => write(pb::ConfirmRequest::decode(message).map(convert::confirm)),
        2 => write(pb::CancelRequest::decode(message).map(convert::cancel)),
        3 => write(pb::PurchaseRequest::decode(message).map(convert::purchase)),
        4 => write(pb::PutSkuRequest::decode(message).map(convert::put_sku)),
        5 => write(pb::RestockRequest::decode(message).map(convert::restock)),
        6 => batch(message),
        // Read and cluster requests: decoded here; their few checks live in their handlers.
        7 => drop(pb::GetStockRequest::decode(message)),
        8 => drop(pb::WatchRequest::decode(message)),
        9 => drop(pb::ShardMapRequest::decode(message)),
        10 => drop(pb::StatusRequest::decode(message)),
        11 => raft::<openraft::raft::AppendEntriesRequest<TypeConfig>>(message),
        12 => raft::<openraft::raft::VoteRequest<TypeConfig>>(message),
        13 => raft::<SnapshotChunk>(message),
        _ => raft::<ShippedMark>(message),
    }
});

fn write(converted: Result<Result<Operation, convert::InvalidRequest>, prost::DecodeError>) {
    match converted {
        Ok(Ok(operation)) => apply_accepted(&operation),
        Ok(Err(invalid)) => assert!(!invalid.field.is_empty(), "a refusal names its field"),
        Err(_) => {}
    }
}

fn batch(message: &[u8]) {
    let Ok(request) = pb::BatchRequest::decode(message) else {
        return;
    };
    let ops = request.ops.len();
    match convert::batch(request, ServerSection::default().batch_ops_max) {
        Ok(operations) => {
            assert_eq!(operations.len(), ops);
            operations.iter().for_each(apply_accepted);
        }
        Err(invalid) => assert!(!invalid.field.is_empty(), "a refusal names its field"),
    }
}

/// Applies an accepted operation to a shard that has its SKU, at the time of its first attempt.
fn apply_accepted(operation: &Operation) {
    let now = operation.first_attempt_ms().unwrap_or(1);
    let mut state = LedgerState::default();
    if !matches!(operation, Operation::PutSku { .. }) {
        let put = Operation::PutSku {
            sku: operation.sku().to_vec(),
            total: 1_000,
            rules: SaleRules::default(),
        };
        apply(&mut state, 1, now, put);
    }
    let outcome = apply(&mut state, 2, now, operation.clone());
    let business = matches!(operation, Operation::Restock { .. });
    assert!(
        business || !matches!(outcome, Outcome::Rejected { .. }),
        "the state machine refused what the gRPC layer accepted: {operation:?} -> {outcome:?}"
    );
    state.check_all().expect("an accepted operation keeps the invariant");
}

fn apply(state: &mut LedgerState, index: u64, now: u64, operation: Operation) -> Outcome {
    let command = LogCommand {
        timestamp_ms: now,
        body: CommandBody::Batch(vec![operation]),
    };
    let (mut outcomes, _) = state.apply(index, &command).expect("the invariant holds");
    outcomes.pop().expect("one outcome per operation")
}

/// A Raft payload that decodes exactly encodes to bytes that decode to the same encoding.
fn raft<T: Serialize + DeserializeOwned>(message: &[u8]) {
    let Ok(request) = pb::RaftRequest::decode(message) else {
        return;
    };
    let Ok(decoded) = raft_service::decode::<T>(&request.payload) else {
        return;
    };
    let encoded = bincode::serialize(&decoded).expect("a decoded message encodes");
    let again: T = raft_service::decode(&encoded).expect("an encoded message decodes");
    assert_eq!(bincode::serialize(&again).expect("encodes"), encoded);
}
