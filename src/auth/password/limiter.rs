//! The failure limiter: token buckets of Argon2 attempts, one per user id with recent failures
//! and one shared, so that guessing a password through the gateway is slow and cannot burn its CPU.
//!
//! Every Argon2 run that is not a success costs a token. A user with no recent failures is always
//! admitted (its bucket is full and not even stored), so an unattacked user never waits. A user
//! with recent failures also needs a token from the shared bucket, which caps the Argon2 work spent
//! on failing credentials across all users (an attacker rotating through many ids).
//! A success empties the record of that user's failures.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use dashmap::DashMap;

/// How many attempts a bucket holds and how often one comes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketShape {
    pub burst: u32,
    pub refill_every: Duration,
}

/// Per user: five attempts at once, then one every ten seconds (8 640 a day at most).
pub const PER_USER: BucketShape = BucketShape {
    burst: 5,
    refill_every: Duration::from_secs(10),
};

/// All users with failures together: twenty at once, then ten a second (about a third of a
/// core at 30 ms per Argon2 run).
pub const SHARED: BucketShape = BucketShape {
    burst: 20,
    refill_every: Duration::from_millis(100),
};

/// Users tracked at most; each has a recent failure, and only ids with a password hash in the
/// configuration ever reach the limiter, so this is a backstop.
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

/// The per-user and shared buckets.
#[derive(Debug)]
pub struct FailureLimiter {
    per_user_shape: BucketShape,
    shared_shape: BucketShape,
    per_user: DashMap<Box<str>, Bucket>,
    shared: Mutex<Bucket>,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter::new(PER_USER, SHARED)
    }
}

impl FailureLimiter {
    pub fn new(per_user: BucketShape, shared: BucketShape) -> FailureLimiter {
        FailureLimiter {
            per_user_shape: per_user,
            shared_shape: shared,
            per_user: DashMap::new(),
            shared: Mutex::new(Bucket::full(shared, Instant::now())),
        }
    }

    /// Whether an Argon2 run for `user` may start now. An admitted attempt costs a token up
    /// front (so concurrent guesses cannot all slip through), refunded by `record_success`.
    pub fn admit(&self, user: &str) -> bool {
        let now = Instant::now();
        if self.per_user.len() >= MAX_TRACKED {
            let shape = self.per_user_shape;
            self.per_user.retain(|_, b| {
                b.refill(shape, now);
                !b.is_full(shape)
            });
        }
        let mut bucket = self
            .per_user
            .entry(user.into())
            .or_insert_with(|| Bucket::full(self.per_user_shape, now));
        bucket.refill(self.per_user_shape, now);
        let had_failures = !bucket.is_full(self.per_user_shape);
        if had_failures && !self.take_shared(now) {
            return false;
        }
        bucket.take()
    }

    fn take_shared(&self, now: Instant) -> bool {
        let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        shared.refill(self.shared_shape, now);
        shared.take()
    }

    /// The user proved its password: its failures are forgotten.
    pub fn record_success(&self, user: &str) {
        self.per_user.remove(user);
    }

    /// How many users have recent failures (for status pages).
    pub fn users_with_failures(&self) -> usize {
        self.per_user.len()
    }
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

    #[test]
    fn a_user_gets_its_burst_then_waits_for_a_refill() {
        let limiter = FailureLimiter::new(shape(3, 60_000), shape(100, 1));
        assert!((0..3).all(|_| limiter.admit("a@x.org")));
        assert!(
            !limiter.admit("a@x.org"),
            "the fourth attempt within a minute is refused"
        );
        assert!(limiter.admit("b@x.org"), "another user is not affected");
        limiter.record_success("a@x.org");
        assert!(limiter.admit("a@x.org"), "a success forgets the failures");
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
    fn the_shared_bucket_caps_failures_across_users() {
        let limiter = FailureLimiter::new(shape(2, 60_000), shape(3, 60_000));
        // First attempts of users without failures do not touch the shared bucket.
        for u in ["a", "b", "c", "d"] {
            assert!(limiter.admit(u));
        }
        // Second attempts do: three tokens for four users.
        let admitted = ["a", "b", "c", "d"]
            .iter()
            .filter(|u| limiter.admit(u))
            .count();
        assert_eq!(admitted, 3);
        // A user without failures is still admitted.
        assert!(limiter.admit("fresh"));
        assert_eq!(limiter.users_with_failures(), 5);
    }
}
