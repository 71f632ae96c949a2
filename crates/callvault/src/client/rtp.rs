//! The RTP pacer: one thread sends every stream of every call from one UDP
//! socket, a `sendmmsg` batch per 20 ms tick, on an absolute schedule (no
//! drift). Loss is injected by skipping packets (sequence numbers still
//! advance, as on a lossy network). RFC 4733 DTMF and RTCP sender reports
//! are sent too, so the recorder sees what real platforms send.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use media::signal::Tone;
use media::{Codec, EncoderOptions, StreamEncoder};
use media_engine::SendBatch;
use tokio::sync::oneshot;

/// What a stream plays.
#[derive(Debug, Clone)]
pub enum Source {
    Tone(f64),
    /// 8 kHz mono samples, looped.
    Samples(Arc<Vec<i16>>),
}

/// One outgoing stream.
#[derive(Debug, Clone)]
pub struct StreamPlan {
    pub dest: SocketAddr,
    pub rtcp_dest: Option<SocketAddr>,
    /// Codecs to send, each from its offset into the call (the first from
    /// 0): a sender switching among the answer's payload types mid-call.
    pub codecs: Vec<(Duration, Codec, u8)>,
    pub encoder: EncoderOptions,
    /// Loop one second of pre-encoded tone instead of encoding each packet.
    pub precoded: bool,
    pub telephone_event_pt: u8,
    pub source: Source,
    /// Probability of dropping each packet.
    pub loss: f64,
    /// Digits to send as RFC 4733 events, starting at this offset.
    pub dtmf: Option<(String, Duration)>,
    /// Pause for `.1` at offset `.0`, then go on without a gap in sequence
    /// numbers or timestamps: what a receiver sees when the network path
    /// gets slower by `.1` (a delay step).
    pub delay_step: Option<(Duration, Duration)>,
    /// After each audio packet, one of another SSRC (noise, far-off
    /// sequence numbers) from the same socket: a stray stream.
    pub stray_ssrc: bool,
    /// Encrypt RTP and RTCP with this key (SRTP).
    pub srtp: Option<rtp_core::srtp::SrtpKey>,
}

/// What a finished stream sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    pub packets: u64,
    pub dropped: u64,
}

enum Cmd {
    Start(u64, Vec<StreamPlan>),
    Stop(u64, oneshot::Sender<Vec<Sent>>),
}

/// Handle to the pacer thread.
#[derive(Clone)]
pub struct Pacer {
    tx: Sender<Cmd>,
    local: SocketAddr,
}

struct Live {
    plan: StreamPlan,
    ssrc: u32,
    seq: u16,
    ts: u32,
    tone: Option<Tone>,
    /// Samples played so far, at the current codec's rate.
    pos: usize,
    /// Index in `plan.codecs` of the codec sending now.
    current: usize,
    encoder: StreamEncoder,
    pcm: Vec<i16>,
    /// One second of the tone in the current codec (with `precoded`).
    looped: Option<Arc<Vec<Vec<u8>>>>,
    sent: Sent,
    dtmf: Vec<(char, u8)>,
    next_sr: Instant,
    octets: u32,
    /// Packets (20 ms slots) sent so far: DTMF is scheduled by slot, not by
    /// wall clock, so all packets of an event share one start timestamp.
    slot: u32,
    /// Ticks since the stream started, sent or not.
    ticks: u32,
    srtp: Option<rtp_core::srtp::SrtpSender>,
}

impl Pacer {
    pub fn start(bind: SocketAddr) -> std::io::Result<Pacer> {
        let sock = UdpSocket::bind(bind)?;
        let s2 = socket2::SockRef::from(&sock);
        let _ = s2.set_send_buffer_size(8 * 1024 * 1024);
        let local = sock.local_addr()?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("rtp-pacer".into()).spawn(move || run(sock, rx))?;
        Ok(Pacer { tx, local })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn play(&self, key: u64, streams: Vec<StreamPlan>) {
        let _ = self.tx.send(Cmd::Start(key, streams));
    }

    pub async fn stop(&self, key: u64) -> Vec<Sent> {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(key, tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }
}

fn run(sock: UdpSocket, rx: Receiver<Cmd>) {
    let mut calls: HashMap<u64, Vec<Live>> = HashMap::new();
    let mut batch = SendBatch::new(256);
    let mut payload = Vec::with_capacity(1500);
    let mut loops = Loops::default();
    let tick = Duration::from_millis(20);
    let mut next = Instant::now() + tick;
    loop {
        loop {
            match rx.try_recv() {
                Ok(Cmd::Start(key, plans)) => {
                    let now = Instant::now();
                    let live = plans
                        .into_iter()
                        .map(|plan| Live {
                            srtp: plan.srtp.as_ref().map(rtp_core::srtp::SrtpSender::new),
                            tone: match plan.source {
                                Source::Tone(f) => Some(Tone::new(f, plan.codecs[0].1.sample_rate(), 10000)),
                                Source::Samples(_) => None,
                            },
                            current: 0,
                            encoder: StreamEncoder::with_options(plan.codecs[0].1, plan.encoder),
                            pcm: vec![0; plan.codecs[0].1.sample_rate() as usize / 50],
                            looped: loops.get(&plan, plan.codecs[0].1),
                            dtmf: plan
                                .dtmf
                                .as_ref()
                                .map(|(d, _)| d.chars().filter_map(digit_code).collect())
                                .unwrap_or_default(),
                            plan,
                            ssrc: fastrand::u32(..),
                            seq: fastrand::u16(..),
                            ts: fastrand::u32(..),
                            pos: 0,
                            sent: Sent::default(),
                            next_sr: now + Duration::from_secs(2),
                            octets: 0,
                            slot: 0,
                            ticks: 0,
                        })
                        .collect();
                    calls.insert(key, live);
                }
                Ok(Cmd::Stop(key, reply)) => {
                    let sent = calls.remove(&key).map(|v| v.iter().map(|l| l.sent).collect()).unwrap_or_default();
                    let _ = reply.send(sent);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        for live in calls.values_mut().flat_map(|v| v.iter_mut()) {
            let tick_no = live.ticks;
            live.ticks += 1;
            if let Some((at, len)) = live.plan.delay_step {
                let (from, ticks) = ((at.as_millis() / 20) as u32, (len.as_millis() / 20) as u32);
                if (from..from + ticks).contains(&tick_no) {
                    continue;
                }
            }
            // Audio, or a DTMF event in its place: each digit takes 15 slots
            // (300 ms), the first 5 (100 ms) carry the RFC 4733 event.
            let slot = live.slot;
            live.slot += 1;
            let dtmf_slot = live.plan.dtmf.as_ref().and_then(|(_, at)| {
                let into = slot.checked_sub((at.as_millis() / 20) as u32)?;
                let idx = (into / 15) as usize;
                let within = (into % 15) * 20; // ms into the digit
                live.dtmf.get(idx).map(|&(_, code)| (idx, code, within))
            });
            if switch_codec(live, tick_no) {
                live.looped = loops.get(&live.plan, live.encoder.codec());
            }
            let rate = live.encoder.codec().sample_rate() as usize;
            let clock_ms = live.encoder.codec().clock_rate() / 1000;
            // A looped stream sends pre-encoded packets: no PCM to make.
            if live.looped.is_none() {
                match live.tone.as_mut() {
                    Some(t) => t.fill(&mut live.pcm),
                    None => {
                        if let Source::Samples(s) = &live.plan.source {
                            // 8 kHz material held for wider codecs (a test signal).
                            for p in live.pcm.iter_mut() {
                                *p = if s.is_empty() { 0 } else { s[(live.pos * 8000 / rate) % s.len()] };
                                live.pos += 1;
                            }
                        }
                    }
                }
            }
            let seq = live.seq;
            live.seq = live.seq.wrapping_add(1);
            let drop_it = live.plan.loss > 0.0 && fastrand::f64() < live.plan.loss;
            if let Some((_, code, within)) = dtmf_slot.filter(|(_, _, w)| *w < 100) {
                // Event packets carry the event's start timestamp (RFC 4733 §2.5.1.2).
                let start_ts = live.ts.wrapping_sub(within * clock_ms);
                let duration = ((within + 20) * clock_ms) as u16;
                let end = within + 20 >= 100;
                let ev = [code, if end { 0x80 | 10 } else { 10 }, (duration >> 8) as u8, duration as u8];
                let repeats = if end { 3 } else { 1 };
                let mut s = seq;
                for r in 0..repeats {
                    if r > 0 {
                        s = live.seq;
                        live.seq = live.seq.wrapping_add(1);
                    }
                    push_rtp(
                        &mut batch,
                        &sock,
                        live.srtp.as_mut(),
                        live.plan.dest,
                        live.plan.telephone_event_pt,
                        within == 0,
                        s,
                        start_ts,
                        live.ssrc,
                        &ev,
                    );
                }
                live.sent.packets += repeats;
            } else {
                // Encode even what the network will drop: the encoder's state
                // (Opus FEC of the previous frame) goes on as on a real path.
                match &live.looped {
                    Some(l) => {
                        payload.clear();
                        payload.extend_from_slice(&l[tick_no as usize % l.len()]);
                    }
                    None => live.encoder.encode(&live.pcm, &mut payload),
                }
                if payload.is_empty() {
                    // Silence suppressed (G.729 Annex B): nothing sent, and
                    // the sequence number is not used up.
                    live.seq = seq;
                } else if drop_it {
                    live.sent.dropped += 1;
                } else {
                    send_audio(live, &mut batch, &sock, seq, &payload);
                }
            }
            live.ts = live.ts.wrapping_add(live.encoder.frame_ticks(20));
            if let Some(rtcp) = live.plan.rtcp_dest {
                if now >= live.next_sr {
                    let sr =
                        rtp_core::rtcp::sender_report(live.ssrc, 0, live.ts, live.sent.packets as u32, live.octets);
                    match live.srtp.as_mut() {
                        None => batch_push(&mut batch, &sock, rtcp, &sr),
                        Some(tx) => {
                            if let Some(protected) = tx.rtcp(&sr) {
                                batch_push(&mut batch, &sock, rtcp, &protected);
                            }
                        }
                    }
                    live.next_sr = now + Duration::from_secs(5);
                }
            }
        }
        if !batch.is_empty() {
            let _ = batch.send(sock.as_raw_fd());
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        next += tick;
        let late = Instant::now().saturating_duration_since(next);
        if late > Duration::from_millis(200) {
            next = Instant::now() + tick; // overloaded: do not burst to catch up
        }
    }
}

/// One audio packet (and, with `stray_ssrc`, a stray one after it).
fn send_audio(live: &mut Live, batch: &mut SendBatch, sock: &UdpSocket, seq: u16, payload: &[u8]) {
    let pt = live.plan.codecs[live.current].2;

    push_rtp(batch, sock, live.srtp.as_mut(), live.plan.dest, pt, false, seq, live.ts, live.ssrc, payload);
    live.sent.packets += 1;
    if live.plan.stray_ssrc {
        let noise: Vec<u8> = (0..payload.len()).map(|_| fastrand::u8(..)).collect();
        let (stray_seq, stray_ts) = (seq.wrapping_add(20_000), live.ts.wrapping_add(3_000_000));
        let ssrc = live.ssrc ^ 0x5a5a_5a5a;
        push_rtp(batch, sock, None, live.plan.dest, pt, false, stray_seq, stray_ts, ssrc, &noise);
    }
    live.octets = live.octets.wrapping_add(payload.len() as u32);
}

/// Pre-encoded seconds of tone, shared by every stream playing the same
/// tone in the same codec (with `--precoded`).
#[derive(Default)]
struct Loops(HashMap<(Codec, u64), Arc<Vec<Vec<u8>>>>);

impl Loops {
    fn get(&mut self, plan: &StreamPlan, codec: Codec) -> Option<Arc<Vec<Vec<u8>>>> {
        let Source::Tone(f) = plan.source else { return None };
        if !plan.precoded {
            return None;
        }
        let entry = self.0.entry((codec, f.to_bits())).or_insert_with(|| {
            let mut enc = StreamEncoder::with_options(codec, plan.encoder);
            let mut tone = Tone::new(f, codec.sample_rate(), 10000);
            let mut pcm = vec![0; enc.frame_samples(20)];
            let packets = (0..50)
                .map(|_| {
                    tone.fill(&mut pcm);
                    let mut p = Vec::new();
                    enc.encode(&pcm, &mut p);
                    p
                })
                .collect();
            Arc::new(packets)
        });
        Some(entry.clone())
    }
}

/// Moves `live` to the codec its plan names for this 20 ms tick. The
/// SSRC, sequence and timestamp counters go on (the timestamp in the new
/// codec's clock from then on), as senders that switch payload type do.
fn switch_codec(live: &mut Live, tick_no: u32) -> bool {
    let at = Duration::from_millis(tick_no as u64 * 20);
    let want = live.plan.codecs.iter().rposition(|(from, _, _)| *from <= at).unwrap_or(0);
    if want == live.current {
        return false;
    }
    let old_rate = live.encoder.codec().sample_rate() as usize;
    let codec = live.plan.codecs[want].1;
    live.current = want;
    live.encoder = StreamEncoder::with_options(codec, live.plan.encoder);
    live.pcm = vec![0; codec.sample_rate() as usize / 50];
    live.pos = live.pos * codec.sample_rate() as usize / old_rate;
    if let Source::Tone(f) = live.plan.source {
        live.tone = Some(Tone::new(f, codec.sample_rate(), 10000));
    }
    true
}

fn batch_push(batch: &mut SendBatch, sock: &UdpSocket, dest: SocketAddr, data: &[u8]) {
    if batch.is_full() {
        let _ = batch.send(sock.as_raw_fd());
    }
    batch.push(dest, |buf| {
        buf[..data.len()].copy_from_slice(data);
        data.len()
    });
}

#[allow(clippy::too_many_arguments)]
fn push_rtp(
    batch: &mut SendBatch,
    sock: &UdpSocket,
    srtp: Option<&mut rtp_core::srtp::SrtpSender>,
    dest: SocketAddr,
    pt: u8,
    marker: bool,
    seq: u16,
    ts: u32,
    ssrc: u32,
    payload: &[u8],
) {
    let packet = rtp_types::RtpPacketBuilder::new()
        .payload_type(pt)
        .marker_bit(marker)
        .sequence_number(seq)
        .timestamp(ts)
        .ssrc(ssrc)
        .payload(payload);
    match srtp {
        None => {
            if batch.is_full() {
                let _ = batch.send(sock.as_raw_fd());
            }
            batch.push(dest, |buf| packet.write_into(buf).unwrap_or(0));
        }
        Some(tx) => {
            let Ok(plain) = packet.write_vec() else { return };
            if let Some(protected) = tx.rtp(&plain) {
                batch_push(batch, sock, dest, &protected);
            }
        }
    }
}

fn digit_code(c: char) -> Option<(char, u8)> {
    let code = match c {
        '0'..='9' => c as u8 - b'0',
        '*' => 10,
        '#' => 11,
        'A'..='D' => c as u8 - b'A' + 12,
        _ => return None,
    };
    Some((c, code))
}

/// Loads a WAV file as 8 kHz mono (first channel, linear resampling).
pub fn load_wav(path: &std::path::Path) -> anyhow::Result<Vec<i16>> {
    let mut r = hound::WavReader::open(path)?;
    let spec = r.spec();
    let ch = spec.channels.max(1) as usize;
    let raw: Vec<i32> = match spec.sample_format {
        hound::SampleFormat::Int => r.samples::<i32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Float => {
            r.samples::<f32>().map(|s| s.map(|v| (v * 32767.0) as i32)).collect::<Result<_, _>>()?
        }
    };
    let shift = spec.bits_per_sample.saturating_sub(16) as u32;
    let mono: Vec<i16> = raw
        .chunks(ch)
        .map(|f| {
            let v = if spec.sample_format == hound::SampleFormat::Int { f[0] >> shift } else { f[0] };
            v.clamp(i16::MIN as i32, i16::MAX as i32) as i16
        })
        .collect();
    if spec.sample_rate == 8000 || mono.is_empty() {
        return Ok(mono);
    }
    let ratio = spec.sample_rate as f64 / 8000.0;
    let n = (mono.len() as f64 / ratio) as usize;
    Ok((0..n)
        .map(|i| {
            let x = i as f64 * ratio;
            let j = x as usize;
            let frac = x - j as f64;
            let a = mono[j] as f64;
            let b = *mono.get(j + 1).unwrap_or(&mono[j]) as f64;
            (a + (b - a) * frac) as i16
        })
        .collect())
}
