//! The recording server's SIP transaction user, as a pure state machine.
//!
//! [`Recorder`] owns the SIP transaction layer ([`sip_proto::Endpoint`])
//! and decides, for every request, what a recording server answers and
//! what it records: SIPREC sessions (RFC 7866), forked calls linked by
//! `x-refci` (Cisco BiB), plain INVITEs; re-INVITE/UPDATE with media or
//! metadata changes; BYE, CANCEL, INFO, OPTIONS; admission (allow-list,
//! call limit, storage health, drain mode). Its outputs are SIP bytes,
//! [`MediaCommand`]s for the media engine and [`RecordingEvent`]s to
//! persist. Sockets and files live in the driver; ports come through the
//! [`PortAllocator`] trait.
#![forbid(unsafe_code)]

pub mod config;
mod core;
pub mod output;
pub mod participants;
pub mod reasons;

pub use crate::core::{Counters, Now, Recorder, RecorderSizes};
pub use config::RecorderConfig;
pub use media_control::{
    BookkeepingAllocator, MediaCommand, MediaNotice, MediaPort, NoPort, PortAllocator, StreamId, StreamSpec,
};
pub use output::{Output, RecordingEvent};
