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

/// Audio bytes per request.
const CHUNK: u64 = 1024 * 1024;

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

    async fn send(&mut self, url: &str, item: &OutboxItem) -> Sent {
        let meta = match self.c.index.get(item.id).await {
            Ok(Some(m)) => m,
            // Deleted here since it was queued: nothing to send.
            Ok(None) => return Sent::Done { bytes: 0 },
            Err(e) => return Sent::Failed(format!("index: {e}")),
        };
        match item.lane {
            Lane::Meta => self.send_meta(url, &meta).await,
            Lane::Audio => self.send_audio(url, &meta).await,
        }
    }

    async fn send_meta(&self, url: &str, meta: &RecordingMeta) -> Sent {
        let (c, url, path) = (self.c.clone(), url.to_owned(), format!("/cluster/v1/recordings/{}/meta", meta.id));
        let body = serde_json::to_value(meta).expect("metadata serializes");
        let r = tokio::task::spawn_blocking(move || c.client.json("PUT", &url, &path, Some(&body))).await;
        match r {
            Ok(Ok(reply)) if reply.ok() || reply.status == 410 => Sent::Done { bytes: 0 },
            Ok(Ok(reply)) => Sent::Failed(reply.describe()),
            Ok(Err(e)) => Sent::Failed(e),
            Err(e) => Sent::Failed(e.to_string()),
        }
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
            let r = tokio::task::spawn_blocking(move || {
                c.client.send(
                    "PUT",
                    &url2,
                    &path,
                    Some(&chunk),
                    &[("content-type", "application/octet-stream".into())],
                    1 << 20,
                )
            })
            .await;
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
        let items = self.c.index.due(&self.target, lanes, now, 16).await.map_err(|e| format!("outbox: {e}"))?;
        if items.is_empty() {
            // Sleep until the next item is due (or a minute, or a new one is queued).
            self.next_due = Some(now + 1000);
            return Ok(WorkState::Idle);
        }
        for item in items {
            match self.send(&url, &item).await {
                Sent::Done { bytes } => {
                    self.c.index.outbox_done(&item.target, item.lane, item.id).await.map_err(|e| e.to_string())?;
                    let counters = &self.c.counters;
                    counters.replicated_items.fetch_add(1, Ordering::Relaxed);
                    counters.replicated_bytes.fetch_add(bytes, Ordering::Relaxed);
                    self.status.items_done += 1;
                    self.status.bytes_total += bytes;
                    if item.lane == Lane::Audio {
                        if let Ok(Some(meta)) = self.c.index.get(item.id).await {
                            self.c.count_lag(&meta);
                        }
                    }
                }
                Sent::Failed(e) => {
                    let delay = self.backoff.delay(item.attempts + 1, &mut self.rng);
                    let due = now_ms() + delay.as_millis() as i64;
                    tracing::debug!(target = %self.target, recording = %item.id, lane = %item.lane, error = %e, "replication failed; will retry");
                    self.c.counters.replication_failures.fetch_add(1, Ordering::Relaxed);
                    self.c
                        .index
                        .outbox_failed(&item.target, item.lane, item.id, due, &e)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
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
