//! A small reorder window: packets leave in sequence order, a gap is given
//! up on once the oldest waiting packet has waited `window`.
//!
//! Memory budget: `capacity` slots of `MAX_PAYLOAD` bytes each, allocated
//! once per stream (8 × 1500 B = 12 KiB); nothing is allocated per packet.

use std::time::{Duration, Instant};

/// Largest payload kept (anything larger is not a voice packet).
pub const MAX_PAYLOAD: usize = 1500;

/// A packet waiting in, or released from, the window.
#[derive(Debug, Clone)]
pub struct Slot {
    pub seq: u64,
    pub ts: u64,
    pub pt: u8,
    pub marker: bool,
    pub ssrc: u32,
    pub arrival: Instant,
    pub payload: Vec<u8>,
    used: bool,
}

impl Slot {
    fn empty(now: Instant) -> Slot {
        Slot {
            seq: 0,
            ts: 0,
            pt: 0,
            marker: false,
            ssrc: 0,
            arrival: now,
            payload: Vec::with_capacity(MAX_PAYLOAD),
            used: false,
        }
    }
}

/// What [`ReorderBuffer::push`] did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Queued,
    /// Already released or already waiting.
    Duplicate,
    /// Older than what was already released: too late to use.
    TooLate,
    /// Payload larger than [`MAX_PAYLOAD`].
    Oversized,
    /// No free slot: drain with [`ReorderBuffer::pop`] and push again.
    Full,
}

#[derive(Debug)]
pub struct ReorderBuffer {
    slots: Vec<Slot>,
    window: Duration,
    /// Next sequence number to release.
    next: Option<u64>,
    /// Sequence numbers skipped as lost.
    lost: u64,
}

impl ReorderBuffer {
    pub fn new(capacity: usize, window: Duration, now: Instant) -> ReorderBuffer {
        ReorderBuffer { slots: (0..capacity.max(1)).map(|_| Slot::empty(now)).collect(), window, next: None, lost: 0 }
    }

    /// Number of sequence numbers given up as lost so far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Forgets the sequence position (SSRC change); waiting packets stay.
    pub fn resync(&mut self) {
        self.next = None;
        for s in &mut self.slots {
            s.used = false;
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        now: Instant,
        seq: u64,
        ts: u64,
        pt: u8,
        marker: bool,
        ssrc: u32,
        payload: &[u8],
    ) -> PushOutcome {
        if payload.len() > MAX_PAYLOAD {
            return PushOutcome::Oversized;
        }
        if let Some(next) = self.next {
            if seq < next {
                return PushOutcome::TooLate;
            }
        }
        if self.slots.iter().any(|s| s.used && s.seq == seq) {
            return PushOutcome::Duplicate;
        }
        let idx = match self.slots.iter().position(|s| !s.used) {
            Some(i) => i,
            None => {
                // Full: stop waiting for the gap so `pop` releases at once;
                // the caller drains and pushes again.
                let oldest = self.min_used().expect("full buffer has packets");
                let target = self.slots[oldest].seq;
                if let Some(next) = self.next {
                    if target > next {
                        self.lost += target - next;
                    }
                }
                self.next = Some(target);
                return PushOutcome::Full;
            }
        };
        let s = &mut self.slots[idx];
        s.seq = seq;
        s.ts = ts;
        s.pt = pt;
        s.marker = marker;
        s.ssrc = ssrc;
        s.arrival = now;
        s.payload.clear();
        s.payload.extend_from_slice(payload);
        s.used = true;
        if self.next.is_none() {
            self.next = Some(seq);
        }
        PushOutcome::Queued
    }

    fn min_used(&self) -> Option<usize> {
        self.slots.iter().enumerate().filter(|(_, s)| s.used).min_by_key(|(_, s)| s.seq).map(|(i, _)| i)
    }

    /// Releases the next packet if it is in order, or if the gap before the
    /// oldest waiting packet has been waited for long enough. The slot's
    /// contents are valid until the next call on this buffer.
    pub fn pop(&mut self, now: Instant) -> Option<&Slot> {
        let idx = self.min_used()?;
        let next = self.next?;
        let seq = self.slots[idx].seq;
        let waited = now.saturating_duration_since(self.oldest_arrival()?);
        if seq != next && waited < self.window {
            return None;
        }
        if seq > next {
            self.lost += seq - next;
        }
        self.next = Some(seq + 1);
        self.slots[idx].used = false;
        Some(&self.slots[idx])
    }

    /// Releases everything regardless of gaps (end of stream).
    pub fn pop_any(&mut self) -> Option<&Slot> {
        let idx = self.min_used()?;
        let seq = self.slots[idx].seq;
        if let Some(next) = self.next {
            if seq > next {
                self.lost += seq - next;
            }
        }
        self.next = Some(seq + 1);
        self.slots[idx].used = false;
        Some(&self.slots[idx])
    }

    fn oldest_arrival(&self) -> Option<Instant> {
        self.slots.iter().filter(|s| s.used).map(|s| s.arrival).min()
    }

    pub fn is_empty(&self) -> bool {
        !self.slots.iter().any(|s| s.used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(b: &mut ReorderBuffer, now: Instant, seq: u64) -> PushOutcome {
        b.push(now, seq, seq * 160, 0, false, 1, &[seq as u8])
    }

    fn drain(b: &mut ReorderBuffer, now: Instant) -> Vec<u64> {
        let mut out = vec![];
        while let Some(s) = b.pop(now) {
            out.push(s.seq);
        }
        out
    }

    #[test]
    fn reorders_within_window() {
        let t = Instant::now();
        let mut b = ReorderBuffer::new(8, Duration::from_millis(60), t);
        push(&mut b, t, 10);
        assert_eq!(drain(&mut b, t), vec![10]);
        push(&mut b, t, 12);
        assert_eq!(drain(&mut b, t), Vec::<u64>::new(), "11 may still come");
        push(&mut b, t + Duration::from_millis(10), 11);
        assert_eq!(drain(&mut b, t + Duration::from_millis(10)), vec![11, 12]);
        assert_eq!(b.lost(), 0);
        assert_eq!(push(&mut b, t, 11), PushOutcome::TooLate);
    }

    #[test]
    fn gives_up_on_gap_after_window() {
        let t = Instant::now();
        let mut b = ReorderBuffer::new(8, Duration::from_millis(60), t);
        push(&mut b, t, 1);
        drain(&mut b, t);
        push(&mut b, t, 4);
        assert!(drain(&mut b, t + Duration::from_millis(59)).is_empty());
        assert_eq!(drain(&mut b, t + Duration::from_millis(60)), vec![4]);
        assert_eq!(b.lost(), 2);
    }

    #[test]
    fn full_buffer_stops_waiting() {
        let t = Instant::now();
        let mut b = ReorderBuffer::new(2, Duration::from_secs(10), t);
        push(&mut b, t, 1);
        drain(&mut b, t);
        push(&mut b, t, 5);
        push(&mut b, t, 6);
        assert_eq!(push(&mut b, t, 7), PushOutcome::Full);
        assert_eq!(drain(&mut b, t), vec![5, 6]);
        assert_eq!(push(&mut b, t, 7), PushOutcome::Queued);
        assert_eq!(b.lost(), 3);
    }

    #[test]
    fn duplicates_are_refused() {
        let t = Instant::now();
        let mut b = ReorderBuffer::new(4, Duration::from_millis(60), t);
        push(&mut b, t, 5);
        push(&mut b, t, 7);
        assert_eq!(push(&mut b, t, 7), PushOutcome::Duplicate);
        drain(&mut b, t);
        assert_eq!(push(&mut b, t, 5), PushOutcome::TooLate);
    }
}
