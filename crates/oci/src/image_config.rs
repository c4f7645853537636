//! The image configuration blob (OCI image config plus Docker's extensions:
//! healthcheck, ONBUILD, SHELL), typed, with unknown fields kept so a config
//! survives a read-modify-write.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::digest::Digest;
use crate::reference::Platform;

/// Treats JSON `null` as the type's default (Docker writes `"Env": null`).
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The whole config document (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub config: ImageConfig,
    #[serde(default, deserialize_with = "nullable")]
    pub rootfs: RootFs,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
    /// Fields this type does not model, kept verbatim.
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// How to run the image: the `config` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub user: String,
    /// `port/proto` keys, values are empty objects.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    /// `KEY=value` entries in order.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthConfig>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub on_build: Vec<String>,
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub shell: Vec<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

/// Docker's HEALTHCHECK (durations in nanoseconds).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthConfig {
    #[serde(default, deserialize_with = "nullable")]
    pub test: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_interval: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// The layer list by uncompressed digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "nullable")]
    pub diff_ids: Vec<Digest>,
}

impl Default for RootFs {
    fn default() -> Self {
        RootFs {
            kind: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

impl HealthConfig {
    /// The image config form of a firebuild healthcheck.
    pub fn from_metadata(h: &firebuild_metadata::image::Healthcheck) -> HealthConfig {
        HealthConfig {
            test: h.test.clone(),
            interval: h.interval_ns,
            timeout: h.timeout_ns,
            start_period: h.start_period_ns,
            start_interval: h.start_interval_ns,
            retries: h.retries,
        }
    }
}

impl ImageConfigFile {
    /// An empty config for `platform`.
    pub fn new(platform: &Platform) -> ImageConfigFile {
        ImageConfigFile {
            architecture: platform.architecture.clone(),
            os: platform.os.clone(),
            variant: platform.variant.clone(),
            ..Default::default()
        }
    }

    /// The platform the config declares.
    pub fn platform(&self) -> Platform {
        Platform {
            os: self.os.clone(),
            architecture: self.architecture.clone(),
            variant: self.variant.clone(),
        }
    }
}

impl ImageConfig {
    /// Environment as ordered `(key, value)` pairs (entries without `=` get an empty value).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|e| match e.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (e.clone(), String::new()),
            })
            .collect()
    }

    /// The firebuild metadata view of how to start the image.
    pub fn entrypoint_info(&self) -> firebuild_metadata::EntrypointInfo {
        firebuild_metadata::EntrypointInfo {
            entrypoint: self.entrypoint.clone().unwrap_or_default(),
            cmd: self.cmd.clone().unwrap_or_default(),
            env: self.env_pairs().into_iter().collect(),
            shell: self.shell.clone(),
            user: self.user.clone(),
            workdir: self.working_dir.clone(),
        }
    }

    /// The firebuild metadata view of the healthcheck.
    pub fn healthcheck_metadata(&self) -> Option<firebuild_metadata::image::Healthcheck> {
        self.healthcheck
            .as_ref()
            .map(|h| firebuild_metadata::image::Healthcheck {
                test: h.test.clone(),
                interval_ns: h.interval,
                timeout_ns: h.timeout,
                start_period_ns: h.start_period,
                start_interval_ns: h.start_interval,
                retries: h.retries,
            })
    }

    /// Exposed ports as `port/proto`, sorted.
    pub fn ports(&self) -> Vec<String> {
        self.exposed_ports.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_docker_config_with_nulls_and_keeps_unknown_fields() {
        let json = r#"{
          "architecture":"amd64","os":"linux","docker_version":"24.0",
          "config":{"User":"app","Env":["PATH=/bin","EMPTY"],"Entrypoint":null,"Cmd":["sh"],
            "ExposedPorts":{"80/tcp":{}},"WorkingDir":"/srv","Labels":{"a":"b"},
            "StopSignal":"SIGQUIT","OnBuild":null,"ArgsEscaped":true,
            "Healthcheck":{"Test":["CMD","true"],"Interval":1000000000,"Retries":3}},
          "rootfs":{"type":"layers","diff_ids":[]},
          "history":[{"created_by":"x","empty_layer":true}]
        }"#;
        let c: ImageConfigFile = serde_json::from_str(json).unwrap();
        assert_eq!(c.config.user, "app");
        assert_eq!(c.config.entrypoint, None);
        assert!(c.config.on_build.is_empty());
        assert_eq!(c.config.ports(), vec!["80/tcp"]);
        assert_eq!(c.config.healthcheck.as_ref().unwrap().retries, Some(3));
        let info = c.config.entrypoint_info();
        assert_eq!(info.env["PATH"], "/bin");
        assert_eq!(info.env["EMPTY"], "");
        assert_eq!(info.workdir, "/srv");
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["docker_version"], "24.0");
        assert_eq!(back["config"]["ArgsEscaped"], true);
        assert_eq!(back["history"][0]["empty_layer"], true);
    }
}
