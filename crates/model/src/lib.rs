//! The recording as data.
//!
//! A [`RecordingMeta`] is the complete, self-describing record of one call
//! recording: it is written next to the audio as JSON (the source of truth,
//! replicated with the audio later) and indexed in the metadata database.
//! Ids are UUIDv7: unique across nodes without coordination and sortable
//! by creation time.
#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

pub mod access;
pub mod latency;
pub mod replica;
pub mod rs_metadata;

/// Globally unique recording id (UUIDv7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RecordingId(pub Uuid);

impl RecordingId {
    /// A new id for a recording starting at `at`.
    pub fn new(at: OffsetDateTime) -> RecordingId {
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, at.unix_timestamp() as u64, at.nanosecond());
        RecordingId(Uuid::new_v7(ts))
    }
}

impl fmt::Display for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for RecordingId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s.trim()).map(RecordingId)
    }
}

/// Name of a node in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Life cycle: `active` → `completed` | `interrupted` | `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingState {
    /// Being recorded now.
    Active,
    /// The call ended normally (BYE, media timeout, administrator).
    Completed,
    /// The recorder stopped before the call did (crash, shutdown); all audio
    /// that reached disk is kept.
    Interrupted,
    /// Recording could not proceed (no ACK, storage failure).
    Failed,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Active => "active",
            RecordingState::Completed => "completed",
            RecordingState::Interrupted => "interrupted",
            RecordingState::Failed => "failed",
        }
    }

    pub fn is_final(self) -> bool {
        self != RecordingState::Active
    }
}

impl FromStr for RecordingState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "active" => RecordingState::Active,
            "completed" => RecordingState::Completed,
            "interrupted" => RecordingState::Interrupted,
            "failed" => RecordingState::Failed,
            other => return Err(format!("unknown recording state {other:?}")),
        })
    }
}

impl fmt::Display for RecordingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `text` with every control character written as `\u{XX}`.
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

/// One entry of a recording's state history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    pub state: RecordingState,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub reason: String,
}

/// How the call reached the recorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// RFC 7866 SIPREC session.
    Siprec,
    /// Media forking without SIPREC: linked legs (Cisco BiB style).
    Forked,
    /// A plain INVITE whose media lines are the channels.
    Plain,
}

/// A party of the recorded call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Participant {
    /// Metadata id (SIPREC) when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aor: Option<String>,
    /// Telephone number derived from the AOR.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// `caller`, `callee`, `near-end`, `far-end` when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Channel carrying this participant's voice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joined_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub left_at: Option<String>,
}

/// One received media stream.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct StreamRecord {
    /// SDP `a=label` (SIPREC) if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub channel: u8,
    /// Codecs accepted for this stream, preferred first.
    pub codecs: Vec<String>,
    pub local_port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// Participant id (or name) sending on this stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<String>,
    /// The SRTP suite the stream was received with (never the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp: Option<String>,
    pub stats: StreamStats,
}

/// Receive counters and estimates of one stream (RFC 3550 §6.4.1, §A.8),
/// as the media engine measured them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    /// RTP packets accepted (after latching, parse and duplicate checks).
    pub packets: u64,
    pub bytes: u64,
    /// Packets the sender's sequence numbers say should have arrived.
    pub expected: u64,
    /// `expected - packets`, never negative.
    pub lost: u64,
    pub duplicates: u64,
    /// Packets that arrived after the reorder window had moved on.
    pub late: u64,
    /// Packets that were not RTP or not for this stream's codecs.
    pub malformed: u64,
    pub unknown_payload: u64,
    /// Packets from an address other than the latched source.
    pub foreign: u64,
    pub ssrc_changes: u32,
    /// Packets of another SSRC dropped while the stream's own SSRC was
    /// still sending (stray or interleaved packets are never written over
    /// the real audio).
    #[serde(default)]
    pub foreign_ssrc: u64,
    /// SRTP/SRTCP packets that failed authentication (wrong key,
    /// tampering): dropped, never written.
    #[serde(default)]
    pub srtp_auth_failures: u64,
    /// Packets dropped for a sequence number far from the stream's.
    #[serde(default)]
    pub sequence_jumps: u64,
    /// Sender restarts (jumps confirmed by a second packet).
    #[serde(default)]
    pub sequence_restarts: u32,
    /// Interarrival jitter estimate in milliseconds.
    pub jitter_ms: f64,
    pub max_jitter_ms: f64,
    pub rtcp_packets: u64,
    /// Packets the sender says it sent (last RTCP SR), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_reported_packets: Option<u32>,
    /// Times the stream was re-placed on the recording's timeline at a
    /// packet's arrival (timestamp jump, SSRC change, a packet far early).
    #[serde(default)]
    pub reanchors: u32,
    /// Times its placement followed a sustained change of transit delay or
    /// settled on the least delayed packets (see the media crate's `PositionMapper`).
    #[serde(default)]
    pub timeline_shifts: u32,
    /// Highest absolute sample value decoded (0..=32768): silence detection.
    #[serde(default)]
    pub peak: u16,
    /// Codecs the stream's audio arrived in, in order: a mid-call switch
    /// (re-INVITE, or the sender picking another payload type of the
    /// answer) starts a new span.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codecs_used: Vec<CodecSpan>,
    /// Lost Opus packets rebuilt from the next packet's in-band FEC.
    #[serde(default)]
    pub fec_recovered: u64,
    /// Payloads the codec could not decode (left silent).
    #[serde(default)]
    pub decode_failures: u64,
}

/// One stretch of a stream decoded with one codec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodecSpan {
    /// SDP name (`PCMU`, `G722`, `opus`, `G729`).
    pub codec: String,
    /// Offsets from the start of the recording.
    pub from_ms: u64,
    pub to_ms: u64,
    pub packets: u64,
}

impl StreamStats {
    /// Loss as a fraction of expected packets.
    pub fn loss_fraction(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// A DTMF key press heard on a stream (RFC 4733 or SIP INFO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfRecord {
    /// Offset from the start of the recording.
    pub at_ms: u64,
    pub digit: char,
    pub duration_ms: u32,
    pub channel: u8,
    /// `rtp` (RFC 4733) or `info` (SIP INFO).
    pub source: String,
}

/// The audio file of a recording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioInfo {
    pub format: String,
    pub sample_rate: u32,
    pub channels: u16,
    pub bytes: u64,
    pub duration_ms: u64,
    /// SHA-256 of the finished file, lowercase hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Path relative to the node's data directory.
    pub path: String,
}

/// Everything known about one recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingMeta {
    pub id: RecordingId,
    pub node_id: NodeId,
    pub source: SourceKind,
    pub state: RecordingState,
    pub state_history: Vec<StateChange>,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub duration_ms: u64,
    /// `inbound`, `outbound`, or absent when the platform does not say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callee: Option<String>,
    /// SIP Call-IDs of the recording session(s) (two for forked calls).
    pub call_ids: Vec<String>,
    /// The call this recording is of, the same on every recorder the
    /// platform forked it to: `siprec:<session id>`, `bib:<x-refci>@<host>`
    /// or `sip:<Call-ID>@<source>`. Recordings sharing it are copies of one
    /// logical recording (search shows one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_key: Option<String>,
    /// Signalling source (`udp:ip:port`).
    pub source_addr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    pub participants: Vec<Participant>,
    pub streams: Vec<StreamRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dtmf: Vec<DtmfRecord>,
    /// SIPREC metadata as merged from every update, extensions verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub siprec: Option<rs_metadata::Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioInfo>,
    /// Set when media did not arrive as it should: the most common silent
    /// failure of call recording (firewall, NAT, one-way audio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_alarm: Option<MediaAlarm>,
}

/// What was wrong with a recording's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaAlarm {
    /// At least one stream (not every one) received no RTP at all.
    StreamWithoutRtp,
    /// No stream received any RTP.
    NoRtp,
    /// RTP arrived, but every stream's audio was silence.
    AllSilent,
}

impl MediaAlarm {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaAlarm::StreamWithoutRtp => "stream_without_rtp",
            MediaAlarm::NoRtp => "no_rtp",
            MediaAlarm::AllSilent => "all_silent",
        }
    }

    /// The alarm the final figures of a recording's streams call for:
    /// packet counts and the peak sample level of each stream.
    pub fn judge(streams: &[StreamStats]) -> Option<MediaAlarm> {
        if streams.is_empty() {
            return None;
        }
        let without = streams.iter().filter(|s| s.packets == 0).count();
        if without == streams.len() {
            Some(MediaAlarm::NoRtp)
        } else if without > 0 {
            Some(MediaAlarm::StreamWithoutRtp)
        } else if streams.iter().all(|s| s.peak <= SILENCE_PEAK) {
            Some(MediaAlarm::AllSilent)
        } else {
            None
        }
    }
}

/// Peak sample level at or below which a stream counts as silent (about
/// -54 dBFS: line noise, no speech).
pub const SILENCE_PEAK: u16 = 64;

impl RecordingMeta {
    /// A new, active recording with nothing known yet but where it came
    /// from; its first state change says why it started.
    pub fn start(
        id: RecordingId,
        node_id: NodeId,
        source: SourceKind,
        started_at: OffsetDateTime,
        source_addr: String,
        reason: impl Into<String>,
    ) -> RecordingMeta {
        let mut meta = RecordingMeta {
            id,
            node_id,
            source,
            state: RecordingState::Active,
            state_history: Vec::new(),
            started_at,
            ended_at: None,
            duration_ms: 0,
            direction: None,
            caller: None,
            callee: None,
            call_ids: Vec::new(),
            call_key: None,
            source_addr,
            user_agent: None,
            participants: Vec::new(),
            streams: Vec::new(),
            dtmf: Vec::new(),
            siprec: None,
            audio: None,
            media_alarm: None,
        };
        meta.transition(RecordingState::Active, started_at, reason);
        meta
    }

    /// Moves to `state`, recording when and why.
    pub fn transition(&mut self, state: RecordingState, at: OffsetDateTime, reason: impl Into<String>) {
        self.state = state;
        self.state_history.push(StateChange { state, at, reason: reason.into() });
        if state.is_final() {
            self.ended_at = Some(at);
        }
    }

    /// Escapes control characters (NUL, ESC sequences, newlines…) in every
    /// text that came from the network (SIP headers, SIPREC metadata), so
    /// nothing stored or printed can drive an operator's terminal: `\u{1b}`
    /// is kept as those six characters. Idempotent.
    pub fn escape_control(&mut self) {
        let fix = |s: &mut String| {
            if s.chars().any(char::is_control) {
                *s = escape_control(s);
            }
        };
        let fix_opt = |s: &mut Option<String>| {
            if let Some(s) = s {
                fix(s);
            }
        };
        fix_opt(&mut self.caller);
        fix_opt(&mut self.callee);
        fix_opt(&mut self.direction);
        fix_opt(&mut self.user_agent);
        fix_opt(&mut self.call_key);
        fix(&mut self.source_addr);
        self.call_ids.iter_mut().for_each(fix);
        for p in &mut self.participants {
            for f in [
                &mut p.id,
                &mut p.name,
                &mut p.aor,
                &mut p.number,
                &mut p.role,
                &mut p.device,
                &mut p.joined_at,
                &mut p.left_at,
            ] {
                fix_opt(f);
            }
        }
        for st in &mut self.streams {
            fix_opt(&mut st.label);
            fix_opt(&mut st.sender);
            fix_opt(&mut st.remote);
        }
    }

    /// The reason of the last state change.
    /// The user part of every party (caller, callee, participants' numbers
    /// and AORs), deduplicated: what a user's scope is matched against.
    pub fn party_users(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let all = self
            .caller
            .iter()
            .chain(self.callee.iter())
            .map(String::as_str)
            .chain(self.participants.iter().flat_map(|p| p.number.as_deref().into_iter().chain(p.aor.as_deref())));
        for party in all {
            let user = access::party_user(party);
            if !user.is_empty() && !out.iter().any(|o| o == user) {
                out.push(user.to_owned());
            }
        }
        out
    }

    /// Identifiers operators match CDRs with: SIP Call-IDs, the call key
    /// and its value (SIPREC session id, x-refci), SIPREC session and
    /// group ids, and vendor hints (Avaya UCID, Cisco GUID ...).
    pub fn identifiers(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let mut add = |v: &str| {
            let v = v.trim();
            if !v.is_empty() && v.len() <= 256 && !out.iter().any(|o| o == v) {
                out.push(v.to_owned());
            }
        };
        self.call_ids.iter().for_each(|c| add(c));
        if let Some(key) = &self.call_key {
            add(key);
            if let Some((_, value)) = key.split_once(':') {
                add(value);
                add(value.split('@').next().unwrap_or(value));
            }
        }
        if let Some(md) = &self.siprec {
            md.sessions.iter().for_each(|s| add(&s.id));
            md.sessions.iter().flat_map(|s| &s.sip_session_ids).for_each(|s| add(s));
            md.groups.iter().for_each(|g| add(&g.id));
            md.hints.values().for_each(|h| add(h));
        }
        out
    }

    pub fn reason(&self) -> Option<&str> {
        self.state_history.last().map(|c| c.reason.as_str())
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("metadata serializes")
    }

    pub fn from_json(data: &[u8]) -> Result<RecordingMeta, serde_json::Error> {
        serde_json::from_slice(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_time_ordered_and_parse_back() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let a = RecordingId::new(t);
        let b = RecordingId::new(t + time::Duration::seconds(1));
        assert!(a < b);
        assert_eq!(a.to_string().parse::<RecordingId>().unwrap(), a);
        assert_eq!(a.0.get_version_num(), 7);
    }

    #[test]
    fn control_characters_are_kept_escaped() {
        assert_eq!(escape_control("a\u{1b}[31mb\0c\n"), "a\\u{1b}[31mb\\u{0}c\\u{a}");
        assert_eq!(escape_control("Zoë (ok)"), "Zoë (ok)");
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut m =
            RecordingMeta::start(RecordingId::new(t), NodeId("n".into()), SourceKind::Plain, t, "udp:x".into(), "r");
        m.user_agent = Some("evil\u{1b}]0;pwned\u{7}".into());
        m.participants = vec![Participant { name: Some("\u{0}Alice".into()), ..Default::default() }];
        m.escape_control();
        let once = m.clone();
        m.escape_control();
        assert_eq!(m, once, "idempotent");
        assert!(!m.to_json().iter().any(|b| *b == 0x1b || *b == 0));
        assert_eq!(m.participants[0].name.as_deref(), Some("\\u{0}Alice"));
    }

    #[test]
    fn json_roundtrip_keeps_history() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let mut m = RecordingMeta {
            id: RecordingId::new(t),
            node_id: NodeId("n1".into()),
            source: SourceKind::Siprec,
            state: RecordingState::Active,
            state_history: vec![],
            started_at: t,
            ended_at: None,
            duration_ms: 0,
            direction: None,
            caller: Some("+15550100".into()),
            callee: None,
            call_ids: vec!["c1".into()],
            call_key: None,
            source_addr: "udp:127.0.0.1:5060".into(),
            user_agent: None,
            participants: vec![Participant { name: Some("Alice".into()), channel: Some(0), ..Default::default() }],
            streams: vec![],
            dtmf: vec![],
            siprec: None,
            audio: None,
            media_alarm: None,
        };
        m.transition(RecordingState::Active, t, "INVITE accepted");
        m.transition(RecordingState::Completed, t + time::Duration::seconds(5), "BYE");
        let back = RecordingMeta::from_json(&m.to_json()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.ended_at, Some(t + time::Duration::seconds(5)));
        assert_eq!(back.reason(), Some("BYE"));
    }
}
