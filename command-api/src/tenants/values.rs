//! Value objects of the tenants context: each `parse` is the one place its rule lives.

/// Display name: trimmed, 2–80 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    /// Parses a display name.
    pub fn parse(raw: &str) -> Option<Self> {
        let name = raw.trim();
        let len = name.chars().count();
        ((2..=80).contains(&len) && !name.chars().any(char::is_control))
            .then(|| Self(name.to_owned()))
    }

    /// The name.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// URL-safe handle: 3–63 characters of `a-z`, `0-9` and `-`, starting with a letter, not
/// ending with `-`, no `--` (reserved for generated forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slug(String);

impl Slug {
    /// Parses a slug. Upper case is refused rather than folded, so the slug a client sees is
    /// the slug it sent.
    pub fn parse(raw: &str) -> Option<Self> {
        let b = raw.as_bytes();
        let ok = (3..=63).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b[b.len() - 1] != b'-'
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
            && !raw.contains("--");
        ok.then(|| Self(raw.to_owned()))
    }

    /// The slug.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub use crate::values::Email;

/// Largest serialized preferences object.
pub const MAX_PREFERENCES_BYTES: usize = 16 * 1024;

/// Why preferences were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreferencesError {
    /// Not a JSON object.
    NotAnObject,
    /// Over [`MAX_PREFERENCES_BYTES`] once serialized.
    TooLarge,
    /// A key or string holds a NUL character, which PostgreSQL's `jsonb` cannot store.
    NulCharacter,
}

/// Checks a preferences document.
pub fn check_preferences(value: &serde_json::Value) -> Result<(), PreferencesError> {
    if !value.is_object() {
        return Err(PreferencesError::NotAnObject);
    }
    let size = serde_json::to_vec(value)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PREFERENCES_BYTES {
        return Err(PreferencesError::TooLarge);
    }
    if events::jsonb::holds_nul(value) {
        return Err(PreferencesError::NulCharacter);
    }
    Ok(())
}

/// A free-text reason (rejection, suspension): trimmed, 1–500 characters, no control
/// characters but line breaks and tabs.
pub fn parse_reason(raw: &str) -> Option<String> {
    let r = raw.trim();
    let clean = !r
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    ((1..=500).contains(&r.chars().count()) && clean).then(|| r.to_owned())
}

/// Logo media types accepted.
pub const LOGO_TYPES: [&str; 3] = ["image/png", "image/jpeg", "image/webp"];
/// Largest logo accepted.
pub const MAX_LOGO_BYTES: u64 = 2 * 1024 * 1024;

/// The media type of an image, told by its first bytes (never by what the client claims).
pub fn sniff_image(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            TenantName::parse("  Acme ").map(TenantName::into_inner),
            Some("Acme".into())
        );
        assert!(TenantName::parse("A").is_none());
        assert!(TenantName::parse(" A ").is_none());
        assert!(TenantName::parse(&"é".repeat(80)).is_some());
        assert!(TenantName::parse(&"é".repeat(81)).is_none());
        assert!(TenantName::parse("Ac\u{0}me").is_none());
    }

    #[test]
    fn slugs_follow_the_url_rule() {
        for ok in ["acme", "acme-2", "a1b", &"a".repeat(63)] {
            assert!(Slug::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "ab",
            "Acme",
            "1acme",
            "acme-",
            "ac--me",
            "ac me",
            "acmé",
            "",
            &"a".repeat(64),
        ] {
            assert!(Slug::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn preferences_are_objects_of_at_most_16_kib() {
        assert_eq!(check_preferences(&serde_json::json!({"a": 1})), Ok(()));
        assert_eq!(
            check_preferences(&serde_json::json!([1])),
            Err(PreferencesError::NotAnObject)
        );
        let big = serde_json::json!({"a": "x".repeat(MAX_PREFERENCES_BYTES)});
        assert_eq!(check_preferences(&big), Err(PreferencesError::TooLarge));
        let edge = serde_json::json!({"a": "x".repeat(MAX_PREFERENCES_BYTES - 8)});
        assert_eq!(
            serde_json::to_vec(&edge).map(|v| v.len()).ok(),
            Some(MAX_PREFERENCES_BYTES)
        );
        assert_eq!(check_preferences(&edge), Ok(()));
        assert_eq!(
            check_preferences(&serde_json::json!({"a": ["ok", "b\u{0}"]})),
            Err(PreferencesError::NulCharacter)
        );
        assert_eq!(
            check_preferences(&serde_json::json!({"k\u{0}": 1})),
            Err(PreferencesError::NulCharacter)
        );
    }

    #[test]
    fn reasons_are_bounded_text_with_line_breaks_at_most() {
        assert_eq!(
            parse_reason(" late\npayment "),
            Some("late\npayment".into())
        );
        assert_eq!(parse_reason("   "), None);
        assert_eq!(parse_reason("a\u{0}b"), None);
        assert_eq!(parse_reason("bell\u{7}"), None);
        assert!(parse_reason(&"x".repeat(501)).is_none());
    }

    #[test]
    fn images_are_told_by_their_magic_bytes() {
        assert_eq!(sniff_image(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff_image(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff_image(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_image(b"GIF89a"), None);
        assert_eq!(sniff_image(b""), None);
    }
}
