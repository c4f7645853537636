//! A small driver for the library, used by `bench/pull.sh` until the CLI's
//! `firebuild image pull` is wired:
//!
//!   oci pull --cache DIR [--rootfs DIR] [--platform OS/ARCH] [--insecure-registry HOST]
//!            [--registry-mirror REGISTRY=URL] REF
//!   oci push-dirs --cache DIR REF DIR...      (one gzip layer per directory)
//!   oci import --cache DIR SOURCE NAME

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use firebuild_oci::manifest::Compression;
use firebuild_oci::{
    ImageBuilder, ImageRef, ImageSource, Platform, Registry, RegistryConfig, UnpackOptions,
};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        bail!("usage: oci pull|push-dirs|import ...");
    }
    let cmd = args.remove(0);
    let mut cache = None;
    let mut rootfs = None;
    let mut platform = Platform::host();
    let mut config = RegistryConfig::default();
    let mut rest = Vec::new();
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--cache" => cache = Some(PathBuf::from(value()?)),
            "--rootfs" => rootfs = Some(PathBuf::from(value()?)),
            "--platform" => platform = value()?.parse()?,
            "--insecure-registry" => config.insecure.push(value()?),
            "--registry-mirror" => config.add_mirror(&value()?)?,
            _ => rest.push(a),
        }
    }
    let cache = cache.context("--cache DIR is required")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cmd.as_str() {
        "pull" => {
            let [reference] = rest.as_slice() else {
                bail!("pull takes one REF")
            };
            let reference: ImageRef = reference.parse()?;
            let registry = Registry::new(&cache, config).with_progress(true);
            let t = Instant::now();
            let record = rt.block_on(registry.pull(&reference, &platform))?;
            eprintln!(
                "pulled {} ({}) in {:.2?}",
                record.reference,
                record.digest,
                t.elapsed()
            );
            if let Some(rootfs) = rootfs {
                let t = Instant::now();
                record.unpack(registry.cache(), &rootfs, &UnpackOptions::default())?;
                eprintln!("unpacked into {} in {:.2?}", rootfs.display(), t.elapsed());
            }
        }
        "push-dirs" => {
            let Some((reference, dirs)) = rest.split_first() else {
                bail!("push-dirs takes REF DIR...")
            };
            let reference: ImageRef = reference.parse()?;
            let blobs = firebuild_oci::BlobCache::new(&cache);
            let mut b = ImageBuilder::new(&blobs, &platform);
            for dir in dirs {
                let mut tar = tar::Builder::new(Vec::new());
                tar.follow_symlinks(false);
                tar.append_dir_all(dir.trim_start_matches('/'), dir)
                    .with_context(|| format!("archiving {dir}"))?;
                let data = tar.into_inner()?;
                b.add_layer_tar(&data, Compression::Gzip)?;
                eprintln!("layer from {dir}: {} MiB uncompressed", data.len() >> 20);
            }
            b.config_mut().cmd = Some(vec!["/bin/sh".into()]);
            let record = b.build("bench/image:latest", ImageSource::Built)?;
            let registry = Registry::new(&cache, config);
            let digest = rt.block_on(registry.push(&record, &reference))?;
            println!("{digest}");
        }
        "import" => {
            let [source, name] = rest.as_slice() else {
                bail!("import takes SOURCE NAME")
            };
            let (kind, record) = firebuild_oci::import(
                &cache,
                source.as_ref(),
                name,
                &platform,
                &firebuild_oci::SizeLimit::default(),
            )?;
            println!("{kind:?} {} {}", record.reference, record.digest);
        }
        other => bail!("unknown command {other}"),
    }
    Ok(())
}
