//! `apiward users add | list | set | delete | set-password` (`add-certificate` is in `certificates.rs`).

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::Path;

use super::{AddUser, CliError, SetUser, Status, UsersCommand, password_policy};
use crate::config::edit::users::{
    NewUser, UserChanges, add_user, change_user, delete_user, set_text,
};
use crate::config::edit::{self, ConfigFile};
use crate::config::reload::now_unix;

pub fn run(config: &Path, command: UsersCommand) -> Result<(), CliError> {
    match command {
        UsersCommand::Add(a) => add(config, a),
        UsersCommand::List { format, admin } => super::list::run(config, format, admin.as_deref()),
        UsersCommand::Set(s) => set(config, s),
        UsersCommand::Delete { id, yes } => delete(config, &id, yes),
        UsersCommand::SetPassword { id, generate } => set_password(config, &id, generate),
        UsersCommand::AddCertificate { id, cert } => super::certificates::add(config, &id, &cert),
    }
}

fn add(config: &Path, a: AddUser) -> Result<(), CliError> {
    let now = now_unix();
    let edited = edit::edit_file(config, None, |file| {
        let id = match &a.id {
            Some(id) => id.clone(),
            None => loop {
                let id = crate::keys::generate_user_id()?;
                if !file.has_user(&id) {
                    break id;
                }
            },
        };
        let user = NewUser {
            id: id.clone(),
            group: a.group.clone(),
            remote_addresses: a.remote_addresses.clone(),
            display_name: a.display_name.clone(),
            first_name: a.first_name.clone(),
            last_name: a.last_name.clone(),
            description: a.description.clone(),
            status: a.status.into(),
            key: (!a.no_key).then_some(a.expires),
        };
        Ok((id, add_user(file, &user, now)?))
    })?;
    let (id, key) = edited.value;
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
    let changes = UserChanges {
        status: s.status.map(Into::into),
        group: s.group.clone(),
        remote_addresses: s.remote_addresses.clone(),
        display_name: s.display_name.clone(),
        first_name: s.first_name.clone(),
        last_name: s.last_name.clone(),
        description: s.description.clone(),
    };
    let edited = edit::edit_file(config, None, |file| change_user(file, &s.id, &changes))?;
    eprintln!("updated {}: {}", s.id, edited.value.join(", "));
    if s.status == Some(Status::Inactive) {
        eprintln!("its keys and password are refused (user_inactive) from the next reload on");
    }
    Ok(())
}

fn delete(config: &Path, id: &str, yes: bool) -> Result<(), CliError> {
    let file = ConfigFile::read(config)?;
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
    edit::edit_file(config, None, |file| delete_user(file, id))?;
    eprintln!("deleted API user {id} and its {keys} key(s)");
    Ok(())
}

/// A new password for `id` that passes the policy: generated, or read from the terminal.
pub(super) fn new_password(
    id: &str,
    organisation: Option<&str>,
    generate: bool,
) -> Result<String, CliError> {
    let password = if generate {
        loop {
            let candidate = crate::keys::generate_password(24)?;
            if password_policy::check(&candidate, id, organisation).is_ok() {
                break candidate;
            }
        }
    } else {
        read_password(id)?
    };
    password_policy::check(&password, id, organisation)?;
    Ok(password)
}

fn set_password(config: &Path, id: &str, generate: bool) -> Result<(), CliError> {
    let file = ConfigFile::read(config)?;
    file.user(id)?;
    let password = new_password(id, file.organisation().as_deref(), generate)?;
    let hash = crate::auth::password::hash_password(&password)?;
    edit::edit_file(config, None, |file| {
        set_text(file.user_mut(id)?, "password_hash", &hash);
        Ok(())
    })?;
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
pub(super) fn read_password(id: &str) -> Result<String, CliError> {
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
