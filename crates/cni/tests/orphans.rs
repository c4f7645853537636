//! `find_orphans` never reports a namespace a process still runs in (a VM
//! of another run cache), and does report it once the process is gone.

use std::process::Command;

use firebuild_cni::{netns, CniPaths, CniRuntime};

#[test]
fn busy_namespace_is_not_an_orphan() {
    let vm_id = format!("orphantest{}", std::process::id());
    let name = format!("firebuild-{vm_id}");
    let path = netns::create(&name).unwrap();
    struct Cleanup(std::path::PathBuf, Option<std::process::Child>);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            if let Some(child) = &mut self.1 {
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = netns::delete(&self.0);
        }
    }
    let mut guard = Cleanup(path.clone(), None);
    let tmp = tempfile::tempdir().unwrap();
    let rt = CniRuntime::new(CniPaths {
        conf_dir: tmp.path().join("conf"),
        bin_dirs: vec![],
        cache_dir: tmp.path().join("cache"),
    });
    let orphan_ids = || -> Vec<String> {
        rt.find_orphans(|_| false)
            .unwrap()
            .into_iter()
            .map(|o| o.vm_id)
            .collect()
    };

    let child = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "30"])
        .spawn()
        .unwrap();
    guard.1 = Some(child);
    // Wait until the child has entered the namespace.
    for _ in 0..100 {
        if netns::in_use(&path) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(netns::in_use(&path));
    assert!(
        !orphan_ids().contains(&vm_id),
        "a namespace in use is not an orphan"
    );

    let mut child = guard.1.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!netns::in_use(&path));
    assert!(
        orphan_ids().contains(&vm_id),
        "an idle firebuild namespace is an orphan"
    );
}
