//! CNI network configuration lists: loading by name from a conf dir.
//!
//! Like libcni, `.conflist` files are searched first, then single-plugin
//! `.conf`/`.json` files (turned into a one-plugin list); files are taken in
//! name order and the first with the wanted `name` wins.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{validate_name, CniError, Result};

/// Longest network name we accept (it becomes part of file names).
pub const MAX_NAME_LEN: usize = 64;

/// A network configuration list (`.conflist`), the unit a runtime ADDs/DELs.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfigList {
    pub name: String,
    pub cni_version: String,
    /// `disableCheck` of the list: CHECK becomes a no-op.
    pub disable_check: bool,
    /// Each plugin's configuration object, in chain order (each has a `type`).
    pub plugins: Vec<Map<String, Value>>,
    /// The list's JSON, as stored in the result cache for later DEL/CHECK.
    pub bytes: Vec<u8>,
    /// The file it came from, if any.
    pub source: Option<PathBuf>,
}

impl NetworkConfigList {
    /// Parses a `.conflist` document.
    pub fn from_bytes(bytes: &[u8], source: Option<&Path>) -> Result<Self> {
        let invalid = invalid_config(source);
        let (obj, name) = named_object(bytes, &invalid)?;
        validate_name("network name", &name, MAX_NAME_LEN)?;
        let cni_version = str_field(&obj, "cniVersion").unwrap_or_else(|| "0.1.0".into());
        let disable_check = obj
            .get("disableCheck")
            .map(|v| v.as_bool().or_else(|| v.as_str().map(|s| s == "true")))
            .map(|b| b.ok_or_else(|| invalid("\"disableCheck\" is not a boolean".into())))
            .transpose()?
            .unwrap_or(false);
        let plugins = obj
            .get("plugins")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("no \"plugins\" array".into()))?;
        if plugins.is_empty() {
            return Err(invalid("\"plugins\" is empty".into()));
        }
        let mut out = Vec::with_capacity(plugins.len());
        for (i, p) in plugins.iter().enumerate() {
            let p = p
                .as_object()
                .ok_or_else(|| invalid(format!("plugin {i} is not an object")))?;
            let ty = str_field(p, "type")
                .ok_or_else(|| invalid(format!("plugin {i} has no \"type\"")))?;
            if ty.is_empty() || ty.contains('/') || ty.starts_with('.') {
                return Err(invalid(format!("plugin {i} has an unusable type {ty:?}")));
            }
            out.push(p.clone());
        }
        Ok(NetworkConfigList {
            name,
            cni_version,
            disable_check,
            plugins: out,
            bytes: bytes.to_vec(),
            source: source.map(Path::to_path_buf),
        })
    }

    /// Parses a single-plugin `.conf` document into a one-plugin list.
    pub fn from_conf_bytes(bytes: &[u8], source: Option<&Path>) -> Result<Self> {
        let invalid = invalid_config(source);
        let (obj, name) = named_object(bytes, &invalid)?;
        let mut list = Map::new();
        list.insert("name".into(), Value::String(name));
        if let Some(v) = obj.get("cniVersion") {
            list.insert("cniVersion".into(), v.clone());
        }
        list.insert("plugins".into(), Value::Array(vec![Value::Object(obj)]));
        let list_bytes = serde_json::to_vec(&Value::Object(list))
            .map_err(|e| invalid(format!("re-encoding as a list: {e}")))?;
        let mut parsed = Self::from_bytes(&list_bytes, source)?;
        parsed.source = source.map(Path::to_path_buf);
        Ok(parsed)
    }

    /// The plugin types in chain order.
    pub fn plugin_types(&self) -> Vec<String> {
        self.plugins
            .iter()
            .filter_map(|p| str_field(p, "type"))
            .collect()
    }
}

/// Makes the `InvalidConfig` errors of the document read from `source`.
fn invalid_config(source: Option<&Path>) -> impl Fn(String) -> CniError {
    let origin = source.map_or_else(|| "(in memory)".to_string(), |p| p.display().to_string());
    move |reason| CniError::InvalidConfig {
        origin: origin.clone(),
        reason,
    }
}

/// A config document's top level: a JSON object with a string "name".
fn named_object(
    bytes: &[u8],
    invalid: &impl Fn(String) -> CniError,
) -> Result<(Map<String, Value>, String)> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(invalid("top level is not an object".into()));
    };
    let name = str_field(&obj, "name").ok_or_else(|| invalid("no \"name\"".into()))?;
    Ok((obj, name))
}

pub(crate) fn str_field(obj: &Map<String, Value>, key: &str) -> Option<String> {
    obj.get(key).and_then(Value::as_str).map(str::to_string)
}

/// The kind of a config file, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfKind {
    List,
    Single,
}

/// Config files in `dir`, sorted by name, lists first (libcni's search order).
pub(crate) fn conf_files(dir: &Path) -> Result<Vec<(PathBuf, ConfKind)>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CniError::io(dir, e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| CniError::io(dir, e))?.path();
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("conflist") => ConfKind::List,
            Some("conf") | Some("json") => ConfKind::Single,
            _ => continue,
        };
        if path.is_file() {
            files.push((path, kind));
        }
    }
    files.sort_by(|a, b| {
        let rank = |k: ConfKind| u8::from(k == ConfKind::Single);
        rank(a.1).cmp(&rank(b.1)).then_with(|| a.0.cmp(&b.0))
    });
    Ok(files)
}

/// Reads one config file of either kind.
pub(crate) fn load_file(path: &Path, kind: ConfKind) -> Result<NetworkConfigList> {
    let bytes = fs::read(path).map_err(|e| CniError::io(path, e))?;
    match kind {
        ConfKind::List => NetworkConfigList::from_bytes(&bytes, Some(path)),
        ConfKind::Single => NetworkConfigList::from_conf_bytes(&bytes, Some(path)),
    }
}

/// Every network in `dir` (first file per name wins). Unparseable files are
/// returned as errors alongside, so one bad file does not hide the rest.
pub fn load_all(dir: &Path) -> Result<(Vec<NetworkConfigList>, Vec<CniError>)> {
    let mut lists: Vec<NetworkConfigList> = Vec::new();
    let mut errors = Vec::new();
    for (path, kind) in conf_files(dir)? {
        match load_file(&path, kind) {
            Ok(l) if lists.iter().any(|x| x.name == l.name) => {
                tracing::debug!(path = %path.display(), name = %l.name, "shadowed by an earlier file");
            }
            Ok(l) => lists.push(l),
            Err(e) => errors.push(e),
        }
    }
    Ok((lists, errors))
}

/// Loads the network named `name` from `dir`.
pub fn load_network(dir: &Path, name: &str) -> Result<NetworkConfigList> {
    validate_name("network name", name, MAX_NAME_LEN)?;
    for (path, kind) in conf_files(dir)? {
        match load_file(&path, kind) {
            Ok(l) if l.name == name => return Ok(l),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "skipping unreadable CNI config"),
        }
    }
    Err(CniError::NetworkNotFound {
        name: name.to_string(),
        dir: dir.to_path_buf(),
    })
}

/// Compares dotted spec versions (`0.4.0` < `1.0.0`); unparseable parts count as 0.
pub(crate) fn version_at_least(version: &str, min: &str) -> bool {
    let parse = |v: &str| -> Vec<u64> { v.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (a, b) = (parse(version), parse(min));
    for i in 0..a.len().max(b.len()) {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x > y;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_lists_and_single_confs_by_name() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("10-a.conflist"),
            r#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        fs::write(
            dir.path().join("20-b.conf"),
            r#"{"cniVersion":"0.4.0","name":"b","type":"bridge","bridge":"x"}"#,
        )
        .unwrap();
        fs::write(dir.path().join("30-bad.conflist"), "{not json").unwrap();
        fs::write(dir.path().join("README"), "ignored").unwrap();

        let a = load_network(dir.path(), "a").unwrap();
        assert_eq!(a.plugin_types(), vec!["bridge", "portmap"]);
        assert_eq!(a.cni_version, "1.0.0");
        let b = load_network(dir.path(), "b").unwrap();
        assert_eq!(b.plugin_types(), vec!["bridge"]);
        assert_eq!(b.plugins[0]["bridge"], "x");
        // The cached bytes of a single conf are a valid list.
        assert_eq!(
            NetworkConfigList::from_bytes(&b.bytes, None).unwrap().name,
            "b"
        );

        let err = load_network(dir.path(), "c").unwrap_err();
        assert!(matches!(err, CniError::NetworkNotFound { .. }), "{err}");
        let (all, errors) = load_all(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(errors.len(), 1);
        assert!(load_network(dir.path(), "../etc").is_err());
    }

    #[test]
    fn rejects_bad_lists() {
        for bad in [
            r#"{"name":"x"}"#,
            r#"{"name":"x","plugins":[]}"#,
            r#"{"name":"x","plugins":[{"nope":1}]}"#,
            r#"{"name":"x","plugins":[{"type":"../../bin/sh"}]}"#,
            r#"{"plugins":[{"type":"bridge"}]}"#,
        ] {
            assert!(
                NetworkConfigList::from_bytes(bad.as_bytes(), None).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn lists_and_single_confs_share_the_top_level_checks() {
        let src = Path::new("/etc/cni/net.d/x.conf");
        for (bad, reason) in [
            ("{not json", "not JSON"),
            ("[1]", "top level is not an object"),
            (r#"{"type":"bridge"}"#, "no \"name\""),
        ] {
            for err in [
                NetworkConfigList::from_bytes(bad.as_bytes(), Some(src)).unwrap_err(),
                NetworkConfigList::from_conf_bytes(bad.as_bytes(), Some(src)).unwrap_err(),
            ] {
                let msg = err.to_string();
                assert!(matches!(err, CniError::InvalidConfig { .. }), "{msg}");
                assert!(msg.contains(reason) && msg.contains("x.conf"), "{msg}");
            }
        }
        let err = NetworkConfigList::from_bytes(b"[]", None).unwrap_err();
        assert!(err.to_string().contains("(in memory)"), "{err}");
    }

    #[test]
    fn versions() {
        assert!(version_at_least("0.4.0", "0.4.0"));
        assert!(version_at_least("1.0.0", "0.4.0"));
        assert!(!version_at_least("0.3.1", "0.4.0"));
        assert!(version_at_least("1.1", "1.0.0"));
    }
}
