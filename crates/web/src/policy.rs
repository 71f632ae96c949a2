//! Which route needs which permission, and what of it is audited: one
//! table every request is checked against ([`crate::layer`]). A route not
//! in the table is refused, so a new route cannot be left open by mistake;
//! the authorization-matrix test walks this table for every role.

use axum::http::Method;
use model::access::{AuditAction, Permission};

/// What the audit trail keeps of a request to a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audited {
    No,
    /// Every request, as this action.
    As(AuditAction),
    /// Audio: `play` (first byte requested) or `download` (`?download=1`);
    /// the further range requests of one playback are not repeated.
    Audio,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Method,
    pub path: &'static str,
    pub needs: Permission,
    pub audited: Audited,
}

const fn rule(method: Method, path: &'static str, needs: Permission, audited: Audited) -> Rule {
    Rule { method, path, needs, audited }
}

use AuditAction as A;
use Audited::{As, No};
use Permission as P;

/// Every route of the node's HTTP listener.
pub const RULES: &[Rule] = &[
    // For load balancers, DNS failover and orchestrators.
    rule(Method::GET, "/health/live", P::Public, No),
    rule(Method::GET, "/health/ready", P::Public, No),
    rule(Method::GET, "/metrics", P::Metrics, No),
    // Signing in and out.
    rule(Method::GET, "/", P::Public, No),
    rule(Method::GET, "/ui/sign-in", P::Public, No),
    rule(Method::POST, "/ui/sign-in", P::Public, No),
    rule(Method::POST, "/ui/sign-out", P::SignedIn, No),
    rule(Method::GET, "/ui/assets/{file}", P::Public, No),
    rule(Method::POST, "/api/v1/session", P::Public, No),
    rule(Method::GET, "/api/v1/session", P::SignedIn, No),
    rule(Method::DELETE, "/api/v1/session", P::SignedIn, No),
    rule(Method::GET, "/api/v1/openapi.json", P::SignedIn, No),
    // Recordings, within the user's scope.
    rule(Method::GET, "/ui/recordings", P::Recordings, As(A::Search)),
    rule(Method::GET, "/ui/recordings/{id}", P::Recordings, As(A::View)),
    rule(Method::GET, "/api/v1/recordings", P::Recordings, As(A::Search)),
    rule(Method::GET, "/api/v1/recordings/{id}", P::Recordings, As(A::View)),
    rule(Method::GET, "/api/v1/recordings/{id}/audio", P::Recordings, Audited::Audio),
    rule(Method::POST, "/api/v1/recordings/{id}/links", P::Recordings, As(A::SignedLink)),
    // Live calls and the cluster.
    rule(Method::GET, "/ui/live", P::LiveCalls, No),
    rule(Method::GET, "/api/v1/recordings/active", P::LiveCalls, No),
    rule(Method::GET, "/ui/cluster", P::ClusterView, No),
    rule(Method::GET, "/api/v1/status", P::ClusterView, No),
    rule(Method::GET, "/api/v1/workers", P::ClusterView, No),
    rule(Method::GET, "/api/v1/cluster", P::ClusterView, No),
    rule(Method::GET, "/api/v1/replication", P::ClusterView, No),
    // The audit trail.
    rule(Method::GET, "/ui/audit", P::Audit, As(A::Search)),
    rule(Method::GET, "/api/v1/audit", P::Audit, As(A::Search)),
    rule(Method::GET, "/api/v1/audit/verify", P::Audit, No),
    // Administration.
    rule(Method::GET, "/ui/admin", P::Administer, No),
    rule(Method::DELETE, "/api/v1/recordings/{id}", P::Administer, As(A::Delete)),
    rule(Method::POST, "/api/v1/recordings/{id}/complete", P::Administer, As(A::NodeOperation)),
    rule(Method::POST, "/api/v1/drain", P::Administer, As(A::NodeOperation)),
    rule(Method::POST, "/api/v1/cluster/scrub", P::Administer, As(A::NodeOperation)),
    rule(Method::DELETE, "/api/v1/cluster/nodes/{node}", P::Administer, As(A::NodeOperation)),
    rule(Method::POST, "/api/v1/cluster/anti-entropy", P::Administer, As(A::NodeOperation)),
    rule(Method::POST, "/api/v1/replication/retry", P::Administer, As(A::NodeOperation)),
    rule(Method::GET, "/api/v1/settings", P::Administer, No),
    rule(Method::PUT, "/api/v1/settings/{key}", P::Administer, As(A::Setting)),
    rule(Method::GET, "/api/v1/users", P::Administer, No),
    rule(Method::GET, "/api/v1/users/{name}", P::Administer, No),
    rule(Method::PUT, "/api/v1/users/{name}", P::Administer, As(A::UserChange)),
    rule(Method::DELETE, "/api/v1/users/{name}", P::Administer, As(A::UserChange)),
    rule(Method::DELETE, "/api/v1/users/{name}/sessions", P::Administer, As(A::UserChange)),
    rule(Method::POST, "/api/v1/users/{name}/tokens", P::Administer, As(A::TokenChange)),
    rule(Method::GET, "/api/v1/tokens", P::Administer, No),
    rule(Method::DELETE, "/api/v1/tokens/{id}", P::Administer, As(A::TokenChange)),
];

/// The rule of a matched route.
pub fn lookup(method: &Method, path: &str) -> Option<&'static Rule> {
    // HEAD is answered like GET.
    let method = if method == Method::HEAD { &Method::GET } else { method };
    RULES.iter().find(|r| r.method == method && r.path == path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_appears_once() {
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                assert!(!(a.method == b.method && a.path == b.path), "{} {} twice", a.method, a.path);
            }
        }
        assert!(lookup(&Method::HEAD, "/health/live").is_some());
        assert!(lookup(&Method::POST, "/health/live").is_none());
    }

    #[test]
    fn state_changes_are_audited() {
        for r in RULES {
            let changes = r.method != Method::GET && r.needs == P::Administer;
            assert!(!changes || r.audited != No, "{} {} changes state but is not audited", r.method, r.path);
        }
    }
}
