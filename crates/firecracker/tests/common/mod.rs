//! Shared test helpers (the API stand-in is `firebuild_firecracker::standin`).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use firebuild_firecracker::{DriveSpec, NetworkSpec, VmSpec, VsockSpec};

/// A spec using every device `configure_and_start` knows, with host files
/// created under `dir`.
pub fn full_spec(dir: &std::path::Path) -> VmSpec {
    let file = |name: &str| {
        let p = dir.join(name);
        std::fs::write(&p, name.as_bytes()).unwrap();
        p
    };
    VmSpec {
        initrd: Some(file("initrd")),
        vcpu_count: 2,
        mem_size_mib: 256,
        smt: true,
        drives: vec![
            DriveSpec {
                drive_id: "scratch".into(),
                path: file("scratch.ext4"),
                read_only: false,
                in_place: false,
            },
            DriveSpec {
                drive_id: "data".into(),
                path: file("data.ext4"),
                read_only: true,
                in_place: false,
            },
        ],
        network: Some(NetworkSpec {
            tap: "fbtap0".into(),
            guest_mac: Some("02:fc:00:00:00:05".into()),
            mtu: Some(1500),
        }),
        mmds: Some(serde_json::json!({
            "latest": { "meta-data": { "vmm-id": "vm-1", "users": { "root": { "ssh-keys": "ssh-ed25519 AAAA" } } } }
        })),
        log_path: Some(dir.join("firecracker.log")),
        metrics_path: Some(dir.join("firecracker.metrics")),
        console_path: Some(dir.join("console.log")),
        vsock: Some(VsockSpec {
            guest_cid: 3,
            uds_path: dir.join("v.sock"),
        }),
        ..VmSpec::new("vm-1", file("vmlinux"), file("rootfs.ext4"))
    }
}

/// A fresh temp dir (removed on drop).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("fbfc").tempdir().unwrap()
}

/// Socket path inside a temp dir.
pub fn sock(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("api.sock")
}

/// Sends `PUT path` with a JSON `body` as raw HTTP/1.1, for bodies the typed
/// client cannot produce; returns the status and the answer body.
pub fn raw_put(socket: &Path, path: &str, body: &str) -> (u16, String) {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    write!(
        stream,
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).unwrap().parse().unwrap();
    let body = answer.split_once("\r\n\r\n").unwrap().1.to_string();
    (status, body)
}
