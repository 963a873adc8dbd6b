//! A piece streamed into the local store from async code: client writes,
//! repair copies and locally stored rebuilt pieces all take this one path,
//! so they share the seal's checks, the per-disk I/O bound and the write
//! metrics.
//!
//! Bytes go to a blocking task through a bounded queue, so the network (or
//! the decoder) and the disk overlap and a slow disk pushes back on its
//! producer instead of growing memory. Dropping a [`LocalWrite`] before
//! [`LocalWrite::seal`] abandons the piece: its temporary file is removed and
//! nothing is sealed.

use crate::metrics::ChunkMetrics;
use crate::store::{PieceWrite, Store};
use bytes::Bytes;
use prometheus::IntGauge;
use std::sync::Arc;
use std::time::Instant;
use tessera_proto::chunk::{PieceInfo, PieceTrailer};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::PieceId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub(crate) fn join_error(err: tokio::task::JoinError) -> Error {
    Error::internal(format!("disk task failed: {err}"))
}

enum WriteOp {
    Data(Bytes),
    /// Seal, first declaring the final length and checksum if the writer
    /// only learned them at the end.
    Seal(Option<PieceTrailer>),
}

/// Counts a write in flight for as long as it lives, whichever way it ends.
struct InFlight(IntGauge);

impl InFlight {
    fn new(gauge: &IntGauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A piece being written into the local store.
pub struct LocalWrite {
    piece: PieceId,
    tx: Option<mpsc::Sender<WriteOp>>,
    task: Option<JoinHandle<Result<PieceInfo, Error>>>,
    metrics: ChunkMetrics,
    started: Instant,
    _in_flight: InFlight,
}

impl LocalWrite {
    /// Reserves room for `max_length` bytes and starts the disk task.
    /// `checksum` is the declared checksum, or a placeholder the trailer
    /// given to [`LocalWrite::seal`] replaces. `queue` buffers may wait for
    /// the disk.
    pub async fn begin(
        store: &Arc<Store>,
        piece: PieceId,
        max_length: u64,
        checksum: [u8; 32],
        queue: usize,
    ) -> Result<LocalWrite, Error> {
        let metrics = store.metrics().clone();
        let in_flight = InFlight::new(&metrics.writes_in_flight);
        let started = Instant::now();
        let opening = store.clone();
        let write: PieceWrite =
            tokio::task::spawn_blocking(move || opening.begin_write(piece, max_length, checksum))
                .await
                .map_err(join_error)??;
        let permit = write
            .disk()
            .io_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::internal("disk slots closed"))?;
        let (tx, mut rx) = mpsc::channel::<WriteOp>(queue.max(1));
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
            // The producer gave up: dropping the write removes the file.
            Err(Error::new(
                ErrorCode::Cancelled,
                format!("write of {piece} abandoned"),
            ))
        });
        Ok(LocalWrite {
            piece,
            tx: Some(tx),
            task: Some(task),
            metrics,
            started,
            _in_flight: in_flight,
        })
    }

    pub fn piece(&self) -> PieceId {
        self.piece
    }

    /// Queues bytes for the disk. When the disk task already failed (too
    /// many bytes, an I/O error), returns its error.
    pub async fn append(&mut self, data: Bytes) -> Result<(), Error> {
        let Some(tx) = &self.tx else {
            return Err(Error::internal(format!(
                "write of {} used after it ended",
                self.piece
            )));
        };
        if tx.send(WriteOp::Data(data)).await.is_err() {
            return Err(self.finish().await.err().unwrap_or_else(|| {
                Error::internal(format!(
                    "write of {} ended early without an error",
                    self.piece
                ))
            }));
        }
        Ok(())
    }

    /// Seals the piece (after the trailer's length and checksum, when
    /// given, replace the declared ones) and returns it once durable.
    pub async fn seal(mut self, trailer: Option<PieceTrailer>) -> Result<PieceInfo, Error> {
        if let Some(tx) = &self.tx {
            // A failed send means the task already ended; its result says why.
            let _ = tx.send(WriteOp::Seal(trailer)).await;
        }
        let result = self.finish().await;
        if let Ok(info) = &result {
            self.metrics.bytes_written.inc_by(info.length);
            self.metrics.pieces_written.inc();
            self.metrics
                .write_seconds
                .observe(self.started.elapsed().as_secs_f64());
        }
        result
    }

    /// Abandons the piece and waits until its temporary file is gone, so the
    /// piece id is free again when this returns.
    pub async fn abort(mut self) {
        let _ = self.finish().await;
    }

    async fn finish(&mut self) -> Result<PieceInfo, Error> {
        self.tx = None;
        match self.task.take() {
            Some(task) => task.await.map_err(join_error)?,
            None => Err(Error::internal(format!(
                "write of {} already ended",
                self.piece
            ))),
        }
    }
}
