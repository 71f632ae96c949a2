//! The recording timeline: channels stay aligned to the wall clock.
//!
//! Frame `n` of a recording is the instant `start + n / rate`. Every
//! decoded packet is written at the frame its RTP timestamp maps to (see
//! [`PositionMapper`]); frames nobody wrote stay silent, so loss, silence
//! suppression and a stream that starts late all keep the channels aligned.
//! A bounded window of uncommitted frames is the jitter buffer: the engine
//! commits frames older than the playout delay and appends them to the
//! recording file.
//!
//! Memory budget: `window_frames × channels × 2` bytes per recording
//! (1.5 s of 8 kHz stereo = 48 KiB), allocated once.

/// Outcome counts of one [`Timeline::write`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub written: usize,
    /// Samples for frames already committed (arrived after the playout delay).
    pub late: usize,
    /// Samples beyond the window (a timestamp far in the future).
    pub ahead: usize,
}

#[derive(Debug)]
pub struct Timeline {
    rate: u32,
    channels: usize,
    window: usize,
    ring: Vec<i16>,
    committed: u64,
}

impl Timeline {
    pub fn new(rate: u32, channels: usize, window_frames: usize) -> Timeline {
        let channels = channels.max(1);
        let window = window_frames.max(1);
        Timeline { rate, channels, window, ring: vec![0; window * channels], committed: 0 }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// Frames committed so far (the recording's length).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// Adds `samples` to `channel` starting at frame `pos` (saturating, so
    /// several streams sharing a channel mix).
    pub fn write(&mut self, channel: usize, pos: u64, samples: &[i16]) -> Placement {
        let ch = channel % self.channels;
        let mut p = Placement::default();
        let limit = self.committed + self.window as u64;
        for (i, &s) in samples.iter().enumerate() {
            let frame = pos + i as u64;
            if frame < self.committed {
                p.late += 1;
            } else if frame >= limit {
                p.ahead += 1;
            } else {
                let idx = (frame % self.window as u64) as usize * self.channels + ch;
                self.ring[idx] = self.ring[idx].saturating_add(s);
                p.written += 1;
            }
        }
        p
    }

    /// Appends frames `[committed, upto)` as interleaved little-endian PCM
    /// to `out` and clears them. `upto` is capped to the window.
    pub fn commit(&mut self, upto: u64, out: &mut Vec<u8>) -> u64 {
        let upto = upto.min(self.committed + self.window as u64);
        if upto <= self.committed {
            return 0;
        }
        let n = upto - self.committed;
        out.reserve(n as usize * self.channels * 2);
        for frame in self.committed..upto {
            let base = (frame % self.window as u64) as usize * self.channels;
            for s in &mut self.ring[base..base + self.channels] {
                out.extend_from_slice(&s.to_le_bytes());
                *s = 0;
            }
        }
        self.committed = upto;
        n
    }
}

/// Packets per window of [`PositionMapper`] (500 ms at 20 ms).
const DRIFT_WINDOW: u32 = 25;
/// Consecutive windows later than `drift` before the anchor follows: a
/// receiver starved of CPU for a second or two must not move it.
const DRIFT_WINDOWS: u8 = 6;

/// When a [`PositionMapper`] moves its anchor, in output frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slack {
    /// A packet earlier than predicted by more: re-anchor at it.
    pub early: u64,
    /// A packet later than predicted by more: a timestamp jump, re-anchor.
    pub jump: u64,
    /// Every packet of one window earlier by more: the anchor was set on a
    /// delayed packet (or the sender clock runs fast); move back. Lateness
    /// is one-sided noise (a packet is never read before it was sent), so
    /// one window of early evidence is enough.
    pub settle: u64,
    /// Every packet of [`DRIFT_WINDOWS`] windows later by more: follow.
    pub drift: u64,
    /// Every packet of one window later by more: follow at once (set it
    /// below the playout delay, beyond which packets are dropped as late).
    pub urgent: u64,
}

impl Slack {
    /// The engine's choice for `rate` Hz and a playout delay in ms: early
    /// 60 ms, jump 1 s, settle 5 ms, drift 40 ms, urgent ¾ of the playout delay.
    pub fn for_playout(rate: u32, playout_ms: u64) -> Slack {
        let ms = |v: u64| rate as u64 * v / 1000;
        let urgent = ms(playout_ms * 3 / 4).max(ms(20));
        Slack { early: ms(60), jump: ms(1000), settle: ms(5), drift: ms(40).min(urgent), urgent }
    }
}

/// Maps a stream's RTP timestamps to timeline frames.
///
/// The first packet anchors the stream at its arrival frame; later packets
/// land where their timestamp says. The anchor moves when the prediction
/// and the arrival disagree too much:
/// - a packet arriving *earlier* than predicted by more than `early_slack`
///   proves the anchor was set on a delayed packet (or the sender clock
///   runs fast): re-anchor at its arrival;
/// - one later by more than `late_slack` means a timestamp jump: same;
/// - when the least delayed packet of a window of [`DRIFT_WINDOW`] packets
///   is earlier than `slack.settle`, the anchor moves back by that much
///   (it was set on a delayed packet);
/// - when even the least delayed packet of a window is later than
///   `slack.urgent`, or of [`DRIFT_WINDOWS`] windows
///   in a row later than `slack.drift`, the path got slower (a delay step)
///   or the sender clock runs slow: the anchor moves forward by that much.
///   Without this, every later packet would fall behind the playout delay
///   and be dropped as late for the rest of the call.
#[derive(Debug, Clone)]
pub struct PositionMapper {
    anchor: Option<(u64, u64)>,
    /// Output samples per RTP timestamp unit, as a ratio.
    num: u64,
    den: u64,
    slack: Slack,
    /// Least lateness (arrival − prediction, frames) in the current window.
    window_min: i128,
    window_len: u32,
    /// Windows in a row whose least lateness passed `slack.drift`.
    late_windows: u8,
    pub reanchors: u32,
    pub drift_shifts: u32,
}

impl PositionMapper {
    /// `output_rate`/`clock_rate` converts timestamp units to frames; slacks in frames.
    pub fn new(output_rate: u32, clock_rate: u32, slack: Slack) -> PositionMapper {
        PositionMapper {
            anchor: None,
            num: output_rate as u64,
            den: clock_rate.max(1) as u64,
            slack,
            window_min: i128::MAX,
            window_len: 0,
            late_windows: 0,
            reanchors: 0,
            drift_shifts: 0,
        }
    }

    /// RTP clock rate the mapper converts from.
    pub fn clock_rate(&self) -> u32 {
        self.den as u32
    }

    /// A codec with another RTP clock took over (a mid-call switch, e.g.
    /// G.711 at 8000 to Opus at 48000): timestamps restart meaning, so the
    /// next packet anchors at its arrival like a new SSRC.
    pub fn set_clock(&mut self, clock_rate: u32) {
        if clock_rate.max(1) as u64 != self.den {
            self.den = clock_rate.max(1) as u64;
            self.reset();
        }
    }

    /// Forget the anchor (SSRC change).
    pub fn reset(&mut self) {
        self.anchor = None;
        self.restart_window();
    }

    fn restart_window(&mut self) {
        self.window_len = 0;
        self.window_min = i128::MAX;
        self.late_windows = 0;
    }

    /// Where `ts` would land under the current anchor, without moving it.
    pub fn predict(&self, ts: u64) -> Option<u64> {
        let (ats, aframe) = self.anchor?;
        let delta = ts as i128 - ats as i128;
        let predicted = aframe as i128 + delta * self.num as i128 / self.den as i128;
        (predicted >= 0).then_some(predicted as u64)
    }

    pub fn position(&mut self, ts: u64, arrival_frame: u64) -> u64 {
        let Some((ats, aframe)) = self.anchor else {
            self.anchor = Some((ts, arrival_frame));
            return arrival_frame;
        };
        let delta = ts as i128 - ats as i128;
        let predicted = aframe as i128 + delta * self.num as i128 / self.den as i128;
        let arrival = arrival_frame as i128;
        let reanchor = predicted < 0
            || predicted > arrival + self.slack.early as i128
            || predicted < arrival - self.slack.jump as i128;
        if reanchor {
            self.reanchors += 1;
            self.anchor = Some((ts, arrival_frame));
            self.restart_window();
            return arrival_frame;
        }
        self.window_min = self.window_min.min(arrival - predicted);
        self.window_len += 1;
        if self.window_len < DRIFT_WINDOW {
            return predicted as u64;
        }
        let shift = std::mem::replace(&mut self.window_min, i128::MAX);
        self.window_len = 0;
        let settle = shift < -(self.slack.settle as i128) && aframe as i128 + shift >= 0;
        if !settle {
            if shift <= self.slack.drift as i128 {
                self.late_windows = 0;
                return predicted as u64;
            }
            self.late_windows += 1;
            if shift <= self.slack.urgent as i128 && self.late_windows < DRIFT_WINDOWS {
                return predicted as u64;
            }
        }
        self.late_windows = 0;
        self.drift_shifts += 1;
        self.anchor = Some((ats, (aframe as i128 + shift) as u64));
        (predicted + shift) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(out: &[u8]) -> Vec<i16> {
        out.chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect()
    }

    #[test]
    fn gaps_are_silence_and_channels_interleave() {
        let mut t = Timeline::new(8000, 2, 100);
        t.write(0, 0, &[1, 2]);
        t.write(1, 3, &[9]);
        let mut out = vec![];
        assert_eq!(t.commit(4, &mut out), 4);
        assert_eq!(samples(&out), vec![1, 0, 2, 0, 0, 0, 0, 9]);
        // Committed frames are late now; the window wraps cleanly.
        assert_eq!(t.write(0, 3, &[5, 6]).late, 1);
        out.clear();
        t.commit(5, &mut out);
        assert_eq!(samples(&out), vec![6, 0]);
        assert_eq!(t.write(0, 500, &[1]).ahead, 1);
    }

    #[test]
    fn streams_in_one_channel_mix_with_saturation() {
        let mut t = Timeline::new(8000, 1, 10);
        t.write(0, 0, &[30000, 5]);
        t.write(2, 0, &[30000, 5]); // channel 2 of 1 folds into 0
        let mut out = vec![];
        t.commit(2, &mut out);
        assert_eq!(samples(&out), vec![i16::MAX, 10]);
    }

    #[test]
    fn mapper_follows_timestamps_and_reanchors_on_jumps() {
        let slack = Slack { early: 480, jump: 2400, settle: 40, drift: 320, urgent: 1200 };
        let mut m = PositionMapper::new(8000, 8000, slack);
        assert_eq!(m.position(1000, 50), 50);
        // Arrives a bit late (jitter): still placed by timestamp.
        assert_eq!(m.position(1160, 260), 210);
        // Lost packets in between do not move later ones.
        assert_eq!(m.position(1000 + 160 * 10, 1700), 1650);
        // A timestamp jump of an hour re-anchors at arrival.
        assert_eq!(m.position(1000 + 8000 * 3600, 1900), 1900);
        assert_eq!(m.reanchors, 1);
        // Earlier than possible by more than the slack: re-anchor earlier.
        assert_eq!(m.position(1000 + 8000 * 3600 + 8000, 9000), 9000);
        assert_eq!(m.reanchors, 2);
    }
}

#[cfg(test)]
mod drift_tests {
    use super::*;

    /// 20 ms packets at 8 kHz; `arrival(n)` gives packet n's arrival frame.
    fn run(m: &mut PositionMapper, packets: u64, ts_step: u64, arrival: impl Fn(u64) -> u64) -> Vec<(u64, u64)> {
        (0..packets).map(|n| (m.position(n * ts_step, arrival(n)), arrival(n))).collect()
    }

    fn mapper() -> PositionMapper {
        let slack = Slack::for_playout(8000, 200);
        assert_eq!(slack, Slack { early: 480, jump: 8000, settle: 40, drift: 320, urgent: 1200 });
        PositionMapper::new(8000, 8000, slack)
    }

    #[test]
    fn a_delay_step_is_followed_within_one_window() {
        let mut m = mapper();
        // 300 ms more transit delay from packet 100 on (a reroute, a buffering SBC).
        let placed = run(&mut m, 400, 160, |n| n * 160 + if n >= 100 { 2400 } else { 0 });
        assert_eq!(m.drift_shifts, 1);
        assert_eq!(m.reanchors, 0);
        // Before the step and from the end of the first window after it: placed at arrival.
        assert!(placed[..100].iter().all(|(p, a)| p == a));
        assert!(placed[150..].iter().all(|(p, a)| p == a), "{:?}", &placed[150..152]);
    }

    #[test]
    fn a_slow_sender_clock_stays_aligned_over_two_hours() {
        let mut m = mapper();
        // The sender's clock runs 100 ppm slow: each 20 ms of audio takes 20.002 ms.
        let packets = 2 * 3600 * 50;
        let placed = run(&mut m, packets, 160, |n| n * 160 + n * 160 / 10_000);
        let worst = placed.iter().map(|(p, a)| a.abs_diff(*p)).max().unwrap();
        assert!(worst <= 320 + 16, "misaligned by {worst} frames");
        assert!(m.drift_shifts > 10, "{}", m.drift_shifts);
    }

    #[test]
    fn an_anchor_set_on_a_delayed_packet_settles_back() {
        let mut m = mapper();
        // The first packet was read 30 ms late, the rest on time.
        let placed = run(&mut m, 100, 160, |n| n * 160 + if n == 0 { 240 } else { 0 });
        assert_eq!((m.drift_shifts, m.reanchors), (1, 0));
        assert_eq!(placed[1].0, 160 + 240, "placed by the first anchor at first");
        assert!(placed[30..].iter().all(|(p, a)| p == a), "then where it belongs");
    }

    #[test]
    fn a_receiver_starved_for_two_seconds_moves_nothing() {
        let mut m = mapper();
        // Every packet read 100 ms late for 2 s (the ingest thread had no CPU).
        let placed = run(&mut m, 500, 160, |n| n * 160 + if (100..200).contains(&n) { 800 } else { 0 });
        assert_eq!((m.drift_shifts, m.reanchors), (0, 0));
        assert!(placed.iter().enumerate().all(|(n, (p, _))| *p == n as u64 * 160));
    }

    #[test]
    fn jitter_alone_moves_nothing() {
        let mut m = mapper();
        // Up to 150 ms of scattered jitter; a few packets in each second are on time.
        let jitter: Vec<u64> = (0..3000u64).map(|n| if n % 10 == 0 { 0 } else { n * 7919 % 1200 }).collect();
        let placed = run(&mut m, 3000, 160, |n| n * 160 + jitter[n as usize]);
        assert_eq!((m.drift_shifts, m.reanchors), (0, 0));
        assert!(placed.iter().enumerate().all(|(n, (p, _))| *p == n as u64 * 160));
    }
}
