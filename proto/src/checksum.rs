//! Piece checksums, shared by writers (clients) and the chunkserver so both
//! compute the same value without either hashing the data twice.
//!
//! A piece is cut into blocks of [`BLOCK_BYTES`]; each block has its own
//! BLAKE3 hash (stored beside the data and checked on every read), and the
//! piece checksum is the BLAKE3 hash of the concatenated block hashes. The
//! chunkserver therefore verifies a whole piece from the block hashes it
//! computes anyway, and a reader can verify any block alone, or any range
//! of [`RANGE_UNIT_BYTES`] within one given the chaining values of BLAKE3's
//! tree around it ([`range_proof`]).

use blake3::hazmat;

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

/// The piece checksum of a stored table of block hashes (the hashes one
/// after another, as a piece file keeps them).
pub fn piece_checksum_of_table(table: &[u8]) -> [u8; HASH_BYTES] {
    *blake3::hash(table).as_bytes()
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

/// Alignment of a block range that can be checked without the rest of its
/// block: BLAKE3's chunk, the leaf of its hash tree.
pub const RANGE_UNIT_BYTES: usize = 1024;

/// Whether `[from, to)` of a block of `block_len` bytes can be proven alone:
/// non-empty, starting on a [`RANGE_UNIT_BYTES`] boundary and ending on one
/// or at the block's end.
pub fn range_is_provable(block_len: usize, from: usize, to: usize) -> bool {
    from < to
        && to <= block_len
        && block_len <= BLOCK_BYTES
        && from.is_multiple_of(RANGE_UNIT_BYTES)
        && (to.is_multiple_of(RANGE_UNIT_BYTES) || to == block_len)
}

/// Walks a block's BLAKE3 tree down to the subtrees that lie wholly inside
/// or wholly outside `[from, to)`, taking the chaining value of each from
/// `inside` or `outside`, and returns the root hash; `None` when either
/// gives none. The order the walk visits subtrees in (left to right) is the
/// order of a proof's values.
fn walk(
    lo: usize,
    hi: usize,
    (from, to): (usize, usize),
    inside: &mut dyn FnMut(usize, usize) -> ChainingValue,
    outside: &mut dyn FnMut(usize, usize) -> Option<ChainingValue>,
) -> Option<ChainingValue> {
    if from <= lo && hi <= to {
        return Some(inside(lo, hi));
    }
    if hi <= from || to <= lo {
        return outside(lo, hi);
    }
    if hi - lo <= RANGE_UNIT_BYTES {
        // One chunk cut by the range: only whole chunks can be proven.
        return None;
    }
    let split = lo + hazmat::left_subtree_len((hi - lo) as u64) as usize;
    let left = walk(lo, split, (from, to), inside, outside)?;
    let right = walk(split, hi, (from, to), inside, outside)?;
    Some(hazmat::merge_subtrees_non_root(
        &left,
        &right,
        hazmat::Mode::Hash,
    ))
}

/// The root of a block of `block_len` bytes from its two top subtrees.
fn root(
    block_len: usize,
    range: (usize, usize),
    inside: &mut dyn FnMut(usize, usize) -> ChainingValue,
    outside: &mut dyn FnMut(usize, usize) -> Option<ChainingValue>,
) -> Option<[u8; HASH_BYTES]> {
    if block_len <= RANGE_UNIT_BYTES {
        return None;
    }
    let split = hazmat::left_subtree_len(block_len as u64) as usize;
    let left = walk(0, split, range, inside, outside)?;
    let right = walk(split, block_len, range, inside, outside)?;
    Some(*hazmat::merge_subtrees_root(&left, &right, hazmat::Mode::Hash).as_bytes())
}

type ChainingValue = hazmat::ChainingValue;

fn subtree(bytes: &[u8], offset: usize) -> ChainingValue {
    use hazmat::HasherExt;
    blake3::Hasher::new()
        .set_input_offset(offset as u64)
        .update(bytes)
        .finalize_non_root()
}

/// What proves `block[from..to]` against the block's hash without the rest
/// of the block: the chaining values of the subtrees of the block's BLAKE3
/// tree that lie outside the range (at most two per level, so at most 12
/// for a 64 KiB block). A server sends these with a small read so the
/// reader checks the bytes end to end while the rest of the block stays on
/// the server. `None` when the range cannot be proven alone (see
/// [`range_is_provable`]) or covers the whole block (its hash is the proof).
pub fn range_proof(block: &[u8], from: usize, to: usize) -> Option<Vec<[u8; HASH_BYTES]>> {
    if !range_is_provable(block.len(), from, to) || (from == 0 && to == block.len()) {
        return None;
    }
    let mut proof = Vec::new();
    root(
        block.len(),
        (from, to),
        &mut |_, _| [0; HASH_BYTES],
        &mut |lo, hi| {
            let cv = subtree(&block[lo..hi], lo);
            proof.push(cv);
            Some(cv)
        },
    )?;
    Some(proof)
}

/// Whether `data` is bytes `[from, from + data.len())` of the block of
/// `block_len` bytes whose hash is `expected`, given the range's `proof`
/// (see [`range_proof`]). A whole block needs no proof. Never panics on a
/// proof of the wrong length or a range that cannot be proven: the answer
/// is then `false`.
pub fn range_matches(
    data: &[u8],
    from: usize,
    block_len: usize,
    proof: &[[u8; HASH_BYTES]],
    expected: &[u8; HASH_BYTES],
) -> bool {
    let to = from.saturating_add(data.len());
    if !range_is_provable(block_len, from, to) {
        return false;
    }
    if from == 0 && to == block_len {
        return proof.is_empty() && blake3::hash(data).as_bytes() == expected;
    }
    let mut given = proof.iter();
    let computed = root(
        block_len,
        (from, to),
        &mut |lo, hi| subtree(&data[lo - from..hi - from], lo),
        &mut |_, _| given.next().copied(),
    );
    given.next().is_none() && computed.as_ref() == Some(expected)
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

    proptest! {
        #[test]
        fn a_proven_range_matches_and_a_flipped_byte_anywhere_in_the_block_does_not(
            block_len in 1usize..=BLOCK_BYTES,
            a in 0usize..64,
            b in 0usize..64,
            flip in 0usize..BLOCK_BYTES,
        ) {
            let block: Vec<u8> = (0..block_len).map(|i| (i * 31 % 251) as u8).collect();
            let hash = *blake3::hash(&block).as_bytes();
            let units = block_len.div_ceil(RANGE_UNIT_BYTES);
            let (a, b) = (a % units, b % units);
            let from = a.min(b) * RANGE_UNIT_BYTES;
            let to = ((a.max(b) + 1) * RANGE_UNIT_BYTES).min(block_len);
            let whole = from == 0 && to == block_len;
            let proof = range_proof(&block, from, to).unwrap_or_default();
            prop_assert_eq!(proof.is_empty(), whole);
            prop_assert!(proof.len() <= 12);
            prop_assert!(range_matches(&block[from..to], from, block_len, &proof, &hash));
            // A byte changed inside the range, or outside it before the
            // proof was made, fails the check.
            let flip = flip % block_len;
            let mut bad = block.clone();
            bad[flip] ^= 0x40;
            let bad_proof = range_proof(&bad, from, to).unwrap_or_default();
            prop_assert!(!range_matches(&bad[from..to], from, block_len, &bad_proof, &hash));
            // A proof cut short, padded or from another range fails.
            if !whole {
                prop_assert!(!range_matches(&block[from..to], from, block_len, &proof[1..], &hash));
                let mut longer = proof.clone();
                longer.push([0; HASH_BYTES]);
                prop_assert!(!range_matches(&block[from..to], from, block_len, &longer, &hash));
            }
        }
    }

    #[test]
    fn ranges_that_cannot_be_proven_are_refused_without_panicking() {
        let block = vec![7u8; BLOCK_BYTES];
        let hash = *blake3::hash(&block).as_bytes();
        assert!(range_proof(&block, 100, 4096).is_none());
        assert!(range_proof(&block, 4096, 4096).is_none());
        assert!(range_proof(&block, 0, BLOCK_BYTES + 1024).is_none());
        assert!(!range_matches(
            &block[100..4096],
            100,
            BLOCK_BYTES,
            &[],
            &hash
        ));
        assert!(!range_matches(&block[..0], 0, BLOCK_BYTES, &[], &hash));
        assert!(!range_matches(
            &block[..1024],
            0,
            2 * BLOCK_BYTES,
            &[],
            &hash
        ));
        let short = vec![7u8; 700];
        assert!(
            range_proof(&short, 0, 512).is_none(),
            "one unit is proven only whole"
        );
    }
}
