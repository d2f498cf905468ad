//! Value objects more than one context uses: each `parse` is the one place its rule lives.

/// An e-mail address: one `@`, a non-empty local part, a dotted domain, ≤ 254 characters.
/// Deliverability is not this check's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an address (trimmed; the domain is lower-cased).
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
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

/// A password as chosen: 10 to 128 characters. Length is what makes a password strong;
/// composition rules are not imposed (NIST SP 800-63B).
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
        (10..=128)
            .contains(&raw.chars().count())
            .then(|| Self(raw.to_owned()))
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
        assert!(Password::parse(&"é".repeat(128)).is_some());
        assert!(Password::parse(&"é".repeat(129)).is_none());
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
