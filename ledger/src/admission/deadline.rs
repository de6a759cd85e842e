//! [`Deadline`]: when a request's caller stops waiting, from its `grpc-timeout` header counted
//! from its arrival ([`Arrival`], stamped by `arrival.rs` before the request is decoded), and the
//! question admission asks of it: is there still time to do the work?
//!
//! A request whose deadline has passed, or is nearer than its shard's operations have recently
//! taken, is dropped before it is proposed: its caller would not hear the answer, and an entry
//! nobody waits for still costs an fdatasync on a majority. The node asks again right before
//! proposing (a lease or settings round may have taken the time meanwhile).

use std::time::Duration;

use tokio::time::Instant;

/// When a request reached the node (before it was decoded), put in its extensions.
#[derive(Debug, Clone, Copy)]
pub struct Arrival(pub Instant);

/// The instant a request's caller gives up; `None` when it named no deadline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(pub Option<Instant>);

impl Deadline {
    /// The deadline of a request that arrived at `arrived` with the `grpc-timeout` header
    /// `header` (absent or unreadable: none).
    pub fn from_header(arrived: Instant, header: Option<&str>) -> Deadline {
        Deadline(header.and_then(parse_grpc_timeout).map(|timeout| arrived + timeout))
    }

    /// Whether less than `needs` is left at `now` (a deadline at or before `now` always is).
    pub fn cannot_meet(&self, now: Instant, needs: Duration) -> bool {
        self.0.is_some_and(|at| at.saturating_duration_since(now) <= needs)
    }
}

/// A `grpc-timeout` value: at most 8 ASCII digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`), as
/// the gRPC over HTTP/2 protocol spells it.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(amount * 3_600),
        'M' => Duration::from_secs(amount * 60),
        'S' => Duration::from_secs(amount),
        'm' => Duration::from_millis(amount),
        'u' => Duration::from_micros(amount),
        'n' => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_protocol_spells_them() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1_500)));
        assert_eq!(parse_grpc_timeout("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3_600)));
        assert_eq!(parse_grpc_timeout("0n"), Some(Duration::ZERO));
        for bad in ["", "S", "123456789S", "10s", "-1S", "1.5S", "10"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_deadline_that_passed_or_is_too_near_cannot_be_met() {
        let arrived = Instant::now();
        let deadline = Deadline::from_header(arrived, Some("100m"));
        assert!(!deadline.cannot_meet(arrived, Duration::ZERO));
        assert!(!deadline.cannot_meet(arrived, Duration::from_millis(99)));
        assert!(
            deadline.cannot_meet(arrived, Duration::from_millis(100)),
            "nearer than the work takes"
        );
        assert!(
            deadline.cannot_meet(arrived + Duration::from_millis(100), Duration::ZERO),
            "passed"
        );
        assert!(deadline.cannot_meet(arrived + Duration::from_secs(5), Duration::ZERO));
        let none = Deadline::from_header(arrived, None);
        assert!(!none.cannot_meet(arrived + Duration::from_secs(3_600), Duration::from_secs(60)));
        assert_eq!(Deadline::from_header(arrived, Some("soon")), Deadline(None));
    }
}
