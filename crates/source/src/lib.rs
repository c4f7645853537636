//! Dockerfile sources and their build contexts, for
//! `rootfs --dockerfile SRC` and `baseos --dockerfile SRC`:
//!
//! | SRC | Dockerfile | context |
//! |---|---|---|
//! | a file path | the file | its directory, or `context_dir` |
//! | inline text | the text | none (`context_dir` if given) |
//! | `http(s)://…/Dockerfile` | fetched (non-2xx is an error) | the URL's directory: files fetched from there |
//! | `git+https://host/repo.git:/path/Dockerfile#ref` (also `git+http://`, `git+ssh://`, `ssh://`, `git://`, `file://`) | from the checkout | the Dockerfile's directory in the checkout |
//!
//! Local and git contexts apply `.dockerignore` (or `<Dockerfile>.dockerignore`
//! beside the Dockerfile). [`BuildContext`] reads and lists context files
//! safely: no path may leave the context.

mod context;
mod dockerignore;
mod error;
mod git;
mod http;
pub mod pathmatch;
mod paths;
mod spec;

pub use context::{BuildContext, ContextEntry, EntryKind, HttpContext, LocalContext};
pub use dockerignore::DockerIgnore;
pub use error::SourceError;
pub use paths::{clean as clean_path, context_relative};
pub use spec::{DockerfileSpec, GitSpec};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// How to load a source.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// `--context DIR`: use this directory as the context instead of the
    /// one the source implies (for files and inline Dockerfiles).
    pub context_dir: Option<PathBuf>,
    /// Cache for git clones (reused between builds).
    pub git_cache_dir: PathBuf,
    /// HTTP connect timeout.
    pub connect_timeout: Duration,
}

impl SourceOptions {
    pub fn new(git_cache_dir: impl Into<PathBuf>) -> Self {
        SourceOptions {
            context_dir: None,
            git_cache_dir: git_cache_dir.into(),
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// A loaded Dockerfile and its context.
#[derive(Debug, Clone)]
pub struct LoadedSource {
    /// The Dockerfile text.
    pub dockerfile: String,
    /// A name for messages: the path, URL, `repo:/path#ref` or `<inline>`.
    pub name: String,
    pub context: BuildContext,
    /// For git sources: the commit checked out.
    pub git_commit: Option<String>,
}

/// Load a Dockerfile source given as the user wrote it.
pub fn load_str(src: &str, opts: &SourceOptions) -> Result<LoadedSource, SourceError> {
    load(&DockerfileSpec::parse(src)?, opts)
}

/// Load a Dockerfile source.
pub fn load(spec: &DockerfileSpec, opts: &SourceOptions) -> Result<LoadedSource, SourceError> {
    match spec {
        DockerfileSpec::File(path) => load_file(path, opts),
        DockerfileSpec::Inline(text) => Ok(LoadedSource {
            dockerfile: text.clone(),
            name: "<inline>".into(),
            context: match &opts.context_dir {
                Some(dir) => BuildContext::Local(LocalContext::open_dir(dir, None)?),
                None => BuildContext::None,
            },
            git_commit: None,
        }),
        DockerfileSpec::Url(url) => {
            let client = http::HttpClient::new(opts.connect_timeout);
            let text = client.get_string(url.as_str())?;
            let base = url.join("./").map_err(|e| SourceError::BadSpec {
                spec: url.to_string(),
                reason: e.to_string(),
            })?;
            Ok(LoadedSource {
                dockerfile: text,
                name: url.to_string(),
                context: BuildContext::Http(HttpContext::new(base, client)),
                git_commit: None,
            })
        }
        DockerfileSpec::Git(g) => load_git(g, opts),
    }
}

fn ignore_file_for(dockerfile: &Path) -> Option<PathBuf> {
    let name = dockerfile.file_name()?.to_string_lossy().to_string();
    Some(dockerfile.with_file_name(format!("{name}.dockerignore")))
}

fn load_file(path: &Path, opts: &SourceOptions) -> Result<LoadedSource, SourceError> {
    let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => SourceError::NotFound {
            path: path.display().to_string(),
        },
        _ => SourceError::io(path, e),
    })?;
    let dir = match &opts.context_dir {
        Some(d) => d.clone(),
        None => match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        },
    };
    let ignore = ignore_file_for(path);
    let context = LocalContext::open_dir(&dir, ignore.as_deref())?;
    Ok(LoadedSource {
        dockerfile: text,
        name: path.display().to_string(),
        context: BuildContext::Local(context),
        git_commit: None,
    })
}

fn load_git(g: &GitSpec, opts: &SourceOptions) -> Result<LoadedSource, SourceError> {
    let co = git::checkout(g, &opts.git_cache_dir)?;
    let commit = co.commit.clone();
    let tree = git::tree_of(&co);
    let keep = Arc::new(co.dir);
    // Resolve the Dockerfile inside the checkout (no escape by links).
    let whole = LocalContext::new(&tree, DockerIgnore::empty())?;
    let df_path = whole.resolve(&g.path).map_err(|e| match e {
        SourceError::NotFound { .. } => SourceError::NotFound {
            path: format!("{}:/{} (at {commit})", g.repo, g.path),
        },
        other => other,
    })?;
    let text = std::fs::read_to_string(&df_path).map_err(|e| SourceError::io(&df_path, e))?;
    let dir = df_path.parent().unwrap_or(&tree).to_path_buf();
    let context =
        LocalContext::open_dir(&dir, ignore_file_for(&df_path).as_deref())?.keep_alive(keep);
    Ok(LoadedSource {
        dockerfile: text,
        name: format!(
            "{}:/{}{}",
            g.repo,
            g.path,
            g.reference
                .as_deref()
                .map(|r| format!("#{r}"))
                .unwrap_or_default()
        ),
        context: BuildContext::Local(context),
        git_commit: Some(commit),
    })
}
