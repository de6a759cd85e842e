//! Reading the Prometheus text `/metrics` answers, for the metrics tests: one [`Sample`] per
//! series line, and the value of a series by name and labels.

#![allow(dead_code)]

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Every series line of `text` (comments skipped). Panics on a line that is not
/// `name{key="value",...} number`: the text is the node's, and must be well formed.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| parse_line(line).unwrap_or_else(|| panic!("not a series line: {line:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((name, rest)) => {
            let body = rest.strip_suffix('}')?;
            let mut labels = BTreeMap::new();
            for pair in body.split(',').filter(|pair| !pair.is_empty()) {
                let (key, quoted) = pair.split_once('=')?;
                let value = quoted.strip_prefix('"')?.strip_suffix('"')?;
                labels.insert(key.to_string(), value.to_string());
            }
            (name, labels)
        }
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// The value of the one series named `name` whose labels include `labels`; `None` when there
/// is none. Panics when several match (the caller must name enough labels).
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v)))
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} names several series: {matching:?}"
    );
    matching.first().map(|s| s.value)
}

/// The sum of every series named `name` (all label values).
pub fn sum(samples: &[Sample], name: &str) -> f64 {
    samples.iter().filter(|s| s.name == name).map(|s| s.value).sum()
}
