//! A group's `allow` and `shadow_allow` lists: path patterns and verbs, compiled into the
//! permissions `auth::decide` checks.

use toml::Spanned;

use super::Compiler;
use crate::auth::permission::{PathPattern, Permission, VerbSet};
use crate::config::raw::{RawGroup, RawPermission};

impl Compiler<'_> {
    /// One list of permissions; an entry with a bad pattern is reported and left out.
    pub(super) fn permissions(&mut self, list: &[Spanned<RawPermission>]) -> Box<[Permission]> {
        let mut permissions = Vec::with_capacity(list.len());
        for perm in list {
            let perm = perm.get_ref();
            let pattern = match PathPattern::parse(perm.path.get_ref()) {
                Ok(p) => p,
                Err(msg) => {
                    self.error(perm.path.span(), msg);
                    continue;
                }
            };
            let mut verbs = VerbSet::default();
            for verb in &perm.verbs {
                match VerbSet::parse_verb(verb.get_ref()) {
                    Ok(v) => verbs.insert(v),
                    Err(msg) => self.error(verb.span(), msg),
                }
            }
            permissions.push(Permission { pattern, verbs });
        }
        permissions.into_boxed_slice()
    }

    /// `shadow_allow`: the stricter rules to try beside `allow`. Left out, there are none; an
    /// empty list is a shadow that would refuse everything (meant when a group is to go).
    pub(super) fn shadow_allow(&mut self, group: &RawGroup) -> Option<Box<[Permission]>> {
        let list = group.shadow_allow.as_ref()?;
        Some(self.permissions(list.get_ref()))
    }
}
