//! What makes a signed, unexpired token stop working: an ended session, a deactivated user,
//! a changed role, a suspended tenant. The state is the `access_changes` table (migration
//! 0022), which triggers keep in the transaction of each change; both APIs hold it in memory
//! (the HTTP feature's `access` module follows it) and ask it about every token they accept.
//!
//! Only changes matter, never the whole directory: a token carries the role and tenant it was
//! issued with, and a login or refresh issues one only to an active user, so a token is
//! stale exactly when something changed after it was issued.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::access::{Claims, Role};

/// Why a token that verified is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its session ended (logout, password change, a reused refresh token, deactivation).
    #[error("the token's session has ended; sign in again")]
    SessionEnded,
    /// Its user is deactivated.
    #[error("the user is deactivated")]
    UserDeactivated,
    /// Its user's role changed since it was issued.
    #[error("the user's role changed; refresh the token")]
    RoleChanged,
    /// Its tenant is not active: suspended, turned down, or still awaiting approval.
    #[error("the tenant is not active (suspended, rejected or awaiting approval)")]
    TenantSuspended,
    /// Its user was erased as a data subject.
    #[error("the user's data was erased")]
    Erased,
    /// It is a chatbot user's, and the tenant switched its chatbot off.
    #[error("the tenant's chatbot is switched off")]
    ChatbotDisabled,
}

/// One row of `access_changes`, as stored and as notified.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Change {
    /// `session:{id}`, `user:{id}` or `tenant:{id}`.
    pub key: String,
    /// The state after the change (merged with earlier ones).
    pub state: serde_json::Value,
    /// The stream's sequence (users, tenants); 1 for sessions.
    pub version: i64,
}

/// The current state of an admin user, as far as events changed it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct UserState {
    /// `Some(false)` once deactivated (until reactivated).
    active: Option<bool>,
    /// The role since the last change.
    role: Option<Role>,
    /// Erased as a data subject (docs/privacy.md): for good.
    erased: bool,
    /// Sequence of the change this reflects.
    version: i64,
}

/// The revocations a process knows.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    /// Ended sessions, and when this process learnt of each.
    sessions: HashMap<String, Instant>,
    /// Admin users whose state changed.
    users: HashMap<String, UserState>,
    /// Tenants whose suspension or chatbot changed.
    tenants: HashMap<String, TenantState>,
}

/// The current state of a tenant, as far as events changed it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct TenantState {
    /// Suspended (until reactivated).
    suspended: bool,
    /// Its chatbot switched off in its preferences: its chatbot users' tokens stop.
    chatbot_disabled: bool,
    /// Sequence of the change this reflects.
    version: i64,
}

impl Revocations {
    /// Records a change. A change older than what is known (a notification heard after a
    /// reload that already held a newer state) changes nothing.
    pub fn apply(&mut self, change: &Change) {
        let Some((kind, id)) = change.key.split_once(':') else {
            return;
        };
        match kind {
            "session" => {
                self.sessions
                    .entry(id.to_owned())
                    .or_insert_with(Instant::now);
            }
            "user" => {
                let user = self.users.entry(id.to_owned()).or_default();
                if user.version >= change.version {
                    return;
                }
                user.version = change.version;
                user.erased = change.state.get("erased").and_then(|v| v.as_bool()) == Some(true);
                if let Some(active) = change.state.get("active").and_then(|v| v.as_bool()) {
                    user.active = Some(active);
                }
                if let Some(role) = change
                    .state
                    .get("role")
                    .and_then(|v| serde_json::from_value::<Role>(v.clone()).ok())
                {
                    user.role = Some(role);
                }
            }
            "tenant" => {
                let tenant = self.tenants.entry(id.to_owned()).or_default();
                if tenant.version < change.version {
                    // The state is the merge of every change so far.
                    let flag = |key: &str| {
                        change
                            .state
                            .get(key)
                            .and_then(|v| v.as_bool())
                            .unwrap_or(false)
                    };
                    *tenant = TenantState {
                        suspended: flag("suspended"),
                        chatbot_disabled: flag("chatbot_disabled"),
                        version: change.version,
                    };
                }
            }
            _ => {}
        }
    }

    /// Whether a verified token may still act.
    pub fn check(&self, claims: &Claims) -> Result<(), Refusal> {
        if claims.kind.as_deref() == Some("service") {
            return Ok(());
        }
        if let Some(sid) = &claims.sid {
            if self.sessions.contains_key(sid) {
                return Err(Refusal::SessionEnded);
            }
        }
        if let Some(user) = self.users.get(&claims.sub) {
            // An erased person's tokens stop, a phone user's as an admin's.
            if user.erased {
                return Err(Refusal::Erased);
            }
            if claims.role.is_some() {
                if user.active == Some(false) {
                    return Err(Refusal::UserDeactivated);
                }
                if user.role.is_some() && user.role != claims.role {
                    return Err(Refusal::RoleChanged);
                }
            }
        }
        match &claims.tenant_id {
            Some(tenant) if self.is_suspended(tenant) => Err(Refusal::TenantSuspended),
            Some(tenant)
                if claims.kind.as_deref() == Some("phone")
                    && self.tenants.get(tenant).is_some_and(|t| t.chatbot_disabled) =>
            {
                Err(Refusal::ChatbotDisabled)
            }
            _ => Ok(()),
        }
    }

    /// True while `tenant_id` is not active (suspended, rejected or awaiting approval: the
    /// `suspended` flag of `access_changes` means "not serving", migration 0039).
    pub fn is_suspended(&self, tenant_id: &str) -> bool {
        self.tenants.get(tenant_id).is_some_and(|t| t.suspended)
    }

    /// Forgets ended sessions learnt longer than `age` ago: every token they issued has
    /// expired by then (access tokens live at most a day), so a long-running process does
    /// not grow with every logout it ever saw.
    pub fn forget_sessions_older_than(&mut self, age: Duration) {
        self.sessions.retain(|_, learnt| learnt.elapsed() < age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admin(sub: &str, tenant: Option<&str>, role: Role, sid: Option<&str>) -> Claims {
        Claims {
            sub: sub.to_owned(),
            tenant_id: tenant.map(str::to_owned),
            role: Some(role),
            kind: None,
            iat: 0,
            exp: 0,
            jti: None,
            sid: sid.map(str::to_owned),
        }
    }

    fn phone(sub: &str, tenant: &str) -> Claims {
        Claims {
            kind: Some("phone".to_owned()),
            role: None,
            ..admin(sub, Some(tenant), Role::Agent, None)
        }
    }

    fn change(key: &str, state: serde_json::Value, version: i64) -> Change {
        Change {
            key: key.to_owned(),
            state,
            version,
        }
    }

    #[test]
    fn a_token_of_an_ended_session_is_refused_and_other_sessions_are_not() {
        let mut r = Revocations::default();
        r.apply(&change(
            "session:s1",
            serde_json::json!({"revoked": true}),
            1,
        ));
        let t = Some("t1");
        assert_eq!(
            r.check(&admin("u1", t, Role::TenantAdmin, Some("s1"))),
            Err(Refusal::SessionEnded)
        );
        assert_eq!(
            r.check(&admin("u1", t, Role::TenantAdmin, Some("s2"))),
            Ok(())
        );
    }

    #[test]
    fn ended_sessions_are_forgotten_once_their_tokens_have_expired() {
        let mut r = Revocations::default();
        r.apply(&change(
            "session:s1",
            serde_json::json!({"revoked": true}),
            1,
        ));
        let claims = admin("u1", None, Role::SuperAdmin, Some("s1"));
        r.forget_sessions_older_than(Duration::from_secs(3600));
        assert_eq!(r.check(&claims), Err(Refusal::SessionEnded), "still young");
        r.forget_sessions_older_than(Duration::ZERO);
        assert_eq!(r.check(&claims), Ok(()), "forgotten");
        assert!(r.sessions.is_empty());
    }

    #[test]
    fn a_deactivated_user_is_refused_until_reactivated() {
        let mut r = Revocations::default();
        let claims = admin("u1", Some("t1"), Role::Agent, None);
        r.apply(&change("user:u1", serde_json::json!({"active": false}), 3));
        assert_eq!(r.check(&claims), Err(Refusal::UserDeactivated));
        r.apply(&change("user:u1", serde_json::json!({"active": true}), 4));
        assert_eq!(r.check(&claims), Ok(()));
    }

    #[test]
    fn an_erased_persons_tokens_are_refused_for_good_phone_users_and_admins_alike() {
        let mut r = Revocations::default();
        let erased = serde_json::json!({"active": false, "erased": true});
        r.apply(&change("user:p1", erased.clone(), i64::MAX));
        r.apply(&change("user:u1", erased, i64::MAX));
        assert_eq!(r.check(&phone("p1", "t1")), Err(Refusal::Erased));
        assert_eq!(
            r.check(&admin("u1", Some("t1"), Role::TenantAdmin, None)),
            Err(Refusal::Erased)
        );
        assert_eq!(r.check(&phone("p2", "t1")), Ok(()), "another phone user");
        // A reactivation recorded later (an older stream version) brings nothing back.
        r.apply(&change("user:u1", serde_json::json!({"active": true}), 9));
        assert_eq!(
            r.check(&admin("u1", Some("t1"), Role::TenantAdmin, None)),
            Err(Refusal::Erased)
        );
    }

    #[test]
    fn a_token_with_a_role_the_user_no_longer_has_is_refused() {
        let mut r = Revocations::default();
        r.apply(&change("user:u1", serde_json::json!({"role": "agent"}), 2));
        assert_eq!(
            r.check(&admin("u1", Some("t1"), Role::TenantAdmin, None)),
            Err(Refusal::RoleChanged)
        );
        assert_eq!(r.check(&admin("u1", Some("t1"), Role::Agent, None)), Ok(()));
        assert_eq!(
            r.check(&admin("u2", Some("t1"), Role::TenantAdmin, None)),
            Ok(())
        );
    }

    #[test]
    fn an_older_change_heard_after_a_newer_one_changes_nothing() {
        let mut r = Revocations::default();
        r.apply(&change("user:u1", serde_json::json!({"active": false}), 5));
        r.apply(&change("user:u1", serde_json::json!({"active": true}), 4));
        assert_eq!(
            r.check(&admin("u1", None, Role::SuperAdmin, None)),
            Err(Refusal::UserDeactivated)
        );
        r.apply(&change(
            "tenant:t1",
            serde_json::json!({"suspended": false}),
            7,
        ));
        r.apply(&change(
            "tenant:t1",
            serde_json::json!({"suspended": true}),
            6,
        ));
        assert!(!r.is_suspended("t1"));
    }

    #[test]
    fn a_suspended_tenant_refuses_its_admins_and_its_chatbot_users_but_not_the_platform() {
        let mut r = Revocations::default();
        r.apply(&change(
            "tenant:t1",
            serde_json::json!({"suspended": true}),
            2,
        ));
        assert_eq!(
            r.check(&admin("u1", Some("t1"), Role::TenantAdmin, None)),
            Err(Refusal::TenantSuspended)
        );
        assert_eq!(r.check(&phone("p1", "t1")), Err(Refusal::TenantSuspended));
        assert_eq!(r.check(&phone("p1", "t2")), Ok(()));
        assert_eq!(
            r.check(&admin("root", None, Role::SuperAdmin, None)),
            Ok(())
        );
    }

    #[test]
    fn a_tenant_that_switched_its_chatbot_off_refuses_its_chatbot_users_only() {
        let mut r = Revocations::default();
        r.apply(&change(
            "tenant:t1",
            serde_json::json!({"chatbot_disabled": true}),
            3,
        ));
        assert_eq!(r.check(&phone("p1", "t1")), Err(Refusal::ChatbotDisabled));
        assert_eq!(r.check(&admin("u1", Some("t1"), Role::Agent, None)), Ok(()));
        assert!(!r.is_suspended("t1"));
        // Suspended later, the merged state keeps both.
        r.apply(&change(
            "tenant:t1",
            serde_json::json!({"chatbot_disabled": true, "suspended": true}),
            4,
        ));
        assert_eq!(r.check(&phone("p1", "t1")), Err(Refusal::TenantSuspended));
        r.apply(&change(
            "tenant:t1",
            serde_json::json!({"chatbot_disabled": false, "suspended": false}),
            5,
        ));
        assert_eq!(r.check(&phone("p1", "t1")), Ok(()));
    }
}
