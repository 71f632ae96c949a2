//! What happens when things go wrong: a killed server, silent media, an
//! administrator ending a call, refusals, drain mode.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{call, call_bg, finish_bg, Node, BIN};

fn wait_active(node: &Node, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, v) = node.get("/api/v1/recordings/active");
        assert_eq!(code, 200);
        let recs = v["recordings"].as_array().unwrap().clone();
        if recs.len() >= n {
            return recs;
        }
        assert!(Instant::now() < deadline, "only {} active", recs.len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_9_mid_call_keeps_the_audio_and_restart_marks_it_interrupted() {
    let mut node = Node::start("kill9");
    let client = call_bg(node.sip_udp, &["--duration", "6", "--tone-a", "440", "--tone-b", "1000"]);
    let active = wait_active(&node, 1);
    let id = active[0]["id"].as_str().unwrap().to_owned();
    // Let 3 s of audio flow, then pull the plug.
    std::thread::sleep(Duration::from_millis(3000));
    let killed_at = Instant::now();
    node.kill9();
    let sent_before_kill_ms = 3000;
    // The spool holds the audio written so far, as a WAV that is already playable.
    let spooled = node.dir.join("spool").join(format!("{id}.wav"));
    assert!(spooled.exists(), "audio spooled during the call");
    let summary = finish_bg(client);
    assert_eq!(summary["established"], 1);

    let node = node.restart();
    assert!(killed_at.elapsed() > Duration::from_millis(100));
    let (code, rec) = node.get(&format!("/api/v1/recordings/{id}"));
    assert_eq!(code, 200, "{rec}");
    assert_eq!(rec["state"], "interrupted");
    assert!(rec["state_history"].as_array().unwrap().last().unwrap()["reason"].as_str().unwrap().contains("restarted"));
    let d = rec["duration_ms"].as_u64().unwrap();
    eprintln!("kill -9 after {sent_before_kill_ms} ms of media: {d} ms kept");
    assert!(
        d + 1000 >= sent_before_kill_ms && d <= sent_before_kill_ms + 600,
        "kept {d} ms of ~{sent_before_kill_ms} ms sent"
    );
    let wav = node.audio(&rec);
    wav.assert_tone(0, 440.0, 1000.0, 200, d - 100);
    wav.assert_tone(1, 1000.0, 440.0, 200, d - 100);
    assert!(node.recordings("?state=active").is_empty(), "nothing stays active after a restart");
    assert!(!spooled.exists());
    assert!(node.log().contains("finishing recording left by the previous run"));
}

#[test]
fn silent_media_ends_the_call_after_the_timeout() {
    let node = Node::start_with("quiet", &[("CALLVAULT_MEDIA__MEDIA_TIMEOUT_SECS", "1")]);
    // Every packet dropped: the recorder hears nothing.
    let t0 = Instant::now();
    let s = call(node.sip_udp, &["--duration", "20", "--loss", "1.0"]);
    assert!(t0.elapsed() < Duration::from_secs(10), "the recorder hung up well before the 20 s call ended");
    assert_eq!(s["calls"][0]["ended_by_recorder"], true, "{s:#}");
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["state_history"][1]["reason"], "media timeout");
    assert_eq!(node.metric("callvault_sip_byes_sent_total"), 1.0);
}

#[test]
fn administrator_completes_a_call_online_and_offline() {
    let mut node = Node::start("admin");
    // Online: the running node sends BYE.
    let client = call_bg(node.sip_udp, &["--duration", "30"]);
    let id = wait_active(&node, 1)[0]["id"].as_str().unwrap().to_owned();
    // Without a token the running node refuses the command line.
    let out = std::process::Command::new(BIN).args(["complete", &id, "--data-dir"]).arg(&node.dir).output().unwrap();
    assert!(!out.status.success());
    let out = std::process::Command::new(BIN)
        .args(["complete", &id, "--data-dir"])
        .arg(&node.dir)
        .env("CALLVAULT_TOKEN", &node.token)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary = finish_bg(client);
    assert_eq!(summary["calls"][0]["ended_by_recorder"], true);
    let rec = node.finished(summary["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["state_history"][1]["reason"], "completed by administrator");
    let (code, _) = node.post(&format!("/api/v1/recordings/{id}/complete"), None);
    assert_eq!(code, 404, "no longer active");

    // Offline: the node died; the administrator completes before restarting it.
    let client = call_bg(node.sip_udp, &["--duration", "4"]);
    let id = wait_active(&node, 1)[0]["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    node.kill9();
    let out = std::process::Command::new(BIN).args(["complete", &id, "--data-dir"]).arg(&node.dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = std::process::Command::new(BIN).args(["complete", &id, "--data-dir"]).arg(&node.dir).output().unwrap();
    assert!(!again.status.success(), "completing twice is refused");
    finish_bg(client);
    let node = node.restart();
    let (_, rec) = node.get(&format!("/api/v1/recordings/{id}"));
    assert_eq!(rec["state"], "completed");
    assert!(rec["state_history"][1]["reason"].as_str().unwrap().contains("administrator"));
    assert!(rec["duration_ms"].as_u64().unwrap() >= 1000, "audio up to the crash kept");
}

#[test]
fn refusals_use_the_right_codes_and_drain_mode_finishes_calls() {
    let node = Node::start_with("refuse", &[("CALLVAULT_SIP__MAX_CALLS", "1")]);
    let long = call_bg(node.sip_udp, &["--duration", "4"]);
    wait_active(&node, 1);
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(s["failed"], 1);
    assert_eq!(s["calls"][0]["status"], 503);
    assert_eq!(s["calls"][0]["reason"], "Call limit reached");
    assert_eq!(node.metric("callvault_invites_rejected_total{code=\"503\",reason=\"call_limit\"}"), 1.0);

    // Drain: new calls refused, the call in progress finishes normally.
    let (code, _) = node.post("/api/v1/drain", Some(json!({ "draining": true })));
    assert_eq!(code, 200);
    let (code, ready) = node.get("/health/ready");
    assert_eq!(code, 503);
    assert_eq!(ready["reason"], "Draining");
    let (code, _) = node.get("/health/live");
    assert_eq!(code, 200);
    let first = finish_bg(long);
    assert_eq!(first["established"], 1);
    let rec = node.finished(first["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["state"], "completed");
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!((s["calls"][0]["status"].as_u64(), s["calls"][0]["reason"].as_str()), (Some(503), Some("Draining")));
    node.post("/api/v1/drain", Some(json!({ "draining": false })));
    let (code, _) = node.get("/health/ready");
    assert_eq!(code, 200);

    // A source outside the allow-list gets 403 (no failover), not 503.
    let strict = Node::start_with("allow", &[("CALLVAULT_SIP__ALLOWED_SOURCES", "[10.0.0.0/8]")]);
    let s = call(strict.sip_udp, &["--duration", "1"]);
    assert_eq!(s["calls"][0]["status"], 403);
    assert_eq!(s["calls"][0]["reason"], "Source not allowed");
}

#[test]
fn graceful_stop_interrupts_calls_and_loses_nothing() {
    let mut node = Node::start("sigterm");
    let client = call_bg(node.sip_udp, &["--duration", "20"]);
    let id = wait_active(&node, 1)[0]["id"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(1500));
    node.stop();
    let summary = finish_bg(client);
    assert_eq!(summary["calls"][0]["ended_by_recorder"], true, "the source got a BYE");
    let node = node.restart();
    let (_, rec) = node.get(&format!("/api/v1/recordings/{id}"));
    assert_eq!(rec["state"], "interrupted");
    assert_eq!(rec["state_history"][1]["reason"], "node shutdown");
    let d = rec["duration_ms"].as_u64().unwrap();
    assert!((1400..=2500).contains(&d), "all audio up to the stop is kept: {d} ms");
    assert!(
        node.log().lines().all(|l| !l.contains("finishing recording left by the previous run")),
        "nothing left to recover"
    );
}

#[test]
fn cli_lists_shows_and_exports_recordings() {
    let node = Node::start("cli");
    let s = call(node.sip_udp, &["--duration", "1", "--caller", "+4420794600", "--callee", "+3314000000"]);
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    let id = rec["id"].as_str().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(BIN).args(args).arg("--data-dir").arg(&node.dir).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = run(&["recordings", "list"]);
    assert!(table.contains(id) && table.contains("+4420794600 -> +3314000000"), "{table}");
    let json_lines = run(&["recordings", "list", "--json", "--party", "44207"]);
    assert_eq!(json_lines.lines().count(), 1);
    assert!(run(&["recordings", "list", "--json", "--party", "nobody"]).is_empty());
    let shown: Value = serde_json::from_str(&run(&["recordings", "show", id])).unwrap();
    assert_eq!(shown["id"], id);
    let out = node.dir.join("export.wav");
    run(&["recordings", "export", id, "--out", out.to_str().unwrap(), "--metadata"]);
    assert_eq!(store::sha256_file(&out).unwrap().0, rec["audio"]["sha256"].as_str().unwrap());
    assert!(out.with_extension("json").exists());
}

#[test]
fn audio_write_failure_fails_the_recording_keeps_its_audio_and_refuses_new_calls() {
    // Files may not grow past 1 MB: a stereo 8 kHz call hits that after
    // ~31 s (the index and its write-ahead log stay below it). The write
    // fails with EFBIG, which takes the same path as a full disk.
    let mut node = Node::start_wrapped(
        "efbig",
        &[("CALLVAULT_STORAGE__PROBE_INTERVAL_SECS", "3600")],
        &["prlimit", "--fsize=1000000", "--"],
    );
    let s = call(node.sip_udp, &["--duration", "40"]);
    assert_eq!(s["calls"][0]["ended_by_recorder"], true, "the recorder hung up: {s:#}");
    // Wait on the metrics (not audited), then read the recording once: every
    // audited API read grows the index's write-ahead log, which the same
    // file-size limit holds.
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.metric("callvault_recordings_ended_total{state=\"failed\",reason=\"storage_failure\"}") < 1.0 {
        assert!(Instant::now() < deadline, "the recording never ended failed; log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["state"], "failed");
    let reason = rec["state_history"][1]["reason"].as_str().unwrap();
    assert!(reason.starts_with("storage failure"), "{reason}");
    let d = rec["duration_ms"].as_u64().unwrap();
    assert!((29_000..=31_300).contains(&d), "audio written before the failure is kept: {d} ms");
    assert!(node.alive(), "a write failure must not kill the recorder");
    // Storage is now known bad: new calls go elsewhere (503), readiness says why.
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(
        (s["calls"][0]["status"].as_u64(), s["calls"][0]["reason"].as_str()),
        (Some(503), Some("Storage unavailable"))
    );
    let (code, ready) = node.get("/health/ready");
    assert_eq!((code, ready["reason"].as_str()), (503, Some("Storage unavailable")));
    assert_eq!(node.metric("callvault_storage_ok"), 0.0);
}

#[test]
fn too_little_free_space_refuses_calls_before_they_start() {
    let node = Node::start_with("nospace", &[("CALLVAULT_STORAGE__MIN_FREE_MIB", "999999999")]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.metric("callvault_storage_ok") != 0.0 {
        assert!(Instant::now() < deadline, "probe did not flag the disk");
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(s["calls"][0]["status"], 503);
    let (_, status) = node.get("/api/v1/status");
    assert!(status["storage_reason"].as_str().unwrap().contains("MiB free"), "{status}");
    let (code, _) = node.get("/health/live");
    assert_eq!(code, 200);
}

#[test]
fn an_index_outage_delays_no_answer_and_is_caught_up() {
    use sqlx::Connection;
    let node = Node::start("index-outage");
    // Another writer holds SQLite's write lock: every index write of the
    // node waits its 5 s busy timeout and fails.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("sqlite://{}", node.dir.join("callvault.db").display());
    let mut blocker = rt.block_on(sqlx::SqliteConnection::connect(&url)).unwrap();
    rt.block_on(sqlx::query("BEGIN EXCLUSIVE").execute(&mut blocker)).unwrap();

    // Calls 0.5 s apart: each INVITE arrives while the index is stuck on
    // the one before, and is still answered (the answer waits for the
    // spool, never for the database).
    let s = call(node.sip_udp, &["--calls", "3", "--concurrency", "3", "--rate", "2", "--duration", "1"]);
    assert_eq!(s["established"], 3, "{s:#}");
    let setup_max = s["calls"].as_array().unwrap().iter().map(|c| c["setup_ms"].as_f64().unwrap()).fold(0.0, f64::max);
    assert!(setup_max < 4000.0, "an answer waited for the database: {setup_max} ms");

    // The finished recordings wait, visibly, for the index.
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.metric("callvault_recordings_unarchived") < 3.0 {
        assert!(Instant::now() < deadline, "backlog not visible; log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // (Read beside the blocker: searching through the API is refused while
    // the audit trail cannot be written.)
    let mut reader = rt.block_on(sqlx::SqliteConnection::connect(&url)).unwrap();
    let final_rows: i64 = rt
        .block_on(sqlx::query_scalar("SELECT COUNT(*) FROM recordings WHERE state <> 'active'").fetch_one(&mut reader))
        .unwrap();
    assert_eq!(final_rows, 0, "nothing final indexed yet");

    // The database comes back: every recording is indexed, none lost.
    rt.block_on(sqlx::query("ROLLBACK").execute(&mut blocker)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = node.recordings("?state=completed").len();
        if done == 3 && node.metric("callvault_recordings_unarchived") == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{done} of 3 indexed; log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A call that ended while the index was down waits in the spool with its
/// real end: killed and restarted, the node archives it `completed` with
/// its reason, not `interrupted`.
#[test]
fn a_finished_call_waiting_for_the_index_keeps_its_end_across_kill_9() {
    use sqlx::Connection;
    let mut node = Node::start("index-outage-kill");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let url = format!("sqlite://{}", node.dir.join("callvault.db").display());
    let mut blocker = rt.block_on(sqlx::SqliteConnection::connect(&url)).unwrap();
    rt.block_on(sqlx::query("BEGIN EXCLUSIVE").execute(&mut blocker)).unwrap();

    let s = call(node.sip_udp, &["--calls", "2", "--concurrency", "2", "--duration", "1"]);
    assert_eq!(s["established"], 2, "{s:#}");
    // The archive gives up on the locked index and writes each end to the spool.
    let spool = node.dir.join("spool");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ended = std::fs::read_dir(&spool)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter(|e| std::fs::read_to_string(e.path()).unwrap_or_default().contains("\"state\": \"completed\""))
            .count();
        if ended == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "ends not spooled ({ended} of 2); log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    node.kill9();
    rt.block_on(sqlx::query("ROLLBACK").execute(&mut blocker)).unwrap();
    drop(blocker);

    let node = node.restart();
    let done = node.recordings("?state=completed");
    assert_eq!(done.len(), 2, "{done:#?}\nlog:\n{}", node.log());
    for r in &done {
        let last = r["state_history"].as_array().unwrap().last().unwrap();
        assert_eq!(last["reason"], "BYE from recording source", "{r:#}");
        assert!(r["audio"]["sha256"].is_string(), "{r:#}");
    }
    assert!(node.recordings("?state=interrupted").is_empty());
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop: a
/// disk that really fills up (ENOSPC). Mounting needs root, which the test
/// script has (it installs packages and builds a chroot too).
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn new(name: &str, size: &str) -> SmallDisk {
        let dir = crate::harness::temp_dir(name);
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "mounting a tmpfs failed: this test needs root (scripts/test.sh runs as root or with sudo)");
        SmallDisk(dir)
    }

    /// Fills the disk, then frees `leave` bytes.
    fn fill_leaving(&self, leave: u64) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let chunk = vec![0x55u8; 16 * 1024];
        while f.write_all(&chunk).and_then(|_| f.sync_data()).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(leave)).unwrap();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_recording_that_failed_on_a_full_disk_stays_failed_with_its_reason_across_kill_9() {
    let disk = SmallDisk::new("fulldisk", "2m");
    let mut node = Node::start_in(
        disk.0.clone(),
        &[("CALLVAULT_STORAGE__MIN_FREE_MIB", "0"), ("CALLVAULT_STORAGE__PROBE_INTERVAL_SECS", "3600")],
    );
    let reserve = disk.0.join("spool/.reserve");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reserve.exists() {
        assert!(Instant::now() < deadline, "the spool reserve was not made");
        std::thread::sleep(Duration::from_millis(50));
    }
    // About 3 s of stereo audio fit; the call lasts 8.
    // (The index's write-ahead log takes some of it too.)
    let filler = disk.fill_leaving(160 * 1024);
    let s = call(node.sip_udp, &["--duration", "8"]);
    assert_eq!(s["calls"][0]["ended_by_recorder"], true, "the recorder hung up on the full disk: {s:#}");
    let call_id = s["calls"][0]["call_ids"][0].as_str().unwrap().to_owned();
    // The final metadata went to the spool through the reserve.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reserve.exists() {
        assert!(Instant::now() < deadline, "the reserve was never used");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    node.kill9();
    // The operator makes room and starts the node again.
    std::fs::remove_file(filler).unwrap();
    let node = node.restart();
    let rec = node.finished(&call_id);
    assert_eq!(rec["state"], "failed", "{rec:#}");
    let reason = rec["state_history"].as_array().unwrap().last().unwrap()["reason"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("storage failure") && reason.contains("No space left"), "{reason}");
    assert!(rec["duration_ms"].as_u64().unwrap() >= 1000, "the audio that fitted is kept: {rec:#}");
    // Space is back: the reserve is made again at the next probe (start).
    assert!(reserve.exists());
    drop(node);
}
