//! What every command tells the operator when it cannot do what was asked: `error: <what>` on
//! stderr, then `hint: <what to do>` where there is one, and the documented exit codes
//! (0 done, 1 a failure while running, 2 a usage error or a configuration that does not load).

use std::fmt;
use std::path::Path;
use std::process::ExitCode;

use crate::config::ConfigErrors;

/// The exit codes, documented in docs/operations.md and `apiward --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// A failure while running: a port in use, a file that cannot be written, a closed pipe.
    Failure = 1,
    /// Bad arguments, or a configuration file that is missing or does not validate.
    Usage = 2,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(e as u8)
    }
}

/// One thing that went wrong, ready to print.
#[derive(Debug)]
pub struct Report {
    pub error: String,
    pub hint: Option<String>,
    pub exit: Exit,
}

impl Report {
    pub fn new(exit: Exit, error: impl fmt::Display) -> Report {
        Report {
            error: error.to_string(),
            hint: None,
            exit,
        }
    }

    pub fn hint(mut self, hint: impl fmt::Display) -> Report {
        self.hint = Some(hint.to_string());
        self
    }

    /// Prints it on stderr and gives the exit code.
    pub fn print(&self) -> ExitCode {
        eprint!("{self}");
        self.exit.into()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.error)?;
        if let Some(hint) = &self.hint {
            writeln!(f, "hint: {hint}")?;
        }
        Ok(())
    }
}

/// A configuration that did not load: one `error:` line per problem, in file order, then what
/// the command did about it. Exit code 2.
pub fn config_errors(path: &Path, errors: &ConfigErrors, consequence: &str) -> ExitCode {
    let mut out = String::new();
    for e in &errors.0 {
        out.push_str(&format!("error: {e}\n"));
    }
    let n = errors.0.len();
    let noun = if n == 1 { "error" } else { "errors" };
    out.push_str(&format!(
        "hint: {}: {n} {noun}; {consequence}: fix {} and run `apiward check` again\n",
        path.display(),
        if n == 1 { "it" } else { "them" }
    ));
    eprint!("{out}");
    Exit::Usage.into()
}
