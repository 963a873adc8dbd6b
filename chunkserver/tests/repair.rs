//! Repair and the heartbeat contract end to end, in one process: three real
//! chunkservers over QUIC and a stand-in metaserver that hands out commands
//! in heartbeat replies and records every heartbeat. The real metaserver's
//! side is tested with it; this pins down what the chunkserver sends and
//! does.

use bytes::Bytes;
use reed_solomon_erasure::galois_8::ReedSolomon;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_chunk::jobs::RepairConfig;
use tessera_chunk::scrub::ScrubConfig;
use tessera_chunk::store::DiskConfig;
use tessera_chunk::{ChunkConfig, ChunkServer};
use tessera_proto::checksum::{BLOCK_BYTES, checksum_of, range_matches};
use tessera_proto::chunk::{
    ChunkCommand, CopyPiece, Heartbeat, HeartbeatReply, InventoryReport, JobResult, PieceInfo,
    PieceSource, PieceTarget, READ_RANGE_MAX_BYTES, ReadPiece, ReadRange, ReadRangeReply,
    RebuildPieces, RegisterChunkserver, RegisterReply, VerifyPiece, WritePiece,
};
use tessera_proto::config::{LogConfig, NodeConfig, TlsFiles};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, NodeId, PieceId};
use tessera_proto::rpc::{
    Call, CallOptions, Peer, RpcClient, RpcMetrics, RpcServer, Service, TransportOptions,
};
use tessera_proto::stripe::Geometry;
use tessera_proto::tls::{self, Identity, Role};
use tessera_proto::token::{Capability, Rights, Token, TokenKey, unix_now_ms};
use tessera_proto::wire::Method;

const MIB: usize = 1024 * 1024;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The metaserver's side of the contract, as little of it as the test needs.
#[derive(Default)]
struct FakeMeta {
    nodes: Mutex<HashMap<String, NodeId>>,
    /// Commands for the next heartbeat reply, by node name.
    commands: Mutex<HashMap<String, Vec<ChunkCommand>>>,
    /// Heartbeats answered, by node name.
    beats: Mutex<HashMap<String, Vec<Heartbeat>>>,
    /// Heartbeats refused on purpose.
    refused: Mutex<Vec<Heartbeat>>,
    /// Jobs whose first reported result is refused.
    refuse_first_report: Mutex<Vec<u64>>,
}

impl FakeMeta {
    fn name_of(&self, node: NodeId) -> String {
        lock(&self.nodes)
            .iter()
            .find(|(_, id)| **id == node)
            .map(|(name, _)| name.clone())
            .unwrap_or_default()
    }

    fn send(&self, node: &str, command: ChunkCommand) {
        lock(&self.commands)
            .entry(node.to_string())
            .or_default()
            .push(command);
    }

    fn beats(&self, node: &str) -> Vec<Heartbeat> {
        lock(&self.beats).get(node).cloned().unwrap_or_default()
    }

    /// Every job result `node` delivered.
    fn results(&self, node: &str) -> Vec<JobResult> {
        self.beats(node)
            .into_iter()
            .flat_map(|beat| beat.jobs)
            .collect()
    }

    fn added(&self, node: &str) -> Vec<PieceInfo> {
        self.beats(node)
            .into_iter()
            .flat_map(|beat| beat.added)
            .collect()
    }
}

impl Service for FakeMeta {
    async fn handle(&self, call: &mut Call) -> Result<(), Error> {
        match call.method() {
            RegisterChunkserver::ID => {
                let msg: RegisterChunkserver = call.decode()?;
                let node = {
                    let mut nodes = lock(&self.nodes);
                    let next = NodeId(nodes.len() as u64 + 1);
                    *nodes.entry(msg.name).or_insert(next)
                };
                let reply = RegisterReply {
                    node,
                    heartbeat_interval_ms: 100,
                };
                call.respond(&reply, 0).await
            }
            InventoryReport::ID => {
                let _: InventoryReport = call.decode()?;
                call.respond(&(), 0).await
            }
            Heartbeat::ID => {
                let beat: Heartbeat = call.decode()?;
                let name = self.name_of(beat.node);
                let refuse = {
                    let mut refuse = lock(&self.refuse_first_report);
                    let found = refuse
                        .iter()
                        .position(|job| beat.jobs.iter().any(|r| r.job == *job));
                    found.map(|at| refuse.remove(at)).is_some()
                };
                if refuse {
                    lock(&self.refused).push(beat);
                    return Err(Error::new(ErrorCode::Unavailable, "refused on purpose"));
                }
                let commands = lock(&self.commands).remove(&name).unwrap_or_default();
                lock(&self.beats).entry(name).or_default().push(beat);
                let reply = HeartbeatReply {
                    commands,
                    register_again: false,
                };
                call.respond(&reply, 0).await
            }
            other => Err(Error::new(
                ErrorCode::UnknownMethod,
                format!("method {other} is not faked"),
            )),
        }
    }
}

struct Node {
    name: String,
    server: ChunkServer,
    disk: PathBuf,
    registry: prometheus::Registry,
}

impl Node {
    fn addr(&self) -> String {
        self.server.addr().to_string()
    }

    /// A metric's value from this node's registry, by name and labels.
    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for family in self.registry.gather() {
            if family.name() != name {
                continue;
            }
            for sample in family.get_metric() {
                let matches = labels.iter().all(|(key, value)| {
                    sample
                        .get_label()
                        .iter()
                        .any(|l| l.name() == *key && l.value() == *value)
                });
                if matches {
                    if name.ends_with("_total") {
                        return sample.get_counter().get_value();
                    }
                    return sample.get_gauge().get_value();
                }
            }
        }
        panic!("no {name} {labels:?}");
    }
}

fn tls_files(ca: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: ca.join("ca.crt"),
        cert: ca.join(format!("{name}.crt")),
        key: ca.join(format!("{name}.key")),
    }
}

async fn start_node(root: &Path, ca: &Path, name: &str, meta: SocketAddr) -> Node {
    tls::ca_issue(ca, Role::Chunk, name).unwrap();
    let disk = root.join(format!("{name}-disk"));
    std::fs::create_dir_all(&disk).unwrap();
    let config = ChunkConfig {
        node: NodeConfig {
            name: name.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics_listen: None,
            metrics_token_file: None,
            tls: tls_files(ca, name),
            log: LogConfig::default(),
            transport: TransportOptions::loopback(),
        },
        token_key: ca.join(tls::TOKEN_KEY_FILE),
        meta: vec![meta.to_string()],
        advertise: None,
        rack: String::new(),
        zone: String::new(),
        heartbeat_interval_ms: 100,
        sync_interval_ms: 1_000,
        disks: vec![DiskConfig {
            path: disk.clone(),
            reserve_bytes: 0,
            capacity_bytes: None,
        }],
        scrub: ScrubConfig {
            enabled: false,
            ..ScrubConfig::default()
        },
        repair: RepairConfig::default(),
    };
    let registry = prometheus::Registry::new();
    let server = ChunkServer::start(config, &registry).await.unwrap();
    Node {
        name: name.into(),
        server,
        disk,
        registry,
    }
}

/// The pieces of an ec(k, m) chunk as the client's writer makes them.
fn encode_chunk(geometry: Geometry, chunk: &[u8]) -> Vec<Vec<u8>> {
    let coder = ReedSolomon::new(geometry.data, geometry.parity).unwrap();
    let mut pieces = vec![Vec::new(); geometry.width()];
    for stripe in chunk.chunks(geometry.stripe_bytes() as usize) {
        let layout = geometry.stripe(stripe.len() as u64, 0);
        let cell = layout.cell as usize;
        let mut padded = Vec::new();
        for (shard, piece) in pieces.iter_mut().enumerate().take(geometry.data) {
            let (start, end) = layout.cell_range(shard);
            let data = &stripe[start as usize..end as usize];
            piece.extend_from_slice(data);
            let mut cell_bytes = data.to_vec();
            cell_bytes.resize(cell, 0);
            padded.push(cell_bytes);
        }
        let mut parity = vec![vec![0u8; cell]; geometry.parity];
        coder.encode_sep(&padded, &mut parity).unwrap();
        for (piece, cell_bytes) in pieces[geometry.data..].iter_mut().zip(parity) {
            piece.extend_from_slice(&cell_bytes);
        }
    }
    pieces
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
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

struct Harness {
    _root: tempfile::TempDir,
    meta: Arc<FakeMeta>,
    _meta_server: RpcServer,
    nodes: Vec<Node>,
    client: RpcClient,
    token_key: TokenKey,
}

impl Harness {
    async fn new(names: &[&str]) -> Harness {
        let root = tempfile::tempdir().unwrap();
        let ca = root.path().join("ca");
        tls::ca_init(&ca).unwrap();
        tls::ca_issue(&ca, Role::Meta, "test-meta").unwrap();
        tls::ca_issue(&ca, Role::Client, "test-client").unwrap();
        let meta = Arc::new(FakeMeta::default());
        let meta_server = RpcServer::start(
            &Identity::load_from_dir(&ca, "test-meta").unwrap(),
            &TransportOptions::loopback(),
            "127.0.0.1:0".parse().unwrap(),
            meta.clone(),
            RpcMetrics::new(&prometheus::Registry::new(), "test-meta").unwrap(),
        )
        .unwrap();
        let meta_addr = meta_server.local_addr().unwrap();
        let mut nodes = Vec::new();
        for name in names {
            nodes.push(start_node(root.path(), &ca, name, meta_addr).await);
        }
        let client = RpcClient::new(
            &Identity::load_from_dir(&ca, "test-client").unwrap(),
            &TransportOptions::loopback(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let token_key = TokenKey::load(&ca.join(tls::TOKEN_KEY_FILE)).unwrap();
        let harness = Harness {
            _root: root,
            meta,
            _meta_server: meta_server,
            nodes,
            client,
            token_key,
        };
        for node in &harness.nodes {
            harness
                .wait(&format!("{} to heartbeat", node.name), || {
                    !harness.meta.beats(&node.name).is_empty()
                })
                .await;
        }
        harness
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }

    fn token(&self, chunk: ChunkId, rights: Rights) -> Token {
        self.token_key.mint(Capability {
            chunk,
            rights,
            expires_at_ms: unix_now_ms() + 600_000,
        })
    }

    async fn wait(&self, what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..600 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}");
    }

    async fn result(&self, node: &str, job: u64) -> JobResult {
        let mut found = None;
        self.wait(&format!("job {job} on {node}"), || {
            found = self.meta.results(node).into_iter().find(|r| r.job == job);
            found.is_some()
        })
        .await;
        found.unwrap()
    }

    async fn write(&self, node: &str, piece: PieceId, data: &[u8]) {
        let msg = WritePiece {
            piece,
            length: data.len() as u64,
            checksum: checksum_of(data),
            token: self.token(piece.chunk, Rights::WRITE),
        };
        let peer = Peer::new(self.node(node).server.addr(), Role::Chunk);
        let options = CallOptions::with_timeout(Duration::from_secs(60));
        let mut call = self
            .client
            .open(peer, &msg, data.len() as u64, options)
            .await
            .unwrap();
        call.write_bytes(Bytes::copy_from_slice(data))
            .await
            .unwrap();
        call.finish().await.unwrap();
    }

    async fn read(&self, node: &str, piece: PieceId, length: u64) -> Result<Vec<u8>, Error> {
        let msg = ReadPiece {
            piece,
            offset: 0,
            length,
            token: self.token(piece.chunk, Rights::READ),
        };
        let peer = Peer::new(self.node(node).server.addr(), Role::Chunk);
        let options = CallOptions::with_timeout(Duration::from_secs(60));
        let (_, bytes) = self
            .client
            .call_bulk(peer, &msg, Bytes::new(), length as usize, options)
            .await?;
        Ok(bytes)
    }

    fn files(&self, node: &str, folder: &str) -> usize {
        std::fs::read_dir(self.node(node).disk.join(folder))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn id(chunk: ChunkId, index: usize) -> PieceId {
    PieceId {
        chunk,
        index: index as u8,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_jobs_and_the_heartbeat_contract() {
    let h = Harness::new(&["chunk-a", "chunk-b", "chunk-c"]).await;
    let geometry = Geometry::new(4, 2);
    let ec = ChunkId(0xec);
    let len = 3 * MIB + 12345;
    let pieces = encode_chunk(geometry, &pattern(1, len));
    // Pieces 1 and 5 are lost; a holds 0, 2 and 4, b holds 3.
    for index in [0, 2, 4] {
        h.write("chunk-a", id(ec, index), &pieces[index]).await;
    }
    h.write("chunk-b", id(ec, 3), &pieces[3]).await;
    let replica = ChunkId(0x5e);
    let replica_data = pattern(2, 700_000);
    h.write("chunk-a", id(replica, 0), &replica_data).await;

    // Seals reach the metaserver as inventory changes.
    h.wait("a's writes in its heartbeats", || {
        h.meta.added("chunk-a").len() >= 4
    })
    .await;

    let source = |index: usize, node: &str| PieceSource {
        index: index as u8,
        address: h.node(node).addr(),
    };
    let rebuild = RebuildPieces {
        job: 11,
        chunk: ec,
        data: 4,
        parity: 2,
        chunk_length: len as u64,
        sources: vec![
            source(0, "chunk-a"),
            source(2, "chunk-a"),
            source(3, "chunk-b"),
            source(4, "chunk-a"),
        ],
        targets: vec![
            PieceTarget {
                index: 1,
                address: h.node("chunk-b").addr(),
                local: false,
                checksum: Some(checksum_of(&pieces[1])),
            },
            PieceTarget {
                index: 5,
                address: h.node("chunk-c").addr(),
                local: true,
                checksum: None,
            },
        ],
        token: h.token(ec, Rights::READ.union(Rights::WRITE)),
    };
    let copy = CopyPiece {
        job: 12,
        piece: id(replica, 1),
        source_piece: id(replica, 0),
        source: h.node("chunk-a").addr(),
        source_token: h.token(replica, Rights::READ),
        length: replica_data.len() as u64,
        checksum: None,
    };
    // The first heartbeat carrying the copy's result fails: the result must
    // come again with a later one.
    lock(&h.meta.refuse_first_report).push(12);
    h.meta
        .send("chunk-c", ChunkCommand::Rebuild(rebuild.clone()));
    h.meta.send("chunk-c", ChunkCommand::Copy(copy.clone()));

    let rebuilt = h.result("chunk-c", 11).await;
    assert_eq!(rebuilt.error, None);
    let expect = |index: usize| PieceInfo {
        piece: id(ec, index),
        length: pieces[index].len() as u64,
        checksum: checksum_of(&pieces[index]),
    };
    assert_eq!(rebuilt.sealed, vec![expect(1), expect(5)]);
    assert!(
        h.read("chunk-b", id(ec, 1), pieces[1].len() as u64)
            .await
            .unwrap()
            == pieces[1]
    );
    assert!(
        h.read("chunk-c", id(ec, 5), pieces[5].len() as u64)
            .await
            .unwrap()
            == pieces[5]
    );

    let copied = h.result("chunk-c", 12).await;
    assert_eq!(copied.error, None);
    let copy_info = PieceInfo {
        piece: id(replica, 1),
        length: replica_data.len() as u64,
        checksum: checksum_of(&replica_data),
    };
    assert_eq!(copied.sealed, vec![copy_info]);
    assert!(
        lock(&h.meta.refused)
            .iter()
            .any(|beat| beat.jobs.iter().any(|r| r.job == 12)),
        "the refused heartbeat did not carry the result"
    );

    // Every seal, remote or local, is in its holder's inventory changes.
    h.wait("the rebuilt and copied pieces as added", || {
        h.meta.added("chunk-b").contains(&expect(1))
            && h.meta.added("chunk-c").contains(&expect(5))
            && h.meta.added("chunk-c").contains(&copy_info)
    })
    .await;

    // Delivered results are not sent again.
    let delivered = h.meta.beats("chunk-c").len();
    h.wait("more heartbeats from c", || {
        h.meta.beats("chunk-c").len() >= delivered + 3
    })
    .await;
    assert_eq!(
        h.meta
            .results("chunk-c")
            .iter()
            .filter(|r| r.job == 11 || r.job == 12)
            .count(),
        2
    );

    // The same job again (a new leader): its result, not a second run.
    h.meta
        .send("chunk-c", ChunkCommand::Rebuild(rebuild.clone()));
    h.wait("the result of job 11 again", || {
        h.meta
            .results("chunk-c")
            .iter()
            .filter(|r| r.job == 11)
            .count()
            == 2
    })
    .await;
    let c = h.node("chunk-c");
    assert_eq!(
        c.metric(
            "tessera_chunk_repair_jobs_total",
            &[("kind", "rebuild"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        c.metric(
            "tessera_chunk_repair_jobs_total",
            &[("kind", "copy"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        c.metric("tessera_chunk_repair_bytes_total", &[("kind", "rebuild")]),
        // Every piece the job sealed counts, local or remote.
        (pieces[1].len() + pieces[5].len()) as f64
    );
    assert_eq!(c.metric("tessera_chunk_repair_jobs_running", &[]), 0.0);

    // A rebuilt piece that does not match the chunk map is never sealed,
    // and the target keeps nothing of the aborted stream.
    let mut wrong = rebuild.clone();
    wrong.job = 13;
    wrong.targets = vec![PieceTarget {
        index: 5,
        address: h.node("chunk-b").addr(),
        local: false,
        checksum: Some([7; 32]),
    }];
    h.meta.send("chunk-c", ChunkCommand::Rebuild(wrong));
    let failed = h.result("chunk-c", 13).await;
    let error = failed.error.unwrap();
    assert!(error.contains("checksum"), "{error}");
    assert!(failed.sealed.is_empty());
    let err = h
        .read("chunk-b", id(ec, 5), pieces[5].len() as u64)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    h.wait("b to drop the aborted stream", || {
        h.files("chunk-b", "tmp") == 0
    })
    .await;

    // A new job over pieces that exist: the local one counts as sealed, the
    // remote one is refused by its target and named.
    let mut again = rebuild.clone();
    again.job = 14;
    h.meta.send("chunk-c", ChunkCommand::Rebuild(again));
    let partial = h.result("chunk-c", 14).await;
    assert_eq!(partial.sealed, vec![expect(5)]);
    let error = partial.error.unwrap();
    assert!(error.contains(&id(ec, 1).to_string()), "{error}");

    // Corruption: reported, then its quarantined copy dropped on command.
    let a = h.node("chunk-a");
    let path = a
        .disk
        .join("pieces")
        .join(format!("{:02x}", replica.0 & 0xff))
        .join(format!("{:016x}.0", replica.0));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096 + 1000] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    // An aligned read carries the block hashes and is checked by its
    // reader, not the server; the reader's `VerifyPiece` has the server
    // find the damage.
    let verify = VerifyPiece {
        piece: id(replica, 0),
        offset: 0,
        length: replica_data.len() as u64,
        token: h.token(replica, Rights::READ),
    };
    let peer = Peer::new(h.node("chunk-a").server.addr(), Role::Chunk);
    let reply = h
        .client
        .call(
            peer,
            &verify,
            CallOptions::with_timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    assert!(!reply.intact, "the flipped byte was not found");
    let err = h
        .read("chunk-a", id(replica, 0), replica_data.len() as u64)
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound, "{err}");
    h.wait("a to report the corrupt piece", || {
        h.meta
            .beats("chunk-a")
            .iter()
            .any(|beat| beat.corrupt.contains(&id(replica, 0)))
    })
    .await;
    assert_eq!(h.files("chunk-a", "quarantine"), 1);
    h.meta.send(
        "chunk-a",
        ChunkCommand::DropQuarantined(vec![id(replica, 0)]),
    );
    h.wait("a to drop the quarantined copy", || {
        h.files("chunk-a", "quarantine") == 0
    })
    .await;

    // Deletions reach the metaserver as removed pieces.
    h.meta
        .send("chunk-a", ChunkCommand::Delete(vec![id(ec, 0)]));
    h.wait("a to report the deletion", || {
        h.meta
            .beats("chunk-a")
            .iter()
            .any(|beat| beat.removed.contains(&id(ec, 0)))
    })
    .await;
    // Quarantine is reported as corrupt, never as removed.
    assert!(
        !h.meta
            .beats("chunk-a")
            .iter()
            .any(|beat| beat.removed.contains(&id(replica, 0)))
    );
}

impl Harness {
    async fn read_range(
        &self,
        node: &str,
        piece: PieceId,
        offset: u64,
        length: u64,
    ) -> Result<(ReadRangeReply, Vec<u8>), Error> {
        let msg = ReadRange {
            piece,
            offset,
            length,
            token: self.token(piece.chunk, Rights::READ),
        };
        let peer = Peer::new(self.node(node).server.addr(), Role::Chunk);
        let options = CallOptions::with_timeout(Duration::from_secs(60));
        self.client
            .call_bulk(peer, &msg, Bytes::new(), length as usize, options)
            .await
    }
}

/// Whether every block a `ReadRange` reply touched checks out against its
/// hash through its proof, as the client checks it.
fn proven(reply: &ReadRangeReply, bytes: &[u8], offset: u64, piece_len: u64) -> bool {
    let block = BLOCK_BYTES as u64;
    let end = offset + bytes.len() as u64;
    let first = offset / block;
    reply.block_hashes.len() == reply.proofs.len()
        && reply
            .block_hashes
            .iter()
            .zip(&reply.proofs)
            .enumerate()
            .all(|(i, (hash, proof))| {
                let start = (first + i as u64) * block;
                let block_len = (piece_len - start).min(block) as usize;
                let (from, to) = (offset.max(start), end.min(start + block));
                let data = &bytes[(from - offset) as usize..(to - offset) as usize];
                range_matches(data, (from - start) as usize, block_len, proof, hash)
            })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_ranges_travel_alone_with_proofs_that_catch_a_flipped_byte() {
    let h = Harness::new(&["chunk-a"]).await;
    let chunk = ChunkId(0x7a);
    let piece = id(chunk, 0);
    let block = BLOCK_BYTES as u64;
    let len = 3 * block + 5000;
    let data = pattern(9, len as usize);
    h.write("chunk-a", piece, &data).await;

    // Ranges inside one block, across blocks, a whole short last block,
    // and to the piece's end: only the range comes back, and it proves.
    let ranges = [
        (0, 1024),
        (4096, 4096),
        (block + 1024, 2048),
        (60 * 1024, 8192),
        (3 * block, 5000),
        (3 * block + 1024, 3976),
        (1024, len - 1024),
        (0, block),
    ];
    for (offset, length) in ranges {
        let (reply, bytes) = h
            .read_range("chunk-a", piece, offset, length)
            .await
            .unwrap();
        assert_eq!(reply.piece_length, len);
        assert_eq!(
            bytes,
            &data[offset as usize..(offset + length) as usize],
            "{offset}+{length}"
        );
        assert!(proven(&reply, &bytes, offset, len), "{offset}+{length}");
    }

    // Ranges that cannot be proven alone are refused, and say why.
    for (offset, length, code) in [
        (100, 4096, ErrorCode::InvalidArgument),
        (0, 1000, ErrorCode::InvalidArgument),
        (4096, 0, ErrorCode::InvalidArgument),
        (0, READ_RANGE_MAX_BYTES + 1024, ErrorCode::InvalidArgument),
        (3 * block, 6144, ErrorCode::OutOfRange),
    ] {
        let err = h
            .read_range("chunk-a", piece, offset, length)
            .await
            .unwrap_err();
        assert_eq!(err.code, code, "{offset}+{length}: {err}");
    }

    // A byte flipped on disk, in the rest of the range's block or inside
    // the range itself: the bytes still come (the server does not check
    // what it sends), and the proof fails in the reader's hands.
    let path = h
        .node("chunk-a")
        .disk
        .join("pieces")
        .join(format!("{:02x}", chunk.0 & 0xff))
        .join(format!("{:016x}.0", chunk.0));
    let original = std::fs::read(&path).unwrap();
    for flipped in [block + 40_000, block + 5000] {
        let mut bytes = original.clone();
        bytes[4096 + flipped as usize] ^= 0x10;
        std::fs::write(&path, &bytes).unwrap();
        let (reply, got) = h
            .read_range("chunk-a", piece, block + 4096, 4096)
            .await
            .unwrap();
        assert!(
            !proven(&reply, &got, block + 4096, len),
            "a byte flipped at {flipped} went unnoticed"
        );
        // The rest of the piece still proves.
        let (reply, got) = h.read_range("chunk-a", piece, 4096, 4096).await.unwrap();
        assert!(proven(&reply, &got, 4096, len));
    }
}
