//! Hostile archives and import trees: each tries to read a host file, or
//! to make the host pay in memory or disk. Each must fail with an error
//! that says why, within the limits, and leave nothing in the cache.

mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::files_under;
use firebuild_oci::{apply_layer, import, Error, ImageRecords, Platform, SizeLimit, UnpackOptions};

/// A tar stream built entry by entry with the `tar` crate.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    fn header(kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }

    fn file(mut self, path: &str, data: &[u8]) -> Tar {
        let mut h = Self::header(tar::EntryType::Regular, data.len() as u64);
        self.0.append_data(&mut h, path, data).unwrap();
        self
    }

    fn symlink(mut self, path: &str, target: &str) -> Tar {
        let mut h = Self::header(tar::EntryType::Symlink, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }

    fn done(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// A host directory with a private file the import must never read.
fn host_secret(dir: &Path) -> PathBuf {
    let host = dir.join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("file.json"), br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"secret":"host-only"}"#).unwrap();
    std::fs::write(host.join("shadow"), b"root:$6$host-only-hash").unwrap();
    host
}

/// Nothing under the cache but empty directories and its lock.
fn assert_cache_empty(cache: &Path) {
    let blobs: Vec<PathBuf> = files_under(&cache.join("blobs"));
    assert!(blobs.is_empty(), "blobs left in the cache: {blobs:?}");
    assert!(ImageRecords::new(cache).list().unwrap().is_empty());
}

fn import_tar(dir: &Path, cache: &Path, tar: Vec<u8>) -> Error {
    let path = dir.join("in.tar");
    std::fs::write(&path, tar).unwrap();
    import(
        cache,
        &path,
        "hostile/img:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err()
}

#[test]
fn import_reads_nothing_outside_its_archive() {
    let d = tempfile::tempdir().unwrap();
    let host = host_secret(d.path());
    let cache = d.path().join("cache");

    // The config through a planted symlink to a host directory.
    let tar = Tar::new()
        .symlink("l", host.to_str().unwrap())
        .file(
            "manifest.json",
            br#"[{"Config":"l/file.json","Layers":[]}]"#,
        )
        .done();
    let err = import_tar(d.path(), &cache, tar).to_string();
    assert!(err.contains("l/file.json is missing"), "{err}");
    assert_cache_empty(&cache);

    // A layer through the same link.
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#;
    let tar = Tar::new()
        .symlink("l", host.to_str().unwrap())
        .file("c.json", config)
        .file(
            "manifest.json",
            br#"[{"Config":"c.json","Layers":["l/shadow"]}]"#,
        )
        .done();
    let err = import_tar(d.path(), &cache, tar).to_string();
    assert!(err.contains("l/shadow is missing"), "{err}");
    assert_cache_empty(&cache);

    // A layout whose blobs are another cache's.
    let other = d.path().join("other-cache");
    std::fs::create_dir_all(other.join("blobs/sha256")).unwrap();
    let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
    let digest = sha256(body);
    std::fs::write(other.join("blobs/sha256").join(&digest), body).unwrap();
    let index = format!(
        r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:{digest}","size":{}}}]}}"#,
        body.len()
    );
    let tar = Tar::new()
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .file("index.json", index.as_bytes())
        .symlink("blobs", other.join("blobs").to_str().unwrap())
        .done();
    let err = import_tar(d.path(), &cache, tar).to_string();
    assert!(err.contains("is missing from the archive"), "{err}");
    assert_cache_empty(&cache);

    // The same tricks in a directory given to import.
    let tree = d.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::os::unix::fs::symlink(&host, tree.join("l")).unwrap();
    std::fs::write(
        tree.join("manifest.json"),
        br#"[{"Config":"l/file.json","Layers":[]}]"#,
    )
    .unwrap();
    let err = import(
        &cache,
        &tree,
        "hostile/img:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("l/file.json is missing"), "{err}");
    assert_cache_empty(&cache);

    // A FIFO named as the config is refused, not opened (which would block).
    let tree = d.path().join("fifo-tree");
    std::fs::create_dir_all(&tree).unwrap();
    let fifo = std::ffi::CString::new(tree.join("c.json").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    std::fs::write(
        tree.join("manifest.json"),
        br#"[{"Config":"c.json","Layers":[]}]"#,
    )
    .unwrap();
    let err = import(
        &cache,
        &tree,
        "hostile/img:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a regular file"), "{err}");
    assert_cache_empty(&cache);
}

fn sha256(data: &[u8]) -> String {
    firebuild_oci::digest::Digest::sha256_of(data)
        .hex()
        .to_string()
}

#[test]
fn oversized_manifests_and_configs_are_refused_unread() {
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    // A 5 MiB manifest.json (JSON whitespace): over the 4 MiB cap.
    let mut big = vec![b' '; 5 << 20];
    big.extend_from_slice(br#"[{"Config":"c.json","Layers":[]}]"#);
    let tree = d.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("manifest.json"), &big).unwrap();
    let err = import(
        &cache,
        &tree,
        "hostile/img:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("manifest.json is larger than 4194304 bytes"),
        "{err}"
    );
    assert_cache_empty(&cache);

    // A 9 MiB config: over the 8 MiB cap, and nothing staged is kept.
    std::fs::write(
        tree.join("manifest.json"),
        br#"[{"Config":"c.json","Layers":[]}]"#,
    )
    .unwrap();
    std::fs::write(tree.join("c.json"), vec![b' '; 9 << 20]).unwrap();
    let err = import(
        &cache,
        &tree,
        "hostile/img:1",
        &Platform::host(),
        &SizeLimit::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("c.json is larger than 8388608 bytes"), "{err}");
    assert_cache_empty(&cache);
}

/// A GNU header of `kind` declaring `size` bytes, followed by only a few.
fn declared_but_short(kind: tar::EntryType, size: u64) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_path("././@LongLink").unwrap();
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&[b'a'; 4096]);
    out
}

#[test]
fn huge_long_names_and_pax_headers_are_refused_at_their_header() {
    let d = tempfile::tempdir().unwrap();
    for (kind, what) in [
        (tar::EntryType::GNULongName, "long-name"),
        (tar::EntryType::GNULongLink, "long-link"),
        (tar::EntryType::XHeader, "PAX header"),
    ] {
        let root = d.path().join(what);
        let stream = declared_but_short(kind, 2 << 30);
        let err = apply_layer(&root, &stream[..], "hostile", &UnpackOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("a tar {what} entry declares 2147483648 bytes")),
            "{err}"
        );
        assert!(err.len() < 400, "a short message: {err}");
    }

    // A long name within the bound still unpacks, and its error (if any)
    // quotes it cut short: here a 300-byte component is too long for the
    // filesystem (255).
    let long = "n".repeat(300);
    let stream = Tar::new().file(&long, b"x").done();
    let err = apply_layer(
        &d.path().join("long"),
        &stream[..],
        "hostile",
        &UnpackOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("(300 bytes)"), "{err}");
    assert!(err.len() < 600, "{err}");
}

#[test]
fn the_unpacked_size_limit_stops_bombs_before_they_are_written() {
    let d = tempfile::tempdir().unwrap();
    // A zstd bomb: 64 MiB of zeros compress to a few KB.
    let zeros = vec![0u8; 64 << 20];
    let tar = Tar::new().file("bomb", &zeros).done();
    let bomb = zstd::encode_all(&tar[..], 19).unwrap();
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    let blob = d.path().join("bomb.tar.zst");
    std::fs::write(&blob, &bomb).unwrap();
    let root = d.path().join("root");
    let opts = UnpackOptions {
        limit: SizeLimit::new(16 << 20),
        ..Default::default()
    };
    let err = firebuild_oci::apply_layer_file(&root, &blob, "layer bomb", &opts).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("limit of 16 MiB"), "{err}");
    assert!(!root.join("bomb").exists(), "nothing of it was written");

    // The budget is the image's: two layers of 6 MiB fit 16 MiB, a third
    // does not.
    let layer = Tar::new().file("f", &vec![1u8; 6 << 20]).done();
    let opts = UnpackOptions {
        limit: SizeLimit::new(16 << 20),
        ..Default::default()
    };
    apply_layer(&root, &layer[..], "layer 1", &opts).unwrap();
    apply_layer(&root, &layer[..], "layer 2", &opts).unwrap();
    let err = apply_layer(&root, &layer[..], "layer 3", &opts).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[test]
fn sparse_files_keep_their_holes() {
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // 256 MiB apparent, 8 KiB of data in two places.
    let mut f = std::fs::File::create(src.join("sparse")).unwrap();
    f.write_all(&[7u8; 4096]).unwrap();
    f.set_len(256 << 20).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[9u8; 4096], (128 << 20) + 8192).unwrap();
    drop(f);
    let tarball = d.path().join("sparse.tar");
    let ok = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("sparse")
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(std::fs::metadata(&tarball).unwrap().len() < 1 << 20);

    let root = d.path().join("root");
    let stream = std::fs::read(&tarball).unwrap();
    apply_layer(&root, &stream[..], "sparse", &UnpackOptions::default()).unwrap();
    let md = std::fs::metadata(root.join("sparse")).unwrap();
    assert_eq!(md.len(), 256 << 20);
    assert!(
        md.blocks() * 512 < 1 << 20,
        "holes were written: {} bytes allocated",
        md.blocks() * 512
    );
    let got = std::fs::File::open(root.join("sparse")).unwrap();
    let mut buf = [0u8; 4096];
    got.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(buf, [7u8; 4096]);
    got.read_exact_at(&mut buf, (128 << 20) + 8192).unwrap();
    assert_eq!(buf, [9u8; 4096]);
    got.read_exact_at(&mut buf, 64 << 20).unwrap();
    assert_eq!(buf, [0u8; 4096]);

    // Many data regions: old-GNU sparse extension blocks follow the header;
    // the entries after them (a long name among them) still read right.
    let many = src.join("many");
    let f = std::fs::File::create(&many).unwrap();
    for i in 0..40u64 {
        f.write_all_at(&[i as u8 + 1; 512], i * (1 << 20)).unwrap();
    }
    drop(f);
    let long = "d".repeat(200);
    std::fs::create_dir_all(src.join(&long)).unwrap();
    std::fs::write(src.join(&long).join("after"), "after the sparse file").unwrap();
    let tarball = d.path().join("many.tar");
    let ok = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .args(["many", &long])
        .status()
        .unwrap();
    assert!(ok.success());
    let stream = std::fs::read(&tarball).unwrap();
    let root = d.path().join("root-many");
    apply_layer(&root, &stream[..], "many", &UnpackOptions::default()).unwrap();
    assert_eq!(
        std::fs::read(root.join("many")).unwrap(),
        std::fs::read(&many).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(root.join(&long).join("after")).unwrap(),
        "after the sparse file"
    );

    // A 1 TiB sparse file in a tiny archive: the limit refuses it by its
    // declared size, before anything is written.
    let big = src.join("huge");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(1 << 40)
        .unwrap();
    let tarball = d.path().join("huge.tar");
    let ok = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(&src)
        .arg("huge")
        .status()
        .unwrap();
    assert!(ok.success());
    let stream = std::fs::read(&tarball).unwrap();
    assert!(stream.len() < 64 << 10);
    let err = apply_layer(
        &d.path().join("root2"),
        &stream[..],
        "huge",
        &UnpackOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
}

#[test]
fn paths_deeper_than_path_max_unpack() {
    let d = tempfile::tempdir().unwrap();
    // 60 components of 99 bytes: ~6000 bytes, each component legal.
    let dirs: Vec<String> = (0..60)
        .map(|i| format!("{i:02}{}", "d".repeat(97)))
        .collect();
    let path = format!("{}/leaf", dirs.join("/"));
    assert!(path.len() > 4096);
    let stream = Tar::new().file(&path, b"deep").done();
    let root = d.path().join("root");
    apply_layer(&root, &stream[..], "deep", &UnpackOptions::default()).unwrap();
    // Read it back one component at a time (the host path is too long too).
    let mut dir = rustix::fs::open(
        &root,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    for c in &dirs {
        dir = rustix::fs::openat(
            &dir,
            c.as_str(),
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
    }
    let leaf = rustix::fs::openat(
        &dir,
        "leaf",
        rustix::fs::OFlags::RDONLY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(leaf), &mut text).unwrap();
    assert_eq!(text, "deep");
}
