//! What the recorder core asks its driver to do.

use std::net::SocketAddr;

use media::Codec;
use model::{RecordingId, RecordingMeta};
use sip_proto::Transmit;
use time::OffsetDateTime;

use crate::ports::MediaPort;

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

/// Metadata to persist while the call runs.
#[derive(Debug, Clone, PartialEq)]
pub enum RecordingEvent {
    Started(Box<RecordingMeta>),
    Updated(Box<RecordingMeta>),
}

impl RecordingEvent {
    pub fn meta(&self) -> &RecordingMeta {
        match self {
            RecordingEvent::Started(m) | RecordingEvent::Updated(m) => m,
        }
    }

    pub fn into_meta(self) -> Box<RecordingMeta> {
        match self {
            RecordingEvent::Started(m) | RecordingEvent::Updated(m) => m,
        }
    }
}

/// One thing for the driver to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Transmit(Transmit),
    Media(MediaCommand),
    /// Store `event`'s metadata durably, then report back with
    /// [`crate::Recorder::saved`] and the same `seq`: a new call is only
    /// answered 200 once its recording is on disk.
    Recording {
        event: RecordingEvent,
        seq: u64,
    },
}

/// What the media engine tells the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaNotice {
    /// No packets on any stream not on hold for the media timeout.
    Inactive { recording: RecordingId },
    /// The audio file could not be written.
    StorageFailed { recording: RecordingId, reason: String },
}
