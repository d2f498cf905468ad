//! The tenants read model (table `tenants`), served by query-api's tenant list and detail.

use async_trait::async_trait;
use events::tenant::{TenantEvent, AGGREGATE_TYPE};
use events::Envelope;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::{Projection, ProjectionError, Target};

/// One row per tenant.
pub struct TenantsProjection;

#[async_trait]
impl Projection for TenantsProjection {
    fn name(&self) -> &'static str {
        "tenants"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[AGGREGATE_TYPE]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tenants"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let undecodable = |reason: String| ProjectionError::Undecodable {
            event_id: e.event_id(),
            reason,
        };
        let event: TenantEvent = serde_json::from_value(e.payload.clone())
            .map_err(|err| undecodable(err.to_string()))?;
        let id = Uuid::parse_str(&e.aggregate_id).map_err(|err| undecodable(err.to_string()))?;
        let table = target.table("tenants");

        let (name, slug, contact_email, status) = match event {
            TenantEvent::SignupRequested {
                name,
                slug,
                contact_email,
            } => (name, slug, contact_email, "pending"),
            TenantEvent::Created {
                name,
                slug,
                contact_email,
            } => (name, slug, contact_email, "active"),
            other => return change(conn, &table, id, e, other).await,
        };
        sqlx::query(&format!(
            "INSERT INTO {table} (id, tenant_id, name, slug, contact_email, status, created_at, updated_at, version)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)"
        ))
        .bind(id)
        .bind(e.tenant_id())
        .bind(name)
        .bind(slug)
        .bind(contact_email)
        .bind(status)
        .bind(e.recorded_at)
        .bind(e.sequence as i64)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The value a change binds as `$4`, if any.
enum Arg {
    None,
    Text(String),
    Json(serde_json::Value),
}

/// Applies an event that changes some columns of an existing row ($1 id, $2 time,
/// $3 version, $4 the event's value).
async fn change(
    conn: &mut PgConnection,
    table: &str,
    id: Uuid,
    e: &Envelope,
    event: TenantEvent,
) -> Result<(), ProjectionError> {
    let (set, arg) = match event {
        TenantEvent::Approved {} | TenantEvent::Reactivated {} => {
            ("status = 'active', suspension_reason = NULL", Arg::None)
        }
        TenantEvent::Rejected { reason } => (
            "status = 'rejected', rejection_reason = $4",
            Arg::Text(reason),
        ),
        TenantEvent::Suspended { reason } => (
            "status = 'suspended', suspension_reason = $4",
            Arg::Text(reason),
        ),
        TenantEvent::Renamed { name } => ("name = $4", Arg::Text(name)),
        TenantEvent::PreferencesUpdated { preferences } => {
            ("preferences = $4", Arg::Json(preferences))
        }
        TenantEvent::DepartmentAdded { name } => (
            "departments = (SELECT coalesce(jsonb_agg(d ORDER BY d), '[]')
                              FROM (SELECT jsonb_array_elements_text(departments) AS d UNION SELECT $4) s)",
            Arg::Text(name),
        ),
        TenantEvent::DepartmentRemoved { name } => (
            "departments = (SELECT coalesce(jsonb_agg(d ORDER BY d), '[]')
                              FROM jsonb_array_elements_text(departments) AS d WHERE d <> $4)",
            Arg::Text(name),
        ),
        TenantEvent::LogoUploaded {
            object_key,
            content_type,
            size_bytes,
            sha256,
        } => (
            "logo = $4",
            Arg::Json(serde_json::json!({
                "object_key": object_key,
                "content_type": content_type,
                "size_bytes": size_bytes,
                "sha256": sha256,
            })),
        ),
        TenantEvent::SignupRequested { .. } | TenantEvent::Created { .. } => {
            return Err(ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: "a tenant cannot be opened twice".into(),
            })
        }
    };
    let sql = format!("UPDATE {table} SET {set}, updated_at = $2, version = $3 WHERE id = $1");
    let query = sqlx::query(&sql)
        .bind(id)
        .bind(e.recorded_at)
        .bind(e.sequence as i64);
    let query = match arg {
        Arg::None => query,
        Arg::Text(text) => query.bind(text),
        Arg::Json(json) => query.bind(json),
    };
    let rows = query.execute(&mut *conn).await?.rows_affected();
    if rows != 1 {
        return Err(ProjectionError::Undecodable {
            event_id: e.event_id(),
            reason: format!("tenant row {id} is missing"),
        });
    }
    Ok(())
}
