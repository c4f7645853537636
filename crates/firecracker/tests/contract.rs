//! Contract tests: every request the client can send, as captured on the
//! socket, must be an operation of the Firecracker v1.16.1 spec with a body
//! its schema accepts (no unknown or missing fields, right types and enums).

mod common;

use std::collections::BTreeSet;

use common::{full_spec, sock, tempdir};
use firebuild_firecracker::models::*;
use firebuild_firecracker::standin::{ApiSpec, Recorded, StandIn};
use firebuild_firecracker::{BlockingClient, Error};

/// Every operation the client offers; the test fails if one is not exercised.
const CLIENT_OPERATIONS: &[&str] = &[
    "GET /",
    "GET /version",
    "GET /vm/config",
    "PATCH /vm",
    "PUT /actions",
    "PUT /boot-source",
    "PUT /drives/{drive_id}",
    "PUT /logger",
    "PUT /machine-config",
    "PUT /metrics",
    "PUT /mmds",
    "PUT /mmds/config",
    "PUT /network-interfaces/{iface_id}",
    "PUT /serial",
    "PUT /vsock",
];

/// Drives every client method (through `configure_and_start` and directly,
/// with every optional field set) and returns what crossed the socket.
fn capture_everything() -> Vec<Recorded> {
    let dir = tempdir();
    let mut log = Vec::new();

    // 1. The whole boot sequence with every device, then the post-boot calls.
    {
        let standin = StandIn::start(&sock(&dir)).unwrap();
        let client = BlockingClient::for_socket(&standin.socket).unwrap();
        client.configure_and_start(&full_spec(dir.path())).unwrap();
        client.pause().unwrap();
        client.resume().unwrap();
        client.instance_info().unwrap();
        client.version().unwrap();
        client.vm_config().unwrap();
        client.action(ActionType::FlushMetrics).unwrap();
        client
            .put_mmds(&serde_json::json!({"latest": {"meta-data": {}}}))
            .unwrap();
        client.send_ctrl_alt_del().unwrap();
        log.extend(standin.log());
    }

    // 2. Each typed request with all its optional fields.
    {
        let standin = StandIn::start(&dir.path().join("api2.sock")).unwrap();
        let client = BlockingClient::for_socket(&standin.socket).unwrap();
        client
            .put_machine_config(&MachineConfiguration {
                vcpu_count: 32,
                mem_size_mib: 1024,
                smt: false,
                track_dirty_pages: true,
                huge_pages: Some(HugePages::TwoMiB),
            })
            .unwrap();
        client
            .put_machine_config(&MachineConfiguration {
                vcpu_count: 1,
                mem_size_mib: 128,
                smt: false,
                track_dirty_pages: false,
                huge_pages: Some(HugePages::None),
            })
            .unwrap();
        client
            .put_drive(&Drive {
                drive_id: "data_1".into(),
                path_on_host: "/d.img".into(),
                is_root_device: false,
                is_read_only: true,
                partuuid: Some("0eaa91a0-01".into()),
                cache_type: Some(CacheType::Writeback),
                io_engine: Some(IoEngine::Async),
            })
            .unwrap();
        client
            .put_network_interface(&NetworkInterface {
                iface_id: "eth1".into(),
                host_dev_name: "tap9".into(),
                guest_mac: None,
                mtu: None,
            })
            .unwrap();
        client
            .put_mmds_config(&MmdsConfig {
                version: Some(MmdsVersion::V1),
                network_interfaces: vec!["eth1".into()],
                ipv4_address: Some("169.254.1.0".parse().unwrap()),
                imds_compat: Some(true),
            })
            .unwrap();
        client
            .put_logger(&Logger {
                log_path: Some("/l".into()),
                level: Some(LogLevel::Trace),
                show_level: Some(false),
                show_log_origin: Some(true),
                module: Some("api_server::request".into()),
            })
            .unwrap();
        client
            .put_logger(&Logger {
                log_path: None,
                level: Some(LogLevel::Off),
                show_level: None,
                show_log_origin: None,
                module: None,
            })
            .unwrap();
        client
            .put_serial(&SerialDevice {
                serial_out_path: None,
            })
            .unwrap();
        client
            .put_boot_source(&BootSource {
                kernel_image_path: "/k".into(),
                boot_args: None,
                initrd_path: None,
            })
            .unwrap();
        log.extend(standin.log());
    }
    log
}

#[test]
fn every_request_the_client_sends_matches_the_spec() {
    let spec = ApiSpec::load().unwrap();
    let log = capture_everything();
    let mut seen = BTreeSet::new();
    let mut failures = Vec::new();
    for r in &log {
        match spec.validate_request(&r.method, &r.path, r.content_type.as_deref(), &r.body) {
            Ok(template) => {
                seen.insert(format!("{} {template}", r.method));
            }
            Err(errors) => failures.push(format!(
                "{} {} {}: {}",
                r.method,
                r.path,
                String::from_utf8_lossy(&r.body),
                errors.join("; ")
            )),
        }
        // The stand-in accepted it too (it validates bodies the same way).
        assert!(
            r.status < 300,
            "{} {} was refused: {}",
            r.method,
            r.path,
            String::from_utf8_lossy(&r.answer)
        );
        assert_eq!(
            r.host.as_deref(),
            Some("localhost"),
            "{} {} Host header",
            r.method,
            r.path
        );
    }
    assert!(
        failures.is_empty(),
        "requests violating the spec:\n{}",
        failures.join("\n")
    );
    let missing: Vec<_> = CLIENT_OPERATIONS
        .iter()
        .filter(|op| !seen.contains(**op))
        .collect();
    assert!(
        missing.is_empty(),
        "client operations not exercised: {missing:?}"
    );
    for op in &seen {
        assert!(
            CLIENT_OPERATIONS.contains(&op.as_str()),
            "{op} sent but not listed in CLIENT_OPERATIONS"
        );
    }
    // Both MMDS payloads and all three action types crossed the socket.
    let actions: BTreeSet<String> = log
        .iter()
        .filter(|r| r.path == "/actions")
        .map(|r| {
            serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["action_type"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        actions,
        ["FlushMetrics", "InstanceStart", "SendCtrlAltDel"]
            .map(String::from)
            .into()
    );
}

#[test]
fn configure_and_start_sends_drives_mmds_v2_on_the_interface_and_the_document_verbatim() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let client = BlockingClient::for_socket(&standin.socket).unwrap();
    let spec = full_spec(dir.path());
    client.configure_and_start(&spec).unwrap();
    let log = standin.log();
    let body = |path: &str| -> serde_json::Value {
        let r = log
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no {path}"));
        serde_json::from_slice(&r.body).unwrap()
    };
    assert_eq!(
        body("/mmds/config"),
        serde_json::json!({"version": "V2", "network_interfaces": ["eth0"], "ipv4_address": "169.254.169.254"})
    );
    assert_eq!(body("/mmds"), spec.mmds.clone().unwrap());
    assert_eq!(
        body("/drives/rootfs"),
        serde_json::json!({"drive_id": "rootfs", "path_on_host": spec.root_drive, "is_root_device": true, "is_read_only": false})
    );
    // The other drives: never root, each with its own access.
    assert_eq!(
        body("/drives/scratch"),
        serde_json::json!({"drive_id": "scratch", "path_on_host": spec.drives[0].path, "is_root_device": false, "is_read_only": false})
    );
    assert_eq!(
        body("/drives/data"),
        serde_json::json!({"drive_id": "data", "path_on_host": spec.drives[1].path, "is_root_device": false, "is_read_only": true})
    );
    assert_eq!(
        body("/network-interfaces/eth0"),
        serde_json::json!({"iface_id": "eth0", "host_dev_name": "fbtap0", "guest_mac": "02:fc:00:00:00:05", "mtu": 1500})
    );
    assert_eq!(body("/boot-source")["boot_args"], spec.boot_args);
    // GETs carry no body; bodies are declared as JSON.
    for r in &log {
        if r.method == "GET" {
            assert!(r.body.is_empty());
        } else {
            assert_eq!(r.content_type.as_deref(), Some("application/json"));
        }
    }
}

#[test]
fn the_standin_answers_as_the_spec_says() {
    let spec = ApiSpec::load().unwrap();
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let client = BlockingClient::for_socket(&standin.socket).unwrap();
    // Some refusals, then a full boot, so both answer kinds are covered.
    assert!(client.pause().is_err());
    assert!(client.start().is_err());
    client.configure_and_start(&full_spec(dir.path())).unwrap();
    assert!(client.start().is_err());
    client.instance_info().unwrap();
    client.vm_config().unwrap();
    client.version().unwrap();
    for r in standin.log() {
        if let Err(errors) = spec.validate_response(&r.method, &r.path, r.status, &r.answer) {
            panic!(
                "{} {} answered {} {}: {}",
                r.method,
                r.path,
                r.status,
                String::from_utf8_lossy(&r.answer),
                errors.join("; ")
            );
        }
    }
}

/// The validator must be able to fail: each broken request is refused for
/// the stated reason.
#[test]
fn the_validator_refuses_broken_requests() {
    let spec = ApiSpec::load().unwrap();
    let json = Some("application/json");
    let cases: &[(&str, &str, Option<&str>, &str, &str)] = &[
        (
            "PUT",
            "/machine-config",
            json,
            r#"{"vcpu_count":1,"mem_size_mib":128,"hyperthreading":true}"#,
            "unknown field hyperthreading",
        ),
        (
            "PUT",
            "/machine-config",
            json,
            r#"{"vcpu_count":1}"#,
            "required field mem_size_mib",
        ),
        (
            "PUT",
            "/machine-config",
            json,
            r#"{"vcpu_count":"1","mem_size_mib":128}"#,
            "expected an integer",
        ),
        (
            "PUT",
            "/machine-config",
            json,
            r#"{"vcpu_count":33,"mem_size_mib":128}"#,
            "above the maximum",
        ),
        (
            "PUT",
            "/machine-config",
            json,
            r#"{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"1G"}"#,
            "is not one of",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json,
            r#"{"drive_id":"other","path_on_host":"/r","is_root_device":true,"is_read_only":false}"#,
            "differs from the path",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json,
            r#"{"drive_id":"rootfs","path_on_host":"/r","is_read_only":false}"#,
            "required field is_root_device",
        ),
        (
            "PUT",
            "/drives/rootfs",
            json,
            r#"{"drive_id":"rootfs","path_on_host":"/r","is_root_device":"yes","is_read_only":false}"#,
            "expected a boolean",
        ),
        (
            "PUT",
            "/actions",
            json,
            r#"{"action_type":"Reboot"}"#,
            "is not one of",
        ),
        ("PUT", "/actions", json, "", "requires a body"),
        (
            "PUT",
            "/actions",
            Some("text/plain"),
            r#"{"action_type":"InstanceStart"}"#,
            "not application/json",
        ),
        ("PUT", "/actions", json, "{not json", "not JSON"),
        (
            "PATCH",
            "/vm",
            json,
            r#"{"state":"Stopped"}"#,
            "is not one of",
        ),
        (
            "PUT",
            "/vm",
            json,
            r#"{"state":"Paused"}"#,
            "PUT is not an operation",
        ),
        ("PUT", "/machine", json, "{}", "not a path of the spec"),
        ("GET", "/", json, "{}", "takes no body"),
        (
            "PUT",
            "/mmds/config",
            json,
            r#"{"network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}"#,
            "does not match the format",
        ),
        (
            "PUT",
            "/mmds/config",
            json,
            r#"{"version":"V3","network_interfaces":["eth0"]}"#,
            "is not one of",
        ),
        (
            "PUT",
            "/mmds/config",
            json,
            r#"{"network_interfaces":"eth0"}"#,
            "expected an array",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            json,
            r#"{"iface_id":"eth0","host_dev_name":"tap0","mtu":9}"#,
            "below the minimum",
        ),
        (
            "PUT",
            "/vsock",
            json,
            r#"{"guest_cid":2,"uds_path":"/v"}"#,
            "below the minimum",
        ),
        ("PUT", "/mmds", json, "[1,2]", "expected an object"),
        (
            "PUT",
            "/logger",
            json,
            r#"{"level":"Verbose"}"#,
            "is not one of",
        ),
    ];
    for (method, path, ct, body, expect) in cases {
        match spec.validate_request(method, path, *ct, body.as_bytes()) {
            Ok(_) => panic!("{method} {path} {body} was accepted"),
            Err(errors) => assert!(
                errors.iter().any(|e| e.contains(expect)),
                "{method} {path} {body}: expected {expect:?} in {errors:?}"
            ),
        }
    }
    // And the same shapes, fixed, pass.
    spec.validate_request("PUT", "/mmds", json, br#"{"any":{"thing":[1]}}"#)
        .unwrap();
    spec.validate_request(
        "PUT",
        "/mmds/config",
        json,
        br#"{"network_interfaces":["eth0"],"ipv4_address":"169.254.169.254"}"#,
    )
    .unwrap();
}

/// The client's refusals of bad ids happen before anything is sent.
#[test]
fn ids_that_would_change_the_url_are_refused_locally() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let client = BlockingClient::for_socket(&standin.socket).unwrap();
    let err = client
        .put_drive(&Drive {
            drive_id: "../vm".into(),
            path_on_host: "/r".into(),
            is_root_device: true,
            is_read_only: false,
            partuuid: None,
            cache_type: None,
            io_engine: None,
        })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    assert!(standin.log().is_empty());
}
