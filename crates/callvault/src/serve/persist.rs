//! The persistence worker: makes metadata durable and finishes recordings.
//!
//! - `Active`: the spool JSON of a running recording is rewritten
//!   (durably) and the core is told (a new call is answered only then);
//!   the index is updated in the background (the `index-running` worker), so the
//!   database never delays an answer; its errors are only logged, the
//!   final write carries everything anyway. Saves waiting together share
//!   one directory fsync and one database commit.
//! - `Closed`: the engine has flushed the audio; the recording waits to
//!   be archived, in batches ([`archive_batch`]): header, checksum, move
//!   and final JSON made durable by one filesystem sync per batch, one
//!   database commit, then the spool entries go. While the archive keeps
//!   up, an ended recording waits in memory for the next batch (less than
//!   a second). When it does not (a burst, a slow disk, the index down),
//!   or when a recording failed (its reason must survive a restart), the
//!   final metadata is written to the spool JSON and only its id waits:
//!   the spool is the durable queue of the archive, memory stays bounded
//!   (at most [`MEMORY_QUEUE`] recordings), and a restart finds every
//!   waiting recording with its real end.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use model::{RecordingId, RecordingMeta, RecordingState};
use store::{Archive, ClusterIndex, RecordingIndex};

use super::cluster::Cluster;
use time::OffsetDateTime;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;

#[derive(Debug)]
pub enum PersistJob {
    /// Save `meta` of a running recording; acknowledge `seq` to the core.
    /// `first` marks the save that starts the recording.
    Active {
        meta: Box<RecordingMeta>,
        seq: u64,
        first: bool,
    },
    Closed {
        meta: Box<RecordingMeta>,
        error: Option<String>,
    },
}

/// Durations of metadata writes (one directory fsync per batch), for metrics.
pub type SyncLatency = Arc<Mutex<model::latency::LatencyHistogram>>;

/// The outcome of an `Active` save, for [`recorder::Recorder::saved`].
#[derive(Debug)]
pub struct SaveAck {
    pub id: RecordingId,
    pub seq: u64,
    pub result: Result<(), String>,
}

/// Most saves written with one directory fsync and one commit.
const SAVE_BATCH: usize = 256;
/// Most recordings archived with one sync per directory and one commit.
const ARCHIVE_BATCH: usize = 256;
/// Archive batches in flight: one, so archiving never takes the disk from
/// the saves that calls being set up wait for.
const ARCHIVE_CONCURRENCY: usize = 1;

/// Where this node's finished recordings go besides the index: the
/// cluster's replication targets (none for a single node).
#[derive(Debug, Clone, Default)]
pub struct Replication(pub Option<Arc<Cluster>>);

impl Replication {
    fn targets(&self) -> Vec<String> {
        self.0.as_ref().map(|c| c.targets()).unwrap_or_default()
    }

    fn queued(&self) {
        if let Some(c) = &self.0 {
            c.outbox_wake.notify_waiters();
        }
    }
}

/// Recordings that ended but are not yet archived and indexed (queued,
/// in progress, or waiting to retry because the index is down): a gauge
/// for /metrics, written by the worker.
pub type Backlog = Arc<std::sync::atomic::AtomicUsize>;

/// Ended recordings waiting in memory at most; beyond, they wait in the spool.
pub const MEMORY_QUEUE: usize = 1024;

/// A recording that ended and waits to be archived.
#[derive(Debug)]
pub enum Ended {
    /// Final metadata in memory only (the spool JSON is the last running snapshot).
    InMemory(Box<RecordingMeta>),
    /// Final metadata in the spool JSON.
    Spooled(RecordingId),
}

/// Archives and indexes ended recordings, then forgets their spool
/// entries. Returns those to try again later (the index or the disk
/// failed), with their metadata; every step is idempotent, so a retry or a
/// crash half-way repeats nothing harmful.
pub async fn archive_batch(
    archive: &Archive,
    db: &dyn ClusterIndex,
    replication: &Replication,
    items: Vec<Ended>,
) -> Vec<RecordingMeta> {
    if items.is_empty() {
        return Vec::new();
    }
    let a = archive.clone();
    let finalized = tokio::task::spawn_blocking(move || {
        let mut metas = Vec::with_capacity(items.len());
        for item in items {
            match item {
                Ended::InMemory(m) => metas.push(*m),
                Ended::Spooled(id) => match a.load_spool(id) {
                    Ok(m) => metas.push(m),
                    // Archived and forgotten already (a repeated batch).
                    Err(store::ArchiveError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::error!(recording = %id, error = %e, "spool metadata unreadable; left for recovery at the next start");
                    }
                },
            }
        }
        let results = a.finalize_all(&mut metas);
        let (mut done, mut retry) = (Vec::with_capacity(metas.len()), Vec::new());
        for (meta, r) in metas.into_iter().zip(results) {
            match r {
                Ok(()) => done.push(meta),
                Err(e) => {
                    tracing::error!(recording = %meta.id, error = %e, "archiving failed; will retry");
                    retry.push(meta);
                }
            }
        }
        (done, retry)
    })
    .await;
    let (done, mut retry) = match finalized {
        Ok(r) => r,
        Err(e) => {
            // The batch is lost from memory; the spool still has every recording for the next start.
            tracing::error!(error = %e, "archiving task failed");
            return Vec::new();
        }
    };
    if done.is_empty() {
        return retry;
    }
    let refs: Vec<&RecordingMeta> = done.iter().collect();
    let targets = replication.targets();
    let indexed = if targets.is_empty() {
        db.upsert_many(&refs).await
    } else {
        let lanes = [model::replica::Lane::Meta, model::replica::Lane::Audio];
        db.upsert_and_enqueue(&refs, &targets, &lanes, super::cluster::now_ms()).await
    };
    if !targets.is_empty() && indexed.is_ok() {
        replication.queued();
    }
    if let Err(e) = indexed {
        tracing::warn!(recordings = done.len(), error = %e, "index unavailable; will retry");
        retry.extend(done);
        return retry;
    }
    let a = archive.clone();
    let ids: Vec<RecordingId> = done.iter().map(|m| m.id).collect();
    match tokio::task::spawn_blocking(move || a.forget_spool_all(&ids)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not remove spool metadata (the next start tidies it)"),
        Err(e) => tracing::warn!(error = %e, "spool cleanup task failed"),
    }
    for meta in &done {
        tracing::info!(
            recording = %meta.id,
            state = %meta.state,
            reason = meta.reason().unwrap_or(""),
            duration_ms = meta.duration_ms,
            "recording archived"
        );
    }
    retry
}

/// Finishes recordings whose final metadata is only in memory (recovery,
/// offline completion). Returns how many could not be finished (they stay
/// in the spool for the next start).
pub async fn finish_all(
    archive: &Archive,
    db: &dyn ClusterIndex,
    replication: &Replication,
    metas: Vec<RecordingMeta>,
) -> usize {
    let mut failed = 0;
    let mut items: Vec<Ended> = metas.into_iter().map(|m| Ended::InMemory(Box::new(m))).collect();
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(ARCHIVE_BATCH));
        failed += archive_batch(archive, db, replication, std::mem::replace(&mut items, rest)).await.len();
    }
    failed
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

    /// A recording that ended needs no snapshot indexed any more.
    fn forget(&self, id: RecordingId) {
        self.pending.lock().expect("indexer lock").remove(&id);
    }
}

/// The active indexer as a background worker (its status in /api/workers).
struct IndexWorker {
    indexer: ActiveIndexer,
    db: Arc<dyn RecordingIndex>,
    status: background::WorkerStatus,
}

#[async_trait::async_trait]
impl background::Worker for IndexWorker {
    fn name(&self) -> String {
        "index-running".into()
    }

    async fn work(&mut self) -> Result<background::WorkState, String> {
        let batch = std::mem::take(&mut *self.indexer.pending.lock().expect("indexer lock"));
        self.status.queue_length = Some(0);
        if batch.is_empty() {
            return Ok(background::WorkState::Idle);
        }
        let metas: Vec<&RecordingMeta> = batch.values().map(AsRef::as_ref).collect();
        // A failed batch is not retried: the spool holds it and the final write carries everything.
        self.db
            .upsert_many(&metas)
            .await
            .map_err(|e| format!("index update of {} running recordings failed (kept in spool): {e}", metas.len()))?;
        self.status.items_done += metas.len() as u64;
        Ok(background::WorkState::Busy)
    }

    async fn wait_for_work(&mut self) {
        self.indexer.wake.notified().await;
    }

    fn status(&self) -> background::WorkerStatus {
        let mut s = self.status.clone();
        s.queue_length = Some(self.indexer.pending.lock().expect("indexer lock").len() as u64);
        s
    }
}

/// One spool write: snapshots of running recordings (acknowledged to the
/// core) and final metadata of ended ones, with one directory fsync.
/// Returns the snapshots written (for the index) and whether each ended
/// recording was written (in order).
async fn save_spool(
    archive: &Archive,
    acks: &mpsc::UnboundedSender<SaveAck>,
    sync_latency: &SyncLatency,
    saves: Vec<(Box<RecordingMeta>, u64)>,
    ended: &[RecordingMeta],
) -> (Vec<Box<RecordingMeta>>, Vec<bool>) {
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
    let ended_owned = ended.to_vec();
    let latency = sync_latency.clone();
    let joined = tokio::task::spawn_blocking(move || {
        let mut metas: Vec<&RecordingMeta> = newest.iter().map(|(m, _)| m.as_ref()).collect();
        metas.extend(ended_owned.iter());
        let started = std::time::Instant::now();
        let results: Vec<Result<(), String>> =
            a.save_spool_all(&metas).into_iter().map(|r| r.map_err(|e| e.to_string())).collect();
        latency.lock().expect("latency lock").observe(started.elapsed());
        (newest, results)
    })
    .await;
    let (newest, mut results) = match joined {
        Ok(done) => done,
        Err(e) => {
            tracing::error!(error = %e, "metadata save task failed");
            for (id, seq) in tickets {
                let _ = acks.send(SaveAck { id, seq, result: Err("metadata save task failed".into()) });
            }
            return (Vec::new(), vec![false; ended.len()]);
        }
    };
    let ended_results = results.split_off(newest.len());
    let mut written = Vec::with_capacity(newest.len());
    for ((meta, seq), result) in newest.into_iter().zip(results) {
        match &result {
            Ok(()) => written.push(meta.clone()),
            Err(e) => tracing::error!(recording = %meta.id, error = %e, "cannot save recording metadata"),
        }
        let _ = acks.send(SaveAck { id: meta.id, seq, result });
    }
    let ended_ok = ended
        .iter()
        .zip(ended_results)
        .map(|(m, r)| match r {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(recording = %m.id, error = %e, "cannot save final metadata; will retry");
                false
            }
        })
        .collect();
    (written, ended_ok)
}

/// What the persistence worker writes to and reports through.
pub struct PersistWiring {
    /// Save outcomes for the recorder core.
    pub acks: mpsc::UnboundedSender<SaveAck>,
    pub backlog: Backlog,
    pub archive: Archive,
    pub db: Arc<dyn ClusterIndex>,
    pub replication: Replication,
    pub runner: background::Runner,
    pub sync_latency: SyncLatency,
}

pub async fn run(mut rx: mpsc::UnboundedReceiver<PersistJob>, wiring: PersistWiring) {
    let PersistWiring { acks, backlog, archive, db, replication, runner, sync_latency } = wiring;
    // Recordings between their first save and their close: a snapshot of
    // any other (one that would land after the close) is dropped, so no
    // spool entry is written for a recording already archived. Bounded by
    // the calls in progress.
    let mut running: HashSet<RecordingId> = HashSet::new();
    // Ended recordings to archive, in order; `in_memory` counts those whose
    // metadata is held here (at most MEMORY_QUEUE), the rest are in the spool.
    let mut waiting: VecDeque<Ended> = VecDeque::new();
    let mut in_memory = 0usize;
    // Ended recordings whose final metadata could not be written to the
    // spool (disk full): retried every few seconds.
    let mut unsaved: Vec<RecordingMeta> = Vec::new();
    // Spooled recordings whose archiving failed, back in the queue at the next tick.
    let mut retry: Vec<RecordingId> = Vec::new();
    // The archive batch under way, yielding what to retry, and its size.
    let mut tasks: JoinSet<Vec<RecordingMeta>> = JoinSet::new();
    let mut batch_sizes: HashMap<tokio::task::Id, usize> = HashMap::new();
    let mut retry_tick = tokio::time::interval(Duration::from_secs(5));
    let indexer = ActiveIndexer::default();
    let indexing = runner.spawn(IndexWorker {
        indexer: indexer.clone(),
        db: db.clone() as Arc<dyn RecordingIndex>,
        status: background::WorkerStatus::default(),
    });
    loop {
        tokio::select! {
            job = rx.recv() => {
                let Some(job) = job else { break };
                // Take every job already queued: saves are written as one batch.
                let mut saves = Vec::new();
                let mut spill = Vec::new();
                let mut next = Some(job);
                while let Some(job) = next.take() {
                    match job {
                        PersistJob::Active { meta, seq, first } => {
                            if first {
                                running.insert(meta.id);
                            }
                            if running.contains(&meta.id) {
                                saves.push((meta, seq));
                            } else {
                                let _ = acks.send(SaveAck { id: meta.id, seq, result: Err("recording already closed".into()) });
                            }
                        }
                        PersistJob::Closed { mut meta, error } => {
                            if let Some(err) = error {
                                if meta.state != RecordingState::Failed {
                                    let at = OffsetDateTime::now_utc();
                                    meta.transition(RecordingState::Failed, at, format!("audio write error: {err}"));
                                }
                            }
                            running.remove(&meta.id);
                            indexer.forget(meta.id);
                            // A snapshot of this recording in this batch must not overwrite its end.
                            saves.retain(|(m, _): &(Box<RecordingMeta>, u64)| m.id != meta.id);
                            // A failure's reason must survive a restart; a backlog must not grow memory.
                            if meta.state == RecordingState::Failed || in_memory >= MEMORY_QUEUE {
                                spill.push(*meta);
                            } else {
                                in_memory += 1;
                                waiting.push_back(Ended::InMemory(meta));
                            }
                        }
                    }
                    if saves.len() + spill.len() < SAVE_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if !saves.is_empty() || !spill.is_empty() {
                    let (written, spilled) = save_spool(&archive, &acks, &sync_latency, saves, &spill).await;
                    indexer.push(written);
                    for (meta, ok) in spill.into_iter().zip(spilled) {
                        if ok { waiting.push_back(Ended::Spooled(meta.id)) } else { unsaved.push(meta) }
                    }
                }
            },
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let failed = match done {
                    Ok((task, failed)) => {
                        batch_sizes.remove(&task);
                        failed
                    }
                    Err(e) => {
                        // The batch is lost from memory; the spool has every recording for the next start.
                        batch_sizes.remove(&e.id());
                        tracing::error!(error = %e, "archive batch task failed");
                        Vec::new()
                    }
                };
                if !failed.is_empty() {
                    // Whatever must wait for the index or the disk waits in the spool, not here.
                    let (_, spilled) = save_spool(&archive, &acks, &sync_latency, Vec::new(), &failed).await;
                    for (meta, ok) in failed.into_iter().zip(spilled) {
                        if ok { retry.push(meta.id) } else { unsaved.push(meta) }
                    }
                }
            }
            _ = retry_tick.tick() => {
                waiting.extend(retry.drain(..).map(Ended::Spooled));
                if !unsaved.is_empty() {
                    let metas = std::mem::take(&mut unsaved);
                    let (_, ok) = save_spool(&archive, &acks, &sync_latency, Vec::new(), &metas).await;
                    for (meta, ok) in metas.into_iter().zip(ok) {
                        if ok { waiting.push_back(Ended::Spooled(meta.id)) } else { unsaved.push(meta) }
                    }
                }
            }
        }
        while tasks.len() < ARCHIVE_CONCURRENCY && !waiting.is_empty() {
            let n = waiting.len().min(ARCHIVE_BATCH);
            let items: Vec<Ended> = waiting.drain(..n).collect();
            in_memory -= items.iter().filter(|i| matches!(i, Ended::InMemory(_))).count();
            let (a, d, r) = (archive.clone(), db.clone(), replication.clone());
            let task = tasks.spawn(async move { archive_batch(&a, d.as_ref(), &r, items).await });
            batch_sizes.insert(task.id(), n);
        }
        let in_flight: usize = batch_sizes.values().sum();
        let pending = waiting.len() + retry.len() + unsaved.len() + in_flight;
        backlog.store(pending, std::sync::atomic::Ordering::Relaxed);
    }
    // Channel closed (shutdown): finish everything queued; what still fails stays in the spool.
    while let Some(done) = tasks.join_next().await {
        if let Ok(failed) = done {
            unsaved.extend(failed);
        }
    }
    waiting.extend(retry.drain(..).map(Ended::Spooled));
    waiting.extend(unsaved.drain(..).map(|m| Ended::InMemory(Box::new(m))));
    let mut items: Vec<Ended> = waiting.into_iter().collect();
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(ARCHIVE_BATCH));
        let batch = std::mem::replace(&mut items, rest);
        let failed = archive_batch(&archive, db.as_ref(), &replication, batch).await;
        // Their real end goes to the spool, so the next start finishes them as they ended.
        let (_, saved) = save_spool(&archive, &acks, &sync_latency, Vec::new(), &failed).await;
        for (meta, ok) in failed.iter().zip(saved) {
            let end = if ok { "with its end" } else { "as its last snapshot (its end could not be written)" };
            tracing::error!(recording = %meta.id, "left in the spool {end}; the next start will finish it");
        }
    }
    indexing.abort();
}
