//! A container whose spec joins a network namespace (a Kubernetes pod's,
//! set up by the CRI's CNI; `ctr run --with-ns network:PATH`): the VM's tap
//! goes into that namespace, wired to its interface with tc redirects both
//! ways (the CNI crate's `wire_tap`, Kata's model), and the guest takes the
//! interface's MAC, address, prefix and gateway. The cluster network then
//! reaches the VM unchanged; the namespace's own stack sees nothing.

use std::path::Path;

use anyhow::Context as _;
use async_trait::async_trait;
use firebuild_cni::{netlink, tap};
use firebuild_vm::{NetworkAttachment, NetworkError, NetworkReleaser, RunMetadata};

/// The tap's name inside the joined namespace.
pub const TAP: &str = "fbtap0";
/// The interface the CRI's CNI plugins make, preferred when there are more.
const POD_INTERFACE: &str = "eth0";

/// Wires a tap into `netns` and describes the network the guest takes.
/// On failure the namespace is left as it was.
pub fn join(netns: &Path) -> anyhow::Result<NetworkAttachment> {
    let what = || format!("the network namespace {}", netns.display());
    let mut links: Vec<String> = netlink::list_links(Some(netns))
        .with_context(what)?
        .into_iter()
        .map(|l| l.name)
        .filter(|n| n != "lo")
        .collect();
    anyhow::ensure!(
        !links.iter().any(|n| n == TAP),
        "{} already has a firebuild tap ({TAP}): another VM uses it",
        what()
    );
    links.sort_by_key(|n| n != POD_INTERFACE);
    let mut chosen = None;
    for name in links {
        if let Some(config) = netlink::ipv4_config(Some(netns), &name).with_context(what)? {
            chosen = Some((name, config));
            break;
        }
    }
    let (veth, config) = chosen.with_context(|| {
        format!(
            "{}: no interface with an IPv4 address to give the VM (did the CNI plugins run?)",
            what()
        )
    })?;
    tap::create_tap(netns, TAP, None).with_context(what)?;
    let wiring = match tap::wire_tap(netns, &veth, TAP) {
        Ok(w) => w,
        Err(e) => {
            let _ = tap::unwire_tap(netns, &veth, TAP);
            return Err(e).with_context(what);
        }
    };
    Ok(NetworkAttachment {
        netns: netns.to_owned(),
        tap: TAP.into(),
        guest_mac: wiring.mac,
        ip: config.address,
        prefix: config.prefix,
        gateway: config.gateway,
        nameservers: Vec::new(),
        mtu: Some(wiring.mtu),
        network_name: "pod".into(),
        release_data: serde_json::json!({ "veth": veth }),
    })
}

/// Releases a joined network: the tap and the redirects go; the
/// namespace and its interface stay (they are the caller's).
pub struct JoinedNetworks;

/// Takes the tap and its redirects out of a joined namespace again
/// (blocking); a namespace already gone is fine.
pub fn leave(a: &NetworkAttachment) -> firebuild_cni::Result<()> {
    if !a.netns.exists() {
        return Ok(());
    }
    let veth = a
        .release_data
        .get("veth")
        .and_then(|v| v.as_str())
        .unwrap_or(POD_INTERFACE);
    tap::unwire_tap(&a.netns, veth, &a.tap)
}

#[async_trait]
impl NetworkReleaser for JoinedNetworks {
    async fn release(&self, _vm: &RunMetadata, a: &NetworkAttachment) -> Result<(), NetworkError> {
        let a = a.clone();
        tokio::task::spawn_blocking(move || leave(&a))
            .await?
            .map_err(|e| Box::new(e) as NetworkError)
    }
}
