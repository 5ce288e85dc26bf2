//! When each key was last used, kept in memory beside the snapshot so stale keys can be found.

use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;

use crate::snapshot::{DigestHasher, KeyDigest, Snapshot};

/// Last use (Unix seconds) by key digest. Only keys that were used have an entry; a reload drops
/// the entries of keys that are gone.
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

    /// Forgets keys that the new snapshot no longer has.
    pub fn retain_keys_of(&self, snapshot: &Snapshot) {
        self.last_used
            .retain(|digest, _| snapshot.keys.contains_key(digest));
    }
}
