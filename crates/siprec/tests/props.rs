//! Property tests: body, SDP and metadata parsers never panic.

use proptest::prelude::*;
use sip_proto::MediaType;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn multipart_never_panics(body in proptest::collection::vec(any::<u8>(), 0..400), boundary in "[a-z0-9]{1,6}") {
        let ct = MediaType::parse(&format!("multipart/mixed;boundary={boundary}")).unwrap();
        let _ = siprec::multipart::split(&ct, &body);
        let mut framed = format!("--{boundary}\r\nContent-Type: application/sdp\r\n\r\n").into_bytes();
        framed.extend_from_slice(&body);
        let _ = siprec::classify_body(Some(&ct), &framed);
    }

    #[test]
    fn sdp_never_panics(lines in proptest::collection::vec("[a-z]=[ -~]{0,40}", 0..15)) {
        let text = format!("v=0\r\n{}\r\n", lines.join("\r\n"));
        if let Ok(sd) = siprec::sdp::parse(text.as_bytes()) {
            let neg = siprec::sdp::negotiate(&sd, &|_| true);
            let ports: Vec<u16> = neg.iter().map(|_| 4000).collect();
            let local = siprec::sdp::LocalSdp { addr: "127.0.0.1".parse().unwrap(), session_id: 1, version: 1 };
            let answer = siprec::sdp::build_answer(&sd, &neg, &ports, &local);
            prop_assert!(siprec::sdp::parse(&answer).is_ok());
        }
    }

    #[test]
    fn metadata_never_panics(
        elements in proptest::collection::vec(
            ("(participant|stream|session|participantstreamassoc|send|recv|nameID|label|datamode|extensiondata|aor|id)",
             "[a-z_]{0,10}", "[ -;=?-~]{0,12}"), 0..12),
    ) {
        let mut xml = String::from("<recording xmlns='urn:ietf:params:xml:ns:recording:1'>");
        for (name, attr, text) in &elements {
            if attr.is_empty() { xml.push_str(&format!("<{name}>{text}</{name}>")); }
            else { xml.push_str(&format!("<{name} {attr}=\"{text}\">{text}</{name}>")); }
        }
        xml.push_str("</recording>");
        if let Ok(md) = siprec::metadata::parse(xml.as_bytes()) {
            let mut base = md.clone();
            base.apply_update(md);
            let _ = base.sender_of_label("1");
            let _ = siprec::metadata::calling_participant(&base);
        }
    }

    #[test]
    fn metadata_never_panics_on_bytes(data in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = siprec::metadata::parse(&data);
    }
}
