//! RPC over real QUIC on loopback: bulk both ways, mutual TLS refusals, roles,
//! tokens, bad input on one stream leaving the others working, deadlines,
//! retries and shutdown.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, RequestId};
use tessera_proto::limits::{HEADER_MAX_BYTES, RESPONSE_FIXED_BYTES};
use tessera_proto::rpc::{
    Call, CallOptions, Peer, RpcClient, RpcMetrics, RpcServer, Service, TransportOptions,
};
use tessera_proto::tls::{self, Identity, Role};
use tessera_proto::token::{Capability, Rights, Token, TokenKey, unix_now_ms};
use tessera_proto::wire::{self, Method};

#[derive(Serialize, Deserialize)]
struct Echo {
    text: String,
}
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct EchoReply {
    text: String,
    hash: [u8; 32],
}
impl Method for Echo {
    const ID: u16 = 1000;
    const NAME: &'static str = "echo";
    const IDEMPOTENT: bool = true;
    type Response = EchoReply;
}

#[derive(Serialize, Deserialize)]
struct DeletePiece {
    chunk: ChunkId,
}
impl Method for DeletePiece {
    const ID: u16 = 1001;
    const NAME: &'static str = "delete_piece";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

#[derive(Serialize, Deserialize)]
struct ReadWithToken {
    chunk: ChunkId,
    token: Token,
}
impl Method for ReadWithToken {
    const ID: u16 = 1002;
    const NAME: &'static str = "read_with_token";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

#[derive(Serialize, Deserialize)]
struct Sleep {
    ms: u64,
}
impl Method for Sleep {
    const ID: u16 = 1003;
    const NAME: &'static str = "sleep";
    const IDEMPOTENT: bool = false;
    type Response = ();
}

/// Fails with `Unavailable` until it has been called three times.
#[derive(Serialize, Deserialize)]
struct Flaky {
    key: u32,
}
impl Method for Flaky {
    const ID: u16 = 1004;
    const NAME: &'static str = "flaky";
    const IDEMPOTENT: bool = true;
    type Response = u32;
}
#[derive(Serialize, Deserialize)]
struct FlakyMutation {
    key: u32,
}
impl Method for FlakyMutation {
    const ID: u16 = 1005;
    const NAME: &'static str = "flaky_mutation";
    const IDEMPOTENT: bool = false;
    type Response = u32;
}

/// Starts a 1 MiB response, then fails halfway through it.
#[derive(Serialize, Deserialize)]
struct FailMidway;
impl Method for FailMidway {
    const ID: u16 = 1006;
    const NAME: &'static str = "fail_midway";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

/// Framed bulk of unknown length; replies with the hash of the bytes and
/// the trailer.
#[derive(Serialize, Deserialize)]
struct Framed;
impl Method for Framed {
    const ID: u16 = 1007;
    const NAME: &'static str = "framed";
    const IDEMPOTENT: bool = false;
    type Response = (u64, [u8; 32], Vec<u8>);
}

struct TestService {
    key: TokenKey,
    flaky_calls: AtomicU32,
}

impl Service for TestService {
    async fn handle(&self, call: &mut Call) -> Result<(), Error> {
        match call.method() {
            Echo::ID => {
                let msg: Echo = call.decode()?;
                let mut body = Vec::new();
                while let Some(piece) = call.request_bulk().next().await? {
                    body.extend_from_slice(&piece);
                }
                let hash = *blake3::hash(&body).as_bytes();
                call.respond(
                    &EchoReply {
                        text: msg.text,
                        hash,
                    },
                    body.len() as u64,
                )
                .await?;
                for piece in body.chunks(256 * 1024) {
                    call.response_bulk()?.write(piece).await?;
                }
                Ok(())
            }
            DeletePiece::ID => {
                call.peer().require_role(&[Role::Meta], DeletePiece::NAME)?;
                let _msg: DeletePiece = call.decode()?;
                call.respond(&(), 0).await
            }
            ReadWithToken::ID => {
                let msg: ReadWithToken = call.decode()?;
                self.key
                    .verify(&msg.token, msg.chunk, Rights::READ, unix_now_ms())?;
                call.respond(&(), 0).await
            }
            Sleep::ID => {
                let msg: Sleep = call.decode()?;
                tokio::time::sleep(Duration::from_millis(msg.ms)).await;
                call.respond(&(), 0).await
            }
            Flaky::ID | FlakyMutation::ID => {
                let n = self.flaky_calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 3 {
                    return Err(Error::new(ErrorCode::Unavailable, "not yet"));
                }
                call.respond(&n, 0).await
            }
            Framed::ID => {
                let mut hasher = blake3::Hasher::new();
                while let Some(piece) = call.request_bulk().next().await? {
                    hasher.update(&piece);
                }
                let received = call.request_bulk().received();
                let trailer = call.request_bulk().trailer().unwrap_or_default().to_vec();
                call.respond(&(received, *hasher.finalize().as_bytes(), trailer), 0)
                    .await
            }
            FailMidway::ID => {
                call.respond(&(), 1 << 20).await?;
                call.response_bulk()?.write(&[0u8; 1 << 19]).await?;
                Err(Error::new(
                    ErrorCode::Corrupt,
                    "block 8 failed its checksum",
                ))
            }
            other => Err(Error::new(
                ErrorCode::UnknownMethod,
                format!("method {other}"),
            )),
        }
    }

    fn method_name(&self, method: u16) -> &'static str {
        match method {
            Echo::ID => Echo::NAME,
            DeletePiece::ID => DeletePiece::NAME,
            _ => "other",
        }
    }
}

struct Cluster {
    _dir: tempfile::TempDir,
    ca_dir: std::path::PathBuf,
    server: RpcServer,
    addr: SocketAddr,
    key: TokenKey,
    service: Arc<TestService>,
}

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn cluster() -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    tls::ca_init(&ca_dir).unwrap();
    tls::ca_issue(&ca_dir, Role::Chunk, "chunk-1").unwrap();
    tls::ca_issue(&ca_dir, Role::Client, "client-1").unwrap();
    tls::ca_issue(&ca_dir, Role::Meta, "meta-1").unwrap();
    let key = TokenKey::load(&ca_dir.join(tls::TOKEN_KEY_FILE)).unwrap();
    let service = Arc::new(TestService {
        key: key.clone(),
        flaky_calls: AtomicU32::new(0),
    });
    let identity = Identity::load_from_dir(&ca_dir, "chunk-1").unwrap();
    let server = RpcServer::start(
        &identity,
        &TransportOptions::default(),
        localhost(),
        service.clone(),
        RpcMetrics::unregistered(),
    )
    .unwrap();
    let addr = server.local_addr().unwrap();
    Cluster {
        _dir: dir,
        ca_dir,
        server,
        addr,
        key,
        service,
    }
}

impl Cluster {
    fn client(&self, name: &str) -> RpcClient {
        let identity = Identity::load_from_dir(&self.ca_dir, name).unwrap();
        RpcClient::new(&identity, &TransportOptions::default(), localhost()).unwrap()
    }

    fn peer(&self) -> Peer {
        Peer::new(self.addr, Role::Chunk)
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn echo(text: &str) -> Echo {
    Echo { text: text.into() }
}

fn short_timeout() -> CallOptions {
    CallOptions::with_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn bulk_bytes_travel_both_ways() {
    let cluster = cluster().await;
    let client = cluster.client("client-1");
    for len in [0usize, 1, 65_535, 8 * 1024 * 1024 + 7] {
        let body = pattern(len, 3);
        let (reply, back) = client
            .call_bulk(
                cluster.peer(),
                &echo(&format!("len {len}")),
                Bytes::from(body.clone()),
                len,
                CallOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(reply.text, format!("len {len}"));
        assert_eq!(reply.hash, *blake3::hash(&body).as_bytes());
        assert!(back == body, "echoed bulk differs for len {len}");
    }
    // Streaming request bulk piece by piece, response bulk piece by piece.
    let body = pattern(3 * 1024 * 1024, 9);
    let mut call = client
        .open(
            cluster.peer(),
            &echo("s"),
            body.len() as u64,
            CallOptions::default(),
        )
        .await
        .unwrap();
    for piece in body.chunks(100_000) {
        call.write(piece).await.unwrap();
    }
    let mut response = call.finish().await.unwrap();
    assert_eq!(response.bulk_len(), body.len() as u64);
    let mut back = Vec::new();
    while let Some(piece) = response.bulk().next().await.unwrap() {
        back.extend_from_slice(&piece);
    }
    assert!(back == body);
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn clients_without_a_cluster_certificate_are_refused() {
    let cluster = cluster().await;
    // No certificate at all.
    let ca = Identity::load_from_dir(&cluster.ca_dir, "client-1")
        .unwrap()
        .ca;
    let anonymous = RpcClient::with_crypto(
        tls::anonymous_client_crypto(&ca).unwrap(),
        &TransportOptions::default(),
        localhost(),
    )
    .unwrap();
    let err = anonymous
        .call(cluster.peer(), &echo("x"), short_timeout())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");

    // A certificate from another CA, even with a privileged role.
    let other = tempfile::tempdir().unwrap();
    tls::ca_init(other.path()).unwrap();
    tls::ca_issue(other.path(), Role::Meta, "meta-1").unwrap();
    let foreign = Identity::load_from_dir(other.path(), "meta-1").unwrap();
    let foreign_client =
        RpcClient::new(&foreign, &TransportOptions::default(), localhost()).unwrap();
    let err = foreign_client
        .call(
            cluster.peer(),
            &DeletePiece { chunk: ChunkId(1) },
            short_timeout(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");

    // A server from another CA is refused by a genuine client.
    let foreign_server = RpcServer::start(
        &foreign,
        &TransportOptions::default(),
        localhost(),
        cluster.service.clone(),
        RpcMetrics::unregistered(),
    )
    .unwrap();
    let client = cluster.client("client-1");
    let foreign_peer = Peer::new(foreign_server.local_addr().unwrap(), Role::Meta);
    let err = client
        .call(foreign_peer, &echo("x"), short_timeout())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");

    // A server whose certificate lacks the role the client dialled.
    let err = client
        .call(
            Peer::new(cluster.addr, Role::Meta),
            &echo("x"),
            short_timeout(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");
    foreign_server.shutdown().await;
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn roles_are_checked_per_call() {
    let cluster = cluster().await;
    let delete = DeletePiece { chunk: ChunkId(5) };
    let err = cluster
        .client("client-1")
        .call(cluster.peer(), &delete, CallOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::WrongRole, "{err}");
    cluster
        .client("meta-1")
        .call(cluster.peer(), &delete, CallOptions::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn tokens_are_verified_over_the_wire() {
    let cluster = cluster().await;
    let client = cluster.client("client-1");
    let chunk = ChunkId(77);
    let in_a_minute = unix_now_ms() + 60_000;
    let valid = cluster.key.mint(Capability {
        chunk,
        rights: Rights::READ,
        expires_at_ms: in_a_minute,
    });
    let call = |token: Token| {
        let client = client.clone();
        let peer = cluster.peer();
        async move {
            client
                .call(
                    peer,
                    &ReadWithToken { chunk, token },
                    CallOptions::default(),
                )
                .await
        }
    };
    call(valid).await.unwrap();

    let forged = TokenKey::generate().mint(valid.capability);
    assert_eq!(
        call(forged).await.unwrap_err().code,
        ErrorCode::TokenInvalid
    );
    let mut altered = valid;
    altered.capability.chunk = ChunkId(78);
    assert_eq!(
        call(altered).await.unwrap_err().code,
        ErrorCode::TokenInvalid
    );
    let expired = cluster.key.mint(Capability {
        chunk,
        rights: Rights::READ,
        expires_at_ms: unix_now_ms() - 3_600_000,
    });
    assert_eq!(
        call(expired).await.unwrap_err().code,
        ErrorCode::TokenExpired
    );
    let write_only = cluster.key.mint(Capability {
        chunk,
        rights: Rights::WRITE,
        expires_at_ms: in_a_minute,
    });
    assert_eq!(
        call(write_only).await.unwrap_err().code,
        ErrorCode::TokenRights
    );
}

/// Sends raw bytes on a fresh stream of `connection` and returns the error
/// the server answered with.
async fn raw_exchange(connection: &quinn::Connection, bytes: &[u8], finish: bool) -> Error {
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    read_error_response(&mut recv).await
}

async fn read_response_head(recv: &mut quinn::RecvStream) -> wire::ResponseHead {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.unwrap();
    let len = wire::frame_len(prefix, RESPONSE_FIXED_BYTES).unwrap();
    let mut body = vec![0; len];
    recv.read_exact(&mut body).await.unwrap();
    wire::decode_response(&body).unwrap()
}

async fn read_error_response(recv: &mut quinn::RecvStream) -> Error {
    read_response_head(recv).await.result.unwrap_err()
}

#[tokio::test]
async fn bad_input_fails_one_stream_and_spares_the_others() {
    let cluster = cluster().await;
    let client = cluster.client("client-1");
    let connection = client.connection(cluster.peer()).await.unwrap();
    let healthy = || async {
        let (reply, _) = client
            .call_bulk(
                cluster.peer(),
                &echo("ok"),
                Bytes::from_static(b"abc"),
                3,
                CallOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(reply.text, "ok");
    };

    // A stream held open mid-bulk while the bad ones come and go.
    let frame = wire::encode_request(RequestId(1), 10_000, 10, &echo("held")).unwrap();
    let (mut held_send, mut held_recv) = connection.open_bi().await.unwrap();
    held_send.write_all(&frame).await.unwrap();
    held_send.write_all(b"01234").await.unwrap();

    // Random bytes: the length prefix reads as far too large.
    let err = raw_exchange(&connection, &[0xde, 0xad, 0xbe, 0xef, 1, 2, 3], true).await;
    assert_eq!(err.code, ErrorCode::HeaderTooLarge);
    healthy().await;

    // Random bytes behind a plausible length: the payload does not decode.
    let mut garbage = 40u32.to_le_bytes().to_vec();
    garbage.extend((0..40).map(|i| (i * 97 % 251) as u8));
    garbage[4..6].copy_from_slice(&Echo::ID.to_le_bytes());
    let err = raw_exchange(&connection, &garbage, true).await;
    assert_eq!(err.code, ErrorCode::Malformed, "{err}");
    healthy().await;

    // A header over the cap, announced honestly.
    let mut oversized = ((HEADER_MAX_BYTES + 1) as u32).to_le_bytes().to_vec();
    oversized.extend(vec![0u8; 100]);
    let err = raw_exchange(&connection, &oversized, false).await;
    assert_eq!(err.code, ErrorCode::HeaderTooLarge);
    healthy().await;

    // A truncated header: the stream ends inside it.
    let err = raw_exchange(&connection, &frame[..frame.len() - 3], true).await;
    assert_eq!(err.code, ErrorCode::Truncated);
    healthy().await;

    // An unknown method.
    let unknown = wire::encode_request_raw(4242, 0, RequestId(2), 1000, 0, &()).unwrap();
    let err = raw_exchange(&connection, &unknown, true).await;
    assert_eq!(err.code, ErrorCode::UnknownMethod);
    healthy().await;

    // Fewer bulk bytes than declared, then a clean end.
    let short = wire::encode_request(RequestId(3), 10_000, 100, &echo("short")).unwrap();
    let err = raw_exchange(&connection, &[short.as_slice(), &[7u8; 40]].concat(), true).await;
    assert_eq!(err.code, ErrorCode::Truncated);
    // More bulk bytes than declared.
    let long = wire::encode_request(RequestId(4), 10_000, 10, &echo("long")).unwrap();
    let err = raw_exchange(&connection, &[long.as_slice(), &[7u8; 40]].concat(), true).await;
    assert_eq!(err.code, ErrorCode::LengthMismatch);
    healthy().await;

    // A stream reset halfway through its bulk data.
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    let reset_frame = wire::encode_request(RequestId(5), 10_000, 1 << 20, &echo("reset")).unwrap();
    send.write_all(&reset_frame).await.unwrap();
    send.write_all(&[1u8; 1000]).await.unwrap();
    send.reset(9u32.into()).unwrap();
    let err = read_error_response(&mut recv).await;
    assert_eq!(err.code, ErrorCode::Cancelled);
    healthy().await;

    // The held stream still completes, and the connection never closed.
    held_send.write_all(b"56789").await.unwrap();
    held_send.finish().unwrap();
    let head = read_response_head(&mut held_recv).await;
    let reply: EchoReply = wire::decode_message(&head.result.unwrap()).unwrap();
    assert_eq!(reply.hash, *blake3::hash(b"0123456789").as_bytes());
    assert_eq!(connection.close_reason(), None);
    cluster.server.shutdown().await;
}

#[tokio::test]
async fn deadlines_cancel_and_idempotent_calls_alone_retry() {
    let cluster = cluster().await;
    let client = cluster.client("client-1");
    let err = client
        .call(
            cluster.peer(),
            &Sleep { ms: 10_000 },
            CallOptions::with_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Timeout, "{err}");

    // Dropping a call future cancels it; the connection stays usable.
    let pending = client.call(
        cluster.peer(),
        &Sleep { ms: 10_000 },
        CallOptions::default(),
    );
    let _ = tokio::time::timeout(Duration::from_millis(100), pending).await;
    client
        .call(cluster.peer(), &Sleep { ms: 1 }, CallOptions::default())
        .await
        .unwrap();

    // An idempotent call is retried through transient failures.
    let n = client
        .call(cluster.peer(), &Flaky { key: 1 }, CallOptions::default())
        .await
        .unwrap();
    assert_eq!(n, 3);
    // A non-idempotent call is not.
    cluster.service.flaky_calls.store(0, Ordering::SeqCst);
    let err = client
        .call(
            cluster.peer(),
            &FlakyMutation { key: 1 },
            CallOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert_eq!(cluster.service.flaky_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn shutdown_lets_calls_in_flight_finish() {
    let cluster = cluster().await;
    let client = cluster.client("client-1");
    let peer = cluster.peer();
    let slow = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .call(peer, &Sleep { ms: 500 }, CallOptions::default())
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    cluster.server.shutdown().await;
    slow.await.unwrap().unwrap();
    let err = client
        .call(
            peer,
            &echo("late"),
            CallOptions::with_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code,
            ErrorCode::Unavailable | ErrorCode::ShuttingDown | ErrorCode::Timeout
        ),
        "{err}"
    );
}

#[tokio::test]
async fn peers_without_a_common_protocol_version_are_refused() {
    let cluster = cluster().await;
    let identity = Identity::load_from_dir(&cluster.ca_dir, "client-1").unwrap();
    let mut crypto = tls::client_crypto(&identity).unwrap();
    crypto.alpn_protocols = vec![b"tessera/999".to_vec()];
    let client = RpcClient::with_crypto(crypto, &TransportOptions::default(), localhost()).unwrap();
    let err = client
        .call(cluster.peer(), &echo("x"), short_timeout())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::VersionMismatch, "{err}");
}

#[tokio::test]
async fn a_failure_mid_response_reaches_the_reader_typed() {
    let cluster = cluster().await;
    let client = cluster.client("client-1");
    let err = client
        .call_bulk(
            cluster.peer(),
            &FailMidway,
            Bytes::new(),
            1 << 20,
            short_timeout(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Corrupt, "{err}");
}

#[tokio::test]
async fn framed_bulk_of_unknown_length_ends_with_a_trailer() {
    use tessera_proto::wire::BULK_FRAMED;
    let cluster = cluster().await;
    let client = cluster.client("client-1");
    let body = pattern(5 * 1024 * 1024 + 3, 4);
    let mut call = client
        .open(cluster.peer(), &Framed, BULK_FRAMED, short_timeout())
        .await
        .unwrap();
    for piece in body.chunks(777_777) {
        call.write(piece).await.unwrap();
    }
    let response = call
        .finish_with_trailer(b"final length and checksum")
        .await
        .unwrap();
    let (received, hash, trailer) = response.message;
    assert_eq!(received, body.len() as u64);
    assert_eq!(hash, *blake3::hash(&body).as_bytes());
    assert_eq!(trailer, b"final length and checksum");

    // A stream that ends without its trailer is truncated, not complete.
    let connection = client.connection(cluster.peer()).await.unwrap();
    let frame = wire::encode_request(RequestId(9), 10_000, BULK_FRAMED, &Framed).unwrap();
    let mut bytes = frame.clone();
    bytes.extend_from_slice(&5u32.to_le_bytes());
    bytes.extend_from_slice(b"hello");
    let err = raw_exchange(&connection, &bytes, true).await;
    assert_eq!(err.code, ErrorCode::Truncated, "{err}");
    // A segment over the cap is refused.
    let mut bytes = frame;
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    let err = raw_exchange(&connection, &bytes, true).await;
    assert_eq!(err.code, ErrorCode::Malformed, "{err}");
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct NamespacePair {
    names: [String; 2],
}

impl NamespacePair {
    /// Namespaces `<tag>-a` (10.213.N.1) and `<tag>-b` (10.213.N.2) over a
    /// link with `mtu`. Needs root and iproute2.
    fn new(tag: &str, subnet: u8, mtu: u32) -> NamespacePair {
        let names = [format!("{tag}-a"), format!("{tag}-b")];
        let run = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .expect("run ip (iproute2)");
            assert!(
                out.status.success(),
                "ip {args:?}: {} (network namespaces need root)",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for name in &names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
            run(&["netns", "add", name]);
        }
        let pair = NamespacePair { names };
        let (a, b) = (&pair.names[0], &pair.names[1]);
        let (va, vb) = (format!("{tag}a"), format!("{tag}b"));
        run(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        let mtu = mtu.to_string();
        for (ns, dev, host) in [(a, &va, 1), (b, &vb, 2)] {
            run(&["link", "set", dev, "netns", ns]);
            run(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.213.{subnet}.{host}/24"),
                "dev",
                dev,
            ]);
            run(&["-n", ns, "link", "set", dev, "mtu", &mtu, "up"]);
            run(&["-n", ns, "link", "set", "lo", "up"]);
        }
        pair
    }

    /// Runs `work` on a thread inside namespace `index` (sockets it binds
    /// live there), with a tokio runtime of its own.
    fn run_in<T: Send + 'static>(
        &self,
        index: usize,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.names[index]);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns on this thread only, with a namespace file
            // descriptor that stays open for the call.
            let done = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(done, 0, "setns {path}: {}", std::io::Error::last_os_error());
            work()
        })
    }
}

impl Drop for NamespacePair {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", name])
                .output();
        }
    }
}

/// The default transport settings where they will run: two hosts on a
/// 1,500-byte Ethernet link. The bound read from the interfaces is 1,452
/// bytes for the network peer, and calls with bulk both ways (8 MiB and
/// more, through segmentation offload) arrive whole; a bound set above what
/// the path carries costs lost probes, never the data.
#[test]
fn bulk_travels_between_hosts_on_a_1500_byte_link_with_the_defaults() {
    let pair = NamespacePair::new(&format!("tq{}", std::process::id() % 10_000), 7, 1500);
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    tls::ca_init(&ca_dir).unwrap();
    tls::ca_issue(&ca_dir, Role::Chunk, "chunk-1").unwrap();
    tls::ca_issue(&ca_dir, Role::Client, "client-1").unwrap();
    let key = TokenKey::load(&ca_dir.join(tls::TOKEN_KEY_FILE)).unwrap();

    // The server: its own runtime inside namespace a, until told to stop.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server_ca = ca_dir.clone();
    let server = pair.run_in(0, move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let identity = Identity::load_from_dir(&server_ca, "chunk-1").unwrap();
            let service = Arc::new(TestService {
                key,
                flaky_calls: AtomicU32::new(0),
            });
            let server = RpcServer::start(
                &identity,
                &TransportOptions::default(),
                "10.213.7.1:0".parse().unwrap(),
                service,
                RpcMetrics::unregistered(),
            )
            .unwrap();
            addr_tx.send(server.local_addr().unwrap()).unwrap();
            tokio::task::spawn_blocking(move || stop_rx.recv())
                .await
                .unwrap()
                .ok();
            server.shutdown().await;
        });
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("server address");

    let client_ca = ca_dir.clone();
    let client = pair.run_in(1, move || {
        let mtus = tessera_proto::rpc::InterfaceMtus::read();
        assert_eq!(mtus.network, Some(1500), "{mtus:?}");
        assert_eq!(
            TransportOptions::default().mtu_bound_for(Some(addr.ip())),
            1452
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let identity = Identity::load_from_dir(&client_ca, "client-1").unwrap();
            let pinned_too_high = TransportOptions {
                mtu_upper_bound_bytes: Some(8952),
                ..TransportOptions::default()
            };
            for options in [TransportOptions::default(), pinned_too_high] {
                let client =
                    RpcClient::new(&identity, &options, "10.213.7.2:0".parse().unwrap()).unwrap();
                let peer = Peer::new(addr, Role::Chunk);
                for len in [1usize, 1500, 8 * 1024 * 1024 + 7, 24 * 1024 * 1024] {
                    let body = pattern(len, 5);
                    let (reply, back) = client
                        .call_bulk(
                            peer,
                            &echo("across"),
                            Bytes::from(body.clone()),
                            len,
                            CallOptions::with_timeout(Duration::from_secs(60)),
                        )
                        .await
                        .unwrap_or_else(|err| panic!("{len} bytes with {options:?}: {err}"));
                    assert_eq!(reply.hash, *blake3::hash(&body).as_bytes());
                    assert!(back == body, "{len} bytes came back different");
                }
            }
        });
    });
    let result = client.join();
    let _ = stop_tx.send(());
    server.join().expect("server thread");
    result.expect("client thread");
    drop(pair);
}
