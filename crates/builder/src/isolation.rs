//! Where RUN steps run: the host sandbox ([`crate::sandbox`], the default)
//! or, with `--isolation microvm`, a fresh microVM per step driven through
//! its guest agent, as the original firebuild built.
//!
//! A microVM step sees the step's lower layers as read-only ext4 disks, one
//! per layer, made once per layer and kept with it in the cache
//! ([`export_layer`]): a stage pays one small export per new layer, never a
//! full export of its root per step. The guest stacks them under an overlay
//! whose upper layer, on a scratch disk, becomes the step's diff, sent back
//! into the step's layer in the cache's own format. The VM side lives with
//! the VM runtime: this crate only says what a step needs ([`StepVm`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::error::{BuildError, Result};
use crate::ext4;
use crate::layers::LayerId;
use crate::sandbox::{CancelToken, Limits, Network};

/// Most layer disks one step VM gets; deeper stages are refused with a
/// message (virtio disks are PCI slots under QEMU).
pub const MAX_LAYER_DISKS: usize = 24;

/// How a build isolates its RUN steps (`--isolation`).
#[derive(Clone, Default)]
pub enum Isolation {
    /// The hardened namespace sandbox on the host.
    #[default]
    Sandbox,
    /// A microVM per RUN step.
    MicroVm(Arc<dyn StepVm>),
}

impl fmt::Debug for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Isolation::Sandbox => "Sandbox",
            Isolation::MicroVm(_) => "MicroVm",
        })
    }
}

/// One RUN step for a microVM.
#[derive(Debug)]
pub struct VmStep<'a> {
    /// An ext4 disk holding only the guest init: the VM's root drive.
    pub init_disk: &'a Path,
    /// The step's lower layers as ext4 disks, bottom first.
    pub layers: &'a [PathBuf],
    /// The step's (empty) diff directory, to fill with what it wrote.
    pub upper: &'a Path,
    pub argv: &'a [String],
    /// `KEY=value`, PATH included.
    pub env: &'a [String],
    /// USER, resolved in the step's root.
    pub user: &'a str,
    /// The working directory (created when missing).
    pub cwd: &'a str,
    pub network: Network,
    /// A heredoc script: its path in the VM and its text.
    pub script: Option<(&'a str, &'a str)>,
    /// `--memory`, `--cpus`: the VM's size.
    pub limits: Limits,
}

/// How a step VM's command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmStepOutcome {
    pub code: i32,
    /// The last lines of its output, for the error message.
    pub tail: Vec<String>,
}

/// Runs RUN steps in microVMs; implemented over the VM runtime.
pub trait StepVm: Send + Sync {
    /// Boots a VM for `step`, runs its command and, when it succeeds, writes
    /// its diff into `step.upper`. Leaves no VM, network or mount behind,
    /// also on failure and on `cancel`. `on_line` gets each output line.
    fn run_step(
        &self,
        step: &VmStep<'_>,
        on_line: &mut dyn FnMut(&str),
        cancel: &CancelToken,
    ) -> std::result::Result<VmStepOutcome, StepVmError>;
}

/// Why a step VM did not give an outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepVmError {
    /// `cancel` fired: the build stops as interrupted.
    #[error("interrupted")]
    Interrupted,
    #[error("{0}")]
    Failed(String),
}

/// The ext4 image of layer `id`'s diff (whiteouts and `user.overlay.*`
/// xattrs kept by `mkfs.ext4 -d`), made on first use next to the layer and
/// removed with it. Written to a temporary name and renamed: concurrent
/// builds may both make it, neither sees half of one.
pub fn export_layer(layers_dir: &Path, id: &LayerId) -> Result<PathBuf> {
    let dir = layers_dir.join(&id.0);
    let out = dir.join("diff.ext4");
    if out.exists() {
        return Ok(out);
    }
    let tmp = dir.join(format!("diff.ext4.tmp-{}", crate::util::unique_suffix()));
    let made = ext4::make_ext4(&dir.join("diff"), &tmp, None, "layer")
        .and_then(|_| std::fs::rename(&tmp, &out).map_err(BuildError::io("renaming", &tmp)));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.map(|()| out)
}

/// The step VMs' root drive: an ext4 holding only `vminit` at the guest
/// init's path, kept in `cache_root` under its content hash.
pub fn init_disk(cache_root: &Path, vminit: &Path) -> Result<PathBuf> {
    let binary = std::fs::read(vminit).map_err(BuildError::io("reading the guest init", vminit))?;
    let digest = hex::encode(Sha256::digest(&binary));
    let out = cache_root.join(format!("step-vm-init-{}.ext4", &digest[..16]));
    if out.exists() {
        return Ok(out);
    }
    let tree = cache_root.join(format!("step-vm-init.tmp-{}", crate::util::unique_suffix()));
    let tmp = tree.with_extension("ext4");
    let made = (|| {
        let init = tree.join(firebuild_metadata::boot::GUEST_INIT_PATH.trim_start_matches('/'));
        let parent = init.parent().unwrap_or(&tree);
        std::fs::create_dir_all(parent).map_err(BuildError::io("creating", parent))?;
        std::fs::write(&init, &binary).map_err(BuildError::io("writing", &init))?;
        std::fs::set_permissions(&init, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(BuildError::io("chmod", &init))?;
        ext4::make_ext4(&tree, &tmp, None, "init")?;
        std::fs::rename(&tmp, &out).map_err(BuildError::io("renaming", &tmp))
    })();
    let _ = std::fs::remove_dir_all(&tree);
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made.map(|()| out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_exports_keep_whiteouts_and_are_made_once() {
        let tmp = tempfile::tempdir().unwrap();
        let layers = tmp.path().join("layers");
        let diff = layers.join("abc/diff");
        std::fs::create_dir_all(diff.join("etc")).unwrap();
        std::fs::write(diff.join("etc/new"), "x").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            diff.join("gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let id = LayerId("abc".into());
        let image = export_layer(&layers, &id).unwrap();
        let stat = std::process::Command::new("debugfs")
            .args(["-R", "stat /gone"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&stat.stdout).contains("character special"));
        let made = std::fs::metadata(&image).unwrap().modified().unwrap();
        assert_eq!(export_layer(&layers, &id).unwrap(), image);
        assert_eq!(std::fs::metadata(&image).unwrap().modified().unwrap(), made);
        let entries = std::fs::read_dir(layers.join("abc")).unwrap().count();
        assert_eq!(entries, 2, "diff and diff.ext4 only");
    }

    #[test]
    fn the_init_disk_holds_the_init_and_is_shared_by_content() {
        let tmp = tempfile::tempdir().unwrap();
        let vminit = tmp.path().join("vminit");
        std::fs::write(&vminit, b"\x7fELF fake init").unwrap();
        let disk = init_disk(tmp.path(), &vminit).unwrap();
        assert_eq!(init_disk(tmp.path(), &vminit).unwrap(), disk);
        let cat = std::process::Command::new("debugfs")
            .args(["-R", "cat /.firebuild/init"])
            .arg(&disk)
            .output()
            .unwrap();
        assert_eq!(cat.stdout, b"\x7fELF fake init");
        let entries = std::fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(entries, 2, "vminit and the disk: no temporary left");
    }
}
