//! The client half: a connection pool per peer, typed calls with deadlines,
//! cancellation by drop, and retries for idempotent calls only.
//!
//! Cancellation: dropping an [`OutgoingCall`] or a pending call future resets
//! its stream, so the server sees a cancelled call, never a short request that
//! looks complete. A timeout is an unknown outcome: a non-idempotent call that
//! timed out may or may not have been applied, which is why mutations carry a
//! request id and are made idempotent on the server.

use super::bulk::{BulkReader, BulkWriter};
use super::transport::TransportOptions;
use super::{connection_error, read_frame};
use crate::error::{Error, ErrorCode};
use crate::ids::RequestId;
use crate::limits::{CALL_RETRIES_MAX, CALL_TIMEOUT_DEFAULT_MS, RESPONSE_FIXED_BYTES};
use crate::tls::{Identity, Role, client_crypto};
use crate::wire::{self, Method};
use bytes::Bytes;
use std::collections::HashMap;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A server to call: its address and the role its certificate must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Peer {
    pub addr: SocketAddr,
    pub role: Role,
}

impl Peer {
    pub fn new(addr: SocketAddr, role: Role) -> Peer {
        Peer { addr, role }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.role, self.addr)
    }
}

/// Per-call settings.
#[derive(Clone, Copy, Debug)]
pub struct CallOptions {
    /// Deadline for the whole call, retries included.
    pub timeout: Duration,
    /// Retries after a retryable failure; ignored for non-idempotent methods
    /// and capped at [`CALL_RETRIES_MAX`].
    pub retries: u32,
    /// Request id; a fresh one when `None`. Retries reuse it.
    pub request_id: Option<RequestId>,
}

impl Default for CallOptions {
    fn default() -> CallOptions {
        CallOptions {
            timeout: Duration::from_millis(CALL_TIMEOUT_DEFAULT_MS),
            retries: 3,
            request_id: None,
        }
    }
}

impl CallOptions {
    pub fn with_timeout(timeout: Duration) -> CallOptions {
        CallOptions {
            timeout,
            ..CallOptions::default()
        }
    }
}

struct PeerSlot {
    connections: tokio::sync::Mutex<Vec<quinn::Connection>>,
    next: AtomicUsize,
}

struct Inner {
    endpoint: quinn::Endpoint,
    /// For loopback peers.
    config: quinn::ClientConfig,
    /// For every other peer.
    network_config: quinn::ClientConfig,
    options: TransportOptions,
    pool: Mutex<HashMap<Peer, Arc<PeerSlot>>>,
}

/// A pooled RPC client. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<Inner>,
}

impl RpcClient {
    /// A client presenting `identity`, bound to an ephemeral port on
    /// `bind_addr` (for example `127.0.0.1:0` or `0.0.0.0:0`).
    pub fn new(
        identity: &Identity,
        options: &TransportOptions,
        bind_addr: SocketAddr,
    ) -> Result<RpcClient, Error> {
        RpcClient::with_crypto(client_crypto(identity)?, options, bind_addr)
    }

    /// A client with a prepared rustls configuration (tests use it to present
    /// no certificate at all).
    pub fn with_crypto(
        crypto: rustls::ClientConfig,
        options: &TransportOptions,
        bind_addr: SocketAddr,
    ) -> Result<RpcClient, Error> {
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|err| Error::internal(format!("QUIC client crypto: {err}")))?;
        let crypto = Arc::new(crypto);
        // Loopback peers and network peers get their own packet-size bound
        // (see `TransportOptions::mtu_bound_for`).
        let mut config = quinn::ClientConfig::new(crypto.clone());
        config.transport_config(Arc::new(
            options.transport_config(Some(std::net::Ipv4Addr::LOCALHOST.into()))?,
        ));
        let mut network_config = quinn::ClientConfig::new(crypto);
        network_config.transport_config(Arc::new(
            options.transport_config(Some(std::net::Ipv4Addr::UNSPECIFIED.into()))?,
        ));
        let endpoint = options.bind(bind_addr, None)?;
        Ok(RpcClient {
            inner: Arc::new(Inner {
                endpoint,
                config,
                network_config,
                options: options.clone(),
                pool: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn slot(&self, peer: Peer) -> Arc<PeerSlot> {
        let mut pool = self
            .inner
            .pool
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        pool.entry(peer)
            .or_insert_with(|| {
                Arc::new(PeerSlot {
                    connections: tokio::sync::Mutex::new(Vec::new()),
                    next: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// A live connection to `peer` from the pool, dialing if needed. Exposed
    /// for tests and benchmarks that speak raw QUIC on the same connection.
    pub async fn connection(&self, peer: Peer) -> Result<quinn::Connection, Error> {
        let slot = self.slot(peer);
        let wanted = self.inner.options.connections_per_peer as usize;
        let index = slot.next.fetch_add(1, Ordering::Relaxed) % wanted;
        let mut connections = slot.connections.lock().await;
        if let Some(existing) = connections.get(index)
            && existing.close_reason().is_none()
        {
            return Ok(existing.clone());
        }
        let label = peer.to_string();
        let config = match peer.addr.ip().is_loopback() {
            true => self.inner.config.clone(),
            false => self.inner.network_config.clone(),
        };
        let connecting = self
            .inner
            .endpoint
            .connect_with(config, peer.addr, peer.role.dns_name())
            .map_err(|err| Error::new(ErrorCode::Unavailable, format!("dial {label}: {err}")))?;
        let connection = connecting
            .await
            .map_err(|err| connection_error(&label, &err))?;
        if index < connections.len() {
            connections[index] = connection.clone();
        } else {
            connections.push(connection.clone());
        }
        Ok(connection)
    }

    /// Starts a call that sends `bulk_len` bytes of request bulk through the
    /// returned [`OutgoingCall`]. Streaming calls are never retried: their
    /// body cannot be replayed.
    pub async fn open<M: Method>(
        &self,
        peer: Peer,
        message: &M,
        bulk_len: u64,
        options: CallOptions,
    ) -> Result<OutgoingCall<M>, Error> {
        let deadline = Instant::now() + options.timeout;
        let request_id = options.request_id.unwrap_or_else(RequestId::fresh);
        self.open_at(peer, message, bulk_len, request_id, deadline)
            .await
    }

    async fn open_at<M: Method>(
        &self,
        peer: Peer,
        message: &M,
        bulk_len: u64,
        request_id: RequestId,
        deadline: Instant,
    ) -> Result<OutgoingCall<M>, Error> {
        let label = peer.to_string();
        let timeout_ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .clamp(1, u32::MAX as u128) as u32;
        let frame = wire::encode_request(request_id, timeout_ms, bulk_len, message)?;
        let opened = async {
            let connection = self.connection(peer).await?;
            let (mut send, recv) = connection
                .open_bi()
                .await
                .map_err(|err| connection_error(&label, &err))?;
            send.write_all(&frame)
                .await
                .map_err(|err| super::write_error(&label, &err))?;
            Ok::<_, Error>((send, recv))
        };
        let (send, recv) = with_deadline(deadline, &label, M::NAME, opened).await?;
        Ok(OutgoingCall {
            writer: BulkWriter::new(send, bulk_len, label.clone()),
            recv: Some(recv),
            deadline,
            peer: label,
            _method: PhantomData,
        })
    }

    /// A call without bulk in either direction.
    pub async fn call<M: Method>(
        &self,
        peer: Peer,
        message: &M,
        options: CallOptions,
    ) -> Result<M::Response, Error> {
        let (response, bulk) = self
            .call_bulk(peer, message, Bytes::new(), 0, options)
            .await?;
        debug_assert!(bulk.is_empty());
        Ok(response)
    }

    /// A call sending `body` as request bulk and collecting up to
    /// `response_limit_bytes` of response bulk. Retried on retryable errors
    /// when `M` is idempotent, with the same request id each time.
    pub async fn call_bulk<M: Method>(
        &self,
        peer: Peer,
        message: &M,
        body: Bytes,
        response_limit_bytes: usize,
        options: CallOptions,
    ) -> Result<(M::Response, Vec<u8>), Error> {
        let deadline = Instant::now() + options.timeout;
        let request_id = options.request_id.unwrap_or_else(RequestId::fresh);
        let retries = if M::IDEMPOTENT {
            options.retries.min(CALL_RETRIES_MAX)
        } else {
            0
        };
        let mut attempt = 0;
        loop {
            let result = async {
                let mut call = self
                    .open_at(peer, message, body.len() as u64, request_id, deadline)
                    .await?;
                if !body.is_empty() {
                    call.write_bytes(body.clone()).await?;
                }
                let mut response = call.finish().await?;
                let bulk = response.bulk_to_vec(response_limit_bytes).await?;
                Ok::<_, Error>((response.message, bulk))
            }
            .await;
            match result {
                Err(err)
                    if err.is_retryable() && attempt < retries && Instant::now() < deadline =>
                {
                    attempt += 1;
                    let backoff = Duration::from_millis(10 << attempt.min(6));
                    tracing::debug!(method = M::NAME, peer = %peer, attempt, error = %err, "retrying idempotent call");
                    tokio::time::sleep_until((Instant::now() + backoff).min(deadline)).await;
                }
                other => return other,
            }
        }
    }

    /// Closes every pooled connection.
    pub fn close(&self) {
        self.inner.endpoint.close(0u32.into(), b"client closed");
    }
}

async fn with_deadline<T>(
    deadline: Instant,
    peer: &str,
    method: &str,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorCode::Timeout,
            format!("{method} to {peer} did not complete before its deadline"),
        )),
    }
}

/// A call whose request bulk is being streamed.
pub struct OutgoingCall<M: Method> {
    writer: BulkWriter,
    recv: Option<quinn::RecvStream>,
    deadline: Instant,
    peer: String,
    _method: PhantomData<M>,
}

impl<M: Method> OutgoingCall<M> {
    /// Request bulk bytes still to send.
    pub fn remaining(&self) -> u64 {
        self.writer.remaining()
    }

    /// Sends request bulk. If the server stopped reading, its error response
    /// is returned instead of a bare "stopped".
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        let result =
            with_deadline(self.deadline, &self.peer, M::NAME, self.writer.write(data)).await;
        self.explain(result).await
    }

    /// Sends an owned buffer of request bulk without copying.
    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        let result = with_deadline(
            self.deadline,
            &self.peer,
            M::NAME,
            self.writer.write_bytes(data),
        )
        .await;
        self.explain(result).await
    }

    async fn explain(&mut self, result: Result<(), Error>) -> Result<(), Error> {
        match result {
            Err(err) if err.code == ErrorCode::Cancelled => match self.read_response().await {
                Err(server_error) => Err(server_error),
                Ok(_) => Err(err),
            },
            other => other,
        }
    }

    async fn read_response(&mut self) -> Result<Response<M>, Error> {
        let Some(mut recv) = self.recv.take() else {
            return Err(Error::internal("response already read"));
        };
        let peer = self.peer.clone();
        let head = with_deadline(self.deadline, &peer, M::NAME, async {
            let body = read_frame(&mut recv, &peer, RESPONSE_FIXED_BYTES).await?;
            wire::decode_response(&body)
        })
        .await?;
        let payload = head.result?;
        let message = wire::decode_message::<M::Response>(&payload)?;
        Ok(Response {
            message,
            bulk: BulkReader::new(recv, head.bulk_len, peer),
            deadline: self.deadline,
        })
    }

    /// Ends framed request bulk (see [`crate::wire::BULK_FRAMED`]) with its
    /// trailer and waits for the response header.
    pub async fn finish_with_trailer(mut self, trailer: &[u8]) -> Result<Response<M>, Error> {
        let result = with_deadline(
            self.deadline,
            &self.peer,
            M::NAME,
            self.writer.finish_with_trailer(trailer),
        )
        .await;
        self.explain(result).await?;
        self.read_response().await
    }

    /// Ends the request and waits for the response header.
    pub async fn finish(mut self) -> Result<Response<M>, Error> {
        if let Err(err) = self.writer.finish() {
            self.writer.reset(super::reset_code::CANCELLED);
            return Err(err);
        }
        self.read_response().await
    }
}

/// A response header and its bulk bytes still on the stream.
pub struct Response<M: Method> {
    pub message: M::Response,
    bulk: BulkReader,
    deadline: Instant,
}

impl<M: Method> Response<M> {
    pub fn bulk_len(&self) -> u64 {
        self.bulk.remaining()
    }

    /// The bulk reader, for streaming the response body. Reads on it are not
    /// bounded by the call's deadline; the caller bounds them.
    pub fn bulk(&mut self) -> &mut BulkReader {
        &mut self.bulk
    }

    /// Reads the whole response bulk, at most `limit_bytes`, by the deadline.
    pub async fn bulk_to_vec(&mut self, limit_bytes: usize) -> Result<Vec<u8>, Error> {
        let deadline = self.deadline;
        with_deadline(deadline, "peer", M::NAME, self.bulk.to_vec(limit_bytes)).await
    }
}
