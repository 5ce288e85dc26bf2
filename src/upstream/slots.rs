//! `max_upstream_connections`: how many requests one upstream (all its targets, both
//! transports) has in hand at once. A request takes its place before its first attempt and
//! keeps it through its retries; the place is given back with the upstream connection (when
//! the response has been read, or abandoned). One beyond the limit waits up to
//! `connect_timeout` for a place, as it would wait for a new connection, then is refused; so a
//! flood of slow requests, or of slow readers, cannot open an unbounded number of connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The places of one upstream, kept under its name across reloads (a reload that changes the
/// limit applies it to the next request; one that removes the upstream drops them once the
/// requests holding places have finished).
#[derive(Default)]
pub struct Slots {
    in_use: AtomicUsize,
    /// Requests waiting for a place: a place given back wakes one only when there are some.
    waiting: AtomicUsize,
    freed: Notify,
}

/// One request's place at its upstream.
pub struct Slot {
    slots: Arc<Slots>,
}

/// Every place was taken for the whole wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the upstream had max_upstream_connections requests in hand for the whole wait")]
pub struct Busy;

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.in_use.fetch_sub(1, Ordering::SeqCst);
        if self.slots.waiting.load(Ordering::SeqCst) != 0 {
            self.slots.freed.notify_one();
        }
    }
}

impl Slots {
    fn try_take(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let mut n = self.in_use.load(Ordering::Relaxed);
        loop {
            if n >= max {
                return None;
            }
            match self
                .in_use
                .compare_exchange_weak(n, n + 1, Ordering::SeqCst, Ordering::Relaxed)
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

    /// A place (at most `max` in hand), waiting up to `wait` for one.
    pub async fn take(self: &Arc<Self>, max: usize, wait: Duration) -> Result<Slot, Busy> {
        if let Some(slot) = self.try_take(max) {
            return Ok(slot);
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(self);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut freed = std::pin::pin!(self.freed.notified());
            freed.as_mut().enable();
            // Checked after registering for a wake-up, so a place freed in between is not missed.
            if let Some(slot) = self.try_take(max) {
                return Ok(slot);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return self.try_take(max).ok_or(Busy);
            }
        }
    }

    /// Requests in hand now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// Counts a request among the waiting for as long as it waits.
struct Waiting<'a>(&'a Slots);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_beyond_the_limit_waits_for_a_place_then_is_refused() {
        let slots = Arc::new(Slots::default());
        let wait = Duration::from_millis(50);
        let a = slots.take(2, wait).await.unwrap();
        let _b = slots.take(2, wait).await.unwrap();
        assert_eq!(slots.take(2, wait).await.err(), Some(Busy));
        assert_eq!(slots.in_use(), 2);
        // A place freed while a request waits is taken.
        let waiting = slots.take(2, Duration::from_secs(30));
        let freeing = async {
            tokio::task::yield_now().await;
            drop(a);
        };
        let (got, ()) = tokio::join!(waiting, freeing);
        assert!(got.is_ok());
        // A raised limit applies at once.
        assert!(slots.take(3, wait).await.is_ok());
        assert_eq!(slots.waiting.load(Ordering::SeqCst), 0);
    }
}
