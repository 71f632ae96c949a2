//! The data directory and the one durable-write helper.
//!
//! ```text
//! <data_dir>/
//!   node-id                      this node's name, made on first start
//!   lock                         held (flock) by the running server
//!   callvault.db                 SQLite metadata index
//!   spool/<id>.wav, <id>.json    recordings in progress
//!   recordings/YYYY/MM/DD/<id>.wav, <id>.json   finished recordings (the local blob store)
//! ```
//!
//! Everything that must survive a crash goes through [`durable_write`]:
//! temp file → fsync → rename → fsync the directory (as garage's block
//! manager does), so a reader sees the old or the new file, never half.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use model::RecordingId;

/// Paths inside a node's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Size of the spool reserve (final metadata is a few kB per recording).
pub const SPOOL_RESERVE_BYTES: usize = 256 * 1024;

impl DataDir {
    /// Uses `root`, creating the directory tree if needed.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<DataDir> {
        let d = DataDir { root: root.into() };
        fs::create_dir_all(d.spool_dir())?;
        Ok(d)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join("callvault.db")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.root.join("spool")
    }

    pub fn spool_wav(&self, id: RecordingId) -> PathBuf {
        self.spool_dir().join(format!("{id}.wav"))
    }

    pub fn spool_json(&self, id: RecordingId) -> PathBuf {
        self.spool_dir().join(format!("{id}.json"))
    }

    fn spool_reserve(&self) -> PathBuf {
        self.spool_dir().join(".reserve")
    }

    /// Makes sure the spool holds its reserve: space set aside so that the
    /// final metadata of recordings that fail on a full disk can still be
    /// written (and their reason survives a crash). Returns whether it had
    /// to be (re)created.
    pub fn ensure_spool_reserve(&self) -> io::Result<bool> {
        let path = self.spool_reserve();
        if fs::metadata(&path).is_ok_and(|m| m.len() == SPOOL_RESERVE_BYTES as u64) {
            return Ok(false);
        }
        // Real zeros, not a sparse file: the blocks must be taken now.
        durable_write(&path, &vec![0u8; SPOOL_RESERVE_BYTES])?;
        Ok(true)
    }

    /// Gives the reserve back to the filesystem; false when there was none.
    pub fn release_spool_reserve(&self) -> bool {
        fs::remove_file(self.spool_reserve()).is_ok()
    }

    /// This node's name: `configured` if given (and remembered), else the
    /// stored one, else a new random one.
    pub fn node_id(&self, configured: Option<&str>) -> io::Result<String> {
        let path = self.root.join("node-id");
        if let Some(id) = configured {
            if fs::read_to_string(&path).map(|s| s.trim().to_owned()).ok().as_deref() != Some(id) {
                durable_write(&path, id.as_bytes())?;
            }
            return Ok(id.to_owned());
        }
        match fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            _ => {
                let id = format!("node-{:08x}", fastrand::u32(..));
                durable_write(&path, id.as_bytes())?;
                Ok(id)
            }
        }
    }

    /// Takes the server lock; `Ok(None)` if another process holds it.
    pub fn try_lock(&self) -> io::Result<Option<File>> {
        let f = OpenOptions::new().create(true).truncate(false).write(true).open(self.lock_path())?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }

    /// Is a server running on this data directory?
    pub fn is_locked(&self) -> io::Result<bool> {
        Ok(self.try_lock()?.is_none())
    }
}

/// Writes `data` to `path` atomically and durably.
pub fn durable_write(path: &Path, data: &[u8]) -> io::Result<()> {
    replace_synced(path, data)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// [`durable_write`] for several files of one directory `dir`, with one
/// directory fsync for all of them. One result per file, in order.
pub fn durable_write_all(dir: &Path, files: &[(PathBuf, Vec<u8>)]) -> Vec<io::Result<()>> {
    let mut results: Vec<io::Result<()>> = files.iter().map(|(p, d)| replace_synced(p, d)).collect();
    if results.iter().any(Result::is_ok) {
        if let Err(e) = sync_dir(dir) {
            for r in results.iter_mut().filter(|r| r.is_ok()) {
                *r = Err(io::Error::new(e.kind(), e.to_string()));
            }
        }
    }
    results
}

/// Writes `data` to a temporary file and renames it over `path`: readers
/// see the old or the new content, never half; durable only after a
/// [`sync_filesystem`] (for batches that share one sync).
pub fn replace_unsynced(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, false)
}

/// One `syncfs(2)`: everything written on the filesystem holding `path`
/// (file data, renames, directory entries) is on disk when it returns.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    let f = File::open(path)?;
    rustix::fs::syncfs(&f).map_err(io::Error::from)
}

/// Writes `data` to a synced temporary file and renames it over `path`;
/// durable once the directory is synced.
fn replace_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, true)
}

fn replace(path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{:08x}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        fastrand::u32(..)
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        if sync {
            f.sync_all()?;
        }
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_replaces_atomically_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("cv-layout-{}", fastrand::u64(..)));
        let d = DataDir::open(&dir).unwrap();
        let p = d.root().join("x.json");
        durable_write(&p, b"one").unwrap();
        durable_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.root()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(names.iter().all(|n| !n.to_string_lossy().contains(".tmp-")), "{names:?}");
        let id = d.node_id(None).unwrap();
        assert_eq!(d.node_id(None).unwrap(), id, "stable across calls");
        assert_eq!(d.node_id(Some("edge-1")).unwrap(), "edge-1");
        assert_eq!(d.node_id(None).unwrap(), "edge-1");
        let lock = d.try_lock().unwrap().expect("free");
        assert!(d.try_lock().unwrap().is_none(), "second lock refused");
        drop(lock);
        assert!(!d.is_locked().unwrap());
        fs::remove_dir_all(dir).unwrap();
    }
}
