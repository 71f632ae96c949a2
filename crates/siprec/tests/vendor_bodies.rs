//! Whole recording-INVITE bodies in each vendor's dialect: multipart split,
//! SDP labels, participants and who sends which labelled stream.

use sip_proto::MediaType;
use siprec::metadata::{self, DataMode, Schema};
use siprec::{classify_body, sdp};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

fn split(ct: &str, name: &str) -> (sdp::SessionDescription, metadata::Metadata) {
    let body = classify_body(Some(&MediaType::parse(ct).unwrap()), &fixture(name)).unwrap();
    let sd = sdp::parse(&body.sdp.expect("sdp part")).unwrap();
    let md = metadata::parse(&body.metadata.expect("metadata part")).unwrap();
    (sd, md)
}

fn sender_aor(md: &metadata::Metadata, label: &str) -> Option<String> {
    md.sender_of_label(label).and_then(|p| p.aor.clone())
}

#[test]
fn rfc7865_complete_document() {
    let md = metadata::parse(&fixture("rfc7865-complete.xml")).unwrap();
    assert_eq!(md.schema, Schema::Rfc7865);
    assert_eq!(md.data_mode, DataMode::Complete);
    assert_eq!(md.participants.len(), 2);
    assert_eq!(md.participants[0].name.as_deref(), Some("Bob"));
    assert_eq!(md.sessions[0].group_ref.as_deref(), Some("7+OTCyoxTmqmqyA/1weDAg=="));
    assert_eq!(
        md.sessions[0].sip_session_ids[0],
        "ab30317f1a784dc48ff824d0d3715d86; remote=47755a9de7794ba387653f2099600ef2"
    );
    assert_eq!(sender_aor(&md, "97").as_deref(), Some("sip:bob@biloxi.com"));
    assert_eq!(sender_aor(&md, "96").as_deref(), Some("sip:+15550100@atlanta.com;user=phone"));
    assert_eq!(md.receivers_of_label("96")[0].name.as_deref(), Some("Bob"));
    // Vendor/standard extensions are kept verbatim with their parent.
    let ext: Vec<_> = md.extensions.iter().map(|e| (e.parent_kind.as_str(), e.xml.as_str())).collect();
    assert!(ext.iter().any(|(k, x)| *k == "group" && x.contains("<supervisor>sip:alice@atlanta.com</supervisor>")));
    assert!(ext.iter().any(|(k, x)| *k == "session" && x.starts_with("<mydata xmlns='http://example.com/my'>")));
}

#[test]
fn rfc7865_partial_update_adds_participant_and_keeps_history() {
    let mut md = metadata::parse(&fixture("rfc7865-complete.xml")).unwrap();
    let update = metadata::parse(&fixture("rfc7865-partial.xml")).unwrap();
    assert_eq!(update.data_mode, DataMode::Partial);
    md.apply_update(update);
    assert_eq!(md.participants.len(), 3);
    let bob = md.participants.iter().find(|p| p.name.as_deref() == Some("Bob")).unwrap();
    assert_eq!(bob.disassociate_time.as_deref(), Some("2010-12-16T23:45:00Z"));
    assert_eq!(bob.aor.as_deref(), Some("sip:bob@biloxi.com"), "partial update must not erase fields");
    // Carol now sends the stream Bob sent; the sender lookup finds one of them.
    let carol = md.participants.iter().find(|p| p.name.as_deref() == Some("Carol")).unwrap();
    assert_eq!(carol.send, vec!["i1Pz3to5hGk8fuXl+PbwCw==".to_owned()]);
}

#[test]
fn acme_draft_dialect() {
    let (sd, md) = split("multipart/mixed;boundary=unique-boundary-1", "acme-draft.body");
    assert_eq!(md.schema, Schema::Draft);
    assert_eq!(sd.streams.iter().map(|s| s.label.clone().unwrap()).collect::<Vec<_>>(), vec!["16777227", "16777228"]);
    assert_eq!(sender_aor(&md, "16777227").as_deref(), Some("sip:9000@192.0.2.102"));
    assert_eq!(sender_aor(&md, "16777228").as_deref(), Some("sip:1002@192.0.2.10"));
    assert_eq!(metadata::calling_participant(&md).and_then(|p| p.name.as_deref()), Some("1002"));
    assert_eq!(md.participants[0].sessions, vec!["S1sessionAcme==".to_owned()]);
}

#[test]
fn avaya_dialect_with_empty_stream_id() {
    let (sd, md) = split("Multipart/Mixed; boundary=\"foobar\"", "avaya-sbce.body");
    assert_eq!(sd.streams.len(), 1);
    assert_eq!(md.data_mode, DataMode::Complete);
    assert_eq!(sender_aor(&md, "10").as_deref(), Some("sip:13035381001@192.0.2.65"));
    assert_eq!(sender_aor(&md, "20"), None, "empty stream_id matches nobody");
    assert_eq!(md.participants.len(), 2);
}

#[test]
fn broadworks_legacy_schema() {
    let (sd, md) = split("multipart/mixed;boundary=UniqueBroadWorksBoundary", "broadworks.body");
    assert_eq!(md.schema, Schema::BroadWorks);
    assert_eq!(sd.streams[0].label.as_deref(), Some("1"));
    assert_eq!(sd.streams[0].direction, sdp::Direction::SendRecv, "BroadWorks omits the direction");
    assert_eq!(md.participants.len(), 2);
    assert_eq!(md.participants[0].aor.as_deref(), Some("sip:8638254725"));
    assert_eq!(sender_aor(&md, "1").as_deref(), Some("sip:8638254725"));
    assert_eq!(md.streams[0].mode.as_deref(), Some("mixed"));
    assert_eq!(md.direction_hint(), Some("inbound"));
    assert_eq!(
        metadata::calling_participant(&md).and_then(|p| p.aor.as_deref()),
        Some("sip:+19015783200@broadworks.example;user=phone")
    );
    assert_eq!(md.extensions.len(), 1);
    assert!(md.extensions[0].xml.contains("<extTrackingID>1234:1</extTrackingID>"));
    assert_eq!(md.hints.get("userID").map(String::as_str), Some("8638254725@broadworks.example"));
}

#[test]
fn cisco_cube_with_gtd_part() {
    let (sd, md) = split("multipart/mixed;boundary=uniqueBoundary", "cisco-cube.body");
    assert_eq!(sd.streams.len(), 2);
    assert_eq!(sd.streams[0].remote(), Some("192.0.2.36:10292".parse().unwrap()));
    assert_eq!(sender_aor(&md, "1").as_deref(), Some("sip:7301@192.0.2.204"));
    assert_eq!(sender_aor(&md, "2").as_deref(), Some("sip:7300@192.0.2.204"));
}

#[test]
fn sonus_prefixed_namespace() {
    let (_, md) = split("multipart/mixed; boundary=sonus-content-delim", "sonus.body");
    assert_eq!(md.schema, Schema::Draft);
    assert_eq!(sender_aor(&md, "2").as_deref(), Some("2249888500@192.0.2.55"));
    assert_eq!(md.participants[1].name, None, "a blank name is no name");
    assert!(md.extensions.iter().any(|e| e.parent_kind == "group" && e.xml.contains("<gcid>241205267</gcid>")));
    assert_eq!(siprec::number_of(md.participants[0].aor.as_deref().unwrap()).as_deref(), Some("2249888500"));
}
