//! Transport benchmark: 1 GiB over one stream and over 8 streams through the
//! RPC layer, through bare quinn with the same settings, over plain TCP and
//! over TCP with rustls (the same certificates, TLS 1.3 and cipher suites as
//! the QUIC connections), all in one run against a server in a separate
//! process; then small-call round trips per second at concurrency 1 and 64.
//!
//! Run: `cargo run --release -p tessera-proto --example transport_bench -- [--mtu N]
//! [--gso true|false] [--stream-window BYTES] [--conn-window BYTES]
//! [--send-window BYTES] [--connections N] [--gib N]`
//!
//! The figures print as a Markdown table with each result's ratio to TCP and
//! the RPC layer's ratio to bare quinn, since absolute figures on a shared
//! machine are noise.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::error::Error;
use tessera_proto::rpc::{
    Call, CallOptions, Peer, RpcClient, RpcMetrics, RpcServer, Service, TransportOptions,
};
use tessera_proto::tls::{self, Identity, Role};
use tessera_proto::wire::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;
const PIECE_BYTES: usize = 1024 * 1024;

#[derive(Serialize, Deserialize)]
struct Sink;
impl Method for Sink {
    const ID: u16 = 1090;
    const NAME: &'static str = "sink";
    const IDEMPOTENT: bool = false;
    type Response = u64;
}

#[derive(Serialize, Deserialize)]
struct Ping(u64);
impl Method for Ping {
    const ID: u16 = 1091;
    const NAME: &'static str = "ping";
    const IDEMPOTENT: bool = true;
    type Response = u64;
}

struct BenchService;

impl Service for BenchService {
    async fn handle(&self, call: &mut Call) -> Result<(), Error> {
        match call.method() {
            Sink::ID => {
                let mut total = 0u64;
                while let Some(piece) = call.request_bulk().next().await? {
                    total += piece.len() as u64;
                }
                call.respond(&total, 0).await
            }
            Ping::ID => {
                let Ping(n) = call.decode()?;
                call.respond(&n, 0).await
            }
            other => Err(Error::new(
                tessera_proto::ErrorCode::UnknownMethod,
                format!("{other}"),
            )),
        }
    }
}

struct Args {
    options: TransportOptions,
    gib: u64,
    ca_dir: Option<std::path::PathBuf>,
    serve: bool,
    raw: Vec<String>,
}

fn parse_args() -> Args {
    let raw: Vec<String> = std::env::args().skip(1).collect();
    let mut options = TransportOptions::default();
    let mut gib = 1;
    let mut ca_dir = None;
    let mut serve = false;
    let mut it = raw.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--mtu" => options.mtu_upper_bound_bytes = Some(value().parse().expect("--mtu N")),
            "--gso" => options.segmentation_offload = value().parse().expect("--gso true|false"),
            "--stream-window" => options.stream_window_bytes = value().parse().expect("bytes"),
            "--conn-window" => options.connection_window_bytes = value().parse().expect("bytes"),
            "--send-window" => options.send_window_bytes = value().parse().expect("bytes"),
            "--connections" => options.connections_per_peer = value().parse().expect("N"),
            "--gib" => gib = value().parse().expect("--gib N"),
            "--ca-dir" => ca_dir = Some(value().into()),
            "--serve" => serve = true,
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    options.validate().expect("transport options");
    Args {
        options,
        gib,
        ca_dir,
        serve,
        raw,
    }
}

fn main() {
    let args = parse_args();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.serve {
        runtime.block_on(serve(args));
    } else {
        runtime.block_on(bench(args));
    }
}

/// Server process: TCP sink, bare quinn sink and RPC sink; prints their
/// ports and runs until stdin closes.
async fn serve(args: Args) {
    let ca_dir = args.ca_dir.clone().expect("--ca-dir");
    let identity = Identity::load_from_dir(&ca_dir, "bench-server").expect("server identity");
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());

    let tcp = tokio::net::TcpListener::bind(localhost)
        .await
        .expect("bind tcp");
    let tcp_addr = tcp.local_addr().expect("tcp addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut buf = vec![0u8; PIECE_BYTES];
                let mut total = 0u64;
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = stream.write_all(&total.to_le_bytes()).await;
            });
        }
    });

    // TCP with TLS: blocking threads, one per connection, as a TCP bulk
    // channel beside QUIC would need at the least.
    let tls_listener = std::net::TcpListener::bind(localhost).expect("bind tcp+tls");
    let tls_addr = tls_listener.local_addr().expect("tcp+tls addr");
    let tls_config = Arc::new(tls::server_crypto(&identity).expect("server crypto"));
    std::thread::spawn(move || {
        for stream in tls_listener.incoming() {
            let Ok(stream) = stream else { break };
            let config = tls_config.clone();
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let Ok(connection) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut tls = rustls::StreamOwned::new(connection, stream);
                let mut buf = vec![0u8; PIECE_BYTES];
                let mut total = 0u64;
                loop {
                    match std::io::Read::read(&mut tls, &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = tls.write_all(&total.to_le_bytes());
                let _ = tls.flush();
            });
        }
    });

    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(
        tls::server_crypto(&identity).expect("server crypto"),
    )
    .expect("quic crypto");
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(
        args.options
            .transport_config(Some(localhost.ip()))
            .expect("transport"),
    ));
    let quic = args
        .options
        .bind(localhost, Some(config))
        .expect("bind quic");
    let quic_addr = quic.local_addr().expect("quic addr");
    tokio::spawn(async move {
        while let Some(incoming) = quic.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                    tokio::spawn(async move {
                        let mut total = 0u64;
                        while let Ok(Some(chunk)) = recv.read_chunk(PIECE_BYTES, true).await {
                            total += chunk.bytes.len() as u64;
                        }
                        let _ = send.write_all(&total.to_le_bytes()).await;
                        let _ = send.finish();
                        let _ = send.stopped().await;
                    });
                }
            });
        }
    });

    let rpc = RpcServer::start(
        &identity,
        &args.options,
        localhost,
        Arc::new(BenchService),
        RpcMetrics::unregistered(),
    )
    .expect("rpc server");
    let rpc_addr = rpc.local_addr().expect("rpc addr");
    println!("{tcp_addr} {quic_addr} {rpc_addr} {tls_addr}");
    let _ = std::io::stdout().flush();
    // Run until the parent closes our stdin.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await
    .expect("stdin watcher");
    rpc.shutdown().await;
}

fn gib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0 * 1024.0) / elapsed.as_secs_f64()
}

async fn tcp_upload(addr: SocketAddr, bytes: u64, piece: Bytes) -> u64 {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("tcp connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        stream.write_all(&piece[..n]).await.expect("tcp write");
        left -= n as u64;
    }
    stream.shutdown().await.expect("tcp shutdown");
    let mut ack = [0u8; 8];
    stream.read_exact(&mut ack).await.expect("tcp ack");
    u64::from_le_bytes(ack)
}

/// Uploads over TCP with TLS on a blocking thread (rustls is synchronous).
async fn tls_upload(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    bytes: u64,
    piece: Bytes,
) -> u64 {
    tokio::task::spawn_blocking(move || {
        let stream = std::net::TcpStream::connect(addr).expect("tcp+tls connect");
        stream.set_nodelay(true).expect("nodelay");
        let name = rustls_pki_types::ServerName::try_from(Role::Chunk.dns_name())
            .expect("server name")
            .to_owned();
        let connection = rustls::ClientConnection::new(config, name).expect("tls client");
        let mut tls = rustls::StreamOwned::new(connection, stream);
        let mut left = bytes;
        while left > 0 {
            let n = left.min(piece.len() as u64) as usize;
            tls.write_all(&piece[..n]).expect("tcp+tls write");
            left -= n as u64;
        }
        tls.conn.send_close_notify();
        tls.flush().expect("tcp+tls flush");
        let mut ack = [0u8; 8];
        std::io::Read::read_exact(&mut tls, &mut ack).expect("tcp+tls ack");
        u64::from_le_bytes(ack)
    })
    .await
    .expect("tcp+tls thread")
}

async fn quinn_upload(connection: quinn::Connection, bytes: u64, piece: Bytes) -> u64 {
    let (mut send, mut recv) = connection.open_bi().await.expect("open stream");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        send.write_chunk(piece.slice(..n))
            .await
            .expect("quinn write");
        left -= n as u64;
    }
    send.finish().expect("finish");
    let mut ack = [0u8; 8];
    recv.read_exact(&mut ack).await.expect("quinn ack");
    u64::from_le_bytes(ack)
}

async fn rpc_upload(client: RpcClient, peer: Peer, bytes: u64, piece: Bytes) -> u64 {
    let options = CallOptions::with_timeout(Duration::from_secs(600));
    let mut call = client
        .open(peer, &Sink, bytes, options)
        .await
        .expect("open call");
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len() as u64) as usize;
        call.write_bytes(piece.slice(..n)).await.expect("rpc write");
        left -= n as u64;
    }
    call.finish().await.expect("rpc finish").message
}

/// Runs `streams` uploads of `total / streams` bytes each in parallel and
/// returns the elapsed time.
async fn parallel<F, Fut>(total: u64, streams: u64, start: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = u64> + Send + 'static,
{
    let each = total / streams;
    let started = Instant::now();
    let tasks: Vec<_> = (0..streams).map(|_| tokio::spawn(start(each))).collect();
    for task in tasks {
        let received = task.await.expect("upload task");
        assert_eq!(received, each, "server received a different byte count");
    }
    started.elapsed()
}

async fn round_trips(client: &RpcClient, peer: Peer, concurrency: usize, run_for: Duration) -> f64 {
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut done = 0u64;
                while started.elapsed() < run_for {
                    let n = client
                        .call(peer, &Ping(done), CallOptions::default())
                        .await
                        .expect("ping");
                    assert_eq!(n, done);
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("ping task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

async fn bench(args: Args) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_dir = dir.path().join("ca");
    tls::ca_init(&ca_dir).expect("ca init");
    tls::ca_issue(&ca_dir, Role::Chunk, "bench-server").expect("issue server");
    tls::ca_issue(&ca_dir, Role::Client, "bench-client").expect("issue client");

    let mut server = Command::new(std::env::current_exe().expect("current exe"))
        .args(&args.raw)
        .arg("--serve")
        .arg("--ca-dir")
        .arg(&ca_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn server process");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("server stdout"))
        .read_line(&mut line)
        .expect("server ports");
    let addrs: Vec<SocketAddr> = line
        .split_whitespace()
        .map(|a| a.parse().expect("server address"))
        .collect();
    let (tcp_addr, quic_addr, rpc_addr, tls_addr) = (addrs[0], addrs[1], addrs[2], addrs[3]);

    let identity = Identity::load_from_dir(&ca_dir, "bench-client").expect("client identity");
    let localhost: SocketAddr = "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!());
    // Bare quinn goes through an RpcClient's pool too: same TLS, same
    // transport settings, same connection count; only the framing differs.
    let bare = RpcClient::new(&identity, &args.options, localhost).expect("bare client");
    let rpc = RpcClient::new(&identity, &args.options, localhost).expect("rpc client");
    let bare_peer = Peer::new(quic_addr, Role::Chunk);
    let rpc_peer = Peer::new(rpc_addr, Role::Chunk);

    let piece = Bytes::from(vec![0xa5u8; PIECE_BYTES]);
    let total = args.gib * 1024 * MIB;
    let o = &args.options;
    println!(
        "settings: mtu_upper_bound={} gso={} stream_window={} MiB conn_window={} MiB send_window={} MiB connections_per_peer={} size={} GiB",
        o.mtu_bound_for(Some(localhost.ip())),
        o.segmentation_offload,
        o.stream_window_bytes / MIB,
        o.connection_window_bytes / MIB,
        o.send_window_bytes / MIB,
        o.connections_per_peer,
        args.gib
    );

    // Warm up connections (and the MTU search) before timing.
    for _ in 0..o.connections_per_peer {
        quinn_upload(
            bare.connection(bare_peer).await.expect("connect"),
            16 * MIB,
            piece.clone(),
        )
        .await;
        rpc_upload(rpc.clone(), rpc_peer, 16 * MIB, piece.clone()).await;
    }
    tcp_upload(tcp_addr, 16 * MIB, piece.clone()).await;
    let tls_config = Arc::new(tls::client_crypto(&identity).expect("client crypto"));
    tls_upload(tls_addr, tls_config.clone(), 16 * MIB, piece.clone()).await;

    let mut rows = Vec::new();
    for streams in [1u64, 8] {
        let p = piece.clone();
        let tcp = parallel(total, streams, move |n| tcp_upload(tcp_addr, n, p.clone())).await;
        let p = piece.clone();
        let c = tls_config.clone();
        let tls_time = parallel(total, streams, move |n| {
            tls_upload(tls_addr, c.clone(), n, p.clone())
        })
        .await;
        let p = piece.clone();
        let b = bare.clone();
        let quinn_time = parallel(total, streams, move |n| {
            let b = b.clone();
            let p = p.clone();
            async move {
                let connection = b.connection(bare_peer).await.expect("connect");
                quinn_upload(connection, n, p).await
            }
        })
        .await;
        let p = piece.clone();
        let r = rpc.clone();
        let rpc_time = parallel(total, streams, move |n| {
            rpc_upload(r.clone(), rpc_peer, n, p.clone())
        })
        .await;
        rows.push((
            streams,
            gib_per_s(total, tcp),
            gib_per_s(total, tls_time),
            gib_per_s(total, quinn_time),
            gib_per_s(total, rpc_time),
        ));
    }
    let mtu = rpc
        .connection(rpc_peer)
        .await
        .map(|c| c.stats().path.current_mtu)
        .unwrap_or(0);

    println!();
    println!(
        "| streams | TCP GiB/s | TCP+TLS GiB/s | bare quinn GiB/s | RPC GiB/s | quinn / TCP | RPC / TCP | RPC / TCP+TLS | RPC / quinn |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (streams, tcp, tcp_tls, quinn, rpc_rate) in &rows {
        println!(
            "| {streams} | {tcp:.2} | {tcp_tls:.2} | {quinn:.2} | {rpc_rate:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            quinn / tcp,
            rpc_rate / tcp,
            rpc_rate / tcp_tls,
            rpc_rate / quinn
        );
    }
    println!("path MTU reached: {mtu} bytes");

    println!();
    println!("| small calls, concurrency | calls/s |");
    println!("|---|---|");
    for concurrency in [1usize, 64] {
        let rate = round_trips(&rpc, rpc_peer, concurrency, Duration::from_secs(3)).await;
        println!("| {concurrency} | {rate:.0} |");
    }

    drop(server.stdin.take());
    let _ = server.wait();
}
