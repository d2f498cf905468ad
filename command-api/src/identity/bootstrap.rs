//! The first super admin: `command-api admin create --email … --password-stdin`, or
//! `ADMIN_BOOTSTRAP_EMAIL` / `ADMIN_BOOTSTRAP_PASSWORD` on start.

use events::access::Role;
use events::envelope::ActorKind;
use events::identity::PLATFORM_TENANT;
use events::Metadata;
use sqlx::PgPool;

use super::aggregate::{AdminUser, AdminUserCommand};
use crate::store::CommandBus;

/// What bootstrapping did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrapped {
    /// Created the super admin with this id.
    Created(String),
    /// An admin user with this e-mail already existed; nothing changed.
    Existed(String),
}

/// Creates a platform super admin with `email` unless an admin user has it already.
pub async fn ensure_super_admin(
    pool: &PgPool,
    admins: &CommandBus<AdminUser>,
    email: &str,
    password: &str,
) -> Result<Bootstrapped, String> {
    let normalised = crate::values::Email::lookup_form(email);
    let existing: Option<String> =
        sqlx::query_scalar("SELECT user_id FROM admin_emails WHERE email = $1")
            .bind(&normalised)
            .fetch_optional(pool)
            .await
            .map_err(|e| e.to_string())?;
    if let Some(id) = existing {
        if admins.load(&id).await.map_err(|e| e.to_string())?.exists() {
            return Ok(Bootstrapped::Existed(id));
        }
    }
    let id = uuid::Uuid::now_v7().to_string();
    let request = events::envelope::new_id();
    let metadata = Metadata {
        tenant_id: PLATFORM_TENANT.to_owned(),
        actor_id: "bootstrap".to_owned(),
        actor_kind: ActorKind::System,
        correlation_id: request.clone(),
        causation_id: request.clone(),
        request_id: request,
    };
    let command = AdminUserCommand::Create {
        user_id: id.clone(),
        email: normalised,
        password: password.to_owned(),
        tenant_id: None,
        role: Role::SuperAdmin,
        department: None,
    };
    admins
        .execute(&id, Some(0), command, &metadata)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(user_id = %id, "bootstrap super admin created");
    Ok(Bootstrapped::Created(id))
}
