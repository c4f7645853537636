//! The run's environment: the image's ENV, then each `--env-file` in order,
//! then each `--env`; later entries win.
//!
//! Env files follow Docker's `--env-file` format: one `KEY=value` per line,
//! the value taken verbatim (no quote processing); blank lines and lines
//! starting with `#` are skipped; a bare `KEY` takes the value from the host
//! environment and is skipped when the host has none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::VmError;

/// One parsed entry: a value, or `None` for "take it from the host".
type Entry = (String, Option<String>);

/// Parses an env file's text; `path` is used in errors only.
pub fn parse_env_file(path: &Path, bytes: &[u8]) -> Result<Vec<Entry>, VmError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut entries = Vec::new();
    for (index, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line_no = index + 1;
        let fail = |reason: String| VmError::EnvFile {
            path: path.to_owned(),
            line: line_no,
            reason,
        };
        let text = std::str::from_utf8(raw).map_err(|_| fail("is not valid UTF-8".into()))?;
        let line = text.strip_suffix('\r').unwrap_or(text).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = parse_assignment(line).map_err(fail)?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Parses `KEY=value` or `KEY`; the error is a reason for the caller to wrap.
fn parse_assignment(text: &str) -> Result<Entry, String> {
    let (key, value) = match text.split_once('=') {
        Some((k, v)) => (k, Some(v.to_owned())),
        None => (text, None),
    };
    if key.is_empty() {
        return Err("no variable name before '='".into());
    }
    if key.chars().any(char::is_whitespace) {
        return Err(format!("variable name {key:?} contains whitespace"));
    }
    if key.contains('\0') || value.as_deref().is_some_and(|v| v.contains('\0')) {
        return Err("contains a NUL byte".into());
    }
    Ok((key.to_owned(), value))
}

/// Merges the image's environment, the env files (read from disk, in
/// order) and the `--env` values (in order). `host` looks up bare names.
pub fn merge_env(
    image_env: &BTreeMap<String, String>,
    env_files: &[PathBuf],
    env_args: &[String],
    host: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, VmError> {
    let mut env = image_env.clone();
    let mut apply = |(key, value): Entry| {
        if let Some(value) = value.or_else(|| host(&key)) {
            env.insert(key, value);
        }
    };
    for path in env_files {
        let bytes = std::fs::read(path).map_err(|source| VmError::EnvFileRead {
            path: path.clone(),
            source,
        })?;
        for entry in parse_env_file(path, &bytes)? {
            apply(entry);
        }
    }
    for arg in env_args {
        let entry = parse_assignment(arg).map_err(|reason| VmError::EnvArg {
            value: arg.clone(),
            reason,
        })?;
        apply(entry);
    }
    Ok(env)
}

/// Looks a variable up in this process's environment.
pub fn host_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Entry>, VmError> {
        parse_env_file(Path::new("test.env"), text.as_bytes())
    }

    #[test]
    fn env_file_format() {
        let entries = parse(
            "\u{feff}# comment\n\nA=1\n  B= spaced\nC=\"quoted\"\r\nD=\nE\nF=x=y\n   # indented comment\n",
        )
        .unwrap();
        assert_eq!(
            entries,
            vec![
                ("A".into(), Some("1".into())),
                ("B".into(), Some(" spaced".into())),
                ("C".into(), Some("\"quoted\"".into())),
                ("D".into(), Some(String::new())),
                ("E".into(), None),
                ("F".into(), Some("x=y".into())),
            ]
        );
    }

    #[test]
    fn env_file_errors_name_file_and_line() {
        let err = parse("A=1\n=oops\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("test.env") && msg.contains("line 2"), "{msg}");
        assert!(matches!(err, VmError::EnvFile { line: 2, .. }));

        let err = parse("OK=1\n\nBAD KEY=1\n").unwrap_err();
        assert!(matches!(err, VmError::EnvFile { line: 3, .. }), "{err}");

        let err = parse_env_file(Path::new("x"), b"A=\xff\xfe\n").unwrap_err();
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn merge_order_and_host_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let f1 = dir.path().join("one.env");
        let f2 = dir.path().join("two.env");
        std::fs::write(&f1, "A=file1\nB=file1\nFROM_HOST\nMISSING\n").unwrap();
        std::fs::write(&f2, "B=file2\nC=file2\n").unwrap();
        let image: BTreeMap<_, _> = [("A", "image"), ("PATH", "/bin"), ("C", "image")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let host = |k: &str| (k == "FROM_HOST").then(|| "hostval".to_owned());
        let env = merge_env(&image, &[f1, f2], &["C=arg".into(), "D=arg=x".into()], host).unwrap();
        let got: Vec<_> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "A=file1",
                "B=file2",
                "C=arg",
                "D=arg=x",
                "FROM_HOST=hostval",
                "PATH=/bin"
            ]
        );
    }

    #[test]
    fn merge_errors() {
        let missing = PathBuf::from("/nonexistent/firebuild.env");
        let err = merge_env(&BTreeMap::new(), &[missing], &[], |_| None).unwrap_err();
        assert!(matches!(err, VmError::EnvFileRead { .. }));
        assert!(err.to_string().contains("/nonexistent/firebuild.env"));

        let err = merge_env(&BTreeMap::new(), &[], &["=x".into()], |_| None).unwrap_err();
        assert!(matches!(err, VmError::EnvArg { .. }), "{err}");
    }
}
