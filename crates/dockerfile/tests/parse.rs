//! Parsing: instruction forms, directives, continuations, heredocs and
//! the errors BuildKit reports (with positions).

use firebuild_dockerfile::*;
use std::time::Duration;

fn p(text: &str) -> Dockerfile {
    parse(text, "Dockerfile").unwrap_or_else(|e| panic!("parse failed: {e}"))
}

fn perr(text: &str) -> ParseError {
    match parse(text, "Dockerfile") {
        Ok(df) => panic!("expected an error, got {df:#?}"),
        Err(e) => e,
    }
}

/// The instructions of the only stage.
fn ins(text: &str) -> Vec<InstructionKind> {
    p(text).stages[0]
        .instructions
        .iter()
        .map(|i| i.kind.clone())
        .collect()
}

fn one(body: &str) -> InstructionKind {
    let v = ins(&format!("FROM scratch\n{body}\n"));
    assert_eq!(v.len(), 1, "{v:#?}");
    v[0].clone()
}

#[test]
fn from_forms() {
    let df = p(
        "FROM --platform=$BUILDPLATFORM golang:1.22 AS Build\nFROM build\nfrom alpine as other\n",
    );
    assert_eq!(df.stages.len(), 3);
    let s0 = &df.stages[0];
    assert_eq!(s0.from.base, "golang:1.22");
    assert_eq!(s0.from.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(s0.name.as_deref(), Some("build"));
    assert_eq!(s0.span.start, Position { line: 1, column: 1 });
    assert_eq!(df.stages[1].from.base, "build");
    assert_eq!(df.stages[2].name.as_deref(), Some("other"));
}

#[test]
fn instruction_names_are_case_insensitive() {
    let v = ins("from alpine\nrun echo hi\nEnV A=1\ncopy a b\nWorkDir /x\n");
    assert!(matches!(v[0], InstructionKind::Run(_)));
    assert!(matches!(v[1], InstructionKind::Env(_)));
    assert!(matches!(v[2], InstructionKind::Copy(_)));
    assert_eq!(v[3], InstructionKind::Workdir("/x".into()));
}

#[test]
fn run_forms_and_flags() {
    match one("RUN echo \"hello world\" && ls") {
        InstructionKind::Run(r) => {
            assert_eq!(
                r.command,
                CommandLine::Shell("echo \"hello world\" && ls".into())
            );
            assert_eq!(
                r.program(),
                RunProgram::Shell("echo \"hello world\" && ls".into())
            );
        }
        o => panic!("{o:?}"),
    }
    match one("RUN [\"echo\", \"a b\"]") {
        InstructionKind::Run(r) => {
            assert_eq!(
                r.command,
                CommandLine::Exec(vec!["echo".into(), "a b".into()])
            );
            assert_eq!(
                r.program(),
                RunProgram::Exec(vec!["echo".into(), "a b".into()])
            );
        }
        o => panic!("{o:?}"),
    }
    match one(
        "RUN --mount=type=cache,target=/root/.cache --network=none --security=sandbox go build",
    ) {
        InstructionKind::Run(r) => {
            assert_eq!(r.mounts.len(), 1);
            assert_eq!(r.network, Some(NetworkMode::None));
            assert_eq!(r.security, Some(SecurityMode::Sandbox));
            assert_eq!(r.command, CommandLine::Shell("go build".into()));
        }
        o => panic!("{o:?}"),
    }
    // A shell command that starts with `[` is not JSON.
    match one("RUN [ -d /x ] || mkdir /x") {
        InstructionKind::Run(r) => {
            assert_eq!(
                r.command,
                CommandLine::Shell("[ -d /x ] || mkdir /x".into())
            )
        }
        o => panic!("{o:?}"),
    }
    // Single quotes are not JSON: shell form, as in BuildKit.
    match one("CMD ['a', 'b']") {
        InstructionKind::Cmd(c) => assert_eq!(c, CommandLine::Shell("['a', 'b']".into())),
        o => panic!("{o:?}"),
    }
}

#[test]
fn cmd_entrypoint_shell() {
    assert_eq!(
        one("CMD [\"nginx\", \"-g\", \"daemon off;\"]"),
        InstructionKind::Cmd(CommandLine::Exec(vec![
            "nginx".into(),
            "-g".into(),
            "daemon off;".into()
        ]))
    );
    assert_eq!(
        one("ENTRYPOINT exec top -b"),
        InstructionKind::Entrypoint(CommandLine::Shell("exec top -b".into()))
    );
    assert_eq!(
        one("ENTRYPOINT []"),
        InstructionKind::Entrypoint(CommandLine::Exec(vec![]))
    );
    assert_eq!(
        one("SHELL [\"/bin/bash\", \"-o\", \"pipefail\", \"-c\"]"),
        InstructionKind::Shell(vec![
            "/bin/bash".into(),
            "-o".into(),
            "pipefail".into(),
            "-c".into()
        ])
    );
}

#[test]
fn env_and_label_forms() {
    assert_eq!(
        one("ENV A=1 B=\"two words\" C=three\\ words"),
        InstructionKind::Env(vec![
            KeyValue {
                key: "A".into(),
                value: "1".into()
            },
            KeyValue {
                key: "B".into(),
                value: "\"two words\"".into()
            },
            KeyValue {
                key: "C".into(),
                value: "three\\ words".into()
            },
        ])
    );
    assert_eq!(
        one("ENV LEGACY value with   spaces"),
        InstructionKind::Env(vec![KeyValue {
            key: "LEGACY".into(),
            value: "value with   spaces".into()
        }])
    );
    assert_eq!(
        one("LABEL org.opencontainers.image.title=\"x y\" version=1"),
        InstructionKind::Label(vec![
            KeyValue {
                key: "org.opencontainers.image.title".into(),
                value: "\"x y\"".into()
            },
            KeyValue {
                key: "version".into(),
                value: "1".into()
            },
        ])
    );
    assert_eq!(
        one("ENV EMPTY="),
        InstructionKind::Env(vec![KeyValue {
            key: "EMPTY".into(),
            value: "".into()
        }])
    );
}

#[test]
fn simple_instructions() {
    assert_eq!(one("USER app:app"), InstructionKind::User("app:app".into()));
    assert_eq!(
        one("WORKDIR /srv/app"),
        InstructionKind::Workdir("/srv/app".into())
    );
    assert_eq!(
        one("STOPSIGNAL SIGTERM"),
        InstructionKind::StopSignal("SIGTERM".into())
    );
    assert_eq!(
        one("MAINTAINER Jane <j@x>"),
        InstructionKind::Maintainer("Jane <j@x>".into())
    );
    assert_eq!(
        one("EXPOSE 80/tcp 53/udp 8000-8010"),
        InstructionKind::Expose(vec!["80/tcp".into(), "53/udp".into(), "8000-8010".into()])
    );
    assert_eq!(
        one("VOLUME /data /logs"),
        InstructionKind::Volume(vec!["/data".into(), "/logs".into()])
    );
    assert_eq!(
        one("VOLUME [\"/data\", \"/var/log x\"]"),
        InstructionKind::Volume(vec!["/data".into(), "/var/log x".into()])
    );
}

#[test]
fn arg_forms() {
    let df = p("ARG A\nARG B=1 C=\"x y\"\nFROM scratch\nARG D\n");
    assert_eq!(df.global_args.len(), 2);
    match &df.global_args[1].kind {
        InstructionKind::Arg(a) => assert_eq!(
            a,
            &vec![
                ArgDecl {
                    name: "B".into(),
                    default: Some("1".into())
                },
                ArgDecl {
                    name: "C".into(),
                    default: Some("\"x y\"".into())
                },
            ]
        ),
        o => panic!("{o:?}"),
    }
    assert_eq!(
        df.stages[0].instructions[0].kind,
        InstructionKind::Arg(vec![ArgDecl {
            name: "D".into(),
            default: None
        }])
    );
}

#[test]
fn copy_and_add_forms() {
    match one("COPY --from=build --chown=1000:1000 --chmod=0755 --link --parents --exclude=*.md --exclude=tmp a b /dst/") {
        InstructionKind::Copy(c) => {
            assert_eq!(c.sources, vec!["a", "b"]);
            assert_eq!(c.dest, "/dst/");
            assert_eq!(c.from.as_deref(), Some("build"));
            assert_eq!(c.chown.as_deref(), Some("1000:1000"));
            assert_eq!(c.chmod.as_deref(), Some("0755"));
            assert!(c.link && c.parents && !c.json);
            assert_eq!(c.excludes, vec!["*.md", "tmp"]);
        }
        o => panic!("{o:?}"),
    }
    match one("COPY [\"a b\", \"/dst dir/\"]") {
        InstructionKind::Copy(c) => {
            assert_eq!(c.sources, vec!["a b"]);
            assert_eq!(c.dest, "/dst dir/");
            assert!(c.json);
        }
        o => panic!("{o:?}"),
    }
    match one("ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false https://x/y.tgz /y") {
        InstructionKind::Add(a) => {
            assert_eq!(a.checksum.as_deref(), Some("sha256:abc"));
            assert!(a.keep_git_dir);
            assert_eq!(a.unpack, Some(false));
        }
        o => panic!("{o:?}"),
    }
    match one("COPY --link=false a /b") {
        InstructionKind::Copy(c) => assert!(!c.link),
        o => panic!("{o:?}"),
    }
}

#[test]
fn healthcheck_forms() {
    assert_eq!(
        one("HEALTHCHECK NONE"),
        InstructionKind::Healthcheck(Healthcheck::None)
    );
    match one("HEALTHCHECK --interval=30s --timeout=5s --start-period=1m --start-interval=2s --retries=3 CMD curl -f http://localhost/ || exit 1") {
        InstructionKind::Healthcheck(h) => {
            assert_eq!(
                h,
                Healthcheck::Cmd {
                    command: CommandLine::Shell("curl -f http://localhost/ || exit 1".into()),
                    interval: Some(Duration::from_secs(30)),
                    timeout: Some(Duration::from_secs(5)),
                    start_period: Some(Duration::from_secs(60)),
                    start_interval: Some(Duration::from_secs(2)),
                    retries: Some(3),
                }
            );
            assert_eq!(h.test()[0], "CMD-SHELL");
        }
        o => panic!("{o:?}"),
    }
    match one("HEALTHCHECK CMD [\"/bin/check\", \"-q\"]") {
        InstructionKind::Healthcheck(h) => assert_eq!(h.test(), vec!["CMD", "/bin/check", "-q"]),
        o => panic!("{o:?}"),
    }
}

#[test]
fn onbuild() {
    match one("ONBUILD COPY --from=x . /app") {
        InstructionKind::Onbuild(o) => {
            assert_eq!(o.expression, "COPY --from=x . /app");
            match &o.trigger.kind {
                InstructionKind::Copy(c) => assert_eq!(c.from.as_deref(), Some("x")),
                k => panic!("{k:?}"),
            }
        }
        o => panic!("{o:?}"),
    }
    match one("onbuild RUN <<EOF\necho hi\nEOF") {
        InstructionKind::Onbuild(o) => {
            assert_eq!(o.expression, "RUN <<EOF\necho hi\nEOF");
            assert!(matches!(o.trigger.kind, InstructionKind::Run(_)));
        }
        o => panic!("{o:?}"),
    }
    // Stored triggers parse back without a FROM.
    let t = parse_instructions("RUN echo a\nCOPY . /x", "ONBUILD").unwrap();
    assert_eq!(t.instructions.len(), 2);
}

#[test]
fn directives() {
    let df = p("# syntax=docker/dockerfile:1.7\n# escape=`\n# check=skip=all\nFROM scratch\nRUN a `\n  b\n");
    assert_eq!(df.directives.escape, '`');
    assert_eq!(
        df.directives.syntax.as_deref(),
        Some("docker/dockerfile:1.7")
    );
    assert_eq!(df.directives.check.as_deref(), Some("skip=all"));
    assert_eq!(df.directives.all.len(), 3);
    match &df.stages[0].instructions[0].kind {
        InstructionKind::Run(r) => assert_eq!(r.command, CommandLine::Shell("a   b".into())),
        o => panic!("{o:?}"),
    }
    // Directives only count at the top: after a comment or blank line
    // they are comments.
    let df = p("# hello\n# escape=`\nFROM scratch\n");
    assert_eq!(df.directives.escape, '\\');
    let df = p("\n# escape=`\nFROM scratch\n");
    assert_eq!(df.directives.escape, '\\');
    // Unknown directives are comments and end the directive block.
    let df = p("# foo=bar\n# escape=`\nFROM scratch\n");
    assert_eq!(df.directives.escape, '\\');
    // Case and spacing.
    let df = p("#ESCAPE = `\nFROM scratch\n");
    assert_eq!(df.directives.escape, '`');
    let e = perr("# escape=x\nFROM scratch\n");
    assert!(e.message.contains("invalid escape token"), "{e}");
    let e = perr("# escape=\\\n# escape=`\nFROM scratch\n");
    assert!(
        e.message.contains("only one escape parser directive"),
        "{e}"
    );
}

#[test]
fn continuations_and_comments() {
    let df = p("FROM scratch\nRUN apt-get update && \\\n    # a comment inside\n    apt-get install -y \\\n\n      curl\n");
    let i = &df.stages[0].instructions[0];
    assert_eq!(i.span.start.line, 2);
    assert_eq!(i.span.end.line, 6);
    match &i.kind {
        InstructionKind::Run(r) => assert_eq!(
            r.command,
            CommandLine::Shell("apt-get update &&     apt-get install -y       curl".into())
        ),
        o => panic!("{o:?}"),
    }
    assert_eq!(df.warnings.len(), 1, "empty continuation line warning");
    // Continuation at the end of the file.
    let v = ins("FROM scratch\nRUN echo a \\");
    assert_eq!(
        v[0],
        InstructionKind::Run(RunInstr {
            command: CommandLine::Shell("echo a".into()),
            mounts: vec![],
            network: None,
            security: None,
            heredocs: vec![],
        })
    );
    // Escape followed by trailing spaces still continues; CRLF line ends.
    let v = ins("FROM scratch\r\nENV A=1 \\  \r\n B=2\r\n");
    assert_eq!(
        v[0],
        InstructionKind::Env(vec![
            KeyValue {
                key: "A".into(),
                value: "1".into()
            },
            KeyValue {
                key: "B".into(),
                value: "2".into()
            },
        ])
    );
    // Indented instructions and comments; comments are attached.
    let df = p("FROM scratch\n  # the user\n    USER app\n");
    let u = &df.stages[0].instructions[0];
    assert_eq!(u.span.start, Position { line: 3, column: 5 });
    assert_eq!(u.comments, vec!["the user"]);
    // A BOM is ignored.
    let df = p("\u{feff}FROM scratch\n");
    assert_eq!(df.stages[0].from.base, "scratch");
}

#[test]
fn heredocs() {
    let df = p("FROM scratch\nRUN <<EOF\napt-get update\napt-get install -y vim\nEOF\nUSER x\n");
    let st = &df.stages[0];
    assert_eq!(st.instructions[0].span.end.line, 5);
    assert_eq!(st.instructions[1].span.start.line, 6);
    match &st.instructions[0].kind {
        InstructionKind::Run(r) => {
            assert_eq!(r.heredocs.len(), 1);
            assert_eq!(
                r.heredocs[0].content,
                "apt-get update\napt-get install -y vim\n"
            );
            assert!(r.heredocs[0].expand);
            assert_eq!(
                r.program(),
                RunProgram::Shell("apt-get update\napt-get install -y vim\n".into())
            );
        }
        o => panic!("{o:?}"),
    }

    // Shebang: run as a script file.
    match one("RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF") {
        InstructionKind::Run(r) => assert_eq!(
            r.program(),
            RunProgram::ScriptFile {
                name: "EOF".into(),
                content: "#!/usr/bin/env python3\nprint(1)\n".into()
            }
        ),
        o => panic!("{o:?}"),
    }

    // Heredoc used by a command: the shell gets the heredocs.
    match one("RUN python3 <<EOF > /out\nprint(1)\nEOF") {
        InstructionKind::Run(r) => assert_eq!(
            r.program(),
            RunProgram::Shell("python3 <<EOF > /out\nprint(1)\nEOF".into())
        ),
        o => panic!("{o:?}"),
    }

    // Multiple heredocs, quoted delimiter, <<- tab stripping.
    match one("RUN cat <<A <<-'B'\na $X\nA\n\tb $X\n\tB") {
        InstructionKind::Run(r) => {
            assert_eq!(r.heredocs.len(), 2);
            assert_eq!(r.heredocs[0].name, "A");
            assert_eq!(r.heredocs[0].content, "a $X\n");
            assert!(r.heredocs[0].expand);
            assert_eq!(r.heredocs[1].name, "B");
            assert!(!r.heredocs[1].expand);
            assert!(r.heredocs[1].chomp);
            assert_eq!(r.heredocs[1].content, "\tb $X\n");
            assert_eq!(r.heredocs[1].body(), "b $X\n");
        }
        o => panic!("{o:?}"),
    }

    // COPY heredocs become inline sources.
    match one("COPY --chmod=755 <<-\"EOF\" <<EOT /usr/local/bin/\n\t#!/bin/sh\n\techo $HOME\n\tEOF\nplain $X\nEOT") {
        InstructionKind::Copy(c) => {
            assert!(c.sources.is_empty());
            assert_eq!(c.dest, "/usr/local/bin/");
            assert_eq!(c.inline_sources.len(), 2);
            assert_eq!(c.inline_sources[0].path, "EOF");
            assert_eq!(c.inline_sources[0].data, "#!/bin/sh\necho $HOME\n");
            assert!(!c.inline_sources[0].expand);
            assert_eq!(c.inline_sources[1].data, "plain $X\n");
            assert!(c.inline_sources[1].expand);
        }
        o => panic!("{o:?}"),
    }

    // JSON forms and quoted markers do not open heredocs.
    match one("RUN echo '<<EOF'") {
        InstructionKind::Run(r) => assert!(r.heredocs.is_empty()),
        o => panic!("{o:?}"),
    }
    let v = ins("FROM scratch\nRUN [\"cat\", \"<<EOF\"]\nUSER x\n");
    assert_eq!(v.len(), 2);

    // Content is taken verbatim (comments and continuations included).
    match one("RUN <<EOF\n# not a comment \\\nEOF") {
        InstructionKind::Run(r) => assert_eq!(r.heredocs[0].content, "# not a comment \\\n"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn heredoc_errors() {
    let e = perr("FROM scratch\nRUN <<EOF\necho hi\n");
    assert!(e.message.contains("unterminated heredoc"), "{e}");
    assert_eq!(e.position.line, 2);
    let e = perr("FROM scratch\nCOPY a <<EOF\nx\nEOF\n");
    assert!(
        e.message
            .contains("cannot accept a heredoc as a destination"),
        "{e}"
    );
}

#[test]
fn json_output_and_render() {
    let df = p("ARG V=1\nFROM alpine:$V AS base\nRUN --mount=type=cache,target=/c echo hi\nCOPY --from=base a b\nHEALTHCHECK CMD true\n");
    let json = to_json(&df);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["stages"][0]["name"], "base");
    assert_eq!(v["stages"][0]["instructions"][0]["instruction"], "RUN");
    assert_eq!(
        v["stages"][0]["instructions"][0]["span"]["start"]["line"],
        3
    );
    assert_eq!(v["global_args"][0]["args"][0]["name"], "V");
    let text = render(&df);
    assert!(text.contains("stage 0 (base)"), "{text}");
    assert!(text.contains("--mount=type=cache,target=/c"), "{text}");
    assert!(text.contains("COPY --from=base"), "{text}");
}

// ---- negative cases -------------------------------------------------------

#[test]
fn empty_and_comment_only_files() {
    for text in ["", "\n\n", "# just a comment\n# another\n", "   \n\t\n"] {
        let e = perr(text);
        assert!(e.message.contains("no instructions"), "{text:?}: {e}");
        assert_eq!(e.position.line, 1);
    }
    let e = perr("ARG A=1\n");
    assert!(e.message.contains("no FROM"), "{e}");
}

#[test]
fn env_without_value() {
    let e = perr("FROM scratch\n\n\n\n\n\nENV FOO\n");
    assert_eq!(e.to_string(), "Dockerfile:7:1: ENV needs a value: ENV FOO");
    assert_eq!(e.instruction.as_deref(), Some("ENV"));
    let e = perr("FROM scratch\nENV\n");
    assert!(
        e.message.contains("ENV requires at least one argument"),
        "{e}"
    );
    let e = perr("FROM scratch\nENV A=1 B\n");
    assert!(e.message.contains("can't find = in \"B\""), "{e}");
    let e = perr("FROM scratch\nENV =x\n");
    assert!(e.message.contains("names can not be blank"), "{e}");
    let e = perr("FROM scratch\nLABEL foo\n");
    assert!(e.message.contains("LABEL needs a value"), "{e}");
}

#[test]
fn unterminated_json_and_quotes() {
    let e = perr("FROM scratch\nCMD [\"nginx\", \"-g\"\n");
    assert!(e.message.contains("not valid JSON"), "{e}");
    assert_eq!(e.position.line, 2);
    let e = perr("FROM scratch\nRUN [\"a\", 1]\n");
    assert!(e.message.contains("strings only"), "{e}");
    let e = perr("FROM scratch\nCOPY [\"a\", \"b\"\n");
    assert!(e.message.contains("not valid JSON"), "{e}");
    let e = perr("FROM scratch\nENV A=\"unterminated\n");
    assert!(e.message.contains("double-quote"), "{e}");
    let e = perr("FROM scratch\nLABEL a='x\n");
    assert!(e.message.contains("single-quote"), "{e}");
    let e = perr("FROM scratch\nWORKDIR ${X\n");
    assert!(e.message.contains("missing '}'"), "{e}");
    let e = perr("FROM scratch\nSHELL /bin/sh -c\n");
    assert!(e.message.contains("JSON form"), "{e}");
}

#[test]
fn unknown_flags_and_instructions() {
    let e = perr("FROM scratch\nCOPY --frm=x a b\n");
    assert!(e.message.contains("unknown flag --frm"), "{e}");
    assert!(e.message.contains("--from"), "{e}");
    let e = perr("FROM scratch\nRUN --device=/dev/x true\n");
    assert!(e.message.contains("unknown flag --device"), "{e}");
    let e = perr("FROM scratch\nADD --from=x a b\n");
    assert!(e.message.contains("unknown flag --from"), "{e}");
    let e = perr("FROM scratch\nENV --x=1 A=1\n");
    assert!(e.message.contains("ENV takes no flags"), "{e}");
    let e = perr("FROM --plat=x scratch\n");
    assert!(e.message.contains("unknown flag --plat"), "{e}");
    let e = perr("FROM scratch\nCOPY --from=a --from=b x y\n");
    assert!(e.message.contains("duplicate flag"), "{e}");
    let e = perr("FROM scratch\nCOPY --link=maybe x y\n");
    assert!(e.message.contains("expecting boolean"), "{e}");
    let e = perr("FROM scratch\nCOPY --chown x y\n");
    assert!(e.message.contains("missing a value"), "{e}");
    let e = perr("FROM scratch\nRUN --network=bridge true\n");
    assert!(e.message.contains("unsupported network mode"), "{e}");
    let e = perr("FROM scratch\nRUN --security=root true\n");
    assert!(e.message.contains("unsupported security mode"), "{e}");
    let e = perr("FROM scratch\nRUN --mount=type=nfs,target=/x true\n");
    assert!(e.message.contains("unsupported mount type"), "{e}");

    let e = perr("FROM scratch\nRUNN echo\n");
    assert_eq!(e.position, Position { line: 2, column: 1 });
    assert!(e.message.contains("unknown instruction: RUNN"), "{e}");
    assert!(e.message.contains("did you mean RUN"), "{e}");
    let e = perr("FROM scratch\nRUN <<EOF\nx\nEOF\nEOF\n");
    assert!(e.message.contains("unknown instruction: EOF"), "{e}");
}

#[test]
fn other_argument_errors() {
    let e = perr("FROM\n");
    assert!(
        e.message
            .contains("FROM requires either one or three arguments"),
        "{e}"
    );
    let e = perr("FROM a AS\n");
    assert!(e.message.contains("one or three"), "{e}");
    let e = perr("FROM a AS 1st\n");
    assert!(e.message.contains("invalid name for build stage"), "{e}");
    let e = perr("FROM scratch\nCOPY onlyone\n");
    assert!(e.message.contains("requires at least two arguments"), "{e}");
    let e = perr("FROM scratch\nUSER\n");
    assert!(
        e.message.contains("USER requires exactly one argument"),
        "{e}"
    );
    let e = perr("FROM scratch\nHEALTHCHECK CMD\n");
    assert!(e.message.contains("missing command"), "{e}");
    let e = perr("FROM scratch\nHEALTHCHECK NONE x\n");
    assert!(e.message.contains("takes no arguments"), "{e}");
    let e = perr("FROM scratch\nHEALTHCHECK FOO x\n");
    assert!(e.message.contains("unknown type"), "{e}");
    let e = perr("FROM scratch\nHEALTHCHECK --interval=10 CMD x\n");
    assert!(e.message.contains("missing unit"), "{e}");
    let e = perr("FROM scratch\nHEALTHCHECK --retries=-1 CMD x\n");
    assert!(e.message.contains("cannot be negative"), "{e}");
    let e = perr("FROM scratch\nONBUILD ONBUILD RUN x\n");
    assert!(
        e.message.contains("Chaining ONBUILD") || e.message.contains("chaining ONBUILD"),
        "{e}"
    );
    let e = perr("FROM scratch\nONBUILD FROM x\n");
    assert!(
        e.message.contains("isn't allowed as an ONBUILD trigger"),
        "{e}"
    );
    let e = perr("FROM scratch\nONBUILD\n");
    assert!(
        e.message.contains("ONBUILD requires at least one argument"),
        "{e}"
    );
    let e = perr("FROM scratch\nEXPOSE\n");
    assert!(e.message.contains("EXPOSE requires"), "{e}");
    let e = perr("FROM scratch\nVOLUME [\"\"]\n");
    assert!(e.message.contains("can not be an empty string"), "{e}");
    let e = perr("RUN echo\nFROM scratch\n");
    assert!(e.message.contains("only ARG may come before FROM"), "{e}");
}

#[test]
fn duplicate_stage_names() {
    let e = perr("FROM alpine AS build\nRUN x\nFROM alpine AS Build\n");
    assert_eq!(e.position.line, 3);
    assert!(e.message.contains("duplicate stage name \"build\""), "{e}");
    assert!(e.message.contains("line 1"), "{e}");
}

#[test]
fn error_display_names_file_line_and_instruction() {
    let e = parse(
        "FROM scratch\n  COPY --bogus a b\n",
        "path/to/Dockerfile.dev",
    )
    .unwrap_err();
    let s = e.to_string();
    assert!(
        s.starts_with("path/to/Dockerfile.dev:2:3: COPY: unknown flag --bogus"),
        "{s}"
    );
    assert!(s.ends_with(": COPY --bogus a b"), "{s}");
}
