//! A run's result: the JSON (full, with the per-second timeline), one JSON line in the peers'
//! format (so `flashbench compare` can put flashledger beside Redis, PostgreSQL and etcd), a
//! Markdown table, and a PNG of throughput and latency over time.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde_json::Value;
use serde_json::json;

use crate::driver::Measured;
use crate::driver::RunConfig;

/// The result as one JSON object (`detail` adds the per-second timeline and the wall-clock time
/// its first second began, `measure_from_unix_ms`).
pub fn result_json(label: &str, config: &RunConfig, measured: &Measured, detail: bool) -> Value {
    let per_second = |count: u64| count as f64 / measured.secs.max(1e-9);
    let mut value = json!({
        "system": "flashledger",
        "label": label,
        "workload": config.workload,
        "mode": config.mode,
        "loop": if config.rate.is_some() { "open" } else { "closed" },
        "target_rate": config.rate,
        "clients": config.clients,
        "services": if config.mode == crate::driver::Mode::Service { config.services } else { 0 },
        "skus": match config.workload { crate::workload::WorkloadKind::Hot => 1, crate::workload::WorkloadKind::BlackFriday => 1000, _ => config.skus },
        "secs": measured.secs,
        "purchases_per_s": per_second(measured.ok_total),
        "rejections_per_s": per_second(measured.soldout_total),
        "attempts_per_s": per_second(measured.attempts_total),
        "p50_us": measured.p50_us,
        "p99_us": measured.p99_us,
        "p999_us": measured.p999_us,
        "max_us": measured.max_us,
        "mean_us": measured.mean_us,
        "ok_total": measured.ok_total,
        "soldout_replies": measured.soldout_total,
        "other_replies": measured.other_total,
        "errors": measured.errors,
        "late_starts": measured.late_total,
        "shed_total": measured.shed_total,
        "rate_limited_total": measured.rate_limited_total,
        "shed_per_s": per_second(measured.shed_total),
        "admitted_p50_us": measured.admitted_p50_us,
        "admitted_p99_us": measured.admitted_p99_us,
        "shed_p50_us": measured.shed_p50_us,
        "shed_p99_us": measured.shed_p99_us,
        "premium": measured.premium,
        "standard": measured.standard,
    });
    if let Some(plan) = measured.plan {
        value["black_friday"] = json!({
            "plan": plan,
            "scale": config.scale,
            "elapsed_secs": measured.secs,
            "full_scale_estimate_secs": measured.secs * config.scale as f64,
        });
    }
    if let Some(cache) = &measured.cache {
        value["cache"] = json!(cache);
    }
    if detail {
        value["measure_from_unix_ms"] = json!(measured.measure_from_unix_ms);
        value["timeline"] = json!(measured.timeline);
    }
    value
}

/// Markdown: the headline numbers, then the timeline.
pub fn markdown(label: &str, result: &Value, png: Option<&str>) -> String {
    let number = |key: &str| result[key].as_f64().unwrap_or(0.0);
    let mut text = format!(
        "# flashbench: {label}\n\n| workload | mode | loop | clients | ok/s | rejections/s | attempts/s | p50 ms | p99 ms | p99.9 ms | max ms | errors |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
        result["workload"].as_str().unwrap_or("?"),
        result["mode"].as_str().unwrap_or("?"),
        result["loop"].as_str().unwrap_or("?"),
        result["clients"],
        number("purchases_per_s"),
        number("rejections_per_s"),
        number("attempts_per_s"),
        number("p50_us") / 1000.0,
        number("p99_us") / 1000.0,
        number("p999_us") / 1000.0,
        number("max_us") / 1000.0,
        result["errors"],
    );
    if number("shed_total") > 0.0 || number("rate_limited_total") > 0.0 {
        let class = |name: &str| {
            let class = &result[name];
            let (admitted, shed) = (
                class["admitted"].as_f64().unwrap_or(0.0),
                class["shed"].as_f64().unwrap_or(0.0),
            );
            format!(
                "| {name} | {admitted:.0} | {shed:.0} | {:.1} % | {:.2} |\n",
                100.0 * admitted / (admitted + shed).max(1.0),
                class["admitted_p99_us"].as_f64().unwrap_or(0.0) / 1000.0
            )
        };
        text += &format!(
            "\nAdmission: {:.0} shed ({:.0}/s, p50 {:.3} ms, p99 {:.3} ms), {:.0} rate limited; admitted p50 {:.2} ms, p99 {:.2} ms.\n\n| class | admitted | shed | admitted % | admitted p99 ms |\n|---|---|---|---|---|\n{}{}",
            number("shed_total"),
            number("shed_per_s"),
            number("shed_p50_us") / 1000.0,
            number("shed_p99_us") / 1000.0,
            number("rate_limited_total"),
            number("admitted_p50_us") / 1000.0,
            number("admitted_p99_us") / 1000.0,
            class("premium"),
            class("standard"),
        );
    }
    if let Some(bf) = result.get("black_friday") {
        text += &format!(
            "\nBlack Friday at 1/{}: {} in {:.1} s; the full-scale mix would take {:.1} h at this rate.\n",
            bf["scale"],
            bf["plan"],
            bf["elapsed_secs"].as_f64().unwrap_or(0.0),
            bf["full_scale_estimate_secs"].as_f64().unwrap_or(0.0) / 3600.0
        );
    }
    if let Some(cache) = result.get("cache") {
        text += &format!(
            "\nStock cache: {} product-page reads answered from it; lag behind the leader's commit p50 {} ms, p99 {} ms, max {} ms ({} samples); {} stream reconnects.\n",
            cache["reads_from_cache"],
            cache["lag_p50_ms"],
            cache["lag_p99_ms"],
            cache["lag_max_ms"],
            cache["lag_samples"],
            cache["reconnects"]
        );
    }
    if let Some(png) = png {
        text += &format!("\n![throughput and latency over time]({png})\n");
    }
    text += "\n| second | ops | p50 ms | p99 ms |\n|---|---|---|---|\n";
    for second in result["timeline"].as_array().into_iter().flatten() {
        text += &format!(
            "| {} | {} | {:.2} | {:.2} |\n",
            second["t"],
            second["ops"],
            second["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
            second["p99_us"].as_f64().unwrap_or(0.0) / 1000.0
        );
    }
    text
}

/// Font files tried for the PNG's text (plotters draws text only with a font it is given).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

fn register_font() -> anyhow::Result<()> {
    let configured = std::env::var("FLASHBENCH_FONT").ok();
    let candidates = configured.iter().map(String::as_str).chain(FONT_PATHS.iter().copied());
    for path in candidates {
        if let Ok(bytes) = std::fs::read(path) {
            // plotters keeps fonts for the process's lifetime.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if register_font_bytes(bytes).is_ok() {
                return Ok(());
            }
        }
    }
    anyhow::bail!("no TrueType font found (set FLASHBENCH_FONT to a .ttf file); tried {FONT_PATHS:?}")
}

fn register_font_bytes(bytes: &'static [u8]) -> Result<(), ()> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| ())
}

/// Throughput (top) and p50/p99 latency (bottom) per second.
pub fn png(path: &Path, label: &str, result: &Value) -> anyhow::Result<()> {
    register_font()?;
    let seconds: Vec<(u64, f64, f64, f64)> = result["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                s["t"].as_u64().unwrap_or(0),
                s["ops"].as_f64().unwrap_or(0.0),
                s["p50_us"].as_f64().unwrap_or(0.0) / 1000.0,
                s["p99_us"].as_f64().unwrap_or(0.0) / 1000.0,
            )
        })
        .collect();
    let last = seconds.last().map_or(1, |s| s.0 + 1).max(1);
    let max_ops = seconds.iter().map(|s| s.1).fold(1.0, f64::max) * 1.1;
    let max_ms = seconds.iter().map(|s| s.3).fold(1.0, f64::max) * 1.1;
    let root = BitMapBackend::new(path, (1000, 700)).into_drawing_area();
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(350);
        let mut chart = ChartBuilder::on(&top)
            .caption(format!("{label}: operations per second"), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0u64..last, 0f64..max_ops)?;
        chart.configure_mesh().x_desc("second").y_desc("ops/s").draw()?;
        chart.draw_series(LineSeries::new(seconds.iter().map(|s| (s.0, s.1)), &BLUE))?;
        let mut chart = ChartBuilder::on(&bottom)
            .caption("latency (ms)", ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(70)
            .build_cartesian_2d(0u64..last, 0f64..max_ms)?;
        chart.configure_mesh().x_desc("second").y_desc("ms").draw()?;
        chart
            .draw_series(LineSeries::new(seconds.iter().map(|s| (s.0, s.2)), &GREEN))?
            .label("p50")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
        chart
            .draw_series(LineSeries::new(seconds.iter().map(|s| (s.0, s.3)), &RED))?
            .label("p99")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart.configure_series_labels().border_style(BLACK).draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("drawing {}: {e}", path.display()))
}

/// Writes `<dir>/<name>.json`, `.md` and `.png`; returns the Markdown's path.
pub fn write_all(dir: &Path, name: &str, label: &str, result: &Value) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(result)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let png_name = format!("{name}.png");
    let png_written = match png(&dir.join(&png_name), label, result) {
        Ok(()) => Some(png_name.as_str()),
        Err(error) => {
            eprintln!("flashbench: no PNG: {error:#}");
            None
        }
    };
    let md_path = dir.join(format!("{name}.md"));
    std::fs::write(&md_path, markdown(label, result, png_written))
        .with_context(|| format!("writing {}", md_path.display()))?;
    Ok(md_path)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::driver::ClassMeasured;
    use crate::driver::Mode;
    use crate::driver::Second;
    use crate::workload::WorkloadKind;

    fn config() -> RunConfig {
        RunConfig {
            seeds: vec!["127.0.0.1:7101".into()],
            credentials: flashledger_client::Credentials::default(),
            workload: WorkloadKind::Hot,
            mode: Mode::Service,
            clients: 8,
            services: 2,
            rate: None,
            duration: Duration::from_secs(2),
            warmup: Duration::ZERO,
            skus: 1,
            zipf_s: 1.0,
            stock: None,
            linearizable_reads: false,
            scale: 100,
            coalesce_ops_max: 64,
            coalesce_inflight_max: 4,
            progress: false,
            log_successes: false,
            ops_max: None,
            premium_percent: 0,
            honor_retry_after: false,
            cache: false,
        }
    }

    fn measured(measure_from_unix_ms: u64, ops: &[u64]) -> Measured {
        Measured {
            secs: ops.len() as f64,
            ok_total: ops.iter().sum(),
            soldout_total: 0,
            other_total: 0,
            errors: 0,
            attempts_total: ops.iter().sum(),
            late_total: 0,
            p50_us: 1.0,
            p99_us: 1.0,
            p999_us: 1.0,
            max_us: 1.0,
            mean_us: 1.0,
            shed_total: 0,
            rate_limited_total: 0,
            admitted_p50_us: 1.0,
            admitted_p99_us: 1.0,
            shed_p50_us: 0.0,
            shed_p99_us: 0.0,
            premium: ClassMeasured::default(),
            standard: ClassMeasured::default(),
            timeline: ops
                .iter()
                .enumerate()
                .map(|(t, ops)| Second {
                    t: t as u64,
                    ops: *ops,
                    p50_us: 1.0,
                    p99_us: 1.0,
                })
                .collect(),
            measure_from_unix_ms,
            plan: None,
            cache: None,
            successes: Vec::new(),
        }
    }

    #[test]
    fn the_detailed_result_anchors_its_timeline_to_the_wall_clock() {
        let result = result_json("hot", &config(), &measured(1_700_000_000_123, &[900, 450]), true);
        assert_eq!(result["measure_from_unix_ms"], 1_700_000_000_123u64);
        let ops: Vec<u64> = result["timeline"]
            .as_array()
            .expect("a timeline")
            .iter()
            .map(|second| second["ops"].as_u64().expect("ops"))
            .collect();
        assert_eq!(ops, vec![900, 450]);
    }

    #[test]
    fn the_one_line_result_carries_neither_timeline_nor_anchor() {
        let result = result_json("hot", &config(), &measured(1_700_000_000_123, &[900, 450]), false);
        assert!(result.get("timeline").is_none());
        assert!(result.get("measure_from_unix_ms").is_none());
        assert_eq!(result["ok_total"], 1_350u64);
    }
}
