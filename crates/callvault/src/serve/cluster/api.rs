//! The inter-node API (`/cluster/v1`), on its own listen address.
//!
//! Every request must carry a valid signature of the cluster secret
//! (cluster::auth); anything else gets 401, is logged with the peer's
//! address and counted (`callvault_cluster_auth_refused_total`), and is
//! never served. Bodies are checked against the digest they declared.
//!
//! | route | what |
//! |---|---|
//! | `POST /heartbeat` | the caller's status in, ours out (a new caller joins) |
//! | `PUT /recordings/{id}/meta` | a recording's metadata (410 if deleted here) |
//! | `PUT /metas` | metadata of many recordings at once (one sync, one transaction) |
//! | `POST /metas/get` | our metadata of the given recordings (and tombstones) |
//! | `POST /audio-batch` | the audio of several small recordings at once, each verified |
//! | `GET /recordings/{id}/meta` | our metadata of it and whether the audio is here |
//! | `GET /recordings/{id}/audio` | its audio, with `Range` |
//! | `GET /recordings/{id}/upload` | how much of an upload we hold |
//! | `PUT /recordings/{id}/upload?offset&total&sha256` | a chunk of its audio; the last one is verified |
//! | `GET /buckets[?day=D]` | anti-entropy digests: per day, or the hours of a day |
//! | `POST /versions` | versions of every recording of the given hours |
//! | `POST /tombstones` | deletions to apply |
//! | `GET /settings`, `PUT /settings` | cluster settings (last writer wins) |
//! | `POST /scrub` | the job leader starts this node's integrity scrub |
//! | `GET /active` | this node's calls being recorded now (the live-calls page) |
//! | `GET /audit?after=N` | this node's audit entries after sequence N, in chain order (copied by peers) |

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use cluster::auth::{self, Signed};
use cluster::{Bucket, NodeStatus, Setting};
use model::{RecordingId, RecordingMeta};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use store::{BlobKey, BlobPut, Tombstone};

use super::{now_ms, Cluster};
use crate::serve::download;

/// Largest request body (an audio chunk is 1 MiB).
pub const MAX_BODY: usize = 8 * 1024 * 1024;

pub fn router(c: Arc<Cluster>) -> Router {
    Router::new()
        .route("/cluster/v1/heartbeat", post(heartbeat))
        .route("/cluster/v1/active", get(active_here))
        .route("/cluster/v1/audit", get(audit_after))
        .route("/cluster/v1/recordings/{id}/meta", put(put_meta).get(get_meta))
        .route("/cluster/v1/metas", put(put_metas))
        .route("/cluster/v1/metas/get", post(get_metas))
        .route("/cluster/v1/audio-batch", post(audio_batch))
        .route("/cluster/v1/recordings/{id}/audio", get(get_audio))
        .route("/cluster/v1/recordings/{id}/upload", get(upload_state).put(upload_chunk))
        .route("/cluster/v1/buckets", get(buckets))
        .route("/cluster/v1/versions", post(versions))
        .route("/cluster/v1/tombstones", post(tombstones))
        .route("/cluster/v1/settings", get(get_settings).put(put_settings))
        .route("/cluster/v1/scrub", post(start_scrub))
        .layer(middleware::from_fn_with_state(c.clone(), authenticate))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(c)
}

fn refuse(code: StatusCode, msg: impl Into<String>) -> Response {
    (code, Json(json!({ "error": msg.into() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "cluster API request failed");
    refuse(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable on this node")
}

/// Checks the signature before anything else runs; buffers the body to
/// check its digest (bodies are small: metadata, lists, 1 MiB chunks).
async fn authenticate(State(c): State<Arc<Cluster>>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|ci| ci.0);
    let (parts, body) = req.into_parts();
    let h = |name: &'static str| parts.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let fail = |why: String| {
        c.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(peer = ?peer, path = %parts.uri.path(), reason = %why, "refused a cluster request");
        refuse(StatusCode::UNAUTHORIZED, "cluster authentication failed")
    };
    let (Some(node), Some(time), Some(content), Some(sig)) =
        (h(auth::HEADER_NODE), h(auth::HEADER_TIME), h(auth::HEADER_CONTENT), h(auth::HEADER_SIGNATURE))
    else {
        return fail("missing authentication headers".into());
    };
    let Ok(time_ms) = time.parse::<i64>() else { return fail("malformed time header".into()) };
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let signed =
        Signed { method: parts.method.as_str(), path_and_query: path, node: &node, time_ms, content_sha256: &content };
    if let Err(e) = auth::verify(&c.secret, &signed, &sig, now_ms(), c.cfg.max_clock_skew_ms as i64) {
        return fail(format!("{e} (claimed node {node})"));
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => return refuse(StatusCode::PAYLOAD_TOO_LARGE, "body too large"),
    };
    // An audio chunk may travel unsigned (as S3's UNSIGNED-PAYLOAD): the
    // signed query names the whole file's SHA-256, which the upload checks
    // before anything is stored. Nothing else may skip the body digest.
    let chunk_upload = parts.method == axum::http::Method::PUT && parts.uri.path().ends_with("/upload");
    if !(chunk_upload && content == auth::UNSIGNED_PAYLOAD) && auth::content_sha256(&bytes) != content {
        return fail(format!("body does not match its declared digest (node {node})"));
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

async fn heartbeat(State(c): State<Arc<Cluster>>, Json(theirs): Json<NodeStatus>) -> Response {
    if theirs.node != c.me {
        let url = theirs.url.clone();
        let new = {
            let mut m = c.membership.lock().expect("membership lock");
            let new = m.add(&url);
            m.heard(Instant::now(), &url, theirs);
            new
        };
        if new {
            tracing::info!(url = %url, "a node joined the cluster");
            if let Err(e) = c.index.add_peer(&url, now_ms()).await {
                tracing::warn!(error = %e, "could not remember the new peer");
            }
        }
    }
    // Our peers go back with our status, so a node that knows one seed learns the whole cluster.
    let peers: Vec<String> = {
        let m = c.membership.lock().expect("membership lock");
        m.view(Instant::now()).into_iter().filter(|p| p.alive).map(|p| p.url).collect()
    };
    Json(json!({ "status": c.my_status(), "peers": peers })).into_response()
}

fn parse_id(id: &str) -> Option<RecordingId> {
    id.parse().ok()
}

fn bad_id() -> Response {
    refuse(StatusCode::BAD_REQUEST, "recording ids are UUIDs")
}

async fn put_meta(State(c): State<Arc<Cluster>>, Path(id): Path<String>, Json(meta): Json<RecordingMeta>) -> Response {
    let Some(id) = parse_id(&id) else { return bad_id() };
    if meta.id != id || !meta.state.is_final() {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "only a finished recording's own metadata is accepted");
    }
    match c.store_replica_meta(&meta).await {
        Ok(true) => {
            let here = c.index.audio_here(id).await.ok().flatten().unwrap_or(false);
            Json(json!({ "stored": true, "audio_here": here })).into_response()
        }
        Ok(false) => refuse(StatusCode::GONE, "deleted on this node"),
        Err(e) => internal(e),
    }
}

async fn put_metas(State(c): State<Arc<Cluster>>, Json(metas): Json<Vec<RecordingMeta>>) -> Response {
    if metas.iter().any(|m| !m.state.is_final()) || metas.len() > 1000 {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "up to 1000 finished recordings per batch");
    }
    match c.store_replica_metas(&metas).await {
        Ok(stored) => {
            let out: Vec<Value> = metas.iter().zip(stored).map(|(m, s)| json!({ "id": m.id, "stored": s })).collect();
            Json(out).into_response()
        }
        Err(e) => internal(e),
    }
}

/// Our metadata of each asked recording: `meta` and `audio_here`, or the
/// `tombstone` when it was deleted, or neither when we do not have it.
async fn get_metas(State(c): State<Arc<Cluster>>, Json(ids): Json<Vec<RecordingId>>) -> Response {
    if ids.len() > 1000 {
        return refuse(StatusCode::BAD_REQUEST, "up to 1000 ids per request");
    }
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let item = match c.index.tombstoned(id).await {
            Ok(Some(t)) => json!({ "id": id, "tombstone": t }),
            Ok(None) => match (c.index.get(id).await, c.index.audio_here(id).await) {
                (Ok(Some(m)), Ok(here)) if m.state.is_final() => {
                    json!({ "id": id, "meta": m, "audio_here": here.unwrap_or(false) })
                }
                (Ok(_), Ok(_)) => json!({ "id": id }),
                (Err(e), _) | (_, Err(e)) => return internal(e),
            },
            Err(e) => return internal(e),
        };
        out.push(item);
    }
    Json(out).into_response()
}

/// One entry of an audio batch: the payloads follow the header in order.
#[derive(Debug, Deserialize, serde::Serialize)]
pub struct BatchEntry {
    pub id: RecordingId,
    pub bytes: u64,
    pub sha256: String,
}

/// Several small recordings' audio in one request (the body: a 4-byte
/// big-endian header length, the JSON header of [`BatchEntry`], then the
/// payloads). Each is checked against its metadata's SHA-256 and size;
/// the good ones are stored with one sync and one index transaction.
async fn audio_batch(State(c): State<Arc<Cluster>>, body: Bytes) -> Response {
    if body.len() < 4 {
        return refuse(StatusCode::BAD_REQUEST, "empty batch");
    }
    let hlen = u32::from_be_bytes([body[0], body[1], body[2], body[3]]) as usize;
    let Some(header) = body.get(4..4 + hlen) else { return refuse(StatusCode::BAD_REQUEST, "truncated batch header") };
    let Ok(entries) = serde_json::from_slice::<Vec<BatchEntry>>(header) else {
        return refuse(StatusCode::BAD_REQUEST, "malformed batch header");
    };
    let mut pos = 4 + hlen;
    let mut results: Vec<Value> = Vec::with_capacity(entries.len());
    let mut accepted: Vec<(RecordingId, BlobKey, Bytes)> = Vec::new();
    for e in &entries {
        let Some(data) = body.get(pos..pos + e.bytes as usize) else {
            return refuse(StatusCode::BAD_REQUEST, "batch shorter than its header says");
        };
        pos += e.bytes as usize;
        let meta = match c.index.get(e.id).await {
            Ok(Some(m)) if m.state.is_final() => m,
            Ok(_) => {
                results.push(json!({ "id": e.id, "verified": false, "error": "send the metadata first" }));
                continue;
            }
            Err(err) => return internal(err),
        };
        let want = meta.audio.as_ref().and_then(|a| a.sha256.clone());
        let got = auth::content_sha256(data);
        if want.as_deref() != Some(got.as_str()) || want.as_deref() != Some(e.sha256.as_str()) {
            c.counters.rejected_copies.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(recording = %e.id, got = %got, "rejected a copy from a peer: checksum mismatch");
            results.push(json!({ "id": e.id, "verified": false, "error": "checksum mismatch" }));
            continue;
        }
        accepted.push((e.id, BlobKey::audio(meta.started_at, e.id), body.slice(pos - e.bytes as usize..pos)));
        results.push(json!({ "id": e.id, "verified": got }));
    }
    if !accepted.is_empty() {
        let puts = accepted.iter().map(|(_, k, d)| BlobPut::Bytes { key: k.clone(), data: d.to_vec() }).collect();
        let blobs = c.blobs.clone();
        let written = match tokio::task::spawn_blocking(move || blobs.put_all(puts)).await {
            Ok(w) => w,
            Err(e) => return internal(e),
        };
        if let Some(Err(e)) = written.into_iter().find(Result::is_err) {
            return internal(e);
        }
        let ids: Vec<RecordingId> = accepted.iter().map(|(id, _, _)| *id).collect();
        if let Err(e) = c.index.set_audio_here_many(&ids, true).await {
            return internal(e);
        }
        c.counters.received_copies.fetch_add(ids.len() as u64, Ordering::Relaxed);
    }
    Json(results).into_response()
}

#[derive(Debug, Deserialize)]
struct AuditAfter {
    after: i64,
}

/// Entries of this node's audit trail after a sequence number (at most 1000).
async fn audit_after(State(c): State<Arc<Cluster>>, Query(q): Query<AuditAfter>) -> Response {
    let Some(access) = &c.access else {
        return refuse(StatusCode::NOT_FOUND, "no audit trail here");
    };
    match access.audit_range(q.after.max(0), super::audit::BATCH).await {
        Ok(list) => Json(list).into_response(),
        Err(e) => internal(e),
    }
}

/// This node's recordings in progress, as its index holds them.
async fn active_here(State(c): State<Arc<Cluster>>) -> Response {
    let ids = match c.index.active_ids().await {
        Ok(ids) => ids,
        Err(e) => return internal(e),
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        match c.index.get(id).await {
            Ok(Some(m)) if m.node_id == c.me && m.state == model::RecordingState::Active => out.push(m),
            Ok(_) => {}
            Err(e) => return internal(e),
        }
    }
    Json(out).into_response()
}

async fn get_meta(State(c): State<Arc<Cluster>>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_id(&id) else { return bad_id() };
    match c.index.tombstoned(id).await {
        Ok(Some(t)) => return (StatusCode::GONE, Json(json!({ "tombstone": t }))).into_response(),
        Ok(None) => {}
        Err(e) => return internal(e),
    }
    match (c.index.get(id).await, c.index.audio_here(id).await) {
        (Ok(Some(meta)), Ok(here)) if meta.state.is_final() => {
            Json(json!({ "meta": meta, "audio_here": here.unwrap_or(false) })).into_response()
        }
        (Ok(_), Ok(_)) => refuse(StatusCode::NOT_FOUND, "no finished recording with that id"),
        (Err(e), _) | (_, Err(e)) => internal(e),
    }
}

#[derive(Debug, Deserialize)]
struct AudioParams {
    /// `copy` when the caller stores what it reads (anti-entropy, repair):
    /// then the caller's replication window applies, as for what we push.
    purpose: Option<String>,
}

async fn get_audio(
    State(c): State<Arc<Cluster>>,
    Path(id): Path<String>,
    Query(q): Query<AudioParams>,
    headers: HeaderMap,
) -> Response {
    let Some(id) = parse_id(&id) else { return bad_id() };
    if q.purpose.as_deref() == Some("copy") {
        let caller = headers.get(auth::HEADER_NODE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !c.target_rules(caller).0.is_open(now_ms()) {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "outside this node's replication window for the caller");
        }
    }
    let meta = match c.index.get(id).await {
        Ok(Some(m)) => m,
        Ok(None) => return refuse(StatusCode::NOT_FOUND, "no such recording"),
        Err(e) => return internal(e),
    };
    if !matches!(c.index.audio_here(id).await, Ok(Some(true))) {
        return refuse(StatusCode::NOT_FOUND, "the audio is not on this node");
    }
    let Some(key) = meta.audio.as_ref().and_then(|a| BlobKey::parse(&a.path)) else {
        return refuse(StatusCode::NOT_FOUND, "this recording has no audio");
    };
    let (blobs, k) = (c.blobs.clone(), key.clone());
    match tokio::task::spawn_blocking(move || blobs.len(&k)).await {
        Ok(Ok(Some(len))) => download::serve(c.blobs.clone(), key, len, &headers, "audio/wav"),
        Ok(Ok(None)) => refuse(StatusCode::NOT_FOUND, "the audio is not on this node"),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

fn part_path(c: &Cluster, id: RecordingId) -> std::path::PathBuf {
    c.incoming.join(format!("{id}.part"))
}

async fn upload_state(State(c): State<Arc<Cluster>>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_id(&id) else { return bad_id() };
    let here = c.index.audio_here(id).await.ok().flatten();
    let offset = std::fs::metadata(part_path(&c, id)).map(|m| m.len()).unwrap_or(0);
    Json(json!({ "known": here.is_some(), "audio_here": here.unwrap_or(false), "offset": offset })).into_response()
}

#[derive(Debug, Deserialize)]
struct ChunkParams {
    offset: u64,
    total: u64,
    sha256: String,
}

/// Appends a chunk of audio at `offset` (409 with our offset when it is not
/// where we are, so the sender resumes from there). When the upload is
/// complete its SHA-256 is checked against both the sender's and the
/// metadata's: a match is stored and confirmed (200 with the digest), a
/// mismatch is thrown away (422) and the sender retries.
async fn upload_chunk(
    State(c): State<Arc<Cluster>>,
    Path(id): Path<String>,
    Query(p): Query<ChunkParams>,
    body: Bytes,
) -> Response {
    let Some(id) = parse_id(&id) else { return bad_id() };
    let meta = match c.index.get(id).await {
        Ok(Some(m)) if m.state.is_final() => m,
        Ok(_) => return refuse(StatusCode::CONFLICT, "send the metadata first"),
        Err(e) => return internal(e),
    };
    let Some(want) = meta.audio.as_ref().and_then(|a| a.sha256.clone()) else {
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "this recording has no audio to receive");
    };
    if want != p.sha256 || meta.audio.as_ref().is_some_and(|a| a.bytes != p.total) {
        c.counters.rejected_copies.fetch_add(1, Ordering::Relaxed);
        return refuse(StatusCode::UNPROCESSABLE_ENTITY, "digest or size differ from the recording's metadata");
    }
    if matches!(c.index.audio_here(id).await, Ok(Some(true))) {
        return Json(json!({ "verified": want, "complete": true })).into_response();
    }
    let path = part_path(&c, id);
    let total = p.total;
    let offset = p.offset;
    let dir = c.incoming.clone();
    let running = c.uploads.lock().expect("uploads lock").remove(&id);
    let wrote = tokio::task::spawn_blocking(move || -> std::io::Result<Result<(u64, Sha256), u64>> {
        std::fs::create_dir_all(&dir)?;
        let mut f = std::fs::OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path)?;
        let have = f.seek(SeekFrom::End(0))?;
        if have != offset || offset + body.len() as u64 > total {
            return Ok(Err(have));
        }
        let mut hasher = match running {
            Some((n, h)) if n == have => h,
            _ => {
                // After a restart: hash what the part already holds, once.
                let mut h = Sha256::new();
                f.seek(SeekFrom::Start(0))?;
                std::io::copy(&mut (&mut f).take(have), &mut HashWriter(&mut h))?;
                f.seek(SeekFrom::End(0))?;
                h
            }
        };
        f.write_all(&body)?;
        hasher.update(&body);
        Ok(Ok((have + body.len() as u64, hasher)))
    })
    .await;
    let (now_have, hasher) = match wrote {
        Ok(Ok(Ok(x))) => x,
        Ok(Ok(Err(have))) => {
            return (StatusCode::CONFLICT, Json(json!({ "error": "offset mismatch", "offset": have }))).into_response()
        }
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    if now_have < total {
        let mut uploads = c.uploads.lock().expect("uploads lock");
        if uploads.len() >= 4096 {
            uploads.clear(); // abandoned uploads: their parts are hashed again if they resume
        }
        uploads.insert(id, (now_have, hasher));
        return Json(json!({ "offset": now_have, "complete": false })).into_response();
    }
    // Complete: verify, then store (durably) and mark the audio as here.
    let sha = cluster::hex(&hasher.finalize());
    let (blobs, path) = (c.blobs.clone(), part_path(&c, id));
    let key = BlobKey::audio(meta.started_at, id);
    let want2 = want.clone();
    let stored = tokio::task::spawn_blocking(move || -> Result<(), String> {
        if sha != want2 {
            let _ = std::fs::remove_file(&path);
            return Err(format!("received audio has SHA-256 {sha}, expected {want2}"));
        }
        let r = blobs.put_all(vec![BlobPut::MoveFile { key, path: path.clone() }]);
        r.into_iter().next().unwrap_or(Ok(())).map_err(|e| e.to_string())
    })
    .await;
    match stored {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            c.counters.rejected_copies.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(recording = %id, error = %e, "rejected a copy from a peer");
            return refuse(StatusCode::UNPROCESSABLE_ENTITY, e);
        }
        Err(e) => return internal(e),
    }
    if let Err(e) = c.index.set_audio_here(id, true).await {
        return internal(e);
    }
    c.counters.received_copies.fetch_add(1, Ordering::Relaxed);
    tracing::info!(recording = %id, bytes = total, "received a verified copy");
    Json(json!({ "verified": want, "complete": true })).into_response()
}

#[derive(Debug, Deserialize)]
struct BucketParams {
    day: Option<i64>,
}

async fn buckets(State(c): State<Arc<Cluster>>, Query(p): Query<BucketParams>) -> Response {
    if c.quarantined.load(Ordering::Relaxed) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, "this node is catching up after a long absence");
    }
    let hours = match c.index.buckets().await {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    let out: BTreeMap<i64, Bucket> = match p.day {
        None => cluster::antientropy::days(&hours),
        Some(d) => hours.into_iter().filter(|(h, _)| h.div_euclid(cluster::antientropy::HOURS_PER_DAY) == d).collect(),
    };
    Json(out).into_response()
}

async fn versions(State(c): State<Arc<Cluster>>, Json(hours): Json<Vec<i64>>) -> Response {
    if hours.len() > 10_000 {
        return refuse(StatusCode::BAD_REQUEST, "too many hours in one request");
    }
    match c.index.versions(&hours).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => internal(e),
    }
}

async fn tombstones(State(c): State<Arc<Cluster>>, Json(list): Json<Vec<Tombstone>>) -> Response {
    let mut applied = 0;
    for t in &list {
        match c.apply_tombstone(t).await {
            Ok(true) => applied += 1,
            Ok(false) => {}
            Err(e) => return internal(e),
        }
    }
    Json(json!({ "applied": applied })).into_response()
}

async fn get_settings(State(c): State<Arc<Cluster>>) -> Response {
    match c.index.settings().await {
        Ok(list) => {
            let out: Vec<Setting> = list.into_iter().filter_map(|s| super::settings::to_setting(&s)).collect();
            Json(out).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn put_settings(State(c): State<Arc<Cluster>>, Json(list): Json<Vec<Setting>>) -> Response {
    match super::settings::merge_settings(&c, list).await {
        Ok(changed) => Json(json!({ "changed": changed })).into_response(),
        Err(e) => refuse(StatusCode::UNPROCESSABLE_ENTITY, e),
    }
}

/// The job leader asks this node to re-hash its copies (runs in the background).
async fn start_scrub(State(c): State<Arc<Cluster>>) -> Response {
    tokio::spawn(async move {
        super::jobs::scrub(&c).await;
    });
    (StatusCode::ACCEPTED, Json(json!({ "scrub": "started" }))).into_response()
}

/// Feeds what is written to a hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
