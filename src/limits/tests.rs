//! Tests of the limits: rate, quota and concurrency state against compiled snapshots.

use std::path::Path;

use super::*;
use crate::snapshot::Snapshot;

fn snapshot(group_limits: &str, user_limit: &str) -> Snapshot {
    let text = format!(
        r#"
[upstreams.api]
url = "builtin:echo"

[[routes]]
prefix = "/"
upstream = "api"

[groups.partners]
allow = [{{ path = "/**", verbs = ["view"] }}]
{group_limits}

[groups.free]
allow = [{{ path = "/**", verbs = ["view"] }}]

[users."limited@example.org"]
status = "active"
group = "partners"
remote_addresses = "*"
{user_limit}

[users."free@example.org"]
status = "active"
group = "free"
remote_addresses = "*"
"#
    );
    crate::config::compile(Path::new("test.toml"), &text).expect("the test file compiles")
}

fn limited(s: &Snapshot) -> &ApiUser {
    s.user_by_id("limited@example.org").unwrap()
}

async fn count_admitted(limiter: &Limiter, s: &Snapshot, n: usize) -> usize {
    let mut admitted = 0;
    for _ in 0..n {
        if limiter
            .admit(&limited(s).id, limiter.plan(limited(s), &s.rate_limits))
            .await
            .is_ok()
        {
            admitted += 1;
        }
    }
    admitted
}

#[tokio::test]
async fn a_burst_passes_then_the_next_request_is_refused_with_retry_after() {
    let s = snapshot(
        r#"rate_limit = { requests = 2, per = "1m", burst = 3 }"#,
        "",
    );
    let limiter = Limiter::new();
    limiter.configure(&s);
    let first = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap();
    let (policy, state) = first.fields.header_values().unwrap();
    assert_eq!(policy, "\"user\";q=2;w=60");
    assert_eq!(state, "\"user\";r=3;t=30");
    assert_eq!(count_admitted(&limiter, &s, 10).await, 3);
    let refused = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap_err();
    assert_eq!(refused.kind, LimitKind::Rate);
    assert!(
        (29..=30).contains(&refused.retry_after),
        "{}",
        refused.retry_after
    );
    assert_eq!(refused.fields.rate.unwrap().remaining, 0);
}

#[tokio::test]
async fn users_without_limits_are_not_tracked() {
    let s = snapshot(r#"rate_limit = { requests = 1, per = "1m" }"#, "");
    let limiter = Limiter::new();
    let free = s.user_by_id("free@example.org").unwrap();
    for _ in 0..100 {
        let admitted = limiter
            .admit(&free.id, limiter.plan(free, &s.rate_limits))
            .await
            .unwrap();
        assert!(admitted.fields.is_empty());
    }
    assert_eq!(limiter.tracked_users(), 0);
}

#[tokio::test]
async fn a_users_own_rate_limit_overrides_its_groups() {
    let s = snapshot(
        r#"rate_limit = { requests = 100, per = "1s", burst = 50 }"#,
        r#"rate_limit = { requests = 1, per = "1m", burst = 1 }"#,
    );
    let limiter = Limiter::new();
    assert_eq!(count_admitted(&limiter, &s, 10).await, 2);
}

#[tokio::test]
async fn concurrency_is_given_back_when_the_admission_is_dropped() {
    let s = snapshot("max_concurrent = 2", "");
    let limiter = Limiter::new();
    let a = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap();
    let b = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap();
    let refused = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap_err();
    assert_eq!(refused.kind, LimitKind::Concurrency);
    assert_eq!(limiter.user_counts("limited@example.org").unwrap().0, 2);
    drop(a);
    let c = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap();
    drop((b, c));
    assert_eq!(limiter.user_counts("limited@example.org").unwrap().0, 0);
}

#[tokio::test]
async fn a_quota_refuses_once_spent_and_says_when_it_comes_back() {
    let s = snapshot(r#"quota = { requests = 3, per = "1h" }"#, "");
    let limiter = Limiter::new();
    assert_eq!(count_admitted(&limiter, &s, 5).await, 3);
    let refused = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap_err();
    assert_eq!(refused.kind, LimitKind::Quota);
    assert!(refused.retry_after <= 3600);
    let quota = refused.fields.quota.unwrap();
    assert_eq!((quota.quota, quota.window, quota.remaining), (3, 3600, 0));
}

#[tokio::test]
async fn a_reload_keeps_unchanged_counters_applies_changed_limits_and_frees_removed_users() {
    let before = snapshot(
        r#"rate_limit = { requests = 1, per = "1h", burst = 1 }"#,
        "",
    );
    let limiter = Limiter::new();
    limiter.configure(&before);
    assert_eq!(count_admitted(&limiter, &before, 5).await, 2);

    // Unchanged: still spent.
    let same = snapshot(
        r#"rate_limit = { requests = 1, per = "1h", burst = 1 }"#,
        "",
    );
    limiter.configure(&same);
    assert_eq!(count_admitted(&limiter, &same, 1).await, 0);

    // A larger burst applies to the very next request.
    let raised = snapshot(
        r#"rate_limit = { requests = 1, per = "1h", burst = 5 }"#,
        "",
    );
    limiter.configure(&raised);
    assert_eq!(count_admitted(&limiter, &raised, 10).await, 4);

    // The user's limits removed: its state goes.
    let unlimited = snapshot("", "");
    limiter.configure(&unlimited);
    assert_eq!(limiter.tracked_users(), 0);
}

#[tokio::test]
async fn limit_metrics_name_only_current_users() {
    let s = snapshot(
        r#"rate_limit = { requests = 1, per = "1h" }
max_concurrent = 5"#,
        "",
    );
    let limiter = Limiter::new();
    limiter.configure(&s);
    let _held = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap();
    let _ = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap_err();
    let mut text = String::new();
    limiter.render_metrics(&mut text);
    assert!(
        text.contains(
            "apiward_limit_refusals_total{user=\"limited@example.org\",kind=\"rate_limited\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("apiward_limit_in_flight{user=\"limited@example.org\"} 1"));
    assert!(
        text.contains("apiward_limit_store_up 1\n")
            && text.contains("apiward_limit_store_round_trips_total 0\n"),
        "the local store is always up and makes no round trips: {text}"
    );
}

#[tokio::test]
async fn each_snapshot_entry_holds_its_users_state_kept_across_reloads_and_freed_with_the_user() {
    let limit = r#"rate_limit = { requests = 1, per = "1h", burst = 1 }"#;
    let before = snapshot(limit, "");
    let limiter = Limiter::new();
    limiter.configure(&before);
    assert!(
        limited(&before).limit_state.get().is_none(),
        "no state before the user's first request"
    );
    assert_eq!(count_admitted(&limiter, &before, 1).await, 1);
    let first = Arc::clone(limited(&before).limit_state.get().expect("resolved"));

    // Unchanged: the new entry is given the very same state by the reload.
    let same = snapshot(limit, "");
    limiter.configure(&same);
    let kept = limited(&same).limit_state.get().expect("carried over");
    assert!(Arc::ptr_eq(&first, kept));

    // Changed: a new state, around the same counters.
    let raised = snapshot(
        r#"rate_limit = { requests = 1, per = "1h", burst = 5 }"#,
        "",
    );
    limiter.configure(&raised);
    let changed = limited(&raised).limit_state.get().expect("carried over");
    assert!(!Arc::ptr_eq(&first, changed));
    assert!(Arc::ptr_eq(&first.counters, &changed.counters));

    // Deleted: once the snapshots that named the user are gone, so is every part of its state.
    let counters = Arc::downgrade(&first.counters);
    drop(first);
    let gone = snapshot("", "");
    limiter.configure(&gone);
    assert_eq!(limiter.tracked_users(), 0);
    drop((before, same, raised));
    assert!(counters.upgrade().is_none(), "the state outlived its user");
}

#[tokio::test]
async fn the_engines_fields_are_byte_for_byte_the_fields_of_hyper_s_path() {
    let s = snapshot(
        r#"rate_limit = { requests = 10, per = "1500ms", burst = 4 }
quota = { requests = 1000, per = "1d" }
max_concurrent = 3"#,
        "",
    );
    let limiter = Limiter::new();
    let admitted = limiter
        .admit(&limited(&s).id, limiter.plan(limited(&s), &s.rate_limits))
        .await
        .unwrap();
    let mut engine = Vec::new();
    admitted.write_head(&mut engine);
    let (policy, state) = admitted.fields.header_values().unwrap();
    assert_eq!(
        String::from_utf8(engine).unwrap(),
        format!(
            "RateLimit-Policy: {}\r\nRateLimit: {}\r\n",
            policy.to_str().unwrap(),
            state.to_str().unwrap()
        )
    );
    // 10 per 1.5 s is 13 per whole 2 s.
    assert_eq!(policy, "\"user\";q=13;w=2, \"quota\";q=1000;w=86400");
    let until_tomorrow = admitted.fields.quota.unwrap().reset;
    assert_eq!(
        state,
        format!("\"user\";r=4;t=1, \"quota\";r=999;t={until_tomorrow}").as_str()
    );
    assert_eq!(limiter.user_counts("limited@example.org").unwrap().0, 1);
    drop(admitted);
    assert_eq!(limiter.user_counts("limited@example.org").unwrap().0, 0);
}
