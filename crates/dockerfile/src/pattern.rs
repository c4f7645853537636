//! Shell patterns of `${VAR#pat}`, `${VAR%pat}` and `${VAR/pat/repl}`,
//! compiled to regular expressions the way BuildKit does: `*` is any
//! string (shortest or longest), `?` one character, `\` escapes `*`, `?`
//! and `\` (and drops itself before `}` and `/`); bracket expressions are
//! not supported and match literally.

use crate::error::ExpandError;
use regex::Regex;

fn to_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, ExpandError> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                if matches!(chars.peek(), Some('}') | Some('/')) {
                    continue;
                }
                match chars.next() {
                    Some(c @ ('*' | '?' | '\\')) => {
                        out.push('\\');
                        out.push(c);
                    }
                    Some(c) => {
                        return Err(invalid(pattern, &format!("invalid escape '\\{c}'")));
                    }
                    None => return Err(invalid(pattern, "invalid escape at end of pattern")),
                }
            }
            _ => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(tok.encode_utf8(&mut buf)));
            }
        }
    }
    Regex::new(&out).map_err(|e| invalid(pattern, &e.to_string()))
}

fn invalid(pattern: &str, why: &str) -> ExpandError {
    ExpandError::new(format!(
        "invalid pattern ({pattern}) in substitution: {why}"
    ))
}

/// `${VAR#pat}` (shortest) and `${VAR##pat}` (greedy).
pub(crate) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let re = to_regex(pattern, greedy, true)?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// `${VAR%pat}` and `${VAR%%pat}`: a regex finds leftmost matches only, so
/// the pattern and the value are reversed and the prefix is trimmed.
pub(crate) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> Result<String, ExpandError> {
    let rev_pattern = reverse_pattern(pattern);
    let rev_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&rev_pattern, &rev_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverse a pattern but keep each `\x` escape pair in order.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let last = chars.len().saturating_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let out_idx = last - i;
        if chars[i] == '\\' && i != last {
            out[out_idx - 1] = '\\';
            out[out_idx] = chars[i + 1];
            i += 2;
        } else {
            out[out_idx] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// `${VAR/pat/repl}` (first, longest match, replaced literally) and
/// `${VAR//pat/repl}` (every match; `$1`-style group references in the
/// replacement expand as in Go's `Regexp.ReplaceAllString`).
pub(crate) fn replace(
    pattern: &str,
    value: &str,
    replacement: &str,
    all: bool,
) -> Result<String, ExpandError> {
    let re = to_regex(pattern, true, false)?;
    if !all {
        return Ok(match re.find(value) {
            Some(m) => format!(
                "{}{}{}",
                &value[..m.start()],
                replacement,
                &value[m.end()..]
            ),
            None => value.to_string(),
        });
    }
    // Go's ReplaceAll: no replacement for an empty match right after the
    // previous match, and always advance at least one character.
    let mut out = String::new();
    let mut last_end = 0usize;
    let mut search = 0usize;
    while search <= value.len() {
        let caps = match re.captures_at(value, search) {
            Some(c) => c,
            None => break,
        };
        let m = match caps.get(0) {
            Some(m) => m,
            None => break,
        };
        out.push_str(&value[last_end..m.start()]);
        if m.end() > last_end || m.start() == 0 {
            caps.expand(replacement, &mut out);
        }
        last_end = m.end();
        let width = value[search..].chars().next().map_or(1, char::len_utf8);
        if search + width > m.end() {
            search += width;
        } else if search + 1 > m.end() {
            search += 1;
        } else {
            search = m.end();
        }
    }
    if last_end <= value.len() {
        out.push_str(&value[last_end..]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_pattern_keeps_escapes() {
        assert_eq!(reverse_pattern("a\\*c"), "c\\*a");
        assert_eq!(reverse_pattern("\\\\\\ab"), "b\\a\\\\");
        assert_eq!(reverse_pattern("ab\\"), "\\ba");
        assert_eq!(reverse_pattern(""), "");
    }

    #[test]
    fn invalid_escapes() {
        assert!(to_regex("\\", true, true).is_err());
        assert!(to_regex("\\x", true, true).is_err());
        assert!(to_regex("\\\\\\", true, true).is_err());
        assert!(to_regex("\\*", true, true).is_ok());
    }

    #[test]
    fn replace_all_like_go() {
        assert_eq!(replace("*", "abc", "y", true).unwrap(), "y");
        assert_eq!(replace("", "ab", "-", true).unwrap(), "-a-b-");
        assert_eq!(replace("b", "abcb", "X", true).unwrap(), "aXcX");
        assert_eq!(replace("b", "abcb", "X", false).unwrap(), "aXcb");
    }
}
