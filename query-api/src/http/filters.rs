//! Filter values of list queries, checked at the edge: 400 `invalid_query` for what a
//! query may not hold.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveTime, Utc};
use events::http::Problem;

/// A free-text filter value: at most 200 characters, no control characters (PostgreSQL
/// refuses NUL in text); 400 `invalid_query` otherwise.
pub(crate) fn plain(value: Option<String>, name: &str) -> Result<Option<String>, Problem> {
    match value {
        Some(v) if v.chars().any(char::is_control) || v.len() > 200 => Err(Problem::bad_request(
            "invalid_query",
            format!("{name} must be at most 200 characters without control characters."),
        )),
        other => Ok(other),
    }
}

/// 400 `invalid_query` unless `value` is absent or one of `allowed`.
pub(crate) fn one_of(value: &Option<String>, allowed: &[&str], name: &str) -> Result<(), Problem> {
    match value {
        Some(v) if !allowed.contains(&v.as_str()) => Err(Problem::bad_request(
            "invalid_query",
            format!("{name} must be one of {}.", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}

/// An instant from an RFC 3339 date-time, or from a date (`YYYY-MM-DD`, its midnight UTC);
/// `None` for anything else, and for years outside 1–9999 (PostgreSQL refuses some of
/// those, and no payment is there).
pub(crate) fn parse_instant(raw: &str) -> Option<DateTime<Utc>> {
    let at = match DateTime::parse_from_rfc3339(raw) {
        Ok(at) => at.with_timezone(&Utc),
        Err(_) => NaiveDate::parse_from_str(raw, "%Y-%m-%d")
            .ok()?
            .and_time(NaiveTime::MIN)
            .and_utc(),
    };
    (1..=9999).contains(&at.year()).then_some(at)
}

/// The range `[from, to)` asked for. `to` defaults to the end of today (UTC) and `from` to
/// 30 days before `to`; 400 `invalid_query` for what does not parse and when `from` is not
/// before `to`.
pub(crate) fn range(
    from: Option<&str>,
    to: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Problem> {
    let bad = |name: &str| {
        Problem::bad_request(
            "invalid_query",
            format!(
                "{name} must be an RFC 3339 date-time (2026-05-01T00:00:00Z) or a date (2026-05-01), years 1 to 9999."
            ),
        )
    };
    let to = match to {
        Some(raw) => parse_instant(raw).ok_or_else(|| bad("to"))?,
        None => now
            .date_naive()
            .succ_opt()
            .map(|d| d.and_time(NaiveTime::MIN).and_utc())
            .ok_or_else(|| bad("to"))?,
    };
    let from = match from {
        Some(raw) => parse_instant(raw).ok_or_else(|| bad("from"))?,
        None => to
            .checked_sub_signed(Duration::days(30))
            .filter(|at| at.year() >= 1)
            .ok_or_else(|| {
                Problem::bad_request(
                    "invalid_query",
                    "to is too early for the default from (30 days before it); name from.",
                )
            })?,
    };
    if from >= to {
        return Err(Problem::bad_request(
            "invalid_query",
            "from must be before to.",
        ));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(raw: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(raw)
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default()
    }

    #[test]
    fn instants_are_rfc_3339_date_times_or_dates() {
        assert_eq!(
            parse_instant("2026-05-01T10:00:00+02:00"),
            Some(at("2026-05-01T08:00:00Z"))
        );
        assert_eq!(
            parse_instant("2026-05-01"),
            Some(at("2026-05-01T00:00:00Z"))
        );
        assert_eq!(parse_instant("2026-02-30"), None);
        assert_eq!(parse_instant("yesterday"), None);
        assert_eq!(parse_instant("2026-05-01 junk"), None);
        assert_eq!(parse_instant("0000-12-31"), None);
        assert_eq!(parse_instant("+10000-01-01"), None);
        assert_eq!(parse_instant(""), None);
    }

    #[test]
    fn the_default_range_is_the_30_days_up_to_the_end_of_today() {
        let now = at("2026-05-10T15:30:00Z");
        let (from, to) = range(None, None, now).unwrap_or_default();
        assert_eq!(to, at("2026-05-11T00:00:00Z"));
        assert_eq!(from, at("2026-04-11T00:00:00Z"));
        let (from, to) = range(None, Some("2026-03-01"), now).unwrap_or_default();
        assert_eq!(
            (from, to),
            (at("2026-01-30T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        let (from, _) = range(Some("2026-05-01"), None, now).unwrap_or_default();
        assert_eq!(from, at("2026-05-01T00:00:00Z"));
    }

    #[test]
    fn a_range_must_parse_and_run_forwards() {
        let now = at("2026-05-10T15:30:00Z");
        let code = |from, to| range(from, to, now).err().map(|p| p.code);
        assert_eq!(
            code(Some("2026-05-02"), Some("2026-05-01")),
            Some("invalid_query")
        );
        assert_eq!(
            code(Some("2026-05-01"), Some("2026-05-01")),
            Some("invalid_query")
        );
        assert_eq!(code(Some("May 1st"), None), Some("invalid_query"));
        assert_eq!(code(None, Some("2026-13-01")), Some("invalid_query"));
        assert_eq!(code(Some("2026-05-01"), Some("2026-05-01T00:00:01Z")), None);
    }
}
