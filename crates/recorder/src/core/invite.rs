//! A new call: admission, the INVITE's body, offer/answer and the
//! recording it opens (or joins, for the second leg of a forked call).

use super::*;

impl Recorder {
    pub(super) fn check_admission(&self, peer: Peer, new_recording: bool) -> Result<(), SipError> {
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

    pub(super) fn parse_body(
        req: &Request,
    ) -> Result<(RecordingBody, Option<Metadata>, Option<SessionDescription>), SipError> {
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

    pub(super) fn decodable(m: &RtpMap) -> bool {
        Codec::from_rtpmap(&m.encoding, m.clock_rate, m.channels).is_some()
    }

    /// RFC 4028: the interval we will watch (refresher is always the SRC).
    pub(super) fn session_interval(&self, req: &Request) -> Result<Option<u32>, SipError> {
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

    pub(super) fn on_initial_invite(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials, peer: Peer) {
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
            None => self.open_recording(now, &req, peer, kind, channels, fork.as_ref(), &accepted),
        };

        // Streams of this leg.
        let mut leg_streams = Vec::new();
        let offered_codecs = offer_codecs();
        let offered_crypto = if self.cfg.srtp_required { offer_crypto() } else { Vec::new() };
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
                    codecs: offered_codecs.clone(),
                    telephone_event: Some(OFFER_TE_PT),
                    comfort_noise: None,
                    remote: None,
                    rtcp_mux: false,
                    held: false,
                    // With SRTP required, the key comes with the answer (ACK).
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
                let codecs = offer_rtpmaps(&offered_codecs);
                sdp::build_offer(&[(ports[0].rtp, None)], &codecs, Some(OFFER_TE_PT), &offered_crypto, &local)
            }
        };

        self.note_leg(recording, &leg_streams, md.as_ref(), fork.as_ref(), &e, &req, peer);
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

        let resp = self.ok_with_sdp(&req, &local_tag, local_ip, peer, siprec, interval, body);
        let deadline = now.mono + self.cfg.save_timeout;
        self.legs.get_mut(&key).expect("inserted").pending_answer =
            Some(PendingAnswer { invite: req, ok: resp, save_seq, deadline, received: now.mono });
    }

    /// Asks the driver to store the recording's current metadata.
    /// A new recording for a call's first leg: its metadata, the fork link
    /// a second leg will join by, and the media engine told to start it
    /// at one rate (16 kHz when an accepted codec is wideband; a later
    /// narrowband leg or codec is resampled up).
    #[allow(clippy::too_many_arguments)]
    fn open_recording(
        &mut self,
        now: Now,
        req: &Request,
        peer: Peer,
        kind: SourceKind,
        channels: u16,
        fork: Option<&ForkedLeg>,
        accepted: &[&NegotiatedStream],
    ) -> RecordingId {
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
                fork_link: fork.map(|f| f.link.clone()),
                siprec: None,
                labels: Vec::new(),
                save_seq: 0,
                answered: false,
                streams_without_rtp: 0,
            },
        );
        if let Some(f) = fork {
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

    /// The 200 OK of a new leg, with our SDP (held until the recording's
    /// metadata is stored).
    #[allow(clippy::too_many_arguments)]
    fn ok_with_sdp(
        &self,
        req: &Request,
        local_tag: &str,
        local_ip: IpAddr,
        peer: Peer,
        siprec: bool,
        interval: Option<u32>,
        body: Vec<u8>,
    ) -> Response {
        let mut resp = self.response(req, StatusCode::OK, "OK", Some(local_tag));
        resp.headers.push("Contact", self.contact(local_ip, peer.transport, siprec));
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Supported", SUPPORTED);
        if let Some(s) = interval {
            resp.headers.push("Session-Expires", format!("{s};refresher=uac"));
            resp.headers.push("Require", "timer");
        }
        resp.headers.push("Content-Type", "application/sdp");
        resp.body = body;
        resp
    }

    /// Writes what this leg adds to its recording's metadata: its Call-ID,
    /// its streams, the parties (from SIPREC metadata, the fork parameters
    /// or the headers) and the call key.
    #[allow(clippy::too_many_arguments)]
    fn note_leg(
        &mut self,
        recording: RecordingId,
        leg_streams: &[LegStream],
        md: Option<&Metadata>,
        fork: Option<&ForkedLeg>,
        e: &RequestEssentials,
        req: &Request,
        peer: Peer,
    ) {
        let rec = self.recordings.get_mut(&recording).expect("just created or joined");
        rec.meta.call_ids.push(e.call_id.clone());
        for ls in leg_streams {
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
        let parties = match (md, fork) {
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
            rec.meta.call_key = Some(call_key(rec.siprec.as_ref(), fork, req, &e.call_id, peer));
        }
    }

    pub(super) fn save(&mut self, id: RecordingId, started: bool) -> u64 {
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
    pub(super) fn on_cancelled(&mut self, now: Now, invite_tx: TxId) {
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

    pub(super) fn new_stream_id(&mut self) -> StreamId {
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        id
    }

    /// The offer against our codecs and SRTP policy; every accepted SRTP
    /// stream gets a fresh key of ours for the answer.
    pub(super) fn negotiate(&self, sd: &SessionDescription) -> Vec<NegotiatedStream> {
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

    pub(super) fn stream_spec(
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
}

/// Payload type of Opus in our own offers (dynamic, RFC 7587).
const OFFER_OPUS_PT: u8 = 111;

/// Codecs of our own offer (delayed offer, re-INVITE without SDP): every
/// codec this build decodes, G.711 first. Answerers mostly take the first
/// they support, and such a call's recording rate is fixed before the
/// answer comes: 8 kHz (a wideband codec chosen is recorded narrowband).
pub(super) fn offer_codecs() -> Vec<(u8, Codec)> {
    Codec::ALL
        .into_iter()
        .filter(|c| c.is_built())
        .map(|c| (c.static_payload_type().unwrap_or(OFFER_OPUS_PT), c))
        .collect()
}

pub(super) fn offer_rtpmaps(codecs: &[(u8, Codec)]) -> Vec<RtpMap> {
    codecs
        .iter()
        .map(|&(pt, c)| RtpMap {
            pt,
            encoding: c.name().to_ascii_uppercase(),
            clock_rate: c.clock_rate(),
            channels: if c == Codec::Opus { 2 } else { 1 },
        })
        .collect()
}

/// SDES lines of our own offer when SRTP is required: every suite we
/// decrypt, each with a fresh key of ours (we never send media, so the
/// key is never used; the platform's key comes in its answer).
pub(super) fn offer_crypto() -> Vec<String> {
    SrtpSuite::ALL
        .iter()
        .enumerate()
        .map(|(i, &suite)| format!("{} {} {}", i + 1, suite.sdes_name(), SrtpKey::random(suite).to_inline().as_str()))
        .collect()
}

/// The decodable codecs of an SDP codec list, by payload type.
pub(super) fn codec_map(maps: &[RtpMap]) -> Vec<(u8, Codec)> {
    maps.iter().filter_map(|m| Codec::from_rtpmap(&m.encoding, m.clock_rate, m.channels).map(|c| (m.pt, c))).collect()
}

/// The key every recorder the platform forks this call to derives alike
/// (see [`model::RecordingMeta::call_key`]): the SIPREC communication
/// session's id from the metadata, the BiB call reference, or the Call-ID
/// with the signalling source.
pub(super) fn call_key(
    md: Option<&Metadata>,
    fork: Option<&ForkedLeg>,
    req: &Request,
    call_id: &str,
    peer: Peer,
) -> String {
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

pub(super) fn kind_name(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Siprec => "SIPREC",
        SourceKind::Forked => "forked-leg",
        SourceKind::Plain => "plain",
    }
}

pub(super) fn apply_parties(meta: &mut RecordingMeta, parties: CallParties) {
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
