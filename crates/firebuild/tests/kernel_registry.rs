//! `kernel push` / `kernel pull` through a real registry (Debian's
//! docker-registry on 127.0.0.1): one store pushes, a second (standing in
//! for another host) pulls, and the kernel arrives byte for byte.

use std::path::Path;
use std::process::{Command, Output};

use firebuild_oci::manifest::Compression;
use firebuild_oci::testing::{busybox_rootfs_tar, push_image, TestRegistry};
use firebuild_oci::{block_on, RegistryConfig};

fn firebuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firebuild"))
        .args(args)
        .output()
        .expect("run firebuild")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The flags of a store of its own under `dir`: kernels, cache, profiles.
fn host(dir: &Path) -> Vec<String> {
    vec![
        format!(
            "--storage-provider-property-string=kernel-storage-root={}",
            dir.join("vmlinux").display()
        ),
        format!("--cache-dir={}", dir.join("cache").display()),
        format!("--profile-conf-dir={}", dir.join("profiles").display()),
    ]
}

fn on(host: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(host.iter().map(String::as_str));
    firebuild(&all)
}

#[test]
fn a_kernel_pushed_from_one_store_is_pulled_into_another_unchanged() {
    let Some(vmlinux) = std::env::var_os("FIREBUILD_TEST_KERNEL").map(std::path::PathBuf::from)
    else {
        eprintln!("FIREBUILD_TEST_KERNEL unset: skipping the kernel registry round trip");
        return;
    };
    let registry = TestRegistry::start().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (first, second) = (host(a.path()), host(b.path()));
    let vmlinux = vmlinux.to_str().unwrap();
    let out = on(&first, &["kernel", "add", "--file", vmlinux, "--id", "k1"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let reference = registry.reference("kernels/vmlinux:6.1").to_string();
    let out = on(&first, &["kernel", "push", "k1", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");
    // Pushed again: the registry has every blob, only the manifest is put.
    let out = on(&first, &["kernel", "push", "k1", &reference]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), digest);

    let out = on(&second, &["kernel", "pull", &reference, "--id", "pulled"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stored = b.path().join("vmlinux/pulled");
    assert_eq!(
        std::fs::read(&stored).unwrap(),
        std::fs::read(vmlinux).unwrap()
    );
    let out = on(&second, &["kernel", "inspect", "pulled"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["intact"], true, "{info}");
    // Its metadata says where it came from: the reference and manifest digest.
    assert_eq!(
        info["metadata"]["source"],
        format!("{reference}@{digest}"),
        "{info}"
    );
    // By digest, too.
    let by_digest = registry
        .reference("kernels/vmlinux:6.1")
        .with_digest(digest.parse().unwrap())
        .to_string();
    let out = on(
        &second,
        &["kernel", "pull", &by_digest, "--id", "by-digest"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // An id in use is refused before anything is downloaded.
    let out = on(&second, &["kernel", "pull", &reference, "--id", "pulled"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"pulled\" exists"),
        "{}",
        stderr(&out)
    );

    // An image is not a kernel: refused, nothing stored.
    let image = registry.reference("tools/busybox:1");
    block_on(push_image(
        &a.path().join("push-cache"),
        &RegistryConfig::default(),
        &image,
        &[(busybox_rootfs_tar().unwrap(), Compression::Gzip)],
        |_| {},
    ))
    .unwrap()
    .unwrap();
    let out = on(
        &second,
        &["kernel", "pull", &image.to_string(), "--id", "img"],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("not \"application/vnd.firebuild.kernel.v1\""),
        "{err}"
    );
    assert!(!b.path().join("vmlinux/img").exists());

    // A reference the registry does not have names itself.
    let missing = registry.reference("kernels/none:1").to_string();
    let out = on(&second, &["kernel", "pull", &missing, "--id", "none"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("kernels/none"), "{}", stderr(&out));
    assert!(!b.path().join("vmlinux/none").exists());
}
