//! Micro-benchmarks of the hot path's pure parts: the decision for one request at 10, 10,000 and
//! 1,000,000 users, the source-whitelist match, and compiling a file of 100,000 users.
//!
//! `cargo bench --bench decision`; a subset with e.g. `cargo bench --bench decision -- decide/`.

mod support;

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::Method;

use apiward::auth::address::SourceWhitelist;
use apiward::auth::{self, Credential, NoPasswords, Outcome, RequestFacts};
use apiward::snapshot::Snapshot;

use support::Spec;

fn compile(users: usize) -> Snapshot {
    let text = support::config_text(&Spec::in_memory(users));
    apiward::config::compile(Path::new("bench.toml"), &text).expect("the generated file compiles")
}

fn client() -> IpAddr {
    support::CLIENT.parse().expect("a literal address")
}

/// One allowed request, key in a header, from a whitelisted address: every check runs.
fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    group.throughput(Throughput::Elements(1));
    for users in [10, 10_000, 1_000_000] {
        let snapshot = compile(users);
        let key = support::key(users / 2);
        let facts = RequestFacts {
            method: &Method::GET,
            path: support::REQUEST_PATH,
            credential: Credential::Key(&key),
            certificate: None,
            client: client().into(),
            now: 1_800_000_000,
        };
        let decision = auth::decide(&snapshot, &facts, &NoPasswords);
        assert!(
            matches!(decision.outcome, Outcome::Allowed(_)),
            "{:?}",
            decision.outcome
        );

        group.bench_with_input(BenchmarkId::new("one_key", users), &facts, |b, facts| {
            b.iter(|| {
                let d = auth::decide(black_box(&snapshot), black_box(facts), &NoPasswords);
                matches!(d.outcome, Outcome::Allowed(_))
            })
        });

        // The same request with keys spread over the whole table, so that at 10^6 users each
        // lookup misses the caches the way a real mix of clients does.
        let keys: Vec<String> = (0..1024)
            .map(|i| support::key(i * users / 1024 % users))
            .collect();
        let mut next = 0usize;
        group.bench_function(BenchmarkId::new("spread_keys", users), |b| {
            b.iter(|| {
                next = (next + 1) & 1023;
                let facts = RequestFacts {
                    credential: Credential::Key(&keys[next]),
                    ..facts.clone()
                };
                let d = auth::decide(black_box(&snapshot), black_box(&facts), &NoPasswords);
                matches!(d.outcome, Outcome::Allowed(_))
            })
        });
        drop(snapshot);
    }
    group.finish();
}

/// The address-list match, worst case: the admitted address is the last entry.
fn bench_whitelist(c: &mut Criterion) {
    let mut group = c.benchmark_group("source_whitelist");
    for entries in [1usize, 50] {
        let list: Vec<String> = (0..entries)
            .map(|i| {
                if i + 1 == entries {
                    support::CLIENT.to_string()
                } else if i % 2 == 0 {
                    format!("198.51.{}.0/24", i)
                } else {
                    format!("2001:db8:{i:x}::/48")
                }
            })
            .collect();
        let whitelist =
            SourceWhitelist::from_entries(list.iter().map(String::as_str)).expect("valid entries");
        let ip = client();
        assert!(whitelist.allows(ip));
        group.bench_with_input(
            BenchmarkId::new("last_entry_matches", entries),
            &whitelist,
            |b, w| b.iter(|| black_box(w).allows(black_box(ip))),
        );
    }
    group.finish();
}

/// Building a snapshot from the text of a 100,000-user file (what every reload of such a file costs).
fn bench_compile(c: &mut Criterion) {
    let users = 100_000;
    let text = support::config_text(&Spec::in_memory(users));
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_with_input(BenchmarkId::new("users", users), &text, |b, text| {
        b.iter_batched(
            || (),
            |()| {
                apiward::config::compile(Path::new("bench.toml"), black_box(text))
                    .expect("compiles")
            },
            // Dropping a 10^5-user snapshot is not part of compiling it.
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, bench_decide, bench_whitelist, bench_compile);
criterion_main!(benches);
