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

/// `{tenant}` is the other tenant's id, `{user}` an admin user of the other tenant.
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
    // Their data is in the read models before we start probing.
    eventually(Duration::from_secs(20), "their rows projected", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM tenants) + (SELECT count(*) FROM admin_users)",
        )
        .fetch_one(&env.pool)
        .await
        .ok()?;
        (n == 3).then_some(())
    })
    .await;
    let before = env.event_count().await;
    let secrets = [
        theirs.as_str(),
        user.as_str(),
        "their-side",
        "secret-keeper",
    ];

    for token in [env.admin_of(&mine), env.agent_of(&mine)] {
        for (service, method, path, body) in MATRIX {
            let path = path.replace("{tenant}", &theirs).replace("{user}", &user);
            let url = match service {
                Api::Command => api.url(&path),
                Api::Query => query.url(&path),
            };
            let mut request = env
                .http
                .request(method.parse().expect("method"), &url)
                .bearer_auth(&token);
            if let Some(body) = body {
                request = request
                    .header("content-type", "application/json")
                    .body(*body);
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
        for list in ["/v1/tenants", "/v1/admin-users"] {
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
