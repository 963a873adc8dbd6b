//! Whole-store checks: every record read back and every invariant and
//! counter recomputed from scratch. For tests, for a snapshot received from
//! another member, and for the migration, which derives the counters the
//! same way. Never on the path of an operation: it reads everything.

use super::*;
use std::collections::BTreeMap;

/// Every namespace record, decoded.
#[derive(Default)]
pub(super) struct Loaded {
    pub(super) version: Option<u32>,
    pub(super) counters: Option<CountersRecord>,
    pub(super) inodes: BTreeMap<InodeId, Inode>,
    pub(super) dirents: BTreeMap<(InodeId, Vec<u8>), DirentRecord>,
    pub(super) extents: BTreeMap<InodeId, BTreeMap<u64, Extent>>,
    pub(super) xattrs: BTreeMap<InodeId, BTreeMap<Vec<u8>, Vec<u8>>>,
    pub(super) chunks: BTreeMap<ChunkId, u64>,
    pub(super) fragmented: BTreeSet<InodeId>,
    pub(super) orphans: BTreeSet<InodeId>,
    pub(super) inline: BTreeMap<InodeId, u64>,
}

/// The counters of one inode as its records say they must be.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Derived {
    pub(super) nlink: u32,
    pub(super) entries: u64,
    pub(super) tree_inodes: u64,
    pub(super) tree_bytes: u64,
    pub(super) extents: u64,
    pub(super) xattr_bytes: u64,
}

impl Loaded {
    pub(super) fn decode(records: &[(Vec<u8>, Vec<u8>)]) -> Result<Loaded, String> {
        let mut loaded = Loaded::default();
        for (key, value) in records {
            let bad = || {
                format!(
                    "namespace key {:?} is malformed",
                    key.escape_ascii().to_string()
                )
            };
            let prefix = key.get(..2).ok_or_else(bad)?;
            let number = || key_number(key, 2).ok_or_else(bad);
            match prefix {
                KEY_VERSION if key.len() == 2 => loaded.version = Some(decode(key, value)?),
                KEY_COUNTERS if key.len() == 2 => loaded.counters = Some(decode(key, value)?),
                PREFIX_INODE if key.len() == 10 => {
                    loaded
                        .inodes
                        .insert(InodeId(number()?), decode(key, value)?);
                }
                PREFIX_DIRENT if key.len() > 10 => {
                    loaded.dirents.insert(
                        (InodeId(number()?), key[10..].to_vec()),
                        decode(key, value)?,
                    );
                }
                PREFIX_EXTENT if key.len() == 18 => {
                    let extent = extent_from(key, value)?;
                    loaded
                        .extents
                        .entry(InodeId(number()?))
                        .or_default()
                        .insert(extent.offset, extent);
                }
                PREFIX_XATTR if key.len() > 10 => {
                    loaded
                        .xattrs
                        .entry(InodeId(number()?))
                        .or_default()
                        .insert(key[10..].to_vec(), value.clone());
                }
                PREFIX_CHUNK if key.len() == 10 => {
                    let record: ChunkRecord = decode(key, value)?;
                    loaded.chunks.insert(ChunkId(number()?), record.refs);
                }
                PREFIX_FRAGMENTED if key.len() == 10 => {
                    loaded.fragmented.insert(InodeId(number()?));
                }
                PREFIX_ORPHAN if key.len() == 10 => {
                    loaded.orphans.insert(InodeId(number()?));
                }
                PREFIX_INLINE if key.len() == 10 => {
                    loaded.inline.insert(InodeId(number()?), value.len() as u64);
                }
                _ => return Err(bad()),
            }
        }
        Ok(loaded)
    }

    /// Each inode's counters as the entries, extents and xattrs say; files
    /// are counted under their stored `parent`.
    pub(super) fn derive(&self) -> BTreeMap<InodeId, Derived> {
        let mut derived: BTreeMap<InodeId, Derived> = self
            .inodes
            .keys()
            .map(|ino| (*ino, Derived::default()))
            .collect();
        for ((parent, _), entry) in &self.dirents {
            if let Some(d) = derived.get_mut(parent) {
                d.entries += 1;
                if entry.kind == FileKind::Dir {
                    d.nlink += 1;
                }
            }
            if let Some(d) = derived.get_mut(&entry.ino)
                && entry.kind != FileKind::Dir
            {
                d.nlink += 1;
            }
        }
        for (ino, node) in &self.inodes {
            let Some(d) = derived.get_mut(ino) else {
                continue;
            };
            if node.kind == FileKind::Dir {
                // `.` and the entry naming it, unless it was removed.
                d.nlink = if node.nlink == 0 { 0 } else { d.nlink + 2 };
            }
            d.extents = self.extents.get(ino).map_or(0, |m| m.len() as u64);
            d.xattr_bytes = self.xattrs.get(ino).map_or(0, |m| {
                m.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum()
            });
        }
        for (ino, node) in &self.inodes {
            let counted = match node.kind {
                FileKind::Dir => *ino != InodeId::ROOT && node.nlink > 0,
                _ => node.parent.0 != 0,
            };
            if !counted {
                continue;
            }
            let bytes = if node.kind == FileKind::File {
                node.size
            } else {
                0
            };
            let mut current = node.parent;
            for _ in 0..=self.inodes.len() {
                let Some(d) = derived.get_mut(&current) else {
                    break;
                };
                d.tree_inodes += 1;
                d.tree_bytes += bytes;
                if current == InodeId::ROOT {
                    break;
                }
                match self.inodes.get(&current) {
                    Some(dir) => current = dir.parent,
                    None => break,
                }
            }
        }
        derived
    }

    /// Every invariant of the module docs, and every stored counter.
    pub(super) fn check(&self) -> Result<(), String> {
        if self.version != Some(FORMAT_VERSION) {
            return Err(format!(
                "namespace layout {:?}, expected {FORMAT_VERSION}",
                self.version
            ));
        }
        let counters = self
            .counters
            .ok_or("namespace counters record is missing")?;
        match self.inodes.get(&InodeId::ROOT) {
            Some(root) if root.kind == FileKind::Dir && root.parent == InodeId::ROOT => {}
            _ => return Err("namespace root directory is missing".to_string()),
        }
        if let Some((last, _)) = self.inodes.last_key_value()
            && last.0 >= counters.next_ino
        {
            return Err(format!(
                "{last} is not below the next inode number {}",
                counters.next_ino
            ));
        }
        if counters.inodes != self.inodes.len() as u64 {
            return Err(format!(
                "{} inodes counted, {} stored",
                counters.inodes,
                self.inodes.len()
            ));
        }
        for ((parent, name), entry) in &self.dirents {
            if check_new_name(name).is_err() {
                return Err(format!(
                    "{parent} has an invalid entry name {}",
                    shown(name)
                ));
            }
            match self.inodes.get(parent) {
                Some(dir) if dir.kind == FileKind::Dir => {}
                _ => {
                    return Err(format!(
                        "entry {} is in {parent}, not a directory",
                        shown(name)
                    ));
                }
            }
            let child = self.inodes.get(&entry.ino).ok_or_else(|| {
                format!("{parent} entry {} names missing {}", shown(name), entry.ino)
            })?;
            if child.kind != entry.kind {
                return Err(format!("{parent} entry {} has the wrong kind", shown(name)));
            }
            if child.kind == FileKind::Dir && child.parent != *parent {
                return Err(format!(
                    "{} is in {parent} but points at {}",
                    entry.ino, child.parent
                ));
            }
        }
        let named_in: BTreeSet<(InodeId, InodeId)> = self
            .dirents
            .iter()
            .map(|((parent, _), entry)| (*parent, entry.ino))
            .collect();
        for (ino, node) in &self.inodes {
            if node.kind != FileKind::Dir
                && node.parent.0 != 0
                && !named_in.contains(&(node.parent, *ino))
            {
                return Err(format!(
                    "{ino} is counted under {} but not in it",
                    node.parent
                ));
            }
            if node.nlink == 0 && node.open == 0 {
                return Err(format!("{ino} has no links and is not open"));
            }
        }
        let derived = self.derive();
        for (ino, node) in &self.inodes {
            let d = derived.get(ino).copied().unwrap_or_default();
            let stored = Derived {
                nlink: node.nlink,
                entries: node.entries,
                tree_inodes: node.tree_inodes,
                tree_bytes: node.tree_bytes,
                extents: node.extents,
                xattr_bytes: node.xattr_bytes,
            };
            let stored = if node.kind == FileKind::Dir {
                stored
            } else {
                Derived {
                    entries: 0,
                    tree_inodes: 0,
                    tree_bytes: 0,
                    ..stored
                }
            };
            if stored != d {
                return Err(format!("{ino} stores {stored:?}, its records say {d:?}"));
            }
        }
        for ino in self.xattrs.keys() {
            if !self.inodes.contains_key(ino) {
                return Err(format!("xattrs recorded for missing {ino}"));
            }
        }
        for (ino, length) in &self.inline {
            let fits = self.inodes.get(ino).is_some_and(|node| {
                node.kind == FileKind::File
                    && *length > 0
                    && *length <= node.size
                    && *length <= INLINE_MAX_BYTES
            });
            if !fits {
                return Err(format!(
                    "{ino} has {length} inline bytes, which do not fit it"
                ));
            }
        }
        let mut refs: BTreeMap<ChunkId, u64> = BTreeMap::new();
        for (ino, map) in &self.extents {
            let node = self
                .inodes
                .get(ino)
                .filter(|node| node.kind == FileKind::File)
                .ok_or_else(|| format!("extents recorded for {ino}, not a file"))?;
            let mut covered = 0;
            for extent in map.values() {
                let end = extent.offset.checked_add(extent.length);
                let valid = extent.length > 0
                    && extent.offset >= covered
                    && end.is_some_and(|end| end <= node.size)
                    && extent.chunk_offset.checked_add(extent.length).is_some();
                if !valid {
                    return Err(format!("{ino} has an invalid extent at {}", extent.offset));
                }
                covered = end.unwrap_or(u64::MAX);
                *refs.entry(extent.chunk).or_default() += 1;
            }
        }
        if refs != self.chunks {
            return Err("chunk reference counts disagree with the extents".to_string());
        }
        let fragmented: BTreeSet<InodeId> = self
            .inodes
            .iter()
            .filter(|(_, node)| node.extents > FRAGMENT_BASE_EXTENTS)
            .map(|(ino, _)| *ino)
            .collect();
        if fragmented != self.fragmented {
            return Err("the index of fragmented files disagrees with the extents".to_string());
        }
        let orphans: BTreeSet<InodeId> = self
            .inodes
            .iter()
            .filter(|(_, node)| node.nlink == 0 && node.kind != FileKind::Dir)
            .map(|(ino, _)| *ino)
            .collect();
        if orphans != self.orphans {
            return Err("the index of unlinked open files disagrees with the inodes".to_string());
        }
        Ok(())
    }
}

impl Namespace {
    /// Every namespace record in key order, the unwritten ones included.
    /// Reads the whole store: for tests and checks.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.kv.scan(b"n", b"o", usize::MAX)
    }

    /// A namespace in memory over the given records (any order; keys not
    /// starting with `n` belong to other parts of the store and are
    /// skipped), refused unless every invariant and counter holds.
    pub fn from_records(
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<Namespace, String> {
        let mut records: Vec<(Vec<u8>, Vec<u8>)> = records
            .into_iter()
            .filter(|(key, _)| key.first() == Some(&b'n'))
            .collect();
        records.sort();
        Loaded::decode(&records)?.check()?;
        Ok(Namespace::empty(
            MemStore::from_records(records),
            DEFAULT_CACHE_BYTES,
        ))
    }

    /// Checks the whole store against every invariant (an fsck).
    pub fn check(&self) -> Result<(), String> {
        Loaded::decode(&self.records())?.check()
    }
}
