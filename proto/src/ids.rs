//! Typed identifiers. Each id is its own type so an inode number can never be
//! passed where a chunk id is expected; all are plain integers on the wire.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:x}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(self, f)
            }
        }
    };
}

id_type!(
    /// A POSIX inode number; the root directory is [`InodeId::ROOT`].
    InodeId(u64),
    "ino:"
);
id_type!(
    /// A cluster-unique chunk id, allocated by the metaserver and never reused.
    ChunkId(u64),
    "chunk:"
);
id_type!(
    /// A node (metaserver or chunkserver) in the cluster.
    NodeId(u64),
    "node:"
);
id_type!(
    /// Identifies one logical client operation across retries, so a retried
    /// mutation is applied at most once.
    RequestId(u128),
    "req:"
);

impl InodeId {
    /// The root directory, as on every POSIX filesystem that reserves 1.
    pub const ROOT: InodeId = InodeId(1);
}

impl RequestId {
    /// A fresh id: the wall clock's milliseconds in the top 48 bits, then
    /// 80 random bits, which keep collisions across clients negligible
    /// without coordination. Ids in time order make the metaserver's reply
    /// records (keyed by id, forgotten by age) arrive at one end of its
    /// key space and leave from the other, instead of being scattered over
    /// the whole store and rewritten by every compaction until they expire.
    pub fn fresh() -> RequestId {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let random: u128 = rand::random::<u128>() >> 48;
        RequestId(((ms & 0xffff_ffff_ffff) << 80) | random)
    }
}

/// A piece of a chunk stored on one chunkserver: one replica of the whole
/// chunk under replication, or one shard column under erasure coding. The
/// index is the piece's position in the chunk's placement, for replicas too,
/// so every piece of a chunk has its own id and deletions name exactly one.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PieceId {
    pub chunk: ChunkId,
    pub index: u8,
}

impl fmt::Display for PieceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.chunk, self.index)
    }
}

impl fmt::Debug for PieceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_display_with_their_kind() {
        assert_eq!(InodeId::ROOT.to_string(), "ino:1");
        assert_eq!(ChunkId(255).to_string(), "chunk:ff");
        assert_eq!(
            PieceId {
                chunk: ChunkId(16),
                index: 3
            }
            .to_string(),
            "chunk:10/3"
        );
        assert_ne!(RequestId::fresh(), RequestId::fresh());
    }
}
