//! Upstreams with several targets, against three real servers on loopback ports: requests are
//! spread by policy and weight over the healthy targets, a target that dies or hangs is taken
//! out (idempotent requests retried to the others, a POST never), health checks take targets
//! out and bring them back, and a reload that removes a target lets its requests finish.
//! Each runs on both request paths: a GET on the fast path, and on hyper's path (a `Connection`
//! header naming another header sends it there).

mod common;

use common::targets::{
    BOTH, Path, Target, cluster_config, entries, get_via, target_of, target_status, three_targets,
};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_by_weight() {
    let [a, b, c] = three_targets().await;
    let key = TestKey::new("roundrobin");
    for path in BOTH {
        let gw = TestGateway::start(&cluster_config(
            &entries(&[&a, &b, &c], &[1, 2, 1]),
            "",
            "",
            &key,
        ))
        .await;
        let before = [a.hits(), b.hits(), c.hits()];
        for _ in 0..40 {
            let r = get_via(path, &gw.url("/api/x"), &key).await;
            assert_eq!(r.status, 200, "{path:?}");
        }
        let got = [
            a.hits() - before[0],
            b.hits() - before[1],
            c.hits() - before[2],
        ];
        assert_eq!(got, [10, 20, 10], "{path:?}: weights 1, 2, 1");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_outstanding_sends_requests_away_from_busy_targets() {
    let [a, b, c] = three_targets().await;
    let key = TestKey::new("leastoutstanding");
    for path in BOTH {
        let gw = TestGateway::start(&cluster_config(
            &entries(&[&a, &b, &c], &[]),
            "balance = \"least_outstanding\"",
            "",
            &key,
        ))
        .await;
        // Two slow requests occupy two targets for two seconds.
        let slow: Vec<_> = (0..2)
            .map(|_| {
                let url = gw.url("/api/slow");
                let key = key.key.clone();
                tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await })
            })
            .collect();
        let busy = [&a, &b, &c];
        assert!(
            eventually(|| async { busy.iter().map(|t| t.hits()).sum::<usize>() >= 2 }).await,
            "the slow requests arrived"
        );
        let idle: Vec<&&Target> = busy.iter().filter(|t| t.hits() == 0).collect();
        assert_eq!(
            idle.len(),
            1,
            "{path:?}: each slow request went to its own target"
        );
        let free = idle[0];
        for _ in 0..6 {
            let r = get_via(path, &gw.url("/api/x"), &key).await;
            assert_eq!(
                target_of(&r),
                free.name,
                "{path:?}: the target with nothing in flight"
            );
        }
        for s in slow {
            assert_eq!(s.await.unwrap().status, 200);
        }
        gw.shutdown().await;
        a.hits.store(0, std::sync::atomic::Ordering::Relaxed);
        b.hits.store(0, std::sync::atomic::Ordering::Relaxed);
        c.hits.store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_user_keeps_each_user_on_one_target() {
    let [a, b, c] = three_targets().await;
    let keys: Vec<TestKey> = (0..4)
        .map(|i| TestKey::new(&format!("sticky{i}")))
        .collect();
    let users: String = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            user(
                &format!("u{i}@example.org"),
                "active",
                "users",
                "127.0.0.1",
                &[k],
            )
        })
        .collect();
    let toml = cluster_config(
        &entries(&[&a, &b, &c], &[]),
        "balance = \"hash_user\"",
        "",
        &keys[0],
    )
    .replace(
        &user("u@example.org", "active", "users", "127.0.0.1", &[&keys[0]]),
        &users,
    );
    let gw = TestGateway::start(&toml).await;
    let mut seen = std::collections::BTreeSet::new();
    for key in &keys {
        let mut targets = std::collections::BTreeSet::new();
        for i in 0..8 {
            let path = BOTH[i % 2];
            let r = get_via(path, &gw.url("/api/x"), key).await;
            assert_eq!(r.status, 200);
            targets.insert(target_of(&r));
        }
        assert_eq!(targets.len(), 1, "one user, one target: {targets:?}");
        seen.extend(targets);
    }
    // Four users over three targets: not all on one (the hash spreads them).
    assert!(seen.len() >= 2, "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_under_load_costs_no_get_and_a_post_is_not_retried() {
    let [a, b, c] = three_targets().await;
    let key = TestKey::new("killed");
    let gw = TestGateway::start(&cluster_config(
        &entries(&[&a, &b, &c], &[]),
        "retries = 2",
        "",
        &key,
    ))
    .await;
    let admin = gw.gateway().admin_addr().unwrap();
    let load: Vec<_> = (0..4)
        .map(|i| {
            let url = gw.url("/api/x");
            let key = key.key.clone();
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for n in 0..60 {
                    let hop = if (i + n) % 2 == 0 {
                        "keep-alive"
                    } else {
                        "x-hop"
                    };
                    let r = get(&url, &[("x-api-key", &key), ("connection", hop)]).await;
                    statuses.push(r.status.as_u16());
                }
                statuses
            })
        })
        .collect();
    assert!(eventually(|| async { b.hits() >= 10 }).await);
    b.kill().await;
    for task in load {
        let statuses = task.await.unwrap();
        assert!(
            statuses.iter().all(|&s| s == 200),
            "every GET answered 200 while b died: {statuses:?}"
        );
    }
    // b failed often enough to be ejected.
    let entry = target_status(admin, &b.url()).await;
    assert_eq!(entry["healthy"], false, "{entry}");
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("apiward_upstream_retries_total{upstream=\"api\"}"),
        "{text}"
    );
    assert!(text.contains("to=\"ejected\""), "{text}");
    gw.shutdown().await;

    // Without ejection, round robin keeps choosing the dead target: GETs are retried, POSTs
    // are answered 502 and not sent anywhere else.
    let gw = TestGateway::start(&cluster_config(
        &entries(&[&a, &b], &[]),
        "retries = 1\neject = { consecutive_failures = 0 }",
        "",
        &key,
    ))
    .await;
    let before = a.hits();
    let mut posts = Vec::new();
    for _ in 0..4 {
        posts.push(
            send(
                "POST",
                &gw.url("/api/x"),
                &[("x-api-key", &key.key)],
                "data",
            )
            .await
            .status
            .as_u16(),
        );
    }
    posts.sort_unstable();
    assert_eq!(
        posts,
        [200, 200, 502, 502],
        "half the POSTs met the dead target"
    );
    assert_eq!(a.hits() - before, 2, "no POST was sent again to a");
    for path in BOTH {
        for _ in 0..4 {
            assert_eq!(
                get_via(path, &gw.url("/api/x"), &key).await.status,
                200,
                "{path:?}"
            );
        }
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_target_times_out_then_is_ejected() {
    let [a, b, _c] = three_targets().await;
    a.behaviour
        .hang
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let key = TestKey::new("hung");
    for path in BOTH {
        let gw = TestGateway::start(&cluster_config(
            &entries(&[&a, &b], &[]),
            "retries = 1\neject = { consecutive_failures = 2, for = \"1m\" }",
            "upstream_timeout = \"300ms\"",
            &key,
        ))
        .await;
        let admin = gw.gateway().admin_addr().unwrap();
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(get_via(path, &gw.url("/api/x"), &key).await.status.as_u16());
        }
        assert_eq!(
            statuses,
            [504, 200, 504, 200, 200, 200, 200, 200],
            "{path:?}: the route's upstream_timeout, then a is out"
        );
        let entry = target_status(admin, &a.url()).await;
        assert_eq!(entry["healthy"], false, "{entry}");
        assert!(
            entry["ejected_for_seconds"].as_f64().unwrap() > 30.0,
            "{entry}"
        );
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_take_a_target_out_and_bring_it_back() {
    let [a, b, _c] = three_targets().await;
    let key = TestKey::new("health");
    let gw = TestGateway::start(&cluster_config(
        &entries(&[&a, &b], &[]),
        "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", unhealthy_after = 2, healthy_after = 2 }",
        "",
        &key,
    ))
    .await;
    let admin = gw.gateway().admin_addr().unwrap();
    assert!(
        eventually(|| async { a.checks.load(std::sync::atomic::Ordering::Relaxed) >= 2 }).await
    );
    assert_eq!(
        target_status(admin, &a.url()).await["health_check"],
        "passing"
    );

    a.behaviour
        .unhealthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(|| async { target_status(admin, &a.url()).await["healthy"] == false }).await,
        "a failing /healthz takes a out"
    );
    let before = a.hits();
    for path in BOTH {
        for _ in 0..4 {
            let r = get_via(path, &gw.url("/api/x"), &key).await;
            assert_eq!(target_of(&r), "b", "{path:?}");
        }
    }
    assert_eq!(a.hits(), before);

    a.behaviour
        .unhealthy
        .store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(|| async { target_status(admin, &a.url()).await["healthy"] == true }).await,
        "passing checks bring a back"
    );

    // A killed target fails its checks; restarted, it is back.
    b.kill().await;
    assert!(
        eventually(|| async { target_status(admin, &b.url()).await["healthy"] == false }).await
    );
    for _ in 0..4 {
        assert_eq!(
            target_of(&get_via(Path::Fast, &gw.url("/api/x"), &key).await),
            "a"
        );
    }
    b.restart().await;
    assert!(eventually(|| async { target_status(admin, &b.url()).await["healthy"] == true }).await);

    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    for to in ["unhealthy", "healthy"] {
        assert!(text.contains(&format!("to=\"{to}\"")), "{text}");
    }
    assert!(text.contains("apiward_upstream_target_up"), "{text}");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_healthy_target_means_the_least_recently_failed_is_tried_then_503() {
    let [a, b, _c] = three_targets().await;
    let key = TestKey::new("nohealthy");
    let gw = TestGateway::start(&cluster_config(
        &entries(&[&a, &b], &[]),
        "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", unhealthy_after = 1, healthy_after = 5 }",
        "",
        &key,
    ))
    .await;
    let admin = gw.gateway().admin_addr().unwrap();
    a.behaviour
        .unhealthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    b.behaviour
        .unhealthy
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(
        eventually(|| async {
            let s = status(admin).await;
            s["upstream_targets"]
                .as_array()
                .unwrap()
                .iter()
                .all(|t| t["healthy"] == false)
        })
        .await
    );
    // Both fail their checks but still answer requests: one is tried anyway.
    let r = get_via(Path::Fast, &gw.url("/api/x"), &key).await;
    assert_eq!(r.status, 200);
    b.kill().await;
    a.kill().await;
    for path in BOTH {
        let r = get_via(path, &gw.url("/api/x"), &key).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code()),
            (503, "no_healthy_upstream".into()),
            "{path:?}"
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_target_lets_its_slow_request_finish() {
    let [a, b, _c] = three_targets().await;
    let key = TestKey::new("drain");
    let both = cluster_config(&entries(&[&a, &b], &[]), "", "", &key);
    let gw = TestGateway::start(&both).await;
    let admin = gw.gateway().admin_addr().unwrap();
    // Round robin starts with the first target: a gets the slow request, b the next.
    let slow = {
        let url = gw.url("/api/slower");
        let key = key.key.clone();
        tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await })
    };
    assert!(eventually(|| async { a.hits() == 1 }).await);
    assert_eq!(
        target_of(&get_via(Path::Fast, &gw.url("/api/x"), &key).await),
        "b"
    );
    let b_connections = b.connections.load(std::sync::atomic::Ordering::Relaxed);

    gw.replace_config(&cluster_config(&entries(&[&b], &[]), "", "", &key));
    assert!(
        eventually(|| async {
            status(admin).await["upstream_targets"]
                .as_array()
                .unwrap()
                .len()
                == 1
        })
        .await,
        "the reload applied"
    );
    assert!(
        !slow.is_finished(),
        "the slow request is still in flight on a"
    );
    for _ in 0..5 {
        assert_eq!(
            target_of(&get_via(Path::Fast, &gw.url("/api/x"), &key).await),
            "b"
        );
    }
    assert_eq!(a.hits(), 1, "nothing new went to the removed target");
    assert_eq!(
        b.connections.load(std::sync::atomic::Ordering::Relaxed),
        b_connections,
        "b, unchanged by the reload, kept its pooled connection"
    );
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status.as_u16(), target_of(&slow)),
        (200, "a".into()),
        "the request in flight finished"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_prefix_forwards_the_path_the_permission_check_saw() {
    let up = echo_upstream().await;
    let key = TestKey::new("strip");
    let toml = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[upstreams.api]
targets = [{{ url = "{}/base" }}]
host = "supporters.internal"

[[routes]]
prefix = "/supporters/"
upstream = "api"
strip_prefix = true

[[routes]]
prefix = "/admin/"
upstream = "api"

[groups.users]
allow = [{{ path = "/supporters/**", verbs = ["view", "create"] }}]

{}"#,
        up.url(),
        user("u@example.org", "active", "users", "127.0.0.1", &[&key])
    );
    let gw = TestGateway::start(&toml).await;
    for path in BOTH {
        let r = get_via(path, &gw.url("/supporters/42?x=1"), &key).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], "/base/42", "{path:?}");
        assert_eq!(r.json()["query"], "x=1");
        assert_eq!(r.upstream_header("host").unwrap(), ["supporters.internal"]);
        // Normalised first, then stripped: what was checked is what goes.
        let r = get_via(path, &gw.url("/supporters/a/../42"), &key).await;
        assert_eq!(r.json()["path"], "/base/42", "{path:?}");
        // A path that normalises out of the route is checked where it lands.
        let r = get_via(path, &gw.url("/supporters/../admin/x"), &key).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code()),
            (403, "forbidden".into()),
            "{path:?}"
        );
    }
    let r = send(
        "POST",
        &gw.url("/supporters/7"),
        &[("x-api-key", &key.key)],
        "body",
    )
    .await;
    assert_eq!(r.json()["path"], "/base/7");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_url_is_one_target_and_keeps_its_answers() {
    // A dead single `url` upstream still answers 502 upstream_unavailable, however often.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let key = TestKey::new("oneurl");
    let gw = TestGateway::start(&one_user_config(&url, "one@example.org", &key)).await;
    for _ in 0..8 {
        let r = get(&gw.url("/supporters/1"), &[("x-api-key", &key.key)]).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code()),
            (502, "upstream_unavailable".into())
        );
    }
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_host_goes_upstream_unless_the_upstream_sets_one() {
    let [a, _b, _c] = three_targets().await;
    let key = TestKey::new("hostpass");
    let check = "health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", unhealthy_after = 2, healthy_after = 2 }";
    // (upstream lines, the Host a request arrives with, the Host of a health check)
    for (options, sent, checked) in [
        (check.to_string(), "api.example.com", a.addr.to_string()),
        (
            format!("{check}\nhost = \"supporters.internal\""),
            "supporters.internal",
            "supporters.internal".to_string(),
        ),
    ] {
        let gw =
            TestGateway::start(&cluster_config(&entries(&[&a], &[]), &options, "", &key)).await;
        for path in BOTH {
            let mut headers = vec![("x-api-key", key.key.as_str()), ("host", "api.example.com")];
            if matches!(path, Path::Hyper) {
                headers.extend([("connection", "x-hop"), ("x-hop", "1")]);
            }
            let r = get(&gw.url("/api/x"), &headers).await;
            assert_eq!(r.status, 200, "{path:?}");
            assert_eq!(
                r.headers.get("x-seen-host").map(|v| v.to_str().unwrap()),
                Some(sent),
                "{path:?} with {options:?}"
            );
        }
        a.behaviour
            .check_host
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        assert!(
            eventually(|| async {
                *a.behaviour
                    .check_host
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    == checked
            })
            .await,
            "health checks send {checked} with {options:?}"
        );
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_target_loses_its_idle_connections_at_once_and_its_request_in_flight_finishes() {
    use std::sync::atomic::Ordering;
    let [a, b, _c] = three_targets().await;
    let key = TestKey::new("drainpools");
    // Idle connections would be kept a minute: what closes them here is the drain.
    let config = |targets: &[&Target]| {
        with_server_setting(
            &cluster_config(&entries(targets, &[]), "", "", &key),
            "upstream_keepalive_timeout = \"60s\"",
        )
    };
    let gw = TestGateway::start(&config(&[&a, &b])).await;
    let admin = gw.gateway().admin_addr().unwrap();
    // Both pools (the engine's and hyper's) get idle connections to both targets.
    for path in BOTH {
        for _ in 0..4 {
            assert_eq!(get_via(path, &gw.url("/api/x"), &key).await.status, 200);
        }
    }
    assert!(
        a.behaviour.open.load(Ordering::SeqCst) >= 2,
        "a has an idle connection from each pool"
    );
    let b_open = b.behaviour.open.load(Ordering::SeqCst);
    // Two slow requests, one on each path: round robin gives one to each target.
    let slow: Vec<_> = BOTH
        .into_iter()
        .map(|path| {
            let url = gw.url("/api/slower");
            let key = TestKey {
                key: key.key.clone(),
                sha256: key.sha256.clone(),
            };
            tokio::spawn(async move { get_via(path, &url, &key).await })
        })
        .collect();
    assert!(eventually(|| async { a.hits() == 5 && b.hits() == 5 }).await);

    gw.replace_config(&config(&[&b]));
    assert!(
        eventually(|| async {
            status(admin).await["upstream_targets"]
                .as_array()
                .unwrap()
                .len()
                == 1
        })
        .await,
        "the reload applied"
    );
    assert!(
        eventually(|| async { a.behaviour.open.load(Ordering::SeqCst) == 1 }).await,
        "a's idle connections are closed; only its request in flight keeps one ({} open)",
        a.behaviour.open.load(Ordering::SeqCst)
    );
    let mut served_by = Vec::new();
    for s in slow {
        let r = s.await.unwrap();
        assert_eq!(r.status, 200, "the requests in flight finished");
        served_by.push(target_of(&r));
    }
    served_by.sort();
    assert_eq!(served_by, ["a", "b"]);
    assert!(
        eventually(|| async { a.behaviour.open.load(Ordering::SeqCst) == 0 }).await,
        "the drained request's connection is closed, not kept for a target that is gone"
    );
    assert!(
        b.behaviour.open.load(Ordering::SeqCst) >= b_open,
        "b, unchanged by the reload, keeps its pooled connections"
    );
    assert_eq!(
        get_via(Path::Fast, &gw.url("/api/x"), &key).await.status,
        200
    );
    gw.shutdown().await;
}
