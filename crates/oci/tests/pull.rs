//! Pulls from a real local registry (Debian's docker-registry).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use common::{files_under, isolated_config, noise, CutProxy};
use firebuild_oci::manifest::Compression;
use firebuild_oci::testing::{
    busybox_rootfs_tar, push_image, push_multi_platform, write_docker_config, TarBuilder,
    TestRegistry,
};
use firebuild_oci::{Error, ImageRef, Platform, Registry, RegistryConfig, UnpackOptions};

/// Pushes a two-layer busybox image with a full run config; returns the record.
async fn push_busybox(
    reg: &TestRegistry,
    config: &RegistryConfig,
    repo_tag: &str,
) -> firebuild_oci::ImageRecord {
    let work = tempfile::tempdir().unwrap();
    let extra = TarBuilder::new()
        .dir("srv", 0o755)
        .file("srv/hello.txt", 0o644, b"hello\n")
        .finish();
    push_image(
        work.path(),
        config,
        &reg.reference(repo_tag),
        &[
            (busybox_rootfs_tar().unwrap(), Compression::Gzip),
            (extra, Compression::Zstd),
        ],
        |c| {
            c.env = vec!["PATH=/bin:/usr/bin".into(), "GREETING=hi there".into()];
            c.entrypoint = Some(vec!["/bin/sh".into(), "-c".into()]);
            c.cmd = Some(vec!["echo $GREETING".into()]);
            c.user = "nobody".into();
            c.working_dir = "/srv".into();
            c.exposed_ports = BTreeMap::from([("8080/tcp".to_string(), serde_json::json!({}))]);
            c.labels = BTreeMap::from([("org.example".to_string(), "yes".to_string())]);
            c.stop_signal = Some("SIGQUIT".into());
            c.healthcheck = Some(firebuild_oci::HealthConfig {
                test: vec!["CMD".into(), "true".into()],
                interval: Some(5_000_000_000),
                retries: Some(2),
                ..Default::default()
            });
            c.on_build = vec!["RUN echo child".into()];
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_by_tag_and_digest_then_unpack_and_run() {
    let reg = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let config = isolated_config(creds.path());
    let pushed = push_busybox(&reg, &config, "busybox:1").await;

    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config.clone());
    let r = registry
        .pull(&reg.reference("busybox:1"), &Platform::host())
        .await
        .unwrap();
    assert_eq!(r.digest, pushed.digest);
    assert_eq!(r.layers.len(), 2);
    let c = &r.config.config;
    assert_eq!(c.env, vec!["PATH=/bin:/usr/bin", "GREETING=hi there"]);
    assert_eq!(
        c.entrypoint.as_deref(),
        Some(&["/bin/sh".to_string(), "-c".to_string()][..])
    );
    assert_eq!(c.user, "nobody");
    assert_eq!(c.working_dir, "/srv");
    assert_eq!(c.ports(), vec!["8080/tcp"]);
    assert_eq!(c.labels["org.example"], "yes");
    assert_eq!(c.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(c.healthcheck.as_ref().unwrap().retries, Some(2));
    assert_eq!(c.on_build, vec!["RUN echo child"]);

    // Recorded by tag and by digest, listed once, found again offline.
    let list = registry.records().list().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    let by_tag = registry
        .records()
        .lookup(&reg.reference("busybox:1"), &Platform::host())
        .unwrap()
        .unwrap();
    assert_eq!(by_tag.digest, r.digest);
    let pinned = reg.reference("busybox:1").with_digest(r.digest.clone());
    assert!(registry
        .records()
        .lookup(&pinned, &Platform::host())
        .unwrap()
        .is_some());

    // Unpack and run the image's shell in it.
    let rootfs = cache.path().join("rootfs");
    r.unpack(registry.cache(), &rootfs, &UnpackOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap().to_str(),
        Some("/bin/busybox")
    );
    assert_eq!(
        std::fs::read(rootfs.join("srv/hello.txt")).unwrap(),
        b"hello\n"
    );
    let out = std::process::Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/sh", "-c", "echo ran in $(pwd)"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ran in /",
        "{out:?}"
    );

    // A second pull downloads no blob: remove the layer and config blobs from
    // the registry; the pull (which refetches the tag's manifest) still works.
    for d in r.layers.iter().map(|l| &l.digest).chain([&r.config_digest]) {
        std::fs::remove_file(reg.blob_data_path(d)).unwrap();
    }
    let again = registry
        .pull(&reg.reference("busybox:1"), &Platform::host())
        .await
        .unwrap();
    assert_eq!(again.digest, r.digest);

    // By digest, into a fresh cache: the registry no longer has the layers,
    // so re-push first.
    push_busybox(&reg, &config, "busybox:1").await;
    let cache2 = tempfile::tempdir().unwrap();
    let registry2 = Registry::new(cache2.path(), config);
    let by_digest = registry2.pull(&pinned, &Platform::host()).await.unwrap();
    assert_eq!(by_digest.digest, r.digest);
    assert_eq!(by_digest.key, r.digest.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_platform_index_resolves_to_the_requested_platform() {
    let reg = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let config = isolated_config(creds.path());
    let work = tempfile::tempdir().unwrap();
    let layer = |name: &str| {
        vec![(
            TarBuilder::new()
                .file("platform", 0o644, name.as_bytes())
                .finish(),
            Compression::Gzip,
        )]
    };
    let arm: Platform = "linux/arm64".parse().unwrap();
    let index_digest = push_multi_platform(
        work.path(),
        &config,
        &reg.reference("multi:1"),
        &[
            (Platform::host(), layer("host")),
            (arm.clone(), layer("arm64")),
        ],
    )
    .await
    .unwrap();

    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config);
    for (platform, want) in [(Platform::host(), "host"), (arm.clone(), "arm64")] {
        let r = registry
            .pull(&reg.reference("multi:1"), &platform)
            .await
            .unwrap();
        assert_eq!(r.index_digest.as_ref(), Some(&index_digest));
        assert!(platform.matches(
            &r.platform.os,
            &r.platform.architecture,
            r.platform.variant.as_deref()
        ));
        let root = cache.path().join(format!("root-{want}"));
        r.unpack(registry.cache(), &root, &UnpackOptions::default())
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("platform")).unwrap(),
            want
        );
    }
    // Pulling by the index digest works too.
    let pinned = reg.reference("multi:1").with_digest(index_digest.clone());
    registry.pull(&pinned, &arm).await.unwrap();

    let err = registry
        .pull(&reg.reference("multi:1"), &"linux/s390x".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PlatformNotFound { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64"),
        "{msg}"
    );

    let err = registry
        .pull(&reg.reference("multi:nope"), &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");

    // Everything pinned by digest is now cached: pulling it again needs no registry.
    let mut reg = reg;
    reg.stop();
    let again = registry.pull(&pinned, &arm).await.unwrap();
    assert_eq!(again.index_digest.as_ref(), Some(&index_digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_through_mirrors_and_falls_back() {
    let mirror = TestRegistry::start().unwrap();
    let upstream = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let base = isolated_config(creds.path());
    let work = tempfile::tempdir().unwrap();
    let layer = |s: &str| {
        vec![(
            TarBuilder::new().file("from", 0o644, s.as_bytes()).finish(),
            Compression::Gzip,
        )]
    };
    // Docker Hub names go to the mirror (no internet needed).
    push_image(
        work.path(),
        &base,
        &mirror.reference("library/busybox:1"),
        &layer("mirror"),
        |_| {},
    )
    .await
    .unwrap();
    // The same repository on both: the mirror must win.
    push_image(
        work.path(),
        &base,
        &upstream.reference("app:1"),
        &layer("upstream"),
        |_| {},
    )
    .await
    .unwrap();
    let mirror_ref = format!("{}/app:1", mirror.host())
        .parse::<ImageRef>()
        .unwrap();
    push_image(work.path(), &base, &mirror_ref, &layer("mirror"), |_| {})
        .await
        .unwrap();

    let mut config = base.clone();
    config
        .add_mirror(&format!("docker.io=http://{}", mirror.host()))
        .unwrap();
    config
        .add_mirror(&format!("{}=http://{}", upstream.host(), mirror.host()))
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config);

    let hub: ImageRef = "busybox:1".parse().unwrap();
    let r = registry.pull(&hub, &Platform::host()).await.unwrap();
    assert_eq!(r.reference, "docker.io/library/busybox:1");
    assert_eq!(
        r.source,
        firebuild_oci::ImageSource::Registry {
            endpoint: mirror.host()
        }
    );
    let r = registry
        .pull(&upstream.reference("app:1"), &Platform::host())
        .await
        .unwrap();
    let root = cache.path().join("root");
    r.unpack(registry.cache(), &root, &UnpackOptions::default())
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(root.join("from")).unwrap(),
        "mirror"
    );

    // A mirror that is down is skipped: the registry itself answers.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = base.clone();
    config
        .add_mirror(&format!("{}=http://{dead}", upstream.host()))
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config);
    let r = registry
        .pull(&upstream.reference("app:1"), &Platform::host())
        .await
        .unwrap();
    assert_eq!(
        r.source,
        firebuild_oci::ImageSource::Registry {
            endpoint: upstream.host()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_with_good_wrong_and_missing_credentials() {
    let reg = TestRegistry::start_with_auth("alice", "s3cret").unwrap();
    let good = tempfile::tempdir().unwrap();
    write_docker_config(good.path(), &reg.host(), "alice", "s3cret").unwrap();
    let config = isolated_config(good.path());
    push_busybox(&reg, &config, "private:1").await;

    let cache = tempfile::tempdir().unwrap();
    Registry::new(cache.path(), config)
        .pull(&reg.reference("private:1"), &Platform::host())
        .await
        .unwrap();

    let wrong = tempfile::tempdir().unwrap();
    write_docker_config(wrong.path(), &reg.host(), "alice", "guess").unwrap();
    let none = tempfile::tempdir().unwrap();
    for (dir, expect) in [(wrong.path(), "rejected"), (none.path(), "no credentials")] {
        let cache = tempfile::tempdir().unwrap();
        let err = Registry::new(cache.path(), isolated_config(dir))
            .pull(&reg.reference("private:1"), &Platform::host())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&reg.host()) && msg.contains(expect) && msg.contains("config.json"),
            "{msg}"
        );
        assert!(
            files_under(cache.path()).is_empty(),
            "stored: {:?}",
            files_under(cache.path())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_blob_is_rejected_and_nothing_is_stored() {
    let reg = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let config = isolated_config(creds.path());
    let work = tempfile::tempdir().unwrap();
    let layer = TarBuilder::new()
        .file("data", 0o644, &noise(200_000, 7))
        .finish();
    let pushed = push_image(
        work.path(),
        &config,
        &reg.reference("bad:1"),
        &[(layer, Compression::None)],
        |_| {},
    )
    .await
    .unwrap();
    let victim = &pushed.layers[0].digest;
    let path = reg.blob_data_path(victim);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100_000] ^= 0xff; // same size, different content
    std::fs::write(&path, bytes).unwrap();

    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config);
    let err = registry
        .pull(&reg.reference("bad:1"), &Platform::host())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&victim.to_string()), "{err}");
    assert!(!registry.cache().contains(victim));
    let leftovers: Vec<_> = files_under(cache.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(victim.hex()) || p.starts_with("images"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_down_is_a_clear_error_and_stores_nothing() {
    let mut reg = TestRegistry::start().unwrap();
    let host = reg.host();
    reg.stop();
    let cache = tempfile::tempdir().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), isolated_config(creds.path()));
    let err = registry
        .pull(
            &format!("{host}/gone:1").parse().unwrap(),
            &Platform::host(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::RegistryUnreachable { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&host) && msg.to_lowercase().contains("connect"),
        "{msg}"
    );
    assert!(files_under(cache.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_pull_resumes_on_retry() {
    let reg = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let config = isolated_config(creds.path());
    let work = tempfile::tempdir().unwrap();
    let payload = noise(2 << 20, 11);
    let layer = TarBuilder::new().file("big", 0o644, &payload).finish();
    let pushed = push_image(
        work.path(),
        &config,
        &reg.reference("big:1"),
        &[(layer, Compression::None)],
        |_| {},
    )
    .await
    .unwrap();
    let blob = &pushed.layers[0].digest;

    // Every connection through the proxy dies after 256 KiB.
    let proxy = CutProxy::start(reg.addr(), 256 << 10);
    let via_proxy: ImageRef = format!("{}/big:1", proxy.host()).parse().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config);
    let err = registry
        .pull(&via_proxy, &Platform::host())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("interrupted"), "{err}");
    let partial = cache
        .path()
        .join(format!("blobs/sha256/{}.partial", blob.hex()));
    let partial_len = std::fs::metadata(&partial).unwrap().len();
    assert!(
        partial_len > 0 && partial_len < pushed.layers[0].size,
        "{partial_len}"
    );
    assert!(!registry.cache().contains(blob));
    assert!(registry.records().list().unwrap().is_empty());

    proxy.set_cap(u64::MAX);
    let r = registry.pull(&via_proxy, &Platform::host()).await.unwrap();
    assert!(
        proxy.saw_resume(),
        "the retry did not resume from the partial blob"
    );
    assert!(registry.cache().contains(blob));
    assert!(!partial.exists());
    let root = cache.path().join("root");
    r.unpack(registry.cache(), &root, &UnpackOptions::default())
        .unwrap();
    assert_eq!(std::fs::read(root.join("big")).unwrap(), payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_image_share_the_cache() {
    let reg = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let config = isolated_config(creds.path());
    let work = tempfile::tempdir().unwrap();
    let layer = TarBuilder::new()
        .file("big", 0o644, &noise(1 << 20, 3))
        .finish();
    push_image(
        work.path(),
        &config,
        &reg.reference("c:1"),
        &[(layer, Compression::Gzip)],
        |_| {},
    )
    .await
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let a = Registry::new(cache.path(), config.clone());
    let b = Registry::new(cache.path(), config);
    let (image, host) = (reg.reference("c:1"), Platform::host());
    let (ra, rb) = tokio::join!(a.pull(&image, &host), b.pull(&image, &host));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.digest, rb.digest);
    let blob = a.cache().blob_path(&ra.layers[0].digest);
    assert_eq!(std::fs::metadata(&blob).unwrap().nlink(), 1);
    let stray: Vec<_> = files_under(cache.path())
        .into_iter()
        .filter(|p| {
            p.to_string_lossy().contains(".partial") || p.to_string_lossy().contains(".tmp-")
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_layer_image_with_whiteout_and_opaque_directory() {
    let reg = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let config = isolated_config(creds.path());
    let work = tempfile::tempdir().unwrap();
    let base = busybox_rootfs_tar().unwrap();
    let lower = TarBuilder::new()
        .file("etc/doomed.conf", 0o644, b"old")
        .file("var/cache/app/a", 0o644, b"a")
        .file("var/cache/app/sub/b", 0o644, b"b")
        .finish();
    let upper = TarBuilder::new()
        .whiteout("etc", "doomed.conf")
        .dir("var/cache/app", 0o755)
        .opaque("var/cache/app")
        .file("var/cache/app/fresh", 0o644, b"fresh")
        .finish();
    push_image(
        work.path(),
        &config,
        &reg.reference("layers:1"),
        &[
            (base, Compression::Gzip),
            (lower, Compression::Zstd),
            (upper, Compression::None),
        ],
        |_| {},
    )
    .await
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config);
    let r = registry
        .pull(&reg.reference("layers:1"), &Platform::host())
        .await
        .unwrap();
    assert_eq!(r.layers.len(), 3);
    let root = cache.path().join("root");
    r.unpack(registry.cache(), &root, &UnpackOptions::default())
        .unwrap();
    assert!(!root.join("etc/doomed.conf").exists());
    assert!(root.join("etc/passwd").exists());
    let mut left: Vec<_> = std::fs::read_dir(root.join("var/cache/app"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["fresh"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_longer_than_declared_is_cut_off_and_not_kept() {
    let reg = TestRegistry::start().unwrap();
    let creds = tempfile::tempdir().unwrap();
    let config = isolated_config(creds.path());
    let work = tempfile::tempdir().unwrap();
    let layer = TarBuilder::new()
        .file("data", 0o644, &noise(100_000, 3))
        .finish();
    let pushed = push_image(
        work.path(),
        &config,
        &reg.reference("long:1"),
        &[(layer, Compression::None)],
        |_| {},
    )
    .await
    .unwrap();
    let victim = &pushed.layers[0].digest;
    let declared = pushed.layers[0].size;
    // The registry now serves 8 MiB more than the manifest declares.
    let path = reg.blob_data_path(victim);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    std::io::Write::write_all(&mut f, &vec![0x5a; 8 << 20]).unwrap();
    drop(f);

    let cache = tempfile::tempdir().unwrap();
    let registry = Registry::new(cache.path(), config);
    let err = registry
        .pull(&reg.reference("long:1"), &Platform::host())
        .await
        .unwrap_err();
    match &err {
        Error::SizeMismatch {
            expected, actual, ..
        } => {
            assert_eq!(*expected, declared);
            assert!(*actual < declared + (8 << 20), "stopped early: {err}");
        }
        other => panic!("not a size mismatch: {other}"),
    }
    let leftovers: Vec<_> = files_under(cache.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(victim.hex()))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a partial blob was kept: {leftovers:?}"
    );
}
