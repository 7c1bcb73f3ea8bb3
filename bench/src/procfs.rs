//! What the bench reads from /proc: CPU time and memory of the server processes, and the
//! machine's CPU steal.

use std::fs;
use std::time::Duration;

/// CPU time a process (all its threads) has used, in nanoseconds.
///
/// `/proc/<pid>/task/*/schedstat` is in nanoseconds; `/proc/<pid>/stat` counts 10 ms ticks,
/// too coarse for a few seconds of a worker that is mostly idle.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = 0u64;
    for task in tasks.flatten() {
        let text = fs::read_to_string(task.path().join("schedstat")).unwrap_or_default();
        total += text
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// Resident memory of a process, in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

/// The processes whose parent is `parent` (nginx workers of a master).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent))
        .collect();
    pids.sort_unstable();
    pids
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The `cpu` line of /proc/stat: jiffies spent in each state, summed over all CPUs.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTimes {
    pub total: u64,
    pub idle: u64,
    pub steal: u64,
}

impl CpuTimes {
    pub fn now() -> Self {
        let text = fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&text).unwrap_or_default()
    }

    fn parse(text: &str) -> Option<Self> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest times are inside user).
        let total = v.iter().take(8).sum();
        Some(Self {
            total,
            idle: v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0),
            steal: v.get(7).copied().unwrap_or(0),
        })
    }

    /// Share of all CPU time stolen by the hypervisor since `earlier`, in percent.
    pub fn steal_pct_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        100.0 * self.steal.saturating_sub(earlier.steal) as f64 / total as f64
    }

    /// Share of all CPU time that was busy (neither idle nor stolen) since `earlier`.
    pub fn busy_pct_since(&self, earlier: &CpuTimes) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        let idle = self.idle.saturating_sub(earlier.idle);
        let steal = self.steal.saturating_sub(earlier.steal);
        100.0 * total.saturating_sub(idle + steal) as f64 / total as f64
    }
}

/// CPU used by a set of processes between two readings.
#[derive(Debug, Clone, Default)]
pub struct CpuMeter {
    pids: Vec<u32>,
    start: Vec<u64>,
}

impl CpuMeter {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            start: pids.iter().map(|p| cpu_ns(*p).unwrap_or(0)).collect(),
        }
    }

    /// Whether it measures no process at all.
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    /// CPU time used by all the processes since [`CpuMeter::start`].
    pub fn used(&self) -> Duration {
        let ns: u64 = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|(p, s)| cpu_ns(*p).unwrap_or(*s).saturating_sub(*s))
            .sum();
        Duration::from_nanos(ns)
    }
}

/// The machine in one line: CPU model, CPU count, memory, kernel.
pub fn machine_summary() -> String {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem_kb = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} × {model}, {:.1} GiB, Linux {}",
        mem_kb as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cpu_line() {
        let text = "cpu  100 5 50 800 10 1 2 30 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = CpuTimes::parse(text).unwrap();
        assert_eq!(t.total, 100 + 5 + 50 + 800 + 10 + 1 + 2 + 30);
        assert_eq!(t.idle, 810);
        assert_eq!(t.steal, 30);
        let later = CpuTimes {
            total: t.total + 100,
            idle: t.idle + 50,
            steal: t.steal + 10,
        };
        assert!((later.steal_pct_since(&t) - 10.0).abs() < 1e-9);
        assert!((later.busy_pct_since(&t) - 40.0).abs() < 1e-9);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_bytes(me).unwrap() > 0);
        assert!(cpu_ns(me).is_some());
        assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
    }
}
