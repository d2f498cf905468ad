//! The workloads: seed, commands, lag, queries, rebuild and the PostgreSQL baseline.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};

use crate::load::{closed_loop, open_loop, Sample, Summary};
use crate::Error;

/// The two APIs, as a client with a super-admin token sees them.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    command_url: String,
    query_url: String,
    token: String,
    /// Send a fresh `Idempotency-Key` with every command, as a careful client does.
    idempotency_keys: bool,
}

/// What a command answered.
#[derive(Debug)]
pub enum Outcome {
    /// 2xx with the aggregate's new version.
    Accepted(u64),
    /// Any other status.
    Refused(StatusCode),
    /// No answer at all (connection refused or reset, timeout).
    NoAnswer,
}

impl Api {
    /// A client for the APIs at these URLs.
    pub fn new(command_url: &str, query_url: &str, token: String, pool: usize) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(pool)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Api {
            http,
            command_url: command_url.trim_end_matches('/').to_owned(),
            query_url: query_url.trim_end_matches('/').to_owned(),
            token,
            idempotency_keys: true,
        }
    }

    /// Creates an active tenant; returns its id.
    pub async fn create_tenant(&self, slug: &str) -> Result<String, Error> {
        let response = self
            .http
            .post(format!("{}/v1/tenants", self.command_url))
            .bearer_auth(&self.token)
            .json(&json!({
                "name": format!("Bench {slug}"),
                "slug": slug,
                "contact_email": format!("ops@{slug}.example"),
            }))
            .send()
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(format!("creating tenant {slug}: {}", response.status()).into());
        }
        let body: Value = response.json().await?;
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no id in the answer".into())
    }

    /// Replaces a tenant's preferences (the fault harness's command: it audits tenants).
    pub async fn update_preferences(&self, tenant: &str, preferences: &Value) -> Outcome {
        let key = self
            .idempotency_keys
            .then(|| uuid::Uuid::new_v4().to_string());
        self.update_preferences_keyed(tenant, preferences, key.as_deref())
            .await
    }

    /// The same with a given `Idempotency-Key` (retries of one operation reuse it).
    pub async fn update_preferences_keyed(
        &self,
        tenant: &str,
        preferences: &Value,
        key: Option<&str>,
    ) -> Outcome {
        let url = format!("{}/v1/tenants/{tenant}/preferences", self.command_url);
        self.command(url, preferences, key).await
    }

    /// Opens a chat thread in `tenant` (as the super admin); returns its id.
    pub async fn open_thread(&self, tenant: &str) -> Result<String, Error> {
        let response = self
            .http
            .post(format!("{}/v1/chat/threads", self.command_url))
            .bearer_auth(&self.token)
            .json(&json!({"tenant_id": tenant, "subject": "bench"}))
            .send()
            .await?;
        if response.status() != StatusCode::CREATED {
            return Err(format!("opening a thread: {}", response.status()).into());
        }
        let body: Value = response.json().await?;
        body["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| "no id in the answer".into())
    }

    /// Sends a chat message to `thread`: the hot command. With a `client_message_id`, as
    /// chat clients send them (the thread keeps them to de-duplicate retries, so they are
    /// part of every snapshot it writes).
    pub async fn send_message(&self, thread: &str, text: &str) -> Outcome {
        let key = self
            .idempotency_keys
            .then(|| uuid::Uuid::new_v4().to_string());
        let url = format!("{}/v1/chat/threads/{thread}/messages", self.command_url);
        let body = json!({ "text": text, "client_message_id": uuid::Uuid::new_v4() });
        self.command(url, &body, key.as_deref()).await
    }

    /// How many aggregate snapshots command-api has written since it started (the sum of
    /// its `snapshots_written_total` series), if its metrics answer.
    pub async fn snapshots_written(&self) -> Option<f64> {
        self.counter("snapshots_written_total").await
    }

    /// How many times the relay has read the store (and computed the commit horizon) since
    /// command-api started, if its metrics answer.
    pub async fn relay_reads(&self) -> Option<f64> {
        self.counter("relay_reads_total").await
    }

    /// The sum of command-api's `name` series, if its metrics answer.
    async fn counter(&self, name: &str) -> Option<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.command_url))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        Some(counter_sum(&text, name))
    }

    /// POSTs a command; its outcome with the aggregate's new version.
    async fn command(&self, url: String, body: &Value, key: Option<&str>) -> Outcome {
        let mut request = self.http.post(url).bearer_auth(&self.token).json(body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let Ok(response) = request.send().await else {
            return Outcome::NoAnswer;
        };
        let status = response.status();
        if !status.is_success() {
            return Outcome::Refused(status);
        }
        match response.json::<Value>().await {
            Ok(body) => body["version"]
                .as_u64()
                .map_or(Outcome::Refused(status), Outcome::Accepted),
            Err(_) => Outcome::NoAnswer,
        }
    }

    /// Reads a chat thread, waiting (bounded, server side) until it reflects `min_version`;
    /// true when the answer is fresh.
    pub async fn thread_detail(&self, thread: &str, min_version: Option<u64>) -> bool {
        let mut url = format!("{}/v1/chat/threads/{thread}", self.query_url);
        if let Some(v) = min_version {
            url.push_str(&format!("?min_version={v}"));
        }
        match self.http.get(url).bearer_auth(&self.token).send().await {
            Ok(r) => {
                let fresh = r.headers().get("x-read-stale").is_none();
                let ok = r.status() == StatusCode::OK;
                r.bytes().await.is_ok() && ok && fresh
            }
            Err(_) => false,
        }
    }

    /// One page of a tenant's inbox (50 threads); returns the next page's cursor.
    pub async fn inbox(&self, tenant: &str, cursor: Option<&str>) -> Result<Option<String>, Error> {
        let url = format!(
            "{}/v1/chat/threads?limit=50&tenant_id={tenant}",
            self.query_url
        );
        self.page(url, cursor).await
    }

    /// One page of 50 rows at `url`; returns the next page's cursor.
    async fn page(&self, mut url: String, cursor: Option<&str>) -> Result<Option<String>, Error> {
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let response = self.http.get(url).bearer_auth(&self.token).send().await?;
        if response.status() != StatusCode::OK {
            return Err(format!("list: {}", response.status()).into());
        }
        // Only what the check needs: the load generator shares the cores with the services,
        // so it skips the rows rather than building them.
        #[derive(serde::Deserialize)]
        struct Page {
            items: Vec<serde::de::IgnoredAny>,
            next_cursor: Option<String>,
        }
        let page: Page = response.json().await?;
        if page.items.len() != 50 {
            return Err("list: a page of fewer than 50 rows".into());
        }
        Ok(page.next_cursor)
    }
}

/// The seeded data the workloads use: chat threads of one tenant.
pub struct Seed {
    /// The tenant the threads belong to.
    pub tenant: String,
    /// Threads whose streams hold `events_per_hot` events each.
    pub hot: Vec<String>,
    /// Every thread, hot ones included.
    pub all: Vec<String>,
}

/// The sum of the `snapshots_written_total` series in a Prometheus text exposition.
/// The sum of every series of the counter `name` in a Prometheus text page.
fn counter_sum(metrics: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{");
    metrics
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Creates a tenant and `total` threads in it, the first `hot` of them with up to
/// `events_per_hot` events each (the opening and messages): hot thread `i` is `1 + i % 48`
/// events short of it, so that the measured runs carry every hot thread across the snapshot
/// boundary at `events_per_hot` (the default interval is 100), at staggered moments.
pub async fn seed(
    api: &Api,
    hot: usize,
    total: usize,
    events_per_hot: u64,
    clients: usize,
) -> Result<Seed, Error> {
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tenant = api.create_tenant(&format!("b{run}")).await?;
    // The rebuild workload copies a tenant's `Created` and `PreferencesUpdated` events.
    if let other @ (Outcome::Refused(_) | Outcome::NoAnswer) = api
        .update_preferences(&tenant, &json!({"theme": "light"}))
        .await
    {
        return Err(format!("seeding the tenant's preferences: {other:?}").into());
    }
    let count = total.max(hot);
    let mut tasks = Vec::new();
    for client in 0..clients.max(1) {
        let (api, tenant) = (api.clone(), tenant.clone());
        let step = clients.max(1);
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in (client..count).step_by(step) {
                let mut refusals = 0;
                let id = loop {
                    match api.open_thread(&tenant).await {
                        Err(e) if e.to_string().ends_with("503 Service Unavailable") => {
                            admitted_later(&mut refusals).await?;
                        }
                        other => break other.map_err(|e| e.to_string())?,
                    }
                };
                if i < hot {
                    let short = 1 + i as u64 % 48;
                    for n in 1..events_per_hot.saturating_sub(short) {
                        let mut refusals = 0;
                        loop {
                            match api.send_message(&id, &format!("seed {n}")).await {
                                Outcome::Accepted(_) => break,
                                Outcome::Refused(StatusCode::SERVICE_UNAVAILABLE) => {
                                    admitted_later(&mut refusals).await?;
                                }
                                other => return Err(format!("seeding: {other:?}")),
                            }
                        }
                    }
                }
                made.push((i, id));
            }
            Ok::<_, String>(made)
        }));
    }
    let mut made = Vec::new();
    for task in tasks {
        made.extend(task.await.map_err(|e| e.to_string())??);
    }
    made.sort();
    let all: Vec<String> = made.into_iter().map(|(_, id)| id).collect();
    Ok(Seed {
        tenant,
        hot: all[..hot].to_vec(),
        all,
    })
}

/// The hot command by `clients` closed-loop clients, each on tenants of its own.
pub async fn commands_full_speed(
    api: &Api,
    seed: &Seed,
    clients: usize,
    duration: Duration,
) -> Summary {
    let (api, hot) = (api.clone(), Arc::new(seed.hot.clone()));
    closed_loop(clients, duration, move |client, n| {
        let (api, hot) = (api.clone(), hot.clone());
        async move {
            let thread = &hot[(client + clients * n as usize) % hot.len()];
            matches!(
                api.send_message(thread, &format!("message {n}")).await,
                Outcome::Accepted(_)
            )
        }
    })
    .await
    .summary()
}

/// Free tenants for open-loop requests, so two in-flight requests rarely share an aggregate
/// (when every tenant is busy one is shared, and optimistic concurrency sorts it out).
#[derive(Clone)]
struct TenantPool(Arc<Mutex<Vec<String>>>);

impl TenantPool {
    fn take(&self, n: u64, all: &[String]) -> String {
        self.0
            .lock()
            .ok()
            .and_then(|mut free| free.pop())
            .unwrap_or_else(|| all[n as usize % all.len()].clone())
    }

    fn give_back(&self, tenant: String) {
        if let Ok(mut free) = self.0.lock() {
            free.push(tenant);
        }
    }
}

/// The hot command at a fixed rate; with `lag_every` = k, every k-th command is followed by a
/// read of the query API waiting for that version, and the time from the command's answer to
/// the fresh read is the lag.
pub async fn commands_at_rate(
    api: &Api,
    seed: &Seed,
    rate: f64,
    duration: Duration,
    lag_every: Option<u64>,
) -> (Summary, Option<Summary>) {
    let pool = TenantPool(Arc::new(Mutex::new(seed.hot.clone())));
    let hot = Arc::new(seed.hot.clone());
    let lags = Arc::new(Mutex::new(Sample::default()));
    let (api, lags_in) = (api.clone(), lags.clone());
    let started = Instant::now();
    // As many in flight as a client pool would hold: when the system cannot keep up, the
    // schedule slips and the slip shows in the latencies, instead of a pile of requests
    // timing out.
    let in_flight = seed.hot.len() * 2;
    let sample = open_loop(rate, duration, in_flight, move |n| {
        let (api, pool, hot, lags) = (api.clone(), pool.clone(), hot.clone(), lags_in.clone());
        async move {
            let thread = pool.take(n, &hot);
            let outcome = api.send_message(&thread, &format!("message {n}")).await;
            pool.give_back(thread.clone());
            let Outcome::Accepted(version) = outcome else {
                return false;
            };
            if let Some(k) = lag_every {
                if n % k == 0 {
                    let answered = Instant::now();
                    let fresh = api.thread_detail(&thread, Some(version)).await;
                    if let Ok(mut lags) = lags.lock() {
                        if fresh {
                            lags.latencies.push(answered.elapsed());
                        } else {
                            lags.failed += 1;
                        }
                    }
                }
            }
            true
        }
    })
    .await;
    let lag = lag_every.map(|_| {
        let mut lags = lags
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        lags.elapsed = started.elapsed();
        lags.summary()
    });
    (sample.summary(), lag)
}

/// One thread through a long life: `messages` messages sent one after the other, as a
/// conversation grows, then a restart of command-api and the first commands after it.
#[derive(Debug, Clone, Serialize)]
pub struct LongThread {
    /// Messages sent (the thread holds one event more: its opening).
    pub messages: u64,
    /// The first 500 sends.
    pub first: Summary,
    /// The last 500 sends.
    pub last: Summary,
    /// The thread's snapshot after the last send: its sequence and its size as text.
    pub snapshot_sequence: i64,
    /// Bytes of the snapshot's JSON text.
    pub snapshot_bytes: i64,
    /// The first send after the restart: the thread is loaded from its snapshot and the
    /// events after it, milliseconds.
    pub cold_send_ms: f64,
    /// The 50 sends after that, with the thread in the new process's memory.
    pub warm_after_restart: Summary,
}

/// Sends `messages` messages to a new thread, one at a time, and measures how the sends
/// and the snapshot grow; `restart` restarts command-api before the cold send.
pub async fn long_thread<F, Fut>(
    api: &Api,
    database_url: &str,
    messages: u64,
    restart: F,
) -> Result<LongThread, Error>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let run = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let tenant = api.create_tenant(&format!("l{run}")).await?;
    let thread = api.open_thread(&tenant).await?;
    let window = 500.min(messages as usize);
    let mut latencies = Vec::with_capacity(messages as usize);
    let started = Instant::now();
    let mut sent_at = Vec::with_capacity(messages as usize);
    for n in 0..messages {
        let began = Instant::now();
        match api.send_message(&thread, &format!("message {n}")).await {
            Outcome::Accepted(_) => {}
            other => return Err(format!("message {n} of the long thread: {other:?}").into()),
        }
        latencies.push(began.elapsed());
        sent_at.push(started.elapsed());
    }
    let part = |range: std::ops::Range<usize>| {
        let elapsed = sent_at[range.end - 1]
            .saturating_sub(sent_at[range.start].saturating_sub(latencies[range.start]));
        Sample {
            latencies: latencies[range].to_vec(),
            failed: 0,
            elapsed,
        }
        .summary()
    };
    let first = part(0..window);
    let last = part(latencies.len() - window..latencies.len());
    let mut db = PgConnection::connect(database_url).await?;
    let (snapshot_sequence, snapshot_bytes): (i64, i64) = sqlx::query_as(
        "SELECT last_sequence, octet_length(payload::text)::bigint FROM snapshots
          WHERE aggregate_type = 'thread' AND aggregate_id = $1",
    )
    .bind(&thread)
    .fetch_optional(&mut db)
    .await?
    .unwrap_or((0, 0));
    restart().await?;
    let began = Instant::now();
    if !matches!(
        api.send_message(&thread, "after the restart").await,
        Outcome::Accepted(_)
    ) {
        return Err("the first send after the restart failed".into());
    }
    let cold_send_ms = began.elapsed().as_secs_f64() * 1000.0;
    let mut warm = Sample::default();
    let began_warm = Instant::now();
    for n in 0..50 {
        let began = Instant::now();
        if matches!(
            api.send_message(&thread, &format!("warm {n}")).await,
            Outcome::Accepted(_)
        ) {
            warm.latencies.push(began.elapsed());
        } else {
            warm.failed += 1;
        }
    }
    warm.elapsed = began_warm.elapsed();
    Ok(LongThread {
        messages,
        first,
        last,
        snapshot_sequence,
        snapshot_bytes,
        cold_send_ms,
        warm_after_restart: warm.summary(),
    })
}

/// The two dashboard reads under `clients` closed-loop clients.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Queries {
    /// A 50-row page of a tenant's inbox (chat threads), by cursor.
    pub list: Summary,
    /// A thread's detail.
    pub detail: Summary,
}

/// Runs the list workload, then the detail workload, each for `duration`.
pub async fn queries(
    api: &Api,
    seed: &Seed,
    clients: usize,
    duration: Duration,
) -> Result<Queries, Error> {
    // The second page: the cursor path, which is the one a scrolling inbox takes.
    let cursor = api.inbox(&seed.tenant, None).await?;
    let (a, tenant) = (api.clone(), Arc::new(seed.tenant.clone()));
    let list = closed_loop(clients, duration, move |_, _| {
        let (api, cursor, tenant) = (a.clone(), cursor.clone(), tenant.clone());
        async move { api.inbox(&tenant, cursor.as_deref()).await.is_ok() }
    })
    .await
    .summary();
    let (a, all) = (api.clone(), Arc::new(seed.all.clone()));
    let detail = closed_loop(clients, duration, move |client, n| {
        let (api, all) = (a.clone(), all.clone());
        async move {
            let i = (client * 7919 + n as usize * 104_729) % all.len();
            api.thread_detail(&all[i], None).await
        }
    })
    .await
    .summary();
    Ok(Queries { list, detail })
}

/// A rebuild's figures.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rebuild {
    /// Tenant events in the store, all of which the rebuild applied.
    pub events: u64,
    /// Wall time of `projector rebuild tenants`.
    pub seconds: f64,
    /// Events per second.
    pub per_sec: f64,
}

/// Seeding is set-up, not a measurement: its clients outnumber a route's budget, and the
/// service sheds what waits too long (503 `overloaded`). A refused command is sent again after
/// a pause, as a client honouring `Retry-After` would, only sooner (the route's queue drains
/// in milliseconds); the 1,000th refusal of one command is a failure. Nothing of a command
/// refused this way was done, so sending it again appends it once.
async fn admitted_later(refusals: &mut u32) -> Result<(), String> {
    *refusals += 1;
    if *refusals > 1_000 {
        return Err("seeding: refused (503) a thousand times".into());
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    Ok(())
}

/// Tenant events copied from real ones: each of `tenants` new tenants gets the `Created` event
/// of an existing tenant (with its own name and slug) and `per_tenant - 1` copies of a
/// `PreferencesUpdated`. Written in batches of their own transactions: a long writing
/// transaction would hold back the commit horizon of the whole cluster.
pub async fn seed_events(database_url: &str, tenants: u64, per_tenant: u64) -> Result<(), Error> {
    let mut conn = PgConnection::connect(database_url).await?;
    // A bulk import: each transaction of 100,000 events may outlast the 5 s an event writer
    // is given by default (migration 0020) on a slow day.
    sqlx::query("SET events.writer_timeout = '5min'")
        .execute(&mut conn)
        .await?;
    let batch = (100_000 / per_tenant.max(1)).max(1);
    let mut from = 1;
    while from <= tenants {
        let to = (from + batch - 1).min(tenants);
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT c.aggregate_type, md5('bench-rebuild-' || a.n)::uuid::text, 1, c.event_type,
                    c.event_version,
                    jsonb_set(jsonb_set(c.payload, '{Created,slug}', to_jsonb('rebuild-' || a.n)),
                              '{Created,name}', to_jsonb('Rebuild ' || a.n)),
                    jsonb_set(c.metadata, '{tenant_id}',
                              to_jsonb(md5('bench-rebuild-' || a.n)::uuid::text))
               FROM generate_series($1::bigint, $2::bigint) AS a(n),
                    (SELECT * FROM events WHERE aggregate_type = 'tenant'
                        AND event_type = 'Created' LIMIT 1) AS c",
        )
        .bind(from as i64)
        .bind(to as i64)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT p.aggregate_type, md5('bench-rebuild-' || a.n)::uuid::text, s, p.event_type,
                    p.event_version, p.payload,
                    jsonb_set(p.metadata, '{tenant_id}',
                              to_jsonb(md5('bench-rebuild-' || a.n)::uuid::text))
               FROM generate_series($1::bigint, $2::bigint) AS a(n),
                    generate_series(2, $3::bigint) AS s,
                    (SELECT * FROM events WHERE aggregate_type = 'tenant'
                        AND event_type = 'PreferencesUpdated' LIMIT 1) AS p
              ORDER BY a.n, s",
        )
        .bind(from as i64)
        .bind(to as i64)
        .bind(per_tenant as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        from = to + 1;
    }
    Ok(())
}

/// Runs `projector rebuild tenants` against the database and times it.
pub async fn rebuild(bin_dir: &std::path::Path, database_url: &str) -> Result<Rebuild, Error> {
    let mut conn = PgConnection::connect(database_url).await?;
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'tenant'")
            .fetch_one(&mut conn)
            .await?;
    let started = Instant::now();
    let status = tokio::process::Command::new(bin_dir.join("projector"))
        .args(["rebuild", "tenants"])
        .env("DATABASE_URL", database_url)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("projector rebuild tenants: {status}").into());
    }
    let projected: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(version), 0)::bigint FROM tenants")
            .fetch_one(&mut conn)
            .await?;
    if projected != events {
        return Err(format!("the rebuilt read model holds {projected} of {events} events").into());
    }
    Ok(Rebuild {
        events: events as u64,
        seconds,
        per_sec: events as f64 / seconds,
    })
}

/// The cost of opening sealed texts in a rebuild: `projector rebuild chat` over the store
/// as seeded, then again with copies of a thread whose texts are in clear (as events written
/// before sealing hold them), then again with as many copies of a thread whose texts are
/// sealed, then with as many in clear again. Each added set's events per second are its
/// events over the time it added.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ChatRebuild {
    /// Thread events in the store before the copies, and the first rebuild's time.
    pub seeded_events: u64,
    /// Wall time of the first rebuild.
    pub seeded_seconds: f64,
    /// Events of each added set (clear, then sealed).
    pub added_events: u64,
    /// Events per second of the copies in clear (added first).
    pub plain_per_sec: f64,
    /// Events per second of the sealed copies (added second).
    pub sealed_per_sec: f64,
    /// Events per second of the copies in clear added last.
    pub plain_after_per_sec: f64,
}

/// Copies thread `source` (its `Opened` and one of its messages) into `threads` new threads
/// of `per_thread` events, named by `variant`; with `plain`, each copied text in clear.
/// Batches of their own transactions, as [`seed_events`].
async fn seed_thread_copies(
    conn: &mut PgConnection,
    source: &str,
    variant: &str,
    threads: u64,
    per_thread: u64,
    plain: bool,
) -> Result<(), Error> {
    let batch = (100_000 / per_thread.max(1)).max(1);
    let mut from = 1;
    while from <= threads {
        let to = (from + batch - 1).min(threads);
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata)
             SELECT 'thread', md5('bench-chat-' || $4 || a.n)::uuid::text, s.s,
                    e.event_type, e.event_version,
                    CASE WHEN s.s = 1 THEN e.payload
                         ELSE jsonb_set(jsonb_set(jsonb_set(e.payload,
                                '{MessageSent,message_id}', to_jsonb('m' || s.s)),
                                '{MessageSent,number}', to_jsonb(s.s - 1)),
                                '{MessageSent,text}',
                                CASE WHEN $5 THEN to_jsonb('seed text ' || s.s)
                                     ELSE e.payload->'MessageSent'->'text' END) END,
                    e.metadata
               FROM generate_series($1::bigint, $2::bigint) AS a(n),
                    generate_series(1, $3::bigint) AS s(s)
               JOIN LATERAL (
                    SELECT event_type, event_version, payload, metadata FROM events
                     WHERE aggregate_type = 'thread' AND aggregate_id = $6
                       AND event_type = CASE WHEN s.s = 1 THEN 'Opened' ELSE 'MessageSent' END
                     ORDER BY sequence LIMIT 1) e ON true
              ORDER BY a.n, s.s",
        )
        .bind(from as i64)
        .bind(to as i64)
        .bind(per_thread as i64)
        .bind(variant)
        .bind(plain)
        .bind(source)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        from = to + 1;
    }
    Ok(())
}

/// Runs `projector rebuild chat` (with the services' token secret, from which the master
/// key derives) and times it; checks that every message of the store was rebuilt.
async fn rebuild_chat(
    bin_dir: &std::path::Path,
    database_url: &str,
    conn: &mut PgConnection,
) -> Result<(u64, f64), Error> {
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE aggregate_type = 'thread'")
            .fetch_one(&mut *conn)
            .await?;
    let started = Instant::now();
    let status = tokio::process::Command::new(bin_dir.join("projector"))
        .args(["rebuild", "chat"])
        .env("DATABASE_URL", database_url)
        .env("NEST_AUTH_SECRET", crate::stack::SECRET)
        .env("ALLOW_DEV_SECRETS", "true")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .status()
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    if !status.success() {
        return Err(format!("projector rebuild chat: {status}").into());
    }
    let (messages, sent): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM chat_messages),
                (SELECT count(*) FROM events
                  WHERE aggregate_type = 'thread' AND event_type = 'MessageSent')",
    )
    .fetch_one(&mut *conn)
    .await?;
    if messages != sent {
        return Err(format!("the rebuilt chat holds {messages} of {sent} messages").into());
    }
    Ok((events as u64, seconds))
}

/// The chat rebuild with `added` events in clear and `added` sealed (see [`ChatRebuild`]).
pub async fn chat_rebuild(
    bin_dir: &std::path::Path,
    database_url: &str,
    added: u64,
) -> Result<ChatRebuild, Error> {
    let mut conn = PgConnection::connect(database_url).await?;
    sqlx::query("SET events.writer_timeout = '5min'")
        .execute(&mut conn)
        .await?;
    // A seeded thread with a sealed text: the copies' source.
    let source: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events
          WHERE aggregate_type = 'thread' AND event_type = 'MessageSent'
            AND payload->'MessageSent'->>'text' LIKE 'pii1.%'
          LIMIT 1",
    )
    .fetch_optional(&mut conn)
    .await?
    .ok_or("no sealed message in the seeded store")?;
    let (seeded_events, seeded_seconds) = rebuild_chat(bin_dir, database_url, &mut conn).await?;
    let per_thread = 100;
    let threads = (added / per_thread).max(1);
    seed_thread_copies(&mut conn, &source, "plain", threads, per_thread, true).await?;
    let (_, plain_seconds) = rebuild_chat(bin_dir, database_url, &mut conn).await?;
    seed_thread_copies(&mut conn, &source, "sealed", threads, per_thread, false).await?;
    let (_, sealed_seconds) = rebuild_chat(bin_dir, database_url, &mut conn).await?;
    // Clear copies once more: a rebuild's time per event grows with the tables it builds,
    // so the sealed set, added second, is judged against clear sets added before and after.
    seed_thread_copies(&mut conn, &source, "plain-after", threads, per_thread, true).await?;
    let (_, last_seconds) = rebuild_chat(bin_dir, database_url, &mut conn).await?;
    let added = threads * per_thread;
    let rate = |seconds: f64| added as f64 / seconds.max(1e-3);
    Ok(ChatRebuild {
        seeded_events,
        seeded_seconds,
        added_events: added,
        plain_per_sec: rate(plain_seconds - seeded_seconds),
        sealed_per_sec: rate(sealed_seconds - plain_seconds),
        plain_after_per_sec: rate(last_seconds - sealed_seconds),
    })
}

/// What PostgreSQL itself does with the same durable single-row append.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Baseline {
    /// pgbench clients (the same C as the command workload).
    pub clients: usize,
    /// Committed single-row inserts per second.
    pub inserts_per_sec: f64,
}

/// One events-shaped row, as the hot command appends it.
const APPEND_SQL: &str = "INSERT INTO baseline_events (aggregate_type, aggregate_id, sequence, \
     event_type, event_version, payload, metadata) VALUES ('tenant', gen_random_uuid()::text, 1, \
     'PreferencesUpdated', '1.0', \
     '{\"PreferencesUpdated\": {\"preferences\": {\"theme\": \"dark\", \"n\": 1}}}', \
     '{\"tenant_id\": \"t\", \"actor_id\": \"a\", \"actor_kind\": \"admin\", \
     \"request_id\": \"r\", \"correlation_id\": \"c\"}');\n";

/// What pgbench reported of one run.
#[derive(Debug, Clone, Copy)]
struct Pgbench {
    /// Transactions per second.
    tps: f64,
    /// Mean latency of one transaction, milliseconds.
    latency_ms: f64,
}

/// Runs pgbench with `script` (one transaction) on `clients` for `duration`; `options` go to
/// its sessions (`PGOPTIONS`).
async fn pgbench(
    database_url: &str,
    script: &str,
    clients: usize,
    duration: Duration,
    options: &str,
) -> Result<Pgbench, Error> {
    let file = std::env::temp_dir().join(format!("bench-pgbench-{}.sql", uuid::Uuid::new_v4()));
    std::fs::write(&file, script)?;
    let output = tokio::process::Command::new("pgbench")
        .arg("-n")
        .arg(format!("--client={clients}"))
        .arg(format!("--jobs={}", clients.min(2)))
        .arg(format!("--time={}", duration.as_secs().max(1)))
        .arg("--file")
        .arg(&file)
        .arg(database_url)
        .env("PGOPTIONS", options)
        .output()
        .await
        .map_err(|e| format!("pgbench does not run ({e}); install PostgreSQL's client tools"));
    let _ = std::fs::remove_file(&file);
    let output = output?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        return Err(format!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(Pgbench {
        tps: parse_tps(&text).ok_or("no tps in pgbench's output")?,
        latency_ms: parse_latency_ms(&text).ok_or("no latency in pgbench's output")?,
    })
}

/// pgbench inserting one events-shaped row per transaction into a copy of the `events` table
/// (same columns, defaults, keys and indexes, no triggers) on the same server, then the cost
/// of announcing event writers (migration 0020) and of the relay's commit horizon.
pub async fn baseline(
    database_url: &str,
    clients: usize,
    duration: Duration,
) -> Result<(Baseline, WriterCost), Error> {
    let mut conn = PgConnection::connect(database_url).await?;
    // As many clients as the server has connections to spare beside the services' pools
    // (and whatever else runs on it), so pgbench is not refused "too many clients".
    let (max, reserved, used): (i64, i64, i64) = sqlx::query_as(
        "SELECT current_setting('max_connections')::int8,
                current_setting('superuser_reserved_connections')::int8,
                (SELECT count(*) FROM pg_stat_activity)::int8",
    )
    .fetch_one(&mut conn)
    .await?;
    let spare = usize::try_from(max - reserved - used - 4).unwrap_or(0);
    let clients = clients.min(spare).max(1);
    sqlx::query("DROP TABLE IF EXISTS baseline_events")
        .execute(&mut conn)
        .await?;
    sqlx::query("CREATE TABLE baseline_events (LIKE events INCLUDING ALL)")
        .execute(&mut conn)
        .await?;
    let plain = pgbench(database_url, APPEND_SQL, clients, duration, "").await?;
    let cost = writer_cost(&mut conn, database_url, clients, duration).await;
    sqlx::query("DROP TABLE baseline_events")
        .execute(&mut conn)
        .await?;
    Ok((
        Baseline {
            clients,
            inserts_per_sec: plain.tps,
        },
        cost?,
    ))
}

/// What announcing event writers and computing the horizon from them cost.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct WriterCost {
    /// One single-row append transaction into the trigger-less copy, one client, commits
    /// not waiting for their flush (so CPU and round trips, not the disk), µs: best of two.
    pub append_us: f64,
    /// The same with `events`' announcing trigger on the copy, µs: best of two.
    pub announced_append_us: f64,
    /// The announcement's cost per event-writing transaction: the difference, µs.
    pub announce_us: f64,
    /// Durable appends/s by C clients into the announcing copy (beside the baseline's).
    pub announced_inserts_per_sec: f64,
    /// One `SELECT events_commit_horizon()` (the relay's extra statement per read) while
    /// C clients append, one client, µs.
    pub horizon_us: f64,
    /// One `SELECT pg_snapshot_xmin(pg_current_snapshot())`, the cluster-wide horizon it
    /// replaced, measured the same way, µs.
    pub cluster_horizon_us: f64,
}

async fn writer_cost(
    conn: &mut PgConnection,
    database_url: &str,
    clients: usize,
    duration: Duration,
) -> Result<WriterCost, Error> {
    let short = duration.min(Duration::from_secs(5));
    let no_flush = "-c synchronous_commit=off";
    let mut append = f64::MAX;
    let mut announced = f64::MAX;
    for _ in 0..2 {
        sqlx::query("DROP TRIGGER IF EXISTS baseline_writer_announced ON baseline_events")
            .execute(&mut *conn)
            .await?;
        let run = pgbench(database_url, APPEND_SQL, 1, short, no_flush).await?;
        append = append.min(run.latency_ms * 1e3);
        sqlx::query(
            "CREATE TRIGGER baseline_writer_announced BEFORE INSERT ON baseline_events
             FOR EACH STATEMENT EXECUTE FUNCTION events_writer_trigger()",
        )
        .execute(&mut *conn)
        .await?;
        let run = pgbench(database_url, APPEND_SQL, 1, short, no_flush).await?;
        announced = announced.min(run.latency_ms * 1e3);
    }
    let durable = pgbench(database_url, APPEND_SQL, clients, duration, "").await?;
    // The horizon is read while writers hold the lock, as the relay reads it under load.
    let horizon = |sql: &'static str| async move {
        let writers = pgbench(database_url, APPEND_SQL, clients, short, "");
        let reader = pgbench(database_url, sql, 1, short, "");
        let (writers, reader) = tokio::join!(writers, reader);
        writers?;
        reader.map(|r| r.latency_ms * 1e3)
    };
    let horizon_us = horizon("SELECT events_commit_horizon();\n").await?;
    let cluster_horizon_us = horizon("SELECT pg_snapshot_xmin(pg_current_snapshot());\n").await?;
    Ok(WriterCost {
        append_us: append,
        announced_append_us: announced,
        announce_us: announced - append,
        announced_inserts_per_sec: durable.tps,
        horizon_us,
        cluster_horizon_us,
    })
}

/// `latency average = 2.1 ms` → 2.1.
fn parse_latency_ms(output: &str) -> Option<f64> {
    output
        .lines()
        .find(|l| l.starts_with("latency average = "))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// `tps = 1234.5 (without initial connection time)` → 1234.5.
fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find(|l| l.starts_with("tps = "))?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_writes_are_summed_over_aggregate_types() {
        let text = "# HELP snapshots_written_total x\n# TYPE snapshots_written_total counter\n\
                    snapshots_written_total{aggregate_type=\"thread\"} 12\n\
                    snapshots_written_total{aggregate_type=\"tenant\"} 1\n\
                    snapshots_skipped_total{aggregate_type=\"thread\"} 5\n";
        assert_eq!(counter_sum(text, "snapshots_written_total"), 13.0);
        assert_eq!(counter_sum(text, "snapshots_written"), 0.0);
        assert_eq!(counter_sum("", "snapshots_written_total"), 0.0);
    }

    #[test]
    fn pgbench_throughput_is_read_from_its_report() {
        let out = "number of failed transactions: 0 (0.000%)\n\
                   latency average = 2.1 ms\n\
                   initial connection time = 12.3 ms\n\
                   tps = 4567.891 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(4567.891));
        assert_eq!(parse_latency_ms(out), Some(2.1));
        assert_eq!(parse_latency_ms("nothing here"), None);
        assert_eq!(parse_tps("nothing here"), None);
    }
}
