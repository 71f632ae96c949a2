//! Authentication of the inter-node API with the cluster secret.
//!
//! Every request carries the sender's node id, the time, the SHA-256 its
//! body has (the empty string's for none) and an HMAC-SHA256, keyed with
//! the shared cluster secret, over all of them plus the method and the
//! path with query. The receiver recomputes it (in constant time), refuses
//! a request more than `max_skew` away from its own clock (a captured
//! request cannot be replayed later), and checks the body against the
//! declared digest as it reads it. Every inter-node operation is
//! idempotent, so a replay inside the window does no harm.
//!
//! The secret never crosses the wire. TLS (rustls) on the cluster port
//! protects the content on links between sites; see docs/cluster.md.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const HEADER_NODE: &str = "x-callvault-node";
pub const HEADER_TIME: &str = "x-callvault-time";
pub const HEADER_CONTENT: &str = "x-callvault-content-sha256";
pub const HEADER_SIGNATURE: &str = "x-callvault-signature";

/// Declared instead of a body digest for audio chunks, whose integrity the
/// whole file's SHA-256 (in the signed query) guarantees.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// SHA-256 of no body.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed {0} header")]
    Missing(&'static str),
    #[error("request time is {0} ms away from this node's clock")]
    Skew(i64),
    #[error("signature does not match (wrong cluster secret?)")]
    BadSignature,
}

/// The fields a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    pub node: &'a str,
    pub time_ms: i64,
    pub content_sha256: &'a str,
}

fn mac(secret: &[u8], s: &Signed) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    for part in [s.method, s.path_and_query, s.node, &s.time_ms.to_string(), s.content_sha256] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    m
}

/// The signature header value for a request.
pub fn sign(secret: &[u8], s: &Signed) -> String {
    crate::hex(&mac(secret, s).finalize().into_bytes())
}

/// Checks a request's signature and time; `Ok` means the sender knows the secret.
pub fn verify(secret: &[u8], s: &Signed, signature: &str, now_ms: i64, max_skew_ms: i64) -> Result<(), AuthError> {
    let skew = s.time_ms - now_ms;
    if skew.abs() > max_skew_ms {
        return Err(AuthError::Skew(skew));
    }
    let sig = unhex(signature).ok_or(AuthError::Missing(HEADER_SIGNATURE))?;
    mac(secret, s).verify_slice(&sig).map_err(|_| AuthError::BadSignature)
}

/// SHA-256 of a body, lowercase hex.
pub fn content_sha256(body: &[u8]) -> String {
    model::replica::sha256_hex(body)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(time_ms: i64) -> Signed<'static> {
        Signed {
            method: "PUT",
            path_and_query: "/cluster/v1/recordings/x/meta",
            node: "a",
            time_ms,
            content_sha256: EMPTY_SHA256,
        }
    }

    #[test]
    fn the_right_secret_passes_and_everything_else_fails() {
        let s = req(1_000_000);
        let sig = sign(b"s3cret", &s);
        assert_eq!(verify(b"s3cret", &s, &sig, 1_000_500, 300_000), Ok(()));
        assert_eq!(verify(b"wrong", &s, &sig, 1_000_500, 300_000), Err(AuthError::BadSignature));
        let other_path = Signed { path_and_query: "/cluster/v1/recordings/y/meta", ..s };
        assert_eq!(verify(b"s3cret", &other_path, &sig, 1_000_500, 300_000), Err(AuthError::BadSignature));
        let other_body = Signed { content_sha256: &"0".repeat(64), ..s };
        assert_eq!(verify(b"s3cret", &other_body, &sig, 1_000_500, 300_000), Err(AuthError::BadSignature));
        assert_eq!(verify(b"s3cret", &s, &sig, 1_000_000 + 400_000, 300_000), Err(AuthError::Skew(-400_000)));
        assert_eq!(verify(b"s3cret", &s, "zz", 1_000_000, 300_000), Err(AuthError::Missing(HEADER_SIGNATURE)));
        assert_eq!(content_sha256(b""), EMPTY_SHA256);
    }
}
