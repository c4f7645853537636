//! The entry points the CLI calls: [`build`] (`rootfs --dockerfile` and
//! `baseos`), [`build_from_image`] (`rootfs --docker-image`) and [`prune`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use firebuild_metadata::image::BuildConfig;
use firebuild_metadata::{ImageMetadata, ImageName, ImageType};
use firebuild_oci::RegistryConfig;
use firebuild_store::{DirectoryStore, Tag, NO_ORG};

use crate::base::Resolver;
use crate::config::ImageConfig;
use crate::engine::{Engine, StageState, Stats};
use crate::error::{BuildError, Result};
use crate::isolation::Isolation;
use crate::layers::{ImageRef, Key, LayerId, LayerStore, PruneReport};
use crate::mountns::{mount_overlay, with_private_mounts, OverlaySpec};
use crate::sandbox::{CancelToken, SandboxSettings};

/// Everything a Dockerfile build needs.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `--dockerfile SRC`: a path, inline text, an http(s) URL or a git URL.
    pub dockerfile: String,
    /// `--context DIR` (default: what the source implies).
    pub context_dir: Option<PathBuf>,
    /// `rootfs` or `baseos`.
    pub kind: ImageType,
    /// `--tag`; required for `rootfs`; for `baseos` it defaults to the FROM
    /// image's name and version under the `_` org.
    pub tag: Option<String>,
    /// `--build-arg KEY=VALUE`.
    pub build_args: BTreeMap<String, String>,
    /// `--dockerfile-stage NAME` (default: the last stage).
    pub target_stage: Option<String>,
    /// `--platform os/arch` of FROM images (default: the host's).
    pub platform: Option<String>,
    /// `--no-cache`: run every step (cached layers are neither used nor
    /// replaced).
    pub no_cache: bool,
    /// `--filesystem-size-mbs` (default: content plus headroom).
    pub filesystem_size_mib: Option<u64>,
    /// `--pre-build-command` / `--post-build-command`: shell commands run
    /// in the target stage before / after its instructions.
    pub pre_build_commands: Vec<String>,
    pub post_build_commands: Vec<String>,
    /// Cache root (`--cache-dir`): step layers under `build/`, OCI blobs,
    /// git clones under `git/`.
    pub cache_dir: PathBuf,
    /// Registry settings (insecure registries, mirrors, credentials).
    pub registry: RegistryConfig,
    /// The statically linked guest init installed at `/.firebuild/init`.
    pub vminit: PathBuf,
    /// Set it (e.g. with [`CancelToken::cancel_on_signals`]) to stop the build.
    pub cancel: CancelToken,
    /// How RUN steps are isolated (`--network`, `--memory`, ...).
    pub sandbox: SandboxSettings,
    /// Where RUN steps run (`--isolation`).
    pub isolation: Isolation,
    /// What one base image (or ADD archive) may unpack to.
    pub unpacked_limit: u64,
    /// `SOURCE_DATE_EPOCH`: the ext4 file is reproducible and no time in
    /// it (or in a push of it) is later.
    pub source_date_epoch: Option<i64>,
}

impl BuildOptions {
    /// Options with defaults for everything but the source, cache and init.
    pub fn new(
        dockerfile: impl Into<String>,
        cache_dir: impl Into<PathBuf>,
        vminit: impl Into<PathBuf>,
    ) -> Self {
        BuildOptions {
            dockerfile: dockerfile.into(),
            context_dir: None,
            kind: ImageType::Rootfs,
            tag: None,
            build_args: BTreeMap::new(),
            target_stage: None,
            platform: None,
            no_cache: false,
            filesystem_size_mib: None,
            pre_build_commands: Vec::new(),
            post_build_commands: Vec::new(),
            cache_dir: cache_dir.into(),
            registry: RegistryConfig::default(),
            vminit: vminit.into(),
            cancel: CancelToken::new(),
            sandbox: SandboxSettings::default(),
            isolation: Isolation::default(),
            unpacked_limit: firebuild_oci::DEFAULT_UNPACKED_LIMIT,
            source_date_epoch: None,
        }
    }
}

/// `rootfs --docker-image REF`: an OCI image straight into a rootfs.
#[derive(Debug, Clone)]
pub struct ImageOptions {
    pub reference: String,
    pub tag: String,
    pub platform: Option<String>,
    pub filesystem_size_mib: Option<u64>,
    pub cache_dir: PathBuf,
    pub registry: RegistryConfig,
    pub vminit: PathBuf,
    pub cancel: CancelToken,
    /// What the image may unpack to.
    pub unpacked_limit: u64,
    /// The metadata the pushing host stored with the image (`image pull` of
    /// an image `image push` made): its kind, build settings, parent and
    /// creation time are kept; how the image runs still comes from the
    /// image config, as for any image.
    pub pushed: Option<ImageMetadata>,
    /// As [`BuildOptions::source_date_epoch`].
    pub source_date_epoch: Option<i64>,
    /// The image as the caller just pulled it: used instead of resolving
    /// `reference` again (where a stored tag of that name would win).
    pub pulled: Option<firebuild_oci::ImageRecord>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutput {
    pub tag: Tag,
    /// The stored image directory (`rootfs` + `metadata.json`).
    pub dir: PathBuf,
    pub metadata: ImageMetadata,
    pub elapsed: Duration,
    /// Filesystem steps, and how many came from the cache.
    pub steps: usize,
    pub cached_steps: usize,
    /// The ext4 image was reused: nothing in the filesystem changed.
    pub rootfs_reused: bool,
}

fn require_root() -> Result<()> {
    if rustix::process::geteuid().is_root() {
        Ok(())
    } else {
        Err(BuildError::NotRoot)
    }
}

fn check_init(path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(md) if md.is_file() => Ok(()),
        Ok(_) => Err(BuildError::MissingInit {
            path: path.to_path_buf(),
            reason: "not a regular file".into(),
        }),
        Err(e) => Err(BuildError::MissingInit {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
    }
}

fn platforms(p: Option<&str>) -> Result<(firebuild_dockerfile::Platform, firebuild_oci::Platform)> {
    match p {
        None => Ok((
            firebuild_dockerfile::Platform::host(),
            firebuild_oci::Platform::host(),
        )),
        Some(s) => Ok((
            firebuild_dockerfile::Platform::parse(s).map_err(BuildError::Dockerfile)?,
            firebuild_oci::Platform::from_str(s)
                .map_err(|e| BuildError::Dockerfile(e.to_string()))?,
        )),
    }
}

/// Builds a Dockerfile into a stored, tagged root filesystem. Blocking; do
/// not call it from inside an async runtime (it runs its own for pulls).
pub fn build(store: &DirectoryStore, opts: &BuildOptions) -> Result<BuildOutput> {
    let started = Instant::now();
    require_root()?;
    check_init(&opts.vminit)?;
    let explicit_tag = opts.tag.as_deref().map(Tag::from_str).transpose()?;
    if opts.kind == ImageType::Rootfs && explicit_tag.is_none() {
        return Err(BuildError::Dockerfile(
            "rootfs builds need --tag org/name:version".into(),
        ));
    }
    store.clean_stale_staging()?;
    let mut source_opts = firebuild_source::SourceOptions::new(opts.cache_dir.join("git"));
    source_opts.context_dir = opts.context_dir.clone();
    let src = firebuild_source::load_str(&opts.dockerfile, &source_opts)
        .map_err(|e| BuildError::Context(e.to_string()))?;
    let df = firebuild_dockerfile::parse(&src.dockerfile, &src.name)
        .map_err(|e| BuildError::Dockerfile(e.to_string()))?;
    for w in &df.warnings {
        tracing::warn!("{}:{}: {}", df.file_name, w.line, w.message);
    }
    let (target_platform, oci_platform) = platforms(opts.platform.as_deref())?;
    let globals = firebuild_dockerfile::GlobalScope::new(
        &df,
        &opts.build_args,
        &firebuild_dockerfile::Platform::host(),
        &target_platform,
    )
    .map_err(|e| BuildError::Dockerfile(e.to_string()))?;
    let graph = df
        .resolve_stages(&globals)
        .map_err(|e| BuildError::Dockerfile(e.to_string()))?;
    let target = df
        .target_stage(opts.target_stage.as_deref())
        .map_err(|e| BuildError::Dockerfile(e.to_string()))?;
    warn_unused_args(&df, &opts.build_args);
    let order = graph.build_order(target);

    let layers = LayerStore::open(&opts.cache_dir)?;
    let downloads = layers.root().join("tmp").join(format!(
        "{}-dl-{}",
        std::process::id(),
        crate::util::unique_suffix()
    ));
    let _cleanup = RemoveOnDrop(downloads.clone());
    let mut resolver = Resolver::new(
        store,
        &layers,
        &opts.cache_dir,
        &opts.registry,
        oci_platform,
    );
    resolver.unpacked_limit = opts.unpacked_limit;
    let mut engine = Engine {
        layers: &layers,
        resolver,
        ctx: &src.context,
        df: &df,
        globals: &globals,
        graph: &graph,
        cancel: &opts.cancel,
        no_cache: opts.no_cache,
        nonce: opts.no_cache.then(crate::util::unique_suffix),
        done: HashMap::new(),
        used: Default::default(),
        stats: Stats::default(),
        downloads,
        file_hashes: crate::filehash::FileHashes::load(&layers.root().join("filehash.json")),
        sandbox: opts.sandbox,
        sandbox_ready: None,
        isolation: opts.isolation.clone(),
        vminit: &opts.vminit,
    };
    // A RUN step needs things of the host (an id range, the NAT): say what
    // is missing before any step runs.
    let runs = !opts.pre_build_commands.is_empty()
        || !opts.post_build_commands.is_empty()
        || df.stages.iter().any(|s| {
            s.instructions
                .iter()
                .any(|i| matches!(i.kind, firebuild_dockerfile::InstructionKind::Run(_)))
        });
    if runs && matches!(opts.isolation, Isolation::Sandbox) {
        engine.sandbox_options()?;
    }
    let mut last = None;
    for idx in order {
        let (pre, post): (&[String], &[String]) = if idx == target {
            (&opts.pre_build_commands, &opts.post_build_commands)
        } else {
            (&[], &[])
        };
        last = Some(engine.run_stage(idx, pre, post)?);
    }
    let state =
        last.ok_or_else(|| BuildError::Dockerfile("the Dockerfile has no stage to build".into()))?;
    let tag = match explicit_tag {
        Some(t) => t,
        None => default_baseos_tag(state.parent.as_deref())?,
    };
    let build_config = BuildConfig {
        build_args: opts.build_args.clone(),
        dockerfile: src.name.clone(),
        dockerfile_stage: opts.target_stage.clone(),
        source_date_epoch: opts.source_date_epoch,
    };
    engine
        .file_hashes
        .save(&layers.root().join("filehash.json"));
    let stats = engine.stats;
    let used: Vec<LayerId> = engine.used.iter().cloned().collect();
    finish(Finish {
        store,
        layers: &layers,
        tag,
        kind: opts.kind,
        state,
        build_config,
        created: None,
        fs_size: opts.filesystem_size_mib,
        vminit: &opts.vminit,
        used,
        started,
        stats,
        cancel: &opts.cancel,
    })
}

/// `rootfs --docker-image REF --tag T`: the image's layers are the root
/// filesystem and its config the metadata.
pub fn build_from_image(store: &DirectoryStore, opts: &ImageOptions) -> Result<BuildOutput> {
    let started = Instant::now();
    require_root()?;
    check_init(&opts.vminit)?;
    let tag = Tag::from_str(&opts.tag)?;
    store.clean_stale_staging()?;
    let (_, oci_platform) = platforms(opts.platform.as_deref())?;
    let layers = LayerStore::open(&opts.cache_dir)?;
    let mut resolver = Resolver::new(
        store,
        &layers,
        &opts.cache_dir,
        &opts.registry,
        oci_platform,
    );
    resolver.unpacked_limit = opts.unpacked_limit;
    let base = match &opts.pulled {
        Some(record) => resolver.resolve_record(&opts.reference, record)?,
        None => resolver.resolve(&opts.reference)?,
    };
    let used = layers.chain(base.top.as_ref())?;
    let pushed = opts.pushed.as_ref();
    let state = StageState {
        key: base.key,
        top: base.top,
        config: base.config,
        parent: pushed.map_or(base.parent, |md| md.parent.clone()),
        base_digest: pushed.map_or(base.digest, |md| md.base_image_digest.clone()),
    };
    finish(Finish {
        store,
        layers: &layers,
        tag,
        kind: pushed.map_or(ImageType::Rootfs, |md| md.kind),
        state,
        build_config: BuildConfig {
            source_date_epoch: opts.source_date_epoch,
            ..pushed.map(|md| md.build_config.clone()).unwrap_or_default()
        },
        created: pushed.map(|md| md.created_at_utc),
        fs_size: opts.filesystem_size_mib,
        vminit: &opts.vminit,
        used,
        started,
        stats: Stats::default(),
        cancel: &opts.cancel,
    })
}

/// Removes cached layers no stored image was built from (and, with
/// `cache_mounts`, every `RUN --mount=type=cache` directory). Waits for
/// running builds to finish first.
pub fn prune(store: &DirectoryStore, cache_dir: &Path, cache_mounts: bool) -> Result<PruneReport> {
    let layers = LayerStore::open_exclusive(cache_dir)?;
    let keep = |r: &ImageRef| {
        Tag::from_str(&r.tag)
            .ok()
            .and_then(|t| store.get(&t).ok())
            .is_some_and(|img| img.metadata.rootfs_digest == r.rootfs_digest)
    };
    layers.prune(&keep, cache_mounts)
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn warn_unused_args(df: &firebuild_dockerfile::Dockerfile, args: &BTreeMap<String, String>) {
    use firebuild_dockerfile::InstructionKind;
    let mut declared = std::collections::HashSet::new();
    let all = df
        .global_args
        .iter()
        .chain(df.stages.iter().flat_map(|s| s.instructions.iter()));
    for ins in all {
        if let InstructionKind::Arg(decls) = &ins.kind {
            declared.extend(decls.iter().map(|d| d.name.clone()));
        }
    }
    let unused: Vec<&String> = args.keys().filter(|k| !declared.contains(*k)).collect();
    if !unused.is_empty() {
        tracing::warn!("build arguments {unused:?} were not consumed by any ARG");
    }
}

/// `_/<image>:<version>` from the FROM reference of a baseos build.
fn default_baseos_tag(parent: Option<&str>) -> Result<Tag> {
    let parent = parent.ok_or_else(|| {
        BuildError::Dockerfile("this baseos builds FROM scratch: give it a --tag".into())
    })?;
    if let Ok(t) = Tag::from_str(parent) {
        return Ok(Tag::new(NO_ORG, t.name(), t.version())?);
    }
    let r = firebuild_oci::ImageRef::from_str(parent)
        .map_err(|e| BuildError::Dockerfile(e.to_string()))?;
    let name = r.repository().rsplit('/').next().unwrap_or(r.repository());
    Ok(Tag::new(NO_ORG, name, r.tag().unwrap_or("latest"))?)
}

struct Finish<'a> {
    store: &'a DirectoryStore,
    layers: &'a LayerStore,
    tag: Tag,
    kind: ImageType,
    state: StageState,
    /// With `source_date_epoch`, the ext4 file is reproducible.
    build_config: BuildConfig,
    /// metadata.json's creation time (default: now, or the epoch).
    created: Option<i64>,
    fs_size: Option<u64>,
    vminit: &'a Path,
    used: Vec<LayerId>,
    started: Instant,
    stats: Stats,
    cancel: &'a CancelToken,
}

/// Installs the guest init (as one more layer), writes the ext4 image and
/// metadata.json into a staging directory and publishes it under the tag.
fn finish(f: Finish<'_>) -> Result<BuildOutput> {
    let layers = f.layers;
    let epoch = f.build_config.source_date_epoch;
    let init_digest =
        crate::util::sha256_file(f.vminit).map_err(BuildError::io("reading", f.vminit))?;
    let init_key = Key::derive(Some(&f.state.key), &format!("init:{init_digest}"));
    let init_top = match layers.lookup(&init_key) {
        Some(meta) => meta.id,
        None => {
            let work = layers.new_work()?;
            let target = work
                .diff()
                .join(firebuild_metadata::boot::GUEST_INIT_PATH.trim_start_matches('/'));
            if let Some(dir) = target.parent() {
                std::fs::create_dir_all(dir).map_err(BuildError::io("creating", dir))?;
            }
            std::fs::copy(f.vminit, &target)
                .map_err(BuildError::io("copying the guest init to", &target))?;
            std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(BuildError::io("chmod", &target))?;
            layers
                .commit(work, &init_key, f.state.top.as_ref(), "guest init")?
                .id
        }
    };
    let out_key = Key::derive(
        Some(&init_key),
        &format!("ext4:{:?}:{:?}", f.fs_size, epoch),
    );
    if f.cancel.is_cancelled() {
        return Err(BuildError::Interrupted);
    }

    let staging = f.store.stage(&f.tag)?;
    let rootfs = staging.rootfs_path();
    // Nothing in the filesystem changed since the stored image was made:
    // link its ext4 file instead of writing it again.
    let previous = f
        .layers
        .read_ref(&f.tag.to_string())
        .filter(|r| r.output_key == out_key.hex());
    let reusable = previous.and_then(|r| {
        let img = f.store.get(&f.tag).ok()?;
        (img.metadata.rootfs_digest.is_some() && img.metadata.rootfs_digest == r.rootfs_digest)
            .then(|| {
                (
                    img.rootfs_path(),
                    img.metadata.rootfs_digest.clone(),
                    img.metadata.rootfs_size,
                )
            })
    });
    let (digest, size, reused) =
        match reusable.and_then(|(p, d, s)| std::fs::hard_link(&p, &rootfs).ok().map(|_| (d, s))) {
            Some((d, s)) => (d, s, true),
            None => {
                let chain = layers.mount_chain(Some(&init_top))?;
                let work = layers.new_work()?;
                let empty = work
                    .scratch("empty")
                    .map_err(BuildError::io("creating", work.dir()))?;
                let merged = work.merged();
                let layers_dir = layers.layers_dir();
                let label = f.tag.name().to_owned();
                let ext4_started = Instant::now();
                let made = with_private_mounts(|| {
                    mount_overlay(
                        &OverlaySpec {
                            layers_dir: &layers_dir,
                            lower: &chain,
                            upper: None,
                            empty_dir: &empty,
                        },
                        &merged,
                    )?;
                    crate::ext4::make_ext4_at(&merged, &rootfs, f.fs_size, &label, epoch)
                });
                if f.cancel.is_cancelled() {
                    return Err(BuildError::Interrupted);
                }
                made?;
                let digest = crate::util::sha256_file(&rootfs)
                    .map_err(BuildError::io("hashing", &rootfs))?;
                let size = std::fs::metadata(&rootfs)
                    .map_err(BuildError::io("stat", &rootfs))?
                    .len();
                tracing::info!(
                    "ext4 image written ({} MiB) in {:.2}s",
                    size >> 20,
                    ext4_started.elapsed().as_secs_f64()
                );
                (Some(digest), size, false)
            }
        };
    let mut metadata = metadata_for(
        &f.tag,
        f.kind,
        &f.state,
        f.build_config.clone(),
        size,
        digest.clone(),
    );
    if let Some(created) = f.created.or(epoch) {
        metadata.created_at_utc = created;
    }
    staging.write_metadata(&metadata)?;
    if f.cancel.is_cancelled() {
        return Err(BuildError::Interrupted);
    }
    let dir = staging.publish()?;
    let mut used = f.used.clone();
    used.push(init_top);
    layers.write_ref(&ImageRef {
        tag: f.tag.to_string(),
        rootfs_digest: digest,
        top: f.state.top.clone(),
        key: f.state.key.hex(),
        output_key: out_key.hex(),
        layers: used,
    })?;
    let elapsed = f.started.elapsed();
    tracing::info!(
        tag = %f.tag,
        size_mib = size >> 20,
        steps = f.stats.steps,
        cached = f.stats.cached,
        "built {} ({} MiB) in {:.2}s",
        f.tag,
        size >> 20,
        elapsed.as_secs_f64()
    );
    Ok(BuildOutput {
        tag: f.tag,
        dir,
        metadata,
        elapsed,
        steps: f.stats.steps,
        cached_steps: f.stats.cached,
        rootfs_reused: reused,
    })
}

fn metadata_for(
    tag: &Tag,
    kind: ImageType,
    state: &StageState,
    build_config: BuildConfig,
    size: u64,
    digest: Option<String>,
) -> ImageMetadata {
    let c: &ImageConfig = &state.config;
    ImageMetadata {
        created_at_utc: crate::util::now_unix(),
        image: ImageName {
            org: tag.org().to_owned(),
            image: tag.name().to_owned(),
            version: tag.version().to_owned(),
        },
        labels: c.labels.clone(),
        kind,
        build_config,
        entrypoint_info: c.entrypoint_info(),
        parent: state.parent.clone(),
        ports: c.ports.clone(),
        tag: tag.to_string(),
        volumes: c.volumes.clone(),
        stop_signal: c.stop_signal.clone(),
        healthcheck: c.healthcheck.clone(),
        onbuild: c.onbuild.clone(),
        base_image_digest: state.base_digest.clone(),
        rootfs_size: size,
        rootfs_digest: digest,
    }
}
