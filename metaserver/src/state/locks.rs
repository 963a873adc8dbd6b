//! File locks in the replicated state: flock and POSIX record locks, held
//! and queued, so every mount sees one set of holders and a new leader
//! inherits the queue.
//!
//! - `l` + inode → the inode's locks: held (owner, kind, type, range) and
//!   the queue of blocked requests in arrival order;
//! - `m` + session + inode → present while the session holds or waits for
//!   a lock on the inode, so a session's end finds its locks;
//! - `w` + session + waiter → a queued request's inode, and whether it was
//!   granted (kept until the client ends the wait, so a client that missed
//!   the grant in a leader change still learns of it);
//! - `xwaiters` → the next waiter number; `xlockcounts` → locks held and
//!   waiting, for metrics.
//!
//! The two families never conflict with each other (as on Linux). Within
//! a family two locks conflict when their owners differ, their ranges
//! overlap and either is a write lock. Whenever locks are released the
//! queue is walked in order and every request that no longer conflicts is
//! granted in the same command.

use super::{State, encode};
use crate::kv::prefix_end;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::InodeId;
use tessera_proto::lock::{
    LOCK_EOF, LockAnswer, LockHolder, LockKind, LockOwner, LockRequest, LockType, WaitState,
};
use tessera_proto::session::SessionId;

const PREFIX_LOCKS: &[u8] = b"l";
const PREFIX_MARK: &[u8] = b"m";
const PREFIX_WAIT: &[u8] = b"w";
const KEY_NEXT_WAITER: &[u8] = b"xwaiters";
const KEY_LOCK_COUNTS: &[u8] = b"xlockcounts";
/// How far deadlock detection follows owners waiting on owners (Linux
/// stops at 10 as well): longer cycles wait, as they would there.
const DEADLOCK_DEPTH: usize = 10;
/// Locks and waits on one inode, at most: each is a few dozen bytes of one
/// record that every lock call on the inode rewrites.
pub const INODE_LOCKS_MAX: usize = 4096;

/// An inode's locks as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InodeLocks {
    pub held: Vec<LockHolder>,
    /// Blocked requests in arrival order.
    pub waiting: Vec<Waiter>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub id: u64,
    pub lock: LockHolder,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct WaitRecord {
    ino: InodeId,
    owner: u64,
    granted: bool,
}

/// Locks held and requests waiting, over the whole namespace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockCounts {
    pub held: u64,
    pub waiting: u64,
}

fn locks_key(ino: InodeId) -> Vec<u8> {
    [PREFIX_LOCKS, &ino.0.to_be_bytes()].concat()
}

fn mark_prefix(session: SessionId) -> Vec<u8> {
    [PREFIX_MARK, &session.0.to_be_bytes()].concat()
}

fn mark_key(session: SessionId, ino: InodeId) -> Vec<u8> {
    [PREFIX_MARK, &session.0.to_be_bytes(), &ino.0.to_be_bytes()].concat()
}

fn wait_prefix(session: SessionId) -> Vec<u8> {
    [PREFIX_WAIT, &session.0.to_be_bytes()].concat()
}

fn wait_key(session: SessionId, waiter: u64) -> Vec<u8> {
    [PREFIX_WAIT, &session.0.to_be_bytes(), &waiter.to_be_bytes()].concat()
}

fn overlaps(a: &LockHolder, b: &LockHolder) -> bool {
    a.kind == LockKind::Flock || (a.start <= b.end && b.start <= a.end)
}

/// Whether `a` stands in the way of `b`.
fn conflicts(a: &LockHolder, b: &LockHolder) -> bool {
    a.kind == b.kind
        && a.owner != b.owner
        && overlaps(a, b)
        && (a.typ == LockType::Write || b.typ == LockType::Write)
}

/// Removes what `owner` holds of `kind` over `start..=end`, splitting
/// ranges that reach outside it (a flock goes whole).
fn remove_range(
    held: &mut Vec<LockHolder>,
    owner: LockOwner,
    kind: LockKind,
    start: u64,
    end: u64,
) {
    let mut kept = Vec::with_capacity(held.len() + 1);
    for lock in held.drain(..) {
        let mine = lock.owner == owner && lock.kind == kind;
        if !mine || (kind == LockKind::Posix && (lock.end < start || end < lock.start)) {
            kept.push(lock);
            continue;
        }
        if kind == LockKind::Flock {
            continue;
        }
        if lock.start < start {
            kept.push(LockHolder {
                end: start - 1,
                ..lock
            });
        }
        if end < lock.end {
            kept.push(LockHolder {
                start: end + 1,
                ..lock
            });
        }
    }
    *held = kept;
}

/// Gives `lock` to its owner: what the owner held of the range is
/// replaced, and POSIX ranges of the same type that touch are merged.
fn take(held: &mut Vec<LockHolder>, mut lock: LockHolder) {
    remove_range(held, lock.owner, lock.kind, lock.start, lock.end);
    if lock.kind == LockKind::Posix {
        // The owner's other ranges are disjoint from this one now, so at
        // most one touches each end of it as given.
        let given = lock;
        let touches = |other: &LockHolder| {
            other.owner == given.owner
                && other.kind == LockKind::Posix
                && other.typ == given.typ
                && (other.end.checked_add(1) == Some(given.start)
                    || given.end.checked_add(1) == Some(other.start))
        };
        let mut kept = Vec::with_capacity(held.len() + 1);
        for other in held.drain(..) {
            if touches(&other) {
                lock.start = lock.start.min(other.start);
                lock.end = lock.end.max(other.end);
            } else {
                kept.push(other);
            }
        }
        *held = kept;
    }
    held.push(lock);
    held.sort_by_key(|l| (l.kind == LockKind::Posix, l.start, l.owner));
}

fn holder(owner: LockOwner, request: &LockRequest) -> LockHolder {
    let (start, end) = match request.kind {
        LockKind::Flock => (0, LOCK_EOF),
        LockKind::Posix => (request.start, request.end),
    };
    LockHolder {
        kind: request.kind,
        typ: request.typ,
        owner,
        pid: request.pid,
        start,
        end,
    }
}

fn check_request(request: &LockRequest) -> Result<(), Error> {
    if request.kind == LockKind::Posix && request.start > request.end {
        return Err(Error::new(
            ErrorCode::InvalidArgument,
            format!(
                "a lock from byte {} to byte {}: the end comes before the start",
                request.start, request.end
            ),
        ));
    }
    Ok(())
}

impl State {
    pub fn inode_locks(&self, ino: InodeId) -> InodeLocks {
        match self.ns.kv().get(&locks_key(ino)) {
            Some(value) => self
                .decoded_record(format_args!("locks of {ino}"), &value)
                .unwrap_or_default(),
            None => InodeLocks::default(),
        }
    }

    pub fn lock_counts(&self) -> LockCounts {
        self.ns
            .kv()
            .get(KEY_LOCK_COUNTS)
            .and_then(|value| postcard::from_bytes(&value).ok())
            .unwrap_or_default()
    }

    /// Stores an inode's locks and keeps the session marks and counts in
    /// step with what changed.
    fn put_locks(&mut self, ino: InodeId, before: &InodeLocks, after: &InodeLocks) {
        let sessions = |locks: &InodeLocks| -> BTreeSet<SessionId> {
            locks
                .held
                .iter()
                .map(|l| l.owner.session)
                .chain(locks.waiting.iter().map(|w| w.lock.owner.session))
                .collect()
        };
        let (was, now) = (sessions(before), sessions(after));
        let kv = self.ns.kv_mut();
        for gone in was.difference(&now) {
            kv.delete(mark_key(*gone, ino));
        }
        for new in now.difference(&was) {
            kv.put(mark_key(*new, ino), Vec::new());
        }
        if after.held.is_empty() && after.waiting.is_empty() {
            kv.delete(locks_key(ino));
        } else {
            kv.put(locks_key(ino), encode(after));
        }
        let mut counts = self.lock_counts();
        counts.held =
            (counts.held + after.held.len() as u64).saturating_sub(before.held.len() as u64);
        counts.waiting = (counts.waiting + after.waiting.len() as u64)
            .saturating_sub(before.waiting.len() as u64);
        self.ns
            .kv_mut()
            .put(KEY_LOCK_COUNTS.to_vec(), encode(&counts));
    }

    /// Grants every queued request that no longer conflicts, in arrival
    /// order, until none does.
    fn grant_waiters(&mut self, locks: &mut InodeLocks) {
        loop {
            let ready = locks
                .waiting
                .iter()
                .position(|w| !locks.held.iter().any(|held| conflicts(held, &w.lock)));
            let Some(index) = ready else {
                return;
            };
            let waiter = locks.waiting.remove(index);
            take(&mut locks.held, waiter.lock);
            let key = wait_key(waiter.lock.owner.session, waiter.id);
            if let Some(value) = self.ns.kv().get(&key)
                && let Some(mut record) =
                    self.decoded_record::<WaitRecord>(format_args!("wait {}", waiter.id), &value)
            {
                record.granted = true;
                self.ns.kv_mut().put(key, encode(&record));
            }
        }
    }

    /// `MetaOp::SetLock` under `session`.
    pub(super) fn set_lock(
        &mut self,
        session: SessionId,
        ino: InodeId,
        request: &LockRequest,
    ) -> Result<LockAnswer, Error> {
        check_request(request)?;
        self.ns.attr(ino)?;
        let owner = LockOwner {
            session,
            owner: request.owner,
        };
        let before = self.inode_locks(ino);
        let mut locks = before.clone();
        let wanted = holder(owner, request);
        if request.typ == LockType::Unlock {
            remove_range(
                &mut locks.held,
                owner,
                request.kind,
                wanted.start,
                wanted.end,
            );
            self.grant_waiters(&mut locks);
            self.put_locks(ino, &before, &locks);
            return Ok(LockAnswer::Granted);
        }
        if request.kind == LockKind::Flock {
            // Converting a flock lets go of the old one first, as Linux
            // does; a refused conversion is rolled back with the command.
            remove_range(&mut locks.held, owner, LockKind::Flock, 0, LOCK_EOF);
        }
        let blockers: Vec<LockOwner> = locks
            .held
            .iter()
            .filter(|held| conflicts(held, &wanted))
            .map(|held| held.owner)
            .collect();
        if blockers.is_empty() {
            take(&mut locks.held, wanted);
            // A downgrade or a narrower range may free others.
            self.grant_waiters(&mut locks);
            self.check_size(&locks)?;
            self.put_locks(ino, &before, &locks);
            return Ok(LockAnswer::Granted);
        }
        if !request.wait {
            return Err(Error::new(
                ErrorCode::Locked,
                format!("{ino} is locked by another owner"),
            ));
        }
        if request.kind == LockKind::Posix && self.would_deadlock(owner, blockers) {
            return Err(Error::new(
                ErrorCode::Deadlock,
                format!(
                    "waiting for the lock on {ino} would deadlock: its holder waits for a lock of yours"
                ),
            ));
        }
        let id = self.count_at(KEY_NEXT_WAITER).max(1);
        self.ns
            .kv_mut()
            .put(KEY_NEXT_WAITER.to_vec(), encode(&id.saturating_add(1)));
        locks.waiting.push(Waiter { id, lock: wanted });
        self.check_size(&locks)?;
        self.ns.kv_mut().put(
            wait_key(session, id),
            encode(&WaitRecord {
                ino,
                owner: request.owner,
                granted: false,
            }),
        );
        self.put_locks(ino, &before, &locks);
        Ok(LockAnswer::Queued { waiter: id })
    }

    fn check_size(&self, locks: &InodeLocks) -> Result<(), Error> {
        if locks.held.len() + locks.waiting.len() > INODE_LOCKS_MAX {
            return Err(Error::new(
                ErrorCode::NoSpace,
                format!("more than {INODE_LOCKS_MAX} locks and waits on one file"),
            ));
        }
        Ok(())
    }

    /// Whether `owner` waiting for `blockers` closes a cycle: some blocker
    /// waits (directly or through others) for a lock `owner` holds.
    fn would_deadlock(&self, owner: LockOwner, blockers: Vec<LockOwner>) -> bool {
        let mut frontier = blockers;
        let mut seen = BTreeSet::new();
        for _ in 0..DEADLOCK_DEPTH {
            let mut next = Vec::new();
            for blocker in frontier {
                if blocker == owner {
                    return true;
                }
                if !seen.insert(blocker) {
                    continue;
                }
                for (id, record) in self.waits_of(blocker.session) {
                    if record.owner != blocker.owner || record.granted {
                        continue;
                    }
                    let locks = self.inode_locks(record.ino);
                    let Some(waiter) = locks.waiting.iter().find(|w| w.id == id) else {
                        continue;
                    };
                    if waiter.lock.kind != LockKind::Posix {
                        continue;
                    }
                    next.extend(
                        locks
                            .held
                            .iter()
                            .filter(|held| conflicts(held, &waiter.lock))
                            .map(|held| held.owner),
                    );
                }
            }
            if next.is_empty() {
                return false;
            }
            frontier = next;
        }
        false
    }

    fn waits_of(&self, session: SessionId) -> Vec<(u64, WaitRecord)> {
        let prefix = wait_prefix(session);
        self.ns
            .kv()
            .scan(&prefix, &prefix_end(&prefix), usize::MAX)
            .into_iter()
            .filter_map(|(key, value)| {
                let id = key.get(9..17)?.try_into().ok().map(u64::from_be_bytes)?;
                Some((id, postcard::from_bytes(&value).ok()?))
            })
            .collect()
    }

    /// `MetaOp::GetLock`: the first lock in the way of `request`. The
    /// holder's pid means something only on the asker's own client, so it
    /// is reported there alone.
    pub fn get_lock(
        &self,
        session: SessionId,
        ino: InodeId,
        request: &LockRequest,
    ) -> Result<Option<LockHolder>, Error> {
        check_request(request)?;
        self.ns.attr(ino)?;
        let wanted = holder(
            LockOwner {
                session,
                owner: request.owner,
            },
            request,
        );
        let found = self
            .inode_locks(ino)
            .held
            .into_iter()
            .find(|held| conflicts(held, &wanted));
        Ok(found.map(|mut held| {
            if held.owner.session != session {
                held.pid = 0;
            }
            held
        }))
    }

    /// `MetaOp::EndLockWait`: a granted wait is forgotten (`Granted`), a
    /// queued one taken out of the queue (`Cancelled`).
    pub(super) fn end_lock_wait(
        &mut self,
        session: SessionId,
        waiter: u64,
    ) -> Result<LockAnswer, Error> {
        let key = wait_key(session, waiter);
        let Some(value) = self.ns.kv().get(&key) else {
            return Ok(LockAnswer::Cancelled);
        };
        self.ns.kv_mut().delete(key);
        let Some(record) = self.decoded_record::<WaitRecord>(format_args!("wait {waiter}"), &value)
        else {
            return Ok(LockAnswer::Cancelled);
        };
        if record.granted {
            return Ok(LockAnswer::Granted);
        }
        let before = self.inode_locks(record.ino);
        let mut locks = before.clone();
        locks.waiting.retain(|w| w.id != waiter);
        // The queue's order may have held back later requests.
        self.grant_waiters(&mut locks);
        self.put_locks(record.ino, &before, &locks);
        Ok(LockAnswer::Cancelled)
    }

    /// Where a queued request stands, for `WaitLock`.
    pub fn wait_state(&self, session: SessionId, waiter: u64) -> WaitState {
        match self.ns.kv().get(&wait_key(session, waiter)) {
            None => WaitState::Gone,
            Some(value) => {
                match self.decoded_record::<WaitRecord>(format_args!("wait {waiter}"), &value) {
                    Some(record) if record.granted => WaitState::Granted,
                    Some(_) => WaitState::Waiting,
                    None => WaitState::Gone,
                }
            }
        }
    }

    /// Locks held and requests queued by `session`.
    pub fn session_lock_counts(&self, session: SessionId) -> LockCounts {
        let prefix = mark_prefix(session);
        let mut counts = LockCounts::default();
        for (key, _) in self.ns.kv().scan(&prefix, &prefix_end(&prefix), usize::MAX) {
            let Some(ino) = key.get(9..17).and_then(|b| b.try_into().ok()) else {
                continue;
            };
            let locks = self.inode_locks(InodeId(u64::from_be_bytes(ino)));
            counts.held += locks
                .held
                .iter()
                .filter(|l| l.owner.session == session)
                .count() as u64;
            counts.waiting += locks
                .waiting
                .iter()
                .filter(|w| w.lock.owner.session == session)
                .count() as u64;
        }
        counts
    }

    /// A session's end: its locks and waits go, and what they held back
    /// is granted.
    pub(super) fn release_session_locks(&mut self, session: SessionId) -> u64 {
        let prefix = mark_prefix(session);
        let marks = self.ns.kv().scan(&prefix, &prefix_end(&prefix), usize::MAX);
        let mut released = 0u64;
        for (key, _) in marks {
            let Some(ino) = key.get(9..17).and_then(|b| b.try_into().ok()) else {
                self.ns.kv_mut().delete(key);
                continue;
            };
            let ino = InodeId(u64::from_be_bytes(ino));
            let before = self.inode_locks(ino);
            let mut locks = before.clone();
            locks.held.retain(|l| l.owner.session != session);
            locks.waiting.retain(|w| w.lock.owner.session != session);
            released += (before.held.len() - locks.held.len()) as u64;
            self.grant_waiters(&mut locks);
            self.put_locks(ino, &before, &locks);
            // A mark whose inode held nothing of the session's.
            self.ns.kv_mut().delete(key);
        }
        let prefix = wait_prefix(session);
        for (key, _) in self.ns.kv().scan(&prefix, &prefix_end(&prefix), usize::MAX) {
            self.ns.kv_mut().delete(key);
        }
        released
    }
}

#[cfg(test)]
mod tests;
