//! The cluster's logic, pure and tested on virtual time: membership and
//! the job leader ([`membership`]), the rules of the replication outbox
//! ([`outbox`]), anti-entropy digests and what to pull ([`antientropy`]),
//! cluster settings with last-writer-wins on a hybrid logical clock
//! ([`settings`], [`hlc`]), and the authentication of the inter-node API
//! ([`auth`]). Sockets, files and clocks live in the binary, which drives
//! these with what it reads and the time it is.
//!
//! This crate sits on `model` only: never on the SIP stack or the media
//! engine.
#![forbid(unsafe_code)]

pub mod antientropy;
pub mod auth;
pub mod hlc;
pub mod membership;
pub mod outbox;
pub mod settings;

pub use antientropy::{Bucket, Pull, Version};
pub use hlc::{Clock, Hlc};
pub use membership::{Load, Membership, NodeStatus, PeerView, Timing};
pub use outbox::{Backoff, Lane, Schedule, TokenBucket, Window};
pub use settings::Setting;

pub use model::replica::hex;
