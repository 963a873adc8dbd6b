//! How S3 names map onto the namespace: bucket names, keys as paths, the
//! extended attributes that carry object metadata, and the small encodings
//! (hex, URL) the protocol needs.

use s3s::{S3Error, S3ErrorCode, S3Result};

/// Longest key S3 allows.
pub const KEY_MAX_BYTES: usize = 1024;
/// Longest path component (one key segment), as on Linux.
pub const SEGMENT_MAX_BYTES: usize = tessera_proto::meta::NAME_MAX_BYTES;

/// Object metadata lives in `user.s3.*` extended attributes, so the mount
/// shows it (`getfattr -d`) and a copy through the mount keeps it.
pub const XATTR_PREFIX: &str = "user.s3.";
pub const XATTR_CONTENT_TYPE: &str = "user.s3.content-type";
pub const XATTR_CONTENT_ENCODING: &str = "user.s3.content-encoding";
pub const XATTR_CONTENT_LANGUAGE: &str = "user.s3.content-language";
pub const XATTR_CACHE_CONTROL: &str = "user.s3.cache-control";
pub const XATTR_CONTENT_DISPOSITION: &str = "user.s3.content-disposition";
/// `x-amz-meta-NAME` is kept as `user.s3.meta.NAME`.
pub const XATTR_USER_META: &str = "user.s3.meta.";
/// The ETag with the modification time and size it was computed for
/// (`ETAG MTIME_NS SIZE`): a file changed through the mount no longer
/// matches, and gets a derived ETag instead of a stale MD5.
pub const XATTR_ETAG: &str = "user.s3.etag";
/// A bucket's canned ACL; only `public-read` changes anything.
pub const XATTR_ACL: &str = "user.s3.acl";
/// What a multipart upload directory is for.
pub const XATTR_UPLOAD_BUCKET: &str = "user.s3.upload.bucket";
pub const XATTR_UPLOAD_KEY: &str = "user.s3.upload.key";
pub const XATTR_UPLOAD_INITIATED: &str = "user.s3.upload.initiated";
/// On an object a multipart upload produced: `UPLOAD_ID ETAG`, so a
/// CompleteMultipartUpload retried after a lost response gets the same
/// answer while the object is still the one that upload made.
pub const XATTR_UPLOAD_COMPLETED: &str = "user.s3.upload.completed";
/// On an object a multipart upload produced: its part sizes
/// (`store::encode_parts`), for GET and HEAD by `partNumber` and
/// `x-amz-mp-parts-count`.
pub const XATTR_PARTS: &str = "user.s3.parts";
/// An object's tags, in the query-string form of `x-amz-tagging`.
pub const XATTR_TAGGING: &str = "user.s3.tagging";
/// On a bucket's directory: its CORS rules (JSON, `crate::cors`).
pub const XATTR_CORS: &str = "user.s3.cors";

pub fn error(code: S3ErrorCode, message: impl Into<String>) -> S3Error {
    S3Error::with_message(code, message.into())
}

/// A key's path components below its bucket. Keys that cannot name a file
/// are refused rather than silently changed: two keys must never land on
/// one path.
/// The directory path of a key ending in `/` (a directory marker, as
/// Hadoop's s3a, the AWS console and most GUI clients make "folders"), or
/// `None` for any other key.
pub fn marker_parts(key: &str) -> Option<S3Result<Vec<Vec<u8>>>> {
    let dir = key.strip_suffix('/')?;
    Some(key_parts(dir))
}

pub fn key_parts(key: &str) -> S3Result<Vec<Vec<u8>>> {
    if key.len() > KEY_MAX_BYTES {
        return Err(error(
            S3ErrorCode::KeyTooLongError,
            format!(
                "the key is {} bytes; keys are at most {KEY_MAX_BYTES}",
                key.len()
            ),
        ));
    }
    if key.is_empty() {
        return Err(error(S3ErrorCode::InvalidArgument, "the key is empty"));
    }
    if key.contains('\0') {
        return Err(error(
            S3ErrorCode::InvalidArgument,
            "the key contains a NUL byte, which no path may hold",
        ));
    }
    let mut parts = Vec::new();
    for segment in key.split('/') {
        match segment {
            "" => {
                return Err(error(
                    S3ErrorCode::InvalidArgument,
                    "the key has an empty segment (a leading, trailing or doubled '/'); keys here are paths, see docs/s3.md",
                ));
            }
            "." | ".." => {
                return Err(error(
                    S3ErrorCode::InvalidArgument,
                    format!(
                        "the key has a {segment:?} segment; keys here are paths, see docs/s3.md"
                    ),
                ));
            }
            _ if segment.len() > SEGMENT_MAX_BYTES => {
                return Err(error(
                    S3ErrorCode::KeyTooLongError,
                    format!(
                        "a key segment of {} bytes; each '/'-separated segment is at most {SEGMENT_MAX_BYTES}",
                        segment.len()
                    ),
                ));
            }
            _ => parts.push(segment.as_bytes().to_vec()),
        }
    }
    Ok(parts)
}

/// S3's bucket naming rules (3 to 63 of `a-z 0-9 . -`, starting and ending
/// with a letter or digit); top-level directories named otherwise are not
/// buckets and stay out of listings.
pub fn is_bucket_name(name: &[u8]) -> bool {
    (3..=63).contains(&name.len())
        && name
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && name[0].is_ascii_alphanumeric()
        && name[name.len() - 1].is_ascii_alphanumeric()
        && !name.windows(2).any(|w| w == b"..")
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `encoding-type=url`: everything but unreserved characters and `/` is
/// percent-encoded (a `+` too, since clients decode `+` as a space).
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for &b in text.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(key: &str) -> String {
        key_parts(key).unwrap_err().code().as_str().to_string()
    }

    #[test]
    fn keys_map_to_paths_or_are_refused() {
        assert_eq!(
            key_parts("a/b/c.txt").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec(), b"c.txt".to_vec()]
        );
        assert_eq!(key_parts("..a/.b/c..").unwrap().len(), 3);
        for bad in [
            "", "/a", "a/", "a//b", "./a", "a/./b", "../a", "a/..", "a\0b",
        ] {
            assert_eq!(code(bad), "InvalidArgument", "{bad:?}");
        }
        assert_eq!(code(&"k".repeat(1025)), "KeyTooLongError");
        assert_eq!(code(&"k".repeat(256)), "KeyTooLongError");
        key_parts(&format!("{}/{}", "k".repeat(255), "k".repeat(255))).unwrap();
    }

    #[test]
    fn bucket_names_follow_s3() {
        for good in ["abc", "my-bucket.2026", "a1b"] {
            assert!(is_bucket_name(good.as_bytes()), "{good}");
        }
        for bad in [
            "ab",
            "Abc",
            "-abc",
            "abc-",
            ".tessera",
            "a..b",
            "a_b",
            &"a".repeat(64),
        ] {
            assert!(!is_bucket_name(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn encodings_round_trip() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(hex(&bytes), "0001abff");
        assert_eq!(unhex("0001abff").unwrap(), bytes);
        assert!(unhex("abc").is_none() && unhex("zz").is_none());
        assert_eq!(url_encode("a b+c/d%é"), "a%20b%2Bc/d%25%C3%A9");
    }
}
