//! The file reader.
//!
//! A read maps its range through the file's extents (cached from the
//! metaserver with their read tokens) to chunk ranges, and each chunk range
//! to pieces: one replica, chosen by how many reads this process already has
//! in flight on each server, or the k data shards of the stripes it covers.
//! Every block is checked against its hash. A replica that fails or times out
//! is skipped for the next; a data shard that fails is rebuilt from the
//! others and parity. Pieces found bad are reported for repair.
//!
//! Sequential reads are served from windows of [`WINDOW_BYTES`] fetched in
//! parallel, `readahead_bytes` ahead of the application; a random read
//! fetches only what it asks for.

use crate::client::Client;
use crate::pieces::{piece_is_bad, read_piece};
use bytes::Bytes;
use futures_util::future::join_all;
use reed_solomon_erasure::galois_8::ReedSolomon;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{ChunkId, InodeId, PieceId};
use tessera_proto::meta::{ChunkPlacement, Extent, LAYOUT_EXTENTS_MAX, MetaOp, MetaReply, Policy};
use tessera_proto::stripe::Geometry;
use tokio::task::JoinHandle;

/// Unit of sequential reading and readahead.
pub const WINDOW_BYTES: u64 = 4 * 1024 * 1024;
/// File range one layout request asks for.
const LAYOUT_SPAN_BYTES: u64 = 1024 * 1024 * 1024;
/// File range an `OpenRead` should ask the layout of.
pub const OPEN_LAYOUT_BYTES: u64 = LAYOUT_SPAN_BYTES;
/// Layouts are fetched again after this long, well before their read
/// tokens (ten minutes) expire.
const LAYOUT_MAX_AGE: Duration = Duration::from_secs(240);
/// Spans of layout one reader keeps: random reads over a file of up to
/// this many spans (8 GiB) make no layout call once each span is known,
/// where one span alone made every read in another half of a 2 GiB file
/// ask the metaserver again.
const LAYOUT_SPANS_KEPT: usize = 8;

struct Layout {
    start: u64,
    end: u64,
    /// The file's inline bytes: what no extent covers reads from here.
    inline: Bytes,
    fetched: Instant,
    extents: Vec<Extent>,
    chunks: HashMap<ChunkId, Arc<ChunkPlacement>>,
}

/// A run of a read: file bytes `[offset, offset + length)` are chunk bytes
/// at `chunk_offset`, or a hole when `chunk` is `None`.
struct Segment {
    offset: u64,
    length: u64,
    chunk: Option<(Arc<ChunkPlacement>, u64)>,
}

enum Window {
    Pending(JoinHandle<Result<Bytes, Error>>),
    Ready(Bytes),
}

/// Reads one regular file as of when it was opened (close-to-open: a
/// reader opened after a writer's flush sees its bytes).
pub struct FileReader {
    client: Arc<Client>,
    ino: InodeId,
    size: u64,
    /// Newest last; at most [`LAYOUT_SPANS_KEPT`].
    layouts: Vec<Layout>,
    windows: BTreeMap<u64, Window>,
    next_offset: u64,
    /// Readahead stops here (see [`FileReader::read_ahead_until`]).
    ahead_limit: u64,
    /// A layout page came back full: the file has many small extents (left
    /// by random writes), so layouts are asked for the range a read needs,
    /// not a whole span. A span's 512 extents, each with its placement and
    /// token, cost the metaserver milliseconds per random read.
    fragmented: bool,
}

impl FileReader {
    /// Bounds readahead at `end`: the caller reads no further (an S3 ranged
    /// GET). Without it, each 8 MiB part of a parallel download fetched the
    /// 64 MiB after it as well, nine times the bytes asked for.
    pub fn read_ahead_until(&mut self, end: u64) {
        self.ahead_limit = end;
    }

    pub async fn open(client: Arc<Client>, ino: InodeId) -> Result<FileReader, Error> {
        let mut reader = FileReader {
            client,
            ino,
            size: 0,
            layouts: Vec::new(),
            windows: BTreeMap::new(),
            next_offset: 0,
            ahead_limit: u64::MAX,
            fragmented: false,
        };
        reader.fetch_layout(0, WINDOW_BYTES).await?;
        Ok(reader)
    }

    /// A reader over the layout an `OpenRead` answered with (asked for
    /// [`OPEN_LAYOUT_BYTES`]), so the first read makes no layout call. A
    /// layout cut short by the extent cap covers up to its last extent.
    pub async fn opened(
        client: Arc<Client>,
        ino: InodeId,
        layout: MetaReply,
    ) -> Result<FileReader, Error> {
        let MetaReply::Layout {
            size,
            inline,
            extents,
            chunks,
        } = layout
        else {
            return Err(Error::internal(format!("open answered {layout:?}")));
        };
        let fragmented = extents.len() >= LAYOUT_EXTENTS_MAX;
        let end = match extents.last() {
            Some(last) if fragmented => last.offset + last.length,
            _ => OPEN_LAYOUT_BYTES,
        };
        Ok(FileReader {
            client,
            ino,
            size,
            layouts: vec![Layout {
                start: 0,
                end,
                inline: Bytes::from(inline),
                fetched: Instant::now(),
                extents,
                chunks: chunks
                    .into_iter()
                    .map(|placement| (placement.chunk, Arc::new(placement)))
                    .collect(),
            }],
            windows: BTreeMap::new(),
            next_offset: 0,
            ahead_limit: u64::MAX,
            fragmented,
        })
    }

    pub fn ino(&self) -> InodeId {
        self.ino
    }

    /// The file's size when its layout was last fetched.
    pub fn size(&self) -> u64 {
        self.size
    }

    async fn fetch_layout(&mut self, start: u64, end: u64) -> Result<(), Error> {
        let want_end = match self.fragmented {
            true => end,
            false => end.max(start.saturating_add(LAYOUT_SPAN_BYTES)),
        };
        let mut extents = Vec::new();
        let mut chunks = HashMap::new();
        let mut inline_bytes;
        let mut at = start;
        let covered_end = loop {
            let reply = self
                .client
                .meta()
                .call(MetaOp::GetLayout {
                    ino: self.ino,
                    offset: at,
                    length: want_end - at,
                })
                .await?;
            let MetaReply::Layout {
                size,
                inline,
                extents: page,
                chunks: placements,
            } = reply
            else {
                return Err(Error::internal(format!("layout answered {reply:?}")));
            };
            self.size = size;
            inline_bytes = Bytes::from(inline);
            let full = page.len() >= LAYOUT_EXTENTS_MAX;
            self.fragmented |= full;
            let page_end = page.last().map(|e| e.offset + e.length).unwrap_or(at);
            extents.extend(page);
            for placement in placements {
                chunks.insert(placement.chunk, Arc::new(placement));
            }
            if !full {
                break want_end;
            }
            if page_end >= end {
                break page_end;
            }
            at = page_end;
        };
        // The file's size and inline bytes are as of this answer: older
        // spans may disagree, so only this one is kept if they do.
        let layout = Layout {
            start,
            end: covered_end,
            inline: inline_bytes,
            fetched: Instant::now(),
            extents,
            chunks,
        };
        self.layouts
            .retain(|kept| kept.inline == layout.inline && kept.fetched.elapsed() < LAYOUT_MAX_AGE);
        if self.layouts.len() >= LAYOUT_SPANS_KEPT {
            self.layouts.remove(0);
        }
        self.layouts.push(layout);
        Ok(())
    }

    /// The segments of file range `[start, end)`, and the inline bytes
    /// under them.
    async fn plan(&mut self, start: u64, end: u64) -> Result<(Vec<Segment>, Bytes), Error> {
        let covers =
            |l: &Layout| l.start <= start && end <= l.end && l.fetched.elapsed() < LAYOUT_MAX_AGE;
        if !self.layouts.iter().any(covers) {
            self.fetch_layout(start, end).await?;
        }
        let Some(layout) = self.layouts.iter().rev().find(|l| covers(l)) else {
            return Err(Error::internal("layout missing"));
        };
        let mut segments = Vec::new();
        let mut at = start;
        let first = layout
            .extents
            .partition_point(|e| e.offset + e.length <= start);
        for extent in &layout.extents[first..] {
            if at >= end || extent.offset >= end {
                break;
            }
            if extent.offset > at {
                segments.push(Segment {
                    offset: at,
                    length: extent.offset - at,
                    chunk: None,
                });
                at = extent.offset;
            }
            let to = (extent.offset + extent.length).min(end);
            let placement = layout.chunks.get(&extent.chunk).cloned().ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!(
                        "{} of inode {} is gone (the file changed during the read); open it again",
                        extent.chunk, self.ino
                    ),
                )
            })?;
            segments.push(Segment {
                offset: at,
                length: to - at,
                chunk: Some((placement, extent.chunk_offset + (at - extent.offset))),
            });
            at = to;
        }
        if at < end {
            segments.push(Segment {
                offset: at,
                length: end - at,
                chunk: None,
            });
        }
        Ok((segments, layout.inline.clone()))
    }

    async fn spawn_window(&mut self, index: u64) -> Result<(), Error> {
        if self.windows.contains_key(&index) {
            return Ok(());
        }
        let start = index * WINDOW_BYTES;
        let end = (start + WINDOW_BYTES).min(self.size);
        let (segments, inline) = self.plan(start, end).await?;
        let client = self.client.clone();
        let task = tokio::spawn(async move { fetch(&client, start, end, segments, inline).await });
        self.windows.insert(index, Window::Pending(task));
        Ok(())
    }

    async fn window(&mut self, index: u64) -> Result<Bytes, Error> {
        self.spawn_window(index).await?;
        let Some(window) = self.windows.remove(&index) else {
            return Err(Error::internal("window vanished"));
        };
        let bytes = match window {
            Window::Ready(bytes) => bytes,
            Window::Pending(task) => task
                .await
                .map_err(|join| Error::internal(format!("read task: {join}")))??,
        };
        self.windows.insert(index, Window::Ready(bytes.clone()));
        Ok(bytes)
    }

    /// Reads up to `length` bytes at `offset`; fewer only at the end of the
    /// file.
    pub async fn read(&mut self, offset: u64, length: u64) -> Result<Bytes, Error> {
        let end = offset.saturating_add(length).min(self.size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let first = offset / WINDOW_BYTES;
        let last = (end - 1) / WINDOW_BYTES;
        // The kernel sends a mount's readahead as several requests at once,
        // and they reach here in any order: a read of the window just
        // behind the newest, or just past the furthest, is still the
        // sequential stream, not a jump that should drop every window
        // fetched ahead (measured: a mount's sequential read fetched each
        // byte several times over when it did).
        let near = match (self.windows.keys().next(), self.windows.keys().next_back()) {
            (Some(low), Some(high)) => first + 1 >= *low && first <= high + 1,
            _ => false,
        };
        let sequential = offset == self.next_offset || near;
        self.next_offset = end;
        if !sequential {
            self.windows.clear();
            let (segments, inline) = self.plan(offset, end).await?;
            return fetch(&self.client, offset, end, segments, inline).await;
        }
        let ahead = (self.client.io().readahead_bytes / WINDOW_BYTES).max(1);
        let stop = self
            .size
            .min(self.ahead_limit.max(end))
            .div_ceil(WINDOW_BYTES);
        for index in first..(last + 1 + ahead).min(stop) {
            self.spawn_window(index).await?;
        }
        // One window behind the read is kept for requests that arrive late.
        let stale: Vec<u64> = self
            .windows
            .range(..first.saturating_sub(1))
            .map(|(i, _)| *i)
            .collect();
        for index in stale {
            if let Some(Window::Pending(task)) = self.windows.remove(&index) {
                task.abort();
            }
        }
        if first == last {
            let bytes = self.window(first).await?;
            let from = (offset - first * WINDOW_BYTES) as usize;
            return Ok(bytes.slice(from..from + (end - offset) as usize));
        }
        let mut out = Vec::with_capacity((end - offset) as usize);
        for index in first..=last {
            let bytes = self.window(index).await?;
            let base = index * WINDOW_BYTES;
            let from = offset.max(base) - base;
            let to = end.min(base + bytes.len() as u64) - base;
            out.extend_from_slice(&bytes[from as usize..to as usize]);
        }
        Ok(Bytes::from(out))
    }
}

impl Drop for FileReader {
    fn drop(&mut self) {
        for window in self.windows.values() {
            if let Window::Pending(task) = window {
                task.abort();
            }
        }
    }
}

/// File bytes `[start, end)` from their segments, fetched in parallel,
/// over the file's inline bytes (holes read those, then zeros).
async fn fetch(
    client: &Arc<Client>,
    start: u64,
    end: u64,
    segments: Vec<Segment>,
    inline: Bytes,
) -> Result<Bytes, Error> {
    if let [only] = segments.as_slice()
        && let Some((placement, chunk_offset)) = &only.chunk
    {
        return read_chunk(client, placement, *chunk_offset, only.length).await;
    }
    let inline_end = inline.len() as u64;
    if end <= inline_end && segments.iter().all(|s| s.chunk.is_none()) {
        return Ok(inline.slice(start as usize..end as usize));
    }
    let reads = segments.iter().filter_map(|segment| {
        let (placement, chunk_offset) = segment.chunk.as_ref()?;
        Some(async move {
            let bytes = read_chunk(client, placement, *chunk_offset, segment.length).await?;
            Ok::<_, Error>((segment.offset, bytes))
        })
    });
    let mut out = vec![0u8; (end - start) as usize];
    if start < inline_end {
        let to = end.min(inline_end);
        out[..(to - start) as usize].copy_from_slice(&inline[start as usize..to as usize]);
    }
    for result in join_all(reads).await {
        let (offset, bytes) = result?;
        let at = (offset - start) as usize;
        out[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    Ok(Bytes::from(out))
}

/// Chunk bytes `[offset, offset + length)`.
pub async fn read_chunk(
    client: &Arc<Client>,
    placement: &ChunkPlacement,
    offset: u64,
    length: u64,
) -> Result<Bytes, Error> {
    if offset + length > placement.length {
        return Err(Error::new(
            ErrorCode::Corrupt,
            format!(
                "an extent reaches byte {} of {}, which holds {} bytes",
                offset + length,
                placement.chunk,
                placement.length
            ),
        ));
    }
    match placement.policy {
        Policy::Replicas(_) => read_replicated(client, placement, offset, length).await,
        Policy::Ec { data, parity } => {
            let geometry = Geometry::new(data as usize, parity as usize);
            read_coded(client, placement, geometry, offset, length).await
        }
    }
}

async fn read_replicated(
    client: &Arc<Client>,
    placement: &ChunkPlacement,
    offset: u64,
    length: u64,
) -> Result<Bytes, Error> {
    let mut order: Vec<_> = placement
        .pieces
        .iter()
        .map(|location| {
            (
                client.is_suspect(location.node),
                client.load_of(location.node),
                rand::random::<u32>(),
                location,
            )
        })
        .collect();
    // Servers that timed out lately go last: a dead one costs a whole read
    // timeout per attempt.
    order.sort_by_key(|(suspect, load, tie, _)| (*suspect, *load, *tie));
    let mut errors = Vec::new();
    let mut bad = Vec::new();
    for (_, _, _, location) in order {
        match read_piece(
            client,
            placement,
            location,
            placement.length,
            offset,
            length,
        )
        .await
        {
            Ok(bytes) => {
                client.report(bad).await;
                return Ok(bytes);
            }
            Err(err) => {
                tracing::debug!(chunk = %placement.chunk, node = %location.node, error = %err, "replica read failed; trying another");
                if piece_is_bad(&err) {
                    bad.push(PieceId {
                        chunk: placement.chunk,
                        index: location.index,
                    });
                }
                errors.push(format!("{}: {err}", location.address));
            }
        }
    }
    client.report(bad).await;
    Err(Error::new(
        ErrorCode::Unavailable,
        format!(
            "no replica of {} could be read ({})",
            placement.chunk,
            errors.join("; ")
        ),
    ))
}

async fn read_coded(
    client: &Arc<Client>,
    placement: &ChunkPlacement,
    geometry: Geometry,
    offset: u64,
    length: u64,
) -> Result<Bytes, Error> {
    let len = placement.length;
    let end = offset + length;
    let ranges: Vec<(u64, u64)> = (0..geometry.data)
        .map(|shard| geometry.shard_range(len, offset, end, shard))
        .collect();
    // Data shards on servers that just failed to answer are rebuilt from
    // parity straight away, when enough other pieces remain.
    let suspects: Vec<(usize, bool)> = (0..geometry.data)
        .filter(|shard| {
            ranges[*shard].0 < ranges[*shard].1
                && placement
                    .pieces
                    .get(*shard)
                    .is_some_and(|l| client.is_suspect(l.node))
        })
        .map(|shard| (shard, false))
        .collect();
    let healthy = placement
        .pieces
        .iter()
        .filter(|l| !client.is_suspect(l.node))
        .count();
    if !suspects.is_empty() && healthy >= geometry.data {
        return reconstruct(client, placement, geometry, offset, length, &suspects).await;
    }
    let reads = ranges
        .iter()
        .enumerate()
        .map(|(shard, &(from, to))| async move {
            if from == to {
                return Ok(Bytes::new());
            }
            let location = placement
                .pieces
                .get(shard)
                .ok_or_else(|| Error::internal("placement lacks a data shard"))?;
            read_piece(
                client,
                placement,
                location,
                geometry.piece_len(len, shard),
                from,
                to - from,
            )
            .await
        });
    let results = join_all(reads).await;
    if results.iter().all(|r| r.is_ok()) {
        let shards: Vec<Bytes> = results.into_iter().filter_map(|r| r.ok()).collect();
        // Cells follow each other in chunk order (stripe by stripe, shard
        // by shard), so the range is appended rather than written into a
        // zeroed buffer: no memset of every byte read.
        let mut out = Vec::with_capacity(length as usize);
        let first = geometry.stripe_at(len, offset).index;
        let last = geometry.stripe_at(len, end - 1).index;
        for index in first..=last {
            let stripe = geometry.stripe(len, index);
            for (shard, bytes) in shards.iter().enumerate() {
                let (cell_start, cell_end) = stripe.cell_range(shard);
                let (lo, hi) = (cell_start.max(offset), cell_end.min(end));
                if lo >= hi {
                    continue;
                }
                if out.len() as u64 != lo - offset {
                    return Err(Error::internal(format!(
                        "{}: stripe cells do not follow each other at chunk offset {lo}",
                        placement.chunk
                    )));
                }
                let piece_at = stripe.piece_offset + (lo - cell_start) - ranges[shard].0;
                let cell = bytes
                    .get(piece_at as usize..(piece_at + hi - lo) as usize)
                    .ok_or_else(|| {
                        Error::internal("a data shard's read is shorter than its range")
                    })?;
                out.extend_from_slice(cell);
            }
        }
        if out.len() as u64 != length {
            return Err(Error::internal(format!(
                "{}: stripes gave {} of {length} bytes",
                placement.chunk,
                out.len()
            )));
        }
        return Ok(Bytes::from(out));
    }
    let mut failed = Vec::new();
    for (shard, result) in results.iter().enumerate() {
        if let Err(err) = result {
            tracing::warn!(chunk = %placement.chunk, shard, error = %err, "data shard unreadable; reconstructing from parity");
            failed.push((shard, piece_is_bad(err)));
        }
    }
    reconstruct(client, placement, geometry, offset, length, &failed).await
}

/// Rebuilds chunk bytes `[offset, offset + length)` from any k pieces of the
/// stripes they span, skipping `failed` data shards.
async fn reconstruct(
    client: &Arc<Client>,
    placement: &ChunkPlacement,
    geometry: Geometry,
    offset: u64,
    length: u64,
    failed: &[(usize, bool)],
) -> Result<Bytes, Error> {
    let len = placement.length;
    let end = offset + length;
    let first = geometry.stripe_at(len, offset);
    let last = geometry.stripe_at(len, end - 1);
    let span_start = first.piece_offset;
    let span_end = last.piece_offset + last.cell;
    let mut bad: Vec<PieceId> = failed
        .iter()
        .filter(|(_, bad)| *bad)
        .map(|(shard, _)| PieceId {
            chunk: placement.chunk,
            index: *shard as u8,
        })
        .collect();
    let mut pieces: Vec<Option<Bytes>> = vec![None; geometry.width()];
    let mut errors = Vec::new();
    // A piece that only timed out or whose server was away may answer on a
    // second try (a loaded server, a connection being replaced); a piece
    // found bad never will. The second round asks again only when the first
    // left fewer than k pieces, so a healthy read costs nothing extra.
    let mut ask: Vec<usize> = (0..geometry.width())
        .filter(|index| !failed.iter().any(|(shard, _)| shard == index))
        .collect();
    for round in 0..2 {
        let reads = ask.iter().map(|&index| async move {
            let piece_len = geometry.piece_len(len, index);
            let to = span_end.min(piece_len);
            let from = span_start.min(to);
            let location = placement
                .pieces
                .get(index)
                .ok_or_else(|| Error::internal("placement lacks a piece"))?;
            let bytes = read_piece(client, placement, location, piece_len, from, to - from).await;
            Ok::<_, Error>((index, bytes))
        });
        let mut transient = Vec::new();
        for result in join_all(reads).await {
            let (index, bytes) = result?;
            match bytes {
                Ok(bytes) => pieces[index] = Some(bytes),
                Err(err) => {
                    if piece_is_bad(&err) {
                        bad.push(PieceId {
                            chunk: placement.chunk,
                            index: index as u8,
                        });
                    } else {
                        transient.push(index);
                    }
                    errors.push(format!("piece {index}: {err}"));
                }
            }
        }
        let present = pieces.iter().filter(|p| p.is_some()).count();
        if present >= geometry.data || round == 1 {
            break;
        }
        // Data shards skipped up front for a transient reason get their
        // second chance too (the first round never asked them).
        transient.extend(
            failed
                .iter()
                .filter(|(_, bad)| !*bad)
                .map(|(shard, _)| *shard),
        );
        if transient.is_empty() {
            break;
        }
        tracing::warn!(chunk = %placement.chunk, retry = ?transient, "fewer than k pieces answered; asking the slow ones again");
        ask = transient;
    }
    client.report(bad).await;
    let present = pieces.iter().filter(|p| p.is_some()).count();
    if present < geometry.data {
        return Err(Error::new(
            ErrorCode::Unavailable,
            format!(
                "{}: only {present} of {} pieces readable, {} needed to rebuild the data ({})",
                placement.chunk,
                geometry.width(),
                geometry.data,
                errors.join("; ")
            ),
        ));
    }
    let coder = ReedSolomon::new(geometry.data, geometry.parity)
        .map_err(|err| Error::internal(format!("erasure coder: {err:?}")))?;
    let mut out = vec![0u8; length as usize];
    for index in first.index..=last.index {
        let stripe = geometry.stripe(len, index);
        let cell = stripe.cell as usize;
        let at = (stripe.piece_offset - span_start) as usize;
        let mut shards: Vec<Option<Vec<u8>>> = pieces
            .iter()
            .map(|piece| {
                piece.as_ref().map(|bytes| {
                    let to = (at + cell).min(bytes.len());
                    let mut cell_bytes = bytes.get(at.min(to)..to).unwrap_or_default().to_vec();
                    cell_bytes.resize(cell, 0);
                    cell_bytes
                })
            })
            .collect();
        coder
            .reconstruct_data(&mut shards)
            .map_err(|err| Error::internal(format!("erasure reconstruct: {err:?}")))?;
        for (shard, data) in shards.iter().take(geometry.data).enumerate() {
            let (cell_start, cell_end) = stripe.cell_range(shard);
            let (lo, hi) = (cell_start.max(offset), cell_end.min(end));
            if lo >= hi {
                continue;
            }
            let Some(data) = data else {
                return Err(Error::internal("reconstruction left a data shard empty"));
            };
            let from = (lo - cell_start) as usize;
            out[(lo - offset) as usize..(hi - offset) as usize]
                .copy_from_slice(&data[from..from + (hi - lo) as usize]);
        }
    }
    Ok(Bytes::from(out))
}
