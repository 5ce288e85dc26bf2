//! What a reload changed: users added, removed and changed, keys added and revoked (ids, never keys).

use std::collections::HashSet;
use std::fmt;

use crate::snapshot::{KeyDigest, Snapshot};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ChangeSummary {
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    pub users_changed: Vec<String>,
    pub keys_added: usize,
    pub keys_revoked: usize,
}

impl ChangeSummary {
    pub fn between(old: &Snapshot, new: &Snapshot) -> ChangeSummary {
        let old_keys: HashSet<(&KeyDigest, &str)> = old
            .keys
            .iter()
            .map(|(d, k)| (d, &*old.user(k.user).id))
            .collect();
        let new_keys: HashSet<(&KeyDigest, &str)> = new
            .keys
            .iter()
            .map(|(d, k)| (d, &*new.user(k.user).id))
            .collect();
        let ids: Vec<&str> = new
            .users
            .iter()
            .chain(old.users.iter())
            .map(|u| &*u.id)
            .collect();
        ChangeSummary::of(old, new, ids, &old_keys, &new_keys)
    }

    /// `between` when only the users `ids` can differ, and `old_keys` and `new_keys` are the
    /// (digest, user id) pairs of their keys before and after: what an incremental reload knows.
    pub(crate) fn of_users(
        old: &Snapshot,
        new: &Snapshot,
        ids: Vec<&str>,
        old_keys: &HashSet<(&KeyDigest, &str)>,
        new_keys: &HashSet<(&KeyDigest, &str)>,
    ) -> ChangeSummary {
        ChangeSummary::of(old, new, ids, old_keys, new_keys)
    }

    fn of(
        old: &Snapshot,
        new: &Snapshot,
        mut ids: Vec<&str>,
        old_keys: &HashSet<(&KeyDigest, &str)>,
        new_keys: &HashSet<(&KeyDigest, &str)>,
    ) -> ChangeSummary {
        let mut summary = ChangeSummary {
            keys_added: new_keys.difference(old_keys).count(),
            keys_revoked: old_keys.difference(new_keys).count(),
            ..ChangeSummary::default()
        };
        let keys_changed_for: HashSet<&str> = new_keys
            .symmetric_difference(old_keys)
            .map(|(_, id)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            match (old.user_by_id(id), new.user_by_id(id)) {
                (None, Some(_)) => summary.users_added.push(id.to_string()),
                (Some(_), None) => summary.users_removed.push(id.to_string()),
                (Some(before), Some(user)) => {
                    let same = before.status == user.status
                        && old.group_of(before).name == new.group_of(user).name
                        && before.sources == user.sources
                        && before.display_name == user.display_name
                        && before.password_hash == user.password_hash
                        && before.limits == user.limits
                        && !keys_changed_for.contains(id);
                    if !same {
                        summary.users_changed.push(id.to_string());
                    }
                }
                (None, None) => {}
            }
        }
        summary
    }

    pub fn is_empty(&self) -> bool {
        *self == ChangeSummary::default()
    }
}

/// Lists at most this many ids per category in a log line.
const LISTED: usize = 10;

fn write_ids(f: &mut fmt::Formatter<'_>, label: &str, ids: &[String]) -> fmt::Result {
    if ids.is_empty() {
        return Ok(());
    }
    write!(f, "; {label} {}: ", ids.len())?;
    let shown: Vec<&str> = ids.iter().take(LISTED).map(String::as_str).collect();
    f.write_str(&shown.join(", "))?;
    if ids.len() > LISTED {
        write!(f, " and {} more", ids.len() - LISTED)?;
    }
    Ok(())
}

impl fmt::Display for ChangeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} key(s) added, {} key(s) revoked",
            self.keys_added, self.keys_revoked
        )?;
        write_ids(f, "users added", &self.users_added)?;
        write_ids(f, "users removed", &self.users_removed)?;
        write_ids(f, "users changed", &self.users_changed)
    }
}
