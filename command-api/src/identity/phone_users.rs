//! `phone_users`: the command side's record of chatbot users (migration 0007). Their numbers
//! and profiles are personal data kept out of events; the events name the user and, for a
//! profile change, the fields only. Written after the sign-in or the change is decided, read
//! by the phone routes and by the id check of new admin users (and, through
//! `events::chat::lookups`, by chat's check that a customer is a phone user of the tenant).

use events::http::Problem;
use serde::{Deserialize, Serialize};

use crate::AppState;

/// A phone user's profile.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
#[schema(as = PhoneProfile)]
pub struct Profile {
    /// User id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// E.164 number.
    pub phone: String,
    /// Display name.
    pub display_name: Option<String>,
    /// E-mail.
    pub email: Option<String>,
    /// BCP 47 language tag.
    pub locale: Option<String>,
}

/// A profile change as it is kept: per field, `None` not changed, `Some(None)` cleared.
pub struct ProfileUpdate {
    /// Display name.
    pub display_name: Option<Option<String>>,
    /// E-mail.
    pub email: Option<Option<String>>,
    /// BCP 47 language tag.
    pub locale: Option<Option<String>>,
}

/// Records the user `user_id` of `tenant` with its number, once (a later sign-in keeps the
/// row and its profile); false when the user is not a data subject of the tenant, or was
/// erased. The insert holds the subject's row (`data_subjects`, migration 0053) shared: an
/// erasure, which updates that row and then deletes the user's record (migration 0055),
/// either commits first — and nothing is recorded — or waits for this and deletes it.
pub async fn record(
    state: &AppState,
    user_id: &str,
    tenant: &str,
    phone: &str,
) -> Result<bool, Problem> {
    let subject = events::personal::subject_id("phone_user", tenant, user_id);
    let (recorded, known): (bool, bool) = sqlx::query_as(
        "WITH subject AS (
             SELECT subject_id FROM data_subjects
              WHERE subject_id = $4 AND tenant_id = $2 AND erased_at IS NULL
                FOR SHARE),
         made AS (
             INSERT INTO phone_users (user_id, tenant_id, phone)
             SELECT $1, $2, $3 FROM subject
             ON CONFLICT (user_id) DO NOTHING
             RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM made), EXISTS (SELECT 1 FROM subject)",
    )
    .bind(user_id)
    .bind(tenant)
    .bind(phone)
    .bind(subject)
    .fetch_one(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(recorded || known)
}

/// The number of the user `user_id` of `tenant`, if there is such a user.
pub async fn phone_of(
    state: &AppState,
    user_id: &str,
    tenant: &str,
) -> Result<Option<String>, Problem> {
    sqlx::query_scalar("SELECT phone FROM phone_users WHERE user_id = $1 AND tenant_id = $2")
        .bind(user_id)
        .bind(tenant)
        .fetch_optional(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))
}

/// Whether `id` is a phone user's id (at any tenant).
pub async fn exists(state: &AppState, id: &str) -> Result<bool, Problem> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM phone_users WHERE user_id = $1)")
        .bind(id)
        .fetch_one(&state.pool)
        .await
        .map_err(|e| Problem::unavailable(&e))
}

/// The profile of `user_id`; 404 when there is no such user.
pub async fn profile(state: &AppState, user_id: &str) -> Result<Profile, Problem> {
    sqlx::query_as(
        "SELECT user_id AS id, tenant_id, phone, display_name, email, locale
           FROM phone_users WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?
    .ok_or_else(|| Problem::not_found("phone user not found"))
}

/// Changes the profile of `user_id`: the fields given, and only those.
pub async fn update(state: &AppState, user_id: &str, change: ProfileUpdate) -> Result<(), Problem> {
    sqlx::query(
        "UPDATE phone_users SET
            display_name = CASE WHEN $2 THEN $3 ELSE display_name END,
            email        = CASE WHEN $4 THEN $5 ELSE email END,
            locale       = CASE WHEN $6 THEN $7 ELSE locale END,
            updated_at   = now()
          WHERE user_id = $1",
    )
    .bind(user_id)
    .bind(change.display_name.is_some())
    .bind(change.display_name.flatten())
    .bind(change.email.is_some())
    .bind(change.email.flatten())
    .bind(change.locale.is_some())
    .bind(change.locale.flatten())
    .execute(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    Ok(())
}
