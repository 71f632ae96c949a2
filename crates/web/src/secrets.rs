//! Random secrets, their digests, and the signatures of playback links.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// 256 random bits from the OS, base64url: session ids, CSRF tokens, API
/// token secrets.
pub fn random_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    URL_SAFE_NO_PAD.encode(b)
}

/// A short random id (API token ids): 64 bits, hex.
pub fn random_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the OS random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares secrets in time independent of where they first differ.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Signs and checks playback links: HMAC-SHA256 over what the link grants
/// (recording, expiry, who made it) with a key every node shares.
#[derive(Clone)]
pub struct LinkSigner {
    key: [u8; 32],
}

impl std::fmt::Debug for LinkSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkSigner(..)")
    }
}

impl LinkSigner {
    /// A signer whose key is derived from `secret` (the cluster secret, or
    /// a node-local random key when the node is alone).
    pub fn new(secret: &[u8]) -> LinkSigner {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key");
        mac.update(b"callvault signed playback links v1");
        LinkSigner { key: mac.finalize().into_bytes().into() }
    }

    fn mac(&self, recording: &str, expires_s: i64, by: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key");
        for part in [recording.as_bytes(), &expires_s.to_be_bytes(), by.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    pub fn sign(&self, recording: &str, expires_s: i64, by: &str) -> String {
        URL_SAFE_NO_PAD.encode(self.mac(recording, expires_s, by).finalize().into_bytes())
    }

    pub fn verify(&self, recording: &str, expires_s: i64, by: &str, sig: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(sig) {
            Ok(raw) => self.mac(recording, expires_s, by).verify_slice(&raw).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_verify_only_what_was_signed() {
        let s = LinkSigner::new(b"cluster secret");
        let sig = s.sign("rec-1", 1_000, "alice");
        assert!(s.verify("rec-1", 1_000, "alice", &sig));
        assert!(!s.verify("rec-2", 1_000, "alice", &sig));
        assert!(!s.verify("rec-1", 1_001, "alice", &sig));
        assert!(!s.verify("rec-1", 1_000, "bob", &sig));
        assert!(!s.verify("rec-1", 1_000, "alice", "not base64!"));
        assert!(!LinkSigner::new(b"other").verify("rec-1", 1_000, "alice", &sig));
    }

    #[test]
    fn secrets_are_random_and_compare_whole() {
        assert_ne!(random_secret(), random_secret());
        assert_eq!(random_secret().len(), 43);
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
