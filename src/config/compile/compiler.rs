//! The compiler's state while it walks one file (where it is, for locations, and the errors
//! found so far), and the value checks every part of the file shares.

use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use crate::config::duration::parse_duration;
use crate::config::error::{ConfigError, Locator};

pub(super) struct Compiler<'a> {
    pub(super) loc: &'a Locator<'a>,
    pub(super) errors: Vec<ConfigError>,
}

impl<'a> Compiler<'a> {
    pub(super) fn new(loc: &'a Locator<'a>) -> Compiler<'a> {
        Compiler {
            loc,
            errors: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.loc.error(span, message));
    }

    pub(super) fn duration(
        &mut self,
        value: Option<&Spanned<String>>,
        default: &str,
        nonzero: bool,
    ) -> Duration {
        let fallback = parse_duration(default).expect("defaults are valid durations");
        let Some(v) = value else { return fallback };
        match parse_duration(v.get_ref()) {
            Ok(d) if nonzero && d.is_zero() => {
                self.error(v.span(), "this timeout must be greater than zero");
                fallback
            }
            Ok(d) => d,
            Err(msg) => {
                self.error(v.span(), msg);
                fallback
            }
        }
    }
}
