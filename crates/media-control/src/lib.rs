//! The vocabulary between the recorder core and the media engine: what
//! the core asks of the engine ([`MediaCommand`], one [`StreamSpec`] per
//! stream), what the engine tells the core ([`MediaNotice`]), and how the
//! core gets ports without touching sockets ([`PortAllocator`]).
//!
//! A crate of its own so the media engine (I/O) depends on this small
//! vocabulary instead of compiling the SIP stack, and the recorder core
//! (pure SIP) stays free of the engine.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use media::Codec;
use model::{RecordingId, RecordingMeta};
use time::OffsetDateTime;

/// Identifies one media stream across core and engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// Everything the media engine needs to receive one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    pub id: StreamId,
    pub recording: RecordingId,
    pub port: MediaPort,
    pub channel: u8,
    pub label: Option<String>,
    /// Payload type → codec, for every accepted audio codec.
    pub codecs: Vec<(u8, Codec)>,
    pub telephone_event: Option<u8>,
    pub comfort_noise: Option<u8>,
    pub remote: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// On hold: no media expected, inactivity does not count.
    pub held: bool,
    /// SRTP with this (the sender's) key, from the offer's `a=crypto`.
    pub srtp: Option<rtp_core::srtp::SrtpKey>,
}

impl StreamSpec {
    /// Codec names, preferred first (for the recording's metadata).
    pub fn codec_names(&self) -> Vec<String> {
        self.codecs.iter().map(|(_, c)| c.name().to_owned()).collect()
    }

    /// Every payload type the stream may carry.
    pub fn payload_types(&self) -> Vec<u8> {
        let mut pts: Vec<u8> = self.codecs.iter().map(|(pt, _)| *pt).collect();
        pts.extend(self.telephone_event);
        pts.extend(self.comfort_noise);
        pts
    }
}

/// Commands for the media engine.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaCommand {
    /// Open the recording's audio file and timeline.
    Start {
        recording: RecordingId,
        sample_rate: u32,
        channels: u16,
        started_at: OffsetDateTime,
    },
    AddStream(StreamSpec),
    /// The call was answered: the timeline starts now, unless media
    /// already arrived (the audio file was opened at the INVITE, so early
    /// media is kept; the wait for the metadata fsync is not recorded).
    Answered {
        recording: RecordingId,
    },
    /// New codecs, hold state or remote address for an existing stream.
    UpdateStream(StreamSpec),
    RemoveStream {
        stream: StreamId,
        recording: RecordingId,
    },
    /// A DTMF digit signalled in SIP (INFO), to be stamped on the timeline.
    Dtmf {
        recording: RecordingId,
        digit: char,
        duration_ms: u32,
        channel: u8,
    },
    /// Flush and close the audio; `meta` carries the final state.
    Stop {
        recording: RecordingId,
        meta: Box<RecordingMeta>,
    },
}

/// What the media engine tells the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaNotice {
    /// No packets on any stream not on hold for the media timeout.
    Inactive { recording: RecordingId },
    /// The audio file could not be written.
    StorageFailed { recording: RecordingId, reason: String },
    /// A stream (not on hold) received no RTP at all within the alarm
    /// time after it started; sent once per stream.
    NoRtp { recording: RecordingId, stream: StreamId },
}

/// An RTP port and its RTCP companion (RTP + 1, RFC 3550 §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MediaPort {
    pub rtp: u16,
    pub rtcp: u16,
}

/// Why no port pair could be allocated: the answer to the caller names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPort {
    /// Every pair of the range is in use (or held by other programs).
    RangeExhausted,
    /// The process is out of file descriptors (EMFILE/ENFILE).
    OutOfDescriptors,
}

impl NoPort {
    /// The reason phrase of the 503 that refuses the call.
    pub fn reason(self) -> &'static str {
        match self {
            NoPort::RangeExhausted => "No media ports available",
            NoPort::OutOfDescriptors => "Out of file descriptors",
        }
    }
}

pub trait PortAllocator: Send {
    /// A free port pair, already bound.
    fn allocate(&mut self) -> Result<MediaPort, NoPort>;
    /// Returns a pair; its sockets close when the media engine drops them.
    fn release(&mut self, port: MediaPort);
    /// Pairs handed out and not yet released.
    fn in_use(&self) -> usize;
    /// Pairs in the range.
    fn capacity(&self) -> usize;
}

/// An allocator over a port range that only keeps book (no sockets), for
/// tests of the core.
#[derive(Debug, Clone)]
pub struct BookkeepingAllocator {
    free: Vec<u16>,
    pairs: usize,
}

impl BookkeepingAllocator {
    pub fn new(first: u16, pairs: u16) -> BookkeepingAllocator {
        BookkeepingAllocator { free: (0..pairs).rev().map(|i| first + 2 * i).collect(), pairs: pairs as usize }
    }
}

impl PortAllocator for BookkeepingAllocator {
    fn allocate(&mut self) -> Result<MediaPort, NoPort> {
        self.free.pop().map(|rtp| MediaPort { rtp, rtcp: rtp + 1 }).ok_or(NoPort::RangeExhausted)
    }

    fn release(&mut self, port: MediaPort) {
        self.free.push(port.rtp);
    }

    fn in_use(&self) -> usize {
        self.pairs - self.free.len()
    }

    fn capacity(&self) -> usize {
        self.pairs
    }
}
