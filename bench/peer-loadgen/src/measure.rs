//! The measurement every closed-loop peer run shares: a window (warm-up, then `secs` measured)
//! that tells each client when to stop, and each client's tally of what it saw, merged at the
//! end into the JSON line's counts, rates and latencies.
//!
//! A request counts toward rates and latencies only if it started after the warm-up and was
//! answered before the window closed (the rule of the team's earlier load generator, so the
//! figures compare). Totals count every request, warm-up included: the oversell check needs
//! all acknowledged purchases.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::Map;
use serde_json::Value;
use serde_json::json;

use crate::RunArgs;

/// When the run measures, and whether it is over.
pub struct Window {
    pub measure_start: Instant,
    pub measure_end: Instant,
    /// `--until-sold-out`: the first sold-out answer ends the run for every client.
    stop_when_sold_out: bool,
    stopped: AtomicBool,
}

impl Window {
    pub fn new(run: &RunArgs) -> Window {
        let measure_start = Instant::now() + Duration::from_secs(run.warmup_secs);
        Window {
            measure_start,
            measure_end: measure_start + Duration::from_secs(run.secs),
            stop_when_sold_out: run.until_sold_out,
            stopped: AtomicBool::new(false),
        }
    }

    /// The start of a client's next request, or `None` once the run is over.
    pub fn next_start(&self) -> Option<Instant> {
        let now = Instant::now();
        (now < self.measure_end && !self.is_stopped()).then_some(now)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// A client was told the SKU is sold out.
    pub fn saw_sold_out(&self) {
        if self.stop_when_sold_out {
            self.stopped.store(true, Ordering::Relaxed);
        }
    }

    /// Ends the run (every client has finished).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    fn contains(&self, started: Instant, finished: Instant) -> bool {
        started >= self.measure_start && finished <= self.measure_end
    }

    /// Seconds the rates are over: the window, or less when the run stopped early (sold out).
    pub fn measured_secs(&self) -> f64 {
        let full = self.measure_end.duration_since(self.measure_start).as_secs_f64();
        Instant::now()
            .saturating_duration_since(self.measure_start)
            .as_secs_f64()
            .min(full)
    }
}

/// How a purchase was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Purchased,
    SoldOut,
}

/// What one client saw (then all clients, merged).
pub struct Tally {
    /// In the window: purchases, sold-out answers, and requests of any kind.
    purchases: u64,
    rejections: u64,
    attempts: u64,
    /// Whole run: acknowledged purchases (the oversell check), sold-out answers, requests,
    /// compare-and-swap conflicts (etcd), and requests that got no answer — each of those may
    /// or may not have been applied, which the oversell check allows for.
    purchases_total: u64,
    rejections_total: u64,
    attempts_total: u64,
    conflicts_total: u64,
    errors_total: u64,
    /// Microseconds from a purchase's first request to its decision (retries included).
    decision_latency: Histogram<u64>,
    /// Microseconds of each request.
    attempt_latency: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds are valid")
}

fn micros(started: Instant, finished: Instant) -> u64 {
    (finished.duration_since(started).as_micros() as u64).max(1)
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            purchases: 0,
            rejections: 0,
            attempts: 0,
            purchases_total: 0,
            rejections_total: 0,
            attempts_total: 0,
            conflicts_total: 0,
            errors_total: 0,
            decision_latency: histogram(),
            attempt_latency: histogram(),
        }
    }

    /// One request to the server, answered.
    pub fn attempted(&mut self, window: &Window, started: Instant, finished: Instant) {
        self.attempts_total += 1;
        if window.contains(started, finished) {
            self.attempts += 1;
            self.attempt_latency.saturating_record(micros(started, finished));
        }
    }

    /// A purchase decided; `started` is when its first request went out.
    pub fn decided(&mut self, window: &Window, decision: Decision, started: Instant, finished: Instant) {
        let in_window = window.contains(started, finished);
        match decision {
            Decision::Purchased => {
                self.purchases_total += 1;
                self.purchases += u64::from(in_window);
            }
            Decision::SoldOut => {
                self.rejections_total += 1;
                self.rejections += u64::from(in_window);
                window.saw_sold_out();
            }
        }
        if in_window {
            self.decision_latency.saturating_record(micros(started, finished));
        }
    }

    /// A compare-and-swap that found another value than expected.
    pub fn conflicted(&mut self) {
        self.conflicts_total += 1;
    }

    /// A request that got no answer (an error or a timeout).
    pub fn failed(&mut self) {
        self.errors_total += 1;
    }

    pub fn purchases_total(&self) -> u64 {
        self.purchases_total
    }

    pub fn errors_total(&self) -> u64 {
        self.errors_total
    }

    pub fn merge(&mut self, other: &Tally) {
        self.purchases += other.purchases;
        self.rejections += other.rejections;
        self.attempts += other.attempts;
        self.purchases_total += other.purchases_total;
        self.rejections_total += other.rejections_total;
        self.attempts_total += other.attempts_total;
        self.conflicts_total += other.conflicts_total;
        self.errors_total += other.errors_total;
        self.decision_latency
            .add(&other.decision_latency)
            .expect("histograms with the same bounds merge");
        self.attempt_latency
            .add(&other.attempt_latency)
            .expect("histograms with the same bounds merge");
    }

    /// Rates over `secs`, latencies (null when none was recorded) and totals.
    pub fn json(&self, secs: f64) -> Map<String, Value> {
        let per_second = |count: u64| count as f64 / secs.max(1e-9);
        let mut fields = Map::new();
        fields.insert("secs".into(), json!(secs));
        fields.insert("purchases_per_s".into(), json!(per_second(self.purchases)));
        fields.insert("rejections_per_s".into(), json!(per_second(self.rejections)));
        fields.insert("attempts_per_s".into(), json!(per_second(self.attempts)));
        latency_fields(&mut fields, "", &self.decision_latency);
        latency_fields(&mut fields, "attempt_", &self.attempt_latency);
        fields.insert("ok_total".into(), json!(self.purchases_total));
        fields.insert("soldout_replies".into(), json!(self.rejections_total));
        fields.insert("attempts_total".into(), json!(self.attempts_total));
        fields.insert("conflicts".into(), json!(self.conflicts_total));
        fields.insert("errors".into(), json!(self.errors_total));
        fields
    }
}

/// `<prefix>p50_us` .. `<prefix>mean_us`: null when the histogram is empty (JSON has no NaN).
pub fn latency_fields(fields: &mut Map<String, Value>, prefix: &str, latency: &Histogram<u64>) {
    let empty = latency.is_empty();
    let value = |micros: f64| if empty { Value::Null } else { json!(micros) };
    for (name, quantile) in [("p50", 0.5), ("p99", 0.99), ("p999", 0.999)] {
        let micros = latency.value_at_quantile(quantile) as f64;
        fields.insert(format!("{prefix}{name}_us"), value(micros));
    }
    fields.insert(format!("{prefix}max_us"), value(latency.max() as f64));
    fields.insert(format!("{prefix}mean_us"), value(latency.mean()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(until_sold_out: bool) -> Window {
        let now = Instant::now();
        Window {
            measure_start: now + Duration::from_secs(1),
            measure_end: now + Duration::from_secs(3),
            stop_when_sold_out: until_sold_out,
            stopped: AtomicBool::new(false),
        }
    }

    #[test]
    fn warm_up_requests_count_in_totals_but_not_in_rates() {
        let window = window(false);
        let mut tally = Tally::new();
        let warm_up = window.measure_start - Duration::from_millis(10);
        tally.decided(
            &window,
            Decision::Purchased,
            warm_up,
            warm_up + Duration::from_millis(1),
        );
        let inside = window.measure_start + Duration::from_millis(10);
        tally.decided(&window, Decision::Purchased, inside, inside + Duration::from_millis(1));
        let fields = tally.json(2.0);
        assert_eq!(fields["ok_total"], json!(2));
        assert_eq!(fields["purchases_per_s"], json!(0.5));
        assert_eq!(tally.decision_latency.len(), 1);
    }

    #[test]
    fn a_sold_out_answer_stops_the_run_only_when_asked() {
        for until_sold_out in [false, true] {
            let window = window(until_sold_out);
            let mut tally = Tally::new();
            let inside = window.measure_start + Duration::from_millis(10);
            tally.decided(&window, Decision::SoldOut, inside, inside + Duration::from_millis(1));
            assert_eq!(window.is_stopped(), until_sold_out);
        }
    }

    #[test]
    fn latencies_are_null_when_nothing_was_recorded() {
        let fields = Tally::new().json(1.0);
        assert_eq!(fields["p50_us"], Value::Null);
        assert_eq!(fields["attempt_max_us"], Value::Null);
    }
}
