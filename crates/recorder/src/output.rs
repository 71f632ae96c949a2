//! What the recorder core asks its driver to do.

use media_control::MediaCommand;
use model::RecordingMeta;
use sip_proto::Transmit;

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
