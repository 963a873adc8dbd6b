//! Client sessions on the leader: opening, renewing, listing, ending, and
//! the expiry that ends the sessions of clients that went silent.
//!
//! Renewals are not replicated. The leader keeps when it last heard from
//! each session in memory and proposes the end of one only after
//! `session_expiry_ms` of silence. A new leader starts every session's
//! clock afresh at its election, so a leader change can only delay an
//! expiry, never hasten one: a client that stops acting once its own clock
//! says its last acknowledged renewal is older than the expiry (minus a
//! margin) therefore never acts after the group ended its session.

use super::{MetaService, now_ns};
use crate::state::SessionEnd;
use crate::types::{Applied, Command};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::session::{
    CloseSession, OpenSession, OpenSessionReply, SessionId, SessionStatus,
};

/// Sessions read from the state per page when the leader takes stock.
const STOCK_PAGE: usize = 4096;
/// Ticks (seconds) between stock-takings after the first: sessions opened
/// through an earlier leader, or whose opening raced with a leader change,
/// join the clock then.
const STOCK_EVERY: u64 = 10;
/// Sessions ended per tick, at most: each is one command.
const ENDS_PER_TICK: usize = 256;

/// What the leader knows of session liveness.
pub struct Sessions {
    expiry: Duration,
    /// When each live session last renewed (or when this leader first
    /// counted it).
    renewed: HashMap<SessionId, Instant>,
    /// Ticks since the last stock-taking; `None` until the first one of a
    /// leadership.
    since_stock: Option<u64>,
}

impl Sessions {
    pub fn new(expiry: Duration) -> Sessions {
        Sessions {
            expiry,
            renewed: HashMap::new(),
            since_stock: None,
        }
    }

    /// A new leadership: nothing heard yet.
    pub fn reset(&mut self) {
        self.renewed.clear();
        self.since_stock = None;
    }

    /// Sessions silent for longer than the expiry at `now`.
    fn due(&self, now: Instant) -> Vec<SessionId> {
        let mut due: Vec<SessionId> = self
            .renewed
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) > self.expiry)
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        due.truncate(ENDS_PER_TICK);
        due
    }

    pub fn live(&self) -> usize {
        self.renewed.len()
    }
}

impl MetaService {
    /// Lock order: after the state and healing; nothing is taken under it.
    pub(super) fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn expiry(&self) -> Duration {
        self.sessions().expiry
    }

    pub(super) fn require_session(&self, id: SessionId) -> Result<(), Error> {
        if self.shared.read().session(id).is_some() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::SessionExpired,
                format!("{id} expired or was evicted; open a new session"),
            ))
        }
    }

    pub(super) async fn open_session(
        &self,
        message: OpenSession,
    ) -> Result<OpenSessionReply, Error> {
        self.leader_hint()?;
        let kind = message.info.kind;
        let applied = self
            .propose(Command::OpenSession {
                info: message.info,
                now_ns: now_ns(),
            })
            .await?;
        let Applied::Session(id) = applied else {
            return Err(Error::internal(format!(
                "opening a session replied {applied:?}"
            )));
        };
        self.sessions().renewed.insert(id, Instant::now());
        self.metrics
            .sessions_opened
            .with_label_values(&[kind.name()])
            .inc();
        let expiry = self.expiry();
        Ok(OpenSessionReply {
            id,
            expiry_ms: expiry.as_millis() as u64,
            renew_every_ms: (expiry / 4).as_millis().max(1) as u64,
        })
    }

    /// Confirms leadership first: a renewal a deposed leader acknowledged
    /// would let the client believe in a session the group may end.
    pub(super) async fn renew_session(&self, id: SessionId) -> Result<(), Error> {
        self.linearize().await?;
        self.require_session(id)?;
        self.sessions().renewed.insert(id, Instant::now());
        Ok(())
    }

    pub(crate) fn list_sessions(&self) -> Result<Vec<SessionStatus>, Error> {
        self.leader_hint()?;
        let now = Instant::now();
        let state = self.shared.read();
        let sessions = self.sessions();
        let mut out = Vec::new();
        let mut after = SessionId(0);
        loop {
            let page = state.sessions_from(after, STOCK_PAGE);
            let Some((last, _)) = page.last() else {
                break;
            };
            after = *last;
            for (id, record) in page {
                let locks = state.session_lock_counts(id);
                out.push(SessionStatus {
                    id,
                    info: record.info,
                    opened_ns: record.opened_ns,
                    renewed_ms_ago: sessions.renewed.get(&id).map_or(0, |at| {
                        now.saturating_duration_since(*at).as_millis() as u64
                    }),
                    handles: record.handles,
                    locks: locks.held,
                    waiting: locks.waiting,
                });
            }
        }
        Ok(out)
    }

    pub(super) async fn close_session(&self, message: CloseSession) -> Result<(), Error> {
        self.leader_hint()?;
        let known = self.shared.read().session(message.id).is_some();
        if !known {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!(
                    "{} is not a live session; `tessera admin session list` shows them",
                    message.id
                ),
            ));
        }
        let why = if message.evict {
            SessionEnd::Evicted
        } else {
            SessionEnd::Closed
        };
        self.end_session(message.id, why).await
    }

    async fn end_session(&self, id: SessionId, why: SessionEnd) -> Result<(), Error> {
        self.propose(Command::EndSessionAt {
            session: id,
            why,
            now_ns: now_ns(),
        })
        .await?;
        self.sessions().renewed.remove(&id);
        self.metrics
            .sessions_ended
            .with_label_values(&[why.name()])
            .inc();
        tracing::info!(%id, reason = why.name(), "session ended");
        Ok(())
    }
}

/// One leader tick: take stock of the sessions in the state when due, then
/// end those silent past the expiry.
pub(super) async fn expire(service: &MetaService, now: Instant) {
    let stock = {
        let mut sessions = service.sessions();
        let due = sessions.since_stock.is_none_or(|t| t + 1 >= STOCK_EVERY);
        sessions.since_stock = Some(if due {
            0
        } else {
            sessions.since_stock.unwrap_or(0) + 1
        });
        due
    };
    if stock {
        take_stock(service, now);
    }
    let due = service.sessions().due(now);
    for id in due {
        if let Err(err) = service.end_session(id, SessionEnd::Expired).await {
            tracing::warn!(%id, error = %err, "could not end an expired session; trying again next tick");
        }
    }
    let live = service.sessions().live();
    service.metrics.sessions_live.set(live as i64);
}

/// Counts every session in the state (new ones from now), and forgets
/// those no longer there.
fn take_stock(service: &MetaService, now: Instant) {
    let mut present = Vec::new();
    let mut after = SessionId(0);
    loop {
        let page = service.shared.read().sessions_from(after, STOCK_PAGE);
        let Some((last, _)) = page.last() else {
            break;
        };
        after = *last;
        present.extend(page.into_iter().map(|(id, _)| id));
    }
    let mut sessions = service.sessions();
    let present: std::collections::HashSet<SessionId> = present.into_iter().collect();
    sessions.renewed.retain(|id, _| present.contains(id));
    for id in present {
        sessions.renewed.entry(id).or_insert(now);
    }
}
