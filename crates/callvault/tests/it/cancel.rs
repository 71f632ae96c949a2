//! CANCEL over real sockets. A new call is answered only once its
//! recording's metadata is on disk, so a CANCEL sent right behind its
//! INVITE finds it pending: 200 for the CANCEL, 487 for the INVITE
//! (RFC 3261 §9.2), and the recording is closed as `failed` with the
//! reason, never left active.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use sip_proto::{frame, parse, Framing, Message, Response};

use crate::harness::Node;

const SDP: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 9 RTP/AVP 0\r\na=label:1\r\na=sendonly\r\nm=audio 11 RTP/AVP 0\r\na=label:2\r\na=sendonly\r\n";

/// An INVITE and its CANCEL (same branch, RFC 3261 §9.1), and the ACK for the 487.
fn invite_cancel_ack(transport: &str, call_id: &str) -> [String; 3] {
    let head = |method: &str, to: &str| {
        format!(
            "{method} sip:srs@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/{transport} 127.0.0.1:9;rport;branch=z9hG4bK{call_id}\r\n\
             From: <sip:sbc@127.0.0.1>;tag=f{call_id}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n\
             Max-Forwards: 70\r\n"
        )
    };
    let invite = format!(
        "{}Contact: <sip:sbc@127.0.0.1:9>;+sip.src\r\nRequire: siprec\r\nContent-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{SDP}",
        head("INVITE", "<sip:srs@127.0.0.1>"),
        SDP.len()
    );
    let cancel = format!("{}Content-Length: 0\r\n\r\n", head("CANCEL", "<sip:srs@127.0.0.1>"));
    [invite, cancel, head("ACK", "TO")]
}

fn ack(template: &str, terminated: &Response) -> String {
    format!("{template}Content-Length: 0\r\n\r\n").replace("TO", terminated.headers.get("To").unwrap())
}

/// Collects responses until a 487 has come (or a timeout).
fn until_487(mut next: impl FnMut() -> Option<Response>) -> Vec<Response> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut got = Vec::new();
    while Instant::now() < deadline && !got.iter().any(|r: &Response| r.status.as_u16() == 487) {
        got.extend(next());
    }
    got
}

fn check(node: &Node, call_id: &str, responses: &[Response]) {
    let summary: Vec<String> =
        responses.iter().map(|r| format!("{} {}", r.status.as_u16(), r.headers.get("CSeq").unwrap_or(""))).collect();
    assert!(summary.contains(&"200 1 CANCEL".to_owned()), "{summary:?}");
    assert!(summary.contains(&"487 1 INVITE".to_owned()), "{summary:?}");
    assert!(!summary.contains(&"200 1 INVITE".to_owned()), "answered although cancelled: {summary:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let rec = loop {
        let found = node.recordings("").into_iter().find(|r| r["call_ids"][0] == call_id && r["state"] != "active");
        if let Some(r) = found {
            break r;
        }
        assert!(Instant::now() < deadline, "recording of {call_id} not closed; log:\n{}", node.log());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rec["state"], "failed");
    let last = rec["state_history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["reason"], "cancelled by the recording source before answer");
}

#[test]
fn cancel_right_behind_the_invite_gets_487_over_udp_and_tcp() {
    let node = Node::start("cancel");

    // UDP: two datagrams back to back.
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let [invite, cancel, ack_template] = invite_cancel_ack("UDP", "cancel-udp");
    sock.send_to(invite.as_bytes(), node.sip_udp).unwrap();
    sock.send_to(cancel.as_bytes(), node.sip_udp).unwrap();
    let mut buf = vec![0u8; 65_535];
    let got = until_487(|| match sock.recv_from(&mut buf) {
        Ok((n, _)) => match parse(&buf[..n]) {
            Ok(Message::Response(r)) => Some(r),
            _ => None,
        },
        Err(_) => None,
    });
    check(&node, "cancel-udp", &got);
    let terminated = got.iter().find(|r| r.status.as_u16() == 487).unwrap();
    sock.send_to(ack(&ack_template, terminated).as_bytes(), node.sip_udp).unwrap();

    // TCP: both requests in one write, as a pipelining client sends them.
    let mut tcp = TcpStream::connect(node.sip_tcp).unwrap();
    tcp.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let [invite, cancel, ack_template] = invite_cancel_ack("TCP", "cancel-tcp");
    tcp.write_all(format!("{invite}{cancel}").as_bytes()).unwrap();
    let mut stream = Vec::new();
    let got = until_487(|| {
        if let Framing::Message(n) = frame(&stream, 1 << 20) {
            let msg: Vec<u8> = stream.drain(..n).collect();
            return match parse(&msg) {
                Ok(Message::Response(r)) => Some(r),
                _ => None,
            };
        }
        let mut chunk = [0u8; 4096];
        if let Ok(n) = tcp.read(&mut chunk) {
            stream.extend_from_slice(&chunk[..n]);
        }
        None
    });
    check(&node, "cancel-tcp", &got);
    let terminated = got.iter().find(|r| r.status.as_u16() == 487).unwrap();
    tcp.write_all(ack(&ack_template, terminated).as_bytes()).unwrap();

    assert_eq!(node.metric("callvault_invites_cancelled_total"), 2.0);
    assert_eq!(node.metric("callvault_invites_accepted_total"), 0.0);
    assert_eq!(node.metric("callvault_sip_byes_sent_total"), 0.0, "no BYE for a call never answered");
    assert_eq!(node.get("/api/v1/status").1["active_recordings"], 0);
}
