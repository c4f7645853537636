//! Go's `filepath.Match` for one path element: the wildcard syntax of
//! COPY/ADD sources (BuildKit expands them with `filepath.Match`) and of
//! the per-element matching behind `COPY --exclude`.
//!
//! `*` matches any run of characters but `/`, `?` one character but `/`,
//! `[…]` a class with ranges (`a-z`), `\` escapes and `^` negation, and
//! `\c` the character `c`. As in Go, `!` does not negate a class:
//! `[!a]` is the class of `!` and `a`. A malformed class never matches.

/// Whether `s` holds a wildcard (`*`, `?` or `[`), i.e. must be matched
/// rather than looked up.
pub fn has_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Whether `name` (one path element) matches `pattern` as a whole.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matching that backtracks only to the last `*`: every other
    // term consumes exactly one character, so this is O(|p|·|n|) even for
    // patterns with many stars.
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
                    if let Some((true, next)) = class(&p, pi, n[ni]) {
                        pi = next;
                        ni += 1;
                        continue;
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
            // `*` never swallows a separator.
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

/// A `[…]` class at `p[start]`: (whether `c` matches, index after it), or
/// None if the class is not closed.
fn class(p: &[char], start: usize, c: char) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&'^');
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
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|c| *c != ']') {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_go_filepath_match() {
        assert!(matches("*.txt", "a.txt"));
        assert!(!matches("*.txt", "a.txt.bak"));
        assert!(matches("a?c", "abc"));
        assert!(matches("[a-c]x", "bx"));
        assert!(!matches("[^a-c]x", "bx"));
        assert!(matches("\\*", "*"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "axxbyyc"));
        assert!(!matches("[a", "a"));
    }

    #[test]
    fn many_stars_do_not_blow_up() {
        let long = "a".repeat(60);
        assert!(!matches("*a*a*a*a*a*a*a*a*a*a*b", &long));
        assert!(matches("*a*a*a*a*a*a*a*a*a*a*", &long));
    }

    #[test]
    fn bang_is_literal_in_a_class_as_in_go() {
        // Go's grammar is `'[' [ '^' ] { character-range } ']'`: `!` is
        // an ordinary member, not a negation (unlike POSIX fnmatch).
        assert!(matches("[!a]x", "!x"));
        assert!(matches("[!a]x", "ax"));
        assert!(!matches("[!a]x", "bx"));
        assert!(matches("[^!a]x", "bx"));
    }

    #[test]
    fn separators_and_escapes() {
        assert!(!matches("a*b", "a/b"), "* stops at /");
        assert!(!matches("a?b", "a/b"), "? does not match /");
        assert!(matches("[\\]]", "]"));
        assert!(matches("a\\[b", "a[b"));
        assert!(!matches("a\\xb", "ayb"));
    }

    #[test]
    fn meta() {
        assert!(has_meta("*.txt"));
        assert!(has_meta("a[bc]"));
        assert!(has_meta("a?"));
        assert!(!has_meta("plain/path"));
    }
}
