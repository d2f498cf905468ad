//! WhatsApp through the Cloud API, faked by a local server that asserts the exact requests
//! (path, bearer token, JSON body) and answers as the provider does. Deliveries are signed
//! as Meta signs them (HMAC-SHA256 of the raw body with the app secret) and shaped as its
//! documented payloads.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use events::access::TokenKeys;
use events::clock::{Clock, ManualClock};
use hmac::{Hmac, Mac};
use projector::due::DueProcessor;
use projector::whatsapp::sender::{CloudApi, Sender};
use serde_json::{json, Value};
use sha2::Sha256;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::support::{create_tenant, eventually, expect_problem, Service, TestEnv, SECRET};

const NUMBER_ID: &str = "106540352242922";
const TOKEN: &str = "EAAG-test-access-token";
const APP_SECRET: &str = "app-secret-of-the-test";
const VERIFY: &str = "verify-token-of-the-test";
const CONTACT: &str = "16505551234";

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

/// A delivery of `messages` and `statuses` for `number`, as Meta shapes it.
fn delivery(number: &str, messages: Value, statuses: Value) -> Value {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": number},
    });
    if messages.as_array().is_some_and(|m| !m.is_empty()) {
        value["contacts"] = json!([{"profile": {"name": "Sheena Nelson"}, "wa_id": CONTACT}]);
        value["messages"] = messages;
    }
    if statuses.as_array().is_some_and(|s| !s.is_empty()) {
        value["statuses"] = statuses;
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398",
        "changes": [{"field": "messages", "value": value}]}]})
}

fn text(id: &str, body: &str, at: i64) -> Value {
    json!({"from": CONTACT, "id": id, "timestamp": at.to_string(), "type": "text",
           "text": {"body": body}})
}

fn status(wamid: &str, status: &str, callback: Option<&str>) -> Value {
    let mut s = json!({"id": wamid, "status": status,
        "timestamp": Utc::now().timestamp().to_string(), "recipient_id": CONTACT,
        "pricing": {"billable": false, "pricing_model": "PMP", "type": "free_customer_service",
                    "category": "service"}});
    if let Some(c) = callback {
        s["biz_opaque_callback_data"] = json!(c);
    }
    s
}

struct Wa {
    env: TestEnv,
    api: Service,
    query: Service,
    _projector: tokio::task::JoinHandle<()>,
    tenant: String,
    admin: String,
    cloud: MockServer,
    clock: Arc<ManualClock>,
    webhooks: DueProcessor,
    sender: Sender,
}

impl Wa {
    /// The services on a manual clock; the test drives the webhook processor and the sender.
    async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// [`Wa::start`], with command-api's settings changed by `configure` too.
    async fn start_with(configure: impl FnOnce(&mut command_api::config::Config)) -> Self {
        let env = TestEnv::new().await;
        let cloud = MockServer::start().await;
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let mut config = env.command_config();
        config.ctx.whatsapp.whatsapp_api_url = cloud.uri();
        config.ctx.whatsapp.whatsapp_app_secret = vec!["platform-app-secret".into()];
        configure(&mut config);
        let api = env
            .spawn_command_api_with_clock(config, clock.clone())
            .await;
        let projector = env.spawn_projector(env.projector_config());
        let query = env.spawn_query_api(env.query_config()).await;
        let (tenant, _) = create_tenant(&env, &api, &format!("wa{}", &env.prefix[1..9])).await;
        let admin = env.admin_of(&tenant);
        let webhooks = DueProcessor::webhooks(
            env.pool.clone(),
            &api.url(""),
            TokenKeys::new(SECRET),
            clock.clone(),
        );
        let sender = Sender::new(
            env.pool.clone(),
            &api.url(""),
            TokenKeys::new(SECRET),
            CloudApi {
                url: cloud.uri(),
                version: "v21.0".into(),
            },
            events::sealed::SealingKey::derive(SECRET),
            clock.clone(),
        );
        Self {
            env,
            api,
            query,
            _projector: projector,
            tenant,
            admin,
            cloud,
            clock,
            webhooks,
            sender,
        }
    }

    /// The provider's phone number lookup, answering for the test's credentials only.
    async fn number_lookup(&self) {
        Mock::given(method("GET"))
            .and(path(format!("/v21.0/{NUMBER_ID}")))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(query_param("fields", "display_phone_number,verified_name"))
            .and(query_param(
                "appsecret_proof",
                // printf EAAG-test-access-token | openssl dgst -sha256 -hmac app-secret-of-the-test
                proof(TOKEN, APP_SECRET).as_str(),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "id": NUMBER_ID, "display_phone_number": "+1 555-078-3881",
                "verified_name": "Jasper's Market"})))
            .mount(&self.cloud)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/v21.0/{NUMBER_ID}")))
            .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
                "message": "Invalid OAuth access token - Cannot parse access token",
                "type": "OAuthException", "code": 190, "fbtrace_id": "Az3AFEZpiyxNpuYxv7VwL02"}})))
            .mount(&self.cloud)
            .await;
    }

    async fn connect(&self, token: &str, access_token: &str) -> reqwest::Response {
        self.env
            .http
            .post(self.api.url("/v1/whatsapp/sessions"))
            .bearer_auth(token)
            .json(&json!({
                "phone_number_id": NUMBER_ID,
                "business_account_id": "102290129340398",
                "access_token": access_token,
                "app_secret": APP_SECRET,
                "verify_token": VERIFY,
            }))
            .send()
            .await
            .expect("sent")
    }

    async fn disconnect(&self, session: &str, token: &str) -> reqwest::Response {
        self.env
            .http
            .post(
                self.api
                    .url(&format!("/v1/whatsapp/sessions/{session}/disconnect")),
            )
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .expect("sent")
    }

    /// Connects the test's number; its session id.
    async fn connected(&self) -> String {
        self.number_lookup().await;
        let r = self.connect(&self.admin, TOKEN).await;
        assert_eq!(r.status(), 201);
        let body: Value = r.json().await.expect("json");
        body["id"].as_str().expect("id").to_owned()
    }

    async fn post_delivery(&self, body: &Value, secret: &str) -> reqwest::Response {
        let raw = serde_json::to_vec(body).expect("json");
        self.env
            .http
            .post(self.api.url("/api/webhooks/whatsapp"))
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sign(secret, &raw))
            .body(raw)
            .send()
            .await
            .expect("sent")
    }

    /// Delivers, and processes what it carried.
    async fn deliver(&self, body: &Value) -> Value {
        let r = self.post_delivery(body, APP_SECRET).await;
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.expect("json");
        self.processed(&answer).await;
        answer
    }

    /// Processes the webhooks an ingestion answer names.
    async fn processed(&self, answer: &Value) {
        let ids = answer["ids"].as_array().cloned().unwrap_or_default();
        for id in &ids {
            let id = id.as_str().expect("id");
            eventually(Duration::from_secs(20), "the webhook processed", || async {
                let _ = self.webhooks.step().await;
                let status: Option<String> =
                    sqlx::query_scalar("SELECT status FROM webhooks WHERE id = $1::uuid")
                        .bind(id)
                        .fetch_optional(&self.env.pool)
                        .await
                        .expect("read");
                (status.as_deref() == Some("processed")).then_some(())
            })
            .await;
        }
    }

    async fn send(&self, session: &str, message: Value, client: Option<&str>) -> reqwest::Response {
        let mut body = json!({"to": format!("+{CONTACT}"), "message": message});
        if let Some(c) = client {
            body["client_message_id"] = json!(c);
        }
        self.env
            .http
            .post(
                self.api
                    .url(&format!("/v1/whatsapp/sessions/{session}/messages")),
            )
            .bearer_auth(&self.admin)
            .json(&body)
            .send()
            .await
            .expect("sent")
    }

    async fn message_when(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let url = self.query.url(&format!("/v1/whatsapp/messages/{id}"));
        eventually(Duration::from_secs(20), what, || async {
            let m = self.env.get_json(&url, &self.admin).await;
            check(&m).then_some(m)
        })
        .await
    }

    /// Steps the sender until it has done something with a due message.
    async fn send_step(&self) -> projector::whatsapp::sender::StepReport {
        eventually(Duration::from_secs(20), "a due message", || async {
            let r = self.sender.step().await.expect("step");
            (r != projector::whatsapp::sender::StepReport::default()).then_some(r)
        })
        .await
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.env.pool)
            .await
            .expect("count")
    }
}

fn proof(token: &str, secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(token.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_session_connects_only_with_credentials_the_provider_accepts_and_keeps_them_sealed() {
    let wa = Wa::start().await;
    wa.number_lookup().await;
    let before = wa.env.event_count().await;
    // A token the provider refuses: nothing is connected.
    expect_problem(
        wa.connect(&wa.admin, "EAAG-expired").await,
        422,
        "credentials_rejected",
    )
    .await;
    assert_eq!(wa.env.event_count().await, before);
    // Malformed ids and missing secrets are refused before the provider is asked.
    let bad = wa
        .env
        .http
        .post(wa.api.url("/v1/whatsapp/sessions"))
        .bearer_auth(&wa.admin)
        .json(&json!({"phone_number_id": "12ab", "access_token": TOKEN,
                      "app_secret": APP_SECRET, "verify_token": VERIFY}))
        .send()
        .await
        .expect("sent");
    expect_problem(bad, 422, "invalid_provider_id").await;

    let r = wa.connect(&wa.admin, TOKEN).await;
    assert_eq!(r.status(), 201);
    let session = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(session, events::whatsapp::session_id(NUMBER_ID));
    // Neither the token nor the app secret is anywhere in the store in clear.
    let leaked = wa
        .count(&format!(
            "SELECT count(*) FROM events WHERE payload::text LIKE '%{TOKEN}%'
                OR payload::text LIKE '%{APP_SECRET}%' OR metadata::text LIKE '%{TOKEN}%'"
        ))
        .await;
    assert_eq!(leaked, 0);
    // Listed for the tenant with what the provider said of the number, without secrets.
    let list = eventually(Duration::from_secs(20), "the session listed", || async {
        let l = wa
            .env
            .get_json(&wa.query.url("/v1/whatsapp/sessions"), &wa.admin)
            .await;
        (l["items"].as_array().map(Vec::len) == Some(1)).then_some(l)
    })
    .await;
    let s = &list["items"][0];
    assert_eq!(s["status"], "connected");
    assert_eq!(s["verified_name"], "Jasper's Market");
    assert_eq!(s["health"]["failed_messages"], 0);
    assert!(!list.to_string().contains(TOKEN) && !list.to_string().contains("v1."));
    // Another tenant cannot take the number while it is connected.
    let (other, _) = create_tenant(&wa.env, &wa.api, &format!("wb{}", &wa.env.prefix[1..9])).await;
    expect_problem(
        wa.connect(&wa.env.admin_of(&other), TOKEN).await,
        409,
        "number_taken",
    )
    .await;
    // Nor see it.
    let theirs = wa
        .env
        .get_json(
            &wa.query.url("/v1/whatsapp/sessions"),
            &wa.env.admin_of(&other),
        )
        .await;
    assert_eq!(theirs["items"], json!([]));

    // Meta's endpoint check succeeds with the session's verify token only.
    let handshake = |token: &str| {
        wa.env
            .http
            .get(wa.api.url(&format!(
                "/api/webhooks/whatsapp?hub.mode=subscribe&hub.challenge=1158201444&hub.verify_token={token}"
            )))
            .send()
    };
    let ok = handshake(VERIFY).await.expect("sent");
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.expect("text"), "1158201444");
    expect_problem(handshake("guess").await.expect("sent"), 403, "forbidden").await;

    // Disconnected: listed so, and sends are refused.
    assert_eq!(wa.disconnect(&session, &wa.admin).await.status(), 200);
    // Nor does the endpoint check pass with its token any more, from the moment it is
    // disconnected (decided from the session's events, not from its read model).
    expect_problem(handshake(VERIFY).await.expect("sent"), 403, "forbidden").await;
    let template = json!({"type": "template", "name": "order_update", "language": "en_US",
                          "parameters": ["42"]});
    expect_problem(
        wa.send(&session, template, None).await,
        422,
        "session_disconnected",
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "the session disconnected",
        || async {
            let s = wa
                .env
                .get_json(
                    &wa.query.url(&format!("/v1/whatsapp/sessions/{session}")),
                    &wa.admin,
                )
                .await;
            (s["status"] == "disconnected").then_some(())
        },
    )
    .await;
    expect_problem(handshake(VERIFY).await.expect("sent"), 403, "forbidden").await;

    // The number changes hands: the other tenant connects it, the first cannot take it back
    // while it is connected, and gets it back once the other lets it go. Each answer is
    // decided from state loaded from the session's snapshots (one every two events here).
    let theirs = wa.env.admin_of(&other);
    assert!(wa.connect(&theirs, TOKEN).await.status().is_success());
    expect_problem(wa.connect(&wa.admin, TOKEN).await, 409, "number_taken").await;
    assert_eq!(wa.disconnect(&session, &theirs).await.status(), 200);
    assert!(wa.connect(&wa.admin, TOKEN).await.status().is_success());
    wa.env
        .assert_snapshots_crossed(events::whatsapp::WHATSAPP_SESSION)
        .await;
}

#[tokio::test]
async fn inbound_messages_land_once_in_the_contacts_thread_and_forgeries_append_nothing() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    let now = Utc::now().timestamp();
    let body = delivery(
        NUMBER_ID,
        json!([
            text("wamid.IN1", "Does it come in another color?", now),
            {"from": CONTACT, "id": "wamid.IN2", "timestamp": now.to_string(), "type": "location",
             "location": {"latitude": 37.4611978, "longitude": -122.2164385,
                          "name": "Facebook HQ", "address": "1 Hacker Way"}},
            {"context": {"from": "15550783881", "id": "wamid.IN1"}, "from": CONTACT,
             "id": "wamid.IN3", "timestamp": now.to_string(), "type": "interactive",
             "interactive": {"type": "button_reply", "button_reply": {"id": "y", "title": "Yes please"}}}
        ]),
        json!([]),
    );
    // Forged: refused, nothing appended, the refusal logged.
    let before = wa.env.event_count().await;
    expect_problem(
        wa.post_delivery(&body, "not-the-secret").await,
        401,
        "bad_signature",
    )
    .await;
    let unsigned = wa
        .env
        .http
        .post(wa.api.url("/api/webhooks/whatsapp"))
        .json(&body)
        .send()
        .await
        .expect("sent");
    expect_problem(unsigned, 401, "missing_signature").await;
    assert_eq!(wa.env.event_count().await, before);
    assert_eq!(
        wa.count("SELECT count(*) FROM webhook_rejections WHERE provider = 'whatsapp'")
            .await,
        2
    );

    let answer = wa.deliver(&body).await;
    assert_eq!(answer["ids"].as_array().map(Vec::len), Some(3));
    // Delivered again (Meta retries): nothing new.
    let again: Value = wa
        .post_delivery(&body, APP_SECRET)
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["duplicates"], 3);
    assert_eq!(
        wa.count("SELECT count(*) FROM events WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'MessageReceived'").await,
        3
    );

    // One WhatsApp thread for the contact, holding the three messages as theirs.
    let inbox = eventually(Duration::from_secs(20), "the whatsapp thread", || async {
        let page = wa
            .env
            .get_json(
                &wa.query.url("/v1/chat/threads?channel=whatsapp"),
                &wa.admin,
            )
            .await;
        (page["items"].as_array().map(Vec::len) == Some(1)).then_some(page)
    })
    .await;
    assert_eq!(inbox["items"][0]["customer_address"], format!("+{CONTACT}"));
    let thread = inbox["items"][0]["id"].as_str().expect("id").to_owned();
    let messages = eventually(Duration::from_secs(20), "the messages", || async {
        let page = wa
            .env
            .get_json(
                &wa.query.url(&format!("/v1/chat/threads/{thread}/messages")),
                &wa.admin,
            )
            .await;
        (page["items"].as_array().map(Vec::len) == Some(3)).then_some(page)
    })
    .await;
    let texts: Vec<&str> = messages["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    for shown in [
        "Does it come in another color?",
        "[location] Facebook HQ, 1 Hacker Way (37.4611978, -122.2164385)",
        "Yes please",
    ] {
        assert!(texts.contains(&shown), "{shown} in {texts:?}");
    }
    // The session's messages and health, and the contact with their profile name.
    let listed = eventually(Duration::from_secs(20), "the messages listed", || async {
        let l = wa
            .env
            .get_json(
                &wa.query.url(&format!(
                    "/v1/whatsapp/sessions/{session}/messages?direction=in"
                )),
                &wa.admin,
            )
            .await;
        (l["items"].as_array().map(Vec::len) == Some(3)).then_some(l)
    })
    .await;
    assert!(listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .all(|m| m["status"] == "received" && m["thread_id"] == thread.as_str()));
    let contacts = wa
        .env
        .get_json(&wa.query.url("/v1/whatsapp/contacts"), &wa.admin)
        .await;
    assert_eq!(contacts["items"][0]["profile_name"], "Sheena Nelson");
    assert_eq!(contacts["items"][0]["phone_user_id"], Value::Null);
    // The contact signs in to the chatbot with the same number: linked.
    let sent =
        crate::identity::request_code(&wa.env, &wa.api, &wa.tenant, &format!("+{CONTACT}")).await;
    assert_eq!(sent.status(), 202);
    let code = crate::identity::code_from_inbox(&wa.env, &wa.query, &format!("+{CONTACT}")).await;
    let signed_in: Value = wa
        .env
        .http
        .post(wa.api.url("/auth/phone/verify"))
        .json(&json!({"tenant_id": wa.tenant, "phone": format!("+{CONTACT}"), "code": code}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    // Once the projector has the sign-in.
    let contacts = eventually(Duration::from_secs(20), "the contact linked", || async {
        let c = wa
            .env
            .get_json(&wa.query.url("/v1/whatsapp/contacts"), &wa.admin)
            .await;
        (!c["items"][0]["phone_user_id"].is_null()).then_some(c)
    })
    .await;
    assert_eq!(
        contacts["items"][0]["phone_user_id"],
        signed_in["user"]["id"]
    );
    assert_eq!(contacts["items"][0]["tenant_id"], wa.tenant.as_str());
    assert_eq!(contacts["items"][0]["phone"], format!("+{CONTACT}"));
    let s = wa
        .env
        .get_json(
            &wa.query.url(&format!("/v1/whatsapp/sessions/{session}")),
            &wa.admin,
        )
        .await;
    assert_eq!(s["health"]["inbound_messages"], 3);

    // A delivery for a number no session has, signed by the platform's app: recorded, not
    // lost, and attributed to nobody.
    let stray = delivery(
        "999000111",
        json!([text("wamid.STRAY", "hello?", now)]),
        json!([]),
    );
    expect_problem(
        wa.post_delivery(&stray, APP_SECRET).await,
        401,
        "bad_signature",
    )
    .await;
    let r = wa.post_delivery(&stray, "platform-app-secret").await;
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.expect("json")["ids"][0]
        .as_str()
        .expect("id")
        .to_owned();
    let w = eventually(Duration::from_secs(20), "the stray processed", || async {
        let _ = wa.webhooks.step().await;
        let w = wa
            .env
            .get_json(
                &wa.query.url(&format!("/v1/webhooks/{id}")),
                &wa.env.super_admin(),
            )
            .await;
        (w["status"] == "processed").then_some(w)
    })
    .await;
    assert_eq!(w["outcome"], "ignored");
    assert_eq!(w["tenant_id"], "platform");
    // A body that is not a delivery, correctly signed (it names no number, so only the
    // platform's app can have signed it): 400, nothing appended.
    let before = wa.env.event_count().await;
    let not_delivery = json!({"object": "page", "entry": []});
    expect_problem(
        wa.post_delivery(&not_delivery, "platform-app-secret").await,
        400,
        "invalid_payload",
    )
    .await;
    assert_eq!(wa.env.event_count().await, before);
}

#[tokio::test]
async fn an_agent_reply_is_sent_once_retried_on_throttling_and_followed_to_read() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    // Outside the window (the contact never wrote): free-form refused, templates allowed.
    let hello = json!({"type": "text", "body": "Hello!"});
    expect_problem(
        wa.send(&session, hello.clone(), None).await,
        422,
        "outside_service_window",
    )
    .await;
    expect_problem(
        wa.send(
            &session,
            json!({"type": "template", "name": "order_update",
                                  "language": "en_US", "parameters": ["42", ""]}),
            None,
        )
        .await,
        422,
        "invalid_message",
    )
    .await;
    // Templates are checked against the account's approved ones before they are queued.
    Mock::given(method("GET"))
        .and(path("/v21.0/102290129340398/message_templates"))
        .and(query_param("name", "order_update"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": [
            {"name": "order_update", "language": "en_US", "status": "APPROVED", "id": "1",
             "components": [{"type": "HEADER", "format": "TEXT", "text": "Your order"},
                            {"type": "BODY", "text": "Order {{1}} is ready."}]}]})))
        .mount(&wa.cloud)
        .await;
    Mock::given(method("GET"))
        .and(path("/v21.0/102290129340398/message_templates"))
        .and(query_param("name", "no_such_template"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"data": []})))
        .mount(&wa.cloud)
        .await;
    let template = |name: &str, parameters: Value| json!({"type": "template", "name": name, "language": "en_US", "parameters": parameters});
    expect_problem(
        wa.send(&session, template("order_update", json!(["42", "x"])), None)
            .await,
        422,
        "template_parameters_mismatch",
    )
    .await;
    expect_problem(
        wa.send(&session, template("no_such_template", json!([])), None)
            .await,
        422,
        "template_unknown",
    )
    .await;
    let bad = wa
        .send(&session, json!({"type": "fax", "body": "x"}), None)
        .await;
    assert!(bad.status().is_client_error(), "{}", bad.status());

    // The contact writes (90 s ago): the window opens.
    let asked = wa.clock.now() - chrono::Duration::seconds(90);
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([text("wamid.IN1", "Is my order ready?", asked.timestamp())]),
        json!([]),
    ))
    .await;
    let r = wa
        .send(
            &session,
            json!({"type": "text", "body": "Yes, come by!"}),
            Some("c-1"),
        )
        .await;
    assert_eq!(r.status(), 202);
    let queued: Value = r.json().await.expect("json");
    let id = queued["id"].as_str().expect("id").to_owned();
    // The same client id again is the same message.
    let again: Value = wa
        .send(
            &session,
            json!({"type": "text", "body": "Yes, come by!"}),
            Some("c-1"),
        )
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(again["id"], id.as_str());

    // The exact request the Cloud API gets; throttled first, accepted on the retry.
    let expected = json!({
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": CONTACT,
        "biz_opaque_callback_data": id, "type": "text",
        "text": {"preview_url": false, "body": "Yes, come by!"},
    });
    let send = || {
        Mock::given(method("POST"))
            .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
            .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
            .and(body_json(expected.clone()))
    };
    send()
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
            "error_data": {"messaging_product": "whatsapp",
                           "details": "Cloud API message throughput has been reached."},
            "fbtrace_id": "A1"}})))
        .up_to_n_times(1)
        .expect(1)
        .mount(&wa.cloud)
        .await;
    let report = wa.send_step().await;
    assert_eq!(report.refused, 1, "{report:?}");
    let m = wa
        .message_when(&id, "the retry scheduled", |m| m["status"] == "retrying")
        .await;
    assert_eq!(m["error_code"], "130429");
    send()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": CONTACT, "wa_id": CONTACT}],
            "messages": [{"id": "wamid.OUT1", "message_status": "accepted"}]})))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    // Not before the back-off.
    assert_eq!(wa.sender.step().await.expect("step").sent, 0);
    wa.clock.advance(chrono::Duration::seconds(3));
    assert_eq!(wa.send_step().await.sent, 1);
    let m = wa
        .message_when(&id, "sent", |m| m["status"] == "sent")
        .await;
    assert_eq!(m["wamid"], "wamid.OUT1");
    assert_eq!(m["attempts"], 2);
    // Nothing more to send, however often the sender runs.
    wa.clock.advance(chrono::Duration::minutes(10));
    assert_eq!(wa.sender.step().await.expect("step").sent, 0);

    // Statuses: delivered, then a late "sent" (changes nothing), then read.
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([]),
        json!([status("wamid.OUT1", "delivered", Some(&id))]),
    ))
    .await;
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([]),
        json!([status("wamid.OUT1", "sent", Some(&id))]),
    ))
    .await;
    wa.message_when(&id, "delivered", |m| m["status"] == "delivered")
        .await;
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([]),
        json!([status("wamid.OUT1", "read", None)]),
    ))
    .await;
    wa.message_when(&id, "read", |m| m["status"] == "read")
        .await;
    assert_eq!(
        wa.count("SELECT count(*) FROM events WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'StatusUpdated'").await,
        2
    );

    // A permanent refusal fails the message with the provider's code, shown to the agent
    // and counted in the session's health.
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#131026) Message undeliverable", "type": "OAuthException",
            "code": 131026, "fbtrace_id": "A2"}})))
        .mount(&wa.cloud)
        .await;
    let r = wa
        .send(
            &session,
            json!({"type": "text", "body": "Still there?"}),
            None,
        )
        .await;
    let failing = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    wa.send_step().await;
    let m = wa
        .message_when(&failing, "failed", |m| m["status"] == "failed")
        .await;
    assert_eq!(m["error_code"], "131026");
    assert_eq!(m["error"], "(#131026) Message undeliverable");
    let s = wa
        .env
        .get_json(
            &wa.query.url(&format!("/v1/whatsapp/sessions/{session}")),
            &wa.admin,
        )
        .await;
    assert_eq!(s["health"]["failed_messages"], 1);
    assert_eq!(s["health"]["last_error"]["code"], "131026");

    // Analytics of the day: one message in, two out (one read, one failed), the first
    // response 90 s after the question, the failure by its code.
    // Up to the end of the test clock's next day: the clock was moved minutes ahead, so
    // near midnight its events fall on a day the wall clock has not reached.
    let to = (wa.clock.now() + chrono::Duration::days(1)).date_naive();
    let a = wa
        .env
        .get_json(
            &wa.query.url(&format!(
                "/v1/whatsapp/sessions/{session}/analytics?to={to}"
            )),
            &wa.admin,
        )
        .await;
    // (Summed over the days: near midnight the question and the answers are two days.)
    let days = a["days"].as_array().expect("days");
    let count = |direction: &str, status: &str| {
        days.iter()
            .flat_map(|d| d["messages"].as_array().cloned().unwrap_or_default())
            .filter(|m| m["direction"] == direction && m["status"] == status)
            .map(|m| m["count"].as_i64().unwrap_or_default())
            .sum::<i64>()
    };
    let day = days
        .iter()
        .find(|d| !d["first_response"].is_null())
        .expect("a day with a question");
    assert_eq!(
        (
            count("in", "received"),
            count("out", "read"),
            count("out", "failed")
        ),
        (1, 1, 1),
        "{a}"
    );
    assert_eq!(day["first_response"]["waits"], 1, "{a}");
    let median = day["first_response"]["median_secs"]
        .as_f64()
        .expect("median");
    assert!((90.0..91.0).contains(&median), "{median}");
    assert_eq!(a["failures"], json!([{"code": "131026", "count": 1}]));
    // Other tenants' staff do not see it; a malformed range is refused.
    let (other, _) = create_tenant(&wa.env, &wa.api, &format!("wz{}", &wa.env.prefix[1..9])).await;
    let r = wa
        .env
        .http
        .get(
            wa.query
                .url(&format!("/v1/whatsapp/sessions/{session}/analytics")),
        )
        .bearer_auth(wa.env.admin_of(&other))
        .send()
        .await
        .expect("sent");
    expect_problem(r, 404, "not_found").await;
    let r = wa
        .env
        .http
        .get(wa.query.url(&format!(
            "/v1/whatsapp/sessions/{session}/analytics?from=yesterday"
        )))
        .bearer_auth(&wa.admin)
        .send()
        .await
        .expect("sent");
    expect_problem(r, 400, "invalid_query").await;
    // The same client id to another contact is another message.
    let other = wa
        .env
        .http
        .post(
            wa.api
                .url(&format!("/v1/whatsapp/sessions/{session}/messages")),
        )
        .bearer_auth(&wa.admin)
        .json(&json!({"to": "+16505559999", "client_message_id": "c-1",
                      "message": {"type": "template", "name": "order_update",
                                  "language": "en_US", "parameters": ["7"]}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(other.status(), 202);
    let other: Value = other.json().await.expect("json");
    assert_ne!(other["id"], id.as_str());
    assert_ne!(other["conversation_id"], queued["conversation_id"]);
    wa.env
        .assert_snapshots_crossed(events::whatsapp::WHATSAPP_CONVERSATION)
        .await;
}

#[tokio::test]
async fn a_sender_that_dies_before_recording_the_outcome_never_sends_twice() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    // The provider takes the message exactly once: from the sender that then dies.
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "messages": [{"id": "wamid.LOST"}]})))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    let template = json!({"type": "template", "name": "order_update", "language": "en_US",
                          "parameters": ["42"]});
    let r = wa.send(&session, template, None).await;
    assert_eq!(r.status(), 202);
    let queued: Value = r.json().await.expect("json");
    let (id, conversation) = (
        queued["id"].as_str().expect("id").to_owned(),
        queued["conversation_id"]
            .as_str()
            .expect("conversation")
            .to_owned(),
    );
    // A sender claims the message and dies before its outcome is recorded (whether or not
    // the provider got it): the attempt is on record.
    wa.message_when(&id, "queued", |m| m["status"] == "queued")
        .await;
    let token = TokenKeys::new(SECRET).service_token("whatsapp-sender", 300);
    let claim: Value = wa
        .env
        .http
        .post(wa.api.url(&format!(
            "/v1/whatsapp/conversations/{conversation}/messages/{id}/claim"
        )))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(claim["send"], true, "{claim}");
    assert_eq!(
        claim["request"]["template"]["components"][0]["parameters"][0]["text"],
        "42"
    );
    // It sends what the claim says, gets the provider's answer, and dies before reporting.
    let sent = wa
        .env
        .http
        .post(format!("{}/v21.0/{NUMBER_ID}/messages", wa.cloud.uri()))
        .bearer_auth(TOKEN)
        .json(&claim["request"])
        .send()
        .await
        .expect("sent");
    assert_eq!(sent.status(), 200);
    // Agents and customers cannot claim.
    let refused = wa
        .env
        .http
        .post(wa.api.url(&format!(
            "/v1/whatsapp/conversations/{conversation}/messages/{id}/claim"
        )))
        .bearer_auth(&wa.admin)
        .send()
        .await
        .expect("sent");
    expect_problem(refused, 403, "forbidden").await;

    // Another sender, while the attempt's lease runs: sends nothing.
    wa.message_when(&id, "attempting", |m| m["status"] == "attempting")
        .await;
    assert_eq!(wa.sender.step().await.expect("step").sent, 0);
    // After the lease: failed visibly, not sent again.
    wa.clock
        .advance(events::whatsapp::attempt_lease() + chrono::Duration::seconds(1));
    let report = wa.send_step().await;
    assert_eq!((report.sent, report.skipped), (0, 1), "{report:?}");
    let m = wa
        .message_when(&id, "failed in doubt", |m| m["status"] == "failed")
        .await;
    assert_eq!(m["error_code"], "outcome_unknown");
    // The provider had taken it after all: its status webhook names the message, and the
    // platform records it as sent and delivered.
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([]),
        json!([status("wamid.LOST", "delivered", Some(&id))]),
    ))
    .await;
    let m = wa
        .message_when(&id, "reconciled", |m| m["status"] == "delivered")
        .await;
    assert_eq!(m["wamid"], "wamid.LOST");
    wa.clock.advance(chrono::Duration::minutes(10));
    assert_eq!(wa.sender.step().await.expect("step").sent, 0);
    // The provider was called once, by the sender that died (expect(1) on drop).
}

#[tokio::test]
async fn end_to_end_an_inbound_message_reaches_the_dashboard_live_and_the_agents_reply_is_delivered(
) {
    // Everything as deployed: the projector's webhook processor, outbox, sender and realtime
    // worker on the system clock, real Soketi, a real pusher-js client.
    let env = TestEnv::new().await;
    let soketi = crate::support::Soketi::start().await;
    let cloud = MockServer::start().await;
    let mut config = env.command_config();
    config.ctx.whatsapp.whatsapp_api_url = cloud.uri();
    let api = env.spawn_command_api(config).await;
    let mut projector = soketi.projector_config(env.projector_config());
    projector.nest_auth_secret = Some(SECRET.into());
    projector.command_api_url = api.url("");
    projector.ctx.whatsapp.whatsapp_api_url = cloud.uri();
    let _projector = env.spawn_projector(projector);
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, &format!("we{}", &env.prefix[1..9])).await;
    let (_, agent) = crate::support::staff_session(&env, &api, &tenant, "agent").await;
    let admin = env.admin_of(&tenant);
    Mock::given(method("GET"))
        .and(path(format!("/v21.0/{NUMBER_ID}")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": NUMBER_ID, "display_phone_number": "+1 555-078-3881", "verified_name": "Shop"})))
        .mount(&cloud)
        .await;
    let connected = env
        .http
        .post(api.url("/v1/whatsapp/sessions"))
        .bearer_auth(&admin)
        .json(&json!({"phone_number_id": NUMBER_ID, "access_token": TOKEN,
                      "app_secret": APP_SECRET, "verify_token": VERIFY}))
        .send()
        .await
        .expect("sent");
    assert_eq!(connected.status(), 201);

    let mut watcher = crate::live::Client::start(soketi.port, &query, &agent, &[], None).await;
    watcher
        .next("signed in", |v| v["type"] == "signed_in")
        .await;

    // The contact writes.
    let body = delivery(
        NUMBER_ID,
        json!([text(
            "wamid.E2E1",
            "Can I book for tonight?",
            Utc::now().timestamp()
        )]),
        json!([]),
    );
    let raw = serde_json::to_vec(&body).expect("json");
    let r = env
        .http
        .post(api.url("/api/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign(APP_SECRET, &raw))
        .header("content-type", "application/json")
        .body(raw)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let created = watcher
        .next("the message live on the dashboard", |v| {
            v["name"] == "message.created"
        })
        .await;
    assert_eq!(
        created["data"]["message"]["text"],
        "Can I book for tonight?"
    );
    // The contact is named by their subject id; their number is the thread's address.
    assert_eq!(
        created["data"]["message"]["author_id"],
        events::chat::Party::contact(&tenant, &format!("+{CONTACT}")).id
    );
    let thread = created["data"]["thread_id"]
        .as_str()
        .expect("thread")
        .to_owned();

    // The agent replies in the thread; the Cloud API gets exactly this.
    let reply = env
        .http
        .post(api.url(&format!("/v1/chat/threads/{thread}/messages")))
        .bearer_auth(&agent)
        .json(&json!({"text": "Yes, table for two at 8?"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(reply.status(), 201, "{:?}", reply.text().await);
    let message = eventually(
        Duration::from_secs(20),
        "the reply in the thread",
        || async {
            let page = env
                .get_json(
                    &query.url(&format!("/v1/chat/threads/{thread}/messages")),
                    &agent,
                )
                .await;
            page["items"]
                .as_array()?
                .iter()
                .find(|m| m["author_kind"] == "agent")
                .and_then(|m| m["message_id"].as_str().map(str::to_owned))
        },
    )
    .await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(body_json(json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": CONTACT,
            "biz_opaque_callback_data": message, "type": "text",
            "text": {"preview_url": false, "body": "Yes, table for two at 8?"},
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": CONTACT, "wa_id": CONTACT}],
            "messages": [{"id": "wamid.E2EOUT", "message_status": "accepted"}]})))
        .expect(1)
        .mount(&cloud)
        .await;
    let sent = watcher
        .next("the reply sent, live", |v| {
            v["name"] == "message.delivery" && v["data"]["status"] == "sent"
        })
        .await;
    assert_eq!(sent["data"]["message_id"], message.as_str());

    // WhatsApp reports it delivered: live, and in the thread's history.
    let status_body = delivery(
        NUMBER_ID,
        json!([]),
        json!([status("wamid.E2EOUT", "delivered", Some(&message))]),
    );
    let raw = serde_json::to_vec(&status_body).expect("json");
    let r = env
        .http
        .post(api.url("/api/webhooks/whatsapp"))
        .header("x-hub-signature-256", sign(APP_SECRET, &raw))
        .body(raw)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    watcher
        .next("the reply delivered, live", |v| {
            v["name"] == "message.delivery" && v["data"]["status"] == "delivered"
        })
        .await;
    let history = eventually(
        Duration::from_secs(20),
        "the delivery in the thread",
        || async {
            let page = env
                .get_json(
                    &query.url(&format!("/v1/chat/threads/{thread}/messages")),
                    &agent,
                )
                .await;
            let reply = page["items"]
                .as_array()?
                .iter()
                .find(|m| m["message_id"] == message.as_str())?
                .clone();
            (reply["delivery"]["status"] == "delivered").then_some(reply)
        },
    )
    .await;
    assert_eq!(history["delivery"]["channel"], "whatsapp");
}

#[tokio::test]
async fn inbound_files_are_fetched_into_the_blob_store_and_served_to_staff_only() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    let picture: Vec<u8> = b"\xff\xd8\xff\xe0 a small jpeg".to_vec();
    Mock::given(method("GET"))
        .and(path("/v21.0/1234567890"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp", "url": format!("{}/lookaside/1234567890", wa.cloud.uri()),
            "mime_type": "image/jpeg", "sha256": "x", "file_size": picture.len().to_string(),
            "id": "1234567890"})))
        .mount(&wa.cloud)
        .await;
    Mock::given(method("GET"))
        .and(path("/lookaside/1234567890"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "image/jpeg")
                .set_body_bytes(picture.clone()),
        )
        .expect(1)
        .mount(&wa.cloud)
        .await;
    // A document over the limit of its kind: never downloaded.
    Mock::given(method("GET"))
        .and(path("/v21.0/555"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/lookaside/555", wa.cloud.uri()), "mime_type": "application/pdf",
            "file_size": "200000000", "id": "555"})))
        .mount(&wa.cloud)
        .await;
    Mock::given(method("GET"))
        .and(path("/lookaside/555"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&wa.cloud)
        .await;
    let now = Utc::now().timestamp().to_string();
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([
            {"from": CONTACT, "id": "wamid.IMG", "timestamp": now, "type": "image",
             "image": {"caption": "This one", "mime_type": "image/jpeg", "sha256": "x", "id": "1234567890"}},
            {"from": CONTACT, "id": "wamid.DOC", "timestamp": now, "type": "document",
             "document": {"filename": "huge.pdf", "mime_type": "application/pdf", "id": "555"}},
            {"from": CONTACT, "id": "wamid.BAD", "timestamp": now, "type": "sticker",
             "sticker": {"mime_type": "image/webp", "id": "../../etc/passwd"}},
            {"from": CONTACT, "id": "wamid.CTL", "timestamp": now, "type": "text",
             "text": {"body": "line\u{b}feed"}}
        ]),
        json!([]),
    ))
    .await;
    let image = events::whatsapp::inbound_message_id(&session, "wamid.IMG");
    let m = wa
        .message_when(&image, "the file stored", |m| m["media_status"] == "stored")
        .await;
    assert_eq!(m["media_type"], "image/jpeg");
    assert_eq!(m["media_size"], picture.len());
    assert_eq!(m["text"], "[image] This one");
    // The signed URL serves it without a token; nothing else does but the staff's token.
    let url = wa.query.url(m["media_url"].as_str().expect("url"));
    let r = wa.env.http.get(&url).send().await.expect("sent");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.bytes().await.expect("bytes").to_vec(), picture);
    let bare = wa
        .query
        .url(&format!("/v1/whatsapp/messages/{image}/media"));
    expect_problem(
        wa.env.http.get(&bare).send().await.expect("sent"),
        404,
        "not_found",
    )
    .await;
    let staff = wa
        .env
        .http
        .get(&bare)
        .bearer_auth(&wa.admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(staff.status(), 200);
    let (other, _) = create_tenant(&wa.env, &wa.api, &format!("wm{}", &wa.env.prefix[1..9])).await;
    let stranger = wa
        .env
        .http
        .get(&bare)
        .bearer_auth(wa.env.admin_of(&other))
        .send()
        .await
        .expect("sent");
    expect_problem(stranger, 404, "not_found").await;
    let tampered = url.replace("signature=", "signature=00");
    expect_problem(
        wa.env.http.get(&tampered).send().await.expect("sent"),
        404,
        "not_found",
    )
    .await;
    // The thread's history offers the file with the message.
    let thread = m["thread_id"].as_str().expect("thread").to_owned();
    let page = wa
        .env
        .get_json(
            &wa.query.url(&format!("/v1/chat/threads/{thread}/messages")),
            &wa.admin,
        )
        .await;
    let shown = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|x| x["message_id"] == image.as_str())
        .expect("the image's message")
        .clone();
    assert_eq!(shown["media"]["status"], "stored");
    assert!(shown["media"]["url"]
        .as_str()
        .is_some_and(|u| u.contains("signature=")));
    // A control character a thread does not take is shown replaced, not refused.
    let controlled = eventually(
        Duration::from_secs(20),
        "the text in the thread",
        || async {
            let page = wa
                .env
                .get_json(
                    &wa.query.url(&format!("/v1/chat/threads/{thread}/messages")),
                    &wa.admin,
                )
                .await;
            page["items"].as_array()?.iter().find_map(|x| {
                (x["message_id"]
                    == events::whatsapp::inbound_message_id(&session, "wamid.CTL").as_str())
                .then(|| x["text"].clone())
            })
        },
    )
    .await;
    assert_eq!(controlled, "line\u{fffd}feed");

    // Too large, and a malformed media id: the messages landed, their files are refused.
    let doc = wa
        .message_when(
            &events::whatsapp::inbound_message_id(&session, "wamid.DOC"),
            "the document refused",
            |m| m["media_status"] == "failed",
        )
        .await;
    assert!(
        doc["media_error"]
            .as_str()
            .is_some_and(|e| e.contains("larger")),
        "{doc}"
    );
    let bad = wa
        .message_when(
            &events::whatsapp::inbound_message_id(&session, "wamid.BAD"),
            "the sticker refused",
            |m| m["media_status"] == "failed",
        )
        .await;
    assert!(
        bad["media_error"]
            .as_str()
            .is_some_and(|e| e.contains("media id")),
        "{bad}"
    );
}

#[tokio::test]
async fn another_tenants_app_cannot_speak_for_a_number() {
    let wa = Wa::start().await;
    wa.connected().await;
    let (other, _) = create_tenant(&wa.env, &wa.api, &format!("wo{}", &wa.env.prefix[1..9])).await;
    Mock::given(method("GET"))
        .and(path("/v21.0/777000"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "777000"})))
        .mount(&wa.cloud)
        .await;
    let r = wa
        .env
        .http
        .post(wa.api.url("/v1/whatsapp/sessions"))
        .bearer_auth(wa.env.admin_of(&other))
        .json(
            &json!({"phone_number_id": "777000", "access_token": "EAAG-other",
                      "app_secret": "other-app-secret", "verify_token": "other-verify"}),
        )
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 201);
    let now = Utc::now().timestamp();
    let theirs = delivery("777000", json!([text("wamid.O1", "hi", now)]), json!([]));
    assert_eq!(
        wa.post_delivery(&theirs, "other-app-secret").await.status(),
        200
    );
    // Signed by the other tenant's app: a delivery for our number, alone or beside theirs.
    let ours = delivery(
        NUMBER_ID,
        json!([text("wamid.F1", "forged", now)]),
        json!([]),
    );
    let before = wa.env.event_count().await;
    expect_problem(
        wa.post_delivery(&ours, "other-app-secret").await,
        401,
        "bad_signature",
    )
    .await;
    let mut both = theirs.clone();
    both["entry"]
        .as_array_mut()
        .expect("entries")
        .push(ours["entry"][0].clone());
    expect_problem(
        wa.post_delivery(&both, "other-app-secret").await,
        401,
        "bad_signature",
    )
    .await;
    assert_eq!(wa.env.event_count().await, before);

    // A message id used first on their number does not pre-empt ours.
    let shared = |number: &str| {
        delivery(
            number,
            json!([text("wamid.SHARED", "mine", now)]),
            json!([]),
        )
    };
    let theirs: Value = wa
        .post_delivery(&shared("777000"), "other-app-secret")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(theirs["duplicates"], 0);
    let ours = wa.deliver(&shared(NUMBER_ID)).await;
    assert_eq!(ours["duplicates"], 0, "{ours}");
    let session = events::whatsapp::session_id(NUMBER_ID);
    wa.message_when(
        &events::whatsapp::inbound_message_id(&session, "wamid.SHARED"),
        "our message",
        |m| m["status"] == "received",
    )
    .await;
}

#[tokio::test]
async fn a_bridge_worker_takes_sends_from_its_subject_and_reports_back() {
    use futures::StreamExt;
    let wa = Wa::start().await;
    let projector = wa.env.projector_config();
    projector::whatsapp::sender::ensure_bridge_stream(
        &wa.env.js,
        &projector.ctx.whatsapp.whatsapp_bridge_stream,
        &projector.ctx.whatsapp.whatsapp_bridge_subject_prefix,
    )
    .await
    .expect("bridge stream");
    let sender = Sender::new(
        wa.env.pool.clone(),
        &wa.api.url(""),
        TokenKeys::new(SECRET),
        CloudApi {
            url: wa.cloud.uri(),
            version: "v21.0".into(),
        },
        events::sealed::SealingKey::derive(SECRET),
        wa.clock.clone(),
    )
    .with_bridge(projector::whatsapp::sender::Bridge {
        js: wa.env.js.clone(),
        prefix: projector
            .ctx
            .whatsapp
            .whatsapp_bridge_subject_prefix
            .clone(),
    });
    let bridge_secret = "a-bridge-secret-of-at-least-32-characters";
    let r = wa
        .env
        .http
        .post(wa.api.url("/v1/whatsapp/sessions/bridge"))
        .bearer_auth(&wa.admin)
        .json(&json!({"phone_number": "+15550783881", "bridge_secret": bridge_secret}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 201);
    let session = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The simulated worker: a durable consumer of its session's subject.
    let stream = wa
        .env
        .js
        .get_stream(&projector.ctx.whatsapp.whatsapp_bridge_stream)
        .await
        .expect("stream");
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("bridge-worker".into()),
            filter_subject: format!(
                "{}.{session}.send",
                projector.ctx.whatsapp.whatsapp_bridge_subject_prefix
            ),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let post = |body: Value, secret: &str| {
        let raw = serde_json::to_vec(&body).expect("json");
        wa.env
            .http
            .post(wa.api.url("/api/webhooks/whatsapp/bridge"))
            .header("x-bridge-session", session.as_str())
            .header("x-bridge-signature", sign(secret, &raw))
            .body(raw)
            .send()
    };
    // What the worker saw: a message from the contact (Cloud-shaped), signed.
    let inbound = json!({
        "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": CONTACT}],
        "messages": [text("3EB0IN1", "Hello over the bridge", Utc::now().timestamp())],
    });
    expect_problem(
        post(inbound.clone(), "not-the-secret").await.expect("sent"),
        401,
        "bad_signature",
    )
    .await;
    let r = post(inbound, bridge_secret).await.expect("sent");
    assert_eq!(r.status(), 200);
    wa.processed(&r.json().await.expect("json")).await;
    let m = wa
        .message_when(
            &events::whatsapp::inbound_message_id(&session, "3EB0IN1"),
            "the bridged message",
            |m| m["status"] == "received",
        )
        .await;
    assert_eq!(m["text"], "Hello over the bridge");
    assert!(m["thread_id"].is_string());

    // An agent's reply goes to the worker's subject, once.
    let r = wa
        .send(
            &session,
            json!({"type": "text", "body": "Hi from the shop"}),
            None,
        )
        .await;
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let report = eventually(Duration::from_secs(20), "the send handed over", || async {
        let r = sender.step().await.expect("step");
        (r.handed_over == 1).then_some(r)
    })
    .await;
    assert_eq!(report.sent, 0);
    let mut messages = consumer
        .fetch()
        .max_messages(10)
        .messages()
        .await
        .expect("fetch");
    let taken = messages.next().await.expect("one send").expect("message");
    let send: Value = serde_json::from_slice(&taken.payload).expect("json");
    assert_eq!(send["message_id"], id.as_str());
    assert_eq!(send["to"], CONTACT);
    assert_eq!(send["request"]["text"]["body"], "Hi from the shop");
    taken.double_ack().await.expect("acked");
    // The worker reports it sent, then delivered.
    for state in ["sent", "delivered"] {
        let r = post(
            json!({"statuses": [status("3EB0OUT1", state, Some(&id))]}),
            bridge_secret,
        )
        .await
        .expect("sent");
        assert_eq!(r.status(), 200);
        wa.processed(&r.json().await.expect("json")).await;
    }
    let m = wa
        .message_when(&id, "delivered", |m| m["status"] == "delivered")
        .await;
    assert_eq!(m["wamid"], "3EB0OUT1");
    // Past the lease, nothing is handed over again.
    wa.clock.advance(chrono::Duration::minutes(10));
    assert_eq!(sender.step().await.expect("step").handed_over, 0);
    let info = stream.get_info().await.expect("info");
    assert_eq!(info.state.messages, 1);
}

#[tokio::test]
async fn a_file_attached_to_a_thread_reply_is_uploaded_and_sent_as_media() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([text(
            "wamid.Q1",
            "Can I see the menu?",
            Utc::now().timestamp()
        )]),
        json!([]),
    ))
    .await;
    let asked = wa
        .message_when(
            &events::whatsapp::inbound_message_id(&session, "wamid.Q1"),
            "the question",
            |m| m["thread_id"].is_string(),
        )
        .await;
    let thread = asked["thread_id"].as_str().expect("thread").to_owned();
    // A file of the tenant's, as an upload leaves it in the blob store.
    let menu = b"%PDF-1.4 the menu".to_vec();
    let key = format!("tenants/{}/files/menu.pdf", wa.tenant);
    let file = wa.env.blob_dir.join(&key);
    std::fs::create_dir_all(file.parent().expect("folder")).expect("folder");
    std::fs::write(&file, &menu).expect("written");
    let agent = wa.env.agent_of(&wa.tenant);
    let attachment = json!({"object_key": key, "content_type": "application/pdf",
                            "name": "menu.pdf", "size_bytes": menu.len()});
    let r = wa
        .env
        .http
        .post(wa.api.url(&format!("/v1/chat/threads/{thread}/messages")))
        .bearer_auth(&agent)
        .json(&json!({"text": "Here it is", "attachment": attachment}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 201);
    let reply = r.json::<Value>().await.expect("json")["message_id"]
        .as_str()
        .expect("id")
        .to_owned();
    // What the outbox does with the reply's event.
    let token = TokenKeys::new(SECRET).service_token("whatsapp-outbox", 300);
    let forward = || async {
        wa.env
            .http
            .post(wa.api.url(&format!(
                "/v1/whatsapp/threads/{thread}/messages/{reply}/forward"
            )))
            .bearer_auth(&token)
            .json(&json!({"text": "Here it is", "attachment": attachment}))
            .send()
            .await
            .expect("sent")
            .json::<Value>()
            .await
            .expect("json")
    };
    let forwarded = forward().await;
    assert_eq!(forwarded["forwarded"], true, "{forwarded}");
    // The outbox may see the reply's event again (a redelivery, a replay): the same message.
    let again = forward().await;
    assert_eq!(again["id"], forwarded["id"]);
    assert_eq!(again["version"], forwarded["version"], "nothing appended");
    // Uploaded (multipart, the file's bytes), then sent by the provider's media id.
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/media")))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .and(wiremock::matchers::body_string_contains(
            "%PDF-1.4 the menu",
        ))
        .and(wiremock::matchers::body_string_contains(
            "name=\"messaging_product\"",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "4490709327384033"})))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .and(body_json(json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": CONTACT,
            "biz_opaque_callback_data": reply, "type": "document",
            "document": {"id": "4490709327384033", "caption": "Here it is", "filename": "menu.pdf"},
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp", "messages": [{"id": "wamid.MENU"}]})))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    assert_eq!(wa.send_step().await.sent, 1);
    let m = wa
        .message_when(&reply, "sent", |m| m["status"] == "sent")
        .await;
    assert_eq!(m["kind"], "document");
    assert_eq!(m["thread_id"], thread.as_str());
}

#[tokio::test]
async fn a_message_belongs_to_the_tenant_that_held_the_number_when_it_arrived() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    // A message arrives while tenant A holds the number, and waits in a backlog...
    let r = wa
        .post_delivery(
            &delivery(
                NUMBER_ID,
                json!([text(
                    "wamid.BACKLOG",
                    "Is my order ready?",
                    Utc::now().timestamp()
                )]),
                json!([]),
            ),
            APP_SECRET,
        )
        .await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.expect("json");
    // ...while A disconnects and tenant B connects the same number.
    assert_eq!(wa.disconnect(&session, &wa.admin).await.status(), 200);
    let (other, _) = create_tenant(&wa.env, &wa.api, &format!("wb{}", &wa.env.prefix[1..9])).await;
    let other_admin = wa.env.admin_of(&other);
    assert_eq!(wa.connect(&other_admin, TOKEN).await.status(), 201);
    wa.processed(&answer).await;
    let inbox = |token: String| {
        let url = wa.query.url("/v1/chat/threads?channel=whatsapp");
        let env = &wa.env;
        async move { env.get_json(&url, &token).await }
    };
    let mine = eventually(Duration::from_secs(20), "A's thread", || async {
        let page = inbox(wa.admin.clone()).await;
        (page["items"].as_array().map(Vec::len) == Some(1)).then_some(page)
    })
    .await;
    assert_eq!(mine["items"][0]["customer_address"], format!("+{CONTACT}"));
    let theirs = inbox(other_admin.clone()).await;
    assert_eq!(
        theirs["items"].as_array().map(Vec::len),
        Some(0),
        "nothing for the tenant that took the number later: {theirs}"
    );
}

impl Wa {
    /// Connects the session; a contact asks for help (message `wamid`): its thread.
    async fn asked(&self, wamid: &str) -> String {
        let session = self.connected().await;
        self.deliver(&delivery(
            NUMBER_ID,
            json!([text(wamid, "Can you help?", Utc::now().timestamp())]),
            json!([]),
        ))
        .await;
        let asked = self
            .message_when(
                &events::whatsapp::inbound_message_id(&session, wamid),
                "the question",
                |m| m["thread_id"].is_string(),
            )
            .await;
        asked["thread_id"].as_str().expect("thread").to_owned()
    }
}

/// What the projector's WhatsApp outbox does with a thread's events so far.
async fn outbox_pass(wa: &Wa, thread: &str) {
    use projector::projection::Effect;
    let mut envelopes = wa.env.envelopes("thread", thread).await;
    // The projector opens the personal fields of the events it hands an effect.
    wa.env
        .keyring()
        .open_values(envelopes.iter_mut().map(|e| &mut e.payload).collect())
        .await
        .expect("opened");
    let outbox = projector::whatsapp::outbox::WhatsAppOutbox::new(
        Some((wa.env.pool.clone(), wa.env.keyring())),
        projector::command_client::CommandClient::new(
            &wa.api.url(""),
            TokenKeys::new(SECRET),
            "whatsapp-outbox",
        ),
    );
    outbox.perform(&envelopes).await.expect("performed");
}

#[tokio::test]
async fn a_reply_deleted_or_edited_before_it_went_out_is_withdrawn_or_sent_as_edited() {
    let wa = Wa::start().await;
    let thread = wa.asked("wamid.ASK").await;
    let agent = wa.env.agent_of(&wa.tenant);
    let reply = |text: &'static str| {
        let request = wa
            .env
            .http
            .post(wa.api.url(&format!("/v1/chat/threads/{thread}/messages")))
            .bearer_auth(&agent)
            .json(&json!({ "text": text }));
        async move {
            let r = request.send().await.expect("sent");
            assert_eq!(r.status(), 201);
            r.json::<Value>().await.expect("json")["message_id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let secret = reply("My card is 4242 4242 4242 4242").await;
    let typo = reply("See you tomorow").await;
    outbox_pass(&wa, &thread).await;
    // The provider throttles: both wait for a retry.
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": {
            "message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429,
            "fbtrace_id": "A1"}})))
        .up_to_n_times(2)
        .expect(2)
        .mount(&wa.cloud)
        .await;
    let mut refused = 0;
    while refused < 2 {
        refused += wa.send_step().await.refused;
    }
    for id in [&secret, &typo] {
        wa.message_when(id, "retrying", |m| m["status"] == "retrying")
            .await;
    }
    // The agent deletes the first and corrects the second, in the thread.
    let change = |path: String, body: Value| {
        let request = wa
            .env
            .http
            .post(wa.api.url(&path))
            .bearer_auth(&agent)
            .json(&body);
        async move { assert_eq!(request.send().await.expect("sent").status(), 200) }
    };
    change(
        format!("/v1/chat/threads/{thread}/messages/{secret}/delete"),
        json!({}),
    )
    .await;
    change(
        format!("/v1/chat/threads/{thread}/messages/{typo}/edit"),
        json!({"text": "See you tomorrow"}),
    )
    .await;
    outbox_pass(&wa, &thread).await;
    // The provider is back: exactly the corrected text goes out, the card number never.
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .and(body_json(json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": CONTACT,
            "biz_opaque_callback_data": typo, "type": "text",
            "text": {"preview_url": false, "body": "See you tomorrow"},
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp", "messages": [{"id": "wamid.FIXED"}]})))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    wa.clock.advance(chrono::Duration::minutes(1));
    let report = wa.send_step().await;
    assert_eq!(report.sent, 1, "{report:?}");
    let withdrawn = wa
        .message_when(&secret, "withdrawn", |m| m["status"] == "failed")
        .await;
    assert_eq!(withdrawn["error_code"], "withdrawn");
    // Deleted in the thread, it keeps no text here either.
    assert!(withdrawn["text"].is_null(), "{withdrawn}");
    assert!(
        !withdrawn.to_string().contains("4242"),
        "the card number is gone: {withdrawn}"
    );
    // Once it has gone out, a change is recorded as not reaching the contact.
    wa.message_when(&typo, "sent", |m| m["status"] == "sent")
        .await;
    change(
        format!("/v1/chat/threads/{thread}/messages/{typo}/edit"),
        json!({"text": "See you tomorrow at 9"}),
    )
    .await;
    outbox_pass(&wa, &thread).await;
    let told = wa
        .message_when(&typo, "the late edit recorded", |m| {
            m["error_code"] == "edit_not_delivered"
        })
        .await;
    assert_eq!(told["status"], "sent");
    wa.clock.advance(chrono::Duration::minutes(10));
    assert_eq!(
        wa.sender.step().await.expect("step").sent,
        0,
        "nothing more goes out"
    );
}

#[tokio::test]
async fn a_reply_changed_before_the_outbox_reached_it_never_goes_out_as_first_written() {
    let wa = Wa::start().await;
    let thread = wa.asked("wamid.Q").await;
    let agent = wa.env.agent_of(&wa.tenant);
    let post = |path: String, body: Value| {
        let request = wa
            .env
            .http
            .post(wa.api.url(&path))
            .bearer_auth(&agent)
            .json(&body);
        async move {
            let r = request.send().await.expect("sent");
            assert!(r.status().is_success(), "{}", r.status());
            r.json::<Value>().await.expect("json")
        }
    };
    let messages = format!("/v1/chat/threads/{thread}/messages");
    let secret = post(
        messages.clone(),
        json!({"text": "My card is 4242 4242 4242 4242"}),
    )
    .await["message_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let typo = post(messages.clone(), json!({"text": "See you tomorow"})).await["message_id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Changed in the thread before the outbox got to either (it lags, or was down).
    post(format!("{messages}/{secret}/delete"), json!({})).await;
    post(
        format!("{messages}/{typo}/edit"),
        json!({"text": "See you tomorrow"}),
    )
    .await;
    post(
        format!("{messages}/{typo}/edit"),
        json!({"text": "See you tomorrow at 9"}),
    )
    .await;
    // Exactly the latest text goes out, once; nothing else is ever posted.
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .and(body_json(json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": CONTACT,
            "biz_opaque_callback_data": typo, "type": "text",
            "text": {"preview_url": false, "body": "See you tomorrow at 9"},
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp", "messages": [{"id": "wamid.LATEST"}]})))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .respond_with(ResponseTemplate::new(500))
        .with_priority(10)
        .expect(0)
        .mount(&wa.cloud)
        .await;
    outbox_pass(&wa, &thread).await;
    let report = wa.send_step().await;
    assert_eq!(report.sent, 1, "{report:?}");
    wa.message_when(&typo, "sent", |m| m["status"] == "sent")
        .await;
    wa.clock.advance(chrono::Duration::minutes(10));
    assert_eq!(
        wa.sender.step().await.expect("step").sent,
        0,
        "nothing more goes out"
    );
    let queued: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'whatsapp_conversation'
            AND event_type = 'MessageQueued' AND payload->'MessageQueued'->>'message_id' = $1",
    )
    .bind(&secret)
    .fetch_one(&wa.env.pool)
    .await
    .expect("count");
    assert_eq!(queued, 0, "the deleted reply was never queued");
    let first_written: Option<String> = sqlx::query_scalar(
        "SELECT payload->'MessageQueued'->'content'->>'body' FROM events
          WHERE aggregate_type = 'whatsapp_conversation' AND event_type = 'MessageQueued'
            AND payload->'MessageQueued'->>'message_id' = $1",
    )
    .bind(&typo)
    .fetch_one(&wa.env.pool)
    .await
    .expect("queued");
    let written = first_written.expect("a body");
    assert!(
        events::personal::is_sealed(&written),
        "sealed for the contact"
    );
    let first_written = wa.env.keyring().open(&written).await.expect("opened");
    assert_eq!(
        first_written, "See you tomorrow at 9",
        "queued as it stands, never as first written"
    );
}

#[tokio::test]
async fn a_file_refused_for_an_expired_token_is_fetched_again_when_the_session_reconnects() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    const FRESH: &str = "EAAG-fresh-access-token";
    // The session's token has expired at the provider; a fresh one works.
    Mock::given(method("GET"))
        .and(path("/v21.0/777"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": {
            "message": "Error validating access token: Session has expired",
            "type": "OAuthException", "code": 190, "fbtrace_id": "B2"}})))
        .mount(&wa.cloud)
        .await;
    Mock::given(method("GET"))
        .and(path("/v21.0/777"))
        .and(header("authorization", format!("Bearer {FRESH}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "url": format!("{}/lookaside/777", wa.cloud.uri()), "mime_type": "image/jpeg",
            "file_size": "12", "id": "777"})))
        .mount(&wa.cloud)
        .await;
    Mock::given(method("GET"))
        .and(path("/lookaside/777"))
        .and(header("authorization", format!("Bearer {FRESH}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"a photo here".to_vec()))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    let answer = wa
        .deliver(&delivery(
            NUMBER_ID,
            json!([{"from": CONTACT, "id": "wamid.PHOTO", "timestamp": Utc::now().timestamp().to_string(),
                    "type": "image", "image": {"mime_type": "image/jpeg", "sha256": "x", "id": "777"}}]),
            json!([]),
        ))
        .await;
    let photo = events::whatsapp::inbound_message_id(&session, "wamid.PHOTO");
    let failed = wa
        .message_when(&photo, "the file refused", |m| {
            m["media_status"] == "failed"
        })
        .await;
    assert!(
        failed["media_error"]
            .as_str()
            .is_some_and(|e| e.contains("reconnected")),
        "{failed}"
    );
    // The tenant reconnects with a fresh token.
    Mock::given(method("GET"))
        .and(path(format!("/v21.0/{NUMBER_ID}")))
        .and(header("authorization", format!("Bearer {FRESH}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": NUMBER_ID, "display_phone_number": "+1 555-078-3881",
            "verified_name": "Jasper's Market"})))
        .with_priority(1)
        .mount(&wa.cloud)
        .await;
    assert_eq!(wa.disconnect(&session, &wa.admin).await.status(), 200);
    assert_eq!(wa.connect(&wa.admin, FRESH).await.status(), 201);
    // What the projector's re-fetch worker does with the session's events: it replays the
    // delivery, which the webhook processor then processes.
    let _ = answer;
    {
        use projector::projection::Effect;
        let envelopes = wa.env.envelopes("whatsapp_session", &session).await;
        // Whatever the read model shows yet (it may lag behind `Connected`, or be rebuilt):
        // the worker finds the waiting file in the conversation's events.
        sqlx::query("UPDATE whatsapp_messages SET media_retryable = false WHERE id = $1::uuid")
            .bind(&photo)
            .execute(&wa.env.pool)
            .await
            .expect("the read model behind");
        projector::whatsapp::media::MediaRefetch::new(
            wa.env.pool.clone(),
            projector::command_client::CommandClient::new(
                &wa.api.url(""),
                TokenKeys::new(SECRET),
                "whatsapp-media-refetch",
            ),
        )
        .perform(&envelopes)
        .await
        .expect("replayed");
    }
    eventually(
        Duration::from_secs(20),
        "the file fetched again",
        || async {
            let _ = wa.webhooks.step().await;
            let m = wa
                .env
                .get_json(
                    &wa.query.url(&format!("/v1/whatsapp/messages/{photo}")),
                    &wa.admin,
                )
                .await;
            (m["media_status"] == "stored").then_some(())
        },
    )
    .await;
}

/// The events of the test's conversations and webhooks whose payload holds `needle` in
/// clear.
async fn clear_in_conversations(wa: &Wa, needle: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events
          WHERE aggregate_type IN ('whatsapp_conversation', 'webhook')
            AND metadata->>'tenant_id' = $1 AND strpos(payload::text, $2) > 0",
    )
    .bind(&wa.tenant)
    .bind(needle)
    .fetch_one(&wa.env.pool)
    .await
    .expect("count")
}

#[tokio::test]
async fn a_contacts_whatsapp_data_is_sealed_for_them_and_gone_with_them_while_anothers_stays() {
    let wa = Wa::start().await;
    let session = wa.connected().await;
    const OTHER: &str = "4915112345678";
    let now = Utc::now().timestamp();
    let delivered = wa.deliver(&delivery(
        NUMBER_ID,
        json!([
            text("wamid.S1", "I live at 12 Quai Branly", now),
            {"from": CONTACT, "id": "wamid.S2", "timestamp": now.to_string(), "type": "location",
             "location": {"latitude": 48.8583701, "longitude": 2.2944813, "name": "Eiffel"}},
            {"from": OTHER, "id": "wamid.O1", "timestamp": now.to_string(), "type": "text",
             "text": {"body": "Gunther keeps this"}}
        ]),
        json!([]),
    ))
    .await;
    let theirs = events::whatsapp::inbound_message_id(&session, "wamid.S1");
    let other = events::whatsapp::inbound_message_id(&session, "wamid.O1");
    wa.message_when(&theirs, "their message", |m| {
        m["text"] == "I live at 12 Quai Branly"
    })
    .await;
    // The agent answers; the provider gets the number and text in clear.
    let reply = wa
        .send(
            &session,
            json!({"type": "text", "body": "Noted, Sheena"}),
            Some("r-1"),
        )
        .await;
    assert_eq!(reply.status(), 202);
    let reply: Value = reply.json().await.expect("json");
    let reply = reply["id"].as_str().expect("id").to_owned();
    Mock::given(method("POST"))
        .and(path(format!("/v21.0/{NUMBER_ID}/messages")))
        .and(body_json(json!({
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": CONTACT,
            "biz_opaque_callback_data": reply, "type": "text",
            "text": {"preview_url": false, "body": "Noted, Sheena"}})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "messages": [{"id": "wamid.R1", "message_status": "accepted"}]})))
        .expect(1)
        .mount(&wa.cloud)
        .await;
    assert_eq!(wa.send_step().await.sent, 1);
    wa.message_when(&reply, "the reply sent", |m| m["status"] == "sent")
        .await;
    // A status WhatsApp reports under another id for the contact is still about them: it
    // names the message, whose conversation is theirs.
    let subject = events::whatsapp::contact_subject(&wa.tenant, CONTACT).expect("a subject");
    let mut read = status("wamid.R1", "read", Some(&reply));
    read["recipient_id"] = json!("5511987654321");
    let statused = wa
        .deliver(&delivery(NUMBER_ID, json!([]), json!([read])))
        .await;
    let kept: Value = sqlx::query_scalar(
        "SELECT payload->'Received' FROM events
          WHERE aggregate_type = 'webhook' AND aggregate_id = $1 AND sequence = 1",
    )
    .bind(statused["ids"][0].as_str().expect("a webhook"))
    .fetch_one(&wa.env.pool)
    .await
    .expect("the Received event");
    for field in ["payload", "body_sha256"] {
        let sealed = kept[field].as_str().unwrap_or_default();
        assert_eq!(
            events::personal::SealedField::parse(sealed).map(|f| f.subject),
            Some(subject),
            "{field} sealed for the contact: {kept}"
        );
    }

    // In the store: ciphertext only (ids and the provider's ids stay in clear).
    for clear in [CONTACT, OTHER, "Sheena", "Quai Branly", "48.858", "Gunther"] {
        assert_eq!(
            clear_in_conversations(&wa, clear).await,
            0,
            "{clear} in clear"
        );
    }
    let location = events::whatsapp::inbound_message_id(&session, "wamid.S2");
    let m = wa
        .message_when(&location, "the location", |m| m["kind"] == "location")
        .await;
    assert_eq!(m["content"]["latitude"], 48.8583701, "{m}");

    // Their export holds their WhatsApp profile and messages, in clear.
    let export_url = wa
        .query
        .url(&format!("/v1/privacy/subjects/{subject}/export"));
    let export = wa.env.get_json(&export_url, &wa.admin).await;
    assert_eq!(
        export["whatsapp_contacts"][0]["profile_name"], "Sheena Nelson",
        "{export}"
    );
    let texts = |export: &Value| -> Vec<Value> {
        export["whatsapp_messages"]
            .as_array()
            .map(|m| m.iter().map(|m| m["text"].clone()).collect())
            .unwrap_or_default()
    };
    assert!(texts(&export).contains(&json!("I live at 12 Quai Branly")));
    assert!(texts(&export).contains(&json!("Noted, Sheena")));
    assert!(!texts(&export).contains(&json!("Gunther keeps this")));

    // Erased: the read models forget them; the other contact stays.
    let erase = crate::support::erase_subject(&wa.env, &wa.api, &wa.admin, &subject).await;
    assert_eq!(erase.status(), 200);
    let m = wa
        .message_when(&theirs, "their message redacted", |m| {
            m["text"] == "[erased]"
        })
        .await;
    assert_eq!(m["wa_id"], "[erased]");
    assert_eq!(m["content"], "[erased]");
    let contacts_now = || async {
        wa.env
            .get_json(&wa.query.url("/v1/whatsapp/contacts"), &wa.admin)
            .await["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|c| c["wa_id"].as_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(contacts_now().await, vec![OTHER.to_owned()]);
    let kept = wa
        .message_when(&other, "the other's message", |m| {
            m["text"] == "Gunther keeps this"
        })
        .await;
    assert_eq!(kept["wa_id"], OTHER);
    let export = wa.env.get_json(&export_url, &wa.admin).await;
    assert_eq!(export["whatsapp_contacts"], json!([]), "{export}");
    assert!(texts(&export).iter().all(|t| t == "[erased]"), "{export}");
    // What the webhooks kept reads the same: theirs erased, the other's in clear.
    let wa_ref = &wa;
    let webhook = |i: usize| {
        let id = delivered["ids"][i]
            .as_str()
            .expect("a webhook id")
            .to_owned();
        let url = wa_ref.query.url(&format!("/v1/webhooks/{id}"));
        async move { wa_ref.env.get_json(&url, &wa_ref.admin).await["payload"].clone() }
    };
    assert_eq!(webhook(0).await, "[erased]");
    assert_eq!(
        webhook(2).await["message"]["text"]["body"],
        "Gunther keeps this"
    );

    // A rebuild from the store shows the same.
    wa._projector.abort();
    projector::rebuild::rebuild(
        &wa.env.pool,
        &projector::whatsapp::WhatsAppProjection,
        &wa.env.keyring(),
    )
    .await
    .expect("rebuild");
    for id in [&theirs, &location, &reply] {
        let m = wa.message_when(id, "rebuilt", |_| true).await;
        assert_eq!(m["wa_id"], "[erased]", "{m}");
        assert_ne!(m["text"], "I live at 12 Quai Branly");
    }
    let m = wa.message_when(&location, "rebuilt", |_| true).await;
    assert_eq!(m["content"], "[erased]");
    assert_eq!(contacts_now().await, vec![OTHER.to_owned()]);
    let kept = wa.message_when(&other, "rebuilt", |_| true).await;
    assert_eq!(kept["text"], "Gunther keeps this");

    // They write again: nothing is recorded; nothing is sent to them either.
    let _projector = wa.env.spawn_projector(wa.env.projector_config());
    let before = wa
        .count("SELECT count(*) FROM events WHERE aggregate_type = 'whatsapp_conversation'")
        .await;
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([text("wamid.S3", "Me again", now + 5)]),
        json!([]),
    ))
    .await;
    expect_problem(
        wa.send(
            &session,
            json!({"type": "text", "body": "Still there?"}),
            None,
        )
        .await,
        410,
        "subject_erased",
    )
    .await;
    // The reply sent before, asked for again with its client id: gone with them.
    expect_problem(
        wa.send(
            &session,
            json!({"type": "text", "body": "Noted, Sheena"}),
            Some("r-1"),
        )
        .await,
        410,
        "subject_erased",
    )
    .await;
    let after = wa
        .count("SELECT count(*) FROM events WHERE aggregate_type = 'whatsapp_conversation'")
        .await;
    assert_eq!(after, before, "nothing appended about them");
}

/// Every row of every table of the test's database, as text, one table after another.
async fn database_text(env: &TestEnv) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
          WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .expect("tables");
    let mut all = Vec::new();
    for table in tables {
        let rows: String = sqlx::query_scalar(&format!(
            "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM \"{table}\" t"
        ))
        .fetch_one(&env.pool)
        .await
        .expect("rows");
        all.push((table, rows));
    }
    all
}

/// Where each of `needles` is still in clear: tables, the stream, the blob store.
async fn left_in_clear(env: &TestEnv, needles: &[&str]) -> Vec<String> {
    let mut places = database_text(env).await;
    let bus: String = crate::relay::stream_contents(env)
        .await
        .iter()
        .map(|m| {
            let headers = m
                .headers
                .as_ref()
                .map(|h| format!("{h:?}"))
                .unwrap_or_default();
            format!(
                "{} {headers} {}",
                m.subject,
                String::from_utf8_lossy(&m.payload)
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    places.push(("the stream".into(), bus));
    places.push((
        "the blob store".into(),
        crate::support::blob_text(&env.blob_dir),
    ));
    let mut found = Vec::new();
    for (place, text) in &places {
        for needle in needles {
            if text.to_lowercase().contains(&needle.to_lowercase()) {
                found.push(format!("{needle:?} in {place}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn a_person_erased_leaves_nothing_of_them_in_clear_in_any_table_the_stream_or_the_blob_store()
{
    use crate::chat::{open_thread, post};

    const BACKEND: &str = "https://hooks.example.com";
    const HOOK_SECRET: &str = "hook-secret-of-the-erasure-test";
    let assemblyai = MockServer::start().await;
    let wa = Wa::start_with(|config| {
        config.ctx.audio.assemblyai_api_url = assemblyai.uri();
        config.ctx.audio.assemblyai_api_key = Some("aai-test-key".into());
        config.ctx.audio.assemblyai_webhook_secret = vec![HOOK_SECRET.into()];
        config.backend_url = Some(BACKEND.into());
    })
    .await;
    let session = wa.connected().await;
    let number = format!("+{CONTACT}");
    // What the person is: their number, name, e-mail, and what they said, wrote and sent.
    let needles = [
        CONTACT,
        "Sheena",
        "Nelson",
        "sheena.n@example",
        "order 88213",
        "gate code 4417",
        "selfie caption",
        "SELFIE-PIXELS",
        "Rosewood Lane",
    ];

    // They sign in by phone and name themselves.
    let requested = crate::identity::request_code(&wa.env, &wa.api, &wa.tenant, &number).await;
    assert_eq!(requested.status(), 202);
    let code = crate::identity::code_from_inbox(&wa.env, &wa.query, &number).await;
    let verified: Value = wa
        .env
        .http
        .post(wa.api.url("/auth/phone/verify"))
        .json(&json!({"tenant_id": wa.tenant, "phone": number, "code": code}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let user = verified["user"]["id"].as_str().expect("id").to_owned();
    let token = verified["access_token"].as_str().expect("token").to_owned();
    let profile = wa
        .env
        .http
        .put(wa.api.url("/auth/phone/profile"))
        .bearer_auth(&token)
        .json(&json!({"display_name": "Sheena Nelson", "email": "sheena.n@example.test"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(profile.status(), 200);

    // They chat on the web.
    let (thread, _) = open_thread(&wa.env, &wa.api, &token, json!({})).await;
    let sent = post(
        &wa.env,
        &wa.api,
        &token,
        &format!("/v1/chat/threads/{thread}/messages"),
        json!({"text": "Where is my order 88213?"}),
    )
    .await;
    assert_eq!(sent.status(), 201);

    // They write on WhatsApp, with a picture.
    let picture = b"\xff\xd8\xff\xe0 SELFIE-PIXELS".to_vec();
    Mock::given(method("GET"))
        .and(path("/v21.0/777"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp", "url": format!("{}/lookaside/777", wa.cloud.uri()),
            "mime_type": "image/jpeg", "sha256": "x", "file_size": picture.len().to_string(),
            "id": "777"})))
        .mount(&wa.cloud)
        .await;
    Mock::given(method("GET"))
        .and(path("/lookaside/777"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "image/jpeg")
                .set_body_bytes(picture.clone()),
        )
        .mount(&wa.cloud)
        .await;
    let now = Utc::now().timestamp();
    wa.deliver(&delivery(
        NUMBER_ID,
        json!([
            text("wamid.GATE", "The gate code 4417 opens it", now),
            {"from": CONTACT, "id": "wamid.SELFIE", "timestamp": now.to_string(), "type": "image",
             "image": {"caption": "My selfie caption", "mime_type": "image/jpeg", "sha256": "x",
                       "id": "777"}}
        ]),
        json!([]),
    ))
    .await;
    let selfie = events::whatsapp::inbound_message_id(&session, "wamid.SELFIE");
    wa.message_when(&selfie, "the picture stored", |m| {
        m["media_status"] == "stored"
    })
    .await;

    // A recording about them is transcribed.
    Mock::given(method("POST"))
        .and(path("/v2/upload"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"upload_url": "https://cdn.assemblyai.com/upload/abc"})),
        )
        .mount(&assemblyai)
        .await;
    let transcript = json!({"id": "tr_1", "status": "completed", "language_code": "en",
        "confidence": 0.9, "text": "Sheena Nelson lives at 12 Rosewood Lane",
        "words": [{"text": "Sheena", "start": 0, "end": 300, "confidence": 0.9},
                  {"text": "Rosewood Lane", "start": 300, "end": 900, "confidence": 0.9}]});
    let mut queued = transcript.clone();
    queued["status"] = json!("queued");
    Mock::given(method("POST"))
        .and(path("/v2/transcript"))
        .respond_with(ResponseTemplate::new(200).set_body_json(queued))
        .mount(&assemblyai)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/transcript/tr_1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(transcript))
        .mount(&assemblyai)
        .await;
    let part = reqwest::multipart::Part::bytes(b"OggS\x00\x02\x00\x00 voice".to_vec())
        .mime_str("audio/ogg")
        .expect("mime");
    let uploaded: Value = wa
        .env
        .http
        .post(wa.api.url(&format!("/v1/audio?thread_id={thread}")))
        .bearer_auth(&wa.admin)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let audio = uploaded["id"].as_str().expect("id").to_owned();
    let transcriptions = DueProcessor::transcriptions(
        wa.env.pool.clone(),
        &wa.api.url(""),
        TokenKeys::new(SECRET),
        wa.clock.clone(),
    );
    let audio_url = wa.query.url(&format!("/v1/audio/{audio}"));
    eventually(
        Duration::from_secs(20),
        "the transcript requested",
        || async {
            let _ = transcriptions.step().await;
            let a = wa.env.get_json(&audio_url, &wa.admin).await;
            (a["status"] == "requested").then_some(())
        },
    )
    .await;
    let hook = wa
        .env
        .http
        .post(
            wa.api
                .url(&format!("/api/webhooks/assemblyai?audio_id={audio}")),
        )
        .header("x-webhook-secret", HOOK_SECRET)
        .json(&json!({"transcript_id": "tr_1", "status": "completed"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(hook.status(), 200);
    eventually(Duration::from_secs(20), "the transcript", || async {
        let _ = wa.webhooks.step().await;
        let a = wa.env.get_json(&audio_url, &wa.admin).await;
        (a["text"] == "Sheena Nelson lives at 12 Rosewood Lane").then_some(())
    })
    .await;

    // Everything is held about them, and shown to the tenant's staff.
    let export_url = wa.query.url(&format!("/v1/privacy/subjects/{user}/export"));
    let export = wa.env.get_json(&export_url, &wa.admin).await;
    assert_eq!(export["phone_user"]["display_name"], "Sheena Nelson");
    assert_eq!(
        export["recordings"][0]["text"],
        "Sheena Nelson lives at 12 Rosewood Lane"
    );
    assert_eq!(
        export["threads"][0]["messages"][0]["text"],
        "Where is my order 88213?"
    );
    // Their number's WhatsApp is theirs too: their own export holds it.
    let own = wa.env.get_json(&export_url, &token).await;
    assert_eq!(own["threads"].as_array().map(Vec::len), Some(2), "{own}");
    assert!(
        own["whatsapp_messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["text"] == "The gate code 4417 opens it")),
        "{own}"
    );

    // The search finds them where they are in clear before: the read models, the command
    // side's profile, the blob store.
    let before = left_in_clear(&wa.env, &needles).await;
    for place in [
        "\"order 88213\" in chat_messages",
        "\"Sheena\" in whatsapp_contacts",
        &format!("{CONTACT:?} in phone_users"),
        "\"SELFIE-PIXELS\" in the blob store",
        "\"Rosewood Lane\" in audio_files",
    ] {
        assert!(
            before.iter().any(|p| p == place),
            "{place} not found in {before:#?}"
        );
    }

    // Erased: one erasure of the person (their chatbot sign-in, and the contact their
    // number is on WhatsApp).
    let erase = crate::support::erase_subject(&wa.env, &wa.api, &wa.admin, &user).await;
    assert_eq!(erase.status(), 200);
    let contact = events::personal::subject_id("contact", &wa.tenant, &number);
    let contact_export = wa
        .query
        .url(&format!("/v1/privacy/subjects/{contact}/export"));
    eventually(
        Duration::from_secs(20),
        "every read model redacted",
        || async {
            let mine = wa.env.get_json(&export_url, &wa.admin).await;
            let theirs = wa.env.get_json(&contact_export, &wa.admin).await;
            let a = wa.env.get_json(&audio_url, &wa.admin).await;
            (mine["threads"][0]["messages"][0]["text"] == "[erased]"
                && theirs["subject"]["erased"] == true
                && theirs["threads"][0]["messages"][0]["text"] == "[erased]"
                && a["text"] == "[erased]")
                .then_some(())
        },
    )
    .await;
    // The stream holds everything, the erasures too.
    eventually(
        Duration::from_secs(20),
        "the erasures on the stream",
        || async {
            let erasures = crate::relay::stream_contents(&wa.env)
                .await
                .iter()
                .filter(|m| m.subject.ends_with(".data_subject.Erased"))
                .count();
            (erasures == 2).then_some(())
        },
    )
    .await;
    let left = left_in_clear(&wa.env, &needles).await;
    assert!(left.is_empty(), "left in clear: {left:#?}");

    // Read models rebuilt from the store show the same.
    wa._projector.abort();
    let keyring = wa.env.keyring();
    let projections: [&dyn projector::projection::Projection; 5] = [
        &projector::chat::ChatProjection,
        &projector::whatsapp::WhatsAppProjection,
        &projector::audio::AudioProjection,
        &projector::identity::phone_users::PhoneUsersProjection,
        &projector::webhooks::WebhooksProjection,
    ];
    for projection in projections {
        projector::rebuild::rebuild(&wa.env.pool, projection, &keyring)
            .await
            .expect("rebuild");
    }
    let left = left_in_clear(&wa.env, &needles).await;
    assert!(left.is_empty(), "left in clear after a rebuild: {left:#?}");
    let rebuilt = wa.env.get_json(&contact_export, &wa.admin).await;
    assert_eq!(rebuilt["threads"][0]["messages"][0]["text"], "[erased]");
    assert_eq!(
        wa.env.get_json(&audio_url, &wa.admin).await["text"],
        "[erased]"
    );
}
