//! Observability every daemon shares: the `tracing` subscriber and a
//! Prometheus endpoint at `/metrics`.
//!
//! The HTTP side is a minimal HTTP/1.1 responder: it serves one read-only path
//! to scrapers, so a web framework would cost more build time than it saves.
//! Requests are bounded in size and time, and every response closes the
//! connection.

use crate::error::{Error, ErrorCode};
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::SocketAddr;
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

/// Serves `registry` at `http://addr/metrics` until the task is aborted.
/// Returns the bound address (useful with port 0) and the server task.
pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Registry,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| Error::io(&format!("bind metrics listener {addr}"), &err))?;
    let local = listener
        .local_addr()
        .map_err(|err| Error::io("read metrics listener address", &err))?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
            });
        }
    });
    Ok((local, task))
}

async fn answer(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(&buf[..n]);
        if request.len() > REQUEST_MAX_BYTES {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request too large\n",
            )
            .await;
        }
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let path = parts.next().unwrap_or_default();
    if method != b"GET" && method != b"HEAD" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET is served\n",
        )
        .await;
    }
    if path != b"/metrics" {
        return respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"metrics are at /metrics\n",
        )
        .await;
    }
    let mut body = Vec::new();
    let encoder = TextEncoder::new();
    if let Err(err) = encoder.encode(&registry.gather(), &mut body) {
        let message = format!("encode metrics: {err}\n");
        return respond(
            &mut stream,
            "500 Internal Server Error",
            "text/plain",
            message.as_bytes(),
        )
        .await;
    }
    respond(&mut stream, "200 OK", encoder.format_type(), &body).await
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
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
        let (addr, task) = serve_metrics("127.0.0.1:0".parse().unwrap(), registry)
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

    #[test]
    fn bad_levels_are_refused() {
        assert_eq!(
            init_tracing(Some("=[bad"), false).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
