//! query-api: tenant list and detail from the read model, the audit trail from the store,
//! tenant isolation, read-your-writes.

use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{create_tenant, eventually, expect_problem, TestEnv};

#[tokio::test]
async fn list_pages_by_cursor_filters_by_status_and_searches_names() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let mut created = Vec::new();
    for i in 0..5 {
        created.push(create_tenant(&env, &api, &format!("listed-{i}")).await.0);
    }
    let pending = env
        .http
        .post(api.url("/v1/tenants/signup"))
        .json(&json!({"name": "Waiting Room", "slug": "waiting", "contact_email": "w@w.io"}))
        .send()
        .await
        .expect("sent");
    let pending: Value = pending.json().await.expect("json");
    let token = env.super_admin();
    eventually(Duration::from_secs(20), "six rows", || async {
        let page: Value = env
            .http
            .get(query.url("/v1/tenants?limit=200"))
            .bearer_auth(&token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (page["items"].as_array()?.len() == 6).then_some(())
    })
    .await;

    let mut seen = Vec::new();
    let mut url = query.url("/v1/tenants?limit=2");
    loop {
        let page: Value = env.get_json(&url, &token).await;
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|t| t["id"].as_str().expect("id").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => url = query.url(&format!("/v1/tenants?limit=2&cursor={cursor}")),
            None => break,
        }
    }
    let mut expected: Vec<String> = created.clone();
    expected.push(pending["id"].as_str().expect("id").to_owned());
    expected.reverse();
    assert_eq!(seen, expected, "newest first, every tenant once");

    let only_pending: Value = env
        .get_json(&query.url("/v1/tenants?status=pending"), &token)
        .await;
    assert_eq!(only_pending["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(only_pending["items"][0]["name"], "Waiting Room");
    let search: Value = env
        .get_json(&query.url("/v1/tenants?q=LISTED-3"), &token)
        .await;
    assert_eq!(search["items"].as_array().map(Vec::len), Some(1));
    let wildcard: Value = env.get_json(&query.url("/v1/tenants?q=%25"), &token).await;
    assert_eq!(
        wildcard["items"].as_array().map(Vec::len),
        Some(0),
        "% is searched literally"
    );

    for (url, code) in [
        ("/v1/tenants?limit=0", "invalid_query"),
        ("/v1/tenants?limit=many", "invalid_query"),
        ("/v1/tenants?status=sleeping", "invalid_query"),
        ("/v1/tenants?cursor=garbage", "invalid_cursor"),
        ("/v1/tenants?color=blue", "invalid_query"),
        ("/v1/tenants?q=%00", "invalid_query"),
    ] {
        expect_problem(
            env.http
                .get(query.url(url))
                .bearer_auth(&token)
                .send()
                .await
                .expect("sent"),
            400,
            code,
        )
        .await;
    }
    expect_problem(
        env.http
            .get(query.url("/v1/tenants"))
            .send()
            .await
            .expect("sent"),
        401,
        "unauthenticated",
    )
    .await;
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn tenants_staff_see_only_their_own_tenant() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    // Generous: the whole suite shares this machine's two cores.
    let mut config = env.query_config();
    config.read_wait_ms = 20_000;
    let query = env.spawn_query_api(config).await;
    let (mine, v) = create_tenant(&env, &api, "mine").await;
    let (theirs, _) = create_tenant(&env, &api, "theirs").await;
    let admin = env.admin_of(&mine);
    let detail = env
        .http
        .get(query.url(&format!("/v1/tenants/{mine}?min_version={v}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(detail.status(), 200);
    eventually(
        Duration::from_secs(20),
        "the other tenant's row",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT version FROM tenants WHERE id = $1::uuid")
                .bind(&theirs)
                .fetch_optional(&env.pool)
                .await
                .ok()?
        },
    )
    .await;
    let list: Value = env.get_json(&query.url("/v1/tenants"), &admin).await;
    let ids: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    let other = env
        .http
        .get(query.url(&format!("/v1/tenants/{theirs}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    expect_problem(other, 404, "not_found").await;
    let audit = env
        .http
        .get(query.url(&format!("/v1/audit/tenant/{theirs}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    expect_problem(audit, 404, "not_found").await;
    let agent_audit = env
        .http
        .get(query.url(&format!("/v1/audit/tenant/{mine}")))
        .bearer_auth(env.agent_of(&mine))
        .send()
        .await
        .expect("sent");
    expect_problem(agent_audit, 404, "not_found").await;
    let own_audit = env
        .http
        .get(query.url(&format!("/v1/audit/tenant/{mine}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("sent");
    assert_eq!(own_audit.status(), 200);
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn audit_shows_the_ordered_history_with_metadata() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (id, _) = create_tenant(&env, &api, "audited").await;
    for name in ["Second Name", "Third Name"] {
        let r = env
            .http
            .post(api.url(&format!("/v1/tenants/{id}/rename")))
            .bearer_auth(env.admin_of(&id))
            .header("x-correlation-id", "audit-trail")
            .json(&json!({"name": name}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 200);
    }
    let history: Value = env
        .get_json(
            &query.url(&format!("/v1/audit/tenant/{id}?limit=2")),
            &env.super_admin(),
        )
        .await;
    assert_eq!(history["tenant_id"], id.as_str());
    let events = history["events"].as_array().expect("events");
    assert_eq!(
        events
            .iter()
            .map(|e| e["sequence"].clone())
            .collect::<Vec<_>>(),
        vec![json!(1), json!(2)]
    );
    assert_eq!(events[0]["event_type"], "Created");
    assert_eq!(
        events[1]["payload"],
        json!({"Renamed": {"name": "Second Name"}})
    );
    assert_eq!(events[1]["metadata"]["actor_id"], format!("admin-of-{id}"));
    assert_eq!(events[1]["metadata"]["correlation_id"], "audit-trail");
    assert_eq!(history["next_after"], 2);
    let rest: Value = env
        .get_json(
            &query.url(&format!("/v1/audit/tenant/{id}?after=2")),
            &env.super_admin(),
        )
        .await;
    assert_eq!(rest["events"][0]["sequence"], 3);
    assert_eq!(rest["next_after"], Value::Null);
    let none = env
        .http
        .get(query.url("/v1/audit/tenant/nobody"))
        .bearer_auth(env.super_admin())
        .send()
        .await
        .expect("sent");
    expect_problem(none, 404, "not_found").await;
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_read_waits_for_the_requested_version_and_says_when_it_is_stale() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let mut config = env.query_config();
    config.read_wait_ms = 300;
    let query = env.spawn_query_api(config).await;
    let (id, version) = create_tenant(&env, &api, "patient").await;
    let token = env.super_admin();
    // No projector yet: the read waits its bound and answers 404, flagged stale.
    let stale = env
        .http
        .get(query.url(&format!("/v1/tenants/{id}")))
        .bearer_auth(&token)
        .header("x-min-version", version.to_string())
        .send()
        .await
        .expect("sent");
    assert_eq!(stale.status(), 404);
    assert_eq!(stale.headers()["x-read-stale"], "true");
    // With the projector started while the read waits, the read answers fresh.
    let starter = env.spawn_projector(env.projector_config());
    let mut config = env.query_config();
    config.read_wait_ms = 15_000;
    let patient = env.spawn_query_api(config).await;
    let fresh = env
        .http
        .get(patient.url(&format!("/v1/tenants/{id}?min_version={version}")))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(fresh.status(), 200);
    assert!(fresh.headers().get("x-read-stale").is_none());
    assert_eq!(
        fresh.headers()["x-read-version"],
        version.to_string().as_str()
    );
    let body: Value = fresh.json().await.expect("json");
    assert_eq!(body["slug"], "patient");
    // Asking for a version that will never come answers the current row, flagged stale.
    let ahead = env
        .http
        .get(query.url(&format!("/v1/tenants/{id}?min_version={}", version + 5)))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(ahead.status(), 200);
    assert_eq!(ahead.headers()["x-read-stale"], "true");
    let bad = env
        .http
        .get(query.url(&format!("/v1/tenants/{id}")))
        .bearer_auth(&token)
        .header("x-min-version", "latest")
        .send()
        .await
        .expect("sent");
    expect_problem(bad, 400, "invalid_min_version").await;
    starter.abort();
    patient.stop().await;
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn query_api_serves_health_metrics_and_openapi() {
    let env = TestEnv::new().await;
    let query = env.spawn_query_api(env.query_config()).await;
    let ready: Value = env
        .http
        .get(query.url("/health/ready"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["status"], "ready");
    let doc: Value = env
        .http
        .get(query.url("/openapi.json"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    for path in [
        "/v1/tenants",
        "/v1/tenants/{id}",
        "/v1/audit/{aggregate_type}/{aggregate_id}",
        "/health/live",
        "/health/ready",
        "/metrics",
    ] {
        assert!(doc["paths"][path]["get"].is_object(), "{path} documented");
    }
    let metrics = env
        .http
        .get(query.url("/metrics"))
        .send()
        .await
        .expect("sent")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("route=\"/health/ready\""), "{metrics}");
    query.stop().await;
}

#[test]
fn help_lists_every_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_query-api"))
        .arg("--help")
        .output()
        .expect("runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for setting in [
        "DATABASE_URL",
        "NEON_PG_CONN",
        "DB_MAX_CONNECTIONS",
        "NEST_AUTH_SECRET",
        "NEXTAUTH_SECRET",
        "HOST",
        "QUERY_PORT",
        "READ_WAIT_MS",
        "DEV_INBOX_ENABLED",
        "ALLOW_DEV_SECRETS",
        "STREAMS_PER_USER",
    ] {
        assert!(
            help.contains(&format!("[env: {setting}")),
            "{setting} missing from:\n{help}"
        );
    }
}

#[tokio::test]
async fn the_audit_of_a_stream_that_changed_tenant_shows_each_tenant_its_own_events_and_no_secrets()
{
    let env = TestEnv::new().await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (first, second) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    // One WhatsApp number: connected by the first tenant, disconnected, then connected by
    // the second, with the same session id.
    let connected = |tenant: &str, sealed: &str| {
        json!({"Connected": {
            "tenant_id": tenant, "transport": "Cloud", "phone_number_id": "1065",
            "business_account_id": null, "display_phone_number": null, "verified_name": null,
            "credentials": sealed, "verify_token_sha256": "9f86d081884c7d65",
            "at": "2026-12-06T10:00:00Z"}})
    };
    for (sequence, event_type, payload, tenant) in [
        (
            1,
            "Connected",
            connected(&first, "v1.first-tenants-sealed"),
            &first,
        ),
        (
            2,
            "Disconnected",
            json!({"Disconnected": {"at": "2026-12-06T11:00:00Z"}}),
            &first,
        ),
        (
            3,
            "Connected",
            connected(&second, "v1.second-tenants-sealed"),
            &second,
        ),
    ] {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('whatsapp_session', 'session-1065', $1, $2, '1.0', $3, jsonb_build_object('tenant_id', $4::text))",
        )
        .bind(sequence)
        .bind(event_type)
        .bind(payload)
        .bind(tenant)
        .execute(&env.pool)
        .await
        .expect("append");
    }
    let url = query.url("/v1/audit/whatsapp_session/session-1065");
    let sequences = |audit: &Value| -> Vec<i64> {
        audit["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter_map(|e| e["sequence"].as_i64())
            .collect()
    };
    let mine = env.get_json(&url, &env.admin_of(&first)).await;
    assert_eq!(
        sequences(&mine),
        vec![1, 2],
        "the first tenant's own events only"
    );
    assert_eq!(mine["tenant_id"], json!(first));
    let theirs = env.get_json(&url, &env.admin_of(&second)).await;
    assert_eq!(
        sequences(&theirs),
        vec![3],
        "the second tenant's own events only"
    );
    assert_eq!(theirs["tenant_id"], json!(second));
    let all = env.get_json(&url, &env.super_admin()).await;
    assert_eq!(sequences(&all), vec![1, 2, 3]);
    let text = all.to_string();
    assert!(
        !text.contains("sealed") && !text.contains("9f86d081884c7d65"),
        "no sealed credentials or verify-token digest in the audit: {text}"
    );
    assert_eq!(
        all["events"][2]["payload"]["Connected"]["credentials"],
        events::sealed::REDACTED
    );
    for token in [
        env.agent_of(&first),
        env.admin_of(&Uuid::new_v4().to_string()),
    ] {
        expect_problem(
            env.http
                .get(&url)
                .bearer_auth(token)
                .send()
                .await
                .expect("sent"),
            404,
            "not_found",
        )
        .await;
    }
    query.stop().await;
}

#[tokio::test]
async fn a_nul_in_any_query_parameter_is_a_bad_request_not_a_database_error() {
    let env = TestEnv::new().await;
    let query = env.spawn_query_api(env.query_config()).await;
    let tenant = Uuid::new_v4().to_string();
    for path in [
        format!("/v1/webhooks?payment_id=a%00b&tenant_id={tenant}"),
        format!("/v1/chat/threads?tenant_id={tenant}&department=Sales%00"),
        format!("/v1/chat/threads?tenant_id={tenant}&assignee=%00"),
        "/v1/tenants?q=x%00y".to_owned(),
    ] {
        expect_problem(
            env.http
                .get(query.url(&path))
                .bearer_auth(env.super_admin())
                .send()
                .await
                .expect("sent"),
            400,
            "invalid_query",
        )
        .await;
    }
    query.stop().await;
}

#[test]
fn query_api_refuses_a_published_or_short_secret_outside_development() {
    let start = |secret: &str, dev: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_query-api"))
            .env_clear()
            .env(
                "DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none?connect_timeout=1&sslmode=nonsense",
            )
            .env("NEST_AUTH_SECRET", secret)
            .env("ALLOW_DEV_SECRETS", dev)
            .output()
            .expect("runs");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let refused = start("dev-secret-change-me", "false");
    assert!(
        refused.contains("NEST_AUTH_SECRET (or NEXTAUTH_SECRET) is a published default"),
        "{refused}"
    );
    assert!(start("short", "false").contains("shorter than 32 characters"));
    // A strong secret but an open bus: refused too.
    let open_bus = start("k3Jx9vQ2mW8pL5tR7yB1nC4hF6dS0aZe", "false");
    assert!(open_bus.contains("NATS_URL names no user"), "{open_bus}");
    // Allowed on a development machine: it gets as far as the (unreachable) database.
    let allowed = start("dev-secret-change-me", "true");
    assert!(!allowed.contains("published default"), "{allowed}");
}

#[tokio::test]
async fn an_unchanged_answer_is_not_sent_again_and_a_changed_one_is() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let (id, version) = create_tenant(&env, &api, "tagged").await;
    let token = env.super_admin();
    let get = |path: String, tag: Option<String>| {
        let mut request = env.http.get(query.url(&path)).bearer_auth(&token);
        if let Some(tag) = tag {
            request = request.header("if-none-match", tag);
        }
        request.send()
    };
    let detail = format!("/v1/tenants/{id}?min_version={version}");
    let first = get(detail.clone(), None).await.expect("sent");
    assert_eq!(first.status(), 200);
    let tag = first.headers()["etag"].to_str().expect("ascii").to_owned();
    assert!(
        tag.starts_with('"') && tag.ends_with('"'),
        "a strong tag: {tag}"
    );
    assert_eq!(first.headers()["vary"], "authorization");
    let again = get(detail.clone(), Some(tag.clone())).await.expect("sent");
    assert_eq!(again.status(), 304);
    assert_eq!(again.headers()["etag"], tag.as_str());
    assert!(again.bytes().await.expect("body").is_empty());
    let listed = get("/v1/tenants".into(), Some(format!("\"nope\", W/{tag}")))
        .await
        .expect("sent");
    assert_eq!(
        listed.status(),
        200,
        "the list is another answer, with its own tag"
    );
    let list_tag = listed.headers()["etag"].to_str().expect("ascii").to_owned();
    let list_again = get("/v1/tenants".into(), Some(list_tag))
        .await
        .expect("sent");
    assert_eq!(list_again.status(), 304);
    // The tenant changes: the old tag no longer matches, and the new answer says so.
    let rename = env
        .http
        .post(api.url(&format!("/v1/tenants/{id}/rename")))
        .bearer_auth(&token)
        .json(&json!({"name": "Tagged again"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(rename.status(), 200);
    let changed = get(
        format!("/v1/tenants/{id}?min_version={}", version + 1),
        Some(tag.clone()),
    )
    .await
    .expect("sent");
    assert_eq!(changed.status(), 200);
    assert_ne!(changed.headers()["etag"], tag.as_str());
    assert_eq!(
        changed.json::<Value>().await.expect("json")["name"],
        "Tagged again"
    );
    let missing = get(format!("/v1/tenants/{}", Uuid::new_v4()), Some("*".into()))
        .await
        .expect("sent");
    assert_eq!(missing.status(), 404, "a refusal is never a 304");
    assert!(missing.headers().get("etag").is_none());
    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// JSON that PostgreSQL builds writes an instant with the same bytes as chrono does
/// (migration 0052), whatever the session's time zone and however many fraction digits.
#[tokio::test]
async fn api_time_writes_an_instant_as_chrono_does() {
    let env = TestEnv::new().await;
    let mut conn = env.pool.acquire().await.expect("connection");
    sqlx::query("SET TIME ZONE 'America/St_Johns'")
        .execute(&mut *conn)
        .await
        .expect("time zone");
    let base = chrono::DateTime::parse_from_rfc3339("2026-12-07T23:59:59Z")
        .expect("instant")
        .with_timezone(&chrono::Utc);
    let fractions = [
        0, 100_000, 120_000, 123_000, 1_000, 456, 999_999, 100, 500_000,
    ];
    for micros in fractions {
        for days in [0, 1, 60, -700_000, 2_900_000] {
            let at = base + chrono::Duration::days(days) + chrono::Duration::microseconds(micros);
            let written: String = sqlx::query_scalar("SELECT api_time($1)")
                .bind(at)
                .fetch_one(&mut *conn)
                .await
                .expect("api_time");
            assert_eq!(
                serde_json::to_value(at).expect("json"),
                serde_json::Value::from(written),
                "{at:?}"
            );
        }
    }
}
