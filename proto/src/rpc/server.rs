//! The server half: accept loop, per-stream dispatch to a [`Service`], and
//! graceful shutdown.
//!
//! Call order on a stream: the request header is read (bounded in size and
//! time), the service handles the [`Call`] (reading request bulk, then
//! [`Call::respond`], then writing response bulk), and the server finishes
//! the stream. A handler error before the response becomes an error frame; an
//! error after it resets the stream, since a half-sent bulk body cannot be
//! taken back.

use super::bulk::{BulkReader, BulkWriter};
use super::metrics::RpcMetrics;
use super::transport::TransportOptions;
use super::{read_frame, reset_code};
use crate::error::{Error, ErrorCode};
use crate::ids::RequestId;
use crate::limits::{HEADER_READ_TIMEOUT_MS, REQUEST_FIXED_BYTES, SHUTDOWN_GRACE_MS};
use crate::tls::{Identity, Role, peer_role, server_crypto};
use crate::wire::{self, Method, RequestHead};
use serde::Serialize;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// Who is calling: the role from the peer's verified certificate.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    pub role: Role,
    pub addr: SocketAddr,
}

impl PeerInfo {
    /// Refuses the call unless the peer holds one of `allowed` roles.
    pub fn require_role(&self, allowed: &[Role], method: &str) -> Result<(), Error> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(Error::new(
                ErrorCode::WrongRole,
                format!(
                    "{method} may not be called by a {} peer ({}); allowed: {}",
                    self.role,
                    self.addr,
                    allowed
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    }
}

/// What a server serves. One `handle` call per RPC; it must either call
/// [`Call::respond`] (and then send the declared response bulk) or return an
/// error.
pub trait Service: Send + Sync + 'static {
    fn handle(&self, call: &mut Call) -> impl Future<Output = Result<(), Error>> + Send;

    /// The method's name for metrics and logs.
    fn method_name(&self, method: u16) -> &'static str {
        let _ = method;
        "unknown"
    }
}

/// One incoming call.
pub struct Call {
    peer: Arc<PeerInfo>,
    head: RequestHead,
    request_bulk: BulkReader,
    send: Option<quinn::SendStream>,
    response_bulk: Option<BulkWriter>,
    peer_label: String,
}

impl Call {
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    pub fn method(&self) -> u16 {
        self.head.method
    }

    pub fn request_id(&self) -> RequestId {
        self.head.request_id
    }

    /// The caller's deadline for the whole call, if it gave one.
    pub fn timeout(&self) -> Option<Duration> {
        (self.head.timeout_ms > 0).then(|| Duration::from_millis(self.head.timeout_ms.into()))
    }

    /// Decodes the request message as `M`.
    pub fn decode<M: Method>(&self) -> Result<M, Error> {
        debug_assert_eq!(self.head.method, M::ID);
        wire::decode_message(&self.head.payload)
    }

    /// The request's bulk bytes.
    pub fn request_bulk(&mut self) -> &mut BulkReader {
        &mut self.request_bulk
    }

    /// Sends the response header announcing `bulk_len` bytes of bulk, which
    /// the handler then writes through [`Call::response_bulk`].
    pub async fn respond<R: Serialize>(&mut self, message: &R, bulk_len: u64) -> Result<(), Error> {
        let frame = wire::encode_response(message, bulk_len)?;
        let Some(mut send) = self.send.take() else {
            return Err(Error::internal("respond called twice on one call"));
        };
        send.write_all(&frame)
            .await
            .map_err(|err| super::write_error(&self.peer_label, &err))?;
        self.response_bulk = Some(BulkWriter::new(send, bulk_len, self.peer_label.clone()));
        Ok(())
    }

    /// The response bulk writer; an error before [`Call::respond`].
    pub fn response_bulk(&mut self) -> Result<&mut BulkWriter, Error> {
        self.response_bulk
            .as_mut()
            .ok_or_else(|| Error::internal("response bulk written before respond"))
    }

    fn responded(&self) -> bool {
        self.send.is_none()
    }
}

/// Counts calls in flight so shutdown can wait for them.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    idle: Notify,
}

struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

struct Shared<S> {
    service: Arc<S>,
    metrics: RpcMetrics,
    in_flight: Arc<InFlight>,
    shutting_down: AtomicBool,
}

/// A running RPC server. Dropping it without [`RpcServer::shutdown`] closes
/// the endpoint abruptly.
pub struct RpcServer {
    endpoint: quinn::Endpoint,
    shutdown_tx: watch::Sender<bool>,
    in_flight: Arc<InFlight>,
    accept_task: tokio::task::JoinHandle<()>,
    stop: Arc<dyn Fn() + Send + Sync>,
}

impl RpcServer {
    /// Binds `addr` and serves `service` until [`RpcServer::shutdown`].
    pub fn start<S: Service>(
        identity: &Identity,
        options: &TransportOptions,
        addr: SocketAddr,
        service: Arc<S>,
        metrics: RpcMetrics,
    ) -> Result<RpcServer, Error> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(server_crypto(identity)?)
            .map_err(|err| Error::internal(format!("QUIC server crypto: {err}")))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let peers = (!addr.ip().is_unspecified()).then_some(addr.ip());
        config.transport_config(Arc::new(options.transport_config(peers)?));
        let endpoint = options.bind(addr, Some(config))?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let in_flight = Arc::new(InFlight::default());
        let shared = Arc::new(Shared {
            service,
            metrics,
            in_flight: in_flight.clone(),
            shutting_down: AtomicBool::new(false),
        });
        let stop_shared = shared.clone();
        let stop = Arc::new(move || stop_shared.shutting_down.store(true, Ordering::SeqCst));
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared, shutdown_rx));
        Ok(RpcServer {
            endpoint,
            shutdown_tx,
            in_flight,
            accept_task,
            stop,
        })
    }

    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.endpoint
            .local_addr()
            .map_err(|err| Error::io("read server address", &err))
    }

    /// Stops taking connections, answers new calls with `ShuttingDown`, waits
    /// up to [`SHUTDOWN_GRACE_MS`] for calls in flight, then closes.
    pub async fn shutdown(self) {
        (self.stop)();
        let _ = self.shutdown_tx.send(true);
        let grace = Duration::from_millis(SHUTDOWN_GRACE_MS);
        if tokio::time::timeout(grace, self.in_flight.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                in_flight = self.in_flight.count.load(Ordering::SeqCst),
                "calls still running after the shutdown grace period; closing their connections"
            );
        }
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.accept_task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop<S: Service>(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared<S>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            _ = shutdown.changed() => return,
        };
        let Some(incoming) = incoming else { return };
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => {
                    shared.metrics.connections_refused.inc();
                    tracing::info!(%remote, error = %err, "refused connection");
                    return;
                }
            };
            let Some(role) = peer_role(&connection) else {
                shared.metrics.connections_refused.inc();
                tracing::info!(%remote, "refused connection: certificate names no role");
                connection.close(1u32.into(), b"certificate names no role");
                return;
            };
            let peer = Arc::new(PeerInfo { role, addr: remote });
            serve_connection(connection, peer, shared).await;
        });
    }
}

async fn serve_connection<S: Service>(
    connection: quinn::Connection,
    peer: Arc<PeerInfo>,
    shared: Arc<Shared<S>>,
) {
    loop {
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(err) => {
                tracing::debug!(peer = %peer.addr, error = %err, "connection ended");
                return;
            }
        };
        let guard = shared.in_flight.enter();
        let shared = shared.clone();
        let peer = peer.clone();
        tokio::spawn(async move {
            serve_stream(send, recv, peer, &shared).await;
            drop(guard);
        });
    }
}

async fn send_error(send: &mut quinn::SendStream, error: &Error) {
    let frame = wire::encode_error(error);
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}

async fn serve_stream<S: Service>(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    peer: Arc<PeerInfo>,
    shared: &Shared<S>,
) {
    let started = Instant::now();
    let peer_label = peer.addr.to_string();
    let header_timeout = Duration::from_millis(HEADER_READ_TIMEOUT_MS);
    let head = match tokio::time::timeout(
        header_timeout,
        read_frame(&mut recv, &peer_label, REQUEST_FIXED_BYTES),
    )
    .await
    {
        Ok(Ok(body)) => wire::decode_request(&body),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(Error::new(
            ErrorCode::Timeout,
            format!("no request header within {HEADER_READ_TIMEOUT_MS} ms"),
        )),
    };
    let head = match head {
        Ok(head) => head,
        Err(err) => {
            tracing::debug!(peer = %peer.addr, error = %err, "bad request header");
            shared
                .metrics
                .calls
                .with_label_values(&["invalid", &(err.code as u16).to_string()])
                .inc();
            let _ = recv.stop(reset_code::STOP.into());
            send_error(&mut send, &err).await;
            return;
        }
    };
    let method_name = shared.service.method_name(head.method);
    if shared.shutting_down.load(Ordering::SeqCst) {
        let err = Error::new(
            ErrorCode::ShuttingDown,
            "server is shutting down; retry another server or later",
        );
        let _ = recv.stop(reset_code::STOP.into());
        send_error(&mut send, &err).await;
        return;
    }
    shared.metrics.in_flight.inc();
    let timeout = (head.timeout_ms > 0).then(|| Duration::from_millis(head.timeout_ms.into()));
    let mut call = Call {
        peer: peer.clone(),
        request_bulk: BulkReader::new(recv, head.bulk_len, peer_label.clone()),
        head,
        send: Some(send),
        response_bulk: None,
        peer_label,
    };
    let outcome = match timeout {
        Some(limit) => match tokio::time::timeout(limit, shared.service.handle(&mut call)).await {
            Ok(result) => result,
            Err(_) => Err(Error::new(
                ErrorCode::Timeout,
                format!(
                    "{method_name} exceeded the caller's deadline of {} ms",
                    limit.as_millis()
                ),
            )),
        },
        None => shared.service.handle(&mut call).await,
    };
    let outcome = outcome.and_then(|()| {
        if !call.responded() {
            return Err(Error::internal(format!(
                "{method_name} handler returned without responding"
            )));
        }
        let writer = call.response_bulk()?;
        writer.finish()
    });
    let received = call.request_bulk.received();
    shared.metrics.bulk_bytes_received.inc_by(received);
    if let Some(writer) = call.response_bulk.as_ref() {
        shared.metrics.bulk_bytes_sent.inc_by(writer.sent());
    }
    let code = match &outcome {
        Ok(()) => 0,
        Err(err) => err.code as u16,
    };
    if let Err(err) = outcome {
        if err.code == ErrorCode::Internal {
            tracing::error!(method = method_name, peer = %peer.addr, error = %err, "call failed");
        } else {
            tracing::debug!(method = method_name, peer = %peer.addr, error = %err, "call failed");
        }
        call.request_bulk.stop();
        match call.send.as_mut() {
            Some(send) => send_error(send, &err).await,
            None => {
                if let Some(writer) = call.response_bulk.as_mut() {
                    writer.reset(reset_code::ERROR_BASE + u32::from(err.code as u16));
                }
            }
        }
    }
    shared.metrics.in_flight.dec();
    shared
        .metrics
        .calls
        .with_label_values(&[method_name, &code.to_string()])
        .inc();
    shared
        .metrics
        .latency_seconds
        .with_label_values(&[method_name])
        .observe(started.elapsed().as_secs_f64());
}
