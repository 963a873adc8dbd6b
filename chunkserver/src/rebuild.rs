//! The rebuild job: decode lost pieces of an erasure-coded chunk from `k`
//! survivors and seal each where the metaserver wants it (here, or streamed
//! to another chunkserver).
//!
//! The chunk is processed a run of [`RUN_STRIPES`] stripes at a time. A run
//! is one contiguous range of every piece (see `docs/erasure-coding.md`), so
//! each source is read with one verified range read per run, the run is
//! decoded on a blocking thread, and each target's share goes to its own
//! stream task through a short queue. Memory is therefore a few runs per
//! piece whatever the chunk size, reads of the next run overlap the writes
//! of the last one, and one slow target stalls the job only up to
//! [`TARGET_STALL`].
//!
//! A source that fails (unreachable, corrupt, wrong length) is replaced by
//! the next one listed and the run is read again from it; decoding does not
//! care which `k` pieces a stripe comes from. Every byte read is checked
//! against its block hash, and before anything is sealed each rebuilt
//! piece's checksum must equal the one the chunk map recorded: on any
//! mismatch no piece of the job is sealed (the inputs or the chunk map are
//! wrong, so even the targets without a recorded checksum are suspect), the
//! remote streams are reset and the local writes dropped.

use crate::jobs::RepairContext;
use crate::local_write::{LocalWrite, join_error};
use crate::remote::{self, RemoteWrite};
use crate::store::{PIECE_MAX_BYTES, Store};
use bytes::Bytes;
use reed_solomon_erasure::galois_8::ReedSolomon;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::checksum::{BLOCK_BYTES, PieceHasher, block_count};
use tessera_proto::chunk::{
    PieceInfo, PieceSource, PieceTarget, PieceTrailer, READ_VERIFIED_MAX_BYTES, RebuildPieces,
};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, PieceId};
use tessera_proto::stripe::{CELL_BYTES, Geometry};
use tessera_proto::token::Token;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

/// Stripes decoded per run: 8 full stripes are 2 MiB of each piece, so a
/// job holds at most `k + 5 * targets` runs (the sources' run, and per
/// target the decoded run, one queued, one in the stream's hands and, for a
/// local target, one queued for the disk and one being written) however
/// large its chunk, while each read is still large enough that the round
/// trip is noise.
pub const RUN_STRIPES: u64 = 8;
/// Runs queued per target between the decoder and the target's stream, and
/// between a local target's stream and its disk: one is enough to overlap
/// decoding with writing.
const TARGET_QUEUE_DEPTH: usize = 1;
/// A target that takes no bytes for this long is given up.
const TARGET_STALL: Duration = Duration::from_secs(60);
/// How long targets get to fsync and acknowledge their seal.
const SEAL_TIMEOUT: Duration = Duration::from_secs(120);

fn hex(bytes: &[u8; 32]) -> String {
    bytes[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The pure decoding step: the target pieces' bytes of a run of stripes
/// from the same run of `k` other pieces. No I/O, so it is tested alone.
pub struct RunDecoder {
    geometry: Geometry,
    chunk_length: u64,
    coder: ReedSolomon,
    targets: Vec<usize>,
    /// One cell per piece, reused from stripe to stripe.
    shards: Vec<(Vec<u8>, bool)>,
}

impl RunDecoder {
    pub fn new(
        geometry: Geometry,
        chunk_length: u64,
        targets: Vec<usize>,
    ) -> Result<RunDecoder, Error> {
        let coder = ReedSolomon::new(geometry.data, geometry.parity).map_err(|err| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "ec({}, {}) cannot be decoded: {err:?}",
                    geometry.data, geometry.parity
                ),
            )
        })?;
        for (i, target) in targets.iter().enumerate() {
            if *target >= geometry.width() {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "target piece {target} does not exist under ec({}, {})",
                        geometry.data, geometry.parity
                    ),
                ));
            }
            if targets[..i].contains(target) {
                return Err(Error::new(
                    ErrorCode::InvalidArgument,
                    format!("target piece {target} is listed twice"),
                ));
            }
        }
        Ok(RunDecoder {
            geometry,
            chunk_length,
            coder,
            targets,
            shards: vec![(Vec::new(), false); geometry.width()],
        })
    }

    pub fn stripe_count(&self) -> u64 {
        self.geometry.stripe_count(self.chunk_length)
    }

    /// Bytes `[from, to)` of piece `index` that stripes `[first, end)` fill.
    pub fn piece_range(&self, first: u64, end: u64, index: usize) -> (u64, u64) {
        let to = (end * CELL_BYTES).min(self.geometry.piece_len(self.chunk_length, index));
        ((first * CELL_BYTES).min(to), to)
    }

    /// Decodes stripes `[first, end)` of every target, in target order, from
    /// exactly `k` sources given as (piece index, the piece's bytes of
    /// [`RunDecoder::piece_range`]). Short cells of the last stripe are
    /// padded with zeros to decode, and data cells come out unpadded again,
    /// as the writer stored them.
    pub fn decode(
        &mut self,
        first: u64,
        end: u64,
        sources: &[(usize, &[u8])],
    ) -> Result<Vec<Vec<u8>>, Error> {
        let k = self.geometry.data;
        if sources.len() != k {
            return Err(Error::internal(format!(
                "decoding needs {k} sources, got {}",
                sources.len()
            )));
        }
        for (i, (index, bytes)) in sources.iter().enumerate() {
            if *index >= self.geometry.width()
                || self.targets.contains(index)
                || sources[..i].iter().any(|(other, _)| other == index)
            {
                return Err(Error::internal(format!(
                    "source piece {index} is out of range, a target, or repeated"
                )));
            }
            let (from, to) = self.piece_range(first, end, *index);
            if bytes.len() as u64 != to - from {
                return Err(Error::internal(format!(
                    "source piece {index} gave {} bytes for stripes {first}..{end}, expected {}",
                    bytes.len(),
                    to - from
                )));
            }
        }
        let mut outputs: Vec<Vec<u8>> = self
            .targets
            .iter()
            .map(|target| {
                let (from, to) = self.piece_range(first, end, *target);
                Vec::with_capacity((to - from) as usize)
            })
            .collect();
        let data_only = self.targets.iter().all(|target| *target < k);
        for index in first..end.min(self.stripe_count()) {
            let stripe = self.geometry.stripe(self.chunk_length, index);
            let cell = stripe.cell as usize;
            let at = ((index - first) * CELL_BYTES) as usize;
            for shard in &mut self.shards {
                shard.0.resize(cell, 0);
                shard.1 = false;
            }
            for (source, bytes) in sources {
                let end = (at + cell).min(bytes.len());
                let part = &bytes[at.min(end)..end];
                let shard = &mut self.shards[*source];
                shard.0[..part.len()].copy_from_slice(part);
                shard.0[part.len()..].fill(0);
                shard.1 = true;
            }
            let decoded = if data_only {
                self.coder.reconstruct_data(&mut self.shards)
            } else {
                self.coder.reconstruct(&mut self.shards)
            };
            decoded.map_err(|err| {
                Error::internal(format!("erasure decode of stripe {index}: {err:?}"))
            })?;
            for (output, target) in outputs.iter_mut().zip(&self.targets) {
                let len = if *target < k {
                    let (start, end) = stripe.cell_range(*target);
                    (end - start) as usize
                } else {
                    cell
                };
                output.extend_from_slice(&self.shards[*target].0[..len]);
            }
        }
        Ok(outputs)
    }
}

/// How a rebuild ended: the pieces it sealed (already sealed ones
/// included) and, if anything failed, why.
#[derive(Debug)]
pub struct RebuildOutcome {
    pub sealed: Vec<PieceInfo>,
    /// Bytes of the pieces this run sealed (not those found sealed).
    pub written_bytes: u64,
    pub error: Option<Error>,
}

/// A target still to be written.
struct TargetPlan {
    piece: PieceId,
    address: String,
    local: bool,
    length: u64,
    checksum: Option<[u8; 32]>,
}

enum TargetMsg {
    Data(Bytes),
    Seal(PieceTrailer),
}

/// The stream of one target piece: a task owning the local write or the
/// remote call, fed through a bounded queue.
struct TargetStream {
    plan: TargetPlan,
    tx: Option<mpsc::Sender<TargetMsg>>,
    task: Option<JoinHandle<Result<PieceInfo, Error>>>,
    error: Option<Error>,
}

impl TargetStream {
    fn start(ctx: &Arc<RepairContext>, plan: TargetPlan, token: Token) -> TargetStream {
        let (tx, rx) = mpsc::channel(TARGET_QUEUE_DEPTH);
        let task = tokio::spawn(write_target(
            ctx.clone(),
            plan.piece,
            plan.address.clone(),
            plan.local,
            plan.length,
            token,
            rx,
        ));
        TargetStream {
            plan,
            tx: Some(tx),
            task: Some(task),
            error: None,
        }
    }

    fn is_live(&self) -> bool {
        self.error.is_none()
    }

    fn describe(&self) -> String {
        if self.plan.local {
            format!("{} (here)", self.plan.piece)
        } else {
            format!("{} at {}", self.plan.piece, self.plan.address)
        }
    }

    /// Gives the piece up: a remote stream is reset, a local write dropped,
    /// so nothing of it is sealed.
    fn fail(&mut self, error: Error) {
        self.tx = None;
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if self.error.is_none() {
            tracing::warn!(piece = %self.plan.piece, target = %self.plan.address, error = %error, "giving up on a rebuilt piece");
            self.error = Some(error);
        }
    }

    async fn send(&mut self, msg: TargetMsg) {
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.send_timeout(msg, TARGET_STALL).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => {
                let error = Error::new(
                    ErrorCode::Timeout,
                    format!(
                        "{} took no bytes for {} s",
                        self.describe(),
                        TARGET_STALL.as_secs()
                    ),
                );
                self.fail(error);
            }
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                // The task ended early: it holds the reason.
                let error = self.join(Duration::from_secs(5)).await.err();
                self.fail(error.unwrap_or_else(|| {
                    Error::internal("target stream ended before its seal without an error")
                }));
            }
        }
    }

    async fn join(&mut self, timeout: Duration) -> Result<PieceInfo, Error> {
        let Some(task) = self.task.as_mut() else {
            return Err(self
                .error
                .clone()
                .unwrap_or_else(|| Error::internal("target stream already joined")));
        };
        let result = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(Error::internal(format!("target stream task: {join}"))),
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "{} was not sealed within {} s",
                    self.describe(),
                    timeout.as_secs()
                ),
            )),
        };
        self.task = None;
        result
    }
}

impl Drop for TargetStream {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

enum Sink {
    Local(LocalWrite),
    Remote(RemoteWrite),
}

async fn write_target(
    ctx: Arc<RepairContext>,
    piece: PieceId,
    address: String,
    local: bool,
    length: u64,
    token: Token,
    mut rx: mpsc::Receiver<TargetMsg>,
) -> Result<PieceInfo, Error> {
    let mut sink = if local {
        // The checksum is declared with the trailer, once it was compared
        // with the chunk map's.
        Sink::Local(
            LocalWrite::begin(&ctx.store, piece, length, [0; 32], TARGET_QUEUE_DEPTH).await?,
        )
    } else {
        let peer = remote::chunkserver(&address).await?;
        Sink::Remote(RemoteWrite::open(&ctx.client, peer, piece, length, token).await?)
    };
    while let Some(msg) = rx.recv().await {
        match msg {
            TargetMsg::Data(bytes) => match &mut sink {
                Sink::Local(write) => write.append(bytes).await?,
                Sink::Remote(write) => write.write(bytes).await?,
            },
            TargetMsg::Seal(trailer) => {
                return match sink {
                    Sink::Local(write) => write.seal(Some(trailer)).await,
                    Sink::Remote(write) => write.seal(trailer).await.map(|_| PieceInfo {
                        piece,
                        length: trailer.length,
                        checksum: trailer.checksum,
                    }),
                };
            }
        }
    }
    if let Sink::Local(write) = sink {
        write.abort().await;
    }
    Err(Error::new(
        ErrorCode::Cancelled,
        format!("rebuild of {piece} abandoned"),
    ))
}

/// Reads bytes `[from, to)` of a source piece: from this store when the
/// piece is here (verified block by block), otherwise from `address` with
/// verified range reads. Paced by the node's repair rate.
async fn read_source(
    ctx: Arc<RepairContext>,
    piece: PieceId,
    address: String,
    token: Token,
    piece_len: u64,
    from: u64,
    to: u64,
) -> Result<Bytes, Error> {
    if from == to {
        return Ok(Bytes::new());
    }
    ctx.throttle.take(to - from).await;
    if ctx.store.info(piece).is_some() {
        return read_local(&ctx.store, piece, piece_len, from, to).await;
    }
    let peer = remote::chunkserver(&address).await?;
    let mut parts = Vec::new();
    let mut at = from;
    while at < to {
        let length = READ_VERIFIED_MAX_BYTES.min(to - at);
        let (bytes, _) =
            remote::read_verified(&ctx.client, peer, piece, token, piece_len, at, length).await?;
        parts.push(bytes);
        at += length;
    }
    Ok(match parts.len() {
        1 => parts.pop().unwrap_or_default(),
        _ => Bytes::from(parts.concat()),
    })
}

async fn read_local(
    store: &Arc<Store>,
    piece: PieceId,
    piece_len: u64,
    from: u64,
    to: u64,
) -> Result<Bytes, Error> {
    let permit = store.read_slot(piece).await.map_err(|err| {
        if err.code == ErrorCode::NotFound {
            Error::new(
                ErrorCode::NotFound,
                format!("{piece} was deleted here during the rebuild"),
            )
        } else {
            err
        }
    })?;
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut reader = store.open_reader(piece)?;
        if reader.length() != piece_len {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "{piece} here has {} bytes; the chunk's length says {piece_len}",
                    reader.length()
                ),
            ));
        }
        let first = from / BLOCK_BYTES as u64;
        let data = reader.read_blocks(first, block_count(to) - first)?;
        Ok(Bytes::from(data))
    })
    .await
    .map_err(join_error)?
}

/// The sources being read: `k` active ones with distinct piece indexes,
/// and the rest in the order the metaserver listed them (pieces held here
/// first, as they cost no network).
struct Sources {
    active: Vec<PieceSource>,
    spare: VecDeque<PieceSource>,
    errors: Vec<String>,
}

impl Sources {
    fn new(store: &Store, chunk: ChunkId, listed: &[PieceSource], k: usize) -> Sources {
        let here = |source: &PieceSource| {
            store
                .info(PieceId {
                    chunk,
                    index: source.index,
                })
                .is_some()
        };
        let mut spare: VecDeque<PieceSource> = listed.iter().filter(|s| here(s)).cloned().collect();
        spare.extend(listed.iter().filter(|s| !here(s)).cloned());
        let mut sources = Sources {
            active: Vec::new(),
            spare,
            errors: Vec::new(),
        };
        while sources.active.len() < k {
            match sources.next_spare(None) {
                Some(next) => sources.active.push(next),
                None => break,
            }
        }
        sources
    }

    /// The first spare whose index no active source (but `slot`) has.
    fn next_spare(&mut self, slot: Option<usize>) -> Option<PieceSource> {
        let taken = |index: u8| {
            self.active
                .iter()
                .enumerate()
                .any(|(i, s)| Some(i) != slot && s.index == index)
        };
        let position = self.spare.iter().position(|s| !taken(s.index))?;
        self.spare.remove(position)
    }
}

/// Reads run `[first, end)` from every active source, replacing a failed
/// source with the next spare. Returns (piece index, bytes) per source.
async fn read_run(
    ctx: &Arc<RepairContext>,
    msg: &RebuildPieces,
    decoder: &RunDecoder,
    sources: &mut Sources,
    first: u64,
    end: u64,
) -> Result<Vec<(usize, Bytes)>, Error> {
    let geometry = Geometry::new(msg.data as usize, msg.parity as usize);
    let spawn =
        |set: &mut JoinSet<(usize, Result<Bytes, Error>)>, slot: usize, source: &PieceSource| {
            let index = source.index as usize;
            let (from, to) = decoder.piece_range(first, end, index);
            let piece = PieceId {
                chunk: msg.chunk,
                index: source.index,
            };
            let read = read_source(
                ctx.clone(),
                piece,
                source.address.clone(),
                msg.token,
                geometry.piece_len(msg.chunk_length, index),
                from,
                to,
            );
            set.spawn(async move { (slot, read.await) });
        };
    let mut set = JoinSet::new();
    for (slot, source) in sources.active.iter().enumerate() {
        spawn(&mut set, slot, source);
    }
    let mut bytes: Vec<Option<Bytes>> = vec![None; sources.active.len()];
    while let Some(joined) = set.join_next().await {
        let (slot, result) =
            joined.map_err(|err| Error::internal(format!("source read task: {err}")))?;
        match result {
            Ok(data) => bytes[slot] = Some(data),
            Err(err) => {
                let failed = &sources.active[slot];
                tracing::warn!(chunk = %msg.chunk, piece = failed.index, source = %failed.address, error = %err, "rebuild source failed; trying another");
                sources.errors.push(format!(
                    "piece {} at {}: {err}",
                    failed.index, failed.address
                ));
                let Some(next) = sources.next_spare(Some(slot)) else {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "fewer than {} pieces of {} are readable from the sources listed ({})",
                            msg.data,
                            msg.chunk,
                            sources.errors.join("; ")
                        ),
                    ));
                };
                sources.active[slot] = next;
                spawn(&mut set, slot, &sources.active[slot]);
            }
        }
    }
    sources
        .active
        .iter()
        .zip(bytes)
        .map(|(source, data)| {
            data.map(|data| (source.index as usize, data))
                .ok_or_else(|| Error::internal("a source read ended without bytes"))
        })
        .collect()
}

/// Checks a rebuild order before any byte moves.
fn check(msg: &RebuildPieces) -> Result<Geometry, Error> {
    let geometry = Geometry::new(msg.data as usize, msg.parity as usize);
    let invalid = |what: String| Error::new(ErrorCode::InvalidArgument, what);
    if msg.data == 0 || msg.parity == 0 {
        return Err(invalid(format!(
            "ec({}, {}) has nothing to rebuild from",
            msg.data, msg.parity
        )));
    }
    if msg.targets.is_empty() {
        return Err(invalid(format!("rebuild of {} names no target", msg.chunk)));
    }
    let largest = geometry.piece_len(msg.chunk_length, geometry.data);
    if largest > PIECE_MAX_BYTES {
        return Err(Error::new(
            ErrorCode::TooBig,
            format!(
                "{} of {} bytes makes pieces of {largest} bytes, above the {PIECE_MAX_BYTES}-byte limit",
                msg.chunk, msg.chunk_length
            ),
        ));
    }
    for source in &msg.sources {
        if source.index as usize >= geometry.width() {
            return Err(invalid(format!(
                "source piece {} does not exist under ec({}, {})",
                source.index, msg.data, msg.parity
            )));
        }
        if msg.targets.iter().any(|t| t.index == source.index) {
            return Err(invalid(format!(
                "piece {} of {} is both a source and a target",
                source.index, msg.chunk
            )));
        }
    }
    let mut distinct: Vec<u8> = msg.sources.iter().map(|s| s.index).collect();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < geometry.data {
        return Err(Error::new(
            ErrorCode::Unavailable,
            format!(
                "{} lists {} distinct source pieces; ec({}, {}) needs {}",
                msg.chunk,
                distinct.len(),
                msg.data,
                msg.parity,
                msg.data
            ),
        ));
    }
    Ok(geometry)
}

/// Runs a rebuild order to its end.
pub async fn rebuild(ctx: &Arc<RepairContext>, msg: &RebuildPieces) -> RebuildOutcome {
    let mut outcome = RebuildOutcome {
        sealed: Vec::new(),
        written_bytes: 0,
        error: None,
    };
    if let Err(err) = rebuild_inner(ctx, msg, &mut outcome).await {
        outcome.error = Some(Error::new(
            err.code,
            format!("rebuild of {}: {}", msg.chunk, err.message),
        ));
    }
    outcome
}

async fn rebuild_inner(
    ctx: &Arc<RepairContext>,
    msg: &RebuildPieces,
    outcome: &mut RebuildOutcome,
) -> Result<(), Error> {
    let geometry = check(msg)?;
    let mut failures: Vec<Error> = Vec::new();
    let mut plans = Vec::new();
    for target in &msg.targets {
        let PieceTarget {
            index,
            address,
            local,
            checksum,
        } = target;
        let piece = PieceId {
            chunk: msg.chunk,
            index: *index,
        };
        let length = geometry.piece_len(msg.chunk_length, *index as usize);
        if *local && let Some(info) = ctx.store.info(piece) {
            // Sealed by an earlier run of the same job.
            if info.length == length && checksum.is_none_or(|c| c == info.checksum) {
                outcome.sealed.push(info);
            } else {
                failures.push(Error::new(
                    ErrorCode::AlreadyExists,
                    format!(
                        "{piece} is stored here with {} bytes and checksum {}.., not the rebuilt piece; delete it first",
                        info.length,
                        hex(&info.checksum)
                    ),
                ));
            }
            continue;
        }
        plans.push(TargetPlan {
            piece,
            address: address.clone(),
            local: *local,
            length,
            checksum: *checksum,
        });
    }
    if plans.is_empty() {
        return combine(failures);
    }
    let mut decoder = RunDecoder::new(
        geometry,
        msg.chunk_length,
        plans.iter().map(|p| p.piece.index as usize).collect(),
    )?;
    let mut sources = Sources::new(&ctx.store, msg.chunk, &msg.sources, geometry.data);
    let mut streams: Vec<TargetStream> = plans
        .into_iter()
        .map(|plan| TargetStream::start(ctx, plan, msg.token))
        .collect();
    let mut hashers: Vec<PieceHasher> = streams.iter().map(|_| PieceHasher::new()).collect();
    let stripes = decoder.stripe_count();
    let mut first = 0;
    while first < stripes {
        let end = (first + RUN_STRIPES).min(stripes);
        let inputs = read_run(ctx, msg, &decoder, &mut sources, first, end).await?;
        let decoded = tokio::task::spawn_blocking(move || {
            let refs: Vec<(usize, &[u8])> = inputs.iter().map(|(i, b)| (*i, &b[..])).collect();
            let result = decoder.decode(first, end, &refs);
            if let Ok(outputs) = &result {
                for (hasher, output) in hashers.iter_mut().zip(outputs) {
                    hasher.update(output);
                }
            }
            (decoder, hashers, result)
        })
        .await
        .map_err(|err| Error::internal(format!("decode task: {err}")))?;
        decoder = decoded.0;
        hashers = decoded.1;
        let outputs = decoded.2?;
        for (stream, output) in streams.iter_mut().zip(outputs) {
            stream.send(TargetMsg::Data(Bytes::from(output))).await;
        }
        if !streams.iter().any(TargetStream::is_live) {
            break;
        }
        first = end;
    }
    let mut trailers = Vec::new();
    let mut mismatches = Vec::new();
    for (stream, hasher) in streams.iter().zip(hashers) {
        let length = hasher.total_bytes();
        let (_, checksum) = hasher.finish();
        if stream.is_live() && length != stream.plan.length {
            return Err(Error::internal(format!(
                "decoded {length} bytes of {}, expected {}",
                stream.plan.piece, stream.plan.length
            )));
        }
        if stream.is_live()
            && let Some(expected) = stream.plan.checksum
            && expected != checksum
        {
            mismatches.push(format!(
                "{} decodes to checksum {}.. but the chunk map recorded {}..",
                stream.plan.piece,
                hex(&checksum),
                hex(&expected)
            ));
        }
        trailers.push(PieceTrailer { length, checksum });
    }
    if !mismatches.is_empty() {
        let error = Error::new(
            ErrorCode::ChecksumMismatch,
            format!(
                "{}; none of the rebuilt pieces was sealed (check the sources and the chunk's recorded length)",
                mismatches.join("; ")
            ),
        );
        for stream in &mut streams {
            stream.fail(error.clone());
        }
        return Err(error);
    }
    for (stream, trailer) in streams.iter_mut().zip(trailers) {
        if !stream.is_live() {
            continue;
        }
        // Queue every seal before waiting for any, so targets fsync together.
        stream.send(TargetMsg::Seal(trailer)).await;
    }
    for stream in &mut streams {
        if let Some(error) = &stream.error {
            failures.push(Error::new(
                error.code,
                format!("{}: {}", stream.describe(), error.message),
            ));
            continue;
        }
        stream.tx = None;
        match stream.join(SEAL_TIMEOUT).await {
            Ok(info) => {
                outcome.written_bytes += info.length;
                outcome.sealed.push(info);
            }
            Err(error) => failures.push(Error::new(
                error.code,
                format!("{}: {}", stream.describe(), error.message),
            )),
        }
    }
    combine(failures)
}

/// One error naming every failure, with the first one's code.
fn combine(failures: Vec<Error>) -> Result<(), Error> {
    match failures.first() {
        None => Ok(()),
        Some(first) => Err(Error::new(
            first.code,
            failures
                .iter()
                .map(|e| e.message.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobRunner;
    use crate::testing::{self, encode_chunk, files_in, pattern};
    use tessera_proto::checksum::checksum_of;

    const MIB: usize = 1024 * 1024;

    /// Decodes `targets` from `sources` a run of `run` stripes at a time.
    fn decode_all(
        geometry: Geometry,
        pieces: &[Vec<u8>],
        len: u64,
        sources: &[usize],
        targets: &[usize],
        run: u64,
    ) -> Vec<Vec<u8>> {
        let mut decoder = RunDecoder::new(geometry, len, targets.to_vec()).unwrap();
        let mut out = vec![Vec::new(); targets.len()];
        let stripes = decoder.stripe_count();
        let mut first = 0;
        while first < stripes {
            let end = (first + run).min(stripes);
            let inputs: Vec<(usize, &[u8])> = sources
                .iter()
                .map(|&i| {
                    let (from, to) = decoder.piece_range(first, end, i);
                    (i, &pieces[i][from as usize..to as usize])
                })
                .collect();
            for (all, part) in out
                .iter_mut()
                .zip(decoder.decode(first, end, &inputs).unwrap())
            {
                all.extend_from_slice(&part);
            }
            first = end;
        }
        out
    }

    #[test]
    fn lost_pieces_decode_byte_exact_at_awkward_lengths() {
        let geometry = Geometry::new(4, 2);
        for len in [
            3 * MIB + 12345,
            0,
            5,
            1,
            MIB,
            9 * MIB + 1,
            4 * 256 * 1024 + 3,
        ] {
            let chunk = pattern(len as u64, len);
            let pieces = encode_chunk(geometry, &chunk);
            let losses: [&[usize]; 5] = [&[1, 4], &[0, 1], &[4, 5], &[2, 3], &[3]];
            for lost in losses {
                let sources: Vec<usize> = (0..6).filter(|i| !lost.contains(i)).take(4).collect();
                for run in [1, 3, RUN_STRIPES] {
                    let rebuilt = decode_all(geometry, &pieces, len as u64, &sources, lost, run);
                    for (target, bytes) in lost.iter().zip(&rebuilt) {
                        assert!(
                            *bytes == pieces[*target],
                            "len {len}, lost {lost:?}, run {run}: piece {target} differs"
                        );
                        assert_eq!(checksum_of(bytes), checksum_of(&pieces[*target]));
                    }
                }
            }
        }
    }

    #[test]
    fn other_geometries_decode_too() {
        for (k, m) in [(1, 1), (2, 1), (6, 3), (8, 4)] {
            let geometry = Geometry::new(k, m);
            let len = 2 * MIB + 777;
            let chunk = pattern(k as u64, len);
            let pieces = encode_chunk(geometry, &chunk);
            // Lose the first m pieces (data), decode from the rest.
            let lost: Vec<usize> = (0..m).collect();
            let sources: Vec<usize> = (m..k + m).collect();
            let rebuilt = decode_all(geometry, &pieces, len as u64, &sources, &lost, RUN_STRIPES);
            for (target, bytes) in lost.iter().zip(&rebuilt) {
                assert!(*bytes == pieces[*target], "ec({k},{m}) piece {target}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let geometry = Geometry::new(4, 2);
        assert!(RunDecoder::new(geometry, 10, vec![6]).is_err());
        assert!(RunDecoder::new(geometry, 10, vec![1, 1]).is_err());
        let mut decoder = RunDecoder::new(geometry, 10, vec![1]).unwrap();
        let cell = [0u8; 3];
        // Too few sources, a target as a source, a wrong length.
        assert!(decoder.decode(0, 1, &[(0, &cell), (2, &cell)]).is_err());
        assert!(
            decoder
                .decode(0, 1, &[(0, &cell), (1, &cell), (2, &cell), (4, &cell)])
                .is_err()
        );
        assert!(
            decoder
                .decode(0, 1, &[(0, &cell), (2, &cell), (3, &cell[..2]), (4, &cell)])
                .is_err()
        );
    }

    struct Fixture {
        dir: tempfile::TempDir,
        runner: Arc<JobRunner>,
        pieces: Vec<Vec<u8>>,
        len: u64,
        chunk: ChunkId,
    }

    impl Fixture {
        /// A store holding pieces `held` of an ec(4, 2) chunk of an
        /// awkward length.
        fn new(held: &[usize]) -> Fixture {
            Fixture::with_length(held, 3 * MIB as u64 + 12345)
        }

        fn with_length(held: &[usize], len: u64) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = testing::store(&dir.path().join("disk"));
            let pieces = encode_chunk(Geometry::new(4, 2), &pattern(7, len as usize));
            let chunk = ChunkId(0xc0ffee);
            for &index in held {
                testing::write(&store, Self::id(chunk, index), &pieces[index]);
            }
            let runner = testing::runner(store, dir.path());
            Fixture {
                dir,
                runner,
                pieces,
                len,
                chunk,
            }
        }

        fn id(chunk: ChunkId, index: usize) -> PieceId {
            PieceId {
                chunk,
                index: index as u8,
            }
        }

        fn piece(&self, index: usize) -> PieceId {
            Self::id(self.chunk, index)
        }

        fn store(&self) -> &Arc<Store> {
            &self.runner.context().store
        }

        fn order(
            &self,
            job: u64,
            sources: &[usize],
            targets: &[(usize, Option<[u8; 32]>)],
        ) -> RebuildPieces {
            RebuildPieces {
                job,
                chunk: self.chunk,
                data: 4,
                parity: 2,
                chunk_length: self.len,
                // Never dialled: every source is held here.
                sources: sources
                    .iter()
                    .map(|&index| PieceSource {
                        index: index as u8,
                        address: "127.0.0.1:9".into(),
                    })
                    .collect(),
                targets: targets
                    .iter()
                    .map(|&(index, checksum)| PieceTarget {
                        index: index as u8,
                        address: String::new(),
                        local: true,
                        checksum,
                    })
                    .collect(),
                token: testing::token(self.piece(0)),
            }
        }

        async fn no_temporaries(&self) {
            for _ in 0..100 {
                if files_in(&self.dir.path().join("disk"), "tmp") == 0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("a dropped rebuild left a temporary file");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_checksum_mismatch_seals_nothing_and_a_match_seals_all() {
        let f = Fixture::new(&[0, 2, 3, 5]);
        let ctx = f.runner.context().clone();
        let good = |i: usize| Some(checksum_of(&f.pieces[i]));
        let bad = f.order(1, &[0, 2, 3, 5], &[(1, good(1)), (4, Some([9; 32]))]);
        let outcome = rebuild(&ctx, &bad).await;
        let error = outcome.error.expect("a mismatch must fail the job");
        assert_eq!(error.code, ErrorCode::ChecksumMismatch, "{error}");
        assert!(error.message.contains(&f.piece(4).to_string()), "{error}");
        assert!(outcome.sealed.is_empty());
        assert!(f.store().info(f.piece(1)).is_none(), "piece 1 was sealed");
        assert!(f.store().info(f.piece(4)).is_none(), "piece 4 was sealed");
        f.no_temporaries().await;

        // One target checked against the chunk map, one without a record.
        let order = f.order(2, &[0, 2, 3, 5], &[(1, good(1)), (4, None)]);
        let outcome = rebuild(&ctx, &order).await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.sealed.len(), 2);
        assert_eq!(
            outcome.written_bytes,
            (f.pieces[1].len() + f.pieces[4].len()) as u64
        );
        for (info, index) in outcome.sealed.iter().zip([1, 4]) {
            assert_eq!(info.piece, f.piece(index));
            assert_eq!(info.length, f.pieces[index].len() as u64);
            assert_eq!(info.checksum, checksum_of(&f.pieces[index]));
            assert!(testing::read(f.store(), info.piece) == f.pieces[index]);
        }
        // The seals show up as inventory changes for the next heartbeat.
        let added: Vec<PieceId> = f
            .store()
            .take_changes(10)
            .added
            .iter()
            .map(|i| i.piece)
            .collect();
        assert!(added.contains(&f.piece(1)) && added.contains(&f.piece(4)));

        // Sent again: the pieces are there, nothing is written.
        let outcome = rebuild(&ctx, &order).await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert_eq!(outcome.sealed.len(), 2);
        assert_eq!(outcome.written_bytes, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_source_is_replaced_by_a_spare() {
        // Pieces of more than one run, so the source fails mid-job.
        let f = Fixture::with_length(&[0, 2, 3, 4, 5], 9 * MIB as u64 + 12345);
        // Damage piece 0 in its second run, after the first was read.
        let path = f
            .dir
            .path()
            .join("disk/pieces")
            .join(format!("{:02x}", f.chunk.0 & 0xff))
            .join(format!("{:016x}.0", f.chunk.0));
        let mut bytes = std::fs::read(&path).unwrap();
        let offset =
            crate::store::HEADER_BYTES as usize + ((RUN_STRIPES + 1) * CELL_BYTES) as usize + 5;
        bytes[offset] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let order = f.order(3, &[0, 2, 3, 4, 5], &[(1, Some(checksum_of(&f.pieces[1])))]);
        let outcome = rebuild(f.runner.context(), &order).await;
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        assert!(testing::read(f.store(), f.piece(1)) == f.pieces[1]);
        assert!(
            f.store().info(f.piece(0)).is_none(),
            "the corrupt source stays"
        );
        assert_eq!(f.store().take_corrupt(10), vec![f.piece(0)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn too_few_sources_fail_with_the_reasons() {
        let f = Fixture::new(&[0, 2, 3]);
        let order = f.order(4, &[0, 2, 3], &[(1, None)]);
        let error = rebuild(f.runner.context(), &order).await.error.unwrap();
        assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
        // Listed, but not held anywhere reachable: the read fails, no spare.
        let mut order = f.order(5, &[0, 2, 3, 4], &[(1, None)]);
        order.sources[3].address = "nowhere".into();
        let error = rebuild(f.runner.context(), &order).await.error.unwrap();
        assert_eq!(error.code, ErrorCode::Unavailable, "{error}");
        assert!(error.message.contains("piece 4 at nowhere"), "{error}");
        assert!(f.store().info(f.piece(1)).is_none());
        f.no_temporaries().await;
    }
}
