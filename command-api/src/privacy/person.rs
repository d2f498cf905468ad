//! The subjects one person is (docs/privacy.md, "one person, one erasure"): the phone user
//! a number signs in as at a tenant, the contact it is there, and the contact it was at the
//! platform while nobody owned it. Found through the number, read before anything is
//! erased, and linked in `subject_links` once found, so an erasure asked again from any
//! side reaches every one of them after the number is gone.

use events::http::Problem;
use events::keyring::{KeyError, KnownSubject, Subject, SubjectKind};
use uuid::Uuid;

use crate::telephony::personal::contact;
use crate::AppState;

/// Adds to `all` (subject `id`'s other subjects, as found now) those an earlier erasure of
/// the person found, and records every link both ways, so that an erasure asked again from
/// any side, once the number that links them is gone, reaches each of them.
pub(super) async fn linked_before(
    state: &AppState,
    id: Uuid,
    all: &mut Vec<(Uuid, KnownSubject)>,
) -> Result<(), Problem> {
    let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(e);
    let earlier: Vec<Uuid> =
        sqlx::query_scalar("SELECT linked_id FROM subject_links WHERE subject_id = $1")
            .bind(id)
            .fetch_all(&state.pool)
            .await
            .map_err(|e| unavailable(&e))?;
    for other in earlier {
        if all.iter().any(|(known, _)| *known == other) {
            continue;
        }
        let found = state
            .keyring
            .subject(other)
            .await
            .map_err(|e| unavailable(&e))?;
        if let Some(k) = found {
            all.push((other, k));
        }
    }
    let people: Vec<Uuid> = std::iter::once(id)
        .chain(all.iter().map(|(other, _)| *other))
        .collect();
    let (from, to): (Vec<Uuid>, Vec<Uuid>) = people
        .iter()
        .flat_map(|a| {
            people
                .iter()
                .filter(move |b| *b != a)
                .map(move |b| (*a, *b))
        })
        .unzip();
    sqlx::query(
        "INSERT INTO subject_links (subject_id, linked_id)
         SELECT * FROM unnest($1::uuid[], $2::uuid[]) ON CONFLICT DO NOTHING",
    )
    .bind(&from)
    .bind(&to)
    .execute(&state.pool)
    .await
    .map_err(|e| unavailable(&e))?;
    Ok(())
}

/// The number of the person subject `id` is, and the other subjects they are: the person
/// behind a number is the phone user it signs in as at the tenant, the contact it is there
/// (their WhatsApp and SMS), and the contact it was at the platform while the number was
/// nobody's (webhooks that came for it then). The first two are made known if they are not yet, so that nothing is kept
/// about the person on the other side either (a first SMS, a first sign-in); the third
/// only where it exists. One person, one erasure (docs/privacy.md).
pub(super) async fn same_person(
    state: &AppState,
    id: Uuid,
    known: &KnownSubject,
) -> Result<(Option<String>, Vec<(Uuid, KnownSubject)>), Problem> {
    let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(e);
    let tenant = known.tenant_id.as_str();
    let number = match known.kind.as_str() {
        "phone_user" => sqlx::query_scalar(
            "SELECT phone FROM phone_users WHERE tenant_id = $1 AND user_id = $2",
        )
        .bind(tenant)
        .bind(id.to_string())
        .fetch_optional(&state.pool)
        .await
        .map_err(|e| unavailable(&e))?,
        "contact" => match number_of_contact(state, id).await? {
            Some(number) => Some(number),
            None => signed_in_number(state, tenant, id).await?,
        },
        _ => None,
    };
    let Some(number) = number else {
        return Ok((None, Vec::new()));
    };
    let platform = events::identity::PLATFORM_TENANT;
    let phone_user = Uuid::parse_str(&state.ctx.identity.phone_keys.user_id(tenant, &number)).ok();
    let candidates = [
        (phone_user, SubjectKind::PhoneUser, tenant, true),
        (contact(tenant, &number), SubjectKind::Contact, tenant, true),
        (
            contact(platform, &number),
            SubjectKind::Contact,
            platform,
            false,
        ),
    ];
    let mut linked = Vec::new();
    for (other, kind, owner, make) in candidates {
        let Some(other) = other.filter(|other| *other != id) else {
            continue;
        };
        let found = state
            .keyring
            .subject(other)
            .await
            .map_err(|e| unavailable(&e))?;
        let subject = match found {
            Some(k) if k.tenant_id == owner => k,
            Some(_) => continue,
            None if make => {
                let made = Subject {
                    id: other,
                    kind,
                    tenant_id: owner,
                };
                match state.keyring.register(made).await {
                    Ok(()) | Err(KeyError::Erased) => {}
                    Err(e) => return Err(unavailable(&e)),
                }
                KnownSubject {
                    tenant_id: owner.to_owned(),
                    kind: kind.as_str().to_owned(),
                    erased: false,
                }
            }
            None => continue,
        };
        linked.push((other, subject));
    }
    Ok((Some(number), linked))
}

/// The number of `tenant`'s phone users that is contact `id` (a contact nothing in the
/// store names by number yet).
async fn signed_in_number(
    state: &AppState,
    tenant: &str,
    id: Uuid,
) -> Result<Option<String>, Problem> {
    let numbers: Vec<String> =
        sqlx::query_scalar("SELECT phone FROM phone_users WHERE tenant_id = $1")
            .bind(tenant)
            .fetch_all(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
    Ok(numbers.into_iter().find(|n| contact(tenant, n) == Some(id)))
}

/// The number contact `id` is reached at, opened from what the store sealed for them: the
/// address of a thread they are the customer of, their WhatsApp id, the sender or the
/// recipient of an SMS, or the other party of a call; `None` when nothing holds it (or it
/// reads `[erased]`). A scan of those events: erasures are rare.
async fn number_of_contact(state: &AppState, id: Uuid) -> Result<Option<String>, Problem> {
    let sealed: Option<(String, String)> = sqlx::query_as(
        "(SELECT 'address', payload->'Opened'->>'customer_address' FROM events
           WHERE aggregate_type = 'thread' AND event_type = 'Opened'
             AND payload->'Opened'->'customer'->>'id' = $1
             AND payload->'Opened'->>'customer_address' IS NOT NULL LIMIT 1)
         UNION ALL
         (SELECT 'wa_id', payload->'Started'->>'wa_id' FROM events
           WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'Started'
             AND payload->'Started'->>'wa_id' LIKE 'pii1.' || $1 || '.%' LIMIT 1)
         UNION ALL
         (SELECT 'address', payload->'SmsReceived'->>'from' FROM events
           WHERE aggregate_type = 'sms' AND event_type = 'SmsReceived'
             AND payload->'SmsReceived'->>'from' LIKE 'pii1.' || $1 || '.%' LIMIT 1)
         UNION ALL
         (SELECT 'address', payload->'DeliveryStatusChanged'->>'to' FROM events
           WHERE aggregate_type = 'sms' AND event_type = 'DeliveryStatusChanged'
             AND payload->'DeliveryStatusChanged'->>'to' LIKE 'pii1.' || $1 || '.%' LIMIT 1)
         UNION ALL
         (SELECT 'address', party FROM events,
                 LATERAL (VALUES (payload->'CallStatusChanged'->>'from'),
                                 (payload->'CallStatusChanged'->>'to')) AS p(party)
           WHERE aggregate_type = 'call' AND event_type = 'CallStatusChanged'
             AND party LIKE 'pii1.' || $1 || '.%' LIMIT 1)
         LIMIT 1",
    )
    .bind(id.to_string())
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    let Some((what, sealed)) = sealed else {
        return Ok(None);
    };
    let opened = state
        .keyring
        .open(&sealed)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    if opened == events::personal::ERASED || opened.is_empty() {
        return Ok(None);
    }
    Ok(Some(match what.as_str() {
        "wa_id" => format!("+{opened}"),
        _ => events::telephony::party_address(&opened),
    }))
}
