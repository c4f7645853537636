//! The VM's resource use from `/proc`: CPU time, memory, processes.

use std::io;

use firebuild_agent_proto::GuestStats;

pub fn read() -> io::Result<GuestStats> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut stats = GuestStats::default();
    cpu_times(&std::fs::read_to_string("/proc/stat")?, ticks, &mut stats);
    memory(&std::fs::read_to_string("/proc/meminfo")?, &mut stats);
    stats.pids = std::fs::read_dir("/proc")?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .count() as u64;
    Ok(stats)
}

/// The `cpu` line of `/proc/stat`: user nice system ... in clock ticks.
fn cpu_times(text: &str, ticks_per_sec: u64, stats: &mut GuestStats) {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let ns = |t: u64| t.saturating_mul(1_000_000_000 / ticks_per_sec);
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    stats.cpu_user_ns = ns(at(0) + at(1));
    // system, irq, softirq
    stats.cpu_system_ns = ns(at(2) + at(5) + at(6));
}

/// `/proc/meminfo`, in kB.
fn memory(text: &str, stats: &mut GuestStats) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    stats.memory_total_bytes = field("MemTotal");
    stats.memory_used_bytes = stats
        .memory_total_bytes
        .saturating_sub(field("MemAvailable"));
    stats.memory_anon_bytes = field("AnonPages");
    stats.memory_cache_bytes = field("Cached");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_stat_and_meminfo() {
        let mut s = GuestStats::default();
        cpu_times(
            "cpu  100 20 30 4000 5 6 7 0 0 0\ncpu0 100 20 30 4000 5 6 7 0 0 0\n",
            100,
            &mut s,
        );
        assert_eq!(s.cpu_user_ns, 1_200_000_000);
        assert_eq!(s.cpu_system_ns, 430_000_000);
        memory(
            "MemTotal:         250000 kB\nMemFree:          100000 kB\nMemAvailable:     200000 kB\nCached:            30000 kB\nAnonPages:         8000 kB\n",
            &mut s,
        );
        assert_eq!(s.memory_total_bytes, 250_000 * 1024);
        assert_eq!(s.memory_used_bytes, 50_000 * 1024);
        assert_eq!(
            (s.memory_anon_bytes, s.memory_cache_bytes),
            (8_000 * 1024, 30_000 * 1024)
        );
    }

    #[test]
    fn reads_this_machine() {
        let s = read().unwrap();
        assert!(s.memory_total_bytes > 0 && s.pids > 0, "{s:?}");
    }
}
