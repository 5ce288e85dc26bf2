//! The per-request series: `apiward_requests_total` and the two duration histograms.
//!
//! They are updated on every request, so they are kept apart from the Prometheus recorder, whose
//! handles cost about a dozen atomic read-modify-write instructions per request (a counter, two
//! histograms, each behind a generation counter; docs/benchmarks.md measures what those cost).
//! Here each thread that records requests has cells of its own, which only that thread writes,
//! with a plain load and store; a scrape adds up every thread's cells. Each thread finds its
//! cells for a request's labels in a thread-local map, keyed like the old handle cache by the
//! addresses of the snapshot's `Arc<str>`s (which the map keeps alive, so no address is reused
//! while it is a key). When a thread ends (the runtime's blocking threads come and go, and
//! `block_in_place` moves a worker to a new one), its cells are folded into a total of ended
//! threads, so the registry holds one set per live thread, not one per thread that ever was.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::thread::ThreadId;
use std::time::Duration;

/// Upper bounds of the histogram buckets, in seconds; `+Inf` follows.
pub const BUCKETS: [f64; 16] = [
    0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0,
];

/// `BUCKETS` in nanoseconds, as recorded durations are compared with them.
const BOUNDS_NS: [u64; 16] = {
    let mut ns = [0u64; 16];
    let micros = [
        250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
        1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
    ];
    let mut i = 0;
    while i < 16 {
        ns[i] = micros[i] * 1_000;
        i += 1;
    }
    ns
};

/// A count that only one thread writes (so an increment needs no atomic read-modify-write), and
/// any thread reads.
#[derive(Default)]
struct Cell(AtomicU64);

impl Cell {
    fn add(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

#[derive(Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [Cell; 17],
    sum_ns: Cell,
}

impl Histogram {
    fn add(&self, other: &Histogram) {
        for (to, from) in self.buckets.iter().zip(&other.buckets) {
            to.add(from.get());
        }
        self.sum_ns.add(other.sum_ns.get());
    }

    fn record(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(16);
        self.buckets[i].add(1);
        self.sum_ns.add(ns);
    }
}

/// One thread's histograms for one route.
#[derive(Default)]
struct RouteCells {
    total: Histogram,
    upstream: Histogram,
}

/// A request's labels, by content.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Labels {
    user: Option<Arc<str>>,
    route: Option<Arc<str>>,
    decision: &'static str,
    class: &'static str,
}

/// Whose cells: a live thread's (only it writes them), or the ended threads' folded total
/// (written under the registry's lock).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Owner {
    Thread(ThreadId),
    Ended,
}

/// Every thread's cells, for scrapes, and for a thread that needs cells for labels it has not
/// cached (it gets the ones it had before, so reloads do not make the registry grow).
#[derive(Default)]
struct Registry {
    counters: HashMap<(Owner, Labels), Arc<Cell>>,
    routes: HashMap<(Owner, Option<Arc<str>>), Arc<RouteCells>>,
}

impl Registry {
    /// Adds an ended thread's cells to the ended threads' total and drops them.
    fn fold(&mut self, thread: ThreadId) {
        let gone = Owner::Thread(thread);
        let counters: Vec<_> = self
            .counters
            .keys()
            .filter(|(owner, _)| *owner == gone)
            .cloned()
            .collect();
        for key in counters {
            if let Some(cell) = self.counters.remove(&key) {
                self.counters
                    .entry((Owner::Ended, key.1))
                    .or_default()
                    .add(cell.get());
            }
        }
        let routes: Vec<_> = self
            .routes
            .keys()
            .filter(|(owner, _)| *owner == gone)
            .cloned()
            .collect();
        for key in routes {
            if let Some(cells) = self.routes.remove(&key) {
                let total = self.routes.entry((Owner::Ended, key.1)).or_default();
                total.total.add(&cells.total);
                total.upstream.add(&cells.upstream);
            }
        }
    }
}

pub struct Series {
    /// Tells this registry's entries apart in the thread-local maps (tests run several gateways
    /// in one process).
    id: usize,
    /// Bumped by `forget`: thread-local entries of an older epoch are dropped when next seen.
    epoch: AtomicU64,
    registry: Arc<Mutex<Registry>>,
}

/// The thread-local key: the addresses of the label values, and the registry's id.
#[derive(Clone, Copy, PartialEq, Eq)]
struct LocalKey {
    series: usize,
    user: usize,
    route: usize,
    decision: usize,
    class: usize,
}

impl Hash for LocalKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One well-mixed word, for the identity hasher behind the map.
        let mut h = self.user as u64;
        for part in [self.route, self.decision, self.class, self.series] {
            h = (h ^ part as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        state.write_u64(h);
    }
}

struct LocalEntry {
    requests: Arc<Cell>,
    route: Arc<RouteCells>,
    /// Keep the label values alive while their addresses are a key.
    _user: Option<Arc<str>>,
    _route: Option<Arc<str>>,
}

#[derive(Default)]
struct Local {
    /// The epoch this thread last saw, for each registry it recorded for.
    epochs: Vec<(usize, u64)>,
    /// The registries this thread has cells in, to fold them into when it ends.
    registries: Vec<Weak<Mutex<Registry>>>,
    thread: Option<ThreadId>,
    entries: HashMap<LocalKey, LocalEntry, BuildHasherDefault<crate::snapshot::DigestHasher>>,
}

impl Drop for Local {
    /// The thread is ending: its cells join the ended threads' total.
    fn drop(&mut self) {
        let Some(thread) = self.thread else { return };
        for registry in self.registries.drain(..) {
            if let Some(registry) = registry.upgrade() {
                registry
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .fold(thread);
            }
        }
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Default for Series {
    fn default() -> Self {
        Series {
            id: NEXT_ID.fetch_add(1, Relaxed) as usize,
            epoch: AtomicU64::new(0),
            registry: Arc::new(Mutex::new(Registry::default())),
        }
    }
}

impl Series {
    /// Records one finished request.
    pub fn record(
        &self,
        user: Option<&Arc<str>>,
        route: Option<&Arc<str>>,
        decision: &'static str,
        class: &'static str,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let key = LocalKey {
            series: self.id,
            user: user.map_or(0, |u| Arc::as_ptr(u) as *const u8 as usize),
            route: route.map_or(0, |r| Arc::as_ptr(r) as *const u8 as usize),
            decision: decision.as_ptr() as usize,
            class: class.as_ptr() as usize,
        };
        let epoch = self.epoch.load(Relaxed);
        LOCAL.with(|local| {
            let mut local = local.borrow_mut();
            let local = &mut *local;
            match local.epochs.iter_mut().find(|(id, _)| *id == self.id) {
                Some((_, seen)) if *seen == epoch => {}
                Some((_, seen)) => {
                    *seen = epoch;
                    local.entries.retain(|k, _| k.series != self.id);
                }
                None => {
                    local.epochs.push((self.id, epoch));
                    local.registries.push(Arc::downgrade(&self.registry));
                    local.thread = Some(std::thread::current().id());
                }
            }
            let entry = local
                .entries
                .entry(key)
                .or_insert_with(|| self.cells(user, route, decision, class));
            entry.requests.add(1);
            entry.route.total.record(total);
            if let Some(u) = upstream {
                entry.route.upstream.record(u);
            }
        });
    }

    /// This thread's cells for these labels, made the first time.
    fn cells(
        &self,
        user: Option<&Arc<str>>,
        route: Option<&Arc<str>>,
        decision: &'static str,
        class: &'static str,
    ) -> LocalEntry {
        let thread = std::thread::current().id();
        let labels = Labels {
            user: user.cloned(),
            route: route.cloned(),
            decision,
            class,
        };
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let owner = Owner::Thread(thread);
        let requests = Arc::clone(registry.counters.entry((owner, labels)).or_default());
        let route_cells = Arc::clone(registry.routes.entry((owner, route.cloned())).or_default());
        LocalEntry {
            requests,
            route: route_cells,
            _user: user.cloned(),
            _route: route.cloned(),
        }
    }

    /// Drops every thread's cached entries (when each thread next records): after a reload, the
    /// new snapshot's user ids and routes are new `Arc`s. The counts stay.
    pub fn forget(&self) {
        self.epoch.fetch_add(1, Relaxed);
    }

    /// Appends the series in the Prometheus text format, each summed over threads.
    pub fn render(&self, out: &mut String, help: impl Fn(&str) -> &'static str) {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut counts: BTreeMap<&Labels, u64> = BTreeMap::new();
        for ((_, labels), cell) in &registry.counters {
            *counts.entry(labels).or_default() += cell.get();
        }
        if !counts.is_empty() {
            family(out, super::names::REQUESTS, "counter", &help);
            for (labels, n) in counts {
                let _ = writeln!(
                    out,
                    "{}{{user=\"{}\",route=\"{}\",decision=\"{}\",status_class=\"{}\"}} {n}",
                    super::names::REQUESTS,
                    Escaped(labels.user.as_deref()),
                    Escaped(labels.route.as_deref()),
                    Escaped(Some(labels.decision)),
                    labels.class,
                );
            }
        }
        type Pick = fn(&RouteCells) -> &Histogram;
        let histograms: [(&str, Pick); 2] = [
            (super::names::REQUEST_DURATION, |r| &r.total),
            (super::names::UPSTREAM_DURATION, |r| &r.upstream),
        ];
        for (name, pick) in histograms {
            let mut by_route: BTreeMap<Option<&str>, ([u64; 17], u64)> = BTreeMap::new();
            for ((_, route), cells) in &registry.routes {
                let h = pick(cells);
                let (buckets, sum) = by_route.entry(route.as_deref()).or_default();
                for (total, cell) in buckets.iter_mut().zip(&h.buckets) {
                    *total += cell.get();
                }
                *sum += h.sum_ns.get();
            }
            if by_route.is_empty() {
                continue;
            }
            family(out, name, "histogram", &help);
            for (route, (buckets, sum_ns)) in by_route {
                let route = Escaped(route);
                let mut cumulative = 0;
                for (i, n) in buckets.iter().enumerate() {
                    cumulative += n;
                    let le = BUCKETS.get(i).map_or("+Inf".to_string(), f64::to_string);
                    let _ = writeln!(
                        out,
                        "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {cumulative}"
                    );
                }
                let sum = sum_ns as f64 / 1e9;
                let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {sum}");
                let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {cumulative}");
            }
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &impl Fn(&str) -> &'static str) {
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {name} {}", help(name));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the text format wants it (`none` for no value).
struct Escaped<'a>(Option<&'a str>);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in self.0.unwrap_or(super::names::NONE).chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bounds_are_the_buckets_in_nanoseconds() {
        for (ns, s) in BOUNDS_NS.iter().zip(BUCKETS) {
            assert_eq!(*ns, (s * 1e9).round() as u64);
        }
    }

    #[test]
    fn counts_from_several_threads_and_epochs_add_up() {
        let series = Arc::new(Series::default());
        let user: Arc<str> = "u@example.org".into();
        let route: Arc<str> = "/a/\"b\"".into();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (series, user, route) =
                    (Arc::clone(&series), Arc::clone(&user), Arc::clone(&route));
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        if i == 50 {
                            series.forget();
                        }
                        series.record(
                            Some(&user),
                            Some(&route),
                            "allowed",
                            "2xx",
                            Duration::from_micros(i * 10),
                            Some(Duration::from_micros(1)),
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        series.record(
            None,
            None,
            "forbidden",
            "4xx",
            Duration::from_secs(40),
            None,
        );
        let mut text = String::new();
        series.render(&mut text, |_| "help");
        let sample = |line: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(line))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no {line} in\n{text}"))
        };
        assert_eq!(
            sample(
                "apiward_requests_total{user=\"u@example.org\",route=\"/a/\\\"b\\\"\",decision=\"allowed\",status_class=\"2xx\"}"
            ),
            300.0
        );
        assert_eq!(
            sample(
                "apiward_requests_total{user=\"none\",route=\"none\",decision=\"forbidden\",status_class=\"4xx\"}"
            ),
            1.0
        );
        let r = "route=\"/a/\\\"b\\\"\"";
        // 0, 10, 20, ..., 990 µs from each thread: 26 at or under 250 µs, all under 1 ms.
        assert_eq!(
            sample(&format!(
                "apiward_request_duration_seconds_bucket{{{r},le=\"0.00025\"}}"
            )),
            78.0
        );
        assert_eq!(
            sample(&format!(
                "apiward_request_duration_seconds_bucket{{{r},le=\"0.001\"}}"
            )),
            300.0
        );
        assert_eq!(
            sample(&format!("apiward_request_duration_seconds_count{{{r}}}")),
            300.0
        );
        let sum = sample(&format!("apiward_request_duration_seconds_sum{{{r}}}"));
        assert!((sum - 3.0 * 0.0495).abs() < 1e-9, "{sum}");
        assert_eq!(
            sample(&format!("apiward_upstream_duration_seconds_count{{{r}}}")),
            300.0
        );
        assert_eq!(
            sample("apiward_request_duration_seconds_bucket{route=\"none\",le=\"30\"}"),
            0.0
        );
        assert_eq!(
            sample("apiward_request_duration_seconds_bucket{route=\"none\",le=\"+Inf\"}"),
            1.0
        );
        // Each thread reused its cells after `forget`, and the three that ended were folded
        // into one total: the ended threads' set and this thread's.
        let registry = series.registry.lock().unwrap();
        assert_eq!(registry.counters.len(), 2);
    }

    #[test]
    fn cells_of_ended_threads_are_folded_into_one_total() {
        let series = Arc::new(Series::default());
        let route: Arc<str> = "/r/".into();
        for _ in 0..50 {
            let (series, route) = (Arc::clone(&series), Arc::clone(&route));
            std::thread::spawn(move || {
                for _ in 0..3 {
                    series.record(
                        None,
                        Some(&route),
                        "allowed",
                        "2xx",
                        Duration::from_millis(2),
                        Some(Duration::from_millis(1)),
                    );
                }
            })
            .join()
            .unwrap();
        }
        {
            let registry = series.registry.lock().unwrap();
            assert_eq!(
                registry.counters.len(),
                1,
                "one total, not fifty threads' cells"
            );
            assert_eq!(registry.routes.len(), 1);
        }
        let mut text = String::new();
        series.render(&mut text, |_| "help");
        assert!(
            text.contains(
                "apiward_requests_total{user=\"none\",route=\"/r/\",decision=\"allowed\",status_class=\"2xx\"} 150\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("apiward_upstream_duration_seconds_count{route=\"/r/\"} 150\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "apiward_request_duration_seconds_bucket{route=\"/r/\",le=\"0.001\"} 0\n"
            ),
            "{text}"
        );
    }
}
