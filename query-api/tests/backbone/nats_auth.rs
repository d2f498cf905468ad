//! NATS with authentication (nats/nats-server-auth.conf, as docker-compose and scripts/up
//! run it): no anonymous client, one user per service, and each may publish and listen only
//! where its work needs. A real nats-server of this test, on a free port.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;

use crate::live::{open_thread, send, Stream};
use crate::support::{create_tenant, eventually, free_port, TestEnv};

const PASSWORDS: [(&str, &str, &str); 4] = [
    (
        "command-api",
        "NATS_COMMAND_API_PASSWORD",
        "command-api-password-long-enough",
    ),
    (
        "projector",
        "NATS_PROJECTOR_PASSWORD",
        "projector-password-long-enough-too",
    ),
    (
        "query-api",
        "NATS_QUERY_API_PASSWORD",
        "query-api-password-long-enough-also",
    ),
    (
        "whatsapp-bridge",
        "NATS_WHATSAPP_BRIDGE_PASSWORD",
        "bridge-password-long-enough-as-well",
    ),
];

/// A nats-server running the repository's authenticated configuration.
struct AuthNats {
    port: u16,
    /// Its log, to look for permission violations.
    log: PathBuf,
    _process: tokio::process::Child,
}

impl AuthNats {
    async fn start() -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("nats-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("a store directory");
        let log = dir.join("server.log");
        let config =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../nats/nats-server-auth.conf");
        let mut command = tokio::process::Command::new("nats-server");
        command
            .arg("-c")
            .arg(&config)
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", "0"])
            .arg("-sd")
            .arg(dir.join("store"))
            .arg("-l")
            .arg(&log)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        for (_, var, password) in PASSWORDS {
            command.env(var, password);
        }
        let process = command.spawn().expect("nats-server starts");
        eventually(Duration::from_secs(20), "nats-server to listen", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        AuthNats {
            port,
            log,
            _process: process,
        }
    }

    /// The URL a service connects with.
    fn url(&self, user: &str) -> String {
        let password = PASSWORDS
            .iter()
            .find(|(u, _, _)| *u == user)
            .map(|(_, _, p)| *p)
            .unwrap_or_default();
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    async fn connect(&self, user: &str) -> async_nats::Client {
        events::bus::NatsUrl::parse(&self.url(user))
            .connect()
            .await
            .expect("connects")
    }

    /// The permission violations the server logged.
    fn violations(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" Violation - "))
            .map(str::to_owned)
            .collect()
    }
}

/// Whether `subscriber` hears what `publisher` sends on `subject`. With `control` (a client
/// allowed to publish there), the subscription is first seen to work (a flush does not wait
/// for the server, so a fresh subscription may not be in place yet), and the control's
/// message after the publisher's marks the end; without one, half a second of silence does.
async fn heard(
    subscriber: &async_nats::Client,
    publisher: &async_nats::Client,
    subject: &str,
    control: Option<&async_nats::Client>,
) -> bool {
    let mut subscription = subscriber
        .subscribe(subject.to_owned())
        .await
        .expect("subscribed");
    subscriber.flush().await.expect("flushed");
    if let Some(control) = control {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the subscription never worked"
            );
            control
                .publish(subject.to_owned(), "control".into())
                .await
                .expect("control sent");
            control.flush().await.expect("flushed");
            if next(&mut subscription, 100).await.is_some() {
                break;
            }
        }
        while next(&mut subscription, 50).await.is_some() {}
    }
    let _ = publisher.publish(subject.to_owned(), "sent".into()).await;
    let _ = publisher.flush().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(control) = control {
        control
            .publish(subject.to_owned(), "control".into())
            .await
            .expect("control sent");
        control.flush().await.expect("flushed");
    }
    let wait = if control.is_some() { 5000 } else { 500 };
    let mut heard = false;
    while let Some(message) = next(&mut subscription, wait).await {
        if &message.payload[..] == b"control" {
            break;
        }
        heard = true;
    }
    heard
}

/// The next message within `ms` milliseconds.
async fn next(subscription: &mut async_nats::Subscriber, ms: u64) -> Option<async_nats::Message> {
    tokio::time::timeout(Duration::from_millis(ms), subscription.next())
        .await
        .ok()
        .flatten()
}

#[tokio::test]
async fn each_service_publishes_and_listens_only_where_its_work_needs() {
    let nats = AuthNats::start().await;
    // Nobody gets in without a user, or with a wrong password.
    assert!(
        async_nats::connect(format!("nats://127.0.0.1:{}", nats.port))
            .await
            .is_err()
    );
    assert!(events::bus::NatsUrl::parse(&format!(
        "nats://query-api:guess@127.0.0.1:{}",
        nats.port
    ))
    .connect()
    .await
    .is_err());
    let command = nats.connect("command-api").await;
    let projector = nats.connect("projector").await;
    let query = nats.connect("query-api").await;
    let bridge = nats.connect("whatsapp-bridge").await;

    // Only command-api puts events in the stream.
    let js = async_nats::jetstream::new(command.clone());
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "EVENTS".to_owned(),
        subjects: vec!["events.>".to_owned()],
        ..Default::default()
    })
    .await
    .expect("command-api creates the stream");
    js.publish("events.t1.tenant.Opened", "real".into())
        .await
        .expect("published")
        .await
        .expect("acknowledged");
    for forger in [&projector, &query, &bridge] {
        let _ = forger
            .publish("events.t1.tenant.Opened", "forged".into())
            .await;
        let _ = forger.flush().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut stream = js.get_stream("EVENTS").await.expect("stream");
    assert_eq!(
        stream.info().await.expect("info").state.messages,
        1,
        "only the real event"
    );

    // Only the projector reaches SSE streams; only query-api listens there. (A fresh
    // subscription may miss a publish on a loaded machine: each try takes a new one.)
    eventually(
        Duration::from_secs(20),
        "query-api to hear the projector",
        || async {
            heard(&query, &projector, "realtime.t1", None)
                .await
                .then_some(())
        },
    )
    .await;
    for forger in [&command, &bridge, &query] {
        assert!(!heard(&query, forger, "realtime.t1", Some(&projector)).await);
    }
    assert!(!heard(&bridge, &projector, "realtime.t1", None).await);
    // Nobody reads the events off the wire but through the projector's consumers.
    for listener in [&query, &bridge, &projector] {
        assert!(!heard(listener, &command, "events.t1.tenant.Renamed", None).await);
    }
    // Replies go to each user's own inboxes, which no other user may read: the projector's
    // pulls carry every event.
    for (listener, inbox) in [
        (&bridge, "_INBOX_projector.>"),
        (&query, "_INBOX_command-api.>"),
        (&bridge, "_INBOX.>"),
    ] {
        let mut sniffer = listener.subscribe(inbox).await.expect("subscribed");
        listener.flush().await.expect("flushed");
        js.get_stream("EVENTS").await.expect("info");
        assert!(
            next(&mut sniffer, 300).await.is_none(),
            "{inbox} is private"
        );
    }
    let violations = nats.violations().join("\n");
    for refused in [
        "Subscription Violation - User \"whatsapp-bridge\", Subject \"realtime.t1\"",
        "Subscription Violation - User \"query-api\", Subject \"events.t1.tenant.Renamed\"",
        "Publish Violation - User \"query-api\", Subject \"events.t1.tenant.Opened\"",
        "Subscription Violation - User \"whatsapp-bridge\", Subject \"_INBOX_projector.>\"",
    ] {
        assert!(violations.contains(refused), "{refused} in {violations}");
    }
}

#[tokio::test]
async fn the_stack_runs_with_one_nats_user_per_service_and_no_violation() {
    let nats = AuthNats::start().await;
    let env = TestEnv::new().await;
    let mut command = env.command_config();
    command.nats_url = nats.url("command-api");
    command.nats_stream = "EVENTS".to_owned();
    command.nats_subject_prefix = "events".to_owned();
    let api = env.spawn_command_api(command).await;
    let mut projector = env.projector_config();
    projector.nats_url = nats.url("projector");
    projector.nats_stream = "EVENTS".to_owned();
    projector.nats_subject_prefix = "events".to_owned();
    projector.ctx.realtime.realtime_subject_prefix = "realtime".to_owned();
    projector.ctx.whatsapp.whatsapp_bridge_stream = "WHATSAPP_BRIDGE".to_owned();
    projector.ctx.whatsapp.whatsapp_bridge_subject_prefix = "whatsapp.bridge".to_owned();
    let projector = env.spawn_projector(projector);
    let mut query = env.query_config();
    query.nats_url = nats.url("query-api");
    query.ctx.realtime.realtime_subject_prefix = "realtime".to_owned();
    let query = env.spawn_query_api(query).await;

    // Events travel command-api → NATS → projector → read models and SSE.
    let (tenant, _) = create_tenant(&env, &api, "guarded").await;
    let customer = env.phone_user(&tenant, "phone-guarded");
    let agent = env.agent_of(&tenant);
    let thread = open_thread(&env, &api, &query, &customer, &agent).await;
    let mut staff = Stream::open(&env, &query, &agent, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no message reached the stream"
        );
        send(&env, &api, &customer, &thread, "over an authenticated bus").await;
        if let Some(e) = staff.next(Duration::from_secs(1)).await {
            if e.event == "message.created" {
                assert_eq!(e.data["thread_id"], thread.as_str());
                break;
            }
        }
    }
    assert_eq!(
        nats.violations(),
        Vec::<String>::new(),
        "no service was refused anything"
    );
    projector.abort();
    query.stop().await;
    api.stop().await;
}
