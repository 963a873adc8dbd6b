//! The replicated state: the namespace, the chunk map, the registered
//! chunkservers and the table of recent request ids. Pure and deterministic:
//! every replica applies the same commands (which carry the leader's clock)
//! to the same result. No I/O; persistence goes through `take_changes`.
//!
//! Invariants: a request id seen within the last `REQUEST_TTL_NS` returns its
//! first reply; a chunk is deleted only after no extent references it, or
//! after its allocation expired uncommitted; two pieces of a chunk never sit
//! on one node.

use crate::kv::{Change, MemStore, Store, prefix_end};
use crate::namespace::Namespace;
use crate::types::{Applied, Command};
pub use chunks::build_chunk_indexes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tessera_proto::chunk::Labels;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, InodeId, NodeId, RequestId};
use tessera_proto::meta::{
    ACCESS_KEY_DESCRIPTION_MAX_BYTES, ACCESS_KEYS_MAX, AccessKeyInfo, ChunkPlacement, FileKind,
    MetaOp, MetaReply, PieceLocation, Policy, ScopedKeyInfo, validate_access_key,
};
use tessera_proto::token::{Capability, Rights, Token};

/// How long a request id's reply is remembered: far longer than any client
/// retries, short enough to keep the table small.
pub const REQUEST_TTL_NS: i64 = 10 * 60 * 1_000_000_000;
/// Most request replies remembered; past it the oldest go first, so a burst
/// of operations cannot grow the table (on disk) without bound.
pub const REQUESTS_MAX: u64 = 2_000_000;
/// Expiry starts only once the oldest reply is this much past the TTL, or
/// the table this many past its bound, and then forgets up to
/// `REQUESTS_EXPIRED_PER_SWEEP` at once: one range read per few hundred
/// commands instead of one per command, and still faster than arrivals.
const REQUEST_EXPIRY_SLACK_NS: i64 = 1_000_000_000;
const REQUEST_EXPIRY_SLACK: u64 = 1024;
const REQUESTS_EXPIRED_PER_SWEEP: usize = 128;
/// An allocation not committed within this time is collected.
pub const ALLOCATION_TTL_NS: i64 = 30 * 60 * 1_000_000_000;
/// Expired allocations collected per command at most, so one command stays
/// a small batch; the leader proposes one every few seconds.
const ALLOCATIONS_EXPIRED_PER_COMMAND: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkState {
    /// Handed out for writing; not referenced yet.
    Allocated { at_ns: i64, ino: InodeId },
    /// Referenced by at least one extent.
    Committed { length: u64 },
    /// No longer referenced; these nodes still hold a piece to delete.
    Deleting { remaining: Vec<NodeId> },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub policy: Policy,
    /// Node holding each piece, by piece index.
    pub nodes: Vec<NodeId>,
    pub state: ChunkState,
    /// Piece checksums by index, as the writer sealed them (all zero where
    /// unknown). Repair verifies every rebuilt piece against them.
    pub checksums: Vec<[u8; 32]>,
}

/// The chunk record as written before checksums were recorded; read back
/// with empty checksums.
#[derive(Deserialize)]
struct ChunkRecordV1 {
    policy: Policy,
    nodes: Vec<NodeId>,
    state: ChunkState,
}

fn decode_chunk(value: &[u8]) -> Result<ChunkRecord, postcard::Error> {
    match postcard::from_bytes::<ChunkRecord>(value) {
        Ok(record) => Ok(record),
        Err(err) => match postcard::from_bytes::<ChunkRecordV1>(value) {
            Ok(old) => Ok(ChunkRecord {
                policy: old.policy,
                nodes: old.nodes,
                state: old.state,
                checksums: Vec::new(),
            }),
            Err(_) => Err(err),
        },
    }
}

impl ChunkRecord {
    /// The recorded checksum of piece `index`, if any.
    pub fn checksum(&self, index: u8) -> Option<[u8; 32]> {
        self.checksums
            .get(index as usize)
            .copied()
            .filter(|c| *c != [0; 32])
    }
}

/// An operator's decision about a chunkserver, replicated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeAdminState {
    /// Its pieces move elsewhere; it serves reads meanwhile and placement
    /// never chooses it.
    Drained,
    /// Forgotten: whatever the map still places on it is repaired, and if
    /// it comes back it joins as a new, empty node.
    Removed,
}

/// Why a job moves pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobKind {
    /// Redundancy was lost (a dead node, a missing or corrupt piece).
    Repair,
    /// The holder is drained.
    Drain,
    /// Evening out disk use.
    Rebalance,
}

impl JobKind {
    pub fn name(self) -> &'static str {
        match self {
            JobKind::Repair => "repair",
            JobKind::Drain => "drain",
            JobKind::Rebalance => "rebalance",
        }
    }
}

/// Where a job's bytes come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobSource {
    /// A copy of piece `index` on `node` (for replicas any replica serves).
    Copy { node: NodeId, index: u8 },
    /// Decoded from surviving pieces of an erasure-coded chunk.
    Rebuild { sources: Vec<(u8, NodeId)> },
}

/// A repair, drain or rebalance decision, committed before any byte moves
/// so that a new leader carries on with it instead of starting over.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairJob {
    pub chunk: ChunkId,
    pub kind: JobKind,
    /// Piece index and the node it goes to.
    pub pieces: Vec<(u8, NodeId)>,
    /// The chunkserver doing the work (the copy's target, or the rebuilder).
    pub executor: NodeId,
    pub source: JobSource,
    pub started_ns: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub address: String,
    pub labels: Labels,
}

/// An S3 access key. The secret is kept as is: SigV4 signatures are
/// HMACs keyed by it, so the gateway needs the secret itself, not a hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub secret: String,
    pub description: String,
    pub created_ns: i64,
    /// Whether the key reaches every bucket, or only those whose
    /// directories grant it (`user.s3.grant.ID`, read by the gateway).
    pub all_buckets: bool,
}

/// A key as stored before bucket grants: every such key keeps reaching
/// every bucket (docs/s3.md, Keys and buckets).
#[derive(Deserialize)]
struct KeyRecordV1 {
    secret: String,
    description: String,
    created_ns: i64,
}

impl KeyRecord {
    /// Postcard records carry no field names: a record from before
    /// `all_buckets` ends where that field would start, which the current
    /// layout refuses, so the older layout is tried next.
    fn decode(bytes: &[u8]) -> Result<KeyRecord, postcard::Error> {
        postcard::from_bytes::<KeyRecord>(bytes).or_else(|_| {
            let old: KeyRecordV1 = postcard::from_bytes(bytes)?;
            Ok(KeyRecord {
                secret: old.secret,
                description: old.description,
                created_ns: old.created_ns,
                all_buckets: true,
            })
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct ReplyRecord {
    at_ns: i64,
    reply: Result<Applied, Error>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Counters {
    next_chunk: u64,
    next_node: u64,
    next_job: u64,
}

/// The counters as written before jobs existed.
#[derive(Deserialize)]
struct CountersV1 {
    next_chunk: u64,
    next_node: u64,
}

fn decode_counters(value: &[u8]) -> Result<Counters, postcard::Error> {
    match postcard::from_bytes::<Counters>(value) {
        Ok(counters) => Ok(counters),
        Err(err) => match postcard::from_bytes::<CountersV1>(value) {
            Ok(old) => Ok(Counters {
                next_chunk: old.next_chunk,
                next_node: old.next_node,
                next_job: 1,
            }),
            Err(_) => Err(err),
        },
    }
}

pub struct State {
    /// The namespace, and the store under the whole state: request replies
    /// live there too, read through its cache.
    pub ns: Namespace,
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    pub node_admin: BTreeMap<NodeId, NodeAdminState>,
    pub jobs: BTreeMap<u64, RepairJob>,
    keys: BTreeMap<String, KeyRecord>,
    counters: Counters,
    dirty: BTreeSet<Vec<u8>>,
    /// When the oldest remembered request arrived, once known: while it is
    /// not due (and the table within its bound) nothing is scanned. Only a
    /// shortcut; the answer is the same without it.
    oldest_request: Oldest,
    /// Every time index record before this one is deleted, so expiry scans
    /// start here rather than over their tombstones.
    request_floor: Vec<u8>,
}

/// What is known of the oldest remembered request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Oldest {
    /// Not known (after a start or a sweep): the next command looks.
    Unknown,
    /// No request is remembered.
    Nothing,
    At(i64),
}

const KEY_COUNTERS: &[u8] = b"xcounters";
const KEY_REQUEST_COUNT: &[u8] = b"xrequests";
const PREFIX_REQUEST_TIME: &[u8] = b"t";

/// The time index of request replies: arrival, then id.
fn request_time_key(at_ns: i64, id: RequestId) -> Vec<u8> {
    let at = u64::try_from(at_ns).unwrap_or(0);
    [PREFIX_REQUEST_TIME, &at.to_be_bytes(), &id.0.to_be_bytes()].concat()
}

fn node_key(node: NodeId) -> Vec<u8> {
    [b"o".as_slice(), &node.0.to_be_bytes()].concat()
}
fn admin_key(node: NodeId) -> Vec<u8> {
    [b"d".as_slice(), &node.0.to_be_bytes()].concat()
}
fn job_key(job: u64) -> Vec<u8> {
    [b"j".as_slice(), &job.to_be_bytes()].concat()
}
fn access_key_key(id: &str) -> Vec<u8> {
    [b"k".as_slice(), id.as_bytes()].concat()
}
fn request_key(id: RequestId) -> Vec<u8> {
    [b"r".as_slice(), &id.0.to_be_bytes()].concat()
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain records into a Vec cannot fail.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Before the namespace moved to disk, request replies were all read into
/// memory at start and had no time index; this builds the index and the
/// count for replies written then (part of the namespace's conversion).
pub fn migrate_requests(store: &dyn Store) -> Result<(), String> {
    let mut changes = Vec::new();
    let mut count = 0u64;
    for (key, value) in store.scan(b"r", &prefix_end(b"r"), usize::MAX)? {
        let id = key
            .get(1..17)
            .and_then(|b| b.try_into().ok())
            .map(u128::from_be_bytes)
            .ok_or("request key of the wrong length")?;
        let record: ReplyRecord =
            postcard::from_bytes(&value).map_err(|e| format!("decode request record: {e}"))?;
        changes.push((
            request_time_key(record.at_ns, RequestId(id)),
            Some(Vec::new()),
        ));
        count += 1;
    }
    changes.push((KEY_REQUEST_COUNT.to_vec(), Some(encode(&count))));
    store.write(changes)
}

/// Placeholder until the service mints a real token after the apply.
pub fn no_token(chunk: ChunkId) -> Token {
    Token {
        capability: Capability {
            chunk,
            rights: Rights(0),
            expires_at_ms: 0,
        },
        mac: [0; 32],
    }
}

impl State {
    /// A new state in memory, for tests.
    pub fn new(default_policy: Policy, now_ns: i64) -> State {
        let mut state = State::around(Namespace::new(default_policy, now_ns));
        state.counters = Counters {
            next_chunk: 1,
            next_node: 1,
            next_job: 1,
        };
        state.dirty.insert(KEY_COUNTERS.to_vec());
        chunks::mark_indexed(&mut state);
        state
    }

    fn around(ns: Namespace) -> State {
        State {
            ns,
            nodes: BTreeMap::new(),
            node_admin: BTreeMap::new(),
            jobs: BTreeMap::new(),
            keys: BTreeMap::new(),
            counters: Counters::default(),
            dirty: BTreeSet::new(),
            oldest_request: Oldest::Unknown,
            request_floor: PREFIX_REQUEST_TIME.to_vec(),
        }
    }

    /// Opens the state kept in `store` (a fresh one when it holds none).
    /// The namespace, the chunk map and the request replies stay on disk;
    /// the chunkservers, jobs and access keys are read into memory.
    pub fn open(
        store: Arc<dyn Store>,
        cache_bytes: usize,
        default_policy: Policy,
        now_ns: i64,
    ) -> Result<State, String> {
        build_chunk_indexes(store.as_ref())?;
        let mut ns = Namespace::open(store.clone(), cache_bytes, default_policy, now_ns)?;
        ns.kv_mut()
            .set_write_only(&[b"r".as_slice(), PREFIX_REQUEST_TIME]);
        let mut state = State::around(ns);
        let mut records = Vec::new();
        for prefix in [b"o", b"d", b"j", b"k"] {
            let prefix = prefix.as_slice();
            records.extend(store.scan(prefix, &prefix_end(prefix), usize::MAX)?);
        }
        match store.get(KEY_COUNTERS)? {
            Some(value) => records.push((KEY_COUNTERS.to_vec(), value)),
            None => {
                state.counters = Counters {
                    next_chunk: 1,
                    next_node: 1,
                    next_job: 1,
                };
                state.dirty.insert(KEY_COUNTERS.to_vec());
            }
        }
        state.load(records)?;
        Ok(state)
    }

    /// Applies one command. Errors are replies, not failures: the command is
    /// still applied (as a no-op) on every replica.
    pub fn apply(&mut self, command: &Command) -> Result<Applied, Error> {
        match command {
            Command::Client {
                request_id,
                op,
                now_ns,
            } => self.client_command(*request_id, *now_ns, |state| {
                state.apply_client(op, *now_ns)
            }),
            Command::Allocate {
                request_id,
                ino,
                policy,
                nodes,
                now_ns,
            } => {
                self.expire_requests(*now_ns);
                if let Some(seen) = self.seen(*request_id) {
                    return seen.reply;
                }
                let reply = self
                    .allocate(*ino, *policy, nodes, *now_ns)
                    .map(Applied::Meta);
                self.remember(*request_id, *now_ns, &reply);
                reply
            }
            Command::Register {
                name,
                address,
                labels,
                ..
            } => {
                let known = self.nodes.iter().rev().find(|(node, r)| {
                    &r.name == name && self.node_admin.get(node) != Some(&NodeAdminState::Removed)
                });
                let node = match known {
                    Some((node, _)) => *node,
                    None => {
                        let node = NodeId(self.counters.next_node);
                        self.counters.next_node += 1;
                        self.dirty.insert(KEY_COUNTERS.to_vec());
                        node
                    }
                };
                self.nodes.insert(
                    node,
                    NodeRecord {
                        name: name.clone(),
                        address: address.clone(),
                        labels: labels.clone(),
                    },
                );
                self.dirty.insert(node_key(node));
                Ok(Applied::Node(node))
            }
            Command::PiecesGone { chunk, nodes } => {
                if let Some(mut record) = self.chunk(*chunk)
                    && let ChunkState::Deleting { remaining } = &mut record.state
                {
                    remaining.retain(|n| !nodes.contains(n));
                    let gone = remaining.is_empty();
                    self.set_chunk(*chunk, (!gone).then_some(&record));
                }
                Ok(Applied::Done)
            }
            Command::StartJob { job } => self.start_job(job),
            Command::FinishJob { job, sealed } => {
                self.finish_job(*job, sealed);
                Ok(Applied::Done)
            }
            Command::SetNodeAdmin { node, state } => self.set_node_admin(*node, *state),
            Command::ExpireAllocations { now_ns } => {
                for chunk in self.due_allocations(*now_ns, ALLOCATIONS_EXPIRED_PER_COMMAND) {
                    self.start_deleting(chunk);
                }
                Ok(Applied::Done)
            }
            Command::OpenSession { info, now_ns } => self.open_session(info, *now_ns),
            Command::SessionClient {
                request_id,
                session,
                op,
                now_ns,
            } => self.client_command(*request_id, *now_ns, |state| {
                state.session_call(*session, op, *now_ns)
            }),
            // Written before sessions had temporary files: there are none
            // to unlink, so the time is never used.
            Command::EndSession { session, why } => self.end_session(*session, *why, 0),
            Command::EndSessionAt {
                session,
                why,
                now_ns,
            } => self.end_session(*session, *why, *now_ns),
        }
    }

    /// A client call, with or without a session: answered from the reply
    /// table if already applied, otherwise applied and its reply remembered.
    fn client_command(
        &mut self,
        request_id: RequestId,
        now_ns: i64,
        apply: impl FnOnce(&mut State) -> Result<MetaReply, Error>,
    ) -> Result<Applied, Error> {
        self.expire_requests(now_ns);
        if let Some(seen) = self.seen(request_id) {
            return seen.reply;
        }
        // Operations check before they change anything; taking back a
        // failed one's records is the second line.
        self.ns.kv_mut().begin();
        let reply = apply(self).map(Applied::Meta);
        if reply.is_err() {
            self.ns.kv_mut().rollback();
        }
        self.release_chunks();
        self.remember(request_id, now_ns, &reply);
        reply
    }

    fn seen(&self, id: RequestId) -> Option<ReplyRecord> {
        let value = self.ns.kv().get_once(&request_key(id))?;
        self.decoded_record(format_args!("request record {id:?}"), &value)
    }

    /// A record that does not decode is damage, not an answer: it is
    /// reported like a failed read.
    fn decoded_record<T: serde::de::DeserializeOwned>(
        &self,
        what: std::fmt::Arguments<'_>,
        value: &[u8],
    ) -> Option<T> {
        match postcard::from_bytes(value) {
            Ok(record) => Some(record),
            Err(err) => {
                self.ns
                    .kv()
                    .report_failure(format!("{what} does not decode: {err}"));
                None
            }
        }
    }

    /// The count stored at `key` (0 when absent).
    fn count_at(&self, key: &[u8]) -> u64 {
        self.ns
            .kv()
            .get(key)
            .and_then(|value| postcard::from_bytes(&value).ok())
            .unwrap_or(0)
    }

    fn request_count(&self) -> u64 {
        self.count_at(KEY_REQUEST_COUNT)
    }

    fn remember(&mut self, id: RequestId, now_ns: i64, reply: &Result<Applied, Error>) {
        let record = ReplyRecord {
            at_ns: now_ns,
            reply: reply.clone(),
        };
        let count = self.request_count().saturating_add(1);
        let time_key = request_time_key(now_ns, id);
        if time_key < self.request_floor {
            // A leader whose clock is behind the last one's.
            self.request_floor = time_key.clone();
        }
        let kv = self.ns.kv_mut();
        kv.put(request_key(id), encode(&record));
        kv.put(time_key, Vec::new());
        kv.put(KEY_REQUEST_COUNT.to_vec(), encode(&count));
        self.oldest_request = match self.oldest_request {
            Oldest::Unknown => Oldest::Unknown,
            Oldest::Nothing => Oldest::At(now_ns),
            Oldest::At(at) => Oldest::At(at.min(now_ns)),
        };
    }

    /// Forgets replies older than the TTL, and the oldest ones while the
    /// table is over its bound, a sweep at a time (see the slack above).
    /// Whether a command sweeps depends only on the stored replies, so
    /// every replica forgets the same ones; `oldest_request` only saves the
    /// range read that would find the oldest.
    fn expire_requests(&mut self, now_ns: i64) {
        let mut count = self.request_count();
        let over = count > REQUESTS_MAX + REQUEST_EXPIRY_SLACK;
        let due = |at: i64| now_ns.saturating_sub(at) > REQUEST_TTL_NS + REQUEST_EXPIRY_SLACK_NS;
        let known_not_due = match self.oldest_request {
            Oldest::Unknown => false,
            Oldest::Nothing => true,
            Oldest::At(at) => !due(at),
        };
        if !over && known_not_due {
            return;
        }
        let oldest = self.ns.kv().scan(
            &self.request_floor,
            &prefix_end(PREFIX_REQUEST_TIME),
            REQUESTS_EXPIRED_PER_SWEEP,
        );
        let at_of = |key: &[u8]| {
            key.get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .map_or(0, |at| i64::try_from(at).unwrap_or(i64::MAX))
        };
        // Nothing due yet: remember the oldest and leave the table alone.
        if !over && oldest.first().is_none_or(|(key, _)| !due(at_of(key))) {
            self.oldest_request = match oldest.first() {
                Some((key, _)) => Oldest::At(at_of(key)),
                None => Oldest::Nothing,
            };
            return;
        }
        self.oldest_request = Oldest::Unknown;
        let mut expired = 0u64;
        for (key, _) in oldest {
            let at = at_of(&key);
            let stale = now_ns.saturating_sub(at) > REQUEST_TTL_NS;
            if !stale && count <= REQUESTS_MAX {
                self.oldest_request = Oldest::At(at);
                break;
            }
            let Some(id) = key
                .get(9..25)
                .and_then(|b| b.try_into().ok())
                .map(u128::from_be_bytes)
            else {
                continue;
            };
            let kv = self.ns.kv_mut();
            kv.delete(request_key(RequestId(id)));
            kv.delete(key.clone());
            count = count.saturating_sub(1);
            expired += 1;
            self.request_floor = key;
        }
        if expired > 0 {
            self.ns
                .kv_mut()
                .put(KEY_REQUEST_COUNT.to_vec(), encode(&count));
        }
    }

    fn apply_client(&mut self, op: &MetaOp, now_ns: i64) -> Result<MetaReply, Error> {
        match op {
            MetaOp::CommitExtents {
                ino,
                extents,
                chunk_lengths,
                piece_checksums,
                min_size,
            } => {
                let mut touched: BTreeMap<ChunkId, ChunkRecord> = BTreeMap::new();
                for extent in extents {
                    if touched.contains_key(&extent.chunk) {
                        continue;
                    }
                    match self.chunk(extent.chunk) {
                        Some(
                            record @ ChunkRecord {
                                state: ChunkState::Allocated { .. } | ChunkState::Committed { .. },
                                ..
                            },
                        ) => {
                            touched.insert(extent.chunk, record);
                        }
                        _ => {
                            return Err(Error::new(
                                ErrorCode::NotFound,
                                format!(
                                    "{} was never allocated or was collected; allocate a new chunk and write again",
                                    extent.chunk
                                ),
                            ));
                        }
                    }
                }
                let attr = self.ns.commit_extents(*ino, extents, *min_size, now_ns)?;
                // Lengths and checksums may name chunks the extents do not
                // (a chunk filled by an earlier commit).
                for chunk in chunk_lengths
                    .iter()
                    .map(|(c, _)| *c)
                    .chain(piece_checksums.iter().map(|(c, _, _)| *c))
                {
                    if !touched.contains_key(&chunk)
                        && let Some(record) = self.chunk(chunk)
                        && !matches!(record.state, ChunkState::Deleting { .. })
                    {
                        touched.insert(chunk, record);
                    }
                }
                for (chunk, length) in chunk_lengths {
                    if let Some(record) = touched.get_mut(chunk) {
                        record.state = ChunkState::Committed { length: *length };
                    }
                }
                for (chunk, index, checksum) in piece_checksums {
                    if let Some(record) = touched.get_mut(chunk)
                        && (*index as usize) < record.nodes.len()
                    {
                        record.checksums.resize(record.nodes.len(), [0; 32]);
                        record.checksums[*index as usize] = *checksum;
                    }
                }
                for extent in extents {
                    if let Some(record) = touched.get_mut(&extent.chunk)
                        && let ChunkState::Allocated { .. } = record.state
                    {
                        record.state = ChunkState::Committed {
                            length: extent.chunk_offset + extent.length,
                        };
                    }
                }
                for (chunk, record) in &touched {
                    self.set_chunk(*chunk, Some(record));
                }
                Ok(MetaReply::Attr(attr))
            }
            MetaOp::Concat { target, sources } => self
                .ns
                .concat(*target, sources, now_ns)
                .map(MetaReply::Attr),
            MetaOp::AllocateChunk { .. } => {
                Err(Error::internal("allocation goes through Command::Allocate"))
            }
            MetaOp::CreateAccessKey {
                id,
                secret,
                description,
            } => self.create_key(id, secret, description, true, now_ns),
            MetaOp::CreateScopedAccessKey {
                id,
                secret,
                description,
                all_buckets,
            } => self.create_key(id, secret, description, *all_buckets, now_ns),
            MetaOp::SetAccessKeyScope { id, all_buckets } => {
                let Some(record) = self.keys.get_mut(id) else {
                    return Err(Error::new(
                        ErrorCode::NotFound,
                        format!("no access key {id}"),
                    ));
                };
                record.all_buckets = *all_buckets;
                self.dirty.insert(access_key_key(id));
                Ok(MetaReply::Done)
            }
            MetaOp::DeleteAccessKey { id } => {
                if self.keys.remove(id).is_none() {
                    return Err(Error::new(
                        ErrorCode::NotFound,
                        format!("no access key {id}"),
                    ));
                }
                self.dirty.insert(access_key_key(id));
                Ok(MetaReply::Done)
            }
            MetaOp::SetLock { .. }
            | MetaOp::GetLock { .. }
            | MetaOp::EndLockWait { .. }
            | MetaOp::CreateTemporary { .. }
            | MetaOp::CreateOpen { .. }
            | MetaOp::OpenMany { .. } => Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{} belongs to a session: open one first", op.name()),
            )),
            other => self.ns.apply(other, now_ns),
        }
    }

    fn create_key(
        &mut self,
        id: &str,
        secret: &str,
        description: &str,
        all_buckets: bool,
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        validate_access_key(id, secret).map_err(|e| Error::new(ErrorCode::InvalidArgument, e))?;
        if description.len() > ACCESS_KEY_DESCRIPTION_MAX_BYTES {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "a key description of {} bytes; keep it within {ACCESS_KEY_DESCRIPTION_MAX_BYTES}",
                    description.len()
                ),
            ));
        }
        if self.keys.contains_key(id) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("access key {id} exists"),
            ));
        }
        if self.keys.len() >= ACCESS_KEYS_MAX {
            return Err(Error::new(
                ErrorCode::NoSpace,
                format!(
                    "the cluster holds {ACCESS_KEYS_MAX} access keys already; delete unused ones"
                ),
            ));
        }
        let record = KeyRecord {
            secret: secret.to_string(),
            description: description.to_string(),
            created_ns: now_ns,
            all_buckets,
        };
        self.keys.insert(id.to_string(), record);
        self.dirty.insert(access_key_key(id));
        Ok(MetaReply::Done)
    }

    fn allocate(
        &mut self,
        ino: InodeId,
        policy: Policy,
        nodes: &[NodeId],
        now_ns: i64,
    ) -> Result<MetaReply, Error> {
        let attr = self.ns.attr(ino)?;
        if attr.kind != FileKind::File {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("{ino} is not a regular file"),
            ));
        }
        if nodes.len() != policy.width() {
            return Err(Error::internal("placement width differs from the policy"));
        }
        let distinct: BTreeSet<_> = nodes.iter().collect();
        if distinct.len() != nodes.len() || nodes.iter().any(|n| !self.nodes.contains_key(n)) {
            return Err(Error::internal("placement names unknown or repeated nodes"));
        }
        let chunk = ChunkId(self.counters.next_chunk);
        self.counters.next_chunk += 1;
        self.dirty.insert(KEY_COUNTERS.to_vec());
        let record = ChunkRecord {
            policy,
            nodes: nodes.to_vec(),
            state: ChunkState::Allocated { at_ns: now_ns, ino },
            checksums: Vec::new(),
        };
        self.set_chunk(chunk, Some(&record));
        self.placement(chunk)
            .map(MetaReply::Chunk)
            .ok_or_else(|| Error::internal(format!("{chunk} vanished right after its allocation")))
    }

    /// Where a chunk's pieces live, with a placeholder token.
    pub fn placement(&self, chunk: ChunkId) -> Option<ChunkPlacement> {
        let record = self.chunk(chunk)?;
        let length = match record.state {
            ChunkState::Committed { length } => length,
            _ => 0,
        };
        let pieces = record
            .nodes
            .iter()
            .enumerate()
            .map(|(index, node)| PieceLocation {
                index: index as u8,
                node: *node,
                address: self
                    .nodes
                    .get(node)
                    .map(|r| r.address.clone())
                    .unwrap_or_default(),
            })
            .collect();
        Some(ChunkPlacement {
            chunk,
            policy: record.policy,
            length,
            pieces,
            token: no_token(chunk),
        })
    }

    fn release_chunks(&mut self) {
        for chunk in self.ns.take_released_chunks() {
            if self.ns.chunk_refs(chunk) == 0 {
                self.start_deleting(chunk);
            }
        }
    }

    fn start_deleting(&mut self, chunk: ChunkId) {
        if let Some(mut record) = self.chunk(chunk) {
            record.state = ChunkState::Deleting {
                remaining: record.nodes.clone(),
            };
            self.set_chunk(chunk, Some(&record));
        }
    }

    /// Records a repair decision. Refused (as a no-op on every replica) when
    /// the chunk changed since the leader looked: it is no longer committed,
    /// another job holds it, or a target would put two pieces on one node.
    fn start_job(&mut self, job: &RepairJob) -> Result<Applied, Error> {
        let refuse = |why: String| Err(Error::new(ErrorCode::InvalidArgument, why));
        let Some(record) = self.chunk(job.chunk) else {
            return refuse(format!("{} is gone", job.chunk));
        };
        if !matches!(record.state, ChunkState::Committed { .. }) {
            return refuse(format!("{} is not committed", job.chunk));
        }
        if self.jobs.values().any(|j| j.chunk == job.chunk) {
            return refuse(format!("{} already has a job", job.chunk));
        }
        let usable =
            |node: &NodeId| self.nodes.contains_key(node) && !self.node_admin.contains_key(node);
        if job.pieces.is_empty() || !usable(&job.executor) {
            return refuse("a job needs pieces and a usable executor".into());
        }
        let mut targets = BTreeSet::new();
        for (index, target) in &job.pieces {
            let index = *index as usize;
            if index >= record.nodes.len() || !usable(target) || !targets.insert(*target) {
                return refuse(format!(
                    "job target {target} for piece {index} is not usable"
                ));
            }
            let elsewhere = record.nodes.iter().enumerate().any(|(other, holder)| {
                holder == target
                    && other != index
                    && !job.pieces.iter().any(|(i, _)| *i as usize == other)
            });
            if elsewhere {
                return refuse(format!("{target} already holds a piece of {}", job.chunk));
            }
        }
        let id = self.counters.next_job;
        self.counters.next_job += 1;
        self.dirty.insert(KEY_COUNTERS.to_vec());
        self.jobs.insert(id, job.clone());
        self.dirty.insert(job_key(id));
        Ok(Applied::Job(id))
    }

    /// Ends a job: each piece it sealed (and the chunkserver reported) now
    /// stands in the chunk map in place of the old one. The old copy, if any
    /// survives, is surplus and goes only once the full set is confirmed.
    fn finish_job(&mut self, id: u64, sealed: &[(u8, NodeId)]) {
        let Some(job) = self.jobs.remove(&id) else {
            return;
        };
        self.dirty.insert(job_key(id));
        let Some(mut record) = self.chunk(job.chunk) else {
            return;
        };
        if !matches!(record.state, ChunkState::Committed { .. }) {
            return;
        }
        for (index, node) in sealed {
            if job.pieces.contains(&(*index, *node))
                && let Some(slot) = record.nodes.get_mut(*index as usize)
            {
                *slot = *node;
            }
        }
        self.set_chunk(job.chunk, Some(&record));
    }

    fn set_node_admin(
        &mut self,
        node: NodeId,
        state: Option<NodeAdminState>,
    ) -> Result<Applied, Error> {
        if !self.nodes.contains_key(&node) {
            return Err(Error::new(
                ErrorCode::NotFound,
                format!("no chunkserver {node}; `tessera admin node list` shows them"),
            ));
        }
        if self.node_admin.get(&node) == Some(&NodeAdminState::Removed) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("chunkserver {node} was removed; if it runs again it joins as a new node"),
            ));
        }
        match state {
            Some(state) => self.node_admin.insert(node, state),
            None => self.node_admin.remove(&node),
        };
        if state == Some(NodeAdminState::Removed) {
            let stale: Vec<u64> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.executor == node || j.pieces.iter().any(|(_, t)| *t == node))
                .map(|(id, _)| *id)
                .collect();
            for id in stale {
                self.jobs.remove(&id);
                self.dirty.insert(job_key(id));
            }
        }
        self.dirty.insert(admin_key(node));
        Ok(Applied::Done)
    }

    pub fn admin_state(&self, node: NodeId) -> Option<NodeAdminState> {
        self.node_admin.get(&node).copied()
    }

    /// Answers the read-only access key operations.
    pub fn read_keys(&self, op: &MetaOp) -> Result<MetaReply, Error> {
        let info = |id: &str, record: &KeyRecord| AccessKeyInfo {
            id: id.to_string(),
            description: record.description.clone(),
            created_ns: record.created_ns,
        };
        match op {
            MetaOp::ListAccessKeys => Ok(MetaReply::AccessKeys(
                self.keys.iter().map(|(id, r)| info(id, r)).collect(),
            )),
            MetaOp::GetAccessKey { id } => match self.keys.get(id) {
                Some(record) => Ok(MetaReply::AccessKey {
                    info: info(id, record),
                    secret: record.secret.clone(),
                }),
                None => Err(Error::new(
                    ErrorCode::NotFound,
                    format!("no access key {id}"),
                )),
            },
            MetaOp::ListScopedAccessKeys => Ok(MetaReply::ScopedAccessKeys(
                self.keys
                    .iter()
                    .map(|(id, r)| ScopedKeyInfo {
                        info: info(id, r),
                        all_buckets: r.all_buckets,
                    })
                    .collect(),
            )),
            MetaOp::GetScopedAccessKey { id } => match self.keys.get(id) {
                Some(record) => Ok(MetaReply::ScopedAccessKey {
                    info: info(id, record),
                    secret: record.secret.clone(),
                    all_buckets: record.all_buckets,
                }),
                None => Err(Error::new(
                    ErrorCode::NotFound,
                    format!("no access key {id}"),
                )),
            },
            _ => Err(Error::internal(format!(
                "{} is not an access key read",
                op.name()
            ))),
        }
    }

    /// Writes every change since the last commit, and `extra` (the applied
    /// log index), as one batch: a crash keeps all of it or none.
    pub fn commit(&mut self, extra: Vec<Change>) -> Result<(), String> {
        let mut changes: Vec<Change> = Vec::with_capacity(self.dirty.len() + extra.len());
        for key in std::mem::take(&mut self.dirty) {
            let value = self.value_of(&key);
            changes.push((key, value));
        }
        changes.extend(extra);
        self.ns.commit(changes)
    }

    /// A store read that failed since the last commit; see
    /// [`crate::kv::Kv::failure`].
    pub fn failure(&self) -> Option<String> {
        self.ns.failure()
    }

    /// Commits and returns what was written: a test's view of one step.
    pub fn take_changes(&mut self) -> Vec<Change> {
        let mut out = self.ns.kv().pending_changes();
        for key in self.dirty.clone() {
            let value = self.value_of(&key);
            out.push((key, value));
        }
        if let Err(why) = self.commit(Vec::new()) {
            tracing::error!(error = %why, "state commit failed");
        }
        out
    }

    fn value_of(&self, key: &[u8]) -> Option<Vec<u8>> {
        let id8 = || {
            key.get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
        };
        match key.first() {
            Some(b'x') => Some(encode(&self.counters)),
            Some(b'o') => self.nodes.get(&NodeId(id8()?)).map(encode),
            Some(b'd') => self.node_admin.get(&NodeId(id8()?)).map(encode),
            Some(b'j') => self.jobs.get(&id8()?).map(encode),
            Some(b'k') => {
                let id = std::str::from_utf8(key.get(1..)?).ok()?;
                self.keys.get(id).map(encode)
            }
            _ => None,
        }
    }

    /// Every record in key order, the unwritten ones included. Reads the
    /// whole store: for tests and checks.
    pub fn records(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = self
            .ns
            .kv()
            .scan(&[], &[0xff; 8], usize::MAX)
            .into_iter()
            .collect();
        for key in &self.dirty {
            match self.value_of(key) {
                Some(value) => out.insert(key.clone(), value),
                None => out.remove(key),
            };
        }
        out.into_iter().collect()
    }

    /// A state in memory over the given records, the namespace checked.
    pub fn from_records(
        records: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
    ) -> Result<State, String> {
        let records: Vec<(Vec<u8>, Vec<u8>)> = records.into_iter().collect();
        Namespace::from_records(records.clone())?;
        let state = State::open(
            MemStore::from_records(records),
            64 << 20,
            Policy::Replicas(1),
            0,
        )?;
        state.check_chunk_indexes()?;
        Ok(state)
    }

    /// Reads the records of the parts kept in memory.
    fn load(&mut self, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<(), String> {
        let decode_err = |what: &str, err: postcard::Error| format!("decode {what} record: {err}");
        for (key, value) in records {
            let id8 = key
                .get(1..9)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            match (key.first(), id8) {
                (Some(b'x'), _) => {
                    self.counters =
                        decode_counters(&value).map_err(|e| decode_err("counters", e))?
                }
                (Some(b'o'), Some(id)) => {
                    self.nodes.insert(
                        NodeId(id),
                        postcard::from_bytes(&value).map_err(|e| decode_err("node", e))?,
                    );
                }
                (Some(b'd'), Some(id)) => {
                    self.node_admin.insert(
                        NodeId(id),
                        postcard::from_bytes(&value).map_err(|e| decode_err("node admin", e))?,
                    );
                }
                (Some(b'j'), Some(id)) => {
                    self.jobs.insert(
                        id,
                        postcard::from_bytes(&value).map_err(|e| decode_err("job", e))?,
                    );
                }
                (Some(b'k'), _) => {
                    let id = std::str::from_utf8(&key[1..])
                        .map_err(|_| "access key id is not UTF-8".to_string())?;
                    self.keys.insert(
                        id.to_string(),
                        KeyRecord::decode(&value).map_err(|e| decode_err("access key", e))?,
                    );
                }
                _ => return Err(format!("unknown state record key {key:?}")),
            }
        }
        Ok(())
    }
}

mod chunks;
mod locks;
mod sessions;

pub use locks::{INODE_LOCKS_MAX, InodeLocks, LockCounts, Waiter};
pub use sessions::{SessionEnd, SessionRecord};

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::meta::{Attr, Extent, INLINE_MAX_BYTES};

    fn client(state: &mut State, op: MetaOp) -> Result<Applied, Error> {
        state.apply(&Command::Client {
            request_id: RequestId::fresh(),
            op,
            now_ns: 1,
        })
    }

    fn attr_of(applied: Result<Applied, Error>) -> Attr {
        match applied {
            Ok(Applied::Meta(MetaReply::Attr(attr) | MetaReply::Entry(attr))) => attr,
            other => panic!("expected attributes, got {other:?}"),
        }
    }

    #[test]
    fn a_small_object_is_put_whole_in_one_command_or_not_at_all() {
        let mut state = State::new(Policy::Replicas(1), 0);
        let mkdir = |state: &mut State, name: &str| {
            attr_of(client(
                state,
                MetaOp::Mkdir {
                    parent: InodeId::ROOT,
                    name: name.into(),
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
            ))
            .ino
        };
        let staging = mkdir(&mut state, "staging");
        let bucket = mkdir(&mut state, "bucket");
        let put_in = |parent: InodeId, name: &str, data: &[u8], replace: bool| MetaOp::PutInline {
            staging,
            temp: format!("tmp-{name}-{}", data.len()).into_bytes(),
            parent,
            name: name.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 42,
            data: data.to_vec(),
            xattrs: vec![(b"user.etag".to_vec(), b"abc".to_vec())],
            replace,
        };
        let put = |name: &str, data: &[u8], replace: bool| put_in(bucket, name, data, replace);
        let attr = attr_of(client(&mut state, put("k", b"hello", true)));
        assert_eq!((attr.size, attr.mtime_ns), (5, 42));
        assert_eq!(state.ns.inline_bytes(attr.ino), b"hello");
        let found = state
            .ns
            .read(&MetaOp::Lookup {
                parent: bucket,
                name: b"k".to_vec(),
            })
            .unwrap();
        assert!(matches!(found, MetaReply::Entry(a) if a.ino == attr.ino));
        let etag = state
            .ns
            .read(&MetaOp::GetXattr {
                ino: attr.ino,
                name: b"user.etag".to_vec(),
            })
            .unwrap();
        assert!(
            matches!(&etag, MetaReply::Xattr(v) if v == b"abc"),
            "{etag:?}"
        );
        // Replacing takes the old file's place; refusing to leaves both.
        let second = attr_of(client(&mut state, put("k", b"bye", true)));
        assert_ne!(second.ino, attr.ino);
        assert_eq!(state.ns.inline_bytes(second.ino), b"bye");
        assert!(state.ns.attr(attr.ino).is_err(), "the replaced file stays");
        let refused = client(&mut state, put("k", b"third", false)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::AlreadyExists);
        // A failure at the last step (a directory in the way) rolls back
        // the file made before it: nothing is left in the staging folder.
        mkdir(&mut state, "other");
        let dir_in_way = put_in(InodeId::ROOT, "other", b"data", true);
        assert_eq!(
            client(&mut state, dir_in_way).unwrap_err().code,
            ErrorCode::IsDir
        );
        let listed = state
            .ns
            .read(&MetaOp::Readdir {
                ino: staging,
                after: None,
                limit: 100,
            })
            .unwrap();
        assert!(
            matches!(&listed, MetaReply::Dir { entries, .. } if entries.is_empty()),
            "{listed:?}"
        );
        // Too many bytes for one entry are refused up front.
        let big = vec![7u8; INLINE_MAX_BYTES as usize + 1];
        assert!(client(&mut state, put("big", &big, true)).is_err());
    }

    #[test]
    fn access_keys_are_created_listed_without_secrets_kept_and_deleted() {
        let mut state = State::new(Policy::Replicas(1), 0);
        let id = "TKAAAAAAAAAAAAAAAAAA".to_string();
        let secret = "s3cr3t/with+symbols=0123456789".to_string();
        let create = |id: &str, secret: &str| MetaOp::CreateAccessKey {
            id: id.into(),
            secret: secret.into(),
            description: "ci".into(),
        };
        client(&mut state, create(&id, &secret)).unwrap();
        let again = client(&mut state, create(&id, "another-secret-of-enough-length"));
        assert_eq!(again.unwrap_err().code, ErrorCode::AlreadyExists);
        for (bad_id, bad_secret) in [
            ("short", secret.as_str()),
            ("lowercase-not-allowed-here", secret.as_str()),
            (id.as_str(), "too short"),
            ("TKBBBBBBBBBBBBBBBBBB", "has a space in the middle ok"),
        ] {
            let result = client(&mut state, create(bad_id, bad_secret));
            assert_eq!(
                result.unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{bad_id}"
            );
        }
        let MetaReply::AccessKeys(list) = state.read_keys(&MetaOp::ListAccessKeys).unwrap() else {
            panic!("list");
        };
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].id.as_str(), list[0].created_ns), (id.as_str(), 1));
        // Persisted and rebuilt with the secret.
        state.take_changes();
        let rebuilt = State::from_records(state.records()).unwrap();
        let got = rebuilt
            .read_keys(&MetaOp::GetAccessKey { id: id.clone() })
            .unwrap();
        assert!(matches!(got, MetaReply::AccessKey { secret: s, .. } if s == secret));
        client(&mut state, MetaOp::DeleteAccessKey { id: id.clone() }).unwrap();
        let gone = state.read_keys(&MetaOp::GetAccessKey { id: id.clone() });
        assert_eq!(gone.unwrap_err().code, ErrorCode::NotFound);
        let changes = state.take_changes();
        assert!(
            changes.contains(&(access_key_key(&id), None)),
            "deletion persisted"
        );
    }

    #[test]
    fn keys_from_before_grants_keep_every_bucket_and_new_keys_are_scoped() {
        #[derive(Serialize)]
        struct Old<'a> {
            secret: &'a str,
            description: &'a str,
            created_ns: i64,
        }
        let old = encode(&Old {
            secret: "an-old-secret-of-enough-length",
            description: "from before",
            created_ns: 7,
        });
        let decoded = KeyRecord::decode(&old).unwrap();
        assert!(decoded.all_buckets);
        assert_eq!(
            (decoded.created_ns, decoded.description.as_str()),
            (7, "from before")
        );
        let mut records = State::new(Policy::Replicas(1), 0).records();
        records.push((access_key_key("TKOLDOLDOLDOLDOLDOLD"), old));
        let mut state = State::from_records(records).unwrap();
        client(
            &mut state,
            MetaOp::CreateScopedAccessKey {
                id: "TKNEWNEWNEWNEWNEWNEW".into(),
                secret: "a-new-secret-of-enough-length".into(),
                description: "tenant".into(),
                all_buckets: false,
            },
        )
        .unwrap();
        let scope = |state: &State, id: &str| match state
            .read_keys(&MetaOp::GetScopedAccessKey { id: id.into() })
            .unwrap()
        {
            MetaReply::ScopedAccessKey { all_buckets, .. } => all_buckets,
            other => panic!("{other:?}"),
        };
        assert!(scope(&state, "TKOLDOLDOLDOLDOLDOLD"));
        assert!(!scope(&state, "TKNEWNEWNEWNEWNEWNEW"));
        client(
            &mut state,
            MetaOp::SetAccessKeyScope {
                id: "TKOLDOLDOLDOLDOLDOLD".into(),
                all_buckets: false,
            },
        )
        .unwrap();
        state.take_changes();
        let rebuilt = State::from_records(state.records()).unwrap();
        assert!(!scope(&rebuilt, "TKOLDOLDOLDOLDOLDOLD"));
        let MetaReply::ScopedAccessKeys(list) =
            rebuilt.read_keys(&MetaOp::ListScopedAccessKeys).unwrap()
        else {
            panic!("list");
        };
        assert_eq!(list.len(), 2);
        let unknown = client(
            &mut state,
            MetaOp::SetAccessKeyScope {
                id: "TKNONENONENONENONENO".into(),
                all_buckets: true,
            },
        );
        assert_eq!(unknown.unwrap_err().code, ErrorCode::NotFound);
    }

    #[test]
    fn unreferenced_chunks_are_collected_and_replies_replayed() {
        let mut state = State::new(Policy::Replicas(2), 0);
        let mut nodes = Vec::new();
        for name in ["a", "b"] {
            let Ok(Applied::Node(node)) = state.apply(&Command::Register {
                name: name.into(),
                address: format!("{name}:1"),
                labels: Labels::default(),
                now_ns: 0,
            }) else {
                panic!()
            };
            nodes.push(node);
        }
        let create = MetaOp::Create {
            parent: InodeId::ROOT,
            name: b"f".to_vec(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        };
        let id = RequestId::fresh();
        let first = state
            .apply(&Command::Client {
                request_id: id,
                op: create.clone(),
                now_ns: 1,
            })
            .unwrap();
        let again = state
            .apply(&Command::Client {
                request_id: id,
                op: create,
                now_ns: 2,
            })
            .unwrap();
        assert_eq!(
            first, again,
            "a replayed request id must return the first reply"
        );
        let Applied::Meta(MetaReply::Entry(attr)) = first else {
            panic!()
        };
        let Ok(Applied::Meta(MetaReply::Chunk(placement))) = state.apply(&Command::Allocate {
            request_id: RequestId::fresh(),
            ino: attr.ino,
            policy: Policy::Replicas(2),
            nodes: nodes.clone(),
            now_ns: 1,
        }) else {
            panic!()
        };
        let extent = Extent {
            offset: 0,
            length: 10,
            chunk: placement.chunk,
            chunk_offset: 0,
        };
        client(
            &mut state,
            MetaOp::CommitExtents {
                ino: attr.ino,
                extents: vec![extent],
                chunk_lengths: vec![(placement.chunk, 10)],
                piece_checksums: vec![(placement.chunk, 0, [7; 32])],
                min_size: 10,
            },
        )
        .unwrap();
        assert!(state.deletions_for(nodes[0], 10).is_empty());
        client(
            &mut state,
            MetaOp::Unlink {
                parent: InodeId::ROOT,
                name: b"f".to_vec(),
            },
        )
        .unwrap();
        assert_eq!(
            state.deletions_for(nodes[0], 10),
            vec![(placement.chunk, 0)]
        );
        assert_eq!(
            state.deletions_for(nodes[1], 10),
            vec![(placement.chunk, 1)]
        );
        state
            .apply(&Command::PiecesGone {
                chunk: placement.chunk,
                nodes: nodes.clone(),
            })
            .unwrap();
        assert!(state.chunk(placement.chunk).is_none());
        assert!(state.deletions_for(nodes[0], 10).is_empty());

        // Everything survives a rebuild from records.
        let rebuilt = State::from_records(state.records()).unwrap();
        assert_eq!(rebuilt.nodes, state.nodes);
        assert_eq!(rebuilt.records(), state.records());
    }

    #[test]
    fn request_replies_expire_the_same_on_a_replica_that_restarted() {
        let create = |i: u32| MetaOp::Create {
            parent: InodeId::ROOT,
            name: format!("f{i}").into_bytes(),
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            rdev: 0,
            exclusive: true,
        };
        let second = 1_000_000_000i64;
        let commands: Vec<Command> = (0..1000u32)
            .map(|i| Command::Client {
                request_id: RequestId(u128::from(i) + 1),
                op: create(i),
                // Bursts a TTL apart, so sweeps start at different points.
                now_ns: second
                    + i64::from(i / 300) * (REQUEST_TTL_NS + 3 * second)
                    + i64::from(i) * 1_000,
            })
            .collect();
        let mut running = State::new(Policy::Replicas(1), 0);
        let mut restarted = None::<State>;
        for (i, command) in commands.iter().enumerate() {
            running.apply(command).unwrap();
            running.take_changes();
            if let Some(state) = restarted.as_mut() {
                state.apply(command).unwrap();
                state.take_changes();
            }
            if i == 450 {
                restarted = Some(State::from_records(running.records()).unwrap());
            }
        }
        let restarted = restarted.unwrap();
        assert_eq!(running.records(), restarted.records());
        // Only the last burst and the tail of the one before are kept.
        let kept = running
            .records()
            .iter()
            .filter(|(k, _)| k.first() == Some(&b'r'))
            .count();
        assert!((100..700).contains(&kept), "{kept} replies kept");
        // A replayed id of the last burst still gets its first reply.
        let again = running.apply(&commands[999]).unwrap();
        assert!(matches!(again, Applied::Meta(MetaReply::Entry(_))));
    }
}
