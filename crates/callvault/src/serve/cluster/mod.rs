//! The node's side of the cluster: the inter-node API ([`api`]), the peer
//! client ([`client`]), and the background workers that use them —
//! heartbeats and settings ([`heartbeat`]), the replication outbox per
//! target ([`replicate`]), anti-entropy ([`antientropy`]) and the leader's
//! jobs ([`jobs`]). The decisions are the `cluster` crate's (pure); this
//! module reads the clock, the sockets and the stores for them.

pub mod antientropy;
pub mod api;
pub mod audit;
pub mod client;
pub mod heartbeat;
pub mod jobs;
pub mod replicate;
pub mod settings;
pub mod tls;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cluster::{Clock, Load, Membership, NodeStatus, Schedule, Timing};
use model::{NodeId, RecordingMeta};
use store::{BlobKey, BlobPut, BlobStore, ClusterIndex, Tombstone};
use tokio::sync::Notify;

use self::client::PeerClient;
use crate::config::ClusterConfig;

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub auth_refused: AtomicU64,
    pub replicated_items: AtomicU64,
    pub replicated_bytes: AtomicU64,
    pub replication_failures: AtomicU64,
    pub received_copies: AtomicU64,
    pub rejected_copies: AtomicU64,
    pub anti_entropy_rounds: AtomicU64,
    pub anti_entropy_pulled: AtomicU64,
    /// Milliseconds audio pulls waited for a peer's bandwidth cap.
    pub pull_throttled_ms: AtomicU64,
    pub scrub_checked: AtomicU64,
    pub scrub_repaired: AtomicU64,
    pub scrub_corrupt: AtomicU64,
    pub purged: AtomicU64,
    /// Audit entries copied from peers, and peer trails that failed their chain check.
    pub audit_copied: AtomicU64,
    pub audit_chain_breaks: AtomicU64,
    /// Milliseconds from a recording's end to its verified copy on a target (sum, count, max).
    pub lag_ms_sum: AtomicU64,
    pub lag_count: AtomicU64,
    pub lag_ms_max: AtomicU64,
}

/// What the core reports for the heartbeat (refreshed every second).
#[derive(Debug, Clone, Default)]
pub struct LocalState {
    pub ready: bool,
    pub load: Load,
}

/// Everything the cluster side of a node shares. See the module docs.
pub struct Cluster {
    pub me: NodeId,
    pub cfg: ClusterConfig,
    pub url: String,
    pub generation: u64,
    pub index: Arc<dyn ClusterIndex>,
    pub blobs: Arc<dyn BlobStore>,
    /// Partial uploads from peers.
    pub incoming: PathBuf,
    pub membership: Mutex<Membership>,
    pub clock: Mutex<Clock>,
    pub client: PeerClient,
    /// Per peer: the bandwidth cap's bucket shared by every pull from it.
    pub pull_buckets: Mutex<std::collections::HashMap<String, cluster::TokenBucket>>,
    /// The cluster API's TLS settings (none without TLS), for reloads.
    pub server_tls: Option<tls::ServerTls>,
    /// This node's audit trail (served to peers) and the copies of theirs.
    pub access: Option<Arc<dyn store::AccessStore>>,
    pub secret: Vec<u8>,
    pub local: Mutex<LocalState>,
    pub settings_digest: Mutex<String>,
    /// Wakes the replication workers (a recording was queued).
    pub outbox_wake: Notify,
    /// Wakes the heartbeat worker (a setting changed: push it now).
    pub settings_changed: Notify,
    /// Starts an anti-entropy round now (an operator asked).
    pub anti_entropy_now: Arc<Notify>,
    pub counters: ClusterCounters,
    /// Uploads in progress: bytes received and the running SHA-256, so the
    /// last chunk needs no second read of the file (lost on restart: the
    /// part file is hashed again once).
    pub uploads: Mutex<std::collections::HashMap<model::RecordingId, (u64, sha2::Sha256)>>,
    /// The last 10,000 times from a call's end to a target's verified copy, ms.
    pub recent_lags: Mutex<std::collections::VecDeque<u64>>,
    /// Every node ever heard from (persisted): replication targets even while down.
    pub known_nodes: Mutex<std::collections::BTreeSet<String>>,
    /// The leader's view, for status.
    pub leader: Mutex<Option<NodeId>>,
    /// Set while this node's last full sync is older than the tombstone
    /// horizon: it serves no anti-entropy until it caught up (see docs/cluster.md).
    pub quarantined: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").field("me", &self.me).field("url", &self.url).finish()
    }
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Cluster {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        me: NodeId,
        cfg: ClusterConfig,
        secret: Vec<u8>,
        index: Arc<dyn ClusterIndex>,
        blobs: Arc<dyn BlobStore>,
        incoming: PathBuf,
        client_tls: Option<ureq::tls::TlsConfig>,
    ) -> Arc<Cluster> {
        let started = Instant::now();
        let timing = Timing {
            dead_after: Duration::from_millis(cfg.dead_after_ms),
            hold_down: Duration::from_millis(cfg.leader_hold_down_ms),
        };
        let mut membership = Membership::new(me.clone(), started, timing);
        for p in &cfg.peers {
            membership.add(p);
        }
        let url = cfg.advertise();
        let client = PeerClient::new(me.clone(), secret.clone(), Duration::from_secs(30), client_tls);
        Arc::new(Cluster {
            clock: Mutex::new(Clock::new(me.clone(), cfg.max_clock_skew_ms)),
            me,
            url,
            generation: now_ms() as u64,
            index,
            blobs,
            incoming,
            membership: Mutex::new(membership),
            client,
            server_tls: None,
            access: None,
            pull_buckets: Mutex::new(std::collections::HashMap::new()),
            secret,
            local: Mutex::new(LocalState::default()),
            settings_digest: Mutex::new(String::new()),
            outbox_wake: Notify::new(),
            settings_changed: Notify::new(),
            anti_entropy_now: Arc::new(Notify::new()),
            counters: ClusterCounters::default(),
            leader: Mutex::new(None),
            known_nodes: Mutex::new(Default::default()),
            recent_lags: Mutex::new(Default::default()),
            uploads: Mutex::new(Default::default()),
            quarantined: AtomicBool::new(false),
            cfg,
        })
    }

    /// This node's status as peers see it.
    pub fn my_status(&self) -> NodeStatus {
        let local = self.local.lock().expect("local state lock").clone();
        NodeStatus {
            node: self.me.clone(),
            site: self.cfg.site.clone(),
            priority: self.cfg.priority,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            generation: self.generation,
            url: self.url.clone(),
            ready: local.ready,
            load: local.load,
            settings_digest: self.settings_digest.lock().expect("digest lock").clone(),
        }
    }

    /// Does this node hold the maintenance lease now?
    pub fn is_leader(&self) -> bool {
        let now = Instant::now();
        let me = self.my_status();
        let leader = self.membership.lock().expect("membership lock").leader(now, &me);
        let mine = leader.as_ref() == Some(&self.me);
        *self.leader.lock().expect("leader lock") = leader;
        mine
    }

    /// Node ids recordings of this node are replicated to.
    pub fn targets(&self) -> Vec<String> {
        let mut t: Vec<String> = self.cfg.targets.keys().cloned().collect();
        if !self.cfg.only_listed_targets {
            let m = self.membership.lock().expect("membership lock");
            for v in m.view(Instant::now()) {
                if let Some(s) = v.status {
                    t.push(s.node.0);
                }
            }
            t.extend(self.known_nodes.lock().expect("known nodes lock").iter().cloned());
        }
        t.retain(|n| *n != self.me.0);
        t.sort();
        t.dedup();
        t
    }

    /// The schedule and bandwidth cap of a target.
    pub fn target_rules(&self, target: &str) -> (Schedule, u64) {
        match self.cfg.targets.get(target) {
            Some(t) => {
                let zone = if t.timezone.is_empty() { "UTC" } else { &t.timezone };
                let schedule = Schedule::parse(&t.windows, zone).unwrap_or(Schedule::Continuous);
                (schedule, t.bandwidth_kbps * 1000 / 8)
            }
            None => (Schedule::Continuous, 0),
        }
    }

    /// The URL of a live peer by node id.
    pub fn url_of(&self, node: &NodeId) -> Option<String> {
        self.membership.lock().expect("membership lock").url_of(Instant::now(), node)
    }

    /// Live peers' (node, url), the origin node `prefer` first.
    pub fn live_peers(&self, prefer: Option<&NodeId>) -> Vec<(NodeId, String)> {
        let m = self.membership.lock().expect("membership lock");
        let now = Instant::now();
        let mut out: Vec<(NodeId, String)> =
            m.view(now).into_iter().filter(|v| v.alive).filter_map(|v| v.status.map(|s| (s.node, v.url))).collect();
        out.sort_by_key(|(n, _)| (Some(n) != prefer, n.clone()));
        out
    }

    /// Deletes a recording here for good (tombstone first, then its blobs).
    pub async fn apply_tombstone(&self, t: &Tombstone) -> Result<bool, String> {
        let deleted = self.index.tombstone(t).await.map_err(|e| e.to_string())?;
        let Some(meta) = deleted else { return Ok(false) };
        let blobs = self.blobs.clone();
        tokio::task::spawn_blocking(move || {
            for key in [BlobKey::audio(meta.started_at, meta.id), BlobKey::meta(meta.started_at, meta.id)] {
                if let Err(e) = blobs.delete(&key) {
                    tracing::warn!(key = %key, error = %e, "could not delete a tombstoned blob");
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(true)
    }

    /// Stores a recording's metadata that came from a peer (JSON blob and
    /// index row). Returns false when it is tombstoned here, or already past
    /// the retention period (a copy of a recording the cluster deleted long
    /// ago, from a node that was away: it must not come back).
    pub async fn store_replica_meta(&self, meta: &RecordingMeta) -> Result<bool, String> {
        Ok(self.store_replica_metas(std::slice::from_ref(meta)).await?.pop().unwrap_or(false))
    }

    /// [`Cluster::store_replica_meta`] for a batch: one blob write (one
    /// filesystem sync) and one index transaction for all of them.
    pub async fn store_replica_metas(&self, metas: &[RecordingMeta]) -> Result<Vec<bool>, String> {
        let retention = settings::all_settings(self).await.into_iter().find(|s| s.key == "retention.days");
        let oldest_ms = retention.and_then(|s| s.value.as_i64()).filter(|d| *d > 0).map(|d| now_ms() - d * 86_400_000);
        let mut keep = Vec::with_capacity(metas.len());
        for meta in metas {
            let started = (meta.started_at.unix_timestamp_nanos() / 1_000_000) as i64;
            let too_old = oldest_ms.is_some_and(|o| started < o);
            if too_old {
                tracing::info!(recording = %meta.id, "refused a copy older than the retention period");
            }
            let dead = self.index.tombstoned(meta.id).await.map_err(|e| e.to_string())?.is_some();
            keep.push(!too_old && !dead);
        }
        let puts: Vec<BlobPut> = metas
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(m, _)| BlobPut::Bytes { key: BlobKey::meta(m.started_at, m.id), data: m.to_json() })
            .collect();
        if !puts.is_empty() {
            let blobs = self.blobs.clone();
            let written = tokio::task::spawn_blocking(move || blobs.put_all(puts)).await.map_err(|e| e.to_string())?;
            if let Some(Err(e)) = written.into_iter().find(Result::is_err) {
                return Err(format!("storing metadata: {e}"));
            }
        }
        // `false` keeps the audio flag as it is (it only ever rises through a verified copy).
        let items: Vec<(&RecordingMeta, bool)> =
            metas.iter().zip(&keep).filter(|(_, k)| **k).map(|(m, _)| (m, false)).collect();
        let stored = self.index.put_replicas(&items).await.map_err(|e| e.to_string())?;
        let mut stored = stored.into_iter();
        // A stale snapshot that changed nothing still counts as held.
        Ok(keep.into_iter().map(|k| k && stored.next().is_some()).collect())
    }

    /// Lag from a recording's end to now, counted when a target confirmed a copy.
    pub fn count_lag(&self, meta: &RecordingMeta) {
        if let Some(end) = meta.ended_at {
            let lag = (now_ms() - (end.unix_timestamp_nanos() / 1_000_000) as i64).max(0) as u64;
            let c = &self.counters;
            c.lag_ms_sum.fetch_add(lag, Ordering::Relaxed);
            c.lag_count.fetch_add(1, Ordering::Relaxed);
            c.lag_ms_max.fetch_max(lag, Ordering::Relaxed);
            let mut recent = self.recent_lags.lock().expect("lags lock");
            if recent.len() == 10_000 {
                recent.pop_front();
            }
            recent.push_back(lag);
        }
    }

    /// The p-th percentile (0–100) of the recent lags, ms.
    pub fn lag_percentile(&self, p: f64) -> Option<u64> {
        let mut v: Vec<u64> = self.recent_lags.lock().expect("lags lock").iter().copied().collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Some(v[i.min(v.len() - 1)])
    }
}

/// A snapshot of the cluster for the public API and the CLI.
pub fn status_json(c: &Cluster) -> serde_json::Value {
    let now = Instant::now();
    let peers = c.membership.lock().expect("membership lock").view(now);
    let leader = c.leader.lock().expect("leader lock").clone();
    serde_json::json!({
        "node": c.me,
        "url": c.url,
        "site": c.cfg.site,
        "priority": c.cfg.priority,
        "leader": leader,
        "is_leader": leader.as_ref() == Some(&c.me),
        "quarantined": c.quarantined.load(Ordering::Relaxed),
        "me": c.my_status(),
        "peers": peers,
        "targets": c.targets(),
    })
}

/// A running cluster side: the shared state, the workers' registry, the
/// bound API address.
pub struct Started {
    pub cluster: Arc<Cluster>,
    pub addr: std::net::SocketAddr,
}

impl Cluster {
    /// Reads the TLS certificate, key and CA files again (SIGHUP): new
    /// connections, both served and made, use them. Any error keeps the
    /// running ones. Returns whether TLS is in use.
    pub fn reload_tls(&self) -> anyhow::Result<bool> {
        let Some(server) = &self.server_tls else { return Ok(false) };
        let acceptor = tls::acceptor(&self.cfg)?.expect("TLS is configured");
        let client = tls::client_config(&self.cfg)?;
        server.replace(acceptor);
        self.client.replace_tls(client);
        Ok(true)
    }
}

/// Binds the inter-node API and starts heartbeats, anti-entropy, the jobs
/// and a replication worker per target (targets appear as peers do).
#[allow(clippy::too_many_arguments)]
pub async fn start(
    me: NodeId,
    mut cfg: ClusterConfig,
    index: Arc<dyn ClusterIndex>,
    access: Arc<dyn store::AccessStore>,
    blobs: Arc<dyn BlobStore>,
    data_root: &std::path::Path,
    runner: &background::Runner,
) -> anyhow::Result<Started> {
    use anyhow::Context;
    let secret = cfg.secret()?;
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .with_context(|| format!("binding the cluster API {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    if cfg.advertise_url.is_none() {
        let scheme = if cfg.tls() { "https" } else { "http" };
        cfg.advertise_url = Some(format!("{scheme}://{addr}"));
    }
    let incoming = data_root.join("incoming");
    std::fs::create_dir_all(&incoming)?;
    let server_tls = tls::acceptor(&cfg)?.map(tls::ServerTls::new);
    let client_tls = tls::client_config(&cfg)?;
    let mut c = Cluster::new(me, cfg, secret, index, blobs, incoming, client_tls);
    Arc::get_mut(&mut c).expect("not shared yet").server_tls = server_tls.clone();
    Arc::get_mut(&mut c).expect("not shared yet").access = Some(access);
    for url in c.index.peers().await.unwrap_or_default() {
        c.membership.lock().expect("membership lock").add(&url);
    }
    let known = c.index.known_nodes().await.unwrap_or_default();
    c.known_nodes.lock().expect("known nodes lock").extend(known);
    settings::refresh_digest(&c).await;
    match server_tls {
        Some(server_tls) => {
            tokio::spawn(tls::serve(listener, server_tls, api::router(c.clone())));
        }
        None => {
            let app = api::router(c.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, app).await {
                    tracing::error!(error = %e, "cluster API stopped");
                }
            });
        }
    }
    runner.spawn(heartbeat::Heartbeat::new(c.clone()));
    runner.spawn(antientropy::AntiEntropy::new(c.clone(), data_root.join("last-sync")));
    runner.spawn(jobs::Jobs::new(c.clone()));
    runner.spawn(audit::AuditCopy::new(c.clone()));
    // A replication worker for every target, including ones that appear later.
    {
        let (c, runner) = (c.clone(), runner.clone());
        tokio::spawn(async move {
            let mut running = std::collections::BTreeSet::new();
            loop {
                let mut targets = c.targets();
                if let Ok(stats) = c.index.outbox_stats().await {
                    // Items queued for a node not seen since (it left, or is down at start).
                    targets.extend(stats.into_iter().map(|s| s.target));
                }
                for t in targets {
                    if running.insert(t.clone()) {
                        runner.spawn(replicate::Replicator::new(c.clone(), t));
                    }
                }
                tokio::time::sleep(Duration::from_millis(c.cfg.heartbeat_ms.max(200))).await;
            }
        });
    }
    tracing::info!(url = %c.url, peers = c.cfg.peers.len(), tls = c.cfg.tls(), mutual = c.cfg.tls_client_auth, "cluster API listening");
    Ok(Started { cluster: c, addr })
}
