//! Executes commands against the event store and says which version they produced.
//!
//! `CqrsFramework::execute_with_metadata` answers `()` and cannot check an expected version,
//! so this drives `PersistedEventStore` directly: load → (check `If-Match`) → handle →
//! commit, which returns the committed envelopes and so the new version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventStore};
use cqrs_es::{Aggregate, AggregateError, EventStore};
use events::Metadata;
use postgres_es::PostgresEventRepository;
use sqlx::PgPool;
use tokio::sync::Notify;

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
    /// The store failed.
    #[error("event store: {0}")]
    Store(String),
}

/// Executes commands of one aggregate type.
pub struct CommandBus<A: Aggregate> {
    /// The event store's pool, to tell a real conflict from a committed write.
    pool: PgPool,
    /// postgres-es store with snapshots.
    store: PersistedEventStore<PostgresEventRepository, A>,
    /// What the aggregate's `handle` may call.
    services: A::Services,
    /// Woken after every commit so the relay publishes at once.
    committed: Arc<Notify>,
    /// Events between snapshots.
    snapshot_every: usize,
    /// Aggregates as this process last committed them (see [`CommandBus::context`]).
    cache: Mutex<HashMap<String, Cached<A>>>,
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
    /// A bus over `pool`, snapshotting every `snapshot_every` events.
    pub fn new(
        pool: PgPool,
        services: A::Services,
        snapshot_every: usize,
        committed: Arc<Notify>,
    ) -> Self {
        let repo = PostgresEventRepository::new(pool.clone());
        Self {
            pool,
            store: PersistedEventStore::new_snapshot_store(repo, snapshot_every.max(1)),
            services,
            committed,
            snapshot_every: snapshot_every.max(1),
            cache: Mutex::new(HashMap::new()),
        }
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
            return self.store.load_aggregate(id).await.map_err(store_error);
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
        .map_err(|e| CommandError::Store(e.to_string()))?;
        let mut context = EventStoreAggregateContext {
            aggregate_id: id.to_owned(),
            aggregate: cached.aggregate,
            current_sequence: cached.sequence,
            current_snapshot: cached.snapshot,
        };
        for (sequence, payload) in newer {
            let Ok(event) = serde_json::from_value::<A::Event>(payload) else {
                // Not this version's shape: let postgres-es load it the long way.
                return self.store.load_aggregate(id).await.map_err(store_error);
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

    /// The aggregate's current state.
    pub async fn load(&self, id: &str) -> Result<A, CommandError<A::Error>> {
        Ok(self
            .store
            .load_aggregate(id)
            .await
            .map_err(store_error)?
            .aggregate)
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
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
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
            if let Err(e) = scratch.handle(command.clone(), &self.services, &sink).await {
                let (sequence, snapshot) = (context.current_sequence, context.current_snapshot);
                self.remember(id, context.aggregate, sequence, sequence, snapshot);
                return Err(CommandError::Rejected(e));
            }
            let new_events = sink.collect().await;
            if new_events.is_empty() {
                self.remember(
                    id,
                    context.aggregate,
                    context.current_sequence,
                    context.current_sequence,
                    context.current_snapshot,
                );
                let unchanged = Committed {
                    aggregate_id: id.to_owned(),
                    version: current,
                    appended: 0,
                };
                return Ok((unchanged, new_events));
            }
            let attempted = new_events.clone();
            let (from, snapshot) = (context.current_sequence, context.current_snapshot);
            match self
                .store
                .commit(new_events, context, metadata.to_map())
                .await
            {
                Ok(envelopes) => {
                    self.committed.notify_one();
                    if let Some(last) = envelopes.last() {
                        self.remember(id, scratch, from, last.sequence, snapshot);
                    }
                    let committed = Committed {
                        aggregate_id: id.to_owned(),
                        version: envelopes.last().map_or(current, |e| e.sequence as u64),
                        appended: envelopes.len(),
                    };
                    return Ok((
                        committed,
                        envelopes.into_iter().map(|e| e.payload).collect(),
                    ));
                }
                Err(AggregateError::AggregateConflict) => {
                    // postgres-es commits the events before it checks the snapshot row, so a
                    // "conflict" may come back for a write that landed. The request id in the
                    // metadata tells: if our events are there, the command is done.
                    if let Some(committed) = self.landed(id, current, metadata).await? {
                        self.committed.notify_one();
                        // What landed is what this attempt tried to commit.
                        return Ok((committed, attempted));
                    }
                    if let Some(expected) = expected {
                        return Err(CommandError::VersionConflict {
                            expected,
                            actual: None,
                        });
                    }
                    tracing::debug!(aggregate_id = id, "concurrent append; retrying");
                    if attempt >= 2 {
                        self.drop_snapshot(id).await?;
                    }
                }
                Err(AggregateError::UserError(e)) => return Err(CommandError::Rejected(e)),
                Err(e) => return Err(CommandError::Store(e.to_string())),
            }
        }
        Err(CommandError::Contention)
    }
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
            .map_err(|e| CommandError::Store(e.to_string()))?;
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
        .map_err(|e| CommandError::Store(e.to_string()))?;
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

fn store_error<E: std::error::Error>(e: AggregateError<E>) -> CommandError<E> {
    match e {
        AggregateError::UserError(e) => CommandError::Rejected(e),
        other => CommandError::Store(other.to_string()),
    }
}
