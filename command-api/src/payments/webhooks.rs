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

    fn paths(&self) -> &'static [&'static str] {
        match self.0 {
            Provider::Lyra => &["/api/webhooks/lyra"],
            _ => &["/api/webhooks/stripe"],
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
    let payment_id = match meaning.reference {
        Reference::Payment(id) => id,
        Reference::Provider(reference) => {
            // The payment paid (or charged again) through that transaction, from the event
            // store: committed is known. Only a refund must find one; a failure or expiry
            // naming an intent no payment was paid with is for nobody here.
            let found: Result<Option<String>, _> =
                sqlx::query_scalar(events::payments::lookups::PAID_WITH)
                    .bind(&reference)
                    .fetch_optional(&state.pool)
                    .await;
            match found {
                Ok(Some(id)) => id,
                Ok(None) if matches!(status, ProviderStatus::Refunded { .. }) => {
                    return Processing::Unmatched(reference)
                }
                Ok(None) => return ignored(UNMATCHED),
                Err(e) => {
                    tracing::warn!(error = %e, "payments read model unavailable");
                    return Processing::Retry("database unavailable".into());
                }
            }
        }
        Reference::None => return ignored("names no payment"),
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
    // Nothing appended: the payment took this webhook into account before (an attempt whose
    // outcome was not recorded, or a replay). Its outcome is what the payment recorded then.
    let (event_type, reason) = match events.first() {
        Some(PaymentEvent::ProviderStatusIgnored { reason, .. }) => {
            ("ProviderStatusIgnored".to_owned(), Some(reason.clone()))
        }
        // A charge that does not pay the payment: tracked beside it, not applied to it.
        Some(PaymentEvent::ChargedAgain { reason, .. }) => {
            ("ChargedAgain".to_owned(), Some(reason.clone()))
        }
        Some(e) => (cqrs_es::DomainEvent::event_type(e), None),
        None => match recorded_for(&state.pool, &payment_id, webhook).await {
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
