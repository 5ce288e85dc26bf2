//! Serde types that mirror the TOML file exactly, with the spans needed to point errors at a line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;
use toml::value::Datetime;

/// The whole file. Every table refuses unknown fields, so a typo is an error, not a silent default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub server: Option<RawServer>,
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub groups: BTreeMap<Spanned<String>, RawGroup>,
    #[serde(default)]
    pub users: BTreeMap<Spanned<String>, Spanned<RawUser>>,
    #[serde(default)]
    pub admins: BTreeMap<Spanned<String>, Spanned<RawAdmin>>,
    pub rate_limits: Option<RawRateLimits>,
}

/// `[rate_limits]`: where limit state lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimits {
    pub store: Option<Spanned<String>>,
    pub on_store_error: Option<Spanned<String>>,
    /// `true`: the upstream gets `X-Apiward-RateLimit-Remaining` on a limited user's requests.
    pub forward_remaining: Option<bool>,
}

/// `rate_limit = { requests = 100, per = "1s", burst = 50 }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub requests: Spanned<i64>,
    pub per: Spanned<String>,
    #[serde(default)]
    pub burst: Option<Spanned<i64>>,
}

/// `quota = { requests = 1_000_000, per = "30d" }`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQuota {
    pub requests: Spanned<i64>,
    pub per: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<String>>,
    pub admin_listen: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub key_header: Option<Spanned<String>>,
    pub credential_headers: Option<Vec<Spanned<String>>>,
    pub workers: Option<Spanned<i64>>,
    pub worker_runtime: Option<Spanned<String>>,
    pub connection_balance: Option<Spanned<String>>,
    pub organisation: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub upstream_timeout: Option<Spanned<String>>,
    pub upstream_keepalive_timeout: Option<Spanned<String>>,
    pub upstream_keepalive_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub max_header_bytes: Option<Spanned<i64>>,
    pub max_connections: Option<Spanned<i64>>,
    pub max_connections_per_source: Option<Spanned<i64>>,
    pub max_response_headers: Option<Spanned<i64>>,
    pub response_timeout: Option<Spanned<String>>,
    pub max_upstream_connections: Option<Spanned<i64>>,
    pub response_buffer: Option<Spanned<RawSize>>,
    /// Issue #18 names it `max_upstream_header_bytes`: both names are read.
    #[serde(alias = "max_upstream_header_bytes")]
    pub max_response_header_bytes: Option<Spanned<i64>>,
    pub access_log: Option<Spanned<String>>,
    pub access_log_sample: Option<Spanned<f64>>,
    pub admin_hosts: Option<Vec<Spanned<String>>>,
    pub admin_session_idle: Option<Spanned<String>>,
    pub recent_requests_per_user: Option<Spanned<i64>>,
    pub recent_refusals: Option<Spanned<i64>>,
    pub fast_path: Option<Spanned<bool>>,
    pub underscore_headers: Option<Spanned<String>>,
    pub allow_empty: Option<Spanned<bool>>,
    pub max_user_drop: Option<Spanned<f64>>,
    pub tls: Option<Spanned<RawServerTls>>,
}

/// `[server.tls]`: present, the public listener speaks TLS only.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub certificates: Spanned<Vec<RawCertificatePair>>,
    pub min_version: Option<Spanned<String>>,
    pub alpn: Option<Spanned<Vec<Spanned<String>>>>,
    pub client_ca: Option<Spanned<String>>,
}

/// One `{ cert, key }` of `[server.tls] certificates`; paths relative to the file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCertificatePair {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[upstreams.NAME]`: one target (`url`) or several (`targets`), and how they are used.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub url: Option<Spanned<String>>,
    pub targets: Option<Spanned<Vec<Spanned<RawTarget>>>>,
    pub balance: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub eject: Option<Spanned<RawEject>>,
    pub host: Option<Spanned<String>>,
    /// Overrides `[server] max_upstream_connections` for this upstream.
    pub max_upstream_connections: Option<Spanned<i64>>,
    /// HTTPS targets only: trust anchors (PEM) instead of the system's store.
    pub ca: Option<Spanned<String>>,
    /// HTTPS targets only: the name sent as SNI and verified, instead of the URL's host.
    pub server_name: Option<Spanned<String>>,
    /// `"http/1.1"` (default) or `"h2"`.
    pub protocol: Option<Spanned<String>>,
}

/// One entry of `targets = [{ url, weight }]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub url: Spanned<String>,
    pub weight: Option<Spanned<i64>>,
}

/// `health_check = { path, interval, timeout, unhealthy_after, healthy_after }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    pub path: Spanned<String>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub unhealthy_after: Option<Spanned<i64>>,
    pub healthy_after: Option<Spanned<i64>>,
}

/// `eject = { consecutive_failures, for }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEject {
    pub consecutive_failures: Option<Spanned<i64>>,
    #[serde(rename = "for")]
    pub duration: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub prefix: Spanned<String>,
    pub upstream: Spanned<String>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub upstream_timeout: Option<Spanned<String>>,
    pub websocket: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawPermission>>,
    pub shadow_allow: Option<Spanned<Vec<Spanned<RawPermission>>>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    pub quota: Option<Spanned<RawQuota>>,
    pub max_concurrent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPermission {
    pub path: Spanned<String>,
    pub verbs: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub display_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub description: Option<String>,
    pub status: Spanned<String>,
    pub group: Spanned<String>,
    pub remote_addresses: Option<Spanned<RawAddresses>>,
    #[serde(default)]
    pub keys: Vec<Spanned<RawKey>>,
    pub password_hash: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    #[serde(default)]
    pub client_certificates: Vec<Spanned<RawClientCertificate>>,
}

/// A client certificate that identifies the user: the SHA-256 of its DER.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCertificate {
    pub sha256: Spanned<String>,
    pub created: Option<Spanned<Datetime>>,
}

/// A size in bytes, written as a number or with a unit (`"64KiB"`, `"1MiB"`), or `"off"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(i64),
    Text(String),
}

/// `remote_addresses` is written either the vendor way (`"a~b~c"`) or as a TOML array.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAddresses {
    Tilde(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKey {
    pub sha256: Spanned<String>,
    /// The first characters of the key, kept so operators can tell keys apart; never the whole key.
    pub prefix: Option<Spanned<String>>,
    pub created: Option<Spanned<Datetime>>,
    pub expires: Option<Spanned<Datetime>>,
}

/// `[admins."id"]`: an operator of the console and the management API (never an API user).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub password_hash: Option<Spanned<String>>,
    #[serde(default)]
    pub tokens: Vec<Spanned<RawAdminToken>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdminToken {
    pub sha256: Spanned<String>,
    pub prefix: Option<Spanned<String>>,
    pub created: Option<Spanned<Datetime>>,
}
