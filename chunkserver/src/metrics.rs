//! Chunkserver metrics, labelled with the server's name so several
//! chunkservers in one process (`tessera dev`) stay apart.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

const LATENCY_BUCKETS_S: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct ChunkMetrics {
    pub bytes_written: IntCounter,
    pub bytes_read: IntCounter,
    pub pieces_written: IntCounter,
    pub reads: IntCounter,
    pub write_seconds: Histogram,
    pub read_seconds: Histogram,
    pub checksum_failures: IntCounter,
    pub quarantined: IntCounter,
    pub pieces: IntGauge,
    pub disk_free_bytes: IntGaugeVec,
    pub disk_capacity_bytes: IntGaugeVec,
    pub scrub_bytes: IntCounter,
    pub scrub_pieces: IntCounter,
    pub scrub_passes: IntCounter,
    pub writes_in_flight: IntGauge,
    pub reads_in_flight: IntGauge,
    /// Sealed pieces whose fsync the flusher has not done yet.
    pub unsynced_pieces: IntGauge,
    pub sync_seconds: Histogram,
    /// Repair jobs ended, by `kind` (`copy`, `rebuild`) and `result` (`ok`,
    /// `error`).
    pub repair_jobs: IntCounterVec,
    /// Bytes of pieces repair jobs sealed, here or on a rebuild's targets,
    /// by `kind`.
    pub repair_bytes: IntCounterVec,
    /// Repair jobs holding one of the `repair.jobs_max` slots.
    pub repair_jobs_running: IntGauge,
}

impl ChunkMetrics {
    pub fn new(registry: &Registry, server: &str) -> Result<ChunkMetrics, prometheus::Error> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("server", server);
        let histogram = |name: &str, help: &str| {
            Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_label("server", server)
                    .buckets(LATENCY_BUCKETS_S.to_vec()),
            )
        };
        let metrics = ChunkMetrics {
            bytes_written: IntCounter::with_opts(opts(
                "tessera_chunk_written_bytes_total",
                "Bytes of pieces sealed",
            ))?,
            bytes_read: IntCounter::with_opts(opts(
                "tessera_chunk_read_bytes_total",
                "Bytes served to readers",
            ))?,
            pieces_written: IntCounter::with_opts(opts(
                "tessera_chunk_pieces_written_total",
                "Pieces sealed",
            ))?,
            reads: IntCounter::with_opts(opts("tessera_chunk_reads_total", "Piece reads served"))?,
            write_seconds: histogram(
                "tessera_chunk_write_seconds",
                "Time from the first byte to the seal of a piece",
            )?,
            read_seconds: histogram("tessera_chunk_read_seconds", "Time to serve a piece read")?,
            checksum_failures: IntCounter::with_opts(opts(
                "tessera_chunk_checksum_failures_total",
                "Blocks that failed their checksum on read or scrub",
            ))?,
            quarantined: IntCounter::with_opts(opts(
                "tessera_chunk_quarantined_total",
                "Pieces moved to quarantine",
            ))?,
            pieces: IntGauge::with_opts(opts("tessera_chunk_pieces", "Sealed pieces stored"))?,
            disk_free_bytes: IntGaugeVec::new(
                opts(
                    "tessera_chunk_disk_free_bytes",
                    "Free bytes per data directory",
                ),
                &["disk"],
            )?,
            disk_capacity_bytes: IntGaugeVec::new(
                opts(
                    "tessera_chunk_disk_capacity_bytes",
                    "Size of each data directory's file system, capped by its capacity_bytes (the denominator of a disk-full alert)",
                ),
                &["disk"],
            )?,
            scrub_bytes: IntCounter::with_opts(opts(
                "tessera_chunk_scrub_bytes_total",
                "Bytes re-verified by the scrubber",
            ))?,
            scrub_pieces: IntCounter::with_opts(opts(
                "tessera_chunk_scrub_pieces_total",
                "Pieces re-verified by the scrubber",
            ))?,
            scrub_passes: IntCounter::with_opts(opts(
                "tessera_chunk_scrub_passes_total",
                "Completed scrub passes over every piece",
            ))?,
            writes_in_flight: IntGauge::with_opts(opts(
                "tessera_chunk_writes_in_flight",
                "Piece writes in progress",
            ))?,
            reads_in_flight: IntGauge::with_opts(opts(
                "tessera_chunk_reads_in_flight",
                "Piece reads in progress",
            ))?,
            unsynced_pieces: IntGauge::with_opts(opts(
                "tessera_chunk_unsynced_pieces",
                "Sealed pieces not yet fsynced (the flusher or a client's sync does it)",
            ))?,
            sync_seconds: histogram(
                "tessera_chunk_sync_seconds",
                "Time of one pass fsyncing sealed pieces and their folders",
            )?,
            repair_jobs: IntCounterVec::new(
                opts(
                    "tessera_chunk_repair_jobs_total",
                    "Repair jobs (copies, rebuilds) ended, by kind and result",
                ),
                &["kind", "result"],
            )?,
            repair_bytes: IntCounterVec::new(
                opts(
                    "tessera_chunk_repair_bytes_total",
                    "Bytes of pieces sealed by repair jobs, by kind",
                ),
                &["kind"],
            )?,
            repair_jobs_running: IntGauge::with_opts(opts(
                "tessera_chunk_repair_jobs_running",
                "Repair jobs running now",
            ))?,
        };
        // Every series exists from the start, so a dashboard shows 0 rather
        // than nothing before the first repair.
        for kind in ["copy", "rebuild"] {
            metrics.repair_bytes.with_label_values(&[kind]);
            for result in ["ok", "error"] {
                metrics.repair_jobs.with_label_values(&[kind, result]);
            }
        }
        // Every job counter exists from the start at 0, so a rate or an
        // alert over it has a series before the first job.
        for kind in ["copy", "rebuild"] {
            for result in ["ok", "error"] {
                metrics.repair_jobs.with_label_values(&[kind, result]);
            }
            metrics.repair_bytes.with_label_values(&[kind]);
        }
        registry.register(Box::new(metrics.bytes_written.clone()))?;
        registry.register(Box::new(metrics.bytes_read.clone()))?;
        registry.register(Box::new(metrics.pieces_written.clone()))?;
        registry.register(Box::new(metrics.reads.clone()))?;
        registry.register(Box::new(metrics.write_seconds.clone()))?;
        registry.register(Box::new(metrics.read_seconds.clone()))?;
        registry.register(Box::new(metrics.checksum_failures.clone()))?;
        registry.register(Box::new(metrics.quarantined.clone()))?;
        registry.register(Box::new(metrics.pieces.clone()))?;
        registry.register(Box::new(metrics.disk_free_bytes.clone()))?;
        registry.register(Box::new(metrics.disk_capacity_bytes.clone()))?;
        registry.register(Box::new(metrics.scrub_bytes.clone()))?;
        registry.register(Box::new(metrics.scrub_pieces.clone()))?;
        registry.register(Box::new(metrics.scrub_passes.clone()))?;
        registry.register(Box::new(metrics.writes_in_flight.clone()))?;
        registry.register(Box::new(metrics.unsynced_pieces.clone()))?;
        registry.register(Box::new(metrics.sync_seconds.clone()))?;
        registry.register(Box::new(metrics.reads_in_flight.clone()))?;
        registry.register(Box::new(metrics.repair_jobs.clone()))?;
        registry.register(Box::new(metrics.repair_bytes.clone()))?;
        registry.register(Box::new(metrics.repair_jobs_running.clone()))?;
        Ok(metrics)
    }

    /// Metrics nobody scrapes, for tests.
    pub fn unregistered() -> ChunkMetrics {
        ChunkMetrics::new(&Registry::new(), "unregistered")
            .unwrap_or_else(|err| panic!("fresh registry refused metrics: {err}"))
    }
}
