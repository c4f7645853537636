//! Registry credentials from Docker's `config.json` (`$DOCKER_CONFIG` or
//! `~/.docker`), as Docker and Podman read them: `credHelpers`, then
//! `credsStore`, then the base64 `auth` (or `username`/`password`) in `auths`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

use crate::config::canonical_registry;
use crate::error::Error;
use crate::reference::DOCKER_HUB;

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperReply {
    username: String,
    secret: String,
}

/// The directory holding `config.json`: the explicit one, else `$DOCKER_CONFIG`,
/// else `~/.docker`.
pub fn docker_config_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("DOCKER_CONFIG").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker"))
}

/// Looks up credentials for `registry` (`HOST[:PORT]`). A missing file means
/// anonymous access; a malformed one is an error naming the file.
pub fn lookup(config_dir: Option<&Path>, registry: &str) -> Result<Option<Credentials>, Error> {
    let Some(dir) = docker_config_dir(config_dir) else {
        return Ok(None);
    };
    let path = dir.join("config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::Credentials {
                path,
                reason: e.to_string(),
            })
        }
    };
    let file: DockerConfigFile = serde_json::from_str(&text).map_err(|e| Error::Credentials {
        path: path.clone(),
        reason: format!("not valid JSON: {e}"),
    })?;
    let registry = canonical_registry(registry);

    let helper = file
        .cred_helpers
        .iter()
        .find(|(k, _)| key_host(k) == registry)
        .map(|(_, v)| v.clone())
        .or(file.creds_store.clone());
    if let Some(helper) = helper {
        if let Some(c) = from_helper(&helper, registry, &path)? {
            return Ok(Some(c));
        }
    }

    let Some((key, entry)) = file.auths.iter().find(|(k, _)| key_host(k) == registry) else {
        return Ok(None);
    };
    let bad = |reason: String| Error::Credentials {
        path: path.clone(),
        reason: format!("entry {key:?}: {reason}"),
    };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| bad(format!("`auth` is not base64: {e}")))?;
        let text = String::from_utf8(raw).map_err(|_| bad("`auth` is not UTF-8".into()))?;
        let (username, password) = text
            .split_once(':')
            .ok_or_else(|| bad("`auth` does not decode to USER:PASSWORD".into()))?;
        return Ok(Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        }));
    }
    match (&entry.username, &entry.password) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// The registry host a config key names: keys may be bare hosts or URLs
/// (`https://index.docker.io/v1/`).
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    canonical_registry(rest.split('/').next().unwrap_or(rest))
}

/// Runs `docker-credential-<helper> get` with the server URL on stdin.
fn from_helper(helper: &str, registry: &str, config: &Path) -> Result<Option<Credentials>, Error> {
    let server = if registry == DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    let program = format!("docker-credential-{helper}");
    let failed = |reason: String| Error::Credentials {
        path: config.to_path_buf(),
        reason: format!("credential helper {program}: {reason}"),
    };
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(format!(
                "cannot run it ({e}); install it or remove it from the config"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(server.as_bytes())
            .map_err(|e| failed(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        // Helpers answer "credentials not found" with a failure status.
        tracing::debug!(%program, %registry, "credential helper has no entry");
        return Ok(None);
    }
    let reply: HelperReply =
        serde_json::from_slice(&out.stdout).map_err(|e| failed(format!("bad reply: {e}")))?;
    if reply.username == "<token>" {
        tracing::warn!(%registry, "identity tokens from credential helpers are not supported; pulling anonymously");
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: reply.username,
        password: reply.secret,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_config(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    #[test]
    fn reads_base64_auth() {
        let dir = tempfile::tempdir().unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cr:et");
        write_config(
            dir.path(),
            &format!(
                r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}},
                   "127.0.0.1:5000":{{"username":"bob","password":"pw"}}}}}}"#
            ),
        );
        let c = lookup(Some(dir.path()), "docker.io").unwrap().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cr:et")
        );
        let c = lookup(Some(dir.path()), "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!(c.username, "bob");
        assert!(lookup(Some(dir.path()), "ghcr.io").unwrap().is_none());
    }

    #[test]
    fn missing_file_is_anonymous_and_bad_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(lookup(Some(dir.path()), "docker.io").unwrap().is_none());
        write_config(dir.path(), "{not json");
        let err = lookup(Some(dir.path()), "docker.io")
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.json"), "{err}");
        write_config(dir.path(), r#"{"auths":{"x.io":{"auth":"!!!"}}}"#);
        let err = lookup(Some(dir.path()), "x.io").unwrap_err().to_string();
        assert!(err.contains("base64"), "{err}");
    }

    #[test]
    fn missing_helper_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        write_config(
            dir.path(),
            r#"{"credHelpers":{"x.io":"firebuild-no-such-helper"}}"#,
        );
        let err = lookup(Some(dir.path()), "x.io").unwrap_err().to_string();
        assert!(
            err.contains("docker-credential-firebuild-no-such-helper"),
            "{err}"
        );
    }
}
