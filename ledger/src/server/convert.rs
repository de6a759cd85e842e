//! The one place where wire types (`flashledger_proto::v1`) become domain types and back.
//!
//! Incoming requests are validated here, field by field, before anything is proposed: a bad
//! request is refused with `INVALID_ARGUMENT` naming the field and changes nothing. That includes
//! text that is not UTF-8: the wire types hold a request's `string` fields as bytes (see
//! `proto/build.rs`), so the decoder passes them on and they are checked here.

use flashledger_proto::v1 as pb;
use prost::bytes::Bytes;

use crate::admission::Priority;
use crate::security::Caller;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::command::SaleRules;
use crate::state_machine::limits;
use crate::state_machine::limits::InvalidField;
use crate::state_machine::state::StockCounts;

/// A validation failure, prefixed with where in the request it happened (`ops[3].qty`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid {}: {}", self.field, self.reason)
    }
}

impl From<InvalidField> for InvalidRequest {
    fn from(invalid: InvalidField) -> Self {
        InvalidRequest {
            field: invalid.field.to_string(),
            reason: invalid.reason,
        }
    }
}

impl InvalidRequest {
    fn within(self, prefix: &str) -> Self {
        InvalidRequest {
            field: format!("{prefix}.{}", self.field),
            reason: self.reason,
        }
    }
}

type Checked<T> = Result<T, InvalidRequest>;

pub fn reserve(request: pb::ReserveRequest) -> Checked<Operation> {
    limits::check_sku(&request.sku)?;
    Ok(Operation::Reserve {
        qty: limits::check_qty(request.qty)?,
        user: checked_id("user", request.user)?,
        order_id: checked_id("order_id", request.order_id)?,
        ttl_ms: limits::check_ttl("ttl_ms", request.ttl_ms)?,
        first_attempt_ms: limits::check_first_attempt(request.first_attempt_ms)?,
        sku: request.sku.to_vec(),
    })
}

pub fn purchase(request: pb::PurchaseRequest) -> Checked<Operation> {
    limits::check_sku(&request.sku)?;
    Ok(Operation::Purchase {
        qty: limits::check_qty(request.qty)?,
        user: checked_id("user", request.user)?,
        order_id: checked_id("order_id", request.order_id)?,
        first_attempt_ms: limits::check_first_attempt(request.first_attempt_ms)?,
        sku: request.sku.to_vec(),
    })
}

pub fn confirm(request: pb::ConfirmRequest) -> Checked<Operation> {
    limits::check_sku(&request.sku)?;
    Ok(Operation::Confirm {
        order_id: checked_id("order_id", request.order_id)?,
        first_attempt_ms: limits::check_first_attempt(request.first_attempt_ms)?,
        sku: request.sku.to_vec(),
    })
}

pub fn cancel(request: pb::CancelRequest) -> Checked<Operation> {
    limits::check_sku(&request.sku)?;
    Ok(Operation::Cancel {
        order_id: checked_id("order_id", request.order_id)?,
        first_attempt_ms: limits::check_first_attempt(request.first_attempt_ms)?,
        sku: request.sku.to_vec(),
    })
}

pub fn put_sku(request: pb::PutSkuRequest) -> Checked<Operation> {
    limits::check_sku(&request.sku)?;
    let rules = request.rules.unwrap_or_default();
    let rules = SaleRules {
        start_ms: limits::check_non_negative("rules.start_ms", rules.start_ms)?,
        end_ms: limits::check_non_negative("rules.end_ms", rules.end_ms)?,
        per_user_limit: limits::check_per_user_limit(rules.per_user_limit)?,
        default_ttl_ms: limits::check_ttl("rules.default_ttl_ms", rules.default_ttl_ms)?,
        buyer_rate: limits::check_rate_override(
            "rules.buyer_ops_per_s",
            "rules.buyer_burst_ops",
            rules.buyer_ops_per_s,
            rules.buyer_burst_ops,
        )?,
        client_rate: limits::check_rate_override(
            "rules.client_ops_per_s",
            "rules.client_burst_ops",
            rules.client_ops_per_s,
            rules.client_burst_ops,
        )?,
    };
    if rules.end_ms != 0 && rules.end_ms <= rules.start_ms {
        return Err(InvalidRequest {
            field: "rules.end_ms".into(),
            reason: "must be after rules.start_ms".into(),
        });
    }
    Ok(Operation::PutSku {
        total: limits::check_total(request.total)?,
        rules,
        sku: request.sku.to_vec(),
    })
}

pub fn restock(request: pb::RestockRequest) -> Checked<Operation> {
    limits::check_sku(&request.sku)?;
    Ok(Operation::Restock {
        delta: limits::check_delta(request.delta)?,
        sku: request.sku.to_vec(),
    })
}

/// Converts a batch; `ops_max` bounds how many operations one RPC (one log entry) may carry.
pub fn batch(request: pb::BatchRequest, ops_max: usize) -> Checked<Vec<Operation>> {
    if request.ops.is_empty() {
        return Err(InvalidRequest {
            field: "ops".into(),
            reason: "must not be empty".into(),
        });
    }
    if request.ops.len() > ops_max {
        return Err(InvalidRequest {
            field: "ops".into(),
            reason: format!("{} operations, at most {ops_max} per batch", request.ops.len()),
        });
    }
    request
        .ops
        .into_iter()
        .enumerate()
        .map(|(position, op)| write_op(op).map_err(|invalid| invalid.within(&format!("ops[{position}]"))))
        .collect()
}

fn write_op(op: pb::WriteOp) -> Checked<Operation> {
    use pb::write_op::Op;
    match op.op {
        None => Err(InvalidRequest {
            field: "op".into(),
            reason: "no operation set".into(),
        }),
        Some(Op::Reserve(r)) => reserve(r),
        Some(Op::Confirm(r)) => confirm(r),
        Some(Op::Cancel(r)) => cancel(r),
        Some(Op::Purchase(r)) => purchase(r),
        Some(Op::PutSku(r)) => put_sku(r),
        Some(Op::Restock(r)) => restock(r),
    }
}

/// The epoch a request was routed by (0 = unchecked).
pub fn route_epoch(op: &pb::WriteOp) -> u64 {
    use pb::write_op::Op;
    let route = match &op.op {
        Some(Op::Reserve(r)) => &r.route,
        Some(Op::Confirm(r)) => &r.route,
        Some(Op::Cancel(r)) => &r.route,
        Some(Op::Purchase(r)) => &r.route,
        Some(Op::PutSku(r)) => &r.route,
        Some(Op::Restock(r)) => &r.route,
        None => &None,
    };
    route.as_ref().map(|r| r.epoch).unwrap_or(0)
}

/// A request's priority class; unspecified is STANDARD.
pub fn priority(field: &str, value: i32) -> Checked<Priority> {
    match pb::Priority::try_from(value) {
        Ok(pb::Priority::Unspecified | pb::Priority::Standard) => Ok(Priority::Standard),
        Ok(pb::Priority::Premium) => Ok(Priority::Premium),
        Ok(pb::Priority::Background) => Ok(Priority::Background),
        Err(_) => Err(InvalidRequest {
            field: field.into(),
            reason: format!("{value} is not a priority (PREMIUM, STANDARD or BACKGROUND)"),
        }),
    }
}

/// A batch's priority: its own; an operation may repeat it or leave its own unspecified (a
/// batch is admitted or shed as one).
pub fn batch_priority(request: &pb::BatchRequest) -> Checked<Priority> {
    use pb::write_op::Op;
    let batch = priority("priority", request.priority)?;
    for (position, op) in request.ops.iter().enumerate() {
        let own = match &op.op {
            Some(Op::Reserve(r)) => r.priority,
            Some(Op::Confirm(r)) => r.priority,
            Some(Op::Cancel(r)) => r.priority,
            Some(Op::Purchase(r)) => r.priority,
            Some(Op::PutSku(r)) => r.priority,
            Some(Op::Restock(r)) => r.priority,
            None => continue,
        };
        if own == pb::Priority::Unspecified as i32 {
            continue;
        }
        let field = format!("ops[{position}].priority");
        let own = priority(&field, own)?;
        if own != batch {
            return Err(InvalidRequest {
                field,
                reason: format!(
                    "{} differs from the batch's {}: a batch is admitted as one (set the batch's priority)",
                    own.name(),
                    batch.name()
                ),
            });
        }
    }
    Ok(batch)
}

/// Who sent a request, for per-client rate limits: the `x-client-id` it names (within the
/// authenticated caller's name, so one caller cannot spend another's budget), else the caller's
/// name, else its IP address (not its port: a client that reconnects is still itself).
pub fn client_identity(
    client_id: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    caller: Option<&Caller>,
    peer: Option<std::net::SocketAddr>,
) -> Checked<String> {
    let invalid = |reason: String| InvalidRequest {
        field: flashledger_proto::metadata::CLIENT_ID.into(),
        reason,
    };
    let client_id = match client_id {
        Some(value) => {
            let text = value.to_str().map_err(|_| invalid("not visible ASCII".into()))?.trim();
            if text.len() > limits::ID_BYTES_MAX {
                return Err(invalid(format!(
                    "{} bytes, at most {}",
                    text.len(),
                    limits::ID_BYTES_MAX
                )));
            }
            (!text.is_empty()).then_some(text)
        }
        None => None,
    };
    let caller = match caller {
        Some(Caller::Client { name, .. }) => Some(name.clone()),
        Some(Caller::Node(id)) => Some(format!("node-{id}")),
        Some(Caller::Unchecked) | None => None,
    };
    Ok(match (caller, client_id) {
        (Some(caller), Some(id)) => format!("{caller}/{id}"),
        (None, Some(id)) => id.to_string(),
        (Some(caller), None) => caller,
        (None, None) => peer.map_or_else(|| "unknown".to_string(), |peer| peer.ip().to_string()),
    })
}

/// The answer to an operation over its rate limit: not decided, not logged.
pub fn rate_limited(retry_after: std::time::Duration) -> pb::Outcome {
    pb::Outcome {
        code: pb::OutcomeCode::RateLimited as i32,
        retry_after_ms: i64::try_from(retry_after.as_millis().max(1)).unwrap_or(i64::MAX),
        ..pb::Outcome::default()
    }
}

/// A request's text field (`user`, `order_id`): UTF-8, then the id bounds.
fn checked_id(field: &'static str, id: Bytes) -> Checked<String> {
    let text = std::str::from_utf8(&id).map_err(|error| InvalidRequest {
        field: field.into(),
        reason: format!("not UTF-8 (byte {} is not valid there)", error.valid_up_to()),
    })?;
    limits::check_id(field, text)?;
    Ok(text.to_owned())
}

pub fn outcome(outcome: &Outcome) -> pb::Outcome {
    use pb::OutcomeCode as Code;
    let mut wire = pb::Outcome::default();
    let code = match outcome {
        Outcome::Reserved { expires_at_ms } => {
            wire.expires_at_ms = saturating_i64(*expires_at_ms);
            Code::Reserved
        }
        Outcome::Confirmed => Code::Confirmed,
        Outcome::Released => Code::Released,
        Outcome::Ok => Code::Ok,
        Outcome::SoldOut { available } => {
            wire.available = saturating_i64(*available);
            Code::SoldOut
        }
        Outcome::LimitExceeded { held, limit } => {
            wire.held = saturating_i64(*held);
            wire.limit = saturating_i64(*limit);
            Code::LimitExceeded
        }
        Outcome::SaleClosed => Code::SaleClosed,
        Outcome::UnknownSku => Code::UnknownSku,
        Outcome::NotFound => Code::NotFound,
        Outcome::Expired => Code::Expired,
        Outcome::AlreadyConfirmed => Code::AlreadyConfirmed,
        Outcome::RequestTooOld => Code::RequestTooOld,
        Outcome::OrderIdReused => {
            wire.detail = "order_id already used by a different request".into();
            Code::OrderIdReused
        }
        Outcome::Rejected { reason } => {
            wire.detail = reason.clone();
            Code::Rejected
        }
        // The node turns this into a stale-epoch error before answering (`node::write`); should
        // one ever get here, it still says nothing was done.
        Outcome::WrongShard { epoch } => {
            wire.detail = format!("the SKU left this shard (now at epoch {epoch}): refresh the shard map");
            Code::Rejected
        }
    };
    wire.code = code as i32;
    wire
}

pub fn counts(counts: StockCounts) -> pb::StockCounts {
    pb::StockCounts {
        total: saturating_i64(counts.total),
        available: saturating_i64(counts.available),
        reserved: saturating_i64(counts.reserved),
        sold: saturating_i64(counts.sold),
    }
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserve_request() -> pb::ReserveRequest {
        pb::ReserveRequest {
            sku: b"sku-1".to_vec().into(),
            qty: 2,
            user: "alice".into(),
            order_id: "order-1".into(),
            ttl_ms: 0,
            first_attempt_ms: 1_700_000_000_000,
            route: None,
            priority: 0,
        }
    }

    fn field_of(result: Checked<Operation>) -> String {
        result.expect_err("must be refused").field
    }

    #[test]
    fn a_valid_reserve_converts() {
        let op = reserve(reserve_request()).expect("valid");
        assert_eq!(
            op,
            Operation::Reserve {
                sku: b"sku-1".to_vec(),
                qty: 2,
                user: "alice".into(),
                order_id: "order-1".into(),
                ttl_ms: 0,
                first_attempt_ms: 1_700_000_000_000,
            }
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(pb::ReserveRequest, &str)> = vec![
            (
                pb::ReserveRequest {
                    qty: 0,
                    ..reserve_request()
                },
                "qty",
            ),
            (
                pb::ReserveRequest {
                    qty: -5,
                    ..reserve_request()
                },
                "qty",
            ),
            (
                pb::ReserveRequest {
                    qty: i64::MAX,
                    ..reserve_request()
                },
                "qty",
            ),
            (
                pb::ReserveRequest {
                    sku: Vec::new().into(),
                    ..reserve_request()
                },
                "sku",
            ),
            (
                pb::ReserveRequest {
                    sku: vec![b'x'; 129].into(),
                    ..reserve_request()
                },
                "sku",
            ),
            (
                pb::ReserveRequest {
                    user: Bytes::new(),
                    ..reserve_request()
                },
                "user",
            ),
            (
                pb::ReserveRequest {
                    user: "u".repeat(129).into(),
                    ..reserve_request()
                },
                "user",
            ),
            (
                pb::ReserveRequest {
                    order_id: Bytes::new(),
                    ..reserve_request()
                },
                "order_id",
            ),
            (
                pb::ReserveRequest {
                    order_id: "o".repeat(500).into(),
                    ..reserve_request()
                },
                "order_id",
            ),
            (
                pb::ReserveRequest {
                    ttl_ms: -1,
                    ..reserve_request()
                },
                "ttl_ms",
            ),
            (
                pb::ReserveRequest {
                    ttl_ms: i64::MAX,
                    ..reserve_request()
                },
                "ttl_ms",
            ),
        ];
        for (request, field) in cases {
            assert_eq!(field_of(reserve(request.clone())), field, "{request:?}");
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_refused_naming_the_field() {
        let not_utf8 = || Bytes::from_static(&[b'a', 0xff, 0xfe]);
        let reserve_bad_user = pb::ReserveRequest {
            user: not_utf8(),
            ..reserve_request()
        };
        let refused = reserve(reserve_bad_user).expect_err("refused");
        assert_eq!(refused.field, "user");
        assert!(refused.to_string().contains("not UTF-8 (byte 1"), "{refused}");
        let reserve_bad_order = pb::ReserveRequest {
            order_id: not_utf8(),
            ..reserve_request()
        };
        assert_eq!(field_of(reserve(reserve_bad_order)), "order_id");
        let purchase_request = pb::PurchaseRequest {
            sku: b"sku-1".to_vec().into(),
            qty: 1,
            user: not_utf8(),
            order_id: "order-1".into(),
            first_attempt_ms: 1_700_000_000_000,
            route: None,
            priority: 0,
        };
        assert_eq!(field_of(purchase(purchase_request)), "user");
        let confirm_request = pb::ConfirmRequest {
            sku: b"sku-1".to_vec().into(),
            order_id: not_utf8(),
            first_attempt_ms: 1_700_000_000_000,
            route: None,
            priority: 0,
        };
        assert_eq!(field_of(confirm(confirm_request)), "order_id");
        let cancel_request = pb::CancelRequest {
            sku: b"sku-1".to_vec().into(),
            order_id: not_utf8(),
            first_attempt_ms: 1_700_000_000_000,
            route: None,
            priority: 0,
        };
        assert_eq!(field_of(cancel(cancel_request)), "order_id");
        let in_batch = pb::WriteOp {
            op: Some(pb::write_op::Op::Reserve(pb::ReserveRequest {
                user: not_utf8(),
                ..reserve_request()
            })),
        };
        let refused = batch(
            pb::BatchRequest {
                ops: vec![in_batch],
                priority: 0,
            },
            10,
        )
        .expect_err("refused");
        assert_eq!(refused.field, "ops[0].user");
    }

    #[test]
    fn admin_bounds_are_checked() {
        let put = |total, rules| pb::PutSkuRequest {
            sku: b"s".to_vec().into(),
            total,
            rules,
            route: None,
            priority: 0,
        };
        assert_eq!(field_of(put_sku(put(-1, None))), "total");
        assert_eq!(field_of(put_sku(put(i64::MAX, None))), "total");
        let window = pb::SaleRules {
            start_ms: 10,
            end_ms: 5,
            ..Default::default()
        };
        assert_eq!(field_of(put_sku(put(5, Some(window)))), "rules.end_ms");
        let restock_request = |delta| pb::RestockRequest {
            sku: b"s".to_vec().into(),
            delta,
            route: None,
            priority: 0,
        };
        assert_eq!(field_of(restock(restock_request(0))), "delta");
        assert_eq!(field_of(restock(restock_request(i64::MIN))), "delta");
    }

    #[test]
    fn priorities_default_to_standard_and_a_batch_is_admitted_as_one() {
        assert_eq!(priority("priority", 0), Ok(Priority::Standard));
        assert_eq!(
            priority("priority", pb::Priority::Background as i32),
            Ok(Priority::Background)
        );
        assert_eq!(priority("priority", 9).expect_err("unknown").field, "priority");
        let op = |priority| pb::WriteOp {
            op: Some(pb::write_op::Op::Reserve(pb::ReserveRequest {
                priority,
                ..reserve_request()
            })),
        };
        let premium = pb::Priority::Premium as i32;
        let batch_of = |ops| pb::BatchRequest { ops, priority: premium };
        assert_eq!(
            batch_priority(&batch_of(vec![op(0), op(premium)])),
            Ok(Priority::Premium)
        );
        let mixed = batch_priority(&batch_of(vec![op(0), op(pb::Priority::Background as i32)]));
        assert_eq!(mixed.expect_err("differs").field, "ops[1].priority");
    }

    #[test]
    fn a_skus_own_rate_limits_are_checked() {
        let put = |rules| pb::PutSkuRequest {
            sku: b"s".to_vec().into(),
            total: 5,
            rules: Some(rules),
            route: None,
            priority: 0,
        };
        let rules = pb::SaleRules {
            buyer_ops_per_s: 2,
            buyer_burst_ops: 4,
            client_ops_per_s: 100,
            ..Default::default()
        };
        match put_sku(put(rules)).expect("valid") {
            Operation::PutSku { rules, .. } => {
                assert_eq!((rules.buyer_rate.ops_per_s, rules.buyer_rate.burst_ops), (2, 4));
                assert_eq!((rules.client_rate.ops_per_s, rules.client_rate.burst_ops), (100, 0));
            }
            other => panic!("{other:?}"),
        }
        for (rules, field) in [
            (
                pb::SaleRules {
                    buyer_ops_per_s: -1,
                    ..Default::default()
                },
                "rules.buyer_ops_per_s",
            ),
            (
                pb::SaleRules {
                    client_burst_ops: 3,
                    ..Default::default()
                },
                "rules.client_burst_ops",
            ),
            (
                pb::SaleRules {
                    client_ops_per_s: 1_000_001,
                    ..Default::default()
                },
                "rules.client_ops_per_s",
            ),
        ] {
            assert_eq!(field_of(put_sku(put(rules))), field);
        }
    }

    #[test]
    fn the_client_id_is_scoped_by_the_authenticated_caller() {
        use tonic::metadata::MetadataValue;
        let id = MetadataValue::from_static("checkout-7");
        let caller = Caller::Client {
            role: crate::security::Role::BuyerService,
            name: "shop".into(),
        };
        let peer: std::net::SocketAddr = "10.1.2.3:4567".parse().expect("address");
        assert_eq!(
            client_identity(Some(&id), Some(&caller), Some(peer)),
            Ok("shop/checkout-7".into())
        );
        assert_eq!(
            client_identity(Some(&id), Some(&Caller::Unchecked), Some(peer)),
            Ok("checkout-7".into())
        );
        assert_eq!(client_identity(None, Some(&caller), Some(peer)), Ok("shop".into()));
        assert_eq!(client_identity(None, None, Some(peer)), Ok("10.1.2.3".into()));
        let long = MetadataValue::try_from("x".repeat(129)).expect("ascii");
        assert!(client_identity(Some(&long), None, Some(peer)).is_err());
    }

    #[test]
    fn batch_errors_name_the_position() {
        let good = pb::WriteOp {
            op: Some(pb::write_op::Op::Reserve(reserve_request())),
        };
        let bad = pb::WriteOp {
            op: Some(pb::write_op::Op::Reserve(pb::ReserveRequest {
                qty: 0,
                ..reserve_request()
            })),
        };
        let error = batch(
            pb::BatchRequest {
                ops: vec![good.clone(), bad],
                priority: 0,
            },
            10,
        )
        .expect_err("refused");
        assert_eq!(error.field, "ops[1].qty");
        let empty = batch(
            pb::BatchRequest {
                ops: vec![pb::WriteOp { op: None }],
                priority: 0,
            },
            10,
        )
        .expect_err("refused");
        assert_eq!(empty.field, "ops[0].op");
        let too_many = batch(
            pb::BatchRequest {
                ops: vec![good; 11],
                priority: 0,
            },
            10,
        )
        .expect_err("refused");
        assert_eq!(too_many.field, "ops");
    }
}
