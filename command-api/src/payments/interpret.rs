//! What the payment providers' webhooks (Stripe, Lyra) say, read from their parsed bodies:
//! their identity (at ingestion, for de-duplication and attribution), what of them is kept,
//! and their meaning for a payment (when processed).

use events::webhooks::Provider;
use serde_json::Value;
use uuid::Uuid;

use crate::payments::aggregate::ProviderStatus;
use crate::webhooks::provider::{text, Identity, NotProviderShaped};

/// How a webhook names its payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Our payment id.
    Payment(String),
    /// The provider's transaction (a Stripe payment intent), known once the payment is paid.
    Provider(String),
    /// None.
    None,
}

/// What a webhook means for a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meaning {
    /// The payment.
    pub reference: Reference,
    /// The status it reports; `None` for an event the platform does not act on.
    pub status: Option<ProviderStatus>,
    /// Why it is not acted on, when there is more to say than that its type is not handled.
    pub unhandled: Option<&'static str>,
}

/// A string that is one of our payment ids (a UUID).
fn payment_id(raw: Option<&str>) -> Option<String> {
    raw.and_then(|s| Uuid::parse_str(s).ok())
        .map(|u| u.to_string())
}

/// Reads the identity of a verified payment provider's webhook body.
pub fn identify(provider: Provider, body: &Value) -> Result<Identity, NotProviderShaped> {
    match provider {
        Provider::Stripe => {
            let id = text(body, "/id")
                .filter(|id| id.len() <= 255)
                .ok_or(NotProviderShaped("a Stripe event has an id"))?;
            let event_type = text(body, "/type")
                .filter(|t| t.len() <= 255)
                .ok_or(NotProviderShaped("a Stripe event has a type"))?;
            if !body.pointer("/data/object").is_some_and(Value::is_object) {
                return Err(NotProviderShaped("a Stripe event has data.object"));
            }
            Ok(Identity {
                provider_event_id: id.to_owned(),
                event_type: event_type.to_owned(),
                payment_id: stripe_payment_id(body),
            })
        }
        Provider::Lyra => {
            let status = text(body, "/orderStatus")
                .filter(|s| s.len() <= 64)
                .ok_or(NotProviderShaped("a Lyra answer has an orderStatus"))?;
            let order = text(body, "/orderDetails/orderId")
                .filter(|s| s.len() <= 64)
                .ok_or(NotProviderShaped("a Lyra answer has orderDetails.orderId"))?;
            let tx = |field: &str| {
                text(body, &format!("/transactions/0/{field}"))
                    .unwrap_or("-")
                    .chars()
                    .take(64)
                    .collect::<String>()
            };
            // An IPN has no id of its own: one is sent per transaction created or changed,
            // and a retry repeats it, so these name one notification.
            let key = format!(
                "{order}:{status}:{}:{}:{}",
                tx("uuid"),
                tx("status"),
                tx("detailedStatus")
            );
            Ok(Identity {
                provider_event_id: key,
                event_type: status.to_owned(),
                payment_id: payment_id(Some(order)),
            })
        }
        Provider::Signalwire | Provider::Whatsapp | Provider::Assemblyai => {
            Err(NotProviderShaped("not a payment provider"))
        }
    }
}

fn stripe_payment_id(body: &Value) -> Option<String> {
    payment_id(text(body, "/data/object/client_reference_id"))
        .or_else(|| payment_id(text(body, "/data/object/metadata/payment_id")))
}

/// Which fields of a body are kept: a key and, for an object (or each object of an array),
/// which of its fields.
struct Keep(&'static str, &'static [Keep]);

/// Of a Stripe event: what identifies it and what payments need — no customer details.
const STRIPE_KEPT: &[Keep] = &[
    Keep("id", &[]),
    Keep("object", &[]),
    Keep("type", &[]),
    Keep("created", &[]),
    Keep("livemode", &[]),
    Keep("api_version", &[]),
    Keep(
        "data",
        &[Keep(
            "object",
            &[
                Keep("id", &[]),
                Keep("object", &[]),
                Keep("amount", &[]),
                Keep("amount_total", &[]),
                Keep("amount_subtotal", &[]),
                Keep("amount_received", &[]),
                Keep("amount_captured", &[]),
                Keep("amount_refunded", &[]),
                Keep("currency", &[]),
                Keep("client_reference_id", &[]),
                Keep("payment_intent", &[]),
                Keep("payment_status", &[]),
                Keep("status", &[]),
                Keep("paid", &[]),
                Keep("captured", &[]),
                Keep("refunded", &[]),
                Keep("livemode", &[]),
                Keep("metadata", &[Keep("payment_id", &[])]),
                Keep(
                    "last_payment_error",
                    &[
                        Keep("code", &[]),
                        Keep("decline_code", &[]),
                        Keep("type", &[]),
                        Keep("message", &[]),
                    ],
                ),
            ],
        )],
    ),
];

/// Of a Lyra payment (`kr-answer`): the order and its transactions — no customer, no card.
const LYRA_KEPT: &[Keep] = &[
    Keep("shopId", &[]),
    Keep("orderCycle", &[]),
    Keep("orderStatus", &[]),
    Keep("serverDate", &[]),
    Keep("_type", &[]),
    Keep(
        "orderDetails",
        &[
            Keep("orderId", &[]),
            Keep("orderTotalAmount", &[]),
            Keep("orderEffectiveAmount", &[]),
            Keep("orderCurrency", &[]),
            Keep("mode", &[]),
            Keep("_type", &[]),
        ],
    ),
    Keep(
        "transactions",
        &[
            Keep("uuid", &[]),
            Keep("amount", &[]),
            Keep("currency", &[]),
            Keep("status", &[]),
            Keep("detailedStatus", &[]),
            Keep("operationType", &[]),
            Keep("paymentMethodType", &[]),
            Keep("creationDate", &[]),
            Keep("errorCode", &[]),
            Keep("detailedErrorCode", &[]),
            Keep("_type", &[]),
        ],
    ),
];

fn keep(value: &Value, fields: &[Keep]) -> Value {
    match value {
        Value::Object(map) if !fields.is_empty() => Value::Object(
            fields
                .iter()
                .filter_map(|Keep(key, inner)| {
                    map.get(*key).map(|v| ((*key).to_owned(), keep(v, inner)))
                })
                .collect(),
        ),
        Value::Array(items) if !fields.is_empty() => {
            Value::Array(items.iter().map(|v| keep(v, fields)).collect())
        }
        // A leaf is kept as it is; an object or array where a leaf was expected is dropped.
        Value::Object(_) | Value::Array(_) => Value::Null,
        other => other.clone(),
    }
}

/// What of a verified body is kept in the `Received` event: the fields that identify it and
/// that payments need. Customers' personal data (names, e-mails, addresses, IP addresses,
/// card details) never enters the append-only store (docs/architecture.md, invariant 7); the
/// event keeps the SHA-256 of the whole body as proof of what arrived.
pub fn retained(provider: Provider, body: &Value) -> Value {
    match provider {
        Provider::Stripe => keep(body, STRIPE_KEPT),
        Provider::Lyra => keep(body, LYRA_KEPT),
        // Not a payment provider's: nothing of it is kept here.
        Provider::Signalwire | Provider::Assemblyai | Provider::Whatsapp => Value::Null,
    }
}

/// Reads what a webhook reports about a payment.
pub fn interpret(provider: Provider, event_type: &str, body: &Value) -> Meaning {
    match provider {
        Provider::Stripe => stripe(event_type, body),
        Provider::Lyra => lyra(event_type, body),
        // Not a payment provider's.
        Provider::Signalwire | Provider::Assemblyai | Provider::Whatsapp => Meaning {
            reference: Reference::None,
            status: None,
            unhandled: None,
        },
    }
}

fn stripe(event_type: &str, body: &Value) -> Meaning {
    let object = body.pointer("/data/object").unwrap_or(&Value::Null);
    let amount = |field: &str| object.get(field).and_then(Value::as_i64);
    let currency = text(object, "/currency").map(str::to_uppercase);
    let by_intent = |intent: Option<&str>| match (stripe_payment_id(body), intent) {
        (Some(id), _) => Reference::Payment(id),
        (None, Some(pi)) => Reference::Provider(pi.to_owned()),
        (None, None) => Reference::None,
    };
    let status = match event_type {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            match (
                text(object, "/payment_status"),
                amount("amount_total"),
                currency,
            ) {
                (Some("paid"), Some(amount), Some(currency)) => Some(ProviderStatus::Paid {
                    amount,
                    currency,
                    reference: text(object, "/payment_intent")
                        .or(text(object, "/id"))
                        .unwrap_or_default()
                        .to_owned(),
                }),
                _ => None,
            }
        }
        "checkout.session.async_payment_failed" => Some(ProviderStatus::Failed {
            reason: "async_payment_failed".into(),
        }),
        "checkout.session.expired" => Some(ProviderStatus::Expired),
        "payment_intent.succeeded" => match (amount("amount_received"), currency) {
            (Some(amount), Some(currency)) => Some(ProviderStatus::Paid {
                amount,
                currency,
                reference: text(object, "/id").unwrap_or_default().to_owned(),
            }),
            _ => None,
        },
        "payment_intent.payment_failed" => Some(ProviderStatus::Failed {
            reason: text(object, "/last_payment_error/code")
                .or(text(object, "/last_payment_error/message"))
                .unwrap_or("payment_failed")
                .to_owned(),
        }),
        "charge.refunded" => match (amount("amount_refunded"), currency) {
            (Some(refunded_total), Some(currency)) => Some(ProviderStatus::Refunded {
                refunded_total,
                currency,
                reference: text(object, "/payment_intent").map(str::to_owned),
            }),
            _ => None,
        },
        _ => None,
    };
    let intent = match event_type {
        "payment_intent.succeeded" | "payment_intent.payment_failed" => text(object, "/id"),
        _ => text(object, "/payment_intent"),
    };
    Meaning {
        reference: by_intent(intent),
        status,
        unhandled: None,
    }
}

fn lyra(order_status: &str, body: &Value) -> Meaning {
    let reference = payment_id(text(body, "/orderDetails/orderId"))
        .map(Reference::Payment)
        .unwrap_or(Reference::None);
    let tx = |field: &str| text(body, &format!("/transactions/0/{field}"));
    if tx("operationType") == Some("CREDIT") {
        // A refund's notification (the order stays PAID): not mapped yet, and not a payment.
        return Meaning {
            reference,
            status: None,
            unhandled: Some("Lyra refunds (CREDIT transactions) are not mapped yet"),
        };
    }
    let status = match order_status {
        "PAID" => match (
            body.pointer("/orderDetails/orderTotalAmount")
                .and_then(Value::as_i64),
            text(body, "/orderDetails/orderCurrency"),
        ) {
            (Some(amount), Some(currency)) => Some(ProviderStatus::Paid {
                amount,
                currency: currency.to_owned(),
                reference: tx("uuid").unwrap_or_default().to_owned(),
            }),
            _ => None,
        },
        "UNPAID" if tx("detailedStatus") == Some("EXPIRED") => Some(ProviderStatus::Expired),
        "UNPAID" => Some(ProviderStatus::Failed {
            reason: tx("errorCode")
                .or(tx("detailedStatus"))
                .unwrap_or("unpaid")
                .to_owned(),
        }),
        "ABANDONED" => Some(ProviderStatus::Failed {
            reason: "abandoned".into(),
        }),
        // RUNNING, PARTIALLY_PAID and anything new: recorded, nothing to apply.
        _ => None,
    };
    Meaning {
        reference,
        status,
        unhandled: None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const PAYMENT: &str = "0191e5a4-8c7b-7d2e-9f00-5c1a2b3c4d5e";

    #[test]
    fn a_stripe_checkout_names_its_payment_and_what_was_paid() {
        let body = json!({"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {
            "id": "cs_1", "amount_total": 4990, "currency": "eur", "client_reference_id": PAYMENT,
            "payment_intent": "pi_1", "payment_status": "paid"}}});
        let id = identify(Provider::Stripe, &body).expect("stripe-shaped");
        assert_eq!(id.provider_event_id, "evt_1");
        assert_eq!(id.payment_id.as_deref(), Some(PAYMENT));
        let meaning = interpret(Provider::Stripe, &id.event_type, &body);
        assert_eq!(meaning.reference, Reference::Payment(PAYMENT.into()));
        assert_eq!(
            meaning.status,
            Some(ProviderStatus::Paid {
                amount: 4990,
                currency: "EUR".into(),
                reference: "pi_1".into()
            })
        );
    }

    #[test]
    fn a_stripe_refund_without_our_id_names_the_payment_intent() {
        let body = json!({"id": "evt_2", "type": "charge.refunded", "data": {"object": {
            "id": "ch_1", "amount": 4990, "amount_refunded": 1000, "currency": "eur",
            "payment_intent": "pi_1", "metadata": {}}}});
        let meaning = interpret(Provider::Stripe, "charge.refunded", &body);
        assert_eq!(meaning.reference, Reference::Provider("pi_1".into()));
        assert_eq!(
            meaning.status,
            Some(ProviderStatus::Refunded {
                refunded_total: 1000,
                currency: "EUR".into(),
                reference: Some("pi_1".into()),
            })
        );
    }

    #[test]
    fn a_reference_longer_than_any_stripe_id_names_nothing() {
        let long = "pi_".to_owned() + &"x".repeat(300);
        let body = json!({"id": "evt_3", "type": "charge.refunded", "data": {"object": {
            "id": "ch_1", "amount": 4990, "amount_refunded": 1000, "currency": "eur",
            "payment_intent": long, "metadata": {}}}});
        let meaning = interpret(Provider::Stripe, "charge.refunded", &body);
        assert_eq!(meaning.reference, Reference::None);
    }

    #[test]
    fn personal_data_is_not_retained_but_what_payments_need_is() {
        let body = json!({"id": "evt_1", "type": "checkout.session.completed", "data": {"object": {
            "id": "cs_1", "amount_total": 4990, "currency": "eur", "client_reference_id": PAYMENT,
            "payment_intent": "pi_1", "payment_status": "paid",
            "customer_details": {"email": "jane@example.com", "name": "Jane"},
            "metadata": {"payment_id": PAYMENT, "note": "call Jane on +33612345678"}}}});
        let kept = retained(Provider::Stripe, &body);
        let text = kept.to_string();
        assert!(!text.contains("jane") && !text.contains("+336"), "{text}");
        assert_eq!(
            interpret(Provider::Stripe, "checkout.session.completed", &kept),
            interpret(Provider::Stripe, "checkout.session.completed", &body)
        );
        let mut answer = lyra_answer("PAID", "PAID", "AUTHORISED");
        answer["customer"] =
            json!({"email": "jane@example.com", "extraDetails": {"ipAddress": "90.71.64.161"}});
        answer["transactions"][0]["transactionDetails"] =
            json!({"cardDetails": {"pan": "497010XXXXXX0055"}});
        let kept = retained(Provider::Lyra, &answer);
        let text = kept.to_string();
        assert!(
            !text.contains("jane") && !text.contains("90.71") && !text.contains("4970"),
            "{text}"
        );
        assert_eq!(
            identify(Provider::Lyra, &kept),
            identify(Provider::Lyra, &answer)
        );
        assert_eq!(
            interpret(Provider::Lyra, "PAID", &kept),
            interpret(Provider::Lyra, "PAID", &answer)
        );
    }

    #[test]
    fn an_unhandled_stripe_type_means_nothing() {
        let body = json!({"id": "evt_3", "type": "customer.created", "data": {"object": {}}});
        assert_eq!(
            interpret(Provider::Stripe, "customer.created", &body).status,
            None
        );
    }

    #[test]
    fn bodies_that_are_not_provider_shaped_are_refused() {
        for body in [
            json!({}),
            json!({"id": "evt", "type": "x"}),
            json!({"id": "", "type": "x", "data": {"object": {}}}),
            json!([1]),
        ] {
            assert!(identify(Provider::Stripe, &body).is_err(), "{body}");
        }
        for body in [
            json!({"orderStatus": "PAID"}),
            json!({"orderDetails": {"orderId": "x"}}),
        ] {
            assert!(identify(Provider::Lyra, &body).is_err(), "{body}");
        }
    }

    fn lyra_answer(status: &str, tx_status: &str, detailed: &str) -> Value {
        json!({"orderStatus": status, "orderDetails": {"orderId": PAYMENT, "orderTotalAmount": 990,
            "orderCurrency": "EUR"}, "transactions": [{"uuid": "tx1", "status": tx_status,
            "detailedStatus": detailed}]})
    }

    #[test]
    fn a_lyra_notification_is_keyed_by_order_transaction_and_status() {
        let paid = identify(Provider::Lyra, &lyra_answer("PAID", "PAID", "AUTHORISED"))
            .expect("lyra-shaped");
        let captured = identify(Provider::Lyra, &lyra_answer("PAID", "PAID", "CAPTURED"))
            .expect("lyra-shaped");
        assert_eq!(
            paid.provider_event_id,
            format!("{PAYMENT}:PAID:tx1:PAID:AUTHORISED")
        );
        assert_ne!(paid.provider_event_id, captured.provider_event_id);
        assert_eq!(paid.payment_id.as_deref(), Some(PAYMENT));
    }

    #[test]
    fn lyra_statuses_map_onto_payments() {
        let m = |s, t, d| interpret(Provider::Lyra, s, &lyra_answer(s, t, d)).status;
        assert_eq!(
            m("PAID", "PAID", "AUTHORISED"),
            Some(ProviderStatus::Paid {
                amount: 990,
                currency: "EUR".into(),
                reference: "tx1".into()
            })
        );
        assert_eq!(
            m("UNPAID", "UNPAID", "EXPIRED"),
            Some(ProviderStatus::Expired)
        );
        assert_eq!(
            m("UNPAID", "UNPAID", "REFUSED"),
            Some(ProviderStatus::Failed {
                reason: "REFUSED".into()
            })
        );
        assert_eq!(m("RUNNING", "RUNNING", "WAITING_AUTHORISATION"), None);
        let mut refund = lyra_answer("PAID", "PAID", "CAPTURED");
        refund["transactions"][0]["operationType"] = json!("CREDIT");
        let meaning = interpret(Provider::Lyra, "PAID", &refund);
        assert_eq!(meaning.status, None);
        assert!(meaning.unhandled.is_some());
    }
}
