//! Per-call state never outlives its call (issue: memory under churn).
//!
//! The recorder core and a media-engine shard, wired as the node wires
//! them, run random sequences of a few hundred calls of every kind on
//! virtual time: SIPREC, forked and plain calls; completed, cancelled,
//! refused, never acknowledged, re-INVITEd, ended by media inactivity or a
//! storage failure, answered late or never stored. Once every call has
//! ended and every timer has fired, every map and queue of the
//! `Endpoint`, the `Recorder` and the `Shard` is empty, every port is
//! back, and the shard keeps no more spare buffers than its cap.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use media_engine::{Shard, ShardConfig, ShardOutput, ShardSizes};
use model::{NodeId, RecordingId, RecordingState};
use proptest::prelude::*;
use recorder::reasons::EndCause;
use recorder::{MediaCommand, MediaNotice, MediaPort, NoPort, Now, Output, PortAllocator, Recorder, RecorderConfig};
use sip_proto::{parse, HeaderAccess, Message, Peer, Response, StatusCode};
use time::OffsetDateTime;

const SRC: &str = "127.0.0.1:5070";
const SPARE_BUFFERS: usize = 8;

/// Ports with a shared record of which are out, so the test can check
/// that every one came back.
#[derive(Clone, Default)]
struct TrackedPorts(Arc<Mutex<HashSet<u16>>>);

impl PortAllocator for TrackedPorts {
    fn allocate(&mut self) -> Result<MediaPort, NoPort> {
        let mut used = self.0.lock().unwrap();
        let rtp = (30000..40000).step_by(2).find(|p| !used.contains(p)).ok_or(NoPort::RangeExhausted)?;
        used.insert(rtp);
        Ok(MediaPort { rtp, rtcp: rtp + 1 })
    }
    fn release(&mut self, port: MediaPort) {
        assert!(self.0.lock().unwrap().remove(&port.rtp), "port {} released twice", port.rtp);
    }
    fn in_use(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    fn capacity(&self) -> usize {
        5000
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Siprec,
    /// Two INVITEs without SDP linked by x-refci.
    Forked,
    Plain,
    /// A request the recorder refuses (420 Bad Extension).
    Refused,
    /// An SDP offer with no codec any build decodes (GSM: 488).
    Undecodable,
}

#[derive(Debug, Clone)]
enum Op {
    NewCall(Kind),
    Ack(usize),
    Hold(usize),
    Bye(usize),
    Cancel(usize),
    Info(usize),
    Rtp(usize),
    Inactive(usize),
    StorageFailed(usize),
    /// Saves wait for `ReleaseSaves` from now on (slow storage), or not.
    HoldSaves(bool),
    ReleaseSaves(bool),
    Advance(u64),
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        Just(Kind::Siprec),
        Just(Kind::Forked),
        Just(Kind::Plain),
        Just(Kind::Refused),
        Just(Kind::Undecodable)
    ];
    prop_oneof![
        6 => kind.prop_map(Op::NewCall),
        5 => (0usize..1000).prop_map(Op::Ack),
        1 => (0usize..1000).prop_map(Op::Hold),
        4 => (0usize..1000).prop_map(Op::Bye),
        1 => (0usize..1000).prop_map(Op::Cancel),
        1 => (0usize..1000).prop_map(Op::Info),
        3 => (0usize..1000).prop_map(Op::Rtp),
        1 => (0usize..1000).prop_map(Op::Inactive),
        1 => (0usize..1000).prop_map(Op::StorageFailed),
        1 => any::<bool>().prop_map(Op::HoldSaves),
        1 => any::<bool>().prop_map(Op::ReleaseSaves),
        2 => (0u64..40_000).prop_map(Op::Advance),
        3 => Just(Op::Tick),
    ]
}

/// One SIP dialog the test placed (a forked call has two).
struct Leg {
    call_id: String,
    from: String,
    invite: String,
    to_tag: Option<String>,
    cseq: u32,
}

struct Sim {
    rec: Recorder,
    shard: Shard,
    ports: TrackedPorts,
    now: Now,
    branch: u64,
    legs: Vec<Leg>,
    /// Recording id of each leg, learnt from the recording's first save.
    recording_of: Vec<Option<RecordingId>>,
    hold_saves: bool,
    held: Vec<(RecordingId, u64)>,
    /// Recordings started and stopped, from the media commands.
    started: usize,
    stopped: usize,
    closed: usize,
    slots: Vec<(u64, usize)>,
}

fn sdp(port: u16, codecs: &str) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {codecs}\r\na=sendonly\r\nm=audio {} RTP/AVP {codecs}\r\na=sendonly\r\n",
        port + 2
    )
}

fn siprec_body() -> String {
    std::fs::read_to_string(format!("{}/../siprec/tests/fixtures/acme-draft.body", env!("CARGO_MANIFEST_DIR")))
        .unwrap()
        .replace("\r\n", "\n")
        .replace('\n', "\r\n")
}

impl Sim {
    fn new() -> Sim {
        let mut cfg = RecorderConfig::new(NodeId("bounded".into()));
        cfg.fallback_ip = "127.0.0.1".parse().unwrap();
        cfg.sip_udp = Some("127.0.0.1:5060".parse().unwrap());
        let ports = TrackedPorts::default();
        let rec = Recorder::new(cfg, Box::new(ports.clone()));
        let shard = Shard::new(ShardConfig { spare_buffers: SPARE_BUFFERS, ..Default::default() });
        Sim {
            rec,
            shard,
            ports,
            now: Now { mono: Instant::now(), wall: OffsetDateTime::now_utc() },
            branch: 0,
            legs: Vec::new(),
            recording_of: Vec::new(),
            hold_saves: false,
            held: Vec::new(),
            started: 0,
            stopped: 0,
            closed: 0,
            slots: Vec::new(),
        }
    }

    fn request(&mut self, leg: usize, method: &str, extra: &str, ct: Option<&str>, body: &str) -> String {
        self.branch += 1;
        let l = &self.legs[leg];
        let to = match &l.to_tag {
            Some(t) => format!("<sip:srs@127.0.0.1>;tag={t}"),
            None => "<sip:srs@127.0.0.1>".into(),
        };
        let ct = ct.map(|c| format!("Content-Type: {c}\r\n")).unwrap_or_default();
        format!(
            "{method} sip:srs@127.0.0.1:5060 SIP/2.0\r\nVia: SIP/2.0/UDP {SRC};branch=z9hG4bK-b{}\r\n{}\r\nTo: {to}\r\n\
             Call-ID: {}\r\nCSeq: {} {method}\r\nMax-Forwards: 70\r\nContact: <sip:src@{SRC}>\r\n{extra}{ct}\
             Content-Length: {}\r\n\r\n{body}",
            self.branch,
            l.from,
            l.call_id,
            l.cseq,
            body.len()
        )
    }

    fn send(&mut self, text: &str) {
        self.rec.handle_sip(self.now, Peer::udp(SRC.parse().unwrap()), text.as_bytes());
        self.pump();
    }

    /// Routes every output: responses update the legs, the recorder's own
    /// requests (BYE) are answered, media commands go to the shard, saves
    /// are confirmed (or held), shard outputs are played back as the
    /// writer would.
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(o) = self.rec.poll_output() {
                progressed = true;
                match o {
                    Output::Transmit(t) => match parse(&t.data).expect("recorder output parses") {
                        Message::Response(r) => self.on_response(r),
                        Message::Request(req) => {
                            // Answer the recorder's BYE, as a source would.
                            let ok = Response::to_request(&req, StatusCode::OK, "OK", None);
                            let bytes = ok.to_bytes();
                            self.rec.handle_sip(self.now, Peer::udp(SRC.parse().unwrap()), &bytes);
                        }
                    },
                    Output::Media(cmd) => self.media(cmd),
                    Output::Recording { event, seq } => {
                        let meta = event.meta();
                        for (i, l) in self.legs.iter().enumerate() {
                            if meta.call_ids.contains(&l.call_id) {
                                self.recording_of[i] = Some(meta.id);
                            }
                        }
                        if self.hold_saves {
                            self.held.push((meta.id, seq));
                        } else {
                            self.rec.saved(self.now, meta.id, seq, Ok(()));
                        }
                    }
                }
            }
            while let Some(o) = self.shard.poll_output() {
                progressed = true;
                match o {
                    ShardOutput::Append { data, .. } => self.shard.recycle(data),
                    ShardOutput::Close { .. } => self.closed += 1,
                    ShardOutput::Notice(MediaNotice::Inactive { recording }) => {
                        self.rec.handle_media(self.now, MediaNotice::Inactive { recording })
                    }
                    ShardOutput::Notice(n) => self.rec.handle_media(self.now, n),
                    ShardOutput::Release { slot } => self.slots.retain(|(_, s)| *s != slot),
                    ShardOutput::Open { .. } => {}
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn on_response(&mut self, r: Response) {
        let Some(call_id) = r.call_id().map(str::to_owned) else { return };
        let is_invite = r.cseq().is_some_and(|c| c.method == sip_proto::Method::Invite);
        if let Some(l) = self.legs.iter_mut().find(|l| l.call_id == call_id) {
            if is_invite && r.status.is_success() && l.to_tag.is_none() {
                l.to_tag = r.to().and_then(|t| t.tag().map(str::to_owned));
            }
        }
    }

    fn media(&mut self, cmd: MediaCommand) {
        match &cmd {
            MediaCommand::Start { .. } => self.started += 1,
            MediaCommand::Stop { .. } => self.stopped += 1,
            _ => {}
        }
        match cmd {
            MediaCommand::AddStream(spec) => {
                let id = spec.id.0;
                if let Some(slot) = self.shard.add_stream(self.now.mono, spec) {
                    self.slots.push((id, slot));
                }
            }
            other => self.shard.command(self.now.mono, other),
        }
    }

    fn leg(&self, i: usize) -> Option<usize> {
        (!self.legs.is_empty()).then(|| i % self.legs.len())
    }

    fn new_leg(&mut self, from: String, extra: &str, ct: Option<&str>, body: &str) {
        let n = self.legs.len();
        self.legs.push(Leg { call_id: format!("call-{n}"), from, invite: String::new(), to_tag: None, cseq: 1 });
        self.recording_of.push(None);
        let invite = self.request(n, "INVITE", extra, ct, body);
        self.legs[n].invite = invite.clone();
        self.send(&invite);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::NewCall(kind) => {
                let n = self.legs.len();
                let from = format!("From: <sip:src@sbc.example>;tag=f{n}");
                match kind {
                    Kind::Siprec => self.new_leg(
                        from,
                        "Require: siprec\r\n",
                        Some("multipart/mixed;boundary=unique-boundary-1"),
                        &siprec_body(),
                    ),
                    Kind::Plain => self.new_leg(from, "", Some("application/sdp"), &sdp(4000, "0 8")),
                    Kind::Undecodable => self.new_leg(from, "", Some("application/sdp"), &sdp(4000, "3")),
                    Kind::Refused => self.new_leg(from, "Require: frobnicate\r\n", None, ""),
                    Kind::Forked => {
                        for end in ["x-nearend", "x-farend"] {
                            let from = format!(
                                "From: <sip:4062@cucm;{end};x-refci={n};x-nearendaddr=4062;x-farendaddr=5550>;tag={end}{n}"
                            );
                            self.new_leg(from, "", None, "");
                        }
                    }
                }
            }
            Op::Ack(i) => {
                let Some(i) = self.leg(i) else { return };
                if self.legs[i].to_tag.is_some() {
                    let ack = self.request(i, "ACK", "", None, "");
                    self.send(&ack);
                }
            }
            Op::Hold(i) => {
                let Some(i) = self.leg(i) else { return };
                if self.legs[i].to_tag.is_some() {
                    self.legs[i].cseq += 1;
                    let body = sdp(4000, "0").replace("a=sendonly", "a=inactive");
                    let reinvite = self.request(i, "INVITE", "", Some("application/sdp"), &body);
                    self.send(&reinvite);
                    let ack = self.request(i, "ACK", "", None, "");
                    self.send(&ack);
                }
            }
            Op::Bye(i) => {
                let Some(i) = self.leg(i) else { return };
                self.legs[i].cseq += 1;
                let bye = self.request(i, "BYE", "", None, "");
                self.send(&bye);
            }
            Op::Cancel(i) => {
                let Some(i) = self.leg(i) else { return };
                let invite = self.legs[i].invite.clone();
                let cancel = cancel_of(&invite);
                self.send(&cancel);
            }
            Op::Info(i) => {
                let Some(i) = self.leg(i) else { return };
                self.legs[i].cseq += 1;
                let info = self.request(i, "INFO", "", Some("application/dtmf-relay"), "Signal=5\r\nDuration=160\r\n");
                self.send(&info);
            }
            Op::Rtp(i) => {
                let Some(i) = self.leg(i) else { return };
                let from: SocketAddr = "127.0.0.1:40000".parse().unwrap();
                let slots: Vec<usize> = self.slots.iter().map(|(_, s)| *s).collect();
                for (k, slot) in slots.into_iter().enumerate().filter(|(k, _)| k % 3 == i % 3) {
                    for seq in 0..5u16 {
                        let pkt = rtp(seq + k as u16, u32::from(seq) * 160, 1000 + slot as u32);
                        self.shard.on_rtp(self.now.mono, slot, from, &pkt);
                    }
                }
                self.pump();
            }
            Op::Inactive(i) => {
                if let Some(id) = self.leg(i).and_then(|i| self.recording_of[i]) {
                    self.rec.handle_media(self.now, MediaNotice::Inactive { recording: id });
                    self.pump();
                }
            }
            Op::StorageFailed(i) => {
                if let Some(id) = self.leg(i).and_then(|i| self.recording_of[i]) {
                    let reason = "No space left on device".to_owned();
                    self.rec.handle_media(self.now, MediaNotice::StorageFailed { recording: id, reason });
                    self.rec.set_storage_ok(true);
                    self.pump();
                }
            }
            Op::HoldSaves(on) => self.hold_saves = on,
            Op::ReleaseSaves(ok) => {
                for (id, seq) in std::mem::take(&mut self.held) {
                    let result = if ok { Ok(()) } else { Err("disk full".to_owned()) };
                    self.rec.saved(self.now, id, seq, result);
                }
                self.pump();
            }
            Op::Advance(ms) => self.advance(Duration::from_millis(ms)),
            Op::Tick => {
                self.shard.tick(self.now.mono);
                self.pump();
            }
        }
    }

    /// Moves virtual time, firing every recorder timer and ticking the shard.
    fn advance(&mut self, d: Duration) {
        let target = self.now.mono + d;
        loop {
            let next_tick = self.now.mono + Duration::from_millis(20);
            let next = self.rec.poll_timeout().map_or(next_tick, |t| t.min(next_tick)).max(self.now.mono);
            if next > target {
                break;
            }
            let step = next - self.now.mono;
            self.now.mono = next;
            self.now.wall += step;
            self.rec.handle_timeout(self.now);
            self.shard.tick(self.now.mono);
            self.pump();
        }
        self.now.wall += target - self.now.mono;
        self.now.mono = target;
    }

    /// Ends whatever is still up the way sources do, then lets every timer fire.
    fn wind_down(&mut self) {
        self.hold_saves = false;
        self.apply(Op::ReleaseSaves(true));
        for i in 0..self.legs.len() {
            if self.legs[i].to_tag.is_some() {
                self.legs[i].cseq += 1;
                let bye = self.request(i, "BYE", "", None, "");
                self.send(&bye);
            }
        }
        // 64·T1 for transactions, media timeout and session timers: 5 minutes covers them.
        self.advance(Duration::from_secs(300));
    }
}

fn cancel_of(invite: &str) -> String {
    let mut out = String::new();
    let (head, _) = invite.split_once("\r\n\r\n").unwrap();
    for (i, line) in head.split("\r\n").enumerate() {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        if i == 0 {
            out.push_str(&line.replacen("INVITE", "CANCEL", 1));
        } else if name == "cseq" {
            out.push_str(&line.replace("INVITE", "CANCEL"));
        } else if ["via", "from", "to", "call-id", "max-forwards"].contains(&name.as_str()) {
            out.push_str(line);
        } else {
            continue;
        }
        out.push_str("\r\n");
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

fn rtp(seq: u16, ts: u32, ssrc: u32) -> Vec<u8> {
    rtp_types::RtpPacketBuilder::new()
        .payload_type(0)
        .sequence_number(seq)
        .timestamp(ts)
        .ssrc(ssrc)
        .payload(&[0xffu8; 160][..])
        .write_vec()
        .unwrap()
}

fn run(ops: Vec<Op>) -> Sim {
    let mut sim = Sim::new();
    for op in ops {
        sim.apply(op);
    }
    sim.wind_down();
    sim
}

fn assert_all_released(sim: &Sim) {
    assert!(sim.rec.sizes().is_empty(), "recorder keeps per-call state: {:?}", sim.rec.sizes());
    assert_eq!(sim.shard.sizes(), ShardSizes::default(), "shard keeps per-call state");
    assert!(sim.ports.0.lock().unwrap().is_empty(), "ports not released: {:?}", sim.ports.0.lock().unwrap());
    assert!(sim.slots.is_empty(), "stream sockets not released: {:?}", sim.slots);
    assert!(sim.shard.spare_buffers() <= SPARE_BUFFERS);
    assert_eq!(sim.started, sim.stopped, "every recording started is stopped");
    assert_eq!(sim.stopped, sim.closed, "every stopped recording is closed by the shard");
    assert_eq!(sim.rec.unanswered_transactions(), 0, "every request got an answer");
    assert_eq!(sim.rec.active_recordings(), 0);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn per_call_state_returns_to_empty(ops in proptest::collection::vec(op(), 200..500)) {
        let sim = run(ops);
        assert_all_released(&sim);
    }
}

/// Every kind of call at least once, in one fixed sequence, so a broken
/// path fails here even if the random cases happen to miss it.
#[test]
fn every_kind_of_ending_leaves_nothing_behind() {
    use Op::*;
    let ops = vec![
        NewCall(Kind::Siprec),
        Ack(0),
        Rtp(0),
        Tick,
        Info(0),
        Hold(0),
        Bye(0),
        NewCall(Kind::Forked),
        Ack(1),
        Ack(2),
        Bye(1),
        Bye(2),
        NewCall(Kind::Plain), // never acknowledged: 64·T1 ends it
        NewCall(Kind::Refused),
        NewCall(Kind::Undecodable),
        HoldSaves(true),
        NewCall(Kind::Siprec), // leg 6: cancelled while its save waits
        Cancel(6),
        NewCall(Kind::Plain), // leg 7: its save fails
        ReleaseSaves(false),
        NewCall(Kind::Plain), // leg 8: its save never completes (save timeout)
        Advance(5_000),
        HoldSaves(false),
        NewCall(Kind::Siprec), // leg 9: media inactivity
        Ack(9),
        Inactive(9),
        NewCall(Kind::Plain), // leg 10: storage failure
        Ack(10),
        StorageFailed(10),
        Advance(40_000),
    ];
    let sim = run(ops);
    let c = sim.rec.counters();
    assert_eq!(c.invites_cancelled, 1, "{c:?}");
    for code in [420, 488, 503] {
        assert!(c.rejected_with(code) > 0, "a {code} was sent: {c:?}");
    }
    assert_eq!(c.rejected_with(503), 2, "failed save and save timeout: {c:?}");
    assert!(c.ended_in(RecordingState::Completed) >= 3 && c.ended_in(RecordingState::Failed) >= 4, "{c:?}");
    assert!(c.recordings_ended.contains_key(&(RecordingState::Failed, EndCause::StorageFailure)), "{c:?}");
    assert_eq!(sim.started, 8, "calls that got a recording");
    assert_all_released(&sim);
}
