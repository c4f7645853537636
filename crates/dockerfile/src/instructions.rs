//! Typing of instruction lines: argument forms, flags and the checks
//! BuildKit makes when it builds its instruction objects.

use crate::ast::*;
use crate::duration::parse_go_duration;
use crate::error::ParseError;
use crate::flags::{self, Kind};
use crate::heredoc::parse_heredoc_word;
use crate::lexer::ShellLex;
use crate::mount::MountSpec;
use crate::parser::RawNode;
use crate::words::{self, Json};

/// What every instruction builder needs to report errors.
pub(crate) struct Ctx<'a> {
    pub file: &'a str,
    pub escape: char,
}

impl Ctx<'_> {
    fn err(&self, node: &RawNode, name: &str, msg: impl Into<String>) -> ParseError {
        ParseError::at_instruction(self.file, node.span, name, &node.original, msg)
    }

    /// The word will be expanded by the lexer later: check now that its
    /// quotes and `${…}` are well formed.
    fn check_word(&self, node: &RawNode, name: &str, word: &str) -> Result<(), ParseError> {
        ShellLex::new(self.escape)
            .check_syntax(word)
            .map_err(|e| self.err(node, name, e.message))
    }

    fn check_words<'w>(
        &self,
        node: &RawNode,
        name: &str,
        ws: impl IntoIterator<Item = &'w String>,
    ) -> Result<(), ParseError> {
        for w in ws {
            self.check_word(node, name, w)?;
        }
        Ok(())
    }
}

const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Type one instruction line.
pub(crate) fn build(ctx: &Ctx, node: &RawNode) -> Result<Instruction, ParseError> {
    let upper = node.name.to_ascii_uppercase();
    let name = match INSTRUCTIONS.iter().find(|n| **n == upper) {
        Some(n) => *n,
        None => {
            let hint = suggest(&upper)
                .map(|s| format!(" (did you mean {s}?)"))
                .unwrap_or_default();
            return Err(ctx.err(
                node,
                &node.name,
                format!("unknown instruction: {}{hint}", node.name),
            ));
        }
    };
    let kind = match name {
        "FROM" => InstructionKind::From(from(ctx, node)?),
        "RUN" => InstructionKind::Run(run(ctx, node)?),
        "CMD" => InstructionKind::Cmd(cmd_like(ctx, node, "CMD")?),
        "ENTRYPOINT" => InstructionKind::Entrypoint(cmd_like(ctx, node, "ENTRYPOINT")?),
        "LABEL" => InstructionKind::Label(key_values(ctx, node, "LABEL")?),
        "ENV" => InstructionKind::Env(key_values(ctx, node, "ENV")?),
        "MAINTAINER" => InstructionKind::Maintainer(single(ctx, node, "MAINTAINER", false)?),
        "USER" => InstructionKind::User(single(ctx, node, "USER", true)?),
        "WORKDIR" => InstructionKind::Workdir(single(ctx, node, "WORKDIR", true)?),
        "STOPSIGNAL" => InstructionKind::StopSignal(single(ctx, node, "STOPSIGNAL", true)?),
        "EXPOSE" => InstructionKind::Expose(expose(ctx, node)?),
        "VOLUME" => InstructionKind::Volume(volume(ctx, node)?),
        "ARG" => InstructionKind::Arg(arg(ctx, node)?),
        "ADD" => InstructionKind::Add(add(ctx, node)?),
        "COPY" => InstructionKind::Copy(copy(ctx, node)?),
        "HEALTHCHECK" => InstructionKind::Healthcheck(healthcheck(ctx, node)?),
        "SHELL" => InstructionKind::Shell(shell(ctx, node)?),
        "ONBUILD" => InstructionKind::Onbuild(onbuild(ctx, node)?),
        _ => return Err(ctx.err(node, name, "instruction not supported")),
    };
    Ok(Instruction {
        span: node.span,
        original: node.original.clone(),
        comments: node.comments.clone(),
        kind,
    })
}

/// The known instruction closest to a misspelling (edit distance <= 2).
fn suggest(word: &str) -> Option<&'static str> {
    fn dist(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut cur = vec![i; b.len() + 1];
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    if word.chars().count() > 40 {
        return None;
    }
    INSTRUCTIONS
        .iter()
        .map(|n| (dist(word, n), *n))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, n)| n)
}

fn no_flags(ctx: &Ctx, node: &RawNode, name: &str) -> Result<(), ParseError> {
    flags::parse(name, &node.flags, &[])
        .map(|_| ())
        .map_err(|e| ctx.err(node, name, e))
}

fn from(ctx: &Ctx, node: &RawNode) -> Result<FromInstr, ParseError> {
    let fl = flags::parse("FROM", &node.flags, &[("platform", Kind::Str)])
        .map_err(|e| ctx.err(node, "FROM", e))?;
    let args: Vec<String> = if node.args.is_empty() {
        Vec::new()
    } else {
        words::split_ws(&node.args)
    };
    let name = match args.len() {
        1 => None,
        3 if args[1].eq_ignore_ascii_case("as") => {
            let n = args[2].to_lowercase();
            if !valid_stage_name(&n) {
                return Err(ctx.err(
                    node,
                    "FROM",
                    format!(
                        "invalid name for build stage: {:?}, name can't start with a number or contain symbols",
                        args[2]
                    ),
                ));
            }
            Some(n)
        }
        _ => {
            return Err(ctx.err(
                node,
                "FROM",
                "FROM requires either one or three arguments (FROM image [AS name])",
            ))
        }
    };
    let platform = fl.str("platform");
    ctx.check_word(node, "FROM", &args[0])?;
    if let Some(p) = &platform {
        ctx.check_word(node, "FROM", p)?;
    }
    Ok(FromInstr {
        base: args[0].clone(),
        platform,
        name,
    })
}

/// `^[a-z][a-z0-9-_.]*$`
pub(crate) fn valid_stage_name(n: &str) -> bool {
    let mut cs = n.chars();
    matches!(cs.next(), Some('a'..='z'))
        && cs.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_' | '.'))
}

/// Shell or exec form of RUN/CMD/ENTRYPOINT/SHELL/HEALTHCHECK CMD.
fn command_line(
    ctx: &Ctx,
    node: &RawNode,
    name: &str,
    text: &str,
) -> Result<CommandLine, ParseError> {
    if text.is_empty() {
        return Ok(CommandLine::Shell(String::new()));
    }
    match words::parse_json(text) {
        Json::Array(v) => Ok(CommandLine::Exec(v)),
        Json::NotStrings => Err(ctx.err(
            node,
            name,
            format!(
                "{name}: when using JSON array syntax, arrays must be comprised of strings only"
            ),
        )),
        Json::No(why) => {
            // BuildKit falls back to the shell form here; text that
            // starts like a JSON array of strings is almost surely a typo,
            // and `["…` is no useful shell command, so say so.
            if text.trim_start().starts_with("[\"") {
                return Err(ctx.err(
                    node,
                    name,
                    format!("{name}: the exec form (JSON array) is not valid JSON: {why}"),
                ));
            }
            Ok(CommandLine::Shell(text.to_string()))
        }
    }
}

/// List form of ADD/COPY/VOLUME: a JSON array or white-space separated.
fn list(ctx: &Ctx, node: &RawNode, name: &str) -> Result<(Vec<String>, bool), ParseError> {
    match words::parse_json(&node.args) {
        Json::Array(v) => Ok((v, true)),
        Json::NotStrings => Err(ctx.err(
            node,
            name,
            format!(
                "{name}: when using JSON array syntax, arrays must be comprised of strings only"
            ),
        )),
        Json::No(why) => {
            if node.args.trim_start().starts_with("[\"") {
                return Err(ctx.err(
                    node,
                    name,
                    format!("{name}: the JSON array form is not valid JSON: {why}"),
                ));
            }
            if node.args.is_empty() {
                return Ok((Vec::new(), false));
            }
            Ok((words::split_ws(&node.args), false))
        }
    }
}

fn run(ctx: &Ctx, node: &RawNode) -> Result<RunInstr, ParseError> {
    let fl = flags::parse(
        "RUN",
        &node.flags,
        &[
            ("mount", Kind::Strings),
            ("network", Kind::Str),
            ("security", Kind::Str),
        ],
    )
    .map_err(|e| ctx.err(node, "RUN", e))?;
    let mut mounts = Vec::new();
    for raw in fl.list("mount") {
        let spec =
            MountSpec::parse(&raw).map_err(|e| ctx.err(node, "RUN", format!("--mount: {e}")))?;
        for (_, v) in &spec.fields {
            if let Some(v) = v {
                ctx.check_word(node, "RUN", v)?;
            }
        }
        mounts.push(spec);
    }
    let network = match fl.str("network").as_deref() {
        None => None,
        Some("default") => Some(NetworkMode::Default),
        Some("none") => Some(NetworkMode::None),
        Some("host") => Some(NetworkMode::Host),
        Some(other) => {
            return Err(ctx.err(
                node,
                "RUN",
                format!("unsupported network mode {other:?} (use default, none or host)"),
            ))
        }
    };
    let security = match fl.str("security").as_deref() {
        None => None,
        Some("sandbox") => Some(SecurityMode::Sandbox),
        Some("insecure") => Some(SecurityMode::Insecure),
        Some(other) => {
            return Err(ctx.err(
                node,
                "RUN",
                format!("unsupported security mode {other:?} (use sandbox or insecure)"),
            ))
        }
    };
    let command = command_line(ctx, node, "RUN", &node.args)?;
    Ok(RunInstr {
        command,
        mounts,
        network,
        security,
        heredocs: node.heredocs.clone(),
    })
}

fn cmd_like(ctx: &Ctx, node: &RawNode, name: &str) -> Result<CommandLine, ParseError> {
    no_flags(ctx, node, name)?;
    command_line(ctx, node, name, &node.args)
}

/// ENV and LABEL: `KEY=VALUE …` or the legacy `KEY VALUE`.
fn key_values(ctx: &Ctx, node: &RawNode, name: &str) -> Result<Vec<KeyValue>, ParseError> {
    no_flags(ctx, node, name)?;
    let ws = words::parse_words(&node.args, ctx.escape);
    if ws.is_empty() {
        return Err(ctx.err(
            node,
            name,
            format!("{name} requires at least one argument ({name} KEY=VALUE)"),
        ));
    }
    let mut out = Vec::new();
    if !ws[0].contains('=') {
        let (key, value) = words::split_ws2(&node.args);
        let value = match value {
            Some(v) if !v.is_empty() => v,
            _ => return Err(ctx.err(node, name, format!("{name} needs a value"))),
        };
        out.push(KeyValue { key, value });
    } else {
        for w in &ws {
            let (k, v) = match w.split_once('=') {
                Some(kv) => kv,
                None => {
                    return Err(ctx.err(
                        node,
                        name,
                        format!(
                            "syntax error - can't find = in {w:?}; must be of the form: name=value"
                        ),
                    ))
                }
            };
            out.push(KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            });
        }
    }
    for kv in &out {
        if kv.key.is_empty() {
            return Err(ctx.err(node, name, format!("{name} names can not be blank")));
        }
        ctx.check_word(node, name, &kv.key)?;
        ctx.check_word(node, name, &kv.value)?;
    }
    Ok(out)
}

/// MAINTAINER/USER/WORKDIR/STOPSIGNAL: exactly one argument (the rest of
/// the line).
fn single(ctx: &Ctx, node: &RawNode, name: &str, expands: bool) -> Result<String, ParseError> {
    no_flags(ctx, node, name)?;
    if node.args.is_empty() {
        return Err(ctx.err(node, name, format!("{name} requires exactly one argument")));
    }
    if expands {
        ctx.check_word(node, name, &node.args)?;
    }
    Ok(node.args.clone())
}

fn expose(ctx: &Ctx, node: &RawNode) -> Result<Vec<String>, ParseError> {
    no_flags(ctx, node, "EXPOSE")?;
    if node.args.is_empty() {
        return Err(ctx.err(
            node,
            "EXPOSE",
            "EXPOSE requires at least one argument (EXPOSE 80/tcp)",
        ));
    }
    let ports = words::split_ws(&node.args);
    ctx.check_words(node, "EXPOSE", &ports)?;
    Ok(ports)
}

fn volume(ctx: &Ctx, node: &RawNode) -> Result<Vec<String>, ParseError> {
    no_flags(ctx, node, "VOLUME")?;
    let (vols, _) = list(ctx, node, "VOLUME")?;
    if vols.is_empty() {
        return Err(ctx.err(node, "VOLUME", "VOLUME requires at least one argument"));
    }
    let mut out = Vec::new();
    for v in vols {
        let v = v.trim().to_string();
        if v.is_empty() {
            return Err(ctx.err(
                node,
                "VOLUME",
                "VOLUME specified can not be an empty string",
            ));
        }
        ctx.check_word(node, "VOLUME", &v)?;
        out.push(v);
    }
    Ok(out)
}

fn arg(ctx: &Ctx, node: &RawNode) -> Result<Vec<ArgDecl>, ParseError> {
    no_flags(ctx, node, "ARG")?;
    let ws = words::parse_words(&node.args, ctx.escape);
    if ws.is_empty() {
        return Err(ctx.err(
            node,
            "ARG",
            "ARG requires at least one argument (ARG NAME[=default])",
        ));
    }
    let mut out = Vec::new();
    for w in ws {
        let (name, default) = match w.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (w, None),
        };
        if name.is_empty() {
            return Err(ctx.err(node, "ARG", "ARG names can not be blank"));
        }
        if let Some(d) = &default {
            ctx.check_word(node, "ARG", d)?;
        }
        out.push(ArgDecl { name, default });
    }
    Ok(out)
}

/// Sources, inline heredoc sources and the destination of ADD/COPY.
fn sources_and_dest(
    ctx: &Ctx,
    node: &RawNode,
    name: &str,
    args: Vec<String>,
) -> Result<(Vec<String>, Vec<InlineSource>, String), ParseError> {
    if args.len() < 2 {
        return Err(ctx.err(
            node,
            name,
            format!(
                "{name} requires at least two arguments, but only {} provided: destination could not be determined",
                if args.is_empty() { "none was" } else { "one was" }
            ),
        ));
    }
    let (srcs, dest) = args.split_at(args.len() - 1);
    let dest = dest[0].clone();
    if let Ok(Some(_)) = parse_heredoc_word(&dest) {
        return Err(ctx.err(
            node,
            name,
            format!("{name} cannot accept a heredoc as a destination"),
        ));
    }
    let mut paths = Vec::new();
    let mut inline = Vec::new();
    for src in srcs {
        match parse_heredoc_word(src) {
            Ok(Some(h)) => {
                let doc = node.heredocs.iter().find(|d| d.name == h.name);
                let mut data = doc.map(|d| d.content.clone()).unwrap_or_default();
                if h.chomp {
                    data = chomp_heredoc(&data);
                }
                inline.push(InlineSource {
                    path: h.name,
                    data,
                    expand: h.expand,
                });
            }
            _ => paths.push(src.clone()),
        }
    }
    ctx.check_words(node, name, &paths)?;
    ctx.check_word(node, name, &dest)?;
    Ok((paths, inline, dest))
}

fn check_opt(ctx: &Ctx, node: &RawNode, name: &str, v: &Option<String>) -> Result<(), ParseError> {
    match v {
        Some(v) => ctx.check_word(node, name, v),
        None => Ok(()),
    }
}

fn copy(ctx: &Ctx, node: &RawNode) -> Result<CopyInstr, ParseError> {
    let fl = flags::parse(
        "COPY",
        &node.flags,
        &[
            ("chown", Kind::Str),
            ("chmod", Kind::Str),
            ("from", Kind::Str),
            ("link", Kind::Bool),
            ("parents", Kind::Bool),
            ("exclude", Kind::Strings),
        ],
    )
    .map_err(|e| ctx.err(node, "COPY", e))?;
    let (args, json) = list(ctx, node, "COPY")?;
    let (sources, inline_sources, dest) = sources_and_dest(ctx, node, "COPY", args)?;
    let (chown, chmod) = (fl.str("chown"), fl.str("chmod"));
    check_opt(ctx, node, "COPY", &chown)?;
    check_opt(ctx, node, "COPY", &chmod)?;
    let from = fl.str("from");
    if let Some(f) = &from {
        if f.is_empty() {
            return Err(ctx.err(
                node,
                "COPY",
                "COPY --from needs a stage name, index or image",
            ));
        }
    }
    Ok(CopyInstr {
        sources,
        inline_sources,
        dest,
        from,
        chown,
        chmod,
        link: fl.bool("link"),
        parents: fl.bool("parents"),
        excludes: fl.list("exclude"),
        json,
    })
}

fn add(ctx: &Ctx, node: &RawNode) -> Result<AddInstr, ParseError> {
    let fl = flags::parse(
        "ADD",
        &node.flags,
        &[
            ("chown", Kind::Str),
            ("chmod", Kind::Str),
            ("link", Kind::Bool),
            ("keep-git-dir", Kind::Bool),
            ("checksum", Kind::Str),
            ("exclude", Kind::Strings),
            ("unpack", Kind::Bool),
        ],
    )
    .map_err(|e| ctx.err(node, "ADD", e))?;
    let (args, json) = list(ctx, node, "ADD")?;
    let (sources, inline_sources, dest) = sources_and_dest(ctx, node, "ADD", args)?;
    let (chown, chmod, checksum) = (fl.str("chown"), fl.str("chmod"), fl.str("checksum"));
    check_opt(ctx, node, "ADD", &chown)?;
    check_opt(ctx, node, "ADD", &chmod)?;
    check_opt(ctx, node, "ADD", &checksum)?;
    Ok(AddInstr {
        sources,
        inline_sources,
        dest,
        chown,
        chmod,
        link: fl.bool("link"),
        keep_git_dir: fl.bool("keep-git-dir"),
        checksum,
        unpack: fl.opt_bool("unpack"),
        excludes: fl.list("exclude"),
        json,
    })
}

fn healthcheck(ctx: &Ctx, node: &RawNode) -> Result<Healthcheck, ParseError> {
    let name = "HEALTHCHECK";
    let args = node.args.as_str();
    let sep = args.find(char::is_whitespace).unwrap_or(args.len());
    if sep == 0 {
        return Err(ctx.err(
            node,
            name,
            "HEALTHCHECK requires at least one argument (HEALTHCHECK NONE or HEALTHCHECK [options] CMD command)",
        ));
    }
    let typ = args[..sep].to_ascii_uppercase();
    let rest = args[sep..].trim_start();
    if typ == "NONE" {
        if !rest.is_empty() {
            return Err(ctx.err(node, name, "HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(Healthcheck::None);
    }
    let fl = flags::parse(
        name,
        &node.flags,
        &[
            ("interval", Kind::Str),
            ("timeout", Kind::Str),
            ("start-period", Kind::Str),
            ("start-interval", Kind::Str),
            ("retries", Kind::Str),
        ],
    )
    .map_err(|e| ctx.err(node, name, e))?;
    if typ != "CMD" {
        return Err(ctx.err(
            node,
            name,
            format!("unknown type {:?} in HEALTHCHECK (try CMD)", &args[..sep]),
        ));
    }
    let command = command_line(ctx, node, name, rest)?;
    let empty = match &command {
        CommandLine::Shell(s) => s.is_empty(),
        CommandLine::Exec(v) => v.is_empty(),
    };
    if empty {
        return Err(ctx.err(node, name, "missing command after HEALTHCHECK CMD"));
    }
    let interval_flag = |flag: &str| -> Result<Option<std::time::Duration>, ParseError> {
        let v = match fl.str(flag) {
            None => return Ok(None),
            Some(v) if v.is_empty() => return Ok(None),
            Some(v) => v,
        };
        let d = parse_go_duration(&v).map_err(|e| ctx.err(node, name, format!("--{flag}: {e}")))?;
        if d.is_zero() {
            return Ok(None);
        }
        if d < std::time::Duration::from_millis(1) {
            return Err(ctx.err(
                node,
                name,
                format!("interval --{flag} cannot be less than 1ms"),
            ));
        }
        Ok(Some(d))
    };
    let retries = match fl.str("retries") {
        None => None,
        Some(v) if v.is_empty() => None,
        Some(v) => {
            let n: i64 = v.parse().map_err(|_| {
                ctx.err(node, name, format!("--retries must be a number, not {v:?}"))
            })?;
            if n < 0 {
                return Err(ctx.err(node, name, format!("--retries cannot be negative ({n})")));
            }
            Some(u32::try_from(n).map_err(|_| ctx.err(node, name, "--retries is too large"))?)
        }
    };
    Ok(Healthcheck::Cmd {
        command,
        interval: interval_flag("interval")?,
        timeout: interval_flag("timeout")?,
        start_period: interval_flag("start-period")?,
        start_interval: interval_flag("start-interval")?,
        retries,
    })
}

fn shell(ctx: &Ctx, node: &RawNode) -> Result<Vec<String>, ParseError> {
    no_flags(ctx, node, "SHELL")?;
    match command_line(ctx, node, "SHELL", &node.args)? {
        CommandLine::Exec(v) if v.is_empty() => {
            Err(ctx.err(node, "SHELL", "SHELL requires at least one argument"))
        }
        CommandLine::Exec(v) => Ok(v),
        CommandLine::Shell(_) => Err(ctx.err(
            node,
            "SHELL",
            "SHELL requires the arguments to be in JSON form (SHELL [\"/bin/sh\", \"-c\"])",
        )),
    }
}

fn onbuild(ctx: &Ctx, node: &RawNode) -> Result<OnbuildInstr, ParseError> {
    no_flags(ctx, node, "ONBUILD")?;
    if node.args.is_empty() {
        return Err(ctx.err(
            node,
            "ONBUILD",
            "ONBUILD requires at least one argument (ONBUILD INSTRUCTION …)",
        ));
    }
    let (inner_name, inner_flags, inner_args) = words::split_command(&node.args);
    let upper = inner_name.to_ascii_uppercase();
    match upper.as_str() {
        "ONBUILD" => {
            return Err(ctx.err(
                node,
                "ONBUILD",
                "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            ))
        }
        "MAINTAINER" | "FROM" => {
            return Err(ctx.err(
                node,
                "ONBUILD",
                format!("{upper} isn't allowed as an ONBUILD trigger"),
            ))
        }
        _ => {}
    }
    let inner = RawNode {
        name: inner_name,
        flags: inner_flags,
        args: inner_args,
        original: node.args.clone(),
        span: node.span,
        heredocs: node.heredocs.clone(),
        comments: Vec::new(),
    };
    let trigger = build(ctx, &inner)?;
    let mut expression = strip_onbuild(&node.original);
    for h in &node.heredocs {
        expression.push('\n');
        expression.push_str(&h.content);
        expression.push_str(&h.name);
    }
    Ok(OnbuildInstr {
        expression,
        trigger: Box::new(trigger),
    })
}

/// `(?i)^\s*ONBUILD\s*` removed.
fn strip_onbuild(s: &str) -> String {
    let t = s.trim_start();
    if t.len() >= 7 && t.is_char_boundary(7) && t[..7].eq_ignore_ascii_case("onbuild") {
        t[7..].trim_start().to_string()
    } else {
        s.to_string()
    }
}
