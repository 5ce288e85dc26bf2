//! The `[server]` limits both transports' upstream connections follow, read from the snapshot
//! for each request so a reload changes them for the next one. The pools themselves, target
//! choice and connecting are `crate::upstream`'s.

use std::time::Duration;

use crate::upstream::KeepAlive;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// How long a connection may stay idle in the pool.
    pub keepalive_timeout: Duration,
    /// Idle connections kept per target; more are closed when their response ends.
    pub keepalive_connections: usize,
    /// The response head limits, the same on both paths.
    pub response_head: crate::proxy::policy::upstream::HeadLimits,
    /// `response_timeout`: the longest a response may take to relay, from its head on.
    pub response_timeout: Option<Duration>,
    /// `max_upstream_connections`: requests one upstream has in hand at once.
    pub max_upstream_connections: usize,
    /// `response_buffer`: bytes of a response read ahead of the client.
    pub response_buffer: usize,
}

impl Limits {
    pub fn of(server: &crate::snapshot::ServerSettings) -> Limits {
        Limits {
            connect_timeout: server.connect_timeout,
            keepalive_timeout: server.upstream_keepalive_timeout,
            keepalive_connections: server.upstream_keepalive_connections,
            response_head: crate::proxy::policy::upstream::HeadLimits::of(&server.limits),
            response_timeout: server.limits.response_timeout,
            max_upstream_connections: server.limits.max_upstream_connections,
            response_buffer: server.limits.response_buffer,
        }
    }

    /// What the pools keep.
    pub fn keepalive(&self) -> KeepAlive {
        KeepAlive {
            timeout: self.keepalive_timeout,
            connections: self.keepalive_connections,
        }
    }
}
