//! VM networks from CNI as the VM runtime asks for them
//! ([`firebuild_vm::NetworkProvider`]): a network set up when a VM
//! launches, torn down when it is removed. The CLI, the build step VMs and
//! any other driver of the runtime share this one adapter.

use std::net::IpAddr;

use async_trait::async_trait;
use firebuild_vm::{
    NetworkAttachment, NetworkError, NetworkProvider, NetworkReleaser, NetworkRequest, RunMetadata,
};

use crate::{parse_port_specs, CniRuntime, VmNetwork, VmNetworkRequest, DEFAULT_NETWORK};

/// The guest's network device; the kernel `ip=` argument and the metadata name it.
const GUEST_DEVICE: &str = "eth0";

/// VM networks from CNI: `default` (or the named network) set up when a
/// VM launches, torn down when it is removed.
pub struct CniNetworks(pub CniRuntime);

#[async_trait]
impl NetworkProvider for CniNetworks {
    async fn attach(
        &self,
        vm_id: &str,
        request: &NetworkRequest,
    ) -> Result<NetworkAttachment, NetworkError> {
        let network = request.network.as_deref().unwrap_or(DEFAULT_NETWORK);
        let mut cni_request = VmNetworkRequest::new(vm_id, network);
        cni_request.ip = request.ip;
        cni_request.ports = parse_port_specs(&request.ports)?;
        let cni = self.0.clone();
        let net = tokio::task::spawn_blocking(move || cni.setup_vm_network(&cni_request)).await??;
        attachment(&net).map_err(|e| {
            release_quietly(&self.0, vm_id);
            e.into()
        })
    }
}

#[async_trait]
impl NetworkReleaser for CniNetworks {
    async fn release(
        &self,
        vm: &RunMetadata,
        _attachment: &NetworkAttachment,
    ) -> Result<(), NetworkError> {
        let cni = self.0.clone();
        let id = vm.id.clone();
        tokio::task::spawn_blocking(move || cni.teardown_vm_network(&id, false))
            .await
            .map_err(|e| Box::new(e) as NetworkError)?
            .map(|_| ())
            .map_err(|e| Box::new(e) as NetworkError)
    }
}

/// Tears down `vm_id`'s network, warning (not failing) when it cannot:
/// `firebuild purge` retries.
pub fn release_quietly(cni: &CniRuntime, vm_id: &str) {
    if let Err(e) = cni.teardown_vm_network(vm_id, true) {
        tracing::warn!(vm = %vm_id, error = %e, "could not release the VM's network; `firebuild purge` retries");
    }
}

/// The runtime's view of a CNI attachment.
fn attachment(net: &VmNetwork) -> Result<NetworkAttachment, String> {
    let IpAddr::V4(ip) = net.address.addr else {
        return Err(format!(
            "network {} gave the VM the IPv6 address {}: microVMs need an IPv4 address (add an IPv4 range to the network)",
            net.network,
            net.address
        ));
    };
    Ok(NetworkAttachment {
        netns: net.netns_path.clone(),
        tap: net.tap_name.clone(),
        guest_mac: net.mac.clone(),
        ip,
        prefix: net.address.prefix_len,
        gateway: net.gateway.and_then(|g| match g {
            IpAddr::V4(g) => Some(g),
            IpAddr::V6(_) => None,
        }),
        nameservers: net
            .dns
            .nameservers
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect(),
        mtu: Some(net.mtu),
        network_name: net.network.clone(),
        release_data: serde_json::json!({ "vm-id": net.vm_id, "ifname": GUEST_DEVICE }),
    })
}
