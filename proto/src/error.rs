//! The one error type that crosses process boundaries.
//!
//! Each [`ErrorCode`] has a stable number on the wire: numbers are never
//! reused or renumbered, new codes only get new numbers. The message is for
//! people; programs branch on the code alone.

use crate::limits::ERROR_MESSAGE_MAX_BYTES;
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $num:literal, $errno:expr, $text:literal; )*) => {
        /// Stable numeric error codes. See the module docs for the numbering rule.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[repr(u16)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $num, )*
        }

        impl ErrorCode {
            /// Every code, for exhaustive tests and documentation.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The code for a wire number, or `None` for a number this build
            /// does not know (a newer peer).
            pub fn from_u16(code: u16) -> Option<ErrorCode> {
                match code {
                    $( $num => Some(ErrorCode::$name), )*
                    _ => None,
                }
            }

            /// The Linux errno a file system front end reports for this code.
            pub fn errno(self) -> i32 {
                match self {
                    $( ErrorCode::$name => $errno, )*
                }
            }

            /// A short description of what the code means.
            pub fn describe(self) -> &'static str {
                match self {
                    $( ErrorCode::$name => $text, )*
                }
            }
        }
    };
}

/// Linux errno values, so this crate needs no libc binding.
pub mod errno {
    pub const EPERM: i32 = 1;
    pub const EINTR: i32 = 4;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const E2BIG: i32 = 7;
    pub const EAGAIN: i32 = 11;
    pub const EACCES: i32 = 13;
    pub const EBUSY: i32 = 16;
    pub const EEXIST: i32 = 17;
    pub const EXDEV: i32 = 18;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const EMLINK: i32 = 31;
    pub const ERANGE: i32 = 34;
    pub const EDEADLK: i32 = 35;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOSYS: i32 = 38;
    pub const ENOTEMPTY: i32 = 39;
    pub const ELOOP: i32 = 40;
    pub const ENODATA: i32 = 61;
    pub const EPROTO: i32 = 71;
    pub const EBADMSG: i32 = 74;
    pub const EOVERFLOW: i32 = 75;
    pub const ENOTSUP: i32 = 95;
    pub const ECONNABORTED: i32 = 103;
    pub const ETIMEDOUT: i32 = 110;
    pub const EHOSTUNREACH: i32 = 113;
    pub const ECANCELED: i32 = 125;
}

use errno::*;

error_codes! {
    // 1..99: the frame or the protocol itself.
    /// The header could not be decoded.
    Malformed = 1, EPROTO, "malformed message";
    /// The header is larger than the protocol allows.
    HeaderTooLarge = 2, EPROTO, "header exceeds the size cap";
    /// The stream ended before the header or the bulk data was complete.
    Truncated = 3, EPROTO, "stream ended early";
    /// The method number is not served by this endpoint.
    UnknownMethod = 4, ENOSYS, "unknown method";
    /// The peer speaks a protocol version this build does not.
    VersionMismatch = 5, EPROTO, "protocol version mismatch";
    /// More or fewer bulk bytes arrived than the header declared.
    LengthMismatch = 6, EPROTO, "bulk length differs from the declared length";

    // 100..199: identity and rights.
    /// The peer presented no certificate, or one the cluster CA did not sign.
    Unauthenticated = 100, EACCES, "peer is not authenticated";
    /// The peer's certificate role may not make this call.
    WrongRole = 101, EACCES, "peer role not allowed";
    /// The capability token is missing, forged or altered.
    TokenInvalid = 102, EACCES, "capability token invalid";
    /// The capability token expired.
    TokenExpired = 103, EACCES, "capability token expired";
    /// The capability token does not grant this right or this chunk.
    TokenRights = 104, EACCES, "capability token does not grant this access";
    /// The client's session expired or was evicted: what it held is gone,
    /// and it must open a new session before acting again.
    SessionExpired = 105, EIO, "session expired";

    // 200..299: availability; callers may retry idempotent calls.
    /// The call's deadline passed; its outcome is unknown.
    Timeout = 200, ETIMEDOUT, "deadline exceeded";
    /// The peer cannot be reached or is not serving.
    Unavailable = 201, EHOSTUNREACH, "peer unavailable";
    /// This metaserver is not the Raft leader; see the redirect.
    NotLeader = 202, EAGAIN, "not the leader";
    /// The caller gave up on the call.
    Cancelled = 203, ECANCELED, "call cancelled";
    /// The server is shutting down and takes no new calls.
    ShuttingDown = 204, EAGAIN, "server shutting down";
    /// The server is overloaded; retry later.
    Overloaded = 205, EAGAIN, "server overloaded";

    // 300..399: data.
    /// The object (piece, inode, key, node) does not exist.
    NotFound = 300, ENOENT, "not found";
    /// The object already exists and may not be replaced.
    AlreadyExists = 301, EEXIST, "already exists";
    /// Stored data failed its checksum; it was quarantined.
    Corrupt = 302, EIO, "stored data is corrupt";
    /// Data sent does not match its declared checksum.
    ChecksumMismatch = 303, EBADMSG, "checksum mismatch";
    /// Not enough space left.
    NoSpace = 304, ENOSPC, "no space left";
    /// An offset or length lies outside the object.
    OutOfRange = 305, EOVERFLOW, "out of range";
    /// A local I/O operation failed.
    Io = 306, EIO, "I/O error";
    /// An argument is invalid.
    InvalidArgument = 307, EINVAL, "invalid argument";
    /// The operation is not supported.
    NotSupported = 308, ENOTSUP, "not supported";
    /// The file system is read-only.
    ReadOnly = 309, EROFS, "read-only";

    // 400..499: namespace errors with their POSIX meaning.
    /// A path component is not a directory.
    NotDir = 400, ENOTDIR, "not a directory";
    /// The target is a directory.
    IsDir = 401, EISDIR, "is a directory";
    /// The directory is not empty.
    NotEmpty = 402, ENOTEMPTY, "directory not empty";
    /// A name is longer than the limit.
    NameTooLong = 403, ENAMETOOLONG, "name too long";
    /// Permission bits deny the access.
    PermissionDenied = 404, EACCES, "permission denied";
    /// The operation is not permitted for this caller.
    NotPermitted = 405, EPERM, "operation not permitted";
    /// The operation would cross file systems.
    CrossDevice = 406, EXDEV, "cross-device link";
    /// The operation would create a loop (a directory moved into itself).
    Loop = 407, ELOOP, "loop detected";
    /// The extended attribute does not exist.
    NoAttr = 408, ENODATA, "no such attribute";
    /// A buffer or value is too small or too large for the result.
    Range = 409, ERANGE, "result out of range";
    /// An argument list or value is too big.
    TooBig = 410, E2BIG, "argument too big";
    /// The file would exceed the maximum file size.
    FileTooLarge = 411, EFBIG, "file too large";
    /// Too many hard links.
    TooManyLinks = 412, EMLINK, "too many links";
    /// The object is in use.
    Busy = 413, EBUSY, "resource busy";
    /// Another owner holds a conflicting lock.
    Locked = 414, EAGAIN, "lock held by another owner";
    /// Waiting for the lock would close a cycle of owners waiting on each
    /// other.
    Deadlock = 415, EDEADLK, "lock wait would deadlock";
    /// The wait was ended by a signal before the lock was granted.
    Interrupted = 416, EINTR, "interrupted";
    /// The file keeps its bytes in chunks, so an inline write does not
    /// apply; the writer uses chunks instead.
    NotInline = 417, EINVAL, "file bytes are in chunks, not inline";

    // 900..: the server's own fault.
    /// A bug or an unexpected state on the server; a human should look.
    Internal = 900, EIO, "internal error";
}

impl ErrorCode {
    /// Whether an idempotent call that failed with this code may be retried.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Timeout
                | ErrorCode::Unavailable
                | ErrorCode::NotLeader
                | ErrorCode::ShuttingDown
                | ErrorCode::Overloaded
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// An error as it travels between processes: a stable code, a message for
/// people, and for [`ErrorCode::NotLeader`] the address of the leader if known.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub redirect: Option<String>,
}

/// Results of calls that cross process boundaries.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        let mut message = message.into();
        truncate_utf8(&mut message, ERROR_MESSAGE_MAX_BYTES);
        Error {
            code,
            message,
            redirect: None,
        }
    }

    pub fn not_leader(leader: Option<String>) -> Error {
        Error {
            code: ErrorCode::NotLeader,
            message: match &leader {
                Some(addr) => format!("not the leader; the leader is at {addr}"),
                None => "not the leader; no leader is known yet".to_string(),
            },
            redirect: leader,
        }
    }

    pub fn io(context: &str, err: &std::io::Error) -> Error {
        let code = match err.kind() {
            std::io::ErrorKind::StorageFull => ErrorCode::NoSpace,
            std::io::ErrorKind::NotFound => ErrorCode::NotFound,
            std::io::ErrorKind::AlreadyExists => ErrorCode::AlreadyExists,
            _ => ErrorCode::Io,
        };
        Error::new(code, format!("{context}: {err}"))
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(ErrorCode::Internal, message)
    }

    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }
}

fn truncate_utf8(text: &mut String, max_bytes: usize) {
    if text.len() <= max_bytes {
        return;
    }
    let mut cut = max_bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.is_empty() {
            write!(f, "{} (code {})", self.code, self.code as u16)
        } else {
            write!(
                f,
                "{} (code {}: {})",
                self.message, self.code as u16, self.code
            )
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code as u16), "duplicate number for {code:?}");
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
            assert!(code.errno() > 0);
            assert!(!code.describe().is_empty());
        }
        assert_eq!(ErrorCode::from_u16(65535), None);
    }

    #[test]
    fn wire_numbers_are_stable() {
        // These numbers are part of the protocol; changing one breaks old peers.
        assert_eq!(ErrorCode::Malformed as u16, 1);
        assert_eq!(ErrorCode::Unauthenticated as u16, 100);
        assert_eq!(ErrorCode::Timeout as u16, 200);
        assert_eq!(ErrorCode::NotFound as u16, 300);
        assert_eq!(ErrorCode::NotDir as u16, 400);
        assert_eq!(ErrorCode::Internal as u16, 900);
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let err = Error::new(ErrorCode::Io, "é".repeat(ERROR_MESSAGE_MAX_BYTES));
        assert!(err.message.len() <= ERROR_MESSAGE_MAX_BYTES);
        assert!(err.message.chars().all(|c| c == 'é'));
    }

    #[test]
    fn io_errors_keep_their_meaning() {
        let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(Error::io("write piece", &full).code, ErrorCode::NoSpace);
        let missing = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(Error::io("open", &missing).code, ErrorCode::NotFound);
    }
}
