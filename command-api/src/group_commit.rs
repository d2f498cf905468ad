//! Group commit: the events of commands decided at about the same time are appended in one
//! transaction, with one multi-row insert and one commit — one WAL flush — for all of them.
//!
//! postgres-es appends each command in a transaction of its own, one `INSERT` per event. On
//! this box a commit's flush and the round trips around it, not the work, bound the commands
//! a second (docs/performance.md). [`GroupCommit`] implements cqrs-es's own
//! `PersistedEventRepository`, so the aggregates, `PersistedEventStore` and the command bus
//! keep their shape: loads go to postgres-es unchanged, and `persist` hands the command's
//! events to a writer task and waits until the batch holding them has committed.
//!
//! How a batch forms: a writer takes the first waiting append, then every other one already
//! queued (up to [`MAX_BATCH_EVENTS`]), and does not wait for more. At low load a command is
//! written at once, alone; under load, the appends that arrive while a batch is being written
//! make up the next one. [`WRITERS`] writers, so one batch is being written while another
//! waits for its flush.
//!
//! One command's failure never fails another's: a batch whose insert meets a conflict (a
//! sequence already taken), a trigger's refusal or any error is rolled back whole, and each
//! of its commands is then written alone, which gives it exactly the answer it would have had
//! without company. No command hears "committed" before the `COMMIT` of its batch returned.
//!
//! Two commands on one aggregate never share a batch: the bus gives an aggregate's commands
//! their turn one after the other (`store::Turns`), so they cannot collide with each other.

use std::sync::Arc;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use events::http::Metrics;
use postgres_es::PostgresEventRepository;
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot, Mutex};

/// Writer tasks per process, each with a connection of its own (outside the handlers' pool,
/// so a commit never queues behind requests for a connection).
pub const WRITERS: u32 = 2;

/// Events per batch at most: a batch is one statement, and its transaction holds the relay's
/// commit horizon back for as long as it runs.
pub const MAX_BATCH_EVENTS: usize = 512;

/// Appends waiting for a writer. Past it, `persist` waits for room (the route and process
/// bounds keep it far from full).
const QUEUE: usize = 4_096;

/// One command's events, as cqrs-es hands them to `persist`.
struct Append {
    /// The aggregate type (`Aggregate::TYPE`).
    aggregate_type: &'static str,
    /// The events, in sequence order.
    events: Vec<SerializedEvent>,
    /// The snapshot postgres-es's snapshot store asks to write with them.
    snapshot: Option<Snapshot>,
    /// Where the outcome goes.
    done: oneshot::Sender<Result<(), PersistenceError>>,
}

/// A snapshot written in the events' transaction (`current_snapshot` 1 inserts the row, a
/// later one moves it on from the one before, as postgres-es does).
struct Snapshot {
    /// The aggregate.
    aggregate_id: String,
    /// Its serialised state.
    payload: Value,
    /// The snapshot's number.
    current_snapshot: usize,
}

/// The event repository of every command bus of a process: loads through postgres-es,
/// appends through the shared writers.
#[derive(Clone)]
pub struct GroupCommit {
    /// postgres-es, for everything that reads.
    loads: Arc<PostgresEventRepository>,
    /// The writers' queue.
    queue: mpsc::Sender<Append>,
}

impl GroupCommit {
    /// Starts the writers over connections to `pool`'s database; they stop when the last
    /// clone of the returned repository is dropped.
    pub fn start(pool: &PgPool, metrics: Arc<Metrics>) -> Self {
        // No ping before each use (a round trip per batch), and a short wait for a
        // connection: while the database is away, queued commands hear so in seconds.
        let writes = PgPoolOptions::new()
            .max_connections(WRITERS)
            .test_before_acquire(false)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with((*pool.connect_options()).clone());
        let (queue, waiting) = mpsc::channel(QUEUE);
        let waiting = Arc::new(Mutex::new(waiting));
        for _ in 0..WRITERS {
            tokio::spawn(write_batches(
                writes.clone(),
                waiting.clone(),
                metrics.clone(),
            ));
        }
        Self {
            loads: Arc::new(PostgresEventRepository::new(pool.clone())),
            queue,
        }
    }
}

/// A writer: takes a batch, writes it, answers each of its commands; again.
async fn write_batches(
    pool: PgPool,
    waiting: Arc<Mutex<mpsc::Receiver<Append>>>,
    metrics: Arc<Metrics>,
) {
    while let Some(batch) = next_batch(&waiting).await {
        metrics.count(
            "event_store_batches_total",
            "Transactions that appended the events of one or more commands (group commit).",
            &[],
            1.0,
        );
        metrics.count(
            "event_store_batched_commands_total",
            "Commands whose events were appended by group commit.",
            &[],
            batch.len() as f64,
        );
        if batch.len() > 1 {
            match insert(&pool, &batch).await {
                Ok(true) => {
                    for append in batch {
                        let _ = append.done.send(Ok(()));
                    }
                    continue;
                }
                // The database is away: writing each command alone would only make every one
                // of them wait for it again. Each hears so now (the bus then looks for its
                // events, in case the commit landed before the connection went).
                Err(e) if unreachable(&e) => {
                    tracing::warn!(error = %e, commands = batch.len(), "event store unreachable");
                    for append in batch {
                        let _ = append
                            .done
                            .send(Err(PersistenceError::ConnectionError(e.to_string().into())));
                    }
                    continue;
                }
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "batch refused; writing its commands alone"),
            }
            metrics.count(
                "event_store_batches_split_total",
                "Batches rolled back on one command's conflict or error and written command by command.",
                &[],
                1.0,
            );
        }
        for append in batch {
            let outcome = match insert(&pool, std::slice::from_ref(&append)).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(PersistenceError::OptimisticLockError),
                Err(e) => Err(persistence_error(e)),
            };
            let _ = append.done.send(outcome);
        }
    }
}

/// The first waiting append and whatever else is queued behind it, up to
/// [`MAX_BATCH_EVENTS`] events; `None` once every sender is gone.
async fn next_batch(waiting: &Mutex<mpsc::Receiver<Append>>) -> Option<Vec<Append>> {
    let mut waiting = waiting.lock().await;
    let first = waiting.recv().await?;
    let mut events = first.events.len();
    let mut batch = vec![first];
    while events < MAX_BATCH_EVENTS {
        let Ok(next) = waiting.try_recv() else {
            break;
        };
        events += next.events.len();
        batch.push(next);
    }
    Some(batch)
}

/// The batch's events in one ordered insert (so global positions follow the batch's order,
/// and each aggregate's sequences ascend with them).
const INSERT_EVENTS: &str = "
INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata
  FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::jsonb[], $7::jsonb[])
       WITH ORDINALITY
       AS e(aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, n)
 ORDER BY n
ON CONFLICT DO NOTHING";

/// Writes `batch` in one transaction. `Ok(false)`: one of its events conflicted with what
/// another writer committed, and nothing was written.
async fn insert(pool: &PgPool, batch: &[Append]) -> Result<bool, sqlx::Error> {
    let rows = batch.iter().map(|a| a.events.len()).sum::<usize>();
    let mut columns = Columns::with_capacity(rows);
    for append in batch {
        columns.push(append);
    }
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(INSERT_EVENTS)
        .bind(&columns.aggregate_types)
        .bind(&columns.aggregate_ids)
        .bind(&columns.sequences)
        .bind(&columns.event_types)
        .bind(&columns.event_versions)
        .bind(&columns.payloads)
        .bind(&columns.metadata)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if inserted != rows as u64 {
        return Ok(false);
    }
    for append in batch {
        if let Some(snapshot) = &append.snapshot {
            write_snapshot(&mut tx, append, snapshot).await?;
        }
    }
    tx.commit().await?;
    Ok(true)
}

/// Writes a snapshot as postgres-es does, except when another writer moved the snapshot
/// first (another process crossed a boundary, and this one's snapshot counter is stale, or
/// the stored snapshot no longer decodes): postgres-es then committed the events and
/// reported a conflict, which failed a command pinned by `If-Match` for nothing. The events'
/// key already proved that this command's events are the next ones, so its state is the
/// newest: it replaces whatever snapshot is there.
async fn write_snapshot(
    tx: &mut Transaction<'_, Postgres>,
    append: &Append,
    snapshot: &Snapshot,
) -> Result<(), sqlx::Error> {
    let last_sequence = append.events.last().map_or(0, |e| e.sequence) as i64;
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
            SET last_sequence = EXCLUDED.last_sequence,
                current_snapshot = EXCLUDED.current_snapshot,
                payload = EXCLUDED.payload
          WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
    )
    .bind(append.aggregate_type)
    .bind(&snapshot.aggregate_id)
    .bind(last_sequence)
    .bind(snapshot.current_snapshot as i64)
    .bind(&snapshot.payload)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A batch's events, column by column, as the insert binds them.
struct Columns<'a> {
    aggregate_types: Vec<&'a str>,
    aggregate_ids: Vec<&'a str>,
    sequences: Vec<i64>,
    event_types: Vec<&'a str>,
    event_versions: Vec<&'a str>,
    payloads: Vec<&'a Value>,
    metadata: Vec<&'a Value>,
}

impl<'a> Columns<'a> {
    fn with_capacity(rows: usize) -> Self {
        Self {
            aggregate_types: Vec::with_capacity(rows),
            aggregate_ids: Vec::with_capacity(rows),
            sequences: Vec::with_capacity(rows),
            event_types: Vec::with_capacity(rows),
            event_versions: Vec::with_capacity(rows),
            payloads: Vec::with_capacity(rows),
            metadata: Vec::with_capacity(rows),
        }
    }

    fn push(&mut self, append: &'a Append) {
        for event in &append.events {
            self.aggregate_types.push(append.aggregate_type);
            self.aggregate_ids.push(&event.aggregate_id);
            self.sequences.push(event.sequence as i64);
            self.event_types.push(&event.event_type);
            self.event_versions.push(&event.event_version);
            self.payloads.push(&event.payload);
            self.metadata.push(&event.metadata);
        }
    }
}

/// Whether `e` says the database could not be reached (rather than refusing the batch).
fn unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
    }
}

/// A failed write as postgres-es reports it: a unique violation is a conflict (a trigger's
/// table refused a second claim, as the events' key would), a lost connection is one, and
/// anything else is unexpected (the bus reads its SQLSTATE: a serialization failure or a
/// deadlock is decided again).
fn persistence_error(e: sqlx::Error) -> PersistenceError {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            PersistenceError::OptimisticLockError
        }
        _ if unreachable(&e) => PersistenceError::ConnectionError(Box::new(e)),
        _ => PersistenceError::UnknownError(Box::new(e)),
    }
}

/// The writers are gone (the process is stopping).
fn stopped() -> PersistenceError {
    PersistenceError::ConnectionError("the event store's writers have stopped".into())
}

impl PersistedEventRepository for GroupCommit {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.loads.get_events::<A>(aggregate_id).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.loads
            .get_last_events::<A>(aggregate_id, last_sequence)
            .await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.loads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let (done, outcome) = oneshot::channel();
        let append = Append {
            aggregate_type: A::TYPE,
            events: events.to_vec(),
            snapshot: snapshot_update.map(|(aggregate_id, payload, current_snapshot)| Snapshot {
                aggregate_id,
                payload,
                current_snapshot,
            }),
            done,
        };
        self.queue.send(append).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        self.loads.stream_events::<A>(aggregate_id).await
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        self.loads.stream_all_events::<A>().await
    }
}
