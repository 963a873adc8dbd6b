//! The client's side of a session (`docs/sessions.md`).
//!
//! A client that opened a session makes every metadata call under it, and
//! renews it every `renew_every_ms`. It trusts the session only until its
//! own clock says `expiry - margin` passed since it *sent* the last renewal
//! the leader acknowledged: the leader counts from when it *received* it,
//! later, so the client always stops first. Past that point, or once the
//! group says the session ended, calls get `SessionExpired` and the next
//! call opens a new session under a new epoch; front ends compare a
//! handle's epoch with the current one to refuse handles of an old session.

use crate::client::Client;
use crate::meta::MetaClient;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::session::{
    CloseSession, OpenSession, RenewSession, SessionId, SessionInfo, SessionKind,
};
use tokio::time::Instant;

/// Who this process is, for a session of `kind`; `what` is the mount
/// point, listen address or command line operators see.
pub fn session_info(kind: SessionKind, what: &str) -> SessionInfo {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    SessionInfo {
        kind,
        host,
        pid: std::process::id(),
        mount_point: what.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// The session a client asked for and the one it holds now.
pub(crate) struct SessionSlot {
    info: SessionInfo,
    held: Option<Held>,
    /// Bumped on every new session: what a handle remembers.
    epoch: u64,
    closed: bool,
}

#[derive(Clone, Copy)]
struct Held {
    id: SessionId,
    /// When the last acknowledged renewal (or the open) was sent.
    acked: Instant,
    expiry: Duration,
    renew_every: Duration,
}

impl Held {
    /// The client's own deadline: a quarter of the expiry before the
    /// leader's earliest.
    fn trusted_until(&self) -> Instant {
        self.acked + self.expiry - self.expiry / 4
    }
}

fn expired(id: SessionId) -> Error {
    Error::new(
        ErrorCode::SessionExpired,
        format!("{id} is no longer trusted (not renewed in time, or ended by the metaservers)"),
    )
}

impl MetaClient {
    /// Opens a session; from now on every call is made under it.
    pub async fn open_session(&self, info: SessionInfo) -> Result<SessionId, Error> {
        *self.session_slot() = Some(SessionSlot {
            info,
            held: None,
            epoch: 0,
            closed: false,
        });
        self.current_session()
            .await?
            .ok_or_else(|| Error::internal("a session was asked for and none is held"))
    }

    fn session_slot(&self) -> std::sync::MutexGuard<'_, Option<SessionSlot>> {
        self.session.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session held now and its epoch, if one is held and trusted.
    pub fn session(&self) -> Option<(SessionId, u64)> {
        let slot = self.session_slot();
        let slot = slot.as_ref()?;
        let held = slot.held?;
        (Instant::now() < held.trusted_until()).then_some((held.id, slot.epoch))
    }

    /// The session to make a call under: `None` for a client without one;
    /// a new session when the last one ended or is no longer trusted.
    pub(crate) async fn current_session(&self) -> Result<Option<SessionId>, Error> {
        let info = {
            let mut slot = self.session_slot();
            let Some(slot) = slot.as_mut() else {
                return Ok(None);
            };
            if slot.closed {
                // Not `None`: a call made without a session would be
                // counted against nobody's handles (a close still in
                // flight would release one the session's end released).
                return Err(Error::new(
                    ErrorCode::SessionExpired,
                    "this client closed its session; it makes no more calls",
                ));
            }
            if let Some(held) = slot.held {
                if Instant::now() < held.trusted_until() {
                    return Ok(Some(held.id));
                }
                slot.held = None;
            }
            slot.info.clone()
        };
        // One opening at a time: calls racing here share its result.
        let _opening = self.session_opening.lock().await;
        if let Some(Some(held)) = self.session_slot().as_ref().map(|s| s.held)
            && Instant::now() < held.trusted_until()
        {
            return Ok(Some(held.id));
        }
        let sent = Instant::now();
        let reply = self.leader_call(&OpenSession { info }).await?;
        let mut slot = self.session_slot();
        let Some(slot) = slot.as_mut() else {
            return Ok(None);
        };
        slot.epoch += 1;
        slot.held = Some(Held {
            id: reply.id,
            acked: sent,
            expiry: Duration::from_millis(reply.expiry_ms.max(1)),
            renew_every: Duration::from_millis(reply.renew_every_ms.max(1)),
        });
        tracing::info!(id = %reply.id, epoch = slot.epoch, "session opened");
        Ok(Some(reply.id))
    }

    /// Forgets `id` if it is still the one held: the group ended it.
    pub(crate) fn session_ended(&self, id: SessionId) {
        let mut slot = self.session_slot();
        if let Some(slot) = slot.as_mut()
            && slot.held.is_some_and(|h| h.id == id)
        {
            tracing::warn!(%id, "the metaservers ended this client's session; a new one opens on the next call");
            slot.held = None;
        }
    }

    /// Renews the session held now. Returns how long to wait before the
    /// next renewal.
    pub async fn renew_session(&self) -> Result<Duration, Error> {
        let Some(held) = self.session_slot().as_ref().and_then(|s| s.held) else {
            return Ok(Duration::from_secs(1));
        };
        if Instant::now() >= held.trusted_until() {
            return Err(expired(held.id));
        }
        let sent = Instant::now();
        match self.leader_call(&RenewSession { id: held.id }).await {
            Ok(()) => {
                let mut slot = self.session_slot();
                if let Some(current) = slot.as_mut().and_then(|s| s.held.as_mut())
                    && current.id == held.id
                {
                    current.acked = current.acked.max(sent);
                }
                Ok(held.renew_every)
            }
            Err(err) => {
                if err.code == ErrorCode::SessionExpired {
                    self.session_ended(held.id);
                }
                Err(err)
            }
        }
    }

    /// Ends the session on a clean exit: what it held is released now
    /// rather than after the expiry.
    pub async fn close_session(&self) -> Result<(), Error> {
        let held = {
            let mut slot = self.session_slot();
            let Some(slot) = slot.as_mut() else {
                return Ok(());
            };
            slot.closed = true;
            slot.held.take()
        };
        match held {
            Some(held) => {
                self.leader_call(&CloseSession {
                    id: held.id,
                    evict: false,
                })
                .await
            }
            None => Ok(()),
        }
    }
}

impl Client {
    /// Opens a session for this process and keeps it renewed until the
    /// client is dropped or the session closed.
    pub async fn start_session(self: &Arc<Client>, info: SessionInfo) -> Result<SessionId, Error> {
        let id = self.meta().open_session(info).await?;
        tokio::spawn(keep_renewed(Arc::downgrade(self)));
        Ok(id)
    }
}

/// Renews on the leader's schedule; after a failure, sooner, so one lost
/// renewal does not cost the session.
async fn keep_renewed(client: Weak<Client>) {
    let mut wait = Duration::from_secs(1);
    loop {
        tokio::time::sleep(wait).await;
        let Some(client) = client.upgrade() else {
            return;
        };
        if client.meta().session_closed() {
            return;
        }
        wait = match client.meta().renew_session().await {
            Ok(next) => next,
            Err(err) if err.code == ErrorCode::SessionExpired => {
                // Open the next one now, not on the next call.
                if let Err(err) = client.meta().current_session().await {
                    tracing::warn!(error = %err, "could not open a new session; trying again");
                }
                Duration::from_secs(1)
            }
            Err(err) => {
                tracing::warn!(error = %err, "session renewal failed; trying again");
                Duration::from_secs(1)
            }
        };
    }
}

impl MetaClient {
    fn session_closed(&self) -> bool {
        self.session_slot().as_ref().is_none_or(|s| s.closed)
    }
}
