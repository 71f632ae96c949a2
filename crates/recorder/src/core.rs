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

mod dialog;
mod invite;

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
}
