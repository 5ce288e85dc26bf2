//! Asks a running gateway's admin listener (`GET /keys`) when each key was last used, for
//! `apiward users list`. Last use lives in the gateway's memory, not in the file.

use std::collections::HashMap;

/// Last use (Unix seconds) by key digest (hex), and by `password:<user id>` for passwords, as
/// the gateway reports it.
pub type LastUse = HashMap<String, i64>;

/// The `LastUse` entry of a user's password.
pub fn password_entry(id: &str) -> String {
    format!("password:{id}")
}

/// Fetches `/keys`; the error says why the last use is unknown.
pub fn fetch(admin: &str) -> Result<LastUse, String> {
    let body = super::admin_client::get_ok(admin, "/keys")?;
    let doc: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{admin}/keys: {e}"))?;
    let mut last_use = LastUse::new();
    let parse = |at: &str| {
        time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
            .ok()
            .map(|t| t.unix_timestamp())
    };
    for key in doc["keys"].as_array().into_iter().flatten() {
        let (Some(digest), Some(at)) = (key["sha256"].as_str(), key["last_used"].as_str()) else {
            continue;
        };
        if let Some(t) = parse(at) {
            last_use.insert(digest.to_string(), t);
        }
    }
    for password in doc["passwords"].as_array().into_iter().flatten() {
        let (Some(user), Some(at)) = (password["user"].as_str(), password["last_used"].as_str())
        else {
            continue;
        };
        if let Some(t) = parse(at) {
            last_use.insert(password_entry(user), t);
        }
    }
    Ok(last_use)
}
