//! The typed Dockerfile AST. Words are kept as written (unexpanded): the
//! build engine expands them with [`crate::ShellLex`] in the scope of the
//! stage being built (see [`crate::StageScope`]).

use crate::error::Span;
use crate::mount::MountSpec;
use serde::Serialize;
use std::time::Duration;

/// Index of a stage in [`Dockerfile::stages`].
pub type StageIndex = usize;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    /// The name used in error messages (e.g. `Dockerfile`).
    pub file_name: String,
    pub directives: Directives,
    /// ARG instructions before the first FROM (the global scope; visible
    /// to FROM lines, and in a stage only once redeclared there).
    pub global_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
    pub warnings: Vec<Warning>,
}

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// `# escape=` (`\` unless set to `` ` ``).
    pub escape: char,
    /// `# syntax=` (recorded; no frontend image is ever pulled).
    pub syntax: Option<String>,
    /// `# check=` (recorded).
    pub check: Option<String>,
    /// Every directive in order, with its line.
    pub all: Vec<Directive>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
            all: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    /// Lower-case name.
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// A non-fatal finding (BuildKit prints these as warnings too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

/// One build stage: a FROM and the instructions up to the next FROM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    pub index: StageIndex,
    /// `AS name`, lower-cased (stage names are case-insensitive).
    pub name: Option<String>,
    pub from: FromInstr,
    pub span: Span,
    /// The FROM line as written.
    pub original: String,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    /// The name to show: `name` or `stage-N`.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("stage-{}", self.index),
        }
    }
}

/// One instruction with its position and source text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instruction {
    pub span: Span,
    /// The instruction as written, continuation lines joined (heredoc
    /// bodies not included).
    pub original: String,
    /// Comment lines directly above the instruction.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<String>,
    #[serde(flatten)]
    pub kind: InstructionKind,
}

impl Instruction {
    /// Upper-case instruction name.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
}

/// The instruction and its typed arguments.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "instruction", content = "args")]
pub enum InstructionKind {
    #[serde(rename = "FROM")]
    From(FromInstr),
    #[serde(rename = "RUN")]
    Run(RunInstr),
    #[serde(rename = "CMD")]
    Cmd(CommandLine),
    #[serde(rename = "ENTRYPOINT")]
    Entrypoint(CommandLine),
    #[serde(rename = "LABEL")]
    Label(Vec<KeyValue>),
    #[serde(rename = "MAINTAINER")]
    Maintainer(String),
    #[serde(rename = "EXPOSE")]
    Expose(Vec<String>),
    #[serde(rename = "ENV")]
    Env(Vec<KeyValue>),
    #[serde(rename = "ADD")]
    Add(AddInstr),
    #[serde(rename = "COPY")]
    Copy(CopyInstr),
    #[serde(rename = "USER")]
    User(String),
    #[serde(rename = "WORKDIR")]
    Workdir(String),
    #[serde(rename = "ARG")]
    Arg(Vec<ArgDecl>),
    #[serde(rename = "VOLUME")]
    Volume(Vec<String>),
    #[serde(rename = "STOPSIGNAL")]
    StopSignal(String),
    #[serde(rename = "HEALTHCHECK")]
    Healthcheck(Healthcheck),
    #[serde(rename = "SHELL")]
    Shell(Vec<String>),
    #[serde(rename = "ONBUILD")]
    Onbuild(OnbuildInstr),
}

impl InstructionKind {
    pub fn name(&self) -> &'static str {
        match self {
            InstructionKind::From(_) => "FROM",
            InstructionKind::Run(_) => "RUN",
            InstructionKind::Cmd(_) => "CMD",
            InstructionKind::Entrypoint(_) => "ENTRYPOINT",
            InstructionKind::Label(_) => "LABEL",
            InstructionKind::Maintainer(_) => "MAINTAINER",
            InstructionKind::Expose(_) => "EXPOSE",
            InstructionKind::Env(_) => "ENV",
            InstructionKind::Add(_) => "ADD",
            InstructionKind::Copy(_) => "COPY",
            InstructionKind::User(_) => "USER",
            InstructionKind::Workdir(_) => "WORKDIR",
            InstructionKind::Arg(_) => "ARG",
            InstructionKind::Volume(_) => "VOLUME",
            InstructionKind::StopSignal(_) => "STOPSIGNAL",
            InstructionKind::Healthcheck(_) => "HEALTHCHECK",
            InstructionKind::Shell(_) => "SHELL",
            InstructionKind::Onbuild(_) => "ONBUILD",
        }
    }
}

/// `FROM [--platform=P] base [AS name]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FromInstr {
    /// Image reference or stage name, unexpanded (expanded with the global
    /// ARGs only).
    pub base: String,
    pub platform: Option<String>,
    /// Lower-cased stage name.
    pub name: Option<String>,
}

/// Shell form (run by the stage's SHELL) or exec form (JSON array).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "form", content = "value", rename_all = "lowercase")]
pub enum CommandLine {
    Shell(String),
    Exec(Vec<String>),
}

impl CommandLine {
    pub fn is_exec(&self) -> bool {
        matches!(self, CommandLine::Exec(_))
    }

    /// The argv to run: shell form becomes `shell + [command]`.
    pub fn to_argv(&self, shell: &[String]) -> Vec<String> {
        match self {
            CommandLine::Exec(v) => v.clone(),
            CommandLine::Shell(s) => {
                let mut v = shell.to_vec();
                v.push(s.clone());
                v
            }
        }
    }
}

/// A heredoc (`<<EOF` … `EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body, each line with its newline; `<<-` tab stripping is not
    /// applied here (see [`Heredoc::body`]).
    pub content: String,
    /// False when any part of the delimiter was quoted: no expansion.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from each line.
    pub chomp: bool,
    /// File descriptor prefix (`3<<EOF`); 0 when absent.
    pub fd: u32,
}

impl Heredoc {
    /// The body with `<<-` tab stripping applied.
    pub fn body(&self) -> String {
        if self.chomp {
            chomp_heredoc(&self.content)
        } else {
            self.content.clone()
        }
    }
}

/// Remove leading tabs from every line.
pub(crate) fn chomp_heredoc(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|l| l.trim_start_matches('\t'))
        .collect()
}

/// `RUN [--mount=…] [--network=…] [--security=…] command`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunInstr {
    pub command: CommandLine,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<MountSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityMode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
}

/// What a RUN executes, decided as BuildKit does for heredocs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunProgram {
    /// Run this argv directly (exec form).
    Exec(Vec<String>),
    /// Run this script with the stage's SHELL (`shell… script`).
    Shell(String),
    /// A single heredoc starting with `#!`: write `content` to a file with
    /// mode 0755 named `name` and execute it directly.
    ScriptFile { name: String, content: String },
}

impl RunInstr {
    /// How to run this instruction:
    /// - exec form runs as is;
    /// - `RUN <<EOF` (the whole command is one heredoc) runs the body with
    ///   the shell, or as a script file if the body starts with `#!`;
    /// - any other command with heredocs is passed to the shell together
    ///   with the heredoc bodies and delimiters, so the shell handles them.
    pub fn program(&self) -> RunProgram {
        let cmd = match &self.command {
            CommandLine::Exec(v) => return RunProgram::Exec(v.clone()),
            CommandLine::Shell(s) => s,
        };
        if self.heredocs.is_empty() {
            return RunProgram::Shell(cmd.clone());
        }
        if crate::heredoc::parse_heredoc_word(cmd)
            .ok()
            .flatten()
            .is_some()
        {
            let first = &self.heredocs[0];
            let body = first.body();
            if body.starts_with("#!") {
                return RunProgram::ScriptFile {
                    name: first.name.clone(),
                    content: body,
                };
            }
            return RunProgram::Shell(body);
        }
        let mut full = cmd.clone();
        for h in &self.heredocs {
            full.push('\n');
            full.push_str(&h.content);
            full.push_str(&h.name);
        }
        RunProgram::Shell(full)
    }
}

/// `RUN --network=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

/// `RUN --security=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SecurityMode {
    Sandbox,
    Insecure,
}

/// `KEY=VALUE` of ENV and LABEL, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `ARG NAME[=default]`, unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

/// A COPY/ADD source given inline as a heredoc.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineSource {
    /// File name to create (the heredoc delimiter).
    pub path: String,
    /// Body, `<<-` tab stripping applied.
    pub data: String,
    /// Expand variables in `data` (unquoted delimiter); quotes and escapes
    /// in the body are kept.
    pub expand: bool,
}

/// `COPY [flags] src… dest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyInstr {
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inline_sources: Vec<InlineSource>,
    pub dest: String,
    /// `--from=` stage name, stage index or image reference (not expanded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Written in JSON form.
    pub json: bool,
}

/// `ADD [flags] src… dest`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddInstr {
    pub sources: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inline_sources: Vec<InlineSource>,
    pub dest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    pub link: bool,
    pub keep_git_dir: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// `--unpack=` (None: unpack local archives, as by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    pub json: bool,
}

/// `HEALTHCHECK NONE` or `HEALTHCHECK [options] CMD command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Healthcheck {
    None,
    Cmd {
        command: CommandLine,
        #[serde(skip_serializing_if = "Option::is_none")]
        interval: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        timeout: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start_period: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        start_interval: Option<Duration>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retries: Option<u32>,
    },
}

impl Healthcheck {
    /// The image-config `Test` array: `["NONE"]`, `["CMD", argv…]` or
    /// `["CMD-SHELL", command]`.
    pub fn test(&self) -> Vec<String> {
        match self {
            Healthcheck::None => vec!["NONE".into()],
            Healthcheck::Cmd { command, .. } => match command {
                CommandLine::Exec(v) => {
                    let mut t = vec!["CMD".to_string()];
                    t.extend(v.iter().cloned());
                    t
                }
                CommandLine::Shell(s) => vec!["CMD-SHELL".into(), s.clone()],
            },
        }
    }
}

/// `ONBUILD instruction`: stored in the image and run when the image is
/// used as a base.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OnbuildInstr {
    /// The trigger text to store in the image config (`OnBuild`), heredoc
    /// bodies appended as BuildKit does.
    pub expression: String,
    /// The trigger, parsed.
    pub trigger: Box<Instruction>,
}
