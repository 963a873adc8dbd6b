//! Groups concurrent commands into one Raft entry.
//!
//! Each `client_write` costs a log append, a WAL sync and a replication
//! round. Commands that arrive while a batch is in flight wait in a queue
//! and go out together as the next entry, so throughput grows with
//! concurrency instead of stopping at one sync per operation. The batch size
//! adapts by itself: the slower the round (more voters, slower disk), the
//! more commands queue behind it. Measured (`docs/benchmarks.md`): one batch
//! in flight made the largest batches and the highest throughput; 2, 4 and
//! 16 in flight split the queue into smaller entries and lost up to 70%.

// openraft's error types are large by design and fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::types::{Applied, Batch, Command, Raft};
use openraft::error::{ClientWriteError, RaftError};
use prometheus::Histogram;
use std::sync::Arc;
use tessera_proto::error::{Error, ErrorCode};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Commands per Raft entry, at most.
pub const BATCH_MAX: usize = 1024;
/// Entries proposed but not yet committed, at most.
pub const BATCHES_IN_FLIGHT: usize = 1;
/// Commands waiting for a batch, at most; callers wait beyond that.
const QUEUE_DEPTH: usize = 16 * 1024;

type Waiter = oneshot::Sender<Result<Applied, Error>>;

#[derive(Clone)]
pub struct Batcher {
    tx: mpsc::Sender<(Command, Waiter)>,
}

/// Resolves a leader id to its address for redirects.
pub type LeaderAddress = Arc<dyn Fn(u64) -> Option<String> + Send + Sync>;

impl Batcher {
    pub fn start(raft: Raft, leader_address: LeaderAddress, batch_sizes: Histogram) -> Batcher {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(raft, rx, leader_address, batch_sizes));
        Batcher { tx }
    }

    /// Proposes one command and waits for its reply once applied.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        let (waiter, reply) = oneshot::channel();
        self.tx
            .send((command, waiter))
            .await
            .map_err(|_| Error::new(ErrorCode::ShuttingDown, "metaserver is shutting down"))?;
        reply
            .await
            .map_err(|_| Error::new(ErrorCode::Unavailable, "the proposal was dropped; retry"))?
    }
}

async fn run(
    raft: Raft,
    mut rx: mpsc::Receiver<(Command, Waiter)>,
    leader_address: LeaderAddress,
    batch_sizes: Histogram,
) {
    let slots = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut commands = vec![first.0];
        let mut waiters = vec![first.1];
        while commands.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok((command, waiter)) => {
                    commands.push(command);
                    waiters.push(waiter);
                }
                Err(_) => break,
            }
        }
        batch_sizes.observe(commands.len() as f64);
        let raft = raft.clone();
        let leader_address = leader_address.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match raft.client_write(Batch(commands)).await {
                Ok(response) => {
                    let mut replies = response.data.0.into_iter();
                    for waiter in waiters {
                        let reply = replies
                            .next()
                            .unwrap_or_else(|| Err(Error::internal("batch reply missing")));
                        let _ = waiter.send(reply);
                    }
                }
                Err(err) => {
                    let error = write_error(err, &leader_address);
                    for waiter in waiters {
                        let _ = waiter.send(Err(error.clone()));
                    }
                }
            }
        });
    }
}

/// Maps a failed proposal to the error the caller should act on. A proposal
/// that fails with the leader gone may still commit: callers retry with the
/// same request id, which the state machine deduplicates.
pub fn write_error(
    err: RaftError<u64, ClientWriteError<u64, openraft::BasicNode>>,
    leader_address: &LeaderAddress,
) -> Error {
    match err {
        RaftError::APIError(ClientWriteError::ForwardToLeader(forward)) => {
            let address = forward
                .leader_node
                .map(|n| n.addr)
                .or_else(|| forward.leader_id.and_then(|id| leader_address(id)));
            Error::not_leader(address)
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => Error::new(
            ErrorCode::InvalidArgument,
            format!("membership change refused: {e}"),
        ),
        RaftError::Fatal(fatal) => Error::new(
            ErrorCode::Unavailable,
            format!("metaserver stopped: {fatal}"),
        ),
    }
}
