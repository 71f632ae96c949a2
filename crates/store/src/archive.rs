//! Finishing recordings: from the spool to the blob store, crash-safely.
//!
//! Order of steps (each idempotent, so recovery can resume anywhere):
//! 1. patch the WAV header from the file length and hash the file;
//! 2. hand the audio and the final JSON to the [`BlobStore`] as one batch
//!    (the local store moves the file and makes the whole batch durable
//!    with one filesystem sync);
//! 3. the caller indexes it in the database;
//! 4. the caller removes the spool JSON ([`Archive::forget_spool`]).
//!
//! The spool (recordings in progress, always on local disk) is this
//! module's; finished recordings are only reached through the blob store.
//!
//! A spool JSON therefore exists exactly while a recording is active or
//! not yet fully archived and indexed; when a recording ends, its final
//! metadata replaces the spool JSON before it waits to be archived, so the
//! spool is the durable queue of the archive: startup recovery
//! ([`Archive::recover`]) finishes every one it finds, keeping the final
//! state (and reason) of those that had ended.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use media::wav;
use model::{AudioInfo, NodeId, RecordingId, RecordingMeta, RecordingState, SourceKind};
use time::OffsetDateTime;

use crate::blob::{sha256_file, BlobError, BlobKey, BlobPut, BlobStore, LocalBlobs};
use crate::layout::{durable_write_all, sync_dir, DataDir};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("i/o on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audio file {path}: {source}")]
    Wav { path: PathBuf, source: wav::WavError },
    #[error("metadata file {path}: {source}")]
    Json { path: PathBuf, source: serde_json::Error },
    #[error("{0}")]
    Blob(#[from] BlobError),
}

fn io_err(path: &std::path::Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_owned(), source }
}

/// The spool and the way from it to the blob store.
#[derive(Debug, Clone)]
pub struct Archive {
    dir: DataDir,
    blobs: Arc<dyn BlobStore>,
}

impl Archive {
    pub fn new(dir: DataDir, blobs: Arc<dyn BlobStore>) -> Archive {
        Archive { dir, blobs }
    }

    /// An archive whose blobs are files under the data directory.
    pub fn local(dir: DataDir) -> Archive {
        let blobs = Arc::new(LocalBlobs::new(dir.root()));
        Archive { dir, blobs }
    }

    pub fn dir(&self) -> &DataDir {
        &self.dir
    }

    pub fn blobs(&self) -> &Arc<dyn BlobStore> {
        &self.blobs
    }

    /// Saves the metadata of a recording not yet archived (spool JSON):
    /// a running one, or one that ended and waits to be archived.
    pub fn save_spool(&self, meta: &RecordingMeta) -> Result<(), ArchiveError> {
        self.save_spool_all(&[meta]).pop().expect("one result per recording")
    }

    /// [`Archive::save_spool`] for a batch, sharing one directory fsync.
    /// On a full disk the spool reserve is given up once for the writes
    /// that failed, so a recording's final state and reason still reach
    /// the disk (the storage probe recreates the reserve when space is back).
    pub fn save_spool_all(&self, metas: &[&RecordingMeta]) -> Vec<Result<(), ArchiveError>> {
        let files: Vec<(PathBuf, Vec<u8>)> = metas.iter().map(|m| (self.dir.spool_json(m.id), m.to_json())).collect();
        let mut results = durable_write_all(&self.dir.spool_dir(), &files);
        let full = |r: &io::Result<()>| r.as_ref().is_err_and(|e| e.kind() == io::ErrorKind::StorageFull);
        if results.iter().any(full) && self.dir.release_spool_reserve() {
            tracing::error!("disk full: released the spool reserve to write recording metadata");
            let failed: Vec<usize> = (0..files.len()).filter(|i| full(&results[*i])).collect();
            let retry: Vec<(PathBuf, Vec<u8>)> = failed.iter().map(|i| files[*i].clone()).collect();
            for (i, r) in failed.into_iter().zip(durable_write_all(&self.dir.spool_dir(), &retry)) {
                results[i] = r;
            }
        }
        results.into_iter().zip(&files).map(|(r, (path, _))| r.map_err(io_err(path))).collect()
    }

    /// Steps 1–3 for a recording whose `meta` carries its final state.
    /// Fills `meta.audio` and `meta.duration_ms`.
    pub fn finalize(&self, meta: &mut RecordingMeta) -> Result<(), ArchiveError> {
        self.finalize_all(std::slice::from_mut(meta)).pop().expect("one result per recording")
    }

    /// [`Archive::finalize`] for a batch: the blob store takes every
    /// recording's audio and final JSON in one write (made durable by one
    /// filesystem sync in the local store instead of an fsync per file and
    /// directory, which is what lets the archive keep up with a high call
    /// rate without taking the disk from the calls being set up). Until it
    /// returns the spool JSON of each recording is still there, so a crash
    /// only means recovery finalizes again. One result per recording.
    pub fn finalize_all(&self, metas: &mut [RecordingMeta]) -> Vec<Result<(), ArchiveError>> {
        let mut results: Vec<Result<(), ArchiveError>> = Vec::with_capacity(metas.len());
        let mut puts = Vec::new();
        let mut owner = Vec::new();
        for (i, meta) in metas.iter_mut().enumerate() {
            match self.prepare(meta) {
                Ok(audio) => {
                    if let Some(path) = audio {
                        let key = BlobKey::audio(meta.started_at, meta.id);
                        puts.push(BlobPut::MoveFile { key, path });
                        owner.push(i);
                    }
                    let key = BlobKey::meta(meta.started_at, meta.id);
                    puts.push(BlobPut::Bytes { key, data: meta.to_json() });
                    owner.push(i);
                    results.push(Ok(()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        for (i, r) in owner.into_iter().zip(self.blobs.put_all(puts)) {
            if let (Err(e), Ok(())) = (r, &results[i]) {
                results[i] = Err(ArchiveError::Blob(e));
            }
        }
        results
    }

    /// Step 1 for one recording: repairs the spooled audio's header and
    /// fills `meta.audio` and `meta.duration_ms`. Returns the spool file to
    /// move into the blob store, or `None` when it is already there (a
    /// repeated finalize) or there never was any audio.
    fn prepare(&self, meta: &mut RecordingMeta) -> Result<Option<PathBuf>, ArchiveError> {
        let key = BlobKey::audio(meta.started_at, meta.id);
        let spool_wav = self.dir.spool_wav(meta.id);
        if spool_wav.exists() {
            let mut f = OpenOptions::new().read(true).write(true).open(&spool_wav).map_err(io_err(&spool_wav))?;
            let fin = wav::finalize(&mut f, |f, len| f.set_len(len))
                .map_err(|source| ArchiveError::Wav { path: spool_wav.clone(), source })?;
            drop(f);
            if fin.truncated_bytes > 0 {
                tracing::warn!(recording = %meta.id, bytes = fin.truncated_bytes, "cut a torn audio frame");
            }
            let (sha, bytes) = sha256_file(&spool_wav).map_err(io_err(&spool_wav))?;
            set_audio(meta, &key, fin.format, fin.duration_ms(), sha, bytes);
            return Ok(Some(spool_wav));
        }
        if let Some(len) = self.blobs.len(&key).map_err(ArchiveError::Blob)? {
            // Moved already (finalized and written, then a crash): its facts come from the stored copy.
            let head =
                self.blobs.read_range(&key, 0, len.min(wav::MAX_HEADER_LEN as u64)).map_err(ArchiveError::Blob)?;
            let format = wav::read_format(&head)
                .map_err(|source| ArchiveError::Wav { path: PathBuf::from(key.as_str()), source })?;
            let (sha, bytes) = self.blobs.sha256(&key).map_err(ArchiveError::Blob)?;
            let frames = bytes.saturating_sub(format.header_len() as u64) / format.block_align().max(1) as u64;
            let duration = frames * 1000 / format.sample_rate.max(1) as u64;
            set_audio(meta, &key, format, duration, sha, bytes);
            return Ok(None);
        }
        meta.audio = None;
        if let Some(end) = meta.ended_at {
            meta.duration_ms = (end - meta.started_at).whole_milliseconds().max(0) as u64;
        }
        Ok(None)
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

    /// The final metadata of an archived recording, from its blob.
    pub fn load(&self, started_at: OffsetDateTime, id: RecordingId) -> Result<RecordingMeta, ArchiveError> {
        let key = BlobKey::meta(started_at, id);
        let data = self.blobs.read(&key).map_err(ArchiveError::Blob)?;
        RecordingMeta::from_json(&data)
            .map_err(|source| ArchiveError::Json { path: PathBuf::from(key.as_str()), source })
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

fn set_audio(
    meta: &mut RecordingMeta,
    key: &BlobKey,
    format: wav::WavFormat,
    duration_ms: u64,
    sha: String,
    bytes: u64,
) {
    meta.duration_ms = duration_ms;
    meta.audio = Some(AudioInfo {
        format: "wav".into(),
        sample_rate: format.sample_rate,
        channels: format.channels,
        bytes,
        duration_ms,
        sha256: Some(sha),
        path: key.as_str().to_owned(),
    });
}
