//! Messages of the chunkserver's data service (methods 100-199) and of the
//! chunkserver-to-metaserver contract: registration, heartbeats, inventory
//! reports and the commands a heartbeat reply carries (methods 200-219).

use crate::ids::{ChunkId, NodeId, PieceId};
use crate::token::Token;
use crate::wire::Method;
use serde::{Deserialize, Serialize};

/// Writes a new piece; the request bulk is its bytes. Refused if the piece is
/// already sealed. Needs a token with `WRITE` on the chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WritePiece {
    pub piece: PieceId,
    pub length: u64,
    /// [`crate::checksum`] piece checksum the bytes must have.
    pub checksum: [u8; 32],
    pub token: Token,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WritePieceReply {
    pub length: u64,
}

impl Method for WritePiece {
    const ID: u16 = 100;
    const NAME: &'static str = "write_piece";
    const IDEMPOTENT: bool = false;
    type Response = WritePieceReply;
}

/// Writes a new piece whose length and checksum the writer learns only at
/// the end: the request bulk is framed ([`crate::wire::BULK_FRAMED`]) and its
/// trailer is a postcard-encoded [`PieceTrailer`]. `max_length` is reserved
/// up front. Needs a token with `WRITE` on the chunk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WritePieceStream {
    pub piece: PieceId,
    pub max_length: u64,
    pub token: Token,
}

/// The end of a streamed piece.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceTrailer {
    pub length: u64,
    pub checksum: [u8; 32],
}

impl Method for WritePieceStream {
    const ID: u16 = 105;
    const NAME: &'static str = "write_piece_stream";
    const IDEMPOTENT: bool = false;
    type Response = WritePieceReply;
}

/// Reads `length` bytes at `offset` of a sealed piece; the response bulk is
/// the bytes, every block verified before it is sent. Needs `READ`.
///
/// When the range is block-aligned (`offset` on a block boundary, the end
/// on one or at the piece's end) the reply also carries the covered blocks'
/// hashes, so the reader checks the bytes end to end rather than trusting
/// the server's memory. At most [`READ_VERIFIED_MAX_BYTES`] per aligned call
/// keep those hashes within the header cap.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadPiece {
    pub piece: PieceId,
    pub offset: u64,
    pub length: u64,
    pub token: Token,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadPieceReply {
    /// The whole piece's length, so readers can tell where it ends.
    pub piece_length: u64,
    /// Hashes of the blocks the range covers, for block-aligned ranges of at
    /// most [`READ_VERIFIED_MAX_BYTES`]; empty otherwise.
    pub block_hashes: Vec<[u8; 32]>,
}

/// Largest aligned read whose block hashes come with the reply (512 hashes,
/// 16 KiB of header).
pub const READ_VERIFIED_MAX_BYTES: u64 = 512 * crate::checksum::BLOCK_BYTES as u64;

impl Method for ReadPiece {
    const ID: u16 = 101;
    const NAME: &'static str = "read_piece";
    const IDEMPOTENT: bool = true;
    type Response = ReadPieceReply;
}

/// Checks `[offset, offset + length)` of a sealed piece against its stored
/// block hashes, quarantining the piece on a mismatch. Aligned reads are
/// checked by the reader alone (the server sends the hashes, not its own
/// verdict), so a reader that finds bad bytes sends this to have the server
/// see them too, and repair replace the piece without waiting for the
/// scrubber. Needs `READ`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifyPiece {
    pub piece: PieceId,
    pub offset: u64,
    pub length: u64,
    pub token: Token,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyPieceReply {
    /// Every block of the range matched; `false` means the piece is now
    /// quarantined.
    pub intact: bool,
}

impl Method for VerifyPiece {
    const ID: u16 = 107;
    const NAME: &'static str = "verify_piece";
    const IDEMPOTENT: bool = true;
    type Response = VerifyPieceReply;
}

/// Reads a small range of a sealed piece with what proves it end to end
/// without the rest of its blocks: the hash of each block it touches and,
/// for a block it covers in part, the chaining values of BLAKE3's tree
/// around the range ([`crate::checksum::range_proof`]). A 4 KiB random read
/// then moves 4 KiB instead of its whole 64 KiB block, and the reader still
/// checks every byte it returns. `offset` lies on a
/// [`crate::checksum::RANGE_UNIT_BYTES`] boundary, the end on one or at the
/// piece's end, and the range spans at most [`READ_RANGE_MAX_BYTES`]. The
/// response bulk is the range's bytes. Needs `READ`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadRange {
    pub piece: PieceId,
    pub offset: u64,
    pub length: u64,
    pub token: Token,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReadRangeReply {
    /// The whole piece's length.
    pub piece_length: u64,
    /// Hash of each block the range touches, in order.
    pub block_hashes: Vec<[u8; 32]>,
    /// One per touched block: the proof of the part the range covers, empty
    /// for a block it covers whole.
    pub proofs: Vec<Vec<[u8; 32]>>,
}

/// Largest [`ReadRange`]: sixteen blocks, so the server reads it in one
/// step.
pub const READ_RANGE_MAX_BYTES: u64 = 16 * crate::checksum::BLOCK_BYTES as u64;

impl Method for ReadRange {
    const ID: u16 = 108;
    const NAME: &'static str = "read_range";
    const IDEMPOTENT: bool = true;
    type Response = ReadRangeReply;
}

/// Deletes pieces. Only a metaserver may call it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DeletePieces {
    pub pieces: Vec<PieceId>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeletePiecesReply {
    pub deleted: u32,
    pub missing: u32,
}

impl Method for DeletePieces {
    const ID: u16 = 102;
    const NAME: &'static str = "delete_pieces";
    const IDEMPOTENT: bool = true;
    type Response = DeletePiecesReply;
}

/// Makes sealed pieces durable on this server: returns once every one of
/// `pieces` stored here is fsynced with its folder. Pieces are fsynced in
/// the background within the server's sync interval anyway; this is what
/// `fsync`, `O_SYNC` and a completed S3 upload wait for. Pieces not stored
/// here, or already durable, cost nothing. Needs no token: it reveals and
/// changes nothing but timing. At most [`SYNC_PIECES_MAX`] per call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SyncPieces {
    pub pieces: Vec<PieceId>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyncPiecesReply {
    /// How many of them this call fsynced (the rest were durable already).
    pub synced: u32,
}

/// Most pieces one sync call names (at most 11 bytes each, far under the
/// header cap).
pub const SYNC_PIECES_MAX: usize = 4096;

impl Method for SyncPieces {
    const ID: u16 = 106;
    const NAME: &'static str = "sync_pieces";
    const IDEMPOTENT: bool = true;
    type Response = SyncPiecesReply;
}

/// A sealed piece as the inventory lists it.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceInfo {
    pub piece: PieceId,
    pub length: u64,
    pub checksum: [u8; 32],
}

/// Largest inventory page: about 50 bytes an entry keeps a page far below the
/// header cap.
pub const INVENTORY_PAGE_MAX: u32 = 512;

/// Lists sealed pieces in id order, after `after`. Metaserver only.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListPieces {
    pub after: Option<PieceId>,
    pub limit: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ListPiecesReply {
    pub pieces: Vec<PieceInfo>,
    /// Whether pieces remain after this page.
    pub more: bool,
}

impl Method for ListPieces {
    const ID: u16 = 103;
    const NAME: &'static str = "list_pieces";
    const IDEMPOTENT: bool = true;
    type Response = ListPiecesReply;
}

/// Fetches a piece from another chunkserver and stores it here (repair,
/// drain, rebalance). Metaserver only; `source_token` grants `READ` on the
/// source. Replicas of a chunk hold the same bytes under different piece
/// indexes, so the source piece may differ from the one stored here.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct CopyPiece {
    /// The metaserver's job id, echoed in [`JobResult`]; 0 for a direct call.
    pub job: u64,
    pub piece: PieceId,
    pub source_piece: PieceId,
    pub source: String,
    pub source_token: Token,
    pub length: u64,
    /// The checksum the chunk map recorded for `piece`; `None` for chunks
    /// committed before checksums were recorded (the source's block hashes
    /// still guard every byte).
    pub checksum: Option<[u8; 32]>,
}

impl Method for CopyPiece {
    const ID: u16 = 104;
    const NAME: &'static str = "copy_piece";
    const IDEMPOTENT: bool = true;
    type Response = WritePieceReply;
}

/// A surviving piece a rebuilder may read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceSource {
    pub index: u8,
    pub address: String,
}

/// A piece a rebuilder decodes and where it goes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PieceTarget {
    pub index: u8,
    pub address: String,
    /// Stored on the rebuilder itself rather than sent.
    pub local: bool,
    /// The chunk map's recorded checksum; the rebuilt piece must match it
    /// before it is sealed.
    pub checksum: Option<[u8; 32]>,
}

/// Rebuilds lost pieces of an `ec(data, parity)` chunk: the chunkserver given
/// this reads `data` surviving pieces, decodes the missing ones and writes
/// each to its target. The client is never involved.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RebuildPieces {
    pub job: u64,
    pub chunk: ChunkId,
    pub data: u8,
    pub parity: u8,
    /// The chunk's committed length, which fixes every piece's length.
    pub chunk_length: u64,
    pub sources: Vec<PieceSource>,
    pub targets: Vec<PieceTarget>,
    /// `READ` and `WRITE` on the chunk, valid on every chunkserver.
    pub token: Token,
}

/// How a job the metaserver handed out ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobResult {
    pub job: u64,
    /// Pieces sealed by the job (on this node or, for a rebuild, on its
    /// targets).
    pub sealed: Vec<PieceInfo>,
    pub error: Option<String>,
}

/// Failure-domain labels of a chunkserver.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Labels {
    pub rack: String,
    pub zone: String,
}

/// Space of one data directory.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskReport {
    pub path: String,
    pub capacity_bytes: u64,
    pub free_bytes: u64,
    pub reserve_bytes: u64,
    pub pieces: u64,
}

/// Load a placement decision can weigh.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LoadReport {
    pub reads_in_flight: u32,
    pub writes_in_flight: u32,
}

/// A chunkserver introduces itself; sent at start and whenever the
/// metaserver asks for it (after a leader change or a missed lease).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterChunkserver {
    pub name: String,
    pub address: String,
    pub labels: Labels,
    pub disks: Vec<DiskReport>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterReply {
    pub node: NodeId,
    pub heartbeat_interval_ms: u64,
}

impl Method for RegisterChunkserver {
    const ID: u16 = 200;
    const NAME: &'static str = "register_chunkserver";
    const IDEMPOTENT: bool = true;
    type Response = RegisterReply;
}

/// Periodic liveness and space report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: NodeId,
    pub disks: Vec<DiskReport>,
    pub load: LoadReport,
    /// Pieces found corrupt (and quarantined) since the last heartbeat.
    pub corrupt: Vec<PieceId>,
    /// Pieces sealed since the last heartbeat (at most
    /// [`HEARTBEAT_CHANGES_MAX`]; the rest follow), so the leader's view of
    /// the inventory stays current between full reports.
    pub added: Vec<PieceInfo>,
    /// Pieces deleted since the last heartbeat (same bound).
    pub removed: Vec<PieceId>,
    /// Jobs that ended since the last heartbeat.
    pub jobs: Vec<JobResult>,
    /// Jobs still running here.
    pub running: Vec<u64>,
}

/// Inventory changes one heartbeat carries at most, each way.
pub const HEARTBEAT_CHANGES_MAX: usize = 256;

/// What the metaserver tells a chunkserver to do.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ChunkCommand {
    Delete(Vec<PieceId>),
    Copy(CopyPiece),
    Rebuild(RebuildPieces),
    /// Deletes quarantined copies of these pieces: their repair committed.
    DropQuarantined(Vec<PieceId>),
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HeartbeatReply {
    pub commands: Vec<ChunkCommand>,
    /// The metaserver no longer knows this node: register again and send a
    /// full inventory.
    pub register_again: bool,
}

impl Method for Heartbeat {
    const ID: u16 = 201;
    const NAME: &'static str = "heartbeat";
    const IDEMPOTENT: bool = true;
    type Response = HeartbeatReply;
}

/// One page of a full inventory report, sent after (re)registration.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InventoryReport {
    pub node: NodeId,
    /// Pages of one report share this id so the metaserver can tell a new
    /// report from the rest of an old one.
    pub report: u64,
    pub pieces: Vec<PieceInfo>,
    pub last: bool,
}

impl Method for InventoryReport {
    const ID: u16 = 202;
    const NAME: &'static str = "inventory_report";
    const IDEMPOTENT: bool = true;
    type Response = ();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::HEADER_MAX_BYTES;
    use crate::token::{Capability, Rights};

    #[test]
    fn a_full_inventory_page_fits_in_a_header() {
        let info = PieceInfo {
            piece: PieceId {
                chunk: ChunkId(u64::MAX),
                index: 255,
            },
            length: u64::MAX,
            checksum: [0xff; 32],
        };
        let page = ListPiecesReply {
            pieces: vec![info; INVENTORY_PAGE_MAX as usize],
            more: true,
        };
        let frame = crate::wire::encode_response(&page, 0).unwrap();
        assert!(frame.len() < HEADER_MAX_BYTES, "{} bytes", frame.len());
        let report = InventoryReport {
            node: NodeId(u64::MAX),
            report: u64::MAX,
            pieces: page.pieces,
            last: true,
        };
        crate::wire::encode_request(crate::ids::RequestId(1), 1, 0, &report).unwrap();
    }

    #[test]
    fn a_full_heartbeat_fits_in_a_header() {
        let piece = PieceId {
            chunk: ChunkId(u64::MAX),
            index: 255,
        };
        let info = PieceInfo {
            piece,
            length: u64::MAX,
            checksum: [0xff; 32],
        };
        let beat = Heartbeat {
            node: NodeId(u64::MAX),
            disks: Vec::new(),
            load: LoadReport::default(),
            corrupt: vec![piece; 64],
            added: vec![info; HEARTBEAT_CHANGES_MAX],
            removed: vec![piece; HEARTBEAT_CHANGES_MAX],
            jobs: vec![
                JobResult {
                    job: u64::MAX,
                    sealed: vec![info; 4],
                    error: Some("x".repeat(200)),
                };
                16
            ],
            running: vec![u64::MAX; 64],
        };
        let frame = crate::wire::encode_request(crate::ids::RequestId(1), 1, 0, &beat).unwrap();
        assert!(frame.len() < HEADER_MAX_BYTES, "{} bytes", frame.len());
    }

    #[test]
    fn method_numbers_are_distinct() {
        let ids = [
            WritePiece::ID,
            WritePieceStream::ID,
            ReadPiece::ID,
            VerifyPiece::ID,
            DeletePieces::ID,
            ListPieces::ID,
            CopyPiece::ID,
            RegisterChunkserver::ID,
            Heartbeat::ID,
            InventoryReport::ID,
        ];
        let unique: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
        let _ = Token {
            capability: Capability {
                chunk: ChunkId(1),
                rights: Rights::READ,
                expires_at_ms: 0,
            },
            mac: [0; 32],
        };
    }
}
