//! Imports of root filesystems and image archives, cross-checked with skopeo.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use common::{files_under, isolated_config};
use firebuild_oci::manifest::Compression;
use firebuild_oci::testing::{busybox_rootfs_tar, push_image, TarBuilder, TestRegistry};
use firebuild_oci::{
    import, BlobCache, Error, ImageRecords, ImportKind, Platform, SizeLimit, UnpackOptions,
};

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn unpack(cache_root: &Path, record: &firebuild_oci::ImageRecord, dir: &Path) {
    record
        .unpack(&BlobCache::new(cache_root), dir, &UnpackOptions::default())
        .unwrap();
}

fn skopeo(args: &[&str]) {
    let out = Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo (Debian package `skopeo`) is needed");
    assert!(
        out.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn imports_a_rootfs_tarball() {
    let work = tempfile::tempdir().unwrap();
    let tarball = work.path().join("rootfs.tar.gz");
    std::fs::write(&tarball, gzip(&busybox_rootfs_tar().unwrap())).unwrap();
    let cache = work.path().join("cache");
    let (kind, record) = import(
        &cache,
        &tarball,
        "org/busybox:1.0",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap();
    assert_eq!(kind, ImportKind::RootfsTarball);
    assert_eq!(record.reference, "org/busybox:1.0");
    assert_eq!(record.config.rootfs.diff_ids.len(), 1);
    let found = ImageRecords::new(&cache)
        .lookup_local("org/busybox:1.0", &Platform::host())
        .unwrap()
        .unwrap();
    assert_eq!(found.digest, record.digest);
    let root = work.path().join("root");
    unpack(&cache, &record, &root);
    assert_eq!(
        std::fs::read(root.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert_eq!(
        std::fs::read_link(root.join("bin/sh")).unwrap().to_str(),
        Some("/bin/busybox")
    );
}

#[test]
fn imports_a_rootfs_directory_keeping_metadata() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    let layer = TarBuilder::new()
        .dir("bin", 0o755)
        .file_with(
            "bin/tool",
            0o4755,
            0,
            0,
            &[("user.origin", b"test")],
            b"tool",
        )
        .hardlink("bin/tool2", "bin/tool")
        .symlink("bin/t", "tool")
        .file_with("home/u/f", 0o600, 1000, 1000, &[], b"mine")
        .fifo("run/pipe", 0o644)
        .device("dev/null", 'c', 1, 3, 0o666)
        .finish();
    firebuild_oci::apply_layer(&src, &layer[..], "src", &UnpackOptions::default()).unwrap();
    let cache = work.path().join("cache");
    let (kind, record) = import(
        &cache,
        &src,
        "dir-image",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap();
    assert_eq!(kind, ImportKind::RootfsDirectory);
    assert_eq!(record.key, "latest");
    let out = work.path().join("out");
    unpack(&cache, &record, &out);
    assert_eq!(files_under(&src), files_under(&out));
    for rel in ["bin/tool", "home/u/f", "bin/t", "run/pipe", "dev/null"] {
        let (a, b) = (
            std::fs::symlink_metadata(src.join(rel)).unwrap(),
            std::fs::symlink_metadata(out.join(rel)).unwrap(),
        );
        assert_eq!(
            (a.mode(), a.uid(), a.gid(), a.rdev(), a.mtime()),
            (b.mode(), b.uid(), b.gid(), b.rdev(), b.mtime()),
            "{rel}"
        );
    }
    assert!(std::fs::metadata(out.join("run/pipe"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        std::fs::metadata(out.join("bin/tool")).unwrap().ino(),
        std::fs::metadata(out.join("bin/tool2")).unwrap().ino()
    );
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(out.join("bin/tool"), "user.origin", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_oci_layouts_and_docker_save_archives_made_by_skopeo() {
    let reg = TestRegistry::start().unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = isolated_config(work.path());
    let extra = TarBuilder::new()
        .file("etc/motd", 0o644, b"imported\n")
        .finish();
    let pushed = push_image(
        &work.path().join("push"),
        &config,
        &reg.reference("src:1"),
        &[
            (busybox_rootfs_tar().unwrap(), Compression::Gzip),
            (extra, Compression::Gzip),
        ],
        |c| c.cmd = Some(vec!["/bin/sh".into()]),
    )
    .await
    .unwrap();
    let src = format!("docker://{}/src:1", reg.host());
    let layout = work.path().join("layout");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &src,
        &format!("oci:{}:v1", layout.display()),
    ]);
    let save = work.path().join("save.tar");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &src,
        &format!("docker-archive:{}:src:1", save.display()),
    ]);
    let layout_tar = work.path().join("layout.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .args(["-cf"])
        .arg(&layout_tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());

    let cache = work.path().join("cache");
    for (source, want) in [
        (&layout, ImportKind::OciLayout),
        (&layout_tar, ImportKind::OciLayout),
        (&save, ImportKind::DockerSave),
    ] {
        let (kind, record) = import(
            &cache,
            source,
            "imported/app:2",
            &Platform::host(),
            &SizeLimit::default(),
        )
        .unwrap();
        assert_eq!(kind, want, "{}", source.display());
        assert_eq!(
            record.config.config.cmd.as_deref(),
            Some(&["/bin/sh".to_string()][..])
        );
        assert_eq!(record.config.rootfs.diff_ids, pushed.config.rootfs.diff_ids);
        let root = work
            .path()
            .join(format!("root-{kind:?}-{}", source.extension().is_some()));
        unpack(&cache, &record, &root);
        assert_eq!(
            std::fs::read_to_string(root.join("etc/motd")).unwrap(),
            "imported\n"
        );
        assert!(root.join("bin/busybox").is_file());
    }
    assert!(
        !files_under(&cache.join("tmp")).iter().any(|_| true),
        "temporary import files left behind"
    );

    // A layout whose blob was tampered with is refused.
    let layer_blob = layout
        .join("blobs/sha256")
        .join(pushed.layers[1].digest.hex());
    assert!(layer_blob.is_file(), "skopeo changed the layer digest");
    {
        let mut data = std::fs::read(&layer_blob).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&layer_blob, data).unwrap();
        let cache2 = work.path().join("cache2");
        let err = import(
            &cache2,
            &layout,
            "bad:1",
            &Platform::host(),
            &SizeLimit::default(),
        )
        .unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(ImageRecords::new(&cache2).list().unwrap().is_empty());
    }
}

#[test]
fn bad_import_inputs_are_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let err = import(
        &cache,
        &work.path().join("missing.tar"),
        "x:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("missing.tar"), "{err}");
    let file = work.path().join("rootfs.tar");
    std::fs::write(&file, TarBuilder::new().file("a", 0o644, b"a").finish()).unwrap();
    let err = import(
        &cache,
        &file,
        "../evil:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidReference { .. }), "{err}");
    // A docker-save style archive whose manifest points outside itself.
    let evil = TarBuilder::new()
        .file(
            "manifest.json",
            0o644,
            br#"[{"Config":"../../etc/passwd","RepoTags":[],"Layers":[]}]"#,
        )
        .file("repositories", 0o644, b"{}")
        .finish();
    let evil_path = work.path().join("evil.tar");
    std::fs::write(&evil_path, evil).unwrap();
    let err = import(
        &cache,
        &evil_path,
        "evil:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("outside the archive"), "{err}");
    assert!(ImageRecords::new(&cache).list().unwrap().is_empty());
}
