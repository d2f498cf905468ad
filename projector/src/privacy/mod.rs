//! Privacy (docs/privacy.md): when a data subject is erased, the read models that hold their
//! data in clear are redacted in place.
//!
//! The erasure's transaction destroyed the subject's keys, so every event sealed for them
//! reads `[erased]` from then on — a rebuild gives redacted read models by itself. What the
//! read models wrote in clear before the erasure is overwritten here, by each context's own
//! redaction (`chat::redact_subject`, `whatsapp::redact_subject`, `telephony::redact_subject`,
//! `audio::redact_subject`, `identity::redact_subject`), in the checkpoint's
//! transaction. It always writes the
//! live tables: it owns none, and a rebuild of another projection redacts by itself.

use async_trait::async_trait;
use events::privacy::{SubjectEvent, DATA_SUBJECT};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{Projection, ProjectionError, Target};

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// Redacts the read models of each erased subject.
pub struct RedactionProjection;

#[async_trait]
impl Projection for RedactionProjection {
    fn name(&self) -> &'static str {
        "privacy-redaction"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[DATA_SUBJECT]
    }

    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        _target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let event: SubjectEvent = serde_json::from_value(e.payload.clone()).map_err(|err| {
            ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: err.to_string(),
            }
        })?;
        let SubjectEvent::Erased {
            tenant_id, kind, ..
        } = event;
        let Ok(subject) = uuid::Uuid::try_parse(&e.aggregate_id) else {
            return Err(ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: "a data subject's id is a UUID".into(),
            });
        };
        crate::chat::redact_subject(conn, subject, &tenant_id, &kind).await?;
        crate::whatsapp::redact_subject(conn, subject, &tenant_id, &kind).await?;
        crate::telephony::redact_subject(conn, subject, &tenant_id, &kind).await?;
        crate::audio::redact_subject(conn, subject).await?;
        crate::identity::redact_subject(conn, subject, &kind).await
    }
}

/// The privacy context: the redaction of erased subjects.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        vec![std::sync::Arc::new(RedactionProjection)]
    }
}
