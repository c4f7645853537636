//! Image references with Docker Hub defaults, and platforms.

use std::fmt;
use std::str::FromStr;

use oci_client::Reference;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Error;

/// The registry name that Docker Hub references resolve to.
pub const DOCKER_HUB: &str = "docker.io";

/// A parsed image reference: `alpine` means `docker.io/library/alpine:latest`,
/// `localhost:5000/app@sha256:…` keeps its registry and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// A reference to `repository` on `registry` by tag.
    pub fn with_tag(registry: &str, repository: &str, tag: &str) -> Result<ImageRef, Error> {
        format!("{registry}/{repository}:{tag}").parse()
    }

    /// The registry host (`docker.io`, `ghcr.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/alpine`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if the reference has one (`latest` is filled in when neither tag nor digest is given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The same repository with another tag and no digest.
    pub fn retagged(&self, tag: &str) -> ImageRef {
        ImageRef {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to `digest` (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> ImageRef {
        ImageRef {
            tag: None,
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The same repository and tag/digest, on another registry host (a mirror).
    pub(crate) fn on_registry(&self, registry: &str) -> ImageRef {
        ImageRef {
            registry: registry.to_string(),
            ..self.clone()
        }
    }

    /// The key under which pulls of this reference are recorded: the digest
    /// when pinned, else the tag.
    pub(crate) fn record_key(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }

    /// The `oci-client` form of this reference (digest wins over tag).
    pub(crate) fn to_oci(&self) -> Reference {
        match (&self.digest, &self.tag) {
            (Some(d), _) => Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            (None, tag) => Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        }
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<ImageRef, Error> {
        let bad = |reason: String| Error::InvalidReference {
            reference: s.to_string(),
            reason,
        };
        let parsed: Reference = s.parse().map_err(|e| bad(format!("{e}")))?;
        let digest = parsed
            .digest()
            .map(|d| d.parse::<Digest>())
            .transpose()
            .map_err(|e| bad(e.to_string()))?;
        let r = ImageRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest,
        };
        // The parts become directory names in the image records: refuse anything
        // that could climb out of them.
        let path_safe = |part: &str| {
            !part.is_empty()
                && part
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'))
        };
        if !path_safe(&r.registry) || !path_safe(&r.repository) {
            return Err(bad(
                "registry or repository has an empty, '.' or '..' component".into(),
            ));
        }
        Ok(r)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// An OS/architecture[/variant] triple, as in image indexes and `--platform`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of the machine we run on (linux/amd64 here).
    pub fn host() -> Platform {
        let (architecture, variant) = normalize_arch(std::env::consts::ARCH, None);
        Platform {
            os: "linux".into(),
            architecture,
            variant,
        }
    }

    /// Whether an index entry (or config) with these fields satisfies this
    /// platform. A missing requested variant accepts any variant.
    pub fn matches(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        let (arch, var) = normalize_arch(architecture, variant);
        if os != self.os || arch != self.architecture {
            return false;
        }
        match &self.variant {
            None => true,
            Some(want) => var.as_deref() == Some(want.as_str()),
        }
    }

    /// File-name form (`linux_amd64`, `linux_arm64_v8`).
    pub(crate) fn file_stem(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}_{}_{}", self.os, self.architecture, v),
            None => format!("{}_{}", self.os, self.architecture),
        }
    }
}

/// Maps `uname`-style names onto OCI ones and fills in arm64's implied `v8`.
fn normalize_arch(arch: &str, variant: Option<&str>) -> (String, Option<String>) {
    let (a, v) = match arch {
        "x86_64" | "x86-64" => ("amd64", variant),
        "aarch64" => ("arm64", variant),
        "i386" | "i686" => ("386", variant),
        "armhf" => ("arm", variant.or(Some("v7"))),
        "armel" => ("arm", variant.or(Some("v6"))),
        other => (other, variant),
    };
    let v = match (a, v) {
        ("arm64", None) => Some("v8"),
        (_, v) => v,
    };
    (a.to_string(), v.map(str::to_string))
}

impl FromStr for Platform {
    type Err = Error;

    fn from_str(s: &str) -> Result<Platform, Error> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(Error::InvalidPlatform(s.to_string()));
        }
        let (architecture, variant) = normalize_arch(parts[1], parts.get(2).copied());
        Ok(Platform {
            os: parts[0].to_string(),
            architecture,
            variant,
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_defaults() {
        let r: ImageRef = "alpine".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        let r: ImageRef = "user/app:1".parse().unwrap();
        assert_eq!(r.to_string(), "docker.io/user/app:1");
        let r: ImageRef = "127.0.0.1:5000/a/b:v".parse().unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        let d = Digest::sha256_of(b"x");
        let r: ImageRef = format!("ghcr.io/org/app@{d}").parse().unwrap();
        assert_eq!(r.digest(), Some(&d));
        assert_eq!(r.record_key(), d.to_string());
    }

    #[test]
    fn rejects_bad_references() {
        for bad in ["", "library/UPPER", "a:b:c", "foo@sha256:12", "a/../b"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(p.matches("linux", "arm64", None));
        assert!(p.matches("linux", "arm64", Some("v8")));
        assert!(!p.matches("linux", "amd64", None));
        let host = Platform::host();
        assert!(host.matches("linux", std::env::consts::ARCH, None));
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
    }
}
