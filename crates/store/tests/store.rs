use std::collections::BTreeMap;
use std::fs;

use firebuild_metadata::image::BuildConfig;
use firebuild_metadata::{EntrypointInfo, ImageMetadata, ImageName, ImageType};
use firebuild_store::{DirectoryStore, StoreError, Tag};

fn metadata(tag: &Tag, kind: ImageType) -> ImageMetadata {
    ImageMetadata {
        created_at_utc: 1_700_000_000,
        image: ImageName {
            org: tag.org().into(),
            image: tag.name().into(),
            version: tag.version().into(),
        },
        labels: BTreeMap::new(),
        kind,
        build_config: BuildConfig::default(),
        entrypoint_info: EntrypointInfo::default(),
        parent: None,
        ports: vec![],
        tag: tag.to_string(),
        volumes: vec![],
        stop_signal: None,
        healthcheck: None,
        onbuild: vec![],
        base_image_digest: None,
        rootfs_size: 4,
        rootfs_digest: None,
    }
}

fn publish(store: &DirectoryStore, tag: &Tag, content: &[u8]) {
    let staging = store.stage(tag).unwrap();
    fs::write(staging.rootfs_path(), content).unwrap();
    staging
        .write_metadata(&metadata(tag, ImageType::Rootfs))
        .unwrap();
    staging.publish().unwrap();
}

#[test]
fn layout_matches_the_original() {
    let root = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(root.path());
    let baseos: Tag = "alpine:3.12".parse().unwrap();
    let app: Tag = "combust-labs/consul:1.9.4".parse().unwrap();
    publish(&store, &baseos, b"base");
    publish(&store, &app, b"app!");
    assert!(root.path().join("_/alpine/3.12/rootfs").is_file());
    assert!(root.path().join("_/alpine/3.12/metadata.json").is_file());
    assert_eq!(
        fs::read(root.path().join("combust-labs/consul/1.9.4/rootfs")).unwrap(),
        b"app!"
    );
    // Nothing is left in the staging area.
    assert_eq!(
        fs::read_dir(root.path().join(".staging")).unwrap().count(),
        0
    );
}

#[test]
fn list_get_and_remove() {
    let root = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(root.path());
    let a: Tag = "org/a:1".parse().unwrap();
    let b: Tag = "b:2".parse().unwrap();
    publish(&store, &a, b"a");
    publish(&store, &b, b"b");
    let tags: Vec<String> = store
        .list()
        .unwrap()
        .iter()
        .map(|i| i.tag.to_string())
        .collect();
    assert_eq!(tags, ["_/b:2", "org/a:1"]);
    assert_eq!(store.get(&a).unwrap().metadata.tag, "org/a:1");

    store.remove(&a).unwrap();
    assert!(
        !root.path().join("org").exists(),
        "empty org dir is removed"
    );
    assert!(matches!(store.get(&a), Err(StoreError::NotFound { .. })));
    assert!(matches!(store.remove(&a), Err(StoreError::NotFound { .. })));
    let msg = store.get(&a).unwrap_err().to_string();
    assert!(
        msg.contains("org/a:1") && msg.contains("firebuild image ls"),
        "{msg}"
    );
}

#[test]
fn staging_dropped_before_publish_leaves_no_tag() {
    let root = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(root.path());
    let tag: Tag = "org/half:1".parse().unwrap();
    {
        let staging = store.stage(&tag).unwrap();
        fs::write(staging.rootfs_path(), b"partial").unwrap();
        // interrupted here: no publish
    }
    assert!(!store.contains(&tag));
    assert!(store.list().unwrap().is_empty());
    assert!(!root.path().join("org/half").exists());
    assert_eq!(
        fs::read_dir(root.path().join(".staging")).unwrap().count(),
        0
    );
    let mode = fs::metadata(root.path().join(".staging"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700
    );
}

#[test]
fn incomplete_staging_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(root.path());
    let tag: Tag = "org/x:1".parse().unwrap();
    let staging = store.stage(&tag).unwrap();
    fs::write(staging.rootfs_path(), b"x").unwrap();
    let err = staging.publish().unwrap_err();
    assert!(
        err.to_string().contains("metadata.json is missing"),
        "{err}"
    );
    assert!(!store.contains(&tag));
}

#[test]
fn republishing_a_tag_replaces_it_whole() {
    let root = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(root.path());
    let tag: Tag = "org/app:1".parse().unwrap();
    publish(&store, &tag, b"old");
    publish(&store, &tag, b"new");
    assert_eq!(
        fs::read(store.get(&tag).unwrap().rootfs_path()).unwrap(),
        b"new"
    );
    assert_eq!(
        fs::read_dir(root.path().join(".staging")).unwrap().count(),
        0
    );
}

#[test]
fn stale_staging_of_dead_process_is_cleaned() {
    let root = tempfile::tempdir().unwrap();
    let store = DirectoryStore::new(root.path());
    // A crashed build's leftover: a pid that cannot be alive.
    let stale = root.path().join(".staging/app-1-4194305-123");
    fs::create_dir_all(&stale).unwrap();
    fs::write(stale.join("rootfs"), b"junk").unwrap();
    let live = store.stage(&"org/live:1".parse().unwrap()).unwrap();
    assert_eq!(store.clean_stale_staging().unwrap(), 1);
    assert!(!stale.exists());
    assert!(live.dir().exists(), "a live build's staging is kept");
}
