//! Pure SIP (RFC 3261) for callvault: message parsing and building, and the
//! transaction layer as a deterministic state machine ([`Endpoint`]).
//!
//! No sockets, threads, clocks or async here: the driver in the `callvault`
//! binary moves bytes and time in and out (see [`endpoint`] for the
//! contract). This keeps every protocol rule testable on virtual time.
#![forbid(unsafe_code)]

pub mod endpoint;
mod error;
pub mod header;
pub mod message;
mod method;
mod status;
pub mod uri;

pub use endpoint::{
    ClientTxId, ConnId, Endpoint, EndpointSizes, Event, Output, Peer, TimerConfig, Transmit, Transport, TxId,
};
pub use error::{ParseError, SipError};
pub use header::{Headers, MediaType, Params};
pub use message::{
    frame, parse, CSeq, CSeqMismatch, Framing, HeaderAccess, Message, Request, RequestEssentials, Response,
};
pub use method::Method;
pub use status::StatusCode;
pub use uri::{NameAddr, Uri, Via};
