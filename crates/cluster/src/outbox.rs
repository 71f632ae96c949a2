//! The rules of the replication outbox, as pure functions: when an item is
//! due again after a failure, when a scheduled target's window is open,
//! and how fast a capped link may send.
//!
//! An outbox item is (target, lane, recording). The *meta* lane carries a
//! recording's metadata and is always due at once, whatever the target's
//! schedule (search on every node lists a recording immediately); the
//! *audio* lane follows, at once for a continuous target or inside the
//! windows of a scheduled one. An item leaves the queue only when the
//! target confirmed a verified copy; failures are retried with capped
//! exponential backoff and jitter, for ever (the target is expected back).

use std::str::FromStr;
use std::time::{Duration, Instant};

pub use model::replica::Lane;

/// Retry timing: `base · 2^(attempts−1)`, capped at `max`, then a random
/// part of up to a quarter added (jitter, so that many items failing
/// together do not all retry in the same instant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

impl Backoff {
    /// How long to wait after the `attempts`-th failure in a row.
    pub fn delay(&self, attempts: u32, rng: &mut fastrand::Rng) -> Duration {
        let exp = attempts.saturating_sub(1).min(30);
        let plain = self.base.saturating_mul(1u32 << exp.min(20)).min(self.max);
        let jitter_ms = rng.u64(0..=plain.as_millis() as u64 / 4);
        plain + Duration::from_millis(jitter_ms)
    }
}

/// A daily window in local time, `[start, end)` in minutes after midnight;
/// a window whose end is before its start runs over midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start_min: u16,
    pub end_min: u16,
}

impl Window {
    pub fn contains(&self, minute: u16) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute)
        } else {
            minute >= self.start_min || minute < self.end_min
        }
    }
}

impl FromStr for Window {
    type Err = String;
    /// `01:00-05:00`, `22:30-06:00`.
    fn from_str(s: &str) -> Result<Window, String> {
        let bad = || format!("replication window {s:?} is not HH:MM-HH:MM");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let minutes = |t: &str| -> Result<u16, String> {
            let (h, m) = t.trim().split_once(':').ok_or_else(bad)?;
            let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
            if h > 24 || m > 59 || (h == 24 && m != 0) {
                return Err(bad());
            }
            Ok(h * 60 + m)
        };
        let (start_min, end_min) = (minutes(a)?, minutes(b)?);
        if start_min == end_min {
            return Err(format!("replication window {s:?} is empty"));
        }
        Ok(Window { start_min, end_min: if end_min == 1440 { 0 } else { end_min } })
    }
}

/// When a target takes audio.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// At once.
    Continuous,
    /// Only inside these daily windows of local time in `zone`.
    Windows { windows: Vec<Window>, zone: jiff::tz::TimeZone },
}

impl Schedule {
    /// `windows` like `["01:00-05:00"]` in the IANA time zone `zone`
    /// (e.g. `Europe/Berlin`); no windows means continuous.
    pub fn parse(windows: &[String], zone: &str) -> Result<Schedule, String> {
        if windows.is_empty() {
            return Ok(Schedule::Continuous);
        }
        let zone = jiff::tz::TimeZone::get(zone).map_err(|e| format!("time zone {zone:?}: {e}"))?;
        let windows = windows.iter().map(|w| w.parse()).collect::<Result<Vec<Window>, String>>()?;
        Ok(Schedule::Windows { windows, zone })
    }

    /// May audio be sent at `now` (Unix milliseconds)?
    pub fn is_open(&self, now_ms: i64) -> bool {
        match self {
            Schedule::Continuous => true,
            Schedule::Windows { windows, zone } => {
                let Ok(ts) = jiff::Timestamp::from_millisecond(now_ms) else { return false };
                let local = ts.to_zoned(zone.clone());
                let minute = local.hour() as u16 * 60 + local.minute() as u16;
                windows.iter().any(|w| w.contains(minute))
            }
        }
    }

    /// Is `lane` due for this target at `now`? Metadata always is.
    pub fn allows(&self, lane: Lane, now_ms: i64) -> bool {
        lane == Lane::Meta || self.is_open(now_ms)
    }
}

/// A byte-rate cap: `rate` bytes per second with a burst of `burst` bytes.
/// [`TokenBucket::take`] says how long to wait before sending a chunk.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(bytes_per_sec: u64, now: Instant) -> TokenBucket {
        let rate = bytes_per_sec.max(1) as f64;
        // A quarter second of traffic: smooth, yet chunks of 64 KiB pass on slow links.
        let burst = (rate / 4.0).max(64.0 * 1024.0);
        TokenBucket { rate, burst, tokens: burst, last: now }
    }

    /// The largest send that never waits on a full bucket: the chunk size
    /// to use on a capped link, so the cap holds over seconds, not minutes.
    pub fn burst(&self) -> u64 {
        self.burst as u64
    }

    /// Takes `n` bytes worth of tokens; returns how long to wait before
    /// sending them (zero when the bucket had enough).
    pub fn take(&mut self, now: Instant, n: u64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let b = Backoff { base: Duration::from_secs(1), max: Duration::from_secs(60) };
        let mut rng = fastrand::Rng::with_seed(7);
        let d: Vec<Duration> = (1..=10).map(|n| b.delay(n, &mut rng)).collect();
        for (n, d) in d.iter().enumerate() {
            let plain = Duration::from_secs(1 << n.min(20)).min(Duration::from_secs(60));
            assert!(*d >= plain && *d <= plain + plain / 4, "attempt {}: {d:?}", n + 1);
        }
        let again: Vec<Duration> = (1..=10).map(|n| b.delay(n, &mut fastrand::Rng::with_seed(7))).collect::<Vec<_>>();
        assert_eq!(again[0], b.delay(1, &mut fastrand::Rng::with_seed(7)), "seeded: reproducible");
        assert!(b.delay(1000, &mut rng) <= Duration::from_secs(75), "no overflow");
    }

    #[test]
    fn windows_parse_and_wrap_midnight() {
        let w: Window = "01:00-05:00".parse().unwrap();
        assert!(w.contains(60) && w.contains(299) && !w.contains(300) && !w.contains(59));
        let night: Window = "22:30-06:00".parse().unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(359) && !night.contains(360));
        let to_midnight: Window = "20:00-24:00".parse().unwrap();
        assert!(to_midnight.contains(1439) && !to_midnight.contains(0));
        for bad in ["1-5", "25:00-01:00", "01:00-01:00", "aa:bb-cc:dd", "01:60-02:00"] {
            assert!(bad.parse::<Window>().is_err(), "{bad}");
        }
    }

    #[test]
    fn schedules_use_the_named_time_zone_and_never_hold_metadata() {
        let s = Schedule::parse(&["01:00-05:00".into()], "Europe/Berlin").unwrap();
        // 2026-01-15 00:30 UTC is 01:30 in Berlin (winter, UTC+1): open.
        let t = jiff::Timestamp::from_second(1_768_437_000).unwrap();
        assert_eq!(t.to_zoned(jiff::tz::TimeZone::UTC).hour(), 0);
        assert!(s.is_open(t.as_millisecond()));
        // 04:30 UTC is 05:30 in Berlin: closed; metadata still goes.
        let later = t.as_millisecond() + 4 * 3_600_000;
        assert!(!s.is_open(later));
        assert!(s.allows(Lane::Meta, later) && !s.allows(Lane::Audio, later));
        assert!(Schedule::parse(&["01:00-05:00".into()], "Mars/Olympus").is_err());
        assert_eq!(Schedule::parse(&[], "UTC").unwrap(), Schedule::Continuous);
    }

    #[test]
    fn the_bucket_holds_the_rate_over_time() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000, t0);
        let mut now = t0;
        let mut sent = 0u64;
        // Send 64 KiB chunks as fast as allowed for 10 virtual seconds.
        while now < t0 + Duration::from_secs(10) {
            now += b.take(now, 65_536);
            sent += 65_536;
        }
        let rate = sent as f64 / (now - t0).as_secs_f64();
        assert!((rate - 1_000_000.0).abs() / 1_000_000.0 < 0.05, "rate {rate}");
        assert_eq!(Lane::from_i64(Lane::Audio.as_i64()), Some(Lane::Audio));
    }
}
