//! The people-facing surface of a node: sign-in, roles and scope, the
//! audit trail, the access routes of `/api/v1` and the web UI.
//!
//! Every request passes one layer ([`layer::guard`]) that finds who is
//! asking (a session cookie, an API token or a signed playback link),
//! checks the route's permission in one table ([`policy::RULES`]), checks
//! CSRF on state changes of browser sessions, and writes the audit trail.
//! Handlers get the [`Principal`] and limit what they return to its scope.
//!
//! Crates, and why: `argon2` (RustCrypto, memory-hard password hashing);
//! `askama` (templates compiled into the binary, checked at build time,
//! escaped by default: no template files to deploy, no JS build step).
//! Sessions, CSRF and sign-in throttling are small and written here, on
//! the node's own database: `axum-login`/`tower-sessions` would bring a
//! second session store and their own sqlx pin for what is ~200 lines.
#![forbid(unsafe_code)]

pub mod api;
pub mod directory;
pub mod layer;
pub mod openapi;
pub mod passwords;
pub mod policy;
pub mod principal;
pub mod problem;
pub mod recordings;
pub mod secrets;
pub mod throttle;
pub mod ui;

use std::sync::{Arc, Mutex};

use model::access::{AuditAction, AuditEvent};
use store::{AccessStore, ClusterIndex};

pub use directory::{Directory, SettingsWriter};
pub use principal::{Principal, Via};
pub use problem::Problem;

/// How the surface behaves (from the node's configuration).
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// How long a sign-in lasts.
    pub session_ttl_s: i64,
    /// Mark cookies `Secure` (the UI is served over HTTPS, here or by a
    /// reverse proxy in front).
    pub secure_cookies: bool,
    /// Serve `/metrics` without authentication.
    pub public_metrics: bool,
    /// Longest lifetime of a signed playback link.
    pub max_link_ttl_s: i64,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { session_ttl_s: 8 * 3600, secure_cookies: false, public_metrics: false, max_link_ttl_s: 7 * 86_400 }
    }
}

/// What the layer and the handlers share.
#[derive(Debug)]
pub struct Web {
    pub directory: Directory,
    pub access: Arc<dyn AccessStore>,
    pub index: Arc<dyn ClusterIndex>,
    pub links: secrets::LinkSigner,
    pub config: WebConfig,
    pub node_id: String,
    throttle: Mutex<throttle::Throttle>,
}

impl Web {
    pub fn new(
        index: Arc<dyn ClusterIndex>,
        access: Arc<dyn AccessStore>,
        writer: Arc<dyn SettingsWriter>,
        link_secret: &[u8],
        config: WebConfig,
        node_id: String,
    ) -> Web {
        Web {
            directory: Directory { index: index.clone(), writer },
            access,
            index,
            links: secrets::LinkSigner::new(link_secret),
            config,
            node_id,
            throttle: Mutex::new(throttle::Throttle::default()),
        }
    }

    /// Appends to the audit trail; a failure is logged and returned (the
    /// caller refuses what it could not record).
    pub async fn audit(
        &self,
        actor: &str,
        from: &str,
        action: AuditAction,
        target: &str,
        outcome: &str,
        detail: &str,
    ) -> Result<(), Problem> {
        let event = AuditEvent {
            at_ms: now_ms(),
            actor: actor.to_owned(),
            from: from.to_owned(),
            action,
            target: target.chars().take(512).collect(),
            outcome: outcome.to_owned(),
            detail: detail.chars().take(2048).collect(),
        };
        self.access.audit_append(event).await.map(|_| ()).map_err(|e| Problem::internal("audit trail", e))
    }
}

pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// The routes of this crate (UI, sessions, users, tokens, audit, search),
/// to be merged with the node's own before [`guarded`] wraps them all.
pub fn routes() -> axum::Router<Arc<Web>> {
    api::routes().merge(recordings::routes()).merge(ui::routes())
}

/// Puts every route of `app` behind the access layer.
pub fn guarded(app: axum::Router, web: Arc<Web>) -> axum::Router {
    app.route_layer(axum::middleware::from_fn_with_state(web, layer::guard))
}
