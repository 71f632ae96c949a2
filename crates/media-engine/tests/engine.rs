//! The engine on real loopback sockets: RTP in, a finished stereo WAV out.

use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use media::signal::{tone_power, Tone};
use media::Codec;
use media_control::{MediaCommand, PortAllocator, StreamId, StreamSpec};
use media_engine::{EngineConfig, EngineEvent, MediaEngine, UdpPortPool};
use model::{NodeId, RecordingId, RecordingMeta, RecordingState, SourceKind, StreamRecord};
use store::{Archive, DataDir};
use time::OffsetDateTime;

fn meta(id: RecordingId, now: OffsetDateTime, ports: &[u16]) -> RecordingMeta {
    let mut m = RecordingMeta::start(id, NodeId("t".into()), SourceKind::Plain, now, String::new(), "test");
    m.streams = ports
        .iter()
        .enumerate()
        .map(|(i, p)| StreamRecord { channel: i as u8, local_port: *p, ..Default::default() })
        .collect();
    m
}

fn rtp(seq: u16, ts: u32, ssrc: u32, pt: u8, payload: &[u8]) -> Vec<u8> {
    rtp_types::RtpPacketBuilder::new()
        .payload_type(pt)
        .sequence_number(seq)
        .timestamp(ts)
        .ssrc(ssrc)
        .payload(payload)
        .write_vec()
        .unwrap()
}

#[test]
fn two_tones_with_loss_land_aligned_on_their_channels() {
    let root = std::env::temp_dir().join(format!("cv-engine-{}", fastrand::u64(..)));
    let dir = DataDir::open(&root).unwrap();
    let mut pool = UdpPortPool::new("127.0.0.1".parse().unwrap(), 41000 + fastrand::u16(0..2000) * 2, 45998, 0);
    let (tx, rx) = mpsc::channel();
    let mut cfg = EngineConfig::new(dir.spool_dir());
    cfg.media_timeout = Duration::from_secs(3600);
    let engine = MediaEngine::start(
        cfg,
        pool.pending(),
        Arc::new(move |e| {
            let _ = tx.send(e);
        }),
    )
    .unwrap();

    let now = OffsetDateTime::now_utc();
    let id = RecordingId::new(now);
    let a = pool.allocate().unwrap();
    let b = pool.allocate().unwrap();
    engine.command(MediaCommand::Start { recording: id, sample_rate: 8000, channels: 2, started_at: now });
    for (i, port) in [a, b].into_iter().enumerate() {
        engine.command(MediaCommand::AddStream(StreamSpec {
            id: StreamId(i as u64 + 1),
            recording: id,
            port,
            channel: i as u8,
            label: None,
            codecs: vec![(0, Codec::Pcmu), (8, Codec::Pcma)],
            telephone_event: Some(101),
            comfort_noise: Some(13),
            remote: None,
            rtcp_mux: false,
            held: false,
            srtp: None,
        }));
    }
    std::thread::sleep(Duration::from_millis(50));

    // 1.5 s of 20 ms packets: 440 Hz µ-law on A, 1000 Hz A-law on B.
    // B starts 500 ms late and loses every 7th packet; A has a DTMF '7'.
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dest_a = SocketAddr::from(([127, 0, 0, 1], a.rtp));
    let dest_b = SocketAddr::from(([127, 0, 0, 1], b.rtp));
    let (mut ta, mut tb) = (Tone::new(440.0, 8000, 12000), Tone::new(1000.0, 8000, 12000));
    let mut pcm = [0i16; 160];
    let mut enc = Vec::new();
    let start = Instant::now();
    let mut seq_a = 0u16;
    for n in 0..75u32 {
        let due = start + Duration::from_millis(20 * n as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        ta.fill(&mut pcm);
        media::StreamEncoder::new(Codec::Pcmu).encode(&pcm, &mut enc);
        if !(40..45).contains(&n) {
            sender.send_to(&rtp(seq_a, 1000 + n * 160, 0xa, 0, &enc), dest_a).unwrap();
            seq_a += 1;
        }
        if (40..45).contains(&n) {
            // An RFC 4733 event in place of audio: start, updates, and the
            // end packet three times, all with the event's start timestamp.
            let dur = ((n - 40) * 160 + 160) as u16;
            let end = n == 44;
            let dtmf = [7u8, if end { 0x80 | 10 } else { 10 }, (dur >> 8) as u8, dur as u8];
            for _ in 0..(if end { 3 } else { 1 }) {
                sender.send_to(&rtp(seq_a, 1000 + 40 * 160, 0xa, 101, &dtmf), dest_a).unwrap();
                seq_a += 1;
            }
        }
        tb.fill(&mut pcm);
        if n == 10 {
            // Comfort noise (RFC 3389) before B's talk spurt, with the sequence
            // number just before it (as a DTX sender does): accepted, silent.
            sender.send_to(&rtp(24, 90_000 + 10 * 160, 0xb, 13, &[40]), dest_b).unwrap();
        }
        if n >= 25 && n % 7 != 0 {
            media::StreamEncoder::new(Codec::Pcma).encode(&pcm, &mut enc);
            sender.send_to(&rtp(n as u16, 90_000 + n * 160, 0xb, 8, &enc), dest_b).unwrap();
        }
    }
    // Garbage to an allocated port is counted, not fatal.
    sender.send_to(b"\x00garbage", dest_a).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let stats = engine.stats();
    assert_eq!(stats.active_streams, 2);
    assert!(stats.malformed >= 1, "{stats:?}");

    engine.command(MediaCommand::RemoveStream { stream: StreamId(1), recording: id });
    engine.command(MediaCommand::RemoveStream { stream: StreamId(2), recording: id });
    let mut final_meta = meta(id, now, &[a.rtp, b.rtp]);
    final_meta.transition(RecordingState::Completed, OffsetDateTime::now_utc(), "test");
    engine.command(MediaCommand::Stop { recording: id, meta: Box::new(final_meta) });

    let mut closed = None;
    while let Ok(ev) = rx.recv_timeout(Duration::from_secs(5)) {
        if let EngineEvent::Closed { meta, error, .. } = ev {
            assert_eq!(error, None);
            closed = Some(meta);
            break;
        }
    }
    let mut meta = *closed.expect("recording closed");
    assert_eq!(meta.streams[0].stats.packets, 77, "70 audio + 7 DTMF: {:?}", meta.streams[0].stats);
    assert_eq!(meta.streams[0].stats.lost, 0);
    assert_eq!(meta.streams[1].stats.unknown_payload, 0, "comfort noise is a known payload");
    assert_eq!((meta.streams[1].stats.expected, meta.streams[1].stats.lost), (51, 7), "CN + 50 audio, every 7th lost");
    assert_eq!(meta.dtmf.len(), 1);
    assert_eq!(meta.dtmf[0].digit, '7');
    assert!((700..=940).contains(&meta.dtmf[0].at_ms), "DTMF at {} ms", meta.dtmf[0].at_ms);
    assert_eq!(meta.dtmf[0].duration_ms, 100);
    assert_eq!(meta.dtmf[0].source, "rtp");

    Archive::local(dir.clone()).finalize(&mut meta).unwrap();
    let audio = meta.audio.clone().unwrap();
    assert!((1450..=1650).contains(&audio.duration_ms), "duration {}", audio.duration_ms);
    let reader = hound::WavReader::open(root.join(&audio.path)).unwrap();
    assert_eq!(reader.spec().channels, 2);
    let samples: Vec<i16> = reader.into_samples::<i16>().map(Result::unwrap).collect();
    let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
    let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
    let window = |ch: &[i16], from_ms: usize, to_ms: usize| ch[from_ms * 8..(to_ms * 8).min(ch.len())].to_vec();
    // Left: 440 Hz throughout. Right: silent for the first 500 ms, then 1000 Hz.
    let l = window(&left, 100, 1400);
    assert!(tone_power(&l, 440.0, 8000) > 0.05 && tone_power(&l, 1000.0, 8000) < 0.001);
    let r0 = window(&right, 50, 450);
    assert!(media::signal::rms(&r0) < 50.0, "right silent before it starts");
    let r1 = window(&right, 600, 1400);
    assert!(tone_power(&r1, 1000.0, 8000) > 0.03 && tone_power(&r1, 440.0, 8000) < 0.001);
    // Alignment: the right channel starts at 500 ms (± one packet).
    let first_sound = right.iter().position(|s| s.unsigned_abs() > 1000).unwrap();
    let onset_ms = first_sound / 8;
    assert!((480..=560).contains(&onset_ms), "right starts at {onset_ms} ms");
    // Lost packets (every 7th) are 20 ms silent holes, not time shifts:
    // packet 28 is missing, so 560..580 ms after its stream start is quiet.
    let hole = first_sound + (28 - 25) * 160;
    assert!(media::signal::rms(&right[hole + 10..hole + 150]) < 100.0, "a lost packet stays a hole");

    engine.shutdown();
    std::fs::remove_dir_all(root).unwrap();
}
