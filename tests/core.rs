//! The core contract: every refusal of the table, what is forwarded, and how.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;

const UNREGISTERED: &str =
    "Authentication call is being made from an unregistered source address for this API key";

/// A gateway in front of a real upstream with the usual set of users.
struct World {
    gw: TestGateway,
    _upstream: Upstream,
    active: TestKey,
    pending: TestKey,
    inactive: TestKey,
    expired: TestKey,
    elsewhere: TestKey,
    readonly: TestKey,
}

async fn world() -> World {
    let upstream = echo_upstream().await;
    let active = TestKey::new("active");
    let pending = TestKey::new("pending");
    let inactive = TestKey::new("inactive");
    let expired = TestKey::new("expired");
    let elsewhere = TestKey::new("elsewhere");
    let readonly = TestKey::new("readonly");
    let mut users = String::new();
    users += &user(
        "active@example.org",
        "active",
        "manage-supporters",
        "127.0.0.1~::1",
        &[&active],
    );
    users += &user(
        "pending@example.org",
        "pending",
        "manage-supporters",
        "127.0.0.1",
        &[&pending],
    );
    users += &user(
        "inactive@example.org",
        "inactive",
        "manage-supporters",
        "127.0.0.1",
        &[&inactive],
    );
    users += &format!(
        "[users.\"expired@example.org\"]\nstatus = \"active\"\ngroup = \"manage-supporters\"\nremote_addresses = \"*\"\nkeys = [{{ sha256 = \"{}\", expires = 2020-01-01T00:00:00Z }}]\n\n",
        expired.sha256
    );
    users += &user(
        "elsewhere@example.org",
        "active",
        "manage-supporters",
        "192.0.2.10~198.51.100.0/24",
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
        _upstream: upstream,
        active,
        pending,
        inactive,
        expired,
        elsewhere,
        readonly,
    }
}

fn key(k: &TestKey) -> [(&'static str, &str); 1] {
    [("x-api-key", k.key.as_str())]
}

both_transports! {
    async fn an_active_user_from_a_registered_source_is_forwarded() {
        let w = world().await;
        let r = get(
            &w.gw.url("/supporters/42?fields=a,b&x=%2F"),
            &key(&w.active),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let doc = r.json();
        assert_eq!(doc["method"], "GET");
        assert_eq!(doc["path"], "/supporters/42");
        assert_eq!(doc["query"], "fields=a,b&x=%2F");
        assert_eq!(
            r.upstream_header("x-apiward-user").unwrap(),
            ["active@example.org"]
        );
        assert_eq!(
            r.upstream_header("x-apiward-group").unwrap(),
            ["manage-supporters"]
        );
        assert_eq!(
            r.upstream_header("x-api-key"),
            None,
            "the key must never reach the upstream"
        );
        assert_eq!(r.upstream_header("x-forwarded-for").unwrap(), ["127.0.0.1"]);
        assert_eq!(r.upstream_header("x-forwarded-proto").unwrap(), ["http"]);
        assert_eq!(
            r.upstream_header("x-forwarded-host").unwrap(),
            [w.gw.addr.to_string()]
        );
        // Without `host` on the upstream, the client's `Host` goes on (as HAProxy does).
        assert_eq!(r.upstream_header("host").unwrap(), [w.gw.addr.to_string()]);
    }
}

both_transports! {
    async fn every_refusal_has_its_status_code_and_body() {
        let w = world().await;
        let url = w.gw.url("/supporters/1");

        let r = get(&url, &[]).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (401, "missing_credentials")
        );
        assert!(r.headers.contains_key("www-authenticate"));
        assert_eq!(r.headers["content-type"], "application/json");

        let unknown = TestKey::new("unknown");
        let r = get(&url, &key(&unknown)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (401, "invalid_credentials")
        );

        let r = get(&url, &key(&w.expired)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (401, "key_expired")
        );

        for k in [&w.pending, &w.inactive] {
            let r = get(&url, &key(k)).await;
            assert_eq!(
                (r.status.as_u16(), r.error_code().as_str()),
                (403, "user_inactive")
            );
        }

        let r = get(&url, &key(&w.elsewhere)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (403, "unregistered_source")
        );
        assert_eq!(r.json()["message"], UNREGISTERED);

        let r = get(&w.gw.url("/admin/users"), &key(&w.active)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (404, "no_route")
        );

        let r = send("DELETE", &url, &key(&w.active), "").await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (403, "forbidden")
        );
        let r = get(&w.gw.url("/pages/1/components"), &key(&w.active)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (403, "forbidden")
        );
        let r = get(&url, &key(&w.readonly)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (403, "forbidden")
        );

        for bad in [
            "/supporters/a%2fb",
            "/supporters/a%5Cb",
            "/supporters/a%00b",
            "/supporters/../../etc/passwd",
        ] {
            let r = raw_status(&w.gw, bad, &w.active.key).await;
            assert!(r.starts_with("HTTP/1.1 400"), "{bad}: {r}");
            assert!(r.contains("\"bad_path\""), "{bad}: {r}");
        }
    }
}

/// Sends a path exactly as written (clients would normalise it themselves).
async fn raw_status(gw: &TestGateway, path: &str, key: &str) -> String {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n");
    raw(gw.addr, req.as_bytes()).await
}

both_transports! {
    async fn identity_is_checked_before_anything_about_routes_is_revealed() {
        let w = world().await;
        // No route here, but an unknown key must learn nothing about that.
        let r = get(&w.gw.url("/no/such/api"), &[("x-api-key", "aw_nope")]).await;
        assert_eq!(r.error_code(), "invalid_credentials");
        let r = get(&w.gw.url("/no/such/api"), &[]).await;
        assert_eq!(r.error_code(), "missing_credentials");
        // From the wrong place, the user learns nothing about routes or permissions either.
        let r = send("DELETE", &w.gw.url("/no/such/api"), &key(&w.elsewhere), "").await;
        assert_eq!(r.error_code(), "unregistered_source");
        let r = raw_status(&w.gw, "/a%2fb", &w.elsewhere.key).await;
        assert!(r.contains("unregistered_source"), "{r}");
        let r = send("DELETE", &w.gw.url("/no/such/api"), &key(&w.inactive), "").await;
        assert_eq!(r.error_code(), "user_inactive");
    }
}

both_transports! {
    async fn refused_requests_never_reach_the_upstream() {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        let upstream = upstream_with(move |req| {
            counter.fetch_add(1, Ordering::SeqCst);
            describe(req)
        })
        .await;
        let good = TestKey::new("good");
        let far = TestKey::new("far");
        let users = good_and_far_users(&good, &far);
        let gw = TestGateway::start(&config(&upstream.url(), &users)).await;
        let url = gw.url("/supporters/1");
        get(&url, &[]).await;
        get(&url, &key(&far)).await;
        send("DELETE", &url, &key(&good), "").await;
        raw_status(&gw, "/supporters/%2e%2e/admin", &good.key).await;
        raw(gw.addr, format!("POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", good.key).as_bytes()).await;
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        assert_eq!(get(&url, &key(&good)).await.status, 200);
        assert_eq!(hits.load(Ordering::SeqCst), 1);
    }
}

both_transports! {
    async fn bearer_keys_work_and_authorization_is_stripped() {
        let w = world().await;
        let bearer = format!("Bearer {}", w.active.key);
        let r = get(
            &w.gw.url("/supporters/1"),
            &[("authorization", bearer.as_str())],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.upstream_header("authorization"), None);
        // With the key in its header, the upstream's own Authorization is left alone.
        let r = get(
            &w.gw.url("/supporters/1"),
            &[
                ("x-api-key", w.active.key.as_str()),
                ("authorization", "Token upstream-own"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("authorization").unwrap(),
            ["Token upstream-own"]
        );
        assert_eq!(r.upstream_header("x-api-key"), None);
    }
}

both_transports! {
    async fn spoofed_identity_and_connection_named_headers_are_removed() {
        let w = world().await;
        let r = get(
            &w.gw.url("/supporters/1"),
            &[
                ("x-api-key", w.active.key.as_str()),
                ("x-apiward-user", "admin@example.org"),
                ("x-apiward-group", "admins"),
                (
                    "connection",
                    "keep-alive, X-Forwarded-For, X-Apiward-User, X-Secret-Hop",
                ),
                ("x-secret-hop", "1"),
                ("x-forwarded-for", "203.0.113.99"),
                ("keep-alive", "timeout=5"),
                ("proxy-authorization", "Basic Zm9vOmJhcg=="),
                ("x-ordinary", "kept"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-apiward-user").unwrap(),
            ["active@example.org"]
        );
        assert_eq!(
            r.upstream_header("x-apiward-group").unwrap(),
            ["manage-supporters"]
        );
        assert_eq!(
            r.upstream_header("x-forwarded-for").unwrap(),
            ["127.0.0.1"],
            "an untrusted peer's X-Forwarded-For is replaced"
        );
        assert_eq!(r.upstream_header("x-secret-hop"), None);
        assert_eq!(r.upstream_header("keep-alive"), None);
        assert_eq!(r.upstream_header("proxy-authorization"), None);
        assert_eq!(r.upstream_header("x-ordinary").unwrap(), ["kept"]);
    }
}

both_transports! {
    async fn x_forwarded_for_from_an_untrusted_peer_is_not_believed() {
        let w = world().await;
        // "elsewhere" may only call from 192.0.2.10; claiming it in a header changes nothing.
        let r = get(
            &w.gw.url("/supporters/1"),
            &[
                ("x-api-key", w.elsewhere.key.as_str()),
                ("x-forwarded-for", "192.0.2.10"),
            ],
        )
        .await;
        assert_eq!(r.error_code(), "unregistered_source");
    }
}

both_transports! {
    async fn x_forwarded_for_from_a_trusted_proxy_identifies_the_client() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("behindlb");
        let users = user(
            "lb@example.org",
            "active",
            "manage-supporters",
            "192.0.2.10",
            &[&k],
        );
        let toml = config(&upstream.url(), &users).replace(
            "upstream_timeout = \"2s\"",
            "upstream_timeout = \"2s\"\ntrusted_proxies = [\"127.0.0.0/8\", \"10.0.0.0/8\"]",
        );
        let gw = TestGateway::start(&toml).await;
        let url = gw.url("/supporters/1");
        // The rightmost address that is not a trusted proxy is the client; leftmost entries are client-controlled.
        let r = get(
            &url,
            &[
                ("x-api-key", k.key.as_str()),
                ("x-forwarded-for", "203.0.113.5, 192.0.2.10, 10.1.1.1"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.upstream_header("x-forwarded-for").unwrap(),
            ["203.0.113.5, 192.0.2.10, 10.1.1.1, 127.0.0.1"]
        );
        let r = get(
            &url,
            &[
                ("x-api-key", k.key.as_str()),
                ("x-forwarded-for", "192.0.2.10, 203.0.113.5"),
            ],
        )
        .await;
        assert_eq!(r.error_code(), "unregistered_source");
        // Without the header, the trusted proxy itself is the client.
        let r = get(&url, &key(&k)).await;
        assert_eq!(r.error_code(), "unregistered_source");
    }
}

both_transports! {
    async fn ipv4_clients_of_a_dual_stack_listener_match_ipv4_entries() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("dualstack");
        let users = user(
            "v4@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&k],
        );
        let toml =
            config(&upstream.url(), &users).replace("listen = \"127.0.0.1:0\"", "listen = \"[::]:0\"");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiward.toml");
        std::fs::write(&path, &toml).unwrap();
        let gateway = apiward::Gateway::start(&path, None, apiward::Options::default())
            .await
            .expect("start on [::]:0");
        let port = gateway.local_addr().port();
        assert!(gateway.local_addr().is_ipv6());
        // Over IPv4 the peer is ::ffff:127.0.0.1, which is 127.0.0.1 for the whitelist.
        let r = get(&format!("http://127.0.0.1:{port}/supporters/1"), &key(&k)).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.upstream_header("x-forwarded-for").unwrap(), ["127.0.0.1"]);
        // Over IPv6 loopback the client is ::1, which this user may not call from.
        let r = get(&format!("http://[::1]:{port}/supporters/1"), &key(&k)).await;
        assert_eq!(r.error_code(), "unregistered_source");
        gateway.shutdown().await;
    }
}

both_transports! {
    async fn the_checked_path_is_the_forwarded_path() {
        let w = world().await;
        for (sent, forwarded) in [
            ("/supporters/a/../b", "/supporters/b"),
            ("/supporters//b", "/supporters/b"),
            ("/supporters/./b/", "/supporters/b/"),
            ("/%73upporters/%41b", "/supporters/Ab"),
            ("/pages/%2e%2e/supporters/7", "/supporters/7"),
        ] {
            let r = raw_status(&w.gw, sent, &w.active.key).await;
            assert!(r.starts_with("HTTP/1.1 200"), "{sent}: {r}");
            assert!(
                r.contains(&format!("\"path\":\"{forwarded}\"")),
                "{sent} should be forwarded as {forwarded}: {r}"
            );
        }
        // An encoded climb out of an allowed prefix is resolved first, then checked: here nothing routes to /admin.
        let r = raw_status(&w.gw, "/supporters/%2e%2e/admin", &w.active.key).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        // And the permission is checked on the resolved path: /pages/1/../../supporters/1 is a /supporters path.
        let r = raw_status(
            &w.gw,
            "/supporters/%2e%2e/pages/1/components",
            &w.active.key,
        )
        .await;
        assert!(
            r.starts_with("HTTP/1.1 403") && r.contains("forbidden"),
            "{r}"
        );
    }
}

both_transports! {
    async fn ambiguous_framing_is_refused_and_the_connection_closed() {
        let w = world().await;
        let k = &w.active.key;
        for (name, head) in [
            (
                "cl+te",
                format!(
                    "POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                ),
            ),
            (
                "te+cl",
                format!(
                    "POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"
                ),
            ),
            (
                "two lengths",
                format!(
                    "POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
                ),
            ),
            (
                "gzip, chunked",
                format!(
                    "POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
                ),
            ),
            (
                "gzip",
                format!(
                    "POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\nTransfer-Encoding: gzip\r\n\r\n"
                ),
            ),
            (
                "two te lines",
                format!(
                    "POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                ),
            ),
        ] {
            // A second, valid request is pipelined behind: it must not be answered on this connection.
            let pipelined =
                format!("{head}GET /supporters/2 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\n\r\n");
            let r = raw(w.gw.addr, pipelined.as_bytes()).await;
            assert!(r.starts_with("HTTP/1.1 400"), "{name}: {r}");
            assert_eq!(
                r.matches("HTTP/1.1").count(),
                1,
                "{name}: the connection must close after the 400: {r}"
            );
        }
        // Plain chunked and plain Content-Length bodies are fine.
        let r = raw(w.gw.addr, format!("POST /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {k}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n").as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.contains("\"body_len\":5"),
            "{r}"
        );
    }
}

both_transports! {
    async fn oversized_request_heads_get_431() {
        let w = world().await;
        let big = "a".repeat(40 * 1024);
        let req = format!(
            "GET /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {}\r\nX-Big: {big}\r\n\r\n",
            w.active.key
        );
        let r = raw(w.gw.addr, req.as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{}", &r[..r.len().min(200)]);
    }
}

both_transports! {
    async fn absolute_form_requests_are_routed_by_path_never_to_the_named_host() {
        let w = world().await;
        let k = &w.active.key;
        let r = raw(w.gw.addr, format!("GET http://elsewhere.invalid/supporters/9 HTTP/1.1\r\nHost: elsewhere.invalid\r\nX-Api-Key: {k}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("\"path\":\"/supporters/9\""), "{r}");
        let r = raw(w.gw.addr, format!("GET http://elsewhere.invalid/other HTTP/1.1\r\nHost: elsewhere.invalid\r\nX-Api-Key: {k}\r\nConnection: close\r\n\r\n").as_bytes()).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        let r = raw(w.gw.addr, format!("CONNECT elsewhere.invalid:443 HTTP/1.1\r\nHost: elsewhere.invalid:443\r\nX-Api-Key: {k}\r\n\r\n").as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 400") || r.starts_with("HTTP/1.1 403"),
            "{r}"
        );
    }
}

both_transports! {
    async fn an_unreachable_upstream_is_502_and_a_slow_one_504() {
        // A port bound but not listening: connections to it are refused, and no other test can
        // take it meanwhile (a port bound and released could be reused by a parallel test).
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = reserved.local_addr().unwrap();
        let k = TestKey::new("upstreamerr");
        let users = user(
            "u@example.org",
            "active",
            "manage-supporters",
            "127.0.0.1",
            &[&k],
        );
        let gw = TestGateway::start(&config(&format!("http://{closed}"), &users)).await;
        let r = get(&gw.url("/supporters/1"), &key(&k)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (502, "upstream_unavailable")
        );

        let slow = upstream_with(|_| async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(Full::new(Bytes::from_static(b"late")))
        })
        .await;
        let toml = config(&slow.url(), &users)
            .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"300ms\"");
        let gw = TestGateway::start(&toml).await;
        let r = get(&gw.url("/supporters/1"), &key(&k)).await;
        assert_eq!(
            (r.status.as_u16(), r.error_code().as_str()),
            (504, "upstream_timeout")
        );
    }
}

both_transports! {
    async fn large_bodies_stream_through_in_both_directions() {
        // 24 MiB up: the upstream reports the length and digest of what it received. Sending it
        // counts against upstream_timeout, which a debug build on a busy machine can need.
        let up = echo_upstream().await;
        let k = TestKey::new("bigup");
        let toml = one_user_config(&up.url(), "u@example.org", &k)
            .replace("upstream_timeout = \"2s\"", "upstream_timeout = \"60s\"");
        let gw = TestGateway::start(&toml).await;
        let body = "0123456789abcdef".repeat(24 * 1024 * 1024 / 16);
        let r = send("POST", &gw.url("/supporters/bulk"), &key(&k), &body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body_len"], body.len());
        assert_eq!(
            r.json()["body_sha256"],
            apiward::snapshot::KeyDigest::of(&body).to_hex()
        );

        // 24 MiB down from an upstream that streams it in chunks.
        let big = upstream_with(|_| async {
            Response::new(Full::new(Bytes::from(vec![b'x'; 24 * 1024 * 1024])))
        })
        .await;
        let k = TestKey::new("bigdown");
        let gw = TestGateway::start(&one_user_config(&big.url(), "d@example.org", &k)).await;
        let r = get(&gw.url("/supporters/export"), &key(&k)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 24 * 1024 * 1024);
    }
}

both_transports! {
    async fn request_bodies_are_streamed_not_buffered() {
        use http_body_util::StreamBody;
        use hyper::body::Frame;
        use tokio::sync::{mpsc, oneshot};

        // The upstream signals as soon as the first chunk arrives, before the body is complete.
        let (first_seen_tx, first_seen_rx) = oneshot::channel::<()>();
        let first_seen_tx = Arc::new(std::sync::Mutex::new(Some(first_seen_tx)));
        let upstream = upstream_with(move |req| {
            let signal = Arc::clone(&first_seen_tx);
            async move {
                use http_body_util::BodyExt;
                let mut body = req.into_body();
                let mut total = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Some(d) = frame.data_ref() {
                        total += d.len();
                        if let Some(tx) = signal.lock().unwrap().take() {
                            let _ = tx.send(());
                        }
                    }
                }
                Response::new(Full::new(Bytes::from(total.to_string())))
            }
        })
        .await;
        let k = TestKey::new("streamer");
        let gw = TestGateway::start(&one_user_config(&upstream.url(), "s@example.org", &k)).await;

        let (chunks_tx, chunks_rx) = mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(4);
        let body = StreamBody::new(tokio_stream_from(chunks_rx));
        let request = http::Request::post(gw.url("/supporters/stream"))
            .header("x-api-key", &k.key)
            .body(body)
            .unwrap();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
        let response = tokio::spawn(async move { client.request(request).await });
        chunks_tx
            .send(Ok(Frame::data(Bytes::from_static(b"first chunk"))))
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), first_seen_rx)
            .await
            .expect("the upstream must see the first chunk before the body is complete")
            .unwrap();
        chunks_tx
            .send(Ok(Frame::data(Bytes::from_static(b"second"))))
            .await
            .unwrap();
        drop(chunks_tx);
        let response = response.await.unwrap().unwrap();
        assert_eq!(response.status(), 200);
        use http_body_util::BodyExt;
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "17"
        );
    }
}

/// A stream over an mpsc receiver, without pulling in tokio-stream.
fn tokio_stream_from<T>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_core::Stream<Item = T> {
    struct Rx<T>(tokio::sync::mpsc::Receiver<T>);
    impl<T> futures_core::Stream for Rx<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
    Rx(rx)
}

both_transports! {
    async fn the_builtin_echo_upstream_describes_what_reached_it() {
        let w = world().await;
        let r = send("POST", &w.gw.url("/echo/x?y=1"), &key(&w.active), "hello").await;
        assert_eq!(r.status, 200);
        let doc = r.json();
        assert_eq!(doc["method"], "POST");
        assert_eq!(doc["path"], "/echo/x");
        assert_eq!(doc["query"], "y=1");
        assert_eq!(doc["body_bytes"], 5);
        assert_eq!(doc["headers"]["x-apiward-user"], "active@example.org");
        assert!(doc["headers"].get("x-api-key").is_none());
    }
}
