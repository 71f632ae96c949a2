//! The writer thread: appends committed PCM to each recording's spool WAV
//! and makes it durable.
//!
//! Appends are `write(2)`s as soon as a chunk arrives (the ingest thread
//! commits every few hundred ms), so a killed process loses only what had
//! not been committed yet; every `sync_interval` each file written since
//! the last sync gets `fdatasync(2)`, bounding what a lost machine loses.
//! Buffers go back to the ingest thread for reuse.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use model::{RecordingId, RecordingMeta};

/// Work for the writer.
#[derive(Debug)]
pub enum WriteJob {
    Open {
        id: RecordingId,
        path: PathBuf,
        header: Vec<u8>,
    },
    Append {
        id: RecordingId,
        data: Vec<u8>,
    },
    /// Final sync and close; `meta` goes on to the driver when done.
    Close {
        id: RecordingId,
        meta: Box<RecordingMeta>,
    },
    Shutdown,
}

/// What the writer reports.
#[derive(Debug)]
pub enum WriterEvent {
    /// The file of `id` can no longer be written.
    Failed { id: RecordingId, reason: String },
    /// All audio of the recording is on disk; archive it.
    Closed { meta: Box<RecordingMeta>, bytes: u64, error: Option<String> },
}

struct OpenFile {
    file: File,
    dirty: bool,
    bytes: u64,
    error: Option<String>,
}

/// Runs the writer loop until [`WriteJob::Shutdown`].
pub fn run(jobs: Receiver<WriteJob>, events: Sender<WriterEvent>, recycle: Sender<Vec<u8>>, sync_interval: Duration) {
    let mut files: HashMap<RecordingId, OpenFile> = HashMap::new();
    let mut next_sync = Instant::now() + sync_interval;
    loop {
        let wait = next_sync.saturating_duration_since(Instant::now());
        match jobs.recv_timeout(wait) {
            Ok(WriteJob::Open { id, path, header }) => {
                let opened =
                    OpenOptions::new().create(true).truncate(true).write(true).open(&path).and_then(|mut f| {
                        f.write_all(&header)?;
                        f.sync_all()?;
                        if let Some(dir) = path.parent() {
                            File::open(dir)?.sync_all()?;
                        }
                        Ok(f)
                    });
                match opened {
                    Ok(file) => {
                        files.insert(id, OpenFile { file, dirty: false, bytes: 0, error: None });
                    }
                    Err(e) => {
                        tracing::error!(recording = %id, path = %path.display(), error = %e, "cannot create audio file");
                        let _ = events.send(WriterEvent::Failed { id, reason: e.to_string() });
                    }
                }
            }
            Ok(WriteJob::Append { id, mut data }) => {
                if let Some(f) = files.get_mut(&id) {
                    if f.error.is_none() {
                        match f.file.write_all(&data) {
                            Ok(()) => {
                                f.bytes += data.len() as u64;
                                f.dirty = true;
                            }
                            Err(e) => {
                                tracing::error!(recording = %id, error = %e, "audio write failed");
                                f.error = Some(e.to_string());
                                let _ = events.send(WriterEvent::Failed { id, reason: e.to_string() });
                            }
                        }
                    }
                }
                data.clear();
                let _ = recycle.send(data);
            }
            Ok(WriteJob::Close { id, meta }) => {
                let (bytes, error) = match files.remove(&id) {
                    Some(mut f) => {
                        if let Err(e) = f.file.sync_data() {
                            f.error.get_or_insert(e.to_string());
                        }
                        (f.bytes, f.error)
                    }
                    None => (0, Some("audio file was never opened".to_owned())),
                };
                let _ = events.send(WriterEvent::Closed { meta, bytes, error });
            }
            Ok(WriteJob::Shutdown) | Err(RecvTimeoutError::Disconnected) => {
                for f in files.values_mut() {
                    let _ = f.file.sync_data();
                }
                return;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if Instant::now() >= next_sync {
            for (id, f) in files.iter_mut().filter(|(_, f)| f.dirty && f.error.is_none()) {
                if let Err(e) = f.file.sync_data() {
                    tracing::error!(recording = %id, error = %e, "fdatasync failed");
                    f.error = Some(e.to_string());
                    let _ = events.send(WriterEvent::Failed { id: *id, reason: e.to_string() });
                }
                f.dirty = false;
            }
            next_sync = Instant::now() + sync_interval;
        }
    }
}
