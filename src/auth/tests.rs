//! Tests of the decision: credentials, statuses, sources and permissions against snapshots.

use std::path::Path;

use super::*;
use crate::snapshot::Snapshot;

const NOW: i64 = 1_795_341_600; // 2026-11-22T10:00:00Z

fn snapshot() -> Snapshot {
    let text = format!(
        r#"
[upstreams.api]
url = "http://127.0.0.1:9000"

[[routes]]
prefix = "/supporters/"
upstream = "api"

[[routes]]
prefix = "/pages/"
upstream = "api"

[groups.g]
allow = [
  {{ path = "/supporters/**", verbs = ["view", "create"] }},
  {{ path = "/pages/*", verbs = ["view"] }},
]

[users."a@example.org"]
status = "active"
group = "g"
remote_addresses = "192.0.2.10~198.51.100.0/24"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g"
keys = [
  {{ sha256 = "{}" }},
  {{ sha256 = "{}", expires = 2026-11-22T10:00:00Z }},
]

[users."p@example.org"]
status = "pending"
group = "g"
remote_addresses = "*"
keys = [{{ sha256 = "{}" }}]
"#,
        KeyDigest::of("aw_a").to_hex(),
        KeyDigest::of("aw_a_old").to_hex(),
        KeyDigest::of("aw_p").to_hex(),
    );
    crate::config::compile(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn facts<'r>(
    method: &'r Method,
    path: &'r str,
    credential: Credential<'r>,
    client: &str,
) -> RequestFacts<'r> {
    RequestFacts {
        method,
        path,
        credential,
        certificate: None,
        client: client.parse().unwrap(),
        now: NOW,
    }
}

fn refusal(d: &Decision<'_, '_>) -> Option<Refusal> {
    match d.outcome {
        Outcome::Allowed(_) => None,
        Outcome::Refused(r) => Some(r),
    }
}

/// Accepts exactly one password, to test the Basic branch without Argon2.
struct OnePassword(&'static str);

impl PasswordCheck for OnePassword {
    fn verify(&self, attempt: &PasswordAttempt<'_>) -> bool {
        attempt.password == self.0
    }
}

#[test]
fn the_checks_run_in_order() {
    let s = snapshot();
    let get = Method::GET;
    let delete = Method::DELETE;
    let cases: [(&Method, &str, Credential<'_>, &str, Option<Refusal>); 12] = [
        (
            &get,
            "/nowhere",
            Credential::Missing,
            "192.0.2.10",
            Some(Refusal::MissingCredentials),
        ),
        (
            &get,
            "/nowhere",
            Credential::Malformed,
            "192.0.2.10",
            Some(Refusal::InvalidCredentials),
        ),
        (
            &get,
            "/nowhere",
            Credential::Key("aw_x"),
            "192.0.2.10",
            Some(Refusal::InvalidCredentials),
        ),
        (
            &get,
            "/nowhere",
            Credential::Key("aw_a_old"),
            "192.0.2.10",
            Some(Refusal::KeyExpired),
        ),
        (
            &get,
            "/nowhere",
            Credential::Key("aw_p"),
            "192.0.2.10",
            Some(Refusal::UserInactive),
        ),
        (
            &get,
            "/nowhere",
            Credential::Key("aw_a"),
            "192.0.2.11",
            Some(Refusal::UnregisteredSource),
        ),
        (
            &get,
            "/a%2fb",
            Credential::Key("aw_a"),
            "192.0.2.10",
            Some(Refusal::BadPath),
        ),
        (
            &get,
            "/nowhere",
            Credential::Key("aw_a"),
            "192.0.2.10",
            Some(Refusal::NoRoute),
        ),
        (
            &delete,
            "/supporters/1",
            Credential::Key("aw_a"),
            "192.0.2.10",
            Some(Refusal::Forbidden),
        ),
        (
            &get,
            "/pages/1/x",
            Credential::Key("aw_a"),
            "198.51.100.7",
            Some(Refusal::Forbidden),
        ),
        (
            &get,
            "/supporters/1",
            Credential::Key("aw_a"),
            "::ffff:198.51.100.7",
            None,
        ),
        (
            &get,
            "/pages/1",
            Credential::Key("aw_a"),
            "192.0.2.10",
            None,
        ),
    ];
    for (method, path, credential, client, want) in cases {
        let f = facts(method, path, credential.clone(), client);
        let d = decide(&s, &f, &NoPasswords);
        assert_eq!(
            refusal(&d),
            want,
            "{method} {path} {credential:?} from {client}"
        );
    }
}

#[test]
fn a_key_expires_at_its_instant_exactly() {
    let s = snapshot();
    let get = Method::GET;
    let mut f = facts(
        &get,
        "/supporters/1",
        Credential::Key("aw_a_old"),
        "192.0.2.10",
    );
    f.now = NOW - 1;
    assert_eq!(refusal(&decide(&s, &f, &NoPasswords)), None);
    f.now = NOW;
    assert_eq!(
        refusal(&decide(&s, &f, &NoPasswords)),
        Some(Refusal::KeyExpired)
    );
}

#[test]
fn basic_credentials_go_through_the_same_checks() {
    let s = snapshot();
    let get = Method::GET;
    let ok = Credential::Basic {
        user: "a@example.org",
        password: "right",
    };
    let wrong = Credential::Basic {
        user: "a@example.org",
        password: "wrong",
    };
    let nobody = Credential::Basic {
        user: "nobody@example.org",
        password: "right",
    };
    let no_hash = Credential::Basic {
        user: "p@example.org",
        password: "right",
    };
    let pw = OnePassword("right");
    let d = decide(
        &s,
        &facts(&get, "/supporters/1", ok.clone(), "192.0.2.10"),
        &pw,
    );
    assert_eq!(refusal(&d), None);
    assert_eq!(d.user.unwrap().id.as_ref(), "a@example.org");
    assert!(d.key.is_none());
    for c in [wrong.clone(), nobody.clone(), no_hash] {
        let d = decide(&s, &facts(&get, "/supporters/1", c, "192.0.2.10"), &pw);
        assert_eq!(refusal(&d), Some(Refusal::InvalidCredentials));
        assert!(
            d.user.is_none(),
            "a failed password must not reveal whether the user exists"
        );
    }
    // The log names the existing user a wrong password was tried for; an unknown id is not a user.
    let d = decide(&s, &facts(&get, "/supporters/1", wrong, "192.0.2.10"), &pw);
    assert_eq!(
        d.named_by_refused_password.map(|u| u.id.as_ref()),
        Some("a@example.org")
    );
    let d = decide(&s, &facts(&get, "/supporters/1", nobody, "192.0.2.10"), &pw);
    assert!(d.named_by_refused_password.is_none());
    let d = decide(&s, &facts(&get, "/supporters/1", ok, "203.0.113.1"), &pw);
    assert_eq!(refusal(&d), Some(Refusal::UnregisteredSource));
}

#[test]
fn the_allowed_path_is_the_normalised_one() {
    let s = snapshot();
    let get = Method::GET;
    let d = decide(
        &s,
        &facts(
            &get,
            "/pages/../supporters/%31",
            Credential::Key("aw_a"),
            "192.0.2.10",
        ),
        &NoPasswords,
    );
    match d.outcome {
        Outcome::Allowed(g) => {
            assert_eq!(g.path, "/supporters/1");
            assert_eq!(g.route.prefix.as_ref(), "/supporters/");
        }
        Outcome::Refused(r) => panic!("refused: {r:?}"),
    }
}

#[test]
fn a_trace_sees_every_step_of_an_allowed_request() {
    struct Collect(Vec<String>);
    impl Trace for Collect {
        fn step(&mut self, step: Step<'_>) {
            let name = format!("{step:?}");
            self.0
                .push(name.split([' ', '(', '{']).next().unwrap_or("").to_string());
        }
    }
    let s = snapshot();
    let get = Method::GET;
    let mut t = Collect(Vec::new());
    let d = decide_traced(
        &s,
        &facts(&get, "/supporters/1", Credential::Key("aw_a"), "192.0.2.10"),
        &NoPasswords,
        &mut t,
    );
    assert_eq!(refusal(&d), None);
    assert_eq!(
        t.0,
        [
            "Credential",
            "KeyFound",
            "KeyExpiry",
            "Status",
            "Source",
            "Path",
            "Route",
            "Permission"
        ]
    );
}

#[test]
fn a_basic_credential_from_an_unregistered_source_is_refused_before_its_password_is_checked() {
    struct Counting(std::cell::Cell<u32>);
    impl PasswordCheck for Counting {
        fn verify(&self, attempt: &PasswordAttempt<'_>) -> bool {
            self.0.set(self.0.get() + 1);
            attempt.password == "right"
        }
    }
    let s = snapshot();
    let get = Method::GET;
    let checks = Counting(std::cell::Cell::new(0));
    for password in ["right", "wrong"] {
        let c = Credential::Basic {
            user: "a@example.org",
            password,
        };
        let d = decide(&s, &facts(&get, "/supporters/1", c, "203.0.113.1"), &checks);
        assert_eq!(refusal(&d), Some(Refusal::UnregisteredSource));
        assert!(d.user.is_none(), "nobody was identified");
    }
    assert_eq!(checks.0.get(), 0, "no password was checked");
    // An unknown id and an id without a password are checked (against a dummy) like a real one.
    for user in ["nobody@example.org", "p@example.org"] {
        let c = Credential::Basic {
            user,
            password: "right",
        };
        let d = decide(&s, &facts(&get, "/supporters/1", c, "192.0.2.10"), &checks);
        assert_eq!(refusal(&d), Some(Refusal::InvalidCredentials), "{user}");
    }
    assert_eq!(checks.0.get(), 2);
}

#[test]
fn a_key_longer_than_the_bound_is_refused_before_it_is_hashed() {
    let s = snapshot();
    let get = Method::GET;
    let long = format!("aw_{}", "x".repeat(credential::MAX_KEY_LEN));
    let d = decide(
        &s,
        &facts(&get, "/supporters/1", Credential::Key(&long), "192.0.2.10"),
        &NoPasswords,
    );
    assert_eq!(refusal(&d), Some(Refusal::InvalidCredentials));
    assert!(d.key_digest.is_none(), "no digest was made");
    let at_bound = "k".repeat(credential::MAX_KEY_LEN);
    let d = decide(
        &s,
        &facts(
            &get,
            "/supporters/1",
            Credential::Key(&at_bound),
            "192.0.2.10",
        ),
        &NoPasswords,
    );
    assert!(
        d.key_digest.is_some(),
        "a key at the bound is still looked up"
    );
}
