//! The one-time transform of the existing store (docs/privacy.md, "The existing store"):
//! events written before personal fields were sealed hold them in clear; this seals each
//! such field as the running version seals it when it decides the event, so the store holds
//! no personal field in clear and an erasure reaches the old events as well as the new.
//!
//! Fields sealed: a thread's subject line (`Opened.subject`) and its texts (`text` of
//! `MessageSent`, `MessageEdited` and `MessageScheduled`), for the thread's customer, or in
//! a thread without one for the staff author (under their own tenant); and the scheduled
//! texts that thread snapshots keep (each as its event now holds it); and WhatsApp
//! conversations' personal fields, for their contact ([`super::conversations`]), and what
//! webhooks kept of a provider's body about a person ([`super::webhooks`]), and the other
//! party's number, text and recording link in SMS and calls ([`super::telephony`]), and
//! staff members' login e-mails ([`super::staff`]). A thread's contact named by number
//! (`Opened.customer`, their messages' `author`, and in thread snapshots) is named by their
//! subject id, the number sealed into `Opened.customer_address`. A field of
//! a subject erased before the transform is written as `[erased]`: the person was erased,
//! and nothing is sealed for them again.
//!
//! The events are rewritten in place, a batch per transaction, in `global_position` order:
//! only `payload` changes (the append-only trigger allows that one change, only turning
//! values into ciphertext or `[erased]`, and a contact's number into a subject id, and only
//! in a transaction that declares the transform; migrations 0056, 0058, 0059, 0061), so
//! ids, sequences, positions,
//! transaction ids, times and order stay what they were. Running it again finds nothing to
//! do; it may run while the services serve (what they append is already sealed).

use std::collections::HashMap;

use events::chat::{Party, PartyKind};
use events::identity::PLATFORM_TENANT;
use events::keyring::{KeyError, Keyring, Subject};
use events::personal::{is_sealed, ERASED};
use serde_json::Value;
use sqlx::PgPool;

use crate::chat::services::subject_of;

/// What a run did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Transformed {
    /// Events whose personal fields it sealed.
    pub events: u64,
    /// Fields written as `[erased]` (their subject was erased before).
    pub erased: u64,
    /// Thread snapshots whose scheduled texts it sealed.
    pub snapshots: u64,
    /// Fields left in clear because their subject id is another tenant's (never seen; a
    /// sign of a damaged store, reported).
    pub refused: u64,
}

/// Why the transform stopped (a batch either committed whole or not at all; running it
/// again carries on).
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A key could not be made or read.
    #[error(transparent)]
    Key(KeyError),
}

/// A stored event the transform reads.
#[derive(sqlx::FromRow)]
pub(super) struct Stored {
    /// Where it is in the store.
    pub(super) global_position: i64,
    /// Its stream.
    pub(super) aggregate_id: String,
    /// Its type (the key of its payload).
    pub(super) event_type: String,
    /// Its payload, rewritten in place.
    pub(super) payload: Value,
    /// Its tenant (metadata).
    pub(super) tenant_id: String,
}

/// The stored events of some kinds, page by page in position order: what each part of the
/// transform walks.
pub(super) struct Pages<'a> {
    pool: &'a PgPool,
    /// Their aggregate types.
    aggregate_types: &'a [&'a str],
    /// Their event types.
    event_types: &'a [&'a str],
    /// The last position read.
    after: i64,
    /// Events per page.
    batch: i64,
}

impl<'a> Pages<'a> {
    /// The events of `aggregate_types` whose type is one of `event_types`, `batch` a page.
    pub(super) fn new(
        pool: &'a PgPool,
        aggregate_types: &'a [&'a str],
        event_types: &'a [&'a str],
        batch: i64,
    ) -> Self {
        Self {
            pool,
            aggregate_types,
            event_types,
            after: 0,
            batch,
        }
    }

    /// The next page; `None` once every event was read.
    pub(super) async fn next(&mut self) -> Result<Option<Vec<Stored>>, sqlx::Error> {
        let rows: Vec<Stored> = sqlx::query_as(
            "SELECT global_position, aggregate_id, event_type, payload,
                    coalesce(metadata->>'tenant_id', '') AS tenant_id
               FROM events
              WHERE aggregate_type = ANY($3) AND event_type = ANY($4)
                AND global_position > $1
              ORDER BY global_position
              LIMIT $2",
        )
        .bind(self.after)
        .bind(self.batch)
        .bind(self.aggregate_types)
        .bind(self.event_types)
        .fetch_all(self.pool)
        .await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        self.after = last.global_position;
        Ok(Some(rows))
    }
}

/// `text` sealed for `subject` as the transform writes it: sealed, or `[erased]` when the
/// subject was erased before (counted); `None` when the subject id is another tenant's
/// (left as it is, counted as refused).
pub(super) async fn seal_text(
    keyring: &Keyring,
    subject: Subject<'_>,
    text: &str,
    done: &mut Transformed,
) -> Result<Option<String>, TransformError> {
    match keyring.seal(subject, text).await {
        Ok(sealed) => Ok(Some(sealed)),
        Err(KeyError::Erased) => {
            done.erased += 1;
            Ok(Some(ERASED.to_owned()))
        }
        Err(KeyError::OtherTenant) => {
            done.refused += 1;
            Ok(None)
        }
        Err(e) => Err(TransformError::Key(e)),
    }
}

/// Gives the snapshots of `aggregate_type` that keep the value at `snapshot_path` in clear
/// what their `event_type` event holds now at `event_path` (sealed, or `[erased]`), so each
/// snapshot is exactly the state a replay of the sealed events gives; returns how many
/// changed. For aggregates whose one event of that type is all their state keeps of it (a
/// webhook's payload, an SMS's text, a staff member's e-mail).
pub(super) async fn adopt_sealed(
    pool: &PgPool,
    aggregate_type: &str,
    snapshot_path: &[&str],
    event_type: &str,
    event_path: &[&str],
) -> Result<u64, TransformError> {
    Ok(sqlx::query(
        "UPDATE snapshots s SET payload = jsonb_set(s.payload, $2, e.payload #> $4)
           FROM events e
          WHERE s.aggregate_type = $1 AND e.aggregate_type = $1
            AND e.aggregate_id = s.aggregate_id AND e.event_type = $3
            -- The snapshot's value is in clear: an object, or text neither sealed nor erased.
            AND CASE jsonb_typeof(s.payload #> $2)
                  WHEN 'string' THEN (s.payload #>> $2) NOT IN ('', '[erased]')
                                     AND (s.payload #>> $2) NOT LIKE 'pii1.%'
                  WHEN 'null' THEN false
                  ELSE s.payload #> $2 IS NOT NULL END
            -- The event's is sealed, or erased, now.
            AND ((e.payload #>> $4) LIKE 'pii1.%' OR (e.payload #>> $4) = '[erased]')",
    )
    .bind(aggregate_type)
    .bind(snapshot_path)
    .bind(event_type)
    .bind(event_path)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Writes `payload` as snapshot `version` of aggregate `id` of `aggregate_type`, unless a
/// commit rewrote the snapshot since it was read (left for the next run); 1 if written.
pub(super) async fn rewrite_snapshot(
    pool: &PgPool,
    aggregate_type: &str,
    id: &str,
    version: i64,
    payload: &Value,
) -> Result<u64, TransformError> {
    Ok(sqlx::query(
        "UPDATE snapshots SET payload = $4
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND current_snapshot = $3",
    )
    .bind(aggregate_type)
    .bind(id)
    .bind(version)
    .bind(payload)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Writes the rewritten events `changed` (one transaction), counts them, and says so.
pub(super) async fn write_changed(
    pool: &PgPool,
    changed: Vec<Stored>,
    done: &mut Transformed,
    what: &'static str,
) -> Result<(), TransformError> {
    let Some(last) = changed.last().map(|e| e.global_position) else {
        return Ok(());
    };
    let (positions, payloads): (Vec<i64>, Vec<Value>) = changed
        .into_iter()
        .map(|e| (e.global_position, e.payload))
        .unzip();
    done.events += write_batch(pool, &positions, &payloads).await?;
    tracing::info!(events = done.events, position = last, "sealing {what}");
    Ok(())
}

/// Whose each thread's texts are, as the thread aggregate decides it, read from the store
/// once per thread and staff member.
struct Owners<'a> {
    pool: &'a PgPool,
    /// Thread id → its customer.
    customers: HashMap<String, Option<Party>>,
    /// Admin user id → their home tenant (`platform` for a super admin).
    homes: HashMap<String, String>,
}

impl Owners<'_> {
    /// The customer of thread `id` (its `Opened` event's).
    async fn customer(&mut self, id: &str) -> Result<Option<Party>, sqlx::Error> {
        if let Some(known) = self.customers.get(id) {
            return Ok(known.clone());
        }
        let customer: Option<Value> = sqlx::query_scalar(
            "SELECT payload->'Opened'->'customer' FROM events
              WHERE aggregate_type = 'thread' AND aggregate_id = $1 AND sequence = 1",
        )
        .bind(id)
        .fetch_optional(self.pool)
        .await?;
        let customer = customer.and_then(|c| serde_json::from_value(c).ok());
        self.customers.insert(id.to_owned(), customer.clone());
        Ok(customer)
    }

    /// The home tenant of admin user `id`: their `Created` event's tenant, `platform` for a
    /// super admin, and `fallback` (the thread's tenant) for one the store does not know.
    async fn home(&mut self, id: &str, fallback: &str) -> Result<String, sqlx::Error> {
        if let Some(home) = self.homes.get(id) {
            return Ok(home.clone());
        }
        let created: Option<Option<String>> = sqlx::query_scalar(
            "SELECT payload->'Created'->>'tenant_id' FROM events
              WHERE aggregate_type = 'admin_user' AND aggregate_id = $1 AND sequence = 1",
        )
        .bind(id)
        .fetch_optional(self.pool)
        .await?;
        let home = match created {
            Some(Some(tenant)) => tenant,
            Some(None) => PLATFORM_TENANT.to_owned(),
            None => fallback.to_owned(),
        };
        self.homes.insert(id.to_owned(), home.clone());
        Ok(home)
    }

    /// The author of message `message_id` of thread `thread`.
    async fn author_of(
        &self,
        thread: &str,
        message_id: &str,
    ) -> Result<Option<Party>, sqlx::Error> {
        let author: Option<Value> = sqlx::query_scalar(
            "SELECT payload->'MessageSent'->'author' FROM events
              WHERE aggregate_type = 'thread' AND aggregate_id = $1 AND event_type = 'MessageSent'
                AND payload->'MessageSent'->>'message_id' = $2
              LIMIT 1",
        )
        .bind(thread)
        .bind(message_id)
        .fetch_optional(self.pool)
        .await?;
        Ok(author.and_then(|a| serde_json::from_value(a).ok()))
    }

    /// The person a field of `row` is sealed for, and the tenant they belong to: the
    /// thread's customer, else a staff author under their home tenant; `None` when the
    /// field stays in clear (the bot's or the platform's text in a thread without a
    /// customer, or a subject line there).
    async fn owner(
        &mut self,
        row: &Stored,
        body: &Value,
    ) -> Result<Option<(Party, String)>, sqlx::Error> {
        let customer = if row.event_type == "Opened" {
            body.get("customer")
                .cloned()
                .and_then(|c| serde_json::from_value(c).ok())
        } else {
            self.customer(&row.aggregate_id).await?
        };
        if let Some(customer) = customer {
            return Ok(Some((customer, row.tenant_id.clone())));
        }
        let author: Option<Party> = match row.event_type.as_str() {
            "MessageSent" | "MessageScheduled" => body
                .get("author")
                .cloned()
                .and_then(|a| serde_json::from_value(a).ok()),
            "MessageEdited" => match body.get("message_id").and_then(Value::as_str) {
                Some(id) => self.author_of(&row.aggregate_id, id).await?,
                None => None,
            },
            _ => None,
        };
        match author {
            Some(author) if author.kind == PartyKind::Agent => {
                let home = self.home(&author.id, &row.tenant_id).await?;
                Ok(Some((author, home)))
            }
            _ => Ok(None),
        }
    }
}

/// A text still in clear: not empty, not sealed, not already `[erased]`.
pub(super) fn in_clear(text: Option<&str>) -> Option<&str> {
    text.filter(|t| !t.is_empty() && !is_sealed(t) && *t != ERASED)
}

/// Runs the transform, `batch` events per transaction; returns what it did.
pub async fn seal_store(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
) -> Result<Transformed, TransformError> {
    let mut done = Transformed::default();
    let mut owners = Owners {
        pool,
        customers: HashMap::new(),
        homes: HashMap::new(),
    };
    let kinds = ["Opened", "MessageSent", "MessageEdited", "MessageScheduled"];
    let mut pages = Pages::new(pool, &["thread"], &kinds, batch);
    while let Some(rows) = pages.next().await? {
        let changed = seal_batch(rows, keyring, &mut owners, &mut done).await?;
        write_changed(pool, changed, &mut done, "threads' texts").await?;
    }
    done.snapshots = seal_snapshots(pool).await? + name_contacts_in_snapshots(pool).await?;
    super::conversations::seal_conversations(pool, keyring, batch, &mut done).await?;
    super::webhooks::seal_webhooks(pool, keyring, batch, &mut done).await?;
    super::telephony::seal_telephony(pool, keyring, batch, &mut done).await?;
    super::staff::seal_staff(pool, keyring, batch, &mut done).await?;
    Ok(done)
}

/// The rows of `rows` with a field to seal, sealed.
async fn seal_batch(
    rows: Vec<Stored>,
    keyring: &Keyring,
    owners: &mut Owners<'_>,
    done: &mut Transformed,
) -> Result<Vec<Stored>, TransformError> {
    let mut changed = Vec::new();
    for mut row in rows {
        let renamed = name_contact(&mut row, keyring, done).await?;
        // The subject line, a text, and a file's name (sealed as the text is).
        let pointers: &[&str] = match row.event_type.as_str() {
            "Opened" => &["/subject"],
            "MessageSent" | "MessageScheduled" => &["/text", "/attachment/name"],
            _ => &["/text"],
        };
        let body = &row.payload[&row.event_type];
        let clear: Vec<(&str, String)> = pointers
            .iter()
            .filter_map(|p| {
                let text = in_clear(body.pointer(p).and_then(Value::as_str))?;
                Some((*p, text.to_owned()))
            })
            .collect();
        if clear.is_empty() {
            if renamed {
                changed.push(row);
            }
            continue;
        }
        let Some((person, tenant)) = owners.owner(&row, body).await? else {
            continue;
        };
        let Some((id, kind)) = subject_of(&tenant, &person) else {
            done.refused += 1;
            continue;
        };
        let mut touched = renamed;
        for (pointer, text) in clear {
            let subject = Subject {
                id,
                kind,
                tenant_id: &tenant,
            };
            let Some(value) = seal_text(keyring, subject, &text, done).await? else {
                continue;
            };
            if let Some(slot) = row.payload[&row.event_type].pointer_mut(pointer) {
                *slot = Value::String(value);
                touched = true;
            }
        }
        if touched {
            changed.push(row);
        }
    }
    Ok(changed)
}

/// True for the id of a contact named by number (a thread opened before contacts were
/// named by their subject id).
fn named_by_number(party: &Value) -> Option<&str> {
    let id = party.get("id").and_then(Value::as_str)?;
    (party.get("kind").and_then(Value::as_str) == Some(PartyKind::Contact.as_str())
        && uuid::Uuid::try_parse(id).is_err())
    .then_some(id)
}

/// Names the contact of `row` (an `Opened` customer, a `MessageSent` author) by subject id
/// instead of by number, as the running version does (events::chat::Party::contact), the
/// number going sealed into `Opened.customer_address` (`[erased]` for a contact erased
/// before); true if it changed the event. A number whose subject is another tenant's stays.
async fn name_contact(
    row: &mut Stored,
    keyring: &Keyring,
    done: &mut Transformed,
) -> Result<bool, TransformError> {
    let (slot, opened) = match row.event_type.as_str() {
        "Opened" => ("customer", true),
        "MessageSent" => ("author", false),
        _ => return Ok(false),
    };
    let body = &row.payload[&row.event_type];
    // However an earlier release spelled it: one number, one person.
    let Some(number) = body
        .get(slot)
        .and_then(named_by_number)
        .map(events::telephony::party_address)
    else {
        return Ok(false);
    };
    let party = Party::contact(&row.tenant_id, &number);
    if opened {
        let Some((id, kind)) = subject_of(&row.tenant_id, &party) else {
            return Ok(false);
        };
        let subject = Subject {
            id,
            kind,
            tenant_id: &row.tenant_id,
        };
        let Some(address) = seal_text(keyring, subject, &number, done).await? else {
            return Ok(false);
        };
        row.payload[&row.event_type]["customer_address"] = Value::String(address);
    }
    row.payload[&row.event_type][slot]["id"] = Value::String(party.id);
    Ok(true)
}

/// Names the contacts thread snapshots keep by number (their customer, the authors of their
/// recent messages, the reader their messages count as read by) by subject id, as their
/// events now do; returns how many snapshots changed. A snapshot rewritten by a commit
/// meanwhile is left for the next run.
async fn name_contacts_in_snapshots(pool: &PgPool) -> Result<u64, TransformError> {
    let snapshots: Vec<(String, i64, Value)> = sqlx::query_as(
        "SELECT aggregate_id, current_snapshot, payload FROM snapshots
          WHERE aggregate_type = 'thread' AND payload->'customer'->>'kind' = 'contact'",
    )
    .fetch_all(pool)
    .await?;
    let mut changed = 0;
    for (id, version, mut payload) in snapshots {
        let tenant = payload["tenant_id"].as_str().unwrap_or_default().to_owned();
        let number = named_by_number(&payload["customer"]).map(str::to_owned);
        let read = number.as_ref().and_then(|n| {
            let reads = payload.get_mut("reads")?.as_object_mut()?;
            reads.remove(n).map(|at| (n.clone(), at))
        });
        if let Some((number, at)) = read {
            payload["reads"][Party::contact(&tenant, &number).id] = at;
        }
        let mut parties: Vec<&mut Value> = vec![];
        let Value::Object(state) = &mut payload else {
            continue;
        };
        for (field, value) in state.iter_mut() {
            match (field.as_str(), value) {
                ("customer", party) => parties.push(party),
                ("recent", Value::Array(recent)) => {
                    parties.extend(recent.iter_mut().filter_map(|m| m.get_mut("author")))
                }
                _ => {}
            }
        }
        let mut touched = number.is_some();
        for party in parties {
            if let Some(number) = named_by_number(party).map(str::to_owned) {
                party["id"] = Value::String(Party::contact(&tenant, &number).id);
                touched = true;
            }
        }
        if touched {
            changed += rewrite_snapshot(pool, "thread", &id, version, &payload).await?;
        }
    }
    Ok(changed)
}

/// Writes the new `payloads` of the events at `positions` in one transaction that declares
/// the transform (the only update the append-only trigger lets through); returns how many.
async fn write_batch(
    pool: &PgPool,
    positions: &[i64],
    payloads: &[Value],
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL events.transform = 'seal-personal-data'")
        .execute(&mut *tx)
        .await?;
    let changed = sqlx::query(
        "UPDATE events e SET payload = c.payload
           FROM unnest($1::bigint[], $2::jsonb[]) AS c(position, payload)
          WHERE e.global_position = c.position",
    )
    .bind(positions)
    .bind(payloads)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(changed)
}

/// Seals the scheduled texts thread snapshots keep in clear; returns how many snapshots
/// changed. Each takes the text its `MessageScheduled` event holds now (sealed, or
/// `[erased]`), so the snapshot is exactly the state a replay of the sealed events gives. A
/// snapshot rewritten by a commit meanwhile is left for the next run.
async fn seal_snapshots(pool: &PgPool) -> Result<u64, TransformError> {
    let snapshots: Vec<(String, i64, Value)> = sqlx::query_as(
        "SELECT aggregate_id, current_snapshot, payload FROM snapshots
          WHERE aggregate_type = 'thread' AND jsonb_typeof(payload->'scheduled') = 'object'",
    )
    .fetch_all(pool)
    .await?;
    let mut changed = 0;
    for (id, version, mut payload) in snapshots {
        let Some(scheduled) = payload.get_mut("scheduled").and_then(Value::as_object_mut) else {
            continue;
        };
        let mut touched = false;
        for (scheduled_id, entry) in scheduled.iter_mut() {
            let pointers = ["/text", "/attachment/name"];
            let clear = |entry: &Value, p: &str| {
                in_clear(entry.pointer(p).and_then(Value::as_str)).is_some()
            };
            if !pointers.iter().any(|p| clear(entry, p)) {
                continue;
            }
            let recorded: Option<Value> = sqlx::query_scalar(
                "SELECT payload->'MessageScheduled' FROM events
                  WHERE aggregate_type = 'thread' AND aggregate_id = $1
                    AND event_type = 'MessageScheduled'
                    AND payload->'MessageScheduled'->>'scheduled_id' = $2
                  ORDER BY sequence DESC LIMIT 1",
            )
            .bind(&id)
            .bind(scheduled_id)
            .fetch_optional(pool)
            .await?;
            let Some(recorded) = recorded else { continue };
            for pointer in pointers {
                let sealed = recorded
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .filter(|t| is_sealed(t) || *t == ERASED);
                if let (Some(sealed), true) = (sealed, clear(entry, pointer)) {
                    if let Some(slot) = entry.pointer_mut(pointer) {
                        *slot = Value::String(sealed.to_owned());
                        touched = true;
                    }
                }
            }
        }
        if touched {
            changed += rewrite_snapshot(pool, "thread", &id, version, &payload).await?;
        }
    }
    Ok(changed)
}
