//! Wildcards in COPY sources (Go's `filepath.Match`, one path element at a
//! time, from [`firebuild_source::pathmatch`]), for sources in another
//! stage's root; context sources are expanded by the context itself.

use firebuild_source::pathmatch::{self, has_meta};
use rustix::fs::OFlags;

use super::error::{source_error, CopyError};
use crate::fsutil::{self, Root};

/// Whether `path` (or one of its parent directories) matches `pattern`
/// element by element (`--exclude`); `**` matches any number of elements.
pub fn path_match(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let comps: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    fn go(p: &[&str], c: &[&str]) -> bool {
        match p.split_first() {
            None => true, // a matched parent covers everything below it
            Some((&"**", rest)) => (0..=c.len()).any(|k| go(rest, &c[k..])),
            Some((first, rest)) => match c.split_first() {
                Some((cf, crest)) => pathmatch::matches(first, cf) && go(rest, crest),
                None => false,
            },
        }
    }
    go(&pat, &comps)
}

/// Expands `pattern` inside `root` (symlinks in directories resolve in
/// the root); a pattern without wildcards is returned cleaned if it exists.
pub fn glob_root(root: &Root, pattern: &str) -> Result<Vec<String>, CopyError> {
    let clean = fsutil::clean_rel(pattern);
    if !has_meta(&clean) {
        root.open_at(&clean, OFlags::PATH)
            .map_err(|e| source_error(pattern, e))?;
        return Ok(vec![clean]);
    }
    let mut current = vec![String::new()];
    for comp in clean.split('/') {
        let mut next = Vec::new();
        for base in &current {
            if !has_meta(comp) {
                let cand = if base.is_empty() {
                    comp.to_owned()
                } else {
                    format!("{base}/{comp}")
                };
                if root.open_at(&cand, OFlags::PATH).is_ok() {
                    next.push(cand);
                }
                continue;
            }
            let Ok(dir) = root.open_at(base, OFlags::RDONLY | OFlags::DIRECTORY) else {
                continue;
            };
            for name in fsutil::list_names(&dir).map_err(|e| source_error(pattern, e))? {
                let name = name.to_string_lossy().into_owned();
                if pathmatch::matches(comp, &name) {
                    next.push(if base.is_empty() {
                        name
                    } else {
                        format!("{base}/{name}")
                    });
                }
            }
        }
        current = next;
    }
    current.sort();
    Ok(current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_paths_match_element_by_element() {
        assert!(path_match("**/*.log", "a/b/c.log"));
        assert!(path_match("tmp", "tmp/x/y"));
        assert!(!path_match("*.md", "docs/x.txt"));
    }
}
