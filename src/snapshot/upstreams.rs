//! An upstream as the configuration describes it: its targets with their weights, the balancing
//! policy, retries, health checks, passive ejection and the `Host` it is sent. Immutable like
//! the rest of the snapshot; what changes while it serves (health, outstanding requests, pools)
//! is `crate::upstream`'s, keyed by each target's stable id.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme};

/// `[upstreams.NAME]`.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: Arc<str>,
    /// The URL, or the targets' URLs joined by ", " (listings and `explain`).
    pub url: Box<str>,
    pub target: UpstreamTarget,
}

#[derive(Debug, Clone)]
pub enum UpstreamTarget {
    /// `builtin:echo`: answers with a JSON document of what reached it.
    Echo,
    /// One or more HTTP servers.
    Http(Arc<Cluster>),
}

impl UpstreamTarget {
    /// The targets, none for the echo upstream.
    pub fn targets(&self) -> &[Target] {
        match self {
            UpstreamTarget::Echo => &[],
            UpstreamTarget::Http(cluster) => &cluster.targets,
        }
    }
}

/// The HTTP servers behind one upstream name, and how requests are spread over them.
#[derive(Debug)]
pub struct Cluster {
    pub targets: Box<[Target]>,
    pub balance: Balance,
    /// Further attempts, each to another target, for an idempotent request that failed before
    /// any byte of its answer.
    pub retries: u32,
    pub health_check: Option<HealthCheck>,
    /// Passive ejection; `None` turns it off.
    pub eject: Option<Eject>,
    /// The `Host` sent upstream (and in health checks); `None`: the client's (health checks:
    /// the target's host and port).
    pub host: Option<HeaderValue>,
    /// Requests it may have in hand at once, all targets together; `None`: `[server]
    /// max_upstream_connections`.
    pub max_upstream_connections: Option<usize>,
    /// One cycle of smooth weighted round robin (nginx's order): target indices, each as often as
    /// its weight, interleaved.
    pub schedule: Box<[u32]>,
    /// Every target is plain HTTP/1.1 (no TLS, no HTTP/2): the HTTP/1 engine's own client can
    /// send to it; otherwise hyper's path does.
    pub plain_http1: bool,
}

/// One server of an upstream.
#[derive(Debug, Clone)]
pub struct Target {
    /// Stable across reloads: the upstream's name and the target's URL. Health, ejection, the
    /// outstanding count and pooled connections are kept under it.
    pub id: Arc<str>,
    pub url: Box<str>,
    /// `http` or `https`.
    pub scheme: Scheme,
    pub authority: Authority,
    /// Prepended to the forwarded path; empty when the URL has no path.
    pub base_path: Box<str>,
    pub weight: u32,
    /// Set for `https`: how to open and verify TLS to it (the upstream's `ca` and
    /// `server_name`).
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// The upstream's `protocol`: HTTP/1.1, or HTTP/2 (over TLS with ALPN `h2`, or h2c with
    /// prior knowledge).
    pub protocol: crate::tls::UpstreamProtocol,
}

/// `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin (the default).
    RoundRobin,
    /// The target with the fewest requests in flight for its weight.
    LeastOutstanding,
    /// A user sticks to one target (weighted rendezvous hashing of the user id) while it is
    /// healthy.
    HashUser,
}

impl Balance {
    pub fn parse(text: &str) -> Option<Balance> {
        match text {
            "round_robin" => Some(Balance::RoundRobin),
            "least_outstanding" => Some(Balance::LeastOutstanding),
            "hash_user" => Some(Balance::HashUser),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastOutstanding => "least_outstanding",
            Balance::HashUser => "hash_user",
        }
    }
}

/// `health_check`: an HTTP GET of `path` every `interval`; 2xx and 3xx answers within `timeout`
/// pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: Box<str>,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed checks in a row that take a healthy target out.
    pub unhealthy_after: u32,
    /// Passed checks in a row that bring an unhealthy target back.
    pub healthy_after: u32,
}

/// `eject`: a target that failed `consecutive_failures` requests in a row (connect errors,
/// resets, timeouts, 5xx answers) is out for `duration`, doubled for each ejection that follows
/// without a success in between (at most 8 times `duration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Eject {
    pub consecutive_failures: u32,
    pub duration: Duration,
}

/// Smooth weighted round robin over `weights`, one whole cycle: with weights 2 and 1 the order
/// is 0, 1, 0 (not 0, 0, 1).
pub fn weighted_schedule(weights: &[u32]) -> Box<[u32]> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &w) in weights.iter().enumerate() {
            current[i] += i64::from(w);
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        order.push(best as u32);
    }
    order.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::weighted_schedule;

    #[test]
    fn the_schedule_interleaves_targets_by_weight() {
        assert_eq!(&*weighted_schedule(&[2, 1]), &[0, 1, 0]);
        assert_eq!(&*weighted_schedule(&[1, 1, 1]), &[0, 1, 2]);
        let five_one = weighted_schedule(&[5, 1]);
        assert_eq!(five_one.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(five_one.len(), 6);
    }
}
