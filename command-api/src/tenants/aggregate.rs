//! The tenant aggregate: every rule about a tenant is decided here.

use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::tenants::{TenantEvent, AGGREGATE_TYPE};
use serde::{Deserialize, Serialize};

use super::commands::TenantCommand;
use super::services::TenantServices;
use super::values::{self, Email, PreferencesError, Slug, TenantName};

/// Where a tenant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Signed up, waiting for a super admin.
    Pending,
    /// Approved or created; serving.
    Active,
    /// Signup turned down; nothing more happens to it.
    Rejected,
    /// Stopped by a super admin until reactivated.
    Suspended,
}

/// The state the rules need (also the snapshot form). `serde(default)` lets a snapshot taken
/// before a field was added still load.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Tenant {
    /// `None` until the first event.
    status: Option<Status>,
    /// Current display name.
    name: String,
    /// The slug, fixed at creation.
    slug: String,
    /// Set when the preferences say `{"chatbot": {"enabled": false}}`.
    chatbot_disabled: bool,
    /// Its departments.
    departments: Vec<String>,
}

/// Why a tenant command was refused. Each variant's doc names its HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// 404: the tenant does not exist.
    #[error("tenant not found")]
    NotFound,
    /// 409: a tenant with this id already exists.
    #[error("a tenant with this id already exists")]
    AlreadyExists,
    /// 422: the name is not 2–80 characters.
    #[error("the name must be 2 to 80 characters without control characters")]
    InvalidName,
    /// 422: the slug breaks the slug rule.
    #[error("the slug must be 3 to 63 characters of a-z, 0-9 and single hyphens, starting with a letter")]
    InvalidSlug,
    /// 422: the e-mail is not an address.
    #[error("the contact e-mail is not a valid address")]
    InvalidEmail,
    /// 409: another tenant has the slug.
    #[error("the slug is taken by another tenant")]
    SlugTaken,
    /// 422: approving a tenant that is already approved.
    #[error("the tenant is already approved")]
    AlreadyApproved,
    /// 422: approving or rejecting a tenant that is not pending.
    #[error("only a pending signup can be approved or rejected")]
    NotPending,
    /// 422: the tenant is suspended; only reactivation is allowed.
    #[error("the tenant is suspended; only reactivation is allowed")]
    Suspended,
    /// 422: reactivating a tenant that is not suspended.
    #[error("the tenant is not suspended")]
    NotSuspended,
    /// 422: suspending a tenant that is not active.
    #[error("only an active tenant can be suspended")]
    NotActive,
    /// 422: the tenant's signup was rejected; nothing more can change.
    #[error("the tenant's signup was rejected")]
    Rejected,
    /// 422: the preferences are not a JSON object.
    #[error("preferences must be a JSON object")]
    PreferencesNotObject,
    /// 422: the preferences exceed 16 KiB.
    #[error("preferences must not exceed 16 KiB")]
    PreferencesTooLarge,
    /// 422: the preferences hold a NUL character.
    #[error("preferences must not contain NUL characters")]
    PreferencesInvalid,
    /// 422: the reason is empty, over 500 characters, or holds control characters.
    #[error("the reason must be 1 to 500 characters without control characters")]
    InvalidReason,
    /// 422: the logo is not PNG, JPEG or WebP of at most 2 MiB.
    #[error("the logo must be a PNG, JPEG or WebP image of at most 2 MiB")]
    InvalidLogo,
    /// 422: a department name must be 1–80 characters without control characters.
    #[error("a department name must be 1 to 80 characters without control characters")]
    InvalidDepartment,
    /// 409: the tenant already has this department.
    #[error("the tenant already has this department")]
    DepartmentExists,
    /// 404: the tenant has no such department.
    #[error("the tenant has no such department")]
    NoSuchDepartment,
    /// 422: users are still in the department (how many): move them first.
    #[error("{0} user(s) are still in this department: move them to another one (or none) first")]
    DepartmentInUse(i64),
    /// 503: the slug registry or the membership could not be reached.
    #[error("tenant services unavailable: {0}")]
    Unavailable(String),
}

impl Tenant {
    /// True once the tenant exists.
    pub fn exists(&self) -> bool {
        self.status.is_some()
    }

    /// True if the tenant has this department.
    pub fn has_department(&self, name: &str) -> bool {
        self.department(name).is_some()
    }

    /// Department `name` as the tenant spells it: names compare trimmed and without regard
    /// to case ("sales" is "Sales").
    pub fn department(&self, name: &str) -> Option<&str> {
        let wanted = name.trim().to_lowercase();
        self.departments
            .iter()
            .find(|d| d.to_lowercase() == wanted)
            .map(String::as_str)
    }

    /// True while the signup awaits a super admin's decision.
    pub fn is_pending(&self) -> bool {
        self.status == Some(Status::Pending)
    }

    /// True once the signup was turned down: nothing more happens to it, and it gets no
    /// users.
    pub fn is_rejected(&self) -> bool {
        self.status == Some(Status::Rejected)
    }

    /// True when its chatbot users may sign in by phone: approved, not suspended, and the
    /// chatbot not disabled in the preferences.
    pub fn accepts_phone_logins(&self) -> bool {
        self.status == Some(Status::Active) && !self.chatbot_disabled
    }

    /// Refuses changes unless the tenant exists and is pending or active.
    fn changeable(&self) -> Result<(), TenantError> {
        match self.status {
            None => Err(TenantError::NotFound),
            Some(Status::Suspended) => Err(TenantError::Suspended),
            Some(Status::Rejected) => Err(TenantError::Rejected),
            Some(Status::Pending | Status::Active) => Ok(()),
        }
    }

    /// The common checks of the two ways a tenant begins.
    async fn open(
        &self,
        tenant_id: &str,
        name: &str,
        slug: &str,
        contact_email: &str,
        services: &TenantServices,
    ) -> Result<(String, String, String), TenantError> {
        if self.status.is_some() {
            return Err(TenantError::AlreadyExists);
        }
        let name = TenantName::parse(name).ok_or(TenantError::InvalidName)?;
        let slug = Slug::parse(slug).ok_or(TenantError::InvalidSlug)?;
        let email = Email::parse(contact_email).ok_or(TenantError::InvalidEmail)?;
        if !services
            .slugs
            .reserve(slug.as_str(), tenant_id)
            .await
            .map_err(TenantError::Unavailable)?
        {
            return Err(TenantError::SlugTaken);
        }
        Ok((
            name.into_inner(),
            slug.as_str().to_owned(),
            email.into_inner(),
        ))
    }
    /// A sign-up or a super admin's creation.
    async fn opening(
        &self,
        command: TenantCommand,
        services: &TenantServices,
    ) -> Result<Option<TenantEvent>, TenantError> {
        let (signup, tenant_id, name, slug, contact_email) = match command {
            TenantCommand::RequestSignup {
                tenant_id,
                name,
                slug,
                contact_email,
            } => (true, tenant_id, name, slug, contact_email),
            TenantCommand::Create {
                tenant_id,
                name,
                slug,
                contact_email,
            } => (false, tenant_id, name, slug, contact_email),
            _ => return Ok(None),
        };
        let (name, slug, contact_email) = self
            .open(&tenant_id, &name, &slug, &contact_email, services)
            .await?;
        Ok(Some(if signup {
            TenantEvent::SignupRequested {
                name,
                slug,
                contact_email,
            }
        } else {
            TenantEvent::Created {
                name,
                slug,
                contact_email,
            }
        }))
    }

    /// Approval, rejection, suspension and reactivation: moves between statuses.
    fn lifecycle(&self, command: TenantCommand) -> Result<Option<TenantEvent>, TenantError> {
        let Some(status) = self.status else {
            return Err(TenantError::NotFound);
        };
        let event = match command {
            TenantCommand::Approve => match status {
                Status::Pending => TenantEvent::Approved {},
                Status::Active | Status::Suspended => return Err(TenantError::AlreadyApproved),
                Status::Rejected => return Err(TenantError::NotPending),
            },
            TenantCommand::Reject { reason } => match status {
                Status::Pending => TenantEvent::Rejected {
                    reason: values::parse_reason(&reason).ok_or(TenantError::InvalidReason)?,
                },
                _ => return Err(TenantError::NotPending),
            },
            TenantCommand::Suspend { reason } => {
                match status {
                    Status::Active => {}
                    Status::Suspended => return Err(TenantError::Suspended),
                    Status::Rejected => return Err(TenantError::Rejected),
                    Status::Pending => return Err(TenantError::NotActive),
                }
                TenantEvent::Suspended {
                    reason: values::parse_reason(&reason).ok_or(TenantError::InvalidReason)?,
                }
            }
            TenantCommand::Reactivate => match status {
                Status::Suspended => TenantEvent::Reactivated {},
                _ => return Err(TenantError::NotSuspended),
            },
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    /// What the tenant shows: its name, preferences and logo.
    fn profile(&self, command: TenantCommand) -> Result<Option<TenantEvent>, TenantError> {
        self.changeable()?;
        let event = match command {
            TenantCommand::Rename { name } => {
                let name = TenantName::parse(&name)
                    .ok_or(TenantError::InvalidName)?
                    .into_inner();
                if name == self.name {
                    // Renaming to the current name changes nothing and records nothing.
                    return Ok(None);
                }
                TenantEvent::Renamed { name }
            }
            TenantCommand::UpdatePreferences { preferences } => {
                values::check_preferences(&preferences).map_err(|e| match e {
                    PreferencesError::NotAnObject => TenantError::PreferencesNotObject,
                    PreferencesError::TooLarge => TenantError::PreferencesTooLarge,
                    PreferencesError::NulCharacter => TenantError::PreferencesInvalid,
                })?;
                TenantEvent::PreferencesUpdated { preferences }
            }
            TenantCommand::RecordLogo {
                object_key,
                content_type,
                size_bytes,
                sha256,
            } => {
                if !values::LOGO_TYPES.contains(&content_type.as_str())
                    || size_bytes == 0
                    || size_bytes > values::MAX_LOGO_BYTES
                {
                    return Err(TenantError::InvalidLogo);
                }
                TenantEvent::LogoUploaded {
                    object_key,
                    content_type,
                    size_bytes,
                    sha256,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(event))
    }

    /// Departments added and removed (one still holding members stays).
    async fn departments(
        &self,
        command: TenantCommand,
        services: &TenantServices,
    ) -> Result<Option<TenantEvent>, TenantError> {
        self.changeable()?;
        let event = match command {
            TenantCommand::AddDepartment { name } => {
                let name = name.trim().to_owned();
                if !(1..=80).contains(&name.chars().count()) || name.chars().any(char::is_control) {
                    return Err(TenantError::InvalidDepartment);
                }
                if self.has_department(&name) {
                    return Err(TenantError::DepartmentExists);
                }
                TenantEvent::DepartmentAdded { name }
            }
            TenantCommand::RemoveDepartment { tenant_id, name } => {
                // Named as it was added: surrounding spaces are not part of a name.
                let Some(name) = self.department(&name).map(str::to_owned) else {
                    return Err(TenantError::NoSuchDepartment);
                };
                // Its members would be left in a department that no longer exists.
                let members = services
                    .members
                    .count(&tenant_id, &name)
                    .await
                    .map_err(TenantError::Unavailable)?;
                if members > 0 {
                    return Err(TenantError::DepartmentInUse(members));
                }
                TenantEvent::DepartmentRemoved { name }
            }
            _ => return Ok(None),
        };
        Ok(Some(event))
    }
}

impl Aggregate for Tenant {
    const TYPE: &'static str = AGGREGATE_TYPE;
    type Command = TenantCommand;
    type Event = TenantEvent;
    type Error = TenantError;
    type Services = TenantServices;

    async fn handle(
        &mut self,
        command: TenantCommand,
        services: &TenantServices,
        sink: &EventSink<Self>,
    ) -> Result<(), TenantError> {
        // Every command is named here, so a new one does not compile until it has a home.
        let event = match command {
            opening @ (TenantCommand::RequestSignup { .. } | TenantCommand::Create { .. }) => {
                self.opening(opening, services).await?
            }
            lifecycle @ (TenantCommand::Approve
            | TenantCommand::Reject { .. }
            | TenantCommand::Suspend { .. }
            | TenantCommand::Reactivate) => self.lifecycle(lifecycle)?,
            profile @ (TenantCommand::Rename { .. }
            | TenantCommand::UpdatePreferences { .. }
            | TenantCommand::RecordLogo { .. }) => self.profile(profile)?,
            department @ (TenantCommand::AddDepartment { .. }
            | TenantCommand::RemoveDepartment { .. }) => {
                self.departments(department, services).await?
            }
        };
        // Some commands change nothing, and record nothing (a rename to the current name).
        if let Some(event) = event {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: TenantEvent) {
        match event {
            TenantEvent::SignupRequested { name, slug, .. } => {
                self.status = Some(Status::Pending);
                self.name = name;
                self.slug = slug;
            }
            TenantEvent::Created { name, slug, .. } => {
                self.status = Some(Status::Active);
                self.name = name;
                self.slug = slug;
            }
            TenantEvent::Approved {} | TenantEvent::Reactivated {} => {
                self.status = Some(Status::Active)
            }
            TenantEvent::Rejected { .. } => self.status = Some(Status::Rejected),
            TenantEvent::Suspended { .. } => self.status = Some(Status::Suspended),
            TenantEvent::Renamed { name } => self.name = name,
            TenantEvent::PreferencesUpdated { preferences } => {
                self.chatbot_disabled = preferences.pointer("/chatbot/enabled")
                    == Some(&serde_json::Value::Bool(false));
            }
            TenantEvent::LogoUploaded { .. } => {}
            TenantEvent::DepartmentAdded { name } => self.departments.push(name),
            TenantEvent::DepartmentRemoved { name } => self.departments.retain(|d| *d != name),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cqrs_es::test::TestFramework;
    use serde_json::json;

    use super::*;
    use crate::tenants::services::{MemoryMembers, MemorySlugRegistry};

    type Given = TestFramework<Tenant>;

    fn services() -> TenantServices {
        TenantServices {
            slugs: Arc::new(MemorySlugRegistry::default()),
            members: Arc::new(MemoryMembers::default()),
        }
    }

    fn signup() -> TenantCommand {
        TenantCommand::RequestSignup {
            tenant_id: "t1".into(),
            name: " Acme ".into(),
            slug: "acme".into(),
            contact_email: "ops@ACME.io".into(),
        }
    }

    fn requested() -> TenantEvent {
        TenantEvent::SignupRequested {
            name: "Acme".into(),
            slug: "acme".into(),
            contact_email: "ops@acme.io".into(),
        }
    }

    fn created() -> TenantEvent {
        TenantEvent::Created {
            name: "Acme".into(),
            slug: "acme".into(),
            contact_email: "ops@acme.io".into(),
        }
    }

    fn suspended() -> TenantEvent {
        TenantEvent::Suspended {
            reason: "unpaid".into(),
        }
    }

    fn rejected() -> TenantEvent {
        TenantEvent::Rejected {
            reason: "spam".into(),
        }
    }

    async fn expect_error(given: Vec<TenantEvent>, when: TenantCommand, error: TenantError) {
        Given::with(services())
            .given(given)
            .when_async(when)
            .await
            .then_expect_error(error);
    }

    async fn expect_events(given: Vec<TenantEvent>, when: TenantCommand, events: Vec<TenantEvent>) {
        Given::with(services())
            .given(given)
            .when_async(when)
            .await
            .then_expect_events(events);
    }

    #[tokio::test]
    async fn request_signup_on_new_tenant_records_normalised_request() {
        expect_events(vec![], signup(), vec![requested()]).await;
    }

    #[tokio::test]
    async fn request_signup_on_existing_tenant_is_refused() {
        expect_error(vec![requested()], signup(), TenantError::AlreadyExists).await;
    }

    #[tokio::test]
    async fn create_on_new_tenant_records_active_tenant() {
        let create = TenantCommand::Create {
            tenant_id: "t1".into(),
            name: "Acme".into(),
            slug: "acme".into(),
            contact_email: "ops@acme.io".into(),
        };
        expect_events(vec![], create.clone(), vec![created()]).await;
        expect_error(vec![created()], create, TenantError::AlreadyExists).await;
    }

    #[tokio::test]
    async fn request_signup_with_short_or_long_name_is_refused() {
        for name in ["A", &"x".repeat(81)] {
            let cmd = TenantCommand::RequestSignup {
                tenant_id: "t1".into(),
                name: name.to_owned(),
                slug: "acme".into(),
                contact_email: "ops@acme.io".into(),
            };
            expect_error(vec![], cmd, TenantError::InvalidName).await;
        }
    }

    #[tokio::test]
    async fn request_signup_with_bad_slug_is_refused() {
        let cmd = TenantCommand::RequestSignup {
            tenant_id: "t1".into(),
            name: "Acme".into(),
            slug: "Not A Slug".into(),
            contact_email: "ops@acme.io".into(),
        };
        expect_error(vec![], cmd, TenantError::InvalidSlug).await;
    }

    #[tokio::test]
    async fn request_signup_with_bad_email_is_refused() {
        let cmd = TenantCommand::RequestSignup {
            tenant_id: "t1".into(),
            name: "Acme".into(),
            slug: "acme".into(),
            contact_email: "nobody".into(),
        };
        expect_error(vec![], cmd, TenantError::InvalidEmail).await;
    }

    #[tokio::test]
    async fn request_signup_with_slug_of_another_tenant_is_refused() {
        let services = services();
        services
            .slugs
            .reserve("acme", "someone-else")
            .await
            .expect("reserved");
        Given::with(services)
            .given_no_previous_events()
            .when_async(signup())
            .await
            .then_expect_error(TenantError::SlugTaken);
    }

    #[tokio::test]
    async fn approve_pending_tenant_activates_it() {
        expect_events(
            vec![requested()],
            TenantCommand::Approve,
            vec![TenantEvent::Approved {}],
        )
        .await;
    }

    #[tokio::test]
    async fn approve_twice_is_refused() {
        let approved = vec![requested(), TenantEvent::Approved {}];
        expect_error(
            approved,
            TenantCommand::Approve,
            TenantError::AlreadyApproved,
        )
        .await;
        expect_error(
            vec![created()],
            TenantCommand::Approve,
            TenantError::AlreadyApproved,
        )
        .await;
    }

    #[tokio::test]
    async fn approve_rejected_or_unknown_tenant_is_refused() {
        expect_error(
            vec![requested(), rejected()],
            TenantCommand::Approve,
            TenantError::NotPending,
        )
        .await;
        expect_error(vec![], TenantCommand::Approve, TenantError::NotFound).await;
    }

    #[tokio::test]
    async fn reject_pending_tenant_records_reason() {
        let reject = TenantCommand::Reject {
            reason: " spam ".into(),
        };
        expect_events(vec![requested()], reject, vec![rejected()]).await;
    }

    #[tokio::test]
    async fn reject_approved_tenant_or_without_reason_is_refused() {
        let reject = |r: &str| TenantCommand::Reject { reason: r.into() };
        expect_error(vec![created()], reject("x"), TenantError::NotPending).await;
        expect_error(vec![requested()], reject("  "), TenantError::InvalidReason).await;
        expect_error(vec![], reject("x"), TenantError::NotFound).await;
    }

    #[tokio::test]
    async fn rename_active_tenant_records_new_name() {
        let rename = TenantCommand::Rename {
            name: "Acme Two".into(),
        };
        expect_events(
            vec![created()],
            rename,
            vec![TenantEvent::Renamed {
                name: "Acme Two".into(),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn rename_to_same_name_records_nothing() {
        let rename = TenantCommand::Rename {
            name: "Acme".into(),
        };
        expect_events(vec![created()], rename, vec![]).await;
    }

    #[tokio::test]
    async fn rename_with_invalid_name_or_unknown_tenant_is_refused() {
        let rename = |n: &str| TenantCommand::Rename { name: n.into() };
        expect_error(vec![created()], rename("x"), TenantError::InvalidName).await;
        expect_error(vec![], rename("Acme"), TenantError::NotFound).await;
    }

    #[tokio::test]
    async fn any_change_while_suspended_is_refused() {
        let given = vec![created(), suspended()];
        for cmd in [
            TenantCommand::Rename { name: "New".into() },
            TenantCommand::UpdatePreferences {
                preferences: json!({}),
            },
            TenantCommand::Suspend {
                reason: "again".into(),
            },
            TenantCommand::RecordLogo {
                object_key: "k".into(),
                content_type: "image/png".into(),
                size_bytes: 10,
                sha256: "00".into(),
            },
        ] {
            expect_error(given.clone(), cmd, TenantError::Suspended).await;
        }
    }

    #[tokio::test]
    async fn any_change_after_rejection_is_refused() {
        let given = vec![requested(), rejected()];
        expect_error(
            given.clone(),
            TenantCommand::Rename { name: "New".into() },
            TenantError::Rejected,
        )
        .await;
        expect_error(
            given,
            TenantCommand::Suspend { reason: "x".into() },
            TenantError::Rejected,
        )
        .await;
    }

    #[tokio::test]
    async fn update_preferences_records_whole_object() {
        let prefs = json!({"chatbot": {"enabled": true}});
        expect_events(
            vec![created()],
            TenantCommand::UpdatePreferences {
                preferences: prefs.clone(),
            },
            vec![TenantEvent::PreferencesUpdated { preferences: prefs }],
        )
        .await;
    }

    #[tokio::test]
    async fn update_preferences_not_object_or_over_16_kib_is_refused() {
        let update = |p| TenantCommand::UpdatePreferences { preferences: p };
        expect_error(
            vec![created()],
            update(json!([1, 2])),
            TenantError::PreferencesNotObject,
        )
        .await;
        let big = json!({"x": "y".repeat(16 * 1024)});
        expect_error(
            vec![created()],
            update(big),
            TenantError::PreferencesTooLarge,
        )
        .await;
    }

    #[tokio::test]
    async fn suspend_active_tenant_records_reason() {
        expect_events(
            vec![created()],
            TenantCommand::Suspend {
                reason: "unpaid".into(),
            },
            vec![suspended()],
        )
        .await;
    }

    #[tokio::test]
    async fn suspend_pending_tenant_is_refused() {
        expect_error(
            vec![requested()],
            TenantCommand::Suspend { reason: "x".into() },
            TenantError::NotActive,
        )
        .await;
    }

    #[tokio::test]
    async fn reactivate_suspended_tenant_activates_it() {
        expect_events(
            vec![created(), suspended()],
            TenantCommand::Reactivate,
            vec![TenantEvent::Reactivated {}],
        )
        .await;
    }

    #[tokio::test]
    async fn reactivate_active_tenant_is_refused() {
        expect_error(
            vec![created()],
            TenantCommand::Reactivate,
            TenantError::NotSuspended,
        )
        .await;
    }

    #[tokio::test]
    async fn suspended_then_reactivated_tenant_accepts_changes_again() {
        expect_events(
            vec![created(), suspended(), TenantEvent::Reactivated {}],
            TenantCommand::Rename {
                name: "Back".into(),
            },
            vec![TenantEvent::Renamed {
                name: "Back".into(),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn departments_are_added_once_and_removed_if_present() {
        let add = |n: &str| TenantCommand::AddDepartment { name: n.into() };
        let added = TenantEvent::DepartmentAdded {
            name: "Sales".into(),
        };
        expect_events(vec![created()], add(" Sales "), vec![added.clone()]).await;
        expect_error(
            vec![created(), added.clone()],
            add("Sales"),
            TenantError::DepartmentExists,
        )
        .await;
        expect_error(vec![created()], add(""), TenantError::InvalidDepartment).await;
        // One department whatever its case: not added twice, removed by any spelling.
        expect_error(
            vec![created(), added.clone()],
            add(" sales"),
            TenantError::DepartmentExists,
        )
        .await;
        expect_events(
            vec![created(), added.clone()],
            TenantCommand::RemoveDepartment {
                tenant_id: "t1".into(),
                name: "SALES".into(),
            },
            vec![TenantEvent::DepartmentRemoved {
                name: "Sales".into(),
            }],
        )
        .await;
        expect_events(
            vec![created(), added.clone()],
            TenantCommand::RemoveDepartment {
                tenant_id: "t1".into(),
                name: "  Sales ".into(),
            },
            vec![TenantEvent::DepartmentRemoved {
                name: "Sales".into(),
            }],
        )
        .await;
        // Not while users are in it: they would be left in a department that is gone.
        let members = MemoryMembers::default();
        if let Ok(mut m) = members.0.lock() {
            m.insert(("t1".into(), "sales".into()), 2);
        }
        Given::with(TenantServices {
            slugs: Arc::new(MemorySlugRegistry::default()),
            members: Arc::new(members),
        })
        .given(vec![created(), added.clone()])
        .when_async(TenantCommand::RemoveDepartment {
            tenant_id: "t1".into(),
            name: "sales".into(),
        })
        .await
        .then_expect_error(TenantError::DepartmentInUse(2));
        expect_error(
            vec![created()],
            TenantCommand::RemoveDepartment {
                tenant_id: "t1".into(),
                name: "Sales".into(),
            },
            TenantError::NoSuchDepartment,
        )
        .await;
        expect_error(
            vec![created(), suspended()],
            add("Ops"),
            TenantError::Suspended,
        )
        .await;
    }

    #[tokio::test]
    async fn record_logo_of_allowed_type_and_size_records_it() {
        let logo = TenantCommand::RecordLogo {
            object_key: "tenants/t1/logo/abc".into(),
            content_type: "image/webp".into(),
            size_bytes: 2 * 1024 * 1024,
            sha256: "abc".into(),
        };
        expect_events(
            vec![created()],
            logo,
            vec![TenantEvent::LogoUploaded {
                object_key: "tenants/t1/logo/abc".into(),
                content_type: "image/webp".into(),
                size_bytes: 2 * 1024 * 1024,
                sha256: "abc".into(),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn record_logo_of_wrong_type_or_too_large_is_refused() {
        let logo = |t: &str, size| TenantCommand::RecordLogo {
            object_key: "k".into(),
            content_type: t.into(),
            size_bytes: size,
            sha256: "abc".into(),
        };
        expect_error(
            vec![created()],
            logo("image/gif", 10),
            TenantError::InvalidLogo,
        )
        .await;
        expect_error(
            vec![created()],
            logo("image/png", 2 * 1024 * 1024 + 1),
            TenantError::InvalidLogo,
        )
        .await;
        expect_error(
            vec![created()],
            logo("image/png", 0),
            TenantError::InvalidLogo,
        )
        .await;
    }
}
