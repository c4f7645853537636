//! The content-addressed blob cache: `<cache-root>/blobs/<alg>/<hex>`.
//!
//! A blob only ever appears under its final name after its content was hashed
//! and matched its digest, so a reader never sees a partial or corrupt blob.
//! Downloads write `<hex>.partial` under an exclusive `flock`: a second
//! process pulling the same blob waits and then finds it done, and a download
//! killed half-way leaves a partial file the next pull resumes from (its
//! content is re-verified at the end, and thrown away if wrong).
//!
//! Pulls and imports hold the cache root shared while they add blobs and
//! record the image; [`BlobCache::prune`] holds it exclusively, so it never
//! takes a blob whose record is still being written.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::digest::{Algorithm, Digest, Hasher, HashingWriter};
use crate::error::{Error, Result};

/// The blob cache under a cache root shared by all builds.
#[derive(Debug, Clone)]
pub struct BlobCache {
    root: PathBuf,
}

impl BlobCache {
    /// A cache rooted at `cache_root` (created on first write).
    pub fn new(cache_root: impl Into<PathBuf>) -> BlobCache {
        BlobCache {
            root: cache_root.into(),
        }
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, algorithm: Algorithm) -> PathBuf {
        self.root.join("blobs").join(algorithm.as_str())
    }

    /// Where the blob with `digest` lives (whether or not it is there).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir(digest.algorithm()).join(digest.hex())
    }

    /// Whether the blob is in the cache.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Opens a cached blob for reading.
    pub fn open(&self, digest: &Digest) -> Result<File> {
        let path = self.blob_path(digest);
        File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::BlobMissing {
                digest: digest.to_string(),
                cache: self.root.clone(),
            },
            _ => Error::Io {
                action: "opening cached blob",
                path,
                source: e,
            },
        })
    }

    /// Reads a (small) cached blob whole, re-checking its digest.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open(digest)?
            .read_to_end(&mut data)
            .map_err(Error::io("reading cached blob", self.blob_path(digest)))?;
        verify(digest, &data)?;
        Ok(data)
    }

    /// Stores `data` under its sha256 digest.
    pub fn insert_bytes(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::sha256_of(data);
        self.insert_verified(&digest, data)?;
        Ok(digest)
    }

    /// Stores `data`, which must hash to `expected`.
    pub fn insert_verified(&self, expected: &Digest, data: &[u8]) -> Result<()> {
        verify(expected, data)?;
        if self.contains(expected) {
            return Ok(());
        }
        let dir = self.ensure_dir(expected.algorithm())?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(Error::io("creating temporary blob in", &dir))?;
        tmp.write_all(data)
            .map_err(Error::io("writing temporary blob in", &dir))?;
        self.persist(tmp, expected)
    }

    /// Streams `reader` into the cache under its sha256 digest; returns the
    /// digest and size.
    pub fn insert_reader(&self, reader: &mut dyn Read) -> Result<(Digest, u64)> {
        let dir = self.ensure_dir(Algorithm::Sha256)?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(Error::io("creating temporary blob in", &dir))?;
        let mut w = HashingWriter::new(tmp);
        std::io::copy(reader, &mut w).map_err(Error::io("copying into the blob cache at", &dir))?;
        let (tmp, digest, size) = w.finish();
        if !self.contains(&digest) {
            self.persist(tmp, &digest)?;
        }
        Ok((digest, size))
    }

    /// A temporary file in the cache's sha256 directory, to be
    /// [`persist`](Self::persist)ed once its digest is known.
    pub(crate) fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        let dir = self.ensure_dir(Algorithm::Sha256)?;
        tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(Error::io("creating temporary blob in", &dir))
    }

    /// Moves an already-verified temporary file to the blob's final name.
    pub(crate) fn persist(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<()> {
        let path = self.blob_path(digest);
        tmp.as_file()
            .sync_all()
            .map_err(Error::io("syncing blob", &path))?;
        // A concurrent writer may win the rename; its content is identical.
        tmp.persist(&path)
            .map_err(|e| Error::io("storing blob", &path)(e.error))?;
        Ok(())
    }

    fn ensure_dir(&self, algorithm: Algorithm) -> Result<PathBuf> {
        let dir = self.dir(algorithm);
        // Blobs may come from private repositories, pulled with credentials.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(Error::io("creating blob cache directory", &dir))?;
        for private in [self.root.join("blobs"), dir.clone()] {
            std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))
                .map_err(Error::io("restricting the blob cache directory", &private))?;
        }
        Ok(dir)
    }

    /// Holds the cache for adding blobs (shared) or pruning (exclusive)
    /// until the returned lock is dropped.
    /// The lock is on the cache root directory itself: taking it writes
    /// nothing.
    pub fn hold(&self, exclusive: bool) -> Result<File> {
        let path = &self.root;
        std::fs::create_dir_all(path).map_err(Error::io("creating the cache directory", path))?;
        let lock = File::open(path).map_err(Error::io("opening", path))?;
        let op = if exclusive {
            FlockOperation::LockExclusive
        } else {
            FlockOperation::LockShared
        };
        rustix::fs::flock(&lock, op).map_err(|e| Error::io("locking", path)(e.into()))?;
        Ok(lock)
    }

    /// Removes every complete blob not in `keep()` (the digests the recorded
    /// images need, read once the cache is held); partial downloads and
    /// locks stay.
    pub fn prune(
        &self,
        keep: impl FnOnce() -> Result<std::collections::HashSet<Digest>>,
    ) -> Result<BlobPrune> {
        let _held = self.hold(true)?;
        let keep = keep()?;
        let mut report = BlobPrune::default();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let dir = self.dir(algorithm);
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("reading the blob cache", &dir)(e)),
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(digest) = format!("{}:{name}", algorithm.as_str()).parse::<Digest>() else {
                    continue;
                };
                if keep.contains(&digest) {
                    continue;
                }
                let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
                let path = entry.path();
                std::fs::remove_file(&path).map_err(Error::io("removing blob", &path))?;
                report.removed += 1;
                report.bytes_freed += size;
            }
        }
        Ok(report)
    }

    /// Starts (or resumes) a download of `digest`. Blocks while another
    /// process downloads the same blob.
    pub(crate) fn begin_download(&self, digest: &Digest) -> Result<Download> {
        if self.contains(digest) {
            return Ok(Download::Present);
        }
        let dir = self.ensure_dir(digest.algorithm())?;
        let path = dir.join(format!("{}.partial", digest.hex()));
        let final_path = self.blob_path(digest);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(Error::io("opening partial blob", &path))?;
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| Error::io("locking partial blob", &path)(e.into()))?;
        if final_path.is_file() {
            // Another process finished while we waited: drop our partial name
            // only if it is still the file we locked.
            remove_if_same(&path, &file);
            return Ok(Download::Present);
        }
        let mut partial = PartialBlob {
            file,
            path,
            final_path,
            hasher: Hasher::new(digest.algorithm()),
            written: 0,
            digest: digest.clone(),
        };
        partial.rehash_existing()?;
        Ok(Download::Partial(Box::new(partial)))
    }
}

/// What [`BlobCache::prune`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlobPrune {
    pub removed: usize,
    pub bytes_freed: u64,
}

/// Checks `data` against `expected`.
pub(crate) fn verify(expected: &Digest, data: &[u8]) -> Result<()> {
    let mut h = Hasher::new(expected.algorithm());
    h.update(data);
    let actual = h.finish();
    if &actual != expected {
        return Err(Error::DigestMismatch {
            expected: expected.to_string(),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

fn remove_if_same(path: &Path, file: &File) {
    if let (Ok(a), Ok(b)) = (std::fs::metadata(path), file.metadata()) {
        if a.ino() == b.ino() && a.dev() == b.dev() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Outcome of [`BlobCache::begin_download`].
pub(crate) enum Download {
    /// The blob is already cached.
    Present,
    /// Write the (rest of the) blob here.
    Partial(Box<PartialBlob>),
}

/// A locked, possibly non-empty `<hex>.partial` file being filled.
pub(crate) struct PartialBlob {
    file: File,
    path: PathBuf,
    final_path: PathBuf,
    hasher: Hasher,
    written: u64,
    digest: Digest,
}

impl PartialBlob {
    /// Bytes already present (from an interrupted earlier download).
    pub fn offset(&self) -> u64 {
        self.written
    }

    fn rehash_existing(&mut self) -> Result<()> {
        let mut buf = vec![0u8; 1 << 20];
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(Error::io("reading partial blob", &self.path))?;
        loop {
            let n = self
                .file
                .read(&mut buf)
                .map_err(Error::io("reading partial blob", &self.path))?;
            if n == 0 {
                break;
            }
            self.hasher.update(&buf[..n]);
            self.written += n as u64;
        }
        Ok(())
    }

    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(Error::io("writing partial blob", &self.path))?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// Throws away what was written and starts from byte 0.
    pub fn restart(&mut self) -> Result<()> {
        self.file
            .set_len(0)
            .and_then(|_| self.file.seek(SeekFrom::Start(0)).map(|_| ()))
            .map_err(Error::io("truncating partial blob", &self.path))?;
        self.hasher = Hasher::new(self.digest.algorithm());
        self.written = 0;
        Ok(())
    }

    /// Verifies size and digest and moves the blob to its final name. On a
    /// mismatch the partial file is deleted and nothing is stored.
    pub fn commit(self, expected_size: Option<u64>) -> Result<()> {
        let actual = self.hasher.clone().finish();
        if let Some(size) = expected_size {
            if size != self.written {
                let err = Error::SizeMismatch {
                    digest: self.digest.to_string(),
                    expected: size,
                    actual: self.written,
                };
                self.discard();
                return Err(err);
            }
        }
        if actual != self.digest {
            let err = Error::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            };
            self.discard();
            return Err(err);
        }
        self.file
            .sync_all()
            .map_err(Error::io("syncing blob", &self.path))?;
        std::fs::rename(&self.path, &self.final_path)
            .map_err(Error::io("storing blob", &self.final_path))?;
        Ok(())
    }

    /// Deletes the partial file (the lock goes with the descriptor).
    pub fn discard(self) {
        remove_if_same(&self.path, &self.file);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_verified_blobs_only() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path());
        let d = cache.insert_bytes(b"hello").unwrap();
        assert_eq!(cache.read(&d).unwrap(), b"hello");
        let other = Digest::sha256_of(b"other");
        let err = cache.insert_verified(&other, b"hello").unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
        assert!(!cache.contains(&other));
        let (d2, n) = cache.insert_reader(&mut &b"hello"[..]).unwrap();
        assert_eq!((d2, n), (d, 5));
        for private in ["blobs", "blobs/sha256"] {
            let mode = std::fs::metadata(dir.path().join(private))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{private}");
        }
    }

    #[test]
    fn prune_keeps_what_images_reference_and_partial_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path());
        let kept = cache.insert_bytes(b"referenced").unwrap();
        let dropped = cache.insert_bytes(b"orphan blob").unwrap();
        let partial = Digest::sha256_of(b"half");
        let Download::Partial(mut p) = cache.begin_download(&partial).unwrap() else {
            panic!("present")
        };
        p.write(b"ha").unwrap();
        drop(p);
        let report = cache.prune(|| Ok([kept.clone()].into())).unwrap();
        assert_eq!(
            report,
            BlobPrune {
                removed: 1,
                bytes_freed: 11
            }
        );
        assert!(cache.contains(&kept) && !cache.contains(&dropped));
        let partial_file = cache
            .dir(Algorithm::Sha256)
            .join(format!("{}.partial", partial.hex()));
        assert!(partial_file.exists());
    }

    #[test]
    fn download_resumes_and_rejects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlobCache::new(dir.path());
        let data = b"0123456789".repeat(100);
        let d = Digest::sha256_of(&data);
        let Download::Partial(mut p) = cache.begin_download(&d).unwrap() else {
            panic!("present")
        };
        p.write(&data[..300]).unwrap();
        drop(p); // as if the process died
        let Download::Partial(mut p) = cache.begin_download(&d).unwrap() else {
            panic!("present")
        };
        assert_eq!(p.offset(), 300);
        p.write(&data[300..]).unwrap();
        p.commit(Some(1000)).unwrap();
        assert!(cache.contains(&d));
        assert!(matches!(
            cache.begin_download(&d).unwrap(),
            Download::Present
        ));

        let d2 = Digest::sha256_of(b"good");
        let Download::Partial(mut p) = cache.begin_download(&d2).unwrap() else {
            panic!("present")
        };
        p.write(b"evil").unwrap();
        let err = p.commit(None).unwrap_err();
        assert!(err.to_string().contains(&d2.to_string()), "{err}");
        assert!(!cache.contains(&d2));
        let leftovers: Vec<_> = std::fs::read_dir(cache.dir(Algorithm::Sha256))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().ends_with(".partial"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
