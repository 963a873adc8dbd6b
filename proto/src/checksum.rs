//! Piece checksums, shared by writers (clients) and the chunkserver so both
//! compute the same value without either hashing the data twice.
//!
//! A piece is cut into blocks of [`BLOCK_BYTES`]; each block has its own
//! BLAKE3 hash (stored beside the data and checked on every read), and the
//! piece checksum is the BLAKE3 hash of the concatenated block hashes. The
//! chunkserver therefore verifies a whole piece from the block hashes it
//! computes anyway, and a reader can verify any block alone.

/// Checksum block size. 64 KiB keeps the checksum table at 1/2048 of the data
/// (32 KiB for a 64 MiB piece) while a small read verifies at most two
/// blocks. Part of the on-disk and wire format: changing it is a format
/// change.
pub const BLOCK_BYTES: usize = 64 * 1024;

/// Length of one block hash.
pub const HASH_BYTES: usize = 32;

/// Number of blocks a piece of `len` bytes has.
pub fn block_count(len: u64) -> u64 {
    len.div_ceil(BLOCK_BYTES as u64)
}

/// The piece checksum of a sequence of block hashes.
pub fn piece_checksum(block_hashes: &[[u8; HASH_BYTES]]) -> [u8; HASH_BYTES] {
    let mut hasher = blake3::Hasher::new();
    for hash in block_hashes {
        hasher.update(hash);
    }
    *hasher.finalize().as_bytes()
}

/// Hashes a stream of bytes block by block.
#[derive(Default)]
pub struct PieceHasher {
    partial: Vec<u8>,
    block_hashes: Vec<[u8; HASH_BYTES]>,
    total_bytes: u64,
}

impl PieceHasher {
    pub fn new() -> PieceHasher {
        PieceHasher::default()
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.total_bytes += data.len() as u64;
        if !self.partial.is_empty() {
            let take = (BLOCK_BYTES - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == BLOCK_BYTES {
                self.block_hashes
                    .push(*blake3::hash(&self.partial).as_bytes());
                self.partial.clear();
            }
        }
        let mut blocks = data.chunks_exact(BLOCK_BYTES);
        for block in &mut blocks {
            self.block_hashes.push(*blake3::hash(block).as_bytes());
        }
        self.partial.extend_from_slice(blocks.remainder());
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// The block hashes and the piece checksum.
    pub fn finish(mut self) -> (Vec<[u8; HASH_BYTES]>, [u8; HASH_BYTES]) {
        if !self.partial.is_empty() {
            self.block_hashes
                .push(*blake3::hash(&self.partial).as_bytes());
        }
        let checksum = piece_checksum(&self.block_hashes);
        (self.block_hashes, checksum)
    }
}

/// The piece checksum of bytes held in memory.
pub fn checksum_of(data: &[u8]) -> [u8; HASH_BYTES] {
    let mut hasher = PieceHasher::new();
    hasher.update(data);
    hasher.finish().1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn any_split_gives_the_same_checksum(len in 0usize..300_000, cuts in proptest::collection::vec(0usize..300_000, 0..6)) {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            let whole = checksum_of(&data);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(len)).collect();
            cuts.sort();
            let mut hasher = PieceHasher::new();
            let mut at = 0;
            for cut in cuts {
                hasher.update(&data[at..cut]);
                at = cut;
            }
            hasher.update(&data[at..]);
            prop_assert_eq!(hasher.total_bytes(), len as u64);
            let (blocks, checksum) = hasher.finish();
            prop_assert_eq!(blocks.len() as u64, block_count(len as u64));
            prop_assert_eq!(checksum, whole);
        }
    }

    #[test]
    fn a_flipped_byte_changes_the_checksum() {
        let mut data = vec![1u8; BLOCK_BYTES * 3 + 5];
        let before = checksum_of(&data);
        data[BLOCK_BYTES + 9] ^= 1;
        assert_ne!(checksum_of(&data), before);
    }
}
