//! QUIC transport settings and endpoint construction.
//!
//! Every knob here was measured on loopback (see `docs/benchmarks.md`); the
//! defaults are safe on any network: the MTU search starts at QUIC's 1,200
//! bytes and only climbs as far as probes succeed, so a larger upper bound
//! costs nothing where the path is smaller.

use crate::error::{Error, ErrorCode};
use crate::limits::STREAMS_PER_CONNECTION_DEFAULT;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::time::Duration;

/// Transport settings, part of every daemon's configuration as `[transport]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportOptions {
    /// Concurrent calls (bidirectional streams) a peer may have open on one
    /// connection; further calls wait for a free stream.
    pub streams_per_connection: u32,
    /// Per-stream receive window. One stream cannot go faster than this
    /// window per round trip.
    pub stream_window_bytes: u64,
    /// Per-connection receive window, across all streams.
    pub connection_window_bytes: u64,
    /// Unacknowledged bytes a sender keeps in flight per connection.
    pub send_window_bytes: u64,
    /// Largest UDP payload this endpoint accepts and MTU discovery may reach.
    /// 1,452 fits Ethernet; loopback and jumbo-frame networks allow more.
    pub mtu_upper_bound_bytes: u16,
    /// Let the kernel split large sends into packets (GSO). Left off
    /// whatever this says when `mtu_upper_bound_bytes` exceeds
    /// [`GSO_MTU_MAX_BYTES`].
    pub segmentation_offload: bool,
    /// QUIC connections a client keeps to each peer; calls are spread over
    /// them round-robin.
    pub connections_per_peer: u32,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// Keep-alive interval that keeps pooled connections from idling out.
    pub keep_alive_ms: u64,
}

impl Default for TransportOptions {
    fn default() -> TransportOptions {
        TransportOptions {
            streams_per_connection: STREAMS_PER_CONNECTION_DEFAULT,
            stream_window_bytes: 8 * 1024 * 1024,
            connection_window_bytes: 64 * 1024 * 1024,
            send_window_bytes: 64 * 1024 * 1024,
            mtu_upper_bound_bytes: 1452,
            segmentation_offload: true,
            connections_per_peer: 1,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 5_000,
        }
    }
}

/// Largest MTU bound that keeps UDP segmentation offload usable. quinn 0.11
/// puts up to 10 packets in one GSO batch and the kernel refuses a batch over
/// 64 KiB, so with larger packets every batch fails, MTU probes are lost and
/// quinn falls back to 1,200-byte packets (measured: see
/// `docs/benchmarks.md`). Above this bound GSO is left off.
pub const GSO_MTU_MAX_BYTES: u16 = 6_500;

impl TransportOptions {
    /// Settings for networks where every hop is loopback: 64 KiB packets,
    /// which cut per-packet costs (the bound on loopback) by a factor of 40.
    pub fn loopback() -> TransportOptions {
        TransportOptions {
            mtu_upper_bound_bytes: 65_527,
            ..TransportOptions::default()
        }
    }

    /// Whether GSO is actually used: asked for, and safe at this MTU bound.
    pub fn effective_segmentation_offload(&self) -> bool {
        self.segmentation_offload && self.mtu_upper_bound_bytes <= GSO_MTU_MAX_BYTES
    }

    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |what: &str| {
            Err(Error::new(
                ErrorCode::InvalidArgument,
                format!("transport: {what}"),
            ))
        };
        if self.streams_per_connection == 0 {
            return invalid("streams_per_connection must be at least 1");
        }
        if !(1200..=65_527).contains(&self.mtu_upper_bound_bytes) {
            return invalid("mtu_upper_bound_bytes must lie between 1200 and 65527");
        }
        if self.connections_per_peer == 0 || self.connections_per_peer > 64 {
            return invalid("connections_per_peer must lie between 1 and 64");
        }
        if self.stream_window_bytes == 0 || self.connection_window_bytes < self.stream_window_bytes
        {
            return invalid(
                "connection_window_bytes must be at least stream_window_bytes, both non-zero",
            );
        }
        if self.keep_alive_ms == 0 || self.keep_alive_ms >= self.idle_timeout_ms {
            return invalid("keep_alive_ms must be non-zero and below idle_timeout_ms");
        }
        Ok(())
    }

    pub fn transport_config(&self) -> Result<quinn::TransportConfig, Error> {
        self.validate()?;
        let varint = |value: u64, what: &str| {
            quinn::VarInt::from_u64(value).map_err(|_| {
                Error::new(
                    ErrorCode::InvalidArgument,
                    format!("transport: {what} too large"),
                )
            })
        };
        let mut config = quinn::TransportConfig::default();
        config
            .max_concurrent_bidi_streams(self.streams_per_connection.into())
            .max_concurrent_uni_streams(0u32.into())
            .stream_receive_window(varint(self.stream_window_bytes, "stream_window_bytes")?)
            .receive_window(varint(
                self.connection_window_bytes,
                "connection_window_bytes",
            )?)
            .send_window(self.send_window_bytes)
            .enable_segmentation_offload(self.effective_segmentation_offload())
            .keep_alive_interval(Some(Duration::from_millis(self.keep_alive_ms)))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(Duration::from_millis(self.idle_timeout_ms)).map_err(
                    |_| {
                        Error::new(
                            ErrorCode::InvalidArgument,
                            "transport: idle_timeout_ms too large",
                        )
                    },
                )?,
            ));
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.mtu_upper_bound_bytes);
        config.mtu_discovery_config(Some(mtu));
        Ok(config)
    }

    fn endpoint_config(&self) -> Result<quinn::EndpointConfig, Error> {
        let mut config = quinn::EndpointConfig::default();
        config
            .max_udp_payload_size(self.mtu_upper_bound_bytes.max(1472))
            .map_err(|err| Error::new(ErrorCode::InvalidArgument, format!("transport: {err}")))?;
        Ok(config)
    }

    /// Binds a QUIC endpoint on `addr`, serving with `server` if given.
    pub fn bind(
        &self,
        addr: SocketAddr,
        server: Option<quinn::ServerConfig>,
    ) -> Result<quinn::Endpoint, Error> {
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|err| Error::io(&format!("bind UDP {addr}"), &err))?;
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::internal("no async runtime for QUIC; start inside tokio"))?;
        quinn::Endpoint::new(self.endpoint_config()?, server, socket, runtime)
            .map_err(|err| Error::io(&format!("start QUIC endpoint on {addr}"), &err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_refused() {
        TransportOptions::default().transport_config().unwrap();
        TransportOptions::loopback().transport_config().unwrap();
        assert!(TransportOptions::default().effective_segmentation_offload());
        assert!(!TransportOptions::loopback().effective_segmentation_offload());
        let bad = [
            TransportOptions {
                streams_per_connection: 0,
                ..Default::default()
            },
            TransportOptions {
                mtu_upper_bound_bytes: 100,
                ..Default::default()
            },
            TransportOptions {
                connections_per_peer: 0,
                ..Default::default()
            },
            TransportOptions {
                connection_window_bytes: 1,
                ..Default::default()
            },
            TransportOptions {
                keep_alive_ms: 60_000,
                ..Default::default()
            },
        ];
        for options in bad {
            assert_eq!(
                options.validate().unwrap_err().code,
                ErrorCode::InvalidArgument,
                "{options:?}"
            );
        }
    }
}
