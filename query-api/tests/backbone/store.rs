//! The command bus against the real store, with an aggregate whose `apply` is not
//! idempotent, so that an event applied twice shows.

use std::sync::Arc;

use command_api::store::{CommandBus, CommandError};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use events::envelope::ActorKind;
use events::Metadata;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::support::TestEnv;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub(crate) struct Counter {
    total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) enum Counted {
    Added { by: u64 },
}

impl DomainEvent for Counted {
    fn event_type(&self) -> String {
        "Added".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug, PartialEq, thiserror::Error)]
#[error("never")]
pub(crate) struct Never;

impl Aggregate for Counter {
    const TYPE: &'static str = "counter";
    type Command = u64;
    type Event = Counted;
    type Error = Never;
    /// When set, every command moves the snapshot on while it is being handled, as a
    /// concurrent writer crossing a snapshot boundary would.
    type Services = Option<sqlx::PgPool>;

    async fn handle(
        &mut self,
        by: u64,
        race: &Option<sqlx::PgPool>,
        sink: &EventSink<Self>,
    ) -> Result<(), Never> {
        if let Some(pool) = race {
            sqlx::query("UPDATE snapshots SET current_snapshot = current_snapshot + 1")
                .execute(pool)
                .await
                .expect("move the snapshot");
        }
        sink.write(Counted::Added { by }, self).await;
        Ok(())
    }

    fn apply(&mut self, Counted::Added { by }: Counted) {
        self.total += by;
    }
}

pub(crate) fn metadata(request: &str) -> Metadata {
    Metadata {
        tenant_id: "t".into(),
        actor_id: "test".into(),
        actor_kind: ActorKind::System,
        correlation_id: request.into(),
        causation_id: request.into(),
        request_id: request.into(),
    }
}

#[tokio::test]
async fn snapshots_hold_each_event_applied_once() {
    let env = TestEnv::new().await;
    let bus = CommandBus::<Counter>::new(env.pool.clone(), None, 2, Arc::new(Notify::new()));
    for i in 1..=5 {
        let c = bus
            .execute("c1", None, 1, &metadata(&format!("r{i}")))
            .await
            .expect("added");
        assert_eq!(c.version, i);
    }
    let (last_sequence, payload): (i64, serde_json::Value) =
        sqlx::query_as("SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = 'c1'")
            .fetch_one(&env.pool)
            .await
            .expect("snapshot");
    assert_eq!(
        payload["total"], last_sequence,
        "the snapshot counts each event once"
    );
}

#[tokio::test]
async fn a_snapshot_moved_mid_command_is_replaced_and_the_command_lands_once() {
    let env = TestEnv::new().await;
    let calm = CommandBus::<Counter>::new(env.pool.clone(), None, 1, Arc::new(Notify::new()));
    calm.execute("c2", None, 1, &metadata("first"))
        .await
        .expect("added");
    // The snapshot moves on between the aggregate's load and its commit, as another
    // process's commit crossing a snapshot boundary would. (postgres-es committed the events
    // and only then reported a conflict.) The command's state replaces the stale snapshot in
    // the commit, and the command lands once.
    let racing = CommandBus::<Counter>::new(
        env.pool.clone(),
        Some(env.pool.clone()),
        1,
        Arc::new(Notify::new()),
    );
    let outcome = racing.execute("c2", None, 1, &metadata("second")).await;
    let committed = match outcome {
        Ok(c) => c,
        Err(CommandError::Rejected(Never)) => panic!("rejected"),
        Err(e) => panic!("the committed write was reported as {e}"),
    };
    assert_eq!((committed.version, committed.appended), (2, 1));
    let appended: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_id = 'c2'")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(
        appended, 2,
        "the second command appended once, not once per retry"
    );
}

#[tokio::test]
async fn an_undecodable_snapshot_does_not_block_the_aggregate() {
    let env = TestEnv::new().await;
    let bus = CommandBus::<Counter>::new(env.pool.clone(), None, 1, Arc::new(Notify::new()));
    bus.execute("c3", None, 2, &metadata("first"))
        .await
        .expect("added");
    // The aggregate's shape changed since the snapshot was taken.
    sqlx::query("UPDATE snapshots SET payload = '\"an older shape\"' WHERE aggregate_id = 'c3'")
        .execute(&env.pool)
        .await
        .expect("corrupt the snapshot");
    let c = bus
        .execute("c3", None, 3, &metadata("second"))
        .await
        .expect("added despite the snapshot");
    assert_eq!(c.version, 2);
    let payload: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM snapshots WHERE aggregate_id = 'c3'")
            .fetch_one(&env.pool)
            .await
            .expect("a fresh snapshot");
    assert_eq!(payload["total"], 5);
}

#[tokio::test]
async fn a_cached_aggregate_catches_up_with_another_processs_events() {
    let env = TestEnv::new().await;
    let bus = |n| CommandBus::<Counter>::new(env.pool.clone(), None, n, Arc::new(Notify::new()));
    // Two processes; a snapshot every third event.
    let (here, there) = (bus(3), bus(3));
    let first = here.execute("c4", None, 1, &metadata("a")).await;
    assert_eq!(first.expect("added").version, 1);
    let second = there.execute("c4", None, 10, &metadata("b")).await;
    assert_eq!(second.expect("added").version, 2);
    // `here` last saw version 1; it must see the other process's event, both for the
    // version the client pinned and for the state the snapshot is written from.
    let third = here.execute("c4", Some(2), 100, &metadata("c")).await;
    assert_eq!(third.expect("added").version, 3);
    let total: serde_json::Value =
        sqlx::query_scalar("SELECT payload FROM snapshots WHERE aggregate_id = 'c4'")
            .fetch_one(&env.pool)
            .await
            .expect("snapshot at the third event");
    assert_eq!(total["total"], 111);
    assert_eq!(here.load("c4").await.expect("loads").total, 111);
}

/// An aggregate whose state keys join a name with NUL, as the thread's once did: its events
/// are storable, its snapshot form is not.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Labels {
    joined: std::collections::BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Labelled {
    Named { name: String },
}

impl DomainEvent for Labelled {
    fn event_type(&self) -> String {
        "Named".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

impl Aggregate for Labels {
    const TYPE: &'static str = "labels";
    type Command = String;
    type Event = Labelled;
    type Error = Never;
    type Services = ();

    async fn handle(&mut self, name: String, _: &(), sink: &EventSink<Self>) -> Result<(), Never> {
        sink.write(Labelled::Named { name }, self).await;
        Ok(())
    }

    fn apply(&mut self, Labelled::Named { name }: Labelled) {
        *self.joined.entry(format!("by\u{0}{name}")).or_default() += 1;
    }
}

#[tokio::test]
async fn a_snapshot_jsonb_cannot_store_is_skipped_and_the_aggregate_takes_commands() {
    let env = TestEnv::new().await;
    let metrics = Arc::new(events::http::Metrics::default());
    let bus = CommandBus::<Labels>::new(env.pool.clone(), (), 2, Arc::new(Notify::new()))
        .with_metrics(metrics.clone());
    for i in 1..=5u64 {
        let c = bus
            .execute("l1", None, format!("n{i}"), &metadata(&format!("r{i}")))
            .await
            .expect("taken past every snapshot boundary");
        assert_eq!(c.version, i);
    }
    let snapshots: i64 = sqlx::query_scalar("SELECT count(*) FROM snapshots")
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(snapshots, 0);
    let rendered = metrics.render();
    assert!(
        rendered.contains("snapshots_skipped_total{aggregate_type=\"labels\"} 2"),
        "{rendered}"
    );
    // A fresh process replays the events instead.
    let fresh = CommandBus::<Labels>::new(env.pool.clone(), (), 2, Arc::new(Notify::new()));
    assert_eq!(fresh.load("l1").await.expect("loads").joined.len(), 5);
}

#[tokio::test]
async fn an_event_jsonb_cannot_store_is_refused_for_good_and_appends_nothing() {
    let env = TestEnv::new().await;
    let metrics = Arc::new(events::http::Metrics::default());
    let bus = CommandBus::<Labels>::new(env.pool.clone(), (), 100, Arc::new(Notify::new()))
        .with_metrics(metrics.clone());
    bus.execute("l2", None, "fine".into(), &metadata("a"))
        .await
        .expect("added");
    for attempt in ["b", "c"] {
        match bus
            .execute("l2", None, "nul\u{0}".into(), &metadata(attempt))
            .await
        {
            Err(CommandError::Broken(incident)) => {
                assert_eq!(incident.code, "unstorable_event");
                assert_eq!(incident.id.len(), 36);
            }
            other => panic!("expected a permanent failure, got {other:?}"),
        }
    }
    assert_eq!(env.event_count().await, 1, "nothing appended");
    assert!(metrics.render().contains(
        "command_permanent_failures_total{aggregate_type=\"labels\",code=\"unstorable_event\"} 2"
    ));
    // The aggregate still takes what it can store.
    let c = bus
        .execute("l2", None, "after".into(), &metadata("d"))
        .await
        .expect("added");
    assert_eq!(c.version, 2);
}

/// An aggregate whose every command appends one event per number it names.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct Tally {
    seen: Vec<u64>,
}

impl Aggregate for Tally {
    const TYPE: &'static str = "tally";
    type Command = Vec<u64>;
    type Event = Counted;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        numbers: Vec<u64>,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Never> {
        for by in numbers {
            sink.write(Counted::Added { by }, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, Counted::Added { by }: Counted) {
        self.seen.push(by);
    }
}

#[tokio::test]
async fn a_commit_that_ends_past_a_snapshot_boundary_keeps_its_last_events() {
    let env = TestEnv::new().await;
    let bus = |n| CommandBus::<Tally>::new(env.pool.clone(), (), n, Arc::new(Notify::new()));
    let here = bus(4);
    // Events 1–3, then 4–6 in one commit: the boundary is at 4, the commit ends at 6.
    here.execute("t1", None, vec![1, 2, 3], &metadata("a"))
        .await
        .expect("added");
    let c = here
        .execute("t1", None, vec![4, 5, 6], &metadata("b"))
        .await
        .expect("added");
    assert_eq!(c.version, 6);
    let (last_sequence, payload): (i64, serde_json::Value) =
        sqlx::query_as("SELECT last_sequence, payload FROM snapshots WHERE aggregate_id = 't1'")
            .fetch_one(&env.pool)
            .await
            .expect("a snapshot");
    assert_eq!(last_sequence, 6);
    assert_eq!(payload["seen"], serde_json::json!([1, 2, 3, 4, 5, 6]));
    // Another process loads it from the snapshot with every event in it, and carries on.
    let there = bus(4);
    assert_eq!(
        there.load("t1").await.expect("loads").seen,
        [1, 2, 3, 4, 5, 6]
    );
    there
        .execute("t1", None, vec![7, 8, 9], &metadata("c"))
        .await
        .expect("added");
    assert_eq!(
        bus(4).load("t1").await.expect("loads").seen,
        (1..=9).collect::<Vec<_>>()
    );
}

/// A WhatsApp conversation past the messages its state keeps: its older messages are read
/// back from the real event store (the SQL and indexes of `whatsapp::history`).
#[tokio::test]
async fn a_long_whatsapp_conversation_decides_old_messages_from_the_store() {
    use command_api::whatsapp::aggregate::{
        Conversation, ConversationCommand, ConversationServices, Inbound, Parties, SendResult,
        StatusReport, RECENT_MESSAGES,
    };
    use command_api::whatsapp::history::PgHistory;
    use events::whatsapp::{conversation_id, ConversationEvent, Delivery, Outbound};

    let env = TestEnv::new().await;
    let history: ConversationServices = Arc::new(PgHistory {
        pool: env.pool.clone(),
        keyring: env.keyring(),
    });
    let bus =
        CommandBus::<Conversation>::new(env.pool.clone(), history, 100, Arc::new(Notify::new()));
    let parties = Parties {
        tenant_id: "t".into(),
        session_id: "s".into(),
        wa_id: "15550001111".into(),
    };
    let id = conversation_id(&parties.tenant_id, &parties.session_id, &parties.wa_id);
    let now = chrono::Utc::now();
    let receive = |n: usize| ConversationCommand::Receive {
        parties: parties.clone(),
        message: Inbound {
            message_id: format!("in{n}"),
            wamid: format!("wamid.in{n}"),
            webhook_id: "w".into(),
            profile_name: None,
            kind: "text".into(),
            content: serde_json::json!({"body": "hi"}),
            text: "hi".into(),
            context_wamid: None,
            sent_at: now,
        },
        thread_id: "th".into(),
        at: now,
    };
    let queue = |n: usize| ConversationCommand::Queue {
        parties: parties.clone(),
        session_connected: true,
        message_id: format!("out{n}"),
        author: events::chat::Party {
            id: "agent".into(),
            kind: events::chat::PartyKind::Agent,
        },
        content: Outbound::Text {
            body: format!("reply {n}"),
            preview_url: false,
        },
        thread_id: Some("th".into()),
        record_refusal: false,
        at: now,
    };
    let mut request = 0;
    let mut run = |command: ConversationCommand| {
        request += 1;
        let bus = &bus;
        let id = id.clone();
        async move {
            bus.execute_with_events(&id, None, command, &metadata(&format!("r{request}")))
                .await
                .map(|(_, events)| events)
        }
    };
    for n in 0..RECENT_MESSAGES + 5 {
        run(receive(n)).await.expect("received");
        run(queue(n)).await.expect("queued");
        run(ConversationCommand::Claim {
            message_id: format!("out{n}"),
            at: now,
        })
        .await
        .expect("claimed");
        run(ConversationCommand::Report {
            message_id: format!("out{n}"),
            attempt: 1,
            result: SendResult::Accepted {
                wamid: format!("wamid.out{n}"),
            },
            at: now,
        })
        .await
        .expect("reported");
    }
    let before = env.event_count().await;
    // The first messages left the state long ago; what the store says of them decides.
    assert!(run(receive(0)).await.expect("redelivered").is_empty());
    assert!(run(queue(0)).await.expect("retried").is_empty());
    let read = run(ConversationCommand::Status {
        report: StatusReport {
            message_id: None,
            wamid: "wamid.out0".into(),
            status: Delivery::Read,
            error_code: None,
            error_title: None,
            provider_at: now,
            webhook_id: "w".into(),
        },
    })
    .await
    .expect("status");
    assert!(
        matches!(&read[..], [ConversationEvent::StatusUpdated { message_id, status: Delivery::Read, .. }] if message_id == "out0"),
        "{read:?}"
    );
    assert_eq!(env.event_count().await, before + 1);
    // A fresh process (the state from the snapshot) decides the same.
    let fresh = CommandBus::<Conversation>::new(
        env.pool.clone(),
        Arc::new(PgHistory {
            pool: env.pool.clone(),
            keyring: env.keyring(),
        }) as ConversationServices,
        100,
        Arc::new(Notify::new()),
    );
    let again = fresh
        .execute_with_events(&id, None, receive(1), &metadata("fresh"))
        .await
        .expect("redelivered");
    assert!(again.1.is_empty());
}
