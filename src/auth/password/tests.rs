//! Tests of password hashing and verification: the policy, the cache and the failure limiter.

use std::sync::atomic::Ordering;
use std::time::Duration;

use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, Version};

use super::limiter::{BucketShape, FailureLimiter};
use super::*;
use crate::auth::address::SourceWhitelist;
use crate::snapshot::{ApiUser, UserStatus};

/// A cheap hash (tests verify many times); the parameters are read back from the PHC string.
fn cheap_hash(password: &str) -> String {
    let params = Params::new(64, 1, 1, None).unwrap();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password.as_bytes())
        .unwrap()
        .to_string()
}

fn user(hash: Option<String>) -> ApiUser {
    ApiUser {
        id: "crm-sync@example.org".into(),
        display_name: None,
        status: UserStatus::Active,
        group: 0,
        sources: SourceWhitelist::Any,
        password_hash: hash.map(Into::into),
        limits: Default::default(),
        limit_state: Default::default(),
    }
}

/// An attempt for `user`'s id from 192.0.2.1.
fn attempt<'a>(user: &'a ApiUser, password: &'a str) -> PasswordAttempt<'a> {
    PasswordAttempt {
        id: &user.id,
        user: Some(user),
        password,
        client: "192.0.2.1".parse().unwrap(),
    }
}

fn runs(v: &PasswordVerifier) -> (u64, u64, u64, u64) {
    let s = v.stats();
    (
        s.cache_hits.load(Ordering::Relaxed),
        s.argon2_runs.load(Ordering::Relaxed),
        s.failures.load(Ordering::Relaxed),
        s.throttled.load(Ordering::Relaxed),
    )
}

#[test]
fn a_success_is_cached_and_a_failure_is_not() {
    let v = PasswordVerifier::new();
    let u = user(Some(cheap_hash("correct-horse-1")));
    assert!(v.verify(&attempt(&u, "correct-horse-1")));
    assert!(v.verify(&attempt(&u, "correct-horse-1")));
    assert_eq!(runs(&v), (1, 1, 0, 0), "the second check is a cache hit");
    assert!(!v.verify(&attempt(&u, "wrong-horse-1")));
    assert!(!v.verify(&attempt(&u, "wrong-horse-1")));
    assert_eq!(
        runs(&v),
        (1, 3, 2, 0),
        "failures always run Argon2 (until throttled)"
    );
}

#[test]
fn a_changed_hash_misses_the_cache() {
    let v = PasswordVerifier::new();
    let old = user(Some(cheap_hash("first-pass-1")));
    assert!(v.verify(&attempt(&old, "first-pass-1")));
    let new = user(Some(cheap_hash("second-pass-2")));
    assert!(
        !v.verify(&attempt(&new, "first-pass-1")),
        "the old password no longer matches"
    );
    assert!(v.verify(&attempt(&new, "second-pass-2")));
    assert_eq!(runs(&v).1, 3);
}

#[test]
fn repeated_failures_are_throttled_but_a_cached_success_still_works() {
    let limiter = FailureLimiter::new(
        BucketShape {
            burst: 2,
            refill_every: Duration::from_secs(3600),
        },
        BucketShape {
            burst: 100,
            refill_every: Duration::from_secs(3600),
        },
        BucketShape {
            burst: 100,
            refill_every: Duration::from_secs(3600),
        },
    );
    let v = PasswordVerifier::with_limiter(limiter);
    let u = user(Some(cheap_hash("right-answer-9")));
    assert!(v.verify(&attempt(&u, "right-answer-9")));
    for _ in 0..5 {
        assert!(!v.verify(&attempt(&u, "guess-1234")));
    }
    let (_, argon2_runs, failures, throttled) = runs(&v);
    assert_eq!(
        (argon2_runs, failures, throttled),
        (3, 2, 3),
        "only the burst ran Argon2"
    );
    assert!(
        v.verify(&attempt(&u, "right-answer-9")),
        "the cached credential is answered before the limiter"
    );
}

#[test]
fn users_without_a_valid_hash_never_pass() {
    let v = PasswordVerifier::new();
    assert!(!v.verify(&attempt(&user(None), "anything-1")));
    assert!(!v.verify(&attempt(
        &user(Some("$argon2id$garbage".into())),
        "anything-1"
    )));
}

#[test]
fn an_unknown_id_or_one_without_a_password_costs_an_argon2_run_like_a_wrong_password() {
    let v = PasswordVerifier::new();
    let no_password = user(None);
    let unknown = PasswordAttempt {
        id: "nobody@example.org",
        user: None,
        password: "anything-1",
        client: "192.0.2.1".parse().unwrap(),
    };
    assert!(!v.verify(&unknown));
    assert!(!v.verify(&PasswordAttempt {
        user: None,
        ..attempt(&no_password, "anything-1")
    }));
    assert_eq!(
        runs(&v),
        (0, 2, 2, 0),
        "two dummy Argon2 runs, two failures"
    );
    assert!(
        check_password_hash(dummy_hash()).is_ok(),
        "{}",
        dummy_hash()
    );
    assert!(
        dummy_hash().starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "the dummy costs what a real user's hash costs: {}",
        dummy_hash()
    );
    // The limiter counts unknown ids too: their throttling looks like a real id's.
    for _ in 0..10 {
        assert!(!v.verify(&unknown));
    }
    let (_, argon2_runs, _, throttled) = runs(&v);
    assert_eq!((argon2_runs, throttled), (2 + 4, 6));
}

#[test]
fn hashes_are_checked_as_phc_strings() {
    let real = hash_password("a-real-one-7").unwrap();
    assert!(
        real.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{real}"
    );
    check_password_hash(&real).unwrap();
    assert!(argon2_matches(&real, "a-real-one-7"));
    for (bad, needle) in [
        (
            "$argon2i$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA",
            "Argon2id",
        ),
        ("$argon2id$v=19$m=19456,t=2,p=1", "no salt"),
        ("$argon2id$nonsense", "not a valid PHC"),
        (
            "$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
            "exceed",
        ),
    ] {
        let err = check_password_hash(bad).expect_err(bad);
        assert!(err.contains(needle), "{bad}: {err}");
    }
}
