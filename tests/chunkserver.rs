//! The chunkserver as a real process: crash safety under SIGKILL, corruption
//! caught on read and by the scrubber, bad input of every kind, a full disk.

mod common;

use bytes::Bytes;
use common::{Daemon, Pki, metric, pattern, scrape};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_proto::checksum::checksum_of;
use tessera_proto::chunk::{
    CopyPiece, DeletePieces, ListPieces, PieceTrailer, ReadPiece, WritePiece, WritePieceReply,
    WritePieceStream,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, PieceId};
use tessera_proto::rpc::{CallOptions, Peer, RpcClient};
use tessera_proto::tls::Role;
use tessera_proto::token::{Capability, Rights, Token};

struct Node {
    config: PathBuf,
    disk: PathBuf,
    metrics: SocketAddr,
    log: PathBuf,
}

fn node(root: &Path, pki: &Pki, name: &str, disk: Option<PathBuf>, scrub: &str) -> Node {
    pki.issue(Role::Chunk, name);
    let disk = disk.unwrap_or_else(|| root.join(format!("{name}-disk")));
    std::fs::create_dir_all(&disk).unwrap();
    let metrics: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let config = root.join(format!("{name}.toml"));
    let ca = &pki.dir;
    std::fs::write(
        &config,
        format!(
            r#"name = "{name}"
listen = "127.0.0.1:0"
metrics_listen = "{metrics}"
token_key = "{ca}/token.key"
[tls]
ca = "{ca}/ca.crt"
cert = "{ca}/{name}.crt"
key = "{ca}/{name}.key"
[transport]
mtu_upper_bound_bytes = 65527
[[disks]]
path = "{disk}"
reserve_bytes = 0
[scrub]
{scrub}
"#,
            ca = ca.display(),
            disk = disk.display()
        ),
    )
    .unwrap();
    Node {
        config,
        disk,
        metrics,
        log: root.join(format!("{name}.log")),
    }
}

fn start(node: &Node) -> Daemon {
    Daemon::start(
        &["chunk", "--config", node.config.to_str().unwrap()],
        &node.log,
    )
}

fn piece(chunk: u64) -> PieceId {
    PieceId {
        chunk: ChunkId(chunk),
        index: 0,
    }
}

fn opts() -> CallOptions {
    CallOptions::with_timeout(Duration::from_secs(60))
}

async fn write_piece(
    client: &RpcClient,
    addr: SocketAddr,
    pki: &Pki,
    id: PieceId,
    data: &[u8],
) -> Result<WritePieceReply, Error> {
    let token = pki.token(id.chunk.0, Rights::WRITE);
    write_with(
        client,
        addr,
        id,
        data,
        data.len() as u64,
        checksum_of(data),
        token,
    )
    .await
}

async fn write_with(
    client: &RpcClient,
    addr: SocketAddr,
    id: PieceId,
    data: &[u8],
    declared: u64,
    checksum: [u8; 32],
    token: Token,
) -> Result<WritePieceReply, Error> {
    let msg = WritePiece {
        piece: id,
        length: declared,
        checksum,
        token,
    };
    let mut call = client
        .open(
            Peer::new(addr, Role::Chunk),
            &msg,
            data.len() as u64,
            opts(),
        )
        .await?;
    for part in data.chunks(1 << 20) {
        call.write_bytes(Bytes::copy_from_slice(part)).await?;
    }
    Ok(call.finish().await?.message)
}

async fn read_piece(
    client: &RpcClient,
    addr: SocketAddr,
    pki: &Pki,
    id: PieceId,
    offset: u64,
    length: u64,
) -> Result<Vec<u8>, Error> {
    let msg = ReadPiece {
        piece: id,
        offset,
        length,
        token: pki.token(id.chunk.0, Rights::READ),
    };
    let (_, bytes) = client
        .call_bulk(
            Peer::new(addr, Role::Chunk),
            &msg,
            Bytes::new(),
            length as usize,
            opts(),
        )
        .await?;
    Ok(bytes)
}

async fn list(client: &RpcClient, addr: SocketAddr) -> Vec<PieceId> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .call(
                Peer::new(addr, Role::Chunk),
                &ListPieces { after, limit: 512 },
                opts(),
            )
            .await
            .unwrap();
        out.extend(page.pieces.iter().map(|p| p.piece));
        after = out.last().copied();
        if !page.more {
            return out;
        }
    }
}

fn temporaries(disk: &Path) -> usize {
    std::fs::read_dir(disk.join("tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_pieces_survive_sigkill() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let node = node(root.path(), &pki, "chunk-crash", None, "enabled = false");
    let daemon = start(&node);
    let client = pki.client("test-client");
    let acked: Arc<Mutex<Vec<(u64, usize)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for writer in 0..12u64 {
        let client = client.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        let addr = daemon.addr;
        let key = pki.token_key.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let chunk = writer * 1_000_000 + n;
                let len = 64 * 1024 * (1 + (chunk % 37) as usize) + (chunk % 1000) as usize;
                let data = pattern(chunk, len);
                let token = key.mint(Capability {
                    chunk: ChunkId(chunk),
                    rights: Rights::WRITE,
                    expires_at_ms: u64::MAX,
                });
                match write_with(
                    &client,
                    addr,
                    piece(chunk),
                    &data,
                    len as u64,
                    checksum_of(&data),
                    token,
                )
                .await
                {
                    Ok(_) => acked.lock().unwrap().push((chunk, len)),
                    Err(_) => return,
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    daemon.kill();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for writer in writers {
        let _ = writer.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 10,
        "too few writes acknowledged before the kill: {}",
        acked.len()
    );

    let daemon = start(&node);
    assert_eq!(
        temporaries(&node.disk),
        0,
        "a temporary file survived start-up"
    );
    let client = pki.client("test-client");
    for (chunk, len) in &acked {
        let back = read_piece(&client, daemon.addr, &pki, piece(*chunk), 0, *len as u64)
            .await
            .unwrap();
        assert!(
            back == pattern(*chunk, *len),
            "acknowledged piece {chunk} differs after the crash"
        );
    }
    // Pieces sealed but not acknowledged are whole too.
    let meta = pki.client("test-meta");
    for id in list(&meta, daemon.addr).await {
        let len = 64 * 1024 * (1 + (id.chunk.0 % 37) as usize) + (id.chunk.0 % 1000) as usize;
        let back = read_piece(&client, daemon.addr, &pki, id, 0, len as u64)
            .await
            .unwrap();
        assert!(
            back == pattern(id.chunk.0, len),
            "sealed piece {} is not whole",
            id.chunk
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corruption_is_refused_and_found_by_the_scrubber() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let node = node(
        root.path(),
        &pki,
        "chunk-rot",
        None,
        "rate_mb_per_s = 500.0\npause_between_passes_s = 1",
    );
    let daemon = start(&node);
    let client = pki.client("test-client");
    let data = pattern(7, 1_000_000);
    write_piece(&client, daemon.addr, &pki, piece(1), &data)
        .await
        .unwrap();
    write_piece(&client, daemon.addr, &pki, piece(2), &data)
        .await
        .unwrap();
    assert!(
        read_piece(&client, daemon.addr, &pki, piece(1), 0, 1_000_000)
            .await
            .unwrap()
            == data
    );

    let flip = |id: PieceId, at: u64| {
        let path = node.disk.join(format!(
            "pieces/{:02x}/{:016x}.0",
            id.chunk.0 & 0xff,
            id.chunk.0
        ));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[(4096 + at) as usize] ^= 0x01;
        std::fs::write(&path, bytes).unwrap();
    };
    // A read of the damaged range fails typed; it never returns wrong bytes.
    flip(piece(1), 500_000);
    let err = read_piece(&client, daemon.addr, &pki, piece(1), 400_000, 200_000)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Corrupt, "{err}");
    let err = read_piece(&client, daemon.addr, &pki, piece(1), 0, 10)
        .await
        .unwrap_err();
    assert_eq!(
        err.code,
        ErrorCode::NotFound,
        "a quarantined piece must not be served: {err}"
    );

    // The scrubber finds the other one without any reader asking.
    flip(piece(2), 999_999);
    let meta = pki.client("test-meta");
    let mut found = false;
    for _ in 0..300 {
        if !list(&meta, daemon.addr).await.contains(&piece(2)) {
            found = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(found, "the scrubber did not quarantine the corrupt piece");
    let text = scrape(node.metrics);
    assert!(
        metric(&text, "tessera_chunk_checksum_failures_total") >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "tessera_chunk_quarantined_total") >= 2.0,
        "{text}"
    );
    assert!(
        metric(&text, "tessera_chunk_scrub_passes_total") >= 1.0,
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(node.disk.join("quarantine"))
            .unwrap()
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_typed_errors_and_nothing_half_sealed() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let node = node(root.path(), &pki, "chunk-bad", None, "enabled = false");
    let daemon = start(&node);
    let addr = daemon.addr;
    let client = pki.client("test-client");
    let data = pattern(3, 300_000);
    let sum = checksum_of(&data);
    let len = data.len() as u64;
    let expect = |result: Result<WritePieceReply, Error>, code: ErrorCode| {
        let err = result.expect_err("the write should fail");
        assert_eq!(err.code, code, "{err}");
    };

    // Tokens: forged (a zeroed MAC stands for a missing one), expired, wrong
    // rights, wrong chunk, another key.
    let mut forged = pki.token(10, Rights::WRITE);
    forged.mac = [0; 32];
    expect(
        write_with(&client, addr, piece(10), &data, len, sum, forged).await,
        ErrorCode::TokenInvalid,
    );
    let expired = pki.token_key.mint(Capability {
        chunk: ChunkId(10),
        rights: Rights::WRITE,
        expires_at_ms: 1,
    });
    expect(
        write_with(&client, addr, piece(10), &data, len, sum, expired).await,
        ErrorCode::TokenExpired,
    );
    expect(
        write_with(
            &client,
            addr,
            piece(10),
            &data,
            len,
            sum,
            pki.token(10, Rights::READ),
        )
        .await,
        ErrorCode::TokenRights,
    );
    expect(
        write_with(
            &client,
            addr,
            piece(10),
            &data,
            len,
            sum,
            pki.token(11, Rights::WRITE),
        )
        .await,
        ErrorCode::TokenRights,
    );
    let stranger = tessera_proto::token::TokenKey::generate().mint(Capability {
        chunk: ChunkId(10),
        rights: Rights::WRITE,
        expires_at_ms: u64::MAX,
    });
    expect(
        write_with(&client, addr, piece(10), &data, len, sum, stranger).await,
        ErrorCode::TokenInvalid,
    );
    let read_err = client
        .call_bulk(
            Peer::new(addr, Role::Chunk),
            &ReadPiece {
                piece: piece(10),
                offset: 0,
                length: 1,
                token: pki.token(10, Rights::WRITE),
            },
            Bytes::new(),
            1,
            opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(read_err.code, ErrorCode::TokenRights);

    // Lengths and checksums.
    let token = || pki.token(10, Rights::WRITE);
    expect(
        write_with(&client, addr, piece(10), &data, len + 1, sum, token()).await,
        ErrorCode::LengthMismatch,
    );
    expect(
        write_with(&client, addr, piece(10), &data, len - 1, sum, token()).await,
        ErrorCode::LengthMismatch,
    );
    expect(
        write_with(&client, addr, piece(10), &data, len, [7; 32], token()).await,
        ErrorCode::ChecksumMismatch,
    );

    // A client that disconnects mid-write.
    {
        let msg = WritePiece {
            piece: piece(10),
            length: len,
            checksum: sum,
            token: token(),
        };
        let mut call = client
            .open(Peer::new(addr, Role::Chunk), &msg, len, opts())
            .await
            .unwrap();
        call.write(&data[..100_000]).await.unwrap();
        drop(call);
    }
    let mut cleaned = false;
    for _ in 0..50 {
        if temporaries(&node.disk) == 0 {
            cleaned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cleaned,
        "the temporary file of an abandoned write was left behind"
    );
    let meta = pki.client("test-meta");
    assert!(
        list(&meta, addr).await.is_empty(),
        "a failed write left a sealed piece"
    );

    // The real write works, and immutability is enforced.
    write_piece(&client, addr, &pki, piece(10), &data)
        .await
        .unwrap();
    expect(
        write_piece(&client, addr, &pki, piece(10), &data).await,
        ErrorCode::AlreadyExists,
    );

    // Reads past the end, of missing pieces, and partial ranges.
    let err = read_piece(&client, addr, &pki, piece(10), len - 5, 10)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OutOfRange);
    let err = read_piece(&client, addr, &pki, piece(10), u64::MAX, 2)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::OutOfRange);
    let err = read_piece(&client, addr, &pki, piece(99), 0, 1)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
    assert_eq!(
        read_piece(&client, addr, &pki, piece(10), 65_530, 20)
            .await
            .unwrap(),
        &data[65_530..65_550]
    );
    assert!(
        read_piece(&client, addr, &pki, piece(10), len, 0)
            .await
            .unwrap()
            .is_empty()
    );

    // Only a metaserver may delete, list or order a copy.
    let delete = DeletePieces {
        pieces: vec![piece(10)],
    };
    let err = client
        .call(Peer::new(addr, Role::Chunk), &delete, opts())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::WrongRole);
    let err = client
        .call(
            Peer::new(addr, Role::Chunk),
            &ListPieces {
                after: None,
                limit: 10,
            },
            opts(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::WrongRole);

    // Repair copy from this chunkserver to a second one, on the metaserver's word.
    let other_node = common_node_two(root.path(), &pki);
    let other = start(&other_node);
    let copy = CopyPiece {
        job: 0,
        piece: piece(10),
        source_piece: piece(10),
        source: addr.to_string(),
        source_token: pki.token(10, Rights::READ),
        length: len,
        checksum: Some(sum),
    };
    let err = client
        .call(Peer::new(other.addr, Role::Chunk), &copy, opts())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::WrongRole);
    meta.call(Peer::new(other.addr, Role::Chunk), &copy, opts())
        .await
        .unwrap();
    assert!(
        read_piece(&client, other.addr, &pki, piece(10), 0, len)
            .await
            .unwrap()
            == data
    );
    // Sent again (a new leader repeats its jobs): nothing to do, success.
    meta.call(Peer::new(other.addr, Role::Chunk), &copy, opts())
        .await
        .unwrap();
    // Replicas hold the same bytes under other piece indexes; a copy without
    // a recorded checksum takes the one the source's block hashes give.
    let index_two = PieceId {
        chunk: ChunkId(10),
        index: 2,
    };
    let renamed = CopyPiece {
        piece: index_two,
        checksum: None,
        ..copy.clone()
    };
    let reply = meta
        .call(Peer::new(other.addr, Role::Chunk), &renamed, opts())
        .await
        .unwrap();
    assert_eq!(reply.length, len);
    assert!(
        read_piece(&client, other.addr, &pki, index_two, 0, len)
            .await
            .unwrap()
            == data
    );
    // A source whose bytes do not match the chunk map's checksum: nothing
    // is stored.
    let index_three = PieceId {
        chunk: ChunkId(10),
        index: 3,
    };
    let mismatch = CopyPiece {
        piece: index_three,
        checksum: Some([7; 32]),
        ..copy.clone()
    };
    let err = meta
        .call(Peer::new(other.addr, Role::Chunk), &mismatch, opts())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::ChecksumMismatch, "{err}");
    let err = read_piece(&client, other.addr, &pki, index_three, 0, 1)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    assert_eq!(temporaries(&other_node.disk), 0);
    let mut bad_copy = copy.clone();
    bad_copy.piece = piece(12);
    bad_copy.source_piece = piece(12);
    bad_copy.source_token = pki.token(12, Rights::READ);
    let err = meta
        .call(Peer::new(other.addr, Role::Chunk), &bad_copy, opts())
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");

    let reply = meta
        .call(Peer::new(addr, Role::Chunk), &delete, opts())
        .await
        .unwrap();
    assert_eq!((reply.deleted, reply.missing), (1, 0));
    let err = read_piece(&client, addr, &pki, piece(10), 0, 1)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

fn common_node_two(root: &Path, pki: &Pki) -> Node {
    node(root, pki, "chunk-two", None, "enabled = false")
}

/// Mounts a small tmpfs as a data directory. Root is required; the test
/// fails rather than skipping when it cannot mount.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: the full-disk test needs root"
        );
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let tmpfs = Tmpfs::mount(&root.path().join("small-disk"), "8m");
    let node = node(
        root.path(),
        &pki,
        "chunk-full",
        Some(tmpfs.0.clone()),
        "enabled = false",
    );
    let daemon = start(&node);
    let addr = daemon.addr;
    let client = pki.client("test-client");

    // Refused up front: larger than the disk.
    let big = pattern(1, 12 << 20);
    let err = write_piece(&client, addr, &pki, piece(1), &big)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NoSpace, "{err}");
    assert!(err.message.contains("reserve"), "{err}");

    // Fills mid-write: space vanishes after the up-front check.
    let data = pattern(2, 5 << 20);
    let msg = WritePiece {
        piece: piece(2),
        length: data.len() as u64,
        checksum: checksum_of(&data),
        token: pki.token(2, Rights::WRITE),
    };
    let mut call = client
        .open(
            Peer::new(addr, Role::Chunk),
            &msg,
            data.len() as u64,
            opts(),
        )
        .await
        .unwrap();
    call.write(&data[..1 << 20]).await.unwrap();
    let filler = tmpfs.0.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=1M", "count=16"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    let mut result = Ok(());
    for part in data[1 << 20..].chunks(1 << 20) {
        result = call.write(part).await;
        if result.is_err() {
            break;
        }
    }
    let err = match result {
        Err(err) => err,
        Ok(()) => call
            .finish()
            .await
            .err()
            .expect("the write must fail on a full disk"),
    };
    assert_eq!(err.code, ErrorCode::NoSpace, "{err}");
    assert_eq!(temporaries(&node.disk), 0);
    let meta = pki.client("test-meta");
    assert!(
        list(&meta, addr).await.is_empty(),
        "nothing may be sealed from a failed write"
    );

    // The server keeps serving once space returns.
    std::fs::remove_file(&filler).unwrap();
    let small = pattern(3, 100_000);
    write_piece(&client, addr, &pki, piece(3), &small)
        .await
        .unwrap();
    assert!(
        read_piece(&client, addr, &pki, piece(3), 0, 100_000)
            .await
            .unwrap()
            == small
    );
}

async fn stream_piece(
    client: &RpcClient,
    addr: SocketAddr,
    pki: &Pki,
    id: PieceId,
    data: &[u8],
    max: u64,
    trailer: PieceTrailer,
) -> Result<WritePieceReply, Error> {
    let msg = WritePieceStream {
        piece: id,
        max_length: max,
        token: pki.token(id.chunk.0, Rights::WRITE),
    };
    let mut call = client
        .open(
            Peer::new(addr, Role::Chunk),
            &msg,
            tessera_proto::wire::BULK_FRAMED,
            opts(),
        )
        .await?;
    for part in data.chunks(300_000) {
        call.write(part).await?;
    }
    let trailer = postcard::to_stdvec(&trailer).unwrap();
    Ok(call.finish_with_trailer(&trailer).await?.message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_pieces_learn_their_length_at_the_end() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::new(root.path());
    let node = node(root.path(), &pki, "chunk-stream", None, "enabled = false");
    let daemon = start(&node);
    let client = pki.client("test-client");
    let data = pattern(11, 2_500_000);
    let good = PieceTrailer {
        length: data.len() as u64,
        checksum: checksum_of(&data),
    };
    let reply = stream_piece(&client, daemon.addr, &pki, piece(1), &data, 64 << 20, good)
        .await
        .unwrap();
    assert_eq!(reply.length, data.len() as u64);
    assert!(
        read_piece(&client, daemon.addr, &pki, piece(1), 0, data.len() as u64)
            .await
            .unwrap()
            == data
    );
    // Survives a restart: the header was rewritten with the final length.
    drop(daemon);
    let daemon = start(&node);
    assert!(
        read_piece(&client, daemon.addr, &pki, piece(1), 100, 1000)
            .await
            .unwrap()
            == data[100..1100]
    );

    let bad_sum = PieceTrailer {
        length: data.len() as u64,
        checksum: [3; 32],
    };
    let err = stream_piece(
        &client,
        daemon.addr,
        &pki,
        piece(2),
        &data,
        64 << 20,
        bad_sum,
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, ErrorCode::ChecksumMismatch, "{err}");
    let short = PieceTrailer {
        length: 10,
        checksum: good.checksum,
    };
    let err = stream_piece(&client, daemon.addr, &pki, piece(3), &data, 64 << 20, short)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LengthMismatch, "{err}");
    let err = stream_piece(&client, daemon.addr, &pki, piece(4), &data, 1_000, good)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::LengthMismatch, "{err}");
    assert_eq!(temporaries(&node.disk), 0);
    let meta = pki.client("test-meta");
    assert_eq!(list(&meta, daemon.addr).await, vec![piece(1)]);
}
