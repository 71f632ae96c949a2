//! RFC 4733 telephone-events turned into one record per key press.
//!
//! All packets of one event share its start timestamp; the duration grows;
//! the end packet (E bit) is usually sent three times. A new timestamp
//! before an end packet ends the previous event implicitly.

use serde::{Deserialize, Serialize};

/// One detected DTMF key press.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DtmfEvent {
    /// `0-9`, `*`, `#`, `A-D`, or `F` for flash.
    pub digit: char,
    /// Extended RTP timestamp of the event start.
    pub start_ts: u64,
    /// Duration in RTP timestamp units.
    pub duration: u32,
    /// Power level in -dBm0 (0..63).
    pub volume: u8,
}

/// The key of an RFC 4733 event code, for codes 0..=16.
pub fn event_digit(code: u8) -> Option<char> {
    Some(match code {
        0..=9 => (b'0' + code) as char,
        10 => '*',
        11 => '#',
        12..=15 => (b'A' + code - 12) as char,
        16 => 'F',
        _ => return None,
    })
}

#[derive(Debug, Clone, Default)]
pub struct DtmfDetector {
    current: Option<DtmfEvent>,
    last_ended: Option<u64>,
}

impl DtmfDetector {
    /// Feeds one telephone-event payload; returns an event when one ends.
    pub fn on_packet(&mut self, ts: u64, payload: &[u8]) -> Option<DtmfEvent> {
        if payload.len() < 4 {
            return None;
        }
        let digit = event_digit(payload[0])?;
        let end = payload[1] & 0x80 != 0;
        let volume = payload[1] & 0x3f;
        let duration = u16::from_be_bytes([payload[2], payload[3]]) as u32;
        if self.last_ended == Some(ts) {
            return None; // retransmitted end packet
        }
        let mut finished = None;
        if let Some(cur) = &self.current {
            if cur.start_ts != ts {
                finished = self.current.take();
            }
        }
        let cur = self.current.get_or_insert(DtmfEvent { digit, start_ts: ts, duration, volume });
        cur.duration = cur.duration.max(duration);
        if end {
            self.last_ended = Some(ts);
            let done = self.current.take();
            return finished.or(done);
        }
        finished
    }

    /// Ends an event left open (stream stopped without an end packet).
    pub fn flush(&mut self) -> Option<DtmfEvent> {
        self.current.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(event: u8, end: bool, dur: u16) -> [u8; 4] {
        let d = dur.to_be_bytes();
        [event, if end { 0x80 | 10 } else { 10 }, d[0], d[1]]
    }

    #[test]
    fn one_event_per_press_despite_triple_end() {
        let mut d = DtmfDetector::default();
        assert_eq!(d.on_packet(1000, &pkt(5, false, 160)), None);
        assert_eq!(d.on_packet(1000, &pkt(5, false, 320)), None);
        let e = d.on_packet(1000, &pkt(5, true, 800)).unwrap();
        assert_eq!((e.digit, e.start_ts, e.duration, e.volume), ('5', 1000, 800, 10));
        assert_eq!(d.on_packet(1000, &pkt(5, true, 800)), None);
        assert_eq!(d.on_packet(1000, &pkt(5, true, 800)), None);
    }

    #[test]
    fn missing_end_is_closed_by_next_event() {
        let mut d = DtmfDetector::default();
        d.on_packet(1000, &pkt(11, false, 400));
        let e = d.on_packet(5000, &pkt(10, false, 160)).unwrap();
        assert_eq!(e.digit, '#');
        assert_eq!(d.flush().unwrap().digit, '*');
        assert_eq!(d.on_packet(1, &[1, 2]), None);
        assert_eq!(d.on_packet(1, &pkt(200, true, 1)), None);
    }
}

#[cfg(test)]
mod sequence_tests {
    use super::*;

    #[test]
    fn full_event_sequence_from_a_real_sender() {
        let mut d = DtmfDetector::default();
        let mut got = vec![];
        for (dur, end) in
            [(160u16, false), (320, false), (480, false), (640, false), (800, true), (800, true), (800, true)]
        {
            let p = [1u8, if end { 0x8a } else { 0x0a }, (dur >> 8) as u8, dur as u8];
            if let Some(e) = d.on_packet(854642052, &p) {
                got.push(e);
            }
        }
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!((got[0].digit, got[0].duration), ('1', 800));
    }
}
