//! Transaction-layer behaviour on virtual time: retransmissions, ACK
//! matching, CANCEL, timeouts. No sockets: bytes in, bytes out.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sip_proto::{
    parse, ConnId, Endpoint, Event, HeaderAccess, Message, Output, Peer, Request, Response, StatusCode, TimerConfig,
    Transport, TxId,
};

fn peer() -> Peer {
    Peer::udp("127.0.0.1:5070".parse().unwrap())
}

fn invite(branch: &str) -> String {
    format!(
        "INVITE sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
         From: <sip:src@example.com>;tag=src1\r\nTo: <sip:srs@example.com>\r\nCall-ID: call-1\r\n\
         CSeq: 10 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

fn ack(branch: &str, cseq: u32) -> String {
    format!(
        "ACK sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch={branch}\r\n\
         From: <sip:src@example.com>;tag=src1\r\nTo: <sip:srs@example.com>;tag=srs1\r\nCall-ID: call-1\r\n\
         CSeq: {cseq} ACK\r\nContent-Length: 0\r\n\r\n"
    )
}

struct Drained {
    sent: Vec<(SocketAddr, Message)>,
    events: Vec<Event>,
}

fn drain(ep: &mut Endpoint) -> Drained {
    let mut d = Drained { sent: vec![], events: vec![] };
    while let Some(o) = ep.poll_output() {
        match o {
            Output::Transmit(t) => d.sent.push((t.dest, parse(&t.data).unwrap())),
            Output::Event(e) => d.events.push(e),
        }
    }
    d
}

fn statuses(d: &Drained) -> Vec<u16> {
    d.sent
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Response(r) => Some(r.status.as_u16()),
            _ => None,
        })
        .collect()
}

fn take_request(d: &Drained) -> (TxId, Request) {
    d.events
        .iter()
        .find_map(|e| match e {
            Event::Request { tx, request, .. } => Some((*tx, request.clone())),
            _ => None,
        })
        .expect("a request event")
}

fn advance(ep: &mut Endpoint, now: &mut Instant, until: Instant) -> Drained {
    let mut all = Drained { sent: vec![], events: vec![] };
    while let Some(t) = ep.poll_timeout() {
        if t > until {
            break;
        }
        *now = t;
        ep.handle_timeout(t);
        let d = drain(ep);
        all.sent.extend(d.sent);
        all.events.extend(d.events);
    }
    *now = until;
    all
}

#[test]
fn invite_gets_trying_and_retransmissions_are_absorbed() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    ep.handle_message(now, peer(), invite("z9hG4bK1").as_bytes());
    let d = drain(&mut ep);
    assert_eq!(statuses(&d), vec![100]);
    let (_tx, req) = take_request(&d);
    assert_eq!(req.call_id(), Some("call-1"));

    // Retransmitted INVITE: the 100 again, no second event for the TU.
    ep.handle_message(now, peer(), invite("z9hG4bK1").as_bytes());
    let d = drain(&mut ep);
    assert_eq!(statuses(&d), vec![100]);
    assert!(d.events.is_empty());
}

#[test]
fn ok_is_retransmitted_with_doubling_until_ack() {
    let t = TimerConfig::default();
    let mut ep = Endpoint::new(t);
    let mut now = Instant::now();
    let start = now;
    ep.handle_message(now, peer(), invite("z9hG4bK1").as_bytes());
    let (tx, req) = take_request(&drain(&mut ep));
    ep.respond(now, tx, Response::to_request(&req, StatusCode::OK, "OK", Some("srs1")));
    assert_eq!(statuses(&drain(&mut ep)), vec![200]);

    // 0.5 + 1 + 2 + 4 (capped at T2) ... first 4 retransmissions by 7.5 s.
    let d = advance(&mut ep, &mut now, start + Duration::from_millis(7_600));
    assert_eq!(statuses(&d), vec![200, 200, 200, 200]);

    // ACK with a new branch stops them and reaches the TU matched.
    ep.handle_message(now, peer(), ack("z9hG4bK2", 10).as_bytes());
    let d = drain(&mut ep);
    assert!(matches!(d.events.as_slice(), [Event::Ack { tx: Some(id), .. }] if *id == tx));
    let d = advance(&mut ep, &mut now, start + Duration::from_secs(40));
    assert!(statuses(&d).is_empty());
    assert!(d.events.is_empty(), "no AckTimeout after an ACK: {:?}", d.events);
    assert_eq!(ep.transaction_count(), (0, 0));
}

#[test]
fn missing_ack_times_out_after_64_t1() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let mut now = Instant::now();
    let start = now;
    ep.handle_message(now, peer(), invite("z9hG4bK1").as_bytes());
    let (tx, req) = take_request(&drain(&mut ep));
    ep.respond(now, tx, Response::to_request(&req, StatusCode::OK, "OK", Some("srs1")));
    drain(&mut ep);
    let d = advance(&mut ep, &mut now, start + Duration::from_millis(31_900));
    assert!(d.events.is_empty());
    let d = advance(&mut ep, &mut now, start + Duration::from_millis(32_100));
    assert!(matches!(d.events.as_slice(), [Event::AckTimeout { call_id, .. }] if call_id == "call-1"));
}

#[test]
fn error_final_is_retransmitted_until_ack_and_ack_is_absorbed() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let mut now = Instant::now();
    let start = now;
    ep.handle_message(now, peer(), invite("z9hG4bK1").as_bytes());
    let (tx, req) = take_request(&drain(&mut ep));
    ep.respond(now, tx, Response::to_request(&req, StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", Some("t")));
    assert_eq!(statuses(&drain(&mut ep)), vec![503]);
    let d = advance(&mut ep, &mut now, start + Duration::from_millis(1_600));
    assert_eq!(statuses(&d), vec![503, 503]);
    // ACK for a non-2xx reuses the INVITE branch and is absorbed.
    ep.handle_message(now, peer(), ack("z9hG4bK1", 10).as_bytes());
    let d = drain(&mut ep);
    assert!(d.events.is_empty());
    let d = advance(&mut ep, &mut now, start + Duration::from_secs(60));
    assert!(statuses(&d).is_empty());
    assert_eq!(ep.transaction_count(), (0, 0));
}

#[test]
fn cancel_of_pending_invite_gives_200_and_487() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    ep.handle_message(now, peer(), invite("z9hG4bKc").as_bytes());
    let (tx, _) = take_request(&drain(&mut ep));
    let cancel = invite("z9hG4bKc").replace("INVITE sip", "CANCEL sip").replace("10 INVITE", "10 CANCEL");
    ep.handle_message(now, peer(), cancel.as_bytes());
    let d = drain(&mut ep);
    assert_eq!(statuses(&d), vec![200, 487]);
    let cseqs: Vec<String> = d.sent.iter().map(|(_, m)| m.headers().get("CSeq").unwrap().to_owned()).collect();
    assert_eq!(cseqs, vec!["10 CANCEL", "10 INVITE"]);
    assert!(matches!(d.events.as_slice(), [Event::Cancelled { invite_tx }] if *invite_tx == tx));
    assert!(!ep.is_pending(tx));
}

#[test]
fn cancel_after_answer_has_no_effect_and_unknown_cancel_is_481() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    ep.handle_message(now, peer(), invite("z9hG4bKc").as_bytes());
    let (tx, req) = take_request(&drain(&mut ep));
    ep.respond(now, tx, Response::to_request(&req, StatusCode::OK, "OK", Some("x")));
    drain(&mut ep);
    let cancel = invite("z9hG4bKc").replace("INVITE sip", "CANCEL sip").replace("10 INVITE", "10 CANCEL");
    ep.handle_message(now, peer(), cancel.as_bytes());
    let d = drain(&mut ep);
    assert_eq!(statuses(&d), vec![200]);
    assert!(d.events.is_empty());
    let stray = cancel.replace("z9hG4bKc", "z9hG4bKzzz");
    ep.handle_message(now, peer(), stray.as_bytes());
    assert_eq!(statuses(&drain(&mut ep)), vec![481]);
}

#[test]
fn non_invite_retransmission_gets_the_same_final() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    let bye = invite("z9hG4bKb").replace("INVITE sip", "BYE sip").replace("10 INVITE", "11 BYE");
    ep.handle_message(now, peer(), bye.as_bytes());
    let d = drain(&mut ep);
    assert!(statuses(&d).is_empty(), "no 100 for non-INVITE");
    let (tx, req) = take_request(&d);
    // A retransmission before the TU answered is absorbed silently.
    ep.handle_message(now, peer(), bye.as_bytes());
    assert!(drain(&mut ep).sent.is_empty());
    ep.respond(now, tx, Response::to_request(&req, StatusCode::OK, "OK", None));
    assert_eq!(statuses(&drain(&mut ep)), vec![200]);
    ep.handle_message(now, peer(), bye.as_bytes());
    let d = drain(&mut ep);
    assert_eq!(statuses(&d), vec![200]);
    assert!(d.events.is_empty());
}

#[test]
fn malformed_requests_get_400_with_reason() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    let no_callid = invite("z9hG4bK1").replace("Call-ID: call-1\r\n", "");
    ep.handle_message(now, peer(), no_callid.as_bytes());
    let d = drain(&mut ep);
    let Message::Response(r) = &d.sent[0].1 else { panic!() };
    assert_eq!((r.status.as_u16(), r.reason.as_str()), (400, "Missing Call-ID"));

    let truncated = invite("z9hG4bK1").replace("Content-Length: 0", "Content-Length: 500");
    ep.handle_message(now, peer(), truncated.as_bytes());
    let d = drain(&mut ep);
    let Message::Response(r) = &d.sent[0].1 else { panic!() };
    assert_eq!(r.status.as_u16(), 400);
    assert!(r.reason.starts_with("Body shorter"));

    // Regression (SIPp strips the indentation of folded lines): a line that
    // is no header gets 400, not silence, when the rest says where to answer.
    let unfolded = invite("z9hG4bK2").replace("Call-ID: call-1\r\n", "Call-ID: call-1\r\n<sip:orphan@example.com>\r\n");
    ep.handle_message(now, peer(), unfolded.as_bytes());
    let d = drain(&mut ep);
    let Message::Response(r) = &d.sent[0].1 else { panic!("no answer: {:?}", d.events) };
    assert_eq!((r.status.as_u16(), r.reason.as_str()), (400, "Malformed header line"));

    // Garbage cannot be answered; it is reported, not fatal.
    ep.handle_message(now, peer(), b"\x00\x01garbage\r\n\r\n");
    let d = drain(&mut ep);
    assert!(d.sent.is_empty());
    assert!(matches!(d.events.as_slice(), [Event::Malformed { answered: None, .. }]));
}

#[test]
fn responses_follow_via_rport_and_received() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    let src: SocketAddr = "127.0.0.9:40000".parse().unwrap();
    // No rport: source IP, Via port.
    ep.handle_message(now, Peer::udp(src), invite("z9hG4bK1").as_bytes());
    let d = drain(&mut ep);
    assert_eq!(d.sent[0].0, "127.0.0.9:5070".parse().unwrap());
    let via = d.sent[0].1.headers().get("Via").unwrap().to_owned();
    assert!(via.contains("received=127.0.0.9"), "{via}");
    // rport: straight back to the source port, rport filled in.
    let with_rport = invite("z9hG4bK2").replace("5070;branch", "5070;rport;branch");
    ep.handle_message(now, Peer::udp(src), with_rport.as_bytes());
    let d = drain(&mut ep);
    assert_eq!(d.sent[0].0, src);
    assert!(d.sent[0].1.headers().get("Via").unwrap().contains("rport=40000"));
    // TCP: the response rides the connection; should it close, a new one
    // goes to the sent-by port (§18.2.2), not the ephemeral source port.
    let tcp = Peer { transport: Transport::Tcp, addr: src, conn: Some(ConnId(3)) };
    let over_tcp = invite("z9hG4bK3").replace("UDP 127.0.0.1:5070;branch", "TCP 127.0.0.1:5070;rport;branch");
    ep.handle_message(now, tcp, over_tcp.as_bytes());
    let d = drain(&mut ep);
    assert_eq!(d.sent[0].0, "127.0.0.9:5070".parse().unwrap());
    let no_port = invite("z9hG4bK4").replace("UDP 127.0.0.1:5070;branch", "TCP client.invalid;branch");
    ep.handle_message(now, tcp, no_port.as_bytes());
    assert_eq!(drain(&mut ep).sent[0].0, "127.0.0.9:5060".parse().unwrap());
}

#[test]
fn reliable_transport_does_not_retransmit() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let mut now = Instant::now();
    let start = now;
    let tcp = Peer { transport: Transport::Tcp, addr: "127.0.0.1:5070".parse().unwrap(), conn: Some(ConnId(7)) };
    ep.handle_message(now, tcp, invite("z9hG4bK1").replace("UDP", "TCP").as_bytes());
    let (tx, req) = take_request(&drain(&mut ep));
    ep.respond(now, tx, Response::to_request(&req, StatusCode::OK, "OK", Some("a")));
    drain(&mut ep);
    let d = advance(&mut ep, &mut now, start + Duration::from_secs(10));
    assert!(statuses(&d).is_empty());
}

#[test]
fn client_transaction_retransmits_and_times_out() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let mut now = Instant::now();
    let start = now;
    let branch = ep.new_branch();
    let bye = invite(&branch).replace("INVITE sip", "BYE sip").replace("10 INVITE", "11 BYE");
    let Message::Request(req) = parse(bye.as_bytes()).unwrap() else { panic!() };
    let id = ep.send_request(now, peer(), req).unwrap();
    assert_eq!(drain(&mut ep).sent.len(), 1);
    let d = advance(&mut ep, &mut now, start + Duration::from_millis(31_000));
    // E: 0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5 ... (capped at T2=4s)
    assert_eq!(d.sent.len(), 9);
    let d = advance(&mut ep, &mut now, start + Duration::from_millis(32_500));
    assert!(d.events.iter().any(|e| matches!(e, Event::RequestTimeout { tx } if *tx == id)));
}

#[test]
fn client_transaction_delivers_final_response() {
    let mut ep = Endpoint::new(TimerConfig::default());
    let now = Instant::now();
    let branch = ep.new_branch();
    let text = invite(&branch);
    let Message::Request(req) = parse(text.as_bytes()).unwrap() else { panic!() };
    let id = ep.send_request(now, peer(), req.clone()).unwrap();
    drain(&mut ep);
    let resp = Response::to_request(&req, StatusCode::NOT_ACCEPTABLE_HERE, "Not Acceptable Here", Some("z"));
    ep.handle_message(now, peer(), &resp.to_bytes());
    let d = drain(&mut ep);
    // Non-2xx to INVITE: the transaction ACKs by itself.
    assert!(matches!(&d.sent[0].1, Message::Request(r) if r.method == sip_proto::Method::Ack));
    assert!(matches!(&d.events[0], Event::Response { tx, response } if *tx == id && response.status.as_u16() == 488));
}
