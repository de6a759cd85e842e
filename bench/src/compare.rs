//! `flashbench compare`: one table from JSON-line results — the peers' (written by the
//! project's runners `bench/peers/*.sh`, or by the team's earlier `../shared/bench/peers/*.sh`)
//! and flashledger's — with flashledger's ratio to each peer at the same client count and SKU
//! count. Repetitions of one configuration are reduced to their median. Each row says which
//! runner produced it (the lines' `runner` field); when two runners measured the same peer
//! configuration, the ratios use the project's own.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde_json::Value;

/// The `runner` of the lines `bench/peers/*.sh` write (peer-loadgen's default `--runner`).
const OWN_RUNNER: &str = "flashledger repo bench/peers";

/// The peers flashledger is compared with: (system, label prefix, short name).
const PEERS: &[(&str, &str, &str)] = &[
    ("redis", "noaof", "Redis+Lua (no AOF)"),
    ("redis", "aof_always", "Redis+Lua (appendfsync always)"),
    ("postgres", "sync_commit=on", "PostgreSQL hot row (sync commit)"),
    ("etcd", "3 members, CAS txn", "etcd 3 members (CAS txn)"),
];

#[derive(Debug, Clone)]
struct Row {
    system: String,
    /// Who produced the line: "flashbench" for flashledger, the peers' runner otherwise.
    runner: String,
    label: String,
    clients: u64,
    skus: u64,
    rate: f64,
    attempts: f64,
    rejections: f64,
    p50_us: f64,
    p99_us: f64,
}

/// Milliseconds from microseconds, "-" when the source recorded none.
fn ms(micros: f64) -> String {
    if micros.is_nan() {
        "-".to_string()
    } else {
        format!("{:.2}", micros / 1000.0)
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Reads every JSON line of `files` (other lines are skipped).
fn read_rows(files: &[PathBuf]) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
            // The peers' load generator writes NaN for latencies it did not record (JSON has
            // no NaN); read those as missing.
            let line = line.replace(":NaN", ":null");
            let Ok(value) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let (Some(system), Some(rate)) = (value["system"].as_str(), value["purchases_per_s"].as_f64()) else {
                continue;
            };
            let label = value["label"].as_str().unwrap_or("");
            // "noaof rep2" and "noaof rep3" are one configuration.
            let label = match label.rsplit_once(" rep") {
                Some((base, rep)) if rep.chars().all(|c| c.is_ascii_digit()) => base,
                _ => label,
            };
            if label.contains("oversell-check") || label.contains("crate-client") {
                continue;
            }
            let default_runner = if system == "flashledger" {
                "flashbench"
            } else {
                "unknown"
            };
            rows.push(Row {
                system: system.to_string(),
                runner: value["runner"].as_str().unwrap_or(default_runner).to_string(),
                label: label.to_string(),
                clients: value["clients"].as_u64().unwrap_or(0),
                skus: value["skus"].as_u64().unwrap_or(0),
                rate,
                attempts: value["attempts_per_s"].as_f64().unwrap_or(rate),
                rejections: value["rejections_per_s"].as_f64().unwrap_or(0.0),
                p50_us: value["p50_us"].as_f64().unwrap_or(f64::NAN),
                p99_us: value["p99_us"].as_f64().unwrap_or(f64::NAN),
            });
        }
    }
    Ok(rows)
}

/// Medians per (system, runner, label, clients, skus).
fn reduce(rows: Vec<Row>) -> Vec<Row> {
    let mut groups: BTreeMap<(String, String, String, u64, u64), Vec<Row>> = BTreeMap::new();
    for row in rows {
        groups
            .entry((
                row.system.clone(),
                row.runner.clone(),
                row.label.clone(),
                row.clients,
                row.skus,
            ))
            .or_default()
            .push(row);
    }
    groups
        .into_values()
        .map(|group| {
            let pick = |f: fn(&Row) -> f64| median(group.iter().map(f).collect());
            Row {
                rate: pick(|r| r.rate),
                attempts: pick(|r| r.attempts),
                rejections: pick(|r| r.rejections),
                p50_us: pick(|r| r.p50_us),
                p99_us: pick(|r| r.p99_us),
                ..group[0].clone()
            }
        })
        .collect()
}

/// The Markdown table.
pub fn table(files: &[PathBuf]) -> anyhow::Result<String> {
    let rows = reduce(read_rows(files)?);
    // A sold-out storm is measured in rejections: a peer's "<config> sold-out" row (all its
    // attempts were rejections) is compared with flashledger's sold-out rows.
    let sold_out = |row: &Row| row.label.ends_with("sold-out");
    let peer_label = |prefix: &str, storm: bool| {
        if storm {
            format!("{prefix} sold-out")
        } else {
            prefix.to_string()
        }
    };
    let peer_of = |row: &Row| {
        PEERS
            .iter()
            .find(|(system, prefix, _)| row.system == *system && row.label == peer_label(prefix, sold_out(row)))
    };
    let mut text = String::from("| system | runner | configuration | clients | SKUs | decisions/s | p50 ms | p99 ms |");
    for (_, _, name) in PEERS {
        text += &format!(" x {name} |");
    }
    text += "\n|---|---|---|---|---|---|---|---|";
    text += &"---|".repeat(PEERS.len());
    text += "\n";
    for row in rows.iter().filter(|r| peer_of(r).is_some()) {
        let value = if sold_out(row) { row.attempts } else { row.rate };
        text += &format!(
            "| {} | {} | {} | {} | {} | {:.0} | {} | {} |{}\n",
            row.system,
            row.runner,
            row.label,
            row.clients,
            row.skus,
            value,
            ms(row.p50_us),
            ms(row.p99_us),
            " |".repeat(PEERS.len())
        );
    }
    for row in rows.iter().filter(|r| r.system == "flashledger") {
        // A storm of rejections is measured by its rejections, everything else by its
        // decisions that succeeded.
        let storm = sold_out(row);
        let value = if storm { row.rejections } else { row.rate };
        text += &format!(
            "| **flashledger** | {} | {} | {} | {} | {:.0} | {} | {} |",
            row.runner,
            row.label,
            row.clients,
            row.skus,
            value,
            ms(row.p50_us),
            ms(row.p99_us)
        );
        for (system, prefix, _) in PEERS {
            let label = peer_label(prefix, storm);
            let peer = rows
                .iter()
                .filter(|p| p.system == *system && p.label == label && p.clients == row.clients && p.skus == row.skus)
                .min_by_key(|p| p.runner != OWN_RUNNER);
            let peer_value = peer.map(|p| if storm { p.attempts } else { p.rate });
            match peer_value {
                Some(peer_value) if peer_value > 0.0 => text += &format!(" {:.2}x |", value / peer_value),
                _ => text += " - |",
            }
        }
        text += "\n";
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_use_the_median_of_the_peer_at_the_same_clients_and_skus() {
        let dir = std::env::temp_dir().join(format!("flashbench-compare-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("all.jsonl");
        let lines = [
            r#"{"system":"redis","label":"noaof rep1","clients":64,"skus":1,"purchases_per_s":90000,"p50_us":600,"p99_us":1100}"#,
            r#"{"system":"redis","label":"noaof rep2","clients":64,"skus":1,"purchases_per_s":100000,"p50_us":600,"p99_us":1100}"#,
            r#"{"system":"redis","label":"noaof rep3","clients":64,"skus":1,"purchases_per_s":95000,"p50_us":600,"p99_us":1100}"#,
            r#"{"system":"redis","label":"noaof oversell-check","clients":64,"skus":1,"purchases_per_s":1,"p50_us":1,"p99_us":1}"#,
            r#"{"system":"flashledger","label":"hot independent","clients":64,"skus":1,"purchases_per_s":47500,"p50_us":900,"p99_us":5000}"#,
            "not json",
        ];
        std::fs::write(&file, lines.join("\n")).unwrap();
        let table = table(&[file]).unwrap();
        let ours = table.lines().find(|l| l.contains("**flashledger**")).unwrap();
        assert!(ours.contains(" 0.50x |"), "{ours}");
        assert!(ours.contains("| 47500 |"), "{ours}");
        assert_eq!(table.lines().filter(|l| l.starts_with("| redis")).count(), 1, "{table}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn each_row_names_its_runner_and_ratios_prefer_the_project_s_own() {
        let dir = std::env::temp_dir().join(format!("flashbench-compare-runners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("all.jsonl");
        let lines = [
            r#"{"system":"redis","runner":"shared/bench/peers","label":"noaof","clients":64,"skus":1,"purchases_per_s":50000,"p50_us":600,"p99_us":1100}"#,
            r#"{"system":"redis","runner":"flashledger repo bench/peers","label":"noaof rep1","clients":64,"skus":1,"purchases_per_s":100000,"p50_us":600,"p99_us":1100}"#,
            r#"{"system":"flashledger","label":"hot independent","clients":64,"skus":1,"purchases_per_s":50000,"p50_us":900,"p99_us":5000}"#,
        ];
        std::fs::write(&file, lines.join("\n")).unwrap();
        let table = table(&[file]).unwrap();
        assert!(table.contains("| redis | shared/bench/peers | noaof |"), "{table}");
        assert!(
            table.contains("| redis | flashledger repo bench/peers | noaof |"),
            "{table}"
        );
        let ours = table.lines().find(|l| l.contains("**flashledger**")).unwrap();
        assert!(ours.contains("| flashbench |"), "{ours}");
        assert!(ours.contains(" 0.50x |"), "{ours}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
