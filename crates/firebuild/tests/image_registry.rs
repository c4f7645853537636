//! `image push` / `image pull --tag` through a real registry (Debian's
//! docker-registry on 127.0.0.1): a root filesystem built on one host
//! (a world of its own directories) is pushed as a plain OCI image, read
//! by skopeo, pulled into a second host's store and booted there; version
//! 2 costs the registry one layer; a tampered blob, a missing reference
//! and an image whose build layers are gone are handled.
//!
//! Needs root, `busybox-static`, `skopeo`, `docker-registry`,
//! `qemu-system-x86`, `e2fsprogs`, the guest kernel and the guest init
//! (see tests/agent.rs).

use std::path::{Path, PathBuf};
use std::process::Command;

use firebuild_oci::manifest::Compression;
use firebuild_oci::testing::{busybox_rootfs_tar, push_image, TestRegistry};
use firebuild_oci::{block_on, RegistryConfig};

mod vm_world;

use vm_world::{text, World};

const TAG: &str = "fbt/pushed:1";

/// A Dockerfile on the registry's busybox: a RUN step, a file removed
/// from the base (a whiteout), a COPY, and run settings for the config.
fn write_context(dir: &Path, base: &str, extra_step: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("greeting"), "hello from the first host\n").unwrap();
    let dockerfile = dir.join("Dockerfile");
    std::fs::write(
        &dockerfile,
        format!(
            "FROM {base}\n\
             RUN mkdir -p /srv/app && echo built > /srv/app/state && rm /etc/group\n\
             COPY greeting /srv/app/greeting\n\
             ENV GREETING=hi\n\
             EXPOSE 8080/tcp\n\
             LABEL org.example.team=infra\n\
             {extra_step}\
             CMD [\"/bin/sh\", \"-c\", \"while :; do sleep 1; done\"]\n"
        ),
    )
    .unwrap();
    dockerfile
}

/// The registry's busybox base image (`PATH=/bin:/sbin`), pushed with a
/// blob cache under `cache`.
fn push_base(registry: &TestRegistry, cache: &Path) -> firebuild_oci::ImageRef {
    let base = registry.reference("tools/busybox:1");
    block_on(push_image(
        cache,
        &RegistryConfig::default(),
        &base,
        &[(busybox_rootfs_tar().unwrap(), Compression::Gzip)],
        |cfg| cfg.env = vec!["PATH=/bin:/sbin".into()],
    ))
    .unwrap()
    .unwrap();
    base
}

/// The blobs (layers, configs, manifests) the registry stores.
fn registry_blobs(registry: &TestRegistry) -> usize {
    let dir = registry
        .storage_dir()
        .join("docker/registry/v2/blobs/sha256");
    let Ok(prefixes) = std::fs::read_dir(dir) else {
        return 0;
    };
    prefixes
        .flatten()
        .map(|p| std::fs::read_dir(p.path()).map_or(0, |d| d.count()))
        .sum()
}

/// A file of an ext4 image, read with debugfs (no mount).
fn ext4_cat(image: &Path, path: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(image)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    (out.status.success() && !err.contains("not found")).then(|| text(&out.stdout))
}

fn skopeo_inspect(reference: &str, what: &str) -> serde_json::Value {
    let out = Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .args(if what == "config" {
            vec!["--config"]
        } else {
            vec!["--raw"]
        })
        .arg(format!("docker://{reference}"))
        .output()
        .expect("run skopeo (install the Debian package skopeo)");
    assert!(
        out.status.success(),
        "skopeo inspect: {}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `image pull REF --tag TAG` in `w` fails, its error names `named`, and
/// `absent` (under the store) is not there.
fn pull_is_refused(w: &World, reference: &str, tag: &str, named: &str, absent: &str) {
    let out = w.run(&["image", "pull"], &[reference, "--tag", tag]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains(named), "{}", text(&out.stderr));
    assert!(!w.path("rootfs").join(absent).exists());
}

/// `skopeo copy` of `reference` into the OCI layout `layout` (every blob
/// verified by skopeo).
fn skopeo_copy(reference: &str, layout: &Path) {
    let out = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:copied", layout.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo copy: {}", text(&out.stderr));
}

#[test]
fn a_rootfs_pushed_from_one_host_is_an_ordinary_image_and_runs_on_another() {
    let registry = TestRegistry::start().unwrap();
    let push_cache = tempfile::tempdir().unwrap();
    let base = push_base(&registry, push_cache.path());
    let base_blobs = registry_blobs(&registry);

    let first = World::new();
    let ctx = first.path("context");
    let dockerfile = write_context(&ctx, &base.to_string(), "");
    first.ok(
        &["rootfs"],
        &["--dockerfile", dockerfile.to_str().unwrap(), "--tag", TAG],
    );
    let v1 = registry.reference("apps/pushed:1").to_string();
    let digest = first.ok(&["image", "push"], &[TAG, &v1]).trim().to_owned();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // What other tools see: the base's layer as it was, then one layer per
    // step that changed files (RUN, COPY), no guest init, the run config.
    let manifest = skopeo_inspect(&v1, "raw");
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3, "{manifest}");
    let base_manifest = skopeo_inspect(&base.to_string(), "raw");
    assert_eq!(layers[0], base_manifest["layers"][0], "{manifest}");
    let metadata: serde_json::Value = serde_json::from_str(
        manifest["annotations"]["dev.firebuild.image.metadata"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(metadata["tag"], TAG);
    let config = skopeo_inspect(&v1, "config");
    let run = &config["config"];
    let env = run["Env"].as_array().unwrap();
    assert!(env.contains(&"PATH=/bin:/sbin".into()), "{config}");
    assert!(env.contains(&"GREETING=hi".into()), "{config}");
    assert_eq!(run["Cmd"][2], "while :; do sleep 1; done", "{config}");
    assert!(run["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert_eq!(run["Labels"]["org.example.team"], "infra", "{config}");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);

    // skopeo copies it whole into an OCI layout (every blob verified).
    let layout = first.path("layout");
    skopeo_copy(&v1, &layout);
    assert!(layout.join("index.json").is_file());

    // Pushing again sends nothing new.
    let before = registry_blobs(&registry);
    assert_eq!(first.ok(&["image", "push"], &[TAG, &v1]).trim(), digest);
    assert_eq!(registry_blobs(&registry), before);

    // The second host pulls it as a root filesystem and runs it.
    let mut second = World::new();
    let out = second.ok(&["image", "pull"], &[&v1, "--tag", TAG]);
    assert_eq!(out.trim(), TAG);
    let inspected: serde_json::Value =
        serde_json::from_str(&second.ok(&["image", "inspect"], &[TAG])).unwrap();
    assert_eq!(inspected["parent"], metadata["parent"], "{inspected}");
    assert_eq!(
        inspected["created-at-utc"], metadata["created-at-utc"],
        "{inspected}"
    );
    assert_eq!(inspected["entrypoint-info"]["env"]["GREETING"], "hi");
    let pulled = second.path("rootfs").join("fbt/pushed/1/rootfs");
    assert_eq!(
        ext4_cat(&pulled, "/srv/app/greeting").as_deref(),
        Some("hello from the first host\n")
    );
    assert_eq!(
        ext4_cat(&pulled, "/etc/group"),
        None,
        "the whiteout applies"
    );
    assert!(ext4_cat(&pulled, "/etc/passwd").is_some());
    // `run --from REF` pulls what is not stored yet, as `docker run` does;
    // the kernel comes through the registry too.
    let kernel = registry.reference("kernels/vmlinux:1").to_string();
    first.ok(&["kernel", "push"], &[vm_world::KERNEL_ID, &kernel]);
    second.ok(&["kernel", "pull"], &[&kernel, "--id", "pulled-kernel"]);
    let vm = second.start_vm(&v1, "fbt-pushed", &["--vmlinux-id", "pulled-kernel"]);
    let derived = format!("{}/apps_pushed:1", registry.host().replace(':', "-"));
    let listed = second.ok(&["image", "ls"], &["--json"]);
    assert!(listed.contains(&derived), "{listed}");
    let out = second.exec(
        &vm,
        &[],
        &["sh", "-c", "cat /srv/app/state; echo $GREETING"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "built\nhi\n");

    // Version 2 adds one step: the registry gets that layer, a config and
    // a manifest, nothing else.
    write_context(&ctx, &base.to_string(), "RUN echo 2 > /srv/app/version\n");
    first.ok(
        &["rootfs"],
        &[
            "--dockerfile",
            dockerfile.to_str().unwrap(),
            "--tag",
            "fbt/pushed:2",
        ],
    );
    let v2 = registry.reference("apps/pushed:2").to_string();
    let before = registry_blobs(&registry);
    first.ok(&["image", "push"], &["fbt/pushed:2", &v2]);
    assert_eq!(registry_blobs(&registry), before + 3);
    assert!(before > base_blobs);

    // A tampered layer in the registry is refused by its digest; nothing
    // is stored under the tag.
    let manifest = skopeo_inspect(&v2, "raw");
    let top: firebuild_oci::Digest = manifest["layers"][3]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let blob = registry.blob_data_path(&top);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();
    pull_is_refused(
        &second,
        &v2,
        "fbt/pushed:2",
        &top.hex()[..12],
        "fbt/pushed/2",
    );

    // A reference the registry does not have names itself.
    let missing = registry.reference("apps/none:1").to_string();
    pull_is_refused(&second, &missing, "fbt/none:1", "apps/none", "fbt/none");

    // An artifact is not an image: refused by its manifest, nothing stored.
    let artifact_file = first.path("artifact.bin");
    std::fs::write(&artifact_file, b"not a root filesystem").unwrap();
    let artifact = registry.reference("apps/artifact:1");
    block_on(
        firebuild_oci::Registry::new(push_cache.path(), RegistryConfig::default()).push_artifact(
            &firebuild_oci::ArtifactFile {
                artifact_type: "application/vnd.example.thing.v1",
                layer_media_type: "application/vnd.example.thing.layer.v1",
                file: &artifact_file,
                annotations: Default::default(),
            },
            &artifact,
        ),
    )
    .unwrap()
    .unwrap();
    pull_is_refused(
        &second,
        &artifact.to_string(),
        "fbt/artifact:1",
        "apps/artifact",
        "fbt/artifact",
    );

    // A tag that is not stored is named.
    let out = first.run(&["image", "push"], &["fbt/absent:1", &v1]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("fbt/absent:1"),
        "{}",
        text(&out.stderr)
    );

    // With the build cache gone, the files come from the ext4 image: one
    // layer, the same tree, still without the guest init.
    std::fs::remove_dir_all(first.path("cache").join("build")).unwrap();
    let flat = registry.reference("apps/flat:1").to_string();
    first.ok(&["image", "push"], &[TAG, &flat]);
    let manifest = skopeo_inspect(&flat, "raw");
    assert_eq!(
        manifest["layers"].as_array().unwrap().len(),
        1,
        "{manifest}"
    );
    second.ok(&["image", "pull"], &[&flat, "--tag", "fbt/flat:1"]);
    let flat_image = second.path("rootfs").join("fbt/flat/1/rootfs");
    assert_eq!(
        ext4_cat(&flat_image, "/srv/app/state").as_deref(),
        Some("built\n")
    );
    assert_eq!(ext4_cat(&flat_image, "/etc/group"), None);
    let layout_flat = first.path("layout-flat");
    skopeo_copy(&flat, &layout_flat);
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer = layout_flat
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    let out = Command::new("tar")
        .arg("-tzf")
        .arg(&layer)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let names = text(&out.stdout);
    assert!(
        names
            .lines()
            .any(|l| l.trim_end_matches('/') == "srv/app/state"),
        "{names}"
    );
    assert!(!names.contains(".firebuild"), "{names}");
}

/// `firebuild <command> <rest>` in `w` with `SOURCE_DATE_EPOCH` set.
fn ok_at_epoch(w: &World, command: &[&str], rest: &[&str]) -> String {
    let out = w
        .command(command, rest)
        .env("SOURCE_DATE_EPOCH", EPOCH)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "firebuild {command:?} {rest:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

const EPOCH: &str = "1700000000";

#[test]
fn with_source_date_epoch_two_hosts_build_the_same_bytes_and_a_pull_matches_them() {
    let registry = TestRegistry::start().unwrap();
    let push_cache = tempfile::tempdir().unwrap();
    let base = push_base(&registry, push_cache.path());
    // One Dockerfile and context, built on two hosts with --no-cache; the
    // context's files are touched between the builds.
    let ctx = tempfile::tempdir().unwrap();
    let dockerfile = write_context(ctx.path(), &base.to_string(), "");
    let (first, second) = (World::new(), World::new());
    let build = [
        "--dockerfile",
        dockerfile.to_str().unwrap(),
        "--tag",
        TAG,
        "--no-cache",
    ];
    ok_at_epoch(&first, &["rootfs"], &build);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(ctx.path().join("greeting"), "hello from the first host\n").unwrap();
    ok_at_epoch(&second, &["rootfs"], &build);
    let image = |w: &World| w.path("rootfs").join("fbt/pushed/1/rootfs");
    assert!(
        std::fs::read(image(&first)).unwrap() == std::fs::read(image(&second)).unwrap(),
        "the two hosts' ext4 files differ"
    );
    let inspected: serde_json::Value =
        serde_json::from_str(&first.ok(&["image", "inspect"], &[TAG])).unwrap();
    assert_eq!(inspected["created-at-utc"], 1_700_000_000_i64);
    assert_eq!(
        inspected["build-config"]["source-date-epoch"],
        1_700_000_000_i64
    );

    // Both push the same manifest digest (the epoch recorded at build time
    // is used without being set again).
    let (a, b) = (
        registry.reference("apps/repro:a").to_string(),
        registry.reference("apps/repro:b").to_string(),
    );
    // inspect says beforehand what the push will produce.
    let planned: serde_json::Value =
        serde_json::from_str(&first.ok(&["image", "inspect"], &[TAG, "--push-digest"])).unwrap();
    let digest_a = first.ok(&["image", "push"], &[TAG, &a]);
    assert_eq!(planned["push-manifest-digest"], digest_a.trim());
    let digest_b = second.ok(&["image", "push"], &[TAG, &b]);
    assert_eq!(digest_a, digest_b);

    // A third host pulls it: the same ext4, byte for byte.
    let third = World::new();
    third.ok(&["image", "pull"], &[&a, "--tag", TAG]);
    assert!(
        std::fs::read(image(&third)).unwrap() == std::fs::read(image(&first)).unwrap(),
        "the pulled ext4 differs from the built one"
    );
    let pulled: serde_json::Value =
        serde_json::from_str(&third.ok(&["image", "inspect"], &[TAG])).unwrap();
    assert_eq!(pulled["rootfs-digest"], inspected["rootfs-digest"]);
}
