//! The test environment: a fresh database and stream per test, services spawned in-process
//! on port 0 (or as real processes for the end-to-end tests), tokens minted with the secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use events::access::{Role, TokenKeys};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const SECRET: &str = "test-secret-of-the-backbone";
/// The snapshot interval of command-api in tests (the default is 100).
pub const SNAPSHOT_EVERY: usize = 2;
/// The Soketi app the tests run.
pub const SOKETI_APP_ID: &str = "test-app";
pub const SOKETI_KEY: &str = "test-app-key";
pub const SOKETI_SECRET: &str = "test-app-secret";

/// The server the tests use, with a database name to replace.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".to_owned())
}

/// The servers' limits in tests: the defaults, but many requests in flight per token, since
/// tests fire bursts with one token (limits.rs tests the cap itself).
fn test_http_limits() -> events::http::HttpLimits {
    events::http::HttpLimits {
        concurrent_requests_per_principal: 1024,
        concurrent_requests_per_address: 1024,
        ..Default::default()
    }
}

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

pub fn with_database(url: &str, db: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/{db}")
}

/// One test's world.
pub struct TestEnv {
    pub database_url: String,
    pub db_name: String,
    pub pool: PgPool,
    pub stream: String,
    pub prefix: String,
    pub blob_dir: PathBuf,
    pub keys: TokenKeys,
    pub http: reqwest::Client,
    pub js: async_nats::jetstream::Context,
}

impl TestEnv {
    pub async fn new() -> Self {
        events::http::telemetry::init_for_tests();
        let id = Uuid::new_v4().simple().to_string();
        let db_name = format!("test_{id}");
        let mut admin = PgConnection::connect(&server_url())
            .await
            .expect("PostgreSQL is reachable");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let database_url = with_database(&server_url(), &db_name);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&database_url)
            .await
            .expect("connect to test database");
        command_api::MIGRATOR
            .run(&pool)
            .await
            .expect("migrations run");
        let client = async_nats::connect(nats_url())
            .await
            .expect("NATS is reachable");
        let blob_dir = std::env::temp_dir().join(format!("backbone-blobs-{id}"));
        Self {
            database_url,
            db_name,
            pool,
            stream: format!("TEST_{id}"),
            prefix: format!("t{id}"),
            blob_dir,
            keys: TokenKeys::new(SECRET),
            http: reqwest::Client::new(),
            js: async_nats::jetstream::new(client),
        }
    }

    /// The data keys of personal data, as the services of this environment open them (their
    /// master key derived from the token secret).
    pub fn keyring(&self) -> events::keyring::Keyring {
        events::keyring::Keyring::new(
            self.pool.clone(),
            events::personal::MasterKeys::from_settings(None, None, Some(SECRET))
                .expect("the default master key"),
        )
    }

    pub fn super_admin(&self) -> String {
        self.keys
            .admin_token("root-admin", None, Role::SuperAdmin, 600)
    }

    pub fn admin_of(&self, tenant: &str) -> String {
        self.keys.admin_token(
            &format!("admin-of-{tenant}"),
            Some(tenant),
            Role::TenantAdmin,
            600,
        )
    }

    pub fn agent_of(&self, tenant: &str) -> String {
        self.keys.admin_token(
            &format!("agent-of-{tenant}"),
            Some(tenant),
            Role::Agent,
            600,
        )
    }

    /// A token of chatbot user `user` of `tenant`, as phone sign-in issues it.
    pub fn phone_user(&self, tenant: &str, user: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        self.keys.sign(&events::access::Claims {
            sub: user.to_owned(),
            tenant_id: Some(tenant.to_owned()),
            role: None,
            kind: Some("phone".to_owned()),
            iat: now,
            exp: now + 600,
            jti: None,
            sid: None,
        })
    }

    pub fn command_config(&self) -> command_api::config::Config {
        command_api::config::Config {
            database_url: Some(self.database_url.clone()),
            neon_pg_conn: None,
            db_max_connections: 8,
            db_statement_timeout_ms: 10_000,
            db_lock_timeout_ms: 5_000,
            route_concurrency: None,
            // Tests send bursts (12, 60 at once) on a shared, busy box and expect them served
            // whole; the shedding itself is tested in command-api's `http::concurrency`.
            route_queue_target_ms: 1_000,
            commands_in_flight: None,
            nats_url: nats_url(),
            http: test_http_limits(),
            nats_stream: self.stream.clone(),
            nats_subject_prefix: self.prefix.clone(),
            nest_auth_secret: None,
            nextauth_secret: Some(SECRET.to_owned()),
            host: [127, 0, 0, 1].into(),
            port: 0,
            relay_enabled: true,
            relay_batch: 512,
            relay_poll_ms: 100,
            // Small, so that every test's aggregates cross snapshot boundaries and the
            // audit at the end of each test checks the snapshots they wrote.
            snapshot_every: SNAPSHOT_EVERY,
            blob_dir: self.blob_dir.clone(),
            max_body_bytes: 64 * 1024,
            auth_token_expires_in: "1h".into(),
            trusted_proxy_hops: 0,
            trust_forwarded_for: false,
            backend_url: None,
            credentials_key: None,
            privacy_master_keys: None,
            retention_days: 30,
            allow_dev_secrets: true,
            ctx: Self::context_settings(),
            command: None,
        }
    }

    /// The contexts' settings: their defaults, with providers' APIs that nothing listens
    /// on (a test that talks to one points it at its mock).
    fn context_settings() -> command_api::ContextSettings {
        let mut settings = command_api::ContextSettings::default();
        let nowhere = "http://127.0.0.1:9".to_owned();
        settings.payments.lyra_api_url = nowhere.clone();
        settings.audio.assemblyai_api_url = nowhere.clone();
        settings.whatsapp.whatsapp_api_url = nowhere;
        settings
    }

    pub fn query_config(&self) -> query_api::config::Config {
        query_api::config::Config {
            database_url: Some(self.database_url.clone()),
            neon_pg_conn: None,
            db_max_connections: 8,
            nest_auth_secret: Some(SECRET.to_owned()),
            nextauth_secret: None,
            host: [127, 0, 0, 1].into(),
            port: 0,
            read_wait_ms: 2000,
            blob_dir: self.blob_dir.clone(),
            nats_url: nats_url(),
            http: test_http_limits(),
            allow_dev_secrets: true,
            credentials_key: None,
            privacy_master_keys: None,
            ctx: query_api::ContextSettings {
                realtime: query_api::realtime::Settings {
                    soketi_app_key: Some(SOKETI_KEY.to_owned()),
                    soketi_app_secret: Some(SOKETI_SECRET.to_owned()),
                    realtime_subject_prefix: format!("rt{}", self.prefix),
                    ..Default::default()
                },
                dev: query_api::dev::Settings {
                    dev_inbox_enabled: true,
                },
                ..Default::default()
            },
        }
    }

    pub fn projector_config(&self) -> projector::Config {
        projector::Config {
            database_url: Some(self.database_url.clone()),
            neon_pg_conn: None,
            db_max_connections: 4,
            nats_url: nats_url(),
            nats_stream: self.stream.clone(),
            nats_subject_prefix: self.prefix.clone(),
            max_deliver: 5,
            batch: 256,
            command_api_url: "http://127.0.0.1:9".to_owned(),
            nest_auth_secret: None,
            nextauth_secret: None,
            credentials_key: None,
            // The master key command-api and query-api derive from the token secret, which
            // this projector is not given.
            privacy_master_keys: Some(format!("default={SECRET}")),
            allow_dev_secrets: true,
            port: None,
            host: std::net::Ipv4Addr::LOCALHOST.into(),
            ctx: projector::ContextSettings {
                realtime: projector::realtime::Settings {
                    realtime_subject_prefix: format!("rt{}", self.prefix),
                    ..Default::default()
                },
                whatsapp: projector::whatsapp::Settings {
                    whatsapp_api_url: "http://127.0.0.1:9".to_owned(),
                    whatsapp_bridge_stream: format!("{}_BRIDGE", self.stream),
                    whatsapp_bridge_subject_prefix: format!("{}_bridge", self.prefix),
                    ..Default::default()
                },
                ..Default::default()
            },
            command: None,
        }
    }

    pub async fn spawn_command_api(&self, config: command_api::config::Config) -> Service {
        let app = command_api::Application::build(config)
            .await
            .expect("command-api starts");
        let addr = app.local_addr().expect("bound");
        Service::spawn(addr, |stopped| app.run_until(stopped))
    }

    /// command-api on `clock`'s time.
    pub async fn spawn_command_api_with_clock(
        &self,
        config: command_api::config::Config,
        clock: std::sync::Arc<dyn events::clock::Clock>,
    ) -> Service {
        let app = command_api::Application::build_with_clock(config, clock)
            .await
            .expect("command-api starts");
        let addr = app.local_addr().expect("bound");
        Service::spawn(addr, |stopped| app.run_until(stopped))
    }

    pub async fn spawn_query_api(&self, config: query_api::config::Config) -> Service {
        let app = query_api::Application::build(config)
            .await
            .expect("query-api starts");
        let addr = app.local_addr().expect("bound");
        Service::spawn(addr, |stopped| app.run_until(stopped))
    }

    /// GETs `url` with `token` and decodes the JSON answer.
    pub async fn get_json(&self, url: &str, token: &str) -> serde_json::Value {
        self.http
            .get(url)
            .bearer_auth(token)
            .send()
            .await
            .expect("sent")
            .json()
            .await
            .expect("json")
    }

    /// Appends `payload` (`{"EventType": {...}}`) to a stream as the next event, straight
    /// into the store, with `tenant` in its metadata: what a command-api that died right
    /// after its commit leaves, or a writer that raced another.
    pub async fn append_raw(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        tenant: &str,
        payload: serde_json::Value,
    ) -> Result<(), sqlx::Error> {
        let event_type = payload
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .unwrap_or_default();
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT $1, $2, coalesce(max(sequence), 0) + 1, $3, '1.0', $4,
                    jsonb_build_object('tenant_id', $5::text)
               FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(event_type)
        .bind(payload)
        .bind(tenant)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Appends to a stream, as an earlier release could store it, an event no JSON reader
    /// can decode: its payload nests 140 arrays (readers stop at 128).
    pub async fn append_unreadable(&self, aggregate_type: &str, aggregate_id: &str, tenant: &str) {
        let deep = format!("{}1{}", "[".repeat(140), "]".repeat(140));
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata)
             SELECT $1, $2, coalesce(max(sequence), 0) + 1, 'PreferencesUpdated', '1.0',
                    jsonb_build_object('PreferencesUpdated',
                                       jsonb_build_object('preferences', $3::jsonb)),
                    jsonb_build_object('tenant_id', $4::text)
               FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(deep)
        .bind(tenant)
        .execute(&self.pool)
        .await
        .expect("stored as an earlier release would have");
    }

    /// A stream's events as the projector's workers get them, in sequence order.
    pub async fn envelopes(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Vec<events::Envelope> {
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(&format!(
            "SELECT {} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 ORDER BY sequence",
            events::envelope::ENVELOPE_SQL
        ))
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_all(&self.pool)
        .await
        .expect("events");
        rows.into_iter()
            .map(|r| serde_json::from_value(r).expect("envelope"))
            .collect()
    }

    pub fn spawn_projector(&self, config: projector::Config) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let _ = projector::run(config, std::future::pending()).await;
        })
    }

    /// Audits the snapshots written so far, asserts they are sound, and that aggregates of
    /// `aggregate_type` crossed at least two snapshot intervals (so a snapshot was written,
    /// then rewritten from a state loaded from one).
    pub async fn assert_snapshots_crossed(&self, aggregate_type: &str) {
        let audit = command_api::snapshots::audit(&self.pool)
            .await
            .expect("audit the snapshots");
        assert!(audit.is_sound(), "unsound snapshots: {:?}", audit.findings);
        let seen = audit.types.get(aggregate_type).copied().unwrap_or_default();
        assert!(
            seen.most_rewrites >= 2,
            "no {aggregate_type} crossed two snapshot intervals: {seen:?}"
        );
    }

    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM events")
            .fetch_one(&self.pool)
            .await
            .expect("count events")
    }
}

impl Drop for TestEnv {
    /// Audits the snapshots the test wrote (every test, so that any state a test drives an
    /// aggregate into is checked to survive a snapshot), then drops the database and the
    /// stream, even when the test failed.
    fn drop(&mut self) {
        let (db, stream, blob_dir, database_url) = (
            self.db_name.clone(),
            self.stream.clone(),
            self.blob_dir.clone(),
            self.database_url.clone(),
        );
        let audited = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return Ok(());
            };
            rt.block_on(async move {
                let audit = match PgPool::connect(&database_url).await {
                    Ok(pool) => {
                        let audit = command_api::snapshots::audit(&pool).await;
                        pool.close().await;
                        audit
                    }
                    Err(e) => Err(e),
                };
                // A client of its own: the test's client runs on the runtime this blocks.
                if let Ok(client) = async_nats::connect(nats_url()).await {
                    let _ = async_nats::jetstream::new(client)
                        .delete_stream(&stream)
                        .await;
                }
                if let Ok(mut admin) = PgConnection::connect(&server_url()).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
                let _ = std::fs::remove_dir_all(blob_dir);
                match audit {
                    Ok(audit) if audit.is_sound() => Ok(()),
                    Ok(audit) => Err(format!("unsound snapshots: {:?}", audit.findings)),
                    Err(e) => Err(format!("could not audit the snapshots: {e}")),
                }
            })
        })
        .join();
        if let Ok(Err(why)) = audited {
            if !std::thread::panicking() {
                panic!("{why}");
            }
        }
    }
}

/// A service running in this process.
pub struct Service {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Runs a built application until [`Service::stop`].
    fn spawn<F, Fut>(addr: SocketAddr, run: F) -> Self
    where
        F: FnOnce(futures::future::BoxFuture<'static, ()>) -> Fut,
        Fut: std::future::Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let serving = run(Box::pin(async move {
            let _ = stopped.await;
        }));
        let task = tokio::spawn(async move {
            let _ = serving.await;
        });
        Service {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The service's `/metrics` page.
    pub async fn metrics(&self, http: &reqwest::Client) -> String {
        http.get(self.url("/metrics"))
            .send()
            .await
            .expect("sent")
            .text()
            .await
            .expect("text")
    }

    /// Stops it and waits until it has stopped.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Asserts a problem+json answer with `status` and `code`, and returns the body.
pub async fn expect_problem(
    response: reqwest::Response,
    status: u16,
    code: &str,
) -> serde_json::Value {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    assert_eq!(got, status, "status of {body}");
    assert_eq!(
        content_type, "application/problem+json",
        "content type of {body}"
    );
    assert_eq!(body["code"], code, "code of {body}");
    assert_eq!(body["status"], status, "status field of {body}");
    body
}

/// A tenant-opening body.
pub fn tenant_body(slug: &str) -> serde_json::Value {
    serde_json::json!({
        "name": format!("Tenant {slug}"),
        "slug": slug,
        "contact_email": format!("ops@{slug}.example"),
    })
}

/// Creates an active tenant through the API and returns `(id, version)`.
pub async fn create_tenant(env: &TestEnv, api: &Service, slug: &str) -> (String, u64) {
    let response = env
        .http
        .post(api.url("/v1/tenants"))
        .bearer_auth(env.super_admin())
        .json(&tenant_body(slug))
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 201, "create tenant");
    let body: serde_json::Value = response.json().await.expect("json");
    (
        body["id"].as_str().unwrap_or_default().to_owned(),
        body["version"].as_u64().unwrap_or_default(),
    )
}

/// A staff member of `tenant` with `role` (`tenant_admin` or `agent`), created by the
/// super admin, and the tokens of a session they signed in to: `(user id, access token)`.
/// Realtime delivery follows sessions, so a realtime client needs one.
pub async fn staff_session(
    env: &TestEnv,
    api: &Service,
    tenant: &str,
    role: &str,
) -> (String, String) {
    let email = format!("{}@staff.example", uuid::Uuid::new_v4().simple());
    let password = "a staff member's long password";
    let made = env
        .http
        .post(api.url("/v1/admin-users"))
        .bearer_auth(env.super_admin())
        .json(&serde_json::json!({"email": email, "password": password, "tenant_id": tenant, "role": role}))
        .send()
        .await
        .expect("sent");
    assert_eq!(made.status(), 201, "create staff member");
    let user: serde_json::Value = made.json().await.expect("json");
    let login = env
        .http
        .post(api.url("/auth/admin/login"))
        .json(&serde_json::json!({"email": email, "password": password}))
        .send()
        .await
        .expect("sent");
    assert_eq!(login.status(), 200, "login of {email}");
    let tokens: serde_json::Value = login.json().await.expect("json");
    (
        user["id"].as_str().expect("id").to_owned(),
        tokens["access_token"].as_str().expect("access").to_owned(),
    )
}

/// A port nobody listens on right now.
/// A port free now for a process this test starts, drawn at random below the kernel's
/// ephemeral range (32768 and up): a port the kernel hands to `bind(0)` and takes back is
/// often the next one it hands out, so two tests asking at the same moment would be given
/// the same one (seen: one test's requests answered by the other's command-api).
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = 20_000 + (Uuid::new_v4().as_u128() % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000")
}

/// `scripts/realtime`, with its npm packages installed (scripts/test installs them).
pub fn realtime_tools() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/realtime");
    assert!(
        dir.join("node_modules").is_dir(),
        "run `npm ci --prefix scripts/realtime` first (scripts/test does)"
    );
    dir
}

/// How long the test Soketi waits for a connection to sign in, milliseconds.
pub const SOKETI_SIGNIN_TIMEOUT_MS: u64 = 3000;

/// A real Soketi server of this test, on free ports, with the test app (client events on).
pub struct Soketi {
    pub port: u16,
    _process: tokio::process::Child,
}

impl Soketi {
    pub async fn start() -> Self {
        let port = free_port();
        let process =
            tokio::process::Command::new(realtime_tools().join("node_modules/.bin/soketi"))
                .arg("start")
                .env("SOKETI_PORT", port.to_string())
                .env("SOKETI_METRICS_SERVER_PORT", free_port().to_string())
                .env("SOKETI_CLUSTER_PORT", free_port().to_string())
                .env("SOKETI_DEFAULT_APP_ID", SOKETI_APP_ID)
                .env("SOKETI_DEFAULT_APP_KEY", SOKETI_KEY)
                .env("SOKETI_DEFAULT_APP_SECRET", SOKETI_SECRET)
                .env("SOKETI_DEFAULT_APP_ENABLE_CLIENT_MESSAGES", "true")
                // As deployed: a connection that does not sign in is closed (shorter than
                // the deployed 30 s, so a test sees it).
                .env("SOKETI_DEFAULT_APP_USER_AUTHENTICATION", "true")
                .env("SOKETI_DEFAULT_APP_MAX_CLIENT_EVENTS_PER_SEC", "10")
                .env(
                    "SOKETI_USER_AUTHENTICATION_TIMEOUT",
                    SOKETI_SIGNIN_TIMEOUT_MS.to_string(),
                )
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("soketi starts");
        let url = format!("http://127.0.0.1:{port}/");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(30), "soketi to answer", || async {
            let r = http.get(&url).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        Soketi {
            port,
            _process: process,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A projector configuration that publishes to this Soketi.
    pub fn projector_config(&self, mut config: projector::Config) -> projector::Config {
        config.ctx.realtime.soketi_url = Some(self.url());
        config.ctx.realtime.soketi_app_id = Some(SOKETI_APP_ID.to_owned());
        config.ctx.realtime.soketi_app_key = Some(SOKETI_KEY.to_owned());
        config.ctx.realtime.soketi_app_secret = Some(SOKETI_SECRET.to_owned());
        config
    }
}

/// The Python of scripts/python/.venv (scripts/test installs it).
fn python() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/python/.venv/bin/python");
    assert!(
        bin.exists(),
        "{} is missing: run the tests through scripts/test, which installs the providers' libraries",
        bin.display()
    );
    bin
}

/// Runs `script` with `args` in the tools' Python, `input` on its standard input (a payload
/// may be larger than one argument may be), and returns what it printed.
pub fn py(script: &str, input: &str, args: &[&str]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("input written");
    let out = child.wait_with_output().expect("python ends");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `POST /v1/privacy/subjects/{subject}/erase` on command-api `api`, as `token`.
pub async fn erase_subject(
    env: &TestEnv,
    api: &Service,
    token: &str,
    subject: impl std::fmt::Display,
) -> reqwest::Response {
    env.http
        .post(api.url(&format!("/v1/privacy/subjects/{subject}/erase")))
        .bearer_auth(token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("sent")
}

/// Every file under `dir` (the blob store), as text, for searching.
pub fn blob_text(dir: &std::path::Path) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            all.push_str(&blob_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            all.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    all
}
