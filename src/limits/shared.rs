//! The gateway's side of the shared store: the leases it holds per user, spent locally, and one
//! round trip at a time per user and limit when a lease is spent (other requests of that user
//! wait for its answer instead of asking too).

use std::future::Future;
use std::time::{Duration, Instant};

use super::fields::PolicyState;
use super::gcra::Gcra;
use super::lease::{Lease, Leases};
use super::redis_store::{Leased, RedisStore, StoreError};
use super::step::{LimitKind, Step, retry_seconds};
use crate::snapshot::{Quota, RateLimit};

/// Leased rate-limit requests are spent within this, or dropped.
pub const RATE_LEASE_LIFETIME: Duration = Duration::from_millis(100);
/// Leased quota requests are spent within this (or by the end of their window), or dropped.
pub const QUOTA_LEASE_LIFETIME: Duration = Duration::from_secs(1);
/// The most requests one lease takes.
pub const MAX_LEASE: u32 = 32;
/// A gateway refused by the store answers from memory for at most this long before asking
/// again, so that a quota raised by a reload, or budget freed elsewhere, is seen soon.
const QUOTA_REFUSAL_MEMORY: Duration = Duration::from_secs(1);

/// How many requests of a GCRA limit to lease: about 100 ms of the rate, at most a quarter of
/// the burst (so one gateway cannot hold a client's whole burst), at most `MAX_LEASE`.
pub fn rate_lease_size(rate: &RateLimit) -> u32 {
    let gcra = Gcra::of(rate);
    let per_lifetime = RATE_LEASE_LIFETIME.as_nanos() as u64 / gcra.interval.max(1);
    let quarter_burst = gcra.capacity() / 4;
    per_lifetime
        .min(quarter_burst)
        .clamp(1, u64::from(MAX_LEASE)) as u32
}

/// How many requests of a quota to lease: a hundredth of it, at most `MAX_LEASE`.
pub fn quota_lease_size(quota: &Quota) -> u32 {
    (quota.requests / 100).clamp(1, u64::from(MAX_LEASE)) as u32
}

pub(super) async fn rate(
    store: &RedisStore,
    leases: &Leases,
    user: &str,
    rate: &RateLimit,
) -> Result<Step, StoreError> {
    let gcra = Gcra::with_unit(rate, 1_000_000);
    let want = rate_lease_size(rate);
    spend(
        &leases.rate,
        LimitKind::Rate,
        RATE_LEASE_LIFETIME,
        Duration::MAX,
        |remaining, reset| PolicyState::rate(rate, remaining, reset),
        || store.lease_rate(user, gcra.interval, gcra.tolerance, want),
    )
    .await
}

pub(super) async fn quota(
    store: &RedisStore,
    leases: &Leases,
    user: &str,
    quota: &Quota,
) -> Result<Step, StoreError> {
    let want = quota_lease_size(quota);
    spend(
        &leases.quota,
        LimitKind::Quota,
        QUOTA_LEASE_LIFETIME,
        QUOTA_REFUSAL_MEMORY,
        |remaining, reset| PolicyState::quota(quota, remaining, reset),
        || store.lease_quota(user, quota.requests, quota.per, want),
    )
    .await
}

/// Spends one request of `lease`, asking the store for a new lease when it is spent.
async fn spend<F, Fut>(
    lease: &Lease,
    kind: LimitKind,
    lifetime: Duration,
    refusal_memory: Duration,
    policy: impl Fn(u64, Duration) -> PolicyState,
    ask: F,
) -> Result<Step, StoreError>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Leased, StoreError>>,
{
    if let Some(step) = from_held(lease, kind, &policy) {
        return Ok(step);
    }
    let _asking = lease.refill.lock().await;
    // Another request may have brought a lease (or a refusal) while this one waited.
    if let Some(step) = from_held(lease, kind, &policy) {
        return Ok(step);
    }
    let leased = ask().await?;
    let now = Instant::now();
    let mut held = lease.held.lock().unwrap_or_else(|p| p.into_inner());
    held.shared_remaining = leased.remaining;
    held.reset_at = Some(now + leased.reset);
    if leased.granted == 0 {
        held.tokens = 0;
        held.denied_until = Some(now + leased.retry_after.min(refusal_memory));
        held.retry_at = Some(now + leased.retry_after);
        return Ok(Step::Refused(
            kind,
            retry_seconds(leased.retry_after),
            policy(0, leased.reset),
        ));
    }
    held.tokens = leased.granted - 1;
    held.expires = Some((now + lifetime).min(now + leased.reset.max(Duration::from_millis(1))));
    held.denied_until = None;
    Ok(Step::Passed(policy(
        leased.remaining + u64::from(held.tokens),
        leased.reset,
    )))
}

/// Answers from what this gateway holds: a leased request, or a refusal it remembers.
fn from_held(
    lease: &Lease,
    kind: LimitKind,
    policy: &impl Fn(u64, Duration) -> PolicyState,
) -> Option<Step> {
    let now = Instant::now();
    let mut held = lease.held.lock().unwrap_or_else(|p| p.into_inner());
    let reset = held
        .reset_at
        .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
    if let Some(until) = held.denied_until {
        if now < until {
            let retry = held
                .retry_at
                .map_or(until, |r| r.max(until))
                .saturating_duration_since(now);
            return Some(Step::Refused(kind, retry_seconds(retry), policy(0, reset)));
        }
        held.denied_until = None;
    }
    if held.tokens > 0 && held.expires.is_some_and(|e| now < e) {
        held.tokens -= 1;
        return Some(Step::Passed(policy(
            held.shared_remaining + u64::from(held.tokens),
            reset,
        )));
    }
    // An expired lease's rest is dropped, never spent late.
    held.tokens = 0;
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_are_small_against_the_limit() {
        let rate = |requests, per_ms, burst| RateLimit {
            requests,
            per: Duration::from_millis(per_ms),
            burst,
        };
        // No burst: every request is its own lease, the shared bucket stays exact.
        assert_eq!(rate_lease_size(&rate(200, 1000, 0)), 1);
        assert_eq!(rate_lease_size(&rate(200, 1000, 3)), 1);
        // A quarter of the burst, or 100 ms of the rate, whichever is less.
        assert_eq!(rate_lease_size(&rate(100, 1000, 50)), 10);
        assert_eq!(rate_lease_size(&rate(1000, 1000, 39)), 10);
        assert_eq!(rate_lease_size(&rate(1_000_000, 1000, 1000)), MAX_LEASE);
        let quota = |requests| Quota {
            requests,
            per: Duration::from_secs(60),
        };
        assert_eq!(quota_lease_size(&quota(5)), 1);
        assert_eq!(quota_lease_size(&quota(1_000)), 10);
        assert_eq!(quota_lease_size(&quota(1_000_000)), MAX_LEASE);
    }
}
