//! Issue 9's end-to-end proof with the real `firebuild` binary: a CNI bridge
//! network, an HTTP server microVM on QEMU reached at its address and through
//! a published port, two VMs talking to each other, and a host left as it was
//! after `kill` and `purge`.
//!
//! The test's world lives in network namespaces the test makes: one plays
//! "the host" (every `firebuild` command runs inside it, so the bridge, the
//! VM namespaces' veth peers, the iptables rules and every address live
//! there) and one plays "another host" wired to it by a veth. Only private
//! addresses inside those namespaces are ever contacted; the machine's own
//! interfaces are never touched. A guard tears everything down, also when an
//! assertion fails.
//!
//! Needs root, Debian's `containernetworking-plugins`, `busybox-static`,
//! `qemu-system-x86`, `e2fsprogs`, `iptables`, `iproute2`, the guest kernel
//! (`$FIREBUILD_TEST_KERNEL`, else the CI cache) and the static guest init
//! (`$FIREBUILD_VMINIT`, else the output of `scripts/build-vminit.sh`).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use firebuild_vm::testing;

mod net_world;

use net_world::*;

fn status(md: &serde_json::Value) -> &str {
    md["status"].as_str().unwrap_or_default()
}

#[test]
fn machines_network_end_to_end() {
    let started = Instant::now();
    let w = World::new();
    let lap = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let pristine_links = w.links();

    let kernel = testing::guest_kernel();
    w.ok(
        &["kernel", "add"],
        &["--file", kernel.to_str().unwrap(), "--id", KERNEL_ID],
    );

    // network create / ls.
    let conflist = w.ok(&["network", "create", NETWORK], &["--subnet", SUBNET]);
    assert!(
        Path::new(conflist.trim()).is_file(),
        "network create printed {conflist:?}"
    );
    let listed = w.ok(&["network", "ls"], &[]);
    assert!(
        listed.contains(NETWORK) && listed.contains(SUBNET),
        "{listed}"
    );

    // A throwaway VM first: the plugins make the bridge and their shared
    // chains on first use and keep them. It also shows a foreground `--rm`
    // run with a network gives everything back when the guest exits.
    let out = w.run_vm(
        "warm",
        &["--cni-network-name", NETWORK, "--port", "18080:80", "--rm"],
        &["/bin/true"],
    );
    assert!(
        out.status.success(),
        "warm-up VM: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    lap("warm-up VM booted and exited");
    let before = w.host_state();
    assert!(
        before.links.contains(&format!("fb-{NETWORK}")),
        "{before:#?}"
    );
    assert!(
        before.vm_namespaces.is_empty() && before.leases.is_empty(),
        "{before:#?}"
    );
    assert!(
        before.run_cache.is_empty(),
        "--rm left {:?}",
        before.run_cache
    );
    assert!(
        !before.iptables.contains("192.168.127."),
        "{}",
        before.iptables
    );

    // The HTTP server VM, daemonized, with a published port.
    let web = w.vm("web");
    let out = w.run_vm(
        "web",
        &[
            "--cni-network-name",
            NETWORK,
            "--port",
            "8080:80",
            "--daemonize",
        ],
        &[],
    );
    assert!(out.status.success(), "run web: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), web);
    let md = w.inspect(&web);
    assert_eq!(status(&md), "running", "{md:#}");
    let web_ip: Ipv4Addr = md["ip"]
        .as_str()
        .unwrap_or_else(|| panic!("inspect shows no IP: {md:#}"))
        .parse()
        .unwrap();
    assert_eq!(md["network"]["network_name"], NETWORK, "{md:#}");
    assert_eq!(
        web_ip.octets()[..3],
        [192, 168, 127],
        "{web_ip} is not in {SUBNET}"
    );
    assert_ne!(
        web_ip,
        Ipv4Addr::new(192, 168, 127, 1),
        "the gateway's address"
    );
    assert!(w.vm_namespaces().contains(&format!("firebuild-{web}")));

    // From the host namespace to the VM's address.
    let body = eventually(BOOT_WAIT, || {
        http_get(&w.host, SocketAddr::from((web_ip, 80)))
    })
    .unwrap_or_else(|e| {
        let logs = w.firebuild(&["logs"], &["--vmm-id", &web]);
        panic!(
            "the VM's httpd never answered: {e}\nconsole:\n{}",
            text(&logs.stdout)
        )
    });
    assert_eq!(body, w.page);
    lap("httpd answered at the VM's address");

    // The published port, on the host namespace's own address: from the host
    // itself and from another host.
    let published = SocketAddr::from((HOST_ADDR, 8080));
    assert_eq!(
        eventually(Duration::from_secs(10), || http_get(&w.host, published)).unwrap(),
        w.page
    );
    assert_eq!(
        eventually(Duration::from_secs(10), || http_get(&w.other, published)).unwrap(),
        w.page
    );
    // Only the published port is forwarded.
    assert!(http_get(&w.other, SocketAddr::from((HOST_ADDR, 8081))).is_err());
    lap("published port answered from the host and from another host");

    let ls = w.ok(&["ls"], &["--json"]);
    let row = ls
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["id"] == web.as_str())
        .unwrap_or_else(|| panic!("ls does not list {web}: {ls}"));
    assert_eq!(row["ip"], web_ip.to_string());
    // Nothing of it is in the machine's own namespace.
    let root_links = text(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        !root_links.contains(&format!("fb-{NETWORK}")) && !root_links.contains(&w.tag),
        "the test's devices leaked into the machine's namespace:\n{root_links}"
    );

    // A second VM on the network, with a static address, fetches the first
    // VM's page by IP and prints it on its console. (No `wget -T`: Debian
    // 12's busybox-static crashes with it.)
    let client = w.vm("client");
    let client_ip = "192.168.127.50";
    let script = format!(
        "i=0; while [ $i -lt 30 ]; do \
           if wget -q -O /tmp/page http://{web_ip}/; then cat /tmp/page; exit 0; fi; \
           i=$((i+1)); sleep 1; \
         done; echo fetch failed; exit 7"
    );
    let out = w.run_vm(
        "client",
        &[
            "--cni-network-name",
            NETWORK,
            "--ip-address",
            client_ip,
            "--daemonize",
        ],
        &["/bin/sh", "-c", &script],
    );
    assert!(out.status.success(), "run client: {}", text(&out.stderr));
    assert_eq!(w.inspect(&client)["ip"], client_ip);
    let md = eventually(BOOT_WAIT, || {
        let md = w.inspect(&client);
        if status(&md) == "exited" {
            Ok(md)
        } else {
            Err(format!("still {}", status(&md)))
        }
    })
    .expect("the client VM exits once it has fetched the page");
    let console = w.ok(&["logs"], &["--vmm-id", &client]);
    assert_eq!(md["exit_code"], 0, "client failed; console:\n{console}");
    assert!(
        console.contains(w.page.trim()),
        "the page is not on the client's console:\n{console}"
    );
    lap("second VM fetched the first VM's page by IP");

    // kill gives the address, the port and the namespace back at once.
    w.ok(&["kill"], &["--vmm-id", &web, "--shutdown-timeout", "10"]);
    assert_eq!(status(&w.inspect(&web)), "exited");
    assert!(!w.vm_namespaces().contains(&format!("firebuild-{web}")));
    assert!(
        http_get(&w.host, SocketAddr::from((web_ip, 80))).is_err(),
        "the killed VM still answers"
    );
    assert!(
        http_get(&w.other, published).is_err(),
        "the published port outlived kill"
    );
    lap("kill");

    // A crash: the VMM dies and even its run directory is lost; purge
    // finds the network it left from the CNI cache.
    let crash = w.vm("crash");
    let out = w.run_vm(
        "crash",
        &[
            "--cni-network-name",
            NETWORK,
            "--port",
            "8081:80",
            "--daemonize",
        ],
        &[],
    );
    assert!(out.status.success(), "run crash: {}", text(&out.stderr));
    let pid = w.inspect(&crash)["pid"]
        .as_i64()
        .expect("a running VM has a pid");
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    eventually(Duration::from_secs(10), || {
        if proc_dir.exists() {
            Err(format!("QEMU {pid} still runs"))
        } else {
            Ok(())
        }
    })
    .unwrap();
    std::fs::remove_dir_all(w.path("runs").join(&crash)).unwrap();
    // Left until purge: the crashed VM's network, and the client's (it
    // exited by itself; an exited VM keeps its address until purge).
    let crashed = w.host_state();
    assert_eq!(
        crashed.vm_namespaces,
        vec![format!("firebuild-{client}"), format!("firebuild-{crash}")]
    );
    assert_eq!(crashed.leases.len(), 2, "{crashed:#?}");
    assert!(crashed.iptables.contains("8081"), "{}", crashed.iptables);

    w.ok(&["purge"], &[]);
    assert_eq!(w.ok(&["ls"], &["--json"]).trim(), "", "purge left VMs");
    assert!(w.live_vmm_pids().is_empty());
    let after = w.host_state();
    assert_eq!(before, after, "kill + purge did not restore the host");
    lap("purge restored the host");

    // Refusals start nothing and leave nothing.
    let out = w.run_vm(
        "bad1",
        &["--cni-network-name", "nosuch", "--daemonize"],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("nosuch"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run_vm(
        "bad2",
        &[
            "--cni-network-name",
            NETWORK,
            "--ip-address",
            "10.9.9.9",
            "--daemonize",
        ],
        &[],
    );
    assert!(
        !out.status.success(),
        "an address outside {SUBNET} was accepted"
    );
    assert!(
        text(&out.stderr).contains("10.9.9.9"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run_vm(
        "bad3",
        &[
            "--cni-network-name",
            NETWORK,
            "--port",
            "99999:80",
            "--daemonize",
        ],
        &[],
    );
    assert!(!out.status.success(), "port 99999 was accepted");
    assert!(text(&out.stderr).contains("99999"), "{}", text(&out.stderr));
    assert_eq!(
        w.host_state(),
        before,
        "a refused run left something behind"
    );

    // network rm takes the bridge away too.
    w.ok(&["network", "rm", NETWORK], &[]);
    assert!(!w.ok(&["network", "ls"], &[]).contains(NETWORK));
    assert_eq!(w.links(), pristine_links);
    lap("done");
}
