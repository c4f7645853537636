//! Errors of the CNI runtime: each says what failed, on which input, and what to do.

use std::io;
use std::path::PathBuf;

/// Everything that can fail in this crate.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("invalid {what} {value:?}: use letters, digits, '.', '_' and '-', starting with a letter or digit (at most {max} characters)")]
    InvalidName {
        what: &'static str,
        value: String,
        max: usize,
    },

    #[error("no CNI network named {name:?} in {dir}: create it with `firebuild network create {name} --subnet CIDR`, or put a .conflist for it there")]
    NetworkNotFound { name: String, dir: PathBuf },

    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("invalid CNI configuration {origin}: {reason}")]
    InvalidConfig { origin: String, reason: String },

    #[error("CNI plugin {plugin:?} not found in {dirs}: install Debian's containernetworking-plugins or pass the directory that holds it with --cni-bin-dir")]
    PluginNotFound { plugin: String, dirs: String },

    #[error("starting CNI plugin {path} for {command}: {source}")]
    PluginSpawn {
        path: PathBuf,
        command: String,
        #[source]
        source: io::Error,
    },

    /// The plugin reported an error in the CNI error format.
    #[error("CNI plugin {plugin} {command} failed (code {code}): {msg}{}", details_suffix(.details))]
    Plugin {
        plugin: String,
        command: String,
        code: u64,
        msg: String,
        details: String,
    },

    /// The plugin failed without a CNI error on stdout.
    #[error("CNI plugin {plugin} {command} failed ({status}) without a CNI error; stderr: {stderr:?}; stdout: {stdout:?}")]
    PluginFailed {
        plugin: String,
        command: String,
        status: String,
        stderr: String,
        stdout: String,
    },

    #[error("CNI plugin {plugin} {command} returned a result that does not parse ({reason}): {output:?}")]
    BadResult {
        plugin: String,
        command: String,
        reason: String,
        output: String,
    },

    #[error("CNI network {network:?} uses spec version {version}, which has no CHECK (needs 0.4.0 or later)")]
    CheckUnsupported { network: String, version: String },

    #[error("no cached CNI result for container {container_id:?} on network {network:?} interface {ifname:?} in {cache_dir}: it was never added or already deleted")]
    NotCached {
        network: String,
        container_id: String,
        ifname: String,
        cache_dir: PathBuf,
    },

    #[error("CNI cache entry {path} is unreadable ({reason}); inspect it, then remove it by hand")]
    CacheCorrupt { path: PathBuf, reason: String },

    #[error("network namespace {path}: {op} failed: {source}")]
    Netns {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("netlink {op} in {netns} failed: {reason}")]
    Netlink {
        op: String,
        netns: String,
        reason: String,
    },

    #[error("tap device {name:?} in {netns}: {op} failed: {source}")]
    Tap {
        name: String,
        netns: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("the CNI result for {vm_id:?} has no {what}: the network's IPAM must assign an address to interface {ifname:?}")]
    IncompleteResult {
        vm_id: String,
        ifname: String,
        what: &'static str,
    },

    #[error("invalid port spec {spec:?}: {reason} (forms: HOST:GUEST[/tcp|udp|sctp], IP:HOST:GUEST[/proto], IFACE:HOST:GUEST[/proto], GUEST[/proto])")]
    InvalidPortSpec { spec: String, reason: String },

    #[error("host interface {iface:?} of port spec {spec:?} has no usable address: {reason}")]
    PortInterface {
        spec: String,
        iface: String,
        reason: String,
    },

    #[error(
        "keeping network {network:?} off this host ({command}): {reason}; is iptables installed?"
    )]
    HostGuard {
        network: String,
        command: String,
        reason: String,
    },

    #[error("invalid network settings for {name:?}: {reason}")]
    InvalidNetworkSpec { name: String, reason: String },

    #[error("a CNI network named {name:?} already exists in {path}: choose another name or `firebuild network rm {name}` first")]
    NetworkExists { name: String, path: PathBuf },

    #[error("network {name:?} is in use by {}: kill or purge those VMs first", .vms.join(", "))]
    NetworkInUse { name: String, vms: Vec<String> },

    #[error("VM {vm_id:?} already has network state ({what}): kill or purge it first")]
    AlreadyAttached { vm_id: String, what: String },

    #[error("cleaning up VM {vm_id:?} left work undone: {}; run purge again once fixed", .problems.join("; "))]
    Teardown {
        vm_id: String,
        problems: Vec<String>,
    },
}

fn details_suffix(details: &str) -> String {
    if details.is_empty() {
        String::new()
    } else {
        format!(": {details}")
    }
}

impl CniError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        CniError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of this crate.
pub type Result<T, E = CniError> = std::result::Result<T, E>;

/// Checks a CNI network name or container ID (the spec's allowed characters).
pub(crate) fn validate_name(what: &'static str, value: &str, max: usize) -> Result<()> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if first_ok && rest_ok && value.len() <= max {
        Ok(())
    } else {
        Err(CniError::InvalidName {
            what,
            value: value.to_string(),
            max,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("network name", "machines", 64).is_ok());
        assert!(validate_name("network name", "a.b_c-1", 64).is_ok());
        for bad in ["", "-x", "a/b", "a b", "../x"] {
            assert!(validate_name("network name", bad, 64).is_err(), "{bad}");
        }
        assert!(validate_name("x", "abcdef", 5).is_err());
    }

    #[test]
    fn plugin_error_message_shows_plugin_text() {
        let e = CniError::Plugin {
            plugin: "bridge".into(),
            command: "ADD".into(),
            code: 7,
            msg: "bad config".into(),
            details: "no subnet".into(),
        };
        assert_eq!(
            e.to_string(),
            "CNI plugin bridge ADD failed (code 7): bad config: no subnet"
        );
    }
}
