//! Fresh secrets from the OS random source: API keys, generated user ids and generated passwords.
//!
//! A key is `aw_` followed by the base62 form of 32 random bytes (43 characters). Only its
//! SHA-256 digest and its first characters (the prefix) are ever stored; the key itself is
//! shown once to the operator and then exists only on the client's side.

use std::fmt;

use crate::auth::credential::KEY_PREFIX_LEN;
use crate::snapshot::KeyDigest;

/// Every key starts with this, so a leaked key is recognisable (secret scanners, log reviews).
pub const KEY_MARKER: &str = "aw_";

/// Every admin token starts with this instead: an admin token is never an API user's key, and
/// a glance (or a secret scanner) tells which of the two leaked.
pub const ADMIN_TOKEN_MARKER: &str = "awa_";

/// Base62 digits of a key body: 62^43 > 2^256, so 43 digits hold 32 random bytes.
const KEY_BODY_LEN: usize = 43;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const BASE36_LOWER: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// The OS random source failed; nothing secret can be made without it.
#[derive(Debug, thiserror::Error)]
#[error("the operating system's random source failed: {0}")]
pub struct RandomSourceError(getrandom::Error);

/// A newly made key: the secret itself, shown once, plus what the file stores.
pub struct IssuedKey {
    secret: String,
    pub digest: KeyDigest,
    pub prefix: String,
}

impl IssuedKey {
    /// The whole key. Call it only to hand the key to the operator, once.
    pub fn reveal(&self) -> &str {
        &self.secret
    }
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IssuedKey({}…)", self.prefix)
    }
}

/// Makes a new key from 32 bytes of OS randomness.
pub fn issue_key() -> Result<IssuedKey, RandomSourceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(RandomSourceError)?;
    let secret = format!("{KEY_MARKER}{}", base62_fixed(bytes));
    Ok(IssuedKey {
        digest: KeyDigest::of(&secret),
        prefix: stored_prefix(&secret).to_string(),
        secret,
    })
}

/// Makes a new admin token (`awa_` and 43 base62 characters); its prefix is `awa_` and four more.
pub fn issue_admin_token() -> Result<IssuedKey, RandomSourceError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(RandomSourceError)?;
    let secret = format!("{ADMIN_TOKEN_MARKER}{}", base62_fixed(bytes));
    Ok(IssuedKey {
        digest: KeyDigest::of(&secret),
        prefix: stored_prefix(&secret).to_string(),
        secret,
    })
}

/// The part of a key that is kept in the file to tell keys apart: `aw_` and five more characters.
pub fn stored_prefix(key: &str) -> &str {
    let end = key
        .char_indices()
        .nth(KEY_PREFIX_LEN)
        .map_or(key.len(), |(i, _)| i);
    &key[..end]
}

/// A user id for integrations that do not care about theirs, like `apiuser-7f3k2q@apiward.local`.
pub fn generate_user_id() -> Result<String, RandomSourceError> {
    Ok(format!(
        "apiuser-{}@apiward.local",
        random_string(BASE36_LOWER, 6)?
    ))
}

/// A random password of `len` base62 characters (about 5.95 bits each: 24 give ~143 bits).
pub fn generate_password(len: usize) -> Result<String, RandomSourceError> {
    random_string(BASE62, len)
}

/// Uniformly random characters from `alphabet` (rejection sampling, so no digit is favoured).
fn random_string(alphabet: &[u8], len: usize) -> Result<String, RandomSourceError> {
    debug_assert!(!alphabet.is_empty() && alphabet.len() <= 256);
    // The largest multiple of the alphabet size that fits in a byte: bytes at or above it would
    // make the first characters of the alphabet more likely, so they are drawn again.
    let limit = 256 - 256 % alphabet.len();
    let mut out = String::with_capacity(len);
    let mut pool = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut pool).map_err(RandomSourceError)?;
        for &b in &pool {
            if usize::from(b) < limit && out.len() < len {
                out.push(char::from(alphabet[usize::from(b) % alphabet.len()]));
            }
        }
    }
    Ok(out)
}

/// The 32 bytes as one big-endian number written in base62, padded to 43 digits.
fn base62_fixed(bytes: [u8; 32]) -> String {
    let mut number = bytes;
    let mut digits = [b'0'; KEY_BODY_LEN];
    for slot in digits.iter_mut().rev() {
        // Long division of the whole number by 62; the remainder is the next digit.
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let acc = (remainder << 8) | u32::from(*byte);
            *byte = (acc / 62) as u8;
            remainder = acc % 62;
        }
        *slot = BASE62[remainder as usize];
    }
    debug_assert!(
        number.iter().all(|&b| b == 0),
        "43 base62 digits hold 256 bits"
    );
    digits.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_the_documented_shape() {
        let key = issue_key().unwrap();
        let secret = key.reveal();
        assert_eq!(secret.len(), 3 + KEY_BODY_LEN);
        assert!(secret.starts_with("aw_"));
        assert!(secret[3..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(key.prefix, &secret[..8]);
        assert_eq!(key.digest, KeyDigest::of(secret));
        assert!(!format!("{key:?}").contains(secret));
        assert_ne!(issue_key().unwrap().reveal(), secret);
    }

    #[test]
    fn admin_tokens_are_told_apart_from_keys() {
        let token = issue_admin_token().unwrap();
        assert!(token.reveal().starts_with("awa_"));
        assert_eq!(token.reveal().len(), 4 + KEY_BODY_LEN);
        assert_eq!(token.prefix, &token.reveal()[..8]);
        assert!(!token.reveal().starts_with(KEY_MARKER));
    }

    #[test]
    fn base62_is_exact_at_the_extremes() {
        assert_eq!(base62_fixed([0; 32]), "0".repeat(43));
        // 2^256 - 1 = 60.7 * 62^42: the leading digit is 60 ('y'), so 43 digits are enough.
        let max = base62_fixed([0xff; 32]);
        assert_eq!(max.len(), 43);
        assert_eq!(&max[..1], "y");
        let mut one = [0u8; 32];
        one[31] = 61;
        assert!(base62_fixed(one).ends_with('z'));
        one[31] = 62;
        assert!(base62_fixed(one).ends_with("10"));
    }

    #[test]
    fn generated_ids_and_passwords_have_their_shape() {
        let id = generate_user_id().unwrap();
        assert!(
            id.starts_with("apiuser-") && id.ends_with("@apiward.local"),
            "{id}"
        );
        assert_eq!(id.len(), "apiuser-".len() + 6 + "@apiward.local".len());
        crate::config::compile::check_user_id(&id).unwrap();
        let pw = generate_password(24).unwrap();
        assert_eq!(pw.len(), 24);
        assert!(pw.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn stored_prefix_is_marker_and_five() {
        assert_eq!(stored_prefix("aw_ABCDEFGH"), "aw_ABCDE");
        assert_eq!(stored_prefix("aw_AB"), "aw_AB");
    }
}
