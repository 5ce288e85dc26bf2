//! Every change the console and the API make: an edit of the file through `config::edit` (the
//! CLI's validated, atomic edit), then a reload, answered only once the gateway serves it.

use http::StatusCode;

use super::context::Ctx;
use crate::config::edit::{ConfigFile, EditError, edit_file};
use crate::config::reload::{self, ReloadOutcome};

/// Why a change was not made (or not loaded), as an HTTP status, a code and a message.
#[derive(Debug)]
pub struct WriteFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl From<EditError> for WriteFailure {
    fn from(e: EditError) -> WriteFailure {
        let (status, code) = match &e {
            EditError::WouldNotPass(_)
            | EditError::Guarded(_)
            | EditError::BadUserId(_)
            | EditError::UnknownGroup { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config")
            }
            EditError::KeySelection(_) => (StatusCode::UNPROCESSABLE_ENTITY, "key_selection"),
            EditError::NoSuchUser { .. } | EditError::NoSuchAdmin { .. } => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            EditError::DuplicateUser(_) | EditError::DuplicateAdmin(_) => {
                (StatusCode::CONFLICT, "already_exists")
            }
            EditError::ReadOnly(_) => (StatusCode::CONFLICT, "read_only"),
            EditError::ChangedMeanwhile(_) | EditError::Locked { .. } => {
                (StatusCode::CONFLICT, "changed_meanwhile")
            }
            EditError::Stale(_) => (StatusCode::PRECONDITION_FAILED, "stale_etag"),
            EditError::Read { .. }
            | EditError::Syntax { .. }
            | EditError::Layout(_)
            | EditError::Write { .. }
            | EditError::Random(_) => (StatusCode::INTERNAL_SERVER_ERROR, "config_file_error"),
        };
        let message = match &e {
            // Exactly what `apiward check` prints: one file:line:col line per error.
            EditError::WouldNotPass(errors) | EditError::Guarded(errors) => errors.to_string(),
            _ => e.to_string(),
        };
        WriteFailure {
            status,
            code,
            message,
        }
    }
}

/// A change made and serving: its result and the file's new ETag.
pub struct Written<T> {
    pub value: T,
    pub etag: String,
}

/// Applies `change` to the file (conditionally on `if_match`), then reloads; returns once the
/// running gateway has loaded the result, so a key just created works on the next request.
pub async fn apply<T, F>(
    ctx: &Ctx,
    if_match: Option<String>,
    change: F,
) -> Result<Written<T>, WriteFailure>
where
    T: Send + 'static,
    F: FnMut(&mut ConfigFile) -> Result<T, EditError> + Send + 'static,
{
    let store = std::sync::Arc::clone(&ctx.state.store);
    let telemetry = std::sync::Arc::clone(&ctx.state.telemetry);
    let joined = tokio::task::spawn_blocking(move || {
        let edited = edit_file(store.path(), if_match.as_deref(), change)?;
        let outcome = reload::reload_now(&store);
        telemetry.reloaded(&outcome, &store.load(), store.generation());
        Ok::<_, EditError>((edited, outcome))
    })
    .await;
    let (edited, outcome) = match joined {
        Ok(result) => result?,
        Err(e) => {
            return Err(WriteFailure {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                code: "internal",
                message: format!("the edit task failed: {e}"),
            });
        }
    };
    match outcome {
        ReloadOutcome::Applied { .. }
        | ReloadOutcome::Unchanged
        | ReloadOutcome::BackInLine => Ok(Written {
            value: edited.value,
            etag: edited.etag,
        }),
        ReloadOutcome::Missing | ReloadOutcome::Refused(_) => Err(WriteFailure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "not_loaded",
            message: "the file was written, but was changed again (or removed) before the gateway could load it: see /status".into(),
        }),
    }
}
