//! Routes of privacy: `POST /v1/privacy/subjects/{id}/erase`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use events::http::{AuthUser, Problem, RequestIds};
use events::privacy::DATA_SUBJECT;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::http::accepted;
use crate::AppState;

/// The routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(erase))
}

/// Erase a data subject.
///
/// Forgets a person the platform holds data about (a phone user, a contact, an admin user;
/// docs/privacy.md): their data keys are destroyed in the transaction that records the
/// erasure, so every personal field sealed for them — in the event store, on the bus, in
/// backups — reads `[erased]` from then on, and nothing new is kept about them (a message in
/// their thread is refused 410 `subject_erased`). The event carries no personal data. Event:
/// Erased (aggregate `data_subject`). Erasing again appends nothing and answers the same.
/// The same transaction deletes a phone user's number and profile and ends the person's
/// tokens; after it, the files of their threads and the recordings about them are deleted
/// from the blob store (503 when the blob store fails: the erasure is recorded, and asking
/// again deletes what is left), and AssemblyAI is asked to forget the transcripts of
/// recordings about them (503 likewise). One person, one erasure: a phone user's number as
/// a contact (their WhatsApp and SMS) and a contact's number as a phone user are erased
/// with them, each recorded as an erasure of its own, and what was captured for the number
/// (an unused sign-in code) is deleted.
/// Allowed: a super admin, or the admin of the subject's tenant; agents, phone users and
/// service tokens: 403. An unknown subject, an id that is not a UUID, or another tenant's
/// subject: 404 (and a super admin, to anyone but a super admin). Erasing oneself: 422
/// `cannot_erase_self`.
#[utoipa::path(
    post,
    path = "/v1/privacy/subjects/{id}/erase",
    params(("id" = String, Path, description = "The subject's id (a phone user's id, or as docs/privacy.md derives it).")),
    responses(
        (status = 200, description = "Erased: `id` is the subject and `version` the version of its stream.", body = crate::http::Accepted),
        (status = 404, response = events::http::openapi::ProblemAnswer),
        (status = 422, response = events::http::openapi::ProblemAnswer),
        (status = 503, response = events::http::openapi::ProblemAnswer)
    ),
    security(("bearer" = []))
)]
async fn erase(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
) -> Result<Response, Problem> {
    // The caller is checked before the id, so a stranger learns nothing from the answer.
    super::service::may_erase(&who)?;
    let id =
        uuid::Uuid::try_parse(&raw).map_err(|_| Problem::not_found("data subject not found"))?;
    let committed = super::service::erase(&state, &who, id, &ids).await?;
    Ok(accepted(
        StatusCode::OK,
        DATA_SUBJECT,
        &committed.aggregate_id,
        committed.version,
    ))
}
