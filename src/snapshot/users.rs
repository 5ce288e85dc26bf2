//! The API users as a snapshot holds them: a user, its keys (only their digests are known), its
//! limits, and the digest map keyed by them. A leaf of `snapshot`, so the user and key tables
//! (`tables.rs`) and the snapshot itself share these types without importing each other.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use crate::auth::address::SourceWhitelist;

/// The SHA-256 digest of a whole key string: what the file stores and what lookups use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyDigest(pub [u8; 32]);

impl KeyDigest {
    pub fn of(key: &str) -> KeyDigest {
        use sha2::Digest;
        KeyDigest(sha2::Sha256::digest(key.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for KeyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A digest is not a secret, but a short form is all a log ever needs.
        write!(f, "KeyDigest({}…)", &self.to_hex()[..12])
    }
}

impl Hash for KeyDigest {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

/// A SHA-256 digest is already uniformly distributed: its first eight bytes are the hash.
#[derive(Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a KeyDigest is hashed; FNV-1a keeps it correct.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type DigestMap<V> = HashMap<KeyDigest, V, BuildHasherDefault<DigestHasher>>;

/// A user's slot in `Snapshot::users`. It stays the same across reloads for as long as the
/// user's id is in the file (a removed user's slot may later be given to a new user).
pub type UserIndex = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserStatus {
    Active,
    Pending,
    Inactive,
}

impl UserStatus {
    pub fn parse(text: &str) -> Option<UserStatus> {
        match text {
            "active" => Some(UserStatus::Active),
            "pending" => Some(UserStatus::Pending),
            "inactive" => Some(UserStatus::Inactive),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Pending => "pending",
            UserStatus::Inactive => "inactive",
        }
    }
}

/// A non-interactive principal that may only reach the APIs behind the gateway.
#[derive(Debug, Clone)]
pub struct ApiUser {
    /// Shared, because logs and metric labels outlive the snapshot a request was decided on.
    pub id: Arc<str>,
    pub display_name: Option<Box<str>>,
    pub status: UserStatus,
    pub group: u32,
    pub sources: SourceWhitelist,
    pub password_hash: Option<Box<str>>,
    /// Rate, quota and concurrency limits, resolved from the user's own value or its group's.
    /// Never changed once compiled: `limit_state` is the state for exactly these.
    pub limits: SharedLimits,
    /// The limits' state of this user, hung here by `crate::limits` so that a request finds it
    /// without a lookup; empty for a user without limits (and until first resolved).
    pub limit_state: crate::limits::state::LimitCell,
}

/// `rate_limit = { requests, per, burst }`: a steady rate of `requests` per `per`, and `burst`
/// more that a client at rest may send at once (GCRA, `crate::limits::gcra`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per: Duration,
    pub burst: u32,
}

/// `quota = { requests, per }`: at most `requests` in each period of `per`, periods counted
/// from the Unix epoch (so every replica agrees on where one ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub per: Duration,
}

/// Where a user's effective rate limit came from, for `explain`, `/status` and `users list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitOrigin {
    User,
    Group,
}

/// Everything that limits one user; all `None` for a user its group does not limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserLimits {
    pub rate: Option<(RateLimit, LimitOrigin)>,
    pub quota: Option<Quota>,
    pub max_concurrent: Option<u32>,
}

impl UserLimits {
    pub const NONE: UserLimits = UserLimits {
        rate: None,
        quota: None,
        max_concurrent: None,
    };

    pub fn is_unlimited(&self) -> bool {
        self.rate.is_none() && self.quota.is_none() && self.max_concurrent.is_none()
    }
}

/// A user's `UserLimits`, read through `Deref`: nothing for an unlimited user, and one
/// allocation shared by every user of a group who takes the group's limits as they are, so a
/// user carries 8 bytes of limits instead of 64 (at a million users, 56 MB).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SharedLimits(Option<std::sync::Arc<UserLimits>>);

impl SharedLimits {
    pub fn new(limits: UserLimits) -> SharedLimits {
        if limits.is_unlimited() {
            SharedLimits(None)
        } else {
            SharedLimits(Some(std::sync::Arc::new(limits)))
        }
    }
}

impl From<UserLimits> for SharedLimits {
    fn from(limits: UserLimits) -> SharedLimits {
        SharedLimits::new(limits)
    }
}

impl std::ops::Deref for SharedLimits {
    type Target = UserLimits;

    fn deref(&self) -> &UserLimits {
        self.0.as_deref().unwrap_or(&UserLimits::NONE)
    }
}

impl std::fmt::Debug for SharedLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// The first characters of a key, as the file keeps them to tell keys apart; stored inline
/// (at most 16 bytes), so a million keys do not mean a million small allocations.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyPrefix {
    len: u8,
    bytes: [u8; KeyPrefix::MAX],
}

impl KeyPrefix {
    pub const MAX: usize = 16;

    /// `None` if longer than `MAX` bytes.
    pub fn new(text: &str) -> Option<KeyPrefix> {
        let len = text.len();
        if len > KeyPrefix::MAX {
            return None;
        }
        let mut bytes = [0u8; KeyPrefix::MAX];
        bytes[..len].copy_from_slice(text.as_bytes());
        Some(KeyPrefix {
            len: len as u8,
            bytes,
        })
    }

    /// The prefix's bytes (valid UTF-8), without checking them again.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::ops::Deref for KeyPrefix {
    type Target = str;

    fn deref(&self) -> &str {
        // Built from a whole `&str`, so these bytes are valid UTF-8.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl std::fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", &**self)
    }
}

/// One key of a user; the key itself is never known, only its digest (the map key).
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub user: UserIndex,
    pub prefix: Option<KeyPrefix>,
    /// Unix seconds.
    pub created: Option<i64>,
    /// Unix seconds; the key is refused from this instant on.
    pub expires: Option<i64>,
}

/// Unix seconds as RFC 3339 in UTC (`2026-11-22T10:00:00Z`), as the configuration file writes
/// them; the number itself if it is out of range.
pub fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}
