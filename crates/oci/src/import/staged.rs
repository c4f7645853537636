//! Blobs an import takes into the cache only once the whole image has
//! validated: each is streamed into a temporary file of the cache (hashed
//! on the way) and renamed to its digest by [`Staged::commit`]. A failed
//! import drops them, so it leaves nothing in the cache.

use std::fs::File;

use crate::cache::BlobCache;
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};

pub struct Staged<'a> {
    cache: &'a BlobCache,
    blobs: Vec<(tempfile::NamedTempFile, Digest)>,
}

impl<'a> Staged<'a> {
    pub fn new(cache: &'a BlobCache) -> Staged<'a> {
        Staged {
            cache,
            blobs: Vec::new(),
        }
    }

    /// Stages `file`'s content; it must hash to `expected` when given.
    /// Returns its digest and size.
    pub fn file(&mut self, mut file: File, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let tmp = self.cache.temp_file()?;
        let mut w = HashingWriter::new(tmp);
        std::io::copy(&mut file, &mut w).map_err(Error::io(
            "copying into the blob cache at",
            self.cache.root(),
        ))?;
        let (tmp, digest, size) = w.finish();
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        self.blobs.push((tmp, digest.clone()));
        Ok((digest, size))
    }

    /// Stages `data`, which must hash to `expected` when given.
    pub fn bytes(&mut self, data: &[u8], expected: Option<&Digest>) -> Result<Digest> {
        let digest = Digest::sha256_of(data);
        if let Some(expected) = expected.filter(|e| **e != digest) {
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let mut tmp = self.cache.temp_file()?;
        std::io::Write::write_all(&mut tmp, data).map_err(Error::io(
            "writing into the blob cache at",
            self.cache.root(),
        ))?;
        self.blobs.push((tmp, digest.clone()));
        Ok(digest)
    }

    /// The staged content of `digest`, opened for reading.
    pub fn open(&self, digest: &Digest) -> Result<File> {
        let (tmp, _) = self
            .blobs
            .iter()
            .find(|(_, d)| d == digest)
            .ok_or_else(|| Error::BlobMissing {
                digest: digest.to_string(),
                cache: self.cache.root().to_path_buf(),
            })?;
        tmp.reopen()
            .map_err(Error::io("reading staged blob", tmp.path()))
    }

    /// Stores every staged blob under its digest.
    pub fn commit(self) -> Result<()> {
        for (tmp, digest) in self.blobs {
            if !self.cache.contains(&digest) {
                self.cache.persist(tmp, &digest)?;
            }
        }
        Ok(())
    }
}
