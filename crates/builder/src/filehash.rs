//! Content hashes of build-context files, remembered by (path, size,
//! inode, mtime, ctime) so an unchanged rebuild does not read the context
//! again. Stored as `<cache>/build/filehash.json`, rewritten after builds.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    size: u64,
    ino: u64,
    mtime: i64,
    mtime_ns: i64,
    ctime: i64,
    ctime_ns: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    path: PathBuf,
    stamp: Stamp,
    sha256: String,
}

/// The remembered hashes.
#[derive(Debug, Default)]
pub struct FileHashes {
    map: HashMap<PathBuf, (Stamp, String)>,
    dirty: bool,
}

fn stamp(md: &std::fs::Metadata) -> Stamp {
    Stamp {
        size: md.size(),
        ino: md.ino(),
        mtime: md.mtime(),
        mtime_ns: md.mtime_nsec(),
        ctime: md.ctime(),
        ctime_ns: md.ctime_nsec(),
    }
}

impl FileHashes {
    pub fn load(path: &Path) -> FileHashes {
        let entries: Vec<Entry> = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        FileHashes {
            map: entries
                .into_iter()
                .map(|e| (e.path, (e.stamp, e.sha256)))
                .collect(),
            dirty: false,
        }
    }

    /// Writes the hashes back (best effort: a lost cache only costs time).
    pub fn save(&self, path: &Path) {
        if !self.dirty {
            return;
        }
        let entries: Vec<Entry> = self
            .map
            .iter()
            .map(|(p, (s, h))| Entry {
                path: p.clone(),
                stamp: s.clone(),
                sha256: h.clone(),
            })
            .collect();
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if let Ok(json) = serde_json::to_vec(&entries) {
            if std::fs::write(&tmp, json).is_ok() && std::fs::rename(&tmp, path).is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
        }
    }

    /// The hex sha256 of the file at `host`, from memory when its stamp is
    /// unchanged; `read` supplies the content otherwise.
    pub fn hash(
        &mut self,
        host: &Path,
        read: impl FnOnce() -> Result<Box<dyn std::io::Read + Send>, String>,
    ) -> Result<String, String> {
        let md = std::fs::symlink_metadata(host).map_err(|e| format!("{}: {e}", host.display()))?;
        let st = stamp(&md);
        if let Some((s, h)) = self.map.get(host) {
            if *s == st {
                return Ok(h.clone());
            }
        }
        let mut r = read()?;
        let mut h = Sha256::new();
        std::io::copy(&mut r, &mut h).map_err(|e| format!("{}: {e}", host.display()))?;
        let hex = hex::encode(h.finalize());
        // A file changed within the last seconds could change again within
        // the same timestamp tick: do not remember it.
        let now = crate::util::now_unix();
        if now - st.mtime > 2 && now - st.ctime > 2 {
            self.map.insert(host.to_path_buf(), (st, hex.clone()));
            self.dirty = true;
        }
        Ok(hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_unchanged_files_and_notices_changes() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("f");
        std::fs::write(&f, "one").unwrap();
        // Old enough to be remembered.
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let open = |p: PathBuf| {
            move || -> Result<Box<dyn std::io::Read + Send>, String> {
                Ok(Box::new(
                    std::fs::File::open(&p).map_err(|e| e.to_string())?,
                ))
            }
        };
        let mut h = FileHashes::default();
        let first = h.hash(&f, open(f.clone())).unwrap();
        // ctime is fresh here, so it is not remembered yet: still correct.
        assert_eq!(h.hash(&f, open(f.clone())).unwrap(), first);
        std::fs::write(&f, "two").unwrap();
        assert_ne!(h.hash(&f, open(f.clone())).unwrap(), first);
        // A remembered stamp short-circuits the read.
        let st = stamp(&std::fs::symlink_metadata(&f).unwrap());
        h.map.insert(f.clone(), (st, "cafe".into()));
        let never = || -> Result<Box<dyn std::io::Read + Send>, String> { Err("read".into()) };
        assert_eq!(h.hash(&f, never).unwrap(), "cafe");
        h.dirty = true;
        let store = d.path().join("hashes.json");
        h.save(&store);
        assert_eq!(FileHashes::load(&store).map.len(), 1);
    }
}
