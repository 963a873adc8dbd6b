//! A metaserver holding a million files in a 64 MiB cache: its memory,
//! read from /proc while it serves them, stays under a fixed ceiling, where
//! the version that kept the namespace in memory needed about 1.3 GB.
//!
//! The million files are written into the stopped metaserver's store by the
//! state machine's own code (`State::apply`, the same commands a Raft entry
//! carries), because creating them through Raft takes minutes in a debug
//! build; the benchmark (`scale_bench`) creates ten million through the API.
//! The metaserver then starts on that store and answers lookups, stats, a
//! listing of the whole directory and new creates, all checked; then a new
//! member joins and receives the whole namespace as a streamed snapshot.

mod common;

use common::meta::{
    Member, create, entry_ino, list_all, member, meta_client, start_with, wait_for,
};
use common::{Daemon, Pki};
use rand::Rng;
use std::time::{Duration, Instant};
use tessera_client::meta::MetaTimeouts;
use tessera_meta::sm_store::StateMachine;
use tessera_meta::types::Command;
use tessera_proto::ids::{InodeId, NodeId, RequestId};
use tessera_proto::meta::{AddMember, MetaOp, MetaReply, Policy};

/// A million unless `TESSERA_SCALE_FILES` says otherwise: CI runs a
/// shortened version (writing a million files takes about three minutes in
/// a debug build); the figures for a million are in docs/benchmarks.md.
fn files() -> u64 {
    std::env::var("TESSERA_SCALE_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}
const CACHE_BYTES: u64 = 64 << 20;
/// The ceiling on the metaserver's peak resident memory: the two caches
/// (64 MiB), RocksDB's memtables (up to 3 x 16 MiB per column family, the
/// state's the only busy one) and the process itself (runtime, TLS, QUIC),
/// with room to spare so a noisy machine does not fail it.
const RSS_CEILING_BYTES: u64 = 400 << 20;

fn name(i: u64) -> String {
    format!("file-{i:07}")
}

/// A figure from /proc/PID/status, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib * 1024
}

/// Snapshots soon and no log kept behind them, so the member that joins
/// at the end must start from a snapshot of the whole namespace.
fn start(member: &Member, init: bool) -> Daemon {
    start_with(member, init, 1000, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_files_fit_in_a_64_mib_cache() {
    let files = files();
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let m = member(
        root.path(),
        &pki,
        1,
        &format!("cache_bytes = {CACHE_BYTES}"),
    );
    let data_dir = root.path().join("meta-1-data");

    // A group of one, with the directory the files go into.
    let daemon = start(&m, true);
    wait_for(&pki, m.addr, "a leader", |s| s.leader.is_some()).await;
    let client = meta_client(&pki, "test-client", &[&m]);
    let big = entry_ino(
        client
            .call(MetaOp::Mkdir {
                parent: InodeId::ROOT,
                name: b"big".to_vec(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await
            .unwrap(),
    );
    drop(client);
    daemon.kill();

    // The million files, by the state machine's own code.
    let started = Instant::now();
    {
        let db = std::sync::Arc::new(
            tessera_meta::server::open_db(&data_dir, CACHE_BYTES).expect("open the store"),
        );
        let sm = StateMachine::open(db, Policy::Replicas(3), 0, (CACHE_BYTES / 2) as usize)
            .expect("open the state");
        let mut state = sm.shared.state.write().unwrap();
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        for i in 0..files {
            let reply = state.apply(&Command::Client {
                request_id: RequestId::fresh(),
                op: create(big, &name(i)),
                now_ns,
            });
            assert!(reply.is_ok(), "create {i}: {reply:?}");
            if i % 20_000 == 19_999 {
                state.commit(Vec::new()).expect("commit");
            }
        }
        state.commit(Vec::new()).expect("commit");
        assert_eq!(state.ns.inode_count(), files + 2);
    }
    eprintln!(
        "{files} files written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let daemon = start(&m, false);
    let pid = daemon.child.id();
    wait_for(&pki, m.addr, "a leader", |s| s.leader.is_some()).await;
    let client = meta_client(&pki, "test-client", &[&m]);
    let first = client
        .call(MetaOp::Lookup {
            parent: big,
            name: name(files - 1).into_bytes(),
        })
        .await
        .unwrap();
    eprintln!(
        "serving {files} files {:.2} s after the start, RSS {} MiB",
        started.elapsed().as_secs_f64(),
        proc_status(pid, "VmRSS:") >> 20
    );
    assert!(matches!(first, MetaReply::Entry(_)));

    // Lookups and stats of files all over the directory.
    let mut rng = rand::rng();
    for _ in 0..5_000 {
        let i = rng.random_range(0..files);
        let attr = match client
            .call(MetaOp::Lookup {
                parent: big,
                name: name(i).into_bytes(),
            })
            .await
            .unwrap()
        {
            MetaReply::Entry(attr) => attr,
            other => panic!("lookup {i}: {other:?}"),
        };
        let MetaReply::Attr(again) = client
            .call(MetaOp::GetAttr { ino: attr.ino })
            .await
            .unwrap()
        else {
            panic!("stat {i}");
        };
        assert_eq!(again.ino, attr.ino);
    }
    // The whole directory, in order.
    let names = list_all(&client, big).await;
    assert_eq!(names.len() as u64, files);
    assert!(names.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(names[0], name(0).into_bytes());
    drop(names);
    // And it still takes new ones.
    for i in files..files + 2_000 {
        client.call(create(big, &name(i))).await.unwrap();
    }

    // A new member joins and receives the whole namespace as a snapshot,
    // streamed from a file on both sides.
    let second = member(
        root.path(),
        &pki,
        2,
        &format!("cache_bytes = {CACHE_BYTES}"),
    );
    let joined = start(&second, false);
    // Adding waits until the learner caught up from the snapshot, longer
    // than a default attempt (a retry would find the change in progress).
    let admin = meta_client(&pki, "test-meta", &[&m]).with_timeouts(MetaTimeouts {
        attempt: Duration::from_secs(600),
        deadline: Duration::from_secs(600),
    });
    let started = Instant::now();
    let added = admin
        .leader_call(&AddMember {
            node: NodeId(2),
            address: second.addr.to_string(),
            voter: true,
        })
        .await;
    // The members' logs go with the test's folder: their ends say why.
    if let Err(err) = added {
        panic!(
            "adding a member failed after {:.1} s: {err}\n{}\n{}",
            started.elapsed().as_secs_f64(),
            common::log_tail(&m.log, 40),
            common::log_tail(&second.log, 40)
        );
    }
    let target = wait_for(&pki, m.addr, "the leader", |s| s.leader.is_some())
        .await
        .applied_index
        .unwrap_or(0);
    wait_for(&pki, second.addr, "the new member to catch up", |s| {
        s.applied_index.unwrap_or(0) >= target && s.members.len() == 2
    })
    .await;
    eprintln!(
        "a new member caught up with {files} files in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log = std::fs::read_to_string(&second.log).unwrap_or_default();
    assert!(
        log.contains("snapshot installed"),
        "the new member did not install a snapshot:\n{log}"
    );

    let peak = proc_status(pid, "VmHWM:");
    let now = proc_status(pid, "VmRSS:");
    eprintln!(
        "metaserver with {files} files and a {} MiB cache: peak RSS {} MiB, now {} MiB (ceiling {} MiB)",
        CACHE_BYTES >> 20,
        peak >> 20,
        now >> 20,
        RSS_CEILING_BYTES >> 20
    );
    assert!(
        peak < RSS_CEILING_BYTES,
        "peak RSS {} MiB is over the {} MiB ceiling",
        peak >> 20,
        RSS_CEILING_BYTES >> 20
    );

    // The new member's store holds every file, and passes the whole check.
    drop(admin);
    drop(client);
    joined.kill();
    daemon.kill();
    let db = std::sync::Arc::new(
        tessera_meta::server::open_db(&root.path().join("meta-2-data"), 16 << 20).unwrap(),
    );
    let sm = StateMachine::open(db, Policy::Replicas(3), 0, 1 << 20).unwrap();
    let state = sm.shared.read();
    assert_eq!(state.ns.inode_count(), files + 2_000 + 2);
    assert_eq!(state.ns.dir_totals(big).unwrap().entries, files + 2_000);
    state
        .ns
        .check()
        .expect("the received namespace passes the whole check");
}
