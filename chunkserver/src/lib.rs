//! The chunkserver: keeps pieces (whole replicas or erasure-coded shard
//! columns) on local disks and serves them to token holders.
//!
//! - `store`: sealed piece files, crash-safe writes, verified reads.
//! - `service`: the data service on the RPC layer (write, read, delete,
//!   list, copy) with token and role checks.
//! - `heartbeat`: registration, heartbeats and inventory reports to the
//!   metaserver, and the commands it sends back.
//! - `scrub`: re-verifies every sealed piece at a bounded rate.
//! - `server`: configuration and start-up of the whole daemon.
//!
//! Invariant: the chunkserver never picks placement and never deletes a piece
//! on anyone's word but a metaserver's.

pub mod heartbeat;
pub mod metrics;
pub mod scrub;
pub mod server;
pub mod service;
pub mod store;

pub use server::{ChunkConfig, ChunkServer};
