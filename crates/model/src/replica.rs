//! A recording's replication state as data: its anti-entropy version and
//! fingerprint, the hour bucket it belongs to, and the outbox lanes. The
//! index keeps per-hour buckets of these up to date; the cluster crate
//! compares them between nodes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RecordingId;

/// Milliseconds per bucket (one hour) and buckets per day.
pub const HOUR_MS: i64 = 3_600_000;
pub const HOURS_PER_DAY: i64 = 24;

/// What a node holds of one recording.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "v", content = "sha256", rename_all = "kebab-case")]
pub enum Version {
    /// Metadata only; the audio (of this SHA-256, when known) is on another node.
    MetaOnly(Option<String>),
    /// Metadata and verified audio of this SHA-256 (none: a recording without audio).
    Audio(Option<String>),
    /// Deleted (retention or an administrator); nothing else may bring it back.
    Deleted,
}

impl Version {
    fn rank(&self) -> u8 {
        match self {
            Version::MetaOnly(_) => 0,
            Version::Audio(_) => 1,
            Version::Deleted => 2,
        }
    }

    /// Is `self` something a node holding `other` should take?
    pub fn supersedes(&self, other: &Version) -> bool {
        self.rank() > other.rank()
    }

    fn tag(&self) -> String {
        match self {
            Version::MetaOnly(s) => format!("m:{}", s.as_deref().unwrap_or("")),
            Version::Audio(s) => format!("a:{}", s.as_deref().unwrap_or("")),
            Version::Deleted => "d".to_owned(),
        }
    }
}

/// The 64-bit fingerprint of one (id, version).
pub fn fingerprint(id: RecordingId, version: &Version) -> u64 {
    let mut h = Sha256::new();
    h.update(id.0.as_bytes());
    h.update(version.tag().as_bytes());
    let d = h.finalize();
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Hour bucket of a recording started at `started_ms` (Unix ms).
pub fn hour_of(started_ms: i64) -> i64 {
    started_ms.div_euclid(HOUR_MS)
}

/// Count and XOR fingerprint of a bucket (an hour, or a day of hours).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub count: u64,
    pub fp: u64,
}

impl Bucket {
    /// Adds (or, applied again, removes) one item: XOR is its own inverse.
    pub fn toggle(&mut self, fp: u64, add: bool) {
        self.fp ^= fp;
        if add {
            self.count += 1;
        } else {
            self.count = self.count.saturating_sub(1);
        }
    }

    pub fn merge(&mut self, other: Bucket) {
        self.fp ^= other.fp;
        self.count += other.count;
    }
}

/// What a replication outbox item carries: a recording's metadata (sent at
/// once to every target) or its audio (at once, or in a scheduled window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lane {
    Meta,
    Audio,
}

impl Lane {
    pub fn as_i64(self) -> i64 {
        match self {
            Lane::Meta => 0,
            Lane::Audio => 1,
        }
    }

    pub fn from_i64(v: i64) -> Option<Lane> {
        match v {
            0 => Some(Lane::Meta),
            1 => Some(Lane::Audio),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Meta => "meta",
            Lane::Audio => "audio",
        }
    }
}

impl std::fmt::Display for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lowercase hex of a digest (how checksums appear in metadata and on the wire).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// SHA-256 of `data`, lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}
