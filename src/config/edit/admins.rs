//! `[admins."id"]` as edits of a loaded file: accounts of the console and the management API,
//! their Argon2id password hashes and their `awa_` tokens (only digests and prefixes stored).

use toml_edit::{Item, Table, TableLike};

use super::users::set_text;
use super::{ConfigFile, EditError, KeyEntry, NewKey, push_entry, read_entries, remove_entries};
use crate::config::compile::check_user_id;
use crate::keys::IssuedKey;

/// One admin as the file has it.
#[derive(Debug, Clone)]
pub struct AdminEntry {
    pub id: String,
    pub has_password: bool,
    pub tokens: Vec<KeyEntry>,
}

impl ConfigFile {
    fn admins(&self) -> Option<&dyn TableLike> {
        self.doc.get("admins").and_then(Item::as_table_like)
    }

    pub fn admin(&self, id: &str) -> Result<&dyn TableLike, EditError> {
        self.admins()
            .and_then(|a| a.get(id))
            .and_then(Item::as_table_like)
            .ok_or_else(|| self.no_such_admin(id))
    }

    fn admin_mut(&mut self, id: &str) -> Result<&mut dyn TableLike, EditError> {
        let missing = self.no_such_admin(id);
        self.doc
            .get_mut("admins")
            .and_then(Item::as_table_like_mut)
            .and_then(|a| a.get_mut(id))
            .and_then(Item::as_table_like_mut)
            .ok_or(missing)
    }

    fn no_such_admin(&self, id: &str) -> EditError {
        EditError::NoSuchAdmin {
            id: id.to_string(),
            path: self.path().to_path_buf(),
        }
    }

    /// Every admin in file order.
    pub fn admin_entries(&self) -> Vec<AdminEntry> {
        self.admins()
            .map(|a| {
                a.iter()
                    .filter_map(|(id, item)| {
                        let t = item.as_table_like()?;
                        Some(AdminEntry {
                            id: id.to_string(),
                            has_password: t.contains_key("password_hash"),
                            tokens: read_entries(t, "tokens"),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Adds `[admins."id"]`, with neither password nor token yet (it cannot log in until given one).
pub fn add_admin(file: &mut ConfigFile, id: &str) -> Result<(), EditError> {
    check_user_id(id).map_err(|m| EditError::BadUserId(m.replace("user id", "admin id")))?;
    if file.admin(id).is_ok() {
        return Err(EditError::DuplicateAdmin(id.to_string()));
    }
    let admins = file.doc.entry("admins").or_insert_with(|| {
        let mut t = Table::new();
        t.set_implicit(true);
        Item::Table(t)
    });
    match admins {
        Item::Table(t) => {
            let mut admin = Table::new();
            admin.insert("tokens", Item::Value(toml_edit::Array::new().into()));
            t.insert(id, Item::Table(admin));
            Ok(())
        }
        _ => Err(EditError::Layout(
            "`admins` is not a table: write each admin as [admins.\"id\"]".into(),
        )),
    }
}

pub fn delete_admin(file: &mut ConfigFile, id: &str) -> Result<(), EditError> {
    file.admin(id)?;
    file.doc
        .get_mut("admins")
        .and_then(Item::as_table_like_mut)
        .and_then(|a| a.remove(id));
    Ok(())
}

/// Stores an Argon2id hash (made by the caller) as the admin's password.
pub fn set_admin_password_hash(
    file: &mut ConfigFile,
    id: &str,
    hash: &str,
) -> Result<(), EditError> {
    set_text(file.admin_mut(id)?, "password_hash", hash);
    Ok(())
}

/// Adds a fresh `awa_` token to the admin.
pub fn issue_admin_token(
    file: &mut ConfigFile,
    id: &str,
    now: i64,
) -> Result<IssuedKey, EditError> {
    let existing = read_entries(file.admin(id)?, "tokens");
    let token = loop {
        let t = crate::keys::issue_admin_token()?;
        if !existing
            .iter()
            .any(|k| k.prefix.as_deref() == Some(t.prefix.as_str()))
        {
            break t;
        }
    };
    push_entry(
        file.admin_mut(id)?,
        "tokens",
        &NewKey {
            sha256: &token.digest.to_hex(),
            prefix: &token.prefix,
            created: now,
            expires: None,
        },
    )?;
    Ok(token)
}

/// Removes the admin's token whose prefix starts with `prefix`; answers its label.
pub fn revoke_admin_token(
    file: &mut ConfigFile,
    id: &str,
    prefix: &str,
) -> Result<String, EditError> {
    let existing = read_entries(file.admin(id)?, "tokens");
    let position = super::users::select_one(id, &existing, prefix)?;
    remove_entries(file.admin_mut(id)?, "tokens", &[position])?;
    Ok(existing[position].label())
}
