//! S3 gateway over tessera-client.
//!
//! This crate is laid out in the workspace; its capability lands with its own issue
//! (see `docs/ARCHITECTURE.md`).
