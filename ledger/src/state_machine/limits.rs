//! Input bounds shared by the gRPC layer (which rejects bad requests with INVALID_ARGUMENT
//! naming the field) and the state machine (which re-checks everything it applies).

use crate::state_machine::command::RateOverride;

/// A SKU is 1..=128 bytes (DESIGN.md).
pub const SKU_BYTES_MAX: usize = 128;
/// Order ids and user ids are 1..=128 bytes of UTF-8.
pub const ID_BYTES_MAX: usize = 128;
/// Units one operation may reserve or buy.
pub const QTY_MAX: u64 = 1_000_000;
/// Units one SKU may have on sale; keeps every sum far from u64 overflow.
pub const TOTAL_MAX: u64 = 1_000_000_000_000;
/// The longest reservation TTL (one day).
pub const TTL_MS_MAX: u64 = 86_400_000;
/// The TTL used when neither the request nor the SKU's rules name one (ten minutes).
pub const TTL_MS_DEFAULT: u64 = 600_000;
/// How long an order id answers its first answer (24 h; `ledger.idempotency_window_ms`).
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 86_400_000;
/// How far a client's clock may be off the leaders' (5 min; `ledger.clock_skew_margin_ms`).
pub const CLOCK_SKEW_MARGIN_MS_DEFAULT: u64 = 300_000;
/// The largest per-user limit (records keep a limit answer's limit in 32 bits).
pub const PER_USER_LIMIT_MAX: u64 = u32::MAX as u64;

/// A request field that broke a bound: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidField {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidField {
    pub fn new(field: &'static str, reason: impl Into<String>) -> Self {
        InvalidField {
            field,
            reason: reason.into(),
        }
    }
}

pub fn check_sku(sku: &[u8]) -> Result<(), InvalidField> {
    if sku.is_empty() {
        return Err(InvalidField::new("sku", "must not be empty"));
    }
    if sku.len() > SKU_BYTES_MAX {
        return Err(InvalidField::new(
            "sku",
            format!("{} bytes, at most {SKU_BYTES_MAX}", sku.len()),
        ));
    }
    Ok(())
}

pub fn check_id(field: &'static str, id: &str) -> Result<(), InvalidField> {
    if id.is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if id.len() > ID_BYTES_MAX {
        return Err(InvalidField::new(
            field,
            format!("{} bytes, at most {ID_BYTES_MAX}", id.len()),
        ));
    }
    Ok(())
}

/// Converts a signed wire quantity into a checked one (1..=QTY_MAX).
pub fn check_qty(qty: i64) -> Result<u64, InvalidField> {
    if qty <= 0 {
        return Err(InvalidField::new("qty", format!("{qty}, must be at least 1")));
    }
    let qty = qty as u64;
    if qty > QTY_MAX {
        return Err(InvalidField::new("qty", format!("{qty}, at most {QTY_MAX}")));
    }
    Ok(qty)
}

pub fn check_total(total: i64) -> Result<u64, InvalidField> {
    if total < 0 {
        return Err(InvalidField::new("total", format!("{total}, must not be negative")));
    }
    let total = total as u64;
    if total > TOTAL_MAX {
        return Err(InvalidField::new("total", format!("{total}, at most {TOTAL_MAX}")));
    }
    Ok(total)
}

pub fn check_delta(delta: i64) -> Result<i64, InvalidField> {
    if delta == 0 {
        return Err(InvalidField::new("delta", "must not be zero"));
    }
    if delta.unsigned_abs() > TOTAL_MAX {
        return Err(InvalidField::new(
            "delta",
            format!("{delta}, magnitude at most {TOTAL_MAX}"),
        ));
    }
    Ok(delta)
}

/// A TTL of 0 means "use the default"; otherwise 1..=TTL_MS_MAX.
pub fn check_ttl(field: &'static str, ttl_ms: i64) -> Result<u64, InvalidField> {
    if ttl_ms < 0 {
        return Err(InvalidField::new(field, format!("{ttl_ms}, must not be negative")));
    }
    let ttl_ms = ttl_ms as u64;
    if ttl_ms > TTL_MS_MAX {
        return Err(InvalidField::new(field, format!("{ttl_ms} ms, at most {TTL_MS_MAX}")));
    }
    Ok(ttl_ms)
}

/// The time of a write's first attempt: required (ms since the Unix epoch, at least 1).
pub fn check_first_attempt(first_attempt_ms: i64) -> Result<u64, InvalidField> {
    if first_attempt_ms <= 0 {
        return Err(InvalidField::new(
            "first_attempt_ms",
            format!(
                "{first_attempt_ms}: must be set to the time the client first sent this write (ms since the Unix \
                 epoch), the same on every retry"
            ),
        ));
    }
    Ok(first_attempt_ms as u64)
}

/// A per-user limit: 0 (none) ..= [`PER_USER_LIMIT_MAX`].
pub fn check_per_user_limit(limit: i64) -> Result<u64, InvalidField> {
    let limit = check_non_negative("rules.per_user_limit", limit)?;
    if limit > PER_USER_LIMIT_MAX {
        return Err(InvalidField::new(
            "rules.per_user_limit",
            format!("{limit}, at most {PER_USER_LIMIT_MAX}"),
        ));
    }
    Ok(limit)
}

/// The most operations per second, and per burst, a SKU's own rate limit may name.
pub const RATE_OPS_MAX: u64 = 1_000_000;

/// A SKU's own rate limit (`rules.<kind>_ops_per_s` and `rules.<kind>_burst_ops`): both in
/// 0..=[`RATE_OPS_MAX`], and a burst only with a rate.
pub fn check_rate_override(
    rate_field: &'static str,
    burst_field: &'static str,
    ops_per_s: i64,
    burst_ops: i64,
) -> Result<RateOverride, InvalidField> {
    let ops_per_s = check_non_negative(rate_field, ops_per_s)?;
    let burst_ops = check_non_negative(burst_field, burst_ops)?;
    for (field, value) in [(rate_field, ops_per_s), (burst_field, burst_ops)] {
        if value > RATE_OPS_MAX {
            return Err(InvalidField::new(field, format!("{value}, at most {RATE_OPS_MAX}")));
        }
    }
    if ops_per_s == 0 && burst_ops != 0 {
        return Err(InvalidField::new(
            burst_field,
            format!("{burst_ops} without {rate_field}: a burst needs its rate"),
        ));
    }
    Ok(RateOverride { ops_per_s, burst_ops })
}

pub fn check_non_negative(field: &'static str, value: i64) -> Result<u64, InvalidField> {
    u64::try_from(value).map_err(|_| InvalidField::new(field, format!("{value}, must not be negative")))
}
