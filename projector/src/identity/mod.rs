//! Read models of admin users: `admin_users` (who, role, department, active, last login) and
//! `admin_logins` (every login attempt, lock and session end, for audits); and of phone users:
//! `phone_user_directory` ([`phone_users`]).

/// Which phone users each tenant has.
pub mod phone_users;

use async_trait::async_trait;
use events::identity::{AdminUserEvent, LoginFailure, SessionEnd, ADMIN_USER};
use events::Envelope;
use sqlx::PgConnection;

use crate::projection::{Projection, ProjectionError, Target};

/// A value an update binds as `$4`.
enum Value {
    Text(Option<String>),
    Time(chrono::DateTime<chrono::Utc>),
}

/// Admin users and their login history.
pub struct AdminUsersProjection;

/// Overwrites with `[erased]` the login e-mail of erased staff member `subject`
/// (docs/privacy.md): the live `admin_users`, in the caller's transaction. Their `Created`
/// event still holds it in clear (sealing staff e-mails is to come), so a rebuild shows it
/// again.
pub async fn redact_subject(
    conn: &mut PgConnection,
    subject: uuid::Uuid,
    kind: &str,
) -> Result<(), ProjectionError> {
    if kind == "admin_user" {
        sqlx::query("UPDATE admin_users SET email = $2 WHERE id = $1")
            .bind(subject.to_string())
            .bind(events::personal::ERASED)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

fn snake<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[async_trait]
impl Projection for AdminUsersProjection {
    fn name(&self) -> &'static str {
        "admin_users"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[ADMIN_USER]
    }

    fn tables(&self) -> &'static [&'static str] {
        &["admin_users", "admin_logins"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        target: &Target,
        e: &Envelope,
    ) -> Result<(), ProjectionError> {
        let event: AdminUserEvent = serde_json::from_value(e.payload.clone()).map_err(|err| {
            ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: err.to_string(),
            }
        })?;
        let users = target.table("admin_users");
        let logins = target.table("admin_logins");
        let (id, at, version) = (&e.aggregate_id, e.recorded_at, e.sequence as i64);
        record_login(conn, &logins, e, &event).await?;
        // The columns each later event changes; `$4` is bound only when the event has a value.
        let (set, value): (&str, Option<Value>) = match event {
            AdminUserEvent::Created {
                email,
                role,
                department,
                ..
            } => {
                sqlx::query(&format!(
                    "INSERT INTO {users} (id, tenant_id, email, role, department, active, created_at, updated_at, version)
                     VALUES ($1, $2, $3, $4, $5, true, $6, $6, $7)"
                ))
                .bind(id)
                .bind(e.tenant_id())
                .bind(email)
                .bind(snake(&role))
                .bind(department)
                .bind(at)
                .bind(version)
                .execute(&mut *conn)
                .await?;
                return Ok(());
            }
            AdminUserEvent::RoleChanged { role } => {
                ("role = $4", Some(Value::Text(Some(snake(&role)))))
            }
            AdminUserEvent::DepartmentChanged { department } => {
                ("department = $4", Some(Value::Text(department)))
            }
            AdminUserEvent::Deactivated {} => ("active = false", None),
            AdminUserEvent::Reactivated {} => ("active = true", None),
            AdminUserEvent::LoginSucceeded { at: when, .. } => {
                ("last_login_at = $4", Some(Value::Time(when)))
            }
            AdminUserEvent::PasswordChanged { .. }
            | AdminUserEvent::PasswordResetIssued { .. }
            | AdminUserEvent::PasswordReset { .. }
            | AdminUserEvent::LoginFailed { .. }
            | AdminUserEvent::LockedOut { .. }
            | AdminUserEvent::SessionRevoked { .. } => ("", None),
        };
        let set = if set.is_empty() {
            String::new()
        } else {
            format!("{set}, ")
        };
        let sql = format!("UPDATE {users} SET {set}updated_at = $2, version = $3 WHERE id = $1");
        let query = sqlx::query(&sql).bind(id).bind(at).bind(version);
        let query = match value {
            None => query,
            Some(Value::Text(text)) => query.bind(text),
            Some(Value::Time(time)) => query.bind(time),
        };
        let rows = query.execute(&mut *conn).await?.rows_affected();
        if rows != 1 {
            return Err(ProjectionError::Undecodable {
                event_id: e.event_id(),
                reason: format!("admin user row {id} is missing"),
            });
        }
        Ok(())
    }
}

/// The row of the login history an event is, if it is one.
async fn record_login(
    conn: &mut PgConnection,
    logins: &str,
    e: &Envelope,
    event: &AdminUserEvent,
) -> Result<(), ProjectionError> {
    // A row of the login history, for the events that are one.
    let history = |outcome: String, session: Option<String>, when| (outcome, session, when);
    let entry = match event {
        AdminUserEvent::LoginSucceeded { session_id, at } => {
            Some(history("succeeded".into(), Some(session_id.clone()), *at))
        }
        AdminUserEvent::LoginFailed { reason, at } => {
            Some(history(snake::<LoginFailure>(reason), None, *at))
        }
        AdminUserEvent::LockedOut { .. } => Some(history("locked_out".into(), None, e.recorded_at)),
        AdminUserEvent::SessionRevoked { session_id, reason } => Some(history(
            snake::<SessionEnd>(reason),
            Some(session_id.clone()),
            e.recorded_at,
        )),
        _ => None,
    };
    if let Some((outcome, session_id, when)) = entry {
        sqlx::query(&format!(
            "INSERT INTO {logins} (user_id, sequence, tenant_id, outcome, session_id, at) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&e.aggregate_id)
        .bind(e.sequence as i64)
        .bind(e.tenant_id())
        .bind(outcome)
        .bind(session_id)
        .bind(when)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The context has no settings of its own.
pub use crate::context::NoSettings as Settings;

/// The identity context: admin users and their logins, and the tenants' phone users.
pub struct Context;

impl crate::context::BoundedContext for Context {
    type Settings = Settings;

    fn projections(
        _setup: &crate::context::Setup<'_>,
        _settings: &Settings,
    ) -> Vec<std::sync::Arc<dyn crate::projection::Projection>> {
        vec![
            std::sync::Arc::new(AdminUsersProjection),
            std::sync::Arc::new(phone_users::PhoneUsersProjection),
        ]
    }
}
