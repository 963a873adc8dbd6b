//! Names the S3 gateway and the metaserver agree on for object versions
//! (docs/s3.md, Versions): the gateway keeps versions when S3 replaces or
//! deletes an object, the metaserver when the mount opens one for writing.

/// The version store's directory at the top of a bucket (not UTF-8, so
/// never a key).
pub const STORE_DIR: &[u8] = b"\xFFversions";
/// First byte of a version's file name in the store, before its id.
pub const VERSION_BYTE: u8 = 0xFF;
/// On a bucket's directory: `Enabled` or `Suspended`.
pub const XATTR_VERSIONING: &str = "user.s3.versioning";
/// On an object's file: its version id (absent: `null`).
pub const XATTR_VERSION_ID: &str = "user.s3.version-id";
pub const NULL: &str = "null";

/// A fresh version id: 16 hex digits that fall as time goes on, so ids
/// sort newest first, then 16 random ones.
pub fn new_version_id() -> String {
    let now = u64::try_from(crate::token::unix_now_ns()).unwrap_or(0);
    format!("{:016x}{:016x}", u64::MAX - now, rand::random::<u64>())
}

/// Whether `id` is a version id: `null` or one [`new_version_id`] makes.
pub fn is_version_id(id: &str) -> bool {
    id == NULL || (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A version's file name in the store.
pub fn file_name(id: &str) -> Vec<u8> {
    let mut name = vec![VERSION_BYTE];
    name.extend_from_slice(id.as_bytes());
    name
}
