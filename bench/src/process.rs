//! CPU time and peak resident memory of a process, read from `/proc` (Linux).
//!
//! Most scenarios run Herald's components in this process, so [`usage`] gives Herald's figures
//! plus the load generator's: an upper bound. Where a component runs as its own process,
//! [`usage_of`] reads that process alone.

use std::time::Duration;

/// Clock ticks per second of `/proc/self/stat`; 100 on every Linux we run on.
const TICKS_PER_SECOND: f64 = 100.0;

/// A reading of this process's counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// User plus system CPU time so far.
    pub cpu: Duration,
    /// The peak resident set size so far, in bytes.
    pub peak_rss_bytes: u64,
}

/// Reads this process's counters; zeros where `/proc` is not available.
pub fn usage() -> Usage {
    usage_at("/proc/self")
}

/// Reads another process's counters (it must still be running).
pub fn usage_of(pid: u32) -> Usage {
    usage_at(&format!("/proc/{pid}"))
}

fn usage_at(dir: &str) -> Usage {
    let cpu = std::fs::read_to_string(format!("{dir}/stat"))
        .ok()
        .and_then(|stat| {
            // The command name (field 2) may contain spaces; fields after it are fixed.
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64((user + system) / TICKS_PER_SECOND))
        })
        .unwrap_or_default();
    let peak_rss_bytes = std::fs::read_to_string(format!("{dir}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or_default();
    Usage {
        cpu,
        peak_rss_bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_real_counters() {
        let before = usage();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = usage();
        assert!(
            after.peak_rss_bytes > 1024 * 1024,
            "a running process has some memory"
        );
        assert!(after.cpu >= before.cpu);
        let by_pid = usage_of(std::process::id());
        assert!(by_pid.peak_rss_bytes >= after.peak_rss_bytes);
    }
}
