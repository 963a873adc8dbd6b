//! ListObjects over a directory tree. S3 lists keys in byte order; a
//! directory walk in name order is not quite that, because a directory
//! `a` holds keys `a/...` that sort after `a.txt` (`.` < `/`). So each
//! directory's entries are ordered with `/` appended to directory names,
//! and the walk descends depth-first: that yields every key in byte order.
//!
//! Each directory is read in pages from where the listing resumes, not
//! from its start, so a page of a listing costs about one page of reads
//! however large the directory: the metaserver pages in name order, and a
//! small buffer holds back each directory until the names that sort
//! before its `/` have passed. Nothing is cached between requests, so a
//! listing always shows the namespace as it is.
//!
//! A directory whose path already holds the delimiter after the prefix
//! (with `/`, every directory) is one common prefix and is not walked;
//! otherwise the walk folds keys into prefixes as it meets them.

use crate::names;
use crate::store::{MARKER_ETAG, Store, etag_of, marker_attr, s3_error};
use s3s::S3Result;
use std::collections::{BTreeMap, VecDeque};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, FileKind, MetaOp, MetaReply, READDIR_PAGE_MAX};

/// One entry of a directory in key order.
struct Entry {
    /// The name, with `/` appended for a directory.
    sort_name: String,
    attr: Attr,
    etag_record: Option<Vec<u8>>,
}

impl Entry {
    fn is_dir(&self) -> bool {
        self.attr.kind == FileKind::Dir
    }

    /// Names that are not UTF-8 (made through the mount) cannot be keys;
    /// entries that are neither files nor directories are not objects.
    fn new(name: Vec<u8>, attr: Attr, etag_record: Option<Vec<u8>>) -> Option<Entry> {
        let name = String::from_utf8(name).ok()?;
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
    }
}

/// A directory's entries in key order, from a lower bound on.
struct DirStream {
    ino: InodeId,
    /// Key prefix of every entry (the directory's path with its `/`).
    prefix: String,
    /// The last raw name read; the next page starts after it.
    cursor: Option<Vec<u8>>,
    done: bool,
    raw: VecDeque<Entry>,
    /// Entries read but not yet due: a directory `d` (sorting as `d/`)
    /// waits here while names like `d.txt` and `d-1` still come.
    held: BTreeMap<String, Entry>,
    /// This directory as the marker object `prefix` if it turns out empty
    /// (nothing sorts between such a marker and its absent entries, so it
    /// is listed when the stream ends).
    marker_if_empty: Option<Attr>,
    /// Whether any entry came out.
    yielded: bool,
}

impl DirStream {
    /// The entries of `ino` whose keys may sort after `after`, limited to
    /// names starting with `name_prefix`.
    async fn open(
        store: &Store,
        ino: InodeId,
        prefix: String,
        name_prefix: &str,
        after: &str,
    ) -> Result<DirStream, Error> {
        let mut stream = DirStream {
            ino,
            prefix,
            cursor: None,
            done: false,
            raw: VecDeque::new(),
            held: BTreeMap::new(),
            marker_if_empty: None,
            yielded: false,
        };
        // The part of `after` inside this directory, if it points here.
        let rest = after.strip_prefix(stream.prefix.as_str()).unwrap_or("");
        let segment = rest.split('/').next().unwrap_or("");
        let lower = segment.max(name_prefix);
        if lower.is_empty() {
            return Ok(stream);
        }
        // Names from `lower` on, in name order...
        stream.cursor = Some(lower.as_bytes().to_vec());
        let mut exact = vec![lower.to_string()];
        // ...and directories named by a proper prefix of `lower` followed
        // by a byte below `/`: `d` sorts as `d/`, after `d-1` and `d.txt`.
        for (at, byte) in lower.bytes().enumerate().skip(1) {
            if byte < b'/' && lower.is_char_boundary(at) {
                exact.push(lower[..at].to_string());
            }
        }
        for name in exact {
            // `after` comes from the client: a name no entry can have is
            // not looked up (and `.` would find the directory itself).
            if !name.starts_with(name_prefix)
                || name.len() > names::SEGMENT_MAX_BYTES
                || name.contains('\0')
                || name == "."
                || name == ".."
            {
                continue;
            }
            let Some(attr) = store.lookup(ino, name.as_bytes()).await? else {
                continue;
            };
            if name != lower && attr.kind != FileKind::Dir {
                continue;
            }
            let record = if attr.kind == FileKind::File {
                store.xattrs(attr.ino).await?.remove(names::XATTR_ETAG)
            } else {
                None
            };
            if let Some(entry) = Entry::new(name.into_bytes(), attr, record) {
                stream.held.insert(entry.sort_name.clone(), entry);
            }
        }
        Ok(stream)
    }

    async fn fill(&mut self, store: &Store) -> Result<(), Error> {
        let reply = store
            .call(MetaOp::ReaddirXattr {
                ino: self.ino,
                after: self.cursor.clone(),
                limit: READDIR_PAGE_MAX,
                name: names::XATTR_ETAG.as_bytes().to_vec(),
            })
            .await?;
        let MetaReply::DirXattr { entries, more } = reply else {
            return Err(Error::internal("readdir answered with something else"));
        };
        self.done = !more || entries.is_empty();
        for (entry, attr, record) in entries {
            self.cursor = Some(entry.name.clone());
            if let Some(entry) = Entry::new(entry.name, attr, record) {
                self.raw.push_back(entry);
            }
        }
        Ok(())
    }

    /// The next entry in key order.
    async fn next(&mut self, store: &Store) -> Result<Option<Entry>, Error> {
        let next = self.next_entry(store).await?;
        self.yielded |= next.is_some();
        Ok(next)
    }

    async fn next_entry(&mut self, store: &Store) -> Result<Option<Entry>, Error> {
        loop {
            if self.raw.is_empty() && !self.done {
                self.fill(store).await?;
                continue;
            }
            match (self.held.first_key_value(), self.raw.front()) {
                // Every later raw name is at least the next raw name, so
                // whatever is held below it is due.
                (Some((held, _)), Some(raw)) if held.as_bytes() < raw.sort_name.as_bytes() => {
                    return Ok(self.held.pop_first().map(|(_, e)| e));
                }
                (_, Some(_)) => match self.raw.pop_front() {
                    Some(entry) if entry.is_dir() => {
                        self.held.insert(entry.sort_name.clone(), entry);
                    }
                    entry => return Ok(entry),
                },
                (_, None) => return Ok(self.held.pop_first().map(|(_, e)| e)),
            }
        }
    }
}

pub struct Listed {
    pub objects: Vec<(String, Attr, String)>,
    pub prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or prefix returned: where the next page starts.
    pub last: Option<String>,
}

impl Store {
    /// Up to `max` keys and common prefixes after `after`, in key order.
    pub async fn list(
        &self,
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
        if max == 0 {
            return Ok(out);
        }
        let delimiter = delimiter.filter(|d| !d.is_empty());
        // The directory that holds every key with this prefix.
        let (base, name_prefix) = match prefix.rfind('/') {
            Some(at) => (&prefix[..=at], &prefix[at + 1..]),
            None => ("", prefix),
        };
        let (start, start_dir) = if base.is_empty() {
            (bucket.ino, None)
        } else {
            let Ok(parts) = names::key_parts(base.trim_end_matches('/')) else {
                return Ok(out);
            };
            match self.walk(bucket.ino, &parts).await? {
                Some(chain) => match chain.last() {
                    Some(attr) if attr.kind == FileKind::Dir => (attr.ino, Some(attr.clone())),
                    _ => return Ok(out),
                },
                None => return Ok(out),
            }
        };
        let mut first = DirStream::open(self, start, base.to_string(), name_prefix, after)
            .await
            .map_err(s3_error)?;
        let mut emitted = 0usize;
        // A prefix ending in `/` names a directory whose marker, if it is
        // one, is the first key with that prefix.
        if let Some(dir) = start_dir.filter(|_| name_prefix.is_empty()) {
            match self
                .call(MetaOp::GetXattr {
                    ino: dir.ino,
                    name: names::XATTR_ETAG.as_bytes().to_vec(),
                })
                .await
            {
                Ok(MetaReply::Xattr(record)) => {
                    let attr = marker_attr(&dir, Some(record.as_slice()));
                    if !list_marker(&mut out, &mut emitted, max, after, base, attr) {
                        return Ok(out);
                    }
                }
                Ok(_) => {}
                Err(err) if err.code == ErrorCode::NoAttr => {
                    first.marker_if_empty = Some(marker_attr(&dir, None));
                }
                Err(err) if err.code == ErrorCode::NotFound => return Ok(out),
                Err(err) => return Err(s3_error(err)),
            }
        }
        let mut stack = vec![first];
        let mut last_prefix: Option<String> = None;
        loop {
            let depth = stack.len();
            let Some(frame) = stack.last_mut() else { break };
            let Some(entry) = frame.next(self).await.map_err(s3_error)? else {
                if let Some(frame) = stack.pop()
                    && let Some(attr) = frame.marker_if_empty.filter(|_| !frame.yielded)
                    && !list_marker(&mut out, &mut emitted, max, after, &frame.prefix, attr)
                {
                    break;
                }
                continue;
            };
            let key = format!("{}{}", frame.prefix, entry.sort_name);
            if depth == 1 && !entry.sort_name.starts_with(name_prefix) {
                // Past the names that carry the prefix.
                break;
            }
            // The common prefix this key (or whole subtree) folds into.
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
                // A marker (`key` itself, ending in `/`) sorts before
                // everything below it.
                let mut below = DirStream::open(self, entry.attr.ino, key.clone(), "", after)
                    .await
                    .map_err(s3_error)?;
                match &entry.etag_record {
                    Some(record) => {
                        let attr = marker_attr(&entry.attr, Some(record.as_slice()));
                        if !list_marker(&mut out, &mut emitted, max, after, &key, attr) {
                            break;
                        }
                    }
                    None => below.marker_if_empty = Some(marker_attr(&entry.attr, None)),
                }
                stack.push(below);
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
                    out.objects.push((key, entry.attr, etag));
                }
            }
        }
        Ok(out)
    }
}

/// Lists the marker object `key` unless the listing resumes past it;
/// false once the page is full (the listing is then truncated there).
fn list_marker(
    out: &mut Listed,
    emitted: &mut usize,
    max: usize,
    after: &str,
    key: &str,
    attr: Attr,
) -> bool {
    if key <= after {
        return true;
    }
    if *emitted == max {
        out.truncated = true;
        return false;
    }
    *emitted += 1;
    out.last = Some(key.to_string());
    out.objects
        .push((key.to_string(), attr, MARKER_ETAG.to_string()));
    true
}
