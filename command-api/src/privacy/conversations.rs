//! The store's transform of WhatsApp conversations (docs/privacy.md, "The existing store"):
//! the contact's number (`Started.wa_id`), profile name, texts and messages of
//! `MessageReceived`, and the personal texts of `MessageQueued` and `MessageRevised`
//! contents, sealed for the contact as the conversation aggregate now seals them
//! (`whatsapp::personal`); a conversation's `Started` gains its own id, so its sealed number
//! is never needed to name it; and the conversation snapshots keep the number and contents
//! their events now hold.
//!
//! It works on the stored JSON, not on decoded events, so nothing but the personal values
//! changes (a decoded and re-encoded event could gain defaulted fields, which the
//! append-only trigger refuses).

use std::collections::HashMap;

use events::keyring::{Keyring, Subject, SubjectKind};
use events::personal::{is_sealed, ERASED};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{
    in_clear, rewrite_snapshot, seal_text, write_changed, Pages, Stored, TransformError,
    Transformed,
};

/// The kinds of conversation event with personal fields.
const PERSONAL_EVENTS: &[&str] = &[
    "Started",
    "MessageReceived",
    "MessageQueued",
    "MessageRevised",
];

/// The JSON pointers (within an event's body) of the personal values of an event of type
/// `event_type`: what the conversation aggregate seals.
fn personal_pointers(event_type: &str, body: &Value) -> Vec<String> {
    let content = |fields: &[&str]| fields.iter().map(|f| format!("/content/{f}")).collect();
    match event_type {
        "Started" => vec!["/wa_id".into()],
        "MessageReceived" => vec!["/profile_name".into(), "/text".into(), "/content".into()],
        "MessageQueued" | "MessageRevised" => match body["content"]["type"].as_str() {
            Some("text") => content(&["body"]),
            Some("media") => content(&["link", "caption", "filename"]),
            Some("file") => content(&["caption", "filename"]),
            Some("template") => {
                let n = body["content"]["parameters"].as_array().map_or(0, Vec::len);
                (0..n).map(|i| format!("/content/parameters/{i}")).collect()
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// The plain text a personal value holds, if it is still in clear: a string (not empty,
/// sealed or `[erased]`), or a received message's object as its JSON text.
fn clear_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => in_clear(Some(text)).map(str::to_owned),
        other => Some(other.to_string()),
    }
}

/// The contacts of conversations, read from their `Started` event once per conversation.
struct Contacts<'a> {
    pool: &'a PgPool,
    /// Conversation id → its tenant and contact (`None`: the contact reads `[erased]`).
    known: HashMap<String, Option<(String, Uuid)>>,
}

impl Contacts<'_> {
    /// The tenant and contact of conversation `id`.
    async fn of(&mut self, id: &str) -> Result<Option<(String, Uuid)>, sqlx::Error> {
        if let Some(known) = self.known.get(id) {
            return Ok(known.clone());
        }
        let started: Option<(Option<String>, Option<String>)> = sqlx::query_as(
            "SELECT payload->'Started'->>'tenant_id', payload->'Started'->>'wa_id' FROM events
              WHERE aggregate_type = 'whatsapp_conversation' AND aggregate_id = $1
                AND sequence = 1",
        )
        .bind(id)
        .fetch_optional(self.pool)
        .await?;
        let contact = match started {
            Some((Some(tenant), Some(wa_id))) => {
                events::whatsapp::contact_subject(&tenant, &wa_id).map(|s| (tenant, s))
            }
            _ => None,
        };
        self.known.insert(id.to_owned(), contact.clone());
        Ok(contact)
    }
}

/// Seals the conversations' personal values still in clear, `batch` events per transaction.
pub(super) async fn seal_conversations(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
    done: &mut Transformed,
) -> Result<(), TransformError> {
    let mut contacts = Contacts {
        pool,
        known: HashMap::new(),
    };
    let mut pages = Pages::new(pool, &["whatsapp_conversation"], PERSONAL_EVENTS, batch);
    while let Some(rows) = pages.next().await? {
        let mut changed = Vec::new();
        for mut row in rows {
            let contact = contacts.of(&row.aggregate_id).await?;
            if seal_row(&mut row, contact, keyring, done).await? {
                changed.push(row);
            }
        }
        write_changed(
            pool,
            changed,
            done,
            "WhatsApp conversations' personal fields",
        )
        .await?;
    }
    done.snapshots += seal_snapshots(pool).await?;
    Ok(())
}

/// Seals the personal values of `row` in clear for `contact` (`[erased]` when they were
/// erased); true when it changed.
async fn seal_row(
    row: &mut Stored,
    contact: Option<(String, Uuid)>,
    keyring: &Keyring,
    done: &mut Transformed,
) -> Result<bool, TransformError> {
    let body = &mut row.payload[&row.event_type];
    let mut changed = false;
    if row.event_type == "Started" && body.get("conversation_id").is_none() {
        body["conversation_id"] = Value::String(row.aggregate_id.clone());
        changed = true;
    }
    for pointer in personal_pointers(&row.event_type, body) {
        let Some(value) = body.pointer_mut(&pointer) else {
            continue;
        };
        let Some(text) = clear_text(value) else {
            continue;
        };
        let sealed = match &contact {
            Some((tenant, id)) => {
                let subject = Subject {
                    id: *id,
                    kind: SubjectKind::Contact,
                    tenant_id: tenant,
                };
                let Some(sealed) = seal_text(keyring, subject, &text, done).await? else {
                    continue;
                };
                sealed
            }
            None => {
                done.erased += 1;
                ERASED.to_owned()
            }
        };
        *value = Value::String(sealed);
        changed = true;
    }
    Ok(changed)
}

/// Whether `content` (an outbound message's) holds a personal text in clear.
fn content_in_clear(content: &Value) -> bool {
    let body = serde_json::json!({ "content": content });
    personal_pointers("MessageQueued", &body)
        .iter()
        .any(|p| body.pointer(p).and_then(clear_text).is_some())
}

/// Gives the conversation snapshots that keep the contact's number or an outbound content
/// in clear what their events hold now (sealed, or `[erased]`), and the conversation's own
/// id, so each is exactly the state a replay of the sealed events gives. Returns how many
/// changed; one rewritten by a commit meanwhile is left for the next run.
async fn seal_snapshots(pool: &PgPool) -> Result<u64, TransformError> {
    let snapshots: Vec<(String, i64, Value)> = sqlx::query_as(
        "SELECT aggregate_id, current_snapshot, payload FROM snapshots
          WHERE aggregate_type = 'whatsapp_conversation'",
    )
    .fetch_all(pool)
    .await?;
    let mut changed = 0;
    for (id, version, mut payload) in snapshots {
        let mut touched = false;
        if payload["wa_id"]
            .as_str()
            .and_then(|w| in_clear(Some(w)))
            .is_some()
        {
            let started: Option<String> = sqlx::query_scalar(
                "SELECT payload->'Started'->>'wa_id' FROM events
                  WHERE aggregate_type = 'whatsapp_conversation' AND aggregate_id = $1
                    AND sequence = 1",
            )
            .bind(&id)
            .fetch_optional(pool)
            .await?;
            if let Some(wa_id) = started.filter(|w| is_sealed(w) || w == ERASED) {
                payload["wa_id"] = Value::String(wa_id);
                payload["id"] = Value::String(id.clone());
                touched = true;
            }
        }
        touched |= seal_snapshot_contents(pool, &id, &mut payload).await?;
        if touched {
            changed +=
                rewrite_snapshot(pool, "whatsapp_conversation", &id, version, &payload).await?;
        }
    }
    Ok(changed)
}

/// Gives each outbound message of snapshot `payload` of conversation `id` whose content is
/// in clear the content its last `MessageQueued` or `MessageRevised` event holds now.
async fn seal_snapshot_contents(
    pool: &PgPool,
    id: &str,
    payload: &mut Value,
) -> Result<bool, TransformError> {
    let Some(outbound) = payload.get_mut("outbound").and_then(Value::as_object_mut) else {
        return Ok(false);
    };
    let mut touched = false;
    for (message_id, entry) in outbound.iter_mut() {
        if !content_in_clear(&entry["content"]) {
            continue;
        }
        let recorded: Option<Value> = sqlx::query_scalar(
            "SELECT payload->event_type->'content' FROM events
              WHERE aggregate_type = 'whatsapp_conversation' AND aggregate_id = $1
                AND event_type IN ('MessageQueued', 'MessageRevised')
                AND payload->event_type->>'message_id' = $2
              ORDER BY sequence DESC LIMIT 1",
        )
        .bind(id)
        .bind(message_id)
        .fetch_optional(pool)
        .await?;
        if let Some(content) = recorded.filter(|c| !content_in_clear(c)) {
            entry["content"] = content;
            touched = true;
        }
    }
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_personal_values_are_those_the_aggregate_seals() {
        let template = json!({"content": {"type": "template", "name": "order_update",
                                          "language": "en_US", "parameters": ["Kerry", "42"]}});
        assert_eq!(
            personal_pointers("MessageQueued", &template),
            ["/content/parameters/0", "/content/parameters/1"]
        );
        let file = json!({"content": {"type": "file", "kind": "document",
                                      "object_key": "tenants/t/files/a.pdf", "caption": "Yours"}});
        assert_eq!(
            personal_pointers("MessageRevised", &file),
            ["/content/caption", "/content/filename"]
        );
        assert!(content_in_clear(&file["content"]));
        assert!(!content_in_clear(
            &json!({"type": "file", "caption": ERASED})
        ));
        assert!(personal_pointers("SendAttempted", &json!({})).is_empty());
    }

    #[test]
    fn a_received_messages_object_is_in_clear_as_its_json_text() {
        assert_eq!(
            clear_text(&json!({"body": "Hi"})).as_deref(),
            Some(r#"{"body":"Hi"}"#)
        );
        assert_eq!(clear_text(&json!(ERASED)), None);
        assert_eq!(clear_text(&Value::Null), None);
        assert_eq!(clear_text(&json!("")), None);
    }
}
