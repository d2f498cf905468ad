//! Admin identity over HTTP: bootstrap, login, refresh rotation and reuse, logout,
//! introspection, lockout, and who may manage whom.

use base64::Engine;
use serde_json::{json, Value};

use crate::support::{expect_problem, Service, TestEnv};

pub(crate) const ROOT_EMAIL: &str = "root@platform.example";
pub(crate) const ROOT_PASSWORD: &str = "a long bootstrap password";

pub(crate) async fn with_root(env: &TestEnv) -> Service {
    let mut config = env.command_config();
    config.ctx.identity.admin_bootstrap_email = Some(ROOT_EMAIL.into());
    config.ctx.identity.admin_bootstrap_password = Some(ROOT_PASSWORD.into());
    env.spawn_command_api(config).await
}

pub(crate) async fn login(
    env: &TestEnv,
    api: &Service,
    email: &str,
    password: &str,
) -> reqwest::Response {
    env.http
        .post(api.url("/auth/admin/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await
        .expect("sent")
}

pub(crate) async fn tokens(env: &TestEnv, api: &Service, email: &str, password: &str) -> Value {
    let r = login(env, api, email, password).await;
    assert_eq!(r.status(), 200, "login of {email}");
    r.json().await.expect("json")
}

/// The bootstrapped super admin's access token, from a real login.
pub(crate) async fn root_token(env: &TestEnv, api: &Service) -> String {
    tokens(env, api, ROOT_EMAIL, ROOT_PASSWORD).await["access_token"]
        .as_str()
        .expect("access")
        .to_owned()
}

/// Introspects `token` as a platform service would (RFC 7662: an authorised caller).
async fn introspect(env: &TestEnv, api: &Service, token: &str) -> Value {
    env.http
        .post(api.url("/auth/introspect"))
        .bearer_auth(env.keys.service_token("resource-server", 60))
        .form(&[("token", token)])
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json")
}

pub(crate) async fn refresh(env: &TestEnv, api: &Service, token: &str) -> reqwest::Response {
    env.http
        .post(api.url("/auth/admin/refresh"))
        .json(&json!({"refresh_token": token}))
        .send()
        .await
        .expect("sent")
}

#[tokio::test]
async fn a_bootstrapped_admin_logs_in_refreshes_and_logs_out() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let first = tokens(&env, &api, "Root@Platform.example", ROOT_PASSWORD).await;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 3600);
    assert_eq!(first["user"]["role"], "super_admin");
    let access = first["access_token"].as_str().expect("access").to_owned();

    let profile: Value = env.get_json(&api.url("/auth/admin/profile"), &access).await;
    assert_eq!(profile["email"], ROOT_EMAIL);
    let live = introspect(&env, &api, &access).await;
    assert_eq!(
        (live["active"].clone(), live["role"].clone()),
        (json!(true), json!("super_admin"))
    );
    assert_eq!(live["sub"], first["user"]["id"]);

    // The refresh token rotates: the new one works, and the old one, presented again,
    // revokes the whole family.
    let rotated = refresh(
        &env,
        &api,
        first["refresh_token"].as_str().expect("refresh"),
    )
    .await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.expect("json");
    assert_ne!(rotated["refresh_token"], first["refresh_token"]);
    let replayed = refresh(
        &env,
        &api,
        first["refresh_token"].as_str().expect("refresh"),
    )
    .await;
    expect_problem(replayed, 401, "refresh_token_reused").await;
    let after_reuse = refresh(
        &env,
        &api,
        rotated["refresh_token"].as_str().expect("refresh"),
    )
    .await;
    expect_problem(after_reuse, 401, "invalid_refresh_token").await;
    assert_eq!(
        introspect(&env, &api, &access).await,
        json!({"active": false}),
        "the family's access tokens are dead too"
    );

    // A fresh session, then logout.
    let second = tokens(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await;
    let access = second["access_token"].as_str().expect("access");
    let out = env
        .http
        .post(api.url("/auth/admin/logout"))
        .bearer_auth(access)
        .send()
        .await
        .expect("sent");
    assert_eq!(out.status(), 204);
    assert_eq!(introspect(&env, &api, access).await["active"], false);
    expect_problem(
        refresh(
            &env,
            &api,
            second["refresh_token"].as_str().expect("refresh"),
        )
        .await,
        401,
        "invalid_refresh_token",
    )
    .await;

    let trail: Vec<String> = sqlx::query_scalar("SELECT event_type FROM events WHERE aggregate_type = 'admin_user' ORDER BY global_position")
        .fetch_all(&env.pool)
        .await
        .expect("events");
    assert_eq!(
        trail,
        [
            "Created",
            "LoginSucceeded",
            "SessionRevoked",
            "LoginSucceeded",
            "SessionRevoked"
        ]
    );
    let secrets: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(ROOT_PASSWORD)
            .fetch_one(&env.pool)
            .await
            .expect("count");
    assert_eq!(secrets, 0, "no password in any event");
    api.stop().await;
}

#[tokio::test]
async fn unknown_emails_and_wrong_passwords_get_one_answer_and_five_failures_lock() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let unknown = login(&env, &api, "nobody@platform.example", ROOT_PASSWORD).await;
    let unknown = expect_problem(unknown, 401, "invalid_credentials").await;
    for _ in 0..5 {
        let wrong = expect_problem(
            login(&env, &api, ROOT_EMAIL, "not the password").await,
            401,
            "invalid_credentials",
        )
        .await;
        assert_eq!(wrong, unknown, "nothing tells whether the account exists");
    }
    // Locked: even the right password is refused, with the same answer.
    let locked = expect_problem(
        login(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(locked, unknown);
    let trail: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT event_type, payload->'LoginFailed'->>'reason' FROM events WHERE aggregate_type = 'admin_user' ORDER BY sequence",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    let types: Vec<&str> = trail.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "Created",
            "LoginFailed",
            "LoginFailed",
            "LoginFailed",
            "LoginFailed",
            "LoginFailed",
            "LockedOut",
            "LoginFailed"
        ]
    );
    assert_eq!(trail.last().and_then(|(_, r)| r.as_deref()), Some("locked"));
    // Attempts on unknown e-mails have no stream; operators see them in metrics.
    let metrics = api.metrics(&env.http).await;
    // Public metrics count refusals without saying why, and every refused login costs one
    // password check — a decoy for the unknown address and the locked account — so neither
    // the page nor the timing tells an outsider which addresses have accounts.
    for line in [
        "auth_login_failures_total{} 7",
        "auth_password_checks_total{} 7",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert!(
        !metrics.contains("reason="),
        "no reasons on /metrics: {metrics}"
    );
    for body in [
        json!({"email": ROOT_EMAIL}),
        json!({"email": 1, "password": "x"}),
    ] {
        let r = env
            .http
            .post(api.url("/auth/admin/login"))
            .json(&body)
            .send()
            .await
            .expect("sent");
        expect_problem(r, 400, "invalid_body").await;
    }
    // PostgreSQL text cannot hold U+0000: such an address is nobody's, not a server error.
    let r = login(&env, &api, "root\u{0}@example.com", "x").await;
    expect_problem(r, 401, "invalid_credentials").await;
    api.stop().await;
    env.assert_snapshots_crossed(events::identity::ADMIN_USER)
        .await;
}

#[tokio::test]
async fn tenant_admins_manage_only_their_own_tenant() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let create = |token: String, body: Value| {
        let request = env
            .http
            .post(api.url("/v1/admin-users"))
            .bearer_auth(token)
            .json(&body);
        async move { request.send().await.expect("sent") }
    };
    let (acme, _) = crate::support::create_tenant(&env, &api, "acme").await;
    let (globex, _) = crate::support::create_tenant(&env, &api, "globex").await;
    for department in ["Support", "Sales"] {
        let r = env
            .http
            .post(api.url(&format!("/v1/tenants/{acme}/departments")))
            .bearer_auth(&root)
            .json(&json!({"name": department}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 200);
    }
    let made = create(root.clone(), json!({"email": "ada@acme.io", "password": "ada's long password", "tenant_id": acme, "role": "tenant_admin"})).await;
    assert_eq!(made.status(), 201);
    let other = create(root.clone(), json!({"email": "bo@globex.io", "password": "bo's long password", "tenant_id": globex, "role": "agent"})).await;
    let other_id = other.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let ada = tokens(&env, &api, "ada@acme.io", "ada's long password").await;
    assert_eq!(ada["user"]["tenant_id"], acme.as_str());
    let ada = ada["access_token"].as_str().expect("access").to_owned();
    // Into her own tenant (the default), as agent: yes.
    let agent = create(ada.clone(), json!({"email": "cy@acme.io", "password": "cy's long password", "role": "agent", "department": "Support"})).await;
    assert_eq!(agent.status(), 201);
    let agent_id = agent.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Into another tenant, or as super admin: no.
    expect_problem(create(ada.clone(), json!({"email": "x@globex.io", "password": "a long password!", "tenant_id": globex, "role": "agent"})).await, 403, "forbidden").await;
    expect_problem(
        create(
            ada.clone(),
            json!({"email": "x@acme.io", "password": "a long password!", "role": "super_admin"}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    expect_problem(create(root.clone(), json!({"email": "ada@acme.io", "password": "a long password!", "tenant_id": acme, "role": "agent"})).await, 409, "email_taken").await;
    expect_problem(
        create(
            root.clone(),
            json!({"email": "z@acme.io", "password": "short", "tenant_id": acme, "role": "agent"}),
        )
        .await,
        422,
        "weak_password",
    )
    .await;
    let nowhere = json!({"email": "q@acme.io", "password": "a long password!", "tenant_id": acme, "role": "agent", "department": "Nowhere"});
    expect_problem(
        create(root.clone(), nowhere).await,
        422,
        "unknown_department",
    )
    .await;
    let no_tenant = json!({"email": "q@acme.io", "password": "a long password!", "tenant_id": uuid::Uuid::new_v4(), "role": "agent"});
    expect_problem(create(root.clone(), no_tenant).await, 422, "unknown_tenant").await;

    let post = |token: &str, path: String, body: Value| {
        let request = env.http.post(api.url(&path)).bearer_auth(token).json(&body);
        async move { request.send().await.expect("sent") }
    };
    assert_eq!(
        post(
            &ada,
            format!("/v1/admin-users/{agent_id}/department"),
            json!({"department": "Sales"})
        )
        .await
        .status(),
        200
    );
    expect_problem(
        post(
            &ada,
            format!("/v1/admin-users/{agent_id}/role"),
            json!({"role": "super_admin"}),
        )
        .await,
        403,
        "forbidden",
    )
    .await;
    // Another tenant's user does not exist, as far as she can tell.
    expect_problem(
        post(
            &ada,
            format!("/v1/admin-users/{other_id}/deactivate"),
            json!({}),
        )
        .await,
        404,
        "not_found",
    )
    .await;
    expect_problem(
        post(
            &ada,
            "/v1/admin-users/not-an-id/deactivate".into(),
            json!({}),
        )
        .await,
        404,
        "not_found",
    )
    .await;

    // Deactivation ends the agent's sessions and logins.
    let cy = tokens(&env, &api, "cy@acme.io", "cy's long password").await;
    assert_eq!(
        post(
            &ada,
            format!("/v1/admin-users/{agent_id}/deactivate"),
            json!({})
        )
        .await
        .status(),
        200
    );
    expect_problem(
        refresh(&env, &api, cy["refresh_token"].as_str().expect("refresh")).await,
        401,
        "invalid_refresh_token",
    )
    .await;
    assert_eq!(
        introspect(&env, &api, cy["access_token"].as_str().expect("access")).await["active"],
        false
    );
    expect_problem(
        login(&env, &api, "cy@acme.io", "cy's long password").await,
        401,
        "invalid_credentials",
    )
    .await;
    api.stop().await;
}

#[tokio::test]
async fn forged_and_unsigned_tokens_are_refused_and_introspected_inactive() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let exp = chrono::Utc::now().timestamp() + 600;
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"sub": "root", "role": "super_admin", "exp": exp}))
    );
    let forged = events::access::TokenKeys::new("another secret").admin_token(
        "root",
        None,
        events::access::Role::SuperAdmin,
        600,
    );
    for token in [unsigned.as_str(), forged.as_str(), "garbage"] {
        let r = env
            .http
            .get(api.url("/auth/admin/profile"))
            .bearer_auth(token)
            .send()
            .await
            .expect("sent");
        expect_problem(r, 401, "token_invalid").await;
        assert_eq!(
            introspect(&env, &api, token).await,
            json!({"active": false})
        );
    }
    let json_body = env
        .http
        .post(api.url("/auth/introspect"))
        .bearer_auth(env.keys.service_token("resource-server", 60))
        .json(&json!({"token": "garbage"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(
        json_body.json::<Value>().await.expect("json"),
        json!({"active": false})
    );
    // Only an authorised caller may introspect (RFC 7662 §2.1): nobody anonymous, and no
    // tenant's staff testing tokens they found.
    let live = root_token(&env, &api).await;
    let ask = |caller: Option<String>| {
        let mut request = env.http.post(api.url("/auth/introspect"));
        if let Some(caller) = caller {
            request = request.bearer_auth(caller);
        }
        let request = request.form(&[("token", live.as_str())]);
        async move { request.send().await.expect("sent") }
    };
    expect_problem(ask(None).await, 401, "unauthenticated").await;
    expect_problem(ask(Some(env.agent_of("t1"))).await, 403, "forbidden").await;
    expect_problem(ask(Some(env.admin_of("t1"))).await, 403, "forbidden").await;
    let by_root = ask(Some(live.clone())).await;
    assert_eq!(by_root.json::<Value>().await.expect("json")["active"], true);
    api.stop().await;
}

#[tokio::test]
async fn a_password_change_needs_the_current_password() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let change = |current: &str, new: &str| {
        env.http
            .post(api.url("/auth/admin/password"))
            .bearer_auth(&root)
            .json(&json!({"current_password": current, "new_password": new}))
            .send()
    };
    expect_problem(
        change("wrong one", "the next long password")
            .await
            .expect("sent"),
        403,
        "forbidden",
    )
    .await;
    assert_eq!(
        change(ROOT_PASSWORD, "the next long password")
            .await
            .expect("sent")
            .status(),
        204
    );
    expect_problem(
        login(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    assert_eq!(
        login(&env, &api, ROOT_EMAIL, "the next long password")
            .await
            .status(),
        200
    );
    api.stop().await;
}

#[tokio::test]
async fn wrong_current_passwords_on_a_password_change_lock_the_account_like_failed_logins() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let change = |current: &str| {
        env.http
            .post(api.url("/auth/admin/password"))
            .bearer_auth(&root)
            .json(&json!({"current_password": current, "new_password": "the next long password"}))
            .send()
    };
    for guess in 0..5 {
        expect_problem(
            change(&format!("guess number {guess}"))
                .await
                .expect("sent"),
            403,
            "forbidden",
        )
        .await;
    }
    // Five guesses through this door lock the account: the right password no longer works
    // here or at login, until the lock ends.
    expect_problem(
        change(ROOT_PASSWORD).await.expect("sent"),
        403,
        "account_locked",
    )
    .await;
    expect_problem(
        login(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    let locks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'admin_user' AND event_type = 'LockedOut'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(locks, 1, "the lock is in the user's audit trail");
    api.stop().await;
}

pub(crate) async fn request_code(
    env: &TestEnv,
    api: &Service,
    tenant: &str,
    phone: &str,
) -> reqwest::Response {
    env.http
        .post(api.url("/auth/phone/request"))
        .json(&json!({"tenant_id": tenant, "phone": phone}))
        .send()
        .await
        .expect("sent")
}

/// The code in the newest captured SMS to `phone`.
pub(crate) async fn code_from_inbox(env: &TestEnv, query: &Service, phone: &str) -> String {
    let url = query.url(&format!(
        "/v1/dev/inbox?recipient={}",
        phone.replace('+', "%2B")
    ));
    let inbox = env.get_json(&url, &env.super_admin()).await;
    let body = inbox["items"][0]["body"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    body.split_whitespace()
        .map(|w| w.trim_end_matches('.'))
        .find(|w| w.len() == 6 && w.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in {inbox}"))
        .to_owned()
}

#[tokio::test]
async fn a_phone_user_signs_in_with_a_code_from_the_dev_inbox() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "chatty").await;

    let sent = request_code(&env, &api, &tenant, "+33 6 12 34 56 78").await;
    assert_eq!(sent.status(), 202);
    assert_eq!(
        sent.json::<Value>().await.expect("json"),
        json!({"phone": "+33612345678", "expires_in": 300, "resend_after": 60})
    );
    let code = code_from_inbox(&env, &query, "+33612345678").await;
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let verify = |code: &str| {
        env.http
            .post(api.url("/auth/phone/verify"))
            .json(&json!({"tenant_id": tenant, "phone": "0033612345678", "code": code}))
            .send()
    };
    expect_problem(verify(wrong).await.expect("sent"), 401, "invalid_code").await;
    let signed_in = verify(&code).await.expect("sent");
    assert_eq!(signed_in.status(), 200);
    let signed_in: Value = signed_in.json().await.expect("json");
    assert_eq!(signed_in["user"]["phone"], "+33612345678");
    let token = signed_in["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let claims = introspect(&env, &api, &token).await;
    assert_eq!(
        (claims["kind"].clone(), claims["tenant_id"].clone()),
        (json!("phone"), json!(tenant))
    );
    let session = env.get_json(&api.url("/auth/phone/session"), &token).await;
    assert_eq!(session["authenticated"], true);
    assert_eq!(session["user"]["id"], signed_in["user"]["id"]);
    // A code works once.
    expect_problem(verify(&code).await.expect("sent"), 401, "invalid_code").await;

    // Neither the number nor the code is in any event.
    let leaks: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE payload::text LIKE '%612345678%' OR aggregate_id LIKE '%612345678%'
            OR metadata::text LIKE '%612345678%' OR payload::text LIKE '%' || $1 || '%'",
    )
    .bind(&code)
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(leaks, 0);
    let trail: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'phone_login' ORDER BY sequence",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(trail, ["CodeIssued", "CodeRejected", "CodeVerified"]);
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn phone_sign_in_refuses_bad_numbers_closed_tenants_and_floods() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.identity.otp_requests_per_ip_per_hour = 4;
    let api = env.spawn_command_api(config).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "guarded").await;
    expect_problem(
        request_code(&env, &api, &tenant, "06 12 34 56 78").await,
        422,
        "invalid_phone",
    )
    .await;
    expect_problem(
        request_code(
            &env,
            &api,
            &uuid::Uuid::new_v4().to_string(),
            "+33612345678",
        )
        .await,
        403,
        "forbidden",
    )
    .await;

    // Cooldown per phone: a second code within 60 s is refused with the wait.
    assert_eq!(
        request_code(&env, &api, &tenant, "+33611111111")
            .await
            .status(),
        202
    );
    let again = request_code(&env, &api, &tenant, "+33611111111").await;
    let retry_after: i64 = again.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    expect_problem(again, 429, "rate_limited").await;

    // Per client IP: the fifth request of the hour (counting refused ones) is refused.
    let flood = request_code(&env, &api, &tenant, "+33622222222").await;
    let retry_after: i64 = flood.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry_after));
    expect_problem(flood, 429, "rate_limited").await;

    // A tenant whose chatbot is disabled accepts no sign-ins.
    let (closed, _) = crate::support::create_tenant(&env, &api, "closed").await;
    let disable = env
        .http
        .post(api.url(&format!("/v1/tenants/{closed}/preferences")))
        .bearer_auth(env.super_admin())
        .json(&json!({"chatbot": {"enabled": false}}))
        .send()
        .await
        .expect("sent");
    assert_eq!(disable.status(), 200);
    let mut config = env.command_config();
    config.ctx.identity.otp_requests_per_ip_per_hour = 100;
    let second = env.spawn_command_api(config).await;
    expect_problem(
        request_code(&env, &second, &closed, "+33633333333").await,
        403,
        "forbidden",
    )
    .await;
    second.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn the_dev_inbox_is_for_super_admins_and_can_be_off() {
    let env = TestEnv::new().await;
    let query = env.spawn_query_api(env.query_config()).await;
    let agent = env.agent_of("t1");
    expect_problem(
        env.http
            .get(query.url("/v1/dev/inbox"))
            .bearer_auth(&agent)
            .send()
            .await
            .expect("sent"),
        403,
        "forbidden",
    )
    .await;
    let mut config = env.query_config();
    config.ctx.dev.dev_inbox_enabled = false;
    let off = env.spawn_query_api(config).await;
    expect_problem(
        env.http
            .get(off.url("/v1/dev/inbox"))
            .bearer_auth(env.super_admin())
            .send()
            .await
            .expect("sent"),
        404,
        "not_found",
    )
    .await;
    off.stop().await;
    query.stop().await;
}

#[tokio::test]
async fn the_users_of_a_tenant_and_their_login_history_are_read_models() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let projector = env.spawn_projector(env.projector_config());
    let mut config = env.query_config();
    config.read_wait_ms = 20_000;
    let query = env.spawn_query_api(config).await;
    let root = root_token(&env, &api).await;
    let (acme, _) = crate::support::create_tenant(&env, &api, "acme").await;
    let (globex, _) = crate::support::create_tenant(&env, &api, "globex").await;
    for (email, tenant) in [("ada@acme.io", &acme), ("bo@globex.io", &globex)] {
        let r = env
            .http
            .post(api.url("/v1/admin-users"))
            .bearer_auth(&root)
            .json(&json!({"email": email, "password": "a long enough password", "tenant_id": tenant, "role": "tenant_admin"}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 201);
    }
    expect_problem(
        login(&env, &api, "ada@acme.io", "not it").await,
        401,
        "invalid_credentials",
    )
    .await;
    let ada = tokens(&env, &api, "ada@acme.io", "a long enough password").await;
    let ada_id = ada["user"]["id"].as_str().expect("id").to_owned();
    let ada = ada["access_token"].as_str().expect("access").to_owned();

    let all = crate::support::eventually(
        std::time::Duration::from_secs(20),
        "three users projected",
        || async {
            let page = env.get_json(&query.url("/v1/admin-users"), &root).await;
            (page["items"].as_array().map(Vec::len) == Some(3)).then_some(page)
        },
    )
    .await;
    let tenants: Vec<&str> = all["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["tenant_id"].as_str())
        .collect();
    assert!(
        tenants.contains(&"platform")
            && tenants.contains(&acme.as_str())
            && tenants.contains(&globex.as_str()),
        "{all}"
    );
    let mine = env.get_json(&query.url("/v1/admin-users"), &ada).await;
    let emails: Vec<&str> = mine["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    assert_eq!(emails, ["ada@acme.io"]);
    expect_problem(
        env.http
            .get(query.url(&format!("/v1/admin-users?tenant_id={globex}")))
            .bearer_auth(&ada)
            .send()
            .await
            .expect("sent"),
        403,
        "forbidden",
    )
    .await;

    let history = crate::support::eventually(
        std::time::Duration::from_secs(20),
        "two logins projected",
        || async {
            let h = env
                .get_json(
                    &query.url(&format!("/v1/admin-users/{ada_id}/logins")),
                    &root,
                )
                .await;
            (h["items"].as_array().map(Vec::len) == Some(2)).then_some(h)
        },
    )
    .await;
    let outcomes: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["succeeded", "wrong_password"], "newest first");
    let own = env
        .get_json(
            &query.url(&format!("/v1/admin-users/{ada_id}/logins")),
            &ada,
        )
        .await;
    assert_eq!(own["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(own["next_before"], Value::Null, "one page holds it all");
    // Page by page, newest first, with the cursor the previous page gave.
    let first = env
        .get_json(
            &query.url(&format!("/v1/admin-users/{ada_id}/logins?limit=1")),
            &ada,
        )
        .await;
    assert_eq!(first["items"][0]["outcome"], "succeeded");
    let before = first["next_before"].as_i64().expect("a cursor");
    let second = env
        .get_json(
            &query.url(&format!(
                "/v1/admin-users/{ada_id}/logins?limit=1&before={before}"
            )),
            &ada,
        )
        .await;
    assert_eq!(second["items"][0]["outcome"], "wrong_password");
    assert_eq!(second["next_before"], Value::Null);
    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// Signs a phone user in through the dev inbox and returns their token.
async fn phone_token(
    env: &TestEnv,
    api: &Service,
    query: &Service,
    tenant: &str,
    phone: &str,
) -> String {
    assert_eq!(request_code(env, api, tenant, phone).await.status(), 202);
    let code = code_from_inbox(env, query, phone).await;
    let verified = env
        .http
        .post(api.url("/auth/phone/verify"))
        .json(&json!({"tenant_id": tenant, "phone": phone, "code": code}))
        .send()
        .await
        .expect("sent");
    assert_eq!(verified.status(), 200);
    verified.json::<Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("token")
        .to_owned()
}

#[tokio::test]
async fn a_phone_user_keeps_a_profile_and_links_anonymous_sessions() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "profiled").await;
    let token = phone_token(&env, &api, &query, &tenant, "+34912345678").await;
    let put = |body: Value| {
        env.http
            .put(api.url("/auth/phone/profile"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    let updated =
        put(json!({"display_name": " Lucía ", "email": "lucia@example.es", "locale": "es-ES"}))
            .await
            .expect("sent");
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.expect("json");
    assert_eq!(
        (updated["display_name"].clone(), updated["locale"].clone()),
        (json!("Lucía"), json!("es-ES"))
    );
    // Absent fields stay; null clears.
    let cleared: Value = put(json!({"email": null}))
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (cleared["email"].clone(), cleared["display_name"].clone()),
        (Value::Null, json!("Lucía"))
    );
    assert_eq!(
        env.get_json(&api.url("/auth/phone/profile"), &token).await,
        cleared
    );
    for (body, code) in [
        (json!({"locale": "Spanish please"}), "invalid_locale"),
        (json!({"email": "not-mail"}), "invalid_email"),
        (json!({"display_name": ""}), "invalid_display_name"),
    ] {
        expect_problem(put(body).await.expect("sent"), 422, code).await;
    }
    expect_problem(
        put(json!({"nickname": "x"})).await.expect("sent"),
        400,
        "invalid_body",
    )
    .await;

    let sync = |ids: Value| {
        env.http
            .post(api.url("/auth/phone/sync"))
            .bearer_auth(&token)
            .json(&json!({"anonymous_ids": ids}))
            .send()
    };
    let first: Value = sync(json!(["anon-1", "anon-2"]))
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    // Bare ids prove nothing (the platform issues no anonymous sessions yet): refused,
    // nothing recorded.
    assert_eq!(first["linked"], json!([]));
    assert_eq!(first["refused"], json!(["anon-1", "anon-2"]));
    expect_problem(
        sync(json!([])).await.expect("sent"),
        422,
        "invalid_anonymous_ids",
    )
    .await;
    // An admin token is not a phone user.
    let admin = env
        .http
        .get(api.url("/auth/phone/profile"))
        .bearer_auth(env.super_admin())
        .send()
        .await
        .expect("sent");
    expect_problem(admin, 403, "forbidden").await;

    let leaks: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%Lucía%' OR payload::text LIKE '%lucia@%'")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(leaks, 0, "profile values are not in events");
    let trail: Vec<String> = sqlx::query_scalar(
        "SELECT event_type FROM events WHERE aggregate_type = 'phone_login' ORDER BY sequence",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(
        trail,
        [
            "CodeIssued",
            "CodeVerified",
            "ProfileUpdated",
            "ProfileUpdated"
        ]
    );
    query.stop().await;
    api.stop().await;
    env.assert_snapshots_crossed(events::identity::PHONE_LOGIN)
        .await;
}

#[tokio::test]
async fn an_admin_initiated_reset_lets_a_locked_out_user_back_in_once() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let (acme, _) = crate::support::create_tenant(&env, &api, "acme").await;
    let made = env
        .http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(&root)
        .json(&json!({"email": "forgetful@acme.io", "password": "a long enough password", "tenant_id": acme, "role": "agent"}))
        .send()
        .await
        .expect("sent");
    let id = made.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    for _ in 0..5 {
        expect_problem(
            login(&env, &api, "forgetful@acme.io", "what was it").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    // Another tenant's admin cannot reset this user; the user's tenant admin could.
    let outsider = env.admin_of("globex");
    let refused = env
        .http
        .post(api.url(&format!("/v1/admin-users/{id}/password-reset")))
        .bearer_auth(outsider)
        .send()
        .await
        .expect("sent");
    expect_problem(refused, 404, "not_found").await;
    let issued = env
        .http
        .post(api.url(&format!("/v1/admin-users/{id}/password-reset")))
        .bearer_auth(&root)
        .send()
        .await
        .expect("sent");
    assert_eq!(issued.status(), 202);
    // A second e-mail, as when the user asks again.
    let issued_again = env
        .http
        .post(api.url(&format!("/v1/admin-users/{id}/password-reset")))
        .bearer_auth(&root)
        .send()
        .await
        .expect("sent");
    assert_eq!(issued_again.status(), 202);
    let inbox = env
        .get_json(
            &query.url("/v1/dev/inbox?recipient=forgetful%40acme.io"),
            &env.super_admin(),
        )
        .await;
    assert_eq!(inbox["items"][0]["channel"], "email");
    let token_in = |n: usize| {
        inbox["items"][n]["body"]
            .as_str()
            .and_then(|b| b.rsplit(' ').next())
            .expect("a token")
            .to_owned()
    };
    let (token, other_token) = (token_in(0), token_in(1));
    assert_ne!(token, other_token);
    let reset = |token: &str, password: &str| {
        env.http
            .post(api.url("/auth/admin/password-reset"))
            .json(&json!({"token": token, "new_password": password}))
            .send()
    };
    // A weak password does not spend the token.
    expect_problem(
        reset(&token, "short").await.expect("sent"),
        422,
        "weak_password",
    )
    .await;
    assert_eq!(
        reset(&token, "remembered this time")
            .await
            .expect("sent")
            .status(),
        204
    );
    expect_problem(
        reset(&token, "and once more please").await.expect("sent"),
        401,
        "invalid_reset_token",
    )
    .await;
    // The other e-mail's token was spent with it.
    expect_problem(
        reset(&other_token, "an older link, used late")
            .await
            .expect("sent"),
        401,
        "invalid_reset_token",
    )
    .await;
    // The lock is lifted with the new password.
    assert_eq!(
        login(&env, &api, "forgetful@acme.io", "remembered this time")
            .await
            .status(),
        200
    );
    let leaks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE payload::text LIKE '%' || $1 || '%'")
            .bind(&token)
            .fetch_one(&env.pool)
            .await
            .expect("count");
    assert_eq!(leaks, 0, "the reset token is in no event");
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_a_forged_forwarded_for_does_not_escape_the_per_ip_limit() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.identity.otp_requests_per_ip_per_hour = 3;
    // One reverse proxy, configured the older way.
    config.trust_forwarded_for = true;
    let api = env.spawn_command_api(config).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "proxied").await;
    let request = |n: u32, client: &'static str| {
        env.http
            .post(api.url("/auth/phone/request"))
            // The client wrote the first entry; the proxy appended the address it saw.
            .header("x-forwarded-for", format!("198.51.100.{n}, {client}"))
            .json(&json!({"tenant_id": &tenant, "phone": format!("+3361234{n:04}")}))
            .send()
    };
    for n in 1..=3 {
        assert_eq!(request(n, "203.0.113.7").await.expect("sent").status(), 202);
    }
    expect_problem(
        request(4, "203.0.113.7").await.expect("sent"),
        429,
        "rate_limited",
    )
    .await;
    // Another client behind the same proxy has its own allowance.
    assert_eq!(request(5, "203.0.113.8").await.expect("sent").status(), 202);
    api.stop().await;
}

#[tokio::test]
async fn token_answers_are_never_stored_or_replayed_and_say_no_store() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let login_keyed = || {
        env.http
            .post(api.url("/auth/admin/login"))
            .header("idempotency-key", "same-key")
            .json(&json!({"email": ROOT_EMAIL, "password": ROOT_PASSWORD}))
            .send()
    };
    let first = login_keyed().await.expect("sent");
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["cache-control"], "no-store");
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.expect("json");
    let second = login_keyed().await.expect("sent");
    assert_eq!(second.status(), 200);
    assert!(
        second.headers().get("idempotent-replayed").is_none(),
        "a second login is a second login"
    );
    let second: Value = second.json().await.expect("json");
    assert_ne!(first["refresh_token"], second["refresh_token"]);
    // A spent refresh token presented again with the same key is reuse, not a replay: it
    // revokes the family instead of handing out its successor twice.
    let refresh_keyed = |token: &Value| {
        env.http
            .post(api.url("/auth/admin/refresh"))
            .header("idempotency-key", "refresh-key")
            .json(&json!({"refresh_token": token}))
            .send()
    };
    assert_eq!(
        refresh_keyed(&first["refresh_token"])
            .await
            .expect("sent")
            .status(),
        200
    );
    let reused = refresh_keyed(&first["refresh_token"]).await.expect("sent");
    assert!(reused.headers().get("idempotent-replayed").is_none());
    assert_eq!(reused.status(), 401, "reuse detected");
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(kept, 0, "no token answer stored");
    let failed = login(&env, &api, ROOT_EMAIL, "not the password").await;
    assert_eq!(failed.headers()["cache-control"], "no-store");
    api.stop().await;
}

#[tokio::test]
async fn a_burst_of_parallel_guesses_gets_no_more_password_checks_than_the_lockout_allows() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let checks = || async {
        api.metrics(&env.http)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("auth_password_checks_total{} "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = checks().await;
    // Eight guesses at once, each through the password-change door.
    let answers = futures::future::join_all((0..8).map(|n| {
        env.http
            .post(api.url("/auth/admin/password"))
            .bearer_auth(&root)
            .json(&json!({"current_password": format!("guess {n}"), "new_password": "the next long password"}))
            .send()
    }))
    .await;
    let codes: Vec<String> = futures::future::join_all(answers.into_iter().map(|a| async {
        let body: Value = a.expect("sent").json().await.expect("json");
        body["code"].as_str().unwrap_or_default().to_owned()
    }))
    .await;
    assert_eq!(
        codes.iter().filter(|c| *c == "forbidden").count(),
        5,
        "five guesses checked and refused: {codes:?}"
    );
    assert_eq!(
        codes.iter().filter(|c| *c == "account_locked").count(),
        3,
        "the rest refused unchecked: {codes:?}"
    );
    assert_eq!(
        checks().await - before,
        5.0,
        "exactly five passwords checked"
    );
    api.stop().await;
}

#[tokio::test]
async fn look_alike_addresses_are_one_account_and_weak_passwords_are_refused() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "lookalike").await;
    let create = |email: &str, password: &str| {
        env.http
            .post(api.url("/v1/admin-users"))
            .bearer_auth(&root)
            .json(&json!({"email": email, "password": password, "tenant_id": &tenant, "role": "agent"}))
            .send()
    };
    assert_eq!(
        create("ann@acme.io", "a long enough password")
            .await
            .expect("sent")
            .status(),
        201
    );
    // Full-width letters are the same address; an invisible character is no address.
    expect_problem(
        create("ａｎｎ@acme.io", "a long enough password")
            .await
            .expect("sent"),
        409,
        "email_taken",
    )
    .await;
    expect_problem(
        create("an\u{200B}n@acme.io", "a long enough password")
            .await
            .expect("sent"),
        422,
        "invalid_email",
    )
    .await;
    for weak in ["          ", "aaaaaaaaaa", "password12"] {
        expect_problem(
            create("bob@acme.io", weak).await.expect("sent"),
            422,
            "weak_password",
        )
        .await;
    }
    // The look-alike typed at login reaches the one account.
    assert_eq!(
        login(&env, &api, "ＡＮＮ@acme.io", "a long enough password")
            .await
            .status(),
        200
    );
    api.stop().await;
}

#[tokio::test]
async fn a_password_change_ends_every_other_session() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let laptop = tokens(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await;
    let phone = tokens(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await;
    let changed = env
        .http
        .post(api.url("/auth/admin/password"))
        .bearer_auth(laptop["access_token"].as_str().expect("access"))
        .json(&json!({"current_password": ROOT_PASSWORD, "new_password": "the next long password"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(changed.status(), 204);
    // The other session can no longer refresh, and its access token introspects inactive.
    expect_problem(
        refresh(
            &env,
            &api,
            phone["refresh_token"].as_str().expect("refresh"),
        )
        .await,
        401,
        "invalid_refresh_token",
    )
    .await;
    let other = introspect(&env, &api, phone["access_token"].as_str().expect("access")).await;
    assert_eq!(other["active"], false, "{other}");
    // The session that changed it goes on.
    assert_eq!(
        refresh(
            &env,
            &api,
            laptop["refresh_token"].as_str().expect("refresh")
        )
        .await
        .status(),
        200
    );
    api.stop().await;
}

#[tokio::test]
async fn an_admin_user_cannot_take_a_chatbot_users_id() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (alpha, _) = crate::support::create_tenant(&env, &api, "alpha-chat").await;
    let (beta, _) = crate::support::create_tenant(&env, &api, "beta-squat").await;
    let customer = phone_token(&env, &api, &query, &alpha, "+34600111222").await;
    let customer_id = env.keys.claims(&customer).expect("claims").sub;
    // A beta admin who learnt the customer's id cannot become them on `private-user-{id}`.
    let squat = env
        .http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(env.admin_of(&beta))
        .json(&json!({"id": customer_id, "email": "squat@beta.example", "password": "a long squatting password", "role": "agent"}))
        .send()
        .await
        .expect("sent");
    // Chatbot users' ids are derived by the platform (UUID version 8): no client may
    // choose one.
    expect_problem(squat, 422, "invalid_id").await;
    query.stop().await;
    api.stop().await;
}

/// A POST with a bearer token.
async fn post(
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

/// Nobody deactivates themselves, the last active super admin can be neither deactivated
/// nor demoted, and deactivating a user twice converges (a retry after a lost answer).
#[tokio::test]
async fn nobody_deactivates_themselves_and_the_last_super_admin_stays() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let root_id = introspect(&env, &api, &root).await["sub"]
        .as_str()
        .expect("sub")
        .to_owned();
    expect_problem(
        post(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{root_id}/deactivate"),
            json!({}),
        )
        .await,
        422,
        "cannot_deactivate_self",
    )
    .await;
    // The only super admin cannot hand the role away either.
    expect_problem(
        post(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{root_id}/role"),
            json!({"role": "agent"}),
        )
        .await,
        422,
        "last_super_admin",
    )
    .await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "last-root").await;
    // A second super admin; then the first may go, and the second is the last.
    let second = post(
        &env,
        &api,
        &root,
        "/v1/admin-users",
        json!({"email": "second@platform.example", "password": "a second long password", "role": "super_admin"}),
    )
    .await;
    assert_eq!(second.status(), 201);
    let second_id = second.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let second_token = tokens(
        &env,
        &api,
        "second@platform.example",
        "a second long password",
    )
    .await["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let deactivate_root = format!("/v1/admin-users/{root_id}/deactivate");
    assert_eq!(
        post(&env, &api, &second_token, &deactivate_root, json!({}))
            .await
            .status(),
        200
    );
    // Again, as a client whose answer was lost would: the same outcome, nothing appended.
    let before = env.event_count().await;
    assert_eq!(
        post(&env, &api, &second_token, &deactivate_root, json!({}))
            .await
            .status(),
        200
    );
    assert_eq!(env.event_count().await, before);
    expect_problem(
        post(
            &env,
            &api,
            &second_token,
            &format!("/v1/admin-users/{second_id}/role"),
            json!({"role": "tenant_admin"}),
        )
        .await,
        422,
        "last_super_admin",
    )
    .await;
    expect_problem(
        post(
            &env,
            &api,
            &second_token,
            &format!("/v1/admin-users/{second_id}/deactivate"),
            json!({}),
        )
        .await,
        422,
        "cannot_deactivate_self",
    )
    .await;
    // After a restart with the same bootstrap settings, a super admin can still sign in.
    api.stop().await;
    let api = with_root(&env).await;
    assert_eq!(
        login(
            &env,
            &api,
            "second@platform.example",
            "a second long password"
        )
        .await
        .status(),
        200
    );
    // A tenant admin cannot deactivate themselves either.
    let admin = post(
        &env,
        &api,
        &second_token,
        "/v1/admin-users",
        json!({"email": "ta@last-root.example", "password": "a tenant admin password", "tenant_id": tenant, "role": "tenant_admin"}),
    )
    .await;
    assert_eq!(admin.status(), 201);
    let admin_id = admin.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let admin_token = tokens(
        &env,
        &api,
        "ta@last-root.example",
        "a tenant admin password",
    )
    .await["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    expect_problem(
        post(
            &env,
            &api,
            &admin_token,
            &format!("/v1/admin-users/{admin_id}/deactivate"),
            json!({}),
        )
        .await,
        422,
        "cannot_deactivate_self",
    )
    .await;
    api.stop().await;
}

/// Two super admins deactivating each other at the same moment each see the other still
/// active: the store lets only the first through, and the second fails as a serialization
/// failure (503, and refused with `last_super_admin` when retried).
#[tokio::test]
async fn two_super_admins_deactivating_each_other_at_once_leave_one() {
    let env = TestEnv::new().await;
    let append = |user: &'static str, sequence: i64, event: &'static str, body: Value| {
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('admin_user', $1, $2, $3, '1.0', jsonb_build_object($3::text, $4::jsonb), '{\"tenant_id\": \"platform\"}')",
        )
        .bind(user)
        .bind(sequence)
        .bind(event)
        .bind(body)
    };
    for user in ["ann", "bob"] {
        append(
            user,
            1,
            "Created",
            json!({"email": format!("{user}@platform.example"), "role": "super_admin"}),
        )
        .execute(&env.pool)
        .await
        .expect("created");
    }
    let mut first = env.pool.begin().await.expect("tx");
    append("ann", 2, "Deactivated", json!({}))
        .execute(&mut *first)
        .await
        .expect("bob deactivates ann");
    let pool = env.pool.clone();
    let second = tokio::spawn(async move {
        let mut tx = pool.begin().await.expect("tx");
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('admin_user', 'bob', 2, 'Deactivated', '1.0', '{\"Deactivated\": {}}', '{\"tenant_id\": \"platform\"}')",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    });
    // The second waits for the first.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second change waits for the first"
    );
    first.commit().await.expect("the first goes through");
    let refused = second
        .await
        .expect("joined")
        .expect_err("the second would leave no super admin");
    let code = refused
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(
        code.as_deref(),
        Some("40001"),
        "a retryable failure: {refused}"
    );
    let active: Vec<String> =
        sqlx::query_scalar("SELECT user_id FROM admin_roles WHERE role = 'super_admin' AND active")
            .fetch_all(&env.pool)
            .await
            .expect("roles");
    assert_eq!(active, vec!["bob".to_owned()]);
}

/// Makes every insert into `table` fail as a briefly unavailable database does (SQLSTATE
/// 55P03, transient: 503), until [`heal`].
async fn break_inserts(env: &TestEnv, table: &str, when: &str) {
    break_writes(env, "INSERT", table, when).await;
}

/// Makes every `write` (`INSERT`, `UPDATE`) of `table` fail as [`break_inserts`] does.
async fn break_writes(env: &TestEnv, write: &str, table: &str, when: &str) {
    sqlx::query(
        "CREATE OR REPLACE FUNCTION test_fault() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'injected fault' USING ERRCODE = '55P03'; END; $$",
    )
    .execute(&env.pool)
    .await
    .expect("fault function");
    sqlx::query(&format!(
        "CREATE TRIGGER test_fault BEFORE {write} ON {table} FOR EACH ROW {when}
         EXECUTE FUNCTION test_fault()"
    ))
    .execute(&env.pool)
    .await
    .expect("fault trigger");
}

async fn heal(env: &TestEnv, table: &str) {
    sqlx::query(&format!("DROP TRIGGER test_fault ON {table}"))
        .execute(&env.pool)
        .await
        .expect("healed");
}

/// What must follow an event happens with it or not at all: a reset whose token could not be
/// stored appends nothing and its retry sends one working token; an invitation that failed
/// holds no e-mail, so its retry succeeds; a password change that failed changes nothing.
#[tokio::test]
async fn work_that_follows_an_event_is_never_half_done_and_retries_converge() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "converge").await;
    let invite = || {
        env.http
            .post(api.url("/v1/admin-users"))
            .bearer_auth(&root)
            .json(&json!({"email": "newcomer@converge.example", "password": "a long enough password", "tenant_id": tenant, "role": "agent"}))
            .send()
    };

    // An invitation whose append fails takes no e-mail with it.
    break_inserts(
        &env,
        "events",
        "WHEN (NEW.aggregate_type = 'admin_user' AND NEW.event_type = 'Created')",
    )
    .await;
    expect_problem(invite().await.expect("sent"), 503, "unavailable").await;
    heal(&env, "events").await;
    let made = invite().await.expect("sent");
    assert_eq!(
        made.status(),
        201,
        "the retry is not refused as email_taken"
    );
    let id = made.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(
        login(
            &env,
            &api,
            "newcomer@converge.example",
            "a long enough password"
        )
        .await
        .status(),
        200
    );

    // A reset whose token cannot be stored appends nothing and sends nothing.
    let issue = || {
        env.http
            .post(api.url(&format!("/v1/admin-users/{id}/password-reset")))
            .bearer_auth(&root)
            .header("idempotency-key", "reset-newcomer")
            .send()
    };
    let issued = || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'PasswordResetIssued'",
        )
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .expect("count");
        n
    };
    let mail = || async {
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM outbound_messages WHERE recipient = 'newcomer@converge.example'",
        )
        .fetch_all(&env.pool)
        .await
        .expect("mail");
        bodies
    };
    break_inserts(&env, "admin_password_resets", "").await;
    expect_problem(issue().await.expect("sent"), 503, "unavailable").await;
    assert_eq!(issued().await, 0, "no event without its token");
    assert!(mail().await.is_empty(), "no e-mail without its event");
    heal(&env, "admin_password_resets").await;
    // The keyed retry converges: one event, one e-mail, one working token.
    assert_eq!(issue().await.expect("sent").status(), 202);
    assert_eq!(issued().await, 1);
    let bodies = mail().await;
    assert_eq!(bodies.len(), 1);
    let token = bodies[0].rsplit(' ').next().expect("a token").to_owned();
    let reset = env
        .http
        .post(api.url("/auth/admin/password-reset"))
        .json(&json!({"token": token, "new_password": "a brand new password"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(reset.status(), 204);

    // A password change that fails changes nothing; its retry does it once.
    let signed_in = tokens(
        &env,
        &api,
        "newcomer@converge.example",
        "a brand new password",
    )
    .await;
    let access = signed_in["access_token"]
        .as_str()
        .expect("access")
        .to_owned();
    let change = || {
        env.http
            .post(api.url("/auth/admin/password"))
            .bearer_auth(&access)
            .json(&json!({"current_password": "a brand new password", "new_password": "the third password"}))
            .send()
    };
    break_inserts(&env, "admin_credentials", "").await;
    expect_problem(change().await.expect("sent"), 503, "unavailable").await;
    heal(&env, "admin_credentials").await;
    assert_eq!(
        login(
            &env,
            &api,
            "newcomer@converge.example",
            "the third password"
        )
        .await
        .status(),
        401,
        "the failed change did not take"
    );
    assert_eq!(change().await.expect("sent").status(), 204);
    let changed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'PasswordChanged'",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(changed, 1);

    // A deactivation whose sessions cannot be ended appends nothing and ends nothing; its
    // retry does both, and a retry after that converges.
    let signed_in = tokens(
        &env,
        &api,
        "newcomer@converge.example",
        "the third password",
    )
    .await;
    let refresh_token = signed_in["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    let deactivate = || {
        env.http
            .post(api.url(&format!("/v1/admin-users/{id}/deactivate")))
            .bearer_auth(&root)
            .send()
    };
    break_writes(&env, "UPDATE", "admin_sessions", "").await;
    expect_problem(deactivate().await.expect("sent"), 503, "unavailable").await;
    heal(&env, "admin_sessions").await;
    let deactivated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_id = $1 AND event_type = 'Deactivated'",
    )
    .bind(&id)
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(deactivated, 0, "no deactivation without its sessions ended");
    assert_eq!(deactivate().await.expect("sent").status(), 200);
    assert_eq!(deactivate().await.expect("sent").status(), 200, "converges");
    let refreshed = refresh(&env, &api, &refresh_token).await;
    assert_eq!(
        refreshed.status(),
        401,
        "the session ended with the deactivation"
    );
    api.stop().await;
}

/// Eight invitations of one address at once: one user gets it, whatever the timing; the
/// others are refused as `email_taken` (a 503 of one that raced is retried into that).
#[tokio::test]
async fn concurrent_invitations_of_one_address_make_one_user() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "racing").await;
    let invite = || {
        env.http
            .post(api.url("/v1/admin-users"))
            .bearer_auth(&root)
            .json(&json!({"email": "twice@racing.example", "password": "a long enough password", "tenant_id": tenant, "role": "agent"}))
            .send()
    };
    let mut statuses: Vec<u16> = futures::future::join_all((0..8).map(|_| async {
        let mut status = invite().await.expect("sent").status().as_u16();
        for _ in 0..5 {
            if status != 503 {
                break;
            }
            status = invite().await.expect("sent").status().as_u16();
        }
        status
    }))
    .await;
    statuses.sort_unstable();
    assert_eq!(statuses, vec![201, 409, 409, 409, 409, 409, 409, 409]);
    // The e-mails are sealed in the events: opened to be counted.
    let emails: Vec<String> = sqlx::query_scalar(
        "SELECT payload->'Created'->>'email' FROM events
          WHERE aggregate_type = 'admin_user' AND event_type = 'Created'",
    )
    .fetch_all(&env.pool)
    .await
    .expect("e-mails");
    let keyring = env.keyring();
    let mut created = 0;
    for email in emails {
        assert!(events::personal::is_sealed(&email), "sealed for the user");
        created +=
            usize::from(keyring.open(&email).await.expect("opened") == "twice@racing.example");
    }
    assert_eq!(created, 1);
    api.stop().await;
}

/// A tenant admin learns that an address is one of their own users', never that it is
/// another tenant's user or the platform's super admin; probing addresses is limited.
#[tokio::test]
async fn a_tenant_admin_cannot_tell_other_tenants_users_from_their_addresses() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let (acme, _) = crate::support::create_tenant(&env, &api, "acme-probe").await;
    let (globex, _) = crate::support::create_tenant(&env, &api, "globex-probe").await;
    for (tenant, email) in [
        (&acme, "own@acme.example"),
        (&globex, "theirs@globex.example"),
    ] {
        let made = post(
            &env,
            &api,
            &root,
            "/v1/admin-users",
            json!({"email": email, "password": "a long enough password", "tenant_id": tenant, "role": "agent"}),
        )
        .await;
        assert_eq!(made.status(), 201);
    }
    let admin = env.admin_of(&acme);
    let invite = |email: &str| {
        post(
            &env,
            &api,
            &admin,
            "/v1/admin-users",
            json!({"email": email, "password": "a long enough password", "role": "agent"}),
        )
    };
    expect_problem(invite("own@acme.example").await, 409, "email_taken").await;
    expect_problem(
        invite("theirs@globex.example").await,
        409,
        "email_unavailable",
    )
    .await;
    expect_problem(invite(ROOT_EMAIL).await, 409, "email_unavailable").await;
    // The super admin, who sees every user, is told plainly.
    expect_problem(
        post(
            &env,
            &api,
            &root,
            "/v1/admin-users",
            json!({"email": "theirs@globex.example", "password": "a long enough password", "tenant_id": acme, "role": "agent"}),
        )
        .await,
        409,
        "email_taken",
    )
    .await;
    // Probing at speed is cut off.
    let mut limited = false;
    for _ in 0..25 {
        let answer = invite("theirs@globex.example").await;
        if answer.status() == 429 {
            assert!(answer.headers().contains_key("retry-after"));
            limited = true;
            break;
        }
        expect_problem(answer, 409, "email_unavailable").await;
    }
    assert!(limited, "refusals are limited per admin");
    // Once limited, every creation is refused alike, a free address's too: the 429 tells
    // nothing about the address.
    let free = invite("nobody-yet@acme.example").await;
    expect_problem(free, 429, "rate_limited").await;
    api.stop().await;
}

/// A stranger cannot grow an account's history without end: attempts on a locked account
/// are recorded once per lock, and a client refused too often in an hour is stopped before
/// anything is looked up or recorded.
#[tokio::test]
async fn refused_logins_cannot_grow_an_accounts_history_without_end() {
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.identity.admin_bootstrap_email = Some(ROOT_EMAIL.into());
    config.ctx.identity.admin_bootstrap_password = Some(ROOT_PASSWORD.into());
    config.ctx.identity.login_failures_per_ip_per_hour = 12;
    let api = env.spawn_command_api(config).await;
    let events = || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'admin_user'")
                .fetch_one(&env.pool)
                .await
                .expect("count");
        n
    };
    // Five wrong passwords lock the account (five failures and the lock), then the first
    // attempt on the lock is recorded, and no other.
    for _ in 0..5 {
        expect_problem(
            login(&env, &api, ROOT_EMAIL, "not it at all").await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    expect_problem(
        login(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await,
        401,
        "invalid_credentials",
    )
    .await;
    let after_lock = events().await;
    for _ in 0..5 {
        expect_problem(
            login(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await,
            401,
            "invalid_credentials",
        )
        .await;
    }
    assert_eq!(
        events().await,
        after_lock,
        "knocking on the lock records nothing more"
    );
    // The twelfth refusal this hour was the last: the next is stopped at the door.
    expect_problem(
        login(&env, &api, ROOT_EMAIL, "again").await,
        401,
        "invalid_credentials",
    )
    .await;
    let stopped = login(&env, &api, ROOT_EMAIL, "and again").await;
    assert!(stopped.headers().contains_key("retry-after"));
    expect_problem(stopped, 429, "rate_limited").await;
    assert_eq!(events().await, after_lock);
    api.stop().await;
}

/// The directory of phone users (what links WhatsApp contacts) is the same whether the
/// projector builds it live, a rebuild makes it from the store, or migration 0050's fill
/// (for sign-ins older than the stream) makes it from the store.
#[tokio::test]
async fn the_phone_user_directory_is_the_same_live_rebuilt_and_filled_by_its_migration() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let (north, _) = crate::support::create_tenant(&env, &api, "north").await;
    let (south, _) = crate::support::create_tenant(&env, &api, "south").await;
    for (tenant, phone) in [
        (&north, "+33600000001"),
        (&north, "+33600000002"),
        (&south, "+33600000001"),
    ] {
        phone_token(&env, &api, &query, tenant, phone).await;
    }
    let rows = || async {
        sqlx::query_scalar::<_, Value>(
            "SELECT coalesce(jsonb_agg(to_jsonb(d) ORDER BY user_id), '[]')
               FROM phone_user_directory d",
        )
        .fetch_one(&env.pool)
        .await
        .expect("rows")
    };
    let live = crate::support::eventually(
        std::time::Duration::from_secs(20),
        "the directory",
        || async {
            let rows = rows().await;
            (rows.as_array().map(Vec::len) == Some(3)).then_some(rows)
        },
    )
    .await;
    let tenants: Vec<&str> = live
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|r| r["tenant_id"].as_str())
        .collect();
    assert_eq!(tenants.iter().filter(|t| **t == north).count(), 2);
    assert_eq!(tenants.iter().filter(|t| **t == south).count(), 1);
    projector.abort();
    let report = projector::rebuild::rebuild(
        &env.pool,
        &projector::identity::phone_users::PhoneUsersProjection,
        &env.keyring(),
    )
    .await
    .expect("rebuild");
    assert_eq!(
        report.events,
        3 * 2,
        "each sign-in's code issued and verified"
    );
    assert_eq!(rows().await, live, "a rebuild gives the same rows");
    let migration = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../migrations/0050_phone_user_directory.sql"),
    )
    .expect("the migration");
    let fill = migration
        .split_once("INSERT INTO phone_user_directory")
        .and_then(|(_, rest)| rest.split_once(";\n"))
        .map(|(fill, _)| format!("INSERT INTO phone_user_directory{fill}"))
        .expect("the migration fills the directory");
    sqlx::query("DELETE FROM phone_user_directory")
        .execute(&env.pool)
        .await
        .expect("emptied");
    sqlx::query(&fill).execute(&env.pool).await.expect("filled");
    assert_eq!(
        rows().await,
        live,
        "the migration's fill gives the same rows"
    );
    query.stop().await;
    api.stop().await;
}

/// Ten creations of one e-mail at once: one user is made and the others are told the address
/// is taken (409), as one at a time; none is told the service is unavailable.
#[tokio::test]
async fn creations_racing_for_one_email_make_one_user_and_tell_the_others_it_is_taken() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "racing").await;
    let answers = futures::future::join_all((0..10).map(|n| {
        env.http
            .post(api.url("/v1/admin-users"))
            .bearer_auth(&root)
            .json(&json!({
                "email": "same@racing.example",
                "password": format!("a long enough password {n}"),
                "tenant_id": &tenant,
                "role": "agent"
            }))
            .send()
    }))
    .await;
    let mut statuses = Vec::new();
    for answer in answers {
        let answer = answer.expect("sent");
        let status = answer.status().as_u16();
        if status != 201 {
            let body: Value = answer.json().await.expect("problem");
            assert_eq!((status, body["code"].as_str()), (409, Some("email_taken")));
        }
        statuses.push(status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 201).count(),
        1,
        "{statuses:?}"
    );
    api.stop().await;
}

/// A super admin belongs to the platform: one made inside a tenant would be locked out by
/// its suspension, so naming a tenant for a new super admin is refused.
#[tokio::test]
async fn a_new_super_admin_names_no_tenant() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "bound").await;
    let create = |body: Value| {
        env.http
            .post(api.url("/v1/admin-users"))
            .bearer_auth(&root)
            .json(&body)
            .send()
    };
    expect_problem(
        create(json!({"email": "bound@platform.example", "password": "a long enough password", "tenant_id": tenant, "role": "super_admin"}))
            .await
            .expect("sent"),
        422,
        "tenant_not_allowed",
    )
    .await;
    let made = create(json!({"email": "bound@platform.example", "password": "a long enough password", "role": "super_admin"}))
        .await
        .expect("sent");
    assert_eq!(made.status(), 201);
    api.stop().await;
}
