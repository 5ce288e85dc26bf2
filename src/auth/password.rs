//! Basic-auth passwords: Argon2id hashes, and the verifier the gateway passes to `decide`, which
//! remembers successes so the hot path pays Argon2 once per credential and slows down guessing.
//!
//! How a Basic credential is checked, cheapest first:
//! 1. The success cache. Its key is an HMAC, under a secret drawn at start-up and never stored,
//!    of (user id, the user's stored hash, the presented password). A hit means "this exact
//!    password matched this exact hash before", so it stays correct across reloads without being
//!    flushed: a changed password changes the hash and therefore the key; a disabled or deleted
//!    user is refused by `decide` itself, which checks the snapshot on every request. Unrelated
//!    reloads (another user added) keep the cache warm.
//! 2. The failure limiter ([`limiter`]): a (user, source) pair with recent failures gets a few
//!    more Argon2 runs, then is refused without one until its bucket refills, and a user's
//!    sources together have a ceiling, so the gateway is neither a password oracle nor a way to
//!    burn its CPU. A cache hit is answered before the limiter, so a client that already logged
//!    in keeps working while someone else guesses its password; `decide` checks the source
//!    whitelist before any of this, so a source the user may not call from never reaches it.
//!    An unknown id, or one without a password, goes through the same limiter and one Argon2 run
//!    against a dummy hash, so the answer's timing does not tell which ids have a password.
//! 3. Argon2id itself (tens of milliseconds by design). It runs on the request's worker thread
//!    inside `tokio::task::block_in_place`, which moves that worker's other tasks to another
//!    thread first; it happens once per user and password per `CACHE_TTL`, plus the few failures
//!    the limiter lets through.

pub mod limiter;

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use argon2::password_hash::PasswordVerifier as _;
use argon2::{Argon2, PasswordHash, PasswordHasher as _};
use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{PasswordAttempt, PasswordCheck};
use crate::snapshot::DigestHasher;
use limiter::FailureLimiter;

/// How long a verified credential is trusted without running Argon2 again.
pub const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Upper bound on cached successes. Only correct passwords are cached and each user has one, so
/// this is only reached with that many users (or hashes changed within `CACHE_TTL`).
const MAX_CACHED: usize = 100_000;

/// Costs above these would let one login attempt take seconds or gigabytes.
const MAX_M_COST_KIB: u32 = 256 * 1024;
const MAX_T_COST: u32 = 16;
const MAX_P_COST: u32 = 8;

/// Hashing a new password failed (the OS random source for the salt, or Argon2 itself).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// Hashes a password with Argon2id and the crate's defaults (19 MiB, 2 passes, 1 lane: the
/// OWASP recommendation) and a random 16-byte salt, as a PHC string `$argon2id$v=19$...`.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Checks that `phc` is an Argon2id PHC string this gateway can verify at a bounded cost.
pub fn check_password_hash(phc: &str) -> Result<(), String> {
    let fix = "set it with `apiward users set-password`";
    if !phc.starts_with("$argon2id$") {
        return Err(format!(
            "password_hash must be an Argon2id PHC string (\"$argon2id$...\"): {fix}"
        ));
    }
    let hash = PasswordHash::new(phc)
        .map_err(|e| format!("password_hash is not a valid PHC string ({e}): {fix}"))?;
    let params = argon2::Params::try_from(&hash)
        .map_err(|e| format!("password_hash has invalid Argon2 parameters ({e}): {fix}"))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(format!("password_hash has no salt or no hash: {fix}"));
    }
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        return Err(format!(
            "password_hash costs m={}, t={}, p={} exceed m={MAX_M_COST_KIB}, t={MAX_T_COST}, p={MAX_P_COST}: every login would be that slow; {fix}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        ));
    }
    Ok(())
}

/// Runs Argon2id. Any malformed hash is a failed check, never a panic.
pub fn argon2_matches(phc: &str, password: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// An HMAC of one presented credential: what the success cache is keyed by, so that neither a
/// password nor an unkeyed digest of one is kept in memory.
#[derive(Clone, Copy, PartialEq, Eq)]
struct CredentialTag([u8; 32]);

impl Hash for CredentialTag {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // An HMAC output is uniformly distributed: its first eight bytes are a good hash.
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

type TagMap<V> = DashMap<CredentialTag, V, BuildHasherDefault<DigestHasher>>;

/// Counters for the admin endpoint and tests; never any credential.
#[derive(Debug, Default)]
pub struct PasswordStats {
    pub cache_hits: AtomicU64,
    pub argon2_runs: AtomicU64,
    pub failures: AtomicU64,
    pub throttled: AtomicU64,
}

/// The gateway's `PasswordCheck`: Argon2id behind a success cache and a failure limiter.
pub struct PasswordVerifier {
    /// The HMAC keyed with this process's secret; cloned per request (the key schedule is done).
    /// `None` if the OS random source failed at start-up: then nothing is cached.
    keyed: Option<Hmac<Sha256>>,
    successes: TagMap<Instant>,
    /// One lock per credential being verified, so a client opening many connections at once
    /// runs Argon2 once and its other requests wait for that result instead of repeating it.
    in_flight: TagMap<Arc<Mutex<()>>>,
    limiter: FailureLimiter,
    stats: PasswordStats,
}

impl Default for PasswordVerifier {
    fn default() -> Self {
        PasswordVerifier::new()
    }
}

impl PasswordVerifier {
    pub fn new() -> PasswordVerifier {
        PasswordVerifier::with_limiter(FailureLimiter::default())
    }

    pub fn with_limiter(limiter: FailureLimiter) -> PasswordVerifier {
        let mut secret = [0u8; 32];
        let keyed = match getrandom::fill(&mut secret) {
            Ok(()) => <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).ok(),
            Err(e) => {
                tracing::error!(error = %e, "no OS randomness for the password cache secret: every Basic-auth request will run Argon2");
                None
            }
        };
        PasswordVerifier {
            keyed,
            successes: TagMap::default(),
            in_flight: TagMap::default(),
            limiter,
            stats: PasswordStats::default(),
        }
    }

    pub fn stats(&self) -> &PasswordStats {
        &self.stats
    }

    fn tag(&self, user: &str, hash: &str, password: &str) -> Option<CredentialTag> {
        let mut mac = self.keyed.clone()?;
        // Length prefixes make the encoding unambiguous: ("a", "bc") and ("ab", "c") differ.
        for part in [user, hash, password] {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        Some(CredentialTag(mac.finalize().into_bytes().into()))
    }

    fn cached(&self, tag: &CredentialTag) -> bool {
        self.successes
            .get(tag)
            .is_some_and(|at| at.elapsed() < CACHE_TTL)
    }

    fn remember(&self, tag: CredentialTag) {
        if self.successes.len() >= MAX_CACHED {
            self.successes.retain(|_, at| at.elapsed() < CACHE_TTL);
            if self.successes.len() >= MAX_CACHED {
                self.successes.clear();
            }
        }
        self.successes.insert(tag, Instant::now());
    }

    /// The cold path: limiter, then Argon2 (off the async worker), then bookkeeping.
    fn verify_uncached(
        &self,
        attempt: &PasswordAttempt<'_>,
        hash: &str,
        tag: Option<CredentialTag>,
    ) -> bool {
        if !self.limiter.admit(attempt.id, attempt.client) {
            self.stats.throttled.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.stats.argon2_runs.fetch_add(1, Ordering::Relaxed);
        let ok = off_the_async_worker(|| argon2_matches(hash, attempt.password));
        if ok {
            self.limiter.record_success(attempt.id, attempt.client);
            if let Some(tag) = tag {
                self.remember(tag);
            }
        } else {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
}

/// What an id without a password is checked against: a hash of a random password, with the
/// parameters `hash_password` gives every user, made once on first need. Verifying against it
/// costs what a wrong password for a real user costs, and never succeeds.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let mut secret = [0u8; 24];
        // Without randomness the dummy is still never matched by anything that counts: a match
        // against it is ignored.
        let _ = getrandom::fill(&mut secret);
        Argon2::default()
            .hash_password_with_salt(&secret, b"apiward-dummy-salt")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

impl PasswordCheck for PasswordVerifier {
    fn verify(&self, attempt: &PasswordAttempt<'_>) -> bool {
        let Some((user, hash)) = attempt
            .user
            .and_then(|u| u.password_hash.as_deref().map(|h| (u, h)))
        else {
            // An unknown id, or one without a password: the same limiter and the same Argon2
            // run as a wrong password, and never a success.
            let _ = self.verify_uncached(attempt, dummy_hash(), None);
            return false;
        };
        let tag = self.tag(&user.id, hash, attempt.password);
        let Some(tag) = tag else {
            return self.verify_uncached(attempt, hash, None);
        };
        if self.cached(&tag) {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let lock = Arc::clone(self.in_flight.entry(tag).or_default().value());
        let ok = {
            // A poisoned lock only means another verification panicked; the cache is still sound.
            let _one_at_a_time =
                off_the_async_worker(|| lock.lock().unwrap_or_else(|p| p.into_inner()));
            if self.cached(&tag) {
                self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
                true
            } else {
                self.verify_uncached(attempt, hash, Some(tag))
            }
        };
        // The last one out removes the lock (the map holds one reference, `lock` another).
        self.in_flight
            .remove_if(&tag, |_, l| Arc::strong_count(l) <= 2);
        ok
    }
}

/// Runs blocking work so that other requests on the same async worker are not stalled: on a
/// multi-threaded runtime the worker hands its queue to another thread first. Elsewhere (a
/// current-thread runtime in a test, or no runtime) it just runs.
fn off_the_async_worker<T>(work: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

#[cfg(test)]
mod tests;
