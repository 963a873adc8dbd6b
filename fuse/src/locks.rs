//! flock and POSIX record locks, kept by the metaservers for every mount.
//!
//! The kernel hands each lock request here (the mount asks for
//! `FUSE_POSIX_LOCKS` and `FUSE_FLOCK_LOCKS`); it goes to the metaserver
//! leader under the mount's session. A blocked `F_SETLKW` or `flock` waits
//! on the leader until granted; a signal ends the wait with `EINTR` (the
//! kernel's `FUSE_INTERRUPT`, which the patched fuser passes on).
//!
//! Locks guard data, so they also order it across mounts: before a lock is
//! released or downgraded this mount commits what it wrote, and once one is
//! granted it drops what the kernel and the mount cached of the file, so
//! the holder reads what the last holder wrote.

use super::*;
use std::collections::{HashSet, VecDeque};
use std::time::Instant;
use tessera_proto::lock::{LOCK_EOF, LockAnswer, LockKind, LockRequest, LockType, WaitState};

/// `F_RDLCK`, `F_WRLCK` and `F_UNLCK` as the kernel sends them.
pub(crate) const F_RDLCK: i32 = 0;
pub(crate) const F_WRLCK: i32 = 1;
pub(crate) const F_UNLCK: i32 = 2;
/// The kernel's "to the end of the file" (`OFFSET_MAX`).
const OFFSET_MAX: u64 = i64::MAX as u64;
/// Interrupts for requests not seen yet (the interrupt may be read on one
/// thread before its request is handled on another) are kept this long.
const EARLY_INTERRUPT_TTL: Duration = Duration::from_secs(30);
const EARLY_INTERRUPTS_MAX: usize = 1024;
/// Pause before asking again after a failed wait round (a leader change).
const WAIT_RETRY: Duration = Duration::from_millis(200);

/// What the mount keeps of its locks.
#[derive(Default)]
pub(crate) struct LockState {
    /// Blocked requests by the kernel's request id, to end on a signal.
    waiting: Mutex<HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    early: Mutex<VecDeque<(u64, Instant)>>,
    /// (inode, owner) pairs that took a POSIX lock here: a close by that
    /// owner releases its locks on the inode, and only these need the
    /// call.
    posix_owners: Mutex<HashSet<(InodeId, u64)>>,
}

impl LockState {
    /// Watches for an interrupt of request `unique`.
    fn watch(&self, unique: u64) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let early = {
            let mut early = lock(&self.early);
            let before = early.len();
            early.retain(|(id, _)| *id != unique);
            before != early.len()
        };
        if early {
            let _ = tx.send(());
        } else {
            lock(&self.waiting).insert(unique, tx);
        }
        rx
    }

    fn unwatch(&self, unique: u64) {
        lock(&self.waiting).remove(&unique);
    }

    pub(crate) fn interrupt(&self, unique: u64) {
        if let Some(tx) = lock(&self.waiting).remove(&unique) {
            let _ = tx.send(());
            return;
        }
        let now = Instant::now();
        let mut early = lock(&self.early);
        early.retain(|(_, at)| now.duration_since(*at) < EARLY_INTERRUPT_TTL);
        if early.len() >= EARLY_INTERRUPTS_MAX {
            early.pop_front();
        }
        early.push_back((unique, now));
    }
}

/// A lock request as the kernel gave it.
pub(crate) struct KernelLock {
    pub(crate) owner: u64,
    pub(crate) start: u64,
    pub(crate) end: u64,
    pub(crate) typ: i32,
    pub(crate) pid: u32,
    pub(crate) flock: bool,
}

impl KernelLock {
    pub(crate) fn request(&self, wait: bool) -> Result<LockRequest, Error> {
        let typ = match self.typ {
            F_RDLCK => LockType::Read,
            F_WRLCK => LockType::Write,
            F_UNLCK => LockType::Unlock,
            other => {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("lock type {other}"),
                ));
            }
        };
        Ok(LockRequest {
            kind: if self.flock {
                LockKind::Flock
            } else {
                LockKind::Posix
            },
            typ,
            owner: self.owner,
            pid: self.pid,
            start: self.start,
            end: if self.end >= OFFSET_MAX {
                LOCK_EOF
            } else {
                self.end
            },
            wait,
        })
    }
}

/// The kernel's form of a lock end.
pub(crate) fn kernel_end(end: u64) -> u64 {
    end.min(OFFSET_MAX)
}

pub(crate) fn kernel_type(typ: LockType) -> i32 {
    match typ {
        LockType::Read => F_RDLCK,
        LockType::Write => F_WRLCK,
        LockType::Unlock => F_UNLCK,
    }
}

impl Shared {
    /// `F_SETLK`, `F_SETLKW` and `flock`. `unique` is the kernel's request
    /// id, which an interrupt names.
    pub(crate) async fn set_lock(
        &self,
        ino: InodeId,
        request: LockRequest,
        unique: u64,
    ) -> Result<(), Error> {
        let interrupted = request.wait.then(|| self.locks.watch(unique));
        let result = self.set_lock_watched(ino, request, interrupted).await;
        self.locks.unwatch(unique);
        result
    }

    async fn set_lock_watched(
        &self,
        ino: InodeId,
        request: LockRequest,
        interrupted: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<(), Error> {
        if request.typ != LockType::Write {
            // An unlock or a downgrade lets others in: what this mount
            // wrote under the lock must be where they will read it.
            if let Some(file) = self.file(ino) {
                file.flush().await?;
            }
        }
        let meta = self.client.meta();
        let (answer, session) = meta.set_lock(ino, request).await?;
        let granted = match answer {
            LockAnswer::Granted | LockAnswer::Cancelled => true,
            LockAnswer::Queued { waiter } => {
                self.wait_granted(session, waiter, interrupted).await?;
                true
            }
        };
        if granted && request.typ != LockType::Unlock {
            if request.kind == LockKind::Posix {
                lock(&self.locks.posix_owners).insert((ino, request.owner));
            }
            self.drop_cached(ino).await;
        }
        Ok(())
    }

    /// Waits on the leader until the queued request is granted; a signal
    /// takes it out of the queue (unless the grant came first).
    async fn wait_granted(
        &self,
        session: tessera_proto::session::SessionId,
        waiter: u64,
        interrupted: Option<tokio::sync::oneshot::Receiver<()>>,
    ) -> Result<(), Error> {
        let meta = self.client.meta();
        let mut interrupted = interrupted;
        loop {
            let round = meta.wait_lock(session, waiter);
            let state = match interrupted.as_mut() {
                Some(signal) => tokio::select! {
                    state = round => state,
                    _ = signal => {
                        return match meta.end_lock_wait(waiter).await? {
                            LockAnswer::Granted => Ok(()),
                            _ => Err(Error::new(ErrorCode::Interrupted, "interrupted while waiting for a lock")),
                        };
                    }
                },
                None => round.await,
            };
            match state {
                Ok(WaitState::Waiting) => continue,
                Ok(WaitState::Granted) => {
                    // Forgets the grant's record; the lock stays held.
                    if let Err(err) = meta.end_lock_wait(waiter).await {
                        tracing::debug!(waiter, error = %err, "could not forget a granted wait; the session's end will");
                    }
                    return Ok(());
                }
                Ok(WaitState::Gone) => {
                    return Err(Error::new(
                        ErrorCode::SessionExpired,
                        format!("the wait for a lock ended with {session}"),
                    ));
                }
                Err(err) if err.code == ErrorCode::SessionExpired => return Err(err),
                Err(err) => {
                    tracing::debug!(waiter, error = %err, "lock wait round failed; asking again");
                    tokio::time::sleep(WAIT_RETRY).await;
                }
            }
        }
    }

    /// `F_GETLK`: the conflicting lock, in the kernel's terms (type
    /// `F_UNLCK` when there is none).
    pub(crate) async fn get_lock(
        &self,
        ino: InodeId,
        request: LockRequest,
    ) -> Result<(u64, u64, i32, u32), Error> {
        Ok(match self.client.meta().get_lock(ino, request).await? {
            Some(holder) => (
                holder.start,
                kernel_end(holder.end),
                kernel_type(holder.typ),
                holder.pid,
            ),
            None => (0, 0, F_UNLCK, 0),
        })
    }

    /// A close by `owner`: its POSIX locks on the file go, as POSIX has it
    /// for any descriptor of the file the process closes.
    pub(crate) async fn release_posix_locks(&self, ino: InodeId, owner: u64) -> Result<(), Error> {
        let held = lock(&self.locks.posix_owners).remove(&(ino, owner));
        if !held {
            return Ok(());
        }
        self.unlock_all(ino, LockKind::Posix, owner).await
    }

    /// The last close of an open file description that used flock.
    pub(crate) async fn release_flock(&self, ino: InodeId, owner: u64) -> Result<(), Error> {
        self.unlock_all(ino, LockKind::Flock, owner).await
    }

    /// Releases every lock of one family `owner` holds on the file.
    async fn unlock_all(&self, ino: InodeId, kind: LockKind, owner: u64) -> Result<(), Error> {
        let request = LockRequest {
            kind,
            typ: LockType::Unlock,
            owner,
            pid: 0,
            start: 0,
            end: LOCK_EOF,
            wait: false,
        };
        self.client.meta().set_lock(ino, request).await.map(|_| ())
    }

    /// Drops what this mount and the kernel cached of the file's bytes and
    /// attributes: another mount may have written it before letting go of
    /// the lock just taken.
    async fn drop_cached(&self, ino: InodeId) {
        self.forget_cache(ino);
        if let Some(file) = self.file(ino) {
            file.generation.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(notifier) = self.notifier.get() {
            // Pages being read are locked until this mount answers the
            // read, so the call may wait on other tasks: off the workers.
            let notifier = notifier.clone();
            let dropped =
                tokio::task::spawn_blocking(move || notifier.inval_inode(INodeNo(ino.0), 0, 0))
                    .await;
            if let Ok(Err(err)) = dropped {
                tracing::debug!(%ino, error = %err, "cache invalidation after a lock failed");
            }
        }
    }
}
