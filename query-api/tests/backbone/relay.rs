//! The relay: every committed event reaches JetStream, in transaction order, once, with the
//! agreed subject and `Nats-Msg-Id` — also with concurrent writers and after a crash.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use command_api::relay::{ensure_stream, Relay};
use events::http::Metrics;
use futures::StreamExt;
use sqlx::Connection;

use crate::support::{eventually, TestEnv};

fn relay(env: &TestEnv) -> Relay {
    relay_reading(env, 512, Arc::new(Metrics::default()))
}

/// A relay of the test's stream reading `batch` events at a time.
fn relay_reading(env: &TestEnv, batch: i64, metrics: Arc<Metrics>) -> Relay {
    Relay::new(
        env.pool.clone(),
        env.js.clone(),
        env.stream.clone(),
        env.prefix.clone(),
        batch,
        metrics,
    )
}

/// A relay running in the background that polls every `idle_poll` when nothing wakes it.
fn start_relay(env: &TestEnv, idle_poll: Duration) -> (Arc<Metrics>, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(Metrics::default());
    let relay = relay_reading(env, 512, metrics.clone()).with_idle_poll(idle_poll);
    (
        metrics,
        tokio::spawn(relay.run(Arc::new(tokio::sync::Notify::new()))),
    )
}

/// The `Nats-Msg-Id` of every message in the test's stream, in stream order.
pub(crate) async fn message_ids(env: &TestEnv) -> Vec<String> {
    stream_messages(env)
        .await
        .into_iter()
        .map(|(_, id)| id)
        .collect()
}

/// Every message in the test's stream, in stream order: `(subject, Nats-Msg-Id)`.
pub(crate) async fn stream_messages(env: &TestEnv) -> Vec<(String, String)> {
    stream_contents(env)
        .await
        .into_iter()
        .map(|m| {
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.to_string())
                .unwrap_or_default();
            (m.subject.to_string(), id)
        })
        .collect()
}

/// Every message in the test's stream, in stream order.
pub(crate) async fn stream_contents(env: &TestEnv) -> Vec<async_nats::jetstream::Message> {
    let stream = env.js.get_stream(&env.stream).await.expect("stream exists");
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let pending = consumer.cached_info().num_pending as usize;
    if pending == 0 {
        return Vec::new();
    }
    let mut messages = consumer
        .fetch()
        .max_messages(pending)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .expect("fetch");
    let mut out = Vec::new();
    while let Some(m) = messages.next().await {
        out.push(m.expect("message"));
    }
    out
}

/// Steps until `expected` events are published (a commit is visible to the relay's next
/// statement, not always to the one running).
async fn publish_all(relay: &Relay, leader: &mut command_api::relay::Leader, expected: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut published = 0;
    loop {
        published += relay.step(leader).await.expect("step");
        if published >= expected || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(published, expected, "published exactly the expected events");
}

/// Reads until a read holds at least `events` entries or fails (a commit is visible to the
/// relay's next statement, not always to the one running), for at most 10 s.
async fn read_at_least(
    relay: &Relay,
    leader: &mut command_api::relay::Leader,
    events: usize,
) -> Result<Vec<command_api::relay::Entry>, command_api::relay::RelayError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match relay.read_batch(leader).await {
            Ok(batch) if batch.len() < events && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            other => return other,
        }
    }
}

/// Leads as soon as the previous leader's session (and so its lock) is gone.
async fn take_over(relay: &Relay) -> command_api::relay::Leader {
    eventually(
        Duration::from_secs(10),
        "the lock to be released",
        || async { relay.try_lead().await.expect("db") },
    )
    .await
}

/// A test environment whose stream exists.
async fn env_with_stream() -> TestEnv {
    let env = TestEnv::new().await;
    ensure_stream(&env.js, &env.stream, &env.prefix)
        .await
        .expect("stream");
    env
}

/// Appends one tenant event the way postgres-es does, inside `tx`.
pub(crate) async fn append(tx: &mut sqlx::PgConnection, tenant: &str, sequence: i64) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('tenant', $1, $2, 'Renamed', '1.0', '{\"Renamed\": {\"name\": \"x\"}}', jsonb_build_object('tenant_id', $1::text))",
    )
    .bind(tenant)
    .bind(sequence)
    .execute(tx)
    .await
    .expect("append");
}

#[tokio::test]
async fn published_events_carry_subject_and_message_id() {
    let env = env_with_stream().await;
    let relay = relay(&env);
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "tenant-a", 1).await;
    append(&mut conn, "tenant-a", 2).await;
    drop(conn);
    let mut leader = relay.try_lead().await.expect("db").expect("leads");
    publish_all(&relay, &mut leader, 2).await;
    assert_eq!(
        relay.step(&mut leader).await.expect("step"),
        0,
        "nothing twice"
    );
    let p = &env.prefix;
    assert_eq!(
        stream_messages(&env).await,
        vec![
            (
                format!("{p}.tenant-a.tenant.Renamed"),
                "tenant:tenant-a:1".to_owned()
            ),
            (
                format!("{p}.tenant-a.tenant.Renamed"),
                "tenant:tenant-a:2".to_owned()
            ),
        ]
    );
}

#[tokio::test]
async fn a_slower_transaction_with_a_lower_position_is_not_skipped() {
    let env = env_with_stream().await;
    let relay = relay(&env);
    let mut leader = relay.try_lead().await.expect("db").expect("leads");

    // A takes the lower global position, then B commits first.
    let mut a = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("conn a");
    let mut b = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("conn b");
    let mut tx_a = a.begin().await.expect("begin a");
    append(&mut tx_a, "slow", 1).await;
    let mut tx_b = b.begin().await.expect("begin b");
    append(&mut tx_b, "fast", 1).await;
    tx_b.commit().await.expect("commit b");

    // While A is in flight, B is above the horizon: publishing it now and moving the
    // checkpoint past A's position is exactly how A would be lost.
    assert_eq!(relay.step(&mut leader).await.expect("step"), 0);
    tx_a.commit().await.expect("commit a");
    publish_all(&relay, &mut leader, 2).await;

    let ids: Vec<String> = message_ids(&env).await;
    assert_eq!(
        ids,
        vec!["tenant:slow:1".to_owned(), "tenant:fast:1".to_owned()]
    );
    let positions: Vec<(String, i64)> =
        sqlx::query_as("SELECT aggregate_id, global_position FROM events ORDER BY global_position")
            .fetch_all(&env.pool)
            .await
            .expect("positions");
    assert_eq!(
        positions[0].0, "slow",
        "the slow one holds the lower position"
    );
}

#[tokio::test]
async fn a_crash_between_publish_and_checkpoint_republishes_without_duplicates() {
    let env = env_with_stream().await;
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "crashy", 1).await;
    drop(conn);
    {
        let first = relay(&env);
        let mut leader = first.try_lead().await.expect("db").expect("leads");
        let batch = read_at_least(&first, &mut leader, 1).await.expect("read");
        assert_eq!(batch.len(), 1, "the event passed the horizon");
        let (acked, _, outcome) = first.publish(&batch).await;
        outcome.expect("published");
        assert!(acked.is_some());
        // Dies here: the checkpoint is never written, and the lock goes with the connection.
    }
    let second = relay(&env);
    let mut leader = take_over(&second).await;
    publish_all(&second, &mut leader, 1).await;
    assert_eq!(
        stream_messages(&env).await.len(),
        1,
        "JetStream dropped the duplicate"
    );
}

#[tokio::test]
async fn only_one_relay_is_active_and_its_checkpoint_never_goes_back() {
    let env = env_with_stream().await;
    let one = relay(&env);
    let two = relay(&env);
    let mut leader = one.try_lead().await.expect("db").expect("first leads");
    assert!(
        two.try_lead().await.expect("db").is_none(),
        "second stands by"
    );

    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "steady", 1).await;
    drop(conn);
    publish_all(&one, &mut leader, 1).await;
    let stored = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT global_position FROM relay_checkpoints WHERE stream = $1",
        )
        .bind(&env.stream)
        .fetch_one(&env.pool)
        .await
        .expect("checkpoint")
    };
    let position = stored().await;
    one.save_checkpoint(&mut leader, Default::default())
        .await
        .expect("save");
    assert_eq!(
        stored().await,
        position,
        "an older checkpoint does not overwrite a newer one"
    );
    drop(leader);
    let mut next = take_over(&two).await;
    assert_eq!(
        two.step(&mut next).await.expect("step"),
        0,
        "resumes after the checkpoint"
    );
}

#[tokio::test]
async fn the_stream_is_created_and_updated_idempotently() {
    let env = TestEnv::new().await;
    // An operator made the stream by hand: a one-hour age limit (theirs to choose) and a
    // de-duplication window too short for the relay (the relay's to fix).
    env.js
        .create_stream(async_nats::jetstream::stream::Config {
            name: env.stream.clone(),
            subjects: vec![format!("{}.>", env.prefix)],
            duplicate_window: Duration::from_secs(5),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        })
        .await
        .expect("created by hand");
    for _ in 0..2 {
        ensure_stream(&env.js, &env.stream, &env.prefix)
            .await
            .expect("ensured");
    }
    let mut stream = env.js.get_stream(&env.stream).await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.subjects, vec![format!("{}.>", env.prefix)]);
    assert_eq!(
        config.duplicate_window,
        command_api::relay::DUPLICATE_WINDOW
    );
    assert_eq!(
        config.max_age,
        Duration::from_secs(3600),
        "the operator's setting stays"
    );
}

#[tokio::test]
async fn an_absent_stream_is_created_with_the_relays_settings() {
    let env = TestEnv::new().await;
    ensure_stream(&env.js, &env.stream, &env.prefix)
        .await
        .expect("created");
    let mut stream = env.js.get_stream(&env.stream).await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.subjects, vec![format!("{}.>", env.prefix)]);
    assert_eq!(
        config.duplicate_window,
        command_api::relay::DUPLICATE_WINDOW
    );
    assert_eq!(
        config.storage,
        async_nats::jetstream::stream::StorageType::File
    );
}

#[tokio::test]
async fn a_transaction_holding_the_horizon_shows_as_relay_lag() {
    let env = env_with_stream().await;
    let (metrics, task) = start_relay(&env, Duration::from_millis(20));
    // An open event-writing transaction older than the event holds the horizon.
    let mut holder = sqlx::PgConnection::connect(&env.database_url)
        .await
        .expect("conn");
    let mut held = holder.begin().await.expect("begin");
    append(&mut held, "holder", 1).await;
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "held", 1).await;
    let lag = |m: &Metrics| -> f64 {
        let prefix = format!("relay_lag_seconds{{stream=\"{}\"}} ", env.stream);
        m.render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.parse().ok()))
            .unwrap_or(0.0)
    };
    eventually(Duration::from_secs(10), "the lag to show", || async {
        (lag(&metrics) >= 0.2).then_some(())
    })
    .await;
    assert!(
        stream_messages(&env).await.is_empty(),
        "nothing published past the horizon"
    );
    held.rollback().await.expect("release the horizon");
    eventually(
        Duration::from_secs(10),
        "the event published and the lag gone",
        || async { (lag(&metrics) < 0.2 && stream_messages(&env).await.len() == 1).then_some(()) },
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn a_commit_in_a_standby_process_wakes_the_idle_leader() {
    let env = env_with_stream().await;
    // Polling once an hour: only a wake-up can publish within the test's patience.
    let (metrics, task) = start_relay(&env, Duration::from_secs(3600));
    eventually(
        Duration::from_secs(10),
        "the relay to lead and listen",
        || async {
            let leading = metrics
                .render()
                .contains(&format!("relay_leader{{stream=\"{}\"}} 1", env.stream));
            // Leading comes just before LISTEN; give it a moment.
            tokio::time::sleep(Duration::from_millis(50)).await;
            leading.then_some(())
        },
    )
    .await;
    // A second process: its relay stands by, and its command bus signals `wake` after each
    // commit.
    let wake = Arc::new(tokio::sync::Notify::new());
    let standby = tokio::spawn(relay(&env).run(wake.clone()));
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "elsewhere", 1).await;
    wake.notify_one();
    eventually(
        Duration::from_secs(10),
        "the event on the stream",
        || async {
            if !stream_messages(&env).await.is_empty() {
                return Some(());
            }
            // Another test's transaction may have held the horizon at the first wake-up; later
            // commits in that process wake the relay again, as they would in production.
            wake.notify_one();
            None
        },
    )
    .await;
    standby.abort();
    task.abort();
}

#[tokio::test]
async fn transaction_ids_crossing_a_power_of_ten_are_published_in_numeric_order() {
    let env = env_with_stream().await;
    // A store whose transaction ids cross 10 and 100, as a real one crosses 10⁶ and 10⁷:
    // explicit ids stand for them. One event per read, as when a backlog exceeds a batch.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, transaction_id)
         SELECT 'tenant', id, 1, 'Renamed', '1.0', '{\"Renamed\": {\"name\": \"x\"}}',
                jsonb_build_object('tenant_id', id), xid::xid8
           FROM (VALUES ('hundred', '100'), ('ten', '10'), ('nine', '9')) AS v(id, xid)",
    )
    .execute(&env.pool)
    .await
    .expect("append");
    let relay = relay_reading(&env, 1, Arc::new(Metrics::default()));
    let mut leader = relay.try_lead().await.expect("db").expect("leads");
    publish_all(&relay, &mut leader, 3).await;
    let ids: Vec<String> = message_ids(&env).await;
    assert_eq!(
        ids,
        vec!["tenant:nine:1", "tenant:ten:1", "tenant:hundred:1"],
        "every event, by transaction id as a number"
    );
}

/// Appends an event of `tenant` with `payload` as it stands, inside `conn`.
async fn append_payload(conn: &mut sqlx::PgConnection, tenant: &str, sequence: i64, payload: &str) {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('tenant', $1, $2, 'Renamed', '1.0', $3::jsonb, jsonb_build_object('tenant_id', $1::text))",
    )
    .bind(tenant)
    .bind(sequence)
    .bind(payload)
    .execute(conn)
    .await
    .expect("append");
}

#[tokio::test]
async fn an_event_that_cannot_be_read_or_published_is_quarantined_and_the_others_still_go_out() {
    let env = env_with_stream().await;
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "tenant-a", 1).await;
    // Stored as the probe found it: nested past what a JSON reader decodes.
    let deep = format!("{{\"Renamed\": {}1{}}}", "[".repeat(140), "]".repeat(140));
    append_payload(&mut conn, "tenant-poison", 1, &deep).await;
    // Larger than the bus takes in one message.
    let huge = format!(
        "{{\"Renamed\": {{\"name\": \"{}\"}}}}",
        "x".repeat(1_100_000)
    );
    append_payload(&mut conn, "tenant-huge", 1, &huge).await;
    append(&mut conn, "tenant-b", 1).await;
    append(&mut conn, "tenant-a", 2).await;
    drop(conn);
    let metrics = Arc::new(Metrics::default());
    let relay = relay_reading(&env, 512, metrics.clone());
    let mut leader = relay.try_lead().await.expect("db").expect("leads");
    publish_all(&relay, &mut leader, 3).await;
    assert_eq!(
        message_ids(&env).await,
        vec![
            "tenant:tenant-a:1",
            "tenant:tenant-b:1",
            "tenant:tenant-a:2"
        ],
        "every event after the unpublishable ones went out, in order"
    );
    let quarantined: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT aggregate_id, reason, tenant_id FROM quarantined_events
          WHERE stream = $1 AND acknowledged_at IS NULL ORDER BY global_position",
    )
    .bind(&env.stream)
    .fetch_all(&env.pool)
    .await
    .expect("quarantine");
    assert_eq!(
        quarantined,
        vec![
            (
                "tenant-poison".to_owned(),
                "unreadable".to_owned(),
                "tenant-poison".to_owned()
            ),
            (
                "tenant-huge".to_owned(),
                "too_large".to_owned(),
                "tenant-huge".to_owned()
            ),
        ]
    );
    assert!(
        metrics
            .render()
            .contains("relay_events_quarantined_total{stream="),
        "the quarantine is counted for alerting"
    );
    // Later events keep flowing, and the quarantined ones are not tried again.
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "tenant-b", 2).await;
    drop(conn);
    publish_all(&relay, &mut leader, 1).await;
    assert_eq!(message_ids(&env).await.len(), 4);
}

/// The relay publishes the envelope PostgreSQL writes as it is, except a large one, which it
/// writes compactly: PostgreSQL's text of `jsonb` spells numbers out in full, so an event
/// the store took (its size is measured compact) would otherwise be too large for the bus.
#[tokio::test]
async fn envelopes_go_out_as_stored_and_a_large_one_compact() {
    let env = env_with_stream().await;
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "tenant-small", 1).await;
    // 4,000 × 1e300: 24 KB written compactly, 1.2 MB as PostgreSQL spells it out.
    let numbers = vec!["1e300"; 4_000].join(",");
    let large = format!("{{\"Renamed\": {{\"name\": \"n\", \"scores\": [{numbers}]}}}}");
    append_payload(&mut conn, "tenant-large", 1, &large).await;
    drop(conn);
    let relay = relay(&env);
    let mut leader = relay.try_lead().await.expect("db").expect("leads");
    publish_all(&relay, &mut leader, 2).await;
    let bodies: Vec<_> = stream_contents(&env)
        .await
        .into_iter()
        .map(|m| m.payload.to_vec())
        .collect();
    assert_eq!(bodies.len(), 2, "both went out, none quarantined");
    let small: events::Envelope = serde_json::from_slice(&bodies[0]).expect("an envelope");
    assert_eq!(small.aggregate_id, "tenant-small");
    assert!(
        bodies[1].len() < 64 * 1024,
        "compact: {} bytes",
        bodies[1].len()
    );
    let large: events::Envelope = serde_json::from_slice(&bodies[1]).expect("an envelope");
    let scores = large.payload["Renamed"]["scores"]
        .as_array()
        .expect("scores");
    assert_eq!(scores.len(), 4_000);
    assert_eq!(scores[0].as_f64(), Some(1e300));
}

/// A stored event whose metadata is not text by name (written past the command bus) is one
/// no consumer decodes: the relay stops and says so, wherever it falls in a read, rather
/// than publish what every projector would refuse.
#[tokio::test]
async fn an_envelope_no_consumer_decodes_stops_the_relay_wherever_it_falls() {
    let env = env_with_stream().await;
    let mut conn = env.pool.acquire().await.expect("conn");
    append(&mut conn, "tenant-a", 1).await;
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
         VALUES ('tenant', 'tenant-odd', 1, 'Renamed', '1.0', '{\"Renamed\": {\"name\": \"x\"}}',
                 '{\"tenant_id\": \"tenant-odd\", \"attempt\": 2}')",
    )
    .execute(&mut *conn)
    .await
    .expect("append");
    drop(conn);
    let relay = relay(&env);
    let mut leader = relay.try_lead().await.expect("db").expect("leads");
    let outcome = read_at_least(&relay, &mut leader, 2).await;
    assert!(
        matches!(outcome, Err(command_api::relay::RelayError::Corrupt(..))),
        "{outcome:?}"
    );
}
