//! Group commit against the real store: appends queued together share one transaction in
//! their order, and one command's conflict or refusal never fails the others of its batch.
//!
//! `#[tokio::test]` runs on one thread, so every append of a `join_all` is queued before a
//! writer runs: the writer then takes them all as one batch.

use std::sync::Arc;

use command_api::group_commit::GroupCommit;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use events::http::Metrics;
use futures::future::join_all;
use serde_json::json;

use crate::store::Counter;
use crate::support::TestEnv;

/// Event `sequence` of counter `id`, adding `by`, in tenant `t`.
fn added(id: &str, sequence: usize, by: u64) -> SerializedEvent {
    SerializedEvent::new(
        id.to_owned(),
        sequence,
        "counter".into(),
        "Added".into(),
        "1.0".into(),
        json!({ "Added": { "by": by } }),
        json!({ "tenant_id": "t", "request_id": format!("{id}-{sequence}") }),
    )
}

/// The value of an unlabelled counter in `metrics`' text exposition (0 when absent).
fn counted(metrics: &Metrics, name: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find(|line| line.starts_with(name) && !line.starts_with('#'))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.0)
}

/// Appends each command's events through `appends`, all queued before any is written.
async fn append_together(
    appends: &GroupCommit,
    commands: &[Vec<SerializedEvent>],
) -> Vec<Result<(), PersistenceError>> {
    join_all(
        commands
            .iter()
            .map(|events| appends.persist::<Counter>(events, None)),
    )
    .await
}

/// `(aggregate_id, sequence, by)` of every stored counter event, in store order.
async fn stored(env: &TestEnv) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT aggregate_id, sequence, (payload->'Added'->>'by')::bigint FROM events
          WHERE aggregate_type = 'counter' ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events")
}

#[tokio::test]
async fn commands_queued_together_commit_in_one_transaction_in_their_order() {
    let env = TestEnv::new().await;
    let metrics = Arc::new(Metrics::default());
    let appends = GroupCommit::start(&env.pool, metrics.clone());
    let commands: Vec<_> = (1..=8)
        .map(|n| vec![added(&format!("g{n}"), 1, n), added(&format!("g{n}"), 2, n)])
        .collect();
    for outcome in append_together(&appends, &commands).await {
        outcome.expect("committed");
    }
    let expected: Vec<_> = (1..=8)
        .flat_map(|n| {
            [
                (format!("g{n}"), 1, n as i64),
                (format!("g{n}"), 2, n as i64),
            ]
        })
        .collect();
    assert_eq!(
        stored(&env).await,
        expected,
        "every event once, in queue order"
    );
    let transactions: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT transaction_id) FROM events WHERE aggregate_type = 'counter'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("transactions");
    assert_eq!(transactions, 1, "eight commands, one transaction");
    assert_eq!(counted(&metrics, "event_store_batches_total"), 1.0);
    assert_eq!(counted(&metrics, "event_store_batched_commands_total"), 8.0);
}

#[tokio::test]
async fn a_conflicting_command_fails_alone_and_the_rest_of_its_batch_commits() {
    let env = TestEnv::new().await;
    let metrics = Arc::new(Metrics::default());
    let appends = GroupCommit::start(&env.pool, metrics.clone());
    // Another process got to sequence 1 of g3 first.
    appends
        .persist::<Counter>(&[added("g3", 1, 100)], None)
        .await
        .expect("the other process's command");
    let commands: Vec<_> = (1..=5)
        .map(|n| vec![added(&format!("g{n}"), 1, n)])
        .collect();
    let outcomes = append_together(&appends, &commands).await;
    for (n, outcome) in (1..=5).zip(outcomes) {
        match (n, outcome) {
            (3, Err(PersistenceError::OptimisticLockError)) => {}
            (3, other) => panic!("g3 should conflict, got {other:?}"),
            (_, outcome) => outcome.expect("the others commit"),
        }
    }
    let mut rows = stored(&env).await;
    rows.sort();
    let ids: Vec<_> = rows.iter().map(|(id, _, by)| (id.as_str(), *by)).collect();
    assert_eq!(
        ids,
        [("g1", 1), ("g2", 2), ("g3", 100), ("g4", 4), ("g5", 5)],
        "g3 keeps what won; nothing of the loser is written"
    );
    assert_eq!(counted(&metrics, "event_store_batches_split_total"), 1.0);
}

#[tokio::test]
async fn a_command_the_store_refuses_fails_alone_and_appends_nothing() {
    let env = TestEnv::new().await;
    let appends = GroupCommit::start(&env.pool, Arc::new(Metrics::default()));
    let mut refused = added("g2", 1, 2);
    refused.metadata = json!({ "request_id": "no tenant" });
    let commands = [
        vec![added("g1", 1, 1)],
        vec![refused],
        vec![added("g3", 1, 3)],
    ];
    let outcomes = append_together(&appends, &commands).await;
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{outcomes:?}");
    assert!(
        matches!(outcomes[1], Err(PersistenceError::UnknownError(_))),
        "an event without a tenant is refused by the store: {:?}",
        outcomes[1]
    );
    let ids: Vec<_> = stored(&env).await.into_iter().map(|(id, ..)| id).collect();
    assert_eq!(ids, ["g1", "g3"]);
}

#[tokio::test]
async fn a_snapshot_moved_by_another_writer_is_replaced_and_the_events_commit() {
    let env = TestEnv::new().await;
    let appends = GroupCommit::start(&env.pool, Arc::new(Metrics::default()));
    let snapshot =
        |total: u64, number: usize| Some(("s".into(), json!({ "total": total }), number));
    appends
        .persist::<Counter>(&[added("s", 1, 1)], snapshot(1, 1))
        .await
        .expect("snapshot 1 inserted with event 1");
    let row = || async {
        sqlx::query_as::<_, (i64, i64, serde_json::Value)>(
            "SELECT last_sequence, current_snapshot, payload FROM snapshots WHERE aggregate_id = 's'",
        )
        .fetch_optional(&env.pool)
        .await
        .expect("snapshot")
    };
    assert_eq!(row().await, Some((1, 1, json!({ "total": 1 }))));
    appends
        .persist::<Counter>(&[added("s", 2, 1)], snapshot(2, 2))
        .await
        .expect("snapshot 2 moves on from 1");
    assert_eq!(row().await, Some((2, 2, json!({ "total": 2 }))));
    // A writer whose counter is stale (it read snapshot 1, another moved it to 2 since): its
    // events are the next ones, so they commit, and its state replaces the snapshot.
    appends
        .persist::<Counter>(&[added("s", 3, 1)], snapshot(3, 2))
        .await
        .expect("the events commit");
    assert_eq!(row().await, Some((3, 2, json!({ "total": 3 }))));
    assert_eq!(stored(&env).await.len(), 3);
    // Events whose sequence was taken still conflict, snapshot or not.
    let taken = appends
        .persist::<Counter>(&[added("s", 3, 5)], snapshot(9, 1))
        .await;
    assert!(
        matches!(taken, Err(PersistenceError::OptimisticLockError)),
        "{taken:?}"
    );
    assert_eq!(
        row().await,
        Some((3, 2, json!({ "total": 3 }))),
        "nothing of the loser is written"
    );
}
