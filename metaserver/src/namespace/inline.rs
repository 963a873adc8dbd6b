//! Inline bytes: a small file's content kept in the namespace itself, so
//! writing one costs a single Raft entry and reading one a single call.
//!
//! The bytes are the bottom layer of the file, from offset 0: extents lie
//! over them, and what neither covers below the size reads as zeros. A file
//! takes inline writes only while it has no extents, so a write never lands
//! under newer data; once it has extents it grows in chunks, and the inline
//! record stays under them until a truncate or the file's removal.

use super::*;

impl Namespace {
    /// Writes `writes` (in order) into the inline bytes of `ino` and raises
    /// its size to at least `min_size` and every write's end, in one atomic
    /// step. Refused with `NotInline` once the file has extents. The
    /// caller answers with the attributes (after its setattr).
    pub fn write_inline(
        &mut self,
        ino: InodeId,
        writes: &[(u64, Vec<u8>)],
        min_size: u64,
        now_ns: i64,
    ) -> Result<(), Error> {
        let node = self.file_node(ino)?;
        if node.extents > 0 {
            return Err(err(
                ErrorCode::NotInline,
                format!("{ino} keeps its bytes in chunks; write them there"),
            ));
        }
        if min_size > FILE_SIZE_MAX_BYTES {
            return Err(too_large(min_size));
        }
        let mut size = node.size.max(min_size);
        for (offset, data) in writes {
            let end = offset
                .checked_add(data.len() as u64)
                .filter(|end| *end <= INLINE_MAX_BYTES)
                .ok_or_else(|| {
                    err(
                        ErrorCode::InvalidArgument,
                        format!(
                            "an inline write of {} bytes at {offset} passes the inline limit of {INLINE_MAX_BYTES} bytes",
                            data.len()
                        ),
                    )
                })?;
            size = size.max(end);
        }
        let mut bytes = self.inline_bytes(ino);
        for (offset, data) in writes {
            if data.is_empty() {
                continue;
            }
            // Both fit in usize: the ends were checked against the limit.
            let (start, end) = (*offset as usize, *offset as usize + data.len());
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[start..end].copy_from_slice(data);
        }
        self.put_inline(ino, bytes);
        self.update(ino, |node| {
            node.size = size;
            node.mtime_ns = now_ns;
            node.ctime_ns = now_ns;
        });
        Ok(())
    }

    /// The file's inline bytes (empty when it has none).
    pub fn inline_bytes(&self, ino: InodeId) -> Vec<u8> {
        self.kv.get(&inline_key(ino)).unwrap_or_default()
    }

    pub(super) fn put_inline(&mut self, ino: InodeId, bytes: Vec<u8>) {
        if bytes.is_empty() {
            self.delete_inline(ino);
        } else {
            self.kv.put(inline_key(ino), bytes);
        }
    }

    /// Drops the record, if there is one (a read first, so files that never
    /// had inline bytes leave no deletion behind in the store).
    pub(super) fn delete_inline(&mut self, ino: InodeId) {
        let key = inline_key(ino);
        if self.kv.get(&key).is_some() {
            self.kv.delete(key);
        }
    }

    /// Cuts the inline bytes at `size`, so growing the file again reads
    /// zeros there, as after any truncate.
    pub(super) fn truncate_inline(&mut self, ino: InodeId, size: u64) {
        let mut bytes = self.inline_bytes(ino);
        if (bytes.len() as u64) > size {
            bytes.truncate(size as usize);
            self.put_inline(ino, bytes);
        }
    }
}
