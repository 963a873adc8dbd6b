//! The metaserver's RPC service: the client API, the chunkserver contract,
//! the admin calls and Raft traffic between members.
//!
//! Writes become commands proposed through the [`Batcher`]; reads are served
//! from the applied state after `ensure_linearizable` confirms this member
//! still leads. Followers answer both with `NotLeader` and the leader's
//! address, which clients follow.

// openraft's error types are large by design and fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::batcher::{Batcher, LeaderAddress};
use crate::healing::{Healing, NodeView, piece_length, queued_view};
use crate::metrics::MetaMetrics;
use crate::network::{
    self, AppendReply, RaftAppend, RaftSnapshot, RaftVote, SnapshotReply, VoteReply,
};
use crate::registry::Registry;
use crate::sm_store::Shared;
use crate::state::{JobSource, NodeAdminState, RepairJob, State};
use crate::types::{Applied, Command, Raft};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::chunk::{
    ChunkCommand, CopyPiece, Heartbeat, HeartbeatReply, InventoryReport, JobResult, PieceSource,
    PieceTarget, RebuildPieces, RegisterChunkserver, RegisterReply,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{NodeId, PieceId};
use tessera_proto::meta::{
    AddMember, ChunkPlacement, ChunkserverStatus, MemberStatus, MetaCall, MetaOp, MetaReply,
    NodeAction, NodeAdmin, NodeAdminReply, Policy, RemoveMember, RepairJobInfo, RepairQueue,
    RepairQueueReply, StatFs, Status, StatusReply,
};
use tessera_proto::rpc::{Call, Service};
use tessera_proto::tls::Role;
use tessera_proto::token::{Capability, Rights, TokenKey, unix_now_ms};
use tessera_proto::wire::Method;

/// Tokens handed to clients live this long; a writer asks again for longer
/// work.
pub const TOKEN_TTL_MS: u64 = 10 * 60 * 1000;
/// Size a placement must leave room for.
pub use tessera_proto::meta::CHUNK_BYTES;
/// Pieces one `ReportPieces` call may name.
const REPORTED_PIECES_MAX: usize = 1024;
/// Deletions sent per heartbeat reply.
const DELETIONS_PER_HEARTBEAT: usize = 512;

pub struct MetaService {
    pub raft: Raft,
    pub node_id: u64,
    pub shared: Arc<Shared>,
    pub batcher: Batcher,
    pub registry: Arc<Mutex<Registry>>,
    pub healing: Arc<Mutex<Healing>>,
    pub token_key: TokenKey,
    pub metrics: MetaMetrics,
    pub leader_address: LeaderAddress,
    pub heartbeat_interval_ms: u64,
    pub contacts: crate::network::Contacts,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

fn is_read(op: &MetaOp) -> bool {
    matches!(
        op,
        MetaOp::Lookup { .. }
            | MetaOp::GetAttr { .. }
            | MetaOp::Readlink { .. }
            | MetaOp::Readdir { .. }
            | MetaOp::ReaddirPlus { .. }
            | MetaOp::ReaddirXattr { .. }
            | MetaOp::GetXattr { .. }
            | MetaOp::ListXattr { .. }
            | MetaOp::GetXattrs { .. }
            | MetaOp::GetPolicy { .. }
            | MetaOp::GetLayout { .. }
            | MetaOp::StatFs
            | MetaOp::ListAccessKeys
            | MetaOp::GetAccessKey { .. }
    )
}

impl MetaService {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lock order: the state, then the registry, then healing.
    fn healing(&self) -> std::sync::MutexGuard<'_, Healing> {
        self.healing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Confirms leadership (and waits until this member applied everything
    /// committed before the call), or redirects.
    async fn linearize(&self) -> Result<(), Error> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::ForwardToLeader(forward),
            )) => {
                let address = forward
                    .leader_node
                    .map(|n| n.addr)
                    .or_else(|| forward.leader_id.and_then(|id| (self.leader_address)(id)));
                Err(Error::not_leader(address))
            }
            Err(err) => Err(Error::new(
                ErrorCode::Unavailable,
                format!("no quorum: {err}"),
            )),
        }
    }

    /// Redirects unless this member believes it leads; cheap check for calls
    /// that are then proposed (the proposal itself is the real check).
    fn leader_hint(&self) -> Result<(), Error> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader == Some(self.node_id) {
            Ok(())
        } else {
            Err(Error::not_leader(
                metrics
                    .current_leader
                    .and_then(|id| (self.leader_address)(id)),
            ))
        }
    }

    fn mint(&self, placement: &mut ChunkPlacement, rights: Rights) {
        placement.token = self.token_key.mint(Capability {
            chunk: placement.chunk,
            rights,
            expires_at_ms: unix_now_ms() + TOKEN_TTL_MS,
        });
    }

    async fn propose(&self, command: Command) -> Result<Applied, Error> {
        self.batcher.propose(command).await
    }

    async fn meta_call(&self, call: MetaCall) -> Result<MetaReply, Error> {
        if is_read(&call.op) {
            self.linearize().await?;
            return self.read(&call.op);
        }
        match call.op {
            MetaOp::ReportPieces { pieces } => {
                self.leader_hint()?;
                if pieces.len() > REPORTED_PIECES_MAX {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "{} pieces in one report; send at most {REPORTED_PIECES_MAX}",
                            pieces.len()
                        ),
                    ));
                }
                // Repair acts on what chunkservers report (inventories,
                // quarantines) and on liveness; a client's report is a
                // symptom seen from one side, logged for operators.
                tracing::warn!(?pieces, "client reported bad or unreachable pieces");
                self.metrics.pieces_reported.inc_by(pieces.len() as u64);
                Ok(MetaReply::Done)
            }
            MetaOp::AllocateChunk { ino, exclude } => {
                self.leader_hint()?;
                let (policy, nodes) = {
                    let state = self.shared.read();
                    let policy = state.ns.policy_of(ino)?;
                    let nodes = self.registry().place(
                        &state,
                        policy,
                        CHUNK_BYTES / policy_data_width(policy),
                        &exclude,
                        Instant::now(),
                    )?;
                    (policy, nodes)
                };
                let applied = self
                    .propose(Command::Allocate {
                        request_id: call.request_id,
                        ino,
                        policy,
                        nodes,
                        now_ns: now_ns(),
                    })
                    .await?;
                match applied {
                    Applied::Meta(MetaReply::Chunk(mut placement)) => {
                        self.mint(&mut placement, Rights::READ.union(Rights::WRITE));
                        Ok(MetaReply::Chunk(placement))
                    }
                    other => Err(Error::internal(format!("allocation replied {other:?}"))),
                }
            }
            op => match self
                .propose(Command::Client {
                    request_id: call.request_id,
                    op,
                    now_ns: now_ns(),
                })
                .await?
            {
                Applied::Meta(reply) => Ok(reply),
                other => Err(Error::internal(format!("client call replied {other:?}"))),
            },
        }
    }

    fn read(&self, op: &MetaOp) -> Result<MetaReply, Error> {
        match op {
            MetaOp::GetLayout {
                ino,
                offset,
                length,
            } => {
                let state = self.shared.read();
                let (size, extents) = state.ns.layout(*ino, *offset, *length)?;
                let chunks: BTreeSet<_> = extents.iter().map(|e| e.chunk).collect();
                let mut placements = Vec::new();
                for chunk in chunks {
                    if let Some(mut placement) = state.placement(chunk) {
                        self.mint(&mut placement, Rights::READ);
                        placements.push(placement);
                    }
                }
                Ok(MetaReply::Layout {
                    size,
                    extents,
                    chunks: placements,
                })
            }
            MetaOp::StatFs => {
                let inodes = self.shared.read().ns.inode_count();
                let registry = self.registry();
                let now = Instant::now();
                let (mut capacity, mut free) = (0u64, 0u64);
                for (node, live) in &registry.live {
                    if registry.is_alive(*node, now) {
                        capacity += live.capacity_bytes();
                        free += live.free_bytes();
                    }
                }
                Ok(MetaReply::StatFs(StatFs {
                    capacity_bytes: capacity,
                    free_bytes: free,
                    used_bytes: capacity.saturating_sub(free),
                    inodes,
                }))
            }
            MetaOp::ListAccessKeys | MetaOp::GetAccessKey { .. } => {
                self.shared.read().read_keys(op)
            }
            other => self.shared.read().ns.read(other),
        }
    }

    async fn register(&self, message: RegisterChunkserver) -> Result<RegisterReply, Error> {
        self.leader_hint()?;
        let applied = self
            .propose(Command::Register {
                name: message.name,
                address: message.address,
                labels: message.labels,
                now_ns: now_ns(),
            })
            .await?;
        let Applied::Node(node) = applied else {
            return Err(Error::internal("register replied without a node"));
        };
        self.registry()
            .heartbeat(node, message.disks, Default::default(), Instant::now());
        Ok(RegisterReply {
            node,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
        })
    }

    async fn heartbeat(&self, message: Heartbeat) -> Result<HeartbeatReply, Error> {
        self.leader_hint()?;
        let known = self.shared.read().nodes.contains_key(&message.node);
        if !known {
            return Ok(HeartbeatReply {
                commands: Vec::new(),
                register_again: true,
            });
        }
        let now = Instant::now();
        let node = message.node;
        let fresh = !self.registry().live.contains_key(&node);
        let running: BTreeSet<u64> = message.running.iter().copied().collect();
        {
            let mut registry = self.registry();
            registry.heartbeat(node, message.disks, message.load, now);
            let added: Vec<PieceId> = message.added.iter().map(|p| p.piece).collect();
            registry.inventory_changes(node, &added, &message.removed);
            registry.inventory_changes(node, &[], &message.corrupt);
        }
        if !message.corrupt.is_empty() {
            tracing::warn!(%node, pieces = ?message.corrupt, "chunkserver quarantined corrupt pieces");
            let mut healing = self.healing();
            for piece in &message.corrupt {
                healing.quarantined.insert((node, *piece));
                healing.mark_absent(node, *piece, now);
            }
        }
        for result in message.jobs {
            self.job_ended(node, result, now);
        }
        let state = self.shared.read();
        let deletions = state.deletions_for(node, DELETIONS_PER_HEARTBEAT);
        let orphans = self.registry().expired_orphans(&state, node, now);
        let mut pieces: Vec<PieceId> = deletions
            .iter()
            .map(|(chunk, index)| PieceId {
                chunk: *chunk,
                index: *index,
            })
            .collect();
        pieces.extend(orphans);
        let mut commands = Vec::new();
        if !pieces.is_empty() {
            commands.push(ChunkCommand::Delete(pieces));
        }
        commands.extend(self.job_commands(&state, node, &running, now));
        let drops = self.quarantine_drops(&state, node, now);
        if !drops.is_empty() {
            commands.push(ChunkCommand::DropQuarantined(drops));
        }
        drop(state);
        // The deletions are on their way (and deleting is idempotent): record
        // them so the chunk records can go.
        let mut gone: Vec<_> = deletions.iter().map(|(chunk, _)| *chunk).collect();
        gone.dedup();
        for chunk in gone {
            let batcher = self.batcher.clone();
            tokio::spawn(async move {
                let _ = batcher
                    .propose(Command::PiecesGone {
                        chunk,
                        nodes: vec![node],
                    })
                    .await;
            });
        }
        // A node the leader has not heard from since it took over sends its
        // inventory again.
        Ok(HeartbeatReply {
            commands,
            register_again: fresh,
        })
    }

    /// Takes a chunkserver's word that a job ended: the pieces it sealed
    /// (checked against the recorded checksums) replace the old ones in the
    /// chunk map once `FinishJob` commits.
    fn job_ended(&self, node: NodeId, result: JobResult, now: Instant) {
        let state = self.shared.read();
        let Some(job) = state.jobs.get(&result.job) else {
            return;
        };
        if job.executor != node || self.healing().finishing.contains(&result.job) {
            return;
        }
        let record = state.chunks.get(&job.chunk);
        let mut sealed = Vec::new();
        let mut bytes = 0;
        let mut registry = self.registry();
        for info in &result.sealed {
            let Some((index, target)) = job
                .pieces
                .iter()
                .find(|(i, _)| info.piece.chunk == job.chunk && *i == info.piece.index)
                .copied()
            else {
                continue;
            };
            let recorded = record.and_then(|r| r.checksum(index));
            if recorded.is_some_and(|c| c != info.checksum) {
                tracing::error!(job = result.job, piece = %info.piece, %target, "a rebuilt piece does not match the recorded checksum; not accepted");
                continue;
            }
            registry.inventory_changes(target, &[info.piece], &[]);
            sealed.push((index, target));
            bytes += info.length;
        }
        drop(registry);
        let kind = job.kind.name();
        let outcome = match (&result.error, sealed.len()) {
            (None, n) if n == job.pieces.len() => "ok",
            (_, 0) => "failed",
            _ => "partial",
        };
        if let Some(error) = &result.error {
            tracing::warn!(job = result.job, chunk = %job.chunk, kind, %node, %error, "repair job failed");
        } else {
            tracing::info!(job = result.job, chunk = %job.chunk, kind, %node, pieces = sealed.len(), "repair job done");
        }
        self.metrics
            .repair_jobs
            .with_label_values(&[kind, outcome])
            .inc();
        self.metrics
            .repair_bytes
            .with_label_values(&[kind])
            .inc_by(bytes);
        drop(state);
        {
            let mut healing = self.healing();
            healing.finishing.insert(result.job);
            healing.repaired(bytes, now);
        }
        let batcher = self.batcher.clone();
        let healing = self.healing.clone();
        let job = result.job;
        tokio::spawn(async move {
            let outcome = batcher.propose(Command::FinishJob { job, sealed }).await;
            let mut healing = healing.lock().unwrap_or_else(|p| p.into_inner());
            match outcome {
                Ok(_) => healing.forget_job(job),
                // Not committed (leadership lost?): the chunkserver reports
                // again to whoever leads.
                Err(_) => {
                    healing.finishing.remove(&job);
                }
            }
        });
    }

    /// The commands of jobs `node` executes that it is not running yet.
    fn job_commands(
        &self,
        state: &State,
        node: NodeId,
        running: &BTreeSet<u64>,
        now: Instant,
    ) -> Vec<ChunkCommand> {
        let mut out = Vec::new();
        let mut healing = self.healing();
        for (id, job) in &state.jobs {
            if job.executor != node || !healing.should_send(*id, running, now) {
                continue;
            }
            match self.job_command(state, *id, job) {
                Some(command) => out.push(command),
                None => {
                    tracing::warn!(job = id, chunk = %job.chunk, "job no longer describable; it will time out")
                }
            }
        }
        out
    }

    fn job_command(&self, state: &State, id: u64, job: &RepairJob) -> Option<ChunkCommand> {
        let record = state.chunks.get(&job.chunk)?;
        let crate::state::ChunkState::Committed { length } = record.state else {
            return None;
        };
        let address = |node: &NodeId| state.nodes.get(node).map(|r| r.address.clone());
        let expires_at_ms = unix_now_ms() + TOKEN_TTL_MS;
        match &job.source {
            JobSource::Copy { node, index } => {
                let (target_index, _) = *job.pieces.first()?;
                let checksum = record.checksum(target_index).or(match record.policy {
                    Policy::Replicas(_) => record.checksum(*index),
                    Policy::Ec { .. } => None,
                });
                Some(ChunkCommand::Copy(CopyPiece {
                    job: id,
                    piece: PieceId {
                        chunk: job.chunk,
                        index: target_index,
                    },
                    source_piece: PieceId {
                        chunk: job.chunk,
                        index: *index,
                    },
                    source: address(node)?,
                    source_token: self.token_key.mint(Capability {
                        chunk: job.chunk,
                        rights: Rights::READ,
                        expires_at_ms,
                    }),
                    length: piece_length(record.policy, length, target_index),
                    checksum,
                }))
            }
            JobSource::Rebuild { sources } => {
                let Policy::Ec { data, parity } = record.policy else {
                    return None;
                };
                Some(ChunkCommand::Rebuild(RebuildPieces {
                    job: id,
                    chunk: job.chunk,
                    data,
                    parity,
                    chunk_length: length,
                    sources: sources
                        .iter()
                        .filter_map(|(index, node)| {
                            Some(PieceSource {
                                index: *index,
                                address: address(node)?,
                            })
                        })
                        .collect(),
                    targets: job
                        .pieces
                        .iter()
                        .filter_map(|(index, node)| {
                            Some(PieceTarget {
                                index: *index,
                                address: address(node)?,
                                local: *node == job.executor,
                                checksum: record.checksum(*index),
                            })
                        })
                        .collect(),
                    token: self.token_key.mint(Capability {
                        chunk: job.chunk,
                        rights: Rights::READ.union(Rights::WRITE),
                        expires_at_ms,
                    }),
                }))
            }
        }
    }

    /// Quarantined copies on `node` whose piece is whole again (the map's
    /// holder lists it), so they may go.
    fn quarantine_drops(&self, state: &State, node: NodeId, now: Instant) -> Vec<PieceId> {
        let registry = self.registry();
        let mut healing = self.healing();
        let mine: Vec<PieceId> = healing
            .quarantined
            .iter()
            .filter(|(n, _)| *n == node)
            .map(|(_, p)| *p)
            .collect();
        let mut out = Vec::new();
        for piece in mine {
            let whole = match state.chunks.get(&piece.chunk) {
                Some(record)
                    if matches!(record.state, crate::state::ChunkState::Committed { .. }) =>
                {
                    record
                        .nodes
                        .get(piece.index as usize)
                        .is_some_and(|holder| {
                            registry.is_alive(*holder, now)
                                && registry
                                    .live
                                    .get(holder)
                                    .and_then(|l| l.inventory.as_ref())
                                    .is_some_and(|inv| inv.contains(&piece))
                        })
                }
                _ => true,
            };
            if whole {
                healing.quarantined.remove(&(node, piece));
                out.push(piece);
            }
        }
        out
    }

    fn status(&self) -> StatusReply {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let replication = metrics.replication.clone().unwrap_or_default();
        let contacts = self
            .contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                node: NodeId(*id),
                address: node.addr.clone(),
                role: if Some(*id) == metrics.current_leader {
                    "leader".into()
                } else if voters.contains(id) {
                    "follower".into()
                } else {
                    "learner".into()
                },
                last_contact_ms: if *id == self.node_id {
                    Some(0)
                } else {
                    contacts.get(id).map(|at| at.elapsed().as_millis() as u64)
                },
                matched_index: replication.get(id).and_then(|m| m.map(|l| l.index)).or(
                    if *id == self.node_id {
                        metrics.last_log_index
                    } else {
                        None
                    },
                ),
            })
            .collect();
        let state = self.shared.read();
        let registry = self.registry();
        let healing = self.healing();
        let now = Instant::now();
        let leads = metrics.current_leader == Some(self.node_id);
        let views = healing.views(&state, &registry, now);
        let chunkservers = state
            .nodes
            .iter()
            .map(|(node, record)| {
                let live = registry.live.get(node);
                ChunkserverStatus {
                    node: *node,
                    name: record.name.clone(),
                    address: record.address.clone(),
                    rack: record.labels.rack.clone(),
                    zone: record.labels.zone.clone(),
                    alive: registry.is_alive(*node, now),
                    state: views
                        .get(node)
                        .map(|v: &NodeView| v.state_name())
                        .unwrap_or("unknown")
                        .into(),
                    capacity_bytes: live.map(|l| l.capacity_bytes()).unwrap_or(0),
                    free_bytes: live.map(|l| l.free_bytes()).unwrap_or(0),
                    pieces: live.map(|l| l.pieces()).unwrap_or(0),
                    mapped_pieces: healing.last.mapped.get(node).copied().unwrap_or(0),
                    last_heartbeat_ms_ago: live
                        .map(|l| now.duration_since(l.last_seen).as_millis() as u64)
                        .unwrap_or(u64::MAX),
                }
            })
            .collect();
        let mut redundancy = healing.last.status.clone();
        redundancy.from_leader = leads;
        StatusReply {
            answered_by: NodeId(self.node_id),
            leader: metrics.current_leader.map(NodeId),
            term: metrics.current_term,
            commit_index: metrics.last_applied.map(|l| l.index),
            applied_index: self.shared.last_applied().map(|l| l.index),
            members,
            chunkservers,
            chunks_under_replicated: redundancy.degraded,
            redundancy,
        }
    }

    /// Drain, undrain, remove. Removal is refused while the node holds the
    /// only readable copies of anything.
    async fn node_admin(&self, message: NodeAdmin) -> Result<NodeAdminReply, Error> {
        self.leader_hint()?;
        let node = message.node;
        let (state_change, message) = match message.action {
            NodeAction::Drain => (
                Some(NodeAdminState::Drained),
                format!(
                    "draining chunkserver {node}: its pieces move elsewhere while it keeps serving reads; `tessera admin node list` shows what remains"
                ),
            ),
            NodeAction::Undrain => (None, format!("chunkserver {node} takes new pieces again")),
            NodeAction::Remove => {
                let (lost, mapped) = self.removal_loss(node);
                if lost > 0 {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "chunkserver {node} holds the only readable pieces of {lost} chunks ({mapped} pieces still mapped to it); removing it would lose them. Drain it first (`tessera admin node drain {node}`) and remove it once `tessera admin node list` shows nothing mapped"
                        ),
                    ));
                }
                (
                    Some(NodeAdminState::Removed),
                    if mapped == 0 {
                        format!("removed chunkserver {node}; it held nothing needed")
                    } else {
                        format!(
                            "removed chunkserver {node}; {mapped} pieces it held are rebuilt elsewhere"
                        )
                    },
                )
            }
        };
        match self
            .propose(Command::SetNodeAdmin {
                node,
                state: state_change,
            })
            .await?
        {
            Applied::Done => {}
            other => return Err(Error::internal(format!("node admin replied {other:?}"))),
        }
        tracing::info!(%node, action = ?message, "chunkserver state changed");
        Ok(NodeAdminReply { message })
    }

    /// Chunks that would become unreadable without `node`, and the pieces
    /// the map places on it.
    fn removal_loss(&self, node: NodeId) -> (u64, u64) {
        let state = self.shared.read();
        let registry = self.registry();
        let now = Instant::now();
        let (mut lost, mut mapped) = (0u64, 0u64);
        for (chunk, record) in &state.chunks {
            if !record.nodes.contains(&node) {
                continue;
            }
            mapped += record.nodes.iter().filter(|n| **n == node).count() as u64;
            if !matches!(record.state, crate::state::ChunkState::Committed { .. }) {
                continue;
            }
            let readable = record
                .nodes
                .iter()
                .enumerate()
                .filter(|(index, holder)| {
                    let piece = PieceId {
                        chunk: *chunk,
                        index: *index as u8,
                    };
                    **holder != node
                        && registry.is_alive(**holder, now)
                        && state.admin_state(**holder) != Some(NodeAdminState::Removed)
                        && registry
                            .live
                            .get(holder)
                            .and_then(|l| l.inventory.as_ref())
                            .is_none_or(|inv| inv.contains(&piece))
                })
                .count();
            if readable < crate::healing::needed(record.policy) {
                lost += 1;
            }
        }
        (lost, mapped)
    }

    fn repair_queue(&self, limit: usize) -> RepairQueueReply {
        let state = self.shared.read();
        let healing = self.healing();
        let now = now_ns();
        let running = state
            .jobs
            .iter()
            .map(|(id, job)| RepairJobInfo {
                job: *id,
                chunk: job.chunk,
                kind: job.kind.name().into(),
                pieces: job.pieces.iter().map(|(i, _)| *i).collect(),
                executor: job.executor,
                targets: job.pieces.iter().map(|(_, n)| *n).collect(),
                age_ms: (now.saturating_sub(job.started_ns).max(0) / 1_000_000) as u64,
            })
            .collect();
        RepairQueueReply {
            running,
            queued: queued_view(&state, &healing.last.queue, limit),
            queue_length: healing.last.queue.len() as u64,
            redundancy: healing.last.status.clone(),
        }
    }

    async fn add_member(&self, message: AddMember) -> Result<(), Error> {
        self.leader_hint()?;
        let node = openraft::BasicNode {
            addr: message.address.clone(),
        };
        self.raft
            .add_learner(message.node.0, node, true)
            .await
            .map_err(|e| crate::batcher::write_error(e, &self.leader_address))?;
        if message.voter {
            let metrics = self.raft.metrics().borrow().clone();
            let mut voters: BTreeSet<u64> =
                metrics.membership_config.membership().voter_ids().collect();
            voters.insert(message.node.0);
            self.raft
                .change_membership(voters, true)
                .await
                .map_err(|e| crate::batcher::write_error(e, &self.leader_address))?;
        }
        tracing::info!(node = %message.node, address = %message.address, voter = message.voter, "added metaserver member");
        Ok(())
    }

    async fn remove_member(&self, message: RemoveMember) -> Result<(), Error> {
        self.leader_hint()?;
        let metrics = self.raft.metrics().borrow().clone();
        let mut voters: BTreeSet<u64> =
            metrics.membership_config.membership().voter_ids().collect();
        if !voters.remove(&message.node.0)
            && !metrics
                .membership_config
                .membership()
                .nodes()
                .any(|(id, _)| *id == message.node.0)
        {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("{} is not a member", message.node),
            ));
        }
        if voters.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "cannot remove the last voter",
            ));
        }
        self.raft
            .change_membership(voters, false)
            .await
            .map_err(|e| crate::batcher::write_error(e, &self.leader_address))?;
        tracing::info!(node = %message.node, "removed metaserver member");
        Ok(())
    }

    async fn raft_call(&self, call: &mut Call) -> Result<(), Error> {
        call.peer().require_role(&[Role::Meta], "raft")?;
        let body = call
            .request_bulk()
            .to_vec(network::RAFT_MESSAGE_MAX_BYTES)
            .await?;
        let reply = match call.method() {
            RaftAppend::ID => {
                let reply: AppendReply = self
                    .raft
                    .append_entries(network::decode_request(&body)?)
                    .await;
                network::encode_reply(&reply)?
            }
            RaftVote::ID => {
                let reply: VoteReply = self.raft.vote(network::decode_request(&body)?).await;
                network::encode_reply(&reply)?
            }
            _ => {
                let reply: SnapshotReply = self
                    .raft
                    .install_snapshot(network::decode_request(&body)?)
                    .await;
                network::encode_reply(&reply)?
            }
        };
        call.respond(&(), reply.len() as u64).await?;
        call.response_bulk()?.write_bytes(reply.into()).await
    }
}

/// Data shards per piece: a piece of an `ec(k, m)` chunk holds 1/k of it.
fn policy_data_width(policy: tessera_proto::meta::Policy) -> u64 {
    match policy {
        tessera_proto::meta::Policy::Replicas(_) => 1,
        tessera_proto::meta::Policy::Ec { data, .. } => data.max(1) as u64,
    }
}

impl Service for MetaService {
    async fn handle(&self, call: &mut Call) -> Result<(), Error> {
        match call.method() {
            MetaCall::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Gateway, Role::Meta], MetaCall::NAME)?;
                let message: MetaCall = call.decode()?;
                let name = message.op.name();
                let started = Instant::now();
                let result = self.meta_call(message).await;
                let code = match &result {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("{:?}", e.code),
                };
                self.metrics.ops.with_label_values(&[name, &code]).inc();
                self.metrics
                    .op_seconds
                    .with_label_values(&[name])
                    .observe(started.elapsed().as_secs_f64());
                call.respond(&result?, 0).await
            }
            Status::ID => {
                let _: Status = call.decode()?;
                call.respond(&self.status(), 0).await
            }
            AddMember::ID => {
                call.peer().require_role(&[Role::Meta], AddMember::NAME)?;
                let message: AddMember = call.decode()?;
                self.add_member(message).await?;
                call.respond(&(), 0).await
            }
            RemoveMember::ID => {
                call.peer()
                    .require_role(&[Role::Meta], RemoveMember::NAME)?;
                let message: RemoveMember = call.decode()?;
                self.remove_member(message).await?;
                call.respond(&(), 0).await
            }
            NodeAdmin::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Meta], NodeAdmin::NAME)?;
                let message: NodeAdmin = call.decode()?;
                let reply = self.node_admin(message).await?;
                call.respond(&reply, 0).await
            }
            RepairQueue::ID => {
                let message: RepairQueue = call.decode()?;
                self.leader_hint()?;
                let reply = self.repair_queue(message.limit.min(10_000) as usize);
                call.respond(&reply, 0).await
            }
            RegisterChunkserver::ID => {
                call.peer()
                    .require_role(&[Role::Chunk], RegisterChunkserver::NAME)?;
                let message: RegisterChunkserver = call.decode()?;
                let reply = self.register(message).await?;
                call.respond(&reply, 0).await
            }
            Heartbeat::ID => {
                call.peer().require_role(&[Role::Chunk], Heartbeat::NAME)?;
                let message: Heartbeat = call.decode()?;
                let reply = self.heartbeat(message).await?;
                call.respond(&reply, 0).await
            }
            InventoryReport::ID => {
                call.peer()
                    .require_role(&[Role::Chunk], InventoryReport::NAME)?;
                let message: InventoryReport = call.decode()?;
                self.leader_hint()?;
                self.registry().inventory_page(
                    message.node,
                    message.report,
                    &message.pieces,
                    message.last,
                    Instant::now(),
                );
                call.respond(&(), 0).await
            }
            RaftAppend::ID | RaftVote::ID | RaftSnapshot::ID => self.raft_call(call).await,
            other => Err(Error::new(
                ErrorCode::UnknownMethod,
                format!("method {other} is not served by a metaserver"),
            )),
        }
    }

    fn method_name(&self, method: u16) -> &'static str {
        match method {
            MetaCall::ID => MetaCall::NAME,
            Status::ID => Status::NAME,
            AddMember::ID => AddMember::NAME,
            RemoveMember::ID => RemoveMember::NAME,
            NodeAdmin::ID => NodeAdmin::NAME,
            RepairQueue::ID => RepairQueue::NAME,
            RegisterChunkserver::ID => RegisterChunkserver::NAME,
            Heartbeat::ID => Heartbeat::NAME,
            InventoryReport::ID => InventoryReport::NAME,
            RaftAppend::ID => RaftAppend::NAME,
            RaftVote::ID => RaftVote::NAME,
            RaftSnapshot::ID => RaftSnapshot::NAME,
            _ => "unknown",
        }
    }
}

/// Background leader duties: healing (every second), reconciling
/// inventories with the chunk map and expiring uncommitted allocations
/// (every five), Raft metrics.
pub async fn leader_loop(
    service: Arc<MetaService>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut leading = false;
    let mut passes: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let metrics = service.raft.metrics().borrow().clone();
        service.metrics.observe_raft(&metrics);
        if metrics.current_leader != Some(service.node_id) {
            leading = false;
            continue;
        }
        let now = Instant::now();
        if !leading {
            // What an earlier leadership saw of chunkservers is stale: they
            // re-register with this leader and report their inventories.
            leading = true;
            service.registry().live.clear();
            service.healing().reset(now);
        }
        heal(&service, now).await;
        passes += 1;
        if !passes.is_multiple_of(5) {
            continue;
        }
        {
            let state = service.shared.read();
            service.registry().reconcile(&state, now);
        }
        let live = {
            let registry = service.registry();
            registry
                .live
                .keys()
                .filter(|n| registry.is_alive(**n, now))
                .count()
        };
        service.metrics.live_chunkservers.set(live as i64);
        let _ = service
            .batcher
            .propose(Command::ExpireAllocations { now_ns: now_ns() })
            .await;
    }
}

/// One healing pass: assess redundancy, abandon jobs that overran or lost
/// their executor, start new ones.
async fn heal(service: &MetaService, now: Instant) {
    let now_wall = now_ns();
    let (start, cancel) = {
        let state = service.shared.read();
        let registry = service.registry();
        let mut healing = service.healing();
        let views = healing.views(&state, &registry, now);
        let assessment = healing.assess(&state, &views, now);
        let timeout_ns = healing.settings.job_timeout_s as i64 * 1_000_000_000;
        let cancel: Vec<u64> = state
            .jobs
            .iter()
            .filter(|(id, job)| {
                let executor_gone = views.get(&job.executor).is_none_or(|v| {
                    v.health == crate::healing::NodeHealth::Down
                        || v.admin == Some(NodeAdminState::Removed)
                });
                !healing.finishing.contains(id)
                    && (executor_gone || now_wall - job.started_ns > timeout_ns)
            })
            .map(|(id, _)| *id)
            .collect();
        let start = healing.plan(&state, &views, &assessment, now_wall);
        let m = &service.metrics;
        m.under_replicated.set(assessment.status.degraded as i64);
        m.repair_queue.set(assessment.status.queue_length as i64);
        m.repair_running.set(state.jobs.len() as i64);
        m.chunks_by_margin.reset();
        for (margin, count) in &assessment.by_margin {
            m.chunks_by_margin
                .with_label_values(&[&margin.to_string()])
                .set(*count as i64);
        }
        m.drain_remaining.reset();
        for (node, view) in &views {
            if view.admin == Some(NodeAdminState::Drained) {
                m.drain_remaining
                    .with_label_values(&[&node.0.to_string()])
                    .set(assessment.mapped.get(node).copied().unwrap_or(0) as i64);
            }
        }
        healing.last = assessment;
        (start, cancel)
    };
    for job in cancel {
        let kind = service
            .shared
            .read()
            .jobs
            .get(&job)
            .map(|j| j.kind.name())
            .unwrap_or("repair");
        tracing::warn!(
            job,
            kind,
            "repair job overran or lost its chunkserver; planning it again"
        );
        service
            .metrics
            .repair_jobs
            .with_label_values(&[kind, "cancelled"])
            .inc();
        if service
            .propose(Command::FinishJob {
                job,
                sealed: Vec::new(),
            })
            .await
            .is_ok()
        {
            service.healing().forget_job(job);
        }
    }
    let proposals = start.into_iter().map(|job| async move {
        let kind = job.kind.name();
        let chunk = job.chunk;
        match service.propose(Command::StartJob { job }).await {
            Ok(Applied::Job(id)) => {
                tracing::debug!(job = id, %chunk, kind, "repair job started");
                service
                    .metrics
                    .repair_jobs
                    .with_label_values(&[kind, "started"])
                    .inc();
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(%chunk, error = %err, "repair job not started"),
        }
    });
    futures_util::future::join_all(proposals).await;
}
