//! Profiles: named settings stored as JSON files in the profile conf dir.
//!
//! The JSON keys of the original firebuild are kept (including its
//! `storage-profile-config-strings`), so its profiles load unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::settings_args::{AccelPolicy, Isolation, SettingsArgs, VmmChoice};

/// The only storage provider.
pub const DIRECTORY_PROVIDER: &str = "directory";
pub const ROOTFS_STORAGE_ROOT: &str = "rootfs-storage-root";
pub const KERNEL_STORAGE_ROOT: &str = "kernel-storage-root";
pub const VOLUME_STORAGE_ROOT: &str = "volume-storage-root";
pub const SNAPSHOT_STORAGE_ROOT: &str = "snapshot-storage-root";
const KNOWN_PROPERTIES: [&str; 4] = [
    ROOTFS_STORAGE_ROOT,
    KERNEL_STORAGE_ROOT,
    VOLUME_STORAGE_ROOT,
    SNAPSHOT_STORAGE_ROOT,
];

/// Longest VM id the runtime accepts; the jail socket path budget uses it.
pub const MAX_VM_ID_LEN: usize = 32;
/// `sun_path` holds 108 bytes including the terminating NUL.
const UNIX_SOCKET_PATH_MAX: usize = 107;

/// Where profiles live unless `--profile-conf-dir` says otherwise.
pub const DEFAULT_PROFILE_CONF_DIR: &str = "/etc/firebuild/profiles";

/// A profile as stored on disk. Every field is optional: unset fields fall
/// back to the embedded defaults (see [`crate::settings::Settings`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Profile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_firecracker: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_jailer: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binary_qemu: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chroot_base: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_cache: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_provider: Option<String>,
    #[serde(
        default,
        rename = "storage-profile-config-strings",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub storage_provider_properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmm: Option<VmmChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_accel: Option<AccelPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpacked_size_limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<Isolation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_vmlinux_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jailer_uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jailer_gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jailer_id_range: Option<(u32, u32)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_id_range: Option<(u32, u32)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub insecure_registries: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_conf_dir: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cni_bin_dirs: Vec<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_cache_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("invalid profile name {0:?}: use letters, digits, '.', '_' and '-' only")]
    BadName(String),
    #[error("profile {name:?} does not exist in {dir}: create it with `firebuild profile-create --profile {name} ...`, or list profiles with `firebuild profile-ls`")]
    NotFound { name: String, dir: PathBuf },
    #[error("profile file {path} is not valid ({source}); fix or remove it")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("--{flag} {path}: {problem}")]
    BadPath {
        flag: &'static str,
        path: PathBuf,
        problem: &'static str,
    },
    #[error("--chroot-base {path} is too long ({len} bytes): the Firecracker API socket inside the jail, {example}, must fit in the {max}-byte Unix socket path limit; use a chroot base of at most {allowed} bytes")]
    ChrootBaseTooLong {
        path: PathBuf,
        len: usize,
        example: String,
        max: usize,
        allowed: usize,
    },
    #[error("unknown storage provider {0:?}: the only provider is `directory`")]
    UnknownProvider(String),
    #[error("unknown storage provider property {0:?}: the directory provider takes rootfs-storage-root, kernel-storage-root, volume-storage-root and snapshot-storage-root")]
    UnknownProperty(String),
    #[error("--registry-mirror {registry}={url}: the mirror must be an http:// or https:// URL")]
    BadMirror { registry: String, url: String },
}

/// Profiles in one conf dir.
pub struct ProfileDir {
    dir: PathBuf,
}

impl ProfileDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ProfileDir { dir: dir.into() }
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, ProfileError> {
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !valid {
            return Err(ProfileError::BadName(name.to_owned()));
        }
        Ok(self.dir.join(format!("{name}.json")))
    }

    pub fn load(&self, name: &str) -> Result<Profile, ProfileError> {
        self.try_load(name)?.ok_or_else(|| ProfileError::NotFound {
            name: name.to_owned(),
            dir: self.dir.clone(),
        })
    }

    fn try_load(&self, name: &str) -> Result<Option<Profile>, ProfileError> {
        let path = self.path_of(name)?;
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(ProfileError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ProfileError::Corrupt { path, source })
    }

    /// Creates the profile, or updates it with the given settings when it
    /// exists; validates the result before writing anything.
    pub fn create_or_update(
        &self,
        name: &str,
        args: &SettingsArgs,
    ) -> Result<Profile, ProfileError> {
        let mut profile = self.try_load(name)?.unwrap_or_default();
        profile.apply(args);
        profile.validate()?;
        self.save(name, &profile)?;
        Ok(profile)
    }

    fn save(&self, name: &str, profile: &Profile) -> Result<(), ProfileError> {
        let path = self.path_of(name)?;
        let io_err = |action, path: &Path| {
            let path = path.to_owned();
            move |source| ProfileError::Io {
                action,
                path,
                source,
            }
        };
        fs::create_dir_all(&self.dir).map_err(io_err("creating", &self.dir))?;
        let tmp = self
            .dir
            .join(format!(".{name}.json.{}", std::process::id()));
        let mut json =
            serde_json::to_vec_pretty(profile).map_err(|source| ProfileError::Corrupt {
                path: path.clone(),
                source,
            })?;
        json.push(b'\n');
        fs::write(&tmp, json).map_err(io_err("writing", &tmp))?;
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("writing", &path)(e)
        })
    }

    /// Profile names, sorted.
    pub fn names(&self) -> Result<Vec<String>, ProfileError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ProfileError::Io {
                    action: "reading",
                    path: self.dir.clone(),
                    source,
                })
            }
        };
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.strip_suffix(".json").map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }
}

impl Profile {
    /// The jailer names each jail's directory after the Firecracker
    /// executable's real file name (a symlink is resolved first).
    fn jail_dir_name(&self) -> String {
        self.binary_firecracker
            .as_deref()
            .and_then(|path| fs::canonicalize(path).ok())
            .and_then(|path| path.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "firecracker".to_owned())
    }

    /// Overlays the settings given on the command line.
    pub fn apply(&mut self, args: &SettingsArgs) {
        fn set<T: Clone>(field: &mut Option<T>, value: &Option<T>) {
            if value.is_some() {
                field.clone_from(value);
            }
        }
        set(&mut self.binary_firecracker, &args.binary_firecracker);
        set(&mut self.binary_jailer, &args.binary_jailer);
        set(&mut self.binary_qemu, &args.binary_qemu);
        set(&mut self.chroot_base, &args.chroot_base);
        set(&mut self.run_cache, &args.run_cache);
        set(&mut self.cache_dir, &args.cache_dir);
        set(&mut self.storage_provider, &args.storage_provider);
        set(&mut self.vmm, &args.vmm);
        set(&mut self.isolation, &args.isolation);
        set(&mut self.default_vmlinux_id, &args.default_vmlinux_id);
        set(&mut self.qemu_accel, &args.qemu_accel);
        set(&mut self.unpacked_size_limit, &args.unpacked_size_limit);
        set(&mut self.jailer_uid, &args.jailer_uid);
        set(&mut self.jailer_gid, &args.jailer_gid);
        set(&mut self.jailer_id_range, &args.jailer_id_range);
        set(&mut self.qemu_id_range, &args.qemu_id_range);
        set(&mut self.cni_conf_dir, &args.cni_conf_dir);
        set(&mut self.cni_cache_dir, &args.cni_cache_dir);
        for (k, v) in &args.storage_provider_property_string {
            self.storage_provider_properties
                .insert(k.clone(), v.clone());
        }
        for registry in &args.insecure_registry {
            if !self.insecure_registries.contains(registry) {
                self.insecure_registries.push(registry.clone());
            }
        }
        // Mirrors given on the command line replace the profile's list for
        // that registry, in the order given.
        let mut given: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (registry, url) in &args.registry_mirror {
            given.entry(registry.clone()).or_default().push(url.clone());
        }
        self.registry_mirrors.extend(given);
        if !args.cni_bin_dir.is_empty() {
            self.cni_bin_dirs.clone_from(&args.cni_bin_dir);
        }
    }

    /// Checks every value a user can get wrong, with an error that names the
    /// flag, the value and the fix. Directories must exist (as in the
    /// original's `profile-create`).
    pub fn validate(&self) -> Result<(), ProfileError> {
        self.validate_with(Dirs::MustExist)
    }

    /// As [`Profile::validate`], for a command about to use the settings:
    /// state directories that do not exist yet are fine, the command
    /// creates the ones it uses.
    pub fn validate_for_use(&self) -> Result<(), ProfileError> {
        self.validate_with(Dirs::MayBeCreated)
    }

    fn validate_with(&self, dirs: Dirs) -> Result<(), ProfileError> {
        for (flag, path) in [
            ("binary-firecracker", &self.binary_firecracker),
            ("binary-jailer", &self.binary_jailer),
            ("binary-qemu", &self.binary_qemu),
        ] {
            if let Some(path) = path {
                check_executable(flag, path)?;
            }
        }
        for (flag, path) in [
            ("run-cache", &self.run_cache),
            ("cache-dir", &self.cache_dir),
            ("cni-conf-dir", &self.cni_conf_dir),
            ("cni-cache-dir", &self.cni_cache_dir),
        ] {
            if let Some(path) = path {
                check_dir(flag, path, dirs)?;
            }
        }
        for path in &self.cni_bin_dirs {
            check_dir("cni-bin-dir", path, dirs)?;
        }
        if let Some(base) = &self.chroot_base {
            check_chroot_base(base, &self.jail_dir_name(), dirs)?;
        }
        if let Some(provider) = &self.storage_provider {
            if provider != DIRECTORY_PROVIDER {
                return Err(ProfileError::UnknownProvider(provider.clone()));
            }
        }
        for (key, value) in &self.storage_provider_properties {
            if !KNOWN_PROPERTIES.contains(&key.as_str()) {
                return Err(ProfileError::UnknownProperty(key.clone()));
            }
            let flag = match key.as_str() {
                ROOTFS_STORAGE_ROOT => "storage-provider-property-string rootfs-storage-root",
                KERNEL_STORAGE_ROOT => "storage-provider-property-string kernel-storage-root",
                SNAPSHOT_STORAGE_ROOT => "storage-provider-property-string snapshot-storage-root",
                _ => "storage-provider-property-string volume-storage-root",
            };
            check_dir(flag, Path::new(value), dirs)?;
        }
        for (registry, urls) in &self.registry_mirrors {
            for url in urls {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(ProfileError::BadMirror {
                        registry: registry.clone(),
                        url: url.clone(),
                    });
                }
            }
        }
        Ok(())
    }
}

fn check_executable(flag: &'static str, path: &Path) -> Result<(), ProfileError> {
    let bad = |problem| ProfileError::BadPath {
        flag,
        path: path.to_owned(),
        problem,
    };
    let meta =
        fs::metadata(path).map_err(|_| bad("does not exist; give the full path of the binary"))?;
    if !meta.is_file() {
        return Err(bad(
            "is not a regular file; give the full path of the binary",
        ));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(bad("is not executable; chmod +x it or pick another binary"));
    }
    Ok(())
}

/// Whether a directory setting must already exist.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dirs {
    MustExist,
    MayBeCreated,
}

fn check_dir(flag: &'static str, path: &Path, dirs: Dirs) -> Result<(), ProfileError> {
    let bad = |problem| ProfileError::BadPath {
        flag,
        path: path.to_owned(),
        problem,
    };
    if !path.is_absolute() {
        return Err(bad("must be an absolute path"));
    }
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(bad("is not a directory")),
        Err(_) if dirs == Dirs::MayBeCreated => Ok(()),
        Err(_) => Err(bad("does not exist; create it first (mkdir -p)")),
    }
}

/// The jail's API socket is `<base>/<exec-name>/<vm-id>/root/run/firecracker.socket`.
fn check_chroot_base(base: &Path, exec_name: &str, dirs: Dirs) -> Result<(), ProfileError> {
    check_dir("chroot-base", base, dirs)?;
    if base == Path::new("/") {
        return Err(ProfileError::BadPath {
            flag: "chroot-base",
            path: base.to_owned(),
            problem: "can't be /; use a dedicated directory such as /srv/jailer",
        });
    }
    let example = jail_socket_path(base, exec_name, &"x".repeat(MAX_VM_ID_LEN));
    let len = base.as_os_str().len();
    let fixed = example.len() - len;
    if example.len() > UNIX_SOCKET_PATH_MAX {
        return Err(ProfileError::ChrootBaseTooLong {
            path: base.to_owned(),
            len,
            example,
            max: UNIX_SOCKET_PATH_MAX + 1,
            allowed: UNIX_SOCKET_PATH_MAX.saturating_sub(fixed),
        });
    }
    Ok(())
}

fn jail_socket_path(base: &Path, exec_name: &str, vm_id: &str) -> String {
    format!(
        "{}/{exec_name}/{vm_id}/root/run/firecracker.socket",
        base.display().to_string().trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn exe(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn create_update_list_inspect_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = ProfileDir::new(tmp.path().join("profiles"));
        let fc = exe(tmp.path(), "firecracker", 0o755);
        let jail = tmp.path().join("jail");
        fs::create_dir(&jail).unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();

        let args = SettingsArgs {
            binary_firecracker: Some(fc.clone()),
            chroot_base: Some(jail.clone()),
            storage_provider: Some("directory".into()),
            storage_provider_property_string: vec![(
                ROOTFS_STORAGE_ROOT.into(),
                rootfs.display().to_string(),
            )],
            ..Default::default()
        };
        conf.create_or_update("standard", &args).unwrap();
        let stored = conf.load("standard").unwrap();
        assert_eq!(stored.binary_firecracker.as_deref(), Some(fc.as_path()));
        assert_eq!(
            stored.storage_provider_properties[ROOTFS_STORAGE_ROOT],
            rootfs.display().to_string()
        );

        // The original's key name is on disk.
        let raw = fs::read_to_string(tmp.path().join("profiles/standard.json")).unwrap();
        assert!(raw.contains("\"storage-profile-config-strings\""), "{raw}");
        assert!(raw.contains("\"binary-firecracker\""), "{raw}");

        // Updating keeps what was not given again.
        let update = SettingsArgs {
            vmm: Some(VmmChoice::Qemu),
            ..Default::default()
        };
        conf.create_or_update("standard", &update).unwrap();
        let stored = conf.load("standard").unwrap();
        assert_eq!(stored.vmm, Some(VmmChoice::Qemu));
        assert_eq!(stored.binary_firecracker.as_deref(), Some(fc.as_path()));

        conf.create_or_update("other", &SettingsArgs::default())
            .unwrap();
        assert_eq!(conf.names().unwrap(), ["other", "standard"]);
    }

    #[test]
    fn missing_profile_and_bad_name() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = ProfileDir::new(tmp.path());
        let msg = conf.load("nope").unwrap_err().to_string();
        assert!(
            msg.contains("\"nope\"") && msg.contains("profile-create"),
            "{msg}"
        );
        assert!(matches!(
            conf.load("../etc/passwd"),
            Err(ProfileError::BadName(_))
        ));
        assert!(conf.names().unwrap().is_empty());
    }

    #[test]
    fn failed_validation_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = ProfileDir::new(tmp.path().join("p"));
        let args = SettingsArgs {
            run_cache: Some(tmp.path().join("missing")),
            ..Default::default()
        };
        let msg = conf.create_or_update("x", &args).unwrap_err().to_string();
        assert!(
            msg.starts_with("--run-cache ") && msg.contains("does not exist"),
            "{msg}"
        );
        assert!(conf.names().unwrap().is_empty());
    }

    #[test]
    fn validation_errors_name_flag_and_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let not_exec = exe(tmp.path(), "fc", 0o644);
        let dir = tmp.path().to_owned();
        let check = |profile: Profile, expect: &[&str]| {
            let msg = profile.validate().unwrap_err().to_string();
            for part in expect {
                assert!(msg.contains(part), "{msg:?} lacks {part:?}");
            }
        };
        check(
            Profile {
                binary_firecracker: Some(not_exec),
                ..Default::default()
            },
            &["--binary-firecracker", "not executable"],
        );
        check(
            Profile {
                binary_jailer: Some(dir.join("nope")),
                ..Default::default()
            },
            &["--binary-jailer", "does not exist"],
        );
        check(
            Profile {
                binary_qemu: Some(dir.clone()),
                ..Default::default()
            },
            &["--binary-qemu", "not a regular file"],
        );
        check(
            Profile {
                chroot_base: Some("/".into()),
                ..Default::default()
            },
            &["can't be /"],
        );
        check(
            Profile {
                run_cache: Some("relative/dir".into()),
                ..Default::default()
            },
            &["--run-cache", "absolute"],
        );
        check(
            Profile {
                storage_provider: Some("s3".into()),
                ..Default::default()
            },
            &["\"s3\"", "directory"],
        );
        check(
            Profile {
                storage_provider_properties: [("rootfs-root".to_string(), "/tmp".to_string())]
                    .into(),
                ..Default::default()
            },
            &["\"rootfs-root\"", "rootfs-storage-root"],
        );
        check(
            Profile {
                storage_provider_properties: [(
                    KERNEL_STORAGE_ROOT.to_string(),
                    dir.join("none").display().to_string(),
                )]
                .into(),
                ..Default::default()
            },
            &["kernel-storage-root", "does not exist"],
        );
        check(
            Profile {
                registry_mirrors: [("docker.io".to_string(), vec!["127.0.0.1:5000".to_string()])]
                    .into(),
                ..Default::default()
            },
            &["docker.io=127.0.0.1:5000", "http://"],
        );
    }

    #[test]
    fn commands_may_create_missing_state_dirs_but_profiles_name_existing_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let profile = Profile {
            run_cache: Some(tmp.path().join("not-yet")),
            ..Default::default()
        };
        assert!(profile.validate().is_err());
        profile.validate_for_use().unwrap();
        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        let not_a_dir = Profile {
            run_cache: Some(file),
            ..Default::default()
        };
        let msg = not_a_dir.validate_for_use().unwrap_err().to_string();
        assert!(msg.contains("not a directory"), "{msg}");
    }

    #[test]
    fn chroot_base_must_leave_room_for_the_jail_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let mut long = tmp.path().to_owned();
        while long.as_os_str().len() < 80 {
            long.push("deeper");
        }
        fs::create_dir_all(&long).unwrap();
        let err = Profile {
            chroot_base: Some(long),
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            matches!(err, ProfileError::ChrootBaseTooLong { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("108-byte"), "{err}");

        // /srv/jailer-length bases fit.
        Profile {
            chroot_base: Some(tmp.path().to_owned()),
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
