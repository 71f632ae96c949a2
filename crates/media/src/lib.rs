//! Pure audio for callvault: decoding ([`codec`]), placing decoded audio on
//! a wall-clock timeline so channels stay aligned ([`timeline`]), the
//! crash-safe WAV layout ([`wav`]) and test signals ([`signal`]).
//!
//! The design keeps room for codecs at other rates: a recording has one
//! output rate, and [`timeline::PositionMapper`] converts each stream's RTP
//! clock to it.
#![forbid(unsafe_code)]

pub mod codec;
pub mod g711;
pub mod signal;
pub mod timeline;
pub mod wav;

pub use codec::Codec;
pub use timeline::{Placement, PositionMapper, Slack, Timeline};
