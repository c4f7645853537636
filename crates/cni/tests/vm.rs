//! The per-VM calls the runtime makes: setup (netns + CNI ADD + tap wiring),
//! check, teardown, orphan search — with real plugins, real namespaces, a
//! real tap, inside a namespace each test makes to play the host.

mod common;

use std::net::Ipv4Addr;

use common::responder::Responder;
use common::{retry, run_in, Snapshot, World};
use firebuild_cni::network::{
    create_network, ensure_managed_network, list_networks, remove_network,
};
use firebuild_cni::{
    netns, parse_port_specs, CniError, CniRuntime, VmNetworkRequest, DEFAULT_NETWORK,
};

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn ping(w: &World, ip: &str) -> Result<(), String> {
    run_in(
        &w.host_path,
        &["/bin/busybox", "ping", "-c", "1", "-W", "1", ip],
    )
    .map(|_| ())
}

fn diff(a: &Snapshot, b: &Snapshot) -> String {
    format!("before: {a:#?}\nafter: {b:#?}")
}

#[test]
fn tap_carries_frames_both_ways() {
    let w = World::new("tap");
    create_network(&w.rt, &w.spec("tapnet", "192.168.127.0/24")).unwrap();
    let vm = w.vm("a");
    let mut req = VmNetworkRequest::new(&vm, "tapnet");
    req.ip = Some("192.168.127.20".parse().unwrap());
    // An owner no user has, so `ip` prints it as a number.
    req.tap_owner = Some(firebuild_cni::TapOwner {
        uid: 4242,
        gid: 4243,
    });
    let net = w.rt.setup_vm_network(&req).unwrap();
    let details = String::from_utf8_lossy(
        &run_in(&net.netns_path, &["ip", "-d", "link", "show", "tap0"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        details.contains("tun type tap") && details.contains("user 4242 group 4243"),
        "{details}"
    );

    assert_eq!(
        net.netns_path,
        netns::netns_path(&format!("firebuild-{vm}"))
    );
    assert!(netns::exists(&net.netns_path));
    assert_eq!(net.tap_name, "tap0");
    assert_eq!(net.address.to_string(), "192.168.127.20/24");
    assert_eq!(net.gateway.unwrap().to_string(), "192.168.127.1");
    assert_eq!(net.mtu, 1500);
    // The guest MAC is the veth's.
    let link = String::from_utf8_lossy(
        &run_in(&net.netns_path, &["ip", "-o", "link", "show", "eth0"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(link.contains(&net.mac), "{link} vs {}", net.mac);
    w.rt.check_vm_network(&vm).unwrap();
    // inspect reads the same back from the cache.
    let cached = w.rt.vm_network(&vm).unwrap().unwrap();
    assert_eq!(cached, net);

    // Nothing holds the tap yet: nobody answers.
    assert!(ping(&w, "192.168.127.20").is_err());

    let guest = Responder::start(
        net.netns_path.clone(),
        &net.tap_name,
        Ipv4Addr::new(192, 168, 127, 20),
        mac_bytes(&net.mac),
    );
    retry(10, || ping(&w, "192.168.127.20"))
        .expect("ping through bridge -> veth -> tap -> guest and back");
    let seen = guest
        .echo_requests
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(seen >= 1, "the reply did not come from the tap side");

    // Break the tap -> veth direction: requests still reach the guest, replies are lost.
    run_in(
        &net.netns_path,
        &["tc", "filter", "del", "dev", "tap0", "ingress"],
    )
    .unwrap();
    assert!(
        ping(&w, "192.168.127.20").is_err(),
        "ping answered without the tap -> veth redirect"
    );
    assert!(
        guest
            .echo_requests
            .load(std::sync::atomic::Ordering::SeqCst)
            > seen
    );
    let err = w.rt.check_vm_network(&vm).unwrap_err();
    assert!(err.to_string().contains("tap0"), "{err}");
    drop(guest);

    let report = w.rt.teardown_vm_network(&vm, false).unwrap();
    assert_eq!(report.deleted, vec!["tapnet/eth0".to_string()]);
    assert!(!netns::exists(&net.netns_path));
    assert!(common::leases(&w.ipam_dir().join("tapnet")).is_empty());
}

/// A throwaway VM first: the plugins create their shared chains (CNI-FORWARD,
/// CNI-HOSTPORT-*) and the bridge on first use and keep them; after that,
/// a VM's setup + teardown must leave the host exactly as it was.
fn warm_up(w: &World, network: &str) {
    let vm = w.vm("warm");
    let mut req = VmNetworkRequest::new(&vm, network);
    req.ports = parse_port_specs(&["18080:80"]).unwrap();
    w.rt.setup_vm_network(&req).unwrap();
    w.rt.teardown_vm_network(&vm, false).unwrap();
}

#[test]
fn teardown_leaves_the_host_as_before() {
    let w = World::new("clean");
    let mut spec = w.spec("cleannet", "192.168.127.0/24");
    spec.ip_masq = true;
    create_network(&w.rt, &spec).unwrap();
    let pristine = w.snapshot("cleannet");
    warm_up(&w, "cleannet");
    let before = w.snapshot("cleannet");
    // What the warm-up left: the bridge and the plugins' empty shared chains only.
    assert_eq!(
        before.links.len(),
        pristine.links.len() + 1,
        "{}",
        diff(&pristine, &before)
    );
    assert!(before.links.contains(&"fb-cleannet".to_string()));
    assert!(
        !before.iptables.contains("192.168.127."),
        "{}",
        before.iptables
    );

    let vm = w.vm("a");
    let mut req = VmNetworkRequest::new(&vm, "cleannet");
    req.ports = parse_port_specs(&["8080:80", "5353:53/udp"]).unwrap();
    let net = w.rt.setup_vm_network(&req).unwrap();
    let during = w.snapshot("cleannet");
    assert_ne!(during.iptables, before.iptables);
    assert!(during.iptables.contains("8080") && during.iptables.contains("5353"));
    assert_eq!(during.leases, vec![net.address.addr.to_string()]);
    assert_eq!(during.links.len(), before.links.len() + 1, "host veth");
    assert!(during.namespaces.contains(&format!("firebuild-{vm}")));

    w.rt.teardown_vm_network(&vm, false).unwrap();
    let after = w.snapshot("cleannet");
    assert_eq!(before, after, "{}", diff(&before, &after));
    // Teardown twice is fine.
    assert_eq!(
        w.rt.teardown_vm_network(&vm, false).unwrap().deleted.len(),
        0
    );
}

#[test]
fn crash_then_purge_cleans_from_the_cache() {
    let w = World::new("crash");
    create_network(&w.rt, &w.spec("crashnet", "192.168.127.0/24")).unwrap();
    warm_up(&w, "crashnet");
    let before = w.snapshot("crashnet");

    let (a, b) = (w.vm("a"), w.vm("b"));
    for vm in [&a, &b] {
        let mut req = VmNetworkRequest::new(vm, "crashnet");
        req.ports = parse_port_specs(&[if vm == &a { "8080:80" } else { "8081:80" }]).unwrap();
        w.rt.setup_vm_network(&req).unwrap();
    }
    // "Crash": the process and its memory are gone, and even the network's
    // conf file was removed; only the cache remains.
    std::fs::remove_file(w.rt.paths().conf_dir.join("crashnet.conflist")).unwrap();
    let fresh = CniRuntime::new(w.rt.paths().clone()).with_plugin_netns(&w.host_path);

    // b is still running; a is not.
    // (Other tests run in parallel: look only at this world's VMs.)
    let orphans: Vec<_> = fresh
        .find_orphans(|id| id == b)
        .unwrap()
        .into_iter()
        .filter(|o| o.vm_id.starts_with(&w.tag))
        .collect();
    assert_eq!(orphans.len(), 1, "{orphans:?}");
    assert_eq!(orphans[0].vm_id, a);
    assert_eq!(orphans[0].attachments, vec!["crashnet/eth0".to_string()]);
    assert!(orphans[0].netns.is_some());
    for o in orphans {
        fresh.teardown_vm_network(&o.vm_id, false).unwrap();
    }
    fresh.teardown_vm_network(&b, false).unwrap();
    assert!(fresh
        .find_orphans(|_| false)
        .unwrap()
        .iter()
        .all(|o| !o.vm_id.starts_with(&w.tag)));
    let after = w.snapshot("crashnet");
    assert_eq!(before, after, "{}", diff(&before, &after));
}

#[test]
fn a_namespace_without_cache_entry_is_an_orphan_too() {
    let w = World::new("nsorph");
    let vm = w.vm("a");
    let path = netns::create(&format!("firebuild-{vm}")).unwrap();
    let orphans = w.rt.find_orphans(|_| false).unwrap();
    let mine: Vec<_> = orphans.iter().filter(|o| o.vm_id == vm).collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].netns.as_deref(), Some(path.as_path()));
    assert!(mine[0].attachments.is_empty());
    // setup refuses to reuse it, teardown removes it.
    let err =
        w.rt.setup_vm_network(&VmNetworkRequest::new(&vm, "x"))
            .unwrap_err();
    assert!(
        matches!(
            err,
            CniError::NetworkNotFound { .. } | CniError::AlreadyAttached { .. }
        ),
        "{err}"
    );
    w.rt.teardown_vm_network(&vm, false).unwrap();
    assert!(!netns::exists(&path));
}

#[test]
fn failed_setup_rolls_everything_back() {
    let w = World::new("roll");
    create_network(&w.rt, &w.spec("rollnet", "192.168.127.0/24")).unwrap();
    warm_up(&w, "rollnet");
    let before = w.snapshot("rollnet");
    // Same network plus a last plugin that fails: bridge, IPAM, firewall and
    // portmap have all done their ADD when it fails.
    let path = w.rt.paths().conf_dir.join("rollnet.conflist");
    let mut conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    conf["plugins"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"type": "tuning", "sysctl": {"net.no.such.key": "1"}}));
    std::fs::write(&path, serde_json::to_vec(&conf).unwrap()).unwrap();

    let vm = w.vm("a");
    let mut req = VmNetworkRequest::new(&vm, "rollnet");
    req.ports = parse_port_specs(&["8080:80"]).unwrap();
    let err = w.rt.setup_vm_network(&req).unwrap_err();
    assert!(
        matches!(err, CniError::Plugin { ref plugin, .. } if plugin == "tuning"),
        "{err}"
    );
    assert!(w.rt.cache().for_vm(&vm).unwrap().is_empty());
    let after = w.snapshot("rollnet");
    assert_eq!(before, after, "{}", diff(&before, &after));

    // A requested address outside the subnet fails in IPAM; also rolled back.
    let mut req = VmNetworkRequest::new(&vm, "rollnet");
    req.ip = Some("10.9.9.9".parse().unwrap());
    assert!(w.rt.setup_vm_network(&req).is_err());
    assert_eq!(w.snapshot("rollnet"), before);
}

#[test]
fn network_create_ls_rm() {
    let w = World::new("nets");
    let a = create_network(&w.rt, &w.spec("alpha", "192.168.127.0/24")).unwrap();
    assert_eq!(a.subnets, vec!["192.168.127.0/24"]);
    assert_eq!(a.bridge.as_deref(), Some("fb-alpha"));
    assert_eq!(a.plugins, vec!["bridge", "firewall", "portmap"]);

    // Refusals: same name, overlapping subnet, same bridge.
    let err = create_network(&w.rt, &w.spec("alpha", "192.168.128.0/24")).unwrap_err();
    assert!(matches!(err, CniError::NetworkExists { .. }), "{err}");
    let err = create_network(&w.rt, &w.spec("beta", "192.168.127.128/25")).unwrap_err();
    assert!(err.to_string().contains("overlaps"), "{err}");
    let mut same_bridge = w.spec("beta", "192.168.128.0/24");
    same_bridge.bridge = Some("fb-alpha".into());
    assert!(create_network(&w.rt, &same_bridge)
        .unwrap_err()
        .to_string()
        .contains("fb-alpha"));
    create_network(&w.rt, &w.spec("beta", "192.168.128.0/24")).unwrap();

    let names: Vec<String> = list_networks(&w.rt)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["alpha", "beta"]);

    // In use: refused; after teardown: removed with its bridge and IPAM dir.
    let vm = w.vm("a");
    w.rt.setup_vm_network(&VmNetworkRequest::new(&vm, "alpha"))
        .unwrap();
    let err = remove_network(&w.rt, "alpha").unwrap_err();
    assert!(
        matches!(err, CniError::NetworkInUse { ref vms, .. } if vms == &vec![vm.clone()]),
        "{err}"
    );
    w.rt.teardown_vm_network(&vm, false).unwrap();
    let removed = remove_network(&w.rt, "alpha").unwrap();
    assert_eq!(removed.bridge_deleted.as_deref(), Some("fb-alpha"));
    assert_eq!(removed.ipam_dir_removed, Some(w.ipam_dir().join("alpha")));
    assert!(w.host(&["ip", "link", "show", "fb-alpha"]).is_err());
    assert!(matches!(
        remove_network(&w.rt, "alpha"),
        Err(CniError::NetworkNotFound { .. })
    ));
    let names: Vec<String> = list_networks(&w.rt)
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, vec!["beta"]);
}

#[test]
fn default_network_is_made_on_first_use() {
    let w = World::new("dflt");
    // Occupy the first candidate so the pick has to skip it.
    create_network(&w.rt, &w.spec("other", "10.213.0.0/24")).unwrap();
    let info = ensure_managed_network(&w.rt, DEFAULT_NETWORK).unwrap();
    assert_eq!(info.name, "default");
    assert_eq!(info.subnets, vec!["10.213.1.0/24"]);
    assert!(info.ip_masq);
    assert_eq!(info.bridge.as_deref(), Some("fb-default"));
    assert_eq!(
        info.ipam_data_dir,
        Some(w.rt.paths().cache_dir.join("networks"))
    );
    // Idempotent.
    assert_eq!(
        ensure_managed_network(&w.rt, DEFAULT_NETWORK).unwrap(),
        info
    );
}

#[test]
fn a_tap_made_by_the_chain_is_used_as_is() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new("ownt");
    // A stand-in for tc-redirect-tap: a plugin (first in the chain, searched
    // in an extra bin dir) that makes a tap in the VM namespace.
    let bin = w.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("fake-tap");
    std::fs::write(
        &plugin,
        "#!/bin/sh\ncat >/dev/null\nif [ \"$CNI_COMMAND\" = ADD ]; then\n  ip -n \"$(basename \"$CNI_NETNS\")\" tuntap add tap7 mode tap || exit 1\n  echo '{\"cniVersion\":\"1.0.0\"}'\nfi\n",
    )
    .unwrap();
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut paths = w.rt.paths().clone();
    paths.bin_dirs.insert(0, bin);
    let rt = CniRuntime::new(paths).with_plugin_netns(&w.host_path);
    create_network(&rt, &w.spec("ownt", "192.168.127.0/24")).unwrap();
    let path = rt.paths().conf_dir.join("ownt.conflist");
    let mut conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    conf["plugins"]
        .as_array_mut()
        .unwrap()
        .insert(0, serde_json::json!({"type": "fake-tap"}));
    std::fs::write(&path, serde_json::to_vec(&conf).unwrap()).unwrap();

    let vm = w.vm("a");
    let net = rt
        .setup_vm_network(&VmNetworkRequest::new(&vm, "ownt"))
        .unwrap();
    assert_eq!(net.tap_name, "tap7");
    let links = String::from_utf8_lossy(
        &run_in(&net.netns_path, &["ip", "-o", "link"])
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!links.contains("tap0"), "we made a second tap: {links}");
    assert_eq!(rt.vm_network(&vm).unwrap().unwrap().tap_name, "tap7");
    rt.check_vm_network(&vm).unwrap();
    rt.teardown_vm_network(&vm, false).unwrap();
    assert!(!netns::exists(&net.netns_path));
}
