//! A read-only ext4 reader for stored images: walks the tree and yields
//! each entry's type, owner, mode, mtime, hard-link identity, device
//! number, extended attributes and content, reading the on-disk structures
//! itself (no `debugfs` text to parse, no mount).
//!
//! Untrusted input: every offset, length and block number is checked before
//! it is used, recursion is bounded, and anything outside the subset
//! `mkfs.ext4 -d` writes (extent-mapped files, linear or htree directories,
//! 32/64-bit group descriptors, in-inode and block xattrs) is refused by
//! name instead of guessed at. Layout reference: the kernel's
//! Documentation/filesystems/ext4.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const ROOT_INODE: u32 = 2;

// Incompatible features this reader understands; any other one is refused.
const INCOMPAT_FILETYPE: u32 = 0x2;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_FLEX_BG: u32 = 0x200;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_CASEFOLD: u32 = 0x20000;
const INCOMPAT_KNOWN: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_LARGEDIR
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_CASEFOLD;

const FLAG_EXTENTS: u32 = 0x80000;
const FLAG_INLINE_DATA: u32 = 0x1000_0000;
const EXTENT_MAGIC: u16 = 0xF30A;
/// The kernel's own bound on extent tree depth.
const MAX_EXTENT_DEPTH: u16 = 5;
const XATTR_MAGIC: u32 = 0xEA02_0000;
/// Directory nesting deeper than this is refused (no real image has it).
const MAX_DIR_DEPTH: usize = 256;
/// Bigger directories are refused (about a million entries).
const MAX_DIR_BYTES: u64 = 64 << 20;
/// Extent tree blocks read for one inode, at most.
const MAX_EXTENT_NODES: usize = 65_536;

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Ext4ReadError {
    #[error("reading the image: {0}")]
    Io(#[from] std::io::Error),
    #[error("not an ext4 file system: {0}")]
    NotExt4(String),
    #[error("uses {0}, which firebuild cannot read back")]
    Unsupported(String),
    #[error("is damaged: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, Ext4ReadError>;

fn corrupt(what: impl Into<String>) -> Ext4ReadError {
    Ext4ReadError::Corrupt(what.into())
}

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// What kind of entry an inode is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Directory,
    File,
    Symlink(OsString),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
    Socket,
}

/// One entry of the tree, as [`Ext4Image::walk`] yields it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Relative to the root, components joined with `/`; empty for the root.
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
    /// Other directory entries link to this inode.
    pub multiply_linked: bool,
    /// `user.*`, `trusted.*` and `security.*` attributes; `system.*` (ACLs)
    /// are left out.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Kept so that [`Ext4Image::contents`] need not read it again.
    inode: Inode,
}

impl Entry {
    /// The inode number: entries with the same one are hard links.
    pub fn inode_number(&self) -> u32 {
        self.inode.number
    }

    /// Bytes of content (files).
    pub fn size(&self) -> u64 {
        self.inode.size()
    }
}

#[derive(Debug, Clone)]
struct Inode {
    number: u32,
    raw: Vec<u8>,
}

impl Inode {
    fn mode(&self) -> u16 {
        le16(&self.raw, 0)
    }
    fn flags(&self) -> u32 {
        le32(&self.raw, 0x20)
    }
    fn size(&self) -> u64 {
        u64::from(le32(&self.raw, 0x4)) | u64::from(le32(&self.raw, 0x6C)) << 32
    }
    fn uid(&self) -> u32 {
        u32::from(le16(&self.raw, 0x2)) | u32::from(le16(&self.raw, 0x78)) << 16
    }
    fn gid(&self) -> u32 {
        u32::from(le16(&self.raw, 0x18)) | u32::from(le16(&self.raw, 0x7A)) << 16
    }
    fn links(&self) -> u16 {
        le16(&self.raw, 0x1A)
    }
    fn block_area(&self) -> &[u8] {
        &self.raw[0x28..0x28 + 60]
    }
    fn xattr_block(&self) -> u64 {
        u64::from(le32(&self.raw, 0x68)) | u64::from(le16(&self.raw, 0x76)) << 32
    }
    /// Bytes past the 128-byte base inode that the inode uses.
    fn extra_isize(&self) -> usize {
        if self.raw.len() > 0x82 {
            usize::from(le16(&self.raw, 0x80))
        } else {
            0
        }
    }
    fn mtime(&self) -> (i64, i64) {
        let secs = i64::from(le32(&self.raw, 0x10) as i32);
        if self.extra_isize() >= 0x0C && self.raw.len() >= 0x8C {
            // The extra field: 2 epoch bits above the 32-bit seconds, then
            // nanoseconds << 2.
            let extra = le32(&self.raw, 0x88);
            let epoch = i64::from(extra & 0x3) << 32;
            (secs + epoch, i64::from(extra >> 2))
        } else {
            (secs, 0)
        }
    }
}

/// An opened ext4 image.
pub struct Ext4Image {
    file: File,
    block_size: u64,
    blocks: u64,
    inodes: u32,
    inodes_per_group: u32,
    inode_size: usize,
    /// Each block group's inode table, by group.
    inode_tables: Vec<u64>,
}

impl Ext4Image {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path)?;
        let mut sb = vec![0u8; 1024];
        file.read_exact_at(&mut sb, SUPERBLOCK_OFFSET)
            .map_err(|e| Ext4ReadError::NotExt4(format!("no superblock ({e})")))?;
        if le16(&sb, 0x38) != EXT4_MAGIC {
            return Err(Ext4ReadError::NotExt4("bad superblock magic".into()));
        }
        let incompat = le32(&sb, 0x60);
        if incompat & !INCOMPAT_KNOWN != 0 {
            return Err(Ext4ReadError::Unsupported(format!(
                "incompatible features {:#x} (inline data, encryption, meta_bg ...)",
                incompat & !INCOMPAT_KNOWN
            )));
        }
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(Ext4ReadError::Unsupported(
                "a journal that needs recovery (run e2fsck on it)".into(),
            ));
        }
        let log_block = le32(&sb, 0x18);
        if log_block > 6 {
            return Err(corrupt(format!("block size 2^{}", 10 + log_block)));
        }
        let block_size = 1024u64 << log_block;
        let blocks = u64::from(le32(&sb, 0x4))
            | if incompat & INCOMPAT_64BIT != 0 {
                u64::from(le32(&sb, 0x150)) << 32
            } else {
                0
            };
        let inodes = le32(&sb, 0x0);
        let blocks_per_group = u64::from(le32(&sb, 0x20));
        let inodes_per_group = le32(&sb, 0x28);
        let first_data_block = u64::from(le32(&sb, 0x14));
        let inode_size = if le32(&sb, 0x4C) == 0 {
            128
        } else {
            usize::from(le16(&sb, 0x58))
        };
        if blocks_per_group == 0
            || inodes_per_group == 0
            || inode_size < 128
            || inode_size as u64 > block_size
            || !inode_size.is_power_of_two()
        {
            return Err(corrupt("impossible superblock geometry"));
        }
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            usize::from(le16(&sb, 0xFE))
        } else {
            32
        };
        if desc_size < 32 || desc_size as u64 > block_size {
            return Err(corrupt(format!("group descriptor size {desc_size}")));
        }
        let groups = (blocks - first_data_block.min(blocks)).div_ceil(blocks_per_group);
        if groups == 0 || u64::from(inodes).div_ceil(u64::from(inodes_per_group)) > groups {
            return Err(corrupt("inode count does not fit the block groups"));
        }
        let table_len = usize::try_from(groups)
            .ok()
            .and_then(|g| g.checked_mul(desc_size))
            .filter(|&n| n as u64 <= blocks.saturating_mul(block_size))
            .ok_or_else(|| corrupt("group descriptor table size"))?;
        let mut table = vec![0u8; table_len];
        file.read_exact_at(&mut table, (first_data_block + 1) * block_size)?;
        let inode_tables = table
            .chunks_exact(desc_size)
            .map(|d| {
                let hi = if desc_size >= 64 { le32(d, 0x28) } else { 0 };
                u64::from(le32(d, 0x8)) | u64::from(hi) << 32
            })
            .collect();
        Ok(Ext4Image {
            file,
            block_size,
            blocks,
            inodes,
            inodes_per_group,
            inode_size,
            inode_tables,
        })
    }

    fn read_block(&self, block: u64) -> Result<Vec<u8>> {
        if block == 0 || block >= self.blocks {
            return Err(corrupt(format!("block {block} is outside the image")));
        }
        let mut buf = vec![0u8; self.block_size as usize];
        self.file.read_exact_at(&mut buf, block * self.block_size)?;
        Ok(buf)
    }

    fn inode(&self, number: u32) -> Result<Inode> {
        if number == 0 || number > self.inodes {
            return Err(corrupt(format!("inode {number} does not exist")));
        }
        let index = number - 1;
        let group = (index / self.inodes_per_group) as usize;
        let table = *self
            .inode_tables
            .get(group)
            .ok_or_else(|| corrupt(format!("inode {number}: no block group")))?;
        let offset = u64::from(index % self.inodes_per_group) * self.inode_size as u64;
        let at = table
            .checked_mul(self.block_size)
            .and_then(|b| b.checked_add(offset))
            .filter(|&at| table > 0 && at < self.blocks * self.block_size)
            .ok_or_else(|| corrupt(format!("inode {number}: table outside the image")))?;
        let mut raw = vec![0u8; self.inode_size];
        self.file.read_exact_at(&mut raw, at)?;
        Ok(Inode { number, raw })
    }

    /// The inode's extents as (logical block, physical block, length,
    /// initialized).
    fn extents(&self, inode: &Inode) -> Result<Vec<(u64, u64, u64, bool)>> {
        if inode.flags() & FLAG_INLINE_DATA != 0 {
            return Err(Ext4ReadError::Unsupported(format!(
                "inline data (inode {})",
                inode.number
            )));
        }
        if inode.flags() & FLAG_EXTENTS == 0 {
            return Err(Ext4ReadError::Unsupported(format!(
                "block-mapped files of ext2/ext3 (inode {})",
                inode.number
            )));
        }
        let mut out = Vec::new();
        let mut budget = MAX_EXTENT_NODES;
        self.extent_node(inode.block_area(), MAX_EXTENT_DEPTH, &mut budget, &mut out)?;
        Ok(out)
    }

    fn extent_node(
        &self,
        node: &[u8],
        max_depth: u16,
        budget: &mut usize,
        out: &mut Vec<(u64, u64, u64, bool)>,
    ) -> Result<()> {
        if node.len() < 12 || le16(node, 0) != EXTENT_MAGIC {
            return Err(corrupt("bad extent header"));
        }
        let entries = usize::from(le16(node, 2));
        let depth = le16(node, 6);
        if depth > max_depth || 12 + entries * 12 > node.len() {
            return Err(corrupt("bad extent tree"));
        }
        for i in 0..entries {
            let e = &node[12 + i * 12..24 + i * 12];
            if depth == 0 {
                let logical = u64::from(le32(e, 0));
                let raw_len = le16(e, 4);
                let (len, init) = if raw_len > 32768 {
                    (raw_len - 32768, false)
                } else {
                    (raw_len, true)
                };
                let start = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                let len = u64::from(len);
                if start.checked_add(len).is_none_or(|end| end > self.blocks) {
                    return Err(corrupt("extent outside the image"));
                }
                out.push((logical, start, len, init));
            } else {
                let leaf = u64::from(le16(e, 8)) << 32 | u64::from(le32(e, 4));
                *budget = budget
                    .checked_sub(1)
                    .ok_or_else(|| corrupt("an extent tree too large"))?;
                let child = self.read_block(leaf)?;
                self.extent_node(&child, depth - 1, budget, out)?;
            }
        }
        Ok(())
    }

    /// The content of a file entry, [`Entry::size`] bytes; holes and
    /// unwritten extents read as zeros.
    pub fn contents(&self, entry: &Entry) -> Result<FileContents<'_>> {
        self.contents_of(&entry.inode)
    }

    /// The content of a file, slow symlink or directory.
    fn contents_of(&self, inode: &Inode) -> Result<FileContents<'_>> {
        // A sparse file larger than its whole image would be written out as
        // that many zeros: refused (mkfs.ext4 -d never makes one).
        if inode.size() > self.blocks.saturating_mul(self.block_size) {
            return Err(Ext4ReadError::Unsupported(format!(
                "a file larger than its image (inode {})",
                inode.number
            )));
        }
        let mut extents = self.extents(inode)?;
        extents.sort_by_key(|e| e.0);
        Ok(FileContents {
            image: self,
            extents,
            size: inode.size(),
            pos: 0,
        })
    }

    fn read_all(&self, inode: &Inode, limit: u64) -> Result<Vec<u8>> {
        if inode.size() > limit {
            return Err(corrupt(format!("inode {} is too large", inode.number)));
        }
        let mut out = Vec::new();
        self.contents_of(inode)?.read_to_end(&mut out)?;
        Ok(out)
    }

    fn kind(&self, inode: &Inode) -> Result<Kind> {
        let area = inode.block_area();
        let device = || {
            let old = le32(area, 0);
            if old != 0 {
                ((old >> 8) & 0xff, old & 0xff)
            } else {
                let new = le32(area, 4);
                ((new & 0xfff00) >> 8, (new & 0xff) | ((new >> 12) & 0xfff00))
            }
        };
        Ok(match inode.mode() & 0xF000 {
            0x4000 => Kind::Directory,
            0x8000 => Kind::File,
            0xA000 => {
                let size = inode.size();
                let target = if inode.flags() & (FLAG_EXTENTS | FLAG_INLINE_DATA) == 0 && size < 60
                {
                    area[..size as usize].to_vec()
                } else {
                    self.read_all(inode, 4096)?
                };
                if target.is_empty() || target.contains(&0) {
                    return Err(corrupt(format!("symlink inode {}", inode.number)));
                }
                Kind::Symlink(OsString::from_vec(target))
            }
            0x2000 => {
                let (major, minor) = device();
                Kind::CharDevice { major, minor }
            }
            0x6000 => {
                let (major, minor) = device();
                Kind::BlockDevice { major, minor }
            }
            0x1000 => Kind::Fifo,
            0xC000 => Kind::Socket,
            other => {
                return Err(corrupt(format!(
                    "inode {} has type {other:#x}",
                    inode.number
                )))
            }
        })
    }

    /// The directory's entries (name, inode), without `.` and `..`.
    /// Directory blocks are read linearly: htree index blocks look like
    /// empty entries, and checksum tails have inode 0.
    fn dir_entries(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, u32)>> {
        let data = self.read_all(inode, MAX_DIR_BYTES)?;
        let bs = self.block_size as usize;
        let mut out = Vec::new();
        for block in data.chunks(bs) {
            let mut at = 0usize;
            while at + 8 <= block.len() {
                let child = le32(block, at);
                let rec_len = usize::from(le16(block, at + 4));
                let name_len = usize::from(block[at + 6]);
                if rec_len < 8 || at + rec_len > block.len() || 8 + name_len > rec_len {
                    return Err(corrupt(format!("directory inode {}", inode.number)));
                }
                let name = &block[at + 8..at + 8 + name_len];
                if child != 0 && name != b"." && name != b".." {
                    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                        return Err(corrupt(format!(
                            "directory inode {} has an invalid name",
                            inode.number
                        )));
                    }
                    out.push((name.to_vec(), child));
                }
                at += rec_len;
            }
        }
        Ok(out)
    }

    fn xattrs(&self, inode: &Inode) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        let start = 128 + inode.extra_isize();
        if start + 4 <= inode.raw.len() && le32(&inode.raw, start) == XATTR_MAGIC {
            // In-inode values are relative to the first entry.
            let region = &inode.raw[start + 4..];
            parse_xattrs(region, 0, region, &mut out)
                .map_err(|e| corrupt(format!("inode {} xattrs: {e}", inode.number)))?;
        }
        let block = inode.xattr_block();
        if block != 0 {
            let data = self.read_block(block)?;
            if le32(&data, 0) != XATTR_MAGIC {
                return Err(corrupt(format!("inode {} xattr block", inode.number)));
            }
            parse_xattrs(&data, 32, &data, &mut out)
                .map_err(|e| corrupt(format!("inode {} xattr block: {e}", inode.number)))?;
        }
        Ok(out)
    }

    fn entry(&self, path: Vec<u8>, inode: Inode) -> Result<Entry> {
        let kind = self.kind(&inode)?;
        Ok(Entry {
            path,
            multiply_linked: inode.links() > 1 && kind != Kind::Directory,
            kind,
            mode: u32::from(inode.mode() & 0o7777),
            uid: inode.uid(),
            gid: inode.gid(),
            mtime: inode.mtime(),
            xattrs: self.xattrs(&inode)?,
            inode,
        })
    }

    /// Calls `visit` for every entry, parents before children, the root
    /// first; `lost+found` at the root is skipped.
    pub fn walk(
        &self,
        visit: &mut dyn FnMut(&Entry) -> std::result::Result<(), String>,
    ) -> std::result::Result<(), WalkError> {
        let root = self.entry(Vec::new(), self.inode(ROOT_INODE)?)?;
        if root.kind != Kind::Directory {
            return Err(corrupt("the root is not a directory").into());
        }
        visit(&root).map_err(WalkError::Visit)?;
        let mut visited_dirs = HashSet::from([ROOT_INODE]);
        let mut stack = vec![(root.path, root.inode, 0usize)];
        while let Some((path, dir, depth)) = stack.pop() {
            if depth >= MAX_DIR_DEPTH {
                return Err(corrupt("directories nested too deep").into());
            }
            for (name, number) in self.dir_entries(&dir)? {
                if path.is_empty() && name == b"lost+found" {
                    continue;
                }
                let mut child_path = path.clone();
                if !child_path.is_empty() {
                    child_path.push(b'/');
                }
                child_path.extend_from_slice(&name);
                let entry = self.entry(child_path, self.inode(number)?)?;
                visit(&entry).map_err(WalkError::Visit)?;
                if entry.kind == Kind::Directory {
                    // A directory reachable twice would loop.
                    if !visited_dirs.insert(number) {
                        return Err(corrupt("a directory has two parents").into());
                    }
                    stack.push((entry.path, entry.inode, depth + 1));
                }
            }
        }
        Ok(())
    }
}

/// A failed walk: the image, or the visitor.
#[derive(Debug, thiserror::Error)]
pub enum WalkError {
    #[error(transparent)]
    Image(#[from] Ext4ReadError),
    #[error("{0}")]
    Visit(String),
}

/// Parses xattr entries starting at `entries[at..]`; values are at offsets
/// into `values`.
fn parse_xattrs(
    entries: &[u8],
    mut at: usize,
    values: &[u8],
    out: &mut Vec<(Vec<u8>, Vec<u8>)>,
) -> std::result::Result<(), String> {
    while at + 4 <= entries.len() && le32(entries, at) != 0 {
        if at + 16 > entries.len() {
            return Err("truncated entry".into());
        }
        let name_len = usize::from(entries[at]);
        let index = entries[at + 1];
        let value_offs = usize::from(le16(entries, at + 2));
        let value_inum = le32(entries, at + 4);
        let value_size = le32(entries, at + 8) as usize;
        let name = entries
            .get(at + 16..at + 16 + name_len)
            .ok_or("truncated name")?;
        if value_inum != 0 {
            return Err("values in separate inodes (ea_inode) are not supported".into());
        }
        let value = values
            .get(value_offs..value_offs + value_size)
            .ok_or("value outside its block")?;
        let prefix: Option<&[u8]> = match index {
            1 => Some(b"user."),
            4 => Some(b"trusted."),
            6 => Some(b"security."),
            // system.* (POSIX ACLs in ext4's own encoding, richacl, data).
            _ => None,
        };
        if let Some(prefix) = prefix {
            out.push(([prefix, name].concat(), value.to_vec()));
        }
        at += (16 + name_len).div_ceil(4) * 4;
    }
    Ok(())
}

/// A file's bytes, read through its extents.
pub struct FileContents<'a> {
    image: &'a Ext4Image,
    /// Sorted by logical block.
    extents: Vec<(u64, u64, u64, bool)>,
    size: u64,
    pos: u64,
}

impl Read for FileContents<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let bs = self.image.block_size;
        let logical = self.pos / bs;
        let in_block = self.pos % bs;
        let left = (self.size - self.pos) as usize;
        let extent = self
            .extents
            .iter()
            .find(|(start, _, len, _)| logical >= *start && logical < start + len);
        let n = match extent {
            Some(&(start, physical, len, true)) => {
                let run = (start + len - logical) * bs - in_block;
                let n = buf.len().min(left).min(run as usize);
                let at = (physical + logical - start) * bs + in_block;
                self.image.file.read_exact_at(&mut buf[..n], at)?;
                n
            }
            // A hole (up to the next extent) or unwritten space: zeros.
            other => {
                let next = match other {
                    Some(&(start, _, len, false)) => start + len,
                    _ => self
                        .extents
                        .iter()
                        .map(|e| e.0)
                        .filter(|&s| s > logical)
                        .min()
                        .unwrap_or(u64::MAX / bs),
                };
                let run = (next - logical).saturating_mul(bs) - in_block;
                let n = buf.len().min(left).min(run as usize);
                buf[..n].fill(0);
                n
            }
        };
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use std::path::PathBuf;

    /// What a tree holds, entry by entry: kind, mode, owner, mtime, size,
    /// content digest or link target or device, xattrs, hard-link group.
    fn describe(root: &Path) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let mut groups: BTreeMap<u64, String> = BTreeMap::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let path = root.join(&rel);
            let md = std::fs::symlink_metadata(&path).unwrap();
            let ft = md.file_type();
            let what = if ft.is_dir() {
                for e in std::fs::read_dir(&path).unwrap() {
                    stack.push(rel.join(e.unwrap().file_name()));
                }
                "dir".to_owned()
            } else if ft.is_symlink() {
                format!("link {:?}", std::fs::read_link(&path).unwrap())
            } else if let Some(d) =
                firebuild_agent_proto::tree::Device::of_placeholder(&path, &md).unwrap()
            {
                // Read back, a device is its placeholder.
                format!("dev {} {:x}", !d.block, libc::makedev(d.major, d.minor))
            } else if ft.is_file() {
                let data = std::fs::read(&path).unwrap();
                let group = groups
                    .entry(md.ino())
                    .or_insert_with(|| rel.display().to_string());
                {
                    use sha2::Digest;
                    let digest = hex::encode(sha2::Sha256::digest(&data));
                    format!("file {} {digest} group {group}", data.len())
                }
            } else if ft.is_char_device() || ft.is_block_device() {
                format!("dev {} {:x}", ft.is_char_device(), md.rdev())
            } else {
                "fifo".to_owned()
            };
            let mut xattrs = Vec::new();
            if !ft.is_symlink() {
                for name in ["user.note", "security.capability"] {
                    let mut value = vec![0u8; 4096];
                    if let Ok(n) = rustix::fs::lgetxattr(&path, name, &mut value) {
                        xattrs.push(format!("{name}={:?}", &value[..n]));
                    }
                }
            }
            // mkfs.ext4 -d stamps the root with its own time, and keeps
            // whole seconds only.
            let timed = !ft.is_symlink() && !rel.as_os_str().is_empty();
            out.insert(
                rel.display().to_string(),
                format!(
                    "{what} mode {:o} owner {}:{} mtime {} {xattrs:?}",
                    md.mode() & 0o7777,
                    md.uid(),
                    md.gid(),
                    if timed { md.mtime() } else { 0 },
                ),
            );
        }
        out
    }

    fn set_mtime(path: &Path, secs: i64, nanos: i64) {
        let t = rustix::fs::Timespec {
            tv_sec: secs,
            tv_nsec: nanos as _,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            path,
            &rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            },
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }

    fn sample_tree(src: &Path) {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::create_dir_all(src.join("a/b/c")).unwrap();
        // Enough entries for an htree-indexed directory.
        std::fs::create_dir(src.join("many")).unwrap();
        for i in 0..400 {
            std::fs::write(src.join(format!("many/file-{i:03}")), i.to_string()).unwrap();
        }
        std::fs::write(src.join("a/b/c/deep"), "deep").unwrap();
        std::fs::write(src.join("empty"), "").unwrap();
        // Not a layer: whiteout-looking names are plain files.
        std::fs::write(src.join("a/.wh.deep"), "plain").unwrap();
        // Names need not be UTF-8.
        std::fs::write(src.join(std::ffi::OsStr::from_bytes(b"latin1-\xe9")), "e").unwrap();
        let random: Vec<u8> = (0..300_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        std::fs::write(src.join("random"), &random).unwrap();
        // Data every other block: more extents than the inode holds.
        let frag = std::fs::File::create(src.join("fragmented")).unwrap();
        for i in 0..12u64 {
            frag.write_all_at(&[i as u8 + 1; 4096], i * 8192).unwrap();
        }
        // A hole of 64 MiB, then data.
        let sparse = std::fs::File::create(src.join("sparse")).unwrap();
        sparse.write_all_at(b"end", 64 << 20).unwrap();
        std::fs::write(src.join("suid"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(src.join("suid"), Some(70_000), Some(80_000)).unwrap();
        mode(&src.join("suid"), 0o4755);
        std::fs::hard_link(src.join("suid"), src.join("a/suid-link")).unwrap();
        mode(&src.join("a"), 0o2775);
        mode(&src.join("a/b"), 0o1777);
        std::fs::write(src.join("locked"), "x").unwrap();
        mode(&src.join("locked"), 0o000);
        std::os::unix::fs::symlink("a/b/c/deep", src.join("fast-link")).unwrap();
        std::os::unix::fs::symlink("x".repeat(120), src.join("slow-link")).unwrap();
        for (name, kind, dev) in [
            ("null", libc::S_IFCHR, libc::makedev(1, 3)),
            ("disk", libc::S_IFBLK, libc::makedev(259, 70_000)),
            ("pipe", libc::S_IFIFO, 0),
        ] {
            rustix::fs::mknodat(
                rustix::fs::CWD,
                src.join(name),
                rustix::fs::FileType::from_raw_mode(kind),
                rustix::fs::Mode::from_raw_mode(0o640),
                dev,
            )
            .unwrap();
        }
        let c =
            |p: &str| std::ffi::CString::new(src.join(p).as_os_str().as_encoded_bytes()).unwrap();
        let n = |s: &str| std::ffi::CString::new(s).unwrap();
        crate::fsutil::set_xattr(&c("random"), &n("user.note"), b"kept").unwrap();
        // A file capability (cap_net_raw+ep, revision 2).
        let cap = [
            0x01u8, 0, 0, 0x02, 0x00, 0x20, 0, 0, 0x00, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        crate::fsutil::set_xattr(&c("suid"), &n("security.capability"), &cap).unwrap();
        crate::fsutil::set_xattr(&c("a"), &n("user.note"), &[7u8; 200]).unwrap();
        for (i, p) in ["random", "fragmented", "a/b/c/deep", "a/b", "many", "null"]
            .iter()
            .enumerate()
        {
            set_mtime(
                &src.join(p),
                1_700_000_000 + i as i64,
                123_456_789 * i as i64 % 1_000_000_000,
            );
        }
    }

    #[test]
    fn an_image_reads_back_as_the_tree_it_was_made_from() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        sample_tree(&src);
        let img = d.path().join("img");
        crate::ext4::make_ext4(&src, &img, None, "test").unwrap();
        let out = d.path().join("out");
        std::fs::create_dir(&out).unwrap();
        crate::ext4::import_ext4(&img, &out).unwrap();
        let (want, got) = (describe(&src), describe(&out));
        for (path, entry) in &want {
            assert_eq!(got.get(path), Some(entry), "{path}");
        }
        assert_eq!(want.len(), got.len());
        // The hole stays a hole? Not promised; the content is what counts.
        assert_eq!(
            std::fs::metadata(out.join("sparse")).unwrap().len(),
            (64 << 20) + 3
        );
    }

    #[test]
    fn damaged_images_are_refused_without_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        sample_tree(&src);
        let img = d.path().join("img");
        crate::ext4::make_ext4(&src, &img, None, "test").unwrap();
        let pristine = std::fs::read(&img).unwrap();
        let used = pristine.len().min(8 << 20);
        // Not ext4 at all, and a truncated image.
        std::fs::write(d.path().join("zeros"), vec![0u8; 8192]).unwrap();
        let err = Ext4Image::open(&d.path().join("zeros")).err().unwrap();
        assert!(err.to_string().contains("not an ext4 file system"), "{err}");
        std::fs::write(d.path().join("short"), &pristine[..64 << 10]).unwrap();
        let out = d.path().join("short-out");
        std::fs::create_dir(&out).unwrap();
        assert!(crate::ext4::import_ext4(&d.path().join("short"), &out).is_err());
        // Bytes flipped in the metadata: an error or a tree, never a panic,
        // and nothing written outside the destination.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for round in 0..60 {
            let mut bytes = pristine[..used].to_vec();
            for _ in 0..16 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % used;
                bytes[at] ^= (seed >> 32) as u8 | 1;
            }
            let damaged = d.path().join("damaged");
            std::fs::write(&damaged, &bytes).unwrap();
            let out = d.path().join(format!("out-{round}"));
            std::fs::create_dir(&out).unwrap();
            let _ = crate::ext4::import_ext4(&damaged, &out);
            let _ = std::fs::remove_dir_all(&out);
        }
        let mut left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            ["damaged", "img", "short", "short-out", "src", "zeros"]
        );
    }
}
