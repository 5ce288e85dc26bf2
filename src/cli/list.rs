//! `apiward users list`: what a cloud console's "API users" page shows, as a table or as JSON.
//! Keys appear by prefix only; the file holds nothing more.

use std::path::Path;

use super::last_used::{self, LastUse};
use super::{CliError, ListFormat};
use crate::config::edit::users::UserEntry as Listed;
use crate::config::edit::{self, ConfigFile, KeyEntry};
use crate::config::reload::now_unix;

pub fn run(config: &Path, format: ListFormat, admin: Option<&str>) -> Result<(), CliError> {
    let file = ConfigFile::read(config)?;
    let users = file.user_entries();
    // Limits are resolved (a user's own rate limit over its group's) by compiling the file, as
    // the gateway does; a file that does not compile lists them as unknown.
    let compiled = crate::config::load(config).ok();
    let limits = Limits(compiled.as_ref());
    let now = now_unix();
    // Last use is known only to a running gateway; without one the listing still works, and
    // says why the column is "?".
    let last_use = match super::admin_client::admin_address(admin, config) {
        Some(addr) => match last_used::fetch(&addr) {
            Ok(l) => Some(l),
            Err(why) => {
                eprintln!("hint: LAST USED is \"?\": {why}");
                None
            }
        },
        None => {
            eprintln!(
                "hint: LAST USED is \"?\": it is known only to a running gateway, asked on its admin listener: set [server] admin_listen, or pass --admin HOST:PORT"
            );
            None
        }
    };
    let last_use = last_use.as_ref();
    match format {
        ListFormat::Json => {
            let doc: Vec<serde_json::Value> = users
                .iter()
                .map(|u| as_json(u, now, last_use, &limits))
                .collect();
            let text = serde_json::to_string_pretty(&doc).unwrap_or_else(|_| "[]".into());
            super::print_listing(&format!("{text}\n"));
        }
        ListFormat::Table => print_table(&users, now, last_use, &limits),
    }
    Ok(())
}

/// A key's last use: `Some(None)` when the gateway was asked and the key was not used.
fn key_last_use(k: &KeyEntry, last_use: Option<&LastUse>) -> Option<Option<i64>> {
    last_use.map(|l| l.get(&k.sha256.to_ascii_lowercase()).copied())
}

/// A password's last use, as `key_last_use`.
fn password_last_use(u: &Listed, last_use: Option<&LastUse>) -> Option<Option<i64>> {
    if !u.has_password {
        return last_use.map(|_| None);
    }
    last_use.map(|l| l.get(&last_used::password_entry(&u.id)).copied())
}

/// Each user's effective limits, from the compiled file.
struct Limits<'s>(Option<&'s crate::snapshot::Snapshot>);

impl Limits<'_> {
    /// `None` when the file does not compile (nothing certain can be said).
    fn of(&self, id: &str) -> Option<crate::snapshot::UserLimits> {
        self.0.and_then(|s| s.user_by_id(id)).map(|u| *u.limits)
    }
}

fn as_json(
    u: &Listed,
    now: i64,
    last_use: Option<&LastUse>,
    limits: &Limits<'_>,
) -> serde_json::Value {
    let keys: Vec<serde_json::Value> = u
        .keys
        .iter()
        .map(|k| {
            serde_json::json!({
                "prefix": k.label(),
                "created": k.created.map(edit::rfc3339),
                "expires": k.expires.map(edit::rfc3339),
                "expired": k.is_expired(now),
                "last_used": key_last_use(k, last_use).flatten().map(edit::rfc3339),
            })
        })
        .collect();
    let mut fields = u.json_fields();
    fields.extend([
        (
            "password_last_used".to_string(),
            serde_json::json!(password_last_use(u, last_use).flatten().map(edit::rfc3339)),
        ),
        ("key_count".to_string(), serde_json::json!(u.keys.len())),
        ("keys".to_string(), serde_json::Value::Array(keys)),
        (
            "limits".to_string(),
            serde_json::json!(limits.of(&u.id).as_ref().map(crate::limits::describe::json)),
        ),
    ]);
    serde_json::Value::Object(fields)
}

fn print_table(users: &[Listed], now: i64, last_use: Option<&LastUse>, limits: &Limits<'_>) {
    let header = [
        "ID",
        "NAME",
        "STATUS",
        "GROUP",
        "ADDRESSES",
        "PASSWORD",
        "KEYS",
        "PREFIXES",
        "CREATED",
        "EXPIRES",
        "LIMITS",
        "LAST USED",
    ];
    let date = |t: i64| {
        edit::rfc3339(t)
            .get(..10)
            .map(str::to_string)
            .unwrap_or_default()
    };
    let rows: Vec<[String; 12]> = users
        .iter()
        .map(|u| {
            let name = u.display_name.clone().unwrap_or_else(|| {
                let full = [u.first_name.as_deref(), u.last_name.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                if full.is_empty() { "-".into() } else { full }
            });
            let prefixes = u
                .keys
                .iter()
                .map(|k| {
                    if k.is_expired(now) {
                        format!("{}(expired)", k.label())
                    } else {
                        k.label()
                    }
                })
                .collect::<Vec<_>>()
                .join(",");
            let created = u.keys.iter().filter_map(|k| k.created).min().map(date);
            // The date the next still-valid key stops working; "never" if none of them expires.
            let live: Vec<&KeyEntry> = u.keys.iter().filter(|k| !k.is_expired(now)).collect();
            let expires = match live.iter().filter_map(|k| k.expires).min() {
                Some(t) => date(t),
                None if live.is_empty() => "-".into(),
                None => "never".into(),
            };
            [
                u.id.clone(),
                name,
                u.status.clone(),
                u.group.clone(),
                u.addresses.join("~"),
                if u.has_password {
                    "yes".into()
                } else {
                    "-".into()
                },
                u.keys.len().to_string(),
                if prefixes.is_empty() {
                    "-".into()
                } else {
                    prefixes
                },
                created.unwrap_or_else(|| "-".into()),
                expires,
                limits
                    .of(&u.id)
                    .as_ref()
                    .map_or_else(|| "?".into(), crate::limits::describe::summary),
                match last_use {
                    None => "?".into(),
                    Some(_) => u
                        .keys
                        .iter()
                        .filter_map(|k| key_last_use(k, last_use).flatten())
                        .chain(password_last_use(u, last_use).flatten())
                        .max()
                        .map_or_else(|| "never".into(), edit::rfc3339),
                },
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut listing = String::new();
    let mut line = |cells: &[&str]| {
        let out = &mut listing;
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(&header);
    for row in &rows {
        line(&row.each_ref().map(String::as_str));
    }
    super::print_listing(&listing);
    if rows.is_empty() {
        eprintln!("no API users yet: create one with `apiward users add`");
    }
}
