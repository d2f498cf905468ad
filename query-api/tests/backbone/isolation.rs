//! The isolation matrix: for every endpoint of both APIs that takes a tenant-owned id, the
//! staff of another tenant get 403 or 404 and none of the data. One line per endpoint: a new
//! endpoint that takes a tenant-owned id adds its line here.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{create_tenant, eventually, TestEnv};

/// Which API an endpoint belongs to.
#[derive(Clone, Copy, Debug)]
enum Api {
    Command,
    Query,
}

/// `{tenant}` is the other tenant's id, `{user}` an admin user of the other tenant,
/// `{thread}` one of its chat threads, `{message}` a message and `{scheduled}` a scheduled
/// message in it, `{payment}` one of its payments, `{wa_session}` its WhatsApp session.
const MATRIX: &[(Api, &str, &str, Option<&str>)] = &[
    (
        Api::Command,
        "POST",
        "/v1/tenants/{tenant}/rename",
        Some(r#"{"name": "Taken Over"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/tenants/{tenant}/preferences",
        Some(r#"{"stolen": true}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/tenants/{tenant}/suspend",
        Some(r#"{"reason": "spite"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/tenants/{tenant}/reactivate",
        None,
    ),
    (Api::Command, "POST", "/v1/tenants/{tenant}/approve", None),
    (
        Api::Command,
        "POST",
        "/v1/tenants/{tenant}/reject",
        Some(r#"{"reason": "spite"}"#),
    ),
    (Api::Command, "POST", "/v1/tenants/{tenant}/logo", None),
    (
        Api::Command,
        "POST",
        "/v1/tenants/{tenant}/departments",
        Some(r#"{"name": "Intruders"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/tenants/{tenant}/departments/remove",
        Some(r#"{"name": "Sales"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/admin-users/{user}/password-reset",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/admin-users/{user}/role",
        Some(r#"{"role": "agent"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/admin-users/{user}/department",
        Some(r#"{"department": "Nowhere"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/admin-users/{user}/deactivate",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/admin-users/{user}/reactivate",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/messages",
        Some(r#"{"text": "hi"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/messages/{message}/edit",
        Some(r#"{"text": "x"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/messages/{message}/delete",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/read",
        Some(r#"{"number": 1}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/assign",
        Some(r#"{"agent_id": null}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/bot",
        Some(r#"{"enabled": false}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/close",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/reopen",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/tags",
        Some(r#"{"tags": ["x"]}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/participants",
        Some(r#"{"user_id": "u", "kind": "agent"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/scheduled",
        Some(r#"{"text": "x", "due_at": "2099-01-01T00:00:00Z"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/scheduled/{scheduled}/reschedule",
        Some(r#"{"due_at": "2099-01-01T00:00:00Z"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/scheduled/{scheduled}/cancel",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads/{thread}/scheduled/{scheduled}/deliver",
        None,
    ),
    (
        Api::Command,
        "POST",
        "/v1/chat/threads",
        Some(r#"{"tenant_id": "{tenant}"}"#),
    ),
    (Api::Query, "GET", "/v1/chat/threads/{thread}", None),
    (
        Api::Query,
        "GET",
        "/v1/chat/threads/{thread}/messages",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/chat/threads/{thread}/scheduled",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/chat/threads?tenant_id={tenant}",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/chat/unread?tenant_id={tenant}",
        None,
    ),
    (
        Api::Query,
        "POST",
        "/realtime/auth",
        Some(r#"{"socket_id": "1.1", "channel_name": "private-thread-{thread}"}"#),
    ),
    (
        Api::Query,
        "POST",
        "/realtime/auth",
        Some(r#"{"socket_id": "1.1", "channel_name": "presence-tenant-{tenant}"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/payments",
        Some(
            r#"{"tenant_id": "{tenant}", "provider": "stripe", "currency": "EUR", "lines": [{"product_id": "secret-product", "quantity": 1}], "customer_reference": "c"}"#,
        ),
    ),
    (Api::Command, "POST", "/v1/payments/{payment}/link", None),
    (
        Api::Command,
        "POST",
        "/v1/payments/{payment}/cancel",
        Some(r#"{"reason": "spite"}"#),
    ),
    (
        Api::Command,
        "PUT",
        "/v1/catalog/taxes/vat",
        Some(r#"{"tenant_id": "{tenant}", "name": "Zero", "rate_bp": 0, "included": true}"#),
    ),
    (
        Api::Command,
        "PUT",
        "/v1/catalog/products/secret-product",
        Some(r#"{"tenant_id": "{tenant}", "name": "Free", "unit_price": 0, "currency": "EUR"}"#),
    ),
    (
        Api::Command,
        "PUT",
        "/v1/telephony/numbers/+15557650099",
        Some(r#"{"tenant_id": "{tenant}"}"#),
    ),
    (
        Api::Command,
        "POST",
        "/v1/telephony/numbers/+15557650099/release",
        Some("{}"),
    ),
    (
        Api::Command,
        "POST",
        "/v1/whatsapp/sessions/{wa_session}/disconnect",
        Some("{}"),
    ),
    (
        Api::Command,
        "POST",
        "/v1/whatsapp/sessions/{wa_session}/messages",
        Some(
            r#"{"to": "+16505551234", "message": {"type": "template", "name": "hello", "language": "en_US"}}"#,
        ),
    ),
    (
        Api::Query,
        "GET",
        "/v1/whatsapp/sessions/{wa_session}",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/whatsapp/sessions/{wa_session}/messages",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/whatsapp/sessions/{wa_session}/analytics",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/whatsapp/sessions?tenant_id={tenant}",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/whatsapp/contacts?tenant_id={tenant}",
        None,
    ),
    (Api::Query, "GET", "/v1/payments/{payment}", None),
    (Api::Query, "GET", "/v1/payments/{payment}/timeline", None),
    (Api::Query, "GET", "/v1/payments?tenant_id={tenant}", None),
    (
        Api::Query,
        "GET",
        "/v1/payments/reports/revenue?tenant_id={tenant}",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/catalog/products?tenant_id={tenant}",
        None,
    ),
    (
        Api::Query,
        "GET",
        "/v1/catalog/taxes?tenant_id={tenant}",
        None,
    ),
    (Api::Query, "GET", "/v1/webhooks?tenant_id={tenant}", None),
    (Api::Query, "GET", "/v1/audit/payment/{payment}", None),
    (Api::Query, "GET", "/v1/tenants/{tenant}", None),
    (Api::Query, "GET", "/v1/audit/tenant/{tenant}", None),
    (Api::Query, "GET", "/v1/audit/admin_user/{user}", None),
    (Api::Query, "GET", "/v1/admin-users/{user}/logins", None),
    (
        Api::Query,
        "GET",
        "/v1/admin-users?tenant_id={tenant}",
        None,
    ),
];

#[tokio::test]
async fn another_tenants_staff_get_nothing_from_any_endpoint() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (mine, _) = create_tenant(&env, &api, "our-side").await;
    let (theirs, _) = create_tenant(&env, &api, "their-side").await;
    let created = env
        .http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(env.super_admin())
        .json(&json!({"email": "secret-keeper@their-side.io", "password": "a long enough password", "tenant_id": theirs, "role": "agent"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let user = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A thread of theirs, with a message and a scheduled message.
    let customer = env.phone_user(&theirs, "their-customer");
    let post = |token: String, path: String, body: Value| {
        let request = env.http.post(api.url(&path)).bearer_auth(token).json(&body);
        async move {
            let response = request.send().await.expect("sent");
            assert!(response.status().is_success(), "{path}");
            response.json::<Value>().await.expect("json")
        }
    };
    let thread = post(
        customer.clone(),
        "/v1/chat/threads".into(),
        json!({"subject": "their-side secret"}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let message = post(
        customer,
        format!("/v1/chat/threads/{thread}/messages"),
        json!({"text": "secret-keeper knows"}),
    )
    .await["message_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let scheduled = post(
        env.admin_of(&theirs),
        format!("/v1/chat/threads/{thread}/scheduled"),
        json!({"text": "later", "due_at": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339()}),
    )
    .await;
    assert_eq!(
        scheduled["scheduled_id"].as_str().map(str::len),
        Some(36),
        "{scheduled}"
    );
    let scheduled = scheduled["scheduled_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // A product, a payment and a phone number of theirs.
    let their_admin = env.admin_of(&theirs);
    let number = env
        .http
        .put(api.url("/v1/telephony/numbers/+15557650099"))
        .bearer_auth(&their_admin)
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(number.status(), 200);
    for (path, body) in [
        (
            "/v1/catalog/taxes/vat",
            json!({"name": "VAT", "rate_bp": 2000, "included": true}),
        ),
        (
            "/v1/catalog/products/secret-product",
            json!({"name": "Secret", "unit_price": 990, "currency": "EUR", "tax_id": "vat"}),
        ),
    ] {
        let saved = env
            .http
            .put(api.url(path))
            .bearer_auth(&their_admin)
            .json(&body)
            .send()
            .await
            .expect("sent");
        assert_eq!(saved.status(), 200, "{path}");
    }
    let payment = post(
        their_admin.clone(),
        "/v1/payments".into(),
        json!({"provider": "stripe", "currency": "EUR", "lines": [{"product_id": "secret-product", "quantity": 1}], "customer_reference": "secret-keeper's customer"}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // A WhatsApp number of theirs (served by their bridge).
    let wa_session = post(
        their_admin.clone(),
        "/v1/whatsapp/sessions/bridge".into(),
        json!({"phone_number": "+15550783881", "bridge_secret": "their-bridge-secret-of-32-characters-or-more"}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Their data is in the read models before we start probing.
    eventually(Duration::from_secs(20), "their rows projected", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM admin_users)
                  + (SELECT count(*) FROM chat_messages) + (SELECT count(*) FROM chat_scheduled)
                  + (SELECT count(*) FROM payments) + (SELECT count(*) FROM catalog_products)
                  + (SELECT count(*) FROM whatsapp_sessions)",
        )
        .fetch_one(&env.pool)
        .await
        .ok()?;
        (n == 8).then_some(())
    })
    .await;
    let before = env.event_count().await;
    let secrets = [
        theirs.as_str(),
        user.as_str(),
        "their-side",
        "secret-keeper",
        thread.as_str(),
        message.as_str(),
        payment.as_str(),
        "secret-product",
        wa_session.as_str(),
        "15550783881",
    ];

    for token in [env.admin_of(&mine), env.agent_of(&mine)] {
        for (service, method, path, body) in MATRIX {
            let path = path
                .replace("{tenant}", &theirs)
                .replace("{user}", &user)
                .replace("{thread}", &thread)
                .replace("{message}", &message)
                .replace("{scheduled}", &scheduled)
                .replace("{payment}", &payment)
                .replace("{wa_session}", &wa_session);
            let url = match service {
                Api::Command => api.url(&path),
                Api::Query => query.url(&path),
            };
            let mut request = env
                .http
                .request(method.parse().expect("method"), &url)
                .bearer_auth(&token);
            if let Some(body) = body {
                let body = body
                    .replace("{tenant}", &theirs)
                    .replace("{thread}", &thread);
                request = request
                    .header("content-type", "application/json")
                    .body(body);
            }
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            let text = response.text().await.expect("body");
            assert!(
                status == 403 || status == 404,
                "{service:?} {method} {path}: {status} {text}"
            );
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "{service:?} {method} {path} leaked {secret}: {text}"
                );
            }
        }
        // Lists answer only the caller's own tenant.
        for list in [
            "/v1/tenants",
            "/v1/admin-users",
            "/v1/chat/threads",
            "/v1/chat/unread",
            "/v1/payments",
            "/v1/payments/reports/revenue",
            "/v1/catalog/products",
            "/v1/webhooks",
            "/v1/whatsapp/sessions",
            "/v1/whatsapp/contacts",
        ] {
            let text = env
                .http
                .get(query.url(list))
                .bearer_auth(&token)
                .send()
                .await
                .expect("sent")
                .text()
                .await
                .expect("body");
            for secret in secrets {
                assert!(!text.contains(secret), "{list} leaked {secret}: {text}");
            }
        }
    }
    assert_eq!(env.event_count().await, before, "nothing was appended");
    projector.abort();
    query.stop().await;
    api.stop().await;
}
