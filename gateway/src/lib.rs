//! `tessera-gateway`: the S3 API over `tessera-client`. Buckets are
//! top-level directories and keys are paths below them, so an object put
//! through S3 is a file in the mount and the other way round. s3s parses
//! requests and verifies signatures; this crate maps operations onto the
//! namespace (see docs/s3.md for what is supported).

mod auth;
mod body;
mod cors;
pub mod grants;
mod host;
mod list;
pub mod names;
mod s3;
mod store;
mod unsized_body;
mod versions;

use auth::RequestInfo;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tessera_client::Client;
use tessera_proto::config::{ClientConfig, LogConfig};
use tessera_proto::error::Error;
use tessera_proto::meta::{FileKind, MetaOp};
use tessera_proto::session::SessionKind;
use tokio::net::TcpListener;

/// A client that sends no request headers for this long is dropped, so
/// idle or stalled connections cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Staged files older than this belong to writes that died with their
/// gateway; the sweep at start removes them.
const STAGED_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// `tessera gateway --config F`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GatewayConfig {
    /// HTTP listen address of the S3 API.
    pub listen: SocketAddr,
    /// Prometheus endpoint (`/metrics`); none when unset.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// A file holding the token requests to `metrics_listen` must carry;
    /// required when the listener is not on loopback.
    #[serde(default)]
    pub metrics_token_file: Option<std::path::PathBuf>,
    /// The region clients sign for.
    #[serde(default = "default_region")]
    pub region: String,
    /// The domain of virtual-hosted-style addressing: with
    /// `s3.example.com`, `photos.s3.example.com/key` is `photos/key`.
    /// Requests to any other host (this domain itself, an IP address) are
    /// path style, as they are when this is unset.
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub log: LogConfig,
    /// How to reach the cluster, as in `client.toml`.
    pub client: ClientConfig,
}

pub fn default_region() -> String {
    "us-east-1".into()
}

struct Metrics {
    requests: IntCounterVec,
    seconds: HistogramVec,
    in_flight: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Metrics, Error> {
        let fail = |e: prometheus::Error| Error::internal(format!("register gateway metrics: {e}"));
        let requests = IntCounterVec::new(
            Opts::new(
                "tessera_s3_requests_total",
                "S3 requests by operation and HTTP status",
            ),
            &["operation", "status"],
        )
        .map_err(fail)?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "tessera_s3_request_seconds",
                "S3 request latency to the response head, by operation",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["operation"],
        )
        .map_err(fail)?;
        let in_flight = IntGauge::new(
            "tessera_s3_requests_in_flight",
            "S3 requests being answered",
        )
        .map_err(fail)?;
        registry
            .register(Box::new(requests.clone()))
            .map_err(fail)?;
        registry.register(Box::new(seconds.clone())).map_err(fail)?;
        registry
            .register(Box::new(in_flight.clone()))
            .map_err(fail)?;
        Ok(Metrics {
            requests,
            seconds,
            in_flight,
        })
    }
}

/// A running gateway.
pub struct Gateway {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    client: Arc<Client>,
}

impl Gateway {
    /// Binds `listen` and serves until [`Gateway::shutdown`].
    pub async fn start(
        client: Arc<Client>,
        listen: SocketAddr,
        region: String,
        domain: Option<&str>,
        registry: &Registry,
    ) -> Result<Gateway, Error> {
        let domain_error = |domain: &str| {
            Error::new(
                tessera_proto::error::ErrorCode::InvalidArgument,
                format!(
                    "domain {domain:?} is not a domain name (letters, digits, '-' and '.', no port or scheme)"
                ),
            )
        };
        // One for s3s's routing, one for finding a CORS request's bucket.
        let cors_domain = match domain {
            Some(domain) => Some(Arc::new(
                host::Domain::new(domain).ok_or_else(|| domain_error(domain))?,
            )),
            None => None,
        };
        let host = match domain {
            Some(domain) => Some(host::Domain::new(domain).ok_or_else(|| {
                Error::new(
                    tessera_proto::error::ErrorCode::InvalidArgument,
                    format!(
                        "domain {domain:?} is not a domain name (letters, digits, '-' and '.', no port or scheme)"
                    ),
                )
            })?),
            None => None,
        };
        // Staged uploads are the session's temporary files: a gateway that
        // dies mid-upload leaves nothing behind once its session expires.
        client
            .start_session(tessera_client::session_info(
                SessionKind::Gateway,
                &listen.to_string(),
            ))
            .await?;
        let session_client = client.clone();
        let store = Arc::new(store::Store::open(client).await?);
        // Staged files of gateways from before sessions, by age.
        sweep_staging(&store).await;
        let gateway = s3::Gateway::new(store.clone(), region);
        let mut builder = s3s::service::S3ServiceBuilder::new(gateway);
        builder.set_auth(auth::KeyAuth::new(store.clone()));
        builder.set_access(auth::Access::new(store.clone()));
        // A browser's POST upload is held in memory whole while its policy
        // is checked: bounded well below S3's 5 GiB (docs/s3.md).
        let mut config = s3s::config::S3Config::default();
        config.post_object_max_file_size = POST_OBJECT_MAX_BYTES;
        builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
            config,
        ))));
        if let Some(host) = host {
            builder.set_host(host);
        }
        let service = builder.build();
        let metrics = Arc::new(Metrics::new(registry)?);
        // Names this gateway process in every response (S3's host id).
        let host_id: Arc<str> = format!("tessera-{:016x}", rand::random::<u64>()).into();
        let listener = TcpListener::bind(listen).await.map_err(|err| {
            Error::io(
                &format!("bind the S3 listener {listen} (is it in use?)"),
                &err,
            )
        })?;
        let addr = listener
            .local_addr()
            .map_err(|err| Error::io("read the S3 listener address", &err))?;
        let task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors, most likely: wait for
                        // connections to close rather than spin.
                        tracing::warn!(error = %err, "S3 listener accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = service.clone();
                let metrics = metrics.clone();
                let host_id = host_id.clone();
                let store = store.clone();
                let cors_domain = cors_domain.clone();
                tokio::spawn(async move {
                    let handler =
                        service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
                            let service = service.clone();
                            let metrics = metrics.clone();
                            let host_id = host_id.clone();
                            let store = store.clone();
                            let cors_domain = cors_domain.clone();
                            async move {
                                let request_id = format!("{:016X}", rand::random::<u64>());
                                let info = RequestInfo::default();
                                request.extensions_mut().insert(info.clone());
                                let method = request.method().clone();
                                let has_body = request
                                    .headers()
                                    .get(http::header::CONTENT_LENGTH)
                                    .is_some_and(|v| v.as_bytes() != b"0")
                                    || request
                                        .headers()
                                        .contains_key(http::header::TRANSFER_ENCODING);
                                let path = request.uri().path().to_string();
                                let started = Instant::now();
                                metrics.in_flight.inc();
                                let origin = request
                                    .headers()
                                    .get(http::header::ORIGIN)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_string);
                                let bucket = origin.as_ref().and_then(|_| {
                                    cors::bucket_of(&request, cors_domain.as_deref())
                                });
                                let preflight = method == http::Method::OPTIONS;
                                let mut response = if preflight {
                                    info.set_operation("PreflightCORS");
                                    let bucket = cors::bucket_of(&request, cors_domain.as_deref());
                                    Ok(cors::preflight_response(
                                        &store,
                                        bucket.as_deref(),
                                        &request,
                                    )
                                    .await)
                                } else if unsized_body::needs_length(&request) {
                                    match unsized_body::with_length(request).await {
                                        Ok(request) => service.call(request).await,
                                        Err(refused) => Ok(refused),
                                    }
                                } else {
                                    service.call(request.map(s3s::Body::from)).await
                                };
                                if !preflight
                                    && let (Ok(response), Some(origin), Some(bucket)) =
                                        (&mut response, &origin, &bucket)
                                {
                                    cors::add_headers(
                                        &store,
                                        bucket,
                                        origin,
                                        method.as_str(),
                                        response,
                                    )
                                    .await;
                                }
                                // A request refused before its body was read
                                // (a client that sent `Expect: 100-continue`
                                // then withheld the body, say) leaves the
                                // connection at an unknown point of the
                                // stream: close it rather than read the next
                                // request from the middle of a body.
                                if let Ok(response) = &mut response
                                    && has_body
                                    && response.status().as_u16() >= 400
                                {
                                    response.headers_mut().insert(
                                        http::header::CONNECTION,
                                        http::HeaderValue::from_static("close"),
                                    );
                                }
                                if let Ok(response) = &mut response {
                                    stamp_request_id(response, &request_id, &host_id);
                                }
                                metrics.in_flight.dec();
                                let elapsed = started.elapsed();
                                let status = match &response {
                                    Ok(response) => response.status().as_u16(),
                                    Err(_) => 500,
                                };
                                let operation =
                                    info.operation().unwrap_or_else(|| "Unauthenticated".into());
                                metrics
                                    .requests
                                    .with_label_values(&[operation.as_str(), &status.to_string()])
                                    .inc();
                                metrics
                                    .seconds
                                    .with_label_values(&[operation.as_str()])
                                    .observe(elapsed.as_secs_f64());
                                tracing::info!(
                                    target: "tessera::s3::access",
                                    %peer,
                                    %method,
                                    path = %path,
                                    operation = %operation,
                                    status,
                                    ms = elapsed.as_secs_f64() * 1000.0,
                                    key = %info.access_key().unwrap_or_else(|| "-".into()),
                                    request_id = %request_id,
                                    "s3 request"
                                );
                                response
                            }
                        });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), handler);
                    if let Err(err) = connection.await {
                        tracing::debug!(%peer, error = %err, "S3 connection ended with an error");
                    }
                });
            }
        });
        Ok(Gateway {
            addr,
            task,
            client: session_client,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting connections; requests in progress are cut off and
    /// their staged files deleted with the session.
    pub async fn shutdown(self) {
        self.task.abort();
        if let Err(err) = self.client.meta().close_session().await {
            tracing::warn!(error = %err, "could not close the gateway's session; it expires");
        }
    }
}

/// Every response names its request (`x-amz-request-id`) and this
/// gateway (`x-amz-id-2`), as S3's do, and an error body carries both
/// (`RequestId`, `HostId`): clients log them with a failure, and the access
/// log line of the request has the same id. s3s writes the body of the
/// errors it raises itself (signatures, parsing) without them, so they are
/// added here; error bodies are small and already whole in memory.
fn stamp_request_id(response: &mut http::Response<s3s::Body>, request_id: &str, host_id: &str) {
    let headers = response.headers_mut();
    for (name, value) in [("x-amz-request-id", request_id), ("x-amz-id-2", host_id)] {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    if response.status().as_u16() < 300 {
        return;
    }
    let Some(body) = response.body().bytes() else {
        return;
    };
    const END: &[u8] = b"</Error>";
    let Some(at) = body.windows(END.len()).rposition(|w| w == END) else {
        return;
    };
    let mut added = Vec::with_capacity(body.len() + 128);
    added.extend_from_slice(&body[..at]);
    if !body.windows(11).any(|w| w == b"<RequestId>") {
        added.extend_from_slice(format!("<RequestId>{request_id}</RequestId>").as_bytes());
    }
    added.extend_from_slice(format!("<HostId>{host_id}</HostId>").as_bytes());
    added.extend_from_slice(&body[at..]);
    response.headers_mut().insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(added.len()),
    );
    *response.body_mut() = s3s::Body::from(added);
}

/// Largest file a browser POST upload may carry.
const POST_OBJECT_MAX_BYTES: u64 = 64 << 20;

/// Raises the open-file limit to its hard maximum: every S3 connection
/// holds a descriptor, and the usual soft limit of 1,024 would refuse
/// clients long before the gateway runs out of anything else.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %err, "could not raise the open-file limit");
        }
    }
}

/// Removes staged files left by gateways that died mid-write.
async fn sweep_staging(store: &store::Store) {
    let entries = match store.list_dir(store.staging, names::XATTR_ETAG).await {
        Ok(entries) => entries,
        Err(err) => {
            tracing::warn!(error = %err, "could not list the staging directory");
            return;
        }
    };
    let now = tessera_proto::token::unix_now_ns();
    let mut removed = 0;
    for (entry, attr, _) in entries {
        if now - attr.mtime_ns <= STAGED_MAX_AGE.as_nanos() as i64 {
            continue;
        }
        // Files of interrupted uploads, and the empty directory of a
        // CreateBucket that died before renaming it into place.
        let op = match attr.kind {
            FileKind::File => MetaOp::Unlink {
                parent: store.staging,
                name: entry.name,
            },
            FileKind::Dir => MetaOp::Rmdir {
                parent: store.staging,
                name: entry.name,
            },
            _ => continue,
        };
        removed += usize::from(store.call(op).await.is_ok());
    }
    if removed > 0 {
        tracing::info!(removed, "removed staged files of interrupted uploads");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn example_config_loads() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/gateway.example.toml");
        let config: super::GatewayConfig =
            tessera_proto::config::load(Some(&path), &["region=eu-west-1".into()]).unwrap();
        assert_eq!(config.region, "eu-west-1");
        assert_eq!(config.client.meta.len(), 3);
        let typo =
            tessera_proto::config::load::<super::GatewayConfig>(Some(&path), &["regoin=x".into()]);
        assert!(typo.is_err());
    }
}
