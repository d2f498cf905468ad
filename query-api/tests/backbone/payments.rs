//! Webhooks and payments: signatures checked against the providers' own library (Stripe's
//! Python package) and a standard HMAC tool (Python's `hmac`, for Lyra), Lyra's API faked
//! by a local server that asserts the exact request, duplicate and concurrent deliveries,
//! out-of-order statuses, dead letters and replays, reports and the payment timeline.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use chrono::Utc;
use events::access::TokenKeys;
use events::clock::{Clock, ManualClock};
use projector::due::DueProcessor;
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{create_tenant, eventually, expect_problem, py, Service, TestEnv, SECRET};

const STRIPE_SECRET: &str = "whsec_current_endpoint_secret";
const STRIPE_OLD_SECRET: &str = "whsec_rotated_out_soon";
const LYRA_SHOP: &str = "69876357";
const LYRA_PASSWORD: &str = "testpassword_DEMOPRIVATEKEY23G4475zXZQ2UA5x7M";
const LYRA_HMAC_KEY: &str = "38453613e7f44dc58732bad3dca2bca3";

/// A `Stripe-Signature` header made by Stripe's own library.
fn stripe_header(payload: &str, secret: &str, timestamp: i64) -> String {
    py(
        "import sys, stripe\n\
         print(stripe.WebhookSignature.generate_signature_header(sys.stdin.read(), sys.argv[1], timestamp=int(sys.argv[2])))",
        payload,
        &[secret, &timestamp.to_string()],
    )
}

/// Whether Stripe's own library accepts `header` for `payload` (the reference the endpoint
/// must agree with).
fn stripe_accepts(payload: &str, header: &str, secret: &str) -> bool {
    py(
        "import sys, stripe\n\
         try:\n    stripe.WebhookSignature.verify_header(sys.stdin.read(), sys.argv[1], sys.argv[2], 300)\n    print('ok')\n\
         except stripe.SignatureVerificationError:\n    print('refused')",
        payload,
        &[header, secret],
    ) == "ok"
}

/// Lyra's `kr-hash` of `answer` under `key`, by Python's standard `hmac`.
fn lyra_hash(answer: &str, key: &str) -> String {
    py(
        "import sys, hmac, hashlib\n\
         print(hmac.new(sys.argv[1].encode(), sys.stdin.read().encode(), hashlib.sha256).hexdigest())",
        answer,
        &[key],
    )
}

/// The three services, with webhook secrets and, when given, a (fake) Lyra.
struct Stack {
    env: TestEnv,
    api: Service,
    query: Service,
    _projector: tokio::task::JoinHandle<()>,
    tenant: String,
    admin: String,
}

impl Stack {
    /// `processor`: whether the projector runs its webhook process manager (tests that
    /// drive it step by step run without).
    async fn start(
        lyra: Option<&MockServer>,
        clock: Option<Arc<ManualClock>>,
        processor: bool,
    ) -> Self {
        let env = TestEnv::new().await;
        let mut config = env.command_config();
        config.ctx.payments.stripe_webhook_secret =
            vec![STRIPE_OLD_SECRET.into(), STRIPE_SECRET.into()];
        config.ctx.payments.lyra_password = Some(LYRA_PASSWORD.into());
        config.ctx.payments.lyra_hmac_key = Some(LYRA_HMAC_KEY.into());
        if let Some(server) = lyra {
            config.ctx.payments.lyra_api_url = server.uri();
            config.ctx.payments.lyra_shop_id = Some(LYRA_SHOP.into());
            config.backend_url = Some("https://backend.example/".into());
        }
        let api = match clock {
            Some(clock) => env.spawn_command_api_with_clock(config, clock).await,
            None => env.spawn_command_api(config).await,
        };
        let mut projector = env.projector_config();
        if processor {
            projector.nest_auth_secret = Some(SECRET.into());
            projector.command_api_url = api.url("");
        }
        let projector = env.spawn_projector(projector);
        let query = env.spawn_query_api(env.query_config()).await;
        let (tenant, _) = create_tenant(&env, &api, &format!("pay{}", &env.prefix[1..9])).await;
        let admin = env.admin_of(&tenant);
        let stack = Self {
            env,
            api,
            query,
            _projector: projector,
            tenant,
            admin,
        };
        stack.catalog().await;
        stack
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.env
            .http
            .put(self.api.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("sent")
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.env
            .http
            .post(self.api.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("sent")
    }

    /// VAT 20 % included; a lesson at 60.00 EUR, a book at 12.00 EUR.
    async fn catalog(&self) {
        let r = self
            .put(
                "/v1/catalog/taxes/vat",
                &self.admin,
                json!({"name": "VAT 20%", "rate_bp": 2000, "included": true}),
            )
            .await;
        assert_eq!(r.status(), 200, "tax saved");
        for (id, price) in [("lesson", 6000), ("book", 1200)] {
            let r = self
                .put(
                    &format!("/v1/catalog/products/{id}"),
                    &self.admin,
                    json!({"name": id, "unit_price": price, "currency": "EUR", "tax_id": "vat"}),
                )
                .await;
            assert_eq!(r.status(), 200, "product saved");
        }
    }

    /// Requests 2 lessons and a book (132.00 EUR, of which 22.00 VAT) from `provider`.
    async fn request(&self, provider: &str) -> (String, Value) {
        let r = self
            .post(
                "/v1/payments",
                &self.admin,
                json!({
                    "provider": provider,
                    "currency": "EUR",
                    "lines": [{"product_id": "lesson", "quantity": 2}, {"product_id": "book", "quantity": 1}],
                    "customer_reference": "cust-42",
                    "description": "Two lessons and the book",
                }),
            )
            .await;
        assert_eq!(r.status(), 201, "payment requested");
        let body: Value = r.json().await.expect("json");
        (body["id"].as_str().expect("id").to_owned(), body)
    }

    async fn stripe(&self, payload: &str, signature: Option<&str>) -> reqwest::Response {
        let mut request = self
            .env
            .http
            .post(self.api.url("/api/webhooks/stripe"))
            .header("content-type", "application/json")
            .body(payload.to_owned());
        if let Some(s) = signature {
            request = request.header("stripe-signature", s);
        }
        request.send().await.expect("sent")
    }

    /// An IPN of `answer`, signed as Lyra signs it (with the REST password).
    async fn ipn(&self, answer: &str) -> reqwest::Response {
        let hash = lyra_hash(answer, LYRA_PASSWORD);
        self.lyra(&[
            ("kr-hash", hash.as_str()),
            ("kr-hash-algorithm", "sha256_hmac"),
            ("kr-hash-key", "password"),
            ("kr-answer-type", "V4/Payment"),
            ("kr-answer", answer),
        ])
        .await
    }

    /// A Stripe delivery of `payload`, signed now by Stripe's library.
    async fn stripe_signed(&self, payload: &str) -> reqwest::Response {
        let signature = stripe_header(payload, STRIPE_SECRET, Utc::now().timestamp());
        self.stripe(payload, Some(&signature)).await
    }

    async fn lyra(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.env
            .http
            .post(self.api.url("/api/webhooks/lyra"))
            .form(form)
            .send()
            .await
            .expect("sent")
    }

    /// The payment as the query API shows it, once `check` holds.
    async fn payment_when(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let url = self.query.url(&format!("/v1/payments/{id}"));
        eventually(Duration::from_secs(20), what, || async {
            let p = self.env.get_json(&url, &self.admin).await;
            check(&p).then_some(p)
        })
        .await
    }

    /// The webhook as the query API shows it, once `check` holds.
    async fn webhook_when(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let url = self.query.url(&format!("/v1/webhooks/{id}"));
        let root = self.env.super_admin();
        eventually(Duration::from_secs(20), what, || async {
            let w = self.env.get_json(&url, &root).await;
            check(&w).then_some(w)
        })
        .await
    }

    async fn count(&self, sql: &str, bind: &str) -> i64 {
        sqlx::query_scalar(sql)
            .bind(bind)
            .fetch_one(&self.env.pool)
            .await
            .expect("count")
    }

    /// How many `event_type` events the payment's stream holds.
    async fn payment_events(&self, id: &str, event_type: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = 'payment' AND aggregate_id = $1 AND event_type = $2",
        )
        .bind(id)
        .bind(event_type)
        .fetch_one(&self.env.pool)
        .await
        .expect("count")
    }
}

/// The webhook id a 200 answer names.
async fn webhook_of(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn checkout_completed(event_id: &str, payment: &str, amount: i64) -> String {
    json!({
        "id": event_id, "object": "event", "api_version": "2024-06-20", "created": Utc::now().timestamp(),
        "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": "checkout.session.completed",
        "data": {"object": {
            "id": format!("cs_test_{event_id}"), "object": "checkout.session", "amount_subtotal": amount,
            "amount_total": amount, "currency": "eur", "client_reference_id": payment,
            "customer_details": {"email": "jane@example.com"}, "metadata": {}, "mode": "payment",
            "payment_intent": format!("pi_for_{payment}"), "payment_status": "paid", "status": "complete"
        }}
    })
    .to_string()
}

fn charge_refunded(event_id: &str, intent: &str, refunded: i64) -> String {
    json!({
        "id": event_id, "object": "event", "api_version": "2024-06-20", "created": Utc::now().timestamp(),
        "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null},
        "type": "charge.refunded",
        "data": {"object": {
            "id": format!("ch_{event_id}"), "object": "charge", "amount": 13200, "amount_captured": 13200,
            "amount_refunded": refunded, "captured": true, "currency": "eur", "paid": true,
            "refunded": refunded >= 13200, "payment_intent": intent, "metadata": {}, "status": "succeeded"
        }}
    })
    .to_string()
}

/// A Lyra `kr-answer` for `order` (V4/Payment), as the IPN carries it.
fn lyra_answer(order: &str, status: &str, amount: i64, tx_status: &str, detailed: &str) -> String {
    json!({
        "shopId": LYRA_SHOP, "orderCycle": "CLOSED", "orderStatus": status,
        "serverDate": Utc::now().to_rfc3339(),
        "orderDetails": {"orderTotalAmount": amount, "orderEffectiveAmount": amount, "orderCurrency": "EUR",
                         "mode": "TEST", "orderId": order, "_type": "V4/OrderDetails"},
        "customer": {"email": "jane@example.com", "reference": "cust-42", "_type": "V4/Customer/Customer"},
        "transactions": [{"shopId": LYRA_SHOP, "uuid": format!("tx{}", &order[..8]), "amount": amount,
                          "currency": "EUR", "paymentMethodType": "CARD", "status": tx_status,
                          "detailedStatus": detailed, "operationType": "DEBIT",
                          "_type": "V4/PaymentTransaction"}],
        "_type": "V4/Payment"
    })
    .to_string()
}

#[tokio::test]
async fn stripe_signatures_made_by_stripes_library_are_accepted_and_forgeries_refused() {
    let stack = Stack::start(None, None, false).await;
    let payload = checkout_completed("evt_sig_1", "00000000-0000-0000-0000-000000000001", 100);
    let now = Utc::now().timestamp();
    // Signed with either secret of a rotation.
    for secret in [STRIPE_SECRET, STRIPE_OLD_SECRET] {
        let signature = stripe_header(&payload, secret, now);
        assert!(stripe_accepts(&payload, &signature, secret));
        let r = stack.stripe(&payload, Some(&signature)).await;
        assert_eq!(r.status(), 200, "accepted with {secret}");
    }
    let before = stack.env.event_count().await;

    let signature = stripe_header(&payload, STRIPE_SECRET, now);
    let tampered = payload.replace("\"amount_total\":100", "\"amount_total\":1");
    assert_ne!(tampered, payload);
    assert!(!stripe_accepts(&tampered, &signature, STRIPE_SECRET));
    expect_problem(
        stack.stripe(&tampered, Some(&signature)).await,
        401,
        "bad_signature",
    )
    .await;
    let forged = stripe_header(&payload, "whsec_somebody_else", now);
    expect_problem(
        stack.stripe(&payload, Some(&forged)).await,
        401,
        "bad_signature",
    )
    .await;
    // A genuine delivery from months ago, replayed.
    let old = stripe_header(&payload, STRIPE_SECRET, now - 90 * 24 * 3600);
    expect_problem(
        stack.stripe(&payload, Some(&old)).await,
        401,
        "stale_timestamp",
    )
    .await;
    expect_problem(stack.stripe(&payload, None).await, 401, "missing_signature").await;
    expect_problem(
        stack.stripe(&payload, Some("t=1,v1=zz")).await,
        401,
        "malformed_signature",
    )
    .await;
    // Signed, but not what Stripe sends.
    let junk = r#"{"hello":"world"}"#;
    let signed_junk = stripe_header(junk, STRIPE_SECRET, now);
    expect_problem(
        stack.stripe(junk, Some(&signed_junk)).await,
        400,
        "invalid_payload",
    )
    .await;
    // Past the webhook body limit (1 MiB): a problem, before any signature is checked.
    let huge = "x".repeat(1024 * 1024 + 1);
    expect_problem(
        stack.stripe(&huge, Some(&signature)).await,
        413,
        "payload_too_large",
    )
    .await;
    assert_eq!(stack.env.event_count().await, before, "nothing appended");
    // Genuine events may be far larger than the JSON commands' 64 KiB limit.
    let mut big: Value =
        serde_json::from_str(&checkout_completed("evt_big", "none", 1)).expect("json");
    big["data"]["object"]["metadata"]["notes"] = json!("n".repeat(300 * 1024));
    let big = big.to_string();
    assert_eq!(stack.stripe_signed(&big).await.status(), 200);

    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT reason FROM webhook_rejections WHERE provider = 'stripe' ORDER BY id",
    )
    .fetch_all(&stack.env.pool)
    .await
    .expect("rejections");
    assert_eq!(
        reasons,
        [
            "bad_signature",
            "bad_signature",
            "stale_timestamp",
            "missing_signature",
            "malformed_signature"
        ]
    );
    let listed = stack
        .env
        .get_json(
            &stack.query.url("/v1/webhooks/rejections?provider=stripe"),
            &stack.env.super_admin(),
        )
        .await;
    assert_eq!(
        listed["items"].as_array().map(Vec::len),
        Some(5),
        "{listed}"
    );
    // Each refused body is kept as its shape and digest, never its content (a payer's
    // e-mail, a customer's text).
    for item in listed["items"].as_array().expect("items") {
        let shape = item["body_excerpt"].as_str().expect("shape");
        assert!(shape.starts_with("json keys: "), "{shape}");
        assert!(shape.contains("data") && shape.contains("type"), "{shape}");
        assert!(
            !listed.to_string().contains("jane@example.com")
                && !listed.to_string().contains("cs_test"),
            "no value kept: {listed}"
        );
        assert_eq!(item["body_sha256"].as_str().map(str::len), Some(64));
    }
    // The accepted one is listed by the time it arrived.
    let root = stack.env.super_admin();
    let today = Utc::now().date_naive();
    let tomorrow = today.succ_opt().expect("tomorrow");
    let listed_today = eventually(Duration::from_secs(20), "the webhook listed", || async {
        let page = stack
            .env
            .get_json(
                &stack.query.url(&format!(
                    "/v1/webhooks?provider=stripe&from={today}&to={tomorrow}"
                )),
                &root,
            )
            .await;
        (page["items"].as_array().map(Vec::len) == Some(2)).then_some(page)
    })
    .await;
    let mut ids: Vec<&str> = listed_today["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|w| w["provider_event_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    assert_eq!(ids, ["evt_big", "evt_sig_1"]);
    let before_today = stack
        .env
        .get_json(&stack.query.url(&format!("/v1/webhooks?to={today}")), &root)
        .await;
    assert_eq!(before_today["items"].as_array().map(Vec::len), Some(0));
    let bad = stack
        .env
        .http
        .get(stack.query.url("/v1/webhooks?from=yesterday"))
        .bearer_auth(&root)
        .send()
        .await
        .expect("sent");
    expect_problem(bad, 400, "invalid_query").await;
    let refused = stack
        .env
        .http
        .get(stack.query.url("/v1/webhooks/rejections"))
        .bearer_auth(&stack.admin)
        .send()
        .await
        .expect("sent");
    expect_problem(refused, 403, "forbidden").await;
}

#[tokio::test]
async fn a_payment_paid_after_it_was_cancelled_shows_no_error() {
    let stack = Stack::start(None, None, true).await;
    let (payment, _) = stack.request("stripe").await;
    let cancelled = stack
        .post(
            &format!("/v1/payments/{payment}/cancel"),
            &stack.admin,
            json!({"reason": "customer left"}),
        )
        .await;
    assert_eq!(cancelled.status(), 200);
    stack
        .payment_when(&payment, "cancelled", |p| {
            p["status"] == "cancelled" && p["last_error"] == "customer left"
        })
        .await;
    // The customer paid through the link anyway: the money was taken.
    let paid = checkout_completed("evt_paid_after_cancel", &payment, 13200);
    assert_eq!(stack.stripe_signed(&paid).await.status(), 200);
    let row = stack
        .payment_when(&payment, "paid", |p| p["status"] == "paid")
        .await;
    assert!(row["last_error"].is_null(), "{row}");
}

#[tokio::test]
async fn money_the_payment_could_not_take_shows_on_it_for_staff_to_act_on() {
    let stack = Stack::start(None, None, true).await;
    let completed = |event: &str, payment: &str, edit: &dyn Fn(&mut Value)| {
        let mut body: Value =
            serde_json::from_str(&checkout_completed(event, payment, 13200)).expect("json");
        edit(&mut body["data"]["object"]);
        body.to_string()
    };
    // Paid in another currency: not applied, and the payment says so.
    let (wrong_currency, _) = stack.request("stripe").await;
    let usd = completed("evt_usd", &wrong_currency, &|o| {
        o["currency"] = json!("usd")
    });
    assert_eq!(stack.stripe_signed(&usd).await.status(), 200);
    let row = stack
        .payment_when(&wrong_currency, "flagged", |p| p["attention"].is_string())
        .await;
    assert_eq!(row["attention"], "paid:amount_mismatch");
    assert_eq!(row["status"], "requested", "not applied");
    // Charged twice: the first applies, the second is a duplicate charge to refund.
    let (twice, _) = stack.request("stripe").await;
    let first = completed("evt_first", &twice, &|_| {});
    assert_eq!(stack.stripe_signed(&first).await.status(), 200);
    stack
        .payment_when(&twice, "paid", |p| p["status"] == "paid")
        .await;
    // The same charge told again (another event about it) is only a repeat.
    let again = completed("evt_again", &twice, &|_| {});
    assert_eq!(stack.stripe_signed(&again).await.status(), 200);
    let second = completed("evt_second", &twice, &|o| {
        o["payment_intent"] = json!("pi_second_charge")
    });
    assert_eq!(stack.stripe_signed(&second).await.status(), 200);
    let row = stack
        .payment_when(&twice, "flagged", |p| p["attention"].is_string())
        .await;
    assert_eq!(row["attention"], "paid:duplicate_charge");
    assert_eq!(row["status"], "paid");
    // The merchant returns the second charge: the payment keeps what it was paid, and
    // nothing is left to act on.
    let mut refund: Value = serde_json::from_str(&charge_refunded(
        "evt_second_returned",
        "pi_second_charge",
        13200,
    ))
    .expect("json");
    refund["data"]["object"]["metadata"] = json!({ "payment_id": twice });
    assert_eq!(stack.stripe_signed(&refund.to_string()).await.status(), 200);
    let row = stack
        .payment_when(&twice, "the duplicate returned", |p| {
            p["attention"].is_null()
        })
        .await;
    assert_eq!(
        (row["status"].as_str(), row["refunded"].as_i64()),
        (Some("paid"), Some(0))
    );
    let (flagged, _) = stack.request("stripe").await;
    let flag = completed("evt_flag", &flagged, &|o| o["amount_total"] = json!(99));
    assert_eq!(stack.stripe_signed(&flag).await.status(), 200);
    stack
        .payment_when(&flagged, "flagged", |p| {
            p["attention"] == "paid:amount_mismatch"
        })
        .await;
    // Admins list what needs them.
    let (quiet, _) = stack.request("stripe").await;
    let listed = stack
        .env
        .get_json(
            &stack.query.url("/v1/payments?attention=true"),
            &stack.admin,
        )
        .await;
    let mut ids: Vec<&str> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|p| p["id"].as_str())
        .collect();
    ids.sort_unstable();
    let mut expected = vec![wrong_currency.as_str(), flagged.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "not {quiet}");
}

#[tokio::test]
async fn a_duplicate_charge_is_tracked_on_the_payment_until_its_refunds_add_up() {
    let stack = Stack::start(None, None, true).await;
    let (payment, _) = stack.request("stripe").await;
    let paid = checkout_completed("evt_dup_first", &payment, 13200);
    assert_eq!(stack.stripe_signed(&paid).await.status(), 200);
    stack
        .payment_when(&payment, "paid", |p| p["status"] == "paid")
        .await;
    let refund_of_second = |event: &str, so_far: i64| {
        let mut refund: Value =
            serde_json::from_str(&charge_refunded(event, "pi_dup_second", so_far)).expect("json");
        refund["data"]["object"]["metadata"] = json!({ "payment_id": payment });
        refund.to_string()
    };
    // The merchant starts returning the second charge before Stripe reports that charge.
    let early = refund_of_second("evt_dup_refund_part", 5000);
    let id = webhook_of(stack.stripe_signed(&early).await).await;
    stack
        .webhook_when(&id, "the early refund processed", |w| {
            w["status"] == "processed"
        })
        .await;
    let mut second: Value =
        serde_json::from_str(&checkout_completed("evt_dup_second", &payment, 13200)).expect("json");
    second["data"]["object"]["payment_intent"] = json!("pi_dup_second");
    assert_eq!(stack.stripe_signed(&second.to_string()).await.status(), 200);
    let row = stack
        .payment_when(&payment, "the second charge tracked", |p| {
            p["other_charges"][0]["refunded"] == 5000
        })
        .await;
    assert_eq!(
        row["other_charges"][0]["provider_reference"],
        "pi_dup_second"
    );
    assert_eq!(row["other_charges"][0]["amount"], 13200);
    // Part of it returned: staff still owe the customer the rest.
    assert_eq!(row["attention"], "paid:duplicate_charge", "{row}");
    assert_eq!(
        (row["status"].as_str(), row["refunded"].as_i64()),
        (Some("paid"), Some(0))
    );
    let rest = refund_of_second("evt_dup_refund_rest", 13200);
    assert_eq!(stack.stripe_signed(&rest).await.status(), 200);
    let row = stack
        .payment_when(&payment, "the second charge returned", |p| {
            p["other_charges"][0]["refunded"] == 13200
        })
        .await;
    assert!(row["attention"].is_null(), "{row}");
    assert_eq!(
        (row["status"].as_str(), row["refunded"].as_i64()),
        (Some("paid"), Some(0)),
        "the payment keeps what it was paid"
    );
}

#[tokio::test]
async fn a_payments_money_ends_the_same_whatever_order_its_charges_come_in() {
    let stack = Stack::start(None, None, true).await;
    let charge = |event: &str, payment: &str, intent: &str, amount: i64| {
        let mut body: Value =
            serde_json::from_str(&checkout_completed(event, payment, amount)).expect("json");
        body["data"]["object"]["payment_intent"] = json!(intent);
        body.to_string()
    };
    let refund = |event: &str, payment: &str, intent: &str, so_far: i64| {
        let mut body: Value =
            serde_json::from_str(&charge_refunded(event, intent, so_far)).expect("json");
        body["data"]["object"]["metadata"] = json!({ "payment_id": payment });
        body.to_string()
    };
    // The customer pays twice; the merchant refunds the first charge. In either order of the
    // two confirmations, the payment is paid by the charge it kept.
    let mut rows = Vec::new();
    for (n, order) in [["a", "b"], ["b", "a"]].into_iter().enumerate() {
        let (payment, _) = stack.request("stripe").await;
        for intent in order {
            let body = charge(
                &format!("evt_{n}_{intent}"),
                &payment,
                &format!("pi_{n}_{intent}"),
                13200,
            );
            assert_eq!(stack.stripe_signed(&body).await.status(), 200);
        }
        stack
            .payment_when(&payment, "both charges", |p| {
                p["other_charges"].as_array().map(Vec::len) == Some(1)
            })
            .await;
        let body = refund(
            &format!("evt_{n}_refund"),
            &payment,
            &format!("pi_{n}_a"),
            13200,
        );
        assert_eq!(stack.stripe_signed(&body).await.status(), 200);
        let row = stack
            .payment_when(&payment, "the refund counted", |p| {
                p["version"].as_i64() == Some(4)
            })
            .await;
        // The refund shows on the charge it named, whichever that one was.
        let refunded_charge = row["charges"]
            .as_array()
            .and_then(|c| {
                c.iter()
                    .find(|c| c["provider_reference"] == format!("pi_{n}_a").as_str())
            })
            .cloned()
            .unwrap_or_default();
        assert_eq!(refunded_charge["refunded"], 13200, "{row}");
        rows.push((
            row["status"].clone(),
            row["refunded"].clone(),
            row["attention"].clone(),
            row["to_return"].clone(),
        ));
    }
    assert_eq!(rows[0], rows[1], "the same whatever order");
    assert_eq!(rows[0], (json!("paid"), json!(0), Value::Null, json!(0)));
    // A charge in another amount, then the payment, then a duplicate: each is flagged until
    // returned, and returning one never hides the other.
    let (payment, _) = stack.request("stripe").await;
    let send = |body: String| {
        let stack = &stack;
        async move { assert_eq!(stack.stripe_signed(&body).await.status(), 200) }
    };
    send(charge("evt_short", &payment, "pi_short", 5000)).await;
    stack
        .payment_when(&payment, "flagged", |p| {
            p["attention"] == "paid:amount_mismatch"
        })
        .await;
    send(charge("evt_full", &payment, "pi_full", 13200)).await;
    send(charge("evt_again", &payment, "pi_again", 13200)).await;
    let row = stack
        .payment_when(&payment, "the duplicate", |p| {
            p["attention"] == "paid:duplicate_charge"
        })
        .await;
    assert_eq!(row["status"], "paid");
    let reasons: Vec<&str> = row["other_charges"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["reason"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(reasons, ["amount_mismatch", "duplicate_charge"]);
    assert_eq!(row["to_return"], 13200 + 5000, "{row}");
    send(refund("evt_again_back", &payment, "pi_again", 13200)).await;
    stack
        .payment_when(&payment, "still flagged for the short charge", |p| {
            p["attention"] == "paid:amount_mismatch"
        })
        .await;
    send(refund("evt_short_back", &payment, "pi_short", 5000)).await;
    let row = stack
        .payment_when(&payment, "nothing left to return", |p| {
            p["attention"].is_null() && p["version"].as_i64() == Some(6)
        })
        .await;
    assert_eq!(
        (row["status"].as_str(), row["refunded"].as_i64()),
        (Some("paid"), Some(0))
    );
}

#[tokio::test]
async fn a_refund_reported_before_the_payment_is_applied_when_the_payment_is_confirmed() {
    let stack = Stack::start(None, None, true).await;
    let (payment, _) = stack.request("stripe").await;
    // Stripe's events come out of order: the refund (naming the payment) first.
    let mut refund: Value = serde_json::from_str(&charge_refunded(
        "evt_early_refund",
        &format!("pi_for_{payment}"),
        13200,
    ))
    .expect("json");
    refund["data"]["object"]["metadata"] = json!({ "payment_id": payment });
    let id = webhook_of(stack.stripe_signed(&refund.to_string()).await).await;
    stack
        .webhook_when(&id, "the early refund processed", |w| {
            w["status"] == "processed"
        })
        .await;
    let paid = checkout_completed("evt_late_confirmation", &payment, 13200);
    assert_eq!(stack.stripe_signed(&paid).await.status(), 200);
    let row = stack
        .payment_when(&payment, "paid, then refunded", |p| {
            p["status"] == "refunded"
        })
        .await;
    assert_eq!(row["refunded"], 13200, "{row}");
    assert!(row["attention"].is_null(), "{row}");
    assert_eq!(stack.payment_events(&payment, "Refunded").await, 1);
}

#[tokio::test]
async fn a_payment_refunded_in_many_parts_leaves_nothing_in_the_revenue_reports() {
    let stack = Stack::start(None, None, true).await;
    let (payment, _) = stack.request("stripe").await;
    let paid = checkout_completed("evt_parts_paid", &payment, 13200);
    assert_eq!(stack.stripe_signed(&paid).await.status(), 200);
    stack
        .payment_when(&payment, "paid", |p| p["status"] == "paid")
        .await;
    // Stripe reports what was refunded so far: 1.00, then 2.00, 3.00, and all of it.
    for (n, so_far) in [100, 200, 300, 13200].into_iter().enumerate() {
        let refund = charge_refunded(
            &format!("evt_part_{n}"),
            &format!("pi_for_{payment}"),
            so_far,
        );
        assert_eq!(stack.stripe_signed(&refund).await.status(), 200);
        stack
            .payment_when(&payment, "the refund applied", |p| p["refunded"] == so_far)
            .await;
    }
    let today = Utc::now().date_naive();
    let range = format!("from={today}&to={}", today.succ_opt().expect("tomorrow"));
    let stack = &stack;
    let report = |group: &'static str| {
        let url = stack.query.url(&format!(
            "/v1/payments/reports/revenue?group_by={group}&{range}"
        ));
        async move { stack.env.get_json(&url, &stack.admin).await }
    };
    let by_day = report("day").await;
    let row = &by_day["rows"][0];
    assert_eq!(
        (
            row["gross"].as_i64(),
            row["net"].as_i64(),
            row["tax"].as_i64()
        ),
        (Some(0), Some(0), Some(0)),
        "a fully refunded payment leaves nothing, to the cent: {by_day}"
    );
    let by_product = report("product").await;
    for row in by_product["rows"].as_array().expect("rows") {
        assert_eq!(
            (
                row["gross"].as_i64(),
                row["net"].as_i64(),
                row["tax"].as_i64()
            ),
            (Some(0), Some(0), Some(0)),
            "{by_product}"
        );
    }
}

#[tokio::test]
async fn a_webhook_delivered_five_times_at_once_is_one_event_and_one_payment_change() {
    let stack = Stack::start(None, None, true).await;
    let (payment, _) = stack.request("stripe").await;
    let payload = checkout_completed("evt_paid_once", &payment, 13200);
    let signature = stripe_header(&payload, STRIPE_SECRET, Utc::now().timestamp());
    let answers =
        futures::future::join_all((0..5).map(|_| stack.stripe(&payload, Some(&signature)))).await;
    let mut fresh = 0;
    for r in answers {
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.expect("json");
        if body["duplicate"] == false {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1, "exactly one delivery was new");
    let paid = stack
        .payment_when(&payment, "the payment paid", |p| p["status"] == "paid")
        .await;
    assert_eq!(paid["provider_reference"], format!("pi_for_{payment}"));
    let received = stack
        .count(
            "SELECT count(*) FROM events WHERE aggregate_type = 'webhook' AND event_type = 'Received' AND payload->'Received'->>'provider_event_id' = $1",
            "evt_paid_once",
        )
        .await;
    assert_eq!(received, 1);
    assert_eq!(stack.payment_events(&payment, "Paid").await, 1);
    let leaked = stack
        .count(
            "SELECT count(*) FROM events WHERE payload::text LIKE $1",
            "%jane@example.com%",
        )
        .await;
    assert_eq!(leaked, 0, "the customer's e-mail stays out of the store");

    // A partial refund names only the payment intent; a refund above what was paid and a
    // late failure are recorded, not applied.
    let refund = charge_refunded("evt_refund_1", &format!("pi_for_{payment}"), 1200);
    let r = stack.stripe_signed(&refund).await;
    assert_eq!(r.status(), 200);
    stack
        .payment_when(&payment, "the partial refund", |p| {
            p["status"] == "partially_refunded" && p["refunded"] == 1200
        })
        .await;
    let too_much = charge_refunded("evt_refund_2", &format!("pi_for_{payment}"), 99_999);
    let r = stack.stripe_signed(&too_much).await;
    let id = webhook_of(r).await;
    let webhook = stack
        .webhook_when(&id, "the over-refund processed", |w| {
            w["status"] == "processed"
        })
        .await;
    assert_eq!(webhook["outcome"], "recorded", "{webhook}");
    assert_eq!(webhook["detail"], "refund_exceeds_paid");
    let payment_now = stack.payment_when(&payment, "payment row", |_| true).await;
    assert_eq!(payment_now["refunded"], 1200);
    assert_eq!(payment_now["status"], "partially_refunded");
    let late_failure = json!({
        "id": "evt_late_failure", "object": "event", "type": "payment_intent.payment_failed",
        "data": {"object": {"id": format!("pi_for_{payment}"), "object": "payment_intent",
                 "amount": 13200, "currency": "eur", "metadata": {"payment_id": payment},
                 "last_payment_error": {"code": "card_declined", "message": "Your card was declined."},
                 "status": "requires_payment_method"}}
    })
    .to_string();
    let id = webhook_of(stack.stripe_signed(&late_failure).await).await;
    let webhook = stack
        .webhook_when(&id, "the late failure processed", |w| {
            w["status"] == "processed"
        })
        .await;
    assert_eq!(
        (webhook["outcome"].as_str(), webhook["detail"].as_str()),
        (Some("recorded"), Some("payment_partially_refunded"))
    );
    assert_eq!(
        stack
            .payment_events(&payment, "ProviderStatusIgnored")
            .await,
        2
    );
    assert_eq!(stack.payment_events(&payment, "Failed").await, 0);
}

#[tokio::test]
async fn lyra_link_then_ipn_then_report_and_timeline_and_a_replay_changes_nothing() {
    let lyra = MockServer::start().await;
    let stack = Stack::start(Some(&lyra), None, true).await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{LYRA_SHOP}:{LYRA_PASSWORD}"))
    );
    let id = uuid::Uuid::new_v4().to_string();
    Mock::given(method("POST"))
        .and(path("/api-payment/V4/Charge/CreatePaymentOrder"))
        .and(header("authorization", basic.as_str()))
        .and(header("content-type", "application/json"))
        .and(body_json(json!({
            "amount": 13200, "currency": "EUR", "orderId": id,
            "channelOptions": {"channelType": "URL"},
            "customer": {"reference": "cust-42"},
            "merchantComment": "Two lessons and the book",
            "ipnTargetUrl": "https://backend.example/api/webhooks/lyra",
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "webService": "Charge/CreatePaymentOrder", "version": "V4", "applicationVersion": "6.18.0",
            "status": "SUCCESS",
            "answer": {"paymentOrderId": "d63e7f507a6f4dfa86cb40a833ecfd85",
                       "paymentURL": "https://secure.lyra.com/t/ioeD1uRP", "paymentOrderStatus": "RUNNING",
                       "amount": 13200, "currency": "EUR", "orderId": id,
                       "expirationDate": "2030-07-01T23:59:59+00:00", "_type": "V4/PaymentOrder"},
            "ticket": null, "serverDate": "2026-12-03T10:00:00+00:00", "applicationProvider": "LYRA",
            "metadata": null, "mode": "TEST", "serverUrl": "https://api.lyra.com",
            "_type": "V4/WebService/Response"
        })))
        .expect(1)
        .mount(&lyra)
        .await;
    let r = stack
        .post(
            "/v1/payments",
            &stack.admin,
            json!({
                "id": id, "currency": "EUR",
                "lines": [{"product_id": "lesson", "quantity": 2}, {"product_id": "book", "quantity": 1}],
                "customer_reference": "cust-42", "description": "Two lessons and the book",
            }),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("json");
    assert_eq!(created["link"]["url"], "https://secure.lyra.com/t/ioeD1uRP");
    let linked = stack
        .payment_when(&id, "the link", |p| p["status"] == "link_created")
        .await;
    assert_eq!(
        (
            linked["net"].as_i64(),
            linked["tax"].as_i64(),
            linked["total"].as_i64()
        ),
        (Some(11000), Some(2200), Some(13200))
    );
    assert_eq!(linked["lines"].as_array().map(Vec::len), Some(2));

    let answer = lyra_answer(&id, "PAID", 13200, "PAID", "AUTHORISED");
    let hash = lyra_hash(&answer, LYRA_PASSWORD);
    let ipn = [
        ("kr-hash", hash.as_str()),
        ("kr-hash-algorithm", "sha256_hmac"),
        ("kr-hash-key", "password"),
        ("kr-answer-type", "V4/Payment"),
        ("kr-answer", answer.as_str()),
    ];
    let r = stack.lyra(&ipn).await;
    assert_eq!(r.status(), 200);
    let first: Value = r.json().await.expect("json");
    assert_eq!(first["duplicate"], false);
    let webhook = first["id"].as_str().expect("webhook id").to_owned();
    let paid = stack
        .payment_when(&id, "paid", |p| p["status"] == "paid")
        .await;
    assert!(paid["paid_at"].is_string());

    // Reports: revenue of today, by day and by product; CSV export.
    let today = Utc::now().date_naive();
    let range = format!("from={today}&to={}", today.succ_opt().expect("tomorrow"));
    let by_day = stack
        .env
        .get_json(
            &stack.query.url(&format!(
                "/v1/payments/reports/revenue?group_by=day&{range}"
            )),
            &stack.admin,
        )
        .await;
    let row = &by_day["rows"][0];
    assert_eq!(
        (
            row["gross"].as_i64(),
            row["net"].as_i64(),
            row["tax"].as_i64(),
            row["payments"].as_i64()
        ),
        (Some(13200), Some(11000), Some(2200), Some(1)),
        "{by_day}"
    );
    let by_product = stack
        .env
        .get_json(
            &stack.query.url(&format!(
                "/v1/payments/reports/revenue?group_by=product&{range}"
            )),
            &stack.admin,
        )
        .await;
    let gross_of = |key: &str| {
        by_product["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["key"] == key))
            .and_then(|r| r["gross"].as_i64())
    };
    assert_eq!(
        (gross_of("lesson"), gross_of("book")),
        (Some(12000), Some(1200)),
        "{by_product}"
    );
    let csv = stack
        .env
        .http
        .get(stack.query.url(&format!(
            "/v1/payments/reports/revenue?group_by=day&format=csv&{range}"
        )))
        .bearer_auth(&stack.admin)
        .send()
        .await
        .expect("sent");
    assert!(csv
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/csv")));
    let csv = csv.text().await.expect("text");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.lines().nth(1).is_some_and(|l| l.contains("13200")),
        "{csv}"
    );

    // The timeline: every event, the paid one with the IPN that caused it.
    let timeline = stack
        .env
        .get_json(
            &stack.query.url(&format!("/v1/payments/{id}/timeline")),
            &stack.admin,
        )
        .await;
    let types: Vec<&str> = timeline["events"]
        .as_array()
        .map(|e| e.iter().filter_map(|e| e["event_type"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(types, ["Requested", "LinkCreated", "Paid"], "{timeline}");
    let paid_event = &timeline["events"][2];
    assert_eq!(paid_event["webhook"]["id"], webhook.as_str());
    assert_eq!(paid_event["webhook"]["provider"], "lyra");
    assert_eq!(paid_event["webhook"]["payload"]["orderStatus"], "PAID");
    assert_eq!(
        paid_event["metadata"]["causation_id"],
        format!("webhook:{webhook}:1"),
        "the webhook's event caused the payment's"
    );

    // The customer's e-mail in the IPN never entered the store; a digest of the body did.
    let leaked = stack
        .count(
            "SELECT count(*) FROM events WHERE payload::text LIKE $1",
            "%jane@example.com%",
        )
        .await;
    assert_eq!(leaked, 0);
    let digest = stack
        .count(
            "SELECT count(*) FROM events WHERE aggregate_type = 'webhook' AND length(payload->'Received'->>'body_sha256') = 64 AND aggregate_id = $1",
            &webhook,
        )
        .await;
    assert_eq!(digest, 1);

    // The same IPN again, and its browser-return twin (signed with the HMAC key): nothing.
    let events_before = stack.env.event_count().await;
    let again: Value = stack.lyra(&ipn).await.json().await.expect("json");
    assert_eq!(again["duplicate"], true);
    let browser_hash = lyra_hash(&answer, LYRA_HMAC_KEY);
    let browser = [
        ("kr-hash", browser_hash.as_str()),
        ("kr-hash-algorithm", "sha256_hmac"),
        ("kr-hash-key", "sha256_hmac"),
        ("kr-answer-type", "V4/Payment"),
        ("kr-answer", answer.as_str()),
    ];
    let twin: Value = stack.lyra(&browser).await.json().await.expect("json");
    assert_eq!(twin["duplicate"], true);
    assert_eq!(stack.env.event_count().await, events_before);

    // An admin's replay processes it again: recorded, nothing applied twice.
    let r = stack
        .post(
            &format!("/v1/webhooks/{webhook}/replay"),
            &stack.env.super_admin(),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let replayed = stack
        .webhook_when(&webhook, "the replay processed", |w| {
            w["status"] == "processed" && w["version"].as_i64() >= Some(4)
        })
        .await;
    assert_eq!(replayed["outcome"], "applied", "{replayed}");
    assert_eq!(replayed["detail"], "Paid (recorded before)");
    assert_eq!(stack.payment_events(&id, "Paid").await, 1);
    let by_day_again = stack
        .env
        .get_json(
            &stack.query.url(&format!(
                "/v1/payments/reports/revenue?group_by=day&{range}"
            )),
            &stack.admin,
        )
        .await;
    assert_eq!(by_day_again["rows"], by_day["rows"]);
}

#[tokio::test]
async fn provider_failures_and_bad_input_are_answered_and_recorded_never_half_applied() {
    let lyra = MockServer::start().await;
    let stack = Stack::start(Some(&lyra), None, true).await;
    // Lyra refuses (a bad key answers 200 with status ERROR), then is down, then works.
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "webService": "Charge/CreatePaymentOrder", "version": "V4", "status": "ERROR",
            "answer": {"errorCode": "INT_905", "errorMessage": "invalid login or private key",
                       "detailedErrorCode": null, "detailedErrorMessage": null, "ticket": "null",
                       "_type": "V4/WebService/WebServiceError"},
            "ticket": null, "_type": "V4/WebService/Response"
        })))
        .up_to_n_times(1)
        .mount(&lyra)
        .await;
    let (refused, body) = stack.request("lyra").await;
    assert_eq!(body["link_error"]["code"], "INT_905", "{body}");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&lyra)
        .await;
    let (_, body) = stack.request("lyra").await;
    assert_eq!(body["link_error"]["code"], "provider_unavailable", "{body}");
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "status": "SUCCESS", "answer": {"paymentOrderId": "po-2", "paymentURL": "https://secure.lyra.com/t/2"}
        })))
        .mount(&lyra)
        .await;
    let r = stack
        .post(
            &format!("/v1/payments/{refused}/link"),
            &stack.admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let linked: Value = r.json().await.expect("json");
    assert_eq!(linked["link"]["url"], "https://secure.lyra.com/t/2");
    assert_eq!(stack.payment_events(&refused, "LinkFailed").await, 1);
    let r = stack
        .post(
            &format!("/v1/payments/{refused}/link"),
            &stack.admin,
            json!({}),
        )
        .await;
    expect_problem(r, 422, "not_awaiting_link").await;
    // A keyed request whose answer was never stored (the process died after the link was
    // recorded) carries on when retried: the same payment and its link, not a 409.
    let keyed = |key: &'static str| {
        stack
            .env
            .http
            .post(stack.api.url("/v1/payments"))
            .bearer_auth(&stack.admin)
            .header("idempotency-key", key)
            .json(&json!({"currency": "EUR", "lines": [{"product_id": "book", "quantity": 1}], "customer_reference": "c"}))
            .send()
    };
    let first: Value = keyed("lost-answer")
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    sqlx::query(
        "UPDATE idempotency_keys
            SET status = NULL, headers = NULL, body = NULL, released = true, request_id = NULL",
    )
    .execute(&stack.env.pool)
    .await
    .expect("answer forgotten");
    let again = keyed("lost-answer").await.expect("sent");
    assert_eq!(again.status(), 201);
    let again: Value = again.json().await.expect("json");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["link"]["url"], "https://secure.lyra.com/t/2");
    assert_eq!(
        stack
            .payment_events(first["id"].as_str().expect("id"), "Requested")
            .await,
        1
    );

    // Forged, unsigned and non-JSON IPNs: refused, nothing appended.
    let answer = lyra_answer(&refused, "PAID", 13200, "PAID", "AUTHORISED");
    let forged = lyra_hash(&answer, "not-the-password");
    let r = stack
        .lyra(&[
            ("kr-hash", forged.as_str()),
            ("kr-hash-key", "password"),
            ("kr-answer", answer.as_str()),
        ])
        .await;
    expect_problem(r, 401, "bad_signature").await;
    expect_problem(
        stack.lyra(&[("kr-answer", answer.as_str())]).await,
        401,
        "missing_signature",
    )
    .await;
    let not_json = "this is not json";
    let hash = lyra_hash(not_json, LYRA_PASSWORD);
    let r = stack
        .lyra(&[
            ("kr-hash", hash.as_str()),
            ("kr-hash-key", "password"),
            ("kr-answer", not_json),
        ])
        .await;
    expect_problem(r, 400, "invalid_payload").await;
    // An amount that does not match is recorded on the payment, not applied.
    let cheap = lyra_answer(&refused, "PAID", 100, "PAID", "AUTHORISED");
    let webhook = webhook_of(stack.ipn(&cheap).await).await;
    let w = stack
        .webhook_when(&webhook, "the mismatch processed", |w| {
            w["status"] == "processed"
        })
        .await;
    assert_eq!(
        (w["outcome"].as_str(), w["detail"].as_str()),
        (Some("recorded"), Some("amount_mismatch"))
    );
    assert_eq!(stack.payment_events(&refused, "Paid").await, 0);
    // A signed IPN for a payment that does not exist: acknowledged (a retry would not help)
    // and recorded as ignored.
    let stranger = uuid::Uuid::new_v4().to_string();
    let unknown = lyra_answer(&stranger, "PAID", 100, "PAID", "AUTHORISED");
    let webhook = webhook_of(stack.ipn(&unknown).await).await;
    let w = stack
        .webhook_when(&webhook, "the stranger processed", |w| {
            w["status"] == "processed"
        })
        .await;
    assert_eq!(
        (w["outcome"].as_str(), w["detail"].as_str()),
        (Some("ignored"), Some("no such payment"))
    );
    assert_eq!(w["tenant_id"], "platform");
    let received: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'webhook' AND event_type = 'Received'",
    )
    .fetch_one(&stack.env.pool)
    .await
    .expect("count");
    assert_eq!(received, 2, "only the two genuine IPNs were received");

    // Bad requests.
    let r = stack
        .post(
            "/v1/payments",
            &stack.admin,
            json!({"currency": "EUR", "lines": [{"product_id": "nope", "quantity": 1}], "customer_reference": "c"}),
        )
        .await;
    expect_problem(r, 422, "unknown_product").await;
    let r = stack
        .post(
            "/v1/payments",
            &stack.admin,
            json!({"currency": "USD", "lines": [{"product_id": "book", "quantity": 1}], "customer_reference": "c"}),
        )
        .await;
    expect_problem(r, 422, "currency_mismatch").await;
    let r = stack
        .post(
            "/v1/payments",
            &stack.env.agent_of(&stack.tenant),
            json!({"currency": "EUR", "lines": [{"product_id": "book", "quantity": 1}], "customer_reference": "c"}),
        )
        .await;
    expect_problem(r, 403, "forbidden").await;
    let r = stack
        .put(
            "/v1/catalog/taxes/vat",
            &stack.admin,
            json!({"name": "VAT", "rate_bp": 10001, "included": true}),
        )
        .await;
    expect_problem(r, 422, "invalid_rate").await;
    let r = stack
        .put(
            "/v1/catalog/products/x",
            &stack.admin,
            json!({"name": "x", "unit_price": 1, "currency": "EUR", "tax_id": "nope"}),
        )
        .await;
    expect_problem(r, 422, "unknown_tax").await;
    // Another tenant's admin learns nothing of the payment.
    let (other, _) = create_tenant(
        &stack.env,
        &stack.api,
        &format!("oth{}", &stack.env.prefix[1..9]),
    )
    .await;
    let outsider = stack.env.admin_of(&other);
    let r = stack
        .env
        .http
        .get(stack.query.url(&format!("/v1/payments/{refused}/timeline")))
        .bearer_auth(&outsider)
        .send()
        .await
        .expect("sent");
    expect_problem(r, 404, "not_found").await;
    let r = stack
        .post(
            &format!("/v1/payments/{refused}/cancel"),
            &outsider,
            json!({}),
        )
        .await;
    expect_problem(r, 404, "not_found").await;
    stack
        .env
        .assert_snapshots_crossed(events::payments::PAYMENT)
        .await;
}

/// Steps `processor` until it has sent one webhook for processing (the read model shows it
/// due once its last change is projected).
async fn processes_one(processor: &DueProcessor) {
    eventually(Duration::from_secs(20), "a due webhook", || async {
        let r = processor.step().await.expect("step");
        assert!(r.processed <= 1, "{r:?}");
        (r.processed == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_webhook_that_keeps_failing_is_dead_lettered_and_an_admin_replays_it() {
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let stack = Stack::start(None, Some(clock.clone()), false).await;
    let processor = DueProcessor::webhooks(
        stack.env.pool.clone(),
        &stack.api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    let (payment, _) = stack.request("stripe").await;
    let paid = checkout_completed("evt_paid_before_outage", &payment, 13200);
    let signature = stripe_header(&paid, STRIPE_SECRET, clock.now().timestamp());
    assert_eq!(stack.stripe(&paid, Some(&signature)).await.status(), 200);
    processes_one(&processor).await;
    // The event store refuses the payment's refunds (an outage of this database's writes,
    // made here for this test's own database only).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_refunds() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'writes refused'; END $$;
         CREATE TRIGGER refuse_refunds BEFORE INSERT ON events FOR EACH ROW
           WHEN (NEW.aggregate_type = 'payment' AND NEW.event_type = 'Refunded')
           EXECUTE FUNCTION refuse_refunds();",
    )
    .execute(&stack.env.pool)
    .await
    .expect("outage");
    let refund = charge_refunded("evt_in_outage", &format!("pi_for_{payment}"), 500);
    let signature = stripe_header(&refund, STRIPE_SECRET, clock.now().timestamp());
    let webhook = webhook_of(stack.stripe(&refund, Some(&signature)).await).await;
    let attempts = events::webhooks::MAX_ATTEMPTS as i64;
    for attempt in 1..=attempts {
        // Due now (just received, or its retry time has come).
        processes_one(&processor).await;
        let w = stack
            .webhook_when(&webhook, "the attempt recorded", |w| {
                w["attempts"].as_i64() == Some(attempt)
            })
            .await;
        if attempt < attempts {
            assert_eq!(w["status"], "retrying", "{w}");
            // Not retried before its time: not by the processor, nor when asked directly.
            assert_eq!(processor.step().await.expect("step").processed, 0);
            let early: Value = stack
                .post(
                    &format!("/v1/webhooks/{webhook}/process"),
                    &TokenKeys::new(SECRET).service_token("webhooks", 60),
                    json!({}),
                )
                .await
                .json()
                .await
                .expect("json");
            assert_eq!(early["status"], "retrying", "{early}");
            assert_eq!(
                stack
                    .count(
                        "SELECT count(*) FROM events WHERE aggregate_type = 'webhook' AND aggregate_id = $1",
                        &webhook,
                    )
                    .await,
                attempt + 1,
                "an early attempt records nothing"
            );
            clock.advance(chrono::Duration::hours(2));
        } else {
            assert_eq!(w["status"], "dead", "{w}");
            assert_eq!(w["last_error"], "event store unavailable", "{w}");
        }
    }
    let dead = stack
        .env
        .get_json(
            &stack.query.url("/v1/webhooks?status=dead"),
            &stack.env.super_admin(),
        )
        .await;
    assert_eq!(dead["items"].as_array().map(Vec::len), Some(1), "{dead}");
    clock.advance(chrono::Duration::hours(1));
    assert_eq!(
        processor.step().await.expect("step").processed,
        0,
        "a dead webhook waits"
    );

    // A tenant admin cannot replay the platform's webhook; a super admin can.
    let r = stack
        .post(
            &format!("/v1/webhooks/{webhook}/replay"),
            &stack.admin,
            json!({}),
        )
        .await;
    expect_problem(r, 404, "not_found").await;
    let r = stack
        .post(
            &format!("/v1/webhooks/{webhook}/replay"),
            &stack.env.super_admin(),
            json!({}),
        )
        .await;
    assert_eq!(r.status(), 200);
    stack
        .webhook_when(&webhook, "the replay", |w| {
            w["status"] == "received" && w["attempts"] == 0
        })
        .await;
    processes_one(&processor).await;
    stack
        .webhook_when(&webhook, "a fresh first attempt", |w| {
            w["status"] == "retrying" && w["attempts"] == 1
        })
        .await;
    stack
        .env
        .assert_snapshots_crossed(events::webhooks::WEBHOOK)
        .await;
    // The outage ends: the next attempt applies the refund.
    sqlx::raw_sql("DROP TRIGGER refuse_refunds ON events")
        .execute(&stack.env.pool)
        .await
        .expect("outage over");
    clock.advance(chrono::Duration::hours(1));
    processes_one(&processor).await;
    stack
        .payment_when(&payment, "the refund applied", |p| p["refunded"] == 500)
        .await;
}

/// A Stripe refund that names only a payment intent no payment was paid with.
fn orphan_refund(event_id: &str, intent: &str) -> String {
    charge_refunded(event_id, intent, 13200)
}

#[tokio::test]
async fn a_refund_naming_an_unknown_payment_intent_is_ignored_and_applies_once_that_intent_pays() {
    let stack = Stack::start(None, None, true).await;
    let (payment, _) = stack.request("stripe").await;
    // Another product on the same Stripe account, or our own checkout reported later: not
    // retried for hours, nor dead-lettered.
    let refund = orphan_refund("evt_refund_first", &format!("pi_for_{payment}"));
    let id = webhook_of(stack.stripe_signed(&refund).await).await;
    let w = stack
        .webhook_when(&id, "recorded as unmatched", |w| w["status"] == "processed")
        .await;
    assert_eq!(
        (w["outcome"].as_str(), w["attempts"].as_i64()),
        (Some("ignored"), Some(0)),
        "{w}"
    );
    let paid = checkout_completed("evt_paid_after_refund", &payment, 13200);
    assert_eq!(stack.stripe_signed(&paid).await.status(), 200);
    let row = stack
        .payment_when(&payment, "paid, then refunded", |p| {
            p["status"] == "refunded"
        })
        .await;
    assert_eq!(row["refunded"], 13200, "{row}");
    let w = stack
        .webhook_when(&id, "applied on replay", |w| w["outcome"] == "applied")
        .await;
    assert_eq!(w["payment_id"], payment.as_str(), "{w}");
}

#[tokio::test]
async fn an_unmatched_refund_recorded_after_its_payment_was_paid_is_replayed() {
    use projector::projection::Effect;
    let clock = Arc::new(ManualClock::new(Utc::now()));
    let stack = Stack::start(None, Some(clock.clone()), false).await;
    let processor = DueProcessor::webhooks(
        stack.env.pool.clone(),
        &stack.api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    let worker = projector::payments::references::PaymentReferences::new(
        stack.env.pool.clone(),
        projector::command_client::CommandClient::new(
            &stack.api.url(""),
            TokenKeys::new(SECRET),
            "payment-references",
        ),
    );
    let (payment, _) = stack.request("stripe").await;
    let signed = |body: &str| stripe_header(body, STRIPE_SECRET, clock.now().timestamp());
    let refund = orphan_refund("evt_refund_racing", &format!("pi_for_{payment}"));
    let webhook = webhook_of(stack.stripe(&refund, Some(&signed(&refund))).await).await;
    processes_one(&processor).await;
    // Its payment is paid; the worker saw that before the refund's outcome (both commits
    // raced): it is the refund's outcome that finds the payment now.
    let paid = checkout_completed("evt_paid_racing", &payment, 13200);
    assert_eq!(
        stack.stripe(&paid, Some(&signed(&paid))).await.status(),
        200
    );
    processes_one(&processor).await;
    let envelopes = stack.env.envelopes("webhook", &webhook).await;
    worker.perform(&envelopes).await.expect("replayed");
    processes_one(&processor).await;
    stack
        .payment_when(&payment, "refunded", |p| p["status"] == "refunded")
        .await;
    // Handling it again (a crash before the checkpoint moved) changes nothing.
    worker.perform(&envelopes).await.expect("no-op");
    assert_eq!(processor.step().await.expect("step").processed, 0);
    assert_eq!(stack.payment_events(&payment, "Refunded").await, 1);
}

#[tokio::test]
async fn a_catalog_lives_past_two_snapshot_intervals() {
    let stack = Stack::start(None, None, false).await;
    let product = |id: &str, price: i64, tax: &str, active: bool| json!({"name": id, "unit_price": price, "currency": "EUR", "tax_id": tax, "active": active});
    // A product may not name a tax the catalog does not have, before or after a snapshot.
    let r = stack
        .put(
            "/v1/catalog/products/course",
            &stack.admin,
            product("course", 9900, "reduced", true),
        )
        .await;
    expect_problem(r, 422, "unknown_tax").await;
    let r = stack
        .put(
            "/v1/catalog/taxes/reduced",
            &stack.admin,
            json!({"name": "VAT 5.5%", "rate_bp": 550, "included": true}),
        )
        .await;
    assert_eq!(r.status(), 200);
    for (id, price, tax, active) in [
        ("course", 9900, "reduced", true),
        ("book", 1500, "reduced", true),
        ("lesson", 6000, "vat", false),
    ] {
        let r = stack
            .put(
                &format!("/v1/catalog/products/{id}"),
                &stack.admin,
                product(id, price, tax, active),
            )
            .await;
        assert_eq!(r.status(), 200, "{id} saved");
    }
    // The catalog, loaded from its snapshot, knows the lesson is no longer sold.
    let r = stack
        .post(
            "/v1/payments",
            &stack.admin,
            json!({"currency": "EUR", "lines": [{"product_id": "lesson", "quantity": 1}], "customer_reference": "c"}),
        )
        .await;
    expect_problem(r, 422, "inactive_product").await;
    let r = stack
        .post(
            "/v1/payments",
            &stack.admin,
            json!({"currency": "EUR", "lines": [{"product_id": "course", "quantity": 1}, {"product_id": "book", "quantity": 2}], "customer_reference": "c"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    stack
        .env
        .assert_snapshots_crossed(events::payments::CATALOG)
        .await;
}

/// A webhook refused because the platform did not have the provider's new secret yet is
/// replayed by a super admin once it has: verified again as it came, then received once.
/// The refused body is kept sealed, never in clear; a replay that still fails says so and
/// logs nothing more; an erased or unknown rejection cannot be replayed.
#[tokio::test]
async fn a_refused_webhook_is_replayed_once_its_secret_is_configured() {
    const NEW_SECRET: &str = "whsec_rolled_at_the_provider";
    let stack = Stack::start(None, None, false).await;
    let root = stack.env.super_admin();
    let now = Utc::now().timestamp();
    let payload = checkout_completed("evt_rotated", "none", 1);
    assert!(payload.contains("jane@example.com"));
    let refused = stack
        .stripe(&payload, Some(&stripe_header(&payload, NEW_SECRET, now)))
        .await;
    expect_problem(refused, 401, "bad_signature").await;
    let stale_payload = checkout_completed("evt_delayed", "none", 1);
    let stale = stack
        .stripe(
            &stale_payload,
            Some(&stripe_header(&stale_payload, STRIPE_SECRET, now - 3600)),
        )
        .await;
    expect_problem(stale, 401, "stale_timestamp").await;
    let rows: Vec<(i64, String, Option<String>)> =
        sqlx::query_as("SELECT id, reason, sealed_request FROM webhook_rejections ORDER BY id")
            .fetch_all(&stack.env.pool)
            .await
            .expect("rejections");
    let (rotated, stale_id) = (rows[0].0, rows[1].0);
    for (_, _, sealed) in &rows {
        let sealed = sealed.as_deref().expect("kept for a replay");
        assert!(
            !sealed.contains("jane@example.com") && !sealed.contains("evt_"),
            "sealed, not in clear"
        );
    }
    let replay = |api: &Service, id: i64, token: String| {
        let url = api.url(&format!("/v1/webhooks/rejections/{id}/replay"));
        let http = stack.env.http.clone();
        async move {
            http.post(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sent")
        }
    };
    // Not a tenant admin's to replay.
    expect_problem(
        replay(&stack.api, rotated, stack.admin.clone()).await,
        403,
        "forbidden",
    )
    .await;
    // The secret is not configured yet: still refused, and not logged again.
    expect_problem(
        replay(&stack.api, rotated, root.clone()).await,
        422,
        "still_rejected",
    )
    .await;
    let logged: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_rejections")
        .fetch_one(&stack.env.pool)
        .await
        .expect("count");
    assert_eq!(logged, 2);
    // The operator adds the new secret (a second instance, as after a restart).
    let mut config = stack.env.command_config();
    config.ctx.payments.stripe_webhook_secret = vec![STRIPE_SECRET.into(), NEW_SECRET.into()];
    let rotated_api = stack.env.spawn_command_api(config).await;
    let first = replay(&rotated_api, rotated, root.clone()).await;
    assert_eq!(first.status(), 200);
    let first: Value = first.json().await.expect("json");
    assert_eq!(first["duplicate"], false, "{first}");
    let again: Value = replay(&rotated_api, rotated, root.clone())
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["duplicate"], true, "received once: {again}");
    assert_eq!(again["id"], first["id"]);
    // A genuine delivery refused for its age is taken on replay: its age is the point.
    let delayed = replay(&rotated_api, stale_id, root.clone()).await;
    assert_eq!(delayed.status(), 200);
    let listed = stack
        .env
        .get_json(&stack.query.url("/v1/webhooks/rejections"), &root)
        .await;
    let row = listed["items"]
        .as_array()
        .and_then(|items| items.iter().find(|r| r["id"] == rotated))
        .cloned()
        .expect("listed");
    assert!(row["replayed_at"].is_string(), "{row}");
    assert_eq!(row["replayed_webhook_id"], first["id"]);
    assert!(row["replayable_until"].is_string(), "{row}");
    // Erased after its week (as the purge does), or never there: nothing to replay.
    sqlx::query("UPDATE webhook_rejections SET sealed_request = NULL WHERE id = $1")
        .bind(rotated)
        .execute(&stack.env.pool)
        .await
        .expect("erased");
    expect_problem(
        replay(&rotated_api, rotated, root.clone()).await,
        410,
        "replay_expired",
    )
    .await;
    expect_problem(
        replay(&rotated_api, rotated + 1_000, root.clone()).await,
        404,
        "not_found",
    )
    .await;
}
