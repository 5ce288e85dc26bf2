//! The runtime configuration: an immutable, fully validated snapshot that requests are decided against.
//!
//! A snapshot is built once per (re)load by `config::compile` and shared through `ArcSwap`; nothing in
//! it changes afterwards. State that changes per request lives outside, keyed by stable ids.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;

use crate::auth::address::AddressBlock;
use crate::auth::permission::Permission;

mod routes;
mod tables;
mod upstreams;
pub(crate) mod users;
pub use routes::{Route, RouteTable};
pub use tables::{KeyTable, UserTable};
pub(crate) use tables::{KeyTableBuilder, shard_selector};
pub use upstreams::{
    Balance, Cluster, Eject, HealthCheck, Target, Upstream, UpstreamTarget, weighted_schedule,
};
pub use users::{
    ApiKey, ApiUser, DigestHasher, DigestMap, KeyDigest, KeyPrefix, LimitOrigin, Quota, RateLimit,
    SharedLimits, UserIndex, UserLimits, UserStatus, rfc3339,
};

/// `[rate_limits]`: where limit state is kept and what happens when it cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RateLimitSettings {
    pub store: LimitStore,
    pub on_store_error: OnStoreError,
    /// `forward_remaining`: tell the upstream what is left of a limited user's allowance
    /// (`X-Apiward-RateLimit-Remaining`), the only thing about limits it ever sees.
    pub forward_remaining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LimitStore {
    /// This process only.
    #[default]
    Local,
    /// Shared by every gateway pointed at the same Redis.
    Redis {
        /// The URL as written (it may hold a password: never logged or shown).
        url: Box<str>,
        /// `redis://host:port/db`, without credentials: what logs and `/status` show.
        shown: Box<str>,
    },
}

impl LimitStore {
    /// What logs and `/status` may show: `local`, or the Redis URL without its credentials.
    pub fn shown(&self) -> &str {
        match self {
            LimitStore::Local => "local",
            LimitStore::Redis { shown, .. } => shown,
        }
    }
}

/// `on_store_error`: when the shared store cannot be reached, admit (each gateway then enforces
/// the limit on its own) or refuse limited users' requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnStoreError {
    #[default]
    Allow,
    Deny,
}

impl OnStoreError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnStoreError::Allow => "allow",
            OnStoreError::Deny => "deny",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Group {
    pub name: Box<str>,
    /// `name` as the `X-Apiward-Group` value, made once; `None` if the name cannot be one.
    pub header: Option<http::HeaderValue>,
    pub permissions: Box<[Permission]>,
    /// `shadow_allow`: stricter rules tried on every request `permissions` admit, which count
    /// and log the requests they would refuse and refuse none. `None` costs nothing.
    pub shadow: Option<Box<[Permission]>>,
}

/// `[server]`: settings of the process itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub trusted_proxies: Box<[AddressBlock]>,
    pub key_header: HeaderName,
    /// Other request headers that carry a credential (`credential_headers`): never forwarded.
    pub credential_headers: Arc<[HeaderName]>,
    pub workers: usize,
    /// How `workers > 1` are run (`worker_runtime`).
    pub worker_runtime: WorkerRuntime,
    /// Which per-worker runtime serves each accepted connection (`connection_balance`).
    pub connection_balance: ConnectionBalance,
    pub organisation: Option<String>,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    /// How long an upstream connection may stay idle in the pool.
    pub upstream_keepalive_timeout: Duration,
    /// Idle connections kept per upstream address; 0 closes each after its response.
    pub upstream_keepalive_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub max_header_bytes: usize,
    pub limits: ServerLimits,
    pub access_log: AccessLogTarget,
    /// The fraction of allowed requests logged; refusals are always logged.
    pub access_log_sample: f64,
    /// Whether the HTTP/1 engine serves the requests it can (false: hyper serves every
    /// request; a diagnostic).
    pub fast_path: bool,
    /// What happens to a client header whose name holds `_` (`underscore_headers`).
    pub underscore_headers: UnderscoreHeaders,
    /// What a reload or an edit may take away (`allow_empty`, `max_user_drop`).
    pub guard: ConfigGuard,
}

/// `[server] allow_empty` and `max_user_drop`: how far a new file may shrink what is served
/// before it is refused as a probable accident (`config::guard`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ConfigGuard {
    /// A file with no route or no user may replace one with some.
    pub allow_empty: bool,
    /// The largest share of the users a reload may remove (0 to 1); `None`: any.
    pub max_user_drop: Option<f64>,
}

/// `[server] worker_runtime`: how `workers > 1` serve the public listener. With one worker both
/// are one current-thread runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerRuntime {
    /// One thread per worker, each a current-thread runtime with its own listening socket
    /// (`SO_REUSEPORT`: the kernel spreads the connections) and its own upstream pools, as nginx's
    /// worker processes are.
    #[default]
    PerWorker,
    /// One multi-thread runtime of `workers` threads that steal work from each other.
    Shared,
}

/// `[server] connection_balance`: which of the per-worker runtimes serves a connection one of
/// them accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionBalance {
    /// The worker serving the fewest connections at that moment (the one that accepted it on a
    /// tie), as HAProxy's threads and Envoy's `exact_balance` share theirs: long-lived
    /// keep-alive connections end up evenly spread.
    #[default]
    Exact,
    /// The worker whose socket the kernel's `SO_REUSEPORT` hash put it on (no hand-over; 64
    /// connections often split 29 / 35 or 26 / 38).
    Kernel,
    /// The worker numbered after the CPU that received the connection's packets
    /// (`SO_INCOMING_CPU`, modulo the workers), as long as it serves at most a few more than the
    /// worker serving the fewest (2, or an eighth of that worker's count if more); otherwise as
    /// `Exact`. The connections whose packets one CPU handles share a worker, which the scheduler
    /// then keeps near them: fewer wake-ups across CPUs.
    Cpu,
}

impl ConnectionBalance {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionBalance::Exact => "exact",
            ConnectionBalance::Kernel => "kernel",
            ConnectionBalance::Cpu => "cpu",
        }
    }
}

impl WorkerRuntime {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerRuntime::PerWorker => "per_worker",
            WorkerRuntime::Shared => "shared",
        }
    }
}

/// `[server] underscore_headers`: CGI, WSGI, PHP and Rack backends read `X_Apiward_User` as
/// `X-Apiward-User`, so a name with `_` can pose as a header the gateway controls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnderscoreHeaders {
    /// Not forwarded (nginx's default).
    #[default]
    Drop,
    /// The request is answered 400 `underscore_header`.
    Refuse,
    /// Forwarded, except a name that reads as one the gateway acts on once `_` is read as `-`.
    Allow,
}

impl ServerLimits {
    /// The most `max_response_headers` may allow.
    pub const MAX_RESPONSE_HEADERS_CAP: usize = 256;
    /// `response_buffer` when the file says nothing (nginx's `proxy_buffers` give 8 × 8 KiB).
    pub const DEFAULT_RESPONSE_BUFFER: usize = 64 * 1024;
    /// The most `response_buffer` may be: it is per request in flight.
    pub const MAX_RESPONSE_BUFFER: usize = 64 * 1024 * 1024;
}

/// Limits on connections and upstream responses (`[server]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ServerLimits {
    /// Client connections open at most; `None`: derived from the file-descriptor limit at start.
    pub max_connections: Option<usize>,
    /// Connections one client address may hold; trusted proxies are exempt.
    pub max_connections_per_source: usize,
    /// Header lines an upstream response may have.
    pub max_response_headers: usize,
    /// The largest upstream response head, status line included.
    pub max_response_header_bytes: usize,
    /// The longest a response may take to relay, from its head to its last byte; `None`: no
    /// bound but `idle_timeout` between bytes.
    pub response_timeout: Option<Duration>,
    /// Requests one upstream (all its targets, both paths) has in hand at once; more wait up
    /// to `connect_timeout`, then get 503 `upstream_busy`.
    pub max_upstream_connections: usize,
    /// Bytes of an upstream response read ahead of the client per request (`response_buffer`);
    /// 0: none, the response is relayed as the client takes it.
    pub response_buffer: usize,
}

/// Where the one-line-per-request log goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

/// Everything a request is decided against.
#[derive(Debug)]
pub struct Snapshot {
    pub source: PathBuf,
    pub server: ServerSettings,
    /// By slot; iterated and looked up by id in id order (binary search: Basic auth and
    /// `explain` only).
    pub users: UserTable,
    pub keys: KeyTable,
    pub groups: Box<[Group]>,
    pub routes: RouteTable,
    pub upstreams: Box<[Upstream]>,
    /// `[server.tls]`: set, the public listener speaks TLS only.
    pub tls: Option<Arc<crate::tls::ServerTls>>,
    /// The SHA-256 of each client certificate's DER → the user it identifies.
    pub client_certificates: DigestMap<UserIndex>,
    /// The PEM files this snapshot read; a change to one reloads the configuration.
    pub tls_files: Box<[PathBuf]>,
    /// `[admins.*]`, sorted by id: who may use the console and the management API.
    pub admins: Box<[AdminAccount]>,
    /// Every admin token's digest, to its admin's index in `admins`.
    pub admin_tokens: DigestMap<u32>,
    pub console: ConsoleSettings,
    pub rate_limits: RateLimitSettings,
    /// Where each `[users."…"]` table stood in the file's text, for the next reload to compile
    /// only the tables that changed; `None` when the file was compiled as one whole.
    pub(crate) source_index: Option<SourceIndex>,
}

/// An operator of the admin listener's console and API; never an API user, never on the public
/// listener.
#[derive(Debug, Clone)]
pub struct AdminAccount {
    pub id: Arc<str>,
    pub password_hash: Option<Box<str>>,
    pub tokens: Box<[AdminToken]>,
}

/// One admin token: only its digest is known, like a user's key.
#[derive(Debug, Clone)]
pub struct AdminToken {
    pub digest: KeyDigest,
    pub prefix: Option<KeyPrefix>,
    pub created: Option<i64>,
}

/// How the admin listener's console behaves, and how much it remembers (from `[server]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConsoleSettings {
    /// Host names, besides IP literals and `localhost`, the admin listener answers to.
    pub admin_hosts: Box<[String]>,
    /// A console session unused this long is over.
    pub session_idle: Duration,
    /// Recent requests kept per API user.
    pub recent_requests_per_user: usize,
    /// Recent refusals of callers who are no user (unknown keys), kept overall.
    pub recent_refusals: usize,
}

/// The text of the file this snapshot was compiled from, as far as a reload needs it: a digest
/// of everything before the first `[users."…"]` table, and a digest and slot for each table, in
/// the file's order; and the shard selector of each table's keys, so that a reload finds a
/// changed user's keys in the shards that hold them instead of scanning the key table (4 bytes
/// a key and 4 a table).
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceIndex {
    pub head: u128,
    pub tables: Box<[u128]>,
    pub slots: Box<[UserIndex]>,
    /// Table `i`'s keys are `key_selectors[key_ends[i - 1]..key_ends[i]]` (from 0 for `i = 0`).
    pub key_ends: Box<[u32]>,
    pub key_selectors: Box<[u32]>,
}

impl SourceIndex {
    /// The shard selectors of table `i`'s keys.
    pub fn selectors(&self, i: usize) -> &[u32] {
        let start = if i == 0 {
            0
        } else {
            self.key_ends[i - 1] as usize
        };
        &self.key_selectors[start..self.key_ends[i] as usize]
    }
}

impl Snapshot {
    /// The user in `index`, which every `ApiKey` of this snapshot names.
    pub fn user(&self, index: UserIndex) -> &ApiUser {
        self.users
            .get(index)
            .expect("a snapshot's keys name only its live user slots")
    }

    pub fn user_by_id(&self, id: &str) -> Option<&ApiUser> {
        self.users.index_of(id).and_then(|i| self.users.get(i))
    }

    pub fn user_index_of(&self, id: &str) -> Option<UserIndex> {
        self.users.index_of(id)
    }

    pub fn admin_by_id(&self, id: &str) -> Option<&AdminAccount> {
        self.admins
            .binary_search_by(|a| (*a.id).cmp(id))
            .ok()
            .map(|i| &self.admins[i])
    }

    /// The user a client certificate (its DER) identifies.
    pub fn user_of_certificate(&self, der: &[u8]) -> Option<UserIndex> {
        self.client_certificates
            .get(&crate::tls::fingerprint(der))
            .copied()
    }

    pub fn group_of(&self, user: &ApiUser) -> &Group {
        &self.groups[user.group as usize]
    }

    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes.lookup(path)
    }

    pub fn upstream(&self, route: &Route) -> &Upstream {
        &self.upstreams[route.upstream as usize]
    }

    pub fn is_trusted_proxy(&self, ip: std::net::IpAddr) -> bool {
        let ip = crate::auth::address::canonical(ip);
        self.server.trusted_proxies.iter().any(|b| b.contains(ip))
    }
}
