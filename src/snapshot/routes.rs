//! The route table: the longest route prefix of a path, found with a binary search and a walk
//! up a precomputed chain of prefixes instead of a scan of every route.

use std::sync::Arc;
use std::time::Duration;

/// One `[[routes]]` entry, compiled.
#[derive(Debug, Clone)]
pub struct Route {
    pub prefix: Arc<str>,
    pub upstream: u32,
    /// `strip_prefix`: the prefix is removed from the path forwarded (after the permission
    /// check, which sees the whole path).
    pub strip_prefix: bool,
    /// `upstream_timeout`; `None`: `[server]`'s.
    pub upstream_timeout: Option<Duration>,
    /// `websocket`: `Upgrade: websocket` is relayed on this route.
    pub websocket: bool,
}

impl Route {
    /// A prefix `/supporters/` also takes the bare `/supporters`, as nginx's `location` users expect.
    pub fn matches(&self, path: &str) -> bool {
        path.starts_with(&*self.prefix)
            || (self.prefix.len() > 1
                && self.prefix.ends_with('/')
                && path == &self.prefix[..self.prefix.len() - 1])
    }
}

/// No parent: the entry has no other prefix in the table.
const NONE: u32 = u32::MAX;

/// The compiled routes. The semantics are those of a scan of the routes longest prefix first,
/// taking the first that `Route::matches`: a prefix `/a/` that takes the bare `/a` is always the
/// longest candidate for `/a` (one byte longer than the path), so it is looked for first; then the
/// longest prefix of the path.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Longest prefix first, as listings show them.
    routes: Box<[Route]>,
    /// Indices into `routes`, sorted by prefix bytes.
    sorted: Box<[u32]>,
    /// For each position in `sorted`, the position of the longest other prefix that is a prefix
    /// of it, or `NONE`.
    parent: Box<[u32]>,
}

impl RouteTable {
    /// `routes` must not hold one prefix twice (compilation refuses that first).
    pub fn new(mut routes: Vec<Route>) -> RouteTable {
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut sorted: Vec<u32> = (0..routes.len() as u32).collect();
        sorted.sort_by(|&a, &b| {
            routes[a as usize]
                .prefix
                .as_bytes()
                .cmp(routes[b as usize].prefix.as_bytes())
        });
        // In byte order every prefix of an entry comes before it: a stack of the entries that
        // are prefixes of the current one gives each its parent in one pass.
        let mut parent = vec![NONE; sorted.len()];
        let mut stack: Vec<u32> = Vec::new();
        for (pos, &i) in sorted.iter().enumerate() {
            let prefix = routes[i as usize].prefix.as_bytes();
            while let Some(&top) = stack.last() {
                let above = routes[sorted[top as usize] as usize].prefix.as_bytes();
                if prefix.starts_with(above) {
                    break;
                }
                stack.pop();
            }
            parent[pos] = stack.last().copied().unwrap_or(NONE);
            stack.push(pos as u32);
        }
        RouteTable {
            routes: routes.into_boxed_slice(),
            sorted: sorted.into_boxed_slice(),
            parent: parent.into_boxed_slice(),
        }
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Longest prefix first.
    pub fn iter(&self) -> std::slice::Iter<'_, Route> {
        self.routes.iter()
    }

    fn at(&self, pos: usize) -> &Route {
        &self.routes[self.sorted[pos] as usize]
    }

    /// The route a normalised path goes to.
    pub fn lookup(&self, path: &str) -> Option<&Route> {
        let path = path.as_bytes();
        if !path.is_empty() {
            // `/a/` takes the bare `/a`: look for exactly `path` + "/".
            let bare = self.sorted.binary_search_by(|&i| {
                cmp_with_slash(self.routes[i as usize].prefix.as_bytes(), path)
            });
            if let Ok(pos) = bare {
                return Some(self.at(pos));
            }
        }
        // Every prefix of `path` sorts at or before it, and is a prefix of the last entry that
        // does: walk that entry's chain of prefixes until one is a prefix of `path`.
        let after = self
            .sorted
            .partition_point(|&i| self.routes[i as usize].prefix.as_bytes() <= path);
        let mut pos = after.checked_sub(1)?;
        loop {
            let route = self.at(pos);
            if path.starts_with(route.prefix.as_bytes()) {
                return Some(route);
            }
            let up = self.parent[pos];
            if up == NONE {
                return None;
            }
            pos = up as usize;
        }
    }
}

/// Compares `prefix` with `path` followed by one `/`, without making that string.
fn cmp_with_slash(prefix: &[u8], path: &[u8]) -> std::cmp::Ordering {
    prefix.iter().cmp(path.iter().chain(std::iter::once(&b'/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(prefixes: &[&str]) -> RouteTable {
        RouteTable::new(
            prefixes
                .iter()
                .enumerate()
                .map(|(i, p)| Route {
                    prefix: (*p).into(),
                    upstream: i as u32,
                    strip_prefix: false,
                    upstream_timeout: None,
                    websocket: false,
                })
                .collect(),
        )
    }

    /// The lookup this table replaces: every route, longest prefix first, the first that matches.
    fn linear<'t>(t: &'t RouteTable, path: &str) -> Option<&'t Route> {
        t.iter().find(|r| r.matches(path))
    }

    #[test]
    fn the_longest_prefix_wins_and_a_slash_prefix_takes_the_bare_path() {
        let t = table(&[
            "/",
            "/supporters/",
            "/supporters/special/",
            "/sup",
            "/a",
            "/a/",
        ]);
        let route = |p: &str| t.lookup(p).map(|r| &*r.prefix);
        assert_eq!(route("/supporters/special/1"), Some("/supporters/special/"));
        assert_eq!(route("/supporters/special"), Some("/supporters/special/"));
        assert_eq!(route("/supporters/1"), Some("/supporters/"));
        assert_eq!(route("/supporters"), Some("/supporters/"));
        assert_eq!(route("/supp"), Some("/sup"));
        assert_eq!(
            route("/a"),
            Some("/a/"),
            "the bare form beats the shorter prefix"
        );
        assert_eq!(route("/ab"), Some("/a"));
        assert_eq!(route("/elsewhere"), Some("/"));
        assert_eq!(route(""), None);
        assert!(table(&["/x/"]).lookup("/y").is_none());
        assert!(table(&[]).lookup("/y").is_none());
    }

    #[test]
    fn it_agrees_with_the_linear_scan_on_random_tables() {
        // A small alphabet makes prefixes of each other, bare matches and near misses common.
        let alphabet = [b'/', b'a', b'b', b'.'];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let word = |next: &mut dyn FnMut(usize) -> usize, max: usize| {
            let len = next(max + 1);
            let mut s = String::from("/");
            for _ in 0..len {
                s.push(alphabet[next(alphabet.len())] as char);
            }
            s
        };
        for _ in 0..400 {
            let count = next(12);
            let mut prefixes: Vec<String> = Vec::new();
            for _ in 0..count {
                let p = word(&mut next, 5);
                if !prefixes.contains(&p) {
                    prefixes.push(p);
                }
            }
            let refs: Vec<&str> = prefixes.iter().map(String::as_str).collect();
            let t = table(&refs);
            for _ in 0..40 {
                let path = word(&mut next, 7);
                let path = if next(8) == 0 { String::new() } else { path };
                assert_eq!(
                    t.lookup(&path).map(|r| &*r.prefix),
                    linear(&t, &path).map(|r| &*r.prefix),
                    "{path:?} in {refs:?}"
                );
            }
        }
    }
}
