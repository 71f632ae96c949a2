//! Pure handling of what a recording INVITE carries: the body (SDP and
//! rs-metadata, alone or in `multipart/mixed`), SDP offer/answer for a
//! receive-only recorder, RFC 7865 metadata and its legacy dialects, and
//! the From-header parameters that link Cisco BiB fork legs.
//!
//! No I/O. Every rejection is a [`sip_proto::SipError`] with the status a
//! recording server owes (400 malformed, 415 unsupported body, 488 no
//! acceptable media).
#![forbid(unsafe_code)]

pub mod forked;
pub mod metadata;
pub mod multipart;
pub mod sdp;

use sip_proto::{MediaType, SipError, StatusCode, Uri};

/// Body types a recorder accepts (the `Accept` header of a 415).
pub const ACCEPTED_BODIES: &str = "application/sdp, application/rs-metadata+xml, multipart/mixed";

/// The parts of a request body a recorder uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingBody {
    pub sdp: Option<Vec<u8>>,
    pub metadata: Option<Vec<u8>>,
}

fn is_metadata(t: &MediaType) -> bool {
    // Avaya sends `application/rs-metadata` without the `+xml` suffix.
    t.is("application/rs-metadata+xml") || t.is("application/rs-metadata")
}

/// Picks the SDP and metadata out of a request body.
pub fn classify_body(content_type: Option<&MediaType>, body: &[u8]) -> Result<RecordingBody, SipError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RecordingBody::default());
    }
    let Some(ct) = content_type else {
        // RFC 3261 §7.4.1: a body needs a Content-Type; SDP is the only guess worth making.
        if body.starts_with(b"v=0") {
            return Ok(RecordingBody { sdp: Some(body.to_vec()), metadata: None });
        }
        return Err(SipError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "Body without Content-Type"));
    };
    if ct.is("application/sdp") {
        return Ok(RecordingBody { sdp: Some(body.to_vec()), metadata: None });
    }
    if is_metadata(ct) {
        return Ok(RecordingBody { sdp: None, metadata: Some(body.to_vec()) });
    }
    if ct.kind == "multipart" {
        let parts =
            multipart::split(ct, body).map_err(|e| SipError::bad_request(format!("Malformed multipart body: {e}")))?;
        let mut out = RecordingBody::default();
        for part in parts {
            let Some(pt) = part.content_type() else {
                continue;
            };
            if pt.is("application/sdp") && out.sdp.is_none() {
                out.sdp = Some(part.body);
            } else if is_metadata(&pt) && out.metadata.is_none() {
                out.metadata = Some(part.body);
            }
        }
        if out.sdp.is_none() && out.metadata.is_none() {
            return Err(SipError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "No SDP or recording metadata in multipart body",
            ));
        }
        return Ok(out);
    }
    Err(SipError::with_reason(StatusCode::UNSUPPORTED_MEDIA_TYPE, format!("Unsupported body type {}", ct.essence())))
}

/// A telephone number from an AOR or URI-ish text: `sip:+1555@h`,
/// `tel:+1555`, `2249888500@172.16.198.55`, or a bare number.
pub fn number_of(text: &str) -> Option<String> {
    let text = text.trim();
    if let Some(uri) = Uri::parse(text).filter(|u| matches!(u.scheme.as_str(), "sip" | "sips" | "tel")) {
        // BroadWorks writes bare numbers as `sip:8638254725` (no user part).
        return uri.number().or_else(|| uri.user.is_none().then(|| sip_proto::uri::phone_number(&uri.host)).flatten());
    }
    let user = text.split('@').next().unwrap_or(text);
    sip_proto::uri::phone_number(user.split(';').next().unwrap_or(user))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_from_aors() {
        assert_eq!(number_of("sip:+19015783200@broadcore.com;user=phone").as_deref(), Some("+19015783200"));
        assert_eq!(number_of("2249888500@172.16.198.55").as_deref(), Some("2249888500"));
        assert_eq!(number_of("sip:alice@example.com"), None);
        assert_eq!(number_of("sip:8638254725").as_deref(), Some("8638254725"));
        assert_eq!(number_of("sip:example.com"), None);
        assert_eq!(number_of("tel:+44-20-7946-0000").as_deref(), Some("+442079460000"));
    }

    #[test]
    fn body_classification() {
        let sdp = MediaType::parse("application/sdp").unwrap();
        assert!(classify_body(Some(&sdp), b"v=0").unwrap().sdp.is_some());
        assert_eq!(classify_body(None, b"").unwrap(), RecordingBody::default());
        let err = classify_body(Some(&MediaType::parse("text/html").unwrap()), b"<p>").unwrap_err();
        assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        let avaya = MediaType::parse("application/rs-metadata").unwrap();
        assert!(classify_body(Some(&avaya), b"<recording/>").unwrap().metadata.is_some());
        let mp = MediaType::parse("multipart/mixed;boundary=x").unwrap();
        assert_eq!(classify_body(Some(&mp), b"garbage").unwrap_err().status, StatusCode::BAD_REQUEST);
    }
}
