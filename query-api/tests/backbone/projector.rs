//! The projector: events in, rows out; each aggregate's events applied exactly once and in
//! order; gaps filled from the store; poison messages dead-lettered without blocking; a
//! rebuild from the store gives the same rows as live projection.

use std::time::Duration;

use chrono::Utc;
use events::tenants::TenantEvent;
use events::Envelope;
use projector::projection::{apply_all_in_order, apply_in_order, Applied, Target};
use projector::tenants::TenantsProjection;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{create_tenant, eventually, TestEnv};

/// Stores `events` for tenant `id` as postgres-es would and returns their envelopes.
async fn store(env: &TestEnv, id: &str, events: &[TenantEvent]) -> Vec<Envelope> {
    let mut out = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let sequence = i as i64 + 1;
        let payload = serde_json::to_value(event).expect("json");
        let metadata = json!({"tenant_id": id});
        let (position, recorded_at): (i64, chrono::DateTime<Utc>) = sqlx::query_as(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             VALUES ('tenant', $1, $2, $3, '1.0', $4, $5) RETURNING global_position, recorded_at",
        )
        .bind(id)
        .bind(sequence)
        .bind(cqrs_event_type(event))
        .bind(&payload)
        .bind(&metadata)
        .fetch_one(&env.pool)
        .await
        .expect("insert");
        out.push(Envelope {
            global_position: position,
            aggregate_type: "tenant".into(),
            aggregate_id: id.into(),
            sequence: sequence as u64,
            event_type: cqrs_event_type(event),
            event_version: "1.0".into(),
            payload,
            metadata: [("tenant_id".to_owned(), id.to_owned())].into(),
            recorded_at,
        });
    }
    out
}

fn cqrs_event_type(event: &TenantEvent) -> String {
    cqrs_es::DomainEvent::event_type(event)
}

async fn apply(env: &TestEnv, envelope: &Envelope) -> Applied {
    let mut tx = env.pool.begin().await.expect("begin");
    let applied = apply_in_order(
        &mut tx,
        &TenantsProjection,
        &Target::LIVE,
        envelope,
        &env.keyring(),
    )
    .await
    .expect("applies");
    tx.commit().await.expect("commit");
    applied
}

async fn row(env: &TestEnv, id: &str) -> Value {
    sqlx::query_scalar(
        "SELECT to_jsonb(t) - 'created_at' - 'updated_at' FROM tenants t WHERE id = $1::uuid",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .expect("row")
}

fn life() -> Vec<TenantEvent> {
    vec![
        TenantEvent::SignupRequested {
            name: "Acme".into(),
            slug: "acme".into(),
            contact_email: "ops@acme.io".into(),
        },
        TenantEvent::Approved {},
        TenantEvent::Renamed {
            name: "Acme Two".into(),
        },
        TenantEvent::PreferencesUpdated {
            preferences: json!({"chatbot": {"enabled": true}}),
        },
        TenantEvent::LogoUploaded {
            object_key: "tenants/x/logo/a.png".into(),
            content_type: "image/png".into(),
            size_bytes: 10,
            sha256: "a".into(),
        },
        TenantEvent::Suspended {
            reason: "unpaid".into(),
        },
    ]
}

#[tokio::test]
async fn tenant_events_become_one_row_with_every_change() {
    let env = TestEnv::new().await;
    let id = Uuid::new_v4().to_string();
    for envelope in store(&env, &id, &life()).await {
        assert_eq!(apply(&env, &envelope).await, Applied::Applied { filled: 0 });
    }
    assert_eq!(
        row(&env, &id).await,
        json!({
            "id": id,
            "tenant_id": id,
            "name": "Acme Two",
            "slug": "acme",
            "contact_email": "ops@acme.io",
            "status": "suspended",
            "preferences": {"chatbot": {"enabled": true}},
            "logo": {"object_key": "tenants/x/logo/a.png", "content_type": "image/png", "size_bytes": 10, "sha256": "a"},
            "rejection_reason": null,
            "suspension_reason": "unpaid",
            "departments": [],
            "version": 6,
        })
    );
}

#[tokio::test]
async fn a_redelivered_event_is_skipped() {
    let env = TestEnv::new().await;
    let id = Uuid::new_v4().to_string();
    let envelopes = store(&env, &id, &life()[..3]).await;
    for envelope in &envelopes {
        apply(&env, envelope).await;
    }
    let before = row(&env, &id).await;
    assert_eq!(apply(&env, &envelopes[1]).await, Applied::Duplicate);
    assert_eq!(apply(&env, &envelopes[2]).await, Applied::Duplicate);
    assert_eq!(row(&env, &id).await, before);
}

#[tokio::test]
async fn a_gap_is_filled_from_the_store_in_order() {
    let env = TestEnv::new().await;
    let id = Uuid::new_v4().to_string();
    let envelopes = store(&env, &id, &life()).await;
    // Only the fourth arrives: the first three are read from the store first.
    assert_eq!(
        apply(&env, &envelopes[3]).await,
        Applied::Applied { filled: 3 }
    );
    let r = row(&env, &id).await;
    assert_eq!(
        (r["name"].clone(), r["status"].clone(), r["version"].clone()),
        (json!("Acme Two"), json!("active"), json!(4))
    );
    assert_eq!(apply(&env, &envelopes[1]).await, Applied::Duplicate);
    assert_eq!(
        apply(&env, &envelopes[4]).await,
        Applied::Applied { filled: 0 }
    );
}

#[tokio::test]
async fn a_batch_applies_each_event_once_in_order_across_aggregates() {
    let env = TestEnv::new().await;
    let (a, b) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let ea = store(&env, &a, &life()).await;
    let eb = store(&env, &b, &life()[..3]).await;
    apply(&env, &ea[0]).await;
    // Interleaved aggregates, a redelivered event, a gap (a's 2nd and 3rd missing), and an
    // event that arrives after the gap was filled with it.
    let batch = vec![
        eb[0].clone(),
        ea[0].clone(),
        ea[3].clone(),
        eb[1].clone(),
        ea[2].clone(),
        eb[2].clone(),
        ea[4].clone(),
    ];
    let mut tx = env.pool.begin().await.expect("begin");
    let applied = apply_all_in_order(
        &mut tx,
        &TenantsProjection,
        &Target::LIVE,
        &batch,
        &env.keyring(),
    )
    .await
    .expect("applies");
    tx.commit().await.expect("commit");
    use Applied::{Applied as Done, Duplicate};
    assert_eq!(
        applied,
        [
            Done { filled: 0 },
            Duplicate,
            Done { filled: 2 },
            Done { filled: 0 },
            Duplicate,
            Done { filled: 0 },
            Done { filled: 0 },
        ]
    );
    let (ra, rb) = (row(&env, &a).await, row(&env, &b).await);
    assert_eq!(
        (
            ra["name"].clone(),
            ra["logo"]["sha256"].clone(),
            ra["version"].clone()
        ),
        (json!("Acme Two"), json!("a"), json!(5))
    );
    assert_eq!(
        (
            rb["name"].clone(),
            rb["status"].clone(),
            rb["version"].clone()
        ),
        (json!("Acme Two"), json!("active"), json!(3))
    );
    // The checkpoints moved with the rows: the same batch again changes nothing.
    let mut tx = env.pool.begin().await.expect("begin");
    let again = apply_all_in_order(
        &mut tx,
        &TenantsProjection,
        &Target::LIVE,
        &batch,
        &env.keyring(),
    )
    .await
    .expect("applies");
    tx.commit().await.expect("commit");
    assert!(again.iter().all(|x| *x == Duplicate));
    assert_eq!(row(&env, &a).await, ra);
}

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_does_not_block_the_rest() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let mut config = env.projector_config();
    config.max_deliver = 2;
    let projector = env.spawn_projector(config);
    // Not an envelope at all.
    env.js
        .publish(format!("{}.t.tenant.Broken", env.prefix), "not json".into())
        .await
        .expect("publish")
        .await
        .expect("acked");
    // An envelope whose payload no tenant event decodes to, for an aggregate with no row.
    let bogus = json!({
        "global_position": 999_999, "aggregate_type": "tenant", "aggregate_id": Uuid::new_v4().to_string(),
        "sequence": 1, "event_type": "Exploded", "event_version": "9.9", "payload": {"Exploded": {}},
        "metadata": {"tenant_id": "t"}, "recorded_at": Utc::now(),
    });
    env.js
        .publish(
            format!("{}.t.tenant.Exploded", env.prefix),
            serde_json::to_vec(&bogus).expect("json").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("acked");
    let (id, _) = create_tenant(&env, &api, "healthy").await;
    eventually(
        Duration::from_secs(20),
        "the good event to be projected",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT version FROM tenants WHERE id = $1::uuid")
                .bind(&id)
                .fetch_optional(&env.pool)
                .await
                .expect("query")
        },
    )
    .await;
    let dead: Vec<(String, i64)> = eventually(
        Duration::from_secs(20),
        "both poison messages to be dead-lettered",
        || async {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT error, deliveries FROM dead_letters ORDER BY id")
                    .fetch_all(&env.pool)
                    .await
                    .expect("query");
            (rows.len() == 2).then_some(rows)
        },
    )
    .await;
    assert!(
        dead.iter()
            .any(|(e, n)| e.contains("not an event envelope") && *n == 1),
        "{dead:?}"
    );
    assert!(
        dead.iter()
            .any(|(e, n)| e.contains("undecodable") && *n == 2),
        "retried before dead-lettering: {dead:?}"
    );
    projector.abort();
    api.stop().await;
}

#[tokio::test]
async fn rebuild_from_the_store_gives_the_rows_of_live_projection() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let mut ids = Vec::new();
    for i in 0..8 {
        let (id, _) = create_tenant(&env, &api, &format!("rebuilt-{i}")).await;
        let r = env
            .http
            .post(api.url(&format!("/v1/tenants/{id}/rename")))
            .bearer_auth(env.super_admin())
            .json(&json!({"name": format!("Renamed {i}")}))
            .send()
            .await
            .expect("sent");
        assert_eq!(r.status(), 200);
        ids.push(id);
    }
    let snapshot = || async {
        sqlx::query_scalar::<_, Value>(
            "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY id), '[]') FROM tenants t",
        )
        .fetch_one(&env.pool)
        .await
        .expect("rows")
    };
    let live = eventually(
        Duration::from_secs(20),
        "live projection to catch up",
        || async {
            let rows = snapshot().await;
            let done = rows
                .as_array()
                .is_some_and(|a| a.len() == 8 && a.iter().all(|r| r["version"] == 2));
            done.then_some(rows)
        },
    )
    .await;
    projector.abort();
    let report = projector::rebuild::rebuild(&env.pool, &TenantsProjection, &env.keyring())
        .await
        .expect("rebuild");
    assert_eq!(report.events, 16);
    assert_eq!(
        snapshot().await,
        live,
        "same rows, same timestamps, same versions"
    );
    let checkpoints: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM projection_checkpoints WHERE projection = 'tenants' AND sequence = 2",
    )
    .fetch_one(&env.pool)
    .await
    .expect("checkpoints");
    assert_eq!(
        checkpoints, 8,
        "the rebuilt checkpoints replaced the live ones"
    );
    let owner: Option<String> =
        sqlx::query_scalar("SELECT obj_description('tenants'::regclass, 'pg_class')")
            .fetch_one(&env.pool)
            .await
            .expect("comment");
    assert_eq!(
        owner.as_deref(),
        Some("owner: projector, tenants."),
        "the rebuilt table still names its owner"
    );
    // The projector goes on from the rebuilt checkpoints: the next change lands once.
    let projector = env.spawn_projector(env.projector_config());
    let r = env
        .http
        .post(api.url(&format!("/v1/tenants/{}/rename", ids[0])))
        .bearer_auth(env.super_admin())
        .json(&json!({"name": "After Rebuild"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), 200);
    eventually(
        Duration::from_secs(20),
        "the post-rebuild change",
        || async {
            let r = row(&env, &ids[0]).await;
            (r["name"] == "After Rebuild" && r["version"] == 3).then_some(())
        },
    )
    .await;
    projector.abort();
    api.stop().await;
}

#[tokio::test]
async fn a_rebuild_during_writes_and_live_projection_loses_and_repeats_nothing() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(create_tenant(&env, &api, &format!("moving-{i}")).await.0);
    }
    // The four tenants are published (so below the commit horizon) before the rebuilds
    // start: every rebuild has them to apply, however long a writer of the rounds below
    // holds the horizon back.
    eventually(Duration::from_secs(20), "the tenants projected", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
            .fetch_one(&env.pool)
            .await
            .ok()?;
        (n == 4).then_some(())
    })
    .await;
    let writes = async {
        for round in 0..15 {
            for id in &ids {
                let r = env
                    .http
                    .post(api.url(&format!("/v1/tenants/{id}/rename")))
                    .bearer_auth(env.super_admin())
                    .json(&json!({"name": format!("Round {round}")}))
                    .send()
                    .await
                    .expect("sent");
                assert_eq!(r.status(), 200);
            }
        }
    };
    let rebuilds = async {
        let mut events = 0;
        for _ in 0..3 {
            events += projector::rebuild::rebuild(&env.pool, &TenantsProjection, &env.keyring())
                .await
                .expect("rebuild")
                .events;
        }
        events
    };
    let ((), rebuilt) = tokio::join!(writes, rebuilds);
    assert!(
        rebuilt >= 3 * 4,
        "each rebuild applied at least the four openings"
    );
    // Whatever interleaving happened, the read model ends exactly where the store is.
    eventually(
        Duration::from_secs(30),
        "rows to match the store",
        || async {
            let mismatches: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (
                 SELECT aggregate_id, max(sequence) AS version,
                        (array_agg(payload->'Renamed'->>'name' ORDER BY sequence DESC)
                           FILTER (WHERE event_type = 'Renamed'))[1] AS name
                   FROM events GROUP BY aggregate_id) s
             FULL JOIN tenants t ON t.id::text = s.aggregate_id
             LEFT JOIN projection_checkpoints c
                    ON c.projection = 'tenants' AND c.aggregate_id = s.aggregate_id
             WHERE t.version IS DISTINCT FROM s.version
                OR t.name IS DISTINCT FROM s.name
                OR c.sequence IS DISTINCT FROM s.version",
            )
            .fetch_one(&env.pool)
            .await
            .expect("compare");
            (mismatches == 0).then_some(())
        },
    )
    .await;
    projector.abort();
    api.stop().await;
}

#[tokio::test]
async fn a_rebuild_reads_each_batch_read_committed_whatever_the_default_isolation() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    for i in 0..3 {
        create_tenant(&env, &api, &format!("isolated-{i}")).await;
    }
    api.stop().await;
    // An operator's default: every new transaction repeatable read. A batch that read its
    // horizon and its events under one snapshot could pass a writer it never saw.
    sqlx::query(&format!(
        "ALTER DATABASE {} SET default_transaction_isolation = 'repeatable read'",
        env.db_name
    ))
    .execute(&env.pool)
    .await
    .expect("alter database");
    let pool = sqlx::PgPool::connect(&env.database_url)
        .await
        .expect("new sessions take the default");
    let default: String = sqlx::query_scalar("SHOW default_transaction_isolation")
        .fetch_one(&pool)
        .await
        .expect("show");
    assert_eq!(default, "repeatable read");
    let report = projector::rebuild::rebuild(&pool, &TenantsProjection, &env.keyring())
        .await
        .expect("rebuilt in read committed batches");
    assert_eq!(report.events, 3);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 3);
    pool.close().await;
}

/// An event the relay quarantined (stored nested past what readers decode) never reaches the
/// projector; the aggregate's next event, which does, is applied after it — the gap it leaves
/// is passed over as the relay passed over it, not dead-lettered for ever.
#[tokio::test]
async fn a_quarantined_event_does_not_hold_back_its_aggregates_later_events() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let (id, _) = create_tenant(&env, &api, "gap-over-poison").await;
    env.append_unreadable("tenant", &id, &id).await;
    env.append_raw(
        "tenant",
        &id,
        &id,
        json!({"Renamed": {"name": "After The Gap"}}),
    )
    .await
    .expect("stored");
    let name = eventually(Duration::from_secs(20), "the rename projected", || async {
        sqlx::query_scalar::<_, String>(
            "SELECT name FROM tenants WHERE id = $1::uuid AND version = 3",
        )
        .bind(&id)
        .fetch_optional(&env.pool)
        .await
        .expect("read model")
    })
    .await;
    assert_eq!(name, "After The Gap");
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&env.pool)
        .await
        .expect("dead letters");
    assert_eq!(dead, 0, "nothing dead-lettered");
    projector.abort();
    api.stop().await;
}
