//! Extending 16-bit sequence numbers and 32-bit timestamps to 64 bits, so
//! wrap-around never confuses ordering (cf. str0m `rtp/id.rs`).

/// Extends RTP sequence numbers (RFC 3550 §A.1 without the probation).
#[derive(Debug, Clone, Default)]
pub struct SeqExtender {
    last: Option<u64>,
}

impl SeqExtender {
    /// The extended value of `seq`: the candidate closest to the last one.
    pub fn extend(&mut self, seq: u16) -> u64 {
        let ext = match self.last {
            None => seq as u64 + (1 << 16), // room to go backwards from the start
            Some(last) => closest(last, seq as u64, 16),
        };
        if self.last.is_none_or(|l| ext > l) {
            self.last = Some(ext);
        }
        ext
    }

    /// The extended value `seq` would get, without recording it.
    pub fn peek(&self, seq: u16) -> u64 {
        match self.last {
            None => seq as u64 + (1 << 16),
            Some(last) => closest(last, seq as u64, 16),
        }
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Extends RTP timestamps the same way.
#[derive(Debug, Clone, Default)]
pub struct TsExtender {
    last: Option<u64>,
}

impl TsExtender {
    pub fn extend(&mut self, ts: u32) -> u64 {
        let ext = match self.last {
            None => ts as u64 + (1 << 32),
            Some(last) => closest(last, ts as u64, 32),
        };
        if self.last.is_none_or(|l| ext > l) {
            self.last = Some(ext);
        }
        ext
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// The value with low `bits` equal to `value` closest to `last`.
fn closest(last: u64, value: u64, bits: u32) -> u64 {
    let span = 1u64 << bits;
    let base = last & !(span - 1);
    let candidates = [base.wrapping_sub(span), base, base + span];
    candidates
        .into_iter()
        .filter(|c| *c <= u64::MAX - span)
        .map(|c| c + value)
        .min_by_key(|c| c.abs_diff(last))
        .expect("at least one candidate")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_wraps_forward_and_tolerates_reordering() {
        let mut e = SeqExtender::default();
        let a = e.extend(65534);
        let b = e.extend(65535);
        let c = e.extend(0);
        let d = e.extend(65533); // late packet from before the wrap
        let f = e.extend(1);
        assert_eq!(b, a + 1);
        assert_eq!(c, a + 2);
        assert_eq!(d, a - 1);
        assert_eq!(f, a + 3);
    }

    #[test]
    fn timestamp_wraps() {
        let mut e = TsExtender::default();
        let a = e.extend(u32::MAX - 159);
        let b = e.extend(0);
        assert_eq!(b - a, 160);
        let c = e.extend(u32::MAX - 319); // one packet late, before the wrap
        assert_eq!(a - c, 160);
    }
}
