//! One API user's limit state as a request uses it: counters changed by single atomic
//! instructions (no lock, no lookup on the way), and the user's limits turned, once when they
//! are loaded, into the numbers and the `RateLimit-Policy` text every request needs. The
//! `Limiter` keeps these by user id and hangs each on the user's entry in the snapshot
//! (`LimitCell`). Plain data, no configuration types, so that the snapshot can hold it.

use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};

use once_cell::race::OnceBox;

use super::lease::Leases;

/// A user's counters. Kept across every reload that keeps the user limited, whatever its
/// limits become: a changed limit applies to what was already counted.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Local GCRA: the TAT in nanoseconds after `Limiter::epoch`.
    pub(super) tat: AtomicU64,
    /// Local quota: where the window being counted began, in milliseconds since the Unix
    /// epoch (so a period changed by a reload starts a window of its own).
    pub(super) quota_start: AtomicU64,
    /// Local quota: requests counted in that window.
    pub(super) quota_used: AtomicU64,
    /// Held by the request that starts a new quota window, once per window.
    pub(super) quota_turn: Mutex<()>,
    pub(super) in_flight: AtomicU32,
    /// Refusals by `LimitKind::index`.
    pub(super) refused: [AtomicU64; 5],
}

/// A `rate_limit` in the numbers a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateShape {
    /// GCRA in nanoseconds (`gcra::Gcra`).
    pub(super) interval: u64,
    pub(super) tolerance: u64,
    /// The `q` and `w` of its RateLimit fields.
    pub(super) quota: u64,
    pub(super) window: u64,
}

/// A `quota` in the numbers a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QuotaShape {
    pub(super) requests: u64,
    /// At least 1.
    pub(super) period_ms: u64,
    /// The `q` and `w` of its RateLimit fields.
    pub(super) quota: u64,
    pub(super) window: u64,
}

/// One user's state under one set of limits. A reload that changes the user's limits makes a
/// new one around the same `Counters`; one that keeps them keeps it.
#[derive(Debug)]
pub(crate) struct UserLimitState {
    pub(super) counters: Arc<Counters>,
    pub(super) rate: Option<RateShape>,
    pub(super) quota: Option<QuotaShape>,
    pub(super) max_concurrent: Option<u32>,
    /// `RateLimit-Policy: <value>\r\nRateLimit: `: the policy line, which only these limits
    /// decide, and the start of the state line, written with one copy on every response.
    pub(super) head: Box<[u8]>,
    /// The shared store's leases, taken under exactly these limits (so none survives a change
    /// of them); made on first use, as only the shared store needs them.
    leases: OnceLock<Box<Leases>>,
}

impl UserLimitState {
    pub(super) fn new(
        counters: Arc<Counters>,
        rate: Option<RateShape>,
        quota: Option<QuotaShape>,
        max_concurrent: Option<u32>,
        head: Box<[u8]>,
    ) -> UserLimitState {
        UserLimitState {
            counters,
            rate,
            quota,
            max_concurrent,
            head,
            leases: OnceLock::new(),
        }
    }

    pub(super) fn leases(&self) -> &Leases {
        self.leases.get_or_init(Box::default)
    }
}

/// Where a user's entry in the snapshot keeps its limit state: empty until the `Limiter`
/// resolves it (when a reload carries the user's counters over, or at the user's first limited
/// request), then read by every request of that user without a lookup. An entry's limits never
/// change after it is compiled, so the state it holds is always the one for them. One pointer
/// wide (`OnceBox`, not `OnceLock`'s 16 bytes): it is in every user entry (#20's memory goal).
#[derive(Default)]
pub struct LimitCell(OnceBox<Arc<UserLimitState>>);

impl LimitCell {
    pub(crate) fn get(&self) -> Option<&Arc<UserLimitState>> {
        self.0.get()
    }

    /// Fills an empty cell; a filled one keeps its state (the same, for the same limits).
    pub(crate) fn fill(&self, state: &Arc<UserLimitState>) -> &Arc<UserLimitState> {
        self.0.get_or_init(|| Box::new(Arc::clone(state)))
    }
}

/// A copy of an entry (a page of the user table edited by a reload) holds the same state.
impl Clone for LimitCell {
    fn clone(&self) -> LimitCell {
        let cell = LimitCell::default();
        if let Some(state) = self.get() {
            cell.fill(state);
        }
        cell
    }
}

impl std::fmt::Debug for LimitCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.get().is_some() {
            "LimitCell(resolved)"
        } else {
            "LimitCell(empty)"
        })
    }
}
