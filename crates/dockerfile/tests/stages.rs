//! Stages, the dependency graph, target selection and ARG/ENV scoping.

use firebuild_dockerfile::*;
use std::collections::BTreeMap;

fn p(text: &str) -> Dockerfile {
    parse(text, "Dockerfile").unwrap_or_else(|e| panic!("{e}"))
}

fn globals(df: &Dockerfile, args: &[(&str, &str)]) -> GlobalScope {
    let m: BTreeMap<String, String> = args
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let amd64 = Platform::parse("linux/amd64").unwrap();
    let arm = Platform::parse("linux/arm/v7").unwrap();
    GlobalScope::new(df, &m, &amd64, &arm).unwrap()
}

const MULTI: &str = "\
ARG GO=1.22
FROM golang:${GO} AS deps
RUN go mod download
FROM deps AS build
RUN go build
FROM alpine AS unused
RUN true
FROM build AS test
RUN go test
FROM scratch
COPY --from=build /out/app /app
COPY --from=0 /go/pkg /pkg
RUN --mount=type=bind,from=TEST,target=/t true
COPY --from=nginx:latest /etc/nginx /etc/nginx
";

#[test]
fn graph_and_build_order() {
    let df = p(MULTI);
    let g = globals(&df, &[]);
    let graph = df.resolve_stages(&g).unwrap();
    assert_eq!(graph.stages[0].base, StageBase::Image("golang:1.22".into()));
    assert_eq!(graph.stages[1].base, StageBase::Stage(0));
    assert_eq!(graph.stages[3].base, StageBase::Stage(1));
    assert_eq!(graph.stages[4].base, StageBase::Scratch);
    let deps: Vec<FromRef> = graph.stages[4]
        .dependencies
        .iter()
        .map(|d| d.on.clone())
        .collect();
    assert_eq!(
        deps,
        vec![
            FromRef::Stage(1),
            FromRef::Stage(0),
            FromRef::Stage(3),
            FromRef::Image("nginx:latest".into())
        ]
    );
    // The last stage needs everything but "unused".
    assert_eq!(df.stages_needed_for(None, &g).unwrap(), vec![0, 1, 3, 4]);
    // A named target builds only what it needs.
    assert_eq!(df.stages_needed_for(Some("build"), &g).unwrap(), vec![0, 1]);
    assert_eq!(df.stages_needed_for(Some("UNUSED"), &g).unwrap(), vec![2]);
    assert_eq!(df.target_stage(Some("Test")).unwrap(), 3);
}

#[test]
fn from_args_and_build_args() {
    let df = p(MULTI);
    let g = globals(&df, &[("GO", "1.23")]);
    let graph = df.resolve_stages(&g).unwrap();
    assert_eq!(graph.stages[0].base, StageBase::Image("golang:1.23".into()));
    let df = p("ARG IMG\nFROM ${IMG:-busybox}\n");
    let graph = df.resolve_stages(&globals(&df, &[])).unwrap();
    assert_eq!(graph.stages[0].base, StageBase::Image("busybox".into()));
    let df = p("ARG IMG\nFROM $IMG\n");
    let e = df.resolve_stages(&globals(&df, &[])).unwrap_err();
    assert!(e.message.contains("should not be blank"), "{e}");
    let df = p("FROM --platform=$BUILDPLATFORM alpine\n");
    let graph = df.resolve_stages(&globals(&df, &[])).unwrap();
    assert_eq!(graph.stages[0].platform.as_deref(), Some("linux/amd64"));
}

#[test]
fn from_names_only_earlier_stages() {
    // A later stage's name in FROM is an image, as in BuildKit.
    let df = p("FROM later AS first\nFROM alpine AS later\n");
    let graph = df.resolve_stages(&globals(&df, &[])).unwrap();
    assert_eq!(graph.stages[0].base, StageBase::Image("later".into()));
    // COPY --from may name any stage; a cycle is an error.
    let df = p("FROM alpine AS a\nCOPY --from=b x y\nFROM alpine AS b\nCOPY --from=a x y\n");
    let e = df.resolve_stages(&globals(&df, &[])).unwrap_err();
    assert!(e.message.contains("circular dependency"), "{e}");
    let df = p("FROM alpine AS a\nCOPY --from=a x y\n");
    assert!(df.resolve_stages(&globals(&df, &[])).is_err());
}

#[test]
fn stage_errors() {
    let df = p(MULTI);
    let e = df.target_stage(Some("nope")).unwrap_err();
    assert!(
        e.message
            .contains("target stage \"nope\" could not be found"),
        "{e}"
    );
    assert!(e.message.contains("deps, build, unused, test"), "{e}");
    let df = p("FROM alpine\nCOPY --from=5 a b\n");
    let e = df.resolve_stages(&globals(&df, &[])).unwrap_err();
    assert!(e.message.contains("invalid stage index 5"), "{e}");
    assert_eq!(e.position.line, 2);
}

#[test]
fn global_args_only_in_from_unless_redeclared() {
    let df = p("ARG V=1\nARG W=$V-2\nFROM alpine\nARG V\nARG X=$V.$W\nENV Y=$V\n");
    let g = globals(&df, &[]);
    assert_eq!(g.get("W"), Some("1-2"));
    assert_eq!(g.get("TARGETARCH"), Some("arm"));
    assert_eq!(g.get("TARGETVARIANT"), Some("v7"));
    assert_eq!(g.get("BUILDPLATFORM"), Some("linux/amd64"));
    let mut scope = g.stage_scope(Env::from_key_values(["PATH=/bin"]));
    for ins in &df.stages[0].instructions {
        scope.apply(&ins.kind, &g).unwrap();
    }
    // V redeclared: global value; W not redeclared: invisible.
    assert_eq!(scope.env().get("V"), Some("1"));
    assert_eq!(scope.env().get("W"), None);
    assert_eq!(scope.env().get("X"), Some("1."));
    assert_eq!(scope.env().get("Y"), Some("1"));
    // Only ENV reaches the image config.
    assert_eq!(scope.image_env().to_key_values(), vec!["PATH=/bin", "Y=1"]);
}

#[test]
fn build_args_override_defaults_and_env_overrides_args() {
    let df =
        p("FROM alpine\nARG A=default\nARG B\nARG TARGETOS\nENV A=${A}-env\nARG A\nENV C=$B\n");
    let g = globals(&df, &[("A", "cli"), ("B", "b"), ("UNUSED", "x")]);
    let mut scope = g.stage_scope(Env::new());
    for ins in &df.stages[0].instructions {
        scope.apply(&ins.kind, &g).unwrap();
    }
    assert_eq!(scope.env().get("TARGETOS"), Some("linux"));
    assert_eq!(scope.env().get("C"), Some("b"));
    assert_eq!(scope.image_env().get("A"), Some("cli-env"));
    assert_eq!(scope.env().get("UNUSED"), None);
}

#[test]
fn env_pairs_see_the_previous_environment() {
    let df = p("FROM alpine\nENV abc=hello\nENV abc=bye def=$abc\nENV ghi=$abc\n");
    let g = globals(&df, &[]);
    let mut scope = g.stage_scope(Env::new());
    for ins in &df.stages[0].instructions {
        scope.apply(&ins.kind, &g).unwrap();
    }
    assert_eq!(scope.env().get("def"), Some("hello"));
    assert_eq!(scope.env().get("ghi"), Some("bye"));
}

#[test]
fn expand_instruction_words() {
    let df = p(concat!(
        "FROM alpine\n",
        "ENV DIR=/srv NAME=app PORT=8080 U=1000\n",
        "WORKDIR $DIR/${NAME}\n",
        "COPY --chown=$U:$U [\"$NAME.conf\", \"${DIR}/\"]\n",
        "EXPOSE $PORT/tcp\n",
        "LABEL \"$NAME.version\"=\"1 0\"\n",
        "VOLUME $DIR/data\n",
        "USER ${U}\n",
        "STOPSIGNAL SIG${SIG:-TERM}\n",
        "RUN echo $NAME\n",
        "COPY <<EOF <<'RAW' /etc/\nname=$NAME \"quoted\" \\$kept\nEOF\nname=$NAME\nRAW\n",
        "RUN --mount=type=cache,target=$DIR/cache,id=$NAME true\n",
    ));
    let g = globals(&df, &[]);
    let mut scope = g.stage_scope(Env::new());
    let mut out = Vec::new();
    for ins in &df.stages[0].instructions {
        out.push(scope.expand_instruction(&ins.kind).unwrap());
        scope.apply(&ins.kind, &g).unwrap();
    }
    assert_eq!(out[1], InstructionKind::Workdir("/srv/app".into()));
    match &out[2] {
        InstructionKind::Copy(c) => {
            assert_eq!(c.chown.as_deref(), Some("1000:1000"));
            assert_eq!(c.sources, vec!["app.conf"]);
            assert_eq!(c.dest, "/srv/");
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(out[3], InstructionKind::Expose(vec!["8080/tcp".into()]));
    assert_eq!(
        out[4],
        InstructionKind::Label(vec![KeyValue {
            key: "app.version".into(),
            value: "1 0".into()
        }])
    );
    assert_eq!(out[5], InstructionKind::Volume(vec!["/srv/data".into()]));
    assert_eq!(out[6], InstructionKind::User("1000".into()));
    assert_eq!(out[7], InstructionKind::StopSignal("SIGTERM".into()));
    match &out[8] {
        InstructionKind::Run(r) => assert_eq!(r.command, CommandLine::Shell("echo $NAME".into())),
        o => panic!("{o:?}"),
    }
    match &out[9] {
        InstructionKind::Copy(c) => {
            assert_eq!(c.inline_sources[0].data, "name=app \"quoted\" $kept\n");
            assert_eq!(c.inline_sources[1].data, "name=$NAME\n");
        }
        o => panic!("{o:?}"),
    }
    match &df.stages[0].instructions[10].kind {
        InstructionKind::Run(r) => {
            let mounts = scope.resolve_mounts(r).unwrap();
            assert_eq!(mounts[0].kind, MountType::Cache);
            assert_eq!(mounts[0].target.as_deref(), Some("/srv/cache"));
            assert_eq!(mounts[0].id.as_deref(), Some("app"));
        }
        o => panic!("{o:?}"),
    }
}

#[test]
fn expansion_errors_are_located_by_the_caller() {
    let df = p("FROM alpine\nWORKDIR ${MISSING:?set MISSING}\n");
    let g = globals(&df, &[]);
    let scope = g.stage_scope(Env::new());
    let ins = &df.stages[0].instructions[0];
    let e = scope.expand_instruction(&ins.kind).unwrap_err().located(
        &df.file_name,
        ins.span,
        ins.name(),
        &ins.original,
    );
    assert_eq!(e.position.line, 2);
    assert!(e.to_string().contains("MISSING: set MISSING"), "{e}");
}

#[test]
fn backtick_escape_in_scope() {
    let df = p("# escape=`\nFROM alpine\nENV P=\"C:\\dir `$HOME\"\n");
    let g = globals(&df, &[]);
    let mut scope = g.stage_scope(Env::new());
    scope.apply(&df.stages[0].instructions[0].kind, &g).unwrap();
    assert_eq!(scope.env().get("P"), Some("C:\\dir $HOME"));
}
