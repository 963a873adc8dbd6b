//! Helpers shared by the end-to-end tests: a cluster CA in a temporary
//! folder, real `tessera` processes, and clients that speak to them.
#![allow(dead_code)]

pub mod cluster;
pub mod meta;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tessera_proto::ids::ChunkId;
use tessera_proto::rpc::{RpcClient, TransportOptions};
use tessera_proto::tls::{self, Identity, Role};
use tessera_proto::token::{Capability, Rights, Token, TokenKey, unix_now_ms};

pub fn tessera_bin() -> &'static str {
    env!("CARGO_BIN_EXE_tessera")
}

/// A cluster CA with a client and a metaserver identity.
pub struct Pki {
    pub dir: PathBuf,
    pub token_key: TokenKey,
}

impl Pki {
    pub fn new(root: &Path) -> Pki {
        let dir = root.join("ca");
        tls::ca_init(&dir).expect("ca init");
        tls::ca_issue(&dir, Role::Client, "test-client").expect("issue client");
        tls::ca_issue(&dir, Role::Meta, "test-meta").expect("issue meta");
        let token_key = TokenKey::load(&dir.join(tls::TOKEN_KEY_FILE)).expect("token key");
        Pki { dir, token_key }
    }

    pub fn issue(&self, role: Role, name: &str) {
        tls::ca_issue(&self.dir, role, name).expect("issue");
    }

    pub fn client(&self, name: &str) -> RpcClient {
        let identity = Identity::load_from_dir(&self.dir, name).expect("identity");
        RpcClient::new(
            &identity,
            &TransportOptions::loopback(),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("client")
    }

    pub fn token(&self, chunk: u64, rights: Rights) -> Token {
        self.token_key.mint(Capability {
            chunk: ChunkId(chunk),
            rights,
            expires_at_ms: unix_now_ms() + 600_000,
        })
    }
}

/// The last `lines` lines of a daemon's log, headed by its path, for a
/// failure message: the log lives in a folder the failed test removes.
pub fn log_tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("--- {} (last {lines} lines)\n{tail}", log.display())
}

/// A `tessera` daemon process, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Daemon {
    /// Starts `tessera ARGS...` and waits for its "listening on ADDR" line.
    /// A port the test chose can be held for a moment by a socket the
    /// kernel has not finished closing; a start refused for that is retried.
    pub fn start(args: &[&str], log: &Path) -> Daemon {
        for _ in 0..4 {
            if let Some(daemon) = Daemon::try_start(args, log) {
                return daemon;
            }
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if !text.contains("Address already in use") {
                break;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
        panic!(
            "tessera {args:?} did not start; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }

    fn try_start(args: &[&str], log: &Path) -> Option<Daemon> {
        let log_file = std::fs::File::create(log).expect("log file");
        let mut child = Command::new(tessera_bin())
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("TESSERA_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("spawn tessera");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr.parse().expect("listen address"),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        };
        Some(Daemon { child, addr })
    }

    /// SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic test bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Fetches the Prometheus text of a metrics endpoint.
pub fn scrape(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect metrics");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("request metrics");
    let mut out = String::new();
    stream.read_to_string(&mut out).expect("read metrics");
    out
}

/// The value of the first sample of `name` in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

pub fn free_port() -> u16 {
    // Below the kernel's ephemeral range (32768 and up), so that a client
    // socket another test binds to port 0 cannot take it between this check
    // and the daemon's bind; a counter keeps one binary from handing a port
    // out twice.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let start = std::process::id() % 7000;
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(n < 7000, "no free port between 10000 and 17000");
        let port = 10_000 + ((start + n) % 7000) as u16;
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
        if udp && tcp {
            return port;
        }
    }
}

/// A file of `bytes` random bytes under `dir`.
pub fn random_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {bytes} /dev/urandom > '{}'",
            path.display()
        ))
        .status()
        .expect("head");
    assert!(status.success());
    path
}

pub fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg(a)
        .arg(b)
        .status()
        .expect("cmp")
        .success()
}
