//! What the stand-in does with each request: Firecracker's v1.16 API
//! rules (pre-boot/post-boot, one root drive, MMDS interfaces, ...), with
//! its error answers (`400 {"fault_message": "..."}`), on the pretend VM.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::openapi::ApiSpec;
use super::server::{Options, VmModel};

/// Status and JSON body of an answer.
type Answer = (u16, Option<Value>);

fn fault(msg: impl Into<String>) -> Answer {
    (400, Some(json!({ "fault_message": msg.into() })))
}

const NOT_AFTER_BOOT: &str = "The requested operation is not supported after starting the microVM.";
const NOT_BEFORE_BOOT: &str =
    "The requested operation is not supported before starting the microVM.";

/// Handles one request on `vm`.
pub(super) fn route(
    vm: &mut VmModel,
    opts: &Options,
    spec: &ApiSpec,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Answer {
    // Firecracker refuses unknown routes and bodies its types do not accept.
    let template = match spec.validate_request(method, path, content_type, body) {
        Ok(t) => t,
        Err(errors) => {
            return match spec.operation(method, path) {
                Err(_) => fault(format!(
                    "Invalid request method and/or path: {method} {path}."
                )),
                Ok(_) => fault(format!(
                    "An error occurred when deserializing the json body of a request: {}.",
                    errors.join("; ")
                )),
            }
        }
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body).unwrap_or(Value::Null)
    };
    let pre_boot = |vm: &VmModel| {
        if vm.started {
            Err(fault(NOT_AFTER_BOOT))
        } else {
            Ok(())
        }
    };
    macro_rules! pre_boot {
        () => {
            if let Err(a) = pre_boot(vm) {
                return a;
            }
        };
    }
    let ok = (204, None);
    match (method, template.as_str()) {
        ("GET", "/") => (
            200,
            Some(json!({
                "app_name": "Firecracker",
                "id": opts.id,
                "state": if !vm.started { "Not started" } else if vm.paused { "Paused" } else { "Running" },
                "vmm_version": "1.16.1",
            })),
        ),
        ("GET", "/version") => (200, Some(json!({ "firecracker_version": "1.16.1" }))),
        ("GET", "/vm/config") => {
            let mut cfg = serde_json::Map::new();
            let mut put = |k: &str, v: &Option<Value>| {
                if let Some(v) = v {
                    cfg.insert(k.into(), v.clone());
                }
            };
            put("boot-source", &vm.boot_source);
            put("machine-config", &vm.machine_config);
            put("mmds-config", &vm.mmds_config);
            put("logger", &vm.logger);
            put("metrics", &vm.metrics);
            put("vsock", &vm.vsock);
            cfg.insert("drives".into(), Value::Array(vm.drives.clone()));
            cfg.insert(
                "network-interfaces".into(),
                Value::Array(vm.ifaces.values().cloned().collect()),
            );
            (200, Some(Value::Object(cfg)))
        }
        ("PUT", "/machine-config") => {
            pre_boot!();
            let vcpus = body["vcpu_count"].as_u64().unwrap_or(0);
            if body["smt"] == true && vcpus != 1 && !vcpus.is_multiple_of(2) {
                return fault("The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.");
            }
            if body["mem_size_mib"].as_u64() == Some(0) {
                return fault("The memory size (MiB) is invalid.");
            }
            vm.machine_config = Some(body);
            ok
        }
        ("PUT", "/boot-source") => {
            pre_boot!();
            if opts.check_host_resources {
                let kernel = host_path(opts, &body["kernel_image_path"]);
                if !kernel.is_file() {
                    return fault(format!("The kernel file cannot be opened: No such file or directory (os error 2): {}", kernel.display()));
                }
            }
            vm.boot_source = Some(body);
            ok
        }
        ("PUT", "/drives/{drive_id}") => {
            pre_boot!();
            put_drive(vm, opts, body)
        }
        ("PATCH", "/drives/{drive_id}") => {
            if !vm.started {
                return fault(NOT_BEFORE_BOOT);
            }
            patch_drive(vm, opts, &body)
        }
        ("PUT", "/network-interfaces/{iface_id}") => {
            pre_boot!();
            let id = match checked_id(&body["iface_id"]) {
                Ok(id) => id,
                Err(a) => return a,
            };
            let tap = body["host_dev_name"].as_str().unwrap_or_default();
            if vm
                .ifaces
                .iter()
                .any(|(k, i)| *k != id && i["host_dev_name"] == tap)
            {
                return fault(format!("The host device name {tap} is already in use."));
            }
            if opts.check_host_resources && !has_netdev(tap) {
                return fault(format!("Could not create the network device: Open tap device failed: Error while creating ifreq structure: No such device (os error 19). Invalid TUN/TAP Backend provided by {tap}."));
            }
            vm.ifaces.insert(id, body);
            ok
        }
        ("PUT", "/mmds/config") => {
            pre_boot!();
            let known = body["network_interfaces"].as_array().is_some_and(|l| {
                !l.is_empty()
                    && l.iter()
                        .all(|i| i.as_str().is_some_and(|i| vm.ifaces.contains_key(i)))
            });
            if !known {
                return fault("The list of network interface IDs that allow forwarding MMDS requests is empty or contains an ID that does not correspond to any existing network interface.");
            }
            vm.mmds_config = Some(body);
            ok
        }
        ("PUT", "/mmds") => {
            vm.mmds = Some(body);
            ok
        }
        ("GET", "/mmds") => match &vm.mmds {
            Some(doc) => (200, Some(doc.clone())),
            None => (
                404,
                Some(json!({ "fault_message": "The MMDS data store is not initialized." })),
            ),
        },
        ("PUT", "/logger") => {
            pre_boot!();
            vm.logger = Some(body);
            ok
        }
        ("PUT", "/metrics") => {
            pre_boot!();
            if vm.metrics.is_some() {
                return fault("Reinitialization of metrics not allowed.");
            }
            vm.metrics = Some(body);
            ok
        }
        ("PUT", "/vsock") => {
            pre_boot!();
            vm.vsock = Some(body);
            ok
        }
        ("PUT", "/serial") => {
            pre_boot!();
            vm.serial = Some(body);
            ok
        }
        ("PUT", "/actions") => match body["action_type"].as_str() {
            Some("InstanceStart") => {
                pre_boot!();
                if vm.boot_source.is_none() {
                    return fault("Cannot start microvm without kernel configuration.");
                }
                // Stand-in rule (firebuild always boots from a root drive).
                if !vm.drives.iter().any(|d| d["is_root_device"] == true) {
                    return fault("Cannot start microvm without a root block device.");
                }
                if let Some(line) = &opts.serial_on_start {
                    if let Err(a) = write_serial(opts, vm, line) {
                        return a;
                    }
                }
                vm.started = true;
                ok
            }
            Some("SendCtrlAltDel") => {
                if !vm.started {
                    return fault(NOT_BEFORE_BOOT);
                }
                if let Some(line) = &opts.serial_on_ctrl_alt_del {
                    if let Err(a) = write_serial(opts, vm, line) {
                        return a;
                    }
                }
                vm.ctrl_alt_del = true;
                ok
            }
            Some("FlushMetrics") => {
                if vm.metrics.is_none() {
                    return fault("The metrics system is not initialized.");
                }
                ok
            }
            _ => fault("unknown action"),
        },
        ("PUT", "/snapshot/create") => create_snapshot(vm, opts, &body),
        ("PUT", "/snapshot/load") => load_snapshot(vm, opts, &body),
        ("PATCH", "/vm") => {
            if !vm.started {
                return fault(NOT_BEFORE_BOOT);
            }
            vm.paused = body["state"] == "Paused";
            ok
        }
        (m, t) => fault(format!("The stand-in does not implement {m} {t}.")),
    }
}

/// `PUT /snapshot/create`: the paused VM's configuration as its "state"
/// (a JSON document of the stand-in's own), and a memory file of the VM's
/// size, both written where the request says (inside the jail).
fn create_snapshot(vm: &VmModel, opts: &Options, body: &Value) -> Answer {
    if !vm.started {
        return fault(NOT_BEFORE_BOOT);
    }
    if !vm.paused {
        return fault("Create snapshot error: Cannot save the microVM state: The microVM must be paused before creating a snapshot.");
    }
    let state = json!({
        "machine_config": vm.machine_config,
        "boot_source": vm.boot_source,
        "drives": vm.drives,
        "ifaces": vm.ifaces,
        "mmds_config": vm.mmds_config,
        "vsock": vm.vsock,
    });
    let mem_mib = vm
        .machine_config
        .as_ref()
        .and_then(|m| m["mem_size_mib"].as_u64())
        .unwrap_or(0);
    let state_path = host_path(opts, &body["snapshot_path"]);
    let mem_path = host_path(opts, &body["mem_file_path"]);
    let written = std::fs::write(&state_path, state.to_string()).and_then(|()| {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&mem_path)?
            .set_len(mem_mib << 20)
    });
    match written {
        Ok(()) => (204, None),
        Err(e) => fault(format!(
            "Create snapshot error: Cannot write the snapshot files: {e}"
        )),
    }
}

/// `PUT /snapshot/load`, on a fresh process only: the state's drives must
/// exist at the paths it names (seen from inside this process's jail), the
/// memory file must have the VM's size, overridden interfaces must exist.
fn load_snapshot(vm: &mut VmModel, opts: &Options, body: &Value) -> Answer {
    let configured = vm.started
        || vm.machine_config.is_some()
        || vm.boot_source.is_some()
        || !vm.drives.is_empty()
        || !vm.ifaces.is_empty()
        || vm.vsock.is_some()
        || vm.mmds_config.is_some();
    if configured {
        return fault(
            "Loading a microVM snapshot not allowed after configuring boot-specific resources.",
        );
    }
    let memory = match (body.get("mem_file_path"), body.get("mem_backend")) {
        (Some(_), Some(_)) | (None, None) => {
            return fault("Exactly one of mem_file_path and mem_backend must be given.")
        }
        (Some(path), None) => path.clone(),
        (None, Some(backend)) if backend["backend_type"] == "File" => {
            backend["backend_path"].clone()
        }
        (None, Some(_)) => {
            return fault("The stand-in does not implement the Uffd memory backend.")
        }
    };
    let load_error = |what: String| {
        fault(format!(
            "Load snapshot error: Failed to restore from snapshot: {what}"
        ))
    };
    let state_path = host_path(opts, &body["snapshot_path"]);
    let state: Value = match std::fs::read(&state_path).map(|b| serde_json::from_slice(&b)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return load_error(format!("{}: {e}", state_path.display())),
        Err(e) => return load_error(format!("{}: {e}", state_path.display())),
    };
    let mem_mib = state["machine_config"]["mem_size_mib"]
        .as_u64()
        .unwrap_or(0);
    let mem_path = host_path(opts, &memory);
    match std::fs::metadata(&mem_path) {
        Ok(m) if m.len() == mem_mib << 20 => {}
        Ok(m) => {
            return load_error(format!(
                "{} holds {} bytes, the VM has {mem_mib} MiB",
                mem_path.display(),
                m.len()
            ))
        }
        Err(e) => return load_error(format!("{}: {e}", mem_path.display())),
    }
    let mut ifaces: std::collections::BTreeMap<String, Value> =
        serde_json::from_value(state["ifaces"].clone()).unwrap_or_default();
    for o in body["network_overrides"].as_array().into_iter().flatten() {
        let id = o["iface_id"].as_str().unwrap_or_default();
        let Some(iface) = ifaces.get_mut(id) else {
            return fault(format!(
                "Invalid network override: the snapshot has no network interface {id}."
            ));
        };
        iface["host_dev_name"] = o["host_dev_name"].clone();
    }
    if opts.check_host_resources {
        for iface in ifaces.values() {
            let tap = iface["host_dev_name"].as_str().unwrap_or_default();
            if !has_netdev(tap) {
                return load_error(format!(
                    "Open tap device failed: No such device (os error 19): {tap}"
                ));
            }
        }
        for d in state["drives"].as_array().into_iter().flatten() {
            let file = host_path(opts, &d["path_on_host"]);
            if !file.is_file() {
                return load_error(format!("Block device backing file {} is missing: No such file or directory (os error 2)", file.display()));
            }
        }
    }
    vm.machine_config = Some(state["machine_config"].clone());
    vm.boot_source = Some(state["boot_source"].clone()).filter(|v| !v.is_null());
    vm.drives = state["drives"].as_array().cloned().unwrap_or_default();
    vm.ifaces = ifaces;
    vm.mmds_config = Some(state["mmds_config"].clone()).filter(|v| !v.is_null());
    vm.vsock = Some(state["vsock"].clone()).filter(|v| !v.is_null());
    vm.started = true;
    vm.paused = body["resume_vm"] != true;
    (204, None)
}

const INVALID_BLOCK_CONFIG: &str =
    "Drive config error: Unable to create the block device: Invalid block config.";

/// `PATCH /drives/{drive_id}` after the start, with v1.16.1's answers: the
/// drive must exist and the new file open (seen from inside the jail).
fn patch_drive(vm: &mut VmModel, opts: &Options, body: &Value) -> Answer {
    const PREFIX: &str = "Drive config error: Unable to patch the block device:";
    const SUFFIX: &str = "Please verify the request arguments.";
    let Some(drive) = vm
        .drives
        .iter_mut()
        .find(|d| d["drive_id"] == body["drive_id"])
    else {
        return fault(format!(
            "{PREFIX} Failed perform action on device: Device not found {SUFFIX}"
        ));
    };
    let Some(path) = body["path_on_host"].as_str() else {
        return (204, None);
    };
    if opts.check_host_resources && !host_path(opts, &body["path_on_host"]).is_file() {
        return fault(format!(
            "{PREFIX} Block: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) {path} {SUFFIX}"
        ));
    }
    drive["path_on_host"] = json!(path);
    (204, None)
}

/// `PUT /drives/{drive_id}` as Firecracker's block builder takes it: one
/// root drive at most, kept first; a known id replaces that drive in place;
/// a new one goes last. So `vm.drives` is the guest's vda, vdb, ... order.
fn put_drive(vm: &mut VmModel, opts: &Options, body: Value) -> Answer {
    let id = match checked_id(&body["drive_id"]) {
        Ok(id) => id,
        Err(a) => return a,
    };
    if let Err(a) = check_block_backend(&body) {
        return a;
    }
    let is_root = body["is_root_device"] == true;
    let position = vm.drives.iter().position(|d| d["drive_id"] == id.as_str());
    let has_root = vm
        .drives
        .first()
        .is_some_and(|d| d["is_root_device"] == true);
    if is_root && has_root && position != Some(0) {
        return fault("Drive config error: A root block device already exists!");
    }
    if opts.check_host_resources && body.get("path_on_host").is_some() {
        let file = host_path(opts, &body["path_on_host"]);
        if !file.is_file() {
            return fault(format!("Drive config error: Unable to create the block device: Virtio backend error: Error manipulating the backing file: No such file or directory (os error 2) {}", file.display()));
        }
    }
    match position {
        None if is_root => vm.drives.insert(0, body),
        None => vm.drives.push(body),
        Some(i) => {
            vm.drives[i] = body;
            if is_root {
                vm.drives.swap(0, i);
            }
        }
    }
    (204, None)
}

/// A drive is either virtio-block (a file: the spec requires
/// `path_on_host` and `is_read_only`, and no `socket`) or vhost-user-block
/// (only a `socket`, none of the virtio fields). Firecracker itself takes a
/// missing `is_read_only` as false; the stand-in holds clients to the spec.
fn check_block_backend(body: &Value) -> Result<(), Answer> {
    let has = |field: &str| body.get(field).is_some_and(|v| !v.is_null());
    let virtio = has("path_on_host") && has("is_read_only") && !has("socket");
    let vhost_user = has("socket")
        && !["path_on_host", "is_read_only", "rate_limiter", "io_engine"]
            .iter()
            .any(|f| has(f));
    if virtio || vhost_user {
        Ok(())
    } else {
        Err(fault(INVALID_BLOCK_CONFIG))
    }
}

/// Firecracker's API server takes ids that are non-empty, alphanumeric or `_`.
fn checked_id(id: &Value) -> Result<String, Answer> {
    let id = id.as_str().unwrap_or_default();
    if id.is_empty() {
        return Err(fault("The ID cannot be empty."));
    }
    if !id.chars().all(|c| c == '_' || c.is_alphanumeric()) {
        return Err(fault(
            "API Resource IDs can only contain alphanumeric characters and underscores.",
        ));
    }
    Ok(id.to_string())
}

/// A path from a request, seen from the stand-in's side of the jail.
fn host_path(opts: &Options, v: &Value) -> PathBuf {
    let p = Path::new(v.as_str().unwrap_or_default());
    match &opts.root {
        Some(root) => root.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_path_buf(),
    }
}

/// Appends what the guest would print to the serial output file, if one
/// was configured (Firecracker's own console goes to its stdout otherwise).
fn write_serial(opts: &Options, vm: &VmModel, text: &str) -> Result<(), Answer> {
    use std::io::Write;
    let Some(out) = vm.serial.as_ref().and_then(|s| s.get("serial_out_path")) else {
        return Ok(());
    };
    let file = host_path(opts, out);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| {
            fault(format!(
                "The serial output {} cannot be written: {e}",
                file.display()
            ))
        })
}

/// Whether this process's network namespace has `name` (/proc/self/net
/// follows the reader's namespace; /sys/class/net does not).
fn has_netdev(name: &str) -> bool {
    std::fs::read_to_string("/proc/self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .any(|l| l.split(':').next().map(str::trim) == Some(name))
}
