//! `.dockerignore` with Docker's rules (moby `ignorefile` and
//! `patternmatcher`): `#` comments, paths cleaned like Go's `filepath.Clean`
//! and made relative, `*` and `?` within one path element, `**` across
//! elements, `[…]` classes, `\` escapes, `!` exceptions where the last
//! matching pattern wins, and a pattern that matches a parent directory
//! excludes everything below it.

use crate::error::SourceError;
use crate::paths::clean;
use regex::Regex;

#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct Pattern {
    cleaned: String,
    exclusion: bool,
    matcher: Matcher,
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact => path == self.cleaned,
            Matcher::Prefix(p) => path.starts_with(p.as_str()),
            Matcher::Suffix(s) => {
                path.ends_with(s.as_str()) || (s.starts_with('/') && path == &s[1..])
            }
            Matcher::Regex(r) => r.is_match(path),
        }
    }
}

/// A parsed `.dockerignore`.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl DockerIgnore {
    /// No patterns: nothing is ignored.
    pub fn empty() -> Self {
        DockerIgnore::default()
    }

    /// Parse the text of a `.dockerignore`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, SourceError> {
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = if i == 0 {
                line.strip_prefix('\u{feff}').unwrap_or(line)
            } else {
                line
            };
            // Comments are recognized before trimming, as Docker does.
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let invert = pattern.starts_with('!');
            if invert {
                pattern = pattern[1..].trim();
            }
            let mut p = String::new();
            if !pattern.is_empty() {
                p = clean(pattern);
                if p.len() > 1 && p.starts_with('/') {
                    p.remove(0);
                }
            }
            if invert {
                p.insert(0, '!');
            }
            lines.push(p);
        }
        Self::from_patterns(&lines, file)
    }

    /// Build from already-read patterns (`!` prefix for exceptions).
    pub fn from_patterns(patterns: &[String], file: &str) -> Result<Self, SourceError> {
        let mut out = DockerIgnore::default();
        for raw in patterns {
            let p = raw.trim();
            if p.is_empty() {
                continue;
            }
            let mut p = clean(p);
            let exclusion = p.starts_with('!');
            if exclusion {
                if p.len() == 1 {
                    return Err(SourceError::BadIgnorePattern {
                        file: file.into(),
                        pattern: raw.clone(),
                        reason: "illegal exclusion pattern: \"!\"".into(),
                    });
                }
                p.remove(0);
                out.exclusions = true;
            }
            let matcher = compile(&p).map_err(|reason| SourceError::BadIgnorePattern {
                file: file.into(),
                pattern: raw.clone(),
                reason,
            })?;
            out.patterns.push(Pattern {
                cleaned: p,
                exclusion,
                matcher,
            });
        }
        Ok(out)
    }

    /// Whether any pattern is an `!` exception (then an excluded directory
    /// may still have included files below it).
    pub fn has_exceptions(&self) -> bool {
        self.exclusions
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Is the context-relative, slash-separated `path` excluded?
    pub fn is_ignored(&self, path: &str) -> bool {
        let file = clean(path);
        if file == "." {
            return false;
        }
        let parent = match file.rfind('/') {
            Some(i) => &file[..i],
            None => ".",
        };
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pat in &self.patterns {
            if pat.exclusion != matched {
                continue;
            }
            let mut m = pat.matches(&file);
            if !m && parent != "." {
                for i in 0..parent_dirs.len() {
                    if pat.matches(&parent_dirs[..=i].join("/")) {
                        m = true;
                        break;
                    }
                }
            }
            if m {
                matched = !pat.exclusion;
            }
        }
        matched
    }
}

fn compile(pattern: &str) -> Result<Matcher, String> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut re = String::from("^");
    let mut kind = Kind::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = Kind::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    kind = Kind::Regex;
                }
                if first {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = Kind::Regex;
            }
            '?' => {
                re.push_str("[^/]");
                kind = Kind::Regex;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => {
                if i < chars.len() {
                    re.push('\\');
                    re.push(chars[i]);
                    i += 1;
                    kind = Kind::Regex;
                } else {
                    return Err("trailing backslash escapes nothing".into());
                }
            }
            '[' | ']' => {
                re.push(ch);
                kind = Kind::Regex;
            }
            _ => re.push(ch),
        }
        first = false;
    }
    match kind {
        Kind::Exact => Ok(Matcher::Exact),
        Kind::Prefix => Ok(Matcher::Prefix(
            pattern[..pattern.len().saturating_sub(2)].to_string(),
        )),
        Kind::Suffix if pattern.len() >= 2 => Ok(Matcher::Suffix(pattern[2..].to_string())),
        _ => {
            re.push('$');
            Regex::new(&re)
                .map(Matcher::Regex)
                .map_err(|e| e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn di(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text, ".dockerignore").unwrap()
    }

    #[test]
    fn docker_rules() {
        let d = di("# comment\n*.md\n!README.md\nbuild/\n**/*.tmp\n/abs\nsub/*/x\n");
        assert!(d.is_ignored("CHANGES.md"));
        assert!(!d.is_ignored("README.md"));
        assert!(!d.is_ignored("docs/CHANGES.md"), "* does not cross /");
        assert!(d.is_ignored("build"));
        assert!(
            d.is_ignored("build/out/bin"),
            "parent dir match excludes children"
        );
        assert!(d.is_ignored("a/b/c.tmp"));
        assert!(d.is_ignored("c.tmp"));
        assert!(d.is_ignored("abs"));
        assert!(d.is_ignored("sub/q/x"));
        assert!(!d.is_ignored("sub/q/y"));
        assert!(!d.is_ignored("main.go"));
        assert!(!d.is_ignored("# comment"));
    }

    #[test]
    fn exceptions_inside_excluded_dirs() {
        let d = di("vendor\n!vendor/keep\n");
        assert!(d.is_ignored("vendor/x"));
        assert!(!d.is_ignored("vendor/keep"));
        assert!(d.has_exceptions());
        // The last matching pattern wins.
        let d = di("!a\na\n");
        assert!(d.is_ignored("a"));
    }

    #[test]
    fn double_star_and_classes() {
        let d = di("**\n!src/**\n");
        assert!(d.is_ignored("x"));
        assert!(!d.is_ignored("src/main.rs"));
        let d = di("a/**/z\nf[0-9]\n");
        assert!(d.is_ignored("a/z"));
        assert!(d.is_ignored("a/b/c/z"));
        assert!(d.is_ignored("f1"));
        assert!(!d.is_ignored("fx"));
        let d = di("foo/**\n");
        assert!(d.is_ignored("foo/bar"));
        let d = di("  ./x/../y  \n");
        assert!(d.is_ignored("y"));
        let d = di("a\\*b\n");
        assert!(d.is_ignored("a*b"));
        assert!(!d.is_ignored("axb"));
    }

    #[test]
    fn bad_patterns() {
        assert!(DockerIgnore::parse("!\n", "f").is_err());
        assert!(DockerIgnore::parse("[a\n", "f").is_err());
        assert!(DockerIgnore::parse("a\\\n", "f").is_err());
    }
}
