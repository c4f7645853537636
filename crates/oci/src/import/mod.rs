//! `image import`: a base image from a root filesystem tarball or directory
//! (like `docker import`), an OCI image layout (directory or tarball), or a
//! `docker save` tarball, without any daemon.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod staged;
mod tree;

use crate::builder::{diff_id_of_file, ImageBuilder};
use crate::cache::BlobCache;
use crate::digest::{Digest, HashingWriter};
use crate::error::{Error, Result};
use crate::image_config::ImageConfigFile;
use crate::images::{
    now_utc, split_local_name, ImageRecord, ImageRecords, ImageSource, LayerRecord, LOCAL_REGISTRY,
};
use crate::manifest::{
    self, Compression, Descriptor, ImageIndex, ImageManifest, Manifest, MAX_CONFIG, MAX_MANIFEST,
};
use crate::reference::Platform;
use crate::unpack::{apply_layer, SizeLimit, UnpackOptions};
use staged::Staged;
use tree::Tree;

/// What an import source turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportKind {
    RootfsTarball,
    RootfsDirectory,
    OciLayout,
    DockerSave,
}

/// Imports `source` into the cache under `cache_root` as `name`
/// (`org/name:version`, recorded in the local namespace) and returns the
/// saved record. `platform` picks the image from multi-platform layouts and
/// labels rootfs imports; `limit` bounds what an archive unpacks to. Only an
/// image that validated whole is stored: a failed import leaves no blob.
pub fn import(
    cache_root: &Path,
    source: &Path,
    name: &str,
    platform: &Platform,
    limit: &SizeLimit,
) -> Result<(ImportKind, ImageRecord)> {
    split_local_name(name)?; // fail before any work on a bad name
    let cache = BlobCache::new(cache_root);
    // Until the record is written, `image prune` must not take its blobs.
    let _held = cache.hold(false)?;
    let meta = std::fs::metadata(source).map_err(Error::io("reading import source", source))?;
    let (kind, record) = if meta.is_dir() {
        let tree = Tree::open(source, source)?;
        if tree.has_file("oci-layout") {
            (
                ImportKind::OciLayout,
                from_oci_layout(&cache, &tree, name, platform)?,
            )
        } else if tree.has_file("manifest.json") {
            (
                ImportKind::DockerSave,
                from_docker_save(&cache, &tree, name)?,
            )
        } else {
            (
                ImportKind::RootfsDirectory,
                from_rootfs_dir(&cache, source, name, platform)?,
            )
        }
    } else {
        match archive_kind(source)? {
            ArchiveKind::Rootfs => {
                let mut b = ImageBuilder::new(&cache, platform);
                b.add_layer_file(source)?;
                (ImportKind::RootfsTarball, b.build(name, imported(source))?)
            }
            kind => {
                // Unpack the archive (safely: it is untrusted) next to the
                // cache, then read it as a directory.
                let tmp_parent = cache_root.join("tmp");
                std::fs::create_dir_all(&tmp_parent).map_err(Error::io("creating", &tmp_parent))?;
                let tmp = tempfile::Builder::new()
                    .prefix("import-")
                    .tempdir_in(&tmp_parent)
                    .map_err(Error::io("creating temporary directory in", &tmp_parent))?;
                let opts = UnpackOptions {
                    preserve_ownership: false,
                    whiteouts: false,
                    limit: limit.clone(),
                };
                apply_layer(
                    tmp.path(),
                    decompressed(source)?,
                    &source.display().to_string(),
                    &opts,
                )?;
                let tree = Tree::open(tmp.path(), source)?;
                if kind == ArchiveKind::OciLayout {
                    (
                        ImportKind::OciLayout,
                        from_oci_layout(&cache, &tree, name, platform)?,
                    )
                } else {
                    (
                        ImportKind::DockerSave,
                        from_docker_save(&cache, &tree, name)?,
                    )
                }
            }
        }
    };
    ImageRecords::new(cache_root).save(&record)?;
    tracing::info!(source = %source.display(), ?kind, name, digest = %record.digest, "imported");
    Ok((kind, record))
}

fn imported(source: &Path) -> ImageSource {
    ImageSource::Imported {
        from: std::fs::canonicalize(source).unwrap_or_else(|_| source.to_path_buf()),
    }
}

fn import_err(source: &Path, reason: impl Into<String>) -> Error {
    Error::Import {
        path: source.to_path_buf(),
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArchiveKind {
    Rootfs,
    OciLayout,
    DockerSave,
}

/// The file as an uncompressed stream (gzip and zstd detected by content).
fn decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(Error::io("opening", path))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let head = reader
        .fill_buf()
        .map_err(Error::io("reading", path))?
        .to_vec();
    Ok(match Compression::sniff(&head) {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(Error::io("starting zstd on", path))?,
        ),
    })
}

/// Looks at the top-level names of an archive to tell an image archive from
/// a root filesystem.
fn archive_kind(path: &Path) -> Result<ArchiveKind> {
    let mut archive = tar::Archive::new(decompressed(path)?);
    let (mut layout, mut index, mut manifest) = (false, false, false);
    let entries = archive
        .entries()
        .map_err(|e| import_err(path, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| import_err(path, format!("corrupt tar archive: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        match name.trim_start_matches("./") {
            "oci-layout" => layout = true,
            "index.json" => index = true,
            "manifest.json" => manifest = true,
            _ => {}
        }
    }
    // Newer `docker save` writes an OCI layout beside manifest.json: prefer the layout.
    Ok(if layout && index {
        ArchiveKind::OciLayout
    } else if manifest {
        ArchiveKind::DockerSave
    } else {
        ArchiveKind::Rootfs
    })
}

fn from_oci_layout(
    cache: &BlobCache,
    tree: &Tree,
    name: &str,
    platform: &Platform,
) -> Result<ImageRecord> {
    let source = tree.source();
    let mut staged = Staged::new(cache);
    let index: ImageIndex = tree.json("index.json", MAX_MANIFEST)?;
    let mut desc = pick_from_index(&index, platform, source)?.clone();
    // Follow nested indexes down to one image manifest.
    let mut index_digest = None;
    let manifest = loop {
        let body = tree.read(&Tree::blob_path(&desc.digest), MAX_MANIFEST)?;
        staged.bytes(&body, Some(&desc.digest))?;
        match Manifest::parse(&body, &source.display().to_string())? {
            Manifest::Image(m) => break *m,
            Manifest::Index(i) => {
                if index_digest.is_some() {
                    return Err(import_err(source, "indexes nested too deep"));
                }
                index_digest = Some(desc.digest.clone());
                desc = pick_from_index(&i, platform, source)?.clone();
            }
        }
    };
    let config = tree.read(&Tree::blob_path(&manifest.config.digest), MAX_CONFIG)?;
    staged.bytes(&config, Some(&manifest.config.digest))?;
    for layer in &manifest.layers {
        let file = tree.file(&Tree::blob_path(&layer.digest))?;
        staged.file(file, Some(&layer.digest))?;
    }
    let record = record_from_manifest(
        manifest,
        &config,
        desc.digest,
        index_digest,
        name,
        source,
        platform,
    )?;
    staged.commit()?;
    Ok(record)
}

fn pick_from_index<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
    source: &Path,
) -> Result<&'a Descriptor> {
    if let [only] = index.manifests.as_slice() {
        return Ok(only);
    }
    index.select(platform).ok_or_else(|| {
        import_err(
            source,
            format!(
                "no image for platform {platform} in the layout (it has: {})",
                index.platforms()
            ),
        )
    })
}

fn record_from_manifest(
    manifest: ImageManifest,
    config: &[u8],
    digest: Digest,
    index_digest: Option<Digest>,
    name: &str,
    source: &Path,
    platform: &Platform,
) -> Result<ImageRecord> {
    let (repository, tag) = split_local_name(name)?;
    let config: ImageConfigFile = serde_json::from_slice(config)
        .map_err(|e| import_err(source, format!("image config: {e}")))?;
    for layer in &manifest.layers {
        if Compression::from_media_type(&layer.media_type).is_none() {
            return Err(import_err(
                source,
                format!(
                    "layer {} has unsupported media type {}",
                    layer.digest, layer.media_type
                ),
            ));
        }
    }
    let platform = if config.os.is_empty() {
        platform.clone()
    } else {
        config.platform()
    };
    Ok(ImageRecord {
        reference: format!("{repository}:{tag}"),
        registry: LOCAL_REGISTRY.to_string(),
        repository,
        key: tag,
        source: imported(source),
        digest,
        index_digest,
        platform,
        manifest_media_type: manifest
            .media_type
            .clone()
            .unwrap_or_else(|| manifest::OCI_MANIFEST.into()),
        config_digest: manifest.config.digest.clone(),
        layers: LayerRecord::of_manifest(&manifest),
        config,
        recorded_at_utc: now_utc(),
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SaveEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Paths in `manifest.json` are relative to the archive root; refuse others.
fn save_path<'p>(rel: &'p str, source: &Path) -> Result<&'p str> {
    let ok = !rel.is_empty() && !rel.starts_with('/') && rel.split('/').all(|c| c != "..");
    if !ok {
        return Err(import_err(
            source,
            format!("manifest.json names {rel:?}, outside the archive"),
        ));
    }
    Ok(rel)
}

fn from_docker_save(cache: &BlobCache, tree: &Tree, name: &str) -> Result<ImageRecord> {
    let source = tree.source();
    let mut staged = Staged::new(cache);
    let entries: Vec<SaveEntry> = tree.json("manifest.json", MAX_MANIFEST)?;
    let entry = match entries.as_slice() {
        [only] => only,
        [] => return Err(import_err(source, "manifest.json lists no image")),
        many => {
            let tags: Vec<String> = many
                .iter()
                .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
                .collect();
            return Err(import_err(
                source,
                format!(
                    "the archive holds {} images ({}); save one image per archive",
                    many.len(),
                    tags.join(", ")
                ),
            ));
        }
    };
    let config_body = tree.read(save_path(&entry.config, source)?, MAX_CONFIG)?;
    let config_digest = staged.bytes(&config_body, None)?;
    let config_size = config_body.len() as u64;
    let config: ImageConfigFile = serde_json::from_slice(&config_body)
        .map_err(|e| import_err(source, format!("image config: {e}")))?;
    if config.rootfs.diff_ids.len() != entry.layers.len() {
        return Err(import_err(
            source,
            format!(
                "config lists {} layers, manifest.json {}",
                config.rootfs.diff_ids.len(),
                entry.layers.len()
            ),
        ));
    }
    let mut layers = Vec::new();
    for (rel, want_diff) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
        let rel = save_path(rel, source)?;
        let (digest, size) = staged.file(tree.file(rel)?, None)?;
        let (compression, diff_id) = diff_id_of_file(staged.open(&digest)?, Path::new(rel))?;
        if &diff_id != want_diff {
            return Err(Error::DigestMismatch {
                expected: want_diff.to_string(),
                actual: diff_id.to_string(),
            });
        }
        layers.push(Descriptor::new(compression.oci_media_type(), digest, size));
    }
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(manifest::OCI_CONFIG, config_digest, config_size),
        layers,
        annotations: Default::default(),
    };
    let body = serde_json::to_vec(&manifest).map_err(|e| import_err(source, e.to_string()))?;
    let digest = staged.bytes(&body, None)?;
    let platform = config.platform();
    let record = record_from_manifest(
        manifest,
        &config_body,
        digest,
        None,
        name,
        source,
        &platform,
    )?;
    staged.commit()?;
    Ok(record)
}

fn from_rootfs_dir(
    cache: &BlobCache,
    dir: &Path,
    name: &str,
    platform: &Platform,
) -> Result<ImageRecord> {
    let tmp = cache.temp_file()?;
    let tmp_path = tmp.path().to_path_buf();
    let mut builder = tar::Builder::new(HashingWriter::new(tmp));
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    append_tree(&mut builder, dir, Path::new(""), &mut links)
        .map_err(|e| import_err(dir, format!("archiving the directory: {e}")))?;
    let out = builder
        .into_inner()
        .map_err(|e| import_err(dir, format!("archiving the directory: {e}")))?;
    let (tmp, digest, _) = out.finish();
    if !cache.contains(&digest) {
        cache.persist(tmp, &digest)?;
    }
    drop(tmp_path);
    let mut b = ImageBuilder::new(cache, platform);
    b.add_cached_layer(&digest)?;
    b.build(name, imported(dir))
}

/// Appends `base/rel` and everything below it, sorted, never following symlinks.
fn append_tree<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    base: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<()> {
    let dir = base.join(rel);
    let mut names: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let rel_path = rel.join(&name);
        let path = base.join(&rel_path);
        let meta = std::fs::symlink_metadata(&path)?;
        let ft = meta.file_type();
        if ft.is_socket() {
            tracing::warn!(path = %path.display(), "skipping socket");
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        append_xattrs(builder, &path)?;
        if ft.is_dir() {
            header.set_size(0);
            builder.append_data(&mut header, &rel_path, std::io::empty())?;
            append_tree(builder, base, &rel_path, links)?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            header.set_size(0);
            builder.append_link(&mut header, &rel_path, &target)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder.append_link(&mut header, &rel_path, first)?;
                    continue;
                }
                links.insert((meta.dev(), meta.ino()), rel_path.clone());
            }
            let mut f = File::open(&path)?;
            builder.append_data(&mut header, &rel_path, &mut f)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            header.set_size(0);
            if !ft.is_fifo() {
                header.set_device_major(rustix::fs::major(meta.rdev()))?;
                header.set_device_minor(rustix::fs::minor(meta.rdev()))?;
            }
            builder.append_data(&mut header, &rel_path, std::io::empty())?;
        }
    }
    Ok(())
}

/// Writes the file's extended attributes as a PAX header for the next entry.
fn append_xattrs<W: std::io::Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
) -> std::io::Result<()> {
    let mut names = vec![0u8; 4096];
    let n = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(rustix::io::Errno::RANGE) => {
            names.resize(65536, 0);
            rustix::fs::llistxattr(path, &mut names[..])?
        }
        Err(e) => return Err(e.into()),
    };
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    for key in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        let key = String::from_utf8_lossy(key).into_owned();
        let mut value = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(path, key.as_str(), &mut value[..]) {
            value.truncate(len);
            records.push((format!("SCHILY.xattr.{key}"), value));
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    builder.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}
