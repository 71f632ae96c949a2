//! The persistence worker: makes metadata durable and finishes recordings.
//!
//! - `Active`: the spool JSON of a running recording is rewritten
//!   (durably) and the core is told (a new call is answered only then);
//!   the index is updated in the background ([`ActiveIndexer`]), so the
//!   database never delays an answer; its errors are only logged, the
//!   final write carries everything anyway. Saves waiting together share
//!   one directory fsync and one database commit.
//! - `Closed`: the engine has flushed the audio; archive it (header,
//!   checksum, move, final JSON), index it, then drop the spool JSON. If
//!   the index is unreachable the recording waits in a retry list (and in
//!   the spool, so a restart also finds it) until the database is back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::{RecordingId, RecordingMeta, RecordingState};
use store::{Archive, MetaDb};
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

#[derive(Debug)]
pub enum PersistJob {
    /// Save `meta` of a running recording; acknowledge `seq` to the core.
    Active {
        meta: Box<RecordingMeta>,
        seq: u64,
    },
    Closed {
        meta: Box<RecordingMeta>,
        error: Option<String>,
    },
}

/// The outcome of an `Active` save, for [`recorder::Recorder::saved`].
#[derive(Debug)]
pub struct SaveAck {
    pub id: RecordingId,
    pub seq: u64,
    pub result: Result<(), String>,
}

/// Most saves written with one directory fsync and one commit.
const SAVE_BATCH: usize = 256;

/// Recordings that ended but are not yet archived and indexed (queued,
/// in progress, or waiting to retry because the index is down): a gauge
/// for /metrics, written by the worker.
pub type Backlog = Arc<std::sync::atomic::AtomicUsize>;

/// Finishes one recording: archive, index, forget. Returns the recording
/// when indexing must be retried.
pub async fn finish(archive: &Archive, db: &MetaDb, mut meta: RecordingMeta) -> Result<(), RecordingMeta> {
    let a = archive.clone();
    let result = tokio::task::spawn_blocking(move || {
        let r = a.finalize(&mut meta);
        (meta, r)
    })
    .await;
    let meta = match result {
        Ok((meta, Ok(()))) => meta,
        Ok((meta, Err(e))) => {
            tracing::error!(recording = %meta.id, error = %e, "archiving failed; will retry");
            return Err(meta);
        }
        Err(e) => {
            tracing::error!(error = %e, "archiving task panicked");
            return Ok(());
        }
    };
    if let Err(e) = db.upsert(&meta).await {
        tracing::warn!(recording = %meta.id, error = %e, "index unavailable; will retry");
        return Err(meta);
    }
    let a = archive.clone();
    let id = meta.id;
    match tokio::task::spawn_blocking(move || a.forget_spool(id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(recording = %id, error = %e, "could not remove spool metadata"),
        Err(e) => tracing::warn!(error = %e, "spool cleanup task panicked"),
    }
    tracing::info!(
        recording = %meta.id,
        state = %meta.state,
        reason = meta.reason().unwrap_or(""),
        duration_ms = meta.duration_ms,
        "recording archived"
    );
    Ok(())
}

/// Indexes snapshots of running recordings in the background, only the
/// newest of each, so a slow or unreachable database never holds up the
/// spool writes that calls wait for. A failed batch is only logged: the
/// spool has it, and the final write carries everything.
#[derive(Clone, Default)]
struct ActiveIndexer {
    pending: Arc<Mutex<HashMap<RecordingId, Box<RecordingMeta>>>>,
    wake: Arc<Notify>,
}

impl ActiveIndexer {
    fn push(&self, metas: impl IntoIterator<Item = Box<RecordingMeta>>) {
        let mut pending = self.pending.lock().expect("indexer lock");
        for m in metas {
            pending.insert(m.id, m);
        }
        self.wake.notify_one();
    }

    async fn run(self, db: MetaDb) {
        loop {
            self.wake.notified().await;
            let batch = std::mem::take(&mut *self.pending.lock().expect("indexer lock"));
            if batch.is_empty() {
                continue;
            }
            let metas: Vec<&RecordingMeta> = batch.values().map(AsRef::as_ref).collect();
            if let Err(e) = db.upsert_many(&metas).await {
                tracing::warn!(recordings = metas.len(), error = %e, "index update failed (kept in spool)");
            }
        }
    }
}

/// Writes a batch of running recordings' metadata to the spool and tells
/// the core which saves are durable. Returns the snapshots written.
async fn save_active(
    archive: &Archive,
    acks: &mpsc::UnboundedSender<SaveAck>,
    saves: Vec<(Box<RecordingMeta>, u64)>,
) -> Vec<Box<RecordingMeta>> {
    // Only the newest snapshot of each recording is written; its ack covers the older ones.
    let mut newest: Vec<(Box<RecordingMeta>, u64)> = Vec::with_capacity(saves.len());
    for (meta, seq) in saves {
        match newest.iter_mut().find(|(m, _)| m.id == meta.id) {
            Some(slot) if slot.1 < seq => *slot = (meta, seq),
            Some(_) => {}
            None => newest.push((meta, seq)),
        }
    }
    let a = archive.clone();
    let tickets: Vec<(RecordingId, u64)> = newest.iter().map(|(m, seq)| (m.id, *seq)).collect();
    let joined = tokio::task::spawn_blocking(move || {
        let metas: Vec<&RecordingMeta> = newest.iter().map(|(m, _)| m.as_ref()).collect();
        let results: Vec<Result<(), String>> =
            a.save_active_all(&metas).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        (newest, results)
    })
    .await;
    let (newest, results) = match joined {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "metadata save task failed");
            for (id, seq) in tickets {
                let _ = acks.send(SaveAck { id, seq, result: Err("metadata save task failed".into()) });
            }
            return Vec::new();
        }
    };
    let mut written = Vec::with_capacity(newest.len());
    for ((meta, seq), result) in newest.into_iter().zip(results) {
        match &result {
            Ok(()) => written.push(meta.clone()),
            Err(e) => tracing::error!(recording = %meta.id, error = %e, "cannot save recording metadata"),
        }
        let _ = acks.send(SaveAck { id: meta.id, seq, result });
    }
    written
}

pub async fn run(
    mut rx: mpsc::UnboundedReceiver<PersistJob>,
    acks: mpsc::UnboundedSender<SaveAck>,
    backlog: Backlog,
    archive: Archive,
    db: MetaDb,
) {
    let mut closed: HashSet<RecordingId> = HashSet::new();
    let mut closed_order: VecDeque<RecordingId> = VecDeque::new();
    let mut tasks: JoinSet<Result<(), RecordingMeta>> = JoinSet::new();
    let mut retry: Vec<RecordingMeta> = Vec::new();
    let mut retry_tick = tokio::time::interval(Duration::from_secs(5));
    let concurrency = 4;
    let indexer = ActiveIndexer::default();
    let indexing = tokio::spawn(indexer.clone().run(db.clone()));
    let mut waiting: VecDeque<RecordingMeta> = VecDeque::new();
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { break };
                // Take every job already queued: saves are written as one batch.
                let mut saves = Vec::new();
                let mut next = Some(job);
                while let Some(job) = next.take() {
                    match job {
                        PersistJob::Active { meta, seq } => {
                            // A late snapshot of a recording already closed is dropped.
                            if !closed.contains(&meta.id) {
                                saves.push((meta, seq));
                            }
                        }
                        PersistJob::Closed { mut meta, error } => {
                            if let Some(err) = error {
                                if meta.state != RecordingState::Failed {
                                    let at = OffsetDateTime::now_utc();
                                    meta.transition(RecordingState::Failed, at, format!("audio write error: {err}"));
                                }
                            }
                            closed.insert(meta.id);
                            closed_order.push_back(meta.id);
                            if closed_order.len() > 100_000 {
                                if let Some(old) = closed_order.pop_front() { closed.remove(&old); }
                            }
                            waiting.push_back(*meta);
                        }
                    }
                    if saves.len() < SAVE_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !saves.is_empty() {
                    indexer.push(save_active(&archive, &acks, saves).await);
                }
            },
            Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                if let Ok(Err(meta)) = done {
                    retry.push(meta);
                }
            }
            _ = retry_tick.tick() => {
                for meta in std::mem::take(&mut retry) {
                    waiting.push_back(meta);
                }
            }
        }
        while tasks.len() < concurrency {
            let Some(meta) = waiting.pop_front() else { break };
            let (a, d) = (archive.clone(), db.clone());
            tasks.spawn(async move { finish(&a, &d, meta).await });
        }
        backlog.store(waiting.len() + tasks.len() + retry.len(), std::sync::atomic::Ordering::Relaxed);
    }
    // Channel closed (shutdown): finish everything queued, one last try for retries.
    for meta in waiting.drain(..) {
        let (a, d) = (archive.clone(), db.clone());
        tasks.spawn(async move { finish(&a, &d, meta).await });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(Err(meta)) = done {
            retry.push(meta);
        }
    }
    for meta in retry {
        if finish(&archive, &db, meta.clone()).await.is_err() {
            tracing::error!(recording = %meta.id, "left in the spool; the next start will finish it");
        }
    }
    indexing.abort();
}
