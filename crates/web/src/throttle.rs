//! Slows down password guessing: after a few failed sign-ins for one user
//! name or from one client address, further attempts are refused for a
//! while, longer with every failure. Pure (times are passed in), so the
//! rules are tested without waiting.

use std::collections::HashMap;

/// Failures allowed before attempts are refused.
pub const FREE_FAILURES: u32 = 5;
/// The first lock; it doubles with every failure after that.
pub const FIRST_LOCK_MS: i64 = 2_000;
pub const MAX_LOCK_MS: i64 = 15 * 60_000;
/// A key forgets its failures after this long without one.
pub const FORGET_MS: i64 = 15 * 60_000;
/// Most keys tracked (oldest forgotten first): a flood of made-up user
/// names cannot grow memory without bound.
pub const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last_ms: i64,
    locked_until_ms: i64,
}

#[derive(Debug, Default)]
pub struct Throttle {
    keys: HashMap<String, Failures>,
}

impl Throttle {
    /// `Err(retry_after_ms)` when any key is locked at `now_ms`.
    pub fn check(&self, keys: &[&str], now_ms: i64) -> Result<(), i64> {
        let wait = keys.iter().filter_map(|k| self.keys.get(*k)).map(|f| f.locked_until_ms - now_ms).max().unwrap_or(0);
        if wait > 0 {
            Err(wait)
        } else {
            Ok(())
        }
    }

    pub fn failed(&mut self, keys: &[&str], now_ms: i64) {
        if self.keys.len() >= MAX_KEYS {
            self.keys.retain(|_, f| now_ms - f.last_ms < FORGET_MS);
            if self.keys.len() >= MAX_KEYS {
                self.keys.clear();
            }
        }
        for k in keys {
            let f =
                self.keys.entry((*k).to_owned()).or_insert(Failures { count: 0, last_ms: now_ms, locked_until_ms: 0 });
            if now_ms - f.last_ms >= FORGET_MS {
                *f = Failures { count: 0, last_ms: now_ms, locked_until_ms: 0 };
            }
            f.count += 1;
            f.last_ms = now_ms;
            if f.count > FREE_FAILURES {
                let exp = (f.count - FREE_FAILURES - 1).min(20);
                f.locked_until_ms = now_ms + (FIRST_LOCK_MS << exp).min(MAX_LOCK_MS);
            }
        }
    }

    /// A successful sign-in clears the user name (not the address: one
    /// good password does not unlock guessing others from there).
    pub fn succeeded(&mut self, user_key: &str) {
        self.keys.remove(user_key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_free_failures_and_backs_off() {
        let mut t = Throttle::default();
        let keys = ["user:alice", "ip:10.0.0.1"];
        for i in 0..FREE_FAILURES {
            assert!(t.check(&keys, i as i64).is_ok());
            t.failed(&keys, i as i64);
        }
        assert!(t.check(&keys, 10).is_ok(), "five failures are free");
        t.failed(&keys, 10);
        assert_eq!(t.check(&keys, 10), Err(FIRST_LOCK_MS));
        assert!(t.check(&["user:alice"], 10 + FIRST_LOCK_MS).is_ok(), "the lock runs out");
        t.failed(&keys, 10 + FIRST_LOCK_MS);
        assert_eq!(t.check(&keys, 10 + FIRST_LOCK_MS), Err(2 * FIRST_LOCK_MS), "and doubles");
        // Another user from the same address is locked too; from elsewhere not.
        assert!(t.check(&["user:bob", "ip:10.0.0.1"], 11 + FIRST_LOCK_MS).is_err());
        assert!(t.check(&["user:bob", "ip:10.0.0.2"], 11 + FIRST_LOCK_MS).is_ok());
        // Success clears the user, not the address.
        t.succeeded("user:alice");
        assert!(t.check(&["user:alice"], 11 + FIRST_LOCK_MS).is_ok());
        assert!(t.check(&["ip:10.0.0.1"], 11 + FIRST_LOCK_MS).is_err());
        // Quiet for long enough, the count starts again.
        let later = 10 * FIRST_LOCK_MS + FORGET_MS + MAX_LOCK_MS;
        t.failed(&["ip:10.0.0.1"], later);
        assert!(t.check(&["ip:10.0.0.1"], later).is_ok());
    }

    #[test]
    fn the_lock_is_capped() {
        let mut t = Throttle::default();
        for i in 0..100 {
            t.failed(&["k"], i);
        }
        assert_eq!(t.check(&["k"], 99), Err(MAX_LOCK_MS));
    }
}
