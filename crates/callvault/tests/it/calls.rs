//! Real calls from `callvault call` into `callvault serve`, checked down to
//! which signal landed on which channel.

use std::path::Path;

use serde_json::Value;

use crate::harness::{call, temp_dir, Node};

fn call_id(summary: &Value, i: usize) -> String {
    summary["calls"][0]["call_ids"][i].as_str().unwrap().to_owned()
}

fn established(summary: &Value) {
    assert_eq!(summary["established"], summary["attempted"], "calls failed: {summary:#}");
}

/// |actual - expected| within one 20 ms packet plus signalling slack.
fn assert_duration(rec: &Value, expected_ms: u64) {
    let d = rec["duration_ms"].as_u64().unwrap();
    assert!(d.abs_diff(expected_ms) <= 40, "duration {d} ms, expected {expected_ms} ± 40");
    assert_eq!(rec["audio"]["duration_ms"], rec["duration_ms"]);
}

#[test]
fn siprec_call_is_one_stereo_recording_with_participants() {
    let node = Node::start("siprec");
    let s = call(node.sip_udp, &["--mode", "siprec", "--duration", "3", "--tone-a", "440", "--tone-b", "1000"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    assert_eq!(rec["state"], "completed");
    assert_eq!(rec["source"], "siprec");
    assert_duration(&rec, 3000);
    assert_eq!(rec["audio"]["channels"], 2);
    assert_eq!(rec["caller"], "+15550100");
    assert_eq!(rec["callee"], "+15550199");
    let parts = rec["participants"].as_array().unwrap();
    let alice = parts.iter().find(|p| p["name"] == "Alice Caller").unwrap();
    let bob = parts.iter().find(|p| p["name"] == "Bob Callee").unwrap();
    assert_eq!((alice["channel"].as_u64(), bob["channel"].as_u64()), (Some(0), Some(1)));
    assert_eq!(rec["streams"][0]["label"], "1");
    assert!(rec["streams"][0]["stats"]["packets"].as_u64().unwrap() >= 148);
    assert_eq!(rec["streams"][0]["stats"]["lost"], 0);
    // The client sends an RTCP sender report 2 s into each stream.
    assert!(rec["streams"][0]["stats"]["rtcp_packets"].as_u64().unwrap() >= 1, "{}", rec["streams"][0]);
    assert!(rec["streams"][0]["stats"]["sender_reported_packets"].as_u64().unwrap() >= 90);
    assert!(rec["siprec"]["participants"].as_array().unwrap().len() == 2);
    assert_eq!(rec["node_id"].as_str().unwrap().len(), "node-00000000".len());
    let history: Vec<&str> =
        rec["state_history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
    assert_eq!(history, vec!["active", "completed"]);

    let wav = node.audio(&rec);
    wav.assert_tone(0, 440.0, 1000.0, 200, 2800);
    wav.assert_tone(1, 1000.0, 440.0, 200, 2800);

    // Download over HTTP: same bytes as the checksum says, and seekable.
    let audio_path = format!("/api/v1/recordings/{}/audio", rec["id"].as_str().unwrap());
    let mut resp = node.raw_get(&audio_path).call().unwrap();
    assert_eq!(resp.headers().get("content-type").unwrap(), "audio/wav");
    let body = resp.body_mut().with_config().limit(50 << 20).read_to_vec().unwrap();
    let path = temp_dir("dl").join("a.wav");
    std::fs::write(&path, &body).unwrap();
    assert_eq!(store::sha256_file(&path).unwrap().0, rec["audio"]["sha256"].as_str().unwrap());
    let resp = node.raw_get(&audio_path).header("Range", "bytes=44-1043").call().unwrap();
    assert_eq!(resp.status().as_u16(), 206);
    assert_eq!(resp.headers().get("content-length").unwrap(), "1000");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());

    let (code, detail) = node.get(&format!("/api/v1/recordings/{}", rec["id"].as_str().unwrap()));
    assert_eq!(code, 200);
    assert_eq!(detail["id"], rec["id"]);
    assert!(node.metric("callvault_rtp_packets_total") >= 296.0);
    assert_eq!(node.metric("callvault_recordings_ended_total{state=\"completed\",reason=\"bye\"}"), 1.0);
    // Latency histograms: the INVITE's answer, metadata and audio syncs.
    assert_eq!(node.metric("callvault_invite_answer_seconds_count"), 1.0);
    assert_eq!(node.metric("callvault_invite_answer_seconds_bucket{le=\"+Inf\"}"), 1.0);
    assert!(node.metric("callvault_metadata_sync_seconds_count") >= 1.0, "the save the 200 OK waited for");
    assert!(node.metric("callvault_audio_sync_seconds_count") >= 1.0);
    assert_eq!(node.metric("callvault_rtp_port_pairs_in_use"), 0.0);
    assert!(node.metric("callvault_rtp_port_pairs") >= 2.0);
    assert!(node.metric("callvault_storage_free_bytes") > 0.0);
}

#[test]
fn forked_legs_are_one_recording_near_end_left() {
    let node = Node::start("forked");
    let s = call(node.sip_udp, &["--mode", "forked", "--duration", "3", "--tone-a", "600", "--tone-b", "1400"]);
    established(&s);
    assert_eq!(s["calls"][0]["call_ids"].as_array().unwrap().len(), 2);
    let rec = node.finished(&call_id(&s, 0));
    assert_eq!(rec["source"], "forked");
    assert_eq!(rec["call_ids"].as_array().unwrap().len(), 2, "both legs in one recording");
    assert_eq!(node.recordings("").len(), 1, "one call, one recording");
    assert_eq!(rec["caller"], "+15550100");
    assert_eq!(rec["callee"], "+15550199");
    let roles: Vec<&str> =
        rec["participants"].as_array().unwrap().iter().map(|p| p["role"].as_str().unwrap()).collect();
    assert_eq!(roles, vec!["near-end", "far-end"]);
    assert_duration(&rec, 3000);
    let wav = node.audio(&rec);
    wav.assert_tone(0, 600.0, 1400.0, 300, 2800);
    wav.assert_tone(1, 1400.0, 600.0, 300, 2800);
}

#[test]
fn plain_call_over_tcp_and_mono_call() {
    let node = Node::start("plain");
    let s = call(node.sip_tcp, &["--mode", "plain", "--transport", "tcp", "--duration", "2", "--codec", "pcma"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    assert_eq!(rec["source"], "plain");
    assert!(rec["source_addr"].as_str().unwrap().starts_with("tcp:"));
    assert_eq!(rec["streams"][0]["codecs"][0], "PCMA");
    let wav = node.audio(&rec);
    wav.assert_tone(0, 440.0, 1000.0, 200, 1800);
    wav.assert_tone(1, 1000.0, 440.0, 200, 1800);

    // One media line: a mono recording.
    let s = call(node.sip_udp, &["--mode", "plain", "--streams", "1", "--duration", "1"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    assert_eq!(rec["audio"]["channels"], 1);
    // Three media lines (a conference): a three-channel recording.
    let s = call(node.sip_udp, &["--mode", "plain", "--streams", "3", "--duration", "1"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    assert_eq!(rec["audio"]["channels"], 3);
    let wav = node.audio(&rec);
    assert_eq!(wav.channels.len(), 3);
    wav.assert_tone(2, 440.0, 1000.0, 200, 900);
    // Delayed offer on a plain INVITE: the offer is in our 200, the answer in the ACK.
    let s = call(node.sip_udp, &["--mode", "plain", "--delayed-offer", "--duration", "1"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    node.audio(&rec).assert_tone(0, 440.0, 1000.0, 200, 900);
}

/// A WAV of silence with 200 ms beeps at the given times.
pub(crate) fn beeps(path: &Path, seconds: f64, freq: f64, at_ms: &[u64]) {
    let spec =
        hound::WavSpec { channels: 1, sample_rate: 8000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    let n = (seconds * 8000.0) as usize;
    for i in 0..n {
        let ms = i as u64 / 8;
        let on = at_ms.iter().any(|&a| ms >= a && ms < a + 200);
        let v = if on { (12000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / 8000.0).sin()) as i16 } else { 0 };
        w.write_sample(v).unwrap();
    }
    w.finalize().unwrap();
}

/// First sample index (ms) where the channel's 40 ms energy passes a threshold, after `from_ms`.
pub(crate) fn onset(ch: &[i16], from_ms: u64) -> Option<u64> {
    let start = (from_ms * 8) as usize;
    (start..ch.len().saturating_sub(320))
        .step_by(8)
        .find(|&i| media::signal::rms(&ch[i..i + 320]) > 2000.0)
        .map(|i| i as u64 / 8)
}

#[test]
fn channels_stay_aligned_under_packet_loss() {
    let node = Node::start("loss");
    let dir = temp_dir("beeps");
    let (a, b) = (dir.join("a.wav"), dir.join("b.wav"));
    // A beeps every second from 1.0 s; B 500 ms after each.
    let beeps_a: Vec<u64> = (1..=6).map(|k| 1000 * k).collect();
    let beeps_b: Vec<u64> = beeps_a.iter().map(|t| t + 500).collect();
    beeps(&a, 8.0, 700.0, &beeps_a);
    beeps(&b, 8.0, 1300.0, &beeps_b);
    let s = call(
        node.sip_udp,
        &["--duration", "7", "--loss", "0.1", "--wav-a", a.to_str().unwrap(), "--wav-b", b.to_str().unwrap()],
    );
    established(&s);
    assert!(s["calls"][0]["packets_dropped"].as_u64().unwrap() > 40, "loss injected: {s:#}");
    let rec = node.finished(&call_id(&s, 0));
    assert!(rec["streams"][0]["stats"]["lost"].as_u64().unwrap() > 10, "receiver saw the loss");
    assert_duration(&rec, 7000);
    let wav = node.audio(&rec);
    // Where each channel's beeps start, minus where the sender put them
    // (every 1000 ms). A lost packet at a beep's start can only delay
    // that onset, by 20 ms per packet, never advance it: so the smallest
    // residual of each channel is its true placement, and every other one
    // must be that plus whole lost packets.
    let residuals = |ch: usize, first_ms: u64| -> Vec<i64> {
        (0..6u64)
            .map(|k| {
                let t = onset(&wav.channels[ch], first_ms - 100 + 1000 * k).expect("a beep");
                t as i64 - 1000 * k as i64
            })
            .collect()
    };
    let (res_a, res_b) = (residuals(0, 1000), residuals(1, 1500));
    let (base_a, base_b) = (*res_a.iter().min().unwrap(), *res_b.iter().min().unwrap());
    let ctx = format!("A onsets - k s: {res_a:?}; B: {res_b:?}; streams: {}", rec["streams"]);
    assert!((base_b - base_a - 500).abs() <= 5, "B must trail A by 500 ms: {ctx}");
    for (base, r) in [(base_a, &res_a), (base_b, &res_b)] {
        let lost_packets_only = |d: i64| d <= 100 && (d % 20 <= 3 || d % 20 >= 17);
        assert!(r.iter().all(|t| lost_packets_only(t - base)), "a beep misplaced beyond lost packets: {ctx}");
        // With 10 % loss most onsets are intact: a channel that moved mid-call would not be.
        assert!(r.iter().filter(|&&t| t - base <= 3).count() >= 3, "placement moved during the call: {ctx}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_delay_step_on_one_stream_is_followed_not_dropped() {
    let node = Node::start("delay-step");
    // From 2 s on, stream A arrives 600 ms later than before: beyond the
    // playout delay (200 ms + up to 200 ms until the next commit), so
    // without following the step every later packet of A would be dropped
    // as late; yet under 1 s, so it is no timestamp jump either.
    let s = call(node.sip_udp, &["--duration", "6", "--delay-step-a", "600", "--delay-step-at", "2"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    let wav = node.audio(&rec);
    let rms = |ch, from, to| media::signal::rms(wav.slice(ch, from, to));
    assert!(rms(0, 500, 1900) > 3000.0, "A recorded before the step");
    assert!(rms(0, 4500, 5500) > 3000.0, "A recorded again after the step: {}", rms(0, 4500, 5500));
    assert!(rms(1, 500, 5500) > 3000.0, "B unaffected");
}

#[test]
fn dtmf_is_recorded_as_events() {
    let node = Node::start("dtmf");
    let s = call(node.sip_udp, &["--duration", "3", "--dtmf", "1*9#", "--dtmf-at", "0.5"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    let digits: String = rec["dtmf"].as_array().unwrap().iter().map(|d| d["digit"].as_str().unwrap()).collect();
    assert_eq!(digits, "1*9#");
    let first = &rec["dtmf"][0];
    assert!((480..=560).contains(&first["at_ms"].as_u64().unwrap()), "{first}");
    assert_eq!(first["duration_ms"], 100);
    assert_eq!(first["channel"], 0);
}

#[test]
fn many_concurrent_calls_and_tcp_connection_per_call() {
    let node = Node::start("many");
    let s = call(
        node.sip_tcp,
        &["--transport", "tcp", "--calls", "20", "--concurrency", "10", "--rate", "50", "--duration", "1"],
    );
    established(&s);
    assert_eq!(s["attempted"], 20);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let done = node.recordings("?state=completed&limit=100").len();
        if done == 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{done} of 20 finished");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(node.metric("callvault_invites_accepted_total"), 20.0);
    assert_eq!(node.metric("callvault_active_recordings"), 0.0);
}

/// Regression (issue 8): a stray SSRC from the stream's own source address
/// used to take the stream over on every packet, writing noise over the
/// real audio. One noise packet of another SSRC after every real packet
/// of B now leaves B's tone intact, every one counted.
#[test]
fn stray_ssrc_packets_from_the_streams_own_address_leave_the_tone_intact() {
    let node = Node::start("stray-ssrc");
    let s = call(node.sip_udp, &["--duration", "3", "--tone-a", "440", "--tone-b", "1000", "--stray-ssrc-b"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    let b = &rec["streams"][1]["stats"];
    assert!(b["foreign_ssrc"].as_u64().unwrap() >= 140, "stray packets counted: {b}");
    assert_eq!(b["ssrc_changes"], 0, "{b}");
    assert_eq!(b["lost"], 0, "{b}");
    let wav = node.audio(&rec);
    wav.assert_tone(1, 1000.0, 440.0, 200, 2800);
    wav.assert_tone(0, 440.0, 1000.0, 200, 2800);
    assert!(node.metric("callvault_rtp_foreign_ssrc_packets_total") >= 140.0);
}

/// SRTP with SDES keys (issue 8): each suite records the tones; a sender
/// using another key than it offered has every packet dropped and counted,
/// nothing written; the key is in neither the log nor the metadata; with
/// `media.srtp = "require"` a plain offer gets 488.
#[test]
fn srtp_calls_record_every_suite_and_wrong_keys_are_dropped_and_counted() {
    let node = Node::start("srtp");
    for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM"] {
        let s = call(node.sip_udp, &["--duration", "2", "--tone-a", "440", "--tone-b", "1000", "--srtp", suite]);
        established(&s);
        let rec = node.finished(&call_id(&s, 0));
        assert_eq!(rec["streams"][0]["srtp"], suite, "{rec:#}");
        assert_eq!(rec["streams"][0]["stats"]["srtp_auth_failures"], 0);
        let wav = node.audio(&rec);
        wav.assert_tone(0, 440.0, 1000.0, 200, 1800);
        wav.assert_tone(1, 1000.0, 440.0, 200, 1800);
    }
    let s = call(node.sip_udp, &["--duration", "2", "--srtp", "AES_CM_128_HMAC_SHA1_80", "--srtp-wrong-key"]);
    established(&s);
    let rec = node.finished(&call_id(&s, 0));
    let st = &rec["streams"][0]["stats"];
    assert!(st["srtp_auth_failures"].as_u64().unwrap() >= 90, "{st}");
    assert_eq!(st["packets"], 0, "nothing was accepted: {st}");
    assert!(node.metric("callvault_srtp_auth_failures_total") >= 180.0);
    // No key material anywhere the operator can see.
    let log = node.log();
    let meta = serde_json::to_string(&node.recordings("?limit=100")).unwrap();
    for text in [&log, &meta] {
        assert!(!text.contains("inline:"), "a key leaked");
    }

    let strict = Node::start_with("srtp-required", &[("CALLVAULT_MEDIA__SRTP", "require")]);
    let s = call(strict.sip_udp, &["--duration", "1"]);
    assert_eq!(s["calls"][0]["status"], 488, "{s:#}");
    let s = call(strict.sip_udp, &["--duration", "1", "--srtp", "AEAD_AES_128_GCM"]);
    established(&s);
    // Delayed offer: our offer is SDES; the answer's key is used, and a
    // plain answer ends the call instead of recording it in clear.
    let s = call(
        strict.sip_udp,
        &[
            "--mode",
            "plain",
            "--delayed-offer",
            "--duration",
            "2",
            "--codec",
            "g722",
            "--srtp",
            "AES_CM_128_HMAC_SHA1_32",
        ],
    );
    established(&s);
    let rec = strict.finished(&call_id(&s, 0));
    assert_eq!(rec["state"], "completed", "{rec:#}");
    assert_eq!(rec["streams"][0]["srtp"], "AES_CM_128_HMAC_SHA1_32", "{rec:#}");
    assert_eq!(rec["streams"][0]["codecs"][0], "G722", "the codec the answer chose: {rec:#}");
    assert_eq!(rec["streams"][0]["stats"]["srtp_auth_failures"], 0);
    strict.audio(&rec).assert_tone(0, 440.0, 1000.0, 200, 1800);
    let s = call(strict.sip_udp, &["--mode", "plain", "--delayed-offer", "--duration", "3"]);
    assert_eq!(s["calls"][0]["ended_by_recorder"], true, "{s:#}");
    let rec = strict.finished(&call_id(&s, 0));
    assert_eq!(rec["state"], "failed", "{rec:#}");
    let last = rec["state_history"].as_array().unwrap().last().unwrap().clone();
    assert!(last["reason"].as_str().unwrap().contains("SRTP required"), "{rec:#}");
    assert!(!strict.log().contains("inline:"), "a key leaked");
}
