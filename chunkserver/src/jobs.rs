//! The repair job runner: executes the `Copy` and `Rebuild` commands
//! heartbeat replies carry, and keeps their results until a heartbeat has
//! delivered them.
//!
//! - Jobs are keyed by the metaserver's job id. A job already running, or
//!   ended with its result not yet delivered, is not started again: a new
//!   leader that lost track of its predecessor's jobs may send them again.
//!   Results delivered lately are remembered too, so such a job gets its
//!   result again instead of a second run (a rebuild's remote targets would
//!   refuse pieces they already sealed).
//! - At most `repair.jobs_max` jobs run at once; the rest wait for a slot
//!   (and are listed as running, since they are accepted). Beyond
//!   [`JOBS_ACCEPTED_MAX`] accepted jobs a new one ends at once with an
//!   error, so a confused metaserver cannot grow this node's memory.
//! - Every byte the jobs read goes through one token bucket of
//!   `repair.rate_mb_per_s` ([`crate::throttle`]), so repair never takes the
//!   disks and the network from client reads and writes, however many jobs
//!   run.
//!
//! A job's result is kept until a heartbeat carrying it succeeds; a failed
//! heartbeat, a re-registration or a new leader changes nothing about that.

use crate::copy;
use crate::metrics::ChunkMetrics;
use crate::rebuild;
use crate::store::Store;
use crate::throttle::Throttle;
use prometheus::IntGauge;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tessera_proto::chunk::{CopyPiece, JobResult, PieceInfo, RebuildPieces};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::rpc::RpcClient;
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

/// Jobs accepted (running or waiting for a slot) at most.
pub const JOBS_ACCEPTED_MAX: usize = 256;
/// Delivered results remembered for jobs sent again.
const DELIVERED_KEPT: usize = 1024;
/// Longest error message a job result carries: enough to name what failed
/// and where, short enough that a heartbeat of results stays far below the
/// header cap.
const ERROR_REPORT_MAX_BYTES: usize = 512;
/// Encoded bytes of job results one heartbeat carries at most (roughly);
/// the rest follow with the next ones.
const RESULTS_PER_HEARTBEAT_BYTES: usize = 24 * 1024;

/// `[repair]` in the chunkserver's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepairConfig {
    /// Repair jobs (copies, rebuilds) running at once on this node.
    pub jobs_max: u32,
    /// Bytes all repair jobs together read, in MB/s (10^6 bytes); 0 means
    /// unlimited.
    pub rate_mb_per_s: f64,
}

impl Default for RepairConfig {
    fn default() -> RepairConfig {
        RepairConfig {
            jobs_max: 4,
            rate_mb_per_s: 200.0,
        }
    }
}

impl RepairConfig {
    pub fn validate(&self) -> Result<(), Error> {
        if self.jobs_max == 0 || self.jobs_max as usize > JOBS_ACCEPTED_MAX {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "repair.jobs_max = {} is out of range; set 1 to {JOBS_ACCEPTED_MAX} (default 4)",
                    self.jobs_max
                ),
            ));
        }
        if !self.rate_mb_per_s.is_finite() || self.rate_mb_per_s < 0.0 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "repair.rate_mb_per_s = {} is not a rate; set MB/s, or 0 for unlimited (default 200)",
                    self.rate_mb_per_s
                ),
            ));
        }
        Ok(())
    }
}

/// What repair jobs work with.
pub struct RepairContext {
    pub store: Arc<Store>,
    pub client: RpcClient,
    pub throttle: Throttle,
}

/// A job a heartbeat reply handed out.
#[derive(Clone, Debug)]
pub enum Job {
    Copy(CopyPiece),
    Rebuild(RebuildPieces),
}

impl Job {
    pub fn id(&self) -> u64 {
        match self {
            Job::Copy(copy) => copy.job,
            Job::Rebuild(rebuild) => rebuild.job,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Job::Copy(_) => "copy",
            Job::Rebuild(_) => "rebuild",
        }
    }
}

#[derive(Default)]
struct Table {
    /// Accepted and not ended, with the handle that stops them at shutdown.
    running: BTreeMap<u64, Option<AbortHandle>>,
    /// Ended, not yet delivered by a heartbeat.
    finished: BTreeMap<u64, JobResult>,
    /// Delivered lately, oldest first.
    delivered: VecDeque<JobResult>,
    closed: bool,
}

pub struct JobRunner {
    ctx: Arc<RepairContext>,
    slots: Arc<Semaphore>,
    table: Mutex<Table>,
    metrics: ChunkMetrics,
}

/// Counts a job in the running gauge while it holds a slot.
struct Running(IntGauge);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Records a job's end however its task ends: with a result, or dropped
/// (a panic unwinding through it, or the task aborted at shutdown).
struct Finish {
    runner: Arc<JobRunner>,
    job: u64,
    kind: &'static str,
    written_bytes: u64,
    result: Option<JobResult>,
    started: Instant,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let result = self.result.take().unwrap_or_else(|| JobResult {
            job: self.job,
            sealed: Vec::new(),
            error: Some(
                "the job stopped before it ended (the chunkserver is shutting down, or a bug made the job panic; see its log)"
                    .into(),
            ),
        });
        self.runner
            .finish(self.kind, result, self.written_bytes, self.started);
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > ERROR_REPORT_MAX_BYTES {
        let mut cut = ERROR_REPORT_MAX_BYTES - 3;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

/// Rough encoded size of a result, to bound a heartbeat.
fn report_size(result: &JobResult) -> usize {
    16 + result.error.as_ref().map_or(0, String::len) + result.sealed.len() * 64
}

impl JobRunner {
    pub fn new(store: Arc<Store>, client: RpcClient, config: &RepairConfig) -> Arc<JobRunner> {
        let metrics = store.metrics().clone();
        Arc::new(JobRunner {
            ctx: Arc::new(RepairContext {
                store,
                client,
                throttle: Throttle::new(config.rate_mb_per_s * 1e6),
            }),
            slots: Arc::new(Semaphore::new(config.jobs_max.max(1) as usize)),
            table: Mutex::new(Table::default()),
            metrics,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn context(&self) -> &Arc<RepairContext> {
        &self.ctx
    }

    /// Starts `job` unless it is known already. Returns at once.
    pub fn submit(self: &Arc<Self>, job: Job) {
        let id = job.id();
        let kind = job.kind();
        let mut table = self.lock();
        if table.closed {
            return;
        }
        if table.running.contains_key(&id) || table.finished.contains_key(&id) {
            tracing::debug!(
                job = id,
                kind,
                "job sent again while known; not starting it twice"
            );
            return;
        }
        if let Some(at) = table.delivered.iter().position(|r| r.job == id) {
            if let Some(result) = table.delivered.remove(at) {
                tracing::info!(
                    job = id,
                    kind,
                    "job sent again after its result was delivered; reporting the result again"
                );
                table.finished.insert(id, result);
            }
            return;
        }
        if table.running.len() >= JOBS_ACCEPTED_MAX {
            tracing::warn!(
                job = id,
                kind,
                "too many repair jobs accepted; refusing one"
            );
            self.metrics
                .repair_jobs
                .with_label_values(&[kind, "error"])
                .inc();
            table.finished.insert(
                id,
                JobResult {
                    job: id,
                    sealed: Vec::new(),
                    error: Some(format!(
                        "this chunkserver already holds {JOBS_ACCEPTED_MAX} repair jobs; send the job again later or to another node"
                    )),
                },
            );
            return;
        }
        // The guard is made here, outside the task, so that even a task
        // aborted before it first ran records its end. Spawned under the
        // lock, so the job cannot end (and leave `running`) before its
        // handle is recorded.
        let finish = Finish {
            runner: self.clone(),
            job: id,
            kind,
            written_bytes: 0,
            result: None,
            started: Instant::now(),
        };
        let task = tokio::spawn(run(finish, job));
        table.running.insert(id, Some(task.abort_handle()));
    }

    /// Copies a piece for a direct `CopyPiece` call: the same slots, rate
    /// and metrics as a job, answered on the call instead of a heartbeat.
    pub async fn copy_now(&self, msg: &CopyPiece) -> Result<PieceInfo, Error> {
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorCode::ShuttingDown, "the chunkserver is stopping"))?;
        self.metrics.repair_jobs_running.inc();
        let _running = Running(self.metrics.repair_jobs_running.clone());
        let result = copy::copy(&self.ctx, msg).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics
            .repair_jobs
            .with_label_values(&["copy", outcome])
            .inc();
        let copied = result?;
        if copied.written {
            self.metrics
                .repair_bytes
                .with_label_values(&["copy"])
                .inc_by(copied.info.length);
        }
        Ok(copied.info)
    }

    fn finish(&self, kind: &'static str, result: JobResult, written_bytes: u64, started: Instant) {
        let outcome = if result.error.is_none() {
            "ok"
        } else {
            "error"
        };
        self.metrics
            .repair_jobs
            .with_label_values(&[kind, outcome])
            .inc();
        self.metrics
            .repair_bytes
            .with_label_values(&[kind])
            .inc_by(written_bytes);
        let seconds = started.elapsed().as_secs_f64();
        match &result.error {
            None => tracing::info!(
                job = result.job,
                kind,
                sealed = result.sealed.len(),
                bytes = written_bytes,
                seconds,
                "repair job done"
            ),
            Some(error) => tracing::warn!(
                job = result.job,
                kind,
                sealed = result.sealed.len(),
                seconds,
                error = %error,
                "repair job failed"
            ),
        }
        let mut table = self.lock();
        table.running.remove(&result.job);
        if !table.closed {
            table.finished.insert(result.job, result);
        }
    }

    /// Results to report (not removed until [`JobRunner::delivered`]) and
    /// the ids of jobs accepted and not ended.
    pub fn report(&self) -> (Vec<JobResult>, Vec<u64>) {
        let table = self.lock();
        let mut results = Vec::new();
        let mut bytes = 0;
        for result in table.finished.values() {
            bytes += report_size(result);
            if bytes > RESULTS_PER_HEARTBEAT_BYTES && !results.is_empty() {
                break;
            }
            results.push(result.clone());
        }
        (results, table.running.keys().copied().collect())
    }

    /// A heartbeat carrying these results succeeded: stop reporting them.
    pub fn delivered(&self, results: &[JobResult]) {
        let mut table = self.lock();
        for result in results {
            if let Some(result) = table.finished.remove(&result.job) {
                table.delivered.push_back(result);
            }
        }
        while table.delivered.len() > DELIVERED_KEPT {
            table.delivered.pop_front();
        }
    }

    /// Stops every job; nothing new starts.
    pub fn shutdown(&self) {
        let handles: Vec<AbortHandle> = {
            let mut table = self.lock();
            table.closed = true;
            table.running.values().flatten().cloned().collect()
        };
        self.slots.close();
        for handle in handles {
            handle.abort();
        }
    }
}

async fn run(mut finish: Finish, job: Job) {
    let runner = finish.runner.clone();
    let Ok(_slot) = runner.slots.clone().acquire_owned().await else {
        return;
    };
    runner.metrics.repair_jobs_running.inc();
    let _running = Running(runner.metrics.repair_jobs_running.clone());
    finish.started = Instant::now();
    let ctx = runner.ctx.clone();
    let (sealed, written_bytes, error) = match &job {
        Job::Copy(msg) => match copy::copy(&ctx, msg).await {
            Ok(copied) => (
                vec![copied.info],
                if copied.written {
                    copied.info.length
                } else {
                    0
                },
                None,
            ),
            Err(err) => (Vec::new(), 0, Some(err)),
        },
        Job::Rebuild(msg) => {
            let outcome = rebuild::rebuild(&ctx, msg).await;
            (outcome.sealed, outcome.written_bytes, outcome.error)
        }
    };
    finish.written_bytes = written_bytes;
    finish.result = Some(JobResult {
        job: job.id(),
        sealed,
        error: error.map(|err| truncate(format!("{}: {}", err.code.describe(), err.message))),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, encode_chunk, pattern};
    use std::time::Duration;
    use tessera_proto::chunk::{PieceSource, PieceTarget};
    use tessera_proto::ids::{ChunkId, PieceId};
    use tessera_proto::stripe::Geometry;

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn count(runner: &JobRunner, kind: &str, result: &str) -> u64 {
        runner
            .metrics
            .repair_jobs
            .with_label_values(&[kind, result])
            .get()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_runs_once_and_its_result_stays_until_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::store(&dir.path().join("disk"));
        let piece = PieceId {
            chunk: ChunkId(5),
            index: 1,
        };
        let data = pattern(1, 100_000);
        let info = testing::write(&store, piece, &data);
        let runner = testing::runner(store, dir.path());
        // The piece is here already, so the copy succeeds without a source.
        let copy = CopyPiece {
            job: 7,
            piece,
            source_piece: PieceId { index: 0, ..piece },
            source: "nowhere".into(),
            source_token: testing::token(piece),
            length: data.len() as u64,
            checksum: Some(info.checksum),
        };
        runner.submit(Job::Copy(copy.clone()));
        wait_for("the copy's result", || !runner.report().0.is_empty()).await;
        let (results, running) = runner.report();
        let expected = JobResult {
            job: 7,
            sealed: vec![info],
            error: None,
        };
        assert_eq!(results, vec![expected.clone()]);
        assert!(running.is_empty());

        // Sent again before its result was delivered: not run again.
        runner.submit(Job::Copy(copy.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(runner.report().0, vec![expected.clone()]);
        assert_eq!(count(&runner, "copy", "ok"), 1);
        // Nothing moved, so no repair bytes.
        assert_eq!(
            runner
                .metrics
                .repair_bytes
                .with_label_values(&["copy"])
                .get(),
            0
        );

        runner.delivered(&results);
        assert!(runner.report().0.is_empty());
        // Sent again after delivery (a new leader): the result comes back.
        runner.submit(Job::Copy(copy.clone()));
        assert_eq!(runner.report().0, vec![expected]);
        assert_eq!(count(&runner, "copy", "ok"), 1);

        // A copy whose piece is here with other bytes fails, and says why.
        let mut clash = copy;
        clash.job = 8;
        clash.checksum = Some([1; 32]);
        runner.submit(Job::Copy(clash));
        wait_for("the failed copy's result", || runner.report().0.len() == 2).await;
        let (results, _) = runner.report();
        let error = results[1].error.as_deref().unwrap();
        assert!(
            error.contains("already exists") && error.contains("delete it first"),
            "{error}"
        );
        assert!(results[1].sealed.is_empty());
        assert_eq!(count(&runner, "copy", "error"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_bound_running_jobs_and_shutdown_stops_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::store(&dir.path().join("disk"));
        let geometry = Geometry::new(4, 2);
        let chunk = ChunkId(9);
        let len = 300_000;
        let pieces = encode_chunk(geometry, &pattern(3, len));
        for index in [0, 2, 3, 5] {
            testing::write(
                &store,
                PieceId {
                    chunk,
                    index: index as u8,
                },
                &pieces[index],
            );
        }
        // 1 kB/s: the job holds its slot, waiting for the rate, for minutes.
        let config = RepairConfig {
            jobs_max: 1,
            rate_mb_per_s: 0.001,
        };
        let runner = JobRunner::new(store, testing::client(dir.path()), &config);
        let order = |job: u64| RebuildPieces {
            job,
            chunk,
            data: 4,
            parity: 2,
            chunk_length: len as u64,
            sources: [0, 2, 3, 5]
                .iter()
                .map(|&index| PieceSource {
                    index,
                    address: "nowhere".into(),
                })
                .collect(),
            targets: vec![PieceTarget {
                index: 1,
                address: String::new(),
                local: true,
                checksum: None,
            }],
            token: testing::token(PieceId { chunk, index: 0 }),
        };
        runner.submit(Job::Rebuild(order(20)));
        let gauge = runner.metrics.repair_jobs_running.clone();
        wait_for("the job to take its slot", || gauge.get() == 1).await;
        runner.submit(Job::Rebuild(order(20)));
        for job in 21..(20 + JOBS_ACCEPTED_MAX as u64 + 2) {
            runner.submit(Job::Rebuild(order(job)));
        }
        let (results, running) = runner.report();
        assert_eq!(running.len(), JOBS_ACCEPTED_MAX);
        assert_eq!(running[0], 20);
        // Only one holds a slot; the rest wait, listed as running.
        assert_eq!(gauge.get(), 1);
        // The two past the limit end at once.
        assert_eq!(results.len(), 2);
        for result in &results {
            let error = result.error.as_deref().unwrap();
            assert!(error.contains("already holds"), "{error}");
        }
        runner.shutdown();
        wait_for("the jobs to stop", || runner.report().1.is_empty()).await;
        assert_eq!(gauge.get(), 0);
        runner.submit(Job::Rebuild(order(1000)));
        assert!(runner.report().1.is_empty(), "a stopped runner took a job");
    }

    #[test]
    fn settings_are_checked() {
        assert!(RepairConfig::default().validate().is_ok());
        let zero_jobs = RepairConfig {
            jobs_max: 0,
            ..RepairConfig::default()
        };
        assert!(
            zero_jobs
                .validate()
                .unwrap_err()
                .message
                .contains("jobs_max")
        );
        let negative = RepairConfig {
            rate_mb_per_s: -1.0,
            ..RepairConfig::default()
        };
        assert!(
            negative
                .validate()
                .unwrap_err()
                .message
                .contains("rate_mb_per_s")
        );
        let unlimited = RepairConfig {
            rate_mb_per_s: 0.0,
            ..RepairConfig::default()
        };
        assert!(unlimited.validate().is_ok());
    }

    #[tokio::test]
    async fn a_heartbeat_full_of_everything_fits_in_a_header() {
        use tessera_proto::chunk::{HEARTBEAT_CHANGES_MAX, Heartbeat, LoadReport};
        let dir = tempfile::tempdir().unwrap();
        let runner = testing::runner(testing::store(&dir.path().join("disk")), dir.path());
        let piece = PieceId {
            chunk: ChunkId(u64::MAX),
            index: 255,
        };
        let info = PieceInfo {
            piece,
            length: u64::MAX,
            checksum: [0xff; 32],
        };
        {
            let mut table = runner.lock();
            for job in 0..1000 {
                table.finished.insert(
                    u64::MAX - job,
                    JobResult {
                        job: u64::MAX - job,
                        sealed: vec![info; 4],
                        error: Some(truncate("x".repeat(10_000))),
                    },
                );
            }
            for job in 0..JOBS_ACCEPTED_MAX as u64 {
                table.running.insert(u64::MAX - job, None);
            }
        }
        let (jobs, running) = runner.report();
        assert!(
            jobs.len() > 8 && jobs.len() < 1000,
            "{} results",
            jobs.len()
        );
        let beat = Heartbeat {
            node: tessera_proto::ids::NodeId(u64::MAX),
            disks: Vec::new(),
            load: LoadReport::default(),
            corrupt: vec![piece; HEARTBEAT_CHANGES_MAX],
            added: vec![info; HEARTBEAT_CHANGES_MAX],
            removed: vec![piece; HEARTBEAT_CHANGES_MAX],
            jobs,
            running,
        };
        let frame =
            tessera_proto::wire::encode_request(tessera_proto::ids::RequestId(1), 1, 0, &beat)
                .unwrap();
        assert!(
            frame.len() < tessera_proto::limits::HEADER_MAX_BYTES,
            "{} bytes",
            frame.len()
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let cut = truncate("é".repeat(400));
        assert!(cut.len() <= ERROR_REPORT_MAX_BYTES);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short".into()), "short");
    }
}
