//! Raw TOML → `Snapshot`: parses addresses, digests, routes and permissions, and collects every
//! error with its file, line and column.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;

use http::HeaderName;
use toml::Spanned;
use toml::value::Datetime;

use super::error::{ConfigError, Locator};
use super::raw::{RawAddresses, RawConfig, RawServer, RawUser};
use crate::auth::address::{AddressBlock, SourceWhitelist};
use crate::snapshot::{
    AccessLogTarget, AdminAccount, ApiKey, ApiUser, ConnectionBalance, ConsoleSettings, DigestMap,
    Group, KeyDigest, KeyPrefix, KeyTable, Route, RouteTable, ServerSettings, Snapshot,
    UnderscoreHeaders, Upstream, UserStatus, UserTable, WorkerRuntime,
};
use checks::{
    check_key_header, check_route_prefix, did_you_mean, group_header, names, parse_digest,
};
pub use checks::{check_user_id, unix_seconds};
use compiler::Compiler;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Everything but the users, compiled; and what compiling a user needs of it.
pub(crate) struct Head {
    pub server: ServerSettings,
    pub upstreams: Box<[Upstream]>,
    pub routes: RouteTable,
    pub groups: Box<[Group]>,
    pub console: ConsoleSettings,
    pub rate_limits: crate::snapshot::RateLimitSettings,
    /// `[server.tls]`, its PEM files loaded.
    pub tls: Option<std::sync::Arc<crate::tls::ServerTls>>,
    /// The PEM files the head read (server pairs, `client_ca`, upstream `ca`s).
    pub tls_files: Vec<std::path::PathBuf>,
    group_index: HashMap<String, u32>,
    /// Each group's limits, by group index: what its users get unless they set their own.
    group_limits: Vec<crate::snapshot::SharedLimits>,
    /// The defined group names, for the hints of an error that names another.
    group_names: Vec<String>,
}

impl Head {
    /// The snapshot of this head with these users, keys and admins (no source index yet): the
    /// one place every way of compiling builds a `Snapshot`.
    pub(crate) fn into_snapshot(
        self,
        source: &std::path::Path,
        users: UserTable,
        keys: KeyTable,
        (admins, admin_tokens): (Box<[AdminAccount]>, DigestMap<u32>),
    ) -> Snapshot {
        Snapshot {
            source: source.to_path_buf(),
            server: self.server,
            users,
            keys,
            groups: self.groups,
            routes: self.routes,
            upstreams: self.upstreams,
            admins,
            admin_tokens,
            console: self.console,
            rate_limits: self.rate_limits,
            tls: self.tls,
            client_certificates: DigestMap::default(),
            tls_files: self.tls_files.into_boxed_slice(),
            source_index: None,
        }
    }
}

/// Compiles everything but `raw.users`; the errors in the order a reader meets them.
pub(crate) fn compile_head(loc: &Locator<'_>, raw: &RawConfig) -> (Head, Vec<ConfigError>) {
    let mut c = Compiler::new(loc);
    let head = c.head(raw);
    (head, c.errors)
}

/// `[admins.*]`, compiled once the users' keys are known (a token's digest must be no key's).
pub(crate) fn compile_admins(
    loc: &Locator<'_>,
    raw: &RawConfig,
    user_keys: &KeyTable,
) -> (Box<[AdminAccount]>, DigestMap<u32>, Vec<ConfigError>) {
    let mut c = Compiler::new(loc);
    let (admins, tokens) = c.admins(raw, user_keys);
    (admins, tokens, c.errors)
}

/// One user compiled on its own: everything but whether its keys' digests are used by another
/// user, which `incremental::assemble` decides with all users at hand.
pub(crate) struct UserPiece {
    pub id: String,
    /// `None` when the user has errors of its own.
    pub user: Option<ApiUser>,
    /// Its keys with a valid digest, in the file's order.
    pub keys: Vec<PieceKey>,
    /// Its own errors, in order; each key's duplicate check comes after `errors_before` of them.
    pub errors: Vec<ConfigError>,
    /// Its `client_certificates` fingerprints, with the span of each `sha256` (where a
    /// certificate that is also another user's is reported).
    pub certificates: Vec<(KeyDigest, Range<usize>)>,
}

pub(crate) struct PieceKey {
    pub digest: KeyDigest,
    /// `user` is set when the user gets its slot.
    pub key: ApiKey,
    /// The `sha256` value, where a duplicate is reported.
    pub span: Range<usize>,
    pub errors_before: usize,
}

/// Compiles one `[users."id"]` table; spans are positions in the whole file.
pub(crate) fn compile_user(
    loc: &Locator<'_>,
    head: &Head,
    id: &Spanned<String>,
    user: &Spanned<RawUser>,
) -> UserPiece {
    let mut c = Compiler::new(loc);
    c.user(id, user, head)
}

impl Compiler<'_> {
    fn head(&mut self, raw: &RawConfig) -> Head {
        let server = self.server(raw.server.as_ref().unwrap_or(&RawServer::default()));
        let rate_limits = self.rate_limit_settings(raw.rate_limits.as_ref());
        let mut tls_files = Vec::new();
        let tls = raw
            .server
            .as_ref()
            .and_then(|s| s.tls.as_ref())
            .and_then(|t| self.server_tls(self.loc.file(), t, &mut tls_files));
        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        let mut upstream_index = HashMap::new();
        for (name, up) in &raw.upstreams {
            if let Some(upstream) = self.upstream(name, up, &mut tls_files) {
                upstream_index.insert(name.get_ref().clone(), upstreams.len() as u32);
                upstreams.push(upstream);
            }
        }

        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        let mut seen_prefixes = std::collections::HashSet::with_capacity(raw.routes.len());
        for route in &raw.routes {
            let prefix = route.prefix.get_ref();
            if let Err(msg) = check_route_prefix(prefix) {
                self.error(route.prefix.span(), msg);
                continue;
            }
            if !seen_prefixes.insert(prefix.as_str()) {
                self.error(
                    route.prefix.span(),
                    format!("route prefix {prefix:?} is defined twice: keep one"),
                );
                continue;
            }
            match upstream_index.get(route.upstream.get_ref()) {
                Some(&i) => {
                    let (strip_prefix, upstream_timeout, websocket) =
                        self.route_options(route, &upstreams[i as usize]);
                    routes.push(Route {
                        prefix: prefix.as_str().into(),
                        upstream: i,
                        strip_prefix,
                        upstream_timeout,
                        websocket,
                    })
                }
                None if raw.upstreams.keys().any(|k| k.get_ref() == route.upstream.get_ref()) => {
                    // The upstream itself is invalid and already reported.
                }
                None => self.error(
                    route.upstream.span(),
                    format!(
                        "route {prefix:?} names upstream {:?}, which is not defined{}: add [upstreams.{}] or use one of: {}",
                        route.upstream.get_ref(),
                        did_you_mean(route.upstream.get_ref(), raw.upstreams.keys()),
                        route.upstream.get_ref(),
                        names(raw.upstreams.keys())
                    ),
                ),
            }
        }

        let mut groups = Vec::with_capacity(raw.groups.len());
        let mut group_limits = Vec::with_capacity(raw.groups.len());
        let mut group_index = HashMap::new();
        for (name, group) in &raw.groups {
            group_limits.push(self.group_limits(group).into());
            let permissions = self.permissions(&group.allow);
            let shadow = self.shadow_allow(group);
            group_index.insert(name.get_ref().clone(), groups.len() as u32);
            groups.push(Group {
                name: name.get_ref().as_str().into(),
                header: group_header(name.get_ref()),
                permissions,
                shadow,
            });
        }

        let console = self.console(raw.server.as_ref().unwrap_or(&RawServer::default()));
        Head {
            console,
            rate_limits,
            group_limits,
            server,
            upstreams: upstreams.into_boxed_slice(),
            routes: RouteTable::new(routes),
            groups: groups.into_boxed_slice(),
            group_index,
            group_names: raw.groups.keys().map(|k| k.get_ref().clone()).collect(),
            tls,
            tls_files,
        }
    }

    fn server(&mut self, raw: &RawServer) -> ServerSettings {
        let listen = self
            .socket_addr(raw.listen.as_ref(), "listen")
            .unwrap_or_else(|| {
                DEFAULT_LISTEN
                    .parse()
                    .expect("the default listen address is valid")
            });
        let admin_listen = self.socket_addr(raw.admin_listen.as_ref(), "admin_listen");
        let mut trusted_proxies = Vec::new();
        for cidr in raw.trusted_proxies.iter().flatten() {
            match AddressBlock::parse(cidr.get_ref()) {
                Ok(b) => trusted_proxies.push(b),
                Err(msg) => self.error(cidr.span(), format!("trusted_proxies: {msg}")),
            }
        }
        let key_header = match &raw.key_header {
            None => HeaderName::from_static("x-api-key"),
            Some(h) => match check_key_header(h.get_ref()) {
                Ok(name) => name,
                Err(msg) => {
                    self.error(h.span(), msg);
                    HeaderName::from_static("x-api-key")
                }
            },
        };
        let credential_headers = self.credential_headers(raw, &key_header);
        let limits = self.limits(raw);
        let workers = match &raw.workers {
            None => std::thread::available_parallelism().map_or(1, usize::from),
            Some(w) => match usize::try_from(*w.get_ref()) {
                Ok(n) if (1..=1024).contains(&n) => n,
                _ => {
                    self.error(
                        w.span(),
                        "workers must be between 1 and 1024 (leave it out to use one per core)",
                    );
                    1
                }
            },
        };
        let worker_runtime = match raw.worker_runtime.as_ref() {
            None => WorkerRuntime::PerWorker,
            Some(v) => match v.get_ref().as_str() {
                "per_worker" => WorkerRuntime::PerWorker,
                "shared" => WorkerRuntime::Shared,
                other => {
                    self.error(
                        v.span(),
                        format!("worker_runtime = {other:?}: use \"per_worker\" (the default: one single-threaded runtime per worker, each with its own listening socket) or \"shared\" (one multi-threaded runtime for all workers)"),
                    );
                    WorkerRuntime::PerWorker
                }
            },
        };
        let connection_balance = match raw.connection_balance.as_ref() {
            None => ConnectionBalance::Exact,
            Some(v) => match v.get_ref().as_str() {
                "exact" => ConnectionBalance::Exact,
                "kernel" => ConnectionBalance::Kernel,
                "cpu" => ConnectionBalance::Cpu,
                other => {
                    self.error(
                        v.span(),
                        format!("connection_balance = {other:?}: use \"exact\" (the default: each connection goes to the worker serving the fewest), \"cpu\" (to the worker of the CPU that received it, while the workers stay within a few connections of each other) or \"kernel\" (each stays with the worker whose socket the kernel chose)"),
                    );
                    ConnectionBalance::Exact
                }
            },
        };
        let max_header_bytes = match &raw.max_header_bytes {
            None => 32 * 1024,
            Some(m) => match usize::try_from(*m.get_ref()) {
                Ok(n) if (1024..=1024 * 1024).contains(&n) => n,
                _ => {
                    self.error(
                        m.span(),
                        "max_header_bytes must be between 1024 and 1048576",
                    );
                    32 * 1024
                }
            },
        };
        let access_log = match raw.access_log.as_ref() {
            None => AccessLogTarget::Stdout,
            Some(v) => match v.get_ref().as_str() {
                "stdout" => AccessLogTarget::Stdout,
                "off" => AccessLogTarget::Off,
                "" => {
                    self.error(
                        v.span(),
                        "access_log is empty: use \"stdout\", \"off\" or a file path",
                    );
                    AccessLogTarget::Stdout
                }
                path => AccessLogTarget::File(path.into()),
            },
        };
        let access_log_sample = match raw.access_log_sample.as_ref() {
            None => 1.0,
            Some(v) if *v.get_ref() > 0.0 && *v.get_ref() <= 1.0 => *v.get_ref(),
            Some(v) => {
                self.error(v.span(), "access_log_sample is the fraction of allowed requests logged: a number above 0 and at most 1 (use access_log = \"off\" to log nothing)");
                1.0
            }
        };
        let upstream_keepalive_connections = match raw.upstream_keepalive_connections.as_ref() {
            None => 1024,
            Some(v) if (0..=65536).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                self.error(v.span(), "upstream_keepalive_connections is how many idle connections are kept per upstream: 0 (close each after its response) to 65536");
                1024
            }
        };
        let underscore_headers = match raw.underscore_headers.as_ref() {
            None => UnderscoreHeaders::Drop,
            Some(v) => match v.get_ref().as_str() {
                "drop" => UnderscoreHeaders::Drop,
                "refuse" => UnderscoreHeaders::Refuse,
                "allow" => UnderscoreHeaders::Allow,
                other => {
                    self.error(
                        v.span(),
                        format!("underscore_headers = {other:?}: use \"drop\" (the default: such headers are not forwarded), \"refuse\" (answer 400) or \"allow\""),
                    );
                    UnderscoreHeaders::Drop
                }
            },
        };
        let guard = self.guard(raw);
        ServerSettings {
            guard,
            underscore_headers,
            listen,
            access_log,
            access_log_sample,
            admin_listen,
            trusted_proxies: trusted_proxies.into_boxed_slice(),
            key_header,
            credential_headers,
            workers,
            worker_runtime,
            connection_balance,
            organisation: raw.organisation.as_ref().map(|o| o.get_ref().clone()),
            connect_timeout: self.duration(raw.connect_timeout.as_ref(), "2s", true),
            upstream_timeout: self.duration(raw.upstream_timeout.as_ref(), "30s", true),
            upstream_keepalive_timeout: self.duration(
                raw.upstream_keepalive_timeout.as_ref(),
                "60s",
                true,
            ),
            upstream_keepalive_connections,
            header_read_timeout: self.duration(raw.header_read_timeout.as_ref(), "10s", true),
            idle_timeout: self.duration(raw.idle_timeout.as_ref(), "60s", true),
            shutdown_timeout: self.duration(raw.shutdown_timeout.as_ref(), "10s", false),
            max_header_bytes,
            fast_path: raw.fast_path.as_ref().is_none_or(|v| *v.get_ref()),
            limits,
        }
    }

    fn socket_addr(&mut self, value: Option<&Spanned<String>>, field: &str) -> Option<SocketAddr> {
        let v = value?;
        match v.get_ref().parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    v.span(),
                    format!("{field} = {:?} is not an address and port: write e.g. \"127.0.0.1:8080\" or \"[::]:8080\"", v.get_ref()),
                );
                None
            }
        }
    }

    fn user(&mut self, id: &Spanned<String>, user: &Spanned<RawUser>, head: &Head) -> UserPiece {
        if let Err(msg) = check_user_id(id.get_ref()) {
            self.error(id.span(), msg);
        }
        let u = user.get_ref();
        let status = UserStatus::parse(u.status.get_ref());
        if status.is_none() {
            self.error(
                u.status.span(),
                format!(
                    "status {:?} is not one of: active, pending, inactive{}",
                    u.status.get_ref(),
                    crate::suggest::did_you_mean(
                        u.status.get_ref(),
                        ["active", "pending", "inactive"]
                    )
                ),
            );
        }
        let group = head.group_index.get(u.group.get_ref()).copied();
        if group.is_none() {
            self.error(
                u.group.span(),
                format!(
                    "group {:?} is not defined{}: add [groups.{}] or use one of: {}",
                    u.group.get_ref(),
                    crate::suggest::did_you_mean(
                        u.group.get_ref(),
                        head.group_names.iter().map(String::as_str)
                    ),
                    u.group.get_ref(),
                    if head.group_names.is_empty() {
                        "(none defined)".to_string()
                    } else {
                        head.group_names.join(", ")
                    }
                ),
            );
        }
        let sources = match &u.remote_addresses {
            None => {
                self.error(
                    user.span(),
                    format!(
                        "user {:?} has no remote_addresses: list the addresses it calls from (\"192.0.2.10~198.51.100.0/24\"), or \"*\" to allow any source",
                        id.get_ref()
                    ),
                );
                None
            }
            Some(addrs) => {
                let parsed = match addrs.get_ref() {
                    RawAddresses::Tilde(s) => SourceWhitelist::parse_tilde(s),
                    RawAddresses::List(l) => {
                        SourceWhitelist::from_entries(l.iter().map(String::as_str))
                    }
                };
                match parsed {
                    Ok(w) => Some(w),
                    Err(msg) => {
                        self.error(addrs.span(), format!("remote_addresses: {msg}"));
                        None
                    }
                }
            }
        };
        if let Some(hash) = &u.password_hash
            && let Err(msg) = crate::auth::password::check_password_hash(hash.get_ref())
        {
            self.error(hash.span(), msg);
        }
        let mut keys = Vec::with_capacity(u.keys.len());
        for key in &u.keys {
            let k = key.get_ref();
            let digest = match parse_digest(k.sha256.get_ref()) {
                Ok(d) => d,
                Err(msg) => {
                    self.error(k.sha256.span(), msg);
                    continue;
                }
            };
            let created = k.created.as_ref().and_then(|d| self.datetime(d));
            let expires = k.expires.as_ref().and_then(|d| self.datetime(d));
            if let Some(prefix) = &k.prefix
                && prefix.get_ref().len() > 16
            {
                self.error(prefix.span(), "a key prefix is at most 16 characters: it identifies the key, it must not reveal it");
            }
            keys.push(PieceKey {
                digest,
                key: ApiKey {
                    user: 0,
                    prefix: k.prefix.as_ref().and_then(|p| KeyPrefix::new(p.get_ref())),
                    created,
                    expires,
                },
                span: k.sha256.span(),
                errors_before: self.errors.len(),
            });
        }
        let certificates = self.client_certificates(u);
        let own_rate = u.rate_limit.as_ref().and_then(|r| self.rate_limit(r));
        let valid = |status, group: Option<u32>, sources| -> Option<ApiUser> {
            let group = group?;
            Some(ApiUser {
                id: id.get_ref().as_str().into(),
                display_name: u.display_name.as_deref().map(Into::into),
                status: status?,
                group,
                sources: sources?,
                password_hash: u
                    .password_hash
                    .as_ref()
                    .map(|h| h.get_ref().as_str().into()),
                limits: limits::user_limits(&head.group_limits[group as usize], own_rate),
                limit_state: Default::default(),
            })
        };
        let user = if self.errors.is_empty() {
            valid(status, group, sources)
        } else {
            None
        };
        UserPiece {
            id: id.get_ref().clone(),
            user,
            keys,
            errors: std::mem::take(&mut self.errors),
            certificates,
        }
    }

    fn datetime(&mut self, value: &Spanned<Datetime>) -> Option<i64> {
        match unix_seconds(value.get_ref()) {
            Ok(t) => Some(t),
            Err(msg) => {
                self.error(value.span(), msg);
                None
            }
        }
    }
}

mod admin;
mod checks;
mod compiler;
mod guard;
mod limits;
mod permissions;
mod protection;
pub mod tls;
mod upstreams;
pub use admin::{DEFAULT_RECENT_PER_USER, DEFAULT_RECENT_REFUSALS};
#[cfg(test)]
mod tests;
