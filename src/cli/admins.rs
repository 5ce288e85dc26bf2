//! `apiward admins add | list | delete | set-password | issue-token | revoke-token`: the accounts
//! of the admin listener's console and management API, as edits of the configuration file.

use std::path::Path;

use super::{AdminsCommand, CliError, ListFormat};
use crate::config::edit::admins::{
    add_admin, delete_admin, issue_admin_token, revoke_admin_token, set_admin_password_hash,
};
use crate::config::edit::{self, ConfigFile, edit_file};
use crate::config::reload::now_unix;

pub fn run(config: &Path, command: AdminsCommand) -> Result<(), CliError> {
    match command {
        AdminsCommand::Add { id } => {
            edit_file(config, None, |file| add_admin(file, &id))?;
            eprintln!(
                "created admin {id} in {}: give it a password with `apiward admins set-password {id}` or a token with `apiward admins issue-token {id}`",
                config.display()
            );
            Ok(())
        }
        AdminsCommand::List { format } => list(config, format),
        AdminsCommand::Delete { id } => {
            edit_file(config, None, |file| delete_admin(file, &id))?;
            eprintln!(
                "deleted admin {id}: its sessions and tokens are refused from the next reload on"
            );
            Ok(())
        }
        AdminsCommand::SetPassword { id, generate } => set_password(config, &id, generate),
        AdminsCommand::IssueToken { id } => {
            let now = now_unix();
            let token = edit_file(config, None, |file| issue_admin_token(file, &id, now))?.value;
            eprintln!(
                "issued admin token {}… for {id}; it is printed below, once (use it as `Authorization: Bearer <token>` on the admin listener only)",
                token.prefix
            );
            super::print_secret(
                token.reveal(),
                "token",
                format!(
                    "revoke it with `apiward admins revoke-token {id} --prefix {}`",
                    token.prefix
                ),
            )
        }
        AdminsCommand::RevokeToken { id, prefix } => {
            let label =
                edit_file(config, None, |file| revoke_admin_token(file, &id, &prefix))?.value;
            eprintln!("revoked admin token {label} of {id}; it is refused from the next reload on");
            Ok(())
        }
    }
}

fn list(config: &Path, format: ListFormat) -> Result<(), CliError> {
    let file = ConfigFile::read(config)?;
    let admins = file.admin_entries();
    let date = |t: Option<i64>| t.map(edit::rfc3339);
    match format {
        ListFormat::Json => {
            let doc: Vec<serde_json::Value> = admins
                .iter()
                .map(|a| {
                    serde_json::json!({
                        "id": a.id,
                        "password": a.has_password,
                        "tokens": a.tokens.iter().map(|t| serde_json::json!({
                            "prefix": t.label(),
                            "created": date(t.created),
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
            text.push('\n');
            super::print_listing(&text);
        }
        ListFormat::Table => {
            let width = admins
                .iter()
                .map(|a| a.id.chars().count())
                .max()
                .unwrap_or(0)
                .max(2);
            let mut text = format!("{:width$}  PASSWORD  TOKENS\n", "ID");
            for a in &admins {
                let tokens: Vec<String> = a.tokens.iter().map(|t| t.label()).collect();
                text.push_str(&format!(
                    "{:width$}  {:8}  {}\n",
                    a.id,
                    if a.has_password { "yes" } else { "-" },
                    if tokens.is_empty() {
                        "-".into()
                    } else {
                        tokens.join(",")
                    }
                ));
            }
            super::print_listing(&text);
            if admins.is_empty() {
                eprintln!("no admins yet: create one with `apiward admins add ops@example.org`");
            }
        }
    }
    Ok(())
}

fn set_password(config: &Path, id: &str, generate: bool) -> Result<(), CliError> {
    let file = ConfigFile::read(config)?;
    file.admin(id)?;
    let password = super::users::new_password(id, file.organisation().as_deref(), generate)?;
    let hash = crate::auth::password::hash_password(&password)?;
    edit_file(config, None, |file| {
        set_admin_password_hash(file, id, &hash)
    })?;
    eprintln!("password set for admin {id}: only its Argon2id hash is stored");
    if generate {
        eprintln!("the generated password is printed below, once: hand it over now");
        super::print_secret(
            &password,
            "password",
            format!("run `apiward admins set-password {id} --generate` again"),
        )?;
    }
    Ok(())
}
