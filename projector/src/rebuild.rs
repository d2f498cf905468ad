//! `projector rebuild <projection>`: rebuilds a read model from the event store (not from
//! NATS) into fresh tables, then swaps them in. The old tables keep serving until the swap,
//! which is one short transaction.
//!
//! Events are read in transaction order below the commit horizon, like the relay, in batches of
//! their own transactions (a long writing transaction would hold back the relay's horizon
//! for the whole cluster). The swap locks the checkpoints and the live tables, applies what
//! was committed since, and renames. Anything the live projector applied to the old tables
//! had been published, so was below the horizon, so is included by that last catch-up.

use std::collections::HashMap;

use events::envelope::Envelope;
use events::keyring::Keyring;
use sqlx::{Connection, PgConnection, PgPool, Row};

use crate::projection::{
    apply_all_in_order, envelope_from_row, Projection, ProjectionError, Target,
};

/// Events read and applied per transaction.
const BATCH: i64 = 5_000;

/// How the transactions that read the store begin. A batch reads the commit horizon and
/// then the events below it; that is only sound when the read takes a later snapshot than
/// the horizon's, so these transactions are read committed whatever the database's or the
/// role's `default_transaction_isolation` says (under repeatable read a writer that
/// committed while the horizon was computed would be counted as ended yet not seen, and its
/// events would be missing from the rebuilt tables).
const BEGIN_READ_COMMITTED: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RebuildReport {
    /// Events applied to the fresh tables.
    pub events: usize,
    /// Of which applied during the swap.
    pub caught_up: usize,
}

/// Rebuilds `projection` and swaps the result in.
pub async fn rebuild(
    pool: &PgPool,
    projection: &dyn Projection,
    keys: &Keyring,
) -> Result<RebuildReport, ProjectionError> {
    let mut conn = pool.acquire().await?;
    // Fresh statistics first: after a bulk load (a restore, an import) stale ones make the
    // planner scan the whole store for every batch instead of walking the commit-order index.
    sqlx::query("ANALYZE events").execute(&mut *conn).await?;
    let name = projection.name();
    create_fresh_tables(&mut conn, projection).await?;

    let types: Vec<String> = projection
        .aggregate_types()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut after = ("0".to_owned(), 0_i64);
    let mut report = RebuildReport::default();
    loop {
        let mut tx = conn.begin_with(BEGIN_READ_COMMITTED).await?;
        let n = apply_batch(&mut tx, projection, &types, &mut after, Phase::Bulk, keys).await?;
        tx.commit().await?;
        report.events += n;
        if n == 0 {
            break;
        }
        tracing::info!(projection = name, events = report.events, "rebuilding");
    }

    swap(&mut conn, projection, &types, &mut after, &mut report, keys).await?;
    tracing::info!(
        projection = name,
        events = report.events,
        caught_up = report.caught_up,
        "rebuilt and swapped in"
    );
    Ok(report)
}

/// Creates the fresh tables (empty copies of the live ones, with their indexes and comments)
/// and forgets the fresh checkpoints of an earlier, interrupted rebuild.
async fn create_fresh_tables(
    conn: &mut PgConnection,
    projection: &dyn Projection,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    let mut tx = conn.begin().await?;
    for table in projection.tables() {
        let copy = Target::REBUILD.table(table);
        sqlx::query(&format!("DROP TABLE IF EXISTS {copy}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("CREATE TABLE {copy} (LIKE {table} INCLUDING ALL)"))
            .execute(&mut *tx)
            .await?;
        // The table's comment (its owner, migration 0048) goes with it.
        let comment: String = sqlx::query_scalar(
            "SELECT format('COMMENT ON TABLE %s IS %L', $1::text,
                           obj_description($2::regclass, 'pg_class'))",
        )
        .bind(&copy)
        .bind(table)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(&comment).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(Target::REBUILD.checkpoint(name))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Locks the live tables, applies what was committed since the bulk load, and swaps the
/// fresh tables and checkpoints in, in one transaction.
async fn swap(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    types: &[String],
    after: &mut (String, i64),
    report: &mut RebuildReport,
    keys: &Keyring,
) -> Result<(), ProjectionError> {
    let name = projection.name();
    let mut tx = conn.begin_with(BEGIN_READ_COMMITTED).await?;
    // Lock order: checkpoints, then tables — the order the live projector takes them in
    // (checkpoint row, then read-model row), so the swap cannot deadlock with it.
    sqlx::query("LOCK TABLE projection_checkpoints IN EXCLUSIVE MODE")
        .execute(&mut *tx)
        .await?;
    for table in projection.tables() {
        sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            .execute(&mut *tx)
            .await?;
    }
    loop {
        let n = apply_batch(&mut tx, projection, types, after, Phase::CatchUp, keys).await?;
        report.caught_up += n;
        if n == 0 {
            break;
        }
    }
    report.events += report.caught_up;
    for table in projection.tables() {
        let old = format!("{table}__old");
        sqlx::query(&format!("ALTER TABLE {table} RENAME TO {old}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!(
            "ALTER TABLE {} RENAME TO {table}",
            Target::REBUILD.table(table)
        ))
        .execute(&mut *tx)
        .await?;
        sqlx::query(&format!("DROP TABLE {old}"))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE projection_checkpoints SET projection = $1 WHERE projection = $2")
        .bind(name)
        .bind(Target::REBUILD.checkpoint(name))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// How a batch is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the swap, nothing but the rebuild touches the fresh tables and its checkpoints,
    /// and the events come from the store once each, in commit order (so each aggregate's in
    /// sequence order): the per-event checkpoint lock and check are not needed. Each batch
    /// writes the aggregates' checkpoints once, at its end.
    Bulk,
    /// During the swap: through [`apply_all_in_order`], like the live projector.
    CatchUp,
}

/// Applies the next batch after `after` (a `(transaction_id, global_position)` pair) to the
/// fresh tables and moves `after` on.
async fn apply_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    types: &[String],
    after: &mut (String, i64),
    phase: Phase,
    keys: &Keyring,
) -> Result<usize, ProjectionError> {
    let (mut envelopes, read) = read_batch(conn, projection, types, after).await?;
    let mut reached: HashMap<(String, String), i64> = HashMap::new();
    match phase {
        Phase::Bulk => {
            // Personal fields opened as the live projector opens them (docs/privacy.md).
            keys.open_values_on(conn, envelopes.iter_mut().map(|e| &mut e.payload).collect())
                .await?;
            projection
                .apply_all(conn, &Target::REBUILD, &envelopes)
                .await?;
            for e in &envelopes {
                reached.insert(
                    (e.aggregate_type.clone(), e.aggregate_id.clone()),
                    e.sequence as i64,
                );
            }
        }
        Phase::CatchUp => {
            apply_all_in_order(conn, projection, &Target::REBUILD, &envelopes, keys).await?;
        }
    }
    write_checkpoints(conn, projection, reached).await?;
    Ok(read)
}

/// Reads the next batch after `after` below the commit horizon and moves `after` on: the
/// envelopes, and how many events were read (quarantined ones included).
async fn read_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    types: &[String],
    after: &mut (String, i64),
) -> Result<(Vec<Envelope>, usize), ProjectionError> {
    // The relay's horizon (migration 0020), in a statement of its own before the read, which
    // must take a later snapshot ([`BEGIN_READ_COMMITTED`]).
    let (horizon, isolation): (String, String) = sqlx::query_as(
        "SELECT events_commit_horizon()::text, current_setting('transaction_isolation')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if isolation != "read committed" {
        return Err(ProjectionError::Unsound(format!(
            "a batch read in a {isolation} transaction would miss writers that commit while the horizon is computed"
        )));
    }
    let rows = sqlx::query(&format!(
        "SELECT ({})::text AS envelope, transaction_id::text AS txid, global_position,
                EXISTS (SELECT 1 FROM quarantined_events q
                         WHERE q.global_position = events.global_position) AS quarantined
           FROM events
          WHERE aggregate_type = ANY($1)
            AND (transaction_id, global_position) > ($2::text::xid8, $3)
            AND transaction_id < $5::text::xid8
          ORDER BY transaction_id, global_position
          LIMIT $4",
        events::envelope::ENVELOPE_SQL
    ))
    .bind(types)
    .bind(&after.0)
    .bind(after.1)
    .bind(BATCH)
    .bind(horizon)
    .fetch_all(&mut *conn)
    .await?;
    let mut envelopes = Vec::with_capacity(rows.len());
    for row in &rows {
        *after = (row.try_get("txid")?, row.try_get("global_position")?);
        match envelope_from_row(row) {
            Ok(envelope) => envelopes.push(envelope),
            // The relay quarantined it and the live projection never saw it: a rebuild
            // passes over it the same way, and says so.
            Err(ProjectionError::Undecodable { event_id, reason })
                if row.try_get("quarantined")? =>
            {
                tracing::warn!(
                    projection = projection.name(),
                    event_id,
                    reason,
                    "a quarantined event passed over, as the relay did"
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok((envelopes, rows.len()))
}

/// Writes each aggregate's checkpoint as the bulk load `reached` it, in one statement.
async fn write_checkpoints(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    reached: HashMap<(String, String), i64>,
) -> Result<(), ProjectionError> {
    if reached.is_empty() {
        return Ok(());
    }
    let mut types = Vec::with_capacity(reached.len());
    let mut ids = Vec::with_capacity(reached.len());
    let mut sequences = Vec::with_capacity(reached.len());
    for ((t, id), sequence) in reached {
        types.push(t);
        ids.push(id);
        sequences.push(sequence);
    }
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, aggregate_type, aggregate_id, sequence)
         SELECT $1, t, i, s FROM unnest($2::text[], $3::text[], $4::bigint[]) AS u(t, i, s)
         ON CONFLICT (projection, aggregate_type, aggregate_id)
         DO UPDATE SET sequence = EXCLUDED.sequence",
    )
    .bind(Target::REBUILD.checkpoint(projection.name()))
    .bind(types)
    .bind(ids)
    .bind(sequences)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
