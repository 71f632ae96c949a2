//! Property tests: the parser never panics, and what we serialize parses back.

use proptest::prelude::*;
use sip_proto::{frame, parse, Endpoint, HeaderAccess, Message, Method, Peer, Request, TimerConfig};

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9.!%*_+`'~-]{0,12}"
}

fn header_value() -> impl Strategy<Value = String> {
    "[ -~]{0,40}".prop_map(|s| s.trim().to_owned())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn parser_never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse(&data);
        let _ = frame(&data, 4096);
    }

    #[test]
    fn parser_never_panics_on_sip_like_text(
        lines in proptest::collection::vec("[ -~]{0,60}", 0..12),
        start in prop_oneof![Just("INVITE sip:a@b SIP/2.0".to_owned()), Just("SIP/2.0 200 OK".to_owned()), Just("BYE x SIP/2.0".to_owned()), "[ -~]{0,30}"],
        sep in prop_oneof![Just("\r\n"), Just("\n")],
    ) {
        let mut text = start;
        for l in &lines { text.push_str(sep); text.push_str(l); }
        text.push_str(sep); text.push_str(sep);
        if let Ok(Message::Request(r)) = parse(text.as_bytes()) {
            let _ = r.essentials();
            let _ = r.content_type();
            let _ = r.contact();
        }
    }

    #[test]
    fn endpoint_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400), prefix in prop_oneof![
        Just(&b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\n"[..]),
        Just(&b"CANCEL sip:a@b SIP/2.0\r\n"[..]),
        Just(&b"SIP/2.0 200 OK\r\nCSeq: 1 BYE\r\n"[..]),
        Just(&b""[..]),
    ]) {
        let mut ep = Endpoint::new(TimerConfig::default());
        let mut msg = prefix.to_vec();
        msg.extend_from_slice(&data);
        ep.handle_message(std::time::Instant::now(), Peer::udp("127.0.0.1:5060".parse().unwrap()), &msg);
        while ep.poll_output().is_some() {}
    }

    #[test]
    fn serialized_requests_parse_back(
        user in "[a-z0-9+]{1,10}",
        headers in proptest::collection::vec((token(), header_value()), 0..8),
        body in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut req = Request::new(Method::Options, format!("sip:{user}@example.com"));
        req.headers.push("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc");
        req.headers.push("Call-ID", "abc@host");
        for (n, v) in &headers {
            // Compact forms and Content-Length are exercised elsewhere.
            if n.len() > 1 && !n.eq_ignore_ascii_case("content-length") { req.headers.push(n.clone(), v.clone()); }
        }
        req.body = body.clone();
        let Message::Request(back) = parse(&req.to_bytes()).unwrap() else { panic!("not a request") };
        prop_assert_eq!(&back.method, &Method::Options);
        prop_assert_eq!(&back.body, &body);
        prop_assert_eq!(back.call_id(), Some("abc@host"));
        for (n, v) in &headers {
            if n.len() > 1 && !n.eq_ignore_ascii_case("content-length") && !n.eq_ignore_ascii_case("call-id") && !n.eq_ignore_ascii_case("via") {
                prop_assert!(back.headers.get_all(n).any(|x| x == v));
            }
        }
    }
}
