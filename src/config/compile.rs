//! Raw TOML → `Snapshot`: parses addresses, digests, routes and permissions, and collects every
//! error with its file, line and column.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use http::uri::{Scheme, Uri};
use toml::Spanned;
use toml::value::{Datetime, Offset};

use super::duration::parse_duration;
use super::error::{ConfigError, ConfigErrors, Locator};
use super::raw::{RawAddresses, RawConfig, RawServer, RawUser};
use crate::auth::address::{AddressBlock, SourceWhitelist};
use crate::auth::permission::{PathPattern, Permission, VerbSet};
use crate::snapshot::{
    AccessLogTarget, AdminAccount, ApiKey, ApiUser, ConsoleSettings, DigestMap, Group, KeyDigest,
    KeyPrefix, KeyTable, Route, RouteTable, ServerSettings, Snapshot, Upstream, UpstreamTarget,
    UserStatus,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// Parses and validates one file's text. `file` is only used to name the file in errors.
pub fn compile(file: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    super::incremental::compile_full(file, text)
}

/// The whole text parsed in one go, then compiled: what every other way of compiling must
/// give exactly, result and errors alike, and what they fall back to when a file is not
/// made of separate `[users."…"]` tables.
pub(crate) fn compile_whole(file: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    let loc = Locator::new(file, text);
    let mut errors = Vec::new();
    let raw: RawConfig = match super::parse::parse(text) {
        Ok(raw) => raw,
        // The slow path, only for a file with mistakes: every unknown field is reported and
        // dropped, so that the rest of the file is still checked.
        Err(_) => {
            let (raw, problems) = super::schema::parse_reporting_all(text);
            for (span, message) in problems {
                let err = match span {
                    Some(span) => loc.error(span, message),
                    None => loc.whole_file(message),
                };
                errors.push(err);
            }
            match raw {
                Some(raw) => raw,
                None => return Err(ConfigErrors(errors)),
            }
        }
    };
    let (head, head_errors) = compile_head(&loc, &raw);
    errors.extend(head_errors);
    let pieces = raw
        .users
        .iter()
        .map(|(id, user)| compile_user(&loc, &head, id, user))
        .collect();
    match super::incremental::assemble(&loc, head, pieces, &mut errors, &raw) {
        Some((snapshot, _)) if errors.is_empty() => Ok(snapshot),
        Some(_) => Err(in_file_order(errors)),
        // Not reached: the parsed map has each id once.
        None => Err(ConfigErrors(vec![
            loc.whole_file("two users have the same id"),
        ])),
    }
}

/// The errors in the order of the file, as an operator reads it (a stable sort: whole-file
/// errors first).
pub(crate) fn in_file_order(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.line, e.column));
    ConfigErrors(errors)
}

/// Everything but the users, compiled; and what compiling a user needs of it.
pub(crate) struct Head {
    pub server: ServerSettings,
    pub upstreams: Box<[Upstream]>,
    pub routes: RouteTable,
    pub groups: Box<[Group]>,
    pub console: ConsoleSettings,
    pub rate_limits: crate::snapshot::RateLimitSettings,
    group_index: HashMap<String, u32>,
    /// Each group's limits, by group index: what its users get unless they set their own.
    group_limits: Vec<crate::snapshot::UserLimits>,
    /// The defined group names, for the hints of an error that names another.
    group_names: Vec<String>,
}

/// Compiles everything but `raw.users`; the errors in the order a reader meets them.
pub(crate) fn compile_head(loc: &Locator<'_>, raw: &RawConfig) -> (Head, Vec<ConfigError>) {
    let mut c = Compiler {
        loc,
        errors: Vec::new(),
    };
    let head = c.head(raw);
    (head, c.errors)
}

/// `[admins.*]`, compiled once the users' keys are known (a token's digest must be no key's).
pub(crate) fn compile_admins(
    loc: &Locator<'_>,
    raw: &RawConfig,
    user_keys: &KeyTable,
) -> (Box<[AdminAccount]>, DigestMap<u32>, Vec<ConfigError>) {
    let mut c = Compiler {
        loc,
        errors: Vec::new(),
    };
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
    let mut c = Compiler {
        loc,
        errors: Vec::new(),
    };
    c.user(id, user, head)
}

pub(super) struct Compiler<'a> {
    loc: &'a Locator<'a>,
    errors: Vec<ConfigError>,
}

impl Compiler<'_> {
    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.loc.error(span, message));
    }

    fn head(&mut self, raw: &RawConfig) -> Head {
        let server = self.server(raw.server.as_ref().unwrap_or(&RawServer::default()));
        let rate_limits = self.rate_limit_settings(raw.rate_limits.as_ref());
        let mut upstreams = Vec::with_capacity(raw.upstreams.len());
        let mut upstream_index = HashMap::new();
        for (name, up) in &raw.upstreams {
            if let Some(target) = self.upstream_target(&up.url) {
                upstream_index.insert(name.get_ref().clone(), upstreams.len() as u32);
                upstreams.push(Upstream {
                    name: name.get_ref().as_str().into(),
                    url: up.url.get_ref().as_str().into(),
                    target,
                });
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
                Some(&i) => routes.push(Route {
                    prefix: prefix.as_str().into(),
                    upstream: i,
                }),
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
            group_limits.push(self.group_limits(group));
            let mut permissions = Vec::with_capacity(group.allow.len());
            for perm in &group.allow {
                let perm = perm.get_ref();
                let pattern = match PathPattern::parse(perm.path.get_ref()) {
                    Ok(p) => p,
                    Err(msg) => {
                        self.error(perm.path.span(), msg);
                        continue;
                    }
                };
                let mut verbs = VerbSet::default();
                for verb in &perm.verbs {
                    match VerbSet::parse_verb(verb.get_ref()) {
                        Ok(v) => verbs.insert(v),
                        Err(msg) => self.error(verb.span(), msg),
                    }
                }
                permissions.push(Permission { pattern, verbs });
            }
            group_index.insert(name.get_ref().clone(), groups.len() as u32);
            groups.push(Group {
                name: name.get_ref().as_str().into(),
                header: group_header(name.get_ref()),
                permissions: permissions.into_boxed_slice(),
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
        ServerSettings {
            listen,
            access_log,
            access_log_sample,
            admin_listen,
            trusted_proxies: trusted_proxies.into_boxed_slice(),
            key_header,
            credential_headers,
            workers,
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

    pub(super) fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        default: &str,
        nonzero: bool,
    ) -> Duration {
        let fallback = parse_duration(default).expect("defaults are valid durations");
        let Some(v) = value else { return fallback };
        match parse_duration(v.get_ref()) {
            Ok(d) if nonzero && d.is_zero() => {
                self.error(v.span(), "this timeout must be greater than zero");
                fallback
            }
            Ok(d) => d,
            Err(msg) => {
                self.error(v.span(), msg);
                fallback
            }
        }
    }

    fn upstream_target(&mut self, url: &Spanned<String>) -> Option<UpstreamTarget> {
        let text = url.get_ref();
        if text == "builtin:echo" {
            return Some(UpstreamTarget::Echo);
        }
        let hint = "write an http URL such as \"http://127.0.0.1:9000\", or \"builtin:echo\"";
        let uri: Uri = match text.parse() {
            Ok(u) => u,
            Err(_) => {
                self.error(url.span(), format!("{text:?} is not a valid URL: {hint}"));
                return None;
            }
        };
        match uri.scheme() {
            Some(s) if *s == Scheme::HTTP => {}
            Some(s) if *s == Scheme::HTTPS => {
                self.error(url.span(), format!("{text:?}: https upstreams are not supported yet: put the upstream on a private network and use http"));
                return None;
            }
            _ => {
                self.error(url.span(), format!("{text:?} has no http scheme: {hint}"));
                return None;
            }
        }
        // Interned, so that copying it for each request touches no reference count.
        let Some(authority) = uri.authority().map(|a| {
            http::uri::Authority::from_maybe_shared(bytes::Bytes::from_static(
                interned(a.as_str()).as_bytes(),
            ))
            .unwrap_or_else(|_| a.clone())
        }) else {
            self.error(url.span(), format!("{text:?} has no host: {hint}"));
            return None;
        };
        if authority.as_str().contains('@') {
            self.error(
                url.span(),
                format!("{text:?}: credentials in upstream URLs are not supported"),
            );
            return None;
        }
        if uri.query().is_some() {
            self.error(
                url.span(),
                format!("{text:?}: an upstream URL cannot have a query string"),
            );
            return None;
        }
        let base_path = uri.path().trim_end_matches('/');
        Some(UpstreamTarget::Http {
            scheme: Scheme::HTTP,
            authority,
            base_path: base_path.into(),
        })
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
        if let Some(hash) = &u.password_hash {
            if let Err(msg) = crate::auth::password::check_password_hash(hash.get_ref()) {
                self.error(hash.span(), msg);
            }
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
            if let Some(prefix) = &k.prefix {
                if prefix.get_ref().len() > 16 {
                    self.error(prefix.span(), "a key prefix is at most 16 characters: it identifies the key, it must not reveal it");
                }
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
                limits: limits::user_limits(head.group_limits[group as usize], own_rate),
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

fn did_you_mean<'a>(word: &str, keys: impl Iterator<Item = &'a Spanned<String>>) -> String {
    crate::suggest::did_you_mean(word, keys.map(|k| k.get_ref().as_str()))
}

fn names<'a>(keys: impl Iterator<Item = &'a Spanned<String>>) -> String {
    let all: Vec<&str> = keys.map(|k| k.get_ref().as_str()).collect();
    if all.is_empty() {
        "(none defined)".into()
    } else {
        all.join(", ")
    }
}

fn check_route_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("route prefix {prefix:?} must start with '/'"));
    }
    match crate::auth::path::normalise(prefix) {
        Ok(n) if n == prefix => Ok(()),
        Ok(n) => Err(format!(
            "route prefix {prefix:?} is not in normal form: write {n:?}"
        )),
        Err(e) => Err(format!("route prefix {prefix:?} is not a valid path: {e}")),
    }
}

/// The one `'static` copy of `text`, made the first time it is asked for. Header names, group
/// header values and upstream authorities built on it are copied for each request without
/// touching a reference count (an atomic operation each, measured in docs/benchmarks.md). The
/// set only grows by the distinct names that configurations have ever used: a few, not per
/// request and not per user.
fn interned(text: &str) -> &'static str {
    static SET: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> =
        std::sync::Mutex::new(None);
    let mut set = SET.lock().unwrap_or_else(|e| e.into_inner());
    let set = set.get_or_insert_with(Default::default);
    if let Some(found) = set.get(text) {
        return found;
    }
    let leaked: &'static str = Box::leak(text.into());
    set.insert(leaked);
    leaked
}

/// The group's name as the `X-Apiward-Group` value, or `None` when it cannot be one. Interned
/// when it is plain ASCII (`HeaderValue::from_static` takes nothing else; a name with other
/// characters is still a valid value, made the usual way).
fn group_header(name: &str) -> Option<http::HeaderValue> {
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
    if plain {
        Some(http::HeaderValue::from_static(interned(name)))
    } else {
        http::HeaderValue::from_str(name).ok()
    }
}

fn check_key_header(name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("key_header {name:?} is not a valid HTTP header name"))?;
    // Lower case, as `from_bytes` made it; interned for the reason `interned` gives.
    let header = HeaderName::from_static(interned(header.as_str()));
    let reserved = [
        "host",
        "authorization",
        "connection",
        "content-length",
        "transfer-encoding",
        "cookie",
        "x-forwarded-for",
    ];
    if reserved.contains(&header.as_str()) || header.as_str().starts_with("x-apiward-") {
        return Err(format!(
            "key_header {name:?} is reserved: use a dedicated header such as \"X-Api-Key\" (Authorization: Bearer is always accepted)"
        ));
    }
    Ok(header)
}

/// A user id is email-shaped: `local@domain`, no spaces, no ':' (it is the Basic-auth user name).
pub fn check_user_id(id: &str) -> Result<(), String> {
    let shape =
        "a user id is email-shaped, like \"crm-sync@example.org\" (it need not be a real mailbox)";
    if id.len() > 254 {
        return Err(format!("user id is longer than 254 characters: {shape}"));
    }
    let Some((local, domain)) = id.split_once('@') else {
        return Err(format!("user id {id:?} has no '@': {shape}"));
    };
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(format!("user id {id:?} is not email-shaped: {shape}"));
    }
    if id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '"')
    {
        return Err(format!(
            "user id {id:?} contains a space, a control character, '\"' or ':': {shape}"
        ));
    }
    Ok(())
}

fn parse_digest(text: &str) -> Result<KeyDigest, String> {
    let hint = "sha256 must be the 64-character hex SHA-256 digest of the whole key (e.g. `printf %s \"$KEY\" | sha256sum`), never the key itself";
    if text.starts_with("aw_") {
        return Err(format!(
            "this looks like a key, not a digest: remove it from the file and revoke it; {hint}"
        ));
    }
    if text.len() != 64 {
        return Err(format!(
            "the digest has {} characters, not 64: {hint}",
            text.len()
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| format!("the digest is not hexadecimal: {hint}"))?;
    Ok(KeyDigest(out))
}

/// Converts a TOML offset date-time to Unix seconds; a date-time without an offset is ambiguous.
pub fn unix_seconds(dt: &Datetime) -> Result<i64, String> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} needs a date, a time and a time zone, e.g. 2026-11-22T10:00:00Z"
        ));
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let offset_minutes = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes),
    };
    Ok(days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_minutes * 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

mod admin;
mod limits;
mod protection;
pub use admin::{DEFAULT_RECENT_PER_USER, DEFAULT_RECENT_REFUSALS};
#[cfg(test)]
mod tests;
