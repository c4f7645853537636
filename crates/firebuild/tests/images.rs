//! `image pull`, `image import` and `image ls` against a real registry
//! (Debian's docker-registry, started on 127.0.0.1 by the test).

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

#[test]
fn pull_then_list_then_pull_again_offline() {
    let registry = TestRegistry::start().unwrap();
    let push_cache = tempfile::tempdir().unwrap();
    let reference = registry.reference("tools/busybox:1.36");
    let layer = busybox_rootfs_tar().unwrap();
    block_on(push_image(
        push_cache.path(),
        &RegistryConfig::default(),
        &reference,
        &[(layer, Compression::Gzip)],
        |cfg| cfg.cmd = Some(vec!["sh".into()]),
    ))
    .unwrap()
    .unwrap();

    let cache = tempfile::tempdir().unwrap();
    let store = tempfile::tempdir().unwrap();
    let flags = [
        format!("--cache-dir={}", cache.path().display()),
        format!(
            "--storage-provider-property-string=rootfs-storage-root={}",
            store.path().display()
        ),
        format!(
            "--profile-conf-dir={}",
            store.path().join(".profiles").display()
        ),
    ];
    let with = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(flags.iter().map(String::as_str));
        firebuild(&all)
    };
    let name = reference.to_string();
    let out = with(&["image", "pull", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");

    let out = with(&["image", "ls", "--json"]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("tools/busybox") && listed.contains("oci (pulled)"),
        "{listed}"
    );
    assert_eq!(listed.lines().count(), 1, "listed once: {listed}");

    // The blobs are cached: with the registry gone, pulling by digest works.
    let pinned = format!("{}/tools/busybox@{digest}", registry.host());
    drop(registry);
    let out = with(&["image", "pull", &pinned]);
    assert!(
        out.status.success(),
        "offline pull by digest: {}",
        stderr(&out)
    );

    // And a tag that was never pulled fails, naming the registry.
    let out = with(&["image", "pull", "127.0.0.1:1/nothing:here"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("127.0.0.1:1"), "{}", stderr(&out));

    // rm takes the image out of the list; prune then frees its blobs.
    let blobs = || {
        std::fs::read_dir(cache.path().join("blobs/sha256"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    assert!(blobs() >= 3, "manifest, config and layer are cached");
    let out = with(&["image", "rm", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = with(&["image", "ls", "--json"]);
    assert!(
        out.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = with(&["image", "rm", &name]);
    assert!(
        stderr(&out).contains("no stored image or pulled/imported OCI image is named"),
        "{}",
        stderr(&out)
    );
    let out = with(&["image", "prune"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("blobs=3"), "{}", stderr(&out));
    assert_eq!(blobs(), 0);
}

#[test]
fn import_a_rootfs_directory_and_refuse_a_missing_one() {
    let cache = tempfile::tempdir().unwrap();
    let cache_flag = format!("--cache-dir={}", cache.path().display());
    let store = tempfile::tempdir().unwrap();
    let store_flag = format!(
        "--storage-provider-property-string=rootfs-storage-root={}",
        store.path().display()
    );
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir(rootfs.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.path().join("bin/busybox")).unwrap();
    let out = firebuild(&[
        "image",
        "import",
        rootfs.path().to_str().unwrap(),
        "--tag",
        "local/busybox:1",
        &cache_flag,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = firebuild(&["image", "ls", &cache_flag, &store_flag]);
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listed.contains("local/busybox") && listed.contains("oci (imported)"),
        "{listed}"
    );
    // Past the profile's unpacked-size limit: refused, nothing stored.
    let out = firebuild(&[
        "image",
        "import",
        rootfs.path().to_str().unwrap(),
        "--tag",
        "local/too-big:1",
        "--unpacked-size-limit=64k",
        &cache_flag,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unpacked-size-limit"),
        "{}",
        stderr(&out)
    );
    let out = firebuild(&["image", "ls", &cache_flag, &store_flag]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("too-big"));

    let out = firebuild(&[
        "image",
        "import",
        "/nonexistent/rootfs",
        "--tag",
        "x/y:1",
        &cache_flag,
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/rootfs"),
        "{}",
        stderr(&out)
    );
}
