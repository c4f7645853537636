//! git sources from a bare repository the test creates, over file:// and
//! over `git daemon` on 127.0.0.1, with branch, tag and commit refs.

use firebuild_source::*;
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

struct Repo {
    _dir: tempfile::TempDir,
    /// Directory holding `repo.git` (the daemon's base path).
    base: PathBuf,
    bare: PathBuf,
    first: String,
    second: String,
}

/// main: first commit (a=one, tag v1), second commit (a=two);
/// feature: a=three. sub/ has its own Dockerfile and .dockerignore.
fn make_repo() -> Repo {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    fs::create_dir(&work).unwrap();
    git(&work, &["init", "-q"]);
    write(&work, "Dockerfile", "FROM scratch\nCOPY a /a\n");
    write(&work, "a", "one");
    write(&work, "sub/Dockerfile", "FROM scratch\nCOPY . /\n");
    write(&work, "sub/.dockerignore", "secret\n");
    write(&work, "sub/secret", "s");
    write(&work, "sub/public", "p");
    std::os::unix::fs::symlink("../../../../../etc/hostname", work.join("sub/escape")).unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "one"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    write(&work, "a", "two");
    git(&work, &["commit", "-q", "-am", "two"]);
    let second = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "-b", "feature"]);
    write(&work, "a", "three");
    git(&work, &["commit", "-q", "-am", "three"]);
    git(&work, &["checkout", "-q", "main"]);
    let base = dir.path().join("srv");
    fs::create_dir(&base).unwrap();
    git(
        dir.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().unwrap(),
            base.join("repo.git").to_str().unwrap(),
        ],
    );
    let bare = base.join("repo.git");
    Repo {
        _dir: dir,
        base,
        bare,
        first,
        second,
    }
}

fn load_a(spec: &str, cache: &Path) -> (String, LoadedSource) {
    let src = load_str(spec, &SourceOptions::new(cache)).unwrap_or_else(|e| panic!("{spec}: {e}"));
    let a = String::from_utf8(src.context.read("a").unwrap()).unwrap();
    (a, src)
}

#[test]
fn file_url_branch_tag_commit() {
    let r = make_repo();
    let cache = tempfile::tempdir().unwrap();
    let url = format!("file://{}", r.bare.display());

    let (a, src) = load_a(&format!("{url}:/Dockerfile#main"), cache.path());
    assert_eq!(a, "two");
    assert_eq!(src.dockerfile, "FROM scratch\nCOPY a /a\n");
    assert_eq!(src.git_commit.as_deref(), Some(r.second.as_str()));

    assert_eq!(load_a(&format!("{url}#feature"), cache.path()).0, "three");
    assert_eq!(
        load_a(&format!("{url}:/Dockerfile#v1"), cache.path()).0,
        "one"
    );
    assert_eq!(
        load_a(&format!("git+{url}"), cache.path()).0,
        "two",
        "default branch"
    );
    assert_eq!(
        load_a(&format!("{url}#{}", r.first), cache.path()).0,
        "one",
        "full commit"
    );
    assert_eq!(
        load_a(&format!("{url}#{}", &r.first[..10]), cache.path()).0,
        "one",
        "short commit"
    );

    // One cached repository for the URL, reused by every load.
    let repos: Vec<_> = fs::read_dir(cache.path().join("git"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".git"))
        .collect();
    assert_eq!(repos.len(), 1);
}

#[test]
fn subdirectory_context_with_dockerignore_and_safety() {
    let r = make_repo();
    let cache = tempfile::tempdir().unwrap();
    let spec = format!("file://{}:/sub/Dockerfile#main", r.bare.display());
    let src = load_str(&spec, &SourceOptions::new(cache.path())).unwrap();
    assert_eq!(src.dockerfile, "FROM scratch\nCOPY . /\n");
    let names: Vec<String> = src
        .context
        .walk(".")
        .unwrap()
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(names.contains(&"public".to_string()), "{names:?}");
    assert!(!names.contains(&"secret".to_string()), "{names:?}");
    assert!(matches!(
        src.context.read("secret"),
        Err(SourceError::Ignored { .. })
    ));
    assert!(matches!(
        src.context.read("../a"),
        Err(SourceError::Escape { .. })
    ));
    assert!(matches!(
        src.context.read("escape"),
        Err(SourceError::Escape { .. })
    ));
}

#[test]
fn git_errors() {
    let r = make_repo();
    let cache = tempfile::tempdir().unwrap();
    let o = SourceOptions::new(cache.path());
    let url = format!("file://{}", r.bare.display());
    let e = load_str(&format!("{url}#no-such-branch"), &o).unwrap_err();
    assert!(matches!(e, SourceError::GitRef { .. }), "{e}");
    assert!(e.to_string().contains("no-such-branch"), "{e}");
    let e = load_str(&format!("{url}#deadbeefdeadbeef"), &o).unwrap_err();
    assert!(matches!(e, SourceError::GitRef { .. }), "{e}");
    let e = load_str(&format!("{url}:/nope/Dockerfile#main"), &o).unwrap_err();
    assert!(e.to_string().contains("nope/Dockerfile"), "{e}");
    let e = load_str("file:///no/such/repo.git#main", &o).unwrap_err();
    assert!(matches!(e, SourceError::Git { .. }), "{e}");
    assert!(e.to_string().contains("/no/such/repo.git"), "{e}");
}

/// `git daemon` on 127.0.0.1, killed on drop.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(base: &Path) -> Daemon {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let mut d = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                let _ = d.child.kill();
                panic!("git daemon did not start listening on port {port}");
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("git daemon exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        d.port = port;
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn git_daemon_branch_tag_commit() {
    let r = make_repo();
    let daemon = Daemon::start(&r.base);
    let cache = tempfile::tempdir().unwrap();
    let url = format!("git://127.0.0.1:{}/repo.git", daemon.port);
    assert_eq!(
        load_a(&format!("{url}:/Dockerfile#v1"), cache.path()).0,
        "one"
    );
    assert_eq!(load_a(&format!("{url}#feature"), cache.path()).0, "three");
    assert_eq!(
        load_a(&format!("{url}#{}", r.second), cache.path()).0,
        "two"
    );
    assert_eq!(
        load_a(&format!("{url}#{}", &r.first[..8]), cache.path()).0,
        "one"
    );
    // A commit already in the cache needs no server.
    drop(daemon);
    assert_eq!(load_a(&format!("{url}#{}", r.first), cache.path()).0, "one");
}
