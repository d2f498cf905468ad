//! Chat through the three services: a customer and an agent talk in a thread, the inbox
//! and history show it, outsiders see nothing, bad input appends nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{create_tenant, eventually, expect_problem, Service, TestEnv};

/// POSTs `body` to command-api's `path` with `token`.
pub(crate) async fn post(
    env: &TestEnv,
    api: &Service,
    token: &str,
    path: &str,
    body: Value,
) -> reqwest::Response {
    env.http
        .post(api.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sent")
}

/// GETs query-api's `path` with `token`, answering status and body.
async fn get(env: &TestEnv, query: &Service, token: &str, path: &str) -> (u16, Value) {
    let response = env
        .http
        .get(query.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// Schema `schema` of OpenAPI document `doc`, following a `$ref`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(to) => &doc["components"]["schemas"][to.trim_start_matches("#/components/schemas/")],
        None => schema,
    }
}

/// The properties of object schema `schema`, through `$ref` and `allOf`.
fn properties(doc: &Value, schema: &Value, into: &mut serde_json::Map<String, Value>) {
    let schema = resolve(doc, schema);
    for part in schema["allOf"].as_array().into_iter().flatten() {
        properties(doc, part, into);
    }
    if let Some(own) = schema["properties"].as_object() {
        into.extend(own.clone());
    }
}

/// Holds `value` to `schema` of the served document `doc` as the answers PostgreSQL builds
/// must be held: every object has exactly the documented fields, and every `date-time` is
/// written as the services write one (chrono's RFC 3339, `Z`, 0, 3 or 6 fraction digits).
fn assert_documented(doc: &Value, schema: &Value, value: &Value, at: &str) {
    let mut fields = serde_json::Map::new();
    properties(doc, schema, &mut fields);
    let schema = resolve(doc, schema);
    if let (false, Some(object)) = (fields.is_empty(), value.as_object()) {
        let documented: Vec<&String> = fields.keys().collect();
        let answered: Vec<&String> = object.keys().collect();
        let mut sorted = documented.clone();
        sorted.sort();
        let mut got = answered.clone();
        got.sort();
        assert_eq!(
            got, sorted,
            "{at}: the documented fields, no more, no fewer"
        );
        for (name, field) in &fields {
            assert_documented(doc, field, &object[name], &format!("{at}.{name}"));
        }
    } else if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (n, item) in array.iter().enumerate() {
            assert_documented(doc, items, item, &format!("{at}[{n}]"));
        }
    } else if let (Some("date-time"), Some(text)) = (schema["format"].as_str(), value.as_str()) {
        let parsed: chrono::DateTime<chrono::Utc> = text.parse().expect("an instant");
        assert_eq!(
            serde_json::to_value(parsed).expect("json"),
            *value,
            "{at}: written as chrono writes it"
        );
    }
}

/// Holds `answer` to the served document's schema `name`.
async fn assert_answer_documented(env: &TestEnv, query: &Service, name: &str, answer: &Value) {
    let doc = env
        .get_json(&query.url("/openapi.json"), &env.super_admin())
        .await;
    let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
    assert!(
        doc["components"]["schemas"][name].is_object(),
        "{name} is documented"
    );
    assert_documented(&doc, &schema, answer, name);
}

/// Opens a thread as `token` and answers its id and version.
pub(crate) async fn open_thread(
    env: &TestEnv,
    api: &Service,
    token: &str,
    body: Value,
) -> (String, u64) {
    let opened = post(env, api, token, "/v1/chat/threads", body).await;
    assert_eq!(opened.status(), 201, "open thread");
    let opened: Value = opened.json().await.expect("json");
    (
        opened["id"].as_str().expect("id").to_owned(),
        opened["version"].as_u64().expect("version"),
    )
}

#[tokio::test]
async fn a_customer_and_an_agent_talk_and_the_inbox_and_history_follow() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "chatty").await;
    let customer = env.phone_user(&tenant, "phone-ana");
    let agent = env.agent_of(&tenant);

    let (thread, _) = open_thread(
        &env,
        &api,
        &customer,
        json!({"subject": "Where is my order?"}),
    )
    .await;
    let first = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{thread}/messages"),
        json!({"client_message_id": "c-1", "text": "Hello, order 42 is late"}),
    )
    .await;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("json");
    let events_after_first = env.event_count().await;
    // A retry with the same client id (a new request: no Idempotency-Key) appends nothing and
    // names the same message.
    let retry: Value = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{thread}/messages"),
        json!({"client_message_id": "c-1", "text": "Hello, order 42 is late"}),
    )
    .await
    .json()
    .await
    .expect("json");
    assert_eq!(retry["message_id"], first["message_id"]);
    assert_eq!(
        env.event_count().await,
        events_after_first,
        "a retry appends nothing"
    );

    // The agent's inbox shows the thread with one unread message.
    let inbox = eventually(
        Duration::from_secs(20),
        "the thread in the inbox",
        || async {
            let (_, page) = get(&env, &query, &agent, "/v1/chat/threads?unread=true").await;
            let item = page["items"].as_array()?.first()?.clone();
            (item["message_count"] == 1).then_some(item)
        },
    )
    .await;
    assert_eq!(inbox["id"], thread.as_str());
    assert_eq!(inbox["unread"], 1);
    assert_eq!(inbox["subject"], "Where is my order?");
    assert_eq!(inbox["last_message"]["text"], "Hello, order 42 is late");
    // The preview's instant is written as every other instant (outside probe: `+00:00`).
    let sent_at = &inbox["last_message"]["sent_at"];
    let parsed: chrono::DateTime<chrono::Utc> =
        sent_at.as_str().expect("sent_at").parse().expect("instant");
    assert_eq!(serde_json::to_value(parsed).expect("json"), *sent_at);

    let reply = post(
        &env,
        &api,
        &agent,
        &format!("/v1/chat/threads/{thread}/messages"),
        json!({"text": "Sorry! It ships today."}),
    )
    .await;
    assert_eq!(reply.status(), 201);
    let reply: Value = reply.json().await.expect("json");
    let version = reply["version"].as_u64().expect("version");

    // Read-your-writes: the customer's history waits for the reply's version.
    let (status, history) = get(
        &env,
        &query,
        &customer,
        &format!("/v1/chat/threads/{thread}/messages?min_version={version}"),
    )
    .await;
    assert_eq!(status, 200);
    let texts: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["Sorry! It ships today.", "Hello, order 42 is late"],
        "newest first"
    );
    assert_eq!(history["items"][0]["author_kind"], "agent");

    // The customer reads the reply: their unread count drops to zero; the agent wrote it.
    let read = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{thread}/read"),
        json!({"number": 2}),
    )
    .await;
    assert_eq!(read.status(), 200);
    let version = read.json::<Value>().await.expect("json")["version"]
        .as_u64()
        .expect("version");
    let (_, detail) = get(
        &env,
        &query,
        &agent,
        &format!("/v1/chat/threads/{thread}?min_version={version}"),
    )
    .await;
    let unread: Vec<(String, i64)> = detail["participants"]
        .as_array()
        .expect("participants")
        .iter()
        .map(|p| {
            (
                p["user_id"].as_str().unwrap_or_default().to_owned(),
                p["unread"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(unread, [("phone-ana".to_owned(), 0)]);
    assert_eq!(
        detail["readers"][0]["reader_id"],
        format!("agent-of-{tenant}")
    );
    assert_eq!(
        detail["readers"][0]["unread"], 0,
        "an author has read their own message"
    );
    // PostgreSQL writes these answers: they keep the documented shape, for staff and for
    // the customer, whose view leaves the staff's fields empty.
    assert_answer_documented(&env, &query, "ThreadDetail", &detail).await;
    let (_, seen_by_customer) = get(
        &env,
        &query,
        &customer,
        &format!("/v1/chat/threads/{thread}"),
    )
    .await;
    assert_answer_documented(&env, &query, "ThreadDetail", &seen_by_customer).await;
    assert_eq!(seen_by_customer["readers"], json!([]));
    assert_eq!(seen_by_customer["agent_id"], Value::Null);
    assert_eq!(seen_by_customer["tags"], json!([]));
    let (_, staff_inbox) = get(&env, &query, &agent, "/v1/chat/threads?limit=1").await;
    assert_answer_documented(&env, &query, "ThreadPage", &staff_inbox).await;
    assert_eq!(staff_inbox["items"][0]["id"], thread.as_str());

    // The customer sees only their own threads.
    let (_, mine) = get(&env, &query, &customer, "/v1/chat/threads").await;
    assert_eq!(mine["items"].as_array().map(Vec::len), Some(1));
    let (_, badge) = get(&env, &query, &customer, "/v1/chat/unread").await;
    assert_eq!(badge, json!({"threads": 0, "messages": 0}));

    // Deleting the first message leaves a tombstone without text.
    let message_id = first["message_id"].as_str().expect("message id");
    let deleted = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{thread}/messages/{message_id}/delete"),
        json!({}),
    )
    .await;
    assert_eq!(deleted.status(), 200);
    let version = deleted.json::<Value>().await.expect("json")["version"]
        .as_u64()
        .expect("version");
    let (_, history) = get(
        &env,
        &query,
        &agent,
        &format!("/v1/chat/threads/{thread}/messages?min_version={version}&limit=1&before=2"),
    )
    .await;
    assert_eq!(history["items"][0]["deleted"], true);
    assert_eq!(history["items"][0]["text"], Value::Null);
    assert_eq!(history["next_before"], Value::Null, "the oldest page");

    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn outsiders_see_nothing_and_bad_input_appends_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "guarded").await;
    let (other, _) = create_tenant(&env, &api, "elsewhere").await;
    let customer = env.phone_user(&tenant, "phone-bo");
    let (thread, _) = open_thread(&env, &api, &customer, json!({})).await;
    let sent = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{thread}/messages"),
        json!({"text": "hi"}),
    )
    .await;
    assert_eq!(sent.status(), 201);
    let version = sent.json::<Value>().await.expect("json")["version"]
        .as_u64()
        .expect("version");
    let agent = env.agent_of(&tenant);
    let (status, _) = get(
        &env,
        &query,
        &agent,
        &format!("/v1/chat/threads/{thread}?min_version={version}"),
    )
    .await;
    assert_eq!(status, 200);
    let before = env.event_count().await;

    // Another tenant's agent and another customer of the same tenant: 404 on reads and
    // commands alike, and nothing in their lists.
    for outsider in [env.agent_of(&other), env.phone_user(&tenant, "phone-eve")] {
        let (status, _) = get(
            &env,
            &query,
            &outsider,
            &format!("/v1/chat/threads/{thread}"),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = get(
            &env,
            &query,
            &outsider,
            &format!("/v1/chat/threads/{thread}/messages"),
        )
        .await;
        assert_eq!(status, 404);
        // Asked to wait for a version, the outsider waits the whole read wait, as for a
        // thread that does not exist: an earlier 404 would say the thread is there and how
        // far it is (outside probe).
        for read in ["", "/messages"] {
            let started = std::time::Instant::now();
            let (status, _) = get(
                &env,
                &query,
                &outsider,
                &format!("/v1/chat/threads/{thread}{read}?min_version=1"),
            )
            .await;
            assert_eq!(status, 404);
            assert!(
                started.elapsed() >= Duration::from_millis(1_900),
                "answered after {:?}, before the read wait",
                started.elapsed()
            );
        }
        let (_, list) = get(&env, &query, &outsider, "/v1/chat/threads").await;
        assert_eq!(list["items"], json!([]));
        let refused = post(
            &env,
            &api,
            &outsider,
            &format!("/v1/chat/threads/{thread}/messages"),
            json!({"text": "let me in"}),
        )
        .await;
        expect_problem(refused, 404, "not_found").await;
    }
    let (status, _) = get(
        &env,
        &query,
        &env.agent_of(&tenant),
        &format!("/v1/chat/threads?tenant_id={other}"),
    )
    .await;
    assert_eq!(status, 403, "staff read their own tenant only");

    // Bad input: 4xx problem+json, nothing appended.
    let path = format!("/v1/chat/threads/{thread}");
    let cases = [
        (
            &customer,
            format!("{path}/messages"),
            json!({"text": "x".repeat(4097)}),
            422,
            "message_too_long",
        ),
        (
            &customer,
            format!("{path}/messages"),
            json!({"text": "  "}),
            422,
            "empty_message",
        ),
        (
            &customer,
            format!("{path}/messages"),
            json!({"text": "a", "attachment": {"object_key": "../x", "content_type": "image/png", "size_bytes": 1}}),
            422,
            "invalid_attachment",
        ),
        (
            &customer,
            format!("{path}/read"),
            json!({"number": 7}),
            422,
            "unknown_message_number",
        ),
        (
            &customer,
            format!("{path}/assign"),
            json!({"agent_id": "x"}),
            403,
            "forbidden",
        ),
        (
            &agent,
            format!("{path}/assign"),
            json!({"agent_id": "nobody"}),
            422,
            "unknown_agent",
        ),
        (
            &agent,
            format!("{path}/messages/no-such-message/edit"),
            json!({"text": "x"}),
            404,
            "message_not_found",
        ),
        (
            &agent,
            format!("{path}/scheduled"),
            json!({"text": "later", "due_at": "2020-01-01T00:00:00Z"}),
            422,
            "due_in_past",
        ),
        (
            &agent,
            format!("{path}/scheduled"),
            json!({"text": "later", "due_at": "2099-01-01T00:00:00Z", "client_message_id": " pad "}),
            422,
            "invalid_client_message_id",
        ),
        (
            &agent,
            format!("{path}/messages"),
            json!({"text": "now", "client_message_id": " pad "}),
            422,
            "invalid_client_message_id",
        ),
        (
            &agent,
            format!("{path}/scheduled/nope/deliver"),
            json!({}),
            403,
            "forbidden",
        ),
        (
            &agent,
            format!("{path}/messages"),
            json!({"text": "hi", "extra": 1}),
            400,
            "invalid_body",
        ),
        (
            &agent,
            "/v1/chat/threads/not-a-uuid/messages".to_owned(),
            json!({"text": "hi"}),
            404,
            "not_found",
        ),
    ];
    for (token, path, body, status, code) in cases {
        let response = post(&env, &api, token, &path, body).await;
        expect_problem(response, status, code).await;
    }
    // An agent may not edit the customer's message.
    let (_, history) = get(&env, &query, &agent, &format!("{path}/messages")).await;
    let message_id = history["items"][0]["message_id"]
        .as_str()
        .expect("message id");
    let refused = post(
        &env,
        &api,
        &agent,
        &format!("{path}/messages/{message_id}/edit"),
        json!({"text": "rewritten"}),
    )
    .await;
    expect_problem(refused, 403, "not_author").await;
    assert_eq!(env.event_count().await, before, "bad input appends nothing");

    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn staff_assign_tag_schedule_and_cancel_and_filters_follow() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "assigned").await;
    let admin = env.admin_of(&tenant);
    let added = post(
        &env,
        &api,
        &admin,
        &format!("/v1/tenants/{tenant}/departments"),
        json!({"name": "sales"}),
    )
    .await;
    assert_eq!(added.status(), 200);
    let made = post(
        &env,
        &api,
        &admin,
        "/v1/admin-users",
        json!({"email": "kim@assigned.example", "password": "a long enough password", "role": "agent"}),
    )
    .await;
    assert_eq!(made.status(), 201, "agent created");
    let kim = made.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (thread, _) = open_thread(&env, &api, &admin, json!({"tags": ["Lead"]})).await;
    let (_quiet, _) = open_thread(&env, &api, &admin, json!({})).await;

    // The department must be in the tenants read model before it can be named.
    eventually(Duration::from_secs(20), "the department", || async {
        let (_, t) = get(&env, &query, &admin, &format!("/v1/tenants/{tenant}")).await;
        (t["departments"] == json!(["sales"])).then_some(())
    })
    .await;
    let assigned = post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{thread}/assign"),
        json!({"agent_id": kim, "department": "sales"}),
    )
    .await;
    assert_eq!(assigned.status(), 200);
    let tagged = post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{thread}/tags"),
        json!({"tags": ["lead", "VIP"]}),
    )
    .await;
    assert_eq!(tagged.status(), 200);
    let due = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let scheduled = post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{thread}/scheduled"),
        json!({"text": "Following up", "due_at": due}),
    )
    .await;
    assert_eq!(scheduled.status(), 201);
    let scheduled: Value = scheduled.json().await.expect("json");
    let scheduled_id = scheduled["scheduled_id"].as_str().expect("id");
    let cancelled = post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{thread}/scheduled/{scheduled_id}/cancel"),
        json!({}),
    )
    .await;
    assert_eq!(cancelled.status(), 200);
    let version = cancelled.json::<Value>().await.expect("json")["version"]
        .as_u64()
        .expect("version");

    let (status, schedule) = get(
        &env,
        &query,
        &admin,
        &format!("/v1/chat/threads/{thread}/scheduled?min_version={version}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(schedule["items"][0]["status"], "cancelled");
    assert_eq!(schedule["items"][0]["text"], "Following up");

    let (_, mine) = get(
        &env,
        &query,
        &env.keys
            .admin_token(&kim, Some(&tenant), events::access::Role::Agent, 600),
        "/v1/chat/threads?assignee=me",
    )
    .await;
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, [thread.as_str()]);
    assert_eq!(mine["items"][0]["tags"], json!(["lead", "vip"]));
    assert_eq!(mine["items"][0]["department"], "sales");
    let (_, unassigned) = get(&env, &query, &admin, "/v1/chat/threads?assignee=none").await;
    assert_eq!(unassigned["items"].as_array().map(Vec::len), Some(1));
    let (status, _) = get(&env, &query, &admin, "/v1/chat/threads?status=archived").await;
    assert_eq!(status, 400);

    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn an_edit_after_fifteen_minutes_is_refused_and_appends_nothing() {
    let env = TestEnv::new().await;
    let clock = std::sync::Arc::new(events::clock::ManualClock::new(chrono::Utc::now()));
    let api = env
        .spawn_command_api_with_clock(env.command_config(), clock.clone())
        .await;
    let (tenant, _) = create_tenant(&env, &api, "edited").await;
    let customer = env.phone_user(&tenant, "phone-ed");
    let (thread, _) = open_thread(&env, &api, &customer, json!({})).await;
    let sent: Value = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{thread}/messages"),
        json!({"text": "typo"}),
    )
    .await
    .json()
    .await
    .expect("json");
    let edit = format!(
        "/v1/chat/threads/{thread}/messages/{}/edit",
        sent["message_id"].as_str().expect("message id")
    );
    clock.advance(chrono::Duration::minutes(15));
    let fixed = post(&env, &api, &customer, &edit, json!({"text": "fixed"})).await;
    assert_eq!(
        fixed.status(),
        200,
        "at 15 minutes the window is still open"
    );
    clock.advance(chrono::Duration::seconds(1));
    let before = env.event_count().await;
    let late = post(&env, &api, &customer, &edit, json!({"text": "too late"})).await;
    expect_problem(late, 422, "edit_window_closed").await;
    assert_eq!(env.event_count().await, before);
    api.stop().await;
}

#[tokio::test]
async fn a_rebuild_of_chat_gives_the_rows_of_the_live_projection() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "rebuilt-chat").await;
    let customer = env.phone_user(&tenant, "phone-rb");
    let agent = env.agent_of(&tenant);
    let mut last = 0;
    for round in 0..3 {
        let (thread, _) = open_thread(&env, &api, &customer, json!({})).await;
        let path = |p: &str| format!("/v1/chat/threads/{thread}{p}");
        post(&env, &api, &agent, &path("/tags"), json!({"tags": ["t"]})).await;
        let sent: Value = post(
            &env,
            &api,
            &customer,
            &path("/messages"),
            json!({"text": "a"}),
        )
        .await
        .json()
        .await
        .expect("json");
        let first = sent["message_id"].as_str().expect("id").to_owned();
        post(&env, &api, &agent, &path("/messages"), json!({"text": "b"})).await;
        post(
            &env,
            &api,
            &customer,
            &path(&format!("/messages/{first}/edit")),
            json!({"text": "a2"}),
        )
        .await;
        if round == 1 {
            post(
                &env,
                &api,
                &agent,
                &path(&format!("/messages/{first}/delete")),
                json!({}),
            )
            .await;
        }
        post(&env, &api, &customer, &path("/read"), json!({"number": 2})).await;
        let due = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
        post(
            &env,
            &api,
            &agent,
            &path("/scheduled"),
            json!({"text": "later", "due_at": due}),
        )
        .await;
        let closed = post(&env, &api, &agent, &path("/close"), json!({})).await;
        assert_eq!(closed.status(), 200);
        last += 1;
    }
    let snapshot = || async {
        sqlx::query_scalar::<_, Value>(
            "SELECT jsonb_build_object(
                'threads', (SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY id), '[]') FROM chat_threads t),
                'participants', (SELECT coalesce(jsonb_agg(to_jsonb(p) ORDER BY thread_id, user_id), '[]') FROM chat_participants p),
                'messages', (SELECT coalesce(jsonb_agg(to_jsonb(m) ORDER BY thread_id, number), '[]') FROM chat_messages m),
                'reads', (SELECT coalesce(jsonb_agg(to_jsonb(r) ORDER BY thread_id, reader_id), '[]') FROM chat_reads r),
                'scheduled', (SELECT coalesce(jsonb_agg(to_jsonb(s) ORDER BY thread_id, id), '[]') FROM chat_scheduled s))",
        )
        .fetch_one(&env.pool)
        .await
        .expect("rows")
    };
    let live = eventually(Duration::from_secs(20), "the live projection", || async {
        let rows = snapshot().await;
        let closed = rows["threads"]
            .as_array()
            .is_some_and(|t| t.len() == last && t.iter().all(|t| t["status"] == "closed"));
        closed.then_some(rows)
    })
    .await;
    assert_eq!(live["messages"].as_array().map(Vec::len), Some(6));
    projector.abort();
    let report =
        projector::rebuild::rebuild(&env.pool, &projector::chat::ChatProjection, &env.keyring())
            .await
            .expect("rebuild");
    assert_eq!(report.events, 3 * 8 + 1, "every thread event");
    assert_eq!(snapshot().await, live, "the same rows");
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_lost_answer_to_a_keyed_message_is_recovered_with_the_message_id() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "recovered").await;
    let customer = env.phone_user(&tenant, "phone-rec");
    let (thread, _) = open_thread(&env, &api, &customer, json!({})).await;
    let send = || {
        env.http
            .post(api.url(&format!("/v1/chat/threads/{thread}/messages")))
            .bearer_auth(&customer)
            .header("idempotency-key", "msg-1")
            .json(&json!({"text": "once"}))
            .send()
    };
    let first = send().await.expect("sent");
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.expect("json");
    // The process died after the commit: the answer was never recorded.
    sqlx::query(
        "UPDATE idempotency_keys SET status = NULL, headers = NULL, body = NULL,
                created_at = now() - interval '2 minutes' WHERE key = 'msg-1'",
    )
    .execute(&env.pool)
    .await
    .expect("lose the answer");
    let events = env.event_count().await;
    let retry = send().await.expect("sent");
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.json::<Value>().await.expect("json"), first);
    assert_eq!(env.event_count().await, events, "not sent twice");
    // A day later the key is a new key: another text under it is a new message, not the
    // old one's answer with the text dropped.
    sqlx::query(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'msg-1'",
    )
    .execute(&env.pool)
    .await
    .expect("aged");
    let later = env
        .http
        .post(api.url(&format!("/v1/chat/threads/{thread}/messages")))
        .bearer_auth(&customer)
        .header("idempotency-key", "msg-1")
        .json(&json!({"text": "the next day"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(later.status(), 201);
    assert!(later.headers().get("idempotent-replayed").is_none());
    let later: Value = later.json().await.expect("json");
    assert_ne!(later["message_id"], first["message_id"]);
    assert_eq!(
        env.event_count().await,
        events + 1,
        "the new message is stored"
    );
    api.stop().await;
}

#[tokio::test]
async fn deleted_messages_are_not_counted_unread() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "unread").await;
    let customer = env.phone_user(&tenant, "phone-unread");
    let agent = env.agent_of(&tenant);
    let (thread, _) = open_thread(&env, &api, &customer, json!({})).await;
    // The agent sends three messages and deletes two of them.
    let mut ids = Vec::new();
    for text in ["one", "two", "three"] {
        let sent: Value = post(
            &env,
            &api,
            &agent,
            &format!("/v1/chat/threads/{thread}/messages"),
            json!({ "text": text }),
        )
        .await
        .json()
        .await
        .expect("json");
        ids.push(sent["message_id"].as_str().expect("id").to_owned());
    }
    for id in &ids[..2] {
        let deleted = post(
            &env,
            &api,
            &agent,
            &format!("/v1/chat/threads/{thread}/messages/{id}/delete"),
            json!({}),
        )
        .await;
        assert_eq!(deleted.status(), 200);
    }
    let inbox = eventually(
        Duration::from_secs(20),
        "the deletions projected",
        || async {
            let (_, page) = get(&env, &query, &customer, "/v1/chat/threads").await;
            let thread = page["items"].as_array()?.first()?.clone();
            // Opened, three messages, two deletions.
            (thread["version"] == 6).then_some(thread)
        },
    )
    .await;
    assert_eq!(inbox["unread"], 1, "{inbox}");
    let (_, badge) = get(&env, &query, &customer, "/v1/chat/unread").await;
    assert_eq!(
        (badge["threads"].as_i64(), badge["messages"].as_i64()),
        (Some(1), Some(1))
    );
    let (_, detail) = get(
        &env,
        &query,
        &customer,
        &format!("/v1/chat/threads/{thread}"),
    )
    .await;
    assert_eq!(detail["participants"][0]["unread"], 1, "{detail}");
    // Read up to the one left: nothing unread, nothing listed as unread.
    let read = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{thread}/read"),
        json!({"number": 3}),
    )
    .await;
    assert_eq!(read.status(), 200);
    eventually(Duration::from_secs(20), "read", || async {
        let (_, page) = get(&env, &query, &customer, "/v1/chat/threads?unread=true").await;
        page["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    let (_, badge) = get(&env, &query, &customer, "/v1/chat/unread").await;
    assert_eq!(
        (badge["threads"].as_i64(), badge["messages"].as_i64()),
        (Some(0), Some(0))
    );
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_thread_that_moves_while_an_agent_pages_is_caught_up_after_the_pass() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "paging").await;
    let agent = env.agent_of(&tenant);
    let mut threads = Vec::new();
    for n in 0..3 {
        let customer = env.phone_user(&tenant, &format!("phone-page-{n}"));
        let (thread, _) = open_thread(&env, &api, &customer, json!({})).await;
        threads.push((thread, customer));
    }
    eventually(Duration::from_secs(20), "three threads", || async {
        let (_, page) = get(&env, &query, &agent, "/v1/chat/threads").await;
        (page["items"].as_array()?.len() == 3).then_some(())
    })
    .await;
    // The first page of a pass, one thread a page: the newest.
    let (_, first) = get(&env, &query, &agent, "/v1/chat/threads?limit=1").await;
    let as_of = first["as_of"].as_str().expect("as_of").to_owned();
    let cursor = first["next_cursor"].as_str().expect("cursor").to_owned();
    // Meanwhile the oldest thread, not yet seen, gets a message and moves to the top.
    let (oldest, customer) = &threads[0];
    let sent = post(
        &env,
        &api,
        customer,
        &format!("/v1/chat/threads/{oldest}/messages"),
        json!({"text": "still there?"}),
    )
    .await;
    assert_eq!(sent.status(), 201);
    eventually(Duration::from_secs(20), "the move projected", || async {
        let (_, page) = get(&env, &query, &agent, "/v1/chat/threads?limit=1").await;
        (page["items"][0]["id"] == oldest.as_str()).then_some(())
    })
    .await;
    let mut seen = vec![first["items"][0]["id"].as_str().expect("id").to_owned()];
    let mut next = Some(cursor);
    while let Some(cursor) = next {
        let (_, page) = get(
            &env,
            &query,
            &agent,
            &format!("/v1/chat/threads?limit=1&cursor={cursor}"),
        )
        .await;
        seen.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|t| t["id"].as_str().map(str::to_owned)),
        );
        next = page["next_cursor"].as_str().map(str::to_owned);
    }
    assert!(
        !seen.contains(oldest),
        "the pass skipped the thread that moved"
    );
    // The catch-up after the pass has it.
    let as_of = as_of.replace('+', "%2B");
    let (status, caught) = get(
        &env,
        &query,
        &agent,
        &format!("/v1/chat/threads?active_after={as_of}"),
    )
    .await;
    assert_eq!(status, 200, "{caught}");
    assert!(caught["items"]
        .as_array()
        .is_some_and(|t| t.iter().any(|t| t["id"] == oldest.as_str())));
    projector.abort();
    query.stop().await;
    api.stop().await;
}
