//! command-api over HTTP: commands append events with full metadata; bad input is a
//! problem+json 4xx that appends nothing; concurrency and retries lose nothing.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::support::{create_tenant, expect_problem, tenant_body, TestEnv};

#[tokio::test]
async fn commands_append_events_carrying_tenant_actor_and_correlation() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let signup = env
        .http
        .post(api.url("/v1/tenants/signup"))
        .header("x-correlation-id", "corr-42")
        // A caller's request id is not trusted as ours: it cannot collide with another's.
        .header("x-request-id", "client-chosen")
        .json(&tenant_body("acme"))
        .send()
        .await
        .expect("sent");
    assert_eq!(signup.status(), 201);
    let request_id = signup.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let body: Value = signup.json().await.expect("json");
    let id = body["id"].as_str().expect("id").to_owned();
    assert_eq!(body["version"], 1);

    let approve = env
        .http
        .post(api.url(&format!("/v1/tenants/{id}/approve")))
        .bearer_auth(env.super_admin())
        .send()
        .await
        .expect("sent");
    assert_eq!(approve.status(), 200);
    assert_eq!(approve.headers()["etag"], "\"2\"");
    let body: Value = approve.json().await.expect("json");
    assert_eq!(body, json!({"id": id, "version": 2}));

    let rows: Vec<(i64, String, Value)> =
        sqlx::query_as("SELECT sequence, event_type, metadata FROM events WHERE aggregate_id = $1 ORDER BY sequence")
            .bind(&id)
            .fetch_all(&env.pool)
            .await
            .expect("events");
    assert_eq!(rows.len(), 2);
    let (_, first_type, first) = &rows[0];
    assert_eq!(first_type, "SignupRequested");
    assert_eq!(first["tenant_id"], id.as_str());
    assert_eq!(first["actor_kind"], "anonymous");
    assert_eq!(first["correlation_id"], "corr-42");
    assert_eq!(first["request_id"], request_id.as_str());
    assert_ne!(request_id, "client-chosen");
    assert_eq!(first["causation_id"], request_id.as_str());
    let (_, second_type, second) = &rows[1];
    assert_eq!(second_type, "Approved");
    assert_eq!(second["actor_id"], "root-admin");
    assert_eq!(second["actor_kind"], "admin");
    api.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_problem_appends_nothing_and_the_service_keeps_serving() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (id, _) = create_tenant(&env, &api, "steady").await;
    let before = env.event_count().await;
    let admin = env.super_admin();
    let http = &env.http;
    let rename = api.url(&format!("/v1/tenants/{id}/rename"));

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body("{\"name\": "),
            400,
            "malformed_json",
        ),
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .json(&json!({"name": "Fine", "extra": 1})),
            400,
            "invalid_body",
        ),
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .json(&json!({"name": 42})),
            400,
            "invalid_body",
        ),
        (
            http.post(&rename).bearer_auth(&admin).json(&json!({})),
            400,
            "invalid_body",
        ),
        (
            http.post(&rename).bearer_auth(&admin).body("name=x"),
            415,
            "unsupported_media_type",
        ),
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .json(&json!({"name": "x".repeat(70 * 1024)})),
            413,
            "payload_too_large",
        ),
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .json(&json!({"name": "x"})),
            422,
            "invalid_name",
        ),
        (
            http.post(api.url("/v1/tenants"))
                .bearer_auth(&admin)
                .json(&tenant_body("Bad Slug")),
            422,
            "invalid_slug",
        ),
        (
            http.post(api.url("/v1/tenants"))
                .bearer_auth(&admin)
                .json(&tenant_body("steady")),
            409,
            "slug_taken",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{}/rename", uuid::Uuid::new_v4())))
                .bearer_auth(&admin)
                .json(&json!({"name": "Ghost"})),
            404,
            "not_found",
        ),
        (
            http.post(api.url("/v1/tenants/not-a-uuid/rename"))
                .bearer_auth(&admin)
                .json(&json!({"name": "Ghost"})),
            404,
            "not_found",
        ),
        (
            http.post(&rename).json(&json!({"name": "Anon"})),
            401,
            "unauthenticated",
        ),
        (
            http.post(&rename)
                .bearer_auth(env.keys.admin_token(
                    "u",
                    None,
                    events::access::Role::SuperAdmin,
                    -600,
                ))
                .json(&json!({"name": "Late"})),
            401,
            "token_expired",
        ),
        (
            http.post(&rename)
                .bearer_auth(events::access::TokenKeys::new("forged").admin_token(
                    "u",
                    None,
                    events::access::Role::SuperAdmin,
                    600,
                ))
                .json(&json!({"name": "Forged"})),
            401,
            "token_invalid",
        ),
        (
            http.post(&rename)
                .header("authorization", "Basic abc")
                .json(&json!({"name": "Basic"})),
            401,
            "token_invalid",
        ),
        (
            http.post(&rename)
                .bearer_auth(env.agent_of(&id))
                .json(&json!({"name": "Agent"})),
            403,
            "forbidden",
        ),
        (
            http.post(&rename)
                .bearer_auth(env.admin_of("another-tenant"))
                .json(&json!({"name": "Other"})),
            403,
            "forbidden",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{id}/approve")))
                .bearer_auth(env.admin_of(&id)),
            403,
            "forbidden",
        ),
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .header("if-match", "soon")
                .json(&json!({"name": "Versioned"})),
            400,
            "invalid_if_match",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{id}/approve")))
                .bearer_auth(&admin),
            422,
            "already_approved",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{id}/preferences")))
                .bearer_auth(&admin)
                .json(&json!([1])),
            422,
            "preferences_not_object",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{id}/preferences")))
                .bearer_auth(&admin)
                .json(&json!({"x": "y".repeat(17 * 1024)})),
            422,
            "preferences_too_large",
        ),
        (
            // Nested so deep that the stored event would be past what a reader decodes.
            http.post(api.url(&format!("/v1/tenants/{id}/preferences")))
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body(format!("{}1{}", r#"{"a":"#.repeat(125), "}".repeat(125))),
            422,
            "json_too_deep",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{id}/preferences")))
                .bearer_auth(&admin)
                .header("content-type", "application/json")
                .body(format!("{{\"a\":{}1{}}}", "[".repeat(32), "]".repeat(32))),
            422,
            "json_too_deep",
        ),
        (
            // A provider's body is held to the same bound before anything reads it.
            http.post(api.url("/api/webhooks/stripe"))
                .header("content-type", "application/json")
                .body(format!("{}1{}", "[".repeat(40), "]".repeat(40))),
            422,
            "json_too_deep",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{id}/suspend")))
                .bearer_auth(&admin)
                .json(&json!({"reason": "nul\u{0}byte"})),
            422,
            "invalid_reason",
        ),
        (
            http.post(api.url(&format!("/v1/tenants/{id}/preferences")))
                .bearer_auth(&admin)
                .json(&json!({"motto": "nul\u{0}byte"})),
            422,
            "preferences_invalid",
        ),
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .json(&json!({"name": "Nul\u{0}Name"})),
            422,
            "invalid_name",
        ),
        (
            http.post(&rename)
                .bearer_auth(&admin)
                .header("idempotency-key", "spaces are not allowed")
                .json(&json!({"name": "Keyed"})),
            400,
            "invalid_idempotency_key",
        ),
        (http.get(&rename), 405, "method_not_allowed"),
        (http.get(api.url("/v1/nowhere")), 404, "not_found"),
    ];
    for (request, status, code) in cases {
        let response = request.send().await.expect("sent");
        expect_problem(response, status, code).await;
    }
    assert_eq!(
        env.event_count().await,
        before,
        "bad input appended nothing"
    );
    let ready = http
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200, "still serving");
    api.stop().await;
}

#[tokio::test]
async fn if_match_with_a_stale_version_is_a_409_and_appends_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (id, version) = create_tenant(&env, &api, "versioned").await;
    let rename = api.url(&format!("/v1/tenants/{id}/rename"));
    let first = env
        .http
        .post(&rename)
        .bearer_auth(env.super_admin())
        .header("if-match", format!("\"{version}\""))
        .json(&json!({"name": "First Writer"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(first.status(), 200);
    let second = env
        .http
        .post(&rename)
        .bearer_auth(env.super_admin())
        .header("if-match", format!("\"{version}\""))
        .json(&json!({"name": "Second Writer"}))
        .send()
        .await
        .expect("sent");
    expect_problem(second, 409, "version_conflict").await;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT payload->'Renamed'->>'name' FROM events WHERE event_type = 'Renamed'",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(names, vec!["First Writer".to_owned()]);
    api.stop().await;
}

#[tokio::test]
async fn concurrent_writers_to_one_aggregate_lose_no_write() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (id, _) = create_tenant(&env, &api, "busy").await;
    let writers = 12;
    let requests = (0..writers).map(|i| {
        env.http
            .post(api.url(&format!("/v1/tenants/{id}/preferences")))
            .bearer_auth(env.super_admin())
            .json(&json!({"writer": i}))
            .send()
    });
    let responses = futures::future::join_all(requests).await;
    let mut versions = BTreeSet::new();
    for r in responses {
        let r = r.expect("sent");
        assert_eq!(r.status(), 200, "every writer succeeds (bounded retry)");
        let body: Value = r.json().await.expect("json");
        versions.insert(body["version"].as_u64().expect("version"));
    }
    assert_eq!(
        versions,
        (2..=writers + 1).collect(),
        "each write got its own version"
    );
    let writers_seen: BTreeSet<i64> =
        sqlx::query_scalar("SELECT (payload->'PreferencesUpdated'->'preferences'->>'writer')::bigint FROM events WHERE event_type = 'PreferencesUpdated'")
            .fetch_all(&env.pool)
            .await
            .expect("events")
            .into_iter()
            .collect();
    assert_eq!(writers_seen, (0..writers as i64).collect());
    api.stop().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer_and_appends_once() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let send = |body: Value, key: &str| {
        env.http
            .post(api.url("/v1/tenants"))
            .bearer_auth(env.super_admin())
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send(tenant_body("once"), "key-1").await.expect("sent");
    assert_eq!(first.status(), 201);
    let location = first.headers()["location"].clone();
    let first_body: Value = first.json().await.expect("json");
    let again = send(tenant_body("once"), "key-1").await.expect("sent");
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["location"], location);
    let again_body: Value = again.json().await.expect("json");
    assert_eq!(again_body, first_body);
    assert_eq!(env.event_count().await, 1, "appended once");

    let reused = send(tenant_body("other"), "key-1").await.expect("sent");
    expect_problem(reused, 422, "idempotency_key_reused").await;
    // The same key from another caller on the same route is another request.
    let other_admin =
        env.keys
            .admin_token("second-admin", None, events::access::Role::SuperAdmin, 600);
    let other_caller = env
        .http
        .post(api.url("/v1/tenants"))
        .bearer_auth(other_admin)
        .header("idempotency-key", "key-1")
        .json(&tenant_body("second"))
        .send()
        .await
        .expect("sent");
    assert_eq!(other_caller.status(), 201);
    assert!(other_caller.headers().get("idempotent-replayed").is_none());
    // A failed first attempt is replayed as the same failure: the answer, not the outcome
    // of a new try, is what the key stands for.
    let bad = send(tenant_body("B"), "key-2").await.expect("sent");
    expect_problem(bad, 422, "invalid_slug").await;
    let bad_again = send(tenant_body("B"), "key-2").await.expect("sent");
    assert_eq!(bad_again.headers()["idempotent-replayed"], "true");
    expect_problem(bad_again, 422, "invalid_slug").await;
    assert_eq!(env.event_count().await, 2);
    api.stop().await;
}

#[tokio::test]
async fn events_cannot_be_updated_or_deleted() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    create_tenant(&env, &api, "immutable").await;
    for sql in [
        "UPDATE events SET payload = '{}'",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(&env.pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(env.event_count().await, 1);
    api.stop().await;
}

#[tokio::test]
async fn logo_upload_stores_the_image_and_refuses_other_files() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (id, _) = create_tenant(&env, &api, "pictured").await;
    let url = api.url(&format!("/v1/tenants/{id}/logo"));
    let upload = |bytes: Vec<u8>| {
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name("logo"),
        );
        env.http
            .post(&url)
            .bearer_auth(env.admin_of(&id))
            .multipart(form)
            .send()
    };
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&[7; 100]);
    let ok = upload(png.clone()).await.expect("sent");
    assert_eq!(ok.status(), 200);
    let key: String = sqlx::query_scalar("SELECT payload->'LogoUploaded'->>'object_key' FROM events WHERE event_type = 'LogoUploaded'")
        .fetch_one(&env.pool)
        .await
        .expect("logo event");
    assert!(
        key.starts_with(&format!("tenants/{id}/logo/")) && key.ends_with(".png"),
        "{key}"
    );
    assert_eq!(std::fs::read(env.blob_dir.join(&key)).expect("stored"), png);

    expect_problem(
        upload(b"GIF89a-not-allowed".to_vec()).await.expect("sent"),
        415,
        "unsupported_image",
    )
    .await;
    let mut huge = b"\x89PNG\r\n\x1a\n".to_vec();
    huge.resize(2 * 1024 * 1024 + 1, 0);
    expect_problem(upload(huge).await.expect("sent"), 413, "payload_too_large").await;
    let not_multipart = env
        .http
        .post(&url)
        .bearer_auth(env.admin_of(&id))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    expect_problem(not_multipart, 415, "unsupported_media_type").await;
    assert_eq!(env.event_count().await, 2);
    api.stop().await;
}

#[tokio::test]
async fn long_streams_are_snapshotted_and_still_decide_correctly() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.snapshot_every = 3;
    let api = env.spawn_command_api(config).await;
    let (id, _) = create_tenant(&env, &api, "snapshotted").await;
    for i in 0..7 {
        let r = env
            .http
            .post(api.url(&format!("/v1/tenants/{id}/rename")))
            .bearer_auth(env.super_admin())
            .json(&json!({"name": format!("Name {i}")}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 200);
    }
    let (last_sequence, payload): (i64, Value) =
        sqlx::query_as("SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = $1")
            .bind(&id)
            .fetch_one(&env.pool)
            .await
            .expect("a snapshot exists");
    assert!(last_sequence >= 6, "snapshot at {last_sequence}");
    assert_eq!(payload["status"], "Active");
    // The snapshot-loaded aggregate still knows its name (a rename to it appends nothing)
    // and its status (suspending twice is refused).
    let same = env
        .http
        .post(api.url(&format!("/v1/tenants/{id}/rename")))
        .bearer_auth(env.super_admin())
        .json(&json!({"name": "Name 6"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(same.status(), 200);
    assert_eq!(env.event_count().await, 8);
    let suspend = |reason: &str| {
        env.http
            .post(api.url(&format!("/v1/tenants/{id}/suspend")))
            .bearer_auth(env.super_admin())
            .json(&json!({"reason": reason}))
            .send()
    };
    assert_eq!(suspend("unpaid").await.expect("sent").status(), 200);
    expect_problem(
        suspend("again").await.expect("sent"),
        422,
        "tenant_suspended",
    )
    .await;
    api.stop().await;
}

/// A tenant admin's preferences nested 125 objects deep once made an event no reader could
/// decode, and the relay stopped publishing for every tenant. Such bodies are refused now; an
/// event like it that is already stored is quarantined, every later event is still
/// published, and readiness says so.
#[tokio::test]
async fn a_stored_event_no_reader_can_decode_is_quarantined_and_readiness_reports_it() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    env.append_unreadable("tenant", "poisoned", "poisoned")
        .await;
    let (id, _) = create_tenant(&env, &api, "after-the-poison").await;
    let expected = format!("tenant:{id}:1");
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the next tenant's event to be published",
        || async {
            crate::relay::message_ids(&env)
                .await
                .contains(&expected)
                .then_some(())
        },
    )
    .await;
    assert!(!crate::relay::message_ids(&env)
        .await
        .iter()
        .any(|m| m.contains("poisoned")));
    let ready = env
        .http
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("sent");
    assert_eq!(ready.status(), 200, "one aggregate's trouble stops no one");
    let ready: Value = ready.json().await.expect("json");
    assert_eq!(ready["status"], "degraded");
    assert_eq!(ready["quarantined_events"], 1);
    sqlx::query("UPDATE quarantined_events SET acknowledged_at = now()")
        .execute(&env.pool)
        .await
        .expect("an operator acknowledges it");
    let ready: Value = env
        .http
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    api.stop().await;
}

/// A command on an aggregate whose stored event no reader can decode (as an earlier release
/// could store) is answered with a problem, not a dropped connection, and the service serves
/// on.
#[tokio::test]
async fn a_command_on_an_aggregate_with_an_unreadable_event_is_answered_not_dropped() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (id, _) = create_tenant(&env, &api, "unreadable").await;
    env.append_unreadable("tenant", &id, &id).await;
    // After a restart, nothing of the tenant is cached.
    api.stop().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let answer = env
        .http
        .post(api.url(&format!("/v1/tenants/{id}/rename")))
        .bearer_auth(env.super_admin())
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .expect("answered, not dropped");
    assert_eq!(answer.status(), 500);
    assert_eq!(answer.headers()["content-type"], "application/problem+json");
    create_tenant(&env, &api, "still-serving").await;
    // Its history still reads, the unreadable event shown as such.
    let query = env.spawn_query_api(env.query_config()).await;
    let history = env
        .get_json(
            &query.url(&format!("/v1/audit/tenant/{id}")),
            &env.super_admin(),
        )
        .await;
    assert_eq!(history["events"][0]["event_type"], "Created");
    assert!(history["events"][1]["payload"]["unreadable"].is_string());
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    assert_eq!(
        env.http
            .get(api.url("/health/live"))
            .send()
            .await
            .expect("sent")
            .status(),
        200
    );
    let ready: Value = env
        .http
        .get(api.url("/health/ready"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        ready,
        json!({"status": "ready", "postgres": "up", "nats": "up", "quarantined_events": 0})
    );
    create_tenant(&env, &api, "measured").await;
    let metrics = env
        .http
        .get(api.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(
            "http_requests_total{method=\"POST\",route=\"/v1/tenants\",status=\"201\"} 1"
        ),
        "{metrics}"
    );
    let doc: Value = env
        .http
        .get(api.url("/openapi.json"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    for path in [
        "/v1/tenants",
        "/v1/tenants/signup",
        "/v1/tenants/{id}/approve",
        "/v1/tenants/{id}/reject",
        "/v1/tenants/{id}/rename",
        "/v1/tenants/{id}/preferences",
        "/v1/tenants/{id}/suspend",
        "/v1/tenants/{id}/reactivate",
        "/v1/tenants/{id}/logo",
        "/health/live",
        "/health/ready",
        "/metrics",
    ] {
        assert!(
            doc["paths"][path]["post"].is_object() || doc["paths"][path]["get"].is_object(),
            "{path} documented"
        );
    }
    api.stop().await;
}

#[tokio::test]
async fn a_tenant_lives_through_signup_rejection_suspension_and_reactivation() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let admin = env.super_admin();
    let post = |path: String, body: Value| {
        env.http
            .post(api.url(&path))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };

    let rejected: Value = env
        .http
        .post(api.url("/v1/tenants/signup"))
        .json(&tenant_body("turned-down"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let rejected = rejected["id"].as_str().expect("id").to_owned();
    assert_eq!(
        post(
            format!("/v1/tenants/{rejected}/reject"),
            json!({"reason": "not a business"})
        )
        .await
        .expect("sent")
        .status(),
        200
    );
    expect_problem(
        post(format!("/v1/tenants/{rejected}/approve"), json!({}))
            .await
            .expect("sent"),
        422,
        "not_pending",
    )
    .await;
    expect_problem(
        post(
            format!("/v1/tenants/{rejected}/rename"),
            json!({"name": "Still Here"}),
        )
        .await
        .expect("sent"),
        422,
        "tenant_rejected",
    )
    .await;

    let (id, _) = create_tenant(&env, &api, "up-and-down").await;
    assert_eq!(
        post(
            format!("/v1/tenants/{id}/suspend"),
            json!({"reason": "unpaid"})
        )
        .await
        .expect("sent")
        .status(),
        200
    );
    expect_problem(
        post(
            format!("/v1/tenants/{id}/rename"),
            json!({"name": "Sneaky"}),
        )
        .await
        .expect("sent"),
        422,
        "tenant_suspended",
    )
    .await;
    expect_problem(
        post(format!("/v1/tenants/{id}/preferences"), json!({"a": 1}))
            .await
            .expect("sent"),
        422,
        "tenant_suspended",
    )
    .await;
    assert_eq!(
        post(format!("/v1/tenants/{id}/reactivate"), json!({}))
            .await
            .expect("sent")
            .status(),
        200
    );
    expect_problem(
        post(format!("/v1/tenants/{id}/reactivate"), json!({}))
            .await
            .expect("sent"),
        422,
        "not_suspended",
    )
    .await;
    let renamed = post(
        format!("/v1/tenants/{id}/rename"),
        json!({"name": "Back In Business"}),
    )
    .await
    .expect("sent");
    assert_eq!(renamed.status(), 200);
    assert_eq!(renamed.json::<Value>().await.expect("json")["version"], 4);

    let types: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence",
    )
    .bind(&id)
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(types, ["Created", "Suspended", "Reactivated", "Renamed"]);
    api.stop().await;
    env.assert_snapshots_crossed(events::tenants::AGGREGATE_TYPE)
        .await;
}

#[tokio::test]
async fn a_lost_answer_is_recovered_from_the_store_not_run_again() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let send = |key: &'static str| {
        env.http
            .post(api.url("/v1/tenants"))
            .bearer_auth(env.super_admin())
            .header("idempotency-key", key)
            .json(&tenant_body(key))
            .send()
    };
    for (key, lost) in [
        // The attempt answered 5xx after its commit: the claim was released.
        ("released", "released = true"),
        // The process died after its commit: the claim was left unanswered.
        ("abandoned", "created_at = now() - interval '2 minutes'"),
    ] {
        let first = send(key).await.expect("sent");
        assert_eq!(first.status(), 201);
        let first: Value = first.json().await.expect("json");
        sqlx::query(&format!("UPDATE idempotency_keys SET status = NULL, headers = NULL, body = NULL, {lost} WHERE key = $1"))
            .bind(key)
            .execute(&env.pool)
            .await
            .expect("lose the answer");
        let retry = send(key).await.expect("sent");
        assert_eq!(retry.status(), 201, "{key}");
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(
            retry.headers()["location"],
            format!("/v1/tenants/{}", first["id"].as_str().unwrap_or_default()).as_str()
        );
        assert_eq!(retry.json::<Value>().await.expect("json"), first, "{key}");
    }
    assert_eq!(env.event_count().await, 2, "each command appended once");
    api.stop().await;
}

#[tokio::test]
async fn a_retried_logo_upload_replays_although_its_multipart_boundary_changed() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (id, _) = create_tenant(&env, &api, "framed").await;
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&[9; 64]);
    let upload = || {
        // reqwest picks a fresh random boundary for every form.
        let form = reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(png.clone()).file_name("logo.png"),
        );
        env.http
            .post(api.url(&format!("/v1/tenants/{id}/logo")))
            .bearer_auth(env.admin_of(&id))
            .header("idempotency-key", "logo-1")
            .multipart(form)
            .send()
    };
    let first = upload().await.expect("sent");
    assert_eq!(first.status(), 200);
    let again = upload().await.expect("sent");
    assert_eq!(again.status(), 200);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(env.event_count().await, 2, "created, then one logo");
    api.stop().await;
}

#[tokio::test]
async fn a_keyed_create_without_an_id_opens_the_tenant_its_key_names() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let created = env
        .http
        .post(api.url("/v1/tenants"))
        .bearer_auth(env.super_admin())
        .header("idempotency-key", "open-acme")
        .json(&tenant_body("keyed"))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Every retry of this request (same caller, route and key, while the key lives) derives
    // the same id, so a retry after a failed first attempt opens this tenant, not a second
    // one whose slug the first attempt's reservation would block.
    let nonce: uuid::Uuid =
        sqlx::query_scalar("SELECT nonce FROM idempotency_keys WHERE key = 'open-acme'")
            .fetch_one(&env.pool)
            .await
            .expect("the key's nonce");
    let expected = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_OID,
        format!("root-admin /v1/tenants\u{0}open-acme\u{0}{nonce}").as_bytes(),
    );
    assert_eq!(id, expected.to_string());
    api.stop().await;
}

/// After its 24 hours a key is a new key, exactly as one never seen — before the hourly purge
/// has removed it and after: the same key opens a new tenant, with the new request's body.
#[tokio::test]
async fn an_expired_idempotency_key_is_a_new_key() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let create = |slug: &'static str| {
        env.http
            .post(api.url("/v1/tenants"))
            .bearer_auth(env.super_admin())
            .header("idempotency-key", "daily-tenant")
            .json(&tenant_body(slug))
            .send()
    };
    let id_of = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 201, "a new key opens a new tenant");
        assert!(r.headers().get("idempotent-replayed").is_none());
        r.json::<Value>().await.expect("json")["id"]
            .as_str()
            .expect("id")
            .to_owned()
    };
    let first = id_of(create("first-day").await.expect("sent")).await;
    // Within its lifetime, another body under the key is refused.
    expect_problem(
        create("second-day").await.expect("sent"),
        422,
        "idempotency_key_reused",
    )
    .await;
    // 25 hours later, before the purge ran.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&env.pool)
        .await
        .expect("aged");
    let second = id_of(create("second-day").await.expect("sent")).await;
    assert_ne!(second, first);
    // And after the purge ran.
    sqlx::query("DELETE FROM idempotency_keys")
        .execute(&env.pool)
        .await
        .expect("purged");
    let third = id_of(create("third-day").await.expect("sent")).await;
    assert_ne!(third, first);
    assert_ne!(third, second);
    // Within the new lifetime, the key replays its own answer.
    let replayed = create("third-day").await.expect("sent");
    assert_eq!(replayed.headers()["idempotent-replayed"], "true");
    api.stop().await;
}

#[tokio::test]
async fn one_resource_is_one_idempotency_scope_whatever_form_its_id_takes() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (id, _) = crate::support::create_tenant(&env, &api, "one-scope").await;
    let rename = |path_id: String| {
        env.http
            .post(api.url(&format!("/v1/tenants/{path_id}/rename")))
            .bearer_auth(env.super_admin())
            .header("idempotency-key", "rename-once")
            .json(&json!({"name": "Renamed once"}))
            .send()
    };
    let first = rename(id.clone()).await.expect("sent");
    assert_eq!(first.status(), 200);
    let before = env.event_count().await;
    let simple = uuid::Uuid::parse_str(&id)
        .expect("uuid")
        .simple()
        .to_string();
    let again = rename(simple.to_uppercase()).await.expect("sent");
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.headers()["idempotent-replayed"],
        "true",
        "the same key on the same tenant, its id written without hyphens"
    );
    assert_eq!(env.event_count().await, before, "nothing appended again");
    api.stop().await;
}

#[tokio::test]
async fn a_rejected_sign_up_releases_its_slug_and_sign_ups_are_throttled_per_address() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.tenants.signups_per_ip_per_hour = 3;
    let api = env.spawn_command_api(config).await;
    let signup = |slug: &str| {
        env.http
            .post(api.url("/v1/tenants/signup"))
            .json(&tenant_body(slug))
            .send()
    };
    // A squatter asks for a name it does not own.
    let squatted = signup("acme").await.expect("sent");
    assert_eq!(squatted.status(), 201);
    let squatted: Value = squatted.json().await.expect("json");
    expect_problem(signup("acme").await.expect("sent"), 409, "slug_taken").await;
    let reject = env
        .http
        .post(api.url(&format!(
            "/v1/tenants/{}/reject",
            squatted["id"].as_str().expect("id")
        )))
        .bearer_auth(env.super_admin())
        .json(&json!({"reason": "not theirs"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(reject.status(), 200);
    // Rejected, the name is free for its real owner.
    assert_eq!(signup("acme").await.expect("sent").status(), 201);
    // The fourth sign-up of the hour from one address is refused, whatever it asks for.
    let flood = signup("another-name").await.expect("sent");
    assert!(flood.headers().contains_key("retry-after"));
    expect_problem(flood, 429, "rate_limited").await;
    api.stop().await;
}

/// A caller whose token expired and a stranger at the same address each have keys of their
/// own on the sign-up route: the stranger's sign-up under a key does not make the other's
/// request under the same key an `idempotency_key_reused`; it gets its own answer.
#[tokio::test]
async fn a_stranger_and_a_caller_with_an_expired_token_do_not_share_keys() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let stranger = env
        .http
        .post(api.url("/v1/tenants/signup"))
        .header("idempotency-key", "signup-1")
        .json(&tenant_body("a-stranger"))
        .send()
        .await
        .expect("sent");
    assert_eq!(stranger.status(), 201);
    let expired = env
        .keys
        .admin_token("someone", None, events::access::Role::SuperAdmin, -600);
    let caller = env
        .http
        .post(api.url("/v1/tenants/signup"))
        .bearer_auth(&expired)
        .header("idempotency-key", "signup-1")
        .json(&tenant_body("expired-caller"))
        .send()
        .await
        .expect("sent");
    expect_problem(caller, 401, "token_expired").await;
    api.stop().await;
}

/// A super admin's new work goes to a tenant that exists and was approved: none is 404, one
/// awaiting approval 422 `tenant_pending`, one turned down 422 `tenant_rejected`; nothing is
/// appended for any of them.
#[tokio::test]
async fn a_super_admin_cannot_put_work_in_a_tenant_that_is_not_there_or_not_approved() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let signup = |slug: &'static str| {
        let (env, api) = (&env, &api);
        async move {
            let answer = env
                .http
                .post(api.url("/v1/tenants/signup"))
                .json(&tenant_body(slug))
                .send()
                .await
                .expect("sent");
            answer.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let pending = signup("still-pending").await;
    let rejected = signup("turned-away").await;
    let turned_down = env
        .http
        .post(api.url(&format!("/v1/tenants/{rejected}/reject")))
        .bearer_auth(env.super_admin())
        .json(&json!({"reason": "no"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(turned_down.status(), 200);
    let before = env.event_count().await;
    let nobody = uuid::Uuid::new_v4().to_string();
    for (tenant, status, code) in [
        (nobody.as_str(), 404, "not_found"),
        (pending.as_str(), 422, "tenant_pending"),
        (rejected.as_str(), 422, "tenant_rejected"),
    ] {
        let thread = env
            .http
            .post(api.url("/v1/chat/threads"))
            .bearer_auth(env.super_admin())
            .json(&json!({"tenant_id": tenant}))
            .send()
            .await
            .expect("sent");
        expect_problem(thread, status, code).await;
        let tax = env
            .http
            .put(api.url("/v1/catalog/taxes/vat"))
            .bearer_auth(env.super_admin())
            .json(&json!({"tenant_id": tenant, "name": "VAT", "rate_bp": 2000, "included": true}))
            .send()
            .await
            .expect("sent");
        expect_problem(tax, status, code).await;
    }
    assert_eq!(env.event_count().await, before, "nothing appended");
    api.stop().await;
}

/// Keyed commands sent together: each key opens one tenant, a duplicate sent at the same
/// moment is told the key is in progress or gets the first answer, and every key replays its
/// own answer afterwards.
#[tokio::test]
async fn keyed_commands_sent_together_each_keep_their_own_key_and_answer() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let send = |n: usize| {
        env.http
            .post(api.url("/v1/tenants"))
            .bearer_auth(env.super_admin())
            .header("idempotency-key", format!("together-{n}"))
            .json(&tenant_body(&format!("together{n}")))
            .send()
    };
    // Thirty keys, each sent twice at once.
    let first = futures::future::join_all((0..60).map(|i| send(i % 30))).await;
    let mut created = std::collections::BTreeMap::new();
    for (i, answer) in first.into_iter().enumerate() {
        let answer = answer.expect("sent");
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.expect("json");
        match status {
            201 => {
                let id = body["id"].as_str().expect("id").to_owned();
                let earlier = created.insert(i % 30, id.clone());
                assert!(
                    earlier.is_none_or(|e| e == id),
                    "a key answered with two tenants"
                );
            }
            409 => assert_eq!(body["code"], "idempotency_in_progress"),
            other => panic!("key {}: {other} {body}", i % 30),
        }
    }
    assert_eq!(env.event_count().await, 30, "one tenant per key");
    for n in 0..30 {
        let again = send(n).await.expect("sent");
        assert_eq!(again.status(), 201, "key {n}");
        assert_eq!(again.headers()["idempotent-replayed"], "true");
        let body: Value = again.json().await.expect("json");
        if let Some(id) = created.get(&n) {
            assert_eq!(body["id"], id.as_str(), "key {n} replays its own answer");
        }
    }
    api.stop().await;
}
