//! Where recordings live.
//!
//! - [`layout`]: the data directory (spool, node id, server lock) and
//!   [`layout::durable_write`] (temp → fsync → rename → fsync dir).
//! - [`blob`]: the [`BlobStore`] for finished recordings (audio and final
//!   JSON), with the local-directory backend.
//! - [`index`]: the [`RecordingIndex`] that makes them searchable, with
//!   the SQLite backend in [`db`].
//! - [`archive`]: the spool of recordings in progress, the way from it to
//!   the blob store, and recovery of whatever a crash left.
//! - [`conformance`]: the suites every backend of the two traits passes.
//!
//! The JSON next to each audio file is the source of truth; the index can
//! be rebuilt from it. A recording is only removed from the spool once it
//! is archived *and* indexed, so a database outage loses nothing.

pub mod access;
pub mod archive;
pub mod blob;
pub mod conformance;
pub mod db;
mod db_cluster;
pub mod index;
pub mod layout;

pub use access::{verify_audit_chain, AccessStore, AuditQuery, ChainCheck, SessionRow};
pub use archive::{Archive, ArchiveError};
pub use blob::{sha256_file, BlobError, BlobKey, BlobPut, BlobStore, LocalBlobs};
pub use db::SqliteIndex;
pub use index::{
    CallCopy, ClusterIndex, IndexError, ListQuery, OutboxItem, OutboxStats, RecordingIndex, StoredSetting, Tombstone,
};
pub use layout::{durable_write, DataDir};

use std::sync::Arc;

/// The stores of a node: the index and the archive (spool + blob store).
#[derive(Debug, Clone)]
pub struct Stores {
    pub index: Arc<dyn ClusterIndex>,
    pub access: Arc<dyn AccessStore>,
    pub archive: Archive,
}

impl Stores {
    /// The embedded defaults: SQLite in the data directory, blobs as files under it.
    pub async fn open_local(dir: &DataDir) -> Result<Stores, IndexError> {
        let index = Arc::new(SqliteIndex::open(&dir.db_path()).await?);
        Ok(Stores { index: index.clone(), access: index, archive: Archive::local(dir.clone()) })
    }
}
