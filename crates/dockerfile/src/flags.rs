//! Instruction flags (`--name`, `--name=value`) with BuildKit's rules:
//! unknown flags and repeated single-valued flags are errors, booleans
//! accept `--f`, `--f=true` and `--f=false`.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Bool,
    Str,
    /// May be repeated; every value is kept.
    Strings,
}

#[derive(Debug, Default)]
pub(crate) struct Flags {
    bools: BTreeMap<&'static str, bool>,
    strs: BTreeMap<&'static str, String>,
    lists: BTreeMap<&'static str, Vec<String>>,
}

impl Flags {
    pub(crate) fn bool(&self, name: &str) -> bool {
        self.bools.get(name).copied().unwrap_or(false)
    }

    pub(crate) fn opt_bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }

    pub(crate) fn str(&self, name: &str) -> Option<String> {
        self.strs.get(name).cloned()
    }

    pub(crate) fn list(&self, name: &str) -> Vec<String> {
        self.lists.get(name).cloned().unwrap_or_default()
    }
}

/// Parse `raw` flags of instruction `instr` against `spec`.
pub(crate) fn parse(
    instr: &str,
    raw: &[String],
    spec: &[(&'static str, Kind)],
) -> Result<Flags, String> {
    let mut out = Flags::default();
    let mut seen: Vec<&str> = Vec::new();
    for arg in raw {
        let body = match arg.strip_prefix("--") {
            Some(b) => b,
            None => return Err(format!("{instr}: flag should start with --: {arg}")),
        };
        if body.is_empty() {
            break;
        }
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        let (key, kind) = match spec.iter().find(|(n, _)| *n == name) {
            Some(&(n, k)) => (n, k),
            None => {
                let known: Vec<String> = spec.iter().map(|(n, _)| format!("--{n}")).collect();
                let hint = if known.is_empty() {
                    format!("{instr} takes no flags")
                } else {
                    format!("known flags: {}", known.join(", "))
                };
                return Err(format!("{instr}: unknown flag --{name} ({hint})"));
            }
        };
        if kind != Kind::Strings && seen.contains(&key) {
            return Err(format!("{instr}: duplicate flag specified: --{key}"));
        }
        seen.push(key);
        match kind {
            Kind::Bool => {
                let v = match value {
                    None => true,
                    Some("") => {
                        return Err(format!("{instr}: missing a value on flag: --{key}"));
                    }
                    Some(v) if v.eq_ignore_ascii_case("true") => true,
                    Some(v) if v.eq_ignore_ascii_case("false") => false,
                    Some(v) => {
                        return Err(format!(
                            "{instr}: expecting boolean value for flag --{key}, not: {v}"
                        ));
                    }
                };
                out.bools.insert(key, v);
            }
            Kind::Str => match value {
                Some(v) => {
                    out.strs.insert(key, v.to_string());
                }
                None => return Err(format!("{instr}: missing a value on flag: --{key}")),
            },
            Kind::Strings => match value {
                Some(v) => out.lists.entry(key).or_default().push(v.to_string()),
                None => return Err(format!("{instr}: missing a value on flag: --{key}")),
            },
        }
    }
    Ok(out)
}
