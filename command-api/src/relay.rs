//! The relay: publishes every committed event to JetStream, none lost or skipped, as
//! docs/architecture.md, invariant 3 requires. The order is transaction order below the commit
//! horizon (docs/decisions/0001-publishing.md says what that guarantees).
//!
//! - It reads only below the *commit horizon*: rows whose `transaction_id` is older than
//!   every event-writing transaction still in flight (`events_commit_horizon()`, migration
//!   0020: each such transaction announces itself with an advisory lock before it has an
//!   id). A row of a slower transaction that holds a lower `global_position` is therefore
//!   never skipped: the horizon cannot pass it until it commits (or aborts). Transactions
//!   that write no events, in this database or any other, do not hold it back. The horizon
//!   is computed in one statement and used in the next, whose later snapshot sees every
//!   writer below it ended.
//! - Its checkpoint is the pair `(transaction_id, global_position)` of the last event whose
//!   PubAck arrived, and each read resumes strictly after that pair.
//! - Every message carries `Nats-Msg-Id = {aggregate_type}:{aggregate_id}:{sequence}`, so a
//!   re-publish after a crash (published, checkpoint not yet written) is dropped by
//!   JetStream's de-duplication window, and projectors skip it by sequence anyway.
//! - One relay is active across instances: the one holding a session advisory lock on its
//!   dedicated connection. If that connection drops, so does the lock, and so does this
//!   relay's right to publish.
//! - A committed event it cannot publish — its stored form is nested past what JSON readers
//!   decode, or it is larger than the bus or the stream accepts — is *quarantined*: recorded in `quarantined_events`, logged at
//!   error and counted, and passed over, so that it never holds back the events after it
//!   (appends are bounded so that none should ever be: `events::jsonb`). An event the
//!   relay merely failed to hand over (the bus is away) is never passed over, and an envelope
//!   that fails to decode for any other reason stops the relay (it would be every event).
//! - It is woken right after each commit, in-process by the command bus and across
//!   processes by `LISTEN events_appended`, and polls briefly in case the horizon was held
//!   back by another transaction. A process whose relay stands by forwards its own commits
//!   to the active one with a `NOTIFY` sent after the commit, not inside it: a `NOTIFY` in
//!   the appending transaction takes a database-wide lock that is held until its commit is
//!   flushed, and so made every command wait for every other command's fsync
//!   ([`forward_commits`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use events::http::Metrics;
use events::Envelope;
use sqlx::postgres::{PgConnectOptions, PgListener};
use sqlx::{ConnectOptions, PgConnection, PgPool, Row};
use tokio::sync::Notify;

/// How long JetStream remembers a `Nats-Msg-Id` to drop duplicates.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Most events published per round: below async-nats's in-flight ack limit (5,000).
pub const MAX_BATCH: i64 = 4096;
/// How often the lag is measured while idle.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// A point in publishing order `(transaction_id, global_position)`: the last event published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Checkpoint {
    /// Writing transaction of the event.
    pub transaction_id: u64,
    /// Its global position.
    pub global_position: i64,
}

/// Why a relay step failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Publishing failed or its PubAck never came.
    #[error("publish: {0}")]
    Publish(String),
    /// A stored event could not be read back (named by its transaction id).
    #[error("a stored event of transaction {0} is unreadable: {1}")]
    Corrupt(String, String),
}

/// One entry of a batch in publishing order: the event to publish, or `None` for one that
/// was quarantined ([`Relay::quarantine`]) and is passed over.
pub type Entry = (Checkpoint, Option<Outgoing>);

/// A stored event ready for the bus: its envelope as the store built it (published as these
/// bytes, never decoded into Rust values and encoded again), and what its subject, message
/// id and headers name.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Which event it is.
    event: StoredEvent,
    /// The envelope, JSON.
    body: Bytes,
}

/// What names a stored event and addresses it on the bus, read beside its envelope.
#[derive(Debug, Clone, sqlx::FromRow)]
struct StoredEvent {
    /// Where it stands in the store.
    global_position: i64,
    /// Its aggregate type.
    aggregate_type: String,
    /// Its aggregate.
    aggregate_id: String,
    /// Its sequence in the aggregate.
    sequence: i64,
    /// Its event type.
    event_type: String,
    /// Its tenant from the metadata (empty if none).
    tenant_id: String,
    /// Its correlation id from the metadata (empty if none).
    correlation_id: String,
    /// When it was stored.
    recorded_at: DateTime<Utc>,
}

impl Outgoing {
    /// `Nats-Msg-Id`: `{aggregate_type}:{aggregate_id}:{sequence}`.
    pub fn message_id(&self) -> String {
        events::subject::message_id(
            &self.event.aggregate_type,
            &self.event.aggregate_id,
            self.event.sequence as u64,
        )
    }

    /// The envelope as published.
    pub fn body(&self) -> &[u8] {
        &self.body
    }
}

/// A stored event that cannot be published, as it is quarantined.
struct Unpublishable<'a> {
    /// Which event it is.
    event: &'a StoredEvent,
    /// `unreadable` or `too_large`.
    reason: &'static str,
    /// What the reader or the bus said.
    detail: String,
}

/// Creates the stream that holds every event, or brings the fields this code owns (its
/// subjects and de-duplication window) back to what it needs. Every other setting of an
/// existing stream (replicas, limits, placement) is the operator's and is left alone.
/// Idempotent: any number of instances may run it at every start-up.
pub async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    prefix: &str,
) -> Result<(), async_nats::Error> {
    let subjects = vec![format!("{prefix}.>")];
    match js.get_stream(name).await {
        Ok(mut stream) => {
            let mut config = stream.info().await?.config.clone();
            if config.subjects != subjects || config.duplicate_window != DUPLICATE_WINDOW {
                config.subjects = subjects;
                config.duplicate_window = DUPLICATE_WINDOW;
                js.update_stream(config).await?;
            }
        }
        Err(_) => {
            js.get_or_create_stream(stream::Config {
                name: name.to_owned(),
                subjects,
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                duplicate_window: DUPLICATE_WINDOW,
                // The store is the history; the stream is a transport that keeps a tail.
                max_age: Duration::from_secs(7 * 24 * 3600),
                ..Default::default()
            })
            .await?;
        }
    }
    Ok(())
}

/// Whether the relay is getting events out, for readiness: a relay that keeps failing
/// (the bus refuses, the stream is gone) holds every read model and push back.
#[derive(Debug, Default)]
pub struct Health {
    /// When the current run of failures began, and the last failure; `None` while it
    /// publishes.
    failing: std::sync::Mutex<Option<(std::time::Instant, String)>>,
}

impl Health {
    /// How long the relay has been failing, and why; `None` while it publishes.
    pub fn failing(&self) -> Option<(Duration, String)> {
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        failing
            .as_ref()
            .map(|(since, why)| (since.elapsed(), why.clone()))
    }

    fn failed(&self, why: &RelayError) {
        let mut failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        let since = failing
            .as_ref()
            .map_or_else(std::time::Instant::now, |(s, _)| *s);
        *failing = Some((since, why.to_string()));
    }

    fn published(&self) {
        *self.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// One relay publishing to one stream.
pub struct Relay {
    /// Pool the dedicated connection is opened from (its options are reused).
    pool: PgPool,
    /// JetStream publisher.
    js: jetstream::Context,
    /// Stream name; also the checkpoint's key.
    stream: String,
    /// Subject prefix.
    prefix: String,
    /// Events per read.
    batch: i64,
    /// Where metrics go.
    metrics: Arc<Metrics>,
    /// Whether the stream was made sure of ([`ensure_stream`]) since this relay started, or
    /// since the bus last said it had no such stream.
    stream_ready: std::sync::atomic::AtomicBool,
    /// What readiness reads.
    health: Arc<Health>,
    /// Longest wait between reads when nothing wakes the relay (covers a horizon held back
    /// by a slower event-writing transaction).
    idle_poll: Duration,
}

/// The relay while it holds the lock: a dedicated connection and the checkpoint.
pub struct Leader {
    /// Holds the advisory lock; reads and checkpoint writes go through it.
    conn: PgConnection,
    /// Last published event.
    checkpoint: Checkpoint,
    /// Whether the last read was a full batch (more may be waiting).
    more: bool,
}

impl Relay {
    /// A relay for `stream`.
    pub fn new(
        pool: PgPool,
        js: jetstream::Context,
        stream: String,
        prefix: String,
        batch: i64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            pool,
            js,
            stream,
            prefix,
            // Every event of a batch is published before any ack is awaited, and each
            // holds one of the JetStream context's 5,000 in-flight permits.
            batch: batch.clamp(1, MAX_BATCH),
            metrics,
            stream_ready: std::sync::atomic::AtomicBool::new(false),
            health: Arc::default(),
            idle_poll: Duration::from_millis(100),
        }
    }

    /// Reports to `health` (readiness reads it).
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        self.health = health;
        self
    }

    /// Sets the longest wait between reads when nothing wakes the relay.
    pub fn with_idle_poll(mut self, idle_poll: Duration) -> Self {
        self.idle_poll = idle_poll.max(Duration::from_millis(1));
        self
    }

    fn connect_options(&self) -> PgConnectOptions {
        (*self.pool.connect_options())
            .clone()
            .application_name("relay")
    }

    /// Tries to become the active relay. `Ok(None)` while another instance is.
    pub async fn try_lead(&self) -> Result<Option<Leader>, RelayError> {
        let mut conn = self.connect_options().connect().await?;
        let locked: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('relay:' || $1))")
                .bind(&self.stream)
                .fetch_one(&mut conn)
                .await?;
        if !locked {
            return Ok(None);
        }
        // A lost checkpoint write only means re-publishing a few events, which JetStream
        // and the projectors de-duplicate; it is not worth an fsync per batch.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        let row = sqlx::query(
            "SELECT transaction_id::text AS txid, global_position FROM relay_checkpoints WHERE stream = $1",
        )
        .bind(&self.stream)
        .fetch_optional(&mut conn)
        .await?;
        let checkpoint = match row {
            Some(row) => Checkpoint {
                transaction_id: parse_xid(&row.try_get::<String, _>("txid")?)?,
                global_position: row.try_get("global_position")?,
            },
            None => Checkpoint::default(),
        };
        self.metrics.gauge(
            "relay_leader",
            "1 while this process is the active relay.",
            &[("stream", &self.stream)],
            1.0,
        );
        tracing::info!(stream = %self.stream, ?checkpoint, "relay is active");
        Ok(Some(Leader {
            conn,
            checkpoint,
            more: false,
        }))
    }

    /// Reads the next committed events after the checkpoint, below the horizon. An event
    /// whose stored form does not decode is quarantined on the spot and comes back as `None`,
    /// so that it holds back nothing after it.
    pub async fn read_batch(&self, leader: &mut Leader) -> Result<Vec<Entry>, RelayError> {
        self.metrics.count(
            "relay_reads_total",
            "Reads of the event store by the relay (each one computes the commit horizon).",
            &[("stream", &self.stream)],
            1.0,
        );
        // Two statements, never one: the read needs a snapshot taken after the horizon's.
        let horizon: String = sqlx::query_scalar("SELECT events_commit_horizon()::text")
            .fetch_one(&mut leader.conn)
            .await?;
        // The text form is named apart: `ORDER BY transaction_id` would otherwise sort by the
        // output column of that name, the text, and `'10…'` sorts before `'9…'`. The envelope
        // comes as text, checked here row by row, so one that no reader could decode is found
        // and set aside rather than failing the whole read.
        let rows: Vec<StoredRow> = sqlx::query_as(&format!(
            "SELECT transaction_id::text AS txid, global_position, aggregate_type, aggregate_id,
                    sequence, event_type, coalesce(metadata->>'tenant_id', '') AS tenant_id,
                    coalesce(metadata->>'correlation_id', '') AS correlation_id, recorded_at,
                    (jsonb_typeof(metadata) <> 'object'
                     OR jsonb_path_exists(metadata, '$.* ? (@.type() != \"string\")'))
                      AS odd_metadata,
                    ({})::text AS envelope
               FROM events
              WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
                AND transaction_id < $4::text::xid8
              ORDER BY transaction_id, global_position
              LIMIT $3",
            events::envelope::ENVELOPE_SQL
        ))
        .bind(leader.checkpoint.transaction_id.to_string())
        .bind(leader.checkpoint.global_position)
        .bind(self.batch)
        .bind(horizon)
        .fetch_all(&mut leader.conn)
        .await?;
        let mut batch = Vec::with_capacity(rows.len());
        let mut shape_checked = false;
        for row in rows {
            let checkpoint = Checkpoint {
                transaction_id: parse_xid(&row.txid)?,
                global_position: row.event.global_position,
            };
            // Nested past what any JSON reader decodes: that event will never be read, and
            // it must not hold back the others. Found by a scan of the bytes (no values built).
            if events::jsonb::nesting_exceeds(row.envelope.as_bytes(), READABLE_DEPTH) {
                let detail = format!("nested deeper than {READABLE_DEPTH} levels");
                let event = Unpublishable {
                    event: &row.event,
                    reason: "unreadable",
                    detail,
                };
                self.quarantine(&mut leader.conn, event).await?;
                batch.push((checkpoint, None));
                continue;
            }
            let outgoing = row.outgoing(!shape_checked)?;
            shape_checked = true;
            batch.push((checkpoint, Some(outgoing)));
        }
        Ok(batch)
    }

    /// Sets a stored event aside as not publishable: recorded once in `quarantined_events`,
    /// logged at error and counted, so that an operator is alerted while the events after it
    /// go on being published.
    async fn quarantine(
        &self,
        conn: &mut PgConnection,
        event: Unpublishable<'_>,
    ) -> Result<(), RelayError> {
        let inserted = sqlx::query(
            "INSERT INTO quarantined_events
                    (stream, global_position, aggregate_type, aggregate_id, sequence, event_type,
                     tenant_id, reason, detail)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (stream, global_position) DO NOTHING",
        )
        .bind(&self.stream)
        .bind(event.event.global_position)
        .bind(&event.event.aggregate_type)
        .bind(&event.event.aggregate_id)
        .bind(event.event.sequence)
        .bind(&event.event.event_type)
        .bind(&event.event.tenant_id)
        .bind(event.reason)
        .bind(&event.detail)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted > 0 {
            tracing::error!(
                stream = %self.stream,
                global_position = event.event.global_position,
                aggregate_type = event.event.aggregate_type,
                aggregate_id = event.event.aggregate_id,
                sequence = event.event.sequence,
                event_type = event.event.event_type,
                tenant_id = event.event.tenant_id,
                reason = event.reason,
                detail = %event.detail,
                "a stored event cannot be published: quarantined, and passed over"
            );
            self.metrics.count(
                "relay_events_quarantined_total",
                "Stored events the relay could not publish and set aside in quarantined_events, by reason.",
                &[("stream", &self.stream), ("reason", event.reason)],
                1.0,
            );
        }
        Ok(())
    }

    /// Publishes `batch` in order, pipelined, and returns the checkpoint of the last entry
    /// up to which every event's PubAck arrived, with how many events that is (events after
    /// a failed one are left for the next round). An event larger than the bus accepts is
    /// quarantined and passed over.
    pub async fn publish(
        &self,
        batch: &[Entry],
    ) -> (Option<Checkpoint>, usize, Result<(), RelayError>) {
        let mut pending = Vec::with_capacity(batch.len());
        let mut failure = None;
        for (checkpoint, envelope) in batch {
            let Some(envelope) = envelope else {
                pending.push((*checkpoint, None));
                continue;
            };
            match self.send(envelope).await {
                Ok(ack) => pending.push((*checkpoint, Some((envelope, ack)))),
                Err(Unsent::TooLarge(detail)) => {
                    if let Err(e) = self.quarantine_too_large(envelope, detail).await {
                        failure = Some(e);
                        break;
                    }
                    pending.push((*checkpoint, None));
                }
                Err(Unsent::Failed(e)) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let (mut acked, mut published) = (None, 0);
        for (checkpoint, ack) in pending {
            match ack {
                None => acked = Some(checkpoint),
                Some((envelope, ack)) => match ack.await {
                    Ok(_) => {
                        acked = Some(checkpoint);
                        published += 1;
                    }
                    // The stream's own size limit, below the server's: refused for good.
                    Err(e) if refused_as_too_large(&e) => {
                        if let Err(e) = self.quarantine_too_large(envelope, e.to_string()).await {
                            failure.get_or_insert(e);
                            break;
                        }
                        acked = Some(checkpoint);
                    }
                    Err(e) => {
                        self.stream_gone(&e);
                        failure.get_or_insert(RelayError::Publish(e.to_string()));
                        break;
                    }
                },
            }
        }
        (acked, published, failure.map_or(Ok(()), Err))
    }

    /// Notes a publish refused because the stream does not exist (the bus lost its store,
    /// or an operator deleted it): it is made again before the next round.
    fn stream_gone(&self, e: &async_nats::jetstream::context::PublishError) {
        if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound {
            self.stream_ready
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Quarantines `envelope` as larger than the bus or the stream accepts.
    async fn quarantine_too_large(
        &self,
        envelope: &Outgoing,
        detail: String,
    ) -> Result<(), RelayError> {
        let event = Unpublishable {
            event: &envelope.event,
            reason: "too_large",
            detail,
        };
        let mut conn = self.pool.acquire().await?;
        self.quarantine(&mut conn, event).await
    }

    async fn send(
        &self,
        envelope: &Outgoing,
    ) -> Result<jetstream::context::PublishAckFuture, Unsent> {
        let subject = events::subject::event_subject(
            &self.prefix,
            &envelope.event.tenant_id,
            &envelope.event.aggregate_type,
            &envelope.event.event_type,
        );
        let mut headers = HeaderMap::new();
        headers.insert("Correlation-Id", envelope.event.correlation_id.as_str());
        headers.insert("Tenant-Id", envelope.event.tenant_id.as_str());
        // `headers` replaces the map, so the message id is set after it.
        let message = PublishMessage::build()
            .payload(envelope.body.clone())
            .headers(headers)
            .message_id(envelope.message_id());
        self.js
            .send_publish(subject, message)
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::MaxPayloadExceeded => {
                    Unsent::TooLarge(e.to_string())
                }
                _ => {
                    self.stream_gone(&e);
                    Unsent::Failed(RelayError::Publish(e.to_string()))
                }
            })
    }

    /// Makes sure of the stream once per process, when this relay first leads: the bus may
    /// have been down when the process started, and commands were taken all the same.
    async fn ensure_stream(&self) -> Result<(), RelayError> {
        use std::sync::atomic::Ordering;
        if self.stream_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        ensure_stream(&self.js, &self.stream, &self.prefix)
            .await
            .map_err(|e| RelayError::Publish(format!("the stream cannot be set up: {e}")))?;
        self.stream_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Stores the checkpoint (never moving it backwards).
    pub async fn save_checkpoint(
        &self,
        leader: &mut Leader,
        checkpoint: Checkpoint,
    ) -> Result<(), RelayError> {
        sqlx::query(
            "INSERT INTO relay_checkpoints (stream, transaction_id, global_position)
             VALUES ($1, $2::text::xid8, $3)
             ON CONFLICT (stream) DO UPDATE
                SET transaction_id = EXCLUDED.transaction_id,
                    global_position = EXCLUDED.global_position,
                    updated_at = now()
              WHERE (relay_checkpoints.transaction_id, relay_checkpoints.global_position)
                  < (EXCLUDED.transaction_id, EXCLUDED.global_position)",
        )
        .bind(&self.stream)
        .bind(checkpoint.transaction_id.to_string())
        .bind(checkpoint.global_position)
        .execute(&mut leader.conn)
        .await?;
        leader.checkpoint = checkpoint;
        Ok(())
    }

    /// One round: read, publish, advance. Returns how many events were published (events
    /// quarantined on the way are passed over, not counted).
    pub async fn step(&self, leader: &mut Leader) -> Result<usize, RelayError> {
        let batch = self.read_batch(leader).await?;
        leader.more = batch.len() as i64 >= self.batch;
        if batch.is_empty() {
            return Ok(0);
        }
        let (acked, published, outcome) = self.publish(&batch).await;
        if let Some(checkpoint) = acked {
            self.save_checkpoint(leader, checkpoint).await?;
            let passed = batch.iter().take_while(|(c, _)| *c <= checkpoint);
            if let Some(last) = passed.filter_map(|(_, e)| e.as_ref()).last() {
                let lag = (Utc::now() - last.event.recorded_at)
                    .num_milliseconds()
                    .max(0) as f64
                    / 1e3;
                self.metrics.gauge(
                    "relay_lag_seconds",
                    "Age of the last event published when it was acknowledged.",
                    &[("stream", &self.stream)],
                    lag,
                );
            }
            self.metrics.count(
                "relay_events_published_total",
                "Events published and acknowledged by JetStream.",
                &[("stream", &self.stream)],
                published as f64,
            );
            outcome?;
            return Ok(published);
        }
        outcome.map(|()| 0)
    }

    fn set_lag(&self, seconds: f64) {
        self.metrics.gauge(
            "relay_lag_seconds",
            "Age of the next committed event not yet published (0 when caught up, NaN when not leading).",
            &[("stream", &self.stream)],
            seconds,
        );
    }

    /// Measures the lag once caught up with the horizon: the age of the next committed event
    /// after the checkpoint (one index lookup). Non-zero means an event-writing transaction
    /// of this database is holding the horizon back (for at most `events.writer_timeout` of
    /// idleness or of one statement).
    async fn measure_lag(&self, leader: &mut Leader) -> Result<(), RelayError> {
        let seconds: f64 = sqlx::query_scalar(
            "SELECT coalesce(extract(epoch FROM clock_timestamp() -
                    (SELECT recorded_at FROM events
                      WHERE (transaction_id, global_position) > ($1::text::xid8, $2)
                      ORDER BY transaction_id, global_position LIMIT 1)), 0)::float8",
        )
        .bind(leader.checkpoint.transaction_id.to_string())
        .bind(leader.checkpoint.global_position)
        .fetch_one(&mut leader.conn)
        .await?;
        self.set_lag(seconds);
        Ok(())
    }

    /// Runs forever: stands by until it holds the lock, then publishes as events commit.
    pub async fn run(self, wake: Arc<Notify>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = std::time::Instant::now();
            let outcome = self.lead(&wake).await;
            // A failure after a long stint as leader is a fresh failure, not a repeated one.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            match outcome {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    self.health.failed(&e);
                    tracing::warn!(error = %e, stream = %self.stream, "relay interrupted; retrying");
                    self.metrics.gauge(
                        "relay_leader",
                        "1 while this process is the active relay.",
                        &[("stream", &self.stream)],
                        0.0,
                    );
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Returns `Ok(())` when another instance holds the lock (stand by), `Err` when the
    /// active relay failed.
    async fn lead(&self, wake: &Notify) -> Result<(), RelayError> {
        let Some(mut leader) = self.try_lead().await? else {
            // Try again in a second; meanwhile the active relay is told of this process's
            // commits.
            tokio::time::timeout(
                Duration::from_secs(1),
                forward_commits(self.pool.clone(), wake),
            )
            .await
            .unwrap_or(Ok(()))?;
            // Standing by is not failing: the active relay answers for publishing.
            self.health.published();
            return Ok(());
        };
        self.ensure_stream().await?;
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen("events_appended").await?;
        let mut measured = std::time::Instant::now() - LAG_EVERY;
        loop {
            self.step(&mut leader).await?;
            self.health.published();
            if leader.more {
                continue;
            }
            // Caught up with the horizon: now and then measure what is still waiting (this
            // also proves the lock's connection alive), then sleep until woken or the poll
            // is due.
            if measured.elapsed() >= LAG_EVERY {
                self.measure_lag(&mut leader).await?;
                measured = std::time::Instant::now();
            }
            tokio::select! {
                () = wake.notified() => {}
                n = listener.try_recv() => { n?; }
                () = tokio::time::sleep(self.idle_poll) => {}
            }
            // One read serves every commit notified so far: under load, notifications arrive
            // faster than one step per notification could take them, and would pile up.
            while listener.next_buffered().is_some() {}
        }
    }
}

/// Tells the active relay, wherever it runs, of the commits `wake` signals: one
/// `NOTIFY events_appended` per wake-up, however many commits it stands for. Runs in a
/// process whose relay stands by or is disabled. Returns only on a database error.
///
/// The notification is its own small transaction, after the events' commit. It commits
/// without waiting for its WAL flush: it writes nothing that has to survive a crash, and
/// `NOTIFY` holds a database-wide lock until its transaction has committed.
pub async fn forward_commits(pool: PgPool, wake: &Notify) -> Result<(), RelayError> {
    loop {
        wake.notified().await;
        sqlx::query(
            "SELECT set_config('synchronous_commit', 'off', true),
                    pg_notify('events_appended', '')",
        )
        .execute(&pool)
        .await?;
    }
}

/// The deepest nesting of arrays and objects `serde_json` decodes (it refuses the 128th
/// level): an envelope nested deeper is unreadable by every consumer, the one way a stored
/// event can be unreadable on its own (`events::jsonb`).
const READABLE_DEPTH: usize = 127;

/// Envelopes longer than this (as PostgreSQL writes them) are published compact.
const COMPACT_ABOVE: usize = 64 * 1024;

/// Whether a publish was refused by the stream as larger than its `max_msg_size`
/// (JetStream error 10054), which only the acknowledgement says.
fn refused_as_too_large(e: &async_nats::jetstream::context::PublishError) -> bool {
    e.to_string().contains("10054")
}

/// Why an event was not handed to the bus.
enum Unsent {
    /// It is larger than the server's `max_payload`: it never will be.
    TooLarge(String),
    /// Anything else: try again later.
    Failed(RelayError),
}

/// A row of `events` as the relay reads it: the envelope as text, and enough beside it to
/// name an event whose envelope does not decode.
#[derive(sqlx::FromRow)]
struct StoredRow {
    /// Writing transaction, as text.
    txid: String,
    /// Which event it is.
    #[sqlx(flatten)]
    event: StoredEvent,
    /// Whether its metadata is anything but an object of strings.
    odd_metadata: bool,
    /// The envelope as JSON text.
    envelope: String,
}

impl StoredRow {
    /// The row as it goes to the bus. With `check_shape` (the first of a read), and for any
    /// whose metadata is not text by name (only a write past the command bus makes one), the
    /// envelope is decoded in full: one that does not decode says the store and this code
    /// disagree, every consumer would refuse it, and the relay stops and says so rather than
    /// pass over it. A large one is decoded and written compactly: PostgreSQL's text of
    /// `jsonb` has spaces after separators and spells numbers out, and the event size limit
    /// is measured compact. The others go out as the bytes they are.
    fn outgoing(self, check_shape: bool) -> Result<Outgoing, RelayError> {
        let large = self.envelope.len() > COMPACT_ABOVE;
        if !(check_shape || self.odd_metadata || large) {
            return Ok(Outgoing {
                event: self.event,
                body: Bytes::from(self.envelope),
            });
        }
        let corrupt = |e: serde_json::Error| RelayError::Corrupt(self.txid.clone(), e.to_string());
        let envelope = serde_json::from_str::<Envelope>(&self.envelope).map_err(corrupt)?;
        let body = if large {
            Bytes::from(serde_json::to_vec(&envelope).map_err(corrupt)?)
        } else {
            Bytes::from(self.envelope)
        };
        Ok(Outgoing {
            event: self.event,
            body,
        })
    }
}

fn parse_xid(text: &str) -> Result<u64, RelayError> {
    text.parse()
        .map_err(|_| RelayError::Corrupt(text.to_owned(), "not a transaction id".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readable_depth_is_where_serde_json_stops_decoding() {
        let nested = |levels: usize| {
            let mut text = String::from(r#"{"s": "[[{\"]]"}"#);
            for level in 1..levels {
                text = if level % 2 == 0 {
                    format!("[{text}]")
                } else {
                    format!(r#"{{"k": {text}}}"#)
                };
            }
            text
        };
        let readable = nested(READABLE_DEPTH);
        let unreadable = nested(READABLE_DEPTH + 1);
        assert!(serde_json::from_str::<serde_json::Value>(&readable).is_ok());
        assert!(serde_json::from_str::<serde_json::Value>(&unreadable).is_err());
        assert!(!events::jsonb::nesting_exceeds(
            readable.as_bytes(),
            READABLE_DEPTH
        ));
        assert!(events::jsonb::nesting_exceeds(
            unreadable.as_bytes(),
            READABLE_DEPTH
        ));
    }

    #[test]
    fn health_says_how_long_the_relay_has_been_failing_until_it_publishes_again() {
        let health = Health::default();
        assert!(health.failing().is_none());
        health.failed(&RelayError::Publish("no stream found".into()));
        std::thread::sleep(Duration::from_millis(5));
        health.failed(&RelayError::Publish("still no stream".into()));
        let (for_how_long, why) = health.failing().expect("failing");
        assert!(
            for_how_long >= Duration::from_millis(5),
            "counted from the first failure"
        );
        assert_eq!(why, "publish: still no stream");
        health.published();
        assert!(health.failing().is_none());
    }
}
