//! Which limit refused a request, and what one limit said: the words the limits, the shared
//! store and the metrics all use. A leaf of `limits`, so its parts share them without importing
//! the module that holds them.

use std::time::Duration;

use super::fields::{self, PolicyState};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    Rate,
    Quota,
    Concurrency,
    /// The shared store could not be reached and `on_store_error = "deny"`.
    StoreUnavailable,
    /// The source address sent too many invalid credentials (`failed_auth`); no user is known.
    FailedAttempts,
}

impl LimitKind {
    /// The kinds counted per user (a failed-auth refusal has no user).
    pub const PER_USER: [LimitKind; 4] = [
        LimitKind::Rate,
        LimitKind::Quota,
        LimitKind::Concurrency,
        LimitKind::StoreUnavailable,
    ];

    /// The metric label and log value; the same words as the refusal codes.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Rate => "rate_limited",
            LimitKind::Quota => "quota_exhausted",
            LimitKind::Concurrency => "too_many_concurrent",
            LimitKind::StoreUnavailable => "limit_store_unavailable",
            LimitKind::FailedAttempts => "too_many_failed_attempts",
        }
    }

    /// The refusal the client gets.
    pub fn refusal(self) -> crate::refusal::Refusal {
        use crate::refusal::Refusal;
        match self {
            LimitKind::Rate => Refusal::RateLimited,
            LimitKind::Quota => Refusal::QuotaExhausted,
            LimitKind::Concurrency => Refusal::TooManyConcurrent,
            LimitKind::StoreUnavailable => Refusal::LimitStoreUnavailable,
            LimitKind::FailedAttempts => Refusal::TooManyFailedAttempts,
        }
    }

    pub(super) fn index(self) -> usize {
        self as usize
    }
}

/// What one limit said.
#[derive(Debug, Clone, Copy)]
pub(super) enum Step {
    Passed(PolicyState),
    /// The kind, `Retry-After` in whole seconds, and the state to report.
    Refused(LimitKind, u64, PolicyState),
}

/// A whole number of seconds to wait, at least one.
pub(super) fn retry_seconds(wait: Duration) -> u64 {
    fields::whole_seconds(wait).max(1)
}
