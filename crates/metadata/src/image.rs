//! `metadata.json` stored beside every root filesystem in the image store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Whether a stored image is a base OS or an application root filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageType {
    Baseos,
    Rootfs,
}

impl std::fmt::Display for ImageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ImageType::Baseos => "baseos",
            ImageType::Rootfs => "rootfs",
        })
    }
}

/// The `org/image:version` triple of a stored image; `org` is `_` when absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageName {
    pub org: String,
    pub image: String,
    pub version: String,
}

/// How the image's process is started, collected from the Dockerfile (and the
/// base image's config) exactly as Docker does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EntrypointInfo {
    /// ENTRYPOINT in exec form (shell form is already wrapped in SHELL).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// CMD in exec form (shell form is already wrapped in SHELL).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Environment as ordered `KEY=value` pairs.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub shell: Vec<String>,
    #[serde(default)]
    pub user: String,
    #[serde(default)]
    pub workdir: String,
}

/// A HEALTHCHECK carried from the Dockerfile or base image (durations in ns,
/// as in the OCI image config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// Settings the build ran with, recorded for reproducibility.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct BuildConfig {
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    #[serde(default)]
    pub dockerfile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile_stage: Option<String>,
    /// `SOURCE_DATE_EPOCH` the image was made with: no time in it is later,
    /// and its ext4 file is reproducible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<i64>,
}

/// The `metadata.json` document of a stored image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageMetadata {
    /// Seconds since the Unix epoch, UTC.
    pub created_at_utc: i64,
    pub image: ImageName,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(rename = "type")]
    pub kind: ImageType,
    #[serde(default)]
    pub build_config: BuildConfig,
    #[serde(default)]
    pub entrypoint_info: EntrypointInfo,
    /// The image this one was built FROM (tag or registry reference), if any.
    #[serde(default)]
    pub parent: Option<String>,
    /// Exposed ports as `port/proto`.
    #[serde(default)]
    pub ports: Vec<String>,
    /// The full tag, `org/image:version`.
    pub tag: String,
    #[serde(default)]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<Healthcheck>,
    /// ONBUILD triggers to run when this image is used as a base.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub onbuild: Vec<String>,
    /// Registry digest of the base image, when it came from a registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image_digest: Option<String>,
    /// Size of the `rootfs` file in bytes.
    #[serde(default)]
    pub rootfs_size: u64,
    /// `sha256:<hex>` of the `rootfs` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_digest: Option<String>,
}

impl ImageMetadata {
    /// The metadata of a root filesystem no stored image stands behind
    /// (a build step's disk, a containerd snapshot): a name and nothing
    /// else; the caller fills in what it knows.
    pub fn unstored(name: ImageName, created_at_utc: i64) -> ImageMetadata {
        let tag = format!("{}/{}:{}", name.org, name.image, name.version);
        ImageMetadata {
            created_at_utc,
            image: name,
            labels: BTreeMap::new(),
            kind: ImageType::Rootfs,
            build_config: BuildConfig::default(),
            entrypoint_info: EntrypointInfo::default(),
            parent: None,
            ports: Vec::new(),
            tag,
            volumes: Vec::new(),
            stop_signal: None,
            healthcheck: None,
            onbuild: Vec::new(),
            base_image_digest: None,
            rootfs_size: 0,
            rootfs_digest: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_original_key_names() {
        let md = ImageMetadata {
            created_at_utc: 1_700_000_000,
            image: ImageName {
                org: "_".into(),
                image: "alpine".into(),
                version: "3.12".into(),
            },
            labels: BTreeMap::new(),
            kind: ImageType::Baseos,
            build_config: BuildConfig::default(),
            entrypoint_info: EntrypointInfo::default(),
            parent: None,
            ports: vec!["80/tcp".into()],
            tag: "_/alpine:3.12".into(),
            volumes: vec![],
            stop_signal: Some("SIGQUIT".into()),
            healthcheck: None,
            onbuild: vec![],
            base_image_digest: None,
            rootfs_size: 42,
            rootfs_digest: None,
        };
        let json = serde_json::to_value(&md).unwrap();
        assert_eq!(json["type"], "baseos");
        assert_eq!(json["created-at-utc"], 1_700_000_000);
        assert_eq!(json["stop-signal"], "SIGQUIT");
        let back: ImageMetadata = serde_json::from_value(json).unwrap();
        assert_eq!(back, md);
    }
}
