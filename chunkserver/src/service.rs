//! The data service on the RPC layer: write, read, delete, list and copy
//! pieces.
//!
//! Disk work never runs on the async workers: each write streams into a
//! blocking task through a bounded queue (so the network and the disk overlap
//! and a slow disk pushes back on its sender), and each read is produced by
//! a blocking task a few batches ahead of the sender. Each disk bounds its
//! own blocking work, so one slow disk stalls only the calls that need it.

use crate::store::{PieceWrite, Store};
use bytes::Bytes;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::checksum::{BLOCK_BYTES, block_count};
use tessera_proto::chunk::{
    CopyPiece, DeletePieces, DeletePiecesReply, INVENTORY_PAGE_MAX, ListPieces, ListPiecesReply,
    PieceInfo, PieceTrailer, ReadPiece, ReadPieceReply, WritePiece, WritePieceReply,
    WritePieceStream,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::PieceId;
use tessera_proto::rpc::{BulkReader, Call, CallOptions, Peer, RpcClient, Service};
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
/// Deadline for fetching a piece from another chunkserver during repair.
const COPY_TIMEOUT: Duration = Duration::from_secs(600);

pub struct ChunkService {
    store: Arc<Store>,
    token_key: TokenKey,
    client: RpcClient,
}

fn join_error(err: tokio::task::JoinError) -> Error {
    Error::internal(format!("disk task failed: {err}"))
}

enum WriteOp {
    Data(Bytes),
    /// Seal, first declaring the final length and checksum if the writer
    /// only learned them at the end.
    Seal(Option<PieceTrailer>),
}

impl ChunkService {
    pub fn new(store: Arc<Store>, token_key: TokenKey, client: RpcClient) -> ChunkService {
        ChunkService {
            store,
            token_key,
            client,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
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
        let metrics = self.store.metrics().clone();
        metrics.writes_in_flight.inc();
        let started = Instant::now();
        let result = async {
            let store = self.store.clone();
            let write: PieceWrite =
                tokio::task::spawn_blocking(move || store.begin_write(piece, length, checksum))
                    .await
                    .map_err(join_error)??;
            let disk = write.disk().clone();
            let _permit = disk
                .io_slots
                .acquire()
                .await
                .map_err(|_| Error::internal("disk slots closed"))?;
            let (tx, mut rx) = mpsc::channel::<WriteOp>(WRITE_QUEUE_DEPTH);
            let disk_task = tokio::task::spawn_blocking(move || {
                let mut write = write;
                while let Some(op) = rx.blocking_recv() {
                    match op {
                        WriteOp::Data(data) => write.append(&data)?,
                        WriteOp::Seal(trailer) => {
                            if let Some(trailer) = trailer {
                                write.declare(trailer.length, trailer.checksum)?;
                            }
                            return write.seal();
                        }
                    }
                }
                // The sender gave up: dropping the write removes the file.
                Err(Error::new(
                    ErrorCode::Cancelled,
                    format!("write of {piece} abandoned"),
                ))
            });
            let mut network_error = None;
            loop {
                match bulk.next().await {
                    Ok(Some(data)) => {
                        if tx.send(WriteOp::Data(data)).await.is_err() {
                            break;
                        }
                    }
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
                        match trailer {
                            Ok(trailer) => {
                                let _ = tx.send(WriteOp::Seal(trailer)).await;
                            }
                            Err(err) => network_error = Some(err),
                        }
                        break;
                    }
                    Err(err) => {
                        network_error = Some(err);
                        break;
                    }
                }
            }
            drop(tx);
            let sealed = disk_task.await.map_err(join_error)?;
            match (network_error, sealed) {
                (Some(err), _) => Err(err),
                (None, result) => result,
            }
        }
        .await;
        metrics.writes_in_flight.dec();
        if let Ok(info) = &result {
            metrics.bytes_written.inc_by(info.length);
            metrics.pieces_written.inc();
            metrics
                .write_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        result
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
        let store = self.store.clone();
        let piece = msg.piece;
        let (offset, length) = (msg.offset, msg.length);
        let (reader, block_hashes) = tokio::task::spawn_blocking(move || {
            let mut reader = store.open_reader(piece)?;
            let hashes = reader.hashes_for(offset, length)?;
            Ok::<_, Error>((reader, hashes))
        })
        .await
        .map_err(join_error)??;
        let piece_length = reader.length();
        let end = msg
            .offset
            .checked_add(msg.length)
            .filter(|end| *end <= piece_length);
        let Some(end) = end else {
            return Err(Error::new(
                ErrorCode::OutOfRange,
                format!(
                    "read of {} bytes at {} lies past the end of piece {piece} ({piece_length} bytes)",
                    msg.length, msg.offset
                ),
            ));
        };
        call.respond(
            &ReadPieceReply {
                piece_length,
                block_hashes,
            },
            msg.length,
        )
        .await?;
        if msg.length == 0 {
            return Ok(());
        }
        let disk = self.store.disk_of(piece).ok_or_else(|| {
            Error::new(
                ErrorCode::NotFound,
                format!("piece {piece} was deleted during the read"),
            )
        })?;
        let first_block = msg.offset / BLOCK_BYTES as u64;
        let end_block = end
            .div_ceil(BLOCK_BYTES as u64)
            .min(block_count(piece_length));
        let (tx, mut rx) = mpsc::channel::<Result<(u64, Vec<u8>), Error>>(READ_AHEAD_BATCHES);
        let permit = disk
            .io_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("disk slots closed"))?;
        let producer = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut reader = reader;
            let mut block = first_block;
            while block < end_block {
                let count = READ_BATCH_BLOCKS.min(end_block - block);
                let batch = reader.read_blocks(block, count).map(|data| (block, data));
                let failed = batch.is_err();
                if tx.blocking_send(batch).is_err() || failed {
                    return;
                }
                block += count;
            }
        });
        while let Some(batch) = rx.recv().await {
            let (block, data) = batch?;
            let batch_start = block * BLOCK_BYTES as u64;
            let from = msg.offset.saturating_sub(batch_start) as usize;
            let to = ((end - batch_start) as usize).min(data.len());
            let bytes = Bytes::from(data).slice(from..to);
            call.response_bulk()?.write_bytes(bytes).await?;
        }
        producer.await.map_err(join_error)?;
        Ok(())
    }

    /// Fetches a piece from another chunkserver and stores it here.
    pub async fn copy(&self, msg: &CopyPiece) -> Result<PieceInfo, Error> {
        if let Some(info) = self.store.info(msg.piece) {
            if info.checksum == msg.checksum {
                return Ok(info);
            }
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                format!("piece {} is stored here with another checksum", msg.piece),
            ));
        }
        let source = tokio::net::lookup_host(&msg.source)
            .await
            .ok()
            .and_then(|mut addrs| addrs.next())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("copy source {:?} is not an address", msg.source),
                )
            })?;
        let request = ReadPiece {
            piece: msg.piece,
            offset: 0,
            length: msg.length,
            token: msg.source_token,
        };
        let call = self
            .client
            .open(
                Peer::new(source, Role::Chunk),
                &request,
                0,
                CallOptions::with_timeout(COPY_TIMEOUT),
            )
            .await?;
        let mut response = call.finish().await?;
        if response.message.piece_length != msg.length {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "source holds {} bytes of {}, expected {}",
                    response.message.piece_length, msg.piece, msg.length
                ),
            ));
        }
        self.store_stream(msg.piece, msg.length, msg.checksum, response.bulk())
            .await
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
            CopyPiece::ID => {
                call.peer().require_role(&[Role::Meta], CopyPiece::NAME)?;
                let msg: CopyPiece = call.decode()?;
                let info = self.copy(&msg).await?;
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
            DeletePieces::ID => DeletePieces::NAME,
            ListPieces::ID => ListPieces::NAME,
            CopyPiece::ID => CopyPiece::NAME,
            _ => "unknown",
        }
    }
}
