//! What the tenant aggregate needs from outside its own stream.

use async_trait::async_trait;
use sqlx::PgPool;

/// Slugs are unique across all tenants, which no single aggregate can see, so the aggregate
/// asks this registry to reserve one before it decides.
#[async_trait]
pub trait SlugRegistry: Send + Sync {
    /// Reserves `slug` for `tenant_id`. `Ok(true)` if it is now (or already was) theirs,
    /// `Ok(false)` if another tenant holds it.
    async fn reserve(&self, slug: &str, tenant_id: &str) -> Result<bool, String>;
}

/// Who is in a department: admin users, which the tenant's stream does not list.
#[async_trait]
pub trait DepartmentMembers: Send + Sync {
    /// How many admin users of `tenant_id` are in `department` (by name, whatever its case).
    async fn count(&self, tenant_id: &str, department: &str) -> Result<i64, String>;
}

/// The services of the tenant aggregate.
#[derive(Clone)]
pub struct TenantServices {
    /// Cross-tenant slug uniqueness.
    pub slugs: std::sync::Arc<dyn SlugRegistry>,
    /// Department membership.
    pub members: std::sync::Arc<dyn DepartmentMembers>,
}

/// Membership from `admin_roles` (migrations 0040 and 0043: kept in the transaction of each
/// user's `Created` and `DepartmentChanged`).
pub struct PgDepartmentMembers {
    /// The command-side pool.
    pub pool: PgPool,
}

#[async_trait]
impl DepartmentMembers for PgDepartmentMembers {
    async fn count(&self, tenant_id: &str, department: &str) -> Result<i64, String> {
        sqlx::query_scalar(
            "SELECT count(*) FROM admin_roles
              WHERE tenant_id = $1 AND lower(department) = lower($2)",
        )
        .bind(tenant_id)
        .bind(department)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }
}

/// Department members for aggregate tests: `(tenant, department)` → count.
#[cfg(test)]
#[derive(Default)]
pub struct MemoryMembers(pub std::sync::Mutex<std::collections::HashMap<(String, String), i64>>);

#[cfg(test)]
#[async_trait]
impl DepartmentMembers for MemoryMembers {
    async fn count(&self, tenant_id: &str, department: &str) -> Result<i64, String> {
        let map = self.0.lock().map_err(|e| e.to_string())?;
        Ok(map
            .get(&(tenant_id.to_owned(), department.to_lowercase()))
            .copied()
            .unwrap_or(0))
    }
}

/// Reservations in the `tenant_slugs` table.
///
/// A reservation is made just before the tenant's first event is appended. If that append
/// then fails (a store error, or another request opened the same tenant id first with
/// another slug), the reservation would block the slug forever; so a reservation more than
/// five minutes old whose tenant was not opened with that slug may be taken over. A
/// rejected sign-up releases its slug (anyone could otherwise squat any name by asking for
/// it); a suspended tenant keeps its own. The rejected tenant's events still name the slug,
/// with its own tenant id, so the history stays unambiguous.
pub struct PgSlugRegistry {
    /// The command-side pool.
    pub pool: PgPool,
}

#[async_trait]
impl SlugRegistry for PgSlugRegistry {
    async fn reserve(&self, slug: &str, tenant_id: &str) -> Result<bool, String> {
        let row: Option<(String,)> = sqlx::query_as(
            "INSERT INTO tenant_slugs (slug, tenant_id) VALUES ($1, $2)
             ON CONFLICT (slug) DO UPDATE
                SET tenant_id = EXCLUDED.tenant_id, reserved_at = now()
              WHERE tenant_slugs.tenant_id = EXCLUDED.tenant_id
                 OR (tenant_slugs.reserved_at < now() - interval '5 minutes'
                     AND NOT EXISTS (SELECT 1 FROM events e
                                      WHERE e.aggregate_type = 'tenant'
                                        AND e.aggregate_id = tenant_slugs.tenant_id
                                        AND e.sequence = 1
                                        AND coalesce(e.payload->'Created'->>'slug',
                                                     e.payload->'SignupRequested'->>'slug')
                                            = tenant_slugs.slug))
                 OR EXISTS (SELECT 1 FROM events e
                             WHERE e.aggregate_type = 'tenant'
                               AND e.aggregate_id = tenant_slugs.tenant_id
                               AND e.event_type = 'Rejected')
             RETURNING tenant_id",
        )
        .bind(slug)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(row.is_some())
    }
}

/// An in-memory registry for aggregate tests.
#[cfg(test)]
#[derive(Default)]
pub struct MemorySlugRegistry(pub std::sync::Mutex<std::collections::HashMap<String, String>>);

#[cfg(test)]
#[async_trait]
impl SlugRegistry for MemorySlugRegistry {
    async fn reserve(&self, slug: &str, tenant_id: &str) -> Result<bool, String> {
        let mut map = self.0.lock().map_err(|e| e.to_string())?;
        let owner = map
            .entry(slug.to_owned())
            .or_insert_with(|| tenant_id.to_owned());
        Ok(owner == tenant_id)
    }
}
