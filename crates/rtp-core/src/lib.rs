//! Pure RTP/RTCP receive logic for callvault's media engine: everything
//! between "a datagram arrived at instant `now` from address `a`" and "this
//! payload, in order, with this extended timestamp, should be decoded".
//!
//! No sockets and no clock: the engine passes `now` in. Memory per stream
//! is bounded (see [`reorder`]); nothing allocates per packet.
#![forbid(unsafe_code)]

pub mod dtmf;
pub mod receiver;
pub mod reorder;
pub mod rtcp;
pub mod seq;
pub mod srtp;
pub mod stats;

pub use dtmf::{DtmfDetector, DtmfEvent};
pub use receiver::{Accept, Latch, ReceiverConfig, StreamReceiver};
pub use reorder::Slot;
pub use stats::StreamStats;
