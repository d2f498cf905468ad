//! Checks every aggregate snapshot against the events it stands for.
//!
//! A snapshot is a cache of an aggregate's state at one sequence, kept in a `jsonb` column.
//! It is sound when it decodes, and the state it yields with the later events applied is
//! the state a replay of every event from the first yields. Aggregates decide from their
//! state alone (and the command, and services that do not read the aggregate), so a sound
//! snapshot makes the aggregate decide every command exactly as it would without it.
//!
//! `command-api snapshots verify` runs [`audit`] on a live store; the test suite runs it
//! over what each test wrote.

use std::collections::BTreeMap;

use cqrs_es::Aggregate;
use serde_json::Value;
use sqlx::PgPool;

/// What [`audit`] found.
#[derive(Debug, Default)]
pub struct Audit {
    /// Per aggregate type: how its snapshots looked.
    pub types: BTreeMap<String, TypeAudit>,
    /// Every snapshot that was not sound.
    pub findings: Vec<Finding>,
    /// Aggregate types with snapshots that this version does not run (left unchecked).
    pub unknown_types: std::collections::BTreeSet<String>,
}

/// The snapshots of one aggregate type.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TypeAudit {
    /// How many aggregates of the type have a snapshot.
    pub snapshots: usize,
    /// The most snapshot writes any one of them has had (postgres-es's counter): 2 means
    /// an aggregate crossed two snapshot intervals.
    pub most_rewrites: i64,
    /// The longest event history among them.
    pub longest: i64,
}

/// A snapshot that is not sound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate.
    pub aggregate_id: String,
    /// What is wrong.
    pub problem: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.aggregate_type, self.aggregate_id, self.problem
        )
    }
}

impl Audit {
    /// Whether every snapshot is sound.
    pub fn is_sound(&self) -> bool {
        self.findings.is_empty()
    }
}

/// One row of `snapshots`.
#[derive(sqlx::FromRow)]
struct Snapshot {
    aggregate_type: String,
    aggregate_id: String,
    last_sequence: i64,
    current_snapshot: i64,
    payload: Value,
}

/// Checks every snapshot in the store behind `pool`, one aggregate at a time, all as of one
/// moment (a read-only transaction: it takes no transaction id, so it holds back neither
/// writers nor the relay's horizon).
pub async fn audit(pool: &PgPool) -> Result<Audit, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let snapshots: Vec<Snapshot> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, last_sequence, current_snapshot, payload
           FROM snapshots ORDER BY aggregate_type, aggregate_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut audit = Audit::default();
    for snapshot in snapshots {
        let events: Vec<(i64, Value)> = sqlx::query_as(
            "SELECT sequence, payload FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
        )
        .bind(&snapshot.aggregate_type)
        .bind(&snapshot.aggregate_id)
        .fetch_all(&mut *tx)
        .await?;
        if !crate::Contexts::aggregates().any(|c| c.aggregate_type == snapshot.aggregate_type) {
            audit.unknown_types.insert(snapshot.aggregate_type);
            continue;
        }
        let entry = audit
            .types
            .entry(snapshot.aggregate_type.clone())
            .or_default();
        entry.snapshots += 1;
        entry.most_rewrites = entry.most_rewrites.max(snapshot.current_snapshot);
        entry.longest = entry
            .longest
            .max(events.last().map_or(0, |(sequence, _)| *sequence));
        if let Err(problem) = check_any(&snapshot, &events) {
            audit.findings.push(Finding {
                aggregate_type: snapshot.aggregate_type,
                aggregate_id: snapshot.aggregate_id,
                problem,
            });
        }
    }
    tx.commit().await?;
    Ok(audit)
}

/// An aggregate's events as stored: `(sequence, payload)`, in order.
type StoredEvents<'a> = &'a [(i64, Value)];

/// How the snapshots of one aggregate type are checked: what a context contributes for each
/// aggregate it runs ([`crate::context::BoundedContext::aggregates`]).
#[derive(Clone, Copy)]
pub struct Checked {
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// [`check`] for it.
    check: fn(&Snapshot, StoredEvents<'_>) -> Result<(), String>,
}

/// The check of aggregate `A`'s snapshots.
pub const fn checked<A>() -> Checked
where
    A: Aggregate + PartialEq,
{
    Checked {
        aggregate_type: A::TYPE,
        check: check::<A>,
    }
}

/// The type of every aggregate command-api runs, in the order of the contexts.
pub fn aggregate_types() -> Vec<&'static str> {
    crate::Contexts::aggregates()
        .map(|c| c.aggregate_type)
        .collect()
}

/// [`check`] for the aggregate type the snapshot names.
fn check_any(snapshot: &Snapshot, events: &[(i64, Value)]) -> Result<(), String> {
    match crate::Contexts::aggregates().find(|c| c.aggregate_type == snapshot.aggregate_type) {
        Some(c) => (c.check)(snapshot, events),
        None => Err(format!(
            "no aggregate type {:?} in this version",
            snapshot.aggregate_type
        )),
    }
}

/// Whether `snapshot` of an `A`, with the events after it, is the state all of `events`
/// make.
fn check<A>(snapshot: &Snapshot, events: &[(i64, Value)]) -> Result<(), String>
where
    A: Aggregate + PartialEq,
{
    let mut from_snapshot: A = serde_json::from_value(snapshot.payload.clone())
        .map_err(|e| format!("the snapshot does not decode: {e}"))?;
    let mut replayed = A::default();
    let mut sequences = 0;
    for (sequence, payload) in events {
        let event: A::Event = serde_json::from_value(payload.clone())
            .map_err(|e| format!("event {sequence} does not decode: {e}"))?;
        if *sequence > snapshot.last_sequence {
            from_snapshot.apply(event.clone());
        }
        replayed.apply(event);
        sequences = *sequence;
    }
    if sequences < snapshot.last_sequence {
        return Err(format!(
            "the snapshot is at sequence {} but the events end at {sequences}",
            snapshot.last_sequence
        ));
    }
    if from_snapshot != replayed {
        let shown = |a: &A| serde_json::to_string(a).unwrap_or_default();
        return Err(format!(
            "the snapshot (at {}) with the later events is {}, a replay is {}",
            snapshot.last_sequence,
            shown(&from_snapshot),
            shown(&replayed)
        ));
    }
    Ok(())
}
