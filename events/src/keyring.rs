//! The data keys of personal data (docs/privacy.md), in the `subject_keys` table and cached
//! in each process that seals or opens: the one shared mechanism through which every reader
//! opens a personal field ([`crate::personal`] has the format).
//!
//! - Sealing for a subject uses the newest of its keys, making one on first use (written
//!   before any event that uses it, so a reader always finds a key that is still there).
//! - Opening finds each key a payload names — every key it lacks in one statement — and
//!   writes a field whose key is gone as [`ERASED`].
//! - Erasing is the `Erased` event of the subject: its transaction destroys every key of the
//!   subject and marks it erased (migration 0054; no key is made for it again). Every
//!   process that follows erasures ([`Keyring::follow_erasures`]) forgets the subject's keys
//!   when that transaction commits; whatever it missed, a cached key lives at most
//!   [`CACHE_FOR`].
//! - A destroyed key is remembered as gone (it never comes back), so reading an erased
//!   subject's history costs no query per event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::personal::{is_sealed, open_in_place, DataKey, MasterKeys, ERASED};

/// How long a process trusts a key it has cached without looking again.
pub const CACHE_FOR: Duration = Duration::from_secs(300);
/// Cached keys at most; past it the cache starts again empty.
const CACHE_LIMIT: usize = 100_000;

/// The kinds of data subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind {
    /// A customer who signs in by phone code.
    PhoneUser,
    /// Someone a tenant reaches on WhatsApp or by SMS, known by their number.
    Contact,
    /// A tenant's staff member (admin user).
    AdminUser,
    /// A CRM customer.
    Customer,
}

impl SubjectKind {
    /// The kind stored as `kind`, if it is one.
    pub fn parse(kind: &str) -> Option<Self> {
        [
            Self::PhoneUser,
            Self::Contact,
            Self::AdminUser,
            Self::Customer,
        ]
        .into_iter()
        .find(|k| k.as_str() == kind)
    }

    /// The kind as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PhoneUser => "phone_user",
            Self::Contact => "contact",
            Self::AdminUser => "admin_user",
            Self::Customer => "customer",
        }
    }
}

/// A data subject: who the data is about, and whose tenant it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject<'a> {
    /// The subject's id.
    pub id: Uuid,
    /// What kind of person.
    pub kind: SubjectKind,
    /// The tenant whose data it is.
    pub tenant_id: &'a str,
}

/// Why a field could not be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The subject was erased: nothing new is kept about them.
    #[error("the data subject was erased")]
    Erased,
    /// The subject id is already another tenant's subject.
    #[error("the data subject belongs to another tenant")]
    OtherTenant,
    /// A stored key does not open under any configured master key (a master key was
    /// removed from the settings before its keys were re-sealed).
    #[error("data key {0} is sealed under a master key this process does not have")]
    NoMasterKey(Uuid),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// A cached key, or the memory that it is gone.
#[derive(Clone)]
struct Cached {
    key: Option<DataKey>,
    at: Instant,
}

#[derive(Default)]
struct Cache {
    /// By key id: every key this process used, and the destroyed ones it met.
    keys: HashMap<Uuid, Cached>,
    /// By subject: the key this process seals with.
    sealing: HashMap<Uuid, Cached>,
}

/// The keys, and this process's cache of them.
#[derive(Clone)]
pub struct Keyring {
    pool: PgPool,
    masters: Arc<MasterKeys>,
    cache: Arc<Mutex<Cache>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("masters", &self.masters)
            .finish_non_exhaustive()
    }
}

/// What the key table knows of a subject.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KnownSubject {
    /// The tenant whose subject it is.
    pub tenant_id: String,
    /// Its kind, as stored (`phone_user`, `contact`, `admin_user`, `customer`).
    pub kind: String,
    /// Whether it was erased.
    pub erased: bool,
}

/// A stored key row.
#[derive(sqlx::FromRow)]
struct KeyRow {
    key_id: Uuid,
    subject_id: Uuid,
    master_key_id: String,
    sealed_key: String,
}

/// A subject and its newest key, if it has one.
#[derive(sqlx::FromRow)]
struct Newest {
    tenant_id: String,
    erased: bool,
    key_id: Option<Uuid>,
    master_key_id: Option<String>,
    sealed_key: Option<String>,
}

impl Keyring {
    /// The keys in `pool`'s database, sealed under `masters`.
    pub fn new(pool: PgPool, masters: MasterKeys) -> Self {
        Self {
            pool,
            masters: Arc::new(masters),
            cache: Arc::new(Mutex::new(Cache::default())),
        }
    }

    /// The master keys.
    pub fn masters(&self) -> &MasterKeys {
        &self.masters
    }

    fn cached_sealing(&self, subject: Uuid) -> Option<DataKey> {
        let cache = self.cache.lock().ok()?;
        let cached = cache.sealing.get(&subject)?;
        (cached.at.elapsed() < CACHE_FOR)
            .then(|| cached.key.clone())
            .flatten()
    }

    fn cached(&self, key: Uuid) -> Option<Option<DataKey>> {
        let cache = self.cache.lock().ok()?;
        let cached = cache.keys.get(&key)?;
        // A destroyed key never comes back; a present one is looked at again now and then.
        (cached.key.is_none() || cached.at.elapsed() < CACHE_FOR).then(|| cached.key.clone())
    }

    fn remember(&self, key_id: Uuid, key: Option<DataKey>, sealing: bool) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.keys.len() >= CACHE_LIMIT || cache.sealing.len() >= CACHE_LIMIT {
            *cache = Cache::default();
        }
        let at = Instant::now();
        if let (true, Some(key)) = (sealing, &key) {
            cache.sealing.insert(
                key.subject,
                Cached {
                    key: Some(key.clone()),
                    at,
                },
            );
        }
        cache.keys.insert(key_id, Cached { key, at });
    }

    /// Drops every cached key of `subject` (it was erased, here or in another process).
    pub fn forget(&self, subject: Uuid) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        cache.sealing.remove(&subject);
        for cached in cache.keys.values_mut() {
            if cached.key.as_ref().is_some_and(|k| k.subject == subject) {
                cached.key = None;
            }
        }
    }

    fn unsealed(&self, row: KeyRow) -> Result<DataKey, KeyError> {
        self.masters
            .open_key(&row.master_key_id, &row.sealed_key)
            .ok()
            .and_then(|raw| DataKey::from_raw(row.key_id, row.subject_id, &raw))
            .ok_or(KeyError::NoMasterKey(row.key_id))
    }

    /// The key to seal `subject`'s fields with: its newest, or a new one.
    async fn sealing_key(&self, subject: Subject<'_>) -> Result<DataKey, KeyError> {
        if let Some(key) = self.cached_sealing(subject.id) {
            return Ok(key);
        }
        // Twice at most: a first key made by another process between the look and the
        // insert is found by the second look.
        for _ in 0..2 {
            let found: Option<Newest> = sqlx::query_as(
                "SELECT s.tenant_id, s.erased_at IS NOT NULL AS erased,
                            k.key_id, k.master_key_id, k.sealed_key
                       FROM data_subjects s
                       LEFT JOIN LATERAL (
                            SELECT key_id, master_key_id, sealed_key FROM subject_keys
                             WHERE subject_id = s.subject_id
                             ORDER BY created_at DESC LIMIT 1) k ON true
                      WHERE s.subject_id = $1",
            )
            .bind(subject.id)
            .fetch_optional(&self.pool)
            .await?;
            match found {
                Some(Newest { erased: true, .. }) => return Err(KeyError::Erased),
                Some(newest) if newest.tenant_id != subject.tenant_id => {
                    return Err(KeyError::OtherTenant)
                }
                Some(Newest {
                    key_id: Some(key_id),
                    master_key_id: Some(master_key_id),
                    sealed_key: Some(sealed_key),
                    ..
                }) => {
                    let key = self.unsealed(KeyRow {
                        key_id,
                        subject_id: subject.id,
                        master_key_id,
                        sealed_key,
                    })?;
                    self.remember(key.id, Some(key.clone()), true);
                    return Ok(key);
                }
                _ => {}
            }
            if let Some(key) = self.make_key(subject).await? {
                self.remember(key.id, Some(key.clone()), true);
                return Ok(key);
            }
        }
        Err(KeyError::Erased)
    }

    /// A first key for `subject`, stored; `None` if the subject was erased (or is another
    /// tenant's) meanwhile. The key's insert holds the subject's row shared, so an erasure
    /// either comes first (and no key is made) or waits for it (and destroys it too).
    async fn make_key(&self, subject: Subject<'_>) -> Result<Option<DataKey>, KeyError> {
        sqlx::query(
            "INSERT INTO data_subjects (subject_id, tenant_id, kind) VALUES ($1, $2, $3)
             ON CONFLICT (subject_id) DO NOTHING",
        )
        .bind(subject.id)
        .bind(subject.tenant_id)
        .bind(subject.kind.as_str())
        .execute(&self.pool)
        .await?;
        let (key, raw) = DataKey::generate(subject.id);
        let Some(sealed) = self.masters.seal_key(&raw) else {
            return Err(KeyError::NoMasterKey(key.id));
        };
        let made = sqlx::query(
            "INSERT INTO subject_keys (key_id, subject_id, master_key_id, sealed_key)
             SELECT $1, subject_id, $2, $3 FROM data_subjects
              WHERE subject_id = $4 AND tenant_id = $5 AND erased_at IS NULL
                FOR SHARE",
        )
        .bind(key.id)
        .bind(self.masters.current())
        .bind(sealed)
        .bind(subject.id)
        .bind(subject.tenant_id)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok((made == 1).then_some(key))
    }

    /// `plain` sealed for `subject` (whose first key is made here).
    pub async fn seal(&self, subject: Subject<'_>, plain: &str) -> Result<String, KeyError> {
        Ok(self.sealing_key(subject).await?.seal(plain))
    }

    /// The keys the sealed fields of `values` name that this process lacks.
    fn missing_keys(&self, values: &[&mut serde_json::Value]) -> Vec<Uuid> {
        let mut named = std::collections::BTreeSet::new();
        for value in values {
            named.extend(crate::personal::keys_named(value));
        }
        named
            .into_iter()
            .filter(|key| self.cached(*key).is_none())
            .collect()
    }

    /// Finds the keys `missing` in one statement on `conn` (a key not found was destroyed:
    /// remembered as gone).
    async fn load_keys(&self, conn: &mut PgConnection, missing: Vec<Uuid>) -> Result<(), KeyError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT key_id, subject_id, master_key_id, sealed_key
               FROM subject_keys WHERE key_id = ANY($1)",
        )
        .bind(&missing)
        .fetch_all(&mut *conn)
        .await?;
        let mut found: HashMap<Uuid, KeyRow> =
            rows.into_iter().map(|row| (row.key_id, row)).collect();
        for id in missing {
            let key = match found.remove(&id) {
                Some(row) => Some(self.unsealed(row)?),
                None => None,
            };
            self.remember(id, key, false);
        }
        Ok(())
    }

    /// Opens every sealed field anywhere in `value` in place; a field whose key was
    /// destroyed reads as [`ERASED`]. Plain text is left as it is.
    pub async fn open_value(&self, value: &mut serde_json::Value) -> Result<(), KeyError> {
        self.open_values(vec![value]).await
    }

    /// [`Keyring::open_value`] for many values (a batch of events' payloads), with one look-up
    /// for the keys of them all.
    pub async fn open_values(&self, values: Vec<&mut serde_json::Value>) -> Result<(), KeyError> {
        let missing = self.missing_keys(&values);
        if !missing.is_empty() {
            let mut conn = self.pool.acquire().await?;
            self.load_keys(&mut conn, missing).await?;
        }
        for value in values {
            open_in_place(value, &|key| self.cached(key).flatten());
        }
        Ok(())
    }

    /// [`Keyring::open_values`] inside the caller's transaction on `conn`, for a writer that
    /// stores what it opens (a projection): it first holds each named subject's erasure lock
    /// shared (migration 0054), then reads every key the values name — cached or not — so an
    /// erasure either waits until this transaction commits (and its redaction sees what was
    /// written) or has committed, and its subjects' fields open as [`ERASED`]. The cache
    /// saves unsealing the keys, not the look-up. Holding a connection, it never waits for a
    /// second one from a pool its peers may have exhausted the same way.
    pub async fn open_values_on(
        &self,
        conn: &mut PgConnection,
        values: Vec<&mut serde_json::Value>,
    ) -> Result<(), KeyError> {
        let mut keys = std::collections::BTreeSet::new();
        let mut subjects = std::collections::BTreeSet::new();
        for value in &values {
            crate::personal::name_into(value, &mut keys, &mut subjects);
        }
        if keys.is_empty() {
            return Ok(());
        }
        let subjects: Vec<Uuid> = subjects.into_iter().collect();
        sqlx::query(
            "SELECT pg_advisory_xact_lock_shared(1885956401, hashtext(s::text))
               FROM unnest($1::uuid[]) WITH ORDINALITY AS u(s, n) ORDER BY n",
        )
        .bind(&subjects)
        .execute(&mut *conn)
        .await?;
        // A statement of its own, after the locks: its snapshot sees an erasure that
        // committed while this transaction waited for them.
        let keys: Vec<Uuid> = keys.into_iter().collect();
        let present: Vec<Uuid> =
            sqlx::query_scalar("SELECT key_id FROM subject_keys WHERE key_id = ANY($1)")
                .bind(&keys)
                .fetch_all(&mut *conn)
                .await?;
        let (present, gone): (Vec<Uuid>, Vec<Uuid>) =
            keys.into_iter().partition(|k| present.contains(k));
        for key in gone {
            self.remember(key, None, false);
        }
        let missing: Vec<Uuid> = present
            .into_iter()
            .filter(|key| !matches!(self.cached(*key), Some(Some(_))))
            .collect();
        if !missing.is_empty() {
            self.load_keys(conn, missing).await?;
        }
        for value in values {
            open_in_place(value, &|key| self.cached(key).flatten());
        }
        Ok(())
    }

    /// The text `text` holds: opened when sealed ([`ERASED`] once its key is gone), as it is
    /// when plain.
    pub async fn open(&self, text: &str) -> Result<String, KeyError> {
        if !is_sealed(text) {
            return Ok(text.to_owned());
        }
        let mut value = serde_json::Value::String(text.to_owned());
        self.open_value(&mut value).await?;
        Ok(match value {
            serde_json::Value::String(opened) => opened,
            _ => ERASED.to_owned(),
        })
    }

    /// What the key table knows of subject `id`; `None` for a subject it never knew.
    pub async fn subject(&self, id: Uuid) -> Result<Option<KnownSubject>, sqlx::Error> {
        sqlx::query_as(
            "SELECT tenant_id, kind, erased_at IS NOT NULL AS erased
               FROM data_subjects WHERE subject_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
    }

    /// Makes `subject` known before anything is sealed for them (a phone user at their
    /// first sign-in), so they can be erased and exported from then on. Knowing them again
    /// changes nothing; an erased subject is refused ([`KeyError::Erased`]), and so is an id
    /// another tenant's subject has ([`KeyError::OtherTenant`]).
    pub async fn register(&self, subject: Subject<'_>) -> Result<(), KeyError> {
        // The insert's row, or (when it was known) the stored one: the outer read does not
        // see the insert, so exactly one of the two answers.
        let made: Option<(String, bool)> = sqlx::query_as(
            "WITH made AS (
                 INSERT INTO data_subjects (subject_id, tenant_id, kind) VALUES ($1, $2, $3)
                 ON CONFLICT (subject_id) DO NOTHING
                 RETURNING tenant_id, false AS erased)
             SELECT tenant_id, erased FROM made
             UNION ALL
             SELECT tenant_id, erased_at IS NOT NULL FROM data_subjects WHERE subject_id = $1
             LIMIT 1",
        )
        .bind(subject.id)
        .bind(subject.tenant_id)
        .bind(subject.kind.as_str())
        .fetch_optional(&self.pool)
        .await?;
        // None: another process registered them in the same moment, after this statement's
        // snapshot; a second look sees their row.
        let (tenant_id, erased) = match made {
            Some(found) => found,
            None => sqlx::query_as(
                "SELECT tenant_id, erased_at IS NOT NULL FROM data_subjects WHERE subject_id = $1",
            )
            .bind(subject.id)
            .fetch_one(&self.pool)
            .await?,
        };
        if erased {
            Err(KeyError::Erased)
        } else if tenant_id != subject.tenant_id {
            Err(KeyError::OtherTenant)
        } else {
            Ok(())
        }
    }

    /// Follows erasures made anywhere (the `subject_erased` notifications of migration 0054)
    /// and forgets the erased subjects' keys, until the process ends. After a lost
    /// connection, when notifications may have been missed, it forgets every cached key.
    pub fn follow_erasures(&self) -> tokio::task::JoinHandle<()> {
        let keyring = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = keyring.listen().await {
                    tracing::warn!(error = %e, "following erasures failed; again in 5 s");
                }
                keyring.forget_all();
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        })
    }

    async fn listen(&self) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen("subject_erased").await?;
        // Whatever was erased before the listener started is not in this cache for longer
        // than it was cached; start clean.
        self.forget_all();
        loop {
            match listener.try_recv().await? {
                Some(notification) => {
                    if let Ok(subject) = Uuid::try_parse(notification.payload()) {
                        self.forget(subject);
                    }
                }
                // The connection was lost (and is made again on the next call): anything
                // may have been missed.
                None => self.forget_all(),
            }
        }
    }

    /// Forgets every cached key.
    fn forget_all(&self) {
        if let Ok(mut cache) = self.cache.lock() {
            *cache = Cache::default();
        }
    }

    /// Re-seals under the current master key up to `limit` data keys sealed under another
    /// one (a master-key rotation, docs/privacy.md); how many it re-sealed. A key under a
    /// master key this process lacks is left as it is and counted in the error.
    pub async fn reseal(&self, limit: i64) -> Result<u64, KeyError> {
        let rows: Vec<KeyRow> = sqlx::query_as(
            "SELECT key_id, subject_id, master_key_id, sealed_key FROM subject_keys
              WHERE master_key_id <> $1 LIMIT $2",
        )
        .bind(self.masters.current())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut resealed = 0;
        for row in rows {
            let resealed_key = self
                .masters
                .open_key(&row.master_key_id, &row.sealed_key)
                .ok()
                .and_then(|raw| self.masters.seal_key(&raw));
            let Some(resealed_key) = resealed_key else {
                return Err(KeyError::NoMasterKey(row.key_id));
            };
            resealed += sqlx::query(
                "UPDATE subject_keys SET master_key_id = $2, sealed_key = $3
                  WHERE key_id = $1 AND master_key_id = $4",
            )
            .bind(row.key_id)
            .bind(self.masters.current())
            .bind(resealed_key)
            .bind(&row.master_key_id)
            .execute(&self.pool)
            .await?
            .rows_affected();
        }
        Ok(resealed)
    }
}
