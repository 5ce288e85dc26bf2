//! Per-user limits, as clients and operators see them: 429s with Retry-After and the RateLimit
//! fields, budgets that survive reloads, one budget shared by three gateways through a real
//! Redis that is killed and restarted under both `on_store_error` settings, and the
//! failed-authentication limiter that never locks out a user calling from its own address.
//!
//! Times are shaped for a loaded machine: limits per hour where only counts matter, generous
//! margins where a rate is measured, `eventually` where something must happen.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `config` with `group_limits` added to the `manage-supporters` group, `users` (the tables),
/// and `rate_limits` lines for a `[rate_limits]` table (none if empty).
fn limited_config(upstream: &str, group_limits: &str, users: &str, rate_limits: &str) -> String {
    let mut text = config(upstream, users).replace(
        "[groups.nothing]",
        &format!("{group_limits}\n\n[groups.nothing]"),
    );
    if !rate_limits.is_empty() {
        text.push_str(&format!("\n[rate_limits]\n{rate_limits}\n"));
    }
    text
}

fn active(id: &str, key: &TestKey) -> String {
    user(id, "active", "manage-supporters", "127.0.0.1", &[key])
}

async fn get_as(url: &str, key: &TestKey) -> Reply {
    get(url, &[("x-api-key", key.key.as_str())]).await
}

fn header<'a>(reply: &'a Reply, name: &str) -> &'a str {
    reply
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap_or(""))
        .unwrap_or_else(|| panic!("no {name} header in {:?}", reply.headers))
}

/// Sends `n` requests, one after the other, and counts the statuses.
async fn statuses(urls: &[String], key: &TestKey, n: usize) -> (usize, usize, Vec<String>) {
    let (mut ok, mut limited, mut other) = (0, 0, Vec::new());
    for i in 0..n {
        let reply = get_as(&urls[i % urls.len()], key).await;
        match reply.status.as_u16() {
            200 => ok += 1,
            429 => limited += 1,
            s => other.push(format!("{s} {}", String::from_utf8_lossy(&reply.body))),
        }
    }
    (ok, limited, other)
}

both_transports! {
    async fn a_burst_passes_then_429_rate_limited_with_retry_after_and_ratelimit_fields() {
        let up = echo_upstream().await;
        let key = TestKey::new("burstuser");
        let gw = TestGateway::start(&limited_config(
            &up.url(),
            r#"rate_limit = { requests = 1, per = "1h", burst = 4 }"#,
            &active("burst@example.org", &key),
            "",
        ))
        .await;
        // The fast path (an http upstream) and hyper's path (the built-in echo) share one budget
        // and write the same fields.
        for (i, path) in [
            "/supporters/1",
            "/echo/2",
            "/supporters/3",
            "/echo/4",
            "/supporters/5",
        ]
        .iter()
        .enumerate()
        {
            let reply = get_as(&gw.url(path), &key).await;
            assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
            assert_eq!(header(&reply, "ratelimit-policy"), "\"user\";q=1;w=3600");
            let state = header(&reply, "ratelimit");
            assert!(
                state.starts_with(&format!("\"user\";r={};t=", 4 - i)),
                "{path}: {state}"
            );
        }
        for path in ["/supporters/6", "/echo/7"] {
            let refused = get_as(&gw.url(path), &key).await;
            assert_eq!(refused.status, 429, "{path}");
            assert_eq!(refused.error_code(), "rate_limited");
            assert!(
                refused.json()["message"]
                    .as_str()
                    .unwrap()
                    .contains("Retry-After")
            );
            let retry: u64 = header(&refused, "retry-after")
                .parse()
                .expect("whole seconds");
            assert!(
                (3500..=3600).contains(&retry),
                "one request an hour: {retry}"
            );
            assert_eq!(header(&refused, "ratelimit-policy"), "\"user\";q=1;w=3600");
            assert!(header(&refused, "ratelimit").starts_with("\"user\";r=0;t="));
        }
        // An upstream never learns about limits.
        let other = TestKey::new("otheruser");
        gw.replace_config(&limited_config(
            &up.url(),
            r#"rate_limit = { requests = 1, per = "1h", burst = 4 }"#,
            &(active("burst@example.org", &key) + &active("other@example.org", &other)),
            "",
        ));
        assert!(
            eventually(|| async { get_as(&gw.url("/supporters/x"), &other).await.status == 200 }).await
        );
        let seen = get_as(&gw.url("/supporters/x"), &other).await;
        assert!(seen.upstream_header("ratelimit").is_none());
        assert!(seen.upstream_header("ratelimit-policy").is_none());
        gw.shutdown().await;
    }
}

both_transports! {
    async fn over_the_limit_the_steady_rate_is_kept() {
        let up = echo_upstream().await;
        let key = TestKey::new("steadyuser");
        let gw = TestGateway::start(&limited_config(
            &up.url(),
            r#"rate_limit = { requests = 20, per = "1s", burst = 0 }"#,
            &active("steady@example.org", &key),
            "",
        ))
        .await;
        let url = gw.url("/supporters/steady");
        let started = Instant::now();
        let mut clients = Vec::new();
        for _ in 0..4 {
            let (url, key) = (url.clone(), TestKey::new("steadyuser"));
            clients.push(tokio::spawn(async move {
                let mut ok = 0u64;
                while started.elapsed() < Duration::from_secs(3) {
                    if get_as(&url, &key).await.status == 200 {
                        ok += 1;
                    }
                }
                ok
            }));
        }
        let mut admitted = 0;
        for c in clients {
            admitted += c.await.unwrap();
        }
        let allowed = 20.0 * started.elapsed().as_secs_f64();
        // Never above the limit (one request of tolerance); well above half of it even if this
        // machine is slow to send.
        assert!(
            admitted as f64 <= allowed + 2.0,
            "{admitted} admitted, {allowed} allowed"
        );
        assert!(
            admitted as f64 >= allowed * 0.5,
            "{admitted} admitted, {allowed} allowed"
        );
        gw.shutdown().await;
    }
}

both_transports! {
    async fn a_quota_over_a_short_period_refuses_then_comes_back_in_the_next_period() {
        let up = echo_upstream().await;
        let key = TestKey::new("quotauser");
        let gw = TestGateway::start(&limited_config(
            &up.url(),
            r#"quota = { requests = 3, per = "2s" }"#,
            &active("quota@example.org", &key),
            "",
        ))
        .await;
        let url = gw.url("/supporters/q");
        let mut admitted = 0;
        let refused = loop {
            let reply = get_as(&url, &key).await;
            if reply.status == 429 {
                break reply;
            }
            assert_eq!(reply.status, 200);
            admitted += 1;
            assert!(
                admitted <= 6,
                "at most two periods' worth before the first refusal"
            );
        };
        assert_eq!(refused.error_code(), "quota_exhausted");
        let retry: u64 = header(&refused, "retry-after").parse().unwrap();
        assert!((1..=2).contains(&retry), "{retry}");
        assert_eq!(header(&refused, "ratelimit-policy"), "\"quota\";q=3;w=2");
        assert!(header(&refused, "ratelimit").starts_with("\"quota\";r=0;t="));
        assert!(eventually(|| async { get_as(&url, &key).await.status == 200 }).await);
        gw.shutdown().await;
    }
}

/// An upstream that answers `/supporters/stream` with a chunked body that never ends (a chunk
/// every 20 ms) and anything else at once.
async fn streaming_upstream() -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") {
                        if head.starts_with(b"GET /supporters/stream") {
                            let _ = conn
                                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                                .await;
                            while conn.write_all(b"5\r\nchunk\r\n").await.is_ok() {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            return;
                        }
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        head.clear();
                    }
                }
            });
        }
    });
    (url, task)
}

both_transports! {
    async fn a_place_in_flight_is_given_back_when_the_client_goes_away() {
        let (upstream, _task) = streaming_upstream().await;
        let key = TestKey::new("concurrentuser");
        // A long upstream timeout: what frees the place must be the client leaving, not a timeout.
        let toml = limited_config(
            &upstream,
            "max_concurrent = 1",
            &active("concurrent@example.org", &key),
            "",
        )
        .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"60s\"");
        let gw = TestGateway::start(&toml).await;

        let mut streaming = TcpStream::connect(gw.addr).await.unwrap();
        streaming
            .write_all(get_with_key("/supporters/stream", &key).as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 256];
        let n = streaming.read(&mut first).await.unwrap();
        assert!(
            first[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&first[..n])
        );

        let refused = get_as(&gw.url("/supporters/other"), &key).await;
        assert_eq!(refused.status, 429);
        assert_eq!(refused.error_code(), "too_many_concurrent");
        assert_eq!(header(&refused, "retry-after"), "1");

        drop(streaming);
        assert!(
            eventually(|| async { get_as(&gw.url("/supporters/other"), &key).await.status == 200 })
                .await,
            "the place of the request whose client left is given back"
        );
        gw.shutdown().await;
    }
}

#[tokio::test]
async fn a_reload_keeps_unchanged_counters_and_applies_a_changed_limit_at_once() {
    let up = echo_upstream().await;
    let key = TestKey::new("reloaduser");
    let other = TestKey::new("reloadother");
    let limit =
        |burst: u32| format!(r#"rate_limit = {{ requests = 1, per = "1h", burst = {burst} }}"#);
    let admin_config =
        |burst: u32, users: &str| with_admin(&limited_config(&up.url(), &limit(burst), users, ""));
    let gw = TestGateway::start(&admin_config(2, &active("reload@example.org", &key))).await;
    let admin = gw.gateway().admin_addr().unwrap();
    let url = gw.url("/supporters/r");
    assert_eq!(
        statuses(std::slice::from_ref(&url), &key, 5).await,
        (3, 2, vec![])
    );

    // Another user added: this user's counter is kept, still spent.
    gw.replace_config(&admin_config(
        2,
        &(active("reload@example.org", &key) + &active("other@example.org", &other)),
    ));
    assert!(eventually(|| async { get_as(&url, &other).await.status == 200 }).await);
    assert_eq!(get_as(&url, &key).await.status, 429);

    // A larger burst: the very next request has it.
    gw.replace_config(&admin_config(
        5,
        &(active("reload@example.org", &key) + &active("other@example.org", &other)),
    ));
    assert!(eventually(|| async { get_as(&url, &key).await.status == 200 }).await);
    let status = common::status(admin).await;
    let users = status["rate_limits"]["users"].as_array().unwrap().clone();
    let entry = users
        .iter()
        .find(|u| u["user"] == "reload@example.org")
        .expect("listed in /status");
    assert_eq!(entry["rate_limit"]["burst"], 5);
    assert!(entry["refused"]["rate_limited"].as_u64().unwrap() >= 3);

    // The user deleted: its state goes with it. The limiter follows the snapshot just after
    // it is swapped in (the reload loop's callback), so its series are waited for too.
    gw.replace_config(&admin_config(5, &active("other@example.org", &other)));
    let series_gone = || async {
        let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
        !String::from_utf8_lossy(&metrics.body)
            .contains("apiward_limit_refusals_total{user=\"reload@example.org\"")
    };
    assert!(
        eventually(|| async {
            common::status(admin).await["rate_limits"]["limited_users"] == 1
                && get_as(&url, &key).await.status == 401
                && series_gone().await
        })
        .await
    );
    gw.shutdown().await;
}

/// Three gateways on one Redis, each with the same file.
async fn three_gateways(toml: &str) -> Vec<TestGateway> {
    let mut gateways = Vec::new();
    for _ in 0..3 {
        gateways.push(TestGateway::start(toml).await);
    }
    gateways
}

#[tokio::test]
async fn three_gateways_sharing_redis_enforce_one_budget() {
    let redis = RedisServer::start().await;
    let up = echo_upstream().await;
    let rated = TestKey::new("sharedrate");
    let quota = TestKey::new("sharedquota");
    let users = active("rated@example.org", &rated)
        + &user(
            "quota@example.org",
            "active",
            "quota",
            "127.0.0.1",
            &[&quota],
        );
    let toml = with_admin(&limited_config(
        &up.url(),
        r#"rate_limit = { requests = 1, per = "1h", burst = 5 }

[groups.quota]
allow = [{ path = "/supporters/**", verbs = ["view"] }]
quota = { requests = 9, per = "1h" }"#,
        &users,
        &format!("store = \"{}\"\non_store_error = \"deny\"", redis.url()),
    ));
    let gateways = three_gateways(&toml).await;
    let urls: Vec<String> = gateways.iter().map(|g| g.url("/supporters/s")).collect();
    // Round robin over the three: the budget is the user's, not each gateway's.
    assert_eq!(statuses(&urls, &rated, 30).await, (6, 24, vec![]));
    assert_eq!(statuses(&urls, &quota, 30).await, (9, 21, vec![]));
    let admin = gateways[0].gateway().admin_addr().unwrap();
    let status = common::status(admin).await;
    assert_eq!(status["rate_limits"]["store"], redis.url());
    assert_eq!(status["rate_limits"]["store_up"], true);
    let metrics = String::from_utf8_lossy(&get(&format!("http://{admin}/metrics"), &[]).await.body)
        .into_owned();
    assert!(metrics.contains("apiward_limit_store_up 1"), "{metrics}");
    assert!(metrics.contains("apiward_limit_store_errors_total 0"));
    for g in gateways {
        g.shutdown().await;
    }
}

#[tokio::test]
async fn redis_killed_and_restarted_with_on_store_error_allow() {
    let mut redis = RedisServer::start().await;
    let up = echo_upstream().await;
    let key = TestKey::new("allowuser");
    let toml = with_admin(&limited_config(
        &up.url(),
        r#"rate_limit = { requests = 1, per = "1h", burst = 2 }"#,
        &active("allow@example.org", &key),
        &format!("store = \"{}\"\non_store_error = \"allow\"", redis.url()),
    ));
    let gw = TestGateway::start(&toml).await;
    let admin = gw.gateway().admin_addr().unwrap();
    let url = gw.url("/supporters/a");
    assert_eq!(
        statuses(std::slice::from_ref(&url), &key, 2).await,
        (2, 0, vec![])
    );

    redis.kill().await;
    // Served on: this gateway enforces the limit on its own (a fresh local budget of 3).
    assert_eq!(
        statuses(std::slice::from_ref(&url), &key, 5).await,
        (3, 2, vec![])
    );
    let status = common::status(admin).await;
    assert_eq!(status["rate_limits"]["store_up"], false);
    assert!(status["rate_limits"]["store_errors"].as_u64().unwrap() >= 1);

    redis.restart().await;
    // Reconnected by itself: the (empty) shared budget is used again.
    assert!(
        eventually(|| async {
            get_as(&url, &key).await.status == 200
                && common::status(admin).await["rate_limits"]["store_up"] == true
        })
        .await,
        "the gateway uses Redis again after it restarts"
    );
    gw.shutdown().await;
}

#[tokio::test]
async fn redis_killed_and_restarted_with_on_store_error_deny() {
    let mut redis = RedisServer::start().await;
    let up = echo_upstream().await;
    let key = TestKey::new("denyuser");
    let free = TestKey::new("denyfree");
    let users = active("deny@example.org", &key)
        + &user(
            "free@example.org",
            "active",
            "unlimited",
            "127.0.0.1",
            &[&free],
        );
    let toml = limited_config(
        &up.url(),
        r#"rate_limit = { requests = 1, per = "1h", burst = 2 }

[groups.unlimited]
allow = [{ path = "/supporters/**", verbs = ["view"] }]"#,
        &users,
        &format!("store = \"{}\"\non_store_error = \"deny\"", redis.url()),
    );
    let gw = TestGateway::start(&toml).await;
    let url = gw.url("/supporters/d");
    assert_eq!(get_as(&url, &key).await.status, 200);

    redis.kill().await;
    let refused = get_as(&url, &key).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.error_code(), "limit_store_unavailable");
    assert_eq!(header(&refused, "retry-after"), "1");
    // A user without limits never waits for the store.
    assert_eq!(get_as(&url, &free).await.status, 200);

    redis.restart().await;
    assert!(
        eventually(|| async { get_as(&url, &key).await.status == 200 }).await,
        "limited users are served again once Redis answers"
    );
    gw.shutdown().await;
}

both_transports! {
    async fn many_invalid_credentials_block_an_address_but_never_a_user_that_registered_it() {
        let up = echo_upstream().await;
        let registered = TestKey::new("registereduser");
        let anywhere = TestKey::new("anywhereuser");
        let users = active("registered@example.org", &registered)
            + &user(
                "anywhere@example.org",
                "active",
                "manage-supporters",
                "*",
                &[&anywhere],
            );
        let gw = TestGateway::start(&with_admin(&config(&up.url(), &users))).await;
        let url = gw.url("/supporters/f");
        let guess = TestKey::new("guessedwrong");
        let mut invalid = 0;
        let blocked = loop {
            let reply = get_as(&url, &guess).await;
            if reply.status == 429 {
                break reply;
            }
            assert_eq!(reply.status, 401);
            invalid += 1;
            assert!(invalid <= 20, "blocked after 20 invalid credentials");
        };
        assert_eq!(invalid, 20);
        assert_eq!(blocked.error_code(), "too_many_failed_attempts");
        let retry: u64 = header(&blocked, "retry-after").parse().unwrap();
        assert!((1..=3).contains(&retry), "{retry}");
        // A valid key of a user that registered 127.0.0.1 still works from there...
        assert_eq!(get_as(&url, &registered).await.status, 200);
        // ...one valid anywhere ("*" names no address) waits like the guesser.
        assert_eq!(get_as(&url, &anywhere).await.status, 429);
        let admin = gw.gateway().admin_addr().unwrap();
        let status = common::status(admin).await;
        assert!(
            status["rate_limits"]["failed_auth_refused"]
                .as_u64()
                .unwrap()
                >= 2
        );
        gw.shutdown().await;
    }
}

both_transports! {
    async fn the_gateways_ratelimit_fields_replace_an_upstreams() {
        let up = upstream_with(|_req| async {
            let mut response =
                http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
            response.headers_mut().insert(
                "ratelimit",
                http::HeaderValue::from_static("\"upstream\";r=999;t=1"),
            );
            response
        })
        .await;
        let key = TestKey::new("replaceduser");
        let gw = TestGateway::start(&limited_config(
            &up.url(),
            r#"rate_limit = { requests = 1, per = "1h", burst = 9 }"#,
            &active("replaced@example.org", &key),
            "",
        ))
        .await;
        // The fast path (GET without a body) and hyper's path (a POST with one).
        let fast = get_as(&gw.url("/supporters/1"), &key).await;
        let hyper = send(
            "POST",
            &gw.url("/supporters/2"),
            &[("x-api-key", key.key.as_str())],
            "body",
        )
        .await;
        for reply in [fast, hyper] {
            assert_eq!(reply.status, 200);
            let values: Vec<_> = reply.headers.get_all("ratelimit").iter().collect();
            assert_eq!(values.len(), 1, "{values:?}");
            assert!(values[0].to_str().unwrap().starts_with("\"user\";r="));
        }
        gw.shutdown().await;
    }
}

both_transports! {
    /// `[rate_limits] forward_remaining = true`: the upstream learns what is left of a limited
    /// user's allowance, and nothing else about limits; a client's own
    /// `X-Apiward-RateLimit-Remaining` never reaches it.
    async fn forward_remaining_tells_the_upstream_what_is_left_and_a_clients_own_is_dropped() {
        let up = echo_upstream().await;
        let key = TestKey::new("remaininguser");
        let forwarding = TestGateway::start(&limited_config(
            &up.url(),
            r#"rate_limit = { requests = 1, per = "1h", burst = 4 }"#,
            &active("remaining@example.org", &key),
            "forward_remaining = true",
        ))
        .await;
        let forged = [
            ("x-api-key", key.key.as_str()),
            ("x-apiward-ratelimit-remaining", "1000000"),
        ];
        // Burst 4 on top of the one request of the period: 5 pass; what is left falls each time.
        let mut seen = Vec::new();
        for _ in 0..5 {
            let reply = get(&forwarding.url("/supporters/1"), &forged).await;
            assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
            let values = reply
                .upstream_header("x-apiward-ratelimit-remaining")
                .expect("the upstream got X-Apiward-RateLimit-Remaining");
            assert_eq!(values.len(), 1, "the client's own was forwarded too: {values:?}");
            assert_eq!(
                values[0],
                header(&reply, "ratelimit")
                    .split("r=")
                    .nth(1)
                    .and_then(|rest| rest.split(';').next())
                    .expect("r= in the client's RateLimit field"),
                "the upstream and the client are told the same"
            );
            assert!(reply.upstream_header("ratelimit").is_none());
            assert!(reply.upstream_header("ratelimit-policy").is_none());
            seen.push(values[0].parse::<u64>().expect("a number"));
        }
        assert_eq!(seen, [4, 3, 2, 1, 0]);
        forwarding.shutdown().await;

        // Off (the default): nothing about limits reaches the upstream, a forged one included.
        let quiet = TestGateway::start(&limited_config(
            &up.url(),
            r#"rate_limit = { requests = 1, per = "1h", burst = 4 }"#,
            &active("remaining@example.org", &key),
            "",
        ))
        .await;
        let reply = get(&quiet.url("/supporters/1"), &forged).await;
        assert_eq!(reply.status, 200);
        assert!(reply.upstream_header("x-apiward-ratelimit-remaining").is_none());
        quiet.shutdown().await;
    }
}
