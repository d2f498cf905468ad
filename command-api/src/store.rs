//! Executes commands against the event store and says which version they produced.
//!
//! `CqrsFramework::execute_with_metadata` answers `()` and cannot check an expected version,
//! so this drives `PersistedEventStore` directly: load → (check `If-Match`) → handle →
//! commit, which returns the committed envelopes and so the new version. The commit goes
//! through [`GroupCommit`]: commands decided together share one transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventEnvelope, EventStore};
use events::http::Metrics;
use events::Metadata;
use sqlx::PgPool;
use tokio::sync::{Notify, OwnedMutexGuard};

use crate::group_commit::GroupCommit;

/// How often a command is tried when other writers keep appending to the same aggregate
/// first (only when the client did not pin a version with `If-Match`). Between tries it
/// backs off for a random time that doubles, so colliding writers spread out.
const MAX_ATTEMPTS: u32 = 12;

/// Aggregates kept in memory per command bus. Past it, an arbitrary one is dropped.
const CACHED_AGGREGATES: usize = 10_000;

/// The outcome of a command that was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The aggregate the command was for.
    pub aggregate_id: String,
    /// Its version (last sequence) after the command; unchanged if it appended nothing.
    pub version: u64,
    /// How many events the command appended.
    pub appended: usize,
}

/// Why a command was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate refused it.
    #[error(transparent)]
    Rejected(E),
    /// `If-Match` named another version than the current one.
    #[error("expected version {expected}, but the aggregate has moved on")]
    VersionConflict {
        /// What the client expected.
        expected: u64,
        /// What the store holds (`None` when another writer won the race mid-command).
        actual: Option<u64>,
    },
    /// Other writers kept winning the race for this aggregate.
    #[error("the aggregate is too busy; retry")]
    Contention,
    /// The store cannot be reached or is busy for now: the same command is expected to
    /// succeed later (503 with `Retry-After`).
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// A failure that will recur for this aggregate and command however often it is
    /// retried: the events hold what the store cannot keep, or the store refuses them for
    /// good (a constraint, a stored event that no longer decodes). Logged at error with the
    /// aggregate under an incident id, and counted (500).
    #[error("the command fails permanently (incident {})", .0.id)]
    Broken(Incident),
}

/// A permanent failure, as logged and as answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The id it was logged under, for the client to quote.
    pub id: String,
    /// The stable problem code: `unstorable_event` (the command's events hold text the
    /// event store cannot keep) or `store_rejected` (the store refused for good).
    pub code: &'static str,
}

/// Whether a store failure is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The database is unreachable, shutting down, overloaded, or aborted the transaction
    /// (serialization failure, deadlock, lock timeout): the same statement may succeed later.
    Transient,
    /// Anything else the database or the decoding refuses: it will refuse it again.
    Permanent,
}

/// Tells transient store failures from permanent ones, by SQLSTATE class where the database
/// answered (08 connection, 40 transaction rollback, 53 insufficient resources, 55 object
/// not in prerequisite state, 57 operator intervention, 58 system error are transient).
fn sqlx_failure(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match code.get(..2) {
                Some("08" | "40" | "53" | "55" | "57" | "58") => Failure::Transient,
                _ => Failure::Permanent,
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Failure::Transient,
        _ => Failure::Permanent,
    }
}

/// [`sqlx_failure`] for what postgres-es and cqrs-es report.
fn aggregate_failure<E: std::error::Error>(e: &AggregateError<E>) -> Failure {
    match e {
        AggregateError::DatabaseConnectionError(_) => Failure::Transient,
        AggregateError::DeserializationError(_) => Failure::Permanent,
        AggregateError::UnexpectedError(inner) => inner
            .downcast_ref::<sqlx::Error>()
            .map_or(Failure::Permanent, sqlx_failure),
        AggregateError::UserError(_) | AggregateError::AggregateConflict => Failure::Transient,
    }
}

/// Whether a commit failed on a serialization failure or a deadlock (SQLSTATE 40001, 40P01):
/// its transaction rolled back, and the command is decided again rather than answered 503.
fn must_decide_again<E: std::error::Error>(e: &AggregateError<E>) -> bool {
    let AggregateError::UnexpectedError(inner) = e else {
        return false;
    };
    inner
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|db| db.code())
        .is_some_and(|code| code == "40001" || code == "40P01")
}

/// Executes commands of one aggregate type.
pub struct CommandBus<A: Aggregate> {
    /// The event store's pool, to tell a real conflict from a committed write.
    pool: PgPool,
    /// The event store with snapshots.
    store: PersistedEventStore<GroupCommit, A>,
    /// The same store without snapshots: commits whose snapshot the store could not keep
    /// go through it, so a snapshot (a cache) never stops an aggregate taking commands.
    plain: PersistedEventStore<GroupCommit, A>,
    /// Whose turn it is on each aggregate: one command at a time per aggregate in this
    /// process, so commands on one aggregate queue instead of colliding.
    turns: Turns,
    /// What the aggregate's `handle` may call.
    services: A::Services,
    /// Woken after every commit so the relay publishes at once.
    committed: Arc<Notify>,
    /// Events between snapshots.
    snapshot_every: usize,
    /// Aggregates as this process last committed them (see [`CommandBus::context`]).
    cache: Mutex<HashMap<String, Cached<A>>>,
    /// Where snapshot writes and store failures are counted.
    metrics: Arc<Metrics>,
}

/// An aggregate as of one of its versions.
struct Cached<A> {
    /// Its state.
    aggregate: A,
    /// The sequence of the last event applied to it.
    sequence: usize,
    /// The snapshot counter postgres-es last read or wrote for it.
    snapshot: Option<usize>,
}

impl<A> CommandBus<A>
where
    A: Aggregate + Clone + 'static,
    A::Command: Clone,
{
    /// A bus over `pool` with writers of its own, snapshotting every `snapshot_every` events.
    pub fn new(
        pool: PgPool,
        services: A::Services,
        snapshot_every: usize,
        committed: Arc<Notify>,
    ) -> Self {
        let appends = GroupCommit::start(&pool, Arc::new(Metrics::default()));
        Self::sharing(appends, pool, services, snapshot_every, committed)
    }

    /// A bus whose commits go through `appends`, the writers it shares with the process's
    /// other buses (so commands of every aggregate type share batches).
    pub fn sharing(
        appends: GroupCommit,
        pool: PgPool,
        services: A::Services,
        snapshot_every: usize,
        committed: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            store: PersistedEventStore::new_snapshot_store(appends.clone(), snapshot_every.max(1)),
            plain: PersistedEventStore::new_event_store(appends),
            turns: Turns::default(),
            services,
            committed,
            snapshot_every: snapshot_every.max(1),
            cache: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Counts into `metrics` (the process's `/metrics`) instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The aggregate ready for a command. From the cache when this process committed to it
    /// last: only the events appended since (by other processes) are read and applied, one
    /// statement instead of postgres-es's snapshot read and replay of up to
    /// `snapshot_every - 1` events. A stale entry cannot cause a lost write: the commit's
    /// primary key still refuses a sequence that was taken.
    async fn context(
        &self,
        id: &str,
    ) -> Result<EventStoreAggregateContext<A>, CommandError<A::Error>> {
        let cached = self
            .cache
            .lock()
            .ok()
            .and_then(|mut cache| cache.remove(id));
        let Some(cached) = cached else {
            return self.load_context(id).await;
        };
        let newer: Vec<(i64, serde_json::Value)> = sqlx::query_as(
            "SELECT sequence, payload FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
              ORDER BY sequence",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(cached.sequence as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.sqlx_error(id, &e))?;
        let mut context = EventStoreAggregateContext {
            aggregate_id: id.to_owned(),
            aggregate: cached.aggregate,
            current_sequence: cached.sequence,
            current_snapshot: cached.snapshot,
        };
        for (sequence, payload) in newer {
            let Ok(event) = serde_json::from_value::<A::Event>(payload) else {
                // Not this version's shape: let postgres-es load it the long way.
                return self.load_context(id).await;
            };
            context.aggregate.apply(event);
            context.current_sequence = sequence as usize;
        }
        Ok(context)
    }

    /// Keeps `aggregate` at `sequence` for the next command, unless the commit that reached
    /// it crossed a snapshot boundary: postgres-es then moved the snapshot counter, and the
    /// next load reads it afresh.
    fn remember(
        &self,
        id: &str,
        aggregate: A,
        from: usize,
        sequence: usize,
        snapshot: Option<usize>,
    ) {
        if from / self.snapshot_every != sequence / self.snapshot_every {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= CACHED_AGGREGATES && !cache.contains_key(id) {
            if let Some(victim) = cache.keys().next().cloned() {
                cache.remove(&victim);
            }
        }
        let newer = cache.get(id).is_none_or(|c| c.sequence < sequence);
        if newer {
            cache.insert(
                id.to_owned(),
                Cached {
                    aggregate,
                    sequence,
                    snapshot,
                },
            );
        }
    }

    /// Runs `command` on aggregate `id`; with `expected`, only if the aggregate is at that
    /// version.
    pub async fn execute(
        &self,
        id: &str,
        expected: Option<u64>,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<Committed, CommandError<A::Error>> {
        self.execute_with_events(id, expected, command, metadata)
            .await
            .map(|(committed, _)| committed)
    }

    /// The aggregate's current state: from this process's copy and the events appended
    /// since, like a command's load (a route that reads an aggregate before commanding it,
    /// or a look-up of another aggregate, costs one statement, not a snapshot's decoding
    /// and the replay of the events after it).
    pub async fn load(&self, id: &str) -> Result<A, CommandError<A::Error>> {
        Ok(self.load_versioned(id).await?.0)
    }

    /// Like [`CommandBus::load`], with the aggregate's version: the sequence of its last
    /// event (0 when it has none).
    pub async fn load_versioned(&self, id: &str) -> Result<(A, u64), CommandError<A::Error>> {
        let context = self.context(id).await?;
        let sequence = context.current_sequence;
        if sequence == 0 {
            // No such aggregate: nothing worth a place in the cache (ids looked up at
            // random would push out the ones in use).
            return Ok((context.aggregate, 0));
        }
        let aggregate = context.aggregate.clone();
        self.remember(
            id,
            context.aggregate,
            sequence,
            sequence,
            context.current_snapshot,
        );
        Ok((aggregate, sequence as u64))
    }

    /// What `read` finds in aggregate `id`, for a fact that never changes once the aggregate
    /// holds it (the tenant a thread belongs to): from this process's copy without asking the
    /// store when it has one, else from a [`CommandBus::load`].
    pub async fn read_settled<T>(
        &self,
        id: &str,
        read: impl Fn(&A) -> Option<T>,
    ) -> Result<Option<T>, CommandError<A::Error>> {
        let known = self
            .cache
            .lock()
            .ok()
            .and_then(|cache| cache.get(id).and_then(|c| read(&c.aggregate)));
        match known {
            Some(found) => Ok(Some(found)),
            None => Ok(read(&self.load(id).await?)),
        }
    }

    /// The aggregate as postgres-es loads it: its snapshot, then the events after it.
    async fn load_context(
        &self,
        id: &str,
    ) -> Result<EventStoreAggregateContext<A>, CommandError<A::Error>> {
        self.store
            .load_aggregate(id)
            .await
            .map_err(|e| self.store_error(id, e))
    }

    /// Like [`CommandBus::execute`], and also says which events the command appended (a
    /// login's outcome is its events).
    pub async fn execute_with_events(
        &self,
        id: &str,
        expected: Option<u64>,
        command: A::Command,
        metadata: &Metadata,
    ) -> Result<(Committed, Vec<A::Event>), CommandError<A::Error>> {
        let _turn = self.turns.take(id).await;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            if let Some(done) = self
                .decide_and_commit(id, expected, &command, metadata, attempt)
                .await?
            {
                return Ok(done);
            }
        }
        Err(CommandError::Contention)
    }

    /// One attempt at a command: decide on the aggregate as loaded, then commit. `None`: a
    /// concurrent append got there first and the command is to be tried again.
    async fn decide_and_commit(
        &self,
        id: &str,
        expected: Option<u64>,
        command: &A::Command,
        metadata: &Metadata,
        attempt: u32,
    ) -> Result<Option<(Committed, Vec<A::Event>)>, CommandError<A::Error>> {
        let context = self.context(id).await?;
        let current = context.current_sequence as u64;
        if let Some(expected) = expected.filter(|e| *e != current) {
            return Err(CommandError::VersionConflict {
                expected,
                actual: Some(current),
            });
        }
        // Handle on a copy: `EventSink::write` applies each event to the aggregate it is
        // given, and `commit` applies them again to the context's aggregate when it
        // takes a snapshot. Handling on the context's own aggregate would apply every
        // event twice in the snapshot.
        let mut scratch = context.aggregate.clone();
        let sink = EventSink::default();
        let base = (context.current_sequence, context.current_snapshot);
        if let Err(e) = scratch.handle(command.clone(), &self.services, &sink).await {
            self.remember(id, context.aggregate, base.0, base.0, base.1);
            return Err(CommandError::Rejected(e));
        }
        let new_events = sink.collect().await;
        if new_events.is_empty() {
            self.remember(id, context.aggregate, base.0, base.0, base.1);
            let unchanged = Committed {
                aggregate_id: id.to_owned(),
                version: current,
                appended: 0,
            };
            return Ok(Some((unchanged, new_events)));
        }
        let attempted = new_events.clone();
        let metadata_map = metadata.to_map();
        if let Some(place) = unstorable(&new_events, &metadata_map) {
            return Err(self.broken(id, "unstorable_event", &place));
        }
        let plan = self.snapshot_plan(base.0, &new_events, &scratch);
        let store = match plan {
            SnapshotPlan::None | SnapshotPlan::InCommit => &self.store,
            SnapshotPlan::AfterCommit(_) | SnapshotPlan::Skip(_) => &self.plain,
        };
        match store.commit(new_events, context, metadata_map).await {
            Ok(envelopes) => Ok(Some(
                self.after_commit(id, plan, scratch, base, envelopes).await,
            )),
            Err(e) => {
                let tried = Tried {
                    expected,
                    current,
                    attempt,
                    events: attempted,
                };
                self.failed_commit(id, e, metadata, tried).await
            }
        }
    }

    /// A commit that failed: a conflict or a race the store's triggers refused (two creations
    /// taking one e-mail: a serialization failure, rolled back) is decided again (`None`),
    /// unless its events are there after all (the request id in the metadata tells) or
    /// `If-Match` pinned the version; a lost connection is looked for the same way; anything
    /// else is the store's failure.
    async fn failed_commit(
        &self,
        id: &str,
        e: AggregateError<A::Error>,
        metadata: &Metadata,
        tried: Tried<A::Event>,
    ) -> Result<Option<(Committed, Vec<A::Event>)>, CommandError<A::Error>> {
        match e {
            e if matches!(e, AggregateError::AggregateConflict) || must_decide_again(&e) => {
                if let Some(committed) = self.landed(id, tried.current, metadata).await? {
                    self.committed.notify_one();
                    // What landed is what this attempt tried to commit.
                    return Ok(Some((committed, tried.events)));
                }
                let conflict = matches!(e, AggregateError::AggregateConflict);
                if let Some(expected) = tried.expected.filter(|_| conflict) {
                    return Err(CommandError::VersionConflict {
                        expected,
                        actual: None,
                    });
                }
                tracing::debug!(aggregate_id = id, error = %e, "concurrent append; retrying");
                if conflict && tried.attempt >= 2 {
                    self.drop_snapshot(id).await?;
                }
                Ok(None)
            }
            AggregateError::UserError(e) => Err(CommandError::Rejected(e)),
            // The connection went during the commit: it may have landed. Where the store
            // answers, its events say so; otherwise 503, and the client retries.
            e @ AggregateError::DatabaseConnectionError(_) => {
                match self.landed(id, tried.current, metadata).await {
                    Ok(Some(committed)) => {
                        self.committed.notify_one();
                        Ok(Some((committed, tried.events)))
                    }
                    _ => Err(self.store_error(id, e)),
                }
            }
            e => Err(self.store_error(id, e)),
        }
    }

    /// After a commit: wake the relay, take the snapshot as planned, keep the aggregate in the
    /// cache, and say what was appended. `base` is the sequence and snapshot the command was
    /// decided on.
    async fn after_commit(
        &self,
        id: &str,
        plan: SnapshotPlan,
        scratch: A,
        base: (usize, Option<usize>),
        envelopes: Vec<EventEnvelope<A>>,
    ) -> (Committed, Vec<A::Event>) {
        let (from, snapshot) = base;
        self.committed.notify_one();
        let last_sequence = envelopes.last().map_or(from, |e| e.sequence);
        match plan {
            SnapshotPlan::InCommit => self.count_snapshot(),
            SnapshotPlan::AfterCommit(form) => {
                self.write_snapshot(id, last_sequence, form).await;
            }
            SnapshotPlan::Skip(place) => self.skipped_snapshot(id, &place),
            SnapshotPlan::None => {}
        }
        if let Some(last) = envelopes.last() {
            self.remember(id, scratch, from, last.sequence, snapshot);
        }
        let committed = Committed {
            aggregate_id: id.to_owned(),
            version: envelopes.last().map_or(from as u64, |e| e.sequence as u64),
            appended: envelopes.len(),
        };
        (
            committed,
            envelopes.into_iter().map(|e| e.payload).collect(),
        )
    }

    /// How the snapshot due with a commit of `events` after sequence `from` is written.
    /// `state` is the aggregate with every one of them applied.
    ///
    /// postgres-es writes a snapshot in the commit's transaction, of the state at the last
    /// snapshot boundary the commit reaches, but labels it with the commit's last sequence:
    /// when a multi-event commit ends past a boundary (events 99–101 with snapshots every
    /// 100), the events after the boundary would be missing from every later load. Such a
    /// commit goes without a snapshot, and the state after all its events is written right
    /// after it instead.
    fn snapshot_plan(&self, from: usize, events: &[A::Event], state: &A) -> SnapshotPlan {
        let upto = snapshot_events(from, events.len(), self.snapshot_every);
        if upto == 0 {
            return SnapshotPlan::None;
        }
        let form = serde_json::to_value(state).unwrap_or_default();
        if let Some(place) = events::jsonb::first_nul(&form) {
            return SnapshotPlan::Skip(format!("snapshot{place}"));
        }
        if events::jsonb::depth(&form) > events::jsonb::MAX_EVENT_DEPTH {
            return SnapshotPlan::Skip("snapshot nested too deep".to_owned());
        }
        if upto == events.len() {
            SnapshotPlan::InCommit
        } else {
            SnapshotPlan::AfterCommit(form)
        }
    }

    /// Writes `form` as the snapshot at `sequence`, unless a newer one is there. After the
    /// commit, in a statement of its own: a failure costs only a longer load later.
    async fn write_snapshot(&self, id: &str, sequence: usize, form: serde_json::Value) {
        let written = sqlx::query(
            "INSERT INTO snapshots
                    (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
             VALUES ($1, $2, $3, 1, $4)
             ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE
                SET last_sequence = EXCLUDED.last_sequence, payload = EXCLUDED.payload,
                    current_snapshot = snapshots.current_snapshot + 1
              WHERE snapshots.last_sequence < EXCLUDED.last_sequence",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(sequence as i64)
        .bind(form)
        .execute(&self.pool)
        .await;
        match written {
            Ok(_) => self.count_snapshot(),
            Err(e) => tracing::warn!(
                aggregate_type = A::TYPE,
                aggregate_id = id,
                error = %e,
                "snapshot not written after the commit"
            ),
        }
    }

    /// The snapshot is a cache: a commit goes without it, loudly, rather than the command
    /// (and every later one) being refused because of it.
    fn skipped_snapshot(&self, id: &str, place: &str) {
        tracing::error!(
            aggregate_type = A::TYPE,
            aggregate_id = id,
            at = place,
            "snapshot not written: its state holds text jsonb cannot store"
        );
        self.metrics.count(
            "snapshots_skipped_total",
            "Snapshots not written because their state could not be stored.",
            &[("aggregate_type", A::TYPE)],
            1.0,
        );
    }

    fn count_snapshot(&self) {
        self.metrics.count(
            "snapshots_written_total",
            "Aggregate snapshots written.",
            &[("aggregate_type", A::TYPE)],
            1.0,
        );
    }
}

/// One command at a time per aggregate: a command takes its aggregate's turn before it
/// loads it and gives it back once its events are committed. Commands on one aggregate then
/// queue in this process instead of deciding on the same version, colliding at the commit and
/// retrying with back-off, and never meet in one group-commit batch. (Other processes'
/// commands can still collide: the events' key settles those.)
#[derive(Default)]
struct Turns {
    /// The aggregates with a command running or waiting, each with its lock.
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A command's turn on an aggregate, given back when dropped.
struct Turn<'a> {
    /// Where the turn was taken.
    turns: &'a Turns,
    /// The aggregate.
    id: String,
    /// The lock (`None` once given back).
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for the turn on aggregate `id`.
    async fn take(&self, id: &str) -> Turn<'_> {
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.entry(id.to_owned()).or_default().clone()
        };
        Turn {
            turns: self,
            id: id.to_owned(),
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let lock = tokio::sync::OwnedMutexGuard::mutex(&guard).clone();
        drop(guard);
        let mut held = self.turns.held.lock().unwrap_or_else(|e| e.into_inner());
        // Forgotten once nobody else holds or waits for it: the map's copy and this one.
        if Arc::strong_count(&lock) == 2 {
            held.remove(&self.id);
        }
    }
}

/// What a failed commit had tried (see [`CommandBus::failed_commit`]).
struct Tried<E> {
    /// The version `If-Match` pinned.
    expected: Option<u64>,
    /// The version the command was decided on.
    current: u64,
    /// Which attempt it was (from 0).
    attempt: u32,
    /// The events it tried to append.
    events: Vec<E>,
}

/// How a commit's snapshot is written (see [`CommandBus::snapshot_plan`]).
enum SnapshotPlan {
    /// The commit reaches no snapshot boundary.
    None,
    /// By postgres-es, in the commit's transaction.
    InCommit,
    /// This form, right after the commit.
    AfterCommit(serde_json::Value),
    /// Not at all: `jsonb` cannot store the state (where it holds a NUL).
    Skip(String),
}

impl<A: Aggregate> CommandBus<A> {
    /// Drops the aggregate's snapshot (a cache: the next load replays the events). A
    /// snapshot that no longer decodes (the aggregate's shape changed) makes postgres-es try
    /// to insert a second snapshot row at every snapshot boundary, which it reports as a
    /// conflict, forever; so do snapshots left behind by a race. Repeated conflicts clear it.
    async fn drop_snapshot(&self, id: &str) -> Result<(), CommandError<A::Error>> {
        sqlx::query("DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
            .bind(A::TYPE)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.sqlx_error(id, &e))?;
        Ok(())
    }

    /// The events this request appended to `id` after version `after`, if any.
    async fn landed(
        &self,
        id: &str,
        after: u64,
        metadata: &Metadata,
    ) -> Result<Option<Committed>, CommandError<A::Error>> {
        let (count, last): (i64, Option<i64>) = sqlx::query_as(
            "SELECT count(*), max(sequence) FROM events
              WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
                AND metadata->>'request_id' = $4",
        )
        .bind(A::TYPE)
        .bind(id)
        .bind(after as i64)
        .bind(&metadata.request_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.sqlx_error(id, &e))?;
        Ok(last.map(|version| Committed {
            aggregate_id: id.to_owned(),
            version: version as u64,
            appended: count as usize,
        }))
    }
}

/// A random pause in `[0, 2^attempt)` milliseconds, at most 256 ms (full jitter).
fn backoff(attempt: u32) -> std::time::Duration {
    let ceiling = 1u64 << attempt.min(8);
    let random = uuid::Uuid::new_v4().as_u128() as u64;
    std::time::Duration::from_micros(random % (ceiling * 1000))
}

impl<A: Aggregate> CommandBus<A> {
    /// A failure of postgres-es or cqrs-es, as transient or permanent.
    fn store_error(&self, id: &str, e: AggregateError<A::Error>) -> CommandError<A::Error> {
        match (aggregate_failure(&e), e) {
            (_, AggregateError::UserError(e)) => CommandError::Rejected(e),
            (Failure::Transient, e) => CommandError::Unavailable(e.to_string()),
            (Failure::Permanent, e) => self.broken(id, "store_rejected", &e.to_string()),
        }
    }

    /// A failure of one of this bus's own statements, as transient or permanent.
    fn sqlx_error(&self, id: &str, e: &sqlx::Error) -> CommandError<A::Error> {
        match sqlx_failure(e) {
            Failure::Transient => CommandError::Unavailable(e.to_string()),
            Failure::Permanent => self.broken(id, "store_rejected", &e.to_string()),
        }
    }

    /// Logs a permanent failure under a new incident id, counts it, and says so.
    fn broken(&self, id: &str, code: &'static str, cause: &str) -> CommandError<A::Error> {
        let incident = uuid::Uuid::new_v4().to_string();
        tracing::error!(
            incident_id = %incident,
            aggregate_type = A::TYPE,
            aggregate_id = id,
            code,
            error = cause,
            "command fails permanently"
        );
        self.metrics.count(
            "command_permanent_failures_total",
            "Commands that failed for a reason that recurs on retry, by aggregate type and code.",
            &[("aggregate_type", A::TYPE), ("code", code)],
            1.0,
        );
        CommandError::Broken(Incident { id: incident, code })
    }
}

/// Where `events` or `metadata` hold what the store must not keep, if anywhere: text `jsonb`
/// cannot store (NUL), or an event nested or sized past what every reader of the store and
/// the bus can take ([`events::jsonb::MAX_EVENT_DEPTH`], [`events::jsonb::MAX_EVENT_BYTES`]).
/// Request bodies are bounded far below both; this is the last line, whatever path an event
/// came by.
fn unstorable<E: serde::Serialize>(
    events: &[E],
    metadata: &HashMap<String, String>,
) -> Option<String> {
    let metadata_bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len() + 6).sum();
    for (i, event) in events.iter().enumerate() {
        let form = serde_json::to_value(event).unwrap_or_default();
        if let Some(place) = events::jsonb::first_nul(&form) {
            return Some(format!("event {i}{place}"));
        }
        let depth = events::jsonb::depth(&form);
        if depth > events::jsonb::MAX_EVENT_DEPTH {
            return Some(format!("event {i} nests {depth} levels deep"));
        }
        let bytes = events::jsonb::encoded_len(&form) + metadata_bytes;
        if bytes > events::jsonb::MAX_EVENT_BYTES {
            return Some(format!("event {i} is {bytes} bytes"));
        }
    }
    metadata
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
        .map(|(k, _)| format!("metadata/{}", k.replace('\0', "\\0")))
}

/// How many of `n` events appended after sequence `from` postgres-es applies to the
/// snapshot it writes with them (0: the commit writes no snapshot). The same rule as
/// cqrs-es's snapshot store: a snapshot at the last multiple of `every` the commit reaches.
fn snapshot_events(from: usize, n: usize, every: usize) -> usize {
    let next = every - from % every;
    if n < next {
        0
    } else {
        let beyond = n - next;
        next + beyond - beyond % every
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_events_follow_the_snapshot_store_rule() {
        // The cases cqrs-es checks its own rule with.
        assert_eq!(snapshot_events(5, 3, 5), 0);
        assert_eq!(snapshot_events(5, 3, 4), 3);
        assert_eq!(snapshot_events(5, 4, 4), 3);
        assert_eq!(snapshot_events(5, 8, 4), 7);
        // One event at a time: a snapshot exactly at each multiple.
        assert_eq!(snapshot_events(98, 1, 100), 0);
        assert_eq!(snapshot_events(99, 1, 100), 1);
        assert_eq!(snapshot_events(100, 1, 100), 0);
        assert_eq!(snapshot_events(0, 1, 1), 1);
    }

    #[test]
    fn connection_and_pool_failures_are_transient() {
        let io = sqlx::Error::Io(std::io::Error::other("reset"));
        assert_eq!(sqlx_failure(&io), Failure::Transient);
        assert_eq!(sqlx_failure(&sqlx::Error::PoolTimedOut), Failure::Transient);
        assert_eq!(sqlx_failure(&sqlx::Error::RowNotFound), Failure::Permanent);
    }

    #[test]
    fn undecodable_data_is_permanent() {
        let bad = serde_json::from_str::<u8>("\"x\"").expect_err("not a number");
        let e = AggregateError::<std::fmt::Error>::DeserializationError(Box::new(bad));
        assert_eq!(aggregate_failure(&e), Failure::Permanent);
        let e =
            AggregateError::<std::fmt::Error>::UnexpectedError(Box::new(sqlx::Error::PoolTimedOut));
        assert_eq!(aggregate_failure(&e), Failure::Transient);
    }

    #[test]
    fn a_nul_a_deep_nesting_or_an_oversized_event_is_found_before_the_append() {
        let ok = HashMap::from([("k".to_owned(), "v".to_owned())]);
        assert_eq!(unstorable(&[serde_json::json!({"a": "b"})], &ok), None);
        assert_eq!(
            unstorable(
                &[serde_json::json!(1), serde_json::json!({"a": "\u{0}"})],
                &ok
            )
            .as_deref(),
            Some("event 1/a")
        );
        let deep = (0..events::jsonb::MAX_EVENT_DEPTH)
            .fold(serde_json::json!(1), |v, _| serde_json::json!([v]));
        assert_eq!(unstorable(std::slice::from_ref(&deep), &ok), None);
        assert_eq!(
            unstorable(&[serde_json::json!({"p": deep})], &ok).as_deref(),
            Some("event 0 nests 65 levels deep")
        );
        let big = serde_json::json!({"text": "x".repeat(events::jsonb::MAX_EVENT_BYTES)});
        assert!(unstorable(&[big], &ok).is_some_and(|p| p.starts_with("event 0 is ")));
        let bad = HashMap::from([("request_id".to_owned(), "r\u{0}".to_owned())]);
        assert_eq!(
            unstorable::<serde_json::Value>(&[], &bad).as_deref(),
            Some("metadata/request_id")
        );
    }
}
