//! Evening out disk use: the lowest priority of the leader's jobs, planned
//! only when nothing needs repair (docs/healing.md, "Rebalance").

use super::{Healing, MOVES_PER_PASS, NodeView, count_job, piece_length};
use crate::state::{ChunkState, JobKind, JobSource, RepairJob, State};
use std::collections::{BTreeMap, BTreeSet};

/// Chunks on the fullest node read at once while looking for one to move.
const MOVABLE_PAGE: usize = 1024;
use tessera_proto::ids::{ChunkId, NodeId, PieceId};

impl Healing {
    /// Moves pieces from the fullest to the emptiest placeable chunkserver
    /// while their use differs by more than the threshold. Use is counted
    /// from the chunk map, so a move counts at once (before the old copy's
    /// deletion shows on the disk) and passes do not overshoot. One move per
    /// node at a time: the lowest priority of all.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan_rebalance(
        &self,
        state: &State,
        views: &BTreeMap<NodeId, NodeView>,
        mapped_bytes: &BTreeMap<NodeId, u64>,
        busy: &mut BTreeSet<ChunkId>,
        incoming: &mut BTreeMap<NodeId, usize>,
        outgoing: &mut BTreeMap<NodeId, usize>,
        now_ns: i64,
    ) -> Vec<RepairJob> {
        let threshold = self.settings.rebalance_threshold_pct / 100.0;
        if threshold <= 0.0 {
            return Vec::new();
        }
        let mut used: BTreeMap<NodeId, (u64, u64)> = views
            .iter()
            .filter(|(_, v)| v.placeable() && v.capacity_bytes > 0 && v.inventory.is_some())
            .map(|(n, v)| {
                (
                    *n,
                    (mapped_bytes.get(n).copied().unwrap_or(0), v.capacity_bytes),
                )
            })
            .collect();
        let fraction = |(bytes, capacity): (u64, u64)| bytes as f64 / capacity as f64;
        let idle = |node: &NodeId, counts: &BTreeMap<NodeId, usize>| {
            counts.get(node).copied().unwrap_or(0) == 0
        };
        let mut out = Vec::new();
        while out.len() < MOVES_PER_PASS {
            let Some((full, _)) = used
                .iter()
                .filter(|(n, _)| idle(n, outgoing))
                .max_by(|a, b| fraction(*a.1).total_cmp(&fraction(*b.1)))
                .map(|(n, u)| (*n, *u))
            else {
                break;
            };
            let Some((empty, _)) = used
                .iter()
                .filter(|(n, _)| idle(n, incoming))
                .min_by(|a, b| fraction(*a.1).total_cmp(&fraction(*b.1)))
                .map(|(n, u)| (*n, *u))
            else {
                break;
            };
            if full == empty || fraction(used[&full]) - fraction(used[&empty]) <= threshold {
                break;
            }
            let Some((chunk, index, bytes)) = self.movable(state, views, busy, full, empty) else {
                break;
            };
            let job = RepairJob {
                chunk,
                kind: JobKind::Rebalance,
                pieces: vec![(index, empty)],
                executor: empty,
                source: JobSource::Copy { node: full, index },
                started_ns: now_ns,
            };
            busy.insert(chunk);
            count_job(&job, incoming, outgoing);
            if let Some(u) = used.get_mut(&full) {
                u.0 = u.0.saturating_sub(bytes);
            }
            if let Some(u) = used.get_mut(&empty) {
                u.0 += bytes;
            }
            out.push(job);
        }
        out
    }

    /// A committed, fully healthy chunk with a piece on `from` and none on
    /// `to` (and, when racks are known, none in `to`'s rack but the moving
    /// one), which `to` has room for.
    fn movable(
        &self,
        state: &State,
        views: &BTreeMap<NodeId, NodeView>,
        busy: &BTreeSet<ChunkId>,
        from: NodeId,
        to: NodeId,
    ) -> Option<(ChunkId, u8, u64)> {
        let target = views.get(&to)?;
        let mut next = ChunkId::default();
        loop {
            let page = state.chunks_on(from, next, MOVABLE_PAGE);
            let (last, _) = page.last()?;
            next = ChunkId(last.0.saturating_add(1));
            if let Some(found) = self.movable_in(state, views, busy, &page, from, to, target) {
                return Some(found);
            }
            if page.len() < MOVABLE_PAGE {
                return None;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn movable_in(
        &self,
        state: &State,
        views: &BTreeMap<NodeId, NodeView>,
        busy: &BTreeSet<ChunkId>,
        page: &[(ChunkId, Vec<u8>)],
        from: NodeId,
        to: NodeId,
        target: &NodeView,
    ) -> Option<(ChunkId, u8, u64)> {
        for (chunk, _) in page {
            if busy.contains(chunk) {
                continue;
            }
            let Some(record) = state.chunk_once(*chunk) else {
                continue;
            };
            let ChunkState::Committed { length } = record.state else {
                continue;
            };
            if record.nodes.contains(&to) {
                continue;
            }
            let Some(index) = record.nodes.iter().position(|n| *n == from) else {
                continue;
            };
            let healthy = record.nodes.iter().enumerate().all(|(i, n)| {
                let piece = PieceId {
                    chunk: *chunk,
                    index: i as u8,
                };
                views.get(n).is_some_and(|v| {
                    v.placeable() && v.inventory.is_some_and(|inv| inv.contains(&piece))
                })
            });
            if !healthy {
                continue;
            }
            if !target.rack.is_empty() {
                let clash = record
                    .nodes
                    .iter()
                    .any(|n| *n != from && views.get(n).is_some_and(|v| v.rack == target.rack));
                if clash {
                    continue;
                }
            }
            let bytes = piece_length(record.policy, length, index as u8);
            if target.free_bytes < bytes {
                continue;
            }
            return Some((*chunk, index as u8, bytes));
        }
        None
    }
}
