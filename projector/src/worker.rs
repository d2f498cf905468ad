//! One durable JetStream pull consumer feeding one projection.
//!
//! A batch of whatever messages are ready is applied in one transaction and acknowledged
//! after it commits. If the batch fails, each message is retried alone, so one bad message
//! cannot hold back the others. A message that is not an event envelope is dead-lettered at
//! once. One that cannot be applied (undecodable payload, earlier events missing from the
//! store, a constraint or data error) is nak'ed with back-off and, after `max_deliver`
//! attempts, written to `dead_letters` and acknowledged. A transient database error
//! (connection, shutdown, deadlock) is retried with back-off for as long as it lasts.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, AckKind, Message};
use events::keyring::Keyring;
use events::Envelope;
use futures::{FutureExt, StreamExt};
use sqlx::PgPool;
use tracing::Instrument;

use crate::projection::{
    apply_all_in_order, apply_in_order, pending_in_order, Applied, Projection, ProjectionError,
    Target,
};

/// A message that could not be decoded or applied.
#[derive(Debug)]
pub struct Failure {
    /// Why.
    pub error: String,
    /// Deliveries so far.
    pub deliveries: i64,
}

/// Counts of what one step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StepReport {
    /// Events applied (including gap fills).
    pub applied: usize,
    /// Duplicates skipped.
    pub duplicates: usize,
    /// Messages nak'ed for a retry.
    pub retried: usize,
    /// Messages written to dead letters.
    pub dead_lettered: usize,
}

/// Feeds one projection from its durable consumer.
pub struct Worker {
    /// Read models and checkpoints.
    pool: PgPool,
    /// The projection.
    projection: Arc<dyn Projection>,
    /// Its durable consumer.
    consumer: PullConsumer,
    /// Attempts before a message is dead-lettered.
    max_deliver: i64,
    /// Most messages applied in one transaction.
    batch: usize,
    /// Opens the personal fields of the events before they are applied.
    keys: Keyring,
}

/// Creates (or finds) the projection's durable consumer: explicit acks, every subject of its
/// aggregate types, from the start of the stream.
pub async fn durable_consumer(
    js: &jetstream::Context,
    stream: &str,
    prefix: &str,
    projection: &dyn Projection,
) -> Result<PullConsumer, async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    Ok(stream
        .get_or_create_consumer(projection.name(), consumer_config(prefix, projection))
        .await?)
}

/// The durable consumer of `projection` on subjects under `prefix` (what
/// `nats/consumers/{name}.json` writes down, with the default prefix `events`).
pub fn consumer_config(prefix: &str, projection: &dyn Projection) -> pull::Config {
    let filters: Vec<String> = projection
        .aggregate_types()
        .iter()
        .map(|t| events::subject::aggregate_filter(prefix, t))
        .collect();
    let mut config = pull::Config {
        durable_name: Some(projection.name().to_owned()),
        ack_policy: AckPolicy::Explicit,
        // A read model is built from the start; a side effect added to a running system
        // starts with what is new (it does not redo the past).
        deliver_policy: if projection.effect().is_some() {
            DeliverPolicy::New
        } else {
            DeliverPolicy::All
        },
        ack_wait: Duration::from_secs(30),
        max_ack_pending: 10_000,
        ..Default::default()
    };
    // nats-server 2.9 takes one filter subject per consumer; a projection of several
    // aggregate types listens to the whole prefix and ignores what it does not know.
    config.filter_subject = match filters.as_slice() {
        [one] => one.clone(),
        _ => format!("{prefix}.>"),
    };
    config
}

impl Worker {
    /// A worker for `projection`.
    pub fn new(
        pool: PgPool,
        projection: Arc<dyn Projection>,
        consumer: PullConsumer,
        max_deliver: i64,
        batch: usize,
        keys: Keyring,
    ) -> Self {
        Self {
            pool,
            projection,
            consumer,
            max_deliver: max_deliver.max(1),
            batch: batch.max(1),
            keys,
        }
    }

    /// Runs until the message stream ends (the connection closed) or fails.
    pub async fn run(self) -> Result<(), async_nats::Error> {
        let mut messages = self.consumer.messages().await?;
        loop {
            let Some(first) = messages.next().await else {
                return Ok(());
            };
            let mut batch = vec![first?];
            while batch.len() < self.batch {
                match messages.next().now_or_never() {
                    Some(Some(Ok(m))) => batch.push(m),
                    Some(Some(Err(e))) => return Err(e.into()),
                    Some(None) => break,
                    None => break,
                }
            }
            let report = self.step(batch).await;
            tracing::debug!(projection = self.projection.name(), ?report, "step");
        }
    }

    /// Handles a batch of messages: the testable unit of the worker.
    pub async fn step(&self, messages: Vec<Message>) -> StepReport {
        let mut report = StepReport::default();
        let mut decoded = Vec::with_capacity(messages.len());
        for message in messages {
            match serde_json::from_slice::<Envelope>(&message.payload) {
                Ok(envelope) => decoded.push((message, envelope)),
                // A message that is not an envelope will never become one: dead-letter it now.
                Err(e) => {
                    self.dead_letter(
                        &message,
                        None,
                        &format!("not an event envelope: {e}"),
                        deliveries(&message),
                    )
                    .await;
                    report.dead_lettered += 1;
                }
            }
        }
        if decoded.is_empty() {
            return report;
        }
        match self.apply_all(&decoded).await {
            Ok(applied) => {
                for (message, _) in &decoded {
                    ack(message, AckKind::Ack).await;
                }
                for a in applied {
                    count(&mut report, a);
                }
            }
            // A side effect's service is down: trying each message alone would wait for it
            // once per message. The whole batch comes back later, in order.
            Err(e) if e.is_transient() && self.projection.effect().is_some() => {
                tracing::warn!(projection = self.projection.name(), error = %e, "side effect failed; the batch will be retried");
                for (message, _) in &decoded {
                    ack(
                        message,
                        AckKind::Nak(Some(retry_delay(deliveries(message)))),
                    )
                    .await;
                    report.retried += 1;
                }
            }
            Err(e) => {
                tracing::warn!(projection = self.projection.name(), error = %e, "batch failed; retrying one by one");
                for (message, envelope) in &decoded {
                    self.one(message, envelope, &mut report).await;
                }
            }
        }
        report
    }

    async fn apply_all(
        &self,
        decoded: &[(Message, Envelope)],
    ) -> Result<Vec<Applied>, ProjectionError> {
        let envelopes: Vec<Envelope> = decoded.iter().map(|(_, e)| e.clone()).collect();
        self.perform(&envelopes).await?;
        let mut tx = self.pool.begin().await?;
        let out = apply_all_in_order(
            &mut tx,
            self.projection.as_ref(),
            &Target::LIVE,
            &envelopes,
            &self.keys,
        )
        .await?;
        tx.commit().await?;
        Ok(out)
    }

    /// For a side-effect worker: performs the effects of the events not yet done, before (and
    /// outside) the transaction that moves the checkpoints.
    async fn perform(&self, envelopes: &[Envelope]) -> Result<(), ProjectionError> {
        let Some(effect) = self.projection.effect() else {
            return Ok(());
        };
        let pending = {
            let mut conn = self.pool.acquire().await?;
            pending_in_order(
                &mut conn,
                self.projection.as_ref(),
                &Target::LIVE,
                envelopes,
                &self.keys,
            )
            .await?
        };
        if pending.is_empty() {
            return Ok(());
        }
        effect.perform(&pending).await
    }

    async fn one(&self, message: &Message, envelope: &Envelope, report: &mut StepReport) {
        let span = tracing::info_span!(
            "project",
            projection = self.projection.name(),
            event_id = %envelope.event_id(),
            correlation_id = envelope.metadata.get(events::envelope::keys::CORRELATION_ID).map(String::as_str).unwrap_or_default(),
        );
        let outcome = async {
            self.perform(std::slice::from_ref(envelope)).await?;
            let mut tx = self.pool.begin().await?;
            let applied = apply_in_order(
                &mut tx,
                self.projection.as_ref(),
                &Target::LIVE,
                envelope,
                &self.keys,
            )
            .await?;
            tx.commit().await?;
            Ok::<_, ProjectionError>(applied)
        }
        .instrument(span)
        .await;
        match outcome {
            Ok(applied) => {
                ack(message, AckKind::Ack).await;
                count(report, applied);
            }
            Err(e) => {
                let n = deliveries(message);
                // A transient error (a timeout, a restart, a deadlock) says nothing about the
                // message: retry it, however often. Only an error the message itself causes
                // counts towards dead-lettering.
                let permanent = !e.is_transient();
                if permanent && n >= self.max_deliver {
                    self.dead_letter(message, Some(envelope), &e.to_string(), n)
                        .await;
                    report.dead_lettered += 1;
                } else {
                    let delay = retry_delay(n);
                    tracing::warn!(projection = self.projection.name(), event_id = %envelope.event_id(), error = %e, deliveries = n, "apply failed; will retry");
                    ack(message, AckKind::Nak(Some(delay))).await;
                    report.retried += 1;
                }
            }
        }
    }

    /// Records a message that will not be applied, then acknowledges it so it stops
    /// blocking the consumer. If the record cannot be written the message is left
    /// unacknowledged, to be redelivered: it is never silently dropped.
    async fn dead_letter(
        &self,
        message: &Message,
        envelope: Option<&Envelope>,
        error: &str,
        deliveries: i64,
    ) {
        let (aggregate_type, aggregate_id, sequence, tenant) = envelope.map_or_else(
            || (String::new(), String::new(), 0, String::new()),
            |e| {
                (
                    e.aggregate_type.clone(),
                    e.aggregate_id.clone(),
                    e.sequence as i64,
                    e.tenant_id().to_owned(),
                )
            },
        );
        let sequence = if envelope.is_some() {
            sequence
        } else {
            // Undecodable messages are keyed by their stream sequence instead.
            -(message
                .info()
                .map(|i| i.stream_sequence as i64)
                .unwrap_or_default())
        };
        let stored = sqlx::query(
            "INSERT INTO dead_letters (projection, aggregate_type, aggregate_id, sequence, tenant_id, subject, error, deliveries, payload)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (projection, aggregate_type, aggregate_id, sequence)
             DO UPDATE SET error = EXCLUDED.error, deliveries = EXCLUDED.deliveries, failed_at = now()",
        )
        .bind(self.projection.name())
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .bind(tenant)
        .bind(message.subject.as_str())
        .bind(error)
        .bind(deliveries)
        .bind(message.payload.as_ref())
        .execute(&self.pool)
        .await;
        match stored {
            Ok(_) => {
                tracing::error!(projection = self.projection.name(), subject = %message.subject, error, "dead-lettered");
                ack(message, AckKind::Term).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not write a dead letter; leaving the message for redelivery")
            }
        }
    }
}

fn count(report: &mut StepReport, applied: Applied) {
    match applied {
        Applied::Applied { filled } => report.applied += 1 + filled,
        Applied::Duplicate => report.duplicates += 1,
    }
}

/// The pause before delivery `n + 1` of a message that failed: 1 s, 2 s, 4 s … at most a
/// minute.
fn retry_delay(n: i64) -> Duration {
    Duration::from_secs(1 << (n - 1).clamp(0, 6) as u32).min(Duration::from_secs(60))
}

fn deliveries(message: &Message) -> i64 {
    message.info().map(|i| i.delivered).unwrap_or(1)
}

async fn ack(message: &Message, kind: AckKind) {
    // A lost ack means a redelivery, which the checkpoint turns into a skipped duplicate.
    if let Err(e) = message.ack_with(kind).await {
        tracing::warn!(error = %e, "ack failed; the message will be redelivered and skipped");
    }
}
