//! The kernel store. Layout, as in the original firebuild's kernel storage
//! root: `<root>/<id>` is the vmlinux itself, so `run --vmlinux-id ID` finds
//! it by name; `<root>/<id>.json` beside it holds [`KernelMetadata`]. Names
//! starting with `.` are ours (temporary files, `.logs/`, build directories)
//! and never listed. Kernels dropped in by hand, without metadata, are
//! listed too.
//!
//! Files are published atomically: written to a temporary file in the root,
//! flushed, then renamed into place (without replacing, unless asked).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::build::{self, BuildOptions, BuiltKernel, Progress};
use crate::error::{Error, Result};
use crate::identify;

/// How a kernel came into the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelOrigin {
    /// `firebuild kernel build`.
    Built,
    /// `firebuild kernel add`.
    Added,
}

/// The `<id>.json` file beside a kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KernelMetadata {
    /// The kernel ID (its file name in the store).
    pub id: String,
    /// Kernel release, e.g. `6.1.192`, when known.
    pub version: Option<String>,
    /// Always `x86_64` for now.
    pub arch: String,
    /// Size of the vmlinux in bytes.
    pub size: u64,
    /// SHA-256 of the vmlinux (hex).
    pub sha256: String,
    /// Built here or added.
    pub origin: KernelOrigin,
    /// The source tarball/tree it was built from, or the file it was added from.
    pub source: String,
    /// Digest of the config fragment it was built with (built kernels only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// Build wall time in seconds (built kernels only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_seconds: Option<f64>,
    /// When it entered the store.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

/// A row of `kernel ls`: cheap to compute (no hashing).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KernelEntry {
    /// The kernel ID.
    pub id: String,
    /// The vmlinux path.
    pub path: PathBuf,
    /// Kernel release from the metadata; `None` without metadata.
    pub version: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// From the metadata, else the file's modification time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Built or added; `None` for a file placed by hand.
    pub origin: Option<KernelOrigin>,
}

/// `kernel inspect`: the entry, its metadata, and a fresh look at the file.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KernelInfo {
    /// Summary, as in `kernel ls`.
    #[serde(flatten)]
    pub entry: KernelEntry,
    /// The metadata file's path.
    pub metadata_path: PathBuf,
    /// The stored metadata, if any.
    pub metadata: Option<KernelMetadata>,
    /// What the file is now (`an x86_64 ELF vmlinux`, ...).
    pub file_kind: String,
    /// SHA-256 of the file now.
    pub sha256: String,
    /// Whether the file still matches the metadata's digest (`None` without metadata).
    pub intact: Option<bool>,
}

/// A kernel store rooted at a directory (created on first write).
#[derive(Clone, Debug)]
pub struct KernelStore {
    root: PathBuf,
}

impl KernelStore {
    /// A store at `root` (the profile's kernel storage root).
    pub fn new(root: impl Into<PathBuf>) -> KernelStore {
        KernelStore { root: root.into() }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the kernel `id` lives (whether or not it exists).
    pub fn kernel_path(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.root.join(id))
    }

    /// The kernel `id`'s vmlinux path, failing if it is not stored: what
    /// `run --vmlinux-id` boots.
    pub fn resolve(&self, id: &str) -> Result<PathBuf> {
        let path = self.kernel_path(id)?;
        if path.is_file() {
            Ok(path)
        } else {
            Err(self.not_found(id))
        }
    }

    /// Where the kernel `id`'s metadata lives.
    pub fn metadata_path(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.root.join(format!("{id}.json")))
    }

    /// Where builds of `id` write their log (kept after the build).
    pub fn build_log_path(&self, id: &str) -> Result<PathBuf> {
        validate_id(id)?;
        Ok(self.root.join(".logs").join(format!("{id}.log")))
    }

    /// Fails if `id` is invalid or taken; check before a long build.
    pub fn ensure_free(&self, id: &str) -> Result<()> {
        let path = self.kernel_path(id)?;
        if fs::symlink_metadata(&path).is_ok() {
            return Err(Error::AlreadyExists {
                id: id.into(),
                path,
            });
        }
        Ok(())
    }

    /// Build options for building `id` from `source`: the log goes to
    /// [`Self::build_log_path`], the build directory into the store's root
    /// (same filesystem, and often more room than `/tmp`).
    pub fn build_options(&self, id: &str, source: impl Into<PathBuf>) -> Result<BuildOptions> {
        let mut opts = BuildOptions::new(source, self.build_log_path(id)?);
        opts.work_dir = self.root.clone();
        Ok(opts)
    }

    /// `kernel build`: checks the ID is free (unless `replace`), builds,
    /// and publishes.
    pub fn build(
        &self,
        id: &str,
        opts: &BuildOptions,
        replace: bool,
        progress: &mut dyn FnMut(&Progress),
    ) -> Result<KernelInfo> {
        if !replace {
            self.ensure_free(id)?;
        }
        let built = build::build_kernel(opts, progress)?;
        self.publish_built(&built, id, replace)
    }

    /// Publishes a built kernel under `id`.
    pub fn publish_built(
        &self,
        built: &BuiltKernel,
        id: &str,
        replace: bool,
    ) -> Result<KernelInfo> {
        identify::require_vmlinux(&built.vmlinux)?;
        self.publish(id, &built.vmlinux, replace, |size, sha256| KernelMetadata {
            id: id.into(),
            version: Some(built.release.clone()),
            arch: "x86_64".into(),
            size,
            sha256,
            origin: KernelOrigin::Built,
            source: built.source.display().to_string(),
            config_digest: Some(built.config_digest.clone()),
            build_seconds: Some(built.elapsed.as_secs_f64()),
            created_at: OffsetDateTime::now_utc(),
        })
    }

    /// `kernel add --file PATH --id ID`: copies an existing x86_64 ELF
    /// vmlinux into the store, reading its release from the banner.
    pub fn add_file(&self, file: &Path, id: &str, replace: bool) -> Result<KernelInfo> {
        let source = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        self.add_checked(file, id, replace, source.display().to_string(), None)
    }

    /// `kernel pull`: as [`KernelStore::add_file`] for a file that came from
    /// `source` (a registry reference) built with `config_digest`.
    pub fn add_pulled(
        &self,
        file: &Path,
        id: &str,
        source: &str,
        config_digest: Option<String>,
    ) -> Result<KernelInfo> {
        self.add_checked(file, id, false, source.to_owned(), config_digest)
    }

    fn add_checked(
        &self,
        file: &Path,
        id: &str,
        replace: bool,
        source: String,
        config_digest: Option<String>,
    ) -> Result<KernelInfo> {
        validate_id(id)?;
        identify::require_vmlinux(file)?;
        if !replace {
            self.ensure_free(id)?;
        }
        let version = identify::vmlinux_release(file)?;
        match identify::overlayfs_built_in(file)? {
            Some(true) => {}
            Some(false) => tracing::warn!(
                kernel = %file.display(),
                "this kernel has no built-in overlayfs (CONFIG_OVERLAY_FS=y): VMs on it need `run --rootfs-mode copy`"
            ),
            None => tracing::warn!(
                kernel = %file.display(),
                "this kernel carries no configuration (CONFIG_IKCONFIG): make sure it has CONFIG_OVERLAY_FS=y, or run its VMs with --rootfs-mode copy"
            ),
        }
        self.publish(id, file, replace, |size, sha256| KernelMetadata {
            id: id.into(),
            version,
            arch: "x86_64".into(),
            size,
            sha256,
            origin: KernelOrigin::Added,
            source,
            config_digest,
            build_seconds: None,
            created_at: OffsetDateTime::now_utc(),
        })
    }

    /// `kernel ls`: every stored kernel, sorted by ID.
    pub fn list(&self) -> Result<Vec<KernelEntry>> {
        let dir = match fs::read_dir(&self.root) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list kernel store", &self.root, e)),
        };
        let mut entries = Vec::new();
        for item in dir {
            let item = item.map_err(|e| Error::io("list kernel store", &self.root, e))?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if validate_id(&name).is_err() || !item.path().is_file() {
                continue;
            }
            entries.push(self.entry(&name)?.0);
        }
        entries.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(entries)
    }

    /// `kernel inspect ID`: the entry, its metadata, and the file re-checked.
    pub fn inspect(&self, id: &str) -> Result<KernelInfo> {
        let (entry, metadata) = self.entry(id)?;
        let sha256 = hash_file(&entry.path)?;
        let intact = metadata
            .as_ref()
            .map(|m| m.sha256 == sha256 && m.size == entry.size);
        Ok(KernelInfo {
            metadata_path: self.metadata_path(id)?,
            file_kind: identify::identify(&entry.path)?.to_string(),
            entry,
            metadata,
            sha256,
            intact,
        })
    }

    /// `kernel rm ID`: removes the kernel and its metadata.
    pub fn remove(&self, id: &str) -> Result<()> {
        let kernel = self.kernel_path(id)?;
        let meta = self.metadata_path(id)?;
        let mut removed = false;
        for path in [&kernel, &meta] {
            match fs::remove_file(path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", path, e)),
            }
        }
        if removed {
            tracing::info!(id, root = %self.root.display(), "removed kernel");
            Ok(())
        } else {
            Err(self.not_found(id))
        }
    }

    fn not_found(&self, id: &str) -> Error {
        Error::NotFound {
            id: id.into(),
            root: self.root.clone(),
        }
    }

    fn entry(&self, id: &str) -> Result<(KernelEntry, Option<KernelMetadata>)> {
        let path = self.kernel_path(id)?;
        let stat = fs::metadata(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.not_found(id),
            _ => Error::io("read", &path, e),
        })?;
        let metadata = self.read_metadata(id)?;
        let created_at = match &metadata {
            Some(m) => m.created_at,
            None => stat
                .modified()
                .map(OffsetDateTime::from)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        };
        let entry = KernelEntry {
            id: id.into(),
            path,
            version: metadata.as_ref().and_then(|m| m.version.clone()),
            size: stat.len(),
            created_at,
            origin: metadata.as_ref().map(|m| m.origin),
        };
        Ok((entry, metadata))
    }

    fn read_metadata(&self, id: &str) -> Result<Option<KernelMetadata>> {
        let path = self.metadata_path(id)?;
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| Error::BadMetadata { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path, e)),
        }
    }

    /// Copies `file` in as `id` (hashing on the way), then writes metadata.
    /// The kernel goes first: a crash in between leaves a kernel that lists
    /// without metadata, never metadata for a missing kernel.
    fn publish(
        &self,
        id: &str,
        file: &Path,
        replace: bool,
        metadata: impl FnOnce(u64, String) -> KernelMetadata,
    ) -> Result<KernelInfo> {
        let dest = self.kernel_path(id)?;
        fs::create_dir_all(&self.root)
            .map_err(|e| Error::io("create kernel store", &self.root, e))?;
        let mut tmp = self.temp_file(id)?;
        let mut src = File::open(file).map_err(|e| Error::io("open", file, e))?;
        let (size, sha256) = copy_hashing(&mut src, tmp.as_file_mut())
            .map_err(|e| Error::io("copy kernel into", &dest, e))?;
        persist(tmp, &dest, replace, id)?;

        let meta = metadata(size, sha256);
        let meta_path = self.metadata_path(id)?;
        let mut json = serde_json::to_vec_pretty(&meta).map_err(|source| Error::BadMetadata {
            path: meta_path.clone(),
            source,
        })?;
        json.push(b'\n');
        let mut tmp = self.temp_file(id)?;
        tmp.write_all(&json)
            .map_err(|e| Error::io("write", &meta_path, e))?;
        persist(tmp, &meta_path, true, id)?;
        tracing::info!(id, path = %dest.display(), "stored kernel");
        self.inspect(id)
    }

    fn temp_file(&self, id: &str) -> Result<tempfile::NamedTempFile> {
        tempfile::Builder::new()
            .prefix(&format!(".tmp-{id}-"))
            .tempfile_in(&self.root)
            .map_err(|e| Error::io("create a temporary file in", &self.root, e))
    }
}

/// Flushes to disk, makes the file world-readable (a jailer may read it as
/// another user), and renames it into place.
fn persist(tmp: tempfile::NamedTempFile, dest: &Path, replace: bool, id: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("write", dest, e))?;
    let result = if replace {
        tmp.persist(dest).map(drop)
    } else {
        tmp.persist_noclobber(dest).map(drop)
    };
    result.map_err(|e| match e.error.kind() {
        io::ErrorKind::AlreadyExists => Error::AlreadyExists {
            id: id.into(),
            path: dest.to_path_buf(),
        },
        _ => Error::io("move into place", dest, e.error),
    })
}

fn copy_hashing(src: &mut File, dst: &mut File) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        dst.write_all(&buf[..n])?;
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// SHA-256 (hex) of a file.
pub(crate) fn hash_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut hasher = Sha256::new();
    io::copy(&mut file, &mut hasher).map_err(|e| Error::io("read", path, e))?;
    Ok(hex::encode(hasher.finalize()))
}

/// IDs are file names in the store: letters, digits, `.`, `_`, `-`, `+`;
/// not starting with `.` or `-` (ours / option-like), not ending in `.json`
/// (metadata files).
pub fn validate_id(id: &str) -> Result<()> {
    let reason = if id.is_empty() {
        Some("it is empty")
    } else if id.len() > 200 {
        Some("it is longer than 200 characters")
    } else if id.starts_with('.') || id.starts_with('-') {
        Some("it must not start with '.' or '-'")
    } else if id.ends_with(".json") {
        Some("it must not end in .json (the store's metadata files do)")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
    {
        Some("use only letters, digits, '.', '_', '-' and '+'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidId {
            id: id.into(),
            reason,
        }),
        None => Ok(()),
    }
}

/// `kernel ls` as a table: ID, VERSION, SIZE, CREATED.
pub fn format_table(entries: &[KernelEntry]) -> String {
    let rows: Vec<[String; 4]> = entries
        .iter()
        .map(|e| {
            [
                e.id.clone(),
                e.version.clone().unwrap_or_else(|| "-".into()),
                human_size(e.size),
                format_date(e.created_at),
            ]
        })
        .collect();
    let header = ["ID", "VERSION", "SIZE", "CREATED"].map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let line = format!(
            "{:w0$}  {:w1$}  {:>w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn format_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identify::tests::{elf_header, fake_vmlinux};

    fn store() -> (tempfile::TempDir, KernelStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = KernelStore::new(dir.path().join("kernels"));
        (dir, store)
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn add_stores_the_vmlinux_under_its_id_with_metadata_beside_it() {
        let (dir, store) = store();
        let file = write(dir.path(), "vmlinux", &fake_vmlinux("6.1.192"));
        let info = store.add_file(&file, "vmlinux-6.1", false).unwrap();
        let root = store.root();
        assert_eq!(info.entry.path, root.join("vmlinux-6.1"));
        assert_eq!(
            fs::read(root.join("vmlinux-6.1")).unwrap(),
            fs::read(&file).unwrap()
        );
        let meta: KernelMetadata =
            serde_json::from_slice(&fs::read(root.join("vmlinux-6.1.json")).unwrap()).unwrap();
        assert_eq!(meta.version.as_deref(), Some("6.1.192"));
        assert_eq!(meta.origin, KernelOrigin::Added);
        assert_eq!(meta.size, fs::metadata(&file).unwrap().len());
        assert_eq!(info.intact, Some(true));
        assert_eq!(
            store.resolve("vmlinux-6.1").unwrap(),
            root.join("vmlinux-6.1")
        );
        // Nothing else is left in the root (no temp files).
        let mut names: Vec<_> = fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["vmlinux-6.1", "vmlinux-6.1.json"]);
    }

    #[test]
    fn add_refuses_taken_ids_unless_replacing() {
        let (dir, store) = store();
        let a = write(dir.path(), "a", &fake_vmlinux("6.1.1"));
        let b = write(dir.path(), "b", &fake_vmlinux("6.1.2"));
        store.add_file(&a, "k", false).unwrap();
        let err = store.add_file(&b, "k", false).unwrap_err().to_string();
        assert!(
            err.contains("already exists") && err.contains("firebuild kernel rm k"),
            "{err}"
        );
        let info = store.add_file(&b, "k", true).unwrap();
        assert_eq!(info.entry.version.as_deref(), Some("6.1.2"));
    }

    #[test]
    fn add_rejects_files_that_are_not_vmlinux() {
        let (dir, store) = store();
        let module = write(dir.path(), "virtio.ko", &elf_header(2, true, 1, 62));
        let err = store.add_file(&module, "k", false).unwrap_err().to_string();
        assert!(err.contains("relocatable object"), "{err}");
        let arm = write(dir.path(), "Image", &elf_header(2, true, 2, 183));
        let err = store.add_file(&arm, "k", false).unwrap_err().to_string();
        assert!(err.contains("aarch64"), "{err}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn ids_are_checked() {
        let (_dir, store) = store();
        for bad in [
            "",
            ".hidden",
            "-x",
            "a/b",
            "../x",
            "k.json",
            "sp ace",
            &"x".repeat(201),
        ] {
            let err = store.kernel_path(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidId { .. }), "{bad}: {err}");
        }
        for good in ["vmlinux-6.1", "vmlinux_5.10.7+fc", "K1"] {
            store.kernel_path(good).unwrap();
        }
    }

    #[test]
    fn ls_lists_kernels_with_and_without_metadata_and_skips_our_files() {
        let (dir, store) = store();
        assert!(
            store.list().unwrap().is_empty(),
            "a missing root lists as empty"
        );
        let file = write(dir.path(), "v", &fake_vmlinux("6.1.192"));
        store.add_file(&file, "b-kernel", false).unwrap();
        let root = store.root().to_path_buf();
        write(&root, "a-by-hand", &fake_vmlinux("5.10.1"));
        write(&root, ".tmp-x-123", b"partial");
        fs::create_dir_all(root.join(".logs")).unwrap();
        let entries = store.list().unwrap();
        let ids: Vec<_> = entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a-by-hand", "b-kernel"]);
        assert_eq!(entries[0].version, None);
        assert_eq!(entries[0].origin, None);
        assert_eq!(entries[1].version.as_deref(), Some("6.1.192"));

        let table = format_table(&entries);
        let lines: Vec<_> = table.lines().collect();
        assert!(
            lines[0].starts_with("ID")
                && lines[0].contains("VERSION")
                && lines[0].contains("CREATED")
        );
        assert!(
            lines[2].starts_with("b-kernel")
                && lines[2].contains("6.1.192")
                && lines[2].contains(" B "),
            "{table}"
        );

        let json = serde_json::to_value(&entries).unwrap();
        assert_eq!(json[1]["id"], "b-kernel");
        assert_eq!(json[1]["version"], "6.1.192");
        assert!(json[1]["created-at"].as_str().unwrap().contains('T'));
    }

    #[test]
    fn inspect_rechecks_the_file() {
        let (dir, store) = store();
        let file = write(dir.path(), "v", &fake_vmlinux("6.1.192"));
        store.add_file(&file, "k", false).unwrap();
        let info = store.inspect("k").unwrap();
        assert_eq!(info.file_kind, "an x86_64 ELF vmlinux");
        assert_eq!(info.intact, Some(true));
        // Tamper with the stored file.
        let mut bytes = fake_vmlinux("6.1.192");
        bytes.push(0);
        fs::write(store.root().join("k"), bytes).unwrap();
        assert_eq!(store.inspect("k").unwrap().intact, Some(false));
        let json = serde_json::to_value(store.inspect("k").unwrap()).unwrap();
        assert_eq!(json["metadata"]["origin"], "added");
        assert_eq!(json["id"], "k");

        let err = store.inspect("nope").unwrap_err().to_string();
        assert!(
            err.contains("no kernel with ID \"nope\"") && err.contains("kernel ls"),
            "{err}"
        );
    }

    #[test]
    fn bad_metadata_is_reported_with_its_path() {
        let (dir, store) = store();
        let file = write(dir.path(), "v", &fake_vmlinux("6.1.192"));
        store.add_file(&file, "k", false).unwrap();
        fs::write(store.root().join("k.json"), "{not json").unwrap();
        let err = store.list().unwrap_err().to_string();
        assert!(err.contains("k.json") && err.contains("not valid"), "{err}");
        // rm still cleans it up.
        store.remove("k").unwrap();
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn rm_removes_both_files_and_reports_unknown_ids() {
        let (dir, store) = store();
        let file = write(dir.path(), "v", &fake_vmlinux("6.1.192"));
        store.add_file(&file, "k", false).unwrap();
        store.remove("k").unwrap();
        assert!(!store.root().join("k").exists() && !store.root().join("k.json").exists());
        let err = store.remove("k").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(matches!(
            store.resolve("k").unwrap_err(),
            Error::NotFound { .. }
        ));
    }

    #[test]
    fn build_publishes_into_the_store_and_checks_the_id_first() {
        let (dir, store) = store();
        let tree = dir.path().join("linux");
        crate::build::tests::fake_kernel_tree(
            &tree,
            "NO-SUCH-LINE",
            &fake_vmlinux("6.1.192"),
            false,
        );
        let opts = store.build_options("vmlinux-6.1", &tree).unwrap();
        assert_eq!(opts.log, store.root().join(".logs/vmlinux-6.1.log"));
        let mut lines = 0;
        let info = store
            .build("vmlinux-6.1", &opts, false, &mut |p| {
                lines += usize::from(p.compiled.is_none())
            })
            .unwrap();
        assert_eq!(lines, 6);
        let meta = info.metadata.unwrap();
        assert_eq!(meta.origin, KernelOrigin::Built);
        assert_eq!(meta.version.as_deref(), Some("6.1.192-fake"));
        assert_eq!(
            meta.config_digest,
            Some(crate::config::Fragment::project().unwrap().digest())
        );
        assert!(meta.build_seconds.is_some());
        // Only the kernel, its metadata and the log directory remain.
        let mut names: Vec<_> = fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, [".logs", "vmlinux-6.1", "vmlinux-6.1.json"]);

        // A second build with the same ID fails before building.
        let mut lines = 0;
        let err = store
            .build("vmlinux-6.1", &opts, false, &mut |p| {
                lines += usize::from(p.compiled.is_none())
            })
            .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(lines, 0);
    }

    #[test]
    fn sizes_and_dates_format_for_humans() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(25 * 1024 * 1024 + 300 * 1024), "25.3 MiB");
        assert_eq!(
            format_date(OffsetDateTime::UNIX_EPOCH),
            "1970-01-01 00:00 UTC"
        );
    }
}
