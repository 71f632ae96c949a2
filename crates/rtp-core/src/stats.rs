//! Per-stream receive statistics (RFC 3550 §6.4.1 and §A.8 definitions).

pub use model::StreamStats;

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
