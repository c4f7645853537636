//! Layer application: metadata, whiteouts, opaque directories, and every
//! classic tar-extraction escape.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use firebuild_agent_proto::tree::{Device, DEVICE_XATTR};
use firebuild_oci::testing::TarBuilder;
use firebuild_oci::{apply_layer, Error, UnpackOptions};

/// A root to unpack into, beside an `outside` directory holding a victim file
/// that no layer may touch.
struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("victim"), b"original").unwrap();
        Sandbox {
            _dir: dir,
            root,
            outside,
        }
    }

    fn apply(&self, tar: &[u8]) -> Result<firebuild_oci::LayerStats, Error> {
        apply_layer(&self.root, tar, "test-layer", &UnpackOptions::default())
    }

    fn outside_str(&self) -> String {
        self.outside.display().to_string()
    }

    /// The outside directory still holds only the untouched victim.
    fn assert_outside_untouched(&self) {
        let names: Vec<_> = std::fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            names,
            vec!["victim"],
            "something was written outside the root"
        );
        assert_eq!(
            std::fs::read(self.outside.join("victim")).unwrap(),
            b"original"
        );
        let meta = std::fs::metadata(self.outside.join("victim")).unwrap();
        assert_eq!(meta.nlink(), 1, "the victim was hard-linked");
        assert_eq!(
            std::fs::metadata(&self.outside)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

#[test]
fn preserves_modes_owners_times_links_devices_and_xattrs() {
    let sb = Sandbox::new();
    // v2 file capability: CAP_NET_RAW permitted + effective.
    let mut cap = Vec::new();
    cap.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    cap.extend_from_slice(&(1u32 << 13).to_le_bytes());
    cap.extend_from_slice(&0u32.to_le_bytes());
    cap.extend_from_slice(&[0u8; 8]);
    let tar = TarBuilder::new()
        .mtime(1_500_000_000)
        .dir("usr/bin", 0o755)
        .file_with(
            "usr/bin/ping",
            0o755,
            0,
            0,
            &[("security.capability", &cap), ("user.note", b"hi")],
            b"ping",
        )
        .file_with("usr/bin/su", 0o4755, 0, 0, &[], b"su")
        .file_with("home/app/data", 0o640, 1000, 1001, &[], b"data")
        .symlink("usr/bin/ping6", "ping")
        .hardlink("usr/bin/ping-hard", "usr/bin/ping")
        .device("dev/null", 'c', 1, 3, 0o666)
        .device("dev/loop9", 'b', 7, 9, 0o660)
        .fifo("run/fifo", 0o600)
        .dir("sticky", 0o1777)
        .finish();
    let stats = sb.apply(&tar).unwrap();
    assert_eq!(stats.entries, 10);

    let m = std::fs::metadata(sb.p("usr/bin/su")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o4755, "setuid bit lost");
    let m = std::fs::metadata(sb.p("home/app/data")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o640));
    assert_eq!(m.mtime(), 1_500_000_000);
    assert_eq!(
        std::fs::metadata(sb.p("usr/bin")).unwrap().mtime(),
        1_500_000_000,
        "dir mtime not kept"
    );
    assert_eq!(
        std::fs::read_link(sb.p("usr/bin/ping6")).unwrap(),
        Path::new("ping")
    );
    let (a, b) = (
        std::fs::metadata(sb.p("usr/bin/ping")).unwrap(),
        std::fs::metadata(sb.p("usr/bin/ping-hard")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino());
    // Devices are placeholders here (no node opens a host device); they
    // become nodes inside an ext4 image only.
    let null_path = sb.p("dev/null");
    let null = std::fs::symlink_metadata(&null_path).unwrap();
    assert!(null.is_file() && null.len() == 0);
    assert_eq!(
        Device::of_placeholder(&null_path, &null).unwrap(),
        Some(Device::new(false, 1, 3).unwrap())
    );
    assert_eq!(null.mode() & 0o777, 0o666);
    let loop_path = sb.p("dev/loop9");
    let loop9 = std::fs::symlink_metadata(&loop_path).unwrap();
    assert!(!loop9.file_type().is_block_device());
    assert_eq!(
        Device::of_placeholder(&loop_path, &loop9).unwrap(),
        Some(Device::new(true, 7, 9).unwrap())
    );
    assert!(std::fs::metadata(sb.p("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        std::fs::metadata(sb.p("sticky")).unwrap().mode() & 0o7777,
        0o1777
    );
    let got = rustix::fs::getxattr(
        sb.p("usr/bin/ping"),
        "security.capability",
        &mut [0u8; 64][..],
    )
    .unwrap();
    assert_eq!(got, cap.len(), "file capability not set");
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(sb.p("usr/bin/ping"), "user.note", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"hi");
}

#[test]
fn devices_are_placeholders_an_archive_cannot_forge() {
    let sb = Sandbox::new();
    let tar = TarBuilder::new()
        .file("etc/sda", 0o644, b"planted first")
        .device("etc/sda", 'b', 8, 0, 0o600)
        .device("etc/whiteout", 'c', 0, 0, 0o600)
        .file_with(
            "etc/forged",
            0o644,
            0,
            0,
            &[(DEVICE_XATTR, b"b 8 0"), ("user.kept", b"1")],
            b"",
        )
        .finish();
    sb.apply(&tar).unwrap();
    // The device over an earlier file: a placeholder, no host node.
    let sda = std::fs::symlink_metadata(sb.p("etc/sda")).unwrap();
    assert!(sda.is_file() && sda.len() == 0);
    assert_eq!(
        Device::of_placeholder(&sb.p("etc/sda"), &sda).unwrap(),
        Some(Device::new(true, 8, 0).unwrap())
    );
    // A char 0/0 opens nothing and stays a node (an overlay whiteout).
    let wh = std::fs::symlink_metadata(sb.p("etc/whiteout")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    // An archive's own marker is dropped; its other attributes are kept.
    let forged = std::fs::symlink_metadata(sb.p("etc/forged")).unwrap();
    assert_eq!(
        Device::of_placeholder(&sb.p("etc/forged"), &forged).unwrap(),
        None
    );
    let mut buf = [0u8; 4];
    let n = rustix::fs::getxattr(sb.p("etc/forged"), "user.kept", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"1");
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_layers_only() {
    let sb = Sandbox::new();
    let lower = TarBuilder::new()
        .file("etc/keep", 0o644, b"keep")
        .file("etc/gone", 0o644, b"gone")
        .file("etc/sub/deep", 0o644, b"deep")
        .file("opq/old1", 0o644, b"1")
        .file("opq/dir/old2", 0o644, b"2")
        .file("opq2/old", 0o644, b"x")
        .finish();
    sb.apply(&lower).unwrap();
    let upper = TarBuilder::new()
        .whiteout("etc", "gone")
        .whiteout("etc", "sub")
        .whiteout("etc", "never-existed")
        .whiteout("nodir", "x")
        // Opaque marker before the new content of the same layer.
        .opaque("opq")
        .file("opq/new", 0o644, b"new")
        .file("opq/dir/new2", 0o644, b"new2")
        // Opaque marker after the new content: the new content stays.
        .file("opq2/fresh", 0o644, b"fresh")
        .opaque("opq2")
        // A whiteout after a same-layer entry does not delete it.
        .file("etc/added", 0o644, b"a")
        .whiteout("etc", "added")
        .finish();
    sb.apply(&upper).unwrap();
    assert!(exists(&sb.p("etc/keep")));
    assert!(!exists(&sb.p("etc/gone")));
    assert!(!exists(&sb.p("etc/sub")));
    assert!(exists(&sb.p("etc/added")));
    assert!(!exists(&sb.p("opq/old1")));
    assert!(!exists(&sb.p("opq/dir/old2")));
    assert_eq!(std::fs::read(sb.p("opq/new")).unwrap(), b"new");
    assert_eq!(std::fs::read(sb.p("opq/dir/new2")).unwrap(), b"new2");
    assert!(!exists(&sb.p("opq2/old")));
    assert!(exists(&sb.p("opq2/fresh")));
    // Markers themselves never land on disk.
    assert!(!exists(&sb.p("opq/.wh..wh..opq")));
    assert!(!exists(&sb.p("etc/.wh.gone")));

    // An archive that is not a layer (ADD, a stored image read back): the
    // same names are plain entries and hide nothing.
    let plain = TarBuilder::new()
        .whiteout("etc", "keep")
        .opaque("opq")
        .finish();
    let opts = UnpackOptions {
        whiteouts: false,
        ..Default::default()
    };
    apply_layer(&sb.root, &plain[..], "plain", &opts).unwrap();
    assert!(exists(&sb.p("etc/keep")));
    assert!(exists(&sb.p("etc/.wh.keep")));
    assert!(exists(&sb.p("opq/.wh..wh..opq")));
    assert_eq!(std::fs::read(sb.p("opq/new")).unwrap(), b"new");
}

#[test]
fn later_entries_replace_earlier_ones_of_another_type() {
    let sb = Sandbox::new();
    sb.apply(
        &TarBuilder::new()
            .file("a", 0o644, b"file")
            .dir("b/c", 0o755)
            .symlink("d", "/x")
            .finish(),
    )
    .unwrap();
    sb.apply(
        &TarBuilder::new()
            .dir("a", 0o700)
            .file("b", 0o600, b"now a file")
            .file("d", 0o644, b"real")
            .finish(),
    )
    .unwrap();
    assert!(sb.p("a").is_dir());
    assert_eq!(std::fs::read(sb.p("b")).unwrap(), b"now a file");
    assert!(!std::fs::symlink_metadata(sb.p("d"))
        .unwrap()
        .file_type()
        .is_symlink());
}

#[test]
fn dot_dot_climbing_out_is_refused() {
    for path in ["../victim", "a/../../victim", "./../../outside/victim"] {
        let sb = Sandbox::new();
        let err = sb
            .apply(&TarBuilder::new().file(path, 0o644, b"pwned").finish())
            .unwrap_err();
        assert!(matches!(err, Error::Unpack { .. }), "{path}: {err}");
        assert!(err.to_string().contains("climbs out"), "{err}");
        sb.assert_outside_untouched();
    }
}

#[test]
fn absolute_paths_stay_inside() {
    let sb = Sandbox::new();
    let abs = format!("{}/victim", sb.outside_str());
    sb.apply(&TarBuilder::new().file(&abs, 0o644, b"contained").finish())
        .unwrap();
    sb.assert_outside_untouched();
    assert_eq!(
        std::fs::read(sb.root.join(abs.trim_start_matches('/'))).unwrap(),
        b"contained"
    );
}

#[test]
fn symlink_then_write_through_is_contained() {
    // Within one layer: plant a symlink to the outside dir, write through it.
    let sb = Sandbox::new();
    // `../outside` from the root is the root's own `outside` directory; an
    // escaping implementation would reach the sandbox's (monitored) one.
    std::fs::create_dir(sb.p("outside")).unwrap();
    let tar = TarBuilder::new()
        .symlink("up", "../outside")
        .file("up/escaped", 0o644, b"x")
        .symlink("abs", &sb.outside_str())
        .file("abs/victim", 0o644, b"pwned")
        .finish();
    match sb.apply(&tar) {
        // The absolute target does not exist inside the root: refused.
        Err(e) => assert!(e.to_string().contains("abs/victim"), "{e}"),
        Ok(_) => panic!("write through a dangling in-root symlink succeeded"),
    }
    sb.assert_outside_untouched();
    assert_eq!(std::fs::read(sb.p("outside/escaped")).unwrap(), b"x");

    // When the target exists inside the root, the write lands there.
    let sb = Sandbox::new();
    let inner = sb.root.join(sb.outside_str().trim_start_matches('/'));
    std::fs::create_dir_all(&inner).unwrap();
    let tar = TarBuilder::new()
        .symlink("abs", &sb.outside_str())
        .file("abs/victim", 0o644, b"contained")
        .finish();
    sb.apply(&tar).unwrap();
    sb.assert_outside_untouched();
    assert_eq!(std::fs::read(inner.join("victim")).unwrap(), b"contained");
}

#[test]
fn symlink_from_an_earlier_layer_is_contained() {
    let sb = Sandbox::new();
    sb.apply(
        &TarBuilder::new()
            .symlink("link", &sb.outside_str())
            .symlink("rel", "../outside")
            .finish(),
    )
    .unwrap();
    for upper in [
        TarBuilder::new()
            .file("link/victim", 0o644, b"pwned")
            .finish(),
        TarBuilder::new().file("link/new", 0o644, b"pwned").finish(),
        TarBuilder::new()
            .file("rel/victim", 0o644, b"pwned")
            .finish(),
        TarBuilder::new().dir("link/newdir", 0o755).finish(),
        TarBuilder::new()
            .symlink("link/sym", "/etc/passwd")
            .finish(),
        TarBuilder::new().hardlink("link/hl", "bin/sh").finish(),
    ] {
        let _ = sb.apply(&upper); // refused (dangling in root) or contained
        sb.assert_outside_untouched();
    }
    // Whiteouts and opaque markers through the planted symlinks do nothing outside.
    for upper in [
        TarBuilder::new().whiteout("link", "victim").finish(),
        TarBuilder::new().opaque("link").finish(),
        TarBuilder::new().whiteout("rel", "victim").finish(),
        TarBuilder::new().opaque("rel").finish(),
    ] {
        sb.apply(&upper).unwrap();
        sb.assert_outside_untouched();
    }
    // A final-component symlink is replaced, never written through.
    sb.apply(
        &TarBuilder::new()
            .symlink("f", &format!("{}/victim", sb.outside_str()))
            .finish(),
    )
    .unwrap();
    sb.apply(
        &TarBuilder::new()
            .file("f", 0o644, b"replaced")
            .dir("link", 0o700)
            .finish(),
    )
    .unwrap();
    sb.assert_outside_untouched();
    assert_eq!(std::fs::read(sb.p("f")).unwrap(), b"replaced");
    assert!(sb.p("link").is_dir());
}

#[test]
fn hardlinks_to_outside_are_refused() {
    let sb = Sandbox::new();
    let victim = format!("{}/victim", sb.outside_str());
    let cases = [
        TarBuilder::new()
            .hardlink("hl", "../outside/victim")
            .finish(),
        TarBuilder::new().hardlink("hl", &victim).finish(),
        TarBuilder::new()
            .symlink("s", &sb.outside_str())
            .hardlink("hl", "s/victim")
            .finish(),
        TarBuilder::new()
            .symlink("s2", "..")
            .hardlink("hl", "s2/outside/victim")
            .finish(),
    ];
    for tar in cases {
        assert!(
            sb.apply(&tar).is_err(),
            "hard link outside the root was made"
        );
        sb.assert_outside_untouched();
        assert!(!exists(&sb.p("hl")));
    }
}

#[test]
fn truncated_layer_is_an_error_naming_the_layer() {
    let sb = Sandbox::new();
    let mut tar = TarBuilder::new()
        .file("big", 0o644, &common::noise(100_000, 5))
        .finish();
    tar.truncate(50_000);
    let err = sb.apply(&tar).unwrap_err();
    assert!(err.to_string().contains("test-layer"), "{err}");
}
