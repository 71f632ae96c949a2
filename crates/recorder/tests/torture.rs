//! Messages real platforms and RFC 4475 send, each a fixture with the
//! answer it must get. `fixtures/rfc4475/` holds the RFC's torture
//! messages under their RFC names; `fixtures/liberal/` our own cases where
//! a message breaks a rule but its meaning is clear (named after what they
//! are). The recorder core is driven without sockets, over UDP; the TCP
//! framing of the same inputs is tested in the `callvault` crate.

use std::time::Instant;

use model::NodeId;
use recorder::{BookkeepingAllocator, Now, Output, Recorder, RecorderConfig};
use sip_proto::{parse, HeaderAccess, Message, Peer, Response};
use time::OffsetDateTime;

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn recorder() -> Recorder {
    let mut c = RecorderConfig::new(NodeId("torture".into()));
    c.fallback_ip = "127.0.0.1".parse().unwrap();
    c.sip_udp = Some("127.0.0.1:5060".parse().unwrap());
    Recorder::new(c, Box::new(BookkeepingAllocator::new(30000, 100)))
}

/// Feeds `data` to `rec` over UDP (metadata saves confirmed at once):
/// the responses sent, and whether a recording stopped.
fn feed(rec: &mut Recorder, now: Now, data: &[u8]) -> (Vec<Response>, bool) {
    rec.handle_sip(now, Peer::udp("127.0.0.1:5070".parse().unwrap()), data);
    let (mut out, mut stopped) = (Vec::new(), false);
    while let Some(o) = rec.poll_output() {
        match o {
            Output::Transmit(t) => {
                if let Ok(Message::Response(r)) = parse(&t.data) {
                    out.push(r);
                }
            }
            Output::Recording { event, seq } => rec.saved(now, event.meta().id, seq, Ok(())),
            Output::Media(m) => stopped |= matches!(m, recorder::MediaCommand::Stop { .. }),
        }
    }
    (out, stopped)
}

/// The responses a fresh recorder sends to `data`.
fn answers(data: &[u8]) -> Vec<Response> {
    feed(&mut recorder(), Now { mono: Instant::now(), wall: OffsetDateTime::now_utc() }, data).0
}

fn codes(data: &[u8]) -> Vec<u16> {
    answers(data).iter().map(|r| r.status.as_u16()).collect()
}

/// Every fixture gets the codes listed with it; all mismatches reported at once.
fn assert_answers(cases: &[(&str, &[u16])]) {
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|(file, want)| {
            let got = codes(&fixture(file));
            (got != *want).then(|| format!("{file}: got {got:?}, want {want:?}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn rfc4475_messages_get_the_answer_the_rfc_expects() {
    let cases: &[(&str, &[u16])] = &[
        // 3.1.1.1: valid; its To tag names a dialog this recorder never had.
        ("rfc4475/wsinv.sip", &[100, 481]),
        // 3.1.2.7: LWS inside the Request-URI.
        ("rfc4475/lwsruri.sip", &[400]),
        // 3.1.2.4 (scalar02): CSeq past 2^32 (and Max-Forwards 300, an
        // Expires of 101 digits).
        ("rfc4475/scalar02.sip", &[400]),
        // 3.1.2.1: empty Via and parameter list items.
        ("rfc4475/badinv01.sip", &[400]),
        // 3.1.2.6: the Request-URI in angle brackets (see docs/phone-platforms.md).
        ("rfc4475/ltgtruri.sip", &[400]),
        // 3.3.5: an extension the recorder does not support in Require.
        ("rfc4475/bext01.sip", &[420]),
        // 3.3.2: a Request-URI scheme the recorder does not know.
        ("rfc4475/unkscm.sip", &[416]),
        // 3.1.2.17: OPTIONS with INVITE in CSeq (only BYE/ACK are tolerated).
        ("rfc4475/mismatch01.sip", &[400]),
        // 3.1.1.6: LWS (none, here) between display name and `<`: valid.
        ("rfc4475/lwsdisp.sip", &[200]),
        // 3.1.1.9: a `;` and an escaped `@` in the Request-URI user part: valid.
        ("rfc4475/semiuri.sip", &[200]),
        // 3.1.1.10: Vias with transports we do not speak: valid.
        ("rfc4475/transports.sip", &[200]),
        // 3.3.11: Max-Forwards 0 at its destination: processed.
        ("rfc4475/zeromf.sip", &[200]),
        // 3.3.1: To, From and Call-ID missing.
        ("rfc4475/insuf.sip", &[400]),
        // 3.3.9: two Content-Length values.
        ("rfc4475/mcl01.sip", &[400]),
        // 3.1.1.5: `%` is no escape in a method: an unknown method.
        ("rfc4475/esc02.sip", &[501]),
        // 3.1.2.16: SIP/7.0.
        ("rfc4475/badvers.sip", &[505]),
        // 3.1.2.8: several SP between Request-Line elements.
        ("rfc4475/lwsstart.sip", &[400]),
        // 3.1.2.9: SP after the version at the end of the Request-Line.
        ("rfc4475/trws.sip", &[400]),
        // 3.3.3: a known but atypical scheme the recorder does not serve.
        ("rfc4475/novelsc.sip", &[416]),
        // 3.3.6: a body type the recorder does not understand.
        ("rfc4475/invut.sip", &[100, 415]),
        // 3.1.2.19: a response with an overlarge code: no answer, no harm.
        ("rfc4475/bigcode.sip", &[]),
        // 3.1.2.2: Content-Length larger than the datagram.
        ("rfc4475/clerr.sip", &[400]),
        // 3.1.2.11: headers in the Request-URI.
        ("rfc4475/escruri.sip", &[100, 400]),
        // 3.1.1.3: escaped characters in URIs and parameters: valid, recorded.
        ("rfc4475/esc01.sip", &[100, 200]),
        // 3.1.2.10: a Date in a non-GMT zone: the recorder does not use Date; recorded.
        ("rfc4475/baddate.sip", &[100, 200]),
        // 3.1.2.12: spaces inside `< addr-spec >`: meaning clear, answered (liberal, as the RFC allows).
        ("rfc4475/badaspec.sip", &[200]),
        // 3.1.2.13: unquoted display names with commas: meaning clear, answered (liberal).
        ("rfc4475/baddn.sip", &[200]),
        // 3.1.2.18 (badbranch): `z9hG4bK` with nothing after it: handled as an RFC 2543 transaction.
        ("rfc4475/badbranch.sip", &[200]),
        // 3.3.13: a response through a broadcast Via, to a request we never sent: ignored.
        ("rfc4475/bcast.sip", &[]),
        // 3.3.14, 3.3.15, 3.1.1.4: REGISTERs (valid); the recorder is no registrar.
        ("rfc4475/cparam01.sip", &[405]),
        ("rfc4475/cparam02.sip", &[405]),
        ("rfc4475/escnull.sip", &[405]),
        // 3.1.1.12: two requests in one datagram: the first is answered, the rest ignored.
        ("rfc4475/dblreq.sip", &[405]),
        // 3.1.1.11 (longreq): a long, valid INVITE (33 Vias in every header-name spelling): recorded.
        ("rfc4475/longreq.sip", &[100, 200]),
        // 3.4.1: an RFC 2543 INVITE (no branch, no Content-Length over UDP): recorded.
        ("rfc4475/inv2543.sip", &[100, 200]),
        // 3.1.2.18: an unknown method with a CSeq naming INVITE (400 is acceptable, RFC says).
        ("rfc4475/mismatch02.sip", &[400]),
        // 3.1.2.5: an unterminated quoted display name.
        ("rfc4475/quotbal.sip", &[400]),
        // 3.3.10 (multi01): two Call-IDs, CSeqs, Tos and Froms.
        ("rfc4475/multi01.sip", &[400]),
        // 3.3.12 (sdp01): Accept excludes application/sdp, the only answer we make.
        ("rfc4475/sdp01.sip", &[100, 406]),
        // 3.1.1.13 (noreason), 3.1.2.4 (scalarlg): responses to nothing we sent: ignored.
        ("rfc4475/noreason.sip", &[]),
        ("rfc4475/scalarlg.sip", &[]),
        // 3.3.7, 3.1.2.15 (regbadct), 3.3.8 (regescrt), 3.3.4 (unksm2): REGISTERs, 405 here.
        ("rfc4475/regaut01.sip", &[405]),
        ("rfc4475/regbadct.sip", &[405]),
        ("rfc4475/regescrt.sip", &[405]),
        ("rfc4475/unksm2.sip", &[405]),
        // 3.1.2.3 (ncl): a negative Content-Length.
        ("rfc4475/ncl.sip", &[400]),
        // 3.1.1.2 (intmeth): every character a token may hold in method,
        // URI, Via, tags and an extension header, NUL/BEL/DEL as quoted
        // pairs and UTF-8 in a parameter: valid, an unknown method.
        ("rfc4475/intmeth.sip", &[501]),
        // 3.1.1.12 (unreason): a response whose reason phrase is UTF-8, to
        // nothing we sent: parsed, ignored.
        ("rfc4475/unreason.sip", &[]),
        // 3.1.1.11 (mpart01): a MESSAGE whose multipart body has a binary
        // part with NUL and CRLF bytes (ours, not the RFC's signature
        // bytes; the framing is the same): framed right, then 405.
        ("rfc4475/mpart01.sip", &[405]),
    ];
    assert_answers(cases);
}

#[test]
fn bext01_names_the_unsupported_extension() {
    let r = answers(&fixture("rfc4475/bext01.sip"));
    assert_eq!(r[0].headers.get("Unsupported"), Some("nothingSupportedHere"));
}

#[test]
fn liberal_cases_are_recorded_not_refused() {
    let cases: &[(&str, &[u16])] = &[
        ("liberal/sdp_with_a_stray_boundary_line.sip", &[100, 200]),
        ("liberal/folded_compact_and_mixed_case_headers.sip", &[100, 200]),
        // Not liberal: a Content-Length past 2^64 cannot mean anything.
        ("liberal/content_length_2_to_the_64.sip", &[400]),
    ];
    assert_answers(cases);
}

/// A call set up with the stray-line SDP, then acknowledged and ended by an
/// ACK and a BYE whose CSeq says INVITE: the request line decides, the
/// recording ends normally, and each tolerated case is counted.
#[test]
fn bye_and_ack_carrying_invite_in_cseq_act_on_the_request_line() {
    use recorder::reasons::Tolerated;
    let mut rec = recorder();
    let now = Now { mono: Instant::now(), wall: OffsetDateTime::now_utc() };
    let run = |rec: &mut Recorder, data: &[u8]| feed(rec, now, data);
    let (out, _) = run(&mut rec, &fixture("liberal/sdp_with_a_stray_boundary_line.sip"));
    let tag = out.last().unwrap().to().unwrap().tag().unwrap().to_owned();
    let with_tag = |f: &str| String::from_utf8(fixture(f)).unwrap().replace("{to_tag}", &tag).into_bytes();
    let (out, _) = run(&mut rec, &with_tag("liberal/ack_with_invite_in_cseq.sip"));
    assert!(out.is_empty(), "an ACK is never answered");
    let (out, stopped) = run(&mut rec, &with_tag("liberal/bye_with_invite_in_cseq.sip"));
    assert_eq!(out.iter().map(|r| r.status.as_u16()).collect::<Vec<_>>(), vec![200]);
    assert!(stopped, "the BYE ended the recording");
    let c = rec.counters();
    assert_eq!(c.tolerated.get(&Tolerated::CSeqMethodMismatch), Some(&2));
    assert_eq!(c.tolerated.get(&Tolerated::SdpStrayLine), Some(&1));
    assert_eq!(c.ended_in(model::RecordingState::Completed), 1, "{c:?}");
}
