//! The limits' Prometheus series, rendered at scrape time from the live state, so their labels
//! are exactly the limited users of the current configuration.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::{LimitKind, Limiter};

pub const REFUSALS: &str = "apiward_limit_refusals_total";
pub const IN_FLIGHT: &str = "apiward_limit_in_flight";
pub const STORE_ROUND_TRIPS: &str = "apiward_limit_store_round_trips_total";
pub const STORE_ERRORS: &str = "apiward_limit_store_errors_total";
pub const STORE_UP: &str = "apiward_limit_store_up";

/// Every series name, for documentation and tests.
pub const ALL: [&str; 5] = [
    REFUSALS,
    IN_FLIGHT,
    STORE_ROUND_TRIPS,
    STORE_ERRORS,
    STORE_UP,
];

pub(super) fn metrics(limiter: &Limiter, out: &mut String) {
    let mut users: Vec<_> = limiter
        .users
        .iter()
        .map(|e| (e.key().clone(), e.value().clone()))
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));

    let _ = writeln!(
        out,
        "# HELP {REFUSALS} Requests refused by a limit, by API user and kind (rate_limited, quota_exhausted, too_many_concurrent, limit_store_unavailable).\n# TYPE {REFUSALS} counter"
    );
    for (id, state) in &users {
        for kind in LimitKind::PER_USER {
            let n = state.refused[kind.index()].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{REFUSALS}{{user=\"{}\",kind=\"{}\"}} {n}",
                    escape(id),
                    kind.as_str()
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# HELP {IN_FLIGHT} Requests in flight now, by API user with max_concurrent.\n# TYPE {IN_FLIGHT} gauge"
    );
    for (id, state) in &users {
        let concurrent = state
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|l| l.max_concurrent.is_some());
        if concurrent {
            let _ = writeln!(
                out,
                "{IN_FLIGHT}{{user=\"{}\"}} {}",
                escape(id),
                state.in_flight.load(Ordering::Relaxed)
            );
        }
    }
    if let Some(store) = limiter.shared_store() {
        let _ = writeln!(
            out,
            "# HELP {STORE_ROUND_TRIPS} Calls to the shared rate-limit store.\n# TYPE {STORE_ROUND_TRIPS} counter\n{STORE_ROUND_TRIPS} {}",
            store.stats.round_trips.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP {STORE_ERRORS} Calls to the shared rate-limit store that failed or timed out.\n# TYPE {STORE_ERRORS} counter\n{STORE_ERRORS} {}",
            store.stats.errors.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP {STORE_UP} 1 while the shared rate-limit store answers, 0 from a failed call to the next answered one.\n# TYPE {STORE_UP} gauge\n{STORE_UP} {}",
            u8::from(store.is_up())
        );
    }
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
