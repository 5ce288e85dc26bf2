//! Upstream clusters of HTTPS targets (`https://` URLs verified with the upstream's `ca` and
//! `server_name`, HTTP/1.1 or `protocol = "h2"`), against real TLS servers on loopback ports
//! with certificates from a test CA: requests are balanced over them on kept-alive connections,
//! health checks speak TLS and the target's own protocol, a target whose TLS fails is ejected
//! and its requests retried on the other, a WebSocket reaches a `wss` target, HTTP/2 over TLS
//! streams bodies both ways with trailers, and an HTTP/2 connection is closed once idle for
//! `upstream_keepalive_timeout` or once its target is removed by a reload and its requests have
//! finished.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::targets::{BOTH, Target, cluster_config, entries, get_via, target_of, target_status};
use common::tls::*;
use common::websocket::{ws_connect, wss_echo_upstream};
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// The targets' own CA and the certificate every target presents, for `targets.internal`: the
/// targets are addressed by IP, so `server_name` says which name their certificate must carry.
struct TargetPki {
    dir: tempfile::TempDir,
    cert: TestCert,
}

impl TargetPki {
    fn new() -> TargetPki {
        let dir = tempfile::tempdir().expect("dir");
        let ca = TestCa::new("targets CA");
        ca.write(dir.path(), "targets-ca");
        let cert = ca.server_cert(&["targets.internal"]);
        TargetPki { dir, cert }
    }

    /// The upstream's TLS lines, and its `protocol`.
    fn upstream(&self, protocol: &str) -> String {
        format!(
            "ca = \"{}\"\nserver_name = \"targets.internal\"\nprotocol = \"{protocol}\"",
            self.dir.path().join("targets-ca.pem").display()
        )
    }

    /// A target's TLS: the certificate, and the protocols it agrees to in ALPN.
    fn server(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        server_config(&self.cert, alpn)
    }
}

const H2_AND_H1: &[&[u8]] = &[b"h2", b"http/1.1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_balanced_over_two_https_targets_on_kept_alive_connections() {
    let pki = TargetPki::new();
    for protocol in ["http/1.1", "h2"] {
        let a = Target::start_tls("a", pki.server(H2_AND_H1)).await;
        let b = Target::start_tls("b", pki.server(H2_AND_H1)).await;
        let key = TestKey::new("httpsbalance");
        let gw = TestGateway::start(&cluster_config(
            &entries(&[&a, &b], &[]),
            &pki.upstream(protocol),
            "",
            &key,
        ))
        .await;
        let mut served = Vec::new();
        for path in BOTH {
            for _ in 0..4 {
                let r = get_via(path, &gw.url("/api/x"), &key).await;
                assert_eq!(r.status, 200, "{protocol} {path:?}: {:?}", r.body);
                assert_eq!(
                    r.headers["x-seen-host"],
                    gw.addr.to_string(),
                    "the client's Host reaches the target"
                );
                served.push(target_of(&r));
            }
        }
        assert_eq!(
            served,
            ["a", "b", "a", "b", "a", "b", "a", "b"],
            "{protocol}: round robin"
        );
        for t in [&a, &b] {
            assert_eq!(
                t.connections.load(Ordering::SeqCst),
                1,
                "{protocol}: one TLS connection to {}, kept alive (HTTP/2: multiplexed)",
                t.name
            );
        }
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_speak_tls_and_the_targets_own_protocol() {
    let pki = TargetPki::new();
    // Targets that agree to one protocol only: a check in another one (or in plain text) would
    // fail its handshake and take a healthy target out.
    for (protocol, alpn, version) in [
        ("http/1.1", &[&b"http/1.1"[..]][..], http::Version::HTTP_11),
        ("h2", &[&b"h2"[..]][..], http::Version::HTTP_2),
    ] {
        let a = Target::start_tls("a", pki.server(alpn)).await;
        let b = Target::start_tls("b", pki.server(alpn)).await;
        let key = TestKey::new("httpschecks");
        let check = "health_check = { path = \"/healthz\", interval = \"300ms\", timeout = \"300ms\", unhealthy_after = 2, healthy_after = 2 }";
        let gw = TestGateway::start(&cluster_config(
            &entries(&[&a, &b], &[]),
            &format!("{}\n{check}", pki.upstream(protocol)),
            "",
            &key,
        ))
        .await;
        let admin = gw.gateway().admin_addr().expect("admin");
        assert!(
            eventually(|| async {
                a.checks.load(Ordering::SeqCst) >= 3 && b.checks.load(Ordering::SeqCst) >= 3
            })
            .await,
            "{protocol}: both targets are checked"
        );
        for t in [&a, &b] {
            assert_eq!(
                *t.behaviour.check_version.lock().unwrap(),
                Some(version),
                "{protocol}: checked in the target's protocol"
            );
            assert_eq!(
                *t.behaviour.check_host.lock().unwrap(),
                t.addr.to_string(),
                "{protocol}: the check names the target's host and port"
            );
            let s = target_status(admin, &t.url()).await;
            assert_eq!(s["health_check"], "passing", "{protocol}: {s}");
            assert_eq!(s["healthy"], true, "{protocol}: {s}");
        }

        a.behaviour.unhealthy.store(true, Ordering::SeqCst);
        assert!(
            eventually(|| async {
                target_status(admin, &a.url()).await["health_check"] == "failing"
            })
            .await,
            "{protocol}: a's failing checks take it out"
        );
        for _ in 0..4 {
            let r = get(&gw.url("/api/x"), &[("x-api-key", &key.key)]).await;
            assert_eq!((r.status.as_u16(), target_of(&r)), (200, "b".to_string()));
        }
        a.behaviour.unhealthy.store(false, Ordering::SeqCst);
        assert!(
            eventually(|| async {
                target_status(admin, &a.url()).await["health_check"] == "passing"
            })
            .await,
            "{protocol}: passing checks bring a back"
        );
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_whose_certificate_does_not_verify_is_ejected_and_its_requests_retried() {
    let pki = TargetPki::new();
    // The right name, signed by a CA the upstream does not trust.
    let stranger = TestCa::new("a CA nobody trusts");
    let impostor = stranger.server_cert(&["targets.internal"]);
    let a = Target::start_tls("a", server_config(&impostor, H2_AND_H1)).await;
    let b = Target::start_tls("b", pki.server(H2_AND_H1)).await;
    let key = TestKey::new("httpseject");
    let gw = TestGateway::start(&cluster_config(
        &entries(&[&a, &b], &[]),
        &format!(
            "{}\nretries = 1\neject = {{ consecutive_failures = 2, for = \"1m\" }}",
            pki.upstream("http/1.1")
        ),
        "",
        &key,
    ))
    .await;
    let admin = gw.gateway().admin_addr().expect("admin");
    for _ in 0..6 {
        let r = get(&gw.url("/api/x"), &[("x-api-key", &key.key)]).await;
        assert_eq!(
            (r.status.as_u16(), target_of(&r)),
            (200, "b".to_string()),
            "each request that met a is retried on b: {:?}",
            r.body
        );
    }
    assert_eq!(
        a.hits(),
        0,
        "no request crossed a connection that failed to verify"
    );
    let s = target_status(admin, &a.url()).await;
    assert!(
        s["ejected_for_seconds"].as_f64().is_some(),
        "a is ejected: {s}"
    );
    assert_eq!(s["healthy"], false, "{s}");
    let tried = a.connections.load(Ordering::SeqCst);
    assert!(
        tried >= 2,
        "a was tried until ejected ({tried} connections)"
    );
    for _ in 0..4 {
        let r = get(&gw.url("/api/x"), &[("x-api-key", &key.key)]).await;
        assert_eq!(target_of(&r), "b");
    }
    assert_eq!(
        a.connections.load(Ordering::SeqCst),
        tried,
        "an ejected target is not tried"
    );
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines().any(
            |l| l.starts_with("apiward_upstream_target_transitions_total{")
                && l.contains("to=\"ejected\"")
        ),
        "{text}"
    );
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_reaches_a_wss_target() {
    let pki = TargetPki::new();
    // protocol = "h2" too: the handshake is HTTP/1.1's, on a TLS connection of its own.
    for protocol in ["http/1.1", "h2"] {
        let (addr, connections) = wss_echo_upstream(pki.server(H2_AND_H1)).await;
        let key = TestKey::new("httpswebsocket");
        let gw = TestGateway::start(&cluster_config(
            &format!("{{ url = \"https://{addr}\" }}"),
            &pki.upstream(protocol),
            "websocket = true",
            &key,
        ))
        .await;
        let mut ws = ws_connect(gw.addr, "/api/chat", &key.key).await;
        for text in ["over TLS", "and back"] {
            ws.send(Message::text(text)).await.expect("send");
            let echoed = tokio::time::timeout(std::time::Duration::from_secs(10), ws.next())
                .await
                .expect("an answer in time")
                .expect("a message")
                .expect("not an error");
            assert_eq!(echoed, Message::text(text), "{protocol}");
        }
        ws.close(None).await.expect("close");
        assert_eq!(connections.load(Ordering::SeqCst), 1, "{protocol}");
        gw.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_to_a_target_streams_bodies_both_ways_with_trailers() {
    let pki = TargetPki::new();
    // An HTTP/2-only target (ALPN h2): what gRPC servers are.
    let addr = grpc_style_upstream(Some(pki.server(&[b"h2"]))).await;
    let key = TestKey::new("httpsgrpc");
    let gw = TestGateway::start(&cluster_config(
        &format!("{{ url = \"https://{addr}\" }}"),
        &pki.upstream("h2"),
        "",
        &key,
    ))
    .await;

    // An HTTP/1.1 client's request crosses to the target in HTTP/2.
    for i in 0..3 {
        let body = format!("request {i}");
        let r = send(
            "POST",
            &gw.url("/api/echo"),
            &[("x-api-key", &key.key)],
            &body,
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body, body.as_bytes());
        assert_eq!(r.headers["x-seen-version"], "HTTP/2.0");
    }

    // An HTTP/2 client (h2c to the gateway) streams both ways and gets the trailers.
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    grpc_style_exchange(
        tcp,
        &format!("http://{}/api/grpc.Echo/Stream", gw.addr),
        &key.key,
    )
    .await;
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_upstream_connection_closes_after_the_keepalive_timeout() {
    let pki = TargetPki::new();
    let a = Target::start_tls("a", pki.server(H2_AND_H1)).await;
    let key = TestKey::new("httpsh2idle");
    let gw = TestGateway::start(&with_server_setting(
        &cluster_config(&entries(&[&a], &[]), &pki.upstream("h2"), "", &key),
        "upstream_keepalive_timeout = \"1s\"",
    ))
    .await;
    for _ in 0..3 {
        let r = get(&gw.url("/api/x"), &[("x-api-key", &key.key)]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(a.behaviour.open.load(Ordering::SeqCst), 1, "one connection");
    assert!(
        eventually(|| async { a.behaviour.open.load(Ordering::SeqCst) == 0 }).await,
        "closed once unused for upstream_keepalive_timeout"
    );
    let r = get(&gw.url("/api/x"), &[("x-api-key", &key.key)]).await;
    assert_eq!(r.status, 200, "a new connection serves the next request");
    assert_eq!(a.connections.load(Ordering::SeqCst), 2);
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_targets_http2_connection_closes_once_its_requests_have_finished() {
    let pki = TargetPki::new();
    let a = Target::start_tls("a", pki.server(H2_AND_H1)).await;
    let b = Target::start_tls("b", pki.server(H2_AND_H1)).await;
    let key = TestKey::new("httpsh2drain");
    // Unused connections would be kept a minute: what closes a's here is the reload.
    let config = |targets: &[&Target]| {
        with_server_setting(
            &cluster_config(&entries(targets, &[]), &pki.upstream("h2"), "", &key),
            "upstream_keepalive_timeout = \"60s\"",
        )
    };
    let gw = TestGateway::start(&config(&[&a, &b])).await;
    let admin = gw.gateway().admin_addr().expect("admin");
    for _ in 0..4 {
        let r = get(&gw.url("/api/x"), &[("x-api-key", &key.key)]).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for t in [&a, &b] {
        assert_eq!(
            t.behaviour.open.load(Ordering::SeqCst),
            1,
            "one multiplexed connection to {}",
            t.name
        );
    }
    // Two slow requests: round robin gives one to each target.
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = gw.url("/api/slower");
            let key = key.key.clone();
            tokio::spawn(async move { get(&url, &[("x-api-key", &key)]).await })
        })
        .collect();
    assert!(eventually(|| async { a.hits() == 3 && b.hits() == 3 }).await);

    gw.replace_config(&config(&[&b]));
    assert!(
        eventually(|| async {
            status(admin).await["upstream_targets"]
                .as_array()
                .is_some_and(|t| t.len() == 1)
        })
        .await,
        "the reload applied"
    );
    let mut served_by = Vec::new();
    for s in slow {
        let r = s.await.expect("slow request");
        assert_eq!(r.status, 200, "the requests in flight finished");
        served_by.push(target_of(&r));
    }
    served_by.sort();
    assert_eq!(served_by, ["a", "b"]);
    assert!(
        eventually(|| async { a.behaviour.open.load(Ordering::SeqCst) == 0 }).await,
        "the removed target's connection is closed once its stream has ended ({} open)",
        a.behaviour.open.load(Ordering::SeqCst)
    );
    assert_eq!(
        b.behaviour.open.load(Ordering::SeqCst),
        1,
        "b, unchanged by the reload, keeps its connection"
    );
    for _ in 0..2 {
        let r = get(&gw.url("/api/x"), &[("x-api-key", &key.key)]).await;
        assert_eq!((r.status.as_u16(), target_of(&r)), (200, "b".to_string()));
    }
    assert_eq!(b.connections.load(Ordering::SeqCst), 1);
    gw.shutdown().await;
}
