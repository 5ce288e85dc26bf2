//! Tests of `explain`: each decision explained the way the gateway makes it.

use std::path::Path;

use super::*;
use crate::auth::address::SourceWhitelist;
use crate::snapshot::KeyDigest;

const NOW: i64 = 1_795_341_600; // 2026-11-22T10:00:00Z
const KEY: &str = "aw_EXPLAINkeyUNITtestONLY0123456789abcdefghij";
const OLD_KEY: &str = "aw_EXPLAINoldKEYunitTESTonly0123456789abcdefg";

fn snapshot() -> Snapshot {
    let text = format!(
        r#"
[server]
trusted_proxies = ["10.9.0.0/16"]

[upstreams.api]
url = "http://127.0.0.1:9000/base"

[upstreams.echo]
url = "builtin:echo"

[[routes]]
prefix = "/supporters/"
upstream = "api"

[[routes]]
prefix = "/echo/"
upstream = "echo"

[groups.g]
allow = [
  {{ path = "/supporters/**", verbs = ["view", "create", "modify"] }},
  {{ path = "/echo/*", verbs = ["view"] }},
]

[groups.empty]
allow = []

[users."a@example.org"]
display_name = "A integration"
status = "active"
group = "g"
remote_addresses = "192.0.2.10~198.51.100.0/24~2001:db8::/32~127.0.0.1"
keys = [
  {{ sha256 = "{}", prefix = "aw_EXPLA", created = 2026-11-22T10:00:00Z }},
  {{ sha256 = "{}", expires = 2026-01-01T00:00:00Z }},
]

[users."e@example.org"]
status = "active"
group = "empty"
remote_addresses = "*"
keys = []

[users."p@example.org"]
status = "pending"
group = "g"
remote_addresses = "*"
keys = []
"#,
        KeyDigest::of(KEY).to_hex(),
        KeyDigest::of(OLD_KEY).to_hex(),
    );
    crate::config::compile(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
}

fn ask(caller: Caller<'_>, source: &str, method: &str, path: &str) -> Explanation {
    let question = Question {
        caller,
        certificate: None,
        source: source.parse().unwrap(),
        method: parse_method(method).unwrap(),
        path,
        now: NOW,
    };
    explain(&snapshot(), &question)
}

fn line<'e>(e: &'e Explanation, label: &str) -> &'e str {
    &e.lines
        .iter()
        .find(|l| l.label == label)
        .unwrap_or_else(|| panic!("no {label} line in\n{e}"))
        .text
}

#[test]
fn an_allowed_request_names_every_step_and_where_it_goes() {
    let e = ask(
        Caller::Key(KEY),
        "127.0.0.1",
        "get",
        "/supporters/./42?fields=a",
    );
    assert_eq!(
        e.verdict,
        Verdict::Allowed {
            to: "http://127.0.0.1:9000/base/supporters/42?fields=a".into()
        }
    );
    assert_eq!(
        line(&e, "key"),
        "aw_EXPLA… → user a@example.org (key prefix aw_EXPLA, created 2026-11-22T10:00:00Z, no expiry)"
    );
    assert_eq!(line(&e, "status"), "active ✓");
    assert_eq!(line(&e, "source"), "127.0.0.1 matches 127.0.0.1 ✓");
    assert_eq!(
        line(&e, "path"),
        "/supporters/42 (normalised from /supporters/./42)"
    );
    assert_eq!(
        line(&e, "route"),
        "/supporters/ → upstream api (http://127.0.0.1:9000/base)"
    );
    assert_eq!(
        line(&e, "permission"),
        "group g: GET needs view; allowed by /supporters/** [view, create, modify] ✓"
    );
    let text = e.to_string();
    assert!(
        text.ends_with(
            "verdict    200 allowed: forwarded to http://127.0.0.1:9000/base/supporters/42?fields=a\n"
        ),
        "{text}"
    );
}

#[test]
fn the_builtin_echo_upstream_is_named_as_configured() {
    let e = ask(Caller::Key(KEY), "192.0.2.10", "GET", "/echo/1");
    assert_eq!(
        e.verdict,
        Verdict::Allowed {
            to: "builtin:echo /echo/1".into()
        }
    );
    assert_eq!(line(&e, "source"), "192.0.2.10 matches 192.0.2.10 ✓");
    assert_eq!(line(&e, "route"), "/echo/ → upstream echo (builtin:echo)");
}

#[test]
fn an_unregistered_source_is_shown_the_nearest_entries() {
    let e = ask(Caller::Key(KEY), "192.0.2.77", "GET", "/supporters/1");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::UnregisteredSource));
    // 192.0.2.77 ^ 192.0.2.10 = 0.0.0.71: 25 leading zero bits; 127 and 192 differ in the first
    // bit, so 127.0.0.1 is near nothing and is not listed.
    assert_eq!(
        line(&e, "source"),
        "192.0.2.77 matches no entry of the user's whitelist ✗; nearest: \
         192.0.2.10 (25 leading bits shared), 198.51.100.0/24 (5 leading bits shared)"
    );
    // Entries of the other address family share nothing either.
    let e = ask(Caller::Key(KEY), "2001:db9::1", "GET", "/supporters/1");
    assert_eq!(
        line(&e, "source"),
        "2001:db9::1 matches no entry of the user's whitelist ✗; nearest: \
         2001:db8::/32 (31 leading bits shared)"
    );
    // Near none of them: the whitelist is shown as it is, not as "nearest".
    let e = ask(Caller::Key(KEY), "8000::1", "GET", "/supporters/1");
    assert!(
        line(&e, "source").starts_with(
            "8000::1 matches no entry of the user's whitelist ✗; none is near it (the whitelist: "
        ),
        "{e}"
    );
    assert!(!e.lines.iter().any(|l| l.label == "route"), "{e}");
}

#[test]
fn an_ipv4_mapped_source_is_ranked_as_ipv4() {
    let w = SourceWhitelist::parse_tilde("2001:db8::/32~192.0.2.0/24").unwrap();
    let nearest = nearest_entries(&w, "::ffff:192.0.3.1".parse().unwrap());
    assert_eq!(nearest[0].0.to_string(), "192.0.2.0/24");
    assert_eq!(nearest[0].1, 23);
    assert_eq!(
        nearest.len(),
        1,
        "the IPv6 block shares nothing with an IPv4 client"
    );
    assert!(nearest_entries(&SourceWhitelist::Any, "192.0.2.1".parse().unwrap()).is_empty());
}

#[test]
fn a_refused_verb_lists_the_groups_permissions() {
    let e = ask(Caller::Key(KEY), "127.0.0.1", "DELETE", "/supporters/1");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::Forbidden));
    let text = e.to_string();
    assert!(
        text.contains(
            "permission group g: DELETE needs delete; no permission allows it on /supporters/1 ✗\n\
             \x20          group g has /supporters/** [view, create, modify]\n\
             \x20          group g has /echo/* [view]\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("verdict    403 forbidden: This API user's permission group does not allow this method on this path.\n"), "{text}");
    let e = ask(Caller::Key(KEY), "127.0.0.1", "TRACE", "/supporters/1");
    assert!(
        line(&e, "permission").contains("TRACE is granted by no verb"),
        "{e}"
    );
    let e = ask(Caller::User("e@example.org"), "127.0.0.1", "GET", "/echo/1");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::Forbidden));
    assert!(
        e.to_string()
            .contains("group empty has no permissions at all"),
        "{e}"
    );
}

#[test]
fn each_identification_refusal_is_explained() {
    let e = ask(Caller::Anonymous, "127.0.0.1", "GET", "/supporters/1");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::MissingCredentials));
    assert_eq!(
        line(&e, "credential"),
        "none: no x-api-key header and no Authorization: Bearer ✗"
    );
    let e = ask(Caller::Key("  "), "127.0.0.1", "GET", "/supporters/1");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::MissingCredentials));

    let e = ask(
        Caller::Key("aw_NOSUCHkey000000000000000000000000000000000"),
        "127.0.0.1",
        "GET",
        "/",
    );
    assert_eq!(e.verdict, Verdict::Refused(Refusal::InvalidCredentials));
    assert!(
        line(&e, "key").starts_with("aw_NOSUC… → no user has this key ✗"),
        "{e}"
    );

    let e = ask(Caller::Key(OLD_KEY), "127.0.0.1", "GET", "/supporters/1");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::KeyExpired));
    assert_eq!(
        line(&e, "key"),
        "aw_EXPLA… → user a@example.org (no prefix stored, expires 2026-01-01T00:00:00Z)"
    );
    assert_eq!(
        line(&e, "expiry"),
        "expired at 2026-01-01T00:00:00Z (now 2026-11-22T10:00:00Z) ✗"
    );

    let e = ask(
        Caller::User("p@example.org"),
        "127.0.0.1",
        "GET",
        "/supporters/1",
    );
    assert_eq!(e.verdict, Verdict::Refused(Refusal::UserInactive));
    assert_eq!(
        line(&e, "status"),
        "pending ✗ (only active users get through)"
    );

    let e = ask(Caller::User("nobody@example.org"), "127.0.0.1", "GET", "/");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::InvalidCredentials));
    assert!(line(&e, "user").contains("no such user in t.toml"), "{e}");
}

#[test]
fn a_user_is_explained_without_a_key() {
    let e = ask(
        Caller::User("a@example.org"),
        "127.0.0.1",
        "GET",
        "/supporters/1",
    );
    assert_eq!(
        line(&e, "user"),
        "a@example.org \"A integration\" (explaining as this user, no key checked; it has 2 key(s), 1 expired)"
    );
    assert!(matches!(e.verdict, Verdict::Allowed { .. }), "{e}");
    assert!(!e.lines.iter().any(|l| l.label == "key"), "{e}");
}

#[test]
fn bad_paths_and_missing_routes_are_explained() {
    let e = ask(Caller::Key(KEY), "127.0.0.1", "GET", "/supporters/a%2Fb");
    assert_eq!(e.verdict, Verdict::Refused(Refusal::BadPath));
    assert_eq!(
        line(&e, "path"),
        "/supporters/a%2Fb refused: the path contains an encoded '/' or '\\' ✗"
    );
    let e = ask(
        Caller::Key(KEY),
        "127.0.0.1",
        "GET",
        "/nowhere/../elsewhere",
    );
    assert_eq!(e.verdict, Verdict::Refused(Refusal::NoRoute));
    assert_eq!(
        line(&e, "route"),
        "no route matches /elsewhere ✗; routes: /supporters/, /echo/"
    );
}

#[test]
fn a_trusted_proxy_as_source_is_pointed_out() {
    let e = ask(Caller::Key(KEY), "10.9.1.1", "GET", "/supporters/1");
    assert!(
        line(&e, "note").contains("10.9.1.1 is a trusted proxy"),
        "{e}"
    );
}

#[test]
fn the_whole_key_is_never_printed() {
    for path in ["/supporters/1", "/nowhere", "/supporters/%2F"] {
        for key in [
            KEY,
            OLD_KEY,
            "aw_NOSUCHkey000000000000000000000000000000000",
            "short",
        ] {
            let text = ask(Caller::Key(key), "127.0.0.1", "GET", path).to_string();
            assert!(!text.contains(key), "{text}");
        }
    }
}

#[test]
fn the_limit_step_comes_last_and_says_what_a_request_over_it_gets() {
    let text = snapshot_text_with_limits();
    let s = crate::config::compile(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let question = Question {
        caller: Caller::User("a@example.org"),
        certificate: None,
        source: "127.0.0.1".parse().unwrap(),
        method: Method::GET,
        path: "/supporters/1",
        now: NOW,
    };
    let e = explain(&s, &question);
    assert_eq!(
        line(&e, "limits"),
        "5/1s burst 10 (user's own), quota 1000/30d, 2 concurrent"
    );
    let last = e.lines.last().unwrap();
    assert!(
        last.text
            .contains("429 rate_limited, 429 quota_exhausted, 429 too_many_concurrent"),
        "{e}"
    );
    // Refused before the limits: they are not reached, nothing is used.
    let refused = explain(
        &s,
        &Question {
            source: "203.0.113.9".parse().unwrap(),
            ..question
        },
    );
    assert_eq!(
        refused.verdict,
        Verdict::Refused(Refusal::UnregisteredSource)
    );
    assert!(line(&refused, "limits").starts_with("not reached"));
}

fn snapshot_text_with_limits() -> String {
    format!(
        r#"
[upstreams.api]
url = "http://127.0.0.1:9000"

[[routes]]
prefix = "/supporters/"
upstream = "api"

[groups.g]
allow = [{{ path = "/supporters/**", verbs = ["view"] }}]
rate_limit = {{ requests = 100, per = "1s", burst = 50 }}
quota = {{ requests = 1000, per = "30d" }}
max_concurrent = 2

[users."a@example.org"]
status = "active"
group = "g"
remote_addresses = "127.0.0.1"
rate_limit = {{ requests = 5, per = "1s", burst = 10 }}
keys = [{{ sha256 = "{}" }}]
"#,
        KeyDigest::of(KEY).to_hex()
    )
}

#[test]
fn several_targets_are_all_named_with_how_one_is_chosen() {
    let with_targets = |balance: &str| {
        let text = "[upstreams.api]\ntargets = [{ url = \"http://10.0.0.11:9000\", weight = 2 }, { url = \"http://10.0.0.12:9000/v2\" }]\nretries = 1\nbalance = \"BALANCE\"\n\n[[routes]]\nprefix = \"/supporters/\"\nupstream = \"api\"\nstrip_prefix = true\n\n[groups.g]\nallow = [{ path = \"/supporters/**\", verbs = [\"view\"] }]\n\n[users.\"a@example.org\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"*\"\nkeys = []\n"
            .replace("BALANCE", balance);
        let snapshot =
            crate::config::compile(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
        let question = Question {
            caller: Caller::User("a@example.org"),
            certificate: None,
            source: "192.0.2.1".parse().unwrap(),
            method: parse_method("GET").unwrap(),
            path: "/supporters/42",
            now: NOW,
        };
        match explain(&snapshot, &question).verdict {
            Verdict::Allowed { to } => to,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        with_targets("round_robin"),
        "one of http://10.0.0.11:9000/42 (weight 2), http://10.0.0.12:9000/v2/42 (weight 1) (round_robin over the healthy targets; 1 retry of idempotent requests to another target)"
    );
    let sticky = with_targets("hash_user");
    assert!(
        sticky.contains(
            "a@example.org's own target under hash_user; while it is out: http://10.0.0.1"
        ),
        "{sticky}"
    );
}
