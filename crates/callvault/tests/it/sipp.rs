//! Third-party SIP software as the recording source: SIPp scenarios
//! written from vendor traces (tests/sipp/*.xml), replaying real RTP.

use std::net::SocketAddr;
use std::process::Command;

use crate::harness::{temp_dir, Node};

/// Runs one SIPp scenario once; panics with SIPp's error log on failure.
fn sipp(target: SocketAddr, scenario: &str, transport: &str) {
    let which = Command::new("sipp").arg("-v").output();
    assert!(which.is_ok(), "SIPp is not installed: run scripts/install-test-deps.sh (Debian package sip-tester)");
    let dir = temp_dir("sipp");
    let media_port = 40_000 + 4 * fastrand::u16(0..2_000);
    let path = format!("{}/tests/sipp/{scenario}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("sipp")
        .args(["-sf", &path, "-m", "1", "-l", "1", "-i", "127.0.0.1", "-mi", "127.0.0.1"])
        .args(["-mp", &media_port.to_string(), "-t", transport, "-timeout", "60", "-timeout_error", "-nostdin"])
        .arg("-trace_err")
        .arg("-error_file")
        .arg(dir.join("errors.log"))
        .arg(target.to_string())
        .current_dir(&dir)
        .output()
        .expect("run sipp");
    let errors = std::fs::read_to_string(dir.join("errors.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "SIPp {scenario} failed ({:?}):\n{errors}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn only_recording(node: &Node) -> serde_json::Value {
    let recs = node.recordings("");
    assert_eq!(recs.len(), 1, "{recs:#?}");
    node.finished(recs[0]["call_ids"][0].as_str().unwrap())
}

#[test]
fn sipp_sbc_session_with_hold_and_metadata_update_udp_and_tcp() {
    for transport in ["u1", "t1"] {
        let node = Node::start("sipp-sbc");
        let target = if transport == "u1" { node.sip_udp } else { node.sip_tcp };
        sipp(target, "siprec_sbc.xml", transport);
        let rec = only_recording(&node);
        assert_eq!(rec["state"], "completed");
        assert_eq!(rec["caller"], "+12025550100", "Acme callingParty extension names the caller");
        let names: Vec<&str> =
            rec["participants"].as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
        assert!(names.contains(&"Supervisor 4002"), "participant added by UPDATE: {names:?}");
        assert_eq!(rec["streams"][0]["codecs"][0], "PCMA");
        assert!(rec["siprec"]["extensions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["xml"].as_str().unwrap().contains("apkt:ucid")));
        let wav = node.audio(&rec);
        assert_eq!(wav.channels.len(), 2);
        assert!(media::signal::rms(wav.slice(0, 300, 2300)) > 300.0, "pcap audio recorded on channel 0");
        assert!(media::signal::rms(wav.slice(1, 300, 2300)) < 50.0, "nothing was sent on the second stream");
    }
}

#[test]
fn sipp_cisco_bib_delayed_offer_leg() {
    let node = Node::start("sipp-bib");
    sipp(node.sip_udp, "bib_delayed_offer.xml", "u1");
    let rec = only_recording(&node);
    assert_eq!(rec["source"], "forked");
    assert_eq!(rec["caller"], "4062");
    assert_eq!(rec["callee"], "8172710497");
    assert_eq!(rec["participants"][0]["device"], "SEP189C5DB7C8AC");
    let wav = node.audio(&rec);
    assert!(media::signal::rms(wav.slice(0, 300, 2800)) > 300.0, "near-end voice on channel 0");
}

#[test]
fn sipp_broadworks_legacy_schema_with_pause() {
    let node = Node::start("sipp-bw");
    sipp(node.sip_udp, "broadworks.xml", "u1");
    let rec = only_recording(&node);
    assert_eq!(rec["siprec"]["schema"], "broad-works");
    assert_eq!(rec["direction"], "inbound");
    assert_eq!(rec["caller"], "+19015783200");
    assert_eq!(rec["audio"]["channels"], 1, "one mixed stream is a mono recording");
    assert!(media::signal::rms(node.audio(&rec).slice(0, 300, 1800)) > 300.0);
}

#[test]
fn sipp_options_keepalive() {
    let node = Node::start("sipp-opt");
    sipp(node.sip_udp, "options.xml", "u1");
}

/// The liberal-parsing cases of issue 8 from a real SIP stack over UDP and
/// TCP: the call is recorded, the BYE with INVITE in its CSeq ends it, and
/// each tolerated case shows in `callvault_sip_tolerated_total`.
#[test]
fn sipp_liberal_call_is_recorded_and_each_case_counted() {
    for transport in ["u1", "t1"] {
        let node = Node::start("sipp-liberal");
        let target = if transport == "u1" { node.sip_udp } else { node.sip_tcp };
        sipp(target, "liberal_call.xml", transport);
        let rec = only_recording(&node);
        assert_eq!(rec["state"], "completed", "{rec:#}");
        assert_eq!(rec["caller"], "+15550111", "folded, compact From understood");
        let wav = node.audio(&rec);
        assert!(media::signal::rms(wav.slice(0, 300, 2300)) > 300.0, "pcap audio recorded");
        let metrics = node.raw_get("/metrics").call().unwrap().body_mut().read_to_string().unwrap();
        for case in ["sdp_stray_line", "cseq_method_mismatch"] {
            assert!(
                metrics.lines().any(|l| l.starts_with("callvault_sip_tolerated_total{") && l.contains(case)),
                "{transport}: {case} not counted"
            );
        }
    }
}

/// RFC 4475 refusals from SIPp over UDP and TCP: each request gets the
/// code its fixture expects, and the node goes on serving.
#[test]
fn sipp_rfc4475_refusals_get_the_expected_codes() {
    let node = Node::start("sipp-rfc4475");
    for (transport, target) in [("u1", node.sip_udp), ("t1", node.sip_tcp)] {
        sipp(target, "rfc4475_refusals.xml", transport);
    }
    assert_eq!(node.get("/health/live").0, 200);
    assert!(node.recordings("").is_empty(), "nothing recorded from refused requests");
}
