//! Start-up, timeouts and shutdown: the gateway as a process operators run.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Response;
use http_body_util::Full;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const DEMO_KEY: &str = "aw_DEMOkeyNOTsecretLOCALtestingONLY01234567890";
const DEMO_INACTIVE_KEY: &str = "aw_DEMOinactiveUSERkeyLOCALtestingONLY01234567";

fn shipped_config() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/apiward.toml")).unwrap()
}

both_transports! {
    async fn the_shipped_config_serves_the_readme_examples() {
        let gw = TestGateway::start(&shipped_config()).await;
        let r = get(&gw.url("/supporters/42"), &[("x-api-key", DEMO_KEY)]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["headers"]["x-apiward-user"], "demo@apiward.local");
        let r = get(&gw.url("/supporters/42"), &[]).await;
        assert_eq!(r.error_code(), "missing_credentials");
        let r = get(
            &gw.url("/supporters/42"),
            &[("x-api-key", DEMO_INACTIVE_KEY)],
        )
        .await;
        assert_eq!(r.error_code(), "user_inactive");
        let r = send(
            "DELETE",
            &gw.url("/supporters/42"),
            &[("x-api-key", DEMO_KEY)],
            "",
        )
        .await;
        assert_eq!(r.error_code(), "forbidden");
        gw.shutdown().await;
    }
}

both_transports! {
    async fn a_bad_file_starts_nothing_and_says_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiward.toml");
        std::fs::write(
            &path,
            shipped_config().replace("group = \"manage-supporters\"", "group = \"no-such-group\""),
        )
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err =
            match apiward::Gateway::start(&path, Some(listener), apiward::Options::default()).await {
                Ok(_) => panic!("a gateway started on an invalid file"),
                Err(e) => e.to_string(),
            };
        assert!(err.contains(&format!("{}:", path.display())), "{err}");
        assert!(err.contains("no-such-group"), "{err}");
        let missing = dir.path().join("absent.toml");
        let err = match apiward::Gateway::start(&missing, None, apiward::Options::default()).await {
            Ok(_) => panic!("a gateway started without a file"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("does not exist"), "{err}");
    }
}

#[test]
fn check_validates_like_nginx_t() {
    let bin = env!("CARGO_BIN_EXE_apiward");
    let ok = Command::new(bin)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/apiward.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(
        out.contains("ok: 2 users, 2 keys, 2 groups, 2 routes"),
        "{out}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    let text = shipped_config()
        .replace("status = \"active\"", "status = \"enabled\"")
        .replace(
            "remote_addresses = \"127.0.0.1~::1\"",
            "remote_addresses = \"127.0.0.1~::1~nope\"",
        );
    std::fs::write(&bad, &text).unwrap();
    let out = Command::new(bin)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line = |needle: &str| text[..text.find(needle).unwrap()].matches('\n').count() + 1;
    assert!(
        err.contains(&format!("bad.toml:{}:", line("status = \"enabled\""))),
        "{err}"
    );
    assert!(
        err.contains(&format!("bad.toml:{}:", line("127.0.0.1~::1~nope"))),
        "{err}"
    );
    assert!(err.contains("2 errors"), "{err}");
}

both_transports! {
    async fn a_slow_request_head_is_cut_off_but_an_idle_keep_alive_connection_is_not() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("timeouts");
        let toml = one_user_config(&upstream.url(), "t@example.org", &k).replace(
            "upstream_timeout = \"2s\"",
            "header_read_timeout = \"300ms\"\nidle_timeout = \"5s\"",
        );
        let gw = TestGateway::start(&toml).await;

        // Half a request head, then silence: closed after header_read_timeout.
        let mut slow = TcpStream::connect(gw.addr).await.unwrap();
        slow.write_all(b"GET /supporters/1 HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        assert!(
            closed_within(&mut slow, Duration::from_secs(4)).await,
            "the slow head was not cut off"
        );

        // A keep-alive connection idle for longer than header_read_timeout is still usable.
        let mut conn = TcpStream::connect(gw.addr).await.unwrap();
        let request = format!(
            "GET /supporters/1 HTTP/1.1\r\nHost: x\r\nX-Api-Key: {}\r\n\r\n",
            k.key
        );
        conn.write_all(request.as_bytes()).await.unwrap();
        let first = read_response(&mut conn).await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        tokio::time::sleep(Duration::from_millis(800)).await;
        conn.write_all(request.as_bytes()).await.unwrap();
        let second = read_response(&mut conn).await;
        assert!(
            second.starts_with("HTTP/1.1 200"),
            "an idle keep-alive connection was closed: {second:?}"
        );
    }
}

both_transports! {
    async fn an_idle_connection_is_closed_after_idle_timeout() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("idle");
        let toml = one_user_config(&upstream.url(), "i@example.org", &k)
            .replace("upstream_timeout = \"2s\"", "idle_timeout = \"300ms\"");
        let gw = TestGateway::start(&toml).await;
        let mut conn = TcpStream::connect(gw.addr).await.unwrap();
        assert!(
            closed_within(&mut conn, Duration::from_secs(4)).await,
            "the idle connection was not closed"
        );
    }
}

both_transports! {
    async fn a_reloaded_idle_timeout_applies_to_open_connections_from_their_next_request() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("idlereload");
        let long = one_user_config(&upstream.url(), "r@example.org", &k)
            .replace("upstream_timeout = \"2s\"", "idle_timeout = \"30s\"");
        let gw = TestGateway::start(&long).await;
        let (mut conn, request) = answered_connection(&gw, &k).await;
        gw.replace_config(&long.replace("idle_timeout = \"30s\"", "idle_timeout = \"300ms\""));
        let store = gw.gateway().store();
        assert!(eventually(|| async { store.generation() == 2 }).await);
        // The wait that began before the reload keeps its 30 s; the next request reads the new
        // setting, so the wait after it ends in 300 ms.
        conn.write_all(request.as_bytes()).await.unwrap();
        assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
        assert!(
            closed_within(&mut conn, Duration::from_secs(5)).await,
            "the connection kept the idle_timeout it had before the reload"
        );
    }
}

both_transports! {
    async fn shutdown_closes_idle_keep_alive_connections_without_waiting_for_the_grace_period() {
        let upstream = echo_upstream().await;
        let k = TestKey::new("idleshutdown");
        let toml = one_user_config(&upstream.url(), "d@example.org", &k)
            .replace("upstream_timeout = \"2s\"", "shutdown_timeout = \"60s\"");
        let gw = TestGateway::start(&toml).await;
        let (mut conn, _) = answered_connection(&gw, &k).await;
        // The connection now waits for its next request; shutdown must end that wait at once, not
        // after shutdown_timeout.
        let shutdown = tokio::spawn(gw.shutdown());
        assert!(
            closed_within(&mut conn, Duration::from_secs(10)).await,
            "an idle keep-alive connection stayed open through shutdown"
        );
        shutdown.await.unwrap();
    }
}

/// A keep-alive connection to `gw` that has had one request answered, and that request.
async fn answered_connection(gw: &TestGateway, k: &TestKey) -> (TcpStream, String) {
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    let request = get_with_key("/supporters/1", k);
    conn.write_all(request.as_bytes()).await.unwrap();
    assert!(read_response(&mut conn).await.starts_with("HTTP/1.1 200"));
    (conn, request)
}

/// Whether the server closes the connection (EOF or reset) before `limit`.
async fn closed_within(conn: &mut TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    tokio::time::timeout(limit, conn.read_to_end(&mut sink))
        .await
        .is_ok()
}

both_transports! {
    async fn shutdown_lets_in_flight_requests_finish_and_stops_accepting() {
        let upstream = upstream_with(|_| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            Response::new(Full::new(Bytes::from_static(b"finished")))
        })
        .await;
        let k = TestKey::new("shutdown");
        let gw = TestGateway::start(&one_user_config(&upstream.url(), "s@example.org", &k)).await;
        let url = gw.url("/supporters/1");
        let addr = gw.addr;
        let key = k.key.clone();
        let in_flight = tokio::spawn(async move { get(&url, &[("x-api-key", key.as_str())]).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        gw.shutdown().await;
        let r = in_flight.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "finished");
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "the listener still accepts after shutdown"
        );
    }
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_process_with_status_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &path,
        shipped_config().replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiward"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the gateway did not stop on SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
