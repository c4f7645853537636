//! Reading the guest metadata from where the kernel command line says.

use std::fs::File;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use firebuild_metadata::boot::{config_drive, MMDS_ADDRESS};
use firebuild_metadata::GuestMetadata;

use crate::cmdline::MetadataSource;
use crate::mmds::{MmdsClient, MmdsError};

/// The largest config drive read (the document is a few KiB).
const MAX_DRIVE_BYTES: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("config drive {path} did not appear within {secs}s; the runtime must attach it as a read-only virtio disk")]
    DriveMissing { path: PathBuf, secs: u64 },
    #[error("reading config drive {path}: {source}")]
    DriveRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config drive {path} holds no metadata document: {source}")]
    DriveDecode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config drive {path} is larger than {MAX_DRIVE_BYTES} bytes without a NUL end marker")]
    DriveTooLarge { path: PathBuf },
    #[error(transparent)]
    Mmds(#[from] MmdsError),
}

/// Reads the metadata from `source`; `drive_wait` bounds how long a config
/// drive device node may take to appear.
pub fn read(source: &MetadataSource, drive_wait: Duration) -> Result<GuestMetadata, MetadataError> {
    match source {
        MetadataSource::ConfigDrive(path) => read_config_drive(path, drive_wait),
        MetadataSource::Mmds => {
            let ip: Ipv4Addr = MMDS_ADDRESS
                .parse()
                .unwrap_or(Ipv4Addr::new(169, 254, 169, 254));
            Ok(MmdsClient::new(SocketAddr::from((ip, 80))).fetch_metadata()?)
        }
    }
}

/// Reads a raw config drive: bytes up to the first NUL are the JSON
/// document (see [`config_drive`]).
pub fn read_config_drive(path: &Path, wait: Duration) -> Result<GuestMetadata, MetadataError> {
    let start = Instant::now();
    let mut file = loop {
        match File::open(path) {
            Ok(f) => break f,
            Err(e) if e.kind() == io::ErrorKind::NotFound && start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(MetadataError::DriveMissing {
                    path: path.to_path_buf(),
                    secs: wait.as_secs(),
                })
            }
            Err(source) => {
                return Err(MetadataError::DriveRead {
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    };
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        let n = file
            .read(&mut chunk)
            .map_err(|source| MetadataError::DriveRead {
                path: path.to_path_buf(),
                source,
            })?;
        if n == 0 {
            break;
        }
        let piece = &chunk[..n];
        if let Some(end) = piece.iter().position(|b| *b == 0) {
            bytes.extend_from_slice(&piece[..end]);
            break;
        }
        bytes.extend_from_slice(piece);
        if bytes.len() > MAX_DRIVE_BYTES {
            return Err(MetadataError::DriveTooLarge {
                path: path.to_path_buf(),
            });
        }
    }
    let doc = config_drive::decode(&bytes).map_err(|source| MetadataError::DriveDecode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(doc.latest.meta_data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use firebuild_metadata::guest::{MmdsDocument, MmdsLatest};

    #[test]
    fn reads_an_encoded_drive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.img");
        let doc = MmdsDocument {
            latest: MmdsLatest {
                meta_data: GuestMetadata {
                    vmm_id: "vm-7".into(),
                    local_hostname: "h".into(),
                    ..Default::default()
                },
            },
        };
        let mut bytes = config_drive::encode(&doc).unwrap();
        bytes.resize(bytes.len() + (1 << 20), 0); // a device bigger than the document
        std::fs::write(&path, bytes).unwrap();
        let meta = read_config_drive(&path, Duration::ZERO).unwrap();
        assert_eq!(meta, doc.latest.meta_data);
    }

    #[test]
    fn drive_errors_name_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("vdz");
        let e = read_config_drive(&missing, Duration::from_millis(50)).unwrap_err();
        assert!(matches!(e, MetadataError::DriveMissing { .. }));
        assert!(e.to_string().contains("vdz"));

        let garbage = dir.path().join("garbage");
        std::fs::write(&garbage, b"{\"latest\": 12}\0\0\0").unwrap();
        let e = read_config_drive(&garbage, Duration::ZERO).unwrap_err();
        assert!(matches!(e, MetadataError::DriveDecode { .. }), "{e}");

        let zeros = dir.path().join("zeros");
        std::fs::write(&zeros, vec![0u8; 4096]).unwrap();
        assert!(matches!(
            read_config_drive(&zeros, Duration::ZERO).unwrap_err(),
            MetadataError::DriveDecode { .. }
        ));
    }
}
