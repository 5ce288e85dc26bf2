//! Group permissions: a path pattern and the verbs (view, create, modify, delete) allowed on it.

use std::fmt;

use http::Method;

/// The four verbs of a permission group, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VerbSet(u8);

impl VerbSet {
    pub const VIEW: VerbSet = VerbSet(1);
    pub const CREATE: VerbSet = VerbSet(2);
    pub const MODIFY: VerbSet = VerbSet(4);
    pub const DELETE: VerbSet = VerbSet(8);
    const NAMES: [(&'static str, VerbSet); 4] = [
        ("view", VerbSet::VIEW),
        ("create", VerbSet::CREATE),
        ("modify", VerbSet::MODIFY),
        ("delete", VerbSet::DELETE),
    ];

    pub fn parse_verb(name: &str) -> Result<VerbSet, String> {
        VerbSet::NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                format!(
                    "unknown verb {name:?}{}: use view (GET, HEAD, OPTIONS), create (POST), modify (PUT, PATCH) or delete (DELETE)",
                    crate::suggest::did_you_mean(name, VerbSet::NAMES.iter().map(|(n, _)| *n))
                )
            })
    }

    /// The verb a method needs; `None` for methods no permission can grant (TRACE, CONNECT, others).
    pub fn for_method(method: &Method) -> Option<VerbSet> {
        match *method {
            Method::GET | Method::HEAD | Method::OPTIONS => Some(VerbSet::VIEW),
            Method::POST => Some(VerbSet::CREATE),
            Method::PUT | Method::PATCH => Some(VerbSet::MODIFY),
            Method::DELETE => Some(VerbSet::DELETE),
            _ => None,
        }
    }

    pub fn insert(&mut self, other: VerbSet) {
        self.0 |= other.0;
    }

    pub fn contains(self, other: VerbSet) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }
}

impl fmt::Display for VerbSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = VerbSet::NAMES
            .iter()
            .filter(|(_, v)| self.contains(*v))
            .map(|(n, _)| *n)
            .collect();
        f.write_str(&names.join(", "))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(Box<str>),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**` (last only): everything below, including nothing.
    Rest,
}

/// A path pattern such as `/supporters/**` or `/pages/*`, matched segment by segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: Box<str>,
    segments: Box<[Segment]>,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<PathPattern, String> {
        if !text.starts_with('/') {
            return Err(format!("path pattern {text:?} must start with '/'"));
        }
        let parts: Vec<&str> = text[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let segment = match *part {
                "**" if last => Segment::Rest,
                "**" => return Err(format!("in {text:?}, '**' may only be the last segment")),
                "*" => Segment::One,
                p if p.contains('*') => {
                    return Err(format!(
                        "in {text:?}, '*' must be a whole segment ('/pages/*'), not part of one"
                    ));
                }
                "." | ".." => {
                    return Err(format!(
                        "path pattern {text:?} must not contain '.' or '..' segments"
                    ));
                }
                p if p.contains('%') || p.contains('\\') => {
                    return Err(format!(
                        "path pattern {text:?} must be written decoded, without '%' or '\\'"
                    ));
                }
                p if p.is_empty() && !last => {
                    return Err(format!("path pattern {text:?} contains '//'"));
                }
                p => Segment::Literal(p.into()),
            };
            segments.push(segment);
        }
        Ok(PathPattern {
            source: text.into(),
            segments: segments.into_boxed_slice(),
        })
    }

    /// Matches a normalised path (see `auth::path`).
    pub fn matches(&self, path: &str) -> bool {
        let Some(rest) = path.strip_prefix('/') else {
            return false;
        };
        // Split on bytes: '/' is ASCII, so this cuts where `str::split('/')` would, without the
        // char searcher's set-up on every call (this runs for each permission tried).
        let mut parts = rest.as_bytes().split(|&b| b == b'/');
        for segment in self.segments.iter() {
            match segment {
                Segment::Rest => return true,
                Segment::One => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(lit) => match parts.next() {
                    Some(p) if p == lit.as_bytes() => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }
}

/// One `allow` entry of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    pub pattern: PathPattern,
    pub verbs: VerbSet,
}

/// The first of `permissions` that grants `verb` on `path` (a group's `allow`, or its
/// `shadow_allow`).
#[inline]
pub fn first_allowing<'p>(
    permissions: &'p [Permission],
    verb: VerbSet,
    path: &str,
) -> Option<&'p Permission> {
    permissions
        .iter()
        .find(|p| p.verbs.contains(verb) && p.pattern.matches(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn double_star_matches_everything_below() {
        let pat = p("/supporters/**");
        for path in [
            "/supporters",
            "/supporters/",
            "/supporters/1",
            "/supporters/1/notes/",
        ] {
            assert!(pat.matches(path), "{path}");
        }
        for path in ["/", "/supporterss", "/supporters2/x", "/pages/supporters/1"] {
            assert!(!pat.matches(path), "{path}");
        }
    }

    #[test]
    fn single_star_matches_one_segment() {
        let pat = p("/pages/*");
        assert!(pat.matches("/pages/12"));
        assert!(!pat.matches("/pages/"));
        assert!(!pat.matches("/pages"));
        assert!(!pat.matches("/pages/12/components"));
        assert!(!pat.matches("/pages/12/"));
        let pat = p("/pages/*/components");
        assert!(pat.matches("/pages/12/components"));
        assert!(!pat.matches("/pages/12/other"));
    }

    #[test]
    fn literal_patterns_match_exactly() {
        assert!(p("/status").matches("/status"));
        assert!(!p("/status").matches("/status/"));
        assert!(p("/status/").matches("/status/"));
        assert!(p("/**").matches("/anything/at/all"));
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "supporters",
            "/a/**/b",
            "/a*",
            "/a/../b",
            "/a//b",
            "/a%2fb",
            "/a/*x",
        ] {
            assert!(PathPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verbs_map_to_methods() {
        let mut v = VerbSet::default();
        v.insert(VerbSet::parse_verb("view").unwrap());
        v.insert(VerbSet::parse_verb("modify").unwrap());
        assert!(v.contains(VerbSet::for_method(&Method::HEAD).unwrap()));
        assert!(v.contains(VerbSet::for_method(&Method::PATCH).unwrap()));
        assert!(!v.contains(VerbSet::for_method(&Method::POST).unwrap()));
        assert!(!v.contains(VerbSet::default()));
        assert_eq!(VerbSet::for_method(&Method::TRACE), None);
        assert!(VerbSet::parse_verb("GET").is_err());
        assert_eq!(v.to_string(), "view, modify");
    }
}
