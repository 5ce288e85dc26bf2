//! Where the gateway's two kinds of lines go: diagnostics (start-up, reloads, warnings) on stderr
//! as text or JSON, and the request log, one JSON line per request, to `[server] access_log`
//! through a non-blocking writer; a file there is reopened on request (SIGUSR1, for logrotate).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tracing_appender::non_blocking::WorkerGuard;

use crate::snapshot::AccessLogTarget;

/// How diagnostics are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiagnosticsFormat {
    /// One human-readable line per event (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line, for log shippers (journald, Fluent Bit, Vector, Loki).
    Json,
}

/// Keeps the request-log writer flushing; dropping it flushes what is buffered.
pub struct Logging {
    _flusher: Option<WorkerGuard>,
    access_file: Option<AccessFile>,
}

impl Logging {
    /// Reopens the request-log file at its path (after logrotate renamed it). `None` when the
    /// request log is not a file; an error leaves the current file in use.
    pub fn reopen_access_log(&self) -> Option<Result<PathBuf, std::io::Error>> {
        let file = self.access_file.as_ref()?;
        Some(file.reopen().map(|()| file.path.clone()))
    }
}

/// Installs the global subscriber. Diagnostics honour `APIWARD_LOG` (`info` by default).
pub fn init(access_log: &AccessLogTarget, format: DiagnosticsFormat) -> Result<Logging, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let access_target = super::ACCESS_TARGET;
    let diagnostics_filter = tracing_subscriber::EnvFilter::try_from_env("APIWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
        .add_directive(
            format!("{access_target}=off")
                .parse()
                .map_err(|e| format!("{e}"))?,
        );
    let diagnostics = match format {
        DiagnosticsFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(diagnostics_filter)
            .boxed(),
        DiagnosticsFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(diagnostics_filter)
            .boxed(),
    };
    let mut access_file = None;
    let (writer, flusher) = match access_log {
        AccessLogTarget::Off => (None, None),
        AccessLogTarget::Stdout => {
            let (w, g) = tracing_appender::non_blocking(std::io::stdout());
            (Some(w), Some(g))
        }
        AccessLogTarget::File(path) => {
            let file = AccessFile::open(path)
                .map_err(|e| format!("cannot open access_log {}: {e}", path.display()))?;
            let (w, g) = tracing_appender::non_blocking(file.clone());
            access_file = Some(file);
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
    Ok(Logging {
        _flusher: flusher,
        access_file,
    })
}

/// The request-log file, shared by the writer thread and whoever reopens it.
#[derive(Clone)]
struct AccessFile {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl AccessFile {
    fn open(path: &Path) -> std::io::Result<AccessFile> {
        Ok(AccessFile {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(open_append(path)?)),
        })
    }

    /// Opens the path again and writes there from the next line on; the old file is closed once
    /// what was written to it is flushed.
    fn reopen(&self) -> std::io::Result<()> {
        let fresh = open_append(&self.path)?;
        let mut current = self.file.lock().unwrap_or_else(|p| p.into_inner());
        current.flush()?;
        *current = fresh;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl Write for AccessFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.lock().unwrap_or_else(|p| p.into_inner()).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_file_gets_the_lines_written_after_the_rename() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let file = AccessFile::open(&path).unwrap();
        let mut writer = file.clone();
        writer.write_all(b"one\n").unwrap();
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        writer.write_all(b"two\n").unwrap();
        file.reopen().unwrap();
        writer.write_all(b"three\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("access.log.1")).unwrap(),
            "one\ntwo\n"
        );
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "three\n");
    }
}
