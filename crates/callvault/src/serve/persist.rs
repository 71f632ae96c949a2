//! The persistence worker: makes metadata durable and finishes recordings.
//!
//! - `Active`: the spool JSON of a running recording is rewritten
//!   (durably) and the index updated; index errors are only logged, the
//!   final write carries everything anyway.
//! - `Closed`: the engine has flushed the audio; archive it (header,
//!   checksum, move, final JSON), index it, then drop the spool JSON. If
//!   the index is unreachable the recording waits in a retry list (and in
//!   the spool, so a restart also finds it) until the database is back.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use model::{RecordingId, RecordingMeta, RecordingState};
use store::{Archive, MetaDb};
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

#[derive(Debug)]
pub enum PersistJob {
    Active(Box<RecordingMeta>),
    Closed { meta: Box<RecordingMeta>, error: Option<String> },
}

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

pub async fn run(mut rx: mpsc::UnboundedReceiver<PersistJob>, archive: Archive, db: MetaDb) {
    let mut closed: HashSet<RecordingId> = HashSet::new();
    let mut closed_order: VecDeque<RecordingId> = VecDeque::new();
    let mut tasks: JoinSet<Result<(), RecordingMeta>> = JoinSet::new();
    let mut retry: Vec<RecordingMeta> = Vec::new();
    let mut retry_tick = tokio::time::interval(Duration::from_secs(5));
    let concurrency = 4;
    let mut waiting: VecDeque<RecordingMeta> = VecDeque::new();
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                None => break,
                Some(PersistJob::Active(meta)) => {
                    if closed.contains(&meta.id) {
                        continue; // a late snapshot of a recording already closed
                    }
                    let a = archive.clone();
                    let m = meta.clone();
                    match tokio::task::spawn_blocking(move || a.save_active(&m)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(recording = %meta.id, error = %e, "cannot save recording metadata"),
                        Err(e) => tracing::error!(error = %e, "metadata task panicked"),
                    }
                    if let Err(e) = db.upsert(&meta).await {
                        tracing::warn!(recording = %meta.id, error = %e, "index update failed (kept in spool)");
                    }
                }
                Some(PersistJob::Closed { mut meta, error }) => {
                    if let Some(err) = error {
                        if meta.state != RecordingState::Failed {
                            meta.transition(RecordingState::Failed, OffsetDateTime::now_utc(), format!("audio write error: {err}"));
                        }
                    }
                    closed.insert(meta.id);
                    closed_order.push_back(meta.id);
                    if closed_order.len() > 100_000 {
                        if let Some(old) = closed_order.pop_front() { closed.remove(&old); }
                    }
                    waiting.push_back(*meta);
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
}
