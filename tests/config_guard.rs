//! A configuration that would serve nothing, or lose most of its users, never replaces a working
//! one by accident (issue #18, docs/security.md "A configuration that serves nothing"): a file
//! truncated to zero bytes, one without routes or users, one that drops more than
//! `max_user_drop` of the users. The reload refuses it and keeps serving, `/status` says why;
//! `check`, the CLI's edits and the admin API apply the same guard; `allow_empty = true` is the
//! operator saying they mean it.

mod common;

use common::*;

struct Guarded {
    gw: TestGateway,
    admin: std::net::SocketAddr,
    _upstream: Upstream,
}

/// A gateway with an admin listener serving `users` (made by `user`), `setting` under `[server]`.
async fn serving(users: &str, setting: Option<&str>) -> Guarded {
    let upstream = echo_upstream().await;
    let gw = TestGateway::start(&file(&upstream.url(), users, setting)).await;
    let admin = gw.gateway().admin_addr().expect("admin listener");
    Guarded {
        gw,
        admin,
        _upstream: upstream,
    }
}

fn file(upstream: &str, users: &str, setting: Option<&str>) -> String {
    let toml = with_admin(&config(upstream, users));
    match setting {
        Some(line) => with_server_setting(&toml, line),
        None => toml,
    }
}

impl Guarded {
    async fn status_with(&self, k: &TestKey) -> u16 {
        get(&self.gw.url("/supporters/1"), &[("x-api-key", &k.key)])
            .await
            .status
            .as_u16()
    }

    /// Writes `text` over the file and waits until the reload is refused; returns the message
    /// `/status` shows.
    async fn refused(&self, text: &str) -> String {
        let store = self.gw.gateway().store();
        let failed = store.reloads_failed();
        self.gw.replace_config(text);
        assert!(
            eventually(|| async { store.reloads_failed() > failed }).await,
            "the reload was not refused"
        );
        let status = status(self.admin).await;
        status["last_reload_error"]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("/status shows no reload error: {status}"))
            .to_string()
    }

    async fn applied(&self, text: &str) {
        let store = self.gw.gateway().store();
        let applied = store.reloads_applied();
        self.gw.replace_config(text);
        assert!(
            eventually(|| async { store.reloads_applied() > applied }).await,
            "the reload was not applied: {:?}",
            store.last_failure()
        );
    }
}

fn users(keys: &[&TestKey]) -> String {
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            user(
                &format!("u{i}@example.org"),
                "active",
                "manage-supporters",
                "127.0.0.1",
                &[k],
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_truncated_to_zero_bytes_leaves_the_last_good_configuration_serving() {
    let k = TestKey::new("guard-zero");
    let g = serving(&users(&[&k]), None).await;
    assert_eq!(g.status_with(&k).await, 200);
    let store = g.gw.gateway().store();
    let failed = store.reloads_failed();
    // Truncated in place, as a save that did not finish leaves it.
    std::fs::write(&g.gw.config_path, "").unwrap();
    assert!(
        eventually(|| async { store.reloads_failed() > failed }).await,
        "the empty file was not refused"
    );
    let status = status(g.admin).await;
    let message = status["last_reload_error"]["message"]
        .as_str()
        .unwrap_or("");
    assert!(message.contains("is empty (0 bytes)"), "{status}");
    assert_eq!(status["routes"], 3, "{status}");
    assert_eq!(g.status_with(&k).await, 200, "the old configuration serves");
    // A file of only comments is no configuration either.
    let message = g.refused("# apiward\n\n# (to be written)\n").await;
    assert!(message.contains("holds no setting"), "{message}");
    assert_eq!(g.status_with(&k).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_without_routes_or_without_users_is_refused_unless_allow_empty_says_it_is_meant() {
    let k = TestKey::new("guard-empty");
    let g = serving(&users(&[&k]), None).await;
    let upstream = g._upstream.url();
    let whole = file(&upstream, &users(&[&k]), None);

    let no_routes: String = whole
        .split("\n\n")
        .filter(|block| !block.trim_start().starts_with("[[routes]]"))
        .collect::<Vec<_>>()
        .join("\n\n");
    assert!(!no_routes.contains("[[routes]]"));
    let message = g.refused(&no_routes).await;
    assert!(
        message.contains("defines no route where the configuration before it has 3"),
        "{message}"
    );
    assert!(message.contains("allow_empty = true"), "{message}");
    assert_eq!(g.status_with(&k).await, 200, "the routes still serve");

    let message = g.refused(&file(&upstream, "", None)).await;
    assert!(
        message.contains("defines no user where the configuration before it has 1"),
        "{message}"
    );
    assert_eq!(g.status_with(&k).await, 200, "the user still gets in");

    // Said explicitly: applied.
    g.applied(&file(&upstream, "", Some("allow_empty = true")))
        .await;
    assert_eq!(g.status_with(&k).await, 401);
    assert!(status(g.admin).await["last_reload_error"].is_null());
    // From nothing, anything goes: the guard only protects what is served.
    g.applied(&file(&upstream, &users(&[&k]), None)).await;
    assert_eq!(g.status_with(&k).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_user_drop_refuses_a_file_that_suddenly_loses_more_than_that_share_of_the_users() {
    let keys: Vec<TestKey> = (0..4)
        .map(|i| TestKey::new(&format!("guard-drop{i}")))
        .collect();
    let all: Vec<&TestKey> = keys.iter().collect();
    let g = serving(&users(&all), Some("max_user_drop = 0.5")).await;
    let upstream = g._upstream.url();

    // Three of four gone (75 %): refused, all four still get in.
    let message = g
        .refused(&file(
            &upstream,
            &users(&all[..1]),
            Some("max_user_drop = 0.5"),
        ))
        .await;
    assert!(
        message.contains("removes 3 of the 4 users (75 %), more than max_user_drop = 0.5"),
        "{message}"
    );
    // The setting lost along with the users (a truncated file): the one serving still applies.
    let message = g.refused(&file(&upstream, &users(&all[..1]), None)).await;
    assert!(message.contains("max_user_drop = 0.5"), "{message}");
    for k in &keys {
        assert_eq!(g.status_with(k).await, 200);
    }
    // Users renamed are users removed: the share counts ids, not how many are left.
    let renamed = users(&all)
        .replace("u3@", "v3@")
        .replace("u2@", "v2@")
        .replace("u1@", "v1@");
    let message = g
        .refused(&file(&upstream, &renamed, Some("max_user_drop = 0.5")))
        .await;
    assert!(message.contains("removes 3 of the 4 users"), "{message}");

    // Half is not more than half.
    g.applied(&file(
        &upstream,
        &users(&all[..2]),
        Some("max_user_drop = 0.5"),
    ))
    .await;
    assert_eq!(g.status_with(&keys[0]).await, 200);
    assert_eq!(g.status_with(&keys[3]).await, 401);
    // A large drop that is meant: max_user_drop = 1 in the same file.
    g.applied(&file(
        &upstream,
        &users(&all[..1]),
        Some("max_user_drop = 1.0"),
    ))
    .await;
    assert_eq!(g.status_with(&keys[1]).await, 401);
    assert_eq!(g.status_with(&keys[0]).await, 200);
}

#[test]
fn max_user_drop_is_a_share_above_0_and_at_most_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    for bad in ["0.0", "1.5", "-0.2"] {
        let toml = with_server_setting(
            &config("http://127.0.0.1:9", ""),
            &format!("max_user_drop = {bad}"),
        );
        std::fs::write(&path, toml).unwrap();
        let out = run_apiward(&path, &["check"], "");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(
            stderr.contains("max_user_drop is the largest share"),
            "{bad}: {stderr}"
        );
    }
}

#[test]
fn check_refuses_an_empty_file_and_with_against_what_a_reload_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let (new, old) = (dir.path().join("new.toml"), dir.path().join("old.toml"));
    let keys: Vec<TestKey> = (0..4)
        .map(|i| TestKey::new(&format!("guard-check{i}")))
        .collect();
    let all: Vec<&TestKey> = keys.iter().collect();
    let upstream = "http://127.0.0.1:9";

    std::fs::write(&new, "").unwrap();
    let out = run_apiward(&new, &["check"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is empty (0 bytes)"), "{stderr}");

    // On its own a file without users is valid (a first start), and check says what it means.
    std::fs::write(&new, config(upstream, "")).unwrap();
    let out = run_apiward(&new, &["check"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("defines no user"), "{stderr}");

    // Against the file it replaces, it is what a reload would refuse.
    std::fs::write(
        &old,
        with_server_setting(&config(upstream, &users(&all)), "max_user_drop = 0.5"),
    )
    .unwrap();
    let against = old.to_str().unwrap();
    let out = run_apiward(&new, &["check", "--against", against], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("defines no user where"), "{stderr}");

    std::fs::write(&new, config(upstream, &users(&all[..1]))).unwrap();
    let out = run_apiward(&new, &["check", "--against", against], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("removes 3 of the 4 users"), "{stderr}");

    std::fs::write(&new, config(upstream, &users(&all[..3]))).unwrap();
    let out = run_apiward(&new, &["check", "--against", against], "");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_cli_does_not_delete_the_last_user_unless_allow_empty_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let k = TestKey::new("guard-cli");
    let toml = config("http://127.0.0.1:9", &users(&[&k]));
    std::fs::write(&path, &toml).unwrap();
    let out = run_apiward(&path, &["users", "delete", "u0@example.org", "--yes"], "");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("defines no user where"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        toml,
        "the file is untouched"
    );

    std::fs::write(&path, with_server_setting(&toml, "allow_empty = true")).unwrap();
    let out = run_apiward(&path, &["users", "delete", "u0@example.org", "--yes"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!std::fs::read_to_string(&path).unwrap().contains("u0@"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_does_not_delete_the_last_user_and_the_gateway_keeps_it() {
    let upstream = echo_upstream().await;
    let token = admin_token("guard-ops");
    let k = TestKey::new("guard-api");
    let gw = TestGateway::start(&with_admin_account(
        &config(&upstream.url(), &users(&[&k])),
        &token,
    ))
    .await;
    let admin = gw.gateway().admin_addr().expect("admin listener");
    let deleted = admin_api(admin, &token, "DELETE", "/users/u0@example.org", "").await;
    assert_eq!(
        deleted.status,
        422,
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );
    assert!(
        String::from_utf8_lossy(&deleted.body).contains("defines no user where"),
        "{}",
        String::from_utf8_lossy(&deleted.body)
    );
    let still = get(&gw.url("/supporters/1"), &[("x-api-key", &k.key)]).await;
    assert_eq!(still.status, 200);
}
