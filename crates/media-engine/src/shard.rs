//! One ingest shard as a pure state machine: the recordings and streams of
//! one ingest thread, without its sockets, clock or threads.
//!
//! ## Driver contract
//! The driver ([`crate::engine`]) owns the sockets. It feeds commands with
//! [`Shard::command`] (for [`MediaCommand::AddStream`] it first takes the
//! port's sockets and then calls [`Shard::add_stream`], which names the
//! *slot* under which the driver watches them), datagrams with
//! [`Shard::on_rtp`] / [`Shard::on_rtcp`], calls [`Shard::tick`] every tick,
//! returns written buffers with [`Shard::recycle`], and after every input
//! drains [`Shard::poll_output`]: file work for the writer thread, notices
//! for the recorder core, and [`ShardOutput::Release`] when a slot's
//! sockets are to be closed. `now` is always an argument, so tests run on
//! virtual time.
//!
//! ## Memory
//! Everything here is per recording or per stream and goes when the
//! recording stops: the slot tables keep only their free lists, and the
//! pool of commit buffers is capped ([`BufferPool`]), so a writer that lags
//! for a while does not leave its backlog's worth of buffers behind for
//! the life of the process.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use media::wav::WavFormat;
use media::{Codec, PositionMapper, Slack, StreamDecoder, Timeline};
use media_control::{MediaCommand, MediaNotice, StreamId, StreamSpec};
use model::{DtmfRecord, RecordingId, RecordingMeta, StreamStats};
use rtp_core::{Accept, DtmfDetector, ReceiverConfig, Slot, StreamReceiver};

/// Timing of a shard (see [`crate::EngineConfig`] for the meaning).
#[derive(Debug, Clone, Copy)]
pub struct ShardConfig {
    pub playout_delay: Duration,
    pub commit_interval: Duration,
    pub window: Duration,
    pub media_timeout: Duration,
    /// A stream without any RTP this long after it started is reported
    /// ([`MediaNotice::NoRtp`]).
    pub no_rtp_alarm: Duration,
    pub receiver: ReceiverConfig,
    /// Spare commit buffers kept for reuse (beyond this they are freed).
    pub spare_buffers: usize,
}

impl Default for ShardConfig {
    /// The engine's defaults ([`crate::EngineConfig::new`]).
    fn default() -> Self {
        ShardConfig {
            playout_delay: Duration::from_millis(200),
            commit_interval: Duration::from_millis(200),
            window: Duration::from_millis(1500),
            media_timeout: Duration::from_secs(30),
            no_rtp_alarm: Duration::from_secs(10),
            receiver: ReceiverConfig::default(),
            spare_buffers: 256,
        }
    }
}

/// Something for the driver to do.
#[derive(Debug)]
pub enum ShardOutput {
    /// Create the recording's spool WAV with this header.
    Open { id: RecordingId, header: Vec<u8> },
    /// Append committed PCM (give the buffer back with [`Shard::recycle`]).
    Append { id: RecordingId, data: Vec<u8> },
    /// All audio was committed: sync and close the file, then archive.
    Close { id: RecordingId, meta: Box<RecordingMeta> },
    /// For the recorder core.
    Notice(MediaNotice),
    /// The stream in this slot is gone: close and forget its sockets.
    Release { slot: usize },
}

/// Counters kept in plain integers on the hot path.
#[derive(Debug, Default, Clone)]
pub struct ShardCounters {
    pub packets: u64,
    pub bytes: u64,
    pub dtmf: u64,
    pub late_samples: u64,
    /// Loss of streams that have ended.
    pub finished_lost: u64,
    /// Other counters of streams that have ended.
    pub finished: StreamStats,
}

/// Counters of live streams plus those of ended ones, and live sizes.
#[derive(Debug, Default, Clone)]
pub struct ShardStats {
    pub counters: ShardCounters,
    pub live_lost: u64,
    pub live: StreamStats,
    pub streams: usize,
    pub recordings: usize,
}

/// How many entries each per-call structure holds, for tests and
/// diagnostics: all zero once every recording has stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ShardSizes {
    pub streams: usize,
    pub stream_ids: usize,
    pub recordings: usize,
    pub recording_ids: usize,
    pub outputs: usize,
}

struct StreamState {
    id: StreamId,
    rec: usize,
    local_port: u16,
    receiver: StreamReceiver,
    /// Where released packets go (apart from the receiver, which lends them).
    decode: Decode,
    held: bool,
    /// Reference for inactivity: last packet, or when the stream (re)started.
    active_since: Instant,
    no_rtp_reported: bool,
    /// Decrypts SRTP before the receiver sees a packet.
    srtp: Option<(rtp_core::srtp::SrtpKey, rtp_core::srtp::SrtpReceiver)>,
}

/// How a stream's packets become audio on its channel.
struct Decode {
    channel: u8,
    codecs: [Option<Codec>; 128],
    telephone_event: Option<u8>,
    mapper: PositionMapper,
    dtmf: DtmfDetector,
    /// Highest absolute sample decoded so far.
    peak: u16,
    /// Codec state, and conversion to the recording's rate.
    decoder: StreamDecoder,
    /// The last packet decoded, to spot a single Opus loss FEC can fill.
    last: Option<Decoded>,
    codecs_used: Vec<model::CodecSpan>,
    fec_recovered: u64,
}

#[derive(Clone, Copy)]
struct Decoded {
    seq: u64,
    /// RTP timestamp just after the packet's audio.
    end_ts: u64,
    codec: Codec,
}

struct Rec {
    id: RecordingId,
    timeline: Timeline,
    start: Instant,
    rate: u32,
    streams: Vec<usize>,
    next_commit: Instant,
    /// Highest frame any packet was written to (for the final commit).
    max_frame: u64,
    finished: Vec<(u16, StreamStats)>,
    dtmf: Vec<DtmfRecord>,
    inactivity_reported: bool,
}

impl Rec {
    fn frame_at(&self, t: Instant) -> u64 {
        (t.saturating_duration_since(self.start).as_nanos() * self.rate as u128 / 1_000_000_000) as u64
    }
}

/// Commit buffers for reuse, capped in count and in the size of each, so
/// the pool is what steady state needs and never what a backlog once did.
#[derive(Debug)]
pub struct BufferPool {
    spare: Vec<Vec<u8>>,
    max_count: usize,
    max_capacity: usize,
}

impl BufferPool {
    pub fn new(max_count: usize, max_capacity: usize) -> BufferPool {
        BufferPool { spare: Vec::new(), max_count, max_capacity }
    }

    pub fn take(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Keeps `buf` for reuse unless the pool is full or it grew unusually large.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < self.max_count && buf.capacity() <= self.max_capacity {
            buf.clear();
            self.spare.push(buf);
        }
    }

    pub fn len(&self) -> usize {
        self.spare.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spare.is_empty()
    }
}

/// Slots with a free list: indexes stay stable while occupied (they are the
/// driver's poll tokens) and are reused after release.
struct Slots<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slots<T> {
    fn new() -> Slots<T> {
        Slots { items: Vec::new(), free: Vec::new() }
    }

    fn insert(&mut self, item: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.items[i] = Some(item);
                i
            }
            None => {
                self.items.push(Some(item));
                self.items.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<T> {
        let item = self.items.get_mut(i)?.take()?;
        self.free.push(i);
        Some(item)
    }

    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i).and_then(Option::as_mut)
    }

    fn occupied(&self) -> usize {
        self.items.len() - self.free.len()
    }
}

/// The recordings and streams of one ingest thread. See the module docs.
pub struct Shard {
    cfg: ShardConfig,
    streams: Slots<StreamState>,
    by_stream_id: HashMap<StreamId, usize>,
    recs: Slots<Rec>,
    by_rec_id: HashMap<RecordingId, usize>,
    scratch: Vec<i16>,
    pool: BufferPool,
    local: ShardCounters,
    out: VecDeque<ShardOutput>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard").field("sizes", &self.sizes()).finish()
    }
}

/// A commit buffer holds at most one commit interval of audio, except the
/// last commit of a recording (up to its window); larger ones are not kept.
fn max_buffer_bytes(cfg: &ShardConfig) -> usize {
    // 48 kHz, 2 channels, 16 bit, for a whole window: generous for telephony.
    (cfg.window.as_millis() as usize * 48 * 2 * 2).max(64 * 1024)
}

impl Shard {
    pub fn new(cfg: ShardConfig) -> Shard {
        Shard {
            pool: BufferPool::new(cfg.spare_buffers, max_buffer_bytes(&cfg)),
            cfg,
            streams: Slots::new(),
            by_stream_id: HashMap::new(),
            recs: Slots::new(),
            by_rec_id: HashMap::new(),
            scratch: vec![0; media::decoder::MAX_PACKET_SAMPLES],
            local: ShardCounters::default(),
            out: VecDeque::new(),
        }
    }

    pub fn poll_output(&mut self) -> Option<ShardOutput> {
        self.out.pop_front()
    }

    /// A buffer the writer is done with.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.pool.give(buf);
    }

    pub fn spare_buffers(&self) -> usize {
        self.pool.len()
    }

    pub fn sizes(&self) -> ShardSizes {
        ShardSizes {
            streams: self.streams.occupied(),
            stream_ids: self.by_stream_id.len(),
            recordings: self.recs.occupied(),
            recording_ids: self.by_rec_id.len(),
            outputs: self.out.len(),
        }
    }

    /// Counters of ended and live streams.
    pub fn stats(&self) -> ShardStats {
        let mut s = ShardStats {
            counters: self.local.clone(),
            streams: self.by_stream_id.len(),
            recordings: self.by_rec_id.len(),
            ..ShardStats::default()
        };
        for st in self.streams.items.iter().flatten() {
            s.live_lost += st.receiver.stats.lost;
            add_stats(&mut s.live, &st.receiver.stats);
        }
        s
    }

    /// Handles every command but [`MediaCommand::AddStream`], which needs
    /// the driver's sockets first ([`Shard::add_stream`]).
    pub fn command(&mut self, now: Instant, cmd: MediaCommand) {
        match cmd {
            MediaCommand::Start { recording, sample_rate, channels, .. } => {
                self.start(now, recording, sample_rate, channels)
            }
            MediaCommand::AddStream(spec) => {
                tracing::error!(stream = spec.id.0, "stream added without sockets");
            }
            MediaCommand::Answered { recording } => {
                let commit = self.cfg.commit_interval;
                let rec = self.by_rec_id.get(&recording).and_then(|&r| self.recs.get_mut(r));
                if let Some(rec) = rec.filter(|r| r.max_frame == 0 && r.timeline.committed() == 0) {
                    rec.start = now;
                    rec.next_commit = now + commit;
                }
            }
            MediaCommand::UpdateStream(spec) => self.update_stream(now, spec),
            MediaCommand::RemoveStream { stream, .. } => {
                if let Some(idx) = self.by_stream_id.get(&stream).copied() {
                    self.remove_stream(idx);
                }
            }
            MediaCommand::Dtmf { recording, digit, duration_ms, channel } => {
                if let Some(rec) = self.by_rec_id.get(&recording).and_then(|&r| self.recs.get_mut(r)) {
                    let at_ms = rec.frame_at(now) * 1000 / rec.rate as u64;
                    rec.dtmf.push(DtmfRecord { at_ms, digit, duration_ms, channel, source: "info".into() });
                    self.local.dtmf += 1;
                }
            }
            MediaCommand::Stop { recording, meta } => self.stop(now, recording, meta),
        }
    }

    fn start(&mut self, now: Instant, id: RecordingId, rate: u32, channels: u16) {
        let window = (self.cfg.window.as_millis() as u64 * rate as u64 / 1000) as usize;
        let rec = Rec {
            id,
            timeline: Timeline::new(rate, channels as usize, window),
            start: now,
            rate,
            streams: Vec::new(),
            next_commit: now + self.cfg.commit_interval,
            max_frame: 0,
            finished: Vec::new(),
            dtmf: Vec::new(),
            inactivity_reported: false,
        };
        if let Some(old) = self.by_rec_id.insert(id, self.recs.insert(rec)) {
            // A duplicate start would orphan the first slot; keep one.
            tracing::error!(recording = %id, "recording started twice");
            self.recs.remove(old);
        }
        let header = WavFormat { sample_rate: rate, channels }.header(0);
        self.out.push_back(ShardOutput::Open { id, header });
    }

    /// Adds a stream whose sockets the driver holds; returns the slot to
    /// watch them under, or `None` (the driver closes them) when the
    /// recording is unknown here.
    pub fn add_stream(&mut self, now: Instant, spec: StreamSpec) -> Option<usize> {
        let Some(&rec_idx) = self.by_rec_id.get(&spec.recording) else {
            tracing::warn!(stream = spec.id.0, "stream for unknown recording");
            return None;
        };
        if let Some(old) = self.by_stream_id.get(&spec.id).copied() {
            self.remove_stream(old);
        }
        let rate = self.recs.get_mut(rec_idx).expect("indexed recording exists").rate;
        let clock = spec.codecs.first().map(|(_, c)| c.clock_rate()).unwrap_or(8000);
        let slack = Slack::for_playout(rate, self.cfg.playout_delay.as_millis() as u64);
        let stream = StreamState {
            id: spec.id,
            rec: rec_idx,
            local_port: spec.port.rtp,
            receiver: StreamReceiver::new(self.cfg.receiver, clock, &spec.payload_types(), now),
            decode: Decode {
                channel: spec.channel,
                codecs: codec_table(&spec),
                telephone_event: spec.telephone_event,
                mapper: PositionMapper::new(rate, clock, slack),
                dtmf: DtmfDetector::default(),
                peak: 0,
                decoder: StreamDecoder::new(rate),
                last: None,
                codecs_used: Vec::new(),
                fec_recovered: 0,
            },
            held: spec.held,
            active_since: now,
            no_rtp_reported: false,
            srtp: spec.srtp.as_ref().map(|k| (k.clone(), rtp_core::srtp::SrtpReceiver::new(k))),
        };
        let idx = self.streams.insert(stream);
        self.by_stream_id.insert(spec.id, idx);
        self.recs.get_mut(rec_idx).expect("indexed recording exists").streams.push(idx);
        Some(idx)
    }

    /// The driver could not watch the sockets of `slot`: forget the stream.
    pub fn abandon_stream(&mut self, slot: usize) {
        self.remove_stream(slot);
    }

    fn update_stream(&mut self, now: Instant, spec: StreamSpec) {
        let Some(&idx) = self.by_stream_id.get(&spec.id) else { return };
        let s = self.streams.get_mut(idx).expect("indexed stream exists");
        s.decode.codecs = codec_table(&spec);
        s.decode.telephone_event = spec.telephone_event;
        s.receiver.set_payload_types(&spec.payload_types());
        if s.held && !spec.held {
            s.active_since = now; // resumed: the inactivity clock restarts
        }
        s.held = spec.held;
        s.decode.channel = spec.channel;
        // A new key (re-keying in a re-INVITE) starts a new SRTP context;
        // the same key keeps the one running (its rollover counter).
        if s.srtp.as_ref().map(|(k, _)| k) != spec.srtp.as_ref() {
            s.srtp = spec.srtp.as_ref().map(|k| (k.clone(), rtp_core::srtp::SrtpReceiver::new(k)));
        }
    }

    fn remove_stream(&mut self, idx: usize) {
        let Some(mut s) = self.streams.remove(idx) else { return };
        self.by_stream_id.remove(&s.id);
        self.out.push_back(ShardOutput::Release { slot: idx });
        if let Some(rec) = self.recs.get_mut(s.rec) {
            // Whatever still waits in the reorder window is audio too.
            while let Some(slot) = s.receiver.pop_any() {
                place(slot, rec, &mut s.decode, &mut self.scratch, &mut self.local);
            }
            let d = &mut s.decode;
            if let Some(ev) = d.dtmf.flush() {
                push_dtmf(rec, &ev, &d.mapper, s.receiver.clock_rate(), d.channel, &mut self.local);
            }
            rec.streams.retain(|&i| i != idx);
            let mut stats = s.receiver.stats.clone();
            stats.reanchors = s.decode.mapper.reanchors;
            stats.timeline_shifts = s.decode.mapper.drift_shifts;
            stats.peak = s.decode.peak;
            stats.codecs_used = std::mem::take(&mut s.decode.codecs_used);
            stats.fec_recovered = s.decode.fec_recovered;
            stats.decode_failures = s.decode.decoder.failures;
            rec.finished.push((s.local_port, stats));
        }
        self.local.finished_lost += s.receiver.stats.lost;
        add_stats(&mut self.local.finished, &s.receiver.stats);
    }

    fn stop(&mut self, now: Instant, id: RecordingId, mut meta: Box<RecordingMeta>) {
        let Some(r) = self.by_rec_id.remove(&id) else {
            // Never started here (e.g. refused): pass the metadata on untouched.
            self.out.push_back(ShardOutput::Close { id, meta });
            return;
        };
        let streams = self.recs.get_mut(r).expect("indexed recording exists").streams.clone();
        for s in streams {
            self.remove_stream(s);
        }
        let mut rec = self.recs.remove(r).expect("indexed recording exists");
        let end = rec.frame_at(now).max(rec.max_frame);
        self.commit(&mut rec, end);
        for (port, stats) in rec.finished.drain(..) {
            if let Some(sr) = meta.streams.iter_mut().find(|s| s.local_port == port) {
                sr.stats = stats;
            }
        }
        rec.dtmf.sort_by_key(|d| d.at_ms);
        meta.dtmf.append(&mut rec.dtmf);
        let finals: Vec<StreamStats> = meta.streams.iter().map(|s| s.stats.clone()).collect();
        meta.media_alarm = model::MediaAlarm::judge(&finals);
        meta.duration_ms = rec.timeline.committed() * 1000 / rec.rate as u64;
        self.out.push_back(ShardOutput::Close { id, meta });
    }

    fn commit(&mut self, rec: &mut Rec, upto: u64) {
        let mut buf = self.pool.take();
        rec.timeline.commit(upto, &mut buf);
        if buf.is_empty() {
            self.pool.give(buf);
        } else {
            self.out.push_back(ShardOutput::Append { id: rec.id, data: buf });
        }
    }

    /// One RTP datagram for the stream in `slot`.
    pub fn on_rtp(&mut self, now: Instant, slot: usize, from: SocketAddr, data: &[u8]) {
        let Some(s) = self.streams.get_mut(slot) else { return };
        let Some(rec) = self.recs.get_mut(s.rec) else { return };
        let decrypted;
        let data = match &mut s.srtp {
            None => data,
            Some((_, rx)) => {
                let unprotected = if rtp_core::rtcp::is_rtcp(data) { rx.rtcp(data) } else { rx.rtp(data) };
                match unprotected {
                    Ok(plain) => {
                        decrypted = plain;
                        &decrypted[..]
                    }
                    Err(rtp_core::srtp::SrtpDrop::Authentication) => {
                        s.receiver.stats.srtp_auth_failures += 1;
                        return;
                    }
                    Err(rtp_core::srtp::SrtpDrop::Replay) => {
                        s.receiver.stats.duplicates += 1;
                        return;
                    }
                    Err(rtp_core::srtp::SrtpDrop::Invalid) => {
                        s.receiver.stats.malformed += 1;
                        return;
                    }
                }
            }
        };
        // Jitter is measured in the RTP clock of the codec this packet uses.
        let pt = data.get(1).map_or(0, |b| b & 0x7f);
        if let Some(codec) = s.decode.codecs[pt as usize] {
            s.receiver.set_clock_rate(codec.clock_rate());
        }
        let mut outcome = s.receiver.on_rtp(now, from, data);
        if outcome == Accept::Restart {
            while let Some(p) = s.receiver.pop_any() {
                place(p, rec, &mut s.decode, &mut self.scratch, &mut self.local);
            }
            s.receiver.restart();
            s.decode.mapper.reset();
            outcome = s.receiver.on_rtp(now, from, data);
        }
        if outcome == Accept::Queued {
            self.local.packets += 1;
            self.local.bytes += data.len() as u64;
            while let Some(p) = s.receiver.pop(now) {
                place(p, rec, &mut s.decode, &mut self.scratch, &mut self.local);
            }
        }
    }

    /// One RTCP datagram for the stream in `slot`.
    pub fn on_rtcp(&mut self, now: Instant, slot: usize, from: SocketAddr, data: &[u8]) {
        let Some(s) = self.streams.get_mut(slot) else { return };
        match &mut s.srtp {
            None => s.receiver.on_rtcp(now, from, data),
            Some((_, rx)) => match rx.rtcp(data) {
                Ok(plain) => s.receiver.on_rtcp(now, from, &plain),
                Err(rtp_core::srtp::SrtpDrop::Authentication) => s.receiver.stats.srtp_auth_failures += 1,
                Err(_) => s.receiver.stats.malformed += 1,
            },
        }
    }

    /// A datagram longer than the receive buffer: counted, not used.
    pub fn on_truncated(&mut self, slot: usize) {
        if let Some(s) = self.streams.get_mut(slot) {
            s.receiver.stats.malformed += 1;
        }
    }

    /// Releases packets whose reorder wait is over, commits audio older
    /// than the playout delay, and reports media inactivity.
    pub fn tick(&mut self, now: Instant) {
        let playout = self.cfg.playout_delay;
        for r in 0..self.recs.items.len() {
            let Some(mut rec) = self.recs.items[r].take() else { continue };
            let mut any_active = false;
            let mut latest = None::<Instant>;
            for k in 0..rec.streams.len() {
                let Some(s) = self.streams.get_mut(rec.streams[k]) else { continue };
                while let Some(p) = s.receiver.pop(now) {
                    place(p, &mut rec, &mut s.decode, &mut self.scratch, &mut self.local);
                }
                if !s.held {
                    any_active = true;
                    if !s.no_rtp_reported
                        && s.receiver.stats.packets == 0
                        && now.saturating_duration_since(s.active_since) >= self.cfg.no_rtp_alarm
                    {
                        s.no_rtp_reported = true;
                        self.out.push_back(ShardOutput::Notice(MediaNotice::NoRtp { recording: rec.id, stream: s.id }));
                    }
                    let last = s.receiver.last_packet().map_or(s.active_since, |p| p.max(s.active_since));
                    latest = Some(latest.map_or(last, |l: Instant| l.max(last)));
                }
            }
            if now >= rec.next_commit {
                let upto = rec.frame_at(now.checked_sub(playout).unwrap_or(rec.start));
                self.commit(&mut rec, upto);
                rec.next_commit = now + self.cfg.commit_interval;
            }
            if any_active && !rec.inactivity_reported {
                if let Some(last) = latest {
                    if now.saturating_duration_since(last) >= self.cfg.media_timeout {
                        rec.inactivity_reported = true;
                        self.out.push_back(ShardOutput::Notice(MediaNotice::Inactive { recording: rec.id }));
                    }
                }
            } else if !any_active {
                rec.inactivity_reported = false;
            }
            self.recs.items[r] = Some(rec);
        }
    }
}

fn codec_table(spec: &StreamSpec) -> [Option<Codec>; 128] {
    let mut t = [None; 128];
    for (pt, c) in &spec.codecs {
        if (*pt as usize) < 128 {
            t[*pt as usize] = Some(*c);
        }
    }
    t
}

fn add_stats(into: &mut StreamStats, s: &StreamStats) {
    into.rtcp_packets += s.rtcp_packets;
    into.malformed += s.malformed;
    into.foreign += s.foreign;
    into.foreign_ssrc += s.foreign_ssrc;
    into.srtp_auth_failures += s.srtp_auth_failures;
    into.unknown_payload += s.unknown_payload;
    into.duplicates += s.duplicates;
    into.late += s.late;
}

/// A released packet: decoded onto the timeline, or a DTMF event.
fn place(p: &Slot, rec: &mut Rec, s: &mut Decode, scratch: &mut [i16], local: &mut ShardCounters) {
    if Some(p.pt) == s.telephone_event {
        if let Some(ev) = s.dtmf.on_packet(p.ts, &p.payload) {
            push_dtmf(rec, &ev, &s.mapper, s.mapper.clock_rate(), s.channel, local);
        }
        return;
    }
    let Some(codec) = s.codecs.get(p.pt as usize).copied().flatten() else {
        return; // comfort noise or a type without audio: the gap stays silent
    };
    if s.mapper.clock_rate() != codec.clock_rate() {
        s.mapper.set_clock(codec.clock_rate());
        s.last = None;
    }
    let arrival = rec.frame_at(p.arrival);
    let pos = s.mapper.position(p.ts, arrival);
    if codec == Codec::Opus {
        recover_single_loss(p, pos, rec, s, scratch);
    }
    let n = s.decoder.decode(codec, &p.payload, scratch);
    s.peak = scratch[..n].iter().fold(s.peak, |m, v| m.max(v.unsigned_abs()));
    let placed = rec.timeline.write(s.channel as usize, pos, &scratch[..n]);
    local.late_samples += placed.late as u64;
    rec.max_frame = rec.max_frame.max(pos + n as u64);
    let ticks = n as u64 * codec.clock_rate() as u64 / rec.rate as u64;
    s.last = Some(Decoded { seq: p.seq, end_ts: p.ts + ticks, codec });
    note_codec(&mut s.codecs_used, codec, pos * 1000 / rec.rate as u64, (pos + n as u64) * 1000 / rec.rate as u64);
}

/// Exactly one Opus packet missing before `p`: rebuild it from the
/// in-band FEC `p` carries and place it just before `p`'s audio.
fn recover_single_loss(p: &Slot, pos: u64, rec: &mut Rec, s: &mut Decode, scratch: &mut [i16]) {
    let Some(last) = s.last else { return };
    if last.codec != Codec::Opus || p.seq != last.seq + 2 || p.ts <= last.end_ts {
        return;
    }
    let n = s.decoder.recover_opus(&p.payload, p.ts - last.end_ts, scratch);
    if n == 0 || (n as u64) > pos {
        return;
    }
    rec.timeline.write(s.channel as usize, pos - n as u64, &scratch[..n]);
    s.fec_recovered += 1;
}

/// Extends the current codec span, or starts one when the codec changed.
fn note_codec(spans: &mut Vec<model::CodecSpan>, codec: Codec, from_ms: u64, to_ms: u64) {
    match spans.last_mut() {
        Some(span) if span.codec == codec.name() => {
            span.to_ms = span.to_ms.max(to_ms);
            span.packets += 1;
        }
        _ => spans.push(model::CodecSpan { codec: codec.name().to_owned(), from_ms, to_ms, packets: 1 }),
    }
}

fn push_dtmf(
    rec: &mut Rec,
    ev: &rtp_core::DtmfEvent,
    mapper: &PositionMapper,
    clock: u32,
    channel: u8,
    local: &mut ShardCounters,
) {
    // Events share the stream's timestamp clock: map the start like audio
    // (without moving the anchor); before any audio, use the newest frame.
    let frame = mapper.predict(ev.start_ts).unwrap_or(rec.max_frame);
    rec.dtmf.push(DtmfRecord {
        at_ms: frame * 1000 / rec.rate as u64,
        digit: ev.digit,
        duration_ms: ev.duration * 1000 / clock.max(1),
        channel,
        source: "rtp".into(),
    });
    local.dtmf += 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use media_control::MediaPort;
    use model::{NodeId, SourceKind, StreamRecord};
    use time::OffsetDateTime;

    fn config(spare: usize) -> ShardConfig {
        ShardConfig { spare_buffers: spare, ..Default::default() }
    }

    fn spec(id: u64, recording: RecordingId, port: u16, channel: u8) -> StreamSpec {
        StreamSpec {
            id: StreamId(id),
            recording,
            port: MediaPort { rtp: port, rtcp: port + 1 },
            channel,
            label: None,
            codecs: vec![(0, Codec::Pcmu)],
            telephone_event: None,
            comfort_noise: None,
            remote: None,
            rtcp_mux: false,
            held: false,
            srtp: None,
        }
    }

    fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&ts.to_be_bytes());
        p[8..12].copy_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xff; 160]);
        p
    }

    fn meta(id: RecordingId, ports: &[u16]) -> Box<RecordingMeta> {
        let now = OffsetDateTime::now_utc();
        let mut m = RecordingMeta::start(id, NodeId("t".into()), SourceKind::Plain, now, String::new(), "test");
        m.streams = ports.iter().map(|p| StreamRecord { local_port: *p, ..Default::default() }).collect();
        Box::new(m)
    }

    /// A second of two 20 ms streams on virtual time lands as a second of
    /// stereo audio, with every packet counted, and nothing stays behind.
    /// A shard with one stereo recording of two streams (ports 30000 and
    /// 30002) started at `t0`: the shard, the recording, the two slots.
    fn stereo_call(t0: Instant) -> (Shard, RecordingId, usize, usize) {
        let mut shard = Shard::new(config(4));
        let id = RecordingId::new(OffsetDateTime::now_utc());
        let start = MediaCommand::Start {
            recording: id,
            sample_rate: 8000,
            channels: 2,
            started_at: OffsetDateTime::now_utc(),
        };
        shard.command(t0, start);
        let a = shard.add_stream(t0, spec(1, id, 30000, 0)).unwrap();
        let b = shard.add_stream(t0, spec(2, id, 30002, 1)).unwrap();
        (shard, id, a, b)
    }

    #[test]
    fn a_call_on_virtual_time_is_written_whole_and_forgotten() {
        let t0 = Instant::now();
        let (mut shard, id, a, b) = stereo_call(t0);
        assert_ne!(a, b);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut bytes = 0usize;
        let drain = |shard: &mut Shard, bytes: &mut usize| {
            let mut closed = None;
            while let Some(o) = shard.poll_output() {
                match o {
                    ShardOutput::Append { data, .. } => {
                        *bytes += data.len();
                        shard.recycle(data);
                    }
                    ShardOutput::Close { meta, .. } => closed = Some(meta),
                    _ => {}
                }
            }
            closed
        };
        for i in 0..50u16 {
            let now = t0 + Duration::from_millis(20 * i as u64);
            shard.on_rtp(now, a, from, &rtp(i, i as u32 * 160, 1));
            shard.on_rtp(now, b, from, &rtp(i, i as u32 * 160, 2));
            shard.tick(now);
            drain(&mut shard, &mut bytes);
        }
        let end = t0 + Duration::from_millis(1000);
        shard.tick(end);
        shard.command(end, MediaCommand::Stop { recording: id, meta: meta(id, &[30000, 30002]) });
        let closed = drain(&mut shard, &mut bytes).expect("closed");
        assert_eq!(bytes, 8000 * 2 * 2, "one second of 8 kHz stereo 16-bit");
        assert_eq!(closed.duration_ms, 1000);
        assert!(closed.streams.iter().all(|s| s.stats.packets == 50), "{:?}", closed.streams);
        assert_eq!(shard.sizes(), ShardSizes::default());
    }

    /// A writer that lagged behind hands back a backlog of buffers at once:
    /// the pool keeps its cap, not the backlog.
    #[test]
    fn buffers_returned_after_a_backlog_are_capped() {
        let t0 = Instant::now();
        let mut shard = Shard::new(config(8));
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut ids = Vec::new();
        for n in 0..100u64 {
            let id = RecordingId::new(OffsetDateTime::now_utc());
            let start = MediaCommand::Start {
                recording: id,
                sample_rate: 8000,
                channels: 1,
                started_at: OffsetDateTime::now_utc(),
            };
            shard.command(t0, start);
            let slot = shard.add_stream(t0, spec(n, id, 30000 + 2 * n as u16, 0)).unwrap();
            shard.on_rtp(t0, slot, from, &rtp(0, 0, n as u32));
            ids.push(id);
        }
        let mut backlog = Vec::new();
        for k in 1..=10u64 {
            shard.tick(t0 + Duration::from_millis(200 * k));
            while let Some(o) = shard.poll_output() {
                if let ShardOutput::Append { data, .. } = o {
                    backlog.push(data);
                }
            }
        }
        assert!(backlog.len() >= 100, "every recording committed: {}", backlog.len());
        for b in backlog {
            shard.recycle(b);
        }
        assert_eq!(shard.spare_buffers(), 8);
        let end = t0 + Duration::from_secs(3);
        for id in ids {
            shard.command(end, MediaCommand::Stop { recording: id, meta: meta(id, &[]) });
        }
        while shard.poll_output().is_some() {}
        assert_eq!(shard.sizes(), ShardSizes::default());
    }

    /// A stream that never receives RTP is reported once, after the alarm
    /// time and not before, and the closed recording carries the alarm.
    #[test]
    fn a_stream_without_rtp_is_reported_once_on_virtual_time() {
        let t0 = Instant::now();
        let (mut shard, id, a, _) = stereo_call(t0);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let mut reports = Vec::new();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(20 * i as u64);
            // PCMU 0x00 is a loud sample: speech, not silence.
            let mut p = rtp(i as u16, i * 160, 1);
            p[12..].fill(0x00);
            shard.on_rtp(now, a, from, &p);
            shard.tick(now);
            while let Some(o) = shard.poll_output() {
                match o {
                    ShardOutput::Notice(MediaNotice::NoRtp { stream, .. }) => reports.push((i, stream)),
                    ShardOutput::Append { data, .. } => shard.recycle(data),
                    _ => {}
                }
            }
        }
        assert_eq!(reports, vec![(500, StreamId(2))], "once, at 10 s, for stream B only");
        shard.command(
            t0 + Duration::from_secs(20),
            MediaCommand::Stop { recording: id, meta: meta(id, &[30000, 30002]) },
        );
        let closed = std::iter::from_fn(|| shard.poll_output())
            .find_map(|o| match o {
                ShardOutput::Close { meta, .. } => Some(meta),
                _ => None,
            })
            .unwrap();
        assert_eq!(closed.media_alarm, Some(model::MediaAlarm::StreamWithoutRtp));
        assert!(closed.streams[0].stats.peak > model::SILENCE_PEAK);
    }

    #[test]
    fn the_alarm_a_recording_gets_follows_its_streams() {
        use model::MediaAlarm;
        let st = |packets, peak| StreamStats { packets, peak, ..Default::default() };
        assert_eq!(MediaAlarm::judge(&[st(0, 0), st(0, 0)]), Some(MediaAlarm::NoRtp));
        assert_eq!(MediaAlarm::judge(&[st(50, 9000), st(0, 0)]), Some(MediaAlarm::StreamWithoutRtp));
        assert_eq!(MediaAlarm::judge(&[st(50, 3), st(50, 64)]), Some(MediaAlarm::AllSilent));
        assert_eq!(MediaAlarm::judge(&[st(50, 9000), st(50, 3)]), None, "one side quiet is a normal call");
        assert_eq!(MediaAlarm::judge(&[]), None);
    }
}
