//! Refuses a configuration that would serve nothing, or lose most of its users, by accident: a
//! file truncated to nothing, one with no route or no user where the one before had some, or one
//! that removes more than `max_user_drop` of the users. `check`, the first load, every reload
//! and every edit (CLI and admin API) go through it.

use std::path::Path;

use super::error::{ConfigErrors, whole_file};
use crate::snapshot::Snapshot;

/// What the configuration before a change had, as far as the guard needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Baseline {
    pub routes: usize,
    pub users: usize,
    /// The `max_user_drop` it was loaded with: it still applies to a file that lost the setting.
    pub max_user_drop: Option<f64>,
}

impl Baseline {
    pub fn of(snapshot: &Snapshot) -> Baseline {
        Baseline {
            routes: snapshot.routes.len(),
            users: snapshot.users.len(),
            max_user_drop: snapshot.server.guard.max_user_drop,
        }
    }
}

/// Whether `text` holds no setting at all: no bytes, or only blank lines and comments.
pub fn is_blank(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#')
    })
}

/// The refusal of a file with nothing in it, before it is compiled (it compiles: to nothing).
pub fn refuse_blank(file: &Path, text: &str) -> Result<(), ConfigErrors> {
    if !is_blank(text) {
        return Ok(());
    }
    let what = if text.is_empty() {
        "is empty (0 bytes)".to_string()
    } else {
        format!(
            "holds no setting ({} bytes of blank lines and comments)",
            text.len()
        )
    };
    Err(ConfigErrors(vec![whole_file(
        file,
        format!(
            "the configuration file {what}: probably a save that did not finish, so it was not loaded; write the whole file again (a file that is meant to serve nothing says so with [server] allow_empty = true)"
        ),
    )]))
}

/// Whether `new` may replace the configuration `before` described. `removed_users` counts the
/// users of `before` that `new` no longer has; it is only called when `max_user_drop` is set.
pub fn admit(
    file: &Path,
    new: &Snapshot,
    before: &Baseline,
    removed_users: impl FnOnce() -> usize,
) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    let allow_empty = new.server.guard.allow_empty;
    if !allow_empty {
        if before.routes > 0 && new.routes.is_empty() {
            errors.push(whole_file(
                file,
                format!(
                    "the file defines no route where the configuration before it has {}: every request would be answered 404, so it was refused as a probable accident; restore the [[routes]], or set [server] allow_empty = true if this is meant",
                    before.routes
                ),
            ));
        }
        if before.users > 0 && new.users.is_empty() {
            errors.push(whole_file(
                file,
                format!(
                    "the file defines no user where the configuration before it has {}: every credential would be refused, so it was refused as a probable accident; restore the [users.\"…\"] tables, or set [server] allow_empty = true if this is meant",
                    before.users
                ),
            ));
        }
    }
    // An emptied user list that allow_empty admits is meant: the share is not asked about.
    let meant_empty = allow_empty && new.users.is_empty();
    let limit = new.server.guard.max_user_drop.or(before.max_user_drop);
    if let Some(limit) = limit.filter(|_| before.users > 0 && !meant_empty) {
        let removed = removed_users();
        let share = removed as f64 / before.users as f64;
        if share > limit {
            errors.push(whole_file(
                file,
                format!(
                    "the file removes {removed} of the {} users ({:.0} %), more than max_user_drop = {limit} allows: refused as a probable accident (a truncated file, a wrong copy); if this is meant, set [server] max_user_drop = 1 in this file (any share) and lower it again afterwards",
                    before.users,
                    share * 100.0
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The users of `old` that `new` does not have, by id.
pub fn removed_between(old: &Snapshot, new: &Snapshot) -> usize {
    old.users
        .iter()
        .filter(|u| new.user_by_id(&u.id).is_none())
        .count()
}
