//! Sequencing, error surfacing and timeouts, against the API stand-in
//! (Firecracker itself cannot run here; see `firebuild_firecracker::standin`).

mod common;

use std::time::Duration;

use common::{full_spec, raw_put, sock, tempdir};
use firebuild_firecracker::models::*;
use firebuild_firecracker::standin::{read_request_log, Options, StandIn};
use firebuild_firecracker::{BlockingClient, Client, Error, VmSpec};

fn client(standin: &StandIn) -> BlockingClient {
    BlockingClient::for_socket(&standin.socket).unwrap()
}

fn minimal_spec(dir: &std::path::Path) -> VmSpec {
    VmSpec::new("vm-min", dir.join("vmlinux"), dir.join("rootfs"))
}

fn api_fault(err: &Error) -> (&str, &str, u16, &str) {
    match err {
        Error::Api {
            method,
            path,
            status,
            fault_message,
            ..
        } => (method, path, *status, fault_message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[test]
fn boot_sequence_is_in_firecracker_order_and_ends_running() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let c = client(&standin);
    assert_eq!(c.instance_info().unwrap().state, InstanceState::NotStarted);
    c.configure_and_start(&full_spec(dir.path())).unwrap();
    assert_eq!(
        standin.requests()[1..],
        [
            "PUT /logger",
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/scratch",
            "PUT /drives/data",
            "PUT /network-interfaces/eth0",
            "PUT /mmds/config",
            "PUT /mmds",
            "PUT /vsock",
            "PUT /serial",
            "PUT /actions",
        ]
    );
    let info = c.instance_info().unwrap();
    assert_eq!(info.state, InstanceState::Running);
    assert_eq!(info.id, "standin");
    c.pause().unwrap();
    assert_eq!(c.instance_info().unwrap().state, InstanceState::Paused);
    c.resume().unwrap();
    assert_eq!(c.instance_info().unwrap().state, InstanceState::Running);
    let cfg = c.vm_config().unwrap();
    assert_eq!(cfg.machine_config.unwrap().vcpu_count, 2);
    assert_eq!(cfg.network_interfaces[0].host_dev_name, "fbtap0");
    // Root drive first, the others in spec order, with their access.
    let drives: Vec<_> = cfg
        .drives
        .iter()
        .map(|d| {
            (
                d["drive_id"].clone(),
                d["is_root_device"].clone(),
                d["is_read_only"].clone(),
            )
        })
        .collect();
    assert_eq!(
        drives,
        [
            ("rootfs".into(), true.into(), false.into()),
            ("scratch".into(), false.into(), false.into()),
            ("data".into(), false.into(), true.into()),
        ]
    );
    assert_eq!(cfg.mmds_config.unwrap().version, Some(MmdsVersion::V2));
    c.send_ctrl_alt_del().unwrap();
    assert!(standin.vm(|vm| vm.ctrl_alt_del));
}

#[test]
fn minimal_spec_sends_only_what_is_needed() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    client(&standin)
        .configure_and_start(&minimal_spec(dir.path()))
        .unwrap();
    assert_eq!(
        standin.requests(),
        [
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /actions"
        ]
    );
}

#[test]
fn pre_boot_only_requests_are_refused_after_start_with_the_request_named() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let c = client(&standin);
    c.configure_and_start(&minimal_spec(dir.path())).unwrap();
    let err = c
        .put_machine_config(&MachineConfiguration {
            vcpu_count: 2,
            mem_size_mib: 256,
            smt: false,
            track_dirty_pages: false,
            huge_pages: None,
        })
        .unwrap_err();
    let (method, path, status, fault) = api_fault(&err);
    assert_eq!((method, path, status), ("PUT", "/machine-config", 400));
    assert!(fault.contains("after starting"), "{fault}");
    let msg = err.to_string();
    assert!(
        msg.contains("PUT /machine-config") && msg.contains(r#""vcpu_count":2"#),
        "{msg}"
    );

    let err = c.start().unwrap_err();
    assert!(api_fault(&err).3.contains("after starting"));
    // MMDS content may change after boot.
    c.put_mmds(&serde_json::json!({"k": "v"})).unwrap();
    assert_eq!(
        standin.vm(|vm| vm.mmds.clone()),
        Some(serde_json::json!({"k": "v"}))
    );
}

#[test]
fn post_boot_only_requests_are_refused_before_start() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let c = client(&standin);
    for (err, path) in [
        (c.pause().unwrap_err(), "/vm"),
        (c.resume().unwrap_err(), "/vm"),
        (c.send_ctrl_alt_del().unwrap_err(), "/actions"),
    ] {
        let (_, p, status, fault) = api_fault(&err);
        assert_eq!((p, status), (path, 400));
        assert!(fault.contains("before starting"), "{fault}");
    }
}

#[test]
fn instance_start_needs_a_kernel_and_a_root_drive() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let c = client(&standin);
    assert!(api_fault(&c.start().unwrap_err())
        .3
        .contains("kernel configuration"));
    c.put_boot_source(&BootSource {
        kernel_image_path: "/k".into(),
        boot_args: None,
        initrd_path: None,
    })
    .unwrap();
    assert!(api_fault(&c.start().unwrap_err())
        .3
        .contains("root block device"));
    c.put_drive(&Drive {
        drive_id: "rootfs".into(),
        path_on_host: "/r".into(),
        is_root_device: true,
        is_read_only: false,
        partuuid: None,
        cache_type: None,
        io_engine: None,
    })
    .unwrap();
    c.start().unwrap();
}

fn drive(id: &str, is_root_device: bool) -> Drive {
    Drive {
        drive_id: id.into(),
        path_on_host: format!("/{id}.img").into(),
        is_root_device,
        is_read_only: false,
        partuuid: None,
        cache_type: None,
        io_engine: None,
    }
}

fn drive_order(standin: &StandIn) -> Vec<String> {
    standin.vm(|vm| {
        vm.drives
            .iter()
            .map(|d| d["drive_id"].as_str().unwrap().to_string())
            .collect()
    })
}

#[test]
fn the_root_drive_is_unique_and_first_the_others_keep_their_order() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let c = client(&standin);
    c.put_drive(&drive("scratch", false)).unwrap();
    c.put_drive(&drive("rootfs", true)).unwrap();
    c.put_drive(&drive("vol1", false)).unwrap();
    assert_eq!(drive_order(&standin), ["rootfs", "scratch", "vol1"]);

    let err = c.put_drive(&drive("other_root", true)).unwrap_err();
    assert_eq!(
        api_fault(&err),
        (
            "PUT",
            "/drives/other_root",
            400,
            "Drive config error: A root block device already exists!"
        )
    );
    // Putting a known id again replaces that drive where it is.
    c.put_drive(&Drive {
        is_read_only: true,
        ..drive("scratch", false)
    })
    .unwrap();
    c.put_drive(&drive("rootfs", true)).unwrap();
    assert_eq!(drive_order(&standin), ["rootfs", "scratch", "vol1"]);
    assert!(standin.vm(|vm| vm.drives[1]["is_read_only"] == true));
    c.put_boot_source(&BootSource {
        kernel_image_path: "/k".into(),
        boot_args: None,
        initrd_path: None,
    })
    .unwrap();
    c.start().unwrap();
}

#[test]
fn a_drive_is_a_virtio_block_file_or_a_vhost_user_socket() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let invalid = (
        400,
        r#"{"fault_message":"Drive config error: Unable to create the block device: Invalid block config."}"#.to_string(),
    );
    for body in [
        // virtio-block: the spec requires path_on_host and is_read_only.
        r#"{"drive_id":"d","is_root_device":false,"is_read_only":false}"#,
        r#"{"drive_id":"d","is_root_device":false,"path_on_host":"/d"}"#,
        // Not both kinds at once.
        r#"{"drive_id":"d","is_root_device":false,"path_on_host":"/d","is_read_only":false,"socket":"/s"}"#,
        r#"{"drive_id":"d","is_root_device":false,"socket":"/s","is_read_only":true}"#,
    ] {
        assert_eq!(
            raw_put(&standin.socket, "/drives/d", body),
            invalid,
            "{body}"
        );
    }
    assert!(standin.vm(|vm| vm.drives.is_empty()));
    for body in [
        r#"{"drive_id":"d","is_root_device":false,"path_on_host":"/d","is_read_only":true}"#,
        r#"{"drive_id":"d","is_root_device":false,"socket":"/s"}"#,
    ] {
        assert_eq!(
            raw_put(&standin.socket, "/drives/d", body),
            (204, String::new()),
            "{body}"
        );
    }
}

#[test]
fn the_standin_refuses_ids_firecracker_refuses() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let (status, answer) = raw_put(
        &standin.socket,
        "/drives/my-vol",
        r#"{"drive_id":"my-vol","is_root_device":false,"path_on_host":"/d","is_read_only":false}"#,
    );
    assert_eq!(status, 400);
    assert!(
        answer.contains("alphanumeric characters and underscores"),
        "{answer}"
    );
    // So the client refuses them before sending.
    let err = client(&standin)
        .put_drive(&drive("my-vol", false))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { .. }), "{err}");
    assert_eq!(standin.requests(), ["PUT /drives/my-vol"]);
}

#[test]
fn mmds_config_must_name_an_existing_interface() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let c = client(&standin);
    let cfg = MmdsConfig {
        version: Some(MmdsVersion::V2),
        network_interfaces: vec!["eth0".into()],
        ipv4_address: None,
        imds_compat: None,
    };
    let err = c.put_mmds_config(&cfg).unwrap_err();
    assert_eq!(api_fault(&err).1, "/mmds/config");
    c.put_network_interface(&NetworkInterface {
        iface_id: "eth0".into(),
        host_dev_name: "tap0".into(),
        guest_mac: None,
        mtu: None,
    })
    .unwrap();
    c.put_mmds_config(&cfg).unwrap();
}

#[test]
fn a_refusal_stops_the_sequence_before_instance_start() {
    let dir = tempdir();
    let standin = StandIn::start_with(
        &sock(&dir),
        Options {
            inject: Some((
                "/boot-source".into(),
                400,
                r#"{"fault_message":"The kernel file cannot be opened"}"#.into(),
            )),
            ..Options::default()
        },
    )
    .unwrap();
    let err = client(&standin)
        .configure_and_start(&minimal_spec(dir.path()))
        .unwrap_err();
    let (method, path, status, fault) = api_fault(&err);
    assert_eq!(
        (method, path, status, fault),
        (
            "PUT",
            "/boot-source",
            400,
            "The kernel file cannot be opened"
        )
    );
    assert!(err.to_string().contains("kernel_image_path"), "{err}");
    assert_eq!(
        standin.requests(),
        ["PUT /machine-config", "PUT /boot-source"]
    );
}

#[test]
fn odd_error_answers_still_surface() {
    let dir = tempdir();
    let standin = StandIn::start_with(
        &sock(&dir),
        Options {
            inject: Some(("/actions".into(), 500, "internal trouble".into())),
            ..Options::default()
        },
    )
    .unwrap();
    let err = client(&standin).start().unwrap_err();
    assert_eq!(
        api_fault(&err),
        ("PUT", "/actions", 500, "internal trouble")
    );

    let standin2 = StandIn::start_with(
        &dir.path().join("b.sock"),
        Options {
            inject: Some(("/".into(), 200, "not json".into())),
            ..Options::default()
        },
    )
    .unwrap();
    let err = client(&standin2).instance_info().unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedResponse { status: 200, .. }),
        "{err}"
    );
}

#[test]
fn the_mmds_document_is_never_echoed_in_errors() {
    let dir = tempdir();
    let standin = StandIn::start_with(
        &sock(&dir),
        Options {
            inject: Some(("/mmds".into(), 400, r#"{"fault_message":"too big"}"#.into())),
            ..Options::default()
        },
    )
    .unwrap();
    let err = client(&standin)
        .put_mmds(&serde_json::json!({"ssh-keys": "SECRET-KEY"}))
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("too big") && !msg.contains("SECRET-KEY"),
        "{msg}"
    );
}

#[test]
fn a_hung_vmm_times_out() {
    let dir = tempdir();
    let standin = StandIn::start_with(
        &sock(&dir),
        Options {
            hang: true,
            ..Options::default()
        },
    )
    .unwrap();
    let c =
        BlockingClient::new(Client::new(&standin.socket).with_timeout(Duration::from_millis(300)))
            .unwrap();
    let err = c.instance_info().unwrap_err();
    assert!(
        matches!(&err, Error::RequestTimeout { path, .. } if path == "/"),
        "{err}"
    );
}

#[test]
fn waiting_for_a_socket_that_never_comes_times_out() {
    let dir = tempdir();
    let c = BlockingClient::for_socket(sock(&dir)).unwrap();
    let err = c.wait_ready(Duration::from_millis(200)).unwrap_err();
    assert!(matches!(err, Error::SocketTimeout { .. }), "{err}");
    assert!(err.to_string().contains("No such file"), "{err}");

    // A socket file nobody listens on (a dead VMM's leftover).
    drop(std::os::unix::net::UnixListener::bind(sock(&dir)).unwrap());
    let err = c.wait_ready(Duration::from_millis(200)).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

#[test]
fn waiting_stops_early_when_the_process_died() {
    let dir = tempdir();
    let c = BlockingClient::for_socket(sock(&dir)).unwrap();
    let err = c
        .wait_ready_while(Duration::from_secs(30), || {
            Err(Error::ExitedEarly {
                pid: 1,
                socket: "/x".into(),
                hint: Some("it crashed".into()),
            })
        })
        .unwrap_err();
    assert!(err.to_string().contains("it crashed"), "{err}");
}

#[test]
fn waiting_succeeds_once_the_socket_appears() {
    let dir = tempdir();
    let path = sock(&dir);
    let late = {
        let path = path.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            StandIn::start(&path).unwrap()
        })
    };
    let c = BlockingClient::for_socket(&path).unwrap();
    c.wait_ready(Duration::from_secs(20)).unwrap();
    let standin = late.join().unwrap();
    assert_eq!(c.version().unwrap().firecracker_version, "1.16.1");
    drop(standin);
}

#[test]
fn a_dead_socket_is_a_connect_error() {
    let dir = tempdir();
    let c = BlockingClient::for_socket(sock(&dir)).unwrap();
    let err = c.instance_info().unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[test]
fn overlong_socket_paths_are_refused_clearly() {
    let dir = tempdir();
    let long = dir.path().join("d".repeat(120)).join("api.sock");
    let c = BlockingClient::for_socket(&long).unwrap();
    let err = c.wait_ready(Duration::from_millis(10)).unwrap_err();
    assert!(
        matches!(err, Error::SocketPathTooLong { max: 107, .. }),
        "{err}"
    );
}

#[test]
fn the_blocking_client_refuses_to_run_inside_a_runtime() {
    let c = BlockingClient::for_socket("/nonexistent.sock").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = rt.block_on(async { c.instance_info() }).unwrap_err();
    assert!(matches!(err, Error::InsideAsyncRuntime), "{err}");
}

#[test]
fn the_async_client_works_on_a_multi_call_runtime() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = Client::new(&standin.socket);
        c.wait_ready(Duration::from_secs(5)).await.unwrap();
        c.configure_and_start(&minimal_spec(dir.path()))
            .await
            .unwrap();
        assert_eq!(
            c.instance_info().await.unwrap().state,
            InstanceState::Running
        );
    });
}

#[test]
fn invalid_specs_send_nothing() {
    let dir = tempdir();
    let standin = StandIn::start(&sock(&dir)).unwrap();
    let spec = VmSpec {
        boot_args: "console=ttyS0 root=/dev/vda".into(),
        ..minimal_spec(dir.path())
    };
    let err = client(&standin).configure_and_start(&spec).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "boot_args",
                ..
            }
        ),
        "{err}"
    );
    // A second drive called like the root drive would replace it.
    let mut spec = full_spec(dir.path());
    spec.drives[1].drive_id = "rootfs".into();
    let err = client(&standin).configure_and_start(&spec).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidConfig {
                field: "drives.drive_id",
                ..
            }
        ),
        "{err}"
    );
    assert!(standin.log().is_empty());
}

/// The hooks other crates' tests use: what the guest writes to its serial
/// output on start and on Ctrl-Alt-Del, and the request log file.
#[test]
fn the_standin_writes_the_serial_output_and_request_log_on_request() {
    let dir = tempdir();
    let console = dir.path().join("console.log");
    std::fs::write(&console, "").unwrap();
    let log = dir.path().join("requests.json");
    let standin = StandIn::start_with(
        &sock(&dir),
        Options {
            serial_on_start: Some("guest up\n".into()),
            serial_on_ctrl_alt_del: Some("firebuild-exit-code=7\n".into()),
            request_log: Some(log.clone()),
            ..Options::default()
        },
    )
    .unwrap();
    let c = client(&standin);
    let spec = VmSpec {
        console_path: Some(console.clone()),
        ..minimal_spec(dir.path())
    };
    c.configure_and_start(&spec).unwrap();
    assert_eq!(std::fs::read_to_string(&console).unwrap(), "guest up\n");
    c.send_ctrl_alt_del().unwrap();
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "guest up\nfirebuild-exit-code=7\n"
    );
    let logged = read_request_log(&log).unwrap();
    let lines: Vec<String> = logged
        .iter()
        .map(|r| format!("{} {} {}", r["method"], r["path"], r["status"]))
        .collect();
    assert_eq!(
        lines,
        standin
            .log()
            .iter()
            .map(|r| format!("{:?} {:?} {}", r.method, r.path, r.status))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        logged.last().unwrap()["body"],
        serde_json::json!({"action_type": "SendCtrlAltDel"})
    );
    // Without the hooks nothing is written.
    let quiet = StandIn::start(&dir.path().join("quiet.sock")).unwrap();
    client(&quiet).configure_and_start(&spec).unwrap();
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        "guest up\nfirebuild-exit-code=7\n"
    );
}

#[test]
fn a_serial_output_the_guest_cannot_write_fails_the_start() {
    let dir = tempdir();
    let standin = StandIn::start_with(
        &sock(&dir),
        Options {
            serial_on_start: Some("guest up\n".into()),
            ..Options::default()
        },
    )
    .unwrap();
    let spec = VmSpec {
        console_path: Some(dir.path().join("missing/console.log")),
        ..minimal_spec(dir.path())
    };
    let err = client(&standin).configure_and_start(&spec).unwrap_err();
    let (_, path, status, fault) = api_fault(&err);
    assert_eq!((path, status), ("/actions", 400));
    assert!(fault.contains("missing/console.log"), "{fault}");
    assert!(!standin.vm(|vm| vm.started));
}
