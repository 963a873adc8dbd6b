//! ListObjects over a directory tree. S3 lists keys in byte order; a
//! directory walk in name order is not quite that, because a directory
//! `a` holds keys `a/...` that sort after `a.txt` (`.` < `/`). So each
//! directory's entries are ordered with `/` appended to directory names,
//! and the walk descends depth-first: that yields every key in byte order.
//!
//! A directory whose path already holds the delimiter after the prefix
//! (with `/`, every directory) is one common prefix and is not walked;
//! otherwise the walk folds keys into prefixes as it meets them.
//! A directory's ordered entries are cached by its inode and version, so
//! paging through a large directory reads it once, not once per page.

use crate::names;
use crate::store::{Store, etag_of, s3_error};
use s3s::S3Result;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, FileKind};

/// Directories whose ordered entries are kept.
const CACHED_DIRS: usize = 64;

/// One entry of an ordered listing.
pub struct Entry {
    /// The name, with `/` appended for a directory.
    pub sort_name: String,
    pub attr: Attr,
    pub etag_record: Option<Vec<u8>>,
}

impl Entry {
    fn is_dir(&self) -> bool {
        self.attr.kind == FileKind::Dir
    }
}

/// A directory's entries in key order, with the version they were read at.
type Ordered = (u64, Arc<Vec<Entry>>);

#[derive(Default)]
pub struct DirCache {
    dirs: Mutex<HashMap<InodeId, Ordered>>,
}

pub struct Listed {
    pub objects: Vec<(String, Attr, String)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or prefix returned: where the next page starts.
    pub last: Option<String>,
}

impl Store {
    /// A directory's entries in key order. Names that are not UTF-8 (made
    /// through the mount) cannot be keys and are left out, as are entries
    /// that are neither files nor directories.
    async fn ordered(&self, cache: &DirCache, dir: &Attr) -> S3Result<Arc<Vec<Entry>>> {
        if let Ok(dirs) = cache.dirs.lock()
            && let Some((version, entries)) = dirs.get(&dir.ino)
            && *version == dir.version
        {
            return Ok(entries.clone());
        }
        let listed = self
            .list_dir(dir.ino, names::XATTR_ETAG)
            .await
            .map_err(s3_error)?;
        let mut entries: Vec<Entry> = listed
            .into_iter()
            .filter_map(|(entry, attr, etag_record)| {
                let name = String::from_utf8(entry.name).ok()?;
                let sort_name = match attr.kind {
                    FileKind::Dir => format!("{name}/"),
                    FileKind::File => name,
                    _ => return None,
                };
                Some(Entry {
                    sort_name,
                    attr,
                    etag_record,
                })
            })
            .collect();
        entries.sort_by(|a, b| a.sort_name.as_bytes().cmp(b.sort_name.as_bytes()));
        let entries = Arc::new(entries);
        if let Ok(mut dirs) = cache.dirs.lock() {
            if dirs.len() >= CACHED_DIRS {
                dirs.clear();
            }
            dirs.insert(dir.ino, (dir.version, entries.clone()));
        }
        Ok(entries)
    }

    /// Up to `max` keys and common prefixes after `after`, in key order.
    pub async fn list(
        &self,
        cache: &DirCache,
        bucket: &Attr,
        prefix: &str,
        delimiter: Option<&str>,
        after: &str,
        max: usize,
    ) -> S3Result<Listed> {
        let mut out = Listed {
            objects: Vec::new(),
            prefixes: Vec::new(),
            truncated: false,
            last: None,
        };
        let delimiter = delimiter.filter(|d| !d.is_empty());
        // The directory that holds every key with this prefix.
        let (base, name_prefix) = match prefix.rfind('/') {
            Some(at) => (&prefix[..=at], &prefix[at + 1..]),
            None => ("", prefix),
        };
        let start = if base.is_empty() {
            bucket.clone()
        } else {
            let Ok(parts) = names::key_parts(base.trim_end_matches('/')) else {
                return Ok(out);
            };
            match self.walk(bucket.ino, &parts).await? {
                Some(chain) => match chain.last() {
                    Some(attr) if attr.kind == FileKind::Dir => attr.clone(),
                    _ => return Ok(out),
                },
                None => return Ok(out),
            }
        };

        struct Frame {
            prefix: String,
            entries: Arc<Vec<Entry>>,
            index: usize,
        }
        let first = self.ordered(cache, &start).await?;
        let index = first.partition_point(|e| e.sort_name.as_str() < name_prefix);
        let mut stack = vec![Frame {
            prefix: base.to_string(),
            entries: first,
            index,
        }];
        let mut emitted = 0usize;
        let mut last_prefix: Option<String> = None;
        loop {
            let depth = stack.len();
            let Some(frame) = stack.last_mut() else { break };
            let Some(entry) = frame.entries.get(frame.index) else {
                stack.pop();
                continue;
            };
            frame.index += 1;
            let key = format!("{}{}", frame.prefix, entry.sort_name);
            if depth == 1 && !entry.sort_name.starts_with(name_prefix) {
                // Past the names that carry the prefix.
                stack.clear();
                break;
            }
            // The common prefix this key (or subtree) folds into, if any.
            let folded = match delimiter {
                Some("/") if entry.is_dir() => Some(key.clone()),
                Some(delimiter) => key[prefix.len()..]
                    .find(delimiter)
                    .map(|at| key[..prefix.len() + at + delimiter.len()].to_string()),
                None => None,
            };
            if entry.is_dir() && folded.is_none() {
                // Walk into it unless every key below sorts before `after`.
                if after >= key.as_str() && !after.starts_with(&key) {
                    continue;
                }
                let entries = self.ordered(cache, &entry.attr).await?;
                stack.push(Frame {
                    prefix: key,
                    entries,
                    index: 0,
                });
                continue;
            }
            let item = folded.clone().unwrap_or_else(|| key.clone());
            if item.as_str() <= after || last_prefix.as_deref() == Some(item.as_str()) {
                continue;
            }
            if emitted == max {
                out.truncated = true;
                break;
            }
            emitted += 1;
            out.last = Some(item.clone());
            match folded {
                Some(folded) => {
                    last_prefix = Some(folded.clone());
                    out.prefixes.push(folded);
                }
                None => {
                    let etag = etag_of(&entry.attr, entry.etag_record.as_deref());
                    out.objects.push((key, entry.attr.clone(), etag));
                }
            }
        }
        Ok(out)
    }
}
