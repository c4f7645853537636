//! Where this cache's blobs are known to live: the registry repositories it
//! pushed them to or pulled them from (`<cache>/blob-sources/<hex>`, one
//! `host/repository` per line, newest first). A push to another repository
//! of the same registry asks the registry to mount the blob from there
//! (a cross-repository mount) instead of uploading it again.
//!
//! Only a hint: a registry that refuses the mount (no such blob any more,
//! no pull access to the source) gets the upload.

use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

use crate::digest::Digest;

/// Repositories remembered per blob.
const KEPT: usize = 8;

#[derive(Debug, Clone)]
pub(crate) struct BlobSources {
    dir: PathBuf,
}

impl BlobSources {
    pub(crate) fn new(cache_root: &std::path::Path) -> BlobSources {
        BlobSources {
            dir: cache_root.join("blob-sources"),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(digest.hex())
    }

    /// The repositories of `host` known to hold `digest`, newest first.
    pub(crate) fn on(&self, digest: &Digest, host: &str) -> Vec<String> {
        let Ok(text) = std::fs::read_to_string(self.path(digest)) else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|l| l.split_once('/'))
            .filter(|(h, _)| *h == host)
            .map(|(_, repo)| repo.to_owned())
            .collect()
    }

    /// Notes that `host/repository` holds `digest` (best effort: a hint
    /// that cannot be written is only a slower push later).
    pub(crate) fn record(&self, digest: &Digest, host: &str, repository: &str) {
        let entry = format!("{host}/{repository}");
        let path = self.path(digest);
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old.lines().next() == Some(entry.as_str()) {
            return;
        }
        let mut lines = vec![entry.as_str()];
        lines.extend(old.lines().filter(|l| *l != entry).take(KEPT - 1));
        let text = lines.join("\n") + "\n";
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let written = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .and_then(|()| std::fs::write(&tmp, text))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(blob = %digest, error = %e, "could not note where the blob is");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_newest_repositories_per_registry() {
        let d = tempfile::tempdir().unwrap();
        let s = BlobSources::new(d.path());
        let digest = crate::cache::BlobCache::new(d.path())
            .insert_bytes(b"x")
            .unwrap();
        assert!(s.on(&digest, "r:5000").is_empty());
        s.record(&digest, "r:5000", "a/one");
        s.record(&digest, "other", "a/one");
        s.record(&digest, "r:5000", "b/two");
        s.record(&digest, "r:5000", "a/one");
        assert_eq!(s.on(&digest, "r:5000"), ["a/one", "b/two"]);
        assert_eq!(s.on(&digest, "other"), ["a/one"]);
        for i in 0..20 {
            s.record(&digest, "r:5000", &format!("many/{i}"));
        }
        assert_eq!(s.on(&digest, "r:5000").len(), KEPT);
        assert_eq!(s.on(&digest, "r:5000")[0], "many/19");
    }
}
