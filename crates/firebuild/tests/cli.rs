//! The command line as a user sees it: the real binary, in temp dirs.

use std::path::Path;
use std::process::{Command, Output};

fn firebuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firebuild"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run firebuild")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

const COMMANDS: &[&[&str]] = &[
    &["profile-create"],
    &["profile-ls"],
    &["profile-inspect"],
    &["baseos"],
    &["rootfs"],
    &["run"],
    &["ls"],
    &["inspect"],
    &["kill"],
    &["purge"],
    &["logs"],
    &["exec"],
    &["cp"],
    &["wait"],
    &["image"],
    &["image", "ls"],
    &["image", "inspect"],
    &["image", "rm"],
    &["image", "pull"],
    &["image", "import"],
    &["kernel"],
    &["kernel", "build"],
    &["kernel", "ls"],
    &["kernel", "push"],
    &["kernel", "pull"],
    &["dockerfile", "parse"],
    &["network", "create"],
];

#[test]
fn every_command_has_help() {
    for command in COMMANDS {
        let mut args = command.to_vec();
        args.push("--help");
        let out = firebuild(&args);
        assert!(
            out.status.success(),
            "{command:?} --help failed: {}",
            stderr(&out)
        );
        assert!(stdout(&out).contains("Usage: firebuild"), "{command:?}");
    }
}

#[test]
fn help_says_flags_override_the_profile() {
    let out = firebuild(&["run", "--help"]);
    assert!(stdout(&out).contains("they override the profile's values"));
}

#[test]
fn profile_create_and_inspect_as_in_the_original_docs() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("profiles");
    let conf_flag = format!("--profile-conf-dir={}", conf.display());
    for dir in ["jailer", "runs", "rootfs", "vmlinux"] {
        std::fs::create_dir(tmp.path().join(dir)).unwrap();
    }
    let fc = tmp.path().join("firecracker");
    std::fs::write(&fc, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&fc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let p = |name: &str| tmp.path().join(name).display().to_string();

    let out = firebuild(&[
        "profile-create",
        "--profile=standard",
        &conf_flag,
        &format!("--binary-firecracker={}", fc.display()),
        &format!("--binary-jailer={}", fc.display()),
        &format!("--chroot-base={}", p("jailer")),
        &format!("--run-cache={}", p("runs")),
        "--storage-provider=directory",
        &format!(
            "--storage-provider-property-string=rootfs-storage-root={}",
            p("rootfs")
        ),
        &format!(
            "--storage-provider-property-string=kernel-storage-root={}",
            p("vmlinux")
        ),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    let out = firebuild(&["profile-ls", &conf_flag]);
    assert_eq!(stdout(&out), "standard\n");

    let out = firebuild(&["profile-inspect", "--profile=standard", &conf_flag]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["storage-provider"], "directory");
    assert_eq!(
        json["storage-profile-config-strings"]["rootfs-storage-root"],
        p("rootfs")
    );
    assert_eq!(json["chroot-base"], p("jailer"));
    // Every root in effect: the ones it names, and its own defaults for the
    // ones it does not (inspect only shows them: nothing is created).
    let roots = &json["in-effect"];
    assert_eq!(roots["run-cache"], p("runs"));
    assert_eq!(roots["rootfs-storage-root"], p("rootfs"));
    assert_eq!(
        roots["volume-storage-root"],
        "/var/lib/firebuild/profiles/standard/volumes"
    );
    assert_eq!(
        roots["snapshot-storage-root"],
        "/var/lib/firebuild/profiles/standard/snapshots"
    );
    assert_eq!(
        roots["cache-dir"],
        "/var/lib/firebuild/profiles/standard/cache"
    );
    assert_eq!(roots["unpacked-size-limit"], 64u64 << 30);
}

#[test]
fn profile_errors_are_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let conf_flag = format!("--profile-conf-dir={}", tmp.path().display());
    let out = firebuild(&["profile-inspect", "--profile=ghost", &conf_flag]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.starts_with("error: profile \"ghost\" does not exist"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = firebuild(&[
        "profile-create",
        "--profile=x",
        &conf_flag,
        "--storage-provider=s3",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown storage provider \"s3\""),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.path().join("x.json").exists());
}

#[test]
fn version_names_the_guest_init() {
    let with_init = |init: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_firebuild"))
            .arg("--version")
            .env("FIREBUILD_VMINIT", init)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let text = with_init("/bin/busybox");
    assert!(
        text.starts_with(&format!("firebuild {}\n", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("guest init: /bin/busybox"), "{text}");
    let text = with_init("/bin/ls");
    assert!(
        text.contains("guest init: none (the guest init /bin/ls is dynamically linked"),
        "{text}"
    );
}

#[test]
fn image_ls_inspect_rm_on_a_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store_flag = format!(
        "--storage-provider-property-string=rootfs-storage-root={}",
        root.display()
    );
    // Its own cache and profiles too: never the machine's pulled images.
    let own = tempfile::tempdir().unwrap();
    let cache_flag = format!("--cache-dir={}", own.path().join("cache").display());
    let conf_flag = format!(
        "--profile-conf-dir={}",
        own.path().join("profiles").display()
    );
    let image_dir = root.join("combust-labs/consul/1.9.4");
    std::fs::create_dir_all(&image_dir).unwrap();
    std::fs::write(image_dir.join("rootfs"), vec![1u8; 8192]).unwrap();
    std::fs::write(
        image_dir.join("metadata.json"),
        r#"{"created-at-utc":0,"image":{"org":"combust-labs","image":"consul","version":"1.9.4"},
            "type":"rootfs","tag":"combust-labs/consul:1.9.4"}"#,
    )
    .unwrap();

    let out = firebuild(&["image", "ls", &store_flag, &cache_flag, &conf_flag]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("IMAGE"), "{text}");
    assert!(text.contains("combust-labs/consul:1.9.4  rootfs"), "{text}");

    let out = firebuild(&[
        "image",
        "ls",
        "--json",
        &store_flag,
        &cache_flag,
        &conf_flag,
    ]);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["tag"], "combust-labs/consul:1.9.4");
    assert_eq!(line["type"], "rootfs");

    let out = firebuild(&[
        "image",
        "inspect",
        "combust-labs/consul:1.9.4",
        &store_flag,
        &cache_flag,
        &conf_flag,
    ]);
    let md: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(md["image"]["image"], "consul");

    let out = firebuild(&[
        "image",
        "inspect",
        "Bad Tag",
        &store_flag,
        &cache_flag,
        &conf_flag,
    ]);
    assert!(
        stderr(&out).contains("invalid tag \"Bad Tag\""),
        "{}",
        stderr(&out)
    );

    let out = firebuild(&[
        "image",
        "rm",
        "combust-labs/consul:1.9.4",
        &store_flag,
        &cache_flag,
        &conf_flag,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!Path::new(&image_dir).exists());
    let out = firebuild(&[
        "image",
        "rm",
        "combust-labs/consul:1.9.4",
        &store_flag,
        &cache_flag,
        &conf_flag,
    ]);
    assert!(
        stderr(&out).contains(
            "no stored image or pulled/imported OCI image is named \"combust-labs/consul:1.9.4\""
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn network_create_ls_rm() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("conf");
    let cache = tmp.path().join("cache");
    std::fs::create_dir(&conf).unwrap();
    std::fs::create_dir(&cache).unwrap();
    let dirs = [
        format!("--cni-conf-dir={}", conf.display()),
        format!("--cni-cache-dir={}", cache.display()),
    ];
    let with_dirs = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(dirs.iter().map(String::as_str));
        firebuild(&all)
    };

    let out = with_dirs(&[
        "network",
        "create",
        "machines",
        "--subnet",
        "192.168.127.0/24",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let conflist: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stdout(&out).trim()).unwrap()).unwrap();
    let types: Vec<&str> = conflist["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["bridge", "firewall", "portmap"]);

    let out = with_dirs(&["network", "ls"]);
    let text = stdout(&out);
    assert!(
        text.contains("machines") && text.contains("192.168.127.0/24"),
        "{text}"
    );

    let out = with_dirs(&[
        "network",
        "create",
        "machines",
        "--subnet",
        "192.168.128.0/24",
    ]);
    assert!(!out.status.success(), "a duplicate name must be refused");

    let out = with_dirs(&["network", "create", "bad", "--subnet", "192.168.1.0/33"]);
    assert!(
        stderr(&out).contains("--subnet 192.168.1.0/33"),
        "{}",
        stderr(&out)
    );

    let out = with_dirs(&["network", "rm", "machines"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&with_dirs(&["network", "ls"])).contains("machines"));
}

#[test]
fn dockerfile_parse_shows_stages_and_errors_point_at_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = format!("--cache-dir={}", tmp.path().display());
    let file = tmp.path().join("Dockerfile");
    std::fs::write(
        &file,
        "from alpine:3.20 AS base\nrun echo hi\nFROM base\nCMD [\"sh\"]\n",
    )
    .unwrap();
    let out = firebuild(&[
        "dockerfile",
        "parse",
        file.to_str().unwrap(),
        "--json",
        &cache,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["stages"].as_array().unwrap().len(), 2);

    let out = firebuild(&["dockerfile", "parse", "FROM scratch\nENV FOO\n", &cache]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(":2:") && err.contains("ENV"), "{err}");
}

#[test]
fn kernel_add_ls_inspect_rm_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let root = format!(
        "--storage-provider-property-string=kernel-storage-root={}",
        tmp.path().display()
    );
    // A bzImage-like file is refused with a hint, and nothing is stored.
    let not_elf = tmp.path().join("bzImage");
    std::fs::write(&not_elf, b"MZ not a kernel").unwrap();
    let out = firebuild(&[
        "kernel",
        "add",
        "--file",
        not_elf.to_str().unwrap(),
        "--id",
        "k1",
        &root,
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("bzImage"), "{}", stderr(&out));
    assert!(!tmp.path().join("k1").exists());

    let Some(vmlinux) = std::env::var_os("FIREBUILD_TEST_KERNEL").map(std::path::PathBuf::from)
    else {
        eprintln!("FIREBUILD_TEST_KERNEL unset: skipping the kernel store round trip");
        return;
    };
    let out = firebuild(&[
        "kernel",
        "add",
        "--file",
        vmlinux.to_str().unwrap(),
        "--id",
        "vmlinux-6.1",
        &root,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = firebuild(&["kernel", "ls", &root]);
    assert!(stdout(&out).contains("vmlinux-6.1"), "{}", stdout(&out));
    let out = firebuild(&["kernel", "inspect", "vmlinux-6.1", &root]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["id"], "vmlinux-6.1");
    let out = firebuild(&[
        "kernel",
        "add",
        "--file",
        vmlinux.to_str().unwrap(),
        "--id",
        "vmlinux-6.1",
        &root,
    ]);
    assert!(!out.status.success(), "an id in use is refused");
    let out = firebuild(&["kernel", "rm", "vmlinux-6.1", &root]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!tmp.path().join("vmlinux-6.1").exists());
}

#[test]
fn run_with_unknown_tag_or_kernel_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let runs = tmp.path().join("runs");
    std::fs::create_dir(&runs).unwrap();
    let flags = [
        format!(
            "--storage-provider-property-string=rootfs-storage-root={}",
            tmp.path().display()
        ),
        format!(
            "--storage-provider-property-string=kernel-storage-root={}",
            tmp.path().display()
        ),
        format!("--run-cache={}", runs.display()),
    ];
    let mut args = vec!["run", "--from", "nope/missing:1", "--vmlinux-id", "k"];
    args.extend(flags.iter().map(String::as_str));
    let out = firebuild(&args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no image tagged nope/missing:1"),
        "{}",
        stderr(&out)
    );

    // A stored image but an unknown kernel.
    let image = tmp.path().join("demo/app/1");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::write(image.join("rootfs"), b"").unwrap();
    std::fs::write(
        image.join("metadata.json"),
        r#"{"created-at-utc":0,"image":{"org":"demo","image":"app","version":"1"},"type":"rootfs","tag":"demo/app:1"}"#,
    )
    .unwrap();
    args[2] = "demo/app:1";
    let out = firebuild(&args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("\"k\""),
        "the error names the kernel id: {}",
        stderr(&out)
    );
    let leftovers = std::fs::read_dir(&runs).map(|d| d.count()).unwrap_or(0);
    assert_eq!(leftovers, 0, "nothing was created in the run cache");
}
