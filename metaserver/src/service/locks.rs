//! Lock waits on the leader: a `WaitLock` call is held until the request
//! it names is granted, woken by the commands that can grant one rather
//! than by polling.

use super::MetaService;
use crate::types::Command;
use std::time::Duration;
use tessera_proto::error::Error;
use tessera_proto::lock::{WAIT_LOCK_MAX_MS, WaitLock, WaitState};
use tessera_proto::meta::MetaOp;

/// Whether applying `command` may grant a queued lock request (or end
/// one): the waits held on the leader look again after it.
pub(super) fn may_grant(command: &Command) -> bool {
    match command {
        Command::SessionClient { op, .. } => {
            matches!(op, MetaOp::SetLock { .. } | MetaOp::EndLockWait { .. })
        }
        Command::EndSession { .. } | Command::EndSessionAt { .. } => true,
        _ => false,
    }
}

impl MetaService {
    /// Answers when the wait is granted or gone, or after `wait_ms` with
    /// `Waiting`. Subscribing before reading the state means a grant
    /// applied between the two still wakes the call.
    pub(super) async fn wait_lock(&self, message: WaitLock) -> Result<WaitState, Error> {
        self.linearize().await?;
        let mut events = self.lock_events.subscribe();
        let wait = Duration::from_millis(message.wait_ms.min(WAIT_LOCK_MAX_MS));
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let state = self
                .shared
                .read()
                .wait_state(message.session, message.waiter);
            if state != WaitState::Waiting {
                return Ok(state);
            }
            match tokio::time::timeout_at(deadline, events.changed()).await {
                Ok(Ok(())) => continue,
                // The deadline, or the service going away.
                _ => return Ok(WaitState::Waiting),
            }
        }
    }

    /// Locks held and waiting, and orphaned inodes, for the gauges.
    pub(super) fn observe_locks(&self) {
        let state = self.shared.read();
        let counts = state.lock_counts();
        self.metrics.locks_held.set(counts.held as i64);
        self.metrics.lock_waiters.set(counts.waiting as i64);
        self.metrics
            .orphaned_inodes
            .set(state.ns.orphan_count() as i64);
    }
}
