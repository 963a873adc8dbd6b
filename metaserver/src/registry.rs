//! What the leader knows about chunkservers beyond the replicated node list:
//! liveness, space, load and reported inventories. Rebuilt from heartbeats
//! after a leader change (chunkservers re-register when a new leader answers
//! `NotLeader`), so it is not replicated. Placement decisions are made here
//! and then replicated as part of the allocation command.

use crate::state::{ChunkState, State};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use tessera_proto::chunk::{DiskReport, LoadReport, PieceInfo};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, NodeId, PieceId};
use tessera_proto::meta::Policy;

/// Entries of a node's piece index read at once while reconciling.
const RECONCILE_PAGE: usize = 4096;
/// A chunkserver silent for longer is dead for placement and reads.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);
/// An unknown piece is deleted only after this long, so a write still in
/// flight (sealed, not yet committed) is never collected under its writer.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(120);
/// A surplus piece of a committed chunk (its full set confirmed elsewhere)
/// waits this long, so readers holding the old layout finish first.
pub const SURPLUS_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct Live {
    pub last_seen: Instant,
    pub disks: Vec<DiskReport>,
    pub load: LoadReport,
    report: Option<u64>,
    collecting: BTreeSet<PieceId>,
    pub inventory: Option<BTreeSet<PieceId>>,
}

impl Live {
    pub fn free_bytes(&self) -> u64 {
        self.disks
            .iter()
            .map(|d| d.free_bytes.saturating_sub(d.reserve_bytes))
            .sum()
    }
    pub fn capacity_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.capacity_bytes).sum()
    }
    pub fn pieces(&self) -> u64 {
        self.disks.iter().map(|d| d.pieces).sum()
    }
}

#[derive(Default)]
pub struct Registry {
    pub live: BTreeMap<NodeId, Live>,
    /// Unknown pieces by node, with when they were first seen.
    orphans: BTreeMap<(NodeId, PieceId), Instant>,
}

/// Reports only matter for committed chunks: anything else is either still
/// being written or already on its way out.
fn is_committed(state: &State, chunk: ChunkId) -> bool {
    state
        .chunk(chunk)
        .is_some_and(|r| matches!(r.state, ChunkState::Committed { .. }))
}

impl Registry {
    pub fn heartbeat(
        &mut self,
        node: NodeId,
        disks: Vec<DiskReport>,
        load: LoadReport,
        now: Instant,
    ) {
        let entry = self.live.entry(node).or_insert_with(|| Live {
            last_seen: now,
            disks: Vec::new(),
            load: LoadReport::default(),
            report: None,
            collecting: BTreeSet::new(),
            inventory: None,
        });
        entry.last_seen = now;
        entry.disks = disks;
        entry.load = load;
    }

    pub fn is_alive(&self, node: NodeId, now: Instant) -> bool {
        self.live
            .get(&node)
            .is_some_and(|l| now.duration_since(l.last_seen) < LIVENESS_TIMEOUT)
    }

    /// Takes one page of an inventory report; the report replaces the last
    /// one when its final page arrives.
    pub fn inventory_page(
        &mut self,
        node: NodeId,
        report: u64,
        pieces: &[PieceInfo],
        last: bool,
        now: Instant,
    ) {
        self.heartbeat_touch(node, now);
        let Some(live) = self.live.get_mut(&node) else {
            return;
        };
        if live.report != Some(report) {
            live.report = Some(report);
            live.collecting.clear();
        }
        live.collecting.extend(pieces.iter().map(|p| p.piece));
        if last {
            live.inventory = Some(std::mem::take(&mut live.collecting));
        }
    }

    fn heartbeat_touch(&mut self, node: NodeId, now: Instant) {
        if !self.live.contains_key(&node) {
            self.heartbeat(node, Vec::new(), LoadReport::default(), now);
        }
        if let Some(live) = self.live.get_mut(&node) {
            live.last_seen = now;
        }
    }

    /// Chooses `policy.width()` distinct live nodes with room for a chunk:
    /// most free space first, lighter load breaking ties. When every live
    /// node carries a rack label, no two pieces share a rack. Nodes in
    /// `avoid` (a writer just saw them fail) are used only when the policy
    /// cannot be met without them.
    pub fn place(
        &self,
        state: &State,
        policy: Policy,
        chunk_bytes: u64,
        avoid: &[NodeId],
        now: Instant,
    ) -> Result<Vec<NodeId>, Error> {
        match self.place_among(state, policy, chunk_bytes, avoid, now) {
            Err(_) if !avoid.is_empty() => self.place_among(state, policy, chunk_bytes, &[], now),
            placed => placed,
        }
    }

    fn place_among(
        &self,
        state: &State,
        policy: Policy,
        chunk_bytes: u64,
        skip: &[NodeId],
        now: Instant,
    ) -> Result<Vec<NodeId>, Error> {
        let width = policy.width();
        let mut candidates: Vec<(NodeId, &Live, String)> = self
            .live
            .iter()
            .filter(|(node, live)| {
                now.duration_since(live.last_seen) < LIVENESS_TIMEOUT
                    && state.nodes.contains_key(node)
                    && state.admin_state(**node).is_none()
                    && !skip.contains(node)
            })
            .filter(|(_, live)| live.free_bytes() >= chunk_bytes)
            .map(|(node, live)| {
                (
                    *node,
                    live,
                    state
                        .nodes
                        .get(node)
                        .map(|r| r.labels.rack.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        candidates.sort_by(|a, b| {
            b.1.free_bytes()
                .cmp(&a.1.free_bytes())
                .then(
                    (a.1.load.writes_in_flight + a.1.load.reads_in_flight)
                        .cmp(&(b.1.load.writes_in_flight + b.1.load.reads_in_flight)),
                )
                .then(a.0.cmp(&b.0))
        });
        let racks_known =
            !candidates.is_empty() && candidates.iter().all(|(_, _, rack)| !rack.is_empty());
        let mut chosen = Vec::new();
        let mut racks_used = BTreeSet::new();
        for (node, _, rack) in &candidates {
            if chosen.len() == width {
                break;
            }
            if racks_known && !racks_used.insert(rack.clone()) {
                continue;
            }
            chosen.push(*node);
        }
        if chosen.len() < width {
            // A leader learns of chunkservers from their heartbeats: just
            // after an election it has heard from few of them. Registered
            // servers it has not heard from at all may well be alive, so the
            // caller is told to retry rather than that space ran out.
            let unheard = state
                .nodes
                .keys()
                .filter(|node| {
                    !self.live.contains_key(node)
                        && !skip.contains(node)
                        && state.admin_state(**node).is_none()
                })
                .count();
            if unheard > 0 && !racks_known && candidates.len() + unheard >= width {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    format!(
                        "this metaserver has not heard yet from {unheard} registered chunkservers (a new leader learns of them from their next heartbeat); try again"
                    ),
                ));
            }
            let alive = self
                .live
                .values()
                .filter(|l| now.duration_since(l.last_seen) < LIVENESS_TIMEOUT)
                .count();
            let what = if racks_known {
                format!("{} distinct racks", racks_used.len())
            } else {
                format!("{} live chunkservers", candidates.len())
            };
            return Err(Error::new(
                ErrorCode::NoSpace,
                format!(
                    "policy {policy} needs {width} chunkservers{} with {chunk_bytes} bytes free; only {what} qualify ({alive} alive). Add chunkservers or choose a narrower policy",
                    if racks_known {
                        " in distinct racks"
                    } else {
                        ""
                    }
                ),
            ));
        }
        Ok(chosen)
    }

    /// Remembers pieces that inventories list but the chunk map does not
    /// place there (leftovers of deletions, moves and uncommitted writes).
    /// Each inventory is walked beside the map's index of the node's
    /// pieces, both in id order, so the map is read in pages rather than
    /// once per piece.
    pub fn reconcile(&mut self, state: &State, now: Instant) {
        for (node, live) in &self.live {
            let Some(inventory) = &live.inventory else {
                continue;
            };
            let mut placed: Vec<(ChunkId, Vec<u8>)> = Vec::new();
            let mut at = 0;
            // Whether `placed` covers every chunk up to its last entry
            // from where it was read.
            let mut read_from = None;
            for piece in inventory {
                while at < placed.len() && placed[at].0 < piece.chunk {
                    at += 1;
                }
                let covered = read_from.is_some_and(|from: ChunkId| from <= piece.chunk)
                    && (at < placed.len() || placed.len() < RECONCILE_PAGE);
                if !covered {
                    placed = state.chunks_on(*node, piece.chunk, RECONCILE_PAGE);
                    read_from = Some(piece.chunk);
                    at = 0;
                }
                let known = placed.get(at).is_some_and(|(chunk, indexes)| {
                    *chunk == piece.chunk && indexes.contains(&piece.index)
                });
                if !known {
                    self.orphans.entry((*node, *piece)).or_insert(now);
                }
            }
        }
        self.orphans.retain(|(node, piece), _| {
            state
                .chunk_once(piece.chunk)
                .is_none_or(|r| r.nodes.get(piece.index as usize) != Some(node))
        });
    }

    /// Pieces inventories list that the map did not place when last
    /// reconciled (fsck reads them; deletion waits for their grace).
    pub fn orphans(&self) -> impl Iterator<Item = (NodeId, PieceId)> + '_ {
        self.orphans.keys().copied()
    }

    /// Adds and removes pieces a heartbeat reported, so the inventory stays
    /// current between full reports.
    pub fn inventory_changes(&mut self, node: NodeId, added: &[PieceId], removed: &[PieceId]) {
        if let Some(inventory) = self.live.get_mut(&node).and_then(|l| l.inventory.as_mut()) {
            inventory.extend(added.iter().copied());
            for piece in removed {
                inventory.remove(piece);
            }
        }
    }

    /// Whether every piece of a committed chunk sits, per a current
    /// inventory, on a live node the map places it on: only then may a
    /// surplus copy go.
    fn full_set_confirmed(&self, state: &State, chunk: ChunkId, now: Instant) -> bool {
        let Some(record) = state.chunk(chunk) else {
            return true;
        };
        record.nodes.iter().enumerate().all(|(index, node)| {
            let piece = PieceId {
                chunk,
                index: index as u8,
            };
            self.is_alive(*node, now)
                && state.admin_state(*node).is_none()
                && self
                    .live
                    .get(node)
                    .and_then(|l| l.inventory.as_ref())
                    .is_some_and(|inv| inv.contains(&piece))
        })
    }

    /// Orphans on `node` older than the grace period, to delete now. A
    /// surplus piece of a committed chunk (the old copy after a move, or a
    /// node back from a partition whose pieces were rebuilt meanwhile) goes
    /// only once the full set is confirmed elsewhere, so a move never drops
    /// a chunk below its policy.
    pub fn expired_orphans(&mut self, state: &State, node: NodeId, now: Instant) -> Vec<PieceId> {
        let expired: Vec<PieceId> = self
            .orphans
            .iter()
            .filter(|((n, _), _)| *n == node)
            .filter(|((_, piece), seen)| {
                let age = now.duration_since(**seen);
                // A job's new piece is reported before the job's end is
                // committed; it is not a leftover.
                if state.jobs.values().any(|j| j.chunk == piece.chunk) {
                    return false;
                }
                if is_committed(state, piece.chunk) {
                    age >= SURPLUS_GRACE && self.full_set_confirmed(state, piece.chunk, now)
                } else {
                    age >= ORPHAN_GRACE
                }
            })
            .map(|((_, piece), _)| *piece)
            .collect();
        for piece in &expired {
            self.orphans.remove(&(node, *piece));
            if let Some(inventory) = self.live.get_mut(&node).and_then(|l| l.inventory.as_mut()) {
                inventory.remove(piece);
            }
        }
        expired
    }
}
