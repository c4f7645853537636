//! Shared test helpers (the API stand-in is `firebuild_firecracker::standin`).
#![allow(dead_code)]

use std::path::PathBuf;

use firebuild_firecracker::{NetworkSpec, VmSpec, VsockSpec};

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
