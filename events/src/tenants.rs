//! Events of the tenants bounded context (aggregate type `tenant`).
//!
//! Version `1.0` of every event. A change that removes or retypes a field gets a new version
//! and an upcaster; adding an optional field does not. docs/events.md lists every field.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

/// The aggregate type name in the store, subjects and audit URLs.
pub const AGGREGATE_TYPE: &str = "tenant";

/// Something that happened to a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TenantEvent {
    /// Someone asked, without signing in, for a tenant to be opened; it waits for approval.
    SignupRequested {
        /// Display name, 2–80 characters.
        name: String,
        /// URL-safe unique handle.
        slug: String,
        /// Where to answer the request.
        contact_email: String,
    },
    /// A super admin accepted a signup request; the tenant is active.
    Approved {},
    /// A super admin turned a signup request down.
    Rejected {
        /// Shown to the requester.
        reason: String,
    },
    /// A super admin opened a tenant directly; it is active at once.
    Created {
        /// Display name, 2–80 characters.
        name: String,
        /// URL-safe unique handle.
        slug: String,
        /// Who to contact about the tenant.
        contact_email: String,
    },
    /// The display name changed.
    Renamed {
        /// The new display name.
        name: String,
    },
    /// The tenant's preferences (a JSON object of at most 16 KiB) were replaced.
    PreferencesUpdated {
        /// The whole new preferences object.
        preferences: serde_json::Value,
    },
    /// The tenant was suspended; nothing changes until it is reactivated.
    Suspended {
        /// Why, for the audit trail.
        reason: String,
    },
    /// A suspended tenant is active again.
    Reactivated {},
    /// A department was added to the tenant (admin users are placed in departments).
    DepartmentAdded {
        /// Its name, unique within the tenant.
        name: String,
    },
    /// A department was removed.
    DepartmentRemoved {
        /// Its name.
        name: String,
    },
    /// A new logo was stored.
    LogoUploaded {
        /// Key of the object in the blob store.
        object_key: String,
        /// `image/png`, `image/jpeg` or `image/webp`.
        content_type: String,
        /// Size of the stored file.
        size_bytes: u64,
        /// Hex SHA-256 of the file, for caching and integrity.
        sha256: String,
    },
}

impl DomainEvent for TenantEvent {
    fn event_type(&self) -> String {
        match self {
            TenantEvent::SignupRequested { .. } => "SignupRequested",
            TenantEvent::Approved { .. } => "Approved",
            TenantEvent::Rejected { .. } => "Rejected",
            TenantEvent::Created { .. } => "Created",
            TenantEvent::Renamed { .. } => "Renamed",
            TenantEvent::PreferencesUpdated { .. } => "PreferencesUpdated",
            TenantEvent::Suspended { .. } => "Suspended",
            TenantEvent::Reactivated { .. } => "Reactivated",
            TenantEvent::LogoUploaded { .. } => "LogoUploaded",
            TenantEvent::DepartmentAdded { .. } => "DepartmentAdded",
            TenantEvent::DepartmentRemoved { .. } => "DepartmentRemoved",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_tagged_by_event_type() {
        let event = TenantEvent::Renamed {
            name: "Acme".into(),
        };
        let json = serde_json::to_value(&event).expect("serializes");
        assert_eq!(json, serde_json::json!({"Renamed": {"name": "Acme"}}));
        let back: TenantEvent = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, event);
        assert_eq!(event.event_type(), "Renamed");
    }
}
