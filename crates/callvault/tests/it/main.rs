//! callvault integration tests: real processes, real sockets, loopback only
//! (and `bounded_state`: the recorder core and a media shard wired together
//! on virtual time). One test binary (cf. ripgrep) so the suite links once.

mod access;
mod alerting;
mod bad_input;
mod baresip;
mod bounded_state;
mod browser;
mod calls;
mod cancel;
mod cluster;
mod codecs;
mod corpus;
mod failures;
mod harness;
mod operations;
mod proxy;
mod sip_tls;
mod sipp;
