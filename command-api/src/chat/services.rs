//! What the thread aggregate needs from outside its own stream: whether an agent, a
//! department or a phone user exists in the tenant. These are look-ups in other contexts'
//! tables, read at the moment of the command.

use async_trait::async_trait;
use sqlx::PgPool;

/// Who and what exists in a tenant.
#[async_trait]
pub trait Directory: Send + Sync {
    /// True when `user_id` is an admin user (any role) of `tenant_id`.
    async fn is_staff(&self, tenant_id: &str, user_id: &str) -> Result<bool, String>;
    /// True when the tenant has the department.
    async fn has_department(&self, tenant_id: &str, name: &str) -> Result<bool, String>;
    /// True when `user_id` is a phone user of `tenant_id`.
    async fn is_phone_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, String>;
}

/// The services of the thread aggregate.
pub type ChatServices = std::sync::Arc<dyn Directory>;

/// Look-ups in PostgreSQL: admin users by their login e-mail reservation (command side, so
/// a user is known the moment it is created), departments in the tenants read model, phone
/// users in `phone_users`.
pub struct PgDirectory {
    /// The command-side pool.
    pub pool: PgPool,
}

#[async_trait]
impl Directory for PgDirectory {
    async fn is_staff(&self, tenant_id: &str, user_id: &str) -> Result<bool, String> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM admin_emails e
                             JOIN events v ON v.aggregate_type = 'admin_user'
                                          AND v.aggregate_id = e.user_id AND v.sequence = 1
                            WHERE e.user_id = $2 AND e.tenant_id = $1)",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    async fn has_department(&self, tenant_id: &str, name: &str) -> Result<bool, String> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM tenants WHERE id::text = $1 AND departments ? $2)",
        )
        .bind(tenant_id)
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    async fn is_phone_user(&self, tenant_id: &str, user_id: &str) -> Result<bool, String> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM phone_users WHERE user_id = $2 AND tenant_id = $1)",
        )
        .bind(tenant_id)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }
}
