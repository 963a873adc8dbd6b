//! Bodies sent with `Transfer-Encoding: chunked` and no length.
//!
//! A streaming `aws-chunked` upload names its length in
//! `x-amz-decoded-content-length`, and s3s reads it as it comes. Any other
//! signed or unsigned body must have a known length before its signature
//! or hash can be checked, which s3s asks of `Content-Length` (answering
//! 411 without one, as MinIO does). Clients that stream from a pipe (curl
//! `-T -`, SDKs given a stream of unknown size) send no length, so the
//! gateway reads such a body here, up to [`UNSIZED_BODY_MAX`], and hands
//! it on with its length; a longer one is refused with 411 and what to do.

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as _, Incoming};
use std::pin::Pin;
use std::time::Duration;

/// Most bytes held to give a body without `Content-Length` its length.
pub const UNSIZED_BODY_MAX: usize = 16 << 20;
/// A body that stalls this long is given up, as a sized upload would be.
const STALL: Duration = Duration::from_secs(60);

/// Whether the request carries a body of unknown length that s3s would
/// refuse: chunked transfer coding, no `Content-Length`, and no
/// `aws-chunked` streaming signature.
pub fn needs_length(request: &http::Request<Incoming>) -> bool {
    let headers = request.headers();
    let chunked = headers
        .get_all(http::header::TRANSFER_ENCODING)
        .iter()
        .any(|v| {
            v.to_str()
                .is_ok_and(|v| v.to_ascii_lowercase().contains("chunked"))
        });
    let streaming = headers
        .get("x-amz-content-sha256")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("STREAMING-"));
    chunked && !headers.contains_key(http::header::CONTENT_LENGTH) && !streaming
}

/// The request with its whole body read and its length set, or the
/// response that refuses it.
pub async fn with_length(
    request: http::Request<Incoming>,
) -> Result<http::Request<s3s::Body>, http::Response<s3s::Body>> {
    let (mut parts, mut body) = request.into_parts();
    let mut data = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(
            STALL,
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
        )
        .await;
        match frame {
            Err(_) => {
                return Err(refusal(
                    http::StatusCode::BAD_REQUEST,
                    "RequestTimeout",
                    "the request body stalled for 60 s",
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                return Err(refusal(
                    http::StatusCode::BAD_REQUEST,
                    "IncompleteBody",
                    &format!("the chunked request body could not be read: {err}"),
                ));
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(chunk) = frame.into_data() {
                    if data.len() + chunk.len() > UNSIZED_BODY_MAX {
                        return Err(refusal(
                            http::StatusCode::LENGTH_REQUIRED,
                            "MissingContentLength",
                            &format!(
                                "a body without Content-Length may hold at most {} MiB; send Content-Length, or stream it as aws-chunked with x-amz-decoded-content-length, or use a multipart upload",
                                UNSIZED_BODY_MAX >> 20
                            ),
                        ));
                    }
                    data.extend_from_slice(&chunk);
                }
            }
        }
    }
    parts.headers.remove(http::header::TRANSFER_ENCODING);
    parts.headers.insert(
        http::header::CONTENT_LENGTH,
        http::HeaderValue::from(data.len()),
    );
    Ok(http::Request::from_parts(
        parts,
        s3s::Body::from(Bytes::from(data)),
    ))
}

fn refusal(status: http::StatusCode, code: &str, message: &str) -> http::Response<s3s::Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{}</Message></Error>",
        message.replace('&', "&amp;").replace('<', "&lt;")
    );
    let mut response = http::Response::new(s3s::Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    response
}
