//! Failed authentication per source address: an address that sends many invalid credentials
//! (unknown keys, wrong passwords, malformed ones) in a short time is answered 429 for a while,
//! without the credential being checked, so guessing through the gateway is slow.
//!
//! The count is a GCRA bucket per address (IPv4 /32, IPv6 /64: one host's usual allotment):
//! `FAILURES_AT_ONCE` failures, then one more every `FORGIVEN_EVERY`. A blocked address still
//! reaches a user that registered it: the proxy checks the credential anyway and lets it through
//! when it is valid and the user's `remote_addresses` names this address (not `"*"`), so an
//! attacker sharing an integration's address cannot lock the integration out.

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::gcra::Gcra;
use crate::auth::address::canonical;
use crate::snapshot::RateLimit;

/// Failures an address may send at once before it is blocked.
pub const FAILURES_AT_ONCE: u32 = 20;
/// After that, one failure is forgiven every this long (at most 1,200 guesses an hour).
pub const FORGIVEN_EVERY: Duration = Duration::from_secs(3);
/// Addresses tracked at most; beyond it those no longer blocked are forgotten first.
const MAX_TRACKED: usize = 100_000;

pub struct FailedAuthLimiter {
    sources: DashMap<u128, u64>,
    gcra: Gcra,
    epoch: Instant,
    /// Requests answered 429 because of their source.
    pub refused: AtomicU64,
}

impl Default for FailedAuthLimiter {
    fn default() -> Self {
        FailedAuthLimiter::new(FAILURES_AT_ONCE, FORGIVEN_EVERY)
    }
}

impl FailedAuthLimiter {
    pub fn new(at_once: u32, forgiven_every: Duration) -> FailedAuthLimiter {
        FailedAuthLimiter {
            sources: DashMap::new(),
            gcra: Gcra::of(&RateLimit {
                requests: 1,
                per: forgiven_every,
                burst: at_once.saturating_sub(1),
            }),
            epoch: Instant::now(),
            refused: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// How long `ip` stays blocked, if it is.
    pub fn blocked_for(&self, ip: IpAddr) -> Option<Duration> {
        let tat = *self.sources.get(&source_key(ip))?;
        let take = self.gcra.take(tat, self.now(), 1);
        (take.granted == 0).then(|| Duration::from_nanos(take.retry_after))
    }

    /// Counts one invalid credential from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let now = self.now();
        if self.sources.len() >= MAX_TRACKED {
            self.sources.retain(|_, tat| *tat > now);
        }
        let mut tat = self.sources.entry(source_key(ip)).or_insert(0);
        let take = self.gcra.take(*tat, now, 1);
        if take.granted == 1 {
            *tat = take.tat;
        }
    }

    /// Addresses with recent failures.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }
}

/// IPv4 addresses whole, IPv6 by their /64.
fn source_key(ip: IpAddr) -> u128 {
    match canonical(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) >> 64 << 64) | 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_and_only_that_address() {
        let limiter = FailedAuthLimiter::new(3, Duration::from_secs(60));
        let guesser: IpAddr = "192.0.2.7".parse().unwrap();
        let neighbour: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(limiter.blocked_for(guesser), None);
            limiter.failed(guesser);
        }
        let blocked = limiter
            .blocked_for(guesser)
            .expect("blocked after three failures");
        assert!(blocked > Duration::from_secs(50) && blocked <= Duration::from_secs(60));
        assert_eq!(limiter.blocked_for(neighbour), None);
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64() {
        let limiter = FailedAuthLimiter::new(2, Duration::from_secs(60));
        limiter.failed("2001:db8:1:2::1".parse().unwrap());
        limiter.failed("2001:db8:1:2::ffff".parse().unwrap());
        assert!(
            limiter
                .blocked_for("2001:db8:1:2::42".parse().unwrap())
                .is_some()
        );
        assert!(
            limiter
                .blocked_for("2001:db8:1:3::1".parse().unwrap())
                .is_none()
        );
        // An IPv4-mapped address is the IPv4 address.
        limiter.failed("::ffff:192.0.2.1".parse().unwrap());
        limiter.failed("192.0.2.1".parse().unwrap());
        assert!(limiter.blocked_for("192.0.2.1".parse().unwrap()).is_some());
    }
}
