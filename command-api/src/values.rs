//! Value objects more than one context uses: each `parse` is the one place its rule lives.

/// An e-mail address: one `@`, a non-empty local part, a dotted domain, ≤ 254 characters.
/// Deliverability is not this check's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

/// Characters that render as nothing (zero-width spaces and joiners, direction marks, soft
/// hyphens, variation selectors, fillers, tags): in an address they make a second account
/// that looks like the first.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0x1D173..=0x1D17A | 0xE0000..=0xE007F)
}

impl Email {
    /// The form an address is compared in, as typed at login: compatibility-normalised
    /// (NFKC: full-width and other look-alike forms become the plain letters), trimmed and
    /// lower-cased.
    pub fn lookup_form(raw: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        raw.nfkc().collect::<String>().trim().to_lowercase()
    }

    /// Parses an address (compatibility-normalised, trimmed; the domain is lower-cased). An
    /// address with an invisible character is refused.
    pub fn parse(raw: &str) -> Option<Self> {
        use unicode_normalization::UnicodeNormalization;
        if raw.chars().any(invisible) {
            return None;
        }
        let normalised: String = raw.nfkc().collect();
        let raw = normalised.trim();
        let (local, domain) = raw.split_once('@')?;
        let ok = raw.len() <= 254
            && !local.is_empty()
            && local.len() <= 64
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !raw.chars().any(|c| c.is_whitespace() || c.is_control());
        ok.then(|| Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    /// The address.
    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Passwords of 10 characters or more that appear at the top of every breach list: a
/// guesser tries them first (NIST SP 800-63B asks for such a list).
const COMMON_PASSWORDS: &[&str] = &[
    "password12",
    "password123",
    "password1234",
    "password12345",
    "passw0rd12",
    "1234567890",
    "12345678910",
    "0123456789",
    "0987654321",
    "1234512345",
    "1111111111",
    "qwertyuiop",
    "qwerty1234",
    "qwerty12345",
    "1q2w3e4r5t",
    "1qaz2wsx3edc",
    "zaq12wsxcde",
    "asdfghjkl1",
    "abcdefghij",
    "abcd123456",
    "abc1234567",
    "iloveyou12",
    "welcome123",
    "letmein123",
    "admin12345",
    "administrator",
    "changeme123",
    "football12",
    "baseball12",
    "sunshine12",
    "princess12",
    "trustno1234",
    "monkey1234",
    "dragon1234",
    "master1234",
    "superman12",
    "starwars12",
    "computer12",
    "michael123",
    "jennifer12",
    "whatever12",
];

/// A password as chosen: 10 to 128 characters, not a well-known one, and not made of a
/// handful of characters (`aaaaaaaaaa`, ten spaces). Length is what makes a password
/// strong; composition rules are not imposed (NIST SP 800-63B).
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    /// Parses a new password.
    pub fn parse(raw: &str) -> Option<Self> {
        let length = raw.chars().count();
        let distinct = raw
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let lowered = raw.trim().to_lowercase();
        let ok = (10..=128).contains(&length)
            && distinct >= 4
            && !COMMON_PASSWORDS.contains(&lowered.as_str());
        ok.then(|| Self(raw.to_owned()))
    }

    /// The password, for hashing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// A duration such as `1h`, `15m`, `30s`, `7d` or a number of seconds (`3600`), as
/// `AUTH_TOKEN_EXPIRES_IN` is written.
pub fn parse_duration(raw: &str) -> Option<std::time::Duration> {
    let raw = raw.trim();
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
}

/// The pause after failed attempt `attempt` (1-based) of work retried by a process
/// manager: 2, 4, 8 … seconds, doubling, at most `max`. The webhook, audio and WhatsApp
/// aggregates each name their own `max`.
pub fn backoff(attempt: u32, max: chrono::Duration) -> chrono::Duration {
    chrono::Duration::seconds(1i64 << attempt.clamp(1, 30)).min(max)
}

/// Lowercase hex (digests in events, blob names, signatures): the platform's one
/// implementation, in the events crate.
pub use events::hex::{decode as unhex, encode as hex};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_its_cap() {
        let cap = chrono::Duration::minutes(5);
        assert_eq!(backoff(1, cap), chrono::Duration::seconds(2));
        assert_eq!(backoff(2, cap), chrono::Duration::seconds(4));
        assert_eq!(backoff(8, cap), chrono::Duration::seconds(256));
        assert_eq!(backoff(9, cap), cap);
        assert_eq!(
            backoff(u32::MAX, chrono::Duration::hours(1)),
            chrono::Duration::hours(1)
        );
    }

    #[test]
    fn look_alike_addresses_are_the_plain_one_and_invisible_characters_are_refused() {
        // Full-width letters normalise to the plain address.
        assert_eq!(
            Email::parse("ａｎｎ@ａｃｍｅ.io").map(Email::into_inner),
            Some("ann@acme.io".into())
        );
        assert_eq!(Email::lookup_form(" ＡＮＮ@Acme.IO "), "ann@acme.io");
        for hidden in [
            "an\u{200B}n@acme.io",
            "ann@ac\u{200D}me.io",
            "\u{FEFF}ann@acme.io",
        ] {
            assert!(Email::parse(hidden).is_none(), "{hidden:?}");
        }
    }

    #[test]
    fn weak_passwords_are_refused() {
        for weak in [
            "          ",
            "aaaaaaaaaa",
            "password12",
            "PASSWORD123",
            "1234567890",
            "abababababab",
        ] {
            assert!(Password::parse(weak).is_none(), "{weak:?}");
        }
        for fine in ["correct horse battery", "Tr0ub4dor&3xyz"] {
            assert!(Password::parse(fine).is_some(), "{fine:?}");
        }
    }

    #[test]
    fn emails_need_a_dotted_domain() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").map(Email::into_inner),
            Some("Ann@example.com".into())
        );
        for bad in [
            "ann", "@x.io", "ann@", "ann@x", "a@b@c.io", "a b@c.io", "ann@.io", "ann@x.",
        ] {
            assert!(Email::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn passwords_are_10_to_128_characters() {
        assert!(Password::parse("short").is_none());
        assert!(Password::parse("long enough").is_some());
        // Characters, not bytes: 128 two-byte characters are allowed, 129 are not.
        assert!(Password::parse(&"éèêë".repeat(32)).is_some());
        assert!(Password::parse(&format!("{}é", "éèêë".repeat(32))).is_none());
        assert_eq!(
            format!("{:?}", Password::parse("secret-secret")),
            "Some(Password(..))"
        );
    }

    #[test]
    fn durations_read_like_the_seeds_settings() {
        assert_eq!(
            parse_duration("1h"),
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            parse_duration("15m"),
            Some(std::time::Duration::from_secs(900))
        );
        assert_eq!(
            parse_duration("3600"),
            Some(std::time::Duration::from_secs(3600))
        );
        assert_eq!(
            parse_duration("7d"),
            Some(std::time::Duration::from_secs(604_800))
        );
        for bad in ["", "h", "1y", "-1h", "0", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_round_trips_and_refuses_odd_or_foreign_text() {
        assert_eq!(hex(&[0, 171, 255]), "00abff");
        assert_eq!(unhex("00ABff"), Some(vec![0, 171, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
