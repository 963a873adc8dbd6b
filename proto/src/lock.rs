//! Cluster-wide file locks: flock (whole file) and POSIX record locks,
//! kept by the metaserver group so every mount sees the same holders.
//!
//! A lock belongs to an owner: the session of the client that took it and
//! the owner number the kernel gave (the open file for flock, the process's
//! file table for POSIX locks). Requests are `MetaOp::SetLock` and
//! `MetaOp::GetLock` under a session; a blocking request that cannot be
//! granted is queued on the leader and answered `LockAnswer::Queued`, and
//! the client then waits with [`WaitLock`] until it is granted. See
//! `docs/sessions.md`.

use crate::session::SessionId;
use crate::wire::Method;
use serde::{Deserialize, Serialize};

/// The last byte of a lock that runs to the end of the file (and beyond).
pub const LOCK_EOF: u64 = u64::MAX;

/// Which of the two independent lock families.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockKind {
    /// `flock(2)`: the whole file, owned by the open file description.
    Flock,
    /// `fcntl(2)` record locks: byte ranges, owned by a process.
    Posix,
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LockType {
    /// Shared: any number of owners may hold it together.
    Read,
    /// Exclusive.
    Write,
    Unlock,
}

/// Who holds a lock: a session and the owner the kernel named within it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LockOwner {
    pub session: SessionId,
    pub owner: u64,
}

/// One lock request on an inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    pub kind: LockKind,
    pub typ: LockType,
    /// The owner number within the caller's session.
    pub owner: u64,
    /// The process asking, reported to `F_GETLK` callers on the same
    /// mount.
    pub pid: u32,
    /// First and last byte, inclusive (`LOCK_EOF` for "to the end"); a
    /// flock covers the whole file whatever these say.
    pub start: u64,
    pub end: u64,
    /// `F_SETLKW` or a blocking `flock`: queue rather than refuse.
    pub wait: bool,
}

/// A lock that stands in a request's way, as `F_GETLK` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    pub kind: LockKind,
    pub typ: LockType,
    pub owner: LockOwner,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
}

/// The answer to a `SetLock`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockAnswer {
    /// Held (or released) now.
    Granted,
    /// Queued on the leader as `waiter`; wait with [`WaitLock`].
    Queued { waiter: u64 },
    /// `EndLockWait` found the wait still queued and took it out.
    Cancelled,
}

/// Waits for a queued lock request (leader only). Answers within
/// `wait_ms` even when nothing changed, so a call never outlives its
/// attempt timeout; the client then asks again.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WaitLock {
    pub session: SessionId,
    pub waiter: u64,
    /// How long the caller lets the leader hold the call (capped at
    /// `WAIT_LOCK_MAX_MS`): shorter than its own attempt timeout.
    pub wait_ms: u64,
}

/// The longest the leader holds a `WaitLock` call.
pub const WAIT_LOCK_MAX_MS: u64 = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitState {
    Waiting,
    /// The lock is the waiter's; the client ends the wait with
    /// `EndLockWait`, which forgets the record.
    Granted,
    /// Not queued: never was, or already ended (a session's end takes its
    /// waits with it).
    Gone,
}

impl Method for WaitLock {
    const ID: u16 = 231;
    const NAME: &'static str = "wait_lock";
    const IDEMPOTENT: bool = true;
    type Response = WaitState;
}
