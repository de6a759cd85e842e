//! A run's JSON line and its oversell check.
//!
//! The line keeps the field names of the team's earlier load generator (`system`, `label`,
//! `clients`, `skus`, `purchases_per_s`, `attempts_per_s`, `p50_us`, `p99_us`, ...), which
//! `flashbench compare` reads, and adds `runner`: who produced it.
//!
//! The check: the hot SKU's final stock must equal the initial stock minus the purchases the
//! peer acknowledged. A request that got no answer may or may not have been applied, so each
//! one lets the final stock be one lower; anything else, or a stock below zero, is a failure.

use serde_json::Map;
use serde_json::Value;
use serde_json::json;

/// The numbers the oversell check needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub initial_stock: i64,
    pub acknowledged: u64,
    pub final_stock: i64,
    /// Requests whose effect is unknown (no answer).
    pub unanswered: u64,
}

impl Verdict {
    fn expected_stock(&self) -> i64 {
        self.initial_stock - self.acknowledged as i64
    }

    pub fn oversold(&self) -> bool {
        self.final_stock < 0 || self.acknowledged as i64 > self.initial_stock
    }

    pub fn consistent(&self) -> bool {
        self.final_stock == self.expected_stock()
    }

    /// Consistent, or lower by no more than the unanswered requests.
    fn explained(&self) -> bool {
        let expected = self.expected_stock();
        self.final_stock <= expected && self.final_stock >= expected - self.unanswered as i64
    }

    fn json(&self) -> Map<String, Value> {
        let mut fields = Map::new();
        fields.insert("final_stock_sum".into(), json!(self.final_stock));
        fields.insert("expected_stock_sum".into(), json!(self.expected_stock()));
        fields.insert("min_stock".into(), json!(self.final_stock));
        fields.insert("oversold".into(), json!(self.oversold()));
        fields.insert("consistent".into(), json!(self.consistent()));
        fields
    }

    /// `Err` when the peer oversold or its stock disagrees with its answers.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.oversold(), "OVERSOLD: {self:?}");
        anyhow::ensure!(
            self.explained(),
            "the final stock does not match the acknowledged purchases: {self:?}"
        );
        Ok(())
    }
}

/// A finished run: its JSON line and its verdict.
pub struct RunResult {
    pub line: String,
    pub verdict: Verdict,
}

/// What names a run in the JSON line.
pub struct Header<'a> {
    pub system: &'a str,
    pub label: &'a str,
    pub runner: &'a str,
    pub client: &'a str,
    pub clients: u64,
    pub stock: i64,
}

impl RunResult {
    /// The line: the header, each part's fields, the verdict's.
    pub fn new(header: &Header, parts: Vec<Map<String, Value>>, verdict: Verdict) -> RunResult {
        let mut line = Map::new();
        line.insert("system".into(), json!(header.system));
        line.insert("label".into(), json!(header.label));
        line.insert("runner".into(), json!(header.runner));
        line.insert("client".into(), json!(header.client));
        line.insert("clients".into(), json!(header.clients));
        line.insert("skus".into(), json!(1));
        line.insert("stock_per_sku".into(), json!(header.stock));
        for part in parts {
            line.extend(part);
        }
        line.extend(verdict.json());
        RunResult {
            line: Value::Object(line).to_string(),
            verdict,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(acknowledged: u64, final_stock: i64, unanswered: u64) -> Verdict {
        Verdict {
            initial_stock: 100,
            acknowledged,
            final_stock,
            unanswered,
        }
    }

    #[test]
    fn the_check_passes_only_when_the_stock_matches_the_answers() {
        assert!(verdict(40, 60, 0).check().is_ok());
        assert!(verdict(40, 59, 0).check().is_err(), "a unit went missing");
        assert!(
            verdict(40, 61, 0).check().is_err(),
            "an acknowledged purchase was not applied"
        );
        assert!(
            verdict(40, 58, 2).check().is_ok(),
            "two unanswered requests may have been applied"
        );
        assert!(verdict(40, 57, 2).check().is_err());
    }

    #[test]
    fn selling_more_than_the_stock_is_overselling() {
        assert!(verdict(101, -1, 0).oversold());
        assert!(verdict(100, 0, 0).check().is_ok());
        assert!(verdict(0, -1, 5).check().is_err());
    }

    #[test]
    fn the_line_has_the_fields_compare_reads() {
        let header = Header {
            system: "redis",
            label: "noaof",
            runner: "r",
            client: "raw",
            clients: 64,
            stock: 100,
        };
        let mut rates = Map::new();
        rates.insert("purchases_per_s".into(), json!(5.0));
        let result = RunResult::new(&header, vec![rates], verdict(40, 60, 0));
        let value: Value = serde_json::from_str(&result.line).unwrap();
        for key in [
            "system",
            "label",
            "runner",
            "clients",
            "skus",
            "purchases_per_s",
            "consistent",
        ] {
            assert!(value.get(key).is_some(), "{key} missing from {}", result.line);
        }
    }
}
