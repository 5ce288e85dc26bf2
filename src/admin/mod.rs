//! The admin listener (`[server] admin_listen`): /metrics, /healthz, /readyz, /status and /keys
//! (open, like a status page), and behind an admin login or token the management API
//! (`/api/v1`, [`api`]) and the console pages ([`console`]). It is a separate listener, never
//! the public one: API users' keys are refused here, admin tokens are unknown there.

mod api;
mod console;
mod context;
mod html;
mod session;
mod write;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::snapshot::rfc3339;
pub use context::AdminState;
use context::{AdminRequest, AdminResponse, Ctx, error, json_with};
use session::{Logins, Sessions};

/// Request bodies larger than this (a form, a JSON document) are refused.
const MAX_BODY: usize = 64 * 1024;

pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let ctx = Arc::new(Ctx {
        state,
        sessions: Sessions::default(),
        logins: Logins::default(),
        tls: false,
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else { continue };
                let ctx = Arc::clone(&ctx);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let ctx = Arc::clone(&ctx);
                        async move { Ok::<_, Infallible>(handle(&ctx, req, peer).await) }
                    });
                    let _ = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(std::time::Duration::from_secs(10))
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn handle(ctx: &Ctx, req: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
    let snapshot = ctx.state.store.load_full();
    if !session::host_allowed(req.headers(), &snapshot.console.admin_hosts) {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "this Host is not the admin listener's: use its IP address, localhost, or a name listed in [server] admin_hosts\n",
        );
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/metrics" | "/healthz" | "/readyz" | "/status" | "/keys" => {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
            }
            return open_endpoint(&ctx.state, &path);
        }
        "/assets/console.css" => return html::asset(html::CSS, "text/css; charset=utf-8"),
        "/assets/console.js" => return html::asset(html::JS, "text/javascript; charset=utf-8"),
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than 64 KiB or could not be read",
            );
        }
    };
    let request = AdminRequest {
        method: parts.method,
        query: parts.uri.query().map(str::to_string),
        path,
        headers: parts.headers,
        body,
        peer,
    };
    if request.path == "/api/v1" || request.path.starts_with("/api/v1/") {
        api::handle(ctx, &request).await
    } else {
        console::handle(ctx, &request).await
    }
}

/// The endpoints that need no login: what they reveal is listed in docs/console.md.
fn open_endpoint(state: &AdminState, path: &str) -> AdminResponse {
    match path {
        "/metrics" => {
            let mut text = state.telemetry.metrics.render();
            state.limits.render_metrics(&mut text);
            crate::observe::metrics::render_certificates(&mut text, &state.store.load());
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n")
            }
        }
        "/status" => json(status(state)),
        _ => json(keys(state)),
    }
}

fn status(state: &AdminState) -> serde_json::Value {
    let snapshot = state.store.load();
    let failure = state.store.last_failure();
    serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": state.public_addr.to_string(),
        "config_file": state.store.path().display().to_string(),
        "config_generation": state.store.generation(),
        "loaded_at": rfc3339(state.store.loaded_at_unix()),
        "reloads_applied": state.store.reloads_applied(),
        "reloads_failed": state.store.reloads_failed(),
        "last_reload_error": failure.as_ref().map(|f| serde_json::json!({
            "at": rfc3339(f.at_unix),
            "message": f.message,
        })),
        "users": snapshot.users.len(),
        "keys": snapshot.keys.len(),
        "groups": snapshot.groups.len(),
        "routes": snapshot.routes.len(),
        "upstreams": snapshot.upstreams.len(),
        "upstream_idle_connections": state.proxy.idle_upstream_connections(),
        "upstream_targets": state.proxy.upstream_targets(),
        "fast_path_requests": state.proxy.fast_path_requests(),
        "connections_handed_to_hyper": state.proxy.connections_handed_over(),
        "worker_connections": state.proxy.worker_connections(),
        "worker_open_connections": state.proxy.worker_open_connections(),
        "rate_limits": crate::limits::describe::status(&state.limits, &snapshot),
        "uptime_seconds": state.started.elapsed().as_secs(),
        "tls": snapshot.tls.as_ref().map(|tls| serde_json::json!({
            "client_certificates_asked": tls.asks_client_certificate(),
            "certificates": tls.certificates().iter().map(|c| serde_json::json!({
                "file": c.cert_file.display().to_string(),
                "names": c.names,
                "not_after": rfc3339(c.not_after),
            })).collect::<Vec<_>>(),
        })),
    })
}

/// Every key of the current snapshot with its user, prefix and last use (null if never used
/// since the gateway started), and every user's password with its last use, so stale
/// credentials can be found.
fn keys(state: &AdminState) -> serde_json::Value {
    let snapshot = state.store.load();
    let mut keys: Vec<serde_json::Value> = snapshot
        .keys
        .iter()
        .map(|(digest, key)| {
            serde_json::json!({
                "user": &*snapshot.user(key.user).id,
                "prefix": key.prefix.as_deref(),
                "sha256": digest.to_hex(),
                "created": key.created.map(rfc3339),
                "expires": key.expires.map(rfc3339),
                "last_used": state.telemetry.key_usage.last_used(digest).map(rfc3339),
                "last_refused": state.telemetry.key_usage.last_refused(digest).map(rfc3339),
            })
        })
        .collect();
    keys.sort_by(|a, b| {
        a["user"]
            .as_str()
            .cmp(&b["user"].as_str())
            .then(a["prefix"].as_str().cmp(&b["prefix"].as_str()))
    });
    let passwords: Vec<serde_json::Value> = snapshot
        .users
        .iter()
        .filter(|u| u.password_hash.is_some())
        .map(|u| {
            serde_json::json!({
                "user": &*u.id,
                "last_used": state.telemetry.key_usage.password_last_used(u).map(rfc3339),
                "last_refused": state.telemetry.key_usage.password_last_refused(u).map(rfc3339),
            })
        })
        .collect();
    serde_json::json!({ "keys": keys, "passwords": passwords })
}

fn text(status: StatusCode, body: &'static str) -> AdminResponse {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json(value: serde_json::Value) -> AdminResponse {
    json_with(StatusCode::OK, &value)
}
