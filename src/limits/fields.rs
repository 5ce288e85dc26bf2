//! The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers, structured-field form):
//! `RateLimit-Policy: "user";q=100;w=1` names each limit, `RateLimit: "user";r=37;t=1` says what
//! is left of it and in how many seconds it is whole again.

use std::fmt::Write as _;
use std::time::Duration;

use http::HeaderValue;

use crate::snapshot::{Quota, RateLimit};

pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// The policy name of a user's rate limit, as the examples write it.
pub const RATE_POLICY: &str = "user";
/// The policy name of a user's quota.
pub const QUOTA_POLICY: &str = "quota";

/// One limit as a client sees it after this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyState {
    pub name: &'static str,
    /// Requests per window (`q`).
    pub quota: u64,
    /// The window in seconds (`w`).
    pub window: u64,
    /// Requests that would pass right now (`r`); 0 on the last one admitted.
    pub remaining: u64,
    /// Seconds until the limit is whole again (`t`).
    pub reset: u64,
}

impl PolicyState {
    pub fn rate(limit: &RateLimit, remaining: u64, reset: Duration) -> PolicyState {
        let (quota, window) = per_whole_seconds(u64::from(limit.requests), limit.per);
        PolicyState {
            name: RATE_POLICY,
            quota,
            window,
            remaining,
            reset: whole_seconds(reset),
        }
    }

    pub fn quota(limit: &Quota, remaining: u64, reset: Duration) -> PolicyState {
        let (quota, window) = per_whole_seconds(limit.requests, limit.per);
        PolicyState {
            name: QUOTA_POLICY,
            quota,
            window,
            remaining,
            reset: whole_seconds(reset),
        }
    }
}

/// The fields of one response: up to one state per policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fields {
    pub rate: Option<PolicyState>,
    pub quota: Option<PolicyState>,
}

impl Fields {
    pub fn is_empty(&self) -> bool {
        self.rate.is_none() && self.quota.is_none()
    }

    fn states(&self) -> impl Iterator<Item = &PolicyState> {
        self.rate.iter().chain(self.quota.iter())
    }

    /// `RateLimit-Policy` and `RateLimit`, or `None` for a user with neither limit.
    pub fn header_values(&self) -> Option<(HeaderValue, HeaderValue)> {
        if self.is_empty() {
            return None;
        }
        let mut policy = String::with_capacity(48);
        let mut state = String::with_capacity(48);
        for (i, s) in self.states().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            let _ = write!(policy, "{sep}\"{}\";q={};w={}", s.name, s.quota, s.window);
            let _ = write!(state, "{sep}\"{}\";r={};t={}", s.name, s.remaining, s.reset);
        }
        Some((
            HeaderValue::from_str(&policy).ok()?,
            HeaderValue::from_str(&state).ok()?,
        ))
    }

    /// Appends both fields to a response head being written by hand (the fast path).
    pub fn write_head(&self, out: &mut Vec<u8>) {
        if let Some((policy, state)) = self.header_values() {
            for (name, value) in [("RateLimit-Policy", policy), ("RateLimit", state)] {
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(value.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Sets both fields on a response.
    pub fn insert_into(&self, headers: &mut http::HeaderMap) {
        if let Some((policy, state)) = self.header_values() {
            headers.insert(&RATELIMIT_POLICY, policy);
            headers.insert(&RATELIMIT, state);
        }
    }
}

/// Whole seconds, rounded up: a client waiting that long is never early.
pub fn whole_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// `q` requests per `w` whole seconds (the fields have no fractions): a sub-second or fractional
/// window is scaled to the nearest whole one.
fn per_whole_seconds(requests: u64, per: Duration) -> (u64, u64) {
    if per.subsec_nanos() == 0 {
        return (requests, per.as_secs().max(1));
    }
    let window = per.as_secs_f64().round().max(1.0);
    let quota = (requests as f64 * window / per.as_secs_f64()).round() as u64;
    (quota.max(1), window as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_are_structured_field_lists_one_item_per_policy() {
        let rate = RateLimit {
            requests: 100,
            per: Duration::from_secs(1),
            burst: 50,
        };
        let quota = Quota {
            requests: 1_000_000,
            per: Duration::from_secs(30 * 86_400),
        };
        let fields = Fields {
            rate: Some(PolicyState::rate(&rate, 37, Duration::from_millis(400))),
            quota: Some(PolicyState::quota(
                &quota,
                999_000,
                Duration::from_secs(86_400),
            )),
        };
        let (policy, state) = fields.header_values().unwrap();
        assert_eq!(policy, "\"user\";q=100;w=1, \"quota\";q=1000000;w=2592000");
        assert_eq!(state, "\"user\";r=37;t=1, \"quota\";r=999000;t=86400");
        assert!(Fields::default().header_values().is_none());
    }

    #[test]
    fn sub_second_windows_are_scaled_to_whole_seconds() {
        assert_eq!(per_whole_seconds(10, Duration::from_millis(500)), (20, 1));
        assert_eq!(per_whole_seconds(5, Duration::from_millis(1500)), (7, 2));
        assert_eq!(per_whole_seconds(5, Duration::from_secs(60)), (5, 60));
    }
}
