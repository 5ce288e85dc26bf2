//! The management API on the admin listener, over real HTTP: every change is an edit of the
//! file, answered once the gateway serves it; conditional writes, read-only files, racing
//! editors, and who may call it at all.

mod common;

use common::*;
use serde_json::json;

struct Setup {
    gw: TestGateway,
    admin: std::net::SocketAddr,
    token: TestKey,
    _upstream: Upstream,
}

async fn setup() -> Setup {
    let upstream = echo_upstream().await;
    let token = admin_token("ops");
    // These tests start with no user and delete the last one they made: meant, so said
    // (tests/config_guard.rs holds the refusal without it).
    let toml = with_server_setting(&config(&upstream.url(), ""), "allow_empty = true");
    let gw = TestGateway::start(&with_admin_account(&toml, &token)).await;
    let admin = gw.gateway().admin_addr().expect("admin listener");
    Setup {
        gw,
        admin,
        token,
        _upstream: upstream,
    }
}

impl Setup {
    async fn api(&self, method: &str, path: &str, body: serde_json::Value) -> Reply {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        admin_api(self.admin, &self.token, method, path, &body).await
    }

    async fn call_public(&self, key: &str) -> Reply {
        get(&self.gw.url("/supporters/1"), &[("x-api-key", key)]).await
    }
}

fn crm() -> serde_json::Value {
    json!({
        "id": "crm-sync@example.org",
        "group": "manage-supporters",
        "remote_addresses": "127.0.0.1",
        "display_name": "CRM nightly sync",
    })
}

#[tokio::test]
async fn a_user_created_through_the_api_works_at_once_and_every_change_takes_effect_at_once() {
    let s = setup().await;
    let created = s.api("POST", "/users", crm()).await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let key = created.json()["key"]
        .as_str()
        .expect("the key, once")
        .to_string();
    assert!(key.starts_with("aw_"));
    assert_eq!(created.json()["user"]["keys"][0]["prefix"], &key[..8]);
    assert!(created.headers.contains_key("etag"));
    assert!(
        !std::fs::read_to_string(&s.gw.config_path)
            .unwrap()
            .contains(&key),
        "the file keeps only the digest"
    );
    // No waiting: the answer came once the gateway had loaded the change.
    assert_eq!(s.call_public(&key).await.status, 200);

    let listed = s.api("GET", "/users", serde_json::Value::Null).await.json();
    assert_eq!(listed["users"][0]["id"], "crm-sync@example.org");
    assert_eq!(listed["users"][0]["requests_24h"], 1);
    let one = s
        .api(
            "GET",
            "/users/crm-sync@example.org",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(one.status, 200);
    assert!(one.json()["keys"][0]["last_used"].is_string());
    let recent = s
        .api(
            "GET",
            "/users/crm-sync@example.org/requests",
            serde_json::Value::Null,
        )
        .await
        .json();
    assert_eq!(recent["requests"][0]["path"], "/supporters/1");
    assert_eq!(recent["requests"][0]["status"], 200);
    assert_eq!(recent["requests"][0]["decision"], "allowed");
    assert_eq!(recent["requests"][0]["key_prefix"], &key[..8]);
    assert!(!recent.to_string().contains(&key), "never the key itself");

    let disabled = s
        .api(
            "PATCH",
            "/users/crm-sync@example.org",
            json!({"status": "inactive"}),
        )
        .await;
    assert_eq!(
        disabled.status,
        200,
        "{}",
        String::from_utf8_lossy(&disabled.body)
    );
    let refused = s.call_public(&key).await;
    assert_eq!(refused.status, 403);
    assert_eq!(refused.error_code(), "user_inactive");
    s.api(
        "PATCH",
        "/users/crm-sync@example.org",
        json!({"status": "active"}),
    )
    .await;
    assert_eq!(s.call_public(&key).await.status, 200);

    let rotated = s
        .api(
            "POST",
            "/users/crm-sync@example.org/keys/rotate",
            json!({"grace": "1h"}),
        )
        .await;
    assert_eq!(
        rotated.status,
        201,
        "{}",
        String::from_utf8_lossy(&rotated.body)
    );
    let new_key = rotated.json()["key"].as_str().unwrap().to_string();
    assert_eq!(rotated.json()["old_prefix"], &key[..8]);
    assert!(rotated.json()["old_expires"].is_string());
    assert_eq!(
        s.call_public(&key).await.status,
        200,
        "the old key works during the grace period"
    );
    assert_eq!(s.call_public(&new_key).await.status, 200);

    let revoked = s
        .api(
            "DELETE",
            &format!("/users/crm-sync@example.org/keys/{}", &key[..8]),
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(
        revoked.status,
        200,
        "{}",
        String::from_utf8_lossy(&revoked.body)
    );
    assert_eq!(
        s.call_public(&key).await.status,
        401,
        "only the new key is left"
    );
    assert_eq!(s.call_public(&new_key).await.status, 200);

    let issued = s
        .api(
            "POST",
            "/users/crm-sync@example.org/keys",
            json!({"expires": "90d"}),
        )
        .await;
    assert_eq!(issued.status, 201);
    let third = issued.json()["key"].as_str().unwrap().to_string();
    assert_eq!(s.call_public(&third).await.status, 200);

    let deleted = s
        .api(
            "DELETE",
            "/users/crm-sync@example.org",
            serde_json::Value::Null,
        )
        .await;
    assert_eq!(deleted.status, 200);
    assert_eq!(s.call_public(&new_key).await.status, 401);
    assert_eq!(
        s.api(
            "GET",
            "/users/crm-sync@example.org",
            serde_json::Value::Null
        )
        .await
        .status,
        404
    );

    let refusals = s
        .api("GET", "/refusals", serde_json::Value::Null)
        .await
        .json();
    assert_eq!(
        refusals["refusals"][0]["decision"], "invalid_credentials",
        "{refusals}"
    );
    let groups = s
        .api("GET", "/groups", serde_json::Value::Null)
        .await
        .json();
    assert_eq!(groups["groups"][0]["name"], "manage-supporters");
    assert_eq!(
        groups["groups"][0]["permissions"][0]["path"],
        "/supporters/**"
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_address_is_refused_with_the_checkers_file_line_and_column() {
    let s = setup().await;
    let before = std::fs::read(&s.gw.config_path).unwrap();
    let mut bad = crm();
    bad["remote_addresses"] = json!("192.0.2.1~300.1.1.1");
    let reply = s.api("POST", "/users", bad).await;
    assert_eq!(reply.status, 422);
    assert_eq!(reply.error_code(), "invalid_config");
    let message = reply.json()["message"].as_str().unwrap().to_string();
    let path = s.gw.config_path.display().to_string();
    assert!(message.starts_with(&format!("{path}:")), "{message}");
    assert!(
        message.contains("remote_addresses: \"300.1.1.1\""),
        "{message}"
    );
    let location: Vec<&str> = message[path.len() + 1..].splitn(3, ':').collect();
    assert!(
        location[0].parse::<u32>().is_ok() && location[1].parse::<u32>().is_ok(),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&s.gw.config_path).unwrap(),
        before,
        "the file is untouched"
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_write_with_a_stale_if_match_is_refused_with_412() {
    let s = setup().await;
    let etag = s
        .api("GET", "/users", serde_json::Value::Null)
        .await
        .headers["etag"]
        .to_str()
        .unwrap()
        .to_string();
    let created = s.api("POST", "/users", crm()).await;
    assert_eq!(created.status, 201);
    let fresh = created.headers["etag"].to_str().unwrap().to_string();
    assert_ne!(etag, fresh);
    let auth = format!("Bearer {}", s.token.key);
    let url = format!("http://{}/api/v1/users/crm-sync@example.org", s.admin);
    let stale = send(
        "PATCH",
        &url,
        &[("authorization", &auth), ("if-match", &etag)],
        r#"{"status":"inactive"}"#,
    )
    .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.error_code(), "stale_etag");
    let current = send(
        "PATCH",
        &url,
        &[("authorization", &auth), ("if-match", &fresh)],
        r#"{"status":"inactive"}"#,
    )
    .await;
    assert_eq!(
        current.status,
        200,
        "{}",
        String::from_utf8_lossy(&current.body)
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn every_write_to_a_read_only_file_is_refused_with_409() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = setup().await;
    std::fs::set_permissions(&s.gw.config_path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let reply = s.api("POST", "/users", crm()).await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.error_code(), "read_only");
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("ConfigMap")
    );
    assert_eq!(
        s.api("GET", "/users", serde_json::Value::Null).await.json()["read_only"],
        true
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_cli_edit_and_an_api_edit_racing_never_lose_either_change() {
    let s = setup().await;
    for round in 0..4 {
        let cli_id = format!("cli-{round}@example.org");
        let api_id = format!("api-{round}@example.org");
        let path = s.gw.config_path.clone();
        let cli = tokio::task::spawn_blocking(move || {
            run_apiward(
                &path,
                &[
                    "users",
                    "add",
                    &cli_id,
                    "--group",
                    "manage-supporters",
                    "--remote-addresses",
                    "127.0.0.1",
                ],
                "",
            )
        });
        let api = s.api(
            "POST",
            "/users",
            json!({"id": api_id, "group": "manage-supporters", "remote_addresses": "127.0.0.1"}),
        );
        let (cli, api) = tokio::join!(cli, api);
        let cli = cli.unwrap();
        assert!(
            cli.status.success(),
            "{}",
            String::from_utf8_lossy(&cli.stderr)
        );
        assert_eq!(api.status, 201, "{}", String::from_utf8_lossy(&api.body));
    }
    let text = std::fs::read_to_string(&s.gw.config_path).unwrap();
    for round in 0..4 {
        assert!(text.contains(&format!("cli-{round}@example.org")), "{text}");
        assert!(text.contains(&format!("api-{round}@example.org")), "{text}");
    }
    s.gw.shutdown().await;
}

#[tokio::test]
async fn without_an_admin_token_or_with_a_users_key_the_api_answers_401() {
    let s = setup().await;
    let created = s.api("POST", "/users", crm()).await;
    let key = created.json()["key"].as_str().unwrap().to_string();
    let url = format!("http://{}/api/v1/users", s.admin);
    let none = get(&url, &[]).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.error_code(), "unauthenticated");
    let bearer = format!("Bearer {key}");
    for headers in [
        vec![("x-api-key", key.as_str())],
        vec![("authorization", bearer.as_str())],
    ] {
        let with_key = get(&url, &headers).await;
        assert_eq!(with_key.status, 401);
        assert!(
            with_key.json()["message"]
                .as_str()
                .unwrap()
                .contains("not accepted on the admin listener")
        );
    }
    let unknown = admin_token("someone-else");
    assert_eq!(
        admin_api(s.admin, &unknown, "GET", "/users", "")
            .await
            .status,
        401
    );
    // The console refuses too, even on loopback: only the login form is shown.
    let page = get(
        &format!("http://{}/users/crm-sync@example.org", s.admin),
        &[],
    )
    .await;
    assert_eq!(page.status, 303);
    // And the admin token is nobody on the public listener.
    let public = get(
        &s.gw.url("/supporters/1"),
        &[("authorization", &format!("Bearer {}", s.token.key))],
    )
    .await;
    assert_eq!(public.status, 401);
    // The open endpoints stay open.
    assert_eq!(
        get(&format!("http://{}/healthz", s.admin), &[])
            .await
            .status,
        200
    );
    assert_eq!(
        get(&format!("http://{}/metrics", s.admin), &[])
            .await
            .status,
        200
    );
    s.gw.shutdown().await;
}

#[tokio::test]
async fn a_host_that_is_not_the_admin_listeners_is_refused() {
    let s = setup().await;
    let url = format!("http://{}/api/v1/users", s.admin);
    let auth = format!("Bearer {}", s.token.key);
    let rebound = get(
        &url,
        &[("host", "attacker.example:9901"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(rebound.status, 421);
    assert_eq!(
        get(
            &format!("http://{}/metrics", s.admin),
            &[("host", "attacker.example")]
        )
        .await
        .status,
        421
    );
    assert_eq!(
        get(&url, &[("host", "localhost"), ("authorization", &auth)])
            .await
            .status,
        200
    );
    s.gw.shutdown().await;
}

const CONSOLE_PASSWORD: &str = "Console-pass-42";

/// A gateway whose admin `ops@example.org` has a console password; `extra` goes in `[server]`.
async fn console_gateway(extra: &str) -> (TestGateway, std::net::SocketAddr, Upstream) {
    let upstream = echo_upstream().await;
    let hash = apiward::auth::password::hash_password(CONSOLE_PASSWORD).unwrap();
    let toml = format!(
        "{}\n[admins.\"ops@example.org\"]\npassword_hash = \"{hash}\"\n",
        with_admin(&config(&upstream.url(), "")).replace(
            "admin_listen = \"127.0.0.1:0\"",
            &format!("admin_listen = \"127.0.0.1:0\"\n{extra}")
        )
    );
    let gw = TestGateway::start(&toml).await;
    let admin = gw.gateway().admin_addr().unwrap();
    (gw, admin, upstream)
}

async fn login(admin: std::net::SocketAddr, password: &str) -> Reply {
    send(
        "POST",
        &format!("http://{admin}/login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("id=ops%40example.org&password={password}"),
    )
    .await
}

#[tokio::test]
async fn the_console_session_is_a_strict_http_only_cookie_and_changes_need_its_csrf_token() {
    let (gw, admin, _upstream) = console_gateway("").await;
    let signed_in = login(admin, CONSOLE_PASSWORD).await;
    assert_eq!(signed_in.status, 303);
    let set_cookie = signed_in.headers["set-cookie"]
        .to_str()
        .unwrap()
        .to_string();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attribute), "{set_cookie}");
    }
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();

    let page = get(&format!("http://{admin}/"), &[("cookie", &cookie)]).await;
    assert_eq!(page.status, 200);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(String::from_utf8_lossy(&page.body).contains("<h1>API users</h1>"));

    // The session alone is not enough to change anything through the API: the CSRF token is.
    let body = r#"{"id":"a@example.org","group":"manage-supporters","remote_addresses":"*"}"#;
    let url = format!("http://{admin}/api/v1/users");
    let without = send("POST", &url, &[("cookie", &cookie)], body).await;
    assert_eq!(without.status, 403);
    assert_eq!(without.error_code(), "csrf");
    let html = String::from_utf8_lossy(&page.body).into_owned();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's CSRF token")
        .to_string();
    let with = send(
        "POST",
        &url,
        &[("cookie", &cookie), ("x-csrf-token", &token)],
        body,
    )
    .await;
    assert_eq!(with.status, 201, "{}", String::from_utf8_lossy(&with.body));

    // A read-only file (a ConfigMap mount): the console shows, and offers no change.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&gw.config_path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let page = get(&format!("http://{admin}/"), &[("cookie", &cookie)]).await;
        let html = String::from_utf8_lossy(&page.body);
        assert!(
            html.contains("The configuration file is read-only"),
            "{html}"
        );
        assert!(!html.contains("Add API user"), "{html}");
        std::fs::set_permissions(&gw.config_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    // Signing out ends the session on the server.
    let out = send(
        "POST",
        &format!("http://{admin}/logout"),
        &[
            ("cookie", &cookie),
            ("content-type", "application/x-www-form-urlencoded"),
        ],
        &format!("csrf={token}"),
    )
    .await;
    assert_eq!(out.status, 303);
    assert_eq!(get(&url, &[("cookie", &cookie)]).await.status, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn failed_logins_are_counted_and_then_throttled() {
    let (gw, admin, _upstream) = console_gateway("").await;
    for _ in 0..5 {
        let failed = login(admin, "not-the-password-1").await;
        assert_eq!(failed.status, 401);
        assert!(failed.headers.get("set-cookie").is_none());
    }
    let throttled = login(admin, CONSOLE_PASSWORD).await;
    assert_eq!(
        throttled.status, 429,
        "even the right password waits once the bucket is empty"
    );
    let metrics = String::from_utf8_lossy(&get(&format!("http://{admin}/metrics"), &[]).await.body)
        .into_owned();
    assert!(
        metrics.contains("apiward_admin_logins_total{outcome=\"failure\"} 5"),
        "{metrics}"
    );
    assert!(
        metrics.contains("apiward_admin_logins_total{outcome=\"throttled\"} 1"),
        "{metrics}"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn an_idle_console_session_expires() {
    let (gw, admin, _upstream) = console_gateway("admin_session_idle = \"1s\"").await;
    let signed_in = login(admin, CONSOLE_PASSWORD).await;
    let cookie = signed_in.headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let url = format!("http://{admin}/api/v1/users");
    assert_eq!(get(&url, &[("cookie", &cookie)]).await.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(get(&url, &[("cookie", &cookie)]).await.status, 401);
    let page = get(&format!("http://{admin}/"), &[("cookie", &cookie)]).await;
    assert!(String::from_utf8_lossy(&page.body).contains("Sign in to apiward"));
    gw.shutdown().await;
}
