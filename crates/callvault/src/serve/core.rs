//! The core task: the only owner of the [`Recorder`] state machine and
//! the media engine. It moves bytes from transports into the recorder,
//! fires its timers, and routes its outputs: SIP to transports, media
//! commands to the engine, metadata to the persistence worker.

use std::time::Instant;

use media_engine::{MediaEngine, StatsSnapshot};
use model::{RecordingId, RecordingMeta};
use recorder::{Counters, MediaNotice, Now, Output, Recorder, RecordingEvent};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot, watch};

use super::persist::{Backlog, PersistJob, SaveAck};
use super::transport::{Inbound, InboundKind, Transports};

/// Requests from the HTTP API, the CLI (through HTTP) and housekeeping.
#[derive(Debug)]
pub enum AdminCmd {
    Complete(RecordingId, oneshot::Sender<bool>),
    /// A reload: new admission settings for new calls.
    SetAdmission {
        allowed_sources: Vec<ipnet::IpNet>,
        max_calls: usize,
    },
    SetDraining(bool),
    SetStorage {
        ok: bool,
        reason: String,
    },
    Status(oneshot::Sender<NodeStatus>),
    Active(oneshot::Sender<Vec<RecordingMeta>>),
    ActiveOne(RecordingId, oneshot::Sender<Option<RecordingMeta>>),
}

/// A point-in-time view of the node, for /api/status and /metrics.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub active_recordings: usize,
    pub active_legs: usize,
    pub draining: bool,
    pub storage_ok: bool,
    pub storage_reason: String,
    pub can_record: Result<(), &'static str>,
    pub counters: Counters,
    pub responses: std::collections::BTreeMap<u16, u64>,
    pub media: StatsSnapshot,
    /// Ended recordings not yet archived and indexed.
    pub unarchived: usize,
    /// SIP transactions in progress (server + client).
    pub sip_transactions: usize,
    pub unanswered_transactions: u64,
    pub ports_in_use: usize,
    pub ports_capacity: usize,
    /// Calls in progress with a media alarm (a stream without RTP).
    pub recordings_with_media_alarm: usize,
}

pub fn now() -> Now {
    Now { mono: Instant::now(), wall: OffsetDateTime::now_utc() }
}

pub struct CoreTask {
    pub recorder: Recorder,
    pub engine: MediaEngine,
    pub transports: Transports,
    pub inbox: mpsc::Receiver<Inbound>,
    pub notices: mpsc::UnboundedReceiver<MediaNotice>,
    pub admin: mpsc::Receiver<AdminCmd>,
    pub persist: mpsc::UnboundedSender<PersistJob>,
    pub saved: mpsc::UnboundedReceiver<SaveAck>,
    pub backlog: Backlog,
    /// Audio bytes waiting for the disk above which new calls are refused.
    pub max_write_backlog: u64,
    pub shutdown: watch::Receiver<bool>,
}

impl CoreTask {
    pub async fn run(mut self) {
        let mut storage_reason = String::new();
        let mut storage_ok = true;
        loop {
            let deadline = self.recorder.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some(msg) = self.inbox.recv() => {
                    self.take(msg);
                    // Take whatever else is already queued before dispatching.
                    for _ in 0..256 {
                        let Ok(msg) = self.inbox.try_recv() else { break };
                        self.take(msg);
                    }
                }
                Some(ack) = self.saved.recv() => {
                    self.recorder.saved(now(), ack.id, ack.seq, ack.result);
                    while let Ok(ack) = self.saved.try_recv() {
                        self.recorder.saved(now(), ack.id, ack.seq, ack.result);
                    }
                }
                Some(notice) = self.notices.recv() => {
                    if let MediaNotice::NoRtp { recording, stream } = &notice {
                        tracing::warn!(recording = %recording, stream = stream.0, "no RTP received on a stream (firewall, NAT or a dead media path?)");
                    }
                    if let MediaNotice::StorageFailed { reason, .. } = &notice {
                        storage_ok = false;
                        storage_reason = reason.clone();
                        self.recorder.set_storage_ok(false);
                    }
                    self.recorder.handle_media(now(), notice);
                }
                Some(cmd) = self.admin.recv() => match cmd {
                    AdminCmd::Complete(id, reply) => {
                        let _ = reply.send(self.recorder.complete(now(), id));
                    }
                    AdminCmd::SetAdmission { allowed_sources, max_calls } => {
                        tracing::info!(allowed_sources = ?allowed_sources, max_calls, "admission settings reloaded");
                        self.recorder.set_admission(allowed_sources, max_calls);
                    }
                    AdminCmd::SetDraining(d) => {
                        tracing::info!(draining = d, "drain mode changed");
                        self.recorder.set_draining(d);
                    }
                    AdminCmd::SetStorage { ok, reason } => {
                        if ok != storage_ok {
                            if ok { tracing::info!("storage healthy again"); } else { tracing::error!(%reason, "storage unhealthy: refusing new calls"); }
                        }
                        storage_ok = ok;
                        storage_reason = reason;
                        self.recorder.set_storage_ok(ok);
                    }
                    AdminCmd::Status(reply) => {
                        let _ = reply.send(NodeStatus {
                            active_recordings: self.recorder.active_recordings(),
                            active_legs: self.recorder.active_legs(),
                            draining: self.recorder.is_draining(),
                            storage_ok,
                            storage_reason: storage_reason.clone(),
                            can_record: self.recorder.can_record(),
                            counters: self.recorder.counters().clone(),
                            responses: self.recorder.responses_sent().clone(),
                            media: self.engine.stats(),
                            unarchived: self.backlog.load(std::sync::atomic::Ordering::Relaxed),
                            sip_transactions: {
                                let e = self.recorder.sizes().endpoint;
                                e.server + e.client
                            },
                            unanswered_transactions: self.recorder.unanswered_transactions(),
                            ports_in_use: self.recorder.port_usage().0,
                            ports_capacity: self.recorder.port_usage().1,
                            recordings_with_media_alarm: self.recorder.recordings_with_media_alarm(),
                        });
                    }
                    AdminCmd::Active(reply) => {
                        let all = self.recorder.active_recording_ids().into_iter()
                            .filter_map(|id| self.recorder.active_meta(id).cloned()).collect();
                        let _ = reply.send(all);
                    }
                    AdminCmd::ActiveOne(id, reply) => {
                        let _ = reply.send(self.recorder.active_meta(id).cloned());
                    }
                },
                _ = sleep => self.recorder.handle_timeout(now()),
                _ = self.shutdown.changed() => break,
            }
            self.dispatch();
            self.watch_write_backlog();
        }
        // Graceful stop: every call ends (BYE), every recording is closed.
        let active = self.recorder.active_recordings();
        if active > 0 {
            tracing::info!(active, "stopping: ending calls in progress as interrupted");
        }
        self.recorder.shutdown(now());
        self.dispatch();
        // Let the BYEs leave before the sockets go away.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let engine = self.engine;
        let _ = tokio::task::spawn_blocking(move || engine.shutdown()).await;
    }

    /// One message (or unframeable stream head) from a transport.
    fn take(&mut self, msg: Inbound) {
        let before = self.recorder.counters().tolerated_total;
        match msg.kind {
            InboundKind::Message => self.recorder.handle_sip(now(), msg.peer, &msg.data),
            InboundKind::TooLarge => self.recorder.reject_oversized(now(), msg.peer, &msg.data),
            InboundKind::BadContentLength => self.recorder.reject_bad_content_length(now(), msg.peer, &msg.data),
        }
        let c = self.recorder.counters();
        if c.tolerated_total != before {
            let case = c.last_tolerated.map_or("", |t| t.label());
            tracing::warn!(peer = %msg.peer.addr, case, "message breaks a rule but its meaning is clear: used");
        }
    }

    /// New calls wait while the disk is behind the audio (hysteresis: taken
    /// again below half the limit), so memory does not grow with the lag.
    fn watch_write_backlog(&mut self) {
        let behind = self.engine.stats().writer_backlog_bytes;
        let slow = self.recorder.is_storage_slow();
        if !slow && behind > self.max_write_backlog {
            tracing::warn!(bytes = behind, "audio writes are behind the disk: refusing new calls until it catches up");
            self.recorder.set_storage_slow(true);
        } else if slow && behind < self.max_write_backlog / 2 {
            tracing::info!(bytes = behind, "audio writes caught up: taking new calls again");
            self.recorder.set_storage_slow(false);
        }
    }

    fn dispatch(&mut self) {
        while let Some(o) = self.recorder.poll_output() {
            match o {
                Output::Transmit(t) => self.transports.send(t),
                Output::Media(cmd) => self.engine.command(cmd),
                Output::Recording { event, seq } => {
                    let first = matches!(event, RecordingEvent::Started(_));
                    let _ = self.persist.send(PersistJob::Active { meta: event.into_meta(), seq, first });
                }
            }
        }
    }
}

/// Shared handle used by HTTP handlers.
pub type AdminTx = mpsc::Sender<AdminCmd>;

/// Asks the core for a status snapshot.
pub async fn status(admin: &AdminTx) -> Option<NodeStatus> {
    let (tx, rx) = oneshot::channel();
    admin.send(AdminCmd::Status(tx)).await.ok()?;
    rx.await.ok()
}
