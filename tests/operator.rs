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
