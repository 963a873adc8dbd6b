//! The leader's healing duties on the service: the pass every second,
//! jobs handed out and ended through heartbeats, quarantined copies
//! dropped, and the operator's calls (drain, undrain, remove, the repair
//! queue). What to repair and where is decided in [`crate::healing`].

use super::{MetaService, TOKEN_TTL_MS, now_ns};
use crate::healing::fsck::Fsck;
use crate::healing::{Pass, piece_length, queued_view};
use crate::state::{JobSource, NodeAdminState, RepairJob, State};
use crate::types::{Applied, Command};
use std::collections::BTreeSet;
use std::time::Instant;
use tessera_proto::chunk::{
    ChunkCommand, CopyPiece, JobResult, PieceSource, PieceTarget, RebuildPieces,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, NodeId, PieceId};
use tessera_proto::meta::{
    FsckReply, NodeAction, NodeAdmin, NodeAdminReply, Policy, RepairJobInfo, RepairQueueReply,
};
use tessera_proto::token::{Capability, Rights, unix_now_ms};

/// Chunks a removal's loss estimate reads at once.
const REMOVAL_PAGE: usize = 4096;

impl MetaService {
    /// Takes a chunkserver's word that a job ended: the pieces it sealed
    /// (checked against the recorded checksums) replace the old ones in the
    /// chunk map once `FinishJob` commits.
    pub(super) fn job_ended(&self, node: NodeId, result: JobResult, now: Instant) {
        let state = self.shared.read();
        let Some(job) = state.jobs.get(&result.job) else {
            return;
        };
        if job.executor != node || self.healing().finishing.contains(&result.job) {
            return;
        }
        let record = state.chunk(job.chunk);
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
            let recorded = record.as_ref().and_then(|r| r.checksum(index));
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
    pub(super) fn job_commands(
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
        let record = state.chunk(job.chunk)?;
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
    pub(super) fn quarantine_drops(
        &self,
        state: &State,
        node: NodeId,
        now: Instant,
    ) -> Vec<PieceId> {
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
            let whole = match state.chunk(piece.chunk) {
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

    /// Drain, undrain, remove. Removal is refused while the node holds the
    /// only readable copies of anything.
    pub(super) async fn node_admin(&self, message: NodeAdmin) -> Result<NodeAdminReply, Error> {
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
        let mut next = ChunkId::default();
        loop {
            let page = state.chunks_on(node, next, REMOVAL_PAGE);
            for (chunk, indexes) in &page {
                mapped += indexes.len() as u64;
                let Some(record) = state.chunk_once(*chunk) else {
                    continue;
                };
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
            match page.last() {
                Some((last, _)) if page.len() == REMOVAL_PAGE => {
                    next = ChunkId(last.0.saturating_add(1))
                }
                _ => break,
            }
        }
        (lost, mapped)
    }

    /// Walks the chunk map, then every extent, a page at a time, letting
    /// go of the state between pages so writes go on meanwhile: what was
    /// read earlier may have changed by the end, as with any online fsck.
    pub(super) async fn fsck(&self, limit: usize) -> Result<FsckReply, Error> {
        self.leader_hint()?;
        let mut fsck = Fsck::new(limit);
        loop {
            let done = {
                let state = self.shared.read();
                let registry = self.registry();
                let healing = self.healing();
                let now = Instant::now();
                let views = healing.views(&state, &registry, now);
                fsck.chunks_page(&state, &views, &healing, now)
            };
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
        loop {
            let done = fsck.extents_page(&self.shared.read());
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
        {
            let state = self.shared.read();
            let registry = self.registry();
            fsck.orphaned_pieces(&state, registry.orphans());
        }
        Ok(fsck.report)
    }

    pub(super) fn repair_queue(&self, limit: usize) -> RepairQueueReply {
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
}

/// One healing pass: assess redundancy, abandon jobs that overran or lost
/// their executor, start new ones.
pub(super) async fn heal(service: &MetaService, now: Instant) {
    let now_wall = now_ns();
    let mut pass = Pass::default();
    let (start, cancel) = loop {
        let ended = 'page: {
            let state = service.shared.read();
            let registry = service.registry();
            let mut healing = service.healing();
            let views = healing.views(&state, &registry, now);
            if !healing.assess_page(&mut pass, &state, &views, now) {
                break 'page None;
            }
            let assessment = healing.finish_pass(std::mem::take(&mut pass), &state, now);
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
            m.chunks_endangered.set(assessment.status.endangered as i64);
            m.chunkserver_state.reset();
            for (node, view) in &views {
                let name = state.nodes.get(node).map_or("", |r| r.name.as_str());
                m.chunkserver_state
                    .with_label_values(&[&node.0.to_string(), name, view.state_name()])
                    .set(1);
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
            Some((start, cancel))
        };
        match ended {
            Some(ended) => break ended,
            // Applies go on between pages.
            None => tokio::task::yield_now().await,
        }
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
