//! The copy job: fetch a piece from another chunkserver and seal it here,
//! possibly under another piece index (replicas of a chunk hold the same
//! bytes under different indexes).
//!
//! The source's block hashes come with every range and each block is checked
//! against them before it is written, and the piece checksum is computed
//! from those same hashes, so the copy needs no second pass over its bytes:
//! when the chunk map recorded a checksum the copy must match it, and when it
//! did not (chunks committed before checksums were recorded) the verified
//! hashes are the best evidence there is.

use crate::jobs::RepairContext;
use crate::local_write::LocalWrite;
use crate::remote;
use tessera_proto::checksum::{BLOCK_BYTES, block_count, piece_checksum};
use tessera_proto::chunk::{CopyPiece, PieceInfo, PieceTrailer};
use tessera_proto::error::{Error, ErrorCode};

/// Bytes fetched per range: 32 blocks, so a copy holds a few MiB at most
/// while each call is still large enough that the round trip is noise.
pub const COPY_RANGE_BYTES: u64 = 32 * BLOCK_BYTES as u64;
/// Ranges queued for the disk per copy.
const COPY_QUEUE_DEPTH: usize = 2;

fn hex(bytes: &[u8; 32]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A finished copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Copied {
    pub info: PieceInfo,
    /// False when the piece was already here and nothing moved.
    pub written: bool,
}

/// Copies `msg.source_piece` from `msg.source` into this store as
/// `msg.piece`. A piece already stored here with the expected checksum (any
/// checksum when none is expected) succeeds at once, so a job a new leader
/// sends again is harmless.
pub async fn copy(ctx: &RepairContext, msg: &CopyPiece) -> Result<Copied, Error> {
    if let Some(info) = ctx.store.info(msg.piece) {
        let same = info.length == msg.length && msg.checksum.is_none_or(|c| c == info.checksum);
        if same {
            return Ok(Copied {
                info,
                written: false,
            });
        }
        return Err(Error::new(
            ErrorCode::AlreadyExists,
            format!(
                "{} is stored here with {} bytes and checksum {}.., not the {} bytes{} the copy expects; delete it first",
                msg.piece,
                info.length,
                hex(&info.checksum),
                msg.length,
                msg.checksum
                    .map(|c| format!(" and checksum {}..", hex(&c)))
                    .unwrap_or_default()
            ),
        ));
    }
    let context = |err: Error| {
        Error::new(
            err.code,
            format!(
                "copy of {} from {} at {}: {}",
                msg.piece, msg.source_piece, msg.source, err.message
            ),
        )
    };
    let peer = remote::chunkserver(&msg.source).await.map_err(context)?;
    let mut write = LocalWrite::begin(
        &ctx.store,
        msg.piece,
        msg.length,
        msg.checksum.unwrap_or_default(),
        COPY_QUEUE_DEPTH,
    )
    .await
    .map_err(context)?;
    let mut hashes = Vec::with_capacity(block_count(msg.length) as usize);
    let mut at = 0;
    // A zero-length piece still asks the source once, so a copy of a piece
    // the source does not hold fails rather than sealing nothing.
    loop {
        let length = COPY_RANGE_BYTES.min(msg.length - at);
        ctx.throttle.take(length).await;
        let fetched = remote::read_verified(
            &ctx.client,
            peer,
            msg.source_piece,
            msg.source_token,
            msg.length,
            at,
            length,
        )
        .await;
        let (bytes, block_hashes) = match fetched {
            Ok(fetched) => fetched,
            Err(err) => {
                write.abort().await;
                return Err(context(err));
            }
        };
        hashes.extend(block_hashes);
        at += length;
        if !bytes.is_empty() {
            write.append(bytes).await.map_err(context)?;
        }
        if at >= msg.length {
            break;
        }
    }
    let checksum = piece_checksum(&hashes);
    if let Some(expected) = msg.checksum
        && expected != checksum
    {
        write.abort().await;
        return Err(context(Error::new(
            ErrorCode::ChecksumMismatch,
            format!(
                "the source's bytes have checksum {}.., the chunk map recorded {}..; nothing was stored, copy from another replica",
                hex(&checksum),
                hex(&expected)
            ),
        )));
    }
    let info = write
        .seal(Some(PieceTrailer {
            length: msg.length,
            checksum,
        }))
        .await
        .map_err(context)?;
    Ok(Copied {
        info,
        written: true,
    })
}
