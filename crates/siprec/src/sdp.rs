//! SDP offer/answer (RFC 3264) for a recording server, on `sdp-types`.
//!
//! A recorder only receives: every accepted stream is answered `recvonly`
//! (or `inactive` when the offer is), keeps its `a=label` (RFC 7866 §8.1),
//! and lists every offered codec it can decode so the sender may switch
//! codec mid-call without a re-INVITE. Streams it cannot record (video,
//! SRTP for now, no decodable codec) are rejected with port 0; if none is
//! left the offer deserves 488.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use sdp_types::{Attribute, Connection, Media, Origin, Session, Time};

/// Media direction attribute of RFC 4566 §6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attr(name: &str) -> Option<Direction> {
        Some(match name {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Does the offerer send media in this direction?
    pub fn offerer_sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }
}

/// One `a=rtpmap` (or the static default of RFC 3551 for payload types < 96).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RtpMap {
    pub pt: u8,
    /// Encoding name, uppercased (`PCMU`, `TELEPHONE-EVENT`, ...).
    pub encoding: String,
    /// RTP clock rate from the SDP (G.722 says 8000 by RFC 3551 tradition).
    pub clock_rate: u32,
    pub channels: u8,
}

impl RtpMap {
    pub fn is_telephone_event(&self) -> bool {
        self.encoding == "TELEPHONE-EVENT"
    }

    pub fn is_comfort_noise(&self) -> bool {
        self.encoding == "CN"
    }

    fn to_attr(&self) -> String {
        let enc = match self.encoding.as_str() {
            // Registered spellings (RFC 4733, RFC 7587): some stacks
            // compare encoding names case-sensitively.
            "TELEPHONE-EVENT" => "telephone-event".to_owned(),
            "OPUS" => "opus".to_owned(),
            other => other.to_owned(),
        };
        if self.channels > 1 {
            format!("{} {}/{}/{}", self.pt, enc, self.clock_rate, self.channels)
        } else {
            format!("{} {}/{}", self.pt, enc, self.clock_rate)
        }
    }
}

/// RFC 3551 static payload types a recorder may meet.
pub fn static_rtpmap(pt: u8) -> Option<RtpMap> {
    let (enc, rate) = match pt {
        0 => ("PCMU", 8000),
        3 => ("GSM", 8000),
        4 => ("G723", 8000),
        8 => ("PCMA", 8000),
        9 => ("G722", 8000),
        13 => ("CN", 8000),
        18 => ("G729", 8000),
        _ => return None,
    };
    Some(RtpMap { pt, encoding: enc.to_owned(), clock_rate: rate, channels: 1 })
}

/// One offered `m=` section, reduced to what recording needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferedStream {
    pub index: usize,
    pub media: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    /// Media-level connection address, else the session-level one.
    pub addr: Option<IpAddr>,
    pub label: Option<String>,
    pub direction: Direction,
    /// Codec map for the numeric formats, dynamic and static.
    pub rtpmaps: Vec<RtpMap>,
    pub fmtp: Vec<(u8, String)>,
    /// `a=rtcp` port (and address) when given.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    pub rtcp_mux: bool,
    pub ptime: Option<u32>,
    /// SDES `a=crypto` lines (RFC 4568), in the offerer's preference order.
    pub crypto: Vec<CryptoOffer>,
}

/// One `a=crypto:<tag> <suite> <key-params>` line. The key parameters hold
/// the offerer's master key: never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct CryptoOffer {
    pub tag: u32,
    pub suite: String,
    pub key_params: String,
}

impl std::fmt::Debug for CryptoOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoOffer").field("tag", &self.tag).field("suite", &self.suite).finish_non_exhaustive()
    }
}

impl CryptoOffer {
    fn parse(value: &str) -> Option<CryptoOffer> {
        let mut it = value.split_whitespace();
        let tag = it.next()?.parse().ok()?;
        let suite = it.next()?.to_owned();
        let key_params = it.next()?.to_owned();
        Some(CryptoOffer { tag, suite, key_params })
    }
}

/// What SRTP the recorder takes: `supported` says whether it can use an
/// offered crypto line (suite and key); `required` refuses plain RTP.
#[allow(missing_debug_implementations)]
pub struct SrtpPolicy<'a> {
    pub required: bool,
    pub supported: &'a dyn Fn(&CryptoOffer) -> bool,
}

impl SrtpPolicy<'_> {
    /// No SRTP at all (what [`negotiate`] uses).
    pub const NONE: SrtpPolicy<'static> = SrtpPolicy { required: false, supported: &|_| false };
}

impl OfferedStream {
    /// Is the stream on hold / not sending (direction or `c=0.0.0.0`)?
    pub fn is_held(&self) -> bool {
        !self.direction.offerer_sends() || self.addr.is_some_and(|a| a.is_unspecified()) || self.port == 0
    }

    /// Remote RTP address, if usable.
    pub fn remote(&self) -> Option<SocketAddr> {
        match self.addr {
            Some(a) if !a.is_unspecified() && self.port != 0 => Some(SocketAddr::new(a, self.port)),
            _ => None,
        }
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    pub origin_session_id: String,
    pub origin_version: u64,
    pub streams: Vec<OfferedStream>,
    /// Lines that were not `x=value` and were skipped (e.g. a multipart
    /// boundary an SBC left inside the SDP part): the rest still means
    /// what it says, so the offer is used and the skip counted.
    pub skipped_lines: usize,
}

/// Why an SDP body cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("malformed SDP: {0}")]
    Malformed(String),
    #[error("SDP has no media streams")]
    NoMedia,
}

/// Parses an SDP body.
pub fn parse(body: &[u8]) -> Result<SessionDescription, SdpError> {
    let (body, skipped_lines) = without_stray_lines(body);
    let session = Session::parse(&body).map_err(|e| SdpError::Malformed(e.to_string()))?;
    let session_addr = session.connection.as_ref().and_then(conn_ip);
    let session_dir = session.attributes.iter().find_map(|a| Direction::from_attr(&a.attribute));
    let mut streams = Vec::new();
    for (index, m) in session.medias.iter().enumerate() {
        let attr = |name: &str| m.attributes.iter().find(|a| a.attribute.eq_ignore_ascii_case(name));
        let formats: Vec<String> = m.fmt.split_whitespace().map(str::to_owned).collect();
        let mut rtpmaps = Vec::new();
        for f in &formats {
            let Ok(pt) = f.parse::<u8>() else { continue };
            let explicit = m.attributes.iter().filter(|a| a.attribute.eq_ignore_ascii_case("rtpmap")).find_map(|a| {
                let v = a.value.as_deref()?;
                let (p, rest) = v.split_once(char::is_whitespace)?;
                (p.trim().parse::<u8>().ok()? == pt).then(|| parse_rtpmap(pt, rest.trim()))?
            });
            if let Some(map) = explicit.or_else(|| static_rtpmap(pt)) {
                rtpmaps.push(map);
            }
        }
        let fmtp = m
            .attributes
            .iter()
            .filter(|a| a.attribute.eq_ignore_ascii_case("fmtp"))
            .filter_map(|a| {
                let v = a.value.as_deref()?;
                let (p, rest) = v.split_once(char::is_whitespace)?;
                Some((p.trim().parse().ok()?, rest.trim().to_owned()))
            })
            .collect();
        let direction = m
            .attributes
            .iter()
            .find_map(|a| Direction::from_attr(&a.attribute.to_ascii_lowercase()))
            .or(session_dir)
            .unwrap_or(Direction::SendRecv);
        let rtcp = attr("rtcp").and_then(|a| a.value.as_deref()).and_then(|v| {
            let mut it = v.split_whitespace();
            let port = it.next()?.parse().ok()?;
            let addr = match (it.next(), it.next(), it.next()) {
                (Some("IN"), Some(_), Some(ip)) => ip.parse().ok(),
                _ => None,
            };
            Some((port, addr))
        });
        streams.push(OfferedStream {
            index,
            media: m.media.to_ascii_lowercase(),
            port: m.port,
            proto: m.proto.clone(),
            formats,
            addr: m.connections.first().and_then(conn_ip).or(session_addr),
            label: attr("label").and_then(|a| a.value.clone()).map(|l| l.trim().to_owned()),
            direction,
            rtpmaps,
            fmtp,
            rtcp,
            rtcp_mux: attr("rtcp-mux").is_some(),
            ptime: attr("ptime").and_then(|a| a.value.as_deref()?.trim().parse().ok()),
            crypto: m
                .attributes
                .iter()
                .filter(|a| a.attribute.eq_ignore_ascii_case("crypto"))
                .filter_map(|a| CryptoOffer::parse(a.value.as_deref()?))
                .collect(),
        });
    }
    if streams.is_empty() {
        return Err(SdpError::NoMedia);
    }
    Ok(SessionDescription {
        origin_session_id: session.origin.sess_id.clone(),
        origin_version: session.origin.sess_version,
        streams,
        skipped_lines,
    })
}

/// The body without lines that are not `<letter>=<value>` (RFC 4566 §5),
/// and how many there were. Empty lines are kept out too.
fn without_stray_lines(body: &[u8]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(body.len());
    let mut skipped = 0;
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.len() >= 2 && line[0].is_ascii_lowercase() && line[1] == b'=' {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\r\n");
        } else {
            skipped += 1;
        }
    }
    (out, skipped)
}

fn parse_rtpmap(pt: u8, v: &str) -> Option<RtpMap> {
    let mut it = v.split('/');
    let encoding = it.next()?.trim().to_ascii_uppercase();
    let clock_rate = it.next()?.trim().parse().ok()?;
    let channels = it.next().and_then(|c| c.trim().parse().ok()).unwrap_or(1);
    (!encoding.is_empty()).then_some(RtpMap { pt, encoding, clock_rate, channels })
}

fn conn_ip(c: &Connection) -> Option<IpAddr> {
    // Multicast forms carry `/ttl`; recorders only see unicast, but be safe.
    c.connection_address.split('/').next()?.trim().parse().ok()
}

/// What the recorder agreed to receive on one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedStream {
    pub index: usize,
    pub label: Option<String>,
    /// Accepted for recording (else answered with port 0).
    pub accepted: bool,
    /// Why it was rejected, for logs and the 488 Warning.
    pub rejection: Option<Cow<'static, str>>,
    /// Decodable audio codecs, in the offer's preference order.
    pub codecs: Vec<RtpMap>,
    pub telephone_event: Option<RtpMap>,
    pub comfort_noise: Option<u8>,
    pub remote: Option<SocketAddr>,
    pub rtcp_mux: bool,
    pub held: bool,
    pub offer_direction: Direction,
    /// The offered crypto line accepted (SRTP), if any.
    pub crypto: Option<CryptoOffer>,
    /// Our key parameters for the answer's crypto line (set by the caller
    /// before [`build_answer`]; the recorder never sends, but RFC 4568
    /// wants a key in every accepted line).
    pub local_crypto_key: Option<String>,
}

impl NegotiatedStream {
    /// Direction the recorder answers with.
    pub fn answer_direction(&self) -> Direction {
        if self.held {
            Direction::Inactive
        } else {
            Direction::RecvOnly
        }
    }
}

/// Decides per stream what to accept. `decodable` says whether the media
/// engine can decode a codec.
pub fn negotiate(offer: &SessionDescription, decodable: &dyn Fn(&RtpMap) -> bool) -> Vec<NegotiatedStream> {
    negotiate_with(offer, decodable, &SrtpPolicy::NONE)
}

/// [`negotiate`] with an SRTP policy: an `RTP/SAVP` stream is accepted
/// with the first offered crypto line the policy supports.
pub fn negotiate_with(
    offer: &SessionDescription,
    decodable: &dyn Fn(&RtpMap) -> bool,
    srtp: &SrtpPolicy,
) -> Vec<NegotiatedStream> {
    offer
        .streams
        .iter()
        .map(|s| {
            let mut n = NegotiatedStream {
                index: s.index,
                label: s.label.clone(),
                accepted: false,
                rejection: None,
                codecs: Vec::new(),
                telephone_event: None,
                comfort_noise: None,
                remote: s.remote(),
                rtcp_mux: s.rtcp_mux,
                held: !s.direction.offerer_sends() || s.addr.is_some_and(|a| a.is_unspecified()),
                offer_direction: s.direction,
                crypto: None,
                local_crypto_key: None,
            };
            let proto = s.proto.to_ascii_uppercase();
            let sdes = proto.starts_with("RTP/SAVP");
            if sdes {
                n.crypto = s.crypto.iter().find(|c| (srtp.supported)(c)).cloned();
            }
            if s.media != "audio" {
                n.rejection = Some("only audio is recorded".into());
            } else if s.port == 0 {
                n.rejection = Some("stream disabled by offerer".into());
            } else if proto.starts_with("UDP/TLS") {
                n.rejection = Some("DTLS-SRTP is not supported (use SDES a=crypto)".into());
            } else if sdes && n.crypto.is_none() {
                n.rejection = Some("no supported SRTP crypto suite offered".into());
            } else if !sdes && srtp.required {
                n.rejection = Some("SRTP required by policy".into());
            } else if !proto.starts_with("RTP/AVP") && !sdes {
                n.rejection = Some("unsupported transport protocol".into());
            } else {
                n.codecs = s
                    .rtpmaps
                    .iter()
                    .filter(|m| !m.is_telephone_event() && !m.is_comfort_noise() && decodable(m))
                    .cloned()
                    .collect();
                if n.codecs.is_empty() {
                    // Name what was offered: the operator reads it in the
                    // 488's Warning and knows which codec to enable or add.
                    let offered: Vec<String> = s
                        .formats
                        .iter()
                        .map(|f| match s.rtpmaps.iter().find(|m| m.pt.to_string() == *f) {
                            Some(m) if m.is_telephone_event() || m.is_comfort_noise() => String::new(),
                            Some(m) => format!("{}/{}", m.encoding, m.clock_rate),
                            None => format!("payload type {f}"),
                        })
                        .filter(|name| !name.is_empty())
                        .collect();
                    n.rejection = Some(if offered.is_empty() {
                        "no audio codec offered".into()
                    } else {
                        format!("no decodable codec offered ({})", offered.join(", ")).into()
                    });
                } else {
                    n.accepted = true;
                    let rates: Vec<u32> = n.codecs.iter().map(|c| c.clock_rate).collect();
                    n.telephone_event =
                        s.rtpmaps.iter().find(|m| m.is_telephone_event() && rates.contains(&m.clock_rate)).cloned();
                    n.comfort_noise =
                        s.rtpmaps.iter().find(|m| m.is_comfort_noise() && m.clock_rate == 8000).map(|m| m.pt);
                }
            }
            n
        })
        .collect()
}

/// Local parameters of an answer or offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalSdp {
    pub addr: IpAddr,
    pub session_id: u64,
    /// Incremented for every new description within a dialog (RFC 3264 §8).
    pub version: u64,
}

fn base_session(local: &LocalSdp) -> Session {
    let addrtype = if local.addr.is_ipv4() { "IP4" } else { "IP6" };
    let origin = Origin {
        username: Some("callvault".into()),
        sess_id: local.session_id.to_string(),
        sess_version: local.version,
        nettype: "IN".into(),
        addrtype: addrtype.into(),
        unicast_address: local.addr.to_string(),
    };
    let mut s = Session::new(origin, "callvault");
    s.connection = Some(Connection {
        nettype: "IN".into(),
        addrtype: addrtype.into(),
        connection_address: local.addr.to_string(),
    });
    s.times.push(Time::new(0, 0));
    s
}

fn rtp_proto(offer_proto: &str) -> String {
    if offer_proto.to_ascii_uppercase().starts_with("RTP/AVP") {
        offer_proto.to_owned()
    } else {
        "RTP/AVP".to_owned()
    }
}

/// Builds the SDP answer. `ports[i]` is the local RTP port of stream `i`
/// (ignored for rejected streams).
/// The format parameters we answer for an accepted codec: Opus gets
/// `useinbandfec=1` (we use the FEC to fill single losses, RFC 7587
/// §6.1); G.729 echoes the offer's `annexb` (RFC 4856: both sides agree).
fn answer_fmtp(codec: &RtpMap, offered: &[(u8, String)]) -> Option<String> {
    match codec.encoding.as_str() {
        "OPUS" => Some("useinbandfec=1".into()),
        "G729" | "G729A" => offered
            .iter()
            .find(|(pt, _)| *pt == codec.pt)
            .and_then(|(_, v)| v.split(';').map(str::trim).find(|p| p.to_ascii_lowercase().starts_with("annexb")))
            .map(str::to_owned),
        _ => None,
    }
}

pub fn build_answer(
    offer: &SessionDescription,
    negotiated: &[NegotiatedStream],
    ports: &[u16],
    local: &LocalSdp,
) -> Vec<u8> {
    let mut s = base_session(local);
    for (i, (o, n)) in offer.streams.iter().zip(negotiated).enumerate() {
        if !n.accepted {
            let fmt = o.formats.first().cloned().unwrap_or_else(|| "0".into());
            s.medias.push(media_line(&o.media, 0, &o.proto, fmt));
            continue;
        }
        let mut pts: Vec<String> = n.codecs.iter().map(|c| c.pt.to_string()).collect();
        if let Some(te) = &n.telephone_event {
            pts.push(te.pt.to_string());
        }
        if let Some(cn) = n.comfort_noise {
            pts.push(cn.to_string());
        }
        let proto = if n.crypto.is_some() { o.proto.clone() } else { rtp_proto(&o.proto) };
        let mut m = media_line("audio", ports.get(i).copied().unwrap_or(0), &proto, pts.join(" "));
        if let (Some(c), Some(key)) = (&n.crypto, &n.local_crypto_key) {
            m.attributes.push(Attribute::with_value("crypto", format!("{} {} {key}", c.tag, c.suite)));
        }
        for c in &n.codecs {
            m.attributes.push(Attribute::with_value("rtpmap", c.to_attr()));
            if let Some(fmtp) = answer_fmtp(c, &o.fmtp) {
                m.attributes.push(Attribute::with_value("fmtp", format!("{} {fmtp}", c.pt)));
            }
        }
        if let Some(te) = &n.telephone_event {
            m.attributes.push(Attribute::with_value("rtpmap", te.to_attr()));
            let events =
                o.fmtp.iter().find(|(pt, _)| *pt == te.pt).map(|(_, v)| v.clone()).unwrap_or_else(|| "0-15".into());
            m.attributes.push(Attribute::with_value("fmtp", format!("{} {}", te.pt, events)));
        }
        if let Some(cn) = n.comfort_noise {
            m.attributes.push(Attribute::with_value("rtpmap", format!("{cn} CN/8000")));
        }
        if let Some(l) = &n.label {
            m.attributes.push(Attribute::with_value("label", l));
        }
        if n.rtcp_mux {
            m.attributes.push(Attribute::new("rtcp-mux"));
        }
        m.attributes.push(Attribute::new(n.answer_direction().as_str()));
        s.medias.push(m);
    }
    write(&s)
}

/// An offer from the recorder, for delayed-offer INVITEs (Cisco BiB) and
/// re-INVITEs without SDP: one `recvonly` audio stream per `(port, label)`,
/// offering the given codecs in that order (Opus with in-band FEC asked
/// for). With `crypto` lines (`<tag> <suite> <key-params>`, RFC 4568) the
/// streams are `RTP/SAVP` and the answer must pick one of them.
pub fn build_offer(
    streams: &[(u16, Option<String>)],
    codecs: &[RtpMap],
    telephone_event_pt: Option<u8>,
    crypto: &[String],
    local: &LocalSdp,
) -> Vec<u8> {
    let mut s = base_session(local);
    let proto = if crypto.is_empty() { "RTP/AVP" } else { "RTP/SAVP" };
    for (port, label) in streams {
        let port = *port;
        let mut pts: Vec<String> = codecs.iter().map(|c| c.pt.to_string()).collect();
        if let Some(te) = telephone_event_pt {
            pts.push(te.to_string());
        }
        let mut m = media_line("audio", port, proto, pts.join(" "));
        for c in codecs {
            m.attributes.push(Attribute::with_value("rtpmap", c.to_attr()));
            if c.encoding.eq_ignore_ascii_case("opus") {
                m.attributes.push(Attribute::with_value("fmtp", format!("{} useinbandfec=1", c.pt)));
            }
        }
        if let Some(te) = telephone_event_pt {
            m.attributes.push(Attribute::with_value("rtpmap", format!("{te} telephone-event/8000")));
            m.attributes.push(Attribute::with_value("fmtp", format!("{te} 0-15")));
        }
        m.attributes.push(Attribute::with_value("ptime", "20"));
        for line in crypto {
            m.attributes.push(Attribute::with_value("crypto", line));
        }
        if let Some(l) = label {
            m.attributes.push(Attribute::with_value("label", l));
        }
        m.attributes.push(Attribute::new("recvonly"));
        s.medias.push(m);
    }
    write(&s)
}

fn media_line(media: &str, port: u16, proto: &str, fmt: String) -> Media {
    Media {
        media: media.to_owned(),
        port,
        num_ports: None,
        proto: proto.to_owned(),
        fmt,
        media_title: None,
        connections: Vec::new(),
        bandwidths: Vec::new(),
        key: None,
        attributes: Vec::new(),
    }
}

fn write(s: &Session) -> Vec<u8> {
    let mut out = Vec::new();
    s.write(&mut out).expect("writing to a Vec cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g711(m: &RtpMap) -> bool {
        matches!(m.encoding.as_str(), "PCMU" | "PCMA") && m.clock_rate == 8000
    }

    const SONUS: &str = "v=0\r\no=Sonus_UAC 328001 655768 IN IP4 172.16.169.181\r\ns=SIP Media Capabilities\r\nt=0 0\r\nm=audio 48932 RTP/AVP 0\r\nc=IN IP4 172.16.169.132\r\na=label:1\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\na=maxptime:20\r\nm=audio 48926 RTP/AVP 0\r\nc=IN IP4 172.16.169.132\r\na=label:2\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\na=maxptime:20\r\n";

    #[test]
    fn parses_two_labeled_streams_with_media_level_connection() {
        let sd = parse(SONUS.as_bytes()).unwrap();
        assert_eq!(sd.streams.len(), 2);
        assert_eq!(sd.streams[0].label.as_deref(), Some("1"));
        assert_eq!(sd.streams[1].remote(), Some("172.16.169.132:48926".parse().unwrap()));
        assert_eq!(sd.streams[0].direction, Direction::SendOnly);
    }

    #[test]
    fn answer_is_recvonly_with_labels_and_only_decodable_codecs() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 22294 RTP/AVP 18 8 101 0 9\r\na=rtpmap:9 G722/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendonly\r\na=label:1\r\nm=video 5000 RTP/AVP 96\r\na=label:2\r\n";
        let sd = parse(offer.as_bytes()).unwrap();
        let neg = negotiate(&sd, &g711);
        assert!(neg[0].accepted);
        assert_eq!(neg[0].codecs.iter().map(|c| c.pt).collect::<Vec<_>>(), vec![8, 0]);
        assert_eq!(neg[0].telephone_event.as_ref().map(|t| t.pt), Some(101));
        assert!(!neg[1].accepted);
        let answer = build_answer(
            &sd,
            &neg,
            &[30000, 0],
            &LocalSdp { addr: "127.0.0.1".parse().unwrap(), session_id: 7, version: 1 },
        );
        let text = String::from_utf8(answer.clone()).unwrap();
        assert!(text.contains("m=audio 30000 RTP/AVP 8 0 101\r\n"), "{text}");
        assert!(text.contains("a=label:1\r\na=recvonly"), "{text}");
        assert!(text.contains("m=video 0 RTP/AVP 96"), "{text}");
        assert!(text.contains("a=fmtp:101 0-15"));
        // The answer itself parses.
        let back = parse(&answer).unwrap();
        assert_eq!(back.streams[0].direction, Direction::RecvOnly);
    }

    #[test]
    fn hold_is_answered_inactive() {
        let hold = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=label:1\r\n";
        let sd = parse(hold.as_bytes()).unwrap();
        let neg = negotiate(&sd, &g711);
        assert!(neg[0].held && neg[0].accepted);
        assert_eq!(neg[0].answer_direction(), Direction::Inactive);
        let inactive = hold.replace("0.0.0.0", "10.0.0.1") + "a=inactive\r\n";
        let neg = negotiate(&parse(inactive.as_bytes()).unwrap(), &g711);
        assert_eq!(neg[0].answer_direction(), Direction::Inactive);
    }

    #[test]
    fn srtp_without_a_supported_suite_and_unknown_codecs_are_rejected() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\nm=audio 4002 RTP/AVP 18\r\n";
        let neg = negotiate(&parse(offer.as_bytes()).unwrap(), &g711);
        assert_eq!(neg[0].rejection.as_deref(), Some("no supported SRTP crypto suite offered"));
        assert!(
            neg[1].rejection.as_deref().is_some_and(|r| r.starts_with("no decodable codec offered (")),
            "{:?}",
            neg[1].rejection
        );
    }

    #[test]
    fn sdes_offers_take_the_first_supported_crypto_line_and_answer_with_ours() {
        let offer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
            m=audio 4000 RTP/SAVP 0\r\n\
            a=crypto:1 F8_128_HMAC_SHA1_80 inline:AAAA\r\n\
            a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:SECRETKEYSECRETKEYSECRETKEYSECRETKEY1234\r\n\
            m=audio 4002 RTP/AVP 0\r\n";
        let sd = parse(offer.as_bytes()).unwrap();
        assert_eq!(sd.streams[0].crypto.len(), 2);
        assert!(!format!("{sd:?}").contains("SECRETKEY"), "key parameters are never printed");
        let supported = |c: &CryptoOffer| c.suite.starts_with("AES_CM");
        let policy = SrtpPolicy { required: true, supported: &supported };
        let mut neg = negotiate_with(&sd, &g711, &policy);
        assert_eq!(neg[0].crypto.as_ref().map(|c| c.tag), Some(2));
        assert!(neg[0].accepted);
        assert_eq!(neg[1].rejection.as_deref(), Some("SRTP required by policy"));
        neg[0].local_crypto_key = Some("inline:OURKEY".into());
        let answer = String::from_utf8(build_answer(
            &sd,
            &neg,
            &[30000, 30002],
            &LocalSdp { addr: "10.0.0.2".parse().unwrap(), session_id: 1, version: 1 },
        ))
        .unwrap();
        assert!(answer.contains("m=audio 30000 RTP/SAVP 0"), "{answer}");
        assert!(answer.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:OURKEY"), "{answer}");
        assert!(!answer.contains("SECRETKEY"), "the offerer's key is not echoed");
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(parse(b"hello"), Err(SdpError::Malformed(_))));
        assert_eq!(parse(b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\ns=-\r\nt=0 0\r\n"), Err(SdpError::NoMedia));
    }

    #[test]
    fn delayed_offer_has_recvonly_stream() {
        let pcmu = static_rtpmap(0).unwrap();
        let opus = RtpMap { pt: 111, encoding: "OPUS".into(), clock_rate: 48000, channels: 2 };
        let local = LocalSdp { addr: "127.0.0.1".parse().unwrap(), session_id: 1, version: 1 };
        let offer = build_offer(&[(40000, Some("1".into()))], &[pcmu.clone(), opus], Some(101), &[], &local);
        let sd = parse(&offer).unwrap();
        assert_eq!(sd.streams[0].direction, Direction::RecvOnly);
        assert_eq!(sd.streams[0].port, 40000);
        assert_eq!(sd.streams[0].label.as_deref(), Some("1"));
        assert_eq!(sd.streams[0].proto, "RTP/AVP");
        let text = String::from_utf8(offer).unwrap();
        assert!(text.contains("m=audio 40000 RTP/AVP 0 111 101\r\n"), "{text}");
        assert!(text.contains("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 useinbandfec=1\r\n"), "{text}");
        // SDES: RTP/SAVP with our crypto lines.
        let crypto = ["1 AES_CM_128_HMAC_SHA1_80 inline:KEY".to_owned()];
        let sd = parse(&build_offer(&[(40000, None)], &[pcmu], None, &crypto, &local)).unwrap();
        assert_eq!(sd.streams[0].proto, "RTP/SAVP");
        assert_eq!(sd.streams[0].crypto[0].suite, "AES_CM_128_HMAC_SHA1_80");
    }
}
