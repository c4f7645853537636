//! COPY and ADD rules, end to end. Run as root.

mod common;

use std::io::{Read, Write};
use std::process::Command;

use common::*;

/// Serves `body` for every request on 127.0.0.1 (bounded: stops after
/// `count` requests).
fn serve(body: &'static [u8], count: usize) -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let h = std::thread::spawn(move || {
        for _ in 0..count {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nLast-Modified: Wed, 21 Oct 2015 07:28:00 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(head.as_bytes());
            let _ = s.write_all(body);
        }
    });
    (format!("http://{addr}"), h)
}

fn tar_of(dir: &std::path::Path, out: &std::path::Path, flag: &str) {
    let st = Command::new("tar")
        .arg(flag)
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn copy_and_add_follow_docker_rules() {
    let f = Fixture::new();
    f.busybox_base();
    f.write("a.txt", "A\n");
    f.write("b.txt", "B\n");
    f.write("secret.txt", "S\n");
    f.write(".dockerignore", "secret.txt\n");
    f.write("dir/sub/c.txt", "C\n");
    std::os::unix::fs::symlink("sub/c.txt", f.ctx().join("dir/link")).unwrap();
    std::fs::hard_link(f.ctx().join("dir/sub/c.txt"), f.ctx().join("dir/hard")).unwrap();
    std::fs::set_permissions(
        f.ctx().join("b.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    // Archives, one per compression.
    let arch = f.dir.path().join("arch");
    std::fs::create_dir_all(arch.join("inner")).unwrap();
    std::fs::write(arch.join("inner/x.txt"), "X\n").unwrap();
    std::os::unix::fs::chown(arch.join("inner/x.txt"), Some(33), Some(44)).unwrap();
    for (name, flag) in [
        ("a.tar", "-a"),
        ("a.tar.gz", "-z"),
        ("a.tar.bz2", "-j"),
        ("a.tar.xz", "-J"),
        ("a.tar.zst", "--zstd"),
    ] {
        tar_of(&arch, &f.ctx().join(name), flag);
    }
    // Compressed, but not a tar: copied as is.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"just text").unwrap();
    std::fs::write(f.ctx().join("plain.gz"), gz.finish().unwrap()).unwrap();
    let (url, server) = serve(b"remote body\n", 1);
    let digest = {
        use sha2::Digest;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(b"remote body\n"))
        )
    };

    let df = format!(
        "FROM busybox:test\n\
         COPY a.txt /dst/file-renamed\n\
         COPY a.txt /dst/dir/\n\
         COPY *.txt /glob/\n\
         COPY dir /copied\n\
         COPY dir/link /followed\n\
         COPY --chown=app:staff --chmod=0640 b.txt /owned\n\
         COPY --chown=4321 b.txt /owned-num\n\
         COPY b.txt /mode-kept\n\
         WORKDIR /w\n\
         COPY a.txt rel/\n\
         COPY --link a.txt /linked\n\
         ADD a.tar /unpacked-plain/\n\
         ADD a.tar.gz /unpacked-gz\n\
         ADD a.tar.bz2 /unpacked-bz2/\n\
         ADD a.tar.xz /unpacked-xz/\n\
         ADD a.tar.zst /unpacked-zst/\n\
         ADD plain.gz /notar/\n\
         ADD --checksum={digest} {url}/files/remote.txt /remote/\n\
         COPY --exclude=*.txt dir /excluded\n"
    );
    let out = f.build(&df, "tests/copy:1").expect("build");
    server.join().unwrap();
    let img = out.dir.join("rootfs");
    fsck_clean(&img);
    assert_eq!(cat(&img, "/dst/file-renamed"), "A\n");
    assert_eq!(cat(&img, "/dst/dir/a.txt"), "A\n");
    assert_eq!(cat(&img, "/glob/a.txt"), "A\n");
    assert_eq!(cat(&img, "/glob/b.txt"), "B\n");
    assert!(
        stat(&img, "/glob/secret.txt").is_none(),
        ".dockerignore applies to globs"
    );
    assert_eq!(cat(&img, "/copied/sub/c.txt"), "C\n");
    assert!(
        stat(&img, "/copied/dir").is_none(),
        "a directory copies its contents"
    );
    assert_eq!(stat(&img, "/copied/link").unwrap().3, "symlink");
    assert!(
        debugfs(&img, "stat /copied/hard").contains("Links: 2"),
        "hard links kept"
    );
    assert_eq!(
        stat(&img, "/followed").unwrap().3,
        "regular",
        "a named symlink source is followed"
    );
    assert_eq!(
        stat(&img, "/owned").unwrap(),
        (0o640, 1000, 50, "regular".into())
    );
    assert_eq!(stat(&img, "/owned-num").unwrap().1, 4321);
    assert_eq!(
        stat(&img, "/mode-kept").unwrap(),
        (0o750, 0, 0, "regular".into())
    );
    assert_eq!(cat(&img, "/w/rel/a.txt"), "A\n");
    assert_eq!(cat(&img, "/linked"), "A\n");
    for d in ["plain", "gz", "bz2", "xz", "zst"] {
        let p = format!("/unpacked-{d}/inner/x.txt");
        assert_eq!(cat(&img, &p), "X\n", "{d}");
        let (_, uid, gid, _) = stat(&img, &p).unwrap();
        assert_eq!((uid, gid), (33, 44), "archive owners kept ({d})");
    }
    assert_eq!(stat(&img, "/notar/plain.gz").unwrap().3, "regular");
    assert_eq!(cat(&img, "/remote/remote.txt"), "remote body\n");
    assert_eq!(stat(&img, "/remote/remote.txt").unwrap().0, 0o600);
    assert_eq!(stat(&img, "/excluded/link").unwrap().3, "symlink");
    assert!(
        stat(&img, "/excluded/sub/c.txt").is_none(),
        "--exclude applies"
    );
}

#[test]
fn sources_may_not_escape_the_context_and_bad_copies_fail_clearly() {
    let f = Fixture::new();
    f.busybox_base();
    f.write("a.txt", "A\n");
    f.write("b.txt", "B\n");
    f.write("secret.txt", "S\n");
    f.write(".dockerignore", "secret.txt\n");
    std::fs::write(f.dir.path().join("outside.txt"), "O").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", f.ctx().join("abs-link")).unwrap();
    std::os::unix::fs::symlink("../outside.txt", f.ctx().join("rel-link")).unwrap();
    let cases = [
        ("COPY ../outside.txt /x", "outside.txt"),
        ("COPY abs-link /x", "abs-link"),
        ("COPY rel-link /x", "rel-link"),
        ("COPY secret.txt /x", "secret.txt"),
        ("COPY missing.txt /x", "missing.txt"),
        (
            "COPY nomatch*.bin /x/",
            "COPY nomatch*.bin: no source files were specified",
        ),
        (
            "COPY a.txt b.txt /notdir",
            "COPY with more than one source file, the destination must be a directory",
        ),
        ("COPY --chmod=9z a.txt /x", "invalid --chmod=9z"),
        (
            "ADD --checksum=sha256:0000 http://127.0.0.1:9/x /x",
            "http://127.0.0.1:9/x",
        ),
        ("COPY --chown=ghost a.txt /x", "ghost"),
        (
            "COPY --from=nosuchstage-or-image a.txt /x",
            "nosuchstage-or-image",
        ),
    ];
    for (i, (line, needle)) in cases.iter().enumerate() {
        let err = f
            .build(
                &format!("FROM busybox:test\n{line}\n"),
                &format!("tests/bad:{i}"),
            )
            .expect_err(line)
            .to_string();
        assert!(err.contains(needle), "{line}: {err}");
        assert!(
            err.contains("Dockerfile:2") || err.contains("base image"),
            "{line}: no location: {err}"
        );
    }
    assert!(mounts_under(f.dir.path()).is_empty());
    // A checksum mismatch on a real download.
    let (url, server) = serve(b"abc", 1);
    let err = f
        .build(
            &format!(
                "FROM busybox:test\nADD --checksum=sha256:{} {url}/f /f\n",
                "0".repeat(64)
            ),
            "tests/bad:sum",
        )
        .unwrap_err()
        .to_string();
    server.join().unwrap();
    assert!(err.contains("checksum mismatch"), "{err}");
}

#[test]
fn an_added_archive_past_the_builds_unpacked_size_limit_is_refused() {
    let f = Fixture::new();
    f.busybox_base();
    let arch = f.dir.path().join("big");
    std::fs::create_dir(&arch).unwrap();
    // 256 KiB of random-looking bytes: no holes to save it.
    let data: Vec<u8> = (0u32..65536)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    std::fs::write(arch.join("data.bin"), data).unwrap();
    tar_of(&arch, &f.ctx().join("big.tar"), "-a");
    let df = "FROM busybox:test\nADD big.tar /unpacked/\n";

    let mut o = f.opts(df, "tests/add-limit:1");
    o.unpacked_limit = 64 << 10;
    let err = firebuild_builder::build(&f.store, &o)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("more than its limit of 65536 bytes") && err.contains("Dockerfile:2"),
        "{err}"
    );
    assert!(!f.store.contains(&"tests/add-limit:1".parse().unwrap()));
    assert!(mounts_under(f.dir.path()).is_empty());

    // The same archive under a limit it fits.
    let mut o = f.opts(df, "tests/add-limit:2");
    o.unpacked_limit = 1 << 20;
    firebuild_builder::build(&f.store, &o).unwrap();
}
