//! Fetching a ref of a git repository with the system `git` into a
//! cache (one bare repository per URL, reused), then checking the commit
//! out into a fresh directory.

use crate::error::SourceError;
use crate::spec::GitSpec;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A checked-out commit.
pub(crate) struct Checkout {
    pub dir: tempfile::TempDir,
    pub commit: String,
}

fn run_git(repo: &str, git_dir: &Path, args: &[&str]) -> Result<String, SourceError> {
    tracing::debug!(?args, git_dir = %git_dir.display(), "git");
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir").arg(git_dir).args(args);
    // Never wait for a password or host-key prompt.
    cmd.env("GIT_TERMINAL_PROMPT", "0");
    if std::env::var_os("GIT_SSH_COMMAND").is_none() {
        cmd.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
    }
    let out = cmd.output().map_err(|e| SourceError::Git {
        repo: repo.into(),
        args: args.join(" "),
        stderr: format!("cannot run git: {e} (install git)"),
    })?;
    if !out.status.success() {
        return Err(SourceError::Git {
            repo: repo.into(),
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn looks_like_commit(r: &str) -> bool {
    (4..=64).contains(&r.len()) && r.chars().all(|c| c.is_ascii_hexdigit())
}

/// Fetch `spec`'s ref into the cache under `cache_dir` and check it out.
pub(crate) fn checkout(spec: &GitSpec, cache_dir: &Path) -> Result<Checkout, SourceError> {
    let repo = spec.repo.as_str();
    let key = hex::encode(Sha256::digest(repo.as_bytes()));
    let base = cache_dir.join("git");
    // Clones of private repositories: root's alone.
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&base)
        .and_then(|()| fs::set_permissions(&base, fs::Permissions::from_mode(0o700)))
        .map_err(|e| SourceError::io(&base, e))?;
    let git_dir = base.join(format!("{}.git", &key[..24]));

    // One build at a time per repository cache.
    let lock_path = base.join(format!("{}.lock", &key[..24]));
    let lock = fs::File::create(&lock_path).map_err(|e| SourceError::io(&lock_path, e))?;
    lock.lock().map_err(|e| SourceError::io(&lock_path, e))?;

    if !git_dir.join("HEAD").exists() {
        fs::create_dir_all(&git_dir).map_err(|e| SourceError::io(&git_dir, e))?;
        run_git(repo, &git_dir, &["init", "--bare", "--quiet"])?;
    }

    let commit = fetch(spec, &git_dir)?;
    let dir = tempfile::Builder::new()
        .prefix("checkout-")
        .tempdir_in(&base)
        .map_err(|e| SourceError::io(&base, e))?;
    let tree = dir.path().join("tree");
    fs::create_dir(&tree).map_err(|e| SourceError::io(&tree, e))?;
    let index = dir.path().join("index");
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(&git_dir)
        .arg("--work-tree")
        .arg(&tree)
        .args(["checkout", "--force", "--quiet", &commit, "--", "."])
        .env("GIT_INDEX_FILE", &index)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .map_err(|e| SourceError::io("git", e))?;
    if !out.status.success() {
        return Err(SourceError::Git {
            repo: repo.into(),
            args: format!("checkout {commit}"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    tracing::info!(repo, commit = %commit, "checked out");
    Ok(Checkout { dir, commit })
}

/// The commit for the spec's ref, fetching what is missing.
fn fetch(spec: &GitSpec, git_dir: &Path) -> Result<String, SourceError> {
    let repo = spec.repo.as_str();
    let reference = spec.reference.as_deref();

    if let Some(r) = reference {
        // A commit the cache already has needs no network.
        if looks_like_commit(r) {
            if let Ok(c) = local_commit(repo, git_dir, r) {
                if c.starts_with(&r.to_ascii_lowercase()) {
                    return Ok(c);
                }
            }
        }
    }

    // Shallow fetch of a branch, tag, full commit id or the default HEAD.
    let wanted = reference.unwrap_or("HEAD");
    let shallow = run_git(
        repo,
        git_dir,
        &[
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--no-tags",
            repo,
            wanted,
        ],
    );
    match shallow {
        Ok(_) => run_git(
            repo,
            git_dir,
            &["rev-parse", "--verify", "FETCH_HEAD^{commit}"],
        ),
        Err(e) => {
            let Some(r) = reference.filter(|r| looks_like_commit(r)) else {
                // Not a commit id: the ref does not exist (or the remote
                // failed, which the message shows).
                return Err(match e {
                    SourceError::Git { stderr, .. }
                        if stderr.contains("couldn't find remote ref")
                            || stderr.contains("not our ref") =>
                    {
                        SourceError::GitRef {
                            repo: repo.into(),
                            reference: wanted.into(),
                        }
                    }
                    other => other,
                });
            };
            // An abbreviated or unadvertised commit: fetch everything.
            let mut args = vec!["fetch", "--quiet", "--tags"];
            if git_dir.join("shallow").exists() {
                args.push("--unshallow");
            }
            args.push(repo);
            args.push("+refs/heads/*:refs/remotes/origin/*");
            run_git(repo, git_dir, &args)?;
            local_commit(repo, git_dir, r).map_err(|_| SourceError::GitRef {
                repo: repo.into(),
                reference: r.into(),
            })
        }
    }
}

/// The full id of the commit `rev` names in the local repository.
fn local_commit(repo: &str, git_dir: &Path, rev: &str) -> Result<String, SourceError> {
    let commit = format!("{rev}^{{commit}}");
    run_git(
        repo,
        git_dir,
        &["rev-parse", "--verify", "--quiet", &commit],
    )
}

/// Where the tree of a checkout is.
pub(crate) fn tree_of(c: &Checkout) -> PathBuf {
    c.dir.path().join("tree")
}
