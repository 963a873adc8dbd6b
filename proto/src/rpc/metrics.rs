//! Prometheus metrics of an RPC server: calls by method and outcome, latency,
//! in-flight calls and bulk bytes.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Latency buckets in seconds, from sub-millisecond metadata calls to
/// multi-second bulk transfers.
const LATENCY_BUCKETS_S: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

#[derive(Clone)]
pub struct RpcMetrics {
    pub calls: IntCounterVec,
    pub latency_seconds: HistogramVec,
    pub in_flight: IntGauge,
    pub bulk_bytes_received: IntCounter,
    pub bulk_bytes_sent: IntCounter,
    pub connections_refused: IntCounter,
}

impl RpcMetrics {
    /// Creates the metrics labelled with `server` (so several servers in one
    /// process, as in `tessera dev`, stay apart) and registers them.
    pub fn new(registry: &Registry, server: &str) -> Result<RpcMetrics, prometheus::Error> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("server", server);
        let metrics = RpcMetrics {
            calls: IntCounterVec::new(
                opts(
                    "tessera_rpc_calls_total",
                    "RPC calls served, by method and result code",
                ),
                &["method", "code"],
            )?,
            latency_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "tessera_rpc_latency_seconds",
                    "RPC call latency on the server",
                )
                .const_label("server", server)
                .buckets(LATENCY_BUCKETS_S.to_vec()),
                &["method"],
            )?,
            in_flight: IntGauge::with_opts(opts(
                "tessera_rpc_in_flight",
                "RPC calls being served",
            ))?,
            bulk_bytes_received: IntCounter::with_opts(opts(
                "tessera_rpc_bulk_received_bytes_total",
                "Bulk bytes received in requests",
            ))?,
            bulk_bytes_sent: IntCounter::with_opts(opts(
                "tessera_rpc_bulk_sent_bytes_total",
                "Bulk bytes sent in responses",
            ))?,
            connections_refused: IntCounter::with_opts(opts(
                "tessera_rpc_connections_refused_total",
                "Connections refused during the handshake (bad or missing certificate, no common protocol version)",
            ))?,
        };
        registry.register(Box::new(metrics.calls.clone()))?;
        registry.register(Box::new(metrics.latency_seconds.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.bulk_bytes_received.clone()))?;
        registry.register(Box::new(metrics.bulk_bytes_sent.clone()))?;
        registry.register(Box::new(metrics.connections_refused.clone()))?;
        Ok(metrics)
    }

    /// Metrics registered nowhere, for servers nobody scrapes (tests, benches).
    pub fn unregistered() -> RpcMetrics {
        RpcMetrics::new(&Registry::new(), "unregistered")
            .unwrap_or_else(|err| panic!("fresh registry refused metrics: {err}"))
    }
}
