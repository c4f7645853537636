//! Source positions and the error types of the crate.

use serde::Serialize;
use std::fmt;

/// A 1-based line and column in the Dockerfile text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

/// The lines an instruction covers: from its first character to the last
/// line it consumed (continuation lines and heredoc bodies included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Span {
    pub start: Position,
    pub end: Position,
}

impl Span {
    pub fn new(start_line: usize, start_column: usize, end_line: usize) -> Self {
        Span {
            start: Position {
                line: start_line,
                column: start_column,
            },
            end: Position {
                line: end_line,
                column: 1,
            },
        }
    }
}

/// An error located in a Dockerfile: which file, line and column, which
/// instruction, and what is wrong.
///
/// Displayed as `FILE:LINE:COLUMN: MESSAGE[: SOURCE]`, for example
/// `Dockerfile:7:1: ENV needs a value: ENV FOO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub file: String,
    pub position: Position,
    /// Upper-case instruction name, when the error belongs to one.
    pub instruction: Option<String>,
    pub message: String,
    /// The instruction's text as written (continuations joined), shortened.
    pub source_line: Option<String>,
}

impl ParseError {
    /// An error at `position` that belongs to no instruction.
    pub fn new(file: &str, position: Position, message: impl Into<String>) -> Self {
        ParseError {
            file: file.to_string(),
            position,
            instruction: None,
            message: message.into(),
            source_line: None,
        }
    }

    /// An error about an instruction; `original` is its source text.
    pub fn at_instruction(
        file: &str,
        span: Span,
        instruction: &str,
        original: &str,
        message: impl Into<String>,
    ) -> Self {
        ParseError {
            file: file.to_string(),
            position: span.start,
            instruction: Some(instruction.to_ascii_uppercase()),
            message: message.into(),
            source_line: Some(shorten(original.trim())),
        }
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 120;
    let one_line: String = s.chars().map(|c| if c == '\n' { ' ' } else { c }).collect();
    if one_line.chars().count() <= MAX {
        one_line
    } else {
        let mut out: String = one_line.chars().take(MAX).collect();
        out.push('…');
        out
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.position.line, self.position.column, self.message
        )?;
        if let Some(src) = &self.source_line {
            if !src.is_empty() {
                write!(f, ": {src}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ParseError {}

/// A failure of word expansion (the shell lexer), e.g. an unterminated
/// quote or `${VAR:?message}` with VAR unset. It carries no position: the
/// caller knows which instruction it expanded and turns it into a
/// [`ParseError`] with [`ExpandError::located`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExpandError {
    pub message: String,
}

impl ExpandError {
    pub fn new(message: impl Into<String>) -> Self {
        ExpandError {
            message: message.into(),
        }
    }

    /// Attach the location of the instruction whose word failed to expand.
    pub fn located(self, file: &str, span: Span, instruction: &str, original: &str) -> ParseError {
        ParseError::at_instruction(file, span, instruction, original, self.message)
    }
}
