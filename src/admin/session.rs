//! Who is calling the admin listener: an admin token (`Authorization: Bearer awa_...`) or a
//! console session (an `HttpOnly`, `SameSite=Strict` cookie that expires when idle), the CSRF
//! token every state-changing request of a session carries, the `Host` check against DNS
//! rebinding, and console logins (Argon2id behind the failure limiter).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{AUTHORIZATION, COOKIE, HOST};

use crate::auth::password::limiter::FailureLimiter;
use crate::snapshot::{KeyDigest, Snapshot};

/// The console's session cookie.
pub const COOKIE_NAME: &str = "apiward_session";
/// Sessions kept at most; the least recently used goes first.
const MAX_SESSIONS: usize = 1000;

/// An authenticated caller of the console or the API.
#[derive(Debug, Clone)]
pub enum Caller {
    /// `Authorization: Bearer awa_...`: no ambient credential, so no CSRF token is needed.
    Token { admin: Arc<str> },
    /// The console's cookie; state-changing requests must carry `csrf`.
    Session { admin: Arc<str>, csrf: String },
}

impl Caller {
    pub fn admin(&self) -> &str {
        match self {
            Caller::Token { admin } | Caller::Session { admin, .. } => admin,
        }
    }

    /// Whether a state-changing request may go ahead with this CSRF token (from the
    /// `X-CSRF-Token` header or the form's `csrf` field).
    pub fn csrf_ok(&self, presented: Option<&str>) -> bool {
        match self {
            Caller::Token { .. } => true,
            Caller::Session { csrf, .. } => {
                presented.is_some_and(|p| constant_time_eq(p.as_bytes(), csrf.as_bytes()))
            }
        }
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unauthenticated {
    /// No token, no session, or one that is unknown, revoked or expired.
    Missing,
    /// An API user's key: never accepted on the admin listener.
    UserKey,
}

impl Unauthenticated {
    pub fn message(self) -> &'static str {
        match self {
            Unauthenticated::Missing => {
                "log in to the console, or send Authorization: Bearer <admin token> (apiward admins issue-token)"
            }
            Unauthenticated::UserKey => {
                "API users' keys are not accepted on the admin listener: use an admin token (awa_...)"
            }
        }
    }
}

struct Session {
    admin: Arc<str>,
    csrf: String,
    last_seen: Instant,
}

/// The console's sessions, in memory only: a restart logs everyone out.
#[derive(Default)]
pub struct Sessions {
    /// By the digest of the cookie's value, so the map never holds a usable session id.
    by_digest: Mutex<HashMap<[u8; 32], Session>>,
}

impl Sessions {
    /// Opens a session; answers the cookie value.
    pub fn open(&self, admin: &str) -> Result<String, crate::keys::RandomSourceError> {
        let id = crate::keys::generate_password(43)?;
        let csrf = crate::keys::generate_password(32)?;
        let mut map = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            KeyDigest::of(&id).0,
            Session {
                admin: admin.into(),
                csrf,
                last_seen: Instant::now(),
            },
        );
        Ok(id)
    }

    pub fn close(&self, cookie_value: &str) {
        let mut map = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&KeyDigest::of(cookie_value).0);
    }

    /// The session's caller, if it exists, is not idle past `idle`, and its admin is still in
    /// the file; using it counts as activity.
    fn find(&self, cookie_value: &str, idle: Duration, snapshot: &Snapshot) -> Option<Caller> {
        let digest = KeyDigest::of(cookie_value).0;
        let mut map = self.by_digest.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let alive = map.get(&digest).is_some_and(|s| {
            now.saturating_duration_since(s.last_seen) < idle
                && snapshot.admin_by_id(&s.admin).is_some()
        });
        if !alive {
            map.remove(&digest);
            return None;
        }
        let s = map.get_mut(&digest)?;
        s.last_seen = now;
        Some(Caller::Session {
            admin: Arc::clone(&s.admin),
            csrf: s.csrf.clone(),
        })
    }
}

/// Identifies the caller from its headers against the current snapshot.
pub fn identify(
    headers: &HeaderMap,
    sessions: &Sessions,
    snapshot: &Snapshot,
) -> Result<Caller, Unauthenticated> {
    if headers.contains_key(&snapshot.server.key_header) || headers.contains_key("x-api-key") {
        return Err(Unauthenticated::UserKey);
    }
    if let Some(value) = headers.get(AUTHORIZATION) {
        let text = value.to_str().unwrap_or("");
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or("");
        if token.starts_with(crate::keys::KEY_MARKER) {
            return Err(Unauthenticated::UserKey);
        }
        if !token.starts_with(crate::keys::ADMIN_TOKEN_MARKER) {
            return Err(Unauthenticated::Missing);
        }
        return match snapshot.admin_tokens.get(&KeyDigest::of(token)) {
            Some(&i) => Ok(Caller::Token {
                admin: Arc::clone(&snapshot.admins[i as usize].id),
            }),
            None => Err(Unauthenticated::Missing),
        };
    }
    match cookie(headers, COOKIE_NAME) {
        Some(value) => sessions
            .find(value, snapshot.console.session_idle, snapshot)
            .ok_or(Unauthenticated::Missing),
        None => Err(Unauthenticated::Missing),
    }
}

/// The value of cookie `name`, if sent.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for a new session: `Secure` when the listener speaks TLS.
pub fn session_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path=/; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `Set-Cookie` that ends the session in the browser.
pub fn cleared_cookie(secure: bool) -> String {
    format!(
        "{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Whether the `Host` header names this listener: an IP literal (which no DNS rebinding can
/// produce), `localhost`, or one of `admin_hosts`. A request without `Host` (HTTP/1.0 tools) is
/// let through: browsers always send one.
pub fn host_allowed(headers: &HeaderMap, admin_hosts: &[String]) -> bool {
    let Some(host) = headers.get(HOST) else {
        return true;
    };
    let Ok(host) = host.to_str() else {
        return false;
    };
    let host = host.trim().to_ascii_lowercase();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, _)) => return v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            Some(_) => return false,
            None => host.as_str(),
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    name.parse::<std::net::Ipv4Addr>().is_ok()
        || name == "localhost"
        || admin_hosts.iter().any(|h| {
            let h = h.strip_suffix('.').unwrap_or(h);
            h == name || h == host
        })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Console logins: the failure limiter, then Argon2id off the async workers.
#[derive(Default)]
pub struct Logins {
    limiter: FailureLimiter,
}

/// What a login attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginOutcome {
    Success,
    Failure,
    Throttled,
}

impl LoginOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Success => "success",
            LoginOutcome::Failure => "failure",
            LoginOutcome::Throttled => "throttled",
        }
    }
}

impl Logins {
    /// Checks `password` for admin `id`. An unknown id costs the same Argon2 run as a known one,
    /// so the answer's timing does not tell which ids exist.
    pub async fn check(
        &self,
        snapshot: &Snapshot,
        id: &str,
        password: &str,
        source: std::net::IpAddr,
    ) -> LoginOutcome {
        if !self.limiter.admit(id, source) {
            return LoginOutcome::Throttled;
        }
        let hash = snapshot
            .admin_by_id(id)
            .and_then(|a| a.password_hash.as_deref())
            .map(str::to_string);
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| dummy_hash().to_string());
        let password = password.to_string();
        let matched = tokio::task::spawn_blocking(move || {
            crate::auth::password::argon2_matches(&hash, &password)
        })
        .await
        .unwrap_or(false);
        if matched && known {
            self.limiter.record_success(id, source);
            LoginOutcome::Success
        } else {
            LoginOutcome::Failure
        }
    }
}

/// A hash of a random password, made once, for ids that have none.
fn dummy_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        crate::keys::generate_password(24)
            .ok()
            .and_then(|p| crate::auth::password::hash_password(&p).ok())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_host(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(HOST, host.parse().unwrap());
        h
    }

    #[test]
    fn only_ip_literals_localhost_and_admin_hosts_are_answered() {
        let hosts = vec!["admin.internal".to_string()];
        for ok in [
            "127.0.0.1:9901",
            "10.1.2.3",
            "[::1]:9901",
            "localhost:9901",
            "LOCALHOST",
            "admin.internal",
            "admin.internal:9901",
        ] {
            assert!(host_allowed(&with_host(ok), &hosts), "{ok}");
        }
        for bad in [
            "evil.example:9901",
            "127.0.0.1.evil.example",
            "admin.internal.evil.example",
            "[::1",
            "localhost:x",
        ] {
            assert!(!host_allowed(&with_host(bad), &hosts), "{bad}");
        }
        assert!(host_allowed(&HeaderMap::new(), &hosts));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; apiward_session=xyz; b=2".parse().unwrap());
        assert_eq!(cookie(&h, COOKIE_NAME), Some("xyz"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
