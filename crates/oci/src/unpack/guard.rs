//! A bound on what a tar stream's extension entries may cost before the
//! `tar` crate reads them.
//!
//! The crate reads a GNU long name or link (`L`, `K`) and PAX records (`x`,
//! `g`) whole into memory, whatever size their header declares: a 100 KB
//! compressed layer can declare a 2 GiB name. [`ExtensionGuard`] sits under
//! the crate, follows the archive's framing exactly as the crate reads it
//! (headers, old-GNU sparse extension blocks, data rounded to 512 bytes, a
//! PAX `size` overriding the next entry's), and fails the read at the header
//! of an extension entry larger than [`MAX_EXTENSION`], before a byte of it
//! is buffered. Go's archive/tar (Docker, containerd) has the same bound.

use std::io::{self, Read};

/// The most an extension entry's data may hold (Go's `maxSpecialFileSize`).
pub const MAX_EXTENSION: u64 = 1 << 20;

const BLOCK: u64 = 512;

/// Where the stream is in the archive's framing.
#[derive(Debug)]
enum At {
    /// Inside a 512-byte header; `filled` bytes of it read.
    Header { filled: usize },
    /// Inside an old-GNU sparse extension block, with `data` bytes of data
    /// (padded) after the last one.
    SparseBlock { filled: usize, data: u64 },
    /// Inside an entry's data and padding; `left` bytes to go.
    Data { left: u64 },
    /// Collecting a (bounded) PAX record set to find its `size`.
    Pax { left: u64, padding: u64 },
}

/// Wraps the uncompressed tar stream the `tar` crate reads.
pub struct ExtensionGuard<R> {
    inner: R,
    at: At,
    /// The header or sparse block being read.
    block: [u8; BLOCK as usize],
    /// The record set of the last local PAX header, while collected.
    pax: Vec<u8>,
    /// A PAX `size` the next non-extension entry takes as its data size.
    pax_size: Option<u64>,
}

impl<R: Read> ExtensionGuard<R> {
    pub fn new(inner: R) -> Self {
        ExtensionGuard {
            inner,
            at: At::Header { filled: 0 },
            block: [0; BLOCK as usize],
            pax: Vec::new(),
            pax_size: None,
        }
    }

    /// Follows `bytes` (just read, in order) through the framing.
    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.at {
                At::Header { filled } | At::SparseBlock { filled, .. } => {
                    let n = bytes.len().min(BLOCK as usize - *filled);
                    self.block[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    bytes = &bytes[n..];
                    if *filled < BLOCK as usize {
                        continue;
                    }
                    self.at = match self.at {
                        At::SparseBlock { data, .. } => self.after_sparse_block(data),
                        _ => self.after_header()?,
                    };
                }
                At::Data { left } => {
                    let n = (bytes.len() as u64).min(*left);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.at = At::Header { filled: 0 };
                    }
                }
                At::Pax { left, padding } => {
                    let n = (bytes.len() as u64).min(*left);
                    self.pax.extend_from_slice(&bytes[..n as usize]);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        let padding = *padding;
                        self.pax_size = pax_size(&self.pax);
                        self.pax.clear();
                        self.at = Self::data(padding);
                    }
                }
            }
        }
        Ok(())
    }

    /// Reads the header just completed: what follows it.
    fn after_header(&mut self) -> io::Result<At> {
        let h = &self.block;
        if h.iter().all(|b| *b == 0) {
            // The end of the archive: the crate reads no further.
            return Ok(At::Header { filled: 0 });
        }
        let kind = h[156];
        let declared = octal_or_binary(&h[124..136])?;
        // As the crate does: an extension type never takes a PAX size, and
        // only a ustar or GNU header is read as an extension.
        let extension_type = matches!(kind, b'L' | b'K' | b'x' | b'g');
        let recognized = &h[257..265] == b"ustar\x0000" || &h[257..265] == b"ustar  \0";
        let buffered = recognized && matches!(kind, b'L' | b'K' | b'x');
        if buffered && declared > MAX_EXTENSION {
            let what = match kind {
                b'L' => "long-name",
                b'K' => "long-link",
                _ => "PAX header",
            };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a tar {what} entry declares {declared} bytes, more than the {MAX_EXTENSION} \
                     accepted (the archive is malicious or broken)"
                ),
            ));
        }
        let size = if extension_type {
            if !buffered {
                // Returned to the reader as an entry: the crate forgets
                // the pending PAX records.
                self.pax_size = None;
            }
            declared
        } else {
            self.pax_size.take().unwrap_or(declared)
        };
        let padded = padded(size)?;
        if buffered && kind == b'x' {
            return Ok(if size == 0 {
                Self::data(padded)
            } else {
                At::Pax {
                    left: size,
                    padding: padded - size,
                }
            });
        }
        // Old-GNU sparse: "isextended" (offset 482) says extension blocks
        // follow the header; the crate reads them before the data.
        if kind == b'S' && h[482] != 0 {
            return Ok(At::SparseBlock {
                filled: 0,
                data: padded,
            });
        }
        Ok(Self::data(padded))
    }

    /// A sparse extension block is complete: its "isextended" (offset 504)
    /// says whether another follows.
    fn after_sparse_block(&self, data: u64) -> At {
        if self.block[504] != 0 {
            At::SparseBlock { filled: 0, data }
        } else {
            Self::data(data)
        }
    }

    fn data(padded: u64) -> At {
        if padded == 0 {
            At::Header { filled: 0 }
        } else {
            At::Data { left: padded }
        }
    }
}

fn overflow() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "a tar size overflows")
}

/// `size` rounded up to whole blocks.
fn padded(size: u64) -> io::Result<u64> {
    size.checked_add(BLOCK - 1)
        .map(|s| s & !(BLOCK - 1))
        .ok_or_else(overflow)
}

impl<R: Read> Read for ExtensionGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

/// A tar size field, read as the crate reads it: base-256 (its last 8
/// bytes) when the high bit is set, else octal text up to a NUL.
fn octal_or_binary(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        let last8 = &field[field.len() - 8..];
        return Ok(last8.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b)));
    }
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    let text = std::str::from_utf8(&field[..end]).map_err(|_| overflow())?;
    // The crate refuses a field that is not a number: so does the stream.
    u64::from_str_radix(text.trim(), 8).map_err(|_| overflow())
}

/// The `size` record of a PAX record set, parsed as the crate parses it
/// (the first `size`; nothing after a malformed record).
fn pax_size(records: &[u8]) -> Option<u64> {
    for ext in tar::PaxExtensions::new(records) {
        let ext = ext.ok()?;
        if ext.key() == Ok("size") {
            return ext.value().ok()?.parse().ok();
        }
    }
    None
}
