//! The chunkserver: keeps pieces (whole replicas or erasure-coded shard
//! columns) on local disks and serves them to token holders.
//!
//! - `store`: sealed piece files, crash-safe writes, verified reads;
//!   `changes` tracks what was sealed and deleted between heartbeats.
//! - `local_write`: streams a piece into the store from async code.
//! - `service`: the data service on the RPC layer (write, read, delete,
//!   list, copy) with token and role checks.
//! - `heartbeat`: registration, heartbeats and inventory reports to the
//!   metaserver, and the commands it sends back.
//! - `jobs`: runs repair jobs (`copy`, `rebuild`) with bounded concurrency
//!   and a shared read rate (`throttle`), reading from and writing to other
//!   chunkservers through `remote`.
//! - `scrub`: re-verifies every sealed piece at a bounded rate.
//! - `server`: configuration and start-up of the whole daemon.
//!
//! Invariant: the chunkserver never picks placement and never deletes a piece
//! on anyone's word but a metaserver's.

pub mod changes;
pub mod copy;
pub mod hash_cache;
pub mod heartbeat;
pub mod jobs;
pub mod local_write;
pub mod metrics;
pub mod rebuild;
pub mod remote;
pub mod scrub;
pub mod server;
pub mod service;
pub mod store;
pub mod throttle;

#[cfg(test)]
mod testing;

pub use server::{ChunkConfig, ChunkServer};
