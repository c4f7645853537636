//! Talking to registries through `oci-client`: resolving references to a
//! platform's manifest, pulling blobs into the cache, pushing images.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

use crate::auth;
use crate::blob_sources::BlobSources;
use crate::cache::{BlobCache, Download};
use crate::config::{Endpoint, RegistryConfig};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image_config::ImageConfigFile;
use crate::images::{now_utc, ImageRecord, ImageRecords, ImageSource, LayerRecord};
use crate::manifest::{self, Compression, Descriptor, ImageIndex, ImageManifest, Manifest};
use crate::progress::{Bar, Progress};
use crate::reference::{ImageRef, Platform};

/// Layers downloaded at once.
const PARALLEL_DOWNLOADS: usize = 3;
/// Attempts per blob when the connection drops mid-way (each resumes).
const BLOB_ATTEMPTS: u32 = 3;

/// A registry client bound to a blob cache and registry settings.
pub struct Registry {
    config: RegistryConfig,
    cache: BlobCache,
    records: ImageRecords,
    sources: BlobSources,
    progress: bool,
    clients: Mutex<HashMap<(String, bool), Arc<Client>>>,
}

/// A reference resolved to one platform's image manifest and config.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The `HOST[:PORT]` that answered (a mirror or the registry).
    pub endpoint: String,
    pub manifest: ImageManifest,
    pub manifest_media_type: String,
    pub digest: Digest,
    pub index_digest: Option<Digest>,
    pub config_digest: Digest,
    pub config: ImageConfigFile,
    pub platform: Platform,
}

impl Registry {
    /// A client whose blobs and image records live under `cache_root`.
    pub fn new(cache_root: &Path, config: RegistryConfig) -> Registry {
        // reqwest is built without a bundled crypto provider; use ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Registry {
            config,
            cache: BlobCache::new(cache_root),
            records: ImageRecords::new(cache_root),
            sources: BlobSources::new(cache_root),
            progress: false,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Draw per-layer progress bars on stderr when it is a terminal.
    pub fn with_progress(mut self, on: bool) -> Registry {
        self.progress = on;
        self
    }

    pub(crate) fn shows_progress(&self) -> bool {
        self.progress
    }

    pub fn cache(&self) -> &BlobCache {
        &self.cache
    }

    pub fn records(&self) -> &ImageRecords {
        &self.records
    }

    fn client(&self, ep: &Endpoint) -> Arc<Client> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .entry((ep.host.clone(), ep.plain_http))
            .or_insert_with(|| {
                Arc::new(Client::new(ClientConfig {
                    protocol: if ep.plain_http {
                        ClientProtocol::Http
                    } else {
                        ClientProtocol::Https
                    },
                    connect_timeout: Some(Duration::from_secs(30)),
                    read_timeout: Some(Duration::from_secs(120)),
                    // One streamed PUT per blob, not a PATCH per chunk: the
                    // size is always known, and each request costs a round
                    // trip and a registry-side append.
                    use_monolithic_push: true,
                    ..Default::default()
                }))
            })
            .clone()
    }

    fn auth(&self, host: &str) -> Result<RegistryAuth> {
        Ok(
            match auth::lookup(self.config.docker_config_dir.as_deref(), host)? {
                Some(c) => RegistryAuth::Basic(c.username, c.password),
                None => RegistryAuth::Anonymous,
            },
        )
    }

    /// Resolves `reference` to `platform`'s manifest and config (fetching
    /// and caching those two, not the layers). Mirrors are tried first.
    pub async fn resolve(&self, reference: &ImageRef, platform: &Platform) -> Result<Resolved> {
        self.try_endpoints(reference, |ep| self.resolve_at(ep, reference, platform))
            .await
    }

    /// Pulls `reference` for `platform` into the cache and records it. Blobs
    /// already cached are not downloaded again.
    pub async fn pull(&self, reference: &ImageRef, platform: &Platform) -> Result<ImageRecord> {
        // Until the record is written, `image prune` must not take its blobs.
        let _held = self.cache.hold(false)?;
        self.try_endpoints(reference, |ep| self.pull_at(ep, reference, platform))
            .await
    }

    /// Runs `attempt` on each mirror, then on the registry; a failing mirror
    /// is logged and skipped.
    pub(crate) async fn try_endpoints<'a, T, F, Fut>(
        &'a self,
        reference: &ImageRef,
        attempt: F,
    ) -> Result<T>
    where
        F: Fn(Endpoint) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + 'a,
    {
        let endpoints = self.config.endpoints(reference.registry());
        let mut last = None;
        for ep in endpoints {
            let is_mirror = ep.is_mirror;
            let host = ep.host.clone();
            match attempt(ep).await {
                Ok(v) => return Ok(v),
                Err(e) if is_mirror => {
                    tracing::warn!(mirror = %host, %reference, error = %e, "mirror failed; trying the next source");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| Error::Registry {
            registry: reference.registry().to_string(),
            reference: reference.to_string(),
            reason: "no endpoint to try".into(),
        }))
    }

    async fn resolve_at(
        &self,
        ep: Endpoint,
        reference: &ImageRef,
        platform: &Platform,
    ) -> Result<Resolved> {
        let ctx = Ctx::new(self, &ep, reference)?;
        let oref = reference.on_registry(&ep.host).to_oci();
        let (body, mut digest) = ctx.manifest(&oref, reference.digest()).await?;
        let mut index_digest = None;
        let mut manifest = Manifest::parse(&body, &reference.to_string())?;
        // An index may point at another index (rare): follow two levels.
        for _ in 0..2 {
            let Manifest::Index(index) = &manifest else {
                break;
            };
            let entry = select(index, platform, reference)?;
            index_digest.get_or_insert(digest.clone());
            let child = Reference::with_digest(
                ep.host.clone(),
                reference.repository().to_string(),
                entry.digest.to_string(),
            );
            let (body, d) = ctx.manifest(&child, Some(&entry.digest)).await?;
            digest = d;
            manifest = Manifest::parse(&body, &format!("{reference}@{digest}"))?;
        }
        let Manifest::Image(manifest) = manifest else {
            return Err(Error::UnsupportedManifest {
                reference: reference.to_string(),
                reason: "indexes nested more than two levels deep".into(),
            });
        };
        check_image_manifest(&manifest, reference)?;
        let config_bytes = ctx.small_blob(&oref, &manifest.config).await?;
        let config: ImageConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|e| Error::InvalidJson {
                what: "image config",
                digest: manifest.config.digest.to_string(),
                reason: e.to_string(),
            })?;
        let manifest_media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
        Ok(Resolved {
            endpoint: ep.host.clone(),
            config_digest: manifest.config.digest.clone(),
            platform: resolved_platform(&config, platform),
            manifest: *manifest,
            manifest_media_type,
            digest,
            index_digest,
            config,
        })
    }

    async fn pull_at(
        &self,
        ep: Endpoint,
        reference: &ImageRef,
        platform: &Platform,
    ) -> Result<ImageRecord> {
        let resolved = self.resolve_at(ep.clone(), reference, platform).await?;
        let ctx = Ctx::new(self, &ep, reference)?;
        let oref = reference.on_registry(&ep.host).to_oci();
        let progress = Progress::new(self.progress);
        let ctx = &ctx;
        let oref = &oref;
        let progress = &progress;
        futures_util::stream::iter(resolved.manifest.layers.iter().map(Ok))
            .map_ok(|layer| async move {
                let bar = progress.bar(layer.digest.short(), layer.size);
                let r = ctx.blob(oref, layer, &bar).await;
                if r.is_err() {
                    bar.failed();
                }
                r
            })
            .try_buffer_unordered(PARALLEL_DOWNLOADS)
            .try_collect::<Vec<()>>()
            .await?;

        let record = ImageRecord {
            reference: reference.to_string(),
            registry: reference.registry().to_string(),
            repository: reference.repository().to_string(),
            key: reference.record_key(),
            source: ImageSource::Registry {
                endpoint: resolved.endpoint.clone(),
            },
            digest: resolved.digest.clone(),
            index_digest: resolved.index_digest.clone(),
            platform: resolved.platform.clone(),
            manifest_media_type: resolved.manifest_media_type.clone(),
            config_digest: resolved.config_digest.clone(),
            layers: LayerRecord::of_manifest(&resolved.manifest),
            config: resolved.config.clone(),
            recorded_at_utc: now_utc(),
        };
        self.records.save(&record)?;
        // Also reachable by digest, so `FROM repo@sha256:…` resolves offline.
        if reference.digest().is_none() {
            let mut by_digest = record.clone();
            by_digest.key = record.top_digest().to_string();
            self.records.save(&by_digest)?;
        }
        tracing::info!(%reference, digest = %record.digest, layers = record.layers.len(), "pulled");
        Ok(record)
    }

    /// Pushes a cached image (all its blobs must be in the cache) as `target`;
    /// returns the manifest digest.
    pub async fn push(&self, record: &ImageRecord, target: &ImageRef) -> Result<Digest> {
        let ep = self.push_endpoint(target);
        let ctx = Ctx::new(self, &ep, target)?;
        let oref = target.to_oci();
        ctx.authorize_push(&oref).await?;
        let progress = Progress::new(self.progress);
        for layer in &record.layers {
            let bar = progress.bar(layer.digest.short(), layer.size);
            ctx.push_blob(&oref, &layer.digest, &bar).await?;
        }
        ctx.push_blob(&oref, &record.config_digest, &Bar::hidden())
            .await?;
        let body = self.cache.read(&record.digest)?;
        ctx.push_manifest(&oref, body, &record.manifest_media_type)
            .await?;
        Ok(record.digest.clone())
    }

    /// Pushes several cached images of one repository and an OCI index over
    /// them (a multi-platform image) as `target`; returns the index digest.
    pub async fn push_index(&self, records: &[ImageRecord], target: &ImageRef) -> Result<Digest> {
        let ep = self.push_endpoint(target);
        let ctx = Ctx::new(self, &ep, target)?;
        let mut manifests = Vec::new();
        for record in records {
            let by_digest = target.with_digest(record.digest.clone());
            self.push(record, &by_digest).await?;
            let mut d = Descriptor::new(
                &record.manifest_media_type,
                record.digest.clone(),
                self.cache.read(&record.digest)?.len() as u64,
            );
            d.platform = Some((&record.platform).into());
            manifests.push(d);
        }
        let index = ImageIndex {
            schema_version: 2,
            media_type: Some(manifest::OCI_INDEX.to_string()),
            manifests,
            annotations: Default::default(),
        };
        let body = serde_json::to_vec(&index).map_err(|e| Error::Push {
            reference: target.to_string(),
            reason: e.to_string(),
        })?;
        let digest = self.cache.insert_bytes(&body)?;
        ctx.push_manifest(&target.to_oci(), body, manifest::OCI_INDEX)
            .await?;
        Ok(digest)
    }

    pub(crate) fn push_endpoint(&self, target: &ImageRef) -> Endpoint {
        Endpoint {
            host: target.registry().to_string(),
            plain_http: self.config.allows_plain_http(target.registry()),
            is_mirror: false,
        }
    }
}

/// The index entry for `platform`, or an error listing what the index has.
fn select<'a>(
    index: &'a ImageIndex,
    platform: &Platform,
    reference: &ImageRef,
) -> Result<&'a Descriptor> {
    index
        .select(platform)
        .ok_or_else(|| Error::PlatformNotFound {
            reference: reference.to_string(),
            platform: platform.to_string(),
            available: index.platforms(),
        })
}

/// The platform to record: the config's own, when it declares one.
fn resolved_platform(config: &ImageConfigFile, requested: &Platform) -> Platform {
    if config.os.is_empty() || config.architecture.is_empty() {
        return requested.clone();
    }
    let mut p = config.platform();
    if p.variant.is_none() {
        p.variant = requested.variant.clone();
    }
    p
}

fn check_image_manifest(m: &ImageManifest, reference: &ImageRef) -> Result<()> {
    let unsupported = |reason: String| Error::UnsupportedManifest {
        reference: reference.to_string(),
        reason,
    };
    if !matches!(
        m.config.media_type.as_str(),
        manifest::OCI_CONFIG | manifest::DOCKER_CONFIG
    ) {
        return Err(unsupported(format!(
            "config media type {} is not a container image config (an OCI artifact?)",
            m.config.media_type
        )));
    }
    for layer in &m.layers {
        if Compression::from_media_type(&layer.media_type).is_none() {
            return Err(unsupported(format!(
                "layer {} has media type {}, which is not a tar layer we can unpack",
                layer.digest, layer.media_type
            )));
        }
    }
    Ok(())
}

/// One endpoint's client, credentials and error context.
pub(crate) struct Ctx<'r> {
    reg: &'r Registry,
    client: Arc<Client>,
    auth: RegistryAuth,
    host: String,
    plain_http: bool,
    reference: String,
    has_credentials: bool,
}

impl<'r> Ctx<'r> {
    pub(crate) fn new(reg: &'r Registry, ep: &Endpoint, reference: &ImageRef) -> Result<Ctx<'r>> {
        let auth = reg.auth(&ep.host)?;
        Ok(Ctx {
            reg,
            client: reg.client(ep),
            has_credentials: !matches!(auth, RegistryAuth::Anonymous),
            auth,
            host: ep.host.clone(),
            plain_http: ep.plain_http,
            reference: reference.to_string(),
        })
    }

    /// Maps an `oci-client` error to ours, with what we were fetching.
    fn err(&self, what: &str, e: OciDistributionError) -> Error {
        let reason = error_chain(&e);
        match e {
            OciDistributionError::RequestError(re) if re.is_connect() || re.is_timeout() => {
                let hint = if !self.plain_http {
                    format!(
                        "; if it serves plain http, pass --insecure-registry {}",
                        self.host
                    )
                } else {
                    String::new()
                };
                Error::RegistryUnreachable {
                    registry: self.host.clone(),
                    reference: self.reference.clone(),
                    reason,
                    hint,
                }
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => self.unauthorized(reason),
            OciDistributionError::RequestError(ref re)
                if re
                    .status()
                    .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                self.unauthorized(reason)
            }
            OciDistributionError::RegistryError { ref envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    self.unauthorized(reason)
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                    )
                }) {
                    Error::NotFound {
                        registry: self.host.clone(),
                        reference: self.reference.clone(),
                        what: what.to_string(),
                    }
                } else {
                    self.registry_err(what, reason)
                }
            }
            OciDistributionError::ServerError { code: 404, .. }
            | OciDistributionError::ImageManifestNotFoundError(_) => Error::NotFound {
                registry: self.host.clone(),
                reference: self.reference.clone(),
                what: what.to_string(),
            },
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => self.unauthorized(reason),
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => Error::DigestMismatch { expected, actual },
            _ => self.registry_err(what, reason),
        }
    }

    fn unauthorized(&self, reason: String) -> Error {
        let config = auth::docker_config_dir(self.reg.config.docker_config_dir.as_deref())
            .map(|d| d.join("config.json").display().to_string())
            .unwrap_or_else(|| "~/.docker/config.json".into());
        let reason = if self.has_credentials {
            format!("{reason} (the stored credentials were rejected)")
        } else {
            format!("{reason} (no credentials stored for this registry)")
        };
        Error::Unauthorized {
            registry: self.host.clone(),
            reference: self.reference.clone(),
            reason,
            config,
        }
    }

    pub(crate) fn registry_err(&self, what: &str, reason: String) -> Error {
        Error::Registry {
            registry: self.host.clone(),
            reference: self.reference.clone(),
            reason: format!("fetching {what}: {reason}"),
        }
    }

    /// A manifest by reference, from the cache when pinned by a cached digest.
    pub(crate) async fn manifest(
        &self,
        oref: &Reference,
        want: Option<&Digest>,
    ) -> Result<(Vec<u8>, Digest)> {
        if let Some(d) = want {
            if self.reg.cache.contains(d) {
                return Ok((self.reg.cache.read(d)?, d.clone()));
            }
        }
        let (body, _) = self
            .client
            .pull_manifest_raw(oref, &self.auth, manifest::ACCEPTED_MANIFESTS)
            .await
            .map_err(|e| self.err("manifest", e))?;
        // Stored only once it is within bounds and JSON at all.
        if body.len() as u64 > manifest::MAX_MANIFEST {
            return Err(self.registry_err(
                "manifest",
                format!(
                    "it has {} bytes, more than the {} registries accept; nothing was stored",
                    body.len(),
                    manifest::MAX_MANIFEST
                ),
            ));
        }
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&body) {
            return Err(self.registry_err(
                "manifest",
                format!("it is not JSON ({e}); nothing was stored"),
            ));
        }
        let digest = match want {
            Some(d) => {
                self.reg.cache.insert_verified(d, &body)?;
                d.clone()
            }
            None => self.reg.cache.insert_bytes(&body)?,
        };
        Ok((body.to_vec(), digest))
    }

    /// A small blob (the config), cached and verified.
    async fn small_blob(&self, oref: &Reference, desc: &Descriptor) -> Result<Vec<u8>> {
        if desc.size > manifest::MAX_CONFIG {
            return Err(self.registry_err(
                &format!("config {}", desc.digest),
                format!(
                    "the manifest declares {} bytes, more than the {} accepted",
                    desc.size,
                    manifest::MAX_CONFIG
                ),
            ));
        }
        if !self.reg.cache.contains(&desc.digest) {
            self.blob(oref, desc, &Bar::hidden()).await?;
        }
        self.reg.cache.read(&desc.digest)
    }

    /// Downloads a blob into the cache (resuming a partial one), verified.
    pub(crate) async fn blob(&self, oref: &Reference, desc: &Descriptor, bar: &Bar) -> Result<()> {
        let cache = self.reg.cache.clone();
        let digest = desc.digest.clone();
        let download = tokio::task::spawn_blocking(move || cache.begin_download(&digest))
            .await
            .map_err(|e| self.registry_err("blob", format!("download task failed: {e}")))??;
        let Download::Partial(mut partial) = download else {
            bar.set(desc.size);
            bar.done("cached");
            return Ok(());
        };
        let digest_str = desc.digest.to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let offset = partial.offset();
            if offset > 0 && offset >= desc.size {
                // A complete partial file from an earlier run: verify it.
                break;
            }
            bar.set(offset);
            let response = self
                .client
                .pull_blob_stream_partial(oref, digest_str.as_str(), offset, None)
                .await
                .map_err(|e| self.err(&format!("blob {digest_str}"), e));
            let mut stream = match response {
                Ok(BlobResponse::Partial(s)) => s,
                Ok(BlobResponse::Full(s)) => {
                    if offset > 0 {
                        partial.restart()?; // no range support: start over
                        bar.set(0);
                    }
                    s
                }
                Err(e @ Error::RegistryUnreachable { .. }) if attempt < BLOB_ATTEMPTS => {
                    tracing::warn!(blob = %digest_str, error = %e, "retrying");
                    backoff(attempt).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut interrupted = None;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    // Never past the declared size: a registry that sends
                    // more would fill the disk. The partial goes too.
                    Ok(bytes) if partial.offset() + bytes.len() as u64 > desc.size => {
                        let actual = partial.offset() + bytes.len() as u64;
                        partial.discard();
                        return Err(Error::SizeMismatch {
                            digest: digest_str,
                            expected: desc.size,
                            actual,
                        });
                    }
                    Ok(bytes) => {
                        if let Err(e) = partial.write(&bytes) {
                            partial.discard();
                            return Err(e);
                        }
                        bar.inc(bytes.len() as u64);
                    }
                    Err(e) => {
                        interrupted = Some(e);
                        break;
                    }
                }
            }
            match interrupted {
                // The stream's own digest check fails at the very end; ours
                // (in commit) reports it with the blob's name.
                Some(_) if partial.offset() >= desc.size => break,
                Some(e) if attempt < BLOB_ATTEMPTS => {
                    tracing::warn!(blob = %digest_str, at = partial.offset(), error = %e, "download interrupted; resuming");
                    backoff(attempt).await;
                }
                Some(e) => {
                    return Err(Error::Registry {
                        registry: self.host.clone(),
                        reference: self.reference.clone(),
                        reason: format!(
                            "download of blob {digest_str} was interrupted {BLOB_ATTEMPTS} times, last at byte {} of {}: {e}. \
                             Run the pull again: it resumes",
                            partial.offset(),
                            desc.size
                        ),
                    });
                }
                None => break,
            }
        }
        let size = desc.size;
        tokio::task::spawn_blocking(move || partial.commit(Some(size)))
            .await
            .map_err(|e| self.registry_err("blob", format!("download task failed: {e}")))??;
        self.reg
            .sources
            .record(&desc.digest, &self.host, oref.repository());
        bar.done("done");
        Ok(())
    }

    /// Uploads a cached blob unless the repository has it (or can mount it
    /// from another repository of the registry); `bar` shows the upload.
    pub(crate) async fn push_blob(
        &self,
        oref: &Reference,
        digest: &Digest,
        bar: &Bar,
    ) -> Result<()> {
        let exists = self
            .client
            .blob_exists(oref, &digest.to_string())
            .await
            .map_err(|e| self.err("blob", e))?;
        let digest_str = digest.to_string();
        if exists {
            self.reg
                .sources
                .record(digest, oref.registry(), oref.repository());
            bar.done("exists");
            return Ok(());
        }
        if self.mounted(oref, digest).await {
            bar.done("mounted");
            return Ok(());
        }
        let path = self.reg.cache.blob_path(digest);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Error::BlobMissing {
                    digest: digest.to_string(),
                    cache: self.reg.cache.root().to_path_buf(),
                },
                _ => Error::io("opening blob to push", &path)(e),
            })?;
        let size = file
            .metadata()
            .await
            .map_err(Error::io("reading blob size", &path))?
            .len();
        let shown = bar.clone();
        let stream = futures_util::stream::unfold(file, move |mut f| {
            let shown = shown.clone();
            async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 4 << 20];
                match f.read(&mut buf).await {
                    Ok(0) => None,
                    Ok(n) => {
                        buf.truncate(n);
                        shown.inc(n as u64);
                        Some((Ok(bytes::Bytes::from(buf)), f))
                    }
                    Err(e) => Some((Err(OciDistributionError::IoError(e)), f)),
                }
            }
        });
        let upload = self
            .client
            .push_blob_stream(oref, stream, &digest_str, Some(size))
            .await
            .map_err(|e| Error::Push {
                reference: self.reference.clone(),
                reason: format!("uploading blob {digest_str}: {}", error_chain(&e)),
            });
        if upload.is_err() {
            bar.failed();
        }
        upload?;
        bar.done("pushed");
        self.reg
            .sources
            .record(digest, oref.registry(), oref.repository());
        Ok(())
    }

    /// Asks the registry to mount `digest` from another of its
    /// repositories known to hold it; whether it did.
    async fn mounted(&self, oref: &Reference, digest: &Digest) -> bool {
        let digest_str = digest.to_string();
        for from in self.reg.sources.on(digest, oref.registry()) {
            if from == oref.repository() {
                continue;
            }
            let source = Reference::with_digest(
                oref.registry().to_owned(),
                from.clone(),
                digest_str.clone(),
            );
            // A refusal starts an ordinary upload session instead, which
            // the registry expires: the blob is then uploaded.
            if self
                .client
                .mount_blob(oref, &source, &digest_str)
                .await
                .is_ok()
            {
                tracing::debug!(blob = %digest_str, %from, "mounted from another repository");
                self.reg
                    .sources
                    .record(digest, oref.registry(), oref.repository());
                return true;
            }
        }
        false
    }

    /// Gets a token (or basic credentials) with push scope in place for the
    /// repository before any upload.
    pub(crate) async fn authorize_push(&self, oref: &Reference) -> Result<()> {
        self.client
            .auth(oref, &self.auth, oci_client::RegistryOperation::Push)
            .await
            .map_err(|e| self.err("push access", e))?;
        Ok(())
    }

    pub(crate) async fn push_manifest(
        &self,
        oref: &Reference,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<()> {
        self.authorize_push(oref).await?;
        let content_type = media_type.parse().map_err(|_| Error::Push {
            reference: self.reference.clone(),
            reason: format!("bad media type {media_type}"),
        })?;
        self.client
            .push_manifest_raw(oref, body, content_type)
            .await
            .map_err(|e| Error::Push {
                reference: self.reference.clone(),
                reason: format!("uploading manifest: {}", error_chain(&e)),
            })?;
        Ok(())
    }
}

async fn backoff(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
}

/// An error and its sources, joined, so "connection refused" is not lost.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
