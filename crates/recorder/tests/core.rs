//! The recorder's SIP behaviour end to end, without sockets: requests in as
//! bytes, responses and media commands out, on virtual time.

use std::time::{Duration, Instant};

use model::{NodeId, RecordingMeta, RecordingState, SourceKind};
use recorder::{
    BookkeepingAllocator, MediaCommand, MediaNotice, Now, Output, Recorder, RecorderConfig, RecordingEvent,
};
use sip_proto::{parse, HeaderAccess, Message, Peer, Response};
use time::OffsetDateTime;

const SRC: &str = "127.0.0.1:5070";

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../siprec/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

struct Harness {
    rec: Recorder,
    now: Now,
    branch: u32,
    /// Metadata saves not confirmed yet; `None` confirms them at once
    /// (storage that is always fast), `Some` holds them for the test.
    held_saves: Option<Vec<(model::RecordingId, u64)>>,
}

#[derive(Default)]
struct Out {
    responses: Vec<Response>,
    requests: Vec<sip_proto::Request>,
    media: Vec<MediaCommand>,
    events: Vec<RecordingEvent>,
}

impl Out {
    fn codes(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status.as_u16()).collect()
    }
    fn last(&self) -> &Response {
        self.responses.last().expect("a response")
    }
    fn stop(&self) -> Option<&RecordingMeta> {
        self.media.iter().find_map(|m| match m {
            MediaCommand::Stop { meta, .. } => Some(meta.as_ref()),
            _ => None,
        })
    }
    fn started(&self) -> Option<&RecordingMeta> {
        self.events.iter().find_map(|e| match e {
            RecordingEvent::Started(m) => Some(m.as_ref()),
            _ => None,
        })
    }
    fn updated(&self) -> Option<&RecordingMeta> {
        self.events.iter().rev().find_map(|e| match e {
            RecordingEvent::Updated(m) => Some(m.as_ref()),
            _ => None,
        })
    }
    fn added_channels(&self) -> Vec<u8> {
        self.media
            .iter()
            .filter_map(|m| match m {
                MediaCommand::AddStream(s) => Some(s.channel),
                _ => None,
            })
            .collect()
    }
}

fn config() -> RecorderConfig {
    let mut c = RecorderConfig::new(NodeId("test-node".into()));
    c.fallback_ip = "127.0.0.1".parse().unwrap();
    c.sip_udp = Some("127.0.0.1:5060".parse().unwrap());
    c
}

impl Harness {
    fn new() -> Harness {
        Harness::with(config(), 100)
    }

    fn with(cfg: RecorderConfig, port_pairs: u16) -> Harness {
        let rec = Recorder::new(cfg, Box::new(BookkeepingAllocator::new(30000, port_pairs)));
        Harness { rec, now: Now { mono: Instant::now(), wall: OffsetDateTime::now_utc() }, branch: 0, held_saves: None }
    }

    fn drain(&mut self) -> Out {
        let mut out = Out::default();
        while let Some(o) = self.rec.poll_output() {
            match o {
                Output::Transmit(t) => match parse(&t.data).unwrap() {
                    Message::Response(r) => out.responses.push(r),
                    Message::Request(r) => out.requests.push(r),
                },
                Output::Media(m) => out.media.push(m),
                Output::Recording { event, seq } => {
                    let id = event.meta().id;
                    out.events.push(event);
                    match &mut self.held_saves {
                        Some(held) => held.push((id, seq)),
                        None => self.rec.saved(self.now, id, seq, Ok(())),
                    }
                }
            }
        }
        out
    }

    fn send(&mut self, text: &str) -> Out {
        self.send_from(SRC, text)
    }

    fn send_from(&mut self, src: &str, text: &str) -> Out {
        // Headers use bare LF in these tests; the body was already CRLF-normalised.
        let (head, body) = text.split_once("\n\n").unwrap_or((text, ""));
        let text = format!("{}\r\n\r\n{body}", head.replace('\n', "\r\n"));
        self.rec.handle_sip(self.now, Peer::udp(src.parse().unwrap()), text.as_bytes());
        self.drain()
    }

    fn advance(&mut self, d: Duration) -> Out {
        let target = self.now.mono + d;
        let mut out = Out::default();
        while let Some(t) = self.rec.poll_timeout() {
            if t > target {
                break;
            }
            self.now.mono = t;
            self.rec.handle_timeout(self.now);
            let o = self.drain();
            out.responses.extend(o.responses);
            out.requests.extend(o.requests);
            out.media.extend(o.media);
            out.events.extend(o.events);
        }
        self.now.mono = target;
        out
    }

    fn next_branch(&mut self) -> String {
        self.branch += 1;
        format!("z9hG4bK-t{}", self.branch)
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &mut self,
        method: &str,
        call_id: &str,
        cseq: u32,
        to_tag: Option<&str>,
        extra: &str,
        ct: Option<&str>,
        body: &str,
    ) -> String {
        let from = format!("From: \"SBC\" <sip:src@sbc.example>;tag=src-{call_id}");
        self.request_from(&from, method, call_id, cseq, to_tag, extra, ct, body)
    }

    #[allow(clippy::too_many_arguments)]
    fn request_from(
        &mut self,
        from: &str,
        method: &str,
        call_id: &str,
        cseq: u32,
        to_tag: Option<&str>,
        extra: &str,
        ct: Option<&str>,
        body: &str,
    ) -> String {
        let body = body.replace("\r\n", "\n").replace('\n', "\r\n");
        let branch = self.next_branch();
        let to = match to_tag {
            Some(t) => format!("<sip:srs@127.0.0.1>;tag={t}"),
            None => "<sip:srs@127.0.0.1>".to_owned(),
        };
        let ct = ct.map(|c| format!("Content-Type: {c}\n")).unwrap_or_default();
        format!(
            "{method} sip:srs@127.0.0.1:5060 SIP/2.0\nVia: SIP/2.0/UDP {SRC};branch={branch}\n\
             {from}\nTo: {to}\nCall-ID: {call_id}\n\
             CSeq: {cseq} {method}\nMax-Forwards: 70\nContact: <sip:src@{SRC}>;+sip.src\n{extra}{ct}\
             Content-Length: {}\n\n{body}",
            body.len()
        )
    }
}

fn to_tag(r: &Response) -> String {
    r.to().unwrap().tag().unwrap().to_owned()
}

fn acme_invite(h: &mut Harness, call_id: &str) -> Out {
    let body = fixture("acme-draft.body");
    let req = h.request(
        "INVITE",
        call_id,
        1,
        None,
        "Require: siprec\n",
        Some("multipart/mixed;boundary=unique-boundary-1"),
        &body,
    );
    h.send(&req)
}

#[test]
fn siprec_call_from_invite_to_bye() {
    let mut h = Harness::new();
    let out = acme_invite(&mut h, "call-1");
    assert_eq!(out.codes(), vec![100, 200]);
    let ok = out.last();
    let answer = String::from_utf8(ok.body.clone()).unwrap();
    assert!(answer.contains("a=label:16777227\r\na=recvonly"), "{answer}");
    assert!(answer.contains("a=label:16777228\r\na=recvonly"), "{answer}");
    assert!(ok.headers.get("Contact").unwrap().contains("+sip.srs"));
    assert!(ok.headers.has_token("Supported", "siprec"));
    assert!(matches!(&out.media[0], MediaCommand::Start { channels: 2, sample_rate: 8000, .. }));
    assert_eq!(out.added_channels(), vec![0, 1]);
    let meta = out.started().unwrap();
    assert_eq!(meta.source, SourceKind::Siprec);
    assert_eq!(meta.state, RecordingState::Active);
    // Acme says 1002 is the calling party; 9000 sends the stream on channel 0.
    assert_eq!(meta.caller.as_deref(), Some("1002"));
    assert_eq!(meta.callee.as_deref(), Some("9000"));
    let p9000 = meta.participants.iter().find(|p| p.number.as_deref() == Some("9000")).unwrap();
    assert_eq!(p9000.channel, Some(0));
    assert_eq!(meta.streams[1].sender.as_deref(), Some("1002"));

    let tag = to_tag(ok);
    let ack = h.request("ACK", "call-1", 1, Some(&tag), "", None, "");
    assert!(h.send(&ack).responses.is_empty());
    let bye = h.request("BYE", "call-1", 2, Some(&tag), "", None, "");
    let out = h.send(&bye);
    assert_eq!(out.codes(), vec![200]);
    let stop = out.stop().expect("recording stopped");
    assert_eq!(stop.state, RecordingState::Completed);
    assert_eq!(stop.reason(), Some("BYE from recording source"));
    assert_eq!(out.media.iter().filter(|m| matches!(m, MediaCommand::RemoveStream { .. })).count(), 2);
    assert_eq!(h.rec.active_recordings(), 0);
    // A BYE for the finished dialog is 481.
    let again = h.request("BYE", "call-1", 3, Some(&tag), "", None, "");
    assert_eq!(h.send(&again).codes(), vec![481]);
}

#[test]
fn broadworks_single_mixed_stream_is_mono_with_direction() {
    let mut h = Harness::new();
    let body = fixture("broadworks.body");
    let req =
        h.request("INVITE", "bw-1", 1, None, "", Some("multipart/mixed;boundary=UniqueBroadWorksBoundary"), &body);
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![100, 200]);
    assert!(matches!(&out.media[0], MediaCommand::Start { channels: 1, .. }));
    let meta = out.started().unwrap();
    assert_eq!(meta.direction.as_deref(), Some("inbound"));
    assert_eq!(meta.caller.as_deref(), Some("+19015783200"));
    // The decodable codecs, in the offer's order (G.729 only in builds with it).
    let answer = String::from_utf8(out.last().body.clone()).unwrap();
    let formats = if media::Codec::G729.is_built() { "RTP/AVP 8 0 9 18 101" } else { "RTP/AVP 8 0 9 101" };
    assert!(answer.contains(formats), "{answer}");
    // G.722 is wideband: the recording is written at 16 kHz.
    assert!(matches!(&out.media[0], MediaCommand::Start { sample_rate: 16000, .. }));
}

#[test]
fn forked_legs_become_one_stereo_recording() {
    let mut h = Harness::new();
    let near = "From: \"Agent\" <sip:4062@cucm;x-nearend;x-refci=8273;x-nearenddevice=SEP1;x-nearendaddr=4062;x-farendaddr=8172710497>;tag=n1";
    let far = "From: \"Agent\" <sip:4062@cucm;x-farend;x-refci=8273;x-nearendaddr=4062;x-farendaddr=8172710497>;tag=f1";
    let leg = |h: &mut Harness, call: &str, from: &str| {
        let r = h.request_from(from, "INVITE", call, 101, None, "", None, "");
        h.send(&r.replace("Contact: <sip:src@127.0.0.1:5070>;+sip.src", "Contact: <sip:4062@127.0.0.1:5070>"))
    };
    let a = leg(&mut h, "leg-near", near);
    assert_eq!(a.codes(), vec![100, 200]);
    // Delayed offer: our 200 carries a recvonly offer.
    let offer = String::from_utf8(a.last().body.clone()).unwrap();
    // Every codec this build decodes, G.711 first; plain RTP (SRTP not required).
    let formats = if media::Codec::G729.is_built() { "RTP/AVP 0 8 9 111 18 101" } else { "RTP/AVP 0 8 9 111 101" };
    assert!(offer.contains("a=recvonly") && offer.contains(formats), "{offer}");
    assert!(offer.contains("a=rtpmap:111 opus/48000/2") && !offer.contains("a=crypto"), "{offer}");
    assert!(matches!(&a.media[0], MediaCommand::Start { channels: 2, .. }));
    assert_eq!(a.added_channels(), vec![0]);
    assert_eq!(a.started().unwrap().source, SourceKind::Forked);

    let b = leg(&mut h, "leg-far", far);
    assert_eq!(b.codes(), vec![100, 200]);
    assert!(!b.media.iter().any(|m| matches!(m, MediaCommand::Start { .. })), "second leg joins");
    assert_eq!(b.added_channels(), vec![1]);
    let meta = b.updated().unwrap();
    assert_eq!(meta.call_ids, vec!["leg-near".to_owned(), "leg-far".to_owned()]);
    assert_eq!(meta.caller.as_deref(), Some("4062"));
    assert_eq!(meta.callee.as_deref(), Some("8172710497"));
    assert_eq!(h.rec.active_recordings(), 1);

    // ACK carries the answer (PCMA chosen by the phone).
    let tag_a = to_tag(a.last());
    let answer = "v=0\no=CiscoSystemsCCM-SIP 1 1 IN IP4 127.0.0.1\ns=SIP Call\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 40000 RTP/AVP 8 101\na=rtpmap:8 PCMA/8000\na=rtpmap:101 telephone-event/8000\na=sendonly\n";
    let ack = h.request_from(near, "ACK", "leg-near", 101, Some(&tag_a), "", Some("application/sdp"), answer);
    let out = h.send(&ack);
    let update = out.media.iter().find_map(|m| match m {
        MediaCommand::UpdateStream(s) => Some(s),
        _ => None,
    });
    let update = update.expect("answer applied");
    assert_eq!(update.codecs.iter().map(|(pt, _)| *pt).collect::<Vec<_>>(), vec![8]);
    assert_eq!(update.remote, Some("127.0.0.1:40000".parse().unwrap()));

    let bye_a = h.request_from(near, "BYE", "leg-near", 102, Some(&tag_a), "", None, "");
    let out = h.send(&bye_a);
    assert_eq!(out.codes(), vec![200]);
    assert!(out.stop().is_none(), "the far leg is still up");
    let tag_b = to_tag(b.last());
    let bye_b = h.request_from(far, "BYE", "leg-far", 102, Some(&tag_b), "", None, "");
    let out = h.send(&bye_b);
    assert_eq!(out.stop().unwrap().state, RecordingState::Completed);
}

/// A delayed-offer leg where SRTP is required (`media.srtp = "require"`):
/// our offer is RTP/SAVP with a crypto line per suite; the ACK's answer
/// picks one with the platform's key, which the stream then decrypts with
/// (and the metadata names the suite, never the key). An answer in plain
/// RTP ends the leg (BYE, recording failed) instead of recording in clear.
#[test]
fn delayed_offer_with_srtp_required_offers_sdes_and_refuses_a_plain_answer() {
    let mut cfg = config();
    cfg.srtp_required = true;
    let mut h = Harness::with(cfg, 100);
    let key = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
    for (call, answer_proto, crypto) in [
        ("srtp-ok", "RTP/SAVP", format!("a=crypto:3 AEAD_AES_128_GCM inline:{}AA==\n", "A".repeat(36))),
        ("srtp-80", "RTP/SAVP", format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 {key}\n")),
        ("srtp-plain", "RTP/AVP", String::new()),
    ] {
        let invite = h.request("INVITE", call, 1, None, "", None, "");
        let out = h.send(&invite);
        assert_eq!(out.codes(), vec![100, 200], "{call}");
        let offer = String::from_utf8(out.last().body.clone()).unwrap();
        assert!(offer.contains("m=audio ") && offer.contains(" RTP/SAVP 0 8 "), "{offer}");
        for suite in ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM"] {
            assert!(offer.contains(&format!(" {suite} inline:")), "{suite} offered: {offer}");
        }
        let tag = to_tag(out.last());
        let answer = format!(
            "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 40000 {answer_proto} 9 101\n\
             a=rtpmap:9 G722/8000\na=rtpmap:101 telephone-event/8000\n{crypto}a=sendonly\n"
        );
        let ack = h.request("ACK", call, 1, Some(&tag), "", Some("application/sdp"), &answer);
        let out = h.send(&ack);
        if answer_proto == "RTP/AVP" {
            let stop = out.stop().expect("a plain answer ends the leg");
            assert_eq!(stop.state, RecordingState::Failed);
            assert!(stop.reason().unwrap().contains("SRTP required"), "{:?}", stop.reason());
            assert!(out.requests.iter().any(|r| r.method == sip_proto::Method::Bye), "the leg is hung up");
            continue;
        }
        let update = out.media.iter().find_map(|m| match m {
            MediaCommand::UpdateStream(s) => Some(s),
            _ => None,
        });
        let update = update.expect("answer applied");
        let suite = update.srtp.as_ref().map(|k| k.suite.sdes_name());
        assert_eq!(suite, Some(if call == "srtp-ok" { "AEAD_AES_128_GCM" } else { "AES_CM_128_HMAC_SHA1_80" }));
        assert_eq!(update.codecs.iter().map(|(pt, c)| (*pt, c.name())).collect::<Vec<_>>(), vec![(9, "G722")]);
        let bye = h.request("BYE", call, 2, Some(&tag), "", None, "");
        let stop = h.send(&bye).stop().cloned().expect("recording ends");
        assert_eq!(stop.state, RecordingState::Completed);
        assert_eq!(stop.streams[0].srtp.as_deref(), suite, "the metadata names the suite");
        assert_eq!(stop.streams[0].codecs, ["G722"]);
        let json = format!("{stop:?}");
        assert!(!json.contains("WVNfX19") && !json.contains("AAAAAAAA"), "no key in the metadata: {json}");
    }
}

#[test]
fn admission_errors_carry_the_right_codes() {
    let mut cfg = config();
    cfg.allowed_sources = vec!["127.0.0.0/30".parse().unwrap()];
    let mut h = Harness::with(cfg, 100);
    let sdp = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n";
    let req = h.request("INVITE", "x1", 1, None, "", Some("application/sdp"), sdp);
    let out = h.send_from("127.0.0.9:5070", &req);
    assert_eq!(out.codes(), vec![100, 403]);
    assert_eq!(out.last().reason, "Source not allowed");

    h.rec.set_draining(true);
    let req = h.request("INVITE", "x2", 1, None, "", Some("application/sdp"), sdp);
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![100, 503]);
    assert_eq!(out.last().headers.get("Retry-After"), Some("60"));
    let opt = h.request("OPTIONS", "o1", 1, None, "", None, "");
    assert_eq!(h.send(&opt).codes(), vec![503]);
    h.rec.set_draining(false);
    h.rec.set_storage_ok(false);
    let req = h.request("INVITE", "x3", 1, None, "", Some("application/sdp"), sdp);
    assert_eq!(h.send(&req).last().reason, "Storage unavailable");
    h.rec.set_storage_ok(true);

    let opt = h.request("OPTIONS", "o2", 1, None, "", None, "");
    let out = h.send(&opt);
    assert_eq!(out.codes(), vec![200]);
    assert!(out.last().headers.has_token("Supported", "siprec"));
    assert!(out.last().headers.get("Allow").unwrap().contains("UPDATE"));

    let req = h.request("INVITE", "x4", 1, None, "", Some("text/html"), "<p>hi</p>");
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![100, 415]);
    assert!(out.last().headers.get("Accept").unwrap().contains("application/rs-metadata+xml"));

    let bad_xml = "--b\nContent-Type: application/sdp\n\nv=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0\n\n--b\nContent-Type: application/rs-metadata+xml\n\n<recording><participant></recording>\n--b--\n";
    let req = h.request("INVITE", "x5", 1, None, "", Some("multipart/mixed;boundary=b"), bad_xml);
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![100, 400]);
    assert!(out.last().reason.starts_with("Malformed recording metadata"), "{}", out.last().reason);

    // Codecs no build decodes (GSM static, AMR-WB dynamic): the Warning names them.
    let amr = sdp.replace("RTP/AVP 0", "RTP/AVP 3 96\na=rtpmap:96 AMR-WB/16000");
    let req = h.request("INVITE", "x6", 1, None, "", Some("application/sdp"), &amr);
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![100, 488]);
    let warning = out.last().headers.get("Warning").unwrap();
    assert!(warning.starts_with("304 "), "{warning}");
    assert!(warning.contains("GSM/8000, AMR-WB/16000"), "{warning}");

    let req = h.request("INVITE", "x7", 1, None, "Require: 100rel, foo\n", Some("application/sdp"), sdp);
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![100, 420]);
    assert!(out.last().reason.contains("foo"));
    assert_eq!(out.last().headers.get("Unsupported"), Some("foo"));

    let req = h.request("INVITE", "x8", 1, None, "", Some("application/sdp"), "garbage");
    assert_eq!(h.send(&req).codes(), vec![100, 400]);

    let req = h.request("FOO", "m1", 1, None, "", None, "");
    assert_eq!(h.send(&req).codes(), vec![501]);
    let req = h.request("REGISTER", "m2", 1, None, "", None, "");
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![405]);
    assert!(out.last().headers.get("Allow").is_some());
    let req = h.request("BYE", "nope", 1, Some("zzz"), "", None, "");
    assert_eq!(h.send(&req).codes(), vec![481]);
    let req = h.request("INFO", "nope", 1, Some("zzz"), "", None, "");
    assert_eq!(h.send(&req).codes(), vec![481]);

    let c = h.rec.counters();
    assert_eq!(c.invites_accepted, 0);
    assert_eq!(c.rejected_with(503), 2);
    assert_eq!(h.rec.responses_sent().get(&100), Some(&8));
}

#[test]
fn call_limit_and_port_exhaustion_give_503() {
    let mut cfg = config();
    cfg.max_calls = 1;
    let mut h = Harness::with(cfg, 100);
    assert_eq!(acme_invite(&mut h, "a").codes(), vec![100, 200]);
    let out = acme_invite(&mut h, "b");
    assert_eq!(out.codes(), vec![100, 503]);
    assert_eq!(out.last().reason, "Call limit reached");

    let mut h = Harness::with(config(), 3);
    assert_eq!(acme_invite(&mut h, "a").codes(), vec![100, 200]);
    let out = acme_invite(&mut h, "b"); // needs 2 pairs, 1 left
    assert_eq!(out.codes(), vec![100, 503]);
    assert_eq!(out.last().reason, "No media ports available");
    assert!(out.media.is_empty(), "nothing half-created");
}

#[test]
fn hold_reinvite_and_metadata_update() {
    let mut h = Harness::new();
    let out = acme_invite(&mut h, "h1");
    let tag = to_tag(out.last());
    let id = out.started().unwrap().id;
    let ack = h.request("ACK", "h1", 1, Some(&tag), "", None, "");
    h.send(&ack);

    let hold = "v=0\no=- 20076 595553 IN IP4 192.0.2.40\ns=-\nc=IN IP4 192.0.2.40\nt=0 0\nm=audio 20106 RTP/AVP 0\na=label:16777227\na=inactive\nm=audio 20110 RTP/AVP 0\na=label:16777228\na=inactive\n";
    let reinvite = h.request("INVITE", "h1", 2, Some(&tag), "", Some("application/sdp"), hold);
    let out = h.send(&reinvite);
    assert_eq!(out.codes(), vec![100, 200]);
    let answer = String::from_utf8(out.last().body.clone()).unwrap();
    assert_eq!(answer.matches("a=inactive").count(), 2, "{answer}");
    assert!(answer.contains("o=callvault") && answer.contains(" 2 IN IP4"), "version increments: {answer}");
    let held: Vec<bool> = out
        .media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::UpdateStream(s) => Some(s.held),
            _ => None,
        })
        .collect();
    assert_eq!(held, vec![true, true]);

    // Avaya: metadata-only UPDATE with application/rs-metadata adds a participant.
    let md = "<?xml version=\"1.0\"?>\n<recording xmlns='urn:ietf:params:xml:ns:recording'><datamode>partial</datamode>\
              <participant id=\"P3new==\" session=\"S1sessionAcme==\"><nameID aor=\"sip:7204541001@192.0.2.32\"><name>Transfer Target</name></nameID></participant></recording>";
    let update = h.request(
        "UPDATE",
        "h1",
        3,
        Some(&tag),
        "Content-Disposition: recording-session\n",
        Some("application/rs-metadata"),
        md,
    );
    let out = h.send(&update);
    assert_eq!(out.codes(), vec![200]);
    assert!(out.last().body.is_empty());
    let meta = out.updated().unwrap();
    assert_eq!(meta.participants.len(), 3);
    assert!(meta.participants.iter().any(|p| p.name.as_deref() == Some("Transfer Target")));
    assert_eq!(meta.id, id);

    // re-INVITE without SDP: we offer the current streams, answer in ACK.
    let reinvite = h.request("INVITE", "h1", 4, Some(&tag), "", None, "");
    let out = h.send(&reinvite);
    assert_eq!(out.codes(), vec![100, 200]);
    let offer = String::from_utf8(out.last().body.clone()).unwrap();
    assert!(offer.contains("a=label:16777227") && offer.matches("m=audio").count() == 2, "{offer}");

    // Lower CSeq re-INVITE is refused.
    let stale = h.request("INVITE", "h1", 2, Some(&tag), "", Some("application/sdp"), hold);
    assert_eq!(h.send(&stale).codes(), vec![100, 500]);
}

#[test]
fn added_stream_and_codec_change_mid_call() {
    let mut h = Harness::new();
    let sdp = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\na=sendonly\nm=audio 4002 RTP/AVP 0\na=sendonly\n";
    let inv = h.request("INVITE", "c1", 1, None, "", Some("application/sdp"), sdp);
    let out = h.send(&inv);
    let tag = to_tag(out.last());
    let three = sdp
        .replace("o=- 1 1", "o=- 1 2")
        .replace("m=audio 4002 RTP/AVP 0", "m=audio 4002 RTP/AVP 8\na=rtpmap:8 PCMA/8000")
        + "m=audio 4004 RTP/AVP 0\na=sendonly\n";
    let re = h.request("INVITE", "c1", 2, Some(&tag), "", Some("application/sdp"), &three);
    let out = h.send(&re);
    assert_eq!(out.codes(), vec![100, 200]);
    let updates: Vec<_> = out.media.iter().filter(|m| matches!(m, MediaCommand::UpdateStream(_))).collect();
    assert_eq!(updates.len(), 1, "only the codec change updates: {:?}", out.media);
    // A third stream on a stereo recording folds into channel 0 (mixed).
    assert_eq!(out.added_channels(), vec![0]);
    let answer = String::from_utf8(out.last().body.clone()).unwrap();
    assert_eq!(answer.matches("m=audio 3").count(), 3, "{answer}");
}

#[test]
fn our_side_ends_calls_with_bye() {
    // No ACK: 2xx retransmitted, then BYE and a failed recording.
    let mut h = Harness::new();
    acme_invite(&mut h, "noack");
    let out = h.advance(Duration::from_secs(40));
    assert!(out.responses.iter().filter(|r| r.status.as_u16() == 200).count() >= 5, "2xx retransmitted");
    assert!(out.requests.iter().any(|r| r.method == sip_proto::Method::Bye));
    let stop = out.stop().unwrap();
    assert_eq!(stop.state, RecordingState::Failed);
    assert!(stop.reason().unwrap().contains("no ACK"));

    // Administrator completes an active call.
    let out = acme_invite(&mut h, "admin");
    let id = out.started().unwrap().id;
    let tag = to_tag(out.last());
    let ack = h.request("ACK", "admin", 1, Some(&tag), "", None, "");
    h.send(&ack);
    assert!(h.rec.complete(h.now, id));
    let out = h.drain();
    let bye = out.requests.iter().find(|r| r.method == sip_proto::Method::Bye).expect("BYE sent");
    assert_eq!(bye.to().unwrap().tag(), Some("src-admin"));
    assert_eq!(bye.from().unwrap().tag(), Some(tag.as_str()));
    assert_eq!(bye.uri, "sip:src@127.0.0.1:5070");
    assert_eq!(out.stop().unwrap().reason(), Some("completed by administrator"));
    assert!(!h.rec.complete(h.now, id), "already gone");

    // Media timeout notice from the engine.
    let out = acme_invite(&mut h, "quiet");
    let id = out.started().unwrap().id;
    h.rec.handle_media(h.now, MediaNotice::Inactive { recording: id });
    let out = h.drain();
    assert_eq!(out.stop().unwrap().reason(), Some("media timeout"));
    assert!(out.requests.iter().any(|r| r.method == sip_proto::Method::Bye));
}

#[test]
fn session_timer_and_info_dtmf() {
    let mut h = Harness::new();
    let sdp = "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP 0\n";
    let small =
        h.request("INVITE", "s0", 1, None, "Session-Expires: 30\nSupported: timer\n", Some("application/sdp"), sdp);
    let out = h.send(&small);
    assert_eq!(out.codes(), vec![100, 422]);
    assert_eq!(out.last().headers.get("Min-SE"), Some("90"));

    let inv = h.request(
        "INVITE",
        "s1",
        1,
        None,
        "Session-Expires: 120;refresher=uac\nSupported: timer\n",
        Some("application/sdp"),
        sdp,
    );
    let out = h.send(&inv);
    assert_eq!(out.last().headers.get("Session-Expires"), Some("120;refresher=uac"));
    let tag = to_tag(out.last());
    let ack = h.request("ACK", "s1", 1, Some(&tag), "", None, "");
    h.send(&ack);

    let info = h.request("INFO", "s1", 2, Some(&tag), "", Some("application/dtmf-relay"), "Signal=5\nDuration=160\n");
    let out = h.send(&info);
    assert_eq!(out.codes(), vec![200]);
    assert!(matches!(out.media.as_slice(), [MediaCommand::Dtmf { digit: '5', duration_ms: 160, .. }]));

    // A refresh (UPDATE) moves the deadline; then silence lets it expire.
    h.advance(Duration::from_secs(100));
    let refresh = h.request("UPDATE", "s1", 3, Some(&tag), "Session-Expires: 120;refresher=uac\n", None, "");
    assert_eq!(h.send(&refresh).codes(), vec![200]);
    let out = h.advance(Duration::from_secs(100));
    assert!(out.stop().is_none());
    let out = h.advance(Duration::from_secs(30));
    assert_eq!(out.stop().unwrap().reason(), Some("session timer expired"));
}

#[test]
fn shutdown_interrupts_every_recording() {
    let mut h = Harness::new();
    acme_invite(&mut h, "a");
    acme_invite(&mut h, "b");
    h.rec.shutdown(h.now);
    let out = h.drain();
    let stops: Vec<_> = out
        .media
        .iter()
        .filter_map(|m| match m {
            MediaCommand::Stop { meta, .. } => Some(meta.state),
            _ => None,
        })
        .collect();
    assert_eq!(stops, vec![RecordingState::Interrupted, RecordingState::Interrupted]);
    assert_eq!(out.requests.len(), 2);
}

/// The CANCEL for `invite` (same branch, same CSeq number, no body).
fn cancel_of(invite: &str) -> String {
    let (head, _) = invite.split_once("\n\n").unwrap();
    head.lines()
        .map(|l| {
            if l.starts_with("INVITE ") {
                l.replacen("INVITE", "CANCEL", 1)
            } else if l.starts_with("CSeq:") {
                l.replace("INVITE", "CANCEL")
            } else if l.starts_with("Content-Length:") {
                "Content-Length: 0".to_owned()
            } else if l.starts_with("Content-Type:") || l.starts_with("Require:") {
                String::new()
            } else {
                l.to_owned()
            }
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n\n"
}

fn acme_invite_text(h: &mut Harness, call_id: &str) -> String {
    let body = fixture("acme-draft.body");
    h.request(
        "INVITE",
        call_id,
        1,
        None,
        "Require: siprec\n",
        Some("multipart/mixed;boundary=unique-boundary-1"),
        &body,
    )
}

#[test]
fn answer_waits_until_the_recording_is_stored() {
    let mut h = Harness::new();
    h.held_saves = Some(Vec::new());
    let out = acme_invite(&mut h, "slow-disk");
    assert_eq!(out.codes(), vec![100], "no 200 before the metadata is durable");
    assert!(out.started().is_some());
    let (id, seq) = h.held_saves.as_mut().unwrap().pop().unwrap();
    // An earlier save number does not release a later one's answer.
    h.rec.saved(h.now, id, seq - 1, Ok(()));
    assert!(h.drain().responses.is_empty());
    h.rec.saved(h.now, id, seq, Ok(()));
    let out = h.drain();
    assert_eq!(out.codes(), vec![200]);
    assert!(String::from_utf8_lossy(&out.last().body).contains("a=recvonly"));
    // The timeline starts with the answer, not with the wait for the disk.
    assert_eq!(out.media, vec![MediaCommand::Answered { recording: id }]);
    assert_eq!(h.rec.counters().invites_accepted, 1);
    // A late duplicate confirmation changes nothing.
    h.rec.saved(h.now, id, seq, Ok(()));
    assert!(h.drain().responses.is_empty());
}

#[test]
fn cancel_before_the_answer_gives_487_and_frees_everything() {
    // Exactly the ports for one SIPREC call, so a leak would show.
    let mut h = Harness::with(config(), 2);
    h.held_saves = Some(Vec::new());
    let invite = acme_invite_text(&mut h, "cancelled");
    assert_eq!(h.send(&invite).codes(), vec![100]);
    let (id, seq) = h.held_saves.as_mut().unwrap().pop().unwrap();
    let out = h.send(&cancel_of(&invite));
    let mut codes = out.codes();
    codes.sort();
    assert_eq!(codes, vec![200, 487], "200 for the CANCEL, 487 for the INVITE");
    let terminated = out.responses.iter().find(|r| r.status.as_u16() == 487).unwrap();
    assert_eq!(terminated.headers.get("CSeq"), Some("1 INVITE"));
    assert!(terminated.to().unwrap().tag().is_some(), "487 carries a To tag");
    let stop = out.stop().expect("recording closed");
    assert_eq!(stop.state, RecordingState::Failed);
    assert_eq!(stop.reason(), Some("cancelled by the recording source before answer"));
    assert!(out.requests.is_empty(), "no BYE for a call never answered");
    assert_eq!(h.rec.active_recordings(), 0);
    assert_eq!(h.rec.counters().invites_cancelled, 1);
    // The save finishing afterwards answers nothing.
    h.rec.saved(h.now, id, seq, Ok(()));
    assert!(h.drain().responses.is_empty());
    // The ACK for the 487 is absorbed by the transaction.
    let ack = cancel_of(&invite).replace("CANCEL", "ACK");
    assert!(h.send(&ack).responses.is_empty());
    // A CANCEL retransmission gets the same 200 and nothing else.
    assert_eq!(h.send(&cancel_of(&invite)).codes(), vec![200]);
    // Its ports are free again: the next call gets them.
    h.held_saves = None;
    assert_eq!(acme_invite(&mut h, "next").codes(), vec![100, 200]);
    // A CANCEL after the 200 changes nothing (RFC 3261 §9.2).
    let invite = acme_invite_text(&mut h, "answered");
    let _ = h.send(&invite);
    assert_eq!(h.send(&cancel_of(&invite)).codes(), vec![200]);
}

#[test]
fn storage_that_fails_or_stalls_refuses_with_503() {
    let mut h = Harness::new();
    h.held_saves = Some(Vec::new());
    assert_eq!(acme_invite(&mut h, "broken-disk").codes(), vec![100]);
    let (id, seq) = h.held_saves.as_mut().unwrap().pop().unwrap();
    h.rec.saved(h.now, id, seq, Err("No space left on device".into()));
    let out = h.drain();
    assert_eq!(out.codes(), vec![503]);
    assert!(out.last().headers.get("Retry-After").is_some());
    let stop = out.stop().unwrap();
    assert_eq!(stop.state, RecordingState::Failed);
    assert_eq!(stop.reason(), Some("recording metadata could not be stored: No space left on device"));

    assert_eq!(acme_invite(&mut h, "stalled-disk").codes(), vec![100]);
    let stalled = |out: &Out| -> Vec<u16> {
        out.responses.iter().filter(|r| r.call_id() == Some("stalled-disk")).map(|r| r.status.as_u16()).collect()
    };
    assert_eq!(stalled(&h.advance(Duration::from_millis(3900))), Vec::<u16>::new());
    let out = h.advance(Duration::from_millis(200));
    assert_eq!(stalled(&out), vec![503]);
    assert_eq!(out.stop().unwrap().reason(), Some("recording metadata not stored within 4000 ms"));
    assert_eq!(h.rec.active_recordings(), 0);
    assert_eq!(h.rec.counters().rejected_with(503), 2);
    assert_eq!(h.rec.counters().invites_rejected.get(&(503, "not_stored")), Some(&2));
    // The failed save answered at once (virtual time stood still), the
    // stalled one after the whole save timeout (4.1 s).
    let latency = h.rec.counters().invite_answer;
    assert_eq!((latency.count(), latency.counts[0], latency.counts[11]), (2, 1, 1), "{latency:?}");
}

#[test]
fn a_cancelled_fork_leg_leaves_the_other_recording() {
    let mut h = Harness::new();
    let near = "From: <sip:4062@cucm;x-nearend;x-refci=99;x-nearendaddr=4062;x-farendaddr=5550>;tag=n9";
    let far = "From: <sip:4062@cucm;x-farend;x-refci=99;x-nearendaddr=4062;x-farendaddr=5550>;tag=f9";
    let a = h.request_from(near, "INVITE", "near-9", 1, None, "", None, "");
    assert_eq!(h.send(&a).codes(), vec![100, 200]);
    h.held_saves = Some(Vec::new());
    let b = h.request_from(far, "INVITE", "far-9", 1, None, "", None, "");
    assert_eq!(h.send(&b).codes(), vec![100]);
    let out = h.send(&cancel_of(&b));
    let mut codes = out.codes();
    codes.sort();
    assert_eq!(codes, vec![200, 487]);
    assert!(out.stop().is_none(), "the near leg still records");
    assert!(out.media.iter().any(|m| matches!(m, MediaCommand::RemoveStream { .. })));
    assert_eq!(h.rec.active_recordings(), 1);
    assert_eq!(h.rec.active_legs(), 1);
}

/// When the disk falls behind, new calls are refused at once instead of
/// piling up more saves: answers waiting for their metadata are capped.
#[test]
fn too_many_answers_waiting_for_the_disk_refuse_new_calls() {
    let mut cfg = config();
    cfg.max_pending_answers = 2;
    let mut h = Harness::with(cfg, 100);
    h.held_saves = Some(Vec::new());
    assert_eq!(acme_invite(&mut h, "slow-1").codes(), vec![100]);
    assert_eq!(acme_invite(&mut h, "slow-2").codes(), vec![100]);
    let out = acme_invite(&mut h, "slow-3");
    assert_eq!(out.codes(), vec![100, 503]);
    assert_eq!(out.last().reason, "Storage too slow");
    assert!(out.started().is_none(), "nothing was queued for the refused call");
    // The disk catches up: both waiting calls are answered, new ones taken again.
    for (id, seq) in h.held_saves.replace(Vec::new()).unwrap() {
        h.rec.saved(h.now, id, seq, Ok(()));
    }
    assert_eq!(h.drain().codes(), vec![200, 200]);
    assert_eq!(acme_invite(&mut h, "slow-4").codes(), vec![100]);
    assert_eq!(h.rec.pending_answers(), 1);
}

/// A re-INVITE that moves the call to another codec (Webex and Teams
/// gateways go G.711 → Opus mid-call) updates the streams in place: same
/// recording, same ports, the new codec table with Opus's FEC asked for;
/// an UPDATE with an offer does the same.
#[test]
fn a_reinvite_or_update_switching_codec_updates_the_streams_in_place() {
    let mut h = Harness::new();
    let offer = |codecs: &str, maps: &str| {
        format!(
            "v=0\no=- 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP {codecs}\n{maps}a=sendonly\n"
        )
    };
    let g711 = offer("0", "");
    let req = h.request("INVITE", "sw-1", 1, None, "", Some("application/sdp"), &g711);
    let out = h.send(&req);
    assert_eq!(out.codes(), vec![100, 200]);
    assert!(matches!(&out.media[0], MediaCommand::Start { sample_rate: 8000, .. }));
    let tag = to_tag(out.last());
    let port = out.media.iter().find_map(|m| match m {
        MediaCommand::AddStream(s) => Some(s.port),
        _ => None,
    });
    let ack = h.request("ACK", "sw-1", 1, Some(&tag), "", None, "");
    h.send(&ack);

    let opus = offer("111 9", "a=rtpmap:111 opus/48000/2\na=fmtp:111 useinbandfec=1;stereo=1\n");
    let reinvite = h.request("INVITE", "sw-1", 2, Some(&tag), "", Some("application/sdp"), &opus);
    let out = h.send(&reinvite);
    assert_eq!(out.codes(), vec![100, 200]);
    let answer = String::from_utf8(out.last().body.clone()).unwrap();
    assert!(answer.contains("a=rtpmap:111 opus/48000/2"), "{answer}");
    assert!(answer.contains("a=fmtp:111 useinbandfec=1"), "{answer}");
    let update = out
        .media
        .iter()
        .find_map(|m| match m {
            MediaCommand::UpdateStream(s) => Some(s),
            _ => None,
        })
        .expect("stream updated");
    assert_eq!(update.codecs, vec![(111, media::Codec::Opus), (9, media::Codec::G722)]);
    assert_eq!(Some(update.port), port, "same ports: the recording goes on");
    assert!(!out.media.iter().any(|m| matches!(m, MediaCommand::Start { .. })), "no second recording");

    // An UPDATE with a new offer (RFC 3311) moves it on to G.722 alone, the same way.
    let g722 = offer("9", "a=rtpmap:9 G722/8000\n");
    let update_req = h.request("UPDATE", "sw-1", 3, Some(&tag), "", Some("application/sdp"), &g722);
    let out = h.send(&update_req);
    assert_eq!(out.codes(), vec![200]);
    let answer = String::from_utf8(out.last().body.clone()).unwrap();
    assert!(answer.contains("RTP/AVP 9") && answer.contains("a=rtpmap:9 G722/8000"), "{answer}");
    let update = out.media.iter().find_map(|m| match m {
        MediaCommand::UpdateStream(s) => Some(s),
        _ => None,
    });
    let update = update.expect("stream updated by UPDATE");
    assert_eq!(update.codecs, vec![(9, media::Codec::G722)]);
    assert_eq!(Some(update.port), port, "same ports after the UPDATE");
    assert!(!out.media.iter().any(|m| matches!(m, MediaCommand::Start { .. })), "no second recording");
}
