//! Settings of the recording transaction user.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use model::NodeId;
use sip_proto::TimerConfig;

/// What the recorder core needs to know about its node.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub node_id: NodeId,
    /// Networks allowed to send recording sessions; empty allows all.
    pub allowed_sources: Vec<IpNet>,
    /// New recordings refused with 503 beyond this many active ones (0 = no limit).
    pub max_calls: usize,
    /// Refuse plain RTP offers (488): SRTP only.
    pub srtp_required: bool,
    /// Highest rate a recording is written at: a call whose accepted
    /// codecs include a wideband one (G.722, Opus) is written at this
    /// rate (8000 or 16000), every other call at 8000.
    pub max_sample_rate: u32,
    /// Address put in SDP and Contact when the request does not name ours.
    pub advertised_ip: Option<IpAddr>,
    /// Used when neither the config nor the Request-URI gives an address.
    pub fallback_ip: IpAddr,
    /// Local SIP addresses per transport, for Contact and Via.
    pub sip_udp: Option<SocketAddr>,
    pub sip_tcp: Option<SocketAddr>,
    pub sip_tls: Option<SocketAddr>,
    /// Retry-After seconds on 503.
    pub retry_after_secs: u32,
    /// Smallest Session-Expires accepted (RFC 4028 Min-SE).
    pub min_session_expires: u32,
    pub timers: TimerConfig,
    pub server_name: String,
    /// A leg that never sent its ACK, or a stream with no packets for this
    /// long, ends the recording (the media engine enforces the latter).
    pub media_timeout: Duration,
    /// An INVITE whose recording metadata is not on disk after this long
    /// is refused with 503 (storage too slow to promise a recording).
    pub save_timeout: Duration,
    /// New INVITEs get 503 while this many answers already wait for their
    /// metadata save: when the disk cannot keep up, calls go to another
    /// recorder at once instead of queueing saves (and memory) here.
    pub max_pending_answers: usize,
}

impl RecorderConfig {
    pub fn new(node_id: NodeId) -> RecorderConfig {
        RecorderConfig {
            node_id,
            allowed_sources: Vec::new(),
            srtp_required: false,
            max_sample_rate: 16000,
            max_calls: 0,
            advertised_ip: None,
            fallback_ip: IpAddr::from([127, 0, 0, 1]),
            sip_udp: None,
            sip_tcp: None,
            sip_tls: None,
            retry_after_secs: 60,
            min_session_expires: 90,
            timers: TimerConfig::default(),
            server_name: concat!("callvault/", env!("CARGO_PKG_VERSION")).to_owned(),
            media_timeout: Duration::from_secs(30),
            save_timeout: Duration::from_secs(4),
            max_pending_answers: 512,
        }
    }
}
