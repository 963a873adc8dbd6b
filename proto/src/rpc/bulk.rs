//! Bulk bytes after a header: counted so that a peer sending more or fewer
//! bytes than it declared is caught, and never copied through the codec.

use super::{read_error, write_error};
use crate::error::{Error, ErrorCode};
use crate::limits::HEADER_MAX_BYTES;
use crate::wire::{BULK_FRAMED, BULK_SEGMENT_MAX_BYTES};
use bytes::Bytes;

/// Largest piece handed out by one [`BulkReader::next`] call.
const READ_CHUNK_MAX_BYTES: usize = 1024 * 1024;

/// State of framed bulk (see [`BULK_FRAMED`]).
struct Framed {
    segment_left: u64,
    trailer: Option<Vec<u8>>,
    finished: bool,
}

/// Reads exactly the declared number of bulk bytes from a stream, or framed
/// bulk of unknown length up to its trailer.
pub struct BulkReader {
    recv: quinn::RecvStream,
    remaining: u64,
    received: u64,
    peer: String,
    checked_end: bool,
    framed: Option<Framed>,
}

impl BulkReader {
    pub(crate) fn new(recv: quinn::RecvStream, declared: u64, peer: String) -> BulkReader {
        let framed = (declared == BULK_FRAMED).then_some(Framed {
            segment_left: 0,
            trailer: None,
            finished: false,
        });
        BulkReader {
            recv,
            remaining: declared,
            received: 0,
            peer,
            checked_end: false,
            framed,
        }
    }

    /// Bytes still to come; `u64::MAX` for framed bulk, whose length is
    /// only known at its end.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Bulk bytes received so far (framing not counted).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Whether the sender announced framed bulk.
    pub fn is_framed(&self) -> bool {
        self.framed.is_some()
    }

    /// The trailer of framed bulk, once [`BulkReader::next`] returned `None`.
    pub fn trailer(&self) -> Option<&[u8]> {
        self.framed.as_ref().and_then(|f| f.trailer.as_deref())
    }

    async fn read_u32(&mut self, what: &str) -> Result<u32, Error> {
        let mut bytes = [0u8; 4];
        self.recv
            .read_exact(&mut bytes)
            .await
            .map_err(|err| super::read_exact_error(&self.peer, what, &err))?;
        Ok(u32::from_le_bytes(bytes))
    }

    async fn next_framed(&mut self) -> Result<Option<Bytes>, Error> {
        let (finished, segment_left) = match &self.framed {
            Some(framed) => (framed.finished, framed.segment_left),
            None => return Err(Error::internal("bulk is not framed")),
        };
        if finished {
            return Ok(None);
        }
        let mut segment_left = segment_left;
        if segment_left == 0 {
            let len = self.read_u32("segment length").await?;
            if len == 0 {
                let trailer_len = self.read_u32("trailer length").await? as usize;
                if trailer_len > HEADER_MAX_BYTES {
                    return Err(Error::new(
                        ErrorCode::HeaderTooLarge,
                        format!(
                            "trailer of {trailer_len} bytes exceeds the cap of {HEADER_MAX_BYTES}"
                        ),
                    ));
                }
                let mut trailer = vec![0u8; trailer_len];
                self.recv
                    .read_exact(&mut trailer)
                    .await
                    .map_err(|err| super::read_exact_error(&self.peer, "trailer", &err))?;
                self.check_end().await?;
                if let Some(framed) = self.framed.as_mut() {
                    framed.trailer = Some(trailer);
                    framed.finished = true;
                }
                return Ok(None);
            }
            if len > BULK_SEGMENT_MAX_BYTES {
                return Err(Error::new(
                    ErrorCode::Malformed,
                    format!(
                        "bulk segment of {len} bytes exceeds the cap of {BULK_SEGMENT_MAX_BYTES}"
                    ),
                ));
            }
            segment_left = u64::from(len);
        }
        let max = segment_left.min(READ_CHUNK_MAX_BYTES as u64) as usize;
        match self.recv.read_chunk(max, true).await {
            Ok(Some(chunk)) => {
                let len = chunk.bytes.len() as u64;
                self.received += len;
                if let Some(framed) = self.framed.as_mut() {
                    framed.segment_left = segment_left - len;
                }
                Ok(Some(chunk.bytes))
            }
            Ok(None) => Err(Error::new(
                ErrorCode::Truncated,
                format!(
                    "{} ended the stream inside a bulk segment, before its trailer",
                    self.peer
                ),
            )),
            Err(err) => Err(read_error(&self.peer, &err)),
        }
    }

    /// The next piece of bulk data, or `None` once all declared bytes (or,
    /// framed, the trailer) arrived and the peer ended the stream.
    /// Cancel-safe only between calls.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        if self.framed.is_some() {
            return self.next_framed().await;
        }
        if self.remaining == 0 {
            self.check_end().await?;
            return Ok(None);
        }
        let max = self.remaining.min(READ_CHUNK_MAX_BYTES as u64) as usize;
        match self.recv.read_chunk(max, true).await {
            Ok(Some(chunk)) => {
                self.remaining -= chunk.bytes.len() as u64;
                self.received += chunk.bytes.len() as u64;
                Ok(Some(chunk.bytes))
            }
            Ok(None) => Err(Error::new(
                ErrorCode::Truncated,
                format!(
                    "{} ended the stream with {} bulk bytes missing",
                    self.peer, self.remaining
                ),
            )),
            Err(err) => Err(read_error(&self.peer, &err)),
        }
    }

    /// Fills `buf` completely from the bulk data.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), Error> {
        if self.framed.is_some() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "framed bulk is read with next()",
            ));
        }
        if buf.len() as u64 > self.remaining {
            return Err(Error::new(
                ErrorCode::OutOfRange,
                format!(
                    "asked for {} bulk bytes, only {} remain",
                    buf.len(),
                    self.remaining
                ),
            ));
        }
        match self.recv.read_exact(buf).await {
            Ok(()) => {
                self.remaining -= buf.len() as u64;
                self.received += buf.len() as u64;
                Ok(())
            }
            Err(err) => Err(super::read_exact_error(&self.peer, "bulk data", &err)),
        }
    }

    /// Reads all remaining bulk into memory, refusing more than `limit_bytes`.
    pub async fn to_vec(&mut self, limit_bytes: usize) -> Result<Vec<u8>, Error> {
        if self.remaining > limit_bytes as u64 {
            return Err(Error::new(
                ErrorCode::TooBig,
                format!(
                    "{} declared {} bulk bytes, more than the {limit_bytes} this call accepts",
                    self.peer, self.remaining
                ),
            ));
        }
        if self.framed.is_some() {
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                "framed bulk is read with next()",
            ));
        }
        // Appending what the stream hands over, rather than reading into a
        // zeroed buffer, saves a memset of every byte received.
        let mut out = Vec::with_capacity(self.remaining as usize);
        while self.remaining > 0 {
            let chunk = match self.recv.read_chunk(self.remaining as usize, true).await {
                Ok(Some(chunk)) => chunk.bytes,
                Ok(None) => {
                    return Err(Error::new(
                        ErrorCode::Truncated,
                        format!(
                            "{} ended the bulk data {} bytes short",
                            self.peer, self.remaining
                        ),
                    ));
                }
                Err(err) => return Err(read_error(&self.peer, &err)),
            };
            out.extend_from_slice(&chunk);
            self.remaining -= chunk.len() as u64;
            self.received += chunk.len() as u64;
        }
        self.check_end().await?;
        Ok(out)
    }

    /// Confirms the peer sent nothing beyond what it declared.
    async fn check_end(&mut self) -> Result<(), Error> {
        if self.checked_end {
            return Ok(());
        }
        match self.recv.read_chunk(1, true).await {
            Ok(None) => {
                self.checked_end = true;
                Ok(())
            }
            Ok(Some(_)) => Err(Error::new(
                ErrorCode::LengthMismatch,
                format!("{} sent more bulk bytes than it declared", self.peer),
            )),
            Err(err) => Err(read_error(&self.peer, &err)),
        }
    }

    /// Tells the peer to stop sending; used when the call fails early.
    pub(crate) fn stop(&mut self) {
        let _ = self.recv.stop(super::reset_code::STOP.into());
    }
}

/// Writes exactly the declared number of bulk bytes to a stream. Dropping it
/// before [`BulkWriter::finish`] resets the stream, so the peer sees a
/// cancelled call rather than a short one that looks complete.
pub struct BulkWriter {
    send: Option<quinn::SendStream>,
    declared: u64,
    remaining: u64,
    framed_sent: u64,
    peer: String,
}

impl BulkWriter {
    pub(crate) fn new(send: quinn::SendStream, declared: u64, peer: String) -> BulkWriter {
        BulkWriter {
            send: Some(send),
            declared,
            remaining: declared,
            framed_sent: 0,
            peer,
        }
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Bytes handed to the stream so far.
    pub fn sent(&self) -> u64 {
        if self.is_framed() {
            self.framed_sent
        } else {
            self.declared - self.remaining
        }
    }

    fn stream(&mut self) -> Result<&mut quinn::SendStream, Error> {
        self.send
            .as_mut()
            .ok_or_else(|| Error::internal("bulk writer used after finish"))
    }

    fn claim(&mut self, len: usize) -> Result<(), Error> {
        if len as u64 > self.remaining {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!(
                    "tried to send {len} bulk bytes with only {} declared bytes left",
                    self.remaining
                ),
            ));
        }
        self.remaining -= len as u64;
        Ok(())
    }

    fn is_framed(&self) -> bool {
        self.declared == BULK_FRAMED
    }

    /// In framed mode, sends the segment header for `len` bytes.
    async fn segment_header(&mut self, len: usize) -> Result<(), Error> {
        let len = u32::try_from(len)
            .ok()
            .filter(|len| *len <= BULK_SEGMENT_MAX_BYTES)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::TooBig,
                    format!("bulk segment of {len} bytes is over the cap"),
                )
            })?;
        let peer = self.peer.clone();
        self.stream()?
            .write_all(&len.to_le_bytes())
            .await
            .map_err(|err| write_error(&peer, &err))
    }

    /// Accounts for `len` bytes about to be sent: in framed mode sends the
    /// segment header, otherwise checks the declared length. Returns `false`
    /// when there is nothing to send (an empty segment would end framed bulk).
    async fn prepare(&mut self, len: usize) -> Result<bool, Error> {
        if !self.is_framed() {
            self.claim(len)?;
            return Ok(true);
        }
        if len == 0 {
            return Ok(false);
        }
        self.segment_header(len).await?;
        self.framed_sent += len as u64;
        Ok(true)
    }

    /// Sends bytes; refuses to send more than declared.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if !self.prepare(data.len()).await? {
            return Ok(());
        }
        let peer = self.peer.clone();
        self.stream()?
            .write_all(data)
            .await
            .map_err(|err| write_error(&peer, &err))
    }

    /// Sends an owned buffer without copying it.
    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        if !self.prepare(data.len()).await? {
            return Ok(());
        }
        let peer = self.peer.clone();
        self.stream()?
            .write_chunk(data)
            .await
            .map_err(|err| write_error(&peer, &err))
    }

    /// Ends framed bulk with its trailer, then the stream.
    pub async fn finish_with_trailer(&mut self, trailer: &[u8]) -> Result<(), Error> {
        if !self.is_framed() {
            return Err(Error::internal("a trailer needs framed bulk"));
        }
        if trailer.len() > HEADER_MAX_BYTES {
            return Err(Error::new(
                ErrorCode::HeaderTooLarge,
                "trailer over the header cap",
            ));
        }
        let mut end = Vec::with_capacity(8 + trailer.len());
        end.extend_from_slice(&0u32.to_le_bytes());
        end.extend_from_slice(&(trailer.len() as u32).to_le_bytes());
        end.extend_from_slice(trailer);
        let peer = self.peer.clone();
        self.stream()?
            .write_all(&end)
            .await
            .map_err(|err| write_error(&peer, &err))?;
        if let Some(mut send) = self.send.take() {
            send.finish()
                .map_err(|err| Error::internal(format!("finish stream to {}: {err}", self.peer)))?;
        }
        Ok(())
    }

    /// Ends the stream once every declared byte was sent.
    pub fn finish(&mut self) -> Result<(), Error> {
        if self.is_framed() {
            return Err(Error::internal("framed bulk ends with finish_with_trailer"));
        }
        if self.remaining != 0 {
            return Err(Error::new(
                ErrorCode::LengthMismatch,
                format!("{} declared bulk bytes were never sent", self.remaining),
            ));
        }
        if let Some(mut send) = self.send.take() {
            send.finish()
                .map_err(|err| Error::internal(format!("finish stream to {}: {err}", self.peer)))?;
        }
        Ok(())
    }

    /// Aborts the stream with `code`.
    pub(crate) fn reset(&mut self, code: u32) {
        if let Some(mut send) = self.send.take() {
            let _ = send.reset(code.into());
        }
    }
}

impl Drop for BulkWriter {
    fn drop(&mut self) {
        self.reset(super::reset_code::CANCELLED);
    }
}
