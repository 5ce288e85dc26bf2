//! The fast path (bodiless GET/HEAD/DELETE/OPTIONS, src/proxy/fast.rs) and hyper's path
//! (everything else) must be indistinguishable from outside: same headers upstream, same
//! answers, and a connection moves from one to the other mid-stream without a seam.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The upstream's view of a request, without what legitimately differs between two requests.
fn comparable(reply: &Reply) -> serde_json::Map<String, serde_json::Value> {
    let mut headers = reply.json()["headers"].as_object().unwrap().clone();
    for varying in ["x-request-id", "content-length", "transfer-encoding"] {
        headers.remove(varying);
    }
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_paths_forward_the_same_headers_and_answer_alike() {
    let up = echo_upstream().await;
    let k = TestKey::new("bothpaths");
    let gw = TestGateway::start(&with_admin(&one_user_config(
        &up.url(),
        "both@example.org",
        &k,
    )))
    .await;
    let admin = gw.gateway().admin_addr().unwrap();
    let headers = [
        ("x-api-key", k.key.as_str()),
        ("X-Apiward-User", "admin@example.org"),
        ("x-apiward-group", "admins"),
        ("x-forwarded-for", "203.0.113.99"),
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "spoofed.example"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic Zm9vOmJhcg=="),
        ("te", "trailers, deflate;q=0.5"),
        // Another scheme than the gateway's own (Bearer, Basic) is the upstream's credential.
        ("authorization", "Token for-the-upstream"),
        ("x-request-id", "client-chosen"),
        ("X-Ordinary", "kept"),
        ("x-repeated", "one"),
        ("x-repeated", "two"),
    ];
    let before = status(admin).await;
    let fast = send("GET", &gw.url("/supporters/1?q=1"), &headers, "").await;
    let after_get = status(admin).await;
    let slow = send("POST", &gw.url("/supporters/1?q=1"), &headers, "body").await;
    let after_post = status(admin).await;
    assert_eq!((fast.status.as_u16(), slow.status.as_u16()), (200, 200));
    assert_eq!(
        after_get["fast_path_requests"].as_u64().unwrap(),
        before["fast_path_requests"].as_u64().unwrap() + 1,
        "the GET went through the fast path"
    );
    assert_eq!(
        after_post["connections_handed_to_hyper"].as_u64().unwrap(),
        before["connections_handed_to_hyper"].as_u64().unwrap() + 1,
        "the POST went through hyper"
    );
    assert_eq!(comparable(&fast), comparable(&slow));
    let seen = comparable(&fast);
    assert_eq!(
        seen["x-apiward-user"],
        serde_json::json!(["both@example.org"])
    );
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        seen["x-forwarded-host"],
        serde_json::json!([gw.addr.to_string()])
    );
    assert_eq!(
        seen["authorization"],
        serde_json::json!(["Token for-the-upstream"])
    );
    assert_eq!(seen["x-repeated"], serde_json::json!(["one", "two"]));
    assert_eq!(seen["x-ordinary"], serde_json::json!(["kept"]));
    // TE crosses only as `TE: trailers` (gRPC needs it); the other codings are this hop's.
    assert_eq!(seen["te"], serde_json::json!(["trailers"]));
    for gone in [
        "x-api-key",
        "keep-alive",
        "proxy-authorization",
        "connection",
    ] {
        assert!(!seen.contains_key(gone), "{gone} reached the upstream");
    }
    for reply in [&fast, &slow] {
        let id = reply.headers["x-request-id"].to_str().unwrap();
        assert_ne!(id, "client-chosen", "an untrusted client's id is replaced");
        assert_eq!(reply.upstream_header("x-request-id").unwrap(), [id]);
        assert!(reply.headers.contains_key("date"));
    }
    assert_eq!(fast.json()["query"], slow.json()["query"]);

    // Refusals read the same too.
    let fast = send(
        "GET",
        &gw.url("/supporters/1"),
        &[("x-api-key", "aw_wrong")],
        "",
    )
    .await;
    let slow = send(
        "POST",
        &gw.url("/supporters/1"),
        &[("x-api-key", "aw_wrong")],
        "b",
    )
    .await;
    assert_eq!((fast.status.as_u16(), slow.status.as_u16()), (401, 401));
    assert_eq!(fast.body, slow.body);
    for name in ["content-type", "www-authenticate", "content-length"] {
        assert_eq!(fast.headers.get(name), slow.headers.get(name), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_to_hyper_mid_stream_without_a_seam() {
    let up = echo_upstream().await;
    let k = TestKey::new("handover");
    let gw = TestGateway::start(&with_admin(&one_user_config(
        &up.url(),
        "handover@example.org",
        &k,
    )))
    .await;
    let admin = gw.gateway().admin_addr().unwrap();
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    let get = get_with_key("/supporters/a", &k);
    let post = format!(
        "POST /supporters/b HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\ncontent-length: 5\r\n\r\nhello",
        k.key
    );
    // GET (fast path), then a POST with a body (handed to hyper with the bytes already read),
    // then GET again (hyper keeps the connection): three answers, in order.
    conn.write_all(get.as_bytes()).await.unwrap();
    let first = read_response(&mut conn).await;
    assert!(first.contains("\"path\":\"/supporters/a\""), "{first}");
    conn.write_all(format!("{post}{get}").as_bytes())
        .await
        .unwrap();
    let mut both = read_response(&mut conn).await;
    if !both.contains("/supporters/a") {
        both.push_str(&read_response(&mut conn).await);
    }
    let second_at = both[1..].find("HTTP/1.1 200").expect("two responses") + 1;
    let (second, third) = both.split_at(second_at);
    assert!(
        second.contains("\"path\":\"/supporters/b\"") && second.contains("\"body_len\":5"),
        "{both}"
    );
    assert!(third.contains("\"path\":\"/supporters/a\""), "{both}");
    assert_eq!(status(admin).await["connections_handed_to_hyper"], 1);

    // HTTP/1.0 and the built-in echo upstream are hyper's too.
    let old = raw(
        gw.addr,
        format!(
            "GET /supporters/c HTTP/1.0\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
            k.key
        )
        .as_bytes(),
    )
    .await;
    assert!(
        old.starts_with("HTTP/1.0 200") || old.starts_with("HTTP/1.1 200"),
        "{old}"
    );
    assert!(old.contains("\"path\":\"/supporters/c\""), "{old}");
    let echo = get_echo(gw.addr, &k.key).await;
    assert!(echo.contains("\"path\": \"/echo/x\""), "{echo}");
    assert_eq!(status(admin).await["connections_handed_to_hyper"], 3);
}

async fn get_echo(addr: SocketAddr, key: &str) -> String {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("GET /echo/x HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    read_until_close(&mut conn, std::time::Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_key_header_is_found_and_stripped_whatever_its_spelling() {
    let up = echo_upstream().await;
    let k = TestKey::new("oddheader");
    let toml = one_user_config(&up.url(), "odd@example.org", &k).replace(
        "upstream_timeout = \"2s\"",
        "upstream_timeout = \"2s\"\nkey_header = \"X-Partner_Key\"",
    );
    let gw = TestGateway::start(&toml).await;
    for spelling in ["x-partner_key", "X-PARTNER_KEY"] {
        let r = get(&gw.url("/supporters/1"), &[(spelling, k.key.as_str())]).await;
        assert_eq!(r.status, 200, "{spelling}");
        assert_eq!(
            r.upstream_header("x-partner_key"),
            None,
            "the key reached the upstream"
        );
    }
    let r = get(&gw.url("/supporters/1"), &[("x-api-key", k.key.as_str())]).await;
    assert_eq!(r.status, 401, "only the configured header carries the key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_path_false_sends_every_request_through_hyper() {
    let up = echo_upstream().await;
    let k = TestKey::new("nofast");
    let toml = with_server_setting(
        &with_admin(&one_user_config(&up.url(), "nofast@example.org", &k)),
        "fast_path = false",
    );
    let gw = TestGateway::start(&toml).await;
    let admin = gw.gateway().admin_addr().unwrap();
    for _ in 0..3 {
        let r = get(&gw.url("/supporters/1"), &[("x-api-key", k.key.as_str())]).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.upstream_header("x-apiward-user").unwrap(),
            ["nofast@example.org"]
        );
    }
    let counts = status(admin).await;
    assert_eq!(counts["fast_path_requests"], 0, "{counts}");
    assert_eq!(
        counts["connections_handed_to_hyper"], 0,
        "nothing is handed over: hyper had every connection from the start"
    );
}
