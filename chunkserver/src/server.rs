//! The chunkserver daemon: configuration, start-up and shutdown.

use crate::heartbeat::{self, HeartbeatConfig};
use crate::jobs::{JobRunner, RepairConfig};
use crate::metrics::ChunkMetrics;
use crate::scrub::{self, ScrubConfig};
use crate::service::ChunkService;
use crate::store::{DiskConfig, Store};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_proto::chunk::Labels;
use tessera_proto::config::NodeConfig;
use tessera_proto::error::Error;
use tessera_proto::rpc::{RpcClient, RpcMetrics, RpcServer};
use tessera_proto::tls::Role;
use tessera_proto::token::TokenKey;
use tokio::sync::watch;

/// `tessera chunk --config FILE`; documented in `deploy/chunk.example.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkConfig {
    #[serde(flatten)]
    pub node: NodeConfig,
    /// The cluster's capability-token key (`token.key` from `tessera ca init`).
    pub token_key: PathBuf,
    /// Metaserver addresses (host:port); any member will do, the leader is
    /// found through redirects.
    #[serde(default)]
    pub meta: Vec<String>,
    /// Address other nodes and clients reach this chunkserver at; the listen
    /// address when unset.
    #[serde(default)]
    pub advertise: Option<String>,
    #[serde(default)]
    pub rack: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Most milliseconds a sealed piece waits for its fsync: the flusher
    /// makes every piece sealed in that window durable in one pass, unless a
    /// client's fsync asked first. 0 fsyncs each piece before its write is
    /// acknowledged. See docs/chunkserver.md, "Durability".
    #[serde(default = "default_sync_interval_ms")]
    pub sync_interval_ms: u64,
    pub disks: Vec<DiskConfig>,
    #[serde(default)]
    pub scrub: ScrubConfig,
    #[serde(default)]
    pub repair: RepairConfig,
}

fn default_heartbeat_interval_ms() -> u64 {
    2_000
}

fn default_sync_interval_ms() -> u64 {
    1_000
}

/// Fsyncs every sealed piece still pending once per interval, and a last
/// time at shutdown.
async fn flush_loop(store: Arc<Store>, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    loop {
        let stopping = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            _ = shutdown.changed() => true,
        };
        let pass = store.clone();
        match tokio::task::spawn_blocking(move || pass.sync_pieces(None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(error = %err, "background fsync of sealed pieces failed; retrying next interval")
            }
            Err(err) => tracing::error!(error = %err, "background fsync task failed"),
        }
        if stopping {
            return;
        }
    }
}

/// A running chunkserver.
pub struct ChunkServer {
    rpc: RpcServer,
    store: Arc<Store>,
    jobs: Arc<JobRunner>,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    flusher: Option<tokio::task::JoinHandle<()>>,
    addr: SocketAddr,
}

impl ChunkServer {
    /// Opens the store (removing leftovers of interrupted writes), starts the
    /// data service, the scrubber and the heartbeat loop, and the metrics
    /// endpoint if configured. Metrics go to `registry`.
    pub async fn start(
        config: ChunkConfig,
        registry: &prometheus::Registry,
    ) -> Result<ChunkServer, Error> {
        config.repair.validate()?;
        let identity = config.node.tls.load_for(Role::Chunk)?;
        let token_key = TokenKey::load(&config.token_key)?;
        let metric_error =
            |err: prometheus::Error| Error::internal(format!("register metrics: {err}"));
        let metrics = ChunkMetrics::new(registry, &config.node.name).map_err(metric_error)?;
        let rpc_metrics = RpcMetrics::new(registry, &config.node.name).map_err(metric_error)?;
        let disks = config.disks.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&disks, metrics))
            .await
            .map_err(|err| Error::internal(format!("open store: {err}")))??;
        let store = Arc::new(store);
        store.defer_sync(config.sync_interval_ms > 0);
        let bind_any = config.node.client_bind_addr();
        let client = RpcClient::new(&identity, &config.node.transport, bind_any)?;
        let jobs = JobRunner::new(store.clone(), client.clone(), &config.repair);
        let service = Arc::new(ChunkService::new(store.clone(), token_key, jobs.clone()));
        let rpc = RpcServer::start(
            &identity,
            &config.node.transport,
            config.node.listen,
            service.clone(),
            rpc_metrics,
        )?;
        let addr = rpc.local_addr()?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut flusher = None;
        if config.sync_interval_ms > 0 {
            flusher = Some(tokio::spawn(flush_loop(
                store.clone(),
                Duration::from_millis(config.sync_interval_ms),
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(scrub::run(
            store.clone(),
            config.scrub.clone(),
            shutdown_rx.clone(),
        )));
        let heartbeat_config = HeartbeatConfig {
            name: config.node.name.clone(),
            address: config.advertise.clone().unwrap_or_else(|| addr.to_string()),
            labels: Labels {
                rack: config.rack.clone(),
                zone: config.zone.clone(),
            },
            meta: config.meta.clone(),
            interval: Duration::from_millis(config.heartbeat_interval_ms.max(100)),
        };
        tasks.push(tokio::spawn(heartbeat::run(
            client,
            service,
            heartbeat_config,
            shutdown_rx,
        )));
        if let Some(metrics_addr) = config.node.metrics_listen {
            let access = tessera_proto::obs::HttpAccess::for_listener(
                metrics_addr,
                config.node.metrics_token_file.as_deref(),
            )?;
            let (bound, task) =
                tessera_proto::obs::serve_metrics(metrics_addr, registry.clone(), access).await?;
            tracing::info!(%bound, "serving metrics at /metrics");
            tasks.push(task);
        }
        tracing::info!(
            name = %config.node.name,
            %addr,
            pieces = store.piece_count(),
            disks = store.disks.len(),
            "chunkserver started"
        );
        Ok(ChunkServer {
            rpc,
            store,
            jobs,
            shutdown_tx,
            tasks,
            flusher,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops background work, lets calls in flight finish, closes.
    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for task in &self.tasks {
            task.abort();
        }
        self.jobs.shutdown();
        self.rpc.shutdown().await;
        // After the last write: what it sealed is fsynced before the exit.
        if let Some(flusher) = self.flusher
            && let Err(err) = flusher.await
        {
            tracing::error!(error = %err, "the last fsync pass failed");
        }
        tracing::info!(addr = %self.addr, "chunkserver stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/chunk.example.toml");
        let config: ChunkConfig =
            tessera_proto::config::load(Some(&path), &["scrub.rate_mb_per_s=5".into()]).unwrap();
        assert_eq!(config.disks.len(), 2);
        assert_eq!(config.scrub.rate_mb_per_s, 5.0);
        assert_eq!(config.repair, RepairConfig::default());
        config.repair.validate().unwrap();
        let zero: ChunkConfig =
            tessera_proto::config::load(Some(&path), &["repair.jobs_max=0".into()]).unwrap();
        let err = zero.repair.validate().unwrap_err();
        assert!(err.message.contains("repair.jobs_max"), "{err}");
        let err =
            tessera_proto::config::load::<ChunkConfig>(Some(&path), &["repair.jobs=1".into()])
                .unwrap_err();
        assert!(err.message.contains("jobs"), "{err}");
        assert_eq!(config.node.name, "chunk-1");
        let err = tessera_proto::config::load::<ChunkConfig>(Some(&path), &["scrub.rate=5".into()])
            .unwrap_err();
        assert!(err.message.contains("rate"), "{err}");
    }
}
