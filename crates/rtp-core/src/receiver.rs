//! One received RTP stream: latching, parsing, classification by payload
//! type, sequence/timestamp extension, the reorder window and statistics.
//!
//! ## Driver contract
//! For each datagram call [`StreamReceiver::on_rtp`]. On
//! [`Accept::SsrcChanged`] drain with [`StreamReceiver::pop_any`], then
//! [`StreamReceiver::restart`] and submit the same datagram again. After
//! each datagram (and on every tick) release packets with
//! [`StreamReceiver::pop`] until it returns `None`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::reorder::{PushOutcome, ReorderBuffer, Slot};
use crate::rtcp::{is_rtcp, summarize};
use crate::seq::{SeqExtender, TsExtender};
use crate::stats::{JitterEstimator, StreamStats};

/// Source latching (symmetric RTP, RFC 4961 spirit, as SBCs behind NAT
/// need): the first source is trusted; another source takes over only
/// after the latched one has been silent for `relatch_after`.
#[derive(Debug, Clone)]
pub struct Latch {
    source: Option<SocketAddr>,
    last: Option<Instant>,
    relatch_after: Duration,
}

impl Latch {
    pub fn new(relatch_after: Duration) -> Latch {
        Latch { source: None, last: None, relatch_after }
    }

    pub fn accept(&mut self, from: SocketAddr, now: Instant) -> bool {
        let ok = match (self.source, self.last) {
            (Some(s), _) if s == from => true,
            (Some(_), Some(last)) => now.saturating_duration_since(last) >= self.relatch_after,
            _ => true,
        };
        if ok {
            self.source = Some(from);
            self.last = Some(now);
        }
        ok
    }

    pub fn source(&self) -> Option<SocketAddr> {
        self.source
    }
}

/// Tuning of a receiver.
#[derive(Debug, Clone, Copy)]
pub struct ReceiverConfig {
    pub reorder_slots: usize,
    pub reorder_window: Duration,
    pub relatch_after: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            reorder_slots: 8,
            reorder_window: Duration::from_millis(60),
            relatch_after: Duration::from_millis(500),
        }
    }
}

/// Sequence jumps larger than this need a second packet to confirm them
/// (RFC 3550 §A.1 `MAX_DROPOUT`).
pub const MAX_DROPOUT: u64 = 3000;

/// A new SSRC takes the stream over only once the current one has been
/// silent this long (three 20 ms packets) and the new one has sent
/// consecutive sequence numbers: a sender that really restarted loses at
/// most this much, stray packets never replace the real audio.
pub const SSRC_QUIET: Duration = Duration::from_millis(60);

/// Why a datagram was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    Queued,
    /// A new SSRC that is sustained while the current one has stopped, or
    /// a sequence restart confirmed by two packets: drain,
    /// [`StreamReceiver::restart`], submit again.
    Restart,
    /// Another SSRC while the stream's own is still sending: dropped.
    ForeignSsrc,
    /// A sequence number far from the stream's; dropped unless the next
    /// packet confirms the jump.
    SequenceJump,
    Rtcp,
    NotRtp,
    Foreign,
    UnknownPayload,
    Duplicate,
    Late,
    Oversized,
}

/// Receive state of one stream.
#[derive(Debug)]
pub struct StreamReceiver {
    latch: Latch,
    rtcp_latch: Latch,
    seq: SeqExtender,
    ts: TsExtender,
    ssrc: Option<u32>,
    reorder: ReorderBuffer,
    jitter: JitterEstimator,
    /// Payload types this stream may carry (codecs, telephone-event, CN).
    allowed: [bool; 128],
    clock_rate: u32,
    epoch: Instant,
    /// Extended sequence range of the current SSRC.
    first_seq: Option<u64>,
    max_seq: Option<u64>,
    /// Expected packets of previous SSRCs.
    expected_before: u64,
    pub stats: StreamStats,
    last_packet: Option<Instant>,
    /// After a jump: the 16-bit sequence number that would confirm it.
    probation: Option<u16>,
    /// Another SSRC seen: it and the sequence number that would continue it.
    ssrc_candidate: Option<(u32, u16)>,
}

impl StreamReceiver {
    pub fn new(cfg: ReceiverConfig, clock_rate: u32, payload_types: &[u8], now: Instant) -> StreamReceiver {
        let mut r = StreamReceiver {
            latch: Latch::new(cfg.relatch_after),
            rtcp_latch: Latch::new(cfg.relatch_after),
            seq: SeqExtender::default(),
            ts: TsExtender::default(),
            ssrc: None,
            reorder: ReorderBuffer::new(cfg.reorder_slots, cfg.reorder_window, now),
            jitter: JitterEstimator::default(),
            allowed: [false; 128],
            clock_rate: clock_rate.max(1),
            epoch: now,
            first_seq: None,
            max_seq: None,
            expected_before: 0,
            stats: StreamStats::default(),
            last_packet: None,
            probation: None,
            ssrc_candidate: None,
        };
        r.set_payload_types(payload_types);
        r
    }

    /// Replaces the accepted payload types (codec change by re-INVITE).
    pub fn set_payload_types(&mut self, payload_types: &[u8]) {
        self.allowed = [false; 128];
        for &pt in payload_types {
            if pt < 128 {
                self.allowed[pt as usize] = true;
            }
        }
    }

    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// The sender moved to a codec with another RTP clock (a mid-call
    /// switch): jitter is measured afresh in the new clock's units.
    pub fn set_clock_rate(&mut self, clock_rate: u32) {
        if clock_rate.max(1) != self.clock_rate {
            self.clock_rate = clock_rate.max(1);
            self.jitter.reset();
        }
    }

    pub fn latched_source(&self) -> Option<SocketAddr> {
        self.latch.source()
    }

    /// When the last accepted packet arrived.
    pub fn last_packet(&self) -> Option<Instant> {
        self.last_packet
    }

    pub fn on_rtp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) -> Accept {
        if is_rtcp(data) {
            self.on_rtcp(now, from, data);
            return Accept::Rtcp;
        }
        let Ok(pkt) = rtp_types::RtpPacket::parse(data) else {
            self.stats.malformed += 1;
            return Accept::NotRtp;
        };
        if !self.allowed[pkt.payload_type() as usize] {
            self.stats.unknown_payload += 1;
            return Accept::UnknownPayload;
        }
        if !self.latch.accept(from, now) {
            self.stats.foreign += 1;
            return Accept::Foreign;
        }
        match self.ssrc {
            Some(s) if s != pkt.ssrc() => {
                let current_stopped = self.last_packet.is_none_or(|t| now.saturating_duration_since(t) >= SSRC_QUIET);
                let sustained = self.ssrc_candidate == Some((pkt.ssrc(), pkt.sequence_number()));
                if current_stopped && sustained {
                    self.ssrc_candidate = None;
                    self.stats.ssrc_changes += 1;
                    return Accept::Restart;
                }
                self.ssrc_candidate = Some((pkt.ssrc(), pkt.sequence_number().wrapping_add(1)));
                self.stats.foreign_ssrc += 1;
                return Accept::ForeignSsrc;
            }
            None => self.ssrc = Some(pkt.ssrc()),
            _ => self.ssrc_candidate = None,
        }
        if let Some(max) = self.max_seq {
            let candidate = self.seq.peek(pkt.sequence_number());
            if candidate.abs_diff(max) > MAX_DROPOUT {
                if self.probation == Some(pkt.sequence_number()) {
                    self.probation = None;
                    self.stats.sequence_restarts += 1;
                    return Accept::Restart;
                }
                self.probation = Some(pkt.sequence_number().wrapping_add(1));
                self.stats.sequence_jumps += 1;
                return Accept::SequenceJump;
            }
        }
        self.probation = None;
        let seq = self.seq.extend(pkt.sequence_number());
        let ts = self.ts.extend(pkt.timestamp());
        let outcome = loop {
            match self.reorder.push(now, seq, ts, pkt.payload_type(), pkt.marker_bit(), pkt.ssrc(), pkt.payload()) {
                PushOutcome::Full => {
                    // Cannot happen mid-drain from the caller's view: the
                    // buffer released its oldest; drop them as late rather
                    // than lose the newest.
                    while self.reorder.pop_any().is_some() {
                        self.stats.late += 1;
                    }
                }
                other => break other,
            }
        };
        match outcome {
            PushOutcome::Queued => {}
            PushOutcome::Duplicate => {
                self.stats.duplicates += 1;
                return Accept::Duplicate;
            }
            PushOutcome::TooLate => {
                self.stats.late += 1;
                return Accept::Late;
            }
            PushOutcome::Oversized => {
                self.stats.malformed += 1;
                return Accept::Oversized;
            }
            PushOutcome::Full => unreachable!("handled above"),
        }
        self.first_seq = Some(self.first_seq.map_or(seq, |f| f.min(seq)));
        self.max_seq = Some(self.max_seq.map_or(seq, |m| m.max(seq)));
        self.stats.packets += 1;
        self.stats.bytes += data.len() as u64;
        let arrival = (now.saturating_duration_since(self.epoch).as_secs_f64() * self.clock_rate as f64) as i64;
        self.jitter.update(arrival, ts as i64);
        let jitter_ms = self.jitter.jitter() * 1000.0 / self.clock_rate as f64;
        self.stats.jitter_ms = jitter_ms;
        self.stats.max_jitter_ms = self.stats.max_jitter_ms.max(jitter_ms);
        self.last_packet = Some(now);
        self.update_expected();
        Accept::Queued
    }

    fn update_expected(&mut self) {
        let current = match (self.first_seq, self.max_seq) {
            (Some(f), Some(m)) => m - f + 1,
            _ => 0,
        };
        self.stats.expected = self.expected_before + current;
        self.stats.lost = self.stats.expected.saturating_sub(self.stats.packets);
    }

    /// Handles RTCP arriving on the RTP port (rtcp-mux) or the RTCP port.
    pub fn on_rtcp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        if !self.rtcp_latch.accept(from, now) {
            self.stats.foreign += 1;
            return;
        }
        match summarize(data) {
            Some(s) => {
                self.stats.rtcp_packets += 1;
                if let Some((_, count)) = s.sender {
                    self.stats.sender_reported_packets = Some(count);
                }
            }
            None => self.stats.malformed += 1,
        }
    }

    /// Releases the next in-order packet (see [`crate::reorder`]).
    pub fn pop(&mut self, now: Instant) -> Option<&Slot> {
        self.reorder.pop(now)
    }

    /// Releases waiting packets regardless of gaps.
    pub fn pop_any(&mut self) -> Option<&Slot> {
        self.reorder.pop_any()
    }

    /// Starts over (new SSRC or sequence restart) after the caller drained the window.
    pub fn restart(&mut self) {
        self.expected_before = self.stats.expected;
        self.first_seq = None;
        self.max_seq = None;
        self.ssrc = None;
        self.seq.reset();
        self.ts.reset();
        self.jitter.reset();
        self.reorder.resync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(seq: u16, ts: u32, ssrc: u32, pt: u8) -> Vec<u8> {
        rtp_types::RtpPacketBuilder::new()
            .payload_type(pt)
            .sequence_number(seq)
            .timestamp(ts)
            .ssrc(ssrc)
            .payload([0xffu8; 160].as_slice())
            .write_vec()
            .unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn counts_loss_and_releases_in_order() {
        let t = Instant::now();
        let mut r = StreamReceiver::new(ReceiverConfig::default(), 8000, &[0], t);
        let mut released = vec![];
        for (i, seq) in [1u16, 2, 4, 3, 6].iter().enumerate() {
            let now = t + Duration::from_millis(20 * i as u64);
            assert_eq!(r.on_rtp(now, addr(1), &rtp(*seq, *seq as u32 * 160, 7, 0)), Accept::Queued);
            while let Some(s) = r.pop(now) {
                released.push(s.seq - 65536);
            }
        }
        let later = t + Duration::from_millis(500);
        while let Some(s) = r.pop(later) {
            released.push(s.seq - 65536);
        }
        assert_eq!(released, vec![1, 2, 3, 4, 6]);
        assert_eq!((r.stats.packets, r.stats.expected, r.stats.lost), (5, 6, 1));
    }

    #[test]
    fn latching_rejects_second_source_until_first_goes_quiet() {
        let t = Instant::now();
        let mut r = StreamReceiver::new(ReceiverConfig::default(), 8000, &[0], t);
        assert_eq!(r.on_rtp(t, addr(1), &rtp(1, 0, 7, 0)), Accept::Queued);
        assert_eq!(r.on_rtp(t, addr(2), &rtp(2, 160, 7, 0)), Accept::Foreign);
        assert_eq!(r.on_rtp(t + Duration::from_secs(1), addr(2), &rtp(3, 320, 7, 0)), Accept::Queued);
        assert_eq!(r.latched_source(), Some(addr(2)));
        assert_eq!(r.stats.foreign, 1);
    }

    #[test]
    fn garbage_and_unknown_payloads_are_counted_not_fatal() {
        let t = Instant::now();
        let mut r = StreamReceiver::new(ReceiverConfig::default(), 8000, &[0, 101], t);
        assert_eq!(r.on_rtp(t, addr(1), b"\x00\x01\x02"), Accept::NotRtp);
        assert_eq!(r.on_rtp(t, addr(1), &rtp(1, 0, 7, 18)), Accept::UnknownPayload);
        assert_eq!((r.stats.malformed, r.stats.unknown_payload), (1, 1));
    }

    #[test]
    fn a_wild_sequence_number_is_dropped_unless_confirmed() {
        let t = Instant::now();
        let mut r = StreamReceiver::new(ReceiverConfig::default(), 8000, &[0], t);
        r.on_rtp(t, addr(1), &rtp(100, 0, 7, 0));
        assert_eq!(r.on_rtp(t, addr(1), &rtp(40000, 160, 7, 0)), Accept::SequenceJump);
        // The stream carries on as if nothing happened.
        assert_eq!(r.on_rtp(t, addr(1), &rtp(101, 320, 7, 0)), Accept::Queued);
        assert_eq!(r.stats.sequence_jumps, 1);
        // Two consecutive packets confirm a sender restart.
        assert_eq!(r.on_rtp(t, addr(1), &rtp(9000, 480, 7, 0)), Accept::SequenceJump);
        assert_eq!(r.on_rtp(t, addr(1), &rtp(9001, 640, 7, 0)), Accept::Restart);
        while r.pop_any().is_some() {}
        r.restart();
        assert_eq!(r.on_rtp(t, addr(1), &rtp(9001, 640, 7, 0)), Accept::Queued);
        assert_eq!(r.stats.sequence_restarts, 1);
    }

    #[test]
    fn a_sustained_new_ssrc_after_the_old_one_stopped_restarts_sequence_space() {
        let t = Instant::now();
        let ms = |n| t + Duration::from_millis(n);
        let mut r = StreamReceiver::new(ReceiverConfig::default(), 8000, &[0], t);
        r.on_rtp(t, addr(1), &rtp(100, 0, 7, 0));
        r.on_rtp(ms(20), addr(1), &rtp(101, 160, 7, 0));
        // The old SSRC stopped at 20 ms; the new one sends from 40 ms on.
        assert_eq!(r.on_rtp(ms(40), addr(1), &rtp(5000, 999_999, 8, 0)), Accept::ForeignSsrc);
        assert_eq!(r.on_rtp(ms(60), addr(1), &rtp(5001, 999_999 + 160, 8, 0)), Accept::ForeignSsrc, "not quiet yet");
        let pkt = rtp(5002, 999_999 + 320, 8, 0);
        assert_eq!(r.on_rtp(ms(80), addr(1), &pkt), Accept::Restart);
        let mut n = 0;
        while r.pop_any().is_some() {
            n += 1;
        }
        assert_eq!(n, 2);
        r.restart();
        assert_eq!(r.on_rtp(ms(80), addr(1), &pkt), Accept::Queued);
        r.on_rtp(ms(100), addr(1), &rtp(5003, 999_999 + 480, 8, 0));
        assert_eq!((r.stats.packets, r.stats.expected, r.stats.lost, r.stats.ssrc_changes), (4, 4, 0, 1));
        assert_eq!(r.stats.foreign_ssrc, 2);
    }

    /// Regression (issue 8): 50 packets of a stray SSRC from the stream's
    /// own address, interleaved with the real ones, used to flip the
    /// stream on every packet. Now every real packet is kept.
    #[test]
    fn stray_ssrc_packets_interleaved_with_the_real_stream_are_dropped() {
        let t = Instant::now();
        let mut r = StreamReceiver::new(ReceiverConfig::default(), 8000, &[0], t);
        for i in 0..50u16 {
            let now = t + Duration::from_millis(20 * i as u64);
            assert_eq!(r.on_rtp(now, addr(1), &rtp(100 + i, 160 * i as u32, 7, 0)), Accept::Queued);
            let stray = rtp(9000 + i, 5_000_000 + 160 * i as u32, 0xbad, 0);
            assert_eq!(r.on_rtp(now + Duration::from_millis(5), addr(1), &stray), Accept::ForeignSsrc);
        }
        assert_eq!((r.stats.packets, r.stats.lost, r.stats.ssrc_changes, r.stats.foreign_ssrc), (50, 0, 0, 50));
    }
}
