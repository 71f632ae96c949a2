//! Pure audio for callvault: codec facts ([`codec`]), per-stream decoding
//! to the recording's rate ([`decoder`]), encoding for the test client
//! ([`encoder`]), placing decoded audio on a wall-clock timeline so
//! channels stay aligned ([`timeline`]), the crash-safe WAV layout
//! ([`wav`]) and test signals ([`signal`]).
//!
//! A recording has one output rate; [`timeline::PositionMapper`] converts
//! each stream's RTP clock to it and [`decoder::StreamDecoder`] delivers
//! each codec's audio at it.
//!
//! Codec crates (why these: docs/dependencies.md): `audio-codec` for G.722
//! and the resampler (pure Rust), `opus-rs` for Opus (pure Rust, with
//! in-band FEC), and, behind the off-by-default `g729` feature, `g729-sys`
//! (a port of the GPL-3 bcg729: builds with it are GPL-bound).
#![forbid(unsafe_code)]

pub mod codec;
pub mod decoder;
pub mod encoder;
pub mod g711;
pub mod signal;
pub mod timeline;
pub mod wav;

pub use codec::Codec;
pub use decoder::StreamDecoder;
pub use encoder::{EncoderOptions, StreamEncoder};
pub use timeline::{Placement, PositionMapper, Slack, Timeline};
