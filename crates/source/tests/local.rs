//! Local file and inline sources; the local context with .dockerignore and
//! its safety checks.

use firebuild_source::*;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn opts(cache: &Path) -> SourceOptions {
    SourceOptions::new(cache)
}

fn sample() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "Dockerfile", "FROM scratch\nCOPY . /app\n");
    write(r, ".dockerignore", "# build output\n*.log\nnode_modules\ntarget/\n!target/keep.txt\ndocs/**/*.md\n!docs/README.md\n");
    write(r, "main.go", "package main");
    write(r, "debug.log", "x");
    write(r, "node_modules/x/index.js", "x");
    write(r, "target/bin/app", "x");
    write(r, "target/keep.txt", "keep");
    write(r, "docs/README.md", "readme");
    write(r, "docs/a/b.md", "b");
    write(r, "docs/a/c.txt", "c");
    write(r, "src/lib.rs", "lib");
    write(r, "src/main.rs", "main");
    d
}

fn paths(entries: &[ContextEntry]) -> Vec<String> {
    entries.iter().map(|e| e.path.clone()).collect()
}

#[test]
fn local_file_with_dockerignore() {
    let d = sample();
    let cache = tempfile::tempdir().unwrap();
    let src = load_str(
        d.path().join("Dockerfile").to_str().unwrap(),
        &opts(cache.path()),
    )
    .unwrap();
    assert!(src.dockerfile.starts_with("FROM scratch"));
    let ctx = &src.context;
    assert_eq!(ctx.kind(), "local");
    let all = paths(&ctx.walk(".").unwrap());
    assert_eq!(
        all,
        vec![
            "",
            ".dockerignore",
            "Dockerfile",
            "docs",
            "docs/README.md",
            "docs/a",
            "docs/a/c.txt",
            "main.go",
            "src",
            "src/lib.rs",
            "src/main.rs",
            "target",
            "target/keep.txt",
        ]
    );
    assert_eq!(ctx.read("src/lib.rs").unwrap(), b"lib");
    assert_eq!(ctx.read("/src/../src/lib.rs").unwrap(), b"lib");
    assert!(matches!(
        ctx.read("debug.log"),
        Err(SourceError::Ignored { .. })
    ));
    assert!(matches!(
        ctx.read("node_modules/x/index.js"),
        Err(SourceError::Ignored { .. })
    ));
    assert_eq!(ctx.read("target/keep.txt").unwrap(), b"keep");
    assert!(matches!(
        ctx.read("nope"),
        Err(SourceError::NotFound { .. })
    ));

    // Wildcard sources (one path element at a time), ignored files left out.
    assert_eq!(
        ctx.glob("src/*.rs").unwrap(),
        vec!["src/lib.rs", "src/main.rs"]
    );
    assert_eq!(ctx.glob("*.log").unwrap(), Vec::<String>::new());
    assert_eq!(ctx.glob("docs/*/c.*").unwrap(), vec!["docs/a/c.txt"]);
    assert_eq!(ctx.glob("main.go").unwrap(), vec!["main.go"]);
    assert!(ctx.glob("missing.go").is_err());

    // Walking a sub-directory gives it and its kept children.
    let sub = ctx.walk("src").unwrap();
    assert_eq!(paths(&sub), vec!["src", "src/lib.rs", "src/main.rs"]);
    assert_eq!(sub[0].kind, EntryKind::Dir);
    assert!(sub[1].host_path.as_ref().unwrap().ends_with("src/lib.rs"));
}

#[test]
fn explicit_context_dir_and_dockerfile_specific_ignore() {
    let d = sample();
    let other = tempfile::tempdir().unwrap();
    write(other.path(), "Dockerfile.web", "FROM scratch\n");
    write(other.path(), "Dockerfile.web.dockerignore", "src\n");
    let cache = tempfile::tempdir().unwrap();
    let mut o = opts(cache.path());
    o.context_dir = Some(d.path().to_path_buf());
    let src = load_str(other.path().join("Dockerfile.web").to_str().unwrap(), &o).unwrap();
    // The context is the given dir; `<Dockerfile>.dockerignore` beside the
    // Dockerfile takes precedence over the context's .dockerignore.
    assert!(matches!(
        src.context.read("src/lib.rs"),
        Err(SourceError::Ignored { .. })
    ));
    assert_eq!(src.context.read("debug.log").unwrap(), b"x");
    assert_eq!(src.context.read("main.go").unwrap(), b"package main");

    let src = load_str(
        other.path().join("Dockerfile.web").to_str().unwrap(),
        &opts(cache.path()),
    )
    .unwrap();
    assert!(matches!(
        src.context.read("src"),
        Err(SourceError::Ignored { .. }) | Err(SourceError::NotFound { .. })
    ));
}

#[test]
fn paths_cannot_escape_the_context() {
    let outside = tempfile::tempdir().unwrap();
    write(outside.path(), "secret", "s");
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    write(r, "Dockerfile", "FROM scratch\n");
    write(r, "dir/file", "f");
    symlink("dir/file", r.join("rel_ok")).unwrap();
    symlink("../dir/file", r.join("dir/up")).unwrap();
    symlink("dir", r.join("dirlink")).unwrap();
    symlink(outside.path().join("secret"), r.join("abs_out")).unwrap();
    symlink("../../../../../../../../etc/passwd", r.join("dir/rel_out")).unwrap();
    symlink("loop2", r.join("loop1")).unwrap();
    symlink("loop1", r.join("loop2")).unwrap();
    let ctx = BuildContext::Local(LocalContext::open_dir(r, None).unwrap());

    assert_eq!(ctx.read("rel_ok").unwrap(), b"f");
    assert_eq!(ctx.read("dirlink/file").unwrap(), b"f");
    assert_eq!(ctx.read("dir/up").unwrap(), b"f");
    assert_eq!(ctx.read("dirlink/up").unwrap(), b"f");
    for (p, needle) in [
        ("../secret", "../secret"),
        ("dir/../../x", "dir/../../x"),
        ("abs_out", "abs_out"),
        ("dir/rel_out", "dir/rel_out"),
        ("loop1", "loop1"),
    ] {
        match ctx.read(p) {
            Err(e @ SourceError::Escape { .. }) => {
                assert!(e.to_string().contains(needle), "{e}");
                assert!(e.to_string().contains("inside the build context"), "{e}");
            }
            other => panic!("{p}: expected an escape error, got {:?}", other.map(|_| ())),
        }
    }
    // Links below a walked directory are listed as links, not followed.
    let entries = ctx.walk("dir").unwrap();
    let link = entries.iter().find(|e| e.path == "dir/rel_out").unwrap();
    assert!(matches!(&link.kind, EntryKind::Symlink(t) if t.ends_with("etc/passwd")));
}

#[test]
fn inline_dockerfile_has_no_context() {
    let cache = tempfile::tempdir().unwrap();
    let src = load_str("FROM scratch\nCOPY app /app\n", &opts(cache.path())).unwrap();
    assert_eq!(src.name, "<inline>");
    assert_eq!(src.context.kind(), "none");
    let e = src.context.read("app").unwrap_err();
    assert!(matches!(e, SourceError::NoContext { .. }));
    assert!(
        e.to_string()
            .contains("app: the Dockerfile was given inline"),
        "{e}"
    );
    assert!(src.context.glob("*.txt").is_err());

    // With --context an inline Dockerfile gets that directory.
    let d = sample();
    let mut o = opts(cache.path());
    o.context_dir = Some(d.path().to_path_buf());
    let src = load_str("FROM scratch\n", &o).unwrap();
    assert_eq!(src.context.read("main.go").unwrap(), b"package main");
}

#[test]
fn missing_file_and_bad_ignore_file() {
    let cache = tempfile::tempdir().unwrap();
    let e = load_str("/no/such/dir/Dockerfile", &opts(cache.path())).unwrap_err();
    assert!(e.to_string().contains("/no/such/dir/Dockerfile"), "{e}");
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "Dockerfile", "FROM scratch\n");
    write(d.path(), ".dockerignore", "ok\n!\n");
    let e = load_str(
        d.path().join("Dockerfile").to_str().unwrap(),
        &opts(cache.path()),
    )
    .unwrap_err();
    assert!(matches!(e, SourceError::BadIgnorePattern { .. }), "{e}");
    assert!(e.to_string().contains(".dockerignore"), "{e}");
}
