//! Chunkserver benchmark: sealed writes and verified reads of 64 MiB pieces
//! through the data service, from a client process to a chunkserver process,
//! at concurrency 1 and 8, next to `dd` with fsync on the same disk in the
//! same run.
//!
//! Run: `cargo run --release -p tessera-chunk --example chunk_bench -- --dir DIR [--pieces N]`
//! DIR must be on the disk under test; it is emptied first. Run as root so
//! the page cache can be dropped before the read passes.

use bytes::Bytes;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tessera_chunk::ChunkConfig;
use tessera_chunk::scrub::ScrubConfig;
use tessera_chunk::store::DiskConfig;
use tessera_proto::checksum::checksum_of;
use tessera_proto::chunk::{ReadPiece, WritePiece};
use tessera_proto::config::{LogConfig, NodeConfig, TlsFiles};
use tessera_proto::ids::{ChunkId, PieceId};
use tessera_proto::rpc::{CallOptions, Peer, RpcClient, TransportOptions};
use tessera_proto::tls::{self, Identity, Role};
use tessera_proto::token::{Capability, Rights, TokenKey};

const PIECE_BYTES: usize = 64 << 20;
const MIB: f64 = 1024.0 * 1024.0;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dir =
        PathBuf::from(value("--dir").unwrap_or_else(|| "/var/tmp/tessera-chunk-bench".into()));
    let pieces: u64 = value("--pieces")
        .map(|v| v.parse().expect("--pieces N"))
        .unwrap_or(16);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.iter().any(|a| a == "--serve") {
        runtime.block_on(serve(&dir));
    } else {
        runtime.block_on(bench(&dir, pieces));
    }
}

fn config(dir: &Path) -> ChunkConfig {
    let ca = dir.join("ca");
    ChunkConfig {
        node: NodeConfig {
            name: "bench-chunk".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            metrics_listen: None,
            metrics_token_file: None,
            tls: TlsFiles {
                ca: ca.join("ca.crt"),
                cert: ca.join("bench-chunk.crt"),
                key: ca.join("bench-chunk.key"),
            },
            log: LogConfig::default(),
            transport: TransportOptions::loopback(),
        },
        token_key: ca.join("token.key"),
        meta: vec![],
        advertise: None,
        rack: String::new(),
        zone: String::new(),
        heartbeat_interval_ms: 2000,
        sync_interval_ms: 1_000,
        disks: vec![DiskConfig {
            path: dir.join("disk"),
            reserve_bytes: 0,
            capacity_bytes: None,
        }],
        scrub: ScrubConfig {
            enabled: false,
            ..ScrubConfig::default()
        },
        repair: Default::default(),
    }
}

async fn serve(dir: &Path) {
    let server = tessera_chunk::ChunkServer::start(config(dir), &prometheus::Registry::new())
        .await
        .expect("start chunkserver");
    println!("{}", server.addr());
    let _ = std::io::stdout().flush();
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .expect("stdin");
    server.shutdown().await;
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn dd(args: &[String]) -> Duration {
    let started = Instant::now();
    let status = Command::new("dd")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("run dd");
    assert!(status.success(), "dd failed");
    started.elapsed()
}

async fn bench(dir: &Path, pieces: u64) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("disk")).expect("bench dir");
    let ca = dir.join("ca");
    tls::ca_init(&ca).expect("ca");
    tls::ca_issue(&ca, Role::Chunk, "bench-chunk").expect("issue");
    tls::ca_issue(&ca, Role::Client, "bench-client").expect("issue");
    let key = TokenKey::load(&ca.join("token.key")).expect("key");
    let total_mib = pieces as f64 * PIECE_BYTES as f64 / MIB;

    // Baseline: the disk's own fsynced sequential write and cold read,
    // measured before and after the service passes; the ratio uses their
    // mean because this virtual disk's fsync speed drifts within a run.
    let dd_file = dir.join("dd.bin");
    let count = format!("count={}", pieces * (PIECE_BYTES as u64 >> 20));
    let dd_pass = || {
        let write = dd(&[
            "if=/dev/zero".into(),
            format!("of={}", dd_file.display()),
            "bs=1M".into(),
            count.clone(),
            "conv=fsync".into(),
        ]);
        let cold = drop_caches();
        let read = dd(&[
            format!("if={}", dd_file.display()),
            "of=/dev/null".into(),
            "bs=1M".into(),
        ]);
        let _ = std::fs::remove_file(&dd_file);
        (
            total_mib / write.as_secs_f64(),
            total_mib / read.as_secs_f64(),
            cold,
        )
    };
    let (dd_write_before, dd_read_before, cold) = dd_pass();

    let mut server = Command::new(std::env::current_exe().expect("exe"))
        .args(["--serve", "--dir"])
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn chunkserver process");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("address");
    let addr: SocketAddr = line.trim().parse().expect("server address");
    let identity = Identity::load_from_dir(&ca, "bench-client").expect("identity");
    let client = RpcClient::new(
        &identity,
        &TransportOptions::loopback(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("client");
    let peer = Peer::new(addr, Role::Chunk);

    let data: Bytes = (0..PIECE_BYTES)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect::<Vec<_>>()
        .into();
    let checksum = checksum_of(&data);
    let options = CallOptions::with_timeout(Duration::from_secs(600));
    let token = |chunk: u64, rights| {
        key.mint(Capability {
            chunk: ChunkId(chunk),
            rights,
            expires_at_ms: u64::MAX,
        })
    };

    let mut results = Vec::new();
    let mut base = 0u64;
    for concurrency in [1u64, 8] {
        let started = Instant::now();
        let mut next = 0;
        let mut running = tokio::task::JoinSet::new();
        while next < pieces || !running.is_empty() {
            while next < pieces && (running.len() as u64) < concurrency {
                let chunk = base + next;
                let msg = WritePiece {
                    piece: PieceId {
                        chunk: ChunkId(chunk),
                        index: 0,
                    },
                    length: PIECE_BYTES as u64,
                    checksum,
                    token: token(chunk, Rights::WRITE),
                };
                let (client, data) = (client.clone(), data.clone());
                running.spawn(async move {
                    let mut call = client
                        .open(peer, &msg, PIECE_BYTES as u64, options)
                        .await
                        .expect("open write");
                    for at in (0..PIECE_BYTES).step_by(1 << 20) {
                        call.write_bytes(data.slice(at..at + (1 << 20)))
                            .await
                            .expect("write");
                    }
                    call.finish().await.expect("seal");
                });
                next += 1;
            }
            if let Some(done) = running.join_next().await {
                done.expect("write task");
            }
        }
        let write_rate = total_mib / started.elapsed().as_secs_f64();
        results.push(("sealed write", concurrency, write_rate));

        drop_caches();
        let started = Instant::now();
        let mut next = 0;
        while next < pieces || !running.is_empty() {
            while next < pieces && (running.len() as u64) < concurrency {
                let chunk = base + next;
                let msg = ReadPiece {
                    piece: PieceId {
                        chunk: ChunkId(chunk),
                        index: 0,
                    },
                    offset: 0,
                    length: PIECE_BYTES as u64,
                    token: token(chunk, Rights::READ),
                };
                let client = client.clone();
                let expected = checksum;
                running.spawn(async move {
                    let call = client
                        .open(peer, &msg, 0, options)
                        .await
                        .expect("open read");
                    let mut response = call.finish().await.expect("read");
                    let mut hasher = tessera_proto::checksum::PieceHasher::new();
                    while let Some(bytes) = response.bulk().next().await.expect("bulk") {
                        hasher.update(&bytes);
                    }
                    assert_eq!(hasher.finish().1, expected, "read back different bytes");
                });
                next += 1;
            }
            if let Some(done) = running.join_next().await {
                done.expect("read task");
            }
        }
        let read_rate = total_mib / started.elapsed().as_secs_f64();
        results.push(("verified read", concurrency, read_rate));
        base += pieces;
    }
    drop(server.stdin.take());
    let _ = server.wait();
    let (dd_write_after, dd_read_after, _) = dd_pass();
    let dd_write = (dd_write_before + dd_write_after) / 2.0;
    let dd_read = (dd_read_before + dd_read_after) / 2.0;
    println!(
        "disk: dd write with fsync {dd_write_before:.0} then {dd_write_after:.0} MiB/s; dd read {dd_read_before:.0} then {dd_read_after:.0} MiB/s ({})",
        if cold {
            "cold cache"
        } else {
            "warm cache: could not drop caches"
        }
    );
    println!();
    println!("| operation | concurrency | MiB/s | ratio to dd (mean of before and after) |");
    println!("|---|---|---|---|");
    for (operation, concurrency, rate) in results {
        let baseline = if operation == "sealed write" {
            dd_write
        } else {
            dd_read
        };
        println!(
            "| {operation} | {concurrency} | {rate:.0} | {:.2} |",
            rate / baseline
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
