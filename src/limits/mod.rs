//! Per-user rate limits, quotas and concurrency limits: their state, kept outside the snapshot
//! and keyed by user id, locally or shared through Redis; and the failed-authentication limiter.
//!
//! A reload never rebuilds this state: a user whose limits did not change keeps its counters, a
//! changed limit applies from the next request (the limit's parameters come from the snapshot
//! on every call, only the counters live here), and a user that left the file is forgotten
//! (`configure`). Users without limits are never looked up.

pub mod describe;
pub mod failed_auth;
pub mod fields;
pub mod gcra;
mod local;
mod redis_store;
mod shared;
mod step;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;

use crate::snapshot::{ApiUser, LimitStore, OnStoreError, RateLimitSettings, Snapshot};
pub use fields::{Fields, PolicyState};
pub use redis_store::{RedisStore, StoreStats};
pub use step::LimitKind;
use step::{Step, retry_seconds};

/// A request the limits let through. Holding it holds the user's place among its requests in
/// flight: drop it when the response has ended or the client has gone.
#[derive(Debug, Default)]
#[must_use = "dropping it ends the request's place among the user's requests in flight"]
pub struct Admitted {
    pub fields: Fields,
    _in_flight: Option<InFlight>,
}

/// A request the limits refused.
#[derive(Debug, Clone, Copy)]
pub struct Limited {
    pub kind: LimitKind,
    pub fields: Fields,
    /// Whole seconds, at least 1: `Retry-After`.
    pub retry_after: u64,
}

impl Limited {
    /// The refusal the client gets for it.
    pub fn refusal(&self) -> crate::refusal::Refusal {
        self.kind.refusal()
    }

    /// The 429 (or 503) with its JSON body, `Retry-After` and the RateLimit fields.
    pub fn response<B: From<bytes::Bytes>>(&self) -> http::Response<B> {
        let mut response = self.refusal().response_retry_after(self.retry_after);
        self.fields.insert_into(response.headers_mut());
        response
    }

    /// A failed-auth block of `wait`.
    pub fn failed_attempts(wait: Duration) -> Limited {
        Limited {
            kind: LimitKind::FailedAttempts,
            fields: Fields::default(),
            retry_after: retry_seconds(wait),
        }
    }
}

/// What the limit step needs of one request, taken from the snapshot with the decision (so
/// the snapshot is not held while the shared store answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitPlan {
    pub limits: crate::snapshot::UserLimits,
    /// Whether `[rate_limits] store` is Redis.
    pub shared: bool,
    pub on_store_error: OnStoreError,
    /// `[rate_limits] forward_remaining`.
    pub forward_remaining: bool,
}

impl LimitPlan {
    pub fn of(user: &ApiUser, settings: &RateLimitSettings) -> LimitPlan {
        LimitPlan {
            limits: *user.limits,
            shared: matches!(settings.store, LimitStore::Redis { .. }),
            on_store_error: settings.on_store_error,
            forward_remaining: settings.forward_remaining,
        }
    }
}

/// The per-user state. Every counter starts as "at rest".
#[derive(Debug, Default)]
struct UserState {
    /// Local GCRA: the TAT in nanoseconds after `Limiter::epoch`.
    tat: AtomicU64,
    /// Local quota: (window number, requests counted in it).
    quota: Mutex<(u64, u64)>,
    in_flight: AtomicU32,
    refused: [AtomicU64; 5],
    /// Shared store: the leases this gateway holds.
    leases: shared::Leases,
    /// The limits of the last request, to notice a reload that changed them.
    seen: Mutex<Option<crate::snapshot::UserLimits>>,
}

/// One place among a user's requests in flight, given back on drop.
#[derive(Debug)]
struct InFlight(Arc<UserState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All limit state of one gateway.
pub struct Limiter {
    users: DashMap<Arc<str>, Arc<UserState>>,
    /// Local times are nanoseconds after this.
    epoch: Instant,
    store: ArcSwapOption<RedisStore>,
    pub failed_auth: failed_auth::FailedAuthLimiter,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            users: DashMap::new(),
            epoch: Instant::now(),
            store: ArcSwapOption::empty(),
            failed_auth: failed_auth::FailedAuthLimiter::default(),
        }
    }

    /// Follows a (re)loaded snapshot: connects to a new store URL (keeping the connection if the
    /// URL did not change) and forgets the state of users that are gone or no longer limited.
    /// Call it for the first load and after every applied reload.
    pub fn configure(&self, snapshot: &Snapshot) {
        match &snapshot.rate_limits.store {
            LimitStore::Local => self.store.store(None),
            LimitStore::Redis { url, shown } => {
                let keep = self.store.load().as_ref().is_some_and(|s| s.is_for(url));
                if !keep {
                    match RedisStore::new(url, shown) {
                        Ok(store) => self.store.store(Some(Arc::new(store))),
                        Err(e) => {
                            // Validated when compiled; if the client still refuses it, every
                            // call fails and on_store_error decides, as for an outage.
                            tracing::error!(store = %shown, error = %e, "cannot use the rate-limit store");
                            self.store.store(None);
                        }
                    }
                }
            }
        }
        self.users.retain(|id, _| {
            snapshot
                .user_by_id(id)
                .is_some_and(|u| !u.limits.is_unlimited())
        });
    }

    /// The user's limits for one request that passed authentication, status, source and
    /// permission checks. Users without limits return at once; local limits never wait; the
    /// shared store is asked only when this gateway's lease is spent.
    pub async fn admit(&self, user: &Arc<str>, plan: LimitPlan) -> Result<Admitted, Limited> {
        let limits = plan.limits;
        if limits.is_unlimited() {
            return Ok(Admitted::default());
        }
        let state = self.state(user);
        {
            let mut seen = state.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen != Some(limits) {
                // Leases taken under the old limits are not spent under the new ones.
                state.leases.clear();
                *seen = Some(limits);
            }
        }
        let in_flight = match limits.max_concurrent {
            None => None,
            Some(max) => match acquire(&state, max) {
                Some(place) => Some(place),
                None => {
                    return Err(self.refused(&state, LimitKind::Concurrency, Fields::default(), 1));
                }
            },
        };
        let shared = if plan.shared {
            self.store.load_full()
        } else {
            None
        };
        let mut fields = Fields::default();
        if let Some((rate, _)) = limits.rate {
            let outcome = match &shared {
                None => Ok(self.local_rate(&state, &rate)),
                Some(store) => shared::rate(store, &state.leases, user, &rate).await,
            };
            match self.settle(outcome, plan.on_store_error, || {
                self.local_rate(&state, &rate)
            }) {
                Ok(s) => fields.rate = Some(s),
                Err((kind, retry, s)) => {
                    fields.rate = s;
                    return Err(self.refused(&state, kind, fields, retry));
                }
            }
        }
        if let Some(quota) = limits.quota {
            let outcome = match &shared {
                None => Ok(self.local_quota(&state, &quota)),
                Some(store) => shared::quota(store, &state.leases, user, &quota).await,
            };
            match self.settle(outcome, plan.on_store_error, || {
                self.local_quota(&state, &quota)
            }) {
                Ok(s) => fields.quota = Some(s),
                Err((kind, retry, s)) => {
                    fields.quota = s;
                    return Err(self.refused(&state, kind, fields, retry));
                }
            }
        }
        Ok(Admitted {
            fields,
            _in_flight: in_flight,
        })
    }

    /// A store outcome, or what `on_store_error` makes of a failed one.
    #[allow(clippy::type_complexity)]
    fn settle(
        &self,
        outcome: Result<Step, redis_store::StoreError>,
        on_error: OnStoreError,
        local: impl FnOnce() -> Step,
    ) -> Result<PolicyState, (LimitKind, u64, Option<PolicyState>)> {
        let step = match outcome {
            Ok(step) => step,
            Err(_) => match on_error {
                // Each gateway then enforces the whole limit on its own.
                OnStoreError::Allow => local(),
                OnStoreError::Deny => return Err((LimitKind::StoreUnavailable, 1, None)),
            },
        };
        match step {
            Step::Passed(s) => Ok(s),
            Step::Refused(kind, retry, s) => Err((kind, retry, Some(s))),
        }
    }

    fn refused(&self, state: &UserState, kind: LimitKind, fields: Fields, retry: u64) -> Limited {
        state.refused[kind.index()].fetch_add(1, Ordering::Relaxed);
        Limited {
            kind,
            fields,
            retry_after: retry.max(1),
        }
    }

    fn state(&self, id: &Arc<str>) -> Arc<UserState> {
        if let Some(s) = self.users.get(id) {
            return Arc::clone(s.value());
        }
        Arc::clone(self.users.entry(Arc::clone(id)).or_default().value())
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// The shared store in use, if any.
    pub fn shared_store(&self) -> Option<Arc<RedisStore>> {
        self.store.load_full()
    }

    /// Requests in flight and refusals by kind, of one user with state here.
    pub fn user_counts(&self, id: &str) -> Option<(u32, [u64; 5])> {
        self.users.get(id).map(|s| {
            (
                s.in_flight.load(Ordering::Relaxed),
                std::array::from_fn(|i| s.refused[i].load(Ordering::Relaxed)),
            )
        })
    }

    /// Users with state here (limited users that have sent a request since they were loaded).
    pub fn tracked_users(&self) -> usize {
        self.users.len()
    }

    /// The limits' Prometheus series (docs/metrics.md), labelled by users of the current
    /// snapshot only, so a removed user's series disappear with it.
    pub fn render_metrics(&self, out: &mut String) {
        let mut users: Vec<render::UserSeries> = self
            .users
            .iter()
            .map(|e| {
                let state = e.value();
                let concurrent = state
                    .seen
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .is_some_and(|l| l.max_concurrent.is_some());
                render::UserSeries {
                    id: Arc::clone(e.key()),
                    refused: LimitKind::PER_USER
                        .map(|kind| state.refused[kind.index()].load(Ordering::Relaxed)),
                    in_flight: concurrent.then(|| state.in_flight.load(Ordering::Relaxed)),
                }
            })
            .collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        render::metrics(&users, self.shared_store().as_deref(), out);
    }
}

pub mod render;

fn acquire(state: &Arc<UserState>, max: u32) -> Option<InFlight> {
    let before = state.in_flight.fetch_add(1, Ordering::Relaxed);
    let place = InFlight(Arc::clone(state));
    if before >= max {
        drop(place);
        return None;
    }
    Some(place)
}

#[cfg(test)]
mod tests;
