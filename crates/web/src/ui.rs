//! The web UI: pages rendered on the server from templates compiled into
//! the binary (askama), with a little JavaScript (`assets/app.js`) for
//! playback, the waveform, live tables and the admin forms.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Extension, Form, Router};
use model::access::{AuditAction, Permission, Role};
use model::{RecordingMeta, RecordingState};
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::api::{session_cookie, sign_in, AuditParams};
use crate::layer::Client;
use crate::principal::Principal;
use crate::recordings::{search, SearchParams};
use crate::{Problem, Web};

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/", get(home))
        .route("/ui/sign-in", get(sign_in_page).post(sign_in_form))
        .route("/ui/sign-out", axum::routing::post(sign_out_form))
        .route("/ui/assets/{file}", get(asset))
        .route("/ui/recordings", get(recordings_page))
        .route("/ui/recordings/{id}", get(recording_page))
        .route("/ui/live", get(live_page))
        .route("/ui/cluster", get(cluster_page))
        .route("/ui/audit", get(audit_page))
        .route("/ui/admin", get(admin_page))
}

/// What the page header needs.
struct Nav {
    node: String,
    user: String,
    role: &'static str,
    csrf: String,
    recordings: bool,
    live: bool,
    audit: bool,
    admin: bool,
}

impl Nav {
    fn of(web: &Web, p: Option<&Principal>) -> Nav {
        let may = |perm| p.is_some_and(|p| p.may(perm));
        Nav {
            node: web.node_id.clone(),
            user: p.map(|p| p.user.clone()).unwrap_or_default(),
            role: p.map(|p| p.role.as_str()).unwrap_or(""),
            csrf: p.and_then(|p| p.csrf()).unwrap_or("").to_owned(),
            recordings: may(Permission::Recordings),
            live: may(Permission::LiveCalls),
            audit: may(Permission::Audit),
            admin: may(Permission::Administer),
        }
    }
}

fn page(t: impl Template) -> Response {
    match t.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => Problem::internal("page rendering", e).into_response(),
    }
}

fn error_page(web: &Web, p: Option<&Principal>, status: StatusCode, text: String) -> Response {
    let heading = status.canonical_reason().unwrap_or("Error").to_owned();
    let mut r = page(MessagePage { nav: Nav::of(web, p), heading, text });
    *r.status_mut() = status;
    r
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    nav: Nav,
    heading: String,
    text: String,
}

async fn home(p: Option<Extension<Principal>>) -> Redirect {
    match p.map(|e| e.0) {
        None => Redirect::to("/ui/sign-in"),
        Some(p) => Redirect::to(landing(p.role)),
    }
}

fn landing(role: Role) -> &'static str {
    match role {
        Role::Auditor => "/ui/audit",
        _ => "/ui/recordings",
    }
}

#[derive(Template)]
#[template(path = "sign_in.html")]
struct SignInPage {
    nav: Nav,
    next: String,
    error: String,
}

#[derive(Deserialize)]
struct NextParam {
    next: Option<String>,
}

/// Only paths of this site are followed after sign-in (no open redirect).
fn safe_next(next: Option<&str>) -> Option<String> {
    next.filter(|n| n.starts_with("/ui/") && !n.starts_with("//") && !n.contains('\\')).map(str::to_owned)
}

async fn sign_in_page(State(web): State<Arc<Web>>, Query(q): Query<NextParam>) -> Response {
    let next = safe_next(q.next.as_deref()).unwrap_or_default();
    page(SignInPage { nav: Nav::of(&web, None), next, error: String::new() })
}

#[derive(Deserialize)]
struct SignInForm {
    user: String,
    password: String,
    #[serde(default)]
    next: String,
}

async fn sign_in_form(State(web): State<Arc<Web>>, Client(client): Client, Form(f): Form<SignInForm>) -> Response {
    match sign_in(&web, &f.user, &f.password, &client).await {
        Ok(s) => {
            let to = safe_next(Some(&f.next)).unwrap_or_else(|| landing(s.role).to_owned());
            let mut r = Redirect::to(&to).into_response();
            r.headers_mut().insert(header::SET_COOKIE, session_cookie(&web, &s.cookie, web.config.session_ttl_s));
            r
        }
        Err(p) => {
            let mut r = page(SignInPage { nav: Nav::of(&web, None), next: f.next, error: p.detail });
            *r.status_mut() = p.status;
            if let Some(s) = p.retry_after {
                r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
            }
            r
        }
    }
}

async fn sign_out_form(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    Client(client): Client,
) -> Response {
    if let Err(e) = crate::api::end_session(&web, &p, &client).await {
        return e.into_response();
    }
    let mut r = Redirect::to("/ui/sign-in").into_response();
    r.headers_mut().insert(header::SET_COOKIE, session_cookie(&web, "", 0));
    r
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, mime) = match file.as_str() {
        "app.js" => (include_str!("../assets/app.js"), "text/javascript; charset=utf-8"),
        "app.css" => (include_str!("../assets/app.css"), "text/css; charset=utf-8"),
        _ => return Problem::not_found("no such asset").into_response(),
    };
    ([(header::CONTENT_TYPE, mime), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn fmt_duration(ms: u64) -> String {
    let s = ms / 1000;
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

struct Row {
    id: String,
    started: String,
    caller: String,
    callee: String,
    direction: String,
    duration: String,
    state: &'static str,
    source: String,
    node: String,
}

fn source_name(m: &RecordingMeta) -> String {
    serde_json::to_value(m.source).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

impl Row {
    fn of(m: &RecordingMeta) -> Row {
        Row {
            id: m.id.to_string(),
            started: fmt_time(m.started_at),
            caller: m.caller.clone().unwrap_or_default(),
            callee: m.callee.clone().unwrap_or_default(),
            direction: m.direction.clone().unwrap_or_default(),
            duration: fmt_duration(m.duration_ms),
            state: m.state.as_str(),
            source: source_name(m),
            node: m.node_id.0.clone(),
        }
    }
}

/// The filters as the form shows them again.
#[derive(Default)]
struct Filters {
    party: String,
    since: String,
    until: String,
    direction: String,
    state: String,
    id: String,
    min_duration: String,
}

#[derive(Template)]
#[template(path = "recordings.html")]
struct RecordingsPage {
    nav: Nav,
    f: Filters,
    states: Vec<&'static str>,
    rows: Vec<Row>,
    /// The count as shown: `1234`, or `10000+` past the counting cap.
    total: String,
    next: String,
    error: String,
}

async fn recordings_page(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    q: Result<Query<SearchParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let nav = Nav::of(&web, Some(&p));
    let params = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_page(&web, Some(&p), StatusCode::BAD_REQUEST, e.body_text()),
    };
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let f = Filters {
        party: s(&params.party),
        since: s(&params.since),
        until: s(&params.until),
        direction: s(&params.direction),
        state: s(&params.state),
        id: s(&params.id),
        min_duration: s(&params.min_duration_s),
    };
    let states =
        [RecordingState::Active, RecordingState::Completed, RecordingState::Interrupted, RecordingState::Failed]
            .iter()
            .map(|s| s.as_str())
            .collect();
    let (rows, total, next, error) = match search(&web, &p, &params).await {
        Ok(page) => {
            let next = page.next.map(|c| {
                let mut q = form_urlencoded::Serializer::new(String::new());
                for (k, v) in [
                    ("party", &f.party),
                    ("since", &f.since),
                    ("until", &f.until),
                    ("direction", &f.direction),
                    ("state", &f.state),
                    ("id", &f.id),
                    ("min_duration_s", &f.min_duration),
                ] {
                    if !v.is_empty() {
                        q.append_pair(k, v);
                    }
                }
                q.append_pair("cursor", &c);
                format!("/ui/recordings?{}", q.finish())
            });
            let total = if page.total_exact { page.total.to_string() } else { format!("{}+", page.total) };
            (page.recordings.iter().map(Row::of).collect(), total, next.unwrap_or_default(), String::new())
        }
        Err(e) if e.status == StatusCode::BAD_REQUEST => (Vec::new(), "0".into(), String::new(), e.detail),
        Err(e) => return e.into_response(),
    };
    page(RecordingsPage { nav, f, states, rows, total, next, error })
}

struct Detail {
    id: String,
    started: String,
    ended: String,
    duration: String,
    state: &'static str,
    direction: String,
    source: String,
    source_addr: String,
    node: String,
    copies: String,
    call_ids: String,
    has_audio: bool,
    audio_url: String,
    participants: Vec<(String, String, String, String, String)>,
    streams: Vec<(String, String, String, u64, u64, String, String)>,
    history: Vec<String>,
    dtmf: String,
    vendor: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "recording.html")]
struct RecordingPage {
    nav: Nav,
    r: Detail,
}

async fn recording_page(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
) -> Response {
    let Ok(rid) = id.parse::<model::RecordingId>() else {
        return error_page(&web, Some(&p), StatusCode::BAD_REQUEST, "recording ids are UUIDs".into());
    };
    let meta = match web.index.get(rid).await {
        Ok(m) => m.filter(|m| p.sees(m)),
        Err(e) => return Problem::internal("index", e).into_response(),
    };
    // Out of scope looks the same as absent.
    let Some(m) = meta else {
        return error_page(&web, Some(&p), StatusCode::NOT_FOUND, "no such recording".into());
    };
    let copies = match &m.call_key {
        Some(k) => web
            .index
            .same_call(k)
            .await
            .map(|c| c.iter().map(|c| format!("{} ({})", c.node_id.0, c.state.as_str())).collect::<Vec<_>>().join(", "))
            .unwrap_or_default(),
        None => String::new(),
    };
    let d = Detail {
        id: m.id.to_string(),
        started: fmt_time(m.started_at),
        ended: m.ended_at.map(fmt_time).unwrap_or_default(),
        duration: fmt_duration(m.duration_ms),
        state: m.state.as_str(),
        direction: m.direction.clone().unwrap_or_default(),
        source: source_name(&m),
        source_addr: m.source_addr.clone(),
        node: m.node_id.0.clone(),
        copies,
        call_ids: m.call_ids.join(", "),
        has_audio: m.audio.is_some() && m.state != RecordingState::Active,
        audio_url: format!("/api/v1/recordings/{}/audio", m.id),
        participants: m
            .participants
            .iter()
            .map(|p| {
                let o = |v: &Option<String>| v.clone().unwrap_or_default();
                (o(&p.name), o(&p.number), o(&p.aor), o(&p.role), p.channel.map(|c| c.to_string()).unwrap_or_default())
            })
            .collect(),
        streams: m
            .streams
            .iter()
            .map(|s| {
                let jitter = format!("{:.2}", s.stats.jitter_ms);
                (
                    s.label.clone().unwrap_or_default(),
                    s.channel.to_string(),
                    s.codecs.join(", "),
                    s.stats.packets,
                    s.stats.lost,
                    jitter,
                    s.srtp.clone().unwrap_or_default(),
                )
            })
            .collect(),
        history: m
            .state_history
            .iter()
            .map(|h| format!("{} {} ({})", fmt_time(h.at), h.state.as_str(), h.reason))
            .collect(),
        dtmf: m.dtmf.iter().map(|d| d.digit.to_string()).collect::<Vec<_>>().join(" "),
        vendor: m
            .siprec
            .as_ref()
            .map(|md| md.hints.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    };
    page(RecordingPage { nav: Nav::of(&web, Some(&p)), r: d })
}

#[derive(Template)]
#[template(path = "live.html")]
struct LivePage {
    nav: Nav,
}

async fn live_page(State(web): State<Arc<Web>>, Extension(p): Extension<Principal>) -> Response {
    page(LivePage { nav: Nav::of(&web, Some(&p)) })
}

#[derive(Template)]
#[template(path = "cluster.html")]
struct ClusterPage {
    nav: Nav,
}

async fn cluster_page(State(web): State<Arc<Web>>, Extension(p): Extension<Principal>) -> Response {
    page(ClusterPage { nav: Nav::of(&web, Some(&p)) })
}

struct AuditRow {
    seq: i64,
    when: String,
    actor: String,
    from: String,
    action: &'static str,
    target: String,
    outcome: String,
    detail: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    nav: Nav,
    /// Whose trail is shown, and the trails held here.
    node: String,
    nodes: Vec<String>,
    actor: String,
    action: String,
    target: String,
    actions: Vec<&'static str>,
    chain: String,
    entries: Vec<AuditRow>,
    next: String,
}

async fn audit_page(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match q {
        Ok(Query(q)) => q,
        Err(e) => return error_page(&web, Some(&p), StatusCode::BAD_REQUEST, e.body_text()),
    };
    let query = match params.query(&web.node_id) {
        Ok(q) => q,
        Err(e) => return error_page(&web, Some(&p), StatusCode::BAD_REQUEST, e.detail),
    };
    let entries = match web.access.audit_list(&query).await {
        Ok(e) => e,
        Err(e) => return Problem::internal("audit trail", e).into_response(),
    };
    let node = params.node(&web.node_id);
    let chain = match crate::api::verify_chain(&web, node.as_deref()).await {
        Ok(v) if v["intact"] == true => format!("intact ({} entries)", v["entries"]),
        Ok(v) => format!("BROKEN at entry {}: {}", v["break"]["seq"], v["break"]["why"]),
        Err(e) => e.detail,
    };
    let next = match (entries.len() as u32 == query.limit, entries.last()) {
        (true, Some(last)) => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in [
                ("node", &params.node),
                ("actor", &params.actor),
                ("action", &params.action),
                ("target", &params.target),
            ] {
                if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                    q.append_pair(k, v);
                }
            }
            q.append_pair("before", &last.seq.to_string());
            format!("/ui/audit?{}", q.finish())
        }
        _ => String::new(),
    };
    let when =
        |ms: i64| OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).map(fmt_time).unwrap_or_default();
    let nodes = web.access.audit_replica_nodes().await.unwrap_or_default();
    page(AuditPage {
        nav: Nav::of(&web, Some(&p)),
        node: node.unwrap_or_else(|| web.node_id.clone()),
        nodes: std::iter::once(web.node_id.clone()).chain(nodes).collect(),
        actor: params.actor.clone().unwrap_or_default(),
        action: params.action.clone().unwrap_or_default(),
        target: params.target.clone().unwrap_or_default(),
        actions: AuditAction::ALL.iter().map(|a| a.as_str()).collect(),
        chain,
        entries: entries
            .into_iter()
            .map(|e| {
                let ev = e.event;
                AuditRow {
                    seq: e.seq,
                    when: when(ev.at_ms),
                    actor: ev.actor,
                    from: ev.from,
                    action: ev.action.as_str(),
                    target: ev.target,
                    outcome: ev.outcome,
                    detail: ev.detail,
                }
            })
            .collect(),
        next,
    })
}

#[derive(Template)]
#[template(path = "admin.html")]
struct AdminPage {
    nav: Nav,
    users: Vec<(String, &'static str, String, &'static str)>,
    roles: Vec<&'static str>,
}

async fn admin_page(State(web): State<Arc<Web>>, Extension(p): Extension<Principal>) -> Response {
    let users = match web.directory.users().await {
        Ok(u) => u,
        Err(e) => return Problem::internal("user directory", e).into_response(),
    };
    page(AdminPage {
        nav: Nav::of(&web, Some(&p)),
        users: users
            .into_iter()
            .map(|(n, u)| (n, u.role.as_str(), u.scope.0.join(", "), if u.disabled { "disabled" } else { "active" }))
            .collect(),
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
    })
}
