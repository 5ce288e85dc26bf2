//! Where the gateway's two kinds of lines go: diagnostics (start-up, reloads, warnings) on stderr
//! as text or JSON, and the request log, one JSON line per request, to `[server] access_log`
//! (written by `request_log`); a file there is reopened on request (SIGUSR1, for logrotate).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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

/// Installs the global subscriber for diagnostics, which honour `APIWARD_LOG` (`info` by
/// default). The request log is not among them: the gateway writes it itself.
pub fn init(format: DiagnosticsFormat) -> Result<(), String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let diagnostics_filter = tracing_subscriber::EnvFilter::try_from_env("APIWARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
    tracing_subscriber::registry()
        .with(diagnostics)
        .try_init()
        .map_err(|e| format!("cannot install the diagnostics logger: {e}"))
}

/// Where the request log's lines are written, and the file to reopen, when it is one.
pub struct RequestLogDestination {
    pub writer: Box<dyn Write + Send>,
    pub file: Option<AccessFile>,
}

/// Opens the `[server] access_log` destination: `None` for `"off"`. A file is opened for
/// appending, created if missing.
pub fn open_request_log(
    target: &AccessLogTarget,
) -> std::io::Result<Option<RequestLogDestination>> {
    Ok(match target {
        AccessLogTarget::Off => None,
        AccessLogTarget::Stdout => Some(RequestLogDestination {
            writer: Box::new(std::io::stdout()),
            file: None,
        }),
        AccessLogTarget::File(path) => {
            let file = AccessFile::open(path)?;
            Some(RequestLogDestination {
                writer: Box::new(file.clone()),
                file: Some(file),
            })
        }
    })
}

/// The request-log file, shared by the writer thread and whoever reopens it.
#[derive(Clone)]
pub struct AccessFile {
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

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the path again and writes there from the next batch of lines on; the old file is
    /// closed once what was written to it is flushed.
    pub fn reopen(&self) -> std::io::Result<()> {
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
