//! A stored root filesystem as a plain OCI image in the blob cache, for
//! `image push`.
//!
//! The layers are the build's, as built: when the build started from a
//! pulled or imported image, that image's own blobs (so a registry that
//! has them already is sent nothing and other tools share them), then one
//! gzip layer per build step that changed files. Without the build's
//! layers (an imported ext4, a pruned cache) the image's files make one
//! layer, read from the ext4 file. firebuild's guest init is never part of
//! it: the image is what the Dockerfile made, runnable by any runtime, and
//! `image pull` adds the init again.
//!
//! A step's tar is written once: its blob's digest is kept beside the
//! layer (`oci-layer.json`), so pushing version 2 of an image compresses
//! only the steps that are new.

mod layer_tar;

use std::path::Path;

use firebuild_metadata::ImageMetadata;
use firebuild_oci::manifest::Compression;
use firebuild_oci::{
    BlobCache, Digest, ImageBuilder, ImageRecord, ImageRecords, ImageSource, LayerRecord, Platform,
};
use firebuild_store::{DirectoryStore, Tag};
use serde::{Deserialize, Serialize};

use crate::config::ImageConfig;
use crate::error::{BuildError, Result};
use crate::layers::{Key, LayerId, LayerStore};
pub use layer_tar::{write_layer_tar, Times};

/// The manifest annotation that carries the stored image's metadata.json.
pub const METADATA_ANNOTATION: &str = "dev.firebuild.image.metadata";

/// How to export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// `SOURCE_DATE_EPOCH`: no file time, config or history time is later.
    pub source_date_epoch: Option<i64>,
}

/// An image assembled in the blob cache, ready to push.
#[derive(Debug)]
pub struct Exported {
    pub record: ImageRecord,
    /// Layers taken as they are from the image the build started from.
    pub base_layers: usize,
    /// Build steps turned into layers (now or by an earlier export).
    pub step_layers: usize,
    /// The build's layers were gone: the files came from the ext4 image.
    pub from_ext4: bool,
}

/// `layers/<id>/oci-layer.json`: the blob an earlier export made of a step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ExportedLayer {
    layer: LayerRecord,
    diff_id: Digest,
    /// The clamp it was written with: another clamp gives other bytes.
    source_date_epoch: Option<i64>,
}

const EXPORTED_LAYER_FILE: &str = "oci-layer.json";

/// Assembles the stored image `tag` as an OCI image in the blob cache of
/// `cache_dir` (a build cache shared lock is held meanwhile, so `prune`
/// cannot take its layers away).
pub fn export(
    store: &DirectoryStore,
    cache_dir: &Path,
    tag: &Tag,
    opts: &ExportOptions,
) -> Result<Exported> {
    let image = store.get(tag)?;
    let md = &image.metadata;
    let layers = LayerStore::open(cache_dir)?;
    let blobs = BlobCache::new(cache_dir);
    let platform = Platform::host();
    let times = Times {
        clamp: opts.source_date_epoch,
    };
    let chain = build_chain(&layers, tag, md);
    let (mut builder, base_layers, steps) = match &chain {
        Some(chain) => {
            let (builder, rest, base_layers) = start_from_base(&blobs, cache_dir, chain)?;
            (builder, base_layers, rest)
        }
        None => (ImageBuilder::new(&blobs, &platform), 0, Vec::new()),
    };
    let mut step_layers = 0;
    for id in &steps {
        let Some(meta) = layers.get(id) else {
            return Err(missing_layer(&layers, id));
        };
        if meta.empty {
            continue;
        }
        let (layer, diff_id) = step_blob(&layers, &blobs, id, times)?;
        builder
            .add_known_layer(layer, diff_id)
            .map_err(|e| export_err(tag, e))?;
        builder.describe_last_layer(&meta.description);
        step_layers += 1;
    }
    if chain.is_none() {
        tracing::info!(%tag, "the build's layers are not cached: exporting the files of the ext4 image as one layer");
        ext4_layer(&mut builder, &image.rootfs_path(), times)?;
    }
    apply_config(&mut builder, md, opts);
    let record = builder
        .build(&tag.to_string(), ImageSource::Built)
        .map_err(|e| export_err(tag, e))?;
    Ok(Exported {
        record,
        base_layers,
        step_layers,
        from_ext4: chain.is_none(),
    })
}

/// The cached layers the stored image was built from (bottom first), if
/// they are all still there and describe the stored file.
fn build_chain(layers: &LayerStore, tag: &Tag, md: &ImageMetadata) -> Option<Vec<LayerId>> {
    let r = layers.read_ref(&tag.to_string())?;
    if r.rootfs_digest.is_none() || r.rootfs_digest != md.rootfs_digest {
        return None;
    }
    layers.chain(r.top.as_ref()).ok()
}

/// The builder started from the pulled or imported image at the bottom of
/// `chain` (when its record and blobs are still here), the layers left to
/// export, and how many layers the base gave.
fn start_from_base<'c>(
    blobs: &'c BlobCache,
    cache_dir: &Path,
    chain: &[LayerId],
) -> Result<(ImageBuilder<'c>, Vec<LayerId>, usize)> {
    let fresh = || ImageBuilder::new(blobs, &Platform::host());
    let Some(bottom) = chain.first() else {
        return Ok((fresh(), Vec::new(), 0));
    };
    // A base image's layers are one cached layer keyed by its manifest
    // digest (see base.rs): find the record that gives that key.
    let records = ImageRecords::new(cache_dir).list().unwrap_or_default();
    let base = records.into_iter().find(|rec| {
        Key::derive(None, &format!("oci:{}", rec.digest)).layer_id() == *bottom
            && rec.layers.iter().all(|l| blobs.contains(&l.digest))
    });
    match base {
        Some(rec) => {
            let builder = ImageBuilder::on_top_of(blobs, &rec).map_err(|e| BuildError::Cache {
                path: blobs.root().to_path_buf(),
                message: e.to_string(),
            })?;
            Ok((builder, chain[1..].to_vec(), rec.layers.len()))
        }
        None => Ok((fresh(), chain.to_vec(), 0)),
    }
}

/// The gzip layer blob of one build step: the one an earlier export made,
/// if its blob is still cached, else a new one.
fn step_blob(
    layers: &LayerStore,
    blobs: &BlobCache,
    id: &LayerId,
    times: Times,
) -> Result<(LayerRecord, Digest)> {
    let record_path = layers.layers_dir().join(&id.0).join(EXPORTED_LAYER_FILE);
    if let Some(known) = std::fs::read(&record_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<ExportedLayer>(&b).ok())
        .filter(|k| k.source_date_epoch == times.clamp && blobs.contains(&k.layer.digest))
    {
        return Ok((known.layer, known.diff_id));
    }
    let diff = layers.diff_dir(id);
    let mut scratch = ImageBuilder::new(blobs, &Platform::host());
    add_streamed_layer(&mut scratch, |out| {
        write_layer_tar(
            &diff,
            times,
            std::io::BufWriter::with_capacity(1 << 20, out),
        )
        .map_err(|e| format!("writing the layer as a tar: {e}"))
    })
    .map_err(|message| BuildError::Cache {
        path: diff.clone(),
        message,
    })?;
    let (layer, diff_id) = scratch.last_layer().expect("a layer was just added");
    let (layer, diff_id) = (layer.clone(), diff_id.clone());
    let known = ExportedLayer {
        layer: layer.clone(),
        diff_id: diff_id.clone(),
        source_date_epoch: times.clamp,
    };
    // Only a cache: an export that cannot note it still works.
    if let Ok(json) = serde_json::to_vec_pretty(&known) {
        let tmp = record_path.with_extension("tmp");
        if std::fs::write(&tmp, json).is_ok() {
            let _ = std::fs::rename(&tmp, &record_path);
        }
    }
    Ok((layer, diff_id))
}

/// One layer of every file in the ext4 image but firebuild's guest init.
fn ext4_layer(builder: &mut ImageBuilder<'_>, rootfs: &Path, times: Times) -> Result<()> {
    let fs = crate::ext4_reader::Ext4Image::open(rootfs).map_err(|e| BuildError::Ext4 {
        path: rootfs.to_path_buf(),
        message: e.to_string(),
    })?;
    let view = crate::ext4::TarView::oci_layer(times);
    add_streamed_layer(builder, |out| crate::ext4::write_tar(&fs, out, &view)).map_err(
        |message| BuildError::Ext4 {
            path: rootfs.to_path_buf(),
            message,
        },
    )?;
    builder.describe_last_layer("firebuild: the files of the stored ext4 image");
    Ok(())
}

/// Adds the tar stream `produce` writes (on a thread of its own) to
/// `builder` as a gzip layer. The producer's error comes first: the
/// compressor then only saw a cut stream.
fn add_streamed_layer(
    builder: &mut ImageBuilder<'_>,
    produce: impl FnOnce(std::io::PipeWriter) -> std::result::Result<(), String> + Send,
) -> std::result::Result<(), String> {
    let (mut reader, writer) = std::io::pipe().map_err(|e| format!("opening a pipe: {e}"))?;
    let (written, added) = std::thread::scope(|s| {
        let producer = s.spawn(|| produce(writer));
        let added = builder.add_layer_reader(&mut reader, Compression::Gzip);
        // A producer still writing gets EPIPE, not a wait forever.
        drop(reader);
        let written = producer
            .join()
            .unwrap_or_else(|_| Err("the tar writer panicked".into()));
        (written, added)
    });
    written?;
    added.map(|_| ()).map_err(|e| e.to_string())
}

/// The run settings of metadata.json as the image config, firebuild's
/// metadata as an annotation, and the times.
fn apply_config(builder: &mut ImageBuilder<'_>, md: &ImageMetadata, opts: &ExportOptions) {
    let c = ImageConfig::from_metadata(md);
    let oci = builder.config_mut();
    oci.env = c.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    oci.entrypoint = c.entrypoint.clone();
    oci.cmd = c.cmd.clone();
    oci.user = c.user.clone();
    oci.working_dir = c.workdir.clone();
    oci.shell = c.shell.clone();
    oci.exposed_ports = c
        .ports
        .iter()
        .map(|p| (p.clone(), serde_json::json!({})))
        .collect();
    oci.volumes = c
        .volumes
        .iter()
        .map(|v| (v.clone(), serde_json::json!({})))
        .collect();
    oci.labels = c.labels.clone();
    oci.stop_signal = c.stop_signal.clone();
    oci.healthcheck = c
        .healthcheck
        .as_ref()
        .map(firebuild_oci::HealthConfig::from_metadata);
    oci.on_build = c.onbuild.clone();
    let created_at = match opts.source_date_epoch {
        Some(epoch) => md.created_at_utc.min(epoch),
        None => md.created_at_utc,
    };
    let created = rfc3339(created_at);
    let file = builder.config_file_mut();
    file.created = Some(created.clone());
    for h in file.history.iter_mut().filter(|h| h.created.is_none()) {
        h.created = Some(created.clone());
    }
    let mut shown = md.clone();
    shown.created_at_utc = created_at;
    if let Ok(json) = serde_json::to_string(&shown) {
        builder.annotate(METADATA_ANNOTATION, &json);
    }
    builder.annotate("org.opencontainers.image.created", &created);
    builder.annotate("org.opencontainers.image.ref.name", &md.tag);
}

/// Seconds since the epoch as RFC 3339 UTC (`2024-01-31T12:00:00Z`).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count from 1970-01-01 (Howard
/// Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn missing_layer(layers: &LayerStore, id: &LayerId) -> BuildError {
    BuildError::Cache {
        path: layers.layers_dir().join(&id.0),
        message: "a layer of the image went missing during the export (pruned?); push again".into(),
    }
}

fn export_err(tag: &Tag, e: firebuild_oci::Error) -> BuildError {
    BuildError::Export {
        tag: tag.to_string(),
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339(1_704_067_199), "2023-12-31T23:59:59Z");
    }
}
