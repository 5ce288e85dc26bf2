//! Tests of the incremental compile: over random edits it gives exactly what a full compile
//! gives, and its source index stays true.

use std::fmt::Write as _;
use std::path::Path;

use proptest::prelude::*;

use super::{Streamed, compile_after, compile_full, reload_after, stream_with};
use crate::config::diff::ChangeSummary;
use crate::config::whole::compile_whole;
use crate::snapshot::{KeyDigest, Snapshot, UserIndex};

/// One user table as the tests write it.
#[derive(Clone, Debug)]
struct User {
    id: usize,
    /// 0..3 valid statuses, 3 a wrong one.
    status: u8,
    /// 0..3 defined groups (2 only when the head defines it), 3 an undefined one.
    group: u8,
    addresses: u8,
    /// Indices in a pool of digests shared by all users (so two users can share one); 255 is
    /// not a digest at all.
    keys: Vec<u8>,
    display_name: Option<u8>,
    /// 0: keys inline; 1: keys as `[[users."…".keys]]` tables; 2: a comment inside.
    style: u8,
}

fn digest_of(pool: u8) -> String {
    if pool == 255 {
        "not-a-digest".into()
    } else {
        KeyDigest::of(&format!("pool-key-{pool}")).to_hex()
    }
}

fn render_user(out: &mut String, u: &User) {
    let id = format!("u{}@example.org", u.id);
    let status = ["active", "pending", "inactive", "retired"][usize::from(u.status)];
    let group = ["g0", "g1", "g2", "nope"][usize::from(u.group)];
    let addresses = ["*", "127.0.0.1~192.0.2.0/24", "2001:db8::/32"][usize::from(u.addresses)];
    let _ = writeln!(out, "[users.\"{id}\"]");
    if u.style == 2 {
        out.push_str("# a comment that changes nothing\n");
    }
    if let Some(n) = u.display_name {
        let _ = writeln!(out, "display_name = \"User \\\"{n}\\\"\"");
    }
    let _ = writeln!(
        out,
        "status = \"{status}\"\ngroup = \"{group}\"\nremote_addresses = \"{addresses}\""
    );
    if u.style == 1 {
        for k in &u.keys {
            let _ = writeln!(
                out,
                "[[users.\"{id}\".keys]]\nsha256 = \"{}\"\nprefix = \"aw_{k}\"",
                digest_of(*k)
            );
        }
    } else {
        let keys: Vec<String> = u
            .keys
            .iter()
            .map(|k| {
                format!(
                    "{{ sha256 = \"{}\", prefix = \"aw_{k}\", created = 2026-01-0{}T00:00:00Z }}",
                    digest_of(*k),
                    k % 9 + 1
                )
            })
            .collect();
        let _ = writeln!(out, "keys = [{}]", keys.join(", "));
    }
    out.push('\n');
}

#[derive(Clone, Debug)]
struct File {
    users: Vec<User>,
    /// Whether the head defines `g2`.
    third_group: bool,
    /// A `[groups.late]` table after the users (valid TOML that only the whole parse handles).
    late_group: bool,
}

impl File {
    /// `users` active users in the first group, one address and one key each.
    fn plain(users: usize) -> File {
        File {
            users: (0..users)
                .map(|id| User {
                    id,
                    status: 0,
                    group: 0,
                    addresses: 1,
                    keys: vec![id as u8],
                    display_name: None,
                    style: 0,
                })
                .collect(),
            third_group: false,
            late_group: false,
        }
    }

    fn text(&self) -> String {
        let mut out = String::from(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.api]\nurl = \"builtin:echo\"\n\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n\n[groups.g0]\nallow = [{ path = \"/**\", verbs = [\"view\"] }]\n\n[groups.g1]\nallow = []\n\n",
        );
        if self.third_group {
            out.push_str("[groups.g2]\nallow = [{ path = \"/a/*\", verbs = [\"create\"] }]\n\n");
        }
        for u in &self.users {
            render_user(&mut out, u);
        }
        if self.late_group {
            out.push_str("[groups.late]\nallow = []\n");
        }
        out
    }
}

#[derive(Clone, Debug)]
enum Edit {
    Add(User),
    Remove(usize),
    /// The user at this position takes the other's content, keeping its id.
    Change(usize, User),
    Swap(usize, usize),
    /// The user's table a second time, at the end.
    Duplicate(usize),
    ThirdGroup(bool),
    LateGroup(bool),
}

fn user_strategy(valid: bool) -> impl Strategy<Value = User> {
    let status = if valid { 0u8..3 } else { 0u8..4 };
    let group = if valid { 0u8..2 } else { 0u8..4 };
    let keys = if valid {
        proptest::collection::vec(0u8..60, 0..3).boxed()
    } else {
        proptest::collection::vec(prop_oneof![20 => 0u8..60, 1 => Just(255u8)], 0..3).boxed()
    };
    (
        0usize..40,
        status,
        group,
        0u8..3,
        keys,
        proptest::option::of(0u8..5),
        0u8..3,
    )
        .prop_map(
            |(id, status, group, addresses, keys, display_name, style)| User {
                id,
                status,
                group,
                addresses,
                keys,
                display_name,
                style,
            },
        )
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => user_strategy(false).prop_map(Edit::Add),
        3 => (0usize..64).prop_map(Edit::Remove),
        6 => (0usize..64, user_strategy(false)).prop_map(|(i, u)| Edit::Change(i, u)),
        1 => (0usize..64, 0usize..64).prop_map(|(a, b)| Edit::Swap(a, b)),
        1 => (0usize..64).prop_map(Edit::Duplicate),
        1 => any::<bool>().prop_map(Edit::ThirdGroup),
        1 => any::<bool>().prop_map(Edit::LateGroup),
    ]
}

/// A valid file to start from: distinct ids, distinct keys.
fn base_strategy() -> impl Strategy<Value = File> {
    proptest::collection::vec(user_strategy(true), 0..25).prop_map(|users| {
        let mut seen = std::collections::HashSet::new();
        let mut next_key = 100u8;
        let users = users
            .into_iter()
            .filter(|u| seen.insert(u.id))
            .map(|mut u| {
                for k in &mut u.keys {
                    *k = next_key;
                    next_key = next_key.wrapping_add(1).min(250);
                }
                u.keys.dedup();
                u
            })
            .collect();
        File {
            users,
            third_group: false,
            late_group: false,
        }
    })
}

fn apply(file: &mut File, edit: &Edit) {
    let n = file.users.len();
    match edit {
        Edit::Add(u) => file.users.insert(u.id % (n + 1), u.clone()),
        Edit::Remove(i) if n > 0 => {
            file.users.remove(i % n);
        }
        Edit::Change(i, u) if n > 0 => {
            let id = file.users[i % n].id;
            file.users[i % n] = User { id, ..u.clone() };
        }
        Edit::Swap(a, b) if n > 0 => file.users.swap(a % n, b % n),
        Edit::Duplicate(i) if n > 0 => {
            let u = file.users[i % n].clone();
            file.users.push(u);
        }
        Edit::ThirdGroup(on) => file.third_group = *on,
        Edit::LateGroup(on) => file.late_group = *on,
        _ => {}
    }
}

/// Everything a snapshot says, slots aside (an incremental reload keeps each user's slot; a
/// full compile numbers users afresh), written out in one canonical order.
fn canonical(s: &Snapshot) -> String {
    let mut out = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n",
        s.server, s.groups, s.routes, s.upstreams, s.admins, s.console
    );
    let mut tokens: Vec<String> = s
        .admin_tokens
        .iter()
        .map(|(d, i)| format!("{} {i}", d.to_hex()))
        .collect();
    tokens.sort();
    out.push_str(&tokens.join("\n"));
    for u in s.users.iter() {
        let _ = writeln!(out, "{u:?}");
    }
    let mut keys: Vec<String> = s
        .keys
        .iter()
        .map(|(d, k)| {
            format!(
                "{} {} {:?} {:?} {:?}",
                d.to_hex(),
                s.user(k.user).id,
                k.prefix,
                k.created,
                k.expires
            )
        })
        .collect();
    keys.sort();
    out.push_str(&keys.join("\n"));
    out
}

/// The snapshot's source index says where each table's keys are: for each table, the shard
/// selectors of exactly its user's keys.
fn index_is_true(s: &Snapshot) -> Result<(), String> {
    let Some(index) = &s.source_index else {
        return Ok(());
    };
    if index.slots.len() != index.tables.len() || index.key_ends.len() != index.tables.len() {
        return Err("the index's columns differ in length".into());
    }
    let mut by_slot: std::collections::HashMap<UserIndex, Vec<u32>> = Default::default();
    for (d, k) in s.keys.iter() {
        by_slot
            .entry(k.user)
            .or_default()
            .push(crate::snapshot::shard_selector(d));
    }
    for (i, &slot) in index.slots.iter().enumerate() {
        let mut listed = index.selectors(i).to_vec();
        listed.sort_unstable();
        let mut actual = by_slot.remove(&slot).unwrap_or_default();
        actual.sort_unstable();
        if listed != actual {
            return Err(format!(
                "table {i} (user {}): index {listed:?}, keys {actual:?}",
                s.user(slot).id
            ));
        }
    }
    match by_slot.keys().next() {
        Some(slot) => Err(format!("slot {slot} has keys but no table")),
        None => Ok(()),
    }
}

fn sorted(mut summary: ChangeSummary) -> ChangeSummary {
    summary.users_added.sort();
    summary.users_removed.sort();
    summary.users_changed.sort();
    summary
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Over random edits (users added, removed and changed, keys moved between users, tables
    /// reordered or repeated, the head changed), a reload that reuses the previous snapshot
    /// gives exactly what a full compile of the whole text gives, the same errors when the
    /// edit breaks the file, and the same summary of what changed.
    #[test]
    fn an_incremental_reload_is_exactly_a_full_compile(
        base in base_strategy(),
        edits in proptest::collection::vec(edit_strategy(), 1..6),
        buffer in 8usize..600,
        parts in 1usize..5,
    ) {
        // A real file too, for the reload that streams it (through a buffer small enough that
        // tables straddle its refills, and larger ones grow it; in parts read at once, whose
        // edges fall anywhere).
        let dir = tempfile::tempdir().expect("temp dir");
        let path = &dir.path().join("apiward.toml");
        let mut file = base;
        let mut previous = compile_full(path, &file.text()).expect("the base file is valid");
        prop_assert_eq!(canonical(&previous), canonical(&compile_whole(path, &file.text()).unwrap()));
        for edit in &edits {
            apply(&mut file, edit);
            let text = file.text();
            let whole = compile_whole(path, &text);
            let tables = compile_full(path, &text);
            let after = compile_after(path, &text, &previous);
            std::fs::write(path, &text).expect("write");
            let streamed = stream_with(path, &previous, buffer, parts);
            let unchanged = matches!(reload_after(path, &text, &previous), Ok(None));
            // (A file without user tables is always read whole: it may be blank.)
            let same = matches!(streamed, Streamed::Same);
            prop_assert!(same == unchanged || (unchanged && file.users.is_empty()), "{}", text);
            match whole {
                Err(errors) => {
                    prop_assert_eq!(&tables.err(), &Some(errors.clone()), "{}", text);
                    prop_assert_eq!(after.err(), Some(errors), "{}", text);
                    // An error is only ever reported from the whole text, with its lines.
                    prop_assert!(matches!(streamed, Streamed::Whole), "{}", text);
                }
                Ok(whole) => {
                    let after = after.expect("valid");
                    let tables = tables.expect("valid");
                    prop_assert_eq!(canonical(&tables), canonical(&whole), "{}", text);
                    prop_assert_eq!(canonical(&after.snapshot), canonical(&whole), "{}", text);
                    prop_assert_eq!(index_is_true(&tables), Ok(()));
                    prop_assert_eq!(index_is_true(&after.snapshot), Ok(()), "{}", text);
                    let expected = sorted(ChangeSummary::between(&previous, &whole));
                    let changes = after
                        .changes
                        .clone()
                        .unwrap_or_else(|| ChangeSummary::between(&previous, &after.snapshot));
                    prop_assert_eq!(sorted(changes), expected.clone());
                    match streamed {
                        Streamed::Compiled(c) => {
                            prop_assert_eq!(canonical(&c.snapshot), canonical(&whole), "{}", text);
                            prop_assert_eq!(index_is_true(&c.snapshot), Ok(()), "{}", text);
                            let changes = c.changes.expect("streamed: always incremental");
                            prop_assert_eq!(sorted(changes), expected);
                            prop_assert!(after.changes.is_some(), "{}", text);
                        }
                        // Only where the in-memory incremental compile also gave up (or there
                        // is no user table).
                        Streamed::Whole => {
                            prop_assert!(after.changes.is_none() || file.users.is_empty(), "{}", text)
                        }
                        Streamed::Same => {}
                    }
                    if after.changes.is_some() {
                        // Every user still in the file kept its slot.
                        for (slot, u) in previous.users.slots() {
                            if let Some(now) = after.snapshot.user_index_of(&u.id) {
                                prop_assert_eq!(now, slot, "{} moved", u.id);
                            }
                        }
                    }
                    previous = after.snapshot;
                }
            }
        }
    }
}

#[test]
fn a_reload_that_changes_one_user_reuses_every_other_table() {
    let path = Path::new("apiward.toml");
    let mut file = File::plain(40);
    let before = compile_full(path, &file.text()).unwrap();
    assert!(
        before.source_index.is_some(),
        "a plain file is compiled table by table"
    );
    file.users[7].keys = vec![200];
    let after = compile_after(path, &file.text(), &before).unwrap();
    let changes = after.changes.expect("compiled incrementally");
    assert_eq!(changes.users_changed, vec!["u7@example.org".to_string()]);
    assert_eq!((changes.keys_added, changes.keys_revoked), (1, 1));
    assert!(
        after
            .snapshot
            .keys
            .get(&KeyDigest::of("pool-key-7"))
            .is_none()
    );
    assert_eq!(
        after.snapshot.user_index_of("u7@example.org"),
        before.user_index_of("u7@example.org")
    );

    // A table after the users: only the whole parse handles it, and it says so exactly.
    file.late_group = true;
    let after = compile_after(path, &file.text(), &before).unwrap();
    assert!(after.changes.is_none() && after.snapshot.source_index.is_none());
    assert_eq!(after.snapshot.groups.len(), 3);
}

#[test]
fn tables_are_found_again_after_long_runs_of_added_or_removed_ones() {
    let old: Vec<u128> = (0..1000).collect();
    // 20 tables removed, 20 added further on, one changed further still.
    let mut new: Vec<u128> = old
        .iter()
        .copied()
        .filter(|d| !(100..120).contains(d))
        .collect();
    new.splice(500..500, 5000..5020);
    new[700] = 9999;
    let (matched, found) = super::match_tables(&old, &new);
    for (m, d) in matched.iter().zip(&new) {
        if let Some(j) = m {
            assert_eq!(old[*j], *d, "a table matched to another");
        }
    }
    let compiled_again = matched.iter().filter(|m| m.is_none()).count();
    assert!(
        compiled_again <= 21 + 2 * super::LOOK_AHEAD,
        "{compiled_again} tables compiled again: the match never caught up"
    );
    assert_eq!(
        found.iter().filter(|f| !**f).count(),
        compiled_again,
        "each table not found stands for one compiled again (20 removed, 20 added)"
    );
}

/// The tables as a plain, one-thread cut finds them: before each line that starts with
/// `[users.`.
fn cut_plainly(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut starts: Vec<usize> = (0..text.len())
        .filter(|&i| {
            text[i..].starts_with("[users.") && (i == 0 || text.as_bytes()[i - 1] == b'\n')
        })
        .collect();
    starts.push(text.len());
    starts.windows(2).map(|w| w[0]..w[1]).collect()
}

#[test]
fn the_cut_on_every_core_finds_the_tables_one_thread_finds() {
    // Over a megabyte, so that it is cut in parts; tables of every length, so that the parts'
    // edges fall inside tables, on their first byte and just before it.
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:8080\"\n");
    let mut n = 0;
    while text.len() < (3 << 20) {
        let _ = write!(text, "[users.\"u{n}@x\"]\nstatus = \"active\"\n");
        for _ in 0..(n % 7) {
            text.push_str("# [users. is not a table here\n");
        }
        n += 1;
    }
    let found = super::tables(&text);
    let plain = cut_plainly(&text);
    assert_eq!(found.ranges, plain);
    assert_eq!(found.head_end, plain[0].start);
    for (r, d) in found.ranges.iter().zip(&found.digests) {
        assert_eq!(*d, super::digest(&text[r.clone()]));
    }
    let starts_with_a_table = &text[found.head_end..];
    assert_eq!(super::tables(starts_with_a_table).head_end, 0);
    assert_eq!(super::tables(starts_with_a_table).ranges.len(), plain.len());
    assert_eq!(super::tables("").ranges.len(), 0);
    assert_eq!(super::tables("[server]\n").head_end, "[server]\n".len());
}

#[test]
fn a_reload_of_the_same_text_builds_nothing() {
    let path = Path::new("apiward.toml");
    let file = File::plain(5);
    let text = file.text();
    let before = compile_full(path, &text).unwrap();
    assert!(reload_after(path, &text, &before).unwrap().is_none());
    let mut other = file.clone();
    other.users.pop();
    assert!(
        reload_after(path, &other.text(), &before)
            .unwrap()
            .is_some()
    );
}

#[test]
fn the_streamed_cut_finds_the_tables_the_cut_in_memory_finds() {
    use crate::snapshot::SourceIndex;
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:8080\"\n");
    let mut n = 0;
    while text.len() < (3 << 20) {
        let _ = write!(text, "[users.\"u{n}@x\"]\nstatus = \"active\"\n");
        for _ in 0..(n % 7) {
            text.push_str("# [users. is not a table here\n");
        }
        n += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let index = |head: &str, tables: Vec<u128>| SourceIndex {
        head: super::digest(head),
        slots: vec![0; tables.len()].into_boxed_slice(),
        key_ends: vec![0; tables.len()].into_boxed_slice(),
        tables: tables.into_boxed_slice(),
        key_selectors: Box::new([]),
    };
    for whole in [text.as_str(), &text[text.find("[users.").unwrap()..]] {
        std::fs::write(&path, whole).unwrap();
        let found = super::tables(whole);
        let head = &whole[..found.head_end];
        for (buffer, parts) in [
            (8, 1),
            (1000, 1),
            (1 << 20, 1),
            (8, 3),
            (1000, 2),
            (4096, 7),
        ] {
            // Every table the previous file's: nothing kept but the head.
            let same = index(head, found.digests.clone());
            let kept = super::stream_tables(&path, &same, buffer, parts)
                .unwrap()
                .unwrap();
            assert_eq!(kept.head, head.as_bytes());
            assert_eq!(kept.digests, found.digests);
            assert!(kept.tables.is_empty() && kept.text.is_empty());
            assert!(kept.found.iter().all(|f| *f));
            // None of them: every table kept, where it is in the file.
            let none = index(head, Vec::new());
            let kept = super::stream_tables(&path, &none, buffer, parts)
                .unwrap()
                .unwrap();
            assert_eq!(kept.digests, found.digests);
            assert_eq!(kept.tables.len(), found.ranges.len());
            for ((start, in_kept), range) in kept.tables.iter().zip(&found.ranges) {
                assert_eq!(*start, range.start);
                assert_eq!(&kept.text[in_kept.clone()], whole[range.clone()].as_bytes());
            }
            // Another head: nothing more is read.
            let other = index("[server]\n", Vec::new());
            assert!(
                super::stream_tables(&path, &other, buffer, parts)
                    .unwrap()
                    .is_none()
            );
        }
    }
}

#[test]
fn a_streamed_reload_keeps_only_what_a_full_compile_reads_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("apiward.toml");
    let mut file = File::plain(30);
    let before = compile_full(&path, &file.text()).unwrap();
    std::fs::write(&path, file.text()).unwrap();
    assert!(matches!(stream_with(&path, &before, 64, 2), Streamed::Same));
    file.users[12].keys = vec![201];
    std::fs::write(&path, file.text()).unwrap();
    let Streamed::Compiled(after) = stream_with(&path, &before, 64, 2) else {
        panic!("one table changed: streamed");
    };
    assert_eq!(
        after.changes.unwrap().users_changed,
        vec!["u12@example.org".to_string()]
    );
    // A broken table, a table that is not valid UTF-8, a file missing: the whole text says.
    file.users[12].status = 3;
    std::fs::write(&path, file.text()).unwrap();
    assert!(matches!(
        stream_with(&path, &before, 64, 2),
        Streamed::Whole
    ));
    let mut bytes = file.text().into_bytes();
    let at = bytes.len() - 10;
    bytes[at] = 0xff;
    std::fs::write(&path, bytes).unwrap();
    assert!(matches!(
        stream_with(&path, &before, 64, 2),
        Streamed::Whole
    ));
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(
        stream_with(&path, &before, 64, 2),
        Streamed::Whole
    ));
}
