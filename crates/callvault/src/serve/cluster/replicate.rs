//! The replication outbox of one target, as a background worker.
//!
//! Items come from the index (`outbox` table, written in the same
//! transaction that indexes a finished recording, so they survive kill -9).
//! Metadata goes first and at once; audio follows when the target's
//! schedule allows, chunk by chunk under its bandwidth cap, resuming where
//! the target's partial copy ends. An item leaves the queue only when the
//! target answered that it holds a copy whose SHA-256 matched; a failure
//! is retried with capped exponential backoff and jitter. Only recordings
//! this node made are ever queued, so nothing travels in a loop.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use background::{WorkState, Worker, WorkerStatus};
use cluster::{Backoff, Lane, Schedule, TokenBucket};
use model::{NodeId, RecordingMeta};
use serde_json::Value;
use store::{BlobKey, OutboxItem};

use super::{now_ms, Cluster};

/// Audio bytes per request of a chunked upload.
const CHUNK: u64 = 4 * 1024 * 1024;
/// Recordings up to this size travel several to a request.
const SMALL: u64 = 512 * 1024;
/// Most bytes of small recordings in one request.
const BATCH_BYTES: u64 = 4 * 1024 * 1024;
/// Outbox items taken per step.
const STEP: u32 = 64;

/// What sending one item came to.
enum Sent {
    /// The target holds it (or it is gone for good): the item leaves the queue.
    Done { bytes: u64 },
    /// Try again later.
    Failed(String),
}

pub struct Replicator {
    c: Arc<Cluster>,
    target: String,
    schedule: Schedule,
    bucket: Option<TokenBucket>,
    backoff: Backoff,
    rng: fastrand::Rng,
    status: WorkerStatus,
    /// (when, bytes) of recent transfers, for bytes/s.
    recent: VecDeque<(Instant, u64)>,
    next_due: Option<i64>,
}

impl Replicator {
    pub fn new(c: Arc<Cluster>, target: String) -> Replicator {
        let (schedule, cap) = c.target_rules(&target);
        let seed = target.bytes().fold(c.generation, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        Replicator {
            bucket: (cap > 0).then(|| TokenBucket::new(cap, Instant::now())),
            c,
            target,
            schedule,
            backoff: Backoff::default(),
            rng: fastrand::Rng::with_seed(seed),
            status: WorkerStatus::default(),
            recent: VecDeque::new(),
            next_due: None,
        }
    }

    async fn refresh_status(&mut self) {
        if let Ok(stats) = self.c.index.outbox_stats().await {
            let s = stats.into_iter().find(|s| s.target == self.target).unwrap_or_default();
            self.status.queue_length = Some(s.depth);
            self.status.oldest_item_secs = s.oldest_enqueued_ms.map(|t| (now_ms() - t).max(0) as f64 / 1000.0);
            self.status.last_item_error = s.last_error;
        }
        let horizon = Instant::now() - Duration::from_secs(10);
        while self.recent.front().is_some_and(|(t, _)| *t < horizon) {
            self.recent.pop_front();
        }
        let bytes: u64 = self.recent.iter().map(|(_, b)| b).sum();
        self.status.bytes_per_sec = Some(bytes as f64 / 10.0);
        self.status.progress =
            Some(if self.schedule.is_open(now_ms()) { "window open" } else { "window closed" }.into());
    }

    /// Metadata of many recordings in one request: one sync and one
    /// transaction on the target.
    async fn send_metas(&self, url: &str, metas: &[RecordingMeta]) -> Vec<Sent> {
        let (c, url) = (self.c.clone(), url.to_owned());
        let body = serde_json::to_value(metas).expect("metadata serializes");
        let r = tokio::task::spawn_blocking(move || c.client.json("PUT", &url, "/cluster/v1/metas", Some(&body))).await;
        let fail = |e: String| metas.iter().map(|_| Sent::Failed(e.clone())).collect();
        match r {
            // Stored, or refused for good (deleted there, past retention): either way done.
            Ok(Ok(reply)) if reply.ok() => metas.iter().map(|_| Sent::Done { bytes: 0 }).collect(),
            Ok(Ok(reply)) => fail(reply.describe()),
            Ok(Err(e)) => fail(e),
            Err(e) => fail(e.to_string()),
        }
    }

    /// The audio of several small recordings in one request.
    async fn send_audio_batch(&mut self, url: &str, metas: &[RecordingMeta]) -> Vec<Sent> {
        let mut entries = Vec::with_capacity(metas.len());
        let mut payload = Vec::new();
        for m in metas {
            let audio = m.audio.as_ref().expect("only recordings with audio are batched");
            let key = BlobKey::parse(&audio.path).expect("checked by the caller");
            let blobs = self.c.blobs.clone();
            match tokio::task::spawn_blocking(move || blobs.read(&key)).await {
                Ok(Ok(data)) => {
                    entries.push(super::api::BatchEntry {
                        id: m.id,
                        bytes: data.len() as u64,
                        sha256: audio.sha256.clone().unwrap_or_default(),
                    });
                    payload.push(data);
                }
                Ok(Err(e)) => return metas.iter().map(|_| Sent::Failed(format!("reading our copy: {e}"))).collect(),
                Err(e) => return metas.iter().map(|_| Sent::Failed(e.to_string())).collect(),
            }
        }
        let header = serde_json::to_vec(&entries).expect("batch header serializes");
        let total: u64 = payload.iter().map(|p| p.len() as u64).sum();
        let mut body = Vec::with_capacity(4 + header.len() + total as usize);
        body.extend_from_slice(&(header.len() as u32).to_be_bytes());
        body.extend_from_slice(&header);
        for p in &payload {
            body.extend_from_slice(p);
        }
        if let Some(b) = &mut self.bucket {
            let wait = b.take(Instant::now(), body.len() as u64);
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let (c, url) = (self.c.clone(), url.to_owned());
        let r = tokio::task::spawn_blocking(move || {
            c.client.send(
                "POST",
                &url,
                "/cluster/v1/audio-batch",
                Some(&body),
                &[("content-type", "application/octet-stream".into())],
                1 << 20,
            )
        })
        .await;
        let reply = match r {
            Ok(Ok(reply)) if reply.ok() => reply,
            Ok(Ok(reply)) => return metas.iter().map(|_| Sent::Failed(reply.describe())).collect(),
            Ok(Err(e)) => return metas.iter().map(|_| Sent::Failed(e.clone())).collect(),
            Err(e) => return metas.iter().map(|_| Sent::Failed(e.to_string())).collect(),
        };
        self.recent.push_back((Instant::now(), total));
        let results: Vec<Value> = serde_json::from_slice(&reply.body).unwrap_or_default();
        entries
            .iter()
            .map(|e| {
                let r = results.iter().find(|r| r["id"].as_str() == Some(&e.id.to_string()));
                match r {
                    Some(r) if r["verified"].as_str() == Some(e.sha256.as_str()) => Sent::Done { bytes: e.bytes },
                    Some(r) => Sent::Failed(format!(
                        "target refused the copy: {}",
                        r["error"].as_str().unwrap_or("unverified")
                    )),
                    None => Sent::Failed("target did not answer for this recording".into()),
                }
            })
            .collect()
    }

    async fn send_audio(&mut self, url: &str, meta: &RecordingMeta) -> Sent {
        let Some(audio) = meta.audio.clone() else { return Sent::Done { bytes: 0 } };
        let (Some(sha), Some(key)) = (audio.sha256.clone(), BlobKey::parse(&audio.path)) else {
            return Sent::Done { bytes: 0 };
        };
        let id = meta.id;
        let state = {
            let (c, url) = (self.c.clone(), url.to_owned());
            tokio::task::spawn_blocking(move || {
                c.client.json("GET", &url, &format!("/cluster/v1/recordings/{id}/upload"), None)
            })
            .await
        };
        let state: Value = match state {
            Ok(Ok(r)) if r.ok() => serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            Ok(Ok(r)) => return Sent::Failed(r.describe()),
            Ok(Err(e)) => return Sent::Failed(e),
            Err(e) => return Sent::Failed(e.to_string()),
        };
        if state["audio_here"] == true {
            return Sent::Done { bytes: 0 };
        }
        if state["known"] != true {
            return Sent::Failed("the target does not have the metadata yet".into());
        }
        let total = audio.bytes;
        let mut offset = state["offset"].as_u64().unwrap_or(0).min(total);
        if offset > 0 {
            tracing::info!(target = %self.target, recording = %id, offset, total, "resuming an interrupted upload");
        }
        let mut sent = 0u64;
        let chunk_size = self.bucket.as_ref().map_or(CHUNK, |b| b.burst().clamp(16 * 1024, CHUNK));
        loop {
            let upto = (offset + chunk_size).min(total);
            if let Some(b) = &mut self.bucket {
                let wait = b.take(Instant::now(), upto - offset);
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let (blobs, k) = (self.c.blobs.clone(), key.clone());
            let chunk = match tokio::task::spawn_blocking(move || blobs.read_range(&k, offset, upto)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Sent::Failed(format!("reading our copy: {e}")),
                Err(e) => return Sent::Failed(e.to_string()),
            };
            let (c, url2, sha2) = (self.c.clone(), url.to_owned(), sha.clone());
            let path = format!("/cluster/v1/recordings/{id}/upload?offset={offset}&total={total}&sha256={sha2}");
            let r = tokio::task::spawn_blocking(move || c.client.put_chunk(&url2, &path, &chunk)).await;
            let reply = match r {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => return Sent::Failed(e),
                Err(e) => return Sent::Failed(e.to_string()),
            };
            let body: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
            match reply.status {
                200 if body["complete"] == true => {
                    return if body["verified"].as_str() == Some(sha.as_str()) {
                        Sent::Done { bytes: sent + (upto - offset) }
                    } else {
                        Sent::Failed(format!("target confirmed a different digest: {}", body["verified"]))
                    };
                }
                200 => {
                    sent += upto - offset;
                    self.recent.push_back((Instant::now(), upto - offset));
                    offset = body["offset"].as_u64().unwrap_or(upto);
                }
                // The target holds another length: resume from there.
                409 if body["offset"].is_u64() => offset = body["offset"].as_u64().unwrap_or(0).min(total),
                _ => return Sent::Failed(reply.describe()),
            }
        }
    }
}

impl Replicator {
    /// Done items leave the queue (one transaction per lane); failed ones
    /// are due again after their backoff.
    async fn settle(&mut self, outcomes: Vec<(OutboxItem, Option<RecordingMeta>, Sent)>) -> Result<(), String> {
        for lane in [Lane::Meta, Lane::Audio] {
            let done: Vec<_> =
                outcomes.iter().filter(|(i, _, s)| i.lane == lane && matches!(s, Sent::Done { .. })).collect();
            if done.is_empty() {
                continue;
            }
            let ids: Vec<model::RecordingId> = done.iter().map(|(i, _, _)| i.id).collect();
            self.c.index.outbox_done_many(&self.target, lane, &ids).await.map_err(|e| e.to_string())?;
            for (_, meta, sent) in done {
                let Sent::Done { bytes } = sent else { continue };
                let counters = &self.c.counters;
                counters.replicated_items.fetch_add(1, Ordering::Relaxed);
                counters.replicated_bytes.fetch_add(*bytes, Ordering::Relaxed);
                self.status.items_done += 1;
                self.status.bytes_total += bytes;
                if lane == Lane::Audio {
                    if let Some(m) = meta {
                        self.c.count_lag(m);
                    }
                }
            }
        }
        for (item, _, sent) in &outcomes {
            let Sent::Failed(e) = sent else { continue };
            let delay = self.backoff.delay(item.attempts + 1, &mut self.rng);
            let due = now_ms() + delay.as_millis() as i64;
            tracing::debug!(target = %self.target, recording = %item.id, lane = %item.lane, error = %e, "replication failed; will retry");
            self.c.counters.replication_failures.fetch_add(1, Ordering::Relaxed);
            self.c.index.outbox_failed(&item.target, item.lane, item.id, due, e).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[async_trait]
impl Worker for Replicator {
    fn name(&self) -> String {
        format!("replicate:{}", self.target)
    }

    async fn work(&mut self) -> Result<WorkState, String> {
        self.refresh_status().await;
        let Some(url) = self.c.url_of(&NodeId(self.target.clone())) else {
            // The target is down or unknown: its items wait (retried when it is back).
            self.next_due = Some(now_ms() + self.c.cfg.heartbeat_ms as i64);
            return Ok(WorkState::Idle);
        };
        let now = now_ms();
        let lanes: &[Lane] = if self.schedule.is_open(now) { &[Lane::Meta, Lane::Audio] } else { &[Lane::Meta] };
        let items = self.c.index.due(&self.target, lanes, now, STEP).await.map_err(|e| format!("outbox: {e}"))?;
        if items.is_empty() {
            // Sleep until the next item is due (or a second, or a new one is queued).
            self.next_due = Some(now + 1000);
            return Ok(WorkState::Idle);
        }
        // Load each item's metadata; one deleted here since is simply done.
        let mut loaded: Vec<(OutboxItem, Option<RecordingMeta>)> = Vec::with_capacity(items.len());
        for item in items {
            let meta = self.c.index.get(item.id).await.map_err(|e| format!("index: {e}"))?;
            loaded.push((item, meta));
        }
        let mut outcomes: Vec<(OutboxItem, Option<RecordingMeta>, Sent)> = Vec::with_capacity(loaded.len());
        let (metas, audios): (Vec<_>, Vec<_>) = loaded.into_iter().partition(|(i, _)| i.lane == Lane::Meta);
        // Metadata: one request for all of it.
        let (present, gone): (Vec<_>, Vec<_>) = metas.into_iter().partition(|(_, m)| m.is_some());
        outcomes.extend(gone.into_iter().map(|(i, m)| (i, m, Sent::Done { bytes: 0 })));
        if !present.is_empty() {
            let ms: Vec<RecordingMeta> = present.iter().filter_map(|(_, m)| m.clone()).collect();
            let sent = self.send_metas(&url, &ms).await;
            outcomes.extend(present.into_iter().zip(sent).map(|((i, m), s)| (i, m, s)));
        }
        // Audio: small recordings several to a request, large ones chunked.
        let mut batch: Vec<(OutboxItem, RecordingMeta)> = Vec::new();
        let mut batch_bytes = 0;
        // On a capped link nothing travels in pieces larger than the bucket's burst.
        let small = self.bucket.as_ref().map_or(SMALL, |b| SMALL.min(b.burst()));
        let batch_limit = self.bucket.as_ref().map_or(BATCH_BYTES, |b| BATCH_BYTES.min(b.burst()));
        for (item, meta) in audios {
            let size = meta.as_ref().and_then(|m| {
                m.audio.as_ref().filter(|a| a.sha256.is_some() && BlobKey::parse(&a.path).is_some()).map(|a| a.bytes)
            });
            match (meta, size) {
                (Some(m), Some(bytes)) if bytes <= small => {
                    if batch_bytes + bytes > batch_limit && !batch.is_empty() {
                        let done = std::mem::take(&mut batch);
                        let ms: Vec<RecordingMeta> = done.iter().map(|(_, m)| m.clone()).collect();
                        let sent = self.send_audio_batch(&url, &ms).await;
                        outcomes.extend(done.into_iter().zip(sent).map(|((i, m), s)| (i, Some(m), s)));
                        batch_bytes = 0;
                    }
                    batch_bytes += bytes;
                    batch.push((item, m));
                }
                (Some(m), Some(_)) => {
                    let sent = self.send_audio(&url, &m).await;
                    outcomes.push((item, Some(m), sent));
                }
                // No audio (or deleted here): nothing to send.
                (m, _) => outcomes.push((item, m, Sent::Done { bytes: 0 })),
            }
        }
        if !batch.is_empty() {
            let ms: Vec<RecordingMeta> = batch.iter().map(|(_, m)| m.clone()).collect();
            let sent = self.send_audio_batch(&url, &ms).await;
            outcomes.extend(batch.into_iter().zip(sent).map(|((i, m), s)| (i, Some(m), s)));
        }
        self.settle(outcomes).await?;
        Ok(WorkState::Busy)
    }

    async fn wait_for_work(&mut self) {
        let wait = self
            .next_due
            .map_or(Duration::from_secs(1), |t| Duration::from_millis((t - now_ms()).clamp(50, 60_000) as u64));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.c.outbox_wake.notified() => {}
        }
    }

    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
}
