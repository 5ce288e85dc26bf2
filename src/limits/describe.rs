//! Limits in words and as JSON, the same for `explain`, `/status` and `users list`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::snapshot::{LimitOrigin, Snapshot, UserLimits};

/// A duration as the configuration writes it: `500ms`, `1s`, `1m30s`, `30d`.
pub fn duration(d: Duration) -> String {
    let mut ms = d.as_millis() as u64;
    if ms == 0 {
        return "0".into();
    }
    let mut text = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms >= size {
            text.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    if ms > 0 {
        text.push_str(&format!("{ms}ms"));
    }
    text
}

/// One line: `100/1s burst 50 (group), quota 1000000/30d, 20 concurrent`, or `none`.
pub fn summary(limits: &UserLimits) -> String {
    let mut parts = Vec::new();
    if let Some((rate, origin)) = &limits.rate {
        let from = match origin {
            LimitOrigin::User => "user's own",
            LimitOrigin::Group => "group",
        };
        parts.push(format!(
            "{}/{} burst {} ({from})",
            rate.requests,
            duration(rate.per),
            rate.burst
        ));
    }
    if let Some(quota) = &limits.quota {
        parts.push(format!("quota {}/{}", quota.requests, duration(quota.per)));
    }
    if let Some(max) = limits.max_concurrent {
        parts.push(format!("{max} concurrent"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// The limits as `/status` and `users list --format json` show them (`null` where unset).
pub fn json(limits: &UserLimits) -> serde_json::Value {
    serde_json::json!({
        "rate_limit": limits.rate.map(|(r, origin)| serde_json::json!({
            "requests": r.requests,
            "per": duration(r.per),
            "burst": r.burst,
            "from": match origin { LimitOrigin::User => "user", LimitOrigin::Group => "group" },
        })),
        "quota": limits.quota.map(|q| serde_json::json!({
            "requests": q.requests,
            "per": duration(q.per),
        })),
        "max_concurrent": limits.max_concurrent,
    })
}

/// At most this many users are listed in `/status` (the rest are counted).
const STATUS_USERS: usize = 1_000;

/// The `rate_limits` section of `/status`: the store, and each limited user's limits and counts.
pub fn status(limiter: &super::Limiter, snapshot: &Snapshot) -> serde_json::Value {
    let settings = &snapshot.rate_limits;
    let shared = limiter.shared_store();
    let limited: Vec<_> = snapshot
        .users
        .iter()
        .filter(|u| !u.limits.is_unlimited())
        .collect();
    let users: Vec<serde_json::Value> = limited
        .iter()
        .take(STATUS_USERS)
        .map(|u| {
            let mut entry = json(&u.limits);
            let (in_flight, refused) = limiter.user_counts(&u.id).unwrap_or_default();
            entry["user"] = serde_json::Value::from(&*u.id);
            entry["in_flight"] = serde_json::Value::from(in_flight);
            entry["refused"] = serde_json::Value::Object(
                super::LimitKind::PER_USER
                    .iter()
                    .zip(refused)
                    .map(|(k, n)| (k.as_str().to_string(), serde_json::Value::from(n)))
                    .collect(),
            );
            entry
        })
        .collect();
    serde_json::json!({
        "store": settings.store.shown(),
        "store_up": shared.as_ref().map(|s| s.is_up()),
        "store_round_trips": shared.as_ref().map(|s| s.stats.round_trips.load(Ordering::Relaxed)),
        "store_errors": shared.as_ref().map(|s| s.stats.errors.load(Ordering::Relaxed)),
        "on_store_error": settings.on_store_error.as_str(),
        "forward_remaining": settings.forward_remaining,
        "limited_users": limited.len(),
        "users": users,
        "users_truncated": limited.len() > STATUS_USERS,
        "failed_auth_sources_tracked": limiter.failed_auth.tracked(),
        "failed_auth_refused": limiter.failed_auth.refused.load(Ordering::Relaxed),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_they_are_written() {
        assert_eq!(duration(Duration::from_secs(1)), "1s");
        assert_eq!(duration(Duration::from_secs(30 * 86_400)), "30d");
        assert_eq!(duration(Duration::from_millis(90_500)), "1m30s500ms");
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
    }
}
