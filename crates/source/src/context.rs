//! Build contexts: where COPY/ADD take their files from. Every path is
//! context-relative and checked: `..` may not climb out, and symbolic
//! links met while resolving a path must stay inside the context.

use crate::dockerignore::DockerIgnore;
use crate::error::SourceError;
use crate::http::HttpClient;
use crate::pathmatch::{self, has_meta};
use crate::paths::context_relative;
use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

/// What a context entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link, with its target as stored (copied as a link, not
    /// followed).
    Symlink(String),
}

/// One file or directory of a context listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextEntry {
    /// Context-relative, `/`-separated (`""` is the context root).
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o755`…); 0o644 for remote files.
    pub mode: u32,
    pub size: u64,
    /// Where the entry is on this host (local contexts only).
    pub host_path: Option<PathBuf>,
}

/// The files a build may COPY/ADD from.
#[derive(Debug, Clone)]
pub enum BuildContext {
    /// An inline Dockerfile: no files at all.
    None,
    /// A directory on this host (a local context or a git checkout).
    Local(LocalContext),
    /// The directory of a Dockerfile URL: files are fetched relative to it.
    Http(HttpContext),
}

impl BuildContext {
    /// `"none"`, `"local"` or `"http"`.
    pub fn kind(&self) -> &'static str {
        match self {
            BuildContext::None => "none",
            BuildContext::Local(_) => "local",
            BuildContext::Http(_) => "http",
        }
    }

    /// A human description: the directory or URL.
    pub fn describe(&self) -> String {
        match self {
            BuildContext::None => "no build context (inline Dockerfile)".into(),
            BuildContext::Local(l) => l.root().display().to_string(),
            BuildContext::Http(h) => h.base.to_string(),
        }
    }

    /// Open a file for reading (symlinks followed inside the context).
    pub fn open(&self, path: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        match self {
            BuildContext::None => Err(SourceError::NoContext { path: path.into() }),
            BuildContext::Local(l) => l.open(path),
            BuildContext::Http(h) => h.open(path),
        }
    }

    /// Read a whole file.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, SourceError> {
        let mut r = self.open(path)?;
        let mut buf = Vec::new();
        r.read_to_end(&mut buf)
            .map_err(|e| SourceError::io(path, e))?;
        Ok(buf)
    }

    /// `path` and, for a directory, everything below it that .dockerignore
    /// keeps, parents before children. A remote context can only return
    /// the single file at `path`.
    pub fn walk(&self, path: &str) -> Result<Vec<ContextEntry>, SourceError> {
        match self {
            BuildContext::None => Err(SourceError::NoContext { path: path.into() }),
            BuildContext::Local(l) => l.walk(path),
            BuildContext::Http(h) => Ok(vec![ContextEntry {
                path: h.relative(path)?,
                kind: EntryKind::File,
                mode: 0o644,
                size: 0,
                host_path: None,
            }]),
        }
    }

    /// Expand a COPY/ADD source with wildcards (`*`, `?`, `[…]` within
    /// one path element) to the matching context paths, sorted. A source
    /// without wildcards is returned as is (cleaned) if it exists.
    pub fn glob(&self, pattern: &str) -> Result<Vec<String>, SourceError> {
        match self {
            BuildContext::None => Err(SourceError::NoContext {
                path: pattern.into(),
            }),
            BuildContext::Local(l) => l.glob(pattern),
            BuildContext::Http(h) => {
                if has_meta(pattern) {
                    return Err(SourceError::Unsupported {
                        path: pattern.into(),
                        what: "a wildcard source".into(),
                        context: "http",
                    });
                }
                Ok(vec![h.relative(pattern)?])
            }
        }
    }
}

/// A context directory with its .dockerignore.
#[derive(Debug, Clone)]
pub struct LocalContext {
    root: PathBuf,
    ignore: DockerIgnore,
    /// Keeps a temporary checkout alive as long as the context.
    _keep: Option<Arc<tempfile::TempDir>>,
}

const MAX_SYMLINKS: usize = 40;

impl LocalContext {
    /// A context at `root` with the ignore rules in `ignore`.
    pub fn new(root: &Path, ignore: DockerIgnore) -> Result<Self, SourceError> {
        let root = fs::canonicalize(root).map_err(|e| SourceError::io(root, e))?;
        if !root.is_dir() {
            return Err(SourceError::io(
                &root,
                std::io::Error::other("the build context is not a directory"),
            ));
        }
        Ok(LocalContext {
            root,
            ignore,
            _keep: None,
        })
    }

    /// A context at `root` reading `<root>/.dockerignore` (or
    /// `ignore_file` when given and present, like BuildKit's
    /// `<Dockerfile>.dockerignore`).
    pub fn open_dir(root: &Path, ignore_file: Option<&Path>) -> Result<Self, SourceError> {
        let default = root.join(".dockerignore");
        let file = match ignore_file {
            Some(f) if f.is_file() => f.to_path_buf(),
            _ => default,
        };
        let ignore = match fs::read_to_string(&file) {
            Ok(text) => DockerIgnore::parse(&text, &file.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => DockerIgnore::empty(),
            Err(e) => return Err(SourceError::io(&file, e)),
        };
        Self::new(root, ignore)
    }

    pub(crate) fn keep_alive(mut self, dir: Arc<tempfile::TempDir>) -> Self {
        self._keep = Some(dir);
        self
    }

    /// The context directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn ignore(&self) -> &DockerIgnore {
        &self.ignore
    }

    /// Resolve a context-relative path to a host path, following symbolic
    /// links in every element; fails if the path or a link leaves the
    /// context, or if .dockerignore excludes it.
    pub fn resolve(&self, path: &str) -> Result<PathBuf, SourceError> {
        let rel = context_relative(path).ok_or_else(|| SourceError::Escape {
            path: path.into(),
            reason: "the path climbs out with ..".into(),
        })?;
        if !rel.is_empty() && self.ignore.is_ignored(&rel) {
            return Err(SourceError::Ignored { path: rel });
        }
        self.resolve_inside(path, &rel)
    }

    /// Follow `rel` element by element; `current` components stay a
    /// context-relative, symlink-free path.
    fn resolve_inside(&self, shown: &str, rel: &str) -> Result<PathBuf, SourceError> {
        let mut pending: Vec<String> = rel
            .split('/')
            .filter(|s| !s.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut current: Vec<String> = Vec::new();
        let mut links = 0usize;
        while let Some(part) = pending.pop() {
            if part == "." {
                continue;
            }
            if part == ".." {
                if current.pop().is_none() {
                    return Err(SourceError::Escape {
                        path: shown.into(),
                        reason: "a symbolic link points outside the build context".into(),
                    });
                }
                continue;
            }
            let mut host = self.root.clone();
            host.extend(current.iter());
            host.push(&part);
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(SourceError::NotFound { path: shown.into() })
                }
                Err(e) => return Err(SourceError::io(&host, e)),
            };
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(SourceError::Escape {
                        path: shown.into(),
                        reason: "too many levels of symbolic links".into(),
                    });
                }
                let target = fs::read_link(&host).map_err(|e| SourceError::io(&host, e))?;
                let target = target.to_string_lossy().to_string();
                if target.starts_with('/') {
                    return Err(SourceError::Escape {
                        path: shown.into(),
                        reason: format!(
                            "symbolic link {} points to the absolute path {target}",
                            join_rel(&current, &part)
                        ),
                    });
                }
                for t in target.split('/').rev() {
                    if !t.is_empty() {
                        pending.push(t.to_string());
                    }
                }
                continue;
            }
            current.push(part);
        }
        let mut host = self.root.clone();
        host.extend(current.iter());
        Ok(host)
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        let host = self.resolve(path)?;
        let f = fs::File::open(&host).map_err(|e| SourceError::io(&host, e))?;
        Ok(Box::new(f))
    }

    fn entry(&self, rel: &str, host: &Path) -> Result<ContextEntry, SourceError> {
        let meta = fs::symlink_metadata(host).map_err(|e| SourceError::io(host, e))?;
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            let t = fs::read_link(host).map_err(|e| SourceError::io(host, e))?;
            EntryKind::Symlink(t.to_string_lossy().to_string())
        } else if ft.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        };
        Ok(ContextEntry {
            path: rel.to_string(),
            kind,
            mode: meta.permissions().mode() & 0o7777,
            size: meta.size(),
            host_path: Some(host.to_path_buf()),
        })
    }

    fn walk(&self, path: &str) -> Result<Vec<ContextEntry>, SourceError> {
        let rel = context_relative(path).ok_or_else(|| SourceError::Escape {
            path: path.into(),
            reason: "the path climbs out with ..".into(),
        })?;
        let host = self.resolve(&rel)?;
        let mut out = vec![self.entry(&rel, &host)?];
        // The named path itself is followed; below it links are entries.
        if fs::metadata(&host).map(|m| m.is_dir()).unwrap_or(false) {
            out[0].kind = EntryKind::Dir;
            self.walk_dir(&rel, &host, &mut out)?;
        }
        Ok(out)
    }

    fn walk_dir(
        &self,
        rel: &str,
        host: &Path,
        out: &mut Vec<ContextEntry>,
    ) -> Result<(), SourceError> {
        let mut names: Vec<String> = fs::read_dir(host)
            .map_err(|e| SourceError::io(host, e))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().to_string()))
            .collect::<Result<_, _>>()
            .map_err(|e| SourceError::io(host, e))?;
        names.sort();
        for name in names {
            let child_rel = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let child_host = host.join(&name);
            let entry = self.entry(&child_rel, &child_host)?;
            let ignored = self.ignore.is_ignored(&child_rel);
            if entry.kind == EntryKind::Dir {
                if ignored && !self.ignore.has_exceptions() {
                    continue;
                }
                let at = out.len();
                out.push(entry);
                self.walk_dir(&child_rel, &child_host, out)?;
                // An excluded directory stays only as the parent of an
                // included entry.
                if ignored && out.len() == at + 1 {
                    out.truncate(at);
                }
            } else if !ignored {
                out.push(entry);
            }
        }
        Ok(())
    }

    fn glob(&self, pattern: &str) -> Result<Vec<String>, SourceError> {
        let rel = context_relative(pattern).ok_or_else(|| SourceError::Escape {
            path: pattern.into(),
            reason: "the path climbs out with ..".into(),
        })?;
        if !has_meta(&rel) {
            self.resolve(&rel)?;
            return Ok(vec![rel]);
        }
        let mut found = vec![String::new()];
        for part in rel.split('/') {
            let mut next = Vec::new();
            for base in &found {
                let child = |n: &str| {
                    if base.is_empty() {
                        n.to_string()
                    } else {
                        format!("{base}/{n}")
                    }
                };
                if !has_meta(part) {
                    let c = child(&unescape(part));
                    if self
                        .resolve_inside(&c, &c)
                        .map(|h| h.exists())
                        .unwrap_or(false)
                    {
                        next.push(c);
                    }
                    continue;
                }
                let host = match self.resolve_inside(base, base) {
                    Ok(h) if h.is_dir() => h,
                    _ => continue,
                };
                let rd = fs::read_dir(&host).map_err(|e| SourceError::io(&host, e))?;
                for e in rd {
                    let e = e.map_err(|e| SourceError::io(&host, e))?;
                    let name = e.file_name().to_string_lossy().to_string();
                    if pathmatch::matches(part, &name) {
                        next.push(child(&name));
                    }
                }
            }
            found = next;
        }
        found.retain(|p| !self.ignore.is_ignored(p));
        found.sort();
        Ok(found)
    }
}

fn join_rel(current: &[String], part: &str) -> String {
    let mut v = current.to_vec();
    v.push(part.to_string());
    v.join("/")
}

fn unescape(p: &str) -> String {
    let mut out = String::new();
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                out.push(n);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Files fetched relative to the directory of a Dockerfile URL.
#[derive(Debug, Clone)]
pub struct HttpContext {
    /// The directory URL (ends with `/`).
    pub base: Url,
    client: HttpClient,
}

impl HttpContext {
    pub(crate) fn new(base: Url, client: HttpClient) -> Self {
        HttpContext { base, client }
    }

    fn relative(&self, path: &str) -> Result<String, SourceError> {
        let rel = context_relative(path).ok_or_else(|| SourceError::Escape {
            path: path.into(),
            reason: "the path climbs out with ..".into(),
        })?;
        if rel.is_empty() {
            return Err(SourceError::Unsupported {
                path: path.into(),
                what: "copying the whole context directory".into(),
                context: "http",
            });
        }
        Ok(rel)
    }

    /// The URL of a context-relative path.
    pub fn url_of(&self, path: &str) -> Result<Url, SourceError> {
        let rel = self.relative(path)?;
        self.base.join(&rel).map_err(|e| SourceError::BadSpec {
            spec: path.into(),
            reason: e.to_string(),
        })
    }

    fn open(&self, path: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        let url = self.url_of(path)?;
        self.client.get_reader(url.as_str())
    }
}
