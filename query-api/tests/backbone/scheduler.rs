//! Scheduled messages: the scheduler delivers each due message once, as its author, never a
//! cancelled one, never early, and nothing is lost when the projector restarts.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use events::access::TokenKeys;
use events::clock::{Clock, ManualClock};
use projector::chat::scheduler::{Scheduler, StepReport};
use serde_json::{json, Value};

use crate::support::{create_tenant, eventually, staff_session, Service, TestEnv, SECRET};

async fn post(env: &TestEnv, api: &Service, token: &str, path: &str, body: Value) -> Value {
    let response = env
        .http
        .post(api.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("sent");
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
    response.json().await.expect("json")
}

async fn schedule(
    env: &TestEnv,
    api: &Service,
    token: &str,
    thread: &str,
    text: &str,
    due_at: DateTime<Utc>,
) -> String {
    post(
        env,
        api,
        token,
        &format!("/v1/chat/threads/{thread}/scheduled"),
        json!({"text": text, "due_at": due_at.to_rfc3339()}),
    )
    .await["scheduled_id"]
        .as_str()
        .expect("scheduled id")
        .to_owned()
}

/// The thread's messages, oldest first, as `(text, scheduled_id)`.
async fn messages(
    env: &TestEnv,
    query: &Service,
    token: &str,
    thread: &str,
) -> Vec<(String, String)> {
    let page: Value = env
        .get_json(
            &query.url(&format!("/v1/chat/threads/{thread}/messages")),
            token,
        )
        .await;
    let mut out: Vec<(String, String)> = page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|m| {
                    (
                        m["text"].as_str().unwrap_or_default().to_owned(),
                        m["scheduled_id"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.reverse();
    out
}

#[tokio::test]
async fn the_scheduler_delivers_due_messages_once_on_a_controlled_clock() {
    let env = TestEnv::new().await;
    let t0 = Utc::now();
    let clock = Arc::new(ManualClock::new(t0));
    let api = env
        .spawn_command_api_with_clock(env.command_config(), clock.clone())
        .await;
    // The projector's own scheduler is off (no secret): the test drives one step by step.
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "scheduled").await;
    // A real staff member: a scheduled message goes out only while its author may write.
    let (admin_id, admin) = staff_session(&env, &api, &tenant, "tenant_admin").await;
    let customer = env.phone_user(&tenant, "phone-sch");
    let thread = post(&env, &api, &customer, "/v1/chat/threads", json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let minutes = |m| t0 + chrono::Duration::minutes(m);
    let first = schedule(&env, &api, &admin, &thread, "first", minutes(10)).await;
    schedule(&env, &api, &admin, &thread, "second", minutes(20)).await;
    let cancelled = schedule(&env, &api, &admin, &thread, "cancelled", minutes(10)).await;
    post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{thread}/scheduled/{cancelled}/cancel"),
        json!({}),
    )
    .await;
    let moved = schedule(&env, &api, &admin, &thread, "moved", minutes(5)).await;
    let version = post(
        &env,
        &api,
        &admin,
        &format!("/v1/chat/threads/{thread}/scheduled/{moved}/reschedule"),
        json!({"due_at": minutes(30).to_rfc3339()}),
    )
    .await["version"]
        .as_u64()
        .expect("version");
    let listed = env
        .get_json(
            &query.url(&format!(
                "/v1/chat/threads/{thread}/scheduled?min_version={version}"
            )),
            &admin,
        )
        .await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(4));

    let scheduler = Scheduler::new(
        env.pool.clone(),
        api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    assert_eq!(scheduler.step().await.expect("step"), StepReport::default());
    let next = scheduler.next_due().await.expect("next due").expect("one");
    assert!(
        (next - minutes(10)).num_milliseconds().abs() < 1,
        "the next due time is the first one's"
    );

    clock.set(minutes(10));
    let report = scheduler.step().await.expect("step");
    assert_eq!(
        report.delivered, 1,
        "only the first is due; the cancelled one never"
    );
    let events = env.event_count().await;
    // A restarted scheduler that runs before the read model caught up sends the delivery
    // again: the aggregate appends nothing.
    let restarted = Scheduler::new(
        env.pool.clone(),
        api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    let again = restarted.step().await.expect("step");
    assert!(again.delivered <= 1 && again.failed == 0, "{again:?}");
    assert_eq!(env.event_count().await, events, "delivered once");
    let delivered = eventually(Duration::from_secs(20), "the first delivery", || async {
        let m = messages(&env, &query, &admin, &thread).await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(delivered, [("first".to_owned(), first.clone())]);

    clock.set(minutes(31));
    assert_eq!(scheduler.step().await.expect("step").delivered, 2);
    let all = eventually(Duration::from_secs(20), "every delivery", || async {
        let m = messages(&env, &query, &admin, &thread).await;
        (m.len() == 3).then_some(m)
    })
    .await;
    let texts: Vec<&str> = all.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(texts, ["first", "second", "moved"]);
    let history = env
        .get_json(
            &query.url(&format!("/v1/chat/threads/{thread}/messages")),
            &admin,
        )
        .await;
    assert_eq!(history["items"][0]["author_id"], admin_id.as_str());
    assert_eq!(history["items"][0]["author_kind"], "agent");
    let listed = env
        .get_json(
            &query.url(&format!("/v1/chat/threads/{thread}/scheduled")),
            &admin,
        )
        .await;
    let statuses: Vec<(String, String)> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| {
            (
                s["text"].as_str().unwrap_or_default().to_owned(),
                s["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(statuses.contains(&("cancelled".to_owned(), "cancelled".to_owned())));
    assert_eq!(statuses.iter().filter(|(_, s)| s == "delivered").count(), 3);
    assert_eq!(clock.now(), minutes(31));

    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_message_due_while_the_projector_is_down_is_delivered_when_it_returns() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let query = env.spawn_query_api(env.query_config()).await;
    let mut config = env.projector_config();
    config.nest_auth_secret = Some(SECRET.to_owned());
    config.command_api_url = api.url("");
    let projector = env.spawn_projector(config.clone());
    let (tenant, _) = create_tenant(&env, &api, "restarted").await;
    // A real staff member: a scheduled message goes out only while its author may write.
    let (_, admin) = staff_session(&env, &api, &tenant, "tenant_admin").await;
    let customer = env.phone_user(&tenant, "phone-rst");
    let thread = post(&env, &api, &customer, "/v1/chat/threads", json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let due = Utc::now() + chrono::Duration::seconds(2);
    let id = schedule(&env, &api, &admin, &thread, "wake up", due).await;
    eventually(
        Duration::from_secs(20),
        "the schedule projected",
        || async {
            let listed = env
                .get_json(
                    &query.url(&format!("/v1/chat/threads/{thread}/scheduled")),
                    &admin,
                )
                .await;
            (listed["items"].as_array()?.len() == 1).then_some(())
        },
    )
    .await;
    // The projector dies before the due time and comes back after it.
    projector.abort();
    let _ = projector.await;
    eventually(Duration::from_secs(10), "the due time", || async {
        (Utc::now() > due).then_some(())
    })
    .await;
    let projector = env.spawn_projector(config);
    let delivered = eventually(Duration::from_secs(30), "the delivery", || async {
        let m = messages(&env, &query, &admin, &thread).await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(delivered, [("wake up".to_owned(), id)]);
    let history = env
        .get_json(
            &query.url(&format!("/v1/chat/threads/{thread}/messages")),
            &admin,
        )
        .await;
    let sent_at: DateTime<Utc> = history["items"][0]["sent_at"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("sent_at");
    assert!(sent_at >= due, "never early");

    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_suspended_tenants_due_messages_wait_for_its_reactivation() {
    let env = TestEnv::new().await;
    let t0 = Utc::now();
    let clock = Arc::new(ManualClock::new(t0));
    let api = env
        .spawn_command_api_with_clock(env.command_config(), clock.clone())
        .await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "paused").await;
    // A real staff member: a scheduled message goes out only while its author may write.
    let (_, admin) = staff_session(&env, &api, &tenant, "tenant_admin").await;
    let customer = env.phone_user(&tenant, "phone-paused");
    let thread = post(&env, &api, &customer, "/v1/chat/threads", json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let due = t0 + chrono::Duration::minutes(10);
    schedule(&env, &api, &admin, &thread, "while suspended", due).await;
    let status = |wanted: &'static str| {
        let (env, query, tenant) = (&env, &query, &tenant);
        async move {
            eventually(Duration::from_secs(20), wanted, || async {
                let row = env
                    .get_json(
                        &query.url(&format!("/v1/tenants/{tenant}")),
                        &env.super_admin(),
                    )
                    .await;
                (row["status"] == wanted).then_some(())
            })
            .await
        }
    };
    let root = env.super_admin();
    post(
        &env,
        &api,
        &root,
        &format!("/v1/tenants/{tenant}/suspend"),
        json!({"reason": "unpaid"}),
    )
    .await;
    status("suspended").await;
    let scheduler = Scheduler::new(
        env.pool.clone(),
        api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    clock.set(due + chrono::Duration::minutes(1));
    assert_eq!(scheduler.step().await.expect("step"), StepReport::default());
    assert_eq!(scheduler.next_due().await.expect("next due"), None);
    post(
        &env,
        &api,
        &root,
        &format!("/v1/tenants/{tenant}/reactivate"),
        json!({}),
    )
    .await;
    status("active").await;
    assert_eq!(
        scheduler.step().await.expect("step").delivered,
        1,
        "kept, then sent"
    );
    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// Thread `thread`'s scheduled messages as staff see them.
async fn scheduled(env: &TestEnv, query: &Service, token: &str, thread: &str) -> Vec<Value> {
    env.get_json(
        &query.url(&format!("/v1/chat/threads/{thread}/scheduled")),
        token,
    )
    .await["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn one_tenants_failing_deliveries_hold_back_no_one_and_end_visibly_failed() {
    let env = TestEnv::new().await;
    let t0 = Utc::now();
    let clock = Arc::new(ManualClock::new(t0));
    let api = env
        .spawn_command_api_with_clock(env.command_config(), clock.clone())
        .await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let open = |tenant: String, phone: &'static str| {
        let (env, api) = (&env, &api);
        async move {
            let (_, staff) = staff_session(env, api, &tenant, "tenant_admin").await;
            let customer = env.phone_user(&tenant, phone);
            let thread = post(env, api, &customer, "/v1/chat/threads", json!({})).await["id"]
                .as_str()
                .expect("id")
                .to_owned();
            (staff, thread)
        }
    };
    let (noisy, _) = create_tenant(&env, &api, "noisy").await;
    let (quiet, _) = create_tenant(&env, &api, "quiet").await;
    let mut noisy_threads = Vec::new();
    let mut noisy_staff = String::new();
    for phone in ["phone-noisy-1", "phone-noisy-2", "phone-noisy-3"] {
        let (staff, thread) = open(noisy.clone(), phone).await;
        noisy_staff = staff;
        noisy_threads.push(thread);
    }
    let noisy_thread = noisy_threads[0].clone();
    let (quiet_staff, quiet_thread) = open(quiet, "phone-quiet").await;
    // More due messages in one tenant than the scheduler takes in a step, all due first...
    let failing = 120;
    for n in 0..failing {
        let due = t0 + chrono::Duration::minutes(1);
        let thread = &noisy_threads[n % noisy_threads.len()];
        schedule(&env, &api, &noisy_staff, thread, &format!("n{n}"), due).await;
    }
    // ...and another tenant's, due a second later.
    let due = t0 + chrono::Duration::seconds(61);
    let theirs = schedule(&env, &api, &quiet_staff, &quiet_thread, "on time", due).await;
    eventually(
        Duration::from_secs(30),
        "every schedule projected",
        || async {
            let mut n = 0;
            for thread in &noisy_threads {
                n += scheduled(&env, &query, &noisy_staff, thread).await.len();
            }
            (n == failing).then_some(())
        },
    )
    .await;
    // Every delivery into the noisy tenant's threads fails (its writes are refused: made
    // here, in this test's own database).
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse_deliveries() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'writes refused'; END $$;
         CREATE TRIGGER refuse_deliveries BEFORE INSERT ON events FOR EACH ROW
           WHEN (NEW.metadata->>'tenant_id' = '{noisy}' AND NEW.event_type = 'MessageSent')
           EXECUTE FUNCTION refuse_deliveries();"
    ))
    .execute(&env.pool)
    .await
    .expect("outage");
    let scheduler = Scheduler::new(
        env.pool.clone(),
        api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    clock.set(t0 + chrono::Duration::minutes(2));
    let first = scheduler.step().await.expect("step");
    assert_eq!(
        (first.delivered, first.failed),
        (1, 3),
        "tenants take turns: the other tenant's message goes in the first step; a failing \
         thread waits for the next step after its first failure"
    );
    let delivered = eventually(Duration::from_secs(20), "the other tenant's", || async {
        let m = messages(&env, &query, &quiet_staff, &quiet_thread).await;
        (!m.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(delivered, [("on time".to_owned(), theirs)]);
    // A failed delivery waits before its next try; the rest go meanwhile.
    let (mut tries, mut given_up) = (first.failed, 0);
    loop {
        let report = scheduler.step().await.expect("step");
        if report == StepReport::default() {
            break;
        }
        tries += report.failed;
    }
    assert_eq!(
        tries, failing,
        "each tried once, none twice before its wait"
    );
    // Each keeps failing: tried MAX_FAILURES times in all, then given up.
    for _ in 0..40 {
        if given_up == failing {
            break;
        }
        clock.advance(chrono::Duration::minutes(5));
        loop {
            let report = scheduler.step().await.expect("step");
            if report == StepReport::default() {
                break;
            }
            tries += report.failed + report.given_up;
            given_up += report.given_up;
        }
    }
    assert_eq!(given_up, failing);
    assert_eq!(
        tries,
        failing * projector::chat::scheduler::MAX_FAILURES as usize,
        "never tried more than its waits allow"
    );
    let shown = eventually(Duration::from_secs(30), "shown as failed", || async {
        let items = scheduled(&env, &query, &noisy_staff, &noisy_thread).await;
        items
            .iter()
            .all(|s| s["status"] == "failed")
            .then_some(items)
    })
    .await;
    assert_eq!(shown[0]["failure_code"], "delivery_failed");
    assert!(
        shown[0]["failure"]
            .as_str()
            .is_some_and(|f| f.starts_with("Not delivered after 8 tries: command-api answered")),
        "{}",
        shown[0]
    );
    // Given up, it is not tried again; rescheduled once the outage is over, it goes out at
    // its new time.
    clock.advance(chrono::Duration::minutes(1));
    assert_eq!(scheduler.step().await.expect("step"), StepReport::default());
    sqlx::raw_sql("DROP TRIGGER refuse_deliveries ON events")
        .execute(&env.pool)
        .await
        .expect("outage over");
    let id = shown[0]["id"].as_str().expect("id").to_owned();
    post(
        &env,
        &api,
        &noisy_staff,
        &format!("/v1/chat/threads/{noisy_thread}/scheduled/{id}/reschedule"),
        json!({"due_at": (clock.now() + chrono::Duration::minutes(1)).to_rfc3339()}),
    )
    .await;
    eventually(Duration::from_secs(20), "pending again", || async {
        let items = scheduled(&env, &query, &noisy_staff, &noisy_thread).await;
        items
            .iter()
            .any(|s| s["id"] == id.as_str() && s["status"] == "pending" && s["failure"].is_null())
            .then_some(())
    })
    .await;
    clock.advance(chrono::Duration::minutes(2));
    assert_eq!(scheduler.step().await.expect("step").delivered, 1);

    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_deactivated_authors_scheduled_message_is_not_sent_in_their_name() {
    let env = TestEnv::new().await;
    let t0 = Utc::now();
    let clock = Arc::new(ManualClock::new(t0));
    let api = env
        .spawn_command_api_with_clock(env.command_config(), clock.clone())
        .await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "leaver").await;
    let (agent_id, agent) = staff_session(&env, &api, &tenant, "agent").await;
    let (_, admin) = staff_session(&env, &api, &tenant, "tenant_admin").await;
    let customer = env.phone_user(&tenant, "phone-leaver");
    let thread = post(&env, &api, &customer, "/v1/chat/threads", json!({})).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let due = t0 + chrono::Duration::minutes(30);
    let id = schedule(&env, &api, &agent, &thread, "I'll call you back", due).await;
    // The agent leaves before it is due.
    post(
        &env,
        &api,
        &env.super_admin(),
        &format!("/v1/admin-users/{agent_id}/deactivate"),
        json!({}),
    )
    .await;
    let scheduler = Scheduler::new(
        env.pool.clone(),
        api.url(""),
        TokenKeys::new(SECRET),
        clock.clone(),
    );
    eventually(
        Duration::from_secs(20),
        "the schedule projected",
        || async { (scheduled(&env, &query, &admin, &thread).await.len() == 1).then_some(()) },
    )
    .await;
    clock.set(due + chrono::Duration::seconds(1));
    assert_eq!(scheduler.step().await.expect("step").delivered, 1);
    let shown = eventually(Duration::from_secs(20), "shown as failed", || async {
        let items = scheduled(&env, &query, &admin, &thread).await;
        (items.first()?["status"] == "failed").then_some(items)
    })
    .await;
    assert_eq!(shown[0]["id"], id.as_str());
    assert_eq!(shown[0]["failure_code"], "author_unavailable");
    assert!(messages(&env, &query, &admin, &thread).await.is_empty());

    projector.abort();
    query.stop().await;
    api.stop().await;
}
