//! WebSocket through the gateway: on a route with `websocket = true` a handshake is
//! authenticated and authorised like a GET, then frames pass both ways until either side
//! closes (or nothing passes for `idle_timeout`), and the connection is counted with its
//! duration. Anywhere else, or with a bad credential or handshake, the upgrade is refused and
//! the upstream never hears of it.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::websocket::{ws_connect, ws_echo_upstream};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn ws_config(upstream: SocketAddr, key: &TestKey, idle: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
idle_timeout = "{idle}"

[upstreams.chat]
url = "http://{upstream}"

[[routes]]
prefix = "/ws/"
upstream = "chat"
websocket = true

[[routes]]
prefix = "/plain/"
upstream = "chat"

[groups.chatters]
allow = [{{ path = "/ws/**", verbs = ["view"] }}, {{ path = "/plain/**", verbs = ["view"] }}]

{}"#,
        user(
            "chat@example.org",
            "active",
            "chatters",
            "127.0.0.1",
            &[key]
        )
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_pass_both_ways_until_a_side_closes() {
    let (upstream, _) = ws_echo_upstream().await;
    let key = TestKey::new("websocket");
    let gw = TestGateway::start(&ws_config(upstream, &key, "60s")).await;
    let admin = gw.gateway().admin_addr().unwrap();
    let mut ws = ws_connect(gw.addr, "/ws/chat", &key.key).await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    ws.send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Binary(vec![1u8, 2, 3].into())
    );
    ws.close(None).await.unwrap();
    let mut closed = false;
    while let Some(message) = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("the close completes")
    {
        if matches!(message, Ok(Message::Close(_))) {
            closed = true;
        }
    }
    assert!(closed, "the upstream's Close came back");
    drop(ws);
    let metrics = |admin: SocketAddr| async move {
        String::from_utf8_lossy(&get(&format!("http://{admin}/metrics"), &[]).await.body)
            .into_owned()
    };
    assert!(
        eventually(|| async {
            metrics(admin)
                .await
                .contains("apiward_websocket_duration_seconds_count{route=\"/ws/\"} 1")
        })
        .await,
        "{}",
        metrics(admin).await
    );
    let text = metrics(admin).await;
    assert!(
        text.contains("apiward_websocket_connections_total{route=\"/ws/\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("apiward_websocket_connections_open 0"),
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_websocket_is_closed_after_idle_timeout() {
    let (upstream, _) = ws_echo_upstream().await;
    let key = TestKey::new("wsidle");
    let gw = TestGateway::start(&ws_config(upstream, &key, "300ms")).await;
    let mut ws = ws_connect(gw.addr, "/ws/quiet", &key.key).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the idle tunnel was closed");
    gw.shutdown().await;
}

/// A handshake for `path`, raw, with `key` and `ws_key` as `Sec-WebSocket-Key`.
fn handshake(path: &str, key: &str, ws_key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: {ws_key}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_refused_where_not_allowed_and_with_a_bad_key() {
    let (upstream, connections) = ws_echo_upstream().await;
    let key = TestKey::new("wsrefused");
    let gw = TestGateway::start(&ws_config(upstream, &key, "60s")).await;
    let good_nonce = "dGhlIHNhbXBsZSBub25jZQ==";
    let cases = [
        (
            handshake("/plain/chat", &key.key, good_nonce),
            "403",
            "forbidden",
        ),
        (
            handshake(
                "/ws/chat",
                "aw_notAKeyAtAll0000000000000000000000000000000",
                good_nonce,
            ),
            "401",
            "invalid_credentials",
        ),
        (
            handshake("/ws/chat", &key.key, "c2hvcnQ="),
            "400",
            "bad_upgrade",
        ),
    ];
    for (request, status, code) in cases {
        let mut conn = TcpStream::connect(gw.addr).await.unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let answer = read_response(&mut conn).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request}\n→ {answer}"
        );
        assert!(answer.contains(code), "{answer}");
        assert!(
            !answer.to_ascii_lowercase().contains("upgrade: websocket"),
            "{answer}"
        );
    }
    assert_eq!(
        connections.load(Ordering::Relaxed),
        0,
        "no refused upgrade reached the upstream"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_holds_its_place_under_max_upstream_connections() {
    let (upstream, connections) = ws_echo_upstream().await;
    let key = TestKey::new("wsplaces");
    let gw = TestGateway::start(&with_server_setting(
        &ws_config(upstream, &key, "60s"),
        "max_upstream_connections = 1\nconnect_timeout = \"300ms\"",
    ))
    .await;
    let good_nonce = "dGhlIHNhbXBsZSBub25jZQ==";
    let mut first = ws_connect(gw.addr, "/ws/one", &key.key).await;
    first.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::Text("hello".into())
    );
    // The one place is the open tunnel's: a second handshake waits connect_timeout, then 503,
    // and never reaches the upstream.
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(handshake("/ws/two", &key.key, good_nonce).as_bytes())
        .await
        .unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("upstream_busy"), "{answer}");
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "only the first tunnel"
    );
    // The tunnel still works; once it is closed, its place is free again.
    first.send(Message::Text("still".into())).await.unwrap();
    assert_eq!(
        first.next().await.unwrap().unwrap(),
        Message::Text("still".into())
    );
    first.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(Duration::from_secs(5), first.next())
        .await
        .expect("the close completes")
    {}
    drop(first);
    assert!(
        eventually(|| async {
            let mut conn = TcpStream::connect(gw.addr).await.unwrap();
            conn.write_all(handshake("/ws/three", &key.key, good_nonce).as_bytes())
                .await
                .unwrap();
            read_response(&mut conn).await.starts_with("HTTP/1.1 101 ")
        })
        .await,
        "the place the closed tunnel held was not given back"
    );
    gw.shutdown().await;
}
