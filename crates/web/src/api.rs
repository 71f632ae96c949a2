//! The access routes of `/api/v1`: sessions, users, API tokens, the audit
//! trail and signed playback links. JSON in and out, errors as problem
//! details, unknown query parameters and fields refused.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use model::access::{AuditAction, Role, Scope, UserRecord};
use serde::Deserialize;
use serde_json::json;
use store::{AuditQuery, SessionRow};

use crate::layer::{Client, COOKIE};
use crate::principal::{Principal, Via};
use crate::secrets::{random_secret, sha256_hex};
use crate::{now_ms, passwords, Problem, Web};

pub fn routes() -> Router<Arc<Web>> {
    Router::new()
        .route("/api/v1/session", post(session_create).get(session_me).delete(session_end))
        .route("/api/v1/users", get(users_list))
        .route("/api/v1/users/{name}", get(user_get).put(user_put).delete(user_delete))
        .route("/api/v1/users/{name}/sessions", delete(user_sessions_revoke))
        .route("/api/v1/users/{name}/tokens", post(token_create))
        .route("/api/v1/tokens", get(tokens_list))
        .route("/api/v1/tokens/{id}", delete(token_revoke))
        .route("/api/v1/audit", get(audit_list))
        .route("/api/v1/audit/verify", get(audit_verify_route))
        .route("/api/v1/recordings/{id}/links", post(link_create))
        .route("/api/v1/openapi.json", get(openapi))
}

async fn openapi() -> Response {
    Json(crate::openapi::document(env!("CARGO_PKG_VERSION"))).into_response()
}

/// Query strings and bodies: unknown fields are refused with a clear error.
pub fn bad_query(e: axum::extract::rejection::QueryRejection) -> Problem {
    Problem::bad_request(e.body_text())
}

pub fn bad_json(e: axum::extract::rejection::JsonRejection) -> Problem {
    Problem::new(e.status(), e.body_text())
}

/// A session begun: the cookie to set.
#[derive(Debug)]
pub struct SignedIn {
    pub cookie: String,
    pub session: SessionRow,
    pub role: Role,
}

/// Checks a password (throttled, audited) and opens a session.
pub async fn sign_in(web: &Web, user: &str, password: &str, client: &str) -> Result<SignedIn, Problem> {
    let now = now_ms();
    let keys = [format!("user:{user}"), format!("ip:{client}")];
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let checked = web.throttle.lock().expect("throttle lock").check(&keys, now);
    if let Err(wait_ms) = checked {
        tracing::warn!(user, client, "sign-in refused: too many failures");
        web.audit("-", client, AuditAction::SignInFailed, user, "throttled", "").await?;
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "too many failed sign-ins; try again later");
        p.retry_after = Some((wait_ms as u64).div_ceil(1000));
        return Err(p);
    }
    let record = web.directory.user(user).await.map_err(|e| Problem::internal("user directory", e))?;
    let phc = record.as_ref().and_then(|u| u.password.clone()).unwrap_or_else(|| passwords::decoy().to_owned());
    let ok = passwords::verify_async(password.to_owned(), phc).await;
    let record = record.filter(|u| ok && u.active() && u.password.is_some());
    let Some(record) = record else {
        web.throttle.lock().expect("throttle lock").failed(&keys, now);
        tracing::warn!(user, client, "sign-in failed");
        web.audit("-", client, AuditAction::SignInFailed, user, "401", "").await?;
        return Err(Problem::new(StatusCode::UNAUTHORIZED, "wrong user name or password"));
    };
    web.throttle.lock().expect("throttle lock").succeeded(keys[0]);
    let cookie = random_secret();
    let session = SessionRow {
        id_hash: sha256_hex(cookie.as_bytes()),
        username: user.to_owned(),
        csrf: random_secret(),
        created_ms: now,
        expires_ms: now + web.config.session_ttl_s * 1000,
        client: client.to_owned(),
        revoked: false,
    };
    web.access.create_session(&session).await.map_err(|e| Problem::internal("session store", e))?;
    web.audit(user, client, AuditAction::SignIn, user, "ok", "").await?;
    tracing::info!(user, client, "signed in");
    Ok(SignedIn { cookie, session, role: record.role })
}

/// The `Set-Cookie` of a session (or of its end, with an empty value).
pub fn session_cookie(web: &Web, value: &str, max_age_s: i64) -> HeaderValue {
    let secure = if web.config.secure_cookies { "; Secure" } else { "" };
    let v = format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{secure}");
    HeaderValue::from_str(&v).expect("cookie is ASCII")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    user: String,
    password: String,
}

async fn session_create(
    State(web): State<Arc<Web>>,
    Client(client): Client,
    body: Result<Json<Credentials>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(c) = body.map_err(bad_json)?;
    let s = sign_in(&web, &c.user, &c.password, &client).await?;
    let mut resp = Json(json!({
        "user": c.user, "role": s.role, "csrf_token": s.session.csrf,
        "expires_at_ms": s.session.expires_ms,
    }))
    .into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&web, &s.cookie, web.config.session_ttl_s));
    Ok(resp)
}

async fn session_me(Extension(p): Extension<Principal>) -> Response {
    let via = match &p.via {
        Via::Session { .. } => "session",
        Via::Token { .. } => "token",
        Via::Link { .. } => "link",
    };
    Json(json!({ "user": p.user, "role": p.role, "scope": p.scope, "via": via, "csrf_token": p.csrf() }))
        .into_response()
}

/// Ends the caller's session (a token caller has none to end).
pub async fn end_session(web: &Web, p: &Principal, client: &str) -> Result<(), Problem> {
    if let Via::Session { id_hash, .. } = &p.via {
        web.access.revoke_session(id_hash).await.map_err(|e| Problem::internal("session store", e))?;
    }
    web.audit(&p.user, client, AuditAction::SignOut, &p.user, "ok", "").await
}

async fn session_end(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    Client(client): Client,
) -> Result<Response, Problem> {
    end_session(&web, &p, &client).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(header::SET_COOKIE, session_cookie(&web, "", 0));
    Ok(resp)
}

/// The user `name`, or 404.
async fn existing_user(web: &Web, name: &str) -> Result<UserRecord, Problem> {
    let u = web.directory.user(name).await.map_err(|e| Problem::internal("user directory", e))?;
    u.ok_or_else(|| Problem::not_found("no such user"))
}

fn user_json(name: &str, u: &UserRecord) -> serde_json::Value {
    json!({ "name": name, "role": u.role, "scope": u.scope, "disabled": u.disabled, "has_password": u.password.is_some() })
}

async fn users_list(State(web): State<Arc<Web>>) -> Result<Response, Problem> {
    let users = web.directory.users().await.map_err(|e| Problem::internal("user directory", e))?;
    Ok(Json(json!({ "users": users.iter().map(|(n, u)| user_json(n, u)).collect::<Vec<_>>() })).into_response())
}

async fn user_get(State(web): State<Arc<Web>>, Path(name): Path<String>) -> Result<Response, Problem> {
    let u = existing_user(&web, &name).await?;
    Ok(Json(user_json(&name, &u)).into_response())
}

/// Creating or changing a user: every field optional on a change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    pub role: Option<Role>,
    pub scope: Option<Vec<String>>,
    pub password: Option<String>,
    pub disabled: Option<bool>,
}

/// Applies a change to a user (creating it when `role` is given and it
/// does not exist). Returns the stored record.
pub async fn change_user(web: &Web, name: &str, c: UserChange) -> Result<UserRecord, Problem> {
    if !model::access::valid_user_name(name) {
        return Err(Problem::bad_request("a user name is 1-64 letters, digits or .-_@"));
    }
    let current = web.directory.user(name).await.map_err(|e| Problem::internal("user directory", e))?;
    let mut u = match (current, c.role) {
        (Some(u), _) => u,
        (None, Some(role)) => UserRecord::new(role),
        (None, None) => return Err(Problem::not_found("no such user (give a role to create one)")),
    };
    if let Some(r) = c.role {
        u.role = r;
    }
    if let Some(s) = c.scope {
        u.scope = Scope(s);
        u.scope.validate().map_err(Problem::bad_request)?;
    }
    if let Some(d) = c.disabled {
        u.disabled = d;
    }
    if let Some(pw) = c.password {
        passwords::check_policy(&pw).map_err(Problem::bad_request)?;
        u.password = Some(passwords::hash_async(pw).await.map_err(|e| Problem::internal("password hashing", e))?);
        // A new password ends every session of the old one.
        u.sessions_valid_after_ms = now_ms();
    }
    web.directory.put_user(name, &u).await.map_err(Problem::bad_request)?;
    Ok(u)
}

async fn user_put(
    State(web): State<Arc<Web>>,
    Path(name): Path<String>,
    body: Result<Json<UserChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, Problem> {
    let Json(c) = body.map_err(bad_json)?;
    let u = change_user(&web, &name, c).await?;
    Ok(Json(user_json(&name, &u)).into_response())
}

async fn user_delete(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, Problem> {
    if name == p.user {
        return Err(Problem::new(StatusCode::CONFLICT, "you cannot delete yourself"));
    }
    let mut u = existing_user(&web, &name).await?;
    u.deleted = true;
    u.password = None;
    u.sessions_valid_after_ms = now_ms();
    web.directory.put_user(&name, &u).await.map_err(Problem::bad_request)?;
    web.access.revoke_sessions_of(&name).await.map_err(|e| Problem::internal("session store", e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn user_sessions_revoke(State(web): State<Arc<Web>>, Path(name): Path<String>) -> Result<Response, Problem> {
    let mut u = existing_user(&web, &name).await?;
    // Cluster-wide: every node refuses sessions begun before now.
    u.sessions_valid_after_ms = now_ms();
    web.directory.put_user(&name, &u).await.map_err(Problem::bad_request)?;
    let here = web.access.revoke_sessions_of(&name).await.map_err(|e| Problem::internal("session store", e))?;
    Ok(Json(json!({ "revoked_here": here })).into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    #[serde(default)]
    label: String,
    /// Lifetime in days (none: until revoked).
    days: Option<u32>,
}

async fn token_create(
    State(web): State<Arc<Web>>,
    Path(name): Path<String>,
    body: Option<Json<TokenRequest>>,
) -> Result<Response, Problem> {
    let req = body.map(|b| b.0).unwrap_or_default();
    existing_user(&web, &name).await?;
    let now = now_ms();
    let expires = req.days.map(|d| now + d as i64 * 86_400_000);
    let (id, token) = web.directory.issue_token(&name, &req.label, now, expires).await.map_err(Problem::bad_request)?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "token": token, "user": name, "expires_at_ms": expires })))
        .into_response())
}

async fn tokens_list(State(web): State<Arc<Web>>) -> Result<Response, Problem> {
    let all = web.directory.tokens().await.map_err(|e| Problem::internal("user directory", e))?;
    let list: Vec<_> = all
        .iter()
        .map(|(id, t)| {
            json!({ "id": id, "user": t.user, "label": t.label, "created_ms": t.created_ms,
                               "expires_ms": t.expires_ms, "revoked": t.revoked })
        })
        .collect();
    Ok(Json(json!({ "tokens": list })).into_response())
}

async fn token_revoke(State(web): State<Arc<Web>>, Path(id): Path<String>) -> Result<Response, Problem> {
    let mut t = web
        .directory
        .token(&id)
        .await
        .map_err(|e| Problem::internal("user directory", e))?
        .ok_or_else(|| Problem::not_found("no such token"))?;
    t.revoked = true;
    web.directory.put_token(&id, &t).await.map_err(Problem::bad_request)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Another node's trail (copied here); default this node's.
    pub node: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub before: Option<i64>,
    pub limit: Option<u32>,
}

impl AuditParams {
    /// The trail asked for: `None` for this node's own (`me`).
    pub fn node(&self, me: &str) -> Option<String> {
        self.node.clone().filter(|n| !n.is_empty() && n != me)
    }

    pub fn query(&self, me: &str) -> Result<AuditQuery, Problem> {
        let action = match self.action.as_deref().filter(|a| !a.is_empty()) {
            Some(a) => {
                Some(AuditAction::parse(a).ok_or_else(|| Problem::bad_request(format!("unknown action {a:?}")))?)
            }
            None => None,
        };
        Ok(AuditQuery {
            node: self.node(me),
            actor: self.actor.clone().filter(|a| !a.is_empty()),
            action,
            target: self.target.clone().filter(|t| !t.is_empty()),
            since_ms: self.since_ms,
            until_ms: self.until_ms,
            before_seq: self.before,
            limit: self.limit.unwrap_or(100).min(1000),
        })
    }
}

async fn audit_list(
    State(web): State<Arc<Web>>,
    q: Result<Query<AuditParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q.map_err(bad_query)?;
    let q = q.query(&web.node_id)?;
    let entries = web.access.audit_list(&q).await.map_err(|e| Problem::internal("audit trail", e))?;
    let next = (entries.len() as u32 == q.limit).then(|| entries.last().map(|e| e.seq)).flatten();
    Ok(Json(json!({ "entries": entries, "next_before": next })).into_response())
}

/// Walks the whole chain of this node's trail, or of `node`'s copy here.
pub async fn verify_chain(web: &Web, node: Option<&str>) -> Result<serde_json::Value, Problem> {
    match store::verify_audit_chain(web.access.as_ref(), node).await.map_err(|e| Problem::internal("audit trail", e))? {
        store::ChainCheck::Intact { entries, head } => Ok(json!({ "intact": true, "entries": entries, "head": head })),
        store::ChainCheck::Broken { checked, at } => {
            Ok(json!({ "intact": false, "entries_checked": checked, "break": at }))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyParams {
    node: Option<String>,
}

async fn audit_verify_route(
    State(web): State<Arc<Web>>,
    q: Result<Query<VerifyParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(q) = q.map_err(bad_query)?;
    let node = q.node.filter(|n| !n.is_empty() && *n != web.node_id);
    let mut v = verify_chain(&web, node.as_deref()).await?;
    v["node"] = json!(node.unwrap_or_else(|| web.node_id.clone()));
    v["nodes_held"] = json!(web.access.audit_replica_nodes().await.unwrap_or_default());
    Ok(Json(v).into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LinkRequest {
    /// Seconds the link works (default one hour).
    ttl_s: Option<i64>,
}

/// A signed link to one recording's audio, usable without a session until
/// it expires. The caller must see the recording now.
async fn link_create(
    State(web): State<Arc<Web>>,
    Extension(p): Extension<Principal>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Option<Json<LinkRequest>>,
) -> Result<Response, Problem> {
    let rid: model::RecordingId = id.parse().map_err(|_| Problem::bad_request("recording ids are UUIDs"))?;
    let meta = web.index.get(rid).await.map_err(|e| Problem::internal("index", e))?;
    let meta = meta.filter(|m| p.sees(m)).ok_or_else(|| Problem::not_found("no such recording"))?;
    let ttl = body.and_then(|b| b.0.ttl_s).unwrap_or(3600);
    if ttl <= 0 || ttl > web.config.max_link_ttl_s {
        return Err(Problem::bad_request(format!("ttl_s is 1..={}", web.config.max_link_ttl_s)));
    }
    let exp = now_ms() / 1000 + ttl;
    let sig = web.links.sign(&meta.id.to_string(), exp, &p.user);
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("exp", &exp.to_string())
        .append_pair("by", &p.user)
        .append_pair("sig", &sig)
        .finish();
    let path = format!("/api/v1/recordings/{}/audio?{q}", meta.id);
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let scheme = if web.config.secure_cookies { "https" } else { "http" };
    Ok((
        StatusCode::CREATED,
        Json(json!({ "url": format!("{scheme}://{host}{path}"), "path": path, "expires_at_s": exp })),
    )
        .into_response())
}
