//! Metaserver metrics: Raft progress, operations by type with latency and
//! result, batch sizes, live chunkservers and chunks missing pieces.

use crate::types::TypeConfig;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

#[derive(Clone)]
pub struct MetaMetrics {
    pub term: IntGauge,
    pub is_leader: IntGauge,
    pub last_log_index: IntGauge,
    pub applied_index: IntGauge,
    pub ops: IntCounterVec,
    pub op_seconds: HistogramVec,
    pub batch_commands: Histogram,
    pub live_chunkservers: IntGauge,
    pub under_replicated: IntGauge,
    pub pieces_reported: IntCounter,
    pub chunks_by_margin: IntGaugeVec,
    pub chunks_endangered: IntGauge,
    pub chunkserver_state: IntGaugeVec,
    pub apply_seconds: Histogram,
    pub repair_jobs: IntCounterVec,
    pub repair_bytes: IntCounterVec,
    pub repair_queue: IntGauge,
    pub repair_running: IntGauge,
    pub drain_remaining: IntGaugeVec,
    pub sessions_live: IntGauge,
    pub sessions_opened: IntCounterVec,
    pub sessions_ended: IntCounterVec,
    pub locks_held: IntGauge,
    pub lock_waiters: IntGauge,
    pub orphaned_inodes: IntGauge,
}

impl MetaMetrics {
    pub fn new(registry: &Registry, server: &str) -> Result<MetaMetrics, prometheus::Error> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("server", server);
        let metrics = MetaMetrics {
            term: IntGauge::with_opts(opts("tessera_meta_raft_term", "Current Raft term"))?,
            is_leader: IntGauge::with_opts(opts(
                "tessera_meta_raft_leader",
                "1 while this member leads",
            ))?,
            last_log_index: IntGauge::with_opts(opts(
                "tessera_meta_raft_last_log_index",
                "Index of the last log entry",
            ))?,
            applied_index: IntGauge::with_opts(opts(
                "tessera_meta_raft_applied_index",
                "Index of the last applied entry",
            ))?,
            ops: IntCounterVec::new(
                opts(
                    "tessera_meta_ops_total",
                    "Client operations by type and result",
                ),
                &["op", "result"],
            )?,
            op_seconds: HistogramVec::new(
                HistogramOpts::new("tessera_meta_op_seconds", "Client operation latency")
                    .const_label("server", server)
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 1.0, 5.0,
                    ]),
                &["op"],
            )?,
            batch_commands: Histogram::with_opts(
                HistogramOpts::new("tessera_meta_batch_commands", "Commands per Raft entry")
                    .const_label("server", server)
                    .buckets(vec![
                        1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                    ]),
            )?,
            live_chunkservers: IntGauge::with_opts(opts(
                "tessera_meta_live_chunkservers",
                "Chunkservers heard from recently",
            ))?,
            pieces_reported: IntCounter::with_opts(opts(
                "tessera_meta_pieces_reported_total",
                "Pieces clients reported corrupt, missing or unreachable",
            ))?,
            under_replicated: IntGauge::with_opts(opts(
                "tessera_meta_chunks_under_replicated",
                "Committed chunks below full redundancy",
            ))?,
            chunks_by_margin: IntGaugeVec::new(
                opts(
                    "tessera_meta_chunks_by_margin",
                    "Committed chunks by healthy pieces minus pieces needed (-1: unreadable)",
                ),
                &["margin"],
            )?,
            repair_jobs: IntCounterVec::new(
                opts(
                    "tessera_meta_repair_jobs_total",
                    "Repair, drain and rebalance jobs by kind and result (started, ok, failed, cancelled)",
                ),
                &["kind", "result"],
            )?,
            repair_bytes: IntCounterVec::new(
                opts(
                    "tessera_meta_repair_bytes_total",
                    "Bytes of pieces rebuilt or moved, by kind",
                ),
                &["kind"],
            )?,
            repair_queue: IntGauge::with_opts(opts(
                "tessera_meta_repair_queue_length",
                "Chunks waiting for a repair or a move",
            ))?,
            repair_running: IntGauge::with_opts(opts(
                "tessera_meta_repair_jobs_running",
                "Jobs handed to chunkservers and not ended yet",
            ))?,
            drain_remaining: IntGaugeVec::new(
                opts(
                    "tessera_meta_drain_remaining_pieces",
                    "Pieces the chunk map still places on a drained chunkserver",
                ),
                &["node"],
            )?,
            sessions_live: IntGauge::with_opts(opts(
                "tessera_meta_sessions",
                "Live client sessions (leader only)",
            ))?,
            sessions_opened: IntCounterVec::new(
                opts(
                    "tessera_meta_sessions_opened_total",
                    "Client sessions opened, by kind (mount, gateway, command)",
                ),
                &["kind"],
            )?,
            sessions_ended: IntCounterVec::new(
                opts(
                    "tessera_meta_sessions_ended_total",
                    "Client sessions ended, by reason (expired, evicted, closed)",
                ),
                &["reason"],
            )?,
            locks_held: IntGauge::with_opts(opts(
                "tessera_meta_locks_held",
                "File locks held, each flock and POSIX range counted (leader only)",
            ))?,
            lock_waiters: IntGauge::with_opts(opts(
                "tessera_meta_lock_waiters",
                "Blocked lock requests queued on the leader (leader only)",
            ))?,
            chunks_endangered: IntGauge::with_opts(opts(
                "tessera_meta_chunks_endangered",
                "Committed chunks with exactly the pieces needed to read them, below their policy's width: one more loss loses data (leader only)",
            ))?,
            chunkserver_state: IntGaugeVec::new(
                opts(
                    "tessera_meta_chunkserver_state",
                    "1 for each registered chunkserver's state: up, suspect, down, drained or removed (leader only)",
                ),
                &["node", "name", "state"],
            )?,
            apply_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "tessera_meta_raft_apply_seconds",
                    "Time to apply one batch of committed Raft entries to the state",
                )
                .const_label("server", server)
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
            )?,
            orphaned_inodes: IntGauge::with_opts(opts(
                "tessera_meta_orphaned_inodes",
                "Unlinked files kept by open handles, deleted at their last close or their holders' session end (leader only)",
            ))?,
        };
        // Every job counter exists from the start at 0, so a rate or an
        // alert over it has a series before the first job.
        for kind in ["repair", "drain", "rebalance"] {
            for result in ["started", "ok", "partial", "failed", "cancelled"] {
                metrics.repair_jobs.with_label_values(&[kind, result]);
            }
            metrics.repair_bytes.with_label_values(&[kind]);
        }
        registry.register(Box::new(metrics.term.clone()))?;
        registry.register(Box::new(metrics.is_leader.clone()))?;
        registry.register(Box::new(metrics.last_log_index.clone()))?;
        registry.register(Box::new(metrics.applied_index.clone()))?;
        registry.register(Box::new(metrics.ops.clone()))?;
        registry.register(Box::new(metrics.op_seconds.clone()))?;
        registry.register(Box::new(metrics.batch_commands.clone()))?;
        registry.register(Box::new(metrics.live_chunkservers.clone()))?;
        registry.register(Box::new(metrics.under_replicated.clone()))?;
        registry.register(Box::new(metrics.pieces_reported.clone()))?;
        registry.register(Box::new(metrics.chunks_by_margin.clone()))?;
        registry.register(Box::new(metrics.repair_jobs.clone()))?;
        registry.register(Box::new(metrics.repair_bytes.clone()))?;
        registry.register(Box::new(metrics.repair_queue.clone()))?;
        registry.register(Box::new(metrics.repair_running.clone()))?;
        registry.register(Box::new(metrics.drain_remaining.clone()))?;
        registry.register(Box::new(metrics.sessions_live.clone()))?;
        registry.register(Box::new(metrics.sessions_opened.clone()))?;
        registry.register(Box::new(metrics.sessions_ended.clone()))?;
        registry.register(Box::new(metrics.locks_held.clone()))?;
        registry.register(Box::new(metrics.lock_waiters.clone()))?;
        registry.register(Box::new(metrics.orphaned_inodes.clone()))?;
        registry.register(Box::new(metrics.chunks_endangered.clone()))?;
        registry.register(Box::new(metrics.chunkserver_state.clone()))?;
        registry.register(Box::new(metrics.apply_seconds.clone()))?;
        Ok(metrics)
    }

    pub fn observe_raft(&self, metrics: &openraft::RaftMetrics<u64, openraft::BasicNode>) {
        let _ = std::marker::PhantomData::<TypeConfig>;
        self.term.set(metrics.current_term as i64);
        self.is_leader
            .set(i64::from(metrics.current_leader == Some(metrics.id)));
        self.last_log_index
            .set(metrics.last_log_index.unwrap_or(0) as i64);
        self.applied_index
            .set(metrics.last_applied.map(|l| l.index).unwrap_or(0) as i64);
    }
}
