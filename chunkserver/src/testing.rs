//! Helpers shared by the crate's unit tests.

use crate::jobs::{JobRunner, RepairConfig};
use crate::metrics::ChunkMetrics;
use crate::store::{DiskConfig, Store};
use reed_solomon_erasure::galois_8::ReedSolomon;
use std::path::Path;
use std::sync::Arc;
use tessera_proto::checksum::checksum_of;
use tessera_proto::chunk::PieceInfo;
use tessera_proto::ids::PieceId;
use tessera_proto::rpc::{RpcClient, TransportOptions};
use tessera_proto::stripe::Geometry;
use tessera_proto::tls::{self, Identity, Role};
use tessera_proto::token::{Capability, Rights, Token, TokenKey};

/// Encodes a chunk into its k + m pieces as the client's writer does: each
/// stripe's data cells unpadded, its parity cells the stripe's cell size.
pub fn encode_chunk(geometry: Geometry, chunk: &[u8]) -> Vec<Vec<u8>> {
    let coder = ReedSolomon::new(geometry.data, geometry.parity).unwrap();
    let mut pieces = vec![Vec::new(); geometry.width()];
    for stripe in chunk.chunks(geometry.stripe_bytes() as usize) {
        let layout = geometry.stripe(stripe.len() as u64, 0);
        let cell = layout.cell as usize;
        let mut padded = Vec::new();
        for (shard, piece) in pieces.iter_mut().enumerate().take(geometry.data) {
            let (start, end) = layout.cell_range(shard);
            let data = &stripe[start as usize..end as usize];
            piece.extend_from_slice(data);
            let mut cell_bytes = data.to_vec();
            cell_bytes.resize(cell, 0);
            padded.push(cell_bytes);
        }
        let mut parity = vec![vec![0u8; cell]; geometry.parity];
        coder.encode_sep(&padded, &mut parity).unwrap();
        for (piece, cell_bytes) in pieces[geometry.data..].iter_mut().zip(parity) {
            piece.extend_from_slice(&cell_bytes);
        }
    }
    for (index, piece) in pieces.iter().enumerate() {
        assert_eq!(
            piece.len() as u64,
            geometry.piece_len(chunk.len() as u64, index)
        );
    }
    pieces
}

/// Deterministic bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn store(dir: &Path) -> Arc<Store> {
    Arc::new(
        Store::open(
            &[DiskConfig {
                path: dir.to_path_buf(),
                reserve_bytes: 0,
                capacity_bytes: None,
            }],
            ChunkMetrics::unregistered(),
        )
        .unwrap(),
    )
}

pub fn write(store: &Arc<Store>, piece: PieceId, data: &[u8]) -> PieceInfo {
    let mut write = store
        .begin_write(piece, data.len() as u64, checksum_of(data))
        .unwrap();
    write.append(data).unwrap();
    write.seal().unwrap()
}

/// The piece's bytes, verified.
pub fn read(store: &Arc<Store>, piece: PieceId) -> Vec<u8> {
    let mut reader = store.open_reader(piece).unwrap();
    let blocks = tessera_proto::checksum::block_count(reader.length());
    reader.read_blocks(0, blocks).unwrap()
}

/// An RPC client with a chunkserver identity from a fresh CA in `dir`.
pub fn client(dir: &Path) -> RpcClient {
    let ca = dir.join("ca");
    tls::ca_init(&ca).unwrap();
    tls::ca_issue(&ca, Role::Chunk, "unit-chunk").unwrap();
    let identity = Identity::load_from_dir(&ca, "unit-chunk").unwrap();
    RpcClient::new(
        &identity,
        &TransportOptions::loopback(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

pub fn runner(store: Arc<Store>, dir: &Path) -> Arc<JobRunner> {
    JobRunner::new(store, client(dir), &RepairConfig::default())
}

pub fn token(piece: PieceId) -> Token {
    TokenKey::generate().mint(Capability {
        chunk: piece.chunk,
        rights: Rights::READ.union(Rights::WRITE),
        expires_at_ms: u64::MAX,
    })
}

/// Files in a store folder (`tmp`, `quarantine`).
pub fn files_in(dir: &Path, folder: &str) -> usize {
    std::fs::read_dir(dir.join(folder))
        .map(|d| d.count())
        .unwrap_or(0)
}
