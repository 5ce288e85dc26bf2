//! A running gateway: binds the public and admin listeners, starts the reload pipeline, the
//! proxy's workers and the admin listener, and shuts them down in order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::admin::{self, AdminState};
use crate::config::ConfigErrors;
use crate::config::reload::{self, ConfigStore, ReloadOutcome, ReloadTrigger};
use crate::limits::Limiter;
use crate::observe::Telemetry;
use crate::proxy;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{0}")]
    Worker(proxy::WorkerError),
    #[error("cannot watch the configuration file: {0}")]
    Watch(#[from] notify::Error),
    #[error("cannot open access_log {target:?}: {source}")]
    RequestLog {
        target: crate::snapshot::AccessLogTarget,
        source: std::io::Error,
    },
}

/// How `start` runs the gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// Reload when the configuration file changes.
    pub watch_config: bool,
    /// Reload on SIGHUP.
    pub reload_on_sighup: bool,
    /// Write the request log to `[server] access_log`, as `apiward run` does. Off by default, so
    /// that gateways embedded in tests and benchmarks write no lines to their stdout unasked.
    pub request_log: bool,
    /// Where the public listener's connections are served.
    pub runtimes: Runtimes,
}

/// Where the public listener's connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Runtimes {
    /// On the runtime that calls `start`, whatever its kind (embedding and tests; `apiward run`
    /// with one worker, or with `worker_runtime = "shared"`, for which it builds that runtime
    /// with `workers` threads).
    #[default]
    Caller,
    /// As `[server] workers` and `worker_runtime` say: with more than one worker and
    /// `"per_worker"`, one thread per worker, each a current-thread runtime with its own
    /// listening socket and upstream pools; the caller's runtime keeps the background work
    /// (reloads, health checks, the admin listener, signals). Otherwise as `Caller`.
    FromConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            watch_config: true,
            reload_on_sighup: true,
            request_log: false,
            runtimes: Runtimes::Caller,
        }
    }
}

/// A running gateway.
pub struct Gateway {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    store: Arc<ConfigStore>,
    admin: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
    serving: proxy::Serving,
    reload_triggers: mpsc::UnboundedSender<ReloadTrigger>,
    _watcher: Option<Arc<reload::ConfigWatch>>,
}

impl Gateway {
    /// Loads the configuration, binds (or adopts) the listener and starts serving.
    pub async fn start(
        config_path: &Path,
        listener: Option<std::net::TcpListener>,
        options: Options,
    ) -> Result<Gateway, StartError> {
        let store = ConfigStore::open(config_path).map_err(StartError::Config)?;
        Gateway::start_with_store(store, listener, options).await
    }

    /// Starts serving a configuration already loaded by `ConfigStore::open`.
    pub async fn start_with_store(
        store: Arc<ConfigStore>,
        listener: Option<std::net::TcpListener>,
        options: Options,
    ) -> Result<Gateway, StartError> {
        let config_path = store.path().to_path_buf();
        let config_path = config_path.as_path();
        let settings = store.load().server.clone();
        let layout = match options.runtimes {
            Runtimes::FromConfig
                if settings.workers > 1
                    && settings.worker_runtime == crate::snapshot::WorkerRuntime::PerWorker =>
            {
                proxy::Layout::Threads
            }
            Runtimes::FromConfig | Runtimes::Caller => proxy::Layout::Caller,
        };
        let sockets = match layout {
            proxy::Layout::Threads => settings.workers,
            proxy::Layout::Caller => 1,
        };
        let listeners =
            proxy::Listeners::bind(settings.listen, listener, sockets).map_err(worker_error)?;
        let local_addr = listeners.local_addr();

        let admin_listener = match settings.admin_listen {
            Some(addr) => Some(
                proxy::bind(addr, false)
                    .and_then(TcpListener::from_std)
                    .map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let request_log_error = |source| StartError::RequestLog {
            target: settings.access_log.clone(),
            source,
        };
        let destination = if options.request_log {
            crate::observe::logging::open_request_log(&settings.access_log)
                .map_err(request_log_error)?
        } else {
            None
        };
        let telemetry = Arc::new(match destination {
            Some(d) => Telemetry::with_request_log(d).map_err(request_log_error)?,
            None => Telemetry::new(),
        });
        telemetry.metrics.set_generation(store.generation());
        telemetry.recent.follow(&store.load());
        let (reload_triggers, triggers_rx) = mpsc::unbounded_channel();
        let watcher = if options.watch_config {
            let watcher = Arc::new(reload::watch_file(config_path, reload_triggers.clone())?);
            // The PEM files of [server.tls] and of the upstreams reload the configuration too.
            watcher.follow(&store.load().tls_files);
            Some(watcher)
        } else {
            None
        };
        // Limit state outlives every snapshot; it follows each one applied (limits/mod.rs).
        let limiter = Arc::new(Limiter::new());
        limiter.configure(&store.load());
        let reload_watcher = watcher.clone();
        let reload_store = Arc::clone(&store);
        let reload_telemetry = Arc::clone(&telemetry);
        let reload_limiter = Arc::clone(&limiter);
        tokio::spawn(reload::reload_loop(
            Arc::clone(&store),
            triggers_rx,
            move |outcome: &ReloadOutcome| {
                let current = reload_store.load();
                let applied = matches!(outcome, ReloadOutcome::Applied { .. });
                if applied {
                    reload_limiter.configure(&current);
                }
                reload_telemetry.reloaded(outcome, &current, reload_store.generation());
                if let (true, Some(w)) = (applied, &reload_watcher) {
                    w.follow(&current.tls_files);
                }
            },
        ));
        if options.reload_on_sighup {
            spawn_sighup_forwarder(reload_triggers.clone());
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = proxy::Shared::new(
            Arc::clone(&store),
            Arc::clone(&telemetry),
            Arc::clone(&limiter),
        );
        let (proxy, serving) =
            proxy::start(&shared, listeners, layout, &shutdown_rx).map_err(worker_error)?;
        drop(shutdown_rx);
        // The admin listener outlives the public one during shutdown, so /readyz can say 503
        // while requests drain.
        let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
        let admin = Arc::new(AdminState {
            store: Arc::clone(&store),
            telemetry: Arc::clone(&telemetry),
            started: Instant::now(),
            public_addr: local_addr,
            ready: AtomicBool::new(true),
            proxy,
            limits: Arc::clone(&limiter),
        });
        if let Some(listener) = admin_listener {
            tokio::spawn(admin::serve(
                listener,
                Arc::clone(&admin),
                admin_shutdown_rx,
            ));
        }
        // What serves, as it is: `per_worker` threads, or the caller's runtime, which is the
        // `shared` kind when it has several threads.
        let (workers, worker_runtime) = match layout {
            proxy::Layout::Threads => (sockets, "per_worker"),
            proxy::Layout::Caller => {
                let runtime = tokio::runtime::Handle::current();
                match runtime.runtime_flavor() {
                    tokio::runtime::RuntimeFlavor::CurrentThread => (1, "current_thread"),
                    _ => (runtime.metrics().num_workers(), "shared"),
                }
            }
        };
        tracing::info!(
            listen = %local_addr,
            workers,
            worker_runtime = %worker_runtime,
            admin = %admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            config = %config_path.display(),
            users = store.load().users.len(),
            "apiward is serving"
        );
        Ok(Gateway {
            local_addr,
            admin_addr,
            store,
            admin,
            shutdown,
            admin_shutdown,
            serving,
            reload_triggers,
            _watcher: watcher,
        })
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Metrics, key usage and request ids of this gateway.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.admin.telemetry
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Asks for a reload, as SIGHUP does.
    pub fn request_reload(&self) {
        let _ = self.reload_triggers.send(ReloadTrigger::Signal);
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_timeout`), writes out
    /// the request log, and returns.
    pub async fn shutdown(self) {
        self.admin.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        self.serving.finished().await;
        // Every request has ended: its line is buffered; write them all out.
        let telemetry = Arc::clone(&self.admin.telemetry);
        let limit = self
            .store
            .load()
            .server
            .shutdown_timeout
            .max(Duration::from_secs(1));
        let _ = tokio::task::spawn_blocking(move || telemetry.close_request_log(limit)).await;
        let _ = self.admin_shutdown.send(true);
    }
}

fn worker_error(e: proxy::WorkerError) -> StartError {
    match e {
        proxy::WorkerError::Bind { addr, source } => StartError::Bind { addr, source },
        e @ proxy::WorkerError::Start { .. } => StartError::Worker(e),
    }
}

#[cfg(unix)]
fn spawn_sighup_forwarder(triggers: mpsc::UnboundedSender<ReloadTrigger>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    if triggers.send(ReloadTrigger::Signal).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by editing the file")
        }
    }
}

#[cfg(not(unix))]
fn spawn_sighup_forwarder(_: mpsc::UnboundedSender<ReloadTrigger>) {}
