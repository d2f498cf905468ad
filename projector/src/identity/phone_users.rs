//! `phone_user_directory`: which chatbot (phone) users each tenant has, from their first
//! verified sign-in. Pseudonymous ids only: numbers and profiles stay in the command side's
//! `phone_users`, out of events. Read by query-api: the phone user a WhatsApp contact is.

use async_trait::async_trait;
use events::identity::{PhoneLoginEvent, PHONE_LOGIN};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{Projection, ProjectionError, Target};

/// The phone users of each tenant.
pub struct PhoneUsersProjection;

#[async_trait]
impl Projection for PhoneUsersProjection {
    fn name(&self) -> &'static str {
        "phone_user_directory"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[PHONE_LOGIN]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["phone_user_directory"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let event: PhoneLoginEvent = serde_json::from_value(e.payload.clone()).map_err(|err| {
            ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: err.to_string(),
            }
        })?;
        // A user's first verified sign-in makes them the tenant's; later ones change nothing.
        if let PhoneLoginEvent::CodeVerified { user_id, at } = event {
            let directory = target.table("phone_user_directory");
            sqlx::query(&format!(
                "INSERT INTO {directory} (user_id, tenant_id, first_signed_in_at)
                 VALUES ($1, $2, $3) ON CONFLICT (user_id) DO NOTHING"
            ))
            .bind(user_id)
            .bind(e.tenant_id())
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}
