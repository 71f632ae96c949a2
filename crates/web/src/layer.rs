//! The one layer every route passes: authentication, the permission of
//! the route ([`crate::policy`]), CSRF on browser state changes, and the
//! audit trail. Handlers only narrow results to the caller's scope.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use model::access::{AuditAction, Permission, Role, Scope};

use crate::directory::parse_token;
use crate::policy::{self, Audited};
use crate::principal::{Principal, Via};
use crate::secrets::{same, sha256_hex};
use crate::{now_ms, Problem, Web};

/// The session cookie.
pub const COOKIE: &str = "cv_session";
/// Largest form body read for its CSRF token.
const MAX_FORM: usize = 64 * 1024;

/// The client address as the audit trail names it.
pub fn client_of(req_ext: &axum::http::Extensions) -> String {
    req_ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_string()).unwrap_or_else(|| "unknown".into())
}

/// The client address, as an extractor.
#[derive(Debug)]
pub struct Client(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Client {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Client, Self::Rejection> {
        Ok(Client(client_of(&parts.extensions)))
    }
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Whether the request is a page load that should be sent to sign in.
fn is_page(method: &Method, path: &str) -> bool {
    method == Method::GET && (path == "/" || path.starts_with("/ui/"))
}

pub async fn guard(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let Some(route) = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()) else {
        return Problem::not_found("no such route").into_response();
    };
    let Some(rule) = policy::lookup(&method, &route) else {
        tracing::error!(%method, route, "route missing from the access table; refused");
        return Problem::new(StatusCode::FORBIDDEN, "this route is not in the access table").into_response();
    };
    let client = client_of(req.extensions());
    let (mut parts, body) = req.into_parts();
    let target = match RawPathParams::from_request_parts(&mut parts, &()).await {
        Ok(p) => p.iter().next().map(|(_, v)| v.to_owned()).unwrap_or_default(),
        Err(_) => String::new(),
    };
    let query = parts.uri.query().unwrap_or("").to_owned();

    let who = match identify(&web, &parts.headers, rule, &target, &query, &client).await {
        Ok(p) => p,
        Err(problem) => return problem.into_response(),
    };
    let public = rule.needs == Permission::Public || (rule.needs == Permission::Metrics && web.config.public_metrics);
    if !public {
        let Some(p) = &who else {
            if is_page(&method, parts.uri.path()) {
                let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/ui/recordings");
                let to: String = form_urlencoded::Serializer::new(String::new()).append_pair("next", next).finish();
                return Redirect::to(&format!("/ui/sign-in?{to}")).into_response();
            }
            let mut resp = Problem::new(StatusCode::UNAUTHORIZED, "sign in, or send an API token").into_response();
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"callvault\""));
            return resp;
        };
        let allowed = match &p.via {
            // A link opens that recording's audio and nothing else.
            Via::Link { .. } => route == "/api/v1/recordings/{id}/audio" && method == Method::GET,
            _ => p.role.allows(rule.needs),
        };
        if !allowed {
            let path = parts.uri.path().to_owned();
            if let Err(e) = web.audit(&p.user, &client, AuditAction::Denied, &path, "403", method.as_str()).await {
                return e.into_response();
            }
            tracing::warn!(user = %p.user, role = p.role.as_str(), %method, path, "access denied");
            return Problem::new(StatusCode::FORBIDDEN, "your role does not allow this").into_response();
        }
    }

    // CSRF: a browser session changing state must show the session's token.
    let mut body = body;
    if let (Some(p), false) = (&who, matches!(method, Method::GET | Method::HEAD | Method::OPTIONS)) {
        if let Via::Session { csrf, .. } = &p.via {
            if !same_origin(&parts.headers) {
                return Problem::new(StatusCode::FORBIDDEN, "cross-origin request refused").into_response();
            }
            let mut presented = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let is_form = parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
            if presented.is_none() && is_form {
                let Ok(bytes) = to_bytes(body, MAX_FORM).await else {
                    return Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "form too large").into_response();
                };
                presented = query_param(std::str::from_utf8(&bytes).unwrap_or(""), "csrf").map(|c| c.into_owned());
                body = Body::from(bytes);
            }
            if !presented.is_some_and(|t| same(t.as_bytes(), csrf.as_bytes())) {
                tracing::warn!(user = %p.user, %method, path = parts.uri.path(), "CSRF token missing or wrong");
                return Problem::new(StatusCode::FORBIDDEN, "missing or wrong CSRF token").into_response();
            }
        }
    }

    let audited = match rule.audited {
        Audited::No => None,
        Audited::As(a) => Some(a),
        Audited::Audio => {
            let first_byte = parts
                .headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .is_none_or(|r| r.trim().starts_with("bytes=0-"));
            match (&who, query_param(&query, "download").is_some()) {
                (Some(Principal { via: Via::Link { .. }, .. }), _) if first_byte => Some(AuditAction::SignedLink),
                (_, true) => Some(AuditAction::Download),
                (_, false) if first_byte => Some(AuditAction::Play),
                _ => None,
            }
        }
    };
    let actor = who.as_ref().map(|p| p.user.clone()).unwrap_or_else(|| "-".into());
    let mut req = Request::from_parts(parts, body);
    if let Some(p) = who {
        req.extensions_mut().insert(p);
    }
    let resp = next.run(req).await;
    if let Some(action) = audited {
        let status = resp.status();
        let outcome =
            if status.is_success() || status.is_redirection() { "ok".to_owned() } else { status.as_u16().to_string() };
        let detail = if action == AuditAction::SignedLink { "link used".to_owned() } else { query.clone() };
        if let Err(e) = web.audit(&actor, &client, action, &target, &outcome, &detail).await {
            // Not recorded, not served.
            return e.into_response();
        }
    }
    resp
}

/// `Origin` (when sent) names the host the request went to.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
    origin_host == host
}

/// Finds who is asking: an API token, a session cookie, or a signed link.
/// `Ok(None)`: nobody (no credentials, or a session that ended).
async fn identify(
    web: &Web,
    headers: &HeaderMap,
    rule: &policy::Rule,
    target: &str,
    query: &str,
    client: &str,
) -> Result<Option<Principal>, Problem> {
    let now = now_ms();
    if let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let presented = auth.strip_prefix("Bearer ").map(str::trim).unwrap_or("");
        let refused = || {
            tracing::warn!(client, "API token refused");
            Problem::new(StatusCode::UNAUTHORIZED, "the API token is not valid")
        };
        let (id, secret) = parse_token(presented).ok_or_else(refused)?;
        let tok = web.directory.token(id).await.map_err(|e| Problem::internal("user directory", e))?;
        let tok = tok.filter(|t| !t.revoked && t.expires_ms.is_none_or(|e| e > now)).ok_or_else(refused)?;
        if !same(sha256_hex(secret.as_bytes()).as_bytes(), tok.sha256.as_bytes()) {
            return Err(refused());
        }
        let user = web.directory.user(&tok.user).await.map_err(|e| Problem::internal("user directory", e))?;
        let user = user.filter(|u| u.active()).ok_or_else(refused)?;
        return Ok(Some(Principal {
            user: tok.user,
            role: user.role,
            scope: user.scope,
            via: Via::Token { id: id.into() },
        }));
    }
    if let Some(value) = cookie(headers, COOKIE) {
        let id_hash = sha256_hex(value.as_bytes());
        let s = web.access.session(&id_hash).await.map_err(|e| Problem::internal("session store", e))?;
        if let Some(s) = s.filter(|s| !s.revoked && s.expires_ms > now) {
            let user = web.directory.user(&s.username).await.map_err(|e| Problem::internal("user directory", e))?;
            if let Some(u) = user.filter(|u| u.active() && s.created_ms >= u.sessions_valid_after_ms) {
                return Ok(Some(Principal {
                    user: s.username,
                    role: u.role,
                    scope: u.scope,
                    via: Via::Session { id_hash, csrf: s.csrf },
                }));
            }
        }
    }
    if rule.path == "/api/v1/recordings/{id}/audio" {
        if let Some(sig) = query_param(query, "sig") {
            let exp = query_param(query, "exp").and_then(|e| e.parse::<i64>().ok()).unwrap_or(0);
            let by = query_param(query, "by").unwrap_or_default();
            if !web.links.verify(target, exp, &by, &sig) {
                return Err(Problem::new(StatusCode::FORBIDDEN, "the link's signature is not valid"));
            }
            if exp * 1000 <= now {
                web.audit(&format!("link:{by}"), client, AuditAction::SignedLink, target, "expired", "").await?;
                return Err(Problem::new(StatusCode::FORBIDDEN, "the link has expired"));
            }
            // The link's maker must still exist and be allowed the recording.
            let maker = web.directory.user(&by).await.map_err(|e| Problem::internal("user directory", e))?;
            if !maker.is_some_and(|u| u.active() && u.role.allows(Permission::Recordings)) {
                return Err(Problem::new(StatusCode::FORBIDDEN, "the link's maker may no longer share it"));
            }
            return Ok(Some(Principal {
                user: format!("link:{by}"),
                role: Role::Agent,
                scope: Scope::default(),
                via: Via::Link { recording: target.to_owned() },
            }));
        }
    }
    Ok(None)
}
