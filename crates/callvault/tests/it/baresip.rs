//! A real third-party UA as the recording source (issue 8): baresip
//! (Debian `baresip-core`, installed by scripts/install-test-deps.sh)
//! calls the recorder with Opus, G.722 and SDES-SRTP, over UDP and TLS,
//! playing a WAV file; the recording must carry the caller's tone.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{temp_dir, Node};

struct Case {
    codec: &'static str,
    /// What the recording's metadata calls the codec.
    name: &'static str,
    srtp: bool,
    tls: bool,
}

/// A WAV of `freq` in the layout baresip 1.0's file source wants for
/// `codec`: its own rate and channel count.
fn tone_wav(path: &Path, codec: &str, freq: f64) {
    let (rate, channels) = match codec {
        "opus" => (48000, 2),
        "G722" => (16000, 1),
        _ => (8000, 1),
    };
    let spec =
        hound::WavSpec { channels, sample_rate: rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut w = hound::WavWriter::create(path, spec).unwrap();
    for i in 0..rate * 8 {
        let v = (9000.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as i16;
        for _ in 0..channels {
            w.write_sample(v).unwrap();
        }
    }
    w.finalize().unwrap();
}

/// Runs baresip for `seconds`: it dials `target`, plays its WAV, hangs up.
fn baresip_call(dir: &Path, case: &Case, target: &str, ca: Option<&Path>, seconds: u32) -> String {
    tone_wav(&dir.join("source.wav"), case.codec, 440.0);
    let mut config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:0\naudio_player aufile,{d}/played.wav\n\
         audio_source aufile,{d}/source.wav\naudio_alert aufile,{d}/alert.wav\n\
         module_path /usr/lib/baresip/modules\nmodule stdio.so\nmodule g711.so\nmodule g722.so\n\
         module opus.so\nmodule aufile.so\nmodule srtp.so\nmodule_app account.so\nmodule_app menu.so\n\
         opus_bitrate 32000\nopus_inbandfec yes\n",
        d = dir.display()
    );
    if let Some(ca) = ca {
        config.push_str(&format!("sip_cafile {}\n", ca.display()));
    }
    std::fs::write(dir.join("config"), config).unwrap();
    let rtpmap = if case.codec == "opus" { "opus/48000/2" } else { "G722/16000/1" };
    let transport = if case.tls { ";transport=tls" } else { "" };
    let mediaenc = if case.srtp { ";mediaenc=srtp-mand" } else { "" };
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:alice@127.0.0.1{transport}>;regint=0;audio_codecs={rtpmap}{mediaenc}\n"),
    )
    .unwrap();
    let out = Command::new("baresip")
        .arg("-f")
        .arg(dir)
        .args(["-e", &format!("/dial {target}"), "-t", &seconds.to_string()])
        .output()
        .expect("baresip (Debian baresip-core; scripts/install-test-deps.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn newest_finished(node: &Node, before: usize, log: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let done: Vec<Value> = node
            .recordings("?limit=100")
            .into_iter()
            .filter(|r| r["state"] != "active" && r["audio"].is_object())
            .collect();
        if done.len() > before {
            return done.into_iter().max_by_key(|r| r["started_at"].as_str().unwrap_or("").to_owned()).unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "baresip's call was not recorded; baresip said:\n{log}\nnode log:\n{}",
            node.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn baresip_calls_with_opus_g722_and_srtp_over_udp_and_tls_are_recorded() {
    let pki = temp_dir("baresip-pki");
    crate::cluster::make_pki(&pki, &["recorder"]);
    let node = Node::start_with(
        "baresip",
        &[
            ("CALLVAULT_SIP__TLS", "127.0.0.1:0"),
            ("CALLVAULT_SIP__TLS_CERT", pki.join("recorder.pem").to_str().unwrap()),
            ("CALLVAULT_SIP__TLS_KEY", pki.join("recorder.key").to_str().unwrap()),
        ],
    );
    let listen: Value = serde_json::from_slice(&std::fs::read(node.dir.join("listen.json")).unwrap()).unwrap();
    let tls = listen["sip_tls"].as_str().unwrap().to_owned();
    let cases = [
        Case { codec: "opus", name: "opus", srtp: false, tls: false },
        Case { codec: "G722", name: "G722", srtp: true, tls: false },
        Case { codec: "opus", name: "opus", srtp: true, tls: true },
    ];
    for (i, case) in cases.iter().enumerate() {
        let dir = temp_dir(&format!("baresip-ua-{i}"));
        let target =
            if case.tls { format!("sip:rec@{tls};transport=tls") } else { format!("sip:rec@{}", node.sip_udp) };
        let before = node.recordings("?limit=100").iter().filter(|r| r["state"] != "active").count();
        let log = baresip_call(&dir, case, &target, Some(&pki.join("ca.pem")), 4);
        let rec = newest_finished(&node, before, &log);
        let ctx = format!("{} srtp={} tls={}: {rec:#}\nbaresip:\n{log}", case.codec, case.srtp, case.tls);
        let stream = &rec["streams"][0];
        assert_eq!(stream["stats"]["codecs_used"][0]["codec"], case.name, "{ctx}");
        assert_eq!(stream["stats"]["decode_failures"], 0, "{ctx}");
        assert_eq!(stream["srtp"].is_string(), case.srtp, "{ctx}");
        assert_eq!(stream["stats"]["srtp_auth_failures"], 0, "{ctx}");
        assert!(rec["source_addr"].as_str().unwrap_or("").starts_with(if case.tls { "tls:" } else { "udp:" }), "{ctx}");
        assert_eq!(rec["audio"]["sample_rate"], 16000, "{ctx}");
        let wav = node.audio(&rec);
        let ms = wav.channels[0].len() as u64 * 1000 / wav.rate as u64;
        assert!(ms >= 2500, "{ms} ms recorded: {ctx}");
        wav.assert_tone(0, 440.0, 1000.0, 500, ms - 500);
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_dir_all(pki);
}
