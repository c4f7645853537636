//! The `qemu-system-x86_64` command line.

use std::ffi::OsString;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::vmm::Disk;

/// CPU virtualisation QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    /// Software emulation: slow but works everywhere.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// QEMU machine type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Machine {
    /// q35 with virtio-pci devices: boots under TCG and KVM, and has the
    /// i8042 controller the graceful stop (Ctrl-Alt-Del) needs.
    #[default]
    Q35,
    /// The Firecracker-like `microvm` machine with virtio-mmio devices.
    /// Faster to boot under KVM, but it hangs under TCG here and has no
    /// keyboard controller, so `kill` always ends in the forced stop.
    Microvm,
}

impl Machine {
    pub fn as_str(self) -> &'static str {
        match self {
            Machine::Q35 => "q35",
            Machine::Microvm => "microvm",
        }
    }

    fn block_device(self) -> &'static str {
        match self {
            Machine::Q35 => "virtio-blk-pci",
            Machine::Microvm => "virtio-blk-device",
        }
    }

    fn serial_bus(self) -> &'static str {
        match self {
            Machine::Q35 => "virtio-serial-pci",
            Machine::Microvm => "virtio-serial-device",
        }
    }

    fn net_device(self) -> &'static str {
        match self {
            Machine::Q35 => "virtio-net-pci",
            Machine::Microvm => "virtio-net-device",
        }
    }
}

/// Where a VM's RAM lives (the memory backend object `ram`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory<'a> {
    /// A memfd shared with the host: a snapshot copies it out and leaves
    /// it out of the migration stream (`x-ignore-shared`).
    Memfd,
    /// A snapshot's memory file mapped private: forks share its pages in
    /// the host's page cache until they write them.
    SnapshotFile(&'a Path),
    /// Anonymous RAM; after a restore its pages come from the stream.
    Anonymous,
}

impl Memory<'_> {
    /// The `-object` value for `size` MiB.
    fn object(&self, mem_mib: u32) -> OsString {
        let size = format!("id=ram,size={mem_mib}M");
        match self {
            Memory::Memfd => format!("memory-backend-memfd,{size},share=on").into(),
            Memory::SnapshotFile(path) => opt(
                &format!("memory-backend-file,{size},mem-path="),
                path,
                ",share=off",
            ),
            Memory::Anonymous => format!("memory-backend-ram,{size}").into(),
        }
    }
}

/// One VM's QEMU invocation.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    pub name: &'a str,
    pub accel: Accel,
    pub machine: Machine,
    pub cpus: u32,
    pub mem_mib: u32,
    pub memory: Memory<'a>,
    /// Wait for the machine state on QMP (`migrate-incoming`) instead of
    /// booting.
    pub incoming: bool,
    pub kernel: &'a Path,
    pub append: &'a str,
    /// First disk, `/dev/vda`.
    pub rootfs: &'a Path,
    /// Attach the first disk read-only (a shared stored image).
    pub rootfs_read_only: bool,
    /// Second disk, `/dev/vdb`, read-only.
    pub config_drive: &'a Path,
    /// Further disks, `/dev/vdc` onwards, in order.
    pub disks: &'a [Disk],
    pub console_log: &'a Path,
    /// `None` for a probe run that nobody controls.
    pub qmp_socket: Option<&'a Path>,
    /// Where QEMU writes its pid.
    pub pid_file: Option<&'a Path>,
    /// Tap device and guest MAC.
    pub network: Option<(&'a str, &'a str)>,
    /// The guest agent's virtio-serial ports: one Unix socket each, QEMU
    /// listening ([`firebuild_agent_proto::serial_port_name`] names them).
    pub agent_sockets: &'a [std::path::PathBuf],
    /// `-add-fd` arguments: the disks' fd sets (see
    /// [`super::confine::FdSets`]), given before the drives that use them.
    pub fd_sets: &'a [OsString],
    /// The unprivileged user QEMU becomes once set up.
    pub confinement: Confinement<'a>,
    /// Keep the vCPUs stopped until QMP `cont` (the guest runs only once
    /// QEMU has dropped its privileges).
    pub start_paused: bool,
    /// Empty PCIe root ports (`hp0`, `hp1` ...) for disks plugged in while
    /// the VM runs ([`hotplug_port`]); q35 only.
    pub hotplug_slots: u32,
}

/// The id of hot-plug root port `slot`.
pub fn hotplug_port(slot: u32) -> String {
    format!("hp{slot}")
}

/// Who QEMU runs as after setting the machine up: it opens its files,
/// sockets, tap and `/dev/kvm` as root, then chroots into an empty
/// directory and becomes `uid:gid` with no capabilities, before any guest
/// code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confinement<'a> {
    pub uid: u32,
    pub gid: u32,
    /// An empty directory only root can read.
    pub chroot: &'a Path,
}

/// QEMU's seccomp filter: no obsolete system calls, no fork or exec, no
/// scheduler or affinity changes. (This is why QEMU never daemonizes itself:
/// `-daemonize` forks and calls setsid.) Unlike libvirt, which execs QEMU as
/// its user already, set*id stays allowed: QEMU 7.2 installs the filter
/// before `-runas` drops root, and `elevateprivileges=deny` kills that drop.
/// Once dropped (all of uid, euid, suid, no capabilities, no_new_privs) the
/// calls cannot raise anything back.
pub const SANDBOX: &str =
    "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny";

/// QEMU splits option values at ',' and reads ",," as a literal comma.
fn escape(value: &Path) -> OsString {
    let text = value.as_os_str().to_string_lossy();
    if text.contains(',') {
        OsString::from(text.replace(',', ",,"))
    } else {
        value.as_os_str().to_owned()
    }
}

fn opt(prefix: &str, value: &Path, suffix: &str) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(escape(value));
    s.push(suffix);
    s
}

impl Invocation<'_> {
    /// The arguments after the binary name.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |items: &[&str]| args.extend(items.iter().map(OsString::from));
        push(&["-name", &format!("guest={}", self.name)]);
        push(&[
            "-machine",
            &format!(
                "{},accel={},memory-backend=ram",
                self.machine.as_str(),
                self.accel.as_str()
            ),
        ]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&[
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &self.mem_mib.to_string(),
        ]);
        // No default devices, no user config, no display: only what we add.
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        push(&["-sandbox", SANDBOX]);
        // A guest reboot ends QEMU: the guest init reboots when the
        // entrypoint exits (`reboot=k`, `panic=1`).
        push(&["-no-reboot"]);

        args.push("-object".into());
        args.push(self.memory.object(self.mem_mib));
        args.push("-kernel".into());
        args.push(self.kernel.as_os_str().to_owned());
        args.push("-append".into());
        args.push(self.append.into());

        args.extend(self.fd_sets.iter().cloned());
        // QEMU's image locks are OFD locks, which an fd set's member keeps
        // after QEMU closes its duplicate: its own reopen (`cont` after a
        // snapshot) would then conflict with itself. The runtime keeps
        // writers apart instead (private scratch disks, one volume writer).
        let locking = if self.fd_sets.is_empty() {
            ""
        } else {
            ",file.locking=off"
        };
        let block = self.machine.block_device();
        args.push("-drive".into());
        let readonly = if self.rootfs_read_only {
            ",readonly=on"
        } else {
            ""
        };
        args.push(opt(
            "id=rootfs,file=",
            self.rootfs,
            &format!("{locking},format=raw,if=none{readonly}"),
        ));
        args.push("-device".into());
        args.push(format!("{block},drive=rootfs").into());
        args.push("-drive".into());
        args.push(opt(
            "id=config,file=",
            self.config_drive,
            &format!("{locking},format=raw,if=none,readonly=on"),
        ));
        args.push("-device".into());
        args.push(format!("{block},drive=config").into());
        // Drive ids of our own: disk ids (volume names) need not be valid
        // QEMU ids.
        for (i, disk) in self.disks.iter().enumerate() {
            let readonly = if disk.read_only { ",readonly=on" } else { "" };
            args.push("-drive".into());
            args.push(opt(
                &format!("id=disk{i},file="),
                &disk.path,
                &format!("{locking},format=raw,if=none{readonly}"),
            ));
            args.push("-device".into());
            args.push(format!("{block},drive=disk{i}").into());
        }

        // q35's root bus takes no hot-plugged device itself: each slot is a
        // root port of its own.
        for slot in 0..self.hotplug_slots {
            args.push("-device".into());
            args.push(
                format!(
                    "pcie-root-port,id={},chassis={}",
                    hotplug_port(slot),
                    slot + 1
                )
                .into(),
            );
        }

        if let Some((tap, mac)) = self.network {
            args.push("-netdev".into());
            args.push(format!("tap,id=net0,ifname={tap},script=no,downscript=no").into());
            args.push("-device".into());
            args.push(format!("{},netdev=net0,mac={mac}", self.machine.net_device()).into());
        }

        if !self.agent_sockets.is_empty() {
            args.push("-device".into());
            args.push(format!("{},id=agent", self.machine.serial_bus()).into());
        }
        for (i, socket) in self.agent_sockets.iter().enumerate() {
            args.push("-chardev".into());
            args.push(opt(
                &format!("socket,id=agent{i},path="),
                socket,
                ",server=on,wait=off",
            ));
            args.push("-device".into());
            args.push(
                format!(
                    "virtserialport,bus=agent.0,chardev=agent{i},name={}",
                    firebuild_agent_proto::serial_port_name(i)
                )
                .into(),
            );
        }

        args.push("-chardev".into());
        args.push(opt("file,id=console,path=", self.console_log, ""));
        args.push("-serial".into());
        args.push("chardev:console".into());

        if let Some(qmp) = self.qmp_socket {
            args.push("-qmp".into());
            args.push(opt("unix:", qmp, ",server=on,wait=off"));
        }
        if let Some(pid_file) = self.pid_file {
            args.push("-pidfile".into());
            args.push(pid_file.as_os_str().to_owned());
        }
        if self.incoming {
            args.push("-incoming".into());
            args.push("defer".into());
        }
        if self.start_paused {
            args.push("-S".into());
        }
        let confinement = self.confinement;
        args.push("-runas".into());
        args.push(format!("{}:{}", confinement.uid, confinement.gid).into());
        args.push("-chroot".into());
        args.push(confinement.chroot.as_os_str().to_owned());
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn invocation<'a>(machine: Machine, accel: Accel) -> Invocation<'a> {
        Invocation {
            name: "vm1",
            accel,
            machine,
            cpus: 2,
            mem_mib: 256,
            memory: Memory::Memfd,
            incoming: false,
            kernel: Path::new("/k/vmlinux"),
            append: "console=ttyS0 root=/dev/vda",
            rootfs: Path::new("/run/vm1/rootfs.ext4"),
            rootfs_read_only: false,
            config_drive: Path::new("/run/vm1/config.drive"),
            disks: &[],
            console_log: Path::new("/run/vm1/console.log"),
            qmp_socket: Some(Path::new("/run/vm1/qmp.sock")),
            pid_file: Some(Path::new("/run/vm1/vmm.pid")),
            network: Some(("tap0", "02:00:00:00:00:01")),
            agent_sockets: &[],
            fd_sets: &[],
            confinement: Confinement {
                uid: 2_000_065_536,
                gid: 2_000_065_537,
                chroot: Path::new("/run/vm1/vmm-root"),
            },
            start_paused: true,
            hotplug_slots: 0,
        }
    }

    fn joined(args: &[OsString]) -> String {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn agent_ports_are_virtio_serial_ports_on_unix_sockets() {
        let sockets = [
            PathBuf::from("/run/vm1/agent-0.sock"),
            PathBuf::from("/run/vm1/agent-1.sock"),
        ];
        let mut inv = invocation(Machine::Q35, Accel::Tcg);
        inv.agent_sockets = &sockets;
        let line = joined(&inv.args());
        assert!(
            line.contains(
                "-device virtio-serial-pci,id=agent \
                 -chardev socket,id=agent0,path=/run/vm1/agent-0.sock,server=on,wait=off \
                 -device virtserialport,bus=agent.0,chardev=agent0,name=org.firebuild.agent.0 \
                 -chardev socket,id=agent1,path=/run/vm1/agent-1.sock,server=on,wait=off \
                 -device virtserialport,bus=agent.0,chardev=agent1,name=org.firebuild.agent.1"
            ),
            "{line}"
        );
        inv.machine = Machine::Microvm;
        assert!(joined(&inv.args()).contains("-device virtio-serial-device,id=agent"));
    }

    #[test]
    fn hot_plug_slots_are_empty_root_ports_of_their_own() {
        let mut inv = invocation(Machine::Q35, Accel::Tcg);
        assert!(!joined(&inv.args()).contains("pcie-root-port"));
        inv.hotplug_slots = 2;
        let line = joined(&inv.args());
        assert!(
            line.contains(
                "-device pcie-root-port,id=hp0,chassis=1 -device pcie-root-port,id=hp1,chassis=2"
            ),
            "{line}"
        );
        assert_eq!(hotplug_port(1), "hp1");
    }

    #[test]
    fn disks_in_fd_sets_come_after_their_sets_without_image_locks() {
        let sets = [
            OsString::from("-add-fd"),
            OsString::from("fd=7,set=1"),
            OsString::from("-add-fd"),
            OsString::from("fd=8,set=1"),
        ];
        let mut inv = invocation(Machine::Q35, Accel::Tcg);
        inv.rootfs = Path::new("/dev/fdset/1");
        inv.fd_sets = &sets;
        let line = joined(&inv.args());
        assert!(
            line.contains(
                "-add-fd fd=7,set=1 -add-fd fd=8,set=1 \
                 -drive id=rootfs,file=/dev/fdset/1,file.locking=off,format=raw,if=none "
            ),
            "{line}"
        );
    }

    #[test]
    fn q35_tcg_command_line() {
        let line = joined(&invocation(Machine::Q35, Accel::Tcg).args());
        assert_eq!(
            line,
            "-name guest=vm1 -machine q35,accel=tcg,memory-backend=ram -smp 2 -m 256 \
             -nodefaults -no-user-config -display none \
             -sandbox on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny \
             -no-reboot -object memory-backend-memfd,id=ram,size=256M,share=on -kernel /k/vmlinux -append console=ttyS0 root=/dev/vda \
             -drive id=rootfs,file=/run/vm1/rootfs.ext4,format=raw,if=none \
             -device virtio-blk-pci,drive=rootfs \
             -drive id=config,file=/run/vm1/config.drive,format=raw,if=none,readonly=on \
             -device virtio-blk-pci,drive=config \
             -netdev tap,id=net0,ifname=tap0,script=no,downscript=no \
             -device virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01 \
             -chardev file,id=console,path=/run/vm1/console.log -serial chardev:console \
             -qmp unix:/run/vm1/qmp.sock,server=on,wait=off \
             -pidfile /run/vm1/vmm.pid \
             -S -runas 2000065536:2000065537 -chroot /run/vm1/vmm-root"
        );
    }

    #[test]
    fn a_shared_root_is_read_only_and_more_disks_follow_the_config_drive() {
        let disks = [
            Disk {
                id: "scratch".into(),
                path: PathBuf::from("/run/vm1/scratch.ext4"),
                read_only: false,
                in_place: false,
            },
            Disk {
                id: "my data".into(),
                path: PathBuf::from("/v/data.ext4"),
                read_only: true,
                in_place: false,
            },
        ];
        let mut inv = invocation(Machine::Q35, Accel::Tcg);
        inv.rootfs_read_only = true;
        inv.disks = &disks;
        let line = joined(&inv.args());
        assert!(
            line.contains(
                "-drive id=rootfs,file=/run/vm1/rootfs.ext4,format=raw,if=none,readonly=on \
                 -device virtio-blk-pci,drive=rootfs \
                 -drive id=config,file=/run/vm1/config.drive,format=raw,if=none,readonly=on \
                 -device virtio-blk-pci,drive=config \
                 -drive id=disk0,file=/run/vm1/scratch.ext4,format=raw,if=none \
                 -device virtio-blk-pci,drive=disk0 \
                 -drive id=disk1,file=/v/data.ext4,format=raw,if=none,readonly=on \
                 -device virtio-blk-pci,drive=disk1 "
            ),
            "{line}"
        );
    }

    #[test]
    fn the_append_string_stays_one_argument() {
        let args = invocation(Machine::Q35, Accel::Tcg).args();
        let i = args.iter().position(|a| a == "-append").unwrap();
        assert_eq!(args[i + 1], "console=ttyS0 root=/dev/vda");
    }

    #[test]
    fn microvm_kvm_uses_mmio_devices_and_host_cpu() {
        let line = joined(&invocation(Machine::Microvm, Accel::Kvm).args());
        assert!(line.contains("-machine microvm,accel=kvm,memory-backend=ram -cpu host"));
        assert!(line.contains("virtio-blk-device,drive=rootfs"));
        assert!(line.contains("virtio-net-device,netdev=net0"));
        assert!(!line.contains("-pci"));
    }

    #[test]
    fn a_restore_maps_the_snapshot_memory_private_and_waits_for_its_state() {
        let mut inv = invocation(Machine::Q35, Accel::Tcg);
        inv.memory = Memory::SnapshotFile(Path::new("/snap/a,b/memory"));
        inv.incoming = true;
        inv.start_paused = false;
        let line = joined(&inv.args());
        assert!(
            line.contains(
                "-object memory-backend-file,id=ram,size=256M,mem-path=/snap/a,,b/memory,share=off "
            ),
            "{line}"
        );
        assert!(line.contains(" -incoming defer -runas "), "{line}");
        inv.memory = Memory::Anonymous;
        assert!(joined(&inv.args()).contains("-object memory-backend-ram,id=ram,size=256M "));
    }

    #[test]
    fn commas_in_paths_are_escaped_and_probe_mode_has_no_control() {
        let mut inv = invocation(Machine::Q35, Accel::Tcg);
        inv.rootfs = Path::new("/a,b/rootfs");
        inv.qmp_socket = None;
        inv.pid_file = None;
        inv.network = None;
        let line = joined(&inv.args());
        assert!(line.contains("file=/a,,b/rootfs,format=raw"));
        assert!(!line.contains("-pidfile") && !line.contains("-qmp"));
        assert!(!line.contains("-netdev"));
    }
}
