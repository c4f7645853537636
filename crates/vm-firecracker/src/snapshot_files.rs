//! The files of a Firecracker snapshot on their way from the VM's jail
//! into the snapshot store.

use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use firebuild_firecracker::JailUser;
use firebuild_vm::VmError;

/// An empty file Firecracker may write (its own: the jail user's), in
/// place of anything left at `path` (a fork's jail may hold links to its
/// own snapshot's files, which must never be written through).
pub fn prepare(path: &Path, owner: Option<JailUser>) -> Result<(), String> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", path.display())),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    if let Some(user) = owner {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
            .map_err(|e| format!("handing {} to the jail user: {e}", path.display()))?;
    }
    Ok(())
}

/// Moves what Firecracker wrote at `from` to `to` (a rename, else a copy),
/// root's, with `mode`.
pub fn take(from: &Path, to: &Path, mode: u32) -> Result<(), VmError> {
    let io_err = |what: &'static str, path: &Path, e: io::Error| VmError::Io {
        what,
        path: path.to_owned(),
        source: e,
    };
    match std::fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices => {
            firebuild_vm::copy::copy_image(from, to)
                .map_err(|e| io_err("copying the snapshot to", to, e))?;
        }
        Err(e) => return Err(io_err("moving the snapshot to", to, e)),
    }
    std::os::unix::fs::chown(to, Some(0), Some(0)).map_err(|e| io_err("taking over", to, e))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
        .map_err(|e| io_err("restricting", to, e))
}
