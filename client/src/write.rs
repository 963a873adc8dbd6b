//! The streaming file writer.
//!
//! Bytes an application writes go into the open chunk: under `replicas(N)`
//! the same bytes stream to N servers, under `ec(k, m)` each full stripe is
//! encoded here and its k + m cells stream to k + m servers. At most
//! `write_buffer_bytes` wait between the application and the chunkservers.
//! A chunk is sealed when full (64 MiB of data), when it carries too many
//! extents, or on [`FileWriter::flush`]; only once its pieces are sealed are
//! its extents committed to the metaserver, in write order. The next chunk
//! streams while the last one seals.
//!
//! Every write becomes an extent of the open chunk at the chunk's current
//! end, wherever it lands in the file, so overwrites and random writes
//! append to the chunk and never read old data back.
//!
//! Small files: while everything written ends within `inline_max_bytes`
//! and no chunk was opened, the bytes wait here, and the flush writes them
//! into the metaservers (`WriteInline`) in the same Raft entry as the new
//! size: no allocation, no chunkserver, no seal. A write past the limit, or
//! a file that already has chunk extents (`NotInline`), sends what waits to
//! a chunk as ordinary writes, in order.
//!
//! Failures (docs/client.md): a chunk keeps streaming while at least
//! [`min_live`] of its pieces are healthy. Below that the chunk is cut
//! there (sealed on the survivors, which hold every byte sent so far, and
//! committed) and the write goes on in a new chunk placed away from the
//! failed servers; pieces that failed are reported for repair. Only when
//! fewer pieces survive than the data needs (one replica, or k shards) is
//! the unsealed part of the chunk lost, and the writer fails.

use crate::client::Client;
use crate::pieces::{PieceMsg, PieceStream};
use crate::sync::{Unsynced, UnsyncedChunk};
use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use reed_solomon_erasure::galois_8::ReedSolomon;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::checksum::PieceHasher;
use tessera_proto::chunk::PieceTrailer;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, InodeId, NodeId, PieceId};
use tessera_proto::meta::{
    Attr, CHUNK_BYTES, ChunkPlacement, Extent, FILE_SIZE_MAX_BYTES, INLINE_MAX_BYTES, MetaOp,
    MetaReply, Policy, SetAttr,
};
use tessera_proto::stripe::Geometry;
use tokio::task::JoinHandle;

/// Bytes handed to replica streams at a time.
const SEND_UNIT_BYTES: usize = 256 * 1024;
/// How long the servers of a chunk get to fsync and acknowledge its seal.
const SEAL_TIMEOUT: Duration = Duration::from_secs(120);
/// Extents one commit may carry; a chunk with this many is sealed early so
/// its commit stays well below the header cap.
const EXTENTS_PER_CHUNK_MAX: usize = 512;
/// Chunks sealing in the background while the next one streams.
const SEALS_IN_FLIGHT: usize = 2;
/// Servers the writer remembers as failed, to keep new chunks off them.
const AVOID_MAX: usize = 16;

/// Healthy pieces a chunk needs to keep streaming: at least half of the
/// policy's redundancy must remain, so one failure under `replicas(3)` or
/// `ec(4,2)` goes unnoticed by the application while repair restores the
/// rest.
pub fn min_live(policy: Policy) -> usize {
    match policy {
        Policy::Replicas(n) => (n as usize + 2) / 2,
        Policy::Ec { data, parity } => data as usize + (parity as usize).div_ceil(2),
    }
}

/// Pieces without which a chunk's data is gone.
pub fn min_recoverable(policy: Policy) -> usize {
    match policy {
        Policy::Replicas(_) => 1,
        Policy::Ec { data, .. } => data as usize,
    }
}

enum Coding {
    Replicas {
        hasher: PieceHasher,
    },
    Ec {
        geometry: Geometry,
        coder: Arc<ReedSolomon>,
    },
}

/// Health of an open chunk after a push.
#[derive(Debug, PartialEq, Eq)]
enum Health {
    Good,
    /// Fewer than `min_live` pieces left: cut the chunk here.
    Cut,
    /// Fewer than `min_recoverable`: the unsealed data is gone.
    Lost,
}

/// The streams of one chunk being written.
struct ChunkSink {
    placement: ChunkPlacement,
    streams: Vec<PieceStream>,
    coding: Coding,
    /// Accepted bytes not yet handed to the streams.
    pending: BytesMut,
    /// Data bytes accepted into the chunk.
    accepted: u64,
    stall: Duration,
}

impl ChunkSink {
    fn open(client: &Arc<Client>, placement: ChunkPlacement) -> Result<ChunkSink, Error> {
        let policy = placement.policy;
        let width = policy.width();
        if placement.pieces.len() != width {
            return Err(Error::internal(format!(
                "placement of {} has {} pieces for policy {policy}",
                placement.chunk,
                placement.pieces.len()
            )));
        }
        let io = client.io();
        let coding = match policy {
            Policy::Replicas(_) => Coding::Replicas {
                hasher: PieceHasher::new(),
            },
            Policy::Ec { data, parity } => Coding::Ec {
                geometry: Geometry::new(data as usize, parity as usize),
                coder: Arc::new(ReedSolomon::new(data as usize, parity as usize).map_err(
                    |err| {
                        Error::new(
                            ErrorCode::InvalidArgument,
                            format!("policy {policy}: {err:?}"),
                        )
                    },
                )?),
            },
        };
        let unit = match &coding {
            Coding::Replicas { .. } => SEND_UNIT_BYTES as u64,
            Coding::Ec { geometry, .. } => {
                tessera_proto::stripe::CELL_BYTES.min(geometry.stripe_bytes())
            }
        };
        // The buffer is shared by the streams; each holds its share in cells.
        let capacity = (io.write_buffer_bytes / (unit * width as u64)).max(2) as usize;
        let streams = placement
            .pieces
            .iter()
            .map(|location| {
                let (max_length, hash) = match &coding {
                    Coding::Replicas { .. } => (CHUNK_BYTES, false),
                    Coding::Ec { geometry, .. } => (
                        geometry.piece_len(CHUNK_BYTES, location.index as usize),
                        true,
                    ),
                };
                PieceStream::start(client, &placement, location, max_length, hash, capacity)
            })
            .collect();
        Ok(ChunkSink {
            placement,
            streams,
            coding,
            pending: BytesMut::new(),
            accepted: 0,
            stall: Duration::from_millis(io.stall_timeout_ms),
        })
    }

    fn unit(&self) -> usize {
        match &self.coding {
            Coding::Replicas { .. } => SEND_UNIT_BYTES,
            Coding::Ec { geometry, .. } => geometry.stripe_bytes() as usize,
        }
    }

    fn live(&self) -> usize {
        self.streams.iter().filter(|s| s.is_live()).count()
    }

    fn health(&self) -> Health {
        let live = self.live();
        let policy = self.placement.policy;
        if live < min_recoverable(policy) {
            Health::Lost
        } else if live < min_live(policy) {
            Health::Cut
        } else {
            Health::Good
        }
    }

    fn failed_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.streams.iter().filter(|s| !s.is_live()).map(|s| s.node)
    }

    async fn push(&mut self, data: &[u8]) -> Health {
        self.pending.extend_from_slice(data);
        self.accepted += data.len() as u64;
        let unit = self.unit();
        while self.pending.len() >= unit {
            let part = self.pending.split_to(unit).freeze();
            self.dispatch(part).await;
            if self.health() != Health::Good {
                break;
            }
        }
        self.health()
    }

    /// Hands one unit (a stripe under EC) to the streams, all at once so
    /// that stalls time out together rather than one after another.
    async fn dispatch(&mut self, part: Bytes) {
        let stall = self.stall;
        match &mut self.coding {
            Coding::Replicas { hasher } => {
                hasher.update(&part);
                join_all(
                    self.streams
                        .iter_mut()
                        .map(|s| s.send(PieceMsg::Data(part.clone()), stall)),
                )
                .await;
            }
            Coding::Ec { geometry, coder } => {
                let cells = match encode_stripe(geometry, coder, &part) {
                    Ok(cells) => cells,
                    Err(err) => {
                        for stream in &mut self.streams {
                            stream.fail(err.clone());
                        }
                        return;
                    }
                };
                join_all(
                    self.streams
                        .iter_mut()
                        .zip(cells)
                        .filter(|(_, cell)| !cell.is_empty())
                        .map(|(s, cell)| s.send(PieceMsg::Data(cell), stall)),
                )
                .await;
            }
        }
    }

    /// Sends what is pending and seals every healthy piece. Returns the
    /// chunk's length and what the commit must say about its pieces.
    async fn seal(mut self) -> Result<SealedPieces, Error> {
        if !self.pending.is_empty() {
            let rest = self.pending.split().freeze();
            self.dispatch(rest).await;
        }
        let length = self.accepted;
        let stall = self.stall;
        match &mut self.coding {
            Coding::Replicas { hasher } => {
                let checksum = std::mem::take(hasher).finish().1;
                let trailer = PieceTrailer { length, checksum };
                join_all(
                    self.streams
                        .iter_mut()
                        .map(|s| s.send(PieceMsg::Seal(Some(trailer)), stall)),
                )
                .await;
            }
            Coding::Ec { .. } => {
                join_all(
                    self.streams
                        .iter_mut()
                        .map(|s| s.send(PieceMsg::Seal(None), stall)),
                )
                .await;
            }
        }
        let expected: Vec<u64> = (0..self.streams.len())
            .map(|index| match &self.coding {
                Coding::Replicas { .. } => length,
                Coding::Ec { geometry, .. } => geometry.piece_len(length, index),
            })
            .collect();
        let results = join_all(self.streams.iter_mut().map(|s| s.sealed(SEAL_TIMEOUT))).await;
        let mut lost = Vec::new();
        let mut checksums = Vec::new();
        let mut stored = Vec::new();
        let mut errors = Vec::new();
        for ((stream, result), want) in self.streams.iter_mut().zip(results).zip(expected) {
            match result {
                Ok(trailer) if trailer.length == want => {
                    checksums.push((stream.piece.index, trailer.checksum));
                    stored.push((stream.address.clone(), stream.piece));
                }
                Ok(trailer) => {
                    stream.fail(Error::new(
                        ErrorCode::LengthMismatch,
                        format!(
                            "piece {} sealed with {} bytes, expected {want}",
                            stream.piece, trailer.length
                        ),
                    ));
                    lost.push(stream.piece);
                }
                Err(err) => {
                    errors.push(format!("{} on node {}: {err}", stream.piece, stream.node));
                    lost.push(stream.piece);
                }
            }
        }
        let policy = self.placement.policy;
        let sealed = self.streams.len() - lost.len();
        if sealed < min_recoverable(policy) {
            return Err(Error::new(
                ErrorCode::Unavailable,
                format!(
                    "{} ({policy}): only {sealed} of {} pieces sealed, {} needed to keep its data ({}); write the data again",
                    self.placement.chunk,
                    self.streams.len(),
                    min_recoverable(policy),
                    errors.join("; ")
                ),
            ));
        }
        if !lost.is_empty() {
            tracing::warn!(chunk = %self.placement.chunk, ?lost, "chunk sealed with missing pieces; repair restores them");
        }
        Ok(SealedPieces {
            length,
            lost,
            checksums,
            stored,
            need: min_recoverable(policy),
        })
    }
}

/// What sealing a chunk left: its length, the pieces that did not make it
/// (reported for repair) and the checksum of every piece that did, as its
/// server sealed it (committed so repair can verify what it rebuilds).
struct SealedPieces {
    length: u64,
    lost: Vec<PieceId>,
    checksums: Vec<(u8, [u8; 32])>,
    /// Each sealed piece with its server's address, for a later sync.
    stored: Vec<(String, PieceId)>,
    /// Pieces without which the data is gone.
    need: usize,
}

/// Splits one stripe into its k data cells and encodes its m parity cells.
/// A short last stripe uses cells of `ceil(len / k)` bytes; its data cells
/// are sent unpadded and coded as if zero-padded.
fn encode_stripe(
    geometry: &Geometry,
    coder: &ReedSolomon,
    stripe: &Bytes,
) -> Result<Vec<Bytes>, Error> {
    let layout = geometry.stripe(stripe.len() as u64, 0);
    let cell = layout.cell as usize;
    let mut cells: Vec<Bytes> = (0..geometry.data)
        .map(|shard| {
            let (start, end) = layout.cell_range(shard);
            stripe.slice(start as usize..end as usize)
        })
        .collect();
    let padded: Vec<std::borrow::Cow<'_, [u8]>> = cells
        .iter()
        .map(|data| {
            if data.len() == cell {
                std::borrow::Cow::Borrowed(&data[..])
            } else {
                let mut owned = data.to_vec();
                owned.resize(cell, 0);
                std::borrow::Cow::Owned(owned)
            }
        })
        .collect();
    let mut parity = vec![vec![0u8; cell]; geometry.parity];
    coder
        .encode_sep(&padded, &mut parity)
        .map_err(|err| Error::internal(format!("erasure encode: {err:?}")))?;
    cells.extend(parity.into_iter().map(Bytes::from));
    Ok(cells)
}

struct OpenChunk {
    sink: ChunkSink,
    extents: Vec<Extent>,
    min_size: u64,
}

struct Sealed {
    chunk: ChunkId,
    pieces: SealedPieces,
    extents: Vec<Extent>,
    min_size: u64,
}

/// Runs of bytes one inline write may carry: each costs a few bytes of
/// framing, and the whole call must stay under the header cap.
const INLINE_RUNS_MAX: usize = 64;

/// Writes held back while the file may stay inline, as disjoint runs
/// (later bytes win where writes overlap), so rewrites do not pile up:
/// they never hold more than `limit` bytes.
struct InlineBuffer {
    limit: u64,
    runs: std::collections::BTreeMap<u64, Vec<u8>>,
}

impl InlineBuffer {
    /// Lays `data` over what waits, merging it with every run it overlaps
    /// or touches. `false` (and nothing changed) when the runs would be
    /// too many: the caller goes to chunks.
    fn put(&mut self, offset: u64, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        let end = offset + data.len() as u64;
        let touching: Vec<u64> = self
            .runs
            .range(..=end)
            .filter(|(start, run)| *start + run.len() as u64 >= offset)
            .map(|(start, _)| *start)
            .collect();
        if self.runs.len() + 1 - touching.len() > INLINE_RUNS_MAX {
            return false;
        }
        let (mut start, mut stop) = (offset, end);
        let mut parts = Vec::with_capacity(touching.len());
        for at in touching {
            if let Some(run) = self.runs.remove(&at) {
                start = start.min(at);
                stop = stop.max(at + run.len() as u64);
                parts.push((at, run));
            }
        }
        let mut merged = vec![0u8; (stop - start) as usize];
        for (at, run) in parts {
            let from = (at - start) as usize;
            merged[from..from + run.len()].copy_from_slice(&run);
        }
        let from = (offset - start) as usize;
        merged[from..from + data.len()].copy_from_slice(data);
        self.runs.insert(start, merged);
        true
    }
}

/// Writes one regular file. Not shared between tasks: a front end keeps one
/// per open file handle and serialises its calls.
pub struct FileWriter {
    client: Arc<Client>,
    ino: InodeId,
    /// `None` once this writer went to chunks (or was made without inline
    /// writes): the file then has extents, and inline writes would be
    /// refused.
    inline: Option<InlineBuffer>,
    open: Option<OpenChunk>,
    next: Option<JoinHandle<Result<ChunkPlacement, Error>>>,
    sealing: VecDeque<JoinHandle<Result<Sealed, Error>>>,
    avoid: Vec<NodeId>,
    failure: Option<Error>,
    written_end: u64,
    /// Chunks committed through this writer whose pieces may still wait
    /// for their servers' fsync.
    unsynced: Unsynced,
}

impl FileWriter {
    pub fn new(client: Arc<Client>, ino: InodeId) -> FileWriter {
        let limit = client.io().inline_max_bytes.min(INLINE_MAX_BYTES);
        FileWriter {
            client,
            ino,
            inline: (limit > 0).then(|| InlineBuffer {
                limit,
                runs: Default::default(),
            }),
            open: None,
            next: None,
            sealing: VecDeque::new(),
            avoid: Vec::new(),
            failure: None,
            written_end: 0,
            unsynced: Unsynced::default(),
        }
    }

    /// Takes the chunks committed so far whose pieces may not be on disk
    /// yet: what an `fsync` must wait for ([`Unsynced::sync`]).
    pub fn take_unsynced(&mut self) -> Unsynced {
        std::mem::take(&mut self.unsynced)
    }

    /// [`FileWriter::flush`], then every piece this writer sealed fsynced
    /// on its server: what `fsync` and a completed S3 upload return after.
    pub async fn flush_durable(&mut self) -> Result<(), Error> {
        self.flush().await?;
        self.take_unsynced().sync(&self.client).await
    }

    pub fn ino(&self) -> InodeId {
        self.ino
    }

    /// A writer that never keeps bytes inline: for files whose extents
    /// move to another file later (multipart parts, which a concat moves),
    /// since inline bytes cannot move.
    pub fn chunked(mut self) -> FileWriter {
        self.inline = None;
        self
    }

    /// End of the furthest byte written through this writer, committed or
    /// not: what the file's size will be at least once it is flushed.
    pub fn written_end(&self) -> u64 {
        self.written_end
    }

    /// Whether bytes wait to be flushed.
    pub fn is_dirty(&self) -> bool {
        self.open.is_some()
            || !self.sealing.is_empty()
            || self.inline.as_ref().is_some_and(|b| !b.runs.is_empty())
    }

    fn check(&self) -> Result<(), Error> {
        match &self.failure {
            Some(err) => Err(err.clone()),
            None => Ok(()),
        }
    }

    fn poison(&mut self, err: Error) -> Error {
        if self.failure.is_none() {
            self.failure = Some(err.clone());
        }
        self.open = None;
        self.inline = None;
        for task in self.sealing.drain(..) {
            task.abort();
        }
        err
    }

    /// Writes `data` at `offset`. Returns once the bytes are queued for
    /// their chunkservers; they are durable and visible after
    /// [`FileWriter::flush`].
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        self.check()?;
        offset
            .checked_add(data.len() as u64)
            .filter(|end| *end <= FILE_SIZE_MAX_BYTES)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::FileTooLarge,
                    format!(
                        "a write of {} bytes at {offset} passes the largest file size ({FILE_SIZE_MAX_BYTES} bytes)",
                        data.len()
                    ),
                )
            })?;
        let end = offset + data.len() as u64;
        if self.open.is_none()
            && self.sealing.is_empty()
            && let Some(buffer) = self.inline.as_mut()
            && end <= buffer.limit
            && buffer.put(offset, data)
        {
            self.written_end = self.written_end.max(end);
            return Ok(());
        }
        self.spill().await?;
        self.write_chunked(offset, data).await
    }

    /// Sends the writes held for an inline flush to chunks, in order; from
    /// here on this writer uses chunks only.
    async fn spill(&mut self) -> Result<(), Error> {
        let Some(buffer) = self.inline.take() else {
            return Ok(());
        };
        for (offset, data) in buffer.runs {
            self.write_chunked(offset, &data).await?;
        }
        Ok(())
    }

    async fn write_chunked(&mut self, offset: u64, data: &[u8]) -> Result<(), Error> {
        let mut done = 0usize;
        while done < data.len() {
            if self.open.is_none() {
                let opened = self.open_chunk().await;
                let sink = opened.map_err(|err| self.poison(err))?;
                self.open = Some(OpenChunk {
                    sink,
                    extents: Vec::new(),
                    min_size: 0,
                });
            }
            let Some(open) = self.open.as_mut() else {
                return Err(Error::internal("no open chunk"));
            };
            let room = (CHUNK_BYTES - open.sink.accepted) as usize;
            let take = room.min(data.len() - done);
            let file_offset = offset + done as u64;
            let chunk_offset = open.sink.accepted;
            match open.extents.last_mut() {
                Some(last)
                    if last.offset + last.length == file_offset
                        && last.chunk_offset + last.length == chunk_offset =>
                {
                    last.length += take as u64;
                }
                _ => open.extents.push(Extent {
                    offset: file_offset,
                    length: take as u64,
                    chunk: open.sink.placement.chunk,
                    chunk_offset,
                }),
            }
            open.min_size = open.min_size.max(file_offset + take as u64);
            let health = open.sink.push(&data[done..done + take]).await;
            done += take;
            self.written_end = self.written_end.max(file_offset + take as u64);
            let failed: Vec<NodeId> = open.sink.failed_nodes().collect();
            for node in failed {
                if !self.avoid.contains(&node) {
                    self.avoid.push(node);
                }
            }
            if self.avoid.len() > AVOID_MAX {
                let excess = self.avoid.len() - AVOID_MAX;
                self.avoid.drain(..excess);
            }
            let full =
                open.sink.accepted >= CHUNK_BYTES || open.extents.len() >= EXTENTS_PER_CHUNK_MAX;
            match health {
                Health::Lost => {
                    let chunk = open.sink.placement.chunk;
                    let errors: Vec<String> = open
                        .sink
                        .streams
                        .iter()
                        .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.piece)))
                        .collect();
                    return Err(self.poison(Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "too many chunkservers of {chunk} failed during the write ({}); bytes written since the last flush are not stored, write them again",
                            errors.join("; ")
                        ),
                    )));
                }
                Health::Cut => self.start_seal().await?,
                Health::Good if full => self.start_seal().await?,
                Health::Good => {
                    // Halfway to either limit, the next chunk is asked for in
                    // the background, so the write that fills this one does
                    // not wait for a metaserver round trip (small random
                    // writes fill a chunk by extents, long before its bytes).
                    let halfway = open.sink.accepted >= CHUNK_BYTES / 2
                        || open.extents.len() >= EXTENTS_PER_CHUNK_MAX / 2;
                    if halfway && self.next.is_none() {
                        self.next = Some(self.spawn_allocation());
                    }
                }
            }
        }
        Ok(())
    }

    fn spawn_allocation(&self) -> JoinHandle<Result<ChunkPlacement, Error>> {
        let client = self.client.clone();
        let ino = self.ino;
        let exclude = self.avoid.clone();
        tokio::spawn(async move { allocate(&client, ino, exclude).await })
    }

    async fn open_chunk(&mut self) -> Result<ChunkSink, Error> {
        let prefetched = match self.next.take() {
            Some(task) => task.await.ok().and_then(|r| r.ok()),
            None => None,
        };
        // A placement fetched before a server failed may name it.
        let placement = match prefetched {
            Some(p) if !p.pieces.iter().any(|l| self.avoid.contains(&l.node)) => p,
            _ => allocate(&self.client, self.ino, self.avoid.clone()).await?,
        };
        ChunkSink::open(&self.client, placement)
    }

    /// Seals the open chunk in the background; commits the oldest sealed
    /// chunks once too many are in flight.
    async fn start_seal(&mut self) -> Result<(), Error> {
        let Some(open) = self.open.take() else {
            return Ok(());
        };
        if open.sink.accepted == 0 {
            return Ok(());
        }
        let chunk = open.sink.placement.chunk;
        let OpenChunk {
            sink,
            extents,
            min_size,
        } = open;
        self.sealing.push_back(tokio::spawn(async move {
            let pieces = sink.seal().await?;
            Ok(Sealed {
                chunk,
                pieces,
                extents,
                min_size,
            })
        }));
        while self.sealing.len() > SEALS_IN_FLIGHT {
            self.commit_oldest().await?;
        }
        Ok(())
    }

    async fn commit_oldest(&mut self) -> Result<(), Error> {
        let Some(task) = self.sealing.pop_front() else {
            return Ok(());
        };
        let sealed = match task.await {
            Ok(Ok(sealed)) => sealed,
            Ok(Err(err)) => return Err(self.poison(err)),
            Err(join) => return Err(self.poison(Error::internal(format!("seal task: {join}")))),
        };
        if !sealed.pieces.lost.is_empty() {
            self.client.report(sealed.pieces.lost.clone()).await;
        }
        let commit = MetaOp::CommitExtents {
            ino: self.ino,
            extents: sealed.extents,
            chunk_lengths: vec![(sealed.chunk, sealed.pieces.length)],
            piece_checksums: sealed
                .pieces
                .checksums
                .iter()
                .map(|&(index, checksum)| (sealed.chunk, index, checksum))
                .collect(),
            min_size: sealed.min_size,
        };
        match self.client.meta().call(commit).await {
            Ok(_) => {
                self.unsynced.push(UnsyncedChunk {
                    chunk: sealed.chunk,
                    need: sealed.pieces.need,
                    pieces: sealed.pieces.stored,
                });
                Ok(())
            }
            Err(err) => {
                let err = Error::new(
                    err.code,
                    format!("commit of {} to the metaserver: {err}", sealed.chunk),
                );
                Err(self.poison(err))
            }
        }
    }

    /// Seals everything written so far and commits it: once this returns,
    /// the bytes survive the policy's failures and every reader sees them.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.flush_with(None).await.map(|_| ())
    }

    /// [`FileWriter::flush`], then the attribute changes `set` (in the same
    /// commit when the bytes are inline): what a close commits for a file
    /// whose setattrs were held back. Returns the attributes after both
    /// when a commit made them known.
    pub async fn flush_with(&mut self, set: Option<SetAttr>) -> Result<Option<Attr>, Error> {
        self.check()?;
        if let Some(buffer) = self.inline.as_mut()
            && !buffer.runs.is_empty()
        {
            let writes: Vec<(u64, Vec<u8>)> =
                std::mem::take(&mut buffer.runs).into_iter().collect();
            let min_size = writes
                .iter()
                .map(|(offset, data)| offset + data.len() as u64)
                .max()
                .unwrap_or(0);
            let op = MetaOp::WriteInline {
                ino: self.ino,
                writes: writes.clone(),
                min_size,
                set: set.clone().unwrap_or_default(),
            };
            match self.client.meta().call(op).await {
                Ok(MetaReply::Attr(attr)) => return Ok(Some(attr)),
                Ok(other) => {
                    return Err(
                        self.poison(Error::internal(format!("inline write answered {other:?}")))
                    );
                }
                Err(err) if err.code == ErrorCode::NotInline => {
                    if let Some(buffer) = self.inline.as_mut() {
                        buffer.runs = writes.into_iter().collect();
                    }
                    self.spill().await?;
                }
                Err(err) => {
                    let err = Error::new(
                        err.code,
                        format!("inline write of {} to the metaserver: {err}", self.ino),
                    );
                    return Err(self.poison(err));
                }
            }
        }
        self.start_seal().await?;
        while !self.sealing.is_empty() {
            self.commit_oldest().await?;
        }
        match set {
            Some(set) => {
                let reply = self
                    .client
                    .meta()
                    .call(MetaOp::SetAttr { ino: self.ino, set });
                match reply.await {
                    Ok(MetaReply::Attr(attr)) => Ok(Some(attr)),
                    Ok(other) => Err(Error::internal(format!("setattr answered {other:?}"))),
                    Err(err) => Err(err),
                }
            }
            None => Ok(None),
        }
    }
}

impl Drop for FileWriter {
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            next.abort();
        }
        for task in self.sealing.drain(..) {
            task.abort();
        }
    }
}

async fn allocate(
    client: &Client,
    ino: InodeId,
    exclude: Vec<NodeId>,
) -> Result<ChunkPlacement, Error> {
    match client
        .meta()
        .call(MetaOp::AllocateChunk { ino, exclude })
        .await?
    {
        MetaReply::Chunk(placement) => Ok(placement),
        other => Err(Error::internal(format!("allocation answered {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The runs held for an inline write are what the writes, in
        /// order, make of the bytes they cover: disjoint, never touching,
        /// and no byte the writes did not cover.
        #[test]
        fn inline_runs_match_the_writes(
            writes in proptest::collection::vec((0u64..4096, 0usize..600, any::<u8>()), 1..40)
        ) {
            let mut buffer = InlineBuffer { limit: 8192, runs: Default::default() };
            let mut model: Vec<Option<u8>> = vec![None; 8192];
            for (offset, len, seed) in writes {
                let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
                if !buffer.put(offset, &data) {
                    prop_assert!(buffer.runs.len() >= INLINE_RUNS_MAX);
                    continue;
                }
                for (i, byte) in data.iter().enumerate() {
                    model[offset as usize + i] = Some(*byte);
                }
            }
            let mut seen: Vec<Option<u8>> = vec![None; 8192];
            let mut last_end = None;
            for (start, run) in &buffer.runs {
                prop_assert!(!run.is_empty());
                if let Some(end) = last_end {
                    prop_assert!(*start > end, "runs touch or overlap");
                }
                for (i, byte) in run.iter().enumerate() {
                    seen[*start as usize + i] = Some(*byte);
                }
                last_end = Some(start + run.len() as u64);
            }
            prop_assert_eq!(seen, model);
        }
    }

    #[test]
    fn degraded_writes_keep_half_the_redundancy() {
        assert_eq!(min_live(Policy::Replicas(1)), 1);
        assert_eq!(min_live(Policy::Replicas(2)), 2);
        assert_eq!(min_live(Policy::Replicas(3)), 2);
        assert_eq!(min_live(Policy::Replicas(5)), 3);
        let ec = |data, parity| Policy::Ec { data, parity };
        assert_eq!(min_live(ec(4, 2)), 5);
        assert_eq!(min_live(ec(8, 4)), 10);
        assert_eq!(min_live(ec(4, 1)), 5);
        assert_eq!(min_recoverable(ec(4, 2)), 4);
    }

    #[test]
    fn a_short_stripe_is_coded_without_padding_its_data() {
        let geometry = Geometry::new(4, 2);
        let coder = ReedSolomon::new(4, 2).unwrap();
        let stripe = Bytes::from((0..10u8).collect::<Vec<_>>());
        let cells = encode_stripe(&geometry, &coder, &stripe).unwrap();
        let lengths: Vec<usize> = cells.iter().map(|c| c.len()).collect();
        assert_eq!(lengths, vec![3, 3, 3, 1, 3, 3]);
        // Any four cells give back the data.
        let mut shards: Vec<Option<Vec<u8>>> = cells
            .iter()
            .map(|c| {
                let mut v = c.to_vec();
                v.resize(3, 0);
                Some(v)
            })
            .collect();
        shards[0] = None;
        shards[2] = None;
        coder.reconstruct_data(&mut shards).unwrap();
        let joined: Vec<u8> = shards[..4].iter().flatten().flatten().copied().collect();
        assert_eq!(&joined[..10], &stripe[..]);
    }
}
