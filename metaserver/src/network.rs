//! Raft traffic between metaservers over the project's RPC layer.
//!
//! Raft messages can be large (a batch of log entries, a snapshot chunk), so
//! they travel as bulk bytes (postcard-encoded), never in the size-capped
//! header. Only peers holding a metaserver certificate may call these
//! methods.

// openraft's error types are large by design and fixed by its traits.
#![allow(clippy::result_large_err)]

use crate::types::TypeConfig;
use bytes::Bytes;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::rpc::{CallOptions, Peer, RpcClient};
use tessera_proto::tls::Role;
use tessera_proto::wire::Method;

/// Largest Raft message accepted as bulk.
pub const RAFT_MESSAGE_MAX_BYTES: usize = 256 * 1024 * 1024;

macro_rules! raft_method {
    ($name:ident, $id:literal, $label:literal) => {
        #[derive(Clone, Debug, Serialize, Deserialize)]
        pub struct $name;
        impl Method for $name {
            const ID: u16 = $id;
            const NAME: &'static str = $label;
            const IDEMPOTENT: bool = false;
            type Response = ();
        }
    };
}

raft_method!(RaftAppend, 300, "raft_append");
raft_method!(RaftVote, 301, "raft_vote");
raft_method!(RaftSnapshot, 302, "raft_snapshot");

/// When each member last answered a Raft call from this one; on the leader,
/// its view of every follower, which `tessera admin status` reports.
pub type Contacts = Arc<Mutex<BTreeMap<u64, Instant>>>;

#[derive(Clone)]
pub struct Network {
    pub client: RpcClient,
    pub contacts: Contacts,
}

pub struct NetworkClient {
    client: RpcClient,
    target: u64,
    address: String,
    contacts: Contacts,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NetworkClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> NetworkClient {
        NetworkClient {
            client: self.client.clone(),
            target,
            address: node.addr.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

#[derive(Debug)]
struct TransportError(String);
impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for TransportError {}

impl NetworkClient {
    /// Sends `request` as bulk and decodes the reply's bulk as `Result<R, E>`.
    async fn send<
        M: Method<Response = ()>,
        Req: Serialize,
        R: for<'de> Deserialize<'de>,
        E: for<'de> Deserialize<'de> + std::error::Error,
    >(
        &self,
        method: M,
        request: &Req,
        timeout: Duration,
    ) -> Result<R, RPCError<u64, BasicNode, RaftError<u64, E>>> {
        let addr: SocketAddr = self.address.parse().map_err(|_| {
            RPCError::Unreachable(Unreachable::new(&TransportError(format!(
                "bad metaserver address {:?}",
                self.address
            ))))
        })?;
        let body = postcard::to_stdvec(request)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        let options = CallOptions {
            timeout,
            retries: 0,
            request_id: None,
        };
        let result = self
            .client
            .call_bulk(
                Peer::new(addr, Role::Meta),
                &method,
                Bytes::from(body),
                RAFT_MESSAGE_MAX_BYTES,
                options,
            )
            .await;
        let (_, reply) = result.map_err(|err: Error| match err.code {
            ErrorCode::Unavailable | ErrorCode::ShuttingDown => {
                RPCError::Unreachable(Unreachable::new(&TransportError(err.to_string())))
            }
            _ => RPCError::Network(NetworkError::new(&TransportError(err.to_string()))),
        })?;
        self.contacts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.target, Instant::now());
        let decoded: Result<R, RaftError<u64, E>> = postcard::from_bytes(&reply)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError(e.to_string()))))?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for NetworkClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send(RaftAppend, &rpc, option.hard_ttl()).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.send(
            RaftSnapshot,
            &rpc,
            option.hard_ttl().max(Duration::from_secs(30)),
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.send(RaftVote, &rpc, option.hard_ttl()).await
    }
}

/// Decodes a Raft request from bulk bytes.
pub fn decode_request<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    postcard::from_bytes(bytes)
        .map_err(|e| Error::new(ErrorCode::Malformed, format!("decode Raft message: {e}")))
}

/// Encodes a Raft reply as bulk bytes.
pub fn encode_reply<T: Serialize>(reply: &T) -> Result<Vec<u8>, Error> {
    postcard::to_stdvec(reply).map_err(|e| Error::internal(format!("encode Raft reply: {e}")))
}

pub type VoteReply = Result<VoteResponse<u64>, RaftError<u64>>;
pub type AppendReply = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
pub type SnapshotReply = Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;
