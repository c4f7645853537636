//! Reading an image layout or `docker save` tree that came from outside.
//!
//! The tree is untrusted even once safely unpacked: it may hold symlinks
//! (`blobs -> /var/lib/…`, `l -> /etc`) and special files. Every name in
//! it is opened through the in-root resolver the unpacker uses, so links
//! resolve inside the tree as if it were `/`, and only regular files are
//! opened at all (a FIFO would block, a device would read the host's).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::unpack::fsops::{RelPath, Root};

/// An import tree, confined to its root.
pub struct Tree<'a> {
    root: Root,
    dir: &'a Path,
    /// What the user named (a tarball or the directory), for errors.
    source: &'a Path,
}

impl<'a> Tree<'a> {
    pub fn open(dir: &'a Path, source: &'a Path) -> Result<Tree<'a>> {
        let root = Root::open(dir).map_err(|e| Error::io("opening", dir)(e.into()))?;
        Ok(Tree { root, dir, source })
    }

    pub fn source(&self) -> &Path {
        self.source
    }

    /// Where `rel` would be, for messages.
    fn shown(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Whether `rel` is a regular file of the tree.
    pub fn has_file(&self, rel: &str) -> bool {
        RelPath::clean(rel.as_bytes())
            .ok()
            .is_some_and(|r| self.root.open_regular(&r).is_ok())
    }

    /// Opens the regular file `rel` for reading.
    pub fn file(&self, rel: &str) -> Result<File> {
        let err = |reason: String| Error::Import {
            path: self.source.to_path_buf(),
            reason,
        };
        let path = RelPath::clean(rel.as_bytes())
            .map_err(|_| err(format!("{rel:?} names a file outside the archive")))?;
        self.root.open_regular(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => err(format!("{rel} is missing from the archive")),
            _ => err(format!("{}: {e}", self.shown(rel).display())),
        })
    }

    /// Reads `rel` whole, refusing more than `cap` bytes before reading them.
    pub fn read(&self, rel: &str, cap: u64) -> Result<Vec<u8>> {
        let file = self.file(rel)?;
        let mut data = Vec::new();
        file.take(cap + 1)
            .read_to_end(&mut data)
            .map_err(Error::io("reading", self.shown(rel)))?;
        if data.len() as u64 > cap {
            return Err(Error::Import {
                path: self.source.to_path_buf(),
                reason: format!("{rel} is larger than {cap} bytes, the most accepted"),
            });
        }
        Ok(data)
    }

    /// Reads `rel` (at most `cap` bytes) as JSON.
    pub fn json<T: for<'de> Deserialize<'de>>(&self, rel: &str, cap: u64) -> Result<T> {
        let data = self.read(rel, cap)?;
        serde_json::from_slice(&data).map_err(|e| Error::Import {
            path: self.source.to_path_buf(),
            reason: format!("{rel}: {e}"),
        })
    }

    /// The path of blob `digest` in an OCI layout.
    pub fn blob_path(digest: &Digest) -> String {
        format!("blobs/{}/{}", digest.algorithm().as_str(), digest.hex())
    }
}
