//! The node's HTTP interface: health for load balancers and DNS failover,
//! a JSON API over recordings, audio download (with HTTP Range, so players
//! can seek), administrator actions and Prometheus metrics.

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use model::{RecordingId, RecordingMeta, RecordingState};
use serde::Deserialize;
use serde_json::json;
use store::{DataDir, ListQuery, MetaDb};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::oneshot;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::core::{status, AdminCmd, AdminTx};
use super::metrics;

#[derive(Clone)]
pub struct AppState {
    pub admin: AdminTx,
    pub db: MetaDb,
    pub dir: DataDir,
    pub node_id: String,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health/live", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(api_status))
        .route("/api/recordings", get(list))
        .route("/api/recordings/active", get(active))
        .route("/api/recordings/{id}", get(detail))
        .route("/api/recordings/{id}/audio", get(audio))
        .route("/api/recordings/{id}/complete", post(complete))
        .route("/api/drain", post(drain))
        .with_state(state)
}

/// An API failure: a status and a message, sent as `{"error": "..."}`.
#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn error(code: StatusCode, msg: impl Into<String>) -> Response {
    ApiError(code, msg.into()).into_response()
}

fn api_error(code: StatusCode, msg: impl Into<String>) -> ApiError {
    ApiError(code, msg.into())
}

async fn ready(State(s): State<AppState>) -> Response {
    let Some(st) = status(&s.admin).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    };
    let db = s.db.ping().await;
    match (st.can_record, db) {
        (Ok(()), Ok(())) => Json(json!({ "ready": true, "node": s.node_id })).into_response(),
        (Err(why), _) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": why }))).into_response()
        }
        (_, Err(e)) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "ready": false, "reason": format!("database: {e}") })))
                .into_response()
        }
    }
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    match status(&s.admin).await {
        Some(st) => (
            [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
            metrics::render(st),
        )
            .into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running"),
    }
}

async fn api_status(State(s): State<AppState>) -> Response {
    let Some(st) = status(&s.admin).await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    };
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
        "recordings_ended": st.counters.recordings_ended,
        "rtp_packets": st.media.packets,
        "rtp_lost": st.media.lost,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct ListParams {
    state: Option<String>,
    party: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

fn parse_time(name: &str, v: Option<&String>) -> Result<Option<OffsetDateTime>, ApiError> {
    v.map(|t| OffsetDateTime::parse(t, &Rfc3339))
        .transpose()
        .map_err(|_| api_error(StatusCode::BAD_REQUEST, format!("{name} must be an RFC 3339 time")))
}

async fn list(State(s): State<AppState>, Query(p): Query<ListParams>) -> Result<Response, ApiError> {
    let state = p
        .state
        .as_deref()
        .map(str::parse::<RecordingState>)
        .transpose()
        .map_err(|e| api_error(StatusCode::BAD_REQUEST, e))?;
    let since = parse_time("since", p.since.as_ref())?;
    let until = parse_time("until", p.until.as_ref())?;
    let q =
        ListQuery { state, since, until, party: p.party, limit: p.limit.unwrap_or(100), offset: p.offset.unwrap_or(0) };
    let recs = s.db.list(&q).await.map_err(|e| api_error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}")))?;
    Ok(Json(json!({ "recordings": recs })).into_response())
}

async fn active(State(s): State<AppState>) -> Response {
    let (tx, rx) = oneshot::channel();
    if s.admin.send(AdminCmd::Active(tx)).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running");
    }
    match rx.await {
        Ok(recs) => Json(json!({ "recordings": recs })).into_response(),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "recorder core not running"),
    }
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
        Err(e) => Err(api_error(StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}"))),
    }
}

async fn detail(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<RecordingMeta>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(find(&s, id).await?))
}

async fn audio(State(s): State<AppState>, Path(id): Path<String>, req: Request) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let meta = find(&s, id).await?;
    if meta.state == RecordingState::Active {
        return Err(api_error(StatusCode::CONFLICT, "recording in progress; audio is available when it ends"));
    }
    let audio = meta.audio.ok_or_else(|| api_error(StatusCode::NOT_FOUND, "this recording has no audio"))?;
    let path = s.dir.resolve(audio.path.as_ref());
    let resp = ServeFile::new_with_mime(&path, &"audio/wav".parse().expect("valid mime"))
        .oneshot(req)
        .await
        .map_err(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let mut resp = resp.map(Body::new);
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(api_error(StatusCode::NOT_FOUND, "audio file missing on this node"));
    }
    let disposition = format!("attachment; filename=\"{id}.wav\"");
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    if let Some(sha) = audio.sha256.as_deref().and_then(|h| HeaderValue::from_str(h).ok()) {
        resp.headers_mut().insert("x-content-sha256", sha);
    }
    Ok(resp)
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
