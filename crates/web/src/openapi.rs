//! The OpenAPI 3.1 document of `/api/v1`, generated from the same access
//! table the layer enforces ([`crate::policy::RULES`]) and the query
//! structures the handlers parse, so routes, permissions and parameters
//! cannot drift from what the node does. Served at `/api/v1/openapi.json`.

use axum::http::Method;
use model::access::Permission;
use serde_json::{json, Map, Value};

use crate::policy::RULES;

/// What a route does, for the document.
fn summary(method: &Method, path: &str) -> &'static str {
    match (method.as_str(), path) {
        ("GET", "/health/live") => "Liveness: the recorder core answers",
        ("GET", "/health/ready") => "Readiness: the node takes calls (load balancers, DNS failover)",
        ("GET", "/metrics") => "Prometheus metrics",
        ("POST", "/api/v1/session") => "Sign in with a user name and password (sets the session cookie)",
        ("GET", "/api/v1/session") => "Who is signed in, their role, scope and CSRF token",
        ("DELETE", "/api/v1/session") => "Sign out",
        ("GET", "/api/v1/openapi.json") => "This document",
        ("GET", "/api/v1/recordings") => "Search recordings (newest first, cursor pagination, total count)",
        ("GET", "/api/v1/recordings/{id}") => "A recording's metadata, where its audio is, its copies",
        ("GET", "/api/v1/recordings/{id}/audio") => "The stereo WAV (Range, ETag); also with a signed link",
        ("POST", "/api/v1/recordings/{id}/links") => "A signed, expiring playback link",
        ("GET", "/api/v1/recordings/active") => "Calls being recorded now (?cluster=1: on every node)",
        ("GET", "/api/v1/status") => "This node's status",
        ("GET", "/api/v1/workers") => "Background workers and their state",
        ("GET", "/api/v1/cluster") => "Nodes, health, roles, load",
        ("GET", "/api/v1/replication") => "Replication queues per target",
        ("GET", "/api/v1/audit") => "Search the audit trail (newest first)",
        ("GET", "/api/v1/audit/verify") => "Verify the audit trail's hash chain",
        ("DELETE", "/api/v1/recordings/{id}") => "Delete a finished recording on every node",
        ("POST", "/api/v1/recordings/{id}/complete") => "End an active recording (BYE)",
        ("POST", "/api/v1/drain") => "Drain or undrain this node ({\"draining\": bool})",
        ("POST", "/api/v1/cluster/scrub") => "Start an integrity scrub",
        ("DELETE", "/api/v1/cluster/nodes/{node}") => "Forget a node that left for good",
        ("POST", "/api/v1/cluster/anti-entropy") => "Run an anti-entropy round now",
        ("POST", "/api/v1/replication/retry") => "Retry queued replication now",
        ("GET", "/api/v1/settings") => "Cluster settings",
        ("PUT", "/api/v1/settings/{key}") => "Change a cluster setting ({\"value\": ...})",
        ("GET", "/api/v1/users") => "Users",
        ("GET", "/api/v1/users/{name}") => "A user",
        ("PUT", "/api/v1/users/{name}") => "Create or change a user (role, scope, password, disabled)",
        ("DELETE", "/api/v1/users/{name}") => "Delete a user",
        ("DELETE", "/api/v1/users/{name}/sessions") => "End every session of a user, on every node",
        ("POST", "/api/v1/users/{name}/tokens") => "Issue an API token (shown once)",
        ("GET", "/api/v1/tokens") => "API tokens (without their secrets)",
        ("DELETE", "/api/v1/tokens/{id}") => "Revoke an API token",
        _ => "",
    }
}

fn query_params(method: &Method, path: &str) -> Vec<(&'static str, &'static str, &'static str)> {
    match (method.as_str(), path) {
        ("GET", "/api/v1/recordings") => vec![
            ("since", "string", "RFC 3339: started at or after"),
            ("until", "string", "RFC 3339: started before"),
            ("party", "string", "substring of a party's number, name or AOR"),
            ("direction", "string", "inbound or outbound"),
            ("state", "string", "active, completed, interrupted or failed"),
            ("source", "string", "siprec, forked or plain"),
            ("node", "string", "the node that recorded it"),
            ("id", "string", "Call-ID, SIPREC session id, x-refci, UCID (exact)"),
            ("min_duration_s", "integer", "at least this long"),
            ("max_duration_s", "integer", "at most this long"),
            ("cursor", "string", "`next` of the previous page"),
            ("limit", "integer", "page size, 1-10000 (default 100)"),
        ],
        ("GET", "/api/v1/recordings/{id}/audio") => vec![
            ("download", "string", "any value: served as an attachment (audited as download)"),
            ("exp", "integer", "signed link: expiry, unix seconds"),
            ("by", "string", "signed link: who made it"),
            ("sig", "string", "signed link: signature"),
        ],
        ("GET", "/api/v1/recordings/active") => vec![("cluster", "string", "any value: every node's calls")],
        ("GET", "/api/v1/audit/verify") => vec![("node", "string", "another node's trail (its copy here)")],
        ("GET", "/api/v1/audit") => vec![
            ("node", "string", "another node's trail (its copy here); default this node's"),
            ("actor", "string", "user name"),
            ("action", "string", "sign_in, sign_in_failed, search, view, play, download, ..."),
            ("target", "string", "substring of the target"),
            ("since_ms", "integer", "unix milliseconds"),
            ("until_ms", "integer", "unix milliseconds"),
            ("before", "integer", "cursor: entries before this sequence number"),
            ("limit", "integer", "1-1000 (default 100)"),
        ],
        _ => Vec::new(),
    }
}

fn permission_text(p: Permission) -> &'static str {
    match p {
        Permission::Public => "public",
        Permission::SignedIn => "any signed-in user",
        Permission::Recordings => "admin, supervisor, agent (within their scope)",
        Permission::LiveCalls | Permission::ClusterView => "admin, supervisor",
        Permission::Audit => "admin, auditor",
        Permission::Metrics => "admin (or public when http.public_metrics)",
        Permission::Administer => "admin",
    }
}

/// The document.
pub fn document(version: &str) -> Value {
    let mut paths = Map::new();
    for r in RULES.iter().filter(|r| !r.path.starts_with("/ui/") && r.path != "/") {
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        for (name, ty, what) in query_params(&r.method, r.path) {
            params.push(json!({ "name": name, "in": "query", "required": false, "description": what, "schema": { "type": ty } }));
        }
        let problem = json!({ "description": "problem details (RFC 9457)",
            "content": { "application/problem+json": { "schema": { "$ref": "#/components/schemas/Problem" } } } });
        let mut responses = Map::new();
        responses.insert("200".into(), json!({ "description": "success (JSON; audio/wav for audio)" }));
        responses.insert("400".into(), problem.clone());
        if r.needs != Permission::Public {
            responses.insert("401".into(), problem.clone());
            responses.insert("403".into(), problem.clone());
        }
        let security =
            if r.needs == Permission::Public { json!([]) } else { json!([{ "bearer": [] }, { "session": [] }]) };
        let op = json!({
            "summary": summary(&r.method, r.path),
            "description": format!("Allowed: {}.", permission_text(r.needs)),
            "parameters": params,
            "security": security,
            "responses": responses,
            "x-callvault-permission": r.needs,
        });
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "callvault node API", "version": version,
                  "description": "Every route needs a session cookie (browsers; state changes also need the X-CSRF-Token header) or an API token (Authorization: Bearer cvt_...), except where marked public." },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": crate::layer::COOKIE }
            },
            "schemas": { "Problem": { "type": "object", "properties": {
                "type": { "type": "string" }, "title": { "type": "string" },
                "status": { "type": "integer" }, "detail": { "type": "string" } } } }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_api_route_is_documented_with_a_summary() {
        let doc = super::document("test");
        for r in super::RULES.iter().filter(|r| r.path.starts_with("/api/")) {
            let op = &doc["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            assert!(!op["summary"].as_str().unwrap_or("").is_empty(), "{} {} has no summary", r.method, r.path);
        }
        assert_eq!(doc["paths"]["/api/v1/recordings"]["get"]["parameters"].as_array().unwrap().len(), 12);
    }
}
