//! One password check at a time per admin user, across every command-api process.
//!
//! The lockout is decided from the user's events, but checking a password takes tens of
//! milliseconds and its outcome is committed only after: parallel attempts would each pass
//! the lock check on the state they loaded and each get their guess checked, so a burst of
//! N guesses would be N checks however few failures get recorded. Holding a per-user lock
//! from before the aggregate is loaded until its events are committed makes each attempt
//! see the ones before it.

use std::future::Future;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

/// `pg_advisory_xact_lock`'s first key for these locks ('admn' in ASCII); the second is the
/// user id's hash. Two-integer keys cannot meet the relay's one-bigint lock.
const LOCK_CLASS: i32 = 1_634_560_366;

/// Serialises password attempts per user.
#[derive(Clone)]
pub struct PasswordAttempts {
    /// A pool of its own: a request holds one of these connections while it waits for a
    /// command connection, so drawing both from one pool could exhaust it with waiters.
    pool: PgPool,
}

impl PasswordAttempts {
    /// Locks taken through connections like `pool`'s, at most `connections` at a time.
    pub fn new(pool: &PgPool, connections: u32) -> Self {
        Self {
            pool: PgPoolOptions::new()
                .max_connections(connections.max(1))
                .connect_lazy_with((*pool.connect_options()).clone()),
        }
    }

    /// Runs `attempt` while no other attempt on `user_id` runs. The lock is transaction
    /// level: a request dropped half-way releases it with its connection's rollback.
    pub async fn one_at_a_time<T>(
        &self,
        user_id: &str,
        attempt: impl Future<Output = T>,
    ) -> Result<T, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(LOCK_CLASS)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let outcome = attempt.await;
        // The attempt's outcome stands whatever happens to the lock's connection now: a
        // failed rollback means a broken connection, and the lock ends with it.
        let _ = tx.rollback().await;
        Ok(outcome)
    }
}
