//! The eviction worker: ends the realtime connections of revoked access. A token that stops
//! working is refused by both APIs at once, but a Soketi connection authorised before keeps
//! its subscriptions; so when a session ends, a user is deactivated, demoted or has their
//! password changed, or a tenant is suspended, this worker asks Soketi to terminate the
//! connections signed in as those sessions and users (`POST
//! /apps/{app}/users/{user}/terminate_connections`, the Pusher HTTP API's call). Connections
//! are signed in as [`ConnectionUser`]s by query-api's `/realtime/user-auth`.
//!
//! A side-effect worker: its checkpoints move only after Soketi answered, so a Soketi outage
//! delays an eviction and loses none; terminating twice is harmless.

use async_trait::async_trait;
use events::identity::{AdminUserEvent, ADMIN_USER};
use events::realtime::ConnectionUser;
use events::tenants::{TenantEvent, AGGREGATE_TYPE as TENANT};
use events::Envelope;
use sqlx::{PgConnection, PgPool};

use super::SoketiApp;
use crate::projection::{Effect, Projection, ProjectionError, Target};

/// Sessions that may still hold an access token: a token is issued with a row of its
/// family (a login or a refresh), and lives at most a day (command-api refuses a longer
/// `AUTH_TOKEN_EXPIRES_IN`). Older sessions have no connection worth ending, however many
/// a user has had.
const LIVE: &str = "created_at > now() - interval '25 hours'";

/// Terminations sent to Soketi at once.
const PARALLEL: usize = 16;

/// The eviction worker.
pub struct Eviction {
    /// Soketi's HTTP API.
    app: SoketiApp,
    /// HTTP client (timeouts set).
    http: reqwest::Client,
    /// The command side's sessions and users (which sessions a user or a tenant has) and the
    /// event store (a tenant's chatbot users).
    pool: PgPool,
}

impl Eviction {
    /// A worker terminating connections on `app`.
    pub fn new(app: SoketiApp, pool: PgPool) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self { app, http, pool }
    }

    /// The connections an event ends.
    async fn evicted(&self, envelope: &Envelope) -> Result<Vec<ConnectionUser>, ProjectionError> {
        let undecodable = |err: serde_json::Error| ProjectionError::Undecodable {
            event_id: envelope.event_id(),
            reason: err.to_string(),
        };
        let user = envelope.aggregate_id.as_str();
        if envelope.aggregate_type == ADMIN_USER {
            let event: AdminUserEvent =
                serde_json::from_value(envelope.payload.clone()).map_err(undecodable)?;
            return match event {
                AdminUserEvent::SessionRevoked { session_id, .. } => {
                    Ok(vec![ConnectionUser::Session(session_id)])
                }
                // Every session: a role change must be authorised again under the new role.
                AdminUserEvent::Deactivated {} | AdminUserEvent::RoleChanged { .. } => {
                    self.sessions_of(user, false).await
                }
                // The sessions the change ended (the one that made it goes on).
                AdminUserEvent::PasswordChanged { .. } | AdminUserEvent::PasswordReset { .. } => {
                    self.sessions_of(user, true).await
                }
                _ => Ok(vec![]),
            };
        }
        if envelope.aggregate_type == TENANT {
            let event: TenantEvent =
                serde_json::from_value(envelope.payload.clone()).map_err(undecodable)?;
            if matches!(event, TenantEvent::Suspended { .. }) {
                return self.connections_of_tenant(&envelope.aggregate_id).await;
            }
        }
        Ok(vec![])
    }

    /// A user's sessions (only the revoked ones with `revoked_only`).
    async fn sessions_of(
        &self,
        user_id: &str,
        revoked_only: bool,
    ) -> Result<Vec<ConnectionUser>, ProjectionError> {
        let sessions: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT session_id FROM admin_sessions
              WHERE user_id = $1 AND (NOT $2 OR status = 'revoked') AND {LIVE}"
        ))
        .bind(user_id)
        .bind(revoked_only)
        .fetch_all(&self.pool)
        .await
        .map_err(ProjectionError::from)?;
        Ok(sessions.into_iter().map(ConnectionUser::Session).collect())
    }

    /// Every connection of a tenant: its admins' sessions that may still hold a token, and
    /// its chatbot users (every phone user with a verified sign-in there).
    async fn connections_of_tenant(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<ConnectionUser>, ProjectionError> {
        let sessions: Vec<String> = sqlx::query_scalar(&format!(
            "SELECT DISTINCT s.session_id FROM admin_sessions s JOIN admin_emails e USING (user_id)
              WHERE e.tenant_id = $1 AND s.{LIVE}"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(ProjectionError::from)?;
        // From the store, not a read model: a user who signed in a moment before the
        // suspension is in it whatever any projection's lag (migration 0051 indexes this).
        let phones: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT payload->'CodeVerified'->>'user_id' FROM events
              WHERE aggregate_type = 'phone_login' AND event_type = 'CodeVerified'
                AND metadata->>'tenant_id' = $1",
        )
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await
        .map_err(ProjectionError::from)?;
        Ok(sessions
            .into_iter()
            .map(ConnectionUser::Session)
            .chain(phones.into_iter().map(ConnectionUser::Phone))
            .collect())
    }
}

#[async_trait]
impl Projection for Eviction {
    fn name(&self) -> &'static str {
        "realtime-eviction"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[ADMIN_USER, TENANT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    fn effect(&self) -> Option<&dyn Effect> {
        Some(self)
    }

    /// Nothing to write: the effect happened before; only the checkpoints move.
    async fn apply(
        &self,
        _conn: &mut PgConnection,
        _target: &Target,
        _event: &Envelope,
    ) -> Result<(), ProjectionError> {
        Ok(())
    }
}

#[async_trait]
impl Effect for Eviction {
    async fn perform(&self, events: &[Envelope]) -> Result<(), ProjectionError> {
        let mut users = Vec::new();
        for envelope in events {
            users.extend(self.evicted(envelope).await?);
        }
        users.dedup();
        for chunk in users.chunks(PARALLEL) {
            let calls = chunk.iter().map(|user| {
                let path = format!(
                    "/apps/{}/users/{}/terminate_connections",
                    self.app.app_id,
                    user.id()
                );
                async move {
                    self.app
                        .post(&self.http, &path, &serde_json::json!({}))
                        .await
                }
            });
            for outcome in futures::future::join_all(calls).await {
                outcome?;
            }
        }
        Ok(())
    }
}
