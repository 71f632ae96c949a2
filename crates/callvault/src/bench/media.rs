//! `callvault bench media`: the CPU cost per packet of the media path for
//! each kind of stream, in process and on virtual time (no sockets, no
//! load generator on the same cores): packets built beforehand go through
//! an ingest [`Shard`] exactly as the engine feeds it — SRTP check and
//! decrypt, receive and reorder, decode, the timeline. Figures are ratios
//! to plain G.711 measured in the same run, and to a floor: parsing the
//! same packets as RTP and nothing else.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::Codec;
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

/// The kinds of stream measured, plain G.711 first (the reference).
fn kinds() -> Vec<(&'static str, Option<SrtpSuite>)> {
    let mut k: Vec<(&str, Option<SrtpSuite>)> = vec![("G.711 (PCMU), plain RTP", None)];
    k.extend(SrtpSuite::ALL.iter().map(|s| (s.sdes_name(), Some(*s))));
    k
}

fn packets(streams: usize, count: u16, srtp: Option<&SrtpKey>) -> Vec<Vec<Vec<u8>>> {
    (0..streams)
        .map(|i| {
            let mut tx = srtp.map(SrtpSender::new);
            let ssrc = 0x1000 + i as u32;
            (0..count)
                .map(|seq| {
                    let tone: Vec<u8> = (0..160).map(|n| ((n * 7 + seq as usize) % 251) as u8).collect();
                    let plain = rtp_types::RtpPacketBuilder::new()
                        .payload_type(0)
                        .sequence_number(seq)
                        .timestamp(u32::from(seq) * 160)
                        .ssrc(ssrc)
                        .payload(tone.as_slice())
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
fn through_shard(all: &[Vec<Vec<u8>>], key: Option<&SrtpKey>) -> f64 {
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
                sample_rate: 8000,
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
            codecs: vec![(0, Codec::Pcmu)],
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
    for (name, suite) in kinds() {
        let key = suite.map(SrtpKey::random);
        let all = packets(args.streams, count, key.as_ref());
        let mut best = f64::MAX;
        for _ in 0..args.rounds.max(1) {
            best = best.min(through_shard(&all, key.as_ref()));
            floor = floor.min(parse_floor(&all));
        }
        eprintln!("  {name}: {best:.0} ns/packet");
        results.push((name, best));
    }
    let reference = results[0].1;
    println!("\n== callvault bench media (in process, virtual time; {} streams)", args.streams);
    println!("floor (parse RTP only): {floor:.0} ns/packet");
    println!("{:<28} {:>10} {:>12} {:>10}", "stream", "ns/packet", "vs G.711", "vs floor");
    for (name, ns) in &results {
        println!("{name:<28} {ns:>10.0} {:>11.2}× {:>9.1}×", ns / reference, ns / floor);
    }
    let per_core = 1e9 / reference / 50.0 / 2.0;
    println!("G.711 plain: one core ingests ~{per_core:.0} calls (2 streams × 50 packets/s) at this cost alone");
    Ok(())
}
