//! The namespace records as written before layout 2 (every inode, entry
//! and extent was also held in memory), converted on the first start of a
//! version that keeps the namespace on disk.
//!
//! Layout 1 differs in: inodes carried their xattrs and no counters; files
//! had no `parent`; entries did not carry the child's kind; the counters
//! record had no inode count; there was no fragmented index and no version
//! record. The conversion reads every old record (the old version held them
//! all in memory, so they fit), derives the counters as
//! [`Namespace::check`] does, checks the result, and writes it in one batch
//! that also deletes what it replaces: a crash leaves either layout whole.

use super::check::Loaded;
use super::*;
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct OldInode {
    kind: FileKind,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    atime_ns: i64,
    mtime_ns: i64,
    ctime_ns: i64,
    rdev: u32,
    version: u64,
    parent: InodeId,
    policy: Policy,
    open: u64,
    target: Vec<u8>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Deserialize)]
struct OldCounters {
    next_ino: u64,
}

#[derive(Deserialize)]
struct OldDirent {
    ino: InodeId,
}

/// Whether `store` holds the namespace in layout 1.
pub fn needed(store: &dyn Store) -> Result<bool, String> {
    Ok(store.get(KEY_VERSION)?.is_none() && store.get(KEY_COUNTERS)?.is_some())
}

/// Converts a layout-1 namespace in `store` to the current layout.
/// Returns the number of inodes converted.
pub fn run(store: &dyn Store) -> Result<u64, String> {
    let old = store.scan(b"n", b"o", usize::MAX)?;
    let mut loaded = Loaded {
        version: Some(FORMAT_VERSION),
        ..Loaded::default()
    };
    let mut dirents = Vec::new();
    for (key, value) in &old {
        let bad = || {
            format!(
                "old namespace key {:?} is malformed",
                key.escape_ascii().to_string()
            )
        };
        let number = || key_number(key, 2).ok_or_else(bad);
        match key.get(..2).ok_or_else(bad)? {
            KEY_COUNTERS => {
                let counters: OldCounters = decode(key, value)?;
                loaded.counters = Some(CountersRecord {
                    next_ino: counters.next_ino,
                    inodes: 0,
                });
            }
            PREFIX_INODE => {
                let ino = InodeId(number()?);
                let node: OldInode = decode(key, value)?;
                if !node.xattrs.is_empty() {
                    loaded.xattrs.insert(ino, node.xattrs);
                }
                let parent = if node.kind == FileKind::Dir {
                    node.parent
                } else {
                    InodeId(0)
                };
                loaded.inodes.insert(
                    ino,
                    Inode {
                        kind: node.kind,
                        mode: node.mode,
                        uid: node.uid,
                        gid: node.gid,
                        size: node.size,
                        nlink: node.nlink,
                        atime_ns: node.atime_ns,
                        mtime_ns: node.mtime_ns,
                        ctime_ns: node.ctime_ns,
                        rdev: node.rdev,
                        version: node.version,
                        parent,
                        policy: node.policy,
                        open: node.open,
                        target: node.target,
                        xattr_bytes: 0,
                        extents: 0,
                        entries: 0,
                        tree_inodes: 0,
                        tree_bytes: 0,
                    },
                );
            }
            PREFIX_DIRENT if key.len() > 10 => {
                let record: OldDirent = decode(key, value)?;
                dirents.push((InodeId(number()?), key[10..].to_vec(), record.ino));
            }
            PREFIX_EXTENT => {
                let extent = extent_from(key, value)?;
                loaded
                    .extents
                    .entry(InodeId(number()?))
                    .or_default()
                    .insert(extent.offset, extent);
            }
            PREFIX_CHUNK => {
                let record: ChunkRecord = decode(key, value)?;
                loaded.chunks.insert(ChunkId(number()?), record.refs);
            }
            _ => return Err(bad()),
        }
    }
    let mut counters = loaded
        .counters
        .ok_or("the old namespace has no counters record")?;
    counters.inodes = loaded.inodes.len() as u64;
    loaded.counters = Some(counters);
    for (parent, name, ino) in dirents {
        let node = loaded
            .inodes
            .get_mut(&ino)
            .ok_or_else(|| format!("{parent} entry {} names missing {ino}", shown(&name)))?;
        // A file is counted under the first directory naming it.
        if node.kind != FileKind::Dir && node.parent.0 == 0 {
            node.parent = parent;
        }
        let kind = node.kind;
        loaded
            .dirents
            .insert((parent, name), DirentRecord { ino, kind });
    }
    let derived = loaded.derive();
    for (ino, node) in loaded.inodes.iter_mut() {
        let d = derived.get(ino).copied().unwrap_or_default();
        node.entries = d.entries;
        node.tree_inodes = d.tree_inodes;
        node.tree_bytes = d.tree_bytes;
        node.extents = d.extents;
        node.xattr_bytes = d.xattr_bytes;
        if node.extents > FRAGMENT_BASE_EXTENTS {
            loaded.fragmented.insert(*ino);
        }
        if node.nlink == 0 && node.kind != FileKind::Dir {
            loaded.orphans.insert(*ino);
        }
    }
    loaded
        .check()
        .map_err(|why| format!("the converted namespace is inconsistent: {why}"))?;

    let mut new: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    new.insert(KEY_VERSION.to_vec(), encode(&FORMAT_VERSION));
    new.insert(KEY_COUNTERS.to_vec(), encode(&counters));
    for (ino, node) in &loaded.inodes {
        new.insert(inode_key(*ino), encode(node));
    }
    for ((parent, name), entry) in &loaded.dirents {
        new.insert(dirent_key(*parent, name), encode(entry));
    }
    for (ino, map) in &loaded.extents {
        for extent in map.values() {
            let record = ExtentRecord {
                length: extent.length,
                chunk: extent.chunk,
                chunk_offset: extent.chunk_offset,
            };
            new.insert(extent_key(*ino, extent.offset), encode(&record));
        }
    }
    for (ino, map) in &loaded.xattrs {
        for (name, value) in map {
            new.insert(xattr_key(*ino, name), value.clone());
        }
    }
    for (chunk, refs) in &loaded.chunks {
        new.insert(chunk_key(*chunk), encode(&ChunkRecord { refs: *refs }));
    }
    for ino in &loaded.fragmented {
        new.insert(fragmented_key(*ino), Vec::new());
    }
    for ino in &loaded.orphans {
        new.insert(orphan_key(*ino), Vec::new());
    }
    let mut changes: Vec<Change> = old
        .into_iter()
        .filter(|(key, _)| !new.contains_key(key))
        .map(|(key, _)| (key, None))
        .collect();
    changes.extend(new.into_iter().map(|(key, value)| (key, Some(value))));
    store.write(changes)?;
    Ok(counters.inodes)
}
