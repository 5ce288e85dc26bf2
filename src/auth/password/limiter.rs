//! The failure limiter: token buckets of Argon2 attempts, per (user id, source), per user id and
//! one shared, so that guessing a password through the gateway is slow and cannot burn its CPU,
//! while guesses from one place cannot lock the user out everywhere.
//!
//! Every Argon2 run costs a token up front (so concurrent guesses cannot all slip through):
//! - from the bucket of its (user id, source) pair: five at once, then one every ten seconds.
//!   Guesses from one address throttle that address only; an IPv6 source counts by its /64,
//!   which one host usually holds whole.
//! - from the user id's ceiling, a larger bucket that all sources share, so a guess spread over
//!   many addresses is still slow. A pair that proved the password within `PROVEN_FOR` (the real
//!   integration, logging in again after its cached success expired or the password changed) is
//!   exempt: a distributed guess cannot lock it out.
//! - from the shared bucket, which caps the Argon2 work on unproven attempts across all ids,
//!   known or not (an unknown id costs the same Argon2 run as a wrong password, see
//!   `PasswordVerifier`).
//!
//! A bucket that is full is not stored, so the maps hold only ids and pairs with recent attempts;
//! an entry is made only for an attempt the shared bucket admitted, which bounds them.
//! A success forgets the pair's failures and refunds the ceiling's token.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How many attempts a bucket holds and how often one comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketShape {
    pub burst: u32,
    pub refill_every: Duration,
}

/// Per (user id, source): five attempts at once, then one every ten seconds (8 640 a day).
pub const PER_SOURCE: BucketShape = BucketShape {
    burst: 5,
    refill_every: Duration::from_secs(10),
};

/// Per user id, all unproven sources together: thirty at once, then one every five seconds
/// (17 280 a day). One source alone (one every ten seconds) cannot empty it; it takes three
/// sources guessing at their full rate.
pub const PER_USER: BucketShape = BucketShape {
    burst: 30,
    refill_every: Duration::from_secs(5),
};

/// All unproven attempts together: twenty at once, then ten a second (about a third of a core
/// at 30 ms per Argon2 run).
pub const SHARED: BucketShape = BucketShape {
    burst: 20,
    refill_every: Duration::from_millis(100),
};

/// How long a pair that proved the password stays exempt from the user's ceiling.
pub const PROVEN_FOR: Duration = Duration::from_secs(24 * 3600);

/// Entries kept at most per map; a backstop, since entries are only made at the shared rate.
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    refilled_at: Instant,
}

impl Bucket {
    fn full(shape: BucketShape, now: Instant) -> Bucket {
        Bucket {
            tokens: shape.burst,
            refilled_at: now,
        }
    }

    /// Adds the tokens earned since the last refill, keeping the fraction of an interval.
    fn refill(&mut self, shape: BucketShape, now: Instant) {
        let every = shape.refill_every.as_nanos().max(1);
        let earned = now.saturating_duration_since(self.refilled_at).as_nanos() / every;
        if earned == 0 {
            return;
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(earned).min(shape.burst);
        if self.tokens == shape.burst {
            self.refilled_at = now;
        } else {
            self.refilled_at += shape.refill_every * earned;
        }
    }

    fn is_full(&self, shape: BucketShape) -> bool {
        self.tokens >= shape.burst
    }

    fn take(&mut self) -> bool {
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// Where an attempt comes from, as the limiter counts it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SourceKey {
    V4(u32),
    V6Net(u64),
}

impl SourceKey {
    pub fn of(ip: IpAddr) -> SourceKey {
        match crate::auth::address::canonical(ip) {
            IpAddr::V4(a) => SourceKey::V4(u32::from(a)),
            IpAddr::V6(a) => SourceKey::V6Net((u128::from(a) >> 64) as u64),
        }
    }
}

type Pair = (Box<str>, SourceKey);

/// The per-pair, per-user and shared buckets, and the pairs that proved a password.
#[derive(Debug)]
pub struct FailureLimiter {
    per_source_shape: BucketShape,
    per_user_shape: BucketShape,
    shared_shape: BucketShape,
    per_source: DashMap<Pair, Bucket>,
    per_user: DashMap<Box<str>, Bucket>,
    proven: DashMap<Pair, Instant>,
    shared: Mutex<Bucket>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(PER_SOURCE, PER_USER, SHARED)
    }
}

impl FailureLimiter {
    pub fn new(
        per_source: BucketShape,
        per_user: BucketShape,
        shared: BucketShape,
    ) -> FailureLimiter {
        FailureLimiter {
            per_source_shape: per_source,
            per_user_shape: per_user,
            shared_shape: shared,
            per_source: DashMap::new(),
            per_user: DashMap::new(),
            proven: DashMap::new(),
            shared: Mutex::new(Bucket::full(shared, Instant::now())),
        }
    }

    /// Whether an Argon2 run for `user` from `source` may start now; if so, its tokens are taken.
    pub fn admit(&self, user: &str, source: IpAddr) -> bool {
        let now = Instant::now();
        let pair: Pair = (user.into(), SourceKey::of(source));
        // Look before taking anything, so a refused attempt costs no other bucket a token.
        if !has_token(&self.per_source, &pair, self.per_source_shape, now) {
            return false;
        }
        let proven = self
            .proven
            .get(&pair)
            .is_some_and(|at| now.saturating_duration_since(*at) < PROVEN_FOR);
        if !proven {
            if !has_token(&self.per_user, &pair.0, self.per_user_shape, now) {
                return false;
            }
            if !self.take_shared(now) {
                return false;
            }
            if !take(&self.per_user, pair.0.clone(), self.per_user_shape, now) {
                return false;
            }
        }
        take(&self.per_source, pair, self.per_source_shape, now)
    }

    fn take_shared(&self, now: Instant) -> bool {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.refill(self.shared_shape, now);
        shared.take()
    }

    /// `user` proved its password from `source`: that pair's failures are forgotten, the user's
    /// ceiling gets its token back, and the pair is exempt from the ceiling for `PROVEN_FOR`.
    pub fn record_success(&self, user: &str, source: IpAddr) {
        let now = Instant::now();
        let pair: Pair = (user.into(), SourceKey::of(source));
        self.per_source.remove(&pair);
        if let Some(mut b) = self.per_user.get_mut(user) {
            b.tokens = (b.tokens + 1).min(self.per_user_shape.burst);
        }
        if self.proven.len() >= MAX_TRACKED {
            self.proven
                .retain(|_, at| now.saturating_duration_since(*at) < PROVEN_FOR);
        }
        if self.proven.len() < MAX_TRACKED {
            self.proven.insert(pair, now);
        }
    }

    /// How many user ids have recent failures (for status pages).
    pub fn users_with_failures(&self) -> usize {
        self.per_user.len()
    }
}

/// Whether the stored bucket (a missing one is full) has a token now.
fn has_token<K: Eq + std::hash::Hash>(
    map: &DashMap<K, Bucket>,
    key: &K,
    shape: BucketShape,
    now: Instant,
) -> bool {
    match map.get_mut(key) {
        Some(mut b) => {
            b.refill(shape, now);
            b.tokens > 0
        }
        None => true,
    }
}

/// Takes a token from the bucket of `key`, storing it (full, less this token) if it was not.
fn take<K: Eq + std::hash::Hash>(
    map: &DashMap<K, Bucket>,
    key: K,
    shape: BucketShape,
    now: Instant,
) -> bool {
    if map.len() >= MAX_TRACKED {
        map.retain(|_, b| {
            b.refill(shape, now);
            !b.is_full(shape)
        });
        if map.len() >= MAX_TRACKED {
            // Every entry is a recent failure: refuse rather than forget them.
            return false;
        }
    }
    let mut bucket = map.entry(key).or_insert_with(|| Bucket::full(shape, now));
    bucket.refill(shape, now);
    bucket.take()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(burst: u32, ms: u64) -> BucketShape {
        BucketShape {
            burst,
            refill_every: Duration::from_millis(ms),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_source_gets_its_burst_then_waits_for_a_refill() {
        let limiter = FailureLimiter::new(shape(3, 60_000), shape(100, 1), shape(100, 1));
        let here = ip("192.0.2.1");
        assert!((0..3).all(|_| limiter.admit("a@x.org", here)));
        assert!(
            !limiter.admit("a@x.org", here),
            "the fourth attempt within a minute is refused"
        );
        assert!(
            limiter.admit("b@x.org", here),
            "another user is not affected"
        );
        assert!(
            limiter.admit("a@x.org", ip("192.0.2.2")),
            "the same user from another source is not affected"
        );
        limiter.record_success("a@x.org", here);
        assert!(
            limiter.admit("a@x.org", here),
            "a success forgets the failures"
        );
    }

    #[test]
    fn an_ipv6_source_counts_by_its_slash_64() {
        let limiter = FailureLimiter::new(shape(2, 60_000), shape(100, 1), shape(100, 1));
        assert!(limiter.admit("a@x.org", ip("2001:db8:0:1::1")));
        assert!(limiter.admit("a@x.org", ip("2001:db8:0:1::2")));
        assert!(!limiter.admit("a@x.org", ip("2001:db8:0:1:ffff::3")));
        assert!(limiter.admit("a@x.org", ip("2001:db8:0:2::1")));
        assert_eq!(
            SourceKey::of(ip("::ffff:192.0.2.1")),
            SourceKey::of(ip("192.0.2.1"))
        );
    }

    #[test]
    fn refill_keeps_the_fraction_of_an_interval() {
        let s = shape(5, 10);
        let t0 = Instant::now();
        let mut b = Bucket {
            tokens: 0,
            refilled_at: t0,
        };
        b.refill(s, t0 + Duration::from_millis(25));
        assert_eq!(b.tokens, 2);
        assert_eq!(b.refilled_at, t0 + Duration::from_millis(20));
        b.refill(s, t0 + Duration::from_millis(30));
        assert_eq!(b.tokens, 3);
        b.refill(s, t0 + Duration::from_secs(10));
        assert_eq!(b.tokens, 5);
    }

    #[test]
    fn the_ceiling_stops_a_guess_spread_over_many_sources_but_not_a_proven_one() {
        let limiter = FailureLimiter::new(shape(2, 60_000), shape(5, 60_000), shape(100, 1));
        limiter.record_success("a@x.org", ip("192.0.2.1"));
        let admitted = (10..20)
            .filter(|i| limiter.admit("a@x.org", ip(&format!("198.51.100.{i}"))))
            .count();
        assert_eq!(admitted, 5, "ten sources share the user's five");
        assert!(
            !limiter.admit("a@x.org", ip("198.51.100.99")),
            "a fresh source is refused once the ceiling is empty"
        );
        assert!(
            limiter.admit("a@x.org", ip("192.0.2.1")),
            "the source that proved the password is exempt from the ceiling"
        );
        assert!(
            limiter.admit("b@x.org", ip("198.51.100.99")),
            "another user is not"
        );
    }

    #[test]
    fn the_shared_bucket_caps_unproven_attempts_across_ids() {
        let limiter = FailureLimiter::new(shape(5, 60_000), shape(5, 60_000), shape(3, 60_000));
        let here = ip("192.0.2.1");
        let admitted = ["a", "b", "c", "d", "e"]
            .iter()
            .filter(|u| limiter.admit(u, here))
            .count();
        assert_eq!(admitted, 3, "random ids cannot buy unlimited Argon2 runs");
        assert_eq!(
            limiter.users_with_failures(),
            3,
            "refused attempts store nothing"
        );
    }
}
