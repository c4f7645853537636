//! Wildcards in COPY sources (Go's `filepath.Match`, one path element at a
//! time), for sources in another stage's root; context sources are
//! expanded by the context itself.

use rustix::fs::OFlags;

use crate::fsutil::{self, Root};

/// Matches one path element against a pattern with `*`, `?`, `[…]`
/// (ranges, `^`/`!` negation) and `\` escapes.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' if n[ni] != '/' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, next)) = class(&p, pi, n[ni]) {
                        if matched {
                            pi = next;
                            ni += 1;
                            continue;
                        }
                    }
                }
                '\\' if pi + 1 < p.len() && p[pi + 1] == n[ni] => {
                    pi += 2;
                    ni += 1;
                    continue;
                }
                // An escaped character that does not match.
                '\\' if pi + 1 < p.len() => {}
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) if n[sn] != '/' => {
                star = Some((sp, sn + 1));
                pi = sp + 1;
                ni = sn + 1;
            }
            _ => return false,
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// A `[...]` class at `p[start]`: (whether `c` matches, index after it).
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && (p[i] == '^' || p[i] == '!');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (first || p[i] != ']') {
        first = false;
        let mut lo = p[i];
        if lo == '\\' && i + 1 < p.len() {
            i += 1;
            lo = p[i];
        }
        let mut hi = lo;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            hi = p[i + 2];
            i += 2;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        i += 1;
    }
    if i >= p.len() {
        return None;
    }
    Some((matched != negate, i + 1))
}

fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

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
                Some((cf, crest)) => fnmatch(first, cf) && go(rest, crest),
                None => false,
            },
        }
    }
    go(&pat, &comps)
}

/// Expands `pattern` inside `root` (symlinks in directories resolve in
/// the root); a pattern without wildcards is returned cleaned if it exists.
pub fn glob_root(root: &Root, pattern: &str) -> Result<Vec<String>, String> {
    let clean = fsutil::clean_rel(pattern);
    if !has_meta(&clean) {
        root.open_at(&clean, OFlags::PATH)
            .map_err(|e| format!("{pattern}: {e}"))?;
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
            for name in fsutil::list_names(&dir).map_err(|e| format!("{pattern}: {e}"))? {
                let name = name.to_string_lossy().into_owned();
                if fnmatch(comp, &name) {
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
    fn matches_like_go_filepath_match() {
        assert!(fnmatch("*.txt", "a.txt"));
        assert!(!fnmatch("*.txt", "a.txt.bak"));
        assert!(fnmatch("a?c", "abc"));
        assert!(fnmatch("[a-c]x", "bx"));
        assert!(!fnmatch("[^a-c]x", "bx"));
        assert!(fnmatch("\\*", "*"));
        assert!(fnmatch("*", ""));
        assert!(fnmatch("a*b*c", "axxbyyc"));
        assert!(path_match("**/*.log", "a/b/c.log"));
        assert!(path_match("tmp", "tmp/x/y"));
        assert!(!path_match("*.md", "docs/x.txt"));
    }
}
