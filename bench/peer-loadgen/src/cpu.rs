//! Where the CPU went during a measurement, from /proc: the load generator's process, the
//! servers' processes, the whole machine (busy, and irq + softirq), and what is left for other
//! processes. On a 2-core machine shared by servers and load generator these say whether a
//! figure was limited by the system measured or by its surroundings.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use serde_json::Map;
use serde_json::Value;
use serde_json::json;

use crate::measure::Window;

/// The processes counted as "server".
#[derive(Debug, Clone)]
pub enum Servers {
    /// These processes (Redis, the etcd members).
    Pids(Vec<u32>),
    /// These processes and their children (the PostgreSQL postmaster and its backends).
    WithChildren(Vec<u32>),
}

/// CPU counters at the start of a measurement.
pub struct CpuWindow {
    started: Instant,
    loadgen: u32,
    loadgen_before: f64,
    servers: Servers,
    servers_before: BTreeMap<u32, f64>,
    machine_before: MachineTicks,
    load_before: String,
}

/// Jiffies from the first line of /proc/stat (guest time is already inside user time).
#[derive(Debug, Clone, Copy)]
struct MachineTicks {
    busy: f64,
    total: f64,
    interrupts: f64,
}

impl CpuWindow {
    pub fn start(loadgen: u32, servers: Servers) -> CpuWindow {
        CpuWindow {
            started: Instant::now(),
            loadgen,
            loadgen_before: process_cpu_secs(loadgen).unwrap_or(0.0),
            servers_before: server_cpu_secs(&servers),
            servers,
            machine_before: machine_ticks(),
            load_before: load_average(),
        }
    }

    /// Percent of one core over the window, per field of the JSON line.
    pub fn finish(&self) -> Map<String, Value> {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // None when the load generator already exited (pgbench, at the end of its run).
        let loadgen = process_cpu_secs(self.loadgen).map(|now| (now - self.loadgen_before) / wall * 100.0);
        let servers = server_cpu_secs(&self.servers)
            .iter()
            .map(|(pid, now)| now - self.servers_before.get(pid).copied().unwrap_or(0.0))
            .sum::<f64>()
            / wall
            * 100.0;
        let machine = machine_ticks();
        let ticks = (machine.total - self.machine_before.total).max(1.0);
        let busy = (machine.busy - self.machine_before.busy) / ticks * 100.0 * cores;
        let interrupts = (machine.interrupts - self.machine_before.interrupts) / ticks * 100.0 * cores;
        let round = |percent: f64| (percent * 10.0).round() / 10.0;
        let mut fields = Map::new();
        fields.insert("loadgen_cpu_pct".into(), json!(loadgen.map(round)));
        fields.insert("server_cpu_pct".into(), json!(round(servers)));
        fields.insert("machine_busy_pct".into(), json!(round(busy)));
        fields.insert("irq_softirq_pct".into(), json!(round(interrupts)));
        let other = loadgen.map(|loadgen| round(busy - loadgen - servers));
        fields.insert("other_cpu_pct".into(), json!(other));
        fields.insert("ncpu".into(), json!(cores));
        fields.insert("loadavg_before".into(), json!(self.load_before));
        fields.insert("loadavg_after".into(), json!(load_average()));
        fields
    }
}

/// Measures from the window's start until it closes or the run stops.
pub async fn measure_during(window: Arc<Window>, servers: Servers) -> Map<String, Value> {
    tokio::time::sleep_until(window.measure_start.into()).await;
    let cpu = CpuWindow::start(std::process::id(), servers);
    // Bounded by the window's end.
    while Instant::now() < window.measure_end && !window.is_stopped() {
        let left = window.measure_end.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_millis(50))).await;
    }
    cpu.finish()
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// The fields of /proc/PID/stat after the command name (which may contain spaces).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(String::from).collect())
}

/// User + system CPU seconds of a process, all its threads (fields 14 and 15 of stat).
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some((user + system) / clock_ticks_per_sec())
}

fn parent_of(pid: u32) -> Option<u32> {
    stat_fields(pid)?.get(1)?.parse().ok()
}

fn server_cpu_secs(servers: &Servers) -> BTreeMap<u32, f64> {
    let pids: Vec<u32> = match servers {
        Servers::Pids(pids) => pids.clone(),
        Servers::WithChildren(roots) => {
            let mut pids = roots.clone();
            let entries = std::fs::read_dir("/proc").into_iter().flatten().flatten();
            let numbered = entries.filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok());
            pids.extend(numbered.filter(|pid| parent_of(*pid).is_some_and(|parent| roots.contains(&parent))));
            pids
        }
    };
    pids.into_iter()
        .filter_map(|pid| Some((pid, process_cpu_secs(pid)?)))
        .collect()
}

fn machine_ticks() -> MachineTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|field| field.parse().ok())
        .collect();
    if ticks.len() < 8 {
        return MachineTicks {
            busy: 0.0,
            total: 0.0,
            interrupts: 0.0,
        };
    }
    let total: f64 = ticks.iter().sum();
    // idle and iowait are the not-busy fields
    MachineTicks {
        busy: total - ticks[3] - ticks[4],
        total,
        interrupts: ticks[5] + ticks[6],
    }
}

fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_a_parent() {
        let me = std::process::id();
        assert!(process_cpu_secs(me).is_some());
        assert!(parent_of(me).is_some());
        assert!(machine_ticks().total > 0.0);
    }
}
