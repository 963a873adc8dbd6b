//! The metaserver daemon: configuration, start-up, bootstrap and shutdown.

use crate::batcher::{Batcher, LeaderAddress};
use crate::log_store::{CF_LOG, CF_RAFT, LogStore};
use crate::metrics::MetaMetrics;
use crate::network::Network;
use crate::registry::Registry;
use crate::service::{MetaService, leader_loop};
use crate::sm_store::{CF_STATE, StateMachine};
use crate::types::Raft;
use crate::web::StatusPage;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tessera_proto::config::NodeConfig;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::rpc::{RpcClient, RpcMetrics, RpcServer};
use tessera_proto::tls::Role;
use tessera_proto::token::TokenKey;
use tokio::sync::watch;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) every this many entries.
    pub snapshot_every_entries: u64,
    /// Entries kept behind a snapshot, so a briefly lagging member catches
    /// up from the log instead of a whole snapshot.
    pub logs_kept_after_snapshot: u64,
    /// Longest one snapshot chunk (3 MiB) may take to send, and the last
    /// one to send and install. A send that overruns starts over from the
    /// first chunk, so a bound a loaded machine can miss (openraft's
    /// default is 200 ms) means a member that never catches up.
    pub install_snapshot_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> RaftSettings {
        RaftSettings {
            heartbeat_ms: 150,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            snapshot_every_entries: 10_000,
            logs_kept_after_snapshot: 1_000,
            install_snapshot_timeout_ms: 30_000,
        }
    }
}

/// `tessera meta --config FILE`; documented in `deploy/meta.example.toml`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetaConfig {
    #[serde(flatten)]
    pub node: NodeConfig,
    /// This member's Raft id: unique in the group, never reused.
    pub node_id: u64,
    /// Where RocksDB keeps the Raft log and the state.
    pub data_dir: PathBuf,
    /// The cluster's capability-token key (`token.key` from `tessera ca init`).
    pub token_key: PathBuf,
    /// Address other members and clients reach this one at; `listen` when unset.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Redundancy of the root directory, inherited by everything below it
    /// unless a directory sets its own (`tessera policy set`).
    #[serde(default = "default_policy")]
    pub default_policy: String,
    /// Interval chunkservers are told to heartbeat at.
    #[serde(default = "default_heartbeat_ms")]
    pub chunk_heartbeat_interval_ms: u64,
    #[serde(default)]
    pub raft: RaftSettings,
    /// Self-healing: grace period, job limits (see docs/healing.md).
    #[serde(default)]
    pub repair: crate::healing::RepairSettings,
    /// Background compaction of fragmented files (docs/healing.md).
    #[serde(default)]
    pub compaction: CompactionSettings,
    /// Memory for metadata reads: half for the cache of decoded records,
    /// half for RocksDB's block cache (index and filter blocks included).
    /// The namespace itself lives on disk, so this, not the file count,
    /// bounds what a metaserver holds (docs/metaserver.md).
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Client sessions (docs/sessions.md).
    #[serde(default)]
    pub session: SessionSettings,
}

/// `[session]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionSettings {
    /// A session the leader has not heard from for this long ends, and
    /// what it held (open handles of unlinked files) is released.
    pub expiry_ms: u64,
}

impl Default for SessionSettings {
    fn default() -> SessionSettings {
        SessionSettings { expiry_ms: 60_000 }
    }
}

/// See [`MetaConfig::cache_bytes`].
pub const DEFAULT_CACHE_BYTES: u64 = 256 << 20;

fn default_cache_bytes() -> u64 {
    DEFAULT_CACHE_BYTES
}

/// `[compaction]`: the worker beside each metaserver that rewrites files
/// fragmented by random overwrites into fresh chunks while its member
/// leads. It runs in the `tessera` binary, through the client library,
/// since the metaserver itself is never in the data path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionSettings {
    pub enabled: bool,
    /// Seconds between passes.
    pub interval_s: u64,
    /// A file written within this many seconds is left alone: it may still
    /// be open for writing.
    pub quiet_s: u64,
}

impl Default for CompactionSettings {
    fn default() -> CompactionSettings {
        CompactionSettings {
            enabled: true,
            interval_s: 10,
            quiet_s: 60,
        }
    }
}

fn default_policy() -> String {
    "replicas:3".into()
}

fn default_heartbeat_ms() -> u64 {
    2_000
}

pub struct MetaServer {
    pub raft: Raft,
    rpc: RpcServer,
    addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pub service: Arc<MetaService>,
    status_page: Arc<StatusPage>,
}

/// Memtables per column family before a flush: with three families this
/// and the block cache bound RocksDB's memory.
const WRITE_BUFFER_BYTES: usize = 16 << 20;

/// Opens (or creates) a metaserver's RocksDB with its column families and
/// the memory settings `cache_bytes` implies.
pub fn open_db(dir: &std::path::Path, cache_bytes: u64) -> Result<rocksdb::DB, Error> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(&format!("create {}", dir.display()), &e))?;
    let mut options = rocksdb::Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_compression_type(rocksdb::DBCompressionType::Lz4);
    options.set_write_buffer_size(WRITE_BUFFER_BYTES);
    options.set_max_write_buffer_number(3);
    let block_cache =
        rocksdb::Cache::new_lru_cache(usize::try_from(cache_bytes / 2).unwrap_or(usize::MAX));
    let mut table = rocksdb::BlockBasedOptions::default();
    table.set_block_cache(&block_cache);
    // Index and filter blocks count against the cache instead of growing
    // with the data; the top levels stay pinned so a point read is one seek.
    table.set_cache_index_and_filter_blocks(true);
    table.set_cache_index_and_filter_blocks_with_high_priority(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_pin_top_level_index_and_filter(true);
    // A create first looks its name up, and most names are new: the bloom
    // filter answers those without reading a block.
    table.set_bloom_filter(10.0, false);
    options.set_block_based_table_factory(&table);
    // The same for the memtables, which every read searches first.
    options.set_memtable_whole_key_filtering(true);
    options.set_memtable_prefix_bloom_ratio(0.05);
    rocksdb::DB::open_cf(&options, dir, [CF_LOG, CF_RAFT, CF_STATE]).map_err(|e| {
        Error::new(
            ErrorCode::Io,
            format!(
                "open RocksDB in {}: {e}; is another metaserver using it?",
                dir.display()
            ),
        )
    })
}

impl MetaServer {
    /// Opens the store, starts Raft and the RPC service. With `bootstrap`, a
    /// member whose store holds no Raft state initializes a new group with
    /// itself as the only voter.
    pub async fn start(
        config: MetaConfig,
        registry: &prometheus::Registry,
        bootstrap: bool,
    ) -> Result<MetaServer, Error> {
        if config.session.expiry_ms < 1_000 {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "session.expiry_ms is {}; set at least 1000 (clients renew every quarter of it)",
                    config.session.expiry_ms
                ),
            ));
        }
        let identity = config.node.tls.load_for(Role::Meta)?;
        let policy: tessera_proto::meta::Policy =
            config.default_policy.parse().map_err(|e: String| {
                Error::new(ErrorCode::InvalidArgument, format!("default_policy: {e}"))
            })?;
        config
            .repair
            .validate()
            .map_err(|e| Error::new(ErrorCode::InvalidArgument, e))?;
        let token_key = TokenKey::load(&config.token_key)?;
        let metric_error =
            |err: prometheus::Error| Error::internal(format!("register metrics: {err}"));
        let metrics = MetaMetrics::new(registry, &config.node.name).map_err(metric_error)?;
        let rpc_metrics = RpcMetrics::new(registry, &config.node.name).map_err(metric_error)?;

        let data_dir = config.data_dir.clone();
        let cache_bytes = config.cache_bytes;
        let db = Arc::new(
            tokio::task::spawn_blocking(move || open_db(&data_dir, cache_bytes))
                .await
                .map_err(|e| Error::internal(format!("open store: {e}")))??,
        );
        let log_store =
            LogStore::new(db.clone()).map_err(|e| Error::io("start the Raft log", &e))?;
        let now = tessera_proto::token::unix_now_ns();
        let record_cache = usize::try_from(config.cache_bytes / 2).unwrap_or(usize::MAX);
        let mut state_machine = StateMachine::open(db.clone(), policy, now, record_cache)
            .map_err(|e| Error::new(ErrorCode::Io, format!("load state: {e}")))?;
        state_machine.apply_seconds = Some(metrics.apply_seconds.clone());
        let shared = state_machine.shared.clone();

        let bind_any = config.node.client_bind_addr();
        let client = RpcClient::new(&identity, &config.node.transport, bind_any)?;
        let raft_config = openraft::Config {
            cluster_name: "tessera".into(),
            heartbeat_interval: config.raft.heartbeat_ms,
            election_timeout_min: config.raft.election_timeout_min_ms,
            election_timeout_max: config.raft.election_timeout_max_ms,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
                config.raft.snapshot_every_entries,
            ),
            max_in_snapshot_log_to_keep: config.raft.logs_kept_after_snapshot,
            install_snapshot_timeout: config.raft.install_snapshot_timeout_ms,
            ..Default::default()
        }
        .validate()
        .map_err(|e| Error::new(ErrorCode::InvalidArgument, format!("raft settings: {e}")))?;
        let contacts: crate::network::Contacts = Arc::default();
        let raft = Raft::new(
            config.node_id,
            Arc::new(raft_config),
            Network {
                client: client.clone(),
                contacts: contacts.clone(),
            },
            log_store,
            state_machine,
        )
        .await
        .map_err(|e| Error::internal(format!("start Raft: {e}")))?;

        // The RPC server binds before Raft bootstraps so peers can reach us.
        let leader_raft = raft.clone();
        let leader_address: LeaderAddress = Arc::new(move |id| {
            leader_raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
        });
        let batcher = Batcher::start(
            raft.clone(),
            leader_address.clone(),
            metrics.batch_commands.clone(),
        );
        let service = Arc::new(MetaService {
            raft: raft.clone(),
            node_id: config.node_id,
            shared,
            batcher,
            registry: Arc::new(Mutex::new(Registry::default())),
            healing: Arc::new(Mutex::new(crate::healing::Healing::new(
                config.repair.clone(),
                std::time::Instant::now(),
            ))),
            token_key,
            metrics,
            leader_address,
            heartbeat_interval_ms: config.chunk_heartbeat_interval_ms,
            contacts,
            sessions: Mutex::new(crate::service::Sessions::new(Duration::from_millis(
                config.session.expiry_ms,
            ))),
            lock_events: tokio::sync::watch::Sender::new(0),
        });
        let rpc = RpcServer::start(
            &identity,
            &config.node.transport,
            config.node.listen,
            service.clone(),
            rpc_metrics,
        )?;
        let addr = rpc.local_addr()?;
        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());

        if bootstrap {
            let initialized = raft
                .is_initialized()
                .await
                .map_err(|e| Error::internal(format!("read Raft state: {e}")))?;
            if initialized {
                tracing::info!("Raft group already initialized; bootstrap skipped");
            } else {
                let mut members = BTreeMap::new();
                members.insert(
                    config.node_id,
                    openraft::BasicNode {
                        addr: advertise.clone(),
                    },
                );
                raft.initialize(members)
                    .await
                    .map_err(|e| Error::internal(format!("initialize the Raft group: {e}")))?;
                tracing::info!(node = config.node_id, %advertise, "initialized a new metaserver group");
            }
        }

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let status_page = StatusPage::new(service.clone(), client);
        let mut tasks = vec![
            tokio::spawn(leader_loop(service.clone(), shutdown_rx.clone())),
            tokio::spawn(status_page.clone().sample_loop(shutdown_rx)),
        ];
        if let Some(metrics_addr) = config.node.metrics_listen {
            let access = tessera_proto::obs::HttpAccess::for_listener(
                metrics_addr,
                config.node.metrics_token_file.as_deref(),
            )?;
            let (bound, task) = tessera_proto::obs::serve_http(
                metrics_addr,
                registry.clone(),
                Some(status_page.routes()),
                access,
            )
            .await?;
            tracing::info!(%bound, "serving metrics at /metrics and the status page at /");
            tasks.push(task);
        }
        tracing::info!(node = config.node_id, %addr, "metaserver started");
        Ok(MetaServer {
            raft,
            rpc,
            addr,
            shutdown_tx,
            tasks,
            service,
            status_page,
        })
    }

    /// The status page's routes, for a process that serves metrics on a
    /// listener of its own (`tessera dev`).
    pub fn status_routes(&self) -> tessera_proto::obs::Routes {
        self.status_page.routes()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until some member leads (useful right after bootstrap).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, Error> {
        let mut metrics = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(leader) = metrics.borrow().current_leader {
                return Ok(leader);
            }
            if tokio::time::timeout_at(deadline, metrics.changed())
                .await
                .is_err()
            {
                return Err(Error::new(
                    ErrorCode::Unavailable,
                    "no leader was elected in time",
                ));
            }
        }
    }

    /// Resolves if the Raft core stops on its own (a storage error it cannot
    /// go on from). The member then neither votes nor replicates, so the
    /// process should end and be restarted: it recovers from its log and
    /// snapshot, where staying up would only answer status and fail writes.
    pub async fn failed(&self) -> Error {
        let mut metrics = self.raft.metrics();
        loop {
            if let Err(fatal) = &metrics.borrow().running_state {
                return Error::new(
                    ErrorCode::Io,
                    format!("the Raft core stopped: {fatal}; restart this metaserver"),
                );
            }
            if metrics.changed().await.is_err() {
                return Error::internal("the Raft core went away; restart this metaserver");
            }
        }
    }

    pub async fn shutdown(self) {
        let _ = self.shutdown_tx.send(true);
        for task in &self.tasks {
            task.abort();
        }
        self.rpc.shutdown().await;
        let _ = self.raft.shutdown().await;
        tracing::info!(addr = %self.addr, "metaserver stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_examples_parse() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        let config: MetaConfig = tessera_proto::config::load(
            Some(&root.join("meta.example.toml")),
            &["raft.heartbeat_ms=100".into()],
        )
        .unwrap();
        assert_eq!(config.raft.heartbeat_ms, 100);
        assert_eq!(config.node_id, 1);
        config
            .default_policy
            .parse::<tessera_proto::meta::Policy>()
            .unwrap();
        let client: tessera_proto::config::ClientConfig =
            tessera_proto::config::load(Some(&root.join("client.example.toml")), &[]).unwrap();
        assert_eq!(client.meta.len(), 3);
    }
}
