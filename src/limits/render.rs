//! The limits' Prometheus series, rendered at scrape time from the live state, so their labels
//! are exactly the limited users of the current configuration.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use std::sync::Arc;

use super::redis_store::RedisStore;
use super::step::LimitKind;

use crate::observe::names::{
    LIMIT_IN_FLIGHT as IN_FLIGHT, LIMIT_REFUSALS as REFUSALS, LIMIT_STORE_ERRORS as STORE_ERRORS,
    LIMIT_STORE_ROUND_TRIPS as STORE_ROUND_TRIPS, LIMIT_STORE_UP as STORE_UP, help,
};

/// One limited user's series, read from the live state by the `Limiter`.
pub(super) struct UserSeries {
    pub id: Arc<str>,
    /// Refusals by kind, in `LimitKind::PER_USER` order.
    pub refused: [u64; 4],
    /// Requests in flight, for a user under `max_concurrent`.
    pub in_flight: Option<u32>,
}

/// The series of `users` (sorted by id) and of the shared store, if there is one.
pub(super) fn metrics(users: &[UserSeries], store: Option<&RedisStore>, out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP {REFUSALS} {}\n# TYPE {REFUSALS} counter",
        help(REFUSALS)
    );
    for user in users {
        for (kind, n) in LimitKind::PER_USER.iter().zip(user.refused) {
            if n > 0 {
                let _ = writeln!(
                    out,
                    "{REFUSALS}{{user=\"{}\",kind=\"{}\"}} {n}",
                    escape(&user.id),
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
    for user in users {
        if let Some(in_flight) = user.in_flight {
            let _ = writeln!(
                out,
                "{IN_FLIGHT}{{user=\"{}\"}} {in_flight}",
                escape(&user.id)
            );
        }
    }
    // Always exported, so a dashboard reads them before any traffic: the local store makes no
    // round trips, has no errors and is always up.
    let stats = store.map(|s| &s.stats);
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
        u8::from(store.is_none_or(|s| s.is_up()))
    );
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
