//! Inventory changes between heartbeats: pieces sealed and pieces deleted
//! since the metaserver last heard from this node.
//!
//! The leader learns a node's inventory once, in full, at registration;
//! after that it relies on these deltas, so a piece sealed by a client write,
//! a copy or a rebuild is placeable (and a deleted one is forgotten) within a
//! heartbeat rather than at the next full report.
//!
//! Only the latest state of a piece is kept: a piece sealed and deleted
//! before the next heartbeat is reported as removed alone, one deleted and
//! sealed again as added with its new checksum. So a heartbeat never carries
//! both for one piece, the order the leader applies them in cannot matter,
//! and memory stays at one entry per changed piece. Each direction is
//! reported oldest first, at most `max` per heartbeat, so a burst (a drain
//! landing on this node) drains over several heartbeats without starving
//! older changes.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use tessera_proto::chunk::PieceInfo;
use tessera_proto::ids::PieceId;

/// Pending changes kept at most; past this (a node cut off from every
/// metaserver for a long time, or run without one) they are dropped and
/// the node registers again, since a full inventory supersedes them.
pub const CHANGES_PENDING_MAX: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Added(PieceInfo),
    Removed,
}

/// Changes one heartbeat carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<PieceInfo>,
    pub removed: Vec<PieceId>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The pending changes. Not synchronised: the store keeps it under its lock.
#[derive(Default)]
pub struct ChangeLog {
    /// The latest change of each piece not yet taken.
    latest: HashMap<PieceId, Change>,
    /// Pieces in the order they were first added since their last report;
    /// an entry whose latest change is no longer an addition is skipped.
    added: VecDeque<PieceId>,
    removed: VecDeque<PieceId>,
    overflowed: bool,
}

impl ChangeLog {
    pub fn sealed(&mut self, info: PieceInfo) {
        let previous = self.latest.insert(info.piece, Change::Added(info));
        if !matches!(previous, Some(Change::Added(_))) {
            self.added.push_back(info.piece);
        }
        self.check_size();
    }

    pub fn removed(&mut self, piece: PieceId) {
        let previous = self.latest.insert(piece, Change::Removed);
        if previous != Some(Change::Removed) {
            self.removed.push_back(piece);
        }
        self.check_size();
    }

    /// A quarantined piece is reported as corrupt; an addition still pending
    /// would tell the leader the opposite in the same heartbeat.
    pub fn quarantined(&mut self, piece: PieceId) {
        if let Some(Change::Added(_)) = self.latest.get(&piece) {
            self.latest.remove(&piece);
        }
    }

    fn check_size(&mut self) {
        let queued = self.added.len() + self.removed.len();
        if self.latest.len() > CHANGES_PENDING_MAX || queued > 2 * CHANGES_PENDING_MAX {
            self.clear();
            self.overflowed = true;
        }
    }

    /// Takes the oldest changes, at most `max` each way.
    pub fn take(&mut self, max: usize) -> Changes {
        let mut out = Changes::default();
        while out.added.len() < max {
            let Some(piece) = self.added.pop_front() else {
                break;
            };
            if let Some(Change::Added(info)) = self.latest.get(&piece).copied() {
                self.latest.remove(&piece);
                out.added.push(info);
            }
        }
        while out.removed.len() < max {
            let Some(piece) = self.removed.pop_front() else {
                break;
            };
            if let Some(Change::Removed) = self.latest.get(&piece) {
                self.latest.remove(&piece);
                out.removed.push(piece);
            }
        }
        out
    }

    /// Puts back changes a failed heartbeat could not deliver, ahead of
    /// newer ones. A piece that changed again meanwhile keeps its newer
    /// state.
    pub fn restore(&mut self, changes: Changes) {
        for info in changes.added.into_iter().rev() {
            if let Entry::Vacant(entry) = self.latest.entry(info.piece) {
                entry.insert(Change::Added(info));
                self.added.push_front(info.piece);
            }
        }
        for piece in changes.removed.into_iter().rev() {
            if let Entry::Vacant(entry) = self.latest.entry(piece) {
                entry.insert(Change::Removed);
                self.removed.push_front(piece);
            }
        }
    }

    /// Drops every pending change: a full inventory report follows.
    pub fn clear(&mut self) {
        self.latest.clear();
        self.added.clear();
        self.removed.clear();
    }

    /// Whether changes were dropped for lack of room since the last call.
    pub fn take_overflowed(&mut self) -> bool {
        std::mem::take(&mut self.overflowed)
    }

    /// Pieces with a change pending.
    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::ids::ChunkId;

    fn id(n: u64) -> PieceId {
        PieceId {
            chunk: ChunkId(n),
            index: 0,
        }
    }

    fn info(n: u64, sum: u8) -> PieceInfo {
        PieceInfo {
            piece: id(n),
            length: n,
            checksum: [sum; 32],
        }
    }

    #[test]
    fn only_the_latest_state_of_a_piece_is_reported() {
        let mut log = ChangeLog::default();
        log.sealed(info(1, 1));
        log.removed(id(1));
        log.sealed(info(2, 1));
        log.removed(id(2));
        log.sealed(info(2, 2));
        log.removed(id(3));
        let taken = log.take(10);
        assert_eq!(taken.added, vec![info(2, 2)]);
        assert_eq!(taken.removed, vec![id(1), id(3)]);
        assert!(log.is_empty());
        assert_eq!(log.take(10), Changes::default());
    }

    #[test]
    fn a_bounded_take_leaves_the_rest_oldest_first() {
        let mut log = ChangeLog::default();
        for n in (0..10).rev() {
            log.sealed(info(n, 0));
            log.removed(id(100 + n));
        }
        let first = log.take(4);
        let ids: Vec<u64> = first.added.iter().map(|i| i.piece.chunk.0).collect();
        assert_eq!(ids, vec![9, 8, 7, 6]);
        assert_eq!(first.removed.len(), 4);
        assert_eq!(log.len(), 12);
        let rest = log.take(100);
        assert_eq!(rest.added.len(), 6);
        assert_eq!(rest.removed.len(), 6);
    }

    #[test]
    fn restored_changes_go_first_unless_superseded() {
        let mut log = ChangeLog::default();
        log.sealed(info(1, 1));
        log.sealed(info(2, 1));
        log.removed(id(3));
        let taken = log.take(10);
        // While the heartbeat is out: piece 2 is deleted, piece 4 sealed.
        log.removed(id(2));
        log.sealed(info(4, 1));
        log.restore(taken);
        let again = log.take(10);
        assert_eq!(again.added, vec![info(1, 1), info(4, 1)]);
        assert_eq!(again.removed, vec![id(3), id(2)]);
    }

    #[test]
    fn quarantine_cancels_a_pending_addition() {
        let mut log = ChangeLog::default();
        log.sealed(info(1, 1));
        log.quarantined(id(1));
        log.removed(id(2));
        log.quarantined(id(2));
        let taken = log.take(10);
        assert!(taken.added.is_empty());
        assert_eq!(taken.removed, vec![id(2)]);
    }

    #[test]
    fn clear_drops_changes_and_overflow_is_flagged_once() {
        let mut log = ChangeLog::default();
        log.sealed(info(1, 1));
        log.clear();
        assert!(log.take(10).is_empty());
        assert!(!log.take_overflowed());
        for n in 0..=CHANGES_PENDING_MAX as u64 {
            log.removed(id(n));
        }
        assert!(log.take_overflowed());
        assert!(!log.take_overflowed());
        assert!(log.len() < 2);
    }
}
