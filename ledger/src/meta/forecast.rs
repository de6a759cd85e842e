//! The demand forecast `ledger plan-sale` balances the cluster for: expected units per SKU in the
//! next sale, from a history of earlier sales, and the operations per second those units mean at
//! the sale's peak.
//!
//! # The model
//!
//! Exponential smoothing per SKU over the sales in the history, oldest first:
//!
//! ```text
//! s_1 = x_1
//! s_t = alpha * x_t + (1 - alpha) * s_(t-1)        forecast = s_n
//! ```
//!
//! where `x_t` is the units of the SKU sold in sale `t`, and a SKU absent from a sale sold 0
//! units there (a SKU first sold in the last sale is forecast at `alpha` times that sale, not at
//! its full figure: one sale is weak evidence). [`ALPHA_DEFAULT`] is 0.5: flash sales are few
//! (a handful a year) and what sells moves between them, so the last sale should weigh most, yet
//! one odd sale should not erase the ones before it; at 0.5 the last sale carries half the
//! weight, the one before a quarter, and so on (about three sales of memory).
//!
//! # The files
//!
//! Both are CSV with a header line, one record a line, fields quoted as PostgreSQL's
//! `COPY ... (FORMAT csv)` quotes them (a field holding a comma or a quote is in double quotes,
//! a quote inside doubled). SKUs are UTF-8 text, as everywhere in the CLI, 1 to
//! [`SKU_BYTES_MAX`](crate::state_machine::limits::SKU_BYTES_MAX) bytes.
//!
//! - History: `sale,sku,units`, one row per (sale, SKU) with the units sold. `sale` is a label;
//!   sales are ordered by their first appearance in the file (export them oldest first).
//!   Several files (one per PostgreSQL shard, each holding part of every sale's orders) add up
//!   per (sale, SKU); within one file a repeated (sale, SKU) is an error, because it usually
//!   means two exports were pasted together.
//! - Forecast: `sku,units`, the expected units of the next sale (a decimal number, not
//!   negative), each SKU once. Any model may write it; [`History::forecast`] is one.
//!
//! Bad input is an error naming the file and line; nothing is built from a file with an error.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

use crate::state_machine::limits::TOTAL_MAX;
use crate::state_machine::limits::check_sku;

/// Weight of the latest sale in the smoothing (see the module docs for why 0.5).
pub const ALPHA_DEFAULT: f64 = 0.5;
/// Rows one file may hold: bounds the memory a mistaken file (a raw orders dump) can take.
pub const ROWS_MAX: usize = 5_000_000;
/// Sales a history may name (decades of sales; a label per order is a mistaken export).
pub const SALES_MAX: usize = 10_000;
/// The longest sale label, in bytes.
pub const SALE_LABEL_BYTES_MAX: usize = 128;

/// A file the forecast could not use, and where.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ForecastError {
    #[error("{source_name}:{line}: {reason}")]
    Line {
        source_name: String,
        line: usize,
        reason: String,
    },
    #[error("{source_name}: no rows after the header (an empty export?)")]
    Empty { source_name: String },
    #[error("{source_name}: more than {max} rows")]
    TooManyRows { source_name: String, max: usize },
    #[error("{source_name}: more than {SALES_MAX} sales")]
    TooManySales { source_name: String },
    #[error("alpha must be in (0, 1], got {0}")]
    Alpha(f64),
    #[error("invalid peak model: {0}")]
    PeakModel(String),
}

/// Units sold per SKU in each earlier sale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct History {
    /// Sale labels, oldest first; an index here is a sale's position in time.
    sales: Vec<String>,
    /// SKU -> (sale index -> units). Sparse: a SKU absent from a sale sold 0 there.
    units_by_sku: BTreeMap<String, BTreeMap<usize, u64>>,
}

impl History {
    pub fn new() -> Self {
        History::default()
    }

    /// Adds one file's rows (see the module docs for the format). `source_name` names the file
    /// in errors. The whole file is checked before anything is added.
    pub fn add_csv(&mut self, source_name: &str, text: &str) -> Result<(), ForecastError> {
        let table = Table::parse(source_name, text, &["sale", "sku", "units"])?;
        let mut sales = self.sales.clone();
        let mut sale_index: BTreeMap<String, usize> = sales
            .iter()
            .enumerate()
            .map(|(index, sale)| (sale.clone(), index))
            .collect();
        // (sale index, sku) -> (units, line): catches a repeat within this file.
        let mut rows: BTreeMap<(usize, String), (u64, usize)> = BTreeMap::new();
        for row in &table.rows {
            let label = row.field(0);
            if label.is_empty() || label.len() > SALE_LABEL_BYTES_MAX {
                return Err(row.error(format!("sale label must be 1 to {SALE_LABEL_BYTES_MAX} bytes")));
            }
            let sku = row.sku(1)?;
            let units = row.units_whole(2)?;
            let sale = match sale_index.get(label) {
                Some(&index) => index,
                None if sales.len() == SALES_MAX => {
                    return Err(ForecastError::TooManySales {
                        source_name: source_name.to_string(),
                    });
                }
                None => {
                    sale_index.insert(label.to_string(), sales.len());
                    sales.push(label.to_string());
                    sales.len() - 1
                }
            };
            match rows.entry((sale, sku.to_string())) {
                Entry::Occupied(first) => {
                    return Err(row.error(format!(
                        "sale {label:?}, SKU {sku:?} repeats line {} (one row per sale and SKU in a file)",
                        first.get().1
                    )));
                }
                Entry::Vacant(slot) => {
                    slot.insert((units, row.line));
                }
            }
        }
        let mut units_by_sku = self.units_by_sku.clone();
        for ((sale, sku), (units, line)) in rows {
            let total = units_by_sku.entry(sku).or_default().entry(sale).or_insert(0);
            *total = total
                .checked_add(units)
                .filter(|sum| *sum <= TOTAL_MAX)
                .ok_or_else(|| ForecastError::Line {
                    source_name: source_name.to_string(),
                    line,
                    reason: format!("units summed over the files exceed {TOTAL_MAX}"),
                })?;
        }
        self.sales = sales;
        self.units_by_sku = units_by_sku;
        Ok(())
    }

    /// Sale labels, oldest first.
    pub fn sales(&self) -> &[String] {
        &self.sales
    }

    /// Units of `sku` sold in each sale, oldest first (0 where it was absent).
    pub fn series(&self, sku: &str) -> Vec<u64> {
        let points = self.units_by_sku.get(sku);
        (0..self.sales.len())
            .map(|sale| points.and_then(|p| p.get(&sale)).copied().unwrap_or(0))
            .collect()
    }

    /// Expected units per SKU for the next sale: exponential smoothing with weight `alpha` on
    /// the latest sale (module docs).
    pub fn forecast(&self, alpha: f64) -> Result<Forecast, ForecastError> {
        if !(alpha > 0.0 && alpha <= 1.0) {
            return Err(ForecastError::Alpha(alpha));
        }
        let units = self
            .units_by_sku
            .iter()
            .map(|(sku, points)| (sku.clone(), smooth_sparse(points, self.sales.len(), alpha)))
            .collect();
        Ok(Forecast { units })
    }
}

/// Exponential smoothing of a series given by its non-zero points (sale index -> units) over
/// `sales` sales. A run of `k` zero sales multiplies the level by `(1 - alpha)^k`, so the cost
/// is one step per point, not per sale: a history of many sales and SKUs stays cheap.
fn smooth_sparse(points: &BTreeMap<usize, u64>, sales: usize, alpha: f64) -> f64 {
    let keep = 1.0 - alpha;
    let mut level = 0.0;
    // The sale whose value `level` includes; None before the first sale.
    let mut at: Option<usize> = None;
    for (&sale, &units) in points.range(..sales) {
        let units = units as f64;
        level = match at {
            // s_1 = x_1 when the first sale has the SKU; otherwise x_1 = 0 started the level.
            None if sale == 0 => units,
            None => alpha * units,
            Some(previous) => {
                let zeros = (sale - previous - 1) as i32;
                alpha * units + keep * level * keep.powi(zeros)
            }
        };
        at = Some(sale);
    }
    match at {
        Some(last) => level * keep.powi((sales - 1 - last) as i32),
        None => 0.0,
    }
}

/// Expected units per SKU in the next sale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forecast {
    units: BTreeMap<String, f64>,
}

impl Forecast {
    /// Expected units per SKU, in SKU order.
    pub fn units(&self) -> &BTreeMap<String, f64> {
        &self.units
    }

    /// Reads a forecast file (`sku,units`; module docs).
    pub fn parse_csv(source_name: &str, text: &str) -> Result<Forecast, ForecastError> {
        let table = Table::parse(source_name, text, &["sku", "units"])?;
        let mut units = BTreeMap::new();
        let mut lines = BTreeMap::new();
        for row in &table.rows {
            let sku = row.sku(0)?;
            let expected = row.units_decimal(1)?;
            if let Some(first) = lines.insert(sku.to_string(), row.line) {
                return Err(row.error(format!("SKU {sku:?} repeats line {first}")));
            }
            units.insert(sku.to_string(), expected);
        }
        Ok(Forecast { units })
    }

    /// The forecast file: header `sku,units`, units with three decimals, SKUs in order.
    pub fn to_csv(&self) -> String {
        let mut text = String::from("sku,units\n");
        for (sku, units) in &self.units {
            text.push_str(&format!("{},{units:.3}\n", csv_field(sku)));
        }
        text
    }

    /// Expected operations per second per SKU at the sale's peak, keyed by the SKU's bytes.
    pub fn ops_per_second(&self, peak: &PeakModel) -> BTreeMap<Vec<u8>, f64> {
        self.units
            .iter()
            .map(|(sku, units)| (sku.as_bytes().to_vec(), peak.ops_per_second(*units)))
            .collect()
    }
}

/// How a sale's units become operations per second at its peak. The assumption: the first
/// `peak_seconds` of the sale take `peak_share_percent` of its units, evenly, and each unit
/// sold costs `ops_per_unit` ledger operations. The defaults (60 s, 50 %, 2) describe a sale
/// where half the stock goes in the first minute through reserve-then-confirm; a sale where
/// many buyers are turned away (sold-out answers cost an operation each) has a higher
/// `ops_per_unit`. The same factor scales every SKU, so it changes the figures the plan prints
/// and the meaning of an explicit target, never which ranges are hot relative to each other.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeakModel {
    pub peak_seconds: u64,
    pub peak_share_percent: u64,
    pub ops_per_unit: f64,
}

impl Default for PeakModel {
    fn default() -> Self {
        PeakModel {
            peak_seconds: 60,
            peak_share_percent: 50,
            ops_per_unit: 2.0,
        }
    }
}

impl PeakModel {
    pub fn validate(&self) -> Result<(), ForecastError> {
        if self.peak_seconds == 0 {
            return Err(ForecastError::PeakModel("peak_seconds must be at least 1".into()));
        }
        if !(1..=100).contains(&self.peak_share_percent) {
            return Err(ForecastError::PeakModel("peak_share_percent must be 1 to 100".into()));
        }
        if !(self.ops_per_unit > 0.0 && self.ops_per_unit <= 1_000_000.0) {
            return Err(ForecastError::PeakModel(
                "ops_per_unit must be above 0 and at most 1000000".into(),
            ));
        }
        Ok(())
    }

    /// Operations per second during the peak for `units` sold in the sale.
    pub fn ops_per_second(&self, units: f64) -> f64 {
        units * self.ops_per_unit * (self.peak_share_percent as f64 / 100.0) / self.peak_seconds as f64
    }
}

/// A CSV file with a known header, split into rows.
struct Table<'a> {
    rows: Vec<Row<'a>>,
}

/// One record: its fields in the order the caller named the columns.
struct Row<'a> {
    source_name: &'a str,
    line: usize,
    fields: Vec<String>,
}

impl<'a> Table<'a> {
    /// Splits `text` into rows whose fields are reordered to `columns`; the header must name
    /// exactly those columns, in any order.
    fn parse(source_name: &'a str, text: &str, columns: &[&str]) -> Result<Table<'a>, ForecastError> {
        let line_error = |line: usize, reason: String| ForecastError::Line {
            source_name: source_name.to_string(),
            line,
            reason,
        };
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, text)| (index + 1, text.strip_suffix('\r').unwrap_or(text)))
            .filter(|(_, text)| !text.trim().is_empty());
        let Some((header_line, header)) = lines.next() else {
            return Err(ForecastError::Empty {
                source_name: source_name.to_string(),
            });
        };
        let header: Vec<String> = split_record(header)
            .map_err(|reason| line_error(header_line, reason))?
            .into_iter()
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        let mut positions = Vec::new();
        for column in columns {
            let position = header.iter().position(|name| name == column).ok_or_else(|| {
                line_error(
                    header_line,
                    format!("missing column {column:?} (the header must be {})", columns.join(",")),
                )
            })?;
            positions.push(position);
        }
        if let Some(extra) = header.iter().find(|name| !columns.contains(&name.as_str())) {
            return Err(line_error(
                header_line,
                format!("unknown column {extra:?} (the header must be {})", columns.join(",")),
            ));
        }
        if header.len() != columns.len() {
            return Err(line_error(header_line, "a column is named twice".to_string()));
        }
        let mut rows = Vec::new();
        for (line, text) in lines {
            if rows.len() == ROWS_MAX {
                return Err(ForecastError::TooManyRows {
                    source_name: source_name.to_string(),
                    max: ROWS_MAX,
                });
            }
            let fields = split_record(text).map_err(|reason| line_error(line, reason))?;
            if fields.len() != columns.len() {
                return Err(line_error(
                    line,
                    format!("{} fields, the header names {}", fields.len(), columns.len()),
                ));
            }
            let fields = positions.iter().map(|&position| fields[position].clone()).collect();
            rows.push(Row {
                source_name,
                line,
                fields,
            });
        }
        if rows.is_empty() {
            return Err(ForecastError::Empty {
                source_name: source_name.to_string(),
            });
        }
        Ok(Table { rows })
    }
}

impl Row<'_> {
    fn error(&self, reason: String) -> ForecastError {
        ForecastError::Line {
            source_name: self.source_name.to_string(),
            line: self.line,
            reason,
        }
    }

    fn field(&self, column: usize) -> &str {
        &self.fields[column]
    }

    /// The SKU in `column`, checked against the ledger's bounds.
    fn sku(&self, column: usize) -> Result<&str, ForecastError> {
        let sku = self.field(column);
        check_sku(sku.as_bytes()).map_err(|invalid| self.error(invalid.to_string()))?;
        Ok(sku)
    }

    /// A whole number of units, 0 to `TOTAL_MAX` (what a SKU can sell at most).
    fn units_whole(&self, column: usize) -> Result<u64, ForecastError> {
        let text = self.field(column).trim();
        match text.parse::<i128>() {
            Ok(units) if units < 0 => Err(self.error(format!("units {text} is negative"))),
            Ok(units) if units > TOTAL_MAX as i128 => {
                Err(self.error(format!("units {text} is above the ledger's {TOTAL_MAX}")))
            }
            Ok(units) => Ok(units as u64),
            Err(_) => Err(self.error(format!("units {text:?} is not a whole number"))),
        }
    }

    /// A decimal number of units, 0 to `TOTAL_MAX`.
    fn units_decimal(&self, column: usize) -> Result<f64, ForecastError> {
        let text = self.field(column).trim();
        match text.parse::<f64>() {
            Ok(units) if !units.is_finite() => Err(self.error(format!("units {text:?} is not a number"))),
            Ok(units) if units < 0.0 => Err(self.error(format!("units {text} is negative"))),
            Ok(units) if units > TOTAL_MAX as f64 => {
                Err(self.error(format!("units {text} is above the ledger's {TOTAL_MAX}")))
            }
            Ok(units) => Ok(units),
            Err(_) => Err(self.error(format!("units {text:?} is not a number"))),
        }
    }
}

/// Splits one CSV record into fields: commas separate, a field in double quotes may hold commas
/// and doubled quotes. A quoted field may not span lines (SKUs hold no line breaks here).
fn split_record(text: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("a quoted field is not closed on its line".to_string()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("{c:?} after a closing quote (expected a comma)")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".to_string()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

/// `value` as one CSV field: quoted when it holds a comma, a quote, or edge spaces.
fn csv_field(value: &str) -> String {
    let needs_quotes = value.contains([',', '"', '\r', '\n']) || value.trim() != value;
    if needs_quotes {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HISTORY: &str = "sale,sku,units\n\
                           2025-06,apple,100\n\
                           2025-06,cherry,10\n\
                           2025-11,apple,200\n\
                           2026-06,banana,40\n\
                           2026-06,cherry,30\n";

    fn history(text: &str) -> History {
        let mut history = History::new();
        history.add_csv("history.csv", text).expect("a valid history");
        history
    }

    fn line_error(result: Result<impl std::fmt::Debug, ForecastError>) -> (usize, String) {
        match result {
            Err(ForecastError::Line { line, reason, .. }) => (line, reason),
            other => panic!("expected an error naming a line, got {other:?}"),
        }
    }

    #[test]
    fn sales_are_ordered_by_first_appearance_and_absent_skus_count_zero() {
        let history = history(HISTORY);
        assert_eq!(history.sales(), ["2025-06", "2025-11", "2026-06"]);
        assert_eq!(history.series("apple"), [100, 200, 0]);
        assert_eq!(history.series("banana"), [0, 0, 40]);
        assert_eq!(history.series("cherry"), [10, 0, 30]);
    }

    #[test]
    fn smoothing_matches_hand_computed_values() {
        let history = history(HISTORY);
        // alpha 0.5: apple 100 -> 0.5*200 + 0.5*100 = 150 -> 0.5*0 + 0.5*150 = 75;
        // banana 0 -> 0 -> 0.5*40 = 20; cherry 10 -> 5 -> 0.5*30 + 0.5*5 = 17.5.
        let half = history.forecast(0.5).expect("alpha 0.5");
        assert_eq!(half.units()["apple"], 75.0);
        assert_eq!(half.units()["banana"], 20.0);
        assert_eq!(half.units()["cherry"], 17.5);
        // alpha 0.2: cherry 10 -> 0.8*10 = 8 -> 0.2*30 + 0.8*8 = 12.4.
        let slow = history.forecast(0.2).expect("alpha 0.2");
        assert!((slow.units()["cherry"] - 12.4).abs() < 1e-9);
        // alpha 1: the last sale alone.
        let last = history.forecast(1.0).expect("alpha 1");
        assert_eq!(last.units()["apple"], 0.0);
        assert_eq!(last.units()["cherry"], 30.0);
    }

    #[test]
    fn alpha_outside_zero_to_one_is_refused() {
        let history = history(HISTORY);
        for alpha in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(
                matches!(history.forecast(alpha), Err(ForecastError::Alpha(_))),
                "{alpha}"
            );
        }
    }

    #[test]
    fn files_of_several_postgres_shards_add_up_per_sale_and_sku() {
        let mut history = History::new();
        history
            .add_csv("pg0.csv", "sale,sku,units\ns1,apple,60\ns2,apple,10\n")
            .expect("pg0");
        history
            .add_csv("pg1.csv", "sku,units,sale\napple,40,s1\npear,5,s2\n")
            .expect("pg1, columns in another order");
        assert_eq!(history.series("apple"), [100, 10]);
        assert_eq!(history.series("pear"), [0, 5]);
    }

    #[test]
    fn a_bad_file_adds_nothing() {
        let mut history = history(HISTORY);
        let before = history.clone();
        let bad = "sale,sku,units\n2027-01,apple,5\n2027-01,pear,-3\n";
        let (line, reason) = line_error(history.add_csv("bad.csv", bad));
        assert_eq!(line, 3);
        assert!(reason.contains("negative"), "{reason}");
        assert_eq!(history, before);
    }

    #[test]
    fn broken_history_files_name_the_line() {
        let long_sku = "x".repeat(crate::state_machine::limits::SKU_BYTES_MAX + 1);
        let cases = [
            ("sale,sku\ns1,apple\n", 1, "missing column \"units\""),
            ("sale,sku,units,price\ns1,apple,1,2\n", 1, "unknown column \"price\""),
            ("sale,sku,units\ns1,apple,1\ns1,pear\n", 3, "2 fields"),
            ("sale,sku,units\ns1,apple,lots\n", 2, "not a whole number"),
            ("sale,sku,units\ns1,apple,1.5\n", 2, "not a whole number"),
            ("sale,sku,units\n\ns1,apple,-1\n", 3, "negative"),
            ("sale,sku,units\ns1,apple,1\ns1,apple,2\n", 3, "repeats line 2"),
            ("sale,sku,units\ns1,,1\n", 2, "must not be empty"),
            ("sale,sku,units\n,apple,1\n", 2, "sale label"),
            ("sale,sku,units\ns1,\"apple,1\n", 2, "not closed"),
        ];
        for (text, expected_line, expected_reason) in cases {
            let (line, reason) = line_error(History::new().add_csv("h.csv", text));
            assert_eq!(line, expected_line, "{text:?}: {reason}");
            assert!(reason.contains(expected_reason), "{text:?}: {reason}");
        }
        let (line, reason) = line_error(History::new().add_csv("h.csv", &format!("sale,sku,units\ns1,{long_sku},1\n")));
        assert_eq!(line, 2);
        assert!(reason.contains("at most 128"), "{reason}");
    }

    #[test]
    fn empty_files_are_refused() {
        for (history, forecast) in [("", ""), ("\n\n", "\r\n"), ("sale,sku,units\n", "sku,units\n")] {
            assert!(
                matches!(
                    History::new().add_csv("h.csv", history),
                    Err(ForecastError::Empty { .. })
                ),
                "{history:?}"
            );
            assert!(
                matches!(Forecast::parse_csv("f.csv", forecast), Err(ForecastError::Empty { .. })),
                "{forecast:?}"
            );
        }
    }

    #[test]
    fn forecast_files_round_trip_and_refuse_repeats_and_bad_units() {
        let forecast = history("sale,sku,units\ns1,\"a,b\",3\ns1,\"say \"\"hi\"\"\",4\ns1,plain,1\n")
            .forecast(ALPHA_DEFAULT)
            .expect("forecast");
        let text = forecast.to_csv();
        assert_eq!(
            text,
            "sku,units\n\"a,b\",3.000\nplain,1.000\n\"say \"\"hi\"\"\",4.000\n"
        );
        assert_eq!(Forecast::parse_csv("f.csv", &text), Ok(forecast));

        let (line, reason) = line_error(Forecast::parse_csv("f.csv", "sku,units\nx,1\ny,2\nx,3\n"));
        assert_eq!((line, reason.contains("repeats line 2")), (4, true), "{reason}");
        for bad in ["-1", "NaN", "inf", "ten", "2e12"] {
            let (line, _) = line_error(Forecast::parse_csv("f.csv", &format!("sku,units\nx,{bad}\n")));
            assert_eq!(line, 2, "{bad}");
        }
    }

    #[test]
    fn the_peak_model_turns_units_into_operations_per_second() {
        let peak = PeakModel::default();
        // 600 units * 2 ops * 50 % / 60 s = 10 ops/s.
        assert_eq!(peak.ops_per_second(600.0), 10.0);
        for invalid in [
            PeakModel {
                peak_seconds: 0,
                ..peak
            },
            PeakModel {
                peak_share_percent: 0,
                ..peak
            },
            PeakModel {
                peak_share_percent: 101,
                ..peak
            },
            PeakModel {
                ops_per_unit: 0.0,
                ..peak
            },
            PeakModel {
                ops_per_unit: f64::NAN,
                ..peak
            },
        ] {
            assert!(invalid.validate().is_err(), "{invalid:?}");
        }
        assert_eq!(peak.validate(), Ok(()));
    }

    /// The textbook recurrence over the dense series: the model `smooth_sparse` must equal.
    fn smooth_dense(series: &[u64], alpha: f64) -> f64 {
        let mut values = series.iter().map(|units| *units as f64);
        let first = values.next().unwrap_or(0.0);
        values.fold(first, |level, units| alpha * units + (1.0 - alpha) * level)
    }

    proptest! {
        #[test]
        fn sparse_smoothing_equals_the_dense_recurrence(
            series in proptest::collection::vec(prop_oneof![Just(0u64), 1u64..1_000_000], 1..40),
            alpha in 0.01f64..=1.0,
        ) {
            let points: BTreeMap<usize, u64> =
                series.iter().enumerate().filter(|(_, units)| **units > 0).map(|(s, u)| (s, *u)).collect();
            let sparse = smooth_sparse(&points, series.len(), alpha);
            let dense = smooth_dense(&series, alpha);
            prop_assert!((sparse - dense).abs() <= 1e-6 * dense.max(1.0), "{sparse} vs {dense}");
        }
    }
}
