//! The data keys of personal data in PostgreSQL (events::keyring): sealing per subject,
//! opening through a fresh process's cache, erasure, and master-key rotation.

use events::keyring::{KeyError, Keyring, Subject, SubjectKind};
use events::personal::{MasterKeys, ERASED};
use uuid::Uuid;

use crate::support::TestEnv;

fn phone_user(id: Uuid, tenant: &str) -> Subject<'_> {
    Subject {
        id,
        kind: SubjectKind::PhoneUser,
        tenant_id: tenant,
    }
}

fn keyring(env: &TestEnv, masters: &str) -> Keyring {
    Keyring::new(
        env.pool.clone(),
        MasterKeys::parse(Some(masters), "unused").expect("valid master keys"),
    )
}

/// Records subject `id` of `tenant` erased as the erasure endpoint does (its event, whose
/// transaction destroys the keys), without the endpoint's checks.
async fn erase(env: &TestEnv, id: Uuid, tenant: &str) {
    env.append_raw(
        events::privacy::DATA_SUBJECT,
        &id.to_string(),
        tenant,
        serde_json::json!({"Erased": {"tenant_id": tenant, "kind": "phone_user", "by": "test", "at": chrono::Utc::now()}}),
    )
    .await
    .expect("erased");
}

/// Whether the append-only trigger refuses `change` (an SQL expression of `payload`) to the
/// `event_type` events of stream `aggregate_id`, even in a transaction that declares the
/// store's transform.
async fn transform_refuses(
    env: &TestEnv,
    aggregate_id: &str,
    event_type: &str,
    change: &str,
) -> bool {
    let mut tx = env.pool.begin().await.expect("tx");
    sqlx::query("SET LOCAL events.transform = 'seal-personal-data'")
        .execute(&mut *tx)
        .await
        .expect("set");
    sqlx::query(&format!(
        "UPDATE events SET payload = {change} WHERE aggregate_id = $1 AND event_type = $2"
    ))
    .bind(aggregate_id)
    .bind(event_type)
    .execute(&mut *tx)
    .await
    .is_err()
}

/// The store's transform run once more finds nothing left to do.
async fn nothing_left_to_seal(env: &TestEnv, keyring: &Keyring, batch: i64) {
    let again = command_api::privacy::store::seal_store(&env.pool, keyring, batch)
        .await
        .expect("transformed");
    assert_eq!(again, Default::default(), "a second run does nothing");
}

/// What `subject_keys` and `data_subjects` hold, as text, for searching.
async fn key_tables(env: &TestEnv) -> String {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT row_to_json(k)::text FROM subject_keys k
          UNION ALL SELECT row_to_json(s)::text FROM data_subjects s",
    )
    .fetch_all(&env.pool)
    .await
    .expect("key tables");
    rows.into_iter()
        .map(|(r,)| r)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn a_sealed_field_opens_in_another_process_until_its_subject_is_erased() {
    let env = TestEnv::new().await;
    let writer = keyring(&env, "m1=first master secret");
    let _following = writer.follow_erasures();
    let (ana, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let phone = writer
        .seal(phone_user(ana, "acme"), "+34600111222")
        .await
        .expect("sealed");
    let text = writer
        .seal(phone_user(ana, "acme"), "hola, soy Ana")
        .await
        .expect("sealed");
    let other = writer
        .seal(phone_user(bob, "acme"), "soy Bob")
        .await
        .expect("sealed");
    assert!(!phone.contains("600111222") && phone.starts_with(&format!("pii1.{ana}.")));
    assert!(
        !key_tables(&env).await.contains("600111222"),
        "the key table holds no personal data"
    );

    // Another process, with nothing cached, opens a whole payload with one look-up.
    let reader = keyring(&env, "m1=first master secret");
    let mut payload =
        serde_json::json!({"MessageSent": {"text": text, "phone": phone, "other": other, "n": 1}});
    reader.open_value(&mut payload).await.expect("opened");
    assert_eq!(
        payload,
        serde_json::json!({"MessageSent": {"text": "hola, soy Ana", "phone": "+34600111222", "other": "soy Bob", "n": 1}})
    );
    assert_eq!(
        reader.open("plain text").await.expect("plain"),
        "plain text"
    );

    erase(&env, ana, "acme").await;
    // The writer follows erasures: it forgets her keys as the erasure commits.
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "the writer forgets her keys",
        || async { (writer.open(&text).await.ok()? == ERASED).then_some(()) },
    )
    .await;
    // The reader cached Ana's key and does not follow: it forgets it when told.
    assert_eq!(reader.open(&phone).await.expect("opened"), "+34600111222");
    reader.forget(ana);
    assert_eq!(reader.open(&phone).await.expect("opened"), ERASED);
    let fresh = keyring(&env, "m1=first master secret");
    assert_eq!(fresh.open(&text).await.expect("opened"), ERASED);
    assert_eq!(fresh.open(&other).await.expect("opened"), "soy Bob");
    assert!(matches!(
        writer.seal(phone_user(ana, "acme"), "again").await,
        Err(KeyError::Erased)
    ));
    assert!(matches!(
        fresh.seal(phone_user(ana, "acme"), "again").await,
        Err(KeyError::Erased)
    ));
    assert_eq!(
        fresh.subject(ana).await.expect("subject"),
        Some(events::keyring::KnownSubject {
            tenant_id: "acme".to_owned(),
            kind: "phone_user".to_owned(),
            erased: true
        })
    );
    assert_eq!(fresh.subject(Uuid::new_v4()).await.expect("subject"), None);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM subject_keys WHERE subject_id = $1")
        .bind(ana)
        .fetch_one(&env.pool)
        .await
        .expect("count");
    assert_eq!(left, 0, "no key of the erased subject is left");
}

#[tokio::test]
async fn a_subject_belongs_to_one_tenant() {
    let env = TestEnv::new().await;
    let keys = keyring(&env, "m1=first master secret");
    let id = Uuid::new_v4();
    keys.seal(phone_user(id, "acme"), "x")
        .await
        .expect("sealed");
    let other = keyring(&env, "m1=first master secret");
    assert!(matches!(
        other.seal(phone_user(id, "globex"), "y").await,
        Err(KeyError::OtherTenant)
    ));
}

#[tokio::test]
async fn processes_making_a_subjects_first_key_at_once_all_keep_readable_fields_and_erasure_takes_every_key(
) {
    let env = TestEnv::new().await;
    let subject = Uuid::new_v4();
    let mut tasks = Vec::new();
    for n in 0..16 {
        let keys = keyring(&env, "m1=first master secret");
        tasks.push(tokio::spawn(async move {
            keys.seal(phone_user(subject, "acme"), &format!("message {n}"))
                .await
                .expect("sealed")
        }));
    }
    let mut sealed = Vec::new();
    for task in tasks {
        sealed.push(task.await.expect("task"));
    }
    let reader = keyring(&env, "m1=first master secret");
    for (n, text) in sealed.iter().enumerate() {
        assert_eq!(
            reader.open(text).await.expect("opened"),
            format!("message {n}")
        );
    }
    erase(&env, subject, "acme").await;
    let fresh = keyring(&env, "m1=first master secret");
    for text in &sealed {
        assert_eq!(fresh.open(text).await.expect("opened"), ERASED);
    }
}

#[tokio::test]
async fn a_master_key_rotation_reseals_every_data_key_and_the_old_master_can_go() {
    let env = TestEnv::new().await;
    let before = keyring(&env, "m1=first master secret");
    let mut sealed = Vec::new();
    for n in 0..5 {
        let subject = phone_user(Uuid::new_v4(), "acme");
        sealed.push((
            before
                .seal(subject, &format!("n{n}"))
                .await
                .expect("sealed"),
            n,
        ));
    }
    // The new master key is listed first; the old one stays until the keys are re-sealed.
    let during = keyring(&env, "m2=second master secret,m1=first master secret");
    let fresh = keyring(&env, "m1=first master secret");
    let later = fresh
        .seal(phone_user(Uuid::new_v4(), "acme"), "later")
        .await
        .expect("sealed");
    assert_eq!(during.reseal(2).await.expect("resealed"), 2);
    assert_eq!(during.reseal(100).await.expect("resealed"), 4);
    assert_eq!(during.reseal(100).await.expect("resealed"), 0);
    let after = keyring(&env, "m2=second master secret");
    for (text, n) in &sealed {
        assert_eq!(after.open(text).await.expect("opened"), format!("n{n}"));
    }
    assert_eq!(after.open(&later).await.expect("opened"), "later");
    // A process that lost the master key a data key is sealed under says so, not "erased".
    let lost = keyring(&env, "m3=third master secret");
    assert!(matches!(
        lost.open(&sealed[0].0).await,
        Err(KeyError::NoMasterKey(_))
    ));
}

#[tokio::test]
async fn refused_webhooks_and_captured_messages_are_purged_after_the_retention_days() {
    let env = TestEnv::new().await;
    for (age, provider) in [("31 days", "old"), ("29 days", "recent")] {
        sqlx::query(&format!(
            "INSERT INTO webhook_rejections (provider, reason, body_excerpt, body_bytes, received_at)
             VALUES ($1, 'bad_signature', '{{}}', 2, now() - interval '{age}')"
        ))
        .bind(provider)
        .execute(&env.pool)
        .await
        .expect("rejection");
    }
    for (age, status, recipient) in [
        ("31 days", "captured", "+34600000001"),
        ("31 days", "sent", "+34600000002"),
        ("31 days", "queued", "+34600000003"),
        ("29 days", "captured", "+34600000004"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO outbound_messages (id, tenant_id, channel, recipient, body, causation_id, status, created_at)
             VALUES (gen_random_uuid(), 'acme', 'sms', $1, 'Your code is 123456', $1, $2, now() - interval '{age}')"
        ))
        .bind(recipient)
        .bind(status)
        .execute(&env.pool)
        .await
        .expect("outbound message");
    }
    let api = env.spawn_command_api(env.command_config()).await;
    let left = crate::support::eventually(
        std::time::Duration::from_secs(20),
        "the purge at start-up",
        || async {
            let rejections: Vec<String> =
                sqlx::query_scalar("SELECT provider FROM webhook_rejections ORDER BY 1")
                    .fetch_all(&env.pool)
                    .await
                    .ok()?;
            let messages: Vec<String> =
                sqlx::query_scalar("SELECT recipient FROM outbound_messages ORDER BY 1")
                    .fetch_all(&env.pool)
                    .await
                    .ok()?;
            (rejections.len() == 1 && messages.len() == 2).then_some((rejections, messages))
        },
    )
    .await;
    assert_eq!(
        left,
        (
            vec!["recent".to_owned()],
            vec!["+34600000003".to_owned(), "+34600000004".to_owned()]
        ),
        "older than 30 days is gone, but for a message still queued to be sent"
    );
    api.stop().await;
}

#[tokio::test]
async fn command_api_reseals_the_data_keys_under_the_master_key_it_is_given_first() {
    let env = TestEnv::new().await;
    let before = keyring(&env, "m1=first master secret");
    let text = before
        .seal(phone_user(Uuid::new_v4(), "acme"), "hola")
        .await
        .expect("sealed");
    let mut config = env.command_config();
    config.privacy_master_keys = Some("m2=second master secret, m1=first master secret".into());
    let api = env.spawn_command_api(config).await;
    crate::support::eventually(
        std::time::Duration::from_secs(20),
        "every key under m2",
        || async {
            let masters: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT master_key_id FROM subject_keys")
                    .fetch_all(&env.pool)
                    .await
                    .ok()?;
            (masters == ["m2"]).then_some(())
        },
    )
    .await;
    let after = keyring(&env, "m2=second master secret");
    assert_eq!(after.open(&text).await.expect("opened"), "hola");
    api.stop().await;
}

/// Waits until `api` has heard of an erasure (its `NOTIFY` arrives a moment after the
/// commit; until then a process may still seal with the key it cached, which nobody can
/// open): a text `token` sends to `path` is refused.
async fn heard(env: &TestEnv, api: &crate::support::Service, token: &str, path: &str) {
    crate::support::eventually(
        std::time::Duration::from_secs(10),
        "command-api hears of the erasure",
        || async {
            let sent =
                crate::chat::post(env, api, token, path, serde_json::json!({"text": "?"})).await;
            (sent.status() == 410).then_some(())
        },
    )
    .await;
}

/// Everything the event store holds, as text.
async fn store_text(env: &TestEnv) -> String {
    sqlx::query_scalar("SELECT coalesce(string_agg(payload::text, E'\\n'), '') FROM events")
        .fetch_one(&env.pool)
        .await
        .expect("events")
}

#[tokio::test]
async fn chat_texts_are_ciphertext_in_the_store_and_on_the_bus_and_read_as_erased_once_their_customer_is(
) {
    use crate::chat::{open_thread, post};
    use serde_json::{json, Value};
    use std::time::Duration;

    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "sealed").await;
    let agent = env.agent_of(&tenant);
    let ana = env.phone_user(&tenant, "phone-ana");
    let bob = env.phone_user(&tenant, "phone-bob");
    let (ana_thread, _) = open_thread(&env, &api, &ana, json!({})).await;
    let (bob_thread, _) = open_thread(&env, &api, &bob, json!({})).await;
    let messages = |thread: &str| format!("/v1/chat/threads/{thread}/messages");
    for (token, thread, text) in [
        (&ana, &ana_thread, "Mi número es +34 600 111 222"),
        (&agent, &ana_thread, "Gracias Ana, le llamamos"),
        (&bob, &bob_thread, "Soy Bob, de Bilbao"),
    ] {
        let sent = post(&env, &api, token, &messages(thread), json!({"text": text})).await;
        assert_eq!(sent.status(), 201);
    }

    // The store and the bus hold ciphertext naming each customer.
    let store = store_text(&env).await;
    // The relay publishes after the commit: wait until the bus has all three.
    let bus = crate::support::eventually(Duration::from_secs(20), "the bus", || async {
        let bus: String = crate::relay::stream_contents(&env)
            .await
            .iter()
            .map(|m| String::from_utf8_lossy(&m.payload).into_owned())
            .collect();
        (bus.matches("\"pii1.").count() >= 3).then_some(bus)
    })
    .await;
    for (place, text) in [("store", &store), ("bus", &bus)] {
        for plain in ["600 111 222", "Gracias Ana", "Soy Bob"] {
            assert!(
                !text.contains(plain),
                "{plain:?} is in clear in the {place}"
            );
        }
        assert_eq!(
            text.matches("\"pii1.").count(),
            3,
            "three sealed texts in the {place}"
        );
    }

    // The read models, the history and the audit trail read them in clear.
    let read = |token: String, thread: String| {
        let (env, query) = (&env, &query);
        async move {
            let page: Value = env
                .get_json(
                    &query.url(&format!("/v1/chat/threads/{thread}/messages")),
                    &token,
                )
                .await;
            page["items"]
                .as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|m| m["text"].as_str().map(str::to_owned))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        }
    };
    let in_clear = crate::support::eventually(Duration::from_secs(20), "both messages", || async {
        let texts = read(agent.clone(), ana_thread.clone()).await;
        (texts.len() == 2).then_some(texts)
    })
    .await;
    assert_eq!(
        in_clear,
        ["Gracias Ana, le llamamos", "Mi número es +34 600 111 222"],
        "newest first"
    );
    let audit = env
        .get_json(
            &query.url(&format!("/v1/audit/thread/{ana_thread}")),
            &env.admin_of(&tenant),
        )
        .await;
    assert!(
        audit.to_string().contains("Gracias Ana, le llamamos"),
        "{audit}"
    );

    // Ana is erased through the endpoint, by her tenant's admin; who else asks is refused
    // and learns nothing.
    let subject = events::personal::subject_id("phone_user", &tenant, "phone-ana");
    let erase_path = format!("/v1/privacy/subjects/{subject}/erase");
    let (other_tenant, _) = crate::support::create_tenant(&env, &api, "other").await;
    for (token, status) in [
        (env.admin_of(&other_tenant), 404),
        (agent.clone(), 403),
        (ana.clone(), 403),
    ] {
        let refused = post(&env, &api, &token, &erase_path, json!({})).await;
        assert_eq!(refused.status(), status);
    }
    let admin = env.admin_of(&tenant);
    for path in [
        format!("/v1/privacy/subjects/{}/erase", Uuid::new_v4()),
        "/v1/privacy/subjects/not-a-uuid/erase".to_owned(),
    ] {
        let unknown = post(&env, &api, &admin, &path, json!({})).await;
        assert_eq!(unknown.status(), 404);
        let problem: Value = unknown.json().await.expect("problem");
        assert_eq!(problem["code"], "not_found");
    }
    let before = env.event_count().await;
    let erased = post(&env, &api, &admin, &erase_path, json!({})).await;
    assert_eq!(erased.status(), 200);
    let erased: Value = erased.json().await.expect("json");
    assert_eq!(erased, json!({"id": subject.to_string(), "version": 1}));
    assert_eq!(env.event_count().await, before + 1);
    let again = post(&env, &api, &env.super_admin(), &erase_path, json!({})).await;
    assert_eq!(again.status(), 200);
    assert_eq!(
        again.json::<Value>().await.expect("json"),
        erased,
        "the same answer"
    );
    assert_eq!(
        env.event_count().await,
        before + 1,
        "nothing appended again"
    );
    let recorded: Value = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'data_subject' AND aggregate_id = $1",
    )
    .bind(subject.to_string())
    .fetch_one(&env.pool)
    .await
    .expect("the erasure's event");
    assert!(!recorded.to_string().contains("phone-ana"), "{recorded}");

    // The running query-api follows erasures: its audit trail reads her texts as erased.
    crate::support::eventually(Duration::from_secs(10), "the audit erased", || async {
        let audit = env
            .get_json(
                &query.url(&format!("/v1/audit/thread/{ana_thread}")),
                &admin,
            )
            .await
            .to_string();
        (!audit.contains("Gracias") && audit.contains(events::personal::ERASED)).then_some(())
    })
    .await;
    // The live read models are redacted in place: her thread's texts and preview, not Bob's.
    let texts = || async {
        sqlx::query_as::<_, (String, String)>(
            "SELECT thread_id::text, text FROM chat_messages ORDER BY thread_id, number",
        )
        .fetch_all(&env.pool)
        .await
        .expect("messages")
    };
    crate::support::eventually(Duration::from_secs(20), "her texts redacted", || async {
        texts()
            .await
            .iter()
            .filter(|(thread, _)| *thread == ana_thread)
            .all(|(_, text)| text == events::personal::ERASED)
            .then_some(())
    })
    .await;
    let previews: Vec<(String, Value)> =
        sqlx::query_as("SELECT id::text, last_message FROM chat_threads ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .expect("threads");
    for (thread, preview) in previews {
        let expected = if thread == ana_thread {
            events::personal::ERASED
        } else {
            "Soy Bob, de Bilbao"
        };
        assert_eq!(preview["text"], expected, "{thread}");
    }
    let live = texts().await;
    // A rebuild reads her conversation as erased, Bob's as it was: the same rows.
    projector.abort();
    projector::rebuild::rebuild(&env.pool, &projector::chat::ChatProjection, &env.keyring())
        .await
        .expect("rebuild");
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT thread_id::text, text FROM chat_messages ORDER BY thread_id, number",
    )
    .fetch_all(&env.pool)
    .await
    .expect("messages");
    assert_eq!(rows.len(), 3);
    assert_eq!(rows, live);
    for (thread, text) in rows {
        if thread == ana_thread {
            assert_eq!(text, events::personal::ERASED);
        } else {
            assert_eq!(text, "Soy Bob, de Bilbao");
        }
    }
    // Nothing new is written about her: the running command-api forgot her key, and her
    // thread refuses new texts, whoever writes.
    heard(&env, &api, &ana, &messages(&ana_thread)).await;
    for token in [&ana, &agent] {
        let refused = post(
            &env,
            &api,
            token,
            &messages(&ana_thread),
            json!({"text": "¿hola?"}),
        )
        .await;
        assert_eq!(refused.status(), 410);
        let problem: Value = refused.json().await.expect("problem");
        assert_eq!(problem["code"], "subject_erased");
    }
    let sent = post(
        &env,
        &api,
        &bob,
        &messages(&bob_thread),
        json!({"text": "sigo aquí"}),
    )
    .await;
    assert_eq!(sent.status(), 201);
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn an_erased_staff_members_own_notes_are_redacted_and_a_customers_thread_is_not() {
    use crate::chat::{open_thread, post};
    use serde_json::{json, Value};
    use std::time::Duration;

    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let _projector = env.spawn_projector(env.projector_config());
    let (tenant, _) = crate::support::create_tenant(&env, &api, "staffnotes").await;
    let agent = env.agent_of(&tenant);
    let customer = env.phone_user(&tenant, "phone-cus");
    // A thread without a customer: the agent's note is sealed for the agent.
    let (notes, _) = open_thread(&env, &api, &agent, json!({})).await;
    let (talk, _) = open_thread(&env, &api, &customer, json!({})).await;
    for (thread, text) in [
        (&notes, "nota interna de Marta"),
        (&talk, "respuesta de Marta"),
    ] {
        let sent = post(
            &env,
            &api,
            &agent,
            &format!("/v1/chat/threads/{thread}/messages"),
            json!({"text": text}),
        )
        .await;
        assert_eq!(sent.status(), 201);
    }
    assert!(!store_text(&env).await.contains("Marta"));
    let staff = events::personal::subject_id("admin_user", &tenant, &format!("agent-of-{tenant}"));
    let erased = post(
        &env,
        &api,
        &env.admin_of(&tenant),
        &format!("/v1/privacy/subjects/{staff}/erase"),
        json!({}),
    )
    .await;
    assert_eq!(erased.status(), 200);
    let texts =
        crate::support::eventually(Duration::from_secs(20), "the note redacted", || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT thread_id::text, text FROM chat_messages ORDER BY thread_id, number",
            )
            .fetch_all(&env.pool)
            .await
            .ok()?;
            rows.iter()
                .any(|(t, text)| *t == notes && text == events::personal::ERASED)
                .then_some(rows)
        })
        .await;
    for (thread, text) in texts {
        if thread == talk {
            assert_eq!(
                text, "respuesta de Marta",
                "the customer's conversation is theirs"
            );
        }
    }
    let notes_path = format!("/v1/chat/threads/{notes}/messages");
    heard(&env, &api, &agent, &notes_path).await;
    let refused = post(
        &env,
        &api,
        &agent,
        &notes_path,
        json!({"text": "otra nota"}),
    )
    .await;
    assert_eq!(refused.status(), 410);
    let problem: Value = refused.json().await.expect("problem");
    assert_eq!(problem["code"], "subject_erased");
    api.stop().await;
}

#[tokio::test]
async fn an_erasure_waits_for_a_projector_transaction_that_opened_the_subjects_fields_and_one_after_it_reads_them_erased(
) {
    let env = TestEnv::new().await;
    let keys = env.keyring();
    let ana = Uuid::new_v4();
    let text = keys
        .seal(phone_user(ana, "acme"), "hola")
        .await
        .expect("sealed");
    let payload = || serde_json::json!({"MessageSent": {"text": text}});

    // A projector's transaction opens Ana's text (and would write it in clear).
    let mut writing = env.pool.begin().await.expect("begin");
    let mut first = payload();
    keys.open_values_on(&mut writing, vec![&mut first])
        .await
        .expect("opened");
    assert_eq!(first["MessageSent"]["text"], "hola");
    // The erasure waits for it: the redaction that follows will see what it wrote.
    let erasing = tokio::spawn({
        let pool = env.pool.clone();
        async move {
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
                 VALUES ('data_subject', $1, 1, 'Erased', '1.0',
                         jsonb_build_object('Erased', jsonb_build_object('tenant_id', 'acme', 'kind', 'phone_user', 'by', 'test', 'at', now())),
                         '{\"tenant_id\": \"acme\"}')",
            )
            .bind(ana.to_string())
            .execute(&pool)
            .await
            .expect("erased")
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!erasing.is_finished(), "the erasure passed an open writer");
    writing.commit().await.expect("commit");
    erasing
        .await
        .expect("the erasure commits once the writer has");

    // The next transaction reads it erased, though this process still caches her key.
    let mut after = env.pool.begin().await.expect("begin");
    let mut second = payload();
    keys.open_values_on(&mut after, vec![&mut second])
        .await
        .expect("opened");
    assert_eq!(second["MessageSent"]["text"], ERASED);
}

/// Signs `phone` in at `tenant` with the code from the dev inbox: the phone user's id and
/// token, or the refusal.
async fn sign_in(
    env: &TestEnv,
    api: &crate::support::Service,
    query: &crate::support::Service,
    tenant: &str,
    phone: &str,
) -> reqwest::Response {
    let requested = crate::identity::request_code(env, api, tenant, phone).await;
    assert_eq!(requested.status(), 202);
    let code = crate::identity::code_from_inbox(env, query, phone).await;
    env.http
        .post(api.url("/auth/phone/verify"))
        .json(&serde_json::json!({"tenant_id": tenant, "phone": phone, "code": code}))
        .send()
        .await
        .expect("sent")
}

/// A signed-in phone user: id and token.
async fn signed_in(
    env: &TestEnv,
    api: &crate::support::Service,
    query: &crate::support::Service,
    tenant: &str,
    phone: &str,
) -> (String, String) {
    let answer = sign_in(env, api, query, tenant, phone).await;
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = answer.json().await.expect("json");
    (
        answer["user"]["id"].as_str().expect("id").to_owned(),
        answer["access_token"].as_str().expect("token").to_owned(),
    )
}

/// `GET` `url` with `token`: the status and the body.
async fn fetch(env: &TestEnv, url: &str, token: &str) -> (u16, serde_json::Value) {
    let answer = env
        .http
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("sent");
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap_or_default())
}

#[tokio::test]
async fn a_phone_user_is_a_subject_from_sign_in_whose_export_holds_everything_until_the_erasure_leaves_nothing(
) {
    use crate::chat::{open_thread, post};
    use serde_json::json;
    use std::time::Duration;

    let env = TestEnv::new().await;
    // The clock moves past the minute between two codes to one number.
    let clock = std::sync::Arc::new(events::clock::ManualClock::new(chrono::Utc::now()));
    let api = env
        .spawn_command_api_with_clock(env.command_config(), clock.clone())
        .await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "exported").await;
    let (other_tenant, _) = crate::support::create_tenant(&env, &api, "elsewhere").await;
    let (ana_phone, bob_phone) = ("+34600111222", "+34600333444");
    let (ana, ana_token) = signed_in(&env, &api, &query, &tenant, ana_phone).await;
    let (bob, bob_token) = signed_in(&env, &api, &query, &tenant, bob_phone).await;
    let admin = env.admin_of(&tenant);
    let export_of = |id: &str| query.url(&format!("/v1/privacy/subjects/{id}/export"));

    // Known from the sign-in, before writing anything.
    let (status, export) = fetch(&env, &export_of(&ana), &admin).await;
    assert_eq!(status, 200, "{export}");
    assert_eq!(export["subject"]["kind"], "phone_user");
    assert_eq!(export["subject"]["erased"], false);
    assert_eq!(export["phone_user"]["phone"], ana_phone);
    assert_eq!(export["threads"], json!([]));

    // Who may ask: her tenant's admin, a super admin, and she herself.
    for (token, status) in [
        (env.agent_of(&tenant), 403),
        (env.admin_of(&other_tenant), 404),
        (bob_token.clone(), 404),
        (ana_token.clone(), 200),
        (env.super_admin(), 200),
    ] {
        assert_eq!(fetch(&env, &export_of(&ana), &token).await.0, status);
    }
    for unknown in [Uuid::new_v4().to_string(), "not-a-uuid".to_owned()] {
        let (status, problem) = fetch(&env, &export_of(&unknown), &admin).await;
        assert_eq!((status, problem["code"].clone()), (404, json!("not_found")));
    }

    // Her conversation, with its subject line, the agent's reply and a scheduled message.
    let profile = env
        .http
        .put(api.url("/auth/phone/profile"))
        .bearer_auth(&ana_token)
        .json(&json!({"display_name": "Ana Pérez", "email": "ana.perez@example.test"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(profile.status(), 200);
    let (thread, _) = open_thread(
        &env,
        &api,
        &ana_token,
        json!({"subject": "Factura de marzo"}),
    )
    .await;
    let (bob_thread, _) = open_thread(&env, &api, &bob_token, json!({})).await;
    let messages = format!("/v1/chat/threads/{thread}/messages");
    for (token, path, text) in [
        (&ana_token, &messages, "Mi pedido es el 4471"),
        (&env.agent_of(&tenant), &messages, "Lo miramos, Ana"),
        (
            &bob_token,
            &format!("/v1/chat/threads/{bob_thread}/messages"),
            "Soy Bob",
        ),
    ] {
        let sent = post(&env, &api, token, path, json!({"text": text})).await;
        assert_eq!(sent.status(), 201);
    }
    let scheduled = post(
        &env,
        &api,
        &env.agent_of(&tenant),
        &format!("/v1/chat/threads/{thread}/scheduled"),
        json!({"text": "Recordatorio para Ana",
               "due_at": chrono::Utc::now() + chrono::Duration::days(3)}),
    )
    .await;
    assert_eq!(scheduled.status(), 201);
    let export = crate::support::eventually(Duration::from_secs(20), "her export", || async {
        let (_, export) = fetch(&env, &export_of(&ana), &admin).await;
        let thread = &export["threads"][0];
        (thread["messages"].as_array().map(Vec::len) == Some(2)
            && thread["scheduled"].as_array().map(Vec::len) == Some(1))
        .then_some(export)
    })
    .await;
    // Her own export leaves out what only the staff see (scheduled messages).
    let (_, own) = fetch(&env, &export_of(&ana), &ana_token).await;
    assert_eq!(
        own["threads"][0]["messages"],
        export["threads"][0]["messages"]
    );
    assert_eq!(own["threads"][0]["scheduled"], json!([]));
    assert_eq!(export["phone_user"]["display_name"], "Ana Pérez");
    assert_eq!(export["phone_user"]["email"], "ana.perez@example.test");
    assert_eq!(
        export["threads"].as_array().map(Vec::len),
        Some(1),
        "not Bob's"
    );
    assert_eq!(export["threads"][0]["subject"], "Factura de marzo");
    let texts: Vec<&str> = export["threads"][0]["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(texts, ["Mi pedido es el 4471", "Lo miramos, Ana"]);
    // The subject line is sealed in the store, as her texts are.
    let store = store_text(&env).await;
    for plain in ["Factura de marzo", "Mi pedido", ana_phone, "Ana Pérez"] {
        assert!(!store.contains(plain), "{plain:?} in clear in the store");
    }

    // Erased: her record, her captured codes and her tokens go with her keys.
    let erased = post(
        &env,
        &api,
        &admin,
        &format!("/v1/privacy/subjects/{ana}/erase"),
        json!({}),
    )
    .await;
    assert_eq!(erased.status(), 200);
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM phone_users WHERE phone = $1)
              + (SELECT count(*) FROM outbound_messages WHERE recipient = $1)",
    )
    .bind(ana_phone)
    .fetch_one(&env.pool)
    .await
    .expect("counted");
    assert_eq!(left, 0, "her number is nowhere on the command side");
    crate::support::eventually(Duration::from_secs(10), "her token refused", || async {
        let (status, _) = fetch(&env, &query.url("/v1/chat/threads"), &ana_token).await;
        (status == 401).then_some(())
    })
    .await;
    assert_eq!(
        fetch(&env, &api.url("/auth/phone/profile"), &ana_token)
            .await
            .0,
        401
    );
    // Her number cannot sign in at the tenant again, and nothing new is kept about her: a
    // request answers as ever (no one learns of the erasure) but issues and sends no code,
    // and any code fails as a wrong one.
    clock.set(chrono::Utc::now() + chrono::Duration::minutes(2));
    let events_before = env.event_count().await;
    let requested = crate::identity::request_code(&env, &api, &tenant, ana_phone).await;
    assert_eq!(requested.status(), 202);
    let inbox = env
        .get_json(
            &query.url("/v1/dev/inbox?recipient=%2B34600111222"),
            &env.super_admin(),
        )
        .await;
    assert_eq!(inbox["items"], json!([]), "no code sent to her");
    for code in ["123456", "000000"] {
        let verified = env
            .http
            .post(api.url("/auth/phone/verify"))
            .json(&json!({"tenant_id": tenant, "phone": ana_phone, "code": code}))
            .send()
            .await
            .expect("sent");
        crate::support::expect_problem(verified, 401, "invalid_code").await;
    }
    assert_eq!(env.event_count().await, events_before, "nothing recorded");
    // Her export says she was erased and holds nothing personal.
    let export =
        crate::support::eventually(Duration::from_secs(20), "her export erased", || async {
            let (_, export) = fetch(&env, &export_of(&ana), &admin).await;
            (export["threads"][0]["subject"] == ERASED).then_some(export)
        })
        .await;
    assert_eq!(export["subject"]["erased"], true);
    assert_eq!(export["phone_user"], serde_json::Value::Null);
    let text = export.to_string();
    for plain in [
        "Factura",
        "4471",
        "Lo miramos",
        "Recordatorio",
        ana_phone,
        "Ana Pérez",
        "ana.perez",
    ] {
        assert!(!text.contains(plain), "{plain:?} left in {export}");
    }
    // Bob's is untouched.
    let (_, bobs) = fetch(&env, &export_of(&bob), &admin).await;
    assert_eq!(bobs["phone_user"]["phone"], bob_phone);
    assert_eq!(bobs["threads"][0]["messages"][0]["text"], "Soy Bob");
    // A rebuild of the chat read models shows the same redaction.
    projector.abort();
    projector::rebuild::rebuild(&env.pool, &projector::chat::ChatProjection, &env.keyring())
        .await
        .expect("rebuild");
    let (_, rebuilt) = fetch(&env, &export_of(&ana), &admin).await;
    assert_eq!(rebuilt["threads"], export["threads"]);
    query.stop().await;
    api.stop().await;
}

/// Each event's position, stream, sequence, transaction, time and metadata: what the
/// store's transform must leave as it was.
async fn event_rows(env: &TestEnv) -> Vec<(i64, String, String, i64, String, String, String)> {
    sqlx::query_as(
        "SELECT global_position, aggregate_type, aggregate_id, sequence, transaction_id::text,
                recorded_at::text, metadata::text
           FROM events ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events")
}

#[tokio::test]
async fn the_stores_transform_seals_the_texts_written_before_sealing_and_keeps_every_position() {
    use crate::chat::post;
    use serde_json::{json, Value};

    let env = TestEnv::new().await;
    let tenant = "t-before";
    let at = chrono::Utc::now();
    let phone = |id: &str| json!({"id": id, "kind": "phone"});
    let opened = |customer: Value, opener: Value, subject: &str| {
        json!({"Opened": {"tenant_id": tenant, "channel": "web", "opened_by": opener,
                          "customer": customer, "subject": subject, "bot_enabled": true,
                          "tags": [], "at": at}})
    };
    let sent = |id: &str, number: u64, author: Value, text: &str| {
        json!({"MessageSent": {"message_id": id, "number": number, "author": author,
                               "client_message_id": null, "text": text, "attachment": null,
                               "scheduled_id": null, "at": at}})
    };
    // As a release before sealing wrote them: Ana's thread, a staff thread, Carl's thread.
    let (ana, carl) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let (ana_thread, staff_thread, carl_thread) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    let agent = json!({"id": "agent-old", "kind": "agent"});
    let bot = json!({"id": "bot", "kind": "bot"});
    let history = [
        (
            &ana_thread,
            opened(phone(&ana), phone(&ana), "Pedido antiguo"),
        ),
        (
            &ana_thread,
            sent("m1", 1, phone(&ana), "Texto antiguo de Ana"),
        ),
        (
            &ana_thread,
            sent("m2", 2, agent.clone(), "Respuesta antigua"),
        ),
        (
            &ana_thread,
            json!({"MessageEdited": {"message_id": "m1", "text": "Texto corregido", "at": at}}),
        ),
        (
            &ana_thread,
            json!({"MessageScheduled": {"scheduled_id": "s1", "author": agent.clone(),
                                        "text": "Recordatorio antiguo", "attachment": null,
                                        "due_at": at + chrono::Duration::days(30)}}),
        ),
        (
            &staff_thread,
            opened(Value::Null, agent.clone(), "Asunto interno"),
        ),
        (
            &staff_thread,
            sent("n1", 1, agent.clone(), "Nota interna antigua"),
        ),
        (&staff_thread, sent("n2", 2, bot, "Bienvenido")),
        (
            &carl_thread,
            opened(phone(&carl), phone(&carl), "Carl pregunta"),
        ),
        (
            &carl_thread,
            sent("c1", 1, phone(&carl), "Carl escribió esto"),
        ),
        (
            &ana_thread,
            json!({"MessageSent": {"message_id": "m3", "number": 3, "author": phone(&ana),
                "client_message_id": null, "text": "",
                "attachment": {"object_key": "tenants/t/uploads/a.pdf",
                               "content_type": "application/pdf",
                               "name": "pasaporte-ana.pdf", "size_bytes": 10},
                "scheduled_id": null, "at": at}}),
        ),
    ];
    for (thread, event) in &history {
        env.append_raw("thread", thread, tenant, event.clone())
            .await
            .expect("appended");
    }
    // A snapshot taken before sealing keeps Ana's scheduled text in clear: command-api,
    // snapshotting every 7 events, takes one at the next message (the 7th).
    let mut config = env.command_config();
    config.snapshot_every = 7;
    let api = env.spawn_command_api(config).await;
    let customer = env.phone_user(tenant, &ana);
    let written = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{ana_thread}/messages"),
        json!({"text": "Mensaje nuevo"}),
    )
    .await;
    assert_eq!(written.status(), 201);
    let snapshot: String = sqlx::query_scalar(
        "SELECT payload::text FROM snapshots WHERE aggregate_type = 'thread' AND aggregate_id = $1",
    )
    .bind(&ana_thread)
    .fetch_one(&env.pool)
    .await
    .expect("a snapshot");
    assert!(snapshot.contains("Recordatorio antiguo"), "{snapshot}");
    // Carl was erased before the transform: his old texts were still readable in events.
    let keyring = env.keyring();
    let carl_id = Uuid::parse_str(&carl).expect("uuid");
    keyring
        .register(phone_user(carl_id, tenant))
        .await
        .expect("known");
    erase(&env, carl_id, tenant).await;

    let before = event_rows(&env).await;
    let done = command_api::privacy::store::seal_store(&env.pool, &keyring, 3)
        .await
        .expect("transformed");
    assert_eq!(
        (done.events, done.erased, done.snapshots, done.refused),
        (9, 2, 1, 0),
        "Ana's 6 (one a file's name), the staff note, Carl's 2 as [erased]"
    );
    assert_eq!(
        event_rows(&env).await,
        before,
        "positions, sequences, times kept"
    );

    // Nothing of it is left in clear in the store or the snapshots; the bot's text and the
    // subject line of a thread without a customer stay, as sealing leaves them.
    let store = store_text(&env).await;
    let snapshot: String = sqlx::query_scalar(
        "SELECT payload::text FROM snapshots WHERE aggregate_type = 'thread' AND aggregate_id = $1",
    )
    .bind(&ana_thread)
    .fetch_one(&env.pool)
    .await
    .expect("the snapshot");
    for plain in [
        "Pedido antiguo",
        "Texto antiguo",
        "Respuesta antigua",
        "Texto corregido",
        "Recordatorio antiguo",
        "Nota interna",
        "Carl",
        "Mensaje nuevo",
        "pasaporte-ana",
    ] {
        assert!(!store.contains(plain), "{plain:?} in clear in the store");
        assert!(
            !snapshot.contains(plain),
            "{plain:?} in clear in the snapshot"
        );
    }
    assert!(store.contains("Bienvenido") && store.contains("Asunto interno"));
    // Each opens to what it was, for the right person; Carl's read [erased].
    let texts: Vec<(String, String, Value)> = sqlx::query_as(
        "SELECT aggregate_id, event_type, payload FROM events
          WHERE aggregate_type = 'thread' ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    let mut opened_texts = Vec::new();
    for (thread, event_type, mut payload) in texts {
        let field = if event_type == "Opened" {
            "subject"
        } else {
            "text"
        };
        let sealed = payload[&event_type][field]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        keyring.open_value(&mut payload).await.expect("opened");
        let subject = events::personal::SealedField::parse(&sealed).map(|f| f.subject);
        opened_texts.push((
            thread,
            payload[&event_type][field]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            subject,
        ));
    }
    let ana_subject = Some(Uuid::parse_str(&ana).expect("uuid"));
    let agent_subject = Some(events::personal::subject_id(
        "admin_user",
        tenant,
        "agent-old",
    ));
    assert_eq!(
        opened_texts,
        [
            (ana_thread.clone(), "Pedido antiguo".to_owned(), ana_subject),
            (
                ana_thread.clone(),
                "Texto antiguo de Ana".to_owned(),
                ana_subject
            ),
            (
                ana_thread.clone(),
                "Respuesta antigua".to_owned(),
                ana_subject
            ),
            (
                ana_thread.clone(),
                "Texto corregido".to_owned(),
                ana_subject
            ),
            (
                ana_thread.clone(),
                "Recordatorio antiguo".to_owned(),
                ana_subject
            ),
            (staff_thread.clone(), "Asunto interno".to_owned(), None),
            (
                staff_thread.clone(),
                "Nota interna antigua".to_owned(),
                agent_subject
            ),
            (staff_thread.clone(), "Bienvenido".to_owned(), None),
            (carl_thread.clone(), ERASED.to_owned(), None),
            (carl_thread.clone(), ERASED.to_owned(), None),
            (ana_thread.clone(), String::new(), None),
            (ana_thread.clone(), "Mensaje nuevo".to_owned(), ana_subject),
        ]
    );
    let named: Value = sqlx::query_scalar(
        "SELECT payload->'MessageSent'->'attachment'->'name' FROM events
          WHERE aggregate_id = $1 AND payload->'MessageSent'->>'message_id' = 'm3'",
    )
    .bind(&ana_thread)
    .fetch_one(&env.pool)
    .await
    .expect("the file's name");
    let name = named.as_str().unwrap_or_default();
    assert_eq!(
        events::personal::SealedField::parse(name).map(|f| f.subject),
        ana_subject
    );
    assert_eq!(
        keyring.open(name).await.expect("opened"),
        "pasaporte-ana.pdf"
    );
    // Once is enough: a second run finds nothing, and an update outside the transform is
    // refused as ever.
    nothing_left_to_seal(&env, &keyring, 3).await;
    let refused = sqlx::query("UPDATE events SET payload = '{}' WHERE aggregate_id = $1")
        .bind(&ana_thread)
        .execute(&env.pool)
        .await;
    assert!(refused.is_err(), "events stay append-only");
    // Even declaring the transform, only a text may change, and only into ciphertext or
    // the redaction marker.
    for change in [
        "jsonb_set(payload, '{MessageSent,text}', '\"hola\"')",
        "jsonb_set(payload, '{MessageSent,number}', '7')",
    ] {
        assert!(
            transform_refuses(&env, &ana_thread, "MessageSent", change).await,
            "{change} is refused"
        );
    }
    let mut tx = env.pool.begin().await.expect("tx");
    sqlx::query("SET LOCAL events.transform = 'seal-personal-data'")
        .execute(&mut *tx)
        .await
        .expect("set");
    let other =
        sqlx::query("UPDATE events SET payload = payload WHERE aggregate_type = 'data_subject'")
            .execute(&mut *tx)
            .await;
    assert!(other.is_err(), "no other kind of event may change");
    drop(tx);
    // The thread goes on from the transformed history (and the snapshot the drop audits).
    let more = post(
        &env,
        &api,
        &customer,
        &format!("/v1/chat/threads/{ana_thread}/messages"),
        json!({"text": "Otro"}),
    )
    .await;
    assert_eq!(more.status(), 201);
    api.stop().await;
}

#[tokio::test]
async fn an_erasure_deletes_the_files_stored_for_the_subject_and_no_file_they_merely_named() {
    use crate::chat::post;
    use serde_json::{json, Value};

    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "filed").await;
    let at = chrono::Utc::now();
    let file = |key: &str| env.blob_dir.join(key);
    let store_file = |key: &str| {
        let path = file(key);
        std::fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
        std::fs::write(&path, b"their file").expect("written");
    };
    let attachment = |key: &str| json!({"object_key": key, "content_type": "image/png", "name": "foto.png", "size_bytes": 10});
    // Ana (a phone user), a contact who wrote by SMS and WhatsApp, and Bob, each with a thread
    // and files in it.
    let (ana, bob) = (Uuid::new_v4(), Uuid::new_v4());
    let contact = "+34600999888";
    let whatsapp_message = Uuid::new_v4().to_string();
    let keys = [
        format!("tenants/{tenant}/chat/ana.png"),
        format!("tenants/{tenant}/chat/ana-later.png"),
        format!("tenants/{tenant}/sms/contact/0"),
        format!("tenants/{tenant}/whatsapp/{whatsapp_message}"),
        format!("tenants/{tenant}/chat/bob.png"),
        format!("tenants/{tenant}/logo/logo.png"),
    ];
    for key in &keys {
        store_file(key);
    }
    let party = |id: &str, kind: &str| json!({"id": id, "kind": kind});
    let opened = |customer: Value| {
        json!({"Opened": {"tenant_id": tenant, "channel": "web", "opened_by": customer.clone(),
                          "customer": customer, "subject": null, "bot_enabled": false,
                          "tags": [], "at": at}})
    };
    let sent = |id: &str, number: u64, author: Value, attachment: Value| {
        json!({"MessageSent": {"message_id": id, "number": number, "author": author,
                               "client_message_id": null, "text": "", "attachment": attachment,
                               "scheduled_id": null, "at": at}})
    };
    let threads = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()].map(|t| t.to_string());
    let ana_party = party(&ana.to_string(), "phone");
    let contact_party = party(contact, "contact");
    let bob_party = party(&bob.to_string(), "phone");
    let history = [
        (0, opened(ana_party.clone())),
        (0, sent("a1", 1, ana_party.clone(), attachment(&keys[0]))),
        (0, sent("a2", 2, ana_party.clone(), attachment(&keys[5]))),
        (
            0,
            json!({"MessageScheduled": {"scheduled_id": "s1", "author": party("agent-1", "agent"),
                                        "text": "", "attachment": attachment(&keys[1]),
                                        "due_at": at + chrono::Duration::days(1)}}),
        ),
        (1, opened(contact_party.clone())),
        (
            1,
            sent("c1", 1, contact_party.clone(), attachment(&keys[2])),
        ),
        (1, sent(&whatsapp_message, 2, contact_party, Value::Null)),
        (2, opened(bob_party.clone())),
        (2, sent("b1", 1, bob_party, attachment(&keys[4]))),
    ];
    for (thread, event) in history {
        env.append_raw("thread", &threads[thread], &tenant, event)
            .await
            .expect("appended");
    }
    let keyring = env.keyring();
    let contact_subject = events::personal::subject_id("contact", &tenant, contact);
    for (id, kind) in [
        (ana, SubjectKind::PhoneUser),
        (bob, SubjectKind::PhoneUser),
        (contact_subject, SubjectKind::Contact),
    ] {
        keyring
            .register(Subject {
                id,
                kind,
                tenant_id: &tenant,
            })
            .await
            .expect("known");
    }

    let admin = env.admin_of(&tenant);
    let erase = |id: Uuid| {
        let (env, api, admin) = (&env, &api, &admin);
        async move {
            post(
                env,
                api,
                admin,
                &format!("/v1/privacy/subjects/{id}/erase"),
                json!({}),
            )
            .await
            .status()
        }
    };
    let present = || keys.iter().map(|k| file(k).exists()).collect::<Vec<_>>();
    // What a person attaches may be any file of the tenant (here the tenant's logo):
    // naming it does not make it theirs to delete.
    assert_eq!(erase(ana).await, 200);
    assert_eq!(present(), [true, true, true, true, true, true]);
    // The files the platform stored for the contact go: their MMS file and WhatsApp file.
    assert_eq!(erase(contact_subject).await, 200);
    assert_eq!(present(), [true, true, false, false, true, true]);
    // Asked again, it answers the same and finishes what an interrupted one would have
    // left.
    store_file(&keys[2]);
    assert_eq!(erase(contact_subject).await, 200);
    assert_eq!(
        present(),
        [true, true, false, false, true, true],
        "everyone else's stay"
    );
    api.stop().await;
}

#[tokio::test]
async fn an_erased_staff_member_is_a_subject_from_creation_and_can_sign_in_no_more() {
    use serde_json::json;
    use std::time::Duration;

    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "staffed").await;
    let email = format!("{}@staff.example", Uuid::new_v4().simple());
    let password = "an erased agent's long password";
    let made = env
        .http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(env.super_admin())
        .json(&json!({"email": email, "password": password, "tenant_id": tenant, "role": "agent"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(made.status(), 201);
    let agent = made.json::<serde_json::Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let login = || {
        env.http
            .post(api.url("/auth/admin/login"))
            .json(&json!({"email": email, "password": password}))
            .send()
    };
    let signed_in: serde_json::Value = login().await.expect("sent").json().await.expect("json");
    let refresh = signed_in["refresh_token"]
        .as_str()
        .expect("refresh")
        .to_owned();
    // A subject from creation: exported before they ever wrote.
    let admin = env.admin_of(&tenant);
    let export = query.url(&format!("/v1/privacy/subjects/{agent}/export"));
    let before = crate::support::eventually(Duration::from_secs(20), "the export", || async {
        let (status, body) = fetch(&env, &export, &admin).await;
        (status == 200 && body["admin_user"]["email"] == email.as_str()).then_some(body)
    })
    .await;
    assert_eq!(before["subject"]["kind"], "admin_user");
    // A super admin's notes are theirs in any tenant: their export holds them.
    let root = env.super_admin();
    let (note_thread, _) =
        crate::chat::open_thread(&env, &api, &root, json!({"tenant_id": tenant})).await;
    let noted = crate::chat::post(
        &env,
        &api,
        &root,
        &format!("/v1/chat/threads/{note_thread}/messages"),
        json!({"text": "nota de la plataforma"}),
    )
    .await;
    assert_eq!(noted.status(), 201);
    let root_subject = events::personal::subject_id("admin_user", "platform", "root-admin");
    let root_export = query.url(&format!("/v1/privacy/subjects/{root_subject}/export"));
    crate::support::eventually(
        Duration::from_secs(20),
        "the super admin's note",
        || async {
            let (_, body) = fetch(&env, &root_export, &root).await;
            (body["threads"][0]["messages"][0]["text"] == "nota de la plataforma").then_some(())
        },
    )
    .await;

    // Past two snapshot intervals (each sign-in is an event of theirs), their e-mail is
    // still sealed in the snapshot and still opens where it is needed.
    for _ in 0..4 {
        assert_eq!(login().await.expect("sent").status(), 200);
    }
    env.assert_snapshots_crossed("admin_user").await;
    let snapshot: String = sqlx::query_scalar(
        "SELECT payload::text FROM snapshots WHERE aggregate_type = 'admin_user' AND aggregate_id = $1",
    )
    .bind(&agent)
    .fetch_one(&env.pool)
    .await
    .expect("their snapshot");
    assert!(!snapshot.contains(&email), "{snapshot}");
    // A password reset mailed to them is in the capture sink (the dev inbox).
    let reset = crate::chat::post(
        &env,
        &api,
        &admin,
        &format!("/v1/admin-users/{agent}/password-reset"),
        json!({}),
    )
    .await;
    assert_eq!(reset.status(), 202);
    let captured = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM outbound_messages WHERE recipient = $1")
            .bind(&email)
            .fetch_one(&env.pool)
            .await
            .expect("counted")
    };
    assert_eq!(captured().await, 1);

    // Nobody erases themselves (the guards of deactivation hold), and a tenant admin does
    // not erase a super admin.
    let (boss, boss_token) =
        crate::support::staff_session(&env, &api, &tenant, "tenant_admin").await;
    let own = crate::chat::post(
        &env,
        &api,
        &boss_token,
        &format!("/v1/privacy/subjects/{boss}/erase"),
        json!({}),
    )
    .await;
    crate::support::expect_problem(own, 422, "cannot_erase_self").await;
    let erased = crate::chat::post(
        &env,
        &api,
        &boss_token,
        &format!("/v1/privacy/subjects/{agent}/erase"),
        json!({}),
    )
    .await;
    assert_eq!(erased.status(), 200);
    assert_eq!(captured().await, 0, "the mail to them went with them");
    // No sign-in, no refresh, and nothing recorded for the attempts.
    let events = env.event_count().await;
    assert_eq!(login().await.expect("sent").status(), 401);
    let refreshed = env
        .http
        .post(api.url("/auth/admin/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .expect("sent");
    assert_eq!(refreshed.status(), 401);
    assert_eq!(env.event_count().await, events, "nothing recorded");
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM admin_emails WHERE user_id = $1)
              + (SELECT count(*) FROM admin_credentials WHERE user_id = $1)
              + (SELECT count(*) FROM admin_sessions WHERE user_id = $1 AND status = 'active')",
    )
    .bind(&agent)
    .fetch_one(&env.pool)
    .await
    .expect("counted");
    assert_eq!(
        left, 0,
        "no login, password or live session of theirs is kept"
    );
    // The staff list and the export show the e-mail erased.
    crate::support::eventually(Duration::from_secs(20), "the e-mail erased", || async {
        let (_, body) = fetch(&env, &export, &admin).await;
        (body["admin_user"]["email"] == ERASED && body["subject"]["erased"] == true).then_some(())
    })
    .await;
    // Their e-mail was sealed for them in their `Created` event: a rebuild keeps it erased,
    // and the store holds it nowhere in clear.
    projector.abort();
    projector::rebuild::rebuild(
        &env.pool,
        &projector::identity::AdminUsersProjection,
        &env.keyring(),
    )
    .await
    .expect("rebuild");
    let (_, body) = fetch(&env, &export, &admin).await;
    assert_eq!(body["admin_user"]["email"], ERASED, "{body}");
    let in_clear: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE strpos(payload::text, $1) > 0")
            .bind(&email)
            .fetch_one(&env.pool)
            .await
            .expect("counted");
    assert_eq!(in_clear, 0, "{email} in clear in the store");
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn a_sign_in_racing_its_erasure_never_records_the_number_again() {
    use serde_json::json;

    let env = TestEnv::new().await;
    let clock = std::sync::Arc::new(events::clock::ManualClock::new(chrono::Utc::now()));
    let api = env
        .spawn_command_api_with_clock(env.command_config(), clock.clone())
        .await;
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "racing").await;
    // Two codes each, within the 20 an hour one client address may request.
    let phones: Vec<String> = (0..9).map(|n| format!("+3461000{n:04}")).collect();
    let mut users = Vec::new();
    for phone in &phones {
        users.push(signed_in(&env, &api, &query, &tenant, phone).await.0);
    }
    // A second code for each (a minute later), verified while its phone user is erased.
    clock.set(chrono::Utc::now() + chrono::Duration::minutes(2));
    let mut codes = Vec::new();
    for phone in &phones {
        let requested = crate::identity::request_code(&env, &api, &tenant, phone).await;
        assert_eq!(requested.status(), 202);
        codes.push(crate::identity::code_from_inbox(&env, &query, phone).await);
    }
    let admin = env.admin_of(&tenant);
    for ((phone, user), code) in phones.iter().zip(&users).zip(&codes) {
        let verify = env
            .http
            .post(api.url("/auth/phone/verify"))
            .json(&json!({"tenant_id": tenant, "phone": phone, "code": code}))
            .send();
        let path = format!("/v1/privacy/subjects/{user}/erase");
        let erase = crate::chat::post(&env, &api, &admin, &path, json!({}));
        let (verified, erased) = tokio::join!(verify, erase);
        assert_eq!(erased.status(), 200);
        assert!(
            [200, 401].contains(&verified.expect("sent").status().as_u16()),
            "signed in before the erasure, or refused after it"
        );
    }
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM phone_users WHERE phone = ANY($1)")
        .bind(&phones)
        .fetch_one(&env.pool)
        .await
        .expect("counted");
    assert_eq!(kept, 0, "no erased number is recorded again");
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn the_stores_transform_seals_whatsapp_conversations_for_their_contact_and_their_snapshots() {
    use command_api::store::CommandBus;
    use command_api::whatsapp::aggregate::{Conversation, ConversationServices};
    use cqrs_es::Aggregate;
    use events::whatsapp::{conversation_id, received_content, ConversationEvent};
    use serde_json::{json, Value};
    use std::sync::Arc;

    let env = TestEnv::new().await;
    let tenant = "wa-old";
    let (sheena, erased_number) = ("16505551234", "4915112345678");
    let session = Uuid::new_v4().to_string();
    let (theirs, gone) = (
        conversation_id(tenant, &session, sheena),
        conversation_id(tenant, &session, erased_number),
    );
    let at = chrono::Utc::now();
    let started = |wa_id: &str| json!({"Started": {"tenant_id": tenant, "session_id": session, "wa_id": wa_id}});
    let received = |id: &str, name: Value, content: Value, text: &str| {
        json!({"MessageReceived": {"message_id": id, "wamid": format!("wamid.{id}"),
            "webhook_id": "w1", "profile_name": name, "kind": "location", "content": content,
            "text": text, "context_wamid": null, "sent_at": at, "thread_id": "th1", "at": at}})
    };
    let agent = json!({"id": "agent-1", "kind": "agent"});
    // As a release before sealing wrote them: Sheena's conversation, and one of a contact
    // erased before the transform.
    let history = [
        (&theirs, started(sheena)),
        (
            &theirs,
            received(
                "in1",
                json!("Sheena Nelson"),
                json!({"latitude": 48.8583701, "name": "Maison"}),
                "[location] Maison",
            ),
        ),
        (
            &theirs,
            json!({"MessageQueued": {"message_id": "out1", "author": agent,
                "content": {"type": "text", "body": "Bonjour Sheena", "preview_url": false},
                "thread_id": "th1", "at": at}}),
        ),
        (
            &theirs,
            json!({"MessageRevised": {"message_id": "out1", "thread_id": "th1",
                "content": {"type": "text", "body": "Bonjour Sheena !", "preview_url": false},
                "at": at}}),
        ),
        (
            &theirs,
            json!({"MessageQueued": {"message_id": "out2", "author": agent,
                "content": {"type": "template", "name": "order_update", "language": "fr_FR",
                            "parameters": ["Sheena", "42"]},
                "thread_id": null, "at": at}}),
        ),
        (&gone, started(erased_number)),
        (
            &gone,
            received(
                "in9",
                Value::Null,
                json!({"body": "Erased text"}),
                "Erased text",
            ),
        ),
    ];
    for (conversation, event) in &history {
        env.append_raw("whatsapp_conversation", conversation, tenant, event.clone())
            .await
            .expect("appended");
    }
    // And the webhooks that brought them, a SignalWire SMS, and a payment's (about nobody).
    let webhook = |provider: &str, payload: Value| {
        json!({"Received": {"provider": provider, "provider_event_id": Uuid::new_v4(),
            "event_type": "x", "payment_id": null, "payload": payload,
            "body_sha256": null, "received_at": at}})
    };
    let webhooks = [
        webhook(
            "whatsapp",
            json!({"phone_number_id": "1065", "contact": {"wa_id": sheena, "name": "Sheena Nelson"},
                   "message": {"from": sheena, "id": "wamid.in1", "type": "text",
                               "text": {"body": "Bonjour"}}}),
        ),
        webhook(
            "whatsapp",
            json!({"phone_number_id": "1065",
                   "status": {"id": "wamid.x", "status": "read", "recipient_id": erased_number}}),
        ),
        webhook(
            "signalwire",
            json!({"MessageSid": "SM1", "SmsStatus": "received", "From": "+33612345678",
                   "To": "+15557650002", "Body": "Texto de Sheena"}),
        ),
        webhook(
            "stripe",
            json!({"id": "evt_1", "type": "payment_intent.succeeded"}),
        ),
    ];
    let mut webhook_ids = Vec::new();
    for event in &webhooks {
        let id = Uuid::new_v4().to_string();
        env.append_raw("webhook", &id, tenant, event.clone())
            .await
            .expect("appended");
        webhook_ids.push(id);
    }
    // A webhook snapshot keeps its payload as the state does.
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                payload)
         VALUES ('webhook', $1, 1, 1, jsonb_build_object('received', $2::jsonb->'Received',
                                                           'status', 'pending'))",
    )
    .bind(&webhook_ids[0])
    .bind(&webhooks[0])
    .execute(&env.pool)
    .await
    .expect("snapshot");
    // A snapshot taken before sealing keeps the number and the replies in clear.
    let mut state = Conversation::default();
    for (_, event) in history.iter().filter(|(c, _)| *c == &theirs) {
        state.apply(serde_json::from_value::<ConversationEvent>(event.clone()).expect("event"));
    }
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                payload)
         VALUES ('whatsapp_conversation', $1, 5, 1, $2)",
    )
    .bind(&theirs)
    .bind(serde_json::to_value(&state).expect("json"))
    .execute(&env.pool)
    .await
    .expect("snapshot");
    let keyring = env.keyring();
    let gone_contact = events::whatsapp::contact_subject(tenant, erased_number).expect("a subject");
    keyring
        .register(Subject {
            id: gone_contact,
            kind: SubjectKind::Contact,
            tenant_id: tenant,
        })
        .await
        .expect("known");
    erase(&env, gone_contact, tenant).await;

    let before = event_rows(&env).await;
    let done = command_api::privacy::store::seal_store(&env.pool, &keyring, 2)
        .await
        .expect("transformed");
    assert_eq!(
        (done.events, done.erased, done.snapshots, done.refused),
        (10, 4, 2, 0),
        "Sheena's 5 and 2 webhooks; the erased contact's number, text, message and status \
         as [erased]; the payment's webhook as it was"
    );
    assert_eq!(event_rows(&env).await, before, "positions and times kept");
    let store = store_text(&env).await;
    let snapshot: String =
        sqlx::query_scalar("SELECT payload::text FROM snapshots WHERE aggregate_id = $1")
            .bind(&theirs)
            .fetch_one(&env.pool)
            .await
            .expect("the snapshot");
    for plain in [
        sheena,
        erased_number,
        "Sheena",
        "Maison",
        "48.858",
        "Bonjour",
        "Erased text",
        "33612345678",
        "Texto",
    ] {
        assert!(!store.contains(plain), "{plain:?} in clear in the store");
        assert!(
            !snapshot.contains(plain),
            "{plain:?} in clear in the snapshot"
        );
    }
    assert!(
        store.contains("order_update"),
        "the template's name is the tenant's"
    );
    assert!(
        store.contains("payment_intent.succeeded"),
        "a payment's webhook is nobody's"
    );
    let kept: Vec<Value> = sqlx::query_scalar(
        "SELECT payload->'Received'->'payload' FROM events
          WHERE aggregate_type = 'webhook' ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("webhooks");
    let mut opened_kept = Vec::new();
    for mut payload in kept {
        keyring.open_value(&mut payload).await.expect("opened");
        opened_kept.push(payload);
    }
    let sheenas: Value =
        serde_json::from_str(opened_kept[0].as_str().expect("sealed JSON")).expect("JSON");
    assert_eq!(sheenas["message"]["text"]["body"], "Bonjour");
    assert_eq!(opened_kept[1], ERASED);
    let sms: Value =
        serde_json::from_str(opened_kept[2].as_str().expect("sealed JSON")).expect("JSON");
    assert_eq!(sms["From"], "+33612345678");
    assert_eq!(opened_kept[3]["id"], "evt_1");
    let snapshot: Value = sqlx::query_scalar(
        "SELECT payload->'received'->'payload' FROM snapshots WHERE aggregate_id = $1",
    )
    .bind(&webhook_ids[0])
    .fetch_one(&env.pool)
    .await
    .expect("the webhook's snapshot");
    assert!(
        snapshot.as_str().is_some_and(events::personal::is_sealed),
        "{snapshot}"
    );

    let audit = command_api::snapshots::audit(&env.pool)
        .await
        .expect("audit");
    assert!(audit.is_sound(), "{:?}", audit.findings);

    // Each opens to what it was; the conversation names itself without its number.
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT aggregate_id, payload FROM events
          WHERE aggregate_type = 'whatsapp_conversation' ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    let mut opened = Vec::new();
    for (conversation, mut payload) in rows {
        keyring.open_value(&mut payload).await.expect("opened");
        opened.push((conversation, payload));
    }
    assert_eq!(opened[0].1["Started"]["wa_id"], sheena);
    assert_eq!(opened[0].1["Started"]["conversation_id"], theirs.as_str());
    let body = &opened[1].1["MessageReceived"];
    assert_eq!(body["profile_name"], "Sheena Nelson");
    assert_eq!(
        received_content(body["content"].clone()),
        json!({"latitude": 48.8583701, "name": "Maison"})
    );
    assert_eq!(
        opened[3].1["MessageRevised"]["content"]["body"],
        "Bonjour Sheena !"
    );
    assert_eq!(
        opened[4].1["MessageQueued"]["content"]["parameters"],
        json!(["Sheena", "42"])
    );
    assert_eq!(opened[5].1["Started"]["wa_id"], ERASED);
    assert_eq!(opened[6].1["MessageReceived"]["content"], ERASED);

    // The conversation goes on from its transformed snapshot; a second run finds nothing.
    let history: ConversationServices = Arc::new(command_api::whatsapp::history::PgHistory {
        pool: env.pool.clone(),
        keyring: keyring.clone(),
    });
    let bus = CommandBus::<Conversation>::new(
        env.pool.clone(),
        history,
        100,
        Arc::new(tokio::sync::Notify::new()),
    );
    let loaded = bus.load(&theirs).await.expect("loaded");
    assert_eq!(loaded.id(), theirs);
    assert_eq!(keyring.open(loaded.wa_id()).await.expect("opened"), sheena);
    nothing_left_to_seal(&env, &keyring, 2).await;
    // Declaring the transform lets nothing but sealing through: not a changed fact, not an
    // added key, not a conversation id that is not the event's own.
    for (event_type, change) in [
        (
            "MessageQueued",
            "jsonb_set(payload, '{MessageQueued,author,id}', '\"agent-2\"')",
        ),
        (
            "MessageQueued",
            "jsonb_set(payload, '{MessageQueued,extra}', '\"pii1.x\"')",
        ),
        (
            "Started",
            "jsonb_set(payload, '{Started,conversation_id}', '\"another\"')",
        ),
    ] {
        assert!(
            transform_refuses(&env, &theirs, event_type, change).await,
            "{change} is refused"
        );
    }
}

/// Contact `number` of `tenant`, known to the key table and erased before the transform.
async fn contact_erased_before(
    env: &TestEnv,
    keyring: &Keyring,
    tenant: &str,
    number: &str,
) -> Uuid {
    let id = events::personal::subject_id("contact", tenant, number);
    keyring
        .register(Subject {
            id,
            kind: SubjectKind::Contact,
            tenant_id: tenant,
        })
        .await
        .expect("known");
    erase(env, id, tenant).await;
    id
}

/// Runs the store's transform (`batch` events a transaction) and checks what every run
/// must leave: each event's position, stream, time and metadata as they were, none of
/// `plains` in clear in the store or in the snapshots of `snapshot_type`, and the snapshots
/// still the state a replay gives. What it did, for the caller to check.
async fn transformed(
    env: &TestEnv,
    keyring: &Keyring,
    batch: i64,
    snapshot_type: &str,
    plains: &[&str],
) -> command_api::privacy::store::Transformed {
    let before = event_rows(env).await;
    let done = command_api::privacy::store::seal_store(&env.pool, keyring, batch)
        .await
        .expect("transformed");
    assert_eq!(event_rows(env).await, before, "positions and times kept");
    let store = store_text(env).await;
    let snapshots: String = sqlx::query_scalar(
        "SELECT coalesce(string_agg(payload::text, ' '), '') FROM snapshots
          WHERE aggregate_type = $1",
    )
    .bind(snapshot_type)
    .fetch_one(&env.pool)
    .await
    .expect("the snapshots");
    for plain in plains {
        assert!(!store.contains(plain), "{plain:?} in clear in the store");
        assert!(
            !snapshots.contains(plain),
            "{plain:?} in clear in a snapshot"
        );
    }
    let audit = command_api::snapshots::audit(&env.pool)
        .await
        .expect("audit");
    assert!(audit.is_sound(), "{:?}", audit.findings);
    done
}

#[tokio::test]
async fn the_stores_transform_seals_sms_and_calls_for_their_other_party() {
    use serde_json::{json, Value};

    let env = TestEnv::new().await;
    let tenant = "tel-old";
    let (caller, texted, ours) = ("+15551230001", "+15551230002", "+15557650002");
    let at = chrono::Utc::now();
    // As a release before sealing wrote them.
    let history = [
        (
            "sms",
            "SM1@+15557650002",
            json!({"SmsReceived": {"from": caller, "to": ours, "body": "Is the shop open?",
                                   "media_count": 0, "webhook_id": "w1", "at": at}}),
        ),
        (
            "sms",
            "SM2@+15557650002",
            json!({"DeliveryStatusChanged": {"status": "delivered", "error_code": null,
                                             "from": ours, "to": texted, "webhook_id": "w2",
                                             "at": at}}),
        ),
        (
            "call",
            "CA1",
            json!({"CallStatusChanged": {"status": "completed", "direction": "inbound",
                                         "from": caller, "to": ours, "duration_secs": 30,
                                         "recording_url": null, "webhook_id": "w3", "at": at}}),
        ),
        (
            "call",
            "CA1",
            json!({"CallRecorded": {"recording_sid": "RE1",
                                    "recording_url": "https://space.example/recordings/RE1",
                                    "duration_secs": 30, "webhook_id": "w4", "at": at}}),
        ),
    ];
    for (aggregate_type, id, event) in &history {
        env.append_raw(aggregate_type, id, tenant, event.clone())
            .await
            .expect("appended");
    }
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                payload)
         VALUES ('sms', 'SM1@+15557650002', 1, 1,
                 '{\"received\": true, \"rank\": 3, \"body\": \"Is the shop open?\", \"media\": []}')",
    )
    .execute(&env.pool)
    .await
    .expect("snapshot");
    // The one they texted was erased before the transform.
    let keyring = env.keyring();
    contact_erased_before(&env, &keyring, tenant, texted).await;
    let plains = ["15551230001", "15551230002", "shop open", "recordings/RE1"];
    let done = transformed(&env, &keyring, 3, "sms", &plains).await;
    assert_eq!(
        (done.events, done.erased, done.snapshots, done.refused),
        (4, 1, 1, 0),
        "every event; the erased recipient's number as [erased]"
    );
    let store = store_text(&env).await;
    assert!(store.contains(ours), "the tenant's own number is nobody's");
    let mut rows: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type IN ('sms', 'call')
          ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    keyring
        .open_values(rows.iter_mut().collect())
        .await
        .expect("opened");
    assert_eq!(rows[0]["SmsReceived"]["from"], caller);
    assert_eq!(rows[0]["SmsReceived"]["body"], "Is the shop open?");
    assert_eq!(rows[1]["DeliveryStatusChanged"]["to"], ERASED);
    assert_eq!(rows[1]["DeliveryStatusChanged"]["from"], ours);
    assert_eq!(rows[2]["CallStatusChanged"]["from"], caller);
    assert_eq!(
        rows[3]["CallRecorded"]["recording_url"],
        "https://space.example/recordings/RE1"
    );
    nothing_left_to_seal(&env, &keyring, 3).await;
}

#[tokio::test]
async fn the_stores_transform_seals_staff_emails_for_each_member_and_their_snapshots() {
    use command_api::identity::aggregate::AdminUser;
    use cqrs_es::Aggregate;
    use serde_json::{json, Value};

    let env = TestEnv::new().await;
    let (agent, root, gone) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    let created = |email: &str, tenant: Value, role: &str| {
        json!({"Created": {"email": email, "tenant_id": tenant, "role": role,
                           "department": null}})
    };
    // As a release before sealing wrote them: an agent, a super admin, an erased agent.
    let history = [
        (
            agent,
            "acme",
            created("ann@acme.example", json!("acme"), "agent"),
        ),
        (
            root,
            "platform",
            created("root@platform.example", Value::Null, "super_admin"),
        ),
        (
            gone,
            "acme",
            created("gone@acme.example", json!("acme"), "agent"),
        ),
    ];
    for (id, tenant, event) in &history {
        env.append_raw("admin_user", &id.to_string(), tenant, event.clone())
            .await
            .expect("appended");
    }
    let mut state = AdminUser::default();
    state.apply(serde_json::from_value(history[0].2.clone()).expect("event"));
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                payload)
         VALUES ('admin_user', $1, 1, 1, $2)",
    )
    .bind(agent.to_string())
    .bind(serde_json::to_value(&state).expect("json"))
    .execute(&env.pool)
    .await
    .expect("snapshot");
    erase(&env, gone, "acme").await;

    let keyring = env.keyring();
    let done = command_api::privacy::store::seal_store(&env.pool, &keyring, 2)
        .await
        .expect("transformed");
    assert_eq!(
        (done.events, done.erased, done.snapshots, done.refused),
        (3, 1, 1, 0),
        "three e-mails, the erased one as [erased]; the agent's snapshot"
    );
    let store = store_text(&env).await;
    let snapshot: String = sqlx::query_scalar(
        "SELECT payload::text FROM snapshots WHERE aggregate_type = 'admin_user'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("the snapshot");
    for plain in ["ann@acme", "root@platform", "gone@acme"] {
        assert!(!store.contains(plain), "{plain:?} in clear in the store");
        assert!(
            !snapshot.contains(plain),
            "{plain:?} in clear in the snapshot"
        );
    }
    let audit = command_api::snapshots::audit(&env.pool)
        .await
        .expect("audit");
    assert!(audit.is_sound(), "{:?}", audit.findings);
    let emails: Vec<(String, String)> = sqlx::query_as(
        "SELECT aggregate_id, payload->'Created'->>'email' FROM events
          WHERE aggregate_type = 'admin_user' ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("e-mails");
    let subject = |sealed: &str| events::personal::SealedField::parse(sealed).map(|f| f.subject);
    assert_eq!(subject(&emails[0].1), Some(agent), "sealed for the agent");
    assert_eq!(
        subject(&emails[1].1),
        Some(root),
        "sealed for the super admin"
    );
    assert_eq!(
        keyring.open(&emails[0].1).await.expect("opened"),
        "ann@acme.example"
    );
    assert_eq!(
        keyring.open(&emails[1].1).await.expect("opened"),
        "root@platform.example"
    );
    assert_eq!(emails[2].1, ERASED);
    let known = keyring.subject(root).await.expect("read").expect("known");
    assert_eq!(
        known.tenant_id, "platform",
        "a super admin's home is the platform"
    );
    nothing_left_to_seal(&env, &keyring, 2).await;
}

#[tokio::test]
async fn an_attachments_file_name_is_sealed_for_the_customer_and_erased_with_them() {
    use crate::chat::{open_thread, post};
    use serde_json::{json, Value};
    use std::time::Duration;

    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "named").await;
    let ana = env.phone_user(&tenant, "phone-ana");
    let (thread, _) = open_thread(&env, &api, &ana, json!({})).await;
    let file = json!({"object_key": format!("tenants/{tenant}/uploads/scan.pdf"),
                      "content_type": "application/pdf", "name": "passport-ana-garcia.pdf",
                      "size_bytes": 2048});
    let sent = post(
        &env,
        &api,
        &ana,
        &format!("/v1/chat/threads/{thread}/messages"),
        json!({"text": "", "attachment": file}),
    )
    .await;
    assert_eq!(sent.status(), 201);
    assert!(
        !store_text(&env).await.contains("passport-ana"),
        "the name is sealed in the store"
    );
    let admin = env.admin_of(&tenant);
    let url = query.url(&format!("/v1/chat/threads/{thread}/messages"));
    let name_is = |expected: &'static str| {
        let (env, url, admin) = (&env, &url, &admin);
        async move {
            crate::support::eventually(Duration::from_secs(20), expected, || async {
                let page: Value = env.get_json(url, admin).await;
                (page["items"][0]["attachment"]["name"] == expected).then_some(())
            })
            .await
        }
    };
    name_is("passport-ana-garcia.pdf").await;
    let subject = events::personal::subject_id("phone_user", &tenant, "phone-ana");
    let erased = post(
        &env,
        &api,
        &admin,
        &format!("/v1/privacy/subjects/{subject}/erase"),
        json!({}),
    )
    .await;
    assert_eq!(erased.status(), 200);
    name_is("[erased]").await;
    projector.abort();
    projector::rebuild::rebuild(&env.pool, &projector::chat::ChatProjection, &env.keyring())
        .await
        .expect("rebuild");
    name_is("[erased]").await;
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn the_stores_transform_names_a_threads_contact_by_subject_id_and_seals_their_number() {
    use command_api::chat::aggregate::Thread;
    use cqrs_es::Aggregate;
    use events::chat::Party;
    use serde_json::{json, Value};

    let env = TestEnv::new().await;
    let tenant = "contacts-old";
    let (texter, gone) = ("+15551230001", "+15551230002");
    let (kept, erased_thread) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let spelled = Uuid::new_v4().to_string();
    let at = chrono::Utc::now();
    let contact = |number: &str| json!({"id": number, "kind": "contact"});
    let opened = |number: &str| {
        json!({"Opened": {"tenant_id": tenant, "channel": "sms",
                          "opened_by": {"id": "webhooks", "kind": "system"},
                          "customer": contact(number), "subject": null,
                          "bot_enabled": true, "tags": [], "at": at}})
    };
    let sent = |number: &str, id: &str, text: &str| {
        json!({"MessageSent": {"message_id": id, "number": 1, "author": contact(number),
                               "client_message_id": null, "text": text, "attachment": null,
                               "scheduled_id": null, "at": at}})
    };
    // As a release before contacts were named by subject id wrote them.
    let history = [
        (&kept, opened(texter)),
        (&kept, sent(texter, "m1", "Is the shop open?")),
        (&erased_thread, opened(gone)),
        (&erased_thread, sent(gone, "m2", "Call me back")),
        // The first one again, as an earlier release could spell their number.
        (&spelled, opened("tel:+1 555-123-0001")),
    ];
    for (id, event) in &history {
        env.append_raw("thread", id, tenant, event.clone())
            .await
            .expect("appended");
    }
    let mut state = Thread::default();
    for (_, event) in &history[..2] {
        state.apply(serde_json::from_value(event.clone()).expect("event"));
    }
    sqlx::query(
        "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot,
                                payload)
         VALUES ('thread', $1, 2, 2, $2)",
    )
    .bind(&kept)
    .bind(serde_json::to_value(&state).expect("json"))
    .execute(&env.pool)
    .await
    .expect("snapshot");
    // The second contact was erased before the transform.
    let keyring = env.keyring();
    let gone_subject = contact_erased_before(&env, &keyring, tenant, gone).await;
    let plains = [
        "15551230001",
        "15551230002",
        "555-123-0001",
        "shop open",
        "Call me back",
    ];
    let done = transformed(&env, &keyring, 3, "thread", &plains).await;
    assert_eq!(
        (done.events, done.erased, done.snapshots, done.refused),
        (5, 2, 1, 0),
        "both threads' openings and messages; the erased contact's number and text as [erased]"
    );
    let snapshot: String =
        sqlx::query_scalar("SELECT payload::text FROM snapshots WHERE aggregate_type = 'thread'")
            .fetch_one(&env.pool)
            .await
            .expect("the snapshot");
    let mut rows: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE aggregate_type = 'thread' ORDER BY global_position",
    )
    .fetch_all(&env.pool)
    .await
    .expect("events");
    keyring
        .open_values(rows.iter_mut().collect())
        .await
        .expect("opened");
    let named = Party::contact(tenant, texter);
    assert_eq!(rows[0]["Opened"]["customer"]["id"], named.id.as_str());
    assert_eq!(rows[0]["Opened"]["customer_address"], texter);
    assert_eq!(rows[1]["MessageSent"]["author"]["id"], named.id.as_str());
    assert_eq!(rows[1]["MessageSent"]["text"], "Is the shop open?");
    assert_eq!(
        rows[2]["Opened"]["customer"]["id"],
        gone_subject.to_string().as_str()
    );
    assert_eq!(rows[2]["Opened"]["customer_address"], ERASED);
    assert_eq!(rows[3]["MessageSent"]["text"], ERASED);
    // One person however their number was spelled.
    assert_eq!(rows[4]["Opened"]["customer"]["id"], named.id.as_str());
    assert_eq!(rows[4]["Opened"]["customer_address"], texter);
    // The thread still takes its contact's messages, credited to them as it names them now.
    let thread: Thread = serde_json::from_str(&snapshot).expect("a thread");
    assert_eq!(thread.customer(), Some(&named));
    nothing_left_to_seal(&env, &keyring, 3).await;
    // The trigger lets a contact's number become a subject id only with their number
    // sealed beside it, and no other party's id change.
    let (contact_thread, phone_thread) = (Uuid::new_v4().to_string(), Uuid::new_v4().to_string());
    let mut phone_opened = opened(texter);
    phone_opened["Opened"]["customer"]["kind"] = json!("phone");
    for (id, event) in [
        (&contact_thread, opened(texter)),
        (&phone_thread, phone_opened),
    ] {
        env.append_raw("thread", id, tenant, event)
            .await
            .expect("appended");
    }
    let to_uuid = format!(
        "jsonb_set(payload, '{{Opened,customer,id}}', '\"{}\"')",
        Uuid::new_v4()
    );
    let with_address = format!("jsonb_set({to_uuid}, '{{Opened,customer_address}}', '\"pii1.x\"')");
    assert!(transform_refuses(&env, &contact_thread, "Opened", &to_uuid).await);
    assert!(transform_refuses(&env, &phone_thread, "Opened", &with_address).await);
    assert!(!transform_refuses(&env, &contact_thread, "Opened", &with_address).await);
}

#[tokio::test]
async fn erasing_a_contact_erases_the_phone_user_their_number_signed_in_as() {
    use crate::chat::post;

    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let _projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "one-person").await;
    let (number, other) = ("+34600555666", "+34600777888");
    let (user, _) = signed_in(&env, &api, &query, &tenant, number).await;
    let (kept, _) = signed_in(&env, &api, &query, &tenant, other).await;
    // The contact their number is (known once something was sealed for them).
    let contact = events::personal::subject_id("contact", &tenant, number);
    env.keyring()
        .register(Subject {
            id: contact,
            kind: SubjectKind::Contact,
            tenant_id: &tenant,
        })
        .await
        .expect("known");
    let erased = post(
        &env,
        &api,
        &env.admin_of(&tenant),
        &format!("/v1/privacy/subjects/{contact}/erase"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(erased.status(), 200);
    let states: Vec<(String, bool)> = sqlx::query_as(
        "SELECT subject_id::text, erased_at IS NOT NULL FROM data_subjects
          WHERE tenant_id = $1 ORDER BY 1",
    )
    .bind(&tenant)
    .fetch_all(&env.pool)
    .await
    .expect("subjects");
    let erased_of = |id: &str| states.iter().find(|(s, _)| s == id).map(|(_, e)| *e);
    assert_eq!(erased_of(&contact.to_string()), Some(true));
    assert_eq!(erased_of(&user), Some(true), "the same person's sign-in");
    assert_eq!(erased_of(&kept), Some(false), "another number's");
    let numbers: Vec<String> =
        sqlx::query_scalar("SELECT phone FROM phone_users WHERE tenant_id = $1")
            .bind(&tenant)
            .fetch_all(&env.pool)
            .await
            .expect("numbers");
    assert_eq!(numbers, [other]);
    let recorded: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'data_subject'")
            .fetch_one(&env.pool)
            .await
            .expect("count");
    assert_eq!(recorded, 2, "two erasures, each recorded");

    // A contact whose number never signed in, known from their SMS thread, and one known
    // only from a call (each as the platform records them): erased, their numbers cannot
    // sign in later, and a code one of them asked for and never used goes with them.
    let (stranger, caller) = ("+34600999000", "+34600999111");
    let sealed_for = |number: &'static str| {
        let (tenant, env) = (tenant.clone(), &env);
        async move {
            let id = events::personal::subject_id("contact", &tenant, number);
            let subject = Subject {
                id,
                kind: SubjectKind::Contact,
                tenant_id: &tenant,
            };
            (
                id,
                env.keyring().seal(subject, number).await.expect("sealed"),
            )
        }
    };
    let (contact, address) = sealed_for(stranger).await;
    let (call_contact, from) = sealed_for(caller).await;
    let opened = serde_json::json!({"Opened": {"tenant_id": tenant, "channel": "sms",
        "opened_by": {"id": "webhooks", "kind": "system"},
        "customer": {"id": contact.to_string(), "kind": "contact"},
        "customer_address": address, "subject": null, "bot_enabled": true, "tags": [],
        "at": chrono::Utc::now()}});
    env.append_raw("thread", &Uuid::new_v4().to_string(), &tenant, opened)
        .await
        .expect("appended");
    let call = serde_json::json!({"CallStatusChanged": {"status": "completed",
        "direction": "inbound", "from": from, "to": "+34900000000", "duration_secs": 30,
        "recording_url": null, "webhook_id": "w1", "at": chrono::Utc::now()}});
    env.append_raw("call", "CAonly", &tenant, call)
        .await
        .expect("appended");
    let asked = crate::identity::request_code(&env, &api, &tenant, caller).await;
    assert_eq!(asked.status(), 202);
    let erased = post(
        &env,
        &api,
        &env.admin_of(&tenant),
        &format!("/v1/privacy/subjects/{call_contact}/erase"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(erased.status(), 200);
    let captured: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbound_messages WHERE recipient = $1")
            .bind(caller)
            .fetch_one(&env.pool)
            .await
            .expect("counted");
    assert_eq!(captured, 0, "the unused code went with them");
    let requested = crate::identity::request_code(&env, &api, &tenant, caller).await;
    assert_eq!(requested.status(), 202, "answered as for any number");
    let inbox = env
        .get_json(
            &query.url("/v1/dev/inbox?recipient=%2B34600999111"),
            &env.super_admin(),
        )
        .await;
    assert_eq!(
        inbox["items"],
        serde_json::json!([]),
        "no code sent to the caller"
    );
    let erased = post(
        &env,
        &api,
        &env.admin_of(&tenant),
        &format!("/v1/privacy/subjects/{contact}/erase"),
        serde_json::json!({}),
    )
    .await;
    assert_eq!(erased.status(), 200);
    let requested = crate::identity::request_code(&env, &api, &tenant, stranger).await;
    assert_eq!(requested.status(), 202, "answered as for any number");
    let inbox = env
        .get_json(
            &query.url("/v1/dev/inbox?recipient=%2B34600999000"),
            &env.super_admin(),
        )
        .await;
    assert_eq!(
        inbox["items"],
        serde_json::json!([]),
        "no code sent to them"
    );
}

#[tokio::test]
async fn an_erased_contact_a_thread_still_names_by_number_is_named_by_subject_id_in_the_read_models(
) {
    use serde_json::json;
    use std::time::Duration;

    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let _projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "by-number").await;
    let admin = env.admin_of(&tenant);
    let number = "+15551239876";
    let thread = Uuid::new_v4().to_string();
    let at = chrono::Utc::now();
    let contact = json!({"id": number, "kind": "contact"});
    // As a release before contacts were named by subject id wrote it (no transform yet).
    for event in [
        json!({"Opened": {"tenant_id": tenant, "channel": "sms",
                          "opened_by": {"id": "webhooks", "kind": "system"},
                          "customer": contact, "subject": null, "bot_enabled": true,
                          "tags": [], "at": at}}),
        json!({"MessageSent": {"message_id": "m1", "number": 1, "author": contact,
                               "client_message_id": null, "text": "Call me on this one",
                               "attachment": null, "scheduled_id": null, "at": at}}),
    ] {
        env.append_raw("thread", &thread, &tenant, event)
            .await
            .expect("appended");
    }
    let detail = query.url(&format!("/v1/chat/threads/{thread}"));
    crate::support::eventually(Duration::from_secs(20), "the old thread", || async {
        let t = env.get_json(&detail, &admin).await;
        (t["customer_id"] == number && t["message_count"] == 1).then_some(())
    })
    .await;
    let subject = events::personal::subject_id("contact", &tenant, number);
    env.keyring()
        .register(Subject {
            id: subject,
            kind: SubjectKind::Contact,
            tenant_id: &tenant,
        })
        .await
        .expect("known");
    let erased = crate::support::erase_subject(&env, &api, &admin, subject).await;
    assert_eq!(erased.status(), 200);
    let messages = query.url(&format!("/v1/chat/threads/{thread}/messages"));
    let page = crate::support::eventually(Duration::from_secs(20), "renamed", || async {
        let t = env.get_json(&detail, &admin).await;
        let page = env.get_json(&messages, &admin).await;
        (t["customer_id"] == subject.to_string().as_str()).then_some(page)
    })
    .await;
    assert_eq!(page["items"][0]["author_id"], subject.to_string().as_str());
    assert_eq!(page["items"][0]["text"], ERASED);
    let left: String = sqlx::query_scalar(
        "SELECT concat_ws(' ',
                (SELECT string_agg(t::text, ' ') FROM chat_threads t),
                (SELECT string_agg(m::text, ' ') FROM chat_messages m),
                (SELECT string_agg(r::text, ' ') FROM chat_reads r))",
    )
    .fetch_one(&env.pool)
    .await
    .expect("read models");
    assert!(!left.contains("15551239876"), "{left}");
}

/// A chatbot user of `tenant` with `number` who recorded themselves, and known as the
/// contact of their number (an SMS thread, as the platform names them), whose recording
/// the blob store cannot delete (a folder in its place): their id, their contact's id and
/// the recording's path.
async fn blocked_person(
    env: &TestEnv,
    api: &crate::support::Service,
    query: &crate::support::Service,
    tenant: &str,
    number: &str,
) -> (String, Uuid, std::path::PathBuf) {
    let (user, token) = signed_in(env, api, query, tenant, number).await;
    let contact = events::personal::subject_id("contact", tenant, number);
    let subject = Subject {
        id: contact,
        kind: SubjectKind::Contact,
        tenant_id: tenant,
    };
    let address = env.keyring().seal(subject, number).await.expect("sealed");
    let opened = serde_json::json!({"Opened": {"tenant_id": tenant, "channel": "sms",
        "opened_by": {"id": "webhooks", "kind": "system"},
        "customer": {"id": contact.to_string(), "kind": "contact"},
        "customer_address": address, "subject": null, "bot_enabled": true, "tags": [],
        "at": chrono::Utc::now()}});
    env.append_raw("thread", &Uuid::new_v4().to_string(), tenant, opened)
        .await
        .expect("appended");
    let part = reqwest::multipart::Part::bytes(b"OggS\x00\x02\x00\x00 a voice".to_vec())
        .mime_str("audio/ogg")
        .expect("mime");
    let uploaded = env
        .http
        .post(api.url("/v1/audio"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("sent");
    assert_eq!(uploaded.status(), 201);
    let audio: serde_json::Value = uploaded.json().await.expect("json");
    let dir = env.blob_dir.join(format!(
        "tenants/{tenant}/audio/{}",
        audio["id"].as_str().expect("id")
    ));
    let file = std::fs::read_dir(&dir)
        .expect("stored")
        .flatten()
        .next()
        .expect("a file")
        .path();
    std::fs::remove_file(&file).expect("removed");
    std::fs::create_dir_all(file.join("blocker")).expect("blocked");
    (user, contact, file)
}

/// Whether each of `ids` is erased.
async fn all_erased(env: &TestEnv, ids: &[Uuid]) -> bool {
    let erased: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM data_subjects WHERE subject_id = ANY($1) AND erased_at IS NOT NULL",
    )
    .bind(ids)
    .fetch_one(&env.pool)
    .await
    .expect("subjects");
    erased == ids.len() as i64
}

#[tokio::test]
async fn an_erasure_asked_again_after_it_failed_halfway_finishes_for_every_subject_of_the_person() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let _projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = crate::support::create_tenant(&env, &api, "halfway").await;
    let admin = env.admin_of(&tenant);
    // Asked for from either side, then again from the same side or the other: every
    // subject of the person ends erased, and the file deleted.
    for (number, first_side_contact, again_side_contact) in [
        ("+34611222333", false, false),
        ("+34611222444", true, false),
        ("+34611222555", false, true),
    ] {
        let (user, contact, file) = blocked_person(&env, &api, &query, &tenant, number).await;
        let user_id = Uuid::parse_str(&user).expect("uuid");
        let side = |contact_side: bool| if contact_side { contact } else { user_id };
        let first =
            crate::support::erase_subject(&env, &api, &admin, side(first_side_contact)).await;
        assert_eq!(first.status(), 503, "{number}");
        assert!(all_erased(&env, &[user_id, contact]).await, "{number}");
        std::fs::remove_dir_all(&file).expect("unblocked");
        std::fs::write(&file, b"OggS a voice").expect("back");
        let again =
            crate::support::erase_subject(&env, &api, &admin, side(again_side_contact)).await;
        assert_eq!(again.status(), 200, "{number}");
        assert!(!file.exists(), "{number}: deleted when asked again");
    }
}
