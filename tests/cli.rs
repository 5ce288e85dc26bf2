//! `apiward users` and `apiward keys`, run as the real binary against temporary copies of the
//! shipped (heavily commented) configuration: what they print, what they write, and that a
//! refused edit leaves the file exactly as it was.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use apiward::auth::password::PasswordVerifier;
use apiward::auth::{PasswordAttempt, PasswordCheck as _};
use apiward::snapshot::KeyDigest;

const SHIPPED: &str = include_str!("../config/apiward.toml");

/// A temporary copy of a configuration.
struct Scratch {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Scratch {
    fn of(text: &str) -> Scratch {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("apiward.toml");
        std::fs::write(&path, text).expect("write config");
        Scratch { _dir: dir, path }
    }

    fn shipped() -> Scratch {
        Scratch::of(SHIPPED)
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.path).expect("read config")
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).expect("read config")
    }

    /// Runs `apiward ARGS --config THIS`, with `stdin` piped in (so never a terminal).
    fn run(&self, args: &[&str], stdin: &str) -> Run {
        run_with_config(&self.path, args, stdin)
    }

    fn passes_check(&self) -> bool {
        self.run(&["check"], "").ok()
    }
}

struct Run(Output);

impl Run {
    fn ok(&self) -> bool {
        self.0.status.success()
    }
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }
    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }
    #[track_caller]
    fn success(self) -> Run {
        assert!(
            self.ok(),
            "command failed: {}\n{}",
            self.stderr(),
            self.stdout()
        );
        self
    }
    /// Refused as asked (an unknown user, a bad argument, an edit that would not validate):
    /// exit code 2, and an `error:` line on stderr.
    #[track_caller]
    fn failure(self) -> Run {
        assert!(!self.ok(), "command succeeded: {}", self.stderr());
        assert_eq!(self.0.status.code(), Some(2), "{}", self.stderr());
        assert!(self.stderr().starts_with("error: "), "{}", self.stderr());
        self
    }
    /// The one line on stdout (a key or password), checked to be alone.
    #[track_caller]
    fn secret(&self) -> String {
        let out = self.stdout();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "stdout must hold exactly the secret: {out:?}"
        );
        assert!(out.ends_with('\n'));
        lines[0].to_string()
    }
}

fn run_with_config(config: &Path, args: &[&str], stdin: &str) -> Run {
    Run(common::run_apiward(config, args, stdin))
}

/// Every comment of `before` is still in `after`, in the same order.
#[track_caller]
fn comments_kept(before: &str, after: &str) {
    let comments = |t: &str| -> Vec<String> {
        t.lines()
            .filter_map(|l| l.find('#').map(|i| l[i..].to_string()))
            .collect()
    };
    let mut remaining = comments(after).into_iter();
    for c in comments(before) {
        assert!(
            remaining.any(|a| a == c),
            "comment {c:?} was lost or moved:\n{after}"
        );
    }
}

fn is_key(text: &str) -> bool {
    text.len() == 46
        && text.starts_with("aw_")
        && text[3..].bytes().all(|b| b.is_ascii_alphanumeric())
}

fn add_crm(s: &Scratch) -> String {
    s.run(
        &[
            "users",
            "add",
            "crm-nightly@example.org",
            "--group",
            "read-only",
            "--remote-addresses",
            "192.0.2.10~198.51.100.0/24",
            "--display-name",
            "CRM nightly",
        ],
        "",
    )
    .success()
    .secret()
}

#[test]
fn users_add_prints_the_key_alone_and_stores_only_its_digest_and_prefix() {
    let s = Scratch::shipped();
    let run = s
        .run(
            &[
                "users",
                "add",
                "crm-nightly@example.org",
                "--group",
                "read-only",
                "--remote-addresses",
                "192.0.2.10~198.51.100.0/24",
                "--display-name",
                "CRM nightly",
                "--first-name",
                "Grace",
                "--last-name",
                "Hopper",
                "--description",
                "nightly export",
                "--status",
                "pending",
            ],
            "",
        )
        .success();
    let key = run.secret();
    assert!(is_key(&key), "{key:?}");
    assert!(run.stderr().contains("crm-nightly@example.org"));
    assert!(
        !run.stderr().contains(&key),
        "the key is printed once, on stdout only"
    );

    let text = s.text();
    assert!(!text.contains(&key), "the key itself is never written");
    assert!(text.contains(&KeyDigest::of(&key).to_hex()));
    assert!(text.contains(&format!("prefix = \"{}\"", &key[..8])));
    assert!(text.contains("[users.\"crm-nightly@example.org\"]\ndisplay_name = \"CRM nightly\"\nfirst_name = \"Grace\"\nlast_name = \"Hopper\"\ndescription = \"nightly export\"\nstatus = \"pending\"\ngroup = \"read-only\"\nremote_addresses = \"192.0.2.10~198.51.100.0/24\"\nkeys = [\n  { sha256 = "), "{text}");
    assert!(
        text.starts_with(SHIPPED),
        "everything before the new user is byte-for-byte the same"
    );
    comments_kept(SHIPPED, &text);
    assert!(s.passes_check());

    let snapshot = apiward::config::load(&s.path).expect("the edited file compiles");
    let stored = snapshot
        .keys
        .get(&KeyDigest::of(&key))
        .expect("the key is registered");
    assert_eq!(&*snapshot.user(stored.user).id, "crm-nightly@example.org");
    assert!(stored.expires.is_none());
    assert!(stored.created.is_some());
}

#[test]
fn users_add_can_generate_the_id_and_give_the_key_an_expiry() {
    let s = Scratch::shipped();
    let run = s
        .run(
            &[
                "users",
                "add",
                "--generate-username",
                "--group",
                "read-only",
                "--remote-addresses",
                "*",
                "--expires",
                "90d",
            ],
            "",
        )
        .success();
    let key = run.secret();
    let snapshot = apiward::config::load(&s.path).unwrap();
    let stored = snapshot.keys.get(&KeyDigest::of(&key)).unwrap();
    let id = &snapshot.user(stored.user).id;
    assert!(
        id.starts_with("apiuser-") && id.ends_with("@apiward.local"),
        "{id}"
    );
    assert!(
        run.stderr().contains(&**id),
        "the generated id is told on stderr"
    );
    let lifetime = stored.expires.unwrap() - stored.created.unwrap();
    assert_eq!(lifetime, 90 * 86_400);
}

#[test]
fn refused_edits_leave_the_file_byte_for_byte_unchanged() {
    let s = Scratch::shipped();
    add_crm(&s);
    let before = s.bytes();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "users",
                "add",
                "x@example.org",
                "--group",
                "admins",
                "--remote-addresses",
                "*",
            ],
            "group \"admins\" is not defined: use one of: manage-supporters, read-only",
        ),
        (
            &[
                "users",
                "add",
                "x@example.org",
                "--group",
                "read-only",
                "--remote-addresses",
                "192.0.2.1~300.1.1.1",
            ],
            "remote_addresses: \"300.1.1.1\"",
        ),
        (
            &[
                "users",
                "add",
                "x@example.org",
                "--group",
                "read-only",
                "--remote-addresses",
                "192.0.2.1, 192.0.2.2",
            ],
            "spaces",
        ),
        (
            &[
                "users",
                "add",
                "crm-nightly@example.org",
                "--group",
                "read-only",
                "--remote-addresses",
                "*",
            ],
            "already exists",
        ),
        (
            &[
                "users",
                "add",
                "not-an-email",
                "--group",
                "read-only",
                "--remote-addresses",
                "*",
            ],
            "email-shaped",
        ),
        (
            &["users", "set", "ghost@example.org", "--status", "inactive"],
            "no user \"ghost@example.org\"",
        ),
        (
            &[
                "users",
                "set",
                "crm-nightly@example.org",
                "--group",
                "admins",
            ],
            "not defined",
        ),
        (
            &[
                "users",
                "set",
                "crm-nightly@example.org",
                "--remote-addresses",
                "10.0.0.7/24",
            ],
            "did you mean 10.0.0.0/24",
        ),
        (
            &["users", "delete", "ghost@example.org", "--yes"],
            "no user",
        ),
        (
            &["users", "delete", "crm-nightly@example.org"],
            "pass --yes",
        ),
        (&["keys", "issue", "ghost@example.org"], "no user"),
        (&["keys", "rotate", "ghost@example.org"], "no user"),
        (&["keys", "revoke", "ghost@example.org", "--all"], "no user"),
        (
            &[
                "keys",
                "revoke",
                "crm-nightly@example.org",
                "--prefix",
                "aw_nope",
            ],
            "no key with prefix",
        ),
        (
            &[
                "keys",
                "rotate",
                "crm-nightly@example.org",
                "--prefix",
                "aw_nope",
            ],
            "no key with prefix",
        ),
        (&["users", "set-password", "ghost@example.org"], "no user"),
    ];
    for (args, needle) in cases {
        let run = s.run(args, "Valid-pass-123\n").failure();
        assert!(
            run.stderr().contains(needle),
            "{args:?}: {:?} not in {}",
            needle,
            run.stderr()
        );
        assert!(
            run.stdout().is_empty(),
            "{args:?} printed {:?}",
            run.stdout()
        );
        assert_eq!(s.bytes(), before, "{args:?} changed the file");
    }
    // Usage errors (clap) are refused before anything is read.
    for args in [
        &["users", "set", "crm-nightly@example.org"][..],
        &["users", "add", "y@example.org", "--group", "read-only"][..],
        &[
            "keys",
            "revoke",
            "crm-nightly@example.org",
            "--all",
            "--prefix",
            "aw_x",
        ][..],
        &[
            "keys",
            "issue",
            "crm-nightly@example.org",
            "--expires",
            "soon",
        ][..],
    ] {
        let run = s.run(args, "");
        assert!(!run.ok(), "{args:?} succeeded");
        assert_eq!(s.bytes(), before, "{args:?} changed the file");
    }
}

#[test]
fn an_edit_that_would_not_pass_check_is_not_written() {
    // The file already has a problem elsewhere: an edit must not be the one that writes it.
    let broken = SHIPPED.replace(
        "upstream = \"echo\"\n\n[[routes]]",
        "upstream = \"nowhere\"\n\n[[routes]]",
    );
    let s = Scratch::of(&broken);
    assert!(!s.passes_check());
    let run = s
        .run(
            &["users", "set", "demo@apiward.local", "--status", "inactive"],
            "",
        )
        .failure();
    assert!(
        run.stderr().contains("would not pass `apiward check`"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("nowhere"),
        "the check's errors are shown: {}",
        run.stderr()
    );
    assert_eq!(s.text(), broken);
    let run = s
        .run(
            &[
                "users",
                "add",
                "a@example.org",
                "--group",
                "read-only",
                "--remote-addresses",
                "*",
            ],
            "",
        )
        .failure();
    assert!(
        run.stdout().is_empty(),
        "no key is printed for a user that was not created"
    );
    assert_eq!(s.text(), broken);
}

#[test]
fn users_set_changes_fields_keeps_comments_and_never_touches_keys() {
    let s = Scratch::shipped();
    let demo_key = "aw_DEMOkeyNOTsecretLOCALtestingONLY01234567890";
    let digests_before: Vec<String> = {
        let snap = apiward::config::load(&s.path).unwrap();
        let mut d: Vec<String> = snap.keys.keys().map(KeyDigest::to_hex).collect();
        d.sort();
        d
    };
    s.run(
        &[
            "users",
            "set",
            "demo@apiward.local",
            "--status",
            "inactive",
            "--group",
            "read-only",
            "--remote-addresses",
            "10.0.0.0/8~::1",
            "--display-name",
            "Demo (renamed)",
            "--first-name",
            "",
        ],
        "",
    )
    .success();
    let text = s.text();
    assert!(
        text.contains("status = \"inactive\"            # active | pending | inactive: only active users get through"),
        "the comment after the value stays: {text}"
    );
    assert!(text.contains("display_name = \"Demo (renamed)\"\n"));
    assert!(!text.contains("first_name = \"Demo\""));
    assert!(text.contains("remote_addresses = \"10.0.0.0/8~::1\""));
    comments_kept(SHIPPED, &text);
    assert!(s.passes_check());
    let snap = apiward::config::load(&s.path).unwrap();
    let mut digests_after: Vec<String> = snap.keys.keys().map(KeyDigest::to_hex).collect();
    digests_after.sort();
    assert_eq!(digests_before, digests_after);
    let key = snap
        .keys
        .get(&KeyDigest::of(demo_key))
        .expect("the demo key is still there");
    assert_eq!(&*snap.user(key.user).id, "demo@apiward.local");
    assert_eq!(
        snap.user(key.user).status,
        apiward::snapshot::UserStatus::Inactive
    );
}

#[test]
fn users_list_shows_prefixes_never_keys() {
    let s = Scratch::shipped();
    let key = add_crm(&s);
    s.run(
        &[
            "keys",
            "issue",
            "crm-nightly@example.org",
            "--expires",
            "30d",
        ],
        "",
    )
    .success();
    let table = s.run(&["users", "list"], "").success().stdout();
    let header = table.lines().next().unwrap();
    for column in [
        "ID",
        "NAME",
        "STATUS",
        "GROUP",
        "ADDRESSES",
        "PASSWORD",
        "KEYS",
        "PREFIXES",
        "CREATED",
        "EXPIRES",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let row = table
        .lines()
        .find(|l| l.starts_with("crm-nightly@example.org"))
        .expect(&table);
    assert!(
        row.contains("CRM nightly") && row.contains("read-only") && row.contains(&key[..8]),
        "{row}"
    );
    assert!(!table.contains(&key));

    let json: serde_json::Value = serde_json::from_str(
        &s.run(&["users", "list", "--format", "json"], "")
            .success()
            .stdout(),
    )
    .unwrap();
    let users = json.as_array().unwrap();
    assert_eq!(users.len(), 3);
    let crm = users
        .iter()
        .find(|u| u["id"] == "crm-nightly@example.org")
        .unwrap();
    assert_eq!(crm["key_count"], 2);
    assert_eq!(crm["status"], "active");
    assert_eq!(
        crm["remote_addresses"],
        serde_json::json!(["192.0.2.10", "198.51.100.0/24"])
    );
    assert_eq!(crm["keys"][0]["prefix"], &key[..8]);
    assert!(crm["keys"][0]["expires"].is_null());
    assert!(crm["keys"][1]["expires"].is_string());
    assert_eq!(crm["password"], false);
    let inactive = users
        .iter()
        .find(|u| u["id"] == "crm-sync@example.org")
        .unwrap();
    assert_eq!(inactive["status"], "inactive");
    assert_eq!(inactive["keys"][0]["expires"], "2027-11-22T10:00:00Z");
}

#[test]
fn users_delete_removes_the_user_and_its_keys() {
    let s = Scratch::shipped();
    let key = add_crm(&s);
    let before = s.text();
    s.run(&["users", "delete", "crm-sync@example.org", "--yes"], "")
        .success();
    s.run(&["users", "delete", "crm-nightly@example.org", "--yes"], "")
        .success();
    let text = s.text();
    assert!(!text.contains("crm-sync@example.org") && !text.contains("crm-nightly"));
    assert!(!text.contains(&KeyDigest::of(&key).to_hex()));
    assert!(
        !text.contains("b7208c2dcd60a3d5"),
        "the deleted user's keys are gone"
    );
    assert!(text.contains("[users.\"demo@apiward.local\"]"));
    assert!(s.passes_check());
    assert_eq!(
        text,
        SHIPPED[..SHIPPED.find("\n[users.\"crm-sync@example.org\"]").unwrap()].to_string(),
        "only the deleted tables went: {before}"
    );
}

#[test]
fn keys_issue_rotate_and_revoke_edit_the_file() {
    let s = Scratch::shipped();
    let first = add_crm(&s);
    let second = s
        .run(&["keys", "issue", "crm-nightly@example.org"], "")
        .success()
        .secret();
    assert!(is_key(&second) && second != first);

    // Two valid keys: rotation must be told which.
    let run = s
        .run(&["keys", "rotate", "crm-nightly@example.org"], "")
        .failure();
    assert!(
        run.stderr().contains(&first[..8]) && run.stderr().contains(&second[..8]),
        "{}",
        run.stderr()
    );

    // With a grace period the old key gets an expiry and stays.
    let third = s
        .run(
            &[
                "keys",
                "rotate",
                "crm-nightly@example.org",
                "--prefix",
                &first[..8],
                "--grace",
                "1h",
            ],
            "",
        )
        .success()
        .secret();
    let snap = apiward::config::load(&s.path).unwrap();
    let old = snap.keys.get(&KeyDigest::of(&first)).unwrap();
    let new = snap.keys.get(&KeyDigest::of(&third)).unwrap();
    assert_eq!(old.expires.unwrap() - new.created.unwrap(), 3600);
    assert!(new.expires.is_none());

    // --grace 0 revokes at once: the old key is gone from the file.
    let fourth = s
        .run(
            &[
                "keys",
                "rotate",
                "crm-nightly@example.org",
                "--prefix",
                &second[..8],
                "--grace",
                "0",
            ],
            "",
        )
        .success()
        .secret();
    let text = s.text();
    assert!(!text.contains(&KeyDigest::of(&second).to_hex()));
    assert!(text.contains(&KeyDigest::of(&fourth).to_hex()));

    // Revoke by prefix, then all.
    s.run(
        &[
            "keys",
            "revoke",
            "crm-nightly@example.org",
            "--prefix",
            &third[..8],
        ],
        "",
    )
    .success();
    assert!(!s.text().contains(&KeyDigest::of(&third).to_hex()));
    s.run(&["keys", "revoke", "crm-nightly@example.org", "--all"], "")
        .success();
    let snap = apiward::config::load(&s.path).unwrap();
    assert_eq!(
        snap.keys.len(),
        2,
        "only the two shipped users' keys are left"
    );
    assert!(s.text().contains("keys = []"));
    comments_kept(SHIPPED, &s.text());
}

#[test]
fn keys_revoke_expired_cleans_up_after_rotations() {
    let s = Scratch::of(&SHIPPED.replace(
        "expires = 2027-11-22T10:00:00Z",
        "expires = 2020-01-01T00:00:00Z",
    ));
    s.run(&["keys", "issue", "crm-sync@example.org"], "")
        .success();
    let run = s
        .run(&["keys", "revoke", "crm-sync@example.org", "--expired"], "")
        .success();
    assert!(run.stderr().contains("aw_DEMOi"), "{}", run.stderr());
    let snap = apiward::config::load(&s.path).unwrap();
    assert_eq!(snap.keys.len(), 2);
    assert!(!s.text().contains("prefix = \"aw_DEMOi\""));
}

#[test]
fn set_password_stores_an_argon2id_hash_that_verifies() {
    let s = Scratch::shipped();
    let run = s
        .run(
            &["users", "set-password", "crm-sync@example.org"],
            "Tr0ub4dor&3 horse\n",
        )
        .success();
    assert!(
        run.stdout().is_empty(),
        "a password read from stdin is not printed"
    );
    let text = s.text();
    assert!(text.contains("password_hash = \"$argon2id$v=19$"), "{text}");
    assert!(!text.contains("Tr0ub4dor"));
    assert!(s.passes_check());
    let snap = apiward::config::load(&s.path).unwrap();
    let user = snap.user_by_id("crm-sync@example.org").unwrap();
    let verifier = PasswordVerifier::new();
    assert!(verifier.verify(&from_loopback(user, "Tr0ub4dor&3 horse")));
    assert!(!verifier.verify(&from_loopback(user, "Tr0ub4dor&3 horse\n")));

    let generated = s
        .run(
            &[
                "users",
                "set-password",
                "crm-sync@example.org",
                "--generate",
            ],
            "",
        )
        .success()
        .secret();
    assert!(generated.len() >= 20);
    let snap = apiward::config::load(&s.path).unwrap();
    let user = snap.user_by_id("crm-sync@example.org").unwrap();
    assert!(verifier.verify(&from_loopback(user, &generated)));
    assert!(
        !verifier.verify(&from_loopback(user, "Tr0ub4dor&3 horse")),
        "the old password no longer works"
    );
}

/// A password attempt for `user` from 127.0.0.1.
fn from_loopback<'a>(
    user: &'a apiward::snapshot::ApiUser,
    password: &'a str,
) -> PasswordAttempt<'a> {
    PasswordAttempt {
        id: &user.id,
        user: Some(user),
        password,
        client: std::net::Ipv4Addr::LOCALHOST.into(),
    }
}

#[test]
fn set_password_refusals_say_which_rule_failed() {
    let s = Scratch::of(&SHIPPED.replace("[server]\n", "[server]\norganisation = \"Acme\"\n"));
    let before = s.bytes();
    for (password, rule) in [
        ("", "empty"),
        ("abc-12", "at least 8"),
        ("onlyletters", "digit or one character that is not a letter"),
        ("my-crm-sync-2026", "user name \"crm-sync\""),
        ("ACME-rocks-2026", "organisation name \"Acme\""),
    ] {
        let run = s
            .run(
                &["users", "set-password", "crm-sync@example.org"],
                &format!("{password}\n"),
            )
            .failure();
        assert!(
            run.stderr().contains(rule),
            "{password:?}: {}",
            run.stderr()
        );
        if password.len() > 3 {
            assert!(
                !run.stderr().contains(password),
                "the password is not echoed"
            );
        }
        assert_eq!(s.bytes(), before, "{password:?} changed the file");
    }
}

#[test]
fn the_file_keeps_its_mode_and_a_symlink_stays_a_symlink() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let s = Scratch::shipped();
        std::fs::set_permissions(&s.path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let link = s.path.with_file_name("current.toml");
        std::os::unix::fs::symlink(&s.path, &link).unwrap();
        run_with_config(
            &link,
            &["users", "set", "demo@apiward.local", "--status", "pending"],
            "",
        )
        .success();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(s.text().contains("status = \"pending\""));
        assert_eq!(
            std::fs::metadata(&s.path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let leftovers: Vec<_> = std::fs::read_dir(s.path.parent().unwrap())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
    }
}

#[test]
fn every_command_has_help_with_examples() {
    for args in [
        &["users", "add", "--help"][..],
        &["users", "list", "--help"][..],
        &["users", "set", "--help"][..],
        &["users", "delete", "--help"][..],
        &["users", "set-password", "--help"][..],
        &["keys", "issue", "--help"][..],
        &["keys", "rotate", "--help"][..],
        &["keys", "revoke", "--help"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_apiward"))
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{args:?}");
        assert!(text.contains("Examples:"), "{args:?}: {text}");
        assert!(text.contains("--config"), "{args:?}: {text}");
    }
}

#[test]
fn a_listing_read_only_in_part_is_not_an_error() {
    // `apiward users list | head -1`: the reader goes away; the command must not panic.
    let s = Scratch::shipped();
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiward"))
        .args(["users", "list", "--config"])
        .arg(&s.path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run apiward");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn admins_are_added_given_a_password_and_tokens_and_deleted_in_the_file() {
    let s = Scratch::shipped();
    s.run(&["admins", "add", "ops@example.org"], "").success();
    s.run(&["admins", "add", "ops@example.org"], "").failure();
    s.run(
        &["admins", "set-password", "ops@example.org"],
        "Console-pass-42\n",
    )
    .success();
    let token = s
        .run(&["admins", "issue-token", "ops@example.org"], "")
        .success()
        .secret();
    assert!(token.starts_with("awa_"), "{token}");
    let text = s.text();
    assert!(!text.contains(&token), "the token itself is never written");
    assert!(text.contains(&KeyDigest::of(&token).to_hex()), "{text}");
    assert!(text.contains("password_hash = \"$argon2id$"), "{text}");
    assert!(s.passes_check());

    let listing = s
        .run(&["admins", "list", "--format", "json"], "")
        .success()
        .stdout();
    let listed: serde_json::Value = serde_json::from_str(&listing).unwrap();
    assert_eq!(listed[0]["id"], "ops@example.org");
    assert_eq!(listed[0]["password"], true);
    assert_eq!(listed[0]["tokens"][0]["prefix"], &token[..8]);

    s.run(
        &[
            "admins",
            "revoke-token",
            "ops@example.org",
            "--prefix",
            &token[..8],
        ],
        "",
    )
    .success();
    assert!(!s.text().contains(&KeyDigest::of(&token).to_hex()));
    s.run(&["admins", "delete", "ops@example.org"], "")
        .success();
    assert!(!s.text().contains("ops@example.org"));
    assert!(s.passes_check());
}
