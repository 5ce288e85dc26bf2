//! Limits kept in this process: a GCRA TAT changed by compare-and-swap, a quota window under a
//! short lock. Used for `store = "local"`, and by every gateway on its own while the shared store
//! is unreachable with `on_store_error = "allow"`.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::gcra::Gcra;
use super::{LimitKind, Limiter, PolicyState, Step, UserState, retry_seconds};
use crate::snapshot::{Quota, RateLimit};

impl Limiter {
    pub(super) fn local_rate(&self, state: &UserState, rate: &RateLimit) -> Step {
        let gcra = Gcra::of(rate);
        let now = self.now();
        let mut tat = state.tat.load(Ordering::Relaxed);
        loop {
            let take = gcra.take(tat, now, 1);
            let policy = PolicyState::rate(rate, take.remaining, Duration::from_nanos(take.reset));
            if take.granted == 0 {
                return Step::Refused(
                    LimitKind::Rate,
                    retry_seconds(Duration::from_nanos(take.retry_after)),
                    policy,
                );
            }
            match state.tat.compare_exchange_weak(
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

    pub(super) fn local_quota(&self, state: &UserState, quota: &Quota) -> Step {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (used, reset) = count_in_window(state, quota, now_ms);
        match used {
            Some(used) => Step::Passed(PolicyState::quota(quota, quota.requests - used, reset)),
            None => Step::Refused(
                LimitKind::Quota,
                retry_seconds(reset),
                PolicyState::quota(quota, 0, reset),
            ),
        }
    }
}

/// Counts one request in the window `now_ms` falls in; `None` if the window is full. Windows
/// are multiples of the period from the Unix epoch, as in the shared store.
fn count_in_window(state: &UserState, quota: &Quota, now_ms: u64) -> (Option<u64>, Duration) {
    let period = quota.per.as_millis().max(1) as u64;
    let window = now_ms / period;
    let reset = Duration::from_millis((window + 1) * period - now_ms);
    // A poisoned lock only means a panic elsewhere while counting; the count is still a count.
    let mut counted = state.quota.lock().unwrap_or_else(|p| p.into_inner());
    if counted.0 != window {
        *counted = (window, 0);
    }
    if counted.1 >= quota.requests {
        return (None, reset);
    }
    counted.1 += 1;
    (Some(counted.1), reset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_counts_per_window_and_starts_again_in_the_next() {
        let state = UserState::default();
        let quota = Quota {
            requests: 3,
            per: Duration::from_secs(10),
        };
        let base = 1_000_000_000_000; // a multiple of 10 s
        for n in 1..=3 {
            assert_eq!(count_in_window(&state, &quota, base + 100).0, Some(n));
        }
        let (refused, reset) = count_in_window(&state, &quota, base + 9_000);
        assert_eq!(refused, None);
        assert_eq!(reset, Duration::from_millis(1_000));
        assert_eq!(count_in_window(&state, &quota, base + 10_000).0, Some(1));
    }
}
