//! Realtime: the channel authorizer signs exactly as the Pusher protocol (and the Pusher
//! server library) does, and refuses channels a token may not join.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{
    create_tenant, eventually, expect_problem, realtime_tools, TestEnv, SOKETI_APP_ID, SOKETI_KEY,
    SOKETI_SECRET,
};

/// What the `pusher` library answers for the same request.
fn library_answer(socket_id: &str, channel: &str, presence: Option<&str>) -> Value {
    let mut args = vec![SOKETI_APP_ID, SOKETI_KEY, SOKETI_SECRET, socket_id, channel];
    args.extend(presence);
    pusher_library(&args)
}

/// What the `pusher` library answers for a user signing in with `user_data`.
pub(crate) fn library_user_answer(socket_id: &str, user_data: &str) -> Value {
    pusher_library(&[
        "--user",
        SOKETI_APP_ID,
        SOKETI_KEY,
        SOKETI_SECRET,
        socket_id,
        user_data,
    ])
}

/// Runs scripts/realtime/authorize.js with `args` and answers what it printed.
fn pusher_library(args: &[&str]) -> Value {
    let output = std::process::Command::new("node")
        .current_dir(realtime_tools())
        .arg("authorize.js")
        .args(args)
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("json")
}

#[tokio::test]
async fn the_authorizer_signs_as_the_pusher_library_and_refuses_strangers() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "signed").await;
    let (other, _) = create_tenant(&env, &api, "unsigned").await;
    let customer = env.phone_user(&tenant, "phone-cy");
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
    let agent = env.agent_of(&tenant);
    eventually(Duration::from_secs(20), "the thread projected", || async {
        let r = env
            .http
            .get(query.url(&format!("/v1/chat/threads/{thread}")))
            .bearer_auth(&agent)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let form = |token: &str, socket: &str, channel: &str| {
        env.http
            .post(query.url("/realtime/auth"))
            .bearer_auth(token)
            .form(&[("socket_id", socket), ("channel_name", channel)])
            .send()
    };
    // Private channels, form-encoded as pusher-js sends them.
    for (token, channel) in [
        (&customer, format!("private-thread-{thread}")),
        (&agent, format!("private-thread-{thread}")),
    ] {
        let answer = form(token, "1234.5678", &channel).await.expect("sent");
        assert_eq!(answer.status(), 200, "{channel}");
        let answer: Value = answer.json().await.expect("json");
        assert_eq!(
            answer,
            library_answer("1234.5678", &channel, None),
            "{channel}"
        );
    }
    // A presence channel, as JSON on the alias: the member data is signed with the channel.
    let presence = format!("presence-tenant-{tenant}");
    let answer: Value = env
        .http
        .post(query.url("/chat/realtime/auth"))
        .bearer_auth(&agent)
        .json(&json!({"socket_id": "99.1", "channel_name": presence}))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let data = answer["channel_data"].as_str().expect("channel data");
    let member: Value = serde_json::from_str(data).expect("json");
    assert_eq!(member["user_id"], format!("agent-of-{tenant}"));
    assert_eq!(member["user_info"]["role"], "agent");
    assert_eq!(answer, library_answer("99.1", &presence, Some(data)));

    // Refusals: 403 for channels of ours the token may not join, 400 for the rest.
    let stranger = env.phone_user(&tenant, "phone-dee");
    let foreign = env.agent_of(&other);
    let refused = [
        (
            &foreign,
            format!("private-thread-{thread}"),
            "1.1",
            403,
            "channel_forbidden",
        ),
        // Events are delivered to signed-in members, never on these channels, so nobody
        // joins them (a subscription would outlive the access that authorised it).
        (
            &agent,
            format!("private-tenant-{tenant}"),
            "1.1",
            400,
            "invalid_channel",
        ),
        (
            &customer,
            "private-user-phone-cy".to_owned(),
            "1.1",
            400,
            "invalid_channel",
        ),
        (
            &foreign,
            format!("presence-tenant-{tenant}"),
            "1.1",
            403,
            "channel_forbidden",
        ),
        (
            &stranger,
            format!("private-thread-{thread}"),
            "1.1",
            403,
            "channel_forbidden",
        ),
        (
            &customer,
            format!("presence-tenant-{tenant}"),
            "1.1",
            403,
            "channel_forbidden",
        ),
        (
            &agent,
            format!("private-thread-{}", uuid::Uuid::new_v4()),
            "1.1",
            403,
            "channel_forbidden",
        ),
        (
            &agent,
            "private-orders".to_owned(),
            "1.1",
            400,
            "invalid_channel",
        ),
        (
            &agent,
            "my-channel".to_owned(),
            "1.1",
            400,
            "invalid_channel",
        ),
        (
            &agent,
            format!("private-tenant-{tenant}"),
            "1234",
            400,
            "invalid_socket_id",
        ),
        (
            &agent,
            format!("private-tenant-{tenant}"),
            "1.1:private-x",
            400,
            "invalid_socket_id",
        ),
    ];
    for (token, channel, socket, status, code) in refused {
        expect_problem(
            form(token, socket, &channel).await.expect("sent"),
            status,
            code,
        )
        .await;
    }
    // Signing in: a chatbot user as itself; an admin token without a session cannot (events
    // follow sessions).
    let signin = |token: &str| {
        env.http
            .post(query.url("/realtime/user-auth"))
            .bearer_auth(token)
            .form(&[("socket_id", "1234.5678")])
            .send()
    };
    let answer: Value = signin(&customer)
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    let user_data = answer["user_data"].as_str().expect("user data");
    let user: Value = serde_json::from_str(user_data).expect("json");
    assert_eq!(user["id"], "phone-phone-cy");
    assert_eq!(answer, library_user_answer("1234.5678", user_data));
    expect_problem(signin(&agent).await.expect("sent"), 403, "session_required").await;

    let anonymous = env
        .http
        .post(query.url("/realtime/auth"))
        .form(&[("socket_id", "1.1"), ("channel_name", "private-user-x")])
        .send()
        .await
        .expect("sent");
    expect_problem(anonymous, 401, "unauthenticated").await;

    let config: Value = env
        .http
        .get(query.url("/chat/realtime/config"))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(config["key"], SOKETI_KEY);
    assert_eq!(config["enabled"], true);
    assert_eq!(config["auth_endpoint"], "/realtime/auth");
    assert!(config.get("secret").is_none());
    let page = env
        .http
        .get(query.url("/realtime/watch"))
        .send()
        .await
        .expect("sent");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/html"));
    let policy = page.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let page = page.text().await.expect("text");
    assert!(page.contains("/v1/stream") && page.contains("/v1/chat/threads/"));
    // Only the page's own inline script may run (by its hash), and never in a frame.
    let script = page
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map(|(body, _)| body)
        .expect("an inline script");
    let hash = crate::support::py(
        "import sys, hashlib, base64\nprint(base64.b64encode(hashlib.sha256(sys.stdin.read().encode()).digest()).decode())",
        script,
        &[],
    );
    assert!(
        policy.contains(&format!("script-src 'sha256-{hash}'")),
        "{policy}"
    );
    assert!(policy.contains("frame-ancestors 'none'") && policy.contains("default-src 'none'"));

    projector.abort();
    query.stop().await;
    api.stop().await;
}
