//! Aggregates across snapshot boundaries.
//!
//! Every test's command-api snapshots every [`SNAPSHOT_EVERY`] events, and every test ends
//! with an audit of the snapshots it wrote (`TestEnv`'s drop): each must decode from `jsonb`
//! and, with the events after it, give the state a full replay gives. For each aggregate
//! type one lifetime test also asserts, with `assert_snapshots_crossed`, that an aggregate
//! of that type crossed two snapshot intervals (written, loaded, written again);
//! [`every_aggregate_type_has_a_lifetime_past_two_snapshots`] keeps that list complete.
//! The thread test below runs at the default interval instead, through the reproduction of
//! the defect that stopped threads at their 100th event.

use serde_json::{json, Value};

use crate::support::{create_tenant, expect_problem, Service, TestEnv, SNAPSHOT_EVERY};

/// The interval command-api snapshots at unless told otherwise.
const DEFAULT_SNAPSHOT_EVERY: usize = 100;

async fn send(env: &TestEnv, url: &str, token: &str, body: Value) -> reqwest::Response {
    env.http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sent")
}

/// Opens a thread as `token`; its id.
async fn open_thread(env: &TestEnv, api: &Service, token: &str) -> String {
    let opened = send(env, &api.url("/v1/chat/threads"), token, json!({})).await;
    assert_eq!(opened.status(), 201);
    let opened: Value = opened.json().await.expect("json");
    opened["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_thread_takes_its_thousandth_message_at_the_default_snapshot_interval() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.snapshot_every = DEFAULT_SNAPSHOT_EVERY;
    let api = env.spawn_command_api(config.clone()).await;
    let (tenant, _) = create_tenant(&env, &api, "long-talk").await;
    let customer = env.phone_user(&tenant, "phone-long");
    let thread = open_thread(&env, &api, &customer).await;
    let messages = api.url(&format!("/v1/chat/threads/{thread}/messages"));

    // One after the other, each with a client id, as a chat client sends them. Event 100
    // (message 99) is where the thread used to die.
    let mut ids = Vec::new();
    for n in 1..=1000 {
        let sent = send(
            &env,
            &messages,
            &customer,
            json!({"client_message_id": format!("c-{n}"), "text": format!("message {n}")}),
        )
        .await;
        assert_eq!(sent.status(), 201, "message {n}");
        let sent: Value = sent.json().await.expect("json");
        assert_eq!(sent["version"], n + 1, "message {n} is event {}", n + 1);
        ids.push(sent["message_id"].as_str().expect("message id").to_owned());
    }
    let (rewrites, last_sequence): (i64, i64) = sqlx::query_as(
        "SELECT current_snapshot, last_sequence FROM snapshots WHERE aggregate_id = $1",
    )
    .bind(&thread)
    .fetch_one(&env.pool)
    .await
    .expect("the thread has a snapshot");
    assert_eq!((rewrites, last_sequence), (10, 1000));

    // A fresh process loads the thread from its snapshot and decides as before: a retry of
    // an early message appends nothing and names it, a new one is number 1,001.
    api.stop().await;
    let api = env.spawn_command_api(config).await;
    let messages = api.url(&format!("/v1/chat/threads/{thread}/messages"));
    let events = env.event_count().await;
    let retried: Value = send(
        &env,
        &messages,
        &customer,
        json!({"client_message_id": "c-7", "text": "message 7"}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(retried["message_id"], ids[6].as_str());
    assert_eq!(env.event_count().await, events, "a retry appends nothing");
    // The thread keeps only its latest messages in memory; the first ones are read from its
    // events: the author may still edit the first (within 15 minutes) and delete the seventh,
    // and another customer may not.
    let message = |n: usize, what: &str| {
        api.url(&format!(
            "/v1/chat/threads/{thread}/messages/{}/{what}",
            ids[n]
        ))
    };
    let edit = json!({"text": "edited"});
    let edited = send(&env, &message(0, "edit"), &customer, edit.clone()).await;
    assert_eq!(edited.status(), 200);
    let deleted = send(&env, &message(6, "delete"), &customer, json!({})).await;
    assert_eq!(deleted.status(), 200);
    let again = send(&env, &message(6, "edit"), &customer, edit.clone()).await;
    expect_problem(again, 422, "message_deleted").await;
    // An id no message can have is not found, not a database failure to retry.
    let impossible = api.url(&format!("/v1/chat/threads/{thread}/messages/ab%00cd/edit"));
    let answer = send(&env, &impossible, &customer, edit).await;
    expect_problem(answer, 404, "message_not_found").await;
    let next = send(
        &env,
        &messages,
        &customer,
        json!({"client_message_id": "c-1001", "text": "still here"}),
    )
    .await;
    assert_eq!(next.status(), 201);
    let next: Value = next.json().await.expect("json");
    assert_eq!(next["version"], 1004, "after the edit and the deletion");
    // Another phone user of the tenant still cannot write in it.
    let stranger = env.phone_user(&tenant, "phone-other");
    expect_problem(
        send(&env, &messages, &stranger, json!({"text": "hi"})).await,
        404,
        "not_found",
    )
    .await;
    env.assert_snapshots_crossed(events::chat::THREAD).await;
}

#[tokio::test]
async fn a_stored_event_that_no_longer_decodes_is_a_permanent_failure_with_an_incident() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "broken-thread").await;
    let customer = env.phone_user(&tenant, "phone-b");
    let thread = open_thread(&env, &api, &customer).await;
    // An event this version cannot read (as a faulty deploy or hand edit would leave).
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                             event_version, payload, metadata)
         VALUES ('thread', $1, 2, 'Bogus', '1.0', '{\"Bogus\": {}}',
                 jsonb_build_object('tenant_id', $2::text))",
    )
    .bind(&thread)
    .bind(&tenant)
    .execute(&env.pool)
    .await
    .expect("insert");
    // A process that has not cached the thread loads it from the store.
    let fresh = env.spawn_command_api(env.command_config()).await;
    let messages = fresh.url(&format!("/v1/chat/threads/{thread}/messages"));
    let events = env.event_count().await;
    for _ in 0..2 {
        let answer = send(&env, &messages, &customer, json!({"text": "hello?"})).await;
        assert!(
            answer.headers().get("retry-after").is_none(),
            "retrying will not help"
        );
        let body = expect_problem(answer, 500, "store_rejected").await;
        let incident = body["incident_id"].as_str().expect("an incident id");
        assert_eq!(incident.len(), 36, "{body}");
        assert!(!body["detail"].as_str().unwrap_or("").contains("Bogus"));
    }
    assert_eq!(env.event_count().await, events, "nothing appended");
    let metrics = env
        .http
        .get(fresh.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "command_permanent_failures_total{aggregate_type=\"thread\",code=\"store_rejected\"} 2"
        ),
        "{metrics}"
    );
    // The service keeps serving everything else.
    open_thread(&env, &fresh, &customer).await;
    api.stop().await;
}

/// Every aggregate type command-api knows has a test above or elsewhere in this suite that
/// drives one through two snapshot intervals with real commands.
#[test]
fn every_aggregate_type_has_a_lifetime_past_two_snapshots() {
    const { assert!(SNAPSHOT_EVERY <= 3, "tests snapshot often") };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/backbone");
    let mut sources = String::new();
    for entry in std::fs::read_dir(&dir).expect("the test folder") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            sources.push_str(&std::fs::read_to_string(&path).expect("read"));
        }
    }
    let constants = [
        ("tenant", "events::tenants::AGGREGATE_TYPE"),
        ("admin_user", "events::identity::ADMIN_USER"),
        ("phone_login", "events::identity::PHONE_LOGIN"),
        ("thread", "events::chat::THREAD"),
        ("catalog", "events::payments::CATALOG"),
        ("payment", "events::payments::PAYMENT"),
        ("webhook", "events::webhooks::WEBHOOK"),
        ("phone_number", "events::telephony::PHONE_NUMBER"),
        ("sms", "events::telephony::SMS"),
        ("call", "events::telephony::CALL"),
        ("audio", "events::audio::AUDIO"),
        ("whatsapp_session", "events::whatsapp::WHATSAPP_SESSION"),
        (
            "whatsapp_conversation",
            "events::whatsapp::WHATSAPP_CONVERSATION",
        ),
    ];
    assert_eq!(
        constants.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
        command_api::snapshots::aggregate_types(),
        "a new aggregate type needs a lifetime test past two snapshots"
    );
    for (aggregate_type, constant) in constants {
        assert!(
            sources.contains(&format!("assert_snapshots_crossed({constant})")),
            "no test asserts that a {aggregate_type} crossed two snapshot intervals"
        );
    }
}

#[tokio::test]
async fn the_audit_finds_a_snapshot_that_disagrees_with_the_events() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "audited").await;
    let customer = env.phone_user(&tenant, "phone-a");
    let thread = open_thread(&env, &api, &customer).await;
    let messages = api.url(&format!("/v1/chat/threads/{thread}/messages"));
    for n in 0..3 {
        let sent = send(&env, &messages, &customer, json!({"text": format!("m{n}")})).await;
        assert_eq!(sent.status(), 201);
    }
    let config = env.command_config();
    let sound = command_api::verify_snapshots(&config).await.expect("audit");
    assert!(sound.is_sound(), "{:?}", sound.findings);
    assert!(sound.types["thread"].most_rewrites >= 2);
    // A snapshot that decodes but says the thread is closed, which no event says.
    sqlx::query(
        "UPDATE snapshots SET payload = jsonb_set(payload, '{closed}', 'true')
          WHERE aggregate_type = 'thread' AND aggregate_id = $1",
    )
    .bind(&thread)
    .execute(&env.pool)
    .await
    .expect("tamper");
    let audit = command_api::verify_snapshots(&config).await.expect("audit");
    assert_eq!(audit.findings.len(), 1, "{:?}", audit.findings);
    assert_eq!(audit.findings[0].aggregate_id, thread);
    // And one that does not decode at all.
    sqlx::query(
        "UPDATE snapshots SET payload = '\"an older shape\"'
          WHERE aggregate_type = 'thread' AND aggregate_id = $1",
    )
    .bind(&thread)
    .execute(&env.pool)
    .await
    .expect("tamper");
    let audit = command_api::verify_snapshots(&config).await.expect("audit");
    assert!(audit.findings[0].problem.contains("does not decode"));
    // Snapshots are a cache: dropping the bad one leaves the store sound for the audit at
    // the end of the test.
    sqlx::query("DELETE FROM snapshots WHERE aggregate_id = $1")
        .bind(&thread)
        .execute(&env.pool)
        .await
        .expect("drop the snapshot");
}

/// Text the rules let through, chosen to stress JSON and `jsonb`: quotes, backslashes, JSON
/// Pointer characters, line and paragraph separators, non-characters, astral and combining
/// characters, right-to-left marks, escapes that look like NUL.
const AWKWARD: [&str; 8] = [
    "quote \" and backslash \\",
    "pointer ~0 ~1 a/b",
    "separators \u{2028}\u{2029} and a tab\t",
    "non-character \u{FFFF} and \u{FFFE}",
    "astral 😀 and combining e\u{301}",
    "right-to-left \u{200F}עברית\u{200E}",
    "looks like NUL: \\u0000 \\0",
    "a line\nbreak",
];

#[tokio::test]
async fn awkward_text_survives_snapshots_of_tenants_threads_and_catalogs() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "awkward").await;
    let admin = env.admin_of(&tenant);
    let root = env.super_admin();
    // Departments and a name: tenant state.
    for (n, text) in AWKWARD.iter().enumerate() {
        let name = text.replace(['\n', '\t'], " ");
        let r = send(
            &env,
            &api.url(&format!("/v1/tenants/{tenant}/departments")),
            &admin,
            json!({"name": format!("{name} {n}")}),
        )
        .await;
        assert_eq!(r.status(), 200, "department {name:?}");
    }
    let r = send(
        &env,
        &api.url(&format!("/v1/tenants/{tenant}/rename")),
        &root,
        json!({"name": "Ünïcödé \"Co\" \\ 😀"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Messages, client ids, tags and a subject: thread state.
    let customer = env.phone_user(&tenant, "phone-awk");
    let opened = send(
        &env,
        &api.url("/v1/chat/threads"),
        &customer,
        json!({"subject": AWKWARD[0]}),
    )
    .await;
    assert_eq!(opened.status(), 201);
    let opened: Value = opened.json().await.expect("json");
    let thread = opened["id"].as_str().expect("id").to_owned();
    for (n, text) in AWKWARD.iter().enumerate() {
        let client_id = format!("{}-{n}", text.replace(['\n', '\t'], "_"));
        let r = send(
            &env,
            &api.url(&format!("/v1/chat/threads/{thread}/messages")),
            &customer,
            json!({"text": text, "client_message_id": client_id}),
        )
        .await;
        assert_eq!(r.status(), 201, "message {text:?}");
    }
    let agent = env.agent_of(&tenant);
    let tags: Vec<String> = AWKWARD[..4]
        .iter()
        .map(|t| t.replace(['\n', '\t'], " ").chars().take(40).collect())
        .collect();
    let r = send(
        &env,
        &api.url(&format!("/v1/chat/threads/{thread}/tags")),
        &agent,
        json!({"tags": tags}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // Products and taxes: catalog state.
    for (n, text) in AWKWARD.iter().enumerate() {
        let r = env
            .http
            .put(api.url(&format!("/v1/catalog/products/p-{n}")))
            .bearer_auth(&admin)
            .json(&json!({"name": text.replace(['\n', '\t'], " "), "unit_price": 100 + n, "currency": "EUR"}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 200, "product {text:?}");
    }
    env.assert_snapshots_crossed(events::tenants::AGGREGATE_TYPE)
        .await;
    env.assert_snapshots_crossed(events::chat::THREAD).await;
    env.assert_snapshots_crossed(events::payments::CATALOG)
        .await;
}
