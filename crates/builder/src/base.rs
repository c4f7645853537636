//! FROM resolution: a stored baseos/rootfs tag first, then an image pulled
//! before (or imported), then the registry; `scratch` is empty. Each base
//! becomes one cached layer (or, for a tag this cache built, its layers).

use std::collections::HashMap;
use std::str::FromStr;

use firebuild_oci::{
    BlobCache, ImageRecord, ImageRecords, ImageRef, Platform, Registry, RegistryConfig, SizeLimit,
    UnpackOptions, DEFAULT_UNPACKED_LIMIT,
};
use firebuild_store::{DirectoryStore, Tag};

use crate::config::ImageConfig;
use crate::error::{BuildError, Result};
use crate::layers::{Key, LayerId, LayerStore};

/// A resolved base: the filesystem state and the config it brings.
#[derive(Debug, Clone)]
pub struct Base {
    pub key: Key,
    pub top: Option<LayerId>,
    pub config: ImageConfig,
    /// What to record as the parent: the stored tag or the image reference.
    pub parent: Option<String>,
    /// Registry manifest digest (or the stored rootfs digest).
    pub digest: Option<String>,
}

impl Base {
    pub fn scratch() -> Base {
        Base {
            key: Key::derive(None, "scratch"),
            top: None,
            config: ImageConfig::default(),
            parent: None,
            digest: None,
        }
    }
}

/// Resolves and caches bases for one build.
pub struct Resolver<'a> {
    pub store: &'a DirectoryStore,
    pub layers: &'a LayerStore,
    pub cache_dir: &'a std::path::Path,
    pub registry_config: &'a RegistryConfig,
    pub platform: Platform,
    /// What one base image may unpack to (the profile's
    /// `unpacked-size-limit`).
    pub unpacked_limit: u64,
    registry: Option<Registry>,
    runtime: Option<tokio::runtime::Runtime>,
    memo: HashMap<String, Base>,
}

impl<'a> Resolver<'a> {
    pub fn new(
        store: &'a DirectoryStore,
        layers: &'a LayerStore,
        cache_dir: &'a std::path::Path,
        registry_config: &'a RegistryConfig,
        platform: Platform,
    ) -> Self {
        Resolver {
            store,
            layers,
            cache_dir,
            registry_config,
            platform,
            unpacked_limit: DEFAULT_UNPACKED_LIMIT,
            registry: None,
            runtime: None,
            memo: HashMap::new(),
        }
    }

    /// The base for `reference` (already expanded), for the build's platform.
    pub fn resolve(&mut self, reference: &str) -> Result<Base> {
        self.resolve_for(reference, None)
    }

    /// The base for `reference` for `platform` (`FROM --platform=`), or the
    /// build's platform.
    pub fn resolve_for(&mut self, reference: &str, platform: Option<&str>) -> Result<Base> {
        if reference == "scratch" {
            return Ok(Base::scratch());
        }
        let platform = match platform {
            Some(p) => Platform::from_str(p).map_err(|e| BuildError::BaseImage {
                reference: reference.to_owned(),
                message: format!("--platform={p}: {e}"),
            })?,
            None => self.platform.clone(),
        };
        let memo_key = format!("{reference}\0{platform:?}");
        if let Some(b) = self.memo.get(&memo_key) {
            return Ok(b.clone());
        }
        let base = match self.stored_tag(reference) {
            Some(tag) => self.stored_base(&tag)?,
            None => match self.imported(reference, &platform) {
                Some(record) => self.record_base(reference, &record, &self.blobs())?,
                None => self.registry_base(reference, &platform)?,
            },
        };
        self.memo.insert(memo_key, base.clone());
        Ok(base)
    }

    /// The stored tag a reference names, if one is stored (`name` alone
    /// means `name:latest`, as in Docker).
    fn stored_tag(&self, reference: &str) -> Option<Tag> {
        if reference.contains('@') {
            return None;
        }
        let with_version = if reference.rsplit('/').next()?.contains(':') {
            reference.to_owned()
        } else {
            format!("{reference}:latest")
        };
        let tag = Tag::from_str(&with_version).ok()?;
        self.store.contains(&tag).then_some(tag)
    }

    fn stored_base(&mut self, tag: &Tag) -> Result<Base> {
        let stored = self.store.get(tag)?;
        let md = &stored.metadata;
        let config = ImageConfig::from_metadata(md);
        let parent = Some(tag.to_string());
        // Built by this cache and still whole: reuse its layers directly.
        if let Some(r) = self.layers.read_ref(&tag.to_string()) {
            let whole = r
                .top
                .as_ref()
                .is_none_or(|t| self.layers.chain(Some(t)).is_ok());
            if whole && r.rootfs_digest.is_some() && r.rootfs_digest == md.rootfs_digest {
                if let Some(key) = key_from_hex(&r.key) {
                    tracing::info!(tag = %tag, "FROM a stored image: reusing its cached layers");
                    return Ok(Base {
                        key,
                        top: r.top,
                        config,
                        parent,
                        digest: md.rootfs_digest.clone(),
                    });
                }
            }
        }
        let rootfs = stored.rootfs_path();
        let digest = match &md.rootfs_digest {
            Some(d) => d.clone(),
            None => {
                crate::util::sha256_file(&rootfs).map_err(BuildError::io("hashing", &rootfs))?
            }
        };
        let key = Key::derive(None, &format!("store:{digest}"));
        if let Some(meta) = self.layers.lookup(&key) {
            return Ok(Base {
                key,
                top: Some(meta.id),
                config,
                parent,
                digest: Some(digest),
            });
        }
        tracing::info!(tag = %tag, "FROM a stored image: reading its files from the ext4 image");
        let work = self.layers.new_work()?;
        crate::ext4::import_ext4(&rootfs, &work.diff())?;
        let meta = self
            .layers
            .commit(work, &key, None, &format!("FROM {tag}"))?;
        Ok(Base {
            key,
            top: Some(meta.id),
            config,
            parent,
            digest: Some(digest),
        })
    }

    /// The record of an image `image import`ed as `reference`, if one is
    /// there with all its blobs: like a stored tag, it needs no registry.
    fn imported(&self, reference: &str, platform: &Platform) -> Option<ImageRecord> {
        let blobs = self.blobs();
        ImageRecords::new(self.cache_dir)
            .lookup_local(reference, platform)
            .ok()
            .flatten()
            .filter(|rec| rec.layers.iter().all(|l| blobs.contains(&l.digest)))
    }

    fn blobs(&self) -> BlobCache {
        BlobCache::new(self.cache_dir)
    }

    fn registry(&mut self) -> Result<(&Registry, &tokio::runtime::Runtime)> {
        if self.runtime.is_none() {
            self.runtime = Some(
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| BuildError::Sandbox(format!("starting the async runtime: {e}")))?,
            );
        }
        if self.registry.is_none() {
            self.registry = Some(
                Registry::new(self.cache_dir, self.registry_config.clone())
                    .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            );
        }
        match (&self.registry, &self.runtime) {
            (Some(r), Some(rt)) => Ok((r, rt)),
            _ => Err(BuildError::Sandbox("registry client unavailable".into())),
        }
    }

    fn registry_base(&mut self, reference: &str, platform: &Platform) -> Result<Base> {
        let err = |message: String| BuildError::BaseImage {
            reference: reference.to_owned(),
            message,
        };
        let image_ref = ImageRef::from_str(reference).map_err(|e| err(e.to_string()))?;
        let platform = platform.clone();
        let (registry, rt) = self.registry()?;
        // An image pulled before is used as is, like Docker's
        // FROM with a local image: rebuilds need no registry round trip.
        let local = registry
            .records()
            .lookup(&image_ref, &platform)
            .ok()
            .flatten()
            .filter(|rec| {
                rec.layers
                    .iter()
                    .all(|l| registry.cache().contains(&l.digest))
            });
        let record = match local {
            Some(r) => r,
            None => {
                tracing::info!(image = %reference, "pulling");
                rt.block_on(registry.pull(&image_ref, &platform))
                    .map_err(|e| err(format!("{e} (no stored image has this tag either)")))?
            }
        };
        let blobs = registry.cache().clone();
        self.record_base(reference, &record, &blobs)
    }

    /// The base of an image record the caller has (an image it just
    /// pulled): used as is, whatever a stored tag of the same name holds.
    pub fn resolve_record(&mut self, reference: &str, record: &ImageRecord) -> Result<Base> {
        let blobs = self.blobs();
        self.record_base(reference, record, &blobs)
    }

    /// The base an OCI image record gives: its layers unpacked once into
    /// one cached layer, within the unpacked-size limit.
    fn record_base(
        &self,
        reference: &str,
        record: &ImageRecord,
        blobs: &BlobCache,
    ) -> Result<Base> {
        let err = |message: String| BuildError::BaseImage {
            reference: reference.to_owned(),
            message,
        };
        let layers = self.layers;
        let digest = record.digest.to_string();
        let key = Key::derive(None, &format!("oci:{digest}"));
        let config = from_oci_config(&record.config.config);
        let top = match layers.lookup(&key) {
            Some(meta) => meta.id,
            None => {
                let work = layers.new_work()?;
                let opts = UnpackOptions {
                    limit: SizeLimit::new(self.unpacked_limit),
                    ..Default::default()
                };
                record
                    .unpack(blobs, &work.diff(), &opts)
                    .map_err(|e| err(format!("unpacking: {e}")))?;
                layers
                    .commit(work, &key, None, &format!("FROM {reference}"))?
                    .id
            }
        };
        Ok(Base {
            key,
            top: Some(top),
            config,
            parent: Some(reference.to_owned()),
            digest: Some(digest),
        })
    }
}

fn key_from_hex(s: &str) -> Option<Key> {
    let bytes = hex::decode(s).ok()?;
    Some(Key(bytes.try_into().ok()?))
}

/// Our image config from an OCI image's config.
pub fn from_oci_config(c: &firebuild_oci::ImageConfig) -> ImageConfig {
    ImageConfig {
        env: c.env_pairs(),
        entrypoint: c.entrypoint.clone().filter(|v| !v.is_empty()),
        cmd: c.cmd.clone().filter(|v| !v.is_empty()),
        user: c.user.clone(),
        workdir: c.working_dir.clone(),
        shell: c.shell.clone(),
        ports: c.exposed_ports.keys().cloned().collect(),
        volumes: c.volumes.keys().cloned().collect(),
        labels: c.labels.clone(),
        stop_signal: c.stop_signal.clone().filter(|s| !s.is_empty()),
        healthcheck: c.healthcheck_metadata().filter(|h| !h.test.is_empty()),
        onbuild: c.on_build.clone(),
    }
}
