//! FROM a real local registry (Debian's docker-registry, via firebuild-oci's
//! test harness) and `rootfs --docker-image`. Run as root.

mod common;

use common::*;
use firebuild_builder::{build, build_from_image, ImageOptions, RegistryConfig};
use firebuild_oci::manifest::Compression;
use firebuild_oci::testing::{busybox_rootfs_tar, push_image, TestRegistry};

#[test]
fn builds_from_a_registry_image_and_turns_an_image_into_a_rootfs() {
    let reg =
        TestRegistry::start().expect("starting docker-registry (apt-get install docker-registry)");
    let f = Fixture::new();
    let image = reg.reference("library/busybox:1.0");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pushed = rt
        .block_on(push_image(
            &f.dir.path().join("push-cache"),
            &RegistryConfig::default(),
            &image,
            &[(busybox_rootfs_tar().unwrap(), Compression::Gzip)],
            |c| {
                c.cmd = Some(vec!["/bin/sh".into()]);
                c.env = vec![
                    "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
                    "FROM_IMAGE=yes".into(),
                ];
                c.working_dir = "/root".into();
                c.stop_signal = Some("SIGUSR1".into());
            },
        ))
        .expect("pushing the test image");
    let reference = format!("{}/library/busybox:1.0", reg.host());

    let df = format!(
        "FROM {reference}\nRUN echo \"$FROM_IMAGE $(pwd)\" > /seen\nCOPY --from={reference} /etc/passwd /copied-passwd\n"
    );
    let out = f
        .build(&df, "tests/reg:1")
        .expect("build FROM the registry image");
    let img = out.dir.join("rootfs");
    assert_eq!(cat(&img, "/seen"), "yes /root\n");
    assert!(cat(&img, "/copied-passwd").starts_with("root:x:0:0"));
    let md = &out.metadata;
    assert_eq!(
        md.base_image_digest.as_deref(),
        Some(pushed.digest.to_string().as_str())
    );
    assert_eq!(md.parent.as_deref(), Some(reference.as_str()));
    assert_eq!(md.entrypoint_info.cmd, vec!["/bin/sh"]);
    assert_eq!(md.stop_signal.as_deref(), Some("SIGUSR1"));

    // An unchanged rebuild needs no registry: stop it and build again.
    let mut reg = reg;
    reg.stop();
    let again = f
        .build(&df, "tests/reg:1")
        .expect("rebuild without the registry");
    assert_eq!(again.cached_steps, again.steps);

    // An image nobody has: the error names it.
    let err = f
        .build("FROM 127.0.0.1:9/nothing/here:1\n", "tests/reg:2")
        .unwrap_err()
        .to_string();
    assert!(err.contains("127.0.0.1:9/nothing/here:1"), "{err}");

    // rootfs --docker-image: the image as pulled above (now cached locally).
    let out = build_from_image(
        &f.store,
        &ImageOptions {
            reference: reference.clone(),
            tag: "tests/direct:1".into(),
            platform: None,
            filesystem_size_mib: Some(96),
            cache_dir: f.cache(),
            registry: RegistryConfig::default(),
            vminit: f.dir.path().join("vminit"),
            cancel: Default::default(),
            unpacked_limit: firebuild_oci::DEFAULT_UNPACKED_LIMIT,
            pushed: None,
            pulled: None,
            source_date_epoch: None,
        },
    )
    .expect("rootfs from an image");
    let img = out.dir.join("rootfs");
    fsck_clean(&img);
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 96 << 20);
    assert_eq!(stat(&img, "/bin/busybox").unwrap().0, 0o755);
    assert_eq!(stat(&img, "/.firebuild/init").unwrap().0, 0o755);
    assert_eq!(stat(&img, "/tmp").unwrap().0, 0o1777);
    assert_eq!(out.metadata.entrypoint_info.workdir, "/root");
    assert_eq!(
        out.metadata
            .entrypoint_info
            .env
            .get("FROM_IMAGE")
            .map(String::as_str),
        Some("yes")
    );
    let _ = build; // the Dockerfile entry point is covered above
}

#[test]
fn an_imported_image_is_a_base_for_from_within_its_unpacked_size_limit() {
    let f = Fixture::new();
    let tree = f.dir.path().join("import-me");
    busybox_tree(&tree);
    std::fs::write(tree.join("etc-marker"), "imported\n").unwrap();
    firebuild_oci::import(
        &f.cache(),
        &tree,
        "imported/bb:1",
        &firebuild_oci::Platform::host(),
        &firebuild_oci::SizeLimit::default(),
    )
    .expect("importing a directory");

    // No registry is running: FROM finds the import in the cache.
    let df = "FROM imported/bb:1\nRUN cat /etc-marker > /copied\n";
    let out = f.build(df, "tests/from-import:1").expect("FROM an import");
    assert_eq!(cat(&out.dir.join("rootfs"), "/copied"), "imported\n");

    // The same base with a limit below its size: refused, with the limit named.
    let f2 = Fixture::new();
    firebuild_oci::import(
        &f2.cache(),
        &tree,
        "imported/bb:1",
        &firebuild_oci::Platform::host(),
        &firebuild_oci::SizeLimit::default(),
    )
    .unwrap();
    let mut o = f2.opts(df, "tests/from-import:2");
    o.unpacked_limit = 64 << 10;
    let err = build(&f2.store, &o).unwrap_err().to_string();
    assert!(err.contains("more than its limit"), "{err}");
    assert!(!f2.store.contains(&"tests/from-import:2".parse().unwrap()));
}
