//! Who may erase whom, and the erasure itself (docs/privacy.md).

use events::access::{Principal, Role};
use events::http::{Problem, RequestIds};
use events::keyring::KnownSubject;
use uuid::Uuid;

use super::aggregate::SubjectCommand;
use crate::http::error::DomainProblem;
use crate::store::Committed;
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
    let (number, mut all) = super::person::same_person(state, id, &known).await?;
    super::person::linked_before(state, id, &mut all).await?;
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
    crate::audio::personal::forget_at_service(state, &known.tenant_id, id)
        .await
        .map_err(|e| Problem::unavailable(&e))?;
    Ok(committed)
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
