//! One piece on one chunkserver: a streamed write that a writer feeds and
//! seals, and a verified read of a piece range.

use crate::client::Client;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::checksum::{BLOCK_BYTES, PieceHasher, RANGE_UNIT_BYTES, range_matches};
use tessera_proto::chunk::{
    PieceTrailer, READ_RANGE_MAX_BYTES, READ_VERIFIED_MAX_BYTES, ReadPiece, ReadRange, VerifyPiece,
    WritePieceStream,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{NodeId, PieceId};
use tessera_proto::meta::{ChunkPlacement, PieceLocation};
use tessera_proto::rpc::CallOptions;
use tessera_proto::wire::BULK_FRAMED;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Deadline of one streamed piece write as a whole; stalls are caught much
/// sooner by the writer's stall timeout.
const PIECE_CALL_DEADLINE: Duration = Duration::from_secs(30 * 60);

pub(crate) enum PieceMsg {
    Data(Bytes),
    /// Ends the piece; `None` when the stream hashed the bytes itself.
    Seal(Option<PieceTrailer>),
}

/// A piece being written: a task owns the RPC stream and takes bytes from a
/// bounded channel, so a slow server slows its writer only up to the stall
/// timeout, after which the piece is given up.
pub(crate) struct PieceStream {
    pub piece: PieceId,
    pub node: NodeId,
    /// The server's address as the placement gave it.
    pub address: String,
    tx: Option<mpsc::Sender<PieceMsg>>,
    task: Option<JoinHandle<Result<PieceTrailer, Error>>>,
    pub error: Option<Error>,
}

impl PieceStream {
    pub fn start(
        client: &Arc<Client>,
        placement: &ChunkPlacement,
        location: &PieceLocation,
        max_length: u64,
        hash: bool,
        capacity: usize,
    ) -> PieceStream {
        let piece = PieceId {
            chunk: placement.chunk,
            index: location.index,
        };
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let message = WritePieceStream {
            piece,
            max_length,
            token: placement.token,
        };
        let task = tokio::spawn(stream_piece(
            client.clone(),
            location.address.clone(),
            message,
            rx,
            hash,
        ));
        PieceStream {
            piece,
            node: location.node,
            address: location.address.clone(),
            tx: Some(tx),
            task: Some(task),
            error: None,
        }
    }

    pub fn is_live(&self) -> bool {
        self.error.is_none()
    }

    /// Gives the piece up: its stream is reset and its server keeps nothing.
    pub fn fail(&mut self, error: Error) {
        tracing::warn!(piece = %self.piece, node = %self.node, error = %error, "giving up on a piece");
        self.tx = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if self.error.is_none() {
            self.error = Some(error);
        }
    }

    /// Queues `msg`; a piece that cannot take it within `stall` is failed.
    pub async fn send(&mut self, msg: PieceMsg, stall: Duration) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.send_timeout(msg, stall).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => self.fail(Error::new(
                ErrorCode::Timeout,
                format!(
                    "chunkserver took no bytes of piece {} for {} s",
                    self.piece,
                    stall.as_secs()
                ),
            )),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                // The task ended early: it holds the reason.
                let error = self.join(Duration::from_secs(1)).await.err();
                self.fail(error.unwrap_or_else(|| {
                    Error::internal("piece stream ended before its seal without an error")
                }));
            }
        }
    }

    async fn join(&mut self, timeout: Duration) -> Result<PieceTrailer, Error> {
        let Some(task) = self.task.as_mut() else {
            return Err(self
                .error
                .clone()
                .unwrap_or_else(|| Error::internal("piece stream already joined")));
        };
        let result = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Error::internal(format!("piece stream task: {join}"))),
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "chunkserver did not seal piece {} within {} s",
                    self.piece,
                    timeout.as_secs()
                ),
            )),
        };
        self.task = None;
        result
    }

    /// Waits for the seal's acknowledgement: the piece's length and checksum
    /// once it is durable on its server. The server refuses a seal whose
    /// bytes differ from the trailer, so the trailer is what it stored, and
    /// what the commit records for repair to verify against.
    pub async fn sealed(&mut self, timeout: Duration) -> Result<PieceTrailer, Error> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        self.tx = None;
        let result = self.join(timeout).await;
        if let Err(error) = &result {
            self.fail(error.clone());
        }
        result
    }
}

impl Drop for PieceStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn stream_piece(
    client: Arc<Client>,
    address: String,
    message: WritePieceStream,
    mut rx: mpsc::Receiver<PieceMsg>,
    hash: bool,
) -> Result<PieceTrailer, Error> {
    let peer = client.chunkserver(&address).await?;
    let options = CallOptions {
        timeout: PIECE_CALL_DEADLINE,
        retries: 0,
        request_id: None,
    };
    let mut call = client
        .rpc()
        .open(peer, &message, BULK_FRAMED, options)
        .await?;
    let mut hasher = hash.then(PieceHasher::new);
    let mut length = 0u64;
    while let Some(msg) = rx.recv().await {
        match msg {
            PieceMsg::Data(bytes) => {
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&bytes);
                }
                length += bytes.len() as u64;
                call.write_bytes(bytes).await?;
            }
            PieceMsg::Seal(trailer) => {
                let trailer = match (trailer, hasher.take()) {
                    (Some(trailer), _) => trailer,
                    (None, Some(hasher)) => PieceTrailer {
                        length,
                        checksum: hasher.finish().1,
                    },
                    (None, None) => return Err(Error::internal("piece sealed without a checksum")),
                };
                let encoded = postcard::to_stdvec(&trailer)
                    .map_err(|err| Error::internal(format!("encode piece trailer: {err}")))?;
                let response = call.finish_with_trailer(&encoded).await?;
                if response.message.length != trailer.length {
                    return Err(Error::new(
                        ErrorCode::LengthMismatch,
                        format!(
                            "{peer} sealed {} bytes of piece {}, {} were sent",
                            response.message.length, message.piece, trailer.length
                        ),
                    ));
                }
                return Ok(trailer);
            }
        }
    }
    Err(Error::new(
        ErrorCode::Cancelled,
        format!("writer abandoned piece {}", message.piece),
    ))
}

/// Whether a failed read means the piece itself is bad (so repair should
/// hear of it) rather than its server being slow or away.
pub(crate) fn piece_is_bad(error: &Error) -> bool {
    matches!(
        error.code,
        ErrorCode::Corrupt
            | ErrorCode::ChecksumMismatch
            | ErrorCode::NotFound
            | ErrorCode::OutOfRange
            | ErrorCode::LengthMismatch
    )
}

/// Reads `[offset, offset + length)` of piece `index` (whose stored length
/// is `piece_len`) and checks every block against the hashes the server
/// sends with block-aligned reads.
pub(crate) async fn read_piece(
    client: &Arc<Client>,
    placement: &ChunkPlacement,
    location: &PieceLocation,
    piece_len: u64,
    offset: u64,
    length: u64,
) -> Result<Bytes, Error> {
    let end = offset + length;
    if end > piece_len {
        return Err(Error::internal(format!(
            "read of {length} bytes at {offset} past piece length {piece_len}"
        )));
    }
    if length == 0 {
        return Ok(Bytes::new());
    }
    let piece = PieceId {
        chunk: placement.chunk,
        index: location.index,
    };
    let peer = client.chunkserver(&location.address).await?;
    let _load = client.reading(location.node);
    let result = read_verified(client, placement, peer, piece, piece_len, offset, length).await;
    if let Err(err) = &result
        && matches!(
            err.code,
            ErrorCode::Timeout | ErrorCode::Unavailable | ErrorCode::Cancelled
        )
    {
        client.suspect(location.node);
    }
    result
}

/// Has the server check a block this reader found bad, so it quarantines
/// its copy and repair replaces it (the server does not hash what it sends
/// with hashes). In the background: the caller is already reading another
/// copy, and a failed check changes nothing for it.
fn ask_to_verify(
    client: &Arc<Client>,
    peer: tessera_proto::rpc::Peer,
    piece: PieceId,
    token: tessera_proto::token::Token,
    offset: u64,
    length: u64,
) {
    let rpc = client.rpc().clone();
    tokio::spawn(async move {
        let request = VerifyPiece {
            piece,
            offset,
            length,
            token,
        };
        match rpc.call(peer, &request, CallOptions::default()).await {
            Ok(reply) if !reply.intact => {
                tracing::warn!(%piece, %peer, "the chunkserver confirmed a bad block and quarantined its copy")
            }
            Ok(_) => tracing::warn!(
                %piece, %peer,
                "bytes failed their checksum on the way here but are intact on the chunkserver"
            ),
            Err(err) => {
                tracing::warn!(%piece, %peer, error = %err, "could not have the chunkserver check a bad block")
            }
        }
    });
}

/// A read's reply names the piece length the chunk map has and carries the
/// bytes asked for; anything else is a different piece or a cut reply.
fn check_lengths(
    peer: tessera_proto::rpc::Peer,
    piece: PieceId,
    piece_len: u64,
    held: u64,
    got: usize,
    asked: u64,
) -> Result<(), Error> {
    if held != piece_len {
        return Err(Error::new(
            ErrorCode::LengthMismatch,
            format!("{peer} holds piece {piece} with {held} bytes; the chunk map says {piece_len}"),
        ));
    }
    if got as u64 != asked {
        return Err(Error::new(
            ErrorCode::Truncated,
            format!("{peer} sent {got} of {asked} bytes of piece {piece}"),
        ));
    }
    Ok(())
}

/// Reads `[offset, offset + length)` of a piece, aligned to
/// [`RANGE_UNIT_BYTES`], with a [`ReadRange`]: only those bytes travel, and
/// each is checked against its block's hash through the proof the server
/// sends (the server does not check what it sends; this is the check).
#[allow(clippy::too_many_arguments)]
async fn read_proven(
    client: &Arc<Client>,
    placement: &ChunkPlacement,
    peer: tessera_proto::rpc::Peer,
    piece: PieceId,
    piece_len: u64,
    offset: u64,
    length: u64,
) -> Result<Bytes, Error> {
    let request = ReadRange {
        piece,
        offset,
        length,
        token: placement.token,
    };
    let options = CallOptions {
        timeout: Duration::from_millis(client.io().read_timeout_ms),
        retries: 1,
        request_id: None,
    };
    let (reply, bytes) = client
        .rpc()
        .call_bulk(peer, &request, Bytes::new(), length as usize, options)
        .await?;
    check_lengths(
        peer,
        piece,
        piece_len,
        reply.piece_length,
        bytes.len(),
        length,
    )?;
    let block = BLOCK_BYTES as u64;
    let end = offset + length;
    let first = offset / block;
    let blocks = end.div_ceil(block) - first;
    if reply.block_hashes.len() as u64 != blocks || reply.proofs.len() as u64 != blocks {
        return Err(Error::new(
            ErrorCode::Malformed,
            format!(
                "{peer} sent {} block hashes and {} proofs for the {blocks} blocks of a range of piece {piece}",
                reply.block_hashes.len(),
                reply.proofs.len()
            ),
        ));
    }
    for (i, (expected, proof)) in reply.block_hashes.iter().zip(&reply.proofs).enumerate() {
        let start = (first + i as u64) * block;
        let block_len = (piece_len - start).min(block) as usize;
        let (from, to) = (offset.max(start), end.min(start + block));
        let data = &bytes[(from - offset) as usize..(to - offset) as usize];
        if !range_matches(data, (from - start) as usize, block_len, proof, expected) {
            ask_to_verify(
                client,
                peer,
                piece,
                placement.token,
                start,
                block_len as u64,
            );
            return Err(Error::new(
                ErrorCode::ChecksumMismatch,
                format!(
                    "bytes {from}..{to} of piece {piece} from {peer} do not match their block's checksum",
                ),
            ));
        }
    }
    Ok(Bytes::from(bytes))
}

#[allow(clippy::too_many_arguments)]
async fn read_verified(
    client: &Arc<Client>,
    placement: &ChunkPlacement,
    peer: tessera_proto::rpc::Peer,
    piece: PieceId,
    piece_len: u64,
    offset: u64,
    length: u64,
) -> Result<Bytes, Error> {
    let block = BLOCK_BYTES as u64;
    let end = offset + length;
    let aligned_start = offset / block * block;
    let aligned_end = end.div_ceil(block).saturating_mul(block).min(piece_len);
    let unit = RANGE_UNIT_BYTES as u64;
    let range_start = offset / unit * unit;
    let range_end = end.div_ceil(unit).saturating_mul(unit).min(piece_len);
    if range_end - range_start < aligned_end - aligned_start
        && range_end - range_start <= READ_RANGE_MAX_BYTES
    {
        let proven = read_proven(
            client,
            placement,
            peer,
            piece,
            piece_len,
            range_start,
            range_end - range_start,
        )
        .await;
        match proven {
            Ok(bytes) => {
                let from = (offset - range_start) as usize;
                return Ok(bytes.slice(from..from + length as usize));
            }
            // A chunkserver from before ranges were served (during an
            // upgrade) is read by whole blocks.
            Err(err) if err.code == ErrorCode::UnknownMethod => {}
            Err(err) => return Err(err),
        }
    }
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut at = aligned_start;
    let timeout = Duration::from_millis(client.io().read_timeout_ms);
    while at < aligned_end {
        let to = (at + READ_VERIFIED_MAX_BYTES).min(aligned_end);
        let request = ReadPiece {
            piece,
            offset: at,
            length: to - at,
            token: placement.token,
        };
        let options = CallOptions {
            timeout,
            retries: 1,
            request_id: None,
        };
        let (reply, bytes) = client
            .rpc()
            .call_bulk(peer, &request, Bytes::new(), (to - at) as usize, options)
            .await?;
        check_lengths(
            peer,
            piece,
            piece_len,
            reply.piece_length,
            bytes.len(),
            to - at,
        )?;
        let blocks = bytes.chunks(BLOCK_BYTES);
        if reply.block_hashes.len() != blocks.len() {
            return Err(Error::new(
                ErrorCode::Malformed,
                format!(
                    "{peer} sent {} block hashes for {} blocks of piece {piece}",
                    reply.block_hashes.len(),
                    blocks.len()
                ),
            ));
        }
        for (i, (data, expected)) in blocks.zip(&reply.block_hashes).enumerate() {
            if blake3::hash(data).as_bytes() != expected {
                let bad_at = at + i as u64 * block;
                ask_to_verify(client, peer, piece, placement.token, bad_at, block);
                return Err(Error::new(
                    ErrorCode::ChecksumMismatch,
                    format!(
                        "block {} of piece {piece} from {peer} does not match its checksum",
                        at / block + i as u64
                    ),
                ));
            }
        }
        parts.push(bytes);
        at = to;
    }
    let out = match parts.len() {
        1 => Bytes::from(parts.pop().unwrap_or_default()),
        _ => Bytes::from(parts.concat()),
    };
    let from = (offset - aligned_start) as usize;
    Ok(out.slice(from..from + length as usize))
}
