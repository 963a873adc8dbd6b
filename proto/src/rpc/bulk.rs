//! Bulk bytes after a header: counted so that a peer sending more or fewer
//! bytes than it declared is caught, and never copied through the codec.

use super::{read_error, write_error};
use crate::error::{Error, ErrorCode};
use bytes::Bytes;

/// Largest piece handed out by one [`BulkReader::next`] call.
const READ_CHUNK_MAX_BYTES: usize = 1024 * 1024;

/// Reads exactly the declared number of bulk bytes from a stream.
pub struct BulkReader {
    recv: quinn::RecvStream,
    remaining: u64,
    peer: String,
    checked_end: bool,
}

impl BulkReader {
    pub(crate) fn new(recv: quinn::RecvStream, declared: u64, peer: String) -> BulkReader {
        BulkReader {
            recv,
            remaining: declared,
            peer,
            checked_end: false,
        }
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// The next piece of bulk data, or `None` once all declared bytes arrived
    /// and the peer ended the stream. Cancel-safe only between calls.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Error> {
        if self.remaining == 0 {
            self.check_end().await?;
            return Ok(None);
        }
        let max = self.remaining.min(READ_CHUNK_MAX_BYTES as u64) as usize;
        match self.recv.read_chunk(max, true).await {
            Ok(Some(chunk)) => {
                self.remaining -= chunk.bytes.len() as u64;
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
        let mut out = vec![0u8; self.remaining as usize];
        self.read_exact(&mut out).await?;
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
    peer: String,
}

impl BulkWriter {
    pub(crate) fn new(send: quinn::SendStream, declared: u64, peer: String) -> BulkWriter {
        BulkWriter {
            send: Some(send),
            declared,
            remaining: declared,
            peer,
        }
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Bytes handed to the stream so far.
    pub fn sent(&self) -> u64 {
        self.declared - self.remaining
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

    /// Sends bytes; refuses to send more than declared.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        self.claim(data.len())?;
        let peer = self.peer.clone();
        self.stream()?
            .write_all(data)
            .await
            .map_err(|err| write_error(&peer, &err))
    }

    /// Sends an owned buffer without copying it.
    pub async fn write_bytes(&mut self, data: Bytes) -> Result<(), Error> {
        self.claim(data.len())?;
        let peer = self.peer.clone();
        self.stream()?
            .write_chunk(data)
            .await
            .map_err(|err| write_error(&peer, &err))
    }

    /// Ends the stream once every declared byte was sent.
    pub fn finish(&mut self) -> Result<(), Error> {
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
