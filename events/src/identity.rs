//! Events of the identity bounded context: admin users (aggregate type `admin_user`) and phone
//! sign-ins (`phone_login`), and the keyed hashes that name phone sign-ins and users.
//!
//! No secret ever enters these events: password hashes and refresh tokens live in
//! command-side tables; events say only that something happened. Login failures and
//! lockouts carry their own time, because the aggregate decides lockouts from them.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::access::Role;

/// The aggregate type name of admin users.
pub const ADMIN_USER: &str = "admin_user";

/// The tenant id in the metadata of a user that belongs to no tenant (a platform super
/// admin), so every event still has a tenant scope.
pub const PLATFORM_TENANT: &str = "platform";

/// Why a login was refused (recorded; never told to the caller, who gets one answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginFailure {
    /// The password did not match.
    WrongPassword,
    /// The account is locked after too many failures.
    Locked,
    /// The account is deactivated.
    Inactive,
    /// The password was right but the user's tenant is suspended.
    TenantSuspended,
}

/// Why a session (a refresh-token family) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// The user logged out.
    Logout,
    /// A spent refresh token was presented again: the family is presumed stolen.
    RefreshReuse,
    /// The user signed in once more than `SESSIONS_PER_USER` allows: the session used least
    /// recently ended.
    SessionLimit,
}

/// Something that happened to an admin user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum AdminUserEvent {
    /// The user was created (or invited) with an initial password.
    Created {
        /// Login e-mail, unique across admin users.
        email: String,
        /// Home tenant; absent for a platform super admin.
        tenant_id: Option<String>,
        /// Role.
        role: Role,
        /// Department inside the tenant, if any.
        department: Option<String>,
        /// The staged password hash this event makes the user's (its id only: the hash
        /// stays outside events; migration 0024). Absent in events written before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<String>,
    },
    /// The role changed.
    RoleChanged {
        /// New role.
        role: Role,
    },
    /// The user moved to another department (or to none).
    DepartmentChanged {
        /// New department.
        department: Option<String>,
    },
    /// The user can no longer sign in.
    Deactivated {},
    /// The user can sign in again.
    Reactivated {},
    /// The password changed (the hash is not here). Appending it makes the staged hash the
    /// password and ends the user's other sessions (migration 0024).
    PasswordChanged {
        /// The session that made the change, which goes on (absent: none goes on).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        kept_session: Option<String>,
        /// The staged password hash it makes the user's. Absent in events written before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<String>,
    },
    /// An admin issued a one-time password-reset token (sent by e-mail; only its hash is
    /// kept, outside events).
    PasswordResetIssued {
        /// When the token stops working.
        expires_at: DateTime<Utc>,
        /// The staged reset the event stores and sends in its transaction (the token's hash
        /// and its e-mail, outside events; migration 0042). Absent on earlier events.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reset: Option<String>,
    },
    /// The user set a new password with a reset token. Appending it makes the staged hash
    /// the password and ends every session of the user (migration 0024).
    PasswordReset {
        /// The staged password hash it makes the user's. Absent in events written before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        credential: Option<String>,
    },
    /// A login succeeded and opened a session.
    LoginSucceeded {
        /// The session (refresh-token family) it opened.
        session_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// A login was refused.
    LoginFailed {
        /// Why.
        reason: LoginFailure,
        /// When.
        at: DateTime<Utc>,
    },
    /// Too many failures: logins are refused until `until`.
    LockedOut {
        /// End of the lock.
        until: DateTime<Utc>,
    },
    /// A session ended; its refresh tokens no longer work.
    SessionRevoked {
        /// The session.
        session_id: String,
        /// Why.
        reason: SessionEnd,
    },
}

impl DomainEvent for AdminUserEvent {
    fn event_type(&self) -> String {
        match self {
            AdminUserEvent::Created { .. } => "Created",
            AdminUserEvent::RoleChanged { .. } => "RoleChanged",
            AdminUserEvent::DepartmentChanged { .. } => "DepartmentChanged",
            AdminUserEvent::Deactivated { .. } => "Deactivated",
            AdminUserEvent::Reactivated { .. } => "Reactivated",
            AdminUserEvent::PasswordChanged { .. } => "PasswordChanged",
            AdminUserEvent::PasswordResetIssued { .. } => "PasswordResetIssued",
            AdminUserEvent::PasswordReset { .. } => "PasswordReset",
            AdminUserEvent::LoginSucceeded { .. } => "LoginSucceeded",
            AdminUserEvent::LoginFailed { .. } => "LoginFailed",
            AdminUserEvent::LockedOut { .. } => "LockedOut",
            AdminUserEvent::SessionRevoked { .. } => "SessionRevoked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

/// Keyed hashes: codes, and the pseudonymous ids of phone sign-ins and phone users (`phone` is
/// the E.164 number). Shared: command-api names sign-ins and users with them, and query-api
/// finds the phone user a WhatsApp contact's number is, without reading command-side tables.
#[derive(Clone)]
pub struct PhoneKeys {
    /// HMAC key derived from the token secret.
    key: Vec<u8>,
}

impl PhoneKeys {
    /// Keys derived from the server secret (a distinct key per use, so a code hash can never
    /// be confused with a token signature).
    pub fn new(secret: &str) -> Self {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| {
                <Hmac<Sha256> as Mac>::new_from_slice(b"-").expect("a key of any length")
            });
        mac.update(b"phone-login/v1");
        Self {
            key: mac.finalize().into_bytes().to_vec(),
        }
    }

    fn hex(&self, parts: &[&str]) -> String {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.key) else {
            return String::new();
        };
        for part in parts {
            mac.update(part.as_bytes());
            mac.update(&[0]);
        }
        crate::hex::encode(&mac.finalize().into_bytes())
    }

    /// The aggregate id of the sign-ins of `phone` at `tenant`.
    pub fn login_id(&self, tenant: &str, phone: &str) -> String {
        self.hex(&["login", tenant, phone])[..32].to_owned()
    }

    /// The id of the phone user `phone` is at `tenant` (stable across sign-ins).
    pub fn user_id(&self, tenant: &str, phone: &str) -> String {
        let hex = self.hex(&["user", tenant, phone]);
        uuid::Uuid::from_slice(&crate::hex::decode(&hex[..32]).unwrap_or_default())
            .map(|u| {
                uuid::Builder::from_custom_bytes(*u.as_bytes())
                    .into_uuid()
                    .to_string()
            })
            .unwrap_or(hex)
    }

    /// The keyed hash of a code issued to sign-in `login_id`.
    pub fn code_hash(&self, login_id: &str, code: &str) -> String {
        self.hex(&["code", login_id, code])
    }
}

/// The aggregate type of phone sign-in challenges (one per tenant and phone number, named by
/// a keyed hash of both, so no number appears in ids).
pub const PHONE_LOGIN: &str = "phone_login";

/// Something that happened to a phone sign-in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum PhoneLoginEvent {
    /// A one-time code was issued (sent by SMS); only its keyed hash is kept.
    CodeIssued {
        /// HMAC-SHA256 of the code, keyed with a server secret.
        code_hash: String,
        /// When.
        at: DateTime<Utc>,
        /// When the code stops working.
        expires_at: DateTime<Utc>,
    },
    /// A wrong code was tried.
    CodeRejected {
        /// When.
        at: DateTime<Utc>,
        /// Tries left for the current code (0: it no longer works).
        attempts_left: u32,
    },
    /// The right code was given: the phone user is signed in.
    CodeVerified {
        /// The phone user (a keyed hash of tenant and number).
        user_id: String,
        /// When.
        at: DateTime<Utc>,
    },
    /// The phone user changed their profile. The values are personal data and live in
    /// `phone_users`; the event names the fields only.
    ProfileUpdated {
        /// Which of `display_name`, `email`, `locale` changed.
        fields: Vec<String>,
    },
    /// Anonymous chatbot sessions the user had before signing in are theirs: the chat
    /// context moves their threads to the user.
    AnonymousLinked {
        /// The anonymous session ids.
        anonymous_ids: Vec<String>,
    },
}

impl DomainEvent for PhoneLoginEvent {
    fn event_type(&self) -> String {
        match self {
            PhoneLoginEvent::CodeIssued { .. } => "CodeIssued",
            PhoneLoginEvent::CodeRejected { .. } => "CodeRejected",
            PhoneLoginEvent::CodeVerified { .. } => "CodeVerified",
            PhoneLoginEvent::ProfileUpdated { .. } => "ProfileUpdated",
            PhoneLoginEvent::AnonymousLinked { .. } => "AnonymousLinked",
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1.0".to_owned()
    }
}

#[cfg(test)]
mod phone_key_tests {
    use super::PhoneKeys;

    /// The ids are HMAC-SHA256 under a key derived from the secret (`phone-login/v1`), over
    /// NUL-terminated parts; the values were computed apart from this code. Existing phone
    /// users keep their ids only as long as these hold.
    #[test]
    fn phone_ids_are_the_documented_keyed_hashes() {
        let keys = PhoneKeys::new("secret");
        assert_eq!(
            keys.user_id("t1", "+33612345678"),
            "3e8df3ac-80b6-8224-8a5b-aa39793b8b36"
        );
        assert_eq!(
            keys.login_id("t1", "+33612345678"),
            "398bc65da01736477ae44b11c80e73d3"
        );
    }
}
