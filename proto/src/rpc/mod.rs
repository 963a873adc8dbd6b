//! RPC over QUIC: one bidirectional stream per call, a length-prefixed typed
//! header (see [`crate::wire`]), then raw bulk bytes in either direction.
//!
//! Invariants: bulk bytes are never decoded or copied through the codec; a
//! header larger than [`crate::limits::HEADER_MAX_BYTES`] is refused before it
//! is buffered; a bad stream fails that stream alone, never its connection;
//! only calls whose [`crate::wire::Method::IDEMPOTENT`] is true are retried.

mod bulk;
mod client;
mod metrics;
mod netif;
mod server;
mod transport;

pub use bulk::{BulkReader, BulkWriter};
pub use client::{CallOptions, OutgoingCall, Peer, Response, RpcClient};
pub use metrics::RpcMetrics;
pub use netif::InterfaceMtus;
pub use server::{Call, PeerInfo, RpcServer, Service};
pub use transport::TransportOptions;

use crate::error::{Error, ErrorCode};

/// Application error codes used to reset or stop a stream. They tell the peer
/// why bytes stopped flowing; the typed error travels in the response frame
/// whenever one can still be sent.
pub(crate) mod reset_code {
    /// The caller cancelled (dropped) the call.
    pub const CANCELLED: u32 = 1;
    /// The receiver does not want more bytes (an error response follows).
    pub const STOP: u32 = 3;
    /// A handler that fails after its response header went out resets the
    /// stream with this base plus its error code, so the reader still gets a
    /// typed error (a corrupt block found mid-read is `Corrupt`, not a bare
    /// reset).
    pub const ERROR_BASE: u32 = 1_000_000;
}

/// Whether a QUIC transport error code is a TLS alert (RFC 9001 4.8: 0x100 to
/// 0x1ff), which on a mutually authenticated endpoint means the certificate
/// was refused.
fn is_crypto_code(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

pub(crate) fn connection_error(peer: &str, err: &quinn::ConnectionError) -> Error {
    use quinn::ConnectionError as E;
    let refused = |detail: &dyn std::fmt::Display| {
        Error::new(
            ErrorCode::Unauthenticated,
            format!(
                "TLS with {peer} refused: {detail}; check that both sides hold certificates from the same cluster CA"
            ),
        )
    };
    // TLS alert 120 (no_application_protocol): the ALPN lists share no
    // protocol version.
    let no_common_version = |code: quinn::TransportErrorCode| u64::from(code) == 0x100 + 120;
    let version = |detail: &dyn std::fmt::Display| {
        Error::new(
            ErrorCode::VersionMismatch,
            format!("{peer} shares no protocol version with us ({detail}); upgrade the older side"),
        )
    };
    match err {
        E::TransportError(transport) if no_common_version(transport.code) => version(transport),
        E::ConnectionClosed(close) if no_common_version(close.error_code) => version(close),
        E::TransportError(transport) if is_crypto_code(transport.code) => refused(transport),
        E::ConnectionClosed(close) if is_crypto_code(close.error_code) => refused(close),
        E::VersionMismatch => Error::new(
            ErrorCode::VersionMismatch,
            format!("{peer} speaks no QUIC version we do"),
        ),
        other => Error::new(
            ErrorCode::Unavailable,
            format!("connection to {peer}: {other}"),
        ),
    }
}

pub(crate) fn read_error(peer: &str, err: &quinn::ReadError) -> Error {
    use quinn::ReadError as E;
    match err {
        E::Reset(code) => {
            let typed = u64::from(*code)
                .checked_sub(reset_code::ERROR_BASE.into())
                .and_then(|n| u16::try_from(n).ok())
                .and_then(ErrorCode::from_u16);
            match typed {
                Some(code) => Error::new(
                    code,
                    format!("{peer} failed mid-transfer: {}", code.describe()),
                ),
                None => Error::new(
                    ErrorCode::Cancelled,
                    format!("{peer} reset the stream (code {code})"),
                ),
            }
        }
        E::ConnectionLost(lost) => connection_error(peer, lost),
        other => Error::internal(format!("read from {peer}: {other}")),
    }
}

pub(crate) fn read_exact_error(peer: &str, what: &str, err: &quinn::ReadExactError) -> Error {
    match err {
        quinn::ReadExactError::FinishedEarly(got) => Error::new(
            ErrorCode::Truncated,
            format!("{peer} ended the stream {got} bytes into the {what}"),
        ),
        quinn::ReadExactError::ReadError(read) => read_error(peer, read),
    }
}

pub(crate) fn write_error(peer: &str, err: &quinn::WriteError) -> Error {
    use quinn::WriteError as E;
    match err {
        E::Stopped(code) => Error::new(
            ErrorCode::Cancelled,
            format!("{peer} stopped reading (code {code})"),
        ),
        E::ConnectionLost(lost) => connection_error(peer, lost),
        other => Error::internal(format!("write to {peer}: {other}")),
    }
}

/// Reads one length-prefixed frame body.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    peer: &str,
    fixed_bytes: usize,
) -> Result<Vec<u8>, Error> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix)
        .await
        .map_err(|err| read_exact_error(peer, "header length", &err))?;
    let len = crate::wire::frame_len(prefix, fixed_bytes)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body)
        .await
        .map_err(|err| read_exact_error(peer, "header", &err))?;
    Ok(body)
}
