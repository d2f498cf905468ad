//! Keyset pagination: a page ends at a `(timestamp, id)` pair, handed to the client as an
//! opaque cursor, so pages neither repeat nor skip rows while new ones arrive.

use base64::Engine;
use chrono::{DateTime, Utc};
use events::http::Problem;
use uuid::Uuid;

/// The cursor after the row at `(at, id)`.
pub fn encode_cursor(at: DateTime<Utc>, id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}|{id}", at.to_rfc3339()))
}

/// The `(at, id)` a cursor from [`encode_cursor`] names; `None` for anything else.
pub fn decode_cursor(raw: &str) -> Option<(DateTime<Utc>, Uuid)> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(raw)
        .ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        Uuid::parse_str(id).ok()?,
    ))
}

/// A `cursor` query parameter, decoded; 400 `invalid_cursor` when it is not one of ours.
pub fn cursor(raw: Option<&str>) -> Result<Option<(DateTime<Utc>, Uuid)>, Problem> {
    raw.map(|raw| {
        decode_cursor(raw).ok_or_else(|| {
            Problem::bad_request("invalid_cursor", "The cursor is not one this API issued.")
        })
    })
    .transpose()
}

/// A page size: 1–200, 50 when absent.
pub fn limit(raw: Option<i64>) -> Result<i64, Problem> {
    let limit = raw.unwrap_or(50);
    if (1..=200).contains(&limit) {
        Ok(limit)
    } else {
        Err(Problem::bad_request(
            "invalid_query",
            "limit must be 1 to 200.",
        ))
    }
}

/// Ends a page read with `LIMIT limit + 1`: drops the extra row and answers what names the
/// next page (from the last row kept), or `None` on the last page.
pub fn finish<T, C>(items: &mut Vec<T>, limit: i64, next: impl Fn(&T) -> C) -> Option<C> {
    if items.len() as i64 > limit {
        items.truncate(limit as usize);
        items.last().map(next)
    } else {
        None
    }
}

/// A `WHERE` clause holding only the filters a request asks for. Writing optional filters
/// as `$n IS NULL OR …` instead leaves PostgreSQL's cached generic plan for sqlx's prepared
/// statement a scan and a sort of the whole table (docs/performance.md, run 5): here each
/// shape of request gets its own statement and a plan that uses the index.
///
/// Filters added with a value ([`Conditions::text`], [`Conditions::flag`],
/// [`Conditions::int`], [`Conditions::time`], [`Conditions::keyset`]) keep it, and
/// [`Conditions::bind`] binds them in placeholder order, so a handler cannot bind them out of
/// step with the clause.
#[derive(Debug)]
pub struct Conditions {
    /// ` WHERE true AND …`.
    sql: String,
    /// The last placeholder number written.
    last: usize,
    /// The values of the filters added with one, in placeholder order.
    values: Vec<Value>,
}

/// A value a filter compares with.
#[derive(Debug, Clone, PartialEq)]
enum Value {
    Text(String),
    Flag(bool),
    Int(i64),
    Time(DateTime<Utc>),
    Id(Uuid),
}

/// A `query_as` of PostgreSQL, as [`Conditions::bind`] takes and gives it.
pub type PgQueryAs<'q, O> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>;

impl Conditions {
    /// Conditions whose placeholders start after `$taken`.
    pub fn after(taken: usize) -> Self {
        Self {
            sql: " WHERE true".to_owned(),
            last: taken,
            values: Vec::new(),
        }
    }

    /// Adds `clause` (one `?`) compared with `value`, when there is one.
    pub fn text(&mut self, clause: &str, value: Option<String>) {
        if let Some(v) = value {
            self.and(clause);
            self.values.push(Value::Text(v));
        }
    }

    /// Adds `clause` (one `?`) compared with the boolean `value`, when there is one.
    pub fn flag(&mut self, clause: &str, value: Option<bool>) {
        if let Some(v) = value {
            self.and(clause);
            self.values.push(Value::Flag(v));
        }
    }

    /// Adds `clause` (one `?`) compared with the integer `value`, when there is one.
    pub fn int(&mut self, clause: &str, value: Option<i64>) {
        if let Some(v) = value {
            self.and(clause);
            self.values.push(Value::Int(v));
        }
    }

    /// Adds `clause` (one `?`) compared with the instant `value`, when there is one.
    pub fn time(&mut self, clause: &str, value: Option<DateTime<Utc>>) {
        if let Some(v) = value {
            self.and(clause);
            self.values.push(Value::Time(v));
        }
    }

    /// Adds `({columns}) < (?, ?)` for a page after `cursor`, when there is one: `columns`
    /// are the sort's timestamp and id, sorted descending.
    pub fn keyset(&mut self, columns: &str, cursor: Option<(DateTime<Utc>, Uuid)>) {
        if let Some((at, id)) = cursor {
            self.and(&format!("({columns}) < (?, ?)"));
            self.values.push(Value::Time(at));
            self.values.push(Value::Id(id));
        }
    }

    /// Binds the values of the filters added with one, in order, to `query` (whose SQL holds
    /// [`Conditions::sql`]); what follows the conditions is bound after.
    pub fn bind<'q, O>(self, mut query: PgQueryAs<'q, O>) -> PgQueryAs<'q, O> {
        for v in self.values {
            query = match v {
                Value::Text(t) => query.bind(t),
                Value::Flag(b) => query.bind(b),
                Value::Int(i) => query.bind(i),
                Value::Time(at) => query.bind(at),
                Value::Id(id) => query.bind(id),
            };
        }
        query
    }

    /// Adds ` AND {clause}`, each `?` in it replaced by the next placeholder (`$n`). The
    /// caller binds one value per `?`, in order.
    pub fn and(&mut self, clause: &str) {
        self.sql.push_str(" AND ");
        for (i, part) in clause.split('?').enumerate() {
            if i > 0 {
                self.last += 1;
                self.sql.push_str(&format!("${}", self.last));
            }
            self.sql.push_str(part);
        }
    }

    /// The next placeholder, for what follows the conditions (a `LIMIT`).
    pub fn next_placeholder(&mut self) -> String {
        self.last += 1;
        format!("${}", self.last)
    }

    /// The clause.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at = DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z")
            .map(|d| d.with_timezone(&Utc))
            .unwrap_or_default();
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Some((at, id)));
        assert_eq!(decode_cursor("not-a-cursor"), None);
        assert_eq!(decode_cursor(""), None);
        assert!(cursor(Some("garbage")).is_err());
        assert_eq!(limit(None).ok(), Some(50));
        assert!(limit(Some(0)).is_err() && limit(Some(201)).is_err());
    }

    #[test]
    fn conditions_number_their_placeholders_in_order() {
        let mut w = Conditions::after(1);
        w.and("t.status = ?");
        w.and("t.agent_id IS NULL");
        w.and("(t.at, t.id) < (?, ?)");
        assert_eq!(
            w.sql(),
            " WHERE true AND t.status = $2 AND t.agent_id IS NULL AND (t.at, t.id) < ($3, $4)"
        );
        assert_eq!(w.next_placeholder(), "$5");
    }

    #[test]
    fn conditions_with_values_keep_them_in_placeholder_order() {
        let at = Utc::now();
        let id = Uuid::now_v7();
        let mut w = Conditions::after(0);
        w.text("tenant_id = ?", Some("t1".into()));
        w.text("status = ?", None);
        w.int("id < ?", Some(7));
        w.keyset("at, id", Some((at, id)));
        assert_eq!(
            w.sql(),
            " WHERE true AND tenant_id = $1 AND id < $2 AND (at, id) < ($3, $4)"
        );
        assert_eq!(
            w.values,
            [
                Value::Text("t1".into()),
                Value::Int(7),
                Value::Time(at),
                Value::Id(id)
            ]
        );
    }
}
