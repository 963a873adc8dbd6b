//! Request and response bodies: streaming an upload into a file with its
//! promised checksums verified, a small object's body read whole for a
//! single-commit PUT, and a GET's body fed from a reader.

use crate::names::{self, error};
use crate::s3::{BODY_IDLE, Gateway, IO_BYTES};
use crate::store::{ObjectMeta, Store, etag_record_at, s3_error};
use bytes::Bytes;
use futures_util::StreamExt;
use md5::{Digest, Md5};
use s3s::checksum::ChecksumHasher;
use s3s::dto::*;
use s3s::{S3Error, S3ErrorCode, S3Request, S3Result, TrailingHeaders};
use std::sync::Arc;
use tessera_client::{FileReader, FileWriter};
use tessera_proto::ids::InodeId;
use tessera_proto::meta::{Attr, MetaOp};
use tokio::sync::mpsc;

/// The next piece of a request body, or `None` at its end; a client
/// that sends nothing for [`BODY_IDLE`] is given up on.
async fn next_chunk(body: &mut StreamingBlob) -> S3Result<Option<Bytes>> {
    match tokio::time::timeout(BODY_IDLE, body.next()).await {
        Ok(Some(chunk)) => chunk.map(Some).map_err(body_error),
        Ok(None) => Ok(None),
        Err(_) => Err(error(
            S3ErrorCode::RequestTimeout,
            format!(
                "no body bytes arrived for {} s; the upload was dropped",
                BODY_IDLE.as_secs()
            ),
        )),
    }
}

/// Reads a body until it ends or holds more than `limit` bytes. Returns
/// the bytes read and whether that was the whole body.
pub(crate) async fn read_prefix(
    body: &mut Option<StreamingBlob>,
    limit: usize,
) -> S3Result<(Vec<u8>, bool)> {
    let Some(stream) = body.as_mut() else {
        return Ok((Vec::new(), true));
    };
    let mut out = Vec::new();
    while out.len() <= limit {
        match next_chunk(stream).await? {
            Some(chunk) => out.extend_from_slice(&chunk),
            None => return Ok((out, true)),
        }
    }
    Ok((out, false))
}

pub(crate) use tessera_proto::token::unix_now_ns as now_ns;

impl Gateway {
    /// Streams a request body into file `ino`, after `prefix` (bytes of the
    /// body already read), returning its MD5 and size. Promised checksums
    /// (headers, or trailers after an `aws-chunked` body) are verified
    /// before the file can become an object.
    pub(crate) async fn write_body(
        &self,
        ino: InodeId,
        prefix: Vec<u8>,
        body: Option<StreamingBlob>,
        declared: Option<i64>,
        promised: Promised,
        part: bool,
    ) -> S3Result<([u8; 16], u64)> {
        let mut sums = promised.hasher();
        let mut md5 = Md5::new();
        let mut writer = FileWriter::new(self.store.client.clone(), ino);
        if part {
            // A concat moves the parts' extents into the object; inline
            // bytes cannot move.
            writer = writer.chunked();
        }
        md5.update(&prefix);
        sums.update(&prefix);
        let mut buffer = prefix;
        buffer.reserve(IO_BYTES.saturating_sub(buffer.len()));
        let mut offset = 0u64;
        if let Some(mut body) = body {
            while let Some(chunk) = next_chunk(&mut body).await? {
                md5.update(&chunk);
                sums.update(&chunk);
                buffer.extend_from_slice(&chunk);
                if buffer.len() >= IO_BYTES {
                    writer.write(offset, &buffer).await.map_err(s3_error)?;
                    offset += buffer.len() as u64;
                    buffer.clear();
                }
            }
        }
        if !buffer.is_empty() {
            writer.write(offset, &buffer).await.map_err(s3_error)?;
            offset += buffer.len() as u64;
        }
        if let Some(declared) = declared
            && u64::try_from(declared).ok() != Some(offset)
        {
            return Err(error(
                S3ErrorCode::IncompleteBody,
                format!("Content-Length said {declared} bytes, the body held {offset}"),
            ));
        }
        promised.verify(sums.finalize())?;
        // A completed PUT or part is on disk on every server holding it.
        writer.flush_durable().await.map_err(s3_error)?;
        Ok((md5.finalize().into(), offset))
    }

    /// A whole body of at most the inline limit, written as an object in
    /// one commit (`MetaOp::PutInline`): no staged file, no separate
    /// xattr or rename call. The bytes are in the fsynced Raft log of a
    /// majority when this returns. Returns the ETag.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn put_small(
        &self,
        bucket: &Attr,
        key: &str,
        data: Vec<u8>,
        declared: Option<i64>,
        promised: Promised,
        content_md5: Option<&str>,
        meta: &ObjectMeta,
        replace: bool,
    ) -> S3Result<(String, Option<String>)> {
        if let Some(declared) = declared
            && u64::try_from(declared).ok() != Some(data.len() as u64)
        {
            return Err(error(
                S3ErrorCode::IncompleteBody,
                format!(
                    "Content-Length said {declared} bytes, the body held {}",
                    data.len()
                ),
            ));
        }
        let mut sums = promised.hasher();
        sums.update(&data);
        promised.verify(sums.finalize())?;
        let md5: [u8; 16] = Md5::digest(&data).into();
        check_md5(content_md5, &md5)?;
        let etag = names::hex(&md5);
        let mtime_ns = now_ns();
        let mut xattrs = meta.xattrs();
        xattrs.push((
            names::XATTR_ETAG.into(),
            etag_record_at(&etag, mtime_ns, data.len() as u64),
        ));
        let (_, version) = self
            .store
            .install_inline(bucket, key, data, mtime_ns, xattrs, replace)
            .await?;
        Ok((etag, version))
    }

    /// Copies bytes `[start, end)` of `source` (to its end when `end` is
    /// `None`) to the start of `ino`, durably; returns their MD5. A
    /// multipart part is written `chunked`: completion moves parts' extents,
    /// which inline bytes are not.
    pub(crate) async fn copy_range(
        &self,
        source: &Attr,
        ino: InodeId,
        start: u64,
        end: Option<u64>,
        chunked: bool,
    ) -> S3Result<[u8; 16]> {
        let mut reader = FileReader::open(self.store.client.clone(), source.ino)
            .await
            .map_err(s3_error)?;
        let mut writer = FileWriter::new(self.store.client.clone(), ino);
        if chunked {
            writer = writer.chunked();
        }
        let mut md5 = Md5::new();
        let end = end.unwrap_or_else(|| reader.size());
        reader.read_ahead_until(end);
        let mut offset = start;
        while offset < end {
            let bytes = reader
                .read(offset, (IO_BYTES as u64).min(end - offset))
                .await
                .map_err(s3_error)?;
            if bytes.is_empty() {
                return Err(error(
                    S3ErrorCode::InternalError,
                    "the source object shrank during the copy; retry",
                ));
            }
            md5.update(&bytes);
            writer
                .write(offset - start, &bytes)
                .await
                .map_err(s3_error)?;
            offset += bytes.len() as u64;
        }
        writer.flush_durable().await.map_err(s3_error)?;
        Ok(md5.finalize().into())
    }
}

/// What a failed request body means for the client. s3s reports an
/// `aws-chunked` chunk whose signature does not verify through its stream
/// error type, which it does not export; its message names it (s3s is
/// pinned, and a test sends an altered chunk).
pub(crate) fn body_error(err: s3s::StdError) -> S3Error {
    match err.downcast::<S3Error>() {
        Ok(err) => *err,
        Err(err) => {
            let text = err.to_string();
            if text.contains("SignatureMismatch") {
                error(
                    S3ErrorCode::SignatureDoesNotMatch,
                    "a chunk of the aws-chunked body does not match its chunk signature",
                )
            } else if ["FormatError", "TooLarge", "TooManyTrailerHeaders"]
                .iter()
                .any(|what| text.contains(what))
            {
                error(
                    S3ErrorCode::InvalidRequest,
                    format!("the aws-chunked body is malformed: {text}"),
                )
            } else {
                error(
                    S3ErrorCode::IncompleteBody,
                    format!("the request body ended early or could not be read: {text}"),
                )
            }
        }
    }
}

const CHECKSUMS: [&str; 5] = [
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
    "x-amz-checksum-crc64nvme",
];

/// The checksums a request promises for its body: values in headers, and
/// names announced in `x-amz-trailer` whose values follow the body.
#[derive(Default)]
pub(crate) struct Promised {
    /// By algorithm, in [`CHECKSUMS`] order.
    headers: [Option<String>; 5],
    announced: [bool; 5],
    trailers: Option<TrailingHeaders>,
}

impl Promised {
    pub(crate) fn new<T>(req: &S3Request<T>, headers: [Option<String>; 5]) -> Promised {
        let mut announced = [false; 5];
        for value in req.headers.get_all("x-amz-trailer") {
            for name in value.to_str().unwrap_or_default().split(',') {
                let name = name.trim().to_ascii_lowercase();
                if let Some(i) = CHECKSUMS.iter().position(|c| *c == name) {
                    announced[i] = true;
                }
            }
        }
        Promised {
            headers,
            announced,
            trailers: req.trailing_headers.clone(),
        }
    }

    fn wanted(&self, i: usize) -> bool {
        self.headers[i].is_some() || self.announced[i]
    }

    fn hasher(&self) -> ChecksumHasher {
        ChecksumHasher {
            crc32: self.wanted(0).then(Default::default),
            crc32c: self.wanted(1).then(Default::default),
            sha1: self.wanted(2).then(Default::default),
            sha256: self.wanted(3).then(Default::default),
            crc64nvme: self.wanted(4).then(Default::default),
        }
    }

    fn verify(&self, computed: Checksum) -> S3Result<()> {
        let computed = [
            computed.checksum_crc32,
            computed.checksum_crc32c,
            computed.checksum_sha1,
            computed.checksum_sha256,
            computed.checksum_crc64nvme,
        ];
        for (i, name) in CHECKSUMS.iter().enumerate() {
            let trailer = || {
                self.trailers.as_ref().and_then(|t| {
                    t.read(|h| {
                        h.get(*name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    })
                    .flatten()
                })
            };
            let expected = match &self.headers[i] {
                Some(value) => Some(value.clone()),
                None if self.announced[i] => match trailer() {
                    Some(value) => Some(value),
                    None => {
                        return Err(error(
                            S3ErrorCode::InvalidRequest,
                            format!(
                                "x-amz-trailer announced {name}, but the body carried no such trailer"
                            ),
                        ));
                    }
                },
                None => None,
            };
            if let Some(expected) = expected
                && computed[i].as_deref() != Some(expected.trim())
            {
                return Err(error(
                    S3ErrorCode::BadDigest,
                    format!("{name} does not match the body that arrived"),
                ));
            }
        }
        Ok(())
    }
}

/// Content-MD5 is standard base64 with padding; unpadded input is taken
/// too, as some clients send it.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    LENIENT.decode(text.trim()).ok()
}

pub(crate) fn check_md5(content_md5: Option<&str>, md5: &[u8; 16]) -> S3Result<()> {
    match content_md5 {
        None => Ok(()),
        Some(given) => match base64_decode(given) {
            Some(given) if given.len() == 16 => {
                if given == md5 {
                    Ok(())
                } else {
                    Err(error(
                        S3ErrorCode::BadDigest,
                        "Content-MD5 does not match the body",
                    ))
                }
            }
            _ => Err(error(
                S3ErrorCode::InvalidDigest,
                "Content-MD5 is not a base64 MD5",
            )),
        },
    }
}

/// Keeps an object's inode alive while a GET streams it.
pub(crate) struct Pin {
    pub(crate) store: Arc<Store>,
    pub(crate) ino: InodeId,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let store = self.store.clone();
        let ino = self.ino;
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = store.call(MetaOp::Release { ino }).await;
            });
        }
    }
}

/// A response body fed by a task that reads ahead of the client by one
/// step; a client that goes away stops the task.
struct BodyStream(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_util::Stream for BodyStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

pub(crate) fn stream_body(
    mut reader: FileReader,
    start: u64,
    end: u64,
    pin: Option<Pin>,
) -> StreamingBlob {
    let (tx, rx) = mpsc::channel(2);
    reader.read_ahead_until(end);
    tokio::spawn(async move {
        let _pin = pin;
        let mut at = start;
        while at < end {
            let step = (end - at).min(IO_BYTES as u64);
            let sent = match reader.read(at, step).await {
                Ok(bytes) if bytes.is_empty() => {
                    tx.send(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the object shrank while it was read",
                    )))
                    .await
                    .ok();
                    break;
                }
                Ok(bytes) => {
                    at += bytes.len() as u64;
                    match tokio::time::timeout(BODY_IDLE, tx.send(Ok(bytes))).await {
                        Ok(sent) => sent,
                        Err(_) => {
                            tracing::info!(ino = %reader.ino(), "GET client stopped reading; body cut off");
                            break;
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(ino = %reader.ino(), error = %err, "GET failed mid-body");
                    tx.send(Err(std::io::Error::other(err.to_string())))
                        .await
                        .ok();
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });
    StreamingBlob::wrap(BodyStream(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_decodes() {
        // MD5 of "" is 1B2M2Y8AsgTpgAmY7PhCfg==.
        let empty: [u8; 16] = Md5::digest(b"").into();
        check_md5(Some("1B2M2Y8AsgTpgAmY7PhCfg=="), &empty).unwrap();
        let other: [u8; 16] = Md5::digest(b"x").into();
        assert_eq!(
            check_md5(Some("1B2M2Y8AsgTpgAmY7PhCfg=="), &other)
                .unwrap_err()
                .code(),
            &S3ErrorCode::BadDigest
        );
        assert_eq!(
            check_md5(Some("not base64!"), &other).unwrap_err().code(),
            &S3ErrorCode::InvalidDigest
        );
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
    }
}
