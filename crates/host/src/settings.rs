//! Settings in force for one command: the embedded default profile, then the
//! selected profile, then flags given on the command line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::profile::{
    Profile, ProfileDir, KERNEL_STORAGE_ROOT, ROOTFS_STORAGE_ROOT, SNAPSHOT_STORAGE_ROOT,
    VOLUME_STORAGE_ROOT,
};
use crate::settings_args::{AccelPolicy, Isolation, SettingsArgs, VmmChoice};

/// Where the embedded default profile keeps its state; a named profile's
/// state root is `profiles/NAME` under it.
const STATE_DIR: &str = "/var/lib/firebuild";
const DEFAULT_CHROOT_BASE: &str = "/srv/jailer";

#[derive(Debug, Clone)]
pub struct Settings {
    /// Where the roots this profile does not set live.
    pub state_root: PathBuf,
    /// A path, or a name the backend looks up in `PATH`.
    pub binary_firecracker: PathBuf,
    pub binary_jailer: PathBuf,
    pub binary_qemu: PathBuf,
    pub chroot_base: PathBuf,
    pub run_cache: PathBuf,
    pub cache_dir: PathBuf,
    pub rootfs_storage_root: PathBuf,
    pub kernel_storage_root: PathBuf,
    pub volume_storage_root: PathBuf,
    pub snapshot_storage_root: PathBuf,
    pub vmm: VmmChoice,
    pub qemu_accel: AccelPolicy,
    /// The most one image's layers may unpack to.
    pub unpacked_size_limit: u64,
    pub isolation: Isolation,
    /// The kernel of commands not given `--vmlinux-id`.
    pub default_vmlinux_id: Option<String>,
    /// Unset: the jailer driver picks a `firebuild` system user if there is
    /// one, else 10000 — never root (the original ran it as root).
    pub jailer_uid: Option<u32>,
    pub jailer_gid: Option<u32>,
    /// `(first, count)` of per-VM jail ids; `None`: the backend's default.
    pub jailer_id_range: Option<(u32, u32)>,
    /// `(first, count)` of per-process QEMU ids; `None`: the backend's default.
    pub qemu_id_range: Option<(u32, u32)>,
    pub insecure_registries: Vec<String>,
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cni_cache_dir: PathBuf,
}

impl Settings {
    /// Resolves the settings of this invocation.
    /// `profile` (a name in `profile_conf_dir`; `None`: the embedded
    /// default) with `args` over it.
    pub fn resolve(
        profile_name: Option<&str>,
        profile_conf_dir: &Path,
        args: &SettingsArgs,
    ) -> anyhow::Result<Settings> {
        let mut profile = match profile_name {
            Some(name) => ProfileDir::new(profile_conf_dir).load(name)?,
            None => Profile::default(),
        };
        profile.apply(args);
        profile
            .validate_for_use()
            .context("invalid settings (profile values overridden by command-line flags)")?;
        Ok(Settings::from_profile(profile, profile_name))
    }

    /// Where git sources are cloned and kept between builds.
    pub fn sources_cache(&self) -> anyhow::Result<PathBuf> {
        Ok(self.cache()?.join("sources"))
    }

    /// Every directory root in effect and the setting that names it,
    /// defaults included (what `profile-inspect` shows).
    pub fn roots(&self) -> [(&'static str, &Path); 8] {
        [
            ("state-root", &self.state_root),
            ("run-cache", &self.run_cache),
            ("cache-dir", &self.cache_dir),
            (ROOTFS_STORAGE_ROOT, &self.rootfs_storage_root),
            (KERNEL_STORAGE_ROOT, &self.kernel_storage_root),
            (VOLUME_STORAGE_ROOT, &self.volume_storage_root),
            (SNAPSHOT_STORAGE_ROOT, &self.snapshot_storage_root),
            ("chroot-base", &self.chroot_base),
        ]
    }

    /// Roots a profile does not set live under its own state root, so two
    /// profiles share nothing unless they name the same directory. The
    /// embedded default keeps the original's paths. Shared by every profile
    /// on purpose: the jailer's chroot base (its id claims keep jailed VMs of
    /// all profiles apart) and the CNI directories (addresses are leased per
    /// host network, whichever profile asks).
    fn from_profile(p: Profile, name: Option<&str>) -> Settings {
        let state = match name {
            Some(name) => Path::new(STATE_DIR).join("profiles").join(name),
            None => PathBuf::from(STATE_DIR),
        };
        let state = state.as_path();
        let property = |key: &str, default: &str| {
            p.storage_provider_properties
                .get(key)
                .map(PathBuf::from)
                .unwrap_or_else(|| state.join(default))
        };
        Settings {
            state_root: state.to_owned(),
            rootfs_storage_root: property(ROOTFS_STORAGE_ROOT, "rootfs"),
            kernel_storage_root: property(KERNEL_STORAGE_ROOT, "vmlinux"),
            volume_storage_root: property(VOLUME_STORAGE_ROOT, "volumes"),
            snapshot_storage_root: property(SNAPSHOT_STORAGE_ROOT, "snapshots"),
            binary_firecracker: p.binary_firecracker.unwrap_or_else(|| "firecracker".into()),
            binary_jailer: p.binary_jailer.unwrap_or_else(|| "jailer".into()),
            binary_qemu: p.binary_qemu.unwrap_or_else(|| "qemu-system-x86_64".into()),
            chroot_base: p.chroot_base.unwrap_or_else(|| DEFAULT_CHROOT_BASE.into()),
            run_cache: p.run_cache.unwrap_or_else(|| state.join("runs")),
            cache_dir: p.cache_dir.unwrap_or_else(|| state.join("cache")),
            vmm: p.vmm.unwrap_or(VmmChoice::Auto),
            qemu_accel: p.qemu_accel.unwrap_or_default(),
            unpacked_size_limit: p
                .unpacked_size_limit
                .unwrap_or(firebuild_oci::DEFAULT_UNPACKED_LIMIT),
            isolation: p.isolation.unwrap_or_default(),
            default_vmlinux_id: p.default_vmlinux_id,
            jailer_uid: p.jailer_uid,
            jailer_gid: p.jailer_gid,
            jailer_id_range: p.jailer_id_range,
            qemu_id_range: p.qemu_id_range,
            insecure_registries: p.insecure_registries,
            registry_mirrors: p.registry_mirrors,
            cni_conf_dir: p.cni_conf_dir.unwrap_or_else(|| "/etc/cni/conf.d".into()),
            cni_bin_dirs: if p.cni_bin_dirs.is_empty() {
                vec!["/opt/cni/bin".into(), "/usr/lib/cni".into()]
            } else {
                p.cni_bin_dirs
            },
            cni_cache_dir: p.cni_cache_dir.unwrap_or_else(|| "/var/lib/cni".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// Resolves with no flags given.
    fn resolved(profile: Option<&str>, dir: &Path) -> Settings {
        Settings::resolve(profile, dir, &SettingsArgs::default()).unwrap()
    }

    #[test]
    fn embedded_default_needs_no_setup() {
        let tmp = tempfile::tempdir().unwrap();
        let s = resolved(None, tmp.path());
        assert_eq!(
            s.rootfs_storage_root,
            Path::new("/var/lib/firebuild/rootfs")
        );
        assert_eq!(
            s.kernel_storage_root,
            Path::new("/var/lib/firebuild/vmlinux")
        );
        assert_eq!(s.chroot_base, Path::new("/srv/jailer"));
        assert_eq!(s.vmm, VmmChoice::Auto);
        assert_eq!(
            s.jailer_uid, None,
            "the jailer driver's non-root default applies"
        );
    }

    #[test]
    fn a_named_profile_keeps_what_it_does_not_set_under_its_own_root() {
        let tmp = tempfile::tempdir().unwrap();
        let conf = ProfileDir::new(tmp.path());
        let volumes = tmp.path().join("t-volumes");
        std::fs::create_dir(&volumes).unwrap();
        conf.create_or_update(
            "t",
            &SettingsArgs {
                storage_provider_property_string: vec![(
                    VOLUME_STORAGE_ROOT.into(),
                    volumes.display().to_string(),
                )],
                ..Default::default()
            },
        )
        .unwrap();
        conf.create_or_update("u", &SettingsArgs::default())
            .unwrap();
        let t = resolved(Some("t"), tmp.path());
        let u = resolved(Some("u"), tmp.path());
        let default = resolved(None, tmp.path());

        assert_eq!(t.volume_storage_root, volumes);
        let u_root = Path::new("/var/lib/firebuild/profiles/u");
        assert_eq!(u.state_root, u_root);
        for (setting, dir) in u.roots() {
            if setting != "chroot-base" {
                assert!(dir.starts_with(u_root), "{setting} = {}", dir.display());
            }
        }
        assert_eq!(u.snapshot_storage_root, u_root.join("snapshots"));
        assert_eq!(u.run_cache, u_root.join("runs"));
        // No state directory of one profile is another's.
        for (name, a, b) in [
            ("t", &t, &u),
            ("default", &default, &u),
            ("default", &default, &t),
        ] {
            for ((setting, x), (_, y)) in a.roots().into_iter().zip(b.roots()) {
                if setting != "chroot-base" {
                    assert_ne!(x, y, "{name} shares {setting}");
                }
            }
        }
        assert_eq!(
            default.volume_storage_root,
            Path::new("/var/lib/firebuild/volumes")
        );
        assert_eq!(
            t.chroot_base, u.chroot_base,
            "one jail id pool for the host"
        );
    }

    #[test]
    fn flags_override_the_profile() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        std::fs::create_dir(&store).unwrap();
        let runs = tmp.path().join("runs");
        std::fs::create_dir(&runs).unwrap();
        ProfileDir::new(tmp.path())
            .create_or_update(
                "p",
                &SettingsArgs {
                    vmm: Some(VmmChoice::Firecracker),
                    storage_provider_property_string: vec![(
                        ROOTFS_STORAGE_ROOT.into(),
                        store.display().to_string(),
                    )],
                    ..Default::default()
                },
            )
            .unwrap();
        let overrides = SettingsArgs {
            vmm: Some(VmmChoice::Qemu),
            run_cache: Some(runs.clone()),
            ..Default::default()
        };
        let s = Settings::resolve(Some("p"), tmp.path(), &overrides).unwrap();
        assert_eq!(s.vmm, VmmChoice::Qemu);
        assert_eq!(s.run_cache, runs);
        assert_eq!(s.rootfs_storage_root, store);

        let err =
            Settings::resolve(Some("missing"), tmp.path(), &SettingsArgs::default()).unwrap_err();
        assert!(format!("{err:#}").contains("\"missing\""));
    }
}
