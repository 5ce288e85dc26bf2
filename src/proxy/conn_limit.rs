//! How many client connections the listener takes: in total (`max_connections`) and per source
//! address (`max_connections_per_source`, trusted proxies exempt). A connection above either is
//! closed at once and counted, so one client holding thousands of idle sockets can neither run
//! the process out of file descriptors nor crowd out everyone else.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::auth::password::limiter::SourceKey;
use crate::snapshot::Snapshot;

/// File descriptors kept back from client connections: the listeners, the configuration watch,
/// the log file, Redis and the like.
const RESERVED_FDS: u64 = 64;

/// Raises the soft limit on open files to the hard limit (as nginx's `worker_rlimit_nofile`
/// would be set by hand) and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-files limit to its hard limit");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(1 << 20)
}

/// The default `max_connections` for an open-files limit: half of what is left after the
/// reserve, since every client connection may hold an upstream connection too.
pub fn default_max_connections(fd_limit: u64) -> usize {
    let usable = fd_limit.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(usable).unwrap_or(usize::MAX).max(16)
}

/// Why a new connection was closed at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    MaxConnections,
    MaxConnectionsPerSource,
}

impl Refused {
    /// The `reason` label of `apiward_connections_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::MaxConnections => "max_connections",
            Refused::MaxConnectionsPerSource => "max_connections_per_source",
        }
    }
}

/// The open client connections, in total and by source.
pub struct ConnectionLimits {
    /// `max_connections` when the file leaves it out.
    default_max: usize,
    open: AtomicUsize,
    by_source: DashMap<SourceKey, usize>,
}

/// One admitted connection; dropping it gives its places back.
pub struct Admitted {
    limits: Arc<ConnectionLimits>,
    source: Option<SourceKey>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limits.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(source) = self.source {
            self.limits.by_source.remove_if_mut(&source, |_, n| {
                *n -= 1;
                *n == 0
            });
        }
    }
}

impl ConnectionLimits {
    pub fn new(default_max: usize) -> Arc<ConnectionLimits> {
        Arc::new(ConnectionLimits {
            default_max,
            open: AtomicUsize::new(0),
            by_source: DashMap::new(),
        })
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Takes a place for a new connection from `peer`, or says why there is none.
    pub fn admit(self: &Arc<Self>, snapshot: &Snapshot, peer: IpAddr) -> Result<Admitted, Refused> {
        let limits = &snapshot.server.limits;
        let max = limits.max_connections.unwrap_or(self.default_max);
        if self.open.fetch_add(1, Ordering::Relaxed) >= max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::MaxConnections);
        }
        // Trusted proxies carry many clients each: they are not one source.
        let source = (!snapshot.is_trusted_proxy(peer)).then(|| SourceKey::of(peer));
        if let Some(source) = source {
            let mut held = self.by_source.entry(source).or_insert(0);
            if *held >= limits.max_connections_per_source {
                drop(held);
                self.open.fetch_sub(1, Ordering::Relaxed);
                self.by_source.remove_if(&source, |_, n| *n == 0);
                return Err(Refused::MaxConnectionsPerSource);
            }
            *held += 1;
        }
        Ok(Admitted {
            limits: Arc::clone(self),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(extra: &str) -> Snapshot {
        let text = format!(
            "[server]\n{extra}\n[upstreams.api]\nurl = \"http://127.0.0.1:9\"\n[[routes]]\nprefix = \"/\"\nupstream = \"api\"\n"
        );
        crate::config::compile(std::path::Path::new("t.toml"), &text)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connections_are_limited_in_total_and_per_source_and_given_back() {
        let s = snapshot(
            "max_connections = 16\nmax_connections_per_source = 2\ntrusted_proxies = [\"10.0.0.1\"]",
        );
        let limits = ConnectionLimits::new(1000);
        let a1 = limits.admit(&s, ip("192.0.2.1")).unwrap();
        let _a2 = limits.admit(&s, ip("192.0.2.1")).unwrap();
        assert_eq!(
            limits.admit(&s, ip("192.0.2.1")).err(),
            Some(Refused::MaxConnectionsPerSource)
        );
        assert_eq!(limits.open(), 2, "a refused connection holds no place");
        drop(a1);
        let _a3 = limits.admit(&s, ip("::ffff:192.0.2.1")).unwrap();
        // IPv6 counts by /64.
        let _b1 = limits.admit(&s, ip("2001:db8::1")).unwrap();
        let _b2 = limits.admit(&s, ip("2001:db8::2")).unwrap();
        assert!(limits.admit(&s, ip("2001:db8::3")).is_err());
        // A trusted proxy is exempt from the per-source limit, not from the total.
        let proxied: Vec<_> = (0..12)
            .map(|_| limits.admit(&s, ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(limits.open(), 16);
        assert_eq!(
            limits.admit(&s, ip("10.0.0.1")).err(),
            Some(Refused::MaxConnections)
        );
        drop(proxied);
        assert_eq!(limits.open(), 4);
        assert!(
            limits.by_source.len() <= 2,
            "sources without connections are forgotten"
        );
    }

    #[test]
    fn the_default_leaves_room_for_upstream_connections() {
        assert_eq!(default_max_connections(1024), 480);
        assert_eq!(default_max_connections(10), 16);
        assert!(raise_fd_limit() >= 16);
    }
}
