//! Running the node like a well-kept daemon: SIGHUP reloads, stray
//! environment variables, `config check`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{call, call_bg, finish_bg, Node, BIN};

fn hup(node: &Node) {
    assert!(Command::new("kill").arg("-HUP").arg(node.pid().to_string()).status().unwrap().success());
}

fn wait_log(node: &Node, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log().contains(needle) {
        assert!(Instant::now() < deadline, "log never said {needle:?}:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_reloads_the_allow_list_and_keeps_calls_recording_and_a_bad_file_changes_nothing() {
    let dir = crate::harness::temp_dir("hup-config");
    let file = dir.join("callvault.toml");
    std::fs::write(&file, "[sip]\nallowed_sources = [\"127.0.0.0/8\"]\n").unwrap();
    let mut node = Node::start_with("hup", &[("CALLVAULT_CONFIG", file.to_str().unwrap())]);

    let live = call_bg(node.sip_udp, &["--duration", "4", "--tone-a", "440", "--tone-b", "1000"]);
    std::thread::sleep(Duration::from_secs(1));
    // Only 10.0.0.0/8 from now on; and a log level that is valid.
    std::fs::write(&file, "[sip]\nallowed_sources = [\"10.0.0.0/8\"]\n[log]\nlevel = \"debug\"\n").unwrap();
    hup(&node);
    wait_log(&node, "configuration reloaded");
    assert!(node.alive(), "SIGHUP does not stop the node");

    let summary = finish_bg(live);
    assert_eq!(summary["established"], 1);
    let rec = node.finished(summary["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["state"], "completed", "the call in progress kept recording: {rec:#}");
    assert!(rec["duration_ms"].as_u64().unwrap() >= 3800);
    node.audio(&rec).assert_tone(0, 440.0, 1000.0, 200, 3800);

    let refused = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(refused["established"], 0, "the new allow-list applies to the next call: {refused:#}");
    assert_eq!(refused["calls"][0]["status"], 403);

    // An invalid file: the reload is refused and the running settings stay.
    std::fs::write(&file, "[sip]\nallowed_sources = [\"not-a-network\"]\n").unwrap();
    hup(&node);
    wait_log(&node, "reload refused");
    assert!(node.alive());
    let still = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(still["calls"][0]["status"], 403, "still the reloaded allow-list");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn service_link_variables_from_an_orchestrator_do_not_stop_the_node() {
    let node = Node::start_with(
        "svc-links",
        &[
            ("CALLVAULT_PORT", "tcp://10.0.0.1:5060"),
            ("CALLVAULT_PORT_5060_TCP", "tcp://10.0.0.1:5060"),
            ("CALLVAULT_PORT_5060_TCP_ADDR", "10.0.0.1"),
            ("CALLVAULT_SERVICE_HOST", "10.0.0.1"),
        ],
    );
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(s["established"], 1, "{s:#}");
    assert!(node.log().contains("ignoring environment variable CALLVAULT_PORT"), "{}", node.log());
    // The CLI reads the same configuration: it works with them set too.
    let out = Command::new(BIN)
        .args(["recordings", "list", "--data-dir"])
        .arg(&node.dir)
        .env("CALLVAULT_PORT", "tcp://10.0.0.1:5060")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn config_check_prints_every_value_with_its_source_and_rejects_a_bad_file() {
    let dir = crate::harness::temp_dir("config-check");
    let file = dir.join("c.toml");
    std::fs::write(&file, "[media]\nport_min = 30000\nport_max = 31000\n").unwrap();
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(&file)
        .env("CALLVAULT_SIP__UDP", "127.0.0.1:5070")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} =")))
            .unwrap_or_else(|| panic!("{key} in {text}"))
            .to_owned()
    };
    assert!(line("media.port_min").contains("30000") && line("media.port_min").contains("file"), "{text}");
    assert!(line("sip.udp").contains("127.0.0.1:5070") && line("sip.udp").contains("environment"), "{text}");
    assert!(line("sip.tcp").ends_with("# default"), "{text}");

    std::fs::write(&file, "[media]\nport_min = 31000\nport_max = 30000\n").unwrap();
    let out = Command::new(BIN).args(["config", "check", "--config"]).arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("port_min must be below"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn metric_value(node: &Node, name: &str) -> f64 {
    node.metric(name)
}

#[test]
fn idle_tcp_floods_hit_the_caps_and_health_metrics_and_udp_calls_keep_working() {
    // 256 descriptors: the total cap derives to 16 connections.
    let node = Node::start_wrapped(
        "fd-limit",
        &[("CALLVAULT_SIP__TCP_IDLE_TIMEOUT_SECS", "2")],
        &["prlimit", "--nofile=256:256", "--"],
    );
    assert!(node.log().contains("SIP TCP connection limits"), "{}", node.log());
    let mut conns = Vec::new();
    for _ in 0..40 {
        if let Ok(c) = std::net::TcpStream::connect(node.sip_tcp) {
            conns.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.get("/health/live").0, 200);
    assert_eq!(node.get("/health/ready").0, 200);
    assert!(metric_value(&node, "callvault_sip_tcp_connections") <= 16.0);
    assert!(metric_value(&node, "callvault_sip_tcp_refused_total{cap=\"total\"}") >= 24.0);
    assert_eq!(metric_value(&node, "callvault_core_up"), 1.0);
    assert!(metric_value(&node, "callvault_process_max_fds") >= 256.0);
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(s["established"], 1, "a UDP call still records: {s:#}");
    wait_log(&node, "connection cap reached");
    // Idle connections are closed after 2 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric_value(&node, "callvault_sip_tcp_connections") > 0.0 {
        assert!(Instant::now() < deadline, "idle connections were not closed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(metric_value(&node, "callvault_sip_tcp_closed_idle_total") >= 16.0);
    drop(conns);
}

#[test]
fn one_source_cannot_take_every_tcp_connection() {
    let node = Node::start_with("per-source", &[("CALLVAULT_SIP__MAX_TCP_CONNECTIONS_PER_SOURCE", "5")]);
    let conns: Vec<_> = (0..10).filter_map(|_| std::net::TcpStream::connect(node.sip_tcp).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric_value(&node, "callvault_sip_tcp_connections"), 5.0);
    assert_eq!(metric_value(&node, "callvault_sip_tcp_refused_total{cap=\"per_source\"}"), 5.0);
    // A TCP call from the same source still gets through once a place is free.
    drop(conns);
    std::thread::sleep(Duration::from_millis(300));
    let s = call(node.sip_tcp, &["--transport", "tcp", "--duration", "1"]);
    assert_eq!(s["established"], 1, "{s:#}");
}

#[test]
fn out_of_descriptors_is_named_as_such_never_as_a_storage_failure() {
    // An explicit cap above what 256 descriptors allow: the limit is reached
    // before the cap, so accept() and port allocation meet EMFILE.
    let node = Node::start_wrapped(
        "fd-exhausted",
        &[("CALLVAULT_SIP__MAX_TCP_CONNECTIONS", "1000"), ("CALLVAULT_SIP__MAX_TCP_CONNECTIONS_PER_SOURCE", "1000")],
        &["prlimit", "--nofile=256:256", "--"],
    );
    let mut conns: Vec<_> = (0..300).filter_map(|_| std::net::TcpStream::connect(node.sip_tcp).ok()).collect();
    wait_log(&node, "out of file descriptors");
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(s["calls"][0]["status"], 503, "{s:#}");
    assert_eq!(s["calls"][0]["reason"], "Out of file descriptors", "{s:#}");
    // Free some descriptors so the HTTP side can answer.
    conns.truncate(100);
    std::thread::sleep(Duration::from_millis(500));
    assert!(metric_value(&node, "callvault_descriptor_exhaustion_total{at=\"sip_tcp_accept\"}") >= 1.0);
    assert_eq!(
        metric_value(&node, "callvault_invites_rejected_total{code=\"503\",reason=\"out_of_descriptors\"}"),
        1.0
    );
    assert_eq!(metric_value(&node, "callvault_storage_ok"), 1.0, "not blamed on storage");
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    let s = call(node.sip_udp, &["--duration", "1"]);
    assert_eq!(s["established"], 1, "calls are taken again once descriptors are free: {s:#}");
}

#[test]
fn a_stream_without_rtp_and_an_all_silent_call_are_flagged() {
    let node = Node::start_with("no-rtp", &[("CALLVAULT_MEDIA__NO_RTP_ALARM_SECS", "1")]);
    // One-way audio: stream B never sends.
    let client = call_bg(node.sip_udp, &["--duration", "4", "--no-rtp-b"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, ready) = node.get("/health/ready");
        assert_eq!(code, 200, "the node still records: {ready}");
        if ready["warnings"].as_array().is_some_and(|w| !w.is_empty()) {
            assert!(ready["warnings"][0].as_str().unwrap().contains("without RTP"), "{ready}");
            break;
        }
        assert!(Instant::now() < deadline, "no warning in the health details: {ready}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, active) = node.get("/api/v1/recordings/active");
    assert_eq!(active["recordings"][0]["media_alarm"], "stream_without_rtp", "{active}");
    assert_eq!(metric_value(&node, "callvault_active_recordings_with_media_alarm"), 1.0);
    let s = finish_bg(client);
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["media_alarm"], "stream_without_rtp", "{rec:#}");
    let packets: Vec<u64> =
        rec["streams"].as_array().unwrap().iter().map(|s| s["stats"]["packets"].as_u64().unwrap()).collect();
    assert!(packets.contains(&0) && packets.iter().any(|p| *p > 0), "{packets:?}");
    assert_eq!(metric_value(&node, "callvault_streams_without_rtp_total"), 1.0);
    assert_eq!(metric_value(&node, "callvault_recordings_media_alarm_total{alarm=\"stream_without_rtp\"}"), 1.0);

    // RTP on both streams, but nothing but digital silence.
    let s = call(node.sip_udp, &["--duration", "1", "--tone-a", "0", "--tone-b", "0"]);
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    assert_eq!(rec["media_alarm"], "all_silent", "{rec:#}");

    // A healthy call carries no alarm.
    let s = call(node.sip_udp, &["--duration", "1"]);
    let rec = node.finished(s["calls"][0]["call_ids"][0].as_str().unwrap());
    assert!(rec.get("media_alarm").is_none(), "{rec:#}");
    assert_eq!(node.get("/health/ready").1["warnings"], serde_json::json!([]));
}

/// Datagrams a `Type=notify` service sent to systemd, read until `want`
/// arrives (or 10 s pass).
fn notified_until(sock: &std::os::unix::net::UnixDatagram, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("systemd was never told {want:?}; got {seen:?}");
}

#[test]
fn under_systemd_the_node_notifies_ready_reloading_stopping_and_pings_the_watchdog() {
    let dir = crate::harness::temp_dir("notify-socket");
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let path_s = path.to_str().unwrap().to_owned();
    // systemd sets WATCHDOG_PID to the service's pid: exec keeps the shell's.
    let mut node = Node::start_wrapped(
        "systemd",
        &[("NOTIFY_SOCKET", &path_s), ("WATCHDOG_USEC", "400000")],
        &["sh", "-c", "WATCHDOG_PID=$$ exec \"$@\"", "sh"],
    );
    let seen = notified_until(&sock, "READY=1");
    assert!(seen.concat().contains("STATUS=recording"), "{seen:?}");
    // Pings every 200 ms while the core answers.
    for _ in 0..3 {
        notified_until(&sock, "WATCHDOG=1");
    }
    assert!(node.log().contains("systemd watchdog enabled"), "{}", node.log());
    hup(&node);
    let seen = notified_until(&sock, "RELOADING=1");
    assert!(seen.last().unwrap().contains("MONOTONIC_USEC="), "{seen:?}");
    notified_until(&sock, "READY=1");
    node.stop();
    notified_until(&sock, "STOPPING=1");
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether the server closed `c` (EOF) within `within`.
fn closed_by_server(c: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    c.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // a response; keep reading until EOF or timeout
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn http_connections_are_capped_and_idle_ones_closed() {
    use std::io::Write;
    let node = Node::start_with(
        "http-limits",
        &[("CALLVAULT_HTTP__MAX_CONNECTIONS", "8"), ("CALLVAULT_HTTP__IDLE_TIMEOUT_SECS", "1")],
    );
    let mut idle: Vec<_> = (0..8).map(|_| std::net::TcpStream::connect(node.http).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut over: Vec<_> = (0..3).map(|_| std::net::TcpStream::connect(node.http).unwrap()).collect();
    for c in &mut over {
        assert!(closed_by_server(c, Duration::from_millis(500)), "a connection over the cap is closed at once");
    }
    // Idle connections go after the idle timeout, and a keep-alive one after its last answer.
    for c in &mut idle {
        assert!(closed_by_server(c, Duration::from_secs(5)), "an idle connection was kept");
    }
    let mut kept = std::net::TcpStream::connect(node.http).unwrap();
    kept.write_all(b"GET /health/live HTTP/1.1\r\nHost: it\r\n\r\n").unwrap();
    assert!(closed_by_server(&mut kept, Duration::from_secs(5)), "a keep-alive connection idle after its answer");
    assert!(metric_value(&node, "callvault_http_refused_total") >= 3.0);
    assert!(metric_value(&node, "callvault_http_connections") <= 2.0, "the idle ones are gone");
    assert_eq!(node.get("/health/live").0, 200);
}
