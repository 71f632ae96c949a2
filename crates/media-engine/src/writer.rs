//! The writer thread: appends committed PCM to each recording's spool WAV
//! and makes it durable.
//!
//! Appends are `write(2)`s as soon as a chunk arrives (the ingest thread
//! commits every few hundred ms), so a killed process loses only what had
//! not been committed yet. Durability against a lost machine comes from
//! one `syncfs(2)` of the spool's filesystem every `sync_interval` while
//! anything was written, not one `fdatasync(2)` per file: with a thousand
//! calls that is one journal commit a second instead of a thousand, which
//! is what lets the disk keep up with the calls. New files need no sync of
//! their own (the next `syncfs` covers their header and directory entry);
//! a closing file is reported closed only after a `syncfs` that covers
//! all its audio, shared by every file that closed in the same batch.
//!
//! The bytes waiting in the writer's queue are counted
//! ([`WriterBacklog`]): the engine publishes them, and the node stops
//! taking new calls while the disk is that far behind, instead of letting
//! memory grow without bound.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
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

/// Audio bytes handed to the writer and not written yet.
pub type WriterBacklog = Arc<AtomicU64>;

/// Durations of the writer's syncs, for metrics.
pub type SyncLatency = Arc<std::sync::Mutex<model::latency::LatencyHistogram>>;

struct OpenFile {
    file: File,
    bytes: u64,
    error: Option<String>,
}

/// Jobs taken from the queue before the batch's shared sync.
const BATCH: usize = 1024;
/// How long a closed file waits for company in the sync that reports it.
const CLOSE_WAIT: Duration = Duration::from_millis(100);

struct Writer {
    spool: PathBuf,
    files: HashMap<RecordingId, OpenFile>,
    /// Written since the last sync.
    dirty: bool,
    /// Closed files waiting for the sync that covers them.
    closing: Vec<(RecordingId, Box<RecordingMeta>, u64, Option<String>)>,
    events: Sender<WriterEvent>,
    recycle: Sender<Vec<u8>>,
    backlog: WriterBacklog,
    sync_latency: SyncLatency,
}

impl Writer {
    fn job(&mut self, job: WriteJob) {
        match job {
            WriteJob::Open { id, path, header } => self.open(id, &path, &header),
            WriteJob::Append { id, mut data } => {
                self.backlog.fetch_sub(data.len() as u64, Ordering::Relaxed);
                if let Some(f) = self.files.get_mut(&id) {
                    if f.error.is_none() {
                        match f.file.write_all(&data) {
                            Ok(()) => {
                                f.bytes += data.len() as u64;
                                self.dirty = true;
                            }
                            Err(e) => {
                                tracing::error!(recording = %id, error = %e, "audio write failed");
                                f.error = Some(e.to_string());
                                let _ = self.events.send(WriterEvent::Failed { id, reason: e.to_string() });
                            }
                        }
                    }
                }
                data.clear();
                let _ = self.recycle.send(data);
            }
            WriteJob::Close { id, meta } => match self.files.remove(&id) {
                Some(f) => self.closing.push((id, meta, f.bytes, f.error)),
                None => {
                    let error = Some("audio file was never opened".to_owned());
                    let _ = self.events.send(WriterEvent::Closed { meta, bytes: 0, error });
                }
            },
            WriteJob::Shutdown => {}
        }
    }

    fn open(&mut self, id: RecordingId, path: &Path, header: &[u8]) {
        let opened = OpenOptions::new().create(true).truncate(true).write(true).open(path).and_then(|mut f| {
            f.write_all(header)?;
            Ok(f)
        });
        match opened {
            Ok(file) => {
                self.files.insert(id, OpenFile { file, bytes: 0, error: None });
                self.dirty = true;
            }
            Err(e) => {
                tracing::error!(recording = %id, path = %path.display(), error = %e, "cannot create audio file");
                let _ = self.events.send(WriterEvent::Failed { id, reason: e.to_string() });
            }
        }
    }

    /// One `syncfs` for everything written; on failure, each file is synced
    /// on its own to learn which ones failed.
    fn sync(&mut self) {
        if !self.dirty && self.closing.is_empty() {
            return;
        }
        let started = Instant::now();
        let synced = File::open(&self.spool).and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from));
        self.sync_latency.lock().expect("latency lock").observe(started.elapsed());
        if let Err(e) = synced {
            tracing::warn!(error = %e, "syncfs failed; syncing each audio file");
            for (id, f) in self.files.iter_mut().filter(|(_, f)| f.error.is_none()) {
                if let Err(e) = f.file.sync_data() {
                    tracing::error!(recording = %id, error = %e, "fdatasync failed");
                    f.error = Some(e.to_string());
                    let _ = self.events.send(WriterEvent::Failed { id: *id, reason: e.to_string() });
                }
            }
            for (id, _, _, error) in &mut self.closing {
                if error.is_none() {
                    // The file is closed; reopen it to learn whether its data reached the disk.
                    let path = self.spool.join(format!("{id}.wav"));
                    if let Err(e) = File::open(&path).and_then(|f| f.sync_data()) {
                        *error = Some(e.to_string());
                    }
                }
            }
        }
        self.dirty = false;
        for (_, meta, bytes, error) in self.closing.drain(..) {
            let _ = self.events.send(WriterEvent::Closed { meta, bytes, error });
        }
    }
}

/// Runs the writer loop until [`WriteJob::Shutdown`]. `spool` is the
/// directory the audio files are in (its filesystem is the one synced).
pub fn run(
    spool: PathBuf,
    jobs: Receiver<WriteJob>,
    events: Sender<WriterEvent>,
    recycle: Sender<Vec<u8>>,
    backlog: WriterBacklog,
    sync_interval: Duration,
    sync_latency: SyncLatency,
) {
    let mut w = Writer {
        spool,
        files: HashMap::new(),
        dirty: false,
        closing: Vec::new(),
        events,
        recycle,
        backlog,
        sync_latency,
    };
    let mut next_sync = Instant::now() + sync_interval;
    let mut close_due: Option<Instant> = None;
    loop {
        let due = close_due.map_or(next_sync, |c| c.min(next_sync));
        let wait = due.saturating_duration_since(Instant::now());
        let first = match jobs.recv_timeout(wait) {
            Ok(job) => Some(job),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => Some(WriteJob::Shutdown),
        };
        let mut shutdown = false;
        let mut next = first;
        let mut taken = 0;
        while let Some(job) = next.take() {
            shutdown |= matches!(job, WriteJob::Shutdown);
            w.job(job);
            taken += 1;
            if taken < BATCH && !shutdown {
                next = jobs.try_recv().ok();
            }
        }
        if shutdown {
            w.sync();
            return;
        }
        // Closed files are reported after a sync within CLOSE_WAIT; the rest on the cadence.
        let now = Instant::now();
        if !w.closing.is_empty() && close_due.is_none() {
            close_due = Some(now + CLOSE_WAIT);
        }
        if now >= next_sync || close_due.is_some_and(|c| now >= c) {
            w.sync();
            close_due = None;
            if now >= next_sync {
                next_sync = Instant::now() + sync_interval;
            }
        }
    }
}
