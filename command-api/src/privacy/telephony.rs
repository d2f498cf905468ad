//! The store's transform of SMS and calls (docs/privacy.md, "The existing store"): the
//! other party's number, an SMS's text and a call's recording link, sealed for that person
//! as the telephony context now seals them ([`crate::telephony::personal`]); and the SMS
//! snapshots that keep a received text take it as their event now holds it.

use events::keyring::{Keyring, Subject, SubjectKind};
use events::personal::{SealedField, ERASED};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::store::{
    adopt_sealed, in_clear, seal_text, write_changed, Pages, Stored, TransformError, Transformed,
};
use crate::telephony::personal::{call_counterpart, contact};

/// The person a party's number names: the one it is sealed for, or the contact of the
/// number in clear; `None` when it is empty or already `[erased]`.
fn party(tenant: &str, number: &str) -> Option<Uuid> {
    match SealedField::parse(number) {
        Some(sealed) => Some(sealed.subject),
        None if number == ERASED => None,
        None => contact(tenant, number),
    }
}

/// The other party of event `row` and the pointers (in its body) of what is theirs.
async fn personal(
    pool: &PgPool,
    row: &Stored,
) -> Result<Option<(Uuid, Vec<&'static str>)>, sqlx::Error> {
    let body = &row.payload[&row.event_type];
    let text = |field: &str| body[field].as_str().unwrap_or_default().to_owned();
    let found = match row.event_type.as_str() {
        "SmsReceived" => party(&row.tenant_id, &text("from")).map(|p| (p, vec!["/from", "/body"])),
        // A status of one the tenant's number is receiving names its sender.
        "DeliveryStatusChanged" => match body["status"].as_str() {
            Some("receiving") => party(&row.tenant_id, &text("from")).map(|p| (p, vec!["/from"])),
            _ => party(&row.tenant_id, &text("to")).map(|p| (p, vec!["/to"])),
        },
        "CallStatusChanged" => {
            let field = match body["direction"].as_str() {
                Some("outbound") => "to",
                _ => "from",
            };
            let pointers = match field {
                "to" => vec!["/to", "/recording_url"],
                _ => vec!["/from", "/recording_url"],
            };
            party(&row.tenant_id, &text(field)).map(|p| (p, pointers))
        }
        "CallRecorded" => call_counterpart(pool, &row.tenant_id, &row.aggregate_id)
            .await?
            .map(|p| (p, vec!["/recording_url"])),
        _ => None,
    };
    Ok(found)
}

/// Seals what SMS and call events hold of their other party in clear, `batch` events per
/// transaction.
pub(super) async fn seal_telephony(
    pool: &PgPool,
    keyring: &Keyring,
    batch: i64,
    done: &mut Transformed,
) -> Result<(), TransformError> {
    let kinds = [
        "SmsReceived",
        "DeliveryStatusChanged",
        "CallStatusChanged",
        "CallRecorded",
    ];
    let mut pages = Pages::new(pool, &["sms", "call"], &kinds, batch);
    while let Some(rows) = pages.next().await? {
        let mut changed = Vec::new();
        for mut row in rows {
            if seal_row(pool, &mut row, keyring, done).await? {
                changed.push(row);
            }
        }
        write_changed(pool, changed, done, "SMS and calls' personal fields").await?;
    }
    // An SMS's snapshot keeps a received text (what its thread is given).
    done.snapshots += adopt_sealed(
        pool,
        "sms",
        &["body"],
        "SmsReceived",
        &["SmsReceived", "body"],
    )
    .await?;
    Ok(())
}

/// Seals the personal values of `row` still in clear (`[erased]` for someone erased); true
/// when it changed.
async fn seal_row(
    pool: &PgPool,
    row: &mut Stored,
    keyring: &Keyring,
    done: &mut Transformed,
) -> Result<bool, TransformError> {
    let Some((subject, pointers)) = personal(pool, row).await? else {
        return Ok(false);
    };
    let contact = Subject {
        id: subject,
        kind: SubjectKind::Contact,
        tenant_id: &row.tenant_id,
    };
    let body = &mut row.payload[&row.event_type];
    let mut changed = false;
    for pointer in pointers {
        let Some(value) = body.pointer_mut(pointer) else {
            continue;
        };
        let Some(text) = value.as_str().and_then(|t| in_clear(Some(t))) else {
            continue;
        };
        let Some(sealed) = seal_text(keyring, contact, text, done).await? else {
            continue;
        };
        *value = Value::String(sealed);
        changed = true;
    }
    Ok(changed)
}
