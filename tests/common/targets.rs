//! Upstream targets for the balancing tests: real HTTP servers on loopback ports that say who
//! they are, count what reached them, and can be made unhealthy, hung, killed and restarted;
//! plain HTTP/1.1, or HTTPS speaking HTTP/1.1 or HTTP/2 as ALPN agrees.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;

/// What a target does, changeable while it runs.
#[derive(Default)]
pub struct Behaviour {
    /// `/healthz` answers 503.
    pub unhealthy: AtomicBool,
    /// Every request is read and never answered.
    pub hang: AtomicBool,
    /// The `Host` (HTTP/2: `:authority`) of the last health check received.
    pub check_host: Mutex<String>,
    /// The HTTP version of the last health check received.
    pub check_version: Mutex<Option<http::Version>>,
    /// Connections open now (accepted and not yet closed by either side).
    pub open: AtomicUsize,
}

/// A target: answers `GET /healthz` with 200 (or 503 when unhealthy), `/slow...` after 2 s
/// (`/slower...` after 3 s),
/// anything else at once, each with its name as the body and in `x-target`, and the path it saw
/// and the `Host` in `x-seen-path` and `x-seen-host`.
pub struct Target {
    pub name: &'static str,
    pub addr: SocketAddr,
    /// Requests answered or being answered, health checks not included.
    pub hits: Arc<AtomicUsize>,
    /// Health checks received.
    pub checks: Arc<AtomicUsize>,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    pub behaviour: Arc<Behaviour>,
    tasks: Arc<Mutex<Vec<AbortHandle>>>,
    /// Set: the target speaks TLS only (`https://`), HTTP/1.1 or HTTP/2 by ALPN.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Target {
    pub async fn start(name: &'static str) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        Target::serve(name, listener, None)
    }

    /// An HTTPS target: TLS with `config` (its certificate and ALPN), then HTTP/1.1 or HTTP/2.
    pub async fn start_tls(name: &'static str, config: Arc<rustls::ServerConfig>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind target");
        Target::serve(
            name,
            listener,
            Some(tokio_rustls::TlsAcceptor::from(config)),
        )
    }

    /// Starts again on the address it had, after `kill`, counting on.
    pub async fn restart(&self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind target");
        self.behaviour.hang.store(false, Ordering::Relaxed);
        self.accept(listener);
    }

    fn serve(
        name: &'static str,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Target {
        let addr = listener.local_addr().expect("target address");
        let hits = Arc::new(AtomicUsize::new(0));
        let checks = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Behaviour::default());
        let tasks: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let target = Target {
            name,
            addr,
            hits,
            checks,
            connections,
            behaviour,
            tasks,
            tls,
        };
        target.accept(listener);
        target
    }

    fn accept(&self, listener: TcpListener) {
        let tls = self.tls.clone();
        let (name, hits, checks, connections, behaviour, tasks) = (
            self.name,
            Arc::clone(&self.hits),
            Arc::clone(&self.checks),
            Arc::clone(&self.connections),
            Arc::clone(&self.behaviour),
            Arc::clone(&self.tasks),
        );
        let registry = Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.fetch_add(1, Ordering::Relaxed);
                let (hits, checks, behaviour) = (
                    Arc::clone(&hits),
                    Arc::clone(&checks),
                    Arc::clone(&behaviour),
                );
                behaviour.open.fetch_add(1, Ordering::SeqCst);
                let tls = tls.clone();
                let conn = tokio::spawn(async move {
                    let open = Arc::clone(&behaviour);
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (hits, checks, behaviour) = (
                            Arc::clone(&hits),
                            Arc::clone(&checks),
                            Arc::clone(&behaviour),
                        );
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                answer(name, req, &hits, &checks, &behaviour).await,
                            )
                        }
                    });
                    match tls {
                        None => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                let _ = hyper_util::server::conn::auto::Builder::new(
                                    hyper_util::rt::TokioExecutor::new(),
                                )
                                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                .await;
                            }
                        }
                    }
                    open.open.fetch_sub(1, Ordering::SeqCst);
                });
                registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(conn.abort_handle());
            }
        });
        tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(accept.abort_handle());
    }

    /// Stops listening and closes every connection, as a crashed server would.
    pub async fn kill(&self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
        // Let the aborted tasks drop their sockets.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    pub fn url(&self) -> String {
        match self.tls {
            None => format!("http://{}", self.addr),
            Some(_) => format!("https://{}", self.addr),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

async fn answer(
    name: &'static str,
    req: Request<Incoming>,
    hits: &AtomicUsize,
    checks: &AtomicUsize,
    behaviour: &Behaviour,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let host = req
        .headers()
        .get("host")
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    if path == "/healthz" {
        checks.fetch_add(1, Ordering::Relaxed);
        *behaviour
            .check_version
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(req.version());
        *behaviour
            .check_host
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = host.clone();
        let status = if behaviour.unhealthy.load(Ordering::Relaxed) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
        *r.status_mut() = status;
        return r;
    }
    hits.fetch_add(1, Ordering::Relaxed);
    if behaviour.hang.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    let _ = req.into_body().collect().await;
    if path.contains("/slower") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    } else if path.contains("/slow") {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Response::builder()
        .header("x-target", name)
        .header("x-seen-path", path)
        .header("x-seen-host", host)
        .body(Full::new(Bytes::from(name)))
        .expect("response")
}

/// Three targets, `a`, `b` and `c`.
pub async fn three_targets() -> [Target; 3] {
    [
        Target::start("a").await,
        Target::start("b").await,
        Target::start("c").await,
    ]
}

/// A gateway configuration: upstream `api` with `targets` (TOML of the array's entries) and the
/// other upstream lines in `options`, one route `/api/` to it (with `route` lines), and one
/// user `u@example.org` with `key` allowed to view, create and modify under `/api/`.
pub fn cluster_config(targets: &str, options: &str, route: &str, key: &super::TestKey) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
upstream_timeout = "5s"
connect_timeout = "500ms"

[upstreams.api]
targets = [{targets}]
{options}

[[routes]]
prefix = "/api/"
upstream = "api"
{route}

[groups.users]
allow = [{{ path = "/api/**", verbs = ["view", "create", "modify"] }}]

{}"#,
        super::user("u@example.org", "active", "users", "127.0.0.1", &[key])
    )
}

/// `{ url = "..." }` entries for `targets`, with weights when given.
pub fn entries(targets: &[&Target], weights: &[u32]) -> String {
    targets
        .iter()
        .enumerate()
        .map(|(i, t)| match weights.get(i) {
            Some(w) => format!("{{ url = \"{}\", weight = {w} }}", t.url()),
            None => format!("{{ url = \"{}\" }}", t.url()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Which of the gateway's two request paths a request takes.
#[derive(Debug, Clone, Copy)]
pub enum Path {
    Fast,
    Hyper,
}

pub const BOTH: [Path; 2] = [Path::Fast, Path::Hyper];

/// GET `url` with `key` by `path`.
pub async fn get_via(path: Path, url: &str, key: &super::TestKey) -> super::Reply {
    match path {
        Path::Fast => super::get(url, &[("x-api-key", &key.key)]).await,
        // A `Connection` header naming another header: the engine hands the request to hyper.
        Path::Hyper => {
            super::get(
                url,
                &[
                    ("x-api-key", &key.key),
                    ("connection", "x-hop"),
                    ("x-hop", "1"),
                ],
            )
            .await
        }
    }
}

/// The name a target answered with (its body).
pub fn target_of(reply: &super::Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The `/status` entry of the target at `url`.
pub async fn target_status(admin: SocketAddr, url: &str) -> serde_json::Value {
    super::status(admin).await["upstream_targets"]
        .as_array()
        .expect("upstream_targets")
        .iter()
        .find(|t| t["url"] == url)
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}
