//! Errors that carry their SIP status code.
//!
//! Like quinn's transport errors carry a wire code, a [`SipError`] knows the
//! status code and reason phrase it becomes on the wire, so a rejection found
//! deep in a parser turns into the right response without a lookup table.

use std::borrow::Cow;
use std::fmt;

use crate::StatusCode;

/// A request failure that maps onto one SIP final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipError {
    /// Status code of the response this error becomes.
    pub status: StatusCode,
    /// Reason phrase sent on the wire (kept short and specific).
    pub reason: Cow<'static, str>,
}

impl SipError {
    /// An error with a static reason phrase.
    pub const fn new(status: StatusCode, reason: &'static str) -> Self {
        SipError { status, reason: Cow::Borrowed(reason) }
    }

    /// An error with a reason phrase built at run time (e.g. naming a header).
    pub fn with_reason(status: StatusCode, reason: impl Into<String>) -> Self {
        let mut reason: String = reason.into();
        // Reason phrases must not contain CR/LF: they end up on the status line.
        reason.retain(|c| c != '\r' && c != '\n');
        SipError { status, reason: Cow::Owned(reason) }
    }

    /// 400 Bad Request with a reason describing what was malformed.
    pub fn bad_request(reason: impl Into<String>) -> Self {
        Self::with_reason(StatusCode::BAD_REQUEST, reason)
    }
}

impl fmt::Display for SipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.reason)
    }
}

impl std::error::Error for SipError {}

/// Why bytes could not be read as a SIP message at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty message")]
    Empty,
    #[error("message is not valid UTF-8 in its start line or headers")]
    NotUtf8,
    #[error("malformed start line")]
    StartLine,
    #[error("unsupported SIP version {0:?}")]
    Version(String),
    #[error("malformed header line {0}")]
    HeaderLine(usize),
    #[error("message has no end of headers")]
    Unterminated,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("body shorter than Content-Length ({declared} declared, {actual} present)")]
    Truncated { declared: usize, actual: usize },
    #[error("message of {0} bytes exceeds the limit")]
    TooLarge(usize),
}
