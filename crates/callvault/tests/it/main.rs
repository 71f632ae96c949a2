//! callvault integration tests: real processes, real sockets, loopback only.
//! One test binary (cf. ripgrep) so the suite links once.

mod bad_input;
mod calls;
mod cancel;
mod corpus;
mod failures;
mod harness;
mod sipp;
