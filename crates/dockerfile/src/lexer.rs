//! Word expansion with the semantics of BuildKit's shell lexer
//! (`frontend/dockerfile/shell/lex.go`): quotes, escapes, `$VAR`, `${VAR}`
//! and the `${VAR<op>word}` forms BuildKit supports. Nothing is executed:
//! command substitution does not exist here, as in BuildKit.

use crate::env::{Env, EnvLookup};
use crate::error::ExpandError;
use crate::pattern;
use std::collections::BTreeSet;

/// The shell lexer. Cheap to copy; configure with the public fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShellLex {
    escape: char,
    /// Keep quote characters in the result (used for heredoc detection).
    pub raw_quotes: bool,
    /// Keep escape characters in the result (used for heredoc contents).
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written instead of expanding
    /// them to the empty string.
    pub skip_unset_env: bool,
}

/// Everything one expansion produced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expansion {
    /// The expanded word; white space between words is kept.
    pub result: String,
    /// The expanded text split into words (quotes keep words together).
    pub words: Vec<String>,
    /// Variable names that were looked up and found.
    pub matched: BTreeSet<String>,
    /// Variable names that were looked up and not found.
    pub unmatched: BTreeSet<String>,
}

impl ShellLex {
    /// A lexer with `escape` (`\` or `` ` ``, from the `# escape=` directive).
    pub fn new(escape: char) -> Self {
        ShellLex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expand `word` into one string (BuildKit `ProcessWord`).
    pub fn process_word(&self, word: &str, env: &dyn EnvLookup) -> Result<String, ExpandError> {
        Ok(self.process(word, env)?.result)
    }

    /// Expand `word` and split it into words (BuildKit `ProcessWords`).
    pub fn process_words(
        &self,
        word: &str,
        env: &dyn EnvLookup,
    ) -> Result<Vec<String>, ExpandError> {
        Ok(self.process(word, env)?.words)
    }

    /// Expand `word`, returning the result, the words and the variables used.
    pub fn process(&self, word: &str, env: &dyn EnvLookup) -> Result<Expansion, ExpandError> {
        let mut w = Word {
            chars: word.chars().collect(),
            pos: 0,
            lex: *self,
            env,
            raw_escapes: self.raw_escapes,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let raw = w.raw_escapes;
        match w.process_stop_on(None, raw) {
            Ok((result, words)) => Ok(Expansion {
                result,
                words,
                matched: w.matched,
                unmatched: w.unmatched,
            }),
            Err(e) => Err(ExpandError::new(format!(
                "failed to process {:?}: {}",
                word, e.message
            ))),
        }
    }

    /// Check the syntax of `word` (quotes closed, `${…}` well formed)
    /// without knowing any variable: unset references are left alone, so
    /// only errors that no environment could avoid are reported.
    pub fn check_syntax(&self, word: &str) -> Result<(), ExpandError> {
        let mut lex = *self;
        lex.skip_unset_env = true;
        lex.process(word, &Env::new()).map(|_| ())
    }
}

/// Word splitting state (BuildKit's `wordsStruct`).
#[derive(Default)]
struct Words {
    word: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.word.is_empty() {
                self.words.push(std::mem::take(&mut self.word));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }

    fn add_raw_char(&mut self, ch: char) {
        self.word.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, s: &str) {
        for ch in s.chars() {
            self.add_char(ch);
        }
    }

    fn add_raw_string(&mut self, s: &str) {
        self.word.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.word.is_empty() {
            self.words.push(std::mem::take(&mut self.word));
        }
        self.words
    }
}

struct Word<'a> {
    chars: Vec<char>,
    pos: usize,
    lex: ShellLex,
    env: &'a dyn EnvLookup,
    raw_escapes: bool,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

fn err<T>(msg: impl Into<String>) -> Result<T, ExpandError> {
    Err(ExpandError::new(msg))
}

impl Word<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.chars.get(self.pos).copied();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn get_env(&mut self, name: &str) -> Option<String> {
        match self.env.lookup(name) {
            Some(v) => {
                self.matched.insert(name.to_string());
                Some(v.to_string())
            }
            None => {
                self.unmatched.insert(name.to_string());
                None
            }
        }
    }

    /// Process until `stop` (consumed) or the end of input.
    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn process_stop_on_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ExpandError> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            let quotes = !self.lex.skip_process_quotes;
            if ch == '$' {
                let tmp = self.process_dollar()?;
                result.push_str(&tmp);
                words.add_string(&tmp);
            } else if quotes && ch == '\'' {
                let tmp = self.process_single_quote()?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else if quotes && ch == '"' {
                let tmp = self.process_double_quote()?;
                result.push_str(&tmp);
                words.add_raw_string(&tmp);
            } else {
                let mut ch = match self.next() {
                    Some(c) => c,
                    None => break,
                };
                if ch == self.lex.escape {
                    if self.raw_escapes {
                        words.add_raw_char(ch);
                        result.push(ch);
                    }
                    // The escape character escapes the next one; at the
                    // end of input it is dropped.
                    ch = match self.next() {
                        Some(c) => c,
                        None => break,
                    };
                    words.add_raw_char(ch);
                } else {
                    words.add_char(ch);
                }
                result.push(ch);
            }
        }
        if let Some(stop) = stop {
            return err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        Ok((result, words.finish()))
    }

    fn process_single_quote(&mut self) -> Result<String, ExpandError> {
        // Everything up to the next ' is literal; ' cannot be escaped.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return err(
                        "unexpected end of statement while looking for matching single-quote",
                    )
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> Result<String, ExpandError> {
        // Literal up to the next ", except $ expansions; the escape
        // character escapes only ", $ and itself and is kept otherwise.
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.peek() {
                None => {
                    return err(
                        "unexpected end of statement while looking for matching double-quote",
                    )
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let v = self.process_dollar()?;
                    result.push_str(&v);
                }
                Some(_) => {
                    let mut ch = match self.next() {
                        Some(c) => c,
                        None => continue,
                    };
                    if ch == self.lex.escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lex.escape => {
                                self.next();
                                ch = n;
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> Result<String, ExpandError> {
        self.next(); // the '$'

        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return match self.get_env(&name) {
                Some(v) => Ok(v),
                None if self.lex.skip_unset_env => Ok(format!("${name}")),
                None => Ok(String::new()),
            };
        }

        self.next(); // the '{'
        match self.peek() {
            None => return err("syntax error: missing '}'"),
            Some('{') | Some('}') | Some(':') => return err("syntax error: bad substitution"),
            _ => {}
        }
        let name = self.process_name();
        let first = self.next();
        let mut chs: String = first.into_iter().collect();
        let mut op = first;
        let mut null_is_unset = false;

        match op {
            Some('}') => {
                return match self.get_env(&name) {
                    Some(v) => Ok(v),
                    None if self.lex.skip_unset_env => Ok(format!("${{{name}}}")),
                    None => Ok(String::new()),
                };
            }
            Some('/') => return self.process_replace(&name),
            Some(':') => {
                null_is_unset = true;
                op = self.next();
                chs.extend(op);
            }
            Some('+') | Some('-') | Some('?') | Some('#') | Some('%') => {}
            None => return err("syntax error: missing '}'"),
            _ => return err(format!("unsupported modifier ({chs}) in substitution")),
        }

        // ${name<op>word}: the word is expanded first; patterns keep their
        // escapes so the pattern compiler sees them.
        let raw = matches!(op, Some('#') | Some('%'));
        let word = match self.process_stop_on(Some('}'), raw) {
            Ok((w, _)) => w,
            Err(e) => {
                if self.peek().is_none() {
                    return err("syntax error: missing '}'");
                }
                return Err(e);
            }
        };

        let value = self.get_env(&name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}{chs}{word}}}"));
        }
        let empty = value.as_deref().is_none_or(str::is_empty);
        let unset_or_null = value.is_none() || (null_is_unset && empty);
        match op {
            Some('-') => Ok(if unset_or_null {
                word
            } else {
                value.unwrap_or_default()
            }),
            Some('+') => Ok(if unset_or_null { String::new() } else { word }),
            Some('?') => {
                if value.is_none() {
                    let msg = if word.is_empty() {
                        "is not allowed to be unset".to_string()
                    } else {
                        word
                    };
                    return err(format!("{name}: {msg}"));
                }
                if null_is_unset && empty {
                    let msg = if word.is_empty() {
                        "is not allowed to be empty".to_string()
                    } else {
                        word
                    };
                    return err(format!("{name}: {msg}"));
                }
                Ok(value.unwrap_or_default())
            }
            Some(c @ ('#' | '%')) => {
                // '#'/'%' remove the shortest match, '##'/'%%' the longest.
                let (greedy, pat) = match word.strip_prefix(c) {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, word),
                };
                let value = value.unwrap_or_default();
                if c == '%' {
                    pattern::trim_suffix(&pat, &value, greedy)
                } else {
                    pattern::trim_prefix(&pat, &value, greedy)
                }
            }
            _ => err(format!("unsupported modifier ({chs}) in substitution")),
        }
    }

    /// `${name/pattern/replacement}` and `${name//pattern/replacement}`.
    fn process_replace(&mut self, name: &str) -> Result<String, ExpandError> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pat = match self.process_stop_on(Some('/'), true) {
            Ok((p, _)) => p,
            Err(e) => {
                if self.peek().is_none() {
                    return err("syntax error: missing '/' in ${}");
                }
                return Err(e);
            }
        };
        let replacement = match self.process_stop_on(Some('}'), true) {
            Ok((r, _)) => r,
            Err(e) => {
                if self.peek().is_none() {
                    return err("syntax error: missing '}'");
                }
                return Err(e);
            }
        };
        let value = self.get_env(name);
        if self.lex.skip_unset_env && value.is_none() {
            return Ok(format!("${{{name}/{pat}/{replacement}}}"));
        }
        pattern::replace(&pat, &value.unwrap_or_default(), &replacement, all)
    }

    /// A variable name: letters, digits and `_`; a leading digit run or a
    /// single special parameter character is a name of its own.
    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_numeric() {
                while let Some(d) = self.peek() {
                    if !d.is_numeric() {
                        break;
                    }
                    name.push(d);
                    self.next();
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphabetic() && !ch.is_numeric() && ch != '_' {
                break;
            }
            name.push(ch);
            self.next();
        }
        name
    }
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}
