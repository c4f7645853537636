//! What a `--dockerfile SRC` argument names.

use crate::error::SourceError;
use std::path::{Path, PathBuf};
use url::Url;

/// A Dockerfile source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileSpec {
    /// A file on this host.
    File(PathBuf),
    /// The Dockerfile text itself.
    Inline(String),
    /// An http(s) URL of the Dockerfile.
    Url(Url),
    /// A file in a git repository.
    Git(GitSpec),
}

/// `git+https://host/repo.git:/path/to/Dockerfile#ref` and friends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSpec {
    /// The URL given to `git` (`git+` prefix removed).
    pub repo: String,
    /// Path of the Dockerfile inside the repository (no leading `/`).
    pub path: String,
    /// Branch, tag or commit; None for the remote's default branch.
    pub reference: Option<String>,
}

const GIT_PREFIXES: &[&str] = &[
    "git+https://",
    "git+http://",
    "git+ssh://",
    "git+file://",
    "ssh://",
    "git://",
    "file://",
];

impl DockerfileSpec {
    /// Decide what `src` is: a URL scheme picks git or http; an existing
    /// path is a file; text that looks like a Dockerfile (several lines, or
    /// starting with a comment, FROM or ARG) is inline; anything else is a
    /// missing file.
    pub fn parse(src: &str) -> Result<Self, SourceError> {
        let trimmed = src.trim();
        let lower = trimmed.to_ascii_lowercase();
        if GIT_PREFIXES.iter().any(|p| lower.starts_with(p)) && !trimmed.contains('\n') {
            return Ok(DockerfileSpec::Git(parse_git(trimmed)?));
        }
        if (lower.starts_with("http://") || lower.starts_with("https://"))
            && !trimmed.contains('\n')
        {
            let url = Url::parse(trimmed).map_err(|e| SourceError::BadSpec {
                spec: src.into(),
                reason: e.to_string(),
            })?;
            return Ok(DockerfileSpec::Url(url));
        }
        if !src.contains('\n') && Path::new(src).exists() {
            return Ok(DockerfileSpec::File(PathBuf::from(src)));
        }
        if looks_like_dockerfile(src) {
            return Ok(DockerfileSpec::Inline(src.to_string()));
        }
        Err(SourceError::NotFound { path: src.into() })
    }
}

fn looks_like_dockerfile(src: &str) -> bool {
    let first = src
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let word = first
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    src.contains('\n') || first.starts_with('#') || word == "FROM" || word == "ARG"
}

fn parse_git(src: &str) -> Result<GitSpec, SourceError> {
    let bad = |reason: &str| SourceError::BadSpec {
        spec: src.into(),
        reason: reason.into(),
    };
    let no_plus = match src.get(..4) {
        Some(p) if p.eq_ignore_ascii_case("git+") => &src[4..],
        _ => src,
    };
    let (rest, reference) = match no_plus.rsplit_once('#') {
        Some((r, f)) if !f.is_empty() => (r, Some(f.to_string())),
        Some((r, _)) => (r, None),
        None => (no_plus, None),
    };
    let scheme_end = rest.find("://").ok_or_else(|| bad("missing ://"))? + 3;
    let (repo, path) = match rest[scheme_end..].rfind(":/") {
        Some(i) => {
            let at = scheme_end + i;
            (&rest[..at], rest[at + 2..].trim_start_matches('/'))
        }
        None => (rest, ""),
    };
    if repo.len() <= scheme_end {
        return Err(bad("the repository URL has no host or path"));
    }
    let path = if path.is_empty() || path.ends_with('/') {
        format!("{path}Dockerfile")
    } else {
        path.to_string()
    };
    if reference
        .as_deref()
        .is_some_and(|r| r.starts_with('-') || r.contains(char::is_whitespace))
    {
        return Err(bad("invalid git reference"));
    }
    Ok(GitSpec {
        repo: repo.to_string(),
        path,
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(s: &str) -> GitSpec {
        match DockerfileSpec::parse(s).unwrap() {
            DockerfileSpec::Git(g) => g,
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn git_forms() {
        let g = git("git+https://github.com/org/repo.git:/base/alpine/Dockerfile#v1.2");
        assert_eq!(g.repo, "https://github.com/org/repo.git");
        assert_eq!(g.path, "base/alpine/Dockerfile");
        assert_eq!(g.reference.as_deref(), Some("v1.2"));
        let g = git("ssh://git@host:2222/org/repo.git:/Dockerfile.dev");
        assert_eq!(g.repo, "ssh://git@host:2222/org/repo.git");
        assert_eq!(g.path, "Dockerfile.dev");
        assert_eq!(g.reference, None);
        let g = git("git://host/repo#main");
        assert_eq!(g.repo, "git://host/repo");
        assert_eq!(g.path, "Dockerfile");
        let g = git("git+ssh://git@host/repo.git:/sub/#abc123");
        assert_eq!(g.path, "sub/Dockerfile");
        let g = git("file:///tmp/r.git:/x/Dockerfile#deadbeef");
        assert_eq!(g.repo, "file:///tmp/r.git");
        assert!(DockerfileSpec::parse("git://#x").is_err());
        assert!(DockerfileSpec::parse("git+https://h/r#--upload-pack=x").is_err());
    }

    #[test]
    fn other_forms() {
        assert!(matches!(
            DockerfileSpec::parse("https://example.com/x/Dockerfile").unwrap(),
            DockerfileSpec::Url(_)
        ));
        assert!(matches!(
            DockerfileSpec::parse("FROM alpine\nRUN true").unwrap(),
            DockerfileSpec::Inline(_)
        ));
        assert!(matches!(
            DockerfileSpec::parse("FROM alpine").unwrap(),
            DockerfileSpec::Inline(_)
        ));
        assert!(matches!(
            DockerfileSpec::parse("/").unwrap(),
            DockerfileSpec::File(_)
        ));
        assert!(matches!(
            DockerfileSpec::parse("/no/such/Dockerfile"),
            Err(SourceError::NotFound { .. })
        ));
    }
}
