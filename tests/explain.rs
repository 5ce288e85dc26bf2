//! `apiward explain` against the real gateway: for every refusal it can reproduce, the verdict it
//! prints is what a gateway started from the same file actually answers.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

/// A gateway in front of a real upstream, and the keys of its users.
struct World {
    gw: TestGateway,
    upstream: Upstream,
    active: TestKey,
    expired: TestKey,
    inactive: TestKey,
    elsewhere: TestKey,
    readonly: TestKey,
    unknown: TestKey,
}

impl World {
    fn keys(&self) -> [&TestKey; 6] {
        [
            &self.active,
            &self.expired,
            &self.inactive,
            &self.elsewhere,
            &self.readonly,
            &self.unknown,
        ]
    }
}

/// Every request comes from 127.0.0.1, so each user's whitelist is chosen to decide on that.
async fn world() -> World {
    let upstream = echo_upstream().await;
    let active = TestKey::new("active");
    let expired = TestKey::new("expired");
    let inactive = TestKey::new("inactive");
    let elsewhere = TestKey::new("elsewhere");
    let readonly = TestKey::new("readonly");
    let unknown = TestKey::new("unknown");
    let mut users = String::new();
    users += &user(
        "active@example.org",
        "active",
        "manage-supporters",
        "127.0.0.1~::1",
        &[&active],
    );
    users += &format!(
        "[users.\"expired@example.org\"]\nstatus = \"active\"\ngroup = \"manage-supporters\"\nremote_addresses = \"*\"\nkeys = [{{ sha256 = \"{}\", expires = 2020-01-01T00:00:00Z }}]\n\n",
        expired.sha256
    );
    users += &user(
        "inactive@example.org",
        "inactive",
        "manage-supporters",
        "127.0.0.1",
        &[&inactive],
    );
    users += &user(
        "elsewhere@example.org",
        "active",
        "manage-supporters",
        "192.0.2.10~198.51.100.0/24~127.0.1.0/24",
        &[&elsewhere],
    );
    users += &user(
        "nothing@example.org",
        "active",
        "nothing",
        "127.0.0.1",
        &[&readonly],
    );
    let gw = TestGateway::start(&config(&upstream.url(), &users)).await;
    World {
        gw,
        upstream,
        active,
        expired,
        inactive,
        elsewhere,
        readonly,
        unknown,
    }
}

/// Runs the built binary with `explain --config <path> <args>`, feeding `stdin`.
async fn run_explain(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_apiward"));
    command
        .arg("explain")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = command.spawn().expect("run apiward explain");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin.as_bytes()).expect("write stdin");
        drop(pipe);
        child.wait_with_output().expect("apiward explain output")
    })
    .await
    .expect("explain task")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The status and code of explain's `verdict` line.
fn verdict(output: &Output) -> (u16, String) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("verdict "))
        .unwrap_or_else(|| panic!("no verdict line in:\n{}", text(output)));
    let mut words = line.split_whitespace().skip(1);
    let status = words
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let code = words.next().unwrap_or("").trim_end_matches(':').to_string();
    (status, code)
}

/// What the gateway answered: its status and error code, or "allowed" for the upstream's own answer.
fn answered(reply: &Reply) -> (u16, String) {
    let code = if reply.status.is_success() {
        assert!(
            reply.json()["method"].is_string(),
            "a 2xx that is not the upstream's echo: {reply:?}"
        );
        "allowed".to_string()
    } else {
        reply.error_code()
    };
    (reply.status.as_u16(), code)
}

/// One request, told two ways: as `explain` arguments and as a real request.
struct Case<'a> {
    explain: Vec<&'a str>,
    method: &'a str,
    path: &'a str,
    key: Option<&'a str>,
    expected: (u16, &'a str),
}

fn case<'a>(
    explain: &[&'a str],
    method: &'a str,
    path: &'a str,
    key: Option<&'a TestKey>,
    expected: (u16, &'a str),
) -> Case<'a> {
    let mut args = explain.to_vec();
    args.extend(["--method", method, "--path", path]);
    Case {
        explain: args,
        method,
        path,
        key: key.map(|k| k.key.as_str()),
        expected,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_agrees_with_the_gateway_on_every_refusal_and_on_success() {
    let w = world().await;
    fn k(key: &TestKey) -> &str {
        &key.key
    }
    let cases = [
        case(
            &[],
            "GET",
            "/supporters/1",
            None,
            (401, "missing_credentials"),
        ),
        case(
            &["--key", k(&w.unknown)],
            "GET",
            "/supporters/1",
            Some(&w.unknown),
            (401, "invalid_credentials"),
        ),
        case(
            &["--key", k(&w.expired)],
            "GET",
            "/supporters/1",
            Some(&w.expired),
            (401, "key_expired"),
        ),
        case(
            &["--key", k(&w.inactive)],
            "GET",
            "/supporters/1",
            Some(&w.inactive),
            (403, "user_inactive"),
        ),
        case(
            &["--key", k(&w.elsewhere)],
            "GET",
            "/supporters/1",
            Some(&w.elsewhere),
            (403, "unregistered_source"),
        ),
        case(
            &["--key", k(&w.active)],
            "GET",
            "/admin/users",
            Some(&w.active),
            (404, "no_route"),
        ),
        case(
            &["--key", k(&w.active)],
            "DELETE",
            "/supporters/1",
            Some(&w.active),
            (403, "forbidden"),
        ),
        case(
            &["--key", k(&w.readonly)],
            "GET",
            "/supporters/1",
            Some(&w.readonly),
            (403, "forbidden"),
        ),
        case(
            &["--key", k(&w.active)],
            "GET",
            "/supporters/a%2fb",
            Some(&w.active),
            (400, "bad_path"),
        ),
        case(
            &["--key", k(&w.active)],
            "GET",
            "/supporters/42?fields=a",
            Some(&w.active),
            (200, "allowed"),
        ),
        case(
            &["--key", k(&w.active)],
            "POST",
            "/echo/x/../y",
            Some(&w.active),
            (200, "allowed"),
        ),
        // --user runs the steps after identification; the gateway is asked with that user's key.
        case(
            &["--user", "inactive@example.org"],
            "GET",
            "/supporters/1",
            Some(&w.inactive),
            (403, "user_inactive"),
        ),
        case(
            &["--user", "elsewhere@example.org"],
            "GET",
            "/supporters/1",
            Some(&w.elsewhere),
            (403, "unregistered_source"),
        ),
        case(
            &["--user", "nothing@example.org"],
            "GET",
            "/supporters/1",
            Some(&w.readonly),
            (403, "forbidden"),
        ),
        case(
            &["--user", "active@example.org"],
            "GET",
            "/nowhere",
            Some(&w.active),
            (404, "no_route"),
        ),
        case(
            &["--user", "active@example.org"],
            "PUT",
            "/supporters/7",
            Some(&w.active),
            (200, "allowed"),
        ),
        case(
            &["--user", "nobody@example.org"],
            "GET",
            "/supporters/1",
            Some(&w.unknown),
            (401, "invalid_credentials"),
        ),
    ];
    for c in &cases {
        let output = run_explain(&w.gw.config_path, &c.explain, "").await;
        assert!(
            output.status.success(),
            "explain {:?} exited {:?}:\n{}",
            c.explain,
            output.status,
            text(&output)
        );
        let headers: Vec<(&str, &str)> = c.key.iter().map(|k| ("x-api-key", *k)).collect();
        let reply = send(c.method, &w.gw.url(c.path), &headers, "").await;
        let explained = verdict(&output);
        assert_eq!(
            explained,
            answered(&reply),
            "explain {:?} disagrees with the gateway:\n{}",
            c.explain,
            text(&output)
        );
        assert_eq!(
            (explained.0, explained.1.as_str()),
            c.expected,
            "{:?}",
            c.explain
        );
        for key in w.keys() {
            assert!(
                !text(&output).contains(&key.key),
                "explain printed a whole key:\n{}",
                text(&output)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_which_step_refused_and_what_would_have_matched() {
    let w = world().await;
    let config = &w.gw.config_path;

    let out = run_explain(
        config,
        &["--key", &w.elsewhere.key, "--path", "/supporters/1"],
        "",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "source     127.0.0.1 matches no entry of the user's whitelist ✗; nearest: \
             127.0.1.0/24 (23 leading bits shared)\n"
        ),
        "{stdout}"
    );

    let out = run_explain(
        config,
        &["--key", &w.readonly.key, "--path", "/supporters/1"],
        "",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("permission group nothing: GET needs view; no permission allows it on /supporters/1 ✗\n           group nothing has no permissions at all\n"),
        "{stdout}"
    );

    let out = run_explain(
        config,
        &["--key", &w.active.key, "--path", "/supporters/42?x=1"],
        "",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let prefix = apiward::auth::credential::key_prefix(&w.active.key);
    let expected = format!(
        "key        {prefix}… → user active@example.org (no prefix stored, created 2026-01-01T00:00:00Z, no expiry)\n\
         status     active ✓\n\
         source     127.0.0.1 matches 127.0.0.1 ✓\n\
         path       /supporters/42\n\
         route      /supporters/ → upstream api ({url})\n\
         permission group manage-supporters: GET needs view; allowed by /supporters/** [view, create, modify] ✓\n\
         limits     none for this user ✓\n\
         verdict    200 allowed: forwarded to {url}/supporters/42?x=1\n",
        url = w.upstream.url(),
    );
    assert_eq!(stdout, expected);

    let out = run_explain(
        config,
        &["--key", &w.expired.key, "--path", "/supporters/1"],
        "",
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("expiry     expired at 2020-01-01T00:00:00Z (now "),
        "{stdout}"
    );
    assert!(stdout.contains("verdict    401 key_expired: "), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_can_be_read_from_stdin_and_is_never_echoed() {
    let w = world().await;
    let stdin = format!("{}\n", w.active.key);
    let out = run_explain(
        &w.gw.config_path,
        &["--key", "-", "--path", "/supporters/1"],
        &stdin,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        verdict(&out),
        (200, "allowed".to_string()),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(&w.active.key), "{}", text(&out));
    assert!(
        text(&out).contains("user active@example.org"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_bad_file_or_bad_arguments_make_explain_fail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[users.\"a@example.org\"]\nstatus = \"sleeping\"\n").expect("write");
    let out = run_explain(&bad, &["--path", "/"], "").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad.toml:"),
        "{}",
        text(&out)
    );
    let missing = dir.path().join("missing.toml");
    let out = run_explain(&missing, &["--path", "/"], "").await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));

    let good = dir.path().join("good.toml");
    std::fs::write(&good, config("builtin:echo", "")).expect("write");
    for args in [
        &["--path", "/", "--source", "not-an-address"][..],
        &["--source", "127.0.0.1"][..],
        &["--path", "/", "--key", "aw_x", "--user", "a@example.org"][..],
        &["--path", "/", "--method", "GE T"][..],
    ] {
        let out = run_explain(&good, args, "").await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
    }
    let out = run_explain(&good, &["--path", "/nowhere"], "").await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(verdict(&out), (401, "missing_credentials".to_string()));
}
