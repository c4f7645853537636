//! Human-readable rendering of a parsed Dockerfile, for
//! `firebuild dockerfile parse SRC`.

use crate::ast::*;
use std::fmt::Write;

/// Render `df` as text: directives, global ARGs, then each stage with its
/// instructions (flags and arguments as understood) and their positions.
pub fn render(df: &Dockerfile) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# {}", df.file_name);
    let _ = writeln!(out, "escape: {}", df.directives.escape);
    if let Some(s) = &df.directives.syntax {
        let _ = writeln!(out, "syntax: {s}");
    }
    if let Some(c) = &df.directives.check {
        let _ = writeln!(out, "check: {c}");
    }
    if !df.global_args.is_empty() {
        let _ = writeln!(out, "\nglobal ARGs:");
        for ins in &df.global_args {
            render_instruction(&mut out, ins, "  ");
        }
    }
    for st in &df.stages {
        let _ = writeln!(
            out,
            "\nstage {} ({}), line {}:",
            st.index,
            st.display_name(),
            st.span.start.line
        );
        let mut from = format!("FROM {}", st.from.base);
        if let Some(p) = &st.from.platform {
            from = format!("FROM --platform={p} {}", st.from.base);
        }
        if let Some(n) = &st.from.name {
            let _ = write!(from, " AS {n}");
        }
        let _ = writeln!(
            out,
            "  {:>4}:{:<3} {from}",
            st.span.start.line, st.span.start.column
        );
        for ins in &st.instructions {
            render_instruction(&mut out, ins, "  ");
        }
    }
    for w in &df.warnings {
        let _ = writeln!(out, "\nwarning: line {}: {}", w.line, w.message);
    }
    out
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

fn list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| q(s)).collect();
    format!("[{}]", items.join(", "))
}

fn command(c: &CommandLine) -> String {
    match c {
        CommandLine::Shell(s) => format!("(shell) {s}"),
        CommandLine::Exec(v) => format!("(exec) {}", list(v)),
    }
}

/// One instruction as `LINE:COL NAME summary`, with details indented.
fn render_instruction(out: &mut String, ins: &Instruction, indent: &str) {
    let (head, details) = describe(&ins.kind);
    let _ = writeln!(
        out,
        "{indent}{:>4}:{:<3} {} {head}",
        ins.span.start.line,
        ins.span.start.column,
        ins.name()
    );
    for d in details {
        let _ = writeln!(out, "{indent}           {d}");
    }
    if let InstructionKind::Onbuild(o) = &ins.kind {
        render_instruction(out, &o.trigger, &format!("{indent}    "));
    }
}

fn describe(kind: &InstructionKind) -> (String, Vec<String>) {
    let mut d = Vec::new();
    let head = match kind {
        InstructionKind::From(f) => f.base.clone(),
        InstructionKind::Run(r) => {
            for m in &r.mounts {
                d.push(format!("--mount={}", m.raw));
            }
            if let Some(n) = r.network {
                d.push(format!("--network={n:?}").to_lowercase());
            }
            if let Some(s) = r.security {
                d.push(format!("--security={s:?}").to_lowercase());
            }
            for h in &r.heredocs {
                d.push(heredoc_line(h));
            }
            command(&r.command)
        }
        InstructionKind::Cmd(c) | InstructionKind::Entrypoint(c) => command(c),
        InstructionKind::Label(kvs) | InstructionKind::Env(kvs) => kvs
            .iter()
            .map(|kv| format!("{}={}", kv.key, q(&kv.value)))
            .collect::<Vec<_>>()
            .join(" "),
        InstructionKind::Maintainer(s)
        | InstructionKind::User(s)
        | InstructionKind::Workdir(s)
        | InstructionKind::StopSignal(s) => s.clone(),
        InstructionKind::Expose(v) | InstructionKind::Volume(v) => v.join(" "),
        InstructionKind::Shell(v) => list(v),
        InstructionKind::Arg(decls) => decls
            .iter()
            .map(|a| match &a.default {
                Some(v) => format!("{}={}", a.name, q(v)),
                None => a.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(" "),
        InstructionKind::Copy(c) => {
            let mut flags = Vec::new();
            if let Some(f) = &c.from {
                flags.push(format!("--from={f}"));
            }
            opt_flag(&mut flags, "chown", &c.chown);
            opt_flag(&mut flags, "chmod", &c.chmod);
            bool_flag(&mut flags, "link", c.link);
            bool_flag(&mut flags, "parents", c.parents);
            for e in &c.excludes {
                flags.push(format!("--exclude={e}"));
            }
            inline_details(&mut d, &c.inline_sources);
            copy_head(&flags, &c.sources, &c.inline_sources, &c.dest)
        }
        InstructionKind::Add(a) => {
            let mut flags = Vec::new();
            opt_flag(&mut flags, "chown", &a.chown);
            opt_flag(&mut flags, "chmod", &a.chmod);
            opt_flag(&mut flags, "checksum", &a.checksum);
            bool_flag(&mut flags, "link", a.link);
            bool_flag(&mut flags, "keep-git-dir", a.keep_git_dir);
            if let Some(u) = a.unpack {
                flags.push(format!("--unpack={u}"));
            }
            for e in &a.excludes {
                flags.push(format!("--exclude={e}"));
            }
            inline_details(&mut d, &a.inline_sources);
            copy_head(&flags, &a.sources, &a.inline_sources, &a.dest)
        }
        InstructionKind::Healthcheck(h) => match h {
            Healthcheck::None => "NONE".into(),
            Healthcheck::Cmd {
                command: c,
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
            } => {
                for (n, v) in [
                    ("interval", interval),
                    ("timeout", timeout),
                    ("start-period", start_period),
                    ("start-interval", start_interval),
                ] {
                    if let Some(v) = v {
                        d.push(format!("--{n}={v:?}"));
                    }
                }
                if let Some(r) = retries {
                    d.push(format!("--retries={r}"));
                }
                format!("CMD {}", command(c))
            }
        },
        InstructionKind::Onbuild(o) => {
            format!("trigger: {}", o.expression.lines().next().unwrap_or(""))
        }
    };
    (head, d)
}

fn opt_flag(flags: &mut Vec<String>, name: &str, v: &Option<String>) {
    if let Some(v) = v {
        flags.push(format!("--{name}={v}"));
    }
}

fn bool_flag(flags: &mut Vec<String>, name: &str, v: bool) {
    if v {
        flags.push(format!("--{name}"));
    }
}

fn copy_head(flags: &[String], sources: &[String], inline: &[InlineSource], dest: &str) -> String {
    let mut parts: Vec<String> = flags.to_vec();
    parts.extend(sources.iter().map(|s| q(s)));
    parts.extend(inline.iter().map(|s| format!("<<{}", s.path)));
    parts.push(format!("-> {}", q(dest)));
    parts.join(" ")
}

fn inline_details(d: &mut Vec<String>, inline: &[InlineSource]) {
    for s in inline {
        d.push(format!(
            "inline file {} ({} bytes, {}expanded)",
            q(&s.path),
            s.data.len(),
            if s.expand { "" } else { "not " }
        ));
    }
}

fn heredoc_line(h: &Heredoc) -> String {
    format!(
        "heredoc {} ({} lines{}{})",
        q(&h.name),
        h.content.lines().count(),
        if h.chomp { ", tabs stripped" } else { "" },
        if h.expand { "" } else { ", not expanded" }
    )
}
