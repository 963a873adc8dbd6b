//! The metaserver: the namespace and the chunk map, replicated with Raft
//! (openraft) and stored in RocksDB.
//!
//! - `kv`: the record layer every part of the state reads and writes
//!   through: RocksDB (or a map, in tests) behind a bounded record cache,
//!   with one write batch per apply.
//! - `namespace`: the pure POSIX namespace core (inodes, entries, xattrs,
//!   extents and chunk references).
//! - `state`: the replicated state around it: the chunk map and its
//!   indexes (on disk), chunkserver list, recent request ids; applies
//!   [`types::Command`]s deterministically.
//! - `log_store`, `sm_store`: Raft log and state machine in RocksDB;
//!   `snapshot`: snapshots as RocksDB checkpoints, streamed to new members.
//! - `healing`: the leader's repair, drain and rebalance decisions.
//! - `network`: Raft traffic over the RPC layer.
//! - `batcher`: many commands per Raft entry.
//! - `registry`: leader-side liveness, space, inventories and placement.
//! - `service`: the RPC service; `server`: configuration and start-up.
//! - `web`: the status page beside `/metrics`.
//!
//! Invariant: the metaserver is never in the data path; it hands out chunk
//! ids, placements and tokens, and bytes go between clients and chunkservers.

pub mod batcher;
pub mod healing;
pub mod kv;
pub mod log_store;
pub mod metrics;
pub mod namespace;
pub mod network;
pub mod registry;
pub mod server;
pub mod service;
pub mod sm_store;
pub mod snapshot;
pub mod state;
pub mod types;
pub mod web;

pub use server::{CompactionSettings, MetaConfig, MetaServer};
