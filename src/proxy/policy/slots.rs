//! `max_upstream_connections`: how many requests one upstream has in hand at once, on both
//! paths together. A request beyond it waits up to `connect_timeout` for one to end (as it would
//! wait for a new connection), then gets `503 upstream_busy`; so a flood of slow requests, or
//! slow readers, cannot open an unbounded number of connections to the upstream.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::refusal::Refusal;

/// The requests in hand, per upstream name.
#[derive(Default)]
pub struct UpstreamSlots {
    by_upstream: DashMap<Arc<str>, Arc<Slots>>,
}

#[derive(Default)]
struct Slots {
    in_use: AtomicUsize,
    freed: Notify,
}

/// One request's place at its upstream, held until its response has been read (or abandoned).
pub struct Slot {
    slots: Arc<Slots>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.in_use.fetch_sub(1, Ordering::Release);
        self.slots.freed.notify_one();
    }
}

impl Slots {
    fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let mut n = self.in_use.load(Ordering::Acquire);
        loop {
            if n >= max {
                return None;
            }
            match self
                .in_use
                .compare_exchange_weak(n, n + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Some(Slot {
                        slots: Arc::clone(self),
                    });
                }
                Err(now) => n = now,
            }
        }
    }
}

impl UpstreamSlots {
    /// A place at `upstream` (at most `max` in hand), waiting up to `wait` for one.
    pub async fn take(
        &self,
        upstream: &Arc<str>,
        max: usize,
        wait: Duration,
    ) -> Result<Slot, Refusal> {
        let slots = match self.by_upstream.get(upstream) {
            Some(s) => Arc::clone(&s),
            None => Arc::clone(
                self.by_upstream
                    .entry(Arc::clone(upstream))
                    .or_default()
                    .value(),
            ),
        };
        if let Some(slot) = slots.try_take(max) {
            return Ok(slot);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = slots.freed.notified();
            // Checked after registering for a wake-up, so a place freed in between is not missed.
            if let Some(slot) = slots.try_take(max) {
                return Ok(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return slots.try_take(max).ok_or(Refusal::UpstreamBusy);
            }
        }
    }

    /// Requests in hand at `upstream` now (for tests and status pages).
    pub fn in_use(&self, upstream: &str) -> usize {
        self.by_upstream
            .get(upstream)
            .map_or(0, |s| s.in_use.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_beyond_the_limit_waits_for_a_place_then_is_refused() {
        let slots = UpstreamSlots::default();
        let api: Arc<str> = "api".into();
        let wait = Duration::from_millis(50);
        let a = slots.take(&api, 2, wait).await.unwrap();
        let _b = slots.take(&api, 2, wait).await.unwrap();
        assert!(matches!(
            slots.take(&api, 2, wait).await,
            Err(Refusal::UpstreamBusy)
        ));
        assert_eq!(slots.in_use("api"), 2);
        // A place freed while a request waits is taken.
        let waiting = slots.take(&api, 2, Duration::from_secs(30));
        let freeing = async {
            tokio::task::yield_now().await;
            drop(a);
        };
        let (got, ()) = tokio::join!(waiting, freeing);
        assert!(got.is_ok());
        let other: Arc<str> = "other".into();
        assert!(
            slots.take(&other, 2, wait).await.is_ok(),
            "another upstream is not affected"
        );
    }
}
