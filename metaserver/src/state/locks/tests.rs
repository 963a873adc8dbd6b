use super::*;
use crate::types::{Applied, Command};
use proptest::prelude::*;
use tessera_proto::ids::RequestId;
use tessera_proto::meta::{FileKind, MetaOp, MetaReply, Policy};
use tessera_proto::session::{SessionInfo, SessionKind};

fn open_session(state: &mut State) -> SessionId {
    let info = SessionInfo {
        kind: SessionKind::Mount,
        host: "host".into(),
        pid: 1,
        mount_point: "/mnt".into(),
        version: "test".into(),
    };
    match state.apply(&Command::OpenSession { info, now_ns: 1 }) {
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

fn file(state: &mut State, session: SessionId) -> InodeId {
    let op = MetaOp::Create {
        parent: InodeId::ROOT,
        name: b"f".to_vec(),
        kind: FileKind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        rdev: 0,
        exclusive: true,
    };
    match call(state, session, op).unwrap() {
        MetaReply::Attr(attr) | MetaReply::Entry(attr) => attr.ino,
        other => panic!("create replied {other:?}"),
    }
}

fn req(kind: LockKind, typ: LockType, owner: u64, range: (u64, u64), wait: bool) -> LockRequest {
    LockRequest {
        kind,
        typ,
        owner,
        pid: 100 + owner as u32,
        start: range.0,
        end: range.1,
        wait,
    }
}

fn set(
    state: &mut State,
    session: SessionId,
    ino: InodeId,
    request: LockRequest,
) -> Result<LockAnswer, Error> {
    match call(state, session, MetaOp::SetLock { ino, request })? {
        MetaReply::Lock(answer) => Ok(answer),
        other => panic!("setlock replied {other:?}"),
    }
}

fn end_wait(state: &mut State, session: SessionId, waiter: u64) -> LockAnswer {
    match call(state, session, MetaOp::EndLockWait { waiter }).unwrap() {
        MetaReply::Lock(answer) => answer,
        other => panic!("end wait replied {other:?}"),
    }
}

fn setup() -> (State, SessionId, SessionId, InodeId) {
    let mut state = State::new(Policy::Replicas(1), 0);
    let a = open_session(&mut state);
    let b = open_session(&mut state);
    let ino = file(&mut state, a);
    (state, a, b, ino)
}

use LockKind::{Flock, Posix};
use LockType::{Read, Unlock, Write};

#[test]
fn flocks_share_or_exclude_across_sessions() {
    let (mut state, a, b, ino) = setup();
    assert_eq!(
        set(&mut state, a, ino, req(Flock, Read, 1, (0, 0), false)),
        Ok(LockAnswer::Granted)
    );
    assert_eq!(
        set(&mut state, b, ino, req(Flock, Read, 1, (0, 0), false)),
        Ok(LockAnswer::Granted)
    );
    let err = set(&mut state, b, ino, req(Flock, Write, 2, (0, 0), false)).unwrap_err();
    assert_eq!(err.code, ErrorCode::Locked);
    // POSIX locks are another family: no conflict with flocks.
    assert_eq!(
        set(&mut state, b, ino, req(Posix, Write, 2, (0, 9), false)),
        Ok(LockAnswer::Granted)
    );
    assert_eq!(
        state.lock_counts(),
        LockCounts {
            held: 3,
            waiting: 0
        }
    );
    set(&mut state, a, ino, req(Flock, Unlock, 1, (0, 0), false)).unwrap();
    set(&mut state, b, ino, req(Flock, Unlock, 1, (0, 0), false)).unwrap();
    assert_eq!(
        set(&mut state, b, ino, req(Flock, Write, 2, (0, 0), false)),
        Ok(LockAnswer::Granted)
    );
}

#[test]
fn a_queued_request_is_granted_when_the_holder_lets_go() {
    let (mut state, a, b, ino) = setup();
    set(&mut state, a, ino, req(Posix, Write, 1, (0, 99), false)).unwrap();
    let Ok(LockAnswer::Queued { waiter }) =
        set(&mut state, b, ino, req(Posix, Write, 7, (50, 60), true))
    else {
        panic!("the blocked request was not queued");
    };
    assert_eq!(state.wait_state(b, waiter), WaitState::Waiting);
    assert_eq!(
        state.session_lock_counts(b),
        LockCounts {
            held: 0,
            waiting: 1
        }
    );
    // Unlocking a part that does not overlap frees nothing.
    set(&mut state, a, ino, req(Posix, Unlock, 1, (0, 10), false)).unwrap();
    assert_eq!(state.wait_state(b, waiter), WaitState::Waiting);
    set(&mut state, a, ino, req(Posix, Unlock, 1, (40, 70), false)).unwrap();
    assert_eq!(state.wait_state(b, waiter), WaitState::Granted);
    let held = state.inode_locks(ino).held;
    let ranges: Vec<(u64, u64, u64)> = held
        .iter()
        .map(|l| (l.owner.owner, l.start, l.end))
        .collect();
    assert_eq!(ranges, vec![(1, 11, 39), (7, 50, 60), (1, 71, 99)]);
    assert_eq!(end_wait(&mut state, b, waiter), LockAnswer::Granted);
    assert_eq!(state.wait_state(b, waiter), WaitState::Gone);
    assert_eq!(
        state.lock_counts(),
        LockCounts {
            held: 3,
            waiting: 0
        }
    );
}

#[test]
fn a_cancelled_wait_leaves_nothing_behind() {
    let (mut state, a, b, ino) = setup();
    set(&mut state, a, ino, req(Flock, Write, 1, (0, 0), false)).unwrap();
    let Ok(LockAnswer::Queued { waiter }) =
        set(&mut state, b, ino, req(Flock, Read, 2, (0, 0), true))
    else {
        panic!("not queued");
    };
    assert_eq!(end_wait(&mut state, b, waiter), LockAnswer::Cancelled);
    assert!(state.inode_locks(ino).waiting.is_empty());
    assert_eq!(state.session_lock_counts(b), LockCounts::default());
    set(&mut state, a, ino, req(Flock, Unlock, 1, (0, 0), false)).unwrap();
    assert!(state.inode_locks(ino).held.is_empty());
    assert_eq!(state.lock_counts(), LockCounts::default());
    assert!(state.ns.kv().get(&mark_key(b, ino)).is_none());
    assert!(state.ns.kv().get(&locks_key(ino)).is_none());
}

#[test]
fn opposite_order_waits_get_edeadlk() {
    let (mut state, a, b, ino) = setup();
    set(&mut state, a, ino, req(Posix, Write, 1, (0, 0), false)).unwrap();
    set(&mut state, b, ino, req(Posix, Write, 2, (1, 1), false)).unwrap();
    let Ok(LockAnswer::Queued { .. }) = set(&mut state, a, ino, req(Posix, Write, 1, (1, 1), true))
    else {
        panic!("not queued");
    };
    let err = set(&mut state, b, ino, req(Posix, Write, 2, (0, 0), true)).unwrap_err();
    assert_eq!(err.code, ErrorCode::Deadlock);
    // The refused request left no trace; b lets go and a gets its lock.
    assert_eq!(state.inode_locks(ino).waiting.len(), 1);
    set(
        &mut state,
        b,
        ino,
        req(Posix, Unlock, 2, (0, LOCK_EOF), false),
    )
    .unwrap();
    assert!(state.inode_locks(ino).waiting.is_empty());
    assert_eq!(state.inode_locks(ino).held.len(), 1);
    assert_eq!(state.inode_locks(ino).held[0].end, 1);
}

#[test]
fn a_session_end_releases_its_locks_and_grants_the_queue() {
    let (mut state, a, b, ino) = setup();
    let c = open_session(&mut state);
    set(
        &mut state,
        a,
        ino,
        req(Posix, Write, 1, (0, LOCK_EOF), false),
    )
    .unwrap();
    let Ok(LockAnswer::Queued { waiter: wb }) =
        set(&mut state, b, ino, req(Posix, Read, 1, (0, 5), true))
    else {
        panic!("not queued");
    };
    let Ok(LockAnswer::Queued { waiter: wc }) =
        set(&mut state, c, ino, req(Posix, Write, 1, (3, 3), true))
    else {
        panic!("not queued");
    };
    state
        .apply(&Command::EndSession {
            session: a,
            why: super::super::SessionEnd::Expired,
        })
        .unwrap();
    state.take_changes();
    assert_eq!(state.wait_state(b, wb), WaitState::Granted);
    // c conflicts with b's read lock now.
    assert_eq!(state.wait_state(c, wc), WaitState::Waiting);
    state
        .apply(&Command::EndSession {
            session: b,
            why: super::super::SessionEnd::Evicted,
        })
        .unwrap();
    state.take_changes();
    assert_eq!(state.wait_state(b, wb), WaitState::Gone);
    assert_eq!(state.wait_state(c, wc), WaitState::Granted);
    assert_eq!(
        state.lock_counts(),
        LockCounts {
            held: 1,
            waiting: 0
        }
    );
    assert_eq!(state.session_lock_counts(a), LockCounts::default());
}

#[test]
fn getlk_reports_the_holder_and_its_pid_only_on_its_own_session() {
    let (mut state, a, b, ino) = setup();
    set(&mut state, a, ino, req(Posix, Read, 1, (10, 19), false)).unwrap();
    let found = state
        .get_lock(b, ino, &req(Posix, Write, 1, (0, 10), false))
        .unwrap()
        .unwrap();
    assert_eq!(
        (found.start, found.end, found.typ, found.pid),
        (10, 19, Read, 0)
    );
    let found = state
        .get_lock(a, ino, &req(Posix, Write, 2, (0, 10), false))
        .unwrap()
        .unwrap();
    assert_eq!(found.pid, 101);
    assert_eq!(
        state
            .get_lock(b, ino, &req(Posix, Read, 1, (0, 99), false))
            .unwrap(),
        None
    );
    assert_eq!(
        state
            .get_lock(a, ino, &req(Posix, Write, 1, (0, 99), false))
            .unwrap(),
        None
    );
    let err = state
        .get_lock(a, ino, &req(Posix, Write, 1, (9, 3), false))
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidArgument);
}

#[test]
fn locks_need_a_session() {
    let (mut state, _, _, ino) = setup();
    let reply = state.apply(&Command::Client {
        request_id: RequestId::fresh(),
        op: MetaOp::SetLock {
            ino,
            request: req(Flock, Write, 1, (0, 0), false),
        },
        now_ns: 3,
    });
    assert_eq!(reply.unwrap_err().code, ErrorCode::InvalidArgument);
}

/// The model: which lock type each owner holds on each byte. Byte `EDGE`
/// stands for every byte from there to the end of the file.
const EDGE: u64 = 24;
const OWNERS: usize = 4;

#[derive(Clone, Debug)]
enum Step {
    Set {
        who: usize,
        typ: LockType,
        start: u64,
        end: Option<u64>,
    },
    Get {
        who: usize,
        typ: LockType,
        start: u64,
        end: Option<u64>,
    },
    Flock {
        who: usize,
        typ: LockType,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let typ = prop_oneof![Just(Read), Just(Write), Just(Unlock)];
    let range = (0..EDGE, prop::option::weighted(0.8, 0..EDGE));
    prop_oneof![
        5 => (0..OWNERS, typ.clone(), range.clone()).prop_map(|(who, typ, (start, end))| Step::Set { who, typ, start, end: end.map(|e| e.max(start)) }),
        2 => (0..OWNERS, prop_oneof![Just(Read), Just(Write)], range).prop_map(|(who, typ, (start, end))| Step::Get { who, typ, start, end: end.map(|e| e.max(start)) }),
        1 => (0..OWNERS, typ).prop_map(|(who, typ)| Step::Flock { who, typ }),
    ]
}

fn clamp(end: u64) -> u64 {
    end.min(EDGE)
}

fn model_conflict(
    model: &[[Option<LockType>; EDGE as usize + 1]; OWNERS],
    who: usize,
    typ: LockType,
    start: u64,
    end: u64,
) -> bool {
    (0..OWNERS).filter(|o| *o != who).any(|o| {
        (start..=clamp(end)).any(|byte| match model[o][byte as usize] {
            Some(held) => held == Write || typ == Write,
            None => false,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every grant, refusal and F_GETLK answer matches a byte-by-byte
    /// model of POSIX locks, and what is stored is exactly the model, in
    /// the fewest ranges (split where unlocked, merged where they touch).
    #[test]
    fn posix_locks_match_the_model(steps in prop::collection::vec(step(), 1..60)) {
        let mut state = State::new(Policy::Replicas(1), 0);
        let sessions = [open_session(&mut state), open_session(&mut state)];
        let ino = file(&mut state, sessions[0]);
        // Owners 0 and 1 share a session, 2 and 3 the other.
        let owner_of = |who: usize| (sessions[who / 2], who as u64);
        let mut model = [[None; EDGE as usize + 1]; OWNERS];
        let mut flocks: [Option<LockType>; OWNERS] = [None; OWNERS];
        for step in steps {
            match step {
                Step::Set { who, typ, start, end } => {
                    let end = end.unwrap_or(LOCK_EOF);
                    let (session, owner) = owner_of(who);
                    let answer = set(&mut state, session, ino, req(Posix, typ, owner, (start, end), false));
                    let conflict = typ != Unlock && model_conflict(&model, who, typ, start, end);
                    if conflict {
                        prop_assert_eq!(answer.map_err(|e| e.code), Err(ErrorCode::Locked));
                    } else {
                        prop_assert_eq!(answer, Ok(LockAnswer::Granted));
                        for byte in start..=clamp(end) {
                            model[who][byte as usize] = (typ != Unlock).then_some(typ);
                        }
                    }
                }
                Step::Get { who, typ, start, end } => {
                    let end = end.unwrap_or(LOCK_EOF);
                    let (session, owner) = owner_of(who);
                    let found = state.get_lock(session, ino, &req(Posix, typ, owner, (start, end), false)).unwrap();
                    match found {
                        None => prop_assert!(!model_conflict(&model, who, typ, start, end)),
                        Some(holder) => {
                            let o = holder.owner.owner as usize;
                            prop_assert_ne!(o, who);
                            prop_assert_eq!(holder.owner.session, sessions[o / 2]);
                            prop_assert!(holder.typ == Write || typ == Write);
                            prop_assert!(holder.start <= end && start <= holder.end);
                            for byte in holder.start..=clamp(holder.end) {
                                prop_assert_eq!(model[o][byte as usize], Some(holder.typ));
                            }
                            prop_assert_eq!(holder.pid == 0, holder.owner.session != session);
                        }
                    }
                }
                Step::Flock { who, typ } => {
                    let (session, owner) = owner_of(who);
                    let answer = set(&mut state, session, ino, req(Flock, typ, owner, (0, 0), false));
                    let conflict = typ != Unlock && (0..OWNERS).any(|o| o != who && flocks[o].is_some_and(|held| held == Write || typ == Write));
                    if conflict {
                        prop_assert_eq!(answer.map_err(|e| e.code), Err(ErrorCode::Locked));
                    } else {
                        prop_assert_eq!(answer, Ok(LockAnswer::Granted));
                        flocks[who] = (typ != Unlock).then_some(typ);
                    }
                }
            }
            // What is stored is the model, in maximal ranges.
            let held = state.inode_locks(ino).held;
            let mut rebuilt = [[None; EDGE as usize + 1]; OWNERS];
            let mut rebuilt_flocks = [None; OWNERS];
            for lock in &held {
                let o = lock.owner.owner as usize;
                prop_assert_eq!(lock.owner.session, sessions[o / 2]);
                if lock.kind == Flock {
                    prop_assert!(rebuilt_flocks[o].is_none());
                    rebuilt_flocks[o] = Some(lock.typ);
                    continue;
                }
                prop_assert!(lock.end == LOCK_EOF || lock.end < EDGE);
                for byte in lock.start..=clamp(lock.end) {
                    prop_assert!(rebuilt[o][byte as usize].is_none(), "overlapping ranges of one owner");
                    rebuilt[o][byte as usize] = Some(lock.typ);
                }
                let touching = held.iter().any(|other| {
                    other.owner == lock.owner && other.kind == Posix && other.typ == lock.typ
                        && other.end.checked_add(1) == Some(lock.start)
                });
                prop_assert!(!touching, "ranges that touch were not merged");
            }
            prop_assert_eq!(rebuilt, model);
            prop_assert_eq!(rebuilt_flocks, flocks);
            prop_assert_eq!(state.lock_counts().held, held.len() as u64);
        }
    }
}
