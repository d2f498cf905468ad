//! What the admin-user aggregate needs from outside its stream: e-mail uniqueness and
//! password hashes, which never enter events.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use async_trait::async_trait;
use rand_core::OsRng;
use sqlx::PgPool;

/// E-mail reservations and password hashes.
#[async_trait]
pub trait IdentityServices: Send + Sync {
    /// Whether a login e-mail (lower-cased) is free for `user_id`: no other user that exists
    /// holds it. The e-mail is taken in the transaction that appends the user's `Created`
    /// (migration 0042), so a create that never commits holds nothing, and two creates racing
    /// for one address cannot both commit.
    async fn email_is_free(&self, email: &str, user_id: &str) -> Result<bool, String>;
    /// Hashes `password` and stages the hash for `user_id` under a fresh credential id,
    /// which it answers: the hash becomes the user's password in the transaction that
    /// appends the event naming that id (migration 0024), so a command that does not commit
    /// changes nothing.
    async fn stage_password(&self, user_id: &str, password: &str) -> Result<String, String>;
    /// Stages login e-mail `email` (lower-cased) of new user `user_id` of home tenant
    /// `tenant` (none: a super admin) for the `Created` event that reserves it (migration
    /// 0060), and answers it sealed for the user, as the event holds it (docs/privacy.md).
    async fn stage_email(
        &self,
        user_id: &str,
        tenant: Option<&str>,
        email: &str,
    ) -> Result<String, String>;
    /// True if `password` is `user_id`'s password.
    async fn check_password(&self, user_id: &str, password: &str) -> Result<bool, String>;
    /// How many active super admins there are besides `user_id` (`admin_roles`, kept in the
    /// transaction of each role or activity change: migration 0040).
    async fn other_active_super_admins(&self, user_id: &str) -> Result<i64, String>;
}

/// argon2id with the crate's defaults (19 MiB, 2 passes, 1 lane: OWASP's minimum), off the
/// async threads.
pub async fn hash_password(password: &str) -> Result<String, String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Checks `password` against a PHC hash, off the async threads.
pub async fn verify_password(hash: &str, password: &str) -> Result<bool, String> {
    let (hash, password) = (hash.to_owned(), password.to_owned());
    tokio::task::spawn_blocking(move || {
        let parsed = PasswordHash::new(&hash).map_err(|e| e.to_string())?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Counts one password check (a real one, or a login's decoy that spends the same time).
pub fn count_password_check(metrics: &events::http::Metrics) {
    metrics.count(
        "auth_password_checks_total",
        "Admin password checks (logins, including decoys for refused ones, and password changes).",
        &[],
        1.0,
    );
}

/// The tables of migration 0006, and the keys staff e-mails are sealed with.
pub struct PgIdentity {
    /// Command-side pool.
    pub pool: PgPool,
    /// The data keys of personal data.
    pub keyring: events::keyring::Keyring,
    /// Where password checks are counted (`auth_password_checks_total`).
    pub metrics: Arc<events::http::Metrics>,
}

#[async_trait]
impl IdentityServices for PgIdentity {
    async fn other_active_super_admins(&self, user_id: &str) -> Result<i64, String> {
        sqlx::query_scalar(
            "SELECT count(*) FROM admin_roles
              WHERE role = 'super_admin' AND active AND user_id <> $1",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    async fn email_is_free(&self, email: &str, user_id: &str) -> Result<bool, String> {
        // A row whose user has no events is what a create that never committed left before
        // reservations moved into the event's transaction: it holds nothing.
        sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM admin_emails a
                                 WHERE a.email = $1 AND a.user_id <> $2
                                   AND EXISTS (SELECT 1 FROM events e
                                                WHERE e.aggregate_type = 'admin_user'
                                                  AND e.aggregate_id = a.user_id))",
        )
        .bind(email)
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| e.to_string())
    }

    async fn stage_password(&self, user_id: &str, password: &str) -> Result<String, String> {
        let hash = hash_password(password).await?;
        let credential = uuid::Uuid::new_v4().to_string();
        sqlx::query(
            "INSERT INTO admin_credential_changes (credential_id, user_id, password_hash)
             VALUES ($1, $2, $3)",
        )
        .bind(&credential)
        .bind(user_id)
        .bind(hash)
        .execute(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        Ok(credential)
    }

    async fn stage_email(
        &self,
        user_id: &str,
        tenant: Option<&str>,
        email: &str,
    ) -> Result<String, String> {
        let id = uuid::Uuid::try_parse(user_id).map_err(|e| e.to_string())?;
        sqlx::query(
            "INSERT INTO admin_email_staging (user_id, email) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET email = excluded.email, staged_at = now()",
        )
        .bind(user_id)
        .bind(email)
        .execute(&self.pool)
        .await
        .map_err(|e| e.to_string())?;
        let subject = events::keyring::Subject {
            id,
            kind: events::keyring::SubjectKind::AdminUser,
            tenant_id: tenant.unwrap_or(events::identity::PLATFORM_TENANT),
        };
        self.keyring
            .seal(subject, email)
            .await
            .map_err(|e| e.to_string())
    }

    async fn check_password(&self, user_id: &str, password: &str) -> Result<bool, String> {
        let hash: Option<String> =
            sqlx::query_scalar("SELECT password_hash FROM admin_credentials WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| e.to_string())?;
        count_password_check(&self.metrics);
        match hash {
            Some(hash) => verify_password(&hash, password).await,
            None => Ok(false),
        }
    }
}

/// The services handle, as the aggregate takes it.
pub type Identity = Arc<dyn IdentityServices>;

/// In-memory services for aggregate tests (passwords compared in clear).
#[cfg(test)]
#[derive(Default)]
pub struct MemoryIdentity {
    /// e-mail → user.
    pub emails: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// user → password.
    pub passwords: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Passwords staged so far.
    pub staged: std::sync::atomic::AtomicU64,
    /// Active super admins.
    pub super_admins: std::sync::Mutex<Vec<String>>,
}

#[cfg(test)]
#[async_trait]
impl IdentityServices for MemoryIdentity {
    async fn other_active_super_admins(&self, user_id: &str) -> Result<i64, String> {
        Ok(self
            .super_admins
            .lock()
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|u| *u != user_id)
            .count() as i64)
    }

    async fn email_is_free(&self, email: &str, user_id: &str) -> Result<bool, String> {
        let emails = self.emails.lock().map_err(|e| e.to_string())?;
        Ok(emails.get(email).is_none_or(|holder| holder == user_id))
    }

    /// Sets the password at once (no transaction to wait for here) and names it
    /// `credential-{n}`, n counting from 1, so tests can expect the events.
    async fn stage_password(&self, user_id: &str, password: &str) -> Result<String, String> {
        let mut passwords = self.passwords.lock().map_err(|e| e.to_string())?;
        passwords.insert(user_id.to_owned(), password.to_owned());
        let n = self
            .staged
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        Ok(format!("credential-{n}"))
    }

    /// The address as it is: tests see what the event would name.
    async fn stage_email(
        &self,
        _user_id: &str,
        _tenant: Option<&str>,
        email: &str,
    ) -> Result<String, String> {
        Ok(email.to_owned())
    }

    async fn check_password(&self, user_id: &str, password: &str) -> Result<bool, String> {
        Ok(self
            .passwords
            .lock()
            .map_err(|e| e.to_string())?
            .get(user_id)
            .is_some_and(|p| p == password))
    }
}
