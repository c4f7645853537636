//! `network create|ls|rm`: CNI bridge networks for microVMs.

use anyhow::Context as _;
use firebuild_cni::{network, CniRuntime, IpNet, NetworkSpec};

use super::require_root;
use crate::cli::{GlobalArgs, NetworkCommand, SettingsArgs};
use crate::format;
use firebuild_host::wiring::cni_runtime;

fn runtime(global: &GlobalArgs, args: &SettingsArgs) -> anyhow::Result<CniRuntime> {
    Ok(cni_runtime(&crate::settings::resolve(global, args)?))
}

pub fn run(global: &GlobalArgs, command: &NetworkCommand) -> anyhow::Result<()> {
    match command {
        NetworkCommand::Create {
            name,
            subnet,
            gateway,
            bridge,
            ip_masq,
            settings,
        } => {
            require_root("network create")?;
            let subnet: IpNet = subnet.parse().map_err(|e| {
                anyhow::anyhow!("--subnet {subnet}: {e}; expected a CIDR such as 192.168.127.0/24")
            })?;
            let mut spec = NetworkSpec::new(name.clone(), subnet);
            spec.gateway = gateway
                .as_deref()
                .map(|g| {
                    g.parse()
                        .with_context(|| format!("--gateway {g}: not an IP address"))
                })
                .transpose()?;
            spec.bridge = bridge.clone();
            spec.ip_masq = *ip_masq;
            let info = network::create_network(&runtime(global, settings)?, &spec)?;
            if let Some(path) = &info.path {
                println!("{}", path.display());
            }
            Ok(())
        }
        NetworkCommand::Ls { settings } => {
            let networks = network::list_networks(&runtime(global, settings)?)?;
            let rows: Vec<Vec<String>> = networks
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.subnets.join(","),
                        n.gateways.join(","),
                        n.bridge.clone().unwrap_or_default(),
                        n.plugins.join(","),
                    ]
                })
                .collect();
            format::print_table(&["NAME", "SUBNET", "GATEWAY", "BRIDGE", "PLUGINS"], &rows);
            Ok(())
        }
        NetworkCommand::Rm { name, settings } => {
            require_root("network rm")?;
            network::remove_network(&runtime(global, settings)?, name)?;
            Ok(())
        }
    }
}
