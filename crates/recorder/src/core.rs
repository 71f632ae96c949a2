//! The recorder's transaction user.
//!
//! ## Driver contract
//! Same shape as [`sip_proto::Endpoint`], which this type owns: feed
//! messages with [`Recorder::handle_sip`], media notices with
//! [`Recorder::handle_media`], call [`Recorder::handle_timeout`] at
//! [`Recorder::poll_timeout`], and after every input drain
//! [`Recorder::poll_output`]. `now` carries both a monotonic instant (for
//! timers) and the wall-clock time (for recording timestamps).
//!
//! ## Calls, legs and recordings
//! A *leg* is one SIP dialog. A *recording* is one call: a SIPREC session
//! or a plain INVITE is one leg; a forked call (Cisco BiB) is two legs
//! linked by their `x-refci`. The recording ends when its last leg ends.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use media::Codec;
use media_control::{MediaCommand, MediaNotice, MediaPort, PortAllocator, StreamId, StreamSpec};
use model::latency::LatencyHistogram;
use model::{MediaAlarm, RecordingId, RecordingMeta, RecordingState, SourceKind, StreamRecord};
use rtp_core::srtp::{SrtpKey, SrtpSuite};
use sip_proto::message::RequestEssentials;
use sip_proto::{
    CSeqMismatch, Endpoint, EndpointSizes, Event, HeaderAccess, Method, Output as SipOutput, Peer, Request, Response,
    SipError, StatusCode, Transport, TxId, Uri,
};
use siprec::forked::{ForkedLeg, LegRole};
use siprec::metadata::{self, Metadata};
use siprec::sdp::{self, CryptoOffer, LocalSdp, NegotiatedStream, RtpMap, SessionDescription, SrtpPolicy};
use siprec::{classify_body, RecordingBody, ACCEPTED_BODIES};
use time::OffsetDateTime;

use crate::config::RecorderConfig;
use crate::output::{Output, RecordingEvent};
use crate::participants::{self, CallParties};
use crate::reasons::{refusal_label, EndCause, Tolerated};

/// The two clocks every input carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: Instant,
    pub wall: OffsetDateTime,
}

const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, INFO";
const SUPPORTED: &str = "siprec, timer, replaces";
/// Option tags a request may require of us.
const UNDERSTOOD: &[&str] = &["siprec", "timer", "100rel", "replaces"];
/// Dynamic payload type used for telephone-event in our own offers.
const OFFER_TE_PT: u8 = 101;

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub invites_accepted: u64,
    /// Initial INVITEs refused, by status code and reason label.
    pub invites_rejected: BTreeMap<(u16, &'static str), u64>,
    /// Recordings ended, by final state and cause.
    pub recordings_ended: BTreeMap<(RecordingState, EndCause), u64>,
    pub malformed_messages: u64,
    pub byes_sent: u64,
    /// Streams that received no RTP within the alarm time.
    pub streams_without_rtp: u64,
    /// Initial INVITE to its final response (an accepted call waits for its
    /// metadata to be stored; a refusal is answered at once).
    pub invite_answer: LatencyHistogram,
    /// Messages that broke a rule in a way whose meaning is clear, used
    /// anyway (docs/phone-platforms.md), by case.
    pub tolerated: BTreeMap<Tolerated, u64>,
    /// The case most recently tolerated (for the driver's warning).
    pub last_tolerated: Option<Tolerated>,
    /// All tolerated cases together: a driver sees a new one by this
    /// count changing, without copying the map per message.
    pub tolerated_total: u64,
    /// INVITEs the source cancelled before we answered.
    pub invites_cancelled: u64,
}

impl Counters {
    fn tolerate(&mut self, case: Tolerated) {
        *self.tolerated.entry(case).or_default() += 1;
        self.tolerated_total += 1;
        self.last_tolerated = Some(case);
    }

    fn count_refusal(&mut self, err: &SipError) {
        *self.invites_rejected.entry((err.status.as_u16(), refusal_label(err))).or_default() += 1;
    }

    /// Initial INVITEs refused with `code`, whatever the reason.
    pub fn rejected_with(&self, code: u16) -> u64 {
        self.invites_rejected.iter().filter(|((c, _), _)| *c == code).map(|(_, n)| n).sum()
    }

    /// Recordings ended in `state`, whatever the cause.
    pub fn ended_in(&self, state: RecordingState) -> u64 {
        self.recordings_ended.iter().filter(|((s, _), _)| *s == state).map(|(_, n)| n).sum()
    }
}

/// How many entries each per-call structure of a [`Recorder`] holds (its
/// endpoint's included): all zero once every call has ended and every
/// timer has fired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecorderSizes {
    pub legs: usize,
    pub legs_by_call: usize,
    pub recordings: usize,
    pub fork_links: usize,
    pub outputs: usize,
    pub endpoint: EndpointSizes,
}

impl RecorderSizes {
    pub fn is_empty(&self) -> bool {
        *self == RecorderSizes::default()
    }
}

type LegKey = (String, String);

#[derive(Debug)]
struct LegStream {
    index: usize,
    id: StreamId,
    port: MediaPort,
    spec: StreamSpec,
}

#[derive(Debug)]
struct Leg {
    call_id: String,
    local_tag: String,
    peer: Peer,
    /// Request-URI for requests we send (remote Contact, else From URI).
    remote_target: String,
    route_set: Vec<String>,
    /// Our side as it appears in the dialog (the INVITE's To plus our tag).
    local_header: String,
    /// Their side (the INVITE's From, with their tag).
    remote_header: String,
    local_cseq: u32,
    remote_cseq: u32,
    recording: RecordingId,
    streams: Vec<LegStream>,
    /// m-line index → channel for streams of this leg.
    sdp_session: u64,
    sdp_version: u64,
    local_ip: IpAddr,
    /// We offered in a 2xx; the answer comes in the ACK.
    awaiting_answer: bool,
    confirmed: bool,
    invite_tx: Option<TxId>,
    role: Option<LegRole>,
    /// RFC 4028 session expiry (the SRC refreshes; we only watch).
    session_interval: Option<Duration>,
    session_deadline: Option<Instant>,
    /// The 200 OK waiting for the recording's metadata to reach disk.
    pending_answer: Option<PendingAnswer>,
}

/// An accepted INVITE not yet answered: its 200 OK leaves once the
/// recording save numbered `save_seq` is durable, so a node never
/// acknowledges a call it could lose track of in a crash.
#[derive(Debug)]
struct PendingAnswer {
    invite: Request,
    ok: Response,
    save_seq: u64,
    deadline: Instant,
    received: Instant,
}

impl Leg {
    /// Any in-dialog request from the source counts as an RFC 4028 refresh.
    fn refresh_session(&mut self, now: Now) {
        if let Some(i) = self.session_interval {
            self.session_deadline = Some(now.mono + i);
        }
    }
}

#[derive(Debug)]
struct Rec {
    meta: RecordingMeta,
    legs: Vec<LegKey>,
    channels: u16,
    fork_link: Option<String>,
    siprec: Option<Metadata>,
    /// (label, channel) of accepted streams, for participant mapping.
    labels: Vec<(Option<String>, u8)>,
    /// Number of the latest metadata save asked of the driver.
    save_seq: u64,
    /// A leg was answered (the timeline started).
    answered: bool,
    /// Streams the media engine reported without any RTP.
    streams_without_rtp: usize,
}

/// The recording server's SIP transaction user. See the module docs.
pub struct Recorder {
    cfg: RecorderConfig,
    endpoint: Endpoint,
    ports: Box<dyn PortAllocator>,
    legs: HashMap<LegKey, Leg>,
    legs_by_call: HashMap<String, Vec<String>>,
    recordings: HashMap<RecordingId, Rec>,
    fork_links: HashMap<String, RecordingId>,
    next_stream: u64,
    storage_ok: bool,
    /// The disk is too far behind the audio to take more calls.
    storage_slow: bool,
    draining: bool,
    counters: Counters,
    out: VecDeque<Output>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("legs", &self.legs.len()).field("recordings", &self.recordings.len()).finish()
    }
}

impl Recorder {
    pub fn new(cfg: RecorderConfig, ports: Box<dyn PortAllocator>) -> Recorder {
        let endpoint = Endpoint::new(cfg.timers);
        Recorder {
            cfg,
            endpoint,
            ports,
            legs: HashMap::new(),
            legs_by_call: HashMap::new(),
            recordings: HashMap::new(),
            fork_links: HashMap::new(),
            next_stream: 1,
            storage_ok: true,
            storage_slow: false,
            draining: false,
            counters: Counters::default(),
            out: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &RecorderConfig {
        &self.cfg
    }

    /// Storage health as probed by the driver; unhealthy storage refuses calls with 503.
    pub fn set_storage_ok(&mut self, ok: bool) {
        self.storage_ok = ok;
    }

    /// Settings an operator may change while calls run (a reload): who may
    /// send calls, and the call limit. Calls in progress are not touched.
    pub fn set_admission(&mut self, allowed_sources: Vec<ipnet::IpNet>, max_calls: usize) {
        self.cfg.allowed_sources = allowed_sources;
        self.cfg.max_calls = max_calls;
    }

    /// The driver's audio writer is behind: new calls get 503 until it catches up.
    pub fn set_storage_slow(&mut self, slow: bool) {
        self.storage_slow = slow;
    }

    pub fn is_storage_slow(&self) -> bool {
        self.storage_slow
    }

    /// Drain mode: refuse new calls (503), finish the ones in progress.
    pub fn set_draining(&mut self, draining: bool) {
        self.draining = draining;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Can this node take a new recording now (what OPTIONS answers)?
    pub fn can_record(&self) -> Result<(), &'static str> {
        if self.draining {
            Err("Draining")
        } else if !self.storage_ok {
            Err("Storage unavailable")
        } else if self.storage_slow || self.pending_answers() >= self.cfg.max_pending_answers.max(1) {
            Err("Storage too slow")
        } else if self.cfg.max_calls > 0 && self.recordings.len() >= self.cfg.max_calls {
            Err("Call limit reached")
        } else {
            Ok(())
        }
    }

    /// INVITEs accepted whose 200 OK waits for their metadata save.
    pub fn pending_answers(&self) -> usize {
        self.legs.values().filter(|l| l.pending_answer.is_some()).count()
    }

    /// Calls in progress whose media raised an alarm (a stream without RTP).
    pub fn recordings_with_media_alarm(&self) -> usize {
        self.recordings.values().filter(|r| r.meta.media_alarm.is_some()).count()
    }

    /// RTP port pairs in use and in the range.
    pub fn port_usage(&self) -> (usize, usize) {
        (self.ports.in_use(), self.ports.capacity())
    }

    pub fn active_recordings(&self) -> usize {
        self.recordings.len()
    }

    pub fn active_legs(&self) -> usize {
        self.legs.len()
    }

    pub fn active_recording_ids(&self) -> Vec<RecordingId> {
        self.recordings.keys().copied().collect()
    }

    /// Current metadata of an active recording.
    pub fn active_meta(&self, id: RecordingId) -> Option<&RecordingMeta> {
        self.recordings.get(&id).map(|r| &r.meta)
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Sizes of every per-call map and queue, the endpoint's included.
    pub fn sizes(&self) -> RecorderSizes {
        RecorderSizes {
            legs: self.legs.len(),
            legs_by_call: self.legs_by_call.len(),
            recordings: self.recordings.len(),
            fork_links: self.fork_links.len(),
            outputs: self.out.len(),
            endpoint: self.endpoint.sizes(),
        }
    }

    /// Server transactions dropped unanswered (a bug if ever non-zero).
    pub fn unanswered_transactions(&self) -> u64 {
        self.endpoint.unanswered()
    }

    pub fn responses_sent(&self) -> &BTreeMap<u16, u64> {
        self.endpoint.responses_sent()
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let legs = self.legs.values().flat_map(|l| [l.session_deadline, l.pending_answer.as_ref().map(|p| p.deadline)]);
        self.endpoint.poll_timeout().into_iter().chain(legs.flatten()).min()
    }

    /// A SIP message arrived from `peer`.
    pub fn handle_sip(&mut self, now: Now, peer: Peer, data: &[u8]) {
        self.endpoint.handle_message(now.mono, peer, data);
        self.pump(now);
    }

    /// The head of a message too large to accept (stream transports): 513.
    pub fn reject_oversized(&mut self, now: Now, peer: Peer, head: &[u8]) {
        self.endpoint.reject_unparsable(peer, head, StatusCode::MESSAGE_TOO_LARGE, "Message Too Large");
        self.pump(now);
    }

    /// The head of a stream message whose Content-Length is not a number: 400.
    pub fn reject_bad_content_length(&mut self, now: Now, peer: Peer, head: &[u8]) {
        self.endpoint.reject_unparsable(peer, head, StatusCode::BAD_REQUEST, "Malformed Content-Length");
        self.pump(now);
    }

    pub fn handle_timeout(&mut self, now: Now) {
        self.endpoint.handle_timeout(now.mono);
        let expired: Vec<LegKey> = self
            .legs
            .iter()
            .filter(|(_, l)| l.session_deadline.is_some_and(|d| d <= now.mono))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            self.end_leg(now, &key, true, RecordingState::Completed, EndCause::SessionTimer, "session timer expired");
        }
        let unsaved: Vec<LegKey> = self
            .legs
            .iter()
            .filter(|(_, l)| l.pending_answer.as_ref().is_some_and(|p| p.deadline <= now.mono))
            .map(|(k, _)| k.clone())
            .collect();
        for key in unsaved {
            let reason = format!("recording metadata not stored within {} ms", self.cfg.save_timeout.as_millis());
            self.end_leg(now, &key, false, RecordingState::Failed, EndCause::MetadataNotStored, &reason);
        }
        self.pump(now);
    }

    /// The driver finished metadata save `seq` of recording `id` (see
    /// [`Output::Recording`]). On success every INVITE waiting for that
    /// save is answered 200; on failure they get 503 and their legs end.
    pub fn saved(&mut self, now: Now, id: RecordingId, seq: u64, result: Result<(), String>) {
        let Some(rec) = self.recordings.get(&id) else { return };
        let waiting: Vec<LegKey> = rec
            .legs
            .iter()
            .filter(|k| self.legs[*k].pending_answer.as_ref().is_some_and(|p| p.save_seq <= seq || result.is_err()))
            .cloned()
            .collect();
        for key in waiting {
            match &result {
                Ok(()) => {
                    let leg = self.legs.get_mut(&key).expect("listed");
                    let (Some(p), Some(tx)) = (leg.pending_answer.take(), leg.invite_tx) else { continue };
                    self.counters.invites_accepted += 1;
                    self.counters.invite_answer.observe(now.mono.saturating_duration_since(p.received));
                    self.endpoint.respond(now.mono, tx, p.ok);
                    let rec = self.recordings.get_mut(&id).expect("checked");
                    if !rec.answered {
                        // The recording starts with the call, not with the wait for the disk.
                        rec.answered = true;
                        rec.meta.started_at = now.wall;
                        self.out.push_back(Output::Media(MediaCommand::Answered { recording: id }));
                    }
                }
                Err(e) => {
                    let reason = format!("recording metadata could not be stored: {e}");
                    self.end_leg(now, &key, false, RecordingState::Failed, EndCause::MetadataNotStored, &reason);
                }
            }
        }
        self.pump(now);
    }

    pub fn handle_media(&mut self, now: Now, notice: MediaNotice) {
        match notice {
            MediaNotice::Inactive { recording } => self.terminate_recording(
                now,
                recording,
                RecordingState::Completed,
                EndCause::MediaTimeout,
                "media timeout",
            ),
            MediaNotice::NoRtp { recording, .. } => {
                if let Some(rec) = self.recordings.get_mut(&recording) {
                    rec.streams_without_rtp += 1;
                    self.counters.streams_without_rtp += 1;
                    let alarm = if rec.streams_without_rtp >= rec.meta.streams.len() {
                        MediaAlarm::NoRtp
                    } else {
                        MediaAlarm::StreamWithoutRtp
                    };
                    rec.meta.media_alarm = Some(alarm);
                }
            }
            MediaNotice::StorageFailed { recording, reason } => self.terminate_recording(
                now,
                recording,
                RecordingState::Failed,
                EndCause::StorageFailure,
                &format!("storage failure: {reason}"),
            ),
        }
        self.pump(now);
    }

    /// Administrator action: end an active recording (BYE to the source).
    pub fn complete(&mut self, now: Now, id: RecordingId) -> bool {
        if !self.recordings.contains_key(&id) {
            return false;
        }
        self.terminate_recording(
            now,
            id,
            RecordingState::Completed,
            EndCause::Administrator,
            "completed by administrator",
        );
        self.pump(now);
        true
    }

    /// Graceful stop: every recording ends as interrupted, every leg gets a BYE.
    pub fn shutdown(&mut self, now: Now) {
        let ids: Vec<RecordingId> = self.recordings.keys().copied().collect();
        for id in ids {
            self.terminate_recording(now, id, RecordingState::Interrupted, EndCause::Shutdown, "node shutdown");
        }
        self.pump(now);
    }

    fn pump(&mut self, now: Now) {
        // Handling an event may queue more output; loop until both are empty.
        while let Some(o) = self.endpoint.poll_output() {
            match o {
                SipOutput::Transmit(t) => self.out.push_back(Output::Transmit(t)),
                SipOutput::Event(e) => self.on_event(now, e),
            }
        }
    }

    fn on_event(&mut self, now: Now, e: Event) {
        match e {
            Event::Request { tx, request, essentials, peer } => self.on_request(now, tx, request, essentials, peer),
            Event::Ack { request, peer, .. } => self.on_ack(now, request, peer),
            Event::Cancelled { invite_tx } => self.on_cancelled(now, invite_tx),
            Event::AckTimeout { tx, call_id } => self.on_ack_timeout(now, tx, &call_id),
            Event::Response { .. } | Event::RequestTimeout { .. } | Event::StrayResponse { .. } => {}
            Event::Malformed { .. } => self.counters.malformed_messages += 1,
        }
    }

    // ----- responses -----

    fn reply(&mut self, now: Now, tx: TxId, req: &Request, status: StatusCode, reason: &str, to_tag: Option<&str>) {
        let resp = self.response(req, status, reason, to_tag);
        self.endpoint.respond(now.mono, tx, resp);
    }

    fn response(&self, req: &Request, status: StatusCode, reason: &str, to_tag: Option<&str>) -> Response {
        let mut resp = Response::to_request(req, status, reason, to_tag);
        resp.headers.push("Server", self.cfg.server_name.clone());
        match status.as_u16() {
            503 => resp.headers.push("Retry-After", self.cfg.retry_after_secs.to_string()),
            415 => resp.headers.push("Accept", ACCEPTED_BODIES),
            405 => resp.headers.push("Allow", ALLOW),
            _ => {}
        }
        resp
    }

    fn reject(&mut self, now: Now, tx: TxId, req: &Request, err: SipError) {
        if req.method == Method::Invite && req.to().is_some_and(|t| t.tag().is_none()) {
            self.counters.count_refusal(&err);
            self.counters.invite_answer.observe(Duration::ZERO);
        }
        let mut resp = self.response(req, err.status, &err.reason, None);
        if err.status == StatusCode::NOT_ACCEPTABLE_HERE {
            let host = self.cfg.advertised_ip.unwrap_or(self.cfg.fallback_ip);
            resp.headers.push("Warning", format!("304 {host} \"{}\"", err.reason.replace('"', "'")));
        }
        self.endpoint.respond(now.mono, tx, resp);
    }

    fn local_ip(&self, req: &Request) -> IpAddr {
        self.cfg
            .advertised_ip
            .or_else(|| {
                Uri::parse(&req.uri)
                    .and_then(|u| u.host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().ok())
                    .filter(|ip| !ip.is_unspecified())
            })
            .unwrap_or(self.cfg.fallback_ip)
    }

    /// The port we listen on for `transport` (its default when unknown).
    fn listen_port(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Udp => self.cfg.sip_udp,
            Transport::Tcp => self.cfg.sip_tcp,
            Transport::Tls => self.cfg.sip_tls,
        }
        .map(|a| a.port())
        .unwrap_or(transport.default_port())
    }

    fn contact(&self, ip: IpAddr, transport: Transport, siprec: bool) -> String {
        let port = self.listen_port(transport);
        let host = if ip.is_ipv6() { format!("[{ip}]") } else { ip.to_string() };
        let t = transport.as_str().to_ascii_lowercase();
        let feature = if siprec { ";+sip.srs" } else { "" };
        format!("<sip:callvault@{host}:{port};transport={t}>{feature}")
    }

    // ----- requests -----

    fn on_request(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials, peer: Peer) {
        if req.cseq_mismatch() == Some(CSeqMismatch::Tolerated) {
            self.counters.tolerate(Tolerated::CSeqMethodMismatch);
        }
        if !matches!(req.method, Method::Other(_)) {
            // Header inspection, for every method we implement (RFC 3261 §8.2.2).
            let scheme = req.uri.split(':').next().unwrap_or("");
            if !["sip", "sips", "tel"].iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
                let err = SipError::new(StatusCode::UNSUPPORTED_URI_SCHEME, "Unsupported URI Scheme");
                return self.reject(now, tx, &req, err);
            }
            // Our answer is SDP: an INVITE whose Accept excludes it cannot
            // get one (RFC 3261 §21.4.7; RFC 4475 sdp01).
            if req.method == Method::Invite && !Self::accepts_sdp(&req) {
                let err = SipError::new(StatusCode::NOT_ACCEPTABLE, "Not Acceptable: the answer is application/sdp");
                return self.reject(now, tx, &req, err);
            }
            // A SIP Request-URI carries no `?headers` (RFC 3261 §19.1.1; RFC 4475 escruri).
            if !scheme.eq_ignore_ascii_case("tel") && req.uri.contains('?') {
                let err = SipError::new(StatusCode::BAD_REQUEST, "Headers in the Request-URI");
                return self.reject(now, tx, &req, err);
            }
            let unsupported = Self::unsupported_extensions(&req);
            if !unsupported.is_empty() {
                if req.method == Method::Invite && e.to.tag().is_none() {
                    self.counters.count_refusal(&SipError::new(StatusCode::BAD_EXTENSION, "Bad Extension"));
                    self.counters.invite_answer.observe(Duration::ZERO);
                }
                let reason = format!("Bad Extension: {}", unsupported.join(", "));
                let mut resp = self.response(&req, StatusCode::BAD_EXTENSION, &reason, None);
                resp.headers.push("Unsupported", unsupported.join(", "));
                self.endpoint.respond(now.mono, tx, resp);
                return;
            }
        }
        match &req.method {
            Method::Invite if e.to.tag().is_none() => self.on_initial_invite(now, tx, req, e, peer),
            Method::Invite | Method::Update => self.on_in_dialog_offer(now, tx, req, e),
            Method::Bye => self.on_bye(now, tx, req, e),
            Method::Options => self.on_options(now, tx, req, e),
            Method::Info => self.on_info(now, tx, req, e),
            Method::Prack => self.reject(
                now,
                tx,
                &req,
                SipError::new(StatusCode::CALL_DOES_NOT_EXIST, "No reliable provisional sent"),
            ),
            Method::Other(_) => {
                self.reject(now, tx, &req, SipError::new(StatusCode::NOT_IMPLEMENTED, "Not Implemented"))
            }
            _ => self.reject(now, tx, &req, SipError::new(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")),
        }
    }

    fn on_options(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials) {
        let in_dialog = e.to.tag().is_some();
        let (status, reason) = match self.can_record() {
            Err(why) if !in_dialog => (StatusCode::SERVICE_UNAVAILABLE, why),
            _ => (StatusCode::OK, "OK"),
        };
        let tag = self.endpoint.new_token(10);
        let mut resp = self.response(&req, status, reason, Some(&tag));
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Accept", ACCEPTED_BODIES);
        resp.headers.push("Supported", SUPPORTED);
        self.endpoint.respond(now.mono, tx, resp);
    }

    /// Option tags in Require this recorder does not implement.
    /// No Accept header, or one that takes `application/sdp`.
    fn accepts_sdp(req: &Request) -> bool {
        let mut types = req.headers.list("Accept").peekable();
        types.peek().is_none()
            || types.any(|t| {
                let t = t.split(';').next().unwrap_or("").trim();
                ["application/sdp", "application/*", "*/*"].iter().any(|ok| t.eq_ignore_ascii_case(ok))
            })
    }

    fn unsupported_extensions(req: &Request) -> Vec<String> {
        req.headers
            .list("Require")
            .filter(|t| !UNDERSTOOD.iter().any(|u| t.eq_ignore_ascii_case(u)))
            .map(str::to_owned)
            .collect()
    }

    fn check_admission(&self, peer: Peer, new_recording: bool) -> Result<(), SipError> {
        let ip = peer.addr.ip();
        if !self.cfg.allowed_sources.is_empty() && !self.cfg.allowed_sources.iter().any(|n| n.contains(&ip)) {
            return Err(SipError::new(StatusCode::FORBIDDEN, "Source not allowed"));
        }
        if new_recording {
            if let Err(why) = self.can_record() {
                return Err(SipError::new(StatusCode::SERVICE_UNAVAILABLE, why));
            }
        } else if !self.storage_ok {
            return Err(SipError::new(StatusCode::SERVICE_UNAVAILABLE, "Storage unavailable"));
        }
        Ok(())
    }

    fn parse_body(req: &Request) -> Result<(RecordingBody, Option<Metadata>, Option<SessionDescription>), SipError> {
        let body = classify_body(req.content_type().as_ref(), &req.body)?;
        let md = body
            .metadata
            .as_deref()
            .map(metadata::parse)
            .transpose()
            .map_err(|e| SipError::bad_request(format!("Malformed recording metadata: {e}")))?;
        let sd = body
            .sdp
            .as_deref()
            .map(sdp::parse)
            .transpose()
            .map_err(|e| SipError::bad_request(format!("Malformed SDP: {e}")))?;
        Ok((body, md, sd))
    }

    fn decodable(m: &RtpMap) -> bool {
        Codec::from_rtpmap(&m.encoding, m.clock_rate, m.channels).is_some()
    }

    /// RFC 4028: the interval we will watch (refresher is always the SRC).
    fn session_interval(&self, req: &Request) -> Result<Option<u32>, SipError> {
        let Some(se) = req.headers.get("Session-Expires") else { return Ok(None) };
        let secs: u32 = se
            .split(';')
            .next()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| SipError::bad_request("Malformed Session-Expires"))?;
        if secs < self.cfg.min_session_expires {
            return Err(SipError::with_reason(StatusCode::new(422).expect("valid"), "Session Interval Too Small"));
        }
        Ok(Some(secs))
    }

    fn on_initial_invite(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials, peer: Peer) {
        let fork = ForkedLeg::from_header(&e.from);
        let joins = fork.as_ref().and_then(|f| self.fork_links.get(&f.link).copied());
        if let Err(err) = self.check_admission(peer, joins.is_none()) {
            return self.reject(now, tx, &req, err);
        }
        let interval = match self.session_interval(&req) {
            Ok(i) => i,
            Err(err) => {
                let mut resp = self.response(&req, err.status, &err.reason, None);
                resp.headers.push("Min-SE", self.cfg.min_session_expires.to_string());
                self.counters.count_refusal(&err);
                self.counters.invite_answer.observe(Duration::ZERO);
                self.endpoint.respond(now.mono, tx, resp);
                return;
            }
        };
        let (_, md, sd) = match Self::parse_body(&req) {
            Ok(parts) => parts,
            Err(err) => return self.reject(now, tx, &req, err),
        };
        if sd.as_ref().is_some_and(|sd| sd.skipped_lines > 0) {
            self.counters.tolerate(Tolerated::SdpStrayLine);
        }
        let siprec = md.is_some()
            || req.headers.has_token("Require", "siprec")
            || req.contact().is_some_and(|c| c.params.has("+sip.src"));
        let kind = if siprec {
            SourceKind::Siprec
        } else if fork.is_some() {
            SourceKind::Forked
        } else {
            SourceKind::Plain
        };

        // What to receive: negotiated streams, or our own offer (delayed offer).
        let negotiated = sd.as_ref().map(|sd| self.negotiate(sd));
        if let Some(n) = &negotiated {
            if !n.iter().any(|s| s.accepted) {
                let why = n.iter().find_map(|s| s.rejection.as_deref()).unwrap_or("no acceptable media");
                return self.reject(
                    now,
                    tx,
                    &req,
                    SipError::with_reason(StatusCode::NOT_ACCEPTABLE_HERE, format!("Not Acceptable Here: {why}")),
                );
            }
        }
        let accepted: Vec<&NegotiatedStream> = negotiated.iter().flatten().filter(|s| s.accepted).collect();
        let stream_count = if negotiated.is_some() { accepted.len() } else { 1 };

        // Channels: a forked call is stereo by leg; otherwise one per stream.
        let channels: u16 = match (&kind, &fork) {
            (SourceKind::Forked, Some(_)) => 2,
            _ => stream_count.clamp(1, 32) as u16,
        };
        let channel_of = |i: usize| -> u8 {
            match &fork {
                Some(f) if kind == SourceKind::Forked => f.role.channel(),
                _ => (i % channels as usize) as u8,
            }
        };

        // Ports first: nothing else is created if the range is exhausted.
        let mut ports = Vec::with_capacity(stream_count);
        for _ in 0..stream_count {
            match self.ports.allocate() {
                Ok(p) => ports.push(p),
                Err(why) => {
                    for p in ports {
                        self.ports.release(p);
                    }
                    return self.reject(now, tx, &req, SipError::new(StatusCode::SERVICE_UNAVAILABLE, why.reason()));
                }
            }
        }

        let local_ip = self.local_ip(&req);
        let local_tag = self.endpoint.new_token(10);
        let session_id = fastrand::u64(1..u32::MAX as u64);
        let local = LocalSdp { addr: local_ip, session_id, version: 1 };

        // The recording: a new one, or the one the other fork leg opened.
        let recording = match joins {
            Some(id) => id,
            None => {
                let id = RecordingId::new(now.wall);
                let mut meta = RecordingMeta::start(
                    id,
                    self.cfg.node_id.clone(),
                    kind,
                    now.wall,
                    format!("{}:{}", peer.transport.as_str().to_ascii_lowercase(), peer.addr),
                    format!("{} INVITE accepted", kind_name(kind)),
                );
                meta.user_agent = req.headers.get("User-Agent").map(str::to_owned);
                self.recordings.insert(
                    id,
                    Rec {
                        meta,
                        legs: Vec::new(),
                        channels,
                        fork_link: fork.as_ref().map(|f| f.link.clone()),
                        siprec: None,
                        labels: Vec::new(),
                        save_seq: 0,
                        answered: false,
                        streams_without_rtp: 0,
                    },
                );
                if let Some(f) = &fork {
                    self.fork_links.insert(f.link.clone(), id);
                }
                // One rate per recording: wideband when any accepted codec
                // is (a later narrowband leg or codec is resampled up).
                let wideband = accepted
                    .iter()
                    .flat_map(|s| &s.codecs)
                    .any(|m| Codec::from_rtpmap(&m.encoding, m.clock_rate, m.channels).is_some_and(Codec::is_wideband));
                let sample_rate = if wideband { self.cfg.max_sample_rate.clamp(8000, 16000) } else { 8000 };
                self.out.push_back(Output::Media(MediaCommand::Start {
                    recording: id,
                    sample_rate,
                    channels,
                    started_at: now.wall,
                }));
                id
            }
        };

        // Streams of this leg.
        let mut leg_streams = Vec::new();
        let offered_codecs = [(0u8, Codec::Pcmu), (8u8, Codec::Pcma)];
        match &negotiated {
            Some(n) => {
                for (slot, s) in n.iter().filter(|s| s.accepted).enumerate() {
                    let spec = self.stream_spec(recording, ports[slot], channel_of(slot), s);
                    leg_streams.push(LegStream { index: s.index, id: spec.id, port: ports[slot], spec });
                }
            }
            None => {
                let id = self.new_stream_id();
                let spec = StreamSpec {
                    id,
                    recording,
                    port: ports[0],
                    channel: channel_of(0),
                    label: None,
                    codecs: offered_codecs.to_vec(),
                    telephone_event: Some(OFFER_TE_PT),
                    comfort_noise: None,
                    remote: None,
                    rtcp_mux: false,
                    held: false,
                    // Our own offer is plain RTP (SDES in delayed offer: not yet).
                    srtp: None,
                };
                leg_streams.push(LegStream { index: 0, id, port: ports[0], spec });
            }
        }

        let body = match (&sd, &negotiated) {
            (Some(sd), Some(n)) => {
                let mut port_list = vec![0u16; sd.streams.len()];
                for ls in &leg_streams {
                    port_list[ls.index] = ls.port.rtp;
                }
                sdp::build_answer(sd, n, &port_list, &local)
            }
            _ => {
                let codecs: Vec<RtpMap> = offered_codecs.iter().filter_map(|(pt, _)| sdp::static_rtpmap(*pt)).collect();
                sdp::build_offer(&[(ports[0].rtp, None)], &codecs, Some(OFFER_TE_PT), &local)
            }
        };

        // Update the recording's metadata with this leg.
        {
            let rec = self.recordings.get_mut(&recording).expect("just created or joined");
            rec.meta.call_ids.push(e.call_id.clone());
            for ls in &leg_streams {
                rec.labels.push((ls.spec.label.clone(), ls.spec.channel));
                rec.meta.streams.push(StreamRecord {
                    label: ls.spec.label.clone(),
                    channel: ls.spec.channel,
                    codecs: ls.spec.codec_names(),
                    local_port: ls.port.rtp,
                    remote: ls.spec.remote.map(|a| a.to_string()),
                    sender: None,
                    srtp: ls.spec.srtp.as_ref().map(|k| k.suite.sdes_name().to_owned()),
                    stats: Default::default(),
                });
            }
            let parties = match (&md, &fork) {
                (Some(md), _) => {
                    rec.siprec = Some(md.clone());
                    participants::from_metadata(md, &rec.labels)
                }
                (None, Some(f)) => participants::from_fork(f, &e.from),
                (None, None) => participants::from_headers(&e.from, &e.to, rec.channels),
            };
            apply_parties(&mut rec.meta, parties);
            rec.meta.siprec = rec.siprec.clone();
            if rec.meta.call_key.is_none() {
                rec.meta.call_key = Some(call_key(rec.siprec.as_ref(), fork.as_ref(), &req, &e.call_id, peer));
            }
        }
        let save_seq = self.save(recording, joins.is_none());
        for ls in &leg_streams {
            self.out.push_back(Output::Media(MediaCommand::AddStream(ls.spec.clone())));
        }

        let key = (e.call_id.clone(), local_tag.clone());
        let remote_target = req.contact().map(|c| c.uri.to_string()).unwrap_or_else(|| e.from.uri.to_string());
        let local_header = format!("{};tag={local_tag}", req.headers.get("To").unwrap_or("<sip:callvault@invalid>"));
        let session_deadline = interval.map(|s| now.mono + Duration::from_secs(s as u64));
        let leg = Leg {
            call_id: e.call_id.clone(),
            local_tag: local_tag.clone(),
            peer,
            remote_target,
            route_set: req.headers.get_all("Record-Route").map(str::to_owned).collect(),
            local_header,
            remote_header: req.headers.get("From").unwrap_or_default().to_owned(),
            local_cseq: 1,
            remote_cseq: e.cseq.seq,
            recording,
            streams: leg_streams,
            sdp_session: session_id,
            sdp_version: 1,
            local_ip,
            awaiting_answer: sd.is_none(),
            confirmed: false,
            invite_tx: Some(tx),
            role: fork.as_ref().map(|f| f.role),
            session_interval: interval.map(|s| Duration::from_secs(s as u64)),
            session_deadline,
            pending_answer: None,
        };
        self.legs.insert(key.clone(), leg);
        self.legs_by_call.entry(e.call_id.clone()).or_default().push(local_tag.clone());
        self.recordings.get_mut(&recording).expect("exists").legs.push(key.clone());

        let mut resp = self.response(&req, StatusCode::OK, "OK", Some(&local_tag));
        resp.headers.push("Contact", self.contact(local_ip, peer.transport, siprec));
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Supported", SUPPORTED);
        if let Some(s) = interval {
            resp.headers.push("Session-Expires", format!("{s};refresher=uac"));
            resp.headers.push("Require", "timer");
        }
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = body;
        let deadline = now.mono + self.cfg.save_timeout;
        self.legs.get_mut(&key).expect("inserted").pending_answer =
            Some(PendingAnswer { invite: req, ok: resp, save_seq, deadline, received: now.mono });
    }

    /// Asks the driver to store the recording's current metadata.
    fn save(&mut self, id: RecordingId, started: bool) -> u64 {
        let rec = self.recordings.get_mut(&id).expect("active recording");
        rec.save_seq += 1;
        rec.meta.escape_control();
        let meta = Box::new(rec.meta.clone());
        let event = if started { RecordingEvent::Started(meta) } else { RecordingEvent::Updated(meta) };
        self.out.push_back(Output::Recording { event, seq: rec.save_seq });
        rec.save_seq
    }

    /// The source cancelled an INVITE we had not answered yet (the
    /// endpoint already sent 487): the leg goes, and with it a recording
    /// that has no other leg.
    fn on_cancelled(&mut self, now: Now, invite_tx: TxId) {
        let key = self
            .legs
            .iter()
            .find(|(_, l)| l.invite_tx == Some(invite_tx) && l.pending_answer.is_some())
            .map(|(k, _)| k.clone());
        let Some(key) = key else { return };
        self.counters.invites_cancelled += 1;
        if let Some(leg) = self.legs.get_mut(&key) {
            leg.pending_answer = None;
        }
        self.end_leg(
            now,
            &key,
            false,
            RecordingState::Failed,
            EndCause::Cancelled,
            "cancelled by the recording source before answer",
        );
    }

    fn new_stream_id(&mut self) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        id
    }

    /// The offer against our codecs and SRTP policy; every accepted SRTP
    /// stream gets a fresh key of ours for the answer.
    fn negotiate(&self, sd: &SessionDescription) -> Vec<NegotiatedStream> {
        let usable = |c: &CryptoOffer| {
            SrtpSuite::from_sdes(&c.suite).and_then(|s| SrtpKey::from_inline(s, &c.key_params)).is_some()
        };
        let policy = SrtpPolicy { required: self.cfg.srtp_required, supported: &usable };
        let mut negotiated = sdp::negotiate_with(sd, &Self::decodable, &policy);
        for n in &mut negotiated {
            if let Some(suite) = n.crypto.as_ref().and_then(|c| SrtpSuite::from_sdes(&c.suite)) {
                n.local_crypto_key = Some(SrtpKey::random(suite).to_inline().to_string());
            }
        }
        negotiated
    }

    fn stream_spec(
        &mut self,
        recording: RecordingId,
        port: MediaPort,
        channel: u8,
        s: &NegotiatedStream,
    ) -> StreamSpec {
        StreamSpec {
            id: self.new_stream_id(),
            recording,
            port,
            channel,
            label: s.label.clone(),
            codecs: codec_map(&s.codecs),
            telephone_event: s.telephone_event.as_ref().map(|t| t.pt),
            comfort_noise: s.comfort_noise,
            remote: s.remote,
            rtcp_mux: s.rtcp_mux,
            held: s.held,
            srtp: s.crypto.as_ref().and_then(|c| SrtpKey::from_inline(SrtpSuite::from_sdes(&c.suite)?, &c.key_params)),
        }
    }

    fn find_leg(&self, call_id: &str, to_tag: Option<&str>) -> Option<LegKey> {
        if let Some(tag) = to_tag {
            let key = (call_id.to_owned(), tag.to_owned());
            if self.legs.contains_key(&key) {
                return Some(key);
            }
            return None;
        }
        // Lenient: some SRCs drop the To tag on BYE; one leg per Call-ID is unambiguous.
        match self.legs_by_call.get(call_id).map(Vec::as_slice) {
            Some([only]) => Some((call_id.to_owned(), only.clone())),
            _ => None,
        }
    }

    fn on_in_dialog_offer(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials) {
        let Some(key) = self.find_leg(&e.call_id, e.to.tag()) else {
            return self.reject(now, tx, &req, no_dialog());
        };
        {
            let leg = self.legs.get_mut(&key).expect("found");
            if e.cseq.seq <= leg.remote_cseq && req.method == Method::Invite {
                return self.reject(
                    now,
                    tx,
                    &req,
                    SipError::new(StatusCode::SERVER_INTERNAL_ERROR, "CSeq out of order"),
                );
            }
            leg.remote_cseq = leg.remote_cseq.max(e.cseq.seq);
            leg.refresh_session(now);
        }
        let (_, md, sd) = match Self::parse_body(&req) {
            Ok(parts) => parts,
            Err(err) => return self.reject(now, tx, &req, err),
        };
        if sd.as_ref().is_some_and(|sd| sd.skipped_lines > 0) {
            self.counters.tolerate(Tolerated::SdpStrayLine);
        }
        let recording = self.legs[&key].recording;

        // Media first: a refused offer (488) must leave the session as it was.
        let mut body = None;
        if let Some(sd) = &sd {
            match self.renegotiate(now, &key, sd) {
                Ok(answer) => body = Some(answer),
                Err(err) => return self.reject(now, tx, &req, err),
            }
        } else if req.method == Method::Invite {
            // re-INVITE without an offer (metadata-only, Avaya): we offer the
            // current streams in the 2xx and take the answer from the ACK.
            let leg = self.legs.get_mut(&key).expect("found");
            leg.sdp_version += 1;
            leg.awaiting_answer = true;
            let local = LocalSdp { addr: leg.local_ip, session_id: leg.sdp_session, version: leg.sdp_version };
            let streams: Vec<(u16, Option<String>)> =
                leg.streams.iter().map(|s| (s.port.rtp, s.spec.label.clone())).collect();
            let codecs: Vec<RtpMap> = [0u8, 8].iter().filter_map(|pt| sdp::static_rtpmap(*pt)).collect();
            body = Some(sdp::build_offer(&streams, &codecs, Some(OFFER_TE_PT), &local));
        }

        if let Some(update) = md {
            if let Some(rec) = self.recordings.get_mut(&recording) {
                match &mut rec.siprec {
                    Some(existing) => existing.apply_update(update),
                    None => rec.siprec = Some(update),
                }
                let parties = participants::from_metadata(rec.siprec.as_ref().expect("set"), &rec.labels);
                apply_parties(&mut rec.meta, parties);
                rec.meta.siprec = rec.siprec.clone();
                self.save(recording, false);
            }
        }

        let leg = &self.legs[&key];
        let (ip, transport) = (leg.local_ip, leg.peer.transport);
        let siprec = self.recordings.get(&recording).is_some_and(|r| r.meta.source == SourceKind::Siprec);
        let mut resp = self.response(&req, StatusCode::OK, "OK", None);
        resp.headers.push("Contact", self.contact(ip, transport, siprec));
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Supported", SUPPORTED);
        if let Some(i) = leg.session_interval {
            resp.headers.push("Session-Expires", format!("{};refresher=uac", i.as_secs()));
            resp.headers.push("Require", "timer");
        }
        if let Some(b) = body {
            resp.headers.push("Content-Type", "application/sdp");
            resp.body = b;
        }
        self.endpoint.respond(now.mono, tx, resp);
    }

    /// Applies a new offer to a leg's streams and returns the answer.
    fn renegotiate(&mut self, _now: Now, key: &LegKey, sd: &SessionDescription) -> Result<Vec<u8>, SipError> {
        let negotiated = self.negotiate(sd);
        if !negotiated.iter().any(|s| s.accepted) {
            let why = negotiated.iter().find_map(|s| s.rejection.as_deref()).unwrap_or("no acceptable media");
            return Err(SipError::with_reason(StatusCode::NOT_ACCEPTABLE_HERE, format!("Not Acceptable Here: {why}")));
        }
        let (recording, role, channels) = {
            let leg = &self.legs[key];
            let rec = &self.recordings[&leg.recording];
            (leg.recording, leg.role, rec.channels)
        };
        // New ports for added streams, before changing anything.
        let needed: Vec<usize> = negotiated
            .iter()
            .filter(|n| n.accepted && !self.legs[key].streams.iter().any(|s| s.index == n.index))
            .map(|n| n.index)
            .collect();
        let mut fresh = Vec::new();
        for _ in &needed {
            match self.ports.allocate() {
                Ok(p) => fresh.push(p),
                Err(why) => {
                    for p in fresh {
                        self.ports.release(p);
                    }
                    return Err(SipError::new(StatusCode::SERVICE_UNAVAILABLE, why.reason()));
                }
            }
        }
        let mut fresh = fresh.into_iter();
        let mut commands = Vec::new();
        let mut removed = Vec::new();
        let mut added_records = Vec::new();
        for n in &negotiated {
            let existing = self.legs[key].streams.iter().position(|s| s.index == n.index);
            match (existing, n.accepted) {
                (Some(pos), true) => {
                    let leg = self.legs.get_mut(key).expect("exists");
                    let ls = &mut leg.streams[pos];
                    let mut spec = ls.spec.clone();
                    spec.codecs = codec_map(&n.codecs);
                    spec.telephone_event = n.telephone_event.as_ref().map(|t| t.pt);
                    spec.comfort_noise = n.comfort_noise;
                    spec.remote = n.remote.or(spec.remote);
                    spec.rtcp_mux = n.rtcp_mux;
                    spec.held = n.held;
                    spec.label = n.label.clone().or(spec.label);
                    if spec != ls.spec {
                        ls.spec = spec.clone();
                        commands.push(MediaCommand::UpdateStream(spec));
                    }
                }
                (Some(pos), false) => {
                    let leg = self.legs.get_mut(key).expect("exists");
                    let ls = leg.streams.remove(pos);
                    commands.push(MediaCommand::RemoveStream { stream: ls.id, recording });
                    removed.push(ls.port);
                }
                (None, true) => {
                    let port = fresh.next().expect("allocated above");
                    let channel = match role {
                        Some(r) => r.channel(),
                        None => (n.index % channels as usize) as u8,
                    };
                    let spec = self.stream_spec(recording, port, channel, n);
                    added_records.push((spec.label.clone(), channel, port, spec.clone()));
                    commands.push(MediaCommand::AddStream(spec.clone()));
                    let leg = self.legs.get_mut(key).expect("exists");
                    leg.streams.push(LegStream { index: n.index, id: spec.id, port, spec });
                }
                (None, false) => {}
            }
        }
        for p in removed {
            self.ports.release(p);
        }
        if let Some(rec) = self.recordings.get_mut(&recording) {
            for (label, channel, port, spec) in added_records {
                rec.labels.push((label.clone(), channel));
                rec.meta.streams.push(StreamRecord {
                    label,
                    channel,
                    codecs: spec.codec_names(),
                    local_port: port.rtp,
                    remote: spec.remote.map(|a| a.to_string()),
                    sender: None,
                    srtp: spec.srtp.as_ref().map(|k| k.suite.sdes_name().to_owned()),
                    stats: Default::default(),
                });
            }
        }
        for c in commands {
            self.out.push_back(Output::Media(c));
        }
        let leg = self.legs.get_mut(key).expect("exists");
        leg.sdp_version += 1;
        let mut ports = vec![0u16; sd.streams.len()];
        for s in &leg.streams {
            if s.index < ports.len() {
                ports[s.index] = s.port.rtp;
            }
        }
        let local = LocalSdp { addr: leg.local_ip, session_id: leg.sdp_session, version: leg.sdp_version };
        Ok(sdp::build_answer(sd, &negotiated, &ports, &local))
    }

    fn on_ack(&mut self, _now: Now, req: Request, _peer: Peer) {
        if req.cseq_mismatch() == Some(CSeqMismatch::Tolerated) {
            self.counters.tolerate(Tolerated::CSeqMethodMismatch);
        }
        let Some(call_id) = req.call_id().map(str::to_owned) else { return };
        let to_tag = req.to().and_then(|t| t.tag().map(str::to_owned));
        let Some(key) = self.find_leg(&call_id, to_tag.as_deref()) else { return };
        let leg = self.legs.get_mut(&key).expect("found");
        leg.confirmed = true;
        leg.invite_tx = None;
        if !leg.awaiting_answer {
            return;
        }
        leg.awaiting_answer = false;
        // Delayed offer: the ACK carries the answer to the offer in our 2xx.
        let Ok(body) = classify_body(req.content_type().as_ref(), &req.body) else { return };
        let Some(answer) = body.sdp.as_deref().and_then(|b| sdp::parse(b).ok()) else { return };
        let mut updates = Vec::new();
        for (i, ls) in leg.streams.iter_mut().enumerate() {
            let Some(a) = answer.streams.get(i) else { continue };
            let mut spec = ls.spec.clone();
            let codecs = codec_map(&a.rtpmaps);
            if !codecs.is_empty() {
                spec.codecs = codecs;
            }
            if let Some(te) = a.rtpmaps.iter().find(|m| m.is_telephone_event()) {
                spec.telephone_event = Some(te.pt);
            }
            spec.remote = a.remote().or(spec.remote);
            spec.held = a.is_held();
            if spec != ls.spec {
                ls.spec = spec.clone();
                updates.push(spec);
            }
        }
        let recording = leg.recording;
        if let Some(rec) = self.recordings.get_mut(&recording) {
            for u in &updates {
                if let Some(sr) = rec.meta.streams.iter_mut().find(|s| s.local_port == u.port.rtp) {
                    sr.codecs = u.codec_names();
                    sr.remote = u.remote.map(|a| a.to_string());
                }
            }
        }
        for u in updates {
            self.out.push_back(Output::Media(MediaCommand::UpdateStream(u)));
        }
    }

    fn on_ack_timeout(&mut self, now: Now, tx: TxId, call_id: &str) {
        let key = self
            .legs
            .iter()
            .find(|(k, l)| k.0 == call_id && l.invite_tx == Some(tx) && !l.confirmed)
            .map(|(k, _)| k.clone());
        if let Some(key) = key {
            self.end_leg(now, &key, true, RecordingState::Failed, EndCause::NoAck, "no ACK received for 200 OK");
        }
    }

    fn on_bye(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials) {
        let Some(key) = self.find_leg(&e.call_id, e.to.tag()) else {
            return self.reject(now, tx, &req, no_dialog());
        };
        self.reply(now, tx, &req, StatusCode::OK, "OK", None);
        self.end_leg(now, &key, false, RecordingState::Completed, EndCause::Bye, "BYE from recording source");
    }

    fn on_info(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials) {
        let Some(key) = self.find_leg(&e.call_id, e.to.tag()) else {
            return self.reject(now, tx, &req, no_dialog());
        };
        if let Some(leg) = self.legs.get_mut(&key) {
            leg.refresh_session(now);
        }
        if req.content_type().is_some_and(|t| t.is("application/dtmf-relay")) {
            if let Some((digit, duration_ms)) = parse_dtmf_relay(&req.body) {
                let leg = &self.legs[&key];
                let channel = leg.streams.first().map(|s| s.spec.channel).unwrap_or(0);
                self.out.push_back(Output::Media(MediaCommand::Dtmf {
                    recording: leg.recording,
                    digit,
                    duration_ms,
                    channel,
                }));
            }
        }
        self.reply(now, tx, &req, StatusCode::OK, "OK", None);
    }

    // ----- ending -----

    /// Removes a leg: its streams stop, its ports return, and with
    /// `send_bye` the source gets a BYE. Returns the leg's recording.
    fn drop_leg(&mut self, now: Now, key: &LegKey, send_bye: bool) -> Option<RecordingId> {
        let leg = self.legs.remove(key)?;
        if let Some(tags) = self.legs_by_call.get_mut(&leg.call_id) {
            tags.retain(|t| *t != leg.local_tag);
            if tags.is_empty() {
                self.legs_by_call.remove(&leg.call_id);
            }
        }
        for s in &leg.streams {
            self.out.push_back(Output::Media(MediaCommand::RemoveStream { stream: s.id, recording: leg.recording }));
            self.ports.release(s.port);
        }
        if let (Some(p), Some(tx)) = (&leg.pending_answer, leg.invite_tx) {
            // Never answered: refuse instead, so the source tries another recorder.
            self.counters.count_refusal(&SipError::new(StatusCode::SERVICE_UNAVAILABLE, "Recording Not Stored"));
            self.counters.invite_answer.observe(now.mono.saturating_duration_since(p.received));
            let resp = self.response(&p.invite, StatusCode::SERVICE_UNAVAILABLE, "Recording Not Stored", None);
            self.endpoint.respond(now.mono, tx, resp);
        } else if send_bye {
            self.send_bye(now, &leg);
        }
        if let Some(rec) = self.recordings.get_mut(&leg.recording) {
            rec.legs.retain(|k| k != key);
        }
        Some(leg.recording)
    }

    /// Ends one leg; when it was the recording's last, the recording stops
    /// with `state` and `reason`.
    fn end_leg(
        &mut self,
        now: Now,
        key: &LegKey,
        send_bye: bool,
        state: RecordingState,
        cause: EndCause,
        reason: &str,
    ) {
        let Some(id) = self.drop_leg(now, key, send_bye) else { return };
        if self.recordings.get(&id).is_some_and(|r| r.legs.is_empty()) {
            self.stop_recording(now, id, state, cause, reason);
        }
    }

    /// Ends a whole recording from our side: every leg gets a BYE.
    fn terminate_recording(&mut self, now: Now, id: RecordingId, state: RecordingState, cause: EndCause, reason: &str) {
        let Some(legs) = self.recordings.get(&id).map(|r| r.legs.clone()) else { return };
        for key in &legs {
            self.drop_leg(now, key, true);
        }
        self.stop_recording(now, id, state, cause, reason);
    }

    fn stop_recording(&mut self, now: Now, id: RecordingId, state: RecordingState, cause: EndCause, reason: &str) {
        let Some(mut rec) = self.recordings.remove(&id) else { return };
        if let Some(link) = &rec.fork_link {
            if self.fork_links.get(link) == Some(&id) {
                self.fork_links.remove(link);
            }
        }
        rec.meta.transition(state, now.wall, reason);
        rec.meta.escape_control();
        *self.counters.recordings_ended.entry((state, cause)).or_default() += 1;
        self.out.push_back(Output::Media(MediaCommand::Stop { recording: id, meta: Box::new(rec.meta) }));
    }

    fn send_bye(&mut self, now: Now, leg: &Leg) {
        let mut bye = Request::new(Method::Bye, leg.remote_target.clone());
        let (host, port) = (leg.local_ip, self.listen_port(leg.peer.transport));
        let host = if host.is_ipv6() { format!("[{host}]") } else { host.to_string() };
        let branch = self.endpoint.new_branch();
        bye.headers.push("Via", format!("SIP/2.0/{} {host}:{port};branch={branch};rport", leg.peer.transport.as_str()));
        bye.headers.push("Max-Forwards", "70");
        for r in &leg.route_set {
            bye.headers.push("Route", r.clone());
        }
        bye.headers.push("From", leg.local_header.clone());
        bye.headers.push("To", leg.remote_header.clone());
        bye.headers.push("Call-ID", leg.call_id.clone());
        bye.headers.push("CSeq", format!("{} BYE", leg.local_cseq));
        bye.headers.push("User-Agent", self.cfg.server_name.clone());
        if self.endpoint.send_request(now.mono, leg.peer, bye).is_ok() {
            self.counters.byes_sent += 1;
        }
    }
}

/// The decodable codecs of an SDP codec list, by payload type.
fn codec_map(maps: &[RtpMap]) -> Vec<(u8, Codec)> {
    maps.iter().filter_map(|m| Codec::from_rtpmap(&m.encoding, m.clock_rate, m.channels).map(|c| (m.pt, c))).collect()
}

/// 481 for an in-dialog request whose dialog we do not know.
fn no_dialog() -> SipError {
    SipError::new(StatusCode::CALL_DOES_NOT_EXIST, "Call/Transaction Does Not Exist")
}

/// The key every recorder the platform forks this call to derives alike
/// (see [`model::RecordingMeta::call_key`]): the SIPREC communication
/// session's id from the metadata, the BiB call reference, or the Call-ID
/// with the signalling source.
fn call_key(md: Option<&Metadata>, fork: Option<&ForkedLeg>, req: &Request, call_id: &str, peer: Peer) -> String {
    let host = peer.addr.ip().to_string();
    if let Some(md) = md {
        if let Some(s) = md.sessions.iter().find(|s| !s.id.is_empty()) {
            return format!("siprec:{}", s.id);
        }
        if let Some(sid) = md.sessions.iter().flat_map(|s| &s.sip_session_ids).find(|s| !s.is_empty()) {
            return format!("siprec:{sid}");
        }
    }
    if let Some(f) = fork {
        return f.call_key(&host);
    }
    // RFC 7989 Session-ID, when the platform sends one, names the call end to end.
    if let Some(sid) = req.headers.get("Session-ID").and_then(|v| v.split(';').next()).map(str::trim) {
        if !sid.is_empty() {
            return format!("sid:{}", sid.to_ascii_lowercase());
        }
    }
    format!("sip:{call_id}@{host}")
}

fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Siprec => "SIPREC",
        SourceKind::Forked => "forked-leg",
        SourceKind::Plain => "plain",
    }
}

fn apply_parties(meta: &mut RecordingMeta, parties: CallParties) {
    // A later fork leg or metadata update may add people; nobody is dropped.
    for p in parties.participants {
        let same = meta.participants.iter_mut().find(|x| {
            (p.id.is_some() && x.id == p.id) || (p.id.is_none() && x.role == p.role && x.channel == p.channel)
        });
        match same {
            Some(x) => *x = p,
            None => meta.participants.push(p),
        }
    }
    meta.caller = parties.caller.or(meta.caller.take());
    meta.callee = parties.callee.or(meta.callee.take());
    meta.direction = parties.direction.or(meta.direction.take());
    for s in &mut meta.streams {
        s.sender = meta
            .participants
            .iter()
            .find(|p| p.channel == Some(s.channel))
            .and_then(|p| p.name.clone().or_else(|| p.number.clone()).or_else(|| p.aor.clone()));
    }
}

/// `application/dtmf-relay` INFO body: `Signal=5` and `Duration=160`.
fn parse_dtmf_relay(body: &[u8]) -> Option<(char, u32)> {
    let text = std::str::from_utf8(body).ok()?;
    let mut digit = None;
    let mut duration = 100;
    for line in text.lines() {
        let Some((k, v)) = line.split_once('=') else { continue };
        match k.trim().to_ascii_lowercase().as_str() {
            "signal" => digit = v.trim().chars().next().filter(|c| c.is_ascii_digit() || "*#ABCDabcd".contains(*c)),
            "duration" => duration = v.trim().parse().unwrap_or(100),
            _ => {}
        }
    }
    digit.map(|d| (d.to_ascii_uppercase(), duration))
}
