//! Live updates end to end: real Soketi, real pusher-js clients (Node), the realtime worker
//! of the projector. A client signs in through `/realtime/user-auth` and receives what
//! command-api's commands cause, as far as it may see it; strangers are refused; a client
//! that never signs in receives nothing; typing indicators stay out of the event store; a
//! Soketi outage delays events and loses none.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdout};

use crate::support::{
    create_tenant, eventually, realtime_tools, staff_session, Service, Soketi, TestEnv, SOKETI_KEY,
};

/// A pusher-js client (scripts/realtime/client.js) and the lines it prints.
pub(crate) struct Client {
    lines: Lines<BufReader<ChildStdout>>,
    /// Lines read but not yet asked for.
    backlog: std::collections::VecDeque<Value>,
    _process: Child,
}

impl Client {
    pub(crate) async fn start(
        port: u16,
        query: &Service,
        token: &str,
        channels: &[String],
        trigger: Option<Value>,
    ) -> Self {
        let mut config = json!({
            "host": "127.0.0.1", "port": port, "key": SOKETI_KEY,
            "authEndpoint": query.url("/realtime/auth"),
            "userAuthEndpoint": query.url("/realtime/user-auth"),
            "token": token, "channels": channels,
        });
        if let Some(trigger) = trigger {
            config["trigger"] = trigger;
        }
        Self::spawn(&config)
    }

    /// A client driven by `config` (see scripts/realtime/client.js).
    pub(crate) fn spawn(config: &Value) -> Self {
        let mut process = tokio::process::Command::new("node")
            .current_dir(realtime_tools())
            .arg("client.js")
            .arg(config.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("node runs");
        let stdout = process.stdout.take().expect("stdout");
        Client {
            lines: BufReader::new(stdout).lines(),
            backlog: std::collections::VecDeque::new(),
            _process: process,
        }
    }

    /// The first printed line that `wanted` accepts (others stay for later calls); panics
    /// after 30 s.
    pub(crate) async fn next(&mut self, what: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&wanted) {
            return self.backlog.remove(i).unwrap_or_default();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = tokio::time::timeout(left, self.lines.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("client output")
                .unwrap_or_else(|| panic!("the client exited before {what}"));
            let value: Value = serde_json::from_str(&line).unwrap_or_default();
            if wanted(&value) {
                return value;
            }
            self.backlog.push_back(value);
        }
    }

    /// Every line not yet asked for, and those printed within `window`.
    pub(crate) async fn drain(&mut self, window: Duration) -> Vec<Value> {
        let mut seen: Vec<Value> = self.backlog.drain(..).collect();
        let deadline = Instant::now() + window;
        while let Ok(Ok(Some(line))) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.lines.next_line(),
        )
        .await
        {
            seen.push(serde_json::from_str(&line).unwrap_or_default());
        }
        seen
    }

    /// Waits until every one of `channels` is subscribed (in any order); answers the
    /// `subscribed` lines by channel.
    pub(crate) async fn subscribed(
        &mut self,
        channels: &[&str],
    ) -> std::collections::HashMap<String, Value> {
        let mut seen = std::collections::HashMap::new();
        while seen.len() < channels.len() {
            let line = self
                .next(&format!("subscriptions to {channels:?}"), |v| {
                    v["type"] == "subscribed"
                })
                .await;
            seen.insert(
                line["channel"].as_str().unwrap_or_default().to_owned(),
                line,
            );
        }
        seen
    }
}

/// Opens a thread as `customer`, waits until it is in the read model, answers its id.
pub(crate) async fn open_thread(
    env: &TestEnv,
    api: &Service,
    query: &Service,
    customer: &str,
    agent: &str,
) -> String {
    let opened = env
        .http
        .post(api.url("/v1/chat/threads"))
        .bearer_auth(customer)
        .json(&json!({}))
        .send()
        .await
        .expect("sent");
    assert_eq!(opened.status(), 201);
    let thread = opened.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    eventually(Duration::from_secs(20), "the thread projected", || async {
        let r = env
            .http
            .get(query.url(&format!("/v1/chat/threads/{thread}")))
            .bearer_auth(agent)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    thread
}

pub(crate) async fn send(env: &TestEnv, api: &Service, token: &str, thread: &str, text: &str) {
    let sent = env
        .http
        .post(api.url(&format!("/v1/chat/threads/{thread}/messages")))
        .bearer_auth(token)
        .json(&json!({ "text": text }))
        .send()
        .await
        .expect("sent");
    assert_eq!(sent.status(), 201);
}

#[tokio::test]
async fn a_pusher_js_client_receives_messages_live_and_strangers_are_refused() {
    let env = TestEnv::new().await;
    let soketi = Soketi::start().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(soketi.projector_config(env.projector_config()));
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "live").await;
    let (other, _) = create_tenant(&env, &api, "dead").await;
    let customer = env.phone_user(&tenant, "phone-liv");
    let (agent_id, agent) = staff_session(&env, &api, &tenant, "agent").await;
    let (_, stranger_token) = staff_session(&env, &api, &other, "agent").await;
    let thread = open_thread(&env, &api, &query, &customer, &agent).await;
    let thread_channel = format!("private-thread-{thread}");
    let presence = format!("presence-tenant-{tenant}");

    let mut watcher = Client::start(
        soketi.port,
        &query,
        &agent,
        &[thread_channel.clone(), presence.clone()],
        None,
    )
    .await;
    watcher
        .next("signed in", |v| v["type"] == "signed_in")
        .await;
    let subscribed = watcher.subscribed(&[&thread_channel, &presence]).await;
    assert_eq!(subscribed[&presence]["members"], json!([agent_id]));

    // Another tenant's agent is refused by the authorizer, so Soketi never lets it in.
    let mut stranger = Client::start(
        soketi.port,
        &query,
        &stranger_token,
        &[thread_channel.clone(), presence.clone()],
        None,
    )
    .await;
    stranger
        .next("signed in", |v| v["type"] == "signed_in")
        .await;
    let mut refused = std::collections::BTreeMap::new();
    while refused.len() < 2 {
        let line = stranger
            .next("the refusals", |v| v["type"] == "subscription_error")
            .await;
        refused.insert(
            line["channel"].as_str().unwrap_or_default().to_owned(),
            line["status"].clone(),
        );
    }
    assert_eq!(refused[&thread_channel], 403);
    assert_eq!(refused[&presence], 403);

    // The customer signs in too; a client that joins the thread channel without ever
    // signing in (allowed: joining cancels Soketi's sign-in timeout) gets typing at most.
    let mut customer_client = Client::start(
        soketi.port,
        &query,
        &customer,
        std::slice::from_ref(&thread_channel),
        None,
    )
    .await;
    customer_client
        .next("signed in", |v| v["type"] == "signed_in")
        .await;
    customer_client.subscribed(&[&thread_channel]).await;
    let mut lurker = Client::spawn(&json!({
        "host": "127.0.0.1", "port": soketi.port, "key": SOKETI_KEY,
        "authEndpoint": query.url("/realtime/auth"), "token": agent,
        "channels": [thread_channel],
    }));
    lurker.subscribed(&[&thread_channel]).await;

    // Typing is a client event on the thread channel: the agent sees it, the store does not.
    let events_before = env.event_count().await;
    let mut typist = Client::start(
        soketi.port,
        &query,
        &customer,
        std::slice::from_ref(&thread_channel),
        Some(
            json!({"channel": thread_channel, "event": "client-typing", "data": {"typing": true}}),
        ),
    )
    .await;
    typist.subscribed(&[&thread_channel]).await;
    let typing = watcher
        .next("client-typing", |v| v["name"] == "client-typing")
        .await;
    assert_eq!(typing["data"], json!({"typing": true}));
    assert_eq!(
        env.event_count().await,
        events_before,
        "typing is not an event"
    );
    // A flood of client events is cut at 10 a second: the sender is told, the watcher gets
    // no more than the limit lets through.
    let mut flood = Client::start(
        soketi.port,
        &query,
        &customer,
        std::slice::from_ref(&thread_channel),
        Some(json!({"channel": thread_channel, "event": "client-typing", "data": {"typing": false}, "times": 40})),
    )
    .await;
    flood
        .next("the rate-limit error", |v| {
            v["type"] == "error" && v["code"] == 4301
        })
        .await;
    let got = watcher
        .drain(Duration::from_millis(1500))
        .await
        .into_iter()
        .filter(|v| v["name"] == "client-typing" && v["data"]["typing"] == false)
        .count();
    assert!(
        (1..=12).contains(&got),
        "{got} of 40 client events passed the limit"
    );

    // A message through command-api reaches the signed-in agent and customer, once each.
    send(&env, &api, &customer, &thread, "Is anyone there?").await;
    for client in [&mut watcher, &mut customer_client] {
        let created = client
            .next("message.created", |v| v["name"] == "message.created")
            .await;
        assert_eq!(created["channel"], "#user");
        let data = &created["data"];
        assert_eq!(data["thread_id"], thread.as_str());
        assert_eq!(data["message"]["text"], "Is anyone there?");
        assert_eq!(data["message"]["author_id"], "phone-liv");
        assert_eq!(data["message"]["author_kind"], "phone");
        assert_eq!(data["message"]["number"], 1);
        assert_eq!(data["event_id"], format!("thread:{thread}:2"));
    }
    // Scheduled messages are the staff's: the agent is told, the customer is not.
    let due = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = env
        .http
        .post(api.url(&format!("/v1/chat/threads/{thread}/scheduled")))
        .bearer_auth(&agent)
        .json(&json!({"text": "Later", "due_at": due}))
        .send()
        .await
        .expect("sent");
    assert!(scheduled.status().is_success(), "{}", scheduled.status());
    watcher
        .next("message.scheduled", |v| v["name"] == "message.scheduled")
        .await;
    for (who, client) in [
        ("the stranger", &mut stranger),
        ("the unsigned client", &mut lurker),
    ] {
        let stray = client.drain(Duration::from_millis(500)).await;
        assert!(
            stray
                .iter()
                .all(|v| v["type"] != "event" || v["name"] == "client-typing"),
            "{who} received no event: {stray:?}"
        );
    }
    let customer_lines = customer_client.drain(Duration::from_millis(300)).await;
    assert!(
        customer_lines
            .iter()
            .all(|v| v["name"] != "message.scheduled" && v["name"] != "message.created"),
        "the customer got the message once and nothing of the staff's: {customer_lines:?}"
    );

    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// A TCP proxy the test can cut: while down, connections are refused at once.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    _task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let open = up.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !open.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed
                }
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Proxy {
            port,
            up,
            _task: task,
        }
    }
}

#[tokio::test]
async fn a_soketi_outage_delays_realtime_events_and_loses_none() {
    let env = TestEnv::new().await;
    let soketi = Soketi::start().await;
    // The worker reaches Soketi's HTTP API through a proxy the test cuts; clients connect
    // to Soketi directly and stay connected.
    let proxy = Proxy::start(soketi.port).await;
    let mut config = soketi.projector_config(env.projector_config());
    config.ctx.realtime.soketi_url = Some(format!("http://127.0.0.1:{}", proxy.port));
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(config);
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "outage").await;
    let customer = env.phone_user(&tenant, "phone-out");
    let (_, agent) = staff_session(&env, &api, &tenant, "agent").await;
    let thread = open_thread(&env, &api, &query, &customer, &agent).await;
    let mut watcher = Client::start(soketi.port, &query, &agent, &[], None).await;
    watcher
        .next("signed in", |v| v["type"] == "signed_in")
        .await;

    proxy.up.store(false, Ordering::SeqCst);
    for text in ["one", "two", "three"] {
        send(&env, &api, &customer, &thread, text).await;
    }
    // The chat read model has all three; the realtime worker has delivered none.
    eventually(
        Duration::from_secs(20),
        "the messages in the read model",
        || async {
            let r: Value = env
                .http
                .get(query.url(&format!("/v1/chat/threads/{thread}")))
                .bearer_auth(&agent)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (r["message_count"] == 3).then_some(())
        },
    )
    .await;
    let during = watcher.drain(Duration::from_secs(2)).await;
    assert!(
        during.iter().all(|v| v["name"] != "message.created"),
        "nothing gets through while Soketi is unreachable: {during:?}"
    );

    proxy.up.store(true, Ordering::SeqCst);
    let mut texts = Vec::new();
    while texts.len() < 3 {
        let created = watcher
            .next("the delayed messages", |v| v["name"] == "message.created")
            .await;
        texts.push(
            created["data"]["message"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(texts, ["one", "two", "three"], "all, in order");
    let after = watcher.drain(Duration::from_secs(2)).await;
    assert!(
        after.iter().all(|v| v["name"] != "message.created"),
        "none twice: {after:?}"
    );

    projector.abort();
    query.stop().await;
    api.stop().await;
}

/// An open `GET /v1/stream` and the SSE events read from it.
pub(crate) struct Stream {
    response: reqwest::Response,
    buffer: String,
}

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sse {
    pub(crate) event: String,
    id: String,
    pub(crate) data: Value,
}

impl Stream {
    pub(crate) async fn open(
        env: &TestEnv,
        query: &Service,
        token: &str,
        last_id: Option<&str>,
    ) -> Self {
        let mut request = env.http.get(query.url("/v1/stream")).bearer_auth(token);
        if let Some(id) = last_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("sent");
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"]
                .to_str()
                .unwrap_or_default(),
            "text/event-stream"
        );
        Stream {
            response,
            buffer: String::new(),
        }
    }

    /// The next event within `wait`, if any (keep-alive comments skipped).
    pub(crate) async fn next(&mut self, wait: Duration) -> Option<Sse> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut sse = Sse::default();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        sse.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        sse.id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        sse.data = serde_json::from_str(v.trim()).unwrap_or_default();
                    }
                }
                if !sse.event.is_empty() {
                    return Some(sse);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Events until `wanted` accepts one, within 20 s.
    async fn until(&mut self, what: &str, wanted: impl Fn(&Sse) -> bool) -> Vec<Sse> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let sse = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("timed out waiting for {what}; saw {seen:?}"));
            let done = wanted(&sse);
            seen.push(sse);
            if done {
                return seen;
            }
        }
    }
}

#[tokio::test]
async fn sse_streams_what_the_token_may_see_and_resumes_after_last_event_id() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    // No Soketi: the realtime worker still fans out on NATS for SSE.
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "streamed").await;
    let (other, _) = create_tenant(&env, &api, "unstreamed").await;
    let customer = env.phone_user(&tenant, "phone-sse");
    let agent = env.agent_of(&tenant);
    let thread = open_thread(&env, &api, &query, &customer, &agent).await;

    let mut staff = Stream::open(&env, &query, &agent, None).await;
    let mut own = Stream::open(&env, &query, &customer, None).await;
    let mut foreign = Stream::open(&env, &query, &env.agent_of(&other), None).await;
    let mut bystander =
        Stream::open(&env, &query, &env.phone_user(&tenant, "phone-by"), None).await;

    // The first message that reaches the staff stream (query-api follows NATS from its
    // start; a message sent before it subscribed is not replayed).
    // Each try has its own text: on a busy box a try's event can come after the next try
    // was sent, and the one that came is the one the stream resumes after.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut tries = 0;
    let first = loop {
        assert!(Instant::now() < deadline, "no message reached the stream");
        tries += 1;
        send(&env, &api, &customer, &thread, &format!("first {tries}")).await;
        if let Some(e) = staff.next(Duration::from_secs(1)).await {
            if e.event == "message.created" {
                break e;
            }
        }
    };
    let first_try: u32 = first.data["message"]["text"]
        .as_str()
        .and_then(|t| t.strip_prefix("first "))
        .and_then(|n| n.parse().ok())
        .expect("a first try");
    assert_eq!(first.data["thread_id"], thread.as_str());
    assert_eq!(
        first.id,
        first.data["event_id"].as_str().unwrap_or_default()
    );
    for text in ["second", "third"] {
        send(&env, &api, &customer, &thread, text).await;
    }
    let seen = staff
        .until("the third message", |e| {
            e.data["message"]["text"] == "third"
        })
        .await;
    assert!(seen.iter().any(|e| e.data["message"]["text"] == "second"));
    own.until("the customer's own third message", |e| {
        e.data["message"]["text"] == "third"
    })
    .await;

    // Another tenant's staff and another customer of the same tenant see none of it.
    for stranger in [&mut foreign, &mut bystander] {
        assert!(stranger.next(Duration::from_millis(500)).await.is_none());
    }

    // Resume: after the first message's id, the two later ones come again.
    let mut resumed = Stream::open(&env, &query, &agent, Some(&first.id)).await;
    let replayed = resumed
        .until("the replayed third message", |e| {
            e.data["message"]["text"] == "third"
        })
        .await;
    let texts: Vec<&str> = replayed
        .iter()
        .filter_map(|e| e.data["message"]["text"].as_str())
        .collect();
    // Later tries (sent before the first one came) are after it too, in order.
    let later_tries: Vec<String> = (first_try + 1..=tries)
        .map(|n| format!("first {n}"))
        .collect();
    let mut expected: Vec<&str> = later_tries.iter().map(String::as_str).collect();
    expected.extend(["second", "third"]);
    assert_eq!(texts, expected);
    // An id the window does not hold: reset, reload through the query API.
    let mut lost = Stream::open(&env, &query, &agent, Some("thread:gone:1")).await;
    let first_event = lost.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(first_event.event, "reset");

    projector.abort();
    query.stop().await;
    api.stop().await;
}

#[tokio::test]
async fn one_user_holds_at_most_the_allowed_streams_and_others_are_unaffected() {
    let env = TestEnv::new().await;
    let mut config = env.query_config();
    config.ctx.realtime.streams_per_user = 3;
    let query = env.spawn_query_api(config).await;
    let tenant = uuid::Uuid::new_v4().to_string();
    let customer = env.phone_user(&tenant, "greedy");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(Stream::open(&env, &query, &customer, None).await);
    }
    let refused = env
        .http
        .get(query.url("/v1/stream"))
        .bearer_auth(&customer)
        .send()
        .await
        .expect("sent");
    crate::support::expect_problem(refused, 429, "too_many_streams").await;
    // Another user of the same tenant, and staff, still get theirs.
    let _neighbour = Stream::open(&env, &query, &env.phone_user(&tenant, "other"), None).await;
    let _agent = Stream::open(&env, &query, &env.agent_of(&tenant), None).await;
    // A stream that ends gives its place back (the server notices at its next write, at
    // most one keep-alive later).
    drop(held.pop());
    eventually(Duration::from_secs(30), "a place freed", || async {
        let r = env
            .http
            .get(query.url("/v1/stream"))
            .bearer_auth(&customer)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    query.stop().await;
}

#[tokio::test]
async fn a_customers_live_stream_carries_only_what_the_read_api_shows_them() {
    let env = TestEnv::new().await;
    let api = env.spawn_command_api(env.command_config()).await;
    let projector = env.spawn_projector(env.projector_config());
    let query = env.spawn_query_api(env.query_config()).await;
    let (tenant, _) = create_tenant(&env, &api, "visible").await;
    let customer = env.phone_user(&tenant, "phone-vis");
    let (agent_id, agent) = crate::support::staff_session(&env, &api, &tenant, "agent").await;
    let warm_up = open_thread(&env, &api, &query, &customer, &agent).await;
    let mut staff = Stream::open(&env, &query, &agent, None).await;
    let mut own = Stream::open(&env, &query, &customer, None).await;
    // Both streams follow NATS once a message reaches them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "no message reached the streams");
        send(&env, &api, &customer, &warm_up, "warm up").await;
        if staff.next(Duration::from_secs(1)).await.is_some()
            && own.next(Duration::from_secs(1)).await.is_some()
        {
            break;
        }
    }
    let post = |path: String, body: Value| {
        let request = env
            .http
            .post(api.url(&path))
            .bearer_auth(&agent)
            .json(&body);
        async move { assert_eq!(request.send().await.expect("sent").status(), 200, "{path}") }
    };
    let thread = open_thread(&env, &api, &query, &customer, &agent).await;
    send(&env, &api, &customer, &thread, "hello").await;
    post(
        format!("/v1/chat/threads/{thread}/tags"),
        json!({"tags": ["difficult", "refund-risk"]}),
    )
    .await;
    post(
        format!("/v1/chat/threads/{thread}/read"),
        json!({"number": 1}),
    )
    .await;
    post(
        format!("/v1/chat/threads/{thread}/participants"),
        json!({"user_id": agent_id, "kind": "agent"}),
    )
    .await;
    send(&env, &api, &customer, &thread, "the end").await;
    let ended = |e: &Sse| e.data["message"]["text"] == "the end";
    let theirs = own.until("the customer's last message", ended).await;
    let names: Vec<&str> = theirs.iter().map(|e| e.event.as_str()).collect();
    assert!(names.contains(&"thread.created"), "{names:?}");
    for e in &theirs {
        assert!(
            !matches!(e.event.as_str(), "thread.tagged" | "thread.assigned"),
            "staff-only event on the customer's stream: {e:?}"
        );
        assert!(
            e.data.get("tags").is_none(),
            "tags on the customer's stream: {e:?}"
        );
        assert_ne!(
            e.data["reader_kind"], "agent",
            "a staff read on the customer's stream"
        );
        assert_ne!(
            e.data["participant"]["kind"], "agent",
            "staff taking part on the customer's stream"
        );
    }
    // The staff see all of it.
    let ours = staff.until("the last message", ended).await;
    for wanted in ["thread.tagged", "thread.read", "thread.participant_added"] {
        assert!(ours.iter().any(|e| e.event == wanted), "{wanted} for staff");
    }
    assert!(ours
        .iter()
        .any(|e| e.event == "thread.created" && e.data["tags"].is_array()));
    // The read API says the same: no staff among the participants a customer sees.
    let detail = eventually(Duration::from_secs(20), "the agent taking part", || async {
        let d = env
            .get_json(&query.url(&format!("/v1/chat/threads/{thread}")), &agent)
            .await;
        (d["participants"].as_array()?.len() == 2).then_some(d)
    })
    .await;
    assert!(detail["participants"]
        .as_array()
        .is_some_and(|p| p.iter().any(|p| p["kind"] == "agent")));
    let seen = env
        .get_json(&query.url(&format!("/v1/chat/threads/{thread}")), &customer)
        .await;
    let kinds: Vec<&str> = seen["participants"]
        .as_array()
        .map(|p| p.iter().filter_map(|p| p["kind"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(kinds, ["phone"], "{seen}");
    assert_eq!(seen["tags"], json!([]));

    projector.abort();
    query.stop().await;
    api.stop().await;
}
