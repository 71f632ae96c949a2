//! The node's HTTP interface: health for load balancers and DNS failover,
//! a JSON API over recordings, audio download (with HTTP Range, so players
//! can seek), administrator actions and Prometheus metrics.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use model::{RecordingId, RecordingMeta, RecordingState};
use serde::Deserialize;
use serde_json::json;
use store::{BlobKey, BlobStore, RecordingIndex};
use tokio::sync::oneshot;
use web::Principal;

use super::cluster::Cluster;
use super::core::{status, AdminCmd, AdminTx};
use super::{download, metrics};

#[derive(Clone)]
pub struct AppState {
    pub admin: AdminTx,
    pub db: Arc<dyn RecordingIndex>,
    pub blobs: Arc<dyn BlobStore>,
    pub node_id: String,
    pub cluster: Option<Arc<Cluster>>,
    pub workers: background::Registry,
    pub tcp: Arc<super::transport::TcpStats>,
    /// The open-files limit in force.
    pub open_files: u64,
    pub storage_probe: Arc<metrics::StorageProbeStats>,
    pub media_alarms: Arc<metrics::MediaAlarmCounts>,
    pub metadata_sync: super::persist::SyncLatency,
    pub http: Arc<super::http_listener::HttpStats>,
}

/// How long liveness and metrics wait for the recorder core.
const CORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The core's status, or `None` when it does not answer within [`CORE_TIMEOUT`].
async fn core_status(s: &AppState) -> Option<super::core::NodeStatus> {
    tokio::time::timeout(CORE_TIMEOUT, status(&s.admin)).await.ok().flatten()
}

/// The node's own routes (health, metrics, recordings that need the
/// recorder core, node and cluster operations), without the access layer:
/// `serve` merges them with the `web` crate's and guards them all.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/status", get(api_status))
        .route("/api/v1/recordings/active", get(active))
        .route("/api/v1/recordings/{id}", get(detail).delete(delete_recording))
        .route("/api/v1/recordings/{id}/audio", get(audio))
        .route("/api/v1/recordings/{id}/complete", post(complete))
        .route("/api/v1/drain", post(drain))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/cluster", get(cluster_status))
        .route("/api/v1/cluster/scrub", post(cluster_scrub))
        .route("/api/v1/cluster/nodes/{node}", axum::routing::delete(cluster_forget))
        .route("/api/v1/cluster/anti-entropy", post(cluster_anti_entropy))
        .route("/api/v1/replication", get(replication_status))
        .route("/api/v1/replication/retry", post(replication_retry))
        .route("/api/v1/settings", get(settings_list))
        .route("/api/v1/settings/{key}", axum::routing::put(settings_put))
        .with_state(state)
}

/// An API failure: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        web::Problem::new(self.0, self.1).into_response()
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    ApiError(code, msg.into()).into_response()
}

fn api_error(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, msg.into())
}

/// A storage or internal failure: the client gets a generic message and a
/// correlation id, the log gets the detail under the same id (database
/// error text never reaches a client).
fn internal(code: StatusCode, what: &str, detail: impl std::fmt::Display) -> ApiError {
    let id = format!("{:016x}", fastrand::u64(..));
    tracing::error!(correlation_id = %id, error = %detail, "{what} failed");
    ApiError(code, format!("{what} failed (correlation id {id})"))
}

/// Alive means the recorder core answers (within 2 s), not just that the
/// HTTP task runs: a stuck core is restarted by the orchestrator.
async fn live(State(s): State<AppState>) -> Response {
    match core_status(&s).await {
        Some(_) => "ok\n".into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the recorder core does not answer"),
    }
}

async fn ready(State(s): State<AppState>) -> Response {
    let Some(st) = core_status(&s).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    };
    let db = s.db.ping().await;
    // Details that do not stop the node from recording but need a look.
    let mut warnings = Vec::new();
    if st.recordings_with_media_alarm > 0 {
        warnings.push(format!(
            "{} call(s) in progress have a stream without RTP (firewall, NAT or a dead media path?)",
            st.recordings_with_media_alarm
        ));
    }
    match (st.can_record, db) {
        (Ok(()), Ok(())) => Json(json!({ "ready": true, "node": s.node_id, "warnings": warnings })).into_response(),
        (Err(why), _) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": why }))).into_response()
        }
        (_, Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "reason": internal(StatusCode::SERVICE_UNAVAILABLE, "index", e).1 })),
        )
            .into_response(),
    }
}

/// Metrics answer even when the core is stuck: the process figures and
/// `callvault_core_up 0` then, without the core's counters.
async fn metrics_text(State(s): State<AppState>) -> Response {
    let cluster = match &s.cluster {
        Some(c) => Some(cluster_figures(c).await),
        None => None,
    };
    let mut process = metrics::ProcessFigures::read(&s.tcp, &s.storage_probe, &s.media_alarms, s.open_files);
    process.metadata_sync = *s.metadata_sync.lock().expect("latency lock");
    process.http_open = s.http.open.load(std::sync::atomic::Ordering::Relaxed);
    process.http_refused = s.http.refused.load(std::sync::atomic::Ordering::Relaxed);
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        metrics::render(core_status(&s).await, cluster, process),
    )
        .into_response()
}

async fn api_status(State(s): State<AppState>) -> Response {
    let Some(st) = status(&s.admin).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    };
    let ended: std::collections::BTreeMap<_, _> =
        [RecordingState::Completed, RecordingState::Interrupted, RecordingState::Failed]
            .into_iter()
            .map(|state| (state.as_str(), st.counters.ended_in(state)))
            .collect();
    Json(json!({
        "node": s.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "active_recordings": st.active_recordings,
        "active_legs": st.active_legs,
        "draining": st.draining,
        "storage_ok": st.storage_ok,
        "storage_reason": st.storage_reason,
        "accepting_calls": st.can_record.is_ok(),
        "refusal_reason": st.can_record.err(),
        "invites_accepted": st.counters.invites_accepted,
        "invites_cancelled": st.counters.invites_cancelled,
        "recordings_unarchived": st.unarchived,
        "recordings_ended": ended,
        "recordings_with_media_alarm": st.recordings_with_media_alarm,
        "streams_without_rtp": st.counters.streams_without_rtp,
        "rtp_packets": st.media.packets,
        "rtp_lost": st.media.lost,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActiveParams {
    /// Any value: the calls of every live node of the cluster, not only this one.
    cluster: Option<String>,
}

/// Calls being recorded now (within the caller's scope): on this node, or
/// on every node (`?cluster=1`; each live peer answers for its own).
async fn active(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    q: Result<Query<ActiveParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(StatusCode::BAD_REQUEST, "the only parameter is cluster");
    };
    let (tx, rx) = oneshot::channel();
    if s.admin.send(AdminCmd::Active(tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    }
    let Ok(mut recs) = rx.await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    };
    let mut unreachable = Vec::new();
    if let (Some(c), Some(_)) = (&s.cluster, q.cluster) {
        let peers: Vec<String> = c
            .membership
            .lock()
            .expect("membership lock")
            .view(std::time::Instant::now())
            .into_iter()
            .filter(|v| v.alive)
            .map(|v| v.url)
            .collect();
        for url in peers {
            let c = c.clone();
            let u = url.clone();
            let reply = tokio::task::spawn_blocking(move || c.client.json("GET", &u, "/cluster/v1/active", None)).await;
            match reply {
                Ok(Ok(r)) if r.status == 200 => match serde_json::from_slice::<Vec<RecordingMeta>>(&r.body) {
                    Ok(theirs) => recs.extend(theirs),
                    Err(_) => unreachable.push(url),
                },
                _ => unreachable.push(url),
            }
        }
    }
    recs.retain(|m| p.sees(m));
    recs.sort_by_key(|m| std::cmp::Reverse(m.started_at));
    Json(json!({ "recordings": recs, "unreachable": unreachable })).into_response()
}

fn parse_id(id: &str) -> Result<RecordingId, ApiError> {
    id.parse().map_err(|_| api_error(StatusCode::BAD_REQUEST, "recording ids are UUIDs"))
}

async fn find(s: &AppState, id: RecordingId) -> Result<RecordingMeta, ApiError> {
    let (tx, rx) = oneshot::channel();
    if s.admin.send(AdminCmd::ActiveOne(id, tx)).await.is_ok() {
        if let Ok(Some(meta)) = rx.await {
            return Ok(meta);
        }
    }
    match s.db.get(id).await {
        Ok(Some(meta)) => Ok(meta),
        Ok(None) => Err(api_error(StatusCode::NOT_FOUND, "no such recording")),
        Err(e) => Err(internal(StatusCode::SERVICE_UNAVAILABLE, "index", e)),
    }
}

/// A recording the caller may see (out of scope looks the same as absent).
async fn find_visible(s: &AppState, p: &Principal, id: RecordingId) -> Result<RecordingMeta, ApiError> {
    let meta = find(s, id).await?;
    if !p.sees(&meta) {
        return Err(api_error(StatusCode::NOT_FOUND, "no such recording"));
    }
    Ok(meta)
}

async fn detail(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    let meta = find_visible(&s, &p, id).await?;
    Ok(Json(with_location(&s, meta).await))
}

/// Query of the audio route: a download, or the grant of a signed link
/// (checked by the access layer).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudioParams {
    download: Option<String>,
    exp: Option<i64>,
    by: Option<String>,
    sig: Option<String>,
}

async fn audio(
    State(s): State<AppState>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    q: Result<Query<AudioParams>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| api_error(StatusCode::BAD_REQUEST, e.body_text()))?;
    let _grant = (q.exp, q.by, q.sig);
    let id = parse_id(&id)?;
    let meta = find_visible(&s, &p, id).await?;
    if meta.state == RecordingState::Active {
        return Err(api_error(StatusCode::CONFLICT, "recording in progress; audio is available when it ends"));
    }
    let audio = meta.audio.clone().ok_or_else(|| api_error(StatusCode::NOT_FOUND, "this recording has no audio"))?;
    if let Some(c) = &s.cluster {
        if c.index.audio_here(id).await.ok().flatten() == Some(false) {
            // Only the metadata reached this node so far: serve the audio from a node that has it.
            return proxy_audio(c, &meta, &headers).await;
        }
    }
    let key = BlobKey::parse(&audio.path)
        .ok_or_else(|| api_error(StatusCode::INTERNAL_SERVER_ERROR, "stored audio key is not valid"))?;
    let blobs = s.blobs.clone();
    let k = key.clone();
    let len = tokio::task::spawn_blocking(move || blobs.len(&k))
        .await
        .map_err(|e| internal(StatusCode::INTERNAL_SERVER_ERROR, "blob store", e))?
        .map_err(|e| internal(StatusCode::SERVICE_UNAVAILABLE, "blob store", e))?
        .ok_or_else(|| api_error(StatusCode::NOT_FOUND, "audio file missing on this node"))?;
    // The audio of a finished recording never changes: its checksum is its ETag.
    let etag = audio.sha256.as_deref().map(|h| format!("\"{h}\""));
    if let (Some(tag), Some(inm)) = (&etag, headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok())) {
        if inm.split(',').any(|t| t.trim() == tag || t.trim() == "*") {
            let mut r = StatusCode::NOT_MODIFIED.into_response();
            r.headers_mut().insert(header::ETAG, HeaderValue::from_str(tag).expect("hex"));
            return Ok(r);
        }
    }
    let mut resp = download::serve(s.blobs.clone(), key, len, &headers, "audio/wav");
    if let Some(tag) = etag.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
        resp.headers_mut().insert(header::ETAG, tag);
    }
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    let kind = if q.download.is_some() { "attachment" } else { "inline" };
    let disposition = format!("{kind}; filename=\"{id}.wav\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(sha) = audio.sha256.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        resp.headers_mut().insert("x-content-sha256", sha);
    }
    Ok(resp)
}

/// Streams a recording's audio from a live peer that holds it (the node
/// that recorded it first), passing the Range through.
async fn proxy_audio(c: &Arc<Cluster>, meta: &RecordingMeta, headers: &HeaderMap) -> Result<Response, ApiError> {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(str::to_owned);
    for (node, url) in c.live_peers(Some(&meta.node_id)) {
        let (c2, id, range) = (c.clone(), meta.id, range.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        let (head_tx, head_rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let r = c2.client.get_stream(&url, &format!("/cluster/v1/recordings/{id}/audio"), range.as_deref());
            let (status, hdrs, mut body) = match r {
                Ok(x) => x,
                Err(e) => {
                    let _ = head_tx.send(Err(e));
                    return;
                }
            };
            if head_tx.send(Ok((status, hdrs))).is_err() || !(status == 200 || status == 206) {
                return;
            }
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                match std::io::Read::read(&mut body, &mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        });
        let (status, hdrs) = match head_rx.await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                tracing::debug!(peer = %node, error = %e, "audio proxy: peer unreachable");
                continue;
            }
            Err(_) => continue,
        };
        if !(status == 200 || status == 206) {
            continue;
        }
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
        let mut resp = Response::new(axum::body::Body::from_stream(stream));
        *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        for (k, v) in hdrs {
            if ["content-type", "content-length", "content-range", "accept-ranges"]
                .contains(&k.to_ascii_lowercase().as_str())
            {
                if let (Ok(name), Ok(value)) = (header::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(&v))
                {
                    resp.headers_mut().insert(name, value);
                }
            }
        }
        if let Ok(v) = HeaderValue::from_str(&node.0) {
            resp.headers_mut().insert("x-served-by-node", v);
        }
        if let Some(sha) =
            meta.audio.as_ref().and_then(|a| a.sha256.as_deref()).and_then(|h| HeaderValue::from_str(h).ok())
        {
            resp.headers_mut().insert("x-content-sha256", sha);
        }
        return Ok(resp);
    }
    Err(api_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the audio is on another node, and no node holding it is reachable now",
    ))
}

/// Adds where the audio is to a recording's JSON (cluster members only),
/// as search results describe it.
async fn with_location(s: &AppState, meta: RecordingMeta) -> serde_json::Value {
    match &s.cluster {
        Some(c) => web::recordings::describe_on(c.index.as_ref(), &c.me.0, &meta).await,
        None => serde_json::to_value(&meta).expect("metadata serializes"),
    }
}

async fn complete(State(s): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = oneshot::channel();
    if s.admin.send(AdminCmd::Complete(id, tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    }
    match rx.await {
        Ok(true) => Json(json!({ "completed": id })).into_response(),
        Ok(false) => error(StatusCode::NOT_FOUND, "no active recording with that id"),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running"),
    }
}

#[derive(Debug, Deserialize)]
struct DrainBody {
    draining: bool,
}

async fn drain(State(s): State<AppState>, Json(body): Json<DrainBody>) -> Response {
    if s.admin.send(AdminCmd::SetDraining(body.draining)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    }
    Json(json!({ "draining": body.draining })).into_response()
}

// ----- cluster -----

async fn cluster_figures(c: &Arc<Cluster>) -> metrics::ClusterFigures {
    use std::sync::atomic::Ordering::Relaxed;
    let view = c.membership.lock().expect("membership lock").view(std::time::Instant::now());
    let k = &c.counters;
    let now = super::cluster::now_ms();
    let targets = c
        .index
        .outbox_stats()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s.target, s.depth, s.oldest_enqueued_ms.map_or(0.0, |o| (now - o).max(0) as f64 / 1000.0), s.failing))
        .collect();
    metrics::ClusterFigures {
        peers_known: view.len() as u64,
        peers_alive: view.iter().filter(|p| p.alive).count() as u64,
        is_leader: c.is_leader(),
        quarantined: c.quarantined.load(Relaxed),
        auth_refused: k.auth_refused.load(Relaxed),
        replicated_items: k.replicated_items.load(Relaxed),
        replicated_bytes: k.replicated_bytes.load(Relaxed),
        replication_failures: k.replication_failures.load(Relaxed),
        received_copies: k.received_copies.load(Relaxed),
        rejected_copies: k.rejected_copies.load(Relaxed),
        anti_entropy_rounds: k.anti_entropy_rounds.load(Relaxed),
        anti_entropy_pulled: k.anti_entropy_pulled.load(Relaxed),
        pull_throttled_ms: k.pull_throttled_ms.load(Relaxed),
        scrub_checked: k.scrub_checked.load(Relaxed),
        scrub_corrupt: k.scrub_corrupt.load(Relaxed),
        scrub_repaired: k.scrub_repaired.load(Relaxed),
        purged: k.purged.load(Relaxed),
        audit_copied: k.audit_copied.load(Relaxed),
        audit_chain_breaks: k.audit_chain_breaks.load(Relaxed),
        lag_ms_max: k.lag_ms_max.load(Relaxed),
        targets,
    }
}

fn cluster_of(s: &AppState) -> Result<&Arc<Cluster>, ApiError> {
    s.cluster.as_ref().ok_or_else(|| {
        api_error(StatusCode::NOT_FOUND, "this node is not part of a cluster (cluster.listen is not set)")
    })
}

async fn workers(State(s): State<AppState>) -> Response {
    Json(json!({ "workers": s.workers.list() })).into_response()
}

async fn cluster_status(State(s): State<AppState>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    c.is_leader(); // refresh the leader view
    Ok(Json(super::cluster::status_json(c)).into_response())
}

/// Per target: the outbox (depth, oldest item, last error) and its worker.
async fn replication_status(State(s): State<AppState>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    let stats = c.index.outbox_stats().await.map_err(|e| internal(StatusCode::SERVICE_UNAVAILABLE, "index", e))?;
    let workers = s.workers.list();
    let mut targets = serde_json::Map::new();
    let mut names: Vec<String> = c.targets();
    names.extend(stats.iter().map(|s| s.target.clone()));
    names.sort();
    names.dedup();
    let now = super::cluster::now_ms();
    for t in names {
        let st = stats.iter().find(|s| s.target == t).cloned().unwrap_or_default();
        let worker = workers.iter().find(|w| w.name == format!("replicate:{t}"));
        targets.insert(
            t.clone(),
            json!({
                "depth": st.depth,
                "meta_depth": st.meta_depth,
                "oldest_item_age_secs": st.oldest_enqueued_ms.map(|o| (now - o).max(0) as f64 / 1000.0),
                "failing": st.failing,
                "last_error": st.last_error,
                "bytes_per_sec": worker.and_then(|w| w.status.bytes_per_sec),
                "bytes_total": worker.map(|w| w.status.bytes_total),
                "items_done": worker.map(|w| w.status.items_done),
                "worker_state": worker.map(|w| w.state),
                "window": worker.and_then(|w| w.status.progress.clone()),
            }),
        );
    }
    let k = &c.counters;
    let count = k.lag_count.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Json(json!({
        "targets": targets,
        "lag_ms_avg": (count > 0).then(|| k.lag_ms_sum.load(std::sync::atomic::Ordering::Relaxed) / count),
        "lag_ms_p50": c.lag_percentile(50.0),
        "lag_ms_p99": c.lag_percentile(99.0),
        "lag_samples": count,
        "lag_ms_max": k.lag_ms_max.load(std::sync::atomic::Ordering::Relaxed),
    }))
    .into_response())
}

#[derive(Debug, Deserialize, Default)]
struct RetryBody {
    target: Option<String>,
}

async fn replication_retry(State(s): State<AppState>, body: Option<Json<RetryBody>>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    let target = body.and_then(|b| b.0.target);
    let n = c
        .index
        .outbox_retry(target.as_deref(), super::cluster::now_ms())
        .await
        .map_err(|e| internal(StatusCode::SERVICE_UNAVAILABLE, "index", e))?;
    c.outbox_wake.notify_waiters();
    tracing::info!(target = ?target, items = n, "replication retry requested");
    Ok(Json(json!({ "rescheduled": n })).into_response())
}

async fn cluster_scrub(State(s): State<AppState>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    let (checked, corrupt, repaired) = super::cluster::jobs::scrub(c).await;
    Ok(Json(json!({ "checked": checked, "corrupt": corrupt, "repaired": repaired })).into_response())
}

/// An operator removes a node for good: no target any more, its queue dropped.
async fn cluster_forget(State(s): State<AppState>, Path(node): Path<String>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    if node == c.me.0 {
        return Err(api_error(StatusCode::BAD_REQUEST, "a node cannot forget itself"));
    }
    let dropped =
        c.index.forget_node(&node).await.map_err(|e| internal(StatusCode::SERVICE_UNAVAILABLE, "index", e))?;
    c.known_nodes.lock().expect("known nodes lock").remove(&node);
    let url = c
        .membership
        .lock()
        .expect("membership lock")
        .view(std::time::Instant::now())
        .into_iter()
        .find(|p| p.status.as_ref().is_some_and(|st| st.node.0 == node))
        .map(|p| p.url);
    if let Some(url) = url {
        c.membership.lock().expect("membership lock").remove(&url);
        let _ = c.index.remove_peer(&url).await;
    }
    tracing::warn!(node = %node, dropped, "node forgotten by the operator");
    Ok(Json(json!({ "forgotten": node, "dropped_items": dropped })).into_response())
}

async fn cluster_anti_entropy(State(s): State<AppState>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    c.anti_entropy_now.notify_one();
    Ok((StatusCode::ACCEPTED, Json(json!({ "anti_entropy": "started" }))).into_response())
}

async fn settings_list(State(s): State<AppState>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    // Users and tokens are settings too, but have their own routes (and hashes stay in).
    let all = super::cluster::settings::all_settings(c).await;
    let shown: Vec<_> = all.into_iter().filter(|s| !cluster::settings::is_access_key(&s.key)).collect();
    Ok(Json(json!({ "settings": shown })).into_response())
}

#[derive(Debug, Deserialize)]
struct SettingBody {
    value: serde_json::Value,
}

async fn settings_put(
    State(s): State<AppState>,
    Path(key): Path<String>,
    Json(body): Json<SettingBody>,
) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    if cluster::settings::is_access_key(&key) {
        return Err(api_error(StatusCode::BAD_REQUEST, "users and tokens are changed through /api/v1/users"));
    }
    let set = super::cluster::settings::set_setting(c, &key, body.value)
        .await
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    Ok(Json(json!({ "setting": set })).into_response())
}

/// Deletes a finished recording on every node (tombstone pushed to the peers).
async fn delete_recording(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let c = cluster_of(&s)?;
    let id = parse_id(&id)?;
    let meta = find(&s, id).await?;
    if meta.state == RecordingState::Active {
        return Err(api_error(StatusCode::CONFLICT, "recording in progress"));
    }
    let stamp = c.clock.lock().expect("clock lock").now(super::cluster::now_ms() as u64);
    let t = store::Tombstone {
        id,
        started_at_ms: (meta.started_at.unix_timestamp_nanos() / 1_000_000) as i64,
        deleted_at_ms: super::cluster::now_ms(),
        stamp: stamp.to_string(),
        reason: "deleted by administrator".into(),
    };
    c.apply_tombstone(&t).await.map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, e))?;
    super::cluster::jobs::push_tombstones(c, std::slice::from_ref(&t)).await;
    tracing::warn!(recording = %id, "recording deleted by administrator");
    Ok(Json(json!({ "deleted": id })).into_response())
}
