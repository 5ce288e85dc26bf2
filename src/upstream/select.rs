//! Choosing a target for one attempt of a request: the cluster's policy (weighted round robin,
//! least outstanding for its weight, or the user's own target by weighted rendezvous hashing)
//! over the targets available and not yet tried; when none is available, the one that failed
//! least recently. An attempt counts as outstanding on its target until it is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::slots::{Busy, Slot, Slots};
use super::state::{TargetState, now_ms};
use crate::snapshot::{Balance, Cluster, Target};

/// One upstream's targets with their running state, as one snapshot configured them.
pub struct ClusterState {
    pub(super) config: Arc<Cluster>,
    pub(super) targets: Box<[Arc<TargetState>]>,
    /// Round robin's position in `config.schedule` (and least outstanding's tie breaker).
    next: AtomicUsize,
    /// The upstream's `max_upstream_connections` places, shared by every snapshot's cluster of
    /// the same name.
    slots: Arc<Slots>,
}

/// The targets already tried by a request, one bit each (a cluster has at most 64).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried(u64);

impl Tried {
    pub fn contains(self, index: usize) -> bool {
        self.0 & (1 << index) != 0
    }

    pub fn with(self, index: usize) -> Tried {
        Tried(self.0 | (1 << index))
    }
}

/// How a request's attempt on a target ended, for passive ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// A response with this status (a 5xx counts as a failure).
    Answered(u16),
    /// No answer; why, for the log line an ejection writes.
    Failed(&'a str),
}

/// One attempt of a request on one target: outstanding there until dropped.
pub struct Attempt {
    cluster: Arc<ClusterState>,
    index: usize,
    /// No target was available: this one was taken because it failed least recently.
    pub fallback: bool,
}

impl Attempt {
    pub fn target(&self) -> &Target {
        &self.cluster.config.targets[self.index]
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The upstream's `host`, sent upstream instead of the client's `Host`.
    pub fn host(&self) -> Option<&http::HeaderValue> {
        self.cluster.config.host.as_ref()
    }

    /// Reports how the attempt ended, for passive ejection.
    pub fn report(&self, outcome: Outcome<'_>) {
        let state = &self.cluster.targets[self.index];
        match outcome {
            Outcome::Answered(status) if status < 500 => state.succeeded(),
            Outcome::Answered(status) => {
                state.failed(self.cluster.config.eject, &format!("answered {status}"))
            }
            Outcome::Failed(why) => state.failed(self.cluster.config.eject, why),
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.cluster.targets[self.index]
            .outstanding
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl ClusterState {
    pub(super) fn new(
        config: Arc<Cluster>,
        targets: Box<[Arc<TargetState>]>,
        slots: Arc<Slots>,
    ) -> ClusterState {
        ClusterState {
            config,
            targets,
            next: AtomicUsize::new(0),
            slots,
        }
    }

    /// A place for one request at this upstream (at most its `max_upstream_connections`, else
    /// `default`, in hand; waiting up to `wait`), held through all its attempts until its
    /// upstream connection is given back.
    pub async fn place(&self, default: usize, wait: std::time::Duration) -> Result<Slot, Busy> {
        let max = self.config.max_upstream_connections.unwrap_or(default);
        self.slots.take(max, wait).await
    }

    /// Requests holding a place at this upstream now.
    pub fn places_in_use(&self) -> usize {
        self.slots.in_use()
    }

    pub fn config(&self) -> &Cluster {
        &self.config
    }

    /// A target for the next attempt of a request by `user`, none of those in `tried`; `None`
    /// when every target has been tried.
    pub fn pick(self: &Arc<Self>, user: Option<&str>, tried: Tried) -> Option<Attempt> {
        // The clock is read only if a target has been ejected: one never ejected (or returned)
        // is available at any time, so the common request reads no clock here.
        let now = std::cell::OnceCell::new();
        let open = |i: usize| {
            !tried.contains(i) && self.targets[i].is_available_by(|| *now.get_or_init(now_ms))
        };
        let chosen = match (self.config.balance, user) {
            _ if self.targets.len() == 1 => open(0).then_some(0),
            (Balance::HashUser, Some(user)) => self.by_user(user, open),
            (Balance::LeastOutstanding, _) => self.least_outstanding(open),
            (Balance::RoundRobin | Balance::HashUser, _) => self.round_robin(open),
        };
        let (index, fallback) = match chosen {
            Some(i) => (i, false),
            None => (self.least_recently_failed(tried)?, true),
        };
        self.targets[index]
            .outstanding
            .fetch_add(1, Ordering::Relaxed);
        Some(Attempt {
            cluster: Arc::clone(self),
            index,
            fallback,
        })
    }

    fn round_robin(&self, open: impl Fn(usize) -> bool) -> Option<usize> {
        let schedule = &self.config.schedule;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..schedule.len())
            .map(|k| schedule[(start + k) % schedule.len()] as usize)
            .find(|&i| open(i))
    }

    fn least_outstanding(&self, open: impl Fn(usize) -> bool) -> Option<usize> {
        // Ties go round: each request starts its scan one target further.
        let n = self.targets.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<(usize, u64)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            if !open(i) {
                continue;
            }
            let weight = u64::from(self.config.targets[i].weight);
            // In flight per unit of weight, compared without division: a/wa < b/wb.
            let load = u64::from(self.targets[i].outstanding.load(Ordering::Relaxed));
            match best {
                Some((b, b_load))
                    if load * u64::from(self.config.targets[b].weight) >= b_load * weight => {}
                _ => best = Some((i, load)),
            }
        }
        best.map(|(i, _)| i)
    }

    fn by_user(&self, user: &str, open: impl Fn(usize) -> bool) -> Option<usize> {
        rendezvous(&self.config, user, open)
    }

    /// None available: the untried target whose last failure is oldest (one that never failed
    /// first), so that a cluster that is all down is still tried rather than refused outright.
    fn least_recently_failed(&self, tried: Tried) -> Option<usize> {
        (0..self.targets.len())
            .filter(|&i| !tried.contains(i))
            .min_by_key(|&i| self.targets[i].last_failure.load(Ordering::Relaxed))
    }
}

/// Weighted rendezvous hashing: each (user, target) pair gets a score, the highest open target
/// wins, so a user moves only when its target is out (and comes back with it).
fn rendezvous(cluster: &Cluster, user: &str, open: impl Fn(usize) -> bool) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, target) in cluster.targets.iter().enumerate() {
        if !open(i) {
            continue;
        }
        let h = mix(fnv1a(user.as_bytes()) ^ fnv1a(target.url.as_bytes()).rotate_left(17));
        // A uniform number in (0, 1), then the weighted score -w / ln(u).
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(target.weight) / u.ln();
        if best.is_none_or(|(_, s)| score > s) {
            best = Some((i, score));
        }
    }
    best.map(|(i, _)| i)
}

/// The targets of `cluster` in the order a request by `user` would try them while all are
/// healthy: the user's own first under `hash_user`, else as configured (`explain`).
pub fn preview(cluster: &Cluster, user: Option<&str>) -> Vec<usize> {
    let mut order: Vec<usize> = Vec::with_capacity(cluster.targets.len());
    for _ in 0..cluster.targets.len() {
        let open = |i: usize| !order.contains(&i);
        let next = match (cluster.balance, user) {
            (Balance::HashUser, Some(user)) => rendezvous(cluster, user, open),
            _ => (0..cluster.targets.len()).find(|&i| open(i)),
        };
        match next {
            Some(i) => order.push(i),
            None => break,
        }
    }
    order
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// splitmix64's finaliser: spreads FNV's weak low bits over the whole word.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::weighted_schedule;

    fn cluster(urls: &[&str]) -> Cluster {
        let targets: Vec<Target> = urls
            .iter()
            .map(|u| Target {
                id: (*u).into(),
                url: (*u).into(),
                scheme: http::uri::Scheme::HTTP,
                authority: u.trim_start_matches("http://").parse().unwrap(),
                base_path: "".into(),
                weight: 1,
                tls: None,
                protocol: crate::tls::UpstreamProtocol::Http1,
            })
            .collect();
        Cluster {
            schedule: weighted_schedule(&vec![1; targets.len()]),
            targets: targets.into_boxed_slice(),
            balance: Balance::HashUser,
            retries: 0,
            health_check: None,
            eject: None,
            host: None,
            max_upstream_connections: None,
            plain_http1: true,
        }
    }

    #[test]
    fn removing_a_target_moves_only_the_users_it_had() {
        let all = cluster(&[
            "http://10.0.0.1:80",
            "http://10.0.0.2:80",
            "http://10.0.0.3:80",
        ]);
        let fewer = cluster(&["http://10.0.0.1:80", "http://10.0.0.3:80"]);
        let mut moved = 0;
        let mut per_target = [0; 3];
        for n in 0..300 {
            let user = format!("user{n}@example.org");
            let before = preview(&all, Some(&user))[0];
            per_target[before] += 1;
            let after = &fewer.targets[preview(&fewer, Some(&user))[0]].url;
            if *all.targets[before].url != **after {
                moved += 1;
                assert_eq!(before, 1, "only the removed target's users move");
            }
        }
        assert_eq!(moved, per_target[1]);
        assert!(per_target.iter().all(|&n| n > 60), "spread: {per_target:?}");
    }
}
