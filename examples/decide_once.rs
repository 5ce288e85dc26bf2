//! Builds a snapshot of N users and runs the decision M times, for counting instructions with
//! callgrind; `benches/callgrind.sh` runs it and divides.
//!
//! cargo run --release --example decide_once -- --users 10 --iterations 1000

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;

use http::Method;

use apiward::auth::{self, Credential, NoPasswords, Outcome, RequestFacts};
use apiward::snapshot::Snapshot;

/// The only function callgrind collects in (`--toggle-collect=*decide_loop*`).
#[inline(never)]
fn decide_loop(snapshot: &Snapshot, facts: &RequestFacts<'_>, iterations: u64) -> u64 {
    let mut allowed = 0;
    for _ in 0..iterations {
        let d = auth::decide(black_box(snapshot), black_box(facts), &NoPasswords);
        allowed += u64::from(matches!(d.outcome, Outcome::Allowed(_)));
    }
    allowed
}

fn main() -> ExitCode {
    let mut users = 10usize;
    let mut iterations = 1000u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--users", Some(v)) => users = v as usize,
            ("--iterations", Some(v)) => iterations = v,
            _ => {
                eprintln!("usage: decide_once --users N --iterations M");
                return ExitCode::FAILURE;
            }
        }
    }
    let text = support::config_text(&support::Spec::in_memory(users));
    let snapshot = match apiward::config::compile(Path::new("bench.toml"), &text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    drop(text);
    let key = support::key(users / 2);
    let facts = RequestFacts {
        method: &Method::GET,
        path: support::REQUEST_PATH,
        credential: Credential::Key(&key),
        certificate: None,
        client: support::CLIENT.parse().expect("a literal address"),
        now: 1_800_000_000,
    };
    // One decision outside the collected function: lazy CPU-feature detection and the like.
    let _ = decide_loop(&snapshot, &facts, 0);
    let warm = auth::decide(&snapshot, &facts, &NoPasswords);
    if !matches!(warm.outcome, Outcome::Allowed(_)) {
        eprintln!("the benchmark request was refused: {:?}", warm.outcome);
        return ExitCode::FAILURE;
    }
    let allowed = decide_loop(&snapshot, &facts, iterations);
    println!("users={users} iterations={iterations} allowed={allowed}");
    ExitCode::SUCCESS
}
