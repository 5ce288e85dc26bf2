//! Writes a benchmark configuration of N users, the list of their keys, and optionally nginx's
//! equivalent maps; `benches/e2e.sh` runs it.
//!
//! cargo run --release --example gen_config -- --users 10000 --out FILE \
//!     --upstream http://127.0.0.1:PORT [--listen 127.0.0.1:PORT] [--workers N] \
//!     [--access-log off|stdout|PATH] [--keys FILE] [--nginx-maps FILE]

#[path = "../benches/support/mod.rs"]
mod support;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use support::Spec;

struct Args {
    users: usize,
    out: PathBuf,
    upstream: String,
    listen: String,
    workers: Option<usize>,
    access_log: Option<String>,
    keys: Option<PathBuf>,
    nginx_maps: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        users: 10_000,
        out: PathBuf::new(),
        upstream: "builtin:echo".into(),
        listen: "127.0.0.1:8080".into(),
        workers: None,
        access_log: None,
        keys: None,
        nginx_maps: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--users" => args.users = value()?.parse().map_err(|e| format!("--users: {e}"))?,
            "--out" => args.out = value()?.into(),
            "--upstream" => args.upstream = value()?,
            "--listen" => args.listen = value()?,
            "--workers" => {
                args.workers = Some(value()?.parse().map_err(|e| format!("--workers: {e}"))?)
            }
            "--access-log" => args.access_log = Some(value()?),
            "--keys" => args.keys = Some(value()?.into()),
            "--nginx-maps" => args.nginx_maps = Some(value()?.into()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.out.as_os_str().is_empty() {
        return Err("--out FILE is required".into());
    }
    if args.users == 0 {
        return Err("--users must be at least 1".into());
    }
    Ok(args)
}

fn run(args: &Args) -> std::io::Result<()> {
    let spec = Spec {
        users: args.users,
        upstream: &args.upstream,
        listen: &args.listen,
        workers: args.workers,
        access_log: args.access_log.as_deref(),
    };
    let mut out = BufWriter::new(File::create(&args.out)?);
    support::write_config(&mut out, &spec)?;
    out.flush()?;
    if let Some(path) = &args.keys {
        let mut out = BufWriter::new(File::create(path)?);
        for i in 0..args.users {
            writeln!(out, "{}", support::key(i))?;
        }
        out.flush()?;
    }
    if let Some(path) = &args.nginx_maps {
        let mut out = BufWriter::new(File::create(path)?);
        support::write_nginx_maps(&mut out, args.users)?;
        out.flush()?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gen_config: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen_config: {e}");
            ExitCode::FAILURE
        }
    }
}
