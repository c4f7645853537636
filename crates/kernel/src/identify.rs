//! Tells what a file offered as a kernel really is, from its first bytes:
//! an x86_64 ELF vmlinux (what Firecracker boots), another ELF, a bzImage,
//! a compressed file, and so on.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::error::{Error, Result};

const EM_X86_64: u16 = 62;
const ET_EXEC: u16 = 2;

/// What a file is, as far as kernels go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A 64-bit little-endian x86_64 ELF executable: a vmlinux.
    Vmlinux,
    /// Some other ELF file.
    Elf {
        /// 1 = 32-bit, 2 = 64-bit.
        class: u8,
        /// `e_machine`.
        machine: u16,
        /// `e_type`.
        elf_type: u16,
    },
    /// An x86 bzImage (boot sector + setup header); the version string the
    /// header points to, when readable.
    BzImage { version: Option<String> },
    /// A compressed file (gzip, xz, zstd, bzip2, lz4).
    Compressed(&'static str),
    /// A PE/COFF executable (an EFI application).
    Pe,
    /// A zero-length file.
    Empty,
    /// None of the above.
    Unknown,
}

impl FileKind {
    /// A hint for turning this kind of file into a vmlinux, if there is one.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            FileKind::BzImage { .. } => Some(
                "Firecracker boots the uncompressed ELF kernel: pass the `vmlinux` file at the top of the kernel build tree, or build one with `firebuild kernel build`",
            ),
            FileKind::Compressed(_) => Some("decompress it first if it holds a vmlinux"),
            FileKind::Elf { elf_type, .. } if *elf_type != ET_EXEC => {
                Some("a kernel module or object file is not a kernel; pass the `vmlinux` from the build tree")
            }
            FileKind::Elf { .. } => Some("guest kernels must be built for x86_64"),
            _ => None,
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKind::Vmlinux => f.write_str("an x86_64 ELF vmlinux"),
            FileKind::Elf {
                class,
                machine,
                elf_type,
            } => {
                let bits = match class {
                    1 => "32-bit ",
                    2 => "64-bit ",
                    _ => "",
                };
                let kind = match elf_type {
                    1 => "relocatable object (a .o or kernel module)",
                    2 => "executable",
                    3 => "shared object",
                    4 => "core dump",
                    _ => "file",
                };
                write!(f, "a {bits}ELF {kind} for {}", machine_name(*machine))
            }
            FileKind::BzImage { version: Some(v) } => {
                write!(f, "a bzImage (compressed x86 boot image, {v})")
            }
            FileKind::BzImage { version: None } => {
                f.write_str("a bzImage (compressed x86 boot image)")
            }
            FileKind::Compressed(what) => write!(f, "{what}-compressed data"),
            FileKind::Pe => f.write_str("a PE/EFI executable"),
            FileKind::Empty => f.write_str("an empty file"),
            FileKind::Unknown => f.write_str("not a kernel image (unrecognised content)"),
        }
    }
}

fn machine_name(machine: u16) -> String {
    match machine {
        3 => "i386".into(),
        8 => "MIPS".into(),
        20 => "PowerPC".into(),
        21 => "PowerPC64".into(),
        22 => "s390".into(),
        40 => "ARM".into(),
        62 => "x86_64".into(),
        183 => "aarch64".into(),
        243 => "RISC-V".into(),
        other => format!("machine {other}"),
    }
}

/// Classifies a file from its header.
pub fn identify(path: &Path) -> Result<FileKind> {
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut head = Vec::with_capacity(1024);
    (&mut file)
        .take(1024)
        .read_to_end(&mut head)
        .map_err(|e| Error::io("read", path, e))?;
    let mut kind = classify(&head);
    if let FileKind::BzImage { version } = &mut kind {
        *version = bzimage_version(&mut file, &head);
    }
    Ok(kind)
}

/// Checks that `path` is an x86_64 ELF vmlinux, or says what it is.
pub fn require_vmlinux(path: &Path) -> Result<()> {
    match identify(path)? {
        FileKind::Vmlinux => Ok(()),
        other => Err(Error::NotAVmlinux {
            path: path.to_path_buf(),
            hint: other.hint(),
            what: other.to_string(),
        }),
    }
}

/// Classifies a file from its first bytes (up to 1 KiB).
pub fn classify(head: &[u8]) -> FileKind {
    if head.is_empty() {
        return FileKind::Empty;
    }
    if head.starts_with(b"\x7fELF") {
        return classify_elf(head);
    }
    // bzImage: "HdrS" at 0x202; its boot sector also starts with "MZ" when it
    // has an EFI stub, so check it before PE.
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return FileKind::BzImage { version: None };
    }
    let magics: [(&[u8], &'static str); 5] = [
        (b"\x1f\x8b", "gzip"),
        (b"\xfd7zXZ\x00", "xz"),
        (b"\x28\xb5\x2f\xfd", "zstd"),
        (b"BZh", "bzip2"),
        (b"\x04\x22\x4d\x18", "lz4"),
    ];
    if let Some((_, name)) = magics.iter().find(|(m, _)| head.starts_with(m)) {
        return FileKind::Compressed(name);
    }
    if head.starts_with(b"MZ") {
        return FileKind::Pe;
    }
    FileKind::Unknown
}

fn classify_elf(head: &[u8]) -> FileKind {
    let class = head.get(4).copied().unwrap_or(0);
    let little_endian = head.get(5) == Some(&1);
    let half = |at: usize| -> u16 {
        match head.get(at..at + 2) {
            Some(b) if little_endian => u16::from_le_bytes([b[0], b[1]]),
            Some(b) => u16::from_be_bytes([b[0], b[1]]),
            None => 0,
        }
    };
    let elf_type = half(16);
    let machine = half(18);
    if class == 2 && little_endian && machine == EM_X86_64 && elf_type == ET_EXEC {
        FileKind::Vmlinux
    } else {
        FileKind::Elf {
            class,
            machine,
            elf_type,
        }
    }
}

/// The bzImage setup header's `kernel_version` field (at 0x20e) points to a
/// NUL-terminated string at offset `value + 0x200`.
fn bzimage_version(file: &mut File, head: &[u8]) -> Option<String> {
    let ptr = head.get(0x20e..0x210)?;
    let offset = u64::from(u16::from_le_bytes([ptr[0], ptr[1]])) + 0x200;
    file.seek(SeekFrom::Start(offset)).ok()?;
    let mut buf = Vec::new();
    file.take(256).read_to_end(&mut buf).ok()?;
    let end = buf.iter().position(|b| *b == 0)?;
    let text = std::str::from_utf8(&buf[..end]).ok()?;
    (!text.is_empty()).then(|| text.to_string())
}

/// Finds the release in a vmlinux's `Linux version 6.1.0 (...)` banner.
/// Reads the file in chunks, so large kernels cost no memory.
pub fn vmlinux_release(path: &Path) -> Result<Option<String>> {
    const NEEDLE: &[u8] = b"Linux version ";
    const CHUNK: usize = 1 << 20;
    let mut file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let mut window: Vec<u8> = Vec::with_capacity(CHUNK + 256);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut chunk)
            .map_err(|e| Error::io("read", path, e))?;
        window.extend_from_slice(&chunk[..n]);
        let mut from = 0;
        while let Some(pos) = find(&window[from..], NEEDLE) {
            let start = from + pos + NEEDLE.len();
            let rest = &window[start..];
            match rest
                .iter()
                .position(|b| *b == b' ' || *b == 0 || *b == b'\n')
            {
                // The banner holds a format string too ("Linux version %s");
                // a release starts with a digit.
                Some(end) if end > 0 && rest[0].is_ascii_digit() => {
                    return Ok(std::str::from_utf8(&rest[..end]).ok().map(str::to_string));
                }
                None if n > 0 => break, // the release continues in the next chunk
                _ => from = start,
            }
        }
        if n == 0 {
            return Ok(None);
        }
        // Keep a tail so a banner split across chunks is still found.
        let keep = window.len().min(256);
        window.drain(..window.len() - keep);
    }
}

/// The kernel's own `.config`, when it was built with `CONFIG_IKCONFIG`
/// (a gzip stream between the `IKCFG_ST` and `IKCFG_ED` markers).
pub fn embedded_config(path: &Path) -> Result<Option<String>> {
    const START: &[u8] = b"IKCFG_ST";
    let bytes = std::fs::read(path).map_err(|e| Error::io("read", path, e))?;
    let Some(at) = find(&bytes, START) else {
        return Ok(None);
    };
    let mut text = String::new();
    let mut gz = flate2::read::GzDecoder::new(&bytes[at + START.len()..]);
    // A marker without a valid stream (another string) says nothing.
    Ok(gz.read_to_string(&mut text).ok().map(|_| text))
}

/// Whether overlayfs is built in (`CONFIG_OVERLAY_FS=y`): VMs boot on an
/// overlay root by default, and the guest loads no modules. `None` when
/// the kernel does not carry its configuration.
pub fn overlayfs_built_in(path: &Path) -> Result<Option<bool>> {
    Ok(embedded_config(path)?.map(|c| c.lines().any(|l| l.trim() == "CONFIG_OVERLAY_FS=y")))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF header: 64 bytes with class, endianness, type, machine.
    pub(crate) fn elf_header(
        class: u8,
        little_endian: bool,
        elf_type: u16,
        machine: u16,
    ) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = if little_endian { 1 } else { 2 };
        h[6] = 1;
        let (t, m) = if little_endian {
            (elf_type.to_le_bytes(), machine.to_le_bytes())
        } else {
            (elf_type.to_be_bytes(), machine.to_be_bytes())
        };
        h[16..18].copy_from_slice(&t);
        h[18..20].copy_from_slice(&m);
        h
    }

    /// A tiny fake vmlinux: an x86_64 ELF header followed by a banner.
    pub(crate) fn fake_vmlinux(release: &str) -> Vec<u8> {
        let mut v = elf_header(2, true, ET_EXEC, EM_X86_64);
        v.extend_from_slice(b"\0Linux version %s\0padding");
        v.extend_from_slice(
            format!("\0Linux version {release} (builder@host) #1 SMP\n\0").as_bytes(),
        );
        v
    }

    #[test]
    fn recognises_an_x86_64_vmlinux() {
        assert_eq!(classify(&elf_header(2, true, 2, 62)), FileKind::Vmlinux);
    }

    #[test]
    fn names_other_elf_files() {
        let arm = classify(&elf_header(2, true, 2, 183));
        assert_eq!(arm.to_string(), "a 64-bit ELF executable for aarch64");
        let module = classify(&elf_header(2, true, 1, 62));
        assert!(module.to_string().contains("relocatable object"));
        assert!(module.hint().unwrap().contains("module"));
        let i386 = classify(&elf_header(1, true, 2, 3));
        assert_eq!(i386.to_string(), "a 32-bit ELF executable for i386");
        let big_endian = classify(&elf_header(2, false, 2, 62));
        assert_ne!(big_endian, FileKind::Vmlinux);
    }

    #[test]
    fn recognises_a_bzimage_and_reads_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bzImage");
        let mut img = vec![0u8; 0x400];
        img[..2].copy_from_slice(b"MZ");
        img[0x202..0x206].copy_from_slice(b"HdrS");
        // kernel_version points at 0x300 - 0x200 = 0x100.
        img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        img[0x300..0x300 + 20].copy_from_slice(b"6.1.99 (me@host) #1\0");
        std::fs::write(&path, &img).unwrap();
        let kind = identify(&path).unwrap();
        assert_eq!(
            kind,
            FileKind::BzImage {
                version: Some("6.1.99 (me@host) #1".into())
            }
        );
        let err = require_vmlinux(&path).unwrap_err().to_string();
        assert!(
            err.contains("is not an x86_64 ELF vmlinux: it is a bzImage"),
            "{err}"
        );
        assert!(err.contains("pass the `vmlinux`"), "{err}");
    }

    #[test]
    fn recognises_compressed_pe_empty_and_unknown() {
        assert_eq!(
            classify(b"\x1f\x8b\x08\x00rest"),
            FileKind::Compressed("gzip")
        );
        assert_eq!(classify(b"\xfd7zXZ\x00rest"), FileKind::Compressed("xz"));
        assert_eq!(classify(b"MZ\x90\x00"), FileKind::Pe);
        assert_eq!(classify(b""), FileKind::Empty);
        assert_eq!(classify(b"#!/bin/sh\n"), FileKind::Unknown);
    }

    #[test]
    fn require_vmlinux_accepts_a_vmlinux_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, fake_vmlinux("6.1.5")).unwrap();
        require_vmlinux(&path).unwrap();
        let err = require_vmlinux(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("could not open") && err.contains("absent"),
            "{err}"
        );
    }

    #[test]
    fn finds_the_release_in_the_banner_even_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        std::fs::write(&path, fake_vmlinux("6.1.192")).unwrap();
        assert_eq!(vmlinux_release(&path).unwrap().as_deref(), Some("6.1.192"));

        // Put the banner across the 1 MiB chunk boundary.
        let mut big = elf_header(2, true, 2, 62);
        big.resize((1 << 20) - 8, 0);
        big.extend_from_slice(b"Linux version 5.10.7-x (a@b) #1\n");
        std::fs::write(&path, &big).unwrap();
        assert_eq!(vmlinux_release(&path).unwrap().as_deref(), Some("5.10.7-x"));

        std::fs::write(&path, elf_header(2, true, 2, 62)).unwrap();
        assert_eq!(vmlinux_release(&path).unwrap(), None);
    }

    #[test]
    fn reads_the_embedded_config_for_overlayfs() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmlinux");
        let with = |config: &str| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(config.as_bytes()).unwrap();
            let mut file = fake_vmlinux("6.1.192");
            file.extend_from_slice(b"IKCFG_ST");
            file.extend_from_slice(&gz.finish().unwrap());
            file.extend_from_slice(b"IKCFG_ED");
            file
        };
        std::fs::write(&path, with("CONFIG_EXT4_FS=y\nCONFIG_OVERLAY_FS=y\n")).unwrap();
        assert_eq!(overlayfs_built_in(&path).unwrap(), Some(true));
        std::fs::write(&path, with("CONFIG_EXT4_FS=y\nCONFIG_OVERLAY_FS=m\n")).unwrap();
        assert_eq!(overlayfs_built_in(&path).unwrap(), Some(false));
        std::fs::write(&path, fake_vmlinux("6.1.192")).unwrap();
        assert_eq!(overlayfs_built_in(&path).unwrap(), None);
    }
}
