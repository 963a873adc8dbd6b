//! Metaserver benchmark: create, stat, rename and unlink per second at
//! concurrency 1 and 64, against 1 and 3 voters (separate processes on
//! loopback), next to the raw rate of synced RocksDB write batches on the
//! same disk in the same run.
//!
//! Run: `cargo run --release -p tessera-meta --example meta_bench -- [--dir DIR] [--ops N]`

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_client::MetaClient;
use tessera_meta::server::DEFAULT_CACHE_BYTES;
use tessera_proto::ids::{InodeId, NodeId};
use tessera_proto::meta::{AddMember, FileKind, MetaOp, MetaReply, RenameMode};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| common::flag(&args, name);
    let dir = PathBuf::from(value("--dir").unwrap_or_else(|| "/var/tmp/tessera-meta-bench".into()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if let Some(id) = value("--serve") {
        let id: u64 = id.parse().expect("--serve ID");
        let port: u16 = value("--port").expect("--port").parse().expect("port");
        let config = common::config(&dir, id, port, DEFAULT_CACHE_BYTES);
        runtime.block_on(common::serve(config, args.iter().any(|a| a == "--init")));
    } else {
        let ops: usize = value("--ops")
            .map(|v| v.parse().expect("--ops N"))
            .unwrap_or(4000);
        runtime.block_on(bench(&dir, ops));
    }
}

/// Synced RocksDB write batches per second, one writer: the floor an
/// unbatched metaserver could not beat.
fn rocksdb_synced_rate(dir: &Path) -> f64 {
    let path = dir.join("raw-rocksdb");
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    let db = rocksdb::DB::open(&options, &path).expect("open rocksdb");
    let mut write_options = rocksdb::WriteOptions::default();
    write_options.set_sync(true);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(3) {
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(n.to_be_bytes(), [0u8; 128]);
        db.write_opt(batch, &write_options).expect("write");
        n += 1;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn ino(reply: MetaReply) -> InodeId {
    match reply {
        MetaReply::Entry(attr) | MetaReply::Attr(attr) => attr.ino,
        other => panic!("unexpected reply {other:?}"),
    }
}

async fn phase(
    client: &Arc<MetaClient>,
    concurrency: usize,
    ops: usize,
    make: impl Fn(usize) -> MetaOp + Send + Sync + 'static,
) -> f64 {
    let make = Arc::new(make);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, make) = (client.clone(), make.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while i < ops {
                client.call(make(i)).await.expect("metadata call");
                i += concurrency;
            }
        }));
    }
    for task in tasks {
        task.await.expect("worker");
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

async fn bench(dir: &Path, ops: usize) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
    let ca = common::make_ca(dir, 3);
    let raw = rocksdb_synced_rate(dir);
    println!("raw RocksDB synced write batches, one writer: {raw:.0}/s");
    println!();
    println!(
        "| voters | concurrency | create/s | stat/s | rename/s | unlink/s | create / raw synced batch |"
    );
    println!("|---|---|---|---|---|---|---|");
    for voters in [1u64, 3] {
        let group = dir.join(format!("group-{voters}"));
        std::fs::create_dir_all(&group).expect("group dir");
        std::fs::create_dir_all(group.join("ca")).expect("ca dir");
        for entry in std::fs::read_dir(&ca).expect("ca") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), group.join("ca").join(entry.file_name())).expect("copy ca");
        }
        let mut children = Vec::new();
        let mut addrs = Vec::new();
        for id in 1..=voters {
            let (child, addr) = common::spawn(&group, id, common::free_port(), id == 1, &[]);
            children.push(child);
            addrs.push(addr);
        }
        let client = Arc::new(common::connect(&ca, "bench-client", addrs.clone()));
        if voters > 1 {
            let admin = common::connect(&ca, "meta-1", addrs.clone());
            for (i, addr) in addrs.iter().enumerate().skip(1) {
                admin
                    .leader_call(&AddMember {
                        node: NodeId(i as u64 + 1),
                        address: addr.to_string(),
                        voter: true,
                    })
                    .await
                    .expect("add member");
            }
        }
        for concurrency in [1usize, 64] {
            let name = format!("c{concurrency}");
            let dir_ino = ino(client
                .call(MetaOp::Mkdir {
                    parent: InodeId::ROOT,
                    name: name.into_bytes(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                })
                .await
                .expect("mkdir"));
            let n = if concurrency == 1 { ops / 4 } else { ops };
            let create = phase(&client, concurrency, n, move |i| MetaOp::Create {
                parent: dir_ino,
                name: format!("f{i}").into_bytes(),
                kind: FileKind::File,
                mode: 0o644,
                uid: 0,
                gid: 0,
                rdev: 0,
                exclusive: true,
            })
            .await;
            let stat = phase(&client, concurrency, n, move |i| MetaOp::Lookup {
                parent: dir_ino,
                name: format!("f{i}").into_bytes(),
            })
            .await;
            let rename = phase(&client, concurrency, n, move |i| MetaOp::Rename {
                parent: dir_ino,
                name: format!("f{i}").into_bytes(),
                new_parent: dir_ino,
                new_name: format!("g{i}").into_bytes(),
                mode: RenameMode::Replace,
            })
            .await;
            let unlink = phase(&client, concurrency, n, move |i| MetaOp::Unlink {
                parent: dir_ino,
                name: format!("g{i}").into_bytes(),
            })
            .await;
            println!(
                "| {voters} | {concurrency} | {create:.0} | {stat:.0} | {rename:.0} | {unlink:.0} | {:.1} |",
                create / raw
            );
        }
        for mut child in children {
            drop(child.stdin.take());
            let _ = child.wait();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}
