//! Events of privacy (docs/privacy.md): what the platform did about a data subject (aggregate
//! type `data_subject`, id = the subject's UUID). They carry no personal data: the subject is
//! named by its id only.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type of data subjects.
pub const DATA_SUBJECT: &str = "data_subject";

/// Something the platform did about a data subject.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum SubjectEvent {
    /// The subject was erased: their data keys were destroyed in this event's transaction,
    /// so every field sealed for them reads `[erased]` from now on, and read models redact
    /// what they hold of them.
    Erased {
        /// The tenant whose subject it was.
        tenant_id: String,
        /// What kind of person (`phone_user`, `contact`, `admin_user`, `customer`).
        kind: String,
        /// Who asked (an admin user's id).
        by: String,
        /// When.
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SubjectEvent {
    fn event_type(&self) -> String {
        match self {
            SubjectEvent::Erased { .. } => "Erased",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}
