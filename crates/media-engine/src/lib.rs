//! RTP ingest for callvault.
//!
//! - [`socket`]: batched `recvmmsg`/`sendmmsg` (the only `unsafe` code).
//! - [`ports`]: the RTP port range; allocation binds the sockets.
//! - [`shard`]: the pure state of one ingest thread (streams, recordings,
//!   timelines), driven on virtual time in tests.
//! - [`engine`]: ingest threads (one recording's streams on one thread,
//!   no locks on the hot path) and the hand-off to [`writer`].
//! - [`writer`]: appends committed audio and fdatasyncs it on a cadence.
//!
//! The engine takes [`media_control::MediaCommand`]s and reports
//! [`engine::EngineEvent`]s through a callback, so it does not depend on
//! any async runtime.

pub mod engine;
pub mod ports;
pub mod shard;
pub mod socket;
pub mod writer;

pub use engine::{EngineConfig, EngineEvent, EngineStats, MediaEngine, StatsSnapshot};
pub use ports::{PendingSockets, UdpPortPool};
pub use shard::{Shard, ShardConfig, ShardOutput, ShardSizes};
pub use socket::{RecvBatch, SendBatch};
