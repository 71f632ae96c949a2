//! Finishing recordings: from the spool to the archive, crash-safely.
//!
//! Order of steps (each idempotent, so recovery can resume anywhere):
//! 1. patch the WAV header from the file length;
//! 2. rename it into `recordings/YYYY/MM/DD/`;
//! 3. write the final JSON next to it (temp file and rename), then make
//!    steps 1–3 of the whole batch durable with one filesystem sync;
//! 4. the caller indexes it in the database;
//! 5. the caller removes the spool JSON ([`Archive::forget_spool`]).
//!
//! A spool JSON therefore exists exactly while a recording is active or
//! not yet fully archived and indexed; when a recording ends, its final
//! metadata replaces the spool JSON before it waits to be archived, so the
//! spool is the durable queue of the archive: startup recovery
//! ([`Archive::recover`]) finishes every one it finds, keeping the final
//! state (and reason) of those that had ended.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::path::PathBuf;

use media::wav;
use model::{AudioInfo, NodeId, RecordingId, RecordingMeta, RecordingState, SourceKind};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::layout::{durable_write_all, replace_unsynced, sync_dir, sync_filesystem, DataDir};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audio file {path}: {source}")]
    Wav { path: PathBuf, source: wav::WavError },
    #[error("metadata file {path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
}

fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_owned(), source }
}

/// File operations on recordings.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: DataDir,
}

impl Archive {
    pub fn new(dir: DataDir) -> Archive {
        Archive { dir }
    }

    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    /// Saves the metadata of a recording not yet archived (spool JSON):
    /// a running one, or one that ended and waits to be archived.
    pub fn save_spool(&self, meta: &RecordingMeta) -> Result<(), ArchiveError> {
        self.save_spool_all(&[meta]).pop().expect("one result per recording")
    }

    /// [`Archive::save_spool`] for a batch, sharing one directory fsync.
    pub fn save_spool_all(&self, metas: &[&RecordingMeta]) -> Vec<Result<(), ArchiveError>> {
        let files: Vec<(PathBuf, Vec<u8>)> = metas.iter().map(|m| (self.dir.spool_json(m.id), m.to_json())).collect();
        durable_write_all(&self.dir.spool_dir(), &files)
            .into_iter()
            .zip(&files)
            .map(|(r, (path, _))| r.map_err(io_err(path)))
            .collect()
    }

    /// Steps 1–3 for a recording whose `meta` carries its final state.
    /// Fills `meta.audio` and `meta.duration_ms`.
    pub fn finalize(&self, meta: &mut RecordingMeta) -> Result<(), ArchiveError> {
        self.finalize_all(std::slice::from_mut(meta)).pop().expect("one result per recording")
    }

    /// [`Archive::finalize`] for a batch, made durable by one `syncfs(2)`
    /// of the data directory's filesystem at the end instead of an fsync
    /// per file and directory: headers, renames and final JSONs of the
    /// whole batch reach the disk in one journal commit, which is what lets
    /// the archive keep up with a high call rate without taking the disk
    /// from the calls being set up. Until that sync the spool JSON of each
    /// recording is still there, so a crash before it only means recovery
    /// finalizes again (every step is idempotent). One result per recording.
    pub fn finalize_all(&self, metas: &mut [RecordingMeta]) -> Vec<Result<(), ArchiveError>> {
        let mut results: Vec<Result<(), ArchiveError>> = metas.iter().map(|_| Ok(())).collect();
        for (i, meta) in metas.iter_mut().enumerate() {
            let step = self.move_audio(meta).and_then(|()| self.describe_audio(meta)).and_then(|()| {
                let json = self.dir.resolve(&self.dir.archive_relative(meta.started_at, meta.id, "json"));
                replace_unsynced(&json, &meta.to_json()).map_err(io_err(&json))
            });
            if let Err(e) = step {
                results[i] = Err(e);
            }
        }
        if results.iter().any(Result::is_ok) {
            let root = self.dir.root().to_owned();
            if let Err(e) = sync_filesystem(&root) {
                for r in results.iter_mut().filter(|r| r.is_ok()) {
                    *r = Err(io_err(&root)(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
        results
    }

    /// Step 1 and the rename of step 2 for one recording (made durable by
    /// the batch's sync); nothing to do when the spool holds no audio
    /// (already moved, or none was ever written).
    fn move_audio(&self, meta: &RecordingMeta) -> Result<(), ArchiveError> {
        let spool_wav = self.dir.spool_wav(meta.id);
        if !spool_wav.exists() {
            return Ok(());
        }
        let archive_wav = self.dir.resolve(&self.dir.archive_relative(meta.started_at, meta.id, "wav"));
        let parent = archive_wav.parent().expect("archive path has a parent").to_owned();
        let mut f = OpenOptions::new().read(true).write(true).open(&spool_wav).map_err(io_err(&spool_wav))?;
        let fin = wav::finalize(&mut f, |f, len| f.set_len(len))
            .map_err(|source| ArchiveError::Wav { path: spool_wav.clone(), source })?;
        drop(f);
        if fin.truncated_bytes > 0 {
            tracing::warn!(recording = %meta.id, bytes = fin.truncated_bytes, "cut a torn audio frame");
        }
        fs::create_dir_all(&parent).map_err(io_err(&parent))?;
        fs::rename(&spool_wav, &archive_wav).map_err(io_err(&archive_wav))
    }

    /// Fills `meta.audio` (format, size, SHA-256) and `meta.duration_ms`
    /// from the archived audio file, or clears them when there is none.
    fn describe_audio(&self, meta: &mut RecordingMeta) -> Result<(), ArchiveError> {
        let rel_wav = self.dir.archive_relative(meta.started_at, meta.id, "wav");
        let archive_wav = self.dir.resolve(&rel_wav);
        if !archive_wav.exists() {
            meta.audio = None;
            if let Some(end) = meta.ended_at {
                meta.duration_ms = (end - meta.started_at).whole_milliseconds().max(0) as u64;
            }
            return Ok(());
        }
        let mut f = OpenOptions::new().read(true).write(true).open(&archive_wav).map_err(io_err(&archive_wav))?;
        // Re-running finalize on an archived file is harmless and gives its facts.
        let fin = wav::finalize(&mut f, |f, len| f.set_len(len))
            .map_err(|source| ArchiveError::Wav { path: archive_wav.clone(), source })?;
        drop(f);
        let (sha, bytes) = sha256_file(&archive_wav).map_err(io_err(&archive_wav))?;
        meta.duration_ms = fin.duration_ms();
        meta.audio = Some(AudioInfo {
            format: "wav".into(),
            sample_rate: fin.format.sample_rate,
            channels: fin.format.channels,
            bytes,
            duration_ms: fin.duration_ms(),
            sha256: Some(sha),
            path: rel_wav.to_string_lossy().into_owned(),
        });
        Ok(())
    }

    /// Step 5: the recording is archived and indexed.
    pub fn forget_spool(&self, id: RecordingId) -> Result<(), ArchiveError> {
        self.forget_spool_all(&[id])
    }

    /// [`Archive::forget_spool`] for a batch, with one directory sync.
    pub fn forget_spool_all(&self, ids: &[RecordingId]) -> Result<(), ArchiveError> {
        for &id in ids {
            let path = self.dir.spool_json(id);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
            }
        }
        let spool = self.dir.spool_dir();
        sync_dir(&spool).map_err(io_err(&spool))
    }

    /// The spool metadata of a recording not yet archived.
    pub fn load_spool(&self, id: RecordingId) -> Result<RecordingMeta, ArchiveError> {
        let path = self.dir.spool_json(id);
        let data = fs::read(&path).map_err(io_err(&path))?;
        RecordingMeta::from_json(&data).map_err(|source| ArchiveError::Json { path, source })
    }

    /// Reads an archived recording's metadata.
    pub fn load(&self, relative_json: &std::path::Path) -> Result<RecordingMeta, ArchiveError> {
        let path = self.dir.resolve(relative_json);
        let data = fs::read(&path).map_err(io_err(&path))?;
        RecordingMeta::from_json(&data).map_err(|source| ArchiveError::Json { path, source })
    }

    /// Every recording left in the spool by a previous run, with its
    /// metadata moved to a final state: an active one becomes
    /// `interrupted` (its audio is kept); one that had already ended keeps
    /// its state. The caller finalizes, indexes and forgets each.
    pub fn recover(&self, node: &NodeId, now: OffsetDateTime) -> Result<Vec<RecordingMeta>, ArchiveError> {
        let spool = self.dir.spool_dir();
        let mut found = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for entry in fs::read_dir(&spool).map_err(io_err(&spool))? {
            let entry = entry.map_err(io_err(&spool))?;
            let path = entry.path();
            let (Some(stem), Some(ext)) =
                (path.file_stem().and_then(|s| s.to_str()), path.extension().and_then(|s| s.to_str()))
            else {
                continue;
            };
            let Ok(id) = stem.parse::<RecordingId>() else {
                if stem.starts_with('.') && path.to_string_lossy().contains(".tmp-") {
                    let _ = fs::remove_file(&path); // an interrupted durable_write
                }
                continue;
            };
            if !seen.insert(id) || !(ext == "json" || ext == "wav") {
                continue;
            }
            let json = self.dir.spool_json(id);
            let mut meta = match fs::read(&json) {
                Ok(data) => match RecordingMeta::from_json(&data) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(recording = %id, error = %e, "spool metadata unreadable; rebuilding a minimal record");
                        orphan_meta(id, node, &self.dir.spool_wav(id), now)
                    }
                },
                Err(_) => orphan_meta(id, node, &self.dir.spool_wav(id), now),
            };
            if meta.state == RecordingState::Active {
                meta.transition(RecordingState::Interrupted, now, "recorder restarted while the call was in progress");
            }
            found.push(meta);
        }
        found.sort_by_key(|m| m.id);
        Ok(found)
    }
}

/// Metadata for spooled audio whose JSON is missing or corrupt.
fn orphan_meta(id: RecordingId, node: &NodeId, wav: &std::path::Path, now: OffsetDateTime) -> RecordingMeta {
    let started_at =
        fs::metadata(wav).and_then(|m| m.created().or_else(|_| m.modified())).map(OffsetDateTime::from).unwrap_or(now);
    RecordingMeta::start(
        id,
        node.clone(),
        SourceKind::Plain,
        started_at,
        String::new(),
        "metadata lost; rebuilt from spooled audio",
    )
}

/// SHA-256 (lowercase hex) and size of a file.
pub fn sha256_file(path: &std::path::Path) -> io::Result<(String, u64)> {
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
    let digest = h.finalize();
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push_str(&format!("{b:02x}"));
    }
    Ok((hex, total))
}
