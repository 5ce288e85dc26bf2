//! The limits' Prometheus series, rendered at scrape time from the live state, so their labels
//! are exactly the limited users of the current configuration.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use super::{LimitKind, Limiter};

use crate::observe::names::{
    LIMIT_IN_FLIGHT as IN_FLIGHT, LIMIT_REFUSALS as REFUSALS, LIMIT_STORE_ERRORS as STORE_ERRORS,
    LIMIT_STORE_ROUND_TRIPS as STORE_ROUND_TRIPS, LIMIT_STORE_UP as STORE_UP, help,
};

pub(super) fn metrics(limiter: &Limiter, out: &mut String) {
    let mut users: Vec<_> = limiter
        .users
        .iter()
        .map(|e| (e.key().clone(), e.value().clone()))
        .collect();
    users.sort_by(|a, b| a.0.cmp(&b.0));

    let _ = writeln!(
        out,
        "# HELP {REFUSALS} {}\n# TYPE {REFUSALS} counter",
        help(REFUSALS)
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
        "# HELP {IN_FLIGHT} {}\n# TYPE {IN_FLIGHT} gauge",
        help(IN_FLIGHT)
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
    // Always exported, so a dashboard reads them before any traffic: the local store makes no
    // round trips, has no errors and is always up.
    let store = limiter.shared_store();
    let stats = store.as_ref().map(|s| &s.stats);
    let _ = writeln!(
        out,
        "# HELP {STORE_ROUND_TRIPS} {}\n# TYPE {STORE_ROUND_TRIPS} counter\n{STORE_ROUND_TRIPS} {}",
        help(STORE_ROUND_TRIPS),
        stats.map_or(0, |s| s.round_trips.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        out,
        "# HELP {STORE_ERRORS} {}\n# TYPE {STORE_ERRORS} counter\n{STORE_ERRORS} {}",
        help(STORE_ERRORS),
        stats.map_or(0, |s| s.errors.load(Ordering::Relaxed))
    );
    let _ = writeln!(
        out,
        "# HELP {STORE_UP} {}\n# TYPE {STORE_UP} gauge\n{STORE_UP} {}",
        help(STORE_UP),
        u8::from(store.as_ref().is_none_or(|s| s.is_up()))
    );
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
