//! The kernel command line: where the metadata is, and what the kernel's
//! `ip=` argument already configured.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use firebuild_metadata::boot::{METADATA_FROM_MMDS, METADATA_KERNEL_ARG};

/// Kernel argument that turns on the init's info lines.
pub const DEBUG_KERNEL_ARG: &str = "firebuild.debug";

/// The parsed kernel command line (parameters before `--`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    params: Vec<(String, Option<String>)>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CmdlineError {
    #[error(
        "the kernel command line has no {METADATA_KERNEL_ARG}= argument; the runtime must pass \
         {METADATA_KERNEL_ARG}=mmds or {METADATA_KERNEL_ARG}=/dev/vdX"
    )]
    NoMetadataArg,
    #[error(
        "unsupported {METADATA_KERNEL_ARG}={0:?} on the kernel command line: expected \
         \"{METADATA_FROM_MMDS}\" or an absolute device path such as /dev/vdb"
    )]
    BadMetadataArg(String),
}

/// Where the guest metadata comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataSource {
    /// Firecracker MMDS (V2 tokens) at the link-local address.
    Mmds,
    /// A raw config drive (JSON then NUL padding) at this device path.
    ConfigDrive(PathBuf),
}

impl KernelCmdline {
    /// Splits a command line the way the kernel does: whitespace separated
    /// `key[=value]` words, double quotes group spaces and are removed,
    /// everything after a lone `--` belongs to init's argv and is skipped.
    pub fn parse(line: &str) -> Self {
        let mut params = Vec::new();
        for word in split_words(line) {
            if word == "--" {
                break;
            }
            match word.split_once('=') {
                Some((k, v)) => params.push((k.to_string(), Some(v.to_string()))),
                None => params.push((word, None)),
            }
        }
        Self { params }
    }

    /// The value of the last `key=value` (the kernel lets later ones win).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Whether `key` appears at all, with or without a value.
    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    /// Whether `firebuild.debug` (or `firebuild.debug=1`) is set.
    pub fn debug(&self) -> bool {
        match self
            .params
            .iter()
            .rev()
            .find(|(k, _)| k == DEBUG_KERNEL_ARG)
        {
            Some((_, None)) => true,
            Some((_, Some(v))) => !matches!(v.as_str(), "0" | "false" | "no" | "off"),
            None => false,
        }
    }

    /// The metadata source from `firebuild.metadata=`.
    pub fn metadata_source(&self) -> Result<MetadataSource, CmdlineError> {
        let value = self
            .get(METADATA_KERNEL_ARG)
            .ok_or(CmdlineError::NoMetadataArg)?;
        if value == METADATA_FROM_MMDS {
            Ok(MetadataSource::Mmds)
        } else if value.starts_with('/') && !value.contains("..") {
            Ok(MetadataSource::ConfigDrive(PathBuf::from(value)))
        } else {
            Err(CmdlineError::BadMetadataArg(value.to_string()))
        }
    }

    /// The kernel's `ip=` argument, when it asks the kernel to configure an
    /// interface (anything but absent, `off` or `none`).
    pub fn ip_config(&self) -> Option<IpConfig> {
        IpConfig::parse(self.get("ip")?)
    }
}

fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut started = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                started = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if started {
                    words.push(std::mem::take(&mut cur));
                    started = false;
                }
            }
            c => {
                cur.push(c);
                started = true;
            }
        }
    }
    if started {
        words.push(cur);
    }
    words
}

/// The kernel's `ip=` argument:
/// `<client>:<server>:<gateway>:<netmask>:<hostname>:<device>:<autoconf>:<dns0>:<dns1>:<ntp0>`,
/// or a bare autoconf mode such as `dhcp`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpConfig {
    pub client: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub hostname: Option<String>,
    pub device: Option<String>,
    pub autoconf: Option<String>,
    pub nameservers: Vec<Ipv4Addr>,
}

impl IpConfig {
    /// Parses the value; `None` when it turns kernel autoconfiguration off.
    pub fn parse(value: &str) -> Option<Self> {
        if matches!(value, "" | "off" | "none") {
            return None;
        }
        if !value.contains(':') {
            return Some(Self {
                autoconf: Some(value.to_string()),
                ..Self::default()
            });
        }
        let fields: Vec<&str> = value.split(':').collect();
        let field = |i: usize| fields.get(i).copied().filter(|s| !s.is_empty());
        let addr = |i: usize| field(i).and_then(|s| s.parse::<Ipv4Addr>().ok());
        let autoconf = field(6).map(str::to_string);
        if matches!(autoconf.as_deref(), Some("off" | "none")) && addr(0).is_none() {
            return None;
        }
        Some(Self {
            client: addr(0),
            gateway: addr(2),
            netmask: addr(3),
            hostname: field(4).map(str::to_string),
            device: field(5).map(str::to_string),
            autoconf,
            nameservers: [addr(7), addr(8)].into_iter().flatten().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_values_quotes_and_stops_at_double_dash() {
        let c = KernelCmdline::parse(
            "console=ttyS0 reboot=k panic=1 root=/dev/vda rw init=/.firebuild/init \
             firebuild.metadata=/dev/vdb foo=\"a b\" foo=c -- firebuild.metadata=mmds",
        );
        assert_eq!(c.get("console"), Some("ttyS0"));
        assert_eq!(c.get("foo"), Some("c"), "the last value wins");
        assert!(c.has("rw"));
        assert_eq!(c.get("rw"), None);
        assert!(!c.has("nothere"));
        assert_eq!(
            c.metadata_source(),
            Ok(MetadataSource::ConfigDrive("/dev/vdb".into())),
            "words after -- belong to init, not the kernel"
        );
        assert_eq!(KernelCmdline::parse("x=\"a b\"").get("x"), Some("a b"));
    }

    #[test]
    fn metadata_source_variants_and_errors() {
        let mmds = KernelCmdline::parse("firebuild.metadata=mmds");
        assert_eq!(mmds.metadata_source(), Ok(MetadataSource::Mmds));
        assert_eq!(
            KernelCmdline::parse("console=ttyS0").metadata_source(),
            Err(CmdlineError::NoMetadataArg)
        );
        for bad in [
            "firebuild.metadata=vdb",
            "firebuild.metadata=",
            "firebuild.metadata=/dev/../x",
        ] {
            assert!(
                matches!(
                    KernelCmdline::parse(bad).metadata_source(),
                    Err(CmdlineError::BadMetadataArg(_))
                ),
                "{bad}"
            );
        }
        assert!(KernelCmdline::parse("firebuild.metadata")
            .metadata_source()
            .is_err());
    }

    #[test]
    fn debug_flag() {
        assert!(KernelCmdline::parse("firebuild.debug").debug());
        assert!(KernelCmdline::parse("firebuild.debug=1").debug());
        assert!(!KernelCmdline::parse("firebuild.debug=0").debug());
        assert!(!KernelCmdline::parse("quiet").debug());
    }

    #[test]
    fn ip_argument() {
        let c = KernelCmdline::parse(
            "ip=192.168.127.2::192.168.127.1:255.255.255.0:vm1:eth0:off:1.1.1.1:8.8.8.8",
        );
        let ip = c.ip_config().unwrap();
        assert_eq!(ip.client, Some(Ipv4Addr::new(192, 168, 127, 2)));
        assert_eq!(ip.gateway, Some(Ipv4Addr::new(192, 168, 127, 1)));
        assert_eq!(ip.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(ip.hostname.as_deref(), Some("vm1"));
        assert_eq!(ip.device.as_deref(), Some("eth0"));
        assert_eq!(
            ip.nameservers,
            vec![Ipv4Addr::new(1, 1, 1, 1), Ipv4Addr::new(8, 8, 8, 8)]
        );
        assert_eq!(
            KernelCmdline::parse("ip=dhcp")
                .ip_config()
                .unwrap()
                .autoconf
                .as_deref(),
            Some("dhcp")
        );
        assert_eq!(KernelCmdline::parse("ip=off").ip_config(), None);
        assert_eq!(KernelCmdline::parse("ip=none").ip_config(), None);
        assert_eq!(KernelCmdline::parse("ip=:::::eth0:off").ip_config(), None);
        assert_eq!(KernelCmdline::parse("quiet").ip_config(), None);
        // Garbage addresses are ignored rather than fatal.
        let odd = IpConfig::parse("nonsense:::::eth0:dhcp").unwrap();
        assert_eq!(odd.client, None);
        assert_eq!(odd.autoconf.as_deref(), Some("dhcp"));
    }
}
