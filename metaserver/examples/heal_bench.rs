//! The leader's walks over the chunk map on disk: a healing pass (every
//! committed chunk assessed, read in pages) and a reconciliation of every
//! chunkserver's inventory against the map, over millions of chunks in
//! RocksDB, with the process's resident memory before and after. In
//! process: the state is built by applying commands directly, as a replica
//! does, without Raft.
//!
//! Run: `cargo run --release -p tessera-meta --example heal_bench -- [--dir DIR]
//! [--chunks N] [--cache-mib N]`

mod common;

use common::{flag, number};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_meta::healing::{Healing, RepairSettings};
use tessera_meta::kv::{RocksStore, Store};
use tessera_meta::registry::Registry;
use tessera_meta::server::open_db;
use tessera_meta::sm_store::CF_STATE;
use tessera_meta::state::State;
use tessera_meta::types::{Applied, Command};
use tessera_proto::chunk::{DiskReport, LoadReport, PieceInfo};
use tessera_proto::ids::{InodeId, NodeId, PieceId, RequestId};
use tessera_proto::meta::{Extent, FileKind, MetaOp, MetaReply, Policy};

const NODES: u64 = 6;
const CHUNKS_PER_FILE: u64 = 10;
const COMMIT_EVERY: u64 = 1000;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir =
        PathBuf::from(flag(&args, "--dir").unwrap_or_else(|| "/var/tmp/tessera-heal-bench".into()));
    let chunks: u64 = number(&args, "--chunks", 1_000_000);
    let cache_bytes = number::<u64>(&args, "--cache-mib", 256) << 20;
    let _ = std::fs::remove_dir_all(&dir);
    let db = Arc::new(open_db(&dir, cache_bytes).expect("open RocksDB"));
    let store: Arc<dyn Store> = Arc::new(RocksStore::new(db, CF_STATE).expect("store"));
    let mut state = State::open(
        store.clone(),
        (cache_bytes / 2) as usize,
        Policy::Replicas(3),
        0,
    )
    .expect("state");
    let rss_start = rss_bytes();

    let started = Instant::now();
    let nodes = register(&mut state);
    fill(&mut state, &nodes, chunks);
    let fill_time = started.elapsed();
    println!(
        "built {chunks} committed chunks (replicas:3 over {NODES} nodes) in {:.1} s",
        fill_time.as_secs_f64()
    );
    let rss_filled = rss_bytes();

    let started = Instant::now();
    let raw = raw_scan(store.as_ref());
    let raw_time = started.elapsed();
    assert_eq!(raw, chunks, "the raw scan saw every chunk record");

    let now = Instant::now();
    let mut registry = Registry::default();
    for node in &nodes {
        registry.heartbeat(*node, disk(), LoadReport::default(), now);
    }
    let mut healing = Healing::new(RepairSettings::default(), now);
    let views = healing.views(&state, &registry, now);
    let started = Instant::now();
    let assessment = healing.assess(&state, &views, now);
    let pass = started.elapsed();
    assert_eq!(assessment.status.chunks, chunks, "the pass saw every chunk");
    assert!(assessment.queue.is_empty(), "nothing needs repair");
    drop(views);
    let rss_pass = rss_bytes();

    let started = Instant::now();
    for node in &nodes {
        let pieces = inventory(&state, *node);
        registry.inventory_page(*node, 1, &pieces, true, now);
    }
    let inventories = started.elapsed();
    let rss_inventories = rss_bytes();
    let started = Instant::now();
    registry.reconcile(&state, now);
    let reconcile = started.elapsed();

    let per_s = |d: Duration| chunks as f64 / d.as_secs_f64();
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    println!(
        "| healing pass over {chunks} chunks (no inventories) | {:.2} s ({:.0} chunks/s) |",
        pass.as_secs_f64(),
        per_s(pass)
    );
    println!(
        "| raw RocksDB scan of the same {chunks} chunk records, pages of 4096, no decoding (same run) | {:.2} s ({:.0} records/s) |",
        raw_time.as_secs_f64(),
        per_s(raw_time)
    );
    println!(
        "| reconciling {NODES} inventories of {} pieces in all against the map | {:.2} s ({:.0} pieces/s) |",
        chunks * 3,
        reconcile.as_secs_f64(),
        (chunks * 3) as f64 / reconcile.as_secs_f64()
    );
    println!(
        "| reading the inventories back from the map (test setup) | {:.2} s |",
        inventories.as_secs_f64()
    );
    println!(
        "| RSS: empty / {chunks} chunks on disk / after a pass / with the inventories | {} / {} / {} / {} MiB |",
        rss_start >> 20,
        rss_filled >> 20,
        rss_pass >> 20,
        rss_inventories >> 20
    );
}

fn disk() -> Vec<DiskReport> {
    vec![DiskReport {
        path: "/d".into(),
        capacity_bytes: 1 << 50,
        free_bytes: 1 << 50,
        reserve_bytes: 0,
        pieces: 0,
    }]
}

fn register(state: &mut State) -> Vec<NodeId> {
    (1..=NODES)
        .map(|n| {
            match state.apply(&Command::Register {
                name: format!("chunk-{n}"),
                address: format!("127.0.0.1:{n}"),
                labels: Default::default(),
                now_ns: 0,
            }) {
                Ok(Applied::Node(node)) => node,
                other => panic!("register: {other:?}"),
            }
        })
        .collect()
}

fn client(state: &mut State, op: MetaOp) -> MetaReply {
    match state.apply(&Command::Client {
        request_id: RequestId::fresh(),
        op,
        now_ns: 1,
    }) {
        Ok(Applied::Meta(reply)) => reply,
        other => panic!("apply: {other:?}"),
    }
}

/// `chunks` chunks of 1 MiB, ten per file, each allocated and
/// committed as a writer would.
fn fill(state: &mut State, nodes: &[NodeId], chunks: u64) {
    let mut file = InodeId(0);
    let mut last_report = Instant::now();
    for i in 0..chunks {
        if i % CHUNKS_PER_FILE == 0 {
            let reply = client(
                state,
                MetaOp::Create {
                    parent: InodeId::ROOT,
                    name: format!("f{}", i / CHUNKS_PER_FILE).into_bytes(),
                    kind: FileKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    exclusive: true,
                },
            );
            let MetaReply::Entry(attr) = reply else {
                panic!("create: {reply:?}")
            };
            file = attr.ino;
        }
        let first = (i % NODES) as usize;
        let placed: Vec<NodeId> = (0..3).map(|k| nodes[(first + k) % nodes.len()]).collect();
        let chunk = match state.apply(&Command::Allocate {
            request_id: RequestId::fresh(),
            ino: file,
            policy: Policy::Replicas(3),
            nodes: placed,
            now_ns: 1,
        }) {
            Ok(Applied::Meta(MetaReply::Chunk(placement))) => placement.chunk,
            other => panic!("allocate: {other:?}"),
        };
        let offset = (i % CHUNKS_PER_FILE) << 20;
        client(
            state,
            MetaOp::CommitExtents {
                ino: file,
                extents: vec![Extent {
                    offset,
                    length: 1 << 20,
                    chunk,
                    chunk_offset: 0,
                }],
                chunk_lengths: vec![(chunk, 1 << 20)],
                piece_checksums: Vec::new(),
                min_size: offset + (1 << 20),
            },
        );
        if (i + 1) % COMMIT_EVERY == 0 {
            state.commit(Vec::new()).expect("commit");
        }
        if last_report.elapsed() >= PROGRESS_EVERY {
            eprintln!("  {} of {chunks} chunks", i + 1);
            last_report = Instant::now();
        }
    }
    state.commit(Vec::new()).expect("commit");
}

/// What a chunkserver would report: every piece the map places on it.
fn inventory(state: &State, node: NodeId) -> Vec<PieceInfo> {
    let mut out = Vec::new();
    let mut next = tessera_proto::ids::ChunkId::default();
    loop {
        let page = state.chunks_on(node, next, 4096);
        for (chunk, indexes) in &page {
            for index in indexes {
                out.push(PieceInfo {
                    piece: PieceId {
                        chunk: *chunk,
                        index: *index,
                    },
                    length: 1 << 20,
                    checksum: [0; 32],
                });
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == 4096 => next = tessera_proto::ids::ChunkId(last.0 + 1),
            _ => return out,
        }
    }
}

/// Chunk records read straight from the store in the pages a pass uses:
/// the floor under a pass.
fn raw_scan(store: &dyn Store) -> u64 {
    let mut from = b"c".to_vec();
    let mut count = 0;
    loop {
        let page = store.scan(&from, b"d", 4096).expect("scan");
        count += page.len() as u64;
        match page.last() {
            Some((key, _)) if page.len() == 4096 => from = [key.as_slice(), &[0]].concat(),
            _ => return count,
        }
    }
}

/// This process's resident memory.
fn rss_bytes() -> u64 {
    common::rss_bytes(std::process::id())
}
