//! The whole-file check behind `compile`'s slow path: every unknown field is reported (with the
//! field that was probably meant) and removed, so that the rest of the file is still checked
//! instead of serde stopping at the first typo.
//!
//! The known fields are those of the raw serde types themselves, read from their derived
//! `Deserialize` impls, so this list can never drift from what the parser accepts.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::raw::{
    RawAdmin, RawAdminToken, RawConfig, RawEject, RawGroup, RawHealthCheck, RawKey, RawPermission,
    RawQuota, RawRateLimit, RawRateLimits, RawRoute, RawServer, RawTarget, RawUpstream, RawUser,
};

/// One problem: where (if it is at one place), and what.
pub type Problem = (Option<Range<usize>>, String);

/// How many values of the wrong type are reported before the rest is left to the next run.
const MAX_TYPE_ERRORS: usize = 50;

/// Parses `text`, reporting every unknown field and every value of the wrong type (each is set
/// aside and the rest read again); the config is `Some` when nothing but unknown fields was wrong.
pub fn parse_reporting_all(text: &str) -> (Option<RawConfig>, Vec<Problem>) {
    let mut root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => return (None, vec![problem(&e)]),
    };
    let mut problems = Vec::new();
    prune(root.get_mut(), Kind::Root, "the top level", &mut problems);
    // What was set aside: the key, and the span of the table it was in.
    let mut set_aside: Vec<(String, Range<usize>)> = Vec::new();
    let mut raw = None;
    for _ in 0..MAX_TYPE_ERRORS {
        match RawConfig::deserialize(toml::de::Deserializer::from(root.clone())) {
            Ok(r) => {
                // Set-aside values were errors: the file is not accepted, but what else is
                // wrong in it (addresses, references) is still worth checking.
                raw = Some(r);
                break;
            }
            Err(e) => {
                // A required field set aside for its type is not missing as well; its table is
                // then set aside whole, and the rest read on.
                let missing_set_aside = set_aside.iter().any(|(name, table)| {
                    e.span().as_ref() == Some(table)
                        && e.message().starts_with(&format!("missing field `{name}`"))
                });
                if !missing_set_aside {
                    problems.push(problem(&e));
                }
                let whole = root.span();
                match e
                    .span()
                    .and_then(|span| remove_value_at(root.get_mut(), whole, span.start))
                {
                    Some(name) => set_aside.push(name),
                    None => break,
                }
            }
        }
    }
    if !set_aside.is_empty() {
        raw = None;
    }
    problems.sort_by_key(|(span, _)| span.as_ref().map_or(0, |s| s.start));
    (raw, problems)
}

/// Removes the innermost `key = value` whose value holds byte `at` (the value serde refused),
/// or the table whose header or inline braces start there (a table serde found incomplete), and
/// gives its key; `None` when nothing is there. Tables defined by a `[header]` span only their
/// header, so every table is searched, not only the one whose span holds `at`.
fn remove_value_at(
    table: &mut DeTable<'_>,
    span: Range<usize>,
    at: usize,
) -> Option<(String, Range<usize>)> {
    let mut found = None;
    for (key, value) in table.iter_mut() {
        let holds = value.span().contains(&at) || key.span().contains(&at);
        let value_span = value.span();
        let inner = match value.get_mut() {
            DeValue::Table(t) => remove_value_at(t, value_span, at),
            DeValue::Array(items) => items.iter_mut().find_map(|item| {
                let item_span = item.span();
                match item.get_mut() {
                    DeValue::Table(t) => remove_value_at(t, item_span, at),
                    _ => None,
                }
            }),
            _ => None,
        };
        if inner.is_some() {
            return inner;
        }
        if holds {
            found = Some(key.clone());
            break;
        }
    }
    let key = found?;
    table.remove(&key);
    Some((key.get_ref().to_string(), span))
}

fn problem(e: &toml::de::Error) -> Problem {
    (e.span(), e.message().trim_end().to_string())
}

/// The kinds of table in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Root,
    Server,
    Upstream,
    Route,
    Group,
    Permission,
    User,
    Key,
    Admin,
    AdminToken,
    RateLimits,
    RateLimit,
    Quota,
    Target,
    HealthCheck,
    Eject,
}

/// What a field holds when it holds tables of a known kind.
enum Holds {
    One(Kind, &'static str),
    /// `[upstreams.NAME]`, `[groups.NAME]`, `[users."ID"]`.
    Named(Kind, &'static str),
    List(Kind, &'static str),
}

impl Kind {
    fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Root => fields_of::<RawConfig>(),
            Kind::Server => fields_of::<RawServer>(),
            Kind::Upstream => fields_of::<RawUpstream>(),
            Kind::Route => fields_of::<RawRoute>(),
            Kind::Group => fields_of::<RawGroup>(),
            Kind::Permission => fields_of::<RawPermission>(),
            Kind::User => fields_of::<RawUser>(),
            Kind::Key => fields_of::<RawKey>(),
            Kind::Admin => fields_of::<RawAdmin>(),
            Kind::AdminToken => fields_of::<RawAdminToken>(),
            Kind::RateLimits => fields_of::<RawRateLimits>(),
            Kind::RateLimit => fields_of::<RawRateLimit>(),
            Kind::Quota => fields_of::<RawQuota>(),
            Kind::Target => fields_of::<RawTarget>(),
            Kind::HealthCheck => fields_of::<RawHealthCheck>(),
            Kind::Eject => fields_of::<RawEject>(),
        }
    }

    fn holds(self, field: &str) -> Option<Holds> {
        Some(match (self, field) {
            (Kind::Root, "server") => Holds::One(Kind::Server, "[server]"),
            (Kind::Root, "upstreams") => Holds::Named(Kind::Upstream, "upstreams"),
            (Kind::Root, "groups") => Holds::Named(Kind::Group, "groups"),
            (Kind::Root, "users") => Holds::Named(Kind::User, "users"),
            (Kind::Root, "routes") => Holds::List(Kind::Route, "[[routes]]"),
            (Kind::Group, "allow") => Holds::List(Kind::Permission, "a group's allow entry"),
            (Kind::Group, "shadow_allow") => {
                Holds::List(Kind::Permission, "a group's shadow_allow entry")
            }
            (Kind::User, "keys") => Holds::List(Kind::Key, "a user's key"),
            (Kind::Root, "admins") => Holds::Named(Kind::Admin, "admins"),
            (Kind::Admin, "tokens") => Holds::List(Kind::AdminToken, "an admin's token"),
            (Kind::Root, "rate_limits") => Holds::One(Kind::RateLimits, "[rate_limits]"),
            (Kind::Group, "rate_limit") => Holds::One(Kind::RateLimit, "a group's rate_limit"),
            (Kind::User, "rate_limit") => Holds::One(Kind::RateLimit, "a user's rate_limit"),
            (Kind::Group, "quota") => Holds::One(Kind::Quota, "a group's quota"),
            (Kind::Upstream, "targets") => Holds::List(Kind::Target, "an upstream's target"),
            (Kind::Upstream, "health_check") => Holds::One(Kind::HealthCheck, "health_check"),
            (Kind::Upstream, "eject") => Holds::One(Kind::Eject, "eject"),
            _ => return None,
        })
    }
}

/// Removes the fields of `table` that its kind does not have, reporting each, and walks into the
/// tables it holds.
fn prune(table: &mut DeTable<'_>, kind: Kind, place: &str, problems: &mut Vec<Problem>) {
    let known = kind.fields();
    let strangers: Vec<_> = table
        .keys()
        .filter(|name| !known.contains(&name.get_ref().as_ref()))
        .cloned()
        .collect();
    for name in strangers {
        problems.push((Some(name.span()), unknown(name.get_ref(), known, place)));
        table.remove(&name);
    }
    for (name, value) in table.iter_mut() {
        match (kind.holds(name.get_ref()), value.get_mut()) {
            (Some(Holds::One(inner, place)), DeValue::Table(t)) => prune(t, inner, place, problems),
            (Some(Holds::Named(inner, kind_name)), DeValue::Table(t)) => {
                for (name, value) in t.iter_mut() {
                    if let DeValue::Table(t) = value.get_mut() {
                        let place = format!("[{kind_name}.{}]", table_key(name.get_ref()));
                        prune(t, inner, &place, problems);
                    }
                }
            }
            (Some(Holds::List(inner, place)), DeValue::Array(items)) => {
                for item in items.iter_mut() {
                    if let DeValue::Table(t) = item.get_mut() {
                        prune(t, inner, place, problems);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A table name as it is written in a header: bare when it can be, quoted otherwise.
fn table_key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn unknown(name: &str, known: &[&str], place: &str) -> String {
    match crate::suggest::closest(name, known.iter().copied()) {
        Some(meant) => format!("unknown field `{name}` in {place}: did you mean `{meant}`?"),
        None => format!(
            "unknown field `{name}` in {place}: it accepts {}",
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The field names a derived `Deserialize` asks for, read by a deserializer that only listens.
fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut probe = Probe(&[]);
    let _ = T::deserialize(&mut probe);
    probe.0
}

struct Probe(&'static [&'static str]);

#[derive(Debug)]
struct Listened;

impl std::fmt::Display for Listened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("only the field names were read")
    }
}

impl std::error::Error for Listened {}

impl serde::de::Error for Listened {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Listened
    }
}

impl<'de> serde::Deserializer<'de> for &mut Probe {
    type Error = Listened;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Listened> {
        Err(Listened)
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Listened> {
        self.0 = fields;
        Err(Listened)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_of_the_wrong_type_is_reported_not_only_the_first() {
        let text = "[server]\nworkers = \"two\"\nlisten = 8080\n\n[groups.g]\nallow = [{ path = \"/**\", verbs = \"view\" }]\n\n[users.\"u@example.org\"]\nstatus = \"active\"\ngroup = 7\nremote_addresses = \"*\"\n";
        let (raw, problems) = parse_reporting_all(text);
        assert!(raw.is_none());
        let lines: Vec<usize> = problems
            .iter()
            .map(|(span, _)| text[..span.clone().unwrap().start].matches('\n').count() + 1)
            .collect();
        assert_eq!(lines, [2, 3, 6, 10], "{problems:?}");
        // A required field set aside for its type is not reported missing as well.
        assert!(
            !problems.iter().any(|(_, m)| m.contains("missing field")),
            "{problems:?}"
        );

        // A table that misses a field is reported, set aside, and the rest still read.
        let text = "[users.\"a@example.org\"]\ngroup = \"g\"\nremote_addresses = \"*\"\n\n[users.\"b@example.org\"]\nstatus = 1\ngroup = \"g\"\n";
        let (_, problems) = parse_reporting_all(text);
        let messages: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(
            messages[0].starts_with("missing field `status`"),
            "{messages:?}"
        );
        assert!(
            messages[1].starts_with("invalid type: integer `1`"),
            "{messages:?}"
        );
    }

    #[test]
    fn the_known_fields_are_those_of_the_raw_types() {
        assert_eq!(
            Kind::Root.fields(),
            [
                "server",
                "upstreams",
                "routes",
                "groups",
                "users",
                "admins",
                "rate_limits"
            ]
        );
        assert_eq!(Kind::RateLimit.fields(), ["requests", "per", "burst"]);
        assert_eq!(Kind::Quota.fields(), ["requests", "per"]);
        assert_eq!(
            Kind::RateLimits.fields(),
            ["store", "on_store_error", "forward_remaining"]
        );
        assert!(Kind::Server.fields().contains(&"upstream_timeout"));
        assert_eq!(
            Kind::Route.fields(),
            [
                "prefix",
                "upstream",
                "strip_prefix",
                "upstream_timeout",
                "websocket"
            ]
        );
        assert_eq!(Kind::Eject.fields(), ["consecutive_failures", "for"]);
        assert_eq!(
            Kind::Key.fields(),
            ["sha256", "prefix", "created", "expires"]
        );
        assert_eq!(Kind::Permission.fields(), ["path", "verbs"]);
        assert!(Kind::User.fields().contains(&"remote_addresses"));
    }

    #[test]
    fn every_unknown_field_is_reported_with_what_was_meant_and_removed() {
        let text = "[server]\nupstream_timout = \"5s\"\n\n[upstreams.a]\nurl = \"builtin:echo\"\nweight = 2\n\n[[routes]]\nprefix = \"/\"\nupstrem = \"a\"\n\n[groups.g]\nallow = [{ path = \"/**\", verb = [\"view\"] }]\n\n[users.\"u@example.org\"]\nstatus = \"active\"\ngroup = \"g\"\nremote_addresses = \"*\"\nkeys = [{ sha256 = \"00\", expire = 2026-01-01T00:00:00Z }]\n\n[servr]\nx = 1\n";
        let (raw, problems) = parse_reporting_all(text);
        let messages: Vec<&str> = problems.iter().map(|(_, m)| m.as_str()).collect();
        assert!(
            messages[0].contains("`upstream_timout` in [server]: did you mean `upstream_timeout`?"),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`weight` in [upstreams.a]: it accepts `url`, `targets`")),
            "{messages:?}"
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`upstrem` in [[routes]]: did you mean `upstream`?"))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`verb` in a group's allow entry: did you mean `verbs`?"))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`expire` in a user's key: did you mean `expires`?"))
        );
        assert!(
            messages
                .iter()
                .any(|m| m.contains("`servr` in the top level: did you mean `server`?"))
        );
        // With the unknown fields gone, a missing required field is what serde reports next.
        assert!(raw.is_none());
        assert!(
            messages.iter().any(|m| m.contains("missing field")),
            "{messages:?}"
        );
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(
            problems[0].0.as_ref().map(|s| s.start),
            Some(at("upstream_timout"))
        );
    }
}
