//! `apiward explain`: runs the one decision function on a configuration file and narrates each step,
//! so that "my integration gets 403, why?" has an answer without reading logs or code.
//!
//! Nothing here decides anything: the verdict is the `Decision` that `auth::decide_traced` (or, for
//! `--user`, `auth::decide_identified_traced`) returns, and the lines are its trace steps in words.
//! A presented key is only ever shown by its prefix (`credential::key_prefix`).

use std::fmt;
use std::io::BufRead;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use http::Method;

use crate::auth::credential::key_prefix;
use crate::auth::{self, Credential, NoPasswords, Outcome, RequestFacts, Step, Trace};
use crate::cli::report::{self, Exit, Report};
use crate::refusal::Refusal;
use crate::snapshot::{ApiKey, ApiUser, Group, Snapshot, UserStatus, rfc3339};

/// `apiward explain ...`
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The API key the request presents; "-" reads it from the first line of stdin (keeps it out
    /// of the shell history). Only its first characters are ever printed.
    #[arg(long, value_name = "KEY", conflicts_with = "user")]
    pub key: Option<String>,
    /// Explain as this API user (by id), skipping the key check. With neither --key nor --user the
    /// request carries no credential.
    #[arg(long, value_name = "ID")]
    pub user: Option<String>,
    /// A PEM file with the client certificate the request presents over TLS (its SHA-256
    /// fingerprint is what `client_certificates` lists).
    #[arg(long, value_name = "FILE", conflicts_with = "user")]
    pub cert: Option<PathBuf>,
    /// The client address, as the gateway sees it (the TCP peer, or the X-Forwarded-For address
    /// a trusted proxy vouched for).
    #[arg(long, default_value = "127.0.0.1", value_name = "IP")]
    pub source: IpAddr,
    /// The HTTP method (case-insensitive).
    #[arg(long, default_value = "GET", value_parser = parse_method, value_name = "METHOD")]
    pub method: Method,
    /// The request path, as sent; a query after '?' is carried along but not checked.
    #[arg(long, value_name = "PATH")]
    pub path: String,
}

fn parse_method(text: &str) -> Result<Method, String> {
    Method::from_bytes(text.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("{text:?} is not an HTTP method"))
}

/// Runs `apiward explain` on `config`: 0 whatever the verdict, 2 for a file that does not load
/// or an empty `--key -`, 1 for a key that cannot be read.
pub fn run(config: &Path, args: ExplainArgs) -> ExitCode {
    let snapshot = match crate::config::load(config) {
        Ok(s) => s,
        Err(errors) => return report::config_errors(config, &errors, "nothing to explain against"),
    };
    let key_from_stdin;
    let caller = match (&args.key, &args.user) {
        (Some(k), _) if k == "-" => {
            let mut line = String::new();
            if let Err(e) = std::io::stdin().lock().read_line(&mut line) {
                return Report::new(
                    Exit::Failure,
                    format!("cannot read the key from stdin: {e}"),
                )
                .print();
            }
            if line.trim().is_empty() {
                return Report::new(
                    Exit::Usage,
                    "--key - reads the key from stdin, and stdin was empty",
                )
                .hint("pipe the key in (`printf %s \"$KEY\" | apiward explain --key - ...`), or leave --key out to explain a request without a credential")
                .print();
            }
            key_from_stdin = line;
            Caller::Key(&key_from_stdin)
        }
        (Some(k), _) => Caller::Key(k),
        (None, Some(id)) => Caller::User(id),
        (None, None) => Caller::Anonymous,
    };
    let certificate = match &args.cert {
        None => None,
        Some(file) => match crate::tls::read_certificates(file) {
            Ok(certs) => certs.first().map(|c| crate::tls::fingerprint(c)),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let question = Question {
        caller,
        certificate,
        source: args.source,
        method: args.method,
        path: &args.path,
        now: crate::config::reload::now_unix(),
    };
    print!("{}", explain(&snapshot, &question));
    ExitCode::SUCCESS
}

/// Who the explained request claims to be.
#[derive(Debug, Clone, Copy)]
pub enum Caller<'a> {
    /// No credential at all.
    Anonymous,
    /// A key, as a client would present it.
    Key(&'a str),
    /// An API user by id: the steps after identification, without any key.
    User(&'a str),
}

/// The request to explain.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    pub caller: Caller<'a>,
    /// The fingerprint of a client certificate presented (and verified) over TLS.
    pub certificate: Option<crate::snapshot::KeyDigest>,
    pub source: IpAddr,
    pub method: Method,
    /// The path as sent, possibly with `?query`.
    pub path: &'a str,
    /// Unix seconds, for key expiry.
    pub now: i64,
}

/// The outcome the gateway would answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forwarded; `to` is the upstream and the path (and query) it receives.
    Allowed {
        to: String,
    },
    Refused(Refusal),
}

impl Verdict {
    /// The status the gateway answers with; for an allowed request, the upstream decides, and 200 is
    /// what a healthy one answers.
    pub fn status(&self) -> u16 {
        match self {
            Verdict::Allowed { .. } => 200,
            Verdict::Refused(r) => r.status().as_u16(),
        }
    }

    /// `allowed`, or the refusal's error code.
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::Allowed { .. } => "allowed",
            Verdict::Refused(r) => r.code(),
        }
    }
}

/// One printed line: a step name (empty for a continuation) and what happened.
#[derive(Debug, Clone)]
pub struct Line {
    pub label: &'static str,
    pub text: String,
}

/// The narrated steps and the verdict.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub lines: Vec<Line>,
    pub verdict: Verdict,
    /// For an allowed request of a group with `shadow_allow`: what those rules would answer.
    pub shadow: Option<Verdict>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{:<10} {}", line.label, line.text)?;
        }
        let detail = match &self.verdict {
            Verdict::Allowed { to } => format!("forwarded to {to}"),
            Verdict::Refused(r) => r.message().to_string(),
        };
        writeln!(
            f,
            "{:<10} {} {}: {detail}",
            "verdict",
            self.verdict.status(),
            self.verdict.code()
        )?;
        match &self.shadow {
            None => Ok(()),
            Some(Verdict::Allowed { .. }) => writeln!(
                f,
                "{:<10} 200 allowed: the group's shadow_allow allows it too",
                "shadow"
            ),
            Some(shadow) => writeln!(
                f,
                "{:<10} {} {}: the group's shadow_allow would refuse it (admitted now, counted in apiward_shadow_refusals_total)",
                "shadow",
                shadow.status(),
                shadow.code()
            ),
        }
    }
}

/// Decides `question` against `snapshot` with the same functions as the gateway, narrating each step.
pub fn explain(snapshot: &Snapshot, question: &Question<'_>) -> Explanation {
    let (path, query) = match question.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (question.path, None),
    };
    let mut narrator = Narrator {
        snapshot,
        raw_path: path,
        method: &question.method,
        normalised: None,
        lines: Vec::new(),
        has_certificate: question.certificate.is_some(),
    };
    narrator.note_trusted_proxy(question.source);
    let credential = match question.caller {
        Caller::Anonymous => Credential::Missing,
        // The gateway trims a header value and treats an empty one as no key at all.
        Caller::Key(k) if k.trim().is_empty() => Credential::Missing,
        Caller::Key(k) => Credential::Key(k.trim()),
        Caller::User(_) => Credential::Missing,
    };
    let facts = RequestFacts {
        method: &question.method,
        path,
        credential,
        certificate: question.certificate,
        client: question.source.into(),
        now: question.now,
    };
    let decision = match question.caller {
        Caller::User(id) => match snapshot.user_by_id(id) {
            Some(user) => {
                narrator.push(
                    "user",
                    narrator.describe_user_without_key(user, question.now),
                );
                auth::decide_identified_traced(snapshot, user, None, &facts, &mut narrator)
            }
            None => {
                narrator.push(
                    "user",
                    format!(
                        "{id}: no such user in {} ✗ (any credential for it is refused as invalid)",
                        snapshot.source.display()
                    ),
                );
                return narrator.finish(Verdict::Refused(Refusal::InvalidCredentials));
            }
        },
        Caller::Anonymous | Caller::Key(_) => {
            auth::decide_traced(snapshot, &facts, &NoPasswords, &mut narrator)
        }
    };
    let mut shadow = None;
    let verdict = match &decision.outcome {
        Outcome::Allowed(grant) => {
            if grant.group.shadow.is_some() {
                shadow = Some(if grant.shadow_refused {
                    Verdict::Refused(Refusal::Forbidden)
                } else {
                    Verdict::Allowed { to: String::new() }
                });
            }
            if let Some(user) = decision.user {
                narrator.limits(user);
            }
            Verdict::Allowed {
                to: forwarded_to(
                    grant.upstream,
                    grant.route,
                    &grant.path,
                    query,
                    decision.user.map(|u| &*u.id),
                ),
            }
        }
        Outcome::Refused(refusal) => {
            if decision.user.is_some_and(|u| !u.limits.is_unlimited()) {
                narrator.push(
                    "limits",
                    "not reached: a request refused before them uses none of the user's allowance"
                        .into(),
                );
            }
            Verdict::Refused(*refusal)
        }
    };
    Explanation {
        shadow,
        ..narrator.finish(verdict)
    }
}

/// Turns trace steps into lines.
struct Narrator<'a> {
    snapshot: &'a Snapshot,
    raw_path: &'a str,
    method: &'a Method,
    normalised: Option<String>,
    lines: Vec<Line>,
    has_certificate: bool,
}

impl Narrator<'_> {
    fn push(&mut self, label: &'static str, text: String) {
        self.lines.push(Line { label, text });
    }

    fn finish(self, verdict: Verdict) -> Explanation {
        Explanation {
            lines: self.lines,
            verdict,
            shadow: None,
        }
    }

    /// The limit step: it runs last, on live counters this offline explanation cannot see.
    fn limits(&mut self, user: &ApiUser) {
        let limits = &user.limits;
        if limits.is_unlimited() {
            self.push("limits", "none for this user ✓".into());
            return;
        }
        let store = self.snapshot.rate_limits.store.shown().to_string();
        self.push("limits", crate::limits::describe::summary(limits));
        let mut over = Vec::new();
        if limits.rate.is_some() {
            over.push("429 rate_limited");
        }
        if limits.quota.is_some() {
            over.push("429 quota_exhausted");
        }
        if limits.max_concurrent.is_some() {
            over.push("429 too_many_concurrent");
        }
        self.push(
            "",
            format!(
                "checked on live counters (store {store}, on_store_error = {}): within them the request goes on; over them {}",
                self.snapshot.rate_limits.on_store_error.as_str(),
                over.join(", ")
            ),
        );
    }

    fn note_trusted_proxy(&mut self, source: IpAddr) {
        if self.snapshot.is_trusted_proxy(source) {
            self.push(
                "note",
                format!(
                    "{source} is a trusted proxy: the gateway takes the client address from its \
                     X-Forwarded-For; pass that address as --source"
                ),
            );
        }
    }

    fn describe_user_without_key(&self, user: &ApiUser, now: i64) -> String {
        let (mut keys, mut expired) = (0, 0);
        let index = self.snapshot.user_index_of(&user.id);
        for key in self.snapshot.keys.values() {
            if Some(key.user) == index {
                keys += 1;
                if key.expires.is_some_and(|t| now >= t) {
                    expired += 1;
                }
            }
        }
        format!(
            "{}{} (explaining as this user, no key checked; it has {keys} key(s), {expired} expired)",
            user.id,
            user.display_name
                .as_deref()
                .map(|n| format!(" \"{n}\""))
                .unwrap_or_default()
        )
    }

    fn describe_key(user: &ApiUser, key: &ApiKey) -> String {
        let mut facts = Vec::new();
        match &key.prefix {
            Some(p) => facts.push(format!("key prefix {p}")),
            None => facts.push("no prefix stored".to_string()),
        }
        if let Some(t) = key.created {
            facts.push(format!("created {}", rfc3339(t)));
        }
        match key.expires {
            Some(t) => facts.push(format!("expires {}", rfc3339(t))),
            None => facts.push("no expiry".to_string()),
        }
        format!("user {} ({})", user.id, facts.join(", "))
    }

    fn permissions_of(&mut self, group: &Group) {
        if group.permissions.is_empty() {
            self.push(
                "",
                format!("group {} has no permissions at all", group.name),
            );
            return;
        }
        for p in group.permissions.iter() {
            self.push(
                "",
                format!(
                    "group {} has {} [{}]",
                    group.name,
                    p.pattern.as_str(),
                    p.verbs
                ),
            );
        }
    }
}

impl Trace for Narrator<'_> {
    fn step(&mut self, step: Step<'_>) {
        match step {
            Step::Credential(Credential::Missing) if self.has_certificate => self.push(
                "credential",
                "a client certificate, and no key or password".to_string(),
            ),
            Step::Credential(Credential::Missing) => self.push(
                "credential",
                format!(
                    "none: no {} header and no Authorization: Bearer ✗",
                    self.snapshot.server.key_header
                ),
            ),
            Step::Certificate { user: Some(user) } => self.push(
                "cert",
                format!(
                    "client certificate → user {} (status {}, group {}) ✓",
                    user.id,
                    user.status.as_str(),
                    self.snapshot.group_of(user).name
                ),
            ),
            Step::Certificate { user: None } => self.push(
                "cert",
                "client certificate → no user lists its fingerprint in client_certificates ✗ \
                 (without a key this is invalid_credentials; `apiward users add-certificate` records it)"
                    .to_string(),
            ),
            Step::Credential(Credential::Key(k)) => {
                // Kept for the key line that follows; only the prefix is ever stored.
                self.push("key", format!("{}…", key_prefix(k)));
            }
            Step::Credential(Credential::Basic { user, .. }) => {
                self.push("credential", format!("Basic for {user} (password hidden)"));
            }
            Step::Credential(Credential::Malformed) => {
                self.push("credential", "present but unreadable ✗".to_string());
            }
            Step::KeyFound { user, key } => {
                let described = Self::describe_key(user, key);
                self.append_to_last("key", &format!(" → {described}"));
            }
            Step::KeyNotFound => self.append_to_last(
                "key",
                " → no user has this key ✗ (the file keeps only key digests: a mistyped, revoked \
                 or other environment's key all look like this)",
            ),
            Step::PasswordChecked { user, ok } => self.push(
                "password",
                format!(
                    "user {}: {}",
                    user.id,
                    if ok { "accepted ✓" } else { "refused ✗" }
                ),
            ),
            Step::KeyExpiry {
                expires: Some(t),
                now,
            } => {
                let text = if now >= t {
                    format!("expired at {} (now {}) ✗", rfc3339(t), rfc3339(now))
                } else {
                    format!("valid until {} ✓", rfc3339(t))
                };
                self.push("expiry", text);
            }
            Step::KeyExpiry { expires: None, .. } => {}
            Step::Status(status) => {
                let text = match status {
                    UserStatus::Active => "active ✓".to_string(),
                    other => format!("{} ✗ (only active users get through)", other.as_str()),
                };
                self.push("status", text);
            }
            Step::Source {
                client,
                allowed,
                whitelist,
            } => {
                let text = if allowed {
                    let entry = client
                        .ip()
                        .and_then(|ip| whitelist.matching_entry(ip))
                        .unwrap_or_default();
                    format!("{client} matches {entry} ✓")
                } else {
                    let nearest: Vec<String> = client
                        .ip()
                        .map(|ip| nearest_entries(whitelist, ip))
                        .unwrap_or_default()
                        .iter()
                        .map(|(block, bits)| match bits {
                            1 => format!("{block} (1 leading bit shared)"),
                            bits => format!("{block} ({bits} leading bits shared)"),
                        })
                        .collect();
                    if nearest.is_empty() {
                        let entries = whitelist_entries(whitelist);
                        if entries.is_empty() {
                            format!("{client} matches no entry of the user's whitelist ✗")
                        } else {
                            format!(
                                "{client} matches no entry of the user's whitelist ✗; none is near it (the whitelist: {entries})"
                            )
                        }
                    } else {
                        format!(
                            "{client} matches no entry of the user's whitelist ✗; nearest: {}",
                            nearest.join(", ")
                        )
                    }
                };
                self.push("source", text);
            }
            Step::Path { normalised: Ok(p) } => {
                let text = if p == self.raw_path {
                    p.to_string()
                } else {
                    format!("{p} (normalised from {})", self.raw_path)
                };
                self.normalised = Some(p.to_string());
                self.push("path", text);
            }
            Step::Path { normalised: Err(e) } => {
                self.push("path", format!("{} refused: {e} ✗", self.raw_path));
            }
            Step::Route(Some((route, upstream))) => self.push(
                "route",
                format!(
                    "{} → upstream {} ({})",
                    route.prefix, upstream.name, upstream.url
                ),
            ),
            Step::Route(None) => {
                let routes: Vec<&str> = self.snapshot.routes.iter().map(|r| &*r.prefix).collect();
                let path = self.normalised.as_deref().unwrap_or(self.raw_path);
                let text = if routes.is_empty() {
                    format!("no route matches {path} ✗; the file has no routes")
                } else {
                    format!("no route matches {path} ✗; routes: {}", routes.join(", "))
                };
                self.push("route", text);
            }
            Step::Permission {
                group,
                verb,
                allowed_by,
            } => {
                let method = self.method.as_str();
                match (verb, allowed_by) {
                    (Some(v), Some(p)) => self.push(
                        "permission",
                        format!(
                            "group {}: {method} needs {v}; allowed by {} [{}] ✓",
                            group.name,
                            p.pattern.as_str(),
                            p.verbs
                        ),
                    ),
                    (Some(v), None) => {
                        let path = self.normalised.clone().unwrap_or_default();
                        self.push(
                            "permission",
                            format!(
                                "group {}: {method} needs {v}; no permission allows it on {path} ✗",
                                group.name
                            ),
                        );
                        self.permissions_of(group);
                    }
                    (None, _) => {
                        self.push(
                            "permission",
                            format!(
                                "group {}: {method} is granted by no verb ✗ (view = GET, HEAD, \
                                 OPTIONS; create = POST; modify = PUT, PATCH; delete = DELETE)",
                                group.name
                            ),
                        );
                        self.permissions_of(group);
                    }
                }
            }
            Step::Shadow { group, allowed_by } => {
                let text = match allowed_by {
                    Some(p) => format!(
                        "group {} shadow_allow: allowed by {} [{}] ✓",
                        group.name,
                        p.pattern.as_str(),
                        p.verbs
                    ),
                    None => {
                        let path = self.normalised.clone().unwrap_or_default();
                        format!(
                            "group {} shadow_allow: no entry allows {} on {path} ✗ (admitted by allow; would be 403 forbidden once enforced)",
                            group.name,
                            self.method.as_str()
                        )
                    }
                };
                self.push("shadow", text);
            }
        }
    }
}

impl Narrator<'_> {
    fn append_to_last(&mut self, label: &'static str, text: &str) {
        match self.lines.last_mut() {
            Some(line) if line.label == label => line.text.push_str(text),
            _ => self.push(label, text.trim_start().to_string()),
        }
    }
}

mod nearest;
mod targets;
pub use nearest::nearest_entries;
use nearest::whitelist_entries;
use targets::forwarded_to;

#[cfg(test)]
mod tests;
