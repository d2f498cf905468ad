//! Who may erase whom, and the erasure itself (docs/privacy.md).

use events::access::{Principal, Role};
use events::http::{Problem, RequestIds};
use events::keyring::{KeyError, KnownSubject, Subject, SubjectKind};
use uuid::Uuid;

use super::aggregate::SubjectCommand;
use crate::http::error::DomainProblem;
use crate::store::Committed;
use crate::telephony::personal::contact;
use crate::AppState;

/// 403 unless `who` is a super admin or a tenant admin (whose tenant is checked against the
/// subject's).
pub fn may_erase(who: &Principal) -> Result<(), Problem> {
    let admin = matches!(
        who,
        Principal::Admin {
            role: Role::SuperAdmin | Role::TenantAdmin,
            ..
        }
    );
    if admin {
        Ok(())
    } else {
        Err(Problem::forbidden(
            "Only a super admin or the tenant's admin may erase a data subject.",
        ))
    }
}

/// Erases data subject `id` as `who` asks. Allowed: a super admin, or the admin of the
/// subject's tenant; other roles 403. A subject the key table never knew, or another
/// tenant's, is not found (404) — the same answer, so an admin learns nothing of other
/// tenants' subjects. Erasing an erased subject appends nothing and answers the same.
pub async fn erase(
    state: &AppState,
    who: &Principal,
    id: Uuid,
    ids: &RequestIds,
) -> Result<Committed, Problem> {
    may_erase(who)?;
    let not_found = || Problem::not_found("data subject not found");
    let known = state
        .keyring
        .subject(id)
        .await
        .map_err(|e| Problem::unavailable(&e))?
        .ok_or_else(not_found)?;
    if !who.administers(&known.tenant_id) {
        return Err(not_found());
    }
    if known.kind == "admin_user" {
        staff_erasable(state, who, id).await?;
    }
    let (number, mut all) = same_person(state, id, &known).await?;
    linked_before(state, id, &mut all).await?;
    if let Some(number) = &number {
        // What was captured for the number (a sign-in code never verified) goes too.
        sqlx::query("DELETE FROM outbound_messages WHERE tenant_id = $1 AND recipient = $2")
            .bind(&known.tenant_id)
            .bind(number)
            .execute(&state.pool)
            .await
            .map_err(|e| Problem::unavailable(&e))?;
    }
    // Every subject of the person, the phone user last: their number is read from
    // `phone_users`, which their erasure empties, so while anything of the person is left
    // asking again from either side finds it. Every step is idempotent, so asking again
    // after a failure (a 503, a crash) finishes each erasure.
    all.push((id, known));
    all.sort_by_key(|(_, k)| k.kind == "phone_user");
    let mut asked = None;
    for (other, other_known) in all {
        let committed = erase_known(state, who, ids, other, &other_known).await?;
        if other == id {
            asked = Some(committed);
        }
    }
    asked.ok_or_else(|| Problem::unavailable(&"the erasure was not recorded"))
}

/// Records the erasure of subject `id` (`known` to the key table), with what was sealed for
/// a contact's calls before they were known, then deletes the subject's files.
async fn erase_known(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    id: Uuid,
    known: &KnownSubject,
) -> Result<Committed, Problem> {
    let command = SubjectCommand::Erase {
        tenant_id: known.tenant_id.clone(),
        kind: known.kind.clone(),
        by: who.user_id().to_owned(),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&known.tenant_id, who.user_id(), who.actor_kind());
    let committed = state
        .ctx
        .privacy
        .subjects
        .execute(&id.to_string(), None, command, &metadata)
        .await?;
    if known.kind == "contact" {
        erase_pending_calls(state, who, ids, &known.tenant_id, id).await?;
    }
    // After the record: the files go on every call, so asking again finishes what an
    // interrupted deletion left.
    let deleted = super::files::delete_subject_files(
        &state.pool,
        state.blobs.as_ref(),
        &known.tenant_id,
        id,
        &known.kind,
    )
    .await
    // 503: the erasure is recorded, and asking again deletes what is left.
    .map_err(|e| Problem::unavailable(&e))?;
    if deleted > 0 {
        tracing::info!(subject = %id, files = deleted, "an erased subject's files deleted");
    }
    // And what the transcription service keeps of recordings about them (503 likewise).
    crate::audio::service::forget_at_service(state, &known.tenant_id, id)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(committed)
}

/// Adds to `all` (subject `id`'s other subjects, as found now) those an earlier erasure of
/// the person found, and records every link both ways, so that an erasure asked again from
/// any side, once the number that links them is gone, reaches each of them.
async fn linked_before(
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
/// behind a number is the phone user it
/// signs in as at the tenant, the contact it is there (their WhatsApp and SMS), and the
/// contact it was at the platform while the number was nobody's (webhooks that came for
/// it then). The first two are made known if they are not yet, so that nothing is kept
/// about the person on the other side either (a first SMS, a first sign-in); the third
/// only where it exists. One person, one erasure (docs/privacy.md).
async fn same_person(
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
/// recipient of an SMS, or the other party of a call; `None` when nothing holds it (or it reads `[erased]`).
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

/// Erases, with contact `id` of `tenant`, what was sealed for their calls before the calls'
/// other party was known (a recording callback that came first, under the call's own
/// subject, at the tenant or, for a number nobody owned then, the platform). Each is an
/// erasure of its own, recorded as any is; erasing again appends nothing.
async fn erase_pending_calls(
    state: &AppState,
    who: &Principal,
    ids: &RequestIds,
    tenant: &str,
    id: Uuid,
) -> Result<(), Problem> {
    let unavailable = |e: &dyn std::fmt::Display| Problem::unavailable(e);
    let calls = crate::telephony::personal::calls_of(&state.pool, tenant, id)
        .await
        .map_err(|e| unavailable(&e))?;
    for sid in calls {
        for owner in [tenant, events::identity::PLATFORM_TENANT] {
            let pending = crate::telephony::personal::pending_call(owner, &sid);
            let known = state
                .keyring
                .subject(pending)
                .await
                .map_err(|e| unavailable(&e))?;
            let Some(known) = known.filter(|k| !k.erased) else {
                continue;
            };
            let command = SubjectCommand::Erase {
                tenant_id: known.tenant_id.clone(),
                kind: known.kind.clone(),
                by: who.user_id().to_owned(),
                at: state.clock.now(),
            };
            let metadata = ids.metadata(&known.tenant_id, who.user_id(), who.actor_kind());
            let subjects = &state.ctx.privacy.subjects;
            subjects
                .execute(&pending.to_string(), None, command, &metadata)
                .await?;
        }
    }
    Ok(())
}

/// The guards of deactivation hold for a staff member's erasure, which locks them out for
/// good: nobody erases themselves (the platform would lose its last super admin that way),
/// and only a super admin erases a super admin — whatever tenant the subject was registered
/// under before a promotion (404 otherwise, as for another tenant's subject).
async fn staff_erasable(state: &AppState, who: &Principal, id: Uuid) -> Result<(), Problem> {
    if who.user_id() == id.to_string() {
        return Err(Problem::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            "cannot_erase_self",
            "You cannot erase yourself: another administrator must.",
        ));
    }
    let user = state.ctx.identity.admins.load(&id.to_string()).await?;
    if user.role == Some(Role::SuperAdmin) && !who.is_super_admin() {
        return Err(Problem::not_found("data subject not found"));
    }
    Ok(())
}

impl DomainProblem for super::aggregate::SubjectError {
    fn problem(&self) -> Problem {
        match self {
            Self::NotFound => Problem::not_found(self.to_string()),
        }
    }
}
