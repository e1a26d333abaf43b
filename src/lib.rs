//! syn: an encrypted folder, mounted with FUSE, that syncs between devices
//! through a server that only ever holds ciphertext.
//!
//! The layers, bottom up:
//! - [`crypto`]: the master key, its subkeys, sealed blocks and documents;
//! - [`store`]: the local SQLite store of sealed nodes, blocks and the change log;
//! - [`fs`]: the file system core, and the FUSE adapter over it;
//! - [`sync`]: the sync engine on its own tokio runtime, and the HTTP client;
//! - [`server`]: `syn serve`, which stores documents and blobs per account;
//! - [`daemon`] and [`cli`]: the mounted daemon, its control socket, and the commands.

pub mod cli;
pub mod crypto;
pub mod daemon;
pub mod fs;
pub mod protocol;
pub mod server;
pub mod store;
pub mod sync;
