//! Finding heredoc markers (`<<EOF`, `<<-EOF`, `<<"EOF"`, `3<<EOF`) in an
//! instruction line, as BuildKit does.

use crate::ast::Heredoc;
use crate::env::Env;
use crate::error::ExpandError;
use crate::lexer::ShellLex;

/// The heredocs an instruction line opens, in order. Bodies are empty:
/// the parser fills them from the following lines.
pub(crate) fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, ExpandError> {
    let mut lex = ShellLex::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    // A line the lexer cannot split has no heredoc markers.
    let words = lex.process_words(line, &Env::new()).unwrap_or_default();
    let mut docs = Vec::new();
    for w in words {
        if let Some(h) = parse_heredoc_word(&w)? {
            docs.push(h);
        }
    }
    Ok(docs)
}

/// If `word` is a heredoc marker, the heredoc it names.
pub(crate) fn parse_heredoc_word(word: &str) -> Result<Option<Heredoc>, ExpandError> {
    // ^(\d*)<<(-?)([^<]*)$
    let digits_end = word
        .char_indices()
        .find(|(_, c)| !c.is_ascii_digit())
        .map_or(word.len(), |(i, _)| i);
    let digits = &word[..digits_end];
    let rest = match word[digits_end..].strip_prefix("<<") {
        Some(r) => r,
        None => return Ok(None),
    };
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    let fd: u32 = digits.parse().unwrap_or(0);

    // Lex the delimiter with and without quote removal: if the counts of
    // quote characters differ, part of it was quoted and the body is not
    // expanded.
    let mut lex = ShellLex::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process_words(rest, &Env::new())?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw_words = lex.process_words(rest, &Env::new())?;
    if raw_words.len() != words.len() {
        return Err(ExpandError::new(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        )));
    }
    let count = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let expand = count(&words[0]) == count(&raw_words[0]);
    Ok(Some(Heredoc {
        name: words[0].clone(),
        content: String::new(),
        expand,
        chomp,
        fd,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers() {
        let h = parse_heredoc_word("<<EOF").unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.expand, h.chomp, h.fd),
            ("EOF", true, false, 0)
        );
        let h = parse_heredoc_word("<<-'EOF'").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.chomp), ("EOF", false, true));
        let h = parse_heredoc_word("3<<\"E\"OF").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand, h.fd), ("EOF", false, 3));
        assert!(parse_heredoc_word("<<").unwrap().is_none());
        assert!(parse_heredoc_word("a<<EOF").unwrap().is_none());
        assert!(parse_heredoc_word("<<<EOF").unwrap().is_none());
    }

    #[test]
    fn from_line() {
        let d = heredocs_from_line("RUN cat <<A <<-'B' >out").unwrap();
        let names: Vec<_> = d.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, vec!["A", "B"]);
        assert!(heredocs_from_line("RUN echo '<<EOF'").unwrap().is_empty());
    }
}
