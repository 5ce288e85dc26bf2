//! What an operator reads: one message style (`error:` then `hint:` on stderr) and one set of
//! exit codes for every command, `check` reporting every mistake of a file at once, and which
//! configuration file a command works on.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

const SHIPPED: &str = include_str!("../config/apiward.toml");

fn apiward(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_apiward"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("APIWARD_CONFIG")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run apiward")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The 1-based line of the first occurrence of `needle` in `text`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    text[..at].matches('\n').count() + 1
}

#[test]
fn check_reports_every_mistake_in_file_order_with_what_was_meant() {
    let dir = tempfile::tempdir().unwrap();
    // Four mistakes: an unknown field (which alone used to stop the check), a status, a group
    // reference and a verb, each a near miss of a real name.
    let text = SHIPPED
        .replace("upstream_timeout = \"30s\"", "upstream_timout = \"30s\"")
        .replace(
            "{ path = \"/pages/*\", verbs = [\"view\"] }",
            "{ path = \"/pages/*\", verbs = [\"veiw\"] }",
        )
        .replacen("status = \"active\" ", "status = \"actve\" ", 1)
        .replacen(
            "group = \"manage-supporters\"\n# Source",
            "group = \"manage-suporters\"\n# Source",
            1,
        )
        .replacen("upstream = \"echo\"", "upstream = \"ecko\"", 1);
    std::fs::write(dir.path().join("bad.toml"), &text).unwrap();
    let out = apiward(dir.path(), &["check", "--config", "bad.toml"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    let expected = [
        ("upstream_timout", "did you mean `upstream_timeout`?"),
        ("upstream = \"ecko\"", "(did you mean \"echo\"?)"),
        ("verbs = [\"veiw\"]", "(did you mean \"view\"?)"),
        ("status = \"actve\"", "(did you mean \"active\"?)"),
        (
            "group = \"manage-suporters\"",
            "(did you mean \"manage-supporters\"?)",
        ),
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), expected.len() + 1, "{err}");
    for (i, (needle, suggestion)) in expected.iter().enumerate() {
        let at = format!("error: bad.toml:{}:", line_of(&text, needle));
        assert!(lines[i].starts_with(&at), "line {i} should be {at}…: {err}");
        assert!(lines[i].contains(suggestion), "line {i}: {err}");
    }
    assert_eq!(
        lines[5],
        "hint: bad.toml: 5 errors; the file was not accepted: fix them and run `apiward check` again"
    );
}

#[test]
fn a_missing_file_reads_the_same_for_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 6] = [
        &["run"],
        &["check"],
        &["explain", "--path", "/"],
        &["users", "list"],
        &["keys", "issue", "a@example.org"],
        &["users", "set", "a@example.org", "--status", "inactive"],
    ];
    let mut seen = Vec::new();
    for args in commands {
        let mut args = args.to_vec();
        args.extend(["--config", "absent.toml"]);
        let out = apiward(dir.path(), &args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        seen.push(stderr(&out));
    }
    assert!(
        seen[0].starts_with(
            "error: the configuration file absent.toml does not exist (from --config)\nhint: "
        ),
        "{}",
        seen[0]
    );
    for s in &seen {
        assert_eq!(s, &seen[0]);
    }
}

#[test]
fn the_default_file_is_the_environment_s_then_the_checkout_s_then_the_system_s() {
    let dir = tempfile::tempdir().unwrap();
    // No --config, no $APIWARD_CONFIG, no ./config/apiward.toml: the installed place is named.
    let out = apiward(dir.path(), &["check"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("error: the configuration file /etc/apiward/apiward.toml does not exist (from the default, /etc/apiward/apiward.toml)\nhint: pass --config PATH or set APIWARD_CONFIG"),
        "{}",
        stderr(&out)
    );
    // A checkout: ./config/apiward.toml.
    std::fs::create_dir(dir.path().join("config")).unwrap();
    std::fs::write(dir.path().join("config/apiward.toml"), SHIPPED).unwrap();
    let out = apiward(dir.path(), &["check"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("config/apiward.toml: ok:"));
    // $APIWARD_CONFIG wins over the checkout's file, and --config over both.
    std::fs::write(dir.path().join("other.toml"), SHIPPED).unwrap();
    let out = apiward(dir.path(), &["check"], &[("APIWARD_CONFIG", "other.toml")]);
    assert!(
        stdout(&out).starts_with("other.toml: ok:"),
        "{}",
        stderr(&out)
    );
    let out = apiward(
        dir.path(),
        &["check", "--config", "config/apiward.toml"],
        &[("APIWARD_CONFIG", "absent.toml")],
    );
    assert!(stdout(&out).starts_with("config/apiward.toml: ok:"));
    let out = apiward(dir.path(), &["check"], &[("APIWARD_CONFIG", "absent.toml")]);
    assert!(
        stderr(&out).starts_with(
            "error: the configuration file absent.toml does not exist (from $APIWARD_CONFIG)"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_running_gateway_says_which_file_it_uses() {
    let toml = SHIPPED.replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"");
    let p = common::process::GatewayProcess::start(&toml, &[]);
    let line = p
        .stderr_line(|l| l.contains("configuration file"))
        .expect("a line naming the file");
    assert!(
        line.contains(&format!("config={}", p.config_path.display())),
        "{line}"
    );
    assert!(line.contains("from=--config"), "{line}");
}

#[test]
fn a_port_in_use_is_an_error_with_a_hint() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let toml = SHIPPED.replace(
        "listen = \"127.0.0.1:8080\"",
        &format!("listen = \"{addr}\""),
    );
    std::fs::write(dir.path().join("apiward.toml"), toml).unwrap();
    let out = apiward(dir.path(), &["run", "--config", "apiward.toml"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    let last: Vec<&str> = err.lines().rev().take(2).collect();
    assert!(
        last[1].starts_with(&format!("error: cannot listen on {addr}: ")),
        "{err}"
    );
    assert!(
        last[0].starts_with(&format!("hint: another process listens on {addr}")),
        "{err}"
    );
}

#[test]
fn the_top_level_help_names_the_config_file_and_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = apiward(dir.path(), &["--help"], &[]);
    assert!(out.status.success());
    let help = stdout(&out);
    assert!(help.contains("--config <PATH>"), "{help}");
    assert!(help.contains("$APIWARD_CONFIG"), "{help}");
    assert!(help.contains("Exit status: 0 done; 1"), "{help}");
    // A usage error exits 2, with clap's own `error:` line.
    let out = apiward(dir.path(), &["check", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).starts_with("error: "));
}

#[test]
fn explain_with_an_empty_key_on_stdin_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apiward.toml"), SHIPPED).unwrap();
    let out = apiward(
        dir.path(),
        &[
            "explain",
            "--config",
            "apiward.toml",
            "--key",
            "-",
            "--path",
            "/pages/1",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    assert!(
        stderr(&out)
            .starts_with("error: --key - reads the key from stdin, and stdin was empty\nhint: "),
        "{}",
        stderr(&out)
    );
    assert!(
        stdout(&out).is_empty(),
        "nothing was explained: {}",
        stdout(&out)
    );
}

#[test]
fn users_list_without_a_gateway_to_ask_says_why_last_use_is_unknown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apiward.toml"), SHIPPED).unwrap();
    let out = apiward(
        dir.path(),
        &["users", "list", "--config", "apiward.toml"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).starts_with("hint: LAST USED is \"?\": it is known only to a running gateway, asked on its admin listener: set [server] admin_listen, or pass --admin HOST:PORT"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).lines().nth(1).unwrap_or("").ends_with('?'));
}

#[test]
fn revoking_expired_keys_when_none_has_expired_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("apiward.toml"), SHIPPED).unwrap();
    let out = apiward(
        dir.path(),
        &[
            "keys",
            "revoke",
            "demo@apiward.local",
            "--expired",
            "--config",
            "apiward.toml",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out),
        "none of the 1 key(s) of demo@apiward.local has expired; nothing changed\n"
    );
}

/// The shipped file on ephemeral ports, with an admin listener.
fn shipped_on_ephemeral_ports(extra_server: &str) -> String {
    SHIPPED.replace(
        "listen = \"127.0.0.1:8080\"",
        &format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{extra_server}"),
    )
}

const DEMO_KEY: &str = "aw_DEMOkeyNOTsecretLOCALtestingONLY01234567890";

#[test]
fn top_once_prints_requests_refusals_by_code_and_the_busiest_users() {
    let p = common::process::GatewayProcess::start(&shipped_on_ephemeral_ports(""), &[]);
    let admin = p.admin.expect("an admin listener").to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        for _ in 0..3 {
            let r = common::get(&p.url("/supporters/1"), &[("x-api-key", DEMO_KEY)]).await;
            assert_eq!(r.status, 200);
        }
        for _ in 0..2 {
            let r = common::get(&p.url("/supporters/1"), &[]).await;
            assert_eq!(r.status, 401);
        }
        let r = common::send("DELETE", &p.url("/pages/1"), &[("x-api-key", DEMO_KEY)], "").await;
        assert_eq!(r.status, 403);
    });
    let dir = tempfile::tempdir().unwrap();
    let out = apiward(
        dir.path(),
        &["top", "--once", "--interval", "50ms", "--admin", &admin],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let screen = stdout(&out);
    assert!(
        screen.starts_with(&format!(
            "apiward {} at {admin}: config generation 1, 2 users, 2 keys",
            env!("CARGO_PKG_VERSION")
        )),
        "{screen}"
    );
    assert!(screen.contains("(total 6, allowed 3)"), "{screen}");
    let row = |name: &str| {
        screen
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}: {screen}"))
            .split_whitespace()
            .last()
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(row("missing_credentials"), "2");
    assert_eq!(row("forbidden"), "1");
    assert_eq!(row("demo@apiward.local"), "4");
    // The busiest list is of users: requests without one are not a user.
    assert!(!screen.contains("\n  none "), "{screen}");

    let health = apiward(dir.path(), &["health", "--admin", &admin], &[]);
    assert!(health.status.success());
    assert_eq!(stdout(&health), "ok\n");
    drop(p);
    let health = apiward(dir.path(), &["health", "--admin", &admin], &[]);
    assert_eq!(health.status.code(), Some(1));
    assert!(stderr(&health).starts_with("error: the gateway's admin listener at "));
}

#[test]
fn diagnostics_can_be_json_lines_for_log_shippers() {
    let p = common::process::GatewayProcess::start(
        &shipped_on_ephemeral_ports(""),
        &["--log-format", "json"],
    );
    let lines = p.stderr_lines();
    assert!(!lines.is_empty());
    for line in &lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    let serving = lines
        .iter()
        .find(|l| l.contains("apiward is serving"))
        .expect("the start-up line");
    let v: serde_json::Value = serde_json::from_str(serving).unwrap();
    assert_eq!(v["listen"], p.addr.to_string());
}

#[test]
fn sigusr1_reopens_the_access_log_after_logrotate_renamed_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let toml = shipped_on_ephemeral_ports(&format!("access_log = {:?}", log.display().to_string()));
    let p = common::process::GatewayProcess::start(&toml, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let request = |path: &str| {
        let r = rt.block_on(common::get(&p.url(path), &[("x-api-key", DEMO_KEY)]));
        assert_eq!(r.status, 200);
    };
    let lines_in = |file: &std::path::Path, needle: &str| {
        common::process::wait_until(|| {
            std::fs::read_to_string(file).is_ok_and(|t| t.contains(needle))
        })
    };
    request("/supporters/before");
    assert!(lines_in(&log, "/supporters/before"));
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    p.signal("USR1");
    assert!(
        p.stderr_line(|l| l.contains("SIGUSR1: access log reopened"))
            .is_some(),
        "{}",
        p.stderr_text()
    );
    request("/supporters/after");
    assert!(
        lines_in(&log, "/supporters/after"),
        "the new file gets the new lines"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(old.contains("/supporters/before") && !old.contains("/supporters/after"));
}

#[test]
fn undoing_a_refused_edit_is_logged_as_back_in_line() {
    let toml = shipped_on_ephemeral_ports("");
    let p = common::process::GatewayProcess::start(&toml, &[]);
    std::fs::write(
        &p.config_path,
        toml.replace("status = \"active\" ", "status = \"on\" "),
    )
    .unwrap();
    assert!(
        p.stderr_line(|l| l.contains("configuration refused"))
            .is_some()
    );
    std::fs::write(&p.config_path, &toml).unwrap();
    let line = p
        .stderr_line(|l| l.contains("back in line"))
        .unwrap_or_else(|| panic!("no back-in-line line:\n{}", p.stderr_text()));
    assert!(line.contains(" INFO "), "{line}");
    let admin = p.admin.unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(common::status(admin));
    assert!(status["last_reload_error"].is_null(), "{status}");
}

#[test]
fn completions_and_the_manual_page_come_from_the_command_definitions() {
    let dir = tempfile::tempdir().unwrap();
    for (shell, marker) in [
        ("bash", "complete -F _apiward"),
        ("zsh", "#compdef apiward"),
        ("fish", "complete -c apiward"),
    ] {
        let out = apiward(dir.path(), &["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}: {script}");
        for command in ["users", "keys", "explain", "top", "check"] {
            assert!(script.contains(command), "{shell} misses {command}");
        }
    }
    let out = apiward(dir.path(), &["man"], &[]);
    assert!(out.status.success());
    let page = stdout(&out);
    assert!(page.contains(".TH apiward 1"), "{page}");
    assert!(page.contains("APIWARD_CONFIG"), "{page}");
    // Neither needs a configuration file (there is none in this directory).
    assert!(stderr(&out).is_empty());
}

#[test]
fn each_upstream_failure_is_logged_at_warn_with_where_and_why_rate_limited_with_a_count() {
    // Port 1 on loopback: nothing listens, so every connection is refused.
    let toml = shipped_on_ephemeral_ports("").replace(
        "[[routes]]\nprefix = \"/supporters/\"\nupstream = \"echo\"",
        "[upstreams.down]\nurl = \"http://127.0.0.1:1\"\n\n[[routes]]\nprefix = \"/supporters/\"\nupstream = \"down\"",
    );
    let p = common::process::GatewayProcess::start(&toml, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let failing = |n: usize| {
        rt.block_on(async {
            for _ in 0..n {
                let r = common::get(&p.url("/supporters/1"), &[("x-api-key", DEMO_KEY)]).await;
                assert_eq!(r.status, 502);
            }
        })
    };
    failing(30);
    // One more after the interval: whatever was suppressed is counted on its line. It is a POST
    // with a body, which hyper's path serves (the GETs above went through the fast path).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let post = rt.block_on(common::send(
        "POST",
        &p.url("/supporters/1"),
        &[("x-api-key", DEMO_KEY)],
        "a body",
    ));
    assert_eq!(post.status, 502);
    let post_id = post.headers["x-request-id"].to_str().unwrap().to_string();
    let warned = |l: &str| l.contains(" WARN ") && l.contains("upstream request failed");
    let last = p
        .stderr_line(|l| warned(l) && !l.contains("suppressed=0"))
        .or_else(|| p.stderr_line(warned))
        .expect("a warning for the failures");
    assert!(
        last.contains("upstream=\"down\"") || last.contains("upstream=down"),
        "{last}"
    );
    let lines: Vec<String> = p.stderr_lines().into_iter().filter(|l| warned(l)).collect();
    let mut total = 0;
    for line in &lines {
        assert!(line.contains("target=127.0.0.1:1"), "{line}");
        assert!(line.contains("connection refused"), "{line}");
        assert!(line.contains("answered 502 upstream_unavailable"), "{line}");
        let suppressed: u64 = line
            .split("suppressed=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no suppressed count: {line}"));
        total += 1 + suppressed;
    }
    // Every failure is on a line or counted on a later one, and the log is not one per request
    // unless the 31 requests took more than 31 intervals.
    assert_eq!(total, 31, "{lines:#?}");
    assert!(lines.len() >= 2, "{lines:#?}");
    assert!(
        lines
            .last()
            .unwrap()
            .contains(&format!("request_id=\"{post_id}\"")),
        "the last line is the POST's: {lines:#?}"
    );
}

#[test]
fn a_no_route_log_line_shows_the_normalised_path() {
    let p = common::process::GatewayProcess::start(&shipped_on_ephemeral_ports(""), &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(common::get(
        &p.url("/pages/../nowhere/./x"),
        &[("x-api-key", DEMO_KEY)],
    ));
    assert_eq!(r.status, 404);
    let line = p
        .stdout_line(|l| l.contains("no_route"))
        .expect("the request's log line");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["path"], "/nowhere/x", "{line}");
}

#[test]
fn check_reports_every_value_of_the_wrong_type_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let text = SHIPPED
        .replace("max_header_bytes = 32768", "max_header_bytes = \"32k\"")
        .replace("key_header = \"X-Api-Key\"", "key_header = 1")
        .replacen("status = \"active\" ", "status = true ", 1);
    std::fs::write(dir.path().join("bad.toml"), &text).unwrap();
    let out = apiward(dir.path(), &["check", "--config", "bad.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    for (i, needle) in [
        "key_header = 1",
        "max_header_bytes = \"32k\"",
        "status = true",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            lines[i].starts_with(&format!("error: bad.toml:{}:", line_of(&text, needle))),
            "line {i}: {err}"
        );
        assert!(lines[i].contains("invalid type"), "{err}");
    }
    assert!(lines[3].starts_with("hint: bad.toml: 3 errors;"), "{err}");
}
