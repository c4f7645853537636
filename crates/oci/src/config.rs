//! Registry settings (insecure registries, mirrors) that the CLI fills from
//! the profile and the command line.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::reference::DOCKER_HUB;

/// How to reach registries: which may use plain http, which have mirrors, and
/// where the credentials live.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryConfig {
    /// `HOST[:PORT]` of registries reached over plain http
    /// (`--insecure-registry`). Loopback hosts (127.0.0.0/8, ::1, localhost)
    /// are always allowed plain http, as Docker does.
    #[serde(default)]
    pub insecure: Vec<String>,
    /// Mirrors per registry (`--registry-mirror REGISTRY=URL`), tried in order
    /// before the registry itself. URL is `[http[s]://]HOST[:PORT]`.
    #[serde(default)]
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Directory holding `config.json` with credentials; `None` means
    /// `$DOCKER_CONFIG`, else `~/.docker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_config_dir: Option<PathBuf>,
}

/// One place to fetch an image from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `HOST[:PORT]` as used in URLs.
    pub host: String,
    pub plain_http: bool,
    pub is_mirror: bool,
}

impl RegistryConfig {
    /// Parses one `--registry-mirror REGISTRY=URL` flag and adds it.
    pub fn add_mirror(&mut self, flag: &str) -> Result<(), Error> {
        let (registry, url) = flag
            .split_once('=')
            .ok_or_else(|| Error::InvalidMirror(flag.to_string()))?;
        if registry.is_empty() {
            return Err(Error::InvalidMirror(flag.to_string()));
        }
        parse_mirror_url(url).ok_or_else(|| Error::InvalidMirror(flag.to_string()))?;
        self.mirrors
            .entry(canonical_registry(registry).to_string())
            .or_default()
            .push(url.to_string());
        Ok(())
    }

    /// Checks every mirror URL; the CLI calls this after filling the struct.
    pub fn validate(&self) -> Result<(), Error> {
        for (registry, urls) in &self.mirrors {
            for url in urls {
                parse_mirror_url(url)
                    .ok_or_else(|| Error::InvalidMirror(format!("{registry}={url}")))?;
            }
        }
        Ok(())
    }

    /// Whether `host` (`HOST[:PORT]`) may be reached over plain http.
    pub fn allows_plain_http(&self, host: &str) -> bool {
        is_loopback(host) || self.insecure.iter().any(|h| h == host)
    }

    /// Mirrors (in order) then the registry itself.
    pub(crate) fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out = Vec::new();
        if let Some(urls) = self.mirrors.get(canonical_registry(registry)) {
            for url in urls {
                if let Some((host, scheme)) = parse_mirror_url(url) {
                    let plain_http = match scheme {
                        Some(s) => s == "http",
                        None => self.allows_plain_http(&host),
                    };
                    out.push(Endpoint {
                        host,
                        plain_http,
                        is_mirror: true,
                    });
                }
            }
        }
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: self.allows_plain_http(registry),
            is_mirror: false,
        });
        out
    }
}

/// Docker Hub has several names; mirrors and credentials are keyed by `docker.io`.
pub(crate) fn canonical_registry(registry: &str) -> &str {
    match registry {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        other => other,
    }
}

/// `[scheme://]host[:port][/]` → (host, scheme). Paths are not supported:
/// requests go to `<host>/v2/<repository>/…` as on the registry itself.
fn parse_mirror_url(url: &str) -> Option<(String, Option<&str>)> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
        Some(_) => return None,
        None => (None, url),
    };
    let host = rest.strip_suffix('/').unwrap_or(rest);
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b));
    valid.then(|| (host.to_string(), scheme))
}

/// Whether `HOST[:PORT]` names the loopback interface.
fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() > 1 {
        host // bare IPv6 without a port
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_plain_http() {
        let c = RegistryConfig::default();
        assert!(c.allows_plain_http("127.0.0.1:5000"));
        assert!(c.allows_plain_http("127.3.2.1"));
        assert!(c.allows_plain_http("[::1]:5000"));
        assert!(c.allows_plain_http("localhost:5000"));
        assert!(!c.allows_plain_http("10.0.0.1:5000"));
        assert!(!c.allows_plain_http("ghcr.io"));
        let c = RegistryConfig {
            insecure: vec!["reg.lan:5000".into()],
            ..Default::default()
        };
        assert!(c.allows_plain_http("reg.lan:5000"));
        assert!(!c.allows_plain_http("reg.lan"));
    }

    #[test]
    fn mirrors_come_first() {
        let mut c = RegistryConfig::default();
        c.add_mirror("docker.io=http://mirror.lan:5000").unwrap();
        c.add_mirror("index.docker.io=https://m2.lan/").unwrap();
        let e = c.endpoints("docker.io");
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].host, "mirror.lan:5000");
        assert!(e[0].plain_http && e[0].is_mirror);
        assert_eq!(e[1].host, "m2.lan");
        assert!(!e[1].plain_http);
        assert_eq!(e[2].host, "docker.io");
        assert!(!e[2].is_mirror);
        assert_eq!(c.endpoints("ghcr.io").len(), 1);
    }

    #[test]
    fn rejects_bad_mirrors() {
        let mut c = RegistryConfig::default();
        for bad in [
            "docker.io",
            "=http://x",
            "docker.io=ftp://x",
            "docker.io=http://x/path",
            "docker.io=",
        ] {
            assert!(c.add_mirror(bad).is_err(), "{bad} accepted");
        }
    }
}
