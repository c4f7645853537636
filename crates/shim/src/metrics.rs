//! A task's metrics (`ctr task metrics`, the CRI's stats) from the VM's
//! own view: the agent reads the guest kernel's counters, reported as
//! containerd's cgroups v1 `Metrics` (the VM is the container's cgroup).

use std::time::Duration;

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message as _, MessageField};
use firebuild_agent_proto::{GuestStats, Request};
use firebuild_vm::{AgentConnection, AgentEndpoint};

const METRICS_TYPE: &str = "io.containerd.cgroups.v1.Metrics";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the VM's agent (blocking).
pub fn read(endpoint: &AgentEndpoint) -> anyhow::Result<GuestStats> {
    let mut conn = AgentConnection::open(endpoint, TIMEOUT)?;
    Ok(conn.call(Request::Stats, TIMEOUT)?)
}

pub fn metrics(s: &GuestStats) -> Metrics {
    Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: s.cpu_user_ns + s.cpu_system_ns,
                kernel: s.cpu_system_ns,
                user: s.cpu_user_ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            rss: s.memory_anon_bytes,
            total_rss: s.memory_anon_bytes,
            cache: s.memory_cache_bytes,
            total_cache: s.memory_cache_bytes,
            hierarchical_memory_limit: s.memory_total_bytes,
            usage: MessageField::some(MemoryEntry {
                usage: s.memory_used_bytes,
                limit: s.memory_total_bytes,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn to_any(s: &GuestStats) -> anyhow::Result<Any> {
    Ok(Any {
        type_url: METRICS_TYPE.into(),
        value: metrics(s).write_to_bytes()?,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_counters_become_cgroup_metrics() {
        let s = GuestStats {
            cpu_user_ns: 3,
            cpu_system_ns: 4,
            memory_total_bytes: 100,
            memory_used_bytes: 40,
            memory_anon_bytes: 10,
            memory_cache_bytes: 20,
            pids: 5,
        };
        let any = to_any(&s).unwrap();
        assert_eq!(any.type_url, METRICS_TYPE);
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.pids.current, 5);
        assert_eq!(m.cpu.usage.total, 7);
        assert_eq!((m.memory.usage.usage, m.memory.usage.limit), (40, 100));
    }
}
