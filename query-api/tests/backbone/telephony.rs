//! SignalWire callbacks: signatures made by SignalWire's and Twilio's own Python libraries are
//! accepted (both schemes, with and without the port), tampered ones refused; numbers belong
//! to tenants; SMS and call callbacks become events once, statuses only forward; a callback
//! for a number nobody owns is recorded, not dropped.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{create_tenant, eventually, expect_problem, py, Service, TestEnv, SECRET};

const SIGNING_KEY: &str = "PSKtest123";
/// The public base the provider calls (BACKEND_URL): what it signs, whatever address the
/// request reaches.
const BACKEND: &str = "https://hooks.example.com";
const PATH: &str = "/api/webhooks/signalwire?tenant=main";
const OURS: &str = "+15557650002";

/// A form callback's signature, by SignalWire's library (its compatibility scheme, which is
/// Twilio's: the same as Twilio's library computes) for `url`.
fn form_signature(url: &str, params: &[(&str, &str)]) -> String {
    let params: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    let signalwire = py(
        "import sys, json\n\
         from signalwire.request_validator import RequestValidator\n\
         print(RequestValidator(sys.argv[1]).build_signature_with_compatibility(sys.argv[2], json.loads(sys.stdin.read())))",
        &Value::Object(params.clone()).to_string(),
        &[SIGNING_KEY, url],
    );
    let twilio = py(
        "import sys, json\n\
         from twilio.request_validator import RequestValidator\n\
         print(RequestValidator(sys.argv[1]).compute_signature(sys.argv[2], json.loads(sys.stdin.read())))",
        &Value::Object(params).to_string(),
        &[SIGNING_KEY, url],
    );
    assert_eq!(signalwire, twilio, "both libraries sign alike");
    signalwire
}

/// A JSON callback's signature, by SignalWire's library (hex HMAC-SHA1 of URL and body).
fn json_signature(url: &str, body: &str) -> String {
    py(
        "import sys\n\
         from signalwire.request_validator import RequestValidator\n\
         print(RequestValidator(sys.argv[1]).build_signature(sys.argv[2], sys.stdin.read()))",
        body,
        &[SIGNING_KEY, url],
    )
}

/// Whether SignalWire's library accepts a form callback's signature (the reference our check
/// must agree with).
fn signalwire_accepts(url: &str, params: &[(&str, &str)], signature: &str) -> bool {
    let params: serde_json::Map<String, Value> = params
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    py(
        "import sys, json\n\
         from signalwire.request_validator import RequestValidator\n\
         print(RequestValidator(sys.argv[1]).validate(sys.argv[2], json.loads(sys.stdin.read()), sys.argv[3]))",
        &Value::Object(params).to_string(),
        &[SIGNING_KEY, url, signature],
    ) == "True"
}

struct Phone {
    env: TestEnv,
    api: Service,
    query: Service,
    _projector: tokio::task::JoinHandle<()>,
    tenant: String,
    admin: String,
}

impl Phone {
    async fn start() -> Self {
        let env = TestEnv::new().await;
        let mut config = env.command_config();
        config.ctx.telephony.signalwire_signing_key = vec![SIGNING_KEY.into()];
        config.backend_url = Some(BACKEND.into());
        let api = env.spawn_command_api(config).await;
        let mut projector = env.projector_config();
        projector.nest_auth_secret = Some(SECRET.into());
        projector.command_api_url = api.url("");
        let projector = env.spawn_projector(projector);
        let query = env.spawn_query_api(env.query_config()).await;
        let (tenant, _) = create_tenant(&env, &api, &format!("tel{}", &env.prefix[1..9])).await;
        let admin = env.admin_of(&tenant);
        Self {
            env,
            api,
            query,
            _projector: projector,
            tenant,
            admin,
        }
    }

    async fn assign(&self, number: &str, token: &str) -> reqwest::Response {
        self.env
            .http
            .put(self.api.url(&format!("/v1/telephony/numbers/{number}")))
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .expect("sent")
    }

    async fn release(&self, number: &str, token: &str) -> reqwest::Response {
        self.env
            .http
            .post(
                self.api
                    .url(&format!("/v1/telephony/numbers/{number}/release")),
            )
            .bearer_auth(token)
            .json(&json!({}))
            .send()
            .await
            .expect("sent")
    }

    async fn form(
        &self,
        params: &[(&str, &str)],
        header: &str,
        signature: Option<&str>,
    ) -> reqwest::Response {
        let mut request = self.env.http.post(self.api.url(PATH)).form(params);
        if let Some(s) = signature {
            request = request.header(header, s);
        }
        request.send().await.expect("sent")
    }

    /// A form callback signed as SignalWire signs it.
    async fn signed(&self, params: &[(&str, &str)]) -> reqwest::Response {
        let signature = form_signature(&format!("{BACKEND}{PATH}"), params);
        self.form(params, "x-signalwire-signature", Some(&signature))
            .await
    }

    async fn webhook_when(&self, id: &str, check: impl Fn(&Value) -> bool) -> Value {
        let url = self.query.url(&format!("/v1/webhooks/{id}"));
        let root = self.env.super_admin();
        eventually(
            Duration::from_secs(20),
            "the callback processed",
            || async {
                let w = self.env.get_json(&url, &root).await;
                check(&w).then_some(w)
            },
        )
        .await
    }

    /// The staff's SMS inbox once it lists `n` threads.
    async fn sms_inbox(&self, n: usize) -> Value {
        let url = self.query.url("/v1/chat/threads?channel=sms");
        eventually(Duration::from_secs(20), "the sms threads", || async {
            let page = self.env.get_json(&url, &self.admin).await;
            (page["items"].as_array().map(Vec::len) == Some(n)).then_some(page)
        })
        .await
    }

    async fn events(&self, aggregate_type: &str, event_type: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_type = $1 AND event_type = $2",
        )
        .bind(aggregate_type)
        .bind(event_type)
        .fetch_one(&self.env.pool)
        .await
        .expect("count")
    }
}

async fn id_of(r: reqwest::Response) -> String {
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

fn inbound(sid: &'static str, to: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("AccountSid", "AC1"),
        ("MessageSid", sid),
        ("SmsStatus", "received"),
        ("From", "+15551230001"),
        ("To", to),
        ("Body", "Hello, is the shop open?"),
        ("NumMedia", "0"),
        ("FromCity", "SPRINGFIELD"),
    ]
}

#[tokio::test]
async fn signalwire_signatures_made_by_its_own_libraries_are_accepted_and_tampering_refused() {
    let phone = Phone::start().await;
    let url = format!("{BACKEND}{PATH}");
    // Form callbacks, under either header, signed for the URL with or without its port.
    let params = inbound("SMsig1", OURS);
    let signature = form_signature(&url, &params);
    assert!(signalwire_accepts(&url, &params, &signature));
    let r = phone
        .form(&params, "x-signalwire-signature", Some(&signature))
        .await;
    assert_eq!(r.status(), 200);
    let params = inbound("SMsig2", OURS);
    let with_port = format!("https://hooks.example.com:443{PATH}");
    let signature = form_signature(&with_port, &params);
    let r = phone
        .form(&params, "x-twilio-signature", Some(&signature))
        .await;
    assert_eq!(r.status(), 200);
    // JSON callbacks: SignalWire's hex scheme, and Twilio's bodySHA256 scheme.
    let body = r#"{"event_type":"calling.call.state","params":{"call_id":"c1","call_state":"ended","from_number":"+15551230001"}}"#;
    let signature = json_signature(&url, body);
    let r = phone
        .env
        .http
        .post(phone.api.url(PATH))
        .header("content-type", "application/json")
        .header("x-signalwire-signature", &signature)
        .body(body)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    let hash = py(
        "import sys, hashlib\nprint(hashlib.sha256(sys.stdin.read().encode()).hexdigest())",
        body,
        &[],
    );
    let hashed_path = format!("{PATH}&bodySHA256={hash}");
    let signature = form_signature(&format!("{BACKEND}{hashed_path}"), &[]);
    let twilio_json = |body: String| {
        phone
            .env
            .http
            .post(phone.api.url(&hashed_path))
            .header("content-type", "application/json")
            .header("x-twilio-signature", &signature)
            .body(body)
            .send()
    };
    assert_eq!(
        twilio_json(body.to_owned()).await.expect("sent").status(),
        200
    );
    let r = twilio_json(body.replace("ended", "ending"))
        .await
        .expect("sent");
    expect_problem(r, 401, "bad_signature").await;

    // (The accepted callbacks are being processed meanwhile: count what tampering could add.)
    let before = phone.events("webhook", "Received").await;
    let params = inbound("SMsig3", OURS);
    let signature = form_signature(&url, &params);
    let mut tampered = params.clone();
    tampered[5] = ("Body", "Send me your password");
    expect_problem(
        phone
            .form(&tampered, "x-signalwire-signature", Some(&signature))
            .await,
        401,
        "bad_signature",
    )
    .await;
    // Signed for another URL (a callback meant for another endpoint, replayed here).
    let elsewhere = form_signature("https://hooks.example.com/api/webhooks/other", &params);
    expect_problem(
        phone
            .form(&params, "x-signalwire-signature", Some(&elsewhere))
            .await,
        401,
        "bad_signature",
    )
    .await;
    expect_problem(
        phone.form(&params, "x-signalwire-signature", None).await,
        401,
        "missing_signature",
    )
    .await;
    let tampered_json = body.replace("ended", "answered");
    let r = phone
        .env
        .http
        .post(phone.api.url(PATH))
        .header("content-type", "application/json")
        .header("x-signalwire-signature", json_signature(&url, body))
        .body(tampered_json)
        .send()
        .await
        .expect("sent");
    expect_problem(r, 401, "bad_signature").await;
    assert_eq!(
        phone.events("webhook", "Received").await,
        before,
        "nothing appended"
    );
}

#[tokio::test]
async fn sms_and_calls_reach_the_tenant_owning_the_number_once_and_only_forward() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    // A number belongs to one tenant.
    let (other, _) = create_tenant(
        &phone.env,
        &phone.api,
        &format!("oth{}", &phone.env.prefix[1..9]),
    )
    .await;
    expect_problem(
        phone.assign(OURS, &phone.env.admin_of(&other)).await,
        409,
        "number_taken",
    )
    .await;
    expect_problem(
        phone.assign("12345", &phone.admin).await,
        422,
        "invalid_phone",
    )
    .await;

    // An inbound SMS: received once, for the tenant, without the caller's location.
    let params = inbound("SMin1", OURS);
    let webhook = id_of(phone.signed(&params).await).await;
    let again: Value = phone.signed(&params).await.json().await.expect("json");
    assert_eq!(again["duplicate"], true);
    let w = phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    assert_eq!(
        (w["outcome"].as_str(), w["tenant_id"].as_str()),
        (Some("applied"), Some(phone.tenant.as_str()))
    );
    assert!(
        w["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("SmsReceived in thread ")),
        "{w}"
    );
    // It reached the tenant's inbox: a thread of channel sms with the sender, holding the
    // text as the sender's message.
    let inbox = phone.sms_inbox(1).await;
    assert_eq!(
        inbox["items"][0]["customer_address"], "+15551230001",
        "{inbox}"
    );
    // The number names no one in the store: the contact's id is their subject id.
    assert_eq!(
        inbox["items"][0]["customer_id"],
        events::personal::subject_id("contact", &phone.tenant, "+15551230001").to_string(),
        "{inbox}"
    );
    let thread = inbox["items"][0]["id"].as_str().expect("id").to_owned();
    let messages = eventually(Duration::from_secs(20), "the message", || async {
        let page = phone
            .env
            .get_json(
                &phone
                    .query
                    .url(&format!("/v1/chat/threads/{thread}/messages")),
                &phone.admin,
            )
            .await;
        (page["items"].as_array().map(Vec::len) == Some(1)).then_some(page)
    })
    .await;
    assert_eq!(messages["items"][0]["text"], "Hello, is the shop open?");
    assert!(!w["payload"].to_string().contains("SPRINGFIELD"), "{w}");
    // What the webhook kept is sealed for the sender in the store, and shown opened to the
    // tenant's admin.
    assert_eq!(w["payload"]["From"], "+15551230001", "{w}");
    let stored: String = sqlx::query_scalar(
        "SELECT payload::text FROM events
          WHERE aggregate_type = 'webhook' AND aggregate_id = $1 AND event_type = 'Received'",
    )
    .bind(&webhook)
    .fetch_one(&phone.env.pool)
    .await
    .expect("the Received event");
    for clear in ["15551230001", "shop open"] {
        assert!(!stored.contains(clear), "{clear} in clear: {stored}");
    }
    let body: String = sqlx::query_scalar(
        "SELECT payload->'SmsReceived'->>'body' FROM events WHERE aggregate_type = 'sms' AND aggregate_id = 'SMin1@+15557650002'",
    )
    .fetch_one(&phone.env.pool)
    .await
    .expect("received");
    assert!(events::personal::is_sealed(&body), "sealed for the sender");
    let body = phone.env.keyring().open(&body).await.expect("opened");
    assert_eq!(body, "Hello, is the shop open?");

    let tenant: String = sqlx::query_scalar(
        "SELECT metadata->>'tenant_id' FROM events WHERE aggregate_type = 'sms' AND aggregate_id = 'SMin1@+15557650002'",
    )
    .fetch_one(&phone.env.pool)
    .await
    .expect("tenant");
    assert_eq!(tenant, phone.tenant);

    // A long message in another script (1,600 characters, far past 256 bytes) arrives whole.
    let long: &'static str = "Здравствуйте! Магазин открыт? 🛍 "
        .repeat(60)
        .chars()
        .take(1_600)
        .collect::<String>()
        .leak();
    let mut params = inbound("SMlong", OURS);
    params.retain(|(k, _)| *k != "Body");
    params.push(("Body", long));
    let webhook = id_of(phone.signed(&params).await).await;
    phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    let stored: String = sqlx::query_scalar(
        "SELECT payload->'SmsReceived'->>'body' FROM events WHERE aggregate_type = 'sms' AND aggregate_id = 'SMlong@+15557650002'",
    )
    .fetch_one(&phone.env.pool)
    .await
    .expect("received");
    let stored = phone.env.keyring().open(&stored).await.expect("opened");
    assert_eq!(stored, long);

    eventually(
        Duration::from_secs(20),
        "the long message in the thread",
        || async {
            let page = phone
                .env
                .get_json(
                    &phone
                        .query
                        .url(&format!("/v1/chat/threads/{thread}/messages")),
                    &phone.admin,
                )
                .await;
            page["items"]
                .as_array()
                .is_some_and(|items| items.iter().any(|m| m["text"] == long))
                .then_some(())
        },
    )
    .await;

    // Delivery statuses of an SMS the tenant sent: a late "sent" after "delivered" changes
    // nothing.
    let status = |s: &'static str| {
        vec![
            ("MessageSid", "SMout1"),
            ("MessageStatus", s),
            ("From", OURS),
            ("To", "+15551230001"),
        ]
    };
    let delivered = id_of(phone.signed(&status("delivered")).await).await;
    phone
        .webhook_when(&delivered, |w| w["status"] == "processed")
        .await;
    let late = id_of(phone.signed(&status("sent")).await).await;
    let w = phone
        .webhook_when(&late, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["outcome"], "recorded", "{w}");
    assert_eq!(phone.events("sms", "DeliveryStatusChanged").await, 1);

    // A call that ended, with its duration and recording.
    let call = [
        ("CallSid", "CA1"),
        ("CallStatus", "completed"),
        ("CallDuration", "42"),
        ("Direction", "inbound"),
        ("From", "+15551230001"),
        ("To", OURS),
        ("RecordingSid", "RE1"),
        ("RecordingUrl", "https://files.example.com/RE1.mp3"),
    ];
    let webhook = id_of(phone.signed(&call).await).await;
    phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    let (duration, recording): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT payload->'CallStatusChanged'->>'duration_secs', payload->'CallStatusChanged'->>'recording_url'
           FROM events WHERE aggregate_type = 'call' AND aggregate_id = 'CA1'",
    )
    .fetch_one(&phone.env.pool)
    .await
    .expect("call");
    let recording = phone
        .env
        .keyring()
        .open(&recording.unwrap_or_default())
        .await
        .expect("opened");
    assert_eq!(
        (duration.as_deref(), recording.as_str()),
        (Some("42"), "https://files.example.com/RE1.mp3")
    );

    // A number nobody owns: recorded as the platform's, not dropped, not applied.
    let stranger = id_of(phone.signed(&inbound("SMx", "+15550009999")).await).await;
    let w = phone
        .webhook_when(&stranger, |w| w["status"] == "processed")
        .await;
    assert_eq!(
        (
            w["outcome"].as_str(),
            w["detail"].as_str(),
            w["tenant_id"].as_str()
        ),
        (
            Some("ignored"),
            Some("no tenant owns the number"),
            Some("platform")
        )
    );
    assert_eq!(
        phone.events("sms", "SmsReceived").await,
        2,
        "the tenant's two, none for the stranger"
    );

    // Released, the number's callbacks are the platform's again.
    assert_eq!(phone.release(OURS, &phone.admin).await.status(), 200);
    let after = id_of(phone.signed(&inbound("SMin2", OURS)).await).await;
    let w = phone
        .webhook_when(&after, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["detail"], "no tenant owns the number");
}

#[tokio::test]
async fn a_number_an_sms_and_a_call_live_past_two_snapshot_intervals() {
    let phone = Phone::start().await;
    // Assigned and released twice, then assigned for good: five events.
    for _ in 0..2 {
        assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
        assert_eq!(phone.release(OURS, &phone.admin).await.status(), 200);
    }
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    // Still the tenant's, as the state loaded from the last snapshot says.
    let (other, _) = create_tenant(
        &phone.env,
        &phone.api,
        &format!("lif{}", &phone.env.prefix[1..9]),
    )
    .await;
    expect_problem(
        phone.assign(OURS, &phone.env.admin_of(&other)).await,
        409,
        "number_taken",
    )
    .await;

    // An outbound SMS through every status, one callback at a time.
    for status in ["queued", "sending", "sent", "delivered"] {
        let params = [
            ("MessageSid", "SMlife"),
            ("MessageStatus", status),
            ("From", OURS),
            ("To", "+15551230001"),
        ];
        let id = id_of(phone.signed(&params).await).await;
        phone
            .webhook_when(&id, |w| w["status"] == "processed")
            .await;
    }
    // A call through every status.
    for status in ["queued", "ringing", "in-progress", "completed"] {
        let params = [
            ("CallSid", "CAlife"),
            ("CallStatus", status),
            ("Direction", "inbound"),
            ("From", "+15551230001"),
            ("To", OURS),
        ];
        let id = id_of(phone.signed(&params).await).await;
        phone
            .webhook_when(&id, |w| w["status"] == "processed")
            .await;
    }
    // Late statuses (not seen before, so not de-duplicated as webhooks), decided from state
    // loaded from the snapshots, change nothing.
    for params in [
        vec![
            ("MessageSid", "SMlife"),
            ("MessageStatus", "accepted"),
            ("From", OURS),
            ("To", "+15551230001"),
        ],
        vec![
            ("CallSid", "CAlife"),
            ("CallStatus", "initiated"),
            ("Direction", "inbound"),
            ("From", "+15551230001"),
            ("To", OURS),
        ],
    ] {
        let id = id_of(phone.signed(&params).await).await;
        let w = phone
            .webhook_when(&id, |w| w["status"] == "processed")
            .await;
        assert_eq!(w["outcome"], "recorded", "{w}");
    }
    assert_eq!(phone.events("sms", "DeliveryStatusChanged").await, 4);
    assert_eq!(phone.events("call", "CallStatusChanged").await, 4);
    phone
        .env
        .assert_snapshots_crossed(events::telephony::PHONE_NUMBER)
        .await;
    phone
        .env
        .assert_snapshots_crossed(events::telephony::SMS)
        .await;
    phone
        .env
        .assert_snapshots_crossed(events::telephony::CALL)
        .await;
}

#[tokio::test]
async fn without_a_public_url_signalwire_callbacks_are_refused_whatever_host_they_name() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.telephony.signalwire_signing_key = vec![SIGNING_KEY.into()];
    config.backend_url = None;
    let api = env.spawn_command_api(config).await;
    // Signed for exactly the URL the request names (its own Host): what another application
    // sharing the signing key, or anyone holding one of its signed callbacks, can produce.
    let params = inbound("SMhost1", OURS);
    let claimed = api.url(PATH);
    let signature = form_signature(&claimed, &params);
    assert!(signalwire_accepts(&claimed, &params, &signature));
    let r = env
        .http
        .post(&claimed)
        .header("x-signalwire-signature", &signature)
        .form(&params)
        .send()
        .await
        .expect("sent");
    expect_problem(r, 401, "not_configured").await;
    assert_eq!(env.event_count().await, 0, "nothing appended");
    api.stop().await;
}

#[tokio::test]
async fn an_sms_to_a_suspended_tenant_waits_and_lands_on_reactivation() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let root = phone.env.super_admin();
    let tenant_action = |action: &str| {
        let request = phone
            .env
            .http
            .post(
                phone
                    .api
                    .url(&format!("/v1/tenants/{}/{action}", phone.tenant)),
            )
            .bearer_auth(&root)
            .json(&json!({"reason": "unpaid"}));
        async move { request.send().await.expect("sent").status() }
    };
    assert_eq!(tenant_action("suspend").await, 200);
    // The provider is answered (nothing is lost), but the text waits, listed for the tenant.
    let webhook = id_of(phone.signed(&inbound("SMheld", OURS)).await).await;
    let held = phone
        .webhook_when(&webhook, |w| w["tenant_id"] == phone.tenant.as_str())
        .await;
    assert_eq!(held["status"], "received", "{held}");
    assert_eq!(phone.events("sms", "SmsReceived").await, 0, "not processed");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(phone.events("sms", "SmsReceived").await, 0, "still waiting");
    // Tied to the tenant when it arrived, it is not even tried; one that is tried is held
    // (once) for the tenant.
    assert!(phone.events("webhook", "HeldForTenant").await <= 1);
    // Reactivated: it is processed into the tenant's inbox.
    assert_eq!(tenant_action("reactivate").await, 200);
    let done = phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    assert_eq!(done["outcome"], "applied", "{done}");
    assert_eq!(phone.events("sms", "SmsReceived").await, 1);
}

#[tokio::test]
async fn no_customer_can_take_the_thread_an_sms_sender_will_get() {
    use events::chat::{Channel, Party, PartyKind, ThreadEvent};
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let user = uuid::Uuid::now_v7().to_string();
    let customer = phone.env.phone_user(&phone.tenant, &user);
    // The id the platform derives for the next SMS from +15551230001.
    let derived = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("sms\0{}\0+15551230001", phone.tenant).as_bytes(),
    )
    .to_string();
    let open = |id: &str| {
        phone
            .env
            .http
            .post(phone.api.url("/v1/chat/threads"))
            .bearer_auth(&customer)
            .json(&json!({ "id": id }))
            .send()
    };
    expect_problem(open(&derived).await.expect("sent"), 422, "invalid_id").await;
    let fresh = uuid::Uuid::now_v7().to_string();
    assert_eq!(open(&fresh).await.expect("sent").status(), 201);
    // A thread that took the id before client ids were kept apart from derived ones.
    let me = Party {
        id: user.clone(),
        kind: PartyKind::Phone,
    };
    let taken = ThreadEvent::Opened {
        tenant_id: phone.tenant.clone(),
        channel: Channel::Web,
        opened_by: me.clone(),
        customer: Some(me),
        customer_address: None,
        subject: None,
        bot_enabled: true,
        tags: vec![],
        at: chrono::Utc::now(),
    };
    phone
        .env
        .append_raw(
            "thread",
            &derived,
            &phone.tenant,
            serde_json::to_value(&taken).expect("json"),
        )
        .await
        .expect("appended");
    let webhook = id_of(phone.signed(&inbound("SMcapture", OURS)).await).await;
    let w = phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["outcome"], "applied", "{w}");
    // The sender's message is in an SMS thread of theirs, in the staff's SMS inbox...
    let inbox = phone.sms_inbox(1).await;
    assert_eq!(
        inbox["items"][0]["customer_address"], "+15551230001",
        "{inbox}"
    );
    assert_ne!(inbox["items"][0]["id"], derived.as_str());
    // ...and never in the customer's thread, nor credited to them.
    let in_taken: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'thread' AND aggregate_id = $1",
    )
    .bind(&derived)
    .fetch_one(&phone.env.pool)
    .await
    .expect("count");
    assert_eq!(in_taken, 1, "only its own Opened");
}

#[tokio::test]
async fn an_sms_sender_is_read_as_a_phone_number_or_said_to_be_none() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let from = |sid: &'static str, from: &'static str| {
        let mut params = inbound(sid, OURS);
        params.retain(|(k, _)| *k != "From");
        params.push(("From", from));
        params
    };
    // `tel:` and surrounding spaces are no part of the number.
    let webhook = id_of(phone.signed(&from("SMtel", " tel:+15551230009 ")).await).await;
    let w = phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["outcome"], "applied", "{w}");
    let inbox = phone.sms_inbox(1).await;
    assert_eq!(inbox["items"][0]["customer_address"], "+15551230009");
    // Nor are the spaces and dashes a number is written with.
    let webhook = id_of(phone.signed(&from("SMspaced", "+1 555 123-0010")).await).await;
    phone
        .webhook_when(&webhook, |w| w["outcome"] == "applied")
        .await;
    let inbox = phone.sms_inbox(2).await;
    assert_eq!(inbox["items"][0]["customer_address"], "+15551230010");
    // A sender that is no number, short code or sender id has no thread, and the webhook
    // says why.
    let webhook = id_of(phone.signed(&from("SMnone", "who? <script>")).await).await;
    let w = phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    assert!(
        w["detail"]
            .as_str()
            .is_some_and(|d| d.contains("not a number, short code or sender id")),
        "{w}"
    );
}

/// The messages of `thread`, once there are `n`, oldest first.
async fn messages(phone: &Phone, thread: &str, n: usize) -> Vec<Value> {
    let url = phone
        .query
        .url(&format!("/v1/chat/threads/{thread}/messages?limit=200"));
    let mut items = eventually(Duration::from_secs(20), "the messages", || async {
        let page = phone.env.get_json(&url, &phone.admin).await;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        (items.len() == n).then_some(items)
    })
    .await;
    items.sort_by_key(|m| m["number"].as_i64());
    items
}

/// The SMS thread of `customer` in the inbox, once there.
async fn thread_of(phone: &Phone, customer: &str) -> String {
    let url = phone.query.url("/v1/chat/threads?channel=sms&limit=200");
    eventually(Duration::from_secs(20), "the sender's thread", || async {
        let page = phone.env.get_json(&url, &phone.admin).await;
        page["items"].as_array().and_then(|items| {
            items
                .iter()
                .find(|t| t["customer_address"] == customer)
                .and_then(|t| t["id"].as_str().map(str::to_owned))
        })
    })
    .await
}

#[tokio::test]
async fn short_codes_sender_ids_blank_bodies_and_nul_reach_the_inbox() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let sms = |sid: &'static str, from: &'static str, body: &'static str| {
        let mut params = inbound(sid, OURS);
        params.retain(|(k, _)| !matches!(*k, "From" | "Body"));
        params.push(("From", from));
        params.push(("Body", body));
        params
    };
    for (sid, from, body) in [
        ("SMshort", "72345", "Your code is 1234"),
        ("SMalpha", "ACME Bank", "Your card was used"),
        ("SMblank", "+15551230020", "   "),
        ("SMnul", "+15551230021", "a\0b"),
    ] {
        let r = phone.signed(&sms(sid, from, body)).await;
        assert_eq!(r.status(), 200);
        let id = id_of(r).await;
        let w = phone
            .webhook_when(&id, |w| w["status"] == "processed")
            .await;
        assert_eq!(w["outcome"], "applied", "{sid}: {w}");
    }
    for (customer, text) in [
        ("72345", "Your code is 1234"),
        ("ACME Bank", "Your card was used"),
        ("+15551230020", "   "),
        ("+15551230021", "a\u{fffd}b"),
    ] {
        let thread = thread_of(&phone, customer).await;
        let got = messages(&phone, &thread, 1).await;
        assert_eq!(got[0]["text"], text, "{customer}");
    }
}

#[tokio::test]
async fn a_message_id_reused_on_another_number_is_another_message() {
    let phone = Phone::start().await;
    const OTHER: &str = "+15557650003";
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    assert_eq!(phone.assign(OTHER, &phone.admin).await.status(), 200);
    let first = id_of(phone.signed(&inbound("SMsame", OURS)).await).await;
    let mut params = inbound("SMsame", OTHER);
    params.retain(|(k, _)| *k != "Body");
    params.push(("Body", "And on the other number?"));
    let r: Value = phone.signed(&params).await.json().await.expect("json");
    assert_eq!(r["duplicate"], false, "{r}");
    assert_ne!(r["id"].as_str(), Some(first.as_str()));
    let thread = thread_of(&phone, "+15551230001").await;
    let got = messages(&phone, &thread, 2).await;
    let texts: Vec<&str> = got.iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&"And on the other number?"), "{texts:?}");
    assert_eq!(phone.events("sms", "SmsReceived").await, 2);
}

#[tokio::test]
async fn an_mms_brings_its_files_into_the_thread() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let media = MockServer::start().await;
    // The space serves media to the project's credentials (HTTP Basic).
    let basic = format!(
        "Basic {}",
        base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            "project-1:token-1"
        )
    );
    Mock::given(method("GET"))
        .and(path("/media/ME1"))
        .and(header("authorization", basic.as_str()))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "image/jpeg")
                .set_body_bytes(b"\xFF\xD8\xFFjpeg-bytes".to_vec()),
        )
        .expect(1)
        .mount(&media)
        .await;
    Mock::given(method("GET"))
        .and(path("/media/ME2"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "application/pdf")
                .set_body_bytes(b"%PDF-1.4 a document".to_vec()),
        )
        .expect(1)
        .mount(&media)
        .await;
    // Gone at the provider: left out, the rest delivered.
    Mock::given(method("GET"))
        .and(path("/media/ME3"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&media)
        .await;
    // A redirect to another machine's plain HTTP: not followed, left out.
    Mock::given(method("GET"))
        .and(path("/media/ME4"))
        .respond_with(
            ResponseTemplate::new(302).insert_header("location", "http://192.0.2.2/internal.jpg"),
        )
        .mount(&media)
        .await;
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.telephony.signalwire_signing_key = vec![SIGNING_KEY.into()];
    config.backend_url = Some(BACKEND.into());
    config.ctx.telephony.signalwire_project_id = Some("project-1".into());
    config.ctx.telephony.signalwire_api_token = Some("token-1".into());
    let api = env.spawn_command_api(config).await;
    let mut projector = env.projector_config();
    projector.nest_auth_secret = Some(SECRET.into());
    projector.command_api_url = api.url("");
    let projector = env.spawn_projector(projector);
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, &format!("mms{}", &env.prefix[1..9])).await;
    let admin = env.admin_of(&tenant);
    let phone = Phone {
        env,
        api,
        query,
        _projector: projector,
        tenant,
        admin,
    };
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let urls = [
        format!("{}/media/ME1", media.uri()),
        format!("{}/media/ME2", media.uri()),
        format!("{}/media/ME3", media.uri()),
        format!("{}/media/ME4", media.uri()),
    ];
    let mut params = inbound("MMone", OURS);
    params.retain(|(k, _)| !matches!(*k, "NumMedia" | "Body"));
    params.extend([
        ("Body", " "),
        ("NumMedia", "4"),
        ("MediaUrl0", urls[0].as_str()),
        ("MediaContentType0", "image/jpeg"),
        ("MediaUrl1", urls[1].as_str()),
        ("MediaUrl2", urls[2].as_str()),
        ("MediaUrl3", urls[3].as_str()),
    ]);
    let webhook = id_of(phone.signed(&params).await).await;
    phone
        .webhook_when(&webhook, |w| w["outcome"] == "applied")
        .await;
    let thread = thread_of(&phone, "+15551230001").await;
    let got = messages(&phone, &thread, 2).await;
    assert_eq!(got[0]["attachment"]["content_type"], "image/jpeg");
    assert_eq!(got[1]["attachment"]["content_type"], "application/pdf");
    let key = got[0]["attachment"]["object_key"].as_str().expect("key");
    assert!(
        key.starts_with(&format!("tenants/{}/sms/", phone.tenant)),
        "{key}"
    );
    let stored = std::fs::read(phone.env.blob_dir.join(key)).expect("stored");
    assert_eq!(stored, b"\xFF\xD8\xFFjpeg-bytes");
    // Processed again (a replay): nothing is fetched again (each file was asked for once,
    // the mocks check on drop) and nothing more is posted.
    let replay = phone
        .env
        .http
        .post(phone.api.url(&format!("/v1/webhooks/{webhook}/replay")))
        .bearer_auth(&phone.admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(replay.status(), 200);
    let w = phone
        .webhook_when(&webhook, |w| {
            w["status"] == "processed" && w["history"].as_array().map(Vec::len) == Some(4)
        })
        .await;
    assert!(
        w["detail"]
            .as_str()
            .is_some_and(|d| d.contains("recorded before")),
        "{w}"
    );
    assert_eq!(messages(&phone, &thread, 2).await.len(), 2);
    assert_eq!(phone.events("sms", "SmsReceived").await, 1);
}

#[tokio::test]
async fn calls_are_listed_missed_ones_found_and_recordings_kept() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let call = |sid: &'static str, status: &'static str| {
        vec![
            ("AccountSid", "AC1"),
            ("CallSid", sid),
            ("CallStatus", status),
            ("Direction", "inbound"),
            ("From", "+15551230031"),
            ("To", OURS),
        ]
    };
    for (sid, status) in [
        ("CAmissed", "ringing"),
        ("CAmissed", "no-answer"),
        ("CAtaken", "in-progress"),
        ("CAtaken", "completed"),
    ] {
        assert_eq!(phone.signed(&call(sid, status)).await.status(), 200);
    }
    // The recording comes in a callback of its own: the recording, no call status.
    let recording = [
        ("AccountSid", "AC1"),
        ("CallSid", "CAtaken"),
        ("RecordingSid", "RE1"),
        ("RecordingUrl", "https://space.example/recordings/RE1"),
        ("RecordingStatus", "completed"),
        ("RecordingDuration", "41"),
    ];
    let webhook = id_of(phone.signed(&recording).await).await;
    let w = phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["outcome"], "applied", "{w}");
    let list = |query: &'static str| {
        let url = phone.query.url(&format!("/v1/telephony/calls{query}"));
        let phone = &phone;
        async move { phone.env.get_json(&url, &phone.admin).await }
    };
    let missed = eventually(Duration::from_secs(20), "the missed call", || async {
        let page = list("?missed=true").await;
        (page["items"].as_array().map(Vec::len) == Some(1)).then_some(page)
    })
    .await;
    assert_eq!(missed["items"][0]["call_sid"], "CAmissed");
    assert_eq!(missed["items"][0]["status"], "no-answer");
    assert_eq!(missed["items"][0]["from_number"], "+15551230031");
    let taken = eventually(Duration::from_secs(20), "the recording", || async {
        let c = phone
            .env
            .get_json(
                &phone.query.url("/v1/telephony/calls/CAtaken"),
                &phone.admin,
            )
            .await;
        (c["recording_sid"] == "RE1").then_some(c)
    })
    .await;
    assert_eq!(taken["status"], "completed");
    assert_eq!(taken["missed"], false);
    assert_eq!(
        taken["recording_url"],
        "https://space.example/recordings/RE1"
    );
    let all = list("").await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(2), "{all}");
    // Another tenant's staff see none of it.
    let (other, _) = create_tenant(
        &phone.env,
        &phone.api,
        &format!("oth{}", &phone.env.prefix[1..9]),
    )
    .await;
    let theirs = phone
        .env
        .get_json(
            &phone.query.url("/v1/telephony/calls"),
            &phone.env.admin_of(&other),
        )
        .await;
    assert_eq!(theirs["items"], json!([]));
    let r = phone
        .env
        .http
        .get(phone.query.url("/v1/telephony/calls/CAtaken"))
        .bearer_auth(phone.env.admin_of(&other))
        .send()
        .await
        .expect("sent");
    expect_problem(r, 404, "not_found").await;
    let r = phone
        .env
        .http
        .get(phone.query.url("/v1/telephony/calls/%00"))
        .bearer_auth(&phone.admin)
        .send()
        .await
        .expect("sent");
    expect_problem(r, 404, "not_found").await;
}

#[tokio::test]
async fn a_signed_callback_with_oversized_fields_keeps_what_is_read_and_never_fails() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    // Inside the 1 MiB body limit once form-encoded, past what an event holds as kept.
    let long = "é".repeat(60_000);
    let huge_url = format!("https://media.example/{}", "x".repeat(420_000));
    let mut params = inbound("SMhuge", OURS);
    params.retain(|(k, _)| !matches!(*k, "Body" | "NumMedia"));
    params.extend([
        ("Body", long.as_str()),
        ("NumMedia", "1"),
        ("MediaUrl0", huge_url.as_str()),
    ]);
    let webhook = id_of(phone.signed(&params).await).await;
    let w = phone
        .webhook_when(&webhook, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["outcome"], "applied", "{w}");
    let thread = thread_of(&phone, "+15551230001").await;
    let got = messages(&phone, &thread, 1).await;
    assert_eq!(
        got[0]["text"].as_str().map(|t| t.chars().count()),
        Some(1_600),
        "cut at the provider's maximum"
    );
}

/// A callback belongs to the tenant it arrived for. After the number moves from one tenant
/// to another, a replay of the first tenant's SMS lands in the first tenant's thread and its
/// webhook stays theirs, and a late delivery status of an SMS the first tenant sent goes to
/// them, not to the number's new owner.
#[tokio::test]
async fn a_callback_stays_with_the_tenant_it_arrived_for_after_the_number_moves() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let sms = id_of(phone.signed(&inbound("SMmove1", OURS)).await).await;
    phone
        .webhook_when(&sms, |w| w["status"] == "processed")
        .await;
    let sent = |status: &'static str| {
        vec![
            ("MessageSid", "SMmoveOut"),
            ("MessageStatus", status),
            ("From", OURS),
            ("To", "+15551230001"),
        ]
    };
    let first_status = id_of(phone.signed(&sent("sent")).await).await;
    phone
        .webhook_when(&first_status, |w| w["status"] == "processed")
        .await;

    // The number moves to another tenant.
    assert_eq!(phone.release(OURS, &phone.admin).await.status(), 200);
    let (other, _) = create_tenant(
        &phone.env,
        &phone.api,
        &format!("mov{}", &phone.env.prefix[1..9]),
    )
    .await;
    let other_admin = phone.env.admin_of(&other);
    assert_eq!(phone.assign(OURS, &other_admin).await.status(), 200);

    // The first tenant's SMS, replayed, is still the first tenant's.
    let replayed = phone
        .env
        .http
        .post(phone.api.url(&format!("/v1/webhooks/{sms}/replay")))
        .bearer_auth(phone.env.super_admin())
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert!(replayed.status().is_success(), "{}", replayed.status());
    eventually(Duration::from_secs(20), "the replay processed", || async {
        let processed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events
              WHERE aggregate_type = 'webhook' AND aggregate_id = $1 AND event_type = 'Processed'",
        )
        .bind(&sms)
        .fetch_one(&phone.env.pool)
        .await
        .expect("count");
        (processed >= 2).then_some(())
    })
    .await;
    let w = phone
        .webhook_when(&sms, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["tenant_id"], phone.tenant.as_str());
    let url = phone.query.url(&format!("/v1/webhooks/{sms}"));
    let seen_by = |token: String| {
        let request = phone.env.http.get(&url).bearer_auth(token);
        async move { request.send().await.expect("sent").status().as_u16() }
    };
    assert_eq!(
        seen_by(phone.admin.clone()).await,
        200,
        "still the first tenant's"
    );
    assert_eq!(
        seen_by(other_admin.clone()).await,
        404,
        "never the new owner's"
    );
    let threads: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT metadata->>'tenant_id' FROM events WHERE aggregate_type = 'thread'",
    )
    .fetch_all(&phone.env.pool)
    .await
    .expect("threads");
    assert_eq!(
        threads,
        vec![phone.tenant.clone()],
        "no thread of the new owner's"
    );

    // A late status of the SMS the first tenant sent arrives after the move: theirs.
    let late = id_of(phone.signed(&sent("delivered")).await).await;
    let w = phone
        .webhook_when(&late, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["tenant_id"], phone.tenant.as_str(), "{w}");
    assert_eq!(w["outcome"], "applied", "{w}");
}

#[tokio::test]
async fn a_callers_sms_and_calls_are_sealed_for_them_and_gone_with_them_while_anothers_stay() {
    let phone = Phone::start().await;
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    const CALLER: &str = "+15551230001";
    const OTHER: &str = "+15551239999";
    let call = |sid: &'static str, from: &'static str| {
        vec![
            ("AccountSid", "AC1"),
            ("CallSid", sid),
            ("CallStatus", "completed"),
            ("CallDuration", "30"),
            ("Direction", "inbound"),
            ("From", from),
            ("To", OURS),
        ]
    };
    // A recording that comes before any status of its call: nobody is known yet.
    let early = [
        ("AccountSid", "AC1"),
        ("CallSid", "CAearly"),
        ("RecordingSid", "REearly"),
        ("RecordingUrl", "https://space.example/recordings/REearly"),
        ("RecordingStatus", "completed"),
    ];
    let early = id_of(phone.signed(&early).await).await;
    let mut webhooks = vec![
        id_of(phone.signed(&inbound("SMseal", OURS)).await).await,
        id_of(phone.signed(&call("CAseal", CALLER)).await).await,
        id_of(phone.signed(&call("CAkept", OTHER)).await).await,
    ];
    let early_status = id_of(phone.signed(&call("CAearly", CALLER)).await).await;
    for id in [&early_status, &early] {
        phone.webhook_when(id, |w| w["status"] == "processed").await;
    }
    for id in &webhooks {
        phone.webhook_when(id, |w| w["status"] == "processed").await;
    }
    // The recording comes on its own, naming no one: it is the caller's.
    let recording = [
        ("AccountSid", "AC1"),
        ("CallSid", "CAseal"),
        ("RecordingSid", "REseal"),
        ("RecordingUrl", "https://space.example/recordings/REseal"),
        ("RecordingStatus", "completed"),
    ];
    webhooks.push(id_of(phone.signed(&recording).await).await);
    let w = phone
        .webhook_when(&webhooks[3], |w| w["status"] == "processed")
        .await;
    assert_eq!(w["outcome"], "applied", "{w}");
    let call_of = |sid: &'static str| {
        let url = phone.query.url(&format!("/v1/telephony/calls/{sid}"));
        let phone = &phone;
        async move { phone.env.get_json(&url, &phone.admin).await }
    };
    let seal = eventually(Duration::from_secs(20), "the recording", || async {
        let c = call_of("CAseal").await;
        (c["recording_sid"] == "REseal").then_some(c)
    })
    .await;
    assert_eq!(seal["from_number"], CALLER);
    // The store holds the caller's number, text and recording only sealed.
    let stored: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(payload::text, ' '), '') FROM events
          WHERE aggregate_type IN ('sms', 'call', 'webhook', 'thread')",
    )
    .fetch_one(&phone.env.pool)
    .await
    .expect("events");
    for clear in [
        "15551230001",
        "15551239999",
        "shop open",
        "recordings/REseal",
        "recordings/REearly",
    ] {
        assert!(!stored.contains(clear), "{clear} in clear");
    }

    // Their export holds their calls and SMS thread.
    let subject = events::personal::subject_id("contact", &phone.tenant, CALLER);
    let export_url = phone
        .query
        .url(&format!("/v1/privacy/subjects/{subject}/export"));
    let export = phone.env.get_json(&export_url, &phone.admin).await;
    let calls = export["calls"].as_array().cloned().unwrap_or_default();
    assert_eq!(calls.len(), 2, "{export}");
    assert_eq!(calls[0]["from_number"], CALLER);
    assert_eq!(
        export["threads"][0]["messages"][0]["text"],
        "Hello, is the shop open?"
    );
    assert_eq!(export["threads"][0]["customer_address"], CALLER);

    // Erased: their calls, SMS thread and webhooks read [erased]; the other's stay.
    let erase = crate::support::erase_subject(&phone.env, &phone.api, &phone.admin, &subject).await;
    assert_eq!(erase.status(), 200);
    let redacted = eventually(Duration::from_secs(20), "the call redacted", || async {
        let c = call_of("CAseal").await;
        (c["from_number"] == "[erased]").then_some(c)
    })
    .await;
    assert_eq!(redacted["recording_url"], "[erased]");
    assert_eq!(redacted["duration_secs"], 30);
    assert_eq!(call_of("CAkept").await["from_number"], OTHER);
    let export = phone.env.get_json(&export_url, &phone.admin).await;
    // Their number is gone: nothing leads to their calls any more.
    assert_eq!(export["calls"], json!([]), "{export}");
    assert_eq!(export["threads"][0]["messages"][0]["text"], "[erased]");
    // The inbox no longer says whom the thread was with.
    assert_eq!(export["threads"][0]["customer_address"], "[erased]");
    let inbox = phone.sms_inbox(1).await;
    assert_eq!(inbox["items"][0]["customer_address"], "[erased]", "{inbox}");
    let root = phone.env.super_admin();
    for id in webhooks[..2].iter().chain([&early, &early_status]) {
        let url = phone.query.url(&format!("/v1/webhooks/{id}"));
        assert_eq!(phone.env.get_json(&url, &root).await["payload"], "[erased]");
    }
    // A rebuild of the calls from the store shows the same.
    phone._projector.abort();
    projector::rebuild::rebuild(
        &phone.env.pool,
        &projector::telephony::CallsProjection,
        &phone.env.keyring(),
    )
    .await
    .expect("rebuild");
    let rebuilt = call_of("CAseal").await;
    assert_eq!(
        (&rebuilt["from_number"], &rebuilt["recording_url"]),
        (&json!("[erased]"), &json!("[erased]"))
    );
    assert_eq!(call_of("CAkept").await["from_number"], OTHER);
    // They text again: nothing of it is recorded.
    let _projector = phone.env.spawn_projector({
        let mut config = phone.env.projector_config();
        config.nest_auth_secret = Some(SECRET.into());
        config.command_api_url = phone.api.url("");
        config
    });
    // However their number is spelled.
    let mut spelled = inbound("SMagain2", OURS);
    spelled.retain(|(k, _)| *k != "From");
    spelled.push(("From", "tel:+1 555-123-0001"));
    for params in [inbound("SMagain", OURS), spelled] {
        let again = id_of(phone.signed(&params).await).await;
        let w = phone
            .webhook_when(&again, |w| w["status"] == "processed")
            .await;
        assert_eq!(w["outcome"], "ignored", "{w}");
        assert_eq!(w["payload"], "[erased]", "{w}");
    }
    assert_eq!(phone.events("sms", "SmsReceived").await, 1);
}

#[tokio::test]
async fn a_contacts_erasure_reaches_what_came_for_their_number_while_nobody_owned_it() {
    let phone = Phone::start().await;
    const SENDER: &str = "+15551230001";
    // Before the number is the tenant's: the platform's, sealed for the sender there.
    let early = id_of(phone.signed(&inbound("SMearly", OURS)).await).await;
    let w = phone
        .webhook_when(&early, |w| w["status"] == "processed")
        .await;
    assert_eq!(w["tenant_id"], "platform", "{w}");
    let keyring = phone.env.keyring();
    let at_platform = events::personal::subject_id("contact", "platform", SENDER);
    let known = keyring.subject(at_platform).await.expect("read");
    assert_eq!(
        known.map(|k| k.erased),
        Some(false),
        "sealed for them at the platform"
    );
    // Then the tenant's: their SMS is in its inbox.
    assert_eq!(phone.assign(OURS, &phone.admin).await.status(), 200);
    let later = id_of(phone.signed(&inbound("SMlater", OURS)).await).await;
    phone
        .webhook_when(&later, |w| w["status"] == "processed")
        .await;
    phone.sms_inbox(1).await;
    // The tenant erases them: what came for their number before is erased with them.
    let subject = events::personal::subject_id("contact", &phone.tenant, SENDER);
    let erase = crate::support::erase_subject(&phone.env, &phone.api, &phone.admin, &subject).await;
    assert_eq!(erase.status(), 200);
    let known = keyring.subject(at_platform).await.expect("read");
    assert_eq!(known.map(|k| k.erased), Some(true));
    let root = phone.env.super_admin();
    for id in [&early, &later] {
        let url = phone.query.url(&format!("/v1/webhooks/{id}"));
        assert_eq!(phone.env.get_json(&url, &root).await["payload"], "[erased]");
    }
}
