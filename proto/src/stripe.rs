//! Where a chunk's bytes sit in its pieces under `ec(k, m)`: the layout every
//! writer, reader and repair worker must agree on. It is part of the stored
//! format; docs/erasure-coding.md explains the choices.
//!
//! A chunk of `L` bytes is cut into stripes of `k` cells. Full stripes use
//! cells of [`CELL_BYTES`]; data shard `i` of stripe `j` is chunk bytes
//! `[j*k*CELL + i*CELL, +CELL)` and sits at `j*CELL` in piece `i`, so each
//! piece is the concatenation of its cells and a run of stripes is one
//! contiguous range in every piece. A short last stripe of `r` bytes uses
//! cells of `ceil(r / k)` bytes instead, so a small file costs at most
//! `k - 1` bytes of padding in its parity and none in its data: the data
//! cells of the last stripe are stored unpadded (a missing tail reads as
//! zeros when coding), and parity cells have the last stripe's cell size.

/// Cell size of full stripes. A multiple of the checksum block, so a cell
/// is whole blocks and a reader of one cell verifies nothing it did not ask
/// for.
pub const CELL_BYTES: u64 = 256 * 1024;

/// The coding geometry of an `ec(k, m)` chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub data: usize,
    pub parity: usize,
}

/// One stripe of a chunk: where it starts in the chunk, its cell size, and
/// where its cells start in each piece.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stripe {
    pub index: u64,
    pub chunk_offset: u64,
    /// Chunk bytes the stripe holds (`k * cell` but for a short last stripe).
    pub data_bytes: u64,
    pub cell: u64,
    pub piece_offset: u64,
}

impl Stripe {
    /// Chunk bytes `[start, end)` of data cell `shard`, clipped to the data
    /// the stripe holds; empty for cells wholly past the end.
    pub fn cell_range(&self, shard: usize) -> (u64, u64) {
        let start = (shard as u64 * self.cell).min(self.data_bytes);
        let end = ((shard as u64 + 1) * self.cell).min(self.data_bytes);
        (self.chunk_offset + start, self.chunk_offset + end)
    }
}

impl Geometry {
    pub fn new(data: usize, parity: usize) -> Geometry {
        Geometry { data, parity }
    }

    pub fn width(&self) -> usize {
        self.data + self.parity
    }

    /// Data bytes of one full stripe.
    pub fn stripe_bytes(&self) -> u64 {
        CELL_BYTES * self.data as u64
    }

    /// Stripes of a chunk of `len` bytes.
    pub fn stripe_count(&self, len: u64) -> u64 {
        len.div_ceil(self.stripe_bytes())
    }

    /// Stripe `index` of a chunk of `len` bytes.
    pub fn stripe(&self, len: u64, index: u64) -> Stripe {
        let full = len / self.stripe_bytes();
        let chunk_offset = index * self.stripe_bytes();
        let (data_bytes, cell) = if index < full {
            (self.stripe_bytes(), CELL_BYTES)
        } else {
            let rest = len.saturating_sub(chunk_offset);
            (rest, rest.div_ceil(self.data as u64))
        };
        Stripe {
            index,
            chunk_offset,
            data_bytes,
            cell,
            piece_offset: index * CELL_BYTES,
        }
    }

    /// The stripe holding chunk byte `offset` of a chunk of `len` bytes.
    pub fn stripe_at(&self, len: u64, offset: u64) -> Stripe {
        self.stripe(len, offset / self.stripe_bytes())
    }

    /// Length of piece `index` (data shards first, then parity) of a chunk
    /// of `len` bytes.
    pub fn piece_len(&self, len: u64, index: usize) -> u64 {
        let full = len / self.stripe_bytes();
        let last = self.stripe(len, full);
        let tail = if index < self.data {
            let (start, end) = last.cell_range(index);
            end - start
        } else {
            last.cell
        };
        full * CELL_BYTES + tail
    }

    /// Where chunk byte `offset` lives: (piece index, offset in that piece).
    pub fn locate(&self, len: u64, offset: u64) -> (usize, u64) {
        let stripe = self.stripe_at(len, offset);
        let within = offset - stripe.chunk_offset;
        let shard = (within / stripe.cell) as usize;
        (shard, stripe.piece_offset + within % stripe.cell)
    }

    /// The piece range of data shard `shard` that chunk bytes `[start, end)`
    /// touch, as one contiguous `[from, to)` (empty when the shard holds
    /// none of them). Contiguous because a range's middle stripes need
    /// whole cells, its first stripe a suffix and its last a prefix.
    pub fn shard_range(&self, len: u64, start: u64, end: u64, shard: usize) -> (u64, u64) {
        if start >= end {
            return (0, 0);
        }
        let first = self.stripe_at(len, start).index;
        let last = self.stripe_at(len, end - 1).index;
        let mut from = None;
        let mut to = 0;
        for index in [first, last] {
            let stripe = self.stripe(len, index);
            let (cell_start, cell_end) = stripe.cell_range(shard);
            let (lo, hi) = (cell_start.max(start), cell_end.min(end));
            if lo < hi {
                let piece_lo = stripe.piece_offset + (lo - cell_start);
                let piece_hi = stripe.piece_offset + (hi - cell_start);
                from = Some(from.map_or(piece_lo, |f: u64| f.min(piece_lo)));
                to = to.max(piece_hi);
            }
        }
        // A shard untouched in both end stripes is still whole in the middle
        // ones.
        if last > first + 1 {
            let middle_from = (first + 1) * CELL_BYTES;
            let middle_to = last * CELL_BYTES;
            from = Some(from.map_or(middle_from, |f| f.min(middle_from)));
            to = to.max(middle_to);
        }
        match from {
            Some(from) => (from, to),
            None => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Each shard's cells as (offset in piece, chunk start, chunk end),
    /// built from the definition.
    fn model(g: Geometry, len: u64) -> Vec<Vec<(u64, u64, u64)>> {
        let mut pieces = vec![Vec::new(); g.data];
        for index in 0..g.stripe_count(len) {
            let stripe = g.stripe(len, index);
            for (shard, piece) in pieces.iter_mut().enumerate() {
                let (start, end) = stripe.cell_range(shard);
                piece.push((stripe.piece_offset, start, end));
                // Only the last stripe may be short; earlier cells are full.
                if index + 1 < g.stripe_count(len) {
                    assert_eq!(end - start, CELL_BYTES);
                }
            }
        }
        pieces
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn layout_matches_its_definition(
            k in 1usize..7,
            len in prop_oneof![0u64..100, 0u64..(8 * CELL_BYTES * 3)],
            probes in proptest::collection::vec((0u64..u64::MAX, 0u64..u64::MAX), 8),
        ) {
            let g = Geometry::new(k, 2);
            let pieces = model(g, len);
            let total: u64 = (0..k).map(|i| g.piece_len(len, i)).sum();
            prop_assert_eq!(total, len);
            for (shard, cells) in pieces.iter().enumerate() {
                let stored: u64 = cells.iter().map(|(_, s, e)| e - s).sum();
                prop_assert_eq!(stored, g.piece_len(len, shard));
                for &(at, start, end) in cells {
                    if start < end {
                        prop_assert_eq!(g.locate(len, start), (shard, at));
                        prop_assert_eq!(g.locate(len, end - 1), (shard, at + end - start - 1));
                    }
                }
            }
            let last = g.stripe(len, g.stripe_count(len).saturating_sub(1));
            let parity = g.piece_len(len, k);
            prop_assert_eq!(parity, if len == 0 { 0 } else { last.piece_offset + last.cell });
            prop_assert!(parity - g.piece_len(len, 0) < k as u64);
            if len > 0 {
                for (a, b) in probes {
                    let (a, b) = (a % len, b % len);
                    let (start, end) = (a.min(b), a.max(b) + 1);
                    for (shard, cells) in pieces.iter().enumerate() {
                        let mut from = u64::MAX;
                        let mut to = 0;
                        let mut count = 0;
                        for &(at, cell_start, cell_end) in cells {
                            let (lo, hi) = (cell_start.max(start), cell_end.min(end));
                            if lo < hi {
                                from = from.min(at + lo - cell_start);
                                to = to.max(at + hi - cell_start);
                                count += hi - lo;
                            }
                        }
                        let (got_from, got_to) = g.shard_range(len, start, end, shard);
                        if count == 0 {
                            prop_assert_eq!(got_from, got_to);
                        } else {
                            prop_assert_eq!((got_from, got_to), (from, to));
                            prop_assert_eq!(count, to - from, "not contiguous");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_chunk_of_whole_stripes_has_equal_pieces() {
        let g = Geometry::new(4, 2);
        let len = 64 * 1024 * 1024;
        for index in 0..6 {
            assert_eq!(g.piece_len(len, index), len / 4);
        }
        let small = Geometry::new(4, 2);
        assert_eq!(small.piece_len(5, 0), 2);
        assert_eq!(small.piece_len(5, 1), 2);
        assert_eq!(small.piece_len(5, 2), 1);
        assert_eq!(small.piece_len(5, 3), 0);
        assert_eq!(small.piece_len(5, 4), 2);
    }
}
