//! Every replica of a shard ends with identical applied state (after the heal phase let every
//! replica catch up to the same applied index).

use std::collections::BTreeMap;

use ledger::state_machine::state::LedgerState;
use ledger::types::NodeId;
use ledger::types::ShardId;

/// One replica's final state.
pub struct ReplicaState {
    pub node: NodeId,
    pub applied_index: u64,
    pub ledger: LedgerState,
}

pub fn check(shards: &BTreeMap<ShardId, Vec<ReplicaState>>) -> Result<usize, String> {
    let mut compared = 0;
    for (shard, replicas) in shards {
        let Some((first, rest)) = replicas.split_first() else {
            return Err(format!("shard {shard}: no replica to compare"));
        };
        for other in rest {
            if other.applied_index != first.applied_index {
                return Err(format!(
                    "shard {shard}: node {} applied up to {} but node {} up to {}",
                    first.node, first.applied_index, other.node, other.applied_index
                ));
            }
            if other.ledger != first.ledger {
                return Err(format!(
                    "shard {shard}: nodes {} and {} applied the same {} entries but differ (digests {:#x} vs {:#x}){}",
                    first.node,
                    other.node,
                    first.applied_index,
                    first.ledger.digest(),
                    other.ledger.digest(),
                    first_difference(&first.ledger, &other.ledger)
                ));
            }
            compared += 1;
        }
    }
    Ok(compared)
}

fn first_difference(a: &LedgerState, b: &LedgerState) -> String {
    for (sku, record) in &a.skus {
        if b.skus.get(sku) != Some(record) {
            return format!(
                "; sku {:?}: {:?} vs {:?}",
                String::from_utf8_lossy(sku),
                record,
                b.skus.get(sku)
            );
        }
    }
    if a.settings != b.settings {
        return format!("; settings {:?} vs {:?}", a.settings, b.settings);
    }
    let mut b_orders = b.orders.iter();
    for (seq, order) in a.orders.iter() {
        let other = b_orders.next();
        if other != Some((seq, order)) {
            return format!("; order #{seq}: {order:?} vs {other:?}");
        }
    }
    String::new()
}
