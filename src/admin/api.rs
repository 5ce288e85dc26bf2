//! The management API, JSON under `/api/v1/`: API users, their keys, their recent requests,
//! recent refusals of non-users, and groups. Reads come from the file (what `users list` shows)
//! and the gateway's memory (last use, recent requests); writes go through [`super::write`].

use std::time::Duration;

use http::header::{ETAG, HeaderValue, IF_MATCH, WWW_AUTHENTICATE};
use http::{Method, StatusCode};
use serde::Deserialize;

use super::context::{AdminRequest, AdminResponse, Ctx, error, json_with};
use super::session::{self, Caller};
use super::write::{self, WriteFailure};
use crate::config::duration::parse_duration;
use crate::config::edit::users::{self as edit_users, NewUser, Revoke, UserChanges, UserEntry};
use crate::config::edit::{ConfigFile, KeyEntry, rfc3339};
use crate::config::reload::now_unix;
use crate::observe::recent::RecentRequest;
use crate::snapshot::{KeyDigest, UserStatus};

pub(super) async fn handle(ctx: &Ctx, req: &AdminRequest) -> AdminResponse {
    let snapshot = ctx.state.store.load_full();
    let caller = match session::identify(&req.headers, &ctx.sessions, &snapshot) {
        Ok(c) => c,
        Err(why) => {
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthenticated", why.message());
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"apiward admin\""),
            );
            return r;
        }
    };
    let changes_state = !matches!(req.method, Method::GET | Method::HEAD);
    if changes_state && !caller.csrf_ok(header(req, "x-csrf-token")) {
        return error(
            StatusCode::FORBIDDEN,
            "csrf",
            "a console session must send its CSRF token in X-CSRF-Token with every change",
        );
    }
    let segments: Vec<String> = req
        .path
        .trim_start_matches("/api/v1")
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let result = match (&req.method, segments.as_slice()) {
        (&Method::GET, ["users"]) => list_users(ctx),
        (&Method::POST, ["users"]) => create_user(ctx, req, &caller).await,
        (&Method::GET, ["users", id]) => get_user(ctx, id),
        (&Method::PATCH, ["users", id]) => patch_user(ctx, req, &caller, id).await,
        (&Method::DELETE, ["users", id]) => delete_user(ctx, req, &caller, id).await,
        (&Method::POST, ["users", id, "keys"]) => issue_key(ctx, req, &caller, id).await,
        (&Method::POST, ["users", id, "keys", "rotate"]) => rotate_key(ctx, req, &caller, id).await,
        (&Method::DELETE, ["users", id, "keys", prefix]) => {
            revoke_key(ctx, req, &caller, id, prefix).await
        }
        (&Method::GET, ["users", id, "requests"]) => user_requests(ctx, id),
        (&Method::GET, ["refusals"]) => Ok(refusals(ctx)),
        (&Method::GET, ["groups"]) => groups(ctx),
        (_, ["users"] | ["users", _] | ["users", _, ..] | ["refusals"] | ["groups"]) => {
            Err(WriteFailure {
                status: StatusCode::METHOD_NOT_ALLOWED,
                code: "method_not_allowed",
                message: format!("{} is not allowed on {}", req.method, req.path),
            })
        }
        _ => Err(WriteFailure {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: format!("no endpoint {}: see docs/console.md", req.path),
        }),
    };
    match result {
        Ok(r) => r,
        Err(f) => error(f.status, f.code, &f.message),
    }
}

type ApiResult = Result<AdminResponse, WriteFailure>;

fn header<'r>(req: &'r AdminRequest, name: &str) -> Option<&'r str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

fn if_match(req: &AdminRequest) -> Option<String> {
    req.headers
        .get(IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn with_etag(mut r: AdminResponse, etag: &str) -> AdminResponse {
    if let Ok(v) = HeaderValue::from_str(etag) {
        r.headers_mut().insert(ETAG, v);
    }
    r
}

fn bad_request(message: impl Into<String>) -> WriteFailure {
    WriteFailure {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request",
        message: message.into(),
    }
}

fn body<'a, T: Deserialize<'a>>(req: &'a AdminRequest) -> Result<T, WriteFailure> {
    let bytes: &[u8] = if req.body.is_empty() {
        b"{}"
    } else {
        &req.body
    };
    serde_json::from_slice(bytes)
        .map_err(|e| bad_request(format!("the body is not the JSON this endpoint takes: {e}")))
}

fn open_file(ctx: &Ctx) -> Result<ConfigFile, WriteFailure> {
    ConfigFile::read(ctx.state.store.path()).map_err(WriteFailure::from)
}

fn status_of(text: &str) -> Result<UserStatus, WriteFailure> {
    UserStatus::parse(text).ok_or_else(|| {
        bad_request(format!(
            "status {text:?} is not one of: active, pending, inactive"
        ))
    })
}

fn lifetime(text: Option<&str>, field: &str) -> Result<Option<Duration>, WriteFailure> {
    match text {
        None => Ok(None),
        Some(t) => match parse_duration(t) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            Ok(_) => Err(bad_request(format!(
                "{field}: a key that expires after 0s would never work"
            ))),
            Err(m) => Err(bad_request(format!("{field}: {m}"))),
        },
    }
}

/// A key as the API shows it: by prefix, never more.
pub(super) fn key_json(ctx: &Ctx, k: &KeyEntry, now: i64) -> serde_json::Value {
    serde_json::json!({
        "prefix": k.label(),
        "created": k.created.map(rfc3339),
        "expires": k.expires.map(rfc3339),
        "expired": k.is_expired(now),
        "last_used": last_used(ctx, k).map(rfc3339),
    })
}

pub(super) fn last_used(ctx: &Ctx, k: &KeyEntry) -> Option<i64> {
    let mut digest = [0u8; 32];
    hex::decode_to_slice(&k.sha256, &mut digest).ok()?;
    ctx.state.telemetry.key_usage.last_used(&KeyDigest(digest))
}

pub(super) fn user_json(ctx: &Ctx, u: &UserEntry, now: i64) -> serde_json::Value {
    let (allowed, refused) = ctx.state.telemetry.recent.last_24h(&u.id);
    let mut fields = u.json_fields();
    fields.extend([
        (
            "keys".to_string(),
            serde_json::json!(
                u.keys
                    .iter()
                    .map(|k| key_json(ctx, k, now))
                    .collect::<Vec<_>>()
            ),
        ),
        (
            "last_used".to_string(),
            serde_json::json!(
                u.keys
                    .iter()
                    .filter_map(|k| last_used(ctx, k))
                    .max()
                    .map(rfc3339)
            ),
        ),
        (
            "requests_24h".to_string(),
            serde_json::json!(allowed + refused),
        ),
        ("refusals_24h".to_string(), serde_json::json!(refused)),
    ]);
    serde_json::Value::Object(fields)
}

pub(super) fn request_json(r: &RecentRequest) -> serde_json::Value {
    serde_json::json!({
        "time": rfc3339_ms(r.at_unix_ms),
        "method": r.method.as_str(),
        "path": &*r.path,
        "status": r.status,
        "decision": r.decision,
        "source": r.client.to_string(),
        "key_prefix": r.key_prefix.as_deref(),
        "latency_ms": (r.latency.as_secs_f64() * 1_000_000.0).round() / 1000.0,
        "request_id": r.request_id.to_str().unwrap_or(""),
    })
}

pub(super) fn rfc3339_ms(ms: i64) -> String {
    let seconds = rfc3339(ms.div_euclid(1000));
    match seconds.strip_suffix('Z') {
        Some(s) => format!("{s}.{:03}Z", ms.rem_euclid(1000)),
        None => seconds,
    }
}

fn list_users(ctx: &Ctx) -> ApiResult {
    let file = open_file(ctx)?;
    let now = now_unix();
    let users: Vec<_> = file
        .user_entries()
        .iter()
        .map(|u| user_json(ctx, u, now))
        .collect();
    let r = json_with(
        StatusCode::OK,
        &serde_json::json!({ "users": users, "read_only": crate::config::edit::is_read_only(ctx.state.store.path()) }),
    );
    Ok(with_etag(r, &file.etag()))
}

fn get_user(ctx: &Ctx, id: &str) -> ApiResult {
    let file = open_file(ctx)?;
    let user = file.user_entry(id)?;
    Ok(with_etag(
        json_with(StatusCode::OK, &user_json(ctx, &user, now_unix())),
        &file.etag(),
    ))
}

/// The user as written, after a change, with the new ETag.
fn user_reply(
    ctx: &Ctx,
    status: StatusCode,
    id: &str,
    extra: serde_json::Value,
    etag: &str,
) -> ApiResult {
    let file = open_file(ctx)?;
    let mut doc = serde_json::json!({ "user": user_json(ctx, &file.user_entry(id)?, now_unix()) });
    if let (Some(doc), serde_json::Value::Object(extra)) = (doc.as_object_mut(), extra) {
        doc.extend(extra);
    }
    Ok(with_etag(json_with(status, &doc), etag))
}

fn audit(caller: &Caller, action: &str, user: &str) {
    tracing::info!(admin = caller.admin(), action, user, "admin API change");
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateUser {
    id: String,
    group: String,
    remote_addresses: String,
    display_name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    description: Option<String>,
    status: Option<String>,
    /// The key's lifetime, like "90d"; by default it does not expire.
    key_expires: Option<String>,
    /// Create the user without a key.
    #[serde(default)]
    no_key: bool,
}

async fn create_user(ctx: &Ctx, req: &AdminRequest, caller: &Caller) -> ApiResult {
    let c: CreateUser = body(req)?;
    let user = NewUser {
        status: status_of(c.status.as_deref().unwrap_or("active"))?,
        key: if c.no_key {
            None
        } else {
            Some(lifetime(c.key_expires.as_deref(), "key_expires")?)
        },
        id: c.id,
        group: c.group,
        remote_addresses: c.remote_addresses,
        display_name: c.display_name,
        first_name: c.first_name,
        last_name: c.last_name,
        description: c.description,
    };
    let id = user.id.clone();
    let now = now_unix();
    let written = write::apply(ctx, if_match(req), move |file| {
        edit_users::add_user(file, &user, now)
    })
    .await?;
    audit(caller, "create user", &id);
    let key = written.value.as_ref().map(|k| k.reveal().to_string());
    user_reply(
        ctx,
        StatusCode::CREATED,
        &id,
        serde_json::json!({ "key": key }),
        &written.etag,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchUser {
    status: Option<String>,
    group: Option<String>,
    remote_addresses: Option<String>,
    display_name: Option<String>,
    first_name: Option<String>,
    last_name: Option<String>,
    description: Option<String>,
}

async fn patch_user(ctx: &Ctx, req: &AdminRequest, caller: &Caller, id: &str) -> ApiResult {
    let p: PatchUser = body(req)?;
    let changes = UserChanges {
        status: p.status.as_deref().map(status_of).transpose()?,
        group: p.group,
        remote_addresses: p.remote_addresses,
        display_name: p.display_name,
        first_name: p.first_name,
        last_name: p.last_name,
        description: p.description,
    };
    let owned = id.to_string();
    let written = write::apply(ctx, if_match(req), move |file| {
        edit_users::change_user(file, &owned, &changes)
    })
    .await?;
    audit(caller, "change user", id);
    user_reply(
        ctx,
        StatusCode::OK,
        id,
        serde_json::json!({ "changed": written.value }),
        &written.etag,
    )
}

async fn delete_user(ctx: &Ctx, req: &AdminRequest, caller: &Caller, id: &str) -> ApiResult {
    let owned = id.to_string();
    let written = write::apply(ctx, if_match(req), move |file| {
        edit_users::delete_user(file, &owned)
    })
    .await?;
    audit(caller, "delete user", id);
    Ok(with_etag(
        json_with(
            StatusCode::OK,
            &serde_json::json!({ "deleted": id, "keys_removed": written.value }),
        ),
        &written.etag,
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueKey {
    expires: Option<String>,
}

async fn issue_key(ctx: &Ctx, req: &AdminRequest, caller: &Caller, id: &str) -> ApiResult {
    let k: IssueKey = body(req)?;
    let lifetime = lifetime(k.expires.as_deref(), "expires")?;
    let owned = id.to_string();
    let now = now_unix();
    let written = write::apply(ctx, if_match(req), move |file| {
        edit_users::issue_key(file, &owned, lifetime, now)
    })
    .await?;
    audit(caller, "issue key", id);
    let key = &written.value;
    user_reply(
        ctx,
        StatusCode::CREATED,
        id,
        serde_json::json!({ "key": key.reveal(), "prefix": key.prefix }),
        &written.etag,
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateKey {
    /// How long the old key keeps working; "24h" by default, "0" revokes it at once.
    grace: Option<String>,
    /// Which key, when the user has several valid ones.
    prefix: Option<String>,
    /// The new key's lifetime.
    expires: Option<String>,
}

async fn rotate_key(ctx: &Ctx, req: &AdminRequest, caller: &Caller, id: &str) -> ApiResult {
    let r: RotateKey = body(req)?;
    let grace = parse_duration(r.grace.as_deref().unwrap_or("24h"))
        .map_err(|m| bad_request(format!("grace: {m}")))?;
    let lifetime = lifetime(r.expires.as_deref(), "expires")?;
    let owned = id.to_string();
    let prefix = r.prefix;
    let now = now_unix();
    let written = write::apply(ctx, if_match(req), move |file| {
        edit_users::rotate_key(file, &owned, grace, prefix.as_deref(), lifetime, now)
    })
    .await?;
    audit(caller, "rotate key", id);
    let rotation = &written.value;
    user_reply(
        ctx,
        StatusCode::CREATED,
        id,
        serde_json::json!({
            "key": rotation.key.reveal(),
            "prefix": rotation.key.prefix,
            "old_prefix": rotation.old,
            "old_expires": rotation.old_until.map(rfc3339),
        }),
        &written.etag,
    )
}

async fn revoke_key(
    ctx: &Ctx,
    req: &AdminRequest,
    caller: &Caller,
    id: &str,
    prefix: &str,
) -> ApiResult {
    let owned = id.to_string();
    let prefix = prefix.to_string();
    let now = now_unix();
    let written = write::apply(ctx, if_match(req), move |file| {
        edit_users::revoke_keys(file, &owned, Revoke::Prefix(&prefix), now)
    })
    .await?;
    audit(caller, "revoke key", id);
    user_reply(
        ctx,
        StatusCode::OK,
        id,
        serde_json::json!({ "revoked": written.value }),
        &written.etag,
    )
}

fn user_requests(ctx: &Ctx, id: &str) -> ApiResult {
    let file = open_file(ctx)?;
    file.user(id)?;
    let requests: Vec<_> = ctx
        .state
        .telemetry
        .recent
        .of_user(id)
        .iter()
        .map(request_json)
        .collect();
    Ok(json_with(
        StatusCode::OK,
        &serde_json::json!({ "user": id, "requests": requests }),
    ))
}

fn refusals(ctx: &Ctx) -> AdminResponse {
    let refusals: Vec<_> = ctx
        .state
        .telemetry
        .recent
        .refusals()
        .iter()
        .map(request_json)
        .collect();
    json_with(StatusCode::OK, &serde_json::json!({ "refusals": refusals }))
}

/// Each group as the file writes it: description, permissions, and any other settings (limits).
pub(super) fn group_docs(file: &ConfigFile) -> Vec<serde_json::Value> {
    let Some(groups) = file.doc.get("groups").and_then(|g| g.as_table_like()) else {
        return Vec::new();
    };
    let users = file.user_entries();
    groups
        .iter()
        .map(|(name, item)| {
            let mut doc = serde_json::Map::new();
            doc.insert("name".into(), name.into());
            if let Some(t) = item.as_table_like() {
                for (k, v) in t.iter() {
                    let value = toml_to_json(v);
                    let key = if k == "allow" { "permissions" } else { k };
                    doc.insert(key.into(), value);
                }
            }
            doc.insert(
                "users".into(),
                users.iter().filter(|u| u.group == name).count().into(),
            );
            serde_json::Value::Object(doc)
        })
        .collect()
}

fn groups(ctx: &Ctx) -> ApiResult {
    let file = open_file(ctx)?;
    Ok(with_etag(
        json_with(
            StatusCode::OK,
            &serde_json::json!({ "groups": group_docs(&file) }),
        ),
        &file.etag(),
    ))
}

/// A TOML item as JSON, through its text (the file's own formatting does not matter here).
fn toml_to_json(item: &toml_edit::Item) -> serde_json::Value {
    let text = format!("v = {}", item.to_string().trim());
    match toml::from_str::<toml::Table>(&text) {
        Ok(mut t) => t
            .remove("v")
            .and_then(|v| serde_json::to_value(v).ok())
            .unwrap_or(serde_json::Value::Null),
        Err(_) => serde_json::Value::String(item.to_string().trim().to_string()),
    }
}

/// `%XX` decoded (a user id in a path is percent-encoded); invalid escapes stay as written.
pub(super) fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        char::from(b).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
