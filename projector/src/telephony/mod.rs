//! The `calls` read model: every call of a tenant's numbers as SignalWire reported it — its
//! way, parties, last status, length and recording — so staff see missed calls in a list.

use async_trait::async_trait;
use events::telephony::{CallEvent, Direction, CALL};
use events::Envelope;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::{decode, Projection, ProjectionError, Target};

/// The calls read model.
pub struct CallsProjection;

/// The row id of call `sid` (keyset paging needs a UUID).
pub fn call_row_id(sid: &str) -> Uuid {
    Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("call\0{sid}").as_bytes())
}

/// Whether a call that ended with `status` was missed (inbound and never answered).
fn missed(direction: Direction, status: &str) -> bool {
    direction == Direction::Inbound
        && matches!(status, "busy" | "no-answer" | "failed" | "canceled")
}

#[async_trait]
impl Projection for CallsProjection {
    fn name(&self) -> &'static str {
        "calls"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[CALL]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["calls"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let table = target.table("calls");
        let event: CallEvent = decode(e)?;
        let sid = e.aggregate_id.as_str();
        let (id, version, recorded) = (call_row_id(sid), e.sequence as i64, e.recorded_at);
        match event {
            CallEvent::CallStatusChanged {
                status,
                direction,
                from,
                to,
                duration_secs,
                recording_url,
                at,
                ..
            } => {
                let direction_name = match direction {
                    Direction::Inbound => "inbound",
                    Direction::Outbound => "outbound",
                };
                sqlx::query(&format!(
                    "INSERT INTO {table} (id, call_sid, tenant_id, direction, from_number,
                                          to_number, status, missed, duration_secs,
                                          recording_url, started_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                     ON CONFLICT (id) DO UPDATE SET
                         direction = EXCLUDED.direction,
                         from_number = EXCLUDED.from_number,
                         to_number = EXCLUDED.to_number,
                         status = EXCLUDED.status,
                         missed = EXCLUDED.missed,
                         duration_secs = coalesce(EXCLUDED.duration_secs, {table}.duration_secs),
                         recording_url = coalesce(EXCLUDED.recording_url, {table}.recording_url),
                         updated_at = EXCLUDED.updated_at,
                         version = EXCLUDED.version"
                ))
                .bind(id)
                .bind(sid)
                .bind(e.tenant_id())
                .bind(direction_name)
                .bind(from)
                .bind(to)
                .bind(&status)
                .bind(missed(direction, &status))
                .bind(duration_secs.map(|d| d as i32))
                .bind(recording_url)
                .bind(at)
                .bind(recorded)
                .bind(version)
                .execute(&mut *conn)
                .await?;
            }
            recorded_event @ CallEvent::CallRecorded { .. } => {
                recorded_call(conn, &table, e, id, recorded_event).await?;
            }
        }
        Ok(())
    }
}

/// A call's recording: kept on its row (made if the call's own callbacks are still on their
/// way).
async fn recorded_call(
    conn: &mut PgConnection,
    table: &str,
    e: &Envelope,
    id: uuid::Uuid,
    event: CallEvent,
) -> Result<(), ProjectionError> {
    let CallEvent::CallRecorded {
        recording_sid,
        recording_url,
        duration_secs,
        at,
        ..
    } = event
    else {
        return Ok(());
    };
    sqlx::query(&format!(
        "INSERT INTO {table} (id, call_sid, tenant_id, recording_sid, recording_url,
                              duration_secs, started_at, updated_at, version)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET
             recording_sid = EXCLUDED.recording_sid,
             recording_url = EXCLUDED.recording_url,
             duration_secs = coalesce({table}.duration_secs, EXCLUDED.duration_secs),
             updated_at = EXCLUDED.updated_at,
             version = EXCLUDED.version"
    ))
    .bind(id)
    .bind(&e.aggregate_id)
    .bind(e.tenant_id())
    .bind(recording_sid)
    .bind(recording_url)
    .bind(duration_secs.map(|d| d as i32))
    .bind(at)
    .bind(e.recorded_at)
    .bind(e.sequence as i64)
    .execute(&mut *conn)
    .await?;

    Ok(())
}

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The telephony context: the calls read model.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        vec![std::sync::Arc::new(CallsProjection)]
    }
}

/// Redacts what the calls read model holds of data subject `subject` of `tenant`, of kind
/// `kind`, in place (docs/privacy.md): in a contact's calls, their number (the caller of an
/// inbound call, the callee of an outbound one) and the recording link read `[erased]`; ids,
/// states, times and durations stay. A rebuild gives the same by itself (the sealed fields
/// open as `[erased]`).
pub async fn redact_subject(
    conn: &mut PgConnection,
    subject: Uuid,
    tenant: &str,
    kind: &str,
) -> Result<(), ProjectionError> {
    if kind != "contact" {
        return Ok(());
    }
    let parties: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT CASE direction WHEN 'outbound' THEN to_number ELSE from_number END
           FROM calls WHERE tenant_id = $1 AND direction IS NOT NULL",
    )
    .bind(tenant)
    .fetch_all(&mut *conn)
    .await?;
    let theirs: Vec<String> = parties
        .into_iter()
        .filter(|n| {
            let address = events::telephony::party_address(n);
            events::personal::subject_id(kind, tenant, &address) == subject
        })
        .collect();
    if theirs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE calls SET
                from_number = CASE WHEN direction = 'inbound' THEN $3 ELSE from_number END,
                to_number = CASE WHEN direction = 'outbound' THEN $3 ELSE to_number END,
                recording_url = CASE WHEN recording_url IS NULL THEN NULL ELSE $3 END
          WHERE tenant_id = $1
            AND CASE direction WHEN 'outbound' THEN to_number ELSE from_number END = ANY($2)",
    )
    .bind(tenant)
    .bind(&theirs)
    .bind(events::personal::ERASED)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
