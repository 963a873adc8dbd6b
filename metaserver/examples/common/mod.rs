//! What the metaserver benchmarks share: their flags, a CA, the
//! configuration of a member, the member as its own process (the benchmark
//! binary started with `--serve`), a client, and resident memory from /proc.

// Each benchmark uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use tessera_client::MetaClient;
use tessera_meta::MetaConfig;
use tessera_meta::server::RaftSettings;
use tessera_proto::config::{LogConfig, NodeConfig, TlsFiles};
use tessera_proto::rpc::{RpcClient, TransportOptions};
use tessera_proto::tls::{self, Identity, Role};

/// A CA in `dir/ca` with certificates for members `1..=members` and for
/// the benchmark's client.
pub fn make_ca(dir: &Path, members: u64) -> PathBuf {
    let ca = dir.join("ca");
    tls::ca_init(&ca).expect("ca");
    for id in 1..=members {
        tls::ca_issue(&ca, Role::Meta, &format!("meta-{id}")).expect("issue");
    }
    tls::ca_issue(&ca, Role::Client, "bench-client").expect("issue");
    ca
}

pub fn data_dir(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("meta-{id}-data"))
}

/// Member `id` in `dir` (its CA in `dir/ca`).
pub fn config(dir: &Path, id: u64, port: u16, cache_bytes: u64) -> MetaConfig {
    let ca = dir.join("ca");
    let name = format!("meta-{id}");
    MetaConfig {
        node: NodeConfig {
            name: name.clone(),
            listen: format!("127.0.0.1:{port}").parse().expect("addr"),
            metrics_listen: None,
            metrics_token_file: None,
            tls: TlsFiles {
                ca: ca.join("ca.crt"),
                cert: ca.join(format!("{name}.crt")),
                key: ca.join(format!("{name}.key")),
            },
            log: LogConfig::default(),
            transport: TransportOptions::loopback(),
        },
        node_id: id,
        data_dir: data_dir(dir, id),
        token_key: ca.join("token.key"),
        advertise: None,
        default_policy: "replicas:3".into(),
        chunk_heartbeat_interval_ms: 2000,
        raft: RaftSettings::default(),
        repair: Default::default(),
        compaction: Default::default(),
        cache_bytes,
        session: Default::default(),
    }
}

/// The member process: prints its address once it listens, and stops when
/// its stdin closes (or is killed, to test crash recovery).
pub async fn serve(config: MetaConfig, init: bool) {
    let server = tessera_meta::MetaServer::start(config, &prometheus::Registry::new(), init)
        .await
        .expect("start metaserver");
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

/// Starts this binary as member `id` with `--serve` (and `extra`
/// arguments) and returns once it listens.
pub fn spawn(dir: &Path, id: u64, port: u16, init: bool, extra: &[String]) -> (Child, SocketAddr) {
    let mut command = Command::new(std::env::current_exe().expect("exe"));
    command.args([
        "--dir",
        dir.to_str().expect("utf-8 dir"),
        "--serve",
        &id.to_string(),
        "--port",
        &port.to_string(),
    ]);
    command.args(extra);
    if init {
        command.arg("--init");
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn metaserver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the metaserver's address");
    let addr = line.trim().parse().unwrap_or_else(|_| {
        panic!("the metaserver exited before listening (printed {line:?}); see its error above")
    });
    (child, addr)
}

pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("port")
}

/// A client with identity `name` from the CA in `ca`.
pub fn connect(ca: &Path, name: &str, addrs: Vec<SocketAddr>) -> MetaClient {
    let identity = Identity::load_from_dir(ca, name).expect("identity");
    let rpc = RpcClient::new(
        &identity,
        &TransportOptions::loopback(),
        "127.0.0.1:0".parse().expect("addr"),
    )
    .expect("rpc client");
    MetaClient::new(rpc, addrs).expect("meta client")
}

/// The value after `name` on the command line.
pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// The number after `name` (underscores allowed), or `default`.
pub fn number<T: FromStr>(args: &[String], name: &str, default: T) -> T {
    match flag(args, name) {
        None => default,
        Some(v) => v
            .replace('_', "")
            .parse()
            .unwrap_or_else(|_| panic!("{name} expects a number, got {v:?}")),
    }
}

/// Resident memory of process `pid`, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no VmRSS in {path}"))
        * 1024
}
