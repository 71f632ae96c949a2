//! The cluster with real `serve` processes on loopback, each with its own
//! data directory: replication with verified checksums, one call one
//! recording, kill -9 on both ends of a transfer, a partition through a
//! fault-injecting proxy, a scheduled target, a late joiner that backfills
//! without resurrecting deletions, the job leader, settings, and peers that
//! lie or do not know the secret.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{call, call_bg, finish_bg, free_port, http_json, Node};
use crate::proxy::Proxy;

const SECRET: &str = "it-cluster-secret";

/// Environment for a cluster member with fast timings (heartbeat 300 ms,
/// dead after 1.5 s, leader hold-down 1.5 s, anti-entropy every 2 s).
fn member_env(id: &str, peers: &[String], extra: &[(&str, String)]) -> Vec<(String, String)> {
    let peers = format!("[{}]", peers.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(","));
    let mut env: Vec<(String, String)> = vec![
        ("CALLVAULT_NODE_ID".into(), id.into()),
        // A fixed port: peers find the node at the same address after a restart.
        ("CALLVAULT_CLUSTER__LISTEN".into(), format!("127.0.0.1:{}", free_port())),
        ("CALLVAULT_CLUSTER__SECRET".into(), SECRET.into()),
        ("CALLVAULT_CLUSTER__PEERS".into(), peers),
        ("CALLVAULT_CLUSTER__HEARTBEAT_MS".into(), "300".into()),
        ("CALLVAULT_CLUSTER__DEAD_AFTER_MS".into(), "1500".into()),
        ("CALLVAULT_CLUSTER__LEADER_HOLD_DOWN_MS".into(), "1500".into()),
        ("CALLVAULT_CLUSTER__ANTI_ENTROPY_SECS".into(), "2".into()),
        ("CALLVAULT_CLUSTER__RETENTION_CHECK_SECS".into(), "1".into()),
    ];
    for (k, v) in extra {
        env.retain(|(ek, _)| ek != k);
        env.push((k.to_string(), v.clone()));
    }
    env
}

fn member(name: &str, id: &str, peers: &[String], extra: &[(&str, String)]) -> Node {
    let env = member_env(id, peers, extra);
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Node::start_with(name, &refs)
}

fn url(n: &Node) -> String {
    n.cluster.clone().expect("a cluster member")
}

fn wait_until(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn view(n: &Node) -> Value {
    let (code, v) = n.get("/api/v1/cluster");
    assert_eq!(code, 200, "{v}");
    v
}

fn alive_peers(n: &Node) -> usize {
    view(n)["peers"].as_array().map_or(0, |p| p.iter().filter(|p| p["alive"] == true).count())
}

/// Finished recordings a node holds with their audio: id → SHA-256 of the
/// metadata. Every copy (the API lists one per call; copies are asked for).
fn holdings(n: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for r in n.recordings("?limit=10000") {
        if r["state"] == "active" {
            continue;
        }
        let copies = r["copies"].as_array().cloned().unwrap_or_default();
        let ids: Vec<String> = if copies.is_empty() {
            vec![r["id"].as_str().unwrap().to_owned()]
        } else {
            copies.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
        };
        for id in ids {
            let (code, d) = n.get(&format!("/api/v1/recordings/{id}"));
            if code == 200 && d["audio_here"] == true {
                out.insert(id, d["audio"]["sha256"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    out
}

/// SHA-256 of the audio a node serves for a recording.
fn served_sha(n: &Node, id: &str) -> String {
    let mut resp = n.raw_get(&format!("/api/v1/recordings/{id}/audio")).call().unwrap();
    let body = resp.body_mut().with_config().limit(1 << 30).read_to_vec().unwrap();
    cluster::hex(&<sha2::Sha256 as sha2::Digest>::digest(&body))
}

fn outbox_empty(n: &Node) -> bool {
    let (_, v) = n.get("/api/v1/replication");
    v["targets"].as_object().is_some_and(|t| t.values().all(|x| x["depth"] == 0))
}

fn short_calls(n: &Node, count: usize) -> Value {
    let s =
        call(n.sip_udp, &["--calls", &count.to_string(), "--concurrency", "10", "--rate", "50", "--duration", "0.6"]);
    assert_eq!(s["established"], count, "{s:#}");
    s
}

#[test]
fn three_nodes_hold_every_recording_with_identical_checksums_and_a_forked_call_is_one_recording() {
    let a = member("c3-a", "node-a", &[], &[]);
    let b = member("c3-b", "node-b", &[url(&a)], &[]);
    let c = member("c3-c", "node-c", &[url(&a)], &[]);
    // B and C only know A; A learns them from their heartbeats, and they learn each other.
    for n in [&a, &b, &c] {
        wait_until(Duration::from_secs(15), "full membership", || alive_peers(n) == 2);
    }
    for n in [&a, &b, &c] {
        short_calls(n, 3);
    }
    // The same SIPREC session forked by the platform to A and B at once.
    let fa = call_bg(a.sip_udp, &["--duration", "1", "--session-id", "dual-fork-1"]);
    let fb = call_bg(b.sip_udp, &["--duration", "1", "--session-id", "dual-fork-1"]);
    assert_eq!(finish_bg(fa)["established"], 1);
    assert_eq!(finish_bg(fb)["established"], 1);

    wait_until(Duration::from_secs(60), "every recording on every node", || {
        [&a, &b, &c].iter().all(|n| holdings(n).len() == 11 && outbox_empty(n))
    });
    let ha = holdings(&a);
    assert_eq!(ha, holdings(&b), "same recordings and checksums on A and B");
    assert_eq!(ha, holdings(&c), "same recordings and checksums on A and C");
    for (id, sha) in &ha {
        for n in [&a, &b, &c] {
            assert_eq!(&served_sha(n, id), sha, "the audio {id} served by {} matches its checksum", n.http);
        }
    }
    for n in [&a, &b, &c] {
        let listed = n.recordings("?limit=10000");
        assert_eq!(listed.len(), 10, "9 calls + the forked call, listed once: {listed:#?}");
        let forked =
            listed.iter().find(|r| r["copies"].as_array().is_some_and(|c| c.len() == 2)).expect("the forked call");
        assert_eq!(forked["call_key"], "siprec:dual-fork-1");
        let nodes: Vec<&str> =
            forked["copies"].as_array().unwrap().iter().map(|c| c["node"].as_str().unwrap()).collect();
        assert!(nodes.contains(&"node-a") && nodes.contains(&"node-b"), "{nodes:?}");
    }
    // No loops: only the origin's outbox ever held an item (each node sent
    // its own 3 or 4 recordings twice, metadata and audio, to each of 2 peers).
    let sent: f64 = [&a, &b, &c].iter().map(|n| n.metric("callvault_replication_items_total")).sum();
    assert_eq!(sent, (11 * 2 * 2) as f64, "each recording went once to each other node, nothing relayed");
    assert_eq!(c.metric("callvault_cluster_auth_refused_total"), 0.0);
    // Every piece of background work runs in the one worker shape, visible in the API.
    let (_, w) = a.get("/api/v1/workers");
    let names: Vec<&str> = w["workers"].as_array().unwrap().iter().map(|w| w["name"].as_str().unwrap()).collect();
    for want in ["anti-entropy", "cluster-heartbeat", "index-running", "jobs", "replicate:node-b", "replicate:node-c"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
}

#[test]
fn kill_9_of_the_target_mid_transfer_and_of_the_source_with_a_full_queue_lose_nothing() {
    // Anti-entropy out of the way (first round after 30 s): the copy must come by the outbox.
    let slow_ae = ("CALLVAULT_CLUSTER__ANTI_ENTROPY_SECS", "3600".to_owned());
    let mut a = member(
        "k9-a",
        "node-a",
        &[],
        &[("CALLVAULT_CLUSTER__TARGETS__node-b__BANDWIDTH_KBPS", "96".into()), slow_ae.clone()],
    );
    let mut b = member("k9-b", "node-b", &[url(&a)], &[slow_ae]);
    wait_until(Duration::from_secs(15), "membership", || alive_peers(&a) == 1 && alive_peers(&b) == 1);
    // A 5 s call is 160 kB of audio: 13 s at 96 kbit/s. Kill B in the middle.
    let s = call(a.sip_udp, &["--duration", "5"]);
    assert_eq!(s["established"], 1);
    let rec = a.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    let id = rec["id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(20), "the transfer under way", || {
        std::fs::metadata(b.dir.join("incoming").join(format!("{id}.part"))).is_ok_and(|m| m.len() > 20_000)
    });
    b.kill9();
    let part = std::fs::metadata(b.dir.join("incoming").join(format!("{id}.part"))).unwrap().len();
    assert!(part < 160_000, "killed mid-transfer ({part} bytes)");

    // Calls go on on A; its queue holds them (B is down). Then A dies too.
    short_calls(&a, 4);
    wait_until(Duration::from_secs(20), "the queue to hold every recording", || {
        let (_, v) = a.get("/api/v1/replication");
        v["targets"]["node-b"]["depth"].as_u64().unwrap_or(0) >= 9
    });
    a.kill9();
    let a = a.restart();
    let (_, v) = a.get("/api/v1/replication");
    assert!(v["targets"]["node-b"]["depth"].as_u64().unwrap() >= 9, "the queue survived kill -9: {v}");
    let b = b.restart();
    wait_until(Duration::from_secs(90), "the queue to drain", || outbox_empty(&a) && holdings(&b).len() == 5);
    assert_eq!(holdings(&a), holdings(&b));
    assert_eq!(served_sha(&b, &id), rec["audio"]["sha256"].as_str().unwrap(), "the resumed copy is whole");
    assert!(b.log().contains("received a verified copy"), "pushed by the outbox");
    assert!(a.log().contains("resuming an interrupted upload"), "the transfer resumed where the copy ended");
}

#[test]
fn a_partition_keeps_both_sides_recording_and_heals_to_the_same_set() {
    // A and B talk only through proxies that the test cuts.
    let (pa, pb) = (Proxy::start(), Proxy::start());
    let a = member("part-a", "node-a", &[pb.url()], &[("CALLVAULT_CLUSTER__ADVERTISE_URL", pa.url())]);
    pa.set_target(cluster_addr(&a));
    let b = member("part-b", "node-b", &[pa.url()], &[("CALLVAULT_CLUSTER__ADVERTISE_URL", pb.url())]);
    pb.set_target(cluster_addr(&b));
    wait_until(Duration::from_secs(15), "membership", || alive_peers(&a) == 1 && alive_peers(&b) == 1);

    pa.cut();
    pb.cut();
    wait_until(Duration::from_secs(10), "each side to see the other dead", || {
        alive_peers(&a) == 0 && alive_peers(&b) == 0
    });
    short_calls(&a, 3);
    short_calls(&b, 2);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(holdings(&a).len(), 3, "nothing crossed the partition");
    assert_eq!(holdings(&b).len(), 2);

    pa.heal();
    pb.heal();
    wait_until(Duration::from_secs(60), "convergence", || {
        let (ha, hb) = (holdings(&a), holdings(&b));
        ha.len() == 5 && ha == hb
    });
    for (id, sha) in holdings(&a) {
        assert_eq!(served_sha(&a, &id), sha);
        assert_eq!(served_sha(&b, &id), sha);
    }
}

fn cluster_addr(n: &Node) -> std::net::SocketAddr {
    let listen: Value = serde_json::from_slice(&std::fs::read(n.dir.join("listen.json")).unwrap()).unwrap();
    listen["cluster_listen"].as_str().unwrap().parse().unwrap()
}

/// `HH:MM-HH:MM` in UTC from `from` hours to `to` hours from now.
fn window(from: i64, to: i64) -> String {
    let now = time::OffsetDateTime::now_utc();
    let (a, b) = (now + time::Duration::hours(from), now + time::Duration::hours(to));
    format!("[\"{:02}:{:02}-{:02}:{:02}\"]", a.hour(), a.minute(), b.hour(), b.minute())
}

#[test]
fn a_scheduled_target_gets_metadata_at_once_and_audio_only_inside_its_window() {
    let a = member(
        "sched-a",
        "node-a",
        &[],
        &[
            ("CALLVAULT_CLUSTER__TARGETS__node-b__WINDOWS", window(6, 7)),
            ("CALLVAULT_CLUSTER__TARGETS__node-b__TIMEZONE", "UTC".into()),
        ],
    );
    let b = member("sched-b", "node-b", &[url(&a)], &[]);
    wait_until(Duration::from_secs(15), "membership", || alive_peers(&a) == 1 && alive_peers(&b) == 1);
    let s = short_calls(&a, 2);
    let rec = a.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    let id = rec["id"].as_str().unwrap().to_owned();
    // Metadata first: B lists the recordings at once and says where the audio is.
    wait_until(Duration::from_secs(15), "metadata on B", || b.recordings("").len() == 2);
    let (_, d) = b.get(&format!("/api/v1/recordings/{id}"));
    assert_eq!((d["audio_here"].clone(), d["audio_at"].clone()), (json!(false), json!("node-a")));
    // A download on B is served from A meanwhile.
    assert_eq!(served_sha(&b, &id), rec["audio"]["sha256"].as_str().unwrap());
    std::thread::sleep(Duration::from_secs(3));
    let (_, r) = a.get("/api/v1/replication");
    assert_eq!(r["targets"]["node-b"]["depth"], 2, "the audio waits outside the window: {r}");
    assert!(holdings(&b).is_empty());

    // The window is one that includes now: the audio flows.
    let a = a.restart_with(&[("CALLVAULT_CLUSTER__TARGETS__node-b__WINDOWS", window(-1, 2))]);
    wait_until(Duration::from_secs(30), "the audio inside the window", || holdings(&b).len() == 2 && outbox_empty(&a));
    assert_eq!(holdings(&a), holdings(&b));
}

#[test]
fn an_empty_node_backfills_and_a_deletion_made_while_a_node_was_away_stays_deleted() {
    let a = member("join-a", "node-a", &[], &[]);
    let mut b = member("join-b", "node-b", &[url(&a)], &[]);
    wait_until(Duration::from_secs(15), "membership", || alive_peers(&a) == 1);
    let s = call(a.sip_udp, &["--calls", "120", "--concurrency", "20", "--rate", "100", "--duration", "0.5"]);
    assert_eq!(s["established"], 120, "{s:#}");
    short_calls(&b, 5);
    wait_until(Duration::from_secs(90), "A and B in sync", || holdings(&a).len() == 125 && holdings(&b).len() == 125);

    // B goes away; a recording is deleted meanwhile.
    b.kill9();
    let victim = holdings(&a).keys().next().unwrap().clone();
    let (code, v) = http_json("DELETE", &a.url(&format!("/api/v1/recordings/{victim}")), None);
    assert_eq!(code, 200, "{v}");

    // A new, empty node joins and backfills everything but the deleted one.
    let c = member("join-c", "node-c", &[url(&a)], &[]);
    wait_until(Duration::from_secs(120), "C backfilled", || holdings(&c).len() == 124);
    // B comes back holding the deleted recording: it learns the deletion, nobody takes its copy.
    let b = b.restart();
    wait_until(Duration::from_secs(60), "B caught up", || holdings(&b).len() == 124);
    let (ha, hb, hc) = (holdings(&a), holdings(&b), holdings(&c));
    assert!(!ha.contains_key(&victim) && !hb.contains_key(&victim) && !hc.contains_key(&victim));
    assert_eq!(ha, hb);
    assert_eq!(ha, hc);
    let (code, _) = c.get(&format!("/api/v1/recordings/{victim}"));
    assert_eq!(code, 404, "not resurrected on the new node");
    assert!(c.metric("callvault_anti_entropy_pulled_total") >= 124.0);
}

#[test]
fn one_job_leader_the_preferred_one_and_another_takes_over_when_it_dies() {
    let mut a = member("lead-a", "node-a", &[], &[("CALLVAULT_CLUSTER__PRIORITY", "1".into())]);
    let b = member("lead-b", "node-b", &[url(&a)], &[("CALLVAULT_CLUSTER__PRIORITY", "2".into())]);
    let c = member("lead-c", "node-c", &[url(&a)], &[("CALLVAULT_CLUSTER__PRIORITY", "3".into())]);
    let leaders = |ns: &[&Node]| -> Vec<Value> { ns.iter().map(|n| view(n)["leader"].clone()).collect() };
    wait_until(Duration::from_secs(20), "agreement on A", || leaders(&[&a, &b, &c]).iter().all(|l| l == "node-a"));
    // While all can talk: one leader, the same everywhere, for a while.
    for _ in 0..15 {
        let views: Vec<Value> = [&a, &b, &c].iter().map(|n| view(n)).collect();
        assert!(views.iter().all(|v| v["leader"] == "node-a"), "{views:#?}");
        assert_eq!(views.iter().filter(|v| v["is_leader"] == true).count(), 1);
        std::thread::sleep(Duration::from_millis(200));
    }
    a.kill9();
    let killed = Instant::now();
    wait_until(Duration::from_secs(10), "B takes over", || leaders(&[&b, &c]).iter().all(|l| l == "node-b"));
    // Takeover bound: dead_after (1.5 s) + a heartbeat (0.3 s), plus the test's polling.
    assert!(killed.elapsed() < Duration::from_secs(5), "took {:?}", killed.elapsed());
    assert_eq!(b.metric("callvault_cluster_is_leader"), 1.0);
    assert_eq!(c.metric("callvault_cluster_is_leader"), 0.0);
}

#[test]
fn settings_reach_every_node_and_the_leader_purges_by_retention_everywhere() {
    let a = member("set-a", "node-a", &[], &[]);
    let b = member("set-b", "node-b", &[url(&a)], &[]);
    let c = member("set-c", "node-c", &[url(&a)], &[]);
    for n in [&a, &b, &c] {
        wait_until(Duration::from_secs(15), "membership", || alive_peers(n) == 2);
    }
    let put = |n: &Node, key: &str, value: Value| {
        let url = n.url(&format!("/api/v1/settings/{key}"));
        let (code, v) = http_json("PUT", &url, Some(json!({ "value": value })));
        assert_eq!(code, 200, "{v}");
    };
    let get = |n: &Node, key: &str| -> Value {
        let (_, v) = n.get("/api/v1/settings");
        v["settings"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == key)
            .map(|s| s["value"].clone())
            .unwrap_or(Value::Null)
    };
    put(&b, "sources.allowed", json!(["127.0.0.0/8"]));
    wait_until(Duration::from_secs(60), "the setting everywhere", || {
        [&a, &c].iter().all(|n| get(n, "sources.allowed") == json!(["127.0.0.0/8"]))
    });
    // Concurrent changes on two nodes: every node ends with the same winner.
    put(&a, "retention.days", json!(400));
    put(&c, "retention.days", json!(500));
    wait_until(Duration::from_secs(30), "convergence", || {
        let vals: Vec<Value> = [&a, &b, &c].iter().map(|n| get(n, "retention.days")).collect();
        vals.iter().all(|v| *v == vals[0]) && !vals[0].is_null()
    });
    let (code, v) = http_json("PUT", &a.url("/api/v1/settings/retention.days"), Some(json!({ "value": "forever" })));
    assert_eq!(code, 400, "bad values are refused: {v}");

    // Old recordings (made 30 days ago on A) are purged everywhere once retention says 10 days.
    short_calls(&a, 1);
    wait_until(Duration::from_secs(30), "replicated", || [&b, &c].iter().all(|n| holdings(n).len() == 1));
    let old = json!({
        "id": model_id_days_ago(30),
        "node_id": "node-a",
        "source": "siprec",
        "state": "completed",
        "state_history": [{"state": "completed", "at": "2026-01-01T00:00:00Z", "reason": "BYE"}],
        "started_at": days_ago_rfc3339(30),
        "ended_at": days_ago_rfc3339(30),
        "duration_ms": 1000, "call_ids": ["old"], "source_addr": "udp:127.0.0.1:5070",
        "participants": [], "streams": []
    });
    for n in [&a, &b, &c] {
        signed_put_meta(n, &old);
    }
    assert!([&a, &b, &c]
        .iter()
        .all(|n| n.get(&format!("/api/v1/recordings/{}", old["id"].as_str().unwrap())).0 == 200));
    put(&b, "retention.days", json!(10));
    wait_until(Duration::from_secs(30), "the purge everywhere", || {
        [&a, &b, &c].iter().all(|n| n.get(&format!("/api/v1/recordings/{}", old["id"].as_str().unwrap())).0 == 404)
    });
    for n in [&a, &b, &c] {
        assert_eq!(holdings(n).len(), 1, "the recent recording stays");
    }
}

fn days_ago_rfc3339(days: i64) -> String {
    (time::OffsetDateTime::now_utc() - time::Duration::days(days))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

fn model_id_days_ago(days: i64) -> String {
    model::RecordingId::new(time::OffsetDateTime::now_utc() - time::Duration::days(days)).to_string()
}

/// A signed request to a node's cluster API, as a peer would send it.
fn signed(n: &Node, method: &str, path: &str, body: &[u8], secret: &str) -> (u16, Value) {
    signed_as(n, method, path, body, secret, &cluster::auth::content_sha256(body))
}

/// [`signed`] declaring `sha` as the body's digest.
fn signed_as(n: &Node, method: &str, path: &str, body: &[u8], secret: &str, sha: &str) -> (u16, Value) {
    let time_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let sha = sha.to_owned();
    let s = cluster::auth::Signed { method, path_and_query: path, node: "test-peer", time_ms, content_sha256: &sha };
    let sig = cluster::auth::sign(secret.as_bytes(), &s);
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
    let url = format!("{}{path}", url(n));
    let req = |r: ureq::RequestBuilder<ureq::typestate::WithBody>| {
        r.header(cluster::auth::HEADER_NODE, "test-peer")
            .header(cluster::auth::HEADER_TIME, time_ms.to_string())
            .header(cluster::auth::HEADER_CONTENT, sha.clone())
            .header(cluster::auth::HEADER_SIGNATURE, sig.clone())
            .header("content-type", "application/json")
            .send(body)
    };
    let mut resp = match method {
        "PUT" => req(agent.put(&url)),
        _ => req(agent.post(&url)),
    }
    .unwrap();
    let code = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (code, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn signed_put_meta(n: &Node, meta: &Value) {
    let path = format!("/cluster/v1/recordings/{}/meta", meta["id"].as_str().unwrap());
    let (code, v) = signed(n, "PUT", &path, meta.to_string().as_bytes(), SECRET);
    assert_eq!(code, 200, "{v}");
}

#[test]
fn a_wrong_secret_is_refused_a_lying_peer_is_rejected_and_scrub_repairs_a_flipped_byte() {
    let a = member("trust-a", "node-a", &[], &[]);
    let b = member("trust-b", "node-b", &[url(&a)], &[]);
    wait_until(Duration::from_secs(15), "membership", || alive_peers(&a) == 1);
    // A node with the wrong secret is refused, logged, never served.
    let intruder = member("trust-x", "node-x", &[url(&a)], &[("CALLVAULT_CLUSTER__SECRET", "not-the-secret".into())]);
    wait_until(Duration::from_secs(10), "refusals counted", || a.metric("callvault_cluster_auth_refused_total") >= 2.0);
    assert!(a.log().contains("refused a cluster request"), "logged");
    assert_eq!(alive_peers(&intruder), 0, "the intruder sees nobody");
    assert_eq!(alive_peers(&a), 1, "A does not count the intruder");
    let (code, _) = signed(&a, "POST", "/cluster/v1/versions", b"[]", "not-the-secret");
    assert_eq!(code, 401);
    // Only audio chunks may travel without a body digest.
    let (code, _) = signed_as(&a, "POST", "/cluster/v1/versions", b"[]", SECRET, cluster::auth::UNSIGNED_PAYLOAD);
    assert_eq!(code, 401, "an unsigned body is refused outside chunk uploads");
    let (code, _) =
        signed_as(&a, "POST", "/cluster/v1/versions", b"[1]", SECRET, &cluster::auth::content_sha256(b"[]"));
    assert_eq!(code, 401, "a body that differs from its declared digest is refused");

    let s = short_calls(&a, 1);
    let rec = a.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    let id = rec["id"].as_str().unwrap().to_owned();
    let sha = rec["audio"]["sha256"].as_str().unwrap().to_owned();
    let total = rec["audio"]["bytes"].as_u64().unwrap();
    // A peer that sends bytes that do not hash to the recording's digest is rejected.
    let c = member("trust-c", "node-c", &[], &[]);
    signed_put_meta(&c, &rec);
    let junk = vec![0x55u8; total as usize];
    let path = format!("/cluster/v1/recordings/{id}/upload?offset=0&total={total}&sha256={sha}");
    let (code, v) = signed(&c, "PUT", &path, &junk, SECRET);
    assert_eq!(code, 422, "{v}");
    assert_eq!(c.metric("callvault_replication_rejected_copies_total"), 1.0);
    assert!(holdings(&c).is_empty(), "nothing stored from the liar");

    // Scrub: flip a byte of B's copy; B finds it and repairs it from A.
    wait_until(Duration::from_secs(30), "B holds the copy", || holdings(&b).contains_key(&id));
    let path = b.dir.join(rec["audio"]["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let (code, v) = b.post("/api/v1/cluster/scrub", None);
    assert_eq!(code, 200, "{v}");
    assert_eq!((v["corrupt"].as_u64(), v["repaired"].as_u64()), (Some(1), Some(1)), "{v}");
    assert_eq!(store::sha256_file(&path).unwrap().0, sha, "repaired in place");
    assert!(b.log().contains("does not match its checksum"));
    assert_eq!(b.metric("callvault_scrub_repaired_total"), 1.0);
}

/// A CA and certificates for loopback nodes, made with the openssl CLI.
pub(crate) fn make_pki(dir: &std::path::Path, names: &[&str]) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=callvault-test-ca",
    ]);
    for n in names {
        issue_cert(dir, n);
    }
}

/// A certificate and key `<name>.pem`/`<name>.key` from the CA in `dir`.
fn issue_cert(dir: &std::path::Path, n: &str) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    {
        let ext = dir.join(format!("{n}.ext"));
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n").unwrap();
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{n}.key"),
            "-out",
            &format!("{n}.csr"),
            "-subj",
            &format!("/CN={n}"),
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            &format!("{n}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{n}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{n}.ext"),
        ]);
    }
}

#[test]
fn tls_between_sites_with_mutual_certificates() {
    let pki = crate::harness::temp_dir("pki");
    make_pki(&pki, &["node-a", "node-b"]);
    let other = crate::harness::temp_dir("pki-other");
    make_pki(&other, &["node-x"]);
    let tls = |dir: &std::path::Path, n: &str| -> Vec<(&'static str, String)> {
        vec![
            ("CALLVAULT_CLUSTER__TLS_CERT", dir.join(format!("{n}.pem")).display().to_string()),
            ("CALLVAULT_CLUSTER__TLS_KEY", dir.join(format!("{n}.key")).display().to_string()),
            ("CALLVAULT_CLUSTER__TLS_CA", dir.join("ca.pem").display().to_string()),
            ("CALLVAULT_CLUSTER__TLS_CLIENT_AUTH", "true".into()),
        ]
    };
    let a = member("tls-a", "node-a", &[], &tls(&pki, "node-a"));
    assert!(url(&a).starts_with("https://"), "{}", url(&a));
    let b = member("tls-b", "node-b", &[url(&a)], &tls(&pki, "node-b"));
    wait_until(Duration::from_secs(15), "membership over TLS", || alive_peers(&a) == 1 && alive_peers(&b) == 1);
    let s = short_calls(&a, 2);
    let rec = a.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    wait_until(Duration::from_secs(30), "verified copies over TLS", || holdings(&b).len() == 2);
    assert_eq!(holdings(&a), holdings(&b));
    assert_eq!(served_sha(&b, rec["id"].as_str().unwrap()), rec["audio"]["sha256"].as_str().unwrap());

    // Plain HTTP to the TLS port gets nothing; a certificate from another CA fails the handshake.
    let plain = url(&a).replace("https://", "http://");
    assert!(ureq::get(&format!("{plain}/cluster/v1/buckets")).call().is_err());
    let x = member("tls-x", "node-x", &[url(&a)], &tls(&other, "node-x"));
    wait_until(Duration::from_secs(10), "the foreign certificate refused", || a.log().contains("TLS handshake failed"));
    assert_eq!(alive_peers(&x), 0, "a node with a foreign certificate sees nobody");
    assert_eq!(alive_peers(&a), 1);
}

#[test]
fn tls_certificates_are_reloaded_on_sighup_without_a_restart() {
    let pki = crate::harness::temp_dir("pki-reload");
    make_pki(&pki, &["node-a", "node-b", "node-a-renewed"]);
    // Node A reads its certificate from files an operator replaces in place.
    let (live_cert, live_key) = (pki.join("a-live.pem"), pki.join("a-live.key"));
    std::fs::copy(pki.join("node-a.pem"), &live_cert).unwrap();
    std::fs::copy(pki.join("node-a.key"), &live_key).unwrap();
    let tls = |cert: &std::path::Path, key: &std::path::Path| -> Vec<(&'static str, String)> {
        vec![
            ("CALLVAULT_CLUSTER__TLS_CERT", cert.display().to_string()),
            ("CALLVAULT_CLUSTER__TLS_KEY", key.display().to_string()),
            ("CALLVAULT_CLUSTER__TLS_CA", pki.join("ca.pem").display().to_string()),
            ("CALLVAULT_CLUSTER__TLS_CLIENT_AUTH", "true".into()),
        ]
    };
    let a = member("tls-reload-a", "node-a", &[], &tls(&live_cert, &live_key));
    let b = member("tls-reload-b", "node-b", &[url(&a)], &tls(&pki.join("node-b.pem"), &pki.join("node-b.key")));
    wait_until(Duration::from_secs(15), "membership over TLS", || alive_peers(&a) == 1 && alive_peers(&b) == 1);
    // The certificate A presents, as a peer (B's certificate) sees it.
    let presented = || -> String {
        let out = std::process::Command::new("openssl")
            .args(["s_client", "-connect", &cluster_addr(&a).to_string(), "-CAfile", "ca.pem"])
            .args(["-cert", "node-b.pem", "-key", "node-b.key"])
            .current_dir(&pki)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines().find(|l| l.starts_with("subject=")).unwrap_or_default().to_owned()
    };
    assert!(presented().ends_with("CN = node-a"), "{}", presented());

    let hup = |n: &Node| {
        assert!(std::process::Command::new("kill").arg("-HUP").arg(n.pid().to_string()).status().unwrap().success())
    };
    std::fs::copy(pki.join("node-a-renewed.pem"), &live_cert).unwrap();
    std::fs::copy(pki.join("node-a-renewed.key"), &live_key).unwrap();
    hup(&a);
    wait_until(Duration::from_secs(10), "the reload", || {
        a.log().contains("cluster TLS certificate, key and CA reloaded")
    });
    assert!(presented().ends_with("CN = node-a-renewed"), "{}", presented());
    let s = short_calls(&a, 1);
    a.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    wait_until(Duration::from_secs(30), "a copy over the renewed certificate", || holdings(&b).len() == 1);

    // A broken file changes nothing: the renewed certificate stays in use.
    std::fs::write(&live_cert, "not a certificate").unwrap();
    hup(&a);
    wait_until(Duration::from_secs(10), "the refusal", || a.log().contains("cluster TLS reload refused"));
    assert!(presented().ends_with("CN = node-a-renewed"), "{}", presented());
    assert_eq!(alive_peers(&b), 1);
    let _ = std::fs::remove_dir_all(pki);
}

/// Anti-entropy pulls cross the same thin link pushes do: a node joining
/// late, with a bandwidth cap configured for the peer it backfills from,
/// reads the audio at that pace (the waits are counted) and still ends up
/// with every copy, verified.
#[test]
fn anti_entropy_pulls_respect_the_bandwidth_cap_of_the_peer() {
    let a = member("capped-a", "node-a", &[], &[]);
    let s = call(a.sip_udp, &["--calls", "8", "--concurrency", "8", "--rate", "50", "--duration", "2"]);
    assert_eq!(s["established"], 8, "{s:#}");
    wait_until(Duration::from_secs(20), "A archived", || holdings(&a).len() == 8);
    // 800 kbit/s = 100 kB/s against ~0.5 MB of audio.
    let c = member(
        "capped-c",
        "node-c",
        &[url(&a)],
        &[("CALLVAULT_CLUSTER__TARGETS__node-a__BANDWIDTH_KBPS", "800".into())],
    );
    wait_until(Duration::from_secs(90), "C backfilled", || holdings(&c).len() == 8);
    assert_eq!(holdings(&a), holdings(&c));
    assert!(c.metric("callvault_anti_entropy_throttled_ms_total") > 0.0, "the pulls waited for the cap");
}

/// Users are cluster settings: one created on A signs in on B; a search
/// on B finds a call recorded on A; B's live-calls view shows A's call in
/// progress; a user created with the CLI on B reaches A.
#[test]
fn users_search_and_live_calls_span_the_cluster() {
    let a = member("people-a", "node-a", &[], &[]);
    let b = member("people-b", "node-b", &[url(&a)], &[]);
    for n in [&a, &b] {
        wait_until(Duration::from_secs(15), "membership", || alive_peers(n) == 1);
    }
    let (code, v) =
        a.put("/api/v1/users/sup", json!({ "role": "supervisor", "scope": ["+1555*"], "password": "cluster pass 1" }));
    assert_eq!(code, 200, "{v}");
    let sign_in_on = |n: &Node| {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let body = json!({ "user": "sup", "password": "cluster pass 1" }).to_string();
        let mut r =
            agent.post(&n.url("/api/v1/session")).header("content-type", "application/json").send(body).unwrap();
        let cookie = r.headers().get("set-cookie").map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned());
        let _ = r.body_mut().read_to_string();
        (r.status().as_u16(), cookie)
    };
    let created = Instant::now();
    wait_until(Duration::from_secs(60), "the user reaches B", || sign_in_on(&b).0 == 200);
    eprintln!("user usable on B {:?} after its creation on A", created.elapsed());
    let (_, cookie) = sign_in_on(&b);
    let cookie = cookie.unwrap();
    let get_as = |n: &Node, path: &str| -> (u16, Value) {
        let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        let mut r = agent.get(&n.url(path)).header("cookie", &cookie).call().unwrap();
        let text = r.body_mut().read_to_string().unwrap_or_default();
        (r.status().as_u16(), serde_json::from_str(&text).unwrap_or(Value::String(text)))
    };

    // A call in progress on A shows on B's live view (and not in B's own).
    let client = call_bg(a.sip_udp, &["--duration", "6"]);
    wait_until(Duration::from_secs(10), "B lists A's live call", || {
        let (code, v) = get_as(&b, "/api/v1/recordings/active?cluster=1");
        code == 200 && v["recordings"].as_array().unwrap().iter().any(|r| r["node_id"] == "node-a")
    });
    let (_, local) = get_as(&b, "/api/v1/recordings/active");
    assert!(local["recordings"].as_array().unwrap().is_empty(), "B itself records nothing: {local}");
    let summary = finish_bg(client);

    // Finished, it is found by a search on B (replicated), in the user's scope.
    let call_id = summary["calls"][0]["call_ids"][0].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "B finds A's recording", || {
        let (code, v) = get_as(&b, &format!("/api/v1/recordings?id={call_id}"));
        code == 200 && v["total"] == 1 && v["recordings"][0]["node_id"] == "node-a"
    });

    // A user made with the CLI on B's data directory reaches A.
    let out = std::process::Command::new(crate::harness::BIN)
        .args(["users", "add", "cli-made", "--role", "auditor", "--data-dir"])
        .arg(&b.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_until(Duration::from_secs(60), "the CLI's user reaches A", || a.get("/api/v1/users/cli-made").0 == 200);

    // A's audit trail is copied to B, checked against its chain: an auditor
    // on B finds what the supervisor did on A.
    wait_until(Duration::from_secs(30), "A's trail on B", || {
        let (_, v) = b.get("/api/v1/audit?node=node-a&actor=admin&action=user_change");
        v["entries"].as_array().is_some_and(|e| e.iter().any(|e| e["target"] == "sup"))
    });
    let (_, v) = b.get("/api/v1/audit/verify?node=node-a");
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["entries"].as_i64().unwrap() >= 3, "{v}");
    assert!(b.metric("callvault_audit_copied_total") >= 3.0);
    assert_eq!(b.metric("callvault_audit_chain_breaks_total"), 0.0);
}
