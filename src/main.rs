//! The `apiward` command: run the gateway, check a configuration file, manage its users and keys,
//! explain a decision, and look at a running gateway.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};

use apiward::cli::config_path::ConfigPath;
use apiward::cli::report::{self, Exit, Report};
use apiward::config;
use apiward::config::reload::ConfigStore;
use apiward::observe::Telemetry;
use apiward::observe::logging::{self, DiagnosticsFormat};
use apiward::snapshot::WorkerRuntime;
use apiward::{Gateway, Options, Runtimes, StartError};

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
    /// SIGHUP reloads the configuration file (so does saving it); SIGUSR1 reopens an access_log
    /// file (after logrotate renamed it); SIGTERM or Ctrl-C drains and stops.
    ///
    /// Example: apiward run --config /etc/apiward/apiward.toml --log-format json
    Run {
        /// How diagnostics are written on stderr: text lines, or one JSON object per line for
        /// log shippers. (The request log is always JSON.)
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Validate a configuration file without starting anything (like `nginx -t`).
    ///
    /// Exit status 0 and a one-line summary when the file is valid; 2 and every error, in file
    /// order with file:line:column, when it is not.
    ///
    /// A file with nothing in it is refused. With --against, the file is also checked as a
    /// reload over that one would be: no route or no user where it has some (unless
    /// `[server] allow_empty = true`), or more of its users removed than `max_user_drop` allows.
    ///
    /// Example: apiward check --config /etc/apiward/apiward.toml.new --against /etc/apiward/apiward.toml
    Check {
        /// The configuration this file is to replace (the one deployed): report what a reload
        /// over it would refuse.
        #[arg(long, value_name = "FILE")]
        against: Option<PathBuf>,
    },
    /// Create, list, change and delete API users, and set their passwords.
    ///
    /// Each change edits the configuration file in place (comments and order kept), and only
    /// if the result passes `apiward check`. See `apiward users <command> --help`.
    Users(apiward::cli::UsersArgs),
    /// Issue, rotate and revoke API users' keys.
    ///
    /// A new key is printed once on stdout; the file keeps only its digest and prefix.
    Keys(apiward::cli::KeysArgs),
    /// Manage the admins of the console and the management API (admin listener only).
    ///
    /// Each admin has an Argon2id password (for the console) and `awa_` tokens (for the API).
    /// See `apiward admins <command> --help`.
    Admins(apiward::cli::AdminsArgs),
    /// Explain, step by step, why a request would be allowed or refused ("why do I get 403?").
    ///
    /// Runs the gateway's own decision on the file and prints each step: the key's user (by
    /// prefix only), expiry, status, source whitelist, path, route, group permission, verdict.
    /// Exit status 0 whatever the verdict; 2 for a file that does not load or bad arguments.
    ///
    /// Example: apiward explain --key - --source 192.0.2.10 --method POST --path /supporters/
    Explain(apiward::explain::ExplainArgs),
    /// Show what the running gateway is doing: requests/s, refusals by code, busiest users.
    ///
    /// Reads the admin listener's /metrics and /status (no Prometheus needed) and refreshes the
    /// screen every interval, like varnishstat; --once prints one screen, for scripts.
    ///
    /// Example: apiward top --admin 127.0.0.1:9901 --interval 2s
    Top {
        /// The admin listener (host:port); by default the file's `[server] admin_listen`.
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
        /// How long between screens (and, with --once, what the rates are measured over).
        #[arg(long, default_value = "1s", value_parser = parse_interval, value_name = "DURATION")]
        interval: Duration,
        /// Print one screen and exit.
        #[arg(long)]
        once: bool,
    },
    /// Ask the running gateway's admin listener for /healthz: exit 0 when it answers 200, 1
    /// otherwise (a container HEALTHCHECK, a monitoring probe).
    ///
    /// Example: apiward health --admin 127.0.0.1:9901
    Health {
        /// The admin listener (host:port); by default the file's `[server] admin_listen`.
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
    /// Print a shell completion script on stdout.
    ///
    /// Examples:
    ///   apiward completions bash > /etc/bash_completion.d/apiward
    ///   apiward completions zsh > "${fpath[1]}/_apiward"
    ///   apiward completions fish > ~/.config/fish/completions/apiward.fish
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff) on stdout.
    ///
    /// Example: apiward man > /usr/local/share/man/man1/apiward.1
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    match config::duration::parse_duration(text)? {
        d if d < Duration::from_millis(10) => Err("the interval is at least 10ms".into()),
        d => Ok(d),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The commands that need no configuration file.
    match &cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "apiward",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man => return man(),
        Command::Top { admin: Some(a), .. } | Command::Health { admin: Some(a) } => {
            return admin_command(&cli.command, a);
        }
        _ => {}
    }
    let config = ConfigPath::resolve(cli.config);
    if let Err(report) = config.require_existing() {
        return report.print();
    }
    match cli.command {
        Command::Run { log_format } => run(&config, log_format),
        Command::Check { against } => check(&config.path, against.as_deref()),
        Command::Users(args) => apiward::cli::run_users(&config.path, args),
        Command::Keys(args) => apiward::cli::run_keys(&config.path, args),
        Command::Admins(args) => apiward::cli::run_admins(&config.path, args),
        Command::Explain(args) => apiward::explain::run(&config.path, args),
        Command::Top { .. } | Command::Health { .. } => {
            match apiward::cli::admin_client::admin_address(None, &config.path) {
                Some(admin) => admin_command(&cli.command, &admin),
                None => Report::new(
                    Exit::Usage,
                    format!("{} has no [server] admin_listen to ask", config.path.display()),
                )
                .hint("pass --admin HOST:PORT, or set admin_listen (e.g. \"127.0.0.1:9901\") and restart the gateway")
                .print(),
            }
        }
        Command::Completions { .. } | Command::Man => ExitCode::SUCCESS,
    }
}

/// `top` and `health`, once the admin listener's address is known.
fn admin_command(command: &Command, admin: &str) -> ExitCode {
    let result = match command {
        Command::Top { interval, once, .. } => apiward::cli::top::run(admin, *interval, *once),
        _ => apiward::cli::admin_client::get_ok(admin, "/healthz").map(|body| {
            print!("{body}");
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => Report::new(Exit::Failure, e)
            .hint("is the gateway running, with admin_listen set to this address?")
            .print(),
    }
}

fn man() -> ExitCode {
    let mut page = Vec::new();
    if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut page) {
        return Report::new(Exit::Failure, format!("cannot render the manual page: {e}")).print();
    }
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&page).and_then(|()| out.flush());
    ExitCode::SUCCESS
}

fn check(path: &Path, against: Option<&Path>) -> ExitCode {
    let before = match against.map(config::load).transpose() {
        Ok(before) => before,
        Err(errors) => {
            let against = against.unwrap_or(path);
            return report::config_errors(
                against,
                &errors,
                "the file given to --against was not accepted, so nothing was compared",
            );
        }
    };
    let checked = config::load(path).and_then(|s| match &before {
        Some(old) => config::guard::admit(path, &s, &config::guard::Baseline::of(old), || {
            config::guard::removed_between(old, &s)
        })
        .map(|()| s),
        None => Ok(s),
    });
    match checked {
        Ok(s) => {
            if before.is_none() && !s.server.guard.allow_empty {
                if s.routes.is_empty() {
                    eprintln!(
                        "note: {} defines no route: every request is answered 404 (a reload over a configuration with routes refuses it unless [server] allow_empty = true)",
                        path.display()
                    );
                }
                if s.users.is_empty() {
                    eprintln!(
                        "note: {} defines no user: every credential is refused (a reload over a configuration with users refuses it unless [server] allow_empty = true)",
                        path.display()
                    );
                }
            }
            println!(
                "{}: ok: {} users, {} keys, {} groups, {} routes, {} upstreams",
                path.display(),
                s.users.len(),
                s.keys.len(),
                s.groups.len(),
                s.routes.len(),
                s.upstreams.len()
            );
            if let Some(tls) = &s.tls {
                for c in tls.certificates() {
                    println!(
                        "{}: certificate for {}, valid until {}",
                        c.cert_file.display(),
                        c.names.join(", "),
                        apiward::snapshot::rfc3339(c.not_after)
                    );
                }
                for warning in tls.expiry_warnings(config::reload::now_unix()) {
                    eprintln!("warning: {warning}");
                }
            }
            ExitCode::SUCCESS
        }
        Err(errors) => report::config_errors(path, &errors, "the file was not accepted"),
    }
}

fn run(config: &ConfigPath, log_format: LogFormat) -> ExitCode {
    let path = config.path.as_path();
    // The first load, through the same pipeline as every reload. The worker count and the log
    // destination come from it, so it happens before the runtime and the logger exist.
    let store = match ConfigStore::open(path) {
        Ok(store) => store,
        Err(errors) => return report::config_errors(path, &errors, "the gateway was not started"),
    };
    let server = store.load().server.clone();
    let format = match log_format {
        LogFormat::Text => DiagnosticsFormat::Text,
        LogFormat::Json => DiagnosticsFormat::Json,
    };
    if let Err(e) = logging::init(format) {
        return Report::new(Exit::Failure, e).print();
    }
    tracing::info!(config = %path.display(), from = %config.source, "configuration file");
    config::reload::warn_of_expiry(&store);
    // One worker runs on a current-thread runtime: the multi-thread scheduler's parking and
    // waking costs about 3 µs of kernel time per request even with a single worker
    // (docs/benchmarks.md). More workers are, by default, threads of their own, each with a
    // current-thread runtime and a listening socket (the gateway starts them); this thread's
    // runtime then keeps the background work. `worker_runtime = "shared"` runs them all on one
    // multi-thread runtime instead. Compiling a reloaded file runs on the blocking pool.
    let runtime = if server.workers == 1 || server.worker_runtime == WorkerRuntime::PerWorker {
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
        let usr1 = usr1_signal();
        let options = Options {
            request_log: true,
            runtimes: Runtimes::FromConfig,
            ..Options::default()
        };
        let gateway = match Gateway::start_with_store(store, None, options).await {
            Ok(g) => g,
            Err(e) => return start_failure(path, &e).print(),
        };
        reopen_on_sigusr1(usr1, Arc::clone(gateway.telemetry()));
        stop.await;
        gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// Why the gateway did not start, with what to do about it.
fn start_failure(path: &Path, e: &StartError) -> Report {
    match e {
        StartError::Config(errors) => Report::new(
            Exit::Usage,
            errors
                .0
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\nerror: "),
        ),
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

/// Listens for SIGUSR1 from now on (before the gateway opens the log, so that a rotation's signal
/// never finds the default action, which ends the process).
#[cfg(unix)]
fn usr1_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::user_defined1()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGUSR1; the access log is not reopened on it");
            None
        }
    }
}

#[cfg(not(unix))]
fn usr1_signal() -> Option<()> {
    None
}

/// Reopens the access_log file on each SIGUSR1 (logrotate's `postrotate`).
#[cfg(unix)]
fn reopen_on_sigusr1(usr1: Option<tokio::signal::unix::Signal>, telemetry: Arc<Telemetry>) {
    let Some(mut usr1) = usr1 else { return };
    tokio::spawn(async move {
        while usr1.recv().await.is_some() {
            match telemetry.reopen_request_log() {
                Some(Ok(path)) => {
                    tracing::info!(access_log = %path.display(), "SIGUSR1: access log reopened")
                }
                Some(Err(e)) => {
                    tracing::error!(error = %e, "SIGUSR1: cannot reopen the access log; lines still go to the file open before")
                }
                None => {
                    tracing::info!("SIGUSR1: the access log is not a file; nothing to reopen")
                }
            }
        }
    });
}

#[cfg(not(unix))]
fn reopen_on_sigusr1(_: Option<()>, _: Arc<Telemetry>) {}

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
