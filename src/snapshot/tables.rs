//! A snapshot's user and key tables, in pieces that consecutive snapshots share: a reload that
//! changes a few users copies the few pages and shards they are in, not a million entries.
//!
//! A user keeps its slot (`UserIndex`) from one reload to the next for as long as its id stays
//! in the file; a removed user's slot is given to the next new user. Lookups by id go through
//! the slots sorted by id.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use super::users::{ApiKey, ApiUser, DigestMap, KeyDigest, UserIndex};

/// Slots per page of the user table.
const PAGE: usize = 1024;

type Page = Arc<[Option<ApiUser>]>;

/// Every API user, by slot.
#[derive(Clone, Default)]
pub struct UserTable {
    pages: Vec<Page>,
    /// The live slots, sorted by user id.
    order: Arc<[UserIndex]>,
    /// Slots of removed users, for the next new ones.
    free: Vec<UserIndex>,
}

impl std::fmt::Debug for UserTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl UserTable {
    /// Users sorted by id; the first gets slot 0, and so on.
    pub(crate) fn from_sorted(users: Vec<ApiUser>) -> UserTable {
        let count = users.len();
        let mut pages = Vec::with_capacity(count.div_ceil(PAGE));
        let mut users = users.into_iter();
        for _ in 0..count.div_ceil(PAGE) {
            let mut page: Vec<Option<ApiUser>> = users.by_ref().take(PAGE).map(Some).collect();
            page.resize_with(PAGE, || None);
            pages.push(Page::from(page));
        }
        let free = ((count as UserIndex)..(pages.len() * PAGE) as UserIndex)
            .rev()
            .collect();
        UserTable {
            pages,
            order: (0..count as UserIndex).collect(),
            free,
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Slots there are room for (live or free).
    pub fn slot_count(&self) -> usize {
        self.pages.len() * PAGE
    }

    pub fn get(&self, slot: UserIndex) -> Option<&ApiUser> {
        let slot = slot as usize;
        self.pages.get(slot / PAGE)?[slot % PAGE].as_ref()
    }

    /// Every user, in id order.
    pub fn iter(&self) -> impl Iterator<Item = &ApiUser> + '_ {
        self.order.iter().filter_map(|&slot| self.get(slot))
    }

    /// Every user with its slot, in id order.
    pub fn slots(&self) -> impl Iterator<Item = (UserIndex, &ApiUser)> + '_ {
        self.order
            .iter()
            .filter_map(|&slot| self.get(slot).map(|u| (slot, u)))
    }

    pub fn index_of(&self, id: &str) -> Option<UserIndex> {
        let at = self
            .order
            .binary_search_by(|&slot| self.get(slot).map_or("", |u| &*u.id).cmp(id))
            .ok()?;
        Some(self.order[at])
    }

    /// A copy to change: only the pages it changes are copied.
    pub(crate) fn edit(&self) -> UserTableEdit<'_> {
        UserTableEdit {
            base: self,
            pages: HashMap::new(),
            extra_pages: Vec::new(),
            free: self.free.clone(),
            removed: Vec::new(),
            added: Vec::new(),
        }
    }
}

/// Changes to a `UserTable`, applied by `finish`.
pub(crate) struct UserTableEdit<'a> {
    base: &'a UserTable,
    /// Copies of the base's pages that changed, by page number.
    pages: HashMap<usize, Vec<Option<ApiUser>>>,
    /// Pages past the base's last.
    extra_pages: Vec<Vec<Option<ApiUser>>>,
    free: Vec<UserIndex>,
    removed: Vec<UserIndex>,
    added: Vec<UserIndex>,
}

impl UserTableEdit<'_> {
    fn page_mut(&mut self, page: usize) -> &mut Vec<Option<ApiUser>> {
        let base = self.base.pages.len();
        if page >= base {
            return &mut self.extra_pages[page - base];
        }
        match self.pages.entry(page) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.base.pages[page].to_vec()),
        }
    }

    /// Takes the user out of its slot; the slot is free for a later `add`.
    pub fn remove(&mut self, slot: UserIndex) {
        let s = slot as usize;
        self.page_mut(s / PAGE)[s % PAGE] = None;
        self.removed.push(slot);
        self.free.push(slot);
    }

    /// Replaces the user in `slot` by one with the same id.
    pub fn replace(&mut self, slot: UserIndex, user: ApiUser) {
        let s = slot as usize;
        self.page_mut(s / PAGE)[s % PAGE] = Some(user);
    }

    /// Adds a user whose id is not in the table; returns its slot.
    pub fn add(&mut self, user: ApiUser) -> UserIndex {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                let first = (self.base.pages.len() + self.extra_pages.len()) * PAGE;
                self.extra_pages.push(vec![None; PAGE]);
                self.free
                    .extend(((first + 1) as UserIndex..(first + PAGE) as UserIndex).rev());
                first as UserIndex
            }
        };
        let s = slot as usize;
        self.page_mut(s / PAGE)[s % PAGE] = Some(user);
        self.added.push(slot);
        slot
    }

    pub fn finish(self) -> UserTable {
        let mut pages: Vec<Page> = self.base.pages.clone();
        for (n, page) in self.pages {
            pages[n] = Page::from(page);
        }
        pages.extend(self.extra_pages.into_iter().map(Page::from));
        if self.removed.is_empty() && self.added.is_empty() {
            // Users replaced in their slots: the order by id is the same.
            return UserTable {
                pages,
                order: Arc::clone(&self.base.order),
                free: self.free,
            };
        }
        let mut table = UserTable {
            pages,
            order: Arc::from(Vec::new()),
            free: self.free,
        };
        // Removed slots leave the order; a removed slot given to a new user is placed anew.
        let removed: std::collections::HashSet<UserIndex> = self.removed.iter().copied().collect();
        let kept: Vec<UserIndex> = self
            .base
            .order
            .iter()
            .copied()
            .filter(|s| !removed.contains(s))
            .collect();
        let id_of = |table: &UserTable, slot: UserIndex| -> Arc<str> {
            table
                .get(slot)
                .map_or_else(|| Arc::from(""), |u| Arc::clone(&u.id))
        };
        let mut added: Vec<(Arc<str>, UserIndex)> =
            self.added.iter().map(|&s| (id_of(&table, s), s)).collect();
        added.sort();
        let mut order = Vec::with_capacity(kept.len() + added.len());
        let mut from = 0;
        for (id, slot) in added {
            let at =
                from + kept[from..].partition_point(|&s| table.get(s).is_some_and(|u| *u.id < *id));
            order.extend_from_slice(&kept[from..at]);
            order.push(slot);
            from = at;
        }
        order.extend_from_slice(&kept[from..]);
        table.order = Arc::from(order);
        table
    }
}

/// Every key, by digest, in shards that consecutive snapshots share.
#[derive(Clone)]
pub struct KeyTable {
    /// A digest's shard is picked by its bytes 8..12 (the map itself hashes bytes 0..8).
    shards: Vec<Arc<DigestMap<ApiKey>>>,
    len: usize,
}

impl Default for KeyTable {
    fn default() -> Self {
        KeyTableBuilder::for_keys(0).finish()
    }
}

/// A new `KeyTable`, filled one key at a time.
pub(crate) struct KeyTableBuilder {
    maps: Vec<DigestMap<ApiKey>>,
    len: usize,
}

impl KeyTableBuilder {
    /// For about `count` keys: the shard count is fixed by it.
    pub fn for_keys(count: usize) -> KeyTableBuilder {
        let shards = count.div_ceil(KEYS_PER_SHARD).max(1);
        let each = if shards == 1 { count } else { KEYS_PER_SHARD };
        KeyTableBuilder {
            maps: (0..shards)
                .map(|_| DigestMap::with_capacity_and_hasher(each, Default::default()))
                .collect(),
            len: 0,
        }
    }

    pub fn contains_key(&self, digest: &KeyDigest) -> bool {
        self.maps[shard_of(digest, self.maps.len())].contains_key(digest)
    }

    /// Inserts a key whose digest is not in the table yet (`contains_key` says).
    pub fn insert(&mut self, digest: KeyDigest, key: ApiKey) {
        let shards = self.maps.len();
        if self.maps[shard_of(&digest, shards)]
            .insert(digest, key)
            .is_none()
        {
            self.len += 1;
        }
    }

    pub fn finish(self) -> KeyTable {
        KeyTable {
            shards: self.maps.into_iter().map(Arc::new).collect(),
            len: self.len,
        }
    }
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyTable({} keys)", self.len)
    }
}

/// Keys per shard aimed at when a table is built. A shard's map has a power of two of buckets,
/// at most 7/8 full: 190 keys on average leave almost every shard within 256 buckets (224
/// keys), about three quarters full, where a power of two of shards would leave them half
/// full (measured in docs/benchmarks.md: the key table is the largest part of a snapshot).
const KEYS_PER_SHARD: usize = 190;

impl KeyTable {
    /// A table of these keys (digests unique).
    #[cfg(test)]
    pub(crate) fn build(keys: Vec<(KeyDigest, ApiKey)>) -> KeyTable {
        let mut builder = KeyTableBuilder::for_keys(keys.len());
        for (digest, key) in keys {
            builder.insert(digest, key);
        }
        builder.finish()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, digest: &KeyDigest) -> Option<&ApiKey> {
        self.shards[shard_of(digest, self.shards.len())].get(digest)
    }

    pub fn contains_key(&self, digest: &KeyDigest) -> bool {
        self.get(digest).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&KeyDigest, &ApiKey)> + '_ {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyDigest> + '_ {
        self.iter().map(|(d, _)| d)
    }

    pub fn values(&self) -> impl Iterator<Item = &ApiKey> + '_ {
        self.iter().map(|(_, k)| k)
    }

    /// A copy to change: only the shards it changes are copied.
    pub(crate) fn edit(&self) -> KeyTableEdit<'_> {
        KeyTableEdit {
            base: self,
            shards: HashMap::new(),
            len: self.len,
        }
    }
}

/// Bytes 8..12 of the digest: what picks its shard, whatever the shard count. A `SourceIndex`
/// keeps this much of each key, to find a user's keys again without scanning the table.
pub(crate) fn shard_selector(digest: &KeyDigest) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&digest.0[8..12]);
    u32::from_le_bytes(bytes)
}

/// The selector, uniform, scaled to `0..shards` (a multiply and a shift).
fn shard_for(selector: u32, shards: usize) -> usize {
    ((u64::from(selector) * shards as u64) >> 32) as usize
}

fn shard_of(digest: &KeyDigest, shards: usize) -> usize {
    shard_for(shard_selector(digest), shards)
}

/// Changes to a `KeyTable`, applied by `finish`.
pub(crate) struct KeyTableEdit<'a> {
    base: &'a KeyTable,
    shards: HashMap<usize, DigestMap<ApiKey>>,
    len: usize,
}

impl KeyTableEdit<'_> {
    fn shard_mut(&mut self, digest: &KeyDigest) -> &mut DigestMap<ApiKey> {
        let n = shard_of(digest, self.base.shards.len());
        self.shards
            .entry(n)
            .or_insert_with(|| (*self.base.shards[n]).clone())
    }

    pub fn contains_key(&self, digest: &KeyDigest) -> bool {
        let n = shard_of(digest, self.base.shards.len());
        match self.shards.get(&n) {
            Some(shard) => shard.contains_key(digest),
            None => self.base.shards[n].contains_key(digest),
        }
    }

    #[cfg(test)]
    pub fn remove(&mut self, digest: &KeyDigest) {
        if self.shard_mut(digest).remove(digest).is_some() {
            self.len -= 1;
        }
    }

    /// Removes the keys of the user in `slot` whose shard selector is `selector`, pushing each
    /// one's digest onto `removed`: one shard looked through, not the table.
    pub fn remove_user_keys(
        &mut self,
        selector: u32,
        slot: UserIndex,
        removed: &mut Vec<KeyDigest>,
    ) {
        let n = shard_for(selector, self.base.shards.len());
        let before = removed.len();
        let base = &self.base.shards[n];
        let shard = self.shards.entry(n).or_insert_with(|| (**base).clone());
        shard.retain(|digest, key| {
            let theirs = key.user == slot && shard_selector(digest) == selector;
            if theirs {
                removed.push(*digest);
            }
            !theirs
        });
        self.len -= removed.len() - before;
    }

    /// Inserts a key whose digest is not in the table (`contains_key` says).
    pub fn insert(&mut self, digest: KeyDigest, key: ApiKey) {
        if self.shard_mut(&digest).insert(digest, key).is_none() {
            self.len += 1;
        }
    }

    pub fn finish(self) -> KeyTable {
        let mut shards = self.base.shards.clone();
        for (n, shard) in self.shards {
            shards[n] = Arc::new(shard);
        }
        KeyTable {
            shards,
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::address::SourceWhitelist;
    use crate::snapshot::UserStatus;

    fn user(id: &str) -> ApiUser {
        ApiUser {
            id: id.into(),
            display_name: None,
            status: UserStatus::Active,
            group: 0,
            sources: SourceWhitelist::Any,
            password_hash: None,
            limits: Default::default(),
            limit_state: Default::default(),
        }
    }

    fn ids(table: &UserTable) -> Vec<String> {
        table.iter().map(|u| u.id.to_string()).collect()
    }

    /// A user's entry is in every page at a million users: its size is a memory goal (#20).
    /// 88 bytes, plus the 8 of the pointer to the user's limit state (#15), which spares every
    /// limited request a lookup by id.
    #[test]
    fn a_user_entry_stays_small() {
        assert_eq!(std::mem::size_of::<Option<ApiUser>>(), 96);
    }

    #[test]
    fn edits_keep_slots_and_id_order() {
        let base = UserTable::from_sorted((0..3000).map(|i| user(&format!("u{i:05}@x"))).collect());
        assert_eq!(base.index_of("u00042@x"), Some(42));
        let mut edit = base.edit();
        edit.remove(7);
        edit.replace(8, user("u00008@x"));
        let a = edit.add(user("a@x"));
        let z = edit.add(user("zz@x"));
        let table = edit.finish();
        assert_eq!(a, 7, "a freed slot is used first");
        assert_eq!(table.len(), 3001);
        assert_eq!(
            table.index_of("u00042@x"),
            Some(42),
            "untouched users keep their slot"
        );
        assert_eq!(table.index_of("u00007@x"), None);
        assert_eq!(table.index_of("a@x"), Some(7));
        assert_eq!(table.index_of("zz@x"), Some(z));
        let listed = ids(&table);
        let mut sorted = listed.clone();
        sorted.sort();
        assert_eq!(listed, sorted);
        assert_eq!(ids(&base).len(), 3000, "the base is unchanged");
        assert!(
            Arc::ptr_eq(&base.pages[1], &table.pages[1]),
            "untouched pages are shared"
        );
        assert!(!Arc::ptr_eq(&base.pages[0], &table.pages[0]));
    }

    #[test]
    fn key_edits_copy_only_their_shards() {
        let key = |user| ApiKey {
            user,
            prefix: None,
            created: None,
            expires: None,
        };
        let digests: Vec<KeyDigest> = (0..5000).map(|i| KeyDigest::of(&i.to_string())).collect();
        let base = KeyTable::build(digests.iter().map(|&d| (d, key(1))).collect());
        assert_eq!(base.len(), 5000);
        let mut edit = base.edit();
        edit.remove(&digests[0]);
        let fresh = KeyDigest::of("fresh");
        assert!(!edit.contains_key(&fresh));
        edit.insert(fresh, key(2));
        let table = edit.finish();
        assert_eq!(table.len(), 5000);
        assert!(table.get(&digests[0]).is_none() && base.get(&digests[0]).is_some());
        assert_eq!(table.get(&fresh).map(|k| k.user), Some(2));
        let shared = (0..table.shards.len())
            .filter(|&n| Arc::ptr_eq(&table.shards[n], &base.shards[n]))
            .count();
        assert!(shared >= table.shards.len() - 2);
        assert_eq!(table.iter().count(), 5000);
    }

    #[test]
    fn a_users_keys_are_removed_by_their_selectors_alone() {
        let key = |user| ApiKey {
            user,
            prefix: None,
            created: None,
            expires: None,
        };
        let digests: Vec<KeyDigest> = (0..5000).map(|i| KeyDigest::of(&i.to_string())).collect();
        // Keys 10, 11 and 12 are user 7's; every other key is user 1's.
        let base = KeyTable::build(
            digests
                .iter()
                .enumerate()
                .map(|(i, &d)| (d, key(if (10..13).contains(&i) { 7 } else { 1 })))
                .collect(),
        );
        let mut edit = base.edit();
        let mut removed = Vec::new();
        for d in &digests[10..13] {
            edit.remove_user_keys(shard_selector(d), 7, &mut removed);
        }
        // A selector of user 1's key, asked for user 7: nothing of user 1's goes.
        edit.remove_user_keys(shard_selector(&digests[0]), 7, &mut removed);
        let table = edit.finish();
        removed.sort_by_key(|d| d.0);
        let mut expected = digests[10..13].to_vec();
        expected.sort_by_key(|d| d.0);
        assert_eq!(removed, expected);
        assert_eq!(table.len(), 4997);
        assert_eq!(table.iter().count(), 4997);
        assert!(table.values().all(|k| k.user == 1));
        assert_eq!(base.len(), 5000, "the base is unchanged");
    }
}
