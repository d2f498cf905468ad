//! The revocations both APIs check every token against, followed from PostgreSQL.
//!
//! [`Access::follow`] loads `access_changes` and keeps listening on its NOTIFY channel, which
//! PostgreSQL delivers at commit to every listening process: a logout, a deactivation or a
//! suspension in one process takes effect in all of them within milliseconds. While the
//! listening connection is down, notifications may be missed, so after a second without it
//! every check answers [`AccessError::Unavailable`] (a 503) rather than trust a stale list;
//! each reconnection reloads the table before checks pass again. A connection cut off
//! silently (no reset ever arrives) is found by heartbeats: every process notifies the
//! channel several times a second, and a listener that hears nothing for a second is
//! replaced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;

use crate::access::Claims;
use crate::revocation::{Change, Refusal, Revocations};

/// The NOTIFY channel of `access_changes` (migration 0022).
const CHANNEL: &str = "access_changes";
/// How long checks keep passing after the listening connection dropped.
const GRACE: Duration = Duration::from_secs(1);
/// How often each process sends a heartbeat on the channel.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(300);
/// How long the listener may hear nothing (not even a heartbeat, its own or another
/// process's) before it is presumed cut off silently (a dropped route, a firewall that
/// forgets the connection): it is then replaced and the table reloaded.
const SILENCE: Duration = Duration::from_secs(1);
/// How long an ended session is remembered in memory: longer than any access token lives
/// (at most a day).
const REMEMBER_SESSIONS: Duration = Duration::from_secs(25 * 3600);
/// The payload of a heartbeat.
const HEARTBEAT: &str = "heartbeat";

/// Why a check did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// The token no longer works.
    #[error("{0}")]
    Refused(Refusal),
    /// Revocations cannot be vouched for (PostgreSQL unreachable for more than a second).
    #[error("token revocations are unavailable")]
    Unavailable,
}

/// The revocations this process knows, shared by every request.
#[derive(Clone)]
pub struct Access {
    inner: Arc<Inner>,
}

struct Inner {
    /// The known revocations.
    revocations: RwLock<Revocations>,
    /// True while the listener is connected and the table was loaded after it connected.
    live: AtomicBool,
    /// Set when the listener dropped; the grace period runs from here.
    lost_at: RwLock<Option<tokio::time::Instant>>,
    /// Bumped on every applied change, so open streams re-check their token.
    changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Access(..)")
    }
}

impl Access {
    /// Loads the revocations and follows them for as long as the process runs. `prune`
    /// (the longest a token lives, plus margin) also deletes ended sessions older than that
    /// on each load and hourly: the writer of tokens passes it, readers pass `None`.
    pub async fn follow(pool: PgPool, prune: Option<Duration>) -> Result<Self, sqlx::Error> {
        let access = Self {
            inner: Arc::new(Inner {
                revocations: RwLock::new(Revocations::default()),
                live: AtomicBool::new(false),
                lost_at: RwLock::new(None),
                changes: tokio::sync::watch::channel(0).0,
            }),
        };
        let listener = access.connect(&pool, prune).await?;
        let follower = access.clone();
        tokio::spawn(async move { follower.run(pool, prune, listener).await });
        Ok(access)
    }

    /// Revocations from a fixed list, followed from nowhere (unit tests of handlers).
    pub fn fixed(changes: &[Change]) -> Self {
        let mut revocations = Revocations::default();
        for change in changes {
            revocations.apply(change);
        }
        Self {
            inner: Arc::new(Inner {
                revocations: RwLock::new(revocations),
                live: AtomicBool::new(true),
                lost_at: RwLock::new(None),
                changes: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    /// Whether a verified token may still act.
    pub fn check(&self, claims: &Claims) -> Result<(), AccessError> {
        if !self.inner.live.load(Ordering::Acquire) {
            let lost_at = *self
                .inner
                .lost_at
                .read()
                .map_err(|_| AccessError::Unavailable)?;
            if lost_at.is_none_or(|at| at.elapsed() > GRACE) {
                return Err(AccessError::Unavailable);
            }
        }
        self.inner
            .revocations
            .read()
            .map_err(|_| AccessError::Unavailable)?
            .check(claims)
            .map_err(AccessError::Refused)
    }

    /// True while `tenant_id` is suspended.
    pub fn is_suspended(&self, tenant_id: &str) -> bool {
        self.inner
            .revocations
            .read()
            .is_ok_and(|r| r.is_suspended(tenant_id))
    }

    /// True while revocations are followed (readiness).
    pub fn is_live(&self) -> bool {
        self.inner.live.load(Ordering::Acquire)
    }

    /// Changes as they are applied: a stream that holds a token re-checks it on each.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Listens, then loads: a change committed between the two is both loaded and heard,
    /// never neither.
    async fn connect(
        &self,
        pool: &PgPool,
        prune: Option<Duration>,
    ) -> Result<PgListener, sqlx::Error> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        if let Some(age) = prune {
            prune_sessions(pool, age).await?;
        }
        let rows: Vec<(String, serde_json::Value, i64)> =
            sqlx::query_as("SELECT key, state, version FROM access_changes")
                .fetch_all(pool)
                .await?;
        for (key, state, version) in rows {
            self.apply(&Change {
                key,
                state,
                version,
            });
        }
        self.inner.live.store(true, Ordering::Release);
        Ok(listener)
    }

    fn apply(&self, change: &Change) {
        if let Ok(mut revocations) = self.inner.revocations.write() {
            revocations.apply(change);
        }
        self.inner.changes.send_modify(|n| *n += 1);
    }

    fn lose(&self) {
        if let Ok(mut lost_at) = self.inner.lost_at.write() {
            *lost_at = Some(tokio::time::Instant::now());
        }
        self.inner.live.store(false, Ordering::Release);
    }

    async fn run(self, pool: PgPool, prune: Option<Duration>, mut listener: PgListener) {
        // Every process forgets, hourly, the ended sessions whose tokens have all expired.
        {
            let access = self.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Ok(mut revocations) = access.inner.revocations.write() {
                        revocations.forget_sessions_older_than(REMEMBER_SESSIONS);
                    }
                }
            });
        }
        if let Some(age) = prune {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(3600));
                tick.tick().await;
                loop {
                    tick.tick().await;
                    if let Err(e) = prune_sessions(&pool, age).await {
                        tracing::warn!(error = %e, "could not prune ended sessions");
                    }
                }
            });
        }
        {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(HEARTBEAT_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let _ = tokio::time::timeout(
                        SILENCE,
                        sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(CHANNEL)
                            .bind(HEARTBEAT)
                            .execute(&pool),
                    )
                    .await;
                }
            });
        }
        loop {
            // Dropped, not resumed, when it times out: a listener is never polled again
            // after a cancelled receive.
            let heard = tokio::time::timeout(SILENCE, listener.try_recv())
                .await
                .unwrap_or(Ok(None));
            match heard {
                Ok(Some(n)) if n.payload() == HEARTBEAT => {}
                Ok(Some(n)) => match serde_json::from_str::<Change>(n.payload()) {
                    Ok(change) => self.apply(&change),
                    Err(e) => tracing::error!(error = %e, "unreadable access change"),
                },
                Ok(None) | Err(_) => {
                    self.lose();
                    tracing::warn!("lost the access-changes listener; reconnecting");
                    drop(listener);
                    listener = loop {
                        match self.connect(&pool, None).await {
                            Ok(l) => break l,
                            Err(e) => {
                                tracing::warn!(error = %e, "access changes unavailable; retrying");
                                tokio::time::sleep(Duration::from_millis(250)).await;
                            }
                        }
                    };
                    // Streams re-check against what was reloaded.
                    self.inner.changes.send_modify(|n| *n += 1);
                }
            }
        }
    }
}

async fn prune_sessions(pool: &PgPool, age: Duration) -> Result<(), sqlx::Error> {
    sqlx::query(
        "DELETE FROM access_changes
          WHERE key LIKE 'session:%' AND changed_at < now() - make_interval(secs => $1)",
    )
    .bind(age.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}
