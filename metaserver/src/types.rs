//! The Raft type configuration and the commands that travel in the log.

use crate::state::{NodeAdminState, RepairJob, SessionEnd};
use serde::{Deserialize, Serialize};
use tessera_proto::chunk::Labels;
use tessera_proto::error::Error;
use tessera_proto::ids::{ChunkId, InodeId, NodeId, RequestId};
use tessera_proto::meta::{MetaOp, MetaReply, Policy};
use tessera_proto::session::{SessionId, SessionInfo};

/// One state-machine command. Commands carry everything they need,
/// including the leader's clock (`now_ns`), so every replica applies them to
/// the same result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A mutating client call; its reply is remembered under `request_id`.
    Client {
        request_id: RequestId,
        op: MetaOp,
        now_ns: i64,
    },
    /// A chunk allocated for `ino` on the nodes the leader chose.
    Allocate {
        request_id: RequestId,
        ino: InodeId,
        policy: Policy,
        nodes: Vec<NodeId>,
        now_ns: i64,
    },
    /// A chunkserver registers (again); known names keep their node id.
    Register {
        name: String,
        address: String,
        labels: Labels,
        now_ns: i64,
    },
    /// Pieces a chunkserver was told to delete (or confirmed missing).
    PiecesGone { chunk: ChunkId, nodes: Vec<NodeId> },
    /// Allocations older than the timeout that were never committed.
    ExpireAllocations { now_ns: i64 },
    /// The leader decided to rebuild or move pieces of a chunk.
    StartJob { job: RepairJob },
    /// A job ended; `sealed` lists the pieces (index, node) its chunkserver
    /// reported sealed, which replace the old ones in the chunk map.
    FinishJob { job: u64, sealed: Vec<(u8, NodeId)> },
    /// An operator drained, undrained or removed a chunkserver.
    SetNodeAdmin {
        node: NodeId,
        state: Option<NodeAdminState>,
    },
    // Appended, never inserted: entries already in logs keep their tags.
    /// A client opens a session.
    OpenSession { info: SessionInfo, now_ns: i64 },
    /// A mutating client call made under a session; refused if the session
    /// ended.
    SessionClient {
        request_id: RequestId,
        session: SessionId,
        op: MetaOp,
        now_ns: i64,
    },
    /// A session ends (expired by the leader, evicted, closed) and what it
    /// held is released.
    EndSession { session: SessionId, why: SessionEnd },
    /// The same, with the leader's clock: the session's temporary files
    /// are unlinked then.
    EndSessionAt {
        session: SessionId,
        why: SessionEnd,
        now_ns: i64,
    },
}

/// What a Raft entry carries: a batch of commands applied in order, so many
/// client operations cost one log append and one RocksDB write batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {}", self.0.len())
    }
}

/// The result of one applied command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Meta(MetaReply),
    Node(NodeId),
    Job(u64),
    Done,
    Session(SessionId),
}

/// Replies to a batch, one per command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReply(pub Vec<Result<Applied, Error>>);

openraft::declare_raft_types!(
    /// Tessera's metaserver Raft types.
    pub TypeConfig:
        D = Batch,
        R = BatchReply,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<u64>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<u64>;
pub type StoredMembership = openraft::StoredMembership<u64, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<u64>;

/// Storage errors are fatal to the node (openraft stops it): a metaserver
/// whose disk fails must not keep voting on a state it cannot persist.
pub fn storage_error(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    err: impl std::fmt::Display,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(err.to_string())).into()
}
