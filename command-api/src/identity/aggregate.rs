//! The admin-user aggregate: who the user is, and every rule about signing in, decided
//! from the user's own events.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use events::access::Role;
use events::identity::{AdminUserEvent, LoginFailure, SessionEnd, ADMIN_USER};
use serde::{Deserialize, Serialize};

use super::services::Identity;
use crate::values::{Email, Password};

/// Failed logins within this window count towards a lock.
pub const FAILURE_WINDOW: Duration = Duration::minutes(15);
/// Failed logins within the window that lock the account.
pub const MAX_FAILURES: usize = 5;
/// How long a lock lasts.
pub const LOCK_FOR: Duration = Duration::minutes(15);

/// A command on one admin user.
#[derive(Clone, PartialEq)]
pub enum AdminUserCommand {
    /// Create (or invite) the user with an initial password.
    Create {
        /// The new user's id (also the aggregate id).
        user_id: String,
        /// Login e-mail.
        email: String,
        /// Initial password.
        password: String,
        /// Home tenant (none for a platform super admin).
        tenant_id: Option<String>,
        /// Role.
        role: Role,
        /// Department inside the tenant.
        department: Option<String>,
    },
    /// Change the role.
    ChangeRole {
        /// The user (the aggregate does not know its own id).
        user_id: String,
        /// New role.
        role: Role,
    },
    /// Move to another department, or to none.
    ChangeDepartment {
        /// New department.
        department: Option<String>,
    },
    /// Stop the user signing in.
    Deactivate {
        /// The user (the aggregate does not know its own id).
        user_id: String,
        /// Who asks: nobody deactivates themselves.
        by: String,
    },
    /// Let the user sign in again.
    Reactivate,
    /// The user changes their own password.
    ChangePassword {
        /// The user (the aggregate does not know its own id).
        user_id: String,
        /// Proof it is them.
        current: String,
        /// The new one.
        new: String,
        /// The session making the change, which goes on; every other one ends.
        kept_session: Option<String>,
        /// When (a wrong current password counts toward the lockout, like a failed login).
        at: DateTime<Utc>,
    },
    /// Record that a reset token was issued. The caller staged the token's hash and its
    /// e-mail under `reset`; appending the event stores the one and sends the other
    /// (migration 0042).
    IssuePasswordReset {
        /// When it expires.
        expires_at: DateTime<Utc>,
        /// The staged reset.
        reset: String,
    },
    /// Set a new password with a reset token the caller has checked and spent.
    ResetPassword {
        /// The user.
        user_id: String,
        /// The new password.
        new: String,
    },
    /// A login attempt.
    Login {
        /// The user (the aggregate does not know its own id).
        user_id: String,
        /// As typed.
        password: String,
        /// The session a success opens.
        session_id: String,
        /// The clock at the edge, so the rules are testable.
        at: DateTime<Utc>,
        /// Whether the user's tenant is suspended (known at the edge from the tenant's
        /// events): a suspended tenant's staff cannot sign in.
        tenant_suspended: bool,
    },
    /// End a session.
    RevokeSession {
        /// Which.
        session_id: String,
        /// Why.
        reason: SessionEnd,
    },
}

impl std::fmt::Debug for AdminUserCommand {
    /// Commands carry passwords: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            AdminUserCommand::Create { .. } => "Create",
            AdminUserCommand::ChangeRole { .. } => "ChangeRole",
            AdminUserCommand::ChangeDepartment { .. } => "ChangeDepartment",
            AdminUserCommand::Deactivate { .. } => "Deactivate",
            AdminUserCommand::Reactivate => "Reactivate",
            AdminUserCommand::ChangePassword { .. } => "ChangePassword",
            AdminUserCommand::IssuePasswordReset { .. } => "IssuePasswordReset",
            AdminUserCommand::ResetPassword { .. } => "ResetPassword",
            AdminUserCommand::Login { .. } => "Login",
            AdminUserCommand::RevokeSession { .. } => "RevokeSession",
        };
        write!(f, "AdminUserCommand::{name}(..)")
    }
}

/// The state the rules need (also the snapshot form).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdminUser {
    /// Created yet?
    exists: bool,
    /// Login e-mail.
    pub email: String,
    /// Home tenant.
    pub tenant_id: Option<String>,
    /// Role (meaningful once created).
    pub role: Option<Role>,
    /// Department.
    pub department: Option<String>,
    /// False once deactivated.
    pub active: bool,
    /// Times of failed logins still inside the window.
    failures: Vec<DateTime<Utc>>,
    /// Locked until then.
    locked_until: Option<DateTime<Utc>>,
    /// A refused attempt was recorded since the user was deactivated, or since the current
    /// lock began (its `until`): later ones are answered alike and not recorded, so
    /// nobody can grow the user's history for ever by knocking on a closed door.
    #[serde(default)]
    refusal_noted: Option<Refusal>,
}

/// What a recorded refusal was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Refusal {
    /// The user is deactivated.
    Inactive,
    /// The lock that ends then.
    Locked(DateTime<Utc>),
}

impl AdminUser {
    /// True once the user exists.
    pub fn exists(&self) -> bool {
        self.exists
    }
}

/// Why a command on an admin user was refused. Each variant's doc names its HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminUserError {
    /// 404: no such user.
    #[error("admin user not found")]
    NotFound,
    /// 409: a user with this id exists.
    #[error("an admin user with this id already exists")]
    AlreadyExists,
    /// 422: not an e-mail address.
    #[error("the e-mail is not a valid address")]
    InvalidEmail,
    /// 409: another admin user has this e-mail.
    #[error("another admin user has this e-mail")]
    EmailTaken,
    /// 422: the password breaks the policy.
    #[error("the password must be 10 to 128 characters, not a well-known one, with at least 4 different characters")]
    WeakPassword,
    /// 422: a department name must be 1–80 characters without control characters.
    #[error("the department must be 1 to 80 characters without control characters")]
    InvalidDepartment,
    /// 422: a tenant admin or agent needs a tenant.
    #[error("a tenant admin or agent must belong to a tenant")]
    TenantRequired,
    /// 422: a new super admin belongs to the platform, not to a tenant (whose suspension
    /// would lock them out).
    #[error("a new super admin belongs to no tenant; leave tenant_id out")]
    TenantNotAllowed,
    /// 422: the user is deactivated.
    #[error("the admin user is deactivated")]
    Inactive,
    /// 422: a user cannot deactivate themselves (another admin can).
    #[error("you cannot deactivate yourself; another admin can")]
    SelfDeactivation,
    /// 422: the last active super admin cannot be deactivated or given another role: the
    /// platform would have no one to administer it.
    #[error("this is the last active super admin; make another one first")]
    LastSuperAdmin,
    /// 422: the user is active.
    #[error("the admin user is active")]
    Active,
    /// 403: the current password did not match.
    #[error("the current password is wrong")]
    WrongPassword,
    /// 403: too many wrong passwords; no password is checked until the lock ends.
    #[error("the account is locked after too many wrong passwords; try again later")]
    Locked,
    /// 503: a service could not be reached.
    #[error("identity services unavailable: {0}")]
    Unavailable(String),
}

fn parse_department(raw: Option<String>) -> Result<Option<String>, AdminUserError> {
    match raw {
        None => Ok(None),
        Some(d) => {
            let d = d.trim();
            let ok = (1..=80).contains(&d.chars().count()) && !d.chars().any(char::is_control);
            ok.then(|| Some(d.to_owned()))
                .ok_or(AdminUserError::InvalidDepartment)
        }
    }
}

impl AdminUser {
    fn require_exists(&self) -> Result<(), AdminUserError> {
        self.exists.then_some(()).ok_or(AdminUserError::NotFound)
    }

    async fn login(
        &self,
        user_id: &str,
        password: &str,
        session_id: String,
        at: DateTime<Utc>,
        identity: &Identity,
    ) -> Result<Vec<AdminUserEvent>, AdminUserError> {
        self.require_exists()?;
        let failed = |reason| AdminUserEvent::LoginFailed { reason, at };
        if !self.active {
            if self.refusal_noted == Some(Refusal::Inactive) {
                return Ok(vec![]);
            }
            return Ok(vec![failed(LoginFailure::Inactive)]);
        }
        if let Some(until) = self.locked_until.filter(|until| at < *until) {
            // The password is not even checked while locked.
            if self.refusal_noted == Some(Refusal::Locked(until)) {
                return Ok(vec![]);
            }
            return Ok(vec![failed(LoginFailure::Locked)]);
        }
        let ok = identity
            .check_password(user_id, password)
            .await
            .map_err(AdminUserError::Unavailable)?;
        if ok {
            return Ok(vec![AdminUserEvent::LoginSucceeded { session_id, at }]);
        }
        Ok(self.wrong_password(at))
    }

    /// Refuses to take away the super admin role or activity of the last active super admin.
    /// Two such changes racing each other are caught in their transaction (migration 0040
    /// refuses the second as a serialization failure: retried, it is refused here).
    async fn not_the_last_super_admin(
        &self,
        identity: &Identity,
        user_id: &str,
    ) -> Result<(), AdminUserError> {
        if self.role != Some(Role::SuperAdmin) || !self.active {
            return Ok(());
        }
        let others = identity
            .other_active_super_admins(user_id)
            .await
            .map_err(AdminUserError::Unavailable)?;
        if others == 0 {
            return Err(AdminUserError::LastSuperAdmin);
        }
        Ok(())
    }

    /// A wrong password given at `at`: recorded, and the lock when it is one too many.
    fn wrong_password(&self, at: DateTime<Utc>) -> Vec<AdminUserEvent> {
        let recent = self
            .failures
            .iter()
            .filter(|t| **t > at - FAILURE_WINDOW)
            .count();
        let mut events = vec![AdminUserEvent::LoginFailed {
            reason: LoginFailure::WrongPassword,
            at,
        }];
        if recent + 1 >= MAX_FAILURES {
            events.push(AdminUserEvent::LockedOut {
                until: at + LOCK_FOR,
            });
        }
        events
    }

    async fn write_all(&mut self, sink: &EventSink<Self>, events: Vec<AdminUserEvent>) {
        for event in events {
            sink.write(event, self).await;
        }
    }
}

impl AdminUser {
    /// A new admin user: a free e-mail, a strong password (staged), a tenant unless a super
    /// admin.
    async fn create(
        &self,
        command: AdminUserCommand,
        identity: &Identity,
    ) -> Result<Vec<AdminUserEvent>, AdminUserError> {
        let AdminUserCommand::Create {
            user_id,
            email,
            password,
            tenant_id,
            role,
            department,
        } = command
        else {
            return Ok(vec![]);
        };
        if self.exists {
            return Err(AdminUserError::AlreadyExists);
        }
        let email = Email::parse(&email)
            .ok_or(AdminUserError::InvalidEmail)?
            .into_inner()
            .to_lowercase();
        let password = Password::parse(&password).ok_or(AdminUserError::WeakPassword)?;
        let department = parse_department(department)?;
        if role != Role::SuperAdmin && tenant_id.is_none() {
            return Err(AdminUserError::TenantRequired);
        }
        if role == Role::SuperAdmin && tenant_id.is_some() {
            return Err(AdminUserError::TenantNotAllowed);
        }
        let unavailable = AdminUserError::Unavailable;
        if !identity
            .email_is_free(&email, &user_id)
            .await
            .map_err(unavailable)?
        {
            return Err(AdminUserError::EmailTaken);
        }
        let credential = identity
            .stage_password(&user_id, password.expose())
            .await
            .map_err(unavailable)?;
        let email = identity
            .stage_email(&user_id, tenant_id.as_deref(), &email)
            .await
            .map_err(unavailable)?;
        Ok(vec![AdminUserEvent::Created {
            email,
            tenant_id,
            role,
            department,
            credential: Some(credential),
        }])
    }

    /// Role, department and whether the user may work at all.
    async fn membership(
        &self,
        command: AdminUserCommand,
        identity: &Identity,
    ) -> Result<Vec<AdminUserEvent>, AdminUserError> {
        self.require_exists()?;
        Ok(match command {
            AdminUserCommand::ChangeRole { user_id, role } => {
                if self.role == Some(role) {
                    vec![]
                } else {
                    self.not_the_last_super_admin(identity, &user_id).await?;
                    if role != Role::SuperAdmin && self.tenant_id.is_none() {
                        return Err(AdminUserError::TenantRequired);
                    }
                    vec![AdminUserEvent::RoleChanged { role }]
                }
            }
            AdminUserCommand::ChangeDepartment { department } => {
                let department = parse_department(department)?;
                if self.department == department {
                    vec![]
                } else {
                    vec![AdminUserEvent::DepartmentChanged { department }]
                }
            }
            AdminUserCommand::Deactivate { user_id, by } => {
                if user_id == by {
                    return Err(AdminUserError::SelfDeactivation);
                }
                // Already done: a retry converges (its sessions ended with the first).
                if !self.active {
                    return Ok(vec![]);
                }
                self.not_the_last_super_admin(identity, &user_id).await?;
                vec![AdminUserEvent::Deactivated {}]
            }
            AdminUserCommand::Reactivate => {
                if self.active {
                    return Err(AdminUserError::Active);
                }
                vec![AdminUserEvent::Reactivated {}]
            }
            _ => vec![],
        })
    }

    /// A password changed by its owner, a reset issued, a reset carried out.
    async fn passwords(
        &self,
        command: AdminUserCommand,
        identity: &Identity,
    ) -> Result<Vec<AdminUserEvent>, AdminUserError> {
        self.require_exists()?;
        if !self.active {
            return Err(AdminUserError::Inactive);
        }
        let unavailable = AdminUserError::Unavailable;
        let (user_id, new, kept_session) = match command {
            AdminUserCommand::ChangePassword {
                user_id,
                current,
                new,
                kept_session,
                at,
            } => {
                if self.locked_until.is_some_and(|until| at < until) {
                    return Err(AdminUserError::Locked);
                }
                let new = Password::parse(&new).ok_or(AdminUserError::WeakPassword)?;
                if !identity
                    .check_password(&user_id, &current)
                    .await
                    .map_err(unavailable)?
                {
                    // A guess at the password through this door counts like one at login.
                    return Ok(self.wrong_password(at));
                }
                (user_id, new, Some(kept_session))
            }
            AdminUserCommand::IssuePasswordReset { expires_at, reset } => {
                return Ok(vec![AdminUserEvent::PasswordResetIssued {
                    expires_at,
                    reset: Some(reset),
                }]);
            }
            AdminUserCommand::ResetPassword { user_id, new } => {
                let new = Password::parse(&new).ok_or(AdminUserError::WeakPassword)?;
                (user_id, new, None)
            }
            _ => return Ok(vec![]),
        };
        let credential = Some(
            identity
                .stage_password(&user_id, new.expose())
                .await
                .map_err(unavailable)?,
        );
        Ok(vec![match kept_session {
            Some(kept_session) => AdminUserEvent::PasswordChanged {
                kept_session,
                credential,
            },
            None => AdminUserEvent::PasswordReset { credential },
        }])
    }

    /// A login, and a session ended.
    async fn sessions(
        &self,
        command: AdminUserCommand,
        identity: &Identity,
    ) -> Result<Vec<AdminUserEvent>, AdminUserError> {
        match command {
            AdminUserCommand::Login {
                user_id,
                password,
                session_id,
                at,
                tenant_suspended,
            } => {
                let events = self
                    .login(&user_id, &password, session_id, at, identity)
                    .await?;
                // Only a right password learns that the tenant is suspended; it opens no
                // session and does not count toward the lock.
                Ok(match events.as_slice() {
                    [AdminUserEvent::LoginSucceeded { .. }] if tenant_suspended => {
                        vec![AdminUserEvent::LoginFailed {
                            reason: LoginFailure::TenantSuspended,
                            at,
                        }]
                    }
                    _ => events,
                })
            }
            AdminUserCommand::RevokeSession { session_id, reason } => {
                self.require_exists()?;
                Ok(vec![AdminUserEvent::SessionRevoked { session_id, reason }])
            }
            _ => Ok(vec![]),
        }
    }
}

impl Aggregate for AdminUser {
    const TYPE: &'static str = ADMIN_USER;
    type Command = AdminUserCommand;
    type Event = AdminUserEvent;
    type Error = AdminUserError;
    type Services = Identity;

    async fn handle(
        &mut self,
        command: AdminUserCommand,
        identity: &Identity,
        sink: &EventSink<Self>,
    ) -> Result<(), AdminUserError> {
        // Every command is named here, so a new one does not compile until it has a home.
        let events = match command {
            AdminUserCommand::Create { .. } => self.create(command, identity).await?,
            membership @ (AdminUserCommand::ChangeRole { .. }
            | AdminUserCommand::ChangeDepartment { .. }
            | AdminUserCommand::Deactivate { .. }
            | AdminUserCommand::Reactivate) => self.membership(membership, identity).await?,
            password @ (AdminUserCommand::ChangePassword { .. }
            | AdminUserCommand::IssuePasswordReset { .. }
            | AdminUserCommand::ResetPassword { .. }) => self.passwords(password, identity).await?,
            session @ (AdminUserCommand::Login { .. } | AdminUserCommand::RevokeSession { .. }) => {
                self.sessions(session, identity).await?
            }
        };
        self.write_all(sink, events).await;
        Ok(())
    }

    fn apply(&mut self, event: AdminUserEvent) {
        match event {
            AdminUserEvent::Created {
                email,
                tenant_id,
                role,
                department,
                ..
            } => {
                self.exists = true;
                self.email = email;
                self.tenant_id = tenant_id;
                self.role = Some(role);
                self.department = department;
                self.active = true;
            }
            AdminUserEvent::RoleChanged { role } => self.role = Some(role),
            AdminUserEvent::DepartmentChanged { department } => self.department = department,
            AdminUserEvent::Deactivated {} => self.active = false,
            AdminUserEvent::Reactivated {} => {
                self.active = true;
                self.refusal_noted = None;
            }
            AdminUserEvent::PasswordResetIssued { .. } => {}
            AdminUserEvent::PasswordChanged { .. } | AdminUserEvent::PasswordReset { .. } => {
                // A new password is a fresh start for the lock.
                self.failures.clear();
                self.locked_until = None;
            }
            AdminUserEvent::LoginSucceeded { .. } => self.failures.clear(),
            AdminUserEvent::LoginFailed { reason, at } => match reason {
                LoginFailure::WrongPassword => {
                    self.failures.retain(|t| *t > at - FAILURE_WINDOW);
                    self.failures.push(at);
                }
                LoginFailure::Inactive => self.refusal_noted = Some(Refusal::Inactive),
                LoginFailure::Locked => {
                    self.refusal_noted = self.locked_until.map(Refusal::Locked);
                }
                _ => {}
            },
            AdminUserEvent::LockedOut { until } => {
                self.locked_until = Some(until);
                self.failures.clear();
            }
            AdminUserEvent::SessionRevoked { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cqrs_es::test::TestFramework;

    use super::*;
    use crate::identity::services::MemoryIdentity;

    const PASSWORD: &str = "correct horse battery";

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap_or_default()
            + Duration::minutes(minute)
    }

    fn identity() -> Identity {
        let memory = MemoryIdentity::default();
        memory
            .passwords
            .lock()
            .map(|mut p| p.insert("u1".into(), PASSWORD.into()))
            .ok();
        Arc::new(memory)
    }

    fn created() -> AdminUserEvent {
        AdminUserEvent::Created {
            email: "ann@acme.io".into(),
            tenant_id: Some("t1".into()),
            role: Role::TenantAdmin,
            department: None,
            credential: None,
        }
    }

    fn login(password: &str, minute: i64) -> AdminUserCommand {
        AdminUserCommand::Login {
            user_id: "u1".into(),
            password: password.into(),
            session_id: "s1".into(),
            at: at(minute),
            tenant_suspended: false,
        }
    }

    fn succeeded(minute: i64) -> AdminUserEvent {
        AdminUserEvent::LoginSucceeded {
            session_id: "s1".into(),
            at: at(minute),
        }
    }

    fn wrong(minute: i64) -> AdminUserEvent {
        AdminUserEvent::LoginFailed {
            reason: LoginFailure::WrongPassword,
            at: at(minute),
        }
    }

    async fn expect_events(
        given: Vec<AdminUserEvent>,
        when: AdminUserCommand,
        then: Vec<AdminUserEvent>,
    ) {
        TestFramework::<AdminUser>::with(identity())
            .given(given)
            .when_async(when)
            .await
            .then_expect_events(then);
    }

    async fn expect_error(
        given: Vec<AdminUserEvent>,
        when: AdminUserCommand,
        error: AdminUserError,
    ) {
        TestFramework::<AdminUser>::with(identity())
            .given(given)
            .when_async(when)
            .await
            .then_expect_error(error);
    }

    fn create(email: &str, password: &str, tenant: Option<&str>, role: Role) -> AdminUserCommand {
        AdminUserCommand::Create {
            user_id: "u2".into(),
            email: email.into(),
            password: password.into(),
            tenant_id: tenant.map(str::to_owned),
            role,
            department: Some(" Sales ".into()),
        }
    }

    #[tokio::test]
    async fn create_records_the_user_without_its_password() {
        expect_events(
            vec![],
            create("Bob@Acme.IO", PASSWORD, Some("t1"), Role::Agent),
            vec![AdminUserEvent::Created {
                email: "bob@acme.io".into(),
                tenant_id: Some("t1".into()),
                role: Role::Agent,
                department: Some("Sales".into()),
                credential: Some("credential-1".into()),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn create_with_bad_email_weak_password_or_no_tenant_is_refused() {
        expect_error(
            vec![],
            create("bob", PASSWORD, Some("t1"), Role::Agent),
            AdminUserError::InvalidEmail,
        )
        .await;
        expect_error(
            vec![],
            create("bob@acme.io", "short", Some("t1"), Role::Agent),
            AdminUserError::WeakPassword,
        )
        .await;
        expect_error(
            vec![],
            create("bob@acme.io", PASSWORD, None, Role::Agent),
            AdminUserError::TenantRequired,
        )
        .await;
        expect_error(
            vec![created()],
            create("bob@acme.io", PASSWORD, Some("t1"), Role::Agent),
            AdminUserError::AlreadyExists,
        )
        .await;
    }

    #[tokio::test]
    async fn create_of_a_super_admin_in_a_tenant_is_refused() {
        expect_error(
            vec![],
            create("root2@acme.io", PASSWORD, Some("t1"), Role::SuperAdmin),
            AdminUserError::TenantNotAllowed,
        )
        .await;
    }

    #[tokio::test]
    async fn create_with_an_email_of_another_user_is_refused() {
        let memory = MemoryIdentity::default();
        if let Ok(mut emails) = memory.emails.lock() {
            emails.insert("bob@acme.io".into(), "someone".into());
        }
        TestFramework::<AdminUser>::with(Arc::new(memory) as Identity)
            .given_no_previous_events()
            .when_async(create("bob@acme.io", PASSWORD, Some("t1"), Role::Agent))
            .await
            .then_expect_error(AdminUserError::EmailTaken);
    }

    #[tokio::test]
    async fn login_with_the_right_password_opens_a_session() {
        expect_events(vec![created()], login(PASSWORD, 0), vec![succeeded(0)]).await;
    }

    #[tokio::test]
    async fn login_with_a_wrong_password_is_recorded() {
        expect_events(vec![created()], login("nope", 0), vec![wrong(0)]).await;
    }

    #[tokio::test]
    async fn login_fifth_failure_in_fifteen_minutes_locks_the_account() {
        let given = vec![created(), wrong(0), wrong(3), wrong(6), wrong(9)];
        expect_events(
            given,
            login("nope", 12),
            vec![
                wrong(12),
                AdminUserEvent::LockedOut {
                    until: at(12) + LOCK_FOR,
                },
            ],
        )
        .await;
    }

    #[tokio::test]
    async fn login_failures_older_than_the_window_do_not_count() {
        let given = vec![created(), wrong(0), wrong(1), wrong(10), wrong(12)];
        expect_events(given, login("nope", 16), vec![wrong(16)]).await;
    }

    #[tokio::test]
    async fn login_while_locked_is_refused_even_with_the_right_password() {
        let given = vec![created(), AdminUserEvent::LockedOut { until: at(15) }];
        expect_events(
            given,
            login(PASSWORD, 14),
            vec![AdminUserEvent::LoginFailed {
                reason: LoginFailure::Locked,
                at: at(14),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn login_while_locked_is_recorded_once_per_lock() {
        let locked_at = |minute| AdminUserEvent::LoginFailed {
            reason: LoginFailure::Locked,
            at: at(minute),
        };
        let given = vec![
            created(),
            AdminUserEvent::LockedOut { until: at(15) },
            locked_at(1),
        ];
        // Knocking again on the same lock adds nothing to the history.
        expect_events(given.clone(), login(PASSWORD, 2), vec![]).await;
        // A new lock is a new refusal worth recording.
        let mut relocked = given;
        relocked.push(AdminUserEvent::LockedOut { until: at(45) });
        expect_events(relocked, login(PASSWORD, 30), vec![locked_at(30)]).await;
    }

    #[tokio::test]
    async fn login_of_a_deactivated_user_is_recorded_once_until_reactivated() {
        let refused = |minute| AdminUserEvent::LoginFailed {
            reason: LoginFailure::Inactive,
            at: at(minute),
        };
        let given = vec![created(), AdminUserEvent::Deactivated {}, refused(1)];
        expect_events(given.clone(), login(PASSWORD, 2), vec![]).await;
        let mut again = given;
        again.push(AdminUserEvent::Reactivated {});
        again.push(AdminUserEvent::Deactivated {});
        expect_events(again, login(PASSWORD, 3), vec![refused(3)]).await;
    }

    #[tokio::test]
    async fn login_after_the_lock_expires_succeeds() {
        let given = vec![created(), AdminUserEvent::LockedOut { until: at(15) }];
        expect_events(given, login(PASSWORD, 15), vec![succeeded(15)]).await;
    }

    #[tokio::test]
    async fn login_success_resets_the_failure_count() {
        let given = vec![
            created(),
            wrong(0),
            wrong(1),
            wrong(2),
            wrong(3),
            AdminUserEvent::LoginSucceeded {
                session_id: "s0".into(),
                at: at(4),
            },
        ];
        expect_events(given, login("nope", 5), vec![wrong(5)]).await;
    }

    #[tokio::test]
    async fn login_of_a_deactivated_user_is_refused_and_recorded() {
        expect_events(
            vec![created(), AdminUserEvent::Deactivated {}],
            login(PASSWORD, 0),
            vec![AdminUserEvent::LoginFailed {
                reason: LoginFailure::Inactive,
                at: at(0),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn login_to_a_suspended_tenant_is_refused_after_the_password_check_and_not_counted() {
        let suspended = |password: &str, minute| match login(password, minute) {
            AdminUserCommand::Login {
                user_id,
                password,
                session_id,
                at,
                ..
            } => AdminUserCommand::Login {
                user_id,
                password,
                session_id,
                at,
                tenant_suspended: true,
            },
            other => other,
        };
        expect_events(
            vec![created()],
            suspended(PASSWORD, 0),
            vec![AdminUserEvent::LoginFailed {
                reason: LoginFailure::TenantSuspended,
                at: at(0),
            }],
        )
        .await;
        // A wrong password is just that: the suspension is not told.
        expect_events(vec![created()], suspended("nope", 0), vec![wrong(0)]).await;
        // Refusals for suspension do not lock the account.
        let given = vec![
            created(),
            wrong(0),
            wrong(1),
            wrong(2),
            wrong(3),
            AdminUserEvent::LoginFailed {
                reason: LoginFailure::TenantSuspended,
                at: at(4),
            },
        ];
        expect_events(given, login(PASSWORD, 5), vec![succeeded(5)]).await;
    }

    #[tokio::test]
    async fn login_of_an_unknown_user_is_not_found() {
        expect_error(vec![], login(PASSWORD, 0), AdminUserError::NotFound).await;
    }

    #[tokio::test]
    async fn change_role_to_the_same_role_records_nothing() {
        expect_events(
            vec![created()],
            AdminUserCommand::ChangeRole {
                user_id: "u1".into(),
                role: Role::TenantAdmin,
            },
            vec![],
        )
        .await;
        expect_events(
            vec![created()],
            AdminUserCommand::ChangeRole {
                user_id: "u1".into(),
                role: Role::Agent,
            },
            vec![AdminUserEvent::RoleChanged { role: Role::Agent }],
        )
        .await;
    }

    #[tokio::test]
    async fn change_department_validates_the_name() {
        expect_events(
            vec![created()],
            AdminUserCommand::ChangeDepartment {
                department: Some("Support".into()),
            },
            vec![AdminUserEvent::DepartmentChanged {
                department: Some("Support".into()),
            }],
        )
        .await;
        expect_error(
            vec![created()],
            AdminUserCommand::ChangeDepartment {
                department: Some(" ".into()),
            },
            AdminUserError::InvalidDepartment,
        )
        .await;
    }

    fn deactivate() -> AdminUserCommand {
        AdminUserCommand::Deactivate {
            user_id: "u1".into(),
            by: "admin".into(),
        }
    }

    fn super_admin() -> AdminUserEvent {
        AdminUserEvent::Created {
            email: "root@platform.io".into(),
            tenant_id: None,
            role: Role::SuperAdmin,
            department: None,
            credential: None,
        }
    }

    /// Services that know the active super admins `ids`.
    fn with_super_admins(ids: &[&str]) -> Identity {
        let memory = MemoryIdentity::default();
        if let Ok(mut s) = memory.super_admins.lock() {
            s.extend(ids.iter().map(|i| (*i).to_owned()));
        }
        Arc::new(memory)
    }

    #[tokio::test]
    async fn deactivate_twice_records_it_once_so_a_retry_converges() {
        expect_events(
            vec![created(), AdminUserEvent::Deactivated {}],
            deactivate(),
            vec![],
        )
        .await;
    }

    #[tokio::test]
    async fn deactivate_oneself_is_refused() {
        expect_error(
            vec![created()],
            AdminUserCommand::Deactivate {
                user_id: "u1".into(),
                by: "u1".into(),
            },
            AdminUserError::SelfDeactivation,
        )
        .await;
    }

    #[tokio::test]
    async fn deactivate_or_demote_the_last_super_admin_is_refused() {
        let demote = || AdminUserCommand::ChangeRole {
            user_id: "u1".into(),
            role: Role::TenantAdmin,
        };
        for command in [deactivate(), demote()] {
            TestFramework::<AdminUser>::with(with_super_admins(&["u1"]))
                .given(vec![super_admin()])
                .when_async(command)
                .await
                .then_expect_error(AdminUserError::LastSuperAdmin);
        }
        TestFramework::<AdminUser>::with(with_super_admins(&["u1", "u2"]))
            .given(vec![super_admin()])
            .when_async(deactivate())
            .await
            .then_expect_events(vec![AdminUserEvent::Deactivated {}]);
    }

    #[tokio::test]
    async fn deactivate_and_reactivate_alternate() {
        expect_events(
            vec![created()],
            deactivate(),
            vec![AdminUserEvent::Deactivated {}],
        )
        .await;
        expect_events(
            vec![created(), AdminUserEvent::Deactivated {}],
            AdminUserCommand::Reactivate,
            vec![AdminUserEvent::Reactivated {}],
        )
        .await;
        expect_error(
            vec![created()],
            AdminUserCommand::Reactivate,
            AdminUserError::Active,
        )
        .await;
    }

    #[tokio::test]
    async fn change_password_needs_the_current_one_and_a_strong_new_one() {
        let change = |current: &str, new: &str| AdminUserCommand::ChangePassword {
            user_id: "u1".into(),
            current: current.into(),
            new: new.into(),
            kept_session: Some("s1".into()),
            at: at(0),
        };
        // The event names the session that goes on and the staged hash (its id only).
        expect_events(
            vec![created()],
            change(PASSWORD, "a brand new password"),
            vec![AdminUserEvent::PasswordChanged {
                kept_session: Some("s1".into()),
                credential: Some("credential-1".into()),
            }],
        )
        .await;
        expect_events(
            vec![created()],
            change("guess", "a brand new password"),
            vec![AdminUserEvent::LoginFailed {
                reason: LoginFailure::WrongPassword,
                at: at(0),
            }],
        )
        .await;
        expect_error(
            vec![created()],
            change(PASSWORD, "short"),
            AdminUserError::WeakPassword,
        )
        .await;
    }

    #[tokio::test]
    async fn change_password_with_a_wrong_current_one_counts_toward_the_lock_and_is_refused_while_locked(
    ) {
        let change = |current: &str, minute: i64| AdminUserCommand::ChangePassword {
            user_id: "u1".into(),
            current: current.into(),
            new: "a brand new password".into(),
            kept_session: None,
            at: at(minute),
        };
        let mut history = vec![created()];
        for minute in 0..4 {
            history.push(AdminUserEvent::LoginFailed {
                reason: LoginFailure::WrongPassword,
                at: at(minute),
            });
        }
        expect_events(
            history.clone(),
            change("guess", 4),
            vec![
                AdminUserEvent::LoginFailed {
                    reason: LoginFailure::WrongPassword,
                    at: at(4),
                },
                AdminUserEvent::LockedOut {
                    until: at(4) + LOCK_FOR,
                },
            ],
        )
        .await;
        history.push(AdminUserEvent::LockedOut { until: at(20) });
        // Not even the right password is checked while locked.
        expect_error(history, change(PASSWORD, 5), AdminUserError::Locked).await;
    }

    #[tokio::test]
    async fn a_password_reset_sets_a_strong_password_and_lifts_a_lock() {
        let reset = |new: &str| AdminUserCommand::ResetPassword {
            user_id: "u1".into(),
            new: new.into(),
        };
        let locked = vec![created(), AdminUserEvent::LockedOut { until: at(15) }];
        expect_events(
            locked.clone(),
            reset("a fresh long password"),
            vec![AdminUserEvent::PasswordReset {
                credential: Some("credential-1".into()),
            }],
        )
        .await;
        expect_error(locked, reset("short"), AdminUserError::WeakPassword).await;
        let mut reset_then_login = vec![
            created(),
            AdminUserEvent::LockedOut { until: at(15) },
            AdminUserEvent::PasswordReset { credential: None },
        ];
        reset_then_login.truncate(3);
        expect_events(reset_then_login, login(PASSWORD, 1), vec![succeeded(1)]).await;
        let issue = || AdminUserCommand::IssuePasswordReset {
            expires_at: at(60),
            reset: "r1".into(),
        };
        expect_error(
            vec![created(), AdminUserEvent::Deactivated {}],
            issue(),
            AdminUserError::Inactive,
        )
        .await;
        // The event names the staged reset its transaction stores and sends.
        expect_events(
            vec![created()],
            issue(),
            vec![AdminUserEvent::PasswordResetIssued {
                expires_at: at(60),
                reset: Some("r1".into()),
            }],
        )
        .await;
    }

    #[tokio::test]
    async fn revoke_session_is_recorded() {
        expect_events(
            vec![created()],
            AdminUserCommand::RevokeSession {
                session_id: "s1".into(),
                reason: SessionEnd::RefreshReuse,
            },
            vec![AdminUserEvent::SessionRevoked {
                session_id: "s1".into(),
                reason: SessionEnd::RefreshReuse,
            }],
        )
        .await;
    }

    #[test]
    fn commands_never_print_passwords() {
        let text = format!("{:?}", login("hunter2-secret", 0));
        assert!(!text.contains("hunter2"), "{text}");
    }
}
