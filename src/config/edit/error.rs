//! Why an edit of the file was not made: the one error type of `config::edit`, shared by the
//! edits and the writing of the file.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::ConfigErrors;

/// Why an edit of the file was not made. Each names the file or the user and what to do.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("no user {id:?} in {}: `apiward users list` shows the ids", path.display())]
    NoSuchUser { id: String, path: PathBuf },
    #[error("the configuration file is laid out in a way this command cannot edit: {0}")]
    Layout(String),
    #[error("the edited file would not pass `apiward check`, so it was not written:\n{0}")]
    WouldNotPass(ConfigErrors),
    #[error(
        "the edit was not written: it would leave a configuration that serves less than intended:\n{0}"
    )]
    Guarded(ConfigErrors),
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} changed while this command was editing it: nothing was written; run the command again", .0.display())]
    ChangedMeanwhile(PathBuf),
    #[error("another edit of {} has held its lock for {}s: nothing was written; run the command again once it is done", path.display(), waited.as_secs())]
    Locked { path: PathBuf, waited: Duration },
    #[error("{} is read-only (a Kubernetes ConfigMap mount, or no write permission): nothing was written; change the ConfigMap (or the file where it is made) instead", .0.display())]
    ReadOnly(PathBuf),
    #[error("{} changed since it was read (its ETag is no longer the one given in If-Match): nothing was written; read it again and redo the change", .0.display())]
    Stale(PathBuf),
    #[error(
        "a user {0:?} already exists: choose another id, or change it with `apiward users set`"
    )]
    DuplicateUser(String),
    #[error("{0}")]
    BadUserId(String),
    #[error(
        "group {group:?} is not defined: use one of: {known} (or add [groups.{group}] to the file)"
    )]
    UnknownGroup { group: String, known: String },
    #[error("{0}")]
    KeySelection(String),
    #[error("no admin {id:?} in {}: `apiward admins list` shows the ids", path.display())]
    NoSuchAdmin { id: String, path: PathBuf },
    #[error("an admin {0:?} already exists: choose another id")]
    DuplicateAdmin(String),
    #[error(transparent)]
    Random(#[from] crate::keys::RandomSourceError),
}
