//! File layouts: extents, their chunk references, concatenation and
//! compaction's swap.

use super::*;

/// Adds and drops of chunk references within one step, applied together so
/// a chunk that only moves between extents never looks released.
#[derive(Default)]
pub(super) struct RefChanges {
    pub(super) added: Vec<ChunkId>,
    pub(super) dropped: Vec<ChunkId>,
}

impl Namespace {
    /// Records extents (in order; later ones cover earlier ones where they
    /// overlap) on a regular file and raises its size to at least
    /// `max(min_size, end of every extent)`. Updates mtime and ctime.
    /// Atomic: on error nothing changes.
    pub fn commit_extents(
        &mut self,
        ino: InodeId,
        extents: &[Extent],
        min_size: u64,
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let node = self.file_node(ino)?;
        if min_size > FILE_SIZE_MAX_BYTES {
            return Err(too_large(min_size));
        }
        let mut size = node.size.max(min_size);
        for extent in extents {
            if extent.length == 0 {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("extent at {} has length 0", extent.offset),
                ));
            }
            let end = extent
                .offset
                .checked_add(extent.length)
                .filter(|end| *end <= FILE_SIZE_MAX_BYTES)
                .ok_or_else(|| too_large(u64::MAX))?;
            if extent.chunk_offset.checked_add(extent.length).is_none() {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("extent at {} overflows its chunk", extent.offset),
                ));
            }
            size = size.max(end);
        }
        for extent in extents {
            self.overlay(ino, *extent);
        }
        self.update(ino, |node| {
            node.size = size;
            node.mtime_ns = now_ns;
            node.ctime_ns = now_ns;
        });
        self.attr(ino)
    }

    /// Compaction's commit: `target` takes `source`'s extents (the same
    /// bytes, rewritten into fresh chunks) only if nothing changed it since
    /// the copy was read (`version`); its old chunks lose their references
    /// and are collected. The bytes are unchanged, so size and times stay;
    /// the version moves so clients drop cached layouts.
    pub fn swap_layout(
        &mut self,
        target: InodeId,
        source: InodeId,
        version: u64,
    ) -> Result<Attr, Error> {
        if target == source {
            return Err(err(
                ErrorCode::InvalidArgument,
                "a layout swap needs two different files",
            ));
        }
        let current = self.file_node(target)?;
        let (size, current_version) = (current.size, current.version);
        let source_size = self.file_node(source)?.size;
        if current_version != version {
            return Err(err(
                ErrorCode::Busy,
                format!("{target} changed since its compaction started; try again later"),
            ));
        }
        if source_size != size {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("{source} holds {source_size} bytes, {target} {size}"),
            ));
        }
        let old = self.extents_of(target);
        let new = self.extents_of(source);
        self.replace_extents(source, new.clone(), Vec::new());
        self.replace_extents(target, old, new);
        // The copy's inline bytes (if it was small enough to have them)
        // replace the target's, which the new extents may not cover.
        let inline = self.inline_bytes(source);
        self.delete_inline(source);
        self.put_inline(target, inline);
        self.update(source, |node| node.size = 0);
        self.update(target, |_| {});
        self.attr(target)
    }

    /// Files fragmented by the rule of [`Namespace::fragmented`] (or, with
    /// `min_extents` above 0, with more than 64 extents and at least
    /// `min_extents`), in inode order. Only files with more than 64
    /// extents are indexed, so a page reads no other file.
    pub(super) fn fragmented_page(
        &self,
        min_extents: u32,
        after: Option<InodeId>,
        limit: u32,
    ) -> Vec<(Attr, u64)> {
        let start = after.map_or(0, |a| a.0.saturating_add(1));
        let from = fragmented_key(InodeId(start));
        let limit = limit.clamp(1, 1024) as usize;
        let mut out = Vec::new();
        for (key, _) in self
            .kv
            .scan(&from, &prefix_end(PREFIX_FRAGMENTED), usize::MAX)
        {
            let Some(ino) = key_number(&key, 2).map(InodeId) else {
                continue;
            };
            let Some(node) = self.get_node(ino) else {
                continue;
            };
            let wanted = if min_extents > 0 {
                node.extents >= u64::from(min_extents)
            } else {
                is_fragmented(&node)
            };
            if wanted {
                out.push((attr_of(ino, &node), node.extents));
                if out.len() >= limit {
                    break;
                }
            }
        }
        out
    }

    /// Files whose extent count grew large for their size (more than 64 +
    /// size/1MiB extents): candidates for compaction.
    pub fn fragmented(&self) -> Vec<InodeId> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.fragmented_page(0, after, 1024);
            let Some((last, _)) = page.last() else {
                return out;
            };
            after = Some(last.ino);
            out.extend(page.iter().map(|(attr, _)| attr.ino));
        }
    }

    /// Size and the extents intersecting `[offset, offset + length)`, in
    /// file order, clipped to that range.
    pub fn layout(
        &self,
        ino: InodeId,
        offset: u64,
        length: u64,
    ) -> Result<(u64, Vec<Extent>), Error> {
        let node = self.file_node(ino)?;
        let end = offset.saturating_add(length);
        let mut found = Vec::new();
        if offset < end && node.extents > 0 {
            let before = self
                .extent_before(ino, offset)
                .filter(|extent| extent_end(extent) > offset);
            let within = self.extents_in(ino, offset, end, LAYOUT_EXTENTS_MAX);
            for extent in before.into_iter().chain(within).take(LAYOUT_EXTENTS_MAX) {
                let from = extent.offset.max(offset);
                let to = extent_end(&extent).min(end);
                found.push(piece(&extent, from, to));
            }
        }
        Ok((node.size, found))
    }

    /// Appends each source's extents (shifted by the target's size at that
    /// moment) to the target, in order; the target grows by each source's
    /// size and each source is left empty. Sources and target must be
    /// distinct regular files. No data is copied; chunk references move.
    pub fn concat(
        &mut self,
        target: InodeId,
        sources: &[InodeId],
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let mut total = self.file_node(target)?.size;
        let mut seen = BTreeSet::from([target]);
        for &source in sources {
            let size = self.file_node(source)?.size;
            if !seen.insert(source) {
                return Err(err(
                    ErrorCode::InvalidArgument,
                    format!("{source} appears twice in a concat (sources and target must differ)"),
                ));
            }
            // Inline bytes sit at offset 0 of their own file and cannot
            // move; concatenated parts are written to chunks.
            if !self.inline_bytes(source).is_empty() {
                return Err(err(
                    ErrorCode::NotInline,
                    format!(
                        "{source} keeps inline bytes, which a concat cannot move; write it to chunks"
                    ),
                ));
            }
            total = total
                .checked_add(size)
                .filter(|total| *total <= FILE_SIZE_MAX_BYTES)
                .ok_or_else(|| too_large(u64::MAX))?;
        }
        if sources.is_empty() {
            return self.attr(target);
        }
        for &source in sources {
            let shift = self.node(target)?.size;
            let size = self.node(source)?.size;
            let moved = self.extents_of(source);
            let shifted: Vec<Extent> = moved
                .iter()
                .map(|extent| Extent {
                    offset: extent.offset.saturating_add(shift),
                    ..*extent
                })
                .collect();
            self.replace_extents(source, moved, Vec::new());
            self.replace_extents(target, Vec::new(), shifted);
            self.update(source, |node| {
                node.size = 0;
                node.mtime_ns = now_ns;
                node.ctime_ns = now_ns;
            });
            self.update(target, |node| {
                node.size = node.size.saturating_add(size);
                node.mtime_ns = now_ns;
                node.ctime_ns = now_ns;
            });
        }
        self.attr(target)
    }

    /// See [`MetaOp::CloneFile`](tessera_proto::meta::MetaOp::CloneFile).
    pub fn clone_file(
        &mut self,
        source: InodeId,
        target: InodeId,
        now_ns: i64,
    ) -> Result<Attr, Error> {
        let size = self.file_node(source)?.size;
        let empty = self.file_node(target)?.size == 0
            && self.extents_in(target, 0, u64::MAX, 1).is_empty()
            && self.inline_bytes(target).is_empty();
        if source == target || !empty {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("a clone needs an empty file apart from its source; {target} is not"),
            ));
        }
        let extents = self.extents_of(source);
        self.replace_extents(target, Vec::new(), extents);
        let inline = self.inline_bytes(source);
        self.put_inline(target, inline);
        self.update(target, |node| {
            node.size = size;
            node.mtime_ns = now_ns;
            node.ctime_ns = now_ns;
        });
        self.attr(target)
    }

    /// Lays `new` over the file's extents: whatever it covers is cut out of
    /// older extents, splitting one in two if `new` lands in its middle.
    pub(super) fn overlay(&mut self, ino: InodeId, new: Extent) {
        let start = new.offset;
        let end = extent_end(&new);
        let mut removed = Vec::new();
        let mut added = Vec::new();
        if let Some(old) = self.extent_before(ino, start)
            && extent_end(&old) > start
        {
            removed.push(old);
            added.push(piece(&old, old.offset, start));
            if extent_end(&old) > end {
                added.push(piece(&old, end, extent_end(&old)));
            }
        }
        for old in self.extents_in(ino, start, end, usize::MAX) {
            removed.push(old);
            if extent_end(&old) > end {
                added.push(piece(&old, end, extent_end(&old)));
            }
        }
        added.push(new);
        self.replace_extents(ino, removed, added);
    }

    /// Cuts the file's extents at `size`.
    pub(super) fn truncate_extents(&mut self, ino: InodeId, size: u64) {
        let mut removed = Vec::new();
        let mut added = Vec::new();
        if let Some(old) = self.extent_before(ino, size)
            && extent_end(&old) > size
        {
            removed.push(old);
            added.push(piece(&old, old.offset, size));
        }
        removed.extend(self.extents_in(ino, size, u64::MAX, usize::MAX));
        self.replace_extents(ino, removed, added);
    }

    /// Removes `removed` (by offset), then writes `added`, keeping the
    /// extent count, the fragmented index and the chunk references.
    pub(super) fn replace_extents(
        &mut self,
        ino: InodeId,
        removed: Vec<Extent>,
        added: Vec<Extent>,
    ) {
        let mut changes = RefChanges::default();
        let mut keys = BTreeSet::new();
        for old in &removed {
            keys.insert(old.offset);
            changes.dropped.push(old.chunk);
        }
        for new in &added {
            keys.remove(&new.offset);
            changes.added.push(new.chunk);
        }
        for offset in keys {
            self.kv.delete(extent_key(ino, offset));
        }
        // An added extent may reuse a removed one's offset: its record is
        // overwritten, and the count still moves by added minus removed.
        let count_delta = added.len() as i64 - removed.len() as i64;
        for new in &added {
            self.kv.put(
                extent_key(ino, new.offset),
                encode(&ExtentRecord {
                    length: new.length,
                    chunk: new.chunk,
                    chunk_offset: new.chunk_offset,
                }),
            );
        }
        if count_delta != 0 {
            let (mut before, mut after) = (0, 0);
            self.update_quiet(ino, |node| {
                before = node.extents;
                node.extents = node.extents.saturating_add_signed(count_delta);
                after = node.extents;
            });
            // The index only changes when the count crosses its line.
            match (
                before > FRAGMENT_BASE_EXTENTS,
                after > FRAGMENT_BASE_EXTENTS,
            ) {
                (false, true) => self.kv.put(fragmented_key(ino), Vec::new()),
                (true, false) => self.kv.delete(fragmented_key(ino)),
                _ => {}
            }
        }
        self.apply_ref_changes(changes);
    }

    pub(super) fn apply_ref_changes(&mut self, changes: RefChanges) {
        for chunk in changes.added {
            let refs = self.chunk_refs(chunk).saturating_add(1);
            self.kv.put(chunk_key(chunk), encode(&ChunkRecord { refs }));
            // Referenced again after its release: it must not be collected.
            if self.released_set.remove(&chunk) {
                self.released.retain(|released| *released != chunk);
            }
        }
        for chunk in changes.dropped {
            let refs = self.chunk_refs(chunk);
            if refs == 0 {
                continue;
            }
            let refs = refs - 1;
            if refs == 0 {
                self.kv.delete(chunk_key(chunk));
                if self.released_set.insert(chunk) {
                    self.released.push(chunk);
                }
            } else {
                self.kv.put(chunk_key(chunk), encode(&ChunkRecord { refs }));
            }
        }
    }

    pub(super) fn extent_record(&self, key: &[u8], value: &[u8]) -> Option<Extent> {
        match extent_from(key, value) {
            Ok(extent) => Some(extent),
            Err(why) => {
                self.kv.report_failure(why);
                None
            }
        }
    }

    /// Every extent of `ino`, in file order.
    pub(super) fn extents_of(&self, ino: InodeId) -> Vec<Extent> {
        self.extents_in(ino, 0, u64::MAX, usize::MAX)
    }

    /// Extents starting in `[from, to)`, at most `limit`.
    pub(super) fn extents_in(&self, ino: InodeId, from: u64, to: u64, limit: usize) -> Vec<Extent> {
        let end = if to == u64::MAX {
            prefix_end(&extent_prefix(ino))
        } else {
            extent_key(ino, to)
        };
        self.kv
            .scan(&extent_key(ino, from), &end, limit)
            .into_iter()
            .filter_map(|(key, value)| self.extent_record(&key, &value))
            .collect()
    }

    /// The last extent starting before `offset`.
    pub(super) fn extent_before(&self, ino: InodeId, offset: u64) -> Option<Extent> {
        let (key, value) = self
            .kv
            .last(&extent_prefix(ino), &extent_key(ino, offset))?;
        self.extent_record(&key, &value)
    }
}

/// More than 64 + size/1MiB extents.
fn is_fragmented(node: &Inode) -> bool {
    node.extents > FRAGMENT_BASE_EXTENTS + node.size / MIB
}
