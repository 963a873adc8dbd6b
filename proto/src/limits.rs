//! Every bound the wire protocol relies on, in one place so related limits can be
//! checked against each other at compile time.

/// Largest encoded request or response header (the typed part of a frame).
///
/// Headers carry metadata only; bulk bytes travel after the header and never
/// count against this cap. 64 KiB fits the largest metadata message we send (a
/// directory page or an inventory page) with room to spare while keeping a
/// hostile peer from making us buffer more than that before we know the call.
pub const HEADER_MAX_BYTES: usize = 64 * 1024;

/// Largest error message carried on the wire; longer messages are truncated by
/// the sender so an error never exceeds the header cap.
pub const ERROR_MESSAGE_MAX_BYTES: usize = 4 * 1024;

/// How long a server waits for a request header after a stream opens. A peer
/// that opens streams and never writes must not pin server tasks forever.
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;

/// Default number of concurrent bidirectional streams (in-flight calls) one
/// connection may open to a server.
pub const STREAMS_PER_CONNECTION_DEFAULT: u32 = 256;

/// Upper bound on retries of an idempotent call, whatever the caller asks for.
pub const CALL_RETRIES_MAX: u32 = 8;

/// Default per-call deadline when the caller does not give one.
pub const CALL_TIMEOUT_DEFAULT_MS: u64 = 30_000;

/// How long a server waits for in-flight calls to finish on shutdown before it
/// closes their connections.
pub const SHUTDOWN_GRACE_MS: u64 = 5_000;

/// Clock skew tolerated when checking a capability token's expiry.
pub const TOKEN_CLOCK_SKEW_MS: u64 = 30_000;

/// Length of the fixed part of a request frame after the length prefix:
/// method (2) + flags (1) + request id (16) + timeout (4) + bulk length (8).
pub const REQUEST_FIXED_BYTES: usize = 2 + 1 + 16 + 4 + 8;

/// Length of the fixed part of a response frame after the length prefix:
/// status (2) + bulk length (8).
pub const RESPONSE_FIXED_BYTES: usize = 2 + 8;

const _: () = assert!(REQUEST_FIXED_BYTES < HEADER_MAX_BYTES);
const _: () = assert!(ERROR_MESSAGE_MAX_BYTES + RESPONSE_FIXED_BYTES + 64 < HEADER_MAX_BYTES);
const _: () = assert!(HEADER_MAX_BYTES <= u32::MAX as usize);
