//! What the build's user-mode NAT may connect to.
//!
//! slirp4netns turns the step's packets into ordinary sockets of its own
//! process on the host, so without more a RUN step could reach any service
//! of the host through the host's own addresses (`--disable-host-loopback`
//! only closes the 10.0.2.2 alias of 127.0.0.1). The NAT therefore runs in
//! a cgroup (v2) of its own with `cgroup/connect4`, `sendmsg4`, `connect6`
//! and `sendmsg6` programs attached: IPv4 connections and datagrams to
//! loopback, `0.0.0.0/8`, multicast, broadcast and every address of the
//! host's interfaces are refused (`EPERM`), except DNS to the host's own
//! resolver; IPv6 is refused (the NAT offers none). The refused prefixes
//! live in an LPM trie map, so the program stays a dozen instructions
//! however many addresses the host has. The rules cannot be changed from
//! the sandbox: they act on the NAT's sockets, outside it.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::error::{BuildError, Result};

/// An IPv4 prefix the NAT may not reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

/// Prefixes always refused: this host, "this network", multicast and the
/// limited broadcast.
const ALWAYS: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(0, 0, 0, 0), 8),
    (Ipv4Addr::new(224, 0, 0, 0), 4),
    (Ipv4Addr::new(255, 255, 255, 255), 32),
];

/// Everything the NAT must not reach on this host: [`ALWAYS`] plus every
/// IPv4 address (and broadcast address) of the host's interfaces.
pub fn host_blocklist() -> Vec<Blocked> {
    let mut out: Vec<Blocked> = ALWAYS
        .iter()
        .map(|(addr, prefix)| Blocked {
            addr: *addr,
            prefix: *prefix,
        })
        .collect();
    for a in host_addresses() {
        let b = Blocked {
            addr: a,
            prefix: 32,
        };
        if !out.contains(&b) {
            out.push(b);
        }
    }
    out
}

/// The IPv4 addresses and broadcast addresses of the host's interfaces.
fn host_addresses() -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk and free.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return out;
    }
    let v4 = |sa: *const libc::sockaddr| -> Option<Ipv4Addr> {
        // SAFETY: non-null sockaddrs of getifaddrs; AF_INET ones are sockaddr_in.
        unsafe {
            if sa.is_null() || (*sa).sa_family as i32 != libc::AF_INET {
                return None;
            }
            let sin = &*(sa as *const libc::sockaddr_in);
            Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)))
        }
    };
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: walking the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        out.extend(v4(ifa.ifa_addr));
        if ifa.ifa_flags & libc::IFF_BROADCAST as u32 != 0 {
            out.extend(v4(ifa.ifa_ifu));
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: freeing what getifaddrs allocated.
    unsafe { libc::freeifaddrs(list) };
    out
}

/// The IPv4 resolvers in the host's resolv.conf (the NAT forwards DNS
/// there).
pub fn host_resolvers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

// eBPF encoding (linux/bpf.h, linux/bpf_common.h).
const BPF_LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const BPF_ST_MEM_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
const BPF_STX_MEM_W: u8 = 0x63; // BPF_STX | BPF_MEM | BPF_W
const BPF_LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
const BPF_ALU64_MOV_X: u8 = 0xbf; // BPF_ALU64 | BPF_MOV | BPF_X
const BPF_ALU64_ADD_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const BPF_ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const BPF_JMP32_JEQ_K: u8 = 0x16; // BPF_JMP32 | BPF_JEQ | BPF_K
const BPF_JMP32_JNE_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const BPF_JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const BPF_CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const BPF_EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
/// `src_reg` of a `BPF_LD_IMM64` whose immediate is a map descriptor.
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;

/// Offsets in `struct bpf_sock_addr`.
const USER_IP4: i16 = 4;
const USER_PORT: i16 = 24;

/// Where the program builds its trie key (`struct bpf_lpm_trie_key`:
/// a u32 prefix length, then the address in network order) on its stack.
const KEY_AT: i16 = -8;

/// One `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// An IPv4 address as `bpf_sock_addr.user_ip4` holds it (network order in
/// a native u32), as an immediate.
fn imm_of(a: Ipv4Addr) -> i32 {
    u32::from_ne_bytes(a.octets()) as i32
}

/// The IPv4 program: allow DNS to `dns`, refuse what the LPM trie `blocked`
/// (a map descriptor) holds, allow the rest. Its size does not grow with
/// the host's addresses: they live in the map, looked up in O(prefix bits).
pub fn ipv4_program(blocked: i32, dns: &[Ipv4Addr]) -> Vec<Insn> {
    // r1 = ctx; r2 = destination address; r4 = destination port.
    let mut p = vec![
        insn(BPF_LDX_MEM_W, 2, 1, USER_IP4, 0),
        insn(BPF_LDX_MEM_W, 4, 1, USER_PORT, 0),
    ];
    let dns_port = i32::from(53u16.to_be());
    let mut to_allow = Vec::new();
    for ns in dns {
        // if r2 != ns skip; if r4 == 53 goto allow (patched below).
        p.push(insn(BPF_JMP32_JNE_K, 2, 0, 1, imm_of(*ns)));
        to_allow.push(p.len());
        p.push(insn(BPF_JMP32_JEQ_K, 4, 0, 0, dns_port));
    }
    p.extend([
        // key = { prefixlen: 32, addr: r2 } at r10 + KEY_AT.
        insn(BPF_ST_MEM_W, 10, 0, KEY_AT, 32),
        insn(BPF_STX_MEM_W, 10, 2, KEY_AT + 4, 0),
        // r0 = bpf_map_lookup_elem(blocked, &key)
        insn(BPF_LD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, blocked),
        insn(0, 0, 0, 0, 0),
        insn(BPF_ALU64_MOV_X, 2, 10, 0, 0),
        insn(BPF_ALU64_ADD_K, 2, 0, 0, i32::from(KEY_AT)),
        insn(BPF_CALL, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),
        // A match: deny (skip allow's two instructions).
        insn(BPF_JMP_JNE_K, 0, 0, 2, 0),
    ]);
    let allow = p.len();
    p.extend([
        insn(BPF_ALU64_MOV_K, 0, 0, 0, 1),
        insn(BPF_EXIT, 0, 0, 0, 0),
        insn(BPF_ALU64_MOV_K, 0, 0, 0, 0),
        insn(BPF_EXIT, 0, 0, 0, 0),
    ]);
    for i in to_allow {
        p[i].off = (allow - i - 1) as i16;
    }
    p
}

/// The IPv6 program: refuse everything.
pub fn ipv6_program() -> Vec<Insn> {
    vec![
        insn(BPF_ALU64_MOV_K, 0, 0, 0, 0),
        insn(BPF_EXIT, 0, 0, 0, 0),
    ]
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The `BPF_MAP_CREATE` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    _rest: [u32; 27],
}

/// The `BPF_MAP_*_ELEM` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `BPF_PROG_LOAD` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u64; 8],
}

/// The `BPF_PROG_ATTACH` part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    _rest: [u32; 11],
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> std::io::Result<libc::c_long> {
    // SAFETY: bpf(2) with a zero-padded attribute struct of the right layout.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A `struct bpf_lpm_trie_key` for an IPv4 prefix.
#[repr(C)]
struct TrieKey {
    prefix: u32,
    addr: [u8; 4],
}

/// An LPM trie holding `blocked` (the network part of each prefix).
pub fn blocked_map(blocked: &[Blocked]) -> std::io::Result<OwnedFd> {
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_LPM_TRIE,
        key_size: std::mem::size_of::<TrieKey>() as u32,
        value_size: 1,
        max_entries: blocked.len().max(1) as u32,
        // Tries cannot be preallocated.
        map_flags: BPF_F_NO_PREALLOC,
        ..Default::default()
    };
    // SAFETY: a new descriptor returned by the kernel.
    let map = unsafe { OwnedFd::from_raw_fd(bpf(BPF_MAP_CREATE, &attr)? as i32) };
    let value = 1u8;
    for b in blocked {
        let key = TrieKey {
            prefix: u32::from(b.prefix),
            addr: b.addr.octets(),
        };
        let attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &key as *const TrieKey as u64,
            value: &value as *const u8 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &attr)?;
    }
    Ok(map)
}

/// Whether the trie `map` holds a prefix covering `addr`.
pub fn map_blocks(map: &OwnedFd, addr: Ipv4Addr) -> bool {
    let key = TrieKey {
        prefix: 32,
        addr: addr.octets(),
    };
    let mut value = 0u8;
    let attr = MapElem {
        map_fd: map.as_raw_fd() as u32,
        key: &key as *const TrieKey as u64,
        value: &mut value as *mut u8 as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &attr).is_ok()
}

/// Verifier log kept to explain a program the kernel refuses.
const LOG_SIZE: usize = 1 << 20;

/// Lines of that log quoted in the error (the verdict is at its end).
const LOG_TAIL_LINES: usize = 12;

/// Loads `prog` for `attach_type`. The first load asks for no verifier log:
/// since Linux 6.4 a log that does not fit its buffer fails the load
/// (ENOSPC) even when the program verifies. Only when the kernel refuses the
/// program is it loaded again, with a log large enough to say why.
pub fn load(prog: &[Insn], attach_type: u32) -> std::io::Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: attach_type,
        ..Default::default()
    };
    attr.prog_name[..8].copy_from_slice(b"fb_egres");
    let first = match bpf(BPF_PROG_LOAD, &attr) {
        // SAFETY: a new descriptor returned by the kernel.
        Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => e,
    };
    let mut log = vec![0u8; LOG_SIZE];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    if let Ok(fd) = bpf(BPF_PROG_LOAD, &attr) {
        // Refused once, accepted with a log: take it.
        // SAFETY: a new descriptor returned by the kernel.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let lines: Vec<&str> = text.trim().lines().collect();
    let tail = lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n");
    Err(std::io::Error::new(
        first.kind(),
        if tail.is_empty() {
            first.to_string()
        } else {
            format!("{first}; the verifier said:\n{tail}")
        },
    ))
}

/// A cgroup (v2) whose processes' sockets obey the egress rules: one per
/// build, shared by the NATs of its RUN steps; removed on drop. It is
/// reached through descriptors, so it needs no cgroup2 mount once made.
#[derive(Debug)]
pub struct EgressCgroup {
    /// `<v2 root>/firebuild`.
    parent: OwnedFd,
    dir: OwnedFd,
    name: String,
}

fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?)
}

impl EgressCgroup {
    /// Creates `<v2 root>/firebuild/net-<pid>-<n>` with the programs for
    /// this host's addresses attached. Mounts the cgroup2 hierarchy on a
    /// private mount thread of its own, whatever the host mounts where.
    pub fn for_build() -> Result<EgressCgroup> {
        let resolvers = std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| host_resolvers(&t))
            .unwrap_or_default();
        let blocked = host_blocklist();
        let name = format!(
            "net-{}-{}",
            std::process::id(),
            crate::util::unique_suffix()
        );
        crate::mountns::with_private_mounts(|| {
            let v2 = Path::new("/sys/fs/cgroup");
            mount_v2(v2)?;
            Self::create(v2, &name, &blocked, &resolvers)
        })
    }

    fn create(
        v2: &Path,
        name: &str,
        blocked: &[Blocked],
        dns: &[Ipv4Addr],
    ) -> Result<EgressCgroup> {
        let fail = |what: &str, e: std::io::Error| {
            BuildError::Sandbox(format!("filtering the build network ({what}): {e}"))
        };
        let parent_path = v2.join("firebuild");
        std::fs::create_dir_all(&parent_path).map_err(|e| fail("creating the cgroup", e))?;
        remove_stale(&parent_path);
        let dir_path = parent_path.join(name);
        std::fs::create_dir(&dir_path).map_err(|e| fail("creating the cgroup", e))?;
        let parent = open_dir(&parent_path).map_err(|e| fail("opening the cgroup", e))?;
        let dir = match open_dir(&dir_path) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir_path);
                return Err(fail("opening the cgroup", e));
            }
        };
        let cg = EgressCgroup {
            parent,
            dir,
            name: name.to_owned(),
        };
        let map =
            blocked_map(blocked).map_err(|e| fail("making the map of blocked addresses", e))?;
        // The programs hold the map: this descriptor may go once they load.
        let v4 = ipv4_program(map.as_raw_fd(), dns);
        let v6 = ipv6_program();
        for (prog, attach_type) in [
            (&v4, BPF_CGROUP_INET4_CONNECT),
            (&v4, BPF_CGROUP_UDP4_SENDMSG),
            (&v6, BPF_CGROUP_INET6_CONNECT),
            (&v6, BPF_CGROUP_UDP6_SENDMSG),
        ] {
            let fd = load(prog, attach_type)
                .map_err(|e| fail("loading a cgroup/sock_addr program", e))?;
            let attr = ProgAttach {
                target_fd: cg.dir.as_raw_fd() as u32,
                attach_bpf_fd: fd.as_raw_fd() as u32,
                attach_type,
                attach_flags: BPF_F_ALLOW_MULTI,
                ..Default::default()
            };
            bpf(BPF_PROG_ATTACH, &attr).map_err(|e| fail("attaching a program", e))?;
            // The attachment holds the program; our descriptor can go.
        }
        Ok(cg)
    }

    /// Moves process `pid` (all its threads) into the cgroup.
    pub fn add(&self, pid: u32) -> Result<()> {
        let fail = |e: std::io::Error| {
            BuildError::Sandbox(format!(
                "moving the build network's NAT into cgroup {}: {e}",
                self.name
            ))
        };
        let fd = rustix::fs::openat(
            &self.dir,
            "cgroup.procs",
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| fail(e.into()))?;
        rustix::io::write(&fd, pid.to_string().as_bytes()).map_err(|e| fail(e.into()))?;
        Ok(())
    }
}

impl Drop for EgressCgroup {
    fn drop(&mut self) {
        // The build's NATs have exited; the kernel may still be emptying it.
        for _ in 0..200 {
            match rustix::fs::unlinkat(
                &self.parent,
                self.name.as_str(),
                rustix::fs::AtFlags::REMOVEDIR,
            ) {
                Err(rustix::io::Errno::BUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                _ => return,
            }
        }
        tracing::warn!(cgroup = %self.name, "could not remove the build network's cgroup");
    }
}

/// Removes the `net-<pid>-*` cgroups in `parent` left by builders that were
/// killed (those whose process is gone; rmdir refuses non-empty ones).
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("net-").and_then(|r| r.split('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// Mounts the cgroup2 hierarchy on `target` (in the caller's private mount
/// namespace).
fn mount_v2(target: &Path) -> Result<()> {
    crate::mountns::mount(
        Some(Path::new("cgroup2")),
        target,
        Some("cgroup2"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        None,
    )
    .map_err(|e| {
        BuildError::Sandbox(format!(
            "mounting the cgroup2 hierarchy for the build network: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_exception_jumps_to_allow() {
        let dns = [Ipv4Addr::new(127, 0, 0, 53), Ipv4Addr::new(10, 0, 0, 53)];
        let p = ipv4_program(3, &dns);
        let allow = p
            .iter()
            .position(|i| i.code == BPF_ALU64_MOV_K && i.imm == 1)
            .unwrap();
        assert_eq!(p[allow + 1].code, BPF_EXIT);
        let port_checks: Vec<usize> = (0..p.len())
            .filter(|n| p[*n].code == BPF_JMP32_JEQ_K)
            .collect();
        assert_eq!(port_checks.len(), dns.len());
        for n in port_checks {
            assert_eq!(n + 1 + p[n].off as usize, allow);
        }
        // A trie match skips allow to the deny exit.
        let matched = p.iter().position(|i| i.code == BPF_JMP_JNE_K).unwrap();
        let deny = matched + 1 + p[matched].off as usize;
        assert_eq!((p[deny].code, p[deny].imm), (BPF_ALU64_MOV_K, 0));
        assert_eq!(p[deny + 1].code, BPF_EXIT);
    }

    /// 1000 blocked /32s (a host with many addresses) plus the fixed
    /// prefixes: the programs load, and the map refuses the last address,
    /// every always-blocked prefix, and nothing else.
    #[test]
    fn a_thousand_blocked_addresses_load_and_the_last_is_refused() {
        let mut blocked: Vec<Blocked> = ALWAYS
            .iter()
            .map(|(addr, prefix)| Blocked {
                addr: *addr,
                prefix: *prefix,
            })
            .collect();
        let host = |n: u32| Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 90, 0, 0)) + n);
        blocked.extend((1..=1000).map(|n| Blocked {
            addr: host(n),
            prefix: 32,
        }));
        let map = blocked_map(&blocked).expect("the trie of 1004 prefixes");
        let v4 = ipv4_program(map.as_raw_fd(), &[Ipv4Addr::new(10, 90, 0, 1)]);
        for attach in [BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_UDP4_SENDMSG] {
            load(&v4, attach).expect("the IPv4 program loads");
        }
        for attach in [BPF_CGROUP_INET6_CONNECT, BPF_CGROUP_UDP6_SENDMSG] {
            load(&ipv6_program(), attach).expect("the IPv6 program loads");
        }
        assert!(map_blocks(&map, host(1000)));
        assert!(map_blocks(&map, host(1)));
        assert!(!map_blocks(&map, host(1001)));
        assert!(map_blocks(&map, Ipv4Addr::new(127, 1, 2, 3)));
        assert!(map_blocks(&map, Ipv4Addr::new(239, 1, 1, 1)));
        assert!(map_blocks(&map, Ipv4Addr::BROADCAST));
        assert!(!map_blocks(&map, Ipv4Addr::new(192, 0, 2, 7)));
    }

    #[test]
    fn a_refused_program_is_explained_by_the_verifier() {
        // Returns without setting r0: the verifier refuses it.
        let bad = [insn(BPF_EXIT, 0, 0, 0, 0)];
        let err = load(&bad, BPF_CGROUP_INET4_CONNECT)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the verifier said"), "{err}");
        assert!(err.contains("R0"), "{err}");
    }

    #[test]
    fn the_blocklist_has_loopback_and_this_hosts_addresses() {
        let list = host_blocklist();
        assert!(list.contains(&Blocked {
            addr: Ipv4Addr::new(127, 0, 0, 0),
            prefix: 8
        }));
        assert!(
            list.contains(&Blocked {
                addr: Ipv4Addr::new(127, 0, 0, 1),
                prefix: 32
            }),
            "lo's address: {list:?}"
        );
        assert_eq!(
            host_resolvers("# x\nnameserver 10.255.255.53\nnameserver ::1\nsearch a\n"),
            vec![Ipv4Addr::new(10, 255, 255, 53)]
        );
    }
}
