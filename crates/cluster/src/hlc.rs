//! A hybrid logical clock (Kulkarni et al., "Logical Physical Clocks",
//! 2014): timestamps that follow wall-clock time but never go backwards and
//! order every event a node has seen before its own. Settings changed on
//! two nodes at once resolve by the larger stamp (last writer wins), with
//! the node id breaking exact ties, so every node picks the same winner.
//!
//! Written here rather than taken from `uhlc`: the clock is pure (the
//! wall-clock reading is an argument) so tests run on virtual time, and a
//! stamp is a small value that serialises as text in the index.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use model::NodeId;
use serde::{Deserialize, Serialize};

/// One stamp: milliseconds of wall time, a counter for events within the
/// same millisecond, and the node that made it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct Hlc {
    pub wall_ms: u64,
    pub counter: u32,
    pub node: NodeId,
}

impl Ord for Hlc {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.wall_ms, self.counter, &self.node).cmp(&(other.wall_ms, other.counter, &other.node))
    }
}

impl PartialOrd for Hlc {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Hlc {
    /// `0001764650000000.00000003@node-a`: sorts as text like the stamps do.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016}.{:08}@{}", self.wall_ms, self.counter, self.node)
    }
}

impl FromStr for Hlc {
    type Err = String;
    fn from_str(s: &str) -> Result<Hlc, String> {
        let (time, node) = s.split_once('@').ok_or_else(|| format!("not a clock stamp: {s:?}"))?;
        let (wall, counter) = time.split_once('.').ok_or_else(|| format!("not a clock stamp: {s:?}"))?;
        Ok(Hlc {
            wall_ms: wall.parse().map_err(|_| format!("bad wall time in {s:?}"))?,
            counter: counter.parse().map_err(|_| format!("bad counter in {s:?}"))?,
            node: NodeId(node.to_owned()),
        })
    }
}

impl From<Hlc> for String {
    fn from(h: Hlc) -> String {
        h.to_string()
    }
}

impl TryFrom<String> for Hlc {
    type Error = String;
    fn try_from(s: String) -> Result<Hlc, String> {
        s.parse()
    }
}

/// Why a remote stamp was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clock stamp from {node} is {ahead_ms} ms ahead of this node's clock (more than {max_ms} ms allowed)")]
pub struct ClockSkew {
    pub node: NodeId,
    pub ahead_ms: u64,
    pub max_ms: u64,
}

/// A node's clock.
#[derive(Debug, Clone)]
pub struct Clock {
    node: NodeId,
    last: (u64, u32),
    /// Remote stamps further ahead of our wall clock than this are refused
    /// (never re-stamped): a node with a wrong clock must not drag the
    /// cluster's time forward.
    max_skew_ms: u64,
}

impl Clock {
    pub fn new(node: NodeId, max_skew_ms: u64) -> Clock {
        Clock { node, last: (0, 0), max_skew_ms }
    }

    /// Restarts after the highest stamp stored (the clock is not persisted
    /// itself; the stamps it made are).
    pub fn resume_after(&mut self, stamp: &Hlc) {
        self.last = self.last.max((stamp.wall_ms, stamp.counter));
    }

    /// A stamp for a local event at wall time `now_ms`.
    pub fn now(&mut self, now_ms: u64) -> Hlc {
        self.last = if now_ms > self.last.0 { (now_ms, 0) } else { (self.last.0, self.last.1 + 1) };
        Hlc { wall_ms: self.last.0, counter: self.last.1, node: self.node.clone() }
    }

    /// Takes in a stamp seen from another node so later local stamps order
    /// after it.
    pub fn observe(&mut self, now_ms: u64, remote: &Hlc) -> Result<(), ClockSkew> {
        if remote.wall_ms > now_ms + self.max_skew_ms {
            return Err(ClockSkew {
                node: remote.node.clone(),
                ahead_ms: remote.wall_ms - now_ms,
                max_ms: self.max_skew_ms,
            });
        }
        self.last = self.last.max((remote.wall_ms, remote.counter));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: &str) -> NodeId {
        NodeId(n.into())
    }

    #[test]
    fn stamps_never_go_back_and_order_after_what_was_seen() {
        let mut a = Clock::new(node("a"), 5000);
        let s1 = a.now(1000);
        let s2 = a.now(1000);
        let s3 = a.now(999); // the wall clock stepped back
        assert!(s1 < s2 && s2 < s3);
        assert_eq!((s3.wall_ms, s3.counter), (1000, 2));
        let mut b = Clock::new(node("b"), 5000);
        b.observe(900, &s3).unwrap();
        let s4 = b.now(900);
        assert!(s4 > s3, "{s4} after {s3}");
    }

    #[test]
    fn ties_break_by_node_and_text_sorts_like_stamps() {
        let x = Hlc { wall_ms: 5, counter: 1, node: node("a") };
        let y = Hlc { wall_ms: 5, counter: 1, node: node("b") };
        assert!(x < y);
        assert!(x.to_string() < y.to_string());
        let z = Hlc { wall_ms: 12_345_678_901, counter: 0, node: node("a") };
        assert!(y.to_string() < z.to_string());
        assert_eq!(z.to_string().parse::<Hlc>().unwrap(), z);
        assert_eq!(serde_json::from_str::<Hlc>(&serde_json::to_string(&z).unwrap()).unwrap(), z);
        assert!("nonsense".parse::<Hlc>().is_err());
    }

    #[test]
    fn a_stamp_far_in_the_future_is_refused() {
        let mut a = Clock::new(node("a"), 5000);
        let future = Hlc { wall_ms: 100_000, counter: 0, node: node("skewed") };
        let err = a.observe(10_000, &future).unwrap_err();
        assert_eq!(err.ahead_ms, 90_000);
        assert_eq!(a.now(10_000).wall_ms, 10_000, "the clock did not jump");
    }
}
