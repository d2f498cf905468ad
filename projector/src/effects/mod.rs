//! Side-effect workers: projections whose work is a call to another service, performed
//! before their checkpoints move (see [`crate::projection::Effect`]).

use crate::command_client::CommandClient;
use crate::projection::ProjectionError;

/// Provider refunds that named a transaction before any payment was paid with it, processed
/// again when one is.
pub mod references;

/// Open threads taken from agents and departments that went away.
pub mod reassignment;

/// Realtime connections of revoked sessions, users and tenants terminated on Soketi.
pub mod eviction;

/// Chat events to Soketi (Pusher HTTP API) and to core NATS for SSE.
pub mod realtime;

/// Has command-api process received webhook `webhook` again (`POST
/// /v1/webhooks/{id}/replay`, as a platform service). A refusal (the webhook is gone, or
/// pending already) is logged and passed over; command-api being away is an error, so the
/// worker's checkpoint does not move.
pub(crate) async fn replay_webhook(
    client: &CommandClient,
    webhook: &str,
) -> Result<(), ProjectionError> {
    let path = format!("/v1/webhooks/{webhook}/replay");
    match client.post_json(&path, &serde_json::json!({})).await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) if r.status().is_client_error() && r.status().as_u16() != 429 => {
            tracing::warn!(webhook, status = %r.status(), "webhook not replayed");
            Ok(())
        }
        Ok(r) => Err(ProjectionError::Unavailable(format!(
            "command-api answered {}",
            r.status()
        ))),
        Err(e) => Err(ProjectionError::Unavailable(e.to_string())),
    }
}
