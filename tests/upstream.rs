//! The upstream connection pool: connections are reused across requests and clients, never after
//! a response the client abandoned, dropped when the upstream closed them, and closed after
//! `upstream_keepalive_timeout`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A hand-written HTTP/1.1 upstream on 127.0.0.1 that counts the connections it accepts and the
/// ones that ended, so a test can see exactly what the gateway's pool did. Requests carry no
/// body. `/supporters/big` answers 4 MiB, `/supporters/empty` 204, `/supporters/slow` answers
/// after 300 ms, `/supporters/chunked` answers chunked with a trailer, `/supporters/to-close`
/// answers without a length and closes, `/supporters/hints` sends `103 Early Hints` first,
/// `/supporters/drop-next` answers, then reads the next request on its connection and closes
/// it without answering, everything else `ok <path>`.
/// With `close_idle_after`, it closes a connection that long after each response (without
/// saying so in the response), as an upstream with a short keep-alive timeout does.
struct RawUpstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    ended: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RawUpstream {
    async fn start(close_idle_after: Option<Duration>) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(AtomicUsize::new(0));
        let (a, e) = (Arc::clone(&accepted), Arc::clone(&ended));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let e = Arc::clone(&e);
                tokio::spawn(async move {
                    serve_raw(stream, close_idle_after).await;
                    e.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawUpstream {
            addr,
            accepted,
            ended,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn ended(&self) -> usize {
        self.ended.load(Ordering::SeqCst)
    }
}

async fn serve_raw(mut stream: TcpStream, close_idle_after: Option<Duration>) {
    let mut buf = Vec::new();
    let mut drop_next = false;
    loop {
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let mut chunk = [0u8; 4096];
            let read = match close_idle_after {
                Some(after) if buf.is_empty() => {
                    match tokio::time::timeout(after, stream.read(&mut chunk)).await {
                        Ok(r) => r,
                        Err(_) => return, // idle too long: close without a word
                    }
                }
                _ => stream.read(&mut chunk).await,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        if drop_next {
            return; // the request was read: close as if the keep-alive timeout had just struck
        }
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut request_line = head.lines().next().unwrap_or("").split(' ');
        let method = request_line.next().unwrap_or("");
        let path = request_line.next().unwrap_or("").to_string();
        drop_next = path == "/supporters/drop-next";
        let response = match path.as_str() {
            "/supporters/big" => {
                let mut r =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", 4 << 20).into_bytes();
                r.resize(r.len() + (4 << 20), b'x');
                r
            }
            "/supporters/empty" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/supporters/6k" => {
                let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 6000\r\n\r\n".to_vec();
                r.resize(r.len() + 6000, b'x');
                r
            }
            "/supporters/chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n".to_vec(),
            "/supporters/to-close" => {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil the end").await;
                return;
            }
            // Valid but unusual: bare LF line ends, padding around a value, an empty value.
            "/supporters/odd-head" => b"HTTP/1.1 200 OK\nx-spaced:   padded value  \r\nx-empty:\r\ncontent-length: 3\n\nodd".to_vec(),
            "/supporters/old" => b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\nx-old: yes\r\ncontent-length: 3\r\n\r\nold".to_vec(),
            // Two framings at once, a head over 64 KiB, more than 100 headers (the default
            // max_response_header_bytes and max_response_headers): answers no proxy may relay.
            "/supporters/two-framings" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            "/supporters/two-lengths" => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
            "/supporters/bad-length" => b"HTTP/1.1 200 OK\r\ncontent-length: +5\r\n\r\nhello".to_vec(),
            "/supporters/malformed" => b"HTTP/1.1 200 OK\r\nbad header line\r\ncontent-length: 2\r\n\r\nok".to_vec(),
            "/supporters/huge-head" => format!(
                "HTTP/1.1 200 OK\r\nx-huge: {}\r\ncontent-length: 2\r\n\r\nok",
                "h".repeat(100 * 1024)
            )
            .into_bytes(),
            "/supporters/many-headers" => {
                let lines: String = (0..120).map(|i| format!("x-h{i}: {i}\r\n")).collect();
                format!("HTTP/1.1 200 OK\r\n{lines}content-length: 2\r\n\r\nok").into_bytes()
            }
            "/supporters/hints" => b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhints".to_vec(),
            _ if path == "/supporters/slow" => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nslow".to_vec()
            }
            _ => {
                let body = format!("ok {path}");
                let mut r = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                if method != "HEAD" {
                    r.push_str(&body);
                }
                r.into_bytes()
            }
        };
        if stream.write_all(&response).await.is_err() {
            return;
        }
    }
}

fn idle_connections(status: &serde_json::Value) -> u64 {
    status["upstream_idle_connections"]
        .as_u64()
        .expect("upstream_idle_connections in /status")
}

/// One user calling `/supporters/*` on `upstream`, an admin listener, and extra `[server]` lines.
fn pool_config(upstream: &RawUpstream, key: &TestKey, server_extra: &str) -> String {
    with_admin(&one_user_config(&upstream.url(), "pool@example.org", key)).replace(
        "upstream_timeout = \"2s\"",
        &format!("upstream_timeout = \"2s\"\n{server_extra}"),
    )
}

both_transports! {
    async fn one_upstream_connection_serves_many_requests_and_clients() {
        let up = RawUpstream::start(None).await;
        let k = TestKey::new("poolreuse");
        let gw = TestGateway::start(&pool_config(&up, &k, "")).await;
        let admin = gw.gateway().admin_addr().unwrap();
        let key = [("x-api-key", k.key.as_str())];
        // Each `send` is a new client connection; requests follow one another, so one upstream
        // connection is enough, including after responses without a body (HEAD, 204).
        for i in 0..5 {
            let r = get(&gw.url(&format!("/supporters/{i}")), &key).await;
            assert_eq!(
                (r.status.as_u16(), &r.body[..]),
                (200, format!("ok /supporters/{i}").as_bytes())
            );
        }
        let r = send("HEAD", &gw.url("/supporters/h"), &key, "").await;
        assert_eq!(r.status, 200);
        let r = get(&gw.url("/supporters/empty"), &key).await;
        assert_eq!(r.status, 204);
        let r = get(&gw.url("/supporters/last"), &key).await;
        assert_eq!(&r.body[..], b"ok /supporters/last");
        assert_eq!(
            up.accepted(),
            1,
            "every request went over the one pooled connection"
        );
        assert_eq!(idle_connections(&status(admin).await), 1);
    }
}

both_transports! {
    async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
        let up = RawUpstream::start(Some(Duration::from_millis(50))).await;
        let k = TestKey::new("poolstale");
        let gw = TestGateway::start(&pool_config(&up, &k, "")).await;
        let key = [("x-api-key", k.key.as_str())];
        for round in 1..=3 {
            let r = get(&gw.url("/supporters/1"), &key).await;
            assert_eq!(
                r.status,
                200,
                "round {round}: {:?}",
                String::from_utf8_lossy(&r.body)
            );
            assert_eq!(&r.body[..], b"ok /supporters/1");
            // The upstream closes the connection 50 ms after answering.
            assert!(eventually(|| async { up.ended() == round }).await);
        }
        assert_eq!(up.accepted(), 3);
    }
}

/// A gateway whose one pooled upstream connection will take the next request and close without
/// answering it: `/supporters/drop-next` was asked for with `method`, on the path that method
/// takes, and the connection is back in the pool.
async fn pooled_connection_about_to_drop(
    label: &str,
    method: &str,
) -> (RawUpstream, TestKey, TestGateway) {
    let up = RawUpstream::start(None).await;
    let k = TestKey::new(label);
    let gw = TestGateway::start(&pool_config(&up, &k, "")).await;
    let admin = gw.gateway().admin_addr().unwrap();
    let r = send(
        method,
        &gw.url("/supporters/drop-next"),
        &[("x-api-key", k.key.as_str())],
        "",
    )
    .await;
    assert_eq!(&r.body[..], b"ok /supporters/drop-next");
    assert!(eventually(|| async { idle_connections(&status(admin).await) == 1 }).await);
    (up, k, gw)
}

both_transports! {
    /// The race no pool can avoid: the upstream closes a kept-alive connection just as the gateway
    /// writes the next request on it. The request (a GET, safe to send twice) goes again on a new
    /// connection, and the client never sees the failure.
    async fn a_request_the_upstream_closed_a_reused_connection_on_is_sent_again_on_a_new_one() {
        let (up, k, gw) = pooled_connection_about_to_drop("poolretry", "GET").await;
        let key = [("x-api-key", k.key.as_str())];
        let r = get(&gw.url("/supporters/after"), &key).await;
        assert_eq!(
            (r.status.as_u16(), &r.body[..]),
            (200, &b"ok /supporters/after"[..]),
            "{:?}",
            String::from_utf8_lossy(&r.body)
        );
        // The first connection took the request and closed; the second answered it.
        assert_eq!(up.accepted(), 2);
        assert!(eventually(|| async { up.ended() == 1 }).await);
    }
}

both_transports! {
    /// The same race with a POST, which is not safe to send twice: the upstream may have acted on
    /// it before closing. The client gets a 502 and the request is not sent again.
    async fn a_post_the_upstream_closed_a_reused_connection_on_is_not_sent_again() {
        let (up, k, gw) = pooled_connection_about_to_drop("poolnoretry", "POST").await;
        let key = [("x-api-key", k.key.as_str())];
        let r = send("POST", &gw.url("/supporters/after"), &key, "").await;
        assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(&r.body));
        assert!(eventually(|| async { up.ended() == 1 }).await);
        assert_eq!(up.accepted(), 1, "no second connection carried the POST");
    }
}

both_transports! {
    async fn a_response_the_client_abandoned_never_reaches_the_next_request() {
        let up = RawUpstream::start(None).await;
        let k = TestKey::new("poolabandon");
        let gw = TestGateway::start(&pool_config(&up, &k, "")).await;
        let mut client = TcpStream::connect(gw.addr).await.unwrap();
        client
            .write_all(get_with_key("/supporters/big", &k).as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        let n = client.read(&mut first).await.unwrap();
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
        drop(client);

        // The rest of the 4 MiB is still on the first upstream connection: it must be closed, not
        // handed to the next request.
        let key = [("x-api-key", k.key.as_str())];
        for _ in 0..3 {
            let r = get(&gw.url("/supporters/small"), &key).await;
            assert_eq!(
                (r.status.as_u16(), &r.body[..]),
                (200, &b"ok /supporters/small"[..])
            );
        }
        // Unless the kernel's buffers took the whole answer before the client went (then it
        // was complete and its connection rightly went back to the pool), the first connection
        // was closed and a second one serves: either way one upstream connection is left open.
        assert!(eventually(|| async { up.accepted() == up.ended() + 1 }).await);
        assert!(up.accepted() <= 2);
    }
}

both_transports! {
    async fn idle_upstream_connections_close_after_upstream_keepalive_timeout() {
        let up = RawUpstream::start(None).await;
        let k = TestKey::new("poolexpire");
        let gw = TestGateway::start(&pool_config(
            &up,
            &k,
            "upstream_keepalive_timeout = \"300ms\"",
        ))
        .await;
        let admin = gw.gateway().admin_addr().unwrap();
        let r = get(&gw.url("/supporters/1"), &[("x-api-key", k.key.as_str())]).await;
        assert_eq!(r.status, 200);
        assert_eq!(idle_connections(&status(admin).await), 1);
        // The sweep closes it: the upstream sees the connection end, and the pool is empty.
        assert!(eventually(|| async { up.ended() == 1 }).await);
        assert_eq!(idle_connections(&status(admin).await), 0);
        let r = get(&gw.url("/supporters/2"), &[("x-api-key", k.key.as_str())]).await;
        assert_eq!(r.status, 200);
        assert_eq!(up.accepted(), 2);
    }
}

both_transports! {
    async fn upstream_keepalive_connections_limits_the_pool_and_follows_reloads() {
        let up = RawUpstream::start(None).await;
        let k = TestKey::new("poollimit");
        let toml = pool_config(&up, &k, "upstream_keepalive_connections = 0");
        let gw = TestGateway::start(&toml).await;
        let admin = gw.gateway().admin_addr().unwrap();
        let key = [("x-api-key", k.key.as_str())];
        for _ in 0..3 {
            assert_eq!(get(&gw.url("/supporters/1"), &key).await.status, 200);
        }
        assert_eq!(up.accepted(), 3, "0 keeps no connection: one per request");
        assert!(eventually(|| async { up.ended() == 3 }).await);
        assert_eq!(idle_connections(&status(admin).await), 0);

        gw.replace_config(&toml.replace(
            "upstream_keepalive_connections = 0",
            "upstream_keepalive_connections = 1",
        ));
        let store = Arc::clone(gw.gateway().store());
        assert!(eventually(|| async { store.generation() == 2 }).await);
        // Two requests at once (each takes 300 ms upstream) need two connections; only one is
        // kept afterwards.
        let slow = gw.url("/supporters/slow");
        let (a, b) = tokio::join!(get(&slow, &key), get(&slow, &key));
        assert_eq!((a.status.as_u16(), b.status.as_u16()), (200, 200));
        assert_eq!(up.accepted(), 5);
        assert_eq!(idle_connections(&status(admin).await), 1);
        assert!(eventually(|| async { up.ended() == 4 }).await);
    }
}

both_transports! {
    async fn chunked_unframed_and_interim_responses_arrive_whole_on_a_reused_client_connection() {
        let up = RawUpstream::start(None).await;
        let (k, _gw, mut client) = pooled_client(&up, "poolframing").await;
        let ask = |path: &str| get_with_key(path, &k);
        // Chunked (with an extension and a trailer), then a 103 before the real answer, then a
        // plain one, all on one client connection: each response ends where it should.
        client.send(&ask("/supporters/chunked")).await;
        let (head, body) = client.next().await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        assert_eq!(body, "hello, world");
        client.send(&ask("/supporters/hints")).await;
        let (head, body) = client.next().await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body, "hints");
        client.send(&ask("/supporters/plain")).await;
        assert_eq!(client.next().await.1, "ok /supporters/plain");
        assert_eq!(up.accepted(), 1);

        // No length: the body runs to the upstream's close. The engine relays it so, and closes
        // the client connection too; hyper frames it anew (chunked). Either way it arrives whole.
        let last = ask("/supporters/to-close").replace("\r\n\r\n", "\r\nconnection: close\r\n\r\n");
        client.send(&last).await;
        let mut client = client.into_inner();
        let text = read_until_close(&mut client, Duration::from_secs(5)).await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("connection: close"), "{text}");
        if head.contains("transfer-encoding: chunked") {
            assert_eq!(
                body.to_ascii_lowercase(),
                "d\r\nuntil the end\r\n0\r\n\r\n",
                "{text}"
            );
        } else {
            assert_eq!(body, "until the end", "{text}");
        }
    }
}

both_transports! {
    async fn pipelined_requests_are_answered_in_order() {
        let up = RawUpstream::start(None).await;
        let (k, _gw, mut client) = pooled_client(&up, "poolpipe").await;
        let mut batch = String::new();
        for i in 0..3 {
            batch.push_str(&get_with_key(&format!("/supporters/{i}"), &k));
        }
        batch.push_str("GET /supporters/3 HTTP/1.1\r\nhost: x\r\n\r\n");
        client.send(&batch).await;
        for i in 0..3 {
            assert_eq!(client.next().await.1, format!("ok /supporters/{i}"));
        }
        let (head, body) = client.next().await;
        assert!(head.starts_with("HTTP/1.1 401"), "{head}");
        assert!(body.contains("missing_credentials"), "{body}");
    }
}

/// A gateway in front of `up` with one user, and a client connection to it.
async fn pooled_client(up: &RawUpstream, label: &str) -> (TestKey, TestGateway, Responses) {
    let k = TestKey::new(label);
    let gw = TestGateway::start(&pool_config(up, &k, "")).await;
    let client = Responses::new(TcpStream::connect(gw.addr).await.unwrap());
    (k, gw, client)
}

/// Reads one response at a time off a client connection (Content-Length or chunked bodies),
/// keeping what follows for the next.
struct Responses {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Responses {
    fn new(stream: TcpStream) -> Self {
        Responses {
            stream,
            buf: Vec::new(),
        }
    }

    fn into_inner(self) -> TcpStream {
        assert!(
            self.buf.is_empty(),
            "unread bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.stream
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut chunk))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next response's head and (decoded) body.
    async fn next(&mut self) -> (String, String) {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        let mut at = head_end;
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let Some(line_end) = self.buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    self.fill().await;
                    continue;
                };
                let line = String::from_utf8_lossy(&self.buf[at..at + line_end]).into_owned();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
                if size == 0 {
                    // Trailer lines, then the empty line.
                    let rest = at + line_end + 2;
                    let Some(end) = self.buf[rest..]
                        .windows(4)
                        .position(|w| w == b"\r\n\r\n")
                        .map(|i| rest + i + 4)
                        .or_else(|| self.buf[rest..].starts_with(b"\r\n").then_some(rest + 2))
                    else {
                        self.fill().await;
                        continue;
                    };
                    at = end;
                    break;
                }
                let data = at + line_end + 2;
                if self.buf.len() < data + size + 2 {
                    self.fill().await;
                    continue;
                }
                body.extend_from_slice(&self.buf[data..data + size]);
                at = data + size + 2;
            }
        } else {
            let len = lower
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            while self.buf.len() < head_end + len {
                self.fill().await;
            }
            body.extend_from_slice(&self.buf[head_end..head_end + len]);
            at = head_end + len;
        }
        self.buf.drain(..at);
        (head, String::from_utf8(body).unwrap())
    }
}

both_transports! {
    /// What one parser could read differently from another is never relayed: a response with
    /// both Content-Length and Transfer-Encoding, two lengths that disagree, a length that is not
    /// a number, a line that is not a header, or a head beyond the limits (64 KiB, 100
    /// headers), is a 502 `upstream_invalid_response` on either transport, and its upstream connection is closed, not reused.
    async fn responses_no_proxy_may_relay_are_502_and_their_connection_closed() {
        let up = RawUpstream::start(None).await;
        let k = TestKey::new("badanswers");
        let gw = TestGateway::start(&pool_config(&up, &k, "")).await;
        let key = [("x-api-key", k.key.as_str())];
        let paths = [
            "two-framings",
            "two-lengths",
            "bad-length",
            "malformed",
            "huge-head",
            "many-headers",
        ];
        for (i, path) in paths.iter().enumerate() {
            for method in ["GET", "POST"] {
                let r = send(method, &gw.url(&format!("/supporters/{path}")), &key, "").await;
                assert_eq!(r.status, 502, "{method} {path}: {:?}", r.headers);
                assert_eq!(r.error_code(), "upstream_invalid_response", "{method} {path}");
            }
            let closed = 2 * (i + 1);
            assert!(
                eventually(|| async { up.ended() == closed }).await,
                "{path}: the connection it came on was not closed ({} of {closed})",
                up.ended()
            );
        }
        let r = get(&gw.url("/supporters/plain"), &key).await;
        assert_eq!(&r.body[..], b"ok /supporters/plain");
    }
}

both_transports! {
    async fn unusual_response_heads_reach_the_client_in_canonical_form() {
        let up = RawUpstream::start(None).await;
        let (k, _gw, mut client) = pooled_client(&up, "oddhead").await;
        let ask = |path: &str| get_with_key(path, &k);
        // Lines that are already `name: value\r\n` are copied as they are; the others are
        // rewritten in that form. Either way, every line the client sees ends in CRLF.
        client.send(&ask("/supporters/odd-head")).await;
        let (head, body) = client.next().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
        assert!(head.contains("\r\nx-spaced: padded value\r\n"), "{head:?}");
        assert!(head.contains("\r\nx-empty: \r\n"), "{head:?}");
        let bare_lf = head
            .char_indices()
            .any(|(i, c)| c == '\n' && !head[..i].ends_with('\r'));
        assert!(!bare_lf, "a line ends in a bare LF: {head:?}");
        assert_eq!(body, "odd");
        // An HTTP/1.0 answer goes out as HTTP/1.1, without the upstream's Connection header.
        client.send(&ask("/supporters/old")).await;
        let (head, body) = client.next().await;
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
        assert!(head.contains("\r\nx-old: yes\r\n"), "{head:?}");
        assert!(
            !head.to_ascii_lowercase().contains("keep-alive"),
            "{head:?}"
        );
        assert_eq!(body, "old");
        // The connection is still in step: a plain request after them is answered.
        client.send(&ask("/supporters/plain")).await;
        assert_eq!(client.next().await.1, "ok /supporters/plain");
    }
}

both_transports! {
    async fn a_client_that_stops_reading_its_answers_is_cut_off_after_idle_timeout() {
        let up = RawUpstream::start(None).await;
        let k = TestKey::new("noreader");
        let gw = TestGateway::start(&pool_config(&up, &k, "idle_timeout = \"500ms\"")).await;
        let admin = gw.gateway().admin_addr().unwrap();
        // A client that pipelines requests for 6 KB answers and never reads: its small receive
        // window and then the gateway's send buffer fill, and the gateway's write has to wait.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let (_unread, mut writer) = socket.connect(gw.addr).await.unwrap().into_split();
        let batch = get_with_key("/supporters/6k", &k).repeat(100);
        let writing = tokio::spawn(async move {
            // Until the gateway closes the connection (or stops reading, and this write waits).
            while writer.write_all(batch.as_bytes()).await.is_ok() {}
        });
        let open = || async {
            let reply = get(&format!("http://{admin}/metrics"), &[]).await;
            let metrics = String::from_utf8_lossy(&reply.body).into_owned();
            metrics
                .lines()
                .find_map(|l| l.strip_prefix("apiward_open_connections "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        };
        assert!(eventually(|| async { open().await == Some(1.0) }).await);
        // The gateway's writes now wait for a client that never reads: after idle_timeout it
        // closes the connection instead of waiting for ever.
        assert!(
            eventually(|| async { open().await == Some(0.0) }).await,
            "a connection whose client stopped reading stayed open"
        );
        writing.abort();
    }
}
