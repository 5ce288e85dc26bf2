//! The upstreams at run time: which target each attempt of a request goes to (`select.rs`:
//! balancing over the available targets), what is known of each target (`state.rs`: requests
//! in flight, health, passive ejection), active health checks (`health.rs`), and the pooled
//! connections both transports use (`pool.rs`). Knows nothing of credentials or transports.
//!
//! The snapshot says what the targets are; their state lives here, under each target's stable
//! id (upstream name and URL), so a reload that keeps a target keeps its state, its health
//! check and its pooled connections. A reload that removes a target drops it from the registry:
//! requests already on their way to it hold its state until they finish (it drains), new ones
//! are balanced over the targets that remain.

mod health;
mod pool;
mod select;
mod slots;
mod state;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::config::reload::ConfigStore;
use crate::observe::Telemetry;
use crate::snapshot::{Snapshot, UpstreamTarget};
pub use pool::{IdlePool, KeepAlive, connect_tcp};
pub use select::{Attempt, ClusterState, Outcome, Tried, preview};
pub use slots::{Busy, Slot, Slots};
use state::{TargetState, now_ms};
pub use state::{TargetStatus, Transition};

#[derive(Default)]
struct Registry {
    targets: HashMap<Arc<str>, Arc<TargetState>>,
    slots: HashMap<Arc<str>, Arc<Slots>>,
}

/// Every upstream's running state, for the gateway's lifetime.
pub struct Upstreams {
    store: Arc<ConfigStore>,
    telemetry: Arc<Telemetry>,
    /// Target states by stable id, and `max_upstream_connections` places by upstream name:
    /// those of the current snapshot.
    registry: Mutex<Registry>,
    /// The current snapshot's clusters, by upstream index (`None`: the echo upstream).
    resolved: ArcSwap<Vec<Option<Arc<ClusterState>>>>,
    /// The authorities of the current snapshot's targets: the pools close idle connections to
    /// any other (`serves`).
    authorities: ArcSwap<std::collections::HashSet<Box<str>>>,
    /// The runtime these were made on (the gateway's background work): health checks run there,
    /// once, whichever worker's request starts one; `None` outside a runtime.
    runtime: Option<tokio::runtime::Handle>,
}

impl Upstreams {
    pub fn new(store: Arc<ConfigStore>, telemetry: Arc<Telemetry>) -> Upstreams {
        let upstreams = Upstreams {
            store,
            telemetry,
            registry: Mutex::new(Registry::default()),
            resolved: ArcSwap::from_pointee(Vec::new()),
            authorities: ArcSwap::from_pointee(std::collections::HashSet::new()),
            runtime: tokio::runtime::Handle::try_current().ok(),
        };
        upstreams.refresh(&upstreams.store.load());
        upstreams
    }

    /// The running state of upstream `index` of `snapshot`; `None` for the echo upstream.
    pub fn cluster(&self, snapshot: &Snapshot, index: u32) -> Option<Arc<ClusterState>> {
        let UpstreamTarget::Http(config) = &snapshot.upstreams.get(index as usize)?.target else {
            return None;
        };
        {
            let resolved = self.resolved.load();
            if let Some(Some(cluster)) = resolved.get(index as usize)
                && Arc::ptr_eq(&cluster.config, config)
            {
                return Some(Arc::clone(cluster));
            }
        }
        // A new snapshot not yet resolved (or an older one a request still holds).
        self.refresh(snapshot)
            .get(index as usize)
            .cloned()
            .flatten()
    }

    /// Brings the running state in line with the current snapshot, if it changed: called every
    /// second (and on the first request after a reload), and at start.
    pub fn refresh_current(&self) {
        let snapshot = self.store.load();
        let now = now_ms();
        let resolved = self.resolved.load();
        let current = snapshot
            .upstreams
            .iter()
            .zip(resolved.iter())
            .all(|(u, r)| match (&u.target, r) {
                (UpstreamTarget::Http(config), Some(c)) => Arc::ptr_eq(config, &c.config),
                (UpstreamTarget::Echo, None) => true,
                _ => false,
            })
            && snapshot.upstreams.len() == resolved.len();
        if !current {
            drop(resolved);
            self.refresh(&snapshot);
        }
        for cluster in self.resolved.load().iter().flatten() {
            for state in cluster.targets.iter() {
                state.tick(now);
            }
        }
    }

    /// The clusters of `snapshot`, made from the registry's states. Only the current snapshot
    /// changes the registry (and the health checks); an older one still held by a request gets
    /// clusters of its own.
    fn refresh(&self, snapshot: &Snapshot) -> Arc<Vec<Option<Arc<ClusterState>>>> {
        let current = std::ptr::eq(snapshot, &**self.store.load());
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut kept: HashMap<Arc<str>, Arc<TargetState>> = HashMap::new();
        let mut kept_slots: HashMap<Arc<str>, Arc<Slots>> = HashMap::new();
        let clusters: Vec<Option<Arc<ClusterState>>> = snapshot
            .upstreams
            .iter()
            .map(|upstream| {
                let UpstreamTarget::Http(config) = &upstream.target else {
                    return None;
                };
                let states: Box<[Arc<TargetState>]> = config
                    .targets
                    .iter()
                    .map(|target| {
                        let state =
                            registry
                                .targets
                                .get(&target.id)
                                .cloned()
                                .unwrap_or_else(|| {
                                    Arc::new(TargetState::new(
                                        Arc::clone(&upstream.name),
                                        &target.url,
                                        Arc::clone(&self.telemetry),
                                    ))
                                });
                        if current {
                            let host = config.host.clone().unwrap_or_else(|| {
                                http::HeaderValue::from_str(target.authority.as_str())
                                    .expect("an authority is a valid header value")
                            });
                            health::ensure(
                                &state,
                                config.health_check.as_ref(),
                                &target.authority,
                                host,
                                target.tls.as_ref(),
                                target.protocol,
                                self.runtime.as_ref(),
                            );
                            kept.insert(Arc::clone(&target.id), Arc::clone(&state));
                        }
                        state
                    })
                    .collect();
                let slots = registry
                    .slots
                    .get(&upstream.name)
                    .cloned()
                    .unwrap_or_default();
                if current {
                    kept_slots.insert(Arc::clone(&upstream.name), Arc::clone(&slots));
                }
                Some(Arc::new(ClusterState::new(
                    Arc::clone(config),
                    states,
                    slots,
                )))
            })
            .collect();
        let clusters = Arc::new(clusters);
        if current {
            for (id, state) in registry.targets.iter() {
                if !kept.contains_key(id) {
                    tracing::info!(
                        upstream = &*state.upstream,
                        target = &*state.url,
                        in_flight = state.outstanding.load(std::sync::atomic::Ordering::Relaxed),
                        "upstream target removed by the reload: its requests in flight finish, new ones go elsewhere"
                    );
                    state.stop_checker();
                }
            }
            registry.targets = kept;
            registry.slots = kept_slots;
            let authorities = snapshot
                .upstreams
                .iter()
                .filter_map(|u| match &u.target {
                    UpstreamTarget::Http(config) => Some(config.targets.iter()),
                    UpstreamTarget::Echo => None,
                })
                .flatten()
                .map(|t| match &t.tls {
                    None => Box::from(t.authority.as_str()),
                    // hyper's pool keeps TLS connections under this key (`UpstreamTls::pool_key`).
                    Some(tls) => Box::from(tls.pool_key(&t.authority).as_str()),
                })
                .collect();
            self.authorities.store(Arc::new(authorities));
            self.resolved.store(Arc::clone(&clusters));
        }
        clusters
    }

    /// Whether a target of the current configuration is at `authority` (the pools keep idle
    /// connections only to those).
    pub fn serves(&self, authority: &http::uri::Authority) -> bool {
        self.authorities.load().contains(authority.as_str())
    }

    /// Every target of the current configuration with its state (`/status`).
    pub fn status(&self) -> Vec<TargetStatus> {
        let resolved = self.resolved.load();
        let mut all = Vec::new();
        for cluster in resolved.iter().flatten() {
            let checked = cluster.config.health_check.is_some();
            for (target, state) in cluster.config.targets.iter().zip(cluster.targets.iter()) {
                all.push(state.status(target.weight, checked));
            }
        }
        all
    }
}
