//! `run --volume`: what a VM attaches (a stored volume or an ext4 image
//! file given by path), the checks made before anything is created, and the
//! single-writer rule's lock.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::disks::file_identity;
use crate::error::VmError;
use crate::names::name_problem;
use crate::volume_store::VolumeStore;

/// Guest paths the init owns: a volume there would hide it.
const RESERVED_GUEST_PATH: &str = "/.firebuild";

/// Where a `--volume` spec's data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A volume of the store, by name.
    Named(String),
    /// An existing ext4 image file, by absolute path.
    HostFile(PathBuf),
}

/// A parsed `--volume SOURCE:/guest/path[:ro|:rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The flag's value as given, for error messages.
    pub text: String,
    pub source: VolumeSource,
    pub guest_path: String,
    pub read_only: bool,
}

impl std::str::FromStr for VolumeSpec {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        const FORM: &str = "expected NAME:/guest/path[:ro] or /host/disk.img:/guest/path[:ro]";
        let parts: Vec<&str> = text.split(':').collect();
        let (source, guest_path, mode) = match parts[..] {
            [s, g] => (s, g, None),
            [s, g, m] => (s, g, Some(m)),
            _ => return Err(FORM.into()),
        };
        if source.is_empty() || guest_path.is_empty() {
            return Err(FORM.into());
        }
        let source = if source.starts_with('/') {
            VolumeSource::HostFile(source.into())
        } else if source.contains('/') {
            return Err(format!(
                "{source:?} is a relative path; give the image file's absolute path"
            ));
        } else if let Some(reason) = name_problem(source) {
            return Err(format!("{source:?} is not a volume name: {reason}"));
        } else {
            VolumeSource::Named(source.into())
        };
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(other) => return Err(format!("unknown mode {other:?}; use ro or rw")),
        };
        Ok(VolumeSpec {
            text: text.into(),
            source,
            guest_path: normalize_guest_path(guest_path)?,
            read_only,
        })
    }
}

/// The guest mount point, without empty components; refuses what is not
/// an absolute path below `/`, `.`/`..` components and the init's own
/// directory.
fn normalize_guest_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "the guest path {path:?} is not absolute (it must start with '/')"
        ));
    }
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(format!(
            "the guest path {path:?} has '.' or '..' components"
        ));
    }
    if parts.is_empty() {
        return Err("a volume cannot be mounted on the guest's root '/'".into());
    }
    let normal = format!("/{}", parts.join("/"));
    let reserved = RESERVED_GUEST_PATH;
    if normal == reserved || normal.starts_with(&format!("{reserved}/")) {
        return Err(format!(
            "the guest path {path:?} is under {reserved}, which firebuild's guest init uses"
        ));
    }
    Ok(normal)
}

/// A volume as a VM has it attached (kept in the run metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeMount {
    /// The stored volume's name; `None` for an image file given by path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
    /// The disk file the VMM opens.
    pub path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

impl VolumeMount {
    /// The volume's name, or its file's path.
    pub fn label(&self) -> String {
        match &self.volume {
            Some(name) => name.clone(),
            None => self.path.display().to_string(),
        }
    }

    /// The `--volume` value this mount stands for.
    pub fn spec(&self) -> String {
        let mode = if self.read_only { ":ro" } else { "" };
        format!("{}:{}{mode}", self.label(), self.guest_path)
    }

    /// Whether this is the same disk file as `path` (by device and inode).
    pub fn is_file(&self, path: &Path) -> bool {
        file_identity(&self.path).is_some_and(|id| Some(id) == file_identity(path))
    }

    /// Why `self` cannot be attached while `other` (another VM's) is:
    /// one writer, and no readers while it writes.
    pub fn conflict_with(&self, other: &VolumeMount, holder: &str) -> Option<String> {
        if !self.is_file(&other.path) || (self.read_only && other.read_only) {
            return None;
        }
        let label = self.label();
        Some(match (self.read_only, other.read_only) {
            (false, false) => format!(
                "volume {label} is attached read-write to VM {holder}; a volume has one writer at a time: stop that VM first"
            ),
            (false, true) => format!(
                "volume {label} is attached read-only to VM {holder}; it is not written while another VM reads it: stop that VM first, or attach it with :ro"
            ),
            _ => format!(
                "volume {label} is attached read-write to VM {holder}; it is not read while another VM writes it: stop that VM first"
            ),
        })
    }
}

/// Turns a parsed spec into a mount: finds the stored volume or checks the
/// image file's path.
pub fn resolve(spec: &VolumeSpec, store: &VolumeStore) -> Result<VolumeMount, VmError> {
    let fail = |reason: String| VmError::VolumeSpec {
        spec: spec.text.clone(),
        reason,
    };
    let (volume, path) = match &spec.source {
        VolumeSource::Named(name) => {
            let v = store.get(name).map_err(|e| fail(e.to_string()))?;
            (Some(v.name), v.path)
        }
        VolumeSource::HostFile(path) => {
            let real = path
                .canonicalize()
                .map_err(|e| fail(format!("{}: {e}", path.display())))?;
            (None, real)
        }
    };
    Ok(VolumeMount {
        volume,
        path,
        guest_path: spec.guest_path.clone(),
        read_only: spec.read_only,
    })
}

/// Checks a VM's mounts before anything is created: each disk is an ext4
/// image file other than the VM's root image, and no file or guest path
/// comes twice.
pub fn check_mounts(mounts: &[VolumeMount], image: &Path) -> Result<(), VmError> {
    for (i, m) in mounts.iter().enumerate() {
        let fail = |reason: String| VmError::VolumeSpec {
            spec: m.spec(),
            reason,
        };
        check_ext4_file(&m.path)
            .map_err(|reason| fail(format!("{}: {reason}", m.path.display())))?;
        if m.is_file(image) {
            return Err(fail("that is the VM's own root image".into()));
        }
        for earlier in &mounts[..i] {
            if earlier.guest_path == m.guest_path {
                return Err(fail(format!("{} is mounted twice", m.guest_path)));
            }
            if m.is_file(&earlier.path) {
                return Err(fail(format!("also given as {}", earlier.spec())));
            }
        }
    }
    Ok(())
}

/// A regular file with an ext4 superblock (magic 0xEF53 at byte 1080).
fn check_ext4_file(path: &Path) -> Result<(), String> {
    let mut file = File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut head = [0u8; 1082];
    let ext4 = file.read_exact(&mut head).is_ok() && head[1080..] == [0x53, 0xef];
    if !ext4 {
        return Err(
            "not an ext4 image (make one with mkfs.ext4, or use `firebuild volume create`)".into(),
        );
    }
    Ok(())
}

/// Exclusive locks on the volume files, held while `run` looks at who else
/// uses them and records its own claim, so two concurrent runs cannot both
/// take a volume. (`flock` does not interfere with QEMU's own image locks,
/// which are `fcntl` locks.)
#[derive(Debug)]
pub struct ClaimLock {
    _files: Vec<File>,
}

impl ClaimLock {
    pub fn take(mounts: &[VolumeMount]) -> Result<ClaimLock, VmError> {
        let mut paths: Vec<(Option<(u64, u64)>, &Path)> = mounts
            .iter()
            .map(|m| (file_identity(&m.path), m.path.as_path()))
            .collect();
        // One order for every taker: no deadlock between two runs.
        paths.sort();
        let mut files = Vec::new();
        for (_, path) in paths {
            let file = File::open(path).map_err(|e| VmError::io("opening the volume", path, e))?;
            rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| VmError::io("locking the volume", path, e.into()))?;
            files.push(file);
        }
        Ok(ClaimLock { _files: files })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<VolumeSpec, String> {
        s.parse()
    }

    #[test]
    fn specs_parse() {
        let v = parse("data:/var/lib/data").unwrap();
        assert_eq!(v.source, VolumeSource::Named("data".into()));
        assert_eq!(
            (v.guest_path.as_str(), v.read_only),
            ("/var/lib/data", false)
        );
        let v = parse("/srv/disk.img://mnt//disk/:ro").unwrap();
        assert_eq!(v.source, VolumeSource::HostFile("/srv/disk.img".into()));
        assert_eq!((v.guest_path.as_str(), v.read_only), ("/mnt/disk", true));
        assert!(!parse("data:/d:rw").unwrap().read_only);
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        for (spec, says) in [
            ("nope", "expected NAME:/guest/path"),
            (":/d", "expected NAME"),
            ("data:", "expected NAME"),
            ("a:/b:ro:x", "expected NAME"),
            ("rel/disk.img:/d", "relative path"),
            ("./disk.img:/d", "relative path"),
            ("-x:/d", "not a volume name"),
            ("data:relative", "not absolute"),
            ("data:/", "root '/'"),
            ("data:/a/../etc", "'..'"),
            ("data:/.firebuild/x", "guest init"),
            ("data:/d:rx", "use ro or rw"),
        ] {
            let err = parse(spec).unwrap_err();
            assert!(err.contains(says), "{spec}: {err}");
            assert!(!err.contains('\n'), "{spec}: one line");
        }
    }

    fn ext4(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        crate::disks::make_ext4(&p, 16 << 20, name).unwrap();
        p
    }

    fn mount(path: &Path, guest: &str, read_only: bool) -> VolumeMount {
        VolumeMount {
            volume: None,
            path: path.into(),
            guest_path: guest.into(),
            read_only,
        }
    }

    #[test]
    fn mounts_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (ext4(tmp.path(), "a"), ext4(tmp.path(), "b"));
        let image = ext4(tmp.path(), "image");
        let text = tmp.path().join("text");
        std::fs::write(&text, "not a disk").unwrap();
        check_mounts(&[mount(&a, "/a", false), mount(&b, "/b", true)], &image).unwrap();
        for (mounts, says) in [
            (vec![mount(&text, "/t", false)], "not an ext4 image"),
            (vec![mount(tmp.path(), "/t", false)], "not a regular file"),
            (vec![mount(&image, "/i", true)], "own root image"),
            (
                vec![mount(&a, "/x", false), mount(&b, "/x", false)],
                "mounted twice",
            ),
            (
                vec![mount(&a, "/x", true), mount(&a, "/y", true)],
                "also given as",
            ),
        ] {
            let err = check_mounts(&mounts, &image).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
            assert!(err.starts_with("--volume "), "{err}");
        }
    }

    #[test]
    fn one_writer_and_no_readers_while_written() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (ext4(tmp.path(), "a"), ext4(tmp.path(), "b"));
        let rw = mount(&a, "/a", false);
        let ro = mount(&a, "/a", true);
        assert!(rw.conflict_with(&rw, "web").unwrap().contains("one writer"));
        assert!(rw
            .conflict_with(&ro, "web")
            .unwrap()
            .contains("read-only to VM web"));
        assert!(ro
            .conflict_with(&rw, "web")
            .unwrap()
            .contains("read-write to VM web"));
        assert_eq!(ro.conflict_with(&ro, "web"), None, "readers share");
        assert_eq!(rw.conflict_with(&mount(&b, "/a", false), "web"), None);
    }

    #[test]
    fn named_volumes_resolve_through_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = VolumeStore::new(tmp.path().join("volumes"));
        let v = store
            .create("data", 16 << 20, crate::volume_store::VolumeFs::Ext4)
            .unwrap();
        let m = resolve(&parse("data:/d:ro").unwrap(), &store).unwrap();
        assert_eq!((m.volume.as_deref(), &m.path), (Some("data"), &v.path));
        let err = resolve(&parse("missing:/d").unwrap(), &store).unwrap_err();
        let err = err.to_string();
        assert!(
            err.starts_with("--volume missing:/d: no volume \"missing\""),
            "{err}"
        );
        let err = resolve(&parse("/no/such.img:/d").unwrap(), &store).unwrap_err();
        assert!(err.to_string().contains("/no/such.img"), "{err}");
    }
}
