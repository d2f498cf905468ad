//! Routes of telephony: a tenant's numbers (`PUT /v1/telephony/numbers/{number}`,
//! `POST …/release`), and what the webhook layer asks of it: who owns the number a
//! SignalWire callback concerns, and the processing of a callback.

use axum::extract::{Path, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::routing::{post, put};
use axum::Router;
use events::http::{AuthUser, Json, Problem, RequestIds};
use events::telephony::PHONE_NUMBER;
use events::webhook::Outcome;
use events::Metadata;
use uuid::Uuid;

use super::aggregate::{CallCommand, PhoneNumberCommand, PhoneNumberError, SmsCommand, SmsReport};
use super::interpret::{self, Callback};
use crate::chat::aggregate::ThreadError;
use crate::chat::commands::{Action, Actor, ThreadCommand};
use crate::http::error::DomainProblem;
use crate::http::{accepted, administered_tenant, ForTenant};
use crate::identity::phone::PhoneNumber as E164;
use crate::store::CommandError;
use crate::webhooks::routes::{Attributed, Processing};
use crate::AppState;
use events::chat::{Channel, Party, PartyKind};

/// The routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/telephony/numbers/{number}", put(assign))
        .route("/v1/telephony/numbers/{number}/release", post(release))
}

fn number(raw: &str) -> Result<String, Problem> {
    E164::parse(raw)
        .map(|n| n.as_str().to_owned())
        .ok_or_else(|| {
            Problem::unprocessable(
                "invalid_phone",
                "A number is international, in E.164 (+ and 8 to 15 digits).",
            )
        })
}

async fn assign(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<ForTenant>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let number = number(&raw)?;
    let command = PhoneNumberCommand::Assign {
        tenant_id: tenant.clone(),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .phone_numbers
        .execute(&number, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        PHONE_NUMBER,
        &c.aggregate_id,
        c.version,
    ))
}

async fn release(
    State(state): State<AppState>,
    AuthUser(who): AuthUser,
    ids: RequestIds,
    Path(raw): Path<String>,
    Json(body): Json<ForTenant>,
) -> Result<Response, Problem> {
    let tenant = administered_tenant(&state, &who, body.tenant_id).await?;
    let number = number(&raw).map_err(|_| PhoneNumberError::NotFound.problem())?;
    let command = PhoneNumberCommand::Release {
        tenant_id: tenant.clone(),
        at: state.clock.now(),
    };
    let metadata = ids.metadata(&tenant, who.user_id(), who.actor_kind());
    let c = state
        .phone_numbers
        .execute(&number, None, command, &metadata)
        .await?;
    Ok(accepted(
        StatusCode::OK,
        PHONE_NUMBER,
        &c.aggregate_id,
        c.version,
    ))
}

/// The URL SignalWire called, as it signed it: `BACKEND_URL` (the public base) with the
/// request's path and query. Without `BACKEND_URL` there is none: the URL a request claims
/// (its `Host`) is the caller's to choose, so a signature made for another application's
/// URL would verify against it, and SignalWire callbacks are refused instead.
pub fn public_url(state: &AppState, uri: &Uri) -> Option<String> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let base = state.backend_url.as_ref()?;
    Some(format!("{}{path}", base.trim_end_matches('/')))
}

/// The tenant owning the number a callback concerns, if any.
async fn owner(state: &AppState, number: &str) -> Result<Option<String>, Problem> {
    let Some(number) = E164::parse(number) else {
        return Ok(None);
    };
    Ok(state
        .phone_numbers
        .load(number.as_str())
        .await?
        .tenant_id()
        .map(str::to_owned))
}

/// Threads tried for one sender's SMS: the id the platform derives for them, then the next
/// derived ids should one hold another thread (a thread opened under that id before
/// client-chosen ids were kept apart from derived ones).
const SMS_THREAD_CANDIDATES: u32 = 4;

/// The `n`-th id the platform derives for `from`'s SMS thread of `tenant` (name-based, UUID
/// version 5: a client never chooses one, see `chat::routes::open`).
fn sms_thread_id(tenant: &str, from: &str, n: u32) -> String {
    let name = match n {
        0 => format!("sms\0{tenant}\0{from}"),
        n => format!("sms\0{tenant}\0{from}\0{n}"),
    };
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// Delivers an inbound SMS into the contact's SMS thread of `tenant` (one per contact
/// number, opened on first contact, reopened by a new message): a message authored by the
/// contact, whose id derives from the provider's, so a repeat appends nothing. Never into a
/// thread of another channel or customer.
async fn deliver_to_thread(
    state: &AppState,
    tenant: &str,
    from: &str,
    sid: &str,
    body: &str,
    metadata: &Metadata,
) -> Result<String, Processing> {
    // The sender's number as E.164 (`tel:`, spaces and the usual separators dropped); a
    // sender that is no number (empty, words, far too long) has no thread to talk in, and
    // says so.
    let from: String = from
        .trim()
        .trim_start_matches("tel:")
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let from = from.as_str();
    let number_like = (2..=16).contains(&from.len())
        && from.starts_with('+')
        && from[1..].bytes().all(|b| b.is_ascii_digit());
    if !number_like {
        return Err(Processing::Done(
            Outcome::Recorded,
            Some(Attributed {
                payment_id: None,
                tenant_id: tenant.to_owned(),
            }),
            "SmsReceived; not delivered into a thread: the sender is not a phone number".into(),
        ));
    }
    let contact = Party {
        id: from.to_owned(),
        kind: PartyKind::Contact,
    };
    let actor = Actor::System {
        component: "webhooks".into(),
    };
    let at = state.clock.now();
    let attributed = || {
        Some(Attributed {
            payment_id: None,
            tenant_id: tenant.to_owned(),
        })
    };
    for n in 0..SMS_THREAD_CANDIDATES {
        let thread = sms_thread_id(tenant, from, n);
        let failed = |e: &dyn std::fmt::Display| {
            tracing::warn!(error = %e, thread, "could not deliver an SMS into its thread");
            Processing::Retry("event store unavailable".into())
        };
        let open = ThreadCommand {
            thread_id: thread.clone(),
            actor: actor.clone(),
            at,
            action: Action::Open {
                tenant_id: tenant.to_owned(),
                channel: Channel::Sms,
                customer: Some(contact.clone()),
                subject: None,
                tags: Vec::new(),
                // The bot does not answer on SMS.
                bot_enabled: Some(false),
            },
        };
        match state.threads.execute(&thread, None, open, metadata).await {
            Ok(_) | Err(CommandError::Rejected(ThreadError::AlreadyExists)) => {}
            Err(CommandError::Rejected(e)) => {
                return Err(Processing::Done(
                    Outcome::Recorded,
                    attributed(),
                    format!("SmsReceived; no thread: {e}"),
                ))
            }
            Err(e) => return Err(failed(&e)),
        }
        let message_id = Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("{thread}\0sms\0{sid}").as_bytes(),
        );
        let receive = ThreadCommand {
            thread_id: thread.clone(),
            actor: actor.clone(),
            at,
            action: Action::Receive {
                message_id: message_id.to_string(),
                text: body.to_owned(),
                from: contact.clone(),
                channel: Channel::Sms,
            },
        };
        match state
            .threads
            .execute(&thread, None, receive, metadata)
            .await
        {
            Ok(_) => return Ok(thread),
            Err(CommandError::Rejected(ThreadError::NotTheSendersThread)) => {
                tracing::warn!(thread, "an SMS thread id holds another thread: next id");
            }
            // The thread's older messages could not be read: not a verdict, try again.
            Err(CommandError::Rejected(e @ ThreadError::Unavailable(_))) => return Err(failed(&e)),
            Err(CommandError::Rejected(e)) => {
                return Err(Processing::Done(
                    Outcome::Recorded,
                    attributed(),
                    format!("SmsReceived; not delivered into its thread: {e}"),
                ))
            }
            Err(e) => return Err(failed(&e)),
        }
    }
    Err(Processing::Done(
        Outcome::Recorded,
        attributed(),
        "SmsReceived; not delivered: every thread id of the sender holds another thread".into(),
    ))
}

/// The tenant a kept callback belongs to, fixed when it arrives (the webhook's
/// attribution): the tenant of the SMS or call it reports on, if the platform has recorded
/// it already (a late status of a message a tenant sent stays with that tenant after its
/// number moved on), else the tenant owning the number now.
pub async fn owner_of_callback(
    state: &AppState,
    payload: &serde_json::Value,
) -> Result<Option<String>, Problem> {
    let (aggregate_type, sid, number) = match interpret::read(payload) {
        Callback::Sms { sid, number, .. } => (events::telephony::SMS, sid, number),
        Callback::Call { sid, number, .. } => (events::telephony::CALL, sid, number),
        Callback::Other => return Ok(None),
    };
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT metadata->>'tenant_id' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = 1",
    )
    .bind(aggregate_type)
    .bind(&sid)
    .fetch_optional(&state.pool)
    .await
    .map_err(|e| Problem::unavailable(&e))?;
    match recorded {
        Some(tenant) => Ok(Some(tenant)),
        None => owner(state, &number).await,
    }
}

/// Processes a SignalWire callback: the SMS or call it reports, for the tenant it belonged
/// to when it **arrived** (`received_by`, the webhook's own tenant: [`owner_of_callback`]).
/// Processed later — a retry, a replay, a backlog — it still lands with that tenant, even if
/// the number has moved to another since. A callback that arrived for a number nobody owned
/// is processed for the number's owner now, if any (a replay once it is assigned), else
/// recorded (its webhook), not applied.
pub(crate) async fn process_callback(
    state: &AppState,
    webhook_id: &str,
    payload: &serde_json::Value,
    received_by: Option<&str>,
    metadata: impl Fn(&str) -> Metadata,
) -> Processing {
    let ignored = |detail: &str| Processing::Done(Outcome::Ignored, None, detail.to_owned());
    let callback = interpret::read(payload);
    let number = match &callback {
        Callback::Sms { number, .. } | Callback::Call { number, .. } => number.clone(),
        Callback::Other => return ignored("not an event the platform acts on"),
    };
    let tenant = match received_by {
        Some(tenant) => tenant.to_owned(),
        None => match owner(state, &number).await {
            Ok(Some(t)) => t,
            Ok(None) => return ignored("no tenant owns the number"),
            Err(_) => return Processing::Retry("event store unavailable".into()),
        },
    };
    // Nothing of a suspended tenant is processed: the delivery waits for its reactivation.
    if state.access.is_suspended(&tenant) {
        return Processing::Held(tenant);
    }
    let at = state.clock.now();
    let metadata = metadata(&tenant);
    let outcome = match callback {
        Callback::Sms { sid, report, .. } => {
            let inbound = match &report {
                SmsReport::Received { from, body, .. } => Some((from.clone(), body.clone())),
                SmsReport::Status { .. } => None,
            };
            let command = SmsCommand {
                webhook_id: webhook_id.to_owned(),
                report,
                at,
            };
            let recorded = state
                .sms
                .execute_with_events(&sid, None, command, &metadata)
                .await
                .map(|(_, e)| e.first().map(cqrs_es::DomainEvent::event_type));
            // Delivered into the contact's SMS thread every time (a repeat names the same
            // message), so an attempt that failed between the two is completed by the next.
            match (recorded, inbound) {
                (Ok(event), Some((from, body))) => {
                    match deliver_to_thread(state, &tenant, &from, &sid, &body, &metadata).await {
                        Ok(thread) => Ok(Some(format!(
                            "{} in thread {thread}",
                            event.unwrap_or_else(|| "SmsReceived (recorded before)".into())
                        ))),
                        Err(retry) => return retry,
                    }
                }
                (recorded, _) => recorded,
            }
        }
        Callback::Call {
            sid,
            status,
            direction,
            from,
            to,
            duration_secs,
            recording_url,
            ..
        } => {
            let command = CallCommand {
                webhook_id: webhook_id.to_owned(),
                status,
                direction,
                from,
                to,
                duration_secs,
                recording_url,
                at,
            };
            state
                .calls
                .execute_with_events(&sid, None, command, &metadata)
                .await
                .map(|(_, e)| e.first().map(cqrs_es::DomainEvent::event_type))
        }
        Callback::Other => return ignored("not an event the platform acts on"),
    };
    let attributed = Some(Attributed {
        payment_id: None,
        tenant_id: tenant,
    });
    match outcome {
        Ok(Some(event_type)) => Processing::Done(Outcome::Applied, attributed, event_type),
        Ok(None) => Processing::Done(
            Outcome::Recorded,
            attributed,
            "an earlier or repeated status".into(),
        ),
        Err(CommandError::Rejected(e)) => {
            Processing::Done(Outcome::Ignored, attributed, e.to_string())
        }
        Err(e) => {
            tracing::warn!(error = %e, webhook_id, "telephony command failed");
            Processing::Retry("event store unavailable".into())
        }
    }
}
