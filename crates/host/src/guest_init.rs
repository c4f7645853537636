//! Finds the static guest init binary that every build installs into the
//! root filesystem.

use std::path::{Path, PathBuf};

/// Where the guest init is looked for, in order: `$FIREBUILD_VMINIT`; beside
/// the firebuild executable (an install); `../lib/firebuild/`; and the cargo
/// target layout `scripts/build-vminit.sh` builds into. Only a statically
/// linked binary qualifies: it must run in images without a libc.
pub fn locate() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("FIREBUILD_VMINIT").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        check_static(&path)?;
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let candidates = [
        dir.join("vminit"),
        dir.join("../lib/firebuild/vminit"),
        dir.join("../x86_64-unknown-linux-gnu/release/vminit"),
    ];
    for candidate in candidates.iter().filter(|p| p.is_file()) {
        match check_static(candidate) {
            Ok(()) => return Ok(candidate.clone()),
            Err(e) => tracing::debug!("skipping {}: {e:#}", candidate.display()),
        }
    }
    anyhow::bail!(
        "no statically linked guest init (vminit) found beside {}: build it with scripts/build-vminit.sh, or set FIREBUILD_VMINIT to its path",
        exe.display()
    )
}

/// A dynamically linked init cannot start in an image without the loader
/// (the kernel then panics with "init failed (error -2)"): refuse it here.
fn check_static(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("reading the guest init {}: {e}", path.display()))?;
    match has_interpreter(&bytes) {
        Some(false) => Ok(()),
        Some(true) => anyhow::bail!(
            "the guest init {} is dynamically linked: build the static one with scripts/build-vminit.sh",
            path.display()
        ),
        None => anyhow::bail!("the guest init {} is not an x86_64 ELF executable", path.display()),
    }
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header;
/// `None` when the bytes are not such an ELF.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    const PT_INTERP: u32 = 3;
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let entry_size = usize::from(u16_at(0x36)?);
    let count = usize::from(u16_at(0x38)?);
    for i in 0..count {
        let at = phoff.checked_add(i.checked_mul(entry_size)?)?;
        let p_type = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        if p_type == PT_INTERP {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic() {
        // This test binary is dynamically linked.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_interpreter(&me), Some(true));
        assert_eq!(has_interpreter(b"#!/bin/sh\n"), None);
        if let Ok(busybox) = std::fs::read("/bin/busybox") {
            // Debian's busybox-static.
            assert_eq!(has_interpreter(&busybox), Some(false));
        }
        let err = check_static(&std::env::current_exe().unwrap()).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err}");
    }
}
