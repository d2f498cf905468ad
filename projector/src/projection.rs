//! The projection contract and the one place that makes application exactly-once and
//! in order (docs/architecture.md, invariant 4).

use std::collections::HashMap;

use async_trait::async_trait;
use events::keyring::{KeyError, Keyring};
use events::Envelope;
use sqlx::{PgConnection, Row};

/// Why an event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// PostgreSQL failed (retried).
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The event does not decode as the projection expects (dead-lettered after retries).
    #[error("undecodable event {event_id}: {reason}")]
    Undecodable {
        /// Which event.
        event_id: String,
        /// Why.
        reason: String,
    },
    /// A side effect's service (Soketi, a provider) failed or was unreachable (retried).
    #[error("side effect: {0}")]
    Unavailable(String),
    /// A read of the store would not be sound as asked (a rebuild's batch in a transaction
    /// that is not read committed): nothing was read.
    #[error("unsound read of the store: {0}")]
    Unsound(String),
    /// The store lacks an event the sequence says must exist.
    #[error("missing events {from}..{to} of {aggregate} in the store")]
    Missing {
        /// `{type}:{id}`.
        aggregate: String,
        /// First missing sequence.
        from: u64,
        /// Last missing sequence.
        to: u64,
    },
}

impl From<KeyError> for ProjectionError {
    /// A key could not be read: the database failed, or a data key is sealed under a master
    /// key this process lacks (its settings must change; retried until then).
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::Database(e) => ProjectionError::Database(e),
            other => ProjectionError::Unavailable(other.to_string()),
        }
    }
}

impl ProjectionError {
    /// True for errors that say nothing about the event: the database was unreachable,
    /// restarting, overloaded, or chose this transaction as a deadlock or serialization
    /// victim. Such errors are retried for as long as they last; every other error (a
    /// constraint or data error, an undecodable event) counts towards dead-lettering.
    pub fn is_transient(&self) -> bool {
        if let ProjectionError::Unavailable(_) = self {
            return true;
        }
        let ProjectionError::Database(e) = self else {
            return false;
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // serialization failure, deadlock, lock not available, connection
                // exceptions, insufficient resources, operator intervention (shutdown,
                // cancelled statement).
                matches!(code.as_ref(), "40001" | "40P01" | "55P03")
                    || ["08", "53", "57"]
                        .iter()
                        .any(|class| code.starts_with(class))
            }),
            _ => false,
        }
    }
}

/// Which physical tables a projection writes: the live ones, or a rebuild's fresh copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Appended to every table name and to the checkpoint's projection name.
    suffix: &'static str,
}

impl Target {
    /// The tables queries read.
    pub const LIVE: Target = Target { suffix: "" };
    /// The fresh tables a rebuild fills before swapping them in.
    pub const REBUILD: Target = Target {
        suffix: "__rebuild",
    };

    /// The physical name of `table`.
    pub fn table(&self, table: &str) -> String {
        format!("{table}{}", self.suffix)
    }

    /// The checkpoint key of `projection` for this target.
    pub fn checkpoint(&self, projection: &str) -> String {
        format!("{projection}{}", self.suffix)
    }
}

/// The update one event makes to one row of a read model keyed by a UUID `id` and carrying
/// `updated_at` and `version`: `$1` is the row, `$2` the event's time, `$3` its version, and
/// the statement's own values follow from `$4` (the shape most projections share).
pub struct RowUpdate {
    /// The physical table.
    table: String,
    /// When the event was recorded.
    recorded: chrono::DateTime<chrono::Utc>,
    /// The event's sequence: the row's version after it.
    version: i64,
}

/// A statement of [`RowUpdate`], its first three values bound.
pub type RowQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

impl RowUpdate {
    /// Updates of `table` (a physical name, from [`Target::table`]) for event `e`.
    pub fn new(table: String, e: &Envelope) -> Self {
        Self {
            table,
            recorded: e.recorded_at,
            version: e.sequence as i64,
        }
    }

    /// The statement that sets `set` (its values from `$4`) on one row.
    pub fn sql(&self, set: &str) -> String {
        format!(
            "UPDATE {} SET {set}, updated_at = $2, version = $3 WHERE id = $1::uuid",
            self.table
        )
    }

    /// `sql` (from [`RowUpdate::sql`]) for the row `id`, its first three values bound.
    pub fn query<'q>(&self, sql: &'q str, id: &str) -> RowQuery<'q> {
        sqlx::query(sql)
            .bind(id.to_owned())
            .bind(self.recorded)
            .bind(self.version)
    }
}

/// Runs one statement of a projection.
pub async fn run(conn: &mut PgConnection, query: RowQuery<'_>) -> Result<(), ProjectionError> {
    query.execute(&mut *conn).await?;
    Ok(())
}

/// A read model built from events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Durable consumer name and checkpoint key.
    fn name(&self) -> &'static str;
    /// The aggregate types whose events it reads.
    fn aggregate_types(&self) -> &'static [&'static str];
    /// The tables it owns (rebuilt and swapped together).
    fn tables(&self) -> &'static [&'static str];
    /// Changes the read model for one event, inside the caller's transaction.
    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        event: &Envelope,
    ) -> Result<(), ProjectionError>;
    /// The side effect this projection performs, if it is a side-effect worker rather than a
    /// read model (it then has no tables, and a rebuild refuses it).
    fn effect(&self) -> Option<&dyn Effect> {
        None
    }
    /// Changes the read model for `events` (each aggregate's in sequence order, none applied
    /// before), inside the caller's transaction. A rebuild feeds whole batches through it; a
    /// projection that can fold them into one write per row does so here, the default applies
    /// them one by one.
    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        for event in events {
            self.apply(conn, target, event).await?;
        }
        Ok(())
    }
}

/// A side effect of events (a realtime push, a message to a provider), performed by a
/// projection's worker before the projection's checkpoints move, and outside any transaction:
/// a slow or unreachable service must not hold a writing transaction open (which would hold
/// back the relay's commit horizon for the whole cluster, docs/architecture.md, invariant 3).
///
/// The worker hands it, in each aggregate's sequence order, the events its checkpoints have
/// not passed (gaps filled from the store), and moves the checkpoints only after it succeeded.
/// So an outage delays effects and loses none; a crash between the effect and the checkpoint
/// repeats that batch's effects once, which is why every effect carries its event's id.
#[async_trait]
pub trait Effect: Send + Sync {
    /// Performs the effects of `events`; an error leaves them to be retried.
    async fn perform(&self, events: &[Envelope]) -> Result<(), ProjectionError>;
}

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Applied, after filling `filled` missing earlier events from the store.
    Applied {
        /// Events of the same aggregate read from the store to close a gap.
        filled: usize,
    },
    /// Already applied; skipped.
    Duplicate,
}

/// Applies `event` exactly once and in sequence order, inside the caller's transaction
/// ([`apply_all_in_order`] with one event).
pub async fn apply_in_order(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    event: &Envelope,
    keyring: &Keyring,
) -> Result<Applied, ProjectionError> {
    let applied = apply_all_in_order(
        conn,
        projection,
        target,
        std::slice::from_ref(event),
        keyring,
    )
    .await?;
    Ok(applied.first().copied().unwrap_or(Applied::Duplicate))
}

/// Applies `events` exactly once and in sequence order, inside the caller's transaction, and
/// says what happened to each: locks the checkpoint rows of their aggregates, skips what is
/// at or below a checkpoint, fills a gap from the event store, and moves the checkpoints in
/// the same transaction as the read-model change.
///
/// A batch costs the same statements as one event: one to lock the checkpoints, the
/// projection's [`Projection::apply_all`], one to move the checkpoints. Checkpoint rows are
/// locked in one order (aggregate type, then id), so two projector instances cannot deadlock.
pub async fn apply_all_in_order(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    events: &[Envelope],
    keyring: &Keyring,
) -> Result<Vec<Applied>, ProjectionError> {
    let checkpoint = target.checkpoint(projection.name());
    let mut keys: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str()))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    let (types, ids): (Vec<&str>, Vec<&str>) = keys.into_iter().unzip();
    // Creates the rows that are missing and locks them all either way, so two projector
    // instances cannot both apply the first event of an aggregate.
    let locked: Vec<(String, String, i64)> = sqlx::query_as(
        "INSERT INTO projection_checkpoints (projection, aggregate_type, aggregate_id, sequence)
         SELECT $1, t, i, 0 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS u(t, i, n)
          ORDER BY n
         ON CONFLICT (projection, aggregate_type, aggregate_id)
         DO UPDATE SET sequence = projection_checkpoints.sequence
         RETURNING aggregate_type, aggregate_id, sequence",
    )
    .bind(&checkpoint)
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let before: HashMap<(String, String), u64> = locked
        .into_iter()
        .map(|(t, i, s)| ((t, i), s as u64))
        .collect();
    let Plan {
        accepted,
        outcomes,
        last,
    } = plan(conn, &before, events, keyring).await?;
    if accepted.is_empty() {
        return Ok(outcomes);
    }
    projection.apply_all(conn, target, &accepted).await?;
    let mut moved = (Vec::new(), Vec::new(), Vec::new());
    for ((t, i), s) in last {
        if before.get(&(t.clone(), i.clone())) != Some(&s) {
            moved.0.push(t);
            moved.1.push(i);
            moved.2.push(s as i64);
        }
    }
    sqlx::query(
        "UPDATE projection_checkpoints AS c SET sequence = u.s
           FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(t, i, s)
          WHERE c.projection = $1 AND c.aggregate_type = u.t AND c.aggregate_id = u.i",
    )
    .bind(&checkpoint)
    .bind(moved.0)
    .bind(moved.1)
    .bind(moved.2)
    .execute(&mut *conn)
    .await?;
    Ok(outcomes)
}

/// What [`plan`] decided for a batch.
struct Plan {
    /// The events to apply, in order, gap fills included.
    accepted: Vec<Envelope>,
    /// What happens to each event of the batch.
    outcomes: Vec<Applied>,
    /// Each aggregate's sequence once `accepted` is applied.
    last: HashMap<(String, String), u64>,
}

/// Decides, from each aggregate's checkpoint in `before`, which of `events` are duplicates
/// and which apply, filling a gap from the event store; the events to apply have their
/// personal fields opened (docs/privacy.md), so every projection and effect reads them in
/// clear, or as `[erased]`.
async fn plan(
    conn: &mut PgConnection,
    before: &HashMap<(String, String), u64>,
    events: &[Envelope],
    keyring: &Keyring,
) -> Result<Plan, ProjectionError> {
    let mut last = before.clone();
    let mut accepted = Vec::with_capacity(events.len());
    let mut outcomes = Vec::with_capacity(events.len());
    for event in events {
        let key = (event.aggregate_type.clone(), event.aggregate_id.clone());
        let at = last.get(&key).copied().unwrap_or(0);
        if event.sequence <= at {
            outcomes.push(Applied::Duplicate);
            continue;
        }
        let mut filled = 0;
        if event.sequence > at + 1 {
            let missing = load_stream(
                conn,
                &event.aggregate_type,
                &event.aggregate_id,
                at,
                event.sequence,
            )
            .await?;
            let expected = event.sequence - at - 1;
            if missing.len() as u64 != expected
                || missing
                    .iter()
                    .zip(at + 1..)
                    .any(|((s, _), want)| *s != want)
            {
                return Err(ProjectionError::Missing {
                    aggregate: format!("{}:{}", event.aggregate_type, event.aggregate_id),
                    from: at + 1,
                    to: event.sequence - 1,
                });
            }
            // An event the relay quarantined never reaches the bus: passed over here as it
            // was there (`None`), so it does not hold back the aggregate's later events.
            let missing: Vec<Envelope> = missing.into_iter().filter_map(|(_, e)| e).collect();
            filled = missing.len();
            accepted.extend(missing);
        }
        accepted.push(event.clone());
        last.insert(key, event.sequence);
        outcomes.push(Applied::Applied { filled });
    }
    // On the caller's connection: a worker holding one in its transaction must not wait
    // for a second from a pool its peers may hold the same way.
    keyring
        .open_values_on(conn, accepted.iter_mut().map(|e| &mut e.payload).collect())
        .await?;
    Ok(Plan {
        accepted,
        outcomes,
        last,
    })
}

/// The events of `events` a side effect still has to perform: those past their aggregate's
/// checkpoint, in order, with gaps filled from the store (an aggregate without a checkpoint
/// gets one just before its first event in `events`). Runs outside any transaction (one
/// short insert, then reads); the worker then moves the checkpoints with
/// [`apply_all_in_order`].
pub async fn pending_in_order(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    target: &Target,
    events: &[Envelope],
    keyring: &Keyring,
) -> Result<Vec<Envelope>, ProjectionError> {
    // An aggregate the effect has never seen starts where the effect first meets it (a side
    // effect added to a running system does not replay each aggregate's past: a dashboard
    // would show old messages as new). That start is recorded before anything is performed,
    // so an event that fails and is retried later is not taken for the past by then.
    let mut first: HashMap<(&str, &str), i64> = HashMap::new();
    for e in events {
        first
            .entry((e.aggregate_type.as_str(), e.aggregate_id.as_str()))
            .or_insert(e.sequence.saturating_sub(1) as i64);
    }
    let mut starts = (Vec::new(), Vec::new(), Vec::new());
    for ((t, i), s) in &first {
        starts.0.push(*t);
        starts.1.push(*i);
        starts.2.push(*s);
    }
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, aggregate_type, aggregate_id, sequence)
         SELECT $1, t, i, s FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(t, i, s)
         ON CONFLICT (projection, aggregate_type, aggregate_id) DO NOTHING",
    )
    .bind(target.checkpoint(projection.name()))
    .bind(&starts.0)
    .bind(&starts.1)
    .bind(&starts.2)
    .execute(&mut *conn)
    .await?;
    let (types, ids): (Vec<&str>, Vec<&str>) = events
        .iter()
        .map(|e| (e.aggregate_type.as_str(), e.aggregate_id.as_str()))
        .unzip();
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT c.aggregate_type, c.aggregate_id, c.sequence
           FROM projection_checkpoints c
           JOIN unnest($2::text[], $3::text[]) AS u(t, i) ON c.aggregate_type = u.t AND c.aggregate_id = u.i
          WHERE c.projection = $1",
    )
    .bind(target.checkpoint(projection.name()))
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let before: HashMap<(String, String), u64> = rows
        .into_iter()
        .map(|(t, i, s)| ((t, i), s as u64))
        .collect();
    Ok(plan(conn, &before, events, keyring).await?.accepted)
}

/// Decodes the `envelope` column of a row selected as `({ENVELOPE_SQL})::text`
/// ([`events::envelope::ENVELOPE_SQL`]): read as text and decoded here, so that an event whose
/// stored form does not decode is an [`ProjectionError::Undecodable`] of that event rather
/// than a failure of the whole read.
pub fn envelope_from_row(row: &sqlx::postgres::PgRow) -> Result<Envelope, ProjectionError> {
    let text: String = row.try_get("envelope")?;
    serde_json::from_str(&text).map_err(|e| ProjectionError::Undecodable {
        event_id: format!(
            "(stored event at {})",
            row.try_get::<i64, _>("global_position").unwrap_or_default()
        ),
        reason: e.to_string(),
    })
}

/// Events of one aggregate with `after < sequence < before`, from the store, by sequence:
/// `None` for one the relay quarantined as unreadable (it was never published); any other
/// event that does not decode is an error.
async fn load_stream(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    after: u64,
    before: u64,
) -> Result<Vec<(u64, Option<Envelope>)>, ProjectionError> {
    let rows = sqlx::query(&format!(
        "SELECT ({})::text AS envelope, global_position, sequence,
                EXISTS (SELECT 1 FROM quarantined_events q
                         WHERE q.global_position = events.global_position) AS quarantined
           FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 AND sequence < $4
          ORDER BY sequence",
        events::envelope::ENVELOPE_SQL
    ))
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(after as i64)
    .bind(before as i64)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let sequence = row.try_get::<i64, _>("sequence")? as u64;
            match envelope_from_row(row) {
                Ok(envelope) => Ok((sequence, Some(envelope))),
                Err(ProjectionError::Undecodable { .. }) if row.try_get("quarantined")? => {
                    Ok((sequence, None))
                }
                Err(e) => Err(e),
            }
        })
        .collect()
}

/// An envelope's payload as the event type `E`; a payload that is not one is
/// [`ProjectionError::Undecodable`].
pub(crate) fn decode<E: serde::de::DeserializeOwned>(e: &Envelope) -> Result<E, ProjectionError> {
    serde_json::from_value(e.payload.clone()).map_err(|err| ProjectionError::Undecodable {
        event_id: e.event_id(),
        reason: err.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::ProjectionError;

    #[test]
    fn only_errors_that_say_nothing_about_the_event_are_transient() {
        let db = |e| ProjectionError::Database(e).is_transient();
        assert!(db(sqlx::Error::PoolTimedOut));
        assert!(db(sqlx::Error::Io(std::io::Error::other("reset"))));
        assert!(!db(sqlx::Error::RowNotFound));
        assert!(!db(sqlx::Error::ColumnNotFound("x".into())));
        let undecodable = ProjectionError::Undecodable {
            event_id: "e".into(),
            reason: "r".into(),
        };
        assert!(!undecodable.is_transient());
    }
}
