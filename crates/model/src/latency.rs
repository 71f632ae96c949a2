//! A latency histogram with fixed buckets: plain counts, so pure cores can
//! keep one on virtual time and the node can publish it as a Prometheus
//! histogram.

use std::time::Duration;

/// Upper bounds of the buckets, seconds (the last one catches the rest;
/// `f64::MAX` is what the Prometheus encoder writes as `+Inf`).
pub const LATENCY_BOUNDS: [f64; 14] =
    [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, f64::MAX];

/// Observations per bucket (not cumulative) and their sum.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    pub counts: [u64; LATENCY_BOUNDS.len()],
    pub sum_micros: u64,
}

impl LatencyHistogram {
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BOUNDS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BOUNDS.len() - 1);
        self.counts[i] += 1;
        self.sum_micros = self.sum_micros.saturating_add(d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub fn sum_secs(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }

    /// (upper bound, observations in that bucket alone).
    pub fn buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        LATENCY_BOUNDS.iter().copied().zip(self.counts.iter().copied())
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts) {
            *a += b;
        }
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(150));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.counts[0], 2, "≤ 1 ms");
        assert_eq!(h.counts[7], 1, "≤ 200 ms");
        assert_eq!(h.counts[13], 1, "+Inf");
        assert_eq!(h.count(), 4);
        assert_eq!(h.sum_micros, 500 + 1000 + 150_000 + 60_000_000);
    }
}
