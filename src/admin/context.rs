//! What every admin handler shares: the state reported on, the listener's own (sessions,
//! logins), a request as handlers see it, and the JSON answers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body_util::Full;

use super::session::{Logins, Sessions};
use crate::config::reload::ConfigStore;
use crate::observe::Telemetry;

/// What the admin endpoints report on.
pub struct AdminState {
    pub store: Arc<ConfigStore>,
    pub telemetry: Arc<Telemetry>,
    pub started: Instant,
    pub public_addr: std::net::SocketAddr,
    /// False once shutdown has begun: /readyz then says 503 so load balancers drain the gateway.
    pub ready: AtomicBool,
    /// Counts kept by the proxy: idle upstream connections, fast-path requests.
    pub proxy: Arc<dyn crate::proxy::ProxyStats>,
    /// Rate, quota and concurrency state, for /metrics and /status.
    pub limits: Arc<crate::limits::Limiter>,
}

/// The admin listener's own state beside what it reports on: sessions and logins.
pub(crate) struct Ctx {
    pub state: Arc<AdminState>,
    pub sessions: Sessions,
    pub logins: Logins,
    /// Whether the listener speaks TLS (the session cookie is `Secure` then). It is plain HTTP
    /// today: bind it to loopback or a management network.
    pub tls: bool,
}

/// A request as the handlers see it: head, whole body, and the client's address.
pub(crate) struct AdminRequest {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

pub type AdminResponse = Response<Full<Bytes>>;

pub(crate) fn json_with(status: StatusCode, value: &serde_json::Value) -> AdminResponse {
    let mut body = serde_json::to_string_pretty(value).unwrap_or_default();
    body.push('\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    r
}

/// A JSON error like the public listener's: `{"error": code, "message": ...}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> AdminResponse {
    json_with(
        status,
        &serde_json::json!({ "error": code, "message": message }),
    )
}
