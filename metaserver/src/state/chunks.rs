//! The chunk map on disk. Each chunk is one record (`c` + id), read through
//! the record cache like the namespace, and three indexes written in the
//! same batch answer the questions that would otherwise walk every chunk:
//!
//! - `P` + node + chunk → the piece indexes the node holds: a node's pieces
//!   (reconciling its inventory, a removal's loss, rebalancing moves);
//! - `A` + allocation time + chunk: allocations due for expiry;
//! - `G` + node + chunk: pieces a node still has to delete.
//!
//! The healing pass still looks at every chunk, but in pages read in key
//! order, so memory holds a page and not the map.

use super::{ALLOCATION_TTL_NS, ChunkRecord, ChunkState, State, decode_chunk, encode};
use crate::kv::{Store, prefix_end};
use std::collections::BTreeSet;
use tessera_proto::error::ErrorCode;
use tessera_proto::ids::{ChunkId, NodeId};

const PREFIX_CHUNK: &[u8] = b"c";
const PREFIX_PLACED: &[u8] = b"P";
const PREFIX_ALLOCATED: &[u8] = b"A";
const PREFIX_DELETING: &[u8] = b"G";
/// Present once the indexes exist: stores written before them get them
/// built on their first start.
const KEY_CHUNK_INDEXES: &[u8] = b"xchunk-indexes";

fn chunk_key(chunk: ChunkId) -> Vec<u8> {
    [PREFIX_CHUNK, &chunk.0.to_be_bytes()].concat()
}

fn node_chunk_key(prefix: &[u8], node: NodeId, chunk: ChunkId) -> Vec<u8> {
    [prefix, &node.0.to_be_bytes(), &chunk.0.to_be_bytes()].concat()
}

fn allocated_key(at_ns: i64, chunk: ChunkId) -> Vec<u8> {
    let at = u64::try_from(at_ns).unwrap_or(0);
    [PREFIX_ALLOCATED, &at.to_be_bytes(), &chunk.0.to_be_bytes()].concat()
}

/// The id in the last eight bytes of an index key.
fn trailing_chunk(key: &[u8]) -> Option<ChunkId> {
    let start = key.len().checked_sub(8)?;
    Some(ChunkId(u64::from_be_bytes(
        key.get(start..)?.try_into().ok()?,
    )))
}

/// The index records a chunk record implies.
fn index_records(chunk: ChunkId, record: &ChunkRecord) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let holders: BTreeSet<NodeId> = record.nodes.iter().copied().collect();
    for node in holders {
        let indexes: Vec<u8> = record
            .nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| **n == node)
            .map(|(i, _)| i as u8)
            .collect();
        out.push((node_chunk_key(PREFIX_PLACED, node, chunk), indexes));
    }
    match &record.state {
        ChunkState::Allocated { at_ns, .. } => out.push((allocated_key(*at_ns, chunk), Vec::new())),
        ChunkState::Committed { .. } => {}
        ChunkState::Deleting { remaining } => {
            for node in remaining.iter().collect::<BTreeSet<_>>() {
                out.push((node_chunk_key(PREFIX_DELETING, *node, chunk), Vec::new()));
            }
        }
    }
    out
}

impl State {
    /// A chunk's record, kept in the record cache.
    pub fn chunk(&self, chunk: ChunkId) -> Option<ChunkRecord> {
        let value = self.ns.kv().get(&chunk_key(chunk))?;
        self.decoded(chunk, &value)
    }

    /// Like [`State::chunk`] without caching what was read: for walks over
    /// many chunks, which would push the hot records out.
    pub fn chunk_once(&self, chunk: ChunkId) -> Option<ChunkRecord> {
        let value = self.ns.kv().get_once(&chunk_key(chunk))?;
        self.decoded(chunk, &value)
    }

    fn decoded(&self, chunk: ChunkId, value: &[u8]) -> Option<ChunkRecord> {
        match decode_chunk(value) {
            Ok(record) => Some(record),
            Err(err) => {
                self.ns
                    .kv()
                    .report_failure(format!("chunk record {chunk} does not decode: {err}"));
                None
            }
        }
    }

    /// Up to `limit` chunks from `from` on, in id order.
    pub fn chunks_from(&self, from: ChunkId, limit: usize) -> Vec<(ChunkId, ChunkRecord)> {
        self.ns
            .kv()
            .scan(&chunk_key(from), &prefix_end(PREFIX_CHUNK), limit)
            .into_iter()
            .filter_map(|(key, value)| {
                let chunk = trailing_chunk(&key)?;
                Some((chunk, self.decoded(chunk, &value)?))
            })
            .collect()
    }

    /// Up to `limit` chunks with pieces on `node`, from `from` on, each with
    /// the piece indexes the node holds.
    pub fn chunks_on(&self, node: NodeId, from: ChunkId, limit: usize) -> Vec<(ChunkId, Vec<u8>)> {
        let start = node_chunk_key(PREFIX_PLACED, node, from);
        let end = prefix_end(&[PREFIX_PLACED, &node.0.to_be_bytes()].concat());
        self.ns
            .kv()
            .scan(&start, &end, limit)
            .into_iter()
            .filter_map(|(key, indexes)| Some((trailing_chunk(&key)?, indexes)))
            .collect()
    }

    /// Replaces a chunk's record (`None` forgets the chunk) with its
    /// indexes, in the batch being applied.
    pub(crate) fn set_chunk(&mut self, chunk: ChunkId, record: Option<&ChunkRecord>) {
        let old = self
            .chunk(chunk)
            .map(|r| index_records(chunk, &r))
            .unwrap_or_default();
        let new = record.map(|r| index_records(chunk, r)).unwrap_or_default();
        let kv = self.ns.kv_mut();
        for (key, _) in &old {
            if !new.iter().any(|(k, _)| k == key) {
                kv.delete(key.clone());
            }
        }
        for (key, value) in new {
            if !old.contains(&(key.clone(), value.clone())) {
                kv.put(key, value);
            }
        }
        match record {
            Some(record) => kv.put(chunk_key(chunk), encode(record)),
            None => kv.delete(chunk_key(chunk)),
        }
    }

    /// Up to `limit` uncommitted allocations that can go, oldest first:
    /// those made more than the TTL before `now_ns`, and at once those
    /// whose file no longer exists (a writer killed with its temporary
    /// file, a file unlinked mid-write), since no commit can land on them.
    /// Only the `limit` oldest allocations are looked at, so one command's
    /// work stays bounded; the rest wait for the next.
    pub(super) fn due_allocations(&self, now_ns: i64, limit: usize) -> Vec<ChunkId> {
        let expired_before = allocated_key(now_ns.saturating_sub(ALLOCATION_TTL_NS), ChunkId(0));
        self.ns
            .kv()
            .scan(PREFIX_ALLOCATED, &prefix_end(PREFIX_ALLOCATED), limit)
            .iter()
            .filter_map(|(key, _)| {
                let chunk = trailing_chunk(key)?;
                let due = *key < expired_before
                    || match self.chunk(chunk).map(|r| r.state) {
                        Some(ChunkState::Allocated { ino, .. }) => matches!(
                            self.ns.attr(ino),
                            Err(err) if err.code == ErrorCode::NotFound
                        ),
                        _ => false,
                    };
                due.then_some(chunk)
            })
            .collect()
    }

    /// Pieces the given node should delete.
    pub fn deletions_for(&self, node: NodeId, limit: usize) -> Vec<(ChunkId, u8)> {
        let from = node_chunk_key(PREFIX_DELETING, node, ChunkId(0));
        let end = prefix_end(&[PREFIX_DELETING, &node.0.to_be_bytes()].concat());
        let mut out = Vec::new();
        for (key, _) in self.ns.kv().scan(&from, &end, limit) {
            let Some(chunk) = trailing_chunk(&key) else {
                continue;
            };
            let Some(record) = self.chunk_once(chunk) else {
                continue;
            };
            for (index, holder) in record.nodes.iter().enumerate() {
                if *holder == node {
                    out.push((chunk, index as u8));
                }
            }
            if out.len() >= limit {
                break;
            }
        }
        out
    }
}

impl State {
    /// Recomputes the chunk indexes from the chunk records and compares
    /// them with the stored ones: part of the whole-store check.
    pub fn check_chunk_indexes(&self) -> Result<(), String> {
        let kv = self.ns.kv();
        let mut derived = Vec::new();
        for (key, value) in kv.scan(PREFIX_CHUNK, &prefix_end(PREFIX_CHUNK), usize::MAX) {
            let chunk = trailing_chunk(&key).ok_or("a chunk key is malformed")?;
            let record =
                decode_chunk(&value).map_err(|e| format!("{chunk} does not decode: {e}"))?;
            derived.extend(index_records(chunk, &record));
        }
        derived.sort();
        let mut stored = Vec::new();
        for prefix in [PREFIX_ALLOCATED, PREFIX_DELETING, PREFIX_PLACED] {
            stored.extend(kv.scan(prefix, &prefix_end(prefix), usize::MAX));
        }
        if stored != derived {
            let extra = stored.iter().find(|r| !derived.contains(r));
            let missing = derived.iter().find(|r| !stored.contains(r));
            return Err(format!(
                "the chunk indexes differ from the chunk records: {} stored, {} derived; first extra {:?}, first missing {:?}",
                stored.len(),
                derived.len(),
                extra.map(|(k, _)| k.escape_ascii().to_string()),
                missing.map(|(k, _)| k.escape_ascii().to_string()),
            ));
        }
        Ok(())
    }
}

/// Marks a new state's store as indexed from the start.
pub(super) fn mark_indexed(state: &mut State) {
    state
        .ns
        .kv_mut()
        .put(KEY_CHUNK_INDEXES.to_vec(), Vec::new());
}

/// Builds the chunk indexes of a store written before they existed (its
/// chunk map was held in memory then, so it fits), in one batch with the
/// marker; a store that has them is left alone.
pub fn build_chunk_indexes(store: &dyn Store) -> Result<(), String> {
    if store.get(KEY_CHUNK_INDEXES)?.is_some() {
        return Ok(());
    }
    let mut changes = Vec::new();
    for (key, value) in store.scan(PREFIX_CHUNK, &prefix_end(PREFIX_CHUNK), usize::MAX)? {
        let chunk = trailing_chunk(&key)
            .filter(|_| key.len() == 9)
            .ok_or_else(|| {
                format!(
                    "chunk key {:?} is malformed",
                    key.escape_ascii().to_string()
                )
            })?;
        let record = decode_chunk(&value).map_err(|e| format!("decode chunk record: {e}"))?;
        for (index_key, index_value) in index_records(chunk, &record) {
            changes.push((index_key, Some(index_value)));
        }
    }
    changes.push((KEY_CHUNK_INDEXES.to_vec(), Some(Vec::new())));
    store.write(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemStore;
    use crate::types::{Applied, Command};
    use tessera_proto::chunk::Labels;
    use tessera_proto::ids::{InodeId, RequestId};
    use tessera_proto::meta::{Extent, FileKind, MetaOp, MetaReply, Policy};

    fn apply(state: &mut State, command: Command) -> Applied {
        let applied = state.apply(&command).expect("applied");
        state.check_chunk_indexes().expect("indexes match the map");
        applied
    }

    fn client(op: MetaOp, now_ns: i64) -> Command {
        Command::Client {
            request_id: RequestId::fresh(),
            op,
            now_ns,
        }
    }

    #[test]
    fn indexes_follow_each_chunk_from_allocation_to_collection() {
        let mut state = State::new(Policy::Replicas(2), 0);
        let nodes: Vec<NodeId> = ["a", "b", "c"]
            .iter()
            .map(|name| {
                let Applied::Node(node) = apply(
                    &mut state,
                    Command::Register {
                        name: (*name).into(),
                        address: format!("{name}:1"),
                        labels: Labels::default(),
                        now_ns: 0,
                    },
                ) else {
                    panic!("registered without a node id")
                };
                node
            })
            .collect();
        let Applied::Meta(MetaReply::Entry(file)) = apply(
            &mut state,
            client(
                MetaOp::Create {
                    parent: InodeId::ROOT,
                    name: b"f".to_vec(),
                    kind: FileKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    exclusive: true,
                },
                1,
            ),
        ) else {
            panic!("create")
        };
        let allocate = |state: &mut State, placed: [NodeId; 2], now_ns: i64| {
            let Applied::Meta(MetaReply::Chunk(placement)) = apply(
                state,
                Command::Allocate {
                    request_id: RequestId::fresh(),
                    ino: file.ino,
                    policy: Policy::Replicas(2),
                    nodes: placed.to_vec(),
                    now_ns,
                },
            ) else {
                panic!("allocate")
            };
            placement.chunk
        };
        let old = allocate(&mut state, [nodes[0], nodes[1]], 10);
        let kept = allocate(&mut state, [nodes[1], nodes[2]], 20);
        let young = allocate(&mut state, [nodes[2], nodes[0]], ALLOCATION_TTL_NS);
        assert_eq!(
            state.chunks_on(nodes[1], ChunkId::default(), 10),
            vec![(old, vec![1]), (kept, vec![0])]
        );
        assert_eq!(state.due_allocations(ALLOCATION_TTL_NS + 15, 10), vec![old]);

        apply(
            &mut state,
            client(
                MetaOp::CommitExtents {
                    ino: file.ino,
                    extents: vec![Extent {
                        offset: 0,
                        length: 5,
                        chunk: kept,
                        chunk_offset: 0,
                    }],
                    chunk_lengths: vec![(kept, 5)],
                    piece_checksums: Vec::new(),
                    min_size: 5,
                },
                30,
            ),
        );
        // Committed chunks leave the allocation index; the expired one
        // becomes a deletion for both its holders.
        apply(
            &mut state,
            Command::ExpireAllocations {
                now_ns: ALLOCATION_TTL_NS + 25,
            },
        );
        assert!(state.due_allocations(i64::MAX, 10) == vec![young]);
        assert_eq!(state.deletions_for(nodes[0], 10), vec![(old, 0)]);
        assert_eq!(state.deletions_for(nodes[1], 10), vec![(old, 1)]);
        apply(
            &mut state,
            Command::PiecesGone {
                chunk: old,
                nodes: vec![nodes[0]],
            },
        );
        assert!(state.deletions_for(nodes[0], 10).is_empty());
        apply(
            &mut state,
            Command::PiecesGone {
                chunk: old,
                nodes: vec![nodes[1]],
            },
        );
        assert!(state.chunk(old).is_none());
        assert_eq!(
            state.chunks_on(nodes[1], ChunkId::default(), 10),
            vec![(kept, vec![0])]
        );
        // An allocation for a file that is gone is due at once.
        let Applied::Meta(MetaReply::Entry(gone)) = apply(
            &mut state,
            client(
                MetaOp::Create {
                    parent: InodeId::ROOT,
                    name: b"g".to_vec(),
                    kind: FileKind::File,
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    exclusive: true,
                },
                40,
            ),
        ) else {
            panic!("create")
        };
        let Applied::Meta(MetaReply::Chunk(orphan)) = apply(
            &mut state,
            Command::Allocate {
                request_id: RequestId::fresh(),
                ino: gone.ino,
                policy: Policy::Replicas(2),
                nodes: vec![nodes[0], nodes[1]],
                now_ns: ALLOCATION_TTL_NS + 50,
            },
        ) else {
            panic!("allocate")
        };
        assert_eq!(state.due_allocations(ALLOCATION_TTL_NS + 60, 10), vec![]);
        apply(
            &mut state,
            client(
                MetaOp::Unlink {
                    parent: InodeId::ROOT,
                    name: b"g".to_vec(),
                },
                60,
            ),
        );
        assert_eq!(
            state.due_allocations(ALLOCATION_TTL_NS + 70, 10),
            vec![orphan.chunk]
        );
        state.take_changes();

        // A store written before the indexes gets the same ones built.
        let with: Vec<(Vec<u8>, Vec<u8>)> = state.records();
        let without: Vec<(Vec<u8>, Vec<u8>)> = with
            .iter()
            .filter(|(key, _)| {
                !matches!(key.first(), Some(b'P' | b'A' | b'G')) && key != KEY_CHUNK_INDEXES
            })
            .cloned()
            .collect();
        assert!(without.len() < with.len());
        let store = MemStore::from_records(without);
        build_chunk_indexes(store.as_ref()).expect("build");
        let rebuilt = State::open(store, 1 << 20, Policy::Replicas(2), 0).expect("open");
        assert_eq!(rebuilt.records(), with);
    }
}
