//! Limits kept in this process: a GCRA TAT changed by compare-and-swap, a quota counted by
//! compare-and-swap (a short lock only to start each new window). Used for `store = "local"`,
//! and by every gateway on its own while the shared store is unreachable with
//! `on_store_error = "allow"`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fields::{PolicyState, QUOTA_POLICY, RATE_POLICY};
use super::gcra::Gcra;
use super::state::{Counters, QuotaShape, RateShape, UserLimitState};
use super::{LimitKind, Limiter, Step, retry_seconds};

impl Limiter {
    /// One request against `rate` at `now` (nanoseconds after `Limiter::epoch`).
    pub(super) fn local_rate(&self, state: &UserLimitState, rate: &RateShape, now: u64) -> Step {
        let gcra = Gcra {
            interval: rate.interval,
            tolerance: rate.tolerance,
        };
        let tat_cell = &state.counters.tat;
        let mut tat = tat_cell.load(Ordering::Relaxed);
        loop {
            let take = gcra.take(tat, now, 1);
            let policy = PolicyState {
                name: RATE_POLICY,
                quota: rate.quota,
                window: rate.window,
                remaining: take.remaining,
                reset: take.reset.div_ceil(1_000_000_000),
            };
            if take.granted == 0 {
                return Step::Refused(
                    LimitKind::Rate,
                    retry_seconds(Duration::from_nanos(take.retry_after)),
                    policy,
                );
            }
            match tat_cell.compare_exchange_weak(
                tat,
                take.tat,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Step::Passed(policy),
                Err(current) => tat = current,
            }
        }
    }

    /// One request against `quota` at `now_ms` (milliseconds since the Unix epoch).
    pub(super) fn local_quota(
        &self,
        state: &UserLimitState,
        quota: &QuotaShape,
        now_ms: u64,
    ) -> Step {
        let (used, reset) = count_in_window(&state.counters, quota, now_ms);
        let policy = |remaining| PolicyState {
            name: QUOTA_POLICY,
            quota: quota.quota,
            window: quota.window,
            remaining,
            reset: reset.div_ceil(1_000),
        };
        match used {
            Some(used) => Step::Passed(policy(quota.requests - used)),
            None => Step::Refused(
                LimitKind::Quota,
                retry_seconds(Duration::from_millis(reset)),
                policy(0),
            ),
        }
    }
}

/// Counts one request in the window `now_ms` falls in; `None` if the window is full. With it,
/// the milliseconds until the window ends. Windows are multiples of the period from the Unix
/// epoch, as in the shared store.
///
/// A request whose window is the one being counted costs one compare-and-swap. The first
/// request of a new window starts it under `quota_turn`; a request racing it (its clock read
/// just before the window turned) is counted in the new window, never lost.
fn count_in_window(counters: &Counters, quota: &QuotaShape, now_ms: u64) -> (Option<u64>, u64) {
    let period = quota.period_ms;
    let start = now_ms - now_ms % period;
    let reset = start + period - now_ms;
    let counted = counters.quota_start.load(Ordering::Acquire);
    // Not the counted window and not a request from just before it: a new window begins (also
    // after a reload changed the period, whose windows start elsewhere).
    if counted != start && now_ms >= counted {
        // A poisoned lock only means a panic elsewhere while starting a window; it is still
        // the one place where windows start.
        let _turn = counters
            .quota_turn
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let counted = counters.quota_start.load(Ordering::Acquire);
        if counted != start && now_ms >= counted {
            counters.quota_used.store(0, Ordering::Relaxed);
            counters.quota_start.store(start, Ordering::Release);
        }
    }
    let mut used = counters.quota_used.load(Ordering::Relaxed);
    loop {
        if used >= quota.requests {
            return (None, reset);
        }
        match counters.quota_used.compare_exchange_weak(
            used,
            used + 1,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return (Some(used + 1), reset),
            Err(current) => used = current,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(requests: u64, period_ms: u64) -> QuotaShape {
        QuotaShape {
            requests,
            period_ms,
            quota: requests,
            window: period_ms / 1000,
        }
    }

    #[test]
    fn a_quota_counts_per_window_and_starts_again_in_the_next() {
        let counters = Counters::default();
        let quota = quota(3, 10_000);
        let base = 1_000_000_000_000; // a multiple of 10 s
        for n in 1..=3 {
            assert_eq!(count_in_window(&counters, &quota, base + 100).0, Some(n));
        }
        let (refused, reset) = count_in_window(&counters, &quota, base + 9_000);
        assert_eq!(refused, None);
        assert_eq!(reset, 1_000);
        assert_eq!(count_in_window(&counters, &quota, base + 10_000).0, Some(1));
        // A request whose clock was read just before the window turned counts in the new one.
        assert_eq!(count_in_window(&counters, &quota, base + 9_999).0, Some(2));
        assert_eq!(count_in_window(&counters, &quota, base + 10_001).0, Some(3));
        assert_eq!(count_in_window(&counters, &quota, base + 10_002).0, None);
    }

    #[test]
    fn a_changed_period_starts_a_window_of_its_own() {
        let counters = Counters::default();
        let base = 1_000_000_000_000; // a multiple of 10 s and of 4 s
        assert_eq!(
            count_in_window(&counters, &quota(5, 10_000), base + 6_000).0,
            Some(1)
        );
        // Raised to 10 per 4 s: its window began at base + 4 s.
        let (used, reset) = count_in_window(&counters, &quota(10, 4_000), base + 6_000);
        assert_eq!((used, reset), (Some(1), 2_000));
    }

    #[test]
    fn counts_made_on_many_threads_at_once_are_all_kept_and_never_exceed_the_quota() {
        let counters = Counters::default();
        let quota = quota(10_000, 3_600_000);
        let base = 1_000_000_000_000 - 1_000_000_000_000 % 3_600_000;
        let admitted = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..3_000 {
                        if count_in_window(&counters, &quota, base + 5).0.is_some() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 10_000);
        assert_eq!(counters.quota_used.load(Ordering::Relaxed), 10_000);
    }
}
