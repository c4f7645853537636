//! ARG and ENV scoping, as BuildKit applies it:
//!
//! - ARGs before the first FROM form the global scope. It holds the
//!   predefined platform ARGs and is visible to FROM lines only.
//! - In a stage, an ARG is visible from its declaration on. Its value is
//!   the `--build-arg` value if given, else its default (expanded), else
//!   the value of the global ARG of the same name.
//! - ENV and ARG values both go into the environment that expands words
//!   and that RUN sees; only ENV goes into the image config.
//! - A stage built `FROM` another stage starts with that stage's scope
//!   ([`StageScope::clone`]).

use crate::ast::*;
use crate::env::{Env, EnvLookup};
use crate::error::{ExpandError, ParseError};
use crate::lexer::ShellLex;
use crate::mount::Mount;
use std::collections::BTreeMap;

/// An OCI platform (`os/arch[/variant]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/<arch of this build of the tool>`.
    pub fn host() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "arm" => "arm",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: arch.into(),
            variant: None,
        }
    }

    /// Parse `os/arch[/variant]` (lower-cased).
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad =
            || format!("invalid platform {s:?}: expected os/arch[/variant], e.g. linux/amd64");
        if parts.len() < 2 || parts.len() > 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        Ok(Platform {
            os: parts[0].to_ascii_lowercase(),
            architecture: parts[1].to_ascii_lowercase(),
            variant: parts.get(2).map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The global ARG scope, evaluated once per build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalScope {
    escape: char,
    args: Env,
    build_args: BTreeMap<String, String>,
}

impl GlobalScope {
    /// Evaluate the global ARGs of `df`: predefined platform ARGs first,
    /// then each global ARG in order (`--build-arg` value, else its
    /// default expanded with the ARGs before it).
    pub fn new(
        df: &Dockerfile,
        build_args: &BTreeMap<String, String>,
        build_platform: &Platform,
        target_platform: &Platform,
    ) -> Result<Self, ParseError> {
        let mut args = Env::new();
        for (prefix, p) in [("BUILD", build_platform), ("TARGET", target_platform)] {
            args.set(&format!("{prefix}PLATFORM"), &p.to_string());
            args.set(&format!("{prefix}OS"), &p.os);
            args.set(&format!("{prefix}ARCH"), &p.architecture);
            args.set(
                &format!("{prefix}VARIANT"),
                p.variant.as_deref().unwrap_or(""),
            );
        }
        let lex = ShellLex::new(df.directives.escape);
        for ins in &df.global_args {
            let decls = match &ins.kind {
                InstructionKind::Arg(d) => d,
                _ => continue,
            };
            for d in decls {
                let value = match build_args.get(&d.name) {
                    Some(v) => Some(v.clone()),
                    None => match &d.default {
                        Some(def) => Some(lex.process_word(def, &args).map_err(|e| {
                            e.located(&df.file_name, ins.span, "ARG", &ins.original)
                        })?),
                        None => None,
                    },
                };
                if let Some(v) = value {
                    args.set(&d.name, &v);
                }
            }
        }
        Ok(GlobalScope {
            escape: df.directives.escape,
            args,
            build_args: build_args.clone(),
        })
    }

    /// Global ARG values (predefined ones included).
    pub fn args(&self) -> &Env {
        &self.args
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.args.get(name)
    }

    /// The `--build-arg` values of this build.
    pub fn build_args(&self) -> &BTreeMap<String, String> {
        &self.build_args
    }

    /// Expand a word of a FROM line.
    pub fn expand(&self, word: &str) -> Result<String, ExpandError> {
        ShellLex::new(self.escape).process_word(word, &self.args)
    }

    /// A scope for a stage whose base image has `image_env`.
    pub fn stage_scope(&self, image_env: Env) -> StageScope {
        StageScope {
            escape: self.escape,
            env: image_env.clone(),
            image_env,
            args: Vec::new(),
        }
    }
}

/// The variables of one stage while it is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageScope {
    escape: char,
    env: Env,
    image_env: Env,
    args: Vec<(String, Option<String>)>,
}

impl StageScope {
    /// The environment words are expanded with and RUN sees (base image
    /// env, ENV and ARG values).
    pub fn env(&self) -> &Env {
        &self.env
    }

    /// The environment to store in the image config (base image env and
    /// ENV only).
    pub fn image_env(&self) -> &Env {
        &self.image_env
    }

    /// ARGs declared in this stage with their values (None: declared
    /// without a value).
    pub fn args(&self) -> &[(String, Option<String>)] {
        &self.args
    }

    /// The lexer for this stage (the file's escape character).
    pub fn lexer(&self) -> ShellLex {
        ShellLex::new(self.escape)
    }

    /// Expand one word with the stage environment.
    pub fn expand(&self, word: &str) -> Result<String, ExpandError> {
        self.lexer().process_word(word, &self.env)
    }

    /// Apply `ENV k=v …`: every pair is expanded with the environment as
    /// it was before the instruction, then set.
    pub fn apply_env(&mut self, pairs: &[KeyValue]) -> Result<(), ExpandError> {
        let lex = self.lexer();
        let mut expanded = Vec::with_capacity(pairs.len());
        for kv in pairs {
            let k = lex.process_word(&kv.key, &self.env)?;
            let v = lex.process_word(&kv.value, &self.env)?;
            expanded.push((k, v));
        }
        for (k, v) in expanded {
            self.env.set(&k, &v);
            self.image_env.set(&k, &v);
        }
        Ok(())
    }

    /// Apply `ARG name[=default] …` in this stage.
    pub fn apply_arg(
        &mut self,
        decls: &[ArgDecl],
        globals: &GlobalScope,
    ) -> Result<(), ExpandError> {
        let lex = self.lexer();
        for d in decls {
            let value = if let Some(v) = globals.build_args.get(&d.name) {
                Some(v.clone())
            } else if let Some(def) = &d.default {
                Some(lex.process_word(def, &self.env)?)
            } else {
                globals.get(&d.name).map(str::to_string)
            };
            if let Some(v) = &value {
                self.env.set(&d.name, v);
            }
            self.args.retain(|(n, _)| n != &d.name);
            self.args.push((d.name.clone(), value));
        }
        Ok(())
    }

    /// Apply the variable-changing part of an instruction (ENV, ARG);
    /// other instructions leave the scope unchanged.
    pub fn apply(
        &mut self,
        kind: &InstructionKind,
        globals: &GlobalScope,
    ) -> Result<(), ExpandError> {
        match kind {
            InstructionKind::Env(pairs) => self.apply_env(pairs),
            InstructionKind::Arg(decls) => self.apply_arg(decls, globals),
            _ => Ok(()),
        }
    }

    /// The instruction with its words expanded as BuildKit expands them:
    /// ADD/COPY sources, destination, `--chown`, `--chmod`, `--checksum`
    /// and unquoted heredoc bodies; ENV and LABEL keys and values; EXPOSE;
    /// STOPSIGNAL; USER; VOLUME; WORKDIR. RUN/CMD/ENTRYPOINT/SHELL/
    /// HEALTHCHECK/ONBUILD/MAINTAINER/ARG are returned unchanged (ARG is
    /// applied with [`StageScope::apply_arg`], RUN mounts are resolved
    /// with [`StageScope::resolve_mounts`]; shell forms are expanded by the
    /// shell at run time).
    pub fn expand_instruction(
        &self,
        kind: &InstructionKind,
    ) -> Result<InstructionKind, ExpandError> {
        let lex = self.lexer();
        let env: &dyn EnvLookup = &self.env;
        let ex = |w: &str| lex.process_word(w, env);
        let ex_opt = |w: &Option<String>| -> Result<Option<String>, ExpandError> {
            w.as_deref().map(|s| lex.process_word(s, env)).transpose()
        };
        let ex_all = |ws: &[String]| -> Result<Vec<String>, ExpandError> {
            ws.iter().map(|w| lex.process_word(w, env)).collect()
        };
        let ex_inline = |srcs: &[InlineSource]| -> Result<Vec<InlineSource>, ExpandError> {
            let mut raw = ShellLex::new('\\');
            raw.skip_process_quotes = true;
            srcs.iter()
                .map(|s| {
                    let mut s = s.clone();
                    if s.expand {
                        s.data = raw.process_word(&s.data, env)?;
                    }
                    Ok(s)
                })
                .collect()
        };
        let ex_kv = |kvs: &[KeyValue]| -> Result<Vec<KeyValue>, ExpandError> {
            kvs.iter()
                .map(|kv| {
                    Ok(KeyValue {
                        key: ex(&kv.key)?,
                        value: ex(&kv.value)?,
                    })
                })
                .collect()
        };
        Ok(match kind {
            InstructionKind::Add(a) => InstructionKind::Add(AddInstr {
                sources: ex_all(&a.sources)?,
                inline_sources: ex_inline(&a.inline_sources)?,
                dest: ex(&a.dest)?,
                chown: ex_opt(&a.chown)?,
                chmod: ex_opt(&a.chmod)?,
                checksum: ex_opt(&a.checksum)?,
                ..a.clone()
            }),
            InstructionKind::Copy(c) => InstructionKind::Copy(CopyInstr {
                sources: ex_all(&c.sources)?,
                inline_sources: ex_inline(&c.inline_sources)?,
                dest: ex(&c.dest)?,
                chown: ex_opt(&c.chown)?,
                chmod: ex_opt(&c.chmod)?,
                ..c.clone()
            }),
            InstructionKind::Env(kvs) => InstructionKind::Env(ex_kv(kvs)?),
            InstructionKind::Label(kvs) => InstructionKind::Label(ex_kv(kvs)?),
            InstructionKind::Expose(p) => InstructionKind::Expose(ex_all(p)?),
            InstructionKind::StopSignal(s) => InstructionKind::StopSignal(ex(s)?),
            InstructionKind::User(s) => InstructionKind::User(ex(s)?),
            InstructionKind::Workdir(s) => InstructionKind::Workdir(ex(s)?),
            InstructionKind::Volume(v) => InstructionKind::Volume(ex_all(v)?),
            other => other.clone(),
        })
    }

    /// The typed mounts of a RUN, values expanded (`from=` never is).
    pub fn resolve_mounts(&self, run: &RunInstr) -> Result<Vec<Mount>, ExpandError> {
        let lex = self.lexer();
        run.mounts
            .iter()
            .map(|m| {
                m.resolve(|v| lex.process_word(v, &self.env).map_err(|e| e.message))
                    .map_err(|e| ExpandError::new(format!("--mount={}: {e}", m.raw)))
            })
            .collect()
    }
}
