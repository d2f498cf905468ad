//! The database schema every process shares: one migrator runs at a time, and a process
//! that does not migrate waits for the schema it was built for.
//!
//! sqlx's migrator takes a session advisory lock and waits for it inside a statement. A
//! migration that builds an index `CONCURRENTLY` waits, in turn, for every transaction that
//! holds a snapshot — such as that waiting statement — so two processes migrating at once
//! (command-api and the projector started together on a new database, or after an upgrade)
//! could each wait for the other until PostgreSQL broke the deadlock by failing one. Here the
//! lock is only ever *tried*, between short statements, so a waiting process holds nothing.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::{Connection, PgConnection};

/// The advisory lock key migrations are run under.
const LOCK: &str = "SELECT pg_try_advisory_lock(hashtext('platform:migrations'))";

/// Runs `migrator` on `url` once no other process is migrating.
pub async fn migrate(url: &str, migrator: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
    // One connection, so the session that took the lock is the one that migrates.
    let session = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await?;
    while !sqlx::query_scalar::<_, bool>(LOCK)
        .fetch_one(&session)
        .await?
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let outcome = migrator.run(&session).await;
    // Closing the session releases the lock, whatever happened.
    session.close().await;
    outcome
}

/// Waits, at most `within`, until every migration of `migrator` has been applied to `url` by
/// a process that migrates (a service that only reads must not start on an older schema).
pub async fn wait_for(url: &str, migrator: &Migrator, within: Duration) -> Result<(), sqlx::Error> {
    let Some(latest) = migrator.iter().map(|m| m.version).max() else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + within;
    let mut conn = PgConnection::connect(url).await?;
    loop {
        let applied: Option<bool> =
            sqlx::query_scalar("SELECT bool_and(success) FROM _sqlx_migrations WHERE version = $1")
                .bind(latest)
                .fetch_one(&mut conn)
                .await
                .unwrap_or(None);
        if applied == Some(true) {
            let _ = conn.close().await;
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(sqlx::Error::Protocol(format!(
                "the database schema is not at migration {latest}: start command-api (or the projector), which migrates it"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
