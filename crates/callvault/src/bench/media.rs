//! `callvault bench media`: the CPU cost per packet of the media path for
//! each kind of stream, in process and on virtual time (no sockets, no
//! load generator on the same cores): packets built beforehand go through
//! an ingest [`Shard`] exactly as the engine feeds it — SRTP check and
//! decrypt, receive and reorder, decode, the timeline. Figures are ratios
//! to plain G.711 measured in the same run, and to a floor: parsing the
//! same packets as RTP and nothing else. Codec streams carry a real
//! encoded tone (encoded once, before timing); G.722 and Opus calls are
//! recorded at 16 kHz as `serve` records them.
//!
//! Nothing else runs in the timed loop, so `1e9 / (ns × 100)` is how many
//! two-stream calls one core could ingest at that cost alone: a ceiling
//! per codec. The zero-loss maximum over real sockets is `bench ingest`'s
//! (G.711).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::{Codec, StreamEncoder};
use media_engine::{Shard, ShardConfig, ShardOutput};
use model::RecordingId;
use recorder::{MediaCommand, MediaPort, StreamId, StreamSpec};
use rtp_core::srtp::{SrtpKey, SrtpSender, SrtpSuite};
use time::OffsetDateTime;

#[derive(Debug, Clone, clap::Args)]
pub struct MediaArgs {
    /// Streams fed at once (two per call).
    #[arg(long, default_value_t = 200)]
    pub streams: usize,
    /// Seconds of 20 ms packets per stream.
    #[arg(long, default_value_t = 30)]
    pub seconds: u64,
    /// Rounds; the best of each is kept (the machine is shared).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
}

/// One kind of stream measured.
struct Kind {
    name: String,
    codec: Codec,
    srtp: Option<SrtpSuite>,
    /// Recording rate (16 kHz for wideband codecs, as `serve` chooses).
    rate: u32,
}

/// The kinds of stream measured, plain G.711 first (the reference).
fn kinds() -> Vec<Kind> {
    let kind = |name: &str, codec: Codec, srtp, rate| Kind { name: name.to_owned(), codec, srtp, rate };
    let mut k = vec![kind("G.711 (PCMU), plain RTP", Codec::Pcmu, None, 8000)];
    k.push(kind("G.711 in a 16 kHz recording", Codec::Pcmu, None, 16000));
    k.push(kind("G.722", Codec::G722, None, 16000));
    k.push(kind("Opus 32 kbit/s", Codec::Opus, None, 16000));
    if Codec::G729.is_built() {
        k.push(kind("G.729", Codec::G729, None, 8000));
    }
    k.extend(SrtpSuite::ALL.iter().map(|s| kind(&format!("SRTP {}", s.sdes_name()), Codec::Pcmu, Some(*s), 8000)));
    k
}

/// Payload type the bench uses for a codec.
fn pt(codec: Codec) -> u8 {
    codec.static_payload_type().unwrap_or(111)
}

/// `count` payloads of a 440 Hz tone in `codec`, 20 ms each.
fn payloads(codec: Codec, count: u16) -> Vec<Vec<u8>> {
    let mut enc = StreamEncoder::new(codec);
    let mut tone = media::signal::Tone::new(440.0, codec.sample_rate(), 8000);
    let mut pcm = vec![0; enc.frame_samples(20)];
    (0..count)
        .map(|_| {
            tone.fill(&mut pcm);
            let mut p = Vec::new();
            enc.encode(&pcm, &mut p);
            p
        })
        .collect()
}

fn packets(streams: usize, count: u16, codec: Codec, srtp: Option<&SrtpKey>) -> Vec<Vec<Vec<u8>>> {
    let payloads = payloads(codec, count);
    let ticks = codec.clock_rate() / 50;
    (0..streams)
        .map(|i| {
            let mut tx = srtp.map(SrtpSender::new);
            let ssrc = 0x1000 + i as u32;
            (0..count)
                .map(|seq| {
                    let plain = rtp_types::RtpPacketBuilder::new()
                        .payload_type(pt(codec))
                        .sequence_number(seq)
                        .timestamp(u32::from(seq) * ticks)
                        .ssrc(ssrc)
                        .payload(payloads[seq as usize].as_slice())
                        .write_vec()
                        .expect("a valid packet");
                    match tx.as_mut() {
                        Some(tx) => tx.rtp(&plain).expect("protect"),
                        None => plain,
                    }
                })
                .collect()
        })
        .collect()
}

/// Nanoseconds per packet through a shard.
fn through_shard(all: &[Vec<Vec<u8>>], codec: Codec, rate: u32, key: Option<&SrtpKey>) -> f64 {
    let t0 = Instant::now();
    let mut shard = Shard::new(ShardConfig {
        media_timeout: Duration::from_secs(3600),
        no_rtp_alarm: Duration::from_secs(3600),
        ..Default::default()
    });
    let from: SocketAddr = "127.0.0.1:4000".parse().expect("address");
    let mut slots = Vec::new();
    for (i, _) in all.iter().enumerate() {
        if i % 2 == 0 {
            let recording = RecordingId::new(OffsetDateTime::now_utc());
            let start = MediaCommand::Start {
                recording,
                sample_rate: rate,
                channels: 2,
                started_at: OffsetDateTime::now_utc(),
            };
            shard.command(t0, start);
            slots.push((recording, Vec::new()));
        }
        let (recording, list) = slots.last_mut().expect("started");
        let spec = StreamSpec {
            id: StreamId(i as u64 + 1),
            recording: *recording,
            port: MediaPort { rtp: 30000 + 2 * i as u16, rtcp: 30001 + 2 * i as u16 },
            channel: (i % 2) as u8,
            label: None,
            codecs: vec![(pt(codec), codec)],
            telephone_event: None,
            comfort_noise: None,
            remote: None,
            rtcp_mux: false,
            held: false,
            srtp: key.cloned(),
        };
        list.push(shard.add_stream(t0, spec).expect("stream added"));
    }
    let slot_of: Vec<usize> = slots.iter().flat_map(|(_, l)| l.iter().copied()).collect();
    let count = all[0].len();
    let started = Instant::now();
    for seq in 0..count {
        let now = t0 + Duration::from_millis(20 * seq as u64);
        for (i, stream) in all.iter().enumerate() {
            shard.on_rtp(now, slot_of[i], from, &stream[seq]);
        }
        shard.tick(now);
        while let Some(o) = shard.poll_output() {
            if let ShardOutput::Append { data, .. } = o {
                shard.recycle(data);
            }
        }
    }
    started.elapsed().as_nanos() as f64 / (count * all.len()) as f64
}

/// Nanoseconds per packet to parse it as RTP: the floor.
fn parse_floor(all: &[Vec<Vec<u8>>]) -> f64 {
    let started = Instant::now();
    let mut sum = 0u64;
    for stream in all {
        for p in stream {
            if let Ok(pkt) = rtp_types::RtpPacket::parse(p.as_slice()) {
                sum = sum.wrapping_add(u64::from(pkt.sequence_number()) + pkt.payload().len() as u64);
            }
        }
    }
    std::hint::black_box(sum);
    started.elapsed().as_nanos() as f64 / all.iter().map(Vec::len).sum::<usize>() as f64
}

pub fn run(args: MediaArgs) -> anyhow::Result<()> {
    let count = (args.seconds * 50).min(u64::from(u16::MAX)) as u16;
    eprintln!("callvault bench media: {} streams × {} packets, best of {} rounds", args.streams, count, args.rounds);
    let mut results = Vec::new();
    let mut floor = f64::MAX;
    for kind in kinds() {
        let key = kind.srtp.map(SrtpKey::random);
        let all = packets(args.streams, count, kind.codec, key.as_ref());
        let mut best = f64::MAX;
        for _ in 0..args.rounds.max(1) {
            best = best.min(through_shard(&all, kind.codec, kind.rate, key.as_ref()));
            floor = floor.min(parse_floor(&all));
        }
        eprintln!("  {}: {best:.0} ns/packet", kind.name);
        results.push((kind.name, best));
    }
    let reference = results[0].1;
    println!("\n== callvault bench media (in process, virtual time; {} streams)", args.streams);
    println!("floor (parse RTP only): {floor:.0} ns/packet");
    println!("{:<36} {:>10} {:>10} {:>10} {:>16}", "stream", "ns/packet", "vs G.711", "vs floor", "calls/core max");
    for (name, ns) in &results {
        // Two streams × 50 packets/s per call, at this cost alone.
        let per_core = 1e9 / ns / 100.0;
        println!("{name:<36} {ns:>10.0} {:>9.2}× {:>9.1}× {per_core:>16.0}", ns / reference, ns / floor);
    }
    Ok(())
}
