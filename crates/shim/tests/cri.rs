//! The shim under containerd's CRI, driven as kubelet drives it (the
//! `k8s-cri` client over the CRI socket): a pod with runtime handler
//! `firebuild` on a CNI bridge network, two containers in its VM, their
//! exit codes and CRI logs, ExecSync, a host-side HTTP probe to the pod's
//! IP, and nothing left after the pod is removed. Needs root,
//! `containerd`, `containernetworking-plugins`, `docker-registry`, QEMU,
//! the test kernel and `protoc` (to build the client).

mod containerd_world;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use containerd_world::{text, World};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerState, ContainerStatusRequest,
    CreateContainerRequest, ExecSyncRequest, ImageSpec, PodSandboxConfig, PodSandboxMetadata,
    PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// The sandbox image's name in the CRI's configuration (tagged locally).
const SANDBOX_IMAGE: &str = "firebuild.test/pause:1";

/// A CNI bridge network of the test's own: its bridge and any network
/// namespace the CRI made go with it, also when the test fails.
struct CniNetwork {
    bridge: String,
    subnet: u8,
    netns_before: Vec<String>,
}

impl CniNetwork {
    fn new() -> CniNetwork {
        let subnet = 100 + (std::process::id() % 100) as u8;
        CniNetwork {
            bridge: format!("fbcri{subnet}"),
            subnet,
            netns_before: netns_names(),
        }
    }

    /// The CNI configuration directory's one conflist.
    fn write_config(&self, dir: &Path) {
        let conf = dir.join("cni");
        std::fs::create_dir_all(&conf).unwrap();
        let config = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "firebuild-cri-test",
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": format!("10.214.{}.0/24", self.subnet)}]],
                    "dataDir": dir.join("cni-ipam"),
                },
            }],
        });
        std::fs::write(
            conf.join("10-test.conflist"),
            serde_json::to_vec_pretty(&config).unwrap(),
        )
        .unwrap();
    }

    fn bridge_ports(&self) -> String {
        let out = std::process::Command::new("ip")
            .args(["link", "show", "master", &self.bridge])
            .output()
            .unwrap();
        text(&out.stdout)
    }
}

impl Drop for CniNetwork {
    fn drop(&mut self) {
        for name in netns_names() {
            if !self.netns_before.contains(&name) && name.starts_with("cni-") {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", &name])
                    .status();
            }
        }
        let _ = std::process::Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn netns_names() -> Vec<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn cri_config(dir: &Path) -> String {
    format!(
        r#"[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "firebuild"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.firebuild]
      runtime_type = "io.containerd.firebuild.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{}"
    max_conf_num = 1
"#,
        dir.join("cni").display()
    )
}

async fn connect(socket: PathBuf) -> RuntimeServiceClient<Channel> {
    let channel = Endpoint::try_from("http://[::]")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connecting to the CRI socket");
    RuntimeServiceClient::new(channel)
}

fn container(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}.log"),
        ..Default::default()
    }
}

#[test]
fn a_cri_pod_runs_its_containers_in_one_vm_on_the_cni_network() {
    let net = CniNetwork::new();
    let mut w = World::with_cri(&|dir: &Path| {
        net.write_config(dir);
        cri_config(dir)
    });
    let pause = w.push_with_files(
        "tools/pause:1",
        &[],
        &["sh", "-c", "while :; do sleep 3600; done"],
    );
    w.ok(&["image", "tag", &pause, SANDBOX_IMAGE]);
    let job_image = w.push_with_files("tools/job:1", &[("etc/job-image", "job\n")], &[]);
    // The CRI's image list is loaded at its start: let it see the pulls.
    w.stop_containerd();
    w.start_containerd();
    let logs = w.path("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut cri = rt.block_on(connect(w.socket()));
    let sandbox_config = PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: "web".into(),
            uid: "uid-web-1".into(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: "web".into(),
        log_directory: logs.display().to_string(),
        ..Default::default()
    };
    let pod = rt
        .block_on(cri.run_pod_sandbox(RunPodSandboxRequest {
            config: Some(sandbox_config.clone()),
            runtime_handler: "firebuild".into(),
        }))
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", w.tail_of_log()))
        .into_inner()
        .pod_sandbox_id;
    let status = rt
        .block_on(cri.pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.clone(),
            verbose: false,
        }))
        .unwrap()
        .into_inner();
    let ip = status.status.unwrap().network.unwrap().ip;
    assert!(
        ip.starts_with(&format!("10.214.{}.", net.subnet)),
        "pod IP {ip}"
    );
    assert_eq!(w.vm_dirs().len(), 1, "{:?}", w.vm_dirs());

    let mut create = |config: ContainerConfig| {
        let id = rt
            .block_on(cri.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(config),
                sandbox_config: Some(sandbox_config.clone()),
            }))
            .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", w.tail_of_log()))
            .into_inner()
            .container_id;
        rt.block_on(cri.start_container(StartContainerRequest {
            container_id: id.clone(),
        }))
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", w.tail_of_log()));
        id
    };
    let server = create(container(
        "server",
        &w.image,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo served-by-the-pod > /www/index.html && echo server up && \
             exec httpd -f -p 80 -h /www",
        ],
    ));
    let job = create(container(
        "job",
        &job_image,
        &[
            "sh",
            "-c",
            "cat /etc/job-image; cat /proc/sys/kernel/random/boot_id; echo oops >&2; exit 3",
        ],
    ));
    // Both containers are in the pod's one VM.
    assert_eq!(w.vm_dirs().len(), 1, "{:?}", w.vm_dirs());

    let deadline = Instant::now() + Duration::from_secs(60);
    let job_status = loop {
        let s = rt
            .block_on(cri.container_status(ContainerStatusRequest {
                container_id: job.clone(),
                verbose: false,
            }))
            .unwrap()
            .into_inner()
            .status
            .unwrap();
        if s.state == ContainerState::ContainerExited as i32 {
            break s;
        }
        assert!(Instant::now() < deadline, "the job did not exit: {s:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(job_status.exit_code, 3);

    // The host reaches the server in the pod by the pod's IP.
    let url = format!("http://{ip}/index.html");
    w.eventually(Duration::from_secs(60), "the pod's server answers", || {
        let out = std::process::Command::new("curl")
            .args(["-s", "-m", "2", &url])
            .output()
            .unwrap();
        text(&out.stdout).contains("served-by-the-pod")
    });

    let exec = rt
        .block_on(cri.exec_sync(ExecSyncRequest {
            container_id: server.clone(),
            cmd: vec![
                "sh".into(),
                "-c".into(),
                "cat /proc/sys/kernel/random/boot_id; test -e /etc/job-image || echo own-root; exit 4"
                    .into(),
            ],
            timeout: 30,
        }))
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", w.tail_of_log()))
        .into_inner();
    assert_eq!(exec.exit_code, 4, "{}", text(&exec.stderr));
    let exec_out = text(&exec.stdout);
    let boot_id = exec_out.lines().next().unwrap_or_default().to_owned();
    assert_eq!(boot_id.len(), 36, "{exec_out}");
    assert!(exec_out.contains("own-root"), "{exec_out}");

    // CRI-format logs: `TIME STREAM F LINE`.
    let job_log = std::fs::read_to_string(logs.join("job.log")).unwrap();
    assert!(job_log.contains(" stdout F job\n"), "{job_log}");
    assert!(
        job_log.contains(&format!(" stdout F {boot_id}\n")),
        "not the pod's VM: {job_log}"
    );
    assert!(job_log.contains(" stderr F oops\n"), "{job_log}");
    let server_log = std::fs::read_to_string(logs.join("server.log")).unwrap();
    assert!(server_log.contains(" stdout F server up\n"), "{server_log}");

    for id in [&server, &job] {
        rt.block_on(cri.stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 2,
        }))
        .unwrap_or_else(|e| panic!("StopContainer: {e}\n{}", w.tail_of_log()));
        rt.block_on(cri.remove_container(RemoveContainerRequest {
            container_id: id.clone(),
        }))
        .unwrap_or_else(|e| panic!("RemoveContainer: {e}\n{}", w.tail_of_log()));
    }
    rt.block_on(cri.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e}\n{}", w.tail_of_log()));
    rt.block_on(cri.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    }))
    .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}\n{}", w.tail_of_log()));

    w.eventually(Duration::from_secs(20), "the shim exits", || {
        w.shims().is_empty()
    });
    assert!(w.vm_dirs().is_empty(), "{:?}", w.vm_dirs());
    assert!(w.mounts().is_empty(), "{:?}", w.mounts());
    assert_eq!(net.bridge_ports(), "", "veths left on the bridge");
    let left: Vec<String> = netns_names()
        .into_iter()
        .filter(|n| !net.netns_before.contains(n))
        .collect();
    assert!(left.is_empty(), "network namespaces left: {left:?}");
}
