//! Chunk store on local disks and its data service.
//!
//! This crate is laid out in the workspace; its capability lands with its own issue
//! (see `docs/ARCHITECTURE.md`).
