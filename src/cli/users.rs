//! `apiward users add | list | set | delete | set-password`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use toml_edit::{Item, Table, TableLike, Value};

use super::{AddUser, CliError, SetUser, Status, UsersCommand, password_policy};
use crate::auth::address::SourceWhitelist;
use crate::config::compile::check_user_id;
use crate::config::edit::{self, ConfigFile, NewKey};
use crate::config::reload::now_unix;

pub fn run(config: &Path, command: UsersCommand) -> Result<(), CliError> {
    match command {
        UsersCommand::Add(a) => add(config, a),
        UsersCommand::List { format, admin } => super::list::run(config, format, admin.as_deref()),
        UsersCommand::Set(s) => set(config, s),
        UsersCommand::Delete { id, yes } => delete(config, &id, yes),
        UsersCommand::SetPassword { id, generate } => set_password(config, &id, generate),
    }
}

fn add(config: &Path, a: AddUser) -> Result<(), CliError> {
    let mut file = ConfigFile::open(config)?;
    let id = match a.id {
        Some(id) => id,
        None => loop {
            let id = crate::keys::generate_user_id()?;
            if !file.has_user(&id) {
                break id;
            }
        },
    };
    check_user_id(&id).map_err(CliError::BadUserId)?;
    if file.has_user(&id) {
        return Err(CliError::DuplicateUser(id));
    }
    check_group(&file, &a.group)?;
    check_addresses(&a.remote_addresses)?;

    let mut user = Table::new();
    for (field, text) in [
        ("display_name", &a.display_name),
        ("first_name", &a.first_name),
        ("last_name", &a.last_name),
        ("description", &a.description),
    ] {
        if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
            user.insert(field, toml_edit::value(text));
        }
    }
    user.insert("status", toml_edit::value(a.status.as_str()));
    user.insert("group", toml_edit::value(&a.group));
    user.insert("remote_addresses", toml_edit::value(&a.remote_addresses));
    file.insert_user(&id, user)?;

    let key = if a.no_key {
        None
    } else {
        let key = crate::keys::issue_key()?;
        let now = now_unix();
        edit::push_key(
            file.user_mut(&id)?,
            &NewKey {
                sha256: &key.digest.to_hex(),
                prefix: &key.prefix,
                created: now,
                expires: a.expires.map(|d| now.saturating_add(d.as_secs() as i64)),
            },
        )?;
        Some(key)
    };
    file.save()?;

    eprintln!(
        "created API user {id} (group {}, status {}) in {}",
        a.group,
        a.status.as_str(),
        config.display()
    );
    match key {
        Some(key) => {
            eprintln!(
                "its key {}… is printed below, once: hand it over now, it cannot be shown again",
                key.prefix
            );
            super::print_secret(
                key.reveal(),
                "key",
                format!(
                    "issue another with `apiward keys issue {id}`, then revoke this one with `apiward keys revoke {id} --prefix {}`",
                    key.prefix
                ),
            )?;
        }
        None => {
            eprintln!("it has no key: give it a password with `apiward users set-password {id}`")
        }
    }
    Ok(())
}

fn set(config: &Path, s: SetUser) -> Result<(), CliError> {
    let mut file = ConfigFile::open(config)?;
    file.user(&s.id)?;
    if let Some(group) = &s.group {
        check_group(&file, group)?;
    }
    if let Some(addresses) = &s.remote_addresses {
        check_addresses(addresses)?;
    }
    let user = file.user_mut(&s.id)?;
    let mut changed = Vec::new();
    if let Some(status) = s.status {
        set_text(user, "status", status.as_str());
        changed.push(format!("status = {}", status.as_str()));
    }
    if let Some(group) = &s.group {
        set_text(user, "group", group);
        changed.push(format!("group = {group}"));
    }
    if let Some(addresses) = &s.remote_addresses {
        set_text(user, "remote_addresses", addresses);
        changed.push(format!("remote_addresses = {addresses}"));
    }
    for (field, text) in [
        ("display_name", &s.display_name),
        ("first_name", &s.first_name),
        ("last_name", &s.last_name),
        ("description", &s.description),
    ] {
        match text.as_deref() {
            None => {}
            Some("") => {
                user.remove(field);
                changed.push(format!("{field} removed"));
            }
            Some(text) => {
                set_text(user, field, text);
                changed.push(format!("{field} = {text}"));
            }
        }
    }
    file.save()?;
    eprintln!("updated {}: {}", s.id, changed.join(", "));
    if s.status == Some(Status::Inactive) {
        eprintln!("its keys and password are refused (user_inactive) from the next reload on");
    }
    Ok(())
}

fn delete(config: &Path, id: &str, yes: bool) -> Result<(), CliError> {
    let mut file = ConfigFile::open(config)?;
    let keys = edit::read_keys(file.user(id)?).len();
    if !yes {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return Err(CliError::NotConfirmed(
                ": pass --yes to delete without a question",
            ));
        }
        eprint!(
            "Delete API user {id} and its {keys} key(s) from {}? [y/N] ",
            config.display()
        );
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        stdin
            .lock()
            .read_line(&mut answer)
            .map_err(|e| CliError::Stdin(e.to_string()))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Err(CliError::NotConfirmed(""));
        }
    }
    file.remove_user(id)?;
    file.save()?;
    eprintln!("deleted API user {id} and its {keys} key(s)");
    Ok(())
}

fn set_password(config: &Path, id: &str, generate: bool) -> Result<(), CliError> {
    let mut file = ConfigFile::open(config)?;
    file.user(id)?;
    let organisation = file.organisation();
    let password = if generate {
        loop {
            let candidate = crate::keys::generate_password(24)?;
            if password_policy::check(&candidate, id, organisation.as_deref()).is_ok() {
                break candidate;
            }
        }
    } else {
        read_password(id)?
    };
    password_policy::check(&password, id, organisation.as_deref())?;
    let hash = crate::auth::password::hash_password(&password)?;
    set_text(file.user_mut(id)?, "password_hash", &hash);
    file.save()?;
    eprintln!("password set for {id}: only its Argon2id hash is stored");
    if generate {
        eprintln!("the generated password is printed below, once: hand it over now");
        super::print_secret(
            &password,
            "password",
            format!("run `apiward users set-password {id} --generate` again"),
        )?;
    }
    Ok(())
}

/// From a terminal: asked twice, without echo. Otherwise the first line of stdin.
fn read_password(id: &str) -> Result<String, CliError> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let first = rpassword::prompt_password(format!("New password for {id}: "))
            .map_err(|e| CliError::Stdin(e.to_string()))?;
        let second = rpassword::prompt_password("Repeat it: ")
            .map_err(|e| CliError::Stdin(e.to_string()))?;
        if first != second {
            return Err(CliError::PasswordMismatch);
        }
        return Ok(first);
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .map_err(|e| CliError::Stdin(e.to_string()))?;
    let line = line.strip_suffix('\n').unwrap_or(&line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(line.to_string())
}

fn check_group(file: &ConfigFile, group: &str) -> Result<(), CliError> {
    let known = file.group_names();
    if known.iter().any(|g| g == group) {
        return Ok(());
    }
    Err(CliError::UnknownGroup {
        group: group.to_string(),
        known: if known.is_empty() {
            "(none defined)".into()
        } else {
            known.join(", ")
        },
    })
}

fn check_addresses(text: &str) -> Result<(), CliError> {
    SourceWhitelist::parse_tilde(text)
        .map(|_| ())
        .map_err(CliError::BadAddresses)
}

/// Sets a string field, keeping the comment and spacing that follow the old value.
fn set_text(user: &mut dyn TableLike, field: &str, text: &str) {
    match user.get_mut(field) {
        Some(Item::Value(old)) => {
            let decor = old.decor().clone();
            let mut new = Value::from(text);
            *new.decor_mut() = decor;
            *old = new;
        }
        _ => {
            user.insert(field, toml_edit::value(text));
        }
    }
}
