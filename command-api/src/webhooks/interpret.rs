//! What a provider's webhook says, read from its parsed body: its identity (at ingestion,
//! for de-duplication and attribution) and its meaning for a payment (when processed).

use events::webhook::Provider;
use serde_json::Value;
use uuid::Uuid;

use crate::payments::aggregate::ProviderStatus;

/// A webhook's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The de-duplication key within the provider.
    pub provider_event_id: String,
    /// The provider's event type.
    pub event_type: String,
    /// The payment it names directly, if any.
    pub payment_id: Option<String>,
}

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
}

/// Why a verified body is not what the provider sends (400: the sender must not retry it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotProviderShaped(pub &'static str);

fn text<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A string that is one of our payment ids (a UUID).
fn payment_id(raw: Option<&str>) -> Option<String> {
    raw.and_then(|s| Uuid::parse_str(s).ok())
        .map(|u| u.to_string())
}

/// Reads the identity of a verified webhook body.
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
    }
}

fn stripe_payment_id(body: &Value) -> Option<String> {
    payment_id(text(body, "/data/object/client_reference_id"))
        .or_else(|| payment_id(text(body, "/data/object/metadata/payment_id")))
}

/// Reads what a webhook reports about a payment.
pub fn interpret(provider: Provider, event_type: &str, body: &Value) -> Meaning {
    match provider {
        Provider::Stripe => stripe(event_type, body),
        Provider::Lyra => lyra(event_type, body),
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
    }
}

fn lyra(order_status: &str, body: &Value) -> Meaning {
    let reference = payment_id(text(body, "/orderDetails/orderId"))
        .map(Reference::Payment)
        .unwrap_or(Reference::None);
    let tx = |field: &str| text(body, &format!("/transactions/0/{field}"));
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
    Meaning { reference, status }
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
                currency: "EUR".into()
            })
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
    }
}
