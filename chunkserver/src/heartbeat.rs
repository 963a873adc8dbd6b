//! Registration, heartbeats and inventory reports to the metaserver, and the
//! commands its replies carry.
//!
//! The loop: register (trying each configured metaserver, following
//! `NotLeader` redirects), send the full inventory in pages, then heartbeat
//! every interval with space, load, newly corrupt pieces, the inventory's
//! changes since the last heartbeat, and the repair jobs that ended or still
//! run. A reply may ask the node to register again (the metaserver lost
//! track of it, for example after a leader change); repeated failures also
//! start over from registration. While no metaserver answers, the node keeps
//! serving reads and writes for tokens already issued.
//!
//! Everything a heartbeat carries is kept until a heartbeat carrying it
//! succeeds: corrupt pieces and inventory changes go back to the store, job
//! results stay with the job runner. A full inventory report supersedes the
//! pending changes, so they are dropped at registration; job results are
//! not, since no inventory tells how a job ended.

use crate::changes::Changes;
use crate::jobs::Job;
use crate::service::ChunkService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::chunk::{
    ChunkCommand, HEARTBEAT_CHANGES_MAX, Heartbeat, HeartbeatReply, INVENTORY_PAGE_MAX,
    InventoryReport, Labels, LoadReport, RegisterChunkserver,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::NodeId;
use tessera_proto::rpc::{CallOptions, Peer, RpcClient};
use tessera_proto::tls::Role;
use tessera_proto::wire::Method;
use tokio::sync::watch;

const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of a registration attempt on one metaserver: a dead member
/// (no answer at all over QUIC) must not hold up finding the new leader.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(3);
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// Consecutive heartbeat failures before the node registers again.
const HEARTBEAT_FAILURES_MAX: u32 = 2;

pub struct HeartbeatConfig {
    pub name: String,
    pub address: String,
    pub labels: Labels,
    pub meta: Vec<String>,
    pub interval: Duration,
}

struct Session {
    leader: SocketAddr,
    node: NodeId,
    interval: Duration,
}

async fn resolve(addresses: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for address in addresses {
        if let Ok(found) = tokio::net::lookup_host(address).await {
            out.extend(found);
        }
    }
    out
}

/// Calls `message` on the leader, starting at `first` and following
/// redirects a few times.
async fn call_leader<M: Method>(
    client: &RpcClient,
    first: SocketAddr,
    message: &M,
) -> Result<(SocketAddr, M::Response), Error> {
    let mut target = first;
    for _ in 0..4 {
        match client
            .call(
                Peer::new(target, Role::Meta),
                message,
                CallOptions::with_timeout(REGISTER_TIMEOUT),
            )
            .await
        {
            Ok(reply) => return Ok((target, reply)),
            Err(err) if err.code == ErrorCode::NotLeader => {
                let next = err.redirect.as_deref().and_then(|r| r.parse().ok());
                match next {
                    Some(next) => target = next,
                    None => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
    }
    Err(Error::new(
        ErrorCode::Unavailable,
        "metaservers kept redirecting; no leader settled",
    ))
}

async fn register(
    client: &RpcClient,
    service: &ChunkService,
    config: &HeartbeatConfig,
) -> Result<Session, Error> {
    let message = RegisterChunkserver {
        name: config.name.clone(),
        address: config.address.clone(),
        labels: config.labels.clone(),
        disks: service.store().disk_reports(),
    };
    let candidates = resolve(&config.meta).await;
    let mut last_error = Error::new(
        ErrorCode::Unavailable,
        format!("no metaserver address resolves among {:?}", config.meta),
    );
    for candidate in candidates {
        match call_leader(client, candidate, &message).await {
            Ok((leader, reply)) => {
                let interval = if reply.heartbeat_interval_ms > 0 {
                    Duration::from_millis(reply.heartbeat_interval_ms)
                } else {
                    config.interval
                };
                return Ok(Session {
                    leader,
                    node: reply.node,
                    interval,
                });
            }
            Err(err) => last_error = err,
        }
    }
    Err(last_error)
}

async fn send_inventory(
    client: &RpcClient,
    service: &ChunkService,
    session: &Session,
) -> Result<(), Error> {
    let report: u64 = rand::random();
    // The report lists the inventory as it is from here on; a change made
    // while it is being listed shows in it, in the next heartbeat, or both,
    // all of which the metaserver applies harmlessly.
    service.store().clear_changes();
    let mut after = None;
    loop {
        let (pieces, more) = service.store().list(after, INVENTORY_PAGE_MAX as usize);
        after = pieces.last().map(|p| p.piece);
        let page = InventoryReport {
            node: session.node,
            report,
            pieces,
            last: !more,
        };
        client
            .call(
                Peer::new(session.leader, Role::Meta),
                &page,
                CallOptions::with_timeout(CALL_TIMEOUT),
            )
            .await?;
        if !more {
            return Ok(());
        }
    }
}

/// Carries out a heartbeat reply's commands without holding up the loop:
/// deletions and quarantine clean-up on their own tasks, repair jobs through
/// the job runner (which skips jobs it already knows).
fn execute(service: &Arc<ChunkService>, reply: HeartbeatReply) {
    for command in reply.commands {
        match command {
            ChunkCommand::Delete(pieces) => {
                let service = service.clone();
                tokio::spawn(async move {
                    let count = pieces.len();
                    match service.delete(pieces).await {
                        Ok(done) => tracing::debug!(
                            count,
                            deleted = done.deleted,
                            "deleted pieces on the metaserver's word"
                        ),
                        Err(err) => tracing::warn!(count, error = %err, "could not delete pieces"),
                    }
                });
            }
            ChunkCommand::Copy(copy) => service.jobs().submit(Job::Copy(copy)),
            ChunkCommand::Rebuild(rebuild) => service.jobs().submit(Job::Rebuild(rebuild)),
            ChunkCommand::DropQuarantined(pieces) => {
                let store = service.store().clone();
                tokio::spawn(async move {
                    let count = pieces.len();
                    match tokio::task::spawn_blocking(move || store.drop_quarantined(&pieces)).await
                    {
                        Ok(Ok(files)) => {
                            tracing::debug!(count, files, "dropped quarantined copies")
                        }
                        Ok(Err(err)) => {
                            tracing::warn!(count, error = %err, "could not drop quarantined copies; they stay until asked again")
                        }
                        Err(err) => {
                            tracing::error!(error = %err, "quarantine clean-up task failed")
                        }
                    }
                });
            }
        }
    }
}

/// Runs until `shutdown` turns true.
pub async fn run(
    client: RpcClient,
    service: Arc<ChunkService>,
    config: HeartbeatConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    if config.meta.is_empty() {
        tracing::warn!(
            "no metaserver configured (meta = [...]); this chunkserver will not register"
        );
        return;
    }
    let mut backoff = RETRY_MIN;
    let mut warned = false;
    loop {
        let session = match register(&client, &service, &config).await {
            Ok(session) => session,
            Err(err) => {
                if warned {
                    tracing::debug!(error = %err, "metaserver still unreachable");
                } else {
                    tracing::warn!(meta = ?config.meta, error = %err, "cannot register with a metaserver; retrying in the background");
                    warned = true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(RETRY_MAX);
                continue;
            }
        };
        backoff = RETRY_MIN;
        warned = false;
        tracing::info!(node = %session.node, leader = %session.leader, "registered with the metaserver");
        if let Err(err) = send_inventory(&client, &service, &session).await {
            tracing::warn!(error = %err, "inventory report failed; registering again");
            continue;
        }
        let mut failures = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(session.interval) => {}
                _ = shutdown.changed() => return,
            }
            if service.store().changes_overflowed() {
                tracing::warn!(
                    "too many inventory changes piled up; registering again to send a full inventory"
                );
                break;
            }
            let store = service.store();
            let metrics = store.metrics();
            let changes = store.take_changes(HEARTBEAT_CHANGES_MAX);
            let (jobs, running) = service.jobs().report();
            let beat = Heartbeat {
                node: session.node,
                disks: store.disk_reports(),
                load: LoadReport {
                    reads_in_flight: metrics.reads_in_flight.get().max(0) as u32,
                    writes_in_flight: metrics.writes_in_flight.get().max(0) as u32,
                },
                corrupt: store.take_corrupt(HEARTBEAT_CHANGES_MAX),
                added: changes.added,
                removed: changes.removed,
                jobs,
                running,
            };
            store.refresh_gauges();
            match client
                .call(
                    Peer::new(session.leader, Role::Meta),
                    &beat,
                    // A leader that stops answering is found out within a
                    // few intervals, so placements resume soon after an
                    // election.
                    CallOptions::with_timeout(
                        (session.interval * 2).clamp(Duration::from_secs(2), CALL_TIMEOUT),
                    ),
                )
                .await
            {
                Ok(reply) => {
                    failures = 0;
                    service.jobs().delivered(&beat.jobs);
                    let again = reply.register_again;
                    execute(&service, reply);
                    if again {
                        break;
                    }
                }
                Err(err) => {
                    // Keep what it carried for the next attempt; job results
                    // stay with the runner until delivered.
                    let Heartbeat {
                        corrupt,
                        added,
                        removed,
                        ..
                    } = beat;
                    store.return_corrupt(corrupt);
                    store.return_changes(Changes { added, removed });
                    failures += 1;
                    tracing::debug!(error = %err, failures, "heartbeat failed");
                    if failures >= HEARTBEAT_FAILURES_MAX || err.code == ErrorCode::NotLeader {
                        tracing::warn!(error = %err, "lost the metaserver; registering again");
                        break;
                    }
                }
            }
        }
    }
}
