//! Records of images in the cache (pulled, imported or built), so `image ls`
//! can list them and `FROM` can resolve to them without a registry.
//!
//! Layout: `<cache-root>/images/<registry>/<repository>/<tag-or-digest>/<os>_<arch>[_<variant>].json`;
//! imported images use the registry directory `_local`.

use std::fs::Permissions;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cache::BlobCache;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image_config::ImageConfigFile;
use crate::manifest::ImageManifest;
use crate::reference::{ImageRef, Platform};
use crate::unpack::{apply_layer_file, UnpackOptions};

/// The registry directory of imported images.
pub const LOCAL_REGISTRY: &str = "_local";

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ImageSource {
    /// Pulled from a registry (through `endpoint`, which is a mirror or the registry).
    Registry { endpoint: String },
    /// Made by `image import` from a file or directory.
    Imported { from: PathBuf },
    /// Assembled locally (e.g. by the test helpers or a build).
    Built,
}

/// One layer of a recorded image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct LayerRecord {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
}

impl LayerRecord {
    /// The records of a manifest's layers.
    pub(crate) fn of_manifest(manifest: &ImageManifest) -> Vec<LayerRecord> {
        manifest
            .layers
            .iter()
            .map(|l| LayerRecord {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                size: l.size,
            })
            .collect()
    }
}

/// An image whose manifest, config and layers are all in the blob cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageRecord {
    /// What the user asked for, canonical (`docker.io/library/alpine:3.20`,
    /// or `name:version` for imports).
    pub reference: String,
    pub registry: String,
    pub repository: String,
    /// Tag, or digest string when pulled by digest.
    pub key: String,
    pub source: ImageSource,
    /// Digest of the image manifest.
    pub digest: Digest,
    /// Digest of the index / manifest list the manifest was chosen from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<Digest>,
    pub platform: Platform,
    pub manifest_media_type: String,
    pub config_digest: Digest,
    pub layers: Vec<LayerRecord>,
    /// The image config (env, entrypoint, cmd, user, workdir, ports, labels,
    /// stop signal, healthcheck, onbuild, …).
    pub config: ImageConfigFile,
    /// Seconds since the Unix epoch, UTC.
    pub recorded_at_utc: i64,
}

impl ImageRecord {
    /// Total compressed size of the layers.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }

    /// The digest users pin (`repo@digest`): the index's when there was one.
    pub fn top_digest(&self) -> &Digest {
        self.index_digest.as_ref().unwrap_or(&self.digest)
    }

    /// Whether this is the copy of `tagged`'s record filed under its digest
    /// (so `FROM repo@sha256:…` resolves offline), not an image of its own.
    pub fn is_digest_twin_of(&self, tagged: &ImageRecord) -> bool {
        self.key != tagged.key
            && self.key == tagged.top_digest().to_string()
            && tagged.key.parse::<Digest>().is_err()
            && (&self.registry, &self.repository, &self.platform)
                == (&tagged.registry, &tagged.repository, &tagged.platform)
    }

    /// Applies every layer, bottom first, to `rootfs` (created if missing).
    pub fn unpack(&self, cache: &BlobCache, rootfs: &Path, opts: &UnpackOptions) -> Result<()> {
        for layer in &self.layers {
            if !cache.contains(&layer.digest) {
                return Err(Error::BlobMissing {
                    digest: layer.digest.to_string(),
                    cache: cache.root().to_path_buf(),
                });
            }
        }
        for layer in &self.layers {
            apply_layer_file(
                rootfs,
                &cache.blob_path(&layer.digest),
                &format!("layer {}", layer.digest),
                opts,
            )?;
        }
        Ok(())
    }
}

/// The image records under a cache root.
#[derive(Debug, Clone)]
pub struct ImageRecords {
    dir: PathBuf,
}

impl ImageRecords {
    pub fn new(cache_root: &Path) -> ImageRecords {
        ImageRecords {
            dir: cache_root.join("images"),
        }
    }

    fn key_dir(&self, registry: &str, repository: &str, key: &str) -> PathBuf {
        let mut p = self.dir.join(registry);
        for part in repository.split('/') {
            p.push(part);
        }
        p.join(key)
    }

    fn record_path(
        &self,
        registry: &str,
        repository: &str,
        key: &str,
        platform: &Platform,
    ) -> PathBuf {
        self.key_dir(registry, repository, key)
            .join(format!("{}.json", platform.file_stem()))
    }

    /// Writes `record` (atomically) under its registry/repository/key.
    pub fn save(&self, record: &ImageRecord) -> Result<PathBuf> {
        let path = self.record_path(
            &record.registry,
            &record.repository,
            &record.key,
            &record.platform,
        );
        let dir = path.parent().unwrap_or(&self.dir).to_path_buf();
        // Records name private repositories and their configs: root's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| std::fs::set_permissions(&self.dir, Permissions::from_mode(0o700)))
            .map_err(Error::io("creating image record directory", &dir))?;
        let json = serde_json::to_vec_pretty(record)
            .map_err(|e| Error::io("encoding image record", &path)(e.into()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&dir)
            .map_err(Error::io("creating image record in", &dir))?;
        std::io::Write::write_all(&mut tmp, &json)
            .map_err(Error::io("writing image record", &path))?;
        tmp.persist(&path)
            .map_err(|e| Error::io("storing image record", &path)(e.error))?;
        Ok(path)
    }

    /// The record for a registry reference and platform, if pulled.
    pub fn lookup(&self, reference: &ImageRef, platform: &Platform) -> Result<Option<ImageRecord>> {
        self.lookup_key(
            reference.registry(),
            reference.repository(),
            &reference.record_key(),
            platform,
        )
    }

    /// The record of an imported image (`name:version`), if any.
    pub fn lookup_local(&self, name: &str, platform: &Platform) -> Result<Option<ImageRecord>> {
        let (repo, tag) = split_local_name(name)?;
        self.lookup_key(LOCAL_REGISTRY, &repo, &tag, platform)
    }

    fn lookup_key(
        &self,
        registry: &str,
        repository: &str,
        key: &str,
        platform: &Platform,
    ) -> Result<Option<ImageRecord>> {
        let dir = self.key_dir(registry, repository, key);
        let exact = self.record_path(registry, repository, key, platform);
        if let Some(r) = read_record(&exact)? {
            return Ok(Some(r));
        }
        // A request without a variant matches a record with one (linux/arm64 → v8).
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("reading image records", &dir)(e)),
        };
        for entry in entries.flatten() {
            if let Some(r) = read_record(&entry.path())? {
                let p = &r.platform;
                if platform.matches(&p.os, &p.architecture, p.variant.as_deref()) {
                    return Ok(Some(r));
                }
            }
        }
        Ok(None)
    }

    /// One record per image, sorted by reference then platform: a pull by
    /// tag also files its record under the digest (see
    /// [`ImageRecord::is_digest_twin_of`]); that twin is left out.
    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let all = self.list_all()?;
        let images = all
            .iter()
            .filter(|r| !all.iter().any(|other| r.is_digest_twin_of(other)))
            .cloned()
            .collect();
        Ok(images)
    }

    /// Every blob the recorded images need: manifests, indexes, configs
    /// and layers.
    pub fn referenced_blobs(&self) -> Result<std::collections::HashSet<Digest>> {
        let mut out = std::collections::HashSet::new();
        for r in self.list_all()? {
            out.insert(r.digest.clone());
            out.insert(r.config_digest.clone());
            out.extend(r.index_digest.clone());
            out.extend(r.layers.iter().map(|l| l.digest.clone()));
        }
        Ok(out)
    }

    /// Every record file, digest twins included.
    fn list_all(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        let mut stack = vec![self.dir.clone()];
        while let Some(dir) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("reading image records", &dir)(e)),
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "json")
                    && !entry.file_name().to_string_lossy().starts_with('.')
                {
                    match read_record(&path) {
                        Ok(Some(r)) => out.push(r),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "skipping unreadable image record"),
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (&a.reference, a.platform.to_string()).cmp(&(&b.reference, b.platform.to_string()))
        });
        Ok(out)
    }

    /// Removes the record of `record`'s reference for its platform, and
    /// its digest twin unless another tag still names that image. Blobs
    /// stay in the cache until `image prune` (other images may share them).
    pub fn remove(&self, record: &ImageRecord) -> Result<()> {
        let all = self.list_all()?;
        let twins = all.iter().filter(|twin| {
            twin.is_digest_twin_of(record)
                && !all
                    .iter()
                    .any(|other| other.key != record.key && twin.is_digest_twin_of(other))
        });
        for r in std::iter::once(record).chain(twins) {
            let path = self.record_path(&r.registry, &r.repository, &r.key, &r.platform);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("removing image record", &path)(e)),
            }
        }
        Ok(())
    }
}

fn read_record(path: &Path) -> Result<Option<ImageRecord>> {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("reading image record", path)(e)),
    };
    serde_json::from_slice(&data)
        .map(Some)
        .map_err(|e| Error::io("parsing image record", path)(e.into()))
}

/// Splits an import name `org/name:version` (version defaults to `latest`)
/// and checks that it is safe as a path.
pub(crate) fn split_local_name(name: &str) -> Result<(String, String)> {
    let bad = |reason: &str| Error::InvalidReference {
        reference: name.to_string(),
        reason: reason.to_string(),
    };
    let (repo, tag) = match name.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (name, "latest"),
    };
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c);
    let repo_ok = !repo.is_empty()
        && repo
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && c.chars().all(ok_char));
    if !repo_ok {
        return Err(bad(
            "the name must be lowercase letters, digits, '.', '_', '-' and '/'",
        ));
    }
    let tag_ok = !tag.is_empty()
        && tag.len() <= 128
        && !tag.starts_with('.')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !tag_ok {
        return Err(bad("the version must be letters, digits, '.', '_' and '-'"));
    }
    Ok((repo.to_string(), tag.to_string()))
}

/// Seconds since the Unix epoch.
pub(crate) fn now_utc() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, digest: &Digest) -> ImageRecord {
        ImageRecord {
            reference: "docker.io/library/alpine:3.20".into(),
            registry: "docker.io".into(),
            repository: "library/alpine".into(),
            key: key.into(),
            source: ImageSource::Built,
            digest: digest.clone(),
            index_digest: None,
            platform: Platform::host(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            config_digest: Digest::sha256_of(b"config"),
            layers: Vec::new(),
            config: ImageConfigFile::default(),
            recorded_at_utc: 0,
        }
    }

    #[test]
    fn a_pull_by_tag_is_one_image_and_rm_takes_its_digest_twin_last() {
        let dir = tempfile::tempdir().unwrap();
        let records = ImageRecords::new(dir.path());
        let digest = Digest::sha256_of(b"manifest");
        let tagged = record("3.20", &digest);
        let twin = record(&digest.to_string(), &digest);
        let latest = record("latest", &digest);
        for r in [&tagged, &twin, &latest] {
            records.save(r).unwrap();
        }
        // Records are root's alone, from the records root down.
        for d in ["images", "images/docker.io"] {
            let mode = std::fs::metadata(dir.path().join(d))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{d}");
        }
        // An image pulled by digest alone is listed.
        let other = Digest::sha256_of(b"other manifest");
        records.save(&record(&other.to_string(), &other)).unwrap();
        let keys = |rs: Vec<ImageRecord>| rs.into_iter().map(|r| r.key).collect::<Vec<_>>();
        let mut listed = keys(records.list().unwrap());
        listed.sort();
        let mut want = vec!["3.20".to_string(), "latest".into(), other.to_string()];
        want.sort();
        assert_eq!(listed, want);
        // Another tag still names the image: its digest twin stays.
        records.remove(&tagged).unwrap();
        assert_eq!(records.list_all().unwrap().len(), 3);
        assert!(records
            .lookup_key(
                "docker.io",
                "library/alpine",
                &digest.to_string(),
                &Platform::host()
            )
            .unwrap()
            .is_some());
        records.remove(&latest).unwrap();
        assert_eq!(keys(records.list_all().unwrap()), vec![other.to_string()]);
    }

    #[test]
    fn local_names() {
        assert_eq!(
            split_local_name("org/app:1.0").unwrap(),
            ("org/app".into(), "1.0".into())
        );
        assert_eq!(
            split_local_name("app").unwrap(),
            ("app".into(), "latest".into())
        );
        for bad in ["", "../x:1", "a//b:1", "A:1", "a:", "a:.x", "a/./b"] {
            assert!(split_local_name(bad).is_err(), "{bad} accepted");
        }
    }
}
