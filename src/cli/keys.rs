//! `apiward keys issue | rotate | revoke`.

use std::path::Path;
use std::time::Duration;

use super::{CliError, KeysCommand};
use crate::config::edit::{self, ConfigFile, KeyEntry, NewKey};
use crate::config::reload::now_unix;
use crate::keys::IssuedKey;

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
    let mut file = ConfigFile::open(config)?;
    let existing = edit::read_keys(file.user(id)?);
    let key = new_key(&existing)?;
    let now = now_unix();
    add_key(&mut file, id, &key, now, expires)?;
    file.save()?;
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
    let mut file = ConfigFile::open(config)?;
    let now = now_unix();
    let existing = edit::read_keys(file.user(id)?);
    let live: Vec<usize> = (0..existing.len())
        .filter(|&i| !existing[i].is_expired(now))
        .collect();
    let old = match prefix {
        Some(p) => select_one(id, &existing, p)?,
        None => match live.as_slice() {
            [only] => *only,
            [] => {
                return Err(CliError::KeySelection(format!(
                    "{id} has no valid key to rotate: issue one with `apiward keys issue {id}`"
                )));
            }
            several => {
                return Err(CliError::KeySelection(format!(
                    "{id} has {} valid keys: say which to rotate with --prefix ({})",
                    several.len(),
                    labels(&existing, several)
                )));
            }
        },
    };
    let old_label = existing[old].label();
    let key = new_key(&existing)?;
    let grace_ends = now.saturating_add(grace.as_secs() as i64);
    let user = file.user_mut(id)?;
    if grace.as_secs() == 0 {
        edit::remove_keys(user, &[old])?;
    } else {
        // A key already due to expire sooner keeps its earlier date: rotation never extends a key.
        let until = existing[old]
            .expires
            .map_or(grace_ends, |t| t.min(grace_ends));
        edit::set_key_expiry(user, old, until)?;
    }
    add_key(&mut file, id, &key, now, expires)?;
    file.save()?;
    if grace.as_secs() == 0 {
        eprintln!("revoked key {old_label} of {id}");
    } else {
        let until = existing[old]
            .expires
            .map_or(grace_ends, |t| t.min(grace_ends));
        eprintln!(
            "key {old_label} of {id} keeps working until {} and is refused after that",
            edit::rfc3339(until)
        );
    }
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
    let mut file = ConfigFile::open(config)?;
    let now = now_unix();
    let existing = edit::read_keys(file.user(id)?);
    let doomed: Vec<usize> = if let Some(p) = prefix {
        vec![select_one(id, &existing, p)?]
    } else if all {
        (0..existing.len()).collect()
    } else if expired {
        (0..existing.len())
            .filter(|&i| existing[i].is_expired(now))
            .collect()
    } else if existing.len() == 1 {
        vec![0]
    } else if existing.is_empty() {
        Vec::new()
    } else {
        let every: Vec<usize> = (0..existing.len()).collect();
        return Err(CliError::KeySelection(format!(
            "{id} has {} keys: say which with --prefix ({}), or --expired, or --all",
            existing.len(),
            labels(&existing, &every)
        )));
    };
    if doomed.is_empty() {
        if expired && !existing.is_empty() {
            eprintln!(
                "none of the {} key(s) of {id} has expired; nothing changed",
                existing.len()
            );
        } else {
            eprintln!("{id} has no key to revoke; nothing changed");
        }
        return Ok(());
    }
    edit::remove_keys(file.user_mut(id)?, &doomed)?;
    file.save()?;
    eprintln!(
        "revoked {} key(s) of {id}: {}; they are refused from the next reload on",
        doomed.len(),
        labels(&existing, &doomed)
    );
    Ok(())
}

/// A new key whose prefix differs from the user's other keys, so the prefix names one key.
fn new_key(existing: &[KeyEntry]) -> Result<IssuedKey, CliError> {
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
    expires: Option<Duration>,
) -> Result<(), CliError> {
    edit::push_key(
        file.user_mut(id)?,
        &NewKey {
            sha256: &key.digest.to_hex(),
            prefix: &key.prefix,
            created: now,
            expires: expires.map(|d| now.saturating_add(d.as_secs() as i64)),
        },
    )?;
    Ok(())
}

/// The one key whose label starts with `prefix`.
fn select_one(id: &str, keys: &[KeyEntry], prefix: &str) -> Result<usize, CliError> {
    let matching: Vec<usize> = (0..keys.len())
        .filter(|&i| !prefix.is_empty() && keys[i].label().starts_with(prefix))
        .collect();
    match matching.as_slice() {
        [one] => Ok(*one),
        [] => {
            let every: Vec<usize> = (0..keys.len()).collect();
            Err(CliError::KeySelection(format!(
                "{id} has no key with prefix {prefix:?}; its keys are: {}",
                if keys.is_empty() {
                    "(none)".into()
                } else {
                    labels(keys, &every)
                }
            )))
        }
        several => Err(CliError::KeySelection(format!(
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

fn expiry_note(now: i64, expires: Option<Duration>) -> String {
    match expires {
        Some(d) => format!(
            ", valid until {}",
            edit::rfc3339(now.saturating_add(d.as_secs() as i64))
        ),
        None => String::new(),
    }
}
