//! Compiles the limit settings (`rate_limit`, `quota`, `max_concurrent`, `[rate_limits]`) into
//! their runtime values, each error at the line it is about.

use std::time::Duration;

use toml::Spanned;

use super::compiler::Compiler;
use crate::config::duration::parse_duration;
use crate::config::raw::{RawGroup, RawQuota, RawRateLimit, RawRateLimits};
use crate::snapshot::{
    LimitOrigin, LimitStore, OnStoreError, Quota, RateLimit, RateLimitSettings, SharedLimits,
    UserLimits,
};

/// Bounds that keep every limit representable in the shared store (microsecond GCRA times,
/// millisecond quota windows) and in the `RateLimit` header fields.
const MAX_RATE_REQUESTS: i64 = 1_000_000_000;
const MAX_BURST: i64 = 1_000_000_000;
const MAX_CONCURRENT: i64 = 1_000_000;
/// Ten years: longer than any plan, short enough for every clock computation.
const MAX_PERIOD: Duration = Duration::from_secs(10 * 366 * 86_400);

impl Compiler<'_> {
    /// A group's limits, as every user of the group gets them unless it has its own `rate_limit`.
    pub(super) fn group_limits(&mut self, group: &RawGroup) -> UserLimits {
        let rate = group
            .rate_limit
            .as_ref()
            .and_then(|r| self.rate_limit(r))
            .map(|r| (r, LimitOrigin::Group));
        let quota = group.quota.as_ref().and_then(|q| self.quota(q));
        let max_concurrent = group.max_concurrent.as_ref().and_then(|m| {
            match u32::try_from(*m.get_ref()) {
                Ok(n) if (1..=MAX_CONCURRENT).contains(&i64::from(n)) => Some(n),
                _ => {
                    self.error(
                        m.span(),
                        format!("max_concurrent is how many requests of one user may be in flight at once: 1 to {MAX_CONCURRENT} (leave it out for no limit)"),
                    );
                    None
                }
            }
        });
        UserLimits {
            rate,
            quota,
            max_concurrent,
        }
    }

    pub(super) fn rate_limit(&mut self, raw: &Spanned<RawRateLimit>) -> Option<RateLimit> {
        let r = raw.get_ref();
        let errors_before = self.errors.len();
        let requests = *r.requests.get_ref();
        if !(1..=MAX_RATE_REQUESTS).contains(&requests) {
            self.error(
                r.requests.span(),
                format!("rate_limit requests is how many requests are allowed per `per`: 1 to {MAX_RATE_REQUESTS}"),
            );
        }
        let per = self.period(&r.per, "rate_limit");
        let burst = match &r.burst {
            None => 0,
            Some(b) if (0..=MAX_BURST).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                self.error(
                    b.span(),
                    format!("rate_limit burst is how many requests beyond the steady rate a client at rest may send at once: 0 to {MAX_BURST}"),
                );
                0
            }
        };
        let per = per?;
        if self.errors.len() != errors_before {
            return None;
        }
        if per.as_micros() < requests as u128 {
            self.error(
                raw.span(),
                format!("rate_limit allows one request every {:?}, below a microsecond, the finest step limits are kept in: lower requests or lengthen per", per / requests as u32),
            );
            return None;
        }
        Some(RateLimit {
            requests: requests as u32,
            per,
            burst: burst as u32,
        })
    }

    fn quota(&mut self, raw: &Spanned<RawQuota>) -> Option<Quota> {
        let q = raw.get_ref();
        let requests = *q.requests.get_ref();
        let per = self.period(&q.per, "quota");
        if requests < 1 {
            self.error(
                q.requests.span(),
                "quota requests is how many requests are allowed per period: at least 1",
            );
            return None;
        }
        Some(Quota {
            requests: requests as u64,
            per: per?,
        })
    }

    fn period(&mut self, per: &Spanned<String>, what: &str) -> Option<Duration> {
        match parse_duration(per.get_ref()) {
            Ok(d) if d.is_zero() => {
                self.error(per.span(), format!("{what} per must be greater than zero"));
                None
            }
            Ok(d) if d > MAX_PERIOD => {
                self.error(per.span(), format!("{what} per is longer than ten years"));
                None
            }
            Ok(d) => Some(d),
            Err(msg) => {
                self.error(per.span(), format!("{what} per: {msg}"));
                None
            }
        }
    }

    pub(super) fn rate_limit_settings(&mut self, raw: Option<&RawRateLimits>) -> RateLimitSettings {
        let Some(raw) = raw else {
            return RateLimitSettings::default();
        };
        let store = match &raw.store {
            None => LimitStore::Local,
            Some(s) => match store(s.get_ref()) {
                Ok(store) => store,
                Err(msg) => {
                    self.error(s.span(), msg);
                    LimitStore::Local
                }
            },
        };
        let on_store_error = match raw.on_store_error.as_ref() {
            None => OnStoreError::Allow,
            Some(v) => match v.get_ref().as_str() {
                "allow" => OnStoreError::Allow,
                "deny" => OnStoreError::Deny,
                other => {
                    self.error(
                        v.span(),
                        format!("on_store_error {other:?} is not one of: \"allow\" (keep serving, each gateway enforcing limits on its own), \"deny\" (refuse limited users' requests with 503)"),
                    );
                    OnStoreError::Allow
                }
            },
        };
        RateLimitSettings {
            store,
            on_store_error,
            forward_remaining: raw.forward_remaining.unwrap_or(false),
        }
    }
}

/// A user's effective limits: its own `rate_limit` if it has one, the rest from its group
/// (without one, the group's own allocation, shared).
pub(super) fn user_limits(group: &SharedLimits, own_rate: Option<RateLimit>) -> SharedLimits {
    match own_rate {
        None => group.clone(),
        Some(rate) => SharedLimits::new(UserLimits {
            rate: Some((rate, LimitOrigin::User)),
            ..**group
        }),
    }
}

fn store(text: &str) -> Result<LimitStore, String> {
    let hint = "write \"local\" (this process) or a Redis URL such as \"redis://127.0.0.1:6379/0\"";
    if text == "local" {
        return Ok(LimitStore::Local);
    }
    if text.starts_with("rediss://") {
        return Err(format!(
            "store: TLS to Redis (rediss://) is not supported: reach Redis over a private network with redis://, or {hint}"
        ));
    }
    if !text.starts_with("redis://") {
        return Err(format!("store {:?} is not a store: {hint}", shown(text)));
    }
    redis::Client::open(text).map_err(|e| {
        format!(
            "store {:?} is not a valid Redis URL ({e}): {hint}",
            shown(text)
        )
    })?;
    Ok(LimitStore::Redis {
        url: text.into(),
        shown: shown(text).into(),
    })
}

/// A Redis URL without the user name and password it may carry.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".into();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn a_shown_redis_url_has_no_credentials() {
        assert_eq!(
            shown("redis://:s3cret@10.0.0.5:6379/2"),
            "redis://10.0.0.5:6379/2"
        );
        assert_eq!(shown("redis://user:p@ss@host/0"), "redis://host/0");
        assert_eq!(
            shown("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}
