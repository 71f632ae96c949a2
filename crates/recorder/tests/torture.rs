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

/// `fixtures/rfc4475/answers.txt`: each message's path and expected codes.
fn rfc4475_answers(table: &str) -> Vec<(String, Vec<u16>)> {
    table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let mut words = l.split_whitespace();
            let file = format!("rfc4475/{}", words.next().unwrap());
            (file, words.filter(|w| *w != "-").map(|w| w.parse().unwrap()).collect())
        })
        .collect()
}

#[test]
fn rfc4475_messages_get_the_answer_the_rfc_expects() {
    let table = String::from_utf8(fixture("rfc4475/answers.txt")).unwrap();
    let cases = rfc4475_answers(&table);
    assert_eq!(cases.len(), 49, "every message of RFC 4475 has its answer");
    let cases: Vec<(&str, &[u16])> = cases.iter().map(|(f, c)| (f.as_str(), c.as_slice())).collect();
    assert_answers(&cases);
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
