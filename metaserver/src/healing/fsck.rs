//! `tessera admin fsck`: the chunk map checked against what the live
//! chunkservers' inventories list, and every extent against the chunk map.
//! Read-only and leader-side (only the leader holds inventories). Stricter
//! than the healing pass about nodes: a piece on a suspect node does not
//! count, since the question is what could be read this moment. A piece a
//! live node has not listed yet counts for `MISSING_GRACE`, as for repair:
//! inventories learn of new pieces from the next heartbeat, so a file
//! written a moment ago is not reported unreadable.

use super::{Healing, MISSING_GRACE, NodeView, needed};
use crate::state::{ChunkState, State};
use std::collections::BTreeMap;
use std::time::Instant;
use tessera_proto::ids::{ChunkId, InodeId, NodeId, PieceId};
use tessera_proto::meta::{FsckChunk, FsckFile, FsckReply};

/// Chunks read from the map per page; the caller lets go of the state
/// between pages.
pub const CHUNK_PAGE: usize = 1024;
/// Extents read per page.
pub const EXTENT_PAGE: usize = 4096;
/// Directory entries read, in all, to name one file at risk.
const PATH_BUDGET: usize = 100_000;
/// Bytes of paths in one reply, far inside a frame.
const PATH_BYTES_MAX: usize = 32 * 1024;

/// A fsck in progress.
pub struct Fsck {
    pub report: FsckReply,
    limit: usize,
    /// Chunks whose bytes are at risk, and why.
    at_risk: BTreeMap<ChunkId, &'static str>,
    next_chunk: ChunkId,
    after_extent: Option<(InodeId, u64)>,
    last_file: Option<InodeId>,
    path_bytes: usize,
}

impl Fsck {
    pub fn new(limit: usize) -> Fsck {
        Fsck {
            report: FsckReply {
                inventories_complete: true,
                ..FsckReply::default()
            },
            limit,
            at_risk: BTreeMap::new(),
            next_chunk: ChunkId(0),
            after_extent: None,
            last_file: None,
            path_bytes: 0,
        }
    }

    /// Checks the next page of the chunk map; true once it has seen the
    /// last chunk.
    pub fn chunks_page(
        &mut self,
        state: &State,
        views: &BTreeMap<NodeId, NodeView>,
        healing: &Healing,
        now: Instant,
    ) -> bool {
        if views.values().any(|v| v.alive() && v.inventory.is_none()) {
            self.report.inventories_complete = false;
        }
        let page = state.chunks_from(self.next_chunk, CHUNK_PAGE);
        let done = page.len() < CHUNK_PAGE;
        if let Some((last, _)) = page.last() {
            self.next_chunk = ChunkId(last.0.saturating_add(1));
        }
        for (chunk, record) in &page {
            if !matches!(record.state, ChunkState::Committed { .. }) {
                continue;
            }
            self.report.chunks += 1;
            let width = record.nodes.len();
            let need = needed(record.policy);
            let held = record
                .nodes
                .iter()
                .enumerate()
                .filter(|(index, node)| {
                    let piece = PieceId {
                        chunk: *chunk,
                        index: *index as u8,
                    };
                    views.get(node).is_some_and(|v| {
                        v.alive()
                            && (v.inventory.is_none_or(|inv| inv.contains(&piece))
                                || healing
                                    .absent_since
                                    .get(&(**node, piece))
                                    .is_none_or(|since| {
                                        now.saturating_duration_since(*since) < MISSING_GRACE
                                    }))
                    })
                })
                .count();
            let mut problems = Vec::new();
            if held < need {
                self.report.unreadable += 1;
                self.report.under_replicated += 1;
                self.at_risk.insert(*chunk, "unreadable");
                problems.push("unreadable");
            } else if held < width {
                self.report.under_replicated += 1;
                if held == need {
                    self.report.last_margin += 1;
                    self.at_risk.insert(*chunk, "last margin");
                    problems.push("last margin");
                } else {
                    problems.push("under-replicated");
                }
            }
            if state.ns.chunk_refs(*chunk) == 0 {
                self.report.orphaned_chunks += 1;
                problems.push("orphaned");
            }
            for problem in problems {
                let entry = FsckChunk {
                    chunk: *chunk,
                    policy: record.policy,
                    held: held as u32,
                    width: width as u32,
                    needed: need as u32,
                    problem: problem.into(),
                };
                self.push_chunk(entry);
            }
        }
        done
    }

    fn push_chunk(&mut self, entry: FsckChunk) {
        if self.report.chunk_list.len() < self.limit {
            self.report.chunk_list.push(entry);
        } else {
            self.report.truncated = true;
        }
    }

    /// Checks the next page of extents against the chunk map and the
    /// chunks found at risk; true once it has seen the last extent.
    pub fn extents_page(&mut self, state: &State) -> bool {
        let page = state.ns.extents_after(self.after_extent, EXTENT_PAGE);
        let done = page.len() < EXTENT_PAGE;
        if let Some((ino, extent)) = page.last() {
            self.after_extent = Some((*ino, extent.offset));
        }
        for (ino, extent) in &page {
            self.report.extents += 1;
            let committed = state
                .chunk_once(extent.chunk)
                .is_some_and(|r| matches!(r.state, ChunkState::Committed { .. }));
            let problem = if !committed {
                self.report.dangling_extents += 1;
                "missing from the chunk map"
            } else if let Some(why) = self.at_risk.get(&extent.chunk) {
                why
            } else {
                continue;
            };
            // One entry per file: its first extent at risk.
            if self.last_file == Some(*ino) {
                continue;
            }
            self.last_file = Some(*ino);
            self.report.files_at_risk += 1;
            if self.report.file_list.len() >= self.limit || self.path_bytes >= PATH_BYTES_MAX {
                self.report.truncated = true;
                continue;
            }
            let path = state.ns.path_of(*ino, PATH_BUDGET);
            self.path_bytes += path.as_ref().map_or(0, String::len);
            self.report.file_list.push(FsckFile {
                ino: *ino,
                path,
                chunk: extent.chunk,
                problem: problem.into(),
            });
        }
        done
    }

    /// Pieces the inventories list but the map does not place, leaving out
    /// chunks a repair job is writing (their new pieces are reported before
    /// the job's end is committed).
    pub fn orphaned_pieces(
        &mut self,
        state: &State,
        orphans: impl Iterator<Item = (NodeId, PieceId)>,
    ) {
        for (node, piece) in orphans {
            if state.jobs.values().any(|j| j.chunk == piece.chunk) {
                continue;
            }
            let placed = state
                .chunk_once(piece.chunk)
                .is_some_and(|r| r.nodes.get(piece.index as usize) == Some(&node));
            if placed {
                continue;
            }
            self.report.orphaned_pieces += 1;
            if self.report.piece_list.len() < self.limit {
                self.report.piece_list.push((node, piece));
            } else {
                self.report.truncated = true;
            }
        }
    }
}
