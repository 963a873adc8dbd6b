//! What every Tessera process shares: typed ids, the error type with its
//! stable wire codes, the frame codec, RPC over QUIC with mutual TLS,
//! capability tokens, configuration loading and observability.
//!
//! The pure parts (`ids`, `error`, `wire`, `token`, `limits`) do no I/O and
//! depend on no runtime; `rpc`, `tls` and `obs` are the shell around them.
//! See `docs/protocol.md` for the wire format and `docs/ARCHITECTURE.md` for
//! where this crate sits.

pub mod checksum;
pub mod chunk;
pub mod config;
pub mod error;
pub mod ids;
pub mod limits;
pub mod lock;
pub mod meta;
pub mod obs;
pub mod rpc;
pub mod session;
pub mod stripe;
pub mod tls;
pub mod token;
pub mod versions;
pub mod wire;

pub use error::{Error, ErrorCode, Result};
pub use ids::{ChunkId, InodeId, NodeId, PieceId, RequestId};
