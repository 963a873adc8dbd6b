//! Client sessions: every mount, gateway and writing command holds one,
//! so the metaserver knows which open handles (and, later, locks and
//! temporary files) belong to a client that may die, and can fence it.
//!
//! A session is opened once, renewed on a heartbeat and expired by the
//! leader after `meta.session_expiry_ms` without a renewal. Expiry is one
//! committed command that releases everything the session held; an expired
//! session is never revived: its calls get [`ErrorCode::SessionExpired`]
//! and the client opens a new one. See `docs/sessions.md`.
//!
//! [`ErrorCode::SessionExpired`]: crate::error::ErrorCode::SessionExpired

use crate::ids::RequestId;
use crate::meta::{MetaOp, MetaReply};
use crate::wire::Method;
use serde::{Deserialize, Serialize};

/// A session, numbered by the metaserver group in the order they opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u64);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "session:{}", self.0)
    }
}

/// What kind of client holds a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionKind {
    Mount,
    Gateway,
    /// A `tessera` command that writes (`put`, `cp`, ...).
    Command,
}

impl SessionKind {
    pub fn name(self) -> &'static str {
        match self {
            SessionKind::Mount => "mount",
            SessionKind::Gateway => "gateway",
            SessionKind::Command => "command",
        }
    }
}

/// Who the client is, for operators (`tessera admin session list`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub kind: SessionKind,
    pub host: String,
    pub pid: u32,
    /// The mount point for a mount, the listen address for a gateway, the
    /// command line for a command.
    pub mount_point: String,
    /// The client's Tessera version.
    pub version: String,
}

/// The longest `host`, `mount_point` and `version` accepted, in bytes: a
/// session record is small and read often.
pub const SESSION_TEXT_MAX: usize = 4096;

/// Opens a session (leader only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpenSession {
    pub info: SessionInfo,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSessionReply {
    pub id: SessionId,
    /// The leader expires the session this long after the last renewal it
    /// received.
    pub expiry_ms: u64,
    /// How often the client should renew.
    pub renew_every_ms: u64,
}

impl Method for OpenSession {
    const ID: u16 = 226;
    const NAME: &'static str = "open_session";
    // Each call opens another session; a retry would leave one behind to
    // expire, which is harmless but not idempotent.
    const IDEMPOTENT: bool = false;
    type Response = OpenSessionReply;
}

/// Renews a session (leader only): proof that the client still lives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RenewSession {
    pub id: SessionId,
}

impl Method for RenewSession {
    const ID: u16 = 227;
    const NAME: &'static str = "renew_session";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

/// A namespace operation made under a session: refused with
/// `SessionExpired` if the session is gone, and open handles it takes or
/// releases are the session's.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionCall {
    pub session: SessionId,
    pub request_id: RequestId,
    pub op: MetaOp,
}

impl Method for SessionCall {
    const ID: u16 = 228;
    const NAME: &'static str = "session_meta";
    const IDEMPOTENT: bool = true;
    type Response = MetaReply;
}

/// One session as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub id: SessionId,
    pub info: SessionInfo,
    /// When it opened, by the leader's wall clock (ns since the epoch).
    pub opened_ns: i64,
    /// Milliseconds since the leader last heard from it.
    pub renewed_ms_ago: u64,
    /// Open handles it holds (each open counts).
    pub handles: u64,
    /// Locks it holds (each flock and each POSIX range counts).
    pub locks: u64,
    /// Lock requests of its queued on the leader.
    pub waiting: u64,
}

/// Every session (leader only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListSessions;

impl Method for ListSessions {
    const ID: u16 = 229;
    const NAME: &'static str = "list_sessions";
    const IDEMPOTENT: bool = true;
    type Response = Vec<SessionStatus>;
}

/// Ends a session now, with the cleanup of an expiry: by an operator
/// (`evict`) or by the client itself on a clean exit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CloseSession {
    pub id: SessionId,
    /// An operator's eviction rather than the client's own close.
    pub evict: bool,
}

impl Method for CloseSession {
    const ID: u16 = 230;
    const NAME: &'static str = "close_session";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_ids_are_distinct_from_the_other_metaserver_methods() {
        use crate::meta::{
            AddMember, Fsck, MetaCall, NodeAdmin, RemoveMember, RepairQueue, Status,
        };
        let mut ids = vec![
            MetaCall::ID,
            Status::ID,
            AddMember::ID,
            RemoveMember::ID,
            NodeAdmin::ID,
            RepairQueue::ID,
            Fsck::ID,
            OpenSession::ID,
            RenewSession::ID,
            SessionCall::ID,
            ListSessions::ID,
            CloseSession::ID,
            crate::lock::WaitLock::ID,
        ];
        let before = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), before);
    }
}
