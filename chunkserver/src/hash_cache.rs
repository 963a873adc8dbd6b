//! Block-hash tables of recently read pieces, kept in memory.
//!
//! A piece's hash table sits after its data, at the far end of the file, so
//! a small read that loaded it from disk paid a second seek for 32 KiB of
//! hashes beside the 64 KiB it was asked for. Sealed pieces never change,
//! so a table loaded once stays true until the piece is deleted or
//! quarantined, when the store drops it here. Each table was checked
//! against the piece checksum when it was loaded, so a cached table is as
//! good as the one on disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tessera_proto::ids::PieceId;

/// Memory the tables may take: 2,048 tables of 64 MiB pieces (32 KiB each),
/// which cover 128 GiB of stored data.
pub const HASH_CACHE_BYTES: usize = 64 << 20;

/// Least recently used tables go first once the budget is spent.
pub struct HashCache {
    budget: usize,
    bytes: usize,
    tick: u64,
    tables: HashMap<PieceId, (Arc<[u8]>, u64)>,
    /// Last use of each table, oldest first.
    order: BTreeMap<u64, PieceId>,
}

impl HashCache {
    pub fn new(budget: usize) -> HashCache {
        HashCache {
            budget,
            bytes: 0,
            tick: 0,
            tables: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    pub fn get(&mut self, piece: PieceId) -> Option<Arc<[u8]>> {
        self.tick += 1;
        let tick = self.tick;
        let (table, used) = self.tables.get_mut(&piece)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, piece);
        Some(table.clone())
    }

    pub fn insert(&mut self, piece: PieceId, table: Arc<[u8]>) {
        if table.len() > self.budget {
            return;
        }
        self.remove(piece);
        self.tick += 1;
        self.bytes += table.len();
        self.tables.insert(piece, (table, self.tick));
        self.order.insert(self.tick, piece);
        while self.bytes > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((table, _)) = self.tables.remove(&oldest) {
                self.bytes -= table.len();
            }
        }
    }

    pub fn remove(&mut self, piece: PieceId) {
        if let Some((table, used)) = self.tables.remove(&piece) {
            self.order.remove(&used);
            self.bytes -= table.len();
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_proto::ids::ChunkId;

    fn piece(n: u64) -> PieceId {
        PieceId {
            chunk: ChunkId(n),
            index: 0,
        }
    }

    #[test]
    fn the_least_recently_used_table_goes_first_and_the_budget_holds() {
        let mut cache = HashCache::new(300);
        for n in 0..3 {
            cache.insert(piece(n), Arc::from(vec![n as u8; 100]));
        }
        assert!(cache.get(piece(0)).is_some());
        cache.insert(piece(3), Arc::from(vec![3u8; 100]));
        assert!(cache.get(piece(1)).is_none(), "the oldest unused table");
        assert_eq!(cache.get(piece(0)).as_deref(), Some(&[0u8; 100][..]));
        assert!(cache.get(piece(2)).is_some() && cache.get(piece(3)).is_some());
        assert_eq!(cache.bytes(), 300);
        cache.remove(piece(2));
        assert_eq!(cache.bytes(), 200);
        assert!(cache.get(piece(2)).is_none());
        cache.insert(piece(4), Arc::from(vec![4u8; 400]));
        assert_eq!(
            cache.bytes(),
            200,
            "a table over the whole budget is not kept"
        );
        cache.insert(piece(0), Arc::from(vec![9u8; 50]));
        assert_eq!(
            cache.bytes(),
            150,
            "a table inserted again replaces the old one"
        );
    }
}
