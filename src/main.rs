//! The `apiward` command: run the gateway, or check a configuration file.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use apiward::cli::config_path::ConfigPath;
use apiward::cli::report::{self, Exit, Report};
use apiward::config;
use apiward::config::reload::ConfigStore;
use apiward::snapshot::AccessLogTarget;
use apiward::{Gateway, Options, StartError};
use tracing_appender::non_blocking::WorkerGuard;

#[derive(Parser)]
#[command(
    name = "apiward",
    version,
    about = "An authenticating reverse proxy for API users",
    after_help = "\
Configuration file: --config PATH, else $APIWARD_CONFIG, else ./config/apiward.toml when it
exists (a checkout), else /etc/apiward/apiward.toml.

Exit status: 0 done; 1 a failure while running (a port in use, a file that cannot be written);
2 a usage error, or a configuration file that is missing or does not validate.
Messages go to stderr as `error: <what>`, followed by `hint: <what to do>` where there is one."
)]
struct Cli {
    /// The configuration file (default: $APIWARD_CONFIG, ./config/apiward.toml, or
    /// /etc/apiward/apiward.toml, the first that is set or exists).
    #[arg(long, short, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    ///
    /// Example: apiward run --config /etc/apiward/apiward.toml
    Run,
    /// Validate a configuration file without starting anything (like `nginx -t`).
    ///
    /// Exit status 0 and a one-line summary when the file is valid; 2 and every error, in file
    /// order with file:line:column, when it is not.
    ///
    /// Example: apiward check --config /etc/apiward/apiward.toml
    Check,
    /// Create, list, change and delete API users, and set their passwords.
    ///
    /// Each change edits the configuration file in place (comments and order kept), and only
    /// if the result passes `apiward check`. See `apiward users <command> --help`.
    Users(apiward::cli::UsersArgs),
    /// Issue, rotate and revoke API users' keys.
    ///
    /// A new key is printed once on stdout; the file keeps only its digest and prefix.
    Keys(apiward::cli::KeysArgs),
    /// Explain, step by step, why a request would be allowed or refused ("why do I get 403?").
    ///
    /// Runs the gateway's own decision on the file and prints each step: the key's user (by
    /// prefix only), expiry, status, source whitelist, path, route, group permission, verdict.
    /// Exit status 0 whatever the verdict; 2 for a file that does not load or bad arguments.
    ///
    /// Example: apiward explain --key - --source 192.0.2.10 --method POST --path /supporters/
    Explain(apiward::explain::ExplainArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = ConfigPath::resolve(cli.config);
    if let Err(report) = config.require_existing() {
        return report.print();
    }
    match cli.command {
        Command::Run => run(&config),
        Command::Check => check(&config.path),
        Command::Users(args) => apiward::cli::run_users(&config.path, args),
        Command::Keys(args) => apiward::cli::run_keys(&config.path, args),
        Command::Explain(args) => apiward::explain::run(&config.path, args),
    }
}

/// Diagnostics go to stderr (`APIWARD_LOG` sets the level, `info` by default); the request log,
/// one JSON line per request, goes to the `[server] access_log` destination through a
/// non-blocking writer, so a slow disk or pipe never stalls requests (lines are dropped instead).
fn init_logging(access_log: &AccessLogTarget) -> Result<Option<WorkerGuard>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let access_target = apiward::observe::ACCESS_TARGET;
    let diagnostics_filter = tracing_subscriber::EnvFilter::try_from_env("APIWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(
            format!("{access_target}=off")
                .parse()
                .map_err(|e| format!("{e}"))?,
        );
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(diagnostics_filter);
    let (writer, guard) = match access_log {
        AccessLogTarget::Off => (None, None),
        AccessLogTarget::Stdout => {
            let (w, g) = tracing_appender::non_blocking(std::io::stdout());
            (Some(w), Some(g))
        }
        AccessLogTarget::File(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open access_log {}: {e}", path.display()))?;
            let (w, g) = tracing_appender::non_blocking(file);
            (Some(w), Some(g))
        }
    };
    let access = writer.map(|w| {
        tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_target(false)
            .with_level(false)
            .with_writer(w)
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target(access_target, tracing::Level::INFO),
            )
    });
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(access)
        .init();
    Ok(guard)
}

fn check(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(s) => {
            println!(
                "{}: ok: {} users, {} keys, {} groups, {} routes, {} upstreams",
                path.display(),
                s.users.len(),
                s.keys.len(),
                s.groups.len(),
                s.routes.len(),
                s.upstreams.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => report::config_errors(path, &errors, "the file was not accepted"),
    }
}

fn run(config: &ConfigPath) -> ExitCode {
    let path = config.path.as_path();
    // The first load, through the same pipeline as every reload. The worker count and the log
    // destination come from it, so it happens before the runtime and the logger exist.
    let store = match ConfigStore::open(path) {
        Ok(store) => store,
        Err(errors) => return report::config_errors(path, &errors, "the gateway was not started"),
    };
    let server = store.load().server.clone();
    let _log_flusher = match init_logging(&server.access_log) {
        Ok(guard) => guard,
        Err(e) => return Report::new(Exit::Failure, e).print(),
    };
    tracing::info!(config = %path.display(), from = %config.source, "configuration file");
    // One worker runs on a current-thread runtime: the multi-thread scheduler's parking and
    // waking costs about 3 µs of kernel time per request even with a single worker
    // (docs/benchmarks.md). Compiling a reloaded file still runs on the blocking pool.
    let runtime = if server.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(server.workers)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            return Report::new(Exit::Failure, format!("cannot start the runtime: {e}")).print();
        }
    };
    runtime.block_on(async {
        // Listen for SIGTERM before the port opens: a supervisor that stops the gateway as soon
        // as it accepts connections must get a clean exit, not the signal's default (death).
        let stop = stop_signal();
        let gateway = match Gateway::start_with_store(store, None, Options::default()).await {
            Ok(g) => g,
            Err(e) => return start_failure(path, &e).print(),
        };
        stop.await;
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Why the gateway did not start, with what to do about it.
fn start_failure(path: &Path, e: &StartError) -> Report {
    match e {
        StartError::Config(errors) => Report::new(Exit::Usage, errors),
        StartError::Bind { addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => {
            Report::new(Exit::Failure, e).hint(format!(
                "another process listens on {addr} (`ss -ltnp 'sport = :{}'` shows which): stop it, or change `listen`/`admin_listen` in [server] of {}",
                addr.port(),
                path.display()
            ))
        }
        StartError::Bind { addr, source }
            if source.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            Report::new(Exit::Failure, e).hint(format!(
                "ports below 1024 need CAP_NET_BIND_SERVICE (deploy/apiward.service grants it), or listen on a port above 1023 instead of {addr}"
            ))
        }
        _ => Report::new(Exit::Failure, e),
    }
}

/// Registers for SIGTERM now (the handler exists from this call on) and returns a future that
/// ends on SIGTERM or Ctrl-C.
fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let term = {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::terminate()).ok()
    };
    async move {
        #[cfg(unix)]
        if let Some(mut term) = term {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = tokio::signal::ctrl_c() => tracing::info!("interrupt received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}
