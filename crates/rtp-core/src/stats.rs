//! Per-stream receive statistics (RFC 3550 §6.4.1 and §A.8 definitions).

use serde::{Deserialize, Serialize};

/// Counters and estimates of one received stream.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamStats {
    /// RTP packets accepted (after latching, parse and duplicate checks).
    pub packets: u64,
    pub bytes: u64,
    /// Packets the sender's sequence numbers say should have arrived.
    pub expected: u64,
    /// `expected - packets`, never negative.
    pub lost: u64,
    pub duplicates: u64,
    /// Packets that arrived after the reorder window had moved on.
    pub late: u64,
    /// Packets that were not RTP or not for this stream's codecs.
    pub malformed: u64,
    pub unknown_payload: u64,
    /// Packets from an address other than the latched source.
    pub foreign: u64,
    pub ssrc_changes: u32,
    /// Packets dropped for a sequence number far from the stream's.
    #[serde(default)]
    pub sequence_jumps: u64,
    /// Sender restarts (jumps confirmed by a second packet).
    #[serde(default)]
    pub sequence_restarts: u32,
    /// Interarrival jitter estimate in milliseconds.
    pub jitter_ms: f64,
    pub max_jitter_ms: f64,
    pub rtcp_packets: u64,
    /// Packets the sender says it sent (last RTCP SR), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_reported_packets: Option<u32>,
    /// Times the stream was re-placed on the recording's timeline at a
    /// packet's arrival (timestamp jump, SSRC change, a packet far early).
    #[serde(default)]
    pub reanchors: u32,
    /// Times its placement followed a sustained change of transit delay or
    /// settled on the least delayed packets (see the media crate's `PositionMapper`).
    #[serde(default)]
    pub timeline_shifts: u32,
}

impl StreamStats {
    /// Loss as a fraction of expected packets.
    pub fn loss_fraction(&self) -> f64 {
        if self.expected == 0 {
            0.0
        } else {
            self.lost as f64 / self.expected as f64
        }
    }
}

/// RFC 3550 §A.8 interarrival jitter estimator.
#[derive(Debug, Clone, Default)]
pub struct JitterEstimator {
    last_transit: Option<i64>,
    /// Jitter in timestamp units, ×16 (RFC 3550 fixed-point form).
    jitter_q4: i64,
}

impl JitterEstimator {
    /// `arrival` is the arrival time in timestamp units, `ts` the packet's
    /// (extended) RTP timestamp.
    pub fn update(&mut self, arrival: i64, ts: i64) {
        let transit = arrival - ts;
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter_q4 += d * 16 / 16 - ((self.jitter_q4 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    pub fn reset(&mut self) {
        self.last_transit = None;
    }

    /// Current estimate in timestamp units.
    pub fn jitter(&self) -> f64 {
        self.jitter_q4 as f64 / 16.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steady_stream_has_no_jitter_and_jittery_one_does() {
        let mut j = JitterEstimator::default();
        for i in 0..100 {
            j.update(i * 160, i * 160 + 5000);
        }
        assert_eq!(j.jitter(), 0.0);
        let mut j = JitterEstimator::default();
        for i in 0..500 {
            let wobble = if i % 2 == 0 { 40 } else { -40 };
            j.update(i * 160 + wobble, i * 160);
        }
        // Alternating ±40 gives |D| = 80 each packet: J converges to 80.
        assert!((j.jitter() - 80.0).abs() < 2.0, "{}", j.jitter());
    }
}
