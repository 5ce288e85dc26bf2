//! The API-user lifecycle as edits of a loaded file: add, change, delete a user; issue, rotate
//! and revoke its keys. The CLI and the admin API both call these, so both validate alike.

use std::time::Duration;

use toml_edit::{Item, Table, TableLike, Value};

use super::{ConfigFile, EditError, KeyEntry, NewKey, push_key, read_keys, remove_keys};
use crate::config::compile::check_user_id;
use crate::keys::IssuedKey;
use crate::snapshot::UserStatus;

/// One user as the file has it.
#[derive(Debug, Clone)]
pub struct UserEntry {
    pub id: String,
    pub display_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub description: Option<String>,
    pub status: String,
    pub group: String,
    pub addresses: Vec<String>,
    pub has_password: bool,
    pub keys: Vec<KeyEntry>,
}

impl UserEntry {
    /// The fields every listing of a user shows as JSON, the CLI's and the management API's;
    /// each adds its own (keys, last uses, limits).
    pub fn json_fields(&self) -> serde_json::Map<String, serde_json::Value> {
        let serde_json::Value::Object(fields) = serde_json::json!({
            "id": self.id,
            "display_name": self.display_name,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "description": self.description,
            "status": self.status,
            "group": self.group,
            "remote_addresses": self.addresses,
            "password": self.has_password,
        }) else {
            unreachable!("json! of braces is an object")
        };
        fields
    }
}

impl ConfigFile {
    /// Every user in file order.
    pub fn user_entries(&self) -> Vec<UserEntry> {
        self.user_ids()
            .iter()
            .filter_map(|id| self.user(id).ok().map(|t| user_entry(id, t)))
            .collect()
    }

    pub fn user_entry(&self, id: &str) -> Result<UserEntry, EditError> {
        self.user(id).map(|t| user_entry(id, t))
    }
}

fn user_entry(id: &str, user: &dyn TableLike) -> UserEntry {
    let text = |k: &str| user.get(k).and_then(Item::as_str).map(str::to_string);
    let addresses = match user.get("remote_addresses") {
        Some(Item::Value(Value::String(s))) => s.value().split('~').map(str::to_string).collect(),
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    };
    UserEntry {
        id: id.to_string(),
        display_name: text("display_name"),
        first_name: text("first_name"),
        last_name: text("last_name"),
        description: text("description"),
        status: text("status").unwrap_or_else(|| "?".into()),
        group: text("group").unwrap_or_else(|| "?".into()),
        addresses,
        has_password: user.contains_key("password_hash"),
        keys: read_keys(user),
    }
}

/// What a new user is made of.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub group: String,
    pub remote_addresses: String,
    pub display_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub description: Option<String>,
    pub status: UserStatus,
    /// Whether to issue a key, and its lifetime (`Some(None)`: a key that does not expire).
    pub key: Option<Option<Duration>>,
}

/// The fields to change; `None` leaves one alone, an empty name or description removes it.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub status: Option<UserStatus>,
    pub group: Option<String>,
    pub remote_addresses: Option<String>,
    pub display_name: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub description: Option<String>,
}

/// Adds the user, and its first key unless `key` is `None`.
pub fn add_user(
    file: &mut ConfigFile,
    user: &NewUser,
    now: i64,
) -> Result<Option<IssuedKey>, EditError> {
    check_user_id(&user.id).map_err(EditError::BadUserId)?;
    if file.has_user(&user.id) {
        return Err(EditError::DuplicateUser(user.id.clone()));
    }
    check_group(file, &user.group)?;
    let mut table = Table::new();
    for (field, text) in [
        ("display_name", &user.display_name),
        ("first_name", &user.first_name),
        ("last_name", &user.last_name),
        ("description", &user.description),
    ] {
        if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
            table.insert(field, toml_edit::value(text));
        }
    }
    table.insert("status", toml_edit::value(user.status.as_str()));
    table.insert("group", toml_edit::value(&user.group));
    table.insert("remote_addresses", toml_edit::value(&user.remote_addresses));
    file.insert_user(&user.id, table)?;
    match user.key {
        None => Ok(None),
        Some(lifetime) => {
            let key = new_key(&[])?;
            add_key(file, &user.id, &key, now, lifetime)?;
            Ok(Some(key))
        }
    }
}

/// Applies `changes`; answers what changed, one `field = value` (or `field removed`) each.
pub fn change_user(
    file: &mut ConfigFile,
    id: &str,
    changes: &UserChanges,
) -> Result<Vec<String>, EditError> {
    file.user(id)?;
    if let Some(group) = &changes.group {
        check_group(file, group)?;
    }
    let user = file.user_mut(id)?;
    let mut changed = Vec::new();
    if let Some(status) = changes.status {
        set_text(user, "status", status.as_str());
        changed.push(format!("status = {}", status.as_str()));
    }
    if let Some(group) = &changes.group {
        set_text(user, "group", group);
        changed.push(format!("group = {group}"));
    }
    if let Some(addresses) = &changes.remote_addresses {
        set_text(user, "remote_addresses", addresses);
        changed.push(format!("remote_addresses = {addresses}"));
    }
    for (field, text) in [
        ("display_name", &changes.display_name),
        ("first_name", &changes.first_name),
        ("last_name", &changes.last_name),
        ("description", &changes.description),
    ] {
        match text.as_deref() {
            None => {}
            Some("") if user.remove(field).is_some() => changed.push(format!("{field} removed")),
            Some("") => {}
            Some(text) => {
                set_text(user, field, text);
                changed.push(format!("{field} = {text}"));
            }
        }
    }
    Ok(changed)
}

/// Removes the user and its keys; answers how many keys it had.
pub fn delete_user(file: &mut ConfigFile, id: &str) -> Result<usize, EditError> {
    let keys = read_keys(file.user(id)?).len();
    file.remove_user(id)?;
    Ok(keys)
}

/// Adds a fresh key to the user.
pub fn issue_key(
    file: &mut ConfigFile,
    id: &str,
    lifetime: Option<Duration>,
    now: i64,
) -> Result<IssuedKey, EditError> {
    let existing = read_keys(file.user(id)?);
    let key = new_key(&existing)?;
    add_key(file, id, &key, now, lifetime)?;
    Ok(key)
}

/// What a rotation did.
#[derive(Debug)]
pub struct Rotation {
    pub key: IssuedKey,
    /// The old key's label (its prefix).
    pub old: String,
    /// When the old key stops working; `None`: it was removed at once (grace 0).
    pub old_until: Option<i64>,
}

/// Replaces a key with a new one; the old one keeps working for `grace` (never longer than it
/// already would). With one valid key `prefix` may be left out.
pub fn rotate_key(
    file: &mut ConfigFile,
    id: &str,
    grace: Duration,
    prefix: Option<&str>,
    lifetime: Option<Duration>,
    now: i64,
) -> Result<Rotation, EditError> {
    let existing = read_keys(file.user(id)?);
    let live: Vec<usize> = (0..existing.len())
        .filter(|&i| !existing[i].is_expired(now))
        .collect();
    let old = match prefix {
        Some(p) => select_one(id, &existing, p)?,
        None => match live.as_slice() {
            [only] => *only,
            [] => {
                return Err(EditError::KeySelection(format!(
                    "{id} has no valid key to rotate: issue one with `apiward keys issue {id}`"
                )));
            }
            several => {
                return Err(EditError::KeySelection(format!(
                    "{id} has {} valid keys: say which to rotate with --prefix ({})",
                    several.len(),
                    labels(&existing, several)
                )));
            }
        },
    };
    let key = new_key(&existing)?;
    let grace_ends = now.saturating_add(grace.as_secs() as i64);
    let user = file.user_mut(id)?;
    let old_until = if grace.as_secs() == 0 {
        remove_keys(user, &[old])?;
        None
    } else {
        // A key already due to expire sooner keeps its earlier date: rotation never extends a key.
        let until = existing[old]
            .expires
            .map_or(grace_ends, |t| t.min(grace_ends));
        super::set_key_expiry(user, old, until)?;
        Some(until)
    };
    add_key(file, id, &key, now, lifetime)?;
    Ok(Rotation {
        key,
        old: existing[old].label(),
        old_until,
    })
}

/// Which keys `revoke_keys` removes.
#[derive(Debug, Clone, Copy)]
pub enum Revoke<'a> {
    /// The one key whose label starts with this.
    Prefix(&'a str),
    All,
    Expired,
    /// The user's only key (an error if it has several).
    Only,
}

/// Removes keys; answers the labels of those removed (none: nothing changed).
pub fn revoke_keys(
    file: &mut ConfigFile,
    id: &str,
    which: Revoke<'_>,
    now: i64,
) -> Result<Vec<String>, EditError> {
    let existing = read_keys(file.user(id)?);
    let doomed: Vec<usize> = match which {
        Revoke::Prefix(p) => vec![select_one(id, &existing, p)?],
        Revoke::All => (0..existing.len()).collect(),
        Revoke::Expired => (0..existing.len())
            .filter(|&i| existing[i].is_expired(now))
            .collect(),
        Revoke::Only if existing.len() <= 1 => (0..existing.len()).collect(),
        Revoke::Only => {
            let every: Vec<usize> = (0..existing.len()).collect();
            return Err(EditError::KeySelection(format!(
                "{id} has {} keys: say which with --prefix ({}), or --expired, or --all",
                existing.len(),
                labels(&existing, &every)
            )));
        }
    };
    if !doomed.is_empty() {
        remove_keys(file.user_mut(id)?, &doomed)?;
    }
    Ok(doomed.iter().map(|&i| existing[i].label()).collect())
}

/// A new key whose prefix differs from the user's other keys, so the prefix names one key.
fn new_key(existing: &[KeyEntry]) -> Result<IssuedKey, EditError> {
    loop {
        let key = crate::keys::issue_key()?;
        if !existing
            .iter()
            .any(|k| k.prefix.as_deref() == Some(key.prefix.as_str()))
        {
            return Ok(key);
        }
    }
}

fn add_key(
    file: &mut ConfigFile,
    id: &str,
    key: &IssuedKey,
    now: i64,
    lifetime: Option<Duration>,
) -> Result<(), EditError> {
    push_key(
        file.user_mut(id)?,
        &NewKey {
            sha256: &key.digest.to_hex(),
            prefix: &key.prefix,
            created: now,
            expires: lifetime.map(|d| now.saturating_add(d.as_secs() as i64)),
        },
    )
}

/// The one key whose label starts with `prefix`.
pub fn select_one(id: &str, keys: &[KeyEntry], prefix: &str) -> Result<usize, EditError> {
    let matching: Vec<usize> = (0..keys.len())
        .filter(|&i| !prefix.is_empty() && keys[i].label().starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => {
            let every: Vec<usize> = (0..keys.len()).collect();
            Err(EditError::KeySelection(format!(
                "{id} has no key with prefix {prefix:?}; its keys are: {}",
                if keys.is_empty() {
                    "(none)".into()
                } else {
                    labels(keys, &every)
                }
            )))
        }
        several => Err(EditError::KeySelection(format!(
            "prefix {prefix:?} matches {} keys of {id} ({}): give more characters",
            several.len(),
            labels(keys, several)
        ))),
    }
}

fn labels(keys: &[KeyEntry], positions: &[usize]) -> String {
    positions
        .iter()
        .map(|&i| keys[i].label())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn check_group(file: &ConfigFile, group: &str) -> Result<(), EditError> {
    let known = file.group_names();
    if known.iter().any(|g| g == group) {
        return Ok(());
    }
    Err(EditError::UnknownGroup {
        group: group.to_string(),
        known: if known.is_empty() {
            "(none defined)".into()
        } else {
            known.join(", ")
        },
    })
}

/// Sets a string field, keeping the comment and spacing that follow the old value.
pub fn set_text(table: &mut dyn TableLike, field: &str, text: &str) {
    match table.get_mut(field) {
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            let mut new = Value::from(text);
            *new.decor_mut() = decor;
            *old = new;
        }
        _ => {
            table.insert(field, toml_edit::value(text));
        }
    }
}
