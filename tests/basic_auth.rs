//! Keys and passwords made by the CLI, used against a running gateway: the printed key works,
//! rotation keeps the old key for its grace period only, and HTTP Basic authentication gets the
//! same checks and error codes as a key, with its cache following every reload.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

use common::{TestGateway, TestKey, echo_upstream, eventually, get, one_user_config};

/// Runs the real binary against the gateway's own configuration file, off the async workers.
async fn cli(config: &Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    let config = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = common::run_apiward(&config, &args, &stdin);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim_end().to_string(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("cli task")
}

async fn cli_ok(config: &Path, args: &[&str], stdin: &str) -> String {
    let (ok, stdout, stderr) = cli(config, args, stdin).await;
    assert!(ok, "apiward {args:?} failed: {stderr}");
    stdout
}

fn basic(id: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{password}"))
    )
}

/// What the gateway answers to a GET with these headers: status and error code (empty on 200).
async fn outcome(gw: &TestGateway, headers: &[(&str, &str)]) -> (u16, String) {
    let reply = get(&gw.url("/supporters/42"), headers).await;
    let code = if reply.status.is_success() {
        String::new()
    } else {
        reply.error_code()
    };
    (reply.status.as_u16(), code)
}

async fn with_key(gw: &TestGateway, key: &str) -> (u16, String) {
    outcome(gw, &[("x-api-key", key)]).await
}

async fn with_password(gw: &TestGateway, id: &str, password: &str) -> (u16, String) {
    outcome(gw, &[("authorization", &basic(id, password))]).await
}

fn ok() -> (u16, String) {
    (200, String::new())
}

fn refused(status: u16, code: &str) -> (u16, String) {
    (status, code.to_string())
}

/// A gateway whose file has one key user (so it starts) and the groups the tests use.
async fn gateway() -> (TestGateway, common::Upstream) {
    let upstream = echo_upstream().await;
    let seed = TestKey::new("seed");
    let toml = one_user_config(&upstream.url(), "seed@example.org", &seed);
    (TestGateway::start(&toml).await, upstream)
}

both_transports! {
    async fn the_key_printed_by_users_add_works_against_the_running_gateway() {
        let (gw, _up) = gateway().await;
        let key = cli_ok(
            &gw.config_path,
            &[
                "users",
                "add",
                "crm@example.org",
                "--group",
                "manage-supporters",
                "--remote-addresses",
                "127.0.0.1~::1",
            ],
            "",
        )
        .await;
        assert!(
            eventually(|| async { with_key(&gw, &key).await == ok() }).await,
            "the new key never worked"
        );
        let reply = get(
            &gw.url("/supporters/42"),
            &[("authorization", &format!("Bearer {key}"))],
        )
        .await;
        assert_eq!(
            reply.upstream_header("x-apiward-user"),
            Some(vec!["crm@example.org".to_string()])
        );

        let second = cli_ok(&gw.config_path, &["keys", "issue", "crm@example.org"], "").await;
        assert!(eventually(|| async { with_key(&gw, &second).await == ok() }).await);
        assert_eq!(
            with_key(&gw, &key).await,
            ok(),
            "issuing another key keeps the first"
        );

        cli_ok(
            &gw.config_path,
            &["keys", "revoke", "crm@example.org", "--prefix", &key[..8]],
            "",
        )
        .await;
        assert!(
            eventually(|| async { with_key(&gw, &key).await == refused(401, "invalid_credentials") })
                .await
        );
        assert_eq!(with_key(&gw, &second).await, ok());

        cli_ok(
            &gw.config_path,
            &[
                "users",
                "set",
                "crm@example.org",
                "--display-name",
                "CRM (renamed)",
            ],
            "",
        )
        .await;
        cli_ok(
            &gw.config_path,
            &["users", "set", "crm@example.org", "--status", "inactive"],
            "",
        )
        .await;
        assert!(
            eventually(|| async { with_key(&gw, &second).await == refused(403, "user_inactive") })
                .await
        );
        cli_ok(
            &gw.config_path,
            &["users", "delete", "crm@example.org", "--yes"],
            "",
        )
        .await;
        assert!(
            eventually(|| async {
                with_key(&gw, &second).await == refused(401, "invalid_credentials")
            })
            .await
        );
        gw.shutdown().await;
    }
}

both_transports! {
    async fn rotation_keeps_the_old_key_for_the_grace_period_then_only_the_new_one() {
        let (gw, _up) = gateway().await;
        let old = cli_ok(
            &gw.config_path,
            &[
                "users",
                "add",
                "rotating@example.org",
                "--group",
                "manage-supporters",
                "--remote-addresses",
                "127.0.0.1",
            ],
            "",
        )
        .await;
        assert!(eventually(|| async { with_key(&gw, &old).await == ok() }).await);

        let grace = Duration::from_secs(4);
        let rotated_at = Instant::now();
        let new = cli_ok(
            &gw.config_path,
            &["keys", "rotate", "rotating@example.org", "--grace", "4s"],
            "",
        )
        .await;
        assert!(
            eventually(|| async { with_key(&gw, &new).await == ok() }).await,
            "the new key never worked"
        );
        // Both keys work during the grace period (checked only while it surely lasts: the file
        // stores whole seconds, so it may end up to a second early).
        let old_outcome = with_key(&gw, &old).await;
        if rotated_at.elapsed() < grace - Duration::from_secs(1) {
            assert_eq!(
                old_outcome,
                ok(),
                "the old key works during the grace period"
            );
        }
        // Then the old key is refused as expired, and the new one keeps working.
        let deadline = Instant::now() + grace + Duration::from_secs(10);
        loop {
            if with_key(&gw, &old).await == refused(401, "key_expired") {
                break;
            }
            assert!(Instant::now() < deadline, "the old key was never refused");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(with_key(&gw, &new).await, ok());

        // --grace 0 revokes at once.
        let newest = cli_ok(
            &gw.config_path,
            &["keys", "rotate", "rotating@example.org", "--grace", "0"],
            "",
        )
        .await;
        assert!(
            eventually(|| async { with_key(&gw, &new).await == refused(401, "invalid_credentials") })
                .await
        );
        assert_eq!(with_key(&gw, &newest).await, ok());
        gw.shutdown().await;
    }
}

/// Adds a password-only user through the CLI and waits until the gateway has it.
async fn password_user(gw: &TestGateway, id: &str, addresses: &str, password: &str) {
    cli_ok(
        &gw.config_path,
        &[
            "users",
            "add",
            id,
            "--group",
            "manage-supporters",
            "--remote-addresses",
            addresses,
            "--no-key",
        ],
        "",
    )
    .await;
    cli_ok(
        &gw.config_path,
        &["users", "set-password", id],
        &format!("{password}\n"),
    )
    .await;
    assert!(
        eventually(|| async { with_password(gw, id, password).await == ok() }).await,
        "the password of {id} never worked"
    );
}

both_transports! {
    async fn basic_auth_gets_the_same_checks_and_codes_as_a_key() {
        let (gw, _up) = gateway().await;
        password_user(&gw, "pos@example.org", "127.0.0.1", "Till-roll-42").await;

        let reply = get(
            &gw.url("/supporters/7"),
            &[("authorization", &basic("pos@example.org", "Till-roll-42"))],
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.upstream_header("x-apiward-user"),
            Some(vec!["pos@example.org".to_string()])
        );
        assert_eq!(
            reply.upstream_header("authorization"),
            None,
            "the credential is not forwarded"
        );

        // A wrong password and an unknown id get the same answer.
        let wrong = get(
            &gw.url("/supporters/7"),
            &[("authorization", &basic("pos@example.org", "Till-roll-43"))],
        )
        .await;
        let unknown = get(
            &gw.url("/supporters/7"),
            &[(
                "authorization",
                &basic("nobody@example.org", "Till-roll-42"),
            )],
        )
        .await;
        assert_eq!(
            (wrong.status.as_u16(), wrong.error_code()),
            refused(401, "invalid_credentials")
        );
        assert_eq!(
            (unknown.status, unknown.body.clone()),
            (wrong.status, wrong.body.clone())
        );
        // A user with keys but no password cannot log in with a password.
        assert_eq!(
            with_password(&gw, "seed@example.org", "anything-1").await,
            refused(401, "invalid_credentials")
        );
        // Permissions apply: the group does not allow DELETE.
        let reply = common::send(
            "DELETE",
            &gw.url("/supporters/7"),
            &[("authorization", &basic("pos@example.org", "Till-roll-42"))],
            "",
        )
        .await;
        assert_eq!(
            (reply.status.as_u16(), reply.error_code()),
            refused(403, "forbidden")
        );

        // An unregistered source address.
        password_user(&gw, "elsewhere@example.org", "127.0.0.1", "Far-away-99").await;
        cli_ok(
            &gw.config_path,
            &[
                "users",
                "set",
                "elsewhere@example.org",
                "--remote-addresses",
                "192.0.2.10",
            ],
            "",
        )
        .await;
        assert!(
            eventually(|| async {
                with_password(&gw, "elsewhere@example.org", "Far-away-99").await
                    == refused(403, "unregistered_source")
            })
            .await
        );

        // An inactive user, although its password was verified (and cached) before.
        cli_ok(
            &gw.config_path,
            &["users", "set", "pos@example.org", "--status", "inactive"],
            "",
        )
        .await;
        assert!(
            eventually(|| async {
                with_password(&gw, "pos@example.org", "Till-roll-42").await
                    == refused(403, "user_inactive")
            })
            .await
        );
        gw.shutdown().await;
    }
}

both_transports! {
    async fn a_password_change_takes_effect_on_reload_despite_the_cache() {
        let (gw, _up) = gateway().await;
        password_user(&gw, "till@example.org", "127.0.0.1", "First-pass-1").await;
        // Warm: the first password is now answered from the cache.
        assert_eq!(
            with_password(&gw, "till@example.org", "First-pass-1").await,
            ok()
        );

        cli_ok(
            &gw.config_path,
            &["users", "set-password", "till@example.org"],
            "Second-pass-2\n",
        )
        .await;
        assert!(
            eventually(|| async {
                with_password(&gw, "till@example.org", "Second-pass-2").await == ok()
            })
            .await,
            "the new password never worked"
        );
        assert_eq!(
            with_password(&gw, "till@example.org", "First-pass-1").await,
            refused(401, "invalid_credentials"),
            "the cached old password is refused once the new hash is loaded"
        );

        // An unrelated reload keeps working credentials working.
        cli_ok(
            &gw.config_path,
            &[
                "users",
                "add",
                "other@example.org",
                "--group",
                "nothing",
                "--remote-addresses",
                "*",
            ],
            "",
        )
        .await;
        assert_eq!(
            with_password(&gw, "till@example.org", "Second-pass-2").await,
            ok()
        );

        // Deleting the user ends its cached login too.
        cli_ok(
            &gw.config_path,
            &["users", "delete", "till@example.org", "--yes"],
            "",
        )
        .await;
        assert!(
            eventually(|| async {
                with_password(&gw, "till@example.org", "Second-pass-2").await
                    == refused(401, "invalid_credentials")
            })
            .await
        );
        gw.shutdown().await;
    }
}

both_transports! {
    async fn repeated_failures_for_one_id_are_throttled_without_locking_out_a_logged_in_client() {
        let (gw, _up) = gateway().await;
        password_user(&gw, "target@example.org", "127.0.0.1", "Real-secret-7").await;
        password_user(&gw, "bystander@example.org", "127.0.0.1", "Other-secret-8").await;

        // Five guesses use up the per-user burst; more are refused without running Argon2.
        for i in 0..8 {
            let guess = format!("guess-{i}-xyz");
            assert_eq!(
                with_password(&gw, "target@example.org", &guess).await,
                refused(401, "invalid_credentials")
            );
        }
        // The client that already logged in is answered from the cache, before the limiter.
        assert_eq!(
            with_password(&gw, "target@example.org", "Real-secret-7").await,
            ok()
        );
        // Another user is not affected.
        assert_eq!(
            with_password(&gw, "bystander@example.org", "Other-secret-8").await,
            ok()
        );

        // A password not yet verified must wait for the bucket to refill (one attempt per 10s):
        // right after the change, even the correct new password is refused.
        cli_ok(
            &gw.config_path,
            &["users", "set-password", "target@example.org"],
            "Brand-new-9\n",
        )
        .await;
        assert!(
            eventually(|| async {
                with_password(&gw, "target@example.org", "Real-secret-7").await != ok()
            })
            .await,
            "the password change was never loaded"
        );
        assert_eq!(
            with_password(&gw, "target@example.org", "Brand-new-9").await,
            refused(401, "invalid_credentials")
        );
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_password_is_answered_about_its_password_and_a_used_one_shows_its_last_use() {
    let upstream = echo_upstream().await;
    let seed = TestKey::new("seed");
    let toml = common::with_admin(&one_user_config(&upstream.url(), "seed@example.org", &seed));
    let gw = TestGateway::start(&toml).await;
    password_user(&gw, "pos@example.org", "127.0.0.1", "Till-roll-42").await;

    // The refusal speaks of the password, never of an API key, and challenges for Basic again.
    let wrong = get(
        &gw.url("/supporters/7"),
        &[("authorization", &basic("pos@example.org", "Till-roll-43"))],
    )
    .await;
    assert_eq!(wrong.status, 401);
    let message = wrong.json()["message"].as_str().unwrap_or("").to_string();
    assert!(message.contains("user name and password"), "{message}");
    assert!(!message.to_lowercase().contains("key"), "{message}");
    assert!(
        wrong.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"apiward\""),
        "{:?}",
        wrong.headers
    );
    // Refused from elsewhere: the source message names the API user, not a key.
    cli_ok(
        &gw.config_path,
        &[
            "users",
            "set",
            "pos@example.org",
            "--remote-addresses",
            "192.0.2.1",
        ],
        "",
    )
    .await;
    assert!(
        eventually(|| async {
            with_password(&gw, "pos@example.org", "Till-roll-42").await
                == refused(403, "unregistered_source")
        })
        .await
    );
    let far = get(
        &gw.url("/supporters/7"),
        &[("authorization", &basic("pos@example.org", "Till-roll-42"))],
    )
    .await;
    assert_eq!(
        far.json()["message"],
        "Authentication call is being made from an unregistered source address for this API user"
    );

    // The password was used (by password_user's request): /keys says when, and so does the CLI.
    let admin = gw.gateway().admin_addr().unwrap();
    let keys = common::get(&format!("http://{admin}/keys"), &[])
        .await
        .json();
    let passwords = keys["passwords"].as_array().expect("a passwords list");
    let pos = passwords
        .iter()
        .find(|p| p["user"] == "pos@example.org")
        .expect("pos@example.org's password");
    assert!(pos["last_used"].is_string(), "{keys}");
    let listing = cli_ok(
        &gw.config_path,
        &[
            "users",
            "list",
            "--format",
            "json",
            "--admin",
            &admin.to_string(),
        ],
        "",
    )
    .await;
    let listing: serde_json::Value = serde_json::from_str(&listing).unwrap();
    let listed = listing
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "pos@example.org")
        .unwrap()
        .clone();
    assert_eq!(listed["password_last_used"], pos["last_used"]);
}

#[test]
fn a_wrong_password_s_log_line_names_the_user_and_the_credential() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let seed = TestKey::new("seed");
    let toml = one_user_config("builtin:echo", "seed@example.org", &seed);
    std::fs::write(&path, toml).unwrap();
    for (args, stdin) in [
        (
            &[
                "users",
                "add",
                "pos@example.org",
                "--group",
                "manage-supporters",
                "--remote-addresses",
                "127.0.0.1",
                "--no-key",
            ][..],
            "",
        ),
        (
            &["users", "set-password", "pos@example.org"][..],
            "Till-roll-42\n",
        ),
    ] {
        let out = common::run_apiward(&path, args, stdin);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let p = common::process::GatewayProcess::start_at(&path, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let reply = rt.block_on(get(
        &p.url("/echo/1"),
        &[("authorization", &basic("pos@example.org", "Till-roll-43"))],
    ));
    assert_eq!(reply.status, 401);
    let line = p
        .stdout_line(|l| l.contains("invalid_credentials"))
        .expect("a log line for the refusal");
    let line: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["user"], "pos@example.org", "{line}");
    assert_eq!(line["credential"], "password", "{line}");
    assert!(line.get("key_prefix").is_none(), "{line}");
}
