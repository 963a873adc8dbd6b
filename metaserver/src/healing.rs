//! Self-healing on the leader: which chunks lost redundancy, in what order
//! they are repaired, and which chunkserver does each job.
//!
//! Nothing here is replicated. The queue is recomputed on every pass from
//! the chunk map (replicated) and the chunkservers' inventories (reported to
//! the leader), so a new leader rebuilds it by itself; the jobs it decides on
//! are committed through Raft before a byte moves (`Command::StartJob`), so
//! a new leader carries them on instead of starting them again.
//!
//! A piece is *healthy* when its holder is alive, not drained or removed,
//! and holds it. A chunk's *margin* is its healthy pieces minus the pieces
//! it needs to be readable (1 for replicas, `k` for `ec(k, m)`): margin 0 is
//! one failure away from loss. A holder that merely went silent is given
//! `down_after` to come back (a restart or an upgrade costs no copying),
//! except for chunks already at margin 0, which are repaired at once.

use crate::registry::{LIVENESS_TIMEOUT, Registry};
use crate::state::{ChunkRecord, ChunkState, JobKind, JobSource, NodeAdminState, RepairJob, State};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};
use tessera_proto::ids::{ChunkId, NodeId, PieceId};
use tessera_proto::meta::{Policy, QueuedChunk, RedundancyRow, RedundancyStatus};
use tessera_proto::stripe::Geometry;

/// A piece a live chunkserver does not list yet may simply have been sealed
/// after its last report reached the leader; it counts as missing only
/// after this long.
pub const MISSING_GRACE: Duration = Duration::from_secs(15);
/// A job's command is sent again when its executor does not list it as
/// running for this long (the reply carrying it may have been lost).
const RESEND_AFTER: Duration = Duration::from_secs(10);
/// New jobs started per pass at most, so one pass stays short.
const JOBS_PER_PASS: usize = 256;
/// Chunks read from the map at once while assessing: one hold of the
/// state's read lock.
const ASSESS_PAGE: usize = 4096;
/// Rebalancing moves started per pass at most: the lowest priority, and
/// each one looks through the chunk map.
const MOVES_PER_PASS: usize = 16;

/// `[repair]` in the metaserver's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairSettings {
    /// Seconds a silent chunkserver is given before its pieces are rebuilt
    /// elsewhere (a restart or an upgrade should cost no copying).
    pub down_after_s: u64,
    /// Jobs a chunkserver takes part in at once, as receiver and as source
    /// each; chunkservers also cap their own repair bandwidth.
    pub jobs_per_node: usize,
    /// A job not reported done within this is abandoned and planned again.
    pub job_timeout_s: u64,
    /// Waiting this long counts as one step of margin, so chunks with more
    /// margin still progress while urgent ones keep arriving.
    pub ageing_s: u64,
    /// Pieces move from the fullest to the emptiest chunkserver while their
    /// use (the chunk map's bytes on them against their capacity) differs
    /// by more than this many percentage points; 0 turns rebalancing off.
    pub rebalance_threshold_pct: f64,
}

impl Default for RepairSettings {
    fn default() -> RepairSettings {
        RepairSettings {
            down_after_s: 600,
            jobs_per_node: 4,
            job_timeout_s: 900,
            ageing_s: 600,
            rebalance_threshold_pct: 10.0,
        }
    }
}

impl RepairSettings {
    pub fn validate(&self) -> Result<(), String> {
        if self.jobs_per_node == 0 {
            return Err("repair.jobs_per_node must be at least 1".into());
        }
        if self.job_timeout_s == 0 || self.ageing_s == 0 {
            return Err("repair.job_timeout_s and repair.ageing_s must be positive".into());
        }
        if !(0.0..=100.0).contains(&self.rebalance_threshold_pct) {
            return Err("repair.rebalance_threshold_pct is a percentage, 0 to 100".into());
        }
        Ok(())
    }
}

/// Pieces a chunk needs to be readable.
pub fn needed(policy: Policy) -> usize {
    match policy {
        Policy::Replicas(_) => 1,
        Policy::Ec { data, .. } => data as usize,
    }
}

/// Length of piece `index` of a chunk of `length` bytes.
pub fn piece_length(policy: Policy, length: u64, index: u8) -> u64 {
    match policy {
        Policy::Replicas(_) => length,
        Policy::Ec { data, parity } => {
            Geometry::new(data as usize, parity as usize).piece_len(length, index as usize)
        }
    }
}

/// How the leader sees one chunkserver on this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeHealth {
    Up,
    /// Missed heartbeats, still inside the grace period.
    Suspect,
    /// Silent for longer than the grace period.
    Down,
}

#[derive(Clone, Debug)]
pub struct NodeView<'a> {
    pub health: NodeHealth,
    pub admin: Option<NodeAdminState>,
    pub inventory: Option<&'a BTreeSet<PieceId>>,
    pub free_bytes: u64,
    pub capacity_bytes: u64,
    pub rack: String,
}

impl NodeView<'_> {
    fn alive(&self) -> bool {
        self.health == NodeHealth::Up && self.admin != Some(NodeAdminState::Removed)
    }
    fn placeable(&self) -> bool {
        self.health == NodeHealth::Up && self.admin.is_none()
    }
    pub fn state_name(&self) -> &'static str {
        match (self.admin, self.health) {
            (Some(NodeAdminState::Removed), _) => "removed",
            (Some(NodeAdminState::Drained), _) => "drained",
            (None, NodeHealth::Up) => "up",
            (None, NodeHealth::Suspect) => "suspect",
            (None, NodeHealth::Down) => "down",
        }
    }
}

/// One chunk that needs work, as the scheduler ranks it.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub chunk: ChunkId,
    pub margin: i32,
    pub available: usize,
    /// Indexes to rebuild or move, most urgent first.
    pub indexes: Vec<u8>,
    pub kind: JobKind,
    pub waiting: Duration,
    pub bytes: u64,
}

/// What one pass found.
#[derive(Clone, Debug, Default)]
pub struct Assessment {
    pub status: RedundancyStatus,
    /// In the order jobs are started.
    pub queue: Vec<Candidate>,
    /// Committed chunks by margin (`-1` stands for anything below 0).
    pub by_margin: BTreeMap<i32, u64>,
    /// Pieces the chunk map still places on each node.
    pub mapped: BTreeMap<NodeId, u64>,
    /// Bytes of committed pieces the chunk map places on each node.
    pub mapped_bytes: BTreeMap<NodeId, u64>,
}

/// A pass over the chunk map in progress: what it found so far, and the
/// chunk it goes on from. Holds only per-node totals and the chunks that
/// need work, never the map.
#[derive(Debug, Default)]
pub struct Pass {
    out: Assessment,
    rows: BTreeMap<(u8, u8, u8), RedundancyRow>,
    seen_absent: BTreeSet<(NodeId, PieceId)>,
    queued: BTreeSet<ChunkId>,
    next: ChunkId,
}

/// The leader's healing state, reset when leadership is taken.
pub struct Healing {
    pub settings: RepairSettings,
    since: Instant,
    queued_since: BTreeMap<ChunkId, Instant>,
    absent_since: BTreeMap<(NodeId, PieceId), Instant>,
    /// Pieces a chunkserver quarantined: missing at once, and their copies
    /// are dropped once the repair is committed.
    pub quarantined: BTreeSet<(NodeId, PieceId)>,
    /// When each job's command was last sent.
    sent: BTreeMap<u64, Instant>,
    /// Jobs whose end was reported and is being committed.
    pub finishing: BTreeSet<u64>,
    repaired: VecDeque<(Instant, u64)>,
    pub last: Assessment,
}

impl Healing {
    pub fn new(settings: RepairSettings, now: Instant) -> Healing {
        Healing {
            settings,
            since: now,
            queued_since: BTreeMap::new(),
            absent_since: BTreeMap::new(),
            quarantined: BTreeSet::new(),
            sent: BTreeMap::new(),
            finishing: BTreeSet::new(),
            repaired: VecDeque::new(),
            last: Assessment::default(),
        }
    }

    /// Starts over as a new leader: what the old leadership saw of
    /// chunkservers is stale.
    pub fn reset(&mut self, now: Instant) {
        let settings = self.settings.clone();
        *self = Healing::new(settings, now);
    }

    fn down_after(&self) -> Duration {
        Duration::from_secs(self.settings.down_after_s)
    }

    /// Records repaired bytes for the rate and the estimate.
    pub fn repaired(&mut self, bytes: u64, now: Instant) {
        self.repaired.push_back((now, bytes));
        while self
            .repaired
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > Duration::from_secs(60))
        {
            self.repaired.pop_front();
        }
    }

    fn rate(&self, now: Instant) -> f64 {
        let bytes: u64 = self.repaired.iter().map(|(_, b)| *b).sum();
        if bytes == 0 {
            return 0.0;
        }
        let window = self
            .repaired
            .front()
            .map(|(at, _)| now.duration_since(*at))
            .unwrap_or_default()
            .max(Duration::from_secs(5))
            .min(Duration::from_secs(60));
        bytes as f64 / window.as_secs_f64()
    }

    /// Whether a job's command should be (re)sent to its executor now.
    pub fn should_send(&mut self, job: u64, running: &BTreeSet<u64>, now: Instant) -> bool {
        if running.contains(&job) || self.finishing.contains(&job) {
            self.sent.insert(job, now);
            return false;
        }
        match self.sent.get(&job) {
            Some(at) if now.duration_since(*at) < RESEND_AFTER => false,
            _ => {
                self.sent.insert(job, now);
                true
            }
        }
    }

    pub fn forget_job(&mut self, job: u64) {
        self.sent.remove(&job);
        self.finishing.remove(&job);
    }

    /// A piece reported gone from a live node counts as missing at once.
    pub fn mark_absent(&mut self, node: NodeId, piece: PieceId, now: Instant) {
        let at = now.checked_sub(MISSING_GRACE).unwrap_or(now);
        self.absent_since.insert((node, piece), at);
    }

    pub fn views<'a>(
        &self,
        state: &State,
        registry: &'a Registry,
        now: Instant,
    ) -> BTreeMap<NodeId, NodeView<'a>> {
        state
            .nodes
            .iter()
            .map(|(node, record)| {
                let live = registry.live.get(node);
                let last = live
                    .map(|l| l.last_seen.max(self.since))
                    .unwrap_or(self.since);
                let silent = now.saturating_duration_since(last);
                let heard =
                    live.is_some_and(|l| now.duration_since(l.last_seen) < LIVENESS_TIMEOUT);
                let health = if heard {
                    NodeHealth::Up
                } else if silent >= self.down_after() {
                    NodeHealth::Down
                } else {
                    NodeHealth::Suspect
                };
                (
                    *node,
                    NodeView {
                        health,
                        admin: state.admin_state(*node),
                        inventory: live.and_then(|l| l.inventory.as_ref()),
                        free_bytes: live.map(|l| l.free_bytes()).unwrap_or(0),
                        capacity_bytes: live.map(|l| l.capacity_bytes()).unwrap_or(0),
                        rack: record.labels.rack.clone(),
                    },
                )
            })
            .collect()
    }

    /// Looks at every committed chunk at once: the redundancy table, and
    /// the queue of chunks that need a job, most urgent first.
    pub fn assess(
        &mut self,
        state: &State,
        views: &BTreeMap<NodeId, NodeView>,
        now: Instant,
    ) -> Assessment {
        let mut pass = Pass::default();
        while !self.assess_page(&mut pass, state, views, now) {}
        self.finish_pass(pass, state, now)
    }

    /// Looks at the next page of chunks of a pass; true once the pass has
    /// seen the last chunk. Between pages the caller may let go of the
    /// state, so a pass over millions of chunks never holds it for long.
    pub fn assess_page(
        &mut self,
        pass: &mut Pass,
        state: &State,
        views: &BTreeMap<NodeId, NodeView>,
        now: Instant,
    ) -> bool {
        let page = state.chunks_from(pass.next, ASSESS_PAGE);
        let done = page.len() < ASSESS_PAGE;
        if let Some((last, _)) = page.last() {
            pass.next = ChunkId(last.0.saturating_add(1));
        }
        for (chunk, record) in &page {
            self.assess_chunk(pass, *chunk, record, views, now);
        }
        done
    }

    fn assess_chunk(
        &mut self,
        pass: &mut Pass,
        chunk: ChunkId,
        record: &ChunkRecord,
        views: &BTreeMap<NodeId, NodeView>,
        now: Instant,
    ) {
        let out = &mut pass.out;
        for node in &record.nodes {
            *out.mapped.entry(*node).or_default() += 1;
        }
        let ChunkState::Committed { length } = record.state else {
            return;
        };
        for (index, node) in record.nodes.iter().enumerate() {
            *out.mapped_bytes.entry(*node).or_default() +=
                piece_length(record.policy, length, index as u8);
        }
        let look = self.look(chunk, record, views, now, &mut pass.seen_absent);
        let width = record.nodes.len();
        let need = needed(record.policy);
        let margin = look.healthy as i32 - need as i32;
        let key = match record.policy {
            Policy::Replicas(n) => (0, n, 0),
            Policy::Ec { data, parity } => (1, data, parity),
        };
        let row = pass.rows.entry(key).or_insert_with(|| RedundancyRow {
            policy: record.policy,
            needed: need as u32,
            chunks: vec![0; width + 1],
        });
        if let Some(slot) = row.chunks.get_mut(look.healthy.min(width)) {
            *slot += 1;
        }
        out.status.chunks += 1;
        *out.by_margin.entry(margin.max(-1)).or_default() += 1;
        if look.healthy < width {
            out.status.degraded += 1;
            if margin == 0 {
                out.status.endangered += 1;
            }
        }
        if look.available < need {
            out.status.unavailable += 1;
        }
        if look.healthy == width && shares_rack(record, views) {
            out.status.misplaced += 1;
        }
        // Suspect holders are waited for unless the chunk is at its
        // last margin.
        let mut indexes: Vec<(u8, u8)> = look
            .pieces
            .iter()
            .filter_map(|(index, why)| match why {
                Want::Now(rank) => Some((*rank, *index)),
                Want::IfUrgent if margin <= 0 => Some((3, *index)),
                _ => None,
            })
            .collect();
        if indexes.is_empty() {
            return;
        }
        indexes.sort();
        let kind = if look
            .pieces
            .iter()
            .all(|(_, w)| matches!(w, Want::Now(2) | Want::No))
        {
            JobKind::Drain
        } else {
            JobKind::Repair
        };
        pass.queued.insert(chunk);
        let since = *self.queued_since.entry(chunk).or_insert(now);
        let bytes = indexes
            .iter()
            .map(|(_, i)| piece_length(record.policy, length, *i))
            .sum();
        out.queue.push(Candidate {
            chunk,
            margin,
            available: look.available,
            indexes: indexes.into_iter().map(|(_, i)| i).collect(),
            kind,
            waiting: now.duration_since(since),
            bytes,
        });
    }

    /// Ends a pass: ranks the queue and fills in the totals.
    pub fn finish_pass(&mut self, pass: Pass, state: &State, now: Instant) -> Assessment {
        let Pass {
            mut out,
            rows,
            seen_absent,
            queued,
            ..
        } = pass;
        self.absent_since.retain(|key, _| seen_absent.contains(key));
        self.queued_since.retain(|chunk, _| queued.contains(chunk));
        let ageing = self.settings.ageing_s.max(1) as f64;
        let rank = |c: &Candidate| c.margin as f64 - c.waiting.as_secs_f64() / ageing;
        out.queue
            .sort_by(|a, b| rank(a).total_cmp(&rank(b)).then(a.chunk.cmp(&b.chunk)));
        out.status.rows = rows.into_values().collect();
        out.status.queue_length = out.queue.len() as u64;
        out.status.jobs_running = state.jobs.len() as u64;
        out.status.repair_bytes_per_s = self.rate(now);
        let remaining: u64 = out.queue.iter().map(|c| c.bytes).sum();
        out.status.eta_s = (remaining > 0 && out.status.repair_bytes_per_s > 0.0)
            .then(|| (remaining as f64 / out.status.repair_bytes_per_s).ceil() as u64);
        out.status.from_leader = true;
        out
    }

    fn look(
        &mut self,
        chunk: ChunkId,
        record: &ChunkRecord,
        views: &BTreeMap<NodeId, NodeView>,
        now: Instant,
        seen_absent: &mut BTreeSet<(NodeId, PieceId)>,
    ) -> Look {
        let mut look = Look::default();
        for (index, holder) in record.nodes.iter().enumerate() {
            let index = index as u8;
            let piece = PieceId { chunk, index };
            let Some(view) = views.get(holder) else {
                look.pieces.push((index, Want::Now(0)));
                continue;
            };
            if view.admin == Some(NodeAdminState::Removed) {
                look.pieces.push((index, Want::Now(0)));
                continue;
            }
            if !view.alive() {
                look.pieces.push((
                    index,
                    if view.health == NodeHealth::Down {
                        Want::Now(1)
                    } else {
                        Want::IfUrgent
                    },
                ));
                continue;
            }
            let listed = view.inventory.is_none_or(|inv| inv.contains(&piece));
            let has = listed || {
                let since = *self.absent_since.entry((*holder, piece)).or_insert(now);
                seen_absent.insert((*holder, piece));
                now.duration_since(since) < MISSING_GRACE
            };
            if !has {
                look.pieces.push((index, Want::Now(0)));
                continue;
            }
            look.available += 1;
            if view.admin == Some(NodeAdminState::Drained) {
                look.pieces.push((index, Want::Now(2)));
                continue;
            }
            look.healthy += 1;
            look.pieces.push((index, Want::No));
        }
        look
    }

    /// Chooses jobs for the queue's head within the per-node limits.
    pub fn plan(
        &self,
        state: &State,
        views: &BTreeMap<NodeId, NodeView>,
        assessment: &Assessment,
        now_ns: i64,
    ) -> Vec<RepairJob> {
        let queue = &assessment.queue;
        let mut incoming: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut outgoing: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut busy: BTreeSet<ChunkId> = BTreeSet::new();
        for job in state.jobs.values() {
            busy.insert(job.chunk);
            count_job(job, &mut incoming, &mut outgoing);
        }
        let mut out = Vec::new();
        // An urgent chunk held back only by the per-node limits keeps the
        // slots it waits for from going to chunks with more margin.
        let mut held_at: Option<i32> = None;
        for candidate in queue {
            if out.len() >= JOBS_PER_PASS {
                break;
            }
            if held_at.is_some_and(|m| candidate.margin > m) {
                continue;
            }
            if busy.contains(&candidate.chunk) {
                continue;
            }
            let Some(record) = state.chunk_once(candidate.chunk) else {
                continue;
            };
            let ChunkState::Committed { length } = record.state else {
                continue;
            };
            if candidate.available < needed(record.policy) {
                continue;
            }
            let job = match record.policy {
                Policy::Replicas(_) => {
                    self.plan_copy(&record, views, candidate, &incoming, &outgoing, length)
                }
                Policy::Ec { .. } => {
                    self.plan_ec(&record, views, candidate, &incoming, &outgoing, length)
                }
            };
            match job {
                Some(mut job) => {
                    job.started_ns = now_ns;
                    busy.insert(candidate.chunk);
                    count_job(&job, &mut incoming, &mut outgoing);
                    out.push(job);
                }
                None if candidate.margin <= 0 => {
                    held_at = Some(held_at.map_or(candidate.margin, |m| m.min(candidate.margin)));
                }
                None => {}
            }
        }
        // Evening out comes last, and only when nothing needs repair.
        if queue.is_empty() {
            out.extend(self.plan_rebalance(
                state,
                views,
                &assessment.mapped_bytes,
                &mut busy,
                &mut incoming,
                &mut outgoing,
                now_ns,
            ));
        }
        out
    }

    /// Holders of `record` that can serve piece bytes (alive and listing
    /// the piece), by index.
    fn sources(
        &self,
        chunk: ChunkId,
        record: &ChunkRecord,
        views: &BTreeMap<NodeId, NodeView>,
    ) -> Vec<(u8, NodeId)> {
        record
            .nodes
            .iter()
            .enumerate()
            .filter(|(index, node)| {
                let piece = PieceId {
                    chunk,
                    index: *index as u8,
                };
                views.get(node).is_some_and(|v| {
                    v.alive()
                        && v.inventory.is_none_or(|inv| inv.contains(&piece))
                        && !self.quarantined.contains(&(**node, piece))
                })
            })
            .map(|(index, node)| (index as u8, *node))
            .collect()
    }

    fn plan_copy(
        &self,
        record: &ChunkRecord,
        views: &BTreeMap<NodeId, NodeView>,
        candidate: &Candidate,
        incoming: &BTreeMap<NodeId, usize>,
        outgoing: &BTreeMap<NodeId, usize>,
        length: u64,
    ) -> Option<RepairJob> {
        let limit = self.settings.jobs_per_node;
        let index = *candidate.indexes.first()?;
        let sources = self.sources(candidate.chunk, record, views);
        let (source_index, source) = sources
            .iter()
            .filter(|(_, node)| outgoing.get(node).copied().unwrap_or(0) < limit)
            .min_by_key(|(i, node)| (outgoing.get(node).copied().unwrap_or(0), *i != index))
            .copied()?;
        let target = choose_targets(record, views, &[index], incoming, limit, length)?
            .into_iter()
            .next()?;
        Some(RepairJob {
            chunk: candidate.chunk,
            kind: candidate.kind,
            pieces: vec![(index, target)],
            executor: target,
            source: JobSource::Copy {
                node: source,
                index: source_index,
            },
            started_ns: 0,
        })
    }

    fn plan_ec(
        &self,
        record: &ChunkRecord,
        views: &BTreeMap<NodeId, NodeView>,
        candidate: &Candidate,
        incoming: &BTreeMap<NodeId, usize>,
        outgoing: &BTreeMap<NodeId, usize>,
        length: u64,
    ) -> Option<RepairJob> {
        let limit = self.settings.jobs_per_node;
        let sources = self.sources(candidate.chunk, record, views);
        let piece_bytes = piece_length(record.policy, length, 0);
        // A piece whose holder still serves it (a drain) is copied as is:
        // one read instead of k.
        if let [index] = candidate.indexes.as_slice()
            && let Some((_, holder)) = sources.iter().find(|(i, _)| i == index)
            && outgoing.get(holder).copied().unwrap_or(0) < limit
        {
            let target = choose_targets(record, views, &[*index], incoming, limit, piece_bytes)?
                .into_iter()
                .next()?;
            return Some(RepairJob {
                chunk: candidate.chunk,
                kind: candidate.kind,
                pieces: vec![(*index, target)],
                executor: target,
                source: JobSource::Copy {
                    node: *holder,
                    index: *index,
                },
                started_ns: 0,
            });
        }
        let readable: Vec<(u8, NodeId)> = sources
            .iter()
            .filter(|(i, _)| !candidate.indexes.contains(i))
            .copied()
            .collect();
        if readable.len() < needed(record.policy) {
            return None;
        }
        let targets = choose_targets(
            record,
            views,
            &candidate.indexes,
            incoming,
            limit,
            piece_bytes,
        )?;
        let pieces: Vec<(u8, NodeId)> = candidate.indexes.iter().copied().zip(targets).collect();
        let executor = pieces.first()?.1;
        Some(RepairJob {
            chunk: candidate.chunk,
            kind: candidate.kind,
            pieces,
            executor,
            source: JobSource::Rebuild { sources: readable },
            started_ns: 0,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Healthy.
    No,
    /// Now, with a rank: 0 missing or corrupt on a live node or removed,
    /// 1 holder down, 2 holder drained.
    Now(u8),
    /// Only if the chunk is at its last margin (holder suspect).
    IfUrgent,
}

#[derive(Default)]
struct Look {
    healthy: usize,
    available: usize,
    pieces: Vec<(u8, Want)>,
}

fn count_job(
    job: &RepairJob,
    incoming: &mut BTreeMap<NodeId, usize>,
    outgoing: &mut BTreeMap<NodeId, usize>,
) {
    for (_, target) in &job.pieces {
        *incoming.entry(*target).or_default() += 1;
    }
    match &job.source {
        JobSource::Copy { node, .. } => *outgoing.entry(*node).or_default() += 1,
        JobSource::Rebuild { sources } => {
            for (_, node) in sources {
                *outgoing.entry(*node).or_default() += 1;
            }
        }
    }
}

/// Whether two pieces of a fully healthy chunk share a rack while every
/// holder has a rack label.
fn shares_rack(record: &ChunkRecord, views: &BTreeMap<NodeId, NodeView>) -> bool {
    let racks: Vec<&str> = record
        .nodes
        .iter()
        .filter_map(|n| views.get(n).map(|v| v.rack.as_str()))
        .collect();
    if racks.len() != record.nodes.len() || racks.iter().any(|r| r.is_empty()) {
        return false;
    }
    let distinct: BTreeSet<&str> = racks.iter().copied().collect();
    distinct.len() < racks.len()
}

/// New homes for pieces `indexes` of a chunk: placeable nodes under their
/// job limit with room, holding no other piece of the chunk (a holder may
/// take back its own piece when it lost it), in distinct racks from the
/// other pieces when every candidate has a rack label; most free first.
fn choose_targets(
    record: &ChunkRecord,
    views: &BTreeMap<NodeId, NodeView>,
    indexes: &[u8],
    incoming: &BTreeMap<NodeId, usize>,
    limit: usize,
    piece_bytes: u64,
) -> Option<Vec<NodeId>> {
    let others: BTreeSet<NodeId> = record
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| !indexes.contains(&(*i as u8)))
        .map(|(_, n)| *n)
        .collect();
    let mut candidates: Vec<(&NodeId, &NodeView)> = views
        .iter()
        .filter(|(node, view)| {
            view.placeable()
                && !others.contains(node)
                && incoming.get(node).copied().unwrap_or(0) < limit
                && view.free_bytes >= piece_bytes
        })
        .collect();
    candidates.sort_by(|a, b| b.1.free_bytes.cmp(&a.1.free_bytes).then(a.0.cmp(b.0)));
    let racks_known = candidates.iter().all(|(_, v)| !v.rack.is_empty());
    let mut racks_used: BTreeSet<String> = if racks_known {
        others
            .iter()
            .filter_map(|n| views.get(n).map(|v| v.rack.clone()))
            .collect()
    } else {
        BTreeSet::new()
    };
    let mut chosen = Vec::new();
    for (node, view) in candidates {
        if chosen.len() == indexes.len() {
            break;
        }
        if racks_known && !racks_used.insert(view.rack.clone()) {
            continue;
        }
        chosen.push(*node);
    }
    (!chosen.is_empty()).then_some(chosen)
}

/// The queue's head as `tessera admin repair` shows it.
pub fn queued_view(state: &State, queue: &[Candidate], limit: usize) -> Vec<QueuedChunk> {
    queue
        .iter()
        .take(limit)
        .filter_map(|c| {
            let record = state.chunk_once(c.chunk)?;
            Some(QueuedChunk {
                chunk: c.chunk,
                policy: record.policy,
                margin: c.margin,
                pieces: c.indexes.clone(),
                kind: c.kind.name().into(),
                waiting_ms: c.waiting.as_millis() as u64,
            })
        })
        .collect()
}

pub mod fsck;
mod rebalance;
#[cfg(test)]
mod tests;
