//! Sign-in, roles, scope, CSRF, sessions, throttling, signed links and the
//! audit trail, on a real node over real HTTP.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{call, http_json_as, Node, BIN};

/// An HTTP answer: status, headers we look at, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::String(self.body.clone()))
    }
}

/// A raw request: no redirects followed, any headers.
fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).build().into();
    let resp = match (method, body) {
        ("GET", _) | ("DELETE", _) | ("HEAD", _) => {
            let mut r = match method {
                "GET" => agent.get(url),
                "HEAD" => agent.head(url),
                _ => agent.delete(url),
            };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            r.call()
        }
        (_, body) => {
            let mut r = if method == "PUT" { agent.put(url) } else { agent.post(url) };
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            match body {
                Some(b) => r.send(b.as_bytes()),
                None => r.send_empty(),
            }
        }
    };
    let mut resp = resp.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let headers = resp.headers().iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned())).collect();
    let status = resp.status().as_u16();
    let body = resp.body_mut().with_config().limit(64 << 20).read_to_string().unwrap_or_default();
    Answer { status, headers, body }
}

fn admin_put_user(node: &Node, name: &str, body: Value) {
    let (code, v) = node.put(&format!("/api/v1/users/{name}"), body);
    assert_eq!(code, 200, "{v}");
}

fn token_of(node: &Node, name: &str) -> String {
    let (code, v) = node.post(&format!("/api/v1/users/{name}/tokens"), Some(json!({ "label": "test" })));
    assert_eq!(code, 201, "{v}");
    v["token"].as_str().unwrap().to_owned()
}

/// Signs in with a password; returns the cookie header value and the CSRF token.
fn sign_in(node: &Node, user: &str, password: &str) -> (String, String) {
    let a = request(
        "POST",
        &node.url("/api/v1/session"),
        &[("content-type", "application/json")],
        Some(&json!({ "user": user, "password": password }).to_string()),
    );
    assert_eq!(a.status, 200, "sign-in of {user}: {}", a.body);
    let set = a.header("set-cookie").expect("a session cookie").to_owned();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"), "{set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    (cookie, a.json()["csrf_token"].as_str().unwrap().to_owned())
}

fn one_recording(node: &Node) -> String {
    let s = call(node.sip_udp, &["--duration", "1"]);
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    rec["id"].as_str().unwrap().to_owned()
}

/// Every route of the access table, for every role and for nobody: the
/// roles allowed get through (whatever the handler then answers), the
/// others get 403, and nobody gets 401 (or a redirect to sign in).
#[test]
fn authorization_matrix_over_every_route_and_role() {
    let node = Node::start("authz-matrix");
    let mut tokens = Vec::new();
    for role in model::access::Role::ALL {
        let name = format!("m-{}", role.as_str());
        admin_put_user(&node, &name, json!({ "role": role.as_str(), "scope": ["1001"] }));
        tokens.push((role, token_of(&node, &name)));
    }
    let ghost = "01890000-0000-7000-8000-000000000000";
    let mut checked = 0;
    for rule in web::policy::RULES {
        let path = rule
            .path
            .replace("{id}", ghost)
            .replace("{name}", "ghost")
            .replace("{node}", "ghost-node")
            .replace("{key}", "ghost.key")
            .replace("{file}", "app.css");
        let url = node.url(&path);
        let method = rule.method.as_str();
        let public = rule.needs == model::access::Permission::Public;
        let anon = request(method, &url, &[], None);
        if public {
            assert!(![401, 403].contains(&anon.status), "{method} {path} is public: {}", anon.status);
        } else if method == "GET" && (path == "/" || path.starts_with("/ui/")) {
            assert_eq!(anon.status, 303, "{method} {path} sends to sign-in");
            assert!(anon.header("location").unwrap().starts_with("/ui/sign-in"));
        } else {
            assert_eq!(anon.status, 401, "{method} {path} without credentials: {}", anon.body);
            assert!(anon.header("content-type").unwrap().starts_with("application/problem+json"));
        }
        for (role, token) in &tokens {
            let auth = format!("Bearer {token}");
            let a = request(method, &url, &[("authorization", &auth)], None);
            if public || role.allows(rule.needs) {
                assert!(![401, 403].contains(&a.status), "{role:?} may {method} {path}: {} {}", a.status, a.body);
            } else {
                assert_eq!(a.status, 403, "{role:?} may not {method} {path}: {}", a.body);
            }
            checked += 1;
        }
    }
    assert!(checked >= 4 * 40, "{checked}");
    // Denials are in the audit trail.
    let (code, v) = node.get("/api/v1/audit?action=denied&limit=1000");
    assert_eq!(code, 200);
    assert!(v["entries"].as_array().unwrap().len() >= 20, "{v}");
    // A bad token is refused, not ignored.
    let a = request("GET", &node.url("/api/v1/recordings"), &[("authorization", "Bearer cvt_00_nope")], None);
    assert_eq!(a.status, 401);
}

#[test]
fn sessions_csrf_expiry_revocation_and_throttling() {
    let node = Node::start_with("sessions", &[("CALLVAULT_HTTP__SESSION_TIMEOUT_SECS", "3")]);
    admin_put_user(&node, "sup", json!({ "role": "supervisor", "scope": ["+1555*"], "password": "correct horse 1" }));
    let id = one_recording(&node);

    // A browser session: reads work; a state change needs the CSRF token.
    let (cookie, csrf) = sign_in(&node, "sup", "correct horse 1");
    let me = request("GET", &node.url("/api/v1/session"), &[("cookie", &cookie)], None);
    assert_eq!(me.json()["role"], "supervisor", "{}", me.body);
    let link_url = node.url(&format!("/api/v1/recordings/{id}/links"));
    let ct = ("content-type", "application/json");
    let a = request("POST", &link_url, &[("cookie", &cookie), ct], Some("{}"));
    assert_eq!(a.status, 403, "no CSRF token: {}", a.body);
    let a = request("POST", &link_url, &[("cookie", &cookie), ct, ("x-csrf-token", "forged")], Some("{}"));
    assert_eq!(a.status, 403, "wrong CSRF token");
    let evil = [("cookie", cookie.as_str()), ct, ("x-csrf-token", csrf.as_str()), ("origin", "http://evil.example")];
    assert_eq!(request("POST", &link_url, &evil, Some("{}")).status, 403, "cross-origin");
    let a = request("POST", &link_url, &[("cookie", &cookie), ct, ("x-csrf-token", &csrf)], Some("{}"));
    assert_eq!(a.status, 201, "{}", a.body);

    // Expiry: the session ends on its own.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(request("GET", &node.url("/api/v1/session"), &[("cookie", &cookie)], None).status, 401);

    // Revocation by an administrator: every session of the user ends.
    let (cookie, _) = sign_in(&node, "sup", "correct horse 1");
    assert_eq!(request("GET", &node.url("/api/v1/recordings"), &[("cookie", &cookie)], None).status, 200);
    let (code, _) = crate::harness::http_json("DELETE", &node.url("/api/v1/users/sup/sessions"), None);
    assert_eq!(code, 200);
    assert_eq!(request("GET", &node.url("/api/v1/recordings"), &[("cookie", &cookie)], None).status, 401);

    // Sign-out ends the session it is sent with.
    let (cookie, csrf) = sign_in(&node, "sup", "correct horse 1");
    let a = request("DELETE", &node.url("/api/v1/session"), &[("cookie", &cookie), ("x-csrf-token", &csrf)], None);
    assert_eq!(a.status, 204);
    assert_eq!(request("GET", &node.url("/api/v1/session"), &[("cookie", &cookie)], None).status, 401);

    // Throttling: after five failures even the right password waits.
    for _ in 0..6 {
        let a = request(
            "POST",
            &node.url("/api/v1/session"),
            &[ct],
            Some(&json!({ "user": "sup", "password": "wrong password" }).to_string()),
        );
        assert!([401, 429].contains(&a.status), "{}", a.body);
    }
    let a = request(
        "POST",
        &node.url("/api/v1/session"),
        &[ct],
        Some(&json!({ "user": "sup", "password": "correct horse 1" }).to_string()),
    );
    assert_eq!(a.status, 429, "{}", a.body);
    assert!(a.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    let (_, v) = node.get("/api/v1/audit?action=sign_in_failed");
    assert!(v["entries"].as_array().unwrap().len() >= 6, "{v}");
    assert!(node.log().contains("sign-in failed"), "failed sign-ins are logged");
    // An unknown user fails the same way (no hint which part was wrong).
    let a = request(
        "POST",
        &node.url("/api/v1/session"),
        &[ct, ("x-forwarded-for", "ignored")],
        Some(&json!({ "user": "nobody", "password": "whatever it is" }).to_string()),
    );
    assert!([401, 429].contains(&a.status));
}

#[test]
fn scope_limits_search_detail_audio_and_links() {
    let node = Node::start("scope");
    let id = one_recording(&node); // +15550100 -> +15550199
    admin_put_user(&node, "agent-2001", json!({ "role": "agent", "scope": ["2001"] }));
    admin_put_user(&node, "agent-0100", json!({ "role": "agent", "scope": ["+15550100"] }));
    admin_put_user(&node, "sup", json!({ "role": "supervisor", "scope": ["+1555*"] }));
    admin_put_user(&node, "auditor", json!({ "role": "auditor" }));
    let (out, mine, sup, aud) = (
        token_of(&node, "agent-2001"),
        token_of(&node, "agent-0100"),
        token_of(&node, "sup"),
        token_of(&node, "auditor"),
    );
    let get = |t: &str, path: &str| http_json_as(Some(t), "GET", &node.url(path), None);

    let (code, v) = get(&out, "/api/v1/recordings");
    assert_eq!((code, v["total"].clone()), (200, json!(0)), "out of scope: not found in search");
    assert_eq!(get(&out, &format!("/api/v1/recordings/{id}")).0, 404, "nor by id");
    assert_eq!(get(&out, &format!("/api/v1/recordings/{id}/audio")).0, 404, "nor its audio");
    for t in [&mine, &sup] {
        let (code, v) = get(t, "/api/v1/recordings?party=555");
        assert_eq!((code, v["total"].clone()), (200, json!(1)), "{v}");
        assert_eq!(get(t, &format!("/api/v1/recordings/{id}")).0, 200);
    }
    assert_eq!(get(&aud, "/api/v1/recordings").0, 403, "auditors read the audit trail, not recordings");

    // Search filters and the identifiers operators match CDRs with.
    let call_id = get(&sup, &format!("/api/v1/recordings/{id}")).1["call_ids"][0].as_str().unwrap().to_owned();
    assert_eq!(get(&sup, &format!("/api/v1/recordings?id={call_id}")).1["total"], 1);
    assert_eq!(get(&sup, "/api/v1/recordings?id=nope").1["total"], 0);
    assert_eq!(get(&sup, "/api/v1/recordings?min_duration_s=600").1["total"], 0);
    let (code, v) = get(&sup, "/api/v1/recordings?colour=blue");
    assert_eq!(code, 400, "unknown parameters are refused: {v}");
    assert!(v["detail"].as_str().unwrap().contains("colour"), "{v}");

    // Audio: ETag (immutable), 304 on a match, a range is 206.
    let auth = format!("Bearer {sup}");
    let audio = node.url(&format!("/api/v1/recordings/{id}/audio"));
    let a = request("GET", &audio, &[("authorization", &auth)], None);
    assert_eq!(a.status, 200);
    let etag = a.header("etag").unwrap().to_owned();
    assert_eq!(request("GET", &audio, &[("authorization", &auth), ("if-none-match", &etag)], None).status, 304);
    assert_eq!(request("GET", &audio, &[("authorization", &auth), ("range", "bytes=100-199")], None).status, 206);

    // A signed link plays without a session until it expires, and nothing else.
    let (code, v) = http_json_as(
        Some(&sup),
        "POST",
        &node.url(&format!("/api/v1/recordings/{id}/links")),
        Some(json!({ "ttl_s": 2 })),
    );
    assert_eq!(code, 201, "{v}");
    let link = node.url(v["path"].as_str().unwrap());
    let a = request("GET", &link, &[], None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.header("content-type"), Some("audio/wav"));
    let tampered = link.replace("by=sup", "by=admin");
    assert_eq!(request("GET", &tampered, &[], None).status, 403, "the signature covers the maker");
    let detail = link.replace("/audio?", "?");
    assert_eq!(request("GET", &detail, &[], None).status, 401, "a link opens the audio only");
    let (code, _) = http_json_as(Some(&out), "POST", &node.url(&format!("/api/v1/recordings/{id}/links")), None);
    assert_eq!(code, 404, "no links to what one cannot see");
    std::thread::sleep(Duration::from_millis(2500));
    let a = request("GET", &link, &[], None);
    assert_eq!(a.status, 403, "expired: {}", a.body);
    assert!(a.body.contains("expired"));

    // Every access above is in the audit trail.
    let (_, v) = node.get(&format!("/api/v1/audit?target={id}&limit=1000"));
    let actions: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for want in ["view", "play", "signed_link"] {
        assert!(actions.contains(&want), "{want} not audited: {actions:?}");
    }
    let used: Vec<&Value> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "signed_link" && e["actor"] == "link:sup")
        .collect();
    assert!(used.iter().any(|e| e["outcome"] == "ok") && used.iter().any(|e| e["outcome"] == "expired"), "{used:?}");
    let (_, v) = get(&aud, "/api/v1/audit?action=search&actor=sup");
    assert!(!v["entries"].as_array().unwrap().is_empty(), "auditors search the trail: {v}");
}

#[test]
fn the_audit_chain_verifies_and_a_tampered_entry_is_found() {
    let mut node = Node::start("audit-chain");
    admin_put_user(&node, "alice", json!({ "role": "agent", "scope": ["1001"] }));
    for _ in 0..5 {
        assert_eq!(node.get("/api/v1/recordings?party=1001").0, 200);
    }
    let (code, v) = node.get("/api/v1/audit/verify");
    assert_eq!((code, v["intact"].clone()), (200, json!(true)), "{v}");
    assert!(v["entries"].as_i64().unwrap() >= 7, "{v}");
    let dir = node.dir.clone();
    let verify = || Command::new(BIN).args(["audit", "verify", "--data-dir"]).arg(&dir).output().unwrap();
    let out = verify();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));

    // Someone with the database file rewrites history: the chain says where.
    node.kill9();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}", node.dir.join("callvault.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        assert!(sqlx::query("UPDATE audit SET actor = 'nobody' WHERE seq = 3").execute(&mut db).await.is_err());
        sqlx::query("DROP TRIGGER audit_no_update").execute(&mut db).await.unwrap();
        sqlx::query("UPDATE audit SET detail = 'party=9999' WHERE seq = 3").execute(&mut db).await.unwrap();
    });
    let out = verify();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entry 3") && err.contains("altered"), "{err}");
    let node = node.restart();
    let (_, v) = node.get("/api/v1/audit/verify");
    assert_eq!(v["intact"], false, "{v}");
    assert_eq!(v["break"]["seq"], 3);
}

#[test]
fn users_change_through_the_api_and_the_cli() {
    let node = Node::start("users");
    // Created by the CLI with a password from stdin, while the node runs.
    let mut child = Command::new(BIN)
        .args([
            "users",
            "add",
            "carol",
            "--role",
            "supervisor",
            "--scope",
            "1001,44*",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(&node.dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"a long enough password\n").unwrap();
    assert!(child.wait().unwrap().success());
    let (cookie, _) = sign_in(&node, "carol", "a long enough password");
    let me = request("GET", &node.url("/api/v1/session"), &[("cookie", &cookie)], None).json();
    assert_eq!(me["scope"], json!(["1001", "44*"]));
    // A weak password and an unknown field are refused with clear errors.
    let (code, v) = node.put("/api/v1/users/dave", json!({ "role": "agent", "password": "short" }));
    assert_eq!(code, 400, "{v}");
    let (code, v) = node.put("/api/v1/users/dave", json!({ "role": "agent", "colour": "blue" }));
    assert_eq!(code, 422, "{v}");
    // Deleting ends the user's sessions; they cannot sign in again.
    assert_eq!(crate::harness::http_json("DELETE", &node.url("/api/v1/users/carol"), None).0, 204);
    assert_eq!(request("GET", &node.url("/api/v1/session"), &[("cookie", &cookie)], None).status, 401);
    let a = request(
        "POST",
        &node.url("/api/v1/session"),
        &[("content-type", "application/json")],
        Some(&json!({ "user": "carol", "password": "a long enough password" }).to_string()),
    );
    assert_eq!(a.status, 401);
    let list = Command::new(BIN).args(["users", "list", "--data-dir"]).arg(&node.dir).output().unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    assert!(list.contains("admin") && !list.contains("carol"), "{list}");
    // The user changes are audited, with who made them.
    let (_, v) = node.get("/api/v1/audit?action=user_change");
    let targets: Vec<&str> = v["entries"].as_array().unwrap().iter().map(|e| e["target"].as_str().unwrap()).collect();
    assert!(targets.contains(&"carol"), "{v}");
}

/// The command line through a node's API: `recordings --url` with a
/// token (the token's scope applies), export verified by checksum, and
/// drain / undrain.
#[test]
fn the_cli_works_against_a_remote_node_with_a_token() {
    let node = Node::start("cli-remote");
    let id = one_recording(&node);
    admin_put_user(&node, "agent", json!({ "role": "agent", "scope": ["2001"] }));
    let agent = token_of(&node, "agent");
    let cli = |token: &str, args: &[&str]| {
        let out = Command::new(BIN).args(args).env("CALLVAULT_TOKEN", token).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = format!("http://{}", node.http);
    let (ok, out, err) = cli(&node.token, &["recordings", "--url", &base, "list"]);
    assert!(ok && out.contains(&id), "{out}{err}");
    let (ok, out, _) = cli(&agent, &["recordings", "--url", &base, "list", "--json"]);
    assert!(ok && out.trim().is_empty(), "out of the agent's scope: {out}");
    let (ok, _, err) = cli("", &["recordings", "--url", &base, "list"]);
    assert!(!ok && err.contains("CALLVAULT_TOKEN"), "{err}");
    let file = crate::harness::temp_dir("cli-export").join("r.wav");
    let (ok, _, err) =
        cli(&node.token, &["recordings", "--url", &base, "export", &id, "--out", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(err.contains("sha256"), "{err}");
    assert!(std::fs::metadata(&file).unwrap().len() > 44);

    let dir = node.dir.to_str().unwrap().to_owned();
    let (ok, _, err) = cli(&node.token, &["cluster", "drain", "--data-dir", &dir]);
    assert!(ok, "{err}");
    assert_eq!(node.get("/health/ready").0, 503);
    let (ok, _, err) = cli(&node.token, &["cluster", "drain", "--off", "--data-dir", &dir]);
    assert!(ok, "{err}");
    assert_eq!(node.get("/health/ready").0, 200);
    let (_, v) = node.get("/api/v1/audit?action=node_operation");
    assert_eq!(v["entries"].as_array().unwrap().len(), 2, "both audited: {v}");
}
