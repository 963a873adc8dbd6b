//! The library every front end uses to reach a cluster.
//!
//! - `meta`: metadata calls that find the leader, follow redirects, remember
//!   the leader, and retry with the same request id across a leader change.

pub mod meta;

pub use meta::MetaClient;
