//! Requests inside a dialog (re-INVITE/UPDATE, ACK, BYE, INFO) and how
//! legs and recordings end.

use super::invite::{apply_parties, codec_map, offer_codecs, offer_crypto, offer_rtpmaps};
use super::*;

impl Recorder {
    pub(super) fn find_leg(&self, call_id: &str, to_tag: Option<&str>) -> Option<LegKey> {
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

    pub(super) fn on_in_dialog_offer(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials) {
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
            let codecs = offer_rtpmaps(&offer_codecs());
            let srtp = self.cfg.srtp_required || leg.streams.iter().any(|s| s.spec.srtp.is_some());
            let crypto = if srtp { offer_crypto() } else { Vec::new() };
            body = Some(sdp::build_offer(&streams, &codecs, Some(OFFER_TE_PT), &crypto, &local));
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
    pub(super) fn renegotiate(
        &mut self,
        _now: Now,
        key: &LegKey,
        sd: &SessionDescription,
    ) -> Result<Vec<u8>, SipError> {
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

    pub(super) fn on_ack(&mut self, now: Now, req: Request, _peer: Peer) {
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
        let answer = classify_body(req.content_type().as_ref(), &req.body)
            .ok()
            .and_then(|body| body.sdp.as_deref().and_then(|b| sdp::parse(b).ok()));
        let Some(answer) = answer else {
            if self.cfg.srtp_required {
                let why = "SRTP required: the ACK carried no answer to our offer";
                self.end_leg(now, &key, true, RecordingState::Failed, EndCause::AnswerRefused, why);
            }
            return;
        };
        let mut updates = Vec::new();
        let mut plain = false;
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
            // SDES: the answer's crypto line carries the key the platform sends with.
            spec.srtp =
                a.crypto.iter().find_map(|c| SrtpKey::from_inline(SrtpSuite::from_sdes(&c.suite)?, &c.key_params));
            plain |= spec.srtp.is_none();
            if spec != ls.spec {
                ls.spec = spec.clone();
                updates.push(spec);
            }
        }
        if plain && self.cfg.srtp_required {
            let why = "SRTP required: the answer to our offer has no usable a=crypto";
            self.end_leg(now, &key, true, RecordingState::Failed, EndCause::AnswerRefused, why);
            return;
        }
        let recording = leg.recording;
        if let Some(rec) = self.recordings.get_mut(&recording) {
            for u in &updates {
                if let Some(sr) = rec.meta.streams.iter_mut().find(|s| s.local_port == u.port.rtp) {
                    sr.codecs = u.codec_names();
                    sr.remote = u.remote.map(|a| a.to_string());
                    sr.srtp = u.srtp.as_ref().map(|k| k.suite.sdes_name().to_owned());
                }
            }
        }
        for u in updates {
            self.out.push_back(Output::Media(MediaCommand::UpdateStream(u)));
        }
    }

    pub(super) fn on_ack_timeout(&mut self, now: Now, tx: TxId, call_id: &str) {
        let key = self
            .legs
            .iter()
            .find(|(k, l)| k.0 == call_id && l.invite_tx == Some(tx) && !l.confirmed)
            .map(|(k, _)| k.clone());
        if let Some(key) = key {
            self.end_leg(now, &key, true, RecordingState::Failed, EndCause::NoAck, "no ACK received for 200 OK");
        }
    }

    pub(super) fn on_bye(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials) {
        let Some(key) = self.find_leg(&e.call_id, e.to.tag()) else {
            return self.reject(now, tx, &req, no_dialog());
        };
        self.reply(now, tx, &req, StatusCode::OK, "OK", None);
        self.end_leg(now, &key, false, RecordingState::Completed, EndCause::Bye, "BYE from recording source");
    }

    pub(super) fn on_info(&mut self, now: Now, tx: TxId, req: Request, e: RequestEssentials) {
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
    pub(super) fn drop_leg(&mut self, now: Now, key: &LegKey, send_bye: bool) -> Option<RecordingId> {
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
    pub(super) fn end_leg(
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
    pub(super) fn terminate_recording(
        &mut self,
        now: Now,
        id: RecordingId,
        state: RecordingState,
        cause: EndCause,
        reason: &str,
    ) {
        let Some(legs) = self.recordings.get(&id).map(|r| r.legs.clone()) else { return };
        for key in &legs {
            self.drop_leg(now, key, true);
        }
        self.stop_recording(now, id, state, cause, reason);
    }

    pub(super) fn stop_recording(
        &mut self,
        now: Now,
        id: RecordingId,
        state: RecordingState,
        cause: EndCause,
        reason: &str,
    ) {
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

    pub(super) fn send_bye(&mut self, now: Now, leg: &Leg) {
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

/// 481 for an in-dialog request whose dialog we do not know.
pub(super) fn no_dialog() -> SipError {
    SipError::new(StatusCode::CALL_DOES_NOT_EXIST, "Call/Transaction Does Not Exist")
}

/// `application/dtmf-relay` INFO body: `Signal=5` and `Duration=160`.
pub(super) fn parse_dtmf_relay(body: &[u8]) -> Option<(char, u32)> {
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
