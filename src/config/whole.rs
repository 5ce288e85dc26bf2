//! The whole file compiled from one parse, and the assembling of compiled users into a
//! `Snapshot` that every way of compiling shares (so that they cannot give different results).

use std::path::Path;

use super::compile::{Head, UserPiece, compile_admins, compile_head, compile_user};
use super::error::{ConfigError, ConfigErrors, Locator};
use super::raw::RawConfig;
use crate::snapshot::{ApiUser, DigestMap, KeyTableBuilder, Snapshot, UserIndex, UserTable};

/// The whole text parsed in one go, then compiled: what every other way of compiling must
/// give exactly, result and errors alike, and what they fall back to when a file is not
/// made of separate `[users."…"]` tables.
pub(crate) fn compile_whole(file: &Path, text: &str) -> Result<Snapshot, ConfigErrors> {
    let loc = Locator::new(file, text);
    let mut errors = Vec::new();
    let raw: RawConfig = match super::parse::parse(text) {
        Ok(raw) => raw,
        // The slow path, only for a file with mistakes: every unknown field is reported and
        // dropped, so that the rest of the file is still checked.
        Err(_) => {
            let (raw, problems) = super::schema::parse_reporting_all(text);
            for (span, message) in problems {
                let err = match span {
                    Some(span) => loc.error(span, message),
                    None => loc.whole_file(message),
                };
                errors.push(err);
            }
            match raw {
                Some(raw) => raw,
                None => return Err(ConfigErrors(errors)),
            }
        }
    };
    let (head, head_errors) = compile_head(&loc, &raw);
    errors.extend(head_errors);
    let pieces = raw
        .users
        .iter()
        .map(|(id, user)| compile_user(&loc, &head, id, user))
        .collect();
    match assemble(&loc, head, pieces, &mut errors, &raw) {
        Some((snapshot, _)) if errors.is_empty() => Ok(snapshot),
        Some(_) => Err(in_file_order(errors)),
        // Not reached: the parsed map has each id once.
        None => Err(ConfigErrors(vec![
            loc.whole_file("two users have the same id"),
        ])),
    }
}

/// The errors in the order of the file, as an operator reads it (a stable sort: whole-file
/// errors first).
pub(crate) fn in_file_order(mut errors: Vec<ConfigError>) -> ConfigErrors {
    errors.sort_by_key(|e| (e.line, e.column));
    ConfigErrors(errors)
}

const DUPLICATE_DIGEST: &str =
    "this key digest is already used by another key: every key must be unique, issue a new one";

const DUPLICATE_CERTIFICATE: &str =
    "this certificate already identifies another user: a certificate belongs to one user only";

/// Builds the snapshot from users compiled in any order, and each one's slot (`UserIndex::MAX`
/// for a user with errors), adding each duplicate key digest to `errors` where one parse of the
/// whole file finds it: at the later user in id order. `None` when two have the same id.
pub(crate) fn assemble(
    loc: &Locator<'_>,
    head: Head,
    mut pieces: Vec<UserPiece>,
    errors: &mut Vec<ConfigError>,
    raw: &RawConfig,
) -> Option<(Snapshot, Vec<UserIndex>)> {
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_unstable_by(|&a, &b| pieces[a].id.cmp(&pieces[b].id));
    if order.windows(2).any(|w| pieces[w[0]].id == pieces[w[1]].id) {
        return None;
    }
    let key_count = pieces.iter().map(|p| p.keys.len()).sum();
    let mut keys = KeyTableBuilder::for_keys(key_count);
    let mut users: Vec<ApiUser> = Vec::with_capacity(pieces.len());
    let mut slots = vec![UserIndex::MAX; pieces.len()];
    let mut certificates: DigestMap<UserIndex> = DigestMap::default();
    for i in order {
        let piece = &mut pieces[i];
        // As one sequential compile numbers them: the count of valid users before this one.
        let slot = users.len() as UserIndex;
        let mut own = std::mem::take(&mut piece.errors).into_iter();
        let mut emitted = 0;
        let mut valid = piece.user.is_some();
        for k in std::mem::take(&mut piece.keys) {
            while emitted < k.errors_before {
                errors.extend(own.next());
                emitted += 1;
            }
            if keys.contains_key(&k.digest) {
                errors.push(loc.error(k.span, DUPLICATE_DIGEST));
                valid = false;
                continue;
            }
            let mut key = k.key;
            key.user = slot;
            keys.insert(k.digest, key);
        }
        errors.extend(own);
        for (digest, span) in std::mem::take(&mut piece.certificates) {
            match certificates.entry(digest) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    errors.push(loc.error(span, DUPLICATE_CERTIFICATE));
                    valid = false;
                }
                std::collections::hash_map::Entry::Vacant(place) => {
                    if valid {
                        place.insert(slot);
                    }
                }
            }
        }
        if valid && let Some(user) = piece.user.take() {
            users.push(user);
            slots[i] = slot;
        }
    }
    let keys = keys.finish();
    let (admins, admin_tokens, admin_errors) = compile_admins(loc, raw, &keys);
    errors.extend(admin_errors);
    let mut snapshot = head.into_snapshot(
        loc.file(),
        UserTable::from_sorted(users),
        keys,
        (admins, admin_tokens),
    );
    snapshot.client_certificates = certificates;
    Some((snapshot, slots))
}
