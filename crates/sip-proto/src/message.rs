//! SIP messages: parsing from bytes, typed accessors and serialization.
//!
//! Parsing is deliberately lenient where real equipment is sloppy (bare LF
//! line ends, header folding, compact names, any case in header names) and
//! strict where a mistake would corrupt state (Content-Length, CSeq, Via).

use std::fmt::Write as _;

use crate::header::{expand_compact, is_token_byte, Headers, MediaType};
use crate::uri::{NameAddr, Via};
use crate::{Method, ParseError, SipError, StatusCode};

/// Largest message accepted on any transport (a UDP datagram's maximum).
pub const MAX_MESSAGE_SIZE: usize = 65_535;

/// A SIP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// Request-URI as received.
    pub uri: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// A SIP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: StatusCode,
    pub reason: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

/// Either kind of message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// CSeq header value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    pub fn parse(s: &str) -> Option<CSeq> {
        let mut it = s.split_whitespace();
        let seq = it.next()?.parse().ok()?;
        let method = Method::parse(it.next()?)?;
        it.next().is_none().then_some(CSeq { seq, method })
    }
}

/// Typed access to the headers every message has.
pub trait HeaderAccess {
    fn headers(&self) -> &Headers;

    fn call_id(&self) -> Option<&str> {
        self.headers().get("Call-ID").map(str::trim).filter(|s| !s.is_empty())
    }
    fn cseq(&self) -> Option<CSeq> {
        self.headers().get("CSeq").and_then(CSeq::parse)
    }
    fn from(&self) -> Option<NameAddr> {
        self.headers().get("From").and_then(NameAddr::parse)
    }
    fn to(&self) -> Option<NameAddr> {
        self.headers().get("To").and_then(NameAddr::parse)
    }
    fn top_via(&self) -> Option<Via> {
        self.headers().list("Via").next().and_then(Via::parse)
    }
    fn contact(&self) -> Option<NameAddr> {
        self.headers().list("Contact").next().and_then(NameAddr::parse)
    }
    fn content_type(&self) -> Option<MediaType> {
        self.headers().get("Content-Type").and_then(MediaType::parse)
    }
}

impl HeaderAccess for Request {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

impl HeaderAccess for Response {
    fn headers(&self) -> &Headers {
        &self.headers
    }
}

/// A CSeq method that is not the request's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CSeqMismatch {
    Tolerated,
    Refused,
}

/// The headers a request must carry to be processed, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestEssentials {
    pub call_id: String,
    pub cseq: CSeq,
    pub from: NameAddr,
    pub to: NameAddr,
    pub via: Via,
}

impl Request {
    pub fn new(method: Method, uri: impl Into<String>) -> Request {
        Request { method, uri: uri.into(), headers: Headers::new(), body: Vec::new() }
    }

    /// Checks the mandatory headers of RFC 3261 §8.1.1; the error is the
    /// 400 response the request deserves.
    pub fn essentials(&self) -> Result<RequestEssentials, SipError> {
        let via = match self.headers.list("Via").next() {
            None => return Err(SipError::bad_request("Missing Via")),
            Some(v) => Via::parse(v).ok_or_else(|| SipError::bad_request("Malformed Via"))?,
        };
        // Every Via must parse, and a list has no empty items (RFC 4475 badinv01).
        let empty_item = self.headers.get_all("Via").any(|v| v.split(',').any(|item| item.trim().is_empty()));
        if empty_item || self.headers.list("Via").any(|v| Via::parse(v).is_none()) {
            return Err(SipError::bad_request("Malformed Via"));
        }
        let call_id = self.call_id().ok_or_else(|| SipError::bad_request("Missing Call-ID"))?.to_owned();
        let cseq = match self.headers.get("CSeq") {
            None => return Err(SipError::bad_request("Missing CSeq")),
            Some(v) => CSeq::parse(v).ok_or_else(|| SipError::bad_request("Malformed CSeq"))?,
        };
        let cseq = match self.cseq_mismatch() {
            None => cseq,
            // A BYE or ACK carrying INVITE in CSeq: the request line says
            // what it is (seen from real platforms; the meaning is clear).
            Some(CSeqMismatch::Tolerated) => CSeq { seq: cseq.seq, method: self.method.clone() },
            Some(CSeqMismatch::Refused) => return Err(SipError::bad_request("CSeq method does not match request")),
        };
        let from = match self.headers.get("From") {
            None => return Err(SipError::bad_request("Missing From")),
            Some(v) => NameAddr::parse(v).ok_or_else(|| SipError::bad_request("Malformed From"))?,
        };
        let to = match self.headers.get("To") {
            None => return Err(SipError::bad_request("Missing To")),
            Some(v) => NameAddr::parse(v).ok_or_else(|| SipError::bad_request("Malformed To"))?,
        };
        for single in ["Call-ID", "CSeq", "From", "To", "Content-Length", "Content-Type", "Max-Forwards"] {
            if self.headers.count(single) > 1 {
                return Err(SipError::bad_request(format!("Duplicate {single}")));
            }
        }
        Ok(RequestEssentials { call_id, cseq, from, to, via })
    }

    /// Whether the CSeq method differs from the request line's, and
    /// whether that is tolerated (BYE or ACK with `INVITE`) or refused
    /// (anything else, e.g. RFC 4475 mismatch01).
    pub fn cseq_mismatch(&self) -> Option<CSeqMismatch> {
        let cseq = self.cseq()?;
        if cseq.method == self.method {
            None
        } else if matches!(self.method, Method::Bye | Method::Ack) && cseq.method == Method::Invite {
            Some(CSeqMismatch::Tolerated)
        } else {
            Some(CSeqMismatch::Refused)
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("{} {} SIP/2.0\r\n", self.method, self.uri);
        write_headers(&mut head, &self.headers, self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

impl Response {
    pub fn new(status: StatusCode) -> Response {
        Response { status, reason: status.default_reason().to_owned(), headers: Headers::new(), body: Vec::new() }
    }

    /// A response to `req` carrying the headers RFC 3261 §8.2.6.2 says to
    /// copy (Via, From, To, Call-ID, CSeq). `to_tag` is added to To when the
    /// request's To has none.
    pub fn to_request(req: &Request, status: StatusCode, reason: &str, to_tag: Option<&str>) -> Response {
        let mut headers = Headers::new();
        for via in req.headers.get_all("Via") {
            headers.push("Via", via);
        }
        for name in ["From", "Call-ID", "CSeq"] {
            if let Some(v) = req.headers.get(name) {
                headers.push(name, v);
            }
        }
        if let Some(to) = req.headers.get("To") {
            let has_tag = NameAddr::parse(to).is_some_and(|t| t.tag().is_some());
            match to_tag {
                Some(tag) if !has_tag && status.as_u16() != 100 => headers.push("To", format!("{to};tag={tag}")),
                _ => headers.push("To", to),
            }
        }
        if status.as_u16() == 100 {
            if let Some(ts) = req.headers.get("Timestamp") {
                headers.push("Timestamp", ts);
            }
        }
        Response { status, reason: reason.to_owned(), headers, body: Vec::new() }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut head = format!("SIP/2.0 {} {}\r\n", self.status.as_u16(), self.reason);
        write_headers(&mut head, &self.headers, self.body.len());
        let mut out = head.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

impl Message {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Message::Request(r) => r.to_bytes(),
            Message::Response(r) => r.to_bytes(),
        }
    }

    pub fn headers(&self) -> &Headers {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
}

fn write_headers(out: &mut String, headers: &Headers, body_len: usize) {
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("Content-Length") {
            continue;
        }
        let _ = write!(out, "{}: {}\r\n", h.name, h.value);
    }
    let _ = write!(out, "Content-Length: {body_len}\r\n\r\n");
}

/// Position just past the blank line ending the headers, if present.
fn find_header_end(data: &[u8]) -> Option<(usize, usize)> {
    // Returns (end of header block, start of body).
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\n' {
            if data.get(i + 1) == Some(&b'\n') {
                return Some((i + 1, i + 2));
            }
            if data.get(i + 1) == Some(&b'\r') && data.get(i + 2) == Some(&b'\n') {
                return Some((i + 1, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// Parses one complete message. For datagrams the body is whatever follows
/// the headers, cut to Content-Length when that is shorter; a Content-Length
/// longer than the data present is an error (a truncated message).
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    if data.len() > MAX_MESSAGE_SIZE {
        return Err(ParseError::TooLarge(data.len()));
    }
    let start = data.iter().position(|&b| b != b'\r' && b != b'\n').ok_or(ParseError::Empty)?;
    let data = &data[start..];
    let (head_end, body_start) = find_header_end(data).ok_or(ParseError::Unterminated)?;
    let head = std::str::from_utf8(&data[..head_end]).map_err(|_| ParseError::NotUtf8)?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let start_line = lines.next().ok_or(ParseError::StartLine)?;

    let mut headers = Headers::new();
    let mut current: Option<(String, String)> = None;
    for (n, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Folded continuation of the previous header (RFC 3261 §7.3.1).
            match current.as_mut() {
                Some((_, v)) => {
                    v.push(' ');
                    v.push_str(line.trim());
                }
                None => return Err(ParseError::HeaderLine(n + 2)),
            }
            continue;
        }
        if let Some((name, value)) = current.take() {
            headers.push(name, value);
        }
        let (name, value) = line.split_once(':').ok_or(ParseError::HeaderLine(n + 2))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(ParseError::HeaderLine(n + 2));
        }
        let name = expand_compact(name).map(str::to_owned).unwrap_or_else(|| name.to_owned());
        current = Some((name, value.trim().to_owned()));
    }
    if let Some((name, value)) = current.take() {
        headers.push(name, value);
    }

    let rest = &data[body_start..];
    let body = match headers.get("Content-Length") {
        Some(v) => {
            let declared: usize = v.trim().parse().map_err(|_| ParseError::ContentLength)?;
            if declared > rest.len() {
                return Err(ParseError::Truncated { declared, actual: rest.len() });
            }
            rest[..declared].to_vec()
        }
        None => rest.to_vec(),
    };

    if let Some(rest) = start_line.strip_prefix("SIP/") {
        let mut parts = rest.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if version != "2.0" {
            return Err(ParseError::Version(version.to_owned()));
        }
        let code: u16 = parts.next().and_then(|c| c.parse().ok()).ok_or(ParseError::StartLine)?;
        let status = StatusCode::new(code).ok_or(ParseError::StartLine)?;
        let reason = parts.next().unwrap_or("").trim().to_owned();
        Ok(Message::Response(Response { status, reason, headers, body }))
    } else {
        // Method SP Request-URI SP SIP-Version, single spaces (RFC 4475
        // lwsstart, trws), an SP-free URI not in angle brackets (lwsruri, ltgtruri).
        let parts: Vec<&str> = start_line.split(' ').collect();
        let [method, uri, version] = parts[..] else { return Err(ParseError::StartLine) };
        let method = Method::parse(method).ok_or(ParseError::StartLine)?;
        if uri.is_empty() || !uri.contains(':') || uri.starts_with('<') {
            return Err(ParseError::StartLine);
        }
        if version != "SIP/2.0" {
            return Err(ParseError::Version(version.to_owned()));
        }
        Ok(Message::Request(Request { method, uri: uri.to_owned(), headers, body }))
    }
}

/// What a stream transport (TCP/TLS) buffer holds at its front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Framing {
    /// Not enough bytes yet.
    Incomplete,
    /// A keep-alive (CRLF) of this many bytes (RFC 5626 §3.5.1).
    KeepAlive(usize),
    /// A whole message of this many bytes.
    Message(usize),
    /// The stream cannot be framed any more; the connection must be closed.
    Invalid(ParseError),
}

/// Frames one message on a stream transport, where Content-Length is the
/// only delimiter (RFC 3261 §18.3; absent means zero).
pub fn frame(buf: &[u8], max_size: usize) -> Framing {
    let lead = buf.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
    if lead > 0 {
        return Framing::KeepAlive(lead);
    }
    let Some((head_end, body_start)) = find_header_end(buf) else {
        return if buf.len() > max_size {
            Framing::Invalid(ParseError::TooLarge(buf.len()))
        } else {
            Framing::Incomplete
        };
    };
    let head = match std::str::from_utf8(&buf[..head_end]) {
        Ok(h) => h,
        Err(_) => return Framing::Invalid(ParseError::NotUtf8),
    };
    let mut declared: Option<usize> = None;
    for line in head.split('\n').skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.eq_ignore_ascii_case("Content-Length") || name.eq_ignore_ascii_case("l") {
            match value.trim().parse() {
                // Two different lengths (RFC 4475 mcl01): where this message
                // ends, and so where the next begins, is unknowable.
                Ok(n) if declared.is_some_and(|d| d != n) => return Framing::Invalid(ParseError::ContentLength),
                Ok(n) => declared = Some(n),
                Err(_) => return Framing::Invalid(ParseError::ContentLength),
            }
        }
    }
    let content_length = declared.unwrap_or(0);
    let total = body_start + content_length;
    if total > max_size {
        return Framing::Invalid(ParseError::TooLarge(total));
    }
    if buf.len() < total {
        Framing::Incomplete
    } else {
        Framing::Message(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_with_two_different_content_lengths_cannot_be_framed() {
        let two = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 13\r\nl: 5\r\n\r\nThere's no way";
        assert!(matches!(frame(two, 65_535), Framing::Invalid(ParseError::ContentLength)));
        let same = b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 2\r\nl: 2\r\n\r\nok";
        assert!(matches!(frame(same, 65_535), Framing::Message(n) if n == same.len()));
    }

    const INVITE: &str = "INVITE sip:srs@10.0.0.2 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK776\r\n\
        v: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bKold\r\n\
        Max-Forwards: 70\r\n\
        f: \"Alice\" <sip:alice@atlanta.com>;tag=1928\r\n\
        To: <sip:srs@10.0.0.2>\r\n\
        i: a84b4c76e66710\r\n\
        CSeq: 314159 INVITE\r\n\
        Subject: folded\r\n  continues here\r\n\
        c: application/sdp\r\n\
        l: 4\r\n\r\nv=0\r\nEXTRA";

    #[test]
    fn parses_request_with_compact_and_folded_headers() {
        let Message::Request(r) = parse(INVITE.as_bytes()).unwrap() else { panic!() };
        assert_eq!(r.method, Method::Invite);
        assert_eq!(r.call_id(), Some("a84b4c76e66710"));
        assert_eq!(r.headers.get("subject"), Some("folded continues here"));
        assert_eq!(r.headers.list("Via").count(), 2);
        assert_eq!(r.body, b"v=0\r");
        let e = r.essentials().unwrap();
        assert_eq!(e.cseq.seq, 314159);
        assert_eq!(e.from.tag(), Some("1928"));
        assert_eq!(e.via.branch(), Some("z9hG4bK776"));
    }

    #[test]
    fn bare_lf_and_leading_crlf_are_accepted() {
        let m = "\r\nOPTIONS sip:a@b SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\nCall-ID: x\nCSeq: 1 OPTIONS\nFrom: <sip:a@b>;tag=1\nTo: <sip:b@c>\n\n";
        let Message::Request(r) = parse(m.as_bytes()).unwrap() else { panic!() };
        assert!(r.essentials().is_ok());
    }

    #[test]
    fn rejects_broken_messages() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"INVITE sip:a SIP/2.0\r\nVia: x\r\n"), Err(ParseError::Unterminated));
        assert!(matches!(
            parse(b"INVITE sip:a SIP/2.0\r\nContent-Length: 10\r\n\r\nabc"),
            Err(ParseError::Truncated { .. })
        ));
        assert_eq!(parse(b"INVITE sip:a SIP/3.0\r\n\r\n"), Err(ParseError::Version("SIP/3.0".into())));
        assert_eq!(parse(b"INVITE\r\n\r\n"), Err(ParseError::StartLine));
        assert!(matches!(parse(b"INVITE sip:a SIP/2.0\r\nno colon here\r\n\r\n"), Err(ParseError::HeaderLine(_))));
        assert_eq!(parse(b"SIP/2.0 99 Low\r\n\r\n"), Err(ParseError::StartLine));
    }

    #[test]
    fn essentials_name_the_missing_header() {
        let m = "BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCSeq: 2 BYE\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\n\r\n";
        let Message::Request(r) = parse(m.as_bytes()).unwrap() else { panic!() };
        let err = r.essentials().unwrap_err();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert_eq!(err.reason, "Missing Call-ID");
        let wrong = m.replace("CSeq: 2 BYE", "Call-ID: x\r\nCSeq: 2 OPTIONS");
        let Message::Request(r) = parse(wrong.as_bytes()).unwrap() else { panic!() };
        assert_eq!(r.essentials().unwrap_err().reason, "CSeq method does not match request");
        // A BYE carrying INVITE in CSeq is a BYE (the meaning is clear).
        let tolerated = m.replace("CSeq: 2 BYE", "Call-ID: x\r\nCSeq: 2 INVITE");
        let Message::Request(r) = parse(tolerated.as_bytes()).unwrap() else { panic!() };
        assert_eq!(r.cseq_mismatch(), Some(CSeqMismatch::Tolerated));
        assert_eq!(r.essentials().unwrap().cseq, CSeq { seq: 2, method: Method::Bye });
    }

    #[test]
    fn response_copies_dialog_headers_and_adds_tag() {
        let Message::Request(r) = parse(INVITE.as_bytes()).unwrap() else { panic!() };
        let resp = Response::to_request(&r, StatusCode::OK, "OK", Some("srs1"));
        let bytes = resp.to_bytes();
        let Message::Response(back) = parse(&bytes).unwrap() else { panic!() };
        assert_eq!(back.status, StatusCode::OK);
        assert_eq!(back.to().unwrap().tag(), Some("srs1"));
        assert_eq!(back.headers.list("Via").count(), 2);
        assert_eq!(back.cseq().unwrap().seq, 314159);
        assert_eq!(back.headers.get("Content-Length"), Some("0"));
    }

    #[test]
    fn stream_framing_uses_content_length() {
        let msg = b"OPTIONS sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcNEXT";
        assert_eq!(frame(msg, 1000), Framing::Message(msg.len() - 4));
        assert_eq!(frame(&msg[..20], 1000), Framing::Incomplete);
        assert_eq!(frame(b"\r\n\r\nINVITE", 1000), Framing::KeepAlive(4));
        assert!(matches!(frame(b"X sip:a SIP/2.0\r\nContent-Length: zz\r\n\r\n", 1000), Framing::Invalid(_)));
        assert!(matches!(frame(&[b'a'; 2000], 1000), Framing::Invalid(ParseError::TooLarge(_))));
    }
}
