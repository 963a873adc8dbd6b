//! `tessera-client`: what every front end (the CLI, the FUSE mount, the S3
//! gateway) uses to reach a cluster. Metadata calls go to the metaserver
//! leader ([`MetaClient`]); file bytes go straight between this process and
//! the chunkservers ([`FileWriter`], [`FileReader`]), the metaserver only
//! handing out placements and tokens.

mod client;
mod lock;
pub mod meta;
pub mod path;
mod pieces;
pub mod read;
mod session;
pub mod sync;
pub mod write;

pub use client::Client;
pub use meta::MetaClient;
pub use read::FileReader;
pub use session::session_info;
pub use sync::Unsynced;
pub use write::FileWriter;
