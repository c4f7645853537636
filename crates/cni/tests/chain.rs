//! CNI runtime against Debian's real plugins (bridge, host-local, firewall,
//! portmap), inside a namespace each test makes to play the host.

mod common;

use std::path::Path;

use common::{http_get, httpd, retry, run_in, World};
use firebuild_cni::network::create_network;
use firebuild_cni::{netns, parse_port_specs, CniError, NetworkConfigList, RuntimeConf};
use serde_json::Map;

fn rt_conf(w: &World, vm: &str, ns: &Path) -> RuntimeConf {
    RuntimeConf {
        container_id: w.vm(vm),
        netns: ns.to_path_buf(),
        ifname: "eth0".into(),
        ..Default::default()
    }
}

fn vm_netns(w: &World, vm: &str) -> std::path::PathBuf {
    netns::create(&format!("fbt-{}-{vm}", w.tag)).expect("create VM netns")
}

#[test]
fn add_check_del_through_standard_chain() {
    let w = World::new("acd");
    create_network(&w.rt, &w.spec("acd", "192.168.127.0/24")).unwrap();
    let list = w.rt.load_network("acd").unwrap();
    let ns = vm_netns(&w, "a");
    let rt = rt_conf(&w, "a", &ns);

    let result = w.rt.add(&list, &rt).unwrap();
    let ip = result.address_for("eth0").expect("address for eth0");
    assert_eq!(ip.address.trunc().to_string(), "192.168.127.0/24");
    assert_eq!(ip.gateway.unwrap().to_string(), "192.168.127.1");
    assert!(
        result.interfaces.iter().any(|i| i.name == "fb-acd"),
        "{:?}",
        result.interfaces
    );
    let (_, eth0) = result.sandbox_interface("eth0").expect("eth0 in sandbox");
    assert_eq!(eth0.sandbox, ns.display().to_string());

    // The address really is on eth0 in the VM namespace, and the bridge answers.
    let addr = run_in(&ns, &["ip", "-o", "addr", "show", "eth0"]).unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&ip.address.to_string()));
    retry(10, || {
        run_in(
            &ns,
            &[
                "/bin/busybox",
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "192.168.127.1",
            ],
        )
        .map(|_| ())
    })
    .unwrap();

    // Cached with the exact config.
    let entry =
        w.rt.cache()
            .load("acd", &rt.container_id, "eth0")
            .unwrap()
            .unwrap();
    assert_eq!(entry.config, list.bytes);
    assert_eq!(entry.result.as_ref().unwrap(), &result.raw);
    assert_eq!(
        common::leases(&w.ipam_dir().join("acd")),
        vec![ip.address.addr.to_string()]
    );

    w.rt.check(&list, &rt).unwrap();

    // CHECK notices a broken attachment: the plugin's own message comes back.
    run_in(&ns, &["ip", "addr", "flush", "dev", "eth0"]).unwrap();
    let err = w.rt.check(&list, &rt).unwrap_err();
    assert!(
        matches!(err, CniError::Plugin { ref plugin, .. } if plugin == "bridge"),
        "{err}"
    );

    w.rt.del(&list, &rt).unwrap();
    assert!(w
        .rt
        .cache()
        .load("acd", &rt.container_id, "eth0")
        .unwrap()
        .is_none());
    assert!(common::leases(&w.ipam_dir().join("acd")).is_empty());
    let err = w.rt.check(&list, &rt).unwrap_err();
    assert!(matches!(err, CniError::NotCached { .. }), "{err}");
    // DEL is idempotent.
    w.rt.del(&list, &rt).unwrap();
}

#[test]
fn plugin_error_is_shown_with_the_plugins_message() {
    let w = World::new("err");
    create_network(&w.rt, &w.spec("err", "192.168.127.0/24")).unwrap();
    let list = w.rt.load_network("err").unwrap();
    let ns = vm_netns(&w, "a");
    let mut rt = rt_conf(&w, "a", &ns);
    rt.args = vec![("IP".into(), "192.168.99.9".into())];
    let err = w.rt.add(&list, &rt).unwrap_err();
    match &err {
        CniError::Plugin {
            plugin,
            command,
            msg,
            ..
        } => {
            assert_eq!((plugin.as_str(), command.as_str()), ("bridge", "ADD"));
            assert!(msg.contains("192.168.99.9"), "plugin message lost: {err}");
        }
        other => panic!("expected a plugin error, got {other}"),
    }
    assert!(err.to_string().contains("192.168.99.9"));

    // A missing plugin names itself and where we looked.
    let broken = NetworkConfigList::from_bytes(
        br#"{"cniVersion":"1.0.0","name":"err2","plugins":[{"type":"no-such-plugin"}]}"#,
        None,
    )
    .unwrap();
    let err = w.rt.add(&broken, &rt_conf(&w, "b", &ns)).unwrap_err();
    assert!(matches!(err, CniError::PluginNotFound { .. }), "{err}");
    assert!(err.to_string().contains("no-such-plugin") && err.to_string().contains("/usr/lib/cni"));
    // The failed ADDs left their exact config in the cache for DEL.
    let (entries, _) = w.rt.cache().list().unwrap();
    assert_eq!(entries.len(), 2);
    for e in entries {
        assert!(e.result.is_none() && e.partial_result.is_none());
        if e.network_name == "err" {
            w.rt.del_cached(&e).unwrap();
        } else {
            // DEL needs the plugin too; the entry stays for a retry.
            assert!(matches!(
                w.rt.del_cached(&e),
                Err(CniError::PluginNotFound { .. })
            ));
            assert!(w
                .rt
                .cache()
                .load("err2", &e.container_id, "eth0")
                .unwrap()
                .is_some());
            w.rt.cache()
                .remove("err2", &e.container_id, "eth0")
                .unwrap();
        }
    }
    assert!(w.rt.cache().list().unwrap().0.is_empty());
}

#[test]
fn requested_ip_and_published_ports_reach_a_server() {
    let w = World::new("port");
    create_network(&w.rt, &w.spec("port", "192.168.127.0/24")).unwrap();
    let list = w.rt.load_network("port").unwrap();
    let ns = vm_netns(&w, "a");

    // A second "machine" on a link to the host, to prove other hosts reach the port.
    let client = netns::create(&format!("fbt-{}-client", w.tag)).unwrap();
    let host_name = w
        .host_path
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let client_name = client.file_name().unwrap().to_str().unwrap().to_string();
    run_in(
        &w.host_path,
        &[
            "ip",
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "cl0",
            "netns",
            &client_name,
        ],
    )
    .unwrap();
    run_in(
        &w.host_path,
        &["ip", "addr", "add", "192.168.126.1/24", "dev", "up0"],
    )
    .unwrap();
    run_in(&w.host_path, &["ip", "link", "set", "up0", "up"]).unwrap();
    run_in(
        &client,
        &["ip", "addr", "add", "192.168.126.2/24", "dev", "cl0"],
    )
    .unwrap();
    run_in(&client, &["ip", "link", "set", "cl0", "up"]).unwrap();
    run_in(&client, &["ip", "link", "set", "lo", "up"]).unwrap();
    let _ = host_name;

    let ports = parse_port_specs(&["8080:80", "192.168.126.1:9090:80/tcp", "up0:7070:80"]).unwrap();
    let mut rt = rt_conf(&w, "a", &ns);
    rt.args = vec![("IP".into(), "192.168.127.50".into())];
    let mut caps = Map::new();
    caps.insert(
        "portMappings".into(),
        firebuild_cni::ports::port_mappings_arg(&ports, Some(&w.host_path)).unwrap(),
    );
    rt.capability_args = caps;
    let result = w.rt.add(&list, &rt).unwrap();
    assert_eq!(
        result.address_for("eth0").unwrap().address.to_string(),
        "192.168.127.50/24"
    );

    run_in(&ns, &["ip", "link", "set", "lo", "up"]).unwrap();
    let _server = httpd(
        &ns,
        &w.dir.path().join("www"),
        80,
        "hello from the VM namespace",
    );
    let body = retry(25, || http_get(&w.host_path, "192.168.127.50:80")).unwrap();
    assert_eq!(body, "hello from the VM namespace");
    // Published port, from the host itself and from another machine.
    assert_eq!(
        retry(10, || http_get(&w.host_path, "192.168.127.1:8080")).unwrap(),
        body
    );
    assert_eq!(
        retry(10, || http_get(&client, "192.168.126.1:8080")).unwrap(),
        body
    );
    assert_eq!(
        retry(10, || http_get(&client, "192.168.126.1:9090")).unwrap(),
        body
    );
    assert_eq!(
        retry(10, || http_get(&client, "192.168.126.1:7070")).unwrap(),
        body
    );
    // A port not published does not answer.
    assert!(http_get(&client, "192.168.126.1:8081").is_err());

    w.rt.del(&list, &rt).unwrap();
    assert!(
        http_get(&client, "192.168.126.1:8080").is_err(),
        "published port survived DEL"
    );
    let rules = String::from_utf8_lossy(&w.host(&["iptables-save"]).unwrap().stdout).into_owned();
    assert!(
        !rules.contains("192.168.127.50:80"),
        "rules left after DEL:\n{rules}"
    );
    assert!(!rules.contains("8080"), "rules left after DEL:\n{rules}");
}

#[test]
fn spec_040_chain_and_versions_without_check() {
    let w = World::new("v040");
    create_network(&w.rt, &w.spec("v040", "192.168.127.0/24")).unwrap();
    // The same chain declared as spec 0.4.0: results carry `version` fields.
    let path = w.rt.paths().conf_dir.join("v040.conflist");
    let mut conf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    conf["cniVersion"] = "0.4.0".into();
    std::fs::write(&path, serde_json::to_vec(&conf).unwrap()).unwrap();
    let list = w.rt.load_network("v040").unwrap();
    let ns = vm_netns(&w, "a");
    let rt = rt_conf(&w, "a", &ns);
    let result = w.rt.add(&list, &rt).unwrap();
    assert_eq!(result.cni_version, "0.4.0");
    assert_eq!(result.raw["ips"][0]["version"], "4");
    assert!(result.address_for("eth0").is_some());
    w.rt.check(&list, &rt).unwrap();
    w.rt.del(&list, &rt).unwrap();
    assert!(common::leases(&w.ipam_dir().join("v040")).is_empty());

    // 0.3.1 has no CHECK: refused before any plugin runs.
    conf["cniVersion"] = "0.3.1".into();
    let old = NetworkConfigList::from_bytes(&serde_json::to_vec(&conf).unwrap(), None).unwrap();
    let err = w.rt.check(&old, &rt).unwrap_err();
    assert!(matches!(err, CniError::CheckUnsupported { .. }), "{err}");
}
