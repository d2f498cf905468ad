//! The three services as real processes: a tenant posted to command-api is visible through
//! query-api, audited, and on NATS with the agreed subject and `Nats-Msg-Id`; and a
//! command-api that dies after committing and before publishing loses nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use futures::StreamExt;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::support::{eventually, free_port, nats_url, tenant_body, TestEnv, SECRET};

/// The workspace's built binaries sit beside this test's own directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    dir.join(name)
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where a spawned service's logs go: a file of `TEST_LOG_DIR` (searched by the test
/// command, as the in-process services' are), the test's stderr with `TEST_LOG`, else
/// nowhere.
fn log_sink(name: &str) -> Stdio {
    if let Some(dir) = std::env::var_os("TEST_LOG_DIR") {
        let path = std::path::Path::new(&dir).join(format!(
            "{name}-{}-{}.log",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        return std::fs::File::create(&path)
            .map(Stdio::from)
            .unwrap_or_else(|e| panic!("{} opens: {e}", path.display()));
    }
    if std::env::var_os("TEST_LOG").is_some() {
        Stdio::inherit()
    } else {
        Stdio::null()
    }
}

fn spawn(env: &TestEnv, name: &str, extra: &[(&str, String)]) -> Process {
    let mut command = Command::new(binary(name));
    command
        .env_clear()
        .env("DATABASE_URL", &env.database_url)
        .env("NATS_URL", nats_url())
        .env("NATS_STREAM", &env.stream)
        .env("NATS_SUBJECT_PREFIX", &env.prefix)
        .env("NEST_AUTH_SECRET", SECRET)
        .env("ALLOW_DEV_SECRETS", "true")
        .env("HOST", "127.0.0.1")
        .env("BLOB_DIR", &env.blob_dir)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(log_sink(name));
    for (k, v) in extra {
        command.env(k, v);
    }
    Process(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}")),
    )
}

async fn wait_ready(env: &TestEnv, url: &str) {
    eventually(Duration::from_secs(30), url, || async {
        let r = env.http.get(url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_tenant_posted_to_command_api_is_queried_audited_and_on_nats() {
    let env = TestEnv::new().await;
    let (command_port, query_port) = (free_port(), free_port());
    let _command = spawn(&env, "command-api", &[("PORT", command_port.to_string())]);
    let _projector = spawn(&env, "projector", &[]);
    // Generous: the whole suite shares this machine's two cores.
    let _query = spawn(
        &env,
        "query-api",
        &[
            ("QUERY_PORT", query_port.to_string()),
            ("READ_WAIT_MS", "20000".into()),
        ],
    );
    let command_url = format!("http://127.0.0.1:{command_port}");
    let query_url = format!("http://127.0.0.1:{query_port}");
    wait_ready(&env, &format!("{command_url}/health/ready")).await;
    wait_ready(&env, &format!("{query_url}/health/ready")).await;

    let created = env
        .http
        .post(format!("{command_url}/v1/tenants"))
        .bearer_auth(env.super_admin())
        .json(&tenant_body("end-to-end"))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    let version = created["version"].as_u64().expect("version");

    let detail = env
        .http
        .get(format!("{query_url}/v1/tenants/{id}?min_version={version}"))
        .bearer_auth(env.super_admin())
        .send()
        .await
        .expect("sent");
    assert_eq!(detail.status(), 200);
    assert!(
        detail.headers().get("x-read-stale").is_none(),
        "caught up within the wait"
    );
    let detail: Value = detail.json().await.expect("json");
    assert_eq!(
        (detail["slug"].clone(), detail["status"].clone()),
        (json!("end-to-end"), json!("active"))
    );

    let audit: Value = env
        .get_json(
            &format!("{query_url}/v1/audit/tenant/{id}"),
            &env.admin_of(&id),
        )
        .await;
    assert_eq!(audit["events"][0]["event_type"], "Created");
    assert_eq!(audit["events"][0]["metadata"]["actor_id"], "root-admin");

    let stream = env.js.get_stream(&env.stream).await.expect("stream");
    let consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("consumer");
    let mut messages = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .expect("fetch");
    let message = messages.next().await.expect("a message").expect("ok");
    assert_eq!(
        message.subject.as_str(),
        format!("{}.{id}.tenant.Created", env.prefix)
    );
    let headers = message.headers.clone().expect("headers");
    assert_eq!(
        headers.get("Nats-Msg-Id").map(|v| v.to_string()),
        Some(format!("tenant:{id}:1"))
    );
    assert_eq!(
        headers.get("Tenant-Id").map(|v| v.to_string()),
        Some(id.clone())
    );
    let envelope: events::Envelope = serde_json::from_slice(&message.payload).expect("an envelope");
    assert_eq!(
        (envelope.aggregate_id.as_str(), envelope.sequence),
        (id.as_str(), 1)
    );
}

#[tokio::test]
async fn an_event_committed_by_a_command_api_that_dies_before_publishing_arrives_once() {
    let env = TestEnv::new().await;
    let port = free_port();
    let command_url = format!("http://127.0.0.1:{port}");
    // This instance commits but never publishes (its relay is off), then is killed.
    let mut silent = spawn(
        &env,
        "command-api",
        &[
            ("PORT", port.to_string()),
            ("RELAY_ENABLED", "false".into()),
        ],
    );
    wait_ready(&env, &format!("{command_url}/health/ready")).await;
    let _projector = spawn(&env, "projector", &[]);
    let created = env
        .http
        .post(format!("{command_url}/v1/tenants"))
        .bearer_auth(env.super_admin())
        .json(&tenant_body("survivor"))
        .send()
        .await
        .expect("sent");
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    silent.0.kill().expect("killed");
    let _ = silent.0.wait();
    assert_eq!(env.event_count().await, 1, "committed");
    // Never published: no relay ran, so the stream holds nothing (or does not exist yet: the
    // relay creates it when it first leads).
    if let Ok(mut stream) = env.js.get_stream(&env.stream).await {
        assert_eq!(
            stream.info().await.expect("info").state.messages,
            0,
            "never published"
        );
    }

    let _restarted = spawn(&env, "command-api", &[("PORT", free_port().to_string())]);
    let version = eventually(
        Duration::from_secs(30),
        "the event in the read model",
        || async {
            sqlx::query_scalar::<_, i64>("SELECT version FROM tenants WHERE id = $1::uuid")
                .bind(&id)
                .fetch_optional(&env.pool)
                .await
                .ok()?
        },
    )
    .await;
    assert_eq!(version, 1);
    let checkpoint: i64 = sqlx::query_scalar("SELECT sequence FROM projection_checkpoints WHERE projection = 'tenants' AND aggregate_id = $1")
        .bind(&id)
        .fetch_one(&env.pool)
        .await
        .expect("checkpoint");
    assert_eq!(checkpoint, 1, "applied once");
    let stream = env.js.get_stream(&env.stream).await.expect("stream");
    assert_eq!(
        stream.get_info().await.expect("info").state.messages,
        1,
        "published once"
    );
}

#[tokio::test]
async fn the_first_super_admin_is_created_from_the_command_line() {
    let env = TestEnv::new().await;
    let create = || {
        use std::io::Write;
        let mut child = Command::new(binary("command-api"))
            .args([
                "admin",
                "create",
                "--email",
                "first@platform.example",
                "--password-stdin",
            ])
            .env("DATABASE_URL", &env.database_url)
            .env("NEST_AUTH_SECRET", SECRET)
            .env("ALLOW_DEV_SECRETS", "true")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"the first admin's password\n")
            .expect("written");
        child.wait_with_output().expect("finishes")
    };
    let first = create();
    assert!(first.status.success());
    assert!(String::from_utf8_lossy(&first.stdout).starts_with("created super admin "));
    let again = create();
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout)
        .starts_with("an admin user with this e-mail exists already"));
    let role: String = sqlx::query_scalar(
        "SELECT payload->'Created'->>'role' FROM events WHERE aggregate_type = 'admin_user'",
    )
    .fetch_one(&env.pool)
    .await
    .expect("one admin");
    assert_eq!(role, "super_admin");
}

#[tokio::test]
async fn from_bootstrap_admin_to_a_signed_in_phone_user() {
    let env = TestEnv::new().await;
    let (command_port, query_port) = (free_port(), free_port());
    let _command = spawn(
        &env,
        "command-api",
        &[
            ("PORT", command_port.to_string()),
            ("ADMIN_BOOTSTRAP_EMAIL", "boss@platform.example".into()),
            (
                "ADMIN_BOOTSTRAP_PASSWORD",
                "the boss's long password".into(),
            ),
        ],
    );
    let _projector = spawn(&env, "projector", &[]);
    let _query = spawn(
        &env,
        "query-api",
        &[
            ("QUERY_PORT", query_port.to_string()),
            ("DEV_INBOX_ENABLED", "true".into()),
        ],
    );
    let command = format!("http://127.0.0.1:{command_port}");
    let query = format!("http://127.0.0.1:{query_port}");
    wait_ready(&env, &format!("{command}/health/ready")).await;
    wait_ready(&env, &format!("{query}/health/ready")).await;
    let post = |url: String, token: Option<String>, body: Value| {
        let mut request = env.http.post(url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.expect("sent");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or_default())
        }
    };

    let (status, boss) = post(
        format!("{command}/auth/admin/login"),
        None,
        json!({"email": "boss@platform.example", "password": "the boss's long password"}),
    )
    .await;
    assert_eq!(status, 200, "{boss}");
    let boss = boss["access_token"].as_str().expect("token").to_owned();
    let (status, tenant) = post(
        format!("{command}/v1/tenants"),
        Some(boss.clone()),
        tenant_body("phone-shop"),
    )
    .await;
    assert_eq!(status, 201);
    let tenant = tenant["id"].as_str().expect("id").to_owned();
    let (status, _) = post(
        format!("{command}/v1/admin-users"),
        Some(boss.clone()),
        json!({"email": "owner@phone-shop.example", "password": "the owner's long password", "tenant_id": tenant, "role": "tenant_admin"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, owner) = post(
        format!("{command}/auth/admin/login"),
        None,
        json!({"email": "owner@phone-shop.example", "password": "the owner's long password"}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(owner["user"]["tenant_id"], tenant.as_str());

    let (status, sent) = post(
        format!("{command}/auth/phone/request"),
        None,
        json!({"tenant_id": tenant, "phone": "+44 20 7946 0000"}),
    )
    .await;
    assert_eq!(status, 202, "{sent}");
    let inbox = env
        .get_json(
            &format!("{query}/v1/dev/inbox?recipient=%2B442079460000"),
            &boss,
        )
        .await;
    let code = inbox["items"][0]["body"]
        .as_str()
        .and_then(|b| {
            b.split_whitespace()
                .map(|w| w.trim_end_matches('.'))
                .find(|w| w.len() == 6 && w.bytes().all(|c| c.is_ascii_digit()))
        })
        .expect("a code in the inbox")
        .to_owned();
    let (status, phone) = post(
        format!("{command}/auth/phone/verify"),
        None,
        json!({"tenant_id": tenant, "phone": "+442079460000", "code": code}),
    )
    .await;
    assert_eq!(status, 200);
    let session = env
        .get_json(
            &format!("{command}/auth/phone/session"),
            phone["access_token"].as_str().expect("token"),
        )
        .await;
    assert_eq!(session["authenticated"], true);
    assert_eq!(session["user"]["tenant_id"], tenant.as_str());
    assert_eq!(session["user"]["phone"], "+442079460000");
}

/// The three services started at once on a new database: one migrates at a time (the other
/// waits without holding anything a concurrent index build would wait for), query-api waits
/// for the schema instead of failing on a missing table, and all three serve.
#[tokio::test]
async fn the_services_started_together_on_a_new_database_all_come_up() {
    let env = TestEnv::new().await;
    let name = format!("fresh_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&crate::support::server_url())
        .await
        .expect("server");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("a database nobody migrated");
    let url = crate::support::with_database(&crate::support::server_url(), &name);
    let mut command = env.command_config();
    command.database_url = Some(url.clone());
    let mut projector_config = env.projector_config();
    projector_config.database_url = Some(url.clone());
    let mut query = env.query_config();
    query.database_url = Some(url.clone());
    let (command, projector_pool, query) = tokio::join!(
        command_api::Application::build(command),
        projector_config.pool(),
        query_api::Application::build(query),
    );
    let command = command.expect("command-api starts");
    let projector_pool = projector_pool.expect("the projector starts");
    let query = query.expect("query-api starts, once the schema is there");
    drop((command, query));
    projector_pool.close().await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .expect("dropped");
}
