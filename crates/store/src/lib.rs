//! Where recordings live.
//!
//! - [`layout`]: the data directory, the node id, the server lock and
//!   [`layout::durable_write`] (temp → fsync → rename → fsync dir).
//! - [`archive`]: moving a finished recording from the spool to the
//!   archive with its final JSON, and recovering whatever a crash left.
//! - [`db`]: the SQLite index (sqlx, WAL, embedded migrations).
//!
//! The JSON next to each audio file is the source of truth; the database
//! can be rebuilt from it. A recording is only removed from the spool once
//! it is archived *and* indexed, so a database outage loses nothing.

pub mod archive;
pub mod db;
pub mod layout;

pub use archive::{sha256_file, Archive, ArchiveError};
pub use db::{DbError, ListQuery, MetaDb};
pub use layout::{durable_write, DataDir};
