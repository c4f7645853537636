//! Single-file OCI artifacts (a guest kernel): an OCI image manifest whose
//! `artifactType` says what it holds, the empty config, one layer that is
//! the file itself, and the file's details as manifest annotations (as ORAS
//! and the OCI 1.1 artifact guidance shape them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::Endpoint;
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{self, Descriptor, ImageManifest};
use crate::progress::Progress;
use crate::reference::ImageRef;
use crate::registry::{Ctx, Registry};

/// The OCI empty descriptor's media type and content.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG: &[u8] = b"{}";

/// What to push: `file` as the one layer of an artifact of `artifact_type`.
#[derive(Debug, Clone)]
pub struct ArtifactFile<'a> {
    pub artifact_type: &'a str,
    pub layer_media_type: &'a str,
    pub file: &'a Path,
    pub annotations: BTreeMap<String, String>,
}

/// A pulled artifact: its file is a verified blob in the cache.
#[derive(Debug, Clone)]
pub struct PulledArtifact {
    /// The manifest's digest.
    pub digest: Digest,
    pub annotations: BTreeMap<String, String>,
    pub blob: PathBuf,
}

impl Registry {
    /// Pushes `artifact` as `target`; returns the manifest digest. Blobs the
    /// registry already has are not sent again.
    pub async fn push_artifact(
        &self,
        artifact: &ArtifactFile<'_>,
        target: &ImageRef,
    ) -> Result<Digest> {
        let _held = self.cache().hold(false)?;
        let mut file = std::fs::File::open(artifact.file)
            .map_err(Error::io("opening the file to push", artifact.file))?;
        let (layer_digest, size) = self.cache().insert_reader(&mut file)?;
        let config_digest = self.cache().insert_bytes(EMPTY_CONFIG)?;
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(manifest::OCI_MANIFEST.into()),
            artifact_type: Some(artifact.artifact_type.into()),
            config: Descriptor::new(EMPTY_MEDIA_TYPE, config_digest.clone(), 2),
            layers: vec![Descriptor::new(
                artifact.layer_media_type,
                layer_digest.clone(),
                size,
            )],
            annotations: artifact.annotations.clone(),
        };
        let body = serde_json::to_vec(&manifest).map_err(|e| Error::Push {
            reference: target.to_string(),
            reason: e.to_string(),
        })?;
        let digest = self.cache().insert_bytes(&body)?;
        let ep = self.push_endpoint(target);
        let ctx = Ctx::new(self, &ep, target)?;
        let oref = target.to_oci();
        ctx.authorize_push(&oref).await?;
        let progress = crate::progress::Progress::new(self.shows_progress());
        let bar = progress.bar(layer_digest.short(), size);
        ctx.push_blob(&oref, &layer_digest, &bar).await?;
        ctx.push_blob(&oref, &config_digest, &crate::progress::Bar::hidden())
            .await?;
        ctx.push_manifest(&oref, body, manifest::OCI_MANIFEST)
            .await?;
        Ok(digest)
    }

    /// Pulls the artifact `reference` names, which must be of
    /// `artifact_type` with one layer of at most `max_size` bytes; the
    /// layer is downloaded into the cache, verified against its digest.
    pub async fn pull_artifact(
        &self,
        reference: &ImageRef,
        artifact_type: &str,
        max_size: u64,
    ) -> Result<PulledArtifact> {
        let _held = self.cache().hold(false)?;
        self.try_endpoints(reference, |ep| {
            self.pull_artifact_at(ep, reference, artifact_type, max_size)
        })
        .await
    }

    async fn pull_artifact_at(
        &self,
        ep: Endpoint,
        reference: &ImageRef,
        artifact_type: &str,
        max_size: u64,
    ) -> Result<PulledArtifact> {
        let ctx = Ctx::new(self, &ep, reference)?;
        let oref = reference.on_registry(&ep.host).to_oci();
        let (body, digest) = ctx.manifest(&oref, reference.digest()).await?;
        let wrong = |reason: String| Error::UnsupportedManifest {
            reference: reference.to_string(),
            reason,
        };
        let manifest: ImageManifest = serde_json::from_slice(&body)
            .map_err(|e| wrong(format!("not an OCI artifact manifest ({e})")))?;
        // Artifacts pushed before OCI 1.1 carried their type as the config's.
        let found = manifest
            .artifact_type
            .as_deref()
            .unwrap_or(&manifest.config.media_type);
        if found != artifact_type {
            return Err(wrong(format!(
                "it holds {found:?}, not {artifact_type:?}: is it the right reference?"
            )));
        }
        let [layer] = manifest.layers.as_slice() else {
            return Err(wrong(format!(
                "it has {} layers; a {artifact_type} artifact has exactly one",
                manifest.layers.len()
            )));
        };
        if layer.size > max_size {
            return Err(ctx.registry_err(
                &format!("blob {}", layer.digest),
                format!(
                    "the manifest declares {} bytes, more than the {max_size} accepted; nothing was stored",
                    layer.size
                ),
            ));
        }
        let progress = Progress::new(self.shows_progress());
        let bar = progress.bar(layer.digest.short(), layer.size);
        if let Err(e) = ctx.blob(&oref, layer, &bar).await {
            bar.failed();
            return Err(e);
        }
        Ok(PulledArtifact {
            digest,
            annotations: manifest.annotations,
            blob: self.cache().blob_path(&layer.digest),
        })
    }
}
