//! Where finished recordings live: the blob store.
//!
//! A recording is two blobs under keys derived from its start date and id
//! ([`BlobKey::audio`], [`BlobKey::meta`]): the audio and its final JSON
//! metadata (the source of truth the index is built from). Everything
//! above this module asks for blobs by key and never handles a file path
//! of the archive, so another backend (an S3-compatible bucket) slots in
//! under the same interface and the same conformance suite
//! ([`crate::conformance::blob_store`]).
//!
//! Writes come in batches ([`BlobStore::put_all`]) because that is how the
//! archive works: the local backend makes a whole batch durable with one
//! filesystem sync instead of an fsync per file and directory.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use model::RecordingId;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::layout::{replace_unsynced, sync_filesystem};

/// The name of a blob: a relative, `/`-separated path such as
/// `recordings/2026/12/02/<id>.wav`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey(String);

impl BlobKey {
    /// The audio of recording `id` started at `started_at` (UTC date folders).
    pub fn audio(started_at: OffsetDateTime, id: RecordingId) -> BlobKey {
        BlobKey::dated(started_at, id, "wav")
    }

    /// The final metadata (JSON) of a recording.
    pub fn meta(started_at: OffsetDateTime, id: RecordingId) -> BlobKey {
        BlobKey::dated(started_at, id, "json")
    }

    fn dated(started_at: OffsetDateTime, id: RecordingId, ext: &str) -> BlobKey {
        let d = started_at.to_offset(time::UtcOffset::UTC).date();
        BlobKey(format!("recordings/{:04}/{:02}/{:02}/{id}.{ext}", d.year(), d.month() as u8, d.day()))
    }

    /// A key as stored in metadata (`AudioInfo::path`); refuses anything
    /// that could leave the store (absolute paths, `..`, empty parts).
    pub fn parse(s: &str) -> Option<BlobKey> {
        let ok = !s.is_empty()
            && !s.starts_with('/')
            && s.split('/').all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\\'));
        ok.then(|| BlobKey(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One write of a batch.
#[derive(Debug)]
pub enum BlobPut {
    /// Take over a finished local file (moved when the store is on the
    /// same filesystem, copied otherwise); the file is gone afterwards.
    MoveFile { key: BlobKey, path: PathBuf },
    /// Store these bytes.
    Bytes { key: BlobKey, data: Vec<u8> },
}

impl BlobPut {
    pub fn key(&self) -> &BlobKey {
        match self {
            BlobPut::MoveFile { key, .. } | BlobPut::Bytes { key, .. } => key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob {key}: {source}")]
    Io { key: String, source: io::Error },
    #[error("no blob {0}")]
    NotFound(String),
    #[error("range {start}..{end} outside blob {key} of {len} bytes")]
    Range { key: String, start: u64, end: u64, len: u64 },
}

impl BlobError {
    fn io(key: &BlobKey) -> impl FnOnce(io::Error) -> BlobError + '_ {
        move |source| {
            if source.kind() == io::ErrorKind::NotFound {
                BlobError::NotFound(key.0.clone())
            } else {
                BlobError::Io { key: key.0.clone(), source }
            }
        }
    }
}

/// Blob storage for finished recordings. Blocking: callers on an async
/// runtime use `spawn_blocking` (reads and hashes of large audio files
/// are disk work anyway).
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Writes a batch; when it returns, every `Ok` entry is durable.
    /// One result per entry, in order.
    fn put_all(&self, puts: Vec<BlobPut>) -> Vec<Result<(), BlobError>>;
    /// Size in bytes, or `None` when there is no such blob.
    fn len(&self, key: &BlobKey) -> Result<Option<u64>, BlobError>;
    /// Bytes `start..end` (end exclusive, within the blob).
    fn read_range(&self, key: &BlobKey, start: u64, end: u64) -> Result<Vec<u8>, BlobError>;
    /// SHA-256 (lowercase hex) and size, read back from storage.
    fn sha256(&self, key: &BlobKey) -> Result<(String, u64), BlobError>;
    /// Removes a blob; removing a missing one is not an error.
    fn delete(&self, key: &BlobKey) -> Result<(), BlobError>;
    /// Moves a blob aside (a copy that failed its checksum) so it is no
    /// longer served but still there for an operator to look at.
    fn quarantine(&self, key: &BlobKey) -> Result<(), BlobError>;

    /// The whole blob.
    fn read(&self, key: &BlobKey) -> Result<Vec<u8>, BlobError> {
        let len = self.len(key)?.ok_or_else(|| BlobError::NotFound(key.0.clone()))?;
        self.read_range(key, 0, len)
    }
}

/// Blobs as files under a directory (the node's data directory).
#[derive(Debug, Clone)]
pub struct LocalBlobs {
    root: PathBuf,
}

impl LocalBlobs {
    pub fn new(root: impl Into<PathBuf>) -> LocalBlobs {
        LocalBlobs { root: root.into() }
    }

    fn path(&self, key: &BlobKey) -> PathBuf {
        self.root.join(&key.0)
    }

    fn put_one(&self, put: &BlobPut) -> io::Result<()> {
        let dest = self.path(put.key());
        let dir = dest.parent().expect("keys have a folder");
        fs::create_dir_all(dir)?;
        match put {
            BlobPut::Bytes { data, .. } => replace_unsynced(&dest, data),
            BlobPut::MoveFile { path, .. } => match fs::rename(path, &dest) {
                Ok(()) => Ok(()),
                // Another filesystem: copy under a temporary name, then rename.
                Err(e) if e.raw_os_error() == Some(18 /* EXDEV */) => {
                    let tmp = dest.with_extension("part");
                    fs::copy(path, &tmp)?;
                    fs::rename(&tmp, &dest)?;
                    fs::remove_file(path)
                }
                Err(e) => Err(e),
            },
        }
    }
}

impl BlobStore for LocalBlobs {
    fn put_all(&self, puts: Vec<BlobPut>) -> Vec<Result<(), BlobError>> {
        let mut results: Vec<Result<(), BlobError>> =
            puts.iter().map(|p| self.put_one(p).map_err(BlobError::io(p.key()))).collect();
        if results.iter().any(Result::is_ok) {
            if let Err(e) = sync_filesystem(&self.root) {
                for (r, p) in results.iter_mut().zip(&puts) {
                    if r.is_ok() {
                        *r = Err(BlobError::Io {
                            key: p.key().0.clone(),
                            source: io::Error::new(e.kind(), e.to_string()),
                        });
                    }
                }
            }
        }
        results
    }

    fn len(&self, key: &BlobKey) -> Result<Option<u64>, BlobError> {
        match fs::metadata(self.path(key)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(BlobError::io(key)(e)),
        }
    }

    fn read_range(&self, key: &BlobKey, start: u64, end: u64) -> Result<Vec<u8>, BlobError> {
        let mut f = File::open(self.path(key)).map_err(BlobError::io(key))?;
        let len = f.metadata().map_err(BlobError::io(key))?.len();
        if start > end || end > len {
            return Err(BlobError::Range { key: key.0.clone(), start, end, len });
        }
        f.seek(SeekFrom::Start(start)).map_err(BlobError::io(key))?;
        let mut buf = vec![0u8; (end - start) as usize];
        f.read_exact(&mut buf).map_err(BlobError::io(key))?;
        Ok(buf)
    }

    fn sha256(&self, key: &BlobKey) -> Result<(String, u64), BlobError> {
        sha256_file(&self.path(key)).map_err(BlobError::io(key))
    }

    fn delete(&self, key: &BlobKey) -> Result<(), BlobError> {
        match fs::remove_file(self.path(key)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::io(key)(e)),
        }
    }

    fn quarantine(&self, key: &BlobKey) -> Result<(), BlobError> {
        let path = self.path(key);
        let aside =
            path.with_extension(format!("{}.corrupted", path.extension().and_then(|e| e.to_str()).unwrap_or("blob")));
        fs::rename(&path, aside).map_err(BlobError::io(key))
    }
}

/// SHA-256 (lowercase hex) and size of a file.
pub fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        h.update(&buf[..n]);
    }
    Ok((hex(&h.finalize()), total))
}

pub use model::replica::hex;
