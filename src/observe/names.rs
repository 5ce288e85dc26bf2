//! Every metric the gateway exports: its name, its kind and its help text, in one place that the
//! Prometheus registry (`metrics.rs`) and the per-request series (`series.rs`) both read.

pub const REQUESTS: &str = "apiward_requests_total";
pub const REQUEST_DURATION: &str = "apiward_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "apiward_upstream_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "apiward_upstream_errors_total";
pub const RELOADS: &str = "apiward_reloads_total";
pub const CONFIG_GENERATION: &str = "apiward_config_generation";
pub const OPEN_CONNECTIONS: &str = "apiward_open_connections";
pub const ADMIN_LOGINS: &str = "apiward_admin_logins_total";
pub const CONNECTIONS_REFUSED: &str = "apiward_connections_refused_total";
pub const REQUEST_LOG_DROPPED: &str = "apiward_request_log_dropped_total";
/// The limits' series, rendered from the live limit state (`limits/render.rs`).
pub const LIMIT_REFUSALS: &str = "apiward_limit_refusals_total";
pub const LIMIT_IN_FLIGHT: &str = "apiward_limit_in_flight";
pub const LIMIT_STORE_ROUND_TRIPS: &str = "apiward_limit_store_round_trips_total";
pub const LIMIT_STORE_ERRORS: &str = "apiward_limit_store_errors_total";
pub const LIMIT_STORE_UP: &str = "apiward_limit_store_up";

pub const TARGET_UP: &str = "apiward_upstream_target_up";
pub const TARGET_TRANSITIONS: &str = "apiward_upstream_target_transitions_total";
pub const UPSTREAM_RETRIES: &str = "apiward_upstream_retries_total";
pub const WEBSOCKETS: &str = "apiward_websocket_connections_total";
pub const WEBSOCKETS_OPEN: &str = "apiward_websocket_connections_open";
pub const WEBSOCKET_SECONDS: &str = "apiward_websocket_duration_seconds";
/// Admitted requests a group's `shadow_allow` would have refused.
pub const SHADOW_REFUSALS: &str = "apiward_shadow_refusals_total";

pub const TLS_CERTIFICATE_EXPIRY: &str = "apiward_tls_certificate_expiry_seconds";
pub const TLS_HANDSHAKES: &str = "apiward_tls_handshakes_total";
pub const TLS_HANDSHAKE_FAILURES: &str = "apiward_tls_handshake_failures_total";
pub const PROTOCOL_REQUESTS: &str = "apiward_requests_by_protocol_total";

/// Every metric name exported, for documentation and tests.
pub const ALL: [&str; 26] = [
    REQUESTS,
    REQUEST_DURATION,
    UPSTREAM_DURATION,
    UPSTREAM_ERRORS,
    RELOADS,
    CONFIG_GENERATION,
    OPEN_CONNECTIONS,
    ADMIN_LOGINS,
    CONNECTIONS_REFUSED,
    LIMIT_REFUSALS,
    LIMIT_IN_FLIGHT,
    LIMIT_STORE_ROUND_TRIPS,
    LIMIT_STORE_ERRORS,
    LIMIT_STORE_UP,
    TARGET_UP,
    TARGET_TRANSITIONS,
    UPSTREAM_RETRIES,
    WEBSOCKETS,
    WEBSOCKETS_OPEN,
    WEBSOCKET_SECONDS,
    REQUEST_LOG_DROPPED,
    SHADOW_REFUSALS,
    TLS_CERTIFICATE_EXPIRY,
    TLS_HANDSHAKES,
    TLS_HANDSHAKE_FAILURES,
    PROTOCOL_REQUESTS,
];

/// Label value used when a request had no user or no route.
pub const NONE: &str = "none";

/// The help text of every metric, as `# HELP` shows it.
pub fn help(name: &str) -> &'static str {
    match name {
        REQUESTS => {
            "Requests by API user, route, decision (allowed or the error code) and status class."
        }
        REQUEST_DURATION => "Time from a request's head to the end of its response, by route.",
        UPSTREAM_DURATION => {
            "Time from forwarding a request to the upstream's response head, by route."
        }
        UPSTREAM_ERRORS => {
            "Upstream requests that failed, by upstream and kind (connect, timeout, other)."
        }
        RELOADS => "Configuration reloads by outcome (applied, refused, missing).",
        CONFIG_GENERATION => {
            "Generation of the configuration serving now; 1 is the file loaded at start."
        }
        OPEN_CONNECTIONS => "Client connections open now.",
        REQUEST_LOG_DROPPED => {
            "Request log lines dropped because the log's destination did not keep up (or failed)."
        }
        ADMIN_LOGINS => "Console logins by outcome (success, failure, throttled).",
        CONNECTIONS_REFUSED => {
            "New client connections closed at once, by reason (max_connections, max_connections_per_source)."
        }
        LIMIT_REFUSALS => {
            "Requests refused by a limit, by API user and kind (rate_limited, quota_exhausted, too_many_concurrent, limit_store_unavailable)."
        }
        LIMIT_IN_FLIGHT => "Requests in flight now, by API user with max_concurrent.",
        LIMIT_STORE_ROUND_TRIPS => "Calls to the shared rate-limit store.",
        LIMIT_STORE_ERRORS => "Calls to the shared rate-limit store that failed or timed out.",
        LIMIT_STORE_UP => {
            "1 while the rate-limit store answers (always, for the local store), 0 from a failed call to the next answered one."
        }
        TARGET_UP => {
            "1 when balancing may choose the target (health checks pass, not ejected), 0 when it is out, by upstream and target."
        }
        TARGET_TRANSITIONS => {
            "Changes of a target's state, by upstream, target and the state entered (unhealthy, healthy, ejected, returned)."
        }
        UPSTREAM_RETRIES => {
            "Requests sent again to another target after a failure before any byte of the answer, by upstream."
        }
        WEBSOCKETS => "WebSocket connections relayed (after a 101 from the upstream), by route.",
        WEBSOCKETS_OPEN => "WebSocket connections being relayed now.",
        WEBSOCKET_SECONDS => {
            "How long the WebSocket connections that ended lasted, by route (a summary: quantiles, sum and count)."
        }
        SHADOW_REFUSALS => {
            "Admitted requests that the group's shadow_allow would have refused (403 forbidden), by API user and group: who breaks once the stricter rules are enforced."
        }
        TLS_CERTIFICATE_EXPIRY => {
            "When each certificate of [server.tls] expires (Unix seconds), by its first DNS name and file."
        }
        TLS_HANDSHAKES => {
            "TLS handshakes completed on the public listener, by TLS version and negotiated protocol."
        }
        TLS_HANDSHAKE_FAILURES => {
            "TLS connections on the public listener that ended before a completed handshake, by reason."
        }
        PROTOCOL_REQUESTS => {
            "Requests answered, by HTTP protocol (h1, h2) and transport (tcp, tls)."
        }
        _ => "",
    }
}
