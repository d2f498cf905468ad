//! The payment providers' webhooks (Stripe and Lyra): verified with their signatures,
//! attributed to the tenant of the payment they name, and processed into a payment command
//! (`ProviderStatus`).

use axum::response::Response;
use events::http::Problem;
use events::payments::{PaymentEvent, PaymentProvider, PAYMENT};
use events::webhooks::{Outcome, Provider};
use serde_json::Value;
use sqlx::PgPool;

use super::aggregate::{PaymentAction, PaymentCommand, ProviderStatus};
use super::interpret::{self, Meaning, Reference};
use super::signature;
use crate::store::CommandError;
use crate::webhooks::provider::{
    Identity, NotProviderShaped, Pending, WebhookProvider, WebhookRequest,
};
use crate::webhooks::service::{
    receive, reject, replaying, stream_tenant, Attributed, Processing, Refused, UNMATCHED,
};
use crate::webhooks::verify::Rejection;
use crate::AppState;
use axum::extract::State;
use utoipa_axum::router::UtoipaMethodRouter;
use utoipa_axum::routes;

/// The webhooks of one payment provider.
pub(crate) struct PaymentWebhooks(Provider);

/// Stripe's events (`POST /api/webhooks/stripe`), signed with an endpoint secret.
pub(crate) const STRIPE: PaymentWebhooks = PaymentWebhooks(Provider::Stripe);
/// Lyra's notifications (`POST /api/webhooks/lyra`): the IPN, signed with the REST password,
/// and the browser return, signed with the HMAC-SHA-256 key.
pub(crate) const LYRA: PaymentWebhooks = PaymentWebhooks(Provider::Lyra);

#[async_trait::async_trait]
impl WebhookProvider for PaymentWebhooks {
    fn provider(&self) -> Provider {
        self.0
    }

    fn routes(&self) -> Vec<UtoipaMethodRouter<AppState>> {
        match self.0 {
            Provider::Lyra => vec![routes!(lyra_delivery)],
            _ => vec![routes!(stripe_delivery)],
        }
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        match self.0 {
            // Lyra signs a form field (`kr-hash`), kept with the body.
            Provider::Lyra => &[],
            _ => &["stripe-signature"],
        }
    }

    async fn deliver(
        &self,
        state: &AppState,
        request: WebhookRequest,
    ) -> Result<Response, Problem> {
        match self.0 {
            Provider::Lyra => self.lyra(state, request).await,
            _ => self.stripe(state, request).await,
        }
    }

    fn identify(&self, body: &Value) -> Result<Identity, NotProviderShaped> {
        interpret::identify(self.0, body)
    }

    fn retained(&self, body: &Value) -> Value {
        interpret::retained(self.0, body)
    }

    /// The tenant of the payment the webhook names, if it names one.
    async fn owner(
        &self,
        state: &AppState,
        identity: &Identity,
        _payload: &Value,
    ) -> Result<Option<String>, Problem> {
        match &identity.payment_id {
            Some(payment) => stream_tenant(&state.pool, PAYMENT, payment).await,
            None => Ok(None),
        }
    }

    async fn process(&self, state: &AppState, webhook: &Pending<'_>) -> Processing {
        let meaning = interpret::interpret(self.0, webhook.event_type, webhook.payload);
        apply(state, webhook, self.0, meaning).await
    }
}

impl PaymentWebhooks {
    /// A Stripe event: `Stripe-Signature` over the raw body, within its tolerance.
    async fn stripe(&self, state: &AppState, request: WebhookRequest) -> Result<Response, Problem> {
        let WebhookRequest {
            ids,
            uri,
            headers,
            body,
        } = request;
        let signature = headers
            .get("stripe-signature")
            .map(|v| v.to_str().unwrap_or("\u{fffd}"));
        let now = state.clock.now().timestamp();
        match signature::stripe(
            signature,
            &body,
            &state.ctx.payments.webhook_keys.stripe,
            now,
        ) {
            Ok(_) => {}
            // A replay is of a request refused days ago: its signature is genuine, its age
            // is the point of the replay.
            Err(Rejection::Stale) if replaying() => {}
            Err(r) => {
                let request = Refused::new(&uri, &headers, &body);
                return Err(reject(state, self, r, signature, &request).await);
            }
        }
        let payload: Value = serde_json::from_slice(&body)
            .map_err(|_| Problem::bad_request("invalid_payload", "The body is not JSON."))?;
        receive(state, &ids, self, payload, &body).await
    }

    /// A Lyra notification: a form whose `kr-answer` is signed by `kr-hash`.
    async fn lyra(&self, state: &AppState, request: WebhookRequest) -> Result<Response, Problem> {
        let WebhookRequest {
            ids,
            uri,
            headers,
            body,
        } = request;
        let request = Refused::new(&uri, &headers, &body);
        let form: signature::LyraForm = match serde_urlencoded::from_bytes(&body) {
            Ok(form) => form,
            Err(_) => return Err(reject(state, self, Rejection::Missing, None, &request).await),
        };
        let secrets = &state.ctx.payments.webhook_keys;
        let answer = match signature::lyra(
            &form,
            secrets.lyra_password.as_deref(),
            secrets.lyra_hmac_key.as_deref(),
        ) {
            Ok(answer) => answer,
            Err(r) => return Err(reject(state, self, r, form.hash.as_deref(), &request).await),
        };
        let payload: Value = serde_json::from_str(&answer)
            .map_err(|_| Problem::bad_request("invalid_payload", "kr-answer is not JSON."))?;
        receive(state, &ids, self, payload, &body).await
    }
}

/// Turns a webhook's meaning into a payment command.
async fn apply(
    state: &AppState,
    pending: &Pending<'_>,
    provider: Provider,
    meaning: Meaning,
) -> Processing {
    let webhook = pending.id;
    let ignored = |detail: &str| Processing::Done(Outcome::Ignored, None, detail.to_owned());
    let Some(status) = meaning.status else {
        return ignored(
            meaning
                .unhandled
                .unwrap_or("not an event the platform acts on"),
        );
    };
    let payment_id = match payment_named(state, meaning.reference, &status).await {
        Ok(id) => id,
        Err(outcome) => return outcome,
    };
    let tenant = match stream_tenant(&state.pool, PAYMENT, &payment_id).await {
        Ok(Some(t)) => t,
        Ok(None) => return ignored("no such payment"),
        Err(_) => return Processing::Retry("database unavailable".into()),
    };
    let payment = Some(Attributed {
        payment_id: Some(payment_id.clone()),
        tenant_id: tenant.clone(),
    });
    let command = PaymentCommand {
        at: state.clock.now(),
        action: PaymentAction::ProviderStatus {
            webhook_id: webhook.to_owned(),
            provider: match provider {
                Provider::Stripe => PaymentProvider::Stripe,
                Provider::Lyra => PaymentProvider::Lyra,
                Provider::Signalwire | Provider::Assemblyai | Provider::Whatsapp => {
                    return ignored("not a payment provider")
                }
            },
            status,
        },
    };
    let metadata = pending.metadata(&tenant);
    let events = match state
        .ctx
        .payments
        .payments
        .execute_with_events(&payment_id, None, command, &metadata)
        .await
    {
        Ok((_, events)) => events,
        Err(CommandError::Rejected(_)) => return ignored("no such payment"),
        Err(e) => {
            tracing::warn!(error = %e, webhook, "payment command failed");
            return Processing::Retry("event store unavailable".into());
        }
    };
    outcome_of(state, &payment_id, webhook, &events, payment).await
}

/// The payment a webhook names: by our id, or (the payment paid or charged again through
/// that transaction, from the event store, where committed is known) by the provider's.
/// Only a refund must find one; a failure or expiry naming an intent no payment was paid
/// with is for nobody here.
async fn payment_named(
    state: &AppState,
    reference: Reference,
    status: &ProviderStatus,
) -> Result<String, Processing> {
    let ignored = |detail: &str| Processing::Done(Outcome::Ignored, None, detail.to_owned());
    match reference {
        Reference::Payment(id) => Ok(id),
        Reference::Provider(reference) => {
            let found: Result<Option<String>, _> =
                sqlx::query_scalar(events::payments::lookups::PAID_WITH)
                    .bind(&reference)
                    .fetch_optional(&state.pool)
                    .await;
            match found {
                Ok(Some(id)) => Ok(id),
                Ok(None) if matches!(status, ProviderStatus::Refunded { .. }) => {
                    Err(Processing::Unmatched(reference))
                }
                Ok(None) => Err(ignored(UNMATCHED)),
                Err(e) => {
                    tracing::warn!(error = %e, "payments read model unavailable");
                    Err(Processing::Retry("database unavailable".into()))
                }
            }
        }
        Reference::None => Err(ignored("names no payment")),
    }
}

/// The webhook's outcome: what the payment appended, or, when it appended nothing (it took
/// this webhook into account before: an attempt whose outcome was not recorded, or a
/// replay), what it recorded then.
async fn outcome_of(
    state: &AppState,
    payment_id: &str,
    webhook: &str,
    events: &[PaymentEvent],
    payment: Option<Attributed>,
) -> Processing {
    let ignored = |detail: &str| Processing::Done(Outcome::Ignored, None, detail.to_owned());
    let (event_type, reason) = match events.first() {
        Some(PaymentEvent::ProviderStatusIgnored { reason, .. }) => {
            ("ProviderStatusIgnored".to_owned(), Some(reason.clone()))
        }
        // A charge that does not pay the payment: tracked beside it, not applied to it.
        Some(PaymentEvent::ChargedAgain { reason, .. }) => {
            ("ChargedAgain".to_owned(), Some(reason.clone()))
        }
        Some(e) => (cqrs_es::DomainEvent::event_type(e), None),
        None => match recorded_for(&state.pool, payment_id, webhook).await {
            Ok(Some(found)) => found,
            Ok(None) => return ignored("the payment holds no record of it"),
            Err(_) => return Processing::Retry("database unavailable".into()),
        },
    };
    let again = if events.is_empty() {
        " (recorded before)"
    } else {
        ""
    };
    match reason {
        Some(reason) => Processing::Done(Outcome::Recorded, payment, format!("{reason}{again}")),
        None => Processing::Done(Outcome::Applied, payment, format!("{event_type}{again}")),
    }
}

/// The payment event webhook `webhook` caused, and its reason when it was a status recorded
/// without being applied.
async fn recorded_for(
    pool: &PgPool,
    payment_id: &str,
    webhook: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT event_type, payload->event_type->>'reason' FROM events
          WHERE aggregate_type = $1 AND aggregate_id = $2
            AND payload->event_type->>'webhook_id' = $3
          ORDER BY sequence LIMIT 1",
    )
    .bind(PAYMENT)
    .bind(payment_id)
    .bind(webhook)
    .fetch_optional(pool)
    .await
}

/// Receive a Stripe event.
///
/// Stripe's webhook endpoint. Verification: `Stripe-Signature: t=…,v1=…[,v1=…]` is checked over
/// the raw body: a `v1` must be the hex HMAC-SHA256 of `"{t}.{raw body}"` under one of the
/// endpoint secrets of STRIPE_WEBHOOK_SECRET (comma-separated: several during a rotation; any
/// `v1` matching any secret passes); other schemes (`v0`) are ignored. No header:
/// `missing_signature`; no `t`, no `v1`, or a value that is not a number or hex:
/// `malformed_signature`; no match: `bad_signature`; a genuine signature whose `t` is more than
/// 300 s from now, either way (a replay, or a clock far ahead): `stale_timestamp` — checked
/// after the signature, so only a genuine request learns it is stale; STRIPE_WEBHOOK_SECRET
/// unset: `not_configured`. The verified body must be JSON with `id` and `type` (each at most
/// 255 characters) and an object `data.object` (400 `invalid_payload` otherwise).
/// De-duplication key: the event's `id` (`evt_…`). The payment is named by
/// `data.object.client_reference_id` or `data.object.metadata.payment_id` (our payment id),
/// otherwise matched later through its payment intent. Acted on: `checkout.session.completed`
/// and `checkout.session.async_payment_succeeded` (paid when `payment_status` is `paid`),
/// `checkout.session.async_payment_failed`, `checkout.session.expired`,
/// `payment_intent.succeeded`, `payment_intent.payment_failed`, `charge.refunded` (cumulative
/// `amount_refunded`); any other type is recorded as ignored. The body (at most 1 MiB; 413
/// above) is verified as received, before anything parses it, in constant time. A refusal
/// answers 401 with the `code` given above (`not_configured`: no secret is set for this
/// provider, so nothing can be verified and nothing is accepted), appends nothing and writes
/// one line to the capped rejection log (query-api `GET /v1/webhooks/rejections`). A verified
/// body that is not what the provider sends answers 400 `invalid_payload` (a retry cannot
/// succeed). A verified webhook appends Received once per de-duplication key and is answered at
/// once (no provider call, no payment logic in the request); a repeat delivery answers 200 with
/// `duplicate: true` and appends nothing. It is attributed to the tenant of the payment it
/// names, if known (`platform` otherwise), and processed afterwards by the platform (`POST
/// /v1/webhooks/{id}/process`); a webhook naming a payment that does not exist is still
/// acknowledged (200) and recorded as `ignored`. Providers send no `Idempotency-Key`:
/// de-duplication is by the provider's event. Allowed: anyone (no bearer token: the signature
/// authenticates the provider).
#[utoipa::path(
    post,
    path = "/api/webhooks/stripe",
    params(("Stripe-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256>[,v1=…][,v0=…]`, as Stripe signs it.")),
    request_body(content = StripeEvent, content_type = "application/json", description = "The Stripe event, byte for byte as Stripe sent it (the signature covers the raw bytes; the media type is not checked). Provider-shaped: other fields are kept in the webhook's payload."),
    responses(
        (status = 200, description = "Received (new, or a duplicate: see `duplicate`).", body = crate::webhooks::service::WebhookReceived),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 409, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn stripe_delivery(
    State(state): State<AppState>,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    STRIPE.deliver(&state, request).await
}

/// Receive a Lyra (PayZen) notification.
///
/// Lyra's IPN URL (the `ipnTargetUrl` of the links the platform makes), also where a frontend
/// may forward the browser return. Verification: `kr-hash` must be the hex HMAC-SHA256 of
/// `kr-answer` (an escaped `\/` read as `/` first, as Lyra's SDKs do), keyed by `kr-hash-key`:
/// `password` (the IPN, server to server; also when absent) with the REST API password
/// LYRA_PASSWORD, `sha256_hmac` (the browser return) with the HMAC-SHA-256 key LYRA_HMAC_KEY —
/// each key verifies only its own kind. A body that is not a form, or without `kr-answer` or
/// `kr-hash`: `missing_signature`; `kr-hash-algorithm` other than `sha256_hmac`, or
/// `kr-hash-key` other than `password` / `sha256_hmac`: `unsupported_algorithm`; the needed key
/// unset: `not_configured`; `kr-hash` not hex: `malformed_signature`; no match:
/// `bad_signature`. The verified `kr-answer` must be JSON with `orderStatus` and
/// `orderDetails.orderId` (each at most 64 characters; 400 `invalid_payload` otherwise).
/// De-duplication key: `{orderId}:{orderStatus}:{transaction uuid}:{transaction
/// status}:{detailedStatus}` (of the first transaction; `-` for a missing field): an IPN has no
/// id of its own, one is sent per transaction created or changed and a retry repeats it, so an
/// IPN and its browser-return twin are one webhook. The payment is named by
/// `orderDetails.orderId` (our payment id). Acted on: `orderStatus` `PAID` (amount
/// `orderDetails.orderTotalAmount` in `orderCurrency`), `UNPAID` (expired when the
/// transaction's `detailedStatus` is `EXPIRED`, failed otherwise), `ABANDONED` (failed);
/// `RUNNING`, `PARTIALLY_PAID` and other statuses are recorded as ignored. The body (at most 1
/// MiB; 413 above) is verified as received, before anything parses it, in constant time. A
/// refusal answers 401 with the `code` given above (`not_configured`: no secret is set for this
/// provider, so nothing can be verified and nothing is accepted), appends nothing and writes
/// one line to the capped rejection log (query-api `GET /v1/webhooks/rejections`). A verified
/// body that is not what the provider sends answers 400 `invalid_payload` (a retry cannot
/// succeed). A verified webhook appends Received once per de-duplication key and is answered at
/// once (no provider call, no payment logic in the request); a repeat delivery answers 200 with
/// `duplicate: true` and appends nothing. It is attributed to the tenant of the payment it
/// names, if known (`platform` otherwise), and processed afterwards by the platform (`POST
/// /v1/webhooks/{id}/process`); a webhook naming a payment that does not exist is still
/// acknowledged (200) and recorded as `ignored`. Providers send no `Idempotency-Key`:
/// de-duplication is by the provider's event. Allowed: anyone (no bearer token: the signature
/// authenticates the provider).
#[utoipa::path(
    post,
    path = "/api/webhooks/lyra",
    request_body(content = LyraForm, content_type = "application/x-www-form-urlencoded", description = "Lyra's form, byte for byte as sent (the media type is not checked). Other fields are ignored."),
    responses(
        (status = 200, description = "Received (new, or a duplicate: see `duplicate`).", body = crate::webhooks::service::WebhookReceived),
        (status = 401, response = events::http::openapi::ProblemAnswer),
        (status = 409, response = events::http::openapi::ProblemAnswer)
    )
)]
async fn lyra_delivery(
    State(state): State<AppState>,
    request: WebhookRequest,
) -> Result<Response, Problem> {
    LYRA.deliver(&state, request).await
}

/// A Stripe event as Stripe sends it (read raw: the signature covers its bytes). Other
/// fields are kept in the webhook's payload.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct StripeEvent {
    /// The event's id (`evt_…`), its de-duplication key.
    #[schema(
        min_length = 1,
        max_length = 255,
        example = "evt_1NG8Du2eZvKYlo2CUI79vXWy"
    )]
    id: String,
    /// Its type.
    #[schema(
        min_length = 1,
        max_length = 255,
        example = "checkout.session.completed"
    )]
    r#type: String,
    /// What it is about.
    data: StripeEventData,
}

/// The `data` of a Stripe event.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct StripeEventData {
    /// The object concerned (a Checkout Session, a PaymentIntent, a Charge).
    object: serde_json::Map<String, serde_json::Value>,
}

/// Lyra's IPN form (read raw: `kr-hash` covers `kr-answer`). Other fields are ignored.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct LyraForm {
    /// The payment (`V4/Payment`) as a JSON string.
    #[schema(rename = "kr-answer")]
    kr_answer: String,
    /// The hex HMAC-SHA256 of `kr-answer`.
    #[schema(rename = "kr-hash")]
    kr_hash: String,
    /// `password` (the IPN; also when absent) or `sha256_hmac` (the browser return).
    #[schema(rename = "kr-hash-key")]
    kr_hash_key: Option<String>,
    /// `sha256_hmac`.
    #[schema(rename = "kr-hash-algorithm")]
    kr_hash_algorithm: Option<String>,
}
