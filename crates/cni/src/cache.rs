//! The CNI result cache, in libcni's on-disk format.
//!
//! Entries live at `<cache_dir>/results/<network>-<container>-<ifname>` with
//! libcni's fields (`kind: cniCacheV1`, base64 `config`, `result`, ...), so
//! other CNI tools can read ours. We add a `firebuild` object (ignored by
//! libcni) naming the VM's netns and tap, which also marks entries as ours:
//! orphan search never touches another runtime's attachments.
//!
//! Unlike libcni we write the entry *before* ADD (without a result) and
//! complete it after: a crash in the middle of ADD still leaves the exact
//! config behind for DEL.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CniError, Result};

pub(crate) const CACHE_KIND: &str = "cniCacheV1";

/// What firebuild adds to a cache entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirebuildAttachment {
    /// The VM this attachment belongs to.
    pub vm_id: String,
    /// `/run/netns/<name>` of the VM.
    pub netns_path: PathBuf,
    /// The tap device inside that netns, empty if the chain made none.
    #[serde(default)]
    pub tap_name: String,
    /// Whether we made and wired the tap (CHECK then verifies the wiring);
    /// false when a plugin of the chain made it.
    #[serde(default)]
    pub tap_wired: bool,
    /// Whether we created the netns (and so must delete it).
    #[serde(default)]
    pub owns_netns: bool,
}

/// One cached attachment: the exact config and arguments used for ADD, and its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    pub kind: String,
    #[serde(rename = "containerId")]
    pub container_id: String,
    #[serde(with = "b64")]
    pub config: Vec<u8>,
    #[serde(rename = "ifName")]
    pub if_name: String,
    #[serde(rename = "networkName")]
    pub network_name: String,
    #[serde(rename = "netns", default, skip_serializing_if = "String::is_empty")]
    pub netns: String,
    #[serde(rename = "cniArgs", default, skip_serializing_if = "Vec::is_empty")]
    pub cni_args: Vec<[String; 2]>,
    #[serde(
        rename = "capabilityArgs",
        default,
        skip_serializing_if = "Map::is_empty"
    )]
    pub capability_args: Map<String, Value>,
    /// The ADD result; absent while ADD is in progress or if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// While ADD runs (or after it failed or crashed midway): the result of
    /// the last plugin that succeeded, so DEL can tell the plugins what they
    /// made (firewall removes its rules by the addresses in `prevResult`).
    #[serde(
        rename = "firebuildPartialResult",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub partial_result: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firebuild: Option<FirebuildAttachment>,
}

impl CacheEntry {
    /// What DEL passes as `prevResult`: the ADD result, or the partial one.
    pub fn prev_result(&self) -> Option<&Value> {
        self.result.as_ref().or(self.partial_result.as_ref())
    }
}

mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(serde::de::Error::custom)
    }
}

/// The cache directory (`--cni-cache-dir`).
#[derive(Debug, Clone)]
pub struct ResultCache {
    dir: PathBuf,
}

impl ResultCache {
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: cache_dir.into(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn results_dir(&self) -> PathBuf {
        self.dir.join("results")
    }

    /// The file of one attachment.
    pub fn path(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.results_dir()
            .join(format!("{network}-{container_id}-{ifname}"))
    }

    /// Writes (or replaces) an entry atomically.
    pub fn store(&self, entry: &CacheEntry) -> Result<()> {
        let dir = self.results_dir();
        fs::create_dir_all(&dir).map_err(|e| CniError::io(&dir, e))?;
        let path = self.path(&entry.network_name, &entry.container_id, &entry.if_name);
        let json = serde_json::to_vec(entry).map_err(|e| CniError::CacheCorrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut tmp = tempfile_in(&dir, &path)?;
        tmp.1
            .write_all(&json)
            .and_then(|_| tmp.1.sync_all())
            .map_err(|e| CniError::io(&tmp.0, e))?;
        fs::rename(&tmp.0, &path).map_err(|e| CniError::io(&path, e))?;
        Ok(())
    }

    /// Reads one entry; `None` if there is none.
    pub fn load(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<CacheEntry>> {
        let path = self.path(network, container_id, ifname);
        match fs::read(&path) {
            Ok(bytes) => parse_entry(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::io(&path, e)),
        }
    }

    /// Removes one entry; a missing entry is fine.
    pub fn remove(&self, network: &str, container_id: &str, ifname: &str) -> Result<()> {
        let path = self.path(network, container_id, ifname);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CniError::io(&path, e)),
        }
    }

    /// All readable entries, plus the paths of unreadable ones with why.
    pub fn list(&self) -> Result<(Vec<CacheEntry>, Vec<CniError>)> {
        let dir = self.results_dir();
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Vec::new(), Vec::new()))
            }
            Err(e) => return Err(CniError::io(&dir, e)),
        };
        let mut entries = Vec::new();
        let mut bad = Vec::new();
        let mut paths: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !is_temp(p))
            .collect();
        paths.sort();
        for path in paths {
            match fs::read(&path) {
                Ok(bytes) => match parse_entry(&path, &bytes) {
                    Ok(e) => entries.push(e),
                    Err(e) => bad.push(e),
                },
                Err(e) => bad.push(CniError::io(&path, e)),
            }
        }
        Ok((entries, bad))
    }

    /// Entries firebuild made for `vm_id`.
    pub fn for_vm(&self, vm_id: &str) -> Result<Vec<CacheEntry>> {
        Ok(self
            .list()?
            .0
            .into_iter()
            .filter(|e| e.firebuild.as_ref().is_some_and(|f| f.vm_id == vm_id))
            .collect())
    }
}

fn parse_entry(path: &Path, bytes: &[u8]) -> Result<CacheEntry> {
    let corrupt = |reason: String| CniError::CacheCorrupt {
        path: path.to_path_buf(),
        reason,
    };
    let entry: CacheEntry = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
    if entry.kind != CACHE_KIND {
        return Err(corrupt(format!("unknown kind {:?}", entry.kind)));
    }
    Ok(entry)
}

fn is_temp(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with(".tmp-"))
}

fn tempfile_in(dir: &Path, target: &Path) -> Result<(PathBuf, fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".tmp-{}-{name}", std::process::id()));
    let file = fs::File::create(&tmp).map_err(|e| CniError::io(&tmp, e))?;
    Ok((tmp, file))
}

/// Encodes the config bytes like libcni does (for tests and tools).
pub fn encode_config(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(cid: &str, vm: Option<&str>) -> CacheEntry {
        CacheEntry {
            kind: CACHE_KIND.into(),
            container_id: cid.into(),
            config: br#"{"name":"n"}"#.to_vec(),
            if_name: "eth0".into(),
            network_name: "n".into(),
            netns: String::new(),
            cni_args: vec![["IP".into(), "10.0.0.2".into()]],
            capability_args: Map::new(),
            result: None,
            partial_result: None,
            firebuild: vm.map(|v| FirebuildAttachment {
                vm_id: v.into(),
                netns_path: "/run/netns/x".into(),
                tap_name: "tap0".into(),
                tap_wired: true,
                owns_netns: true,
            }),
        }
    }

    #[test]
    fn roundtrip_in_libcni_format() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        cache.store(&entry("c1", Some("vm1"))).unwrap();
        cache.store(&entry("c2", None)).unwrap();
        let path = dir.path().join("results/n-c1-eth0");
        let raw: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(raw["kind"], "cniCacheV1");
        assert_eq!(raw["config"], encode_config(br#"{"name":"n"}"#));
        assert_eq!(raw["cniArgs"][0][1], "10.0.0.2");
        assert_eq!(
            cache.load("n", "c1", "eth0").unwrap().unwrap(),
            entry("c1", Some("vm1"))
        );
        assert_eq!(cache.for_vm("vm1").unwrap().len(), 1);
        assert_eq!(cache.list().unwrap().0.len(), 2);
        cache.remove("n", "c1", "eth0").unwrap();
        cache.remove("n", "c1", "eth0").unwrap();
        assert!(cache.load("n", "c1", "eth0").unwrap().is_none());
    }

    #[test]
    fn corrupt_entries_are_reported_not_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ResultCache::new(dir.path());
        cache.store(&entry("c1", Some("vm1"))).unwrap();
        fs::write(dir.path().join("results/n-bad-eth0"), "{").unwrap();
        let (ok, bad) = cache.list().unwrap();
        assert_eq!(ok.len(), 1);
        assert_eq!(bad.len(), 1);
        assert!(matches!(
            cache.load("n", "bad", "eth0"),
            Err(CniError::CacheCorrupt { .. })
        ));
    }
}
