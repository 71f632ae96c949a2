//! SRTP (RFC 3711) with keys from SDES (RFC 4568 `a=crypto`): the suites
//! SBCs offer toward recorders, the master key that arrives inline in the
//! SDP, and the receive side that checks and decrypts each packet before
//! the stream sees it. The cipher work is the `libsrtp` crate (pure Rust
//! on RustCrypto; it keeps the rollover counter settable and supports MKI,
//! which joining a stream mid-call needs). Keys live in zeroized memory and
//! never appear in `Debug` output.

use base64::Engine as _;
use libsrtp::{MasterKey, ProtectionProfile, RecvSession, SendSession, StreamConfig};
use zeroize::Zeroizing;

/// An SDES crypto suite callvault records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    AeadAes128Gcm,
    AeadAes256Gcm,
}

impl SrtpSuite {
    pub const ALL: [SrtpSuite; 4] = [
        SrtpSuite::AesCm128HmacSha1_80,
        SrtpSuite::AesCm128HmacSha1_32,
        SrtpSuite::AeadAes128Gcm,
        SrtpSuite::AeadAes256Gcm,
    ];

    /// The suite named in an `a=crypto` line (RFC 4568 §6.2, RFC 7714 §12).
    pub fn from_sdes(name: &str) -> Option<SrtpSuite> {
        SrtpSuite::ALL.into_iter().find(|s| s.sdes_name().eq_ignore_ascii_case(name))
    }

    pub fn sdes_name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AeadAes128Gcm => "AEAD_AES_128_GCM",
            SrtpSuite::AeadAes256Gcm => "AEAD_AES_256_GCM",
        }
    }

    /// Master key and master salt lengths, bytes.
    fn lengths(self) -> (usize, usize) {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => (16, 14),
            SrtpSuite::AeadAes128Gcm => (16, 12),
            SrtpSuite::AeadAes256Gcm => (32, 12),
        }
    }

    fn profiles(self) -> (ProtectionProfile, ProtectionProfile) {
        match self {
            // SRTCP always carries the full 80-bit tag (RFC 3711 §5.2).
            SrtpSuite::AesCm128HmacSha1_80 => {
                (ProtectionProfile::Aes128CmHmacSha180, ProtectionProfile::Aes128CmHmacSha180)
            }
            SrtpSuite::AesCm128HmacSha1_32 => {
                (ProtectionProfile::Aes128CmHmacSha132, ProtectionProfile::Aes128CmHmacSha180)
            }
            SrtpSuite::AeadAes128Gcm => (ProtectionProfile::AeadAes128Gcm, ProtectionProfile::AeadAes128Gcm),
            SrtpSuite::AeadAes256Gcm => (ProtectionProfile::AeadAes256Gcm, ProtectionProfile::AeadAes256Gcm),
        }
    }
}

/// A master key and salt for one suite.
#[derive(Clone, PartialEq, Eq)]
pub struct SrtpKey {
    pub suite: SrtpSuite,
    key_salt: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for SrtpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpKey").field("suite", &self.suite).field("key", &"[REDACTED]").finish()
    }
}

impl SrtpKey {
    /// From the `inline:` key parameter of an `a=crypto` line: base64 of
    /// key || salt, optionally followed by `|lifetime` and `|MKI:length`
    /// (accepted; a single key without MKI is what SBCs send).
    pub fn from_inline(suite: SrtpSuite, key_params: &str) -> Option<SrtpKey> {
        let inline = key_params.trim().strip_prefix("inline:")?;
        let b64 = inline.split('|').next()?;
        let bytes = Zeroizing::new(base64::engine::general_purpose::STANDARD.decode(b64).ok()?);
        let (k, s) = suite.lengths();
        (bytes.len() == k + s).then(|| SrtpKey { suite, key_salt: bytes })
    }

    /// A fresh random key (for our answer: the recorder never sends media,
    /// but RFC 4568 wants a key in every accepted crypto line).
    pub fn random(suite: SrtpSuite) -> SrtpKey {
        let (k, s) = suite.lengths();
        let mut bytes = Zeroizing::new(vec![0u8; k + s]);
        getrandom::getrandom(&mut bytes).expect("the system's random source");
        SrtpKey { suite, key_salt: bytes }
    }

    /// The `inline:` key parameter for an `a=crypto` line.
    pub fn to_inline(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("inline:{}", base64::engine::general_purpose::STANDARD.encode(&*self.key_salt)))
    }

    fn config(&self) -> StreamConfig {
        let (k, _) = self.suite.lengths();
        let (rtp, rtcp) = self.suite.profiles();
        StreamConfig::new(vec![MasterKey::new(&self.key_salt[..k], &self.key_salt[k..], &None)], &rtp, &rtcp)
    }
}

/// Why a protected packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SrtpDrop {
    /// The authentication tag did not verify (wrong key, tampering).
    Authentication,
    /// A packet index seen before (replay window).
    Replay,
    /// Not a packet SRTP can process (too short, bad header).
    Invalid,
}

/// The receive side of one stream: every SSRC the sender uses.
pub struct SrtpReceiver {
    session: RecvSession,
}

impl std::fmt::Debug for SrtpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpReceiver")
    }
}

fn drop_reason(e: libsrtp::SrtpError) -> SrtpDrop {
    match e {
        libsrtp::SrtpError::Authentication => SrtpDrop::Authentication,
        libsrtp::SrtpError::InvalidPacketIndex => SrtpDrop::Replay,
        _ => SrtpDrop::Invalid,
    }
}

impl SrtpReceiver {
    pub fn new(key: &SrtpKey) -> SrtpReceiver {
        let mut session = RecvSession::new();
        session.add_stream(None, &key.config()).expect("suite lengths are checked when the key is made");
        SrtpReceiver { session }
    }

    /// The RTP packet inside an SRTP one.
    pub fn rtp(&mut self, data: &[u8]) -> Result<Vec<u8>, SrtpDrop> {
        self.session.rtp_unprotect(data.to_vec()).map_err(drop_reason)
    }

    /// The RTCP packet inside an SRTCP one.
    pub fn rtcp(&mut self, data: &[u8]) -> Result<Vec<u8>, SrtpDrop> {
        self.session.rtcp_unprotect(data.to_vec()).map_err(drop_reason)
    }
}

/// The send side (the test client and load generator).
pub struct SrtpSender {
    session: SendSession,
}

impl std::fmt::Debug for SrtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SrtpSender")
    }
}

impl SrtpSender {
    pub fn new(key: &SrtpKey) -> SrtpSender {
        let mut session = SendSession::new();
        session.add_stream(None, &key.config()).expect("suite lengths are checked when the key is made");
        SrtpSender { session }
    }

    pub fn rtp(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        self.session.rtp_protect(packet.to_vec()).ok()
    }

    pub fn rtcp(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        self.session.rtcp_protect(packet.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&[0x55; 160]);
        p
    }

    #[test]
    fn every_suite_round_trips_and_a_wrong_key_fails_authentication() {
        for suite in SrtpSuite::ALL {
            let key = SrtpKey::random(suite);
            let back = SrtpKey::from_inline(suite, &key.to_inline()).expect("inline form parses");
            assert_eq!(back, key);
            let (mut tx, mut rx) = (SrtpSender::new(&key), SrtpReceiver::new(&back));
            let mut wrong = SrtpReceiver::new(&SrtpKey::random(suite));
            for seq in 0..20 {
                let plain = rtp(seq);
                let protected = tx.rtp(&plain).unwrap();
                assert_ne!(protected[12..172], plain[12..], "{suite:?} encrypts");
                assert_eq!(rx.rtp(&protected).unwrap(), plain, "{suite:?}");
                assert_eq!(wrong.rtp(&protected), Err(SrtpDrop::Authentication), "{suite:?}");
                assert_eq!(rx.rtp(&protected), Err(SrtpDrop::Replay), "{suite:?} replay");
            }
        }
    }

    #[test]
    fn inline_keys_of_the_wrong_length_or_form_are_refused_and_never_printed() {
        let key = SrtpKey::random(SrtpSuite::AesCm128HmacSha1_80);
        assert!(SrtpKey::from_inline(SrtpSuite::AeadAes256Gcm, &key.to_inline()).is_none());
        assert!(SrtpKey::from_inline(SrtpSuite::AesCm128HmacSha1_80, "inline:not base64!").is_none());
        assert!(SrtpKey::from_inline(SrtpSuite::AesCm128HmacSha1_80, "uri:http://x").is_none());
        let with_lifetime = format!("{}|2^20|1:4", &*key.to_inline());
        assert!(SrtpKey::from_inline(SrtpSuite::AesCm128HmacSha1_80, &with_lifetime).is_some());
        let shown = format!("{key:?}");
        assert!(!shown.contains(&key.to_inline()[7..]), "{shown}");
        assert_eq!(SrtpSuite::from_sdes("aes_cm_128_hmac_sha1_32"), Some(SrtpSuite::AesCm128HmacSha1_32));
    }
}
