//! The one bridge between protobuf wire types and the client's domain types.
//!
//! Domain → wire is total. Wire → domain is checked: an unknown or unspecified outcome code,
//! a missing required field, or a malformed shard map becomes [`ClientError::Protocol`], never
//! a panic, because everything here came over the network.

use std::collections::BTreeMap;
use std::time::Duration;

use flashledger_proto::v1 as wire;
use wire::write_op::Op;

use crate::shard_map::{Shard, ShardMap};
use crate::types::{Priority, RateLimit, WatchEvent, WatchProgress};
use crate::{ClientError, Consistency, Outcome, SaleRules, Stock, StockChange, WriteOp};

fn protocol(what: impl Into<String>) -> ClientError {
    ClientError::Protocol(what.into())
}

/// Milliseconds for the wire, saturating instead of wrapping.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Wire outcome → domain outcome.
pub(crate) fn outcome_from_wire(outcome: &wire::Outcome) -> Result<Outcome, ClientError> {
    use wire::OutcomeCode as Code;
    let code = Code::try_from(outcome.code).map_err(|_| protocol(format!("unknown outcome code {}", outcome.code)))?;
    Ok(match code {
        Code::OutcomeUnspecified => return Err(protocol("outcome code unspecified")),
        Code::Reserved => Outcome::Reserved {
            expires_at_ms: outcome.expires_at_ms,
        },
        Code::Confirmed => Outcome::Confirmed,
        Code::Released => Outcome::Released,
        Code::Ok => Outcome::Ok,
        Code::SoldOut => Outcome::SoldOut {
            available: outcome.available,
        },
        Code::LimitExceeded => Outcome::LimitExceeded {
            held: outcome.held,
            limit: outcome.limit,
        },
        Code::SaleClosed => Outcome::SaleClosed,
        Code::UnknownSku => Outcome::UnknownSku,
        Code::NotFound => Outcome::NotFound,
        Code::Expired => Outcome::Expired,
        Code::Rejected => Outcome::Rejected {
            detail: outcome.detail.clone(),
        },
        Code::AlreadyConfirmed => Outcome::AlreadyConfirmed,
        Code::RequestTooOld => Outcome::RequestTooOld,
        Code::OrderIdReused => Outcome::OrderIdReused {
            detail: outcome.detail.clone(),
        },
        Code::RateLimited => Outcome::RateLimited {
            retry_after_ms: outcome.retry_after_ms,
        },
    })
}

/// Domain outcome → wire outcome (used by tests and fakes; the client never sends outcomes).
pub fn outcome_to_wire(outcome: &Outcome) -> wire::Outcome {
    use wire::OutcomeCode as Code;
    let mut wire_outcome = wire::Outcome::default();
    let code = match outcome {
        Outcome::Reserved { expires_at_ms } => {
            wire_outcome.expires_at_ms = *expires_at_ms;
            Code::Reserved
        }
        Outcome::Confirmed => Code::Confirmed,
        Outcome::Released => Code::Released,
        Outcome::Ok => Code::Ok,
        Outcome::SoldOut { available } => {
            wire_outcome.available = *available;
            Code::SoldOut
        }
        Outcome::LimitExceeded { held, limit } => {
            wire_outcome.held = *held;
            wire_outcome.limit = *limit;
            Code::LimitExceeded
        }
        Outcome::SaleClosed => Code::SaleClosed,
        Outcome::UnknownSku => Code::UnknownSku,
        Outcome::NotFound => Code::NotFound,
        Outcome::Expired => Code::Expired,
        Outcome::AlreadyConfirmed => Code::AlreadyConfirmed,
        Outcome::RequestTooOld => Code::RequestTooOld,
        Outcome::OrderIdReused { detail } => {
            wire_outcome.detail = detail.clone();
            Code::OrderIdReused
        }
        Outcome::Rejected { detail } => {
            wire_outcome.detail = detail.clone();
            Code::Rejected
        }
        Outcome::RateLimited { retry_after_ms } => {
            wire_outcome.retry_after_ms = *retry_after_ms;
            Code::RateLimited
        }
    };
    wire_outcome.code = code as i32;
    wire_outcome
}

/// A single-write reply → its outcome.
pub(crate) fn write_reply_from_wire(reply: &wire::WriteReply) -> Result<Outcome, ClientError> {
    let outcome = reply
        .outcome
        .as_ref()
        .ok_or_else(|| protocol("write reply without an outcome"))?;
    outcome_from_wire(outcome)
}

/// A batch reply → one outcome per op sent, in the order sent.
pub(crate) fn batch_reply_from_wire(reply: &wire::BatchReply, ops_sent: usize) -> Result<Vec<Outcome>, ClientError> {
    if reply.outcomes.len() != ops_sent {
        return Err(protocol(format!(
            "batch of {ops_sent} ops answered with {} outcomes",
            reply.outcomes.len()
        )));
    }
    reply.outcomes.iter().map(outcome_from_wire).collect()
}

fn sale_rules_to_wire(rules: &SaleRules) -> wire::SaleRules {
    let rate = |limit: Option<RateLimit>| limit.map_or((0, 0), |limit| (limit.ops_per_s, limit.burst_ops.unwrap_or(0)));
    let (buyer_ops_per_s, buyer_burst_ops) = rate(rules.buyer_rate);
    let (client_ops_per_s, client_burst_ops) = rate(rules.client_rate);
    wire::SaleRules {
        start_ms: rules.start_ms.unwrap_or(0),
        end_ms: rules.end_ms.unwrap_or(0),
        per_user_limit: rules.per_user_limit.unwrap_or(0),
        default_ttl_ms: rules.default_ttl.map(millis).unwrap_or(0),
        buyer_ops_per_s,
        buyer_burst_ops,
        client_ops_per_s,
        client_burst_ops,
    }
}

/// Domain priority → the wire's.
pub(crate) fn priority_to_wire(priority: Priority) -> i32 {
    let wire = match priority {
        Priority::Premium => wire::Priority::Premium,
        Priority::Standard => wire::Priority::Standard,
        Priority::Background => wire::Priority::Background,
    };
    wire as i32
}

/// Domain write → wire write, stamped with the shard `epoch` the request is routed by (0 = "do
/// not check") and its `priority` (in a batch, unspecified: the batch carries it). Built from a
/// reference for each attempt: the caller keeps the operation for a retry (or to resend it
/// alone), and this is the only copy of its strings a send makes.
pub(crate) fn write_op_to_wire(op: &WriteOp, epoch: u64, priority: Option<Priority>) -> Op {
    let route = Some(wire::RouteEpoch { epoch });
    let priority = priority.map_or(wire::Priority::Unspecified as i32, priority_to_wire);
    match op {
        WriteOp::Reserve {
            sku,
            qty,
            user,
            order_id,
            ttl,
            first_attempt_ms,
        } => Op::Reserve(wire::ReserveRequest {
            sku: sku.clone().into(),
            qty: *qty,
            user: user.clone().into(),
            order_id: order_id.clone().into(),
            ttl_ms: ttl.map(millis).unwrap_or(0),
            first_attempt_ms: *first_attempt_ms,
            route,
            priority,
        }),
        WriteOp::Confirm {
            sku,
            order_id,
            first_attempt_ms,
        } => Op::Confirm(wire::ConfirmRequest {
            sku: sku.clone().into(),
            order_id: order_id.clone().into(),
            first_attempt_ms: *first_attempt_ms,
            route,
            priority,
        }),
        WriteOp::Cancel {
            sku,
            order_id,
            first_attempt_ms,
        } => Op::Cancel(wire::CancelRequest {
            sku: sku.clone().into(),
            order_id: order_id.clone().into(),
            first_attempt_ms: *first_attempt_ms,
            route,
            priority,
        }),
        WriteOp::Purchase {
            sku,
            qty,
            user,
            order_id,
            first_attempt_ms,
        } => Op::Purchase(wire::PurchaseRequest {
            sku: sku.clone().into(),
            qty: *qty,
            user: user.clone().into(),
            order_id: order_id.clone().into(),
            first_attempt_ms: *first_attempt_ms,
            route,
            priority,
        }),
        WriteOp::PutSku { sku, total, rules } => Op::PutSku(wire::PutSkuRequest {
            sku: sku.clone().into(),
            total: *total,
            rules: Some(sale_rules_to_wire(rules)),
            route,
            priority,
        }),
        WriteOp::Restock { sku, delta } => Op::Restock(wire::RestockRequest {
            sku: sku.clone().into(),
            delta: *delta,
            route,
            priority,
        }),
    }
}

/// A stock read request.
pub(crate) fn get_stock_to_wire(sku: &[u8], consistency: Consistency, priority: Priority) -> wire::GetStockRequest {
    let (consistency, max_lag_entries) = match consistency {
        Consistency::Linearizable => (wire::Consistency::Linearizable, 0),
        Consistency::Stale { max_lag_entries } => (wire::Consistency::Stale, max_lag_entries),
    };
    wire::GetStockRequest {
        sku: sku.to_vec().into(),
        consistency: consistency as i32,
        max_lag_entries,
        priority: priority_to_wire(priority),
    }
}

fn counts_from_wire(counts: Option<&wire::StockCounts>, what: &str) -> Result<wire::StockCounts, ClientError> {
    counts
        .copied()
        .ok_or_else(|| protocol(format!("{what} without counts")))
}

/// A stock reply → domain stock.
/// A stock reply → domain counts; `None` when the ledger does not know the SKU (no counts).
pub(crate) fn stock_from_wire(reply: &wire::StockReply) -> Result<Option<Stock>, ClientError> {
    let Some(counts) = reply.counts.as_ref() else {
        return Ok(None);
    };
    Ok(Some(Stock {
        sku: reply.sku.to_vec(),
        total: counts.total,
        available: counts.available,
        reserved: counts.reserved,
        sold: counts.sold,
        log_index: reply.log_index,
        served_by: reply.served_by,
    }))
}

/// A watched change → domain change.
pub(crate) fn stock_change_from_wire(change: &wire::StockChange) -> Result<StockChange, ClientError> {
    let counts = counts_from_wire(change.counts.as_ref(), "stock change")?;
    Ok(StockChange {
        sku: change.sku.to_vec(),
        total: counts.total,
        available: counts.available,
        reserved: counts.reserved,
        sold: counts.sold,
        log_index: change.log_index,
        shard_id: change.shard_id,
    })
}

/// A message of a watch with progress marks → a change or a mark.
pub(crate) fn watch_event_from_wire(message: &wire::StockChange) -> Result<WatchEvent, ClientError> {
    if !message.progress {
        return stock_change_from_wire(message).map(WatchEvent::Change);
    }
    Ok(WatchEvent::Progress(WatchProgress {
        shard_id: message.shard_id,
        log_index: message.log_index,
        log_time_ms: message.log_time_ms,
    }))
}

/// A shard-map reply → a checked [`ShardMap`].
pub(crate) fn shard_map_from_wire(reply: &wire::ShardMapReply) -> Result<ShardMap, ClientError> {
    let mut nodes = BTreeMap::new();
    for node in &reply.nodes {
        if node.id == 0 || node.addr.is_empty() {
            return Err(protocol(format!("shard map names a bad node {node:?}")));
        }
        if nodes.insert(node.id, node.addr.clone()).is_some() {
            return Err(protocol(format!("shard map names node {} twice", node.id)));
        }
    }
    let shards = reply
        .shards
        .iter()
        .map(|shard| Shard {
            shard_id: shard.shard_id,
            start: shard.start.to_vec(),
            end: shard.end.to_vec(),
            epoch: shard.epoch,
            replicas: shard.replicas.clone(),
            leader: (shard.leader != 0).then_some(shard.leader),
        })
        .collect();
    ShardMap::new(nodes, shards)
        .map(|map| map.with_version(reply.version))
        .map_err(|why| protocol(format!("bad shard map: {why}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_round_trips() {
        let outcomes = [
            Outcome::Reserved { expires_at_ms: 7 },
            Outcome::Confirmed,
            Outcome::Released,
            Outcome::Ok,
            Outcome::SoldOut { available: 1 },
            Outcome::LimitExceeded { held: 2, limit: 2 },
            Outcome::SaleClosed,
            Outcome::UnknownSku,
            Outcome::NotFound,
            Outcome::Expired,
            Outcome::AlreadyConfirmed,
            Outcome::OrderIdReused { detail: "x".into() },
            Outcome::Rejected { detail: "y".into() },
            Outcome::RateLimited { retry_after_ms: 40 },
        ];
        for outcome in outcomes {
            assert_eq!(outcome_from_wire(&outcome_to_wire(&outcome)), Ok(outcome));
        }
    }

    #[test]
    fn unknown_and_unspecified_codes_are_protocol_errors() {
        for code in [0, 99, -1] {
            let wire_outcome = wire::Outcome {
                code,
                ..Default::default()
            };
            assert!(matches!(
                outcome_from_wire(&wire_outcome),
                Err(ClientError::Protocol(_))
            ));
        }
    }

    #[test]
    fn batch_length_mismatch_is_a_protocol_error() {
        let reply = wire::BatchReply {
            outcomes: vec![outcome_to_wire(&Outcome::Ok)],
            log_index: 1,
        };
        assert!(batch_reply_from_wire(&reply, 2).is_err());
        assert_eq!(batch_reply_from_wire(&reply, 1), Ok(vec![Outcome::Ok]));
    }
}
