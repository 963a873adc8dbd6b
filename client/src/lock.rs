//! Cluster-wide locks from the client's side: taking and releasing them
//! under the session, and waiting for a queued request on the leader.
//!
//! A blocked request is queued in the replicated state, so the wait is a
//! series of `WaitLock` calls, each held by the leader until the request is
//! granted or a few seconds passed; a leader change only means asking the
//! new leader, which has the same queue.

use crate::meta::MetaClient;
use std::time::Duration;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{InodeId, RequestId};
use tessera_proto::lock::{
    LockAnswer, LockHolder, LockRequest, WAIT_LOCK_MAX_MS, WaitLock, WaitState,
};
use tessera_proto::meta::{MetaOp, MetaReply};
use tessera_proto::session::{SessionCall, SessionId};

fn no_session() -> Error {
    Error::new(
        ErrorCode::InvalidArgument,
        "locks need a session; this client holds none",
    )
}

fn unexpected(what: &str, reply: MetaReply) -> Error {
    Error::internal(format!("{what} replied {reply:?}"))
}

impl MetaClient {
    /// One lock call made under the session held now; also says which
    /// session, since a queued request belongs to it.
    async fn lock_call(&self, op: MetaOp) -> Result<(MetaReply, SessionId), Error> {
        let session = self.current_session().await?.ok_or_else(no_session)?;
        let result = self
            .leader_call(&SessionCall {
                session,
                request_id: RequestId::fresh(),
                op,
            })
            .await;
        match result {
            Ok(reply) => Ok((reply, session)),
            Err(err) => {
                if err.code == ErrorCode::SessionExpired {
                    self.session_ended(session);
                }
                Err(err)
            }
        }
    }

    /// Takes, changes or releases a lock. `Queued` answers name the
    /// session the wait belongs to.
    pub async fn set_lock(
        &self,
        ino: InodeId,
        request: LockRequest,
    ) -> Result<(LockAnswer, SessionId), Error> {
        match self.lock_call(MetaOp::SetLock { ino, request }).await? {
            (MetaReply::Lock(answer), session) => Ok((answer, session)),
            (other, _) => Err(unexpected("setlock", other)),
        }
    }

    /// The lock in the way of `request`, if any (`F_GETLK`).
    pub async fn get_lock(
        &self,
        ino: InodeId,
        request: LockRequest,
    ) -> Result<Option<LockHolder>, Error> {
        match self.lock_call(MetaOp::GetLock { ino, request }).await? {
            (MetaReply::LockHolder(holder), _) => Ok(holder),
            (other, _) => Err(unexpected("getlock", other)),
        }
    }

    /// One round of waiting for a queued request: the leader answers when
    /// it is granted or after a few seconds (within this client's attempt
    /// timeout), whichever comes first.
    pub async fn wait_lock(&self, session: SessionId, waiter: u64) -> Result<WaitState, Error> {
        let wait = (self.timeouts().attempt / 2).min(Duration::from_millis(WAIT_LOCK_MAX_MS));
        self.leader_call(&WaitLock {
            session,
            waiter,
            wait_ms: wait.as_millis() as u64,
        })
        .await
    }

    /// Ends a wait: `Granted` if the lock was granted meanwhile (it is
    /// held), `Cancelled` if it was taken out of the queue.
    pub async fn end_lock_wait(&self, waiter: u64) -> Result<LockAnswer, Error> {
        match self.lock_call(MetaOp::EndLockWait { waiter }).await? {
            (MetaReply::Lock(answer), _) => Ok(answer),
            (other, _) => Err(unexpected("end_lock_wait", other)),
        }
    }
}
