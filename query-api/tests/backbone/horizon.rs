//! The commit horizon depends only on transactions that write events (migration 0020,
//! docs/decisions/0003-event-writers.md): a long transaction of anybody else, in another
//! database or in this one, never delays publishing; a stuck event writer delays it only
//! until its timeout; and under concurrent writers from two command-api instances every
//! event reaches the stream once, in commit order.

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::{Connection, PgConnection};

use crate::relay::{append, message_ids};
use crate::support::{create_tenant, eventually, server_url, TestEnv};

/// A transaction that wrote a row and stays open until dropped (rolled back).
async fn open_write_transaction(url: &str, table: &str) -> PgConnection {
    let mut conn = PgConnection::connect(url).await.expect("holder connects");
    sqlx::query("BEGIN")
        .execute(&mut conn)
        .await
        .expect("begin");
    sqlx::query(&format!("INSERT INTO {table} VALUES (1)"))
        .execute(&mut conn)
        .await
        .expect("insert");
    conn
}

/// With `holder` open (its write older than anything the test does next), a tenant created
/// through command-api is visible through query-api within the usual wait.
async fn a_command_is_visible_while(env: &TestEnv, holder: &mut PgConnection) {
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let mut config = env.query_config();
    config.read_wait_ms = 5_000;
    let query = env.spawn_query_api(config).await;
    let started = Instant::now();
    let (id, version) = create_tenant(env, &api, "while-held").await;
    let detail = env
        .http
        .get(query.url(&format!("/v1/tenants/{id}?min_version={version}")))
        .bearer_auth(env.super_admin())
        .send()
        .await
        .expect("sent");
    assert_eq!(detail.status(), 200);
    assert!(
        detail.headers().get("x-read-stale").is_none(),
        "visible within the wait, not after the other transaction ({:?})",
        started.elapsed()
    );
    let detail: Value = detail.json().await.expect("json");
    assert_eq!(detail["slug"], "while-held");
    let open: Option<String> = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
        .fetch_one(&mut *holder)
        .await
        .expect("the holder still answers");
    assert!(
        open.is_some(),
        "the other transaction stayed open throughout"
    );
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_long_write_transaction_in_another_database_does_not_delay_publishing() {
    let env = TestEnv::new().await;
    let other = format!("{}_other", env.db_name);
    let mut admin = PgConnection::connect(&server_url()).await.expect("admin");
    sqlx::query(&format!("CREATE DATABASE {other}"))
        .execute(&mut admin)
        .await
        .expect("another application's database");
    let other_url = format!("{}/{other}", server_url().rsplit_once('/').expect("url").0);
    {
        let mut setup = PgConnection::connect(&other_url).await.expect("connect");
        sqlx::query("CREATE TABLE t (x int)")
            .execute(&mut setup)
            .await
            .expect("its table");
    }
    let mut holder = open_write_transaction(&other_url, "t").await;
    a_command_is_visible_while(&env, &mut holder).await;
    drop(holder);
    sqlx::query(&format!("DROP DATABASE {other} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("dropped");
}

#[tokio::test]
async fn a_long_write_transaction_on_another_table_does_not_delay_publishing() {
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE unrelated (x int)")
        .execute(&env.pool)
        .await
        .expect("a table of its own");
    let mut holder = open_write_transaction(&env.database_url, "unrelated").await;
    a_command_is_visible_while(&env, &mut holder).await;
}

#[tokio::test]
async fn an_event_writer_that_wrote_something_else_first_must_announce_itself() {
    let env = TestEnv::new().await;
    sqlx::query("CREATE TABLE side (x int)")
        .execute(&env.pool)
        .await
        .expect("table");
    let mut conn = PgConnection::connect(&env.database_url)
        .await
        .expect("conn");
    // Its transaction id predates any announcement: refused, nothing appended.
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("INSERT INTO side VALUES (1)")
        .execute(&mut *tx)
        .await
        .expect("side write");
    let refused = sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('tenant', 'late', 1, 'Renamed', '1.0', '{}', '{\"tenant_id\": \"late\"}')",
    )
    .execute(&mut *tx)
    .await
    .expect_err("an unannounced writer is refused");
    assert!(
        refused.to_string().contains("announce itself"),
        "says why: {refused}"
    );
    tx.rollback().await.expect("rollback");

    // Announced first, the same transaction is accepted and holds the horizon while open.
    let mut tx = conn.begin().await.expect("begin");
    sqlx::query("SELECT events_writer_announce()")
        .execute(&mut *tx)
        .await
        .expect("announce");
    sqlx::query("INSERT INTO side VALUES (1)")
        .execute(&mut *tx)
        .await
        .expect("side write");
    append(&mut tx, "announced", 1).await;
    let own: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *tx)
        .await
        .expect("xid");
    let horizon: String = sqlx::query_scalar("SELECT events_commit_horizon()::text")
        .fetch_one(&env.pool)
        .await
        .expect("horizon");
    assert!(
        horizon.parse::<u64>().expect("xid8") <= own.parse::<u64>().expect("xid8"),
        "the open writer holds the horizon at or below its id ({horizon} > {own})"
    );
    tx.commit().await.expect("commit");
    let horizon: String = sqlx::query_scalar("SELECT events_commit_horizon()::text")
        .fetch_one(&env.pool)
        .await
        .expect("horizon");
    assert!(
        horizon.parse::<u64>().expect("xid8") > own.parse::<u64>().expect("xid8"),
        "committed, it is below the horizon"
    );
}

/// A connection whose event-writing transactions are bounded at one second.
async fn impatient_writer(env: &TestEnv) -> PgConnection {
    let mut conn = PgConnection::connect(&env.database_url)
        .await
        .expect("conn");
    sqlx::query("SET events.writer_timeout = '1s'")
        .execute(&mut conn)
        .await
        .expect("set");
    conn
}

#[tokio::test]
async fn a_stuck_event_writer_holds_publishing_back_only_until_its_idle_timeout() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    // A writer appends, then hangs without committing (a stuck client).
    let mut stuck = impatient_writer(&env).await;
    sqlx::query("BEGIN")
        .execute(&mut stuck)
        .await
        .expect("begin");
    append(&mut stuck, "stuck", 1).await;
    let (id, version) = create_tenant(&env, &api, "after-stuck").await;
    eventually(Duration::from_secs(15), "the tenant visible", || async {
        let r = env
            .http
            .get(query.url(&format!("/v1/tenants/{id}?min_version={version}")))
            .bearer_auth(env.super_admin())
            .send()
            .await
            .ok()?;
        (r.status() == 200 && r.headers().get("x-read-stale").is_none()).then_some(())
    })
    .await;
    let gone = sqlx::query("SELECT 1")
        .execute(&mut stuck)
        .await
        .expect_err("the stuck writer's session was ended by the server");
    assert!(
        gone.to_string().contains("idle-in-transaction") || gone.as_database_error().is_none(),
        "ended for idling in its transaction: {gone}"
    );
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = 'stuck'")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(kept, 0, "its event rolled back with it");
    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_slow_statement_of_an_event_writer_is_cancelled_at_its_timeout() {
    let env = TestEnv::new().await;
    let mut slow = impatient_writer(&env).await;
    sqlx::query("BEGIN")
        .execute(&mut slow)
        .await
        .expect("begin");
    append(&mut slow, "slow", 1).await;
    let started = Instant::now();
    let cancelled = sqlx::query("SELECT pg_sleep(60)")
        .execute(&mut slow)
        .await
        .expect_err("cancelled");
    assert_eq!(
        cancelled
            .as_database_error()
            .and_then(|e| e.code())
            .as_deref(),
        Some("57014"),
        "statement timeout: {cancelled}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "long before 60 s"
    );
    // Statements outside an event-writing transaction keep the session's own setting.
    sqlx::query("ROLLBACK")
        .execute(&mut slow)
        .await
        .expect("rollback");
    sqlx::query("SELECT pg_sleep(1.5)")
        .execute(&mut slow)
        .await
        .expect("not an event writer: not bounded");
}

#[tokio::test]
async fn two_command_api_instances_publish_every_event_once_in_commit_order() {
    let env = TestEnv::new().await;
    // Both run a relay: one leads, the other forwards its commits to it.
    let one = env.spawn_command_api(env.command_config()).await;
    let two = env.spawn_command_api(env.command_config()).await;
    // Another application's long transaction stays open throughout.
    let mut unrelated = PgConnection::connect(&server_url()).await.expect("conn");
    sqlx::query("BEGIN")
        .execute(&mut unrelated)
        .await
        .expect("begin");
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut unrelated)
        .await
        .expect("xid");
    let mut tenants = Vec::new();
    for i in 0..4 {
        let api = if i % 2 == 0 { &one } else { &two };
        tenants.push(create_tenant(&env, api, &format!("writer-{i}")).await.0);
    }
    // Slow writers hold a lower position while faster ones commit after it.
    let slow = async {
        let mut conn = PgConnection::connect(&env.database_url)
            .await
            .expect("conn");
        for sequence in 1..=5 {
            let mut tx = conn.begin().await.expect("begin");
            append(&mut tx, "slow-writer", sequence).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
            tx.commit().await.expect("commit");
        }
    };
    let (env_ref, tenants_ref, one_ref, two_ref) = (&env, &tenants, &one, &two);
    let renames = futures::future::join_all((0..120).map(|n| {
        let api = if n % 2 == 0 { one_ref } else { two_ref };
        let tenant = &tenants_ref[n % tenants_ref.len()];
        let env = env_ref;
        async move {
            env.http
                .post(api.url(&format!("/v1/tenants/{tenant}/rename")))
                .bearer_auth(env.super_admin())
                .json(&serde_json::json!({ "name": format!("Name {n}") }))
                .send()
                .await
                .expect("sent")
                .status()
        }
    }));
    let ((), statuses) = tokio::join!(slow, renames);
    assert!(
        statuses.iter().all(|s| s.is_success() || s.as_u16() == 409),
        "each rename landed or met a concurrent one: {statuses:?}"
    );
    let expected: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_type || ':' || aggregate_id || ':' || sequence FROM events
          ORDER BY transaction_id, global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    assert!(expected.len() >= 4 + 5 + 60, "{} events", expected.len());
    let published = eventually(Duration::from_secs(20), "every event published", || async {
        let ids = message_ids(&env).await;
        (ids.len() >= expected.len()).then_some(ids)
    })
    .await;
    assert_eq!(
        published, expected,
        "each event once, in the store's commit order"
    );
    sqlx::query("ROLLBACK")
        .execute(&mut unrelated)
        .await
        .expect("rollback");
    one.stop().await;
    two.stop().await;
}
