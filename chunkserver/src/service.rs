//! The data service on the RPC layer: write, read, delete, list and copy
//! pieces.
//!
//! Disk work never runs on the async workers: each write streams into a
//! blocking task through a bounded queue ([`crate::local_write`]), and each
//! read is produced by a blocking task a few batches ahead of the sender.
//! Each disk bounds its own blocking work, so one slow disk stalls only the
//! calls that need it. Copies ordered by a direct `CopyPiece` call run
//! through the repair job runner ([`crate::jobs`]), so they share its slots
//! and its rate limit with the jobs heartbeats hand out.

use crate::jobs::JobRunner;
use crate::local_write::{LocalWrite, join_error};
use crate::store::{PieceReader, Store};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tessera_proto::checksum::{BLOCK_BYTES, RANGE_UNIT_BYTES, block_count, range_proof};
use tessera_proto::chunk::{
    CopyPiece, DeletePieces, DeletePiecesReply, INVENTORY_PAGE_MAX, ListPieces, ListPiecesReply,
    PieceInfo, PieceTrailer, READ_RANGE_MAX_BYTES, ReadPiece, ReadPieceReply, ReadRange,
    ReadRangeReply, SYNC_PIECES_MAX, SyncPieces, SyncPiecesReply, VerifyPiece, VerifyPieceReply,
    WritePiece, WritePieceReply, WritePieceStream,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::PieceId;
use tessera_proto::rpc::{BulkReader, Call, Service};
use tessera_proto::tls::Role;
use tessera_proto::token::{Rights, Token, TokenKey, unix_now_ms};
use tessera_proto::wire::Method;
use tokio::sync::mpsc;

/// Buffers (of up to 1 MiB each) queued between the network and the disk
/// for one write.
const WRITE_QUEUE_DEPTH: usize = 8;
/// Blocks read and verified per batch on the read path (1 MiB).
const READ_BATCH_BLOCKS: u64 = 16;
/// Batches read ahead of the network on the read path.
const READ_AHEAD_BATCHES: usize = 2;

pub struct ChunkService {
    store: Arc<Store>,
    token_key: TokenKey,
    jobs: Arc<JobRunner>,
}

impl ChunkService {
    pub fn new(store: Arc<Store>, token_key: TokenKey, jobs: Arc<JobRunner>) -> ChunkService {
        ChunkService {
            store,
            token_key,
            jobs,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn jobs(&self) -> &Arc<JobRunner> {
        &self.jobs
    }

    fn check_token(&self, token: &Token, piece: PieceId, rights: Rights) -> Result<(), Error> {
        self.token_key
            .verify(token, piece.chunk, rights, unix_now_ms())
    }

    async fn write(&self, call: &mut Call) -> Result<(), Error> {
        let msg: WritePiece = call.decode()?;
        self.check_token(&msg.token, msg.piece, Rights::WRITE)?;
        if call.request_bulk().remaining() != msg.length {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "piece {} declares {} bytes but the call carries {}",
                    msg.piece,
                    msg.length,
                    call.request_bulk().remaining()
                ),
            ));
        }
        let info = self
            .store_stream(msg.piece, msg.length, msg.checksum, call.request_bulk())
            .await?;
        call.respond(
            &WritePieceReply {
                length: info.length,
            },
            0,
        )
        .await
    }

    /// Streams `length` bytes from `bulk` into a new sealed piece.
    async fn store_stream(
        &self,
        piece: PieceId,
        length: u64,
        checksum: [u8; 32],
        bulk: &mut BulkReader,
    ) -> Result<PieceInfo, Error> {
        let mut write =
            LocalWrite::begin(&self.store, piece, length, checksum, WRITE_QUEUE_DEPTH).await?;
        loop {
            match bulk.next().await {
                Ok(Some(data)) => write.append(data).await?,
                Ok(None) => {
                    let trailer = match bulk.trailer() {
                        None if !bulk.is_framed() => Ok(None),
                        None => Err(Error::new(
                            ErrorCode::Truncated,
                            "streamed piece ended without its trailer",
                        )),
                        Some(bytes) => {
                            tessera_proto::wire::decode_message::<PieceTrailer>(bytes).map(Some)
                        }
                    };
                    return match trailer {
                        Ok(trailer) => write.seal(trailer).await,
                        Err(err) => {
                            write.abort().await;
                            Err(err)
                        }
                    };
                }
                Err(err) => {
                    // Wait for the temporary file to go, so a retry of the
                    // same piece is not refused as "being written".
                    write.abort().await;
                    return Err(err);
                }
            }
        }
    }

    async fn read(&self, call: &mut Call) -> Result<(), Error> {
        let msg: ReadPiece = call.decode()?;
        self.check_token(&msg.token, msg.piece, Rights::READ)?;
        let metrics = self.store.metrics().clone();
        metrics.reads_in_flight.inc();
        let started = Instant::now();
        let result = self.serve_read(call, &msg).await;
        metrics.reads_in_flight.dec();
        if result.is_ok() {
            metrics.reads.inc();
            metrics.bytes_read.inc_by(msg.length);
            metrics
                .read_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn serve_read(&self, call: &mut Call, msg: &ReadPiece) -> Result<(), Error> {
        let piece = msg.piece;
        let (offset, length) = (msg.offset, msg.length);
        let permit = self.store.read_slot(piece).await?;
        if length <= READ_BATCH_BLOCKS * BLOCK_BYTES as u64 {
            // A small read (a random read's block) is one blocking step:
            // open, hashes and bytes together, where handing each to its
            // own blocking task cost two thread hand-offs per request.
            let store = self.store.clone();
            let (piece_length, block_hashes, bytes) = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                let mut reader = store.open_reader(piece)?;
                let hashes = reader.hashes_for(offset, length)?;
                let end = read_end(&reader, offset, length)?;
                let mut bytes = Bytes::new();
                if length > 0 {
                    let (first, count) = blocks_of(offset, end, reader.length());
                    let data = if hashes.is_empty() {
                        reader.read_blocks(first, count)?
                    } else {
                        reader.read_unverified(first, count)?
                    };
                    bytes = slice_batch(data, first, offset, end);
                }
                Ok::<_, Error>((reader.length(), hashes, bytes))
            })
            .await
            .map_err(join_error)??;
            call.respond(
                &ReadPieceReply {
                    piece_length,
                    block_hashes,
                },
                length,
            )
            .await?;
            if length > 0 {
                call.response_bulk()?.write_bytes(bytes).await?;
            }
            return Ok(());
        }
        let store = self.store.clone();
        let (reader, block_hashes) = tokio::task::spawn_blocking(move || {
            let mut reader = store.open_reader(piece)?;
            let hashes = reader.hashes_for(offset, length)?;
            Ok::<_, Error>((reader, hashes))
        })
        .await
        .map_err(join_error)??;
        let piece_length = reader.length();
        // The reader checks every block of an aligned range against the
        // hashes sent with it (end to end, past this server's memory and
        // the network), so hashing here too would only repeat it. Unaligned
        // ranges carry no hashes and are checked here.
        let reader_verifies = !block_hashes.is_empty();
        let end = read_end(&reader, offset, length)?;
        call.respond(
            &ReadPieceReply {
                piece_length,
                block_hashes,
            },
            length,
        )
        .await?;
        let (first_block, block_total) = blocks_of(offset, end, piece_length);
        let end_block = first_block + block_total;
        let (tx, mut rx) = mpsc::channel::<Result<(u64, Vec<u8>), Error>>(READ_AHEAD_BATCHES);
        let producer = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut reader = reader;
            let mut block = first_block;
            while block < end_block {
                let count = READ_BATCH_BLOCKS.min(end_block - block);
                let batch = if reader_verifies {
                    reader.read_unverified(block, count)
                } else {
                    reader.read_blocks(block, count)
                };
                let batch = batch.map(|data| (block, data));
                let failed = batch.is_err();
                if tx.blocking_send(batch).is_err() || failed {
                    return;
                }
                block += count;
            }
        });
        while let Some(batch) = rx.recv().await {
            let (block, data) = batch?;
            let bytes = slice_batch(data, block, offset, end);
            call.response_bulk()?.write_bytes(bytes).await?;
        }
        producer.await.map_err(join_error)?;
        Ok(())
    }

    /// Serves a [`ReadRange`]: the touched blocks are read whole, since the
    /// proof of a part needs the rest, and only the range is sent.
    async fn read_range(&self, call: &mut Call) -> Result<(), Error> {
        let msg: ReadRange = call.decode()?;
        self.check_token(&msg.token, msg.piece, Rights::READ)?;
        let (piece, offset, length) = (msg.piece, msg.offset, msg.length);
        if length == 0
            || length > READ_RANGE_MAX_BYTES
            || !offset.is_multiple_of(RANGE_UNIT_BYTES as u64)
        {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "read_range of {length} bytes at {offset}: ranges start on a {RANGE_UNIT_BYTES}-byte boundary and hold 1 to {READ_RANGE_MAX_BYTES} bytes"
                ),
            ));
        }
        let permit = self.store.read_slot(piece).await?;
        let metrics = self.store.metrics().clone();
        metrics.reads_in_flight.inc();
        let started = Instant::now();
        let store = self.store.clone();
        let read = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut reader = store.open_reader(piece)?;
            let end = read_end(&reader, offset, length)?;
            let piece_length = reader.length();
            if !(end.is_multiple_of(RANGE_UNIT_BYTES as u64) || end == piece_length) {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "read_range ending at {end} of piece {piece}: ranges end on a {RANGE_UNIT_BYTES}-byte boundary or at the piece's end ({piece_length})"
                    ),
                ));
            }
            let (first, count) = blocks_of(offset, end, piece_length);
            let block = BLOCK_BYTES as u64;
            let aligned_start = first * block;
            let aligned_end = ((first + count) * block).min(piece_length);
            let block_hashes = reader.hashes_for(aligned_start, aligned_end - aligned_start)?;
            let data = reader.read_unverified(first, count)?;
            let mut proofs = Vec::with_capacity(count as usize);
            for (i, bytes) in data.chunks(BLOCK_BYTES).enumerate() {
                let start = aligned_start + i as u64 * block;
                let from = (offset.max(start) - start) as usize;
                let to = (end.min(start + bytes.len() as u64) - start) as usize;
                if from == 0 && to == bytes.len() {
                    proofs.push(Vec::new());
                    continue;
                }
                let proof = range_proof(bytes, from, to).ok_or_else(|| {
                    Error::internal(format!("no proof for bytes {from}..{to} of a block"))
                })?;
                proofs.push(proof);
            }
            let bytes = slice_batch(data, first, offset, end);
            Ok::<_, Error>((
                ReadRangeReply {
                    piece_length,
                    block_hashes,
                    proofs,
                },
                bytes,
            ))
        })
        .await
        .map_err(join_error)
        .and_then(|read| read);
        let result = match read {
            Ok((reply, bytes)) => match call.respond(&reply, length).await {
                Ok(()) => match call.response_bulk() {
                    Ok(bulk) => bulk.write_bytes(bytes).await,
                    Err(err) => Err(err),
                },
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        metrics.reads_in_flight.dec();
        if result.is_ok() {
            metrics.reads.inc();
            metrics.bytes_read.inc_by(length);
            metrics
                .read_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Checks a range a reader found bad (see [`VerifyPiece`]); the store
    /// quarantines the piece on a mismatch.
    async fn verify(&self, msg: VerifyPiece) -> Result<VerifyPieceReply, Error> {
        self.check_token(&msg.token, msg.piece, Rights::READ)?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut reader = store.open_reader(msg.piece)?;
            let blocks = block_count(reader.length());
            let first = (msg.offset / BLOCK_BYTES as u64).min(blocks);
            let end = msg
                .offset
                .saturating_add(msg.length)
                .div_ceil(BLOCK_BYTES as u64)
                .min(blocks);
            let mut block = first;
            while block < end {
                let count = READ_BATCH_BLOCKS.min(end - block);
                match reader.read_blocks(block, count) {
                    Ok(_) => block += count,
                    Err(err) if err.code == ErrorCode::Corrupt => {
                        return Ok(VerifyPieceReply { intact: false });
                    }
                    Err(err) => return Err(err),
                }
            }
            Ok(VerifyPieceReply { intact: true })
        })
        .await
        .map_err(join_error)?
    }

    pub async fn delete(&self, pieces: Vec<PieceId>) -> Result<DeletePiecesReply, Error> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let mut reply = DeletePiecesReply {
                deleted: 0,
                missing: 0,
            };
            for piece in pieces {
                if store.delete(piece)? {
                    reply.deleted += 1;
                } else {
                    reply.missing += 1;
                }
            }
            Ok(reply)
        })
        .await
        .map_err(join_error)?
    }
}

impl Service for ChunkService {
    async fn handle(&self, call: &mut Call) -> Result<(), Error> {
        match call.method() {
            WritePiece::ID => self.write(call).await,
            WritePieceStream::ID => {
                let msg: WritePieceStream = call.decode()?;
                self.check_token(&msg.token, msg.piece, Rights::WRITE)?;
                if !call.request_bulk().is_framed() {
                    return Err(Error::new(
                        ErrorCode::InvalidArgument,
                        "write_piece_stream carries framed bulk ending in a trailer",
                    ));
                }
                let info = self
                    .store_stream(msg.piece, msg.max_length, [0; 32], call.request_bulk())
                    .await?;
                call.respond(
                    &WritePieceReply {
                        length: info.length,
                    },
                    0,
                )
                .await
            }
            ReadPiece::ID => self.read(call).await,
            ReadRange::ID => self.read_range(call).await,
            VerifyPiece::ID => {
                let msg: VerifyPiece = call.decode()?;
                let reply = self.verify(msg).await?;
                call.respond(&reply, 0).await
            }
            DeletePieces::ID => {
                call.peer()
                    .require_role(&[Role::Meta], DeletePieces::NAME)?;
                let msg: DeletePieces = call.decode()?;
                let reply = self.delete(msg.pieces).await?;
                call.respond(&reply, 0).await
            }
            ListPieces::ID => {
                call.peer().require_role(&[Role::Meta], ListPieces::NAME)?;
                let msg: ListPieces = call.decode()?;
                let limit = msg.limit.clamp(1, INVENTORY_PAGE_MAX) as usize;
                let (pieces, more) = self.store.list(msg.after, limit);
                call.respond(&ListPiecesReply { pieces, more }, 0).await
            }
            SyncPieces::ID => {
                let msg: SyncPieces = call.decode()?;
                if msg.pieces.len() > SYNC_PIECES_MAX {
                    return Err(Error::new(
                        ErrorCode::TooBig,
                        format!(
                            "sync of {} pieces in one call; at most {SYNC_PIECES_MAX}",
                            msg.pieces.len()
                        ),
                    ));
                }
                let store = self.store.clone();
                let synced =
                    tokio::task::spawn_blocking(move || store.sync_pieces(Some(&msg.pieces)))
                        .await
                        .map_err(join_error)??;
                call.respond(
                    &SyncPiecesReply {
                        synced: synced as u32,
                    },
                    0,
                )
                .await
            }
            CopyPiece::ID => {
                call.peer().require_role(&[Role::Meta], CopyPiece::NAME)?;
                let msg: CopyPiece = call.decode()?;
                let info = self.jobs.copy_now(&msg).await?;
                call.respond(
                    &WritePieceReply {
                        length: info.length,
                    },
                    0,
                )
                .await
            }
            other => Err(Error::new(
                ErrorCode::UnknownMethod,
                format!("method {other} is not served by a chunkserver"),
            )),
        }
    }

    fn method_name(&self, method: u16) -> &'static str {
        match method {
            WritePiece::ID => WritePiece::NAME,
            WritePieceStream::ID => WritePieceStream::NAME,
            ReadPiece::ID => ReadPiece::NAME,
            ReadRange::ID => ReadRange::NAME,
            VerifyPiece::ID => VerifyPiece::NAME,
            DeletePieces::ID => DeletePieces::NAME,
            ListPieces::ID => ListPieces::NAME,
            CopyPiece::ID => CopyPiece::NAME,
            SyncPieces::ID => SyncPieces::NAME,
            _ => "unknown",
        }
    }
}

/// The end of a read of `length` bytes at `offset`, which must lie within
/// the piece.
fn read_end(reader: &PieceReader, offset: u64, length: u64) -> Result<u64, Error> {
    offset
        .checked_add(length)
        .filter(|end| *end <= reader.length())
        .ok_or_else(|| {
            Error::new(
                ErrorCode::OutOfRange,
                format!(
                    "read of {length} bytes at {offset} lies past the end of piece {} ({} bytes)",
                    reader.piece(),
                    reader.length()
                ),
            )
        })
}

/// The first block and the number of blocks covering `[offset, end)`.
fn blocks_of(offset: u64, end: u64, piece_length: u64) -> (u64, u64) {
    let first = offset / BLOCK_BYTES as u64;
    let end_block = end
        .div_ceil(BLOCK_BYTES as u64)
        .min(block_count(piece_length));
    (first, end_block.saturating_sub(first))
}

/// The part of a batch of whole blocks starting at block `first` that lies
/// within `[offset, end)`.
fn slice_batch(data: Vec<u8>, first: u64, offset: u64, end: u64) -> Bytes {
    let batch_start = first * BLOCK_BYTES as u64;
    let from = (offset.saturating_sub(batch_start) as usize).min(data.len());
    let to = (end.saturating_sub(batch_start) as usize).clamp(from, data.len());
    Bytes::from(data).slice(from..to)
}
