//! A committed event as it travels: read from the event store by the relay, published to
//! NATS as JSON, and read back by projectors (from NATS, or from the store to fill a gap or
//! rebuild). The payload stays raw JSON here; each projection decodes the aggregate it knows.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Metadata keys every event carries (the store keeps them in the `metadata` jsonb column).
pub mod keys {
    /// The tenant the event belongs to; subjects and read-model rows are scoped by it.
    pub const TENANT_ID: &str = "tenant_id";
    /// Who caused the event: a user id, `anonymous`, or a system component name.
    pub const ACTOR_ID: &str = "actor_id";
    /// What kind of actor: see [`super::ActorKind`].
    pub const ACTOR_KIND: &str = "actor_kind";
    /// Shared by every event and message that one original request led to.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The id of the request or event that directly caused this one.
    pub const CAUSATION_ID: &str = "causation_id";
    /// The HTTP request that appended the event.
    pub const REQUEST_ID: &str = "request_id";
}

/// Who acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    /// A signed-in admin user (super admin, tenant admin or agent).
    Admin,
    /// A chatbot user signed in by phone.
    Phone,
    /// Nobody signed in (a public signup, a webhook before it is attributed).
    Anonymous,
    /// A component of the platform acting on its own (a scheduler, a process manager).
    System,
}

impl ActorKind {
    /// The wire name, as stored in metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            ActorKind::Admin => "admin",
            ActorKind::Phone => "phone",
            ActorKind::Anonymous => "anonymous",
            ActorKind::System => "system",
        }
    }
}

/// The metadata of one command's events, built at the edge from the request and the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// Tenant the events belong to.
    pub tenant_id: String,
    /// Who acted.
    pub actor_id: String,
    /// What kind of actor.
    pub actor_kind: ActorKind,
    /// Shared by everything one original request caused.
    pub correlation_id: String,
    /// The direct cause: the request id for HTTP commands, an event id for reactions.
    pub causation_id: String,
    /// The HTTP request that appended the events.
    pub request_id: String,
}

impl Metadata {
    /// The map form cqrs-es stores.
    pub fn to_map(&self) -> HashMap<String, String> {
        HashMap::from([
            (keys::TENANT_ID.to_owned(), self.tenant_id.clone()),
            (keys::ACTOR_ID.to_owned(), self.actor_id.clone()),
            (
                keys::ACTOR_KIND.to_owned(),
                self.actor_kind.as_str().to_owned(),
            ),
            (keys::CORRELATION_ID.to_owned(), self.correlation_id.clone()),
            (keys::CAUSATION_ID.to_owned(), self.causation_id.clone()),
            (keys::REQUEST_ID.to_owned(), self.request_id.clone()),
        ])
    }
}

/// A committed event with its position in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Position in the whole store (identity column); unique, but commit order is
    /// `(transaction_id, global_position)`, not this alone.
    pub global_position: i64,
    /// The aggregate type, e.g. `tenant`.
    pub aggregate_type: String,
    /// The aggregate instance.
    pub aggregate_id: String,
    /// 1-based position inside the aggregate's stream.
    pub sequence: u64,
    /// The event type, e.g. `Renamed`.
    pub event_type: String,
    /// The payload schema version.
    pub event_version: String,
    /// The event body as stored.
    pub payload: serde_json::Value,
    /// The metadata as stored (see [`keys`]).
    pub metadata: BTreeMap<String, String>,
    /// When the appending transaction started.
    pub recorded_at: DateTime<Utc>,
}

impl Envelope {
    /// The tenant scope of the event; empty if an event was ever stored without one.
    pub fn tenant_id(&self) -> &str {
        self.metadata
            .get(keys::TENANT_ID)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// A stable id for the event, derived from its stream position, usable as a causation id.
    pub fn event_id(&self) -> String {
        crate::subject::message_id(&self.aggregate_type, &self.aggregate_id, self.sequence)
    }
}

/// SQL that builds an [`Envelope`] as `jsonb` from a row of `events`, so every reader of the
/// store (the relay, gap filling, rebuilds) decodes rows the same way:
/// `SELECT {ENVELOPE_SQL} AS envelope FROM events …`, then `serde_json::from_value`.
pub const ENVELOPE_SQL: &str = "jsonb_build_object(\
     'global_position', global_position, 'aggregate_type', aggregate_type, \
     'aggregate_id', aggregate_id, 'sequence', sequence, 'event_type', event_type, \
     'event_version', event_version, 'payload', payload, 'metadata', metadata, \
     'recorded_at', recorded_at)";

/// A fresh request or correlation id.
pub fn new_id() -> String {
    Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_map_carries_every_key() {
        let m = Metadata {
            tenant_id: "t".into(),
            actor_id: "u".into(),
            actor_kind: ActorKind::Admin,
            correlation_id: "c".into(),
            causation_id: "r".into(),
            request_id: "r".into(),
        }
        .to_map();
        for key in [
            keys::TENANT_ID,
            keys::ACTOR_ID,
            keys::ACTOR_KIND,
            keys::CORRELATION_ID,
            keys::CAUSATION_ID,
            keys::REQUEST_ID,
        ] {
            assert!(m.contains_key(key), "{key} missing");
        }
        assert_eq!(m[keys::ACTOR_KIND], "admin");
    }
}
