//! Which configuration file a command works on: `--config`, else `$APIWARD_CONFIG`, else
//! `config/apiward.toml` under the current directory when there is one (a checkout), else
//! `/etc/apiward/apiward.toml` (an installed gateway); and the one message for a missing file.

use std::fmt;
use std::path::PathBuf;

use super::report::{Exit, Report};

/// The file a checkout ships (the README runs the gateway from one).
pub const CHECKOUT_CONFIG: &str = "config/apiward.toml";
/// Where an installed gateway's file is (the systemd unit and the Dockerfile in deploy/).
pub const SYSTEM_CONFIG: &str = "/etc/apiward/apiward.toml";
/// The environment variable naming the file when `--config` does not.
pub const CONFIG_ENV: &str = "APIWARD_CONFIG";

/// Where the path came from, for saying which file was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathSource {
    Flag,
    Environment,
    Checkout,
    System,
}

impl fmt::Display for PathSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathSource::Flag => "--config",
            PathSource::Environment => "$APIWARD_CONFIG",
            PathSource::Checkout => "the default, ./config/apiward.toml",
            PathSource::System => "the default, /etc/apiward/apiward.toml",
        })
    }
}

/// The configuration file chosen for a command.
#[derive(Debug, Clone)]
pub struct ConfigPath {
    pub path: PathBuf,
    pub source: PathSource,
}

impl ConfigPath {
    /// Chooses the file: the flag, the environment, then the first default that exists (the
    /// system one when neither does, so that the error names where an installed file belongs).
    pub fn resolve(flag: Option<PathBuf>) -> ConfigPath {
        let env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
        match (flag, env) {
            (Some(path), _) => ConfigPath {
                path,
                source: PathSource::Flag,
            },
            (None, Some(path)) => ConfigPath {
                path: path.into(),
                source: PathSource::Environment,
            },
            (None, None) if std::path::Path::new(CHECKOUT_CONFIG).is_file() => ConfigPath {
                path: CHECKOUT_CONFIG.into(),
                source: PathSource::Checkout,
            },
            (None, None) => ConfigPath {
                path: SYSTEM_CONFIG.into(),
                source: PathSource::System,
            },
        }
    }

    /// The one message for a file that is not there, whichever command wanted it (exit code 2).
    pub fn require_existing(&self) -> Result<(), Report> {
        match std::fs::metadata(&self.path) {
            Ok(m) if m.is_dir() => Err(Report::new(
                Exit::Usage,
                format!(
                    "the configuration file {} is a directory (from {})",
                    self.path.display(),
                    self.source
                ),
            )
            .hint(format!(
                "name the file inside it, e.g. --config {}",
                self.path.join("apiward.toml").display()
            ))),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Report::new(
                Exit::Usage,
                format!(
                    "the configuration file {} does not exist (from {})",
                    self.path.display(),
                    self.source
                ),
            )
            .hint(match self.source {
                PathSource::Flag | PathSource::Environment => {
                    "check the path, or create the file (config/apiward.toml in the source is a commented example)".to_string()
                }
                PathSource::Checkout | PathSource::System => format!(
                    "pass --config PATH or set {CONFIG_ENV}; without either, ./{CHECKOUT_CONFIG} is used when it exists, else {SYSTEM_CONFIG}"
                ),
            })),
            // Unreadable for another reason (permissions): the command's own read says why.
            Err(_) => Ok(()),
        }
    }
}
