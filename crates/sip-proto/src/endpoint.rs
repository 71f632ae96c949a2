//! The transaction layer as a pure state machine.
//!
//! ## Driver contract
//! Feed every received message with [`Endpoint::handle_message`], call
//! [`Endpoint::handle_timeout`] when the instant from
//! [`Endpoint::poll_timeout`] has passed, and after each input drain
//! [`Endpoint::poll_output`] until it returns `None`, sending every
//! [`Output::Transmit`] and handing every [`Output::Event`] to the
//! transaction user (TU). Nothing here reads a clock or touches a socket:
//! `now` is always an argument, so tests run on virtual time.
//!
//! ## What it implements
//! - INVITE server transactions (RFC 3261 §17.2.1 with the RFC 6026
//!   Accepted state): automatic `100 Trying`, retransmitted INVITEs answered
//!   with the last response, non-2xx finals retransmitted on timer G until
//!   ACK or timer H, 2xx finals retransmitted (T1 doubling to T2) until the
//!   ACK arrives or 64·T1 pass ([`Event::AckTimeout`]).
//! - Non-INVITE server transactions (§17.2.2): retransmissions absorbed or
//!   answered with the final response until timer J.
//! - CANCEL (§9.2): `200` for the CANCEL and `487` for a pending INVITE,
//!   `481` when no INVITE matches.
//! - Client transactions (§17.1) for requests the TU sends (BYE from the
//!   recorder, everything from the test client): timers A/B/E/F/D/K, ACK for
//!   non-2xx finals.
//! - Response routing of §18.2.2 and RFC 3581 (`received`, `rport`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::message::{parse, HeaderAccess, Message, Request, RequestEssentials, Response};
use crate::uri::{Via, MAGIC_COOKIE};
use crate::{Method, ParseError, SipError, StatusCode};

/// Transport a message travelled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// The port a Via or URI without one means (RFC 3261 §19.1.2).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one stream connection of the driver (TCP/TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Where a message came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Peer {
    pub transport: Transport,
    pub addr: SocketAddr,
    /// The connection for stream transports; responses go back on it.
    pub conn: Option<ConnId>,
}

impl Peer {
    pub fn udp(addr: SocketAddr) -> Peer {
        Peer { transport: Transport::Udp, addr, conn: None }
    }
}

/// RFC 3261 timer base values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig { t1: Duration::from_millis(500), t2: Duration::from_secs(4), t4: Duration::from_secs(5) }
    }
}

/// Server transaction handle given to the TU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxId(pub u64);

/// Client transaction handle returned by [`Endpoint::send_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxId(pub u64);

/// Something for the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit(Transmit),
    Event(Event),
}

/// Bytes to send to a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub peer: Peer,
    /// Destination; differs from `peer.addr` when Via routing says so.
    pub dest: SocketAddr,
    pub data: Vec<u8>,
}

/// Something for the transaction user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new request (not a retransmission, not an ACK). For INVITE a
    /// `100 Trying` has already been sent. Answer with [`Endpoint::respond`].
    Request { tx: TxId, request: Request, essentials: RequestEssentials, peer: Peer },
    /// An ACK that is not absorbed by a transaction: the ACK for a 2xx.
    /// `tx` is the INVITE transaction it acknowledges, when one matched.
    Ack { request: Request, peer: Peer, tx: Option<TxId> },
    /// A CANCEL hit a pending INVITE: `200` went to the CANCEL and `487` to
    /// the INVITE. The TU drops whatever it prepared for that INVITE.
    Cancelled { invite_tx: TxId },
    /// A 2xx to an INVITE was never acknowledged (64·T1).
    AckTimeout { tx: TxId, call_id: String },
    /// A response to a request sent with [`Endpoint::send_request`].
    Response { tx: ClientTxId, response: Response },
    /// A request sent with [`Endpoint::send_request`] got no final answer.
    RequestTimeout { tx: ClientTxId },
    /// A response no client transaction expects (e.g. a late 2xx).
    StrayResponse { response: Response, peer: Peer },
    /// Bytes that were not a usable message; `answered` tells whether an
    /// error response was sent back.
    Malformed { peer: Peer, reason: String, answered: Option<StatusCode> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum TxKey {
    /// RFC 3261: branch + sent-by + method (ACK folded into INVITE).
    Rfc3261 { branch: String, sent_by: String, method: Method },
    /// RFC 2543 peers without the magic cookie.
    Legacy { call_id: String, from_tag: String, cseq: u32, sent_by: String, method: Method },
}

fn tx_key(e: &RequestEssentials, method: &Method) -> TxKey {
    let method = if *method == Method::Ack { Method::Invite } else { method.clone() };
    match e.via.branch() {
        Some(b) if b.starts_with(MAGIC_COOKIE) => {
            TxKey::Rfc3261 { branch: b.to_owned(), sent_by: e.via.sent_by(), method }
        }
        _ => TxKey::Legacy {
            call_id: e.call_id.clone(),
            from_tag: e.from.tag().unwrap_or("").to_owned(),
            cseq: e.cseq.seq,
            sent_by: e.via.sent_by(),
            method,
        },
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    /// Non-INVITE, nothing sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A non-2xx final was sent.
    Completed,
    /// INVITE answered 2xx (RFC 6026); `ack_seen` tells whether ACKed.
    Accepted { ack_seen: bool },
    /// INVITE non-2xx final was ACKed.
    Confirmed,
}

#[derive(Debug)]
struct ServerTx {
    key: TxKey,
    method: Method,
    peer: Peer,
    dest: SocketAddr,
    call_id: String,
    cseq: u32,
    state: ServerState,
    last_response: Option<Vec<u8>>,
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    timeout_at: Option<Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    /// Request sent, nothing heard.
    Calling,
    Proceeding,
    /// Final non-2xx received (or non-INVITE final); absorbing retransmissions.
    Completed,
    /// INVITE 2xx received; further 2xx go to the TU (RFC 6026).
    Accepted,
}

#[derive(Debug)]
struct ClientTx {
    branch: String,
    method: Method,
    peer: Peer,
    request: Request,
    bytes: Vec<u8>,
    state: ClientState,
    retransmit_at: Option<Instant>,
    retransmit_interval: Duration,
    timeout_at: Option<Instant>,
    ack: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    Server(TxId),
    Client(ClientTxId),
}

/// The SIP transaction layer. See the module docs for the driver contract.
#[derive(Debug)]
pub struct Endpoint {
    timers_cfg: TimerConfig,
    rng: fastrand::Rng,
    next_id: u64,
    server: HashMap<TxId, ServerTx>,
    server_index: HashMap<TxKey, TxId>,
    /// Accepted INVITE transactions by Call-ID, to match 2xx ACKs.
    accepted_by_call: HashMap<String, Vec<TxId>>,
    client: HashMap<ClientTxId, ClientTx>,
    client_index: HashMap<(String, Method), ClientTxId>,
    timers: BTreeMap<(Instant, u64), TimerRef>,
    timer_seq: u64,
    out: VecDeque<Output>,
    /// Responses sent (first transmissions only), by status code.
    responses_sent: BTreeMap<u16, u64>,
    /// Server transactions the TU never answered, dropped after 64·T1.
    unanswered: u64,
}

/// How many entries each per-transaction structure of an [`Endpoint`]
/// holds: all zero once every transaction has ended and its timers fired.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSizes {
    pub server: usize,
    pub server_index: usize,
    pub accepted_by_call: usize,
    pub client: usize,
    pub client_index: usize,
    pub timers: usize,
    pub outputs: usize,
}

impl EndpointSizes {
    pub fn is_empty(&self) -> bool {
        *self == EndpointSizes::default()
    }
}

impl Endpoint {
    pub fn new(timers: TimerConfig) -> Endpoint {
        Endpoint::with_rng(timers, fastrand::Rng::new())
    }

    /// An endpoint whose tags and branches come from a seeded generator.
    pub fn with_rng(timers: TimerConfig, rng: fastrand::Rng) -> Endpoint {
        Endpoint {
            timers_cfg: timers,
            rng,
            next_id: 1,
            server: HashMap::new(),
            server_index: HashMap::new(),
            accepted_by_call: HashMap::new(),
            client: HashMap::new(),
            client_index: HashMap::new(),
            timers: BTreeMap::new(),
            timer_seq: 0,
            out: VecDeque::new(),
            responses_sent: BTreeMap::new(),
            unanswered: 0,
        }
    }

    pub fn timer_config(&self) -> TimerConfig {
        self.timers_cfg
    }

    /// Random token for tags and Call-IDs.
    pub fn new_token(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        (0..len).map(|_| ALPHABET[self.rng.usize(..ALPHABET.len())] as char).collect()
    }

    /// A fresh RFC 3261 branch parameter.
    pub fn new_branch(&mut self) -> String {
        format!("{MAGIC_COOKIE}{}", self.new_token(16))
    }

    /// Number of live transactions (server, client), for metrics and tests.
    pub fn transaction_count(&self) -> (usize, usize) {
        (self.server.len(), self.client.len())
    }

    /// Sizes of every per-transaction map and queue.
    pub fn sizes(&self) -> EndpointSizes {
        EndpointSizes {
            server: self.server.len(),
            server_index: self.server_index.len(),
            accepted_by_call: self.accepted_by_call.len(),
            client: self.client.len(),
            client_index: self.client_index.len(),
            timers: self.timers.len(),
            outputs: self.out.len(),
        }
    }

    /// Server transactions dropped because the TU never answered them.
    pub fn unanswered(&self) -> u64 {
        self.unanswered
    }

    /// Responses sent so far by status code (retransmissions not counted).
    pub fn responses_sent(&self) -> &BTreeMap<u16, u64> {
        &self.responses_sent
    }

    fn count_response(&mut self, status: StatusCode) {
        *self.responses_sent.entry(status.as_u16()).or_default() += 1;
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest instant at which [`Endpoint::handle_timeout`] has work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    fn alloc_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn schedule(&mut self, at: Instant, r: TimerRef) {
        self.timer_seq += 1;
        self.timers.insert((at, self.timer_seq), r);
    }

    fn emit(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    fn transmit(&mut self, peer: Peer, dest: SocketAddr, data: Vec<u8>) {
        self.out.push_back(Output::Transmit(Transmit { peer, dest, data }));
    }

    /// Sends a message outside any transaction (ACK for a 2xx, keep-alive
    /// answers, stateless rejections).
    pub fn send_stateless(&mut self, peer: Peer, message: &Message) {
        self.transmit(peer, peer.addr, message.to_bytes());
    }

    /// Handles one received message (a datagram or a framed stream message).
    pub fn handle_message(&mut self, now: Instant, peer: Peer, data: &[u8]) {
        match parse(data) {
            Ok(Message::Request(req)) => self.on_request(now, peer, req),
            Ok(Message::Response(resp)) => self.on_response(now, peer, resp),
            Err(ParseError::Empty) => {}
            Err(ParseError::Truncated { declared, actual }) => {
                // Headers are intact; answer 400 so the sender learns why.
                let reason = format!("Body shorter than Content-Length ({actual} of {declared} bytes)");
                self.reject_unparsable(peer, data, StatusCode::BAD_REQUEST, &reason);
            }
            Err(ParseError::TooLarge(n)) => {
                self.reject_unparsable(
                    peer,
                    data,
                    StatusCode::MESSAGE_TOO_LARGE,
                    &format!("Message of {n} bytes too large"),
                );
            }
            Err(ParseError::Version(v)) => {
                self.reject_unparsable(
                    peer,
                    data,
                    StatusCode::VERSION_NOT_SUPPORTED,
                    &format!("Version {v} not supported"),
                );
            }
            // The headers may still say where an answer goes (RFC 4475
            // lwsruri, ltgtruri, scalar02): a 400 beats silence.
            Err(ParseError::StartLine) => {
                self.reject_unparsable(peer, data, StatusCode::BAD_REQUEST, "Malformed Request-Line")
            }
            Err(ParseError::ContentLength) => {
                self.reject_unparsable(peer, data, StatusCode::BAD_REQUEST, "Malformed Content-Length")
            }
            // A line that is no header (e.g. a folded line whose leading
            // whitespace a sender stripped): answered 400 from the rest.
            Err(ParseError::HeaderLine(_)) => {
                self.reject_unparsable(peer, data, StatusCode::BAD_REQUEST, "Malformed header line")
            }
            Err(e) => self.emit(Event::Malformed { peer, reason: e.to_string(), answered: None }),
        }
    }

    /// Best-effort error answer to a request whose body or size is broken:
    /// re-parses the header block alone and answers if it names a request.
    /// Drivers call it for a stream message too large to frame (513).
    pub fn reject_unparsable(&mut self, peer: Peer, data: &[u8], status: StatusCode, reason: &str) {
        let head_len = data
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| p + 4)
            .or_else(|| data.windows(2).position(|w| w == b"\n\n").map(|p| p + 2));
        let mut answered = None;
        if let Some(len) = head_len {
            let mut head = data[..len].to_vec();
            // Drop Content-Length so the head parses on its own.
            let text = String::from_utf8_lossy(&head).into_owned();
            let cleaned: String = text
                .split_inclusive('\n')
                .enumerate()
                .filter(|(i, l)| {
                    let name = l.split(':').next().unwrap_or("").trim();
                    let is_token = |n: &str| {
                        !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
                    };
                    let no_header = *i > 0
                        && !l.trim().is_empty()
                        && !l.starts_with([' ', '\t'])
                        && !l.split_once(':').is_some_and(|(n, _)| is_token(n.trim_end()));
                    !(no_header || name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l"))
                })
                .map(|(_, l)| l)
                .collect();
            head = cleaned.into_bytes();
            let fixed = fix_version(&head).or_else(|| replace_request_line(&head));
            if let Ok(Message::Request(req)) = parse(fixed.as_deref().unwrap_or(&head)) {
                let is_ack = req.method == Method::Ack || req.cseq().is_some_and(|c| c.method == Method::Ack);
                // Without these a response would not reach or match anything.
                // (A Via of another version still says where the sender is.)
                let answerable = req.headers.contains("Via") && req.call_id().is_some() && req.cseq().is_some();
                if !is_ack && answerable {
                    let mut resp = Response::to_request(&req, status, reason, None);
                    stamp_via(&mut resp, peer);
                    let dest = response_dest(peer, req.top_via().as_ref());
                    self.transmit(peer, dest, resp.to_bytes());
                    self.count_response(status);
                    answered = Some(status);
                }
            }
        }
        self.emit(Event::Malformed { peer, reason: reason.to_owned(), answered });
    }

    fn on_request(&mut self, now: Instant, peer: Peer, req: Request) {
        let essentials = match req.essentials() {
            Ok(e) => e,
            Err(err) => {
                let answered = (req.method != Method::Ack).then(|| {
                    let mut resp = Response::to_request(&req, err.status, &err.reason, None);
                    stamp_via(&mut resp, peer);
                    let dest = response_dest(peer, req.top_via().as_ref());
                    self.transmit(peer, dest, resp.to_bytes());
                    self.count_response(err.status);
                    err.status
                });
                self.emit(Event::Malformed { peer, reason: err.reason.into_owned(), answered });
                return;
            }
        };
        let key = tx_key(&essentials, &req.method);

        if req.method == Method::Ack {
            self.on_ack(now, peer, req, &essentials, key);
            return;
        }

        if let Some(&id) = self.server_index.get(&key) {
            // A retransmission: answer with the last response, if any.
            let tx = self.server.get(&id).expect("index points at a live transaction");
            if let Some(bytes) = tx.last_response.clone() {
                if !matches!(tx.state, ServerState::Confirmed) {
                    let (p, d) = (tx.peer, tx.dest);
                    self.transmit(p, d, bytes);
                }
            }
            return;
        }

        if req.method == Method::Cancel {
            self.on_cancel(now, peer, req, essentials);
            return;
        }

        let id = TxId(self.alloc_id());
        let dest = response_dest(peer, Some(&essentials.via));
        let tx = ServerTx {
            key: key.clone(),
            method: req.method.clone(),
            peer,
            dest,
            call_id: essentials.call_id.clone(),
            cseq: essentials.cseq.seq,
            state: ServerState::Trying,
            last_response: None,
            retransmit_at: None,
            retransmit_interval: self.timers_cfg.t1,
            // A TU that never answers must not keep the transaction for ever.
            timeout_at: Some(now + self.timers_cfg.t1 * 64),
        };
        self.server.insert(id, tx);
        self.server_index.insert(key, id);
        self.schedule(now + self.timers_cfg.t1 * 64, TimerRef::Server(id));
        if req.method == Method::Invite {
            let trying = Response::to_request(&req, StatusCode::TRYING, "Trying", None);
            self.send_response_on(now, id, trying);
        }
        self.emit(Event::Request { tx: id, request: req, essentials, peer });
    }

    fn on_ack(&mut self, now: Instant, peer: Peer, req: Request, e: &RequestEssentials, key: TxKey) {
        // Same branch as the INVITE: ACK for a non-2xx, or a UA that reuses
        // the INVITE branch for its 2xx ACK.
        let mut matched = self.server_index.get(&key).copied();
        if let Some(id) = matched {
            let tx = self.server.get_mut(&id).expect("live");
            match tx.state {
                ServerState::Completed => {
                    tx.state = ServerState::Confirmed;
                    tx.retransmit_at = None;
                    let wait = if peer.transport.is_reliable() { Duration::ZERO } else { self.timers_cfg.t4 };
                    tx.timeout_at = Some(now + wait);
                    self.schedule(now + wait, TimerRef::Server(id));
                    return; // absorbed: the TU never sees ACKs of its errors
                }
                ServerState::Confirmed => return,
                ServerState::Accepted { .. } => {}
                _ => matched = None,
            }
        }
        if matched.is_none() {
            matched = self.accepted_by_call.get(&e.call_id).and_then(|ids| {
                let exact = ids.iter().find(|id| self.server.get(id).is_some_and(|t| t.cseq == e.cseq.seq));
                // Lenient fallback: some SRCs send the ACK with a wrong CSeq.
                exact.copied().or_else(|| (ids.len() == 1).then(|| ids[0]))
            });
        }
        if let Some(id) = matched {
            if let Some(tx) = self.server.get_mut(&id) {
                if let ServerState::Accepted { ack_seen } = &mut tx.state {
                    *ack_seen = true;
                    tx.retransmit_at = None;
                }
            }
        }
        self.emit(Event::Ack { request: req, peer, tx: matched });
    }

    fn on_cancel(&mut self, now: Instant, peer: Peer, req: Request, e: RequestEssentials) {
        let invite_key = tx_key(&e, &Method::Invite);
        let invite = self.server_index.get(&invite_key).copied();
        let id = TxId(self.alloc_id());
        let dest = response_dest(peer, Some(&e.via));
        let cancel_key = tx_key(&e, &Method::Cancel);
        self.server.insert(
            id,
            ServerTx {
                key: cancel_key.clone(),
                method: Method::Cancel,
                peer,
                dest,
                call_id: e.call_id.clone(),
                cseq: e.cseq.seq,
                state: ServerState::Trying,
                last_response: None,
                retransmit_at: None,
                retransmit_interval: self.timers_cfg.t1,
                timeout_at: None,
            },
        );
        self.server_index.insert(cancel_key, id);
        let Some(invite) = invite else {
            let resp =
                Response::to_request(&req, StatusCode::CALL_DOES_NOT_EXIST, "Call/Transaction Does Not Exist", None);
            self.send_response_on(now, id, resp);
            return;
        };
        let pending =
            self.server.get(&invite).is_some_and(|t| matches!(t.state, ServerState::Proceeding | ServerState::Trying));
        let ok = Response::to_request(&req, StatusCode::OK, "OK", None);
        self.send_response_on(now, id, ok);
        if pending {
            // 487 echoes the INVITE's headers; CANCEL carries the same
            // Via/From/Call-ID and CSeq number, only the method differs.
            // A final response creates no dialog, but RFC 3261 §8.2.6.2 still wants a To tag.
            let tag = self.new_token(10);
            let mut terminated =
                Response::to_request(&req, StatusCode::REQUEST_TERMINATED, "Request Terminated", Some(&tag));
            terminated.headers.set("CSeq", format!("{} INVITE", e.cseq.seq));
            self.send_response_on(now, invite, terminated);
            self.emit(Event::Cancelled { invite_tx: invite });
        }
    }

    /// Sends the TU's response on server transaction `tx`. Unknown or
    /// finished transactions are ignored (the answer came too late).
    pub fn respond(&mut self, now: Instant, tx: TxId, response: Response) {
        self.send_response_on(now, tx, response);
    }

    /// Is server transaction `tx` still waiting for a final response?
    pub fn is_pending(&self, tx: TxId) -> bool {
        self.server.get(&tx).is_some_and(|t| matches!(t.state, ServerState::Trying | ServerState::Proceeding))
    }

    fn send_response_on(&mut self, now: Instant, id: TxId, response: Response) {
        let cfg = self.timers_cfg;
        let Some(tx) = self.server.get_mut(&id) else {
            return;
        };
        if !matches!(tx.state, ServerState::Trying | ServerState::Proceeding) {
            return; // a final response was already sent
        }
        let mut response = response;
        stamp_via(&mut response, tx.peer);
        let bytes = response.to_bytes();
        let reliable = tx.peer.transport.is_reliable();
        let status = response.status;
        tx.last_response = Some(bytes.clone());
        let mut schedule = Vec::new();
        if status.is_provisional() {
            tx.state = ServerState::Proceeding;
        } else if tx.method == Method::Invite && status.is_success() {
            tx.state = ServerState::Accepted { ack_seen: false };
            if !reliable {
                tx.retransmit_interval = cfg.t1;
                tx.retransmit_at = Some(now + cfg.t1);
                schedule.push(now + cfg.t1);
            }
            tx.timeout_at = Some(now + cfg.t1 * 64);
            schedule.push(now + cfg.t1 * 64);
            self.accepted_by_call.entry(tx.call_id.clone()).or_default().push(id);
        } else if tx.method == Method::Invite {
            tx.state = ServerState::Completed;
            if !reliable {
                tx.retransmit_interval = cfg.t1;
                tx.retransmit_at = Some(now + cfg.t1);
                schedule.push(now + cfg.t1);
            }
            tx.timeout_at = Some(now + cfg.t1 * 64);
            schedule.push(now + cfg.t1 * 64);
        } else {
            tx.state = ServerState::Completed;
            let wait = if reliable { Duration::ZERO } else { cfg.t1 * 64 };
            tx.timeout_at = Some(now + wait);
            schedule.push(now + wait);
        }
        let (peer, dest) = (tx.peer, tx.dest);
        for at in schedule {
            self.schedule(at, TimerRef::Server(id));
        }
        self.count_response(status);
        self.transmit(peer, dest, bytes);
    }

    /// Sends a request in a new client transaction. The request must carry
    /// its top Via with a branch (see [`Endpoint::new_branch`]).
    pub fn send_request(&mut self, now: Instant, peer: Peer, request: Request) -> Result<ClientTxId, SipError> {
        let via =
            request.top_via().ok_or_else(|| SipError::new(StatusCode::SERVER_INTERNAL_ERROR, "request without Via"))?;
        let branch = via
            .branch()
            .filter(|b| b.starts_with(MAGIC_COOKIE))
            .ok_or_else(|| SipError::new(StatusCode::SERVER_INTERNAL_ERROR, "request without RFC 3261 branch"))?
            .to_owned();
        let id = ClientTxId(self.alloc_id());
        let bytes = request.to_bytes();
        let cfg = self.timers_cfg;
        let mut tx = ClientTx {
            branch: branch.clone(),
            method: request.method.clone(),
            peer,
            request,
            bytes: bytes.clone(),
            state: ClientState::Calling,
            retransmit_at: None,
            retransmit_interval: cfg.t1,
            timeout_at: Some(now + cfg.t1 * 64),
            ack: None,
        };
        if !peer.transport.is_reliable() {
            tx.retransmit_at = Some(now + cfg.t1);
            self.schedule(now + cfg.t1, TimerRef::Client(id));
        }
        self.schedule(now + cfg.t1 * 64, TimerRef::Client(id));
        self.client_index.insert((branch, tx.method.clone()), id);
        self.client.insert(id, tx);
        self.transmit(peer, peer.addr, bytes);
        Ok(id)
    }

    fn on_response(&mut self, now: Instant, peer: Peer, resp: Response) {
        let (Some(via), Some(cseq)) = (resp.top_via(), resp.cseq()) else {
            self.emit(Event::Malformed { peer, reason: "response without Via or CSeq".into(), answered: None });
            return;
        };
        let key = (via.branch().unwrap_or("").to_owned(), cseq.method.clone());
        let Some(&id) = self.client_index.get(&key) else {
            self.emit(Event::StrayResponse { response: resp, peer });
            return;
        };
        let cfg = self.timers_cfg;
        let tx = self.client.get_mut(&id).expect("index points at a live client transaction");
        let reliable = tx.peer.transport.is_reliable();
        let status = resp.status;
        match (tx.state, status.is_provisional()) {
            (ClientState::Calling | ClientState::Proceeding, true) => {
                tx.state = ClientState::Proceeding;
                if tx.method == Method::Invite {
                    tx.retransmit_at = None; // timer A stops on any provisional
                }
                self.emit(Event::Response { tx: id, response: resp });
            }
            (ClientState::Calling | ClientState::Proceeding, false) => {
                tx.retransmit_at = None;
                if tx.method == Method::Invite && status.is_success() {
                    tx.state = ClientState::Accepted;
                    tx.timeout_at = Some(now + cfg.t1 * 64);
                    self.schedule(now + cfg.t1 * 64, TimerRef::Client(id));
                } else {
                    if tx.method == Method::Invite {
                        let ack = ack_for_failure(&tx.request, &resp);
                        tx.ack = Some(ack.clone());
                        let p = tx.peer;
                        self.transmit(p, p.addr, ack);
                    }
                    let tx = self.client.get_mut(&id).expect("live");
                    tx.state = ClientState::Completed;
                    let wait = match (reliable, tx.method == Method::Invite) {
                        (true, _) => Duration::ZERO,
                        (false, true) => Duration::from_secs(32),
                        (false, false) => cfg.t4,
                    };
                    tx.timeout_at = Some(now + wait);
                    self.schedule(now + wait, TimerRef::Client(id));
                }
                self.emit(Event::Response { tx: id, response: resp });
            }
            (ClientState::Accepted, false) if status.is_success() => {
                // Retransmitted 2xx: the TU must ACK again.
                self.emit(Event::Response { tx: id, response: resp });
            }
            (ClientState::Completed, false) => {
                if let Some(ack) = tx.ack.clone() {
                    let p = tx.peer;
                    self.transmit(p, p.addr, ack);
                }
            }
            _ => {}
        }
    }

    /// Processes every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((&(at, seq), &r)) = self.timers.iter().next() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, seq));
            match r {
                TimerRef::Server(id) => self.server_timer(now, id),
                TimerRef::Client(id) => self.client_timer(now, id),
            }
        }
    }

    fn server_timer(&mut self, now: Instant, id: TxId) {
        let cfg = self.timers_cfg;
        let Some(tx) = self.server.get_mut(&id) else {
            return;
        };
        if tx.retransmit_at.is_some_and(|at| at <= now) {
            let next = (tx.retransmit_interval * 2).min(cfg.t2);
            tx.retransmit_interval = next;
            tx.retransmit_at = Some(now + next);
            let (peer, dest, bytes) = (tx.peer, tx.dest, tx.last_response.clone());
            self.schedule(now + next, TimerRef::Server(id));
            if let Some(bytes) = bytes {
                self.transmit(peer, dest, bytes);
            }
        }
        let Some(tx) = self.server.get(&id) else {
            return;
        };
        if tx.timeout_at.is_some_and(|at| at <= now) {
            match tx.state {
                ServerState::Accepted { ack_seen: false } => {
                    let call_id = tx.call_id.clone();
                    self.emit(Event::AckTimeout { tx: id, call_id });
                }
                ServerState::Trying | ServerState::Proceeding => self.unanswered += 1,
                _ => {}
            }
            self.remove_server(id);
        }
    }

    fn remove_server(&mut self, id: TxId) {
        if let Some(tx) = self.server.remove(&id) {
            self.server_index.remove(&tx.key);
            if let Some(ids) = self.accepted_by_call.get_mut(&tx.call_id) {
                ids.retain(|&i| i != id);
                if ids.is_empty() {
                    self.accepted_by_call.remove(&tx.call_id);
                }
            }
        }
    }

    fn client_timer(&mut self, now: Instant, id: ClientTxId) {
        let cfg = self.timers_cfg;
        let Some(tx) = self.client.get_mut(&id) else {
            return;
        };
        if tx.retransmit_at.is_some_and(|at| at <= now) {
            let next = if tx.method == Method::Invite {
                tx.retransmit_interval * 2 // timer A doubles without cap
            } else if tx.state == ClientState::Proceeding {
                cfg.t2
            } else {
                (tx.retransmit_interval * 2).min(cfg.t2)
            };
            tx.retransmit_interval = next;
            tx.retransmit_at = Some(now + next);
            let (peer, bytes) = (tx.peer, tx.bytes.clone());
            self.schedule(now + next, TimerRef::Client(id));
            self.transmit(peer, peer.addr, bytes);
        }
        let Some(tx) = self.client.get(&id) else {
            return;
        };
        if tx.timeout_at.is_some_and(|at| at <= now) {
            if matches!(tx.state, ClientState::Calling | ClientState::Proceeding) {
                self.emit(Event::RequestTimeout { tx: id });
            }
            if let Some(tx) = self.client.remove(&id) {
                self.client_index.remove(&(tx.branch, tx.method));
            }
        }
    }
}

/// RFC 3261 §17.1.1.3: the ACK for a non-2xx final, built from the request.
fn ack_for_failure(req: &Request, resp: &Response) -> Vec<u8> {
    let mut ack = Request::new(Method::Ack, req.uri.clone());
    if let Some(v) = req.headers.get_all("Via").next() {
        ack.headers.push("Via", v);
    }
    for name in ["Route", "From", "Call-ID"] {
        for v in req.headers.get_all(name) {
            ack.headers.push(name, v);
        }
    }
    if let Some(to) = resp.headers.get("To") {
        ack.headers.push("To", to);
    }
    if let Some(c) = req.cseq() {
        ack.headers.push("CSeq", format!("{} ACK", c.seq));
    }
    ack.headers.push("Max-Forwards", "70");
    ack.to_bytes()
}

/// Where a response goes (RFC 3261 §18.2.2, RFC 3581). For stream
/// transports it goes back on `peer.conn`; the address returned is where
/// the driver opens a new connection if that one has closed: the source
/// IP and the Via's sent-by port (the source port of an accepted
/// connection is ephemeral). For UDP: the source address when `rport`
/// is present, else the source IP and the Via's port.
pub fn response_dest(peer: Peer, via: Option<&Via>) -> SocketAddr {
    match via {
        Some(v) if peer.transport.is_reliable() || !v.params.has("rport") => {
            SocketAddr::new(peer.addr.ip(), v.port.unwrap_or(peer.transport.default_port()))
        }
        _ => peer.addr,
    }
}

/// Adds `received` and fills `rport` on the top Via of a response
/// (RFC 3261 §18.2.1, RFC 3581 §4) so the client can tell its public address.
fn stamp_via(resp: &mut Response, peer: Peer) {
    let Some(first) = resp.headers.get_all("Via").next() else {
        return;
    };
    let mut vias: Vec<String> = crate::header::split_list(first).map(str::to_owned).collect();
    let Some(top) = vias.first().and_then(|v| Via::parse(v)) else {
        return;
    };
    let mut top = top;
    let ip = peer.addr.ip().to_string();
    if top.host.trim_start_matches('[').trim_end_matches(']') != ip || top.params.has("rport") {
        top.params.set("received", Some(&ip));
    }
    if top.params.has("rport") {
        top.params.set("rport", Some(&peer.addr.port().to_string()));
    }
    vias[0] = top.to_string();
    let rest: Vec<String> = resp.headers.get_all("Via").skip(1).map(str::to_owned).collect();
    resp.headers.remove("Via");
    resp.headers.push("Via", vias.join(", "));
    for r in rest {
        resp.headers.push("Via", r);
    }
}

/// Parses of a start line with a bad version would fail again; patch it so
/// the head parses and the 505 can be built.
/// A request line that does not parse, replaced by one that does so the
/// headers can be answered (never for a status line: responses get none).
fn replace_request_line(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (first, rest) = text.split_once('\n')?;
    if first.starts_with("SIP/") || matches!(parse(head), Ok(_) | Err(ParseError::Version(_))) {
        return None;
    }
    Some(format!("OPTIONS sip:unparsable.invalid SIP/2.0\r\n{rest}").into_bytes())
}

fn fix_version(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (first, rest) = text.split_once('\n')?;
    let mut parts: Vec<&str> = first.trim_end_matches('\r').split(' ').collect();
    if parts.len() == 3 && parts[2].starts_with("SIP/") && parts[2] != "SIP/2.0" {
        parts[2] = "SIP/2.0";
        Some(format!("{}\r\n{}", parts.join(" "), rest).into_bytes())
    } else {
        None
    }
}
