//! HTTPS and HTTP/2 at the edge: certificates chosen by SNI and reloaded without dropping open
//! connections, the same answers over HTTP/1.1 and HTTP/2 as over plain HTTP, gRPC-style
//! trailers and streaming, HTTPS upstreams with their own CA, client certificates as
//! credentials, and a clear 400 for plain HTTP on the TLS port. Real handshakes on loopback.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use common::tls::*;
use common::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn keys() -> (TestKey, TestKey) {
    (TestKey::new("tlsgood"), TestKey::new("tlsfar"))
}

/// The gateway over TLS in front of `upstream`, with `good@example.org` (from 127.0.0.1) and
/// `far@example.org` (from 192.0.2.1) and whatever `extra` users and `[server.tls]` lines.
async fn tls_gateway(pki: &Pki, upstream: &str, extra_users: &str, tls_extra: &str) -> TestGateway {
    let (good, far) = keys();
    let users = good_and_far_users(&good, &far) + extra_users;
    TestGateway::start(&pki.with_tls(&with_admin(&config(upstream, &users)), tls_extra)).await
}

/// What every transport must answer alike: allowed, refused for each reason, with the same
/// header hygiene upstream.
async fn contract(conn: &mut HttpConnection, proto: &str) {
    let (good, far) = keys();
    let label = if conn.is_h2() { "h2" } else { "h1" };
    let k = |key: &TestKey| ("x-api-key", key.key.clone());
    let good_key = k(&good);
    let good_header = [(good_key.0, good_key.1.as_str())];

    let r = conn
        .send("GET", "/supporters/7?x=1", &good_header, "")
        .await;
    assert_eq!(r.status, 200, "{label}: {:?}", r.body);
    let seen = r.json();
    assert_eq!(seen["path"], "/base/supporters/7", "{label}");
    assert_eq!(seen["query"], "x=1", "{label}");
    assert_eq!(
        r.upstream_header("x-apiward-user"),
        Some(vec!["good@example.org".into()]),
        "{label}"
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto"),
        Some(vec![proto.into()]),
        "{label}"
    );
    assert_eq!(
        r.upstream_header("x-api-key"),
        None,
        "{label}: the key never goes upstream"
    );
    assert!(
        r.upstream_header("x-forwarded-host").is_some(),
        "{label}: the client's host (:authority for h2)"
    );
    assert!(r.headers.contains_key("x-request-id"), "{label}");

    let r = conn
        .send("POST", "/supporters/", &good_header, "{\"name\":\"x\"}")
        .await;
    assert_eq!(r.status, 200, "{label}: a body goes through");
    assert_eq!(r.json()["body_len"], 12, "{label}");

    let r = conn
        .send(
            "GET",
            "/supporters/1",
            &[("te", "trailers"), good_header[0]],
            "",
        )
        .await;
    assert_eq!(
        r.upstream_header("te"),
        Some(vec!["trailers".into()]),
        "{label}: TE: trailers crosses"
    );

    for (method, path, headers, status, code) in [
        ("GET", "/supporters/1", vec![], 401, "missing_credentials"),
        (
            "GET",
            "/supporters/1",
            vec![("x-api-key", "aw_not_a_real_key_at_all_000000000000000000")],
            401,
            "invalid_credentials",
        ),
        ("DELETE", "/pages/1", vec![good_header[0]], 403, "forbidden"),
        ("GET", "/nowhere", vec![good_header[0]], 404, "no_route"),
        (
            "GET",
            "/supporters/1",
            vec![("x-api-key", far.key.as_str())],
            403,
            "unregistered_source",
        ),
    ] {
        let r = conn.send(method, path, &headers, "").await;
        assert_eq!(
            (r.status.as_u16(), r.error_code()),
            (status, code.to_string()),
            "{label}: {method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_http2_over_tls_and_h2c_get_the_same_answers() {
    let upstream = echo_upstream().await;
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &format!("{}/base/", upstream.url()), "", "").await;

    let mut h1 = HttpConnection::tls(gw.addr, "api.example.org", pki.client(&[b"http/1.1"])).await;
    assert!(!h1.is_h2());
    contract(&mut h1, "https").await;

    let mut h2 = HttpConnection::tls(
        gw.addr,
        "api.example.org",
        pki.client(&[b"h2", b"http/1.1"]),
    )
    .await;
    assert!(h2.is_h2(), "ALPN prefers h2");
    contract(&mut h2, "https").await;

    // The same configuration without [server.tls]: h2c with prior knowledge on the plain port.
    let plain = TestGateway::start(&config(&format!("{}/base/", upstream.url()), &{
        let (good, far) = keys();
        good_and_far_users(&good, &far)
    }))
    .await;
    let mut h2c = HttpConnection::h2c(plain.addr).await;
    contract(&mut h2c, "http").await;

    // alpn = ["http/1.1"] turns HTTP/2 off.
    gw.replace_config(&pki.with_tls(
        &with_admin(&config(&format!("{}/base/", upstream.url()), &{
            let (good, far) = keys();
            good_and_far_users(&good, &far)
        })),
        "alpn = [\"http/1.1\"]",
    ));
    assert!(
        eventually(|| async {
            !HttpConnection::tls(
                gw.addr,
                "api.example.org",
                pki.client(&[b"h2", b"http/1.1"]),
            )
            .await
            .is_h2()
        })
        .await,
        "after the reload, ALPN no longer offers h2"
    );
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_400() {
    let upstream = echo_upstream().await;
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &upstream.url(), "", "").await;
    let answer = raw(gw.addr, b"GET /supporters/1 HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\nthis port speaks HTTPS\n"),
        "{answer}"
    );

    let admin = gw.gateway().admin_addr().expect("admin");
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("apiward_tls_handshake_failures_total{reason=\"plaintext\"} 1"),
        "{text}"
    );
}

#[tokio::test]
async fn the_certificate_follows_sni_and_status_and_metrics_list_them() {
    let upstream = echo_upstream().await;
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &upstream.url(), "", "").await;
    for (name, expected) in [("api.example.org", &pki.api), ("x.eu.example.org", &pki.eu)] {
        let s = connect(gw.addr, name, pki.client(&[]))
            .await
            .expect("handshake");
        assert_eq!(peer_certificate(&s), expected.der, "{name}");
    }
    assert_eq!(
        peer_certificate(&connect_looking_only(gw.addr, "127.0.0.1").await),
        pki.api.der
    );

    let admin = gw.gateway().admin_addr().expect("admin");
    let status = status(admin).await;
    let certs = status["tls"]["certificates"]
        .as_array()
        .expect("certificates")
        .clone();
    assert_eq!(certs.len(), 2, "{status}");
    assert_eq!(certs[0]["names"], serde_json::json!(["api.example.org"]));
    assert_eq!(certs[1]["names"], serde_json::json!(["*.eu.example.org"]));
    assert!(
        certs[0]["not_after"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );

    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains("apiward_tls_certificate_expiry_seconds{name=\"api.example.org\""),
        "{text}"
    );
    assert!(text.contains("apiward_tls_handshakes_total{"), "{text}");
}

#[tokio::test]
async fn handshakes_are_counted_as_full_or_resumed() {
    let upstream = echo_upstream().await;
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &upstream.url(), "", "").await;
    let admin = gw.gateway().admin_addr().expect("admin");
    // One client, two connections: the second resumes the session of the first (TLS 1.3
    // tickets arrive after the handshake, so the first connection answers a request first).
    let client = pki.client(&[b"http/1.1"]);
    for _ in 0..2 {
        let mut c = HttpConnection::tls(gw.addr, "api.example.org", Arc::clone(&client)).await;
        assert_eq!(c.send("GET", "/supporters/1", &[], "").await.status, 401);
    }
    let metrics = get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    let count = |session: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("apiward_tls_handshakes_total{")
                    && l.contains(&format!("session=\"{session}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!((count("full"), count("resumed")), (1.0, 1.0), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_without_dropping_open_connections() {
    let upstream = echo_upstream().await;
    let pki = Pki::new();
    let gw = tls_gateway(&pki, &upstream.url(), "", "").await;
    let (good, _) = keys();
    let key = [("x-api-key", good.key.as_str())];
    let mut open =
        HttpConnection::tls(gw.addr, "api.example.org", pki.client(&[b"http/1.1"])).await;
    assert_eq!(
        open.send("GET", "/supporters/1", &key, "").await.status,
        200
    );

    // A broken pair (the key of another certificate): refused, the old one keeps serving.
    std::fs::copy(
        pki.dir.path().join("eu.key"),
        pki.dir.path().join("api.key.new"),
    )
    .expect("copy");
    std::fs::rename(
        pki.dir.path().join("api.key.new"),
        pki.dir.path().join("api.key"),
    )
    .expect("rename");
    let store = Arc::clone(gw.gateway().store());
    assert!(
        eventually(|| async { store.reloads_failed() >= 1 }).await,
        "the broken pair is refused"
    );
    let failure = store.last_failure().expect("a failure").message;
    assert!(
        failure.contains("api.key") && failure.contains("does not belong"),
        "{failure}"
    );
    let s = connect(gw.addr, "api.example.org", pki.client(&[]))
        .await
        .expect("handshake");
    assert_eq!(
        peer_certificate(&s),
        pki.api.der,
        "the last good certificate keeps serving"
    );

    // A renewed pair, written the way certbot and cert-manager do (new files renamed over).
    let renewed = pki.ca.server_cert(&["api.example.org"]);
    renewed.write(pki.dir.path(), "api.new");
    std::fs::rename(
        pki.dir.path().join("api.new.key"),
        pki.dir.path().join("api.key"),
    )
    .expect("rename");
    std::fs::rename(
        pki.dir.path().join("api.new.pem"),
        pki.dir.path().join("api.pem"),
    )
    .expect("rename");
    assert!(
        eventually(|| async {
            // A fresh client each time: a resumed session would show the first handshake's certificate.
            match connect(gw.addr, "api.example.org", pki.client(&[])).await {
                Ok(s) => peer_certificate(&s) == renewed.der,
                Err(_) => false,
            }
        })
        .await,
        "the renewed certificate is served once its files change"
    );
    // The connection opened before both changes goes on.
    assert_eq!(
        open.send("GET", "/supporters/2", &key, "").await.status,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_api_users() {
    let upstream = echo_upstream().await;
    let pki = Pki::new();
    let device = pki.clients.client_cert("edge-device");
    let stranger = pki.clients.client_cert("nobody");
    let device_user = format!(
        "[users.\"edge-device@example.org\"]\nstatus = \"active\"\ngroup = \"manage-supporters\"\n\
         remote_addresses = \"127.0.0.1\"\nclient_certificates = [{{ sha256 = \"{}\", created = 2026-12-01T10:00:00Z }}]\n\n",
        device.sha256()
    );
    let client_ca = format!("client_ca = \"{}\"", pki.path("clients-ca.pem"));
    let gw = tls_gateway(&pki, &upstream.url(), &device_user, &client_ca).await;
    let (good, _) = keys();
    let with = |cert: Option<&TestCert>| client_config(&pki.ca, &[b"h2"], cert);

    let mut conn = HttpConnection::tls(gw.addr, "api.example.org", with(Some(&device))).await;
    let r = conn.send("GET", "/supporters/1", &[], "").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.upstream_header("x-apiward-user"),
        Some(vec!["edge-device@example.org".into()])
    );
    let r = conn.send("DELETE", "/pages/1", &[], "").await;
    assert_eq!(r.error_code(), "forbidden", "the user's group applies");
    let r = conn
        .send("GET", "/supporters/1", &[("x-api-key", &good.key)], "")
        .await;
    assert_eq!(
        (r.status.as_u16(), r.error_code()),
        (400, "ambiguous_credentials".into())
    );

    let mut unknown = HttpConnection::tls(gw.addr, "api.example.org", with(Some(&stranger))).await;
    let r = unknown.send("GET", "/supporters/1", &[], "").await;
    assert_eq!(
        (r.status.as_u16(), r.error_code()),
        (401, "invalid_credentials".into())
    );
    let r = unknown
        .send("GET", "/supporters/1", &[("x-api-key", &good.key)], "")
        .await;
    assert_eq!(
        r.upstream_header("x-apiward-user"),
        Some(vec!["good@example.org".into()]),
        "a key decides beside a certificate that is no user's"
    );

    let mut none = HttpConnection::tls(gw.addr, "api.example.org", with(None)).await;
    let r = none
        .send("GET", "/supporters/1", &[("x-api-key", &good.key)], "")
        .await;
    assert_eq!(r.status, 200, "a certificate is asked for, not required");

    // Over HTTP/1.1 too (the engine's fast path).
    let mut h1 = HttpConnection::tls(
        gw.addr,
        "api.example.org",
        client_config(&pki.ca, &[b"http/1.1"], Some(&device)),
    )
    .await;
    assert!(!h1.is_h2());
    let r = h1.send("GET", "/supporters/1", &[], "").await;
    assert_eq!(
        r.upstream_header("x-apiward-user"),
        Some(vec!["edge-device@example.org".into()])
    );

    // Signed by another CA: the handshake fails.
    let foreign = TestCa::new("elsewhere").client_cert("edge-device");
    let refused = match connect(gw.addr, "api.example.org", with(Some(&foreign))).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(s.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(
        refused,
        "a certificate that does not chain to client_ca fails the handshake"
    );

    // Disabled users stay disabled whatever they present.
    gw.replace_config(&pki.with_tls(
        &with_admin(&config(&upstream.url(), &{
            let (good, far) = keys();
            good_and_far_users(&good, &far)
                + &device_user.replace("status = \"active\"", "status = \"inactive\"")
        })),
        &client_ca,
    ));
    assert!(
        eventually(|| async {
            let mut c = HttpConnection::tls(gw.addr, "api.example.org", with(Some(&device))).await;
            c.send("GET", "/supporters/1", &[], "").await.error_code() == "user_inactive"
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_streams_and_trailers_cross_both_ways() {
    let grpc = grpc_style_upstream(None).await;
    let pki = Pki::new();
    let toml = config("builtin:echo", &{
        let (good, far) = keys();
        good_and_far_users(&good, &far)
    })
    .replace(
        "[upstreams.echo]\nurl = \"builtin:echo\"",
        &format!("[upstreams.echo]\nurl = \"http://{grpc}\"\nprotocol = \"h2\""),
    );
    let gw = TestGateway::start(&pki.with_tls(&toml, "")).await;
    let (good, _) = keys();

    let tls = connect(gw.addr, "api.example.org", pki.client(&[b"h2"]))
        .await
        .expect("handshake");
    grpc_style_exchange(
        tls,
        "https://api.example.org/echo/grpc.Echo/Stream",
        &good.key,
    )
    .await;
}

/// An HTTPS upstream with a certificate for `billing.internal` from its own CA, speaking
/// HTTP/1.1 or HTTP/2 as ALPN agrees, describing each request; counts its TLS connections.
async fn https_upstream(
    ca: &TestCa,
    dir: &std::path::Path,
) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let cert = ca.server_cert(&["billing.internal"]);
    let (cert, key) = cert.write(dir, "billing");
    let server = apiward::tls::ServerTls::new(
        vec![apiward::tls::load_pair(&cert, &key).expect("pair")],
        apiward::tls::ServerTlsOptions {
            min_version: Default::default(),
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            client_ca: None,
        },
        Vec::new(),
    )
    .expect("server tls");
    let acceptor = server.acceptor();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|req| async move {
                    Ok::<_, Infallible>(describe(req).await)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_upstream_with_its_own_ca_is_verified_and_kept_alive() {
    let internal = TestCa::new("internal CA");
    let dir = tempfile::tempdir().expect("dir");
    let ca_file = internal.write(dir.path(), "internal-ca");
    let (addr, connections) = https_upstream(&internal, dir.path()).await;
    let (good, far) = keys();
    let upstreams = |name: &str, protocol: &str| {
        format!(
            "url = \"https://{addr}/base\"\nca = \"{}\"\nserver_name = \"{name}\"\nprotocol = \"{protocol}\"",
            ca_file.display()
        )
    };
    let toml = |name: &str, protocol: &str| {
        config("http://127.0.0.1:1", &good_and_far_users(&good, &far))
            .replace("url = \"http://127.0.0.1:1\"", &upstreams(name, protocol))
    };
    let gw = TestGateway::start(&toml("billing.internal", "http/1.1")).await;
    let key = [("x-api-key", good.key.as_str())];
    for i in 0..3 {
        let r = get(&gw.url(&format!("/supporters/{i}")), &key).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["path"], format!("/base/supporters/{i}"));
        // The client's Host goes upstream (no `host` set); SNI and verification use server_name.
        assert_eq!(r.upstream_header("host"), Some(vec![gw.addr.to_string()]));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one TLS connection, kept alive and reused"
    );

    // HTTP/2 to the same upstream (ALPN h2).
    gw.replace_config(&toml("billing.internal", "h2"));
    assert!(
        eventually(|| async { gw.gateway().store().generation() >= 2 }).await,
        "reloaded"
    );
    for i in 0..3 {
        let r = get(&gw.url(&format!("/supporters/{i}")), &key).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.json()["path"], format!("/base/supporters/{i}"));
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        2,
        "one more connection, multiplexed"
    );

    // A name the certificate does not carry: verification fails, the client gets 502.
    gw.replace_config(&toml("other.internal", "http/1.1"));
    assert!(
        eventually(|| async { gw.gateway().store().generation() >= 3 }).await,
        "reloaded"
    );
    let r = get(&gw.url("/supporters/1"), &key).await;
    assert_eq!(
        (r.status.as_u16(), r.error_code()),
        (502, "upstream_unavailable".into())
    );
}

/// An HTTP/1.1 upstream written by hand, to answer with each framing a body can have: `whole`
/// (a length, all at once), `long` (a length, in pieces with pauses), `chunked` (in pieces, with
/// a trailer), `close` (to the end of the connection), `early` (a 103 first), `bye` (closes the
/// connection after answering, without saying so). Counts its connections.
async fn framing_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        let mut more = [0u8; 4096];
                        match tcp.read(&mut more).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&more[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end);
                    let mut line = head.split(' ');
                    let method = line.next().unwrap_or_default().to_string();
                    let path = line.next().unwrap_or_default().to_string();
                    let pieces: Vec<&[u8]> = match path.as_str() {
                        "/supporters/whole" if method == "HEAD" => {
                            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\n"]
                        }
                        "/supporters/whole" | "/supporters/bye" => vec![
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-Up: 1\r\n\r\nhello",
                        ],
                        "/supporters/long" => vec![
                            b"HTTP/1.1 200 OK\r\nContent-Length: 30000\r\n\r\n",
                            &[b'a'; 10000],
                            &[b'b'; 10000],
                            &[b'c'; 10000],
                        ],
                        "/supporters/chunked" => vec![
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-checksum\r\n\r\n5\r\nhel",
                            b"lo\r\n6;ext=1\r\n world\r\n",
                            b"0\r\nx-checksum: 42\r\n\r\n",
                        ],
                        "/supporters/close" => {
                            vec![b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the ", b"end"]
                        }
                        "/supporters/early" => vec![
                            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n",
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                        ],
                        _ => vec![b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"],
                    };
                    for piece in pieces {
                        if tcp.write_all(piece).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    }
                    if path == "/supporters/close" || path == "/supporters/bye" {
                        let _ = tcp.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// A bodiless HTTP/2 request with `key` on `sender`: the answer's head, whole body and trailers,
/// each within 10 s.
async fn h2_send(
    sender: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<Bytes>>,
    method: &str,
    uri: String,
    key: &str,
) -> (http::response::Parts, Bytes, Option<http::HeaderMap>) {
    let request = http::Request::builder()
        .method(method)
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header("x-api-key", key)
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        sender.send_request(request),
    )
    .await
    .expect("a response in time")
    .expect("a response");
    let (parts, body) = response.into_parts();
    let collected = tokio::time::timeout(std::time::Duration::from_secs(10), body.collect())
        .await
        .expect("the body in time")
        .expect("the body");
    let trailers = collected.trailers().cloned();
    (parts, collected.to_bytes(), trailers)
}

/// The gateway in front of `framing_upstream` with the good and far users; the good user's key
/// and the upstream's count of connections.
async fn framing_gateway() -> (TestGateway, TestKey, Arc<AtomicUsize>) {
    let (upstream, connections) = framing_upstream().await;
    let (good, far) = keys();
    let gw = TestGateway::start(&config(
        &format!("http://{upstream}"),
        &good_and_far_users(&good, &far),
    ))
    .await;
    (gw, good, connections)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_http2_requests_reach_a_plain_http1_upstream_whatever_its_framing() {
    let (gw, good, connections) = framing_gateway().await;
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c");
    tokio::spawn(conn);
    let origin = format!("http://{}", gw.addr);
    let mut send = async |method: &str, path: &str| {
        h2_send(&mut sender, method, format!("{origin}{path}"), &good.key).await
    };

    let (head, body, _) = send("GET", "/supporters/whole").await;
    assert_eq!((head.status.as_u16(), &body[..]), (200, &b"hello"[..]));
    assert_eq!(head.headers["x-up"], "1");
    assert!(
        !head.headers.contains_key("connection"),
        "no connection-specific header crosses into HTTP/2"
    );
    let (head, body, _) = send("GET", "/supporters/whole").await;
    assert_eq!((head.status.as_u16(), &body[..]), (200, &b"hello"[..]));
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the upstream connection is kept and reused"
    );

    let (head, body, _) = send("HEAD", "/supporters/whole").await;
    assert_eq!(head.status, 200);
    assert_eq!(head.headers["content-length"], "5");
    assert!(body.is_empty(), "HEAD: no body");

    let (head, body, _) = send("GET", "/supporters/long").await;
    assert_eq!(head.status, 200);
    assert_eq!(body.len(), 30000, "a body in pieces arrives whole");
    assert_eq!((body[0], body[15000], body[29999]), (b'a', b'b', b'c'));

    let (head, body, trailers) = send("GET", "/supporters/chunked").await;
    assert_eq!(
        (head.status.as_u16(), &body[..]),
        (200, &b"hello world"[..])
    );
    assert!(!head.headers.contains_key("transfer-encoding"));
    assert_eq!(
        trailers.expect("the trailer crosses")["x-checksum"],
        "42",
        "a chunked body's trailer crosses"
    );

    let (head, body, _) = send("GET", "/supporters/close").await;
    assert_eq!((head.status.as_u16(), &body[..]), (200, &b"to the end"[..]));

    let (head, body, _) = send("GET", "/supporters/early").await;
    assert_eq!(
        (head.status.as_u16(), &body[..]),
        (200, &b"ok"[..]),
        "a 103 is skipped"
    );

    // The upstream closes the connection it answered on; the next request gets a new one.
    let (head, _, _) = send("GET", "/supporters/bye").await;
    assert_eq!(head.status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let (head, body, _) = send("GET", "/supporters/whole").await;
    assert_eq!((head.status.as_u16(), &body[..]), (200, &b"hello"[..]));

    let (head, _, _) = send("GET", "/supporters/missing").await;
    assert_eq!(head.status, 404, "the upstream's own answer");
}

/// A response's last chunk is handed to h2 whole, whatever the client's window (the patch in
/// vendor/hyper's `PipeToSendStream`): h2 must then send it in pieces as the client's
/// WINDOW_UPDATEs come, not all at once and not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_chunk_larger_than_the_clients_window_arrives_whole_as_the_window_opens() {
    let (gw, good, _) = framing_gateway().await;
    let tcp = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(1024)
            .initial_connection_window_size(1024)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .expect("h2c");
    tokio::spawn(conn);
    for _ in 0..2 {
        let (head, body, _) = h2_send(
            &mut sender,
            "GET",
            format!("http://{}/supporters/long", gw.addr),
            &good.key,
        )
        .await;
        assert_eq!(head.status, 200);
        assert_eq!(body.len(), 30000, "every piece, the last one too, arrives");
        assert_eq!((body[0], body[15000], body[29999]), (b'a', b'b', b'c'));
    }
}

/// A bodiless HTTP/2 request to a plain HTTP/1.1 upstream has its upstream head written straight
/// from the client's headers (`hyper_path/raw.rs`), not through the header map the other paths
/// change: what reaches the upstream is the same as from an HTTP/1.1 client, header for header,
/// from an untrusted peer and from a trusted proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_requests_upstream_head_has_the_same_headers_as_an_http1_requests() {
    let upstream = echo_upstream().await;
    let (good, far) = keys();
    for trusted in [false, true] {
        let mut text = config(&upstream.url(), &good_and_far_users(&good, &far));
        if trusted {
            text = text.replacen(
                "upstream_timeout = \"2s\"",
                "upstream_timeout = \"2s\"\ntrusted_proxies = [\"127.0.0.1/32\"]",
                1,
            );
        }
        let gw = TestGateway::start(&text).await;
        let headers = [
            ("x-api-key", good.key.as_str()),
            ("x-forwarded-for", "127.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "elsewhere.example.org"),
            ("x-apiward-user", "forged@example.org"),
            ("x-apiward-group", "forged"),
            ("x-apiward-ratelimit-remaining", "999"),
            ("x-request-id", "chosen-by-the-client"),
            ("x_apiward_user", "forged@example.org"),
            ("x_custom", "underscored"),
            ("x-custom", "one"),
            ("x-custom", "two"),
            ("accept", "application/json"),
            ("te", "trailers"),
        ];
        let seen = |reply: &Reply| {
            assert_eq!(reply.status, 200, "trusted {trusted}: {:?}", reply.body);
            let mut json = reply.json()["headers"].clone();
            let id = json
                .as_object_mut()
                .expect("headers")
                .remove("x-request-id");
            assert_eq!(
                id.and_then(|v| v[0].as_str().map(str::to_string))
                    .as_deref(),
                reply.headers["x-request-id"].to_str().ok(),
                "trusted {trusted}: the request's own id goes upstream"
            );
            json
        };
        let h1 = seen(&send("GET", &gw.url("/supporters/3?a=b"), &headers, "").await);
        let mut h2c = HttpConnection::h2c(gw.addr).await;
        let h2 = seen(&h2c.send("GET", "/supporters/3?a=b", &headers, "").await);
        assert_eq!(h2, h1, "trusted {trusted}");
        assert_eq!(h2["x-custom"], serde_json::json!(["one", "two"]));
        assert_eq!(h2["te"], serde_json::json!(["trailers"]));
        assert!(h2.get("x-api-key").is_none() && h2.get("x_apiward_user").is_none());
        let chain = if trusted {
            "127.0.0.1, 127.0.0.1"
        } else {
            "127.0.0.1"
        };
        assert_eq!(h2["x-forwarded-for"], serde_json::json!([chain]));
        let proto = if trusted { "https" } else { "http" };
        assert_eq!(h2["x-forwarded-proto"], serde_json::json!([proto]));
        assert_eq!(
            h2["x-apiward-user"],
            serde_json::json!(["good@example.org"])
        );
    }
}
