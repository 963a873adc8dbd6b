//! A metaserver killed with SIGKILL at random moments under a stream of
//! creates and renames: every acknowledged operation survives, calls in
//! flight complete once it is back (their retries carry the same request
//! id, so none is applied twice), and the store holds no half-applied entry:
//! the whole-store check recounts every link, entry count, directory total
//! and chunk reference after the last crash and finds them as recorded.

mod common;

use common::meta::{Member, create, entry_ino, member, meta_client, start_with, wait_for};
use common::{Daemon, Pki};
use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_meta::sm_store::StateMachine;
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{MetaOp, MetaReply, Policy, RenameMode};

const WORKERS: usize = 8;
const CRASHES: usize = 4;

/// Snapshots now and then, so a crash can also land in one.
fn start(member: &Member, init: bool) -> Daemon {
    start_with(member, init, 500, 100)
}

/// What a worker saw acknowledged, per file number: created, then renamed.
#[derive(Default)]
struct Acked {
    created: Vec<u64>,
    renamed: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_operations_survive_sigkill_and_nothing_is_half_applied() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let m = member(root.path(), &pki, 1, "");
    let mut daemon = start(&m, true);
    wait_for(&pki, m.addr, "a leader", |s| s.leader.is_some()).await;
    let client = Arc::new(meta_client(&pki, "test-client", &[&m]));
    let mut dirs = Vec::new();
    for w in 0..WORKERS {
        let reply = client
            .call(MetaOp::Mkdir {
                parent: InodeId::ROOT,
                name: format!("w{w}").into_bytes(),
                mode: 0o755,
                uid: 0,
                gid: 0,
            })
            .await
            .unwrap();
        dirs.push(entry_ino(reply));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<Mutex<Acked>>> = Arc::new((0..WORKERS).map(|_| Mutex::default()).collect());
    let mut workers = Vec::new();
    for (w, dir) in dirs.iter().copied().enumerate() {
        let (client, stop, acked) = (client.clone(), stop.clone(), acked.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                // Calls retry across the crash under one request id; one that
                // fails outright is simply not acknowledged.
                if client.call(create(dir, &format!("f{i}"))).await.is_ok() {
                    acked[w].lock().unwrap().created.push(i);
                    let rename = MetaOp::Rename {
                        parent: dir,
                        name: format!("f{i}").into_bytes(),
                        new_parent: dir,
                        new_name: format!("g{i}").into_bytes(),
                        mode: RenameMode::Replace,
                    };
                    if client.call(rename).await.is_ok() {
                        acked[w].lock().unwrap().renamed.push(i);
                    }
                }
                i += 1;
            }
        }));
    }

    let mut rng = rand::rng();
    for crash in 0..CRASHES {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1500))).await;
        daemon.kill();
        eprintln!("crash {crash}: metaserver killed");
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..500))).await;
        daemon = start(&m, false);
        wait_for(&pki, m.addr, "a leader", |s| s.leader.is_some()).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    // Every acknowledged operation is there.
    let mut total = 0;
    for (w, dir) in dirs.iter().copied().enumerate() {
        let (created, renamed_ones) = {
            let acked = acked[w].lock().unwrap();
            (acked.created.clone(), acked.renamed.clone())
        };
        assert!(!created.is_empty(), "worker {w} got nothing done");
        for i in &created {
            let lookup = |name: String| MetaOp::Lookup {
                parent: dir,
                name: name.into_bytes(),
            };
            let f = client.call(lookup(format!("f{i}"))).await;
            let g = client.call(lookup(format!("g{i}"))).await;
            let renamed = renamed_ones.contains(i);
            assert!(
                matches!(g, Ok(MetaReply::Entry(_))) || (!renamed && f.is_ok()),
                "w{w}/f{i}: acknowledged (renamed: {renamed}) but lost"
            );
            assert!(
                !(f.is_ok() && g.is_ok()),
                "w{w}/f{i} exists under both names"
            );
            if renamed {
                assert!(f.is_err(), "w{w}/f{i} is back after its rename");
            }
        }
        total += created.len();
    }
    eprintln!("{total} acknowledged creates checked after {CRASHES} crashes");
    drop(client);
    daemon.kill();

    // No half-applied entry: every counter agrees with a recount.
    let db = Arc::new(
        tessera_meta::server::open_db(&root.path().join("meta-1-data"), 16 << 20).unwrap(),
    );
    let sm = StateMachine::open(db, Policy::Replicas(3), 0, 1 << 20).unwrap();
    let state = sm.shared.read();
    state.ns.check().expect("the store passes the whole check");
    state
        .check_chunk_indexes()
        .expect("the chunk indexes match the chunk map");
    assert!(state.ns.inode_count() as usize > total + WORKERS);
}
