//! Threads never stay with an agent who left or a department that was removed: the
//! projector's reassignment worker puts them back in the queue, once, with the reason in
//! the thread and on the live stream; assigning to either is refused.

use std::time::Duration;

use serde_json::{json, Value};

use crate::chat::post;
use crate::live::Stream;
use crate::support::{create_tenant, eventually, expect_problem, Service, TestEnv, SECRET};

/// A projector that runs the process managers (they act through command-api).
fn projector_config(env: &TestEnv, api: &Service) -> projector::Config {
    let mut config = env.projector_config();
    config.nest_auth_secret = Some(SECRET.into());
    config.command_api_url = api.url("");
    config
}

/// A tenant with department `sales` and agent `kim`: `(tenant, admin token, kim's id)`.
async fn tenant_with_agent(
    env: &TestEnv,
    api: &Service,
    query: &Service,
) -> (String, String, String) {
    let (tenant, _) = create_tenant(env, api, "reassigned").await;
    let admin = env.admin_of(&tenant);
    let added = post(
        env,
        api,
        &admin,
        &format!("/v1/tenants/{tenant}/departments"),
        json!({"name": "sales"}),
    )
    .await;
    assert_eq!(added.status(), 200);
    let made = post(
        env,
        api,
        &admin,
        "/v1/admin-users",
        json!({"email": "kim@reassigned.example", "password": "a long enough password", "role": "agent"}),
    )
    .await;
    assert_eq!(made.status(), 201);
    let kim = made.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Reads below wait for the tenant in the read model.
    eventually(Duration::from_secs(20), "the tenant projected", || async {
        let r = env
            .http
            .get(query.url(&format!("/v1/tenants/{tenant}")))
            .bearer_auth(&admin)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    (tenant, admin, kim)
}

/// Opens a thread and assigns it to `agent` in `department`.
async fn assigned_thread(
    env: &TestEnv,
    api: &Service,
    admin: &str,
    agent: Option<&str>,
    department: Option<&str>,
) -> String {
    let opened = post(env, api, admin, "/v1/chat/threads", json!({})).await;
    assert_eq!(opened.status(), 201);
    let thread = opened.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    if agent.is_some() || department.is_some() {
        let assigned = post(
            env,
            api,
            admin,
            &format!("/v1/chat/threads/{thread}/assign"),
            json!({"agent_id": agent, "department": department}),
        )
        .await;
        assert_eq!(
            assigned.status(),
            200,
            "{}",
            assigned.text().await.unwrap_or_default()
        );
    }
    thread
}

/// The thread as the query API shows it to staff, once `ready` accepts it.
async fn thread_once(
    env: &TestEnv,
    query: &Service,
    token: &str,
    thread: &str,
    what: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    eventually(Duration::from_secs(20), what, || async {
        let t: Value = env
            .http
            .get(query.url(&format!("/v1/chat/threads/{thread}")))
            .bearer_auth(token)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        ready(&t).then_some(t)
    })
    .await
}

/// The `Assigned` events the platform appended to `thread`.
async fn releases(env: &TestEnv, thread: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE aggregate_type = 'thread' AND aggregate_id = $1
            AND event_type = 'Assigned' AND payload -> 'Assigned' ? 'reason'",
    )
    .bind(thread)
    .fetch_one(&env.pool)
    .await
    .expect("count")
}

/// Waits until the reassignment worker has passed a fresh event of the tenant (a department
/// added): everything before it has been handled.
async fn worker_caught_up(env: &TestEnv, api: &Service, admin: &str, tenant: &str, marker: &str) {
    let added = post(
        env,
        api,
        admin,
        &format!("/v1/tenants/{tenant}/departments"),
        json!({ "name": marker }),
    )
    .await;
    assert_eq!(added.status(), 200);
    let version: i64 = sqlx::query_scalar(
        "SELECT max(sequence) FROM events WHERE aggregate_type = 'tenant' AND aggregate_id = $1",
    )
    .bind(tenant)
    .fetch_one(&env.pool)
    .await
    .expect("version");
    eventually(Duration::from_secs(20), "the worker past the marker", || async {
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT sequence FROM projection_checkpoints
              WHERE projection = 'reassignment' AND aggregate_type = 'tenant' AND aggregate_id = $1",
        )
        .bind(tenant)
        .fetch_optional(&env.pool)
        .await
        .ok()?;
        (done? >= version).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_deactivated_agents_open_threads_go_back_to_the_queue_once_and_live() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(projector_config(&env, &api));
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, admin, kim) = tenant_with_agent(&env, &api, &query).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(assigned_thread(&env, &api, &admin, Some(&kim), Some("sales")).await);
    }
    let closed = assigned_thread(&env, &api, &admin, Some(&kim), None).await;
    let closing = post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{closed}/close"),
        json!({}),
    )
    .await;
    assert_eq!(closing.status(), 200);
    let unassigned = assigned_thread(&env, &api, &admin, None, None).await;
    for thread in open.iter().chain([&closed, &unassigned]) {
        thread_once(&env, &query, &admin, thread, "the thread projected", |_| {
            true
        })
        .await;
    }
    let mut stream = Stream::open(&env, &query, &admin, None).await;

    let deactivated = post(
        &env,
        &api,
        &admin,
        &format!("/v1/admin-users/{kim}/deactivate"),
        json!({}),
    )
    .await;
    assert_eq!(deactivated.status(), 200);
    for thread in &open {
        let t = thread_once(
            &env,
            &query,
            &admin,
            thread,
            "the thread back in the queue",
            |t| t["agent_id"].is_null(),
        )
        .await;
        assert_eq!(t["department"], "sales", "its department's queue");
        assert_eq!(t["assignment_reason"], "agent_unavailable");
    }
    // The dashboard saw it happen.
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < open.len() {
        let sse = stream
            .next(Duration::from_secs(20))
            .await
            .expect("thread.assigned on the live stream");
        if sse.event == "thread.assigned" {
            assert_eq!(sse.data["reason"], "agent_unavailable");
            assert!(sse.data["agent_id"].is_null());
            seen.insert(
                sse.data["thread_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
        }
    }
    // No one may be given a thread now...
    expect_problem(
        post(
            &env,
            &api,
            &admin,
            &format!("/v1/chat/threads/{unassigned}/assign"),
            json!({"agent_id": kim}),
        )
        .await,
        422,
        "agent_unavailable",
    )
    .await;
    // ...and an assignment that slipped past (a race with the deactivation) is taken back,
    // like a closed thread of theirs that is reopened.
    env.append_raw(
        "thread",
        &unassigned,
        &tenant,
        json!({"Assigned": {"agent_id": kim, "department": null}}),
    )
    .await
    .expect("a raced assignment");
    let reopened = post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{closed}/reopen"),
        json!({}),
    )
    .await;
    assert_eq!(reopened.status(), 200);
    for thread in [&unassigned, &closed] {
        thread_once(
            &env,
            &query,
            &admin,
            thread,
            "the late thread released",
            |t| t["agent_id"].is_null() && t["assignment_reason"] == "agent_unavailable",
        )
        .await;
    }

    // Once: a restart and a pass over everything since add no second release.
    projector.abort();
    let projector = env.spawn_projector(projector_config(&env, &api));
    worker_caught_up(&env, &api, &admin, &tenant, "marker").await;
    for thread in open.iter().chain([&closed, &unassigned]) {
        assert_eq!(releases(&env, thread).await, 1, "released once: {thread}");
    }
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn an_agent_deactivated_while_the_projector_is_down_loses_their_threads_when_it_returns() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(projector_config(&env, &api));
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, admin, kim) = tenant_with_agent(&env, &api, &query).await;
    let mut threads = Vec::new();
    for _ in 0..3 {
        threads.push(assigned_thread(&env, &api, &admin, Some(&kim), None).await);
    }
    worker_caught_up(&env, &api, &admin, &tenant, "before").await;
    projector.abort();
    let deactivated = post(
        &env,
        &api,
        &admin,
        &format!("/v1/admin-users/{kim}/deactivate"),
        json!({}),
    )
    .await;
    assert_eq!(deactivated.status(), 200);
    let projector = env.spawn_projector(projector_config(&env, &api));
    for thread in &threads {
        thread_once(
            &env,
            &query,
            &admin,
            thread,
            "released after the restart",
            |t| t["agent_id"].is_null() && t["assignment_reason"] == "agent_unavailable",
        )
        .await;
    }
    worker_caught_up(&env, &api, &admin, &tenant, "after").await;
    for thread in &threads {
        assert_eq!(releases(&env, thread).await, 1);
    }
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_removed_departments_open_threads_leave_it_and_keep_their_agent() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(projector_config(&env, &api));
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, admin, kim) = tenant_with_agent(&env, &api, &query).await;
    let with_kim = assigned_thread(&env, &api, &admin, Some(&kim), Some("sales")).await;
    let queued = assigned_thread(&env, &api, &admin, None, Some("sales")).await;
    let removed = post(
        &env,
        &api,
        &admin,
        &format!("/v1/tenants/{tenant}/departments/remove"),
        json!({"name": "sales"}),
    )
    .await;
    assert_eq!(removed.status(), 200);
    let t = thread_once(
        &env,
        &query,
        &admin,
        &with_kim,
        "out of the department",
        |t| t["department"].is_null(),
    )
    .await;
    assert_eq!(t["agent_id"], kim.as_str(), "its agent keeps it");
    assert_eq!(t["assignment_reason"], "department_removed");
    thread_once(
        &env,
        &query,
        &admin,
        &queued,
        "out of the department",
        |t| t["department"].is_null() && t["assignment_reason"] == "department_removed",
    )
    .await;
    // The department is gone for new assignments at once (the tenant's own events decide).
    expect_problem(
        post(
            &env,
            &api,
            &admin,
            &format!("/v1/chat/threads/{queued}/assign"),
            json!({"department": "sales"}),
        )
        .await,
        422,
        "unknown_department",
    )
    .await;
    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// A department with users in it is not removed from under them: 422 `department_in_use`
/// until they are moved (the threads of a removed department leave it by themselves).
#[tokio::test]
async fn a_department_with_members_is_not_removed_until_they_are_moved() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(projector_config(&env, &api));
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, admin, kim) = tenant_with_agent(&env, &api, &query).await;
    let move_to = format!("/v1/admin-users/{kim}/department");
    let remove = format!("/v1/tenants/{tenant}/departments/remove");
    let moved = post(
        &env,
        &api,
        &admin,
        &move_to,
        json!({"department": " SALES "}),
    )
    .await;
    assert_eq!(moved.status(), 200);
    let refused = post(&env, &api, &admin, &remove, json!({"name": " sales "})).await;
    expect_problem(refused, 422, "department_in_use").await;
    let moved = post(&env, &api, &admin, &move_to, json!({"department": null})).await;
    assert_eq!(moved.status(), 200);
    let removed = post(&env, &api, &admin, &remove, json!({"name": " sales "})).await;
    assert_eq!(removed.status(), 200);
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn an_agent_given_a_role_that_takes_no_conversations_loses_their_open_threads() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(projector_config(&env, &api));
    let query = env.spawn_query_api(env.query_config()).await;
    let (_, admin, kim) = tenant_with_agent(&env, &api, &query).await;
    let thread = assigned_thread(&env, &api, &admin, Some(&kim), Some("sales")).await;
    // Made a tenant admin: still takes conversations.
    let promoted = post(
        &env,
        &api,
        &env.super_admin(),
        &format!("/v1/admin-users/{kim}/role"),
        json!({"role": "tenant_admin"}),
    )
    .await;
    assert_eq!(promoted.status(), 200);
    // Made a platform super admin: no longer one of the tenant's agents.
    let elevated = post(
        &env,
        &api,
        &env.super_admin(),
        &format!("/v1/admin-users/{kim}/role"),
        json!({"role": "super_admin"}),
    )
    .await;
    assert_eq!(elevated.status(), 200);
    thread_once(&env, &query, &admin, &thread, "released", |t| {
        t["agent_id"].is_null() && t["assignment_reason"] == "agent_unavailable"
    })
    .await;
    assert_eq!(releases(&env, &thread).await, 1, "not for the first change");
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn threads_of_agents_who_left_before_the_worker_existed_are_released_by_its_sweep() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    // The chat read model only: the reassignment worker's consumer does not exist yet (a
    // first deployment, or an upgrade that adds it), and it starts with new events.
    let read_models = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (_, admin, kim) = tenant_with_agent(&env, &api, &query).await;
    let stuck = assigned_thread(&env, &api, &admin, Some(&kim), Some("sales")).await;
    let deactivated = post(
        &env,
        &api,
        &admin,
        &format!("/v1/admin-users/{kim}/deactivate"),
        json!({}),
    )
    .await;
    assert_eq!(deactivated.status(), 200);
    thread_once(
        &env,
        &query,
        &admin,
        &stuck,
        "the assignment projected",
        |t| t["agent_id"] == kim.as_str(),
    )
    .await;
    let worker = projector::chat::reassignment::Reassignment::new(
        env.pool.clone(),
        projector::command_client::CommandClient::new(
            &api.url(""),
            events::access::TokenKeys::new(SECRET),
            "reassignment",
        ),
    );
    assert_eq!(worker.sweep().await.expect("swept"), 1);
    thread_once(&env, &query, &admin, &stuck, "released by the sweep", |t| {
        t["agent_id"].is_null() && t["assignment_reason"] == "agent_unavailable"
    })
    .await;
    // Nothing left to do: a second sweep releases nothing.
    assert_eq!(worker.sweep().await.expect("swept"), 0);
    read_models.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn customers_cannot_filter_their_threads_by_who_handles_them() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "filtered").await;
    let customer = env.phone_user(&tenant, "phone-filter");
    for filter in ["assignee=none", "assignee=me", "department=sales"] {
        let r = env
            .http
            .get(query.url(&format!("/v1/chat/threads?{filter}")))
            .bearer_auth(&customer)
            .send()
            .await
            .expect("sent");
        expect_problem(r, 403, "forbidden").await;
    }
    query.stop().await;
    api.stop().await;
}
