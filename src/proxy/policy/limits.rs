//! The limit step of admission, once for every transport: after the decision allowed a request
//! (so a caller that is not authenticated, not active or not from a registered source never
//! uses an integration's allowance), the user's rate limit, quota and concurrency limit; and
//! what a refusal then carries (`Retry-After`, the RateLimit fields).

use super::admission::Forward;
use super::context::Policy;
use crate::limits::{Admitted, Fields, LimitPlan, Limited};
use crate::observe::RequestRecord;

/// Why the gateway answered instead of the upstream: a refusal of the decision or of the
/// upstream, or one of a limit (with its `Retry-After` and RateLimit fields).
impl Policy {
    /// The user's limits for an admitted request. Hold the `Admitted` until the response has
    /// ended or the client has gone (it is the request's place among the user's requests in
    /// flight); write its fields on the response head. `plan` is the `Forward`'s: the user's
    /// limit state moves from it into the `Admitted`. With the local store this is
    /// `limit_local`, which a caller may call instead, without a future.
    pub async fn limit(
        &self,
        plan: &mut LimitPlan,
        record: &mut RequestRecord,
    ) -> Result<Admitted, Limited> {
        if !plan.shared {
            return self.limit_local(plan, record);
        }
        if plan.limits.is_unlimited() {
            return Ok(Admitted::default());
        }
        let Some(user) = &record.user else {
            return Ok(Admitted::default());
        };
        let outcome = self.limits.admit(user, plan.take()).await;
        note(record, outcome)
    }

    /// `limit` for a plan whose store is local (`!plan.shared`): it never waits, and the
    /// request's arrival is its time.
    pub fn limit_local(
        &self,
        plan: &mut LimitPlan,
        record: &mut RequestRecord,
    ) -> Result<Admitted, Limited> {
        if plan.limits.is_unlimited() {
            return Ok(Admitted::default());
        }
        let Some(user) = &record.user else {
            return Ok(Admitted::default());
        };
        let outcome = self.limits.admit_local(user, plan.take(), record.started);
        note(record, outcome)
    }
}

/// What the limit step said, in the request's record.
fn note(
    record: &mut RequestRecord,
    outcome: Result<Admitted, Limited>,
) -> Result<Admitted, Limited> {
    let fields = match &outcome {
        Ok(admitted) => {
            record.limit = Some("admitted");
            &admitted.fields
        }
        Err(limited) => {
            record.limit = Some(limited.kind.as_str());
            record.decision = limited.refusal().code();
            &limited.fields
        }
    };
    record.limit_remaining = least_remaining(fields);
    outcome
}

impl Forward {
    /// The `X-Apiward-RateLimit-Remaining` the upstream gets: with `[rate_limits]
    /// forward_remaining = true`, for a user under a rate limit or quota, the least of what is
    /// left of them after this request (as the request log's `limit_remaining`).
    pub fn remaining_for_upstream(&self, record: &RequestRecord) -> Option<u64> {
        if self.limit_plan.forward_remaining {
            record.limit_remaining
        } else {
            None
        }
    }
}

fn least_remaining(fields: &Fields) -> Option<u64> {
    fields
        .rate
        .iter()
        .chain(fields.quota.iter())
        .map(|s| s.remaining)
        .min()
}
