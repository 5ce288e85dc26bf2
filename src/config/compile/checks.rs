//! The checks of single values that compiling needs, each pure over its text: user ids, key
//! digests, date-times, route prefixes, header names; and the interned `'static` copies of the
//! names and values copied on every request.

use http::HeaderName;
use toml::Spanned;
use toml::value::{Datetime, Offset};

use crate::snapshot::KeyDigest;

pub(super) fn did_you_mean<'a>(
    word: &str,
    keys: impl Iterator<Item = &'a Spanned<String>>,
) -> String {
    crate::suggest::did_you_mean(word, keys.map(|k| k.get_ref().as_str()))
}

pub(super) fn names<'a>(keys: impl Iterator<Item = &'a Spanned<String>>) -> String {
    let all: Vec<&str> = keys.map(|k| k.get_ref().as_str()).collect();
    if all.is_empty() {
        "(none defined)".into()
    } else {
        all.join(", ")
    }
}

pub(super) fn check_route_prefix(prefix: &str) -> Result<(), String> {
    if !prefix.starts_with('/') {
        return Err(format!("route prefix {prefix:?} must start with '/'"));
    }
    match crate::auth::path::normalise(prefix) {
        Ok(n) if n == prefix => Ok(()),
        Ok(n) => Err(format!(
            "route prefix {prefix:?} is not in normal form: write {n:?}"
        )),
        Err(e) => Err(format!("route prefix {prefix:?} is not a valid path: {e}")),
    }
}

/// The one `'static` copy of `text`, made the first time it is asked for. Header names, group
/// header values and upstream authorities built on it are copied for each request without
/// touching a reference count (an atomic operation each, measured in docs/benchmarks.md). The
/// set only grows by the distinct names that configurations have ever used: a few, not per
/// request and not per user.
pub(super) fn interned(text: &str) -> &'static str {
    static SET: std::sync::Mutex<Option<std::collections::HashSet<&'static str>>> =
        std::sync::Mutex::new(None);
    let mut set = SET.lock().unwrap_or_else(|e| e.into_inner());
    let set = set.get_or_insert_with(Default::default);
    if let Some(found) = set.get(text) {
        return found;
    }
    let leaked: &'static str = Box::leak(text.into());
    set.insert(leaked);
    leaked
}

/// The group's name as the `X-Apiward-Group` value, or `None` when it cannot be one. Interned
/// when it is plain ASCII (`HeaderValue::from_static` takes nothing else; a name with other
/// characters is still a valid value, made the usual way).
pub(super) fn group_header(name: &str) -> Option<http::HeaderValue> {
    let plain = name
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) || b == b'\t');
    if plain {
        Some(http::HeaderValue::from_static(interned(name)))
    } else {
        http::HeaderValue::from_str(name).ok()
    }
}

pub(super) fn check_key_header(name: &str) -> Result<HeaderName, String> {
    let header = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("key_header {name:?} is not a valid HTTP header name"))?;
    // Lower case, as `from_bytes` made it; interned for the reason `interned` gives.
    let header = HeaderName::from_static(interned(header.as_str()));
    let reserved = [
        "host",
        "authorization",
        "connection",
        "content-length",
        "transfer-encoding",
        "cookie",
        "x-forwarded-for",
    ];
    if reserved.contains(&header.as_str()) || header.as_str().starts_with("x-apiward-") {
        return Err(format!(
            "key_header {name:?} is reserved: use a dedicated header such as \"X-Api-Key\" (Authorization: Bearer is always accepted)"
        ));
    }
    Ok(header)
}

/// A user id is email-shaped: `local@domain`, no spaces, no ':' (it is the Basic-auth user name).
pub fn check_user_id(id: &str) -> Result<(), String> {
    let shape =
        "a user id is email-shaped, like \"crm-sync@example.org\" (it need not be a real mailbox)";
    if id.len() > 254 {
        return Err(format!("user id is longer than 254 characters: {shape}"));
    }
    let Some((local, domain)) = id.split_once('@') else {
        return Err(format!("user id {id:?} has no '@': {shape}"));
    };
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return Err(format!("user id {id:?} is not email-shaped: {shape}"));
    }
    if id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == '"')
    {
        return Err(format!(
            "user id {id:?} contains a space, a control character, '\"' or ':': {shape}"
        ));
    }
    Ok(())
}

pub(super) fn parse_digest(text: &str) -> Result<KeyDigest, String> {
    let hint = "sha256 must be the 64-character hex SHA-256 digest of the whole key (e.g. `printf %s \"$KEY\" | sha256sum`), never the key itself";
    if text.starts_with("aw_") {
        return Err(format!(
            "this looks like a key, not a digest: remove it from the file and revoke it; {hint}"
        ));
    }
    if text.len() != 64 {
        return Err(format!(
            "the digest has {} characters, not 64: {hint}",
            text.len()
        ));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out)
        .map_err(|_| format!("the digest is not hexadecimal: {hint}"))?;
    Ok(KeyDigest(out))
}

/// Converts a TOML offset date-time to Unix seconds; a date-time without an offset is ambiguous.
pub fn unix_seconds(dt: &Datetime) -> Result<i64, String> {
    let (Some(date), Some(time), Some(offset)) = (dt.date, dt.time, dt.offset) else {
        return Err(format!(
            "{dt} needs a date, a time and a time zone, e.g. 2026-11-22T10:00:00Z"
        ));
    };
    let days = days_from_civil(
        i64::from(date.year),
        i64::from(date.month),
        i64::from(date.day),
    );
    let offset_minutes = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes),
    };
    Ok(days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_minutes * 60)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
