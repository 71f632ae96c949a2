//! The ingest threads.
//!
//! Each shard is one OS thread owning its sockets (mio, edge-triggered)
//! and a [`Shard`] (the pure state: streams, recordings, timelines); a
//! recording and all its streams live on one shard, so the timeline needs
//! no locks. Per readiness event the thread drains the socket with
//! `recvmmsg` batches and hands each packet to the shard inline:
//! latch/parse/reorder ([`rtp_core`]), decode, place on the timeline
//! ([`media::timeline`]). Every tick the shard releases packets whose
//! reorder wait is over, commits audio older than the playout delay, and
//! checks media inactivity; this thread passes the commits to the writer
//! thread. Nothing allocates per packet; commit buffers are recycled
//! through the writer into the shard's capped pool.
//!
//! Edge-triggered draining without a final `EAGAIN` call: `recvmmsg` with
//! `MSG_DONTWAIT` returning fewer datagrams than asked means the queue was
//! empty, and any later datagram raises a new edge.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use media_control::{MediaCommand, MediaNotice, StreamSpec};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use model::{RecordingId, RecordingMeta};
use rtp_core::ReceiverConfig;

use crate::ports::PendingSockets;
use crate::shard::{Shard, ShardConfig, ShardOutput};
use crate::socket::RecvBatch;
use crate::writer::{self, SyncLatency, WriteJob, WriterBacklog, WriterEvent};

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
    /// A stream with no RTP this long after it started is reported.
    pub no_rtp_alarm: Duration,
    /// fdatasync cadence for written files (bounds loss on power failure).
    pub sync_interval: Duration,
    pub receiver: ReceiverConfig,
    /// Commit buffers each shard keeps for reuse.
    pub spare_buffers: usize,
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
            no_rtp_alarm: Duration::from_secs(10),
            sync_interval: Duration::from_secs(1),
            receiver: ReceiverConfig::default(),
            spare_buffers: 256,
        }
    }

    fn shard_config(&self) -> ShardConfig {
        ShardConfig {
            playout_delay: self.playout_delay,
            commit_interval: self.commit_interval,
            window: self.window,
            media_timeout: self.media_timeout,
            no_rtp_alarm: self.no_rtp_alarm,
            receiver: self.receiver,
            spare_buffers: self.spare_buffers,
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
    pub foreign_ssrc: AtomicU64,
    pub srtp_auth_failures: AtomicU64,
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
    pub foreign_ssrc: u64,
    pub srtp_auth_failures: u64,
    pub unknown_payload: u64,
    pub duplicates: u64,
    pub late: u64,
    pub lost: u64,
    pub dtmf_events: u64,
    pub active_streams: u64,
    pub active_recordings: u64,
    pub late_samples: u64,
    /// Committed audio waiting for the writer (the disk is behind).
    pub writer_backlog_bytes: u64,
    /// Durations of the writer's syncs.
    pub audio_sync: model::latency::LatencyHistogram,
}

type Notify = Arc<dyn Fn(EngineEvent) + Send + Sync>;

enum Cmd {
    Media(MediaCommand),
    Shutdown,
}

struct ShardThread {
    tx: Sender<Cmd>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

/// Handle to the running engine.
pub struct MediaEngine {
    shards: Vec<ShardThread>,
    writer_tx: Sender<WriteJob>,
    writer: Option<JoinHandle<()>>,
    forwarder: Option<JoinHandle<()>>,
    stats: Vec<Arc<EngineStats>>,
    backlog: WriterBacklog,
    sync_latency: SyncLatency,
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
        let backlog = WriterBacklog::default();
        let sync_latency = SyncLatency::default();
        let (wevent_tx, wevent_rx) = mpsc::channel::<WriterEvent>();
        let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
        let sync = cfg.sync_interval;
        let writer = std::thread::Builder::new().name("media-writer".into()).spawn({
            let (spool, backlog, latency) = (cfg.spool_dir.clone(), backlog.clone(), sync_latency.clone());
            move || writer::run(spool, writer_rx, wevent_tx, recycle_tx, backlog, sync, latency)
        })?;
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
                backlog.clone(),
                recycle.clone(),
                notify.clone(),
                st,
            );
            let thread = std::thread::Builder::new().name(format!("media-ingest-{i}")).spawn(move || ingest.run())?;
            shards.push(ShardThread { tx, waker, thread: Some(thread) });
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
        Ok(MediaEngine {
            shards,
            writer_tx,
            writer: Some(writer),
            forwarder: Some(forwarder),
            stats,
            backlog,
            sync_latency,
        })
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
            s.foreign_ssrc += g(&st.foreign_ssrc);
            s.srtp_auth_failures += g(&st.srtp_auth_failures);
            s.unknown_payload += g(&st.unknown_payload);
            s.duplicates += g(&st.duplicates);
            s.late += g(&st.late);
            s.lost += g(&st.lost);
            s.dtmf_events += g(&st.dtmf_events);
            s.active_streams += g(&st.active_streams);
            s.active_recordings += g(&st.active_recordings);
            s.late_samples += g(&st.late_samples);
        }
        s.writer_backlog_bytes = self.backlog.load(Ordering::Relaxed);
        s.audio_sync = *self.sync_latency.lock().expect("latency lock");
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

/// The I/O half of one shard: its sockets (by the shard's slot numbers),
/// the mio poll, the command queue and the writer hand-off.
struct Ingest {
    cfg: EngineConfig,
    poll: Poll,
    rx: Receiver<Cmd>,
    pending: PendingSockets,
    writer: Sender<WriteJob>,
    backlog: WriterBacklog,
    recycle: Arc<std::sync::Mutex<Receiver<Vec<u8>>>>,
    notify: Notify,
    stats: Arc<EngineStats>,
    batch: RecvBatch,
    sockets: Vec<Option<(UdpSocket, UdpSocket)>>,
    shard: Shard,
    shutdown: bool,
}

impl Ingest {
    #[allow(clippy::too_many_arguments)]
    fn new(
        cfg: EngineConfig,
        poll: Poll,
        rx: Receiver<Cmd>,
        pending: PendingSockets,
        writer: Sender<WriteJob>,
        backlog: WriterBacklog,
        recycle: Arc<std::sync::Mutex<Receiver<Vec<u8>>>>,
        notify: Notify,
        stats: Arc<EngineStats>,
    ) -> Ingest {
        let batch = RecvBatch::new(cfg.batch);
        let shard = Shard::new(cfg.shard_config());
        Ingest {
            cfg,
            poll,
            rx,
            pending,
            writer,
            backlog,
            recycle,
            notify,
            stats,
            batch,
            sockets: Vec::new(),
            shard,
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
                self.take_recycled();
                self.shard.tick(now);
                self.publish_stats();
                next_tick = now + self.cfg.tick;
            }
            self.dispatch();
        }
    }

    fn drain_commands(&mut self, now: Instant) {
        while let Ok(cmd) = self.rx.try_recv() {
            match cmd {
                Cmd::Shutdown => self.shutdown = true,
                Cmd::Media(MediaCommand::AddStream(spec)) => self.add_stream(now, spec),
                Cmd::Media(m) => self.shard.command(now, m),
            }
            self.dispatch();
        }
    }

    /// Sockets first (bound when the port was allocated), then the shard
    /// names the slot to watch them under.
    fn add_stream(&mut self, now: Instant, spec: StreamSpec) {
        let Some((rtp, rtcp)) = self.pending.lock().expect("pending lock").remove(&spec.port.rtp) else {
            tracing::error!(port = spec.port.rtp, "no bound socket for allocated port");
            return;
        };
        let Some(slot) = self.shard.add_stream(now, spec) else { return };
        let (mut rtp, mut rtcp) = (UdpSocket::from_std(rtp), UdpSocket::from_std(rtcp));
        let reg = self.poll.registry();
        if let Err(e) = reg
            .register(&mut rtp, Token(slot << 1), Interest::READABLE)
            .and_then(|_| reg.register(&mut rtcp, Token((slot << 1) | 1), Interest::READABLE))
        {
            tracing::error!(error = %e, "cannot watch media socket");
            self.shard.abandon_stream(slot);
            return;
        }
        if self.sockets.len() <= slot {
            self.sockets.resize_with(slot + 1, || None);
        }
        self.sockets[slot] = Some((rtp, rtcp));
    }

    /// Routes the shard's outputs: files to the writer, notices to the core.
    fn dispatch(&mut self) {
        while let Some(o) = self.shard.poll_output() {
            match o {
                ShardOutput::Open { id, header } => {
                    let path = self.cfg.spool_dir.join(format!("{id}.wav"));
                    let _ = self.writer.send(WriteJob::Open { id, path, header });
                }
                ShardOutput::Append { id, data } => {
                    self.backlog.fetch_add(data.len() as u64, Ordering::Relaxed);
                    let _ = self.writer.send(WriteJob::Append { id, data });
                }
                ShardOutput::Close { id, meta } => {
                    let _ = self.writer.send(WriteJob::Close { id, meta });
                }
                ShardOutput::Notice(n) => (self.notify)(EngineEvent::Notice(n)),
                ShardOutput::Release { slot } => {
                    // The port number was already released by the core; the sockets close here.
                    if let Some((mut rtp, mut rtcp)) = self.sockets.get_mut(slot).and_then(Option::take) {
                        let reg = self.poll.registry();
                        let _ = reg.deregister(&mut rtp);
                        let _ = reg.deregister(&mut rtcp);
                    }
                }
            }
        }
    }

    /// Buffers the writer has finished with go back to the shard's pool.
    fn take_recycled(&mut self) {
        if let Ok(rx) = self.recycle.try_lock() {
            while let Ok(b) = rx.try_recv() {
                self.shard.recycle(b);
            }
        }
    }

    fn on_readable(&mut self, now: Instant, token: usize) {
        let slot = token >> 1;
        let is_rtcp = token & 1 == 1;
        loop {
            let Some((rtp, rtcp)) = self.sockets.get(slot).and_then(Option::as_ref) else { return };
            let fd = if is_rtcp { rtcp.as_raw_fd() } else { rtp.as_raw_fd() };
            let n = match self.batch.recv(fd) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(error = %e, "recvmmsg");
                    return;
                }
            };
            for i in 0..n {
                let (data, from, truncated) = self.batch.get(i);
                let Some(from) = from else { continue };
                if truncated {
                    self.shard.on_truncated(slot);
                } else if is_rtcp {
                    self.shard.on_rtcp(now, slot, from, data);
                } else {
                    self.shard.on_rtp(now, slot, from, data);
                }
            }
            if n < self.batch.capacity() {
                return;
            }
        }
    }

    fn publish_stats(&self) {
        let s = self.shard.stats();
        let (c, fin, live) = (&s.counters, &s.counters.finished, &s.live);
        let st = &self.stats;
        st.packets.store(c.packets, Ordering::Relaxed);
        st.bytes.store(c.bytes, Ordering::Relaxed);
        st.dtmf_events.store(c.dtmf, Ordering::Relaxed);
        st.late_samples.store(c.late_samples, Ordering::Relaxed);
        st.lost.store(c.finished_lost + s.live_lost, Ordering::Relaxed);
        st.rtcp_packets.store(fin.rtcp_packets + live.rtcp_packets, Ordering::Relaxed);
        st.malformed.store(fin.malformed + live.malformed, Ordering::Relaxed);
        st.foreign.store(fin.foreign + live.foreign, Ordering::Relaxed);
        st.foreign_ssrc.store(fin.foreign_ssrc + live.foreign_ssrc, Ordering::Relaxed);
        st.srtp_auth_failures.store(fin.srtp_auth_failures + live.srtp_auth_failures, Ordering::Relaxed);
        st.unknown_payload.store(fin.unknown_payload + live.unknown_payload, Ordering::Relaxed);
        st.duplicates.store(fin.duplicates + live.duplicates, Ordering::Relaxed);
        st.late.store(fin.late + live.late, Ordering::Relaxed);
        st.active_streams.store(s.streams as u64, Ordering::Relaxed);
        st.active_recordings.store(s.recordings as u64, Ordering::Relaxed);
    }
}
