//! The library every front end uses to reach a cluster.
//!
//! This crate is laid out in the workspace; its capability lands with its own issue
//! (see `docs/ARCHITECTURE.md`).
