//! The authentication step alone, key vs Basic: reading the credential from the headers and
//! deciding the request, with the Basic password answered from the warm success cache (HMAC +
//! map lookup) as it is on every request after a client's first. The end-to-end comparison in
//! requests per second is `benches/basic_vs_key.sh`.
//!
//! `cargo bench --bench basic_auth`

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;

use base64::Engine as _;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use apiward::auth::password::{PasswordVerifier, hash_password};
use apiward::auth::{self, Outcome, RequestFacts, credential};

const KEY: &str = "aw_BENCHkeyNOTsecret0123456789abcdefghijklmnop";
const PASSWORD: &str = "Bench-pass-2026";

fn config() -> String {
    let digest = apiward::snapshot::KeyDigest::of(KEY).to_hex();
    let hash = hash_password(PASSWORD).expect("hash");
    format!(
        r#"
[upstreams.echo]
url = "builtin:echo"

[[routes]]
prefix = "/bench/"
upstream = "echo"

[groups.bench]
allow = [{{ path = "/bench/**", verbs = ["view"] }}]

[users."key-user@bench.local"]
status = "active"
group = "bench"
remote_addresses = "127.0.0.1"
keys = [{{ sha256 = "{digest}", prefix = "aw_BENCH" }}]

[users."basic-user@bench.local"]
status = "active"
group = "bench"
remote_addresses = "127.0.0.1"
password_hash = "{hash}"
"#
    )
}

fn headers(name: &str, value: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_bytes(name.as_bytes()).expect("name"),
        HeaderValue::from_str(value).expect("value"),
    );
    h
}

fn bench_credentials(c: &mut Criterion) {
    let snapshot = apiward::config::compile(Path::new("bench.toml"), &config()).expect("compiles");
    let verifier = PasswordVerifier::new();
    let client: IpAddr = "127.0.0.1".parse().expect("address");
    let key_header = snapshot.server.key_header.clone();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("basic-user@bench.local:{PASSWORD}"))
    );
    let by_key = headers("x-api-key", KEY);
    let by_password = headers("authorization", &basic);

    let authenticate = |h: &HeaderMap| {
        let mut scratch = String::new();
        let (credential, _) = credential::extract(h, &key_header, &mut scratch);
        let facts = RequestFacts {
            method: &Method::GET,
            path: "/bench/items/42",
            credential,
            certificate: None,
            client: client.into(),
            now: 1_800_000_000,
        };
        matches!(
            auth::decide(&snapshot, &facts, &verifier).outcome,
            Outcome::Allowed(_)
        )
    };
    assert!(authenticate(&by_key));
    // The first Basic request runs Argon2 and fills the cache; the benchmark measures the rest.
    assert!(authenticate(&by_password));

    let mut group = c.benchmark_group("authenticate");
    group.throughput(Throughput::Elements(1));
    group.bench_function("key", |b| b.iter(|| authenticate(black_box(&by_key))));
    group.bench_function("basic_cached", |b| {
        b.iter(|| authenticate(black_box(&by_password)))
    });
    group.finish();
}

criterion_group!(benches, bench_credentials);
criterion_main!(benches);
