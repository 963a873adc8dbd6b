//! Metadata calls with leader discovery.
//!
//! A call goes to the remembered leader, else to the configured members in
//! turn. `NotLeader` with an address moves the call there; an unreachable
//! member or a lost leader moves it to the next member after a short
//! back-off. Every attempt of one call carries the same request id, so a
//! mutation whose first attempt did commit (its reply lost with the old
//! leader) is answered from the metaserver's table of recent ids rather
//! than applied again.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;
use tessera_proto::config::ClientConfig;
use tessera_proto::error::{Error, ErrorCode};
use tessera_proto::ids::RequestId;
use tessera_proto::meta::{MetaCall, MetaOp, MetaReply};
use tessera_proto::rpc::{CallOptions, Peer, RpcClient};
use tessera_proto::tls::Role;
use tessera_proto::wire::Method;
use tokio::time::Instant;

/// How long one call keeps trying across leader changes.
pub const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Deadline of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct MetaClient {
    rpc: RpcClient,
    members: Vec<SocketAddr>,
    leader: Mutex<Option<SocketAddr>>,
}

impl MetaClient {
    pub fn new(rpc: RpcClient, members: Vec<SocketAddr>) -> Result<MetaClient, Error> {
        if members.is_empty() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "no metaserver address configured",
            ));
        }
        Ok(MetaClient {
            rpc,
            members,
            leader: Mutex::new(None),
        })
    }

    /// Connects with a client configuration (`client.toml`).
    pub async fn from_config(config: &ClientConfig) -> Result<MetaClient, Error> {
        let identity = config.tls.load()?;
        let rpc = RpcClient::new(
            &identity,
            &config.transport,
            "0.0.0.0:0"
                .parse()
                .map_err(|_| Error::internal("bind address"))?,
        )?;
        let mut members = Vec::new();
        for address in &config.meta {
            let resolved = tokio::net::lookup_host(address).await.map_err(|e| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("metaserver address {address:?}: {e}"),
                )
            })?;
            members.extend(resolved);
        }
        MetaClient::new(rpc, members)
    }

    pub fn rpc(&self) -> &RpcClient {
        &self.rpc
    }

    fn remembered(&self) -> Option<SocketAddr> {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, leader: Option<SocketAddr>) {
        *self.leader.lock().unwrap_or_else(|p| p.into_inner()) = leader;
    }

    /// One namespace operation, with a fresh request id.
    pub async fn call(&self, op: MetaOp) -> Result<MetaReply, Error> {
        self.call_with_id(RequestId::random(), op).await
    }

    /// One namespace operation under `request_id` (reuse it to retry a call
    /// whose outcome is unknown).
    pub async fn call_with_id(
        &self,
        request_id: RequestId,
        op: MetaOp,
    ) -> Result<MetaReply, Error> {
        self.leader_call(&MetaCall { request_id, op }).await
    }

    /// Any metaserver method, sent to the leader.
    pub async fn leader_call<M: Method + Clone>(&self, message: &M) -> Result<M::Response, Error> {
        let deadline = Instant::now() + CALL_DEADLINE;
        let mut next_member = 0usize;
        let mut target = self.remembered();
        let mut backoff = Duration::from_millis(50);
        let mut last_error = Error::new(ErrorCode::Unavailable, "no metaserver answered");
        while Instant::now() < deadline {
            let addr = match target.take() {
                Some(addr) => addr,
                None => {
                    let addr = self.members[next_member % self.members.len()];
                    next_member += 1;
                    addr
                }
            };
            let options = CallOptions {
                timeout: ATTEMPT_TIMEOUT,
                retries: 0,
                request_id: None,
            };
            match self
                .rpc
                .call(Peer::new(addr, Role::Meta), message, options)
                .await
            {
                Ok(reply) => {
                    self.remember(Some(addr));
                    return Ok(reply);
                }
                Err(err) if err.code == ErrorCode::NotLeader => {
                    let redirect = err.redirect.as_deref().and_then(|r| r.parse().ok());
                    self.remember(redirect);
                    if redirect.is_none() {
                        // An election is under way; give it a moment.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                    target = redirect;
                    last_error = err;
                }
                Err(err) if err.is_retryable() || err.code == ErrorCode::Cancelled => {
                    self.remember(None);
                    tracing::debug!(%addr, error = %err, "metaserver attempt failed; trying another member");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                    last_error = err;
                }
                Err(err) => return Err(err),
            }
        }
        Err(Error::new(
            last_error.code,
            format!(
                "no metaserver leader answered within {} s: {last_error}",
                CALL_DEADLINE.as_secs()
            ),
        ))
    }

    /// A method any member answers (status): the first that does.
    pub async fn any_call<M: Method + Clone>(&self, message: &M) -> Result<M::Response, Error> {
        let mut last_error = Error::new(ErrorCode::Unavailable, "no metaserver answered");
        let mut order: Vec<SocketAddr> = self.remembered().into_iter().collect();
        order.extend(self.members.iter().copied());
        for addr in order {
            let options = CallOptions {
                timeout: ATTEMPT_TIMEOUT,
                retries: 1,
                request_id: None,
            };
            match self
                .rpc
                .call(Peer::new(addr, Role::Meta), message, options)
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }
}
