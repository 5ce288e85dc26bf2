//! The generic cell rate algorithm on logical time: one number per user (the theoretical arrival
//! time, TAT), so a limit is one compare-and-swap locally and one short script in Redis
//! (`redis_store.rs` carries the same arithmetic in Lua, in microseconds).
//!
//! A limit of `requests` per `per` emits one request every `interval = per / requests`. A client
//! at rest may send `burst + 1` at once; after that one per interval. With `burst = 0` the
//! tolerance is half an interval rather than none: a request that arrives a little early for its
//! slot (network jitter) keeps the slot instead of losing a whole interval, so a client pacing
//! itself at the limit gets the limit, and two requests are still never closer than half an
//! interval.

use crate::snapshot::RateLimit;

/// A rate limit in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between two requests at the steady rate.
    pub interval: u64,
    /// How far ahead of now the TAT may be and a request still pass.
    pub tolerance: u64,
}

/// What one `take` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Take {
    /// Requests granted, at most the number asked for.
    pub granted: u32,
    /// The TAT to store.
    pub tat: u64,
    /// Requests that would still pass right now, after these.
    pub remaining: u64,
    /// When fewer were granted than asked: how long until the next one would pass.
    pub retry_after: u64,
    /// How long until the bucket is full again (a client at rest).
    pub reset: u64,
}

impl Gcra {
    pub fn of(rate: &RateLimit) -> Gcra {
        Gcra::with_unit(rate, 1_000_000_000)
    }

    /// The same limit in another unit (`units_per_second`: 10⁶ for Redis's microseconds).
    pub fn with_unit(rate: &RateLimit, units_per_second: u64) -> Gcra {
        let per = rate.per.as_nanos() * u128::from(units_per_second) / 1_000_000_000;
        let interval = (per / u128::from(rate.requests.max(1))).max(1) as u64;
        let tolerance = if rate.burst == 0 {
            interval / 2
        } else {
            interval.saturating_mul(u64::from(rate.burst))
        };
        Gcra {
            interval,
            tolerance,
        }
    }

    /// Requests a client at rest may send at once.
    pub fn capacity(&self) -> u64 {
        self.tolerance / self.interval + 1
    }

    /// Takes up to `want` requests at `now` from a bucket whose TAT is `tat` (0: never used).
    pub fn take(&self, tat: u64, now: u64, want: u32) -> Take {
        let tat = tat.max(now);
        let available = self.available(tat, now);
        let granted = available.min(u64::from(want)) as u32;
        let tat = tat.saturating_add(u64::from(granted).saturating_mul(self.interval));
        let retry_after = if granted < want {
            (tat - self.tolerance.min(tat)).saturating_sub(now).max(1)
        } else {
            0
        };
        Take {
            granted,
            tat,
            remaining: self.available(tat, now),
            retry_after,
            reset: tat - now,
        }
    }

    /// Requests that pass at `now` with the TAT at `tat` (≥ now).
    fn available(&self, tat: u64, now: u64) -> u64 {
        let limit = now.saturating_add(self.tolerance);
        if limit < tat {
            0
        } else {
            (limit - tat) / self.interval + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const MS: u64 = 1_000_000;

    fn gcra(requests: u32, per_ms: u64, burst: u32) -> Gcra {
        Gcra::of(&RateLimit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        })
    }

    /// Drives `g` with one request every `every` ns for `total` ns; returns how many passed.
    fn drive(g: &Gcra, every: u64, total: u64, jitter: impl Fn(u64) -> i64) -> u64 {
        let mut tat = 0;
        let mut passed = 0;
        let mut i = 0;
        while i * every < total {
            let now = ((i * every) as i64 + jitter(i)).max(0) as u64 + 1_000 * MS;
            let t = g.take(tat, now, 1);
            if t.granted == 1 {
                tat = t.tat;
                passed += 1;
            }
            i += 1;
        }
        passed
    }

    #[test]
    fn a_client_at_rest_gets_its_burst_then_the_steady_rate() {
        let g = gcra(10, 1000, 4);
        let now = 5_000 * MS;
        let mut tat = 0;
        for expected_left in (0..5).rev() {
            let t = g.take(tat, now, 1);
            assert_eq!(t.granted, 1);
            assert_eq!(t.remaining, expected_left);
            tat = t.tat;
        }
        let refused = g.take(tat, now, 1);
        assert_eq!(refused.granted, 0);
        assert_eq!(refused.retry_after, 100 * MS, "one interval");
        assert_eq!(g.take(tat, now + 99 * MS, 1).granted, 0);
        assert_eq!(g.take(tat, now + 100 * MS, 1).granted, 1);
    }

    #[test]
    fn a_lease_takes_what_is_there_and_no_more() {
        let g = gcra(10, 1000, 4);
        let t = g.take(0, 1_000 * MS, 8);
        assert_eq!((t.granted, t.remaining), (5, 0));
        assert_eq!(t.reset, 500 * MS);
    }

    #[test]
    fn over_the_limit_the_steady_rate_is_kept_exactly_even_with_jitter() {
        // 200/s, burst 0, offered 1,000/s for 10 s.
        let g = gcra(200, 1000, 0);
        let exact = drive(&g, MS, 10_000 * MS, |_| 0);
        assert!((2000..=2001).contains(&exact), "{exact}");
        // Up to 0.4 ms early or late, alternating: the half-interval tolerance keeps every slot.
        let jittered = drive(&g, MS, 10_000 * MS, |i| {
            ((i * 7919 % 9) as i64 - 4) * 100_000
        });
        assert!((1990..=2010).contains(&jittered), "{jittered}");
    }

    #[test]
    fn with_burst_zero_two_requests_are_never_closer_than_half_an_interval() {
        let g = gcra(200, 1000, 0);
        let first = g.take(0, 1_000 * MS, 1);
        assert_eq!(first.granted, 1);
        assert_eq!(first.remaining, 0);
        assert_eq!(g.take(first.tat, 1_000 * MS + 2 * MS, 1).granted, 0);
        assert_eq!(g.take(first.tat, 1_000 * MS + 5 * MS / 2, 1).granted, 1);
        assert_eq!(g.capacity(), 1);
    }
}
