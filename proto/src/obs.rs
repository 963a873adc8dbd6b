//! Observability every daemon shares: the `tracing` subscriber and a
//! Prometheus endpoint at `/metrics`.
//!
//! The HTTP side is a minimal HTTP/1.1 responder: it serves a few read-only
//! paths (`/metrics`, and a metaserver's status page through [`Routes`]), so a
//! web framework would cost more build time than it saves. Requests are
//! bounded in size and time, connections in number, and every response
//! closes the connection.

use crate::error::{Error, ErrorCode};
use futures_util::future::BoxFuture;
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Dependencies' INFO lines (openraft's multi-line dumps of Raft state on
/// every election, quinn's and rustls' connection chatter) bury a daemon's
/// own events; they stay at warn unless a filter names them.
pub const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,quinn=warn,quinn_proto=warn,rustls=warn";

/// Installs the global subscriber. The filter comes from `level` if given,
/// else from `RUST_LOG`, else [`DEFAULT_LOG_FILTER`]; a bare level such as
/// `debug` keeps the dependencies' quieting unless it names them. `json`
/// switches to one JSON object per line for log shippers. Colour is used
/// only on a terminal and never when `NO_COLOR` is set, so log files and
/// journald get plain text. Calling it twice is harmless (the first wins).
pub fn init_tracing(level: Option<&str>, json: bool) -> Result<(), Error> {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(level) => EnvFilter::try_new(filter_for(level)).map_err(|err| {
            Error::new(
                ErrorCode::InvalidArgument,
                format!("log level {level:?}: {err}; use error, warn, info, debug, trace or a RUST_LOG filter"),
            )
        })?,
        None => match std::env::var("RUST_LOG") {
            Ok(env) if !env.trim().is_empty() => EnvFilter::try_new(filter_for(&env))
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
            _ => EnvFilter::new(DEFAULT_LOG_FILTER),
        },
    };
    let colour = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    Ok(())
}

/// A bare level (`debug`) becomes that level for our crates with the
/// dependencies kept at warn; a filter with directives is taken as written.
fn filter_for(level: &str) -> String {
    let level = level.trim();
    let louder = ["info", "debug", "trace"]
        .iter()
        .any(|l| l.eq_ignore_ascii_case(level));
    if louder {
        DEFAULT_LOG_FILTER.replacen("info", level, 1)
    } else {
        level.to_string()
    }
}

const REQUEST_MAX_BYTES: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at once: a scraper and a few browsers need far
/// fewer, and a flood then waits in the kernel's backlog instead of costing
/// a task (and a status render) each.
const CONNECTIONS_MAX: usize = 32;

/// One answer of a route.
pub struct HttpResponse {
    /// Status line after the version, e.g. `200 OK`.
    pub status: &'static str,
    pub content_type: &'static str,
    /// Extra header lines (name, value); values must not hold CR or LF.
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> HttpResponse {
        HttpResponse {
            status: "200 OK",
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    fn text(status: &'static str, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            content_type: "text/plain; charset=utf-8",
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> HttpResponse {
        self.headers.push((name, value.into()));
        self
    }
}

/// Paths served beside `/metrics`: given a GET's path (query string cut
/// off), its answer, or `None` for a 404. The metaserver passes its status
/// page here; chunkservers and the gateway pass none and serve only
/// `/metrics`. Each answer must finish within the request timeout (5 s).
pub type Routes = Arc<dyn Fn(&str) -> Option<BoxFuture<'static, HttpResponse>> + Send + Sync>;

/// Serves `registry` at `http://addr/metrics` until the task is aborted.
/// Returns the bound address (useful with port 0) and the server task.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Registry,
    access: HttpAccess,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    serve_http(addr, registry, None, access).await
}

/// Who may read an HTTP listener (metrics, the status page): anyone who
/// can reach it on loopback, otherwise only requests carrying a token. The
/// pages are read-only, but they map the cluster (addresses, names, load),
/// which is not for every host on the network.
#[derive(Clone, Debug, Default)]
pub struct HttpAccess {
    token: Option<Arc<str>>,
}

/// Shorter tokens are refused: they could be guessed.
const TOKEN_MIN_BYTES: usize = 16;

impl HttpAccess {
    /// No token: for listeners on loopback.
    pub fn open() -> HttpAccess {
        HttpAccess::default()
    }

    /// The access a listener on `addr` gets: the token in `token_file`
    /// when one is named, none on loopback, and a refusal to start for a
    /// listener other hosts can reach without one.
    pub fn for_listener(addr: SocketAddr, token_file: Option<&Path>) -> Result<HttpAccess, Error> {
        let Some(path) = token_file else {
            if addr.ip().is_loopback() {
                return Ok(HttpAccess::open());
            }
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "metrics listener {addr} is reachable from other hosts: set metrics_token_file \
                     (a file holding the token Prometheus sends as a bearer token) or listen on 127.0.0.1"
                ),
            ));
        };
        let text = std::fs::read_to_string(path).map_err(|err| {
            Error::io(&format!("read metrics_token_file {}", path.display()), &err)
        })?;
        let token = text.trim();
        if token.len() < TOKEN_MIN_BYTES || token.contains(char::is_whitespace) {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "metrics_token_file {} must hold one token of at least {TOKEN_MIN_BYTES} characters \
                     without spaces (for example `openssl rand -hex 32`)",
                    path.display()
                ),
            ));
        }
        Ok(HttpAccess {
            token: Some(token.into()),
        })
    }

    /// Whether a request with this head may be answered: `Authorization:
    /// Bearer TOKEN` (Prometheus, scripts) or `Basic` with the token as the
    /// password (a browser's login prompt, any user name).
    fn allows(&self, head: &[u8]) -> bool {
        use base64::Engine;
        let Some(token) = &self.token else {
            return true;
        };
        let Ok(head) = std::str::from_utf8(head) else {
            return false;
        };
        head.split("\r\n").skip(1).any(|line| {
            let Some((name, value)) = line.split_once(':') else {
                return false;
            };
            if !name.trim().eq_ignore_ascii_case("authorization") {
                return false;
            }
            let value = value.trim();
            if let Some(given) = value.strip_prefix("Bearer ") {
                return same(given.trim().as_bytes(), token.as_bytes());
            }
            let Some(encoded) = value.strip_prefix("Basic ") else {
                return false;
            };
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|pair| {
                    let at = pair.iter().position(|&b| b == b':')?;
                    Some(same(&pair[at + 1..], token.as_bytes()))
                })
                .unwrap_or(false)
        })
    }
}

/// Compares without stopping at the first difference, so the time taken
/// says nothing about how much of a guess was right.
fn same(given: &[u8], token: &[u8]) -> bool {
    given.len() == token.len() && given.iter().zip(token).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
}

/// [`serve_metrics`] plus whatever `routes` answers.
pub async fn serve_http(
    addr: SocketAddr,
    registry: Registry,
    routes: Option<Routes>,
    access: HttpAccess,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| Error::io(&format!("bind metrics listener {addr}"), &err))?;
    let local = listener
        .local_addr()
        .map_err(|err| Error::io("read metrics listener address", &err))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let task = tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            let routes = routes.clone();
            let access = access.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    answer(stream, &registry, routes.as_ref(), &access),
                )
                .await;
                drop(slot);
            });
        }
    });
    Ok((local, task))
}

async fn answer(
    mut stream: TcpStream,
    registry: &Registry,
    routes: Option<&Routes>,
    access: &HttpAccess,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > REQUEST_MAX_BYTES {
            let response =
                HttpResponse::text("431 Request Header Fields Too Large", "request too large\n");
            return respond(&mut stream, response, true).await;
        }
    }
    if !access.allows(&request) {
        let mut response = HttpResponse::text(
            "401 Unauthorized",
            "this listener wants its token: Authorization: Bearer TOKEN (or Basic with the token as password)\n",
        );
        response
            .headers
            .push(("WWW-Authenticate", "Basic realm=\"tessera\"".to_string()));
        return respond(&mut stream, response, true).await;
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let with_body = method != b"HEAD";
    if method != b"GET" && method != b"HEAD" {
        let response = HttpResponse::text("405 Method Not Allowed", "only GET is served\n");
        return respond(&mut stream, response, true).await;
    }
    let response = if path == b"/metrics" {
        metrics(registry)
    } else {
        let routed = match (routes, std::str::from_utf8(path)) {
            (Some(routes), Ok(path)) => routes(path),
            _ => None,
        };
        match routed {
            Some(future) => future.await,
            None => HttpResponse::text("404 Not Found", "metrics are at /metrics\n"),
        }
    };
    respond(&mut stream, response, with_body).await
}

fn metrics(registry: &Registry) -> HttpResponse {
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => HttpResponse {
            status: "200 OK",
            content_type: prometheus::TEXT_FORMAT,
            headers: Vec::new(),
            body,
        },
        Err(err) => HttpResponse::text(
            "500 Internal Server Error",
            &format!("encode metrics: {err}\n"),
        ),
    }
}

async fn respond(
    stream: &mut TcpStream,
    response: HttpResponse,
    with_body: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        response.status,
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        if !value.contains(['\r', '\n']) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    if with_body {
        stream.write_all(&response.body).await?;
    }
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn bare_levels_keep_dependencies_quiet_and_filters_are_taken_as_written() {
        assert_eq!(
            super::filter_for("debug"),
            "debug,openraft=warn,quinn=warn,quinn_proto=warn,rustls=warn"
        );
        assert_eq!(super::filter_for("error"), "error");
        assert_eq!(super::filter_for("off"), "off");
        assert_eq!(
            super::filter_for("info,openraft=info"),
            "info,openraft=info"
        );
    }

    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_refuses_the_rest() {
        let registry = Registry::new();
        let counter = prometheus::IntCounter::new("tessera_test_total", "a test counter").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let (addr, task) =
            serve_metrics("127.0.0.1:0".parse().unwrap(), registry, HttpAccess::open())
                .await
                .unwrap();

        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK"), "{ok}");
        assert!(ok.contains("tessera_test_total 3"), "{ok}");
        assert!(
            get(addr, "GET / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(addr, "POST /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(REQUEST_MAX_BYTES)
        );
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));
        task.abort();
    }

    #[tokio::test]
    async fn a_listener_with_a_token_answers_only_requests_that_carry_it() {
        use base64::Engine;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123\n").unwrap();
        let wide: SocketAddr = "0.0.0.0:9300".parse().unwrap();
        // Reachable from other hosts: a token or nothing.
        let refused = HttpAccess::for_listener(wide, None).unwrap_err();
        assert!(refused.message.contains("metrics_token_file"), "{refused}");
        std::fs::write(dir.path().join("short"), "abc").unwrap();
        assert!(HttpAccess::for_listener(wide, Some(&dir.path().join("short"))).is_err());
        assert!(HttpAccess::for_listener(wide, Some(&dir.path().join("none"))).is_err());
        let access = HttpAccess::for_listener(wide, Some(&file)).unwrap();
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), Registry::new(), access)
            .await
            .unwrap();
        let without = get(addr, "GET /metrics HTTP/1.1\r\n\r\n").await;
        assert!(without.starts_with("HTTP/1.1 401"), "{without}");
        assert!(without.contains("WWW-Authenticate: Basic"), "{without}");
        let wrong = get(
            addr,
            "GET /metrics HTTP/1.1\r\nAuthorization: Bearer 0123456789abcdef0124\r\n\r\n",
        )
        .await;
        assert!(wrong.starts_with("HTTP/1.1 401"), "{wrong}");
        let bearer = get(
            addr,
            "GET /metrics HTTP/1.1\r\nauthorization: Bearer 0123456789abcdef0123\r\n\r\n",
        )
        .await;
        assert!(bearer.starts_with("HTTP/1.1 200"), "{bearer}");
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:0123456789abcdef0123");
        let browser = get(
            addr,
            &format!("GET /metrics HTTP/1.1\r\nAuthorization: Basic {basic}\r\n\r\n"),
        )
        .await;
        assert!(browser.starts_with("HTTP/1.1 200"), "{browser}");
        task.abort();
    }

    #[tokio::test]
    async fn routes_answer_their_paths_and_the_rest_stays_refused() {
        let routes: Routes = Arc::new(|path: &str| {
            let page: BoxFuture<'static, HttpResponse> = Box::pin(async {
                HttpResponse::ok("text/html; charset=utf-8", "<p>status</p>")
                    .with_header("X-Test", "yes")
                    .with_header("X-Split", "a\r\nInjected: 1")
            });
            (path == "/").then_some(page)
        });
        let (addr, task) = serve_http(
            "127.0.0.1:0".parse().unwrap(),
            Registry::new(),
            Some(routes),
            HttpAccess::open(),
        )
        .await
        .unwrap();

        let page = get(addr, "GET / HTTP/1.1\r\n\r\n").await;
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.ends_with("<p>status</p>"), "{page}");
        assert!(page.contains("\r\nX-Test: yes\r\n"), "{page}");
        assert!(!page.contains("Injected"), "{page}");
        let query = get(addr, "GET /?refresh=1 HTTP/1.1\r\n\r\n").await;
        assert!(query.starts_with("HTTP/1.1 200 OK"), "{query}");
        let head = get(addr, "HEAD / HTTP/1.1\r\n\r\n").await;
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        assert!(head.contains("Content-Length: 13\r\n"), "{head}");
        assert!(head.ends_with("\r\n\r\n"), "{head}");
        assert!(
            get(addr, "GET /metrics HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 200 OK")
        );
        assert!(
            get(addr, "GET /elsewhere HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 404")
        );
        assert!(
            get(addr, "POST / HTTP/1.1\r\n\r\n")
                .await
                .starts_with("HTTP/1.1 405")
        );
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(REQUEST_MAX_BYTES)
        );
        assert!(get(addr, &huge).await.starts_with("HTTP/1.1 431"));
        task.abort();
    }

    #[test]
    fn bad_levels_are_refused() {
        assert_eq!(
            init_tracing(Some("=[bad"), false).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
