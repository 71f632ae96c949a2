//! Why a call was refused and why a recording ended, as bounded label
//! values for metrics (never taken from a header: a label set must stay
//! small whatever the input).

use sip_proto::SipError;

/// Why a recording ended; the metric label and the start of the reason
/// stored in the recording's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndCause {
    /// The source hung up (BYE).
    Bye,
    /// The source cancelled the INVITE before the answer.
    Cancelled,
    /// The session timer (RFC 4028) ran out without a refresh.
    SessionTimer,
    /// No RTP for the inactivity timeout.
    MediaTimeout,
    /// The audio could not be written.
    StorageFailure,
    /// The recording's metadata could not be stored (or not in time).
    MetadataNotStored,
    /// Our 200 OK was never acknowledged.
    NoAck,
    /// The answer to our own offer (in the ACK) was refused: plain RTP
    /// where SRTP is required.
    AnswerRefused,
    /// An administrator ended the call.
    Administrator,
    /// The node stopped.
    Shutdown,
}

impl EndCause {
    pub fn label(self) -> &'static str {
        match self {
            EndCause::Bye => "bye",
            EndCause::Cancelled => "cancelled",
            EndCause::SessionTimer => "session_timer",
            EndCause::MediaTimeout => "media_timeout",
            EndCause::StorageFailure => "storage_failure",
            EndCause::MetadataNotStored => "metadata_not_stored",
            EndCause::NoAck => "no_ack",
            EndCause::AnswerRefused => "answer_refused",
            EndCause::Administrator => "administrator",
            EndCause::Shutdown => "shutdown",
        }
    }
}

/// A rule a message broke whose meaning is still clear: the message is
/// used, the case logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tolerated {
    /// An SDP line that is not `x=value` (e.g. a stray multipart boundary), skipped.
    SdpStrayLine,
    /// A BYE or ACK whose CSeq says INVITE: the request line is what counts.
    CSeqMethodMismatch,
}

impl Tolerated {
    pub fn label(self) -> &'static str {
        match self {
            Tolerated::SdpStrayLine => "sdp_stray_line",
            Tolerated::CSeqMethodMismatch => "cseq_method_mismatch",
        }
    }
}

/// The label of a refusal: the status code says most; a 503 says which
/// resource ran out.
pub fn refusal_label(err: &SipError) -> &'static str {
    match err.status.as_u16() {
        503 => match err.reason.as_ref() {
            "Draining" => "draining",
            "Storage unavailable" => "storage_unavailable",
            "Storage too slow" => "storage_slow",
            "Call limit reached" => "call_limit",
            "No media ports available" => "no_media_ports",
            "Out of file descriptors" => "out_of_descriptors",
            "Recording Not Stored" => "not_stored",
            _ => "unavailable",
        },
        400 => "bad_request",
        403 => "source_not_allowed",
        406 => "answer_not_acceptable",
        415 => "unsupported_body",
        420 => "bad_extension",
        422 => "session_interval_too_small",
        488 => "not_acceptable_media",
        513 => "message_too_large",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sip_proto::StatusCode;

    #[test]
    fn a_reason_built_from_input_never_becomes_a_label() {
        let e = SipError::with_reason(StatusCode::SERVICE_UNAVAILABLE, "anything \u{1b}[31m from a header");
        assert_eq!(refusal_label(&e), "unavailable");
        let e = SipError::with_reason(StatusCode::BAD_EXTENSION, "Bad Extension: x-whatever");
        assert_eq!(refusal_label(&e), "bad_extension");
        assert_eq!(
            refusal_label(&SipError::new(StatusCode::SERVICE_UNAVAILABLE, "Out of file descriptors")),
            "out_of_descriptors"
        );
    }
}
