//! Assembling an image in the blob cache from layer tarballs and a config:
//! the push path (tests put images into registries with it, and built root
//! filesystems are published with it) and the last step of `import`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::Path;

use crate::cache::BlobCache;
use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::error::{Error, Result};
use crate::image_config::{History, ImageConfig, ImageConfigFile};
use crate::images::{
    now_utc, split_local_name, ImageRecord, ImageSource, LayerRecord, LOCAL_REGISTRY,
};
use crate::manifest::{self, Compression, Descriptor, ImageManifest};
use crate::reference::Platform;

/// Builds an OCI image (config + manifest + layers) in the blob cache.
pub struct ImageBuilder<'c> {
    cache: &'c BlobCache,
    layers: Vec<LayerRecord>,
    config: ImageConfigFile,
    annotations: BTreeMap<String, String>,
}

impl<'c> ImageBuilder<'c> {
    /// An empty image for `platform`.
    pub fn new(cache: &'c BlobCache, platform: &Platform) -> ImageBuilder<'c> {
        ImageBuilder {
            cache,
            layers: Vec::new(),
            config: ImageConfigFile::new(platform),
            annotations: BTreeMap::new(),
        }
    }

    /// Starts from an image in the cache: its layers (as they are, same
    /// blobs), their diff IDs, its history and its config, so layers added
    /// next go on top of it.
    pub fn on_top_of(cache: &'c BlobCache, base: &ImageRecord) -> Result<ImageBuilder<'c>> {
        if base.layers.len() != base.config.rootfs.diff_ids.len() {
            return Err(Error::Push {
                reference: base.reference.clone(),
                reason: format!(
                    "its config lists {} diff IDs for {} layers",
                    base.config.rootfs.diff_ids.len(),
                    base.layers.len()
                ),
            });
        }
        Ok(ImageBuilder {
            cache,
            layers: base.layers.clone(),
            config: base.config.clone(),
            annotations: BTreeMap::new(),
        })
    }

    /// Sets an annotation of the manifest.
    pub fn annotate(&mut self, key: &str, value: &str) {
        self.annotations.insert(key.to_owned(), value.to_owned());
    }

    /// The whole config file (created time, history, …).
    pub fn config_file_mut(&mut self) -> &mut ImageConfigFile {
        &mut self.config
    }

    /// Starts from an existing config (its `rootfs.diff_ids` are replaced by
    /// the layers added here).
    pub fn with_config(mut self, config: ImageConfigFile) -> Self {
        self.config = config;
        self.config.rootfs.diff_ids.clear();
        self
    }

    /// The run configuration (env, entrypoint, cmd, …) to fill in.
    pub fn config_mut(&mut self) -> &mut ImageConfig {
        &mut self.config.config
    }

    /// Adds an uncompressed tar stream as a layer, compressed as asked.
    /// Returns the layer blob's digest.
    pub fn add_layer_reader(
        &mut self,
        tar: &mut dyn Read,
        compression: Compression,
    ) -> Result<Digest> {
        let tmp = self.cache.temp_file()?;
        let tmp_path = tmp.path().to_path_buf();
        let io_err = Error::io("writing layer blob", &tmp_path);
        let mut src = HashingReader::new(tar);
        let out = HashingWriter::new(tmp);
        let out = match compression {
            Compression::None => {
                let mut out = out;
                std::io::copy(&mut src, &mut out).map_err(io_err)?;
                out
            }
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(out, flate2::Compression::new(6));
                std::io::copy(&mut src, &mut enc)
                    .and_then(|_| enc.finish())
                    .map_err(io_err)?
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, 3)
                    .map_err(Error::io("starting zstd for", &tmp_path))?;
                std::io::copy(&mut src, &mut enc)
                    .and_then(|_| enc.finish())
                    .map_err(io_err)?
            }
        };
        let (diff_id, _) = src.finish();
        let (mut tmp, digest, size) = out.finish();
        tmp.flush()
            .map_err(Error::io("writing layer blob", &tmp_path))?;
        if !self.cache.contains(&digest) {
            self.cache.persist(tmp, &digest)?;
        }
        self.push_layer(digest.clone(), compression.oci_media_type(), size, diff_id);
        Ok(digest)
    }

    /// Adds a layer blob already in the cache whose diff ID is known
    /// (checked only by whoever reads the image: computing it again would
    /// mean decompressing the layer).
    pub fn add_known_layer(&mut self, layer: LayerRecord, diff_id: Digest) -> Result<()> {
        if !self.cache.contains(&layer.digest) {
            return Err(Error::BlobMissing {
                digest: layer.digest.to_string(),
                cache: self.cache.root().to_path_buf(),
            });
        }
        self.push_layer(layer.digest, &layer.media_type, layer.size, diff_id);
        Ok(())
    }

    /// The layer added last and its diff ID.
    pub fn last_layer(&self) -> Option<(&LayerRecord, &Digest)> {
        Some((self.layers.last()?, self.config.rootfs.diff_ids.last()?))
    }

    /// Says what made the layer added last (its history entry).
    pub fn describe_last_layer(&mut self, created_by: &str) {
        if let Some(h) = self.config.history.last_mut() {
            h.created_by = Some(created_by.to_owned());
        }
    }

    /// Adds an uncompressed tar held in memory as a layer.
    pub fn add_layer_tar(&mut self, tar: &[u8], compression: Compression) -> Result<Digest> {
        self.add_layer_reader(&mut &tar[..], compression)
    }

    /// Adds a layer file (plain, gzip or zstd tar, detected from its
    /// content) as it is, without recompressing.
    pub fn add_layer_file(&mut self, path: &Path) -> Result<Digest> {
        let mut file = std::fs::File::open(path).map_err(Error::io("opening layer", path))?;
        let (digest, size) = self.cache.insert_reader(&mut file)?;
        let (compression, diff_id) = diff_id_of(self.cache, &digest)?;
        self.push_layer(digest.clone(), compression.oci_media_type(), size, diff_id);
        Ok(digest)
    }

    /// Adds a layer blob that is already in the cache.
    pub fn add_cached_layer(&mut self, digest: &Digest) -> Result<()> {
        let size = std::fs::metadata(self.cache.blob_path(digest))
            .map_err(Error::io(
                "reading cached layer",
                self.cache.blob_path(digest),
            ))?
            .len();
        let (compression, diff_id) = diff_id_of(self.cache, digest)?;
        self.push_layer(digest.clone(), compression.oci_media_type(), size, diff_id);
        Ok(())
    }

    fn push_layer(&mut self, digest: Digest, media_type: &str, size: u64, diff_id: Digest) {
        self.layers.push(LayerRecord {
            digest,
            media_type: media_type.to_string(),
            size,
        });
        self.config.rootfs.diff_ids.push(diff_id);
        self.config.history.push(History {
            created_by: Some("firebuild".into()),
            ..Default::default()
        });
    }

    /// Writes config and manifest into the cache and returns the record,
    /// named `name` (`org/name:version`) in the local namespace. The record
    /// is not saved: call [`ImageRecords::save`](crate::ImageRecords::save)
    /// to make it visible to `image ls` and `FROM`.
    pub fn build(self, name: &str, source: ImageSource) -> Result<ImageRecord> {
        let (repository, tag) = split_local_name(name)?;
        let config_json = serde_json::to_vec(&self.config)
            .map_err(|e| Error::io("encoding image config", self.cache.root())(e.into()))?;
        let config_digest = self.cache.insert_bytes(&config_json)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.to_string()),
            artifact_type: None,
            config: Descriptor::new(
                manifest::OCI_CONFIG,
                config_digest.clone(),
                config_json.len() as u64,
            ),
            layers: self
                .layers
                .iter()
                .map(|l| Descriptor::new(&l.media_type, l.digest.clone(), l.size))
                .collect(),
            annotations: self.annotations,
        };
        let manifest_json = serde_json::to_vec(&manifest)
            .map_err(|e| Error::io("encoding image manifest", self.cache.root())(e.into()))?;
        let digest = self.cache.insert_bytes(&manifest_json)?;
        Ok(ImageRecord {
            reference: format!("{repository}:{tag}"),
            registry: LOCAL_REGISTRY.to_string(),
            repository,
            key: tag,
            source,
            digest,
            index_digest: None,
            platform: self.config.platform(),
            manifest_media_type: manifest::OCI_MANIFEST.to_string(),
            config_digest,
            layers: self.layers,
            config: self.config,
            recorded_at_utc: now_utc(),
        })
    }
}

/// The compression and uncompressed digest (diff ID) of a cached layer.
pub(crate) fn diff_id_of(cache: &BlobCache, digest: &Digest) -> Result<(Compression, Digest)> {
    diff_id_of_file(cache.open(digest)?, &cache.blob_path(digest))
}

/// The compression and diff ID (digest of the uncompressed tar) of the
/// layer in `file`; `path` names it in errors.
pub(crate) fn diff_id_of_file(file: File, path: &Path) -> Result<(Compression, Digest)> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = {
        use std::io::BufRead;
        reader
            .fill_buf()
            .map_err(Error::io("reading layer", path))?
            .to_vec()
    };
    let compression = Compression::sniff(&head);
    let mut sink = HashingWriter::new(std::io::sink());
    let copied = match compression {
        Compression::None => std::io::copy(&mut reader, &mut sink),
        Compression::Gzip => {
            std::io::copy(&mut flate2::read::MultiGzDecoder::new(reader), &mut sink)
        }
        Compression::Zstd => zstd::stream::read::Decoder::with_buffer(reader)
            .and_then(|mut d| std::io::copy(&mut d, &mut sink)),
    };
    copied.map_err(Error::io("decompressing layer", path))?;
    let (_, diff_id, _) = sink.finish();
    Ok((compression, diff_id))
}
