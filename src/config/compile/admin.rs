//! The admin side of the file: `[admins.*]` accounts and tokens, and the console's `[server]`
//! settings (`admin_hosts`, `admin_session_idle`, the recent-requests ring sizes).

use std::sync::Arc;

use toml::Spanned;

use super::checks::{check_user_id, parse_digest};
use super::compiler::Compiler;
use crate::config::raw::{RawConfig, RawServer};
use crate::snapshot::{AdminAccount, AdminToken, ConsoleSettings, DigestMap, KeyPrefix, KeyTable};

/// Recent requests kept per API user unless `recent_requests_per_user` says otherwise.
pub const DEFAULT_RECENT_PER_USER: usize = 50;
/// Recent refusals of non-users kept unless `recent_refusals` says otherwise.
pub const DEFAULT_RECENT_REFUSALS: usize = 500;

impl Compiler<'_> {
    pub(super) fn admins(
        &mut self,
        raw: &RawConfig,
        user_keys: &KeyTable,
    ) -> (Box<[AdminAccount]>, DigestMap<u32>) {
        let mut admins = Vec::with_capacity(raw.admins.len());
        let mut tokens: DigestMap<u32> = DigestMap::default();
        // `raw.admins` is a BTreeMap, so the accounts come out sorted by id.
        for (id, admin) in &raw.admins {
            let errors_before = self.errors.len();
            if let Err(msg) = check_user_id(id.get_ref()) {
                self.error(id.span(), msg.replace("user id", "admin id"));
            }
            let a = admin.get_ref();
            if let Some(hash) = &a.password_hash
                && let Err(msg) = crate::auth::password::check_password_hash(hash.get_ref())
            {
                self.error(
                    hash.span(),
                    msg.replace("apiward users set-password", "apiward admins set-password"),
                );
            }
            let index = admins.len() as u32;
            let mut own = Vec::with_capacity(a.tokens.len());
            for token in &a.tokens {
                let t = token.get_ref();
                if t.sha256
                    .get_ref()
                    .starts_with(crate::keys::ADMIN_TOKEN_MARKER)
                {
                    self.error(
                        t.sha256.span(),
                        "this looks like an admin token, not its digest: remove it from the file and issue a new one with `apiward admins issue-token`",
                    );
                    continue;
                }
                let digest = match parse_digest(t.sha256.get_ref()) {
                    Ok(d) => d,
                    Err(msg) => {
                        self.error(t.sha256.span(), msg);
                        continue;
                    }
                };
                if let Some(prefix) = &t.prefix
                    && prefix.get_ref().len() > KeyPrefix::MAX
                {
                    self.error(prefix.span(), "a token prefix is at most 16 characters: it identifies the token, it must not reveal it");
                }
                if tokens.contains_key(&digest) || user_keys.contains_key(&digest) {
                    self.error(
                        t.sha256.span(),
                        "this digest is already used by another token or an API user's key: every token must be unique, issue a new one",
                    );
                    continue;
                }
                tokens.insert(digest, index);
                own.push(AdminToken {
                    digest,
                    prefix: t.prefix.as_ref().and_then(|p| KeyPrefix::new(p.get_ref())),
                    created: t.created.as_ref().and_then(|d| self.datetime(d)),
                });
            }
            if self.errors.len() != errors_before {
                continue;
            }
            admins.push(AdminAccount {
                id: Arc::from(id.get_ref().as_str()),
                password_hash: a
                    .password_hash
                    .as_ref()
                    .map(|h| h.get_ref().as_str().into()),
                tokens: own.into_boxed_slice(),
            });
        }
        (admins.into_boxed_slice(), tokens)
    }

    pub(super) fn console(&mut self, raw: &RawServer) -> ConsoleSettings {
        let mut admin_hosts = Vec::new();
        for host in raw.admin_hosts.iter().flatten() {
            let name = host.get_ref().trim().to_ascii_lowercase();
            if name.is_empty()
                || name.contains(['/', '@', ' ', '*'])
                || name.chars().any(|c| c.is_control())
            {
                self.error(
                    host.span(),
                    "admin_hosts lists host names the admin listener is reached by, like \"apiward-admin.internal\" (no scheme, path or wildcard)",
                );
                continue;
            }
            admin_hosts.push(name);
        }
        let session_idle = self.duration(raw.admin_session_idle.as_ref(), "30m", true);
        let recent_requests_per_user = self.ring_size(
            raw.recent_requests_per_user.as_ref(),
            DEFAULT_RECENT_PER_USER,
            "recent_requests_per_user",
        );
        let recent_refusals = self.ring_size(
            raw.recent_refusals.as_ref(),
            DEFAULT_RECENT_REFUSALS,
            "recent_refusals",
        );
        ConsoleSettings {
            admin_hosts: admin_hosts.into_boxed_slice(),
            session_idle,
            recent_requests_per_user,
            recent_refusals,
        }
    }

    fn ring_size(&mut self, value: Option<&Spanned<i64>>, default: usize, field: &str) -> usize {
        match value {
            None => default,
            Some(v) if (0..=10_000).contains(v.get_ref()) => *v.get_ref() as usize,
            Some(v) => {
                self.error(
                    v.span(),
                    format!(
                        "{field} is how many recent requests are kept in memory: 0 (none) to 10000"
                    ),
                );
                default
            }
        }
    }
}
