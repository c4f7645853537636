//! Stage execution: the instructions of each needed stage, in dependency
//! order, each filesystem step looked up in (or added to) the step cache.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use firebuild_dockerfile::{
    Dockerfile, Env, GlobalScope, Healthcheck, Instruction, InstructionKind, Mount, MountType,
    NetworkMode, RunProgram, SecurityMode, StageBase, StageGraph, StageScope,
};
use firebuild_source::BuildContext;
use sha2::{Digest as _, Sha256};

use crate::base::{Base, Resolver};
use crate::config::{ImageConfig, DEFAULT_PATH};
use crate::copy::{self, CopyOp, Download, Source};
use crate::error::{BuildError, Result, StepLocation};
use crate::fsutil::{self, Root, Scope};
use crate::isolation::{self, Isolation, StepVmError, VmStep};
use crate::layers::{Key, LayerId, LayerStore};
use crate::mountns::{mount_overlay, with_private_mounts, OverlaySpec};
use crate::sandbox::{
    self, Access, BindMount, BindSource, CancelToken, Network, RunSpec, SandboxOptions,
    SandboxSettings, StepRoot,
};

/// A stage's state while it is built, and its result afterwards.
#[derive(Debug, Clone)]
pub struct StageState {
    pub key: Key,
    pub top: Option<LayerId>,
    pub config: ImageConfig,
    /// The image reference or stored tag at the bottom of the stage chain.
    pub parent: Option<String>,
    pub base_digest: Option<String>,
}

/// Counters for the summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub steps: usize,
    pub cached: usize,
}

pub struct Engine<'a> {
    pub layers: &'a LayerStore,
    pub resolver: Resolver<'a>,
    pub ctx: &'a BuildContext,
    pub df: &'a Dockerfile,
    pub globals: &'a GlobalScope,
    pub graph: &'a StageGraph,
    pub cancel: &'a CancelToken,
    pub no_cache: bool,
    /// Mixed into every key with --no-cache, so nothing is reused.
    pub nonce: Option<String>,
    pub done: HashMap<usize, StageState>,
    pub used: BTreeSet<LayerId>,
    pub stats: Stats,
    /// Scratch directory for downloads (under the cache, removed on drop).
    pub downloads: PathBuf,
    /// Content hashes of context files, reused while their stamps match.
    pub file_hashes: crate::filehash::FileHashes,
    /// How RUN steps are isolated, and (once a RUN step needed it) the
    /// checked result.
    pub sandbox: SandboxSettings,
    pub sandbox_ready: Option<SandboxOptions>,
    /// Where RUN steps run; with a microVM, the guest init its root drive
    /// carries.
    pub isolation: Isolation,
    pub vminit: &'a Path,
}

/// What a filesystem step needs inside its private mount namespace.
struct StepEnv<'x> {
    /// The stage's merged tree (mounted at `merged`).
    root: Root,
    merged: &'x Path,
    scratch: &'x Path,
    /// Where the `--from` trees are mounted.
    froms: &'x [PathBuf],
    /// The layers under `merged` and `froms`, for the RUN sandbox's own
    /// view of them.
    overlay: OverlaySpec<'x>,
    stages: Vec<(OverlaySpec<'x>, &'x Path)>,
    store: &'x Path,
}

/// Why a filesystem step failed: a message for the step's location, or an
/// error that already says everything.
enum StepFailure {
    Message(String),
    Error(BuildError),
}

impl From<String> for StepFailure {
    fn from(m: String) -> Self {
        StepFailure::Message(m)
    }
}

impl From<&str> for StepFailure {
    fn from(m: &str) -> Self {
        StepFailure::Message(m.to_owned())
    }
}

struct Running<'s> {
    state: StageState,
    scope: StageScope,
    cmd_set: bool,
    stage_name: String,
    number: usize,
    total: usize,
    _p: std::marker::PhantomData<&'s ()>,
}

impl<'a> Engine<'a> {
    fn loc(&self, ins: &Instruction) -> StepLocation {
        StepLocation {
            file: self.df.file_name.clone(),
            line: ins.span.start.line,
            instruction: ins.original.clone(),
        }
    }

    /// Builds stage `idx` (its dependencies must be done) with extra RUN
    /// commands before and after its own instructions.
    pub fn run_stage(&mut self, idx: usize, pre: &[String], post: &[String]) -> Result<StageState> {
        let stage = &self.df.stages[idx];
        let resolved = &self.graph.stages[idx];
        let name = stage.display_name();
        let base = match &resolved.base {
            StageBase::Scratch => Base::scratch(),
            StageBase::Stage(i) => {
                let s = self.done.get(i).cloned().ok_or_else(|| {
                    BuildError::Dockerfile(format!("stage {i} was not built before stage {name}"))
                })?;
                Base {
                    key: s.key,
                    top: s.top,
                    config: s.config,
                    parent: s.parent,
                    digest: s.base_digest,
                }
            }
            StageBase::Image(r) => {
                let started = Instant::now();
                let b = self.resolver.resolve_for(r, resolved.platform.as_deref())?;
                tracing::info!(stage = %name, "FROM {r} ({:.2}s)", started.elapsed().as_secs_f64());
                b
            }
        };
        if let Some(top) = &base.top {
            self.used.extend(self.layers.chain(Some(top))?);
        }
        let triggers = base.config.onbuild.clone();
        let mut config = base.config.clone();
        config.onbuild.clear();
        let env = Env::from_key_values(config.env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut run = Running {
            state: StageState {
                key: base.key,
                top: base.top.clone(),
                config,
                parent: base.parent.clone(),
                base_digest: base.digest.clone(),
            },
            scope: self.globals.stage_scope(env),
            cmd_set: false,
            stage_name: name.clone(),
            number: 0,
            total: 0,
            _p: std::marker::PhantomData,
        };

        // ONBUILD triggers of the base run first, as in Docker.
        let mut instructions: Vec<Instruction> = Vec::new();
        if !triggers.is_empty() {
            let parsed = firebuild_dockerfile::parse_instructions(&triggers.join("\n"), "ONBUILD")
                .map_err(|e| {
                    BuildError::Dockerfile(format!("ONBUILD triggers of the base image: {e}"))
                })?;
            for ins in parsed.instructions {
                if matches!(
                    ins.kind,
                    InstructionKind::From(_) | InstructionKind::Onbuild(_)
                ) {
                    return Err(BuildError::Dockerfile(format!(
                        "ONBUILD trigger {:?} of the base image is not allowed",
                        ins.original
                    )));
                }
                instructions.push(ins);
            }
        }
        let synthetic = |cmd: &str| -> Result<Instruction> {
            let parsed =
                firebuild_dockerfile::parse_instructions(&format!("RUN {cmd}"), "build command")
                    .map_err(|e| BuildError::Dockerfile(format!("build command {cmd:?}: {e}")))?;
            parsed
                .instructions
                .into_iter()
                .next()
                .ok_or_else(|| BuildError::Dockerfile(format!("build command {cmd:?} is empty")))
        };
        for c in pre {
            instructions.push(synthetic(c)?);
        }
        instructions.extend(stage.instructions.iter().cloned());
        for c in post {
            instructions.push(synthetic(c)?);
        }
        run.total = instructions.len();
        for ins in &instructions {
            if self.cancel.is_cancelled() {
                return Err(BuildError::Interrupted);
            }
            run.number += 1;
            self.step(&mut run, ins)?;
        }
        let state = run.state;
        self.done.insert(idx, state.clone());
        Ok(state)
    }

    fn step(&mut self, run: &mut Running<'_>, ins: &Instruction) -> Result<()> {
        let at = self.loc(ins);
        let started = Instant::now();
        let expanded = run
            .scope
            .expand_instruction(&ins.kind)
            .map_err(|e| BuildError::step(&at, e.message))?;
        let cached = match &expanded {
            InstructionKind::Workdir(w) => Some(self.workdir_step(run, &at, w)?),
            InstructionKind::Volume(vols) => Some(self.volume_step(run, &at, vols)?),
            InstructionKind::Copy(c) => Some(self.copy_instruction(run, &at, c)?),
            InstructionKind::Add(a) => Some(self.add_instruction(run, &at, a)?),
            InstructionKind::Run(r) => Some(self.run_step(run, &at, ins, r)?),
            InstructionKind::From(_) => {
                return Err(BuildError::step(&at, "FROM cannot appear here"));
            }
            config => {
                self.config_step(run, &at, ins, config)?;
                None
            }
        };
        let label = format!(
            "[{} {}/{}] {}",
            run.stage_name, run.number, run.total, ins.original
        );
        match cached {
            Some(true) => tracing::info!("{label}: CACHED"),
            Some(false) => {
                tracing::info!("{label}: done in {:.2}s", started.elapsed().as_secs_f64())
            }
            None => tracing::info!("{label}"),
        }
        Ok(())
    }

    /// An instruction that only changes the image configuration (ENV, ARG,
    /// LABEL, CMD ...).
    fn config_step(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        ins: &Instruction,
        expanded: &InstructionKind,
    ) -> Result<()> {
        let cfg = &mut run.state.config;
        match expanded {
            InstructionKind::Env(kvs) => {
                run.scope
                    .apply(&ins.kind, self.globals)
                    .map_err(|e| BuildError::step(at, e.message))?;
                for kv in kvs {
                    cfg.set_env(&kv.key, &kv.value);
                }
            }
            InstructionKind::Arg(_) => {
                run.scope
                    .apply(&ins.kind, self.globals)
                    .map_err(|e| BuildError::step(at, e.message))?;
            }
            InstructionKind::Label(kvs) => {
                for kv in kvs {
                    cfg.labels.insert(kv.key.clone(), kv.value.clone());
                }
            }
            InstructionKind::Maintainer(_) => {}
            InstructionKind::Expose(ports) => {
                for p in ports {
                    let spec = firebuild_dockerfile::PortSpec::parse(p)
                        .map_err(|e| BuildError::step(at, e))?;
                    for k in spec.keys() {
                        cfg.add_port(&k);
                    }
                }
            }
            InstructionKind::User(u) => cfg.user = u.clone(),
            InstructionKind::StopSignal(s) => {
                firebuild_dockerfile::parse_signal(s).map_err(|e| BuildError::step(at, e))?;
                cfg.stop_signal = Some(s.clone());
            }
            InstructionKind::Shell(v) => cfg.shell = v.clone(),
            InstructionKind::Cmd(c) => {
                cfg.cmd = Some(c.to_argv(&cfg.shell_or_default()));
                run.cmd_set = true;
            }
            InstructionKind::Entrypoint(c) => {
                cfg.entrypoint = Some(c.to_argv(&cfg.shell_or_default()));
                // A new ENTRYPOINT drops the inherited CMD unless this
                // stage set one (Docker).
                if !run.cmd_set {
                    cfg.cmd = None;
                }
            }
            InstructionKind::Healthcheck(h) => cfg.healthcheck = Some(healthcheck(h)),
            InstructionKind::Onbuild(o) => cfg.onbuild.push(o.expression.clone()),
            // Instructions with a step of their own are dispatched in `step`.
            other => {
                return Err(BuildError::step(
                    at,
                    format!("{} is not a configuration instruction", other.name()),
                ))
            }
        }
        Ok(())
    }

    /// WORKDIR: the directory is made, owned by the current USER.
    fn workdir_step(&mut self, run: &mut Running<'_>, at: &StepLocation, w: &str) -> Result<bool> {
        let cfg = &mut run.state.config;
        let path = fsutil::join_abs(&cfg.workdir_or_root(), w);
        cfg.workdir = path.clone();
        let user = cfg.user.clone();
        let desc = format!("WORKDIR {path}\0{user}");
        self.fs_step(run, at, &desc, &[], move |env| {
            let owner = if user.is_empty() {
                (0, 0)
            } else {
                let u = crate::users::resolve_user(&env.root, &user).map_err(|e| e.to_string())?;
                (u.creds.uid, u.creds.gid)
            };
            env.root
                .mkdir_all(
                    &fsutil::clean_rel(&path),
                    0o755,
                    Some(owner),
                    &mut Vec::new(),
                )
                .map_err(|e| format!("creating {path}: {e}"))?;
            Ok(())
        })
    }

    /// VOLUME: the directories exist in the image.
    fn volume_step(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        vols: &[String],
    ) -> Result<bool> {
        let cfg = &mut run.state.config;
        let mut paths = Vec::new();
        for v in vols {
            let p = fsutil::join_abs(&cfg.workdir_or_root(), v);
            cfg.add_volume(&p);
            paths.push(p);
        }
        let desc = format!("VOLUME {}", paths.join("\0"));
        self.fs_step(run, at, &desc, &[], move |env| {
            for p in &paths {
                env.root
                    .mkdir_all(&fsutil::clean_rel(p), 0o755, Some((0, 0)), &mut Vec::new())
                    .map_err(|e| format!("creating volume {p}: {e}"))?;
            }
            Ok(())
        })
    }

    fn copy_instruction(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        c: &firebuild_dockerfile::CopyInstr,
    ) -> Result<bool> {
        let cfg = &run.state.config;
        let op = CopyOp {
            add: false,
            sources: c.sources.clone(),
            inline: c
                .inline_sources
                .iter()
                .map(|s| (s.path.clone(), s.data.clone().into_bytes()))
                .collect(),
            downloads: Vec::new(),
            dest: c.dest.clone(),
            workdir: cfg.workdir_or_root(),
            chown: c.chown.clone(),
            chmod: c
                .chmod
                .as_deref()
                .map(copy::parse_chmod)
                .transpose()
                .map_err(|e| BuildError::step(at, e.to_string()))?,
            excludes: c.excludes.clone(),
            unpack: false,
            unpacked_limit: None,
        };
        if c.parents {
            return Err(BuildError::step(
                at,
                "COPY --parents is not supported yet; copy each directory explicitly",
            ));
        }
        self.copy_step(run, at, op, c.from.as_deref())
    }

    /// ADD: like COPY, plus downloads and archive extraction.
    fn add_instruction(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        a: &firebuild_dockerfile::AddInstr,
    ) -> Result<bool> {
        let cfg = &run.state.config;
        if a.sources
            .iter()
            .any(|s| s.starts_with("git@") || s.ends_with(".git") || s.contains(".git#"))
        {
            return Err(BuildError::step(at, "ADD of a git repository is not supported; clone it in a RUN step or use a git build context"));
        }
        let mut op = CopyOp {
            add: true,
            sources: a
                .sources
                .iter()
                .filter(|s| !copy::is_url(s))
                .cloned()
                .collect(),
            inline: a
                .inline_sources
                .iter()
                .map(|s| (s.path.clone(), s.data.clone().into_bytes()))
                .collect(),
            downloads: Vec::new(),
            dest: a.dest.clone(),
            workdir: cfg.workdir_or_root(),
            chown: a.chown.clone(),
            chmod: a
                .chmod
                .as_deref()
                .map(copy::parse_chmod)
                .transpose()
                .map_err(|e| BuildError::step(at, e.to_string()))?,
            excludes: a.excludes.clone(),
            unpack: a.unpack.unwrap_or(true),
            unpacked_limit: Some(self.resolver.unpacked_limit),
        };
        let urls: Vec<&String> = a.sources.iter().filter(|s| copy::is_url(s)).collect();
        if a.checksum.is_some() && (urls.len() != 1 || !op.sources.is_empty()) {
            return Err(BuildError::step(
                at,
                "ADD --checksum needs exactly one http(s) source",
            ));
        }
        for u in urls {
            op.downloads
                .push(self.download(at, u, a.checksum.as_deref())?);
        }
        self.copy_step(run, at, op, None)
    }

    /// A step that changes files: reused from the cache by key, or run on a
    /// fresh overlay layer and stored. Returns whether it was cached.
    fn fs_step<F>(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        desc: &str,
        froms: &[Option<LayerId>],
        f: F,
    ) -> Result<bool>
    where
        F: FnOnce(StepEnv<'_>) -> std::result::Result<(), StepFailure> + Send,
    {
        self.stats.steps += 1;
        let mut key = Key::derive(Some(&run.state.key), desc);
        if let Some(nonce) = &self.nonce {
            key = Key::derive(Some(&key), nonce);
        }
        if !self.no_cache {
            if let Some(meta) = self.layers.lookup(&key) {
                self.stats.cached += 1;
                run.state.key = key;
                run.state.top = Some(meta.id.clone());
                self.used.insert(meta.id);
                return Ok(true);
            }
        }
        let lower = self.layers.mount_chain(run.state.top.as_ref())?;
        let from_chains: Vec<Vec<LayerId>> = froms
            .iter()
            .map(|t| self.layers.mount_chain(t.as_ref()))
            .collect::<Result<_>>()?;
        let work = self.layers.new_work()?;
        let io = |e| BuildError::io("creating", work.dir())(e);
        let empty = work.scratch("empty").map_err(io)?;
        let scratch = work.scratch("scratch").map_err(io)?;
        let from_dirs: Vec<PathBuf> = (0..froms.len())
            .map(|i| work.scratch(&format!("from{i}")))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        let layers_dir = self.layers.layers_dir();
        let store_root = self.layers.root();
        let (diff, workdir, merged) = (work.diff(), work.work(), work.merged());
        let result = with_private_mounts(|| {
            mount_overlay(
                &OverlaySpec {
                    layers_dir: &layers_dir,
                    lower: &lower,
                    upper: Some((&diff, &workdir)),
                    empty_dir: &empty,
                },
                &merged,
            )?;
            for (chain, dir) in from_chains.iter().zip(&from_dirs) {
                mount_overlay(
                    &OverlaySpec {
                        layers_dir: &layers_dir,
                        lower: chain,
                        upper: None,
                        empty_dir: &empty,
                    },
                    dir,
                )?;
            }
            let root = Root::open(&merged, Scope::InRoot)
                .map_err(BuildError::errno("opening", &merged))?;
            let env = StepEnv {
                root,
                merged: &merged,
                scratch: &scratch,
                froms: &from_dirs,
                overlay: OverlaySpec {
                    layers_dir: &layers_dir,
                    lower: &lower,
                    upper: Some((&diff, &workdir)),
                    empty_dir: &empty,
                },
                stages: from_chains
                    .iter()
                    .zip(&from_dirs)
                    .map(|(chain, dir)| {
                        let spec = OverlaySpec {
                            layers_dir: &layers_dir,
                            lower: chain,
                            upper: None,
                            empty_dir: &empty,
                        };
                        (spec, dir.as_path())
                    })
                    .collect(),
                store: store_root,
            };
            f(env).map_err(|failure| match failure {
                StepFailure::Message(m) => BuildError::step(at, m),
                StepFailure::Error(e) => e,
            })
        });
        result?;
        let meta = self
            .layers
            .commit(work, &key, run.state.top.as_ref(), &at.instruction)?;
        run.state.key = key;
        run.state.top = Some(meta.id.clone());
        self.used.insert(meta.id);
        Ok(false)
    }

    /// The filesystem state `--from=NAME` refers to: a stage (by name or
    /// index) or an image.
    fn source_state(&mut self, at: &StepLocation, from: &str) -> Result<(Key, Option<LayerId>)> {
        let by_index = from
            .parse::<usize>()
            .ok()
            .filter(|i| *i < self.df.stages.len());
        let idx = by_index.or_else(|| self.df.stage_by_name(from).map(|s| s.index));
        if let Some(i) = idx {
            let s = self.done.get(&i).ok_or_else(|| {
                BuildError::step(at, format!("--from={from}: that stage is not built before this one (stages can only use earlier stages)"))
            })?;
            return Ok((s.key, s.top.clone()));
        }
        let b = self.resolver.resolve(from)?;
        if let Some(top) = &b.top {
            self.used.extend(self.layers.chain(Some(top))?);
        }
        Ok((b.key, b.top))
    }

    fn copy_step(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        op: CopyOp,
        from: Option<&str>,
    ) -> Result<bool> {
        let what = if op.add { "ADD" } else { "COPY" };
        let mut h = Sha256::new();
        h.update(format!(
            "{what}\0{:?}\0{}\0{}\0{:?}\0{:?}\0{:?}\0{}\0",
            op.sources, op.dest, op.workdir, op.chown, op.chmod, op.excludes, op.unpack
        ));
        for (name, data) in &op.inline {
            h.update(name.as_bytes());
            h.update(Sha256::digest(data));
        }
        for d in &op.downloads {
            h.update(format!("{}\0{}\0{:?}\0", d.url, d.digest, d.mtime));
        }
        let froms = match from {
            Some(f) => {
                let (key, top) = self.source_state(at, f)?;
                h.update(format!("from\0{}", key.hex()));
                vec![top]
            }
            None => {
                if !op.sources.is_empty() {
                    let content = copy::hash_context_sources(self.ctx, &op, &mut self.file_hashes)
                        .map_err(|e| BuildError::step(at, format!("{what} {e}")))?;
                    h.update(content);
                }
                Vec::new()
            }
        };
        let desc = hex::encode(h.finalize());
        let ctx = self.ctx;
        self.fs_step(run, at, &desc, &froms, move |env| {
            if let Some(dir) = env.froms.first() {
                let src =
                    Root::open(dir, Scope::InRoot).map_err(|e| format!("{what} --from: {e}"))?;
                copy::execute(&op, Source::Root(&src), &env.root)
            } else {
                copy::execute(&op, Source::Context(ctx), &env.root)
            }
            .map_err(|e| StepFailure::Message(format!("{what} {e}")))
        })
    }

    fn download(&self, at: &StepLocation, url: &str, checksum: Option<&str>) -> Result<Download> {
        std::fs::create_dir_all(&self.downloads)
            .map_err(BuildError::io("creating", &self.downloads))?;
        let path = self.downloads.join(crate::util::unique_suffix());
        let e = |m: String| BuildError::step(at, format!("ADD {url}: {m}"));
        let resp = ureq::get(url)
            .call()
            .map_err(|x| e(format!("download failed: {x}")))?;
        let mtime = resp
            .headers()
            .get("last-modified")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()
            })
            .map(|t| t.unix_timestamp());
        let mut body = resp.into_body();
        let mut f = std::fs::File::create(&path).map_err(BuildError::io("creating", &path))?;
        let mut hasher = Sha256::new();
        let mut reader = body.as_reader();
        let mut buf = vec![0u8; 65536];
        loop {
            let n = std::io::Read::read(&mut reader, &mut buf)
                .map_err(|x| e(format!("download failed: {x}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            std::io::Write::write_all(&mut f, &buf[..n])
                .map_err(BuildError::io("writing", &path))?;
        }
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        if let Some(want) = checksum {
            if want != digest {
                return Err(e(format!(
                    "checksum mismatch: expected {want}, got {digest}"
                )));
            }
        }
        let name = url
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| !n.is_empty())
            .unwrap_or("index.html")
            .to_owned();
        Ok(Download {
            url: url.to_owned(),
            path,
            name,
            mtime,
            digest,
        })
    }

    /// The checked sandbox (checked once, before the first RUN step).
    pub fn sandbox_options(&mut self) -> Result<SandboxOptions> {
        if let Some(s) = &self.sandbox_ready {
            return Ok(s.clone());
        }
        let s = self.sandbox.resolve()?;
        self.sandbox_ready = Some(s.clone());
        Ok(s)
    }

    fn run_step(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        ins: &Instruction,
        r: &firebuild_dockerfile::RunInstr,
    ) -> Result<bool> {
        if r.security == Some(SecurityMode::Insecure) {
            return Err(BuildError::step(
                at,
                "RUN --security=insecure is not supported (steps always run sandboxed)",
            ));
        }
        let step_vm = match &self.isolation {
            Isolation::MicroVm(vm) => Some(vm.clone()),
            Isolation::Sandbox => None,
        };
        let build_network = self.sandbox.network;
        let network = match r.network {
            Some(NetworkMode::None) => Network::None,
            Some(NetworkMode::Host) if build_network != Network::Host => {
                return Err(BuildError::step(
                    at,
                    "RUN --network=host needs the build's --network host (the host's network is given only when asked for)",
                ));
            }
            Some(NetworkMode::Host) => Network::Host,
            _ => build_network,
        };
        let cfg = run.state.config.clone();
        let (argv, script) = run_program(r, &cfg);
        let mounts = run
            .scope
            .resolve_mounts(r)
            .map_err(|e| BuildError::step(at, e.message))?;
        let mut env: Vec<String> = run.scope.env().to_key_values();
        if !env.iter().any(|kv| kv.starts_with("PATH=")) {
            env.push(format!("PATH={DEFAULT_PATH}"));
        }

        let (mounts_key, froms, planned) = self.plan_mounts(at, &cfg, &mounts)?;
        if step_vm.is_some() {
            if !planned.is_empty() {
                return Err(BuildError::step(
                    at,
                    "RUN --mount is not supported with --isolation microvm yet; build this Dockerfile with the default sandbox isolation",
                ));
            }
            if network == Network::Host {
                return Err(BuildError::step(
                    at,
                    "a build microVM has no host network: drop --network host, or use the sandbox isolation",
                ));
            }
        }
        let desc = format!(
            "RUN\0{}\0{}\0{}\0{}\0{:?}\0{:?}\0{}",
            serde_json::to_string(&argv).unwrap_or_default(),
            serde_json::to_string(&env).unwrap_or_default(),
            cfg.user,
            cfg.workdir_or_root(),
            network,
            script,
            mounts_key
        );
        let command = RunCommand {
            argv,
            env,
            cfg,
            script,
            network,
            shown: ins.original.clone(),
        };
        match step_vm {
            Some(vm) => self.run_in_microvm(run, at, &desc, vm, command),
            None => self.run_in_sandbox(run, at, &desc, &froms, planned, command),
        }
    }

    /// `RUN --mount` sources: what each mount binds, its part of the cache
    /// key (hex), and the other stages' layers bound from.
    fn plan_mounts(
        &mut self,
        at: &StepLocation,
        cfg: &ImageConfig,
        mounts: &[Mount],
    ) -> Result<(String, Vec<Option<LayerId>>, Vec<PlannedMount>)> {
        // Mount sources and their part of the key.
        let mut h = Sha256::new();
        let mut froms: Vec<Option<LayerId>> = Vec::new();
        let mut planned: Vec<PlannedMount> = Vec::new();
        for m in mounts {
            if !matches!(m.kind, MountType::Cache | MountType::Bind) {
                return Err(BuildError::step(
                    at,
                    format!(
                        "RUN --mount=type={} is not supported; use type=cache or type=bind",
                        m.kind.as_str()
                    ),
                ));
            }
            let target = m
                .target
                .clone()
                .ok_or_else(|| BuildError::step(at, "RUN --mount needs target="))?;
            let target = fsutil::join_abs(&cfg.workdir_or_root(), &target);
            match m.kind {
                MountType::Cache => {
                    if m.from.is_some() {
                        return Err(BuildError::step(
                            at,
                            "RUN --mount=type=cache,from=… is not supported",
                        ));
                    }
                    let id = m.id.clone().unwrap_or_else(|| target.clone());
                    let dir = self.layers.cache_mount_dir(&id)?;
                    h.update(format!("cache\0{target}\0"));
                    planned.push(PlannedMount::Cache {
                        dir,
                        target,
                        mount: m.clone(),
                    });
                }
                MountType::Bind => {
                    let source = m.source.clone().unwrap_or_default();
                    match &m.from {
                        Some(f) => {
                            let (key, top) = self.source_state(at, f)?;
                            h.update(format!(
                                "bind-from\0{}\0{source}\0{target}\0{}\0",
                                key.hex(),
                                m.read_only
                            ));
                            froms.push(top);
                            planned.push(PlannedMount::FromRoot {
                                index: froms.len() - 1,
                                source,
                                target,
                                rw: !m.read_only,
                            });
                        }
                        None => {
                            let BuildContext::Local(local) = self.ctx else {
                                return Err(BuildError::step(at, "RUN --mount=type=bind without from= needs a local or git build context"));
                            };
                            let host = local.resolve(&source).map_err(|e| {
                                BuildError::step(at, format!("--mount source: {e}"))
                            })?;
                            let op = CopyOp {
                                sources: vec![if source.is_empty() {
                                    ".".into()
                                } else {
                                    source.clone()
                                }],
                                ..Default::default()
                            };
                            let content =
                                copy::hash_context_sources(self.ctx, &op, &mut self.file_hashes)
                                    .map_err(|e| {
                                        BuildError::step(at, format!("RUN --mount source {e}"))
                                    })?;
                            h.update(format!(
                                "bind\0{source}\0{target}\0{content}\0{}\0",
                                m.read_only
                            ));
                            planned.push(PlannedMount::Host {
                                source: host,
                                target,
                                rw: !m.read_only,
                            });
                        }
                    }
                }
                _ => continue,
            }
        }
        Ok((hex::encode(h.finalize()), froms, planned))
    }

    /// Runs the command in a fresh microVM over the stage's layers.
    fn run_in_microvm(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        desc: &str,
        vm: std::sync::Arc<dyn crate::isolation::StepVm>,
        command: RunCommand,
    ) -> Result<bool> {
        let RunCommand {
            argv,
            env,
            cfg,
            script,
            network,
            shown: command_shown,
        } = command;
        let cancel = self.cancel.clone();
        let at_run = at.clone();
        let init_disk = isolation::init_disk(self.layers.root(), self.vminit)?;
        let limits = self.sandbox.limits;
        self.fs_step(run, at, desc, &[], move |senv| {
            let lower = senv.overlay.lower;
            if lower.is_empty() {
                return Err(StepFailure::Message(
                    "the stage is empty (FROM scratch): there is nothing to run".into(),
                ));
            }
            if lower.len() > isolation::MAX_LAYER_DISKS {
                return Err(StepFailure::Message(format!(
                    "the stage has {} layers; a build microVM takes at most {} (combine RUN steps, or use the sandbox isolation)",
                    lower.len(),
                    isolation::MAX_LAYER_DISKS
                )));
            }
            let disks = lower
                .iter()
                .map(|id| isolation::export_layer(senv.overlay.layers_dir, id))
                .collect::<Result<Vec<_>>>()
                .map_err(StepFailure::Error)?;
            let Some((upper, _)) = senv.overlay.upper else {
                return Err(StepFailure::Message("the step has no upper layer".into()));
            };
            let mut env = env;
            if !env.iter().any(|kv| kv.starts_with("HOME=")) {
                let home = crate::users::resolve_user(&senv.root, &cfg.user)
                    .map(|u| u.home)
                    .unwrap_or_else(|_| "/root".into());
                env.push(format!("HOME={home}"));
            }
            let cwd = cfg.workdir_or_root();
            let step = VmStep {
                init_disk: &init_disk,
                layers: &disks,
                upper,
                argv: &argv,
                env: &env,
                user: &cfg.user,
                cwd: &cwd,
                network,
                script: script.as_ref().map(|(p, c)| (p.as_str(), c.as_str())),
                limits,
            };
            let mut on_line =
                |line: &str| tracing::info!(target: "firebuild_builder::run", "{line}");
            let out = vm
                .run_step(&step, &mut on_line, &cancel)
                .map_err(|e| {
                    StepFailure::Error(match e {
                        StepVmError::Interrupted => BuildError::Interrupted,
                        StepVmError::Failed(reason) => BuildError::step(&at_run, reason),
                    })
                })?;
            if out.code != 0 {
                return Err(run_failed(at_run, command_shown, out.code, String::new(), &out.tail));
            }
            Ok(())
        })
    }

    /// Runs the command in the hardened sandbox on this host.
    fn run_in_sandbox(
        &mut self,
        run: &mut Running<'_>,
        at: &StepLocation,
        desc: &str,
        froms: &[Option<LayerId>],
        planned: Vec<PlannedMount>,
        command: RunCommand,
    ) -> Result<bool> {
        let RunCommand {
            argv,
            env,
            cfg,
            script,
            network,
            shown: command_shown,
        } = command;
        let cancel = self.cancel.clone();
        let at_run = at.clone();
        let sandbox = self.sandbox_options()?;
        self.fs_step(run, at, desc, froms, move |senv| {
            let user =
                crate::users::resolve_user(&senv.root, &cfg.user).map_err(|e| e.to_string())?;
            let cwd = cfg.workdir_or_root();
            senv.root
                .mkdir_all(
                    &fsutil::clean_rel(&cwd),
                    0o755,
                    Some((user.creds.uid, user.creds.gid)),
                    &mut Vec::new(),
                )
                .map_err(|e| format!("creating the working directory {cwd}: {e}"))?;
            let mut env = env;
            if !env.iter().any(|kv| kv.starts_with("HOME=")) {
                env.push(format!("HOME={}", user.home));
            }
            let mut binds = Vec::new();
            for p in &planned {
                binds.push(p.prepare(&senv)?);
            }
            if let Some((path, content)) = &script {
                let host = senv.scratch.join("script");
                std::fs::write(&host, content)
                    .map_err(|e| format!("writing the heredoc script: {e}"))?;
                std::fs::set_permissions(
                    &host,
                    std::os::unix::fs::PermissionsExt::from_mode(0o755),
                )
                .map_err(|e| e.to_string())?;
                binds.push(BindMount {
                    source: BindSource::Store(host),
                    target: path.clone(),
                    access: Access::ReadOnly,
                });
            }
            let resolv_conf = match network {
                Network::Default => Some(sandbox::net::RESOLV_CONF.to_owned()),
                Network::Host => std::fs::read_to_string("/etc/resolv.conf").ok(),
                Network::None => None,
            };
            let spec = RunSpec {
                argv: argv.clone(),
                env,
                cwd,
                creds: user.creds,
                network,
                hostname: "firebuild".into(),
                mounts: binds,
                resolv_conf,
                hosts: Some(
                    "127.0.0.1\tlocalhost firebuild\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                        .into(),
                ),
            };
            let StepEnv {
                root,
                merged,
                scratch,
                overlay,
                stages,
                store,
                ..
            } = senv;
            // The sandbox unmounts `merged` and mounts its own view: nothing
            // of ours may hold the tree open.
            drop(root);
            let step = StepRoot {
                merged,
                overlay,
                store,
                stages,
            };
            let mut on_line =
                |line: &str| tracing::info!(target: "firebuild_builder::run", "{line}");
            let out = sandbox::run_in_root(&step, scratch, &sandbox, &spec, &mut on_line, &cancel)
                .map_err(StepFailure::Error)?;
            if out.code != 0 {
                let note = match out.limit {
                    Some(l) => format!("\n  {l}"),
                    None => mknod_note(&command_shown, &out.tail),
                };
                return Err(run_failed(at_run, command_shown, out.code, note, &out.tail));
            }
            Ok(())
        })
    }
}

/// A RUN step's command, ready for either isolation.
struct RunCommand {
    argv: Vec<String>,
    env: Vec<String>,
    cfg: ImageConfig,
    /// A heredoc script: its path in the step and its content.
    script: Option<(String, String)>,
    network: Network,
    /// The instruction as written, for failures.
    shown: String,
}

/// The argv of a RUN (exec form, shell form, or a heredoc script run from
/// `/dev/pipes`) and the script it needs.
fn run_program(
    r: &firebuild_dockerfile::RunInstr,
    cfg: &ImageConfig,
) -> (Vec<String>, Option<(String, String)>) {
    match r.program() {
        RunProgram::Exec(v) => (v, None),
        RunProgram::Shell(s) => {
            let mut v = cfg.shell_or_default();
            v.push(s);
            (v, None)
        }
        RunProgram::ScriptFile { name, content } => {
            let path = format!("/dev/pipes/{}", name.replace('/', "_"));
            (vec![path.clone()], Some((path, content)))
        }
    }
}

/// Why a failed sandbox step that made a device node failed: the sandbox
/// refuses mknod, as rootless BuildKit does.
fn mknod_note(command: &str, tail: &[String]) -> String {
    if !command.contains("mknod") && !tail.iter().any(|l| l.contains("mknod")) {
        return String::new();
    }
    "\n  the sandbox refuses mknod (as rootless BuildKit does); build with \
     --isolation microvm to keep device nodes in the image"
        .to_owned()
}

/// A RUN command that exited with `code`, with its last output lines.
fn run_failed(
    at: StepLocation,
    command: String,
    code: i32,
    note: String,
    tail: &[String],
) -> StepFailure {
    let tail = tail
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n");
    StepFailure::Error(BuildError::RunFailed {
        at: Box::new(at),
        command,
        code,
        note,
        tail,
    })
}

enum PlannedMount {
    Cache {
        dir: PathBuf,
        target: String,
        mount: Mount,
    },
    FromRoot {
        index: usize,
        source: String,
        target: String,
        rw: bool,
    },
    Host {
        source: PathBuf,
        target: String,
        rw: bool,
    },
}

impl PlannedMount {
    /// The sandbox bind for this mount, inside the step's private
    /// namespace.
    fn prepare(&self, env: &StepEnv<'_>) -> std::result::Result<BindMount, String> {
        let rw = |rw: bool| {
            if rw {
                Access::Throwaway
            } else {
                Access::ReadOnly
            }
        };
        match self {
            PlannedMount::Cache { dir, target, mount } => {
                if let (Some(mode), true) = (mount.mode, is_empty_dir(dir)) {
                    std::fs::set_permissions(
                        dir,
                        std::os::unix::fs::PermissionsExt::from_mode(mode),
                    )
                    .map_err(|e| e.to_string())?;
                }
                if mount.uid.is_some() || mount.gid.is_some() {
                    std::os::unix::fs::chown(dir, mount.uid, mount.gid)
                        .map_err(|e| e.to_string())?;
                }
                Ok(BindMount {
                    source: BindSource::Store(dir.clone()),
                    target: target.clone(),
                    access: if mount.read_only {
                        Access::ReadOnly
                    } else {
                        Access::Shared
                    },
                })
            }
            PlannedMount::FromRoot {
                index,
                source,
                target,
                rw: writable,
            } => {
                let root_dir = env
                    .froms
                    .get(*index)
                    .ok_or("internal: missing --mount from root")?;
                let root = Root::open(root_dir, Scope::InRoot).map_err(|e| e.to_string())?;
                let fd = root
                    .open_at(&fsutil::clean_rel(source), rustix::fs::OFlags::PATH)
                    .map_err(|e| format!("--mount source {source}: {e}"))?;
                let path = root.host_path_of(&fd).map_err(|e| e.to_string())?;
                Ok(BindMount {
                    source: BindSource::Stage {
                        index: *index,
                        path,
                    },
                    target: target.clone(),
                    access: rw(*writable),
                })
            }
            PlannedMount::Host {
                source,
                target,
                rw: writable,
            } => Ok(BindMount {
                source: BindSource::Host(source.clone()),
                target: target.clone(),
                access: rw(*writable),
            }),
        }
    }
}

fn is_empty_dir(p: &Path) -> bool {
    std::fs::read_dir(p)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false)
}

fn healthcheck(h: &Healthcheck) -> firebuild_metadata::image::Healthcheck {
    let ns = |d: &Option<std::time::Duration>| d.map(|d| d.as_nanos() as u64);
    match h {
        Healthcheck::None => firebuild_metadata::image::Healthcheck {
            test: h.test(),
            ..Default::default()
        },
        Healthcheck::Cmd {
            interval,
            timeout,
            start_period,
            start_interval,
            retries,
            ..
        } => firebuild_metadata::image::Healthcheck {
            test: h.test(),
            interval_ns: ns(interval),
            timeout_ns: ns(timeout),
            start_period_ns: ns(start_period),
            start_interval_ns: ns(start_interval),
            retries: *retries,
        },
    }
}
