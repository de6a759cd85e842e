//! Never oversell: `available + reserved + sold == total` for every SKU on every replica after
//! every apply. The state machine checks it after each entry it applies and halts the replica
//! on a violation; the harness polls every replica for a halt while the run goes on (and before
//! each kill), and this checker also re-checks every replica's final state.

use ledger::state_machine::state::LedgerState;
use ledger::types::NodeId;
use ledger::types::ShardId;

/// `halts`: violations seen on replicas during the run; `replicas`: every final replica state.
pub fn check(halts: &[String], replicas: &[(NodeId, ShardId, &LedgerState)]) -> Result<usize, String> {
    if let Some(first) = halts.first() {
        return Err(format!("{} replica halt(s); first: {first}", halts.len()));
    }
    for (node, shard, ledger) in replicas {
        ledger
            .check_all()
            .map_err(|violation| format!("node {node} shard {shard}: {violation}"))?;
        for (sku, record) in &ledger.skus {
            if record.sold > record.total {
                return Err(format!(
                    "node {node} shard {shard}: sku {:?} sold {} of {} units",
                    String::from_utf8_lossy(sku),
                    record.sold,
                    record.total
                ));
            }
        }
    }
    Ok(replicas.len())
}
