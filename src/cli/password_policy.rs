//! The password policy for Basic-auth users; a refusal names the rule that failed.

/// Fewer characters than this are refused.
pub const MIN_CHARS: usize = 8;
/// More than this is certainly a mistake (a pasted file), and every request would carry it.
pub const MAX_CHARS: usize = 1024;
/// A local part shorter than this is not looked for in the password: "al" inside "Royal-8sea"
/// is no weakness, and refusing it would only confuse.
const MIN_NAME_CHARS: usize = 3;

/// Which rule a password broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    #[error("the password is empty")]
    Empty,
    #[error("the password has {0} characters; it needs at least {MIN_CHARS}")]
    TooShort(usize),
    #[error("the password has {0} characters; at most {MAX_CHARS} are accepted")]
    TooLong(usize),
    #[error("the password needs at least one digit or one character that is not a letter or digit")]
    NoDigitOrSymbol,
    #[error("the password contains a control character (a tab, an escape, ...)")]
    ControlCharacter,
    #[error("the password contains the user name {0:?} (the part of the id before '@')")]
    ContainsUserName(String),
    #[error("the password contains the organisation name {0:?} ([server] organisation)")]
    ContainsOrganisation(String),
}

/// Checks `password` for the user `id`; `organisation` is `[server] organisation` when set.
/// Names are looked for without regard to case.
pub fn check(password: &str, id: &str, organisation: Option<&str>) -> Result<(), PolicyViolation> {
    let chars = password.chars().count();
    if chars == 0 {
        return Err(PolicyViolation::Empty);
    }
    if chars < MIN_CHARS {
        return Err(PolicyViolation::TooShort(chars));
    }
    if chars > MAX_CHARS {
        return Err(PolicyViolation::TooLong(chars));
    }
    if password.chars().any(char::is_control) {
        return Err(PolicyViolation::ControlCharacter);
    }
    if !password
        .chars()
        .any(|c| c.is_ascii_digit() || !c.is_alphanumeric())
    {
        return Err(PolicyViolation::NoDigitOrSymbol);
    }
    let lower = password.to_lowercase();
    let local = id.split_once('@').map_or(id, |(local, _)| local);
    if local.chars().count() >= MIN_NAME_CHARS && lower.contains(&local.to_lowercase()) {
        return Err(PolicyViolation::ContainsUserName(local.to_string()));
    }
    if let Some(org) = organisation
        .map(str::trim)
        .filter(|o| o.chars().count() >= MIN_NAME_CHARS)
        && lower.contains(&org.to_lowercase())
    {
        return Err(PolicyViolation::ContainsOrganisation(org.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_is_named_when_it_fails() {
        let id = "crm-sync@example.org";
        let org = Some("Acme");
        assert_eq!(check("", id, org), Err(PolicyViolation::Empty));
        assert_eq!(check("abc1", id, org), Err(PolicyViolation::TooShort(4)));
        assert_eq!(
            check("abcdefghij", id, org),
            Err(PolicyViolation::NoDigitOrSymbol)
        );
        assert_eq!(
            check("ÄÖÜäöüßéèà", id, org),
            Err(PolicyViolation::NoDigitOrSymbol)
        );
        assert_eq!(
            check("tab\there-1", id, org),
            Err(PolicyViolation::ControlCharacter)
        );
        assert_eq!(
            check("my-CRM-SYNC-pass", id, org),
            Err(PolicyViolation::ContainsUserName("crm-sync".into()))
        );
        assert_eq!(
            check("acme-rocks-2026", id, org),
            Err(PolicyViolation::ContainsOrganisation("Acme".into()))
        );
        assert_eq!(
            check(&"x1".repeat(600), id, org),
            Err(PolicyViolation::TooLong(1200))
        );
        assert!(check("acme-rocks-2026", id, None).is_ok());
        assert!(
            check("correct horse", id, org).is_ok(),
            "a space is a non-alphanumeric character"
        );
        assert!(check("abcdefg7", id, org).is_ok());
        assert!(
            check("ab-extra-1", "ab@example.org", org).is_ok(),
            "two-letter names are not looked for"
        );
        let message = check("abcdefghij", id, org).unwrap_err().to_string();
        assert!(message.contains("digit"), "{message}");
    }
}
