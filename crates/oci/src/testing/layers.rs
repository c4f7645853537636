//! Hand-made layer tarballs, including malformed and malicious ones that the
//! `tar` crate's own builder refuses to write.

use std::path::Path;

use anyhow::Context;

/// Builds a tar archive entry by entry, with raw (unchecked) names.
pub struct TarBuilder {
    out: tar::Builder<Vec<u8>>,
    mtime: u64,
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder {
            out: tar::Builder::new(Vec::new()),
            mtime: 1_600_000_000,
        }
    }

    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    /// Appends an entry with `path` written verbatim (may contain `..`, be
    /// absolute, …): PAX records carry long paths and link names.
    fn raw(
        &mut self,
        mut h: tar::Header,
        path: &str,
        link: Option<&str>,
        data: &[u8],
        pax: &[(&str, &[u8])],
    ) -> &mut Self {
        let mut records: Vec<(String, Vec<u8>)> = pax
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        let name_field = &mut h.as_old_mut().name;
        if path.len() <= name_field.len() {
            name_field.fill(0);
            name_field[..path.len()].copy_from_slice(path.as_bytes());
        } else {
            records.push(("path".into(), path.as_bytes().to_vec()));
        }
        if let Some(link) = link {
            let field = &mut h.as_old_mut().linkname;
            if link.len() <= field.len() {
                field.fill(0);
                field[..link.len()].copy_from_slice(link.as_bytes());
            } else {
                records.push(("linkpath".into(), link.as_bytes().to_vec()));
            }
        }
        if !records.is_empty() {
            let exts: Vec<(&str, &[u8])> = records
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            // Errors only come from the Vec writer, which cannot fail.
            let _ = self.out.append_pax_extensions(exts);
        }
        h.set_cksum();
        let _ = self.out.append(&h, data);
        self
    }

    /// A regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        let h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        self.raw(h, path, None, data, &[])
    }

    /// A regular file with owner and PAX extended attributes.
    pub fn file_with(
        &mut self,
        path: &str,
        mode: u32,
        uid: u64,
        gid: u64,
        xattrs: &[(&str, &[u8])],
        data: &[u8],
    ) -> &mut Self {
        let mut h = self.header(tar::EntryType::Regular, mode, data.len() as u64);
        h.set_uid(uid);
        h.set_gid(gid);
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        let pax: Vec<(&str, &[u8])> = keys.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        self.raw(h, path, None, data, &pax)
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let h = self.header(tar::EntryType::Directory, mode, 0);
        self.raw(h, path, None, &[], &[])
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let h = self.header(tar::EntryType::Symlink, 0o777, 0);
        self.raw(h, path, Some(target), &[], &[])
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let h = self.header(tar::EntryType::Link, 0o644, 0);
        self.raw(h, path, Some(target), &[], &[])
    }

    /// A character (`'c'`) or block (`'b'`) device.
    pub fn device(
        &mut self,
        path: &str,
        kind: char,
        major: u32,
        minor: u32,
        mode: u32,
    ) -> &mut Self {
        let t = if kind == 'b' {
            tar::EntryType::Block
        } else {
            tar::EntryType::Char
        };
        let mut h = self.header(t, mode, 0);
        let _ = h.set_device_major(major);
        let _ = h.set_device_minor(minor);
        self.raw(h, path, None, &[], &[])
    }

    pub fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        let h = self.header(tar::EntryType::Fifo, mode, 0);
        self.raw(h, path, None, &[], &[])
    }

    /// An OCI whiteout hiding `dir/name` from lower layers.
    pub fn whiteout(&mut self, dir: &str, name: &str) -> &mut Self {
        let path = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{}/.wh.{name}", dir.trim_end_matches('/'))
        };
        self.file(&path, 0o644, b"")
    }

    /// An OCI opaque marker: `dir` hides everything lower layers put in it.
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let path = format!("{}/.wh..wh..opq", dir.trim_end_matches('/'));
        self.file(&path, 0o644, b"")
    }

    /// Sets the mtime of entries added from now on.
    pub fn mtime(&mut self, secs: u64) -> &mut Self {
        self.mtime = secs;
        self
    }

    /// The finished (uncompressed) archive; the builder is left empty.
    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::replace(&mut self.out, tar::Builder::new(Vec::new()))
            .into_inner()
            .unwrap_or_default()
    }
}

/// A root filesystem layer from Debian's `busybox-static`: `/bin/busybox`,
/// every applet as a symlink to it, the usual top-level directories, and a
/// minimal `/etc/passwd` and `/etc/group`.
pub fn busybox_rootfs_tar() -> anyhow::Result<Vec<u8>> {
    let busybox = Path::new("/bin/busybox");
    let data = std::fs::read(busybox)
        .context("reading /bin/busybox: install the Debian package `busybox-static`")?;
    let out = std::process::Command::new(busybox)
        .arg("--list-full")
        .output()
        .context("running busybox --list-full")?;
    let mut t = TarBuilder::new();
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "proc", "sys", "dev", "var",
        "run",
    ] {
        t.dir(d, 0o755);
    }
    t.dir("tmp", 0o1777);
    t.file("bin/busybox", 0o755, &data);
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "bin/busybox" {
            continue;
        }
        t.symlink(applet, "/bin/busybox");
    }
    t.file(
        "etc/passwd",
        0o644,
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    );
    t.file("etc/group", 0o644, b"root:x:0:\nnogroup:x:65534:\n");
    Ok(t.finish())
}
