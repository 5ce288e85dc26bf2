//! The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers, structured-field form):
//! `RateLimit-Policy: "user";q=100;w=1` names each limit, `RateLimit: "user";r=37;t=1` says what
//! is left of it and in how many seconds it is whole again.

use std::time::Duration;

use http::HeaderValue;

use crate::snapshot::{Quota, RateLimit};

pub static RATELIMIT_POLICY: http::HeaderName = http::HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit");

/// The policy name of a user's rate limit, as the examples write it.
pub const RATE_POLICY: &str = "user";
/// The policy name of a user's quota.
pub const QUOTA_POLICY: &str = "quota";
/// How each policy's item in `RateLimit` begins (`write_state`).
const RATE_STATE: &[u8] = b"\"user\";r=";
const QUOTA_STATE: &[u8] = b"\"quota\";r=";
/// The longest `RateLimit` value: both items, every number 20 digits.
pub(super) const STATE_MAX: usize = RATE_STATE.len() + QUOTA_STATE.len() + 2 * 3 + 2 + 4 * 20;

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
        let mut policy = Vec::with_capacity(48);
        let mut state = Vec::with_capacity(48);
        self.write_policy(&mut policy);
        self.write_state(&mut state);
        Some((
            HeaderValue::from_bytes(&policy).ok()?,
            HeaderValue::from_bytes(&state).ok()?,
        ))
    }

    /// The `RateLimit-Policy` value: `"user";q=100;w=1, "quota";q=1000000;w=2592000`.
    pub fn write_policy(&self, out: &mut Vec<u8>) {
        self.write_items(out, b";q=", b";w=", |s| (s.quota, s.window));
    }

    /// The `RateLimit` value: `"user";r=37;t=1, "quota";r=999000;t=86400`. On every limited
    /// response, so written piece by piece with the names as constants (each piece is then a
    /// few moves, not a copy of unknown length); `write_policy` writes the same names.
    pub fn write_state(&self, out: &mut Vec<u8>) {
        let mut digits = itoa::Buffer::new();
        out.reserve(STATE_MAX);
        if let Some(s) = &self.rate {
            out.extend_from_slice(RATE_STATE);
            out.extend_from_slice(digits.format(s.remaining).as_bytes());
            out.extend_from_slice(b";t=");
            out.extend_from_slice(digits.format(s.reset).as_bytes());
        }
        if let Some(s) = &self.quota {
            if self.rate.is_some() {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(QUOTA_STATE);
            out.extend_from_slice(digits.format(s.remaining).as_bytes());
            out.extend_from_slice(b";t=");
            out.extend_from_slice(digits.format(s.reset).as_bytes());
        }
    }

    /// One structured-field item per policy, `"name"` then two integer parameters, written
    /// straight into `out` (this runs on every limited response: no `fmt`, no `String`).
    fn write_items(
        &self,
        out: &mut Vec<u8>,
        first: &[u8],
        second: &[u8],
        params: impl Fn(&PolicyState) -> (u64, u64),
    ) {
        let mut digits = itoa::Buffer::new();
        for (i, s) in self.states().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            let (a, b) = params(s);
            out.push(b'"');
            out.extend_from_slice(s.name.as_bytes());
            out.push(b'"');
            out.extend_from_slice(first);
            out.extend_from_slice(digits.format(a).as_bytes());
            out.extend_from_slice(second);
            out.extend_from_slice(digits.format(b).as_bytes());
        }
    }

    /// Appends both fields to a response head being written by hand (the fast path).
    pub fn write_head(&self, out: &mut Vec<u8>) {
        if self.is_empty() {
            return;
        }
        out.extend_from_slice(b"RateLimit-Policy: ");
        self.write_policy(out);
        out.extend_from_slice(b"\r\nRateLimit: ");
        self.write_state(out);
        out.extend_from_slice(b"\r\n");
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
pub(super) fn per_whole_seconds(requests: u64, per: Duration) -> (u64, u64) {
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
        let mut head = Vec::new();
        fields.write_head(&mut head);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            format!(
                "RateLimit-Policy: {}\r\nRateLimit: {}\r\n",
                policy.to_str().unwrap(),
                state.to_str().unwrap()
            )
        );
        let mut nothing = Vec::new();
        Fields::default().write_head(&mut nothing);
        assert!(nothing.is_empty());
    }

    #[test]
    fn the_state_items_begin_with_the_policy_names() {
        assert_eq!(RATE_STATE, format!("\"{RATE_POLICY}\";r=").as_bytes());
        assert_eq!(QUOTA_STATE, format!("\"{QUOTA_POLICY}\";r=").as_bytes());
    }

    #[test]
    fn sub_second_windows_are_scaled_to_whole_seconds() {
        assert_eq!(per_whole_seconds(10, Duration::from_millis(500)), (20, 1));
        assert_eq!(per_whole_seconds(5, Duration::from_millis(1500)), (7, 2));
        assert_eq!(per_whole_seconds(5, Duration::from_secs(60)), (5, 60));
    }
}
