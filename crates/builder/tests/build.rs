//! End-to-end builds: Dockerfiles in, ext4 images and metadata.json out,
//! checked without mounting (debugfs, e2fsck). Run as root.

mod common;

use common::*;
use firebuild_builder::{build, BuildError};

const MULTI_STAGE: &str = r#"
ARG BASE=busybox:test
FROM $BASE AS builder
ARG GREETING=hello
RUN mkdir -p /out && echo "$GREETING from builder" > /out/msg

FROM busybox:test
ARG GREETING
ENV APP_HOME=/srv/app NAME=${GREETING:-none}
WORKDIR $APP_HOME/data
COPY --from=builder /out/msg ./
RUN echo "uid=$(id -u) pwd=$(pwd) greeting=$GREETING" > whoami
USER app
WORKDIR /home/app/w
RUN id -un > uid
VOLUME /var/lib/thing
COPY <<EOF /etc/greeting
hi $NAME
EOF
RUN <<EOF
echo heredoc-run > /home/app/w/heredoc
EOF
EXPOSE 8080 53/udp
LABEL org.example.a=b
STOPSIGNAL SIGQUIT
HEALTHCHECK --interval=5s CMD ["true"]
CMD ["/bin/sh", "-c", "echo cmd"]
"#;

#[test]
fn multi_stage_build_with_args_env_user_workdir_volume_heredocs() {
    let f = Fixture::new();
    f.busybox_base();
    let mut o = f.opts(MULTI_STAGE, "tests/app:1");
    o.build_args.insert("GREETING".into(), "bonjour".into());
    let out = build(&f.store, &o).expect("build");
    let img = out.dir.join("rootfs");
    fsck_clean(&img);
    assert_eq!(cat(&img, "/srv/app/data/msg"), "bonjour from builder\n");
    assert_eq!(
        cat(&img, "/srv/app/data/whoami"),
        "uid=0 pwd=/srv/app/data greeting=bonjour\n"
    );
    assert_eq!(cat(&img, "/home/app/w/uid"), "app\n");
    assert_eq!(
        stat(&img, "/home/app/w").unwrap(),
        (0o755, 1000, 1000, "directory".into())
    );
    assert_eq!(stat(&img, "/var/lib/thing").unwrap().3, "directory");
    assert_eq!(cat(&img, "/etc/greeting"), "hi bonjour\n");
    assert_eq!(cat(&img, "/home/app/w/heredoc"), "heredoc-run\n");
    assert_eq!(
        stat(&img, "/.firebuild/init").unwrap(),
        (0o755, 0, 0, "regular".into())
    );
    // Nothing of the sandbox is left in the image.
    for p in ["/proc", "/sys", "/dev", "/etc/resolv.conf", "/etc/hosts"] {
        assert!(stat(&img, p).is_none(), "{p} left in the image");
    }

    let md = &out.metadata;
    assert_eq!(md.tag, "tests/app:1");
    let ep = &md.entrypoint_info;
    assert_eq!(ep.cmd, vec!["/bin/sh", "-c", "echo cmd"]);
    assert!(ep.entrypoint.is_empty());
    assert_eq!(ep.env.get("APP_HOME").map(String::as_str), Some("/srv/app"));
    assert_eq!(ep.env.get("NAME").map(String::as_str), Some("bonjour"));
    assert!(
        !ep.env.contains_key("GREETING"),
        "ARG values are not persisted"
    );
    assert_eq!(ep.user, "app");
    assert_eq!(ep.workdir, "/home/app/w");
    assert_eq!(md.ports, vec!["8080/tcp", "53/udp"]);
    assert_eq!(md.volumes, vec!["/var/lib/thing"]);
    assert_eq!(
        md.labels.get("org.example.a").map(String::as_str),
        Some("b")
    );
    assert_eq!(md.stop_signal.as_deref(), Some("SIGQUIT"));
    assert_eq!(
        md.healthcheck.as_ref().unwrap().interval_ns,
        Some(5_000_000_000)
    );
    assert_eq!(md.parent.as_deref(), Some("_/busybox:test"));
    assert_eq!(
        md.build_config
            .build_args
            .get("GREETING")
            .map(String::as_str),
        Some("bonjour")
    );
    let on_disk: firebuild_metadata::ImageMetadata =
        serde_json::from_slice(&std::fs::read(out.dir.join("metadata.json")).unwrap()).unwrap();
    assert_eq!(&on_disk, md);
    assert_eq!(md.rootfs_size, std::fs::metadata(&img).unwrap().len());
    let digest = {
        use sha2::Digest;
        format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(std::fs::read(&img).unwrap()))
        )
    };
    assert_eq!(md.rootfs_digest.as_deref(), Some(digest.as_str()));

    // Unchanged rebuild: every step cached, the ext4 image reused.
    let again = build(&f.store, &o).expect("rebuild");
    assert_eq!(again.cached_steps, again.steps);
    assert!(again.rootfs_reused);
    // A changed build arg re-runs the steps that see it, and only those.
    o.build_args.insert("GREETING".into(), "hallo".into());
    let changed = build(&f.store, &o).expect("changed build");
    assert!(changed.cached_steps < changed.steps);
    assert!(!changed.rootfs_reused);
    assert_eq!(
        cat(&changed.dir.join("rootfs"), "/srv/app/data/msg"),
        "hallo from builder\n"
    );
}

#[test]
fn dockerfile_stage_builds_only_what_the_target_needs() {
    let f = Fixture::new();
    f.busybox_base();
    let df = "FROM busybox:test AS one\nRUN echo one > /one\n\
              FROM busybox:test AS broken\nRUN exit 1\n\
              FROM one AS two\nRUN echo two > /two\n";
    let mut o = f.opts(df, "tests/stage:1");
    o.target_stage = Some("two".into());
    o.pre_build_commands = vec!["echo pre > /pre".into()];
    o.post_build_commands = vec!["cat /two /pre > /post".into()];
    let out = build(&f.store, &o).expect("the broken stage is not needed");
    let img = out.dir.join("rootfs");
    assert_eq!(cat(&img, "/one"), "one\n");
    assert_eq!(cat(&img, "/two"), "two\n");
    assert_eq!(
        cat(&img, "/post"),
        "two\npre\n",
        "pre/post build commands run in the target stage"
    );
    assert_eq!(
        out.metadata.build_config.dockerfile_stage.as_deref(),
        Some("two")
    );
    o.target_stage = Some("nope".into());
    let err = build(&f.store, &o).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
}

#[test]
fn failing_run_reports_command_status_and_last_lines_and_stores_nothing() {
    let f = Fixture::new();
    f.busybox_base();
    let df = "FROM busybox:test\nRUN echo first; echo second-line; exit 7\n";
    let err = f.build(df, "tests/fail:1").unwrap_err();
    match &err {
        BuildError::RunFailed {
            at,
            command,
            code,
            note,
            tail,
        } => {
            assert_eq!(*code, 7);
            assert_eq!(note, "", "no build limit was set");
            assert_eq!(at.line, 2);
            assert!(command.contains("exit 7"), "{command}");
            assert!(tail.contains("second-line"), "{tail}");
        }
        other => panic!("unexpected error: {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("status 7") && msg.contains("second-line"),
        "{msg}"
    );
    assert!(!f.store.contains(&"tests/fail:1".parse().unwrap()));
    let staging = f.store.root().join(".staging");
    assert!(std::fs::read_dir(&staging).map(|d| d.count()).unwrap_or(0) == 0);
    assert!(mounts_under(f.dir.path()).is_empty());

    // A missing command names it.
    let err = f
        .build(
            "FROM busybox:test\nRUN [\"no-such-binary\"]\n",
            "tests/fail:2",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no-such-binary"), "{err}");
    // USER that the image does not know.
    let err = f
        .build("FROM busybox:test\nUSER ghost\nRUN true\n", "tests/fail:3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unable to find user ghost"), "{err}");
    // mknod is refused in the sandbox, and the error says what to use.
    let err = f
        .build(
            "FROM busybox:test\nRUN mkdir -p /opt/net && mknod /opt/net/tun c 10 200\n",
            "tests/fail:4",
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the sandbox refuses mknod") && err.contains("--isolation microvm"),
        "{err}"
    );
}

#[test]
fn cache_and_bind_mounts() {
    let f = Fixture::new();
    f.busybox_base();
    f.write("dir/sub/c.txt", "from-context\n");
    let df = "FROM busybox:test AS other\nRUN mkdir /data && echo from-stage > /data/s\n\
              FROM busybox:test\n\
              RUN --mount=type=cache,target=/var/cache/x echo run >> /var/cache/x/log && wc -l < /var/cache/x/log > /count\n\
              RUN --mount=type=bind,source=dir,target=/mnt/ctx cat /mnt/ctx/sub/c.txt > /from-bind\n\
              RUN --mount=type=bind,from=other,source=/data,target=/mnt/other cat /mnt/other/s > /from-stage\n\
              RUN --mount=type=bind,source=dir,target=/mnt/rw,rw echo scribble > /mnt/rw/new && cat /mnt/rw/new > /rw-ok\n";
    let mut o = f.opts(df, "tests/mounts:1");
    let out = build(&f.store, &o).expect("build");
    let img = out.dir.join("rootfs");
    assert_eq!(cat(&img, "/count").trim(), "1");
    assert_eq!(cat(&img, "/from-bind"), "from-context\n");
    assert_eq!(cat(&img, "/from-stage"), "from-stage\n");
    assert_eq!(cat(&img, "/rw-ok"), "scribble\n");
    assert!(
        !f.ctx().join("dir/new").exists(),
        "rw bind writes must not reach the context"
    );
    assert!(
        cat(&img, "/var/cache/x/log").is_empty(),
        "cache contents stay out of the image"
    );
    // The cache directory survives between builds.
    o.no_cache = true;
    let out = build(&f.store, &o).expect("second build");
    assert_eq!(cat(&out.dir.join("rootfs"), "/count").trim(), "2");

    let err = f
        .build(
            "FROM busybox:test\nRUN --mount=type=secret,id=x true\n",
            "tests/mounts:2",
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("type=secret is not supported"), "{err}");
}

#[test]
fn entrypoint_cmd_interplay_and_onbuild() {
    let f = Fixture::new();
    f.busybox_base();
    // The base has CMD ["/bin/sh"]; a new ENTRYPOINT drops it.
    let out = f
        .build(
            "FROM busybox:test\nENTRYPOINT [\"/bin/echo\"]\n",
            "tests/ep:1",
        )
        .unwrap();
    assert_eq!(out.metadata.entrypoint_info.entrypoint, vec!["/bin/echo"]);
    assert!(out.metadata.entrypoint_info.cmd.is_empty());
    // CMD-only images keep their CMD; shell form is wrapped in SHELL.
    let out = f
        .build(
            "FROM busybox:test\nSHELL [\"/bin/sh\", \"-ec\"]\nCMD echo hi\n",
            "tests/ep:2",
        )
        .unwrap();
    assert_eq!(
        out.metadata.entrypoint_info.cmd,
        vec!["/bin/sh", "-ec", "echo hi"]
    );
    // Inherited CMD stays when nothing overrides it.
    let out = f
        .build("FROM busybox:test\nRUN true\n", "tests/ep:3")
        .unwrap();
    assert_eq!(out.metadata.entrypoint_info.cmd, vec!["/bin/sh"]);
    // ONBUILD triggers run in the child, and are not inherited further.
    let out = f
        .build(
            "FROM busybox:test\nONBUILD RUN echo triggered > /trig\n",
            "tests/onbuild:1",
        )
        .unwrap();
    assert_eq!(out.metadata.onbuild, vec!["RUN echo triggered > /trig"]);
    assert!(stat(&out.dir.join("rootfs"), "/trig").is_none());
    let child = f
        .build(
            "FROM tests/onbuild:1\nRUN test -f /trig\n",
            "tests/onbuild:2",
        )
        .unwrap();
    assert_eq!(cat(&child.dir.join("rootfs"), "/trig"), "triggered\n");
    assert!(child.metadata.onbuild.is_empty());
}

#[test]
fn deletions_hide_base_files_and_prune_keeps_only_what_stored_images_use() {
    let f = Fixture::new();
    f.busybox_base();
    let keep = f
        .build(
            "FROM busybox:test\nRUN rm /etc/group && rm -r /home && echo keep > /k\n",
            "tests/keep:1",
        )
        .unwrap();
    let img = keep.dir.join("rootfs");
    assert!(
        stat(&img, "/etc/group").is_none(),
        "a file deleted in a RUN is gone"
    );
    assert!(
        stat(&img, "/home").is_none(),
        "a directory deleted in a RUN is gone"
    );
    assert_eq!(stat(&img, "/etc/passwd").unwrap().3, "regular");
    let gone = f
        .build("FROM busybox:test\nRUN echo gone > /g\n", "tests/gone:1")
        .unwrap();
    f.store.remove(&gone.tag).unwrap();
    let layers = f.cache().join("build/layers");
    let before = std::fs::read_dir(&layers).unwrap().count();
    let report = firebuild_builder::prune(&f.store, &f.cache(), true).unwrap();
    assert!(report.layers_removed >= 1, "{report:?}");
    assert_eq!(report.refs_removed, 1);
    assert_eq!(
        std::fs::read_dir(&layers).unwrap().count(),
        before - report.layers_removed
    );
    // What the kept image needs is still cached.
    let again = f
        .build(
            "FROM busybox:test\nRUN rm /etc/group && rm -r /home && echo keep > /k\n",
            "tests/keep:1",
        )
        .unwrap();
    assert_eq!(again.cached_steps, again.steps);
}

#[test]
fn from_a_stored_image_whose_layers_are_no_longer_cached() {
    let f = Fixture::new();
    f.busybox_base();
    // (RUN may not make device nodes: the sandbox's user namespace refuses
    // mknod, as rootless BuildKit does. ext4.rs tests reading them back.)
    let base = f
        .build(
            "FROM busybox:test\nRUN mkdir -p /s && echo x > /s/f && ln /s/f /s/hl && chown 1000:50 /s/f && chmod 4755 /s/f\n",
            "tests/base:1",
        )
        .unwrap();
    // A cache that never saw it: the files come from the ext4 image.
    std::fs::remove_dir_all(f.cache()).unwrap();
    let out = f
        .build(
            "FROM tests/base:1\nRUN ls -l /s > /listing && echo ok > /ok\n",
            "tests/child:1",
        )
        .unwrap();
    let img = out.dir.join("rootfs");
    assert_eq!(cat(&img, "/ok"), "ok\n");
    assert_eq!(
        stat(&img, "/s/f").unwrap(),
        (0o4755, 1000, 50, "regular".into())
    );
    assert!(
        debugfs(&img, "stat /s/hl").contains("Links: 2"),
        "hard link kept"
    );
    assert_eq!(out.metadata.parent.as_deref(), Some("tests/base:1"));
    assert_eq!(out.metadata.base_image_digest, base.metadata.rootfs_digest);
    fsck_clean(&img);
}

/// `abs` written relative to the current directory.
fn relative(abs: &std::path::Path) -> std::path::PathBuf {
    let depth = std::env::current_dir().unwrap().components().count() - 1;
    let mut p = std::path::PathBuf::new();
    for _ in 0..depth {
        p.push("..");
    }
    p.join(abs.strip_prefix("/").unwrap())
}

#[test]
fn relative_store_cache_and_dockerfile_paths_work() {
    let f = Fixture::new();
    f.busybox_base();
    f.write("a.txt", "A\n");
    let mut o = f.opts(
        "FROM busybox:test\nCOPY a.txt /a\nRUN cat /a > /b\n",
        "tests/rel:1",
    );
    o.cache_dir = relative(&f.cache());
    o.dockerfile = relative(&f.ctx().join("Dockerfile"))
        .to_string_lossy()
        .into_owned();
    o.vminit = relative(&f.dir.path().join("vminit"));
    let store = firebuild_store::DirectoryStore::new(relative(f.store.root()));
    let out = build(&store, &o).expect("relative paths");
    assert_eq!(cat(&f.store.root().join("tests/rel/1/rootfs"), "/b"), "A\n");
    assert_eq!(out.steps, 2);
}

#[test]
fn workdir_copy_and_volume_through_dangling_symlinks_make_their_targets() {
    let f = Fixture::new();
    f.busybox_base();
    f.write("f.txt", "copied\n");
    let df = "FROM busybox:test\n\
        RUN ln -s /data/app /app && mkdir -p /srv && ln -s ../var/lib/v /srv/v && ln -s /opt/dst /dst\n\
        WORKDIR /app\n\
        COPY f.txt sub/\n\
        COPY f.txt /dst/in/\n\
        VOLUME /srv/v\n";
    let out = f
        .build(df, "tests/dangling:1")
        .expect("building through dangling links");
    let img = out.dir.join("rootfs");
    assert_eq!(cat(&img, "/data/app/sub/f.txt"), "copied\n");
    assert_eq!(cat(&img, "/opt/dst/in/f.txt"), "copied\n");
    assert_eq!(
        stat(&img, "/var/lib/v").map(|s| s.3),
        Some("directory".into())
    );
    assert_eq!(stat(&img, "/app").map(|s| s.3), Some("symlink".into()));
    assert_eq!(out.metadata.entrypoint_info.workdir, "/app");
}
