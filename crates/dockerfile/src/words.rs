//! Low-level splitting of an instruction line, as BuildKit's line parsers
//! do it: the instruction word, leading `--flags`, name=value words with
//! their quotes kept, white-space lists and JSON arrays.

/// BuildKit's `[\t\v\f\r ]+` separator.
fn is_sep(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Split on runs of separators, like Go's `regexp.Split(s, -1)`: leading
/// or trailing separators yield empty strings.
pub(crate) fn split_ws(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if is_sep(c) {
            while chars.peek().copied().is_some_and(is_sep) {
                chars.next();
            }
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

/// Split off the first separator run: `(first, rest)`.
pub(crate) fn split_ws2(s: &str) -> (String, Option<String>) {
    match s.char_indices().find(|&(_, c)| is_sep(c)) {
        None => (s.to_string(), None),
        Some((i, _)) => {
            let rest = s[i..].trim_start_matches(is_sep);
            (s[..i].to_string(), Some(rest.to_string()))
        }
    }
}

/// Split an instruction line into its name, flags and argument text.
pub(crate) fn split_command(line: &str) -> (String, Vec<String>, String) {
    let (cmd, rest) = split_ws2(line.trim());
    match rest {
        None => (cmd, Vec::new(), String::new()),
        Some(rest) => {
            let (args, flags) = extract_builder_flags(&rest);
            (cmd, flags, args.trim().to_string())
        }
    }
}

/// Take the leading `--flag[=value]` words off `line`. Quotes group and
/// `\` escapes inside flags; a lone `--` ends the flags.
pub(crate) fn extract_builder_flags(line: &str) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut i = 0;
    loop {
        let at_end = i >= chars.len();
        let (byte_pos, ch) = if at_end { (line.len(), '\0') } else { chars[i] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            let next_is_dash = chars.get(i + 1).is_some_and(|&(_, c)| c == '-');
            if ch != '-' || !next_is_dash {
                return (line[byte_pos..].to_string(), words);
            }
            phase = Phase::Word;
        }
        if at_end {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (line[byte_pos..].to_string(), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                i += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                i += 1;
                continue;
            }
            let mut c = ch;
            if c == '\\' {
                if i + 1 == chars.len() {
                    i += 1;
                    continue;
                }
                i += 1;
                c = chars[i].1;
            }
            word.push(c);
            i += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            i += 1;
            continue;
        }
        let mut c = ch;
        if c == '\\' {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            i += 1;
            c = chars[i].1;
        }
        word.push(c);
        i += 1;
    }
    (String::new(), words)
}

/// Split into words on white space, keeping quotes and escapes in the
/// words (they are processed later by the lexer). BuildKit `parseWords`.
pub(crate) fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut i = 0;
    loop {
        let at_end = i >= chars.len();
        let ch = if at_end { '\0' } else { chars[i] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                i += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            let mut c = ch;
            if c == escape {
                if i + 1 == chars.len() {
                    i += 1;
                    continue;
                }
                // An unquoted escape keeps itself and the next character.
                word.push(c);
                i += 1;
                c = chars[i];
            }
            word.push(c);
            i += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        let mut c = ch;
        if c == escape && quote != '\'' {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            i += 1;
            word.push(c);
            c = chars[i];
        }
        word.push(c);
        i += 1;
    }
    words
}

/// Result of trying the JSON (exec) form.
pub(crate) enum Json {
    Array(Vec<String>),
    /// Valid JSON array with a non-string element: always an error.
    NotStrings,
    /// Not a JSON array: the shell form applies.
    No(String),
}

pub(crate) fn parse_json(rest: &str) -> Json {
    let t = rest.trim_start();
    if !t.starts_with('[') {
        return Json::No(format!("error parsing {rest:?} as a JSON array"));
    }
    match serde_json::from_str::<Vec<serde_json::Value>>(t) {
        Ok(values) => {
            let mut out = Vec::with_capacity(values.len());
            for v in values {
                match v {
                    serde_json::Value::String(s) => out.push(s),
                    _ => return Json::NotStrings,
                }
            }
            Json::Array(out)
        }
        Err(e) => Json::No(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_extracted() {
        let (rest, flags) = extract_builder_flags("--from=a --chown=1:1 src dst");
        assert_eq!(flags, vec!["--from=a", "--chown=1:1"]);
        assert_eq!(rest, "src dst");
        let (rest, flags) = extract_builder_flags("--mount=\"type=bind,target=/a b\" cmd");
        assert_eq!(flags, vec!["--mount=type=bind,target=/a b"]);
        assert_eq!(rest, "cmd");
        let (rest, flags) = extract_builder_flags("-- --notflag x");
        assert!(flags.is_empty());
        assert_eq!(rest.trim(), "--notflag x");
        let (rest, flags) = extract_builder_flags("--link");
        assert_eq!(flags, vec!["--link"]);
        assert_eq!(rest, "");
        let (rest, flags) = extract_builder_flags("-x");
        assert!(flags.is_empty());
        assert_eq!(rest, "-x");
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(
            parse_words(r#"A="a b" B=c\ d 'e f'"#, '\\'),
            vec![r#"A="a b""#, r"B=c\ d", "'e f'"]
        );
        assert_eq!(parse_words("  ", '\\'), Vec::<String>::new());
        assert_eq!(parse_words(r#"A="""#, '\\'), vec![r#"A="""#]);
    }

    #[test]
    fn ws_split_like_go() {
        assert_eq!(split_ws("a  b\tc"), vec!["a", "b", "c"]);
        assert_eq!(split_ws2("FROM  x y"), ("FROM".into(), Some("x y".into())));
    }
}
