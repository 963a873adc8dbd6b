//! Pieces on other chunkservers, as repair jobs use them: verified range
//! reads and streamed writes.
//!
//! A read checks every block against the hashes the source sends with a
//! block-aligned range, as a client's read does: the source sends such
//! blocks unhashed, so this check is the end-to-end one (its disk, its
//! memory, the network), and a copy or a rebuild never seals bytes nobody
//! verified. A block that fails is sent back to the source to check
//! (`VerifyPiece`), which quarantines its piece if its disk holds it bad.

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use tessera_proto::checksum::{BLOCK_BYTES, HASH_BYTES, block_count};
use tessera_proto::chunk::{
    PieceTrailer, READ_VERIFIED_MAX_BYTES, ReadPiece, VerifyPiece, WritePieceReply,
    WritePieceStream,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::PieceId;
use tessera_proto::rpc::{CallOptions, OutgoingCall, Peer, RpcClient};
use tessera_proto::tls::Role;
use tessera_proto::token::Token;
use tessera_proto::wire::BULK_FRAMED;

/// Deadline of one range read of a repair job, retries included.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Retries of a range read that failed in a retryable way.
const READ_RETRIES: u32 = 2;
/// Deadline of a whole streamed piece write; a target that stops taking
/// bytes is caught sooner by the writer's stall timeout.
const WRITE_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// The chunkserver at `address` (host:port).
pub async fn chunkserver(address: &str) -> Result<Peer, Error> {
    let found: Option<SocketAddr> = tokio::net::lookup_host(address)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next());
    found
        .map(|addr| Peer::new(addr, Role::Chunk))
        .ok_or_else(|| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("chunkserver address {address:?} does not resolve"),
            )
        })
}

/// Bytes `[offset, offset + length)` of a piece of `piece_len` bytes, and
/// the hashes of the blocks they cover, every block checked against its
/// hash. The range must be block-aligned (start on a block boundary, end on
/// one or at the piece's end) and at most [`READ_VERIFIED_MAX_BYTES`] long.
pub async fn read_verified(
    client: &RpcClient,
    peer: Peer,
    piece: PieceId,
    token: Token,
    piece_len: u64,
    offset: u64,
    length: u64,
) -> Result<(Bytes, Vec<[u8; HASH_BYTES]>), Error> {
    let block = BLOCK_BYTES as u64;
    let end = offset.checked_add(length).filter(|end| *end <= piece_len);
    let aligned = end.is_some_and(|end| {
        offset.is_multiple_of(block) && (end.is_multiple_of(block) || end == piece_len)
    });
    if !aligned || length > READ_VERIFIED_MAX_BYTES {
        return Err(Error::internal(format!(
            "verified read of {length} bytes at {offset} of {piece} ({piece_len} bytes) is not an aligned range of at most {READ_VERIFIED_MAX_BYTES} bytes"
        )));
    }
    let request = ReadPiece {
        piece,
        offset,
        length,
        token,
    };
    let options = CallOptions {
        timeout: READ_TIMEOUT,
        retries: READ_RETRIES,
        request_id: None,
    };
    let (reply, bytes) = client
        .call_bulk(peer, &request, Bytes::new(), length as usize, options)
        .await?;
    if reply.piece_length != piece_len {
        return Err(Error::new(
            ErrorCode::LengthMismatch,
            format!(
                "{peer} holds {piece} with {} bytes; the job expects {piece_len}",
                reply.piece_length
            ),
        ));
    }
    if bytes.len() as u64 != length {
        return Err(Error::new(
            ErrorCode::Truncated,
            format!("{peer} sent {} of {length} bytes of {piece}", bytes.len()),
        ));
    }
    let blocks = block_count(length) as usize;
    if reply.block_hashes.len() != blocks {
        return Err(Error::new(
            ErrorCode::Malformed,
            format!(
                "{peer} sent {} block hashes for {blocks} blocks of {piece}; repair needs a chunkserver that sends them",
                reply.block_hashes.len()
            ),
        ));
    }
    for (i, (data, expected)) in bytes
        .chunks(BLOCK_BYTES)
        .zip(&reply.block_hashes)
        .enumerate()
    {
        if blake3::hash(data).as_bytes() != expected {
            let request = VerifyPiece {
                piece,
                offset: offset + i as u64 * block,
                length: block,
                token,
            };
            let client = client.clone();
            tokio::spawn(async move {
                if let Err(err) = client.call(peer, &request, CallOptions::default()).await {
                    tracing::warn!(%piece, %peer, error = %err, "could not have the source check a bad block");
                }
            });
            return Err(Error::new(
                ErrorCode::ChecksumMismatch,
                format!(
                    "block {} of {piece} from {peer} does not match its hash; the source was asked to check its copy",
                    offset / block + i as u64
                ),
            ));
        }
    }
    Ok((Bytes::from(bytes), reply.block_hashes))
}

/// A piece streamed to another chunkserver. Dropping it before
/// [`RemoteWrite::seal`] resets the stream, so the target keeps nothing.
pub struct RemoteWrite {
    call: OutgoingCall<WritePieceStream>,
    peer: Peer,
    piece: PieceId,
    sent: u64,
}

impl RemoteWrite {
    pub async fn open(
        client: &RpcClient,
        peer: Peer,
        piece: PieceId,
        max_length: u64,
        token: Token,
    ) -> Result<RemoteWrite, Error> {
        let message = WritePieceStream {
            piece,
            max_length,
            token,
        };
        let options = CallOptions {
            timeout: WRITE_DEADLINE,
            retries: 0,
            request_id: None,
        };
        let call = client.open(peer, &message, BULK_FRAMED, options).await?;
        Ok(RemoteWrite {
            call,
            peer,
            piece,
            sent: 0,
        })
    }

    pub async fn write(&mut self, data: Bytes) -> Result<(), Error> {
        self.sent += data.len() as u64;
        self.call.write_bytes(data).await
    }

    /// Ends the piece with its trailer and waits for the target's seal.
    pub async fn seal(self, trailer: PieceTrailer) -> Result<WritePieceReply, Error> {
        if trailer.length != self.sent {
            return Err(Error::internal(format!(
                "{} would be sealed at {} bytes after {} were sent",
                self.piece, trailer.length, self.sent
            )));
        }
        let encoded = postcard::to_stdvec(&trailer)
            .map_err(|err| Error::internal(format!("encode piece trailer: {err}")))?;
        let reply = self.call.finish_with_trailer(&encoded).await?.message;
        if reply.length != trailer.length {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "{} sealed {} bytes of {}, {} were sent",
                    self.peer, reply.length, self.piece, trailer.length
                ),
            ));
        }
        Ok(reply)
    }
}
