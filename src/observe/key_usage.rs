//! When each key and each password was last used, kept in memory beside the snapshot so stale
//! credentials can be found.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;

use crate::snapshot::{ApiUser, DigestHasher, KeyDigest, Snapshot};

/// Last use and last refusal (Unix seconds) by key digest, and by the digest of a password's
/// stored hash (so a new password starts unused). Only credentials that were presented have an
/// entry; a reload drops the entries of keys and passwords that are gone.
#[derive(Default)]
pub struct KeyUsage {
    last_used: DashMap<KeyDigest, Times, std::hash::BuildHasherDefault<DigestHasher>>,
}

/// 0 means never.
#[derive(Default)]
struct Times {
    used: AtomicI64,
    refused: AtomicI64,
    /// For a password's entry, its user's id: a reload checks that user's password alone, not
    /// every user's.
    password_of: Option<Arc<str>>,
}

impl KeyUsage {
    /// Records a use: a request with this key was admitted. Hot path: a shard read lock and an
    /// atomic store once the key has an entry.
    pub fn touch(&self, digest: &KeyDigest, now: i64) {
        self.times(digest, now, |t| &t.used, None);
    }

    /// Records a refusal of a request with this (known) key: from a source outside the whitelist,
    /// an inactive user, a forbidden path. Not a use, so it never makes a stale key look alive.
    pub fn refused(&self, digest: &KeyDigest, now: i64) {
        self.times(digest, now, |t| &t.refused, None);
    }

    fn times(
        &self,
        digest: &KeyDigest,
        now: i64,
        which: fn(&Times) -> &AtomicI64,
        password_of: Option<&Arc<str>>,
    ) {
        if let Some(entry) = self.last_used.get(digest) {
            // Written once a second at most: a read leaves the cache line shared by the workers
            // that use the key, where a store on every request would move it between cores.
            let time = which(&entry);
            if time.load(Ordering::Relaxed) != now {
                time.store(now, Ordering::Relaxed);
            }
            return;
        }
        let times = Times {
            password_of: password_of.cloned(),
            ..Times::default()
        };
        which(&times).store(now, Ordering::Relaxed);
        self.last_used
            .entry(*digest)
            .and_modify(|t| which(t).store(now, Ordering::Relaxed))
            .or_insert(times);
    }

    pub fn last_refused(&self, digest: &KeyDigest) -> Option<i64> {
        self.last_used
            .get(digest)
            .map(|e| e.refused.load(Ordering::Relaxed))
            .filter(|t| *t != 0)
    }

    pub fn last_used(&self, digest: &KeyDigest) -> Option<i64> {
        self.last_used
            .get(digest)
            .map(|e| e.used.load(Ordering::Relaxed))
            .filter(|t| *t != 0)
    }

    /// Records a use of `user`'s password (a Basic-auth request whose password was right).
    pub fn touch_password(&self, user: &ApiUser, now: i64) {
        if let Some(digest) = password_digest(user) {
            self.times(&digest, now, |t| &t.used, Some(&user.id));
        }
    }

    /// Records a refusal of a request whose password for `user` was right.
    pub fn refused_password(&self, user: &ApiUser, now: i64) {
        if let Some(digest) = password_digest(user) {
            self.times(&digest, now, |t| &t.refused, Some(&user.id));
        }
    }

    /// When a request with `user`'s current password was last refused after it was verified.
    pub fn password_last_refused(&self, user: &ApiUser) -> Option<i64> {
        self.last_refused(&password_digest(user)?)
    }

    /// When `user`'s current password was last used.
    pub fn password_last_used(&self, user: &ApiUser) -> Option<i64> {
        self.last_used(&password_digest(user)?)
    }

    /// Forgets keys and passwords that the new snapshot no longer has: work for the entries
    /// kept (credentials presented), none for the users of the file.
    pub fn retain_keys_of(&self, snapshot: &Snapshot) {
        self.last_used
            .retain(|digest, times| match &times.password_of {
                Some(id) => snapshot
                    .user_by_id(id)
                    .and_then(password_digest)
                    .is_some_and(|d| d == *digest),
                None => snapshot.keys.contains_key(digest),
            });
    }
}

/// What a password's last use is kept under: the digest of its stored hash, never of the password.
fn password_digest(user: &ApiUser) -> Option<KeyDigest> {
    user.password_hash.as_deref().map(KeyDigest::of)
}
