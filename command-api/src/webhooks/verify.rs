//! Signature checks shared by every provider: the refusal reasons, HMAC-SHA256 over the
//! raw bytes as received in constant time (`Mac::verify_slice`), and a shared secret sent in
//! a header. Each provider's own scheme lives in its context (`signature.rs`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Why a webhook was refused (401, and a line in the rejection log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No signature header or field.
    #[error("missing_signature")]
    Missing,
    /// A signature that cannot be parsed.
    #[error("malformed_signature")]
    Malformed,
    /// No signature matches any configured secret.
    #[error("bad_signature")]
    Mismatch,
    /// A valid signature on a timestamp outside the tolerance (a replay).
    #[error("stale_timestamp")]
    Stale,
    /// An algorithm or key name the provider does not use.
    #[error("unsupported_algorithm")]
    Unsupported,
    /// No secret is configured for this provider: nothing can be verified.
    #[error("not_configured")]
    NotConfigured,
}

impl Rejection {
    /// The stable code (problem+json `code` and the rejection log's reason).
    pub fn code(self) -> &'static str {
        match self {
            Rejection::Missing => "missing_signature",
            Rejection::Malformed => "malformed_signature",
            Rejection::Mismatch => "bad_signature",
            Rejection::Stale => "stale_timestamp",
            Rejection::Unsupported => "unsupported_algorithm",
            Rejection::NotConfigured => "not_configured",
        }
    }
}

/// Whether `signature` is the HMAC-SHA256 of `parts` (concatenated) under `key`.
pub(crate) fn hmac_sha256_matches(key: &[u8], parts: &[&[u8]], signature: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(signature).is_ok()
}

/// Checks a shared secret sent in a header (AssemblyAI's `webhook_auth_header_value`) in
/// constant time: both are reduced to HMACs under one key and the tags compared, so neither
/// their contents nor their lengths show in the timing.
pub fn secret_header(provided: Option<&str>, expected: &[String]) -> Result<(), Rejection> {
    let expected: Vec<&String> = expected.iter().filter(|e| !e.is_empty()).collect();
    if expected.is_empty() {
        return Err(Rejection::NotConfigured);
    }
    let provided = provided.ok_or(Rejection::Missing)?;
    let tag = |value: &str| {
        HmacSha256::new_from_slice(b"webhook-secret-comparison").map(|mut m| {
            m.update(value.as_bytes());
            m
        })
    };
    // Every secret is compared (no early exit), in constant time each.
    let matched = expected.iter().fold(false, |matched, secret| {
        let same = match (tag(secret), tag(provided)) {
            (Ok(expected_tag), Ok(provided_mac)) => provided_mac
                .verify_slice(&expected_tag.finalize().into_bytes())
                .is_ok(),
            _ => false,
        };
        matched | same
    });
    if matched {
        Ok(())
    } else {
        Err(Rejection::Mismatch)
    }
}

/// Hex SHA-256 of `bytes`.
pub fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    crate::values::hex(&Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_header_matches_only_the_secret() {
        let one = ["s3cret".to_owned()];
        assert_eq!(secret_header(Some("s3cret"), &one), Ok(()));
        assert_eq!(secret_header(Some("s3cre"), &one), Err(Rejection::Mismatch));
        assert_eq!(secret_header(None, &one), Err(Rejection::Missing));
        assert_eq!(secret_header(Some("x"), &[]), Err(Rejection::NotConfigured));
        assert_eq!(
            secret_header(Some("x"), &[String::new()]),
            Err(Rejection::NotConfigured)
        );
        // During a rotation, either secret.
        let rotating = ["new-secret".to_owned(), "old-secret".to_owned()];
        assert_eq!(secret_header(Some("old-secret"), &rotating), Ok(()));
        assert_eq!(secret_header(Some("new-secret"), &rotating), Ok(()));
        assert_eq!(
            secret_header(Some("other"), &rotating),
            Err(Rejection::Mismatch)
        );
    }
}
