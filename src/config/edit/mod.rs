//! Editing the configuration file in place: load it with `toml_edit` (comments, order and
//! formatting kept), change it, check the result exactly as `apiward check` would, and only then
//! replace the file atomically (temporary file in the same directory, fsync, rename). The CLI and
//! the admin API both edit through here.

use std::fs;
use std::path::{Path, PathBuf};

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, TableLike, Value};

use crate::config::compile::unix_seconds;
use crate::config::guard::{self, Baseline};
use crate::snapshot::Snapshot;
pub use crate::snapshot::rfc3339;

mod error;
mod replace;
pub use error::EditError;
pub use replace::is_read_only;
use replace::{EditLock, write_atomically};

pub mod admins;
pub mod users;

/// The ETag of a file's text: the start of its SHA-256, quoted as HTTP wants it.
pub fn etag(text: &str) -> String {
    let digest = crate::snapshot::KeyDigest::of(text).to_hex();
    format!("\"{}\"", &digest[..32])
}

/// What a successful edit gives back.
pub struct Edited<T> {
    pub value: T,
    /// The snapshot the new file compiles to (what the gateway will load).
    pub snapshot: Snapshot,
    /// The ETag of the file as written.
    pub etag: String,
}

/// Opens the file, applies `change`, and saves it. With `if_match` (an ETag), the edit is made
/// only on that version of the file ([`EditError::Stale`] otherwise). Without, a file changed by
/// someone else while this edit was being made is read again and the change applied again (a
/// few times), so two editors racing (CLI and admin API) never lose either change.
pub fn edit_file<T>(
    path: &Path,
    if_match: Option<&str>,
    mut change: impl FnMut(&mut ConfigFile) -> Result<T, EditError>,
) -> Result<Edited<T>, EditError> {
    let mut attempts = 0;
    loop {
        let mut file = ConfigFile::open(path)?;
        if let Some(expected) = if_match
            && expected.trim() != "*"
            && expected.trim() != file.etag()
        {
            return Err(EditError::Stale(path.to_path_buf()));
        }
        let value = change(&mut file)?;
        match file.save_with_etag() {
            Ok((snapshot, etag)) => {
                return Ok(Edited {
                    value,
                    snapshot,
                    etag,
                });
            }
            Err(EditError::ChangedMeanwhile(p)) => {
                if if_match.is_some() {
                    return Err(EditError::Stale(p));
                }
                attempts += 1;
                if attempts >= 10 {
                    return Err(EditError::ChangedMeanwhile(p));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// One configuration file, loaded for editing.
pub struct ConfigFile {
    path: PathBuf,
    /// What the file had before this edit, for `guard::admit`.
    before: Baseline,
    original: String,
    pub doc: DocumentMut,
    /// The advisory lock that keeps other edits (CLI or admin API) out until this one is saved
    /// or dropped; `None` for a file read only to be listed.
    _lock: Option<EditLock>,
}

impl ConfigFile {
    /// Loads the file for an edit, first waiting for any other edit of it to finish (an
    /// exclusive advisory lock, held until this one is saved or dropped), so two edits at once
    /// both land instead of one undoing the other.
    pub fn open(path: &Path) -> Result<ConfigFile, EditError> {
        let lock = EditLock::acquire(path)?;
        ConfigFile::load(path, Some(lock))
    }

    /// Loads the file to read it only (a listing): no lock, never saved over another edit.
    pub fn read(path: &Path) -> Result<ConfigFile, EditError> {
        ConfigFile::load(path, None)
    }

    fn load(path: &Path, lock: Option<EditLock>) -> Result<ConfigFile, EditError> {
        let original = fs::read_to_string(path).map_err(|source| EditError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let doc: DocumentMut =
            original
                .parse()
                .map_err(|e: toml_edit::TomlError| EditError::Syntax {
                    path: path.to_path_buf(),
                    message: e.to_string(),
                })?;
        Ok(ConfigFile {
            path: path.to_path_buf(),
            before: baseline_of(&doc),
            original,
            doc,
            _lock: lock,
        })
    }

    /// The group names defined in the file, for validation and for error messages.
    pub fn group_names(&self) -> Vec<String> {
        self.doc
            .get("groups")
            .and_then(Item::as_table_like)
            .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    }

    /// `[server] organisation`, when set.
    pub fn organisation(&self) -> Option<String> {
        self.doc
            .get("server")
            .and_then(|s| s.get("organisation"))
            .and_then(Item::as_str)
            .map(str::to_string)
    }

    pub fn user_ids(&self) -> Vec<String> {
        self.users()
            .map(|t| t.iter().map(|(k, _)| k.to_string()).collect())
            .unwrap_or_default()
    }

    fn users(&self) -> Option<&dyn TableLike> {
        self.doc.get("users").and_then(Item::as_table_like)
    }

    pub fn has_user(&self, id: &str) -> bool {
        self.users().is_some_and(|u| u.contains_key(id))
    }

    pub fn user(&self, id: &str) -> Result<&dyn TableLike, EditError> {
        self.users()
            .and_then(|u| u.get(id))
            .and_then(Item::as_table_like)
            .ok_or_else(|| self.no_such_user(id))
    }

    pub fn user_mut(&mut self, id: &str) -> Result<&mut dyn TableLike, EditError> {
        let missing = self.no_such_user(id);
        self.doc
            .get_mut("users")
            .and_then(Item::as_table_like_mut)
            .and_then(|u| u.get_mut(id))
            .and_then(Item::as_table_like_mut)
            .ok_or(missing)
    }

    fn no_such_user(&self, id: &str) -> EditError {
        EditError::NoSuchUser {
            id: id.to_string(),
            path: self.path.clone(),
        }
    }

    /// Adds `[users."id"]` after the last user, keeping everything else where it is.
    pub fn insert_user(&mut self, id: &str, user: Table) -> Result<(), EditError> {
        let users = self.doc.entry("users").or_insert_with(|| {
            let mut t = Table::new();
            // `[users]` itself stays unwritten; only `[users."id"]` headers appear.
            t.set_implicit(true);
            Item::Table(t)
        });
        match users {
            Item::Table(t) => {
                t.insert(id, Item::Table(user));
                Ok(())
            }
            Item::Value(Value::InlineTable(t)) => {
                t.insert(id, Value::InlineTable(user.into_inline_table()));
                Ok(())
            }
            _ => Err(EditError::Layout(
                "`users` is not a table: write each user as [users.\"id\"]".into(),
            )),
        }
    }

    pub fn remove_user(&mut self, id: &str) -> Result<(), EditError> {
        let missing = self.no_such_user(id);
        self.doc
            .get_mut("users")
            .and_then(Item::as_table_like_mut)
            .and_then(|u| u.remove(id))
            .map(|_| ())
            .ok_or(missing)
    }

    /// The ETag of the file as it was read.
    pub fn etag(&self) -> String {
        etag(&self.original)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks the edited text as `apiward check` does and, only if it passes, replaces the file.
    /// A refused edit leaves the file untouched, byte for byte.
    pub fn save(self) -> Result<Snapshot, EditError> {
        self.save_with_etag().map(|(snapshot, _)| snapshot)
    }

    /// `save`, also giving the ETag of the text written.
    pub fn save_with_etag(self) -> Result<(Snapshot, String), EditError> {
        if self._lock.is_none() {
            return Err(EditError::Layout(
                "this file was opened to be read, not edited".into(),
            ));
        }
        let text = self.doc.to_string();
        let snapshot =
            crate::config::compile(&self.path, &text).map_err(EditError::WouldNotPass)?;
        // The file as it was is the configuration before (the gateway's, once it reloaded it):
        // deleting the last user or route, or too many users, needs the same opt-in as a reload.
        // The ids before are read again only when `max_user_drop` asks for them.
        guard::admit(&self.path, &snapshot, &self.before, || {
            let before = self.original.parse::<DocumentMut>().ok();
            before.as_ref().and_then(user_table).map_or(0, |users| {
                users
                    .iter()
                    .filter(|(id, _)| snapshot.user_by_id(id).is_none())
                    .count()
            })
        })
        .map_err(EditError::Guarded)?;
        // An edit that changed nothing is not written (no reload, no file event).
        if text != self.original {
            write_atomically(&self.path, &self.original, &text)?;
        }
        Ok((snapshot, etag(&text)))
    }
}

fn user_table(doc: &DocumentMut) -> Option<&dyn TableLike> {
    doc.get("users").and_then(Item::as_table_like)
}

/// What the guard needs of a file as it was read: its routes, its users, its `max_user_drop`.
fn baseline_of(doc: &DocumentMut) -> Baseline {
    let routes = match doc.get("routes") {
        Some(Item::ArrayOfTables(a)) => a.len(),
        Some(Item::Value(Value::Array(a))) => a.len(),
        _ => 0,
    };
    let max_user_drop = doc
        .get("server")
        .and_then(|s| s.get("max_user_drop"))
        .and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        .filter(|v| *v > 0.0 && *v <= 1.0);
    Baseline {
        routes,
        users: user_table(doc).map_or(0, |u| u.len()),
        max_user_drop,
    }
}

/// One key entry of a user, as read from the file.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub sha256: String,
    pub prefix: Option<String>,
    pub created: Option<i64>,
    pub expires: Option<i64>,
}

impl KeyEntry {
    /// How an operator names this key: its prefix, or the start of its digest for a key that
    /// was written by hand without one.
    pub fn label(&self) -> String {
        match &self.prefix {
            Some(p) => p.clone(),
            None => format!("sha256:{}", self.sha256.get(..12).unwrap_or(&self.sha256)),
        }
    }

    pub fn is_expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|t| now >= t)
    }
}

/// What to write for a new key.
pub struct NewKey<'a> {
    pub sha256: &'a str,
    pub prefix: &'a str,
    pub created: i64,
    pub expires: Option<i64>,
}

/// The `keys` of one user, however the file writes them: an array of inline tables (what the
/// CLI writes) or `[[users."id".keys]]` sections.
enum Keys<'a> {
    Inline(&'a mut Array),
    Sections(&'a mut ArrayOfTables),
}

fn keys_mut<'a>(user: &'a mut dyn TableLike, field: &str) -> Result<Keys<'a>, EditError> {
    if !user.contains_key(field) {
        user.insert(field, Item::Value(Value::Array(Array::new())));
    }
    match user.get_mut(field) {
        Some(Item::Value(Value::Array(a))) => Ok(Keys::Inline(a)),
        Some(Item::ArrayOfTables(a)) => Ok(Keys::Sections(a)),
        _ => Err(EditError::Layout(
            "a user's `keys` is not an array: write keys = [ { sha256 = ... }, ... ]".into(),
        )),
    }
}

fn read_key(t: &dyn TableLike) -> KeyEntry {
    let text = |k: &str| t.get(k).and_then(Item::as_str).map(str::to_string);
    let instant = |k: &str| {
        t.get(k)
            .and_then(|i| i.as_value())
            .and_then(Value::as_datetime)
            .and_then(|d| unix_seconds(d).ok())
    };
    KeyEntry {
        sha256: text("sha256").unwrap_or_default(),
        prefix: text("prefix"),
        created: instant("created"),
        expires: instant("expires"),
    }
}

/// The user's keys in file order.
pub fn read_keys(user: &dyn TableLike) -> Vec<KeyEntry> {
    read_entries(user, "keys")
}

/// The entries of a key-like array (`keys` of a user, `tokens` of an admin) in file order.
pub fn read_entries(user: &dyn TableLike, field: &str) -> Vec<KeyEntry> {
    match user.get(field) {
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .filter_map(Value::as_inline_table)
            .map(|t| read_key(t))
            .collect(),
        Some(Item::ArrayOfTables(a)) => a.iter().map(|t| read_key(t)).collect(),
        _ => Vec::new(),
    }
}

/// Appends a key, one per line like the ones already there.
pub fn push_key(user: &mut dyn TableLike, key: &NewKey<'_>) -> Result<(), EditError> {
    push_entry(user, "keys", key)
}

/// Appends an entry to a key-like array (`keys`, `tokens`).
pub fn push_entry(
    user: &mut dyn TableLike,
    field: &str,
    key: &NewKey<'_>,
) -> Result<(), EditError> {
    let mut entry = InlineTable::new();
    entry.insert("sha256", key.sha256.into());
    entry.insert("prefix", key.prefix.into());
    entry.insert("created", Value::from(datetime(key.created)?));
    if let Some(expires) = key.expires {
        entry.insert("expires", Value::from(datetime(expires)?));
    }
    match keys_mut(user, field)? {
        Keys::Inline(array) => {
            let multi_line = array.is_empty()
                || array.trailing().as_str().is_some_and(|t| t.contains('\n'))
                || array.iter().any(|v| {
                    v.decor()
                        .prefix()
                        .and_then(|p| p.as_str())
                        .is_some_and(|p| p.contains('\n'))
                });
            if multi_line {
                // The indentation of the entries already there (what follows the last newline
                // before the first one), two spaces for a new list.
                let indent = array
                    .iter()
                    .next()
                    .and_then(|v| v.decor().prefix())
                    .and_then(|p| p.as_str())
                    .and_then(|p| p.rfind('\n').map(|i| p[i + 1..].to_string()))
                    .unwrap_or_else(|| "  ".into());
                // What followed the last entry (a comment on its line) stays with it; the new
                // entry starts on the next line.
                let trailing = array.trailing().as_str().unwrap_or("").to_string();
                let (after_last, before_bracket) = match trailing.rfind('\n') {
                    Some(i) => trailing.split_at(i),
                    None => ("", "\n"),
                };
                let prefix = format!("{after_last}\n{indent}");
                let before_bracket = before_bracket.to_string();
                array.push_formatted(Value::InlineTable(entry).decorated(prefix, ""));
                array.set_trailing_comma(true);
                array.set_trailing(before_bracket);
            } else {
                array.push(entry);
            }
        }
        Keys::Sections(tables) => tables.push(entry.into_table()),
    }
    Ok(())
}

/// Removes the keys at the given positions (as returned by `read_keys`).
pub fn remove_keys(user: &mut dyn TableLike, positions: &[usize]) -> Result<(), EditError> {
    remove_entries(user, "keys", positions)
}

/// Removes entries of a key-like array at the given positions (as `read_entries` numbers them).
pub fn remove_entries(
    user: &mut dyn TableLike,
    field: &str,
    positions: &[usize],
) -> Result<(), EditError> {
    match keys_mut(user, field)? {
        Keys::Inline(array) => {
            let mut i = 0;
            array.retain(|v| {
                // `read_keys` skips non-table entries; so must the numbering here.
                let keep = !(v.is_inline_table() && positions.contains(&i));
                if v.is_inline_table() {
                    i += 1;
                }
                keep
            });
            if array.is_empty() {
                array.set_trailing("");
                array.set_trailing_comma(false);
            }
        }
        Keys::Sections(tables) => {
            let mut i = 0;
            tables.retain(|_| {
                let keep = !positions.contains(&i);
                i += 1;
                keep
            });
        }
    }
    Ok(())
}

/// Sets `expires` of the key at `position`.
pub fn set_key_expiry(
    user: &mut dyn TableLike,
    position: usize,
    expires: i64,
) -> Result<(), EditError> {
    let value = Value::from(datetime(expires)?);
    match keys_mut(user, "keys")? {
        Keys::Inline(array) => {
            if let Some(t) = array
                .iter_mut()
                .filter_map(Value::as_inline_table_mut)
                .nth(position)
            {
                set_inline(t, "expires", value);
            }
        }
        Keys::Sections(tables) => {
            if let Some(t) = tables.get_mut(position) {
                t.insert("expires", Item::Value(value));
            }
        }
    }
    Ok(())
}

/// Sets `field` of an inline table. An existing value keeps its spacing; a new one goes last,
/// taking over the space the old last value had before the `}`, so `{ a = 1 }` becomes
/// `{ a = 1, b = 2 }` and not `{ a = 1 , b = 2}`.
fn set_inline(table: &mut InlineTable, field: &str, mut value: Value) {
    if let Some(old) = table.get_mut(field) {
        *value.decor_mut() = old.decor().clone();
        *old = value;
        return;
    }
    let mut before_brace = None;
    if let Some((_, last)) = table.iter_mut().last() {
        before_brace = last.decor().suffix().cloned();
        last.decor_mut().set_suffix("");
    }
    if let Some(suffix) = before_brace {
        value.decor_mut().set_suffix(suffix);
    }
    table.insert(field, value);
}

/// Unix seconds as a TOML offset date-time in UTC, `2026-11-22T10:00:00Z`.
pub fn datetime(unix: i64) -> Result<toml_edit::Datetime, EditError> {
    rfc3339(unix).parse().map_err(|_| {
        EditError::Layout(format!(
            "cannot write the instant {unix} as a TOML date-time"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# top comment
[users."a@x.org"] # trailing comment
status = "active"
keys = [
    { sha256 = "aa", prefix = "aw_AAAAA" }, # first key
]

[users."b@x.org"]
keys = [{ sha256 = "bb" }]

[[users."c@x.org".keys]]
sha256 = "cc"
"#;

    fn user_of<'a>(doc: &'a mut DocumentMut, id: &str) -> &'a mut dyn TableLike {
        doc["users"]
            .as_table_like_mut()
            .unwrap()
            .get_mut(id)
            .unwrap()
            .as_table_like_mut()
            .unwrap()
    }

    #[test]
    fn keys_are_appended_in_the_style_already_there() {
        let mut doc: DocumentMut = FILE.parse().unwrap();
        let key = NewKey {
            sha256: "dd",
            prefix: "aw_DDDDD",
            created: 1_795_341_600,
            expires: Some(1_795_345_200),
        };
        push_key(user_of(&mut doc, "a@x.org"), &key).unwrap();
        push_key(user_of(&mut doc, "b@x.org"), &key).unwrap();
        push_key(user_of(&mut doc, "c@x.org"), &key).unwrap();
        let text = doc.to_string();
        assert!(text.contains(
            "keys = [\n    { sha256 = \"aa\", prefix = \"aw_AAAAA\" }, # first key\n    { sha256 = \"dd\", prefix = \"aw_DDDDD\", created = 2026-11-22T10:00:00Z, expires = 2026-11-22T11:00:00Z },\n]"
        ), "{text}");
        assert!(
            text.contains("keys = [{ sha256 = \"bb\" }, { sha256 = \"dd\""),
            "{text}"
        );
        assert!(
            text.contains("[[users.\"c@x.org\".keys]]\nsha256 = \"dd\""),
            "{text}"
        );
        assert!(text.starts_with("# top comment\n[users.\"a@x.org\"] # trailing comment\n"));
        let again: DocumentMut = text.parse().unwrap();
        assert_eq!(
            read_keys(again["users"]["c@x.org"].as_table_like().unwrap()).len(),
            2
        );
    }

    #[test]
    fn keys_are_removed_and_expired_by_position() {
        let mut doc: DocumentMut = FILE.parse().unwrap();
        set_key_expiry(user_of(&mut doc, "a@x.org"), 0, 1_795_341_600).unwrap();
        assert!(
            doc.to_string().contains(
                "{ sha256 = \"aa\", prefix = \"aw_AAAAA\", expires = 2026-11-22T10:00:00Z },"
            ),
            "{doc}"
        );
        let keys = read_keys(user_of(&mut doc, "a@x.org"));
        assert_eq!(keys[0].expires, Some(1_795_341_600));
        assert_eq!(keys[0].label(), "aw_AAAAA");
        remove_keys(user_of(&mut doc, "a@x.org"), &[0]).unwrap();
        remove_keys(user_of(&mut doc, "c@x.org"), &[0]).unwrap();
        let text = doc.to_string();
        assert!(text.contains("keys = []\n"), "{text}");
        assert!(!text.contains("\"cc\""), "{text}");
        assert_eq!(
            read_keys(user_of(&mut doc, "b@x.org"))[0].label(),
            "sha256:bb"
        );
    }
}
