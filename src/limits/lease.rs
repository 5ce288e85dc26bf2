//! What one gateway holds of the shared store's budget for one user under one set of limits:
//! the requests leased and not yet spent, and a refusal it remembers. Plain data (`shared.rs`
//! spends and refills it), so the per-user state in the snapshot can hold it.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Default)]
pub(super) struct Leases {
    pub(super) rate: Lease,
    pub(super) quota: Lease,
}

#[derive(Debug, Default)]
pub(super) struct Lease {
    pub(super) held: Mutex<Held>,
    /// Held by the one request asking the store for this lease.
    pub(super) refill: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Held {
    pub(super) tokens: u32,
    pub(super) expires: Option<Instant>,
    /// What the store had left after the last lease.
    pub(super) shared_remaining: u64,
    pub(super) reset_at: Option<Instant>,
    /// The store refused; until then this gateway refuses without asking.
    pub(super) denied_until: Option<Instant>,
    pub(super) retry_at: Option<Instant>,
}
