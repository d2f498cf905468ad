//! The tenants read model (table `tenants`), served by query-api's tenant list and detail.
//!
//! The projection is a pure fold: [`TenantRow::apply`] turns a row and an event into the next
//! row, with no SQL. Around it, [`TenantsProjection::apply_all`] reads the rows a batch touches
//! in one statement and writes them back in one statement, so the live projector (a batch of
//! one) and a rebuild (thousands of events, one write per tenant) run the same code.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use events::tenants::{TenantEvent, AGGREGATE_TYPE};
use events::Envelope;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::projection::{Projection, ProjectionError, Target};

/// One row per tenant.
pub struct TenantsProjection;

/// The columns of the table, in the order the writes list them.
const COLUMNS: &str = "id, tenant_id, name, slug, contact_email, status, preferences, logo, \
     rejection_reason, suspension_reason, departments, created_at, updated_at, version";

/// A row of `tenants`, named as its columns (it crosses to PostgreSQL as JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct TenantRow {
    /// The aggregate id.
    id: Uuid,
    /// The tenant scope every read-model row carries (the tenant's own id, as text).
    tenant_id: String,
    /// Display name.
    name: String,
    /// URL-safe unique handle.
    slug: String,
    /// Who to contact about the tenant.
    contact_email: String,
    /// `pending`, `active`, `rejected` or `suspended`.
    status: String,
    /// The tenant's preferences object.
    preferences: serde_json::Value,
    /// The stored logo's key, type, size and hash, once one was uploaded.
    logo: Option<serde_json::Value>,
    /// Why a signup was turned down.
    rejection_reason: Option<String>,
    /// Why the tenant is suspended, while it is.
    suspension_reason: Option<String>,
    /// Department names, sorted by their bytes (the same on every database collation).
    departments: BTreeSet<String>,
    /// When the first event was recorded.
    created_at: DateTime<Utc>,
    /// When the last applied event was recorded.
    updated_at: DateTime<Utc>,
    /// The aggregate sequence this row reflects (read-your-writes compares against it).
    version: i64,
}

impl TenantRow {
    /// The row after `event` (the event of `e`), given the row before it, if any.
    fn apply(
        row: Option<TenantRow>,
        e: &Envelope,
        event: TenantEvent,
    ) -> Result<TenantRow, String> {
        let opened = |name, slug, contact_email, status: &str| {
            let id = Uuid::parse_str(&e.aggregate_id).map_err(|err| err.to_string())?;
            Ok(TenantRow {
                id,
                tenant_id: e.tenant_id().to_owned(),
                name,
                slug,
                contact_email,
                status: status.to_owned(),
                preferences: serde_json::json!({}),
                logo: None,
                rejection_reason: None,
                suspension_reason: None,
                departments: BTreeSet::new(),
                created_at: e.recorded_at,
                updated_at: e.recorded_at,
                version: e.sequence as i64,
            })
        };
        match (row, event) {
            (
                None,
                TenantEvent::SignupRequested {
                    name,
                    slug,
                    contact_email,
                },
            ) => opened(name, slug, contact_email, "pending"),
            (
                None,
                TenantEvent::Created {
                    name,
                    slug,
                    contact_email,
                },
            ) => opened(name, slug, contact_email, "active"),
            (None, _) => Err(format!("tenant row {} is missing", e.aggregate_id)),
            (Some(mut row), event) => {
                row.change(event)?;
                row.updated_at = e.recorded_at;
                row.version = e.sequence as i64;
                Ok(row)
            }
        }
    }

    /// Applies an event to an existing row's columns (not its time and version).
    fn change(&mut self, event: TenantEvent) -> Result<(), String> {
        match event {
            TenantEvent::SignupRequested { .. } | TenantEvent::Created { .. } => {
                return Err("a tenant cannot be opened twice".into())
            }
            TenantEvent::Approved {} | TenantEvent::Reactivated {} => {
                self.status = "active".into();
                self.suspension_reason = None;
            }
            TenantEvent::Rejected { reason } => {
                self.status = "rejected".into();
                self.rejection_reason = Some(reason);
            }
            TenantEvent::Suspended { reason } => {
                self.status = "suspended".into();
                self.suspension_reason = Some(reason);
            }
            TenantEvent::Renamed { name } => self.name = name,
            TenantEvent::PreferencesUpdated { preferences } => self.preferences = preferences,
            TenantEvent::DepartmentAdded { name } => {
                self.departments.insert(name);
            }
            TenantEvent::DepartmentRemoved { name } => {
                self.departments.remove(&name);
            }
            TenantEvent::LogoUploaded {
                object_key,
                content_type,
                size_bytes,
                sha256,
            } => {
                self.logo = Some(serde_json::json!({
                    "object_key": object_key,
                    "content_type": content_type,
                    "size_bytes": size_bytes,
                    "sha256": sha256,
                }));
            }
        }
        Ok(())
    }
}

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
        self.apply_all(conn, target, std::slice::from_ref(e)).await
    }

    async fn apply_all(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        events: &[Envelope],
    ) -> Result<(), ProjectionError> {
        let table = target.table("tenants");
        let mut decoded = Vec::with_capacity(events.len());
        for e in events {
            let undecodable = |reason: String| ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason,
            };
            let event: TenantEvent = serde_json::from_value(e.payload.clone())
                .map_err(|err| undecodable(err.to_string()))?;
            let id =
                Uuid::parse_str(&e.aggregate_id).map_err(|err| undecodable(err.to_string()))?;
            decoded.push((id, e, event));
        }
        let mut ids: Vec<Uuid> = decoded.iter().map(|(id, _, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        let found: Vec<sqlx::types::Json<TenantRow>> = sqlx::query_scalar(&format!(
            "SELECT to_jsonb(t) FROM (SELECT {COLUMNS} FROM {table} WHERE id = ANY($1)) t"
        ))
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut rows: HashMap<Uuid, TenantRow> =
            found.into_iter().map(|row| (row.0.id, row.0)).collect();
        for (id, e, event) in decoded {
            let next = TenantRow::apply(rows.remove(&id), e, event).map_err(|reason| {
                ProjectionError::Undecodable {
                    event_id: e.event_id(),
                    reason,
                }
            })?;
            rows.insert(id, next);
        }
        let rows: Vec<TenantRow> = rows.into_values().collect();
        let updates = COLUMNS
            .split(", ")
            .filter(|c| *c != "id")
            .map(|c| format!("{c} = EXCLUDED.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!(
            "INSERT INTO {table} ({COLUMNS})
             SELECT {COLUMNS} FROM jsonb_populate_recordset(NULL::{table}, $1)
             ON CONFLICT (id) DO UPDATE SET {updates}"
        ))
        .bind(sqlx::types::Json(rows))
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The tenants context: its read model.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        vec![std::sync::Arc::new(TenantsProjection)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(sequence: u64, event: &TenantEvent) -> Envelope {
        let id = "0190a4c6-3c1e-7a00-8000-000000000001";
        Envelope {
            global_position: sequence as i64,
            aggregate_type: AGGREGATE_TYPE.into(),
            aggregate_id: id.into(),
            sequence,
            event_type: "x".into(),
            event_version: "1".into(),
            payload: serde_json::to_value(event).expect("event encodes"),
            metadata: std::collections::BTreeMap::from([(
                events::envelope::keys::TENANT_ID.to_owned(),
                id.to_owned(),
            )]),
            recorded_at: DateTime::from_timestamp(1_700_000_000 + sequence as i64, 0)
                .expect("valid time"),
        }
    }

    fn fold(events: &[TenantEvent]) -> Result<TenantRow, String> {
        let mut row = None;
        for (i, event) in events.iter().enumerate() {
            let e = envelope(i as u64 + 1, event);
            row = Some(TenantRow::apply(row, &e, event.clone())?);
        }
        row.ok_or_else(|| "no events".into())
    }

    fn signup() -> TenantEvent {
        TenantEvent::SignupRequested {
            name: "Acme".into(),
            slug: "acme".into(),
            contact_email: "ops@acme.test".into(),
        }
    }

    #[test]
    fn a_signup_is_pending_until_approved() {
        let row = fold(&[signup()]).expect("folds");
        assert_eq!(row.status, "pending");
        assert_eq!(row.version, 1);
        let row = fold(&[signup(), TenantEvent::Approved {}]).expect("folds");
        assert_eq!(row.status, "active");
        assert_eq!(row.version, 2);
        assert_eq!(
            row.created_at + chrono::Duration::seconds(1),
            row.updated_at
        );
    }

    #[test]
    fn reactivation_clears_the_suspension_reason_but_not_the_rejection_history() {
        let row = fold(&[
            signup(),
            TenantEvent::Approved {},
            TenantEvent::Suspended {
                reason: "unpaid".into(),
            },
        ])
        .expect("folds");
        assert_eq!(
            (row.status.as_str(), row.suspension_reason.as_deref()),
            ("suspended", Some("unpaid"))
        );
        let row = fold(&[
            signup(),
            TenantEvent::Approved {},
            TenantEvent::Suspended {
                reason: "unpaid".into(),
            },
            TenantEvent::Reactivated {},
        ])
        .expect("folds");
        assert_eq!(
            (row.status.as_str(), row.suspension_reason),
            ("active", None)
        );
    }

    #[test]
    fn departments_stay_sorted_and_unique() {
        let add = |name: &str| TenantEvent::DepartmentAdded { name: name.into() };
        let row = fold(&[
            signup(),
            add("sales"),
            add("Support"),
            add("sales"),
            add("billing"),
            TenantEvent::DepartmentRemoved {
                name: "billing".into(),
            },
        ])
        .expect("folds");
        assert_eq!(
            row.departments.into_iter().collect::<Vec<_>>(),
            ["Support", "sales"]
        );
    }

    #[test]
    fn a_second_opening_or_a_change_before_opening_is_refused() {
        assert_eq!(
            fold(&[signup(), signup()]),
            Err("a tenant cannot be opened twice".into())
        );
        assert!(fold(&[TenantEvent::Approved {}])
            .expect_err("no row yet")
            .contains("is missing"));
    }
}
