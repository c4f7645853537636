//! The CNI runtime (libcni's job): run a network list's plugin chain for
//! ADD, CHECK and DEL, with `prevResult` chaining, capability arguments and
//! the result cache.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::cache::{CacheEntry, FirebuildAttachment, ResultCache, CACHE_KIND};
use crate::config::{self, version_at_least, NetworkConfigList};
use crate::error::{validate_name, CniError, Result};
use crate::exec::{run_plugin, CniCommand, Invocation};
use crate::result::CniResult;

/// Default `--cni-conf-dir`.
pub const DEFAULT_CONF_DIR: &str = "/etc/cni/conf.d";
/// Default `--cni-bin-dir`.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const DEBIAN_BIN_DIR: &str = "/usr/lib/cni";
/// Default `--cni-cache-dir`.
pub const DEFAULT_CACHE_DIR: &str = "/var/lib/cni";

/// Where configs, plugins and the cache live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniPaths {
    pub conf_dir: PathBuf,
    /// Searched in order for plugin binaries; also passed as `CNI_PATH`.
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Default for CniPaths {
    fn default() -> Self {
        Self {
            conf_dir: DEFAULT_CONF_DIR.into(),
            bin_dirs: vec![DEFAULT_BIN_DIR.into(), DEBIAN_BIN_DIR.into()],
            cache_dir: DEFAULT_CACHE_DIR.into(),
        }
    }
}

impl CniPaths {
    /// Paths from CLI flags: a given bin dir is searched first, then the
    /// default and Debian's directory.
    pub fn from_flags(
        conf_dir: Option<PathBuf>,
        bin_dir: Option<PathBuf>,
        cache_dir: Option<PathBuf>,
    ) -> Self {
        let mut paths = Self::default();
        if let Some(c) = conf_dir {
            paths.conf_dir = c;
        }
        if let Some(b) = bin_dir {
            paths.bin_dirs.retain(|d| d != &b);
            paths.bin_dirs.insert(0, b);
        }
        if let Some(c) = cache_dir {
            paths.cache_dir = c;
        }
        paths
    }
}

/// Per-attachment arguments (libcni's `RuntimeConf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the network namespace (`CNI_NETNS`).
    pub netns: PathBuf,
    /// Interface name inside the namespace (`CNI_IFNAME`).
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `("IP", "192.168.127.10")`.
    pub args: Vec<(String, String)>,
    /// Capability arguments (e.g. `portMappings`), passed in `runtimeConfig`
    /// to the plugins that declare the capability.
    pub capability_args: Map<String, Value>,
}

impl RuntimeConf {
    /// `CNI_ARGS` as the plugins expect it; `IgnoreUnknown=1` first so plugins
    /// that do not know a key (bridge does not know `IP`) accept it.
    fn cni_args(&self) -> String {
        if self.args.is_empty() {
            return String::new();
        }
        let mut parts = vec!["IgnoreUnknown=1".to_string()];
        parts.extend(
            self.args
                .iter()
                .filter(|(k, _)| k != "IgnoreUnknown")
                .map(|(k, v)| format!("{k}={v}")),
        );
        parts.join(";")
    }
}

/// The CNI runtime.
#[derive(Debug, Clone)]
pub struct CniRuntime {
    paths: CniPaths,
    plugin_netns: Option<PathBuf>,
}

impl CniRuntime {
    pub fn new(paths: CniPaths) -> Self {
        Self {
            paths,
            plugin_netns: None,
        }
    }

    /// Runs plugins (and host-side lookups) as if the network namespace at
    /// `path` were the host: the bridge, host veths and iptables rules go
    /// there. Tests use it to build their world in a namespace of their own.
    pub fn with_plugin_netns(mut self, path: impl Into<PathBuf>) -> Self {
        self.plugin_netns = Some(path.into());
        self
    }

    pub fn paths(&self) -> &CniPaths {
        &self.paths
    }

    pub fn plugin_netns(&self) -> Option<&Path> {
        self.plugin_netns.as_deref()
    }

    pub fn cache(&self) -> ResultCache {
        ResultCache::new(&self.paths.cache_dir)
    }

    /// Loads a network list by name from the conf dir.
    pub fn load_network(&self, name: &str) -> Result<NetworkConfigList> {
        config::load_network(&self.paths.conf_dir, name)
    }

    /// Runs ADD through the chain and caches the config and result.
    pub fn add(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<CniResult> {
        self.add_with(list, rt, None)
    }

    /// ADD with firebuild's attachment record stored in the cache entry.
    pub(crate) fn add_with(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        fb: Option<FirebuildAttachment>,
    ) -> Result<CniResult> {
        validate_rt(rt)?;
        let cache = self.cache();
        let mut entry = CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: rt.container_id.clone(),
            config: list.bytes.clone(),
            if_name: rt.ifname.clone(),
            network_name: list.name.clone(),
            netns: rt.netns.display().to_string(),
            cni_args: rt
                .args
                .iter()
                .map(|(k, v)| [k.clone(), v.clone()])
                .collect(),
            capability_args: rt.capability_args.clone(),
            result: None,
            partial_result: None,
            firebuild: fb,
        };
        // Written before ADD so a crash mid-chain still leaves what DEL needs.
        cache.store(&entry)?;

        let args = rt.cni_args();
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let ty = config::str_field(plugin, "type").unwrap_or_default();
            let stdin = plugin_stdin(list, plugin, prev.as_ref(), &rt.capability_args)?;
            let out = run_plugin(&ty, &stdin, &self.invocation(CniCommand::Add, rt, &args))?;
            let value: Value = serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
                plugin: ty.clone(),
                command: "ADD".into(),
                reason: e.to_string(),
                output: String::from_utf8_lossy(&out).into_owned(),
            })?;
            if i + 1 < list.plugins.len() {
                entry.partial_result = Some(value.clone());
                cache.store(&entry)?;
            }
            prev = Some(value);
        }
        let raw = prev.unwrap_or(Value::Null);
        let result = CniResult::parse(raw.clone()).map_err(|reason| CniError::BadResult {
            plugin: list.plugin_types().last().cloned().unwrap_or_default(),
            command: "ADD".into(),
            reason,
            output: raw.to_string(),
        })?;
        entry.result = Some(raw);
        entry.partial_result = None;
        cache.store(&entry)?;
        tracing::info!(network = %list.name, container_id = %rt.container_id, "CNI ADD done");
        Ok(result)
    }

    /// Runs CHECK through the chain with the cached result as `prevResult`.
    pub fn check(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        validate_rt(rt)?;
        if !version_at_least(&list.cni_version, "0.4.0") {
            return Err(CniError::CheckUnsupported {
                network: list.name.clone(),
                version: list.cni_version.clone(),
            });
        }
        if list.disable_check {
            return Ok(());
        }
        let cached = self
            .cache()
            .load(&list.name, &rt.container_id, &rt.ifname)?
            .and_then(|e| e.result)
            .ok_or_else(|| CniError::NotCached {
                network: list.name.clone(),
                container_id: rt.container_id.clone(),
                ifname: rt.ifname.clone(),
                cache_dir: self.paths.cache_dir.clone(),
            })?;
        let args = rt.cni_args();
        for plugin in &list.plugins {
            let ty = config::str_field(plugin, "type").unwrap_or_default();
            let stdin = plugin_stdin(list, plugin, Some(&cached), &rt.capability_args)?;
            run_plugin(&ty, &stdin, &self.invocation(CniCommand::Check, rt, &args))?;
        }
        Ok(())
    }

    /// Runs DEL through the chain in reverse and drops the cache entry.
    ///
    /// Every plugin is run even if an earlier one fails (so one broken plugin
    /// does not keep the others' state alive); the first error is returned
    /// and the cache entry is then kept for a later retry.
    pub fn del(&self, list: &NetworkConfigList, rt: &RuntimeConf) -> Result<()> {
        validate_rt(rt)?;
        let cached = self
            .cache()
            .load(&list.name, &rt.container_id, &rt.ifname)?;
        self.run_del(list, rt, cached.as_ref().and_then(CacheEntry::prev_result))?;
        self.cache()
            .remove(&list.name, &rt.container_id, &rt.ifname)
    }

    /// DEL of a cached attachment with the exact config, arguments and netns
    /// it was added with (works after a crash, or after its conf file is gone).
    pub fn del_cached(&self, entry: &CacheEntry) -> Result<()> {
        let list = NetworkConfigList::from_bytes(&entry.config, None)?;
        let rt = entry_runtime_conf(entry);
        self.run_del(&list, &rt, entry.prev_result())?;
        self.cache()
            .remove(&entry.network_name, &entry.container_id, &entry.if_name)
    }

    fn run_del(
        &self,
        list: &NetworkConfigList,
        rt: &RuntimeConf,
        cached: Option<&Value>,
    ) -> Result<()> {
        // Pre-0.4.0 plugins did not get prevResult on DEL.
        let prev = cached.filter(|_| version_at_least(&list.cni_version, "0.4.0"));
        let args = rt.cni_args();
        let mut first_err = None;
        for plugin in list.plugins.iter().rev() {
            let ty = config::str_field(plugin, "type").unwrap_or_default();
            let res = plugin_stdin(list, plugin, prev, &rt.capability_args).and_then(|stdin| {
                run_plugin(&ty, &stdin, &self.invocation(CniCommand::Del, rt, &args))
            });
            if let Err(e) = res {
                tracing::warn!(plugin = %ty, error = %e, "CNI DEL failed");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                tracing::info!(network = %list.name, container_id = %rt.container_id, "CNI DEL done");
                Ok(())
            }
        }
    }

    fn invocation<'a>(
        &'a self,
        command: CniCommand,
        rt: &'a RuntimeConf,
        args: &'a str,
    ) -> Invocation<'a> {
        Invocation {
            command,
            container_id: &rt.container_id,
            netns: &rt.netns,
            ifname: &rt.ifname,
            args,
            bin_dirs: &self.paths.bin_dirs,
            plugin_netns: self.plugin_netns.as_deref(),
        }
    }
}

/// The `RuntimeConf` a cache entry was made with.
pub fn entry_runtime_conf(entry: &CacheEntry) -> RuntimeConf {
    let netns = if !entry.netns.is_empty() {
        PathBuf::from(&entry.netns)
    } else {
        entry
            .firebuild
            .as_ref()
            .map(|f| f.netns_path.clone())
            .unwrap_or_default()
    };
    RuntimeConf {
        container_id: entry.container_id.clone(),
        netns,
        ifname: entry.if_name.clone(),
        args: entry
            .cni_args
            .iter()
            .map(|[k, v]| (k.clone(), v.clone()))
            .collect(),
        capability_args: entry.capability_args.clone(),
    }
}

fn validate_rt(rt: &RuntimeConf) -> Result<()> {
    validate_name("container ID", &rt.container_id, 128)?;
    crate::netlink::validate_ifname(&rt.ifname)?;
    Ok(())
}

/// One plugin's stdin: its config with the list's `name` and `cniVersion`,
/// the previous result, and `runtimeConfig` for its declared capabilities.
pub(crate) fn plugin_stdin(
    list: &NetworkConfigList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    capability_args: &Map<String, Value>,
) -> Result<Vec<u8>> {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    match prev {
        Some(p) => {
            conf.insert("prevResult".into(), p.clone());
        }
        None => {
            conf.remove("prevResult");
        }
    }
    let wanted: Map<String, Value> = plugin
        .get("capabilities")
        .and_then(Value::as_object)
        .map(|caps| {
            caps.iter()
                .filter(|(_, on)| on.as_bool() == Some(true))
                .filter_map(|(k, _)| capability_args.get(k).map(|v| (k.clone(), v.clone())))
                .collect()
        })
        .unwrap_or_default();
    if !wanted.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(wanted));
    }
    serde_json::to_vec(&Value::Object(conf)).map_err(|e| CniError::InvalidConfig {
        origin: list.name.clone(),
        reason: format!("encoding plugin config: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn stdin_injects_name_version_prev_and_capabilities() {
        let list = NetworkConfigList::from_bytes(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true,"bandwidth":false}}]}"#,
            None,
        )
        .unwrap();
        let mut caps = Map::new();
        caps.insert(
            "portMappings".into(),
            json!([{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]),
        );
        caps.insert("bandwidth".into(), json!({"ingressRate": 1}));
        let prev = json!({"cniVersion": "1.0.0", "ips": []});

        let bridge: Value =
            serde_json::from_slice(&plugin_stdin(&list, &list.plugins[0], None, &caps).unwrap())
                .unwrap();
        assert_eq!(bridge["name"], "n");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("runtimeConfig").is_none());
        assert!(bridge.get("prevResult").is_none());

        let pm: Value = serde_json::from_slice(
            &plugin_stdin(&list, &list.plugins[1], Some(&prev), &caps).unwrap(),
        )
        .unwrap();
        assert_eq!(pm["prevResult"], prev);
        assert_eq!(pm["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(pm["runtimeConfig"].get("bandwidth").is_none());
    }

    #[test]
    fn cni_args_ignore_unknown() {
        let rt = RuntimeConf {
            args: vec![("IP".into(), "10.0.0.5".into())],
            ..Default::default()
        };
        assert_eq!(rt.cni_args(), "IgnoreUnknown=1;IP=10.0.0.5");
        assert_eq!(RuntimeConf::default().cni_args(), "");
    }

    #[test]
    fn flags_put_given_bin_dir_first() {
        let p = CniPaths::from_flags(None, Some("/x".into()), None);
        assert_eq!(
            p.bin_dirs,
            vec![
                PathBuf::from("/x"),
                "/opt/cni/bin".into(),
                "/usr/lib/cni".into()
            ]
        );
        let p = CniPaths::from_flags(None, Some("/usr/lib/cni".into()), None);
        assert_eq!(
            p.bin_dirs,
            vec![PathBuf::from("/usr/lib/cni"), "/opt/cni/bin".into()]
        );
    }
}
