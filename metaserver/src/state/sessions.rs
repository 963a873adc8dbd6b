//! Client sessions in the replicated state.
//!
//! - `s` + session → the session's record (who, since when, how many
//!   handles it holds);
//! - `h` + session + inode → how many handles the session holds on the
//!   inode.
//!
//! An inode's own `open` count is the sum over sessions (plus handles
//! taken without a session by older clients), so whether an unlinked file
//! still exists is one read. When a session ends (expiry, eviction or a
//! clean close) its `h` records are walked and released in the same
//! command, so an unlinked file whose last holder died goes with it.
//!
//! Nothing here is in memory: a session's record is read through the record
//! cache when a call names it, and listing walks the `s` records.

use super::{State, encode};
use crate::kv::prefix_end;
use crate::types::Applied;
use serde::{Deserialize, Serialize};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, FileKind, MetaOp, MetaReply, Step};
use tessera_proto::session::{SESSION_TEXT_MAX, SessionId, SessionInfo};

const KEY_NEXT_SESSION: &[u8] = b"xsessions";
const PREFIX_SESSION: &[u8] = b"s";
const PREFIX_HANDLE: &[u8] = b"h";
const PREFIX_TEMPORARY: &[u8] = b"T";

/// One session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub info: SessionInfo,
    /// The leader's wall clock when it opened.
    pub opened_ns: i64,
    /// Handles held, each open counted.
    pub handles: u64,
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEnd {
    /// The leader heard nothing from it for the expiry.
    Expired,
    /// An operator evicted it.
    Evicted,
    /// The client closed it on a clean exit.
    Closed,
}

impl SessionEnd {
    pub fn name(self) -> &'static str {
        match self {
            SessionEnd::Expired => "expired",
            SessionEnd::Evicted => "evicted",
            SessionEnd::Closed => "closed",
        }
    }
}

fn session_key(id: SessionId) -> Vec<u8> {
    [PREFIX_SESSION, &id.0.to_be_bytes()].concat()
}

fn handle_prefix(id: SessionId) -> Vec<u8> {
    [PREFIX_HANDLE, &id.0.to_be_bytes()].concat()
}

fn handle_key(id: SessionId, ino: InodeId) -> Vec<u8> {
    [PREFIX_HANDLE, &id.0.to_be_bytes(), &ino.0.to_be_bytes()].concat()
}

fn temporary_prefix(id: SessionId) -> Vec<u8> {
    [PREFIX_TEMPORARY, &id.0.to_be_bytes()].concat()
}

fn temporary_key(id: SessionId, ino: InodeId) -> Vec<u8> {
    [PREFIX_TEMPORARY, &id.0.to_be_bytes(), &ino.0.to_be_bytes()].concat()
}

fn expired(id: SessionId) -> Error {
    Error::new(
        ErrorCode::SessionExpired,
        format!("{id} expired or was evicted; open a new session"),
    )
}

impl State {
    /// The session's record, if it is live.
    pub fn session(&self, id: SessionId) -> Option<SessionRecord> {
        let value = self.ns.kv().get(&session_key(id))?;
        self.decoded_record(format_args!("{id} record"), &value)
    }

    /// Live sessions from `after` on, in id order, at most `limit`.
    pub fn sessions_from(&self, after: SessionId, limit: usize) -> Vec<(SessionId, SessionRecord)> {
        let from = session_key(SessionId(after.0.saturating_add(1)));
        self.ns
            .kv()
            .scan(&from, &prefix_end(PREFIX_SESSION), limit)
            .into_iter()
            .filter_map(|(key, value)| {
                let id = key.get(1..9)?.try_into().ok().map(u64::from_be_bytes)?;
                let record = postcard::from_bytes(&value).ok()?;
                Some((SessionId(id), record))
            })
            .collect()
    }

    fn put_session(&mut self, id: SessionId, record: &SessionRecord) {
        self.ns.kv_mut().put(session_key(id), encode(record));
    }

    pub(super) fn open_session(
        &mut self,
        info: &SessionInfo,
        now_ns: i64,
    ) -> Result<Applied, Error> {
        for (what, text) in [
            ("host", &info.host),
            ("mount point", &info.mount_point),
            ("version", &info.version),
        ] {
            if text.len() > SESSION_TEXT_MAX {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "the session's {what} is {} bytes; at most {SESSION_TEXT_MAX}",
                        text.len()
                    ),
                ));
            }
        }
        // Ids start at 1: the counter is absent until the first session.
        let next = self.count_at(KEY_NEXT_SESSION).max(1);
        let id = SessionId(next);
        self.ns
            .kv_mut()
            .put(KEY_NEXT_SESSION.to_vec(), encode(&next.saturating_add(1)));
        self.put_session(
            id,
            &SessionRecord {
                info: info.clone(),
                opened_ns: now_ns,
                handles: 0,
            },
        );
        Ok(Applied::Session(id))
    }

    /// A namespace call under a session: refused if the session is gone;
    /// handles it opens or releases are counted as the session's.
    pub(super) fn session_call(
        &mut self,
        id: SessionId,
        op: &MetaOp,
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        let Some(mut record) = self.session(id) else {
            return Err(expired(id));
        };
        match op {
            MetaOp::Open { ino } | MetaOp::OpenWrite { ino, .. } => {
                let reply = self.apply_client(op, now_ns)?;
                self.hold_handle(id, &mut record, *ino);
                Ok(reply)
            }
            MetaOp::CreateOpen {
                parent,
                name,
                mode,
                uid,
                gid,
                exclusive,
            } => {
                let (reply, attr) =
                    self.create_file(*parent, name, *mode, *uid, *gid, *exclusive, now_ns)?;
                // A name that is a directory or a special file is not
                // opened here: the caller refuses it (EISDIR).
                if attr.kind == FileKind::File {
                    self.apply_client(&MetaOp::Open { ino: attr.ino }, now_ns)?;
                    self.hold_handle(id, &mut record, attr.ino);
                }
                Ok(reply)
            }
            MetaOp::Release { ino } => {
                let key = handle_key(id, *ino);
                let held = self.count_at(&key);
                if held == 0 {
                    // Not this session's handle (a retry after the release
                    // applied, or a handle of an earlier session): the
                    // count is not touched.
                    return Ok(MetaReply::Done);
                }
                if held == 1 {
                    self.ns.kv_mut().delete(key);
                } else {
                    self.ns.kv_mut().put(key, encode(&(held - 1)));
                }
                record.handles = record.handles.saturating_sub(1);
                self.put_session(id, &record);
                self.apply_client(op, now_ns)
            }
            MetaOp::OpenMany { inos } => {
                for ino in inos {
                    // As `Open`, one by one; one that fails (a file
                    // already gone) changed nothing and leaves the rest.
                    let _ = self.session_call(id, &MetaOp::Open { ino: *ino }, now_ns);
                }
                Ok(MetaReply::Done)
            }
            MetaOp::ReleaseMany { inos } => {
                for ino in inos {
                    // As `Release`, one by one; one that fails (a file
                    // already gone) changed nothing and leaves the rest.
                    let _ = self.session_call(id, &MetaOp::Release { ino: *ino }, now_ns);
                }
                Ok(MetaReply::Done)
            }
            MetaOp::CreateTemporary {
                parent,
                name,
                mode,
                uid,
                gid,
            } => {
                let (reply, attr) =
                    self.create_file(*parent, name, *mode, *uid, *gid, true, now_ns)?;
                self.ns.kv_mut().put(
                    temporary_key(id, attr.ino),
                    encode(&(*parent, name.clone())),
                );
                Ok(reply)
            }
            // A temporary file renamed (published) or unlinked is no
            // longer the session's to delete.
            MetaOp::Rename { parent, name, .. } | MetaOp::Unlink { parent, name } => {
                let named = self.ns.child(*parent, name);
                let reply = self.apply_client(op, now_ns)?;
                if let Some(ino) = named {
                    let key = temporary_key(id, ino);
                    if self.ns.kv().get(&key).is_some() {
                        self.ns.kv_mut().delete(key);
                    }
                }
                Ok(reply)
            }
            MetaOp::Steps { steps } => {
                let named: Vec<InodeId> = steps
                    .iter()
                    .filter_map(|step| match step {
                        Step::Rename { parent, name, .. } | Step::Unlink { parent, name } => {
                            self.ns.child(*parent, name)
                        }
                        Step::Expect { .. } => None,
                    })
                    .collect();
                let reply = self.apply_client(op, now_ns)?;
                for ino in named {
                    let key = temporary_key(id, ino);
                    if self.ns.kv().get(&key).is_some() {
                        self.ns.kv_mut().delete(key);
                    }
                }
                Ok(reply)
            }
            MetaOp::SetLock { ino, request } => {
                self.set_lock(id, *ino, request).map(MetaReply::Lock)
            }
            MetaOp::EndLockWait { waiter } => self.end_lock_wait(id, *waiter).map(MetaReply::Lock),
            _ => self.apply_client(op, now_ns),
        }
    }

    /// A regular file made (or found, unless `exclusive`) as `Create`
    /// does, with its attributes out of the reply.
    #[allow(clippy::too_many_arguments)]
    fn create_file(
        &mut self,
        parent: InodeId,
        name: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
        exclusive: bool,
        now_ns: i64,
    ) -> Result<(MetaReply, Attr), Error> {
        let create = MetaOp::Create {
            parent,
            name: name.to_vec(),
            kind: FileKind::File,
            mode,
            uid,
            gid,
            rdev: 0,
            exclusive,
        };
        let reply = self.apply_client(&create, now_ns)?;
        let (MetaReply::Attr(attr) | MetaReply::Entry(attr)) = &reply else {
            return Err(Error::internal(format!("create replied {reply:?}")));
        };
        let attr = attr.clone();
        Ok((reply, attr))
    }

    /// One more handle of the session on `ino`, in the batch being applied.
    fn hold_handle(&mut self, id: SessionId, record: &mut SessionRecord, ino: InodeId) {
        let key = handle_key(id, ino);
        let held = self.count_at(&key);
        self.ns.kv_mut().put(key, encode(&held.saturating_add(1)));
        record.handles = record.handles.saturating_add(1);
        self.put_session(id, record);
    }

    /// Ends a session and releases everything it held. Ending one that is
    /// already gone is not an error: an expiry and an eviction may race.
    pub(super) fn end_session(
        &mut self,
        id: SessionId,
        why: SessionEnd,
        now_ns: i64,
    ) -> Result<Applied, Error> {
        if self.session(id).is_none() {
            return Ok(Applied::Done);
        }
        // Locks first: their waiters may be granted on inodes this
        // session's handles kept alive.
        let locks = self.release_session_locks(id);
        let temporary = self.delete_temporaries(id, now_ns);
        let prefix = handle_prefix(id);
        let held = self.ns.kv().scan(&prefix, &prefix_end(&prefix), usize::MAX);
        let mut deleted = 0u64;
        for (key, value) in held {
            self.ns.kv_mut().delete(key.clone());
            let Some(ino) = key
                .get(9..17)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let count: u64 = postcard::from_bytes(&value).unwrap_or(0);
            // An inode already gone has nothing left to release.
            if let Ok(true) = self.ns.release_handles(InodeId(ino), count) {
                deleted += 1;
            }
        }
        self.release_chunks();
        self.ns.kv_mut().delete(session_key(id));
        tracing::info!(
            %id,
            reason = why.name(),
            unlinked_inodes_deleted = deleted,
            locks_released = locks,
            temporary_files_deleted = temporary,
            "session ended"
        );
        Ok(Applied::Done)
    }

    /// Unlinks the session's temporary files still under the name they
    /// were created with. Returns how many.
    fn delete_temporaries(&mut self, id: SessionId, now_ns: i64) -> u64 {
        let prefix = temporary_prefix(id);
        let marked = self.ns.kv().scan(&prefix, &prefix_end(&prefix), usize::MAX);
        let mut deleted = 0;
        for (key, value) in marked {
            self.ns.kv_mut().delete(key.clone());
            let Some(ino) = key
                .get(9..17)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            let Some((parent, name)) = self
                .decoded_record::<(InodeId, Vec<u8>)>(format_args!("temporary file {ino}"), &value)
            else {
                continue;
            };
            if self.ns.child(parent, &name) != Some(InodeId(ino)) {
                continue;
            }
            match self.ns.apply(&MetaOp::Unlink { parent, name }, now_ns) {
                Ok(_) => deleted += 1,
                Err(err) => tracing::warn!(
                    ino,
                    error = %err,
                    "could not delete a temporary file of an ended session"
                ),
            }
        }
        deleted
    }

    /// Handles `id` holds, by inode, for tests and checks.
    pub fn session_handles(&self, id: SessionId) -> Vec<(InodeId, u64)> {
        let prefix = handle_prefix(id);
        self.ns
            .kv()
            .scan(&prefix, &prefix_end(&prefix), usize::MAX)
            .into_iter()
            .filter_map(|(key, value)| {
                let ino = key.get(9..17)?.try_into().ok().map(u64::from_be_bytes)?;
                Some((InodeId(ino), postcard::from_bytes(&value).ok()?))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Command;
    use tessera_proto::ids::RequestId;
    use tessera_proto::meta::{FileKind, Policy};
    use tessera_proto::session::SessionKind;

    fn info() -> SessionInfo {
        SessionInfo {
            kind: SessionKind::Mount,
            host: "host-a".into(),
            pid: 42,
            mount_point: "/mnt/a".into(),
            version: "test".into(),
        }
    }

    fn open(state: &mut State) -> SessionId {
        match state.apply(&Command::OpenSession {
            info: info(),
            now_ns: 1,
        }) {
            Ok(Applied::Session(id)) => id,
            other => panic!("open session: {other:?}"),
        }
    }

    fn call(state: &mut State, session: SessionId, op: MetaOp) -> Result<MetaReply, Error> {
        let reply = state.apply(&Command::SessionClient {
            request_id: RequestId::fresh(),
            session,
            op,
            now_ns: 2,
        });
        state.take_changes();
        match reply {
            Ok(Applied::Meta(reply)) => Ok(reply),
            Ok(other) => panic!("session call replied {other:?}"),
            Err(err) => Err(err),
        }
    }

    fn create(state: &mut State, session: SessionId, name: &str) -> InodeId {
        let op = MetaOp::Create {
            parent: InodeId::ROOT,
            name: name.as_bytes().to_vec(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        };
        match call(state, session, op).unwrap() {
            MetaReply::Attr(attr) => attr.ino,
            MetaReply::Entry(attr) => attr.ino,
            other => panic!("create replied {other:?}"),
        }
    }

    fn unlink(state: &mut State, session: SessionId, name: &str) {
        call(
            state,
            session,
            MetaOp::Unlink {
                parent: InodeId::ROOT,
                name: name.as_bytes().to_vec(),
            },
        )
        .unwrap();
    }

    #[test]
    fn create_open_creates_and_holds_in_one_call() {
        let mut state = State::new(Policy::Replicas(1), 0);
        let (a, b) = (open(&mut state), open(&mut state));
        let create_open = |name: &str, exclusive| MetaOp::CreateOpen {
            parent: InodeId::ROOT,
            name: name.as_bytes().to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            exclusive,
        };
        let Ok(MetaReply::Entry(made)) = call(&mut state, a, create_open("f", true)) else {
            panic!("create_open")
        };
        assert_eq!(state.session_handles(a), vec![(made.ino, 1)]);
        // Not exclusive: the existing file, opened again.
        let Ok(MetaReply::Entry(found)) = call(&mut state, b, create_open("f", false)) else {
            panic!("create_open of an existing file")
        };
        assert_eq!(found.ino, made.ino);
        assert_eq!(
            call(&mut state, b, create_open("f", true)).map_err(|e| e.code),
            Err(ErrorCode::AlreadyExists),
            "exclusive on an existing name"
        );
        unlink(&mut state, b, "f");
        assert_eq!(state.ns.open_handles(made.ino).unwrap(), 2);
        // A directory under the name is found but not held.
        call(
            &mut state,
            a,
            MetaOp::Mkdir {
                parent: InodeId::ROOT,
                name: b"d".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )
        .unwrap();
        let before = state.session(a).unwrap().handles;
        let _ = call(&mut state, a, create_open("d", false));
        assert_eq!(state.session(a).unwrap().handles, before);
        // Without a session it is refused.
        let refused = state.apply(&Command::Client {
            request_id: RequestId::fresh(),
            op: create_open("g", true),
            now_ns: 3,
        });
        assert!(refused.is_err());
        state.ns.check().unwrap();
    }

    #[test]
    fn an_unlinked_file_lives_until_its_last_session_lets_go() {
        let mut state = State::new(Policy::Replicas(1), 0);
        let (a, b) = (open(&mut state), open(&mut state));
        assert_ne!(a, b);
        let ino = create(&mut state, a, "f");
        call(&mut state, a, MetaOp::Open { ino }).unwrap();
        call(&mut state, a, MetaOp::Open { ino }).unwrap();
        call(&mut state, b, MetaOp::Open { ino }).unwrap();
        assert_eq!(state.session(a).unwrap().handles, 2);
        assert_eq!(state.session_handles(a), vec![(ino, 2)]);

        // Unlinked from anywhere: both sessions still hold it.
        unlink(&mut state, b, "f");
        assert_eq!(state.ns.open_handles(ino).unwrap(), 3);
        assert_eq!(state.ns.orphan_count(), 1);
        state.ns.check().unwrap();
        // A release of a handle the session does not hold changes nothing.
        let other = create(&mut state, a, "g");
        call(&mut state, b, MetaOp::Release { ino: other }).unwrap();
        assert_eq!(state.ns.open_handles(other).unwrap(), 0);

        call(&mut state, a, MetaOp::Release { ino }).unwrap();
        call(&mut state, a, MetaOp::Release { ino }).unwrap();
        assert_eq!(state.ns.open_handles(ino).unwrap(), 1);
        assert!(state.session_handles(a).is_empty());
        // b dies: its expiry releases the last handle and the inode goes.
        state
            .apply(&Command::EndSession {
                session: b,
                why: SessionEnd::Expired,
            })
            .unwrap();
        state.take_changes();
        assert!(
            state.ns.open_handles(ino).is_err(),
            "the inode outlived its last holder"
        );
        assert_eq!(state.ns.orphan_count(), 0);
        state.ns.check().unwrap();
        assert!(state.session(b).is_none());
        assert!(state.session(a).is_some());
    }

    #[test]
    fn an_ended_session_is_fenced_and_never_revived() {
        let mut state = State::new(Policy::Replicas(1), 0);
        let a = open(&mut state);
        let ino = create(&mut state, a, "f");
        call(&mut state, a, MetaOp::Open { ino }).unwrap();
        for why in [SessionEnd::Evicted, SessionEnd::Expired] {
            state
                .apply(&Command::EndSession { session: a, why })
                .unwrap();
        }
        state.take_changes();
        assert_eq!(state.ns.open_handles(ino).unwrap(), 0);
        let err = call(&mut state, a, MetaOp::Open { ino }).unwrap_err();
        assert_eq!(err.code, ErrorCode::SessionExpired);
        let err = create_err(&mut state, a);
        assert_eq!(err.code, ErrorCode::SessionExpired);
        // Nothing of the refused calls was applied.
        assert_eq!(state.ns.open_handles(ino).unwrap(), 0);
        // A new session gets a new id; the old one stays gone.
        let b = open(&mut state);
        assert!(b > a);
        assert!(state.session(a).is_none());
        let listed: Vec<SessionId> = state
            .sessions_from(SessionId(0), 10)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(listed, vec![b]);
    }

    fn create_err(state: &mut State, session: SessionId) -> Error {
        call(
            state,
            session,
            MetaOp::Mkdir {
                parent: InodeId::ROOT,
                name: b"d".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        )
        .unwrap_err()
    }

    #[test]
    fn temporary_files_go_with_their_session_unless_published() {
        let mut state = State::new(Policy::Replicas(1), 0);
        let a = open(&mut state);
        let temporary = |state: &mut State, name: &str| {
            let op = MetaOp::CreateTemporary {
                parent: InodeId::ROOT,
                name: name.as_bytes().to_vec(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            };
            match call(state, a, op).unwrap() {
                MetaReply::Attr(attr) | MetaReply::Entry(attr) => attr.ino,
                other => panic!("create_temporary replied {other:?}"),
            }
        };
        let kept = temporary(&mut state, "staged-1");
        let dropped = temporary(&mut state, "staged-2");
        let discarded = temporary(&mut state, "staged-3");
        let replaced = temporary(&mut state, "staged-4");
        call(
            &mut state,
            a,
            MetaOp::Rename {
                parent: InodeId::ROOT,
                name: b"staged-1".to_vec(),
                new_parent: InodeId::ROOT,
                new_name: b"object".to_vec(),
                mode: tessera_proto::meta::RenameMode::Replace,
            },
        )
        .unwrap();
        unlink(&mut state, a, "staged-3");
        // Another file now under a temporary's name is not deleted.
        unlink(&mut state, a, "staged-4");
        let other = create(&mut state, a, "staged-4");
        assert_ne!(other, replaced);
        // Without a session, temporaries are refused.
        let refused = state.apply(&Command::Client {
            request_id: RequestId::fresh(),
            op: MetaOp::CreateTemporary {
                parent: InodeId::ROOT,
                name: b"x".to_vec(),
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
            now_ns: 3,
        });
        assert_eq!(refused.unwrap_err().code, ErrorCode::InvalidArgument);
        state
            .apply(&Command::EndSessionAt {
                session: a,
                why: SessionEnd::Expired,
                now_ns: 4,
            })
            .unwrap();
        state.take_changes();
        assert!(state.ns.attr(kept).is_ok(), "a published temporary went");
        assert!(
            state.ns.attr(dropped).is_err(),
            "an abandoned temporary stayed"
        );
        assert!(state.ns.attr(discarded).is_err());
        assert!(
            state.ns.attr(other).is_ok(),
            "a file that took a temporary's name went"
        );
        assert_eq!(state.ns.child(InodeId::ROOT, b"staged-2"), None);
        assert_eq!(state.ns.child(InodeId::ROOT, b"object"), Some(kept));
        state.ns.check().unwrap();
    }

    #[test]
    fn oversized_session_text_is_refused() {
        let mut state = State::new(Policy::Replicas(1), 0);
        let mut big = info();
        big.mount_point = "x".repeat(SESSION_TEXT_MAX + 1);
        let err = state
            .apply(&Command::OpenSession {
                info: big,
                now_ns: 1,
            })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
    }
}
