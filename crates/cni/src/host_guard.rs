//! Keeps a network's VMs off this host: INPUT rules (IPv4 and IPv6)
//! dropping every packet that arrives from the network's bridge addressed
//! to the host itself. Forwarded traffic (out through the NAT) does not go
//! through INPUT, so the VMs still reach the outside; the host's services,
//! on the bridge's gateway address or any other of its addresses, are out
//! of reach. The build network gets them: RUN steps of an untrusted
//! Dockerfile may download, not talk to the host.

use std::path::Path;
use std::process::Command;

use crate::error::{CniError, Result};
use crate::netns::in_netns;

/// Adds the rules for `bridge` unless they are there (idempotent, so every
/// use re-checks them, also after a host reboot flushed them).
pub fn drop_input_from_bridge(
    network: &str,
    bridge: &str,
    host_netns: Option<&Path>,
) -> Result<()> {
    crate::netlink::validate_ifname(bridge)?;
    let rule = ["INPUT", "-i", bridge, "-j", "DROP"];
    in_netns(host_netns, || {
        for tool in ["iptables", "ip6tables"] {
            let present = Command::new(tool)
                .args(["-w", "-C"])
                .args(rule)
                .output()
                .is_ok_and(|o| o.status.success());
            if present {
                continue;
            }
            let out = Command::new(tool)
                .args(["-w", "-I"])
                .args(rule)
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&o.stderr).trim().to_owned())
                    }
                });
            if let Err(reason) = out {
                return Err(CniError::HostGuard {
                    network: network.into(),
                    command: format!("{tool} -I {}", rule.join(" ")),
                    reason,
                });
            }
        }
        Ok(())
    })?
}
