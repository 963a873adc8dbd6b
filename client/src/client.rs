//! The shared handle of one client process: metadata client, RPC pool,
//! I/O settings and the per-chunkserver load the reader balances on.

use crate::meta::MetaClient;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_proto::config::{ClientConfig, IoOptions};
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::{NodeId, PieceId};
use tessera_proto::meta::MetaOp;
use tessera_proto::rpc::{Peer, RpcClient};
use tessera_proto::tls::Role;

/// One process's connection to a cluster. Cheap to share: front ends hold
/// an `Arc<Client>` and open writers and readers from it.
pub struct Client {
    meta: MetaClient,
    io: IoOptions,
    /// Reads in flight per chunkserver, from this process.
    load: Mutex<HashMap<NodeId, u32>>,
    addresses: Mutex<HashMap<String, SocketAddr>>,
    /// Chunkservers that recently timed out or could not be reached, with
    /// when: readers try them last, so a dead server costs one timeout
    /// rather than one per read.
    suspects: Mutex<HashMap<NodeId, Instant>>,
}

/// How long a server that failed to answer is tried last.
const SUSPECT_FOR: Duration = Duration::from_secs(120);

impl Client {
    pub fn new(meta: MetaClient, io: IoOptions) -> Arc<Client> {
        Arc::new(Client {
            meta,
            io,
            load: Mutex::new(HashMap::new()),
            addresses: Mutex::new(HashMap::new()),
            suspects: Mutex::new(HashMap::new()),
        })
    }

    /// Connects with a client configuration (`client.toml`).
    pub async fn connect(config: &ClientConfig) -> Result<Arc<Client>, Error> {
        let meta = MetaClient::from_config(config).await?;
        Ok(Client::new(meta, config.io.clone()))
    }

    pub fn meta(&self) -> &MetaClient {
        &self.meta
    }

    pub fn rpc(&self) -> &RpcClient {
        self.meta.rpc()
    }

    pub fn io(&self) -> &IoOptions {
        &self.io
    }

    /// The chunkserver at `address` (as the metaserver recorded it).
    pub(crate) async fn chunkserver(&self, address: &str) -> Result<Peer, Error> {
        let known = self
            .addresses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
            .copied();
        let addr = match known {
            Some(addr) => addr,
            None => {
                let resolved = match address.parse::<SocketAddr>() {
                    Ok(addr) => addr,
                    Err(_) => tokio::net::lookup_host(address)
                        .await
                        .ok()
                        .and_then(|mut found| found.next())
                        .ok_or_else(|| {
                            Error::new(
                                ErrorCode::Unavailable,
                                format!("chunkserver address {address:?} does not resolve"),
                            )
                        })?,
                };
                self.addresses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(address.to_string(), resolved);
                resolved
            }
        };
        Ok(Peer::new(addr, Role::Chunk))
    }

    /// Notes that `node` did not answer in time or at all.
    pub(crate) fn suspect(&self, node: NodeId) {
        self.suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, Instant::now());
    }

    /// Whether `node` failed to answer within the last [`SUSPECT_FOR`].
    pub(crate) fn is_suspect(&self, node: NodeId) -> bool {
        let mut suspects = self.suspects.lock().unwrap_or_else(|p| p.into_inner());
        match suspects.get(&node) {
            Some(at) if at.elapsed() < SUSPECT_FOR => true,
            Some(_) => {
                suspects.remove(&node);
                false
            }
            None => false,
        }
    }

    pub(crate) fn load_of(&self, node: NodeId) -> u32 {
        self.load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .copied()
            .unwrap_or(0)
    }

    /// Counts a read against `node` until the guard drops.
    pub(crate) fn reading(self: &Arc<Self>, node: NodeId) -> LoadGuard {
        *self
            .load
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node)
            .or_insert(0) += 1;
        LoadGuard {
            client: self.clone(),
            node,
        }
    }

    /// Tells the metaserver about pieces found bad or missing so repair
    /// can act. Best effort: a failed report is logged, never surfaced,
    /// because the caller already has its data from elsewhere.
    pub async fn report(&self, pieces: Vec<PieceId>) {
        if pieces.is_empty() {
            return;
        }
        tracing::warn!(?pieces, "reporting bad or missing pieces");
        if let Err(err) = self
            .meta
            .call(MetaOp::ReportPieces {
                pieces: pieces.clone(),
            })
            .await
        {
            tracing::warn!(?pieces, error = %err, "could not report pieces to the metaserver");
        }
    }
}

pub(crate) struct LoadGuard {
    client: Arc<Client>,
    node: NodeId,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut load = self.client.load.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = load.get_mut(&self.node) {
            *count = count.saturating_sub(1);
        }
    }
}
