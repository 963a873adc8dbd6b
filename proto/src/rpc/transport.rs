//! QUIC transport settings and endpoint construction.
//!
//! Every knob here was measured on loopback (see `docs/benchmarks.md`); the
//! defaults are safe on any network: the MTU search starts at QUIC's 1,200
//! bytes and only climbs as far as probes succeed, up to what the machine's
//! interfaces allow for the peer (loopback's 64 KiB for a loopback peer,
//! the largest other interface's MTU for the rest), so loopback, Ethernet
//! and jumbo frames each get large packets without configuration.

use super::netif::{GsoLimited, InterfaceMtus, UDP_PAYLOAD_MAX_BYTES, size_buffers};
use crate::error::{Error, ErrorCode};
use crate::limits::STREAMS_PER_CONNECTION_DEFAULT;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
    /// Largest UDP payload MTU discovery may reach. Unset (the default), it
    /// is read from the interfaces: loopback's MTU for loopback peers, the
    /// largest other interface's for the rest, less 48 bytes of headers.
    /// Set it to cap packets below what the interfaces claim (a tunnel
    /// whose MTU the interface does not show).
    pub mtu_upper_bound_bytes: Option<u16>,
    /// Let the kernel split large sends into packets (GSO).
    pub segmentation_offload: bool,
    /// QUIC connections a client keeps to each peer; calls are spread over
    /// them round-robin.
    pub connections_per_peer: u32,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout_ms: u64,
    /// Keep-alive interval that keeps pooled connections from idling out.
    pub keep_alive_ms: u64,
    /// UDP receive and send buffer asked for each endpoint's socket. Without
    /// `CAP_NET_ADMIN` the kernel caps it at `net.core.rmem_max` and
    /// `wmem_max` (docs/operations.md has the sysctl); a smaller buffer
    /// than this is logged at start.
    pub socket_buffer_bytes: u32,
}

impl Default for TransportOptions {
    fn default() -> TransportOptions {
        TransportOptions {
            streams_per_connection: STREAMS_PER_CONNECTION_DEFAULT,
            stream_window_bytes: 8 * 1024 * 1024,
            connection_window_bytes: 64 * 1024 * 1024,
            send_window_bytes: 64 * 1024 * 1024,
            mtu_upper_bound_bytes: None,
            segmentation_offload: true,
            connections_per_peer: 1,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 5_000,
            socket_buffer_bytes: SOCKET_BUFFER_DEFAULT_BYTES,
        }
    }
}

/// Room for a few hundred 64 KiB datagrams: measured on loopback under a
/// 1 GiB read from three chunkservers, 4 MiB still dropped one or two
/// datagrams in a hundred, 16 MiB about one in a thousand or none
/// (docs/benchmarks.md).
const SOCKET_BUFFER_DEFAULT_BYTES: u32 = 16 * 1024 * 1024;

/// The UDP payload bound when neither configuration nor the interfaces say:
/// a 1,500-byte Ethernet MTU less IPv6 and UDP headers.
const FALLBACK_PAYLOAD_BYTES: u16 = 1452;

impl TransportOptions {
    /// Settings for networks where every hop is loopback. Loopback's MTU is
    /// read from the interface like any other; kept for callers that name
    /// the single-machine case.
    pub fn loopback() -> TransportOptions {
        TransportOptions::default()
    }

    /// The UDP payload bound for a path to `peer` (`None`: any peer, as a
    /// server's socket serves them all).
    pub fn mtu_bound_for(&self, peer: Option<IpAddr>) -> u16 {
        self.mtu_upper_bound_bytes.unwrap_or_else(|| {
            InterfaceMtus::read()
                .udp_payload_bound(peer)
                .unwrap_or(FALLBACK_PAYLOAD_BYTES)
        })
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
        if self
            .mtu_upper_bound_bytes
            .is_some_and(|bound| !(1200..=UDP_PAYLOAD_MAX_BYTES).contains(&bound))
        {
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
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.socket_buffer_bytes) {
            return invalid("socket_buffer_bytes must lie between 64 KiB and 1 GiB");
        }
        Ok(())
    }

    /// Transport settings for connections to `peer` (`None`: any peer).
    pub fn transport_config(&self, peer: Option<IpAddr>) -> Result<quinn::TransportConfig, Error> {
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
            .enable_segmentation_offload(self.segmentation_offload)
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
        mtu.upper_bound(self.mtu_bound_for(peer));
        config.mtu_discovery_config(Some(mtu));
        Ok(config)
    }

    fn endpoint_config(&self, addr: SocketAddr) -> Result<quinn::EndpointConfig, Error> {
        // What this socket accepts: any peer's packets when it listens on
        // every interface, loopback's when it listens there.
        let peer = (!addr.ip().is_unspecified()).then_some(addr.ip());
        let mut config = quinn::EndpointConfig::default();
        config
            .max_udp_payload_size(self.mtu_bound_for(peer).max(1472))
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
        let buffers = size_buffers(&socket, self.socket_buffer_bytes);
        if buffers.receive.min(buffers.send) < self.socket_buffer_bytes {
            tracing::warn!(
                %addr,
                receive = buffers.receive,
                send = buffers.send,
                asked = self.socket_buffer_bytes,
                "UDP socket buffers are smaller than asked: bulk transfers will drop packets \
                 and slow down; raise net.core.rmem_max and net.core.wmem_max \
                 (docs/operations.md)"
            );
        }
        let runtime = quinn::default_runtime()
            .ok_or_else(|| Error::internal("no async runtime for QUIC; start inside tokio"))?;
        let socket = runtime
            .wrap_udp_socket(socket)
            .map_err(|err| Error::io(&format!("set up UDP {addr}"), &err))?;
        let socket = Arc::new(GsoLimited::new(socket));
        quinn::Endpoint::new_with_abstract_socket(
            self.endpoint_config(addr)?,
            server,
            socket,
            runtime,
        )
        .map_err(|err| Error::io(&format!("start QUIC endpoint on {addr}"), &err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_refused() {
        TransportOptions::default().transport_config(None).unwrap();
        let pinned = TransportOptions {
            mtu_upper_bound_bytes: Some(8952),
            ..Default::default()
        };
        pinned.transport_config(None).unwrap();
        assert_eq!(pinned.mtu_bound_for(Some([10, 0, 0, 1].into())), 8952);
        assert!(TransportOptions::default().mtu_bound_for(Some([127, 0, 0, 1].into())) >= 1452);
        let bad = [
            TransportOptions {
                streams_per_connection: 0,
                ..Default::default()
            },
            TransportOptions {
                mtu_upper_bound_bytes: Some(100),
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
            TransportOptions {
                socket_buffer_bytes: 4096,
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
