//! OCI and Docker v2 schema 2 manifests and indexes (manifest lists).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::error::Error;
use crate::reference::Platform;

/// The most an index or manifest may hold: registries refuse larger ones
/// (4 MiB), and firebuild reads them whole.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// The most an image config may hold (it is read whole, and stored again
/// in the image's record).
pub const MAX_CONFIG: u64 = 8 << 20;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Media types we send in `Accept` when fetching manifests.
pub const ACCEPTED_MANIFESTS: &[&str] = &[
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares; `None` for media types
    /// that are not layers we can unpack.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        let base = media_type
            .replace(".nondistributable", "")
            .replace("rootfs.foreign.diff", "rootfs.diff");
        match base.as_str() {
            OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
                Some(Compression::None)
            }
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Some(Compression::Gzip),
            OCI_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
                Some(Compression::Zstd)
            }
            _ => None,
        }
    }

    /// Detects the compression from a blob's first bytes (registries and
    /// `docker save` archives sometimes mislabel layers).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER_TAR,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// The `platform` object of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformSpec {
    pub architecture: String,
    pub os: String,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl From<&Platform> for PlatformSpec {
    fn from(p: &Platform) -> Self {
        PlatformSpec {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            os_version: None,
            variant: p.variant.clone(),
        }
    }
}

/// A content descriptor: what a manifest or index points at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformSpec>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }
}

/// An image manifest (OCI or Docker v2 schema 2: same shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// What an artifact (not an image) holds, e.g. a firebuild kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A manifest document of either kind.
#[derive(Debug, Clone)]
pub enum Manifest {
    Image(Box<ImageManifest>),
    Index(ImageIndex),
}

impl Manifest {
    /// Parses a manifest body; `what` names it in errors.
    pub fn parse(body: &[u8], what: &str) -> Result<Manifest, Error> {
        let unsupported = |reason: String| Error::UnsupportedManifest {
            reference: what.to_string(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| unsupported(format!("not JSON: {e}")))?;
        if value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1) {
            return Err(unsupported(
                "Docker schema 1 manifests are deprecated and not supported; re-push the image with a current tool".into(),
            ));
        }
        let media_type = value
            .get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let is_index = match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => true,
            OCI_MANIFEST | DOCKER_MANIFEST => false,
            "" => value.get("manifests").is_some(),
            other => {
                return Err(unsupported(format!(
                    "media type {other} is not an image manifest or index"
                )))
            }
        };
        let parsed = if is_index {
            serde_json::from_value(value).map(Manifest::Index)
        } else {
            serde_json::from_value(value).map(|m| Manifest::Image(Box::new(m)))
        };
        parsed.map_err(|e| unsupported(format!("malformed: {e}")))
    }
}

impl ImageIndex {
    /// Picks the entry for `platform` (exact variant first, then any variant).
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests
            .iter()
            .filter(|d| {
                matches!(
                    d.media_type.as_str(),
                    OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_MANIFEST_LIST
                )
            })
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| platform.matches(&p.os, &p.architecture, p.variant.as_deref()))
            })
    }

    /// The platforms the index offers, for error messages.
    pub fn platforms(&self) -> String {
        let list: Vec<String> = self
            .manifests
            .iter()
            .filter_map(|d| d.platform.as_ref())
            .map(|p| match &p.variant {
                Some(v) => format!("{}/{}/{}", p.os, p.architecture, v),
                None => format!("{}/{}", p.os, p.architecture),
            })
            .collect();
        if list.is_empty() {
            "no platforms".into()
        } else {
            list.join(", ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds_and_refuses_schema1() {
        let d = Digest::sha256_of(b"x");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"{DOCKER_CONFIG}","digest":"{d}","size":1}},"layers":[]}}"#
        );
        assert!(matches!(
            Manifest::parse(m.as_bytes(), "t").unwrap(),
            Manifest::Image(_)
        ));
        let i = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{d}","size":1,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
        );
        let Manifest::Index(idx) = Manifest::parse(i.as_bytes(), "t").unwrap() else {
            panic!("not an index")
        };
        assert!(idx.select(&"linux/arm64".parse().unwrap()).is_some());
        assert!(idx.select(&"linux/amd64".parse().unwrap()).is_none());
        assert_eq!(idx.platforms(), "linux/arm64");
        let err = Manifest::parse(br#"{"schemaVersion":1}"#, "t").unwrap_err();
        assert!(err.to_string().contains("schema 1"));
    }

    #[test]
    fn layer_compression() {
        assert_eq!(
            Compression::from_media_type(DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_media_type(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            ),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::from_media_type("application/json"), None);
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(Compression::sniff(b"ustar"), Compression::None);
    }
}
