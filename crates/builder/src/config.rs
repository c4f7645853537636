//! The image configuration a build collects (Docker's `Config` section):
//! inherited from the base image, changed by ENV/CMD/ENTRYPOINT/USER/…,
//! and written out as `metadata.json`.

use std::collections::BTreeMap;

use firebuild_metadata::image::Healthcheck;
use firebuild_metadata::{EntrypointInfo, ImageMetadata};
use serde::{Deserialize, Serialize};

/// PATH for RUN when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The default SHELL.
pub fn default_shell() -> Vec<String> {
    vec!["/bin/sh".into(), "-c".into()]
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// Ordered as set (later ENV replaces in place, as Docker does).
    pub env: Vec<(String, String)>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub user: String,
    pub workdir: String,
    /// Empty: the default `/bin/sh -c`.
    pub shell: Vec<String>,
    pub ports: Vec<String>,
    pub volumes: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub healthcheck: Option<Healthcheck>,
    pub onbuild: Vec<String>,
}

impl ImageConfig {
    pub fn env(&self, key: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_env(&mut self, key: &str, value: &str) {
        match self.env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.to_owned(),
            None => self.env.push((key.to_owned(), value.to_owned())),
        }
    }

    pub fn shell_or_default(&self) -> Vec<String> {
        if self.shell.is_empty() {
            default_shell()
        } else {
            self.shell.clone()
        }
    }

    /// The working directory, `/` when unset.
    pub fn workdir_or_root(&self) -> String {
        if self.workdir.is_empty() {
            "/".into()
        } else {
            self.workdir.clone()
        }
    }

    pub fn add_port(&mut self, port: &str) {
        if !self.ports.iter().any(|p| p == port) {
            self.ports.push(port.to_owned());
        }
    }

    pub fn add_volume(&mut self, v: &str) {
        if !self.volumes.iter().any(|p| p == v) {
            self.volumes.push(v.to_owned());
        }
    }

    /// The config of a stored image (its metadata.json).
    pub fn from_metadata(md: &ImageMetadata) -> ImageConfig {
        let ep = &md.entrypoint_info;
        ImageConfig {
            env: ep.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            entrypoint: (!ep.entrypoint.is_empty()).then(|| ep.entrypoint.clone()),
            cmd: (!ep.cmd.is_empty()).then(|| ep.cmd.clone()),
            user: ep.user.clone(),
            workdir: ep.workdir.clone(),
            shell: ep.shell.clone(),
            ports: md.ports.clone(),
            volumes: md.volumes.clone(),
            labels: md.labels.clone(),
            stop_signal: md.stop_signal.clone(),
            healthcheck: md.healthcheck.clone(),
            onbuild: md.onbuild.clone(),
        }
    }

    /// The `EntrypointInfo` of metadata.json.
    pub fn entrypoint_info(&self) -> EntrypointInfo {
        EntrypointInfo {
            entrypoint: self.entrypoint.clone().unwrap_or_default(),
            cmd: self.cmd.clone().unwrap_or_default(),
            env: self.env.iter().cloned().collect(),
            shell: self.shell_or_default(),
            user: self.user.clone(),
            workdir: self.workdir_or_root(),
        }
    }
}
