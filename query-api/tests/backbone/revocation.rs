//! Tokens that were revoked stop working everywhere, within a second: after a logout, a
//! password change, a demotion, a deactivation or a tenant's suspension, on the command API,
//! the query API, `/realtime/auth` and open streams — also in a process started later, and
//! after the process lost its PostgreSQL listener.

use std::time::Duration;

use serde_json::{json, Value};

use crate::identity::{root_token, tokens, with_root};
use crate::support::{eventually, expect_problem, Service, TestEnv};

/// An admin of a fresh tenant, created by the super admin: `(tenant id, user id)`.
async fn tenant_admin(env: &TestEnv, api: &Service, root: &str, email: &str) -> (String, String) {
    let slug = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let (tenant, _) = crate::support::create_tenant(env, api, &slug).await;
    let made = env
        .http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(root)
        .json(&json!({"email": email, "password": "a long and private password", "tenant_id": tenant, "role": "tenant_admin"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(made.status(), 201);
    let id = made.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    (tenant, id)
}

/// A write only a tenant admin may make: inviting an agent.
async fn invite(env: &TestEnv, api: &Service, token: &str) -> reqwest::Response {
    let email = format!("{}@agents.example", uuid::Uuid::new_v4().simple());
    env.http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(token)
        .json(&json!({"email": email, "password": "an agent's long password", "role": "agent"}))
        .send()
        .await
        .expect("sent")
}

/// A POST of the super admin (role changes, deactivations, suspensions).
async fn as_root(env: &TestEnv, api: &Service, root: &str, path: &str, body: Value) -> u16 {
    env.http
        .post(api.url(path))
        .bearer_auth(root)
        .json(&body)
        .send()
        .await
        .expect("sent")
        .status()
        .as_u16()
}

/// A read of the query API.
async fn read(env: &TestEnv, query: &Service, token: &str) -> reqwest::Response {
    env.http
        .get(query.url("/v1/admin-users"))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent")
}

/// Asks `/realtime/auth` for the tenant's presence channel.
async fn realtime_auth(
    env: &TestEnv,
    query: &Service,
    token: &str,
    tenant: &str,
) -> reqwest::Response {
    env.http
        .post(query.url("/realtime/auth"))
        .bearer_auth(token)
        .form(&[
            ("socket_id", "123.456"),
            ("channel_name", &format!("presence-tenant-{tenant}")),
        ])
        .send()
        .await
        .expect("sent")
}

/// Waits (a second at most) until `request` answers `status` with `code`.
async fn refused_within_a_second<F, Fut>(what: &str, status: u16, code: &str, request: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = reqwest::Response>,
{
    let response = eventually(Duration::from_secs(1), what, || {
        let pending = request();
        async move {
            let response = pending.await;
            (response.status().as_u16() == status).then_some(response)
        }
    })
    .await;
    expect_problem(response, status, code).await;
}

fn access(tokens: &Value) -> String {
    tokens["access_token"]
        .as_str()
        .expect("access token")
        .to_owned()
}

#[tokio::test]
async fn logout_demotion_and_deactivation_end_access_at_once_on_both_apis() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let email = "ada@revocations.example";
    let (tenant, ada) = tenant_admin(&env, &api, &root, email).await;
    let laptop = tokens(&env, &api, email, "a long and private password").await;
    let phone = tokens(&env, &api, email, "a long and private password").await;
    let (laptop_token, phone_token) = (access(&laptop), access(&phone));
    assert_eq!(invite(&env, &api, &laptop_token).await.status(), 201);
    assert_eq!(read(&env, &query, &laptop_token).await.status(), 200);
    assert_eq!(
        realtime_auth(&env, &query, &laptop_token, &tenant)
            .await
            .status(),
        200
    );

    // Logout ends that session's access token in both processes; the other session goes on.
    let out = env
        .http
        .post(api.url("/auth/admin/logout"))
        .bearer_auth(&laptop_token)
        .json(&json!({"refresh_token": laptop["refresh_token"]}))
        .send()
        .await
        .expect("sent");
    assert!(out.status().is_success(), "logout: {}", out.status());
    refused_within_a_second(
        "the command API to refuse a logged-out token",
        401,
        "token_revoked",
        || invite(&env, &api, &laptop_token),
    )
    .await;
    refused_within_a_second(
        "the query API to refuse a logged-out token",
        401,
        "token_revoked",
        || read(&env, &query, &laptop_token),
    )
    .await;
    refused_within_a_second(
        "/realtime/auth to refuse a logged-out token",
        401,
        "token_revoked",
        || realtime_auth(&env, &query, &laptop_token, &tenant),
    )
    .await;
    // An idempotent replay of an earlier answer is not handed to the revoked token either.
    let replay = env
        .http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(&laptop_token)
        .header("idempotency-key", "revoked-replay")
        .json(&json!({"email": "x@agents.example", "password": "an agent's long password", "role": "agent"}))
        .send()
        .await
        .expect("sent");
    expect_problem(replay, 401, "token_revoked").await;
    assert_eq!(read(&env, &query, &phone_token).await.status(), 200);

    // Demoted to agent: the token that says tenant_admin no longer creates admins.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{ada}/role"),
            json!({"role": "agent"})
        )
        .await,
        200
    );
    refused_within_a_second(
        "a demoted admin's token to be refused",
        401,
        "token_revoked",
        || invite(&env, &api, &phone_token),
    )
    .await;
    // The sessions ended with the old role: no refresh, a new sign-in gives the new role,
    // and introspection agrees with the APIs.
    expect_problem(
        crate::identity::refresh(
            &env,
            &api,
            phone["refresh_token"].as_str().expect("refresh"),
        )
        .await,
        401,
        "invalid_refresh_token",
    )
    .await;
    let introspected: Value = env
        .http
        .post(api.url("/auth/introspect"))
        .bearer_auth(env.keys.service_token("resource-server", 60))
        .form(&[("token", phone_token.as_str())])
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(introspected["active"], false, "{introspected}");
    let refreshed = tokens(&env, &api, email, "a long and private password").await;
    assert_eq!(refreshed["user"]["role"], "agent");
    let agent_token = access(&refreshed);
    expect_problem(invite(&env, &api, &agent_token).await, 403, "forbidden").await;
    assert_eq!(read(&env, &query, &agent_token).await.status(), 200);
    // Given the old role back, the token of the old role stays dead.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{ada}/role"),
            json!({"role": "tenant_admin"})
        )
        .await,
        200
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    expect_problem(invite(&env, &api, &phone_token).await, 401, "token_revoked").await;
    expect_problem(read(&env, &query, &phone_token).await, 401, "token_revoked").await;

    // Deactivated: nothing works, in either process, and a query API started afterwards
    // knows it from the start.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{ada}/deactivate"),
            json!({})
        )
        .await,
        200
    );
    refused_within_a_second(
        "a deactivated agent's reads to be refused",
        401,
        "token_revoked",
        || read(&env, &query, &agent_token),
    )
    .await;
    refused_within_a_second(
        "a deactivated agent's realtime auth to be refused",
        401,
        "token_revoked",
        || realtime_auth(&env, &query, &agent_token, &tenant),
    )
    .await;
    let later = env.spawn_query_api(env.query_config()).await;
    expect_problem(read(&env, &later, &agent_token).await, 401, "token_revoked").await;
    // Other users are untouched.
    assert_eq!(read(&env, &later, &root).await.status(), 200);
    later.stop().await;
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_password_change_ends_the_other_sessions_access_tokens_too() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let email = "bo@revocations.example";
    let _ = tenant_admin(&env, &api, &root, email).await;
    let laptop = access(&tokens(&env, &api, email, "a long and private password").await);
    let stolen = access(&tokens(&env, &api, email, "a long and private password").await);
    let changed = env
        .http
        .post(api.url("/auth/admin/password"))
        .bearer_auth(&laptop)
        .json(&json!({"current_password": "a long and private password", "new_password": "a new and private password"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(changed.status(), 204);
    refused_within_a_second(
        "the other session's token to be refused",
        401,
        "token_revoked",
        || read(&env, &query, &stolen),
    )
    .await;
    assert_eq!(invite(&env, &api, &laptop).await.status(), 201);
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_password_change_takes_effect_with_its_event_and_only_with_it() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let email = "cy@revocations.example";
    let old = "a long and private password";
    let (tenant, cy) = tenant_admin(&env, &api, &root, email).await;
    let laptop = tokens(&env, &api, email, old).await;
    let phone = tokens(&env, &api, email, old).await;
    let stage = |credential: &'static str, password: &'static str| {
        let (pool, user) = (env.pool.clone(), cy.clone());
        async move {
            let hash = command_api::identity::services::hash_password(password)
                .await
                .expect("hash");
            sqlx::query(
                "INSERT INTO admin_credential_changes (credential_id, user_id, password_hash)
                 VALUES ($1, $2, $3)",
            )
            .bind(credential)
            .bind(user)
            .bind(hash)
            .execute(&pool)
            .await
            .expect("staged");
        }
    };
    let login = |password: &'static str| {
        let request = env
            .http
            .post(api.url("/auth/admin/login"))
            .json(&json!({"email": email, "password": password}));
        async move { request.send().await.expect("sent").status().as_u16() }
    };
    // A change whose command never committed (a conflict, a crash) staged its hash and no
    // more: the old password goes on, the new one does not work.
    stage("never-committed", "a password that never was").await;
    assert_eq!(login("a password that never was").await, 401);
    assert_eq!(login(old).await, 200);

    // A command-api that dies right after committing `PasswordChanged` does nothing more:
    // the event's own transaction made the password current and ended the other sessions.
    stage("committed", "the new private password").await;
    let laptop_sid = env
        .keys
        .claims(&access(&laptop))
        .expect("claims")
        .sid
        .expect("sid");
    env.append_raw(
        "admin_user",
        &cy,
        &tenant,
        json!({"PasswordChanged": {"kept_session": laptop_sid, "credential": "committed"}}),
    )
    .await
    .expect("appended");
    assert_eq!(login("the new private password").await, 200);
    assert_eq!(login(old).await, 401);
    let refresh_token = |session: &Value| {
        session["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_owned()
    };
    let refreshed = crate::identity::refresh(&env, &api, &refresh_token(&phone)).await;
    assert_eq!(refreshed.status(), 401, "the other session ended");
    let refreshed = crate::identity::refresh(&env, &api, &refresh_token(&laptop)).await;
    assert_eq!(refreshed.status(), 200, "the changing one goes on");
    let staged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_credential_changes WHERE credential_id = 'committed'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(staged, 0, "the staged hash was taken");

    // An event naming a credential nobody staged would record a change that did not happen.
    assert!(env
        .append_raw(
            "admin_user",
            &cy,
            &tenant,
            json!({"PasswordChanged": {"credential": "invented"}})
        )
        .await
        .is_err());
    api.stop().await;
}

#[tokio::test]
async fn a_token_a_refresh_issued_while_its_session_was_being_revoked_is_refused() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let email = "dee@revocations.example";
    let _ = tenant_admin(&env, &api, &root, email).await;
    let first = tokens(&env, &api, email, "a long and private password").await;
    let rotated = crate::identity::refresh(
        &env,
        &api,
        first["refresh_token"].as_str().expect("refresh"),
    )
    .await;
    assert_eq!(rotated.status(), 200);
    let rotated: Value = rotated.json().await.expect("json");
    let straggler = rotated["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    // A logout racing that refresh revoked every token it could see, but not the one the
    // refresh was inserting: the family has a revoked token and an active one.
    let sid = env
        .keys
        .claims(&access(&first))
        .expect("claims")
        .sid
        .expect("sid");
    sqlx::query(
        "UPDATE admin_sessions SET status = 'revoked' WHERE session_id = $1 AND status = 'spent'",
    )
    .bind(&sid)
    .execute(&env.pool)
    .await
    .expect("the race's leftover");
    for _ in 0..2 {
        let refused = crate::identity::refresh(&env, &api, &straggler).await;
        assert_eq!(refused.status(), 401, "the ended family gives nothing more");
    }
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM admin_sessions WHERE session_id = $1 AND status <> 'revoked'",
    )
    .bind(&sid)
    .fetch_one(&env.pool)
    .await
    .expect("count");
    assert_eq!(active, 0, "the straggler is revoked too");
    api.stop().await;
}

#[tokio::test]
async fn a_login_that_commits_just_before_a_deactivation_keeps_no_session() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let root = root_token(&env, &api).await;
    let (tenant, eve) = tenant_admin(&env, &api, &root, "eve@revocations.example").await;
    // A login stages its session before its command runs, as command-api does; its
    // `LoginSucceeded` commits, and the deactivation is appended right after it.
    let sessions = command_api::identity::sessions::Sessions::new(
        env.pool.clone(),
        Duration::from_secs(86_400),
    );
    let refresh_token = sessions.stage(&eve, "raced-session").await.expect("staged");
    assert_eq!(
        crate::identity::refresh(&env, &api, &refresh_token)
            .await
            .status(),
        401,
        "a staged session is nothing before its login commits"
    );
    for event in [
        json!({"LoginSucceeded": {"session_id": "raced-session", "at": chrono::Utc::now()}}),
        json!({"Deactivated": {}}),
    ] {
        env.append_raw("admin_user", &eve, &tenant, event)
            .await
            .expect("appended");
    }
    // Reactivated later, the user finds no session of before alive.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{eve}/reactivate"),
            json!({})
        )
        .await,
        200
    );
    assert_eq!(
        crate::identity::refresh(&env, &api, &refresh_token)
            .await
            .status(),
        401,
        "the deactivation ended the session the login had opened"
    );
    api.stop().await;
}

#[tokio::test]
async fn an_open_stream_ends_when_its_user_is_deactivated() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let email = "cy@revocations.example";
    let (_, cy) = tenant_admin(&env, &api, &root, email).await;
    let token = access(&tokens(&env, &api, email, "a long and private password").await);
    let mut stream = env
        .http
        .get(query.url("/v1/stream"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert_eq!(stream.status(), 200);
    // Open: nothing arrives, nothing ends.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.chunk())
            .await
            .is_err(),
        "an open stream waits"
    );
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{cy}/deactivate"),
            json!({})
        )
        .await,
        200
    );
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended after the deactivation");
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_suspended_tenant_is_locked_out_until_reactivated() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let email = "di@revocations.example";
    let password = "a long and private password";
    let (tenant, _) = tenant_admin(&env, &api, &root, email).await;
    let signed_in = tokens(&env, &api, email, password).await;
    let token = access(&signed_in);
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/tenants/{tenant}/suspend"),
            json!({"reason": "unpaid invoices"})
        )
        .await,
        200
    );
    refused_within_a_second(
        "a suspended tenant's admin to be refused writes",
        403,
        "tenant_suspended",
        || invite(&env, &api, &token),
    )
    .await;
    refused_within_a_second(
        "a suspended tenant's admin to be refused reads",
        403,
        "tenant_suspended",
        || read(&env, &query, &token),
    )
    .await;
    // A right password learns of the suspension; a wrong one learns nothing.
    expect_problem(
        crate::identity::login(&env, &api, email, password).await,
        403,
        "tenant_suspended",
    )
    .await;
    expect_problem(
        crate::identity::login(&env, &api, email, "not the password at all").await,
        401,
        "invalid_credentials",
    )
    .await;
    let refresh_token = signed_in["refresh_token"].as_str().expect("refresh");
    expect_problem(
        crate::identity::refresh(&env, &api, refresh_token).await,
        403,
        "tenant_suspended",
    )
    .await;
    // The platform still administers it.
    assert_eq!(read(&env, &query, &root).await.status(), 200);

    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/tenants/{tenant}/reactivate"),
            json!({})
        )
        .await,
        200
    );
    eventually(
        Duration::from_secs(1),
        "the token to work again",
        || async { (read(&env, &query, &token).await.status() == 200).then_some(()) },
    )
    .await;
    // The session survived the suspension: its refresh token was not spent by the refusal.
    assert_eq!(
        crate::identity::refresh(&env, &api, refresh_token)
            .await
            .status(),
        200
    );
    query.stop().await;
    api.stop().await;
}

/// A tenant awaiting approval, or turned down, is locked out as a suspended one is: a super
/// admin may make an admin for a pending tenant, but that admin cannot sign in or act until
/// the tenant is approved; a rejected tenant gets no new users, and the ones it had are
/// locked out.
#[tokio::test]
async fn pending_and_rejected_tenants_are_locked_out_like_suspended_ones() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let password = "a long and private password";
    let signup = |slug: &'static str| {
        let (env, api) = (&env, &api);
        async move {
            let answer = env
                .http
                .post(api.url("/v1/tenants/signup"))
                .json(&crate::support::tenant_body(slug))
                .send()
                .await
                .expect("sent");
            assert_eq!(answer.status(), 201);
            answer.json::<Value>().await.expect("json")["id"]
                .as_str()
                .expect("id")
                .to_owned()
        }
    };
    let make_admin = |tenant: String, email: &'static str| {
        let (env, api, root) = (&env, &api, &root);
        async move {
            env.http
                .post(api.url("/v1/admin-users"))
                .bearer_auth(root)
                .json(&json!({"email": email, "password": password, "tenant_id": tenant, "role": "tenant_admin"}))
                .send()
                .await
                .expect("sent")
        }
    };

    // Pending: the admin exists but cannot sign in, and a token minted for the tenant is
    // refused on both APIs.
    let pending = signup("awaiting-approval").await;
    let email = "pat@pending.example";
    assert_eq!(make_admin(pending.clone(), email).await.status(), 201);
    expect_problem(
        crate::identity::login(&env, &api, email, password).await,
        403,
        "tenant_suspended",
    )
    .await;
    let minted = env.admin_of(&pending);
    expect_problem(invite(&env, &api, &minted).await, 403, "tenant_suspended").await;
    expect_problem(read(&env, &query, &minted).await, 403, "tenant_suspended").await;
    // Approved: at once it works.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/tenants/{pending}/approve"),
            json!({})
        )
        .await,
        200
    );
    eventually(Duration::from_secs(1), "the login to work", || async {
        let answer = crate::identity::login(&env, &api, email, password).await;
        (answer.status() == 200).then_some(())
    })
    .await;
    assert_eq!(invite(&env, &api, &minted).await.status(), 201);

    // Rejected: its admin (made while it was pending) is locked out, and it gets no more.
    let turned_down = signup("turned-down").await;
    let email = "rex@rejected.example";
    assert_eq!(make_admin(turned_down.clone(), email).await.status(), 201);
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/tenants/{turned_down}/reject"),
            json!({"reason": "not a real business"})
        )
        .await,
        200
    );
    expect_problem(
        make_admin(turned_down.clone(), "another@rejected.example").await,
        422,
        "tenant_rejected",
    )
    .await;
    expect_problem(
        crate::identity::login(&env, &api, email, password).await,
        403,
        "tenant_suspended",
    )
    .await;
    let minted = env.admin_of(&turned_down);
    expect_problem(invite(&env, &api, &minted).await, 403, "tenant_suspended").await;
    let open = env
        .http
        .post(api.url("/v1/chat/threads"))
        .bearer_auth(env.agent_of(&turned_down))
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    expect_problem(open, 403, "tenant_suspended").await;
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_tenant_that_switches_its_chatbot_off_stops_its_customers_tokens_at_once() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "botoff").await;
    let customer = env.phone_user(&tenant, "phone-botoff");
    let agent = env.agent_of(&tenant);
    let open = || {
        env.http
            .post(api.url("/v1/chat/threads"))
            .bearer_auth(&customer)
            .json(&json!({}))
            .send()
    };
    let inbox = |token: &str| {
        env.http
            .get(query.url("/v1/chat/threads"))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(open().await.expect("sent").status(), 201);
    let preferences = format!("/v1/tenants/{tenant}/preferences");
    let switch = |enabled: bool| {
        as_root(
            &env,
            &api,
            &root,
            &preferences,
            json!({"chatbot": {"enabled": enabled}}),
        )
    };
    assert_eq!(switch(false).await, 200);
    refused_within_a_second(
        "a customer's token refused for writes",
        403,
        "chatbot_disabled",
        || async { open().await.expect("sent") },
    )
    .await;
    refused_within_a_second(
        "a customer's token refused for reads",
        403,
        "chatbot_disabled",
        || async { inbox(&customer).await.expect("sent") },
    )
    .await;
    refused_within_a_second(
        "a customer's realtime sign-in refused",
        403,
        "chatbot_disabled",
        || realtime_auth(&env, &query, &customer, &tenant),
    )
    .await;
    let stream = env
        .http
        .get(query.url("/v1/stream"))
        .bearer_auth(&customer)
        .send()
        .await
        .expect("sent");
    expect_problem(stream, 403, "chatbot_disabled").await;
    // The tenant's staff work on.
    assert_eq!(inbox(&agent).await.expect("sent").status(), 200);
    assert_eq!(switch(true).await, 200);
    eventually(
        Duration::from_secs(1),
        "the customer's token to work again",
        || async { (open().await.ok()?.status() == 201).then_some(()) },
    )
    .await;
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_revocation_made_while_the_listener_was_down_is_seen_after_it_reconnects() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let email = "ed@revocations.example";
    let (_, ed) = tenant_admin(&env, &api, &root, email).await;
    let token = access(&tokens(&env, &api, email, "a long and private password").await);
    assert_eq!(read(&env, &query, &token).await.status(), 200);
    // Cut every listening connection of this database (both processes'), and deactivate
    // in the same breath: the notification may reach no one, the reload must find it.
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND query ILIKE 'LISTEN%access_changes%'",
    )
    .execute(&env.pool)
    .await
    .expect("terminated");
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{ed}/deactivate"),
            json!({})
        )
        .await,
        200
    );
    eventually(
        Duration::from_secs(3),
        "the reconnected query API to refuse the token",
        || async { (read(&env, &query, &token).await.status() == 401).then_some(()) },
    )
    .await;
    eventually(Duration::from_secs(3), "both listeners back", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
              WHERE datname = current_database() AND query ILIKE 'LISTEN%access_changes%'",
        )
        .fetch_one(&env.pool)
        .await
        .ok()?;
        (n >= 2).then_some(())
    })
    .await;
    assert_eq!(read(&env, &query, &root).await.status(), 200);
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn revoked_sessions_lose_their_soketi_connections_and_unsigned_connections_are_closed() {
    use crate::live::Client;
    let env = TestEnv::new().await;
    let soketi = crate::support::Soketi::start().await;
    let api = with_root(&env).await;
    let projector = env.spawn_projector(soketi.projector_config(env.projector_config()));
    let query = env.spawn_query_api(env.query_config()).await;
    let root = root_token(&env, &api).await;
    let email = "fay@revocations.example";
    let (tenant, fay) = tenant_admin(&env, &api, &root, email).await;
    let laptop = tokens(&env, &api, email, "a long and private password").await;
    let phone = tokens(&env, &api, email, "a long and private password").await;

    // The authenticator signs as the Pusher library does, naming the session.
    let signed: Value = env
        .http
        .post(query.url("/realtime/user-auth"))
        .bearer_auth(access(&laptop))
        .form(&[("socket_id", "123.456")])
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let user_data = signed["user_data"].as_str().expect("user data");
    let user: Value = serde_json::from_str(user_data).expect("json");
    assert!(
        user["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("session-")),
        "{user}"
    );
    assert_eq!(
        signed,
        crate::realtime::library_user_answer("123.456", user_data)
    );
    let channel = format!("presence-tenant-{tenant}");
    let mut laptop_client = Client::start(
        soketi.port,
        &query,
        &access(&laptop),
        std::slice::from_ref(&channel),
        None,
    )
    .await;
    let mut phone_client = Client::start(
        soketi.port,
        &query,
        &access(&phone),
        std::slice::from_ref(&channel),
        None,
    )
    .await;
    for client in [&mut laptop_client, &mut phone_client] {
        client.next("signed in", |v| v["type"] == "signed_in").await;
        client.subscribed(&[&channel]).await;
    }
    // A connection that never signs in is closed by Soketi.
    let mut unsigned = Client::spawn(&json!({
        "host": "127.0.0.1", "port": soketi.port, "key": crate::support::SOKETI_KEY,
        "authEndpoint": query.url("/realtime/auth"), "token": access(&laptop), "channels": [],
    }));
    unsigned
        .next("connected", |v| v["type"] == "connected")
        .await;
    unsigned
        .next("the unsigned connection closed", |v| v["type"] == "state")
        .await;

    // Logout ends the laptop's connection, not the phone's.
    let out = env
        .http
        .post(api.url("/auth/admin/logout"))
        .bearer_auth(access(&laptop))
        .send()
        .await
        .expect("sent");
    assert!(out.status().is_success());
    laptop_client
        .next("the logged-out session's connection ended", |v| {
            v["type"] == "state"
        })
        .await;
    let phone_lines = phone_client.drain(Duration::from_millis(500)).await;
    assert!(
        phone_lines.iter().all(|v| v["type"] != "state"),
        "the other session stays connected: {phone_lines:?}"
    );
    // Deactivation ends the rest, and the user cannot sign in again.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{fay}/deactivate"),
            json!({})
        )
        .await,
        200
    );
    phone_client
        .next("the deactivated user's connection ended", |v| {
            v["type"] == "state"
        })
        .await;
    refused_within_a_second(
        "a deactivated user's sign-in to be refused",
        401,
        "token_revoked",
        || {
            let request = env
                .http
                .post(query.url("/realtime/user-auth"))
                .bearer_auth(access(&phone))
                .form(&[("socket_id", "123.456")]);
            async move { request.send().await.expect("sent") }
        },
    )
    .await;
    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// A TCP proxy to PostgreSQL that can go silent: while cut, it forwards nothing and closes
/// nothing, as a dropped route or a forgetful firewall does.
struct SilentProxy {
    port: u16,
    open: tokio::sync::watch::Sender<bool>,
}

impl SilentProxy {
    async fn start(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bound");
        let port = listener.local_addr().expect("addr").port();
        let (open, _) = tokio::sync::watch::channel(true);
        let gate = open.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [(cr, sw), (sr, cw)].map(|(r, w)| (r, w)) {
                    let mut gate = gate.subscribe();
                    tokio::spawn(async move {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            let n = match from.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            // Cut: what arrived is held until the route is back, and
                            // nobody is told (as TCP over a dead route).
                            if gate.wait_for(|open| *open).await.is_err() {
                                return;
                            }
                            if to.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        SilentProxy { port, open }
    }

    fn cut(&self, cut: bool) {
        self.open.send_replace(!cut);
    }
}

#[tokio::test]
async fn a_listener_cut_off_silently_fails_closed_and_catches_up() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let proxy = SilentProxy::start("127.0.0.1:5432".parse().expect("addr")).await;
    let mut config = env.query_config();
    let via_proxy =
        env.database_url
            .replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port), 1);
    assert_ne!(
        via_proxy, env.database_url,
        "the database is reached through the proxy"
    );
    config.database_url = Some(via_proxy);
    let query = env.spawn_query_api(config).await;
    let root = root_token(&env, &api).await;
    let email = "gus@revocations.example";
    let _ = tenant_admin(&env, &api, &root, email).await;
    let token = access(&tokens(&env, &api, email, "a long and private password").await);
    assert_eq!(read(&env, &query, &token).await.status(), 200);

    // The route to PostgreSQL goes silent, and the token is revoked meanwhile: the query API
    // cannot hear it, so it must stop vouching for tokens at all.
    proxy.cut(true);
    let out = env
        .http
        .post(api.url("/auth/admin/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("sent");
    assert!(out.status().is_success());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Signing a realtime connection in needs no database: only the revocations stand in
    // the way, and they cannot be vouched for.
    let sign_in = env
        .http
        .post(query.url("/realtime/user-auth"))
        .bearer_auth(&token)
        .form(&[("socket_id", "123.456")])
        .send()
        .await
        .expect("sent");
    assert_eq!(
        sign_in.status(),
        503,
        "a revoked token was served while cut off"
    );
    // The route comes back: the listener is replaced, the table reloaded, the token refused.
    proxy.cut(false);
    eventually(
        Duration::from_secs(60),
        "the revocation caught up",
        || async { (read(&env, &query, &token).await.status() == 401).then_some(()) },
    )
    .await;
    query.stop().await;
    api.stop().await;
}

/// A stand-in for Soketi's HTTP API that accepts and records every call, and a projector
/// configuration that sends to it.
async fn soketi_stand_in(env: &TestEnv) -> (wiremock::MockServer, projector::Config) {
    use wiremock::matchers::method;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let soketi = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"ok\":true}"))
        .mount(&soketi)
        .await;
    let mut config = env.projector_config();
    config.ctx.realtime.soketi_url = Some(soketi.uri());
    config.ctx.realtime.soketi_app_id = Some(crate::support::SOKETI_APP_ID.into());
    config.ctx.realtime.soketi_app_key = Some(crate::support::SOKETI_KEY.into());
    config.ctx.realtime.soketi_app_secret = Some(crate::support::SOKETI_SECRET.into());
    (soketi, config)
}

/// A tenant's suspension disconnects its chatbot users too: the projector finds them by their
/// verified sign-ins in the event store (not in `phone_users`, nor in a read model that may
/// lag), including one who signed in a moment before.
#[tokio::test]
async fn a_suspended_tenants_chatbot_users_are_disconnected() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (soketi, config) = soketi_stand_in(&env).await;
    let projector = env.spawn_projector(config);
    let root = root_token(&env, &api).await;
    let (tenant, _) = tenant_admin(&env, &api, &root, "ivy@revocations.example").await;
    let phone = "+33611223344";
    assert_eq!(
        crate::identity::request_code(&env, &api, &tenant, phone)
            .await
            .status(),
        202
    );
    let code = crate::identity::code_from_inbox(&env, &query, phone).await;
    let signed_in: Value = env
        .http
        .post(api.url("/auth/phone/verify"))
        .json(&json!({"tenant_id": tenant, "phone": phone, "code": code}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let user = signed_in["user"]["id"]
        .as_str()
        .expect("user id")
        .to_owned();
    // Suspended at once, whatever the read models have seen of the sign-in.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/tenants/{tenant}/suspend"),
            json!({"reason": "unpaid invoices"})
        )
        .await,
        200
    );
    let wanted = format!("/users/phone-{user}/terminate_connections");
    eventually(
        Duration::from_secs(20),
        "the chatbot user disconnected",
        || async {
            let paths: Vec<String> = soketi
                .received_requests()
                .await?
                .iter()
                .map(|r| r.url.path().to_owned())
                .collect();
            paths.iter().any(|p| p.ends_with(&wanted)).then_some(())
        },
    )
    .await;
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn eviction_ends_only_sessions_that_may_still_hold_a_token() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let (soketi, config) = soketi_stand_in(&env).await;
    let projector = env.spawn_projector(config);
    let root = root_token(&env, &api).await;
    let email = "hal@revocations.example";
    let (_, hal) = tenant_admin(&env, &api, &root, email).await;
    // A long history: a thousand sessions that ended days ago, whose tokens are long dead.
    sqlx::query(
        "INSERT INTO admin_sessions (token_hash, session_id, user_id, status, created_at, expires_at)
         SELECT sha256(('old' || n)::bytea), 'old-' || n, $1, 'revoked',
                now() - interval '3 days', now() + interval '27 days'
           FROM generate_series(1, 1000) n",
    )
    .bind(&hal)
    .execute(&env.pool)
    .await
    .expect("history");
    let laptop = tokens(&env, &api, email, "a long and private password").await;
    let phone = tokens(&env, &api, email, "a long and private password").await;
    let changed = env
        .http
        .post(api.url("/auth/admin/password"))
        .bearer_auth(access(&laptop))
        .json(&json!({"current_password": "a long and private password", "new_password": "a new and private password"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(changed.status(), 204);
    let claims = env.keys.claims(&access(&phone)).expect("claims");
    let phone_session = format!("session-{}", claims.sid.expect("sid"));
    eventually(Duration::from_secs(20), "the eviction", || async {
        let paths: Vec<String> = soketi
            .received_requests()
            .await?
            .iter()
            .map(|r| r.url.path().to_owned())
            .filter(|p| p.ends_with("/terminate_connections"))
            .collect();
        (!paths.is_empty()).then_some(paths)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let terminated: Vec<String> = soketi
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .map(|r| r.url.path().to_owned())
        .filter(|p| p.ends_with("/terminate_connections"))
        .collect();
    assert!(
        terminated.iter().any(|p| p.contains(&phone_session)),
        "the other live session's connections end: {terminated:?}"
    );
    assert!(
        terminated.len() <= 2 && terminated.iter().all(|p| !p.contains("session-old-")),
        "nothing of the dead history: {} calls",
        terminated.len()
    );
    projector.abort();
    api.stop().await;
}

/// The delivery channels of the realtime events that carried `text` (a `message.created`)
/// to the Soketi `mock`, if any was sent.
async fn deliveries(
    mock: &wiremock::MockServer,
    text: &str,
) -> Option<std::collections::BTreeSet<String>> {
    let mut channels = std::collections::BTreeSet::new();
    let mut seen = false;
    for request in mock.received_requests().await? {
        let Ok(body) = serde_json::from_slice::<Value>(&request.body) else {
            continue;
        };
        for item in body["batch"].as_array().into_iter().flatten() {
            let data: Value = serde_json::from_str(item["data"].as_str().unwrap_or("null")).ok()?;
            if item["name"] == "message.created" && data["message"]["text"] == text {
                seen = true;
                for c in item["channels"].as_array().into_iter().flatten() {
                    channels.insert(c.as_str().unwrap_or_default().to_owned());
                }
            }
        }
    }
    seen.then_some(channels)
}

/// [`deliveries`], once there are some.
async fn delivered_to(
    mock: &wiremock::MockServer,
    text: &str,
) -> std::collections::BTreeSet<String> {
    eventually(
        Duration::from_secs(20),
        &format!("the delivery of {text:?}"),
        || deliveries(mock, text),
    )
    .await
}

#[tokio::test]
async fn realtime_events_reach_only_the_sessions_and_customers_allowed_now() {
    let env = TestEnv::new().await;
    let api = with_root(&env).await;
    let (soketi, config) = soketi_stand_in(&env).await;
    let projector = env.spawn_projector(config);
    let root = root_token(&env, &api).await;
    let email = "ivy@revocations.example";
    let (tenant, ivy) = tenant_admin(&env, &api, &root, email).await;
    let laptop = access(&tokens(&env, &api, email, "a long and private password").await);
    let phone = access(&tokens(&env, &api, email, "a long and private password").await);
    let (_, agent) = crate::support::staff_session(&env, &api, &tenant, "agent").await;
    let (other_tenant, _) = crate::support::create_tenant(&env, &api, "elsewhere").await;
    let (_, foreign) = crate::support::staff_session(&env, &api, &other_tenant, "agent").await;
    let member = |token: &str| {
        let sid = env.keys.claims(token).expect("claims").sid.expect("sid");
        format!("#server-to-user-session-{sid}")
    };
    let customer = env.phone_user(&tenant, "phone-ivy");
    let customer_channel = "#server-to-user-phone-phone-ivy".to_owned();
    let opened = env
        .http
        .post(api.url("/v1/chat/threads"))
        .bearer_auth(&customer)
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(opened.status(), 201);
    let thread = opened.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let say = |token: &str, text: &'static str| {
        let request = env
            .http
            .post(api.url(&format!("/v1/chat/threads/{thread}/messages")))
            .bearer_auth(token)
            .json(&json!({ "text": text }));
        async move {
            let r = request.send().await.expect("sent");
            let status = r.status();
            assert_eq!(
                status,
                201,
                "{text}: {}",
                r.text().await.unwrap_or_default()
            );
        }
    };

    say(&customer, "one").await;
    let all = [
        member(&laptop),
        member(&phone),
        member(&agent),
        customer_channel.clone(),
    ];
    assert_eq!(
        delivered_to(&soketi, "one").await,
        all.iter().cloned().collect(),
        "every live session of the tenant's staff and the thread's customer, no one else \
         (not {})",
        member(&foreign)
    );

    // A logout: that session gets nothing more, whether or not its sockets were closed.
    let out = env
        .http
        .post(api.url("/auth/admin/logout"))
        .bearer_auth(&laptop)
        .send()
        .await
        .expect("sent");
    assert!(out.status().is_success());
    say(&customer, "two").await;
    assert_eq!(
        delivered_to(&soketi, "two").await,
        [member(&phone), member(&agent), customer_channel.clone()]
            .into_iter()
            .collect()
    );

    // A deactivation: none of the user's sessions.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/admin-users/{ivy}/deactivate"),
            json!({})
        )
        .await,
        200
    );
    say(&customer, "three").await;
    assert_eq!(
        delivered_to(&soketi, "three").await,
        [member(&agent), customer_channel.clone()]
            .into_iter()
            .collect()
    );

    // A suspended tenant: nobody of its own, until it is reactivated.
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/tenants/{tenant}/suspend"),
            json!({"reason": "unpaid"})
        )
        .await,
        200
    );
    say(&root, "four").await;
    // Delivery decides at delivery time: wait until the worker is past "four".
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = $1")
        .bind(&thread)
        .fetch_one(&env.pool)
        .await
        .expect("count");
    eventually(Duration::from_secs(20), "the worker past four", || async {
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT sequence FROM projection_checkpoints
              WHERE projection = 'realtime' AND aggregate_id = $1",
        )
        .bind(&thread)
        .fetch_optional(&env.pool)
        .await
        .ok()?;
        (done? >= events).then_some(())
    })
    .await;
    assert_eq!(
        as_root(
            &env,
            &api,
            &root,
            &format!("/v1/tenants/{tenant}/reactivate"),
            json!({})
        )
        .await,
        200
    );
    say(&root, "five").await;
    assert_eq!(
        delivered_to(&soketi, "five").await,
        [member(&agent), customer_channel].into_iter().collect()
    );
    // The worker handles a thread's events in order: "four" came before "five", to nobody.
    assert_eq!(deliveries(&soketi, "four").await, None);
    projector.abort();
    api.stop().await;
}

#[tokio::test]
async fn signing_in_beyond_the_session_limit_ends_the_least_recently_used_session() {
    use crate::identity::{ROOT_EMAIL, ROOT_PASSWORD};
    let env = TestEnv::new().await;
    let mut config = env.command_config();
    config.ctx.identity.admin_bootstrap_email = Some(ROOT_EMAIL.into());
    config.ctx.identity.admin_bootstrap_password = Some(ROOT_PASSWORD.into());
    config.ctx.identity.sessions_per_user = 2;
    let api = env.spawn_command_api(config).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(tokens(&env, &api, ROOT_EMAIL, ROOT_PASSWORD).await);
    }
    let profile = |session: &Value| {
        let request = env
            .http
            .get(api.url("/auth/admin/profile"))
            .bearer_auth(access(session));
        async move { request.send().await.expect("sent") }
    };
    refused_within_a_second("the oldest session to end", 401, "token_revoked", || {
        profile(&sessions[0])
    })
    .await;
    expect_problem(
        crate::identity::refresh(
            &env,
            &api,
            sessions[0]["refresh_token"].as_str().expect("refresh"),
        )
        .await,
        401,
        "invalid_refresh_token",
    )
    .await;
    for newer in &sessions[1..] {
        assert_eq!(profile(newer).await.status(), 200);
    }
    // Recorded as an event, which closes the session's realtime connections and shows in the
    // audit trail.
    let oldest = env
        .keys
        .claims(&access(&sessions[0]))
        .expect("claims")
        .sid
        .expect("sid");
    let recorded: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'admin_user' AND event_type = 'SessionRevoked'",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert_eq!(
        recorded,
        vec![json!({"SessionRevoked": {"session_id": oldest, "reason": "session_limit"}})]
    );
    api.stop().await;
}
