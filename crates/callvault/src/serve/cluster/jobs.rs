//! The maintenance jobs, run by the job leader (the live node with the
//! lowest priority number, see cluster::membership):
//!
//! - **Retention purge**: recordings that started more than
//!   `retention.days` (a cluster setting) ago are deleted everywhere by
//!   tombstone — applied here and pushed to every live peer; a peer that
//!   is down learns it by anti-entropy (a tombstone outranks any copy).
//! - **Scrub**: every `scrub_interval_hours` the leader asks every live
//!   node (itself included) to re-hash the audio it holds; a copy whose
//!   SHA-256 no longer matches is set aside (`.corrupted`), logged,
//!   counted, and repaired from a healthy peer copy.
//!
//! When a job last ran is a cluster setting (`jobs.*.last_ms`), so a new
//! leader carries on the schedule. Both jobs are idempotent: a brief
//! overlap of two leaders during a partition deletes nothing twice and
//! only re-hashes files again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use background::{WorkState, Worker, WorkerStatus};
use model::{RecordingId, RecordingMeta};
use serde_json::{json, Value};
use store::{BlobKey, Tombstone};

use super::settings::{all_settings, set_setting};
use super::{now_ms, Cluster};

const DAY_MS: i64 = 86_400_000;

pub struct Jobs {
    c: Arc<Cluster>,
    tick: Duration,
    next: Instant,
    status: WorkerStatus,
}

impl Jobs {
    pub fn new(c: Arc<Cluster>) -> Jobs {
        let tick = Duration::from_millis(c.cfg.heartbeat_ms.max(500));
        Jobs { c, tick, next: Instant::now(), status: WorkerStatus::default() }
    }

    async fn setting_i64(&self, key: &str) -> Option<i64> {
        all_settings(&self.c).await.into_iter().find(|s| s.key == key).and_then(|s| s.value.as_i64())
    }

    /// One pass of the retention purge; returns how many were deleted.
    pub async fn retention(&self) -> Result<u64, String> {
        let Some(days) = self.setting_i64("retention.days").await.filter(|d| *d > 0) else { return Ok(0) };
        let cutoff = now_ms() - days * DAY_MS;
        let mut deleted = 0;
        loop {
            let batch = self.c.index.started_before(cutoff, 200).await.map_err(|e| e.to_string())?;
            if batch.is_empty() {
                break;
            }
            let mut stones = Vec::with_capacity(batch.len());
            for meta in &batch {
                let stamp = self.c.clock.lock().expect("clock lock").now(now_ms() as u64);
                let t = Tombstone {
                    id: meta.id,
                    started_at_ms: (meta.started_at.unix_timestamp_nanos() / 1_000_000) as i64,
                    deleted_at_ms: now_ms(),
                    stamp: stamp.to_string(),
                    reason: format!("retention: older than {days} days"),
                };
                self.c.apply_tombstone(&t).await?;
                stones.push(t);
            }
            deleted += stones.len() as u64;
            push_tombstones(&self.c, &stones).await;
            tracing::info!(
                recordings = stones.len(),
                days,
                "retention purge deleted recordings (tombstones pushed to peers)"
            );
        }
        self.c.counters.purged.fetch_add(deleted, Ordering::Relaxed);
        Ok(deleted)
    }

    async fn run_due_jobs(&mut self) -> Result<(), String> {
        let now = now_ms();
        let every = (self.c.cfg.retention_check_secs.max(1) * 1000) as i64;
        if self.setting_i64("jobs.retention.last_ms").await.is_none_or(|t| now - t >= every) {
            set_setting(&self.c, "jobs.retention.last_ms", json!(now)).await?;
            let n = self.retention().await?;
            self.status.items_done += n;
        }
        let scrub_every = self.c.cfg.scrub_interval_hours as i64 * 3_600_000;
        if scrub_every > 0 && self.setting_i64("jobs.scrub.last_ms").await.is_none_or(|t| now - t >= scrub_every) {
            set_setting(&self.c, "jobs.scrub.last_ms", json!(now)).await?;
            start_scrub_everywhere(&self.c).await;
        }
        let horizon = self.c.cfg.tombstone_horizon_days as i64 * DAY_MS;
        if let Ok(n) = self.c.index.forget_tombstones(now - horizon).await {
            if n > 0 {
                tracing::info!(tombstones = n, "forgot tombstones past the horizon");
            }
        }
        Ok(())
    }
}

/// Sends deletions to every live peer (best effort: anti-entropy delivers
/// them to the ones that are down).
pub async fn push_tombstones(c: &Arc<Cluster>, stones: &[Tombstone]) {
    if stones.is_empty() {
        return;
    }
    let body = serde_json::to_value(stones).expect("tombstones serialize");
    for (node, url) in c.live_peers(None) {
        let (c2, body) = (c.clone(), body.clone());
        let r =
            tokio::task::spawn_blocking(move || c2.client.json("POST", &url, "/cluster/v1/tombstones", Some(&body)))
                .await;
        match r {
            Ok(Ok(reply)) if reply.ok() => {}
            Ok(Ok(reply)) => {
                tracing::warn!(peer = %node, error = %reply.describe(), "peer refused deletions; anti-entropy will retry")
            }
            Ok(Err(e)) => tracing::warn!(peer = %node, error = %e, "could not push deletions; anti-entropy will retry"),
            Err(e) => tracing::warn!(error = %e, "push task failed"),
        }
    }
}

/// The leader's scrub: every live node re-hashes its own copies.
async fn start_scrub_everywhere(c: &Arc<Cluster>) {
    tracing::info!("starting the integrity scrub on every node");
    for (node, url) in c.live_peers(None) {
        let c2 = c.clone();
        let r = tokio::task::spawn_blocking(move || c2.client.json("POST", &url, "/cluster/v1/scrub", None)).await;
        if !matches!(r, Ok(Ok(ref reply)) if reply.ok()) {
            tracing::warn!(peer = %node, "could not start the scrub on a peer");
        }
    }
    let c = c.clone();
    tokio::spawn(async move {
        scrub(&c).await;
    });
}

/// Re-hashes every copy of audio this node holds; a mismatch is set
/// aside and repaired from a peer. Returns (checked, corrupt, repaired).
pub async fn scrub(c: &Arc<Cluster>) -> (u64, u64, u64) {
    let (mut checked, mut corrupt, mut repaired) = (0, 0, 0);
    let mut after: Option<RecordingId> = None;
    loop {
        let batch = match c.index.audio_held(after, 100).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "scrub stopped: index unavailable");
                break;
            }
        };
        let Some(last) = batch.last() else { break };
        after = Some(last.id);
        for meta in batch {
            let Some((key, want)) =
                meta.audio.as_ref().and_then(|a| Some((BlobKey::parse(&a.path)?, a.sha256.clone()?)))
            else {
                continue;
            };
            let blobs = c.blobs.clone();
            let k = key.clone();
            let got = tokio::task::spawn_blocking(move || blobs.sha256(&k)).await;
            checked += 1;
            c.counters.scrub_checked.fetch_add(1, Ordering::Relaxed);
            let ok = matches!(&got, Ok(Ok((sha, _))) if *sha == want);
            if ok {
                continue;
            }
            corrupt += 1;
            c.counters.scrub_corrupt.fetch_add(1, Ordering::Relaxed);
            let found = match &got {
                Ok(Ok((sha, len))) => format!("SHA-256 {sha} ({len} bytes)"),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            tracing::error!(recording = %meta.id, expected = %want, found = %found, "scrub: stored audio does not match its checksum; setting it aside and repairing from a peer");
            let blobs = c.blobs.clone();
            let _ = tokio::task::spawn_blocking(move || blobs.quarantine(&key)).await;
            let _ = c.index.set_audio_here(meta.id, false).await;
            if repair(c, &meta).await {
                repaired += 1;
                c.counters.scrub_repaired.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    tracing::info!(checked, corrupt, repaired, "scrub finished");
    (checked, corrupt, repaired)
}

/// Fetches a healthy copy from a peer that holds the audio (origin first).
async fn repair(c: &Arc<Cluster>, meta: &RecordingMeta) -> bool {
    for (node, url) in c.live_peers(Some(&meta.node_id)) {
        let (c2, u, id) = (c.clone(), url.clone(), meta.id);
        let has = tokio::task::spawn_blocking(move || {
            c2.client.json("GET", &u, &format!("/cluster/v1/recordings/{id}/meta"), None)
        })
        .await;
        let holds = matches!(&has, Ok(Ok(r)) if r.ok() && serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v["audio_here"] == true));
        if !holds {
            continue;
        }
        match super::antientropy::fetch_audio(c, &node, &url, meta).await {
            Ok(_) => {
                let _ = c.index.set_audio_here(meta.id, true).await;
                tracing::warn!(recording = %meta.id, peer = %node, "scrub: repaired a corrupt copy from a peer");
                return true;
            }
            Err(e) => {
                tracing::warn!(recording = %meta.id, peer = %node, error = %e, "scrub: repair from this peer failed")
            }
        }
    }
    tracing::error!(recording = %meta.id, "scrub: no healthy copy found on a live peer; anti-entropy will fetch one when a peer has it");
    false
}

#[async_trait]
impl Worker for Jobs {
    fn name(&self) -> String {
        "jobs".into()
    }

    async fn work(&mut self) -> Result<WorkState, String> {
        if Instant::now() < self.next {
            return Ok(WorkState::Idle);
        }
        self.next = Instant::now() + self.tick;
        if !self.c.is_leader() {
            self.status.progress = Some("not the job leader".into());
            return Ok(WorkState::Idle);
        }
        self.status.progress = Some("job leader".into());
        self.run_due_jobs().await?;
        Ok(WorkState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep_until(tokio::time::Instant::from_std(self.next)).await;
    }

    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
}
