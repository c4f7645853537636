//! Prints how long a VM's network setup and teardown take with Debian's
//! plugins (bridge + host-local + firewall + portmap, plus our tap wiring).
//! Everything happens in a namespace this program makes to play the host.
//!
//! Run as root: `cargo run --release -p firebuild-cni --example net_bench [N]`

use std::time::{Duration, Instant};

use firebuild_cni::network::create_network;
use firebuild_cni::{netns, parse_port_specs, CniPaths, CniRuntime, NetworkSpec, VmNetworkRequest};

/// Deletes the bench's namespaces even if a step fails.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for name in netns::list().unwrap_or_default() {
            if name.contains(&self.0) {
                let _ = netns::delete(&netns::netns_path(&name));
            }
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20);
    let tag = format!("bench{}", std::process::id());
    let _cleanup = Cleanup(tag.clone());
    let host = netns::create(&format!("fbt-{tag}"))?;
    let dir = tempfile::tempdir()?;
    let rt = CniRuntime::new(CniPaths {
        conf_dir: dir.path().join("conf"),
        bin_dirs: vec!["/usr/lib/cni".into()],
        cache_dir: dir.path().join("cache"),
    })
    .with_plugin_netns(&host);
    create_network(&rt, &NetworkSpec::new("bench", "192.168.127.0/24".parse()?))?;

    let mut setup = Vec::new();
    let mut teardown = Vec::new();
    for i in 0..n {
        let vm = format!("{tag}-{i}");
        let mut req = VmNetworkRequest::new(&vm, "bench");
        req.ports = parse_port_specs(&["8080:80"])?;
        let t = Instant::now();
        rt.setup_vm_network(&req)?;
        setup.push(t.elapsed());
        let t = Instant::now();
        rt.teardown_vm_network(&vm, false)?;
        teardown.push(t.elapsed());
    }
    report("setup_vm_network (netns + CNI ADD x4 + tap)", &mut setup);
    report("teardown_vm_network (CNI DEL x4 + netns)", &mut teardown);
    Ok(())
}

fn report(what: &str, d: &mut [Duration]) {
    d.sort();
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    println!(
        "{what}: n={} min={:.1}ms median={:.1}ms max={:.1}ms",
        d.len(),
        ms(d[0]),
        ms(d[d.len() / 2]),
        ms(d[d.len() - 1])
    );
}
