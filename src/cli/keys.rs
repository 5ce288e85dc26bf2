//! `apiward keys issue | rotate | revoke`.

use std::path::Path;
use std::time::Duration;

use super::{CliError, KeysCommand};
use crate::config::edit::users::{Revoke, issue_key, revoke_keys, rotate_key};
use crate::config::edit::{self, edit_file};
use crate::config::reload::now_unix;

pub fn run(config: &Path, command: KeysCommand) -> Result<(), CliError> {
    match command {
        KeysCommand::Issue { id, expires } => issue(config, &id, expires),
        KeysCommand::Rotate {
            id,
            grace,
            prefix,
            expires,
        } => rotate(config, &id, grace, prefix.as_deref(), expires),
        KeysCommand::Revoke {
            id,
            prefix,
            all,
            expired,
        } => revoke(config, &id, prefix.as_deref(), all, expired),
    }
}

fn issue(config: &Path, id: &str, expires: Option<Duration>) -> Result<(), CliError> {
    let now = now_unix();
    let key = edit_file(config, None, |file| issue_key(file, id, expires, now))?.value;
    eprintln!(
        "issued key {}… for {id}{}; it is printed below, once",
        key.prefix,
        expiry_note(now, expires)
    );
    super::print_secret(
        key.reveal(),
        "key",
        format!(
            "revoke it with `apiward keys revoke {id} --prefix {}`",
            key.prefix
        ),
    )
}

fn rotate(
    config: &Path,
    id: &str,
    grace: Duration,
    prefix: Option<&str>,
    expires: Option<Duration>,
) -> Result<(), CliError> {
    let now = now_unix();
    let rotation = edit_file(config, None, |file| {
        rotate_key(file, id, grace, prefix, expires, now)
    })?
    .value;
    match rotation.old_until {
        None => eprintln!("revoked key {} of {id}", rotation.old),
        Some(until) => eprintln!(
            "key {} of {id} keeps working until {} and is refused after that",
            rotation.old,
            edit::rfc3339(until)
        ),
    }
    let key = rotation.key;
    eprintln!(
        "new key {}…{}; it is printed below, once",
        key.prefix,
        expiry_note(now, expires)
    );
    super::print_secret(
        key.reveal(),
        "new key",
        format!(
            "issue another with `apiward keys issue {id}`, then revoke this one with `apiward keys revoke {id} --prefix {}`",
            key.prefix
        ),
    )
}

fn revoke(
    config: &Path,
    id: &str,
    prefix: Option<&str>,
    all: bool,
    expired: bool,
) -> Result<(), CliError> {
    let now = now_unix();
    let which = match prefix {
        Some(p) => Revoke::Prefix(p),
        None if all => Revoke::All,
        None if expired => Revoke::Expired,
        None => Revoke::Only,
    };
    // An edit that removes nothing leaves the file as it was (`save` does not write it).
    let revoked = edit_file(config, None, |file| revoke_keys(file, id, which, now))?.value;
    if revoked.is_empty() {
        let existing = edit::ConfigFile::read(config)
            .ok()
            .and_then(|f| f.user(id).ok().map(|u| edit::read_keys(u).len()))
            .unwrap_or(0);
        if expired && existing > 0 {
            eprintln!("none of the {existing} key(s) of {id} has expired; nothing changed");
        } else {
            eprintln!("{id} has no key to revoke; nothing changed");
        }
        return Ok(());
    }
    eprintln!(
        "revoked {} key(s) of {id}: {}; they are refused from the next reload on",
        revoked.len(),
        revoked.join(", ")
    );
    Ok(())
}

fn expiry_note(now: i64, expires: Option<Duration>) -> String {
    match expires {
        Some(d) => format!(
            ", valid until {}",
            edit::rfc3339(now.saturating_add(d.as_secs() as i64))
        ),
        None => String::new(),
    }
}
