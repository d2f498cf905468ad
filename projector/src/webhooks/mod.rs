//! The `webhooks` read model (`webhook` events): what admins list, and the queue the
//! process manager ([`crate::due`]) takes due webhooks from (`next_attempt_at`). Every event
//! moves its row's `version`, so a reader can wait for its own write.

use async_trait::async_trait;
use events::webhooks::{Outcome, WebhookEvent, WEBHOOK};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{decode, run, Projection, ProjectionError, RowUpdate, Target};

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Recorded => "recorded",
        Outcome::Ignored => "ignored",
    }
}

/// The `webhooks` read model.
pub struct WebhooksProjection;

#[async_trait]
impl Projection for WebhooksProjection {
    fn name(&self) -> &'static str {
        "webhooks"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[WEBHOOK]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["webhooks"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let table = target.table("webhooks");
        let row = RowUpdate::new(table.clone(), e);
        let id = e.aggregate_id.as_str();
        match decode::<WebhookEvent>(e)? {
            received @ WebhookEvent::Received { .. } => {
                insert_received(conn, &table, e, received).await
            }
            WebhookEvent::AttemptFailed {
                attempt,
                error,
                retry_at,
            } => {
                let sql = row.sql(
                    "status = 'retrying', attempts = $4, last_error = $5, next_attempt_at = $6",
                );
                let query = row.query(&sql, id).bind(attempt as i32).bind(error);
                run(conn, query.bind(retry_at)).await
            }
            WebhookEvent::DeadLettered { attempts, error } => {
                let sql = row
                    .sql("status = 'dead', attempts = $4, last_error = $5, next_attempt_at = NULL");
                run(conn, row.query(&sql, id).bind(attempts as i32).bind(error)).await
            }
            WebhookEvent::Processed {
                outcome,
                payment_id,
                tenant_id,
                detail,
                at,
                ..
            } => {
                let sql = row.sql(
                    "status = 'processed', outcome = $4, payment_id = coalesce($5, payment_id),
                     detail = $6, processed_at = $7, tenant_id = coalesce($8, tenant_id),
                     next_attempt_at = NULL",
                );
                let query = row.query(&sql, id).bind(outcome_name(outcome));
                let query = query.bind(payment_id).bind(detail).bind(at).bind(tenant_id);
                run(conn, query).await
            }
            WebhookEvent::HeldForTenant { tenant_id, .. } => {
                // Still due: the due work skips it while its tenant is suspended.
                run(
                    conn,
                    row.query(&row.sql("tenant_id = $4"), id).bind(tenant_id),
                )
                .await
            }
            WebhookEvent::ReplayRequested { at } => {
                let sql = row.sql("status = 'received', attempts = 0, next_attempt_at = $4");
                run(conn, row.query(&sql, id).bind(at)).await
            }
        }
    }
}

/// A webhook received: its row.
async fn insert_received(
    conn: &mut PgConnection,
    table: &str,
    e: &Envelope,
    event: WebhookEvent,
) -> Result<(), ProjectionError> {
    let WebhookEvent::Received {
        provider,
        provider_event_id,
        event_type,
        payment_id,
        received_at,
        ..
    } = event
    else {
        return Ok(());
    };
    sqlx::query(&format!(
        "INSERT INTO {table} (id, tenant_id, provider, provider_event_id, event_type,
                                  payment_id, status, next_attempt_at, received_at,
                                  updated_at, version)
             VALUES ($1::uuid, $2, $3, $4, $5, $6, 'received', $7, $7, $8, $9)"
    ))
    .bind(&e.aggregate_id)
    .bind(e.tenant_id())
    .bind(provider.as_str())
    .bind(provider_event_id)
    .bind(event_type)
    .bind(payment_id)
    .bind(received_at)
    .bind(e.recorded_at)
    .bind(e.sequence as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The webhooks context: received webhooks, and the process manager that has due ones
/// processed.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        vec![std::sync::Arc::new(WebhooksProjection)]
    }

    /// The process manager of due webhooks.
    fn workers(
        running: &crate::context::Running<'_>,
        _settings: &Settings,
        tasks: &mut tokio::task::JoinSet<()>,
    ) {
        let processor = crate::due::DueProcessor::webhooks(
            running.pool.clone(),
            &running.config.command_api_url,
            running.keys(),
            std::sync::Arc::new(events::clock::SystemClock),
        );
        tasks.spawn(async move { processor.run().await });
    }
}
