//! The ingest threads.
//!
//! Each shard is one OS thread owning its sockets (mio, edge-triggered),
//! streams and recordings; a recording and all its streams live on one
//! shard, so the timeline needs no locks. Per readiness event the thread
//! drains the socket with `recvmmsg` batches and runs each packet through
//! the pipeline inline: latch/parse/reorder ([`rtp_core`]), decode, place
//! on the timeline ([`media::timeline`]). Every tick it releases packets
//! whose reorder wait is over, commits audio older than the playout delay
//! to the writer thread, and checks media inactivity. Nothing allocates per
//! packet; commit buffers are recycled through the writer.
//!
//! Edge-triggered draining without a final `EAGAIN` call: `recvmmsg` with
//! `MSG_DONTWAIT` returning fewer datagrams than asked means the queue was
//! empty, and any later datagram raises a new edge.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use media::wav::WavFormat;
use media::{Codec, PositionMapper, Slack, Timeline};
use media_control::{MediaCommand, MediaNotice, StreamId, StreamSpec};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use model::{DtmfRecord, RecordingId, RecordingMeta, StreamStats};
use rtp_core::{Accept, DtmfDetector, ReceiverConfig, Slot, StreamReceiver};

use crate::ports::PendingSockets;
use crate::socket::RecvBatch;
use crate::writer::{self, WriteJob, WriterEvent};

/// Tuning of the media engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where active recordings' WAV files go.
    pub spool_dir: PathBuf,
    /// Ingest threads (recordings are spread over them).
    pub shards: usize,
    /// Datagrams per `recvmmsg` call.
    pub batch: usize,
    pub tick: Duration,
    /// Audio stays in memory this long before it is committed: the jitter
    /// buffer, and the most a killed process can lose besides the commit interval.
    pub playout_delay: Duration,
    pub commit_interval: Duration,
    /// Uncommitted audio a recording can hold (bounds memory per call).
    pub window: Duration,
    /// No packet on any stream not on hold for this long ends the call.
    pub media_timeout: Duration,
    /// fdatasync cadence for written files (bounds loss on power failure).
    pub sync_interval: Duration,
    pub receiver: ReceiverConfig,
}

impl EngineConfig {
    pub fn new(spool_dir: PathBuf) -> EngineConfig {
        EngineConfig {
            spool_dir,
            shards: 1,
            batch: 32,
            tick: Duration::from_millis(20),
            playout_delay: Duration::from_millis(200),
            commit_interval: Duration::from_millis(200),
            window: Duration::from_millis(1500),
            media_timeout: Duration::from_secs(30),
            sync_interval: Duration::from_secs(1),
            receiver: ReceiverConfig::default(),
        }
    }
}

/// What the engine tells its driver.
#[derive(Debug)]
pub enum EngineEvent {
    /// For the recorder core (inactivity, storage failure).
    Notice(MediaNotice),
    /// A stopped recording's audio is complete on disk; `meta` has the
    /// stream statistics and DTMF merged in. Archive it next.
    Closed { meta: Box<RecordingMeta>, bytes: u64, error: Option<String> },
}

/// Engine-wide counters (updated every tick).
#[derive(Debug, Default)]
pub struct EngineStats {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub rtcp_packets: AtomicU64,
    pub malformed: AtomicU64,
    pub foreign: AtomicU64,
    pub unknown_payload: AtomicU64,
    pub duplicates: AtomicU64,
    pub late: AtomicU64,
    /// Sequence gaps of finished streams plus live ones.
    pub lost: AtomicU64,
    pub dtmf_events: AtomicU64,
    pub active_streams: AtomicU64,
    pub active_recordings: AtomicU64,
    /// Audio frames that arrived after they had been committed.
    pub late_samples: AtomicU64,
}

/// A snapshot of [`EngineStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub packets: u64,
    pub bytes: u64,
    pub rtcp_packets: u64,
    pub malformed: u64,
    pub foreign: u64,
    pub unknown_payload: u64,
    pub duplicates: u64,
    pub late: u64,
    pub lost: u64,
    pub dtmf_events: u64,
    pub active_streams: u64,
    pub active_recordings: u64,
    pub late_samples: u64,
}

type Notify = Arc<dyn Fn(EngineEvent) + Send + Sync>;

enum Cmd {
    Media(MediaCommand),
    Shutdown,
}

struct Shard {
    tx: Sender<Cmd>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// Handle to the running engine.
pub struct MediaEngine {
    shards: Vec<Shard>,
    writer_tx: Sender<WriteJob>,
    writer: Option<JoinHandle<()>>,
    forwarder: Option<JoinHandle<()>>,
    stats: Vec<Arc<EngineStats>>,
}

impl std::fmt::Debug for MediaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaEngine").field("shards", &self.shards.len()).finish()
    }
}

impl MediaEngine {
    /// Starts the writer and the ingest shards. `notify` is called from
    /// engine threads; it must not block.
    pub fn start(cfg: EngineConfig, pending: PendingSockets, notify: Notify) -> io::Result<MediaEngine> {
        let (writer_tx, writer_rx) = mpsc::channel();
        let (wevent_tx, wevent_rx) = mpsc::channel::<WriterEvent>();
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        let sync = cfg.sync_interval;
        let writer = std::thread::Builder::new()
            .name("media-writer".into())
            .spawn(move || writer::run(writer_rx, wevent_tx, recycle_tx, sync))?;
        let n = cfg.shards.max(1);
        let recycle = Arc::new(std::sync::Mutex::new(recycle_rx));
        let mut shards = Vec::with_capacity(n);
        let mut stats = Vec::with_capacity(n);
        for i in 0..n {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
            let (tx, rx) = mpsc::channel();
            let st = Arc::new(EngineStats::default());
            stats.push(st.clone());
            let ingest = Ingest::new(
                cfg.clone(),
                poll,
                rx,
                pending.clone(),
                writer_tx.clone(),
                recycle.clone(),
                notify.clone(),
                st,
            );
            let thread = std::thread::Builder::new().name(format!("media-ingest-{i}")).spawn(move || ingest.run())?;
            shards.push(Shard { tx, waker, thread: Some(thread) });
        }
        let forward_notify = notify.clone();
        let forwarder = std::thread::Builder::new().name("media-events".into()).spawn(move || {
            for e in wevent_rx {
                match e {
                    WriterEvent::Failed { id, reason } => {
                        forward_notify(EngineEvent::Notice(MediaNotice::StorageFailed { recording: id, reason }))
                    }
                    WriterEvent::Closed { meta, bytes, error } => {
                        forward_notify(EngineEvent::Closed { meta, bytes, error })
                    }
                }
            }
        })?;
        Ok(MediaEngine { shards, writer_tx, writer: Some(writer), forwarder: Some(forwarder), stats })
    }

    fn shard_of(&self, id: RecordingId) -> usize {
        (id.0.as_u128() % self.shards.len() as u128) as usize
    }

    /// Hands a recorder command to the shard owning its recording.
    pub fn command(&self, cmd: MediaCommand) {
        let id = match &cmd {
            MediaCommand::Start { recording, .. }
            | MediaCommand::Answered { recording }
            | MediaCommand::RemoveStream { recording, .. }
            | MediaCommand::Dtmf { recording, .. }
            | MediaCommand::Stop { recording, .. } => *recording,
            MediaCommand::AddStream(s) | MediaCommand::UpdateStream(s) => s.recording,
        };
        let shard = &self.shards[self.shard_of(id)];
        if shard.tx.send(Cmd::Media(cmd)).is_ok() {
            let _ = shard.waker.wake();
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        let mut s = StatsSnapshot::default();
        for st in &self.stats {
            let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
            s.packets += g(&st.packets);
            s.bytes += g(&st.bytes);
            s.rtcp_packets += g(&st.rtcp_packets);
            s.malformed += g(&st.malformed);
            s.foreign += g(&st.foreign);
            s.unknown_payload += g(&st.unknown_payload);
            s.duplicates += g(&st.duplicates);
            s.late += g(&st.late);
            s.lost += g(&st.lost);
            s.dtmf_events += g(&st.dtmf_events);
            s.active_streams += g(&st.active_streams);
            s.active_recordings += g(&st.active_recordings);
            s.late_samples += g(&st.late_samples);
        }
        s
    }

    /// Stops the threads; recordings still open stay in the spool (the
    /// next start recovers them). Stop recordings first for a clean end.
    pub fn shutdown(mut self) {
        for s in &self.shards {
            let _ = s.tx.send(Cmd::Shutdown);
            let _ = s.waker.wake();
        }
        for s in &mut self.shards {
            if let Some(t) = s.thread.take() {
                let _ = t.join();
            }
        }
        let _ = self.writer_tx.send(WriteJob::Shutdown);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
        drop(self.writer_tx);
        if let Some(f) = self.forwarder.take() {
            let _ = f.join();
        }
    }
}

const WAKER: Token = Token(usize::MAX);

struct Stream {
    id: StreamId,
    rec: usize,
    channel: u8,
    local_port: u16,
    rtp: UdpSocket,
    rtcp: UdpSocket,
    receiver: StreamReceiver,
    codecs: [Option<Codec>; 128],
    telephone_event: Option<u8>,
    comfort_noise: Option<u8>,
    mapper: PositionMapper,
    dtmf: DtmfDetector,
    held: bool,
    /// Reference for inactivity: last packet, or when the stream (re)started.
    active_since: Instant,
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

struct Ingest {
    cfg: EngineConfig,
    poll: Poll,
    rx: Receiver<Cmd>,
    pending: PendingSockets,
    writer: Sender<WriteJob>,
    recycle: Arc<std::sync::Mutex<Receiver<Vec<u8>>>>,
    notify: Notify,
    stats: Arc<EngineStats>,
    batch: RecvBatch,
    streams: Vec<Option<Stream>>,
    free_streams: Vec<usize>,
    by_stream_id: HashMap<StreamId, usize>,
    recs: Vec<Option<Rec>>,
    free_recs: Vec<usize>,
    by_rec_id: HashMap<RecordingId, usize>,
    scratch: Vec<i16>,
    spare: Vec<Vec<u8>>,
    local: LocalCounters,
    shutdown: bool,
}

/// Counters kept in plain integers on the hot path, published each tick.
#[derive(Default)]
struct LocalCounters {
    packets: u64,
    bytes: u64,
    dtmf: u64,
    late_samples: u64,
    finished_lost: u64,
    finished: StreamStats,
}

impl Ingest {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: EngineConfig,
        poll: Poll,
        rx: Receiver<Cmd>,
        pending: PendingSockets,
        writer: Sender<WriteJob>,
        recycle: Arc<std::sync::Mutex<Receiver<Vec<u8>>>>,
        notify: Notify,
        stats: Arc<EngineStats>,
    ) -> Ingest {
        let batch = RecvBatch::new(cfg.batch);
        Ingest {
            cfg,
            poll,
            rx,
            pending,
            writer,
            recycle,
            notify,
            stats,
            batch,
            streams: Vec::new(),
            free_streams: Vec::new(),
            by_stream_id: HashMap::new(),
            recs: Vec::new(),
            free_recs: Vec::new(),
            by_rec_id: HashMap::new(),
            scratch: vec![0; 4096],
            spare: Vec::new(),
            local: LocalCounters::default(),
            shutdown: false,
        }
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut next_tick = Instant::now() + self.cfg.tick;
        while !self.shutdown {
            let timeout = next_tick.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "media poll failed");
                }
                continue;
            }
            let now = Instant::now();
            for ev in events.iter() {
                if ev.token() == WAKER {
                    self.drain_commands(now);
                } else {
                    self.on_readable(now, ev.token().0);
                }
            }
            if now >= next_tick {
                self.tick(now);
                next_tick = now + self.cfg.tick;
            }
        }
    }

    fn drain_commands(&mut self, now: Instant) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Shutdown => self.shutdown = true,
                Cmd::Media(m) => self.on_command(now, m),
            }
        }
    }

    fn on_command(&mut self, now: Instant, cmd: MediaCommand) {
        match cmd {
            MediaCommand::Start { recording, sample_rate, channels, .. } => {
                self.start(now, recording, sample_rate, channels)
            }
            MediaCommand::AddStream(spec) => self.add_stream(now, spec),
            MediaCommand::Answered { recording } => {
                let rec = self.by_rec_id.get(&recording).and_then(|&r| self.recs[r].as_mut());
                if let Some(rec) = rec.filter(|r| r.max_frame == 0 && r.timeline.committed() == 0) {
                    rec.start = now;
                    rec.next_commit = now + self.cfg.commit_interval;
                }
            }
            MediaCommand::UpdateStream(spec) => self.update_stream(now, spec),
            MediaCommand::RemoveStream { stream, .. } => {
                if let Some(idx) = self.by_stream_id.get(&stream).copied() {
                    self.remove_stream(idx);
                }
            }
            MediaCommand::Dtmf { recording, digit, duration_ms, channel } => {
                if let Some(rec) = self.by_rec_id.get(&recording).and_then(|&r| self.recs[r].as_mut()) {
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
        let idx = match self.free_recs.pop() {
            Some(i) => {
                self.recs[i] = Some(rec);
                i
            }
            None => {
                self.recs.push(Some(rec));
                self.recs.len() - 1
            }
        };
        self.by_rec_id.insert(id, idx);
        let header = WavFormat { sample_rate: rate, channels }.header(0);
        let path = self.cfg.spool_dir.join(format!("{id}.wav"));
        let _ = self.writer.send(WriteJob::Open { id, path, header });
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

    fn add_stream(&mut self, now: Instant, spec: StreamSpec) {
        let Some(&rec_idx) = self.by_rec_id.get(&spec.recording) else {
            tracing::warn!(stream = spec.id.0, "stream for unknown recording");
            return;
        };
        let Some((rtp, rtcp)) = self.pending.lock().expect("pending lock").remove(&spec.port.rtp) else {
            tracing::error!(port = spec.port.rtp, "no bound socket for allocated port");
            return;
        };
        let mut rtp = UdpSocket::from_std(rtp);
        let mut rtcp = UdpSocket::from_std(rtcp);
        let idx = self.free_streams.pop().unwrap_or_else(|| {
            self.streams.push(None);
            self.streams.len() - 1
        });
        let reg = self.poll.registry();
        if let Err(e) = reg
            .register(&mut rtp, Token(idx << 1), Interest::READABLE)
            .and_then(|_| reg.register(&mut rtcp, Token((idx << 1) | 1), Interest::READABLE))
        {
            tracing::error!(error = %e, "cannot watch media socket");
            self.free_streams.push(idx);
            return;
        }
        let rate = self.recs[rec_idx].as_ref().expect("live").rate;
        let clock = spec.codecs.first().map(|(_, c)| c.clock_rate()).unwrap_or(8000);
        let slack = Slack::for_playout(rate, self.cfg.playout_delay.as_millis() as u64);
        let mapper = PositionMapper::new(rate, clock, slack);
        let stream = Stream {
            id: spec.id,
            rec: rec_idx,
            channel: spec.channel,
            local_port: spec.port.rtp,
            rtp,
            rtcp,
            receiver: StreamReceiver::new(self.cfg.receiver, clock, &spec.payload_types(), now),
            codecs: Self::codec_table(&spec),
            telephone_event: spec.telephone_event,
            comfort_noise: spec.comfort_noise,
            mapper,
            dtmf: DtmfDetector::default(),
            held: spec.held,
            active_since: now,
        };
        self.streams[idx] = Some(stream);
        self.by_stream_id.insert(spec.id, idx);
        self.recs[rec_idx].as_mut().expect("live").streams.push(idx);
    }

    fn update_stream(&mut self, now: Instant, spec: StreamSpec) {
        let Some(&idx) = self.by_stream_id.get(&spec.id) else { return };
        let s = self.streams[idx].as_mut().expect("indexed stream exists");
        s.codecs = Self::codec_table(&spec);
        s.telephone_event = spec.telephone_event;
        s.comfort_noise = spec.comfort_noise;
        s.receiver.set_payload_types(&spec.payload_types());
        if s.held && !spec.held {
            s.active_since = now; // resumed: the inactivity clock restarts
        }
        s.held = spec.held;
        s.channel = spec.channel;
    }

    fn remove_stream(&mut self, idx: usize) {
        let Some(mut s) = self.streams[idx].take() else { return };
        let reg = self.poll.registry();
        let _ = reg.deregister(&mut s.rtp);
        let _ = reg.deregister(&mut s.rtcp);
        self.by_stream_id.remove(&s.id);
        self.free_streams.push(idx);
        if let Some(rec) = self.recs[s.rec].as_mut() {
            // Whatever still waits in the reorder window is audio too.
            while let Some(slot) = s.receiver.pop_any() {
                place(
                    slot,
                    rec,
                    &s.codecs,
                    s.telephone_event,
                    s.channel,
                    &mut s.mapper,
                    &mut s.dtmf,
                    &mut self.scratch,
                    &mut self.local,
                );
            }
            if let Some(ev) = s.dtmf.flush() {
                push_dtmf(rec, &ev, &s.mapper, s.receiver.clock_rate(), s.channel, &mut self.local);
            }
            rec.streams.retain(|&i| i != idx);
            let mut stats = s.receiver.stats.clone();
            stats.reanchors = s.mapper.reanchors;
            stats.timeline_shifts = s.mapper.drift_shifts;
            rec.finished.push((s.local_port, stats));
        }
        self.local.finished_lost += s.receiver.stats.lost;
        add_stats(&mut self.local.finished, &s.receiver.stats);
        // Sockets close here; the port number was already released by the core.
    }

    fn stop(&mut self, now: Instant, id: RecordingId, mut meta: Box<RecordingMeta>) {
        let Some(r) = self.by_rec_id.remove(&id) else {
            // Never started here (e.g. refused): pass the metadata on untouched.
            let _ = self.writer.send(WriteJob::Close { id, meta });
            return;
        };
        let streams = self.recs[r].as_ref().expect("live").streams.clone();
        for s in streams {
            self.remove_stream(s);
        }
        let mut rec = self.recs[r].take().expect("live");
        self.free_recs.push(r);
        let end = rec.frame_at(now).max(rec.max_frame);
        self.commit(&mut rec, end);
        for (port, stats) in rec.finished.drain(..) {
            if let Some(sr) = meta.streams.iter_mut().find(|s| s.local_port == port) {
                sr.stats = stats;
            }
        }
        rec.dtmf.sort_by_key(|d| d.at_ms);
        meta.dtmf.append(&mut rec.dtmf);
        meta.duration_ms = rec.timeline.committed() * 1000 / rec.rate as u64;
        let _ = self.writer.send(WriteJob::Close { id, meta });
    }

    fn buffer(&mut self) -> Vec<u8> {
        if let Some(b) = self.spare.pop() {
            return b;
        }
        if let Ok(rx) = self.recycle.try_lock() {
            while let Ok(b) = rx.try_recv() {
                self.spare.push(b);
            }
        }
        self.spare.pop().unwrap_or_default()
    }

    fn commit(&mut self, rec: &mut Rec, upto: u64) {
        let mut buf = self.buffer();
        rec.timeline.commit(upto, &mut buf);
        if buf.is_empty() {
            self.spare.push(buf);
        } else {
            let _ = self.writer.send(WriteJob::Append { id: rec.id, data: buf });
        }
    }

    fn on_readable(&mut self, now: Instant, token: usize) {
        let idx = token >> 1;
        let is_rtcp = token & 1 == 1;
        loop {
            let Some(stream) = self.streams.get_mut(idx).and_then(Option::as_mut) else { return };
            let fd = if is_rtcp { stream.rtcp.as_raw_fd() } else { stream.rtp.as_raw_fd() };
            let n = match self.batch.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "recvmmsg");
                    return;
                }
            };
            let Some(rec) = self.recs.get_mut(stream.rec).and_then(Option::as_mut) else { return };
            for i in 0..n {
                let (data, from, truncated) = self.batch.get(i);
                let Some(from) = from else { continue };
                if truncated {
                    stream.receiver.stats.malformed += 1;
                    continue;
                }
                if is_rtcp {
                    stream.receiver.on_rtcp(now, from, data);
                    continue;
                }
                receive(now, from, data, stream, rec, &mut self.scratch, &mut self.local);
            }
            if n < self.batch.capacity() {
                return;
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        let playout = self.cfg.playout_delay;
        let mut live_lost = 0;
        let mut live = StreamStats::default();
        for r in 0..self.recs.len() {
            let Some(mut rec) = self.recs[r].take() else { continue };
            let mut any_active = false;
            let mut latest = None::<Instant>;
            for k in 0..rec.streams.len() {
                let si = rec.streams[k];
                let Some(s) = self.streams[si].as_mut() else { continue };
                while let Some(slot) = s.receiver.pop(now) {
                    place(
                        slot,
                        &mut rec,
                        &s.codecs,
                        s.telephone_event,
                        s.channel,
                        &mut s.mapper,
                        &mut s.dtmf,
                        &mut self.scratch,
                        &mut self.local,
                    );
                }
                live_lost += s.receiver.stats.lost;
                add_stats(&mut live, &s.receiver.stats);
                if !s.held {
                    any_active = true;
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
                        (self.notify)(EngineEvent::Notice(MediaNotice::Inactive { recording: rec.id }));
                    }
                }
            } else if !any_active {
                rec.inactivity_reported = false;
            }
            self.recs[r] = Some(rec);
        }
        let st = &self.stats;
        let fin = &self.local.finished;
        st.packets.store(self.local.packets, Ordering::Relaxed);
        st.bytes.store(self.local.bytes, Ordering::Relaxed);
        st.dtmf_events.store(self.local.dtmf, Ordering::Relaxed);
        st.late_samples.store(self.local.late_samples, Ordering::Relaxed);
        st.lost.store(self.local.finished_lost + live_lost, Ordering::Relaxed);
        st.rtcp_packets.store(fin.rtcp_packets + live.rtcp_packets, Ordering::Relaxed);
        st.malformed.store(fin.malformed + live.malformed, Ordering::Relaxed);
        st.foreign.store(fin.foreign + live.foreign, Ordering::Relaxed);
        st.unknown_payload.store(fin.unknown_payload + live.unknown_payload, Ordering::Relaxed);
        st.duplicates.store(fin.duplicates + live.duplicates, Ordering::Relaxed);
        st.late.store(fin.late + live.late, Ordering::Relaxed);
        st.active_streams.store(self.by_stream_id.len() as u64, Ordering::Relaxed);
        st.active_recordings.store(self.by_rec_id.len() as u64, Ordering::Relaxed);
    }
}

fn add_stats(into: &mut StreamStats, s: &StreamStats) {
    into.rtcp_packets += s.rtcp_packets;
    into.malformed += s.malformed;
    into.foreign += s.foreign;
    into.unknown_payload += s.unknown_payload;
    into.duplicates += s.duplicates;
    into.late += s.late;
}

/// One RTP datagram through the stream pipeline.
fn receive(
    now: Instant,
    from: std::net::SocketAddr,
    data: &[u8],
    s: &mut Stream,
    rec: &mut Rec,
    scratch: &mut [i16],
    local: &mut LocalCounters,
) {
    let mut outcome = s.receiver.on_rtp(now, from, data);
    if outcome == Accept::Restart {
        while let Some(slot) = s.receiver.pop_any() {
            place(slot, rec, &s.codecs, s.telephone_event, s.channel, &mut s.mapper, &mut s.dtmf, scratch, local);
        }
        s.receiver.restart();
        s.mapper.reset();
        outcome = s.receiver.on_rtp(now, from, data);
    }
    if outcome == Accept::Queued {
        local.packets += 1;
        local.bytes += data.len() as u64;
        while let Some(slot) = s.receiver.pop(now) {
            place(slot, rec, &s.codecs, s.telephone_event, s.channel, &mut s.mapper, &mut s.dtmf, scratch, local);
        }
    }
}

/// A released packet: decoded onto the timeline, or a DTMF event.
#[allow(clippy::too_many_arguments)]
fn place(
    slot: &Slot,
    rec: &mut Rec,
    codecs: &[Option<Codec>; 128],
    telephone_event: Option<u8>,
    channel: u8,
    mapper: &mut PositionMapper,
    dtmf: &mut DtmfDetector,
    scratch: &mut [i16],
    local: &mut LocalCounters,
) {
    if Some(slot.pt) == telephone_event {
        if let Some(ev) = dtmf.on_packet(slot.ts, &slot.payload) {
            push_dtmf(rec, &ev, mapper, 8000, channel, local);
        }
        return;
    }
    let Some(codec) = codecs.get(slot.pt as usize).copied().flatten() else {
        return; // comfort noise or a type without audio: the gap stays silent
    };
    let arrival = rec.frame_at(slot.arrival);
    let pos = mapper.position(slot.ts, arrival);
    let n = codec.decode(&slot.payload, scratch);
    let placed = rec.timeline.write(channel as usize, pos, &scratch[..n]);
    local.late_samples += placed.late as u64;
    rec.max_frame = rec.max_frame.max(pos + n as u64);
}

fn push_dtmf(
    rec: &mut Rec,
    ev: &rtp_core::DtmfEvent,
    mapper: &PositionMapper,
    clock: u32,
    channel: u8,
    local: &mut LocalCounters,
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
