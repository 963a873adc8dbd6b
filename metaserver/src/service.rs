//! The metaserver's RPC service: the client API, the chunkserver contract,
//! the admin calls and Raft traffic between members.
//!
//! Writes become commands proposed through the [`Batcher`]; reads are served
//! from the applied state after `ensure_linearizable` confirms this member
//! still leads. Followers answer both with `NotLeader` and the leader's
//! address, which clients follow.

// openraft's error types are large by design and fixed by its traits.
#![allow(clippy::result_large_err)]

mod heal;
mod locks;
mod sessions;

pub use sessions::Sessions;

use crate::batcher::{Batcher, LeaderAddress};
use crate::healing::{Healing, NodeView};
use crate::metrics::MetaMetrics;
use crate::network::{
    self, AppendReply, RaftAppend, RaftSnapshot, RaftVote, SnapshotReply, VoteReply,
};
use crate::registry::Registry;
use crate::sm_store::Shared;
use crate::types::{Applied, Command, Raft};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::chunk::{
    ChunkCommand, Heartbeat, HeartbeatReply, InventoryReport, RegisterChunkserver, RegisterReply,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::ids::{NodeId, PieceId};
use tessera_proto::lock::WaitLock;
use tessera_proto::meta::{
    AddMember, ChunkPlacement, ChunkserverStatus, FSCK_LIST_MAX, FileKind, Fsck, MemberStatus,
    MetaCall, MetaOp, MetaReply, NamespaceTotals, NodeAdmin, RemoveMember, RepairQueue, StatFs,
    Status, StatusReply,
};
use tessera_proto::rpc::{Call, Service};
use tessera_proto::session::{
    CloseSession, ListSessions, OpenSession, RenewSession, SessionCall, SessionId,
};
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
    /// Leader only: when each session last renewed.
    pub sessions: Mutex<Sessions>,
    /// Bumped after every command that may grant a queued lock, to wake
    /// the `WaitLock` calls held here.
    pub lock_events: tokio::sync::watch::Sender<u64>,
}

use tessera_proto::token::unix_now_ns as now_ns;

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
            | MetaOp::ListFragmented { .. }
            | MetaOp::GetLayout { .. }
            | MetaOp::StatFs
            | MetaOp::ListAccessKeys
            | MetaOp::GetAccessKey { .. }
            | MetaOp::ListScopedAccessKeys
            | MetaOp::GetScopedAccessKey { .. }
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
        let wakes = locks::may_grant(&command);
        let result = self.batcher.propose(command).await;
        if wakes {
            self.lock_events.send_modify(|n| *n = n.wrapping_add(1));
        }
        result
    }

    /// A client call, counted and timed by operation and outcome.
    async fn measured(
        &self,
        call: MetaCall,
        session: Option<SessionId>,
    ) -> Result<MetaReply, Error> {
        let name = call.op.name();
        let started = Instant::now();
        let result = self.meta_call(call, session).await;
        let code = match &result {
            Ok(_) => "ok".to_string(),
            Err(e) => format!("{:?}", e.code),
        };
        self.metrics.ops.with_label_values(&[name, &code]).inc();
        self.metrics
            .op_seconds
            .with_label_values(&[name])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// A client call, under `session` when the client holds one: reads
    /// and placements check the session is live; mutations are checked as
    /// they apply, so a session that ends first fences them.
    async fn meta_call(
        &self,
        call: MetaCall,
        session: Option<SessionId>,
    ) -> Result<MetaReply, Error> {
        if let MetaOp::GetLock { ino, request } = &call.op {
            self.linearize().await?;
            let session = session.ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    "locks belong to a session: open one first",
                )
            })?;
            self.require_session(session)?;
            let holder = self.shared.read().get_lock(session, *ino, request)?;
            return Ok(MetaReply::LockHolder(holder));
        }
        if is_read(&call.op) {
            self.linearize().await?;
            if let Some(id) = session {
                self.require_session(id)?;
            }
            return self.read(&call.op);
        }
        if let Some(id) = session
            && matches!(
                call.op,
                MetaOp::AllocateChunk { .. } | MetaOp::ReportPieces { .. }
            )
        {
            self.require_session(id)?;
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
            MetaOp::OpenRead {
                ino,
                length,
                register,
            } => {
                let attr = if register {
                    let opened = Box::pin(self.meta_call(
                        MetaCall {
                            request_id: call.request_id,
                            op: MetaOp::Open { ino },
                        },
                        session,
                    ))
                    .await?;
                    match opened {
                        MetaReply::Attr(attr) => attr,
                        other => return Err(Error::internal(format!("open replied {other:?}"))),
                    }
                } else {
                    self.linearize().await?;
                    if let Some(id) = session {
                        self.require_session(id)?;
                    }
                    self.shared.read().ns.attr(ino)?
                };
                // Applied here before the proposal returned: the layout is
                // at least as new as the open.
                let layout = match attr.kind {
                    FileKind::File => Some(Box::new(self.read(&MetaOp::GetLayout {
                        ino,
                        offset: 0,
                        length,
                    })?)),
                    _ => None,
                };
                Ok(MetaReply::Opened { attr, layout })
            }
            op => match self
                .propose(match session {
                    Some(session) => Command::SessionClient {
                        request_id: call.request_id,
                        session,
                        op,
                        now_ns: now_ns(),
                    },
                    None => Command::Client {
                        request_id: call.request_id,
                        op,
                        now_ns: now_ns(),
                    },
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
                let inline = state.ns.inline_bytes(*ino);
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
                    inline,
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
            MetaOp::ListAccessKeys
            | MetaOp::GetAccessKey { .. }
            | MetaOp::ListScopedAccessKeys
            | MetaOp::GetScopedAccessKey { .. } => self.shared.read().read_keys(op),
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

    pub(crate) fn status(&self) -> StatusReply {
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
        // From the guard already held: a second read lock could wait behind
        // a queued writer that waits for the first, and both would hang.
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
            namespace: namespace_totals(&state),
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
                let result = self.measured(message, None).await;
                call.respond(&result?, 0).await
            }
            SessionCall::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Gateway], SessionCall::NAME)?;
                let message: SessionCall = call.decode()?;
                let session = message.session;
                let message = MetaCall {
                    request_id: message.request_id,
                    op: message.op,
                };
                let result = self.measured(message, Some(session)).await;
                call.respond(&result?, 0).await
            }
            OpenSession::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Gateway], OpenSession::NAME)?;
                let message: OpenSession = call.decode()?;
                let reply = self.open_session(message).await?;
                call.respond(&reply, 0).await
            }
            RenewSession::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Gateway], RenewSession::NAME)?;
                let message: RenewSession = call.decode()?;
                self.renew_session(message.id).await?;
                call.respond(&(), 0).await
            }
            ListSessions::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Meta], ListSessions::NAME)?;
                let _: ListSessions = call.decode()?;
                let reply = self.list_sessions()?;
                call.respond(&reply, 0).await
            }
            CloseSession::ID => {
                call.peer().require_role(
                    &[Role::Client, Role::Gateway, Role::Meta],
                    CloseSession::NAME,
                )?;
                let message: CloseSession = call.decode()?;
                self.close_session(message).await?;
                call.respond(&(), 0).await
            }
            WaitLock::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Gateway], WaitLock::NAME)?;
                let message: WaitLock = call.decode()?;
                let reply = self.wait_lock(message).await?;
                call.respond(&reply, 0).await
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
            Fsck::ID => {
                call.peer()
                    .require_role(&[Role::Client, Role::Meta], Fsck::NAME)?;
                let message: Fsck = call.decode()?;
                let reply = self.fsck(message.limit.min(FSCK_LIST_MAX) as usize).await?;
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
            SessionCall::ID => SessionCall::NAME,
            OpenSession::ID => OpenSession::NAME,
            RenewSession::ID => RenewSession::NAME,
            ListSessions::ID => ListSessions::NAME,
            CloseSession::ID => CloseSession::NAME,
            WaitLock::ID => WaitLock::NAME,
            Status::ID => Status::NAME,
            AddMember::ID => AddMember::NAME,
            RemoveMember::ID => RemoveMember::NAME,
            NodeAdmin::ID => NodeAdmin::NAME,
            RepairQueue::ID => RepairQueue::NAME,
            Fsck::ID => Fsck::NAME,
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
            service.sessions().reset();
        }
        sessions::expire(&service, now).await;
        heal::heal(&service, now).await;
        passes += 1;
        if !passes.is_multiple_of(5) {
            continue;
        }
        service.observe_locks();
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

fn namespace_totals(state: &crate::state::State) -> NamespaceTotals {
    NamespaceTotals {
        inodes: state.ns.inode_count(),
        file_bytes: state
            .ns
            .dir_totals(InodeId::ROOT)
            .map_or(0, |totals| totals.bytes),
    }
}
