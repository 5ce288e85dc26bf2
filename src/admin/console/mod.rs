//! The console pages at `/` on the admin listener: login, the API users list (sorting, filter,
//! 24-hour charts), a user's page (details, keys, recent requests, actions), the add and edit
//! forms, confirmations, groups, and recent refusals. Plain HTML forms, each with the session's
//! CSRF token; every change goes through [`super::write`], like the API's.

mod actions;

use std::fmt::Write as _;

use http::{Method, StatusCode};

use super::context::{AdminRequest, AdminResponse, Ctx};
use super::html::{self, Frame, chart, esc, seg};
use super::session::{self, Caller, LoginOutcome};
use super::write::WriteFailure;
use crate::config::edit::users::UserEntry;
use crate::config::edit::{ConfigFile, is_read_only, rfc3339};
use crate::config::reload::now_unix;

pub(super) async fn handle(ctx: &Ctx, req: &AdminRequest) -> AdminResponse {
    let snapshot = ctx.state.store.load_full();
    let segments: Vec<String> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(super::api::percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if req.method == Method::POST && segments == ["login"] {
        return login(ctx, req).await;
    }
    let caller = match session::identify(&req.headers, &ctx.sessions, &snapshot) {
        Ok(c @ Caller::Session { .. }) => c,
        // The console is for people: a token holder uses /api/v1.
        Ok(Caller::Token { .. }) | Err(_) => {
            return match (&req.method, segments.as_slice()) {
                (&Method::GET, []) => login_page(StatusCode::OK, None),
                (&Method::GET | &Method::HEAD, _) => html::see_other("/", None),
                _ => refused(
                    StatusCode::UNAUTHORIZED,
                    "You are not signed in (or your session expired): nothing was changed.",
                ),
            };
        }
    };
    let form = parse_form(&req.body);
    if req.method == Method::POST && !caller.csrf_ok(field(&form, "csrf")) {
        tracing::warn!(admin = caller.admin(), path = %req.path, peer = %req.peer, "console form refused: missing or wrong CSRF token");
        return refused(
            StatusCode::FORBIDDEN,
            "This form did not carry this session's CSRF token (a cross-site request?): nothing was changed.",
        );
    }
    let page = Page {
        ctx,
        caller: &caller,
        read_only: is_read_only(ctx.state.store.path()),
    };
    let result = match (&req.method, segments.as_slice()) {
        (&Method::GET, []) => page.users(req),
        (&Method::POST, ["logout"]) => Ok(logout(ctx, req)),
        (&Method::GET, ["users", "new"]) => Ok(page.user_form(None, &[], None)),
        (&Method::POST, ["users"]) => page.create(&form).await,
        (&Method::GET, ["users", id]) => page.user(id, None),
        (&Method::GET, ["users", id, "edit"]) => page.edit_form(id),
        (&Method::POST, ["users", id, "edit"]) => page.edit(id, &form).await,
        (&Method::POST, ["users", id, "status"]) => page.set_status(id, &form).await,
        (&Method::POST, ["users", id, "keys"]) => page.issue(id).await,
        (&Method::POST, ["users", id, "rotate"]) => page.rotate(id, &form).await,
        (&Method::GET, ["users", id, "keys", prefix, "revoke"]) => {
            Ok(page.confirm_revoke(id, prefix))
        }
        (&Method::POST, ["users", id, "keys", prefix, "revoke"]) => page.revoke(id, prefix).await,
        (&Method::GET, ["users", id, "delete"]) => Ok(page.confirm_delete(id)),
        (&Method::POST, ["users", id, "delete"]) => page.delete(id).await,
        (&Method::GET, ["groups"]) => page.groups(),
        (&Method::GET, ["refusals"]) => Ok(page.refusals()),
        _ => Ok(page.frame(
            StatusCode::NOT_FOUND,
            "Not found",
            "<h1>Not found</h1><p><a href=\"/\">Back to the API users</a></p>",
        )),
    };
    match result {
        Ok(r) => r,
        Err(f) => page.failure(&f),
    }
}

type PageResult = Result<AdminResponse, WriteFailure>;

fn refused(status: StatusCode, message: &str) -> AdminResponse {
    let frame = Frame {
        title: "Refused",
        admin: None,
        csrf: None,
        read_only: false,
    };
    html::page(
        status,
        &frame,
        &format!(
            "<h1>Refused</h1><p class=\"error\">{}</p><p><a href=\"/\">Sign in</a></p>",
            esc(message)
        ),
    )
}

fn login_page(status: StatusCode, message: Option<&str>) -> AdminResponse {
    let frame = Frame {
        title: "Sign in",
        admin: None,
        csrf: None,
        read_only: false,
    };
    let mut body = String::from("<section class=\"card login\"><h1>Sign in to apiward</h1>");
    if let Some(m) = message {
        let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(m));
    }
    body.push_str(
        "<form method=\"post\" action=\"/login\">\
         <div class=\"field\"><label for=\"id\">Admin id</label><input type=\"text\" id=\"id\" name=\"id\" autocomplete=\"username\" required autofocus></div>\
         <div class=\"field\"><label for=\"password\">Password</label><input type=\"password\" id=\"password\" name=\"password\" autocomplete=\"current-password\" required></div>\
         <button type=\"submit\" class=\"primary\">Sign in</button></form>\
         <p class=\"muted\">Admins are made with <code>apiward admins add</code> and <code>apiward admins set-password</code>.</p></section>",
    );
    html::page(status, &frame, &body)
}

async fn login(ctx: &Ctx, req: &AdminRequest) -> AdminResponse {
    let form = parse_form(&req.body);
    let id = field(&form, "id").unwrap_or("").trim().to_string();
    let password = field(&form, "password").unwrap_or("");
    let snapshot = ctx.state.store.load_full();
    let source = crate::auth::address::canonical(req.peer.ip());
    let outcome = ctx.logins.check(&snapshot, &id, password, source).await;
    ctx.state.telemetry.metrics.admin_login(outcome.as_str());
    match outcome {
        LoginOutcome::Success => match ctx.sessions.open(&id) {
            Ok(cookie) => {
                tracing::info!(admin = %id, peer = %req.peer, "console login");
                html::see_other("/", Some(&session::session_cookie(&cookie, ctx.tls)))
            }
            Err(e) => login_page(StatusCode::INTERNAL_SERVER_ERROR, Some(&e.to_string())),
        },
        LoginOutcome::Failure => {
            tracing::warn!(admin = %id, peer = %req.peer, "console login failed");
            login_page(
                StatusCode::UNAUTHORIZED,
                Some("Wrong admin id or password."),
            )
        }
        LoginOutcome::Throttled => {
            tracing::warn!(admin = %id, peer = %req.peer, "console login throttled after repeated failures");
            login_page(
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many failed attempts for this admin: wait a minute and try again."),
            )
        }
    }
}

fn logout(ctx: &Ctx, req: &AdminRequest) -> AdminResponse {
    if let Some(value) = session::cookie(&req.headers, session::COOKIE_NAME) {
        ctx.sessions.close(value);
    }
    html::see_other("/", Some(&session::cleared_cookie(ctx.tls)))
}

/// `application/x-www-form-urlencoded`, decoded.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let decode = |s: &str| super::api::percent_decode(&s.replace('+', " "));
            (decode(k), decode(v))
        })
        .collect()
}

fn field<'f>(form: &'f [(String, String)], name: &str) -> Option<&'f str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A form field as an optional change: absent stays `None`.
fn text_field(form: &[(String, String)], name: &str) -> Option<String> {
    field(form, name).map(|v| v.trim().to_string())
}

fn query_param(req: &AdminRequest, name: &str) -> Option<String> {
    req.query.as_deref().and_then(|q| {
        parse_form(q.as_bytes())
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    })
}

fn date(t: Option<i64>) -> String {
    t.map_or_else(
        || "—".into(),
        |t| rfc3339(t).replace('T', " ").replace('Z', " UTC"),
    )
}

/// `2026-12-01 18:11` (UTC, to the minute) for a table cell, the whole instant as its tooltip.
fn short_date(t: Option<i64>) -> String {
    match t {
        None => "—".into(),
        Some(t) => {
            let full = rfc3339(t);
            let short = full.get(..16).unwrap_or(&full).replace('T', " ");
            format!(
                "<time class=\"nowrap\" datetime=\"{0}\" title=\"{0}\">{1}</time>",
                esc(&full),
                esc(&short)
            )
        }
    }
}

fn name_of(u: &UserEntry) -> String {
    u.display_name.clone().unwrap_or_else(|| {
        [u.first_name.as_deref(), u.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn badge(status: &str) -> String {
    let class = match status {
        "active" | "pending" | "inactive" => status,
        _ => "inactive",
    };
    format!("<span class=\"badge {class}\">{}</span>", esc(status))
}

struct Page<'a> {
    ctx: &'a Ctx,
    caller: &'a Caller,
    read_only: bool,
}

impl Page<'_> {
    fn csrf(&self) -> &str {
        match self.caller {
            Caller::Session { csrf, .. } => csrf,
            Caller::Token { .. } => "",
        }
    }

    fn csrf_input(&self) -> String {
        format!(
            "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
            esc(self.csrf())
        )
    }

    fn frame(&self, status: StatusCode, title: &str, body: &str) -> AdminResponse {
        let frame = Frame {
            title,
            admin: Some(self.caller.admin()),
            csrf: Some(self.csrf()),
            read_only: self.read_only,
        };
        html::page(status, &frame, body)
    }

    fn failure(&self, f: &WriteFailure) -> AdminResponse {
        self.frame(
            f.status,
            "Not done",
            &format!(
                "<h1>Nothing was changed</h1><p class=\"error\" role=\"alert\">{}</p><p><a href=\"/\">Back to the API users</a></p>",
                esc(&f.message)
            ),
        )
    }

    fn file(&self) -> Result<ConfigFile, WriteFailure> {
        ConfigFile::read(self.ctx.state.store.path()).map_err(WriteFailure::from)
    }

    fn users(&self, req: &AdminRequest) -> PageResult {
        let file = self.file()?;
        let filter = query_param(req, "q").unwrap_or_default();
        let sort = query_param(req, "sort").unwrap_or_else(|| "id".into());
        let needle = filter.to_lowercase();
        let mut users: Vec<(UserEntry, Option<i64>, (u64, u64))> = file
            .user_entries()
            .into_iter()
            .filter(|u| {
                needle.is_empty()
                    || [
                        u.id.as_str(),
                        &name_of(u),
                        &u.group,
                        &u.status,
                        u.description.as_deref().unwrap_or(""),
                    ]
                    .iter()
                    .any(|t| t.to_lowercase().contains(&needle))
                    || u.keys
                        .iter()
                        .any(|k| k.label().to_lowercase().contains(&needle))
            })
            .map(|u| {
                let last = u
                    .keys
                    .iter()
                    .filter_map(|k| super::api::last_used(self.ctx, k))
                    .max();
                let counts = self.ctx.state.telemetry.recent.last_24h(&u.id);
                (u, last, counts)
            })
            .collect();
        match sort.as_str() {
            "name" => users.sort_by_key(|(u, ..)| name_of(u).to_lowercase()),
            "status" => users.sort_by(|a, b| a.0.status.cmp(&b.0.status).then(a.0.id.cmp(&b.0.id))),
            "group" => users.sort_by(|a, b| a.0.group.cmp(&b.0.group).then(a.0.id.cmp(&b.0.id))),
            "last_used" => users.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.id.cmp(&b.0.id))),
            "requests" => users.sort_by(|a, b| {
                (b.2.0 + b.2.1)
                    .cmp(&(a.2.0 + a.2.1))
                    .then(a.0.id.cmp(&b.0.id))
            }),
            _ => users.sort_by(|a, b| a.0.id.cmp(&b.0.id)),
        }
        let now = now_unix();
        let mut body = String::from("<h1>API users</h1><div class=\"toolbar\">");
        let _ = write!(
            body,
            "<form method=\"get\" action=\"/\" role=\"search\"><div><label for=\"q\">Filter</label>\
             <input type=\"search\" id=\"q\" name=\"q\" value=\"{}\" placeholder=\"id, name, group, status, key prefix\"></div>\
             <input type=\"hidden\" name=\"sort\" value=\"{}\"><button type=\"submit\">Filter</button></form>",
            esc(&filter),
            esc(&sort)
        );
        if !self.read_only {
            body.push_str("<a class=\"button primary\" href=\"/users/new\">Add API user</a>");
        }
        body.push_str("</div>");
        let _ = write!(
            body,
            "<p class=\"muted\">{} user(s). <span class=\"legend\"><span class=\"sw a\"></span>allowed <span class=\"sw r\"></span>refused, last 24 h</span></p>",
            users.len()
        );
        let head = |key: &str, label: &str| {
            let marker = if sort == key { " ▾" } else { "" };
            format!(
                "<th scope=\"col\"><a href=\"/?sort={key}&amp;q={}\">{label}{marker}</a></th>",
                esc(&seg(&filter))
            )
        };
        body.push_str("<div class=\"table-wrap\"><table class=\"users\"><thead><tr>");
        body.push_str(&head("id", "ID"));
        body.push_str(&head("name", "Name"));
        body.push_str(&head("status", "Status"));
        body.push_str(&head("group", "Group"));
        body.push_str("<th scope=\"col\">Remote addresses</th><th scope=\"col\">Keys</th>");
        body.push_str(&head("last_used", "Last used (UTC)"));
        body.push_str(&head("requests", "Last 24 h"));
        body.push_str("</tr></thead><tbody>");
        for (u, last, _) in &users {
            let keys: Vec<String> = u
                .keys
                .iter()
                .map(|k| {
                    if k.is_expired(now) {
                        format!(
                            "<code>{}</code> <span class=\"badge expired\">expired</span>",
                            esc(&k.label())
                        )
                    } else {
                        format!("<code>{}</code>", esc(&k.label()))
                    }
                })
                .collect();
            let _ = write!(
                body,
                "<tr><td class=\"id\" data-label=\"ID\"><a href=\"/users/{}\">{}</a></td><td data-label=\"Name\">{}</td>\
                 <td data-label=\"Status\">{}</td><td data-label=\"Group\" class=\"nowrap\">{}</td><td data-label=\"Addresses\" class=\"mono\">{}</td>\
                 <td data-label=\"Keys\">{}</td><td data-label=\"Last used\">{}</td><td data-label=\"Last 24 h\">{}</td></tr>",
                esc(&seg(&u.id)),
                esc(&u.id),
                esc(&name_of(u)),
                badge(&u.status),
                esc(&u.group),
                esc(&u.addresses.join(" ~ ")),
                if keys.is_empty() {
                    "—".into()
                } else {
                    keys.join("<br>")
                },
                short_date(*last),
                chart(&self.ctx.state.telemetry.recent.hours_of_user(&u.id), false),
            );
        }
        if users.is_empty() {
            body.push_str("<tr><td colspan=\"8\" class=\"muted\">No API users match.</td></tr>");
        }
        body.push_str("</tbody></table></div>");
        Ok(self.frame(StatusCode::OK, "API users", &body))
    }

    fn user(&self, id: &str, notice: Option<&str>) -> PageResult {
        let file = self.file()?;
        let u = file.user_entry(id)?;
        let now = now_unix();
        let uid = esc(&seg(&u.id));
        let mut body = format!(
            "<p><a href=\"/\">← API users</a></p><h1>{}</h1>",
            esc(&u.id)
        );
        if let Some(n) = notice {
            let _ = write!(body, "<p class=\"notice\" role=\"status\">{}</p>", esc(n));
        }
        let _ = write!(
            body,
            "<section class=\"card\"><dl class=\"details\"><dt>Status</dt><dd>{}</dd><dt>Display name</dt><dd>{}</dd>\
             <dt>First name</dt><dd>{}</dd><dt>Last name</dt><dd>{}</dd><dt>Description</dt><dd>{}</dd>\
             <dt>Group</dt><dd><a href=\"/groups\">{}</a></dd><dt>Remote addresses</dt><dd class=\"mono\">{}</dd>\
             <dt>Password (Basic auth)</dt><dd>{}</dd></dl></section>",
            badge(&u.status),
            esc(u.display_name.as_deref().unwrap_or("—")),
            esc(u.first_name.as_deref().unwrap_or("—")),
            esc(u.last_name.as_deref().unwrap_or("—")),
            esc(u.description.as_deref().unwrap_or("—")),
            esc(&u.group),
            esc(&u.addresses.join(" ~ ")),
            if u.has_password { "set" } else { "none" },
        );
        if !self.read_only {
            let csrf = self.csrf_input();
            let (next, label) = if u.status == "active" {
                ("inactive", "Disable")
            } else {
                ("active", "Enable")
            };
            let _ = write!(
                body,
                "<section class=\"actions\" aria-label=\"Actions\"><a class=\"button\" href=\"/users/{uid}/edit\">Edit</a>\
                 <form method=\"post\" action=\"/users/{uid}/status\">{csrf}<input type=\"hidden\" name=\"status\" value=\"{next}\">\
                 <button type=\"submit\">{label}</button></form>\
                 <form method=\"post\" action=\"/users/{uid}/keys\">{csrf}<button type=\"submit\">Issue another key</button></form>\
                 <a class=\"button danger\" href=\"/users/{uid}/delete\">Delete</a></section>"
            );
        }
        body.push_str("<h2>Keys</h2><div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Prefix</th><th scope=\"col\">Created</th><th scope=\"col\">Expires</th><th scope=\"col\">Last used</th><th scope=\"col\"><span class=\"muted\">Action</span></th></tr></thead><tbody>");
        for k in &u.keys {
            let label = k.label();
            let _ = write!(
                body,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&label),
                if k.is_expired(now) {
                    " <span class=\"badge expired\">expired</span>"
                } else {
                    ""
                },
                esc(&date(k.created)),
                esc(&k.expires.map_or_else(|| "never".into(), |t| date(Some(t)))),
                esc(&date(super::api::last_used(self.ctx, k))),
                if self.read_only {
                    String::new()
                } else {
                    format!(
                        "<a href=\"/users/{uid}/keys/{}/revoke\">Revoke</a>",
                        esc(&seg(&label))
                    )
                },
            );
        }
        if u.keys.is_empty() {
            body.push_str("<tr><td colspan=\"5\" class=\"muted\">No keys.</td></tr>");
        }
        body.push_str("</tbody></table></div>");
        let live: Vec<String> = u
            .keys
            .iter()
            .filter(|k| !k.is_expired(now))
            .map(|k| k.label())
            .collect();
        if !self.read_only && !live.is_empty() {
            let _ = write!(
                body,
                "<form method=\"post\" action=\"/users/{uid}/rotate\" class=\"card actions\">{}\
                 <div class=\"field\"><label for=\"rotate-prefix\">Key to rotate</label><select id=\"rotate-prefix\" name=\"prefix\">{}</select></div>\
                 <div class=\"field\"><label for=\"grace\">Old key keeps working for</label><select id=\"grace\" name=\"grace\">\
                 <option value=\"0\">0 (refused at once)</option><option value=\"1h\">1 hour</option><option value=\"24h\" selected>24 hours</option><option value=\"7d\">7 days</option></select></div>\
                 <button type=\"submit\">Rotate key</button></form>",
                self.csrf_input(),
                live.iter()
                    .map(|l| format!("<option value=\"{0}\">{0}</option>", esc(l)))
                    .collect::<String>(),
            );
        }
        let _ = write!(
            body,
            "<h2>Last 24 hours</h2><p class=\"legend\"><span class=\"sw a\"></span>allowed <span class=\"sw r\"></span>refused (per hour, UTC)</p>{}",
            chart(&self.ctx.state.telemetry.recent.hours_of_user(&u.id), true)
        );
        body.push_str("<h2>Recent requests</h2><div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Method</th><th scope=\"col\">Path</th><th scope=\"col\">Status</th><th scope=\"col\">Decision</th><th scope=\"col\">Source</th><th scope=\"col\">Key</th><th scope=\"col\">Latency</th><th scope=\"col\">Request id</th></tr></thead><tbody>");
        let recent = self.ctx.state.telemetry.recent.of_user(&u.id);
        for r in &recent {
            push_request_row(&mut body, r);
        }
        if recent.is_empty() {
            body.push_str("<tr><td colspan=\"9\" class=\"muted\">No requests since the gateway started.</td></tr>");
        }
        body.push_str("</tbody></table></div>");
        Ok(self.frame(StatusCode::OK, &u.id, &body))
    }

    fn groups(&self) -> PageResult {
        let file = self.file()?;
        let mut body = String::from(
            "<h1>Groups</h1><p class=\"muted\">What each group may do, as the file says (read only: edit the file to change them).</p>",
        );
        for g in super::api::group_docs(&file) {
            let name = g["name"].as_str().unwrap_or("");
            let _ = write!(body, "<section class=\"card\"><h2>{}</h2>", esc(name));
            if let Some(d) = g["description"].as_str() {
                let _ = write!(body, "<p>{}</p>", esc(d));
            }
            let _ = write!(
                body,
                "<p class=\"muted\">{} user(s)</p>",
                g["users"].as_u64().unwrap_or(0)
            );
            body.push_str("<div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Path</th><th scope=\"col\">Verbs</th></tr></thead><tbody>");
            for p in g["permissions"].as_array().into_iter().flatten() {
                let verbs: Vec<&str> = p["verbs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str())
                    .collect();
                let _ = write!(
                    body,
                    "<tr><td><code>{}</code></td><td>{}</td></tr>",
                    esc(p["path"].as_str().unwrap_or("")),
                    esc(&verbs.join(", "))
                );
            }
            body.push_str("</tbody></table></div>");
            for (k, v) in g.as_object().into_iter().flatten() {
                if !["name", "description", "permissions", "users"].contains(&k.as_str()) {
                    let _ = write!(
                        body,
                        "<p><strong>{}</strong>: <code>{}</code></p>",
                        esc(k),
                        esc(&v.to_string())
                    );
                }
            }
            body.push_str("</section>");
        }
        Ok(self.frame(StatusCode::OK, "Groups", &body))
    }

    fn refusals(&self) -> AdminResponse {
        let mut body = String::from(
            "<h1>Recent refusals of non-users</h1><p class=\"muted\">Callers the gateway could not tie to an API user (no key, unknown key), newest first.</p><div class=\"table-wrap\"><table><thead><tr><th scope=\"col\">Time</th><th scope=\"col\">Method</th><th scope=\"col\">Path</th><th scope=\"col\">Status</th><th scope=\"col\">Decision</th><th scope=\"col\">Source</th><th scope=\"col\">Key</th><th scope=\"col\">Latency</th><th scope=\"col\">Request id</th></tr></thead><tbody>",
        );
        let refusals = self.ctx.state.telemetry.recent.refusals();
        for r in &refusals {
            push_request_row(&mut body, r);
        }
        if refusals.is_empty() {
            body.push_str(
                "<tr><td colspan=\"9\" class=\"muted\">None since the gateway started.</td></tr>",
            );
        }
        body.push_str("</tbody></table></div>");
        self.frame(StatusCode::OK, "Refusals", &body)
    }
}

fn push_request_row(body: &mut String, r: &crate::observe::recent::RecentRequest) {
    let _ = write!(
        body,
        "<tr><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td>{}</td><td>{}</td><td class=\"mono\">{}</td><td><code>{}</code></td><td>{:.1} ms</td><td class=\"mono\">{}</td></tr>",
        esc(&super::api::rfc3339_ms(r.at_unix_ms).replace('T', " ")),
        esc(r.method.as_str()),
        esc(&r.path),
        r.status,
        esc(r.decision),
        esc(&r.client.to_string()),
        esc(r.key_prefix.as_deref().unwrap_or("—")),
        r.latency.as_secs_f64() * 1000.0,
        esc(r.request_id.to_str().unwrap_or("")),
    );
}
