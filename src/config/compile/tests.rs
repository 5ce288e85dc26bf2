//! Tests of compiling: every error located and explained, every value compiled as documented.

use std::path::Path;
use std::time::Duration;

use super::checks::interned;
use super::*;
use crate::config::compile;

const DIGEST_A: &str = "70451612f7945c07e4d9411a60867e9aa5dc99c06cb91b87476a3f85d4ea217c";
const DIGEST_B: &str = "b7208c2dcd60a3d5118be65f8e96430144f8a804904474ed73e33633272c7ba5";

fn base(users: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:8080"

[upstreams.api]
url = "http://127.0.0.1:9000/base/"

[[routes]]
prefix = "/supporters/"
upstream = "api"

[groups.g]
allow = [{{ path = "/supporters/**", verbs = ["view"] }}]

{users}"#
    )
}

fn errors(text: &str) -> Vec<ConfigError> {
    match compile(Path::new("conf/apiward.toml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.0,
    }
}

/// The 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text[..text.find(needle).expect("needle present")]
        .matches('\n')
        .count()
        + 1
}

#[test]
fn the_shipped_configuration_compiles() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/apiward.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let s = compile(&path, &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.server.listen, "127.0.0.1:8080".parse().unwrap());
    assert!(s.users.len() >= 2);
    assert!(s.keys.contains_key(&KeyDigest::of(
        "aw_DEMOkeyNOTsecretLOCALtestingONLY01234567890"
    )));
}

#[test]
fn a_valid_file_becomes_a_snapshot() {
    let text = base(&format!(
        "[users.\"a@example.org\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = [\"192.0.2.1\", \"2001:db8::/32\"]\nkeys = [{{ sha256 = \"{DIGEST_A}\", created = 2026-11-22T10:00:00Z, expires = 2026-11-22T12:00:00+01:00 }}]\n"
    ));
    let s = compile(Path::new("x.toml"), &text).unwrap();
    let key = s.keys.get(&KeyDigest(hex_digest(DIGEST_A))).unwrap();
    assert_eq!(s.user(key.user).id.as_ref(), "a@example.org");
    assert_eq!(key.created, Some(1_795_341_600));
    assert_eq!(key.expires, Some(1_795_345_200));
    match &s.upstreams[0].target {
        crate::snapshot::UpstreamTarget::Http(cluster) => {
            assert_eq!(&*cluster.targets[0].base_path, "/base");
            assert_eq!(cluster.targets[0].authority.as_str(), "127.0.0.1:9000");
            assert!(
                cluster.eject.is_none(),
                "one url: no passive ejection unless asked"
            );
        }
        crate::snapshot::UpstreamTarget::Echo => panic!("not echo"),
    }
    assert_eq!(s.server.connect_timeout, Duration::from_secs(2));
    assert_eq!(s.server.upstream_keepalive_timeout, Duration::from_secs(60));
    assert_eq!(s.server.upstream_keepalive_connections, 1024);
    assert_eq!(s.server.key_header.as_str(), "x-api-key");
}

fn hex_digest(s: &str) -> [u8; 32] {
    let mut out = [0; 32];
    hex::decode_to_slice(s, &mut out).unwrap();
    out
}

#[test]
fn unknown_fields_are_errors_with_line_and_column() {
    let text = base("").replace("listen = ", "lisen = ");
    let e = errors(&text);
    assert_eq!(e.len(), 1);
    assert_eq!(e[0].line, line_of(&text, "lisen"));
    assert_eq!(e[0].column, 1);
    assert!(e[0].message.contains("lisen"), "{}", e[0].message);
    assert!(
        e[0].to_string()
            .starts_with(&format!("conf/apiward.toml:{}:1: ", e[0].line))
    );
}

#[test]
fn syntax_errors_point_at_the_line() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\nkey_header = \n";
    let e = errors(text);
    assert_eq!(e[0].line, 3, "{}", e[0]);
}

#[test]
fn every_semantic_error_is_collected_with_its_location() {
    let users = format!(
        r#"[users."nogroup@example.org"]
status = "active"
group = "missing-group"
remote_addresses = "192.0.2.1"

[users."badaddr@example.org"]
status = "active"
group = "g"
remote_addresses = "192.0.2.1~300.1.1.1"

[users."noaddr@example.org"]
status = "active"
group = "g"

[users."dup1@example.org"]
status = "active"
group = "g"
remote_addresses = "*"
keys = [{{ sha256 = "{DIGEST_B}" }}]

[users."dup2@example.org"]
status = "enabled"
group = "g"
remote_addresses = "*"
keys = [{{ sha256 = "{DIGEST_B}" }}, {{ sha256 = "aw_notadigest" }}]

[users."not-an-email"]
status = "active"
group = "g"
remote_addresses = "*"
"#
    );
    let text = base(&users).replace("upstream = \"api\"", "upstream = \"nowhere\"");
    let e = errors(&text);
    let find = |needle: &str| {
        e.iter()
            .find(|e| e.message.contains(needle))
            .unwrap_or_else(|| panic!("no error mentions {needle:?}: {e:#?}"))
    };
    assert_eq!(
        find("missing-group").line,
        line_of(&text, "group = \"missing-group\"")
    );
    assert_eq!(
        find("300.1.1.1").line,
        line_of(&text, "192.0.2.1~300.1.1.1")
    );
    assert_eq!(
        find("no remote_addresses").line,
        line_of(&text, "[users.\"noaddr")
    );
    assert_eq!(
        find("already used").line,
        line_of(&text, "[users.\"dup2") + 4
    );
    assert_eq!(
        find("looks like a key").line,
        line_of(&text, "[users.\"dup2") + 4
    );
    assert_eq!(find("enabled").line, line_of(&text, "status = \"enabled\""));
    assert_eq!(
        find("email-shaped").line,
        line_of(&text, "[users.\"not-an-email")
    );
    assert_eq!(
        find("nowhere").line,
        line_of(&text, "upstream = \"nowhere\"")
    );
    assert_eq!(find("nowhere").column, 12);
}

#[test]
fn server_settings_are_validated() {
    for (field, bad, needle) in [
        ("listen", "\"localhost\"", "not an address"),
        ("connect_timeout", "\"2\"", "no unit"),
        ("upstream_timeout", "\"0\"", "greater than zero"),
        ("key_header", "\"Authorization\"", "reserved"),
        ("key_header", "\"bad header\"", "not a valid HTTP header"),
        ("workers", "0", "workers"),
        (
            "worker_runtime",
            "\"threads\"",
            "worker_runtime = \"threads\"",
        ),
        (
            "connection_balance",
            "\"round_robin\"",
            "connection_balance = \"round_robin\"",
        ),
        ("trusted_proxies", "[\"10.0.0.1/8\"]", "10.0.0.0/8"),
        ("max_header_bytes", "10", "max_header_bytes"),
        ("upstream_keepalive_timeout", "\"0s\"", "greater than zero"),
        ("upstream_keepalive_connections", "-1", "idle connections"),
        (
            "upstream_keepalive_connections",
            "100000",
            "idle connections",
        ),
    ] {
        let text = base("").replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\n{field} = {bad}"),
        );
        let text = if field == "listen" {
            text.replacen("listen = \"127.0.0.1:8080\"\n", "", 1)
        } else {
            text
        };
        let e = errors(&text);
        assert!(
            e.iter()
                .any(|e| e.message.contains(needle)
                    && e.line == line_of(&text, &format!("{field} = "))),
            "{field} = {bad}: {e:#?}"
        );
    }
}

#[test]
fn upstreams_routes_and_permissions_are_validated() {
    for (from, to, needle) in [
        (
            "http://127.0.0.1:9000/base/\"",
            "https://api.example.org\"\nca = \"missing.pem\"",
            "ca is refused: conf/missing.pem: cannot read",
        ),
        (
            "http://127.0.0.1:9000/base/\"",
            "http://127.0.0.1:9000\"\nserver_name = \"api.internal\"",
            "apply to https targets only",
        ),
        (
            "http://127.0.0.1:9000/base/\"",
            "http://127.0.0.1:9000\"\nprotocol = \"h3\"",
            "protocol \"h3\" is not",
        ),
        ("http://127.0.0.1:9000/base/", "ftp://x", "http scheme"),
        ("http://127.0.0.1:9000/base/", "http://u:p@x", "credentials"),
        (
            "prefix = \"/supporters/\"",
            "prefix = \"supporters\"",
            "start with '/'",
        ),
        (
            "prefix = \"/supporters/\"",
            "prefix = \"/a/../supporters/\"",
            "normal form",
        ),
        ("\"/supporters/**\"", "\"/supporters/**/x\"", "'**'"),
        ("verbs = [\"view\"]", "verbs = [\"GET\"]", "unknown verb"),
    ] {
        let text = base("").replace(from, to);
        let e = errors(&text);
        assert!(e.iter().any(|e| e.message.contains(needle)), "{to}: {e:#?}");
        assert!(e.iter().all(|e| e.line > 0), "{e:#?}");
    }
}

#[test]
fn local_datetimes_are_refused_as_ambiguous() {
    let text = base(&format!(
        "[users.\"a@example.org\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"*\"\nkeys = [{{ sha256 = \"{DIGEST_A}\", expires = 2026-11-22T10:00:00 }}]\n"
    ));
    let e = errors(&text);
    assert!(e[0].message.contains("time zone"), "{}", e[0]);
}

#[test]
fn routes_are_ordered_longest_prefix_first() {
    let text = base("").replace(
        "[groups.g]",
        "[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n\n[[routes]]\nprefix = \"/supporters/special/\"\nupstream = \"api\"\n\n[groups.g]",
    );
    let s = compile(Path::new("x.toml"), &text).unwrap();
    assert_eq!(
        s.route_for("/supporters/special/1")
            .unwrap()
            .prefix
            .as_ref(),
        "/supporters/special/"
    );
    assert_eq!(
        s.route_for("/supporters/1").unwrap().prefix.as_ref(),
        "/supporters/"
    );
    assert_eq!(
        s.route_for("/supporters").unwrap().prefix.as_ref(),
        "/supporters/"
    );
    assert_eq!(s.route_for("/elsewhere").unwrap().prefix.as_ref(), "/");
}

#[test]
fn forty_thousand_routes_compile_and_a_duplicate_is_still_found() {
    // Compilation once compared every route with every earlier one (40,000 took seconds).
    let mut routes = String::new();
    for i in 0..40_000 {
        routes.push_str(&format!(
            "[[routes]]\nprefix = \"/r{i}/\"\nupstream = \"api\"\n\n"
        ));
    }
    let text = base("").replace("[groups.g]", &format!("{routes}[groups.g]"));
    let s = compile(Path::new("x.toml"), &text).unwrap();
    assert_eq!(s.routes.len(), 40_001);
    assert_eq!(
        s.route_for("/r39999/x").unwrap().prefix.as_ref(),
        "/r39999/"
    );
    assert_eq!(s.route_for("/r3999").unwrap().prefix.as_ref(), "/r3999/");
    let dup = base("").replace(
        "[groups.g]",
        "[[routes]]\nprefix = \"/r7/\"\nupstream = \"api\"\n\n[[routes]]\nprefix = \"/r7/\"\nupstream = \"api\"\n\n[groups.g]",
    );
    let e = errors(&dup);
    assert!(e[0].message.contains("defined twice"), "{}", e[0]);
}

#[test]
fn credential_headers_are_other_headers_only() {
    let with = |list: &str| {
        base("").replace(
            "listen = \"127.0.0.1:8080\"",
            &format!("listen = \"127.0.0.1:8080\"\ncredential_headers = {list}"),
        )
    };
    let s = compile(
        Path::new("x.toml"),
        &with("[\"X-Legacy-Token\", \"x-legacy-token\"]"),
    )
    .unwrap();
    assert_eq!(
        &*s.server.credential_headers,
        [HeaderName::from_static("x-legacy-token")]
    );
    for bad in [
        "\"x-api-key\"",
        "\"Authorization\"",
        "\"host\"",
        "\"x forwarded\"",
    ] {
        let e = errors(&with(&format!("[{bad}]")));
        assert!(
            e[0].message.contains("credential_headers"),
            "{bad}: {}",
            e[0]
        );
    }
}

#[test]
fn unix_seconds_matches_known_instants() {
    let dt: Datetime = "1970-01-01T00:00:00Z".parse().unwrap();
    assert_eq!(unix_seconds(&dt), Ok(0));
    let dt: Datetime = "2000-03-01T00:00:00Z".parse().unwrap();
    assert_eq!(unix_seconds(&dt), Ok(951_868_800));
    let dt: Datetime = "2026-11-22T10:00:00-02:30".parse().unwrap();
    assert_eq!(unix_seconds(&dt), Ok(1_795_341_600 + 9000));
}

#[test]
fn every_user_is_found_by_id() {
    let ids = [
        "zeta@example.org",
        "Alpha@example.org",
        "alpha@example.org",
        "émile@example.org",
        "a.b+c@example.org",
        "0@x.y",
    ];
    let users: String = ids
        .iter()
        .map(|id| {
            format!(
                "[users.\"{id}\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"*\"\n\n"
            )
        })
        .collect();
    let s = compile(Path::new("x.toml"), &base(&users)).unwrap();
    for id in ids {
        let i = s
            .user_index_of(id)
            .unwrap_or_else(|| panic!("{id} not found"));
        assert_eq!(&*s.user(i).id, id);
        assert_eq!(s.user_by_id(id).map(|u| &*u.id), Some(id));
    }
    assert!(s.user_by_id("nobody@example.org").is_none());
}

#[test]
fn interned_text_is_one_copy_per_distinct_text() {
    let a = interned("upstream.example:8080");
    let b = interned(&String::from("upstream.example:8080"));
    assert_eq!(a, "upstream.example:8080");
    assert!(std::ptr::eq(a, b), "the same text was leaked twice");
    assert!(!std::ptr::eq(a, interned("other.example:8080")));
}

#[test]
fn interned_values_do_not_refuse_what_the_plain_ones_accept() {
    // A group name beyond ASCII is a valid header value but not a `from_static` one; an IPv6
    // upstream authority is interned like any other.
    for (group, expected) in [("équipe", "équipe".as_bytes()), ("ops team", b"ops team")] {
        let header = group_header(group).unwrap_or_else(|| panic!("{group}: no header"));
        assert_eq!(header.as_bytes(), expected);
    }
    assert!(group_header("bad\nname").is_none());
    let text = base("").replace("http://127.0.0.1:9000/base/", "http://[::1]:9000/base");
    assert!(
        text.contains("[::1]:9000"),
        "the test's base config changed: {text}"
    );
    let s = compile(Path::new("x.toml"), &text).unwrap();
    let target = &s.upstreams[0].target;
    match target {
        crate::snapshot::UpstreamTarget::Http(cluster) => {
            assert_eq!(cluster.targets[0].authority.as_str(), "[::1]:9000")
        }
        other => panic!("{other:?}"),
    }
}

fn limited(group_limits: &str, user_limit: &str, rate_limits: &str) -> String {
    format!(
        r#"[upstreams.api]
url = "builtin:echo"

[[routes]]
prefix = "/"
upstream = "api"

[groups.partners]
allow = [{{ path = "/**", verbs = ["view"] }}]
{group_limits}

[users."a@example.org"]
status = "active"
group = "partners"
remote_addresses = "*"
{user_limit}

{rate_limits}
"#
    )
}

#[test]
fn limits_compile_with_the_users_own_rate_over_its_groups() {
    let text = limited(
        r#"rate_limit = { requests = 100, per = "1s", burst = 50 }
quota = { requests = 1_000_000, per = "30d" }
max_concurrent = 20"#,
        r#"rate_limit = { requests = 5, per = "1s", burst = 10 }"#,
        "[rate_limits]\nstore = \"redis://:pw@127.0.0.1:6379/0\"\non_store_error = \"deny\"",
    );
    let s = compile(Path::new("x.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let limits = *s.user_by_id("a@example.org").unwrap().limits;
    let (rate, origin) = limits.rate.unwrap();
    assert_eq!(origin, crate::snapshot::LimitOrigin::User);
    assert_eq!(
        (rate.requests, rate.per, rate.burst),
        (5, Duration::from_secs(1), 10)
    );
    assert_eq!(limits.quota.unwrap().requests, 1_000_000);
    assert_eq!(limits.quota.unwrap().per, Duration::from_secs(30 * 86_400));
    assert_eq!(limits.max_concurrent, Some(20));
    assert_eq!(s.rate_limits.store.shown(), "redis://127.0.0.1:6379/0");
    assert_eq!(
        s.rate_limits.on_store_error,
        crate::snapshot::OnStoreError::Deny
    );
    // Without [rate_limits]: local, and allow.
    let plain = compile(Path::new("x.toml"), &limited("", "", "")).unwrap();
    assert_eq!(plain.rate_limits.store, crate::snapshot::LimitStore::Local);
    assert!(
        plain
            .user_by_id("a@example.org")
            .unwrap()
            .limits
            .is_unlimited()
    );
}

#[test]
fn limit_errors_point_at_the_value_to_fix() {
    let text = limited(
        r#"rate_limit = { requests = 0, per = "1s" }
quota = { requests = 10, per = "soon" }
max_concurrent = -1"#,
        r#"rate_limit = { requests = 5, per = "1s", burst = -2 }"#,
        "[rate_limits]\nstore = \"memcached://x\"\non_store_error = \"maybe\"",
    );
    let errs = errors(&text);
    let find = |needle: &str| {
        errs.iter()
            .find(|e| e.message.contains(needle))
            .unwrap_or_else(|| panic!("no error about {needle:?} in {errs:#?}"))
    };
    assert_eq!(
        find("rate_limit requests").line,
        line_of(&text, "requests = 0")
    );
    assert_eq!(find("quota per").line, line_of(&text, "per = \"soon\""));
    assert_eq!(
        find("max_concurrent").line,
        line_of(&text, "max_concurrent = -1")
    );
    assert_eq!(find("burst").line, line_of(&text, "burst = -2"));
    assert_eq!(find("is not a store").line, line_of(&text, "memcached"));
    assert_eq!(find("on_store_error").line, line_of(&text, "\"maybe\""));
    // A misspelt field is refused, not ignored.
    let typo = limited(
        r#"rate_limit = { requests = 1, per = "1s", brust = 3 }"#,
        "",
        "",
    );
    assert!(
        errors(&typo)[0].message.contains("brust"),
        "{:?}",
        errors(&typo)
    );
}

#[test]
fn an_upstream_with_several_targets_compiles_with_its_policies() {
    let text = base("").replace(
        "url = \"http://127.0.0.1:9000/base/\"",
        "targets = [\n  { url = \"http://10.0.0.11:9000\", weight = 2 },\n  { url = \"http://10.0.0.12:9000\" },\n]\nbalance = \"least_outstanding\"\nretries = 1\nhealth_check = { path = \"/healthz\", interval = \"2s\", timeout = \"1s\", unhealthy_after = 3, healthy_after = 2 }\neject = { consecutive_failures = 5, for = \"10s\" }\nhost = \"supporters.internal\"",
    ).replace(
        "upstream = \"api\"",
        "upstream = \"api\"\nstrip_prefix = true\nupstream_timeout = \"5s\"\nwebsocket = true",
    );
    let s = compile(Path::new("x.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let crate::snapshot::UpstreamTarget::Http(cluster) = &s.upstreams[0].target else {
        panic!("not http")
    };
    assert_eq!(cluster.targets.len(), 2);
    assert_eq!(cluster.targets[0].weight, 2);
    assert_eq!(cluster.targets[1].weight, 1);
    assert_eq!(&*cluster.schedule, &[0, 1, 0]);
    assert_eq!(cluster.balance, crate::snapshot::Balance::LeastOutstanding);
    assert_eq!(cluster.retries, 1);
    let check = cluster.health_check.as_ref().unwrap();
    assert_eq!(
        (&*check.path, check.unhealthy_after, check.healthy_after),
        ("/healthz", 3, 2)
    );
    assert_eq!(check.interval, Duration::from_secs(2));
    let eject = cluster.eject.unwrap();
    assert_eq!(
        (eject.consecutive_failures, eject.duration),
        (5, Duration::from_secs(10))
    );
    assert_eq!(cluster.host.as_ref().unwrap(), "supporters.internal");
    assert_eq!(
        &*s.upstreams[0].url,
        "http://10.0.0.11:9000, http://10.0.0.12:9000"
    );
    let route = s.routes.iter().next().unwrap();
    assert!(route.strip_prefix && route.websocket);
    assert_eq!(route.upstream_timeout, Some(Duration::from_secs(5)));
}

#[test]
fn upstream_mistakes_are_reported_where_they_are() {
    let text = base("").replace(
        "url = \"http://127.0.0.1:9000/base/\"",
        "targets = [{ url = \"http://10.0.0.11:9000\", weight = 0 }, { url = \"ftp://x\" }]\nbalance = \"fastest\"\nretries = 99\nhealth_check = { path = \"healthz\", intervl = \"2s\" }",
    );
    let messages: Vec<String> = errors(&text).iter().map(|e| e.to_string()).collect();
    let all = messages.join("\n");
    assert!(all.contains("weight must be between 1 and 100"), "{all}");
    assert!(all.contains("\"ftp://x\" has no http scheme"), "{all}");
    assert!(all.contains("balance \"fastest\" is not one of"), "{all}");
    assert!(all.contains("retries is how many"), "{all}");
    assert!(
        all.contains("`intervl` in health_check: did you mean `interval`?"),
        "{all}"
    );
    let both = base("").replace(
        "url = \"http://127.0.0.1:9000/base/\"",
        "url = \"http://127.0.0.1:9000\"\ntargets = [{ url = \"http://127.0.0.1:9001\" }]",
    );
    let messages: Vec<String> = errors(&both).iter().map(|e| e.to_string()).collect();
    assert!(
        messages[0].contains("has both url and targets"),
        "{messages:?}"
    );
}

#[test]
fn https_upstreams_compile_with_the_system_store_and_an_h2_protocol() {
    let text = base("").replace(
        "url = \"http://127.0.0.1:9000/base/\"",
        "url = \"https://billing.internal:8443/base\"\nprotocol = \"h2\"",
    );
    let s = compile(Path::new("conf/apiward.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let crate::snapshot::UpstreamTarget::Http(cluster) = &s.upstreams[0].target else {
        panic!("not http")
    };
    let target = &cluster.targets[0];
    assert_eq!(target.scheme.as_str(), "https");
    assert_eq!(
        target
            .tls
            .as_ref()
            .map(|t| t.server_name().to_str().into_owned()),
        Some("billing.internal".to_string())
    );
    assert_eq!(target.protocol, crate::tls::UpstreamProtocol::Http2);
    assert!(
        !cluster.plain_http1,
        "the engine's client speaks plain HTTP/1.1 only"
    );
}

#[test]
fn client_certificates_identify_one_user_each() {
    let fingerprint = "AB:".repeat(31) + "AB";
    let user = |id: &str, sha: &str| {
        format!(
            "[users.\"{id}\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"*\"\n\
             client_certificates = [{{ sha256 = \"{sha}\", created = 2026-12-01T10:00:00Z }}]\n"
        )
    };
    let s = compile(
        Path::new("conf/apiward.toml"),
        &base(&user("device@example.org", &fingerprint)),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let digest = KeyDigest([0xab; 32]);
    assert_eq!(
        s.client_certificates.get(&digest).map(|&i| &*s.user(i).id),
        Some("device@example.org")
    );

    let twice =
        base(&(user("a@example.org", &fingerprint) + &user("b@example.org", &"ab".repeat(32))));
    let e = errors(&twice);
    assert!(
        e.iter()
            .any(|e| e.message.contains("already identifies another user")),
        "{e:#?}"
    );
    let e = errors(&base(&user("a@example.org", "abc")));
    assert!(e.iter().any(|e| e.message.contains("not 64")), "{e:#?}");
}

/// Users who take their group's limits as they are share one allocation of them; a user with
/// its own rate limit has its own.
#[test]
fn users_share_their_groups_limits() {
    let text = format!(
        "{}\n[users.\"b@example.org\"]\nstatus = \"active\"\ngroup = \"partners\"\nremote_addresses = \"*\"\n\n[users.\"c@example.org\"]\nstatus = \"active\"\ngroup = \"partners\"\nremote_addresses = \"*\"\n",
        limited(
            "rate_limit = { requests = 100, per = \"1s\", burst = 50 }",
            "rate_limit = { requests = 5, per = \"1s\", burst = 10 }",
            ""
        )
    );
    let s = compile(Path::new("x.toml"), &text).unwrap_or_else(|e| panic!("{e}"));
    let [a, b, c] = ["a", "b", "c"].map(|u| {
        let limits = &s.user_by_id(&format!("{u}@example.org")).unwrap().limits;
        std::ptr::from_ref::<crate::snapshot::UserLimits>(limits)
    });
    assert_eq!(b, c);
    assert_ne!(a, b);
    let user = |u: &str| s.user_by_id(u).unwrap().limits.rate.unwrap().0.requests;
    assert_eq!(user("a@example.org"), 5);
    assert_eq!(user("b@example.org"), 100);
}
