//! The frame codec: pure functions from typed headers to bytes and back, no
//! I/O. Layout (all integers little-endian):
//!
//! ```text
//! request:  u32 frame_len | u16 method | u8 flags | u128 request_id | u32 timeout_ms
//!           | u64 bulk_len | postcard(message)
//! response: u32 frame_len | u16 status | u64 bulk_len | postcard(message or error body)
//! ```
//!
//! `frame_len` counts the bytes after itself and is capped at
//! [`HEADER_MAX_BYTES`]. Exactly `bulk_len` raw bytes follow the frame on the
//! same stream; they never pass through the codec. `status` 0 is success,
//! any other value is an [`ErrorCode`]. See `docs/protocol.md`.

use crate::error::{Error, ErrorCode};
use crate::ids::RequestId;
use crate::limits::{HEADER_MAX_BYTES, REQUEST_FIXED_BYTES, RESPONSE_FIXED_BYTES};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// ALPN identifier of protocol version 1. A peer that offers no version we
/// serve fails the TLS handshake instead of exchanging frames it cannot read.
pub const ALPN_V1: &[u8] = b"tessera/1";

/// Every protocol version this build speaks, most preferred first.
pub const ALPN_SUPPORTED: &[&[u8]] = &[ALPN_V1];

/// `bulk_len` value announcing framed bulk of unknown length: segments of
/// `u32 length | bytes`, then a zero length, then `u32 length | trailer`
/// (a method-defined message the sender could only know at the end, such as
/// the final length and checksum of a streamed piece), then the end of the
/// stream.
pub const BULK_FRAMED: u64 = u64::MAX;

/// Largest segment of framed bulk.
pub const BULK_SEGMENT_MAX_BYTES: u32 = 16 * 1024 * 1024;

/// Request flag: the caller marked the call idempotent (safe to replay).
pub const FLAG_IDEMPOTENT: u8 = 0b0000_0001;

/// A typed RPC: the request message, its method number and its response type.
///
/// Method numbers are stable wire constants, allocated in ranges per service
/// (see `docs/protocol.md`); they are never reused.
pub trait Method: Serialize + DeserializeOwned + Send + Sync + 'static {
    const ID: u16;
    const NAME: &'static str;
    /// Whether replaying the call after an unknown outcome is harmless. Only
    /// idempotent calls are retried by the client.
    const IDEMPOTENT: bool;
    type Response: Serialize + DeserializeOwned + Send + 'static;
}

/// A decoded request header. `payload` is the still-encoded message; the
/// dispatcher decodes it once it knows the method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHead {
    pub method: u16,
    pub flags: u8,
    pub request_id: RequestId,
    pub timeout_ms: u32,
    pub bulk_len: u64,
    pub payload: Vec<u8>,
}

/// A decoded response header: the encoded message on success, or the error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseHead {
    pub bulk_len: u64,
    pub result: Result<Vec<u8>, Error>,
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    message: String,
    redirect: Option<String>,
}

/// Reads the length prefix and checks it against the cap before anything is
/// buffered.
pub fn frame_len(prefix: [u8; 4], fixed_bytes: usize) -> Result<usize, Error> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > HEADER_MAX_BYTES {
        return Err(Error::new(
            ErrorCode::HeaderTooLarge,
            format!("header of {len} bytes exceeds the cap of {HEADER_MAX_BYTES}"),
        ));
    }
    if len < fixed_bytes {
        return Err(Error::new(
            ErrorCode::Malformed,
            format!("header of {len} bytes is shorter than its fixed part ({fixed_bytes})"),
        ));
    }
    Ok(len)
}

fn encode_payload<T: Serialize>(message: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    let encoded = postcard::to_extend(message, std::mem::take(out))
        .map_err(|err| Error::internal(format!("encode message: {err}")))?;
    *out = encoded;
    let len = out.len() - 4;
    if len > HEADER_MAX_BYTES {
        return Err(Error::new(
            ErrorCode::HeaderTooLarge,
            format!(
                "encoded header of {len} bytes (message {} bytes) exceeds the cap of {HEADER_MAX_BYTES}",
                out.len() - start
            ),
        ));
    }
    let prefix = (len as u32).to_le_bytes();
    out[..4].copy_from_slice(&prefix);
    Ok(())
}

/// Encodes a request frame, length prefix included.
pub fn encode_request<M: Method>(
    request_id: RequestId,
    timeout_ms: u32,
    bulk_len: u64,
    message: &M,
) -> Result<Vec<u8>, Error> {
    let flags = if M::IDEMPOTENT { FLAG_IDEMPOTENT } else { 0 };
    encode_request_raw(M::ID, flags, request_id, timeout_ms, bulk_len, message)
}

/// Encodes a request frame for any method number; tests use it to send
/// methods a server does not know.
pub fn encode_request_raw<T: Serialize>(
    method: u16,
    flags: u8,
    request_id: RequestId,
    timeout_ms: u32,
    bulk_len: u64,
    message: &T,
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&method.to_le_bytes());
    out.push(flags);
    out.extend_from_slice(&request_id.0.to_le_bytes());
    out.extend_from_slice(&timeout_ms.to_le_bytes());
    out.extend_from_slice(&bulk_len.to_le_bytes());
    encode_payload(message, &mut out)?;
    Ok(out)
}

/// Decodes a request frame body (the bytes after the length prefix).
pub fn decode_request(body: &[u8]) -> Result<RequestHead, Error> {
    if body.len() < REQUEST_FIXED_BYTES {
        return Err(Error::new(
            ErrorCode::Truncated,
            format!("request header of {} bytes is truncated", body.len()),
        ));
    }
    let (fixed, payload) = body.split_at(REQUEST_FIXED_BYTES);
    Ok(RequestHead {
        method: u16::from_le_bytes([fixed[0], fixed[1]]),
        flags: fixed[2],
        request_id: RequestId(u128::from_le_bytes(array(&fixed[3..19]))),
        timeout_ms: u32::from_le_bytes(array(&fixed[19..23])),
        bulk_len: u64::from_le_bytes(array(&fixed[23..31])),
        payload: payload.to_vec(),
    })
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(bytes);
    out
}

/// Decodes a message payload; trailing bytes are an error so two encodings
/// of one message cannot both be accepted.
pub fn decode_message<T: DeserializeOwned>(payload: &[u8]) -> Result<T, Error> {
    match postcard::take_from_bytes::<T>(payload) {
        Ok((message, [])) => Ok(message),
        Ok((_, rest)) => Err(Error::new(
            ErrorCode::Malformed,
            format!("{} trailing bytes after the message", rest.len()),
        )),
        Err(err) => Err(Error::new(
            ErrorCode::Malformed,
            format!("decode message: {err}"),
        )),
    }
}

fn response_prefix(status: u16, bulk_len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&status.to_le_bytes());
    out.extend_from_slice(&bulk_len.to_le_bytes());
    out
}

/// Encodes a successful response frame, length prefix included.
pub fn encode_response<T: Serialize>(message: &T, bulk_len: u64) -> Result<Vec<u8>, Error> {
    let mut out = response_prefix(0, bulk_len);
    encode_payload(message, &mut out)?;
    Ok(out)
}

/// Encodes an error response frame. It cannot fail: an error body is bounded
/// by [`crate::limits::ERROR_MESSAGE_MAX_BYTES`], far below the cap.
pub fn encode_error(error: &Error) -> Vec<u8> {
    let mut out = response_prefix(error.code as u16, 0);
    let body = ErrorBody {
        message: error.message.clone(),
        redirect: error.redirect.clone(),
    };
    if encode_payload(&body, &mut out).is_err() {
        out = response_prefix(error.code as u16, 0);
        let fallback = ErrorBody {
            message: String::new(),
            redirect: None,
        };
        // An empty body is a handful of bytes; it always fits.
        let _ = encode_payload(&fallback, &mut out);
    }
    out
}

/// Decodes a response frame body (the bytes after the length prefix).
pub fn decode_response(body: &[u8]) -> Result<ResponseHead, Error> {
    if body.len() < RESPONSE_FIXED_BYTES {
        return Err(Error::new(
            ErrorCode::Truncated,
            format!("response header of {} bytes is truncated", body.len()),
        ));
    }
    let status = u16::from_le_bytes([body[0], body[1]]);
    let bulk_len = u64::from_le_bytes(array(&body[2..10]));
    let payload = &body[RESPONSE_FIXED_BYTES..];
    if status == 0 {
        return Ok(ResponseHead {
            bulk_len,
            result: Ok(payload.to_vec()),
        });
    }
    let error_body: ErrorBody = decode_message(payload)?;
    let error = match ErrorCode::from_u16(status) {
        Some(code) => Error {
            code,
            message: error_body.message,
            redirect: error_body.redirect,
        },
        None => Error::internal(format!(
            "peer sent unknown error code {status}: {}",
            error_body.message
        )),
    };
    Ok(ResponseHead {
        bulk_len,
        result: Err(error),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Sample {
        name: String,
        values: Vec<u64>,
        flag: Option<bool>,
    }

    impl Method for Sample {
        const ID: u16 = 7;
        const NAME: &'static str = "sample";
        const IDEMPOTENT: bool = true;
        type Response = Sample;
    }

    fn split(frame: &[u8]) -> (usize, &[u8]) {
        let len = frame_len(frame[..4].try_into().unwrap(), 0).unwrap();
        (len, &frame[4..])
    }

    fn sample_strategy() -> impl Strategy<Value = Sample> {
        (
            ".{0,64}",
            proptest::collection::vec(any::<u64>(), 0..32),
            any::<Option<bool>>(),
        )
            .prop_map(|(name, values, flag)| Sample { name, values, flag })
    }

    proptest! {
        #[test]
        fn request_round_trips(msg in sample_strategy(), id in any::<u128>(), timeout in any::<u32>(), bulk in any::<u64>()) {
            let frame = encode_request(RequestId(id), timeout, bulk, &msg).unwrap();
            let (len, body) = split(&frame);
            prop_assert_eq!(len, body.len());
            let head = decode_request(body).unwrap();
            prop_assert_eq!(head.method, Sample::ID);
            prop_assert_eq!(head.flags, FLAG_IDEMPOTENT);
            prop_assert_eq!(head.request_id, RequestId(id));
            prop_assert_eq!(head.timeout_ms, timeout);
            prop_assert_eq!(head.bulk_len, bulk);
            prop_assert_eq!(decode_message::<Sample>(&head.payload).unwrap(), msg);
        }

        #[test]
        fn response_round_trips(msg in sample_strategy(), bulk in any::<u64>()) {
            let frame = encode_response(&msg, bulk).unwrap();
            let head = decode_response(split(&frame).1).unwrap();
            prop_assert_eq!(head.bulk_len, bulk);
            prop_assert_eq!(decode_message::<Sample>(&head.result.unwrap()).unwrap(), msg);
        }

        #[test]
        fn error_round_trips(index in 0..ErrorCode::ALL.len(), message in ".{0,200}", redirect in proptest::option::of("[a-z0-9.:]{1,30}")) {
            let mut error = Error::new(ErrorCode::ALL[index], message);
            error.redirect = redirect;
            let frame = encode_error(&error);
            let head = decode_response(split(&frame).1).unwrap();
            prop_assert_eq!(head.result.unwrap_err(), error);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if bytes.len() >= 4 {
                let _ = frame_len(bytes[..4].try_into().unwrap(), REQUEST_FIXED_BYTES);
            }
            if let Ok(head) = decode_request(&bytes) {
                let _ = decode_message::<Sample>(&head.payload);
            }
            if let Ok(ResponseHead { result: Ok(payload), .. }) = decode_response(&bytes) {
                let _ = decode_message::<Sample>(&payload);
            }
            let _ = decode_message::<Sample>(&bytes);
        }
    }

    #[test]
    fn oversized_and_short_frames_are_refused() {
        let too_big = ((HEADER_MAX_BYTES + 1) as u32).to_le_bytes();
        assert_eq!(
            frame_len(too_big, REQUEST_FIXED_BYTES).unwrap_err().code,
            ErrorCode::HeaderTooLarge
        );
        assert_eq!(
            frame_len(3u32.to_le_bytes(), REQUEST_FIXED_BYTES)
                .unwrap_err()
                .code,
            ErrorCode::Malformed
        );
        assert_eq!(
            decode_request(&[1, 2, 3]).unwrap_err().code,
            ErrorCode::Truncated
        );
        assert_eq!(
            decode_response(&[1]).unwrap_err().code,
            ErrorCode::Truncated
        );
    }

    #[test]
    fn oversized_messages_are_refused_at_encode() {
        let msg = Sample {
            name: "x".repeat(HEADER_MAX_BYTES),
            values: vec![],
            flag: None,
        };
        let err = encode_request(RequestId(1), 0, 0, &msg).unwrap_err();
        assert_eq!(err.code, ErrorCode::HeaderTooLarge);
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut payload = postcard::to_stdvec(&7u32).unwrap();
        payload.push(0);
        assert_eq!(
            decode_message::<u32>(&payload).unwrap_err().code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn unknown_error_codes_become_internal() {
        let mut frame = encode_error(&Error::new(ErrorCode::NotFound, "x"));
        frame[4..6].copy_from_slice(&60000u16.to_le_bytes());
        let err = decode_response(&frame[4..]).unwrap().result.unwrap_err();
        assert_eq!(err.code, ErrorCode::Internal);
        assert!(err.message.contains("60000"));
    }
}
