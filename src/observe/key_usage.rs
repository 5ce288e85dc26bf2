//! When each key and each password was last used, kept in memory beside the snapshot so stale
//! credentials can be found.

use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;

use crate::snapshot::{ApiUser, DigestHasher, KeyDigest, Snapshot};

/// Last use (Unix seconds) by key digest, and by the digest of a password's stored hash (so a
/// new password starts unused). Only credentials that were used have an entry; a reload drops
/// the entries of keys and passwords that are gone.
#[derive(Default)]
pub struct KeyUsage {
    last_used: DashMap<KeyDigest, AtomicI64, std::hash::BuildHasherDefault<DigestHasher>>,
}

impl KeyUsage {
    /// Records a use. Hot path: a shard read lock and an atomic store once the key has an entry.
    pub fn touch(&self, digest: &KeyDigest, now: i64) {
        if let Some(entry) = self.last_used.get(digest) {
            entry.store(now, Ordering::Relaxed);
            return;
        }
        self.last_used.insert(*digest, AtomicI64::new(now));
    }

    pub fn last_used(&self, digest: &KeyDigest) -> Option<i64> {
        self.last_used
            .get(digest)
            .map(|e| e.load(Ordering::Relaxed))
    }

    /// Records a use of `user`'s password (a Basic-auth request whose password was right).
    pub fn touch_password(&self, user: &ApiUser, now: i64) {
        if let Some(digest) = password_digest(user) {
            self.touch(&digest, now);
        }
    }

    /// When `user`'s current password was last used.
    pub fn password_last_used(&self, user: &ApiUser) -> Option<i64> {
        self.last_used(&password_digest(user)?)
    }

    /// Forgets keys and passwords that the new snapshot no longer has.
    pub fn retain_keys_of(&self, snapshot: &Snapshot) {
        let passwords: std::collections::HashSet<KeyDigest> =
            snapshot.users.iter().filter_map(password_digest).collect();
        self.last_used
            .retain(|digest, _| snapshot.keys.contains_key(digest) || passwords.contains(digest));
    }
}

/// What a password's last use is kept under: the digest of its stored hash, never of the password.
fn password_digest(user: &ApiUser) -> Option<KeyDigest> {
    user.password_hash.as_deref().map(KeyDigest::of)
}
