//! `[server] allow_empty` and `max_user_drop`: the settings of the guard against a file that
//! would serve nothing or lose most users by accident (`config::guard` applies them).

use super::compiler::Compiler;
use crate::config::raw::RawServer;
use crate::snapshot::ConfigGuard;

impl Compiler<'_> {
    pub(super) fn guard(&mut self, raw: &RawServer) -> ConfigGuard {
        let allow_empty = raw.allow_empty.as_ref().is_some_and(|v| *v.get_ref());
        let max_user_drop = match raw.max_user_drop.as_ref() {
            None => None,
            Some(v) if *v.get_ref() > 0.0 && *v.get_ref() <= 1.0 => Some(*v.get_ref()),
            Some(v) => {
                self.error(
                    v.span(),
                    "max_user_drop is the largest share of the users one reload may remove: a number above 0 and at most 1 (0.5: a file that loses more than half of them is refused; 1: any drop; leave it out for no limit)",
                );
                None
            }
        };
        ConfigGuard {
            allow_empty,
            max_user_drop,
        }
    }
}
