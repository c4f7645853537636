//! Slash-path helpers with Go `path.Clean` semantics.

/// Go `path.Clean`: collapse `//`, `.` and `..` lexically.
pub fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            _ => out.push(part),
        }
    }
    let joined = out.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".into()
    } else {
        joined
    }
}

/// A context-relative path: cleaned, without a leading `/`, `""` for the
/// root. `None` if it climbs above the root with `..`.
pub fn context_relative(p: &str) -> Option<String> {
    let c = clean(p.trim_start_matches('/'));
    if c == ".." || c.starts_with("../") {
        return None;
    }
    Some(if c == "." { String::new() } else { c })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_clean() {
        assert_eq!(clean(""), ".");
        assert_eq!(clean("a//b/./c/.."), "a/b");
        assert_eq!(clean("/../a"), "/a");
        assert_eq!(clean("../a/../.."), "../..");
        assert_eq!(clean("/"), "/");
        assert_eq!(context_relative("/a/./b/"), Some("a/b".into()));
        assert_eq!(context_relative("."), Some("".into()));
        assert_eq!(context_relative("a/../../x"), None);
    }
}
