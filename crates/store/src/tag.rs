//! Image tags: `org/name:version` or `name:version`.

use std::fmt;
use std::str::FromStr;

/// The org directory of images whose tag names none.
pub const NO_ORG: &str = "_";

const ACCEPTED_FORM: &str = "[org/]name:version, where org and name use lowercase letters, digits and . _ - (not first), and version uses letters, digits and . _ - (at most 128)";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tag {tag:?}: {reason}; expected {ACCEPTED_FORM}")]
pub struct TagError {
    pub tag: String,
    pub reason: &'static str,
}

/// A validated image tag. Each part is a single safe path component.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag {
    org: String,
    name: String,
    version: String,
}

impl Tag {
    pub fn new(org: &str, name: &str, version: &str) -> Result<Self, TagError> {
        let whole = format!("{org}/{name}:{version}");
        let err = |reason| TagError {
            tag: whole.clone(),
            reason,
        };
        if org != NO_ORG && !is_name_part(org) {
            return Err(err("the org part is not valid"));
        }
        if !is_name_part(name) {
            return Err(err("the name part is not valid"));
        }
        if !is_version(version) {
            return Err(err("the version part is not valid"));
        }
        Ok(Tag {
            org: org.to_owned(),
            name: name.to_owned(),
            version: version.to_owned(),
        })
    }

    /// The org directory: `_` for tags without one.
    pub fn org(&self) -> &str {
        &self.org
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version(&self) -> &str {
        &self.version
    }
}

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| TagError {
            tag: s.to_owned(),
            reason,
        };
        let (path, version) = s
            .rsplit_once(':')
            .ok_or_else(|| err("the :version part is missing"))?;
        let (org, name) = match path.split_once('/') {
            Some((org, name)) => (org, name),
            None => (NO_ORG, path),
        };
        if name.contains('/') {
            return Err(err("only one / is allowed, between org and name"));
        }
        Tag::new(org, name, version).map_err(|e| err(e.reason))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.org, self.name, self.version)
    }
}

/// Lowercase alphanumerics with `.`, `_`, `-` separators, as Docker repository
/// path components; never `.`/`..` since it must start alphanumeric.
fn is_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes[0].is_ascii_alphanumeric()
        && bytes.iter().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_version(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_forms() {
        let t: Tag = "combust-labs/consul:1.9.4".parse().unwrap();
        assert_eq!(
            (t.org(), t.name(), t.version()),
            ("combust-labs", "consul", "1.9.4")
        );
        let t: Tag = "alpine:3.12".parse().unwrap();
        assert_eq!((t.org(), t.name(), t.version()), ("_", "alpine", "3.12"));
        assert_eq!(t.to_string(), "_/alpine:3.12");
        let t: Tag = "_/alpine:3.12".parse().unwrap();
        assert_eq!(t.org(), "_");
        let t: Tag = "tests/postgres:13_RC-1".parse().unwrap();
        assert_eq!(t.version(), "13_RC-1");
    }

    #[test]
    fn rejects_invalid_forms_naming_the_tag() {
        for bad in [
            "",
            "alpine",
            "alpine:",
            ":3.12",
            "a/b/c:1",
            "Alpine:3",
            "../etc:1",
            "org/..:1",
            "org/name:..",
            "org/name:.hidden",
            "org/na me:1",
            "org/name:1:2",
            "-org/name:1",
            "org/name:has/slash",
        ] {
            let err = bad.parse::<Tag>().unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains(&format!("{bad:?}")), "{msg}");
            assert!(msg.contains("expected [org/]name:version"), "{msg}");
        }
    }
}
