//! Refresh tokens: random, shown to the client once, stored only as SHA-256.
//!
//! A session is a family of refresh tokens. Each refresh spends the token presented and
//! issues the next one of the family. Presenting a spent token means two parties hold the
//! family (the token was stolen, or a client retried a refresh it already got an answer
//! to), so the whole family is revoked; the caller records that on the user's stream.

use base64::Engine;
use chrono::{DateTime, Utc};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgPool};

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Spent and replaced by `token`.
    Rotated {
        /// The user.
        user_id: String,
        /// The family.
        session_id: String,
        /// The next refresh token of the family.
        token: String,
    },
    /// A spent token came back: the family is now revoked.
    Reused {
        /// The user.
        user_id: String,
        /// The revoked family.
        session_id: String,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

/// The `admin_sessions` table.
#[derive(Clone)]
pub struct Sessions {
    /// Command-side pool.
    pool: PgPool,
    /// How long a refresh token stays valid.
    ttl: chrono::Duration,
    /// Sessions one user may hold at once.
    per_user: i64,
}

/// A fresh random token (256 bits, base64url).
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// How a token is stored: its SHA-256.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

impl Sessions {
    /// Sessions whose refresh tokens live `ttl`.
    pub fn new(pool: PgPool, ttl: std::time::Duration) -> Self {
        Self {
            pool,
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::days(30)),
            per_user: 20,
        }
    }

    /// At most `per_user` sessions per user: opening one more ends the least recently used.
    pub fn with_limit(mut self, per_user: i64) -> Self {
        self.per_user = per_user.max(1);
        self
    }

    /// Stages a family for the session a login is about to open; answers its first refresh
    /// token, which works once the login's `LoginSucceeded` is appended (migration 0024
    /// makes it active in that transaction, so a deactivation appended after the login sees
    /// it).
    pub async fn stage(&self, user_id: &str, session_id: &str) -> Result<String, sqlx::Error> {
        let token = new_token();
        self.insert(&self.pool, &token, user_id, session_id, "pending")
            .await?;
        Ok(token)
    }

    /// Removes the family a login staged and did not open.
    pub async fn discard(&self, session_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM admin_sessions WHERE session_id = $1 AND status = 'pending'")
            .bind(session_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// After a login opened a session: beyond the limit, the sessions used least recently
    /// end; answers them.
    pub async fn opened(&self, user_id: &str) -> Result<Vec<String>, sqlx::Error> {
        // Beyond the limit, the sessions used least recently (by their newest token) end:
        // a user signing in again and again does not pile up live sessions.
        sqlx::query_scalar(
            "WITH ended AS (
                UPDATE admin_sessions SET status = 'revoked'
                 WHERE user_id = $1 AND status <> 'revoked' AND session_id IN (
                       SELECT session_id FROM admin_sessions
                        WHERE user_id = $1 AND status = 'active'
                        GROUP BY session_id
                        ORDER BY max(created_at) DESC, session_id DESC
                       OFFSET $2)
                RETURNING session_id)
             SELECT DISTINCT session_id FROM ended",
        )
        .bind(user_id)
        .bind(self.per_user)
        .fetch_all(&self.pool)
        .await
    }

    async fn insert<'e, E: sqlx::PgExecutor<'e>>(
        &self,
        executor: E,
        token: &str,
        user_id: &str,
        session_id: &str,
        status: &str,
    ) -> Result<(), sqlx::Error> {
        let expires_at: DateTime<Utc> = Utc::now() + self.ttl;
        sqlx::query(
            "INSERT INTO admin_sessions (token_hash, session_id, user_id, status, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash(token))
        .bind(session_id)
        .bind(user_id)
        .bind(status)
        .bind(expires_at)
        .execute(executor)
        .await?;
        Ok(())
    }

    /// Spends `token` and issues the next of its family, or revokes the family if `token`
    /// was already spent. One transaction, the token's row locked: two concurrent refreshes
    /// with one token cannot both rotate.
    ///
    /// A family is ended as soon as any of its tokens is revoked ([`FAMILY_ENDED`]): a
    /// revocation running while a refresh rotates cannot see the token the refresh is
    /// inserting, and would leave it active (outside probe: a stolen token refreshed in a
    /// loop survived logouts and password changes that way). Such a token is refused, and
    /// revoked, when it is presented.
    pub async fn refresh(&self, token: &str) -> Result<Refresh, sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin().await?;
        let row: Option<(String, String, String, bool, bool)> = sqlx::query_as(&format!(
            "SELECT session_id, user_id, status, expires_at > now(), {FAMILY_ENDED}
               FROM admin_sessions s WHERE token_hash = $1 FOR UPDATE"
        ))
        .bind(hash(token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some((session_id, user_id, status, fresh, ended)) = row else {
            return Ok(Refresh::Invalid);
        };
        if ended && status != "revoked" {
            revoke_family(&mut tx, &session_id).await?;
            tx.commit().await?;
            return Ok(Refresh::Invalid);
        }
        let outcome = match decide(&status, fresh) {
            Decision::Rotate => {
                sqlx::query("UPDATE admin_sessions SET status = 'spent' WHERE token_hash = $1")
                    .bind(hash(token))
                    .execute(&mut *tx)
                    .await?;
                let next = new_token();
                self.insert(&mut *tx, &next, &user_id, &session_id, "active")
                    .await?;
                Refresh::Rotated {
                    user_id,
                    session_id,
                    token: next,
                }
            }
            Decision::RevokeFamily => {
                revoke_family(&mut tx, &session_id).await?;
                Refresh::Reused {
                    user_id,
                    session_id,
                }
            }
            Decision::Refuse => Refresh::Invalid,
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Revokes a whole family (a logout). A user's sessions end with the events that end
    /// them, in their transaction (migration 0024).
    pub async fn revoke(&self, session_id: &str) -> Result<(), sqlx::Error> {
        let mut conn = self.pool.acquire().await?;
        revoke_family(&mut conn, session_id).await
    }

    /// The family and user of a refresh token that is still usable.
    pub async fn owner(&self, token: &str) -> Result<Option<(String, String)>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT session_id, user_id FROM admin_sessions s
              WHERE token_hash = $1 AND status = 'active' AND expires_at > now()
                AND NOT {FAMILY_ENDED}"
        ))
        .bind(hash(token))
        .fetch_optional(&self.pool)
        .await
    }

    /// The tenant of the user whose active session `token` refreshes: `None` for no such
    /// session, `Some(None)` for a platform user.
    pub async fn tenant_of(&self, token: &str) -> Result<Option<Option<String>>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT e.tenant_id FROM admin_sessions s JOIN admin_emails e USING (user_id)
              WHERE s.token_hash = $1 AND s.status = 'active'",
        )
        .bind(hash(token))
        .fetch_optional(&self.pool)
        .await
    }

    /// Spends the password-reset token `token`, if it is outstanding and unexpired, and with
    /// it every other outstanding token of its user (an older reset e-mail must not set the
    /// password again after a newer one did): the user, or `None`.
    pub async fn spend_reset(&self, token: &str) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar(
            "WITH spent AS (
                 UPDATE admin_password_resets SET used_at = now()
                  WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now()
                  RETURNING user_id),
             others AS (
                 UPDATE admin_password_resets SET used_at = now()
                  WHERE user_id IN (SELECT user_id FROM spent)
                    AND token_hash <> $1 AND used_at IS NULL)
             SELECT user_id FROM spent",
        )
        .bind(hash(token))
        .fetch_optional(&self.pool)
        .await
    }

    /// Stages a reset token's hash and its e-mail for the reset `reset` of `user`; appending
    /// PasswordResetIssued stores the one and sends the other in its own transaction
    /// (migration 0042).
    pub async fn stage_reset(&self, staged: StagedReset<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO admin_password_reset_staging
                    (reset_id, user_id, token_hash, expires_at, tenant_id, recipient, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(staged.reset)
        .bind(staged.user_id)
        .bind(hash(staged.token))
        .bind(staged.expires_at)
        .bind(staged.tenant)
        .bind(staged.recipient)
        .bind(staged.body)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops a staged reset whose event was refused or failed (had it committed after all,
    /// its transaction took the row already).
    pub async fn unstage_reset(&self, reset: &str) {
        let _ = sqlx::query("DELETE FROM admin_password_reset_staging WHERE reset_id = $1")
            .bind(reset)
            .execute(&self.pool)
            .await;
    }

    /// True while the family has a usable refresh token (access tokens of a revoked family
    /// are reported inactive by introspection).
    pub async fn is_active(&self, session_id: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(&format!(
            "SELECT EXISTS (SELECT 1 FROM admin_sessions s
                             WHERE session_id = $1 AND status = 'active' AND expires_at > now()
                               AND NOT {FAMILY_ENDED})"
        ))
        .bind(session_id)
        .fetch_one(&self.pool)
        .await
    }
}

/// Whether the family of the `admin_sessions` row `s` has ended: any of its tokens revoked.
pub const FAMILY_ENDED: &str = "EXISTS (SELECT 1 FROM admin_sessions r
                 WHERE r.session_id = s.session_id AND r.status = 'revoked')";

/// What presenting a refresh token in a given state leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Spend it and issue the next of the family.
    Rotate,
    /// It was spent before: someone else holds the family; end it.
    RevokeFamily,
    /// Expired or revoked: refuse, change nothing.
    Refuse,
}

/// The rules of refresh tokens, as a pure function of the token's stored state.
fn decide(status: &str, unexpired: bool) -> Decision {
    match (status, unexpired) {
        ("active", true) => Decision::Rotate,
        // Reuse revokes even after expiry: a stolen family must not outlive its detection.
        ("spent", _) => Decision::RevokeFamily,
        _ => Decision::Refuse,
    }
}

async fn revoke_family(conn: &mut sqlx::PgConnection, session_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE admin_sessions SET status = 'revoked' WHERE session_id = $1 AND status <> 'revoked'")
        .bind(session_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// A password reset waiting for its event.
pub struct StagedReset<'a> {
    /// The reset's id.
    pub reset: &'a str,
    /// The user.
    pub user_id: &'a str,
    /// The one-time token (only its hash is kept).
    pub token: &'a str,
    /// When it stops working.
    pub expires_at: chrono::DateTime<chrono::Utc>,
    /// The user's tenant (the platform's for a super admin).
    pub tenant: &'a str,
    /// The user's e-mail.
    pub recipient: &'a str,
    /// The e-mail's text.
    pub body: &'a str,
}

#[cfg(test)]
mod tests {
    use super::{decide, Decision};

    #[test]
    fn refresh_with_an_active_token_rotates() {
        assert_eq!(decide("active", true), Decision::Rotate);
    }

    #[test]
    fn refresh_with_a_spent_token_revokes_the_family_even_after_expiry() {
        assert_eq!(decide("spent", true), Decision::RevokeFamily);
        assert_eq!(decide("spent", false), Decision::RevokeFamily);
    }

    #[test]
    fn refresh_with_an_expired_or_revoked_token_is_refused() {
        assert_eq!(decide("active", false), Decision::Refuse);
        assert_eq!(decide("revoked", true), Decision::Refuse);
    }
}
