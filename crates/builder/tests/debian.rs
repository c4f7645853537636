//! A real-world package install: `apt-get install` on a Debian base made
//! by `debootstrap --variant=minbase bookworm` (needs the Debian mirror;
//! skipped, saying so, when it cannot be reached). The debootstrap tree is
//! cached as a tarball in /var/cache/firebuild-ci/ (or $FIREBUILD_CI_CACHE)
//! so only the first run pays for it. Run as root.

mod common;

use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use firebuild_builder::{build, ImageType};

const MIRROR: &str = "http://deb.debian.org/debian";

fn mirror_reachable() -> bool {
    let Ok(mut addrs) = ("deb.debian.org", 80).to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)).is_ok())
}

/// The cached debootstrap tarball, made on first use.
fn debootstrap_tar() -> PathBuf {
    let dir = std::env::var_os("FIREBUILD_CI_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/firebuild-ci"));
    let tar = dir.join("debootstrap-bookworm-minbase.tar");
    if tar.exists() {
        return tar;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tree = tempfile::tempdir_in(&dir).unwrap();
    let st = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(tree.path())
        .arg(MIRROR)
        .status()
        .expect("running debootstrap (apt-get install debootstrap)");
    assert!(st.success(), "debootstrap failed");
    let partial = dir.join("debootstrap.tar.partial");
    let st = Command::new("tar")
        .args(["--numeric-owner", "--xattrs", "-cf"])
        .arg(&partial)
        .arg("-C")
        .arg(tree.path())
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success(), "tar of the debootstrap tree failed");
    std::fs::rename(&partial, &tar).unwrap();
    tar
}

#[test]
fn apt_get_install_on_a_debootstrap_base() {
    if !mirror_reachable() {
        eprintln!("SKIPPED: the Debian mirror (deb.debian.org) is unreachable");
        return;
    }
    let tar = debootstrap_tar();
    let f = Fixture::new();
    let ctx_tar = f.ctx().join("bookworm.tar");
    if std::fs::hard_link(&tar, &ctx_tar).is_err() {
        std::fs::copy(&tar, &ctx_tar).unwrap();
    }
    let mut o = f.opts(
        "FROM scratch\nADD bookworm.tar /\nCMD [\"/bin/bash\"]\n",
        "debian:bookworm-test",
    );
    o.kind = ImageType::Baseos;
    let base = build(&f.store, &o).expect("importing the debootstrap tree");
    assert_eq!(base.tag.to_string(), "_/debian:bookworm-test");
    std::fs::remove_file(&ctx_tar).unwrap();

    let df = "FROM debian:bookworm-test\n\
              RUN apt-get update && apt-get install -y --no-install-recommends hello \
              && rm -rf /var/lib/apt/lists/*\n\
              CMD [\"hello\"]\n";
    let out = f.build(df, "tests/hello:1").expect("apt-get install");
    let img = out.dir.join("rootfs");
    fsck_clean(&img);
    assert_eq!(stat(&img, "/usr/bin/hello").unwrap().3, "regular");
    assert_eq!(
        stat(&img, "/usr/bin/su").map(|s| s.0 & 0o4000),
        Some(0o4000),
        "setuid kept"
    );
    assert!(cat(&img, "/var/lib/dpkg/status").contains("Package: hello"));
    assert_eq!(out.metadata.entrypoint_info.cmd, vec!["hello"]);
}
