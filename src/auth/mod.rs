//! Authentication and authorisation: who is calling, from where, and whether they may do this.
//!
//! `decide` is the one decision function: the proxy, `apiward explain` and the benchmarks all call
//! it. It is pure: no I/O, no locks, no allocation unless the path needs rewriting.

pub mod address;
pub mod credential;
pub mod password;
pub mod path;
pub mod permission;

use std::borrow::Cow;
use std::fmt;

use http::Method;

pub use credential::Credential;

use crate::refusal::Refusal;
use crate::snapshot::{ApiKey, ApiUser, Group, KeyDigest, Route, Snapshot, Upstream, UserStatus};
use permission::VerbSet;

/// Everything about a request that the decision depends on.
#[derive(Debug, Clone)]
pub struct RequestFacts<'r> {
    pub method: &'r Method,
    /// The path as received (not yet normalised), without the query.
    pub path: &'r str,
    pub credential: Credential<'r>,
    /// The SHA-256 of the client certificate the TLS handshake verified against `client_ca`.
    pub certificate: Option<KeyDigest>,
    /// The client address: the TCP peer, or the one a trusted proxy vouched for.
    pub client: address::ClientAddress,
    /// Unix seconds, for key expiry.
    pub now: i64,
}

/// The outcome of `decide`, with whatever was learned on the way (for logs and explanations).
#[derive(Debug)]
pub struct Decision<'s, 'r> {
    pub user: Option<&'s ApiUser>,
    pub key: Option<&'s ApiKey>,
    /// The digest of a presented key, known or not (for last-use tracking).
    pub key_digest: Option<KeyDigest>,
    /// The existing user a refused Basic-auth password was presented for: named in the request
    /// log, never identified (`user` stays `None`, and the answer is the one an unknown id gets).
    pub named_by_refused_password: Option<&'s ApiUser>,
    pub outcome: Outcome<'s, 'r>,
}

#[derive(Debug)]
pub enum Outcome<'s, 'r> {
    Allowed(Grant<'s, 'r>),
    Refused(Refusal),
}

/// What an allowed request is forwarded with.
#[derive(Debug)]
pub struct Grant<'s, 'r> {
    pub group: &'s Group,
    pub route: &'s Route,
    pub upstream: &'s Upstream,
    /// The normalised path: the one the permission was checked on and the one forwarded.
    pub path: Cow<'r, str>,
    /// The group's `shadow_allow` would have refused this request (it is admitted all the same).
    pub shadow_refused: bool,
}

fn refused<'s, 'r>(
    user: Option<&'s ApiUser>,
    key: Option<&'s ApiKey>,
    refusal: Refusal,
) -> Decision<'s, 'r> {
    Decision {
        user,
        key,
        key_digest: None,
        named_by_refused_password: None,
        outcome: Outcome::Refused(refusal),
    }
}

/// Receives each step of a decision; `explain` prints them, the hot path ignores them.
pub trait Trace {
    fn step(&mut self, step: Step<'_>);
}

/// A trace that does nothing and compiles away.
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn step(&mut self, _: Step<'_>) {}
}

/// One step of a decision, in the order they are taken.
#[derive(Debug)]
pub enum Step<'a> {
    Credential(&'a Credential<'a>),
    KeyFound {
        user: &'a ApiUser,
        key: &'a ApiKey,
    },
    KeyNotFound,
    /// A verified client certificate, and the user it identifies, if any.
    Certificate {
        user: Option<&'a ApiUser>,
    },
    PasswordChecked {
        user: &'a ApiUser,
        ok: bool,
    },
    KeyExpiry {
        expires: Option<i64>,
        now: i64,
    },
    Status(UserStatus),
    Source {
        client: address::ClientAddress,
        allowed: bool,
        whitelist: &'a address::SourceWhitelist,
    },
    Path {
        normalised: Result<&'a str, path::BadPath>,
    },
    Route(Option<(&'a Route, &'a Upstream)>),
    Permission {
        group: &'a Group,
        verb: Option<VerbSet>,
        allowed_by: Option<&'a permission::Permission>,
    },
    /// The group's `shadow_allow`, tried on an admitted request (only for a group that has one).
    Shadow {
        group: &'a Group,
        allowed_by: Option<&'a permission::Permission>,
    },
}

/// One Basic-auth password to check, from a source the user's whitelist admits (a source it does
/// not admit is refused before any password is looked at).
#[derive(Clone, Copy)]
pub struct PasswordAttempt<'a> {
    /// The id as presented.
    pub id: &'a str,
    /// The configured user of that id, if it has a password hash. `None` (an unknown id, or one
    /// without a password) must cost the same work as a wrong password, so that the answer's
    /// timing does not say which ids have a password.
    pub user: Option<&'a ApiUser>,
    pub password: &'a str,
    pub client: std::net::IpAddr,
}

impl fmt::Debug for PasswordAttempt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PasswordAttempt({} from {}, password hidden)",
            self.id, self.client
        )
    }
}

/// Checks a Basic-auth password against a user's stored hash. Supplied by the caller, because a
/// password check is expensive and the gateway caches it; `decide` stays pure.
pub trait PasswordCheck {
    fn verify(&self, attempt: &PasswordAttempt<'_>) -> bool;
}

/// For callers that never accept passwords.
pub struct NoPasswords;

impl PasswordCheck for NoPasswords {
    fn verify(&self, _: &PasswordAttempt<'_>) -> bool {
        false
    }
}

/// Decides one request against one snapshot.
pub fn decide<'s, 'r>(
    snapshot: &'s Snapshot,
    facts: &RequestFacts<'r>,
    passwords: &impl PasswordCheck,
) -> Decision<'s, 'r> {
    decide_traced(snapshot, facts, passwords, &mut NoTrace)
}

/// `decide`, reporting each step to `trace`.
pub fn decide_traced<'s, 'r>(
    snapshot: &'s Snapshot,
    facts: &RequestFacts<'r>,
    passwords: &impl PasswordCheck,
    trace: &mut impl Trace,
) -> Decision<'s, 'r> {
    let digest = match facts.credential {
        // A key longer than any the gateway issues is refused before it costs a hash.
        Credential::Key(presented) if presented.len() <= credential::MAX_KEY_LEN => {
            Some(KeyDigest::of(presented))
        }
        _ => None,
    };
    let mut decision = identify_then_decide(snapshot, facts, digest.as_ref(), passwords, trace);
    decision.key_digest = digest;
    decision
}

fn identify_then_decide<'s, 'r>(
    snapshot: &'s Snapshot,
    facts: &RequestFacts<'r>,
    digest: Option<&KeyDigest>,
    passwords: &impl PasswordCheck,
    trace: &mut impl Trace,
) -> Decision<'s, 'r> {
    trace.step(Step::Credential(&facts.credential));

    // 1. Who is calling. Nothing about routes or permissions is revealed before this passes.
    // A client certificate identifies its user; with a key or password as well, both must name
    // the same user. A certificate that is no user's counts only when nothing else is presented.
    let by_certificate = facts.certificate.map(|fingerprint| {
        let user = snapshot
            .client_certificates
            .get(&fingerprint)
            .map(|&i| snapshot.user(i));
        trace.step(Step::Certificate { user });
        user
    });
    let (user, key) = match (&facts.credential, by_certificate) {
        (Credential::Missing, Some(Some(user))) => (user, None),
        (Credential::Missing, Some(None)) => {
            return refused(None, None, Refusal::InvalidCredentials);
        }
        (_, None | Some(None)) | (Credential::Key(_) | Credential::Basic { .. }, Some(Some(_))) => {
            match identify(snapshot, facts, digest, passwords, trace) {
                Ok((user, key)) => match by_certificate {
                    Some(Some(other)) if !std::ptr::eq(other, user) => {
                        return refused(None, None, Refusal::AmbiguousCredentials);
                    }
                    _ => (user, key),
                },
                Err(decision) => return decision,
            }
        }
        (Credential::Malformed, Some(Some(_))) => {
            return refused(None, None, Refusal::InvalidCredentials);
        }
    };

    decide_identified_traced(snapshot, user, key, facts, trace)
}

/// The user (and key) a key or a password identifies, or the refusal.
fn identify<'s, 'r>(
    snapshot: &'s Snapshot,
    facts: &RequestFacts<'r>,
    digest: Option<&KeyDigest>,
    passwords: &impl PasswordCheck,
    trace: &mut impl Trace,
) -> Result<(&'s ApiUser, Option<&'s ApiKey>), Decision<'s, 'r>> {
    let refused = |user, key, refusal| Err(refused(user, key, refusal));
    Ok(match facts.credential {
        Credential::Missing => return refused(None, None, Refusal::MissingCredentials),
        Credential::Key(_) => match digest.and_then(|d| snapshot.keys.get(d)) {
            Some(key) => {
                let user = snapshot.user(key.user);
                trace.step(Step::KeyFound { user, key });
                trace.step(Step::KeyExpiry {
                    expires: key.expires,
                    now: facts.now,
                });
                if key.expires.is_some_and(|t| facts.now >= t) {
                    return refused(Some(user), Some(key), Refusal::KeyExpired);
                }
                (user, Some(key))
            }
            None => {
                trace.step(Step::KeyNotFound);
                return refused(None, None, Refusal::InvalidCredentials);
            }
        },
        Credential::Basic { user: id, password } => {
            let configured = snapshot.user_by_id(id);
            // The source first: a source outside the user's whitelist never costs Argon2 and
            // never counts against the user's failures (or anyone could lock the user out).
            if let Some(u) = configured.filter(|u| !u.sources.admits(facts.client)) {
                trace.step(Step::Source {
                    client: facts.client,
                    allowed: false,
                    whitelist: &u.sources,
                });
                return refused(None, None, Refusal::UnregisteredSource);
            }
            let Some(client) = facts.client.ip() else {
                trace.step(Step::KeyNotFound);
                return refused(None, None, Refusal::InvalidCredentials);
            };
            let user = configured.filter(|u| u.password_hash.is_some());
            let ok = passwords.verify(&PasswordAttempt {
                id,
                user,
                password,
                client,
            }) && user.is_some();
            match user {
                Some(user) if ok => {
                    trace.step(Step::PasswordChecked { user, ok });
                    (user, None)
                }
                Some(user) => {
                    trace.step(Step::PasswordChecked { user, ok });
                    let mut decision = self::refused(None, None, Refusal::InvalidCredentials);
                    decision.named_by_refused_password = Some(user);
                    return Err(decision);
                }
                None => {
                    trace.step(Step::KeyNotFound);
                    return refused(None, None, Refusal::InvalidCredentials);
                }
            }
        }
        Credential::Malformed => return refused(None, None, Refusal::InvalidCredentials),
    })
}

/// The steps after identification (status, source, path, route, permission) for a user already
/// known. `decide_traced` runs it after checking the credential; `apiward explain --user` runs it
/// directly, so what is explained is what runs.
pub fn decide_identified_traced<'s, 'r>(
    snapshot: &'s Snapshot,
    user: &'s ApiUser,
    key: Option<&'s ApiKey>,
    facts: &RequestFacts<'r>,
    trace: &mut impl Trace,
) -> Decision<'s, 'r> {
    // 2. Is this user allowed to call at all, and from here.
    trace.step(Step::Status(user.status));
    if user.status != UserStatus::Active {
        return refused(Some(user), key, Refusal::UserInactive);
    }
    let allowed = user.sources.admits(facts.client);
    trace.step(Step::Source {
        client: facts.client,
        allowed,
        whitelist: &user.sources,
    });
    if !allowed {
        return refused(Some(user), key, Refusal::UnregisteredSource);
    }

    // 3. What is being asked for, and whether the user's group allows it.
    let path = match path::normalise(facts.path) {
        Ok(p) => p,
        Err(e) => {
            trace.step(Step::Path { normalised: Err(e) });
            return refused(Some(user), key, Refusal::BadPath);
        }
    };
    trace.step(Step::Path {
        normalised: Ok(&path),
    });
    let Some(route) = snapshot.route_for(&path) else {
        trace.step(Step::Route(None));
        return refused(Some(user), key, Refusal::NoRoute);
    };
    let upstream = snapshot.upstream(route);
    trace.step(Step::Route(Some((route, upstream))));
    let group = snapshot.group_of(user);
    let verb = VerbSet::for_method(facts.method);
    let allowed_by = verb.and_then(|v| permission::first_allowing(&group.permissions, v, &path));
    trace.step(Step::Permission {
        group,
        verb,
        allowed_by,
    });
    let Some(verb) = verb.filter(|_| allowed_by.is_some()) else {
        return refused(Some(user), key, Refusal::Forbidden);
    };
    // A group without shadow rules pays one test of a pointer here.
    let shadow_refused = match &group.shadow {
        None => false,
        Some(shadow) => {
            let allowed_by = permission::first_allowing(shadow, verb, &path);
            trace.step(Step::Shadow { group, allowed_by });
            allowed_by.is_none()
        }
    };
    Decision {
        user: Some(user),
        key,
        key_digest: None,
        named_by_refused_password: None,
        outcome: Outcome::Allowed(Grant {
            group,
            route,
            upstream,
            path,
            shadow_refused,
        }),
    }
}

#[cfg(test)]
mod tests;
