//! What can be asked of a tenant. Fields are raw: the aggregate parses them, so every rule
//! is decided (and tested) in one place.

/// A command on one tenant aggregate.
#[derive(Debug, Clone, PartialEq)]
pub enum TenantCommand {
    /// Public signup: opens the tenant as `pending`.
    RequestSignup {
        /// The new tenant's id (also the id of its aggregate).
        tenant_id: String,
        /// Display name.
        name: String,
        /// Requested slug.
        slug: String,
        /// Who to answer.
        contact_email: String,
    },
    /// A super admin opens the tenant directly, `active` at once.
    Create {
        /// The new tenant's id (also the id of its aggregate).
        tenant_id: String,
        /// Display name.
        name: String,
        /// Slug.
        slug: String,
        /// Contact.
        contact_email: String,
    },
    /// Accept a pending signup.
    Approve,
    /// Turn a pending signup down.
    Reject {
        /// Why.
        reason: String,
    },
    /// Change the display name.
    Rename {
        /// New name.
        name: String,
    },
    /// Replace the preferences object.
    UpdatePreferences {
        /// The whole new object.
        preferences: serde_json::Value,
    },
    /// Stop every change until reactivated.
    Suspend {
        /// Why.
        reason: String,
    },
    /// Lift a suspension.
    Reactivate,
    /// Add a department.
    AddDepartment {
        /// Its name.
        name: String,
    },
    /// Remove a department.
    RemoveDepartment {
        /// The tenant (the aggregate does not know its own id).
        tenant_id: String,
        /// Its name.
        name: String,
    },
    /// Record a logo already written to the blob store.
    RecordLogo {
        /// Blob key.
        object_key: String,
        /// Sniffed media type.
        content_type: String,
        /// Size in bytes.
        size_bytes: u64,
        /// Hex SHA-256.
        sha256: String,
    },
}
