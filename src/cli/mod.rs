//! `apiward users` and `apiward keys`: the API-user lifecycle as edits of the configuration file,
//! which stays the single source of truth (the running gateway picks each edit up on reload).
//!
//! Output contract: a secret made by a command (a key, a generated password) is printed once, on
//! stdout, alone on its line; everything meant for the operator goes to stderr, so
//! `KEY=$(apiward users add ...)` captures exactly the key.

pub mod admin_client;
mod admins;
mod certificates;
pub mod config_path;
mod keys;
mod last_used;
mod list;
pub mod password_policy;
pub mod report;
pub mod top;
mod users;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

use report::{Exit, Report};

/// `apiward users ...` (the file is the global `--config`).
#[derive(Debug, Args)]
pub struct UsersArgs {
    #[command(subcommand)]
    pub command: UsersCommand,
}

/// `apiward keys ...`
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// `apiward admins ...`
#[derive(Debug, Args)]
pub struct AdminsArgs {
    #[command(subcommand)]
    pub command: AdminsCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminsCommand {
    /// Create an admin of the console and the management API (no password or token yet).
    #[command(after_help = "\
Examples:
  apiward admins add ops@example.org
  apiward admins set-password ops@example.org
  TOKEN=$(apiward admins issue-token ops@example.org)")]
    Add {
        /// The admin's id, email-shaped.
        id: String,
    },
    /// List admins: whether each has a password, and its tokens by prefix.
    List {
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Delete an admin, its password and its tokens.
    Delete {
        /// The admin's id.
        id: String,
    },
    /// Set an admin's console password from stdin (stored as an Argon2id hash).
    #[command(after_help = "\
Examples:
  apiward admins set-password ops@example.org                 (prompts twice, without echo)
  printf '%s\\n' \"$PASSWORD\" | apiward admins set-password ops@example.org
  PASSWORD=$(apiward admins set-password ops@example.org --generate)

The same policy as users' passwords applies.")]
    SetPassword {
        /// The admin's id.
        id: String,
        /// Make a strong random password and print it once on stdout instead of reading one.
        #[arg(long)]
        generate: bool,
    },
    /// Issue a management-API token (awa_...) for an admin, printed once on stdout.
    #[command(after_help = "\
Examples:
  TOKEN=$(apiward admins issue-token ops@example.org)
  curl -H \"Authorization: Bearer $TOKEN\" http://127.0.0.1:9901/api/v1/users

Admin tokens work on the admin listener only; the public listener never accepts them.")]
    IssueToken {
        /// The admin's id.
        id: String,
    },
    /// Revoke one of an admin's tokens by its prefix (see `apiward admins list`).
    RevokeToken {
        /// The admin's id.
        id: String,
        /// The token's prefix, like awa_Xy12.
        #[arg(long, value_name = "PREFIX")]
        prefix: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Create an API user with a fresh key, printed once on stdout.
    #[command(after_help = "\
Examples:
  KEY=$(apiward users add billing-export@example.org --group manage-supporters \\
        --remote-addresses \"192.0.2.10~198.51.100.0/24\" --display-name \"Billing export\")
  apiward users add --generate-username --group read-only --remote-addresses \"*\" --expires 90d
  apiward users add pos@example.org --group read-only --remote-addresses 203.0.113.7 --no-key
      (then: apiward users set-password pos@example.org)

The key is printed on stdout, alone on its line, and nowhere else: the file keeps only its
SHA-256 digest and its first 8 characters. Everything else goes to stderr.")]
    Add(AddUser),
    /// List API users: status, group, addresses, keys (by prefix) and their dates.
    #[command(after_help = "\
Examples:
  apiward users list
  apiward users list --format json | jq '.[] | select(.status == \"active\") | .id'
  apiward users list --admin 127.0.0.1:9901     # with each key's last use, from the running gateway")]
    List {
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
        /// The running gateway's admin listener (host:port), asked when each key was last
        /// used; by default the file's `[server] admin_listen`, if any.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Change a user's status, group, addresses or names. Its keys stay valid.
    #[command(after_help = "\
Examples:
  apiward users set billing-export@example.org --status inactive
  apiward users set billing-export@example.org --group read-only --remote-addresses \"192.0.2.0/24~2001:db8::/32\"
  apiward users set billing-export@example.org --display-name \"Billing export (legacy)\" --description \"\"
An empty name or description removes it from the file.")]
    Set(SetUser),
    /// Delete a user and all its keys (asks for confirmation unless --yes).
    #[command(after_help = "\
Examples:
  apiward users delete billing-export@example.org
  apiward users delete billing-export@example.org --yes")]
    Delete {
        /// The user's id.
        id: String,
        /// Do not ask; required when stdin is not a terminal.
        #[arg(long, short)]
        yes: bool,
    },
    /// Set a user's Basic-auth password from stdin (stored as an Argon2id hash).
    #[command(after_help = "\
Examples:
  apiward users set-password pos@example.org                 (prompts twice, without echo)
  printf '%s\\n' \"$PASSWORD\" | apiward users set-password pos@example.org
  PASSWORD=$(apiward users set-password pos@example.org --generate)

Policy: at least 8 characters, at least one digit or non-alphanumeric character, and not
containing the id's local part (before '@') or the [server] organisation name.
The password is never read from the command line, where other users could see it.")]
    SetPassword {
        /// The user's id.
        id: String,
        /// Make a strong random password and print it once on stdout instead of reading one.
        #[arg(long)]
        generate: bool,
    },
    /// Record a client certificate that identifies the user over TLS (its SHA-256 fingerprint).
    #[command(after_help = "\
Example:
  apiward users add-certificate edge-device@example.org --cert device.pem

The certificate must be signed by the CA in [server.tls] client_ca to pass the handshake.
Only the fingerprint is stored; the certificate and its key stay with the client.")]
    AddCertificate {
        /// The user's id.
        id: String,
        /// The client certificate, PEM (the first certificate of the file is used).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct AddUser {
    /// The new user's id, email-shaped (it need not be a real mailbox).
    #[arg(
        required_unless_present = "generate_username",
        conflicts_with = "generate_username"
    )]
    pub id: Option<String>,
    /// Make an id, like apiuser-7f3k2q@apiward.local, for integrations that do not care.
    #[arg(long)]
    pub generate_username: bool,
    /// Its permission group (one of [groups.*]).
    #[arg(long)]
    pub group: String,
    /// Source addresses it may call from: '~'-separated addresses and CIDR blocks, or "*".
    #[arg(long, value_name = "a~b~c")]
    pub remote_addresses: String,
    #[arg(long)]
    pub display_name: Option<String>,
    #[arg(long)]
    pub first_name: Option<String>,
    #[arg(long)]
    pub last_name: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    #[arg(long, value_enum, default_value_t = Status::Active)]
    pub status: Status,
    /// The key expires after this long (e.g. 90d); by default it does not expire.
    #[arg(long, value_parser = parse_lifetime, value_name = "DURATION")]
    pub expires: Option<Duration>,
    /// Create the user without a key (for a password-only user).
    #[arg(long, conflicts_with = "expires")]
    pub no_key: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true))]
pub struct SetUser {
    /// The user's id.
    pub id: String,
    #[arg(long, value_enum, group = "change")]
    pub status: Option<Status>,
    #[arg(long, group = "change")]
    pub group: Option<String>,
    #[arg(long, value_name = "a~b~c", group = "change")]
    pub remote_addresses: Option<String>,
    #[arg(long, group = "change")]
    pub display_name: Option<String>,
    #[arg(long, group = "change")]
    pub first_name: Option<String>,
    #[arg(long, group = "change")]
    pub last_name: Option<String>,
    #[arg(long, group = "change")]
    pub description: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add another key to a user and print it once on stdout.
    #[command(after_help = "\
Examples:
  KEY=$(apiward keys issue billing-export@example.org)
  KEY=$(apiward keys issue billing-export@example.org --expires 90d)")]
    Issue {
        /// The user's id.
        id: String,
        /// The key expires after this long (e.g. 90d, 12h); by default it does not expire.
        #[arg(long, value_parser = parse_lifetime, value_name = "DURATION")]
        expires: Option<Duration>,
    },
    /// Replace a key with a new one; the old one keeps working for the grace period.
    #[command(after_help = "\
Examples:
  NEW=$(apiward keys rotate billing-export@example.org)                 (old key valid 24h more)
  NEW=$(apiward keys rotate billing-export@example.org --grace 1h --prefix aw_7Fq2x)
  NEW=$(apiward keys rotate billing-export@example.org --grace 0)       (old key refused at once)

With one valid key the user's key is rotated; with several, say which with --prefix.
The old key's `expires` is set to now + grace (never later than it already was);
--grace 0 removes it.")]
    Rotate {
        /// The user's id.
        id: String,
        /// How long the old key keeps working (0: revoke it now).
        #[arg(long, value_parser = parse_grace, default_value = "24h", value_name = "DURATION")]
        grace: Duration,
        /// Which key to rotate, by its prefix (see `apiward users list`).
        #[arg(long, value_name = "PREFIX")]
        prefix: Option<String>,
        /// The new key expires after this long; by default it does not expire.
        #[arg(long, value_parser = parse_lifetime, value_name = "DURATION")]
        expires: Option<Duration>,
    },
    /// Remove keys of a user: one by prefix, the expired ones, or all.
    #[command(after_help = "\
Examples:
  apiward keys revoke billing-export@example.org --prefix aw_7Fq2x
  apiward keys revoke billing-export@example.org --expired
  apiward keys revoke billing-export@example.org --all
Without an option, a user's only key is revoked; with several, say which.")]
    Revoke {
        /// The user's id.
        id: String,
        /// The key's prefix, as `apiward users list` shows it (its start is enough if unique).
        #[arg(long, value_name = "PREFIX", conflicts_with_all = ["all", "expired"])]
        prefix: Option<String>,
        /// Every key of the user.
        #[arg(long, conflicts_with = "expired")]
        all: bool,
        /// The keys whose expiry has passed (cleans up after rotations).
        #[arg(long)]
        expired: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Status {
    Active,
    Pending,
    Inactive,
}

impl From<Status> for crate::snapshot::UserStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Active => crate::snapshot::UserStatus::Active,
            Status::Pending => crate::snapshot::UserStatus::Pending,
            Status::Inactive => crate::snapshot::UserStatus::Inactive,
        }
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Pending => "pending",
            Status::Inactive => "inactive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

fn parse_lifetime(text: &str) -> Result<Duration, String> {
    match crate::config::duration::parse_duration(text)? {
        d if d.as_secs() == 0 => Err(
            "a key that expires after 0s would never work: give a positive duration such as 90d"
                .into(),
        ),
        d => Ok(d),
    }
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    crate::config::duration::parse_duration(text)
}

/// Why a command did not do what was asked. Each names the file or the user and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Edit(#[from] crate::config::edit::EditError),
    #[error("the password was refused: {0}")]
    Policy(#[from] password_policy::PolicyViolation),
    #[error("cannot read from stdin: {0}")]
    Stdin(String),
    #[error("the two passwords entered differ: nothing was changed")]
    PasswordMismatch,
    #[error("not confirmed: nothing was deleted{0}")]
    NotConfirmed(&'static str),
    #[error("the change was saved, but the {what} could not be printed ({source}): {remedy}")]
    SecretNotPrinted {
        what: &'static str,
        source: std::io::Error,
        remedy: String,
    },
    #[error(transparent)]
    Random(#[from] crate::keys::RandomSourceError),
    #[error(transparent)]
    Hash(#[from] crate::auth::password::HashError),
    #[error("{0}")]
    Certificate(String),
}

/// Runs `apiward users ...` on `config`; the exit code is 0 on success, else 1 or 2
/// (`CliError::exit`) with a message.
pub fn run_users(config: &Path, args: UsersArgs) -> ExitCode {
    report(users::run(config, args.command))
}

/// Runs `apiward admins ...` on `config`.
pub fn run_admins(config: &Path, args: AdminsArgs) -> ExitCode {
    report(admins::run(config, args.command))
}

/// Runs `apiward keys ...` on `config`.
pub fn run_keys(config: &Path, args: KeysArgs) -> ExitCode {
    report(keys::run(config, args.command))
}

impl CliError {
    /// 2 when what was asked cannot be done as asked (an unknown user, a bad argument, a file
    /// that would not validate); 1 when something failed while doing it.
    pub fn exit(&self) -> Exit {
        use crate::config::edit::EditError;
        match self {
            CliError::Edit(EditError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Exit::Usage
            }
            CliError::Edit(
                EditError::Read { .. }
                | EditError::Write { .. }
                | EditError::ChangedMeanwhile(_)
                | EditError::Locked { .. }
                | EditError::Random(_),
            )
            | CliError::Stdin(_)
            | CliError::SecretNotPrinted { .. }
            | CliError::Random(_)
            | CliError::Hash(_) => Exit::Failure,
            CliError::Edit(
                EditError::Syntax { .. }
                | EditError::NoSuchUser { .. }
                | EditError::Layout(_)
                | EditError::WouldNotPass(_)
                | EditError::Guarded(_)
                | EditError::ReadOnly(_)
                | EditError::Stale(_)
                | EditError::DuplicateUser(_)
                | EditError::BadUserId(_)
                | EditError::UnknownGroup { .. }
                | EditError::KeySelection(_)
                | EditError::NoSuchAdmin { .. }
                | EditError::DuplicateAdmin(_),
            )
            | CliError::Policy(_)
            | CliError::PasswordMismatch
            | CliError::Certificate(_)
            | CliError::NotConfirmed(_) => Exit::Usage,
        }
    }
}

/// Prints a secret made by a command on stdout, alone on its line. The file is already saved,
/// so a secret that cannot be printed (stdout closed) is unknown to everyone: say how to undo it.
fn print_secret(secret: &str, what: &'static str, remedy: String) -> Result<(), CliError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{secret}")
        .and_then(|()| out.flush())
        .map_err(|source| CliError::SecretNotPrinted {
            what,
            source,
            remedy,
        })
}

/// Prints a listing; a reader that stops early (`| head`) is not an error.
fn print_listing(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn report(result: Result<(), CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => Report::new(e.exit(), &e).print(),
    }
}
