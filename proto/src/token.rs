//! Capability tokens: the metaserver's signed permission to touch one chunk.
//!
//! A token is a keyed BLAKE3 MAC over (chunk id, rights, expiry) under the
//! cluster's token key, which only metaservers and chunkservers hold. Knowing a
//! chunk id is therefore not enough to read or write it. Invariant: a
//! chunkserver serves no piece without a token that verifies for that chunk
//! and right; comparison is constant-time (`blake3::Hash`'s `Eq`).

use crate::error::{Error, ErrorCode};
use crate::ids::ChunkId;
use crate::limits::TOKEN_CLOCK_SKEW_MS;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Rights a token grants, as bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rights(pub u8);

impl Rights {
    pub const READ: Rights = Rights(0b001);
    pub const WRITE: Rights = Rights(0b010);
    pub const DELETE: Rights = Rights(0b100);

    pub fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }
}

impl std::fmt::Debug for Rights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (Rights::READ, "r"),
            (Rights::WRITE, "w"),
            (Rights::DELETE, "d"),
        ];
        for (right, name) in names {
            if self.contains(right) {
                f.write_str(name)?;
            }
        }
        Ok(())
    }
}

/// What a token permits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    pub chunk: ChunkId,
    pub rights: Rights,
    /// Milliseconds since the Unix epoch after which the token is void.
    pub expires_at_ms: u64,
}

/// A capability with its MAC, as carried in requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub capability: Capability,
    pub mac: [u8; 32],
}

/// The cluster secret that signs tokens.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

const TOKEN_DOMAIN: &[u8] = b"tessera capability token v1";

impl TokenKey {
    pub fn generate() -> TokenKey {
        TokenKey(rand::random())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> TokenKey {
        TokenKey(bytes)
    }

    /// Loads a key written by [`TokenKey::write`]: 64 hex digits.
    pub fn load(path: &Path) -> Result<TokenKey, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| Error::io(&format!("read token key {}", path.display()), &err))?;
        let text = text.trim();
        let invalid = || {
            Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "token key {} must hold 64 hex digits; recreate it with `tessera ca init`",
                    path.display()
                ),
            )
        };
        if text.len() != 64 || !text.is_ascii() {
            return Err(invalid());
        }
        let mut key = [0u8; 32];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
        }
        Ok(TokenKey(key))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, capability: &Capability) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(TOKEN_DOMAIN);
        hasher.update(&capability.chunk.0.to_le_bytes());
        hasher.update(&[capability.rights.0]);
        hasher.update(&capability.expires_at_ms.to_le_bytes());
        hasher.finalize()
    }

    pub fn mint(&self, capability: Capability) -> Token {
        Token {
            capability,
            mac: *self.mac(&capability).as_bytes(),
        }
    }

    /// Checks that `token` is genuine, names `chunk`, grants `needed`, and has
    /// not expired at `now_ms` (with [`TOKEN_CLOCK_SKEW_MS`] of tolerance for
    /// clocks that disagree between metaserver and chunkserver).
    pub fn verify(
        &self,
        token: &Token,
        chunk: ChunkId,
        needed: Rights,
        now_ms: u64,
    ) -> Result<(), Error> {
        let expected = self.mac(&token.capability);
        // blake3::Hash compares in constant time.
        if expected != blake3::Hash::from_bytes(token.mac) {
            return Err(Error::new(
                ErrorCode::TokenInvalid,
                format!("capability token for {chunk} failed verification"),
            ));
        }
        let capability = &token.capability;
        if capability.chunk != chunk {
            return Err(Error::new(
                ErrorCode::TokenRights,
                format!("token is for {}, not {chunk}", capability.chunk),
            ));
        }
        if !capability.rights.contains(needed) {
            return Err(Error::new(
                ErrorCode::TokenRights,
                format!(
                    "token grants {:?} on {chunk}, the call needs {needed:?}",
                    capability.rights
                ),
            ));
        }
        if now_ms > capability.expires_at_ms.saturating_add(TOKEN_CLOCK_SKEW_MS) {
            return Err(Error::new(
                ErrorCode::TokenExpired,
                format!(
                    "token for {chunk} expired {} ms ago",
                    now_ms - capability.expires_at_ms
                ),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// Milliseconds since the Unix epoch, for token expiry. Shells call this;
/// cores take `now` as an argument.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The wall clock in nanoseconds since the Unix epoch, as attributes and
/// commands carry it (0 before 1970, which no real clock reads).
pub fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn token(key: &TokenKey) -> Token {
        key.mint(Capability {
            chunk: ChunkId(42),
            rights: Rights::READ.union(Rights::WRITE),
            expires_at_ms: NOW + 60_000,
        })
    }

    #[test]
    fn a_genuine_token_verifies() {
        let key = TokenKey::generate();
        let token = token(&key);
        key.verify(&token, ChunkId(42), Rights::READ, NOW).unwrap();
        key.verify(&token, ChunkId(42), Rights::WRITE, NOW).unwrap();
    }

    #[test]
    fn refusals_name_their_reason() {
        let key = TokenKey::generate();
        let good = token(&key);
        let code = |t: &Token, chunk: u64, rights: Rights, now: u64| {
            key.verify(t, ChunkId(chunk), rights, now).unwrap_err().code
        };

        let forged = token(&TokenKey::generate());
        assert_eq!(
            code(&forged, 42, Rights::READ, NOW),
            ErrorCode::TokenInvalid
        );

        let mut altered = good;
        altered.capability.rights = Rights(0b111);
        assert_eq!(
            code(&altered, 42, Rights::DELETE, NOW),
            ErrorCode::TokenInvalid
        );
        let mut extended = good;
        extended.capability.expires_at_ms += 1;
        assert_eq!(
            code(&extended, 42, Rights::READ, NOW),
            ErrorCode::TokenInvalid
        );
        let mut flipped = good;
        flipped.mac[31] ^= 1;
        assert_eq!(
            code(&flipped, 42, Rights::READ, NOW),
            ErrorCode::TokenInvalid
        );

        assert_eq!(code(&good, 43, Rights::READ, NOW), ErrorCode::TokenRights);
        assert_eq!(code(&good, 42, Rights::DELETE, NOW), ErrorCode::TokenRights);

        let expiry = good.capability.expires_at_ms;
        key.verify(
            &good,
            ChunkId(42),
            Rights::READ,
            expiry + TOKEN_CLOCK_SKEW_MS,
        )
        .unwrap();
        assert_eq!(
            code(&good, 42, Rights::READ, expiry + TOKEN_CLOCK_SKEW_MS + 1),
            ErrorCode::TokenExpired
        );
    }

    #[test]
    fn keys_round_trip_through_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token.key");
        let key = TokenKey::generate();
        std::fs::write(&path, key.to_hex()).unwrap();
        let loaded = TokenKey::load(&path).unwrap();
        assert_eq!(loaded.to_hex(), key.to_hex());
        std::fs::write(&path, "zz").unwrap();
        assert_eq!(
            TokenKey::load(&path).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
    }
}
