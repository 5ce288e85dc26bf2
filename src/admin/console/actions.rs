//! The console's changes: the add and edit forms, the page that shows a new key once, status,
//! issue, rotate, the revoke and delete confirmations and what they do. Each change goes through
//! [`super::super::write`], like the API's.

use std::fmt::Write as _;
use std::time::Duration;

use http::StatusCode;

use super::super::context::AdminResponse;
use super::super::html::{self, esc, seg};
use super::super::write::{self, WriteFailure};
use super::{Page, PageResult, date, field, text_field};
use crate::config::duration::parse_duration;
use crate::config::edit::users::{self as edit_users, NewUser, Revoke, UserChanges, UserEntry};
use crate::config::reload::now_unix;
use crate::snapshot::UserStatus;

impl Page<'_> {
    pub(super) fn user_form(
        &self,
        user: Option<&UserEntry>,
        groups: &[String],
        error: Option<&str>,
    ) -> AdminResponse {
        let groups: Vec<String> = if groups.is_empty() {
            self.file().map(|f| f.group_names()).unwrap_or_default()
        } else {
            groups.to_vec()
        };
        let (title, action) = match user {
            Some(u) => (
                format!("Edit {}", u.id),
                format!("/users/{}/edit", seg(&u.id)),
            ),
            None => ("Add API user".to_string(), "/users".to_string()),
        };
        let value = |f: fn(&UserEntry) -> Option<String>| user.and_then(f).unwrap_or_default();
        let mut body = format!(
            "<p><a href=\"/\">← API users</a></p><h1>{}</h1>",
            esc(&title)
        );
        if let Some(e) = error {
            let _ = write!(body, "<p class=\"error\" role=\"alert\">{}</p>", esc(e));
        }
        let _ = write!(
            body,
            "<form method=\"post\" action=\"{}\" class=\"card\">{}",
            esc(&action),
            self.csrf_input()
        );
        if user.is_none() {
            body.push_str("<div class=\"field\"><label for=\"id\">Id <span class=\"hint\">email-shaped, like crm-sync@example.org (need not be a real mailbox)</span></label><input type=\"text\" id=\"id\" name=\"id\" required></div>");
        }
        for (name, label, current) in [
            (
                "display_name",
                "Display name",
                value(|u| u.display_name.clone()),
            ),
            ("first_name", "First name", value(|u| u.first_name.clone())),
            ("last_name", "Last name", value(|u| u.last_name.clone())),
            (
                "description",
                "Description",
                value(|u| u.description.clone()),
            ),
        ] {
            let _ = write!(
                body,
                "<div class=\"field\"><label for=\"{name}\">{label}</label><input type=\"text\" id=\"{name}\" name=\"{name}\" value=\"{}\"></div>",
                esc(&current)
            );
        }
        let _ = write!(
            body,
            "<div class=\"field\"><label for=\"remote_addresses\">Remote addresses <span class=\"hint\">'~'-separated addresses and CIDR blocks, or * for any source</span></label>\
             <input type=\"text\" id=\"remote_addresses\" name=\"remote_addresses\" class=\"mono\" required value=\"{}\"></div>",
            esc(&user.map(|u| u.addresses.join("~")).unwrap_or_default())
        );
        let current_group = user.map(|u| u.group.clone()).unwrap_or_default();
        body.push_str("<div class=\"field\"><label for=\"group\">Group</label><select id=\"group\" name=\"group\">");
        for g in &groups {
            let _ = write!(
                body,
                "<option value=\"{0}\"{1}>{0}</option>",
                esc(g),
                if *g == current_group { " selected" } else { "" }
            );
        }
        body.push_str("</select></div>");
        let current_status = user.map_or("active", |u| u.status.as_str());
        body.push_str("<div class=\"field\"><label for=\"status\">Status</label><select id=\"status\" name=\"status\">");
        for s in ["active", "pending", "inactive"] {
            let _ = write!(
                body,
                "<option value=\"{s}\"{}>{s}</option>",
                if s == current_status { " selected" } else { "" }
            );
        }
        body.push_str("</select></div>");
        if user.is_none() {
            body.push_str("<div class=\"field\"><label for=\"key_expires\">Key expires after <span class=\"hint\">like 90d; empty: never</span></label><input type=\"text\" id=\"key_expires\" name=\"key_expires\"></div>");
        }
        let _ = write!(
            body,
            "<button type=\"submit\" class=\"primary\">{}</button></form>",
            if user.is_some() { "Save" } else { "Add user" }
        );
        self.frame(StatusCode::OK, &title, &body)
    }

    /// The page that shows a new key, once.
    pub(super) fn key_page(&self, id: &str, key: &str, prefix: &str, note: &str) -> AdminResponse {
        let body = format!(
            "<p><a href=\"/users/{uid}\">← {id}</a></p><h1>New key for {id}</h1><p class=\"notice\" role=\"status\">{note}</p>\
             <section class=\"card\"><p><strong>Copy it now: it is shown this once.</strong> The file keeps only its digest and its prefix <code>{prefix}</code>.</p>\
             <div class=\"secret\"><code id=\"new-key\">{key}</code><button type=\"button\" data-copy=\"new-key\" hidden>Copy</button></div></section>\
             <p><a class=\"button\" href=\"/users/{uid}\">Done</a></p>",
            uid = esc(&seg(id)),
            id = esc(id),
            note = esc(note),
            prefix = esc(prefix),
            key = esc(key),
        );
        self.frame(StatusCode::OK, "New key", &body)
    }

    pub(super) async fn create(&self, form: &[(String, String)]) -> PageResult {
        let status = UserStatus::parse(field(form, "status").unwrap_or("active"))
            .unwrap_or(UserStatus::Active);
        let lifetime = match field(form, "key_expires")
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            None => None,
            Some(t) => match parse_duration(t) {
                Ok(d) if !d.is_zero() => Some(d),
                _ => {
                    return Ok(self.user_form(
                        None,
                        &[],
                        Some(&format!(
                            "Key expires after: {t:?} is not a duration like 90d"
                        )),
                    ));
                }
            },
        };
        let user = NewUser {
            id: text_field(form, "id").unwrap_or_default(),
            group: text_field(form, "group").unwrap_or_default(),
            remote_addresses: text_field(form, "remote_addresses").unwrap_or_default(),
            display_name: text_field(form, "display_name"),
            first_name: text_field(form, "first_name"),
            last_name: text_field(form, "last_name"),
            description: text_field(form, "description"),
            status,
            key: Some(lifetime),
        };
        let id = user.id.clone();
        let now = now_unix();
        match write::apply(self.ctx, None, move |file| {
            edit_users::add_user(file, &user, now)
        })
        .await
        {
            Ok(written) => {
                tracing::info!(admin = self.caller.admin(), user = %id, "console: created user");
                match written.value {
                    Some(key) => Ok(self.key_page(
                        &id,
                        key.reveal(),
                        &key.prefix,
                        "The API user was created. Hand its key to the integration now.",
                    )),
                    None => self.user(&id, Some("Created.")),
                }
            }
            Err(f)
                if f.status == StatusCode::UNPROCESSABLE_ENTITY
                    || f.status == StatusCode::CONFLICT =>
            {
                Ok(self.user_form(None, &[], Some(&f.message)))
            }
            Err(f) => Err(f),
        }
    }

    pub(super) fn edit_form(&self, id: &str) -> PageResult {
        let file = self.file()?;
        let u = file.user_entry(id)?;
        Ok(self.user_form(Some(&u), &file.group_names(), None))
    }

    pub(super) async fn edit(&self, id: &str, form: &[(String, String)]) -> PageResult {
        let changes = UserChanges {
            status: field(form, "status").and_then(UserStatus::parse),
            group: text_field(form, "group"),
            remote_addresses: text_field(form, "remote_addresses"),
            display_name: text_field(form, "display_name"),
            first_name: text_field(form, "first_name"),
            last_name: text_field(form, "last_name"),
            description: text_field(form, "description"),
        };
        let owned = id.to_string();
        match write::apply(self.ctx, None, move |file| {
            edit_users::change_user(file, &owned, &changes)
        })
        .await
        {
            Ok(_) => {
                tracing::info!(admin = self.caller.admin(), user = %id, "console: changed user");
                Ok(html::see_other(&format!("/users/{}", seg(id)), None))
            }
            Err(f) if f.status == StatusCode::UNPROCESSABLE_ENTITY => {
                let file = self.file()?;
                let u = file.user_entry(id)?;
                Ok(self.user_form(Some(&u), &file.group_names(), Some(&f.message)))
            }
            Err(f) => Err(f),
        }
    }

    pub(super) async fn set_status(&self, id: &str, form: &[(String, String)]) -> PageResult {
        let status =
            UserStatus::parse(field(form, "status").unwrap_or("")).ok_or_else(|| WriteFailure {
                status: StatusCode::BAD_REQUEST,
                code: "bad_request",
                message: "status must be active, pending or inactive".into(),
            })?;
        let owned = id.to_string();
        let changes = UserChanges {
            status: Some(status),
            ..UserChanges::default()
        };
        write::apply(self.ctx, None, move |file| {
            edit_users::change_user(file, &owned, &changes)
        })
        .await?;
        tracing::info!(admin = self.caller.admin(), user = %id, status = status.as_str(), "console: set status");
        self.user(id, Some(&format!("Status set to {}.", status.as_str())))
    }

    pub(super) async fn issue(&self, id: &str) -> PageResult {
        let owned = id.to_string();
        let now = now_unix();
        let key = write::apply(self.ctx, None, move |file| {
            edit_users::issue_key(file, &owned, None, now)
        })
        .await?
        .value;
        tracing::info!(admin = self.caller.admin(), user = %id, prefix = %key.prefix, "console: issued key");
        Ok(self.key_page(
            id,
            key.reveal(),
            &key.prefix,
            "A new key was issued; the other keys keep working.",
        ))
    }

    pub(super) async fn rotate(&self, id: &str, form: &[(String, String)]) -> PageResult {
        let grace: Duration =
            parse_duration(field(form, "grace").unwrap_or("24h")).map_err(|m| WriteFailure {
                status: StatusCode::BAD_REQUEST,
                code: "bad_request",
                message: format!("grace: {m}"),
            })?;
        let prefix = text_field(form, "prefix").filter(|p| !p.is_empty());
        let owned = id.to_string();
        let now = now_unix();
        let rotation = write::apply(self.ctx, None, move |file| {
            edit_users::rotate_key(file, &owned, grace, prefix.as_deref(), None, now)
        })
        .await?
        .value;
        tracing::info!(admin = self.caller.admin(), user = %id, old = %rotation.old, "console: rotated key");
        let note = match rotation.old_until {
            Some(t) => format!(
                "Key {} keeps working until {}, then it is refused.",
                rotation.old,
                date(Some(t))
            ),
            None => format!("Key {} was revoked at once.", rotation.old),
        };
        Ok(self.key_page(id, rotation.key.reveal(), &rotation.key.prefix, &note))
    }

    pub(super) fn confirm_revoke(&self, id: &str, prefix: &str) -> AdminResponse {
        let body = format!(
            "<p><a href=\"/users/{uid}\">← {id}</a></p><h1>Revoke key {prefix} of {id}?</h1>\
             <p class=\"error\">Every integration using this key fails at once: its requests are refused with 401 from now on.</p>\
             <form method=\"post\" action=\"/users/{uid}/keys/{pseg}/revoke\" class=\"actions\">{csrf}\
             <button type=\"submit\" class=\"danger\">Revoke the key</button><a class=\"button\" href=\"/users/{uid}\">Cancel</a></form>",
            uid = esc(&seg(id)),
            id = esc(id),
            prefix = esc(prefix),
            pseg = esc(&seg(prefix)),
            csrf = self.csrf_input(),
        );
        self.frame(StatusCode::OK, "Revoke key", &body)
    }

    pub(super) async fn revoke(&self, id: &str, prefix: &str) -> PageResult {
        let owned = id.to_string();
        let p = prefix.to_string();
        let now = now_unix();
        write::apply(self.ctx, None, move |file| {
            edit_users::revoke_keys(file, &owned, Revoke::Prefix(&p), now)
        })
        .await?;
        tracing::info!(admin = self.caller.admin(), user = %id, prefix, "console: revoked key");
        self.user(id, Some(&format!("Key {prefix} was revoked.")))
    }

    pub(super) fn confirm_delete(&self, id: &str) -> AdminResponse {
        let body = format!(
            "<p><a href=\"/users/{uid}\">← {id}</a></p><h1>Delete API user {id}?</h1>\
             <p class=\"error\">The user and all its keys are removed from the file: its integrations fail at once.</p>\
             <form method=\"post\" action=\"/users/{uid}/delete\" class=\"actions\">{csrf}\
             <button type=\"submit\" class=\"danger\">Delete the user</button><a class=\"button\" href=\"/users/{uid}\">Cancel</a></form>",
            uid = esc(&seg(id)),
            id = esc(id),
            csrf = self.csrf_input(),
        );
        self.frame(StatusCode::OK, "Delete user", &body)
    }

    pub(super) async fn delete(&self, id: &str) -> PageResult {
        let owned = id.to_string();
        write::apply(self.ctx, None, move |file| {
            edit_users::delete_user(file, &owned)
        })
        .await?;
        tracing::info!(admin = self.caller.admin(), user = %id, "console: deleted user");
        Ok(html::see_other("/", None))
    }
}
