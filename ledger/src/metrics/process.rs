//! The process's own figures for `/metrics`, read from `/proc` and cgroup v2 at scrape time:
//! resident memory, open file descriptors, and the memory the process may use (so a dashboard
//! can show RSS against its limit). Outside Linux, or when a file is unreadable, a figure is
//! `None` and left out of the scrape.

use std::path::Path;
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessSample {
    pub resident_bytes: Option<u64>,
    pub open_fds: Option<u64>,
    pub memory_limit_bytes: Option<u64>,
}

impl ProcessSample {
    pub fn read() -> ProcessSample {
        ProcessSample {
            resident_bytes: std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|status| kibibytes_field(&status, "VmRSS:")),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|fds| fds.count() as u64),
            memory_limit_bytes: cgroup_memory_max().or_else(|| {
                std::fs::read_to_string("/proc/meminfo")
                    .ok()
                    .and_then(|meminfo| kibibytes_field(&meminfo, "MemTotal:"))
            }),
        }
    }
}

/// `name   1234 kB` in a `/proc` text file, in bytes.
fn kibibytes_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|line| line.starts_with(name))?;
    let kibibytes: u64 = line[name.len()..].split_whitespace().next()?.parse().ok()?;
    kibibytes.checked_mul(1024)
}

/// This process's cgroup v2 `memory.max`, when one is set (not `max`).
fn cgroup_memory_max() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup_v2_path(&membership)?;
    let limit = std::fs::read_to_string(Path::new("/sys/fs/cgroup").join(path).join("memory.max")).ok()?;
    limit.trim().parse().ok()
}

/// The cgroup v2 line of `/proc/self/cgroup` (`0::/some/path`), relative to the cgroup root.
fn cgroup_v2_path(membership: &str) -> Option<PathBuf> {
    let path = membership.lines().find_map(|line| line.strip_prefix("0::"))?;
    Some(PathBuf::from(path.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_fields_and_cgroup_lines_parse() {
        let status = "Name:\tledger\nVmRSS:\t   2048 kB\nThreads:\t4\n";
        assert_eq!(kibibytes_field(status, "VmRSS:"), Some(2 * 1024 * 1024));
        assert_eq!(kibibytes_field(status, "VmSwap:"), None);
        assert_eq!(kibibytes_field("VmRSS: lots kB\n", "VmRSS:"), None);
        assert_eq!(
            cgroup_v2_path("0::/system.slice/ledger.service\n"),
            Some(PathBuf::from("system.slice/ledger.service"))
        );
        assert_eq!(cgroup_v2_path("12:memory:/old\n"), None);
    }

    #[test]
    fn this_process_has_memory_and_descriptors() {
        let sample = ProcessSample::read();
        assert!(sample.resident_bytes.is_some_and(|bytes| bytes > 0), "{sample:?}");
        assert!(sample.open_fds.is_some_and(|fds| fds >= 3), "{sample:?}");
        assert!(
            sample
                .memory_limit_bytes
                .is_some_and(|bytes| bytes >= sample.resident_bytes.unwrap_or(0)),
            "{sample:?}"
        );
    }
}
