//! Anti-entropy as a background worker: every round, with each live peer,
//! compare day digests, then the hours of differing days, then the
//! versions of differing hours (cluster::antientropy), and pull whatever
//! the peer holds in a better version — a missing recording, the audio of
//! one held as metadata only, a tombstone. Each node pulls for itself, so
//! a node that was down, restored from an old backup or newly added
//! catches up without anyone re-queuing anything.
//!
//! A node whose last complete round is older than the tombstone horizon
//! starts *quarantined*: it serves no digests (so nobody pulls from it
//! what may have been deleted while it was away, with the tombstone since
//! forgotten) until it has completed a round with every live peer.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use background::{WorkState, Worker, WorkerStatus};
use cluster::antientropy::{self, Bucket, Pull, Version};
use model::{NodeId, RecordingId, RecordingMeta};
use serde_json::Value;
use store::{BlobKey, BlobPut, Tombstone};

use super::{now_ms, Cluster};

pub struct AntiEntropy {
    c: Arc<Cluster>,
    interval: Duration,
    next: Instant,
    status: WorkerStatus,
    /// Where the time of the last complete round is kept.
    last_sync_file: std::path::PathBuf,
}

/// Figures of one round with one peer.
#[derive(Debug, Default, Clone, Copy)]
pub struct RoundFigures {
    /// Bytes of digests, versions and metadata exchanged (audio not included).
    pub bytes_exchanged: u64,
    pub differing_days: usize,
    pub differing_hours: usize,
    pub compared: usize,
    pub pulled: usize,
    pub bytes_in: u64,
}

impl AntiEntropy {
    pub fn new(c: Arc<Cluster>, last_sync_file: std::path::PathBuf) -> AntiEntropy {
        let interval = Duration::from_secs(c.cfg.anti_entropy_secs.max(1));
        let last = std::fs::read_to_string(&last_sync_file).ok().and_then(|s| s.trim().parse::<i64>().ok());
        let horizon_ms = c.cfg.tombstone_horizon_days as i64 * 86_400_000;
        if let Some(t) = last {
            if now_ms() - t > horizon_ms {
                tracing::warn!(
                    last_sync_ms = t,
                    "this node was out of sync for longer than the tombstone horizon: quarantined until it caught up"
                );
                c.quarantined.store(true, Ordering::Relaxed);
            }
        }
        AntiEntropy {
            c,
            interval,
            // The first round soon after start (heartbeats find the peers first): a node back
            // from an outage catches up at once, not one interval later.
            next: Instant::now() + interval.min(Duration::from_secs(30)),
            status: WorkerStatus::default(),
            last_sync_file,
        }
    }

    async fn get_json(
        &self,
        url: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        f: &mut RoundFigures,
    ) -> Result<Value, String> {
        let (c, url, method, p) = (self.c.clone(), url.to_owned(), method.to_owned(), path.to_owned());
        f.bytes_exchanged += body.as_ref().map_or(0, |b| b.to_string().len() as u64);
        let r = tokio::task::spawn_blocking(move || c.client.json(&method, &url, &p, body.as_ref()))
            .await
            .map_err(|e| e.to_string())??;
        f.bytes_exchanged += r.body.len() as u64;
        if !r.ok() {
            return Err(r.describe());
        }
        serde_json::from_slice(&r.body).map_err(|e| format!("{path}: {e}"))
    }

    /// One round with one peer.
    pub async fn round_with(&self, node: &NodeId, url: &str) -> Result<RoundFigures, String> {
        let mut f = RoundFigures::default();
        let hours = self.c.index.buckets().await.map_err(|e| e.to_string())?;
        let ours_days = antientropy::days(&hours);
        let theirs_days: BTreeMap<i64, Bucket> =
            serde_json::from_value(self.get_json(url, "GET", "/cluster/v1/buckets", None, &mut f).await?)
                .map_err(|e| e.to_string())?;
        let days = antientropy::differing(&ours_days, &theirs_days);
        f.differing_days = days.len();
        let mut diff_hours = Vec::new();
        for d in days {
            let theirs: BTreeMap<i64, Bucket> = serde_json::from_value(
                self.get_json(url, "GET", &format!("/cluster/v1/buckets?day={d}"), None, &mut f).await?,
            )
            .map_err(|e| e.to_string())?;
            let ours: BTreeMap<i64, Bucket> = hours
                .iter()
                .filter(|(h, _)| h.div_euclid(antientropy::HOURS_PER_DAY) == d)
                .map(|(h, b)| (*h, *b))
                .collect();
            diff_hours.extend(antientropy::differing(&ours, &theirs));
        }
        f.differing_hours = diff_hours.len();
        for chunk in diff_hours.chunks(256) {
            let hours = Some(serde_json::to_value(chunk).expect("json"));
            let theirs: BTreeMap<RecordingId, Version> =
                serde_json::from_value(self.get_json(url, "POST", "/cluster/v1/versions", hours, &mut f).await?)
                    .map_err(|e| e.to_string())?;
            let ours = self.c.index.versions(chunk).await.map_err(|e| e.to_string())?;
            f.compared += theirs.len();
            let pulls = antientropy::plan(&ours, &theirs);
            for batch in pulls.chunks(200) {
                match self.pull_batch(node, url, batch, &mut f).await {
                    Ok(()) => {}
                    Err(e) => tracing::warn!(peer = %node, error = %e, "anti-entropy pulls failed; next round retries"),
                }
            }
        }
        Ok(f)
    }

    /// Takes the better versions of a batch of recordings from the peer:
    /// their metadata in one request (stored with one sync and one
    /// transaction), deletions, then the audio of each that needs it.
    async fn pull_batch(&self, node: &NodeId, url: &str, pulls: &[Pull], f: &mut RoundFigures) -> Result<(), String> {
        let ids: Vec<RecordingId> = pulls.iter().map(|p| p.id).collect();
        let body = Some(serde_json::to_value(&ids).expect("json"));
        let items = self.get_json(url, "POST", "/cluster/v1/metas/get", body, f).await?;
        let mut metas = Vec::new();
        for item in items.as_array().into_iter().flatten() {
            if item.get("tombstone").is_some() {
                let t: Tombstone = serde_json::from_value(item["tombstone"].clone()).map_err(|e| e.to_string())?;
                self.c.apply_tombstone(&t).await?;
                f.pulled += 1;
                tracing::info!(recording = %t.id, peer = %node, "applied a deletion learnt by anti-entropy");
            } else if item.get("meta").is_some() {
                let meta: RecordingMeta = serde_json::from_value(item["meta"].clone()).map_err(|e| e.to_string())?;
                if ids.contains(&meta.id) {
                    metas.push((meta, item["audio_here"] == true));
                }
            }
        }
        let only: Vec<RecordingMeta> = metas.iter().map(|(m, _)| m.clone()).collect();
        let stored = self.c.store_replica_metas(&only).await?;
        let mut no_audio = Vec::new();
        for ((meta, peer_has_audio), stored) in metas.into_iter().zip(stored) {
            if !stored {
                continue; // deleted here: the tombstone goes back the other way
            }
            f.pulled += 1;
            if meta.audio.is_none() {
                // Nothing to fetch: the recording has no audio anywhere.
                no_audio.push(meta.id);
                continue;
            }
            if !peer_has_audio || matches!(self.c.index.audio_here(meta.id).await, Ok(Some(true))) {
                continue;
            }
            match fetch_audio(&self.c, node, url, &meta).await {
                Ok(bytes) => {
                    self.c.index.set_audio_here(meta.id, true).await.map_err(|e| e.to_string())?;
                    f.bytes_in += bytes;
                    tracing::info!(recording = %meta.id, peer = %node, bytes, "pulled a verified copy");
                }
                Err(e) => {
                    tracing::warn!(recording = %meta.id, peer = %node, error = %e, "anti-entropy audio pull failed; next round retries")
                }
            }
        }
        if !no_audio.is_empty() {
            self.c.index.set_audio_here_many(&no_audio, true).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    async fn round(&mut self) {
        let peers = self.c.live_peers(None);
        let started = Instant::now();
        let mut total = RoundFigures::default();
        let mut complete = !peers.is_empty();
        for (node, url) in &peers {
            match self.round_with(node, url).await {
                Ok(f) => {
                    total.differing_days += f.differing_days;
                    total.differing_hours += f.differing_hours;
                    total.compared += f.compared;
                    total.pulled += f.pulled;
                    total.bytes_in += f.bytes_in;
                    total.bytes_exchanged += f.bytes_exchanged;
                }
                Err(e) => {
                    complete = false;
                    tracing::warn!(peer = %node, error = %e, "anti-entropy round failed");
                    self.status.last_item_error = Some(format!("{node}: {e}"));
                }
            }
        }
        let c = &self.c.counters;
        c.anti_entropy_rounds.fetch_add(1, Ordering::Relaxed);
        c.anti_entropy_pulled.fetch_add(total.pulled as u64, Ordering::Relaxed);
        self.status.items_done += total.pulled as u64;
        self.status.bytes_total += total.bytes_in;
        self.status.progress = Some(format!(
            "last round: {} peers, {} days and {} hours differed, {} pulled in {} ms",
            peers.len(),
            total.differing_days,
            total.differing_hours,
            total.pulled,
            started.elapsed().as_millis()
        ));
        self.status.last_run_ms = Some(started.elapsed().as_millis() as u64);
        self.status.last_run_bytes = Some(total.bytes_exchanged);
        if total.pulled > 0 {
            tracing::info!(pulled = total.pulled, bytes = total.bytes_in, "anti-entropy caught up");
        }
        if complete {
            let _ = store::durable_write(&self.last_sync_file, now_ms().to_string().as_bytes());
            if self.c.quarantined.swap(false, Ordering::Relaxed) {
                tracing::info!("caught up with every live peer: quarantine lifted");
            }
        }
    }
}

/// Downloads a recording's audio from `peer` at `url` (resuming a partial
/// one), checks its SHA-256 against the metadata, and stores it. Returns
/// bytes read. The read is paced at the bandwidth cap configured for that
/// peer as a target (`[cluster.targets.<node>] bandwidth_kbps`): a pull
/// crosses the same thin link a push does.
pub async fn fetch_audio(c: &Arc<Cluster>, peer: &NodeId, url: &str, meta: &RecordingMeta) -> Result<u64, String> {
    let cap = c.target_rules(&peer.0).1;
    let peer_name = peer.0.clone();
    let audio = meta.audio.clone().ok_or("no audio in the metadata")?;
    let want = audio.sha256.clone().ok_or("no digest in the metadata")?;
    let key = BlobKey::parse(&audio.path).ok_or("bad audio key")?;
    let id = meta.id;
    let (c2, url) = (c.clone(), url.to_owned());
    let part = c.incoming.join(format!("{id}.pull"));
    tokio::task::spawn_blocking(move || -> Result<u64, String> {
        std::fs::create_dir_all(&c2.incoming).map_err(|e| e.to_string())?;
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&part).map_err(|e| e.to_string())?;
        let have = f.metadata().map_err(|e| e.to_string())?.len().min(audio.bytes);
        let mut read = 0u64;
        if have < audio.bytes {
            let range = format!("bytes={have}-");
            let path = format!("/cluster/v1/recordings/{id}/audio?purpose=copy");
            let (status, _, mut body) = c2.client.get_stream(&url, &path, Some(&range))?;
            if status == 200 && have > 0 {
                // The peer ignored the range: start over.
                f.set_len(0).map_err(|e| e.to_string())?;
            } else if status != 206 && status != 200 {
                return Err(format!("peer answered HTTP {status} for the audio"));
            }
            let peer_key = peer_name;
            let chunk = if cap > 0 {
                let buckets = c2.pull_buckets.lock().expect("buckets lock");
                let burst = buckets.get(&peer_key).map_or(64 * 1024, |b| b.burst() as usize);
                burst.clamp(4096, 256 * 1024)
            } else {
                256 * 1024
            };
            let mut buf = vec![0u8; chunk];
            loop {
                let n = body.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                f.write_all(&buf[..n]).map_err(|e| e.to_string())?;
                read += n as u64;
                if cap > 0 {
                    // Reading slower fills the TCP window: the peer sends slower.
                    let wait = {
                        let mut buckets = c2.pull_buckets.lock().expect("buckets lock");
                        let b = buckets
                            .entry(peer_key.clone())
                            .or_insert_with(|| cluster::TokenBucket::new(cap, Instant::now()));
                        b.take(Instant::now(), n as u64)
                    };
                    if !wait.is_zero() {
                        c2.counters.pull_throttled_ms.fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
                        std::thread::sleep(wait);
                    }
                }
            }
        }
        drop(f);
        let (sha, len) = store::sha256_file(&part).map_err(|e| e.to_string())?;
        if sha != want || len != audio.bytes {
            let _ = std::fs::remove_file(&part);
            c2.counters.rejected_copies.fetch_add(1, Ordering::Relaxed);
            return Err(format!("copy from the peer has SHA-256 {sha} ({len} bytes), expected {want}"));
        }
        let r = c2.blobs.put_all(vec![BlobPut::MoveFile { key, path: part }]);
        r.into_iter().next().unwrap_or(Ok(())).map_err(|e| e.to_string())?;
        Ok(read)
    })
    .await
    .map_err(|e| e.to_string())?
}

#[async_trait]
impl Worker for AntiEntropy {
    fn name(&self) -> String {
        "anti-entropy".into()
    }

    async fn work(&mut self) -> Result<WorkState, String> {
        if Instant::now() < self.next {
            return Ok(WorkState::Idle);
        }
        self.round().await;
        // Jitter: rounds of different nodes do not line up.
        let jitter = Duration::from_millis(fastrand::u64(0..=self.interval.as_millis() as u64 / 10));
        self.next = Instant::now() + self.interval + jitter;
        Ok(WorkState::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(self.next)) => {}
            _ = self.c.anti_entropy_now.notified() => self.next = Instant::now(),
        }
    }

    fn status(&self) -> WorkerStatus {
        self.status.clone()
    }
}
