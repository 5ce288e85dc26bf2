//! Test support: a real upstream, the real gateway in front of it from a TOML string, and clients,
//! all on ephemeral loopback ports handed over as bound listeners (no port races).
#![allow(dead_code)]

pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use apiward::{Gateway, Options};

pub mod process;
pub mod redis_server;
pub mod targets;
pub mod websocket;

/// A key and its digest, for building configs.
pub struct TestKey {
    pub key: String,
    pub sha256: String,
}

impl TestKey {
    pub fn new(label: &str) -> TestKey {
        // Test keys have the real shape (aw_ + 43 base62 characters) but are derived from a label.
        let mut body: String = format!("{label}TESTKEY")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        while body.len() < 43 {
            body.push('0');
        }
        let key = format!("aw_{body}");
        TestKey {
            sha256: apiward::snapshot::KeyDigest::of(&key).to_hex(),
            key,
        }
    }
}

/// A real HTTP upstream on 127.0.0.1 that describes what reached it as JSON
/// (method, path, query, headers, body length) and can be told to misbehave.
pub struct Upstream {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The default upstream: answers every request with the JSON description of it.
pub async fn echo_upstream() -> Upstream {
    upstream_with(|req| async move { describe(req).await }).await
}

/// An upstream with a custom handler.
pub async fn upstream_with<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let handler = Arc::clone(&handler);
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream { addr, task }
}

/// An upstream that answers every request with exactly `answer` (raw bytes, as a misbehaving
/// server would write them) and then closes the connection.
pub async fn scripted_upstream(answer: Vec<u8>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    let answer = Arc::new(answer);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                // The request head, then as many body bytes as it says.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + length {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = stream.write_all(&answer).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    Upstream { addr, task }
}

/// Reads the whole request body and describes the request.
pub async fn describe(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values: Vec<serde_json::Value> = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        headers.insert(name.as_str().into(), serde_json::Value::Array(values));
    }
    let doc = serde_json::json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body_sha256": apiward::snapshot::KeyDigest::of(&String::from_utf8_lossy(&body)).to_hex(),
    });
    Response::new(Full::new(Bytes::from(doc.to_string())))
}

/// Which of the gateway's two transports serves a test's requests: the HTTP/1 engine first (the
/// default, `fast_path = true`), or hyper's server for every request (`fast_path = false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    FastPath,
    HyperOnly,
}

tokio::task_local! {
    static TRANSPORT: Transport;
}

/// The transport of the test running now (`both_transports!` sets it; `FastPath` otherwise).
pub fn transport() -> Transport {
    TRANSPORT.try_with(|t| *t).unwrap_or(Transport::FastPath)
}

/// Runs `body` with `transport` as the one every gateway it starts serves with.
pub async fn on_transport<F: Future>(transport: Transport, body: F) -> F::Output {
    TRANSPORT.scope(transport, body).await
}

/// `toml` as the current transport needs it: unchanged for the fast path, with
/// `fast_path = false` in `[server]` for hyper only.
pub fn for_transport(toml: &str) -> String {
    match transport() {
        Transport::FastPath => toml.to_string(),
        Transport::HyperOnly => with_server_setting(toml, "fast_path = false"),
    }
}

/// `toml` with `line` added to its `[server]` table (which is added if there is none).
pub fn with_server_setting(toml: &str, line: &str) -> String {
    if toml.contains(line) {
        return toml.to_string();
    }
    match toml.find("[server]\n") {
        Some(at) => {
            let end = at + "[server]\n".len();
            format!("{}{line}\n{}", &toml[..end], &toml[end..])
        }
        None => format!("[server]\n{line}\n\n{toml}"),
    }
}

/// Declares each `async fn name() { body }` as two tests, `name::fast_path` and
/// `name::hyper_only`: the same body against gateways that serve with the fast path, and with
/// `fast_path = false` (hyper for every request), so the request contract is stated once and
/// checked on both transports.
#[macro_export]
macro_rules! both_transports {
    ($($(#[$attr:meta])* async fn $name:ident() $body:block)*) => {$(
        $(#[$attr])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fast_path() {
                $crate::common::on_transport($crate::common::Transport::FastPath, async $body)
                    .await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hyper_only() {
                $crate::common::on_transport($crate::common::Transport::HyperOnly, async $body)
                    .await
            }
        }
    )*};
}

/// The gateway, started from a TOML string written to a temporary directory. Under
/// `both_transports!` it serves with the test's transport (`for_transport`).
pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl TestGateway {
    /// Starts on 127.0.0.1 with file watching on.
    pub async fn start(toml: &str) -> TestGateway {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind gateway");
        TestGateway::start_on(toml, listener).await
    }

    pub async fn start_on(toml: &str, listener: std::net::TcpListener) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("apiward.toml");
        std::fs::write(&config_path, toml).expect("write config");
        TestGateway::start_at(dir, config_path, listener).await
    }

    /// Starts with the configuration at `config_path` (inside `dir`, which the gateway keeps alive).
    pub async fn start_at(
        dir: tempfile::TempDir,
        config_path: PathBuf,
        listener: std::net::TcpListener,
    ) -> TestGateway {
        if transport() == Transport::HyperOnly {
            let toml = std::fs::read_to_string(&config_path).expect("read config");
            std::fs::write(&config_path, for_transport(&toml)).expect("write config");
        }
        let gateway = Gateway::start(&config_path, Some(listener), Options::default())
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        TestGateway {
            addr: gateway.local_addr(),
            gateway: Some(gateway),
            dir,
            config_path,
        }
    }

    /// Starts as `apiward run` does: the workers `[server] workers` and `worker_runtime` ask
    /// for (threads of their own with `per_worker`), listening where `listen` says (port 0:
    /// one ephemeral port that every worker shares).
    pub async fn start_with_workers(toml: &str) -> TestGateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("apiward.toml");
        std::fs::write(&config_path, for_transport(toml)).expect("write config");
        let options = Options {
            runtimes: apiward::Runtimes::FromConfig,
            ..Options::default()
        };
        let gateway = Gateway::start(&config_path, None, options)
            .await
            .unwrap_or_else(|e| panic!("gateway did not start: {e}"));
        TestGateway {
            addr: gateway.local_addr(),
            gateway: Some(gateway),
            dir,
            config_path,
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    /// Replaces the configuration the way editors do: write a temporary file, rename it over.
    pub fn replace_config(&self, toml: &str) {
        replace_file(&self.config_path, &for_transport(toml));
    }

    pub async fn shutdown(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }
}

pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).expect("write temp config");
    std::fs::rename(&tmp, path).expect("rename config");
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error` code of a refusal.
    pub fn error_code(&self) -> String {
        self.json()["error"].as_str().unwrap_or("").to_string()
    }

    /// A header the upstream saw, from the JSON description; None if absent.
    pub fn upstream_header(&self, name: &str) -> Option<Vec<String>> {
        self.json()["headers"][name].as_array().map(|a| {
            a.iter()
                .map(|v| v.as_str().unwrap_or("").to_string())
                .collect()
        })
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request with the given method, URL, headers and body.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(20), client().request(request))
        .await
        .expect("no response within 20s")
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    send("GET", url, headers, "").await
}

/// Writes raw bytes on a new connection and reads until the server closes it (or 5s pass).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_until_close(&mut stream, Duration::from_secs(5)).await
}

pub async fn read_until_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a Content-Length body from a keep-alive connection; what arrived
/// so far if the server closes it or 5 s pass.
pub async fn read_response(conn: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut chunk))
            .await
            .map_or(0, |r| r.unwrap_or(0));
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                break;
            }
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A keep-alive GET request head for `path` with the user's key in `X-Api-Key`.
pub fn get_with_key(path: &str, k: &TestKey) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nhost: x\r\nx-api-key: {}\r\n\r\n",
        k.key
    )
}

/// Polls `check` until it returns true, for up to 10 seconds; returns whether it did.
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A config with one upstream, routes, two groups and the given users (TOML for `[users.*]` tables).
pub fn config(upstream_url: &str, users: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
upstream_timeout = "2s"

[upstreams.api]
url = "{upstream_url}"

[upstreams.echo]
url = "builtin:echo"

[[routes]]
prefix = "/supporters/"
upstream = "api"

[[routes]]
prefix = "/pages/"
upstream = "api"

[[routes]]
prefix = "/echo/"
upstream = "echo"

[groups.manage-supporters]
allow = [
  {{ path = "/supporters/**", verbs = ["view", "create", "modify"] }},
  {{ path = "/pages/*", verbs = ["view"] }},
  {{ path = "/echo/**", verbs = ["view", "create"] }},
]

[groups.nothing]
allow = []

{users}
"#
    )
}

/// `config` with one active user in `manage-supporters`, calling from 127.0.0.1 with `key`.
pub fn one_user_config(upstream_url: &str, id: &str, key: &TestKey) -> String {
    config(
        upstream_url,
        &user(id, "active", "manage-supporters", "127.0.0.1", &[key]),
    )
}

/// Runs the apiward binary with `args` and `--config config`, writes `stdin` to it, and waits.
pub fn run_apiward(config: &Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_apiward"))
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run apiward");
    // A command that does not read stdin may exit before it is written: a broken pipe is fine.
    if let Err(e) = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
    {
        assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
    }
    child.wait_with_output().expect("apiward output")
}

/// `toml` (made by `config`) with an admin listener on an ephemeral loopback port.
pub fn with_admin(toml: &str) -> String {
    toml.replace(
        "upstream_timeout = \"2s\"",
        "upstream_timeout = \"2s\"\nadmin_listen = \"127.0.0.1:0\"",
    )
}

/// `GET /status` of the admin listener at `admin`, as JSON.
pub async fn status(admin: SocketAddr) -> serde_json::Value {
    get(&format!("http://{admin}/status"), &[]).await.json()
}

/// Two active users in `manage-supporters`: `good@example.org` calling from 127.0.0.1 (where the
/// tests run) and `far@example.org`, whose whitelist (192.0.2.1) the tests never match.
pub fn good_and_far_users(good: &TestKey, far: &TestKey) -> String {
    user(
        "good@example.org",
        "active",
        "manage-supporters",
        "127.0.0.1",
        &[good],
    ) + &user(
        "far@example.org",
        "active",
        "manage-supporters",
        "192.0.2.1",
        &[far],
    )
}

/// A `[users."id"]` table.
pub fn user(id: &str, status: &str, group: &str, addresses: &str, keys: &[&TestKey]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|k| {
            format!(
                "{{ sha256 = \"{}\", created = 2026-01-01T00:00:00Z }}",
                k.sha256
            )
        })
        .collect();
    format!(
        "[users.\"{id}\"]\nstatus = \"{status}\"\ngroup = \"{group}\"\nremote_addresses = \"{addresses}\"\nkeys = [{}]\n\n",
        keys.join(", ")
    )
}

/// An admin token of the real shape (`awa_` + 43 base62 characters), derived from a label.
pub fn admin_token(label: &str) -> TestKey {
    let k = TestKey::new(label);
    let key = format!("awa_{}", &k.key[3..]);
    TestKey {
        sha256: apiward::snapshot::KeyDigest::of(&key).to_hex(),
        key,
    }
}

/// `toml` with an admin listener and `[admins."ops@example.org"]` holding `token`.
pub fn with_admin_account(toml: &str, token: &TestKey) -> String {
    format!(
        "{}\n[admins.\"ops@example.org\"]\ntokens = [{{ sha256 = \"{}\", prefix = \"{}\" }}]\n",
        with_admin(toml),
        token.sha256,
        &token.key[..8]
    )
}

/// The admin API at `admin`: `method path` with `Authorization: Bearer token` and a JSON body.
pub async fn admin_api(
    admin: SocketAddr,
    token: &TestKey,
    method: &str,
    path: &str,
    body: &str,
) -> Reply {
    let auth = format!("Bearer {}", token.key);
    send(
        method,
        &format!("http://{admin}/api/v1{path}"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await
}

/// The next frame of a response body, within 10 s.
pub async fn next_frame(body: &mut Incoming) -> hyper::body::Frame<Bytes> {
    tokio::time::timeout(Duration::from_secs(10), body.frame())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("not an error")
}

/// A gRPC-style exchange over HTTP/2 on `io` (the gateway's connection, plain or TLS): a
/// streaming POST of two messages to `uri` with `key` and `TE: trailers`. The upstream must see
/// `TE: trailers`, the first message must come back before the second is sent (streamed, not
/// buffered), and the body must end with the upstream's grpc trailers.
pub async fn grpc_style_exchange<T>(io: T, uri: &str, key: &str)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(conn);
    let (mut body_tx, body) =
        http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(4);
    let request = Request::builder()
        .method("POST")
        .uri(uri)
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-api-key", key)
        .body(body)
        .expect("request");
    body_tx
        .send_data(Bytes::from_static(b"one"))
        .await
        .expect("send one");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("response head in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-seen-te"],
        "trailers",
        "TE: trailers reaches the upstream"
    );
    let mut body = response.into_body();
    assert_eq!(
        next_frame(&mut body).await.into_data().expect("data"),
        "one"
    );
    body_tx
        .send_data(Bytes::from_static(b"two"))
        .await
        .expect("send two");
    assert_eq!(
        next_frame(&mut body).await.into_data().expect("data"),
        "two"
    );
    drop(body_tx);
    let trailers = next_frame(&mut body)
        .await
        .into_trailers()
        .expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");
}
