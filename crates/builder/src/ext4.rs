//! The ext4 output: `mkfs.ext4 -d` of the finished root (no loop mount), and
//! the way back, reading a stored image's files for `FROM <stored tag>`
//! when its layers are no longer cached.
//!
//! Character and block devices live in layer directories as *device
//! placeholders* (empty files marked with
//! [`firebuild_agent_proto::tree::DEVICE_XATTR`]): a device node in a
//! host directory would open a host device. [`make_ext4`] turns each
//! placeholder into the real device inode inside the image only (with
//! `debugfs -w`, after `mkfs.ext4 -d`), and [`import_ext4`] turns the
//! devices of an image back into placeholders.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use firebuild_agent_proto::tree::Device;

use crate::error::{BuildError, Result};

const MIB: u64 = 1024 * 1024;
const BLOCK: u64 = 4096;

/// What went into an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes the files need in 4 KiB blocks.
    pub bytes: u64,
    pub inodes: u64,
}

/// A device placeholder of the tree, to become a device inode in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PlannedDevice {
    /// The directory it is in, from the image's root (`/` for the root).
    parent: Vec<u8>,
    name: Vec<u8>,
    device: Device,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Measures a tree as ext4 will store it (4 KiB blocks; hard links once)
/// and finds its device placeholders.
fn scan(root: &Path) -> Result<(Usage, Vec<PlannedDevice>)> {
    let mut usage = Usage {
        bytes: 0,
        inodes: 0,
    };
    let mut devices = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(BuildError::io("reading", &dir))?;
        usage.inodes += 1;
        let mut n = 0u64;
        for e in entries {
            let e = e.map_err(BuildError::io("reading", &dir))?;
            n += 1;
            let md = e.metadata().map_err(BuildError::io("stat", e.path()))?;
            if md.is_dir() {
                stack.push(e.path());
                continue;
            }
            if let Some(device) = Device::of_placeholder(&e.path(), &md)
                .map_err(BuildError::io("reading the device placeholder", e.path()))?
            {
                let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
                let mut parent = b"/".to_vec();
                parent.extend_from_slice(rel.as_os_str().as_bytes());
                devices.push(PlannedDevice {
                    parent,
                    name: e.file_name().as_bytes().to_vec(),
                    device,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime: md.mtime(),
                });
            }
            if md.nlink() > 1 && !seen.insert((md.dev(), md.ino())) {
                continue;
            }
            usage.inodes += 1;
            if md.is_file() || (md.file_type().is_symlink() && md.len() > 59) {
                usage.bytes += md.len().div_ceil(BLOCK) * BLOCK;
            }
        }
        // Directory blocks: ~40 bytes per entry.
        usage.bytes += (n * 40).div_ceil(BLOCK).max(1) * BLOCK;
    }
    devices.sort_by(|a, b| (&a.parent, &a.name).cmp(&(&b.parent, &b.name)));
    Ok((usage, devices))
}

/// The file system size for `usage`: the content plus a quarter (at least
/// 64 MiB) of free space for the VM, plus inode tables and journal.
pub fn default_size_mib(usage: Usage) -> u64 {
    let inode_bytes = inode_count(usage) * 256;
    let headroom = (usage.bytes / 4).max(64 * MIB);
    let journal = if usage.bytes > 512 * MIB {
        64 * MIB
    } else {
        16 * MIB
    };
    (usage.bytes + headroom + inode_bytes + journal).div_ceil(MIB)
}

/// Inodes to create: twice what is used (the VM makes files too), at least
/// 16384.
fn inode_count(usage: Usage) -> u64 {
    (usage.inodes * 2).max(16384)
}

/// Writes an ext4 image of `root` to `out` (created, sparse), `size_mib`
/// large (or the default for the content). Device placeholders become
/// device inodes in the image.
pub fn make_ext4(root: &Path, out: &Path, size_mib: Option<u64>, label: &str) -> Result<u64> {
    make_ext4_at(root, out, size_mib, label, None)
}

/// [`make_ext4`], reproducible when `source_date_epoch` is given: the same
/// tree and label give the same bytes (see [`crate::ext4_repro`]).
pub fn make_ext4_at(
    root: &Path,
    out: &Path,
    size_mib: Option<u64>,
    label: &str,
    source_date_epoch: Option<i64>,
) -> Result<u64> {
    let (usage, devices) = scan(root)?;
    let size = size_mib.unwrap_or_else(|| default_size_mib(usage));
    let err = |message: String| BuildError::Ext4 {
        path: out.to_path_buf(),
        message,
    };
    let f = std::fs::File::create(out).map_err(BuildError::io("creating", out))?;
    f.set_len(size * MIB)
        .map_err(BuildError::io("sizing", out))?;
    drop(f);
    let label = &label[..label.len().min(16)];
    let mut mkfs = tool("mkfs.ext4");
    mkfs.args(["-q", "-F", "-b", "4096", "-m", "0"])
        // orphan_file (1.47's default) cannot be mounted read-write by
        // guest kernels before 5.15.
        .args(["-O", "^orphan_file"])
        .arg("-N")
        .arg(inode_count(usage).to_string())
        .arg("-L")
        .arg(label);
    if let Some(epoch) = source_date_epoch {
        crate::ext4_repro::fix_mkfs_inputs(&mut mkfs, epoch, label, usage);
    }
    let output = mkfs
        .arg("-d")
        .arg(root)
        .arg(out)
        .env("PATH", tool_path())
        .output()
        .map_err(|e| {
            err(format!(
                "running mkfs.ext4: {e}; install e2fsprogs (1.43 or later)"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint =
            if size_mib.is_some() && (stderr.contains("allocate") || stderr.contains("space")) {
                format!(
                    "; the content needs about {} MiB: give a larger --filesystem-size-mbs",
                    default_size_mib(usage)
                )
            } else {
                String::new()
            };
        return Err(err(format!(
            "mkfs.ext4 failed ({}): {}{hint}",
            output.status,
            stderr.trim()
        )));
    }
    make_devices(out, &devices, source_date_epoch).map_err(err)?;
    if let Some(epoch) = source_date_epoch {
        crate::ext4_repro::normalize_times(out, epoch).map_err(err)?;
    }
    Ok(size * MIB)
}

/// A debugfs argument: double-quoted, a quote doubled (its parser's
/// rule). Names with control characters are refused: a newline would end
/// the command.
fn debugfs_quote(bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if bytes.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(format!(
            "{:?}: a device name with control characters",
            String::from_utf8_lossy(bytes)
        ));
    }
    let mut out = vec![b'"'];
    for &b in bytes {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    Ok(out)
}

/// The debugfs script that replaces each placeholder (a regular file that
/// `mkfs.ext4 -d` copied, marker attribute and all) with its device inode:
/// the placeholder's name is unlinked, a device of that name made, and its
/// mode, owner and times set. Names are resolved from the parent directory
/// as `./name`, so a name such as `<12>` is never read as an inode number.
fn device_script(devices: &[PlannedDevice]) -> std::result::Result<Vec<u8>, String> {
    let mut script = Vec::new();
    for planned in devices {
        let parent = debugfs_quote(&planned.parent)?;
        let name = debugfs_quote(&planned.name)?;
        let mut here = b"./".to_vec();
        here.extend_from_slice(&planned.name);
        let here = debugfs_quote(&here)?;
        let d = &planned.device;
        let kind = if d.block {
            libc::S_IFBLK
        } else {
            libc::S_IFCHR
        };
        let mut line = |parts: &[&[u8]]| {
            for p in parts {
                script.extend_from_slice(p);
            }
            script.push(b'\n');
        };
        line(&[b"cd ", &parent]);
        line(&[b"rm ", &here]);
        // debugfs' mknod takes numbers up to 65535 only: the number goes
        // in with `sif` in ext4's own encoding.
        let kind_arg = format!(" {} 0 0", d.type_letter());
        line(&[b"mknod ", &name, kind_arg.as_bytes()]);
        let (old, new) = ext4_device_number(d);
        for (field, value) in [
            ("block[0]", old.to_string()),
            ("block[1]", new.to_string()),
            ("mode", format!("0{:o}", kind | planned.mode)),
            ("uid", planned.uid.to_string()),
            ("gid", planned.gid.to_string()),
            ("mtime", format!("@{}", planned.mtime)),
            ("ctime", format!("@{}", planned.mtime)),
            ("atime", format!("@{}", planned.mtime)),
        ] {
            line(&[b"sif ", &here, format!(" {field} {value}").as_bytes()]);
        }
    }
    Ok(script)
}

/// How ext4 stores a device number in `i_block[0]` and `i_block[1]`, as
/// Linux writes it: the old 8:8 encoding when both fit, else the new one
/// (minor's low 8 bits, 12 bits of major, minor's high 12 bits).
fn ext4_device_number(d: &Device) -> (u32, u32) {
    if d.major < 256 && d.minor < 256 {
        ((d.major << 8) | d.minor, 0)
    } else {
        (
            0,
            (d.minor & 0xff) | (d.major << 8) | ((d.minor & !0xff) << 12),
        )
    }
}

/// Makes `devices` in the ext4 image `image` (see [`device_script`]).
/// debugfs goes on after a failed command and still exits 0: anything it
/// prints on stderr but its banner fails the image.
fn make_devices(
    image: &Path,
    devices: &[PlannedDevice],
    fake_time: Option<i64>,
) -> std::result::Result<(), String> {
    if devices.is_empty() {
        return Ok(());
    }
    let script = device_script(devices).map_err(|e| format!("making device nodes: {e}"))?;
    run_debugfs(image, &script, fake_time).map_err(|e| {
        format!(
            "making {} device node(s) with debugfs failed {e}",
            devices.len()
        )
    })
}

/// Runs a `debugfs -w` script on `image`; any complaint debugfs prints
/// is an error (it exits 0 whatever a command did).
/// With `fake_time`, the superblock's times it writes are that time.
pub(crate) fn run_debugfs(
    image: &Path,
    script: &[u8],
    fake_time: Option<i64>,
) -> std::result::Result<(), String> {
    let mut debugfs = tool("debugfs");
    if let Some(t) = fake_time {
        debugfs.env("E2FSPROGS_FAKE_TIME", t.max(0).to_string());
    }
    let mut child = debugfs
        .args(["-w", "-f", "-"])
        .arg(image)
        .env("PATH", tool_path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("(running debugfs: {e}; install e2fsprogs)"))?;
    let fed = {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(script)
    };
    let output = child
        .wait_with_output()
        .map_err(|e| format!("(running debugfs: {e})"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !output.status.success() || fed.is_err() || !complaints.is_empty() {
        return Err(format!("({}): {}", output.status, complaints.join("; ")));
    }
    Ok(())
}

/// An e2fsprogs command that dies with the thread that started it, so a
/// killed build leaves no mkfs running.
fn tool(name: &str) -> Command {
    use std::os::unix::process::CommandExt;
    let mut c = Command::new(name);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        c.pre_exec(|| {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            Ok(())
        });
    }
    c
}

fn tool_path() -> String {
    let cur = std::env::var("PATH").unwrap_or_default();
    format!("{cur}:/usr/sbin:/sbin:/usr/bin:/bin")
}

/// Copies every entry of the ext4 image `image` into `dest` (an empty
/// directory) without mounting it: [`crate::ext4_reader`] reads the image
/// into a tar stream, and firebuild's one extractor of untrusted trees
/// (`firebuild_oci::unpack`, whiteouts off) writes it under `dest` with
/// owners, modes (setuid bits included), mtimes, hard links and
/// `user.`/`trusted.`/`security.` extended attributes. The extractor
/// writes character and block devices as device placeholders, never as
/// nodes on this host.
pub fn import_ext4(image: &Path, dest: &Path) -> Result<()> {
    let err = |message: String| BuildError::Ext4 {
        path: image.to_path_buf(),
        message,
    };
    let fs = crate::ext4_reader::Ext4Image::open(image).map_err(|e| err(e.to_string()))?;
    let (reader, writer) = std::io::pipe().map_err(|e| err(format!("a pipe: {e}")))?;
    let opts = firebuild_oci::UnpackOptions {
        preserve_ownership: true,
        whiteouts: false,
        ..Default::default()
    };
    let (produced, applied) = std::thread::scope(|s| {
        let producer = s.spawn(|| write_tar(&fs, writer, &TarView::whole()));
        let applied = firebuild_oci::apply_layer(dest, reader, "its tree", &opts);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err("the reader thread panicked".into()));
        (produced, applied)
    });
    // The reader's own error first: the extractor then only saw a cut stream.
    produced.map_err(err)?;
    applied.map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Which part of an ext4 image a tar of it shows.
pub(crate) struct TarView {
    /// A top-level directory to leave out (`.firebuild`, where firebuild
    /// put the guest init).
    skip_dir: Option<&'static str>,
    /// The extended attributes it carries.
    xattr_allowed: fn(&str) -> bool,
    times: crate::export::Times,
}

impl TarView {
    /// Everything, every attribute: the way back into a layer directory.
    fn whole() -> TarView {
        TarView {
            skip_dir: None,
            xattr_allowed: |_| true,
            times: Default::default(),
        }
    }

    /// What an OCI image layer of it holds: the image's own files and the
    /// attributes images carry.
    pub(crate) fn oci_layer(times: crate::export::Times) -> TarView {
        TarView {
            skip_dir: firebuild_metadata::boot::GUEST_INIT_PATH
                .trim_start_matches('/')
                .split('/')
                .next(),
            xattr_allowed: |name| {
                firebuild_agent_proto::tree::layer_xattr_allowed(name)
                    && !name.starts_with("user.overlay.")
            },
            times,
        }
    }

    fn skips(&self, path: &[u8]) -> bool {
        self.skip_dir.is_some_and(|dir| {
            let dir = dir.as_bytes();
            path.starts_with(dir) && (path.len() == dir.len() || path[dir.len()] == b'/')
        })
    }
}

/// Writes `fs`'s tree as a tar stream (GNU headers for long names and big
/// ids, PAX records for xattrs) as `view` shows it; the root itself is
/// left out.
pub(crate) fn write_tar(
    fs: &crate::ext4_reader::Ext4Image,
    out: std::io::PipeWriter,
    view: &TarView,
) -> std::result::Result<(), String> {
    use crate::ext4_reader::{Entry, Kind, WalkError};
    use std::os::unix::ffi::OsStrExt;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let mut first_paths: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    let mut append = |entry: &Entry| -> std::io::Result<()> {
        if entry.path.is_empty() || view.skips(&entry.path) {
            return Ok(());
        }
        let path = std::ffi::OsStr::from_bytes(&entry.path);
        let xattrs: Vec<(String, &[u8])> = entry
            .xattrs
            .iter()
            .filter_map(|(k, v)| {
                let name = std::str::from_utf8(k).ok()?;
                (view.xattr_allowed)(name).then(|| (format!("SCHILY.xattr.{name}"), v.as_slice()))
            })
            .collect();
        if !xattrs.is_empty() {
            tar.append_pax_extensions(xattrs.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(entry.uid.into());
        header.set_gid(entry.gid.into());
        header.set_mtime(view.times.mtime(entry.mtime.0));
        header.set_size(0);
        if entry.multiply_linked {
            if let Some(first) = first_paths.get(&entry.inode_number()) {
                header.set_entry_type(tar::EntryType::Link);
                return tar.append_link(&mut header, path, std::ffi::OsStr::from_bytes(first));
            }
            first_paths.insert(entry.inode_number(), entry.path.clone());
        }
        match &entry.kind {
            Kind::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                tar.append_data(&mut header, path, std::io::empty())
            }
            Kind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size());
                let data = fs.contents(entry).map_err(std::io::Error::other)?;
                tar.append_data(&mut header, path, data)
            }
            Kind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                tar.append_link(&mut header, path, target)
            }
            Kind::CharDevice { major, minor } | Kind::BlockDevice { major, minor } => {
                header.set_entry_type(if matches!(entry.kind, Kind::CharDevice { .. }) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                header.set_device_major(*major)?;
                header.set_device_minor(*minor)?;
                tar.append_data(&mut header, path, std::io::empty())
            }
            Kind::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                tar.append_data(&mut header, path, std::io::empty())
            }
            // A socket in an image is a leftover of a running program.
            Kind::Socket => Ok(()),
        }
    };
    fs.walk(&mut |entry| append(entry).map_err(|e| e.to_string()))
        .map_err(|e| match e {
            WalkError::Image(e) => e.to_string(),
            WalkError::Visit(message) => message,
        })?;
    tar.into_inner()
        .and_then(|mut w| std::io::Write::flush(&mut w))
        .map_err(|e| format!("writing the tree: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebuild_agent_proto::tree::DEVICE_XATTR;

    #[test]
    fn round_trips_through_ext4_without_mounting() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), "hi").unwrap();
        std::os::unix::fs::chown(src.join("d/f"), Some(1000), Some(50)).unwrap();
        std::fs::set_permissions(src.join("d/f"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::hard_link(src.join("d/f"), src.join("hl")).unwrap();
        let path = std::ffi::CString::new(src.join("hl").to_str().unwrap()).unwrap();
        crate::fsutil::set_xattr(
            &path,
            &std::ffi::CString::new("user.firebuild").unwrap(),
            b"kept",
        )
        .unwrap();
        std::os::unix::fs::symlink("d/f", src.join("sl")).unwrap();
        let c = std::ffi::CString::new(src.join("null").to_str().unwrap()).unwrap();
        assert_eq!(
            unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) },
            0
        );
        let img = d.path().join("img");
        let size = make_ext4(&src, &img, None, "test").unwrap();
        assert_eq!(size % MIB, 0);
        let ea = Command::new("debugfs")
            .arg("-R")
            .arg("ea_get /d/f user.firebuild")
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&ea.stdout).contains("kept"),
            "xattrs kept in the image"
        );
        assert_fsck_clean(&img);
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        import_ext4(&img, &out).unwrap();
        let md = std::fs::metadata(out.join("d/f")).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid(), md.nlink()),
            (0o4755, 1000, 50, 2)
        );
        assert_eq!(
            std::fs::read_link(out.join("sl")).unwrap(),
            Path::new("d/f")
        );
        // A device comes back as its placeholder, not as a node.
        let null = std::fs::symlink_metadata(out.join("null")).unwrap();
        assert!(null.is_file() && null.len() == 0);
        assert_eq!(
            Device::of_placeholder(&out.join("null"), &null).unwrap(),
            Some(Device::new(false, 1, 3).unwrap())
        );
        assert!(!out.join("lost+found").exists());
        // Too small a requested size fails with advice.
        std::fs::write(src.join("big"), vec![7u8; 3 * MIB as usize]).unwrap();
        let err = make_ext4(&src, &img, Some(2), "t").unwrap_err().to_string();
        assert!(err.contains("mkfs.ext4 failed"), "{err}");
    }

    #[test]
    fn sizes_grow_with_content() {
        let small = default_size_mib(Usage {
            bytes: 0,
            inodes: 10,
        });
        assert!(small >= 64, "{small}");
        let big = default_size_mib(Usage {
            bytes: 1024 * MIB,
            inodes: 40_000,
        });
        assert!(big > 1024 + 256, "{big}");
    }

    /// `e2fsck -fn` finds nothing to fix in `image`.
    fn assert_fsck_clean(image: &Path) {
        let fsck = Command::new("e2fsck")
            .arg("-fn")
            .arg(image)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
    }

    /// Makes a device placeholder as a layer tree's writer does.
    fn placeholder(path: &Path, device: Device, mode: u32, owner: (u32, u32)) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, b"").unwrap();
        std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let name = std::ffi::CString::new(DEVICE_XATTR).unwrap();
        crate::fsutil::set_xattr(&p, &name, device.marker().as_bytes()).unwrap();
    }

    fn debugfs(image: &Path, cmd: &str) -> String {
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(cmd)
            .arg(image)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every device node below `dir` (whiteouts, char 0/0, aside).
    fn device_nodes(dir: &Path) -> Vec<std::path::PathBuf> {
        use std::os::unix::fs::FileTypeExt;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            let ft = md.file_type();
            if ft.is_dir() {
                found.extend(device_nodes(&e.path()));
            } else if ft.is_block_device() || (ft.is_char_device() && md.rdev() != 0) {
                found.push(e.path());
            }
        }
        found
    }

    #[test]
    fn device_placeholders_become_devices_in_the_image_only() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("layer");
        let net = src.join("opt/net");
        std::fs::create_dir_all(&net).unwrap();
        placeholder(
            &net.join("tun"),
            Device::new(false, 10, 200).unwrap(),
            0o640,
            (1, 2),
        );
        placeholder(
            &net.join("blk"),
            Device::new(true, 7, 0).unwrap(),
            0o660,
            (0, 6),
        );
        // Names debugfs could misread: quotes, spaces, an inode number.
        let odd = "we ird\"q'#\\";
        placeholder(
            &src.join(odd),
            Device::new(false, 4095, 1_048_575).unwrap(),
            0o600,
            (70000, 70001),
        );
        placeholder(
            &src.join("<12>"),
            Device::new(false, 1, 3).unwrap(),
            0o666,
            (0, 0),
        );
        std::fs::write(src.join("empty"), b"").unwrap();
        std::fs::write(src.join("opt/keep"), b"data").unwrap();

        let img = d.path().join("img");
        make_ext4(&src, &img, None, "layer").unwrap();
        let tun = debugfs(&img, "stat /opt/net/tun");
        assert!(tun.contains("Type: character special"), "{tun}");
        assert!(tun.contains("Mode:  0640"), "{tun}");
        assert!(tun.contains("User:     1   Group:     2"), "{tun}");
        assert!(tun.contains("Device major/minor number: 10:200"), "{tun}");
        let blk = debugfs(&img, "stat /opt/net/blk");
        assert!(blk.contains("Type: block special"), "{blk}");
        assert!(blk.contains("Mode:  0660"), "{blk}");
        assert!(blk.contains("Group:     6"), "{blk}");
        assert!(blk.contains("Device major/minor number: 07:00"), "{blk}");
        let quoted =
            |path: &str| String::from_utf8(debugfs_quote(path.as_bytes()).unwrap()).unwrap();
        let odd_stat = debugfs(&img, &format!("stat {}", quoted(&format!("/{odd}"))));
        assert!(odd_stat.contains("Mode:  0600"), "{odd_stat}");
        assert!(
            odd_stat.contains("User: 70000   Group: 70001"),
            "{odd_stat}"
        );
        assert!(
            odd_stat.contains("Device major/minor number: 4095:1048575"),
            "{odd_stat}"
        );
        let inode_like = debugfs(&img, "stat /<12>");
        assert!(
            inode_like.contains("Type: character special"),
            "{inode_like}"
        );
        assert!(
            inode_like.contains("Device major/minor number: 01:03"),
            "{inode_like}"
        );
        // The marker went with the placeholder's inode.
        let ea = debugfs(&img, "ea_list /opt/net/tun");
        assert!(!ea.contains("firebuild"), "{ea}");
        // Plain files stay plain; the file system is consistent.
        assert!(debugfs(&img, "stat /empty").contains("Type: regular"));
        assert_eq!(debugfs(&img, "cat /opt/keep"), "data");
        assert_fsck_clean(&img);

        // Read back: placeholders again, no node on this host, and the
        // same devices when made into an image once more.
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        import_ext4(&img, &out).unwrap();
        assert_eq!(device_nodes(&out), Vec::<std::path::PathBuf>::new());
        let md = std::fs::symlink_metadata(out.join("opt/net/blk")).unwrap();
        assert_eq!(
            (
                Device::of_placeholder(&out.join("opt/net/blk"), &md).unwrap(),
                md.mode() & 0o7777,
                md.gid()
            ),
            (Some(Device::new(true, 7, 0).unwrap()), 0o660, 6)
        );
        let again = d.path().join("again");
        make_ext4(&out, &again, None, "again").unwrap();
        let tun2 = debugfs(&again, "stat /opt/net/tun");
        assert!(tun2.contains("Device major/minor number: 10:200"), "{tun2}");
        assert!(tun2.contains("User:     1   Group:     2"), "{tun2}");
        let odd2 = debugfs(&again, &format!("stat {}", quoted(&format!("/{odd}"))));
        assert!(
            odd2.contains("Device major/minor number: 4095:1048575"),
            "{odd2}"
        );
    }

    #[test]
    fn device_names_debugfs_cannot_take_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("layer");
        std::fs::create_dir(&src).unwrap();
        placeholder(
            &src.join("a\nrm x"),
            Device::new(false, 1, 3).unwrap(),
            0o666,
            (0, 0),
        );
        let err = make_ext4(&src, &d.path().join("img"), None, "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("control characters"), "{err}");
        // A malformed marker fails too, naming the file.
        let src = d.path().join("bad");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"").unwrap();
        let p = std::ffi::CString::new(src.join("f").as_os_str().as_bytes()).unwrap();
        let name = std::ffi::CString::new(DEVICE_XATTR).unwrap();
        crate::fsutil::set_xattr(&p, &name, b"b 9999 0").unwrap();
        let err = make_ext4(&src, &d.path().join("img"), None, "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad/f") && err.contains("out of range"),
            "{err}"
        );
    }
}
