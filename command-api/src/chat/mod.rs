//! The chat bounded context: threads, their messages, read receipts and scheduled messages.

/// The thread aggregate and its rules.
pub mod aggregate;
/// Commands on a thread.
pub mod commands;
/// HTTP routes under `/v1/chat`.
pub mod http;
/// The application layer: callers, tenants of thread commands, ids of new messages.
pub mod service;
/// What the aggregate needs from outside (agents, departments, phone users).
pub mod services;
/// Value objects: texts, tags, attachments.
pub mod values;

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

use std::sync::Arc;

use crate::context::{BoundedContext, CreatedItem, Setup};
use crate::store::CommandBus;

/// What the chat context holds.
pub struct Context {
    /// Thread commands.
    pub threads: Arc<CommandBus<aggregate::Thread>>,
}

impl BoundedContext for Context {
    type Settings = Settings;

    async fn build(setup: &Setup<'_>, _: &Self::Settings) -> Result<Self, crate::StartError> {
        Ok(Self {
            threads: setup.bus(Arc::new(services::PgDirectory {
                pool: setup.pool.clone(),
                keyring: setup.keyring.clone(),
            }) as services::ChatServices),
        })
    }

    fn routes() -> utoipa_axum::router::OpenApiRouter<crate::AppState> {
        http::router()
    }

    fn locations() -> &'static [(&'static str, &'static str)] {
        &[(events::chat::THREAD, "/v1/chat/threads")]
    }

    fn created_items() -> &'static [CreatedItem] {
        &[
            CreatedItem {
                aggregate_type: events::chat::THREAD,
                event_type: "MessageSent",
                id_field: "message_id",
            },
            CreatedItem {
                aggregate_type: events::chat::THREAD,
                event_type: "MessageScheduled",
                id_field: "scheduled_id",
            },
        ]
    }

    fn aggregates() -> &'static [crate::snapshots::Checked] {
        const ALL: &[crate::snapshots::Checked] =
            &[crate::snapshots::checked::<aggregate::Thread>()];
        ALL
    }
}
