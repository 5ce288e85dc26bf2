//! Per-user rate limits, quotas and concurrency limits: their state, owned here by user id and
//! hung on each user's snapshot entry, kept locally or shared through Redis; and the
//! failed-authentication limiter.
//!
//! A reload never rebuilds this state: a user whose limits did not change keeps its state, a
//! user whose limits changed gets a new state around the same counters (so the new limit applies
//! from the next request), and a user that left the file, or is no longer limited, is forgotten
//! (`configure`). A request reads its user's state from the snapshot entry (`state::LimitCell`):
//! no lookup, no lock; only the first request of an entry without one looks it up by id. Users
//! without limits are never looked up.

pub mod describe;
pub mod failed_auth;
pub mod fields;
pub mod gcra;
mod lease;
mod local;
mod redis_store;
mod shared;
pub(crate) mod state;
mod step;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;

use crate::snapshot::{ApiUser, LimitStore, OnStoreError, RateLimitSettings, Snapshot, UserLimits};
pub use fields::{Fields, PolicyState};
use gcra::Gcra;
pub use redis_store::{RedisStore, StoreStats};
use state::{Counters, QuotaShape, RateShape, UserLimitState};
pub use step::LimitKind;
use step::{Step, retry_seconds};

/// A request the limits let through. Holding it holds the user's place among its requests in
/// flight: drop it when the response has ended or the client has gone.
#[derive(Debug, Default)]
#[must_use = "dropping it ends the request's place among the user's requests in flight"]
pub struct Admitted {
    pub fields: Fields,
    /// `None` for a user without limits.
    hold: Option<Hold>,
}

impl Admitted {
    /// Appends `RateLimit-Policy` and `RateLimit` to a response head being written by hand (the
    /// engine's path), the policy as worked out when the user's limits were loaded.
    pub fn write_head(&self, out: &mut Vec<u8>) {
        match &self.hold {
            Some(hold) if !self.fields.is_empty() => {
                out.reserve(hold.state.head.len() + fields::STATE_MAX + 2);
                out.extend_from_slice(&hold.state.head);
                self.fields.write_state(out);
                out.extend_from_slice(b"\r\n");
            }
            _ => self.fields.write_head(out),
        }
    }
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
/// the snapshot is not held while the shared store answers): `Limiter::plan`.
#[derive(Debug, Clone, Default)]
pub struct LimitPlan {
    pub limits: crate::snapshot::UserLimits,
    /// Whether `[rate_limits] store` is Redis.
    pub shared: bool,
    pub on_store_error: OnStoreError,
    /// `[rate_limits] forward_remaining`.
    pub forward_remaining: bool,
    /// The user's state, from its snapshot entry; `None` for a user without limits.
    state: Option<Arc<UserLimitState>>,
}

impl LimitPlan {
    /// The plan for the limit step, which takes the user's state with it (into the `Admitted`,
    /// which holds it until the request ends); what stays is what the rest of the request reads.
    pub fn take(&mut self) -> LimitPlan {
        LimitPlan {
            state: self.state.take(),
            ..*self
        }
    }
}

/// A user with state here: the limits its current state was made for.
#[derive(Debug)]
struct Tracked {
    limits: crate::snapshot::UserLimits,
    state: Arc<UserLimitState>,
}

/// All limit state of one gateway.
pub struct Limiter {
    /// Every limited user with state, by id: what a reload carries over (or forgets), and what
    /// metrics and `/status` read. Requests find their state on their snapshot entry instead.
    users: DashMap<Arc<str>, Tracked>,
    /// Local times are nanoseconds after this.
    epoch: Instant,
    /// `epoch` in milliseconds since the Unix epoch: local quota windows, like the shared
    /// store's, are multiples of their period from the Unix epoch.
    epoch_unix_ms: u64,
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
        let epoch = Instant::now();
        let epoch_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Limiter {
            users: DashMap::new(),
            epoch,
            epoch_unix_ms,
            store: ArcSwapOption::empty(),
            failed_auth: failed_auth::FailedAuthLimiter::default(),
        }
    }

    /// Follows a (re)loaded snapshot: connects to a new store URL (keeping the connection if the
    /// URL did not change), forgets the state of users that are gone or no longer limited, makes
    /// a new state around the same counters for users whose limits changed, and hangs every
    /// kept state on its user's new snapshot entry. Call it for the first load and after every
    /// applied reload.
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
        let mut kept = Vec::new();
        self.users.retain(|id, tracked| {
            let Some(user) = snapshot.user_by_id(id).filter(|u| !u.limits.is_unlimited()) else {
                return false;
            };
            if tracked.limits != *user.limits {
                *tracked = Tracked::new(*user.limits, Arc::clone(&tracked.state.counters));
            }
            kept.push((user, Arc::clone(&tracked.state)));
            true
        });
        // Outside the map's locks: a request filling a cell takes one of them.
        for (user, state) in kept {
            user.limit_state.fill(&state);
        }
    }

    /// What the limit step needs of `user`'s request, its state taken from the user's snapshot
    /// entry (resolved by id, once per entry, when the entry has none yet).
    pub fn plan(&self, user: &ApiUser, settings: &RateLimitSettings) -> LimitPlan {
        let state = if user.limits.is_unlimited() {
            None
        } else {
            Some(Arc::clone(match user.limit_state.get() {
                Some(state) => state,
                None => user.limit_state.fill(&self.resolve(&user.id, *user.limits)),
            }))
        };
        LimitPlan {
            limits: *user.limits,
            shared: matches!(settings.store, LimitStore::Redis { .. }),
            on_store_error: settings.on_store_error,
            forward_remaining: settings.forward_remaining,
            state,
        }
    }

    /// The state of user `id` under `limits`: the one kept here if it was made for them, else a
    /// new one around the user's counters (or new counters, for a user not seen yet).
    fn resolve(&self, id: &Arc<str>, limits: UserLimits) -> Arc<UserLimitState> {
        let mut tracked = self
            .users
            .entry(Arc::clone(id))
            .or_insert_with(|| Tracked::new(limits, Arc::default()));
        if tracked.limits != limits {
            *tracked = Tracked::new(limits, Arc::clone(&tracked.state.counters));
        }
        Arc::clone(&tracked.state)
    }

    /// The user's limits for one request that passed authentication, status, source and
    /// permission checks (`plan` is `Limiter::plan`'s). Users without limits return at once;
    /// the shared store is asked only when this gateway's lease is spent. With the local store
    /// this is `admit_local` at the present time.
    pub async fn admit(&self, user: &Arc<str>, mut plan: LimitPlan) -> Result<Admitted, Limited> {
        let store = if plan.shared {
            self.store.load_full()
        } else {
            None
        };
        let Some(store) = store else {
            return self.admit_local(user, plan, Instant::now());
        };
        if plan.limits.is_unlimited() {
            return Ok(Admitted::default());
        }
        // From here on, a refusal, or this future dropped while the store answers, drops the
        // hold and so gives the place back.
        let hold = self.hold(user, &mut plan)?;
        let fields = self.shared_steps(user, &plan, &hold.state, &store).await?;
        Ok(Admitted {
            fields,
            hold: Some(hold),
        })
    }

    /// `admit` with the local store, as of `arrived` (when the request arrived: its time is
    /// the request's, and the clock is not read again). Never waits, takes no lock and looks
    /// nothing up.
    pub fn admit_local(
        &self,
        user: &Arc<str>,
        mut plan: LimitPlan,
        arrived: Instant,
    ) -> Result<Admitted, Limited> {
        if plan.limits.is_unlimited() {
            return Ok(Admitted::default());
        }
        let hold = self.hold(user, &mut plan)?;
        let now = arrived.saturating_duration_since(self.epoch).as_nanos() as u64;
        let fields = self.local_steps(&hold.state, now)?;
        Ok(Admitted {
            fields,
            hold: Some(hold),
        })
    }

    /// The user's state, and its place among the user's requests in flight if it has
    /// `max_concurrent` (a refusal if there is none left).
    fn hold(&self, user: &Arc<str>, plan: &mut LimitPlan) -> Result<Hold, Limited> {
        let state = match plan.state.take() {
            Some(state) => state,
            None => self.resolve(user, plan.limits),
        };
        let mut in_flight = false;
        if let Some(max) = state.max_concurrent {
            if state.counters.in_flight.fetch_add(1, Ordering::Relaxed) >= max {
                state.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                return Err(self.refused(&state, LimitKind::Concurrency, Fields::default(), 1));
            }
            in_flight = true;
        }
        Ok(Hold { state, in_flight })
    }

    /// The local rate limit and quota at `now` (nanoseconds after `epoch`).
    fn local_steps(&self, state: &UserLimitState, now: u64) -> Result<Fields, Limited> {
        let mut fields = Fields::default();
        if let Some(shape) = &state.rate {
            match self.local_rate(state, shape, now) {
                Step::Passed(s) => fields.rate = Some(s),
                Step::Refused(kind, retry, s) => {
                    fields.rate = Some(s);
                    return Err(self.refused(state, kind, fields, retry));
                }
            }
        }
        if let Some(shape) = &state.quota {
            match self.local_quota(state, shape, self.unix_ms(now)) {
                Step::Passed(s) => fields.quota = Some(s),
                Step::Refused(kind, retry, s) => {
                    fields.quota = Some(s);
                    return Err(self.refused(state, kind, fields, retry));
                }
            }
        }
        Ok(fields)
    }

    /// The rate limit and quota through the shared store; where it fails, what
    /// `on_store_error` says (the local limits, as of the moment it failed, or a refusal).
    async fn shared_steps(
        &self,
        user: &str,
        plan: &LimitPlan,
        state: &UserLimitState,
        store: &RedisStore,
    ) -> Result<Fields, Limited> {
        let mut fields = Fields::default();
        if let (Some(shape), Some((rate, _))) = (&state.rate, &plan.limits.rate) {
            let outcome = shared::rate(store, state.leases(), user, rate).await;
            let local = || self.local_rate(state, shape, self.now());
            match self.settle(outcome, plan.on_store_error, local) {
                Ok(s) => fields.rate = Some(s),
                Err((kind, retry, s)) => {
                    fields.rate = s;
                    return Err(self.refused(state, kind, fields, retry));
                }
            }
        }
        if let (Some(shape), Some(quota)) = (&state.quota, &plan.limits.quota) {
            let outcome = shared::quota(store, state.leases(), user, quota).await;
            let local = || self.local_quota(state, shape, self.unix_ms(self.now()));
            match self.settle(outcome, plan.on_store_error, local) {
                Ok(s) => fields.quota = Some(s),
                Err((kind, retry, s)) => {
                    fields.quota = s;
                    return Err(self.refused(state, kind, fields, retry));
                }
            }
        }
        Ok(fields)
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

    fn refused(
        &self,
        state: &UserLimitState,
        kind: LimitKind,
        fields: Fields,
        retry: u64,
    ) -> Limited {
        state.counters.refused[kind.index()].fetch_add(1, Ordering::Relaxed);
        Limited {
            kind,
            fields,
            retry_after: retry.max(1),
        }
    }

    /// Nanoseconds since `epoch`.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// `now` (nanoseconds since `epoch`) in milliseconds since the Unix epoch.
    fn unix_ms(&self, now: u64) -> u64 {
        self.epoch_unix_ms + now / 1_000_000
    }

    /// The shared store in use, if any.
    pub fn shared_store(&self) -> Option<Arc<RedisStore>> {
        self.store.load_full()
    }

    /// Requests in flight and refusals by kind, of one user with state here.
    pub fn user_counts(&self, id: &str) -> Option<(u32, [u64; 5])> {
        self.users.get(id).map(|t| {
            let counters = &t.state.counters;
            (
                counters.in_flight.load(Ordering::Relaxed),
                std::array::from_fn(|i| counters.refused[i].load(Ordering::Relaxed)),
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
                let counters = &e.value().state.counters;
                render::UserSeries {
                    id: Arc::clone(e.key()),
                    refused: LimitKind::PER_USER
                        .map(|kind| counters.refused[kind.index()].load(Ordering::Relaxed)),
                    in_flight: e
                        .value()
                        .limits
                        .max_concurrent
                        .map(|_| counters.in_flight.load(Ordering::Relaxed)),
                }
            })
            .collect();
        users.sort_by(|a, b| a.id.cmp(&b.id));
        render::metrics(&users, self.shared_store().as_deref(), out);
    }
}

/// An admitted request's hold on its user's state, and on a place among the user's requests in
/// flight if it counts there: given back on drop.
#[derive(Debug)]
struct Hold {
    state: Arc<UserLimitState>,
    in_flight: bool,
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.in_flight {
            self.state
                .counters
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Tracked {
    /// A state for `limits` around `counters`: the limits' numbers and `RateLimit-Policy`
    /// worked out here, once, instead of on every request.
    fn new(limits: UserLimits, counters: Arc<Counters>) -> Tracked {
        let rate = limits.rate.map(|(rate, _)| {
            let gcra = Gcra::of(&rate);
            let (quota, window) = fields::per_whole_seconds(u64::from(rate.requests), rate.per);
            RateShape {
                interval: gcra.interval,
                tolerance: gcra.tolerance,
                quota,
                window,
            }
        });
        let quota = limits.quota.map(|q| {
            let (quota, window) = fields::per_whole_seconds(q.requests, q.per);
            QuotaShape {
                requests: q.requests,
                period_ms: (q.per.as_millis() as u64).max(1),
                quota,
                window,
            }
        });
        // The policy line as every response writes it (`Fields::write_head`): it names the
        // limits, and what is left of them does not enter it.
        let policy_of = Fields {
            rate: limits
                .rate
                .map(|(r, _)| PolicyState::rate(&r, 0, Duration::ZERO)),
            quota: limits
                .quota
                .map(|q| PolicyState::quota(&q, 0, Duration::ZERO)),
        };
        let mut head = b"RateLimit-Policy: ".to_vec();
        policy_of.write_policy(&mut head);
        head.extend_from_slice(b"\r\nRateLimit: ");
        Tracked {
            limits,
            state: Arc::new(UserLimitState::new(
                counters,
                rate,
                quota,
                limits.max_concurrent,
                head.into_boxed_slice(),
            )),
        }
    }
}

pub mod render;

#[cfg(test)]
mod tests;
