//! From text to logical lines: parser directives, comments, line
//! continuations (with the file's escape character) and heredoc bodies,
//! following BuildKit's `parser.Parse`.

use crate::ast::{Directive, Directives, Heredoc, Warning};
use crate::error::{ParseError, Position, Span};
use crate::heredoc;
use crate::words;

/// One instruction line before typing.
#[derive(Debug, Clone)]
pub(crate) struct RawNode {
    /// The instruction word as written.
    pub name: String,
    pub flags: Vec<String>,
    /// Arguments after the flags, trimmed.
    pub args: String,
    /// The whole logical line.
    pub original: String,
    pub span: Span,
    pub heredocs: Vec<Heredoc>,
    pub comments: Vec<String>,
}

pub(crate) struct RawFile {
    pub directives: Directives,
    pub nodes: Vec<RawNode>,
    pub warnings: Vec<Warning>,
}

struct DirectiveParser {
    done: bool,
    seen: Vec<String>,
    escape: char,
    out: Directives,
}

impl DirectiveParser {
    /// BuildKit: `^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`, only before
    /// the first line that is not a known directive.
    fn parse_line(&mut self, line: &str, line_no: usize, file: &str) -> Result<(), ParseError> {
        if self.done {
            return Ok(());
        }
        let (name, value) = match match_directive(line) {
            Some(m) => m,
            None => {
                self.done = true;
                return Ok(());
            }
        };
        let key = name.to_ascii_lowercase();
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            self.done = true;
            return Ok(());
        }
        let pos = Position {
            line: line_no,
            column: 1,
        };
        if self.seen.contains(&key) {
            return Err(ParseError::new(
                file,
                pos,
                format!("only one {key} parser directive can be used"),
            ));
        }
        self.seen.push(key.clone());
        match key.as_str() {
            "escape" => {
                self.escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(ParseError::new(
                            file,
                            pos,
                            format!("invalid escape token '{value}' does not match ` or \\"),
                        ))
                    }
                };
                self.out.escape = self.escape;
            }
            "syntax" => self.out.syntax = Some(value.clone()),
            "check" => self.out.check = Some(value.clone()),
            _ => {}
        }
        self.out.all.push(Directive {
            name: key,
            value,
            line: line_no,
        });
        Ok(())
    }
}

fn match_directive(line: &str) -> Option<(String, String)> {
    let rest = line.strip_prefix('#')?;
    let rest = rest.trim_start_matches(char::is_whitespace);
    let mut chars = rest.char_indices();
    let (_, first) = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let name_end = rest
        .char_indices()
        .find(|(_, c)| !c.is_ascii_alphanumeric())
        .map_or(rest.len(), |(i, _)| i);
    let name = &rest[..name_end];
    let rest = rest[name_end..].trim_start_matches(char::is_whitespace);
    let rest = rest.strip_prefix('=')?;
    let value = rest.trim_matches(char::is_whitespace);
    if value.is_empty() {
        return None;
    }
    Some((name.to_string(), value.to_string()))
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    trim_newline(line)
        .trim_start_matches(char::is_whitespace)
        .starts_with('#')
}

/// Strip a trailing escape character (and spaces/tabs after it).
fn trim_continuation(line: &str, escape: char) -> (String, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    match t.strip_suffix(escape) {
        Some(body) => (body.to_string(), false),
        None => (line.to_string(), true),
    }
}

/// Split keeping each line's newline.
fn physical_lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// Parse `text` into logical instruction lines.
pub(crate) fn parse_raw(text: &str, file: &str) -> Result<RawFile, ParseError> {
    let lines = physical_lines(text);
    let mut dp = DirectiveParser {
        done: false,
        seen: Vec::new(),
        escape: '\\',
        out: Directives::default(),
    };
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut idx = 0usize;
    let mut current_line = 0usize;

    while idx < lines.len() {
        let mut raw = lines[idx];
        idx += 1;
        if current_line == 0 {
            raw = raw.strip_prefix('\u{feff}').unwrap_or(raw);
        }
        if is_comment(raw) {
            let c = trim_newline(raw).trim_start()[1..].trim();
            if c.is_empty() {
                comments.clear();
            } else {
                comments.push(c.to_string());
            }
        }
        let token = trim_newline(raw).trim_start_matches(char::is_whitespace);
        dp.parse_line(token, current_line + 1, file)?;
        let processed = if is_comment(token) { "" } else { token };
        current_line += 1;

        let start_line = current_line;
        let start_col = trim_newline(raw)
            .chars()
            .take_while(|c| c.is_whitespace())
            .count()
            + 1;
        let (mut line, mut is_end) = trim_continuation(processed, dp.escape);
        if is_end && line.is_empty() {
            continue;
        }

        let mut has_empty_continuation = false;
        while !is_end && idx < lines.len() {
            let raw2 = lines[idx];
            idx += 1;
            let token2 = trim_newline(raw2);
            dp.parse_line(token2, current_line + 1, file)?;
            current_line += 1;
            if is_comment(raw2) {
                continue;
            }
            if token2.trim_start_matches(char::is_whitespace).is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (cont, end) = trim_continuation(token2, dp.escape);
            line.push_str(&cont);
            is_end = end;
        }
        if has_empty_continuation {
            warnings.push(Warning {
                line: current_line,
                message: format!(
                    "empty continuation line in instruction starting on line {start_line}"
                ),
            });
        }

        let (name, flags, args) = words::split_command(&line);
        let mut node = RawNode {
            name,
            flags,
            args,
            original: line.clone(),
            span: Span::new(start_line, start_col, current_line),
            heredocs: Vec::new(),
            comments: std::mem::take(&mut comments),
        };

        if can_contain_heredoc(&node) && line.contains("<<") {
            let docs = heredoc::heredocs_from_line(&line).map_err(|e| {
                ParseError::at_instruction(file, node.span, &node.name, &line, e.message)
            })?;
            for mut doc in docs {
                let mut terminated = false;
                while idx < lines.len() {
                    let body_line = lines[idx];
                    idx += 1;
                    current_line += 1;
                    let mut candidate = trim_newline(body_line);
                    if doc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == doc.name {
                        terminated = true;
                        break;
                    }
                    doc.content.push_str(body_line);
                }
                if !terminated {
                    return Err(ParseError::at_instruction(
                        file,
                        node.span,
                        &node.name,
                        &line,
                        format!(
                            "unterminated heredoc: no line {:?} closes the heredoc opened here",
                            doc.name
                        ),
                    ));
                }
                node.heredocs.push(doc);
            }
            node.span.end.line = current_line;
        }
        nodes.push(node);
    }

    Ok(RawFile {
        directives: dp.out,
        nodes,
        warnings,
    })
}

/// RUN, COPY and ADD (also as ONBUILD triggers) in shell form may open
/// heredocs; JSON forms may not.
fn can_contain_heredoc(node: &RawNode) -> bool {
    let mut name = node.name.to_ascii_lowercase();
    let mut args = node.args.clone();
    if name == "onbuild" {
        let (inner, _, inner_args) = words::split_command(&node.args);
        name = inner.to_ascii_lowercase();
        args = inner_args;
    }
    if !matches!(name.as_str(), "run" | "copy" | "add") {
        return false;
    }
    !matches!(words::parse_json(&args), words::Json::Array(_))
}
